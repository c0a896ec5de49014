//! AMQP channels: the method handlers of the channel, exchange, queue, basic,
//! confirm and tx classes, content assembly, publisher confirms, transactions,
//! deliveries with delivery tags, acks, and direct reply-to.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use ferrymq_amqp_codec::{encode_content, encode_frame, AmqpValue, BasicProperties, Frame, Method};
use ferrymq_amqp_codec::{
    BasicAck, BasicCancel, BasicCancelOk, BasicConsumeOk, BasicDeliver, BasicGetEmpty, BasicGetOk,
    BasicNack, BasicQosOk, BasicRecoverOk, BasicReturn, ChannelClose, ChannelCloseOk,
    ChannelFlowOk, ChannelOpenOk, ConfirmSelectOk, ExchangeBindOk, ExchangeDeclareOk,
    ExchangeDeleteOk, ExchangeUnbindOk, QueueBindOk, QueueDeclareOk, QueueDeleteOk, QueuePurgeOk,
    QueueUnbindOk, TxCommitOk, TxRollbackOk, TxSelectOk,
};
use ferrymq_core::clock::now_ms;
use ferrymq_core::queue::{
    ConsumerEvent, ConsumerId, ConsumerOptions, ConsumerSink, CreditPool, Delivery, Queue,
    QueueDecl, GET_CONSUMER,
};
use ferrymq_core::{
    Access, Binding, ChannelRegistration, ConnectionHandle, CoreError, Destination, ExchangeDecl,
    ExchangeKind, Limit, Message, PublishedBatch, QueueRef, StreamOffset, TopicCheck, VHost,
};
use tokio::sync::mpsc::UnboundedSender;

use crate::connection::Completion;
use crate::convert::{message_in, properties_out, table_in};
use crate::error::{code, Exception};
use crate::{ReplyTarget, Shared};

/// The pseudo-queue of direct reply-to.
const REPLY_TO: &str = "amq.rabbitmq.reply-to";
const REPLY_TO_PREFIX: &str = "amq.rabbitmq.reply-to.";

/// Confirms to release on a channel once a publish batch is durable.
pub(crate) struct ConfirmDone {
    pub channel: u16,
    /// (publish sequence number, ack = true / nack = false)
    pub results: Vec<(u64, bool)>,
}

/// A transaction commit whose publishes are durable.
pub(crate) struct TxDone {
    pub channel: u16,
    pub ok: bool,
}

struct Content {
    exchange: String,
    routing_key: String,
    mandatory: bool,
    body_size: u64,
    properties: Option<BasicProperties>,
    parts: Vec<Bytes>,
    received: u64,
}

/// A complete publish waiting for the end of the read turn (or a tx commit).
struct Pending {
    channel: u16,
    exchange: String,
    mandatory: bool,
    message: Message,
    seq: Option<u64>,
}

struct Unacked {
    queue: QueueRef,
    id: u64,
    consumer: ConsumerId,
}

struct ConsumerRef {
    channel: u16,
    tag: String,
    /// None for a direct reply-to consumer.
    queue: Option<QueueRef>,
    no_ack: bool,
}

/// Deliveries (tag, entry) an ack or nack inside a transaction holds until commit,
/// with the requeue flag (None = ack).
type HeldSettle = (Vec<(u64, Unacked)>, Option<bool>);

#[derive(Default)]
struct Tx {
    publishes: Vec<Pending>,
    /// Acks and nacks held until commit: ((tag, entry)s, requeue) with requeue None = ack.
    settles: Vec<HeldSettle>,
}

/// One open channel.
pub(crate) struct Channel {
    closing: bool,
    content: Option<Content>,
    confirm: bool,
    next_seq: u64,
    confirmed: BTreeMap<u64, bool>,
    next_confirm: u64,
    tx: Option<Tx>,
    tx_committing: bool,
    next_tag: u64,
    unacked: BTreeMap<u64, Unacked>,
    consumers: HashMap<String, ConsumerId>,
    prefetch_count: u16,
    /// Channel-wide credit (`basic.qos` with `global=true`).
    global_credit: Option<Arc<CreditPool>>,
    last_queue: Option<String>,
    reply_token: Option<String>,
    /// The exchange the last `basic.publish` on this channel was allowed to write to: the
    /// permission check is skipped while publishes keep to it (RabbitMQ caches per channel
    /// too, so a permission change reaches a publishing channel when it moves to another
    /// exchange or is reopened).
    write_allowed: Option<String>,
    /// The topic permission check of `write_allowed`'s exchange: `Some` only for a topic
    /// exchange the user has a topic permission on, so publishes to other exchanges match
    /// no pattern and allocate nothing for it.
    topic_write: Option<TopicCheck>,
    /// Its entry in the connection's channel registry (management); unregistered on drop.
    registration: Option<ChannelRegistration>,
}

impl Channel {
    fn new() -> Self {
        Channel {
            registration: None,
            closing: false,
            content: None,
            confirm: false,
            next_seq: 1,
            confirmed: BTreeMap::new(),
            next_confirm: 1,
            tx: None,
            tx_committing: false,
            next_tag: 1,
            unacked: BTreeMap::new(),
            consumers: HashMap::new(),
            prefetch_count: 0,
            global_credit: None,
            last_queue: None,
            reply_token: None,
            write_allowed: None,
            topic_write: None,
        }
    }
}

impl Channel {
    /// Publishes the live state management shows (unacked deliveries); called once per
    /// turn of the connection's loop.
    pub(crate) fn sync_registration(&self) {
        if let Some(r) = &self.registration {
            r.unacked.store(self.unacked.len() as u64, Relaxed);
        }
    }
}

/// Connection-wide state the channel handlers share.
pub(crate) struct Ctx {
    shared: Arc<Shared>,
    sink: ConsumerSink,
    done: UnboundedSender<Completion>,
    vhost: Option<Arc<VHost>>,
    handle: Option<Arc<ConnectionHandle>>,
    user: String,
    cancel_notify: bool,
    consumers: HashMap<ConsumerId, ConsumerRef>,
    pending: Vec<Pending>,
    /// No-ack deliveries encoded since the connection last took them: their send window
    /// is released once their bytes have been written to the socket, not when encoded,
    /// so a client that reads slowly holds deliveries back in their queue.
    encoded_no_ack: Vec<Release>,
}

/// Send window of a no-ack consumer to give back once its deliveries are written.
pub(crate) struct Release {
    pub(crate) queue: Arc<Queue>,
    pub(crate) consumer: ConsumerId,
    pub(crate) count: u32,
    pub(crate) bytes: u64,
}

impl Release {
    pub(crate) fn apply(self, now: i64) {
        self.queue
            .release(self.consumer, self.count, self.bytes, now);
    }
}

fn send(out: &mut BytesMut, channel: u16, method: Method) {
    encode_frame(&Frame::Method { channel, method }, out);
}

fn ctag() -> String {
    format!(
        "amq.ctag-{:016x}{:08x}",
        fastrand::u64(..),
        fastrand::u32(..)
    )
}

fn stream_offset(v: Option<&AmqpValue>) -> Result<StreamOffset, Exception> {
    let bad = |what: &str| {
        Exception::channel(
            code::PRECONDITION_FAILED,
            format!("invalid x-stream-offset {what}"),
        )
    };
    Ok(match v {
        None => StreamOffset::Next,
        Some(AmqpValue::LongString(s)) => match &s[..] {
            b"first" => StreamOffset::First,
            b"last" => StreamOffset::Last,
            b"next" => StreamOffset::Next,
            other => return Err(bad(&String::from_utf8_lossy(other))),
        },
        Some(AmqpValue::Timestamp(secs)) => {
            StreamOffset::Timestamp((*secs as i64).saturating_mul(1000))
        }
        Some(v) => {
            let n = match v {
                AmqpValue::I8(i) => *i as i64,
                AmqpValue::I16(i) => *i as i64,
                AmqpValue::I32(i) => *i as i64,
                AmqpValue::I64(i) => *i,
                AmqpValue::U8(i) => *i as i64,
                AmqpValue::U16(i) => *i as i64,
                AmqpValue::U32(i) => *i as i64,
                _ => return Err(bad("type")),
            };
            StreamOffset::Offset(u64::try_from(n).map_err(|_| bad("(negative)"))?)
        }
    })
}

/// Arguments RabbitMQ 3.13 accepts only for some queue types: `x-delivery-limit` for
/// quorum queues, `x-max-priority` for classic ones. The core supports both on every
/// queue; over AMQP, FerryMQ answers as RabbitMQ does so that clients see its errors.
fn rabbitmq_queue_type_rules(decl: &QueueDecl, vhost: &str) -> Result<(), Exception> {
    let kind = decl.arguments.get_str("x-queue-type").unwrap_or("classic");
    let bad = match kind {
        "quorum" | "stream" => ["x-max-priority"]
            .into_iter()
            .find(|a| decl.arguments.get(a).is_some()),
        _ => ["x-delivery-limit"]
            .into_iter()
            .find(|a| decl.arguments.get(a).is_some()),
    };
    match bad {
        Some(arg) => Err(Exception::channel(
            code::PRECONDITION_FAILED,
            format!("invalid arg '{arg}' for queue '{}' in vhost '{vhost}': not supported by {kind} queues", decl.name),
        )),
        None => Ok(()),
    }
}

/// The header RabbitMQ adds to deliveries of some queue types: `x-stream-offset` for
/// streams, `x-delivery-count` (earlier deliveries) for quorum queues.
fn delivery_header(queue: Option<&QueueRef>, d: &Delivery) -> Option<(&'static str, AmqpValue)> {
    match queue? {
        QueueRef::Stream(_) => Some(("x-stream-offset", AmqpValue::I64(d.id as i64))),
        QueueRef::Classic(q) if q.args().queue_type == ferrymq_core::queue::QueueType::Quorum => {
            Some((
                "x-delivery-count",
                AmqpValue::I64(i64::from(d.delivery_count.saturating_sub(1))),
            ))
        }
        QueueRef::Classic(_) => None,
    }
}

fn int_arg(v: Option<&AmqpValue>) -> Option<i64> {
    match v? {
        AmqpValue::I8(i) => Some(*i as i64),
        AmqpValue::I16(i) => Some(*i as i64),
        AmqpValue::I32(i) => Some(*i as i64),
        AmqpValue::I64(i) => Some(*i),
        AmqpValue::U8(i) => Some(*i as i64),
        AmqpValue::U16(i) => Some(*i as i64),
        AmqpValue::U32(i) => Some(*i as i64),
        _ => None,
    }
}

impl Ctx {
    pub(crate) fn new(
        shared: Arc<Shared>,
        sink: ConsumerSink,
        done: UnboundedSender<Completion>,
    ) -> Self {
        Ctx {
            shared,
            sink,
            done,
            vhost: None,
            handle: None,
            user: String::new(),
            cancel_notify: false,
            consumers: HashMap::new(),
            pending: Vec::new(),
            encoded_no_ack: Vec::new(),
        }
    }

    pub(crate) fn open(
        &mut self,
        vhost: Arc<VHost>,
        handle: Arc<ConnectionHandle>,
        user: String,
        cancel_notify: bool,
    ) {
        self.vhost = Some(vhost);
        self.handle = Some(handle);
        self.user = user;
        self.cancel_notify = cancel_notify;
    }

    fn vh(&self) -> Result<Arc<VHost>, Exception> {
        self.vhost
            .clone()
            .ok_or_else(|| Exception::connection(code::CHANNEL_ERROR, "connection not open"))
    }

    /// RabbitMQ's permission check for this connection's user on a resource of its vhost.
    ///
    /// # Errors
    /// 403 ACCESS_REFUSED (a channel exception) with RabbitMQ's text.
    fn authorize(
        &self,
        vh: &VHost,
        access: Access,
        kind: &str,
        name: &str,
    ) -> Result<(), Exception> {
        self.shared
            .broker
            .authorize(&self.user, &vh.name, access, kind, name)
            .map_err(Exception::from)
    }

    /// RabbitMQ's topic permission check of a routing or binding key on an exchange (only
    /// a topic exchange the user has a topic permission on restricts anything).
    ///
    /// # Errors
    /// 403 ACCESS_REFUSED (a channel exception) with RabbitMQ's text.
    fn authorize_topic(
        &self,
        vh: &VHost,
        access: Access,
        exchange: &str,
        key: &str,
    ) -> Result<(), Exception> {
        self.shared
            .broker
            .authorize_topic(&self.user, &vh.name, access, exchange, key, None)
            .map_err(Exception::from)
    }

    fn conn_id(&self) -> u64 {
        self.handle.as_ref().map_or(0, |h| h.id)
    }

    // ------------------------------------------------------------ frames

    /// Handles a method on channel `id` (not 0).
    pub(crate) fn on_method(
        &mut self,
        channels: &mut BTreeMap<u16, Channel>,
        id: u16,
        method: Method,
        out: &mut BytesMut,
        frame_max: u32,
        published: &mut bool,
    ) -> Result<(), Exception> {
        let (class_id, method_id) = (method.class_id(), method.method_id());
        let at = |e: Exception| e.at(class_id, method_id);
        if let Method::ChannelOpen(_) = method {
            if channels.contains_key(&id) {
                return Err(at(Exception::connection(
                    code::CHANNEL_ERROR,
                    "second 'channel.open' seen",
                )));
            }
            let mut ch = Channel::new();
            ch.registration = self.handle.as_ref().map(|h| h.register_channel(id as u32));
            channels.insert(id, ch);
            if let Some(h) = &self.handle {
                h.stats
                    .channels
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            send(out, id, Method::ChannelOpenOk(ChannelOpenOk {}));
            return Ok(());
        }
        let Some(ch) = channels.get(&id) else {
            return Err(at(Exception::connection(
                code::CHANNEL_ERROR,
                format!("expected 'channel.open' on channel {id}"),
            )));
        };
        if ch.closing {
            // After channel.close, only close/close-ok matter.
            match method {
                Method::ChannelCloseOk(_) => {
                    channels.remove(&id);
                }
                Method::ChannelClose(_) => {
                    send(out, id, Method::ChannelCloseOk(ChannelCloseOk {}));
                    channels.remove(&id);
                }
                _ => {}
            }
            return Ok(());
        }
        if ch.content.is_some() {
            return Err(at(Exception::connection(
                code::UNEXPECTED_FRAME,
                "expected content header for class 60, got non content header frame instead",
            )));
        }
        if let Method::BasicPublish(p) = method {
            if p.immediate {
                return Err(at(Exception::connection(
                    code::NOT_IMPLEMENTED,
                    "immediate=true",
                )));
            }
            // Write on the exchange, checked per publish unless the channel's last allowed
            // exchange is this one (the hot path compares one string), then the routing key
            // against the exchange's topic permission, if it has one.
            let cached = ch.write_allowed.as_deref() == Some(p.exchange.as_str());
            let mut topic = None;
            if cached {
                if let Some(t) = &ch.topic_write {
                    t.check(&p.routing_key).map_err(|e| at(e.into()))?;
                }
            } else {
                let vh = self.vh().map_err(at)?;
                self.authorize(&vh, Access::Write, "exchange", &p.exchange)
                    .map_err(at)?;
                topic = self
                    .shared
                    .broker
                    .topic_check(&self.user, &vh.name, Access::Write, &p.exchange, None)
                    .map_err(|e| at(e.into()))?;
                if let Some(t) = &topic {
                    t.check(&p.routing_key).map_err(|e| at(e.into()))?;
                }
            }
            *published = true;
            if let Some(ch) = channels.get_mut(&id) {
                if !cached {
                    ch.write_allowed = Some(p.exchange.clone());
                    ch.topic_write = topic;
                }
                ch.content = Some(Content {
                    exchange: p.exchange,
                    routing_key: p.routing_key,
                    mandatory: p.mandatory,
                    body_size: 0,
                    properties: None,
                    parts: Vec::new(),
                    received: 0,
                });
            }
            return Ok(());
        }
        // Everything else is ordered after the publishes before it.
        self.flush_publishes(channels, out, frame_max);
        let Some(ch) = channels.get_mut(&id) else {
            return Ok(());
        };
        if ch.closing {
            return Ok(()); // the flush failed this channel
        }
        self.method(channels, id, method, out, frame_max)
            .map_err(at)
    }

    pub(crate) fn on_header(
        &mut self,
        channels: &mut BTreeMap<u16, Channel>,
        id: u16,
        class_id: u16,
        body_size: u64,
        properties: BasicProperties,
    ) -> Result<(), Exception> {
        let max = self.shared.broker.config().message_size_max_bytes;
        let Some(ch) = channels.get_mut(&id) else {
            return Err(Exception::connection(
                code::CHANNEL_ERROR,
                format!("expected 'channel.open' on channel {id}"),
            ));
        };
        if ch.closing {
            return Ok(());
        }
        let Some(c) = ch.content.as_mut() else {
            return Err(Exception::connection(
                code::UNEXPECTED_FRAME,
                "unexpected content header frame",
            ));
        };
        if c.properties.is_some() || class_id != 60 {
            return Err(Exception::connection(
                code::UNEXPECTED_FRAME,
                "unexpected content header frame",
            ));
        }
        if body_size > max {
            self.shared
                .broker
                .admission()
                .refused(Limit::MessageSize, crate::PROTOCOL);
            ch.content = None;
            return Err(Exception::channel(
                code::PRECONDITION_FAILED,
                format!("message size {body_size} is larger than configured max size {max}"),
            )
            .at(60, 40));
        }
        c.body_size = body_size;
        c.properties = Some(properties);
        if body_size == 0 {
            self.complete(channels, id)?;
        }
        Ok(())
    }

    pub(crate) fn on_body(
        &mut self,
        channels: &mut BTreeMap<u16, Channel>,
        id: u16,
        payload: Bytes,
    ) -> Result<(), Exception> {
        let Some(ch) = channels.get_mut(&id) else {
            return Err(Exception::connection(
                code::CHANNEL_ERROR,
                format!("expected 'channel.open' on channel {id}"),
            ));
        };
        if ch.closing {
            return Ok(());
        }
        let Some(c) = ch.content.as_mut().filter(|c| c.properties.is_some()) else {
            return Err(Exception::connection(
                code::UNEXPECTED_FRAME,
                "unexpected content body frame",
            ));
        };
        c.received += payload.len() as u64;
        if c.received > c.body_size {
            return Err(Exception::connection(
                code::FRAME_ERROR,
                "content body larger than declared in its header",
            ));
        }
        c.parts.push(payload);
        if c.received == c.body_size {
            self.complete(channels, id)?;
        }
        Ok(())
    }

    /// A publish's content is complete: route it now or hold it for the turn's flush.
    fn complete(
        &mut self,
        channels: &mut BTreeMap<u16, Channel>,
        id: u16,
    ) -> Result<(), Exception> {
        let Some(ch) = channels.get_mut(&id) else {
            return Ok(());
        };
        let Some(c) = ch.content.take() else {
            return Ok(());
        };
        let body = match c.parts.len() {
            0 => Bytes::new(),
            1 => c.parts.into_iter().next().unwrap_or_default(),
            _ => {
                let mut b = BytesMut::with_capacity(c.body_size as usize);
                for p in &c.parts {
                    b.extend_from_slice(p);
                }
                b.freeze()
            }
        };
        let mut props = c.properties.unwrap_or_default();
        if props.reply_to.as_deref() == Some(REPLY_TO) {
            let Some(token) = &ch.reply_token else {
                return Err(Exception::channel(
                    code::PRECONDITION_FAILED,
                    "fast reply consumer does not exist",
                )
                .at(60, 40));
            };
            props.reply_to = Some(format!("{REPLY_TO_PREFIX}{token}"));
        }
        let mut message = message_in(&c.routing_key, &props, body, &self.user)
            .map_err(|e| Exception::channel(code::PRECONDITION_FAILED, e.0).at(60, 40))?;
        message.exchange = c.exchange.clone();
        if let Some(h) = &self.handle {
            h.stats
                .messages_in
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            h.stats.bytes_in.fetch_add(
                message.body.len() as u64,
                std::sync::atomic::Ordering::Relaxed,
            );
        }
        let seq = ch.confirm.then(|| {
            let s = ch.next_seq;
            ch.next_seq += 1;
            s
        });
        let p = Pending {
            channel: id,
            exchange: c.exchange,
            mandatory: c.mandatory,
            message,
            seq,
        };
        match ch.tx.as_mut() {
            Some(tx) => tx.publishes.push(p),
            None => self.pending.push(p),
        }
        Ok(())
    }

    // ------------------------------------------------------------ publishing

    /// Publishes everything completed so far, one core batch per run of the same
    /// channel and exchange; returns mandatory messages and schedules confirms.
    pub(crate) fn flush_publishes(
        &mut self,
        channels: &mut BTreeMap<u16, Channel>,
        out: &mut BytesMut,
        frame_max: u32,
    ) {
        if self.pending.is_empty() {
            return;
        }
        let pending = std::mem::take(&mut self.pending);
        let mut run: Vec<Pending> = Vec::new();
        for p in pending {
            if run
                .first()
                .is_some_and(|f| f.channel != p.channel || f.exchange != p.exchange)
            {
                let r = std::mem::take(&mut run);
                self.publish_run(channels, r, out, frame_max);
            }
            run.push(p);
        }
        self.publish_run(channels, run, out, frame_max);
    }

    fn publish_run(
        &mut self,
        channels: &mut BTreeMap<u16, Channel>,
        run: Vec<Pending>,
        out: &mut BytesMut,
        frame_max: u32,
    ) {
        let Some(first) = run.first() else { return };
        let (channel, exchange) = (first.channel, first.exchange.clone());
        if channels.get(&channel).is_none_or(|c| c.closing) {
            return;
        }
        // Direct reply-to answers bypass routing.
        let (replies, run): (Vec<Pending>, Vec<Pending>) = run.into_iter().partition(|p| {
            p.exchange.is_empty() && p.message.routing_key.starts_with(REPLY_TO_PREFIX)
        });
        let mut results: Vec<(u64, bool)> = Vec::new();
        for p in replies {
            let routed = self.reply(&p.message);
            if !routed && p.mandatory {
                self.basic_return(out, channel, &p.message, frame_max);
            }
            results.extend(p.seq.map(|s| (s, true)));
        }
        let Ok(vh) = self.vh() else { return };
        let mut batch: Option<PublishedBatch> = None;
        if !run.is_empty() {
            let (meta, msgs): (Vec<(bool, Option<u64>)>, Vec<Message>) = run
                .into_iter()
                .map(|p| ((p.mandatory, p.seq), p.message))
                .unzip();
            let returns: Vec<Option<Message>> = meta
                .iter()
                .zip(&msgs)
                .map(|((m, _), msg)| m.then(|| msg.clone()))
                .collect();
            match vh.publish_batch(&exchange, msgs) {
                Ok(b) => {
                    for ((o, (_, seq)), ret) in b.outcomes.iter().zip(&meta).zip(returns) {
                        if o.unroutable() {
                            if let Some(m) = ret {
                                self.basic_return(out, channel, &m, frame_max);
                            }
                        }
                        results.extend(seq.map(|s| (s, o.rejected == 0)));
                    }
                    batch = Some(b);
                }
                Err(e) => {
                    let e = Exception::from(e).at(60, 40);
                    if e.connection {
                        tracing::error!(code = e.code, text = %e.text, "publish failed");
                    }
                    self.channel_exception(channels, channel, e, out, frame_max);
                    return;
                }
            }
        }
        let confirm = channels.get(&channel).is_some_and(|c| c.confirm);
        if !confirm || results.is_empty() {
            return; // writes still become durable; nobody waits for them
        }
        let done = self.done.clone();
        match batch {
            None => {
                let _ = done.send(Completion::Confirm(ConfirmDone { channel, results }));
            }
            Some(b) => {
                tokio::spawn(async move {
                    let ok = b.durable().await.is_ok();
                    let results = results.into_iter().map(|(s, a)| (s, a && ok)).collect();
                    let _ = done.send(Completion::Confirm(ConfirmDone { channel, results }));
                });
            }
        }
    }

    /// Delivers a direct reply-to answer; false if nobody waits for it.
    fn reply(&self, m: &Message) -> bool {
        let token = &m.routing_key[REPLY_TO_PREFIX.len()..];
        let target = self
            .shared
            .reply_to
            .lock()
            .ok()
            .and_then(|r| r.get(token).cloned());
        let Some(t) = target else { return false };
        let mut msg = m.clone();
        msg.exchange = String::new();
        let d = Delivery {
            consumer: t.consumer,
            consumer_tag: t.tag.clone(),
            id: 0,
            message: Arc::new(msg),
            redelivered: false,
            delivery_count: 1,
        };
        t.sink.send(ConsumerEvent::Deliver(vec![d])).is_ok()
    }

    fn basic_return(&self, out: &mut BytesMut, channel: u16, m: &Message, frame_max: u32) {
        let method = Method::BasicReturn(BasicReturn {
            reply_code: code::NO_ROUTE,
            reply_text: "NO_ROUTE".into(),
            exchange: m.exchange.clone(),
            routing_key: m.routing_key.clone(),
        });
        encode_content(
            channel,
            &method,
            &properties_out(m, None),
            &m.body,
            frame_max,
            out,
        );
    }

    pub(crate) fn on_confirm_done(
        &mut self,
        channels: &mut BTreeMap<u16, Channel>,
        c: ConfirmDone,
        out: &mut BytesMut,
    ) {
        let Some(ch) = channels.get_mut(&c.channel) else {
            return;
        };
        if ch.closing {
            return;
        }
        ch.confirmed.extend(c.results);
        // Release in sequence order: runs of acks as one `multiple` ack.
        let mut ack_run: Option<u64> = None;
        let mut run_len = 0;
        while let Some(ok) = ch.confirmed.remove(&ch.next_confirm) {
            let seq = ch.next_confirm;
            ch.next_confirm += 1;
            if ok {
                ack_run = Some(seq);
                run_len += 1;
            } else {
                if let Some(last) = ack_run.take() {
                    send(
                        out,
                        c.channel,
                        Method::BasicAck(BasicAck {
                            delivery_tag: last,
                            multiple: run_len > 1,
                        }),
                    );
                    run_len = 0;
                }
                send(
                    out,
                    c.channel,
                    Method::BasicNack(BasicNack {
                        delivery_tag: seq,
                        multiple: false,
                        requeue: false,
                    }),
                );
            }
        }
        if let Some(last) = ack_run {
            send(
                out,
                c.channel,
                Method::BasicAck(BasicAck {
                    delivery_tag: last,
                    multiple: run_len > 1,
                }),
            );
        }
    }

    pub(crate) fn on_tx_done(
        &mut self,
        channels: &mut BTreeMap<u16, Channel>,
        t: TxDone,
        out: &mut BytesMut,
    ) {
        let Some(ch) = channels.get_mut(&t.channel) else {
            return;
        };
        ch.tx_committing = false;
        if ch.closing {
            return;
        }
        if t.ok {
            send(out, t.channel, Method::TxCommitOk(TxCommitOk {}));
        } else {
            let e = Exception::connection(
                code::INTERNAL_ERROR,
                "transaction could not be made durable",
            )
            .at(90, 20);
            send(
                out,
                0,
                Method::ConnectionClose(ferrymq_amqp_codec::ConnectionClose {
                    reply_code: e.code,
                    reply_text: e.reply_text(),
                    class_id: e.class_id,
                    method_id: e.method_id,
                }),
            );
        }
    }

    // ------------------------------------------------------------ deliveries

    pub(crate) fn on_consumer_event(
        &mut self,
        channels: &mut BTreeMap<u16, Channel>,
        ev: ConsumerEvent,
        out: &mut BytesMut,
        frame_max: u32,
    ) {
        match ev {
            ConsumerEvent::Deliver(batch) => self.deliver(channels, batch, out, frame_max),
            ConsumerEvent::Cancelled {
                consumer,
                consumer_tag,
            } => {
                let Some(c) = self.consumers.remove(&consumer) else {
                    return;
                };
                if let Some(ch) = channels.get_mut(&c.channel) {
                    ch.consumers.remove(&c.tag);
                    if self.cancel_notify && !ch.closing {
                        send(
                            out,
                            c.channel,
                            Method::BasicCancel(BasicCancel {
                                consumer_tag: consumer_tag.to_string(),
                                no_wait: true,
                            }),
                        );
                    }
                }
            }
        }
    }

    fn deliver(
        &mut self,
        channels: &mut BTreeMap<u16, Channel>,
        batch: Vec<Delivery>,
        out: &mut BytesMut,
        frame_max: u32,
    ) {
        let mut released: HashMap<ConsumerId, (u32, u64)> = HashMap::new();
        let mut bytes_out = 0u64;
        let n = batch.len() as u64;
        for d in batch {
            let target = self.consumers.get(&d.consumer).and_then(|c| {
                channels
                    .get_mut(&c.channel)
                    .filter(|ch| !ch.closing)
                    .map(|ch| (c, ch))
            });
            let Some((c, ch)) = target else {
                // The consumer's channel is gone: give the message back.
                if let Some(QueueRef::Classic(q)) = self
                    .consumers
                    .get(&d.consumer)
                    .and_then(|c| c.queue.clone())
                {
                    q.nack(&[d.id], true, now_ms());
                }
                continue;
            };
            let tag = ch.next_tag;
            ch.next_tag += 1;
            let extra = delivery_header(c.queue.as_ref(), &d);
            let m = &d.message;
            let method = Method::BasicDeliver(BasicDeliver {
                consumer_tag: d.consumer_tag.to_string(),
                delivery_tag: tag,
                redelivered: d.redelivered,
                exchange: m.exchange.clone(),
                routing_key: m.routing_key.clone(),
            });
            encode_content(
                c.channel,
                &method,
                &properties_out(m, extra),
                &m.body,
                frame_max,
                out,
            );
            bytes_out += m.body.len() as u64;
            match (&c.queue, c.no_ack) {
                (Some(QueueRef::Classic(_)), true) => {
                    let e = released.entry(d.consumer).or_default();
                    e.0 += 1;
                    e.1 += m.body.len() as u64;
                }
                (Some(q), false) => {
                    ch.unacked.insert(
                        tag,
                        Unacked {
                            queue: q.clone(),
                            id: d.id,
                            consumer: d.consumer,
                        },
                    );
                }
                _ => {}
            }
        }
        if let Some(h) = &self.handle {
            h.stats
                .messages_out
                .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            h.stats
                .bytes_out
                .fetch_add(bytes_out, std::sync::atomic::Ordering::Relaxed);
        }
        for (consumer, (count, bytes)) in released {
            if let Some(QueueRef::Classic(q)) =
                self.consumers.get(&consumer).and_then(|c| c.queue.as_ref())
            {
                self.encoded_no_ack.push(Release {
                    queue: q.clone(),
                    consumer,
                    count,
                    bytes,
                });
            }
        }
    }

    /// Gives deliveries that never reached the client back to their queues (the
    /// connection ended with them still in its sink).
    pub(crate) fn return_undelivered(&self, batch: Vec<Delivery>) {
        let now = now_ms();
        for d in batch {
            if let Some(QueueRef::Classic(q)) = self
                .consumers
                .get(&d.consumer)
                .and_then(|c| c.queue.clone())
            {
                q.nack(&[d.id], true, now);
            }
        }
    }

    /// The no-ack send windows to give back once what is encoded so far is written.
    pub(crate) fn take_encoded_no_ack(&mut self) -> Vec<Release> {
        std::mem::take(&mut self.encoded_no_ack)
    }

    // ------------------------------------------------------------ errors and close

    /// Closes a channel with an exception: its consumers are cancelled and its
    /// unacked messages returned, then `channel.close` is sent.
    pub(crate) fn channel_exception(
        &mut self,
        channels: &mut BTreeMap<u16, Channel>,
        id: u16,
        e: Exception,
        out: &mut BytesMut,
        frame_max: u32,
    ) {
        tracing::debug!(channel = id, code = e.code, text = %e.text, "AMQP channel exception");
        self.flush_publishes(channels, out, frame_max);
        self.release_channel(channels, id);
        if let Some(ch) = channels.get_mut(&id) {
            ch.closing = true;
            ch.content = None;
            ch.tx = None;
        }
        send(
            out,
            id,
            Method::ChannelClose(ChannelClose {
                reply_code: e.code,
                reply_text: e.reply_text(),
                class_id: e.class_id,
                method_id: e.method_id,
            }),
        );
    }

    /// Cancels a channel's consumers and returns its unacked messages.
    fn release_channel(&mut self, channels: &mut BTreeMap<u16, Channel>, id: u16) {
        let Some(ch) = channels.get_mut(&id) else {
            return;
        };
        let now = now_ms();
        for (_, cid) in ch.consumers.drain() {
            if let Some(c) = self.consumers.remove(&cid) {
                match c.queue {
                    Some(QueueRef::Classic(q)) => {
                        q.cancel(cid, now);
                    }
                    Some(QueueRef::Stream(s)) => {
                        s.cancel(cid);
                    }
                    None => {}
                }
            }
        }
        if let Some(token) = ch.reply_token.take() {
            if let Ok(mut r) = self.shared.reply_to.lock() {
                r.remove(&token);
            }
        }
        let unacked = std::mem::take(&mut ch.unacked);
        let mut tx_held: Vec<Unacked> = Vec::new();
        if let Some(tx) = ch.tx.as_mut() {
            for (entries, _) in tx.settles.drain(..) {
                tx_held.extend(entries.into_iter().map(|(_, u)| u));
            }
        }
        settle(
            unacked.into_values().chain(tx_held).collect(),
            Some(true),
            now,
        );
    }

    /// Fully closes a channel (connection end).
    pub(crate) fn close_channel(&mut self, channels: &mut BTreeMap<u16, Channel>, id: u16) {
        self.release_channel(channels, id);
        channels.remove(&id);
    }

    // ------------------------------------------------------------ methods

    fn method(
        &mut self,
        channels: &mut BTreeMap<u16, Channel>,
        id: u16,
        method: Method,
        out: &mut BytesMut,
        frame_max: u32,
    ) -> Result<(), Exception> {
        let vh = self.vh()?;
        let conn = self.conn_id();
        match method {
            Method::ChannelClose(_) => {
                self.close_channel(channels, id);
                send(out, id, Method::ChannelCloseOk(ChannelCloseOk {}));
            }
            Method::ChannelCloseOk(_) => {
                channels.remove(&id);
            }
            Method::ChannelFlow(f) => {
                if !f.active {
                    return Err(Exception::connection(code::NOT_IMPLEMENTED, "active=false"));
                }
                send(
                    out,
                    id,
                    Method::ChannelFlowOk(ChannelFlowOk { active: true }),
                );
            }
            Method::ExchangeDeclare(x) => {
                // A passive declare only checks existence: the type is not looked at.
                let kind = if x.passive {
                    ExchangeKind::parse(&x.kind).unwrap_or(ExchangeKind::Direct)
                } else {
                    ExchangeKind::parse(&x.kind).ok_or_else(|| {
                        Exception::connection(
                            code::COMMAND_INVALID,
                            format!("unknown exchange type '{}'", x.kind),
                        )
                    })?
                };
                if !x.passive {
                    self.authorize(&vh, Access::Configure, "exchange", &x.exchange)?;
                }
                let decl = ExchangeDecl {
                    name: x.exchange,
                    kind,
                    durable: x.durable,
                    auto_delete: x.auto_delete,
                    internal: x.internal,
                    arguments: table_in(&x.arguments),
                };
                vh.declare_exchange(decl, x.passive)?;
                if !x.no_wait {
                    send(out, id, Method::ExchangeDeclareOk(ExchangeDeclareOk {}));
                }
            }
            Method::ExchangeDelete(x) => {
                self.authorize(&vh, Access::Configure, "exchange", &x.exchange)?;
                vh.delete_exchange(&x.exchange, x.if_unused)?;
                if !x.no_wait {
                    send(out, id, Method::ExchangeDeleteOk(ExchangeDeleteOk {}));
                }
            }
            Method::ExchangeBind(b) => {
                self.authorize(&vh, Access::Write, "exchange", &b.destination)?;
                self.authorize(&vh, Access::Read, "exchange", &b.source)?;
                self.authorize_topic(&vh, Access::Read, &b.source, &b.routing_key)?;
                vh.bind(
                    Binding {
                        source: b.source,
                        destination: Destination::Exchange(b.destination),
                        routing_key: b.routing_key,
                        arguments: table_in(&b.arguments),
                    },
                    conn,
                )?;
                if !b.no_wait {
                    send(out, id, Method::ExchangeBindOk(ExchangeBindOk {}));
                }
            }
            Method::ExchangeUnbind(b) => {
                self.authorize(&vh, Access::Write, "exchange", &b.destination)?;
                self.authorize(&vh, Access::Read, "exchange", &b.source)?;
                self.authorize_topic(&vh, Access::Read, &b.source, &b.routing_key)?;
                vh.unbind(
                    &Binding {
                        source: b.source,
                        destination: Destination::Exchange(b.destination),
                        routing_key: b.routing_key,
                        arguments: table_in(&b.arguments),
                    },
                    conn,
                )?;
                if !b.no_wait {
                    send(out, id, Method::ExchangeUnbindOk(ExchangeUnbindOk {}));
                }
            }
            Method::QueueDeclare(q) => {
                if q.queue == REPLY_TO {
                    if !q.no_wait {
                        send(
                            out,
                            id,
                            Method::QueueDeclareOk(QueueDeclareOk {
                                queue: q.queue,
                                message_count: 0,
                                consumer_count: 0,
                            }),
                        );
                    }
                    return Ok(());
                }
                let mut name = q.queue;
                if !q.passive {
                    if name.is_empty() {
                        // Named here (as the core would) so that the check sees the name.
                        name = format!(
                            "amq.gen-{:016x}{:016x}",
                            fastrand::u64(..),
                            fastrand::u64(..)
                        );
                    }
                    self.authorize(&vh, Access::Configure, "queue", &name)?;
                }
                let decl = QueueDecl {
                    name,
                    durable: q.durable,
                    exclusive: q.exclusive,
                    auto_delete: q.auto_delete,
                    arguments: table_in(&q.arguments),
                };
                if !q.passive {
                    rabbitmq_queue_type_rules(&decl, &vh.name)?;
                }
                let ok = vh.declare_queue(decl, conn, q.passive).inspect_err(|e| {
                    if matches!(e, CoreError::LimitReached(_)) {
                        self.shared
                            .broker
                            .admission()
                            .refused(Limit::QueuesPerVhost, crate::PROTOCOL);
                    }
                })?;
                if let Some(ch) = channels.get_mut(&id) {
                    ch.last_queue = Some(ok.name.clone());
                }
                if !q.no_wait {
                    send(
                        out,
                        id,
                        Method::QueueDeclareOk(QueueDeclareOk {
                            queue: ok.name,
                            message_count: ok.message_count.min(u32::MAX as u64) as u32,
                            consumer_count: ok.consumer_count,
                        }),
                    );
                }
            }
            Method::QueueBind(b) => {
                let queue = self.queue_name(channels, id, b.queue)?;
                let routing_key = if b.routing_key.is_empty() {
                    queue.clone()
                } else {
                    b.routing_key
                };
                self.authorize(&vh, Access::Write, "queue", &queue)?;
                self.authorize(&vh, Access::Read, "exchange", &b.exchange)?;
                self.authorize_topic(&vh, Access::Read, &b.exchange, &routing_key)?;
                vh.bind(
                    Binding {
                        source: b.exchange,
                        destination: Destination::Queue(queue),
                        routing_key,
                        arguments: table_in(&b.arguments),
                    },
                    conn,
                )?;
                if !b.no_wait {
                    send(out, id, Method::QueueBindOk(QueueBindOk {}));
                }
            }
            Method::QueueUnbind(b) => {
                let queue = self.queue_name(channels, id, b.queue)?;
                self.authorize(&vh, Access::Write, "queue", &queue)?;
                self.authorize(&vh, Access::Read, "exchange", &b.exchange)?;
                self.authorize_topic(&vh, Access::Read, &b.exchange, &b.routing_key)?;
                vh.unbind(
                    &Binding {
                        source: b.exchange,
                        destination: Destination::Queue(queue),
                        routing_key: b.routing_key,
                        arguments: table_in(&b.arguments),
                    },
                    conn,
                )?;
                send(out, id, Method::QueueUnbindOk(QueueUnbindOk {}));
            }
            Method::QueuePurge(p) => {
                let queue = self.queue_name(channels, id, p.queue)?;
                self.authorize(&vh, Access::Read, "queue", &queue)?;
                let n = vh.purge_queue(&queue, conn)?;
                if !p.no_wait {
                    send(
                        out,
                        id,
                        Method::QueuePurgeOk(QueuePurgeOk {
                            message_count: n.min(u32::MAX as u64) as u32,
                        }),
                    );
                }
            }
            Method::QueueDelete(d) => {
                let queue = self.queue_name(channels, id, d.queue)?;
                self.authorize(&vh, Access::Configure, "queue", &queue)?;
                let n = vh.delete_queue(&queue, d.if_unused, d.if_empty, conn)?;
                if !d.no_wait {
                    send(
                        out,
                        id,
                        Method::QueueDeleteOk(QueueDeleteOk {
                            message_count: n.min(u32::MAX as u64) as u32,
                        }),
                    );
                }
            }
            Method::BasicQos(q) => {
                if q.prefetch_size != 0 {
                    // As RabbitMQ: a byte limit per consumer is not offered over AMQP.
                    return Err(Exception::connection(
                        code::NOT_IMPLEMENTED,
                        format!("prefetch_size!=0 ({})", q.prefetch_size),
                    ));
                }
                if let Some(ch) = channels.get_mut(&id) {
                    if q.global {
                        // One limit across the channel's consumers (RabbitMQ's global=true).
                        match &ch.global_credit {
                            Some(p) => p.set_limit(q.prefetch_count as u32),
                            None => {
                                ch.global_credit = Some(CreditPool::new(q.prefetch_count as u32))
                            }
                        }
                        if let Some(r) = &ch.registration {
                            r.global_prefetch_count
                                .store(q.prefetch_count as u32, Relaxed);
                        }
                    } else {
                        ch.prefetch_count = q.prefetch_count;
                        if let Some(r) = &ch.registration {
                            r.prefetch_count.store(q.prefetch_count as u32, Relaxed);
                        }
                    }
                }
                send(out, id, Method::BasicQosOk(BasicQosOk {}));
            }
            Method::BasicConsume(c) => self.consume(channels, id, c, out)?,
            Method::BasicCancel(c) => {
                if let Some(cid) = channels
                    .get_mut(&id)
                    .and_then(|ch| ch.consumers.remove(&c.consumer_tag))
                {
                    if let Some(cr) = self.consumers.remove(&cid) {
                        match cr.queue {
                            Some(QueueRef::Classic(q)) => {
                                q.cancel(cid, now_ms());
                            }
                            Some(QueueRef::Stream(s)) => {
                                s.cancel(cid);
                            }
                            None => {
                                if let Some(t) =
                                    channels.get_mut(&id).and_then(|ch| ch.reply_token.take())
                                {
                                    if let Ok(mut r) = self.shared.reply_to.lock() {
                                        r.remove(&t);
                                    }
                                }
                            }
                        }
                    }
                }
                if !c.no_wait {
                    send(
                        out,
                        id,
                        Method::BasicCancelOk(BasicCancelOk {
                            consumer_tag: c.consumer_tag,
                        }),
                    );
                }
            }
            Method::BasicGet(g) => {
                let queue = self.queue_name(channels, id, g.queue)?;
                self.authorize(&vh, Access::Read, "queue", &queue)?;
                match vh.queue_for(&queue, conn)? {
                    QueueRef::Stream(_) => {
                        return Err(Exception::connection(
                            code::NOT_IMPLEMENTED,
                            format!("basic.get not supported by stream queues queue '{queue}' in vhost '{}'", vh.name),
                        ));
                    }
                    QueueRef::Classic(q) => match q.get(g.no_ack, now_ms()) {
                        None => send(out, id, Method::BasicGetEmpty(BasicGetEmpty {})),
                        Some((d, left)) => {
                            let Some(ch) = channels.get_mut(&id) else {
                                return Ok(());
                            };
                            let tag = ch.next_tag;
                            ch.next_tag += 1;
                            if !g.no_ack {
                                ch.unacked.insert(
                                    tag,
                                    Unacked {
                                        queue: QueueRef::Classic(q.clone()),
                                        id: d.id,
                                        consumer: GET_CONSUMER,
                                    },
                                );
                            }
                            let m = &d.message;
                            let method = Method::BasicGetOk(BasicGetOk {
                                delivery_tag: tag,
                                redelivered: d.redelivered,
                                exchange: m.exchange.clone(),
                                routing_key: m.routing_key.clone(),
                                message_count: left.min(u32::MAX as u64) as u32,
                            });
                            let extra = delivery_header(Some(&QueueRef::Classic(q.clone())), &d);
                            encode_content(
                                id,
                                &method,
                                &properties_out(m, extra),
                                &m.body,
                                frame_max,
                                out,
                            );
                        }
                    },
                }
            }
            Method::BasicAck(a) => {
                self.settle_tags(channels, id, a.delivery_tag, a.multiple, None)?
            }
            Method::BasicNack(n) => {
                self.settle_tags(channels, id, n.delivery_tag, n.multiple, Some(n.requeue))?
            }
            Method::BasicReject(r) => {
                self.settle_tags(channels, id, r.delivery_tag, false, Some(r.requeue))?
            }
            Method::BasicRecover(_) | Method::BasicRecoverAsync(_) => {
                let (is_async, requeue) = match &method {
                    Method::BasicRecover(r) => (false, r.requeue),
                    Method::BasicRecoverAsync(r) => (true, r.requeue),
                    _ => (false, true),
                };
                if !requeue {
                    return Err(Exception::connection(
                        code::NOT_IMPLEMENTED,
                        "requeue=false",
                    ));
                }
                if let Some(ch) = channels.get_mut(&id) {
                    let all = std::mem::take(&mut ch.unacked);
                    settle(all.into_values().collect(), Some(true), now_ms());
                }
                if !is_async {
                    send(out, id, Method::BasicRecoverOk(BasicRecoverOk {}));
                }
            }
            Method::ConfirmSelect(c) => {
                let Some(ch) = channels.get_mut(&id) else {
                    return Ok(());
                };
                if ch.tx.is_some() {
                    return Err(Exception::channel(
                        code::PRECONDITION_FAILED,
                        "cannot switch from tx to confirm mode",
                    ));
                }
                ch.confirm = true;
                if let Some(r) = &ch.registration {
                    r.confirm.store(true, Relaxed);
                }
                if !c.nowait {
                    send(out, id, Method::ConfirmSelectOk(ConfirmSelectOk {}));
                }
            }
            Method::TxSelect(_) => {
                let Some(ch) = channels.get_mut(&id) else {
                    return Ok(());
                };
                if ch.confirm {
                    return Err(Exception::channel(
                        code::PRECONDITION_FAILED,
                        "cannot switch from confirm to tx mode",
                    ));
                }
                ch.tx.get_or_insert_with(Tx::default);
                if let Some(r) = &ch.registration {
                    r.transactional.store(true, Relaxed);
                }
                send(out, id, Method::TxSelectOk(TxSelectOk {}));
            }
            Method::TxCommit(_) => self.tx_commit(channels, id, out, frame_max)?,
            Method::TxRollback(_) => {
                let Some(ch) = channels.get_mut(&id) else {
                    return Ok(());
                };
                let Some(tx) = ch.tx.as_mut() else {
                    return Err(Exception::channel(
                        code::PRECONDITION_FAILED,
                        "channel is not transactional",
                    ));
                };
                tx.publishes.clear();
                // Acks held by the transaction are undone: the messages stay unacked.
                let held: Vec<HeldSettle> = tx.settles.drain(..).collect();
                for (entries, _) in held {
                    ch.unacked.extend(entries);
                }
                send(out, id, Method::TxRollbackOk(TxRollbackOk {}));
            }
            // Methods only a server sends (declare-ok, deliver, ...).
            _ => {
                return Err(Exception::connection(
                    code::COMMAND_INVALID,
                    "unimplemented method",
                ));
            }
        }
        Ok(())
    }

    /// An empty queue name means the channel's last declared queue.
    fn queue_name(
        &self,
        channels: &BTreeMap<u16, Channel>,
        id: u16,
        name: String,
    ) -> Result<String, Exception> {
        if !name.is_empty() {
            return Ok(name);
        }
        channels
            .get(&id)
            .and_then(|ch| ch.last_queue.clone())
            .ok_or_else(|| Exception::channel(code::NOT_FOUND, "no previously declared queue"))
    }

    fn consume(
        &mut self,
        channels: &mut BTreeMap<u16, Channel>,
        id: u16,
        c: ferrymq_amqp_codec::BasicConsume,
        out: &mut BytesMut,
    ) -> Result<(), Exception> {
        let vh = self.vh()?;
        let conn = self.conn_id();
        let tag = if c.consumer_tag.is_empty() {
            ctag()
        } else {
            c.consumer_tag.clone()
        };
        let Some(ch) = channels.get_mut(&id) else {
            return Ok(());
        };
        if ch.consumers.contains_key(&tag) {
            return Err(Exception::connection(
                code::NOT_ALLOWED,
                format!("attempt to reuse consumer tag '{tag}'"),
            ));
        }
        let max = self.shared.config.consumers_per_channel_max;
        if max > 0 && ch.consumers.len() >= max {
            self.shared
                .broker
                .admission()
                .refused(Limit::ConsumersPerChannel, crate::PROTOCOL);
            return Err(Exception::channel(
                code::PRECONDITION_FAILED,
                format!("consumer limit of {max} per channel reached"),
            ));
        }
        let consumer_id;
        if c.queue == REPLY_TO {
            if !c.no_ack {
                return Err(Exception::channel(
                    code::PRECONDITION_FAILED,
                    "reply consumer cannot acknowledge",
                ));
            }
            if ch.reply_token.is_some() {
                return Err(Exception::channel(
                    code::PRECONDITION_FAILED,
                    "reply consumer already set",
                ));
            }
            let token = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
            consumer_id = u64::MAX - fastrand::u64(..u32::MAX as u64);
            let target = ReplyTarget {
                sink: self.sink.clone(),
                consumer: consumer_id,
                tag: tag.as_str().into(),
            };
            if let Ok(mut r) = self.shared.reply_to.lock() {
                r.insert(token.clone(), target);
            }
            ch.reply_token = Some(token);
            self.consumers.insert(
                consumer_id,
                ConsumerRef {
                    channel: id,
                    tag: tag.clone(),
                    queue: None,
                    no_ack: true,
                },
            );
        } else {
            let queue = if c.queue.is_empty() {
                ch.last_queue.clone().ok_or_else(|| {
                    Exception::channel(code::NOT_FOUND, "no previously declared queue")
                })?
            } else {
                c.queue.clone()
            };
            self.authorize(&vh, Access::Read, "queue", &queue)?;
            let is_stream = matches!(vh.queue_for(&queue, conn)?, QueueRef::Stream(_));
            let offset = if is_stream {
                if c.no_ack {
                    return Err(Exception::connection(
                        code::NOT_IMPLEMENTED,
                        format!("automatic acknowledgement not supported by stream queues queue '{queue}' in vhost '{}'", vh.name),
                    ));
                }
                if ch.prefetch_count == 0 && ch.global_credit.is_none() {
                    return Err(Exception::channel(
                        code::PRECONDITION_FAILED,
                        format!("consumer prefetch count is not set for 'queue '{queue}' in vhost '{}''", vh.name),
                    ));
                }
                Some(stream_offset(c.arguments.get("x-stream-offset"))?)
            } else {
                None
            };
            let opts = ConsumerOptions {
                tag: tag.clone(),
                no_ack: c.no_ack,
                // A no-ack consumer still gets a send window so memory stays bounded.
                prefetch_count: if c.no_ack && ch.prefetch_count == 0 {
                    2000
                } else {
                    ch.prefetch_count as u32
                },
                // Bounds what waits for a client that does not read (issue #9).
                prefetch_bytes: self
                    .shared
                    .broker
                    .admission()
                    .limits()
                    .consumer_window_bytes(self.shared.config.consumer_window_max_bytes),
                shared_credit: if c.no_ack {
                    None
                } else {
                    ch.global_credit.clone()
                },
                priority: int_arg(c.arguments.get("x-priority"))
                    .unwrap_or(0)
                    .clamp(i32::MIN as i64, i32::MAX as i64) as i32,
                exclusive: c.exclusive,
                connection: conn,
                channel: id as u32,
            };
            // Register before attaching: the core may deliver synchronously.
            let (cid, qref) = vh.consume(&queue, opts, offset, self.sink.clone())?;
            consumer_id = cid;
            self.consumers.insert(
                cid,
                ConsumerRef {
                    channel: id,
                    tag: tag.clone(),
                    queue: Some(qref),
                    no_ack: c.no_ack,
                },
            );
        }
        ch.consumers.insert(tag.clone(), consumer_id);
        if !c.no_wait {
            send(
                out,
                id,
                Method::BasicConsumeOk(BasicConsumeOk { consumer_tag: tag }),
            );
        }
        Ok(())
    }

    fn settle_tags(
        &mut self,
        channels: &mut BTreeMap<u16, Channel>,
        id: u16,
        tag: u64,
        multiple: bool,
        requeue: Option<bool>,
    ) -> Result<(), Exception> {
        let Some(ch) = channels.get_mut(&id) else {
            return Ok(());
        };
        let entries: Vec<(u64, Unacked)> = if multiple {
            let keys: Vec<u64> = if tag == 0 {
                ch.unacked.keys().copied().collect()
            } else {
                ch.unacked.range(..=tag).map(|(k, _)| *k).collect()
            };
            keys.iter()
                .filter_map(|k| ch.unacked.remove(k).map(|u| (*k, u)))
                .collect()
        } else {
            match ch.unacked.remove(&tag) {
                Some(u) => vec![(tag, u)],
                None => {
                    return Err(Exception::channel(
                        code::PRECONDITION_FAILED,
                        format!("unknown delivery tag {tag}"),
                    ))
                }
            }
        };
        if entries.is_empty() && tag != 0 {
            return Err(Exception::channel(
                code::PRECONDITION_FAILED,
                format!("unknown delivery tag {tag}"),
            ));
        }
        match ch.tx.as_mut() {
            Some(tx) => tx.settles.push((entries, requeue)),
            None => settle(
                entries.into_iter().map(|(_, u)| u).collect(),
                requeue,
                now_ms(),
            ),
        }
        self.kick_shared(channels, id);
        Ok(())
    }

    /// With a channel-wide prefetch, credit freed on one queue may let another
    /// queue's consumer on the channel go on: dispatch on each of them again.
    fn kick_shared(&self, channels: &BTreeMap<u16, Channel>, id: u16) {
        let Some(ch) = channels.get(&id) else { return };
        if ch.global_credit.is_none() {
            return;
        }
        let now = now_ms();
        let mut kicked: Vec<*const ferrymq_core::queue::Queue> = Vec::new();
        for cid in ch.consumers.values() {
            if let Some(QueueRef::Classic(q)) =
                self.consumers.get(cid).and_then(|c| c.queue.as_ref())
            {
                let ptr = Arc::as_ptr(q);
                if !kicked.contains(&ptr) {
                    kicked.push(ptr);
                    q.kick(now);
                }
            }
        }
    }

    fn tx_commit(
        &mut self,
        channels: &mut BTreeMap<u16, Channel>,
        id: u16,
        out: &mut BytesMut,
        frame_max: u32,
    ) -> Result<(), Exception> {
        let Some(ch) = channels.get_mut(&id) else {
            return Ok(());
        };
        let Some(tx) = ch.tx.as_mut() else {
            return Err(Exception::channel(
                code::PRECONDITION_FAILED,
                "channel is not transactional",
            ));
        };
        let publishes = std::mem::take(&mut tx.publishes);
        let settles: Vec<_> = tx.settles.drain(..).collect();
        ch.tx_committing = true;
        let now = now_ms();
        for (entries, requeue) in settles {
            settle(entries.into_iter().map(|(_, u)| u).collect(), requeue, now);
        }
        // Publish the transaction's messages, then confirm the commit once durable.
        let vh = self.vh()?;
        let mut batches = Vec::new();
        let mut run: Vec<Pending> = Vec::new();
        let flush_run = |run: &mut Vec<Pending>,
                         batches: &mut Vec<PublishedBatch>,
                         ctx: &mut Ctx,
                         out: &mut BytesMut|
         -> Result<(), Exception> {
            let Some(first) = run.first() else {
                return Ok(());
            };
            let exchange = first.exchange.clone();
            let items: Vec<Pending> = std::mem::take(run);
            let mandatory: Vec<Option<Message>> = items
                .iter()
                .map(|p| p.mandatory.then(|| p.message.clone()))
                .collect();
            let b = vh.publish_batch(&exchange, items.into_iter().map(|p| p.message).collect())?;
            for (o, m) in b.outcomes.iter().zip(mandatory) {
                if let (true, Some(m)) = (o.unroutable(), m) {
                    ctx.basic_return(out, id, &m, frame_max);
                }
            }
            batches.push(b);
            Ok(())
        };
        for p in publishes {
            if run.first().is_some_and(|f| f.exchange != p.exchange) {
                flush_run(&mut run, &mut batches, self, out)?;
            }
            run.push(p);
        }
        flush_run(&mut run, &mut batches, self, out)?;
        let done = self.done.clone();
        tokio::spawn(async move {
            let mut ok = true;
            for b in batches {
                ok &= b.durable().await.is_ok();
            }
            let _ = done.send(Completion::Tx(TxDone { channel: id, ok }));
        });
        Ok(())
    }
}

/// Acks (requeue None) or nacks a set of deliveries, grouped per queue.
fn settle(entries: Vec<Unacked>, requeue: Option<bool>, now: i64) {
    let mut groups: Vec<(QueueRef, Vec<u64>, Vec<ConsumerId>)> = Vec::new();
    for u in entries {
        let same = |q: &QueueRef| match (q, &u.queue) {
            (QueueRef::Classic(a), QueueRef::Classic(b)) => Arc::ptr_eq(a, b),
            (QueueRef::Stream(a), QueueRef::Stream(b)) => Arc::ptr_eq(a, b),
            _ => false,
        };
        match groups.iter_mut().find(|(q, _, _)| same(q)) {
            Some((_, ids, cs)) => {
                ids.push(u.id);
                cs.push(u.consumer);
            }
            None => groups.push((u.queue, vec![u.id], vec![u.consumer])),
        }
    }
    for (q, ids, consumers) in groups {
        match q {
            QueueRef::Classic(q) => match requeue {
                None => q.ack(&ids, now),
                Some(r) => q.nack(&ids, r, now),
            },
            // Stream acks (and nacks) only return credit: a stream is not consumed.
            QueueRef::Stream(s) => {
                for c in consumers {
                    s.credit(c, 1);
                }
            }
        }
    }
}
