//! Issue #5: the admin CLI (`ferrymq queues …`, `publish`, `consume`, `dlq redrive`,
//! `definitions`) against a running server, including refusals and an unreachable server.

mod common;

fn cli(dir: &std::path::Path, url: &str, args: &[&str]) -> common::Ran {
    let mut cmd = common::ferrymq(dir);
    cmd.env("FERRYMQ_URL", url).args(args);
    common::run(&mut cmd)
}

#[test]
fn admin_cli_against_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::serve(dir.path(), &dir.path().join("data"), &[]);
    let url = format!("http://{}", common::listening(&server, "http"));
    let d = dir.path();
    let ok = |args: &[&str]| {
        let r = cli(d, &url, args);
        assert!(r.status.success(), "{args:?}: {}{}", r.stdout, r.stderr);
        r.stdout
    };
    ok(&["queues", "declare", "dlq"]);
    ok(&[
        "queues",
        "declare",
        "jobs",
        "--arg",
        "x-dead-letter-exchange=",
        "--arg",
        "x-dead-letter-routing-key=dlq",
    ]);
    let list = ok(&["queues", "list"]);
    assert!(
        list.lines().next().unwrap().starts_with("vhost") && list.contains("jobs"),
        "{list}"
    );
    let json: serde_json::Value = serde_json::from_str(&ok(&["queues", "list", "--json"])).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 2);
    ok(&["exchanges", "declare", "ev", "--type", "topic"]);
    ok(&[
        "bindings",
        "declare",
        "--source",
        "ev",
        "--destination",
        "jobs",
        "--routing-key",
        "a.*",
    ]);
    assert!(ok(&["bindings", "list"]).contains("a.*"));
    assert!(ok(&[
        "publish",
        "--exchange",
        "ev",
        "--routing-key",
        "a.b",
        "--body",
        "one",
        "--header",
        "n=1"
    ])
    .contains("routed to 1"));
    ok(&["publish", "--queue", "jobs", "--body", "two"]);
    assert_eq!(
        ok(&["consume", "--queue", "jobs", "--count", "1"]).trim(),
        "one"
    );
    let peek = ok(&["consume", "--queue", "jobs", "--requeue", "--json"]);
    assert!(peek.contains("\"two\""), "{peek}");
    ok(&["queues", "purge", "jobs"]);
    assert!(ok(&["dlq", "redrive", "--queue", "dlq"]).contains("moved 0"));
    let defs = d.join("defs.json");
    ok(&["definitions", "export", "--file", defs.to_str().unwrap()]);
    assert!(std::fs::read_to_string(&defs).unwrap().contains("\"jobs\""));
    ok(&["definitions", "import", defs.to_str().unwrap()]);
    ok(&[
        "users",
        "declare",
        "ann",
        "--new-password",
        "pw",
        "--tags",
        "monitoring",
    ]);
    assert!(ok(&["users", "list"]).contains("monitoring"));
    ok(&["vhosts", "declare", "v2"]);
    assert!(ok(&["vhosts", "list"]).contains("v2"));
    ok(&["connections", "list"]);
    // Refusals exit 1 with the server's reason; bad credentials too.
    let r = cli(d, &url, &["queues", "delete", "nope"]);
    assert_eq!(r.status.code(), Some(1));
    assert!(r.stderr.contains("404 not_found"), "{}", r.stderr);
    let r = cli(d, &url, &["queues", "list", "--password", "bad"]);
    assert_eq!(r.status.code(), Some(1));
    assert!(r.stderr.contains("401"), "{}", r.stderr);
    // Unreachable: exit 3 and a hint.
    let r = cli(d, "http://127.0.0.1:1", &["queues", "list"]);
    assert_eq!(r.status.code(), Some(3));
    assert!(r.stderr.contains("cannot reach FerryMQ"), "{}", r.stderr);
    drop(server);
}

#[test]
fn policies_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::serve(dir.path(), &dir.path().join("data"), &[]);
    let url = format!("http://{}", common::listening(&server, "http"));
    let d = dir.path();
    let ok = |args: &[&str]| {
        let r = cli(d, &url, args);
        assert!(r.status.success(), "{args:?}: {}{}", r.stdout, r.stderr);
        r.stdout
    };
    ok(&["queues", "declare", "jobs"]);
    ok(&[
        "policies",
        "declare",
        "cap",
        "--pattern",
        "^jobs$",
        "--apply-to",
        "queues",
        "--priority",
        "2",
        "--definition",
        "max-length=1",
        "--definition",
        "overflow=reject-publish",
    ]);
    let list = ok(&["policies", "list"]);
    assert!(
        list.lines().next().unwrap().starts_with("vhost") && list.contains("cap"),
        "{list}"
    );
    let queues: serde_json::Value =
        serde_json::from_str(&ok(&["queues", "list", "--json"])).unwrap();
    assert_eq!(queues[0]["policy"], "cap");
    ok(&["publish", "--queue", "jobs", "--body", "one"]);
    let refused = cli(d, &url, &["publish", "--queue", "jobs", "--body", "two"]);
    assert_eq!(refused.status.code(), Some(1), "{}", refused.stderr);
    let bad = cli(
        d,
        &url,
        &[
            "policies",
            "declare",
            "bad",
            "--pattern",
            "(",
            "--definition",
            "max-length=1",
        ],
    );
    assert_eq!(bad.status.code(), Some(1));
    assert!(bad.stderr.contains("422"), "{}", bad.stderr);
    ok(&["policies", "delete", "cap"]);
    assert_eq!(
        cli(d, &url, &["policies", "delete", "cap"]).status.code(),
        Some(1)
    );
    ok(&["publish", "--queue", "jobs", "--body", "two"]);
    assert!(!ok(&["policies", "list"]).contains("cap"));
}
