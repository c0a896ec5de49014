//! The broker: opens storage, recovers definitions and messages, owns virtual
//! hosts, users, connections, flow control and the background tasks.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use ferrymq_storage::Storage;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::auth::{self, ScramSha256, VerifiedCache};
use crate::clock::now_ms;
use crate::config::{BrokerConfig, VhostLimits};
use crate::error::{CoreError, Result};
use crate::exchange::{Binding, ExchangeDecl, ExchangeKind};
use crate::policy::{self, AppliedPolicy, Compiled, Kind, Policies, Policy};
use crate::queue::{ConnectionId, ConsumerId, ConsumerInfo, QueueArgs, QueueDecl};
use crate::timer::Timer;
use crate::topicperm::{expand, TopicCheck, TopicPermission, TopicPermissions};
use crate::vhost::{QueueRef, VHost};

/// A user account. The password is kept only as an argon2id hash (and SCRAM-SHA-256
/// stored keys for SASL SCRAM); see `auth.rs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    /// argon2id PHC string (or a RabbitMQ SHA-256 hash from imported definitions).
    #[serde(default)]
    pub password_hash: String,
    /// SCRAM-SHA-256 stored keys, derived when the password was set in clear.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scram_sha256: Option<ScramSha256>,
    #[serde(default)]
    pub tags: Vec<String>,
    /// A password in clear as input (API, import, definitions of older versions): replaced
    /// by its hash when the user is stored, never written out.
    #[serde(default, skip_serializing)]
    pub password: Option<String>,
}

impl User {
    /// A user to store with this password (hashed by [`Broker::put_user`]).
    pub fn with_password(
        name: impl Into<String>,
        password: impl Into<String>,
        tags: Vec<String>,
    ) -> User {
        User {
            name: name.into(),
            password_hash: String::new(),
            scram_sha256: None,
            tags,
            password: Some(password.into()),
        }
    }

    /// Replaces a clear-text password by its hashes.
    ///
    /// # Errors
    /// `InvalidArgument` for a user with neither a password nor a hash; hashing errors.
    fn seal(&mut self) -> Result<()> {
        if let Some(pw) = self.password.take() {
            if pw.is_empty() {
                return Err(CoreError::InvalidArgument(
                    "password must not be empty".into(),
                ));
            }
            self.password_hash = auth::hash_password(&pw)?;
            self.scram_sha256 = Some(ScramSha256::derive(&pw)?);
        }
        if self.password_hash.is_empty() {
            return Err(CoreError::InvalidArgument(format!(
                "user '{}' needs a password or a password_hash",
                self.name
            )));
        }
        Ok(())
    }
}

/// RabbitMQ-style permissions of a user on a vhost: regular expressions over
/// resource names for configure, write and read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permission {
    pub user: String,
    pub vhost: String,
    pub configure: String,
    pub write: String,
    pub read: String,
}

/// A vhost as stored in the definitions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VhostDef {
    pub name: String,
    #[serde(default)]
    pub limits: VhostLimits,
}

/// An exchange as stored in the definitions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExchangeDef {
    pub vhost: String,
    #[serde(flatten)]
    pub decl: ExchangeDecl,
}

/// A queue as stored in the definitions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueDef {
    pub vhost: String,
    #[serde(flatten)]
    pub decl: QueueDecl,
}

/// A binding as stored in the definitions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BindingDef {
    pub vhost: String,
    #[serde(flatten)]
    pub binding: Binding,
}

/// Everything durable except messages: persisted atomically on every change,
/// exported and imported as one document.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Definitions {
    #[serde(default)]
    pub vhosts: Vec<VhostDef>,
    #[serde(default)]
    pub users: Vec<User>,
    #[serde(default)]
    pub permissions: Vec<Permission>,
    /// RabbitMQ's `topic_permissions` (user, vhost, exchange, write, read).
    #[serde(default)]
    pub topic_permissions: Vec<TopicPermission>,
    #[serde(default)]
    pub exchanges: Vec<ExchangeDef>,
    #[serde(default)]
    pub queues: Vec<QueueDef>,
    #[serde(default)]
    pub bindings: Vec<BindingDef>,
    #[serde(default)]
    pub policies: Vec<Policy>,
}

/// Resource alarms. While any is raised, adapters block publishers and let
/// consumers drain.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlowState {
    pub memory_alarm: bool,
    pub disk_alarm: bool,
}

impl FlowState {
    pub fn blocked(&self) -> bool {
        self.memory_alarm || self.disk_alarm
    }
}

/// A client connection as management sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    pub protocol: String,
    pub peer: String,
    pub user: String,
    pub vhost: String,
}

/// Counters an adapter keeps for its connection.
#[derive(Debug, Default)]
pub struct ConnectionStats {
    pub messages_in: AtomicU64,
    pub messages_out: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub channels: AtomicU64,
}

/// A registered connection: its identity, counters and a close request signal.
#[derive(Debug)]
pub struct ConnectionHandle {
    pub id: ConnectionId,
    pub info: ConnectionInfo,
    pub connected_at_ms: i64,
    pub stats: ConnectionStats,
    close: watch::Sender<Option<String>>,
    channels: Mutex<std::collections::BTreeMap<u32, Arc<ChannelHandle>>>,
}

impl ConnectionHandle {
    /// Resolves with a reason when management asks to close the connection.
    pub fn close_requested(&self) -> watch::Receiver<Option<String>> {
        self.close.subscribe()
    }

    /// Registers an open channel (a protocol's unit of concurrency on a connection: an
    /// AMQP channel, a WebSocket's subscriptions). The adapter keeps its live state in the
    /// handle's atomics; dropping the registration unregisters it.
    pub fn register_channel(self: &Arc<Self>, number: u32) -> ChannelRegistration {
        let h = Arc::new(ChannelHandle {
            connection: self.id,
            number,
            opened_at_ms: now_ms(),
            ..ChannelHandle::default()
        });
        self.channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(number, h.clone());
        ChannelRegistration {
            conn: self.clone(),
            handle: h,
        }
    }

    /// Its open channels, by number.
    pub fn channels(&self) -> Vec<Arc<ChannelHandle>> {
        self.channels
            .lock()
            .map(|c| c.values().cloned().collect())
            .unwrap_or_default()
    }
}

/// An open channel as management sees it; the adapter updates the atomics.
#[derive(Debug, Default)]
pub struct ChannelHandle {
    pub connection: ConnectionId,
    pub number: u32,
    pub opened_at_ms: i64,
    /// Per-consumer prefetch (0 = unlimited).
    pub prefetch_count: AtomicU32,
    /// Channel-wide prefetch shared by its consumers (0 = none).
    pub global_prefetch_count: AtomicU32,
    /// Publisher confirms on.
    pub confirm: AtomicBool,
    pub transactional: AtomicBool,
    /// Deliveries on this channel not yet acknowledged.
    pub unacked: AtomicU64,
}

/// Keeps a channel registered on its connection; unregisters it when dropped.
#[derive(Debug)]
pub struct ChannelRegistration {
    conn: Arc<ConnectionHandle>,
    handle: Arc<ChannelHandle>,
}

impl std::ops::Deref for ChannelRegistration {
    type Target = ChannelHandle;
    fn deref(&self) -> &ChannelHandle {
        &self.handle
    }
}

impl Drop for ChannelRegistration {
    fn drop(&mut self) {
        let mut cs = self.conn.channels.lock().unwrap_or_else(|p| p.into_inner());
        // A channel number reused meanwhile belongs to the newer registration.
        if cs
            .get(&self.handle.number)
            .is_some_and(|h| Arc::ptr_eq(h, &self.handle))
        {
            cs.remove(&self.handle.number);
        }
    }
}

/// State shared by the broker, its vhosts and its queues.
pub(crate) struct Shared {
    pub(crate) config: BrokerConfig,
    pub(crate) storage: Arc<Storage>,
    pub(crate) timer: Arc<Timer>,
    vhosts: RwLock<HashMap<String, Arc<VHost>>>,
    users: RwLock<HashMap<String, User>>,
    permissions: RwLock<HashMap<(String, String), Permission>>,
    topic_permissions: RwLock<TopicPermissions>,
    connections: RwLock<HashMap<ConnectionId, Arc<ConnectionHandle>>>,
    policies: RwLock<Policies>,
    defs_lock: Mutex<()>,
    next_id: AtomicU64,
    flow: watch::Sender<FlowState>,
    /// Recently verified passwords (see `auth::VerifiedCache`).
    verified: VerifiedCache,
    /// Compiled permission patterns.
    perm_regex: RwLock<HashMap<String, Arc<regex_lite::Regex>>>,
    /// Connection admission and refusal counts.
    pub(crate) admission: Arc<crate::admission::Admission>,
}

/// The three kinds of permission (RabbitMQ's model).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Create and delete resources (declare, delete; Kafka create/delete topics).
    Configure,
    /// Publish into them (publish to an exchange, produce to a topic, bind *to* a queue).
    Write,
    /// Consume from them (consume, get, purge, bind *from* an exchange, fetch).
    Read,
}

impl Access {
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Configure => "configure",
            Access::Write => "write",
            Access::Read => "read",
        }
    }
}

impl Shared {
    pub(crate) fn next_consumer_id(&self) -> ConsumerId {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The policy that applies to an entity, if any.
    pub(crate) fn policy_for(&self, vhost: &str, name: &str, kind: Kind) -> Option<Arc<Compiled>> {
        self.policies
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .effective(vhost, name, kind)
    }

    fn definitions(&self) -> Definitions {
        let mut d = Definitions::default();
        let mut vhosts: Vec<Arc<VHost>> = self
            .vhosts
            .read()
            .map(|v| v.values().cloned().collect())
            .unwrap_or_default();
        vhosts.sort_by(|a, b| a.name.cmp(&b.name));
        for vh in vhosts {
            d.vhosts.push(VhostDef {
                name: vh.name.clone(),
                limits: vh.limits(),
            });
            let (xs, qs, bs) = vh.durable_definitions();
            d.exchanges.extend(xs.into_iter().map(|decl| ExchangeDef {
                vhost: vh.name.clone(),
                decl,
            }));
            d.queues.extend(qs.into_iter().map(|decl| QueueDef {
                vhost: vh.name.clone(),
                decl,
            }));
            d.bindings.extend(bs.into_iter().map(|binding| BindingDef {
                vhost: vh.name.clone(),
                binding,
            }));
        }
        d.users = self
            .users
            .read()
            .map(|u| u.values().cloned().collect())
            .unwrap_or_default();
        d.users.sort_by(|a, b| a.name.cmp(&b.name));
        d.permissions = self
            .permissions
            .read()
            .map(|p| p.values().cloned().collect())
            .unwrap_or_default();
        d.permissions
            .sort_by(|a, b| (&a.user, &a.vhost).cmp(&(&b.user, &b.vhost)));
        d.topic_permissions = self
            .topic_permissions
            .read()
            .map(|p| p.all())
            .unwrap_or_default();
        d.policies = self.policies.read().map(|p| p.all()).unwrap_or_default();
        d
    }

    /// A permission pattern compiled once and cached (the publish path must not compile per
    /// message).
    ///
    /// # Errors
    /// `InvalidArgument` if it does not compile.
    fn compiled(&self, pattern: &str) -> Result<Arc<regex_lite::Regex>> {
        if let Some(re) = self
            .perm_regex
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(pattern)
        {
            return Ok(re.clone());
        }
        let re = Arc::new(regex_lite::Regex::new(pattern).map_err(|e| {
            CoreError::InvalidArgument(format!("permission pattern {pattern:?}: {e}"))
        })?);
        let mut cache = self.perm_regex.write().unwrap_or_else(|e| e.into_inner());
        if cache.len() > 10_000 {
            cache.clear();
        }
        cache.insert(pattern.to_string(), re.clone());
        Ok(re)
    }

    /// Writes the current definitions atomically (write, fsync, rename).
    pub(crate) fn persist_definitions(&self) -> Result<()> {
        let _g = self.defs_lock.lock().unwrap_or_else(|p| p.into_inner());
        let d = self.definitions();
        self.storage.definitions().store(&d)?;
        Ok(())
    }
}

/// The broker. Cheap to share (`Arc<Broker>`); every adapter holds one.
pub struct Broker {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("data_dir", &self.shared.config.data_dir)
            .finish()
    }
}

/// Resident set size of this process, from /proc (0 where unavailable).
fn resident_bytes() -> u64 {
    let Ok(s) = std::fs::read_to_string("/proc/self/statm") else {
        return 0;
    };
    let pages: u64 = s
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

impl Broker {
    /// Opens (or creates) the broker over `config.data_dir`: recovers definitions,
    /// queue contents and streams, then starts the timer and resource monitor.
    /// Must be called within a tokio runtime.
    ///
    /// # Errors
    /// Storage errors, or damaged definitions.
    pub async fn open(config: BrokerConfig) -> Result<Arc<Broker>> {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            CoreError::Storage(ferrymq_storage::StorageError::Io {
                path: config.data_dir.clone(),
                source: e,
            })
        })?;
        let storage = Storage::open(&config.data_dir, config.storage.clone())?;
        let (flow, _) = watch::channel(FlowState::default());
        let admission = crate::admission::Admission::new(config.connection_limits);
        let shared = Arc::new(Shared {
            admission,
            config,
            storage,
            timer: Timer::new(),
            vhosts: RwLock::new(HashMap::new()),
            users: RwLock::new(HashMap::new()),
            permissions: RwLock::new(HashMap::new()),
            topic_permissions: RwLock::new(TopicPermissions::default()),
            connections: RwLock::new(HashMap::new()),
            policies: RwLock::new(Policies::default()),
            defs_lock: Mutex::new(()),
            next_id: AtomicU64::new(1),
            flow,
            verified: VerifiedCache::new(),
            perm_regex: RwLock::new(HashMap::new()),
        });
        let (stop, _) = watch::channel(false);
        let broker = Arc::new(Broker {
            shared,
            stop,
            tasks: Mutex::new(Vec::new()),
        });
        let defs: Option<Definitions> = broker.shared.storage.definitions().load()?;
        match defs {
            Some(d) => broker.restore(d)?,
            None => broker.bootstrap()?,
        }
        broker.remove_orphan_logs();
        broker.start_tasks();
        Ok(broker)
    }

    /// First start: the default vhost and user with full permissions.
    fn bootstrap(&self) -> Result<()> {
        let c = &self.shared.config;
        self.add_vhost(&c.default_vhost)?;
        self.put_user(User::with_password(
            c.default_user.clone(),
            c.default_password.clone(),
            vec!["administrator".into()],
        ))?;
        self.set_permission(Permission {
            user: c.default_user.clone(),
            vhost: c.default_vhost.clone(),
            configure: ".*".into(),
            write: ".*".into(),
            read: ".*".into(),
        })?;
        tracing::info!(vhost = %c.default_vhost, user = %c.default_user, "initialised a new data directory");
        Ok(())
    }

    /// Rebuilds vhosts, exchanges, queues (with their messages) and bindings.
    fn restore(&self, d: Definitions) -> Result<()> {
        let now = now_ms();
        let mut migrated = false;
        {
            // Policies first, so that queues open with their effective arguments.
            let mut ps = self
                .shared
                .policies
                .write()
                .unwrap_or_else(|p| p.into_inner());
            for p in d.policies {
                let (vhost, name) = (p.vhost.clone(), p.name.clone());
                if let Err(e) = Compiled::new(p).and_then(|c| ps.put(c)) {
                    tracing::warn!(%vhost, policy = %name, error = %e, "stored policy skipped");
                }
            }
        }
        {
            let mut vs = self
                .shared
                .vhosts
                .write()
                .unwrap_or_else(|p| p.into_inner());
            for v in &d.vhosts {
                vs.insert(
                    v.name.clone(),
                    VHost::new(
                        v.name.clone(),
                        v.limits.clone(),
                        Arc::downgrade(&self.shared),
                    ),
                );
            }
        }
        for x in d.exchanges {
            if let Some(vh) = self.vhost(&x.vhost) {
                vh.insert_exchange(x.decl);
            }
        }
        for q in d.queues {
            let Some(vh) = self.vhost(&q.vhost) else {
                continue;
            };
            let args = QueueArgs::parse(&q.decl.name, &q.vhost, &q.decl.arguments)?;
            let qref = vh.create_queue(q.decl, args, None, now)?;
            vh.insert_queue(qref);
        }
        for b in d.bindings {
            if let Some(x) = self
                .vhost(&b.vhost)
                .and_then(|vh| vh.exchange(&b.binding.source))
            {
                x.bind(b.binding);
            }
        }
        for vh in self.vhosts() {
            self.apply_policies(&vh);
        }
        {
            let mut us = self.shared.users.write().unwrap_or_else(|p| p.into_inner());
            for mut u in d.users {
                // Definitions written before passwords were hashed hold them in clear.
                if u.password.is_some() {
                    u.seal()?;
                    migrated = true;
                }
                us.insert(u.name.clone(), u);
            }
        }
        let mut ps = self
            .shared
            .permissions
            .write()
            .unwrap_or_else(|p| p.into_inner());
        for p in d.permissions {
            ps.insert((p.user.clone(), p.vhost.clone()), p);
        }
        drop(ps);
        let mut ts = self
            .shared
            .topic_permissions
            .write()
            .unwrap_or_else(|p| p.into_inner());
        for p in d.topic_permissions {
            ts.put(p);
        }
        drop(ts);
        if migrated {
            tracing::info!("user passwords stored in clear were replaced by their hashes");
            self.shared.persist_definitions()?;
        }
        Ok(())
    }

    /// Deletes queue and stream logs no definition refers to (left by a crash
    /// between deleting a queue's definition and its files, or by transient use).
    fn remove_orphan_logs(&self) {
        let mut queues = HashSet::new();
        let mut streams = HashSet::new();
        for vh in self.vhosts() {
            for q in vh.queues() {
                let base = format!("{}/{}", vh.name, q.name());
                match &q {
                    QueueRef::Classic(_) => {
                        queues.insert(base);
                    }
                    QueueRef::Stream(s) => {
                        for p in 0..s.partition_count() {
                            streams.insert(format!("{base}/{p}"));
                        }
                    }
                }
            }
        }
        let st = &self.shared.storage;
        for n in st.list_queues().unwrap_or_default() {
            if !queues.contains(&n) {
                tracing::warn!(queue = %n, "removing orphaned queue log");
                let _ = st.remove_queue(&n);
            }
        }
        for n in st.list_streams().unwrap_or_default() {
            if !streams.contains(&n) {
                tracing::warn!(stream = %n, "removing orphaned stream log");
                let _ = st.remove_stream(&n);
            }
        }
    }

    fn start_tasks(self: &Arc<Self>) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        tasks.push(tokio::spawn(
            self.shared.timer.clone().run(self.stop.subscribe()),
        ));
        let me = Arc::downgrade(self);
        let mut stop = self.stop.subscribe();
        let interval_ms = self.shared.config.resource_check_interval_ms.max(10);
        tasks.push(tokio::spawn(async move {
            let mut ticks: u64 = 0;
            loop {
                {
                    let Some(b) = me.upgrade() else { return };
                    b.check_resources();
                    // Retention every ~10 s.
                    if ticks.is_multiple_of((10_000 / interval_ms).max(1)) {
                        let now = now_ms();
                        for vh in b.vhosts() {
                            vh.apply_retention(now);
                        }
                    }
                }
                ticks += 1;
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_millis(interval_ms)) => {}
                    _ = stop.changed() => return,
                }
            }
        }));
    }

    /// Samples memory and free disk and raises or clears alarms.
    pub fn check_resources(&self) {
        let c = &self.shared.config;
        let rss = resident_bytes();
        let free = self.shared.storage.disk_free_bytes().unwrap_or(u64::MAX);
        let next = FlowState {
            memory_alarm: rss > c.memory_high_watermark_bytes,
            disk_alarm: free < c.disk_free_limit_bytes,
        };
        let prev = *self.shared.flow.borrow();
        if prev != next {
            if next.blocked() {
                tracing::warn!(
                    rss,
                    free_disk = free,
                    memory_alarm = next.memory_alarm,
                    disk_alarm = next.disk_alarm,
                    "resource alarm raised: blocking publishers"
                );
            } else {
                tracing::info!(
                    rss,
                    free_disk = free,
                    "resource alarms cleared: publishing resumes"
                );
            }
            self.shared.flow.send_replace(next);
        }
    }

    /// Watches resource alarms; adapters block publishers while `blocked()`.
    pub fn flow(&self) -> watch::Receiver<FlowState> {
        self.shared.flow.subscribe()
    }

    pub fn config(&self) -> &BrokerConfig {
        &self.shared.config
    }

    pub fn storage(&self) -> &Arc<Storage> {
        &self.shared.storage
    }

    // ------------------------------------------------------------- vhosts

    pub fn vhost(&self, name: &str) -> Option<Arc<VHost>> {
        self.shared.vhosts.read().ok()?.get(name).cloned()
    }

    pub fn vhosts(&self) -> Vec<Arc<VHost>> {
        let mut v: Vec<_> = self
            .shared
            .vhosts
            .read()
            .map(|v| v.values().cloned().collect())
            .unwrap_or_default();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Creates a vhost (idempotent).
    pub fn add_vhost(&self, name: &str) -> Result<Arc<VHost>> {
        if name.is_empty() || name.len() > 255 {
            return Err(CoreError::InvalidArgument(
                "vhost name must be 1 to 255 bytes".into(),
            ));
        }
        let vh = {
            let mut vs = self
                .shared
                .vhosts
                .write()
                .unwrap_or_else(|p| p.into_inner());
            vs.entry(name.to_string())
                .or_insert_with(|| {
                    VHost::new(
                        name.to_string(),
                        self.shared.config.vhost_limits.clone(),
                        Arc::downgrade(&self.shared),
                    )
                })
                .clone()
        };
        self.shared.persist_definitions()?;
        Ok(vh)
    }

    /// Deletes a vhost with everything in it.
    pub fn delete_vhost(&self, name: &str) -> Result<()> {
        let Some(vh) = self.vhost(name) else {
            return Err(CoreError::NotFound(format!("no vhost '{name}'")));
        };
        for q in vh.queues() {
            vh.delete_queue_internal(q.name())?;
        }
        self.shared
            .vhosts
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        self.shared
            .permissions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(_, v), _| v != name);
        self.shared
            .topic_permissions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove_vhost(name);
        self.shared
            .policies
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove_vhost(name);
        self.shared.persist_definitions()
    }

    // ------------------------------------------------------------- users

    /// Creates or replaces a user; a password given in clear is stored as its hashes.
    ///
    /// # Errors
    /// `InvalidArgument` for an empty name or no password; storage errors.
    pub fn put_user(&self, mut user: User) -> Result<()> {
        if user.name.is_empty() {
            return Err(CoreError::InvalidArgument(
                "user name must not be empty".into(),
            ));
        }
        user.seal()?;
        self.shared.verified.forget(&user.name);
        self.shared
            .users
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(user.name.clone(), user);
        self.shared.persist_definitions()
    }

    pub fn delete_user(&self, name: &str) -> Result<()> {
        let removed = self
            .shared
            .users
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        if removed.is_none() {
            return Err(CoreError::NotFound(format!("no user '{name}'")));
        }
        self.shared.verified.forget(name);
        self.shared
            .permissions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(u, _), _| u != name);
        self.shared
            .topic_permissions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove_user(name);
        self.shared.persist_definitions()
    }

    pub fn users(&self) -> Vec<User> {
        let mut v: Vec<User> = self
            .shared
            .users
            .read()
            .map(|u| u.values().cloned().collect())
            .unwrap_or_default();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Checks a user's password against its argon2 hash (a pair verified in the last
    /// minutes is trusted without argon2), and that a loopback-only user (`guest`)
    /// connects from loopback. `peer` is the client's address (`None`: in-process).
    ///
    /// # Errors
    /// `AccessRefused` with RabbitMQ's wording, whether the user or the password is wrong;
    /// `AccessRefused` naming the rule for a loopback-only user from elsewhere.
    pub fn authenticate(&self, name: &str, password: &str, peer: Option<IpAddr>) -> Result<User> {
        let user = self
            .shared
            .users
            .read()
            .ok()
            .and_then(|u| u.get(name).cloned());
        let ok = match &user {
            Some(_) if self.shared.verified.hit(name, password) => true,
            Some(u) => {
                let ok = auth::verify_password(&u.password_hash, password);
                if ok {
                    self.shared.verified.insert(name, password);
                }
                ok
            }
            None => {
                // Same work as a wrong password, so unknown users are not told apart by time.
                let _ = auth::verify_password(unknown_user_hash(), password);
                false
            }
        };
        match user {
            Some(u) if ok => {
                self.check_loopback(&u.name, peer)?;
                Ok(u)
            }
            _ => Err(CoreError::AccessRefused(
                "Login was refused using authentication mechanism PLAIN. For details see the broker logfile."
                    .into(),
            )),
        }
    }

    /// Logs in a user whose identity the transport verified (a TLS client certificate's common
    /// name: AMQP `EXTERNAL`, MQTT without a user name, Kafka's SSL principal, HTTPS without
    /// credentials): no password, but the user must exist and the loopback rule applies.
    ///
    /// # Errors
    /// `AccessRefused` for an unknown user or a loopback-only user from elsewhere.
    pub fn authenticate_external(&self, name: &str, peer: Option<IpAddr>) -> Result<User> {
        let user = self
            .shared
            .users
            .read()
            .ok()
            .and_then(|u| u.get(name).cloned());
        match user {
            Some(u) => {
                self.check_loopback(&u.name, peer)?;
                Ok(u)
            }
            None => Err(CoreError::AccessRefused(format!(
                "Login was refused using authentication mechanism EXTERNAL: no user '{name}' (the client certificate's common name)"
            ))),
        }
    }

    /// Refuses a loopback-only user (`loopback_users`, `guest` by default) connecting from
    /// elsewhere; adapters that authenticate by other means (SASL SCRAM) call it too.
    ///
    /// # Errors
    /// `AccessRefused` saying why.
    pub fn check_loopback(&self, user: &str, peer: Option<IpAddr>) -> Result<()> {
        let remote = peer.is_some_and(|ip| !ip.is_loopback() && !is_mapped_loopback(ip));
        if remote && self.shared.config.loopback_users.iter().any(|u| u == user) {
            return Err(CoreError::AccessRefused(format!(
                "user '{user}' can only connect via localhost"
            )));
        }
        Ok(())
    }

    /// Sets a user's permissions on a vhost.
    pub fn set_permission(&self, p: Permission) -> Result<()> {
        if self.vhost(&p.vhost).is_none() {
            return Err(CoreError::NotFound(format!("no vhost '{}'", p.vhost)));
        }
        self.shared
            .permissions
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert((p.user.clone(), p.vhost.clone()), p);
        self.shared.persist_definitions()
    }

    /// Removes a user's permissions on a vhost.
    ///
    /// # Errors
    /// `NotFound` if there were none.
    pub fn delete_permission(&self, user: &str, vhost: &str) -> Result<()> {
        let removed = self
            .shared
            .permissions
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(user.to_string(), vhost.to_string()));
        if removed.is_none() {
            return Err(CoreError::NotFound(format!(
                "no permissions for user '{user}' on vhost '{vhost}'"
            )));
        }
        self.shared.persist_definitions()
    }

    /// A user by name.
    pub fn user(&self, name: &str) -> Option<User> {
        self.shared.users.read().ok()?.get(name).cloned()
    }

    pub fn permission(&self, user: &str, vhost: &str) -> Option<Permission> {
        self.shared
            .permissions
            .read()
            .ok()?
            .get(&(user.to_string(), vhost.to_string()))
            .cloned()
    }

    pub fn permissions(&self) -> Vec<Permission> {
        self.shared.definitions().permissions
    }

    /// The vhost, if the user has any permission on it.
    ///
    /// # Errors
    /// `NotFound` (no such vhost) or `AccessRefused`.
    pub fn open_vhost(&self, user: &str, vhost: &str) -> Result<Arc<VHost>> {
        let vh = self
            .vhost(vhost)
            .ok_or_else(|| CoreError::NotFound(format!("vhost {vhost} not found")))?;
        if self.permission(user, vhost).is_none() {
            return Err(CoreError::AccessRefused(format!(
                "access to vhost '{vhost}' refused for user '{user}'"
            )));
        }
        Ok(vh)
    }

    /// Checks that `user` may `access` the resource `name` (a queue, stream, exchange, or an
    /// adapter's own resource kind such as a Kafka consumer group) in `vhost`: RabbitMQ's
    /// model, the permission's configure / write / read regular expression must match the
    /// name anywhere (an empty pattern matches nothing). The default exchange is checked as
    /// `amq.default`, as RabbitMQ does.
    ///
    /// # Errors
    /// `AccessRefused` with RabbitMQ's wording ("access to queue 'q' in vhost '/' refused
    /// for user 'u'"), also for a user without any permission on the vhost.
    pub fn authorize(
        &self,
        user: &str,
        vhost: &str,
        access: Access,
        kind: &str,
        name: &str,
    ) -> Result<()> {
        let name = if kind == "exchange" && name.is_empty() {
            "amq.default"
        } else {
            name
        };
        let refused = || {
            CoreError::AccessRefused(format!(
                "{} access to {kind} '{name}' in vhost '{vhost}' refused for user '{user}'",
                access.as_str()
            ))
        };
        let Some(p) = self.permission(user, vhost) else {
            return Err(refused());
        };
        let pattern = match access {
            Access::Configure => &p.configure,
            Access::Write => &p.write,
            Access::Read => &p.read,
        };
        if pattern.is_empty() {
            return Err(refused());
        }
        if pattern == ".*" {
            return Ok(());
        }
        if self.shared.compiled(pattern)?.is_match(name) {
            Ok(())
        } else {
            Err(refused())
        }
    }

    // ------------------------------------------------------------- topic permissions

    /// Sets a user's topic permission on an exchange of a vhost (replacing the one there).
    ///
    /// # Errors
    /// `NotFound` (vhost), `InvalidArgument` (no exchange, or a pattern that does not
    /// compile); storage errors.
    pub fn set_topic_permission(&self, p: TopicPermission) -> Result<()> {
        if self.vhost(&p.vhost).is_none() {
            return Err(CoreError::NotFound(format!("no vhost '{}'", p.vhost)));
        }
        p.validate()?;
        self.shared
            .topic_permissions
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .put(p);
        self.shared.persist_definitions()
    }

    /// Removes a user's topic permissions on a vhost: one exchange's, or all of them
    /// (`rabbitmqctl clear_topic_permissions`).
    ///
    /// # Errors
    /// `NotFound` if there were none; storage errors.
    pub fn delete_topic_permissions(
        &self,
        user: &str,
        vhost: &str,
        exchange: Option<&str>,
    ) -> Result<()> {
        let n = self
            .shared
            .topic_permissions
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(user, vhost, exchange);
        if n == 0 {
            return Err(CoreError::NotFound(match exchange {
                Some(x) => format!(
                    "no topic permission for user '{user}' on exchange '{x}' in vhost '{vhost}'"
                ),
                None => format!("no topic permissions for user '{user}' on vhost '{vhost}'"),
            }));
        }
        self.shared.persist_definitions()
    }

    /// Every topic permission, ordered by user, vhost and exchange.
    pub fn topic_permissions(&self) -> Vec<TopicPermission> {
        self.shared
            .topic_permissions
            .read()
            .map(|t| t.all())
            .unwrap_or_default()
    }

    /// The check a publish (`Write`, routing key) or a binding (`Read`, binding key) on
    /// `exchange` needs, or `None` when none applies: the exchange is not of type topic (or
    /// does not exist), or the user has no topic permission for it (RabbitMQ: unrestricted).
    /// `client_id` expands `{client_id}` (MQTT). Adapters may keep the check for a while
    /// (an AMQP channel, an MQTT read turn): it holds the compiled pattern.
    ///
    /// # Errors
    /// `AccessRefused` if the stored pattern no longer compiles once expanded.
    pub fn topic_check(
        &self,
        user: &str,
        vhost: &str,
        access: Access,
        exchange: &str,
        client_id: Option<&str>,
    ) -> Result<Option<TopicCheck>> {
        let pattern = {
            let ts = self
                .shared
                .topic_permissions
                .read()
                .unwrap_or_else(|e| e.into_inner());
            match ts.get(user, vhost, exchange) {
                Some(p) => expand(p.pattern(access), user, vhost, client_id).into_owned(),
                None => return Ok(None),
            }
        };
        let topic = self
            .vhost(vhost)
            .and_then(|vh| vh.exchange(exchange))
            .is_some_and(|x| x.decl.kind == ExchangeKind::Topic);
        if !topic {
            return Ok(None);
        }
        let re = self.shared.compiled(&pattern).map_err(|e| {
            tracing::warn!(%user, %vhost, %exchange, error = %e, "topic permission pattern does not compile; refusing");
            CoreError::AccessRefused(format!(
                "{} access to exchange '{exchange}' in vhost '{vhost}' refused for user '{user}': invalid topic permission",
                access.as_str()
            ))
        })?;
        Ok(Some(TopicCheck::new(re, access, user, vhost, exchange)))
    }

    /// `topic_check` and its check of `routing_key` in one call.
    ///
    /// # Errors
    /// `AccessRefused` with RabbitMQ's wording ("write access to topic 'k' in exchange 'x'
    /// in vhost '/' refused for user 'u'").
    pub fn authorize_topic(
        &self,
        user: &str,
        vhost: &str,
        access: Access,
        exchange: &str,
        routing_key: &str,
        client_id: Option<&str>,
    ) -> Result<()> {
        match self.topic_check(user, vhost, access, exchange, client_id)? {
            Some(c) => c.check(routing_key),
            None => Ok(()),
        }
    }

    // ------------------------------------------------------------- definitions

    /// The current durable definitions (export).
    pub fn export_definitions(&self) -> Definitions {
        self.shared.definitions()
    }

    /// Adds everything in `d` (import): vhosts, users, permissions, exchanges,
    /// queues and bindings; existing equivalent entities are kept.
    ///
    /// # Errors
    /// The first entity that cannot be declared (e.g. inequivalent to an existing one).
    pub fn import_definitions(&self, d: Definitions) -> Result<()> {
        for v in &d.vhosts {
            self.add_vhost(&v.name)?.set_limits(v.limits.clone())?;
        }
        for u in d.users {
            self.put_user(u)?;
        }
        for p in d.permissions {
            self.set_permission(p)?;
        }
        for p in d.topic_permissions {
            self.set_topic_permission(p)?;
        }
        for p in d.policies {
            self.put_policy(p)?;
        }
        let vh = |name: &str| {
            self.vhost(name)
                .ok_or_else(|| CoreError::NotFound(format!("no vhost '{name}'")))
        };
        for x in d.exchanges {
            vh(&x.vhost)?.declare_exchange(x.decl, false)?;
        }
        for q in d.queues {
            vh(&q.vhost)?.declare_queue(q.decl, 0, false)?;
        }
        for b in d.bindings {
            vh(&b.vhost)?.bind(b.binding, 0)?;
        }
        Ok(())
    }

    // ------------------------------------------------------------- policies

    /// Every policy, ordered by vhost and name.
    pub fn policies(&self) -> Vec<Policy> {
        self.shared
            .policies
            .read()
            .map(|p| p.all())
            .unwrap_or_default()
    }

    pub fn policy(&self, vhost: &str, name: &str) -> Option<Policy> {
        self.shared.policies.read().ok()?.get(vhost, name)
    }

    /// Creates or replaces a policy, persists it, and applies it to the vhost's existing
    /// queues, streams and exchanges.
    ///
    /// # Errors
    /// `NotFound` (vhost), `InvalidArgument` (pattern, key or value), `LimitReached`.
    pub fn put_policy(&self, p: Policy) -> Result<()> {
        let vh = self
            .vhost(&p.vhost)
            .ok_or_else(|| CoreError::NotFound(format!("no vhost '{}'", p.vhost)))?;
        let c = Compiled::new(p)?;
        self.shared
            .policies
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .put(c)?;
        self.shared.persist_definitions()?;
        self.apply_policies(&vh);
        Ok(())
    }

    /// Deletes a policy; the entities it applied to fall back to the next matching
    /// policy or their own arguments.
    ///
    /// # Errors
    /// `NotFound` if there is no such policy.
    pub fn delete_policy(&self, vhost: &str, name: &str) -> Result<()> {
        let removed = self
            .shared
            .policies
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(vhost, name);
        if !removed {
            return Err(CoreError::NotFound(format!(
                "no policy '{name}' in vhost '{vhost}'"
            )));
        }
        self.shared.persist_definitions()?;
        if let Some(vh) = self.vhost(vhost) {
            self.apply_policies(&vh);
        }
        Ok(())
    }

    /// The policy applied to a queue or stream and the part of its definition in effect.
    pub fn queue_policy(&self, vhost: &str, q: &QueueRef) -> AppliedPolicy {
        let kind = policy::kind_of(q);
        policy::applied(
            self.shared.policy_for(vhost, q.name(), kind),
            &q.decl().arguments,
            kind,
        )
    }

    /// The policy applied to an exchange and the part of its definition in effect.
    pub fn exchange_policy(&self, vhost: &str, x: &crate::exchange::Exchange) -> AppliedPolicy {
        policy::applied(
            self.shared.policy_for(vhost, x.name(), Kind::Exchange),
            &x.decl.arguments,
            Kind::Exchange,
        )
    }

    /// Recomputes the arguments of every queue, stream and exchange of a vhost.
    fn apply_policies(&self, vh: &VHost) {
        let now = now_ms();
        for q in vh.queues() {
            policy::reapply(&self.shared, &vh.name, &q, now);
        }
        for x in vh.exchanges() {
            let p = self.shared.policy_for(&vh.name, x.name(), Kind::Exchange);
            policy::apply_to_exchange(&x, p.as_deref());
        }
    }

    // ------------------------------------------------------------- connections

    /// Admits a new connection of `protocol` from `source` against the global and
    /// per-source connection limits. Hold the permit for the connection's life and call
    /// [`ConnectionPermit::authenticated`](crate::ConnectionPermit::authenticated) after
    /// login.
    ///
    /// # Errors
    /// [`LimitExceeded`](crate::LimitExceeded) naming the limit (the refusal is counted).
    pub fn admit(
        &self,
        protocol: &'static str,
        source: std::net::IpAddr,
    ) -> std::result::Result<crate::ConnectionPermit, crate::LimitExceeded> {
        self.shared.admission.admit(protocol, source)
    }

    /// Connection counts and refusal counters (for metrics and limits enforced by adapters).
    pub fn admission(&self) -> &Arc<crate::Admission> {
        &self.shared.admission
    }

    /// Registers a client connection (after authentication).
    ///
    /// # Errors
    /// `LimitReached` when the vhost's connection limit is reached.
    pub fn register_connection(&self, info: ConnectionInfo) -> Result<Arc<ConnectionHandle>> {
        let mut cs = self
            .shared
            .connections
            .write()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(max) = self
            .vhost(&info.vhost)
            .and_then(|v| v.limits().max_connections)
        {
            let n = cs.values().filter(|c| c.info.vhost == info.vhost).count() as u64;
            if n >= max {
                return Err(CoreError::LimitReached(format!(
                    "connection limit ({max}) of vhost '{}' is reached",
                    info.vhost
                )));
            }
        }
        let id = self.shared.next_consumer_id();
        let (close, _) = watch::channel(None);
        let h = Arc::new(ConnectionHandle {
            id,
            info,
            connected_at_ms: now_ms(),
            stats: ConnectionStats::default(),
            close,
            channels: Mutex::new(std::collections::BTreeMap::new()),
        });
        cs.insert(id, h.clone());
        Ok(h)
    }

    /// Forgets a closed connection and deletes its exclusive queues.
    pub fn unregister_connection(&self, id: ConnectionId) {
        let h = self
            .shared
            .connections
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        if let Some(vh) = h.and_then(|h| self.vhost(&h.info.vhost)) {
            vh.connection_closed(id);
        }
    }

    pub fn connections(&self) -> Vec<Arc<ConnectionHandle>> {
        let mut v: Vec<_> = self
            .shared
            .connections
            .read()
            .map(|c| c.values().cloned().collect())
            .unwrap_or_default();
        v.sort_by_key(|c| c.id);
        v
    }

    /// The consumers of a vhost's queues and streams (every vhost with `None`), each with
    /// its vhost, ordered by vhost, queue and tag.
    pub fn consumers(&self, vhost: Option<&str>) -> Vec<(String, ConsumerInfo)> {
        let mut out = Vec::new();
        for vh in self.vhosts() {
            if vhost.is_some_and(|v| v != vh.name) {
                continue;
            }
            for q in vh.queues() {
                let cs = match &q {
                    QueueRef::Classic(c) => c.consumer_infos(),
                    QueueRef::Stream(s) => s.consumer_infos(),
                };
                out.extend(cs.into_iter().map(|c| (vh.name.clone(), c)));
            }
        }
        out.sort_by(|a, b| (&a.0, &a.1.queue, &a.1.tag).cmp(&(&b.0, &b.1.queue, &b.1.tag)));
        out
    }

    /// Asks a connection's adapter to close it.
    pub fn close_connection(&self, id: ConnectionId, reason: &str) -> Result<()> {
        let cs = self
            .shared
            .connections
            .read()
            .unwrap_or_else(|p| p.into_inner());
        let h = cs
            .get(&id)
            .ok_or_else(|| CoreError::NotFound(format!("no connection {id}")))?;
        h.close.send_replace(Some(reason.to_string()));
        Ok(())
    }

    // ------------------------------------------------------------- shutdown

    /// Stops background tasks and stream consumers, fsyncs every log and writes
    /// the definitions. Idempotent.
    ///
    /// # Errors
    /// Storage errors while syncing.
    pub async fn shutdown(&self) -> Result<()> {
        self.stop.send_replace(true);
        let tasks: Vec<_> =
            std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for t in tasks {
            let _ = t.await;
        }
        for vh in self.vhosts() {
            for t in vh.stop() {
                let _ = t.await;
            }
        }
        self.shared.persist_definitions()?;
        self.shared.storage.sync_all()?;
        tracing::info!("broker stopped; all data synced");
        Ok(())
    }
}

/// A hash no password matches, checked for unknown users (computed once).
fn unknown_user_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| auth::hash_password("\0unknown user\0").unwrap_or_default())
}

/// An IPv4-mapped IPv6 loopback address (`::ffff:127.0.0.1`).
fn is_mapped_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
        IpAddr::V4(_) => false,
    }
}
