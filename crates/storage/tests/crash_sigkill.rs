//! Crash test with a real process: a child appends at T2 and prints acknowledged batches; it
//! is SIGKILLed at random moments 20 times in a row on the same directory, and after every
//! recovery each acknowledged record must be present and intact.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use bytes::Bytes;
use ferrymq_storage::{LogOptions, Storage, StorageConfig};

fn body(thread: u64, seq: u64, i: u64) -> Bytes {
    let len = ((seq * 131 + i * 17 + thread * 7) % 700) as usize;
    let mut v = format!("t{thread}-s{seq}-r{i}:").into_bytes();
    v.extend((0..len).map(|k| (k as u64 ^ seq ^ (thread << 3)) as u8));
    Bytes::from(v)
}

#[test]
fn sigkill_never_loses_acknowledged_records() {
    let dir = tempfile::tempdir().unwrap();
    let exe = env!("CARGO_BIN_EXE_ferrymq-storage-crashtest");
    let iterations: u64 = std::env::var("CRASH_ITERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let mut acked: BTreeMap<u64, Bytes> = BTreeMap::new();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    for iter in 0..iterations {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let kill_after = 1 + rng % 300;
        let mut child = Command::new(exe)
            .arg(dir.path())
            .arg("4")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut seen = 0;
        let parse = |line: &str, acked: &mut BTreeMap<u64, Bytes>| {
            let f: Vec<u64> = line
                .split_whitespace()
                .skip(1)
                .map(|x| x.parse().unwrap())
                .collect();
            let (base, n, thread, seq) = (f[0], f[1], f[2], f[3]);
            for i in 0..n {
                acked.insert(base + i, body(thread, seq, i));
            }
        };
        // Wait until the child has acknowledged some batches, then kill it mid-flight.
        for line in lines.by_ref() {
            parse(&line.unwrap(), &mut acked);
            seen += 1;
            if seen >= kill_after {
                break;
            }
        }
        assert!(seen >= kill_after, "child exited early");
        child.kill().unwrap(); // SIGKILL
                               // Acks printed before the kill are still in the pipe: they count too.
        for line in lines {
            match line {
                Ok(l) if l.starts_with("ack ") && l.split_whitespace().count() == 5 => {
                    parse(&l, &mut acked)
                }
                _ => break,
            }
        }
        let _ = child.wait();

        let s = Storage::open(
            dir.path(),
            StorageConfig {
                segment_bytes: 64 << 10,
                index_interval_bytes: 1024,
                ..Default::default()
            },
        )
        .unwrap();
        let log = s
            .open_log("crash", "crash/log", LogOptions::default())
            .unwrap();
        let mut found = 0usize;
        let mut from = 0;
        loop {
            let batches = log.read(from, 1 << 20).unwrap();
            if batches.is_empty() {
                break;
            }
            for b in &batches {
                for (o, rec) in b.records() {
                    if let Some(want) = acked.get(&o) {
                        assert_eq!(&rec, want, "iteration {iter}: record {o} differs");
                        found += 1;
                    }
                }
                from = b.next_offset();
            }
        }
        assert_eq!(
            found,
            acked.len(),
            "iteration {iter}: acknowledged records missing"
        );
        assert!(log.next_offset() > *acked.keys().last().unwrap());
        assert_eq!(
            s.metrics().corrupt_batches_total,
            0,
            "no corruption in the middle"
        );
    }
}
