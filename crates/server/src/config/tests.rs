//! Unit tests for configuration defaults, layering, precedence and validation errors.

use std::io::Write;

use super::layers::{env_name, leaf_paths};
use super::*;

fn load_with(
    file: Option<&str>,
    env: &[(&str, &str)],
    sets: &[&str],
) -> Result<Config, ConfigError> {
    let tmp = tempfile::NamedTempFile::new().unwrap();
    let file = file.map(|text| {
        tmp.as_file().write_all(text.as_bytes()).unwrap();
        tmp.path().to_path_buf()
    });
    Config::load(&Sources {
        file,
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        overrides: sets.iter().map(|s| parse_set(s).unwrap()).collect(),
    })
}

fn err(file: Option<&str>, env: &[(&str, &str)], sets: &[&str]) -> String {
    match load_with(file, env, sets) {
        Ok(c) => panic!("expected an error, got {c:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn defaults_are_valid_and_documented_values() {
    let c = load_with(None, &[], &[]).unwrap();
    assert_eq!(c, Config::defaults());
    assert_eq!(c.data_dir, PathBuf::from("./ferrymq-data"));
    assert_eq!(c.log.level, "info");
    assert_eq!(c.log.format, LogFormat::Text);
    assert_eq!(c.storage.durability, DurabilityTier::T2);
    assert_eq!(c.storage.segment_bytes, 64 << 20);
    assert_eq!(c.storage.index_interval_bytes, 4096);
    assert_eq!(c.limits.disk_free_limit_bytes, 50_000_000);
    assert_eq!(c.limits.message_size_max_bytes, 128 << 20);
    assert_eq!(
        c.limits.memory_high_watermark_bytes,
        default_memory_high_watermark_bytes()
    );
    assert_eq!(
        (
            c.users.default_user.as_str(),
            c.users.default_password.as_str(),
            c.users.default_vhost.as_str()
        ),
        ("guest", "guest", "/")
    );
    assert_eq!(c.shutdown.timeout_ms, 10_000);
}

#[test]
fn memory_watermark_is_40_percent_of_meminfo() {
    let meminfo = "MemTotal:       16318412 kB\nMemFree:         1000 kB\n";
    assert_eq!(parse_meminfo_total(meminfo), Some(16_318_412 * 1024));
    assert_eq!(parse_meminfo_total("nothing"), None);
    assert_eq!(parse_meminfo_total("MemTotal: x kB"), None);
    let w = default_memory_high_watermark_bytes();
    assert!(w >= bounds::MEMORY_HIGH_WATERMARK_BYTES_MIN);
    if let Some(total) = physical_memory_bytes() {
        assert!(w <= total / 10 * 4 || w == bounds::MEMORY_HIGH_WATERMARK_BYTES_MIN);
    }
}

#[test]
fn file_overrides_defaults() {
    let c = load_with(
        Some(
            r#"
data_dir = "/var/lib/ferrymq"
[storage]
durability = "interval"
fsync_interval_ms = 50
[limits]
memory_high_watermark_bytes = 1073741824
"#,
        ),
        &[],
        &[],
    )
    .unwrap();
    assert_eq!(c.data_dir, PathBuf::from("/var/lib/ferrymq"));
    assert_eq!(c.storage.durability, DurabilityTier::Interval);
    assert_eq!(c.storage.fsync_interval_ms, 50);
    assert_eq!(
        c.storage.segment_bytes,
        64 << 20,
        "untouched keys keep defaults"
    );
    assert_eq!(c.limits.memory_high_watermark_bytes, 1 << 30);
}

#[test]
fn precedence_is_file_then_env_then_flags() {
    let file = "[log]\nlevel = \"warn\"\nformat = \"json\"\n[storage]\nsegment_bytes = 2097152\n";
    let env = [
        ("FERRYMQ_LOG_LEVEL", "debug"),
        ("FERRYMQ_STORAGE_SEGMENT_BYTES", "4_194_304"),
    ];
    let c = load_with(Some(file), &env, &["log.level=error"]).unwrap();
    assert_eq!(c.log.level, "error", "flag beats env beats file");
    assert_eq!(c.storage.segment_bytes, 4 << 20, "env beats file");
    assert_eq!(c.log.format, LogFormat::Json, "file beats default");
    // Later flags win over earlier ones.
    let c = load_with(None, &[], &["log.level=warn", "log.level=trace"]).unwrap();
    assert_eq!(c.log.level, "trace");
}

#[test]
fn every_env_var_name_is_unique_and_settable() {
    let defaults = Config::defaults();
    let toml::Value::Table(t) = toml::Value::try_from(&defaults).unwrap() else {
        panic!("not a table")
    };
    let leaves = leaf_paths(&t);
    assert_eq!(leaves.len(), 81, "update docs/configuration.md: {leaves:?}");
    let mut names: Vec<_> = leaves.iter().map(|l| env_name(l)).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), leaves.len());
    assert!(names.contains(&"FERRYMQ_DATA_DIR".to_string()));
    assert!(names.contains(&"FERRYMQ_STORAGE_SEGMENT_BYTES".to_string()));
    for r in RESERVED_ENV {
        assert!(!names.contains(&r.to_string()));
    }
}

#[test]
fn env_values_are_parsed_as_the_leaf_type() {
    let c = load_with(
        None,
        &[
            ("FERRYMQ_DATA_DIR", "/tmp/x y"),
            ("FERRYMQ_USERS_DEFAULT_PASSWORD", "1234"),
            ("FERRYMQ_SHUTDOWN_TIMEOUT_MS", "0"),
            ("FERRYMQ_CONFIG", "ignored: reserved for --config"),
            ("OTHER_VAR", "ignored"),
        ],
        &[],
    )
    .unwrap();
    assert_eq!(c.data_dir, PathBuf::from("/tmp/x y"));
    assert_eq!(
        c.users.default_password, "1234",
        "strings are taken verbatim"
    );
    assert_eq!(c.shutdown.timeout_ms, 0);
    let e = err(None, &[("FERRYMQ_STORAGE_SEGMENT_BYTES", "64MiB")], &[]);
    assert_eq!(
        e,
        "storage.segment_bytes: expected an integer, got \"64MiB\" (set by FERRYMQ_STORAGE_SEGMENT_BYTES)"
    );
    let e = err(None, &[("FERRYMQ_STORAGE_SEGMENT_BYTES", "1\nx = 2")], &[]);
    assert!(
        e.starts_with("storage.segment_bytes: expected an integer"),
        "{e}"
    );
}

#[test]
fn unknown_env_var_is_an_error() {
    let e = err(None, &[("FERRYMQ_STORAGE_SEGMENTBYTES", "1")], &[]);
    assert!(
        e.starts_with("FERRYMQ_STORAGE_SEGMENTBYTES: environment variable does not match any configuration key"),
        "{e}"
    );
    assert!(e.contains("FERRYMQ_STORAGE_SEGMENT_BYTES"), "{e}");
}

#[test]
fn validation_errors_name_their_key() {
    let cases: &[(&str, &str)] = &[
        ("data_dir=", "data_dir: must not be empty"),
        ("log.level=loud", "log.level: unknown level \"loud\""),
        (
            "log.format=xml",
            "log.format: unknown variant `xml`, expected `text` or `json`",
        ),
        (
            "storage.durability=t3",
            "storage.durability: unknown variant `t3`",
        ),
        (
            "storage.fsync_interval_ms=0",
            "storage.fsync_interval_ms: must be at least 1, got 0",
        ),
        (
            "storage.segment_bytes=12",
            "storage.segment_bytes: must be at least 1048576, got 12",
        ),
        (
            "storage.segment_bytes=2147483648",
            "storage.segment_bytes: must be at most 1073741824, got 2147483648",
        ),
        (
            "storage.index_interval_bytes=0",
            "storage.index_interval_bytes: must be at least 1",
        ),
        (
            "storage.index_interval_bytes=5000000000",
            "storage.index_interval_bytes: invalid value: integer `5000000000`, expected u32",
        ),
        (
            "storage.index_interval_bytes=2000000000",
            "storage.index_interval_bytes: must be at most 67108864",
        ),
        (
            "limits.memory_high_watermark_bytes=1000",
            "limits.memory_high_watermark_bytes: must be at least 16777216, got 1000",
        ),
        (
            "limits.disk_free_limit_bytes=-1",
            "limits.disk_free_limit_bytes: invalid value: integer `-1`, expected u64",
        ),
        (
            "limits.message_size_max_bytes=0",
            "limits.message_size_max_bytes: must be at least 1",
        ),
        (
            "limits.message_size_max_bytes=1073741824",
            "limits.message_size_max_bytes: must be at most 536870912",
        ),
        (
            "users.default_user=",
            "users.default_user: must not be empty",
        ),
        (
            "users.default_password=",
            "users.default_password: must not be empty",
        ),
        (
            "users.default_vhost=",
            "users.default_vhost: must not be empty",
        ),
        (
            "shutdown.timeout_ms=3600001",
            "shutdown.timeout_ms: must be at most 3600000",
        ),
    ];
    for (set, want) in cases {
        let e = err(None, &[], &[set]);
        assert!(e.starts_with(want), "--set {set}: got {e:?}, want {want:?}");
        assert!(e.ends_with("(set by --set)"), "{e}");
    }
    let long = format!("users.default_vhost={}", "v".repeat(256));
    assert!(err(None, &[], &[&long]).starts_with("users.default_vhost: must be at most 255 bytes"));
}

#[test]
fn file_errors_name_key_and_file() {
    let e = err(Some("[storage]\nsegment_bytes = 12\n"), &[], &[]);
    assert!(
        e.starts_with("storage.segment_bytes: must be at least 1048576, got 12 (set in "),
        "{e}"
    );
    let e = err(Some("[storage]\nsegment_bytes = \"big\"\n"), &[], &[]);
    assert!(
        e.starts_with("storage.segment_bytes: expected an integer, got string \"big\""),
        "{e}"
    );
    let e = err(Some("storage = 3\n"), &[], &[]);
    assert!(
        e.starts_with("storage: expected a table, got integer 3"),
        "{e}"
    );
    let e = err(Some("[log]\nformat = [\"json\"]\n"), &[], &[]);
    assert!(
        e.starts_with("log.format: expected a string, got an array"),
        "{e}"
    );
}

#[test]
fn unknown_keys_are_rejected() {
    let e = err(Some("[storage]\nsegment_size = 1\n"), &[], &[]);
    assert!(
        e.starts_with("storage.segment_size: unknown key (set in "),
        "{e}"
    );
    assert!(
        e.ends_with(
            "expected one of: direct_writes, durability, fsync_interval_ms, index_interval_bytes, segment_bytes"
        ),
        "{e}"
    );
    let e = err(Some("[nats]\nport = 4222\n"), &[], &[]);
    assert!(e.starts_with("nats: unknown key"), "{e}");
    let e = err(Some("[mqtt]\nprot = 1883\n"), &[], &[]);
    assert!(e.starts_with("mqtt.prot: unknown key"), "{e}");
    let e = err(Some("[amqp]\nprot = 5672\n"), &[], &[]);
    assert!(e.starts_with("amqp.prot: unknown key"), "{e}");
    let e = err(None, &[], &["storage.nope=1"]);
    assert!(
        e.starts_with("storage.nope: unknown key (set by --set)"),
        "{e}"
    );
    let e = err(None, &[], &["storage=1"]);
    assert!(
        e.starts_with("storage: is a section; set one of its keys: storage."),
        "{e}"
    );
}

#[test]
fn unreadable_or_malformed_file() {
    let e = Config::load(&Sources {
        file: Some("/nonexistent/ferrymq.toml".into()),
        ..Sources::default()
    })
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with("cannot read config file /nonexistent/ferrymq.toml: "),
        "{e}"
    );
    let e = err(Some("[storage\n"), &[], &[]);
    assert!(e.contains("TOML parse error at line 1"), "{e}");
}

#[test]
fn bad_set_syntax() {
    assert!(matches!(
        parse_set("log.level"),
        Err(ConfigError::BadSet { .. })
    ));
    assert!(matches!(parse_set("=x"), Err(ConfigError::BadSet { .. })));
    let o = parse_set("users.default_password=a=b").unwrap();
    assert_eq!(
        (o.key.as_str(), o.value.as_str()),
        ("users.default_password", "a=b")
    );
}

#[test]
fn shown_config_round_trips_through_a_file() {
    let c = load_with(
        None,
        &[("FERRYMQ_LOG_LEVEL", "info,ferrymq_core=debug")],
        &["storage.durability=interval", "data_dir=/srv/ferry \"q\""],
    )
    .unwrap();
    let text = c.to_toml().unwrap();
    let again = load_with(Some(&text), &[], &[]).unwrap();
    assert_eq!(again, c);
}

#[test]
fn maps_onto_the_broker_config() {
    let mut c = Config::defaults();
    c.storage.durability = DurabilityTier::Interval;
    c.storage.fsync_interval_ms = 250;
    c.users.default_vhost = "prod".into();
    let b = broker_config(&c);
    assert_eq!(b.data_dir, c.data_dir);
    assert!(matches!(
        b.storage.default_durability,
        ferrymq_storage::Durability::Interval(d) if d == std::time::Duration::from_millis(250)
    ));
    assert_eq!(b.storage.segment_bytes, c.storage.segment_bytes);
    assert_eq!(
        b.storage.index_interval_bytes,
        c.storage.index_interval_bytes
    );
    assert_eq!(
        b.memory_high_watermark_bytes,
        c.limits.memory_high_watermark_bytes
    );
    assert_eq!(b.disk_free_limit_bytes, c.limits.disk_free_limit_bytes);
    assert_eq!(b.message_size_max_bytes, c.limits.message_size_max_bytes);
    assert!(u64::from(b.storage.batch_bytes_max) > c.limits.message_size_max_bytes);
    c.limits.message_size_max_bytes = bounds::MESSAGE_SIZE_MAX_BYTES_MAX;
    let b = broker_config(&c);
    assert!(u64::from(b.storage.batch_bytes_max) > bounds::MESSAGE_SIZE_MAX_BYTES_MAX);
    assert_eq!(
        (
            b.default_user.as_str(),
            b.default_password.as_str(),
            b.default_vhost.as_str()
        ),
        ("guest", "guest", "prod")
    );
}

#[test]
fn amqp_section_is_validated() {
    let c = load_with(
        None,
        &[("FERRYMQ_AMQP_PORT", "0")],
        &["amqp.frame_max=8192"],
    )
    .unwrap();
    assert_eq!((c.amqp.port, c.amqp.frame_max), (0, 8192));
    let e = err(None, &[], &["amqp.bind=localhost"]);
    assert!(e.starts_with("amqp.bind: must be an IP address"), "{e}");
    let e = err(None, &[], &["amqp.frame_max=100"]);
    assert!(e.starts_with("amqp.frame_max:"), "{e}");
    let e = err(None, &[], &["amqp.channel_max=0"]);
    assert!(e.starts_with("amqp.channel_max:"), "{e}");
}

#[test]
fn mqtt_section_is_validated() {
    let c = load_with(
        None,
        &[
            ("FERRYMQ_MQTT_PORT", "0"),
            ("FERRYMQ_MQTT_ALLOW_ANONYMOUS", "false"),
        ],
        &["mqtt.max_packet_size=65536", "mqtt.vhost=/"],
    )
    .unwrap();
    assert_eq!((c.mqtt.port, c.mqtt.max_packet_size), (0, 65536));
    assert!(!c.mqtt.allow_anonymous);
    let m = c.mqtt_config();
    assert_eq!(
        (m.default_user.as_str(), m.max_packet_size),
        ("guest", 65536)
    );
    let e = err(None, &[], &["mqtt.bind=localhost"]);
    assert!(e.starts_with("mqtt.bind: must be an IP address"), "{e}");
    let e = err(None, &[], &["mqtt.max_packet_size=100"]);
    assert!(
        e.starts_with("mqtt.max_packet_size: must be at least 1024"),
        "{e}"
    );
    // bounded by the largest message (+ 64 KiB for topic and properties)
    let c = load_with(
        None,
        &[],
        &[
            "limits.message_size_max_bytes=1000",
            "mqtt.max_packet_size=1000000",
        ],
    )
    .unwrap();
    assert_eq!(c.mqtt_config().max_packet_size, 1000 + 65536);
    let e = err(None, &[], &["mqtt.max_packet_size=300000000"]);
    assert!(
        e.starts_with("mqtt.max_packet_size: must be at most"),
        "{e}"
    );
    let e = err(None, &[], &["mqtt.receive_maximum=0"]);
    assert!(e.starts_with("mqtt.receive_maximum:"), "{e}");
    let e = err(None, &[], &["mqtt.max_inflight=0"]);
    assert!(e.starts_with("mqtt.max_inflight:"), "{e}");
    let e = err(None, &[], &["mqtt.vhost="]);
    assert!(e.starts_with("mqtt.vhost:"), "{e}");
}

#[test]
fn kafka_advertises_each_listeners_port_or_the_configured_one() {
    let bound: std::net::SocketAddr = "0.0.0.0:19092".parse().unwrap();
    let c = load_with(None, &[], &[]).unwrap();
    let k = c.kafka_config(bound, Some(19093));
    assert_eq!(k.advertised_host, "127.0.0.1", "every interface: loopback");
    assert_eq!((k.advertised_port, k.advertised_tls_port), (19092, 19093));
    assert_eq!(
        c.kafka_config(bound, None).advertised_tls_port,
        0,
        "no SSL listener"
    );
    let env = [("FERRYMQ_KAFKA_ADVERTISED_TLS_PORT", "443")];
    let set = [
        "kafka.advertised_host=mq.example.com",
        "kafka.advertised_port=9092",
    ];
    let c = load_with(None, &env, &set).unwrap();
    let k = c.kafka_config(bound, Some(19093));
    assert_eq!(k.advertised_host, "mq.example.com");
    assert_eq!((k.advertised_port, k.advertised_tls_port), (9092, 443));
    assert_eq!(
        c.kafka_config(bound, None).advertised_tls_port,
        0,
        "ignored without the SSL listener"
    );
}
