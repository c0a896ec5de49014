//! The permissions of a Kafka connection's user, checked with the core's
//! `Broker::authorize` (RabbitMQ's configure / write / read model) and reported as Kafka's
//! authorized-operations bitfields.
//!
//! A topic is checked as kind `"queue"`: it is a core stream, and a stream is a queue to
//! RabbitMQ's permissions and to FerryMQ's AMQP and HTTP adapters, so one permission
//! covers a stream whichever protocol reaches it. A consumer group is kind `"group"`, its
//! name checked by the read pattern.

use std::sync::Arc;

use ferrymq_core::{Access, Broker};

use crate::Kafka;

/// The permission kind topics are checked under (see the module documentation).
pub const TOPIC_KIND: &str = "queue";
/// The permission kind consumer groups are checked under.
pub const GROUP_KIND: &str = "group";

// Kafka's `AclOperation` codes, as bits of the authorized-operations fields.
const READ: i32 = 1 << 3;
const WRITE: i32 = 1 << 4;
const CREATE: i32 = 1 << 5;
const DELETE: i32 = 1 << 6;
const ALTER: i32 = 1 << 7;
const DESCRIBE: i32 = 1 << 8;
const CLUSTER_ACTION: i32 = 1 << 9;
const DESCRIBE_CONFIGS: i32 = 1 << 10;
const ALTER_CONFIGS: i32 = 1 << 11;
const IDEMPOTENT_WRITE: i32 = 1 << 12;

/// Who a request acts as, and where.
#[derive(Clone)]
pub(crate) struct Authz {
    broker: Arc<Broker>,
    vhost: String,
    /// Empty before SASL completes: no permission matches it.
    user: String,
}

impl Authz {
    pub(crate) fn new(kafka: &Kafka, user: Option<String>) -> Authz {
        Authz {
            broker: kafka.broker.clone(),
            vhost: kafka.config.vhost.clone(),
            user: user.unwrap_or_default(),
        }
    }

    fn allows(&self, access: Access, kind: &str, name: &str) -> bool {
        match self
            .broker
            .authorize(&self.user, &self.vhost, access, kind, name)
        {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(user = %self.user, error = %e, "Kafka operation refused");
                false
            }
        }
    }

    /// `access` on topic `name`.
    pub(crate) fn topic(&self, access: Access, name: &str) -> bool {
        self.allows(access, TOPIC_KIND, name)
    }

    /// Any permission on topic `name` (Kafka's DESCRIBE: Metadata lists it).
    pub(crate) fn describe_topic(&self, name: &str) -> bool {
        [Access::Read, Access::Write, Access::Configure]
            .into_iter()
            .any(|a| self.topic(a, name))
    }

    /// Read on consumer group `name` (every group API).
    pub(crate) fn group(&self, name: &str) -> bool {
        self.allows(Access::Read, GROUP_KIND, name)
    }

    /// Metadata v8+'s `topic_authorized_operations` for `name`: READ and DESCRIBE_CONFIGS
    /// with read, WRITE with write, CREATE, DELETE, ALTER and ALTER_CONFIGS with
    /// configure, DESCRIBE with any of them.
    pub(crate) fn topic_operations(&self, name: &str) -> i32 {
        let mut ops = 0;
        if self.topic(Access::Read, name) {
            ops |= READ | DESCRIBE_CONFIGS;
        }
        if self.topic(Access::Write, name) {
            ops |= WRITE;
        }
        if self.topic(Access::Configure, name) {
            ops |= CREATE | DELETE | ALTER | ALTER_CONFIGS;
        }
        if ops != 0 {
            ops |= DESCRIBE;
        }
        ops
    }

    /// Metadata v8–10's `cluster_authorized_operations`: DESCRIBE and DESCRIBE_CONFIGS for
    /// anyone with a permission on the vhost; CREATE when the configure pattern may match
    /// some topic (each creation is checked by name), IDEMPOTENT_WRITE likewise for write;
    /// ALTER, ALTER_CONFIGS and CLUSTER_ACTION only with configure on everything (`.*`).
    pub(crate) fn cluster_operations(&self) -> i32 {
        let Some(p) = self.broker.permission(&self.user, &self.vhost) else {
            return 0;
        };
        let mut ops = DESCRIBE | DESCRIBE_CONFIGS;
        if !p.configure.is_empty() {
            ops |= CREATE;
        }
        if p.configure == ".*" {
            ops |= ALTER | ALTER_CONFIGS | CLUSTER_ACTION;
        }
        if !p.write.is_empty() {
            ops |= IDEMPOTENT_WRITE;
        }
        ops
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrymq_core::{BrokerConfig, Permission, User};

    #[tokio::test]
    async fn operations_follow_the_users_patterns() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = BrokerConfig {
            data_dir: dir.path().to_path_buf(),
            ..BrokerConfig::default()
        };
        cfg.storage.default_durability = ferrymq_storage::Durability::T1;
        let broker = Broker::open(cfg).await.unwrap();
        broker
            .put_user(User::with_password("app", "pw", vec![]))
            .unwrap();
        broker
            .set_permission(Permission {
                user: "app".into(),
                vhost: "/".into(),
                configure: "^own-".into(),
                write: "^(own-|in-)".into(),
                read: "^(own-|out-|g1$)".into(),
            })
            .unwrap();
        let kafka = Kafka::new(broker, crate::KafkaConfig::default());
        let app = Authz::new(&kafka, Some("app".into()));
        assert_eq!(
            app.topic_operations("out-t"),
            READ | DESCRIBE_CONFIGS | DESCRIBE
        );
        assert_eq!(app.topic_operations("in-t"), WRITE | DESCRIBE);
        assert_eq!(app.topic_operations("other"), 0);
        assert!(!app.describe_topic("other"));
        let all = READ | WRITE | CREATE | DELETE | ALTER | DESCRIBE | DESCRIBE_CONFIGS;
        assert_eq!(app.topic_operations("own-t"), all | ALTER_CONFIGS);
        assert_eq!(
            app.cluster_operations(),
            DESCRIBE | DESCRIBE_CONFIGS | CREATE | IDEMPOTENT_WRITE
        );
        assert!(app.group("g1") && !app.group("g2"));
        // guest has `.*` everywhere; no user (before SASL) has nothing.
        let guest = Authz::new(&kafka, Some("guest".into()));
        assert_eq!(
            guest.cluster_operations() & (ALTER | CLUSTER_ACTION),
            ALTER | CLUSTER_ACTION
        );
        let nobody = Authz::new(&kafka, None);
        assert_eq!(nobody.cluster_operations(), 0);
        assert!(!nobody.topic(Access::Read, "own-t"));
    }
}
