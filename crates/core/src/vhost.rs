//! A virtual host: an isolated namespace of exchanges, queues, streams and
//! bindings, with the publish path (route → enqueue/append) and dead-lettering.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak};

use ferrymq_storage::{Commit, LogOptions};

use crate::broker::Shared;
use crate::clock::now_ms;
use crate::config::VhostLimits;
use crate::error::{CoreError, Result};
use crate::exchange::{dedup, Binding, Destination, Exchange, ExchangeDecl, ExchangeKind};
use crate::message::{FieldTable, Message, Value};
use crate::policy::{self, Kind};
use crate::queue::{
    ConnectionId, ConsumerId, ConsumerOptions, ConsumerSink, DeathReason, Enqueued, Queue,
    QueueArgs, QueueDecl, QueueInfo, QueueType,
};
use crate::stream::{Stream, StreamOffset};

/// A queue or a stream: both are bound and published to by name.
#[derive(Debug, Clone)]
pub enum QueueRef {
    Classic(Arc<Queue>),
    Stream(Arc<Stream>),
}

impl QueueRef {
    pub fn decl(&self) -> &QueueDecl {
        match self {
            QueueRef::Classic(q) => &q.decl,
            QueueRef::Stream(s) => &s.decl,
        }
    }
    pub fn name(&self) -> &str {
        &self.decl().name
    }
    pub fn owner(&self) -> Option<ConnectionId> {
        match self {
            QueueRef::Classic(q) => q.owner,
            QueueRef::Stream(_) => None,
        }
    }
    pub fn message_count(&self) -> u64 {
        match self {
            QueueRef::Classic(q) => q.message_count(),
            QueueRef::Stream(s) => s.message_count(),
        }
    }
    pub fn consumer_count(&self) -> usize {
        match self {
            QueueRef::Classic(q) => q.consumer_count(),
            QueueRef::Stream(s) => s.consumer_count(),
        }
    }
}

/// The answer to a queue declaration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclareOk {
    pub name: String,
    pub message_count: u64,
    pub consumer_count: u32,
}

/// The outcome of a publish, available as soon as it is routed and written.
#[derive(Debug, Default)]
pub struct Published {
    /// Queues and streams that accepted the message.
    pub routed: usize,
    /// Queues that refused it (`x-overflow: reject-publish`): the publisher gets a nack.
    pub rejected: usize,
    commits: Vec<Commit>,
}

impl Published {
    /// No queue took or refused the message (AMQP `mandatory` returns it).
    pub fn unroutable(&self) -> bool {
        self.routed == 0 && self.rejected == 0
    }

    /// Resolves once the message is durable at the tier every destination needs
    /// (immediately when nothing needed a disk write).
    ///
    /// # Errors
    /// The storage error of a write that could not be made durable.
    ///
    /// # Cancel safety
    /// Dropping the future does not undo the publish; it only stops waiting.
    pub async fn durable(self) -> Result<()> {
        for c in self.commits {
            c.await?;
        }
        Ok(())
    }

    /// Blocking form of [`Published::durable`], for threads outside a runtime.
    pub fn wait_durable(self) -> Result<()> {
        for c in self.commits {
            c.wait()?;
        }
        Ok(())
    }
}

/// Per-message outcome within a [`PublishedBatch`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PublishOutcome {
    /// Queues and streams that accepted the message.
    pub routed: usize,
    /// Queues that refused it (`x-overflow: reject-publish`).
    pub rejected: usize,
}

impl PublishOutcome {
    /// No queue took or refused the message.
    pub fn unroutable(&self) -> bool {
        self.routed == 0 && self.rejected == 0
    }
}

/// The outcome of a batch publish; `durable()` covers every message of it.
#[derive(Debug, Default)]
pub struct PublishedBatch {
    pub outcomes: Vec<PublishOutcome>,
    commits: Vec<Commit>,
}

impl PublishedBatch {
    /// True when nothing of the batch waits for a commit (it went only to transient
    /// queues, or nowhere): [`PublishedBatch::durable`] would resolve at once, so an adapter
    /// can confirm without awaiting it.
    pub fn is_durable(&self) -> bool {
        self.commits.is_empty()
    }

    /// Resolves once every message of the batch is durable at its tier.
    ///
    /// # Errors
    /// The storage error of a write that could not be made durable.
    ///
    /// # Cancel safety
    /// Dropping the future does not undo the publish; it only stops waiting.
    pub async fn durable(self) -> Result<()> {
        for c in self.commits {
            c.await?;
        }
        Ok(())
    }
}

/// Destinations (and unroutable keys) of a default-exchange batch compared by name before a
/// lookup (more than this many and a lookup by name is cheaper than the scan).
const GROUPS_SCANNED: usize = 16;

fn same_queue(a: &QueueRef, b: &QueueRef) -> bool {
    match (a, b) {
        (QueueRef::Classic(x), QueueRef::Classic(y)) => Arc::ptr_eq(x, y),
        (QueueRef::Stream(x), QueueRef::Stream(y)) => Arc::ptr_eq(x, y),
        _ => false,
    }
}

fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}
fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

/// Names of the exchanges every vhost has.
pub const STANDARD_EXCHANGES: [(&str, ExchangeKind); 5] = [
    ("amq.direct", ExchangeKind::Direct),
    ("amq.fanout", ExchangeKind::Fanout),
    ("amq.topic", ExchangeKind::Topic),
    ("amq.headers", ExchangeKind::Headers),
    ("amq.match", ExchangeKind::Headers),
];

/// A virtual host.
pub struct VHost {
    pub name: String,
    limits: RwLock<VhostLimits>,
    exchanges: RwLock<HashMap<String, Arc<Exchange>>>,
    queues: RwLock<HashMap<String, QueueRef>>,
    /// Serializes stream reconfigurations (each builds on the one before).
    reconfigure: std::sync::Mutex<()>,
    shared: Weak<Shared>,
    me: Weak<VHost>,
}

impl std::fmt::Debug for VHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VHost").field("name", &self.name).finish()
    }
}

impl VHost {
    pub(crate) fn new(name: String, limits: VhostLimits, shared: Weak<Shared>) -> Arc<VHost> {
        let exchanges = STANDARD_EXCHANGES
            .iter()
            .map(|(n, k)| {
                (
                    n.to_string(),
                    Arc::new(Exchange::new(ExchangeDecl::new(*n, *k))),
                )
            })
            .collect();
        Arc::new_cyclic(|me| VHost {
            name,
            limits: RwLock::new(limits),
            exchanges: RwLock::new(exchanges),
            queues: RwLock::new(HashMap::new()),
            reconfigure: std::sync::Mutex::new(()),
            shared,
            me: me.clone(),
        })
    }

    pub(crate) fn shared(&self) -> Result<Arc<Shared>> {
        self.shared.upgrade().ok_or(CoreError::ShuttingDown)
    }

    pub fn limits(&self) -> VhostLimits {
        read(&self.limits).clone()
    }

    pub fn set_limits(&self, limits: VhostLimits) -> Result<()> {
        *write(&self.limits) = limits;
        self.persist()
    }

    fn persist(&self) -> Result<()> {
        self.shared()?.persist_definitions()
    }

    fn not_found_queue(&self, name: &str) -> CoreError {
        CoreError::NotFound(format!("no queue '{name}' in vhost '{}'", self.name))
    }

    fn not_found_exchange(&self, name: &str) -> CoreError {
        CoreError::NotFound(format!("no exchange '{name}' in vhost '{}'", self.name))
    }

    // ---------------------------------------------------------------- exchanges

    /// Declares an exchange (or checks it with `passive`).
    ///
    /// # Errors
    /// `NotFound` (passive, missing), `AccessRefused` (default or reserved `amq.`
    /// name), `PreconditionFailed` (inequivalent redeclaration).
    pub fn declare_exchange(&self, decl: ExchangeDecl, passive: bool) -> Result<Arc<Exchange>> {
        if decl.name.is_empty() {
            return Err(CoreError::AccessRefused(
                "operation not permitted on the default exchange".into(),
            ));
        }
        if let Some(x) = read(&self.exchanges).get(&decl.name) {
            if passive {
                return Ok(x.clone());
            }
            let d = &x.decl;
            let mismatch = if d.kind != decl.kind {
                Some((
                    "type",
                    decl.kind.as_str().to_string(),
                    d.kind.as_str().to_string(),
                ))
            } else if d.durable != decl.durable {
                Some(("durable", decl.durable.to_string(), d.durable.to_string()))
            } else if d.auto_delete != decl.auto_delete {
                Some((
                    "auto_delete",
                    decl.auto_delete.to_string(),
                    d.auto_delete.to_string(),
                ))
            } else if d.internal != decl.internal {
                Some((
                    "internal",
                    decl.internal.to_string(),
                    d.internal.to_string(),
                ))
            } else {
                None
            };
            if let Some((arg, got, cur)) = mismatch {
                return Err(CoreError::PreconditionFailed(format!(
                    "inequivalent arg '{arg}' for exchange '{}' in vhost '{}': received '{got}' but current is '{cur}'",
                    decl.name, self.name
                )));
            }
            return Ok(x.clone());
        }
        if passive {
            return Err(self.not_found_exchange(&decl.name));
        }
        if decl.name.starts_with("amq.") {
            return Err(CoreError::AccessRefused(format!(
                "exchange name '{}' contains reserved prefix 'amq.*'",
                decl.name
            )));
        }
        let durable = decl.durable;
        let x = {
            let mut xs = write(&self.exchanges);
            xs.entry(decl.name.clone())
                .or_insert_with(|| Arc::new(Exchange::new(decl)))
                .clone()
        };
        let shared = self.shared()?;
        policy::apply_to_exchange(
            &x,
            shared
                .policy_for(&self.name, x.name(), Kind::Exchange)
                .as_deref(),
        );
        if durable {
            self.persist()?;
        }
        Ok(x)
    }

    /// Deletes an exchange and every binding to and from it.
    ///
    /// # Errors
    /// `AccessRefused` for standard exchanges, `PreconditionFailed` with
    /// `if_unused` when it has bindings.
    pub fn delete_exchange(&self, name: &str, if_unused: bool) -> Result<()> {
        if name.is_empty() {
            return Err(CoreError::AccessRefused(
                "operation not permitted on the default exchange".into(),
            ));
        }
        if name.starts_with("amq.") {
            return Err(CoreError::AccessRefused(format!(
                "deletion of system exchange '{name}' in vhost '{}' not allowed",
                self.name
            )));
        }
        let removed = {
            let mut xs = write(&self.exchanges);
            match xs.get(name) {
                None => return Ok(()), // RabbitMQ 3.13: deleting a missing exchange is ok
                Some(x) if if_unused && x.binding_count() > 0 => {
                    return Err(CoreError::PreconditionFailed(format!(
                        "exchange '{name}' in vhost '{}' in use",
                        self.name
                    )))
                }
                Some(_) => xs.remove(name),
            }
        };
        let durable = removed.as_ref().is_some_and(|x| x.decl.durable);
        let dest = Destination::Exchange(name.to_string());
        let auto_delete_candidates: Vec<String> = read(&self.exchanges)
            .values()
            .filter(|x| x.unbind_destination(&dest) > 0)
            .map(|x| x.name().to_string())
            .collect();
        for n in auto_delete_candidates {
            self.maybe_auto_delete_exchange(&n);
        }
        if durable {
            self.persist()?;
        }
        Ok(())
    }

    fn maybe_auto_delete_exchange(&self, name: &str) {
        let unused = read(&self.exchanges)
            .get(name)
            .is_some_and(|x| x.decl.auto_delete && x.binding_count() == 0);
        if unused {
            if let Err(e) = self.delete_exchange(name, true) {
                tracing::debug!(exchange = name, error = %e, "auto-delete skipped");
            }
        }
    }

    pub fn exchange(&self, name: &str) -> Option<Arc<Exchange>> {
        read(&self.exchanges).get(name).cloned()
    }

    pub fn exchanges(&self) -> Vec<Arc<Exchange>> {
        let mut v: Vec<_> = read(&self.exchanges).values().cloned().collect();
        v.sort_by(|a, b| a.name().cmp(b.name()));
        v
    }

    // ---------------------------------------------------------------- queues

    /// Declares a queue or stream (or checks it with `passive`). An empty name
    /// makes the server pick `amq.gen-…`.
    ///
    /// # Errors
    /// `NotFound`, `AccessRefused` (reserved name), `ResourceLocked` (another
    /// connection's exclusive queue), `PreconditionFailed` (inequivalent),
    /// `InvalidArgument`, `LimitReached` (vhost queue limit), storage errors.
    pub fn declare_queue(
        &self,
        mut decl: QueueDecl,
        conn: ConnectionId,
        passive: bool,
    ) -> Result<DeclareOk> {
        let now = now_ms();
        if decl.name.is_empty() && !passive {
            decl.name = format!(
                "amq.gen-{:016x}{:016x}",
                fastrand::u64(..),
                fastrand::u64(..)
            );
        }
        if let Some(q) = read(&self.queues).get(&decl.name) {
            self.check_owner(q, conn)?;
            if !passive {
                self.check_equivalent(q.decl(), &decl)?;
            }
            if let QueueRef::Classic(c) = q {
                c.touch(now);
            }
            return Ok(DeclareOk {
                name: decl.name,
                message_count: q.message_count(),
                consumer_count: q.consumer_count() as u32,
            });
        }
        if passive {
            return Err(self.not_found_queue(&decl.name));
        }
        if decl.name.starts_with("amq.") && !decl.name.starts_with("amq.gen-") {
            return Err(CoreError::AccessRefused(format!(
                "queue name '{}' contains reserved prefix 'amq.*'",
                decl.name
            )));
        }
        let args = QueueArgs::parse(&decl.name, &self.name, &decl.arguments)?;
        let global = self
            .shared
            .upgrade()
            .map(|s| s.config.queues_per_vhost_max)
            .filter(|&m| m > 0);
        let max = match (self.limits().max_queues, global) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(max) = max {
            if read(&self.queues).len() as u64 >= max {
                return Err(CoreError::LimitReached(format!(
                    "cannot declare queue '{}': queue limit in vhost '{}' ({max}) is reached",
                    decl.name, self.name
                )));
            }
        }
        if args.queue_type != QueueType::Classic {
            let bad = if !decl.durable {
                Some("non-durable")
            } else if decl.exclusive {
                Some("exclusive-owner")
            } else if decl.auto_delete {
                Some("auto-delete")
            } else {
                None
            };
            if let Some(property) = bad {
                return Err(CoreError::PreconditionFailed(format!(
                    "invalid property '{property}' for queue '{}' in vhost '{}'",
                    decl.name, self.name
                )));
            }
        }
        let owner = decl.exclusive.then_some(conn);
        let q = self.create_queue(decl.clone(), args, owner, now)?;
        let name = q.name().to_string();
        {
            let mut qs = write(&self.queues);
            if let Some(existing) = qs.get(&name) {
                // Lost a race with a concurrent declare of the same name.
                let e = existing.clone();
                drop(qs);
                return Ok(DeclareOk {
                    name,
                    message_count: e.message_count(),
                    consumer_count: e.consumer_count() as u32,
                });
            }
            qs.insert(name.clone(), q.clone());
        }
        // A policy set between computing the arguments and the insert above missed this queue.
        if let Ok(shared) = self.shared() {
            policy::reapply(&shared, &self.name, &q, now);
        }
        if Self::is_persisted(&decl) {
            self.persist()?;
        }
        Ok(DeclareOk {
            name,
            message_count: q.message_count(),
            consumer_count: 0,
        })
    }

    /// Durable non-exclusive queues are kept in the definitions.
    pub(crate) fn is_persisted(decl: &QueueDecl) -> bool {
        decl.durable && !decl.exclusive
    }

    fn storage_name(&self, queue: &str) -> String {
        format!("{}/{}", self.name, queue)
    }

    /// Builds the queue object, opening (and recovering) its storage.
    pub(crate) fn create_queue(
        &self,
        decl: QueueDecl,
        args: QueueArgs,
        owner: Option<ConnectionId>,
        now: i64,
    ) -> Result<QueueRef> {
        let shared = self.shared()?;
        let policy = shared.policy_for(&self.name, &decl.name, Kind::Queue(args.queue_type));
        let args = policy::queue_args(&decl, &args, policy.as_deref());
        let persisted = Self::is_persisted(&decl);
        if args.queue_type == QueueType::Stream {
            let retention = Stream::retention_of(&args);
            let mut logs = Vec::new();
            for p in 0..args.partitions {
                let name = format!("{}/{}", self.storage_name(&decl.name), p);
                let opts = LogOptions {
                    durability: None,
                    segment_bytes: args.segment_bytes,
                };
                logs.push(shared.storage.open_stream(&name, opts, retention)?);
            }
            return Ok(QueueRef::Stream(Stream::new(decl, args, logs)));
        }
        let log = if persisted {
            Some(
                shared
                    .storage
                    .open_queue(&self.storage_name(&decl.name), LogOptions::default())?,
            )
        } else {
            None
        };
        let q = Queue::new(
            decl,
            args,
            owner,
            self.me.clone(),
            log,
            (shared.timer.clone(), shared.config.queue_memory),
            now,
        );
        let n = q.recover(now)?;
        q.arm(now);
        if n > 0 {
            tracing::info!(vhost = %self.name, queue = %q.name(), messages = n, "recovered queue");
        }
        Ok(QueueRef::Classic(q))
    }

    /// Inserts a recovered queue (broker open).
    pub(crate) fn insert_queue(&self, q: QueueRef) {
        write(&self.queues).insert(q.name().to_string(), q);
    }

    pub(crate) fn insert_exchange(&self, decl: ExchangeDecl) {
        write(&self.exchanges)
            .entry(decl.name.clone())
            .or_insert_with(|| Arc::new(Exchange::new(decl)));
    }

    fn check_owner(&self, q: &QueueRef, conn: ConnectionId) -> Result<()> {
        match q.owner() {
            Some(owner) if owner != conn => Err(CoreError::ResourceLocked(format!(
                "cannot obtain exclusive access to locked queue '{}' in vhost '{}'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration.",
                q.name(),
                self.name
            ))),
            _ => Ok(()),
        }
    }

    fn check_equivalent(&self, cur: &QueueDecl, new: &QueueDecl) -> Result<()> {
        let fail = |arg: &str, got: String, was: String| {
            Err(CoreError::PreconditionFailed(format!(
                "inequivalent arg '{arg}' for queue '{}' in vhost '{}': received '{got}' but current is '{was}'",
                cur.name, self.name
            )))
        };
        if cur.durable != new.durable {
            return fail("durable", new.durable.to_string(), cur.durable.to_string());
        }
        if cur.exclusive != new.exclusive {
            return Err(CoreError::ResourceLocked(format!(
                "cannot obtain exclusive access to locked queue '{}' in vhost '{}'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration.",
                cur.name, self.name
            )));
        }
        if cur.auto_delete != new.auto_delete {
            return fail(
                "auto_delete",
                new.auto_delete.to_string(),
                cur.auto_delete.to_string(),
            );
        }
        fn norm(v: Option<&Value>) -> Option<Value> {
            v.map(|v| v.as_i64().map(Value::Int).unwrap_or_else(|| v.clone()))
        }
        fn show(v: &Option<Value>) -> String {
            match v {
                None => "none".into(),
                Some(Value::Int(i)) => i.to_string(),
                Some(Value::String(s)) => s.clone(),
                Some(Value::Bool(b)) => b.to_string(),
                Some(Value::Float(f)) => f.to_string(),
                Some(other) => format!("{other:?}"),
            }
        }
        for (k, _) in cur.arguments.iter().chain(new.arguments.iter()) {
            if !k.starts_with("x-") {
                continue;
            }
            let (mut a, mut b) = (norm(new.arguments.get(k)), norm(cur.arguments.get(k)));
            if k == "x-queue-type" {
                // An absent type is a classic queue.
                let classic = Some(Value::String("classic".into()));
                a = a.or_else(|| classic.clone());
                b = b.or(classic);
                if a != b {
                    let got = if new.arguments.get(k).is_none() {
                        "none".to_string()
                    } else {
                        format!("'{}'", show(&a))
                    };
                    return Err(CoreError::PreconditionFailed(format!(
                        "inequivalent arg '{k}' for queue '{}' in vhost '{}': received {got} but current is the value '{}' of type 'longstr'",
                        cur.name,
                        self.name,
                        show(&b)
                    )));
                }
                continue;
            }
            if a != b {
                return fail(k, show(&a), show(&b));
            }
        }
        Ok(())
    }

    pub fn queue(&self, name: &str) -> Option<QueueRef> {
        read(&self.queues).get(name).cloned()
    }

    /// A queue the connection may use.
    ///
    /// # Errors
    /// `NotFound`, or `ResourceLocked` for another connection's exclusive queue.
    pub fn queue_for(&self, name: &str, conn: ConnectionId) -> Result<QueueRef> {
        let q = self.queue(name).ok_or_else(|| self.not_found_queue(name))?;
        self.check_owner(&q, conn)?;
        Ok(q)
    }

    pub fn queues(&self) -> Vec<QueueRef> {
        let mut v: Vec<_> = read(&self.queues).values().cloned().collect();
        v.sort_by(|a, b| a.name().cmp(b.name()));
        v
    }

    /// Management view of classic queues.
    pub fn queue_infos(&self) -> Vec<QueueInfo> {
        self.queues()
            .iter()
            .filter_map(|q| match q {
                QueueRef::Classic(c) => Some(c.info()),
                QueueRef::Stream(_) => None,
            })
            .collect()
    }

    /// Replaces a stream's declared arguments (Kafka's AlterConfigs and CreatePartitions;
    /// RabbitMQ has no equivalent): validates them as a declare would, applies retention
    /// and segment size to the partitions at once (with the policy that applies, as
    /// [`policy::reapply`] computes it), opens added partitions, swaps the new stream
    /// object into the queue map (copy-on-write, see [`crate::stream`]) and persists the
    /// definitions. The new segment size applies to existing partitions from their next
    /// roll. Returns the new stream.
    ///
    /// # Errors
    /// `NotFound` if there is no stream of that name (or it was deleted meanwhile);
    /// `InvalidArgument` for arguments that do not parse or a segment size out of range;
    /// `PreconditionFailed` for a change of queue type or fewer partitions; storage
    /// errors opening partitions or persisting.
    pub fn reconfigure_stream(&self, name: &str, arguments: FieldTable) -> Result<Arc<Stream>> {
        let _serial = self
            .reconfigure
            .lock()
            .map_err(|_| CoreError::Internal("stream reconfiguration lock poisoned".into()))?;
        let old = match self.queue(name) {
            Some(QueueRef::Stream(s)) => s,
            _ => {
                return Err(CoreError::NotFound(format!(
                    "no stream '{name}' in vhost '{}'",
                    self.name
                )))
            }
        };
        let declared = QueueArgs::parse(name, &self.name, &arguments)?;
        if declared.queue_type != QueueType::Stream {
            return Err(CoreError::PreconditionFailed(format!(
                "cannot change the type of stream '{name}' in vhost '{}'",
                self.name
            )));
        }
        let old_count = old.partition_count();
        if declared.partitions < old_count {
            return Err(CoreError::PreconditionFailed(format!(
                "stream '{name}' in vhost '{}' has {old_count} partitions; they cannot be reduced to {}",
                self.name, declared.partitions
            )));
        }
        let shared = self.shared()?;
        let segment_bytes = declared
            .segment_bytes
            .unwrap_or(shared.storage.config().segment_bytes);
        if !(ferrymq_storage::SEGMENT_BYTES_MIN..=ferrymq_storage::SEGMENT_BYTES_MAX)
            .contains(&segment_bytes)
        {
            return Err(CoreError::InvalidArgument(format!(
                "invalid arg 'x-stream-max-segment-size-bytes' for queue '{name}' in vhost '{}': must be {}..={}, got {segment_bytes}",
                self.name,
                ferrymq_storage::SEGMENT_BYTES_MIN,
                ferrymq_storage::SEGMENT_BYTES_MAX
            )));
        }
        let mut decl = old.decl.clone();
        decl.arguments = arguments;
        let policy = shared.policy_for(&self.name, name, Kind::Queue(QueueType::Stream));
        let args = policy::queue_args(&decl, &declared, policy.as_deref());
        let retention = Stream::retention_of(&args);
        let mut added = Vec::new();
        for p in old_count..args.partitions {
            let opts = LogOptions {
                durability: None,
                segment_bytes: args.segment_bytes,
            };
            let log_name = format!("{}/{}", self.storage_name(name), p);
            match shared.storage.open_stream(&log_name, opts, retention) {
                Ok(l) => added.push(l),
                Err(e) => {
                    self.remove_added_partitions(&shared, name, old_count, added);
                    return Err(e.into());
                }
            }
        }
        let new_count = args.partitions;
        let new = match old.reconfigured(decl, args, added, segment_bytes) {
            Ok(n) => n,
            Err(e) => {
                // `added` was consumed; the logs are closed with it.
                for p in old_count..new_count {
                    let _ = shared
                        .storage
                        .remove_stream(&format!("{}/{p}", self.storage_name(name)));
                }
                return Err(e);
            }
        };
        {
            let mut qs = write(&self.queues);
            match qs.get(name) {
                Some(QueueRef::Stream(cur)) if Arc::ptr_eq(cur, &old) => {
                    qs.insert(name.to_string(), QueueRef::Stream(new.clone()));
                }
                cur => {
                    // Deleted meanwhile: forget the partitions added here. If another
                    // stream of that name was declared since, its logs may be these
                    // very names, so they are left alone.
                    let redeclared = cur.is_some();
                    drop(qs);
                    drop(new);
                    for p in (old_count..new_count).filter(|_| !redeclared) {
                        let _ = shared
                            .storage
                            .remove_stream(&format!("{}/{p}", self.storage_name(name)));
                    }
                    return Err(CoreError::NotFound(format!(
                        "stream '{name}' in vhost '{}' was deleted",
                        self.name
                    )));
                }
            }
        }
        if Self::is_persisted(&new.decl) {
            self.persist()?;
        }
        Ok(new)
    }

    /// Removes the logs of partitions added by a reconfiguration that failed.
    fn remove_added_partitions(
        &self,
        shared: &Shared,
        name: &str,
        from: u32,
        added: Vec<Arc<ferrymq_storage::StreamLog>>,
    ) {
        let n = added.len() as u32;
        drop(added);
        for p in from..from + n {
            let _ = shared
                .storage
                .remove_stream(&format!("{}/{p}", self.storage_name(name)));
        }
    }

    /// Deletes a queue; returns the number of messages it held.
    ///
    /// # Errors
    /// `ResourceLocked`, or `PreconditionFailed` for `if_unused` / `if_empty`.
    pub fn delete_queue(
        &self,
        name: &str,
        if_unused: bool,
        if_empty: bool,
        conn: ConnectionId,
    ) -> Result<u64> {
        let Some(q) = self.queue(name) else {
            return Ok(0);
        };
        self.check_owner(&q, conn)?;
        if if_unused && q.consumer_count() > 0 {
            return Err(CoreError::PreconditionFailed(format!(
                "queue '{name}' in vhost '{}' in use",
                self.name
            )));
        }
        if if_empty && q.message_count() > 0 {
            return Err(CoreError::PreconditionFailed(format!(
                "queue '{name}' in vhost '{}' not empty",
                self.name
            )));
        }
        self.delete_queue_internal(name)
    }

    /// Deletes without checks (auto-delete, expiry, exclusive owner gone).
    pub(crate) fn delete_queue_internal(&self, name: &str) -> Result<u64> {
        let Some(q) = write(&self.queues).remove(name) else {
            return Ok(0);
        };
        let dest = Destination::Queue(name.to_string());
        let touched: Vec<String> = read(&self.exchanges)
            .values()
            .filter(|x| x.unbind_destination(&dest) > 0)
            .map(|x| x.name().to_string())
            .collect();
        for n in touched {
            self.maybe_auto_delete_exchange(&n);
        }
        let shared = self.shared()?;
        let storage_name = self.storage_name(name);
        let count = match &q {
            QueueRef::Classic(c) => {
                let n = c.mark_deleted();
                if c.is_persistent() {
                    shared.storage.remove_queue(&storage_name)?;
                }
                n
            }
            QueueRef::Stream(s) => {
                let n = s.message_count();
                drop(s.stop_all(true));
                for p in 0..s.partition_count() {
                    shared
                        .storage
                        .remove_stream(&format!("{storage_name}/{p}"))?;
                }
                n
            }
        };
        if Self::is_persisted(q.decl()) {
            shared.persist_definitions()?;
        }
        Ok(count)
    }

    /// Removes the ready messages of a queue; returns how many.
    pub fn purge_queue(&self, name: &str, conn: ConnectionId) -> Result<u64> {
        match self.queue_for(name, conn)? {
            QueueRef::Classic(q) => Ok(q.purge()),
            QueueRef::Stream(_) => Err(CoreError::NotAllowed(format!(
                "queue '{name}' is a stream and cannot be purged"
            ))),
        }
    }

    /// Deletes the exclusive queues of a closed connection.
    pub fn connection_closed(&self, conn: ConnectionId) {
        let owned: Vec<String> = read(&self.queues)
            .values()
            .filter(|q| q.owner() == Some(conn))
            .map(|q| q.name().to_string())
            .collect();
        for n in owned {
            if let Err(e) = self.delete_queue_internal(&n) {
                tracing::warn!(queue = %n, error = %e, "deleting exclusive queue failed");
            }
        }
    }

    // ---------------------------------------------------------------- bindings

    /// Binds `destination` to exchange `source`.
    ///
    /// # Errors
    /// `NotFound` for a missing side, `AccessRefused` for the default exchange,
    /// `ResourceLocked`, `PreconditionFailed` for invalid headers arguments.
    pub fn bind(&self, binding: Binding, conn: ConnectionId) -> Result<()> {
        let x = self.binding_source(&binding.source)?;
        self.check_destination(&binding.destination, conn)?;
        x.validate_binding(&binding.arguments)?;
        let durable = x.decl.durable && self.destination_durable(&binding.destination);
        if x.bind(binding) && durable {
            self.persist()?;
        }
        Ok(())
    }

    /// Removes a binding (a missing binding is not an error, as in RabbitMQ 3.13).
    pub fn unbind(&self, binding: &Binding, conn: ConnectionId) -> Result<()> {
        if binding.source.is_empty() {
            return Err(CoreError::AccessRefused(
                "operation not permitted on the default exchange".into(),
            ));
        }
        // A missing exchange or destination means there is nothing to remove.
        let Some(x) = self.exchange(&binding.source) else {
            return Ok(());
        };
        if let Destination::Queue(q) = &binding.destination {
            if let Some(q) = self.queue(q) {
                self.check_owner(&q, conn)?;
            }
        }
        if x.unbind(binding) {
            self.maybe_auto_delete_exchange(&binding.source);
            if x.decl.durable {
                self.persist()?;
            }
        }
        Ok(())
    }

    fn binding_source(&self, name: &str) -> Result<Arc<Exchange>> {
        if name.is_empty() {
            return Err(CoreError::AccessRefused(
                "operation not permitted on the default exchange".into(),
            ));
        }
        self.exchange(name)
            .ok_or_else(|| self.not_found_exchange(name))
    }

    fn check_destination(&self, d: &Destination, conn: ConnectionId) -> Result<()> {
        match d {
            Destination::Queue(q) => self.queue_for(q, conn).map(|_| ()),
            Destination::Exchange(x) if x.is_empty() => Err(CoreError::AccessRefused(
                "operation not permitted on the default exchange".into(),
            )),
            Destination::Exchange(x) => self
                .exchange(x)
                .map(|_| ())
                .ok_or_else(|| self.not_found_exchange(x)),
        }
    }

    fn destination_durable(&self, d: &Destination) -> bool {
        match d {
            Destination::Queue(q) => self.queue(q).is_some_and(|q| Self::is_persisted(q.decl())),
            Destination::Exchange(x) => self.exchange(x).is_some_and(|x| x.decl.durable),
        }
    }

    /// Every binding in the vhost (the default exchange's implicit ones excluded).
    pub fn bindings(&self) -> Vec<Binding> {
        self.exchanges().iter().flat_map(|x| x.bindings()).collect()
    }

    // ---------------------------------------------------------------- publish

    /// Routes a message from `exchange` to queue names, following exchange-to-
    /// exchange bindings and alternate exchanges.
    ///
    /// # Errors
    /// `NotFound` for a missing exchange, `AccessRefused` for an internal one.
    pub fn route(&self, exchange: &str, msg: &Message) -> Result<Vec<QueueRef>> {
        if exchange.is_empty() {
            return Ok(self.queue(&msg.routing_key).into_iter().collect());
        }
        let xs = read(&self.exchanges);
        let x = xs
            .get(exchange)
            .ok_or_else(|| self.not_found_exchange(exchange))?;
        if x.decl.internal {
            return Err(CoreError::AccessRefused(format!(
                "cannot publish to internal exchange '{exchange}' in vhost '{}'",
                self.name
            )));
        }
        let mut visited: Vec<&str> = Vec::new();
        let mut names: Vec<Destination> = Vec::new();
        Self::route_from(&xs, x, msg, &mut visited, &mut names);
        // Alternate exchanges, followed in a chain while nothing is routed.
        let mut ae = if names.is_empty() {
            x.alternate_exchange()
        } else {
            None
        };
        while names.is_empty() {
            let Some(name) = ae.take() else { break };
            let Some(axe) = xs.get(&name) else { break };
            if visited.contains(&axe.name()) {
                break;
            }
            Self::route_from(&xs, axe, msg, &mut visited, &mut names);
            ae = axe.alternate_exchange();
        }
        drop(xs);
        dedup(&mut names);
        let qs = read(&self.queues);
        Ok(names
            .iter()
            .filter_map(|d| qs.get(d.name()).cloned())
            .collect())
    }

    fn route_from<'a>(
        xs: &'a HashMap<String, Arc<Exchange>>,
        x: &'a Exchange,
        msg: &Message,
        visited: &mut Vec<&'a str>,
        out: &mut Vec<Destination>,
    ) {
        if visited.contains(&x.name()) {
            return;
        }
        visited.push(x.name());
        let mut dests = Vec::new();
        x.route(msg, &mut dests);
        for d in dests {
            match d {
                Destination::Queue(_) => out.push(d),
                Destination::Exchange(name) => {
                    if let Some(next) = xs.get(&name) {
                        Self::route_from(xs, next, msg, visited, out);
                    }
                }
            }
        }
    }

    /// Publishes a message: routes it, stores it in every destination, and returns
    /// at once; await [`Published::durable`] before confirming to the publisher.
    ///
    /// # Errors
    /// Routing errors, `PreconditionFailed` for an oversized message, storage errors.
    pub fn publish(&self, exchange: &str, msg: Message) -> Result<Published> {
        let mut b = self.publish_batch(exchange, vec![msg])?;
        let o = b.outcomes.pop().unwrap_or_default();
        Ok(Published {
            routed: o.routed,
            rejected: o.rejected,
            commits: b.commits,
        })
    }

    /// Publishes messages to one exchange as a batch (what an adapter read from
    /// one socket read): each queue gets one log write and one dispatch for all of
    /// them, and one `durable()` covers the batch, so confirms are released per
    /// group commit.
    ///
    /// # Errors
    /// As [`VHost::publish`]; an error applies to the whole batch.
    pub fn publish_batch(&self, exchange: &str, msgs: Vec<Message>) -> Result<PublishedBatch> {
        let shared = self.shared()?;
        let max = shared.config.message_size_max_bytes;
        if let Some(m) = msgs.iter().find(|m| m.body.len() as u64 > max) {
            return Err(CoreError::PreconditionFailed(format!(
                "message size {} is larger than configured max size {max}",
                m.body.len()
            )));
        }
        // Route each message, grouping message indexes by destination.
        let mut groups: Vec<(QueueRef, Vec<usize>)> = Vec::new();
        let mut arcs = Vec::with_capacity(msgs.len());
        // The default exchange routes by routing key alone, to the queue of that name: a
        // key whose queue is already a group of this batch (a run of one key, or a few
        // queues in turn) is found among the groups by name, without a lookup or a copy
        // of the key; a key without a queue is looked up once per batch.
        let mut unroutable: Vec<String> = Vec::new();
        for (i, mut msg) in msgs.into_iter().enumerate() {
            if exchange.is_empty() {
                let key = msg.routing_key.as_str();
                let known = if groups.len() <= GROUPS_SCANNED {
                    groups.iter().position(|(q, _)| q.name() == key)
                } else {
                    None
                };
                let g = match known {
                    Some(g) => Some(g),
                    // Remembered while few (many distinct unroutable keys in one batch
                    // must not make the scan quadratic): a lookup each beyond that.
                    None if unroutable.len() <= GROUPS_SCANNED
                        && unroutable.iter().any(|k| k == key) =>
                    {
                        None
                    }
                    None => match self.queue(key) {
                        Some(t) => Some(match groups.iter().position(|(q, _)| same_queue(q, &t)) {
                            Some(g) => g,
                            None => {
                                groups.push((t, Vec::new()));
                                groups.len() - 1
                            }
                        }),
                        None => {
                            if unroutable.len() <= GROUPS_SCANNED {
                                unroutable.push(key.to_owned());
                            }
                            None
                        }
                    },
                };
                if let Some(g) = g {
                    groups[g].1.push(i);
                }
            } else {
                for t in self.route(exchange, &msg)? {
                    match groups.iter_mut().find(|(q, _)| same_queue(q, &t)) {
                        Some((_, idx)) => idx.push(i),
                        None => groups.push((t, vec![i])),
                    }
                }
            }
            msg.exchange = exchange.to_string();
            arcs.push(Arc::new(msg));
        }
        Self::store(groups, arcs)
    }

    /// Puts messages straight into one queue or stream, bypassing routing and keeping
    /// their exchange and routing key (management moves, dead-letter redrives).
    ///
    /// # Errors
    /// `NotFound`, `ResourceLocked` for another connection's exclusive queue, storage errors.
    pub fn publish_to_queue(
        &self,
        queue: &str,
        msgs: Vec<Message>,
        conn: ConnectionId,
    ) -> Result<PublishedBatch> {
        let target = self.queue_for(queue, conn)?;
        let idx = (0..msgs.len()).collect();
        Self::store(
            vec![(target, idx)],
            msgs.into_iter().map(Arc::new).collect(),
        )
    }

    /// Stores routed messages: one enqueue batch per queue, one append per stream partition.
    fn store(
        groups: Vec<(QueueRef, Vec<usize>)>,
        arcs: Vec<Arc<Message>>,
    ) -> Result<PublishedBatch> {
        let now = now_ms();
        let mut out = PublishedBatch {
            outcomes: vec![PublishOutcome::default(); arcs.len()],
            commits: Vec::new(),
        };
        let mut batch: Vec<Arc<Message>> = Vec::new();
        for (t, idx) in groups {
            match t {
                QueueRef::Classic(q) => {
                    batch.clear();
                    batch.extend(idx.iter().map(|&i| arcs[i].clone()));
                    let (verdicts, commit) = q.enqueue_batch(&batch, now)?;
                    out.commits.extend(commit);
                    for (&i, v) in idx.iter().zip(verdicts) {
                        match v {
                            Enqueued::Accepted => out.outcomes[i].routed += 1,
                            Enqueued::Rejected => out.outcomes[i].rejected += 1,
                            Enqueued::Gone => {}
                        }
                    }
                }
                QueueRef::Stream(s) => {
                    let mut by_partition: Vec<(u32, Vec<&Message>)> = Vec::new();
                    for &i in &idx {
                        let p = s.partition_for(&arcs[i]);
                        match by_partition.iter_mut().find(|(x, _)| *x == p) {
                            Some((_, v)) => v.push(&arcs[i]),
                            None => by_partition.push((p, vec![&arcs[i]])),
                        }
                        out.outcomes[i].routed += 1;
                    }
                    for (p, ms) in by_partition {
                        let (_, c) = s.append(p, &ms, now)?;
                        out.commits.push(c);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Dead-letters messages that left `from`, with RabbitMQ's `x-death` history.
    pub(crate) fn dead_letter(&self, from: &Queue, msgs: Vec<(Arc<Message>, DeathReason)>) {
        let args = from.args();
        let Some(dlx) = args.dead_letter_exchange.clone() else {
            return;
        };
        let now = now_ms();
        for (m, reason) in msgs {
            let mut msg = (*m).clone();
            let cycle_safe = add_death(&mut msg, from.name(), reason, now);
            if let Some(rk) = &args.dead_letter_routing_key {
                msg.routing_key = rk.clone();
            }
            msg.exchange = dlx.clone();
            let targets = match self.route(&dlx, &msg) {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(queue = %from.name(), dlx = %dlx, error = %e, "dead-letter exchange unavailable; message dropped");
                    continue;
                }
            };
            let msg = Arc::new(msg);
            for t in targets {
                if !cycle_safe && t.name() == from.name() {
                    tracing::debug!(queue = %from.name(), "dead-letter cycle detected; message dropped");
                    continue;
                }
                let r = match &t {
                    QueueRef::Classic(q) => {
                        q.enqueue_batch(std::slice::from_ref(&msg), now).map(|_| ())
                    }
                    QueueRef::Stream(s) => {
                        s.append(s.partition_for(&msg), &[&msg], now).map(|_| ())
                    }
                };
                if let Err(e) = r {
                    tracing::warn!(queue = %t.name(), error = %e, "dead-lettering into queue failed");
                }
            }
        }
    }

    // ---------------------------------------------------------------- consume

    /// Attaches a consumer to a queue or stream. For streams, `offset` says where
    /// to start (default `Next`).
    ///
    /// # Errors
    /// `NotFound`, `ResourceLocked`, `AccessRefused` (exclusive consumer).
    pub fn consume(
        &self,
        queue: &str,
        opts: ConsumerOptions,
        offset: Option<StreamOffset>,
        sink: ConsumerSink,
    ) -> Result<(ConsumerId, QueueRef)> {
        let q = self.queue_for(queue, opts.connection)?;
        let shared = self.shared()?;
        let id = shared.next_consumer_id();
        match &q {
            QueueRef::Classic(c) => c.consume(id, opts, sink, now_ms())?,
            QueueRef::Stream(s) => {
                s.consume(id, opts, 0, offset.unwrap_or(StreamOffset::Next), sink)?
            }
        }
        Ok((id, q))
    }

    /// Attaches a consumer to one partition of a stream, from `at`.
    ///
    /// # Errors
    /// `NotFound` (no such stream or partition), `PreconditionFailed` (a classic queue).
    pub fn consume_stream(
        &self,
        name: &str,
        opts: ConsumerOptions,
        partition: u32,
        at: StreamOffset,
        sink: ConsumerSink,
    ) -> Result<(ConsumerId, Arc<Stream>)> {
        let s = match self.queue(name) {
            Some(QueueRef::Stream(s)) => s,
            Some(QueueRef::Classic(_)) => {
                return Err(CoreError::PreconditionFailed(format!(
                    "queue '{name}' in vhost '{}' is not a stream",
                    self.name
                )))
            }
            None => return Err(self.not_found_queue(name)),
        };
        let id = self.shared()?.next_consumer_id();
        s.consume(id, opts, partition, at, sink)?;
        Ok((id, s))
    }

    /// All durable definitions of this vhost, for persistence and export.
    pub(crate) fn durable_definitions(&self) -> (Vec<ExchangeDecl>, Vec<QueueDecl>, Vec<Binding>) {
        let exchanges: Vec<ExchangeDecl> = self
            .exchanges()
            .iter()
            .filter(|x| x.decl.durable && !x.name().starts_with("amq."))
            .map(|x| x.decl.clone())
            .collect();
        let queues: Vec<QueueDecl> = self
            .queues()
            .iter()
            .filter(|q| Self::is_persisted(q.decl()))
            .map(|q| q.decl().clone())
            .collect();
        let bindings = self
            .bindings()
            .into_iter()
            .filter(|b| {
                self.exchange(&b.source).is_some_and(|x| x.decl.durable)
                    && self.destination_durable(&b.destination)
            })
            .collect();
        (exchanges, queues, bindings)
    }

    /// Applies stream retention; called periodically by the broker.
    pub(crate) fn apply_retention(&self, now: i64) {
        for q in self.queues() {
            if let QueueRef::Stream(s) = q {
                if let Err(e) = s.apply_retention(now) {
                    tracing::warn!(stream = %s.name(), error = %e, "retention failed");
                }
            }
        }
    }

    /// Stops stream consumers (shutdown); returns their tasks to await.
    pub(crate) fn stop(&self) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = Vec::new();
        for q in self.queues() {
            if let QueueRef::Stream(s) = q {
                tasks.extend(s.stop_all(false));
            }
        }
        tasks
    }
}

/// Updates `x-death` and the `x-first-death-*`/`x-last-death-*` headers as
/// RabbitMQ does. Returns false when the message already died in this queue for a
/// reason other than rejection with no rejection on the way (a cycle).
pub(crate) fn add_death(msg: &mut Message, queue: &str, reason: DeathReason, now: i64) -> bool {
    let mut deaths: Vec<Value> = match msg.headers.remove("x-death") {
        Some(Value::Array(a)) => a,
        _ => Vec::new(),
    };
    let same = |v: &Value| match v {
        Value::Table(t) => {
            t.get_str("queue") == Some(queue) && t.get_str("reason") == Some(reason.as_str())
        }
        _ => false,
    };
    let rejected_before = deaths
        .iter()
        .any(|v| matches!(v, Value::Table(t) if t.get_str("reason") == Some("rejected")));
    let died_here = deaths
        .iter()
        .any(|v| matches!(v, Value::Table(t) if t.get_str("queue") == Some(queue)));
    let cycle_safe = reason == DeathReason::Rejected || rejected_before || !died_here;
    let routing_keys = Value::Array(vec![Value::String(msg.routing_key.clone())]);
    let entry = match deaths.iter().position(same) {
        Some(i) => {
            let mut e = deaths.remove(i);
            if let Value::Table(t) = &mut e {
                let count = t.get_i64("count").unwrap_or(0) + 1;
                t.insert("count", Value::Int(count));
                t.insert("time", Value::Timestamp(now));
            }
            e
        }
        None => {
            let mut t = FieldTable::new();
            t.insert("count", Value::Int(1));
            t.insert("reason", reason.as_str().into());
            t.insert("queue", queue.into());
            t.insert("time", Value::Timestamp(now));
            t.insert("exchange", msg.exchange.clone().into());
            t.insert("routing-keys", routing_keys);
            if let Some(exp) = msg.properties.expiration_ms {
                t.insert("original-expiration", exp.to_string().into());
            }
            Value::Table(t)
        }
    };
    deaths.insert(0, entry);
    msg.properties.expiration_ms = None;
    msg.headers.insert("x-death", Value::Array(deaths));
    if msg.headers.get("x-first-death-reason").is_none() {
        msg.headers
            .insert("x-first-death-reason", reason.as_str().into());
        msg.headers.insert("x-first-death-queue", queue.into());
        msg.headers
            .insert("x-first-death-exchange", msg.exchange.clone().into());
    }
    msg.headers
        .insert("x-last-death-reason", reason.as_str().into());
    msg.headers.insert("x-last-death-queue", queue.into());
    msg.headers
        .insert("x-last-death-exchange", msg.exchange.clone().into());
    cycle_safe
}
