//! Issue #3: `--help`, `--version`, `config show` and its precedence, and exit status 2 with the
//! key named for every kind of invalid configuration.

mod common;

use common::{ferrymq, run};

fn show(dir: &std::path::Path, setup: impl FnOnce(&mut std::process::Command)) -> toml::Table {
    let mut cmd = ferrymq(dir);
    cmd.args(["config", "show"]);
    setup(&mut cmd);
    let out = run(&mut cmd);
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    out.stdout.parse().expect("config show prints TOML")
}

fn get<'a>(t: &'a toml::Table, path: &str) -> &'a toml::Value {
    let mut parts = path.split('.');
    let mut v = &t[parts.next().unwrap()];
    for p in parts {
        v = &v[p];
    }
    v
}

#[test]
fn config_show_prints_defaults() {
    let tmp = tempfile::tempdir().unwrap();
    let t = show(tmp.path(), |_| {});
    assert_eq!(get(&t, "data_dir").as_str(), Some("./ferrymq-data"));
    assert_eq!(get(&t, "log.level").as_str(), Some("info"));
    assert_eq!(get(&t, "log.format").as_str(), Some("text"));
    assert_eq!(get(&t, "storage.durability").as_str(), Some("t2"));
    assert_eq!(
        get(&t, "storage.segment_bytes").as_integer(),
        Some(64 << 20)
    );
    assert_eq!(get(&t, "users.default_vhost").as_str(), Some("/"));
    assert_eq!(get(&t, "shutdown.timeout_ms").as_integer(), Some(10_000));
    assert!(get(&t, "limits.memory_high_watermark_bytes").as_integer() > Some(0));
    assert!(
        !tmp.path().join("ferrymq-data").exists(),
        "config show creates nothing"
    );
}

#[test]
fn config_show_redacts_the_default_password_unless_asked() {
    let tmp = tempfile::tempdir().unwrap();
    let set = |cmd: &mut std::process::Command| {
        cmd.args(["--set", "users.default_password=s3cret-pw"]);
    };
    let t = show(tmp.path(), set);
    assert_eq!(
        get(&t, "users.default_password").as_str(),
        Some("<redacted>")
    );
    assert_eq!(get(&t, "users.default_user").as_str(), Some("guest"));
    let t = show(tmp.path(), |cmd| {
        set(cmd);
        cmd.arg("--reveal-secrets");
    });
    assert_eq!(
        get(&t, "users.default_password").as_str(),
        Some("s3cret-pw")
    );
}

#[test]
fn config_show_follows_file_then_env_then_flags() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("ferrymq.toml"),
        "data_dir = \"from-file\"\n\
         [log]\nlevel = \"warn\"\nformat = \"json\"\n\
         [storage]\ndurability = \"t1\"\nsegment_bytes = 2097152\n",
    )
    .unwrap();
    let t = show(tmp.path(), |cmd| {
        cmd.args(["--config", "ferrymq.toml", "--log-level", "error"])
            .args(["--set", "storage.index_interval_bytes=8192"])
            .env("FERRYMQ_LOG_LEVEL", "debug")
            .env("FERRYMQ_STORAGE_SEGMENT_BYTES", "4194304")
            .env("FERRYMQ_DATA_DIR", "from-env");
    });
    assert_eq!(
        get(&t, "log.level").as_str(),
        Some("error"),
        "flag > env > file"
    );
    assert_eq!(get(&t, "data_dir").as_str(), Some("from-env"), "env > file");
    assert_eq!(
        get(&t, "storage.segment_bytes").as_integer(),
        Some(4 << 20),
        "env > file"
    );
    assert_eq!(
        get(&t, "log.format").as_str(),
        Some("json"),
        "file > default"
    );
    assert_eq!(
        get(&t, "storage.durability").as_str(),
        Some("t1"),
        "file > default"
    );
    assert_eq!(
        get(&t, "storage.index_interval_bytes").as_integer(),
        Some(8192)
    );

    // FERRYMQ_CONFIG names the file too, and the output loads back unchanged.
    let t2 = show(tmp.path(), |cmd| {
        cmd.env("FERRYMQ_CONFIG", "ferrymq.toml");
    });
    assert_eq!(get(&t2, "data_dir").as_str(), Some("from-file"));
    std::fs::write(tmp.path().join("shown.toml"), toml::to_string(&t2).unwrap()).unwrap();
    let t3 = show(tmp.path(), |cmd| {
        cmd.args(["--config", "shown.toml"]);
    });
    assert_eq!(t2, t3);
}

/// Runs `config show` and `serve` with a bad setup; both exit 2 naming `want`.
fn rejects(setup: impl Fn(&mut std::process::Command), want: &str) {
    for sub in [&["config", "show"][..], &["serve"][..]] {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("bad.toml"), "[storage]\nsegment_size = 1\n").unwrap();
        std::fs::write(
            tmp.path().join("typed.toml"),
            "[shutdown]\ntimeout_ms = \"10s\"\n",
        )
        .unwrap();
        let mut cmd = ferrymq(tmp.path());
        cmd.args(sub);
        setup(&mut cmd);
        let out = run(&mut cmd);
        assert_eq!(out.status.code(), Some(2), "{sub:?}: {}", out.stderr);
        assert!(
            out.stderr.contains(want),
            "{sub:?}: want {want:?} in {}",
            out.stderr
        );
        assert!(out.stdout.is_empty());
        assert!(!tmp.path().join("ferrymq-data").exists());
    }
}

#[test]
fn unknown_key_in_file_exits_2() {
    rejects(
        |c| {
            c.args(["--config", "bad.toml"]);
        },
        "invalid configuration: storage.segment_size: unknown key (set in bad.toml)",
    );
}

#[test]
fn wrong_type_in_file_exits_2() {
    rejects(
        |c| {
            c.args(["--config", "typed.toml"]);
        },
        "invalid configuration: shutdown.timeout_ms: expected an integer, got string \"10s\"",
    );
}

#[test]
fn bad_value_exits_2() {
    rejects(
        |c| {
            c.env("FERRYMQ_STORAGE_DURABILITY", "t9");
        },
        "invalid configuration: storage.durability: unknown variant `t9`",
    );
    rejects(
        |c| {
            c.args(["--log-level", "loud"]);
        },
        "invalid configuration: log.level: unknown level \"loud\"",
    );
}

#[test]
fn unreadable_file_exits_2() {
    rejects(
        |c| {
            c.args(["--config", "missing.toml"]);
        },
        "invalid configuration: cannot read config file missing.toml",
    );
}

#[test]
fn unknown_env_var_exits_2() {
    rejects(
        |c| {
            c.env("FERRYMQ_LOGLEVEL", "debug");
        },
        "invalid configuration: FERRYMQ_LOGLEVEL: environment variable does not match any configuration key",
    );
}

#[test]
fn bad_flag_value_exits_2() {
    rejects(
        |c| {
            c.args(["--log-format", "xml"]);
        },
        "invalid value 'xml' for '--log-format <FORMAT>'",
    );
    rejects(
        |c| {
            c.args(["--set", "nonsense"]);
        },
        "invalid configuration: --set \"nonsense\": expected KEY=VALUE",
    );
}

#[test]
fn version_and_help() {
    let tmp = tempfile::tempdir().unwrap();
    let out = run(ferrymq(tmp.path()).arg("--version"));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        out.stdout.trim(),
        format!("ferrymq {}", env!("CARGO_PKG_VERSION"))
    );

    let out = run(ferrymq(tmp.path()).arg("--help"));
    assert_eq!(out.status.code(), Some(0));
    for want in [
        "serve",
        "config",
        "--config",
        "--data-dir",
        "--log-level",
        "--log-format",
        "--set",
        "FERRYMQ_",
    ] {
        assert!(
            out.stdout.contains(want),
            "--help lacks {want}:\n{}",
            out.stdout
        );
    }
    let out = run(ferrymq(tmp.path()).args(["config", "--help"]));
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stdout.contains("show"), "{}", out.stdout);
    let out = run(ferrymq(tmp.path()).args(["serve", "--help"]));
    assert!(out.stdout.contains("SIGTERM"), "{}", out.stdout);

    // No subcommand: usage on stderr, status 2.
    let out = run(&mut ferrymq(tmp.path()));
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stderr.contains("serve"), "{}", out.stderr);
}
