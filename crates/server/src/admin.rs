//! The admin CLI: `ferrymq queues|exchanges|bindings|streams|users|vhosts|connections …`,
//! `ferrymq channels|consumers list`, `ferrymq policies list|declare|delete`,
//! `ferrymq topic-permissions list|set|clear`,
//! `ferrymq publish`, `ferrymq consume`, `ferrymq dlq redrive`, `ferrymq definitions
//! export|import` — clients of a running server's HTTP management API (`--url`, default
//! http://127.0.0.1:15672; `--user`/`--password`, default guest/guest; env `FERRYMQ_URL`,
//! `FERRYMQ_USER`, `FERRYMQ_PASSWORD`). Tables by default, `--json` for scripts.
//!
//! Exit status: 0 success, 1 the server refused (its JSON reason is printed), 2 usage,
//! 3 the server is unreachable.

use std::io::Read;
use std::process::ExitCode;

use anyhow::Context;
use base64::Engine;
use clap::{Args, Subcommand};
use serde_json::{json, Value};

/// Exit status when the server cannot be reached.
const EXIT_UNREACHABLE: u8 = 3;

/// How to reach the server.
#[derive(Debug, Clone, Args)]
pub struct Conn {
    /// Management API base URL
    #[arg(
        long,
        global = true,
        env = "FERRYMQ_URL",
        default_value = "http://127.0.0.1:15672"
    )]
    pub url: String,
    /// User name
    #[arg(long, global = true, env = "FERRYMQ_USER", default_value = "guest")]
    pub user: String,
    /// Password
    #[arg(
        long,
        global = true,
        env = "FERRYMQ_PASSWORD",
        default_value = "guest",
        hide_env_values = true
    )]
    pub password: String,
    /// Print the server's JSON instead of a table
    #[arg(long, global = true)]
    pub json: bool,
    /// Virtual host
    #[arg(long, global = true, default_value = "/")]
    pub vhost: String,
}

/// Admin subcommands (clients of a running server).
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// List, declare, delete and purge queues
    Queues {
        #[command(subcommand)]
        cmd: EntityCmd,
        #[command(flatten)]
        conn: Conn,
    },
    /// List, declare and delete streams
    Streams {
        #[command(subcommand)]
        cmd: EntityCmd,
        #[command(flatten)]
        conn: Conn,
    },
    /// List, declare and delete exchanges
    Exchanges {
        #[command(subcommand)]
        cmd: EntityCmd,
        #[command(flatten)]
        conn: Conn,
    },
    /// List, declare and delete bindings
    Bindings {
        #[command(subcommand)]
        cmd: BindingCmd,
        #[command(flatten)]
        conn: Conn,
    },
    /// List, declare and delete users
    Users {
        #[command(subcommand)]
        cmd: EntityCmd,
        #[command(flatten)]
        conn: Conn,
    },
    /// List, declare and delete virtual hosts
    Vhosts {
        #[command(subcommand)]
        cmd: EntityCmd,
        #[command(flatten)]
        conn: Conn,
    },
    /// List and close (delete) client connections
    Connections {
        #[command(subcommand)]
        cmd: EntityCmd,
        #[command(flatten)]
        conn: Conn,
    },
    /// List channels (AMQP channels; one per WebSocket or event stream)
    Channels {
        #[command(subcommand)]
        cmd: ListCmd,
        #[command(flatten)]
        conn: Conn,
    },
    /// List consumers of queues and streams
    Consumers {
        #[command(subcommand)]
        cmd: ListCmd,
        #[command(flatten)]
        conn: Conn,
    },
    /// List, declare and delete policies
    Policies {
        #[command(subcommand)]
        cmd: PolicyCmd,
        #[command(flatten)]
        conn: Conn,
    },
    /// List, set and clear topic permissions (routing-key patterns per topic exchange)
    TopicPermissions {
        #[command(subcommand)]
        cmd: TopicPermCmd,
        #[command(flatten)]
        conn: Conn,
    },
    /// Publish one message (body from --body or stdin)
    Publish(PublishArgs),
    /// Receive messages from a queue (acked after printing)
    Consume(ConsumeArgs),
    /// Dead-letter queue operations
    Dlq {
        #[command(subcommand)]
        cmd: DlqCmd,
        #[command(flatten)]
        conn: Conn,
    },
    /// Export or import all definitions as one JSON document
    Definitions {
        #[command(subcommand)]
        cmd: DefsCmd,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Debug, Subcommand)]
pub enum EntityCmd {
    /// List them
    List,
    /// Create one (queues, streams, exchanges, users, vhosts)
    Declare {
        name: String,
        /// Exchange type (exchanges)
        #[arg(long = "type", default_value = "direct")]
        kind: String,
        /// Not durable (queues, exchanges)
        #[arg(long)]
        transient: bool,
        #[arg(long)]
        auto_delete: bool,
        /// Argument KEY=VALUE (VALUE parsed as JSON when it can be), repeatable
        #[arg(long = "arg", value_name = "KEY=VALUE")]
        args: Vec<String>,
        /// Password (users)
        #[arg(long = "new-password")]
        new_password: Option<String>,
        /// Comma-separated tags (users)
        #[arg(long, default_value = "")]
        tags: String,
    },
    /// Delete one (connections: close it)
    Delete {
        name: String,
        #[arg(long)]
        if_empty: bool,
        #[arg(long)]
        if_unused: bool,
    },
    /// Remove a queue's ready messages
    Purge { name: String },
}

#[derive(Debug, Subcommand)]
pub enum ListCmd {
    /// List them (in --vhost)
    List,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCmd {
    /// List them (in --vhost)
    List,
    /// Create or replace one
    Declare {
        name: String,
        /// Regular expression over queue/exchange names
        #[arg(long)]
        pattern: String,
        /// queues, classic_queues, quorum_queues, streams, exchanges or all
        #[arg(long, default_value = "all")]
        apply_to: String,
        #[arg(long, default_value_t = 0)]
        priority: i32,
        /// Definition KEY=VALUE (VALUE parsed as JSON when it can be), repeatable
        #[arg(long = "definition", value_name = "KEY=VALUE", required = true)]
        definition: Vec<String>,
    },
    /// Delete one
    Delete { name: String },
}

#[derive(Debug, Subcommand)]
pub enum TopicPermCmd {
    /// List them (in --vhost)
    List,
    /// Set a user's topic permission on an exchange (replacing the one there)
    Set {
        /// The user
        name: String,
        /// The topic exchange
        #[arg(long, default_value = "amq.topic")]
        exchange: String,
        /// Regular expression over routing keys for publishing ({username}, {vhost} and
        /// {client_id} are expanded)
        #[arg(long)]
        write: String,
        /// Regular expression over binding keys for binding and subscribing
        #[arg(long)]
        read: String,
    },
    /// Remove a user's topic permissions on the vhost (all, or --exchange's)
    Clear {
        /// The user
        name: String,
        #[arg(long)]
        exchange: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum BindingCmd {
    List,
    /// Bind a queue (or exchange) to an exchange
    Declare(BindingArgs),
    /// Remove a binding
    Delete(BindingArgs),
}

#[derive(Debug, Args)]
pub struct BindingArgs {
    #[arg(long)]
    source: String,
    #[arg(long)]
    destination: String,
    /// queue or exchange
    #[arg(long, default_value = "queue")]
    destination_type: String,
    #[arg(long, default_value = "")]
    routing_key: String,
}

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// Exchange (default: straight to --queue)
    #[arg(long)]
    exchange: Option<String>,
    /// Queue or stream to publish to directly
    #[arg(long)]
    queue: Option<String>,
    #[arg(long, default_value = "")]
    routing_key: String,
    /// Body text (default: stdin)
    #[arg(long)]
    body: Option<String>,
    /// Header KEY=VALUE, repeatable
    #[arg(long = "header", value_name = "KEY=VALUE")]
    headers: Vec<String>,
    #[arg(long)]
    content_type: Option<String>,
    #[arg(long)]
    correlation_id: Option<String>,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Debug, Args)]
pub struct ConsumeArgs {
    #[arg(long)]
    queue: String,
    /// Stop after this many messages
    #[arg(long, default_value_t = 1)]
    count: u32,
    /// Wait up to this long for messages
    #[arg(long, default_value_t = 5000)]
    wait_ms: u64,
    /// Requeue instead of ack (peek)
    #[arg(long)]
    requeue: bool,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Debug, Subcommand)]
pub enum DlqCmd {
    /// Move dead-lettered messages back to their source queue (or --to)
    Redrive {
        /// The dead-letter queue
        #[arg(long)]
        queue: String,
        #[arg(long)]
        to: Option<String>,
        #[arg(long)]
        count: Option<u64>,
    },
}

#[derive(Debug, Subcommand)]
pub enum DefsCmd {
    /// Print (or write to --file) the definitions document
    Export {
        #[arg(long)]
        file: Option<std::path::PathBuf>,
    },
    /// Import a definitions document from a file ("-" for stdin)
    Import { file: std::path::PathBuf },
}

/// A failed call.
enum Failure {
    Unreachable(String),
    Refused(String),
    Local(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Local(e)
    }
}

type R<T> = Result<T, Failure>;

struct Client {
    base: String,
    auth: String,
    agent: ureq::Agent,
}

/// Percent-encodes one path segment.
fn seg(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Client {
    fn new(c: &Conn) -> Client {
        Client {
            base: c.url.trim_end_matches('/').to_string(),
            auth: format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD
                    .encode(format!("{}:{}", c.user, c.password))
            ),
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .build()
                .into(),
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> R<Value> {
        let url = format!("{}{path}", self.base);
        let a = &self.agent;
        let sent = match method {
            "GET" => a.get(&url).header("authorization", &self.auth).call(),
            "DELETE" => a.delete(&url).header("authorization", &self.auth).call(),
            m => {
                let r = if m == "PUT" {
                    a.put(&url)
                } else {
                    a.post(&url)
                };
                r.header("authorization", &self.auth)
                    .header("content-type", "application/json")
                    .send(body.cloned().unwrap_or(json!({})).to_string())
            }
        };
        let mut resp = sent.map_err(|e| {
            Failure::Unreachable(format!(
                "cannot reach FerryMQ at {}: {e} (is the server running? set --url or FERRYMQ_URL)",
                self.base
            ))
        })?;
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        let v: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if status >= 400 {
            let reason = v["reason"]
                .as_str()
                .map_or_else(|| v.to_string(), str::to_string);
            let code = v["error"].as_str().unwrap_or("error");
            return Err(Failure::Refused(format!("{status} {code}: {reason}")));
        }
        Ok(v)
    }
}

fn kv(s: &str) -> anyhow::Result<(String, Value)> {
    let (k, v) = s
        .split_once('=')
        .with_context(|| format!("expected KEY=VALUE, got {s:?}"))?;
    let v = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_string()));
    Ok((k.to_string(), v))
}

fn kvs(items: &[String]) -> anyhow::Result<serde_json::Map<String, Value>> {
    items.iter().map(|s| kv(s)).collect()
}

/// Prints rows of `v` (an array of objects) as a table with `cols`.
fn table(v: &Value, cols: &[&str]) {
    let rows: Vec<Vec<String>> = v
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| {
                    cols.iter()
                        .map(|c| match &r[*c] {
                            Value::String(s) => s.clone(),
                            Value::Null => String::new(),
                            other => other.to_string(),
                        })
                        .collect()
                })
                .collect()
        })
        .unwrap_or_default();
    let widths: Vec<usize> = cols
        .iter()
        .enumerate()
        .map(|(i, c)| {
            rows.iter()
                .map(|r| r[i].len())
                .chain([c.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<String>| {
        let s: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(cols.iter().map(|c| c.to_string()).collect());
    for r in rows {
        line(r);
    }
}

fn out(conn: &Conn, v: &Value, cols: &[&str]) {
    if conn.json {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    } else if v.is_array() {
        table(v, cols);
    } else if !v.is_null() {
        table(&Value::Array(vec![v.clone()]), cols);
    }
}

/// Runs an admin command; returns the exit status.
pub fn run(cmd: AdminCommand) -> ExitCode {
    match exec(cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Refused(m)) => {
            eprintln!("ferrymq: the server refused: {m}");
            ExitCode::FAILURE
        }
        Err(Failure::Unreachable(m)) => {
            eprintln!("ferrymq: {m}");
            ExitCode::from(EXIT_UNREACHABLE)
        }
        Err(Failure::Local(e)) => {
            eprintln!("ferrymq: {e:#}");
            ExitCode::from(2)
        }
    }
}

const QUEUE_COLS: &[&str] = &[
    "vhost",
    "name",
    "type",
    "messages",
    "messages_ready",
    "messages_unacked",
    "consumers",
    "bytes",
];

fn entity(kind: &str, cmd: EntityCmd, conn: &Conn) -> R<()> {
    let c = Client::new(conn);
    let vh = seg(&conn.vhost);
    let (list_path, cols): (String, &[&str]) = match kind {
        "queues" => (format!("/api/queues/{vh}"), QUEUE_COLS),
        "streams" => (format!("/api/streams/{vh}"), QUEUE_COLS),
        "exchanges" => (
            format!("/api/exchanges/{vh}"),
            &[
                "vhost",
                "name",
                "type",
                "durable",
                "auto_delete",
                "bindings",
            ],
        ),
        "users" => ("/api/users".into(), &["name", "tags"]),
        "vhosts" => (
            "/api/vhosts".into(),
            &["name", "queues", "exchanges", "messages"],
        ),
        _ => (
            "/api/connections".into(),
            &["id", "protocol", "peer", "user", "vhost", "channels"],
        ),
    };
    let item = |name: &str| match kind {
        "users" | "vhosts" => format!("/api/{kind}/{}", seg(name)),
        "connections" => format!("/api/connections/{}", seg(name)),
        _ => format!("/api/{kind}/{vh}/{}", seg(name)),
    };
    match cmd {
        EntityCmd::List => out(conn, &c.call("GET", &list_path, None)?, cols),
        EntityCmd::Declare {
            name,
            kind: xtype,
            transient,
            auto_delete,
            args,
            new_password,
            tags,
        } => {
            let arguments = kvs(&args)?;
            let body = match kind {
                "queues" | "streams" => {
                    json!({"durable": !transient, "auto_delete": auto_delete, "arguments": arguments})
                }
                "exchanges" => {
                    json!({"type": xtype, "durable": !transient, "auto_delete": auto_delete, "arguments": arguments})
                }
                "users" => {
                    let password = new_password.ok_or_else(|| {
                        Failure::Local(anyhow::anyhow!("users declare needs --new-password"))
                    })?;
                    let tags: Vec<&str> = tags.split(',').filter(|t| !t.is_empty()).collect();
                    json!({"password": password, "tags": tags})
                }
                "vhosts" => json!({}),
                _ => {
                    return Err(Failure::Local(anyhow::anyhow!(
                        "connections cannot be declared"
                    )))
                }
            };
            let v = c.call("PUT", &item(&name), Some(&body))?;
            if kind == "vhosts" {
                let perm = json!({"configure": ".*", "write": ".*", "read": ".*"});
                c.call(
                    "PUT",
                    &format!("/api/permissions/{}/{}", seg(&name), seg(&conn.user)),
                    Some(&perm),
                )?;
            }
            out(conn, &v, cols);
        }
        EntityCmd::Delete {
            name,
            if_empty,
            if_unused,
        } => {
            let q = format!("?if_empty={if_empty}&if_unused={if_unused}");
            let q = if matches!(kind, "queues" | "streams" | "exchanges") {
                q
            } else {
                String::new()
            };
            let v = c.call("DELETE", &format!("{}{q}", item(&name)), None)?;
            if conn.json {
                println!("{v}");
            } else {
                println!("deleted {name}");
            }
        }
        EntityCmd::Purge { name } => {
            let v = c.call(
                "DELETE",
                &format!("/api/queues/{vh}/{}/contents", seg(&name)),
                None,
            )?;
            if conn.json {
                println!("{v}");
            } else {
                println!("purged {} messages from {name}", v["messages"]);
            }
        }
    }
    Ok(())
}

const CHANNEL_COLS: &[&str] = &[
    "name",
    "protocol",
    "user",
    "vhost",
    "prefetch_count",
    "messages_unacknowledged",
    "consumer_count",
    "confirm",
    "transactional",
];

const CONSUMER_COLS: &[&str] = &[
    "vhost",
    "queue",
    "consumer_tag",
    "channel_name",
    "protocol",
    "ack_required",
    "prefetch_count",
    "messages_unacknowledged",
    "active",
];

const POLICY_COLS: &[&str] = &[
    "vhost",
    "name",
    "pattern",
    "apply-to",
    "priority",
    "definition",
];

fn policies(cmd: PolicyCmd, conn: &Conn) -> R<()> {
    let c = Client::new(conn);
    let vh = seg(&conn.vhost);
    match cmd {
        PolicyCmd::List => out(
            conn,
            &c.call("GET", &format!("/api/policies/{vh}"), None)?,
            POLICY_COLS,
        ),
        PolicyCmd::Declare {
            name,
            pattern,
            apply_to,
            priority,
            definition,
        } => {
            let body = json!({"pattern": pattern, "apply-to": apply_to, "priority": priority,
                              "definition": kvs(&definition)?});
            let v = c.call(
                "PUT",
                &format!("/api/policies/{vh}/{}", seg(&name)),
                Some(&body),
            )?;
            out(conn, &v, POLICY_COLS);
        }
        PolicyCmd::Delete { name } => {
            c.call(
                "DELETE",
                &format!("/api/policies/{vh}/{}", seg(&name)),
                None,
            )?;
            if !conn.json {
                println!("deleted {name}");
            }
        }
    }
    Ok(())
}

const TOPIC_PERM_COLS: &[&str] = &["vhost", "user", "exchange", "write", "read"];

fn topic_permissions(cmd: TopicPermCmd, conn: &Conn) -> R<()> {
    let c = Client::new(conn);
    let vh = seg(&conn.vhost);
    match cmd {
        TopicPermCmd::List => out(
            conn,
            &c.call("GET", &format!("/api/topic-permissions/{vh}"), None)?,
            TOPIC_PERM_COLS,
        ),
        TopicPermCmd::Set {
            name,
            exchange,
            write,
            read,
        } => {
            let body = json!({"exchange": exchange, "write": write, "read": read});
            let v = c.call(
                "PUT",
                &format!("/api/topic-permissions/{vh}/{}", seg(&name)),
                Some(&body),
            )?;
            out(conn, &v, TOPIC_PERM_COLS);
        }
        TopicPermCmd::Clear { name, exchange } => {
            let mut path = format!("/api/topic-permissions/{vh}/{}", seg(&name));
            if let Some(x) = &exchange {
                path.push_str(&format!("?exchange={}", seg(x)));
            }
            c.call("DELETE", &path, None)?;
            if !conn.json {
                println!("cleared topic permissions of {name}");
            }
        }
    }
    Ok(())
}

fn exec(cmd: AdminCommand) -> R<()> {
    match cmd {
        AdminCommand::Channels {
            cmd: ListCmd::List,
            conn,
        } => {
            let c = Client::new(&conn);
            let path = format!("/api/vhosts/{}/channels", seg(&conn.vhost));
            out(&conn, &c.call("GET", &path, None)?, CHANNEL_COLS);
            Ok(())
        }
        AdminCommand::Consumers {
            cmd: ListCmd::List,
            conn,
        } => {
            let c = Client::new(&conn);
            let path = format!("/api/consumers/{}", seg(&conn.vhost));
            out(&conn, &c.call("GET", &path, None)?, CONSUMER_COLS);
            Ok(())
        }
        AdminCommand::Policies { cmd, conn } => policies(cmd, &conn),
        AdminCommand::TopicPermissions { cmd, conn } => topic_permissions(cmd, &conn),
        AdminCommand::Queues { cmd, conn } => entity("queues", cmd, &conn),
        AdminCommand::Streams { cmd, conn } => entity("streams", cmd, &conn),
        AdminCommand::Exchanges { cmd, conn } => entity("exchanges", cmd, &conn),
        AdminCommand::Users { cmd, conn } => entity("users", cmd, &conn),
        AdminCommand::Vhosts { cmd, conn } => entity("vhosts", cmd, &conn),
        AdminCommand::Connections { cmd, conn } => entity("connections", cmd, &conn),
        AdminCommand::Bindings { cmd, conn } => {
            let c = Client::new(&conn);
            let vh = seg(&conn.vhost);
            let path = |b: &BindingArgs| -> R<String> {
                let d = match b.destination_type.as_str() {
                    "queue" | "q" => "q",
                    "exchange" | "e" => "e",
                    other => {
                        return Err(Failure::Local(anyhow::anyhow!(
                            "--destination-type must be queue or exchange, got {other}"
                        )))
                    }
                };
                Ok(format!(
                    "/api/bindings/{vh}/e/{}/{d}/{}",
                    seg(&b.source),
                    seg(&b.destination)
                ))
            };
            match cmd {
                BindingCmd::List => out(
                    &conn,
                    &c.call("GET", &format!("/api/bindings/{vh}"), None)?,
                    &[
                        "vhost",
                        "source",
                        "destination",
                        "destination_type",
                        "routing_key",
                    ],
                ),
                BindingCmd::Declare(b) => {
                    c.call(
                        "POST",
                        &path(&b)?,
                        Some(&json!({"routing_key": b.routing_key})),
                    )?;
                    println!(
                        "bound {} to {} with key {:?}",
                        b.destination, b.source, b.routing_key
                    );
                }
                BindingCmd::Delete(b) => {
                    c.call(
                        "DELETE",
                        &format!("{}?routing_key={}", path(&b)?, seg(&b.routing_key)),
                        None,
                    )?;
                    println!("unbound {} from {}", b.destination, b.source);
                }
            }
            Ok(())
        }
        AdminCommand::Publish(p) => {
            let c = Client::new(&p.conn);
            let vh = seg(&p.conn.vhost);
            let body = match p.body {
                Some(b) => b,
                None => {
                    let mut s = String::new();
                    std::io::stdin()
                        .read_to_string(&mut s)
                        .context("reading the body from stdin")?;
                    s
                }
            };
            let msg = json!({
                "routing_key": p.routing_key,
                "payload": body,
                "headers": kvs(&p.headers)?,
                "properties": {"content_type": p.content_type, "correlation_id": p.correlation_id},
            });
            let path = match (&p.exchange, &p.queue) {
                (Some(x), None) => format!("/api/exchanges/{vh}/{}/publish", seg(x)),
                (None, Some(q)) => format!("/api/queues/{vh}/{}/publish", seg(q)),
                _ => {
                    return Err(Failure::Local(anyhow::anyhow!(
                        "give exactly one of --exchange or --queue"
                    )))
                }
            };
            let v = c.call("POST", &path, Some(&msg))?;
            if p.conn.json {
                println!("{v}");
            } else if v["routed"] == json!(true) {
                println!("published (routed to {})", v["routed_to"]);
            } else {
                println!("published, but no queue took it (unroutable)");
            }
            Ok(())
        }
        AdminCommand::Consume(a) => {
            let c = Client::new(&a.conn);
            let base = format!("/api/queues/{}/{}", seg(&a.conn.vhost), seg(&a.queue));
            let mut left = a.count;
            while left > 0 {
                let req = json!({"max_messages": left.min(1000), "wait_ms": a.wait_ms});
                let v = c.call("POST", &format!("{base}/get"), Some(&req))?;
                let msgs = v["messages"].as_array().cloned().unwrap_or_default();
                if msgs.is_empty() {
                    break;
                }
                let handles: Vec<Value> =
                    msgs.iter().map(|m| m["receipt_handle"].clone()).collect();
                for m in &msgs {
                    if a.conn.json {
                        println!("{m}");
                    } else {
                        println!("{}", m["message"]["payload"].as_str().unwrap_or_default());
                    }
                }
                let (op, body) = if a.requeue {
                    ("nack", json!({"receipt_handles": handles, "requeue": true}))
                } else {
                    ("ack", json!({"receipt_handles": handles}))
                };
                c.call("POST", &format!("{base}/{op}"), Some(&body))?;
                left = left.saturating_sub(msgs.len() as u32);
            }
            Ok(())
        }
        AdminCommand::Dlq {
            cmd: DlqCmd::Redrive { queue, to, count },
            conn,
        } => {
            let c = Client::new(&conn);
            let body = json!({"destination": to, "count": count});
            let v = c.call(
                "POST",
                &format!("/api/queues/{}/{}/move", seg(&conn.vhost), seg(&queue)),
                Some(&body),
            )?;
            if conn.json {
                println!("{v}");
            } else {
                println!(
                    "moved {} message(s); {} left in {queue}",
                    v["moved"], v["skipped"]
                );
            }
            Ok(())
        }
        AdminCommand::Definitions { cmd, conn } => {
            let c = Client::new(&conn);
            match cmd {
                DefsCmd::Export { file } => {
                    let v = c.call("GET", "/api/definitions", None)?;
                    let text = serde_json::to_string_pretty(&v).context("encoding")?;
                    match file {
                        Some(f) => std::fs::write(&f, text)
                            .with_context(|| format!("writing {}", f.display()))?,
                        None => println!("{text}"),
                    }
                }
                DefsCmd::Import { file } => {
                    let text = if file.as_os_str() == "-" {
                        let mut s = String::new();
                        std::io::stdin()
                            .read_to_string(&mut s)
                            .context("reading stdin")?;
                        s
                    } else {
                        std::fs::read_to_string(&file)
                            .with_context(|| format!("reading {}", file.display()))?
                    };
                    let v: Value = serde_json::from_str(&text).context("the file is not JSON")?;
                    let r = c.call("POST", "/api/definitions", Some(&v))?;
                    if conn.json {
                        println!("{r}");
                    } else {
                        println!("imported: {r}");
                    }
                }
            }
            Ok(())
        }
    }
}
