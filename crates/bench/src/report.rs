//! Printing a run's result: a human table, or JSON.

use std::fmt::Write as _;

use crate::latency::Summary;
use crate::run::RunResult;

/// `1234567.8` → `"1,234,568"`.
pub fn thousands(x: f64) -> String {
    let n = x.round() as i64;
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        let left = digits.len() - i;
        if i > 0 && left / 3 * 3 == left {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        out.insert(0, '-');
    }
    out
}

/// Microseconds, readable: `"812 µs"`, `"3.41 ms"`, `"1.20 s"`.
pub fn micros(us: f64) -> String {
    if us < 1_000.0 {
        format!("{us:.0} µs")
    } else if us < 1_000_000.0 {
        format!("{:.2} ms", us / 1_000.0)
    } else {
        format!("{:.2} s", us / 1_000_000.0)
    }
}

pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn latency_row(out: &mut String, name: &str, s: &Summary) {
    if s.count == 0 {
        let _ = writeln!(out, "  {name:<12} (none measured)");
        return;
    }
    let _ = writeln!(
        out,
        "  {name:<12} {:>10} {:>10} {:>10} {:>10}   ({} samples)",
        micros(s.p50_us),
        micros(s.p99_us),
        micros(s.p999_us),
        micros(s.max_us),
        thousands(s.count as f64)
    );
}

/// The idle-connection memory measurement, for people.
pub fn idle(r: &crate::mqtt::IdleResult) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "idle MQTT connections: {} of {} open (in {:.1} s); broker pid {} RSS {} → {}: {:.1} KiB per connection",
        thousands(r.connected as f64),
        thousands(r.connections as f64),
        r.connect_s,
        r.pid,
        mib(r.rss_before_bytes),
        mib(r.rss_after_bytes),
        r.bytes_per_connection / 1024.0
    );
    if let Some(e) = &r.error {
        let _ = writeln!(o, "  first failure: {e}");
    }
    o
}

/// The table printed at the end of a run.
pub fn human(r: &RunResult) -> String {
    let mut o = String::new();
    let s = &r.scenario;
    let _ = writeln!(o, "{:?} {}  {}", r.protocol, s.url_redacted(), s.describe());
    let t = &r.tally;
    let _ = writeln!(
        o,
        "  {:<12} {:>14} {:>12} {:>10}",
        "", "messages", "msg/s", "MB/s"
    );
    let _ = writeln!(
        o,
        "  {:<12} {:>14} {:>12} {:>10.1}",
        "published",
        thousands(t.sent as f64),
        thousands(r.publish.msgs_per_s),
        r.publish.mb_per_s
    );
    let _ = writeln!(
        o,
        "  {:<12} {:>14} {:>12} {:>10.1}",
        "received",
        thousands(t.received as f64),
        thousands(r.consume.msgs_per_s),
        r.consume.mb_per_s
    );
    if t.copies_expected > 0 {
        let _ = writeln!(
            o,
            "  {:<12} {:>14}   (fan-out: received counts one copy per subscriber)",
            "copies due",
            thousands(t.copies_expected as f64)
        );
    }
    if s.confirms || t.confirmed > 0 {
        let _ = writeln!(
            o,
            "  {:<12} {:>14}   nacked {}",
            "confirmed",
            thousands(t.confirmed as f64),
            t.nacked
        );
    }
    let _ = writeln!(
        o,
        "  lost {}  duplicated {}  out of order {}  unconfirmed+not received {}  failed {}  foreign {}{}",
        t.lost,
        t.duplicated,
        t.out_of_order,
        t.unconfirmed_not_received,
        t.failed,
        t.foreign,
        if r.drain_incomplete { "  (drain timed out)" } else { "" }
    );
    let _ = writeln!(
        o,
        "  {:<12} {:>10} {:>10} {:>10} {:>10}",
        "latency", "p50", "p99", "p99.9", "max"
    );
    latency_row(&mut o, "end-to-end", &r.end_to_end);
    if s.confirms || r.confirm.count > 0 {
        latency_row(&mut o, "confirm", &r.confirm);
    }
    if let Some(b) = &r.broker {
        let _ = writeln!(
            o,
            "  broker pid {}: CPU {:.1} s ({:.0}% of one core) in the window, peak RSS {}",
            b.pid,
            b.cpu_s,
            b.cpu_percent,
            mib(b.peak_rss_bytes)
        );
    }
    if let Some(c) = r.client_cpu_percent {
        let _ = writeln!(
            o,
            "  load generator ({} client): {c:.0}% of one core in the window",
            match r.protocol {
                crate::run::Protocol::Mqtt => s.mqtt_client.name(),
                crate::run::Protocol::Http => "ureq",
                crate::run::Protocol::Kafka => "librdkafka",
                crate::run::Protocol::Amqp => s.client.name(),
            }
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_formats() {
        assert_eq!(thousands(1_234_567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(-1000.0), "-1,000");
        assert_eq!(micros(812.2), "812 µs");
        assert_eq!(micros(3_414.0), "3.41 ms");
        assert_eq!(micros(1_200_000.0), "1.20 s");
        assert_eq!(mib(3 * 1024 * 1024 / 2), "1.5 MiB");
    }
}
