//! Fuzz target `storage_recovery`: arbitrary bytes as one log's files (segments, indexes,
//! delivery-state journals, consumer offsets, start offset; layout in
//! `ferrymq_storage::fuzzing`) in a fresh data directory, recovered as the broker does at
//! start, read every way, appended to and reopened. The same check runs on stable as
//! `mutated_recovery_inputs_never_panic` in `crates/storage/src/fuzzing.rs`.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use libfuzzer_sys::fuzz_target;

static RUN: AtomicU64 = AtomicU64::new(0);

/// tmpfs when there is one: the engine fsyncs, and that is free there.
fn temp_root() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

fuzz_target!(|data: &[u8]| {
    let root = temp_root().join(format!(
        "ferrymq-fuzz-storage-{}-{}",
        std::process::id(),
        RUN.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = ferrymq_storage::fuzzing::check_recovery(&root, data);
    let _ = std::fs::remove_dir_all(&root);
});
