//! Crash-test child: appends T2 batches from several threads and prints every acknowledged
//! batch to stdout (`ack <base> <count> <thread> <seq>`), until killed.
//!
//! Usage: `ferrymq-storage-crashtest <data-dir> [threads]`. Record bodies are a pure function
//! of (thread, seq, index), see `body`, so the test can check them after recovery.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use ferrymq_storage::{Durability, LogOptions, Storage, StorageConfig};

/// Body of record `i` of batch `seq` of `thread`; shared with the integration test.
fn body(thread: u64, seq: u64, i: u64) -> Bytes {
    let len = ((seq * 131 + i * 17 + thread * 7) % 700) as usize;
    let mut v = format!("t{thread}-s{seq}-r{i}:").into_bytes();
    v.extend((0..len).map(|k| (k as u64 ^ seq ^ (thread << 3)) as u8));
    Bytes::from(v)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next().map(PathBuf::from) else {
        eprintln!("usage: ferrymq-storage-crashtest <data-dir> [threads]");
        std::process::exit(2);
    };
    let threads: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(4);
    let config = StorageConfig {
        segment_bytes: 64 << 10,
        index_interval_bytes: 1024,
        ..Default::default()
    };
    let storage = match Storage::open(&dir, config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("open failed: {e}");
            std::process::exit(1);
        }
    };
    let opts = LogOptions {
        durability: Some(Durability::T2),
        segment_bytes: None,
    };
    let log = match storage.open_log("crash", "crash/log", opts) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("open_log failed: {e}");
            std::process::exit(1);
        }
    };
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let run = std::process::id() as u64;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let log = log.clone();
            let out = out.clone();
            std::thread::spawn(move || {
                let thread = run * 100 + t;
                for seq in 0u64.. {
                    let n = 1 + (seq % 5);
                    let recs: Vec<Bytes> = (0..n).map(|i| body(thread, seq, i)).collect();
                    let res = log.append(&recs, seq as i64).and_then(|a| {
                        let base = a.base_offset;
                        a.commit.wait().map(|_| base)
                    });
                    match res {
                        Ok(base) => {
                            let mut o = out.lock().unwrap_or_else(|p| p.into_inner());
                            let _ = writeln!(o, "ack {base} {n} {thread} {seq}");
                            let _ = o.flush();
                        }
                        Err(e) => {
                            eprintln!("append failed: {e}");
                            std::process::exit(1);
                        }
                    }
                }
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
}
