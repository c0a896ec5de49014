//! `Method`: every AMQP 0-9-1 method RabbitMQ 3.13 implements, and its argument codec.
//!
//! One table (the `methods!` invocation below) defines each method once: its class and method
//! ids, its name, whether it carries content, its struct's fields and its wire layout. The
//! macro derives the structs, the `Method` enum, the id/name lookups and both directions of
//! the codec from it, so the encoder and decoder cannot drift apart.
//!
//! Naming: variant = class + method in UpperCamelCase, holding a struct of the same name whose
//! fields are the spec's argument names with `-` → `_` (and `type` → `kind`). Reserved
//! arguments (`reserved-1`, ...) are not in the structs: they are written as zero / empty and
//! skipped, whatever their value, on read. Bits are packed as the spec says: consecutive bit
//! arguments share an octet, low bit first.

use bytes::{Bytes, BytesMut};

use crate::error::CodecError;
use crate::value::{read_table, write_table, FieldTable};
use crate::wire::{Reader, Writer};

type Result<T> = std::result::Result<T, CodecError>;

/// Reads one wire item into `$m.$f`, or skips a reserved one.
macro_rules! read_op {
    ($r:ident, $m:ident, octet, $f:ident) => {
        $m.$f = $r.u8()?;
    };
    ($r:ident, $m:ident, short, $f:ident) => {
        $m.$f = $r.u16()?;
    };
    ($r:ident, $m:ident, long, $f:ident) => {
        $m.$f = $r.u32()?;
    };
    ($r:ident, $m:ident, longlong, $f:ident) => {
        $m.$f = $r.u64()?;
    };
    ($r:ident, $m:ident, bit, $f:ident) => {
        $m.$f = $r.bit()?;
    };
    ($r:ident, $m:ident, shortstr, $f:ident) => {
        $m.$f = $r.shortstr()?;
    };
    ($r:ident, $m:ident, longstr, $f:ident) => {
        $m.$f = $r.longstr()?;
    };
    ($r:ident, $m:ident, table, $f:ident) => {
        $m.$f = read_table($r)?;
    };
    ($r:ident, $m:ident, reserved_short) => {
        $r.u16()?;
    };
    ($r:ident, $m:ident, reserved_bit) => {
        $r.bit()?;
    };
    ($r:ident, $m:ident, reserved_shortstr) => {
        $r.shortstr_bytes()?;
    };
    ($r:ident, $m:ident, reserved_longstr) => {
        $r.longstr_slice()?;
    };
}

/// Writes one wire item from `$m.$f`, or a zero / empty reserved one.
macro_rules! write_op {
    ($w:ident, $m:ident, octet, $f:ident) => {
        $w.u8($m.$f);
    };
    ($w:ident, $m:ident, short, $f:ident) => {
        $w.u16($m.$f);
    };
    ($w:ident, $m:ident, long, $f:ident) => {
        $w.u32($m.$f);
    };
    ($w:ident, $m:ident, longlong, $f:ident) => {
        $w.u64($m.$f);
    };
    ($w:ident, $m:ident, bit, $f:ident) => {
        $w.bit($m.$f);
    };
    ($w:ident, $m:ident, shortstr, $f:ident) => {
        $w.shortstr(&$m.$f);
    };
    ($w:ident, $m:ident, longstr, $f:ident) => {
        $w.longstr(&$m.$f);
    };
    ($w:ident, $m:ident, table, $f:ident) => {
        write_table_arg($w, &$m.$f);
    };
    ($w:ident, $m:ident, reserved_short) => {
        $w.u16(0);
    };
    ($w:ident, $m:ident, reserved_bit) => {
        $w.bit(false);
    };
    ($w:ident, $m:ident, reserved_shortstr) => {
        $w.shortstr("");
    };
    ($w:ident, $m:ident, reserved_longstr) => {
        $w.longstr(b"");
    };
}

fn write_table_arg(w: &mut Writer<'_>, t: &FieldTable) {
    // A table ends any run of bits, like every non-bit argument.
    w.end_bits();
    write_table(w.out, t);
}

macro_rules! methods {
    ($(
        $(#[$doc:meta])*
        $variant:ident = ($class:literal, $method:literal) $name:literal content $content:literal {
            $( $field:ident : $ty:ty ),* $(,)?
        } [ $( $op:ident $( ( $wf:ident ) )? ),* $(,)? ]
    )*) => {
        $(
            $(#[$doc])*
            #[derive(Debug, Clone, PartialEq, Default)]
            pub struct $variant { $( pub $field: $ty ),* }

            impl From<$variant> for Method {
                fn from(m: $variant) -> Method {
                    Method::$variant(m)
                }
            }
        )*

        /// One AMQP 0-9-1 method with its arguments.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Method {
            $( $(#[$doc])* $variant($variant), )*
        }

        impl Method {
            /// The class id (10 connection, 20 channel, 40 exchange, 50 queue, 60 basic,
            /// 85 confirm, 90 tx).
            pub fn class_id(&self) -> u16 {
                match self { $( Method::$variant(_) => $class, )* }
            }

            /// The method id within its class.
            pub fn method_id(&self) -> u16 {
                match self { $( Method::$variant(_) => $method, )* }
            }

            /// The spec's name, e.g. `"queue.declare"`, `"basic.get-ok"`.
            pub fn name(&self) -> &'static str {
                match self { $( Method::$variant(_) => $name, )* }
            }

            /// True for the methods followed by a content header and body frames:
            /// basic.publish, basic.return, basic.deliver, basic.get-ok.
            pub fn has_content(&self) -> bool {
                match self { $( Method::$variant(_) => $content, )* }
            }
        }

        /// The name of the method `class_id.method_id`, if AMQP 0-9-1 defines it.
        pub fn method_name(class_id: u16, method_id: u16) -> Option<&'static str> {
            match (class_id, method_id) {
                $( ($class, $method) => Some($name), )*
                _ => None,
            }
        }

        fn decode_args(class_id: u16, method_id: u16, r: &mut Reader<'_>) -> Result<Method> {
            match (class_id, method_id) {
                $(
                    ($class, $method) => {
                        #[allow(unused_mut)]
                        let mut m = $variant::default();
                        $( read_op!(r, m, $op $(, $wf)?); )*
                        Ok(Method::$variant(m))
                    }
                )*
                _ => Err(CodecError::UnknownMethod { class_id, method_id }),
            }
        }

        fn encode_args(method: &Method, w: &mut Writer<'_>) {
            match method {
                $(
                    Method::$variant(m) => {
                        let _ = &m;
                        $( write_op!(w, m, $op $(, $wf)?); )*
                    }
                )*
            }
        }

        /// One value of every method, its fields filled from `g` (tests only).
        #[cfg(test)]
        pub(crate) fn samples(g: &mut tests::Gen) -> Vec<Method> {
            vec![ $( Method::$variant($variant { $( $field: tests::Sample::sample(g), )* }), )* ]
        }
    };
}

methods! {
    // ---- connection (10) ----
    /// connection.start (10.10): the server's greeting.
    ConnectionStart = (10, 10) "connection.start" content false {
        version_major: u8, version_minor: u8, server_properties: FieldTable,
        mechanisms: Bytes, locales: Bytes,
    } [octet(version_major), octet(version_minor), table(server_properties),
       longstr(mechanisms), longstr(locales)]
    /// connection.start-ok (10.11)
    ConnectionStartOk = (10, 11) "connection.start-ok" content false {
        client_properties: FieldTable, mechanism: String, response: Bytes, locale: String,
    } [table(client_properties), shortstr(mechanism), longstr(response), shortstr(locale)]
    /// connection.secure (10.20)
    ConnectionSecure = (10, 20) "connection.secure" content false { challenge: Bytes }
        [longstr(challenge)]
    /// connection.secure-ok (10.21)
    ConnectionSecureOk = (10, 21) "connection.secure-ok" content false { response: Bytes }
        [longstr(response)]
    /// connection.tune (10.30)
    ConnectionTune = (10, 30) "connection.tune" content false {
        channel_max: u16, frame_max: u32, heartbeat: u16,
    } [short(channel_max), long(frame_max), short(heartbeat)]
    /// connection.tune-ok (10.31)
    ConnectionTuneOk = (10, 31) "connection.tune-ok" content false {
        channel_max: u16, frame_max: u32, heartbeat: u16,
    } [short(channel_max), long(frame_max), short(heartbeat)]
    /// connection.open (10.40); reserved-1 (capabilities) and reserved-2 (insist) omitted.
    ConnectionOpen = (10, 40) "connection.open" content false { virtual_host: String }
        [shortstr(virtual_host), reserved_shortstr, reserved_bit]
    /// connection.open-ok (10.41); reserved-1 (known-hosts) omitted.
    ConnectionOpenOk = (10, 41) "connection.open-ok" content false {} [reserved_shortstr]
    /// connection.close (10.50)
    ConnectionClose = (10, 50) "connection.close" content false {
        reply_code: u16, reply_text: String, class_id: u16, method_id: u16,
    } [short(reply_code), shortstr(reply_text), short(class_id), short(method_id)]
    /// connection.close-ok (10.51)
    ConnectionCloseOk = (10, 51) "connection.close-ok" content false {} []
    /// connection.blocked (10.60, RabbitMQ extension)
    ConnectionBlocked = (10, 60) "connection.blocked" content false { reason: String }
        [shortstr(reason)]
    /// connection.unblocked (10.61, RabbitMQ extension)
    ConnectionUnblocked = (10, 61) "connection.unblocked" content false {} []
    /// connection.update-secret (10.70, RabbitMQ extension)
    ConnectionUpdateSecret = (10, 70) "connection.update-secret" content false {
        new_secret: Bytes, reason: String,
    } [longstr(new_secret), shortstr(reason)]
    /// connection.update-secret-ok (10.71, RabbitMQ extension)
    ConnectionUpdateSecretOk = (10, 71) "connection.update-secret-ok" content false {} []

    // ---- channel (20) ----
    /// channel.open (20.10); reserved-1 (out-of-band) omitted.
    ChannelOpen = (20, 10) "channel.open" content false {} [reserved_shortstr]
    /// channel.open-ok (20.11); reserved-1 (channel-id, a longstr) omitted.
    ChannelOpenOk = (20, 11) "channel.open-ok" content false {} [reserved_longstr]
    /// channel.flow (20.20)
    ChannelFlow = (20, 20) "channel.flow" content false { active: bool } [bit(active)]
    /// channel.flow-ok (20.21)
    ChannelFlowOk = (20, 21) "channel.flow-ok" content false { active: bool } [bit(active)]
    /// channel.close (20.40)
    ChannelClose = (20, 40) "channel.close" content false {
        reply_code: u16, reply_text: String, class_id: u16, method_id: u16,
    } [short(reply_code), shortstr(reply_text), short(class_id), short(method_id)]
    /// channel.close-ok (20.41)
    ChannelCloseOk = (20, 41) "channel.close-ok" content false {} []

    // ---- exchange (40) ----
    /// exchange.declare (40.10); reserved-1 (ticket) omitted; `kind` is the spec's `type`.
    ExchangeDeclare = (40, 10) "exchange.declare" content false {
        exchange: String, kind: String, passive: bool, durable: bool, auto_delete: bool,
        internal: bool, no_wait: bool, arguments: FieldTable,
    } [reserved_short, shortstr(exchange), shortstr(kind), bit(passive), bit(durable),
       bit(auto_delete), bit(internal), bit(no_wait), table(arguments)]
    /// exchange.declare-ok (40.11)
    ExchangeDeclareOk = (40, 11) "exchange.declare-ok" content false {} []
    /// exchange.delete (40.20); reserved-1 (ticket) omitted.
    ExchangeDelete = (40, 20) "exchange.delete" content false {
        exchange: String, if_unused: bool, no_wait: bool,
    } [reserved_short, shortstr(exchange), bit(if_unused), bit(no_wait)]
    /// exchange.delete-ok (40.21)
    ExchangeDeleteOk = (40, 21) "exchange.delete-ok" content false {} []
    /// exchange.bind (40.30, RabbitMQ extension); reserved-1 (ticket) omitted.
    ExchangeBind = (40, 30) "exchange.bind" content false {
        destination: String, source: String, routing_key: String, no_wait: bool,
        arguments: FieldTable,
    } [reserved_short, shortstr(destination), shortstr(source), shortstr(routing_key),
       bit(no_wait), table(arguments)]
    /// exchange.bind-ok (40.31, RabbitMQ extension)
    ExchangeBindOk = (40, 31) "exchange.bind-ok" content false {} []
    /// exchange.unbind (40.40, RabbitMQ extension); reserved-1 (ticket) omitted.
    ExchangeUnbind = (40, 40) "exchange.unbind" content false {
        destination: String, source: String, routing_key: String, no_wait: bool,
        arguments: FieldTable,
    } [reserved_short, shortstr(destination), shortstr(source), shortstr(routing_key),
       bit(no_wait), table(arguments)]
    /// exchange.unbind-ok (40.51, RabbitMQ extension; 51, not 41, as RabbitMQ numbers it)
    ExchangeUnbindOk = (40, 51) "exchange.unbind-ok" content false {} []

    // ---- queue (50) ----
    /// queue.declare (50.10); reserved-1 (ticket) omitted.
    QueueDeclare = (50, 10) "queue.declare" content false {
        queue: String, passive: bool, durable: bool, exclusive: bool, auto_delete: bool,
        no_wait: bool, arguments: FieldTable,
    } [reserved_short, shortstr(queue), bit(passive), bit(durable), bit(exclusive),
       bit(auto_delete), bit(no_wait), table(arguments)]
    /// queue.declare-ok (50.11)
    QueueDeclareOk = (50, 11) "queue.declare-ok" content false {
        queue: String, message_count: u32, consumer_count: u32,
    } [shortstr(queue), long(message_count), long(consumer_count)]
    /// queue.bind (50.20); reserved-1 (ticket) omitted.
    QueueBind = (50, 20) "queue.bind" content false {
        queue: String, exchange: String, routing_key: String, no_wait: bool,
        arguments: FieldTable,
    } [reserved_short, shortstr(queue), shortstr(exchange), shortstr(routing_key),
       bit(no_wait), table(arguments)]
    /// queue.bind-ok (50.21)
    QueueBindOk = (50, 21) "queue.bind-ok" content false {} []
    /// queue.purge (50.30); reserved-1 (ticket) omitted.
    QueuePurge = (50, 30) "queue.purge" content false { queue: String, no_wait: bool }
        [reserved_short, shortstr(queue), bit(no_wait)]
    /// queue.purge-ok (50.31)
    QueuePurgeOk = (50, 31) "queue.purge-ok" content false { message_count: u32 }
        [long(message_count)]
    /// queue.delete (50.40); reserved-1 (ticket) omitted.
    QueueDelete = (50, 40) "queue.delete" content false {
        queue: String, if_unused: bool, if_empty: bool, no_wait: bool,
    } [reserved_short, shortstr(queue), bit(if_unused), bit(if_empty), bit(no_wait)]
    /// queue.delete-ok (50.41)
    QueueDeleteOk = (50, 41) "queue.delete-ok" content false { message_count: u32 }
        [long(message_count)]
    /// queue.unbind (50.50); reserved-1 (ticket) omitted. (No no-wait bit in the spec.)
    QueueUnbind = (50, 50) "queue.unbind" content false {
        queue: String, exchange: String, routing_key: String, arguments: FieldTable,
    } [reserved_short, shortstr(queue), shortstr(exchange), shortstr(routing_key),
       table(arguments)]
    /// queue.unbind-ok (50.51)
    QueueUnbindOk = (50, 51) "queue.unbind-ok" content false {} []

    // ---- basic (60) ----
    /// basic.qos (60.10)
    BasicQos = (60, 10) "basic.qos" content false {
        prefetch_size: u32, prefetch_count: u16, global: bool,
    } [long(prefetch_size), short(prefetch_count), bit(global)]
    /// basic.qos-ok (60.11)
    BasicQosOk = (60, 11) "basic.qos-ok" content false {} []
    /// basic.consume (60.20); reserved-1 (ticket) omitted.
    BasicConsume = (60, 20) "basic.consume" content false {
        queue: String, consumer_tag: String, no_local: bool, no_ack: bool, exclusive: bool,
        no_wait: bool, arguments: FieldTable,
    } [reserved_short, shortstr(queue), shortstr(consumer_tag), bit(no_local), bit(no_ack),
       bit(exclusive), bit(no_wait), table(arguments)]
    /// basic.consume-ok (60.21)
    BasicConsumeOk = (60, 21) "basic.consume-ok" content false { consumer_tag: String }
        [shortstr(consumer_tag)]
    /// basic.cancel (60.30); sent by the server too (consumer cancel notification).
    BasicCancel = (60, 30) "basic.cancel" content false { consumer_tag: String, no_wait: bool }
        [shortstr(consumer_tag), bit(no_wait)]
    /// basic.cancel-ok (60.31)
    BasicCancelOk = (60, 31) "basic.cancel-ok" content false { consumer_tag: String }
        [shortstr(consumer_tag)]
    /// basic.publish (60.40); reserved-1 (ticket) omitted. Followed by content.
    BasicPublish = (60, 40) "basic.publish" content true {
        exchange: String, routing_key: String, mandatory: bool, immediate: bool,
    } [reserved_short, shortstr(exchange), shortstr(routing_key), bit(mandatory),
       bit(immediate)]
    /// basic.return (60.50). Followed by content.
    BasicReturn = (60, 50) "basic.return" content true {
        reply_code: u16, reply_text: String, exchange: String, routing_key: String,
    } [short(reply_code), shortstr(reply_text), shortstr(exchange), shortstr(routing_key)]
    /// basic.deliver (60.60). Followed by content.
    BasicDeliver = (60, 60) "basic.deliver" content true {
        consumer_tag: String, delivery_tag: u64, redelivered: bool, exchange: String,
        routing_key: String,
    } [shortstr(consumer_tag), longlong(delivery_tag), bit(redelivered), shortstr(exchange),
       shortstr(routing_key)]
    /// basic.get (60.70); reserved-1 (ticket) omitted.
    BasicGet = (60, 70) "basic.get" content false { queue: String, no_ack: bool }
        [reserved_short, shortstr(queue), bit(no_ack)]
    /// basic.get-ok (60.71). Followed by content.
    BasicGetOk = (60, 71) "basic.get-ok" content true {
        delivery_tag: u64, redelivered: bool, exchange: String, routing_key: String,
        message_count: u32,
    } [longlong(delivery_tag), bit(redelivered), shortstr(exchange), shortstr(routing_key),
       long(message_count)]
    /// basic.get-empty (60.72); reserved-1 (cluster-id) omitted.
    BasicGetEmpty = (60, 72) "basic.get-empty" content false {} [reserved_shortstr]
    /// basic.ack (60.80)
    BasicAck = (60, 80) "basic.ack" content false { delivery_tag: u64, multiple: bool }
        [longlong(delivery_tag), bit(multiple)]
    /// basic.reject (60.90)
    BasicReject = (60, 90) "basic.reject" content false { delivery_tag: u64, requeue: bool }
        [longlong(delivery_tag), bit(requeue)]
    /// basic.recover-async (60.100, deprecated)
    BasicRecoverAsync = (60, 100) "basic.recover-async" content false { requeue: bool }
        [bit(requeue)]
    /// basic.recover (60.110)
    BasicRecover = (60, 110) "basic.recover" content false { requeue: bool } [bit(requeue)]
    /// basic.recover-ok (60.111)
    BasicRecoverOk = (60, 111) "basic.recover-ok" content false {} []
    /// basic.nack (60.120, RabbitMQ extension)
    BasicNack = (60, 120) "basic.nack" content false {
        delivery_tag: u64, multiple: bool, requeue: bool,
    } [longlong(delivery_tag), bit(multiple), bit(requeue)]

    // ---- confirm (85, RabbitMQ extension) ----
    /// confirm.select (85.10); the spec names the bit `nowait`.
    ConfirmSelect = (85, 10) "confirm.select" content false { nowait: bool } [bit(nowait)]
    /// confirm.select-ok (85.11)
    ConfirmSelectOk = (85, 11) "confirm.select-ok" content false {} []

    // ---- tx (90) ----
    /// tx.select (90.10)
    TxSelect = (90, 10) "tx.select" content false {} []
    /// tx.select-ok (90.11)
    TxSelectOk = (90, 11) "tx.select-ok" content false {} []
    /// tx.commit (90.20)
    TxCommit = (90, 20) "tx.commit" content false {} []
    /// tx.commit-ok (90.21)
    TxCommitOk = (90, 21) "tx.commit-ok" content false {} []
    /// tx.rollback (90.30)
    TxRollback = (90, 30) "tx.rollback" content false {} []
    /// tx.rollback-ok (90.31)
    TxRollbackOk = (90, 31) "tx.rollback-ok" content false {} []
}

/// Decodes a method frame's payload: class id, method id, then the arguments, which must
/// fill the payload exactly.
///
/// # Errors
/// `UnknownMethod` for a class/method pair AMQP 0-9-1 does not define; `Syntax` for a
/// payload shorter than 4 bytes, truncated or trailing arguments, or invalid values.
pub fn decode_method(payload: &[u8]) -> Result<Method> {
    let mut r = Reader::new(payload);
    let (class_id, method_id) = match (r.u16(), r.u16()) {
        (Ok(c), Ok(m)) => (c, m),
        _ => return Err(CodecError::Syntax("method frame shorter than its ids")),
    };
    let method = decode_args(class_id, method_id, &mut r)?;
    if !r.is_empty() {
        return Err(CodecError::Syntax("trailing bytes after method arguments"));
    }
    Ok(method)
}

/// Encodes a method frame's payload (class id, method id, arguments) onto `out`.
/// Shortstr arguments longer than 255 bytes are truncated at a char boundary.
pub fn encode_method(m: &Method, out: &mut BytesMut) {
    let mut w = Writer::new(out);
    w.u16(m.class_id());
    w.u16(m.method_id());
    encode_args(m, &mut w);
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::value::AmqpValue;

    /// Deterministic field values for the method table: every value differs from the default
    /// and bits follow the bits of `seed`, so iterating seeds covers every bit combination.
    pub(crate) struct Gen {
        pub(crate) seed: u32,
        counter: u32,
        bit: u32,
    }

    impl Gen {
        pub(crate) fn new(seed: u32) -> Self {
            Gen {
                seed,
                counter: 0,
                bit: 0,
            }
        }
        fn next(&mut self) -> u32 {
            self.counter += 1;
            self.counter
                .wrapping_mul(2_654_435_761)
                .wrapping_add(self.seed)
                | 1
        }
    }

    pub(crate) trait Sample {
        fn sample(g: &mut Gen) -> Self;
    }

    impl Sample for u8 {
        fn sample(g: &mut Gen) -> Self {
            (g.next() % 255 + 1) as u8
        }
    }
    impl Sample for u16 {
        fn sample(g: &mut Gen) -> Self {
            (g.next() % 65535 + 1) as u16
        }
    }
    impl Sample for u32 {
        fn sample(g: &mut Gen) -> Self {
            g.next()
        }
    }
    impl Sample for u64 {
        fn sample(g: &mut Gen) -> Self {
            (u64::from(g.next()) << 32) | u64::from(g.next())
        }
    }
    impl Sample for bool {
        fn sample(g: &mut Gen) -> Self {
            let b = g.seed >> (g.bit % 32) & 1 == 1;
            g.bit += 1;
            b
        }
    }
    impl Sample for String {
        fn sample(g: &mut Gen) -> Self {
            format!("name-{}-é", g.next())
        }
    }
    impl Sample for Bytes {
        fn sample(g: &mut Gen) -> Self {
            let n = g.next();
            Bytes::from(vec![0, 0xff, (n & 0xff) as u8, b'\n'])
        }
    }
    impl Sample for FieldTable {
        fn sample(g: &mut Gen) -> Self {
            let mut t = crate::value::tests::every_value_type();
            t.insert("n", AmqpValue::U32(g.next()));
            t
        }
    }

    fn round_trip(m: &Method) -> Method {
        let mut out = BytesMut::new();
        encode_method(m, &mut out);
        decode_method(&out).unwrap_or_else(|e| panic!("{}: {e}", m.name()))
    }

    #[test]
    fn every_method_round_trips_with_every_bit_combination() {
        let mut count = 0;
        for seed in 0..32 {
            for m in samples(&mut Gen::new(seed)) {
                assert_eq!(round_trip(&m), m, "{}", m.name());
                count += 1;
            }
        }
        assert_eq!(count, 32 * 64);
    }

    #[test]
    fn default_methods_round_trip() {
        for m in samples(&mut Gen::new(0)) {
            let default = decode_default(&m);
            assert_eq!(round_trip(&default), default);
        }
    }

    /// The same variant with default fields, built by decoding the all-zero/empty layout.
    fn decode_default(m: &Method) -> Method {
        // Encode, then reuse the ids with the variant's default struct through `From`.
        macro_rules! dflt {
            ($($v:ident),*) => {
                match m { $( Method::$v(_) => Method::from($v::default()), )* }
            };
        }
        dflt!(
            ConnectionStart,
            ConnectionStartOk,
            ConnectionSecure,
            ConnectionSecureOk,
            ConnectionTune,
            ConnectionTuneOk,
            ConnectionOpen,
            ConnectionOpenOk,
            ConnectionClose,
            ConnectionCloseOk,
            ConnectionBlocked,
            ConnectionUnblocked,
            ConnectionUpdateSecret,
            ConnectionUpdateSecretOk,
            ChannelOpen,
            ChannelOpenOk,
            ChannelFlow,
            ChannelFlowOk,
            ChannelClose,
            ChannelCloseOk,
            ExchangeDeclare,
            ExchangeDeclareOk,
            ExchangeDelete,
            ExchangeDeleteOk,
            ExchangeBind,
            ExchangeBindOk,
            ExchangeUnbind,
            ExchangeUnbindOk,
            QueueDeclare,
            QueueDeclareOk,
            QueueBind,
            QueueBindOk,
            QueuePurge,
            QueuePurgeOk,
            QueueDelete,
            QueueDeleteOk,
            QueueUnbind,
            QueueUnbindOk,
            BasicQos,
            BasicQosOk,
            BasicConsume,
            BasicConsumeOk,
            BasicCancel,
            BasicCancelOk,
            BasicPublish,
            BasicReturn,
            BasicDeliver,
            BasicGet,
            BasicGetOk,
            BasicGetEmpty,
            BasicAck,
            BasicReject,
            BasicRecoverAsync,
            BasicRecover,
            BasicRecoverOk,
            BasicNack,
            ConfirmSelect,
            ConfirmSelectOk,
            TxSelect,
            TxSelectOk,
            TxCommit,
            TxCommitOk,
            TxRollback,
            TxRollbackOk
        )
    }

    /// "queue.declare-ok" -> "QueueDeclareOk"
    fn camel(name: &str) -> String {
        name.split(['.', '-'])
            .map(|part| {
                let mut c = part.chars();
                match c.next() {
                    Some(f) => f.to_uppercase().chain(c).collect::<String>(),
                    None => String::new(),
                }
            })
            .collect()
    }

    #[test]
    fn ids_names_and_variants_agree() {
        let all = samples(&mut Gen::new(0));
        assert_eq!(all.len(), 64);
        let mut seen = std::collections::HashSet::new();
        for m in &all {
            assert!(seen.insert((m.class_id(), m.method_id())), "{}", m.name());
            let debug = format!("{m:?}");
            let variant = debug.split('(').next().unwrap();
            assert_eq!(variant, camel(m.name()));
            assert_eq!(method_name(m.class_id(), m.method_id()), Some(m.name()));
            let class = match m.class_id() {
                10 => "connection",
                20 => "channel",
                40 => "exchange",
                50 => "queue",
                60 => "basic",
                85 => "confirm",
                90 => "tx",
                other => panic!("class {other}"),
            };
            assert!(m.name().starts_with(class), "{}", m.name());
        }
        let content: Vec<_> = all
            .iter()
            .filter(|m| m.has_content())
            .map(|m| m.name())
            .collect();
        assert_eq!(
            content,
            [
                "basic.publish",
                "basic.return",
                "basic.deliver",
                "basic.get-ok"
            ]
        );
        // Spot checks against the spec's numbering.
        let ids = |name: &str| {
            let m = all.iter().find(|m| m.name() == name).unwrap();
            (m.class_id(), m.method_id())
        };
        assert_eq!(ids("connection.update-secret-ok"), (10, 71));
        assert_eq!(ids("exchange.unbind-ok"), (40, 51));
        assert_eq!(ids("basic.recover-async"), (60, 100));
        assert_eq!(ids("basic.nack"), (60, 120));
        assert_eq!(ids("confirm.select-ok"), (85, 11));
        assert_eq!(ids("tx.rollback-ok"), (90, 31));
        assert_eq!(method_name(60, 99), None);
    }

    #[test]
    fn every_truncation_of_arguments_is_a_syntax_error() {
        for m in samples(&mut Gen::new(0b10110)) {
            let mut out = BytesMut::new();
            encode_method(&m, &mut out);
            for len in 0..out.len() {
                match decode_method(&out[..len]) {
                    Err(CodecError::Syntax(_)) => {}
                    other => panic!("{} cut at {len}: {other:?}", m.name()),
                }
            }
        }
    }

    #[test]
    fn trailing_bytes_are_a_syntax_error() {
        for m in samples(&mut Gen::new(1)) {
            let mut out = BytesMut::new();
            encode_method(&m, &mut out);
            out.extend_from_slice(&[0]);
            assert_eq!(
                decode_method(&out),
                Err(CodecError::Syntax("trailing bytes after method arguments")),
                "{}",
                m.name()
            );
        }
    }

    #[test]
    fn unknown_methods() {
        assert_eq!(
            decode_method(&[0, 60, 0, 99]),
            Err(CodecError::UnknownMethod {
                class_id: 60,
                method_id: 99
            })
        );
        // access.request (30.10) was removed from 0-9-1 by RabbitMQ's errata usage too.
        assert_eq!(
            decode_method(&[0, 30, 0, 10, 0, 0, 0]),
            Err(CodecError::UnknownMethod {
                class_id: 30,
                method_id: 10
            })
        );
        assert!(matches!(
            decode_method(&[0, 60, 0]),
            Err(CodecError::Syntax(_))
        ));
    }

    #[test]
    fn bits_are_packed() {
        // queue.declare: ticket, queue, then five bits in one octet, then the table.
        let m = Method::QueueDeclare(QueueDeclare {
            queue: "q".into(),
            passive: false,
            durable: true,
            exclusive: false,
            auto_delete: true,
            no_wait: true,
            arguments: FieldTable::default(),
        });
        let mut out = BytesMut::new();
        encode_method(&m, &mut out);
        assert_eq!(
            &out[..],
            &[0, 50, 0, 10, 0, 0, 1, b'q', 0b11010, 0, 0, 0, 0][..]
        );
        // basic.nack: delivery tag then multiple (bit 0) and requeue (bit 1) share an octet.
        let m = Method::BasicNack(BasicNack {
            delivery_tag: 7,
            multiple: false,
            requeue: true,
        });
        let mut out = BytesMut::new();
        encode_method(&m, &mut out);
        assert_eq!(&out[..], &[0, 60, 0, 120, 0, 0, 0, 0, 0, 0, 0, 7, 0b10][..]);
        // connection.open: vhost, reserved shortstr, reserved bit.
        let m = Method::ConnectionOpen(ConnectionOpen {
            virtual_host: "/".into(),
        });
        let mut out = BytesMut::new();
        encode_method(&m, &mut out);
        assert_eq!(&out[..], &[0, 10, 0, 40, 1, b'/', 0, 0][..]);
    }

    #[test]
    fn reserved_fields_are_ignored_on_read() {
        // connection.open with capabilities "x" and insist set, as old clients send it.
        let bytes = [0, 10, 0, 40, 1, b'/', 1, b'x', 1];
        assert_eq!(
            decode_method(&bytes),
            Ok(Method::ConnectionOpen(ConnectionOpen {
                virtual_host: "/".into()
            }))
        );
        // basic.publish with a non-zero ticket.
        let bytes = [0, 60, 0, 40, 0, 9, 0, 1, b'k', 0b01];
        let m = decode_method(&bytes).unwrap();
        assert_eq!(
            m,
            Method::BasicPublish(BasicPublish {
                exchange: String::new(),
                routing_key: "k".into(),
                mandatory: true,
                immediate: false,
            })
        );
    }

    #[test]
    fn invalid_utf8_shortstr_is_a_syntax_error() {
        let bytes = [0, 60, 0, 21, 2, 0xc3, 0x28];
        assert_eq!(
            decode_method(&bytes),
            Err(CodecError::Syntax("shortstr is not valid UTF-8"))
        );
    }

    #[test]
    fn over_long_shortstr_is_truncated_on_encode() {
        let m = Method::ChannelClose(ChannelClose {
            reply_code: 404,
            reply_text: "x".repeat(1000),
            class_id: 50,
            method_id: 10,
        });
        let mut out = BytesMut::new();
        encode_method(&m, &mut out);
        let Method::ChannelClose(back) = decode_method(&out).unwrap() else {
            panic!()
        };
        assert_eq!(back.reply_text.len(), 255);
        assert_eq!(back.method_id, 10);
    }
}
