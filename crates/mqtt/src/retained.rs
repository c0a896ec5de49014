//! The retained-message store of one vhost: an in-memory map from MQTT topic to its last
//! retained message, persisted as an append-only log of set/clear records in the storage
//! engine (`Storage::open_log`, kind [`LOG_KIND`]), so retained messages survive a restart
//! and `kill -9` at the log's durability tier (T2 by default: PUBACK waits for the fsync).
//!
//! Compaction: once the log holds more than 2 × live + [`COMPACT_SLACK`] records, the live
//! set is written to a new generation (`{vhost}.{n+1}`) followed by a `Base` record, and
//! the old generation is removed. At open the highest generation that holds a `Base` record
//! wins (a compaction cut short by a crash has none and is removed), so the store is always
//! either the old or the new generation, never a mix.
//!
//! A compaction runs on its own thread, so that a publisher's `set` never writes (and waits
//! for) the whole live set: `set` takes a snapshot of the map (topic copies and `Arc`s) and
//! goes on appending to the old generation, also keeping each record it appends for the new
//! one. The thread writes the snapshot to the new generation; then, under the store's lock,
//! the records kept meanwhile and the `Base` record are appended to it and it becomes the
//! current log, so it holds everything the old one does. The old generation is removed only
//! once the new one's `Base` (and the old one's own last writes) are durable: until then a
//! crash leaves the old generation as the winner, and no record appended to the new one
//! after the switch was acknowledged (its commit covers the earlier `Base`).

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use bytes::{BufMut, Bytes, BytesMut};
use ferrymq_core::clock::now_ms;
use ferrymq_core::Message;
use ferrymq_mqtt_codec::topic_matches;
use ferrymq_storage::{Commit, Log, LogOptions, Storage};

use crate::error::Error;

/// Storage kind of retained-message logs.
pub const LOG_KIND: &str = "mqtt-retained";
/// Storage kind of the logs recording when persistent sessions went offline: the key is the
/// client id, the record's time the disconnect, its message's expiration the session expiry.
pub const SESSIONS_LOG_KIND: &str = "mqtt-sessions";
/// Records beyond twice the live set tolerated before compaction.
pub const COMPACT_SLACK: u64 = 1024;
/// Bytes per compaction append (well under the storage batch limit).
const COMPACT_BATCH_BYTES: usize = 1 << 20;
/// Pause after a failed compaction (a full disk) before the next attempt.
const COMPACT_RETRY_MS: i64 = 10_000;

const OP_CLEAR: u8 = 0;
const OP_SET: u8 = 1;
const OP_BASE: u8 = 2;

/// A retained message and when it was stored (for its message expiry).
#[derive(Debug, Clone)]
pub struct Retained {
    pub message: Arc<Message>,
    pub stored_at_ms: i64,
}

impl Retained {
    /// True once the message's expiry interval has passed.
    pub fn expired(&self, now: i64) -> bool {
        self.message
            .properties
            .expiration_ms
            .is_some_and(|e| self.stored_at_ms.saturating_add(e as i64) <= now)
    }
}

struct Inner {
    map: HashMap<String, Retained>,
    log: Arc<Log>,
    generation: u64,
    /// Records in the current generation.
    records: u64,
    /// While a compaction runs: the records appended since its snapshot, for the new
    /// generation.
    compacting: Option<Vec<Bytes>>,
    /// After a failed compaction, none is started again before this time.
    retry_at_ms: i64,
    /// The thread of the last compaction started. It holds the storage (and so the data
    /// directory's lock) until it has ended, so whoever must see it gone joins it.
    worker: Option<std::thread::JoinHandle<()>>,
}

/// The state a compaction thread shares with the store.
struct Shared {
    inner: Mutex<Inner>,
    /// Signalled when a compaction ends.
    idle: Condvar,
}

/// The retained messages of one vhost. The same keyed, persisted store also records when
/// persistent sessions went offline ([`SESSIONS_LOG_KIND`]; see `Mqtt::open`).
pub struct RetainedStore {
    storage: Arc<Storage>,
    kind: &'static str,
    vhost: String,
    max: usize,
    shared: Arc<Shared>,
}

fn encode(op: u8, topic: &str, stored_at: i64, msg: Option<&Message>) -> Bytes {
    let mut b = BytesMut::with_capacity(16 + topic.len());
    b.put_u8(op);
    b.put_i64(stored_at);
    b.put_u16(u16::try_from(topic.len()).unwrap_or(u16::MAX));
    b.put_slice(&topic.as_bytes()[..topic.len().min(u16::MAX as usize)]);
    if let Some(m) = msg {
        ferrymq_core::codec::encode(m, &mut b);
    }
    b.freeze()
}

type Record = (u8, String, i64, Option<Message>);

fn decode(b: Bytes) -> Option<Record> {
    let op = *b.first()?;
    let stored_at = i64::from_be_bytes(b.get(1..9)?.try_into().ok()?);
    let len = u16::from_be_bytes(b.get(9..11)?.try_into().ok()?) as usize;
    let topic = std::str::from_utf8(b.get(11..11 + len)?).ok()?.to_owned();
    let msg = if op == OP_SET {
        Some(ferrymq_core::codec::decode(b.slice(11 + len..)).ok()?)
    } else {
        None
    };
    Some((op, topic, stored_at, msg))
}

fn log_name(vhost: &str, generation: u64) -> String {
    format!("{vhost}.{generation}")
}

fn read_all(log: &Log) -> Result<Vec<Record>, Error> {
    let mut out = Vec::new();
    let mut at = log.start_offset();
    let end = log.next_offset();
    while at < end {
        let batches = log.read(at, COMPACT_BATCH_BYTES)?;
        if batches.is_empty() {
            break;
        }
        for b in &batches {
            for (off, rec) in b.records() {
                if off < at {
                    continue;
                }
                at = off + 1;
                match decode(rec) {
                    Some(r) => out.push(r),
                    None => tracing::warn!(offset = off, "undecodable retained record skipped"),
                }
            }
        }
    }
    Ok(out)
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One compaction, run on its own thread (see the module docs).
struct Compaction {
    shared: Arc<Shared>,
    storage: Arc<Storage>,
    kind: &'static str,
    vhost: String,
    /// The generation being replaced.
    from: u64,
    snapshot: Vec<(String, i64, Arc<Message>)>,
}

impl Compaction {
    fn run(self) {
        let next = self.from + 1;
        let failed = self.compact(next).err();
        if let Some(e) = &failed {
            tracing::warn!(kind = self.kind, vhost = %self.vhost, error = %e, "retained store compaction failed; will retry");
            // A new generation that was not switched to is never used (it has no Base, or
            // an older one wins at open anyway): removed while `compacting` still keeps
            // the next compaction from opening it.
            let switched = self.shared.lock().generation == next;
            if !switched {
                if let Err(e) = self
                    .storage
                    .remove_log(self.kind, &log_name(&self.vhost, next))
                {
                    tracing::warn!(error = %e, "removing an unfinished retained generation failed");
                }
            }
        }
        let mut st = self.shared.lock();
        st.compacting = None;
        if failed.is_some() {
            st.retry_at_ms = now_ms().saturating_add(COMPACT_RETRY_MS);
        }
        drop(st);
        self.shared.idle.notify_all();
    }

    fn compact(&self, next: u64) -> Result<(), Error> {
        let log = self.storage.open_log(
            self.kind,
            &log_name(&self.vhost, next),
            LogOptions::default(),
        )?;
        // The snapshot, without the store's lock.
        let mut batch = Vec::new();
        let mut bytes = 0;
        let mut last = None;
        for (topic, stored_at, m) in &self.snapshot {
            let rec = encode(OP_SET, topic, *stored_at, Some(m));
            bytes += rec.len();
            batch.push(rec);
            if bytes >= COMPACT_BATCH_BYTES {
                last = Some(log.append(&batch, now_ms())?.commit);
                batch.clear();
                bytes = 0;
            }
        }
        if !batch.is_empty() {
            last = Some(log.append(&batch, now_ms())?.commit);
        }
        if let Some(c) = last {
            c.wait()?;
        }
        // The switch: what was appended meanwhile, the Base, and the new log is current.
        let (old, base) = {
            let mut st = self.shared.lock();
            let mut tail = st.compacting.take().unwrap_or_default();
            let kept = tail.len() as u64;
            tail.push(encode(OP_BASE, "", 0, None));
            let appended = match log.append(&tail, now_ms()) {
                Ok(a) => a,
                Err(e) => {
                    // Still compacting (the records kept are in the old generation too).
                    st.compacting = Some(Vec::new());
                    return Err(e.into());
                }
            };
            let old = std::mem::replace(&mut st.log, log);
            st.generation = next;
            st.records = self.snapshot.len() as u64 + kept + 1;
            // Keeps `compacting` set (empty) until the old generation is gone.
            st.compacting = Some(Vec::new());
            (old, appended.commit)
        };
        // The old generation goes once the new Base is durable and so are the old log's
        // own last appends (whose publishers may still wait for them).
        base.wait()?;
        old.append(&[encode(OP_BASE, "", 0, None)], now_ms())?
            .commit
            .wait()?;
        drop(old);
        self.storage
            .remove_log(self.kind, &log_name(&self.vhost, self.from))?;
        Ok(())
    }
}

impl Drop for RetainedStore {
    /// A running compaction is finished first, so that a dropped store no longer holds
    /// the storage (whose directory lock a later open needs).
    fn drop(&mut self) {
        self.wait_compacted();
    }
}

impl RetainedStore {
    /// Opens (and rebuilds) the retained messages of `vhost`, holding at most `max` topics.
    ///
    /// # Errors
    /// Storage errors.
    pub fn open(storage: Arc<Storage>, vhost: &str, max: usize) -> Result<RetainedStore, Error> {
        Self::open_kind(storage, LOG_KIND, vhost, max)
    }

    /// Opens (and rebuilds) the store of storage kind `kind` for `vhost`.
    ///
    /// # Errors
    /// Storage errors.
    pub fn open_kind(
        storage: Arc<Storage>,
        kind: &'static str,
        vhost: &str,
        max: usize,
    ) -> Result<RetainedStore, Error> {
        let prefix = format!("{vhost}.");
        let mut gens: Vec<u64> = storage
            .list_logs(kind)?
            .iter()
            .filter_map(|n| n.strip_prefix(&prefix)?.parse().ok())
            .collect();
        gens.sort_unstable();
        let mut chosen: Option<(u64, Arc<Log>, Vec<Record>)> = None;
        while let Some(g) = gens.pop() {
            let log = storage.open_log(kind, &log_name(vhost, g), LogOptions::default())?;
            let recs = read_all(&log)?;
            if chosen.is_none() && recs.iter().any(|r| r.0 == OP_BASE) {
                chosen = Some((g, log, recs));
            } else {
                drop(log);
                storage.remove_log(kind, &log_name(vhost, g))?;
            }
        }
        let (generation, log, recs) = match chosen {
            Some(c) => c,
            None => {
                let log = storage.open_log(kind, &log_name(vhost, 0), LogOptions::default())?;
                log.append(&[encode(OP_BASE, "", 0, None)], now_ms())?
                    .commit
                    .wait()?;
                (0, log, Vec::new())
            }
        };
        let mut map = HashMap::new();
        let records = recs.len() as u64;
        for (op, topic, stored_at, msg) in recs {
            match (op, msg) {
                (OP_SET, Some(m)) => {
                    map.insert(
                        topic,
                        Retained {
                            message: Arc::new(m),
                            stored_at_ms: stored_at,
                        },
                    );
                }
                (OP_CLEAR, _) => {
                    map.remove(&topic);
                }
                _ => {}
            }
        }
        Ok(RetainedStore {
            storage,
            kind,
            vhost: vhost.to_owned(),
            max,
            shared: Arc::new(Shared {
                inner: Mutex::new(Inner {
                    map,
                    log,
                    generation,
                    records,
                    compacting: None,
                    retry_at_ms: 0,
                    worker: None,
                }),
                idle: Condvar::new(),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.shared.lock()
    }

    /// Number of retained topics.
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sets (`Some`, a non-empty payload) or clears (`None`) the retained message of
    /// `topic`. Returns the commit to await before acknowledging the publisher.
    ///
    /// # Errors
    /// [`Error::RetainedFull`] when `retained_max` topics are held already; storage errors.
    pub fn set(&self, topic: &str, msg: Option<Message>) -> Result<Option<Commit>, Error> {
        let now = now_ms();
        let mut st = self.lock();
        let rec = match &msg {
            Some(m) => {
                if !st.map.contains_key(topic) && st.map.len() >= self.max {
                    return Err(Error::RetainedFull(self.max));
                }
                encode(OP_SET, topic, now, Some(m))
            }
            None => {
                if !st.map.contains_key(topic) {
                    return Ok(None);
                }
                encode(OP_CLEAR, topic, now, None)
            }
        };
        let commit = st.log.append(std::slice::from_ref(&rec), now)?.commit;
        st.records += 1;
        if let Some(kept) = &mut st.compacting {
            kept.push(rec);
        }
        match msg {
            Some(m) => {
                st.map.insert(
                    topic.to_owned(),
                    Retained {
                        message: Arc::new(m),
                        stored_at_ms: now,
                    },
                );
            }
            None => {
                st.map.remove(topic);
            }
        }
        if st.compacting.is_none()
            && st.records > 2 * st.map.len() as u64 + COMPACT_SLACK
            && now >= st.retry_at_ms
        {
            self.start_compaction(&mut st);
        }
        Ok(Some(commit))
    }

    /// Snapshots the live set and starts the thread that writes it as the next generation.
    fn start_compaction(&self, st: &mut Inner) {
        let snapshot: Vec<(String, i64, Arc<Message>)> = st
            .map
            .iter()
            .map(|(t, r)| (t.clone(), r.stored_at_ms, r.message.clone()))
            .collect();
        let job = Compaction {
            shared: self.shared.clone(),
            storage: self.storage.clone(),
            kind: self.kind,
            vhost: self.vhost.clone(),
            from: st.generation,
            snapshot,
        };
        // The previous thread has ended its work (`compacting` is cleared under this lock
        // as its last use of it); joining only waits for it to drop its handles.
        if let Some(h) = st.worker.take() {
            let _ = h.join();
        }
        st.compacting = Some(Vec::new());
        let spawned = std::thread::Builder::new()
            .name("ferrymq-compact".into())
            .spawn(move || job.run());
        match spawned {
            Ok(h) => st.worker = Some(h),
            Err(e) => {
                st.compacting = None;
                tracing::warn!(error = %e, "cannot start the retained store's compaction; will retry");
            }
        }
    }

    /// Blocks until no compaction runs and its thread has ended (tests, and callers that
    /// reopen the store: the thread holds the storage until it ends).
    pub fn wait_compacted(&self) {
        let worker = {
            let mut st = self.lock();
            while st.compacting.is_some() {
                st = self.shared.idle.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            st.worker.take()
        };
        if let Some(h) = worker {
            let _ = h.join();
        }
    }

    /// Unexpired retained messages whose topic matches `filter` (MQTT rules: `$` topics
    /// are not matched by a leading wildcard).
    pub fn matching(&self, filter: &str) -> Vec<(String, Retained)> {
        let now = now_ms();
        let st = self.lock();
        let mut v: Vec<(String, Retained)> = st
            .map
            .iter()
            .filter(|(t, r)| topic_matches(filter, t) && !r.expired(now))
            .map(|(t, r)| (t.clone(), r.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// The entry of `key`, expired or not.
    pub fn get(&self, key: &str) -> Option<Retained> {
        self.lock().map.get(key).cloned()
    }

    /// Every key held.
    pub fn keys(&self) -> Vec<String> {
        self.lock().map.keys().cloned().collect()
    }

    /// Keys whose entry has expired at `now`.
    pub fn expired_keys(&self, now: i64) -> Vec<String> {
        let st = self.lock();
        st.map
            .iter()
            .filter(|(_, r)| r.expired(now))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// The current generation (tests).
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrymq_storage::StorageConfig;

    fn msg(body: &'static str) -> Message {
        Message::new("a.b", Bytes::from_static(body.as_bytes()))
    }

    fn open(dir: &std::path::Path, max: usize) -> (Arc<Storage>, RetainedStore) {
        let s = Storage::open(dir, StorageConfig::default()).unwrap();
        let r = RetainedStore::open(s.clone(), "/", max).unwrap();
        (s, r)
    }

    #[test]
    fn session_end_records_expire_and_survive_reopen_apart_from_retained() {
        let tmp = tempfile::tempdir().unwrap();
        let now = now_ms();
        {
            let s = Storage::open(tmp.path(), StorageConfig::default()).unwrap();
            let ends =
                RetainedStore::open_kind(s.clone(), SESSIONS_LOG_KIND, "/", usize::MAX).unwrap();
            let mut short = msg("");
            short.properties.expiration_ms = Some(1_000);
            let mut long = msg("");
            long.properties.expiration_ms = Some(3_600_000);
            drop(ends.set("short", Some(short)).unwrap());
            drop(ends.set("long", Some(long)).unwrap());
            assert!(ends.expired_keys(now).is_empty());
            // The retained store of the same vhost does not see them.
            assert!(RetainedStore::open(s, "/", 10).unwrap().is_empty());
        }
        let s = Storage::open(tmp.path(), StorageConfig::default()).unwrap();
        let ends = RetainedStore::open_kind(s, SESSIONS_LOG_KIND, "/", usize::MAX).unwrap();
        assert!(ends.get("long").is_some());
        assert_eq!(ends.expired_keys(now + 2_000), vec!["short".to_string()]);
        drop(ends.set("short", None).unwrap());
        assert!(ends.get("short").is_none());
    }

    #[test]
    fn set_clear_and_rebuild() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let (_s, r) = open(tmp.path(), 10);
            r.set("a/b", Some(msg("1"))).unwrap();
            r.set("a/c", Some(msg("2"))).unwrap();
            r.set("a/b", Some(msg("3"))).unwrap();
            r.set("a/c", None).unwrap();
            r.set("$SYS/x", Some(msg("4"))).unwrap();
            assert_eq!(r.len(), 2);
            assert_eq!(r.matching("#").len(), 1, "# does not match $ topics");
            assert_eq!(r.matching("$SYS/#").len(), 1);
        }
        let (_s, r) = open(tmp.path(), 10);
        assert_eq!(r.len(), 2);
        let m = r.matching("a/+");
        assert_eq!(m.len(), 1);
        assert_eq!(&m[0].1.message.body[..], b"3");
    }

    #[test]
    fn bounded_by_max() {
        let tmp = tempfile::tempdir().unwrap();
        let (_s, r) = open(tmp.path(), 1);
        r.set("a", Some(msg("1"))).unwrap();
        assert!(matches!(
            r.set("b", Some(msg("2"))),
            Err(Error::RetainedFull(1))
        ));
        r.set("a", Some(msg("3"))).unwrap(); // replacing is fine
    }

    #[test]
    fn compaction_keeps_the_live_set_across_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let (_s, r) = open(tmp.path(), 100);
            for i in 0..(COMPACT_SLACK + 50) {
                r.set(&format!("t/{}", i % 5), Some(msg("x"))).unwrap();
            }
            r.set("t/0", None).unwrap();
            r.wait_compacted();
            assert!(r.generation() >= 1, "compacted");
            assert_eq!(r.len(), 4);
        }
        let (s, r) = open(tmp.path(), 100);
        assert_eq!(r.len(), 4);
        assert_eq!(
            s.list_logs(LOG_KIND).unwrap().len(),
            1,
            "old generation removed"
        );
    }

    #[test]
    fn sets_during_background_compactions_are_kept() {
        let tmp = tempfile::tempdir().unwrap();
        const TOPICS: u64 = 40;
        let last = |t: u64, n: u64| format!("{t}-{}", (n - 1 - t) / TOPICS * TOPICS + t);
        let min = 6 * (COMPACT_SLACK + 2 * TOPICS);
        let n;
        {
            let (_s, r) = open(tmp.path(), 1000);
            // Sets go on, while compactions run, until several have switched generation
            // (how many sets that takes depends on how fast each compaction is): every
            // value is distinct, so a set lost in a switch would show.
            let mut commits = Vec::new();
            let mut i = 0;
            while i < min || r.generation() < 3 {
                assert!(i < 10_000 * min, "no third generation after {i} sets");
                let t = i % TOPICS;
                let body = Bytes::from(format!("{t}-{i}"));
                let m = Message::new("a.b", body);
                commits.extend(r.set(&format!("t/{t}"), Some(m)).unwrap());
                i += 1;
            }
            n = i;
            for c in commits {
                c.wait().unwrap();
            }
            r.wait_compacted();
            for t in 0..TOPICS {
                let got = r.get(&format!("t/{t}")).unwrap();
                assert_eq!(got.message.body, last(t, n).as_bytes());
            }
        }
        let (s, r) = open(tmp.path(), 1000);
        assert_eq!(r.len(), TOPICS as usize);
        for t in 0..TOPICS {
            let got = r.get(&format!("t/{t}")).unwrap();
            assert_eq!(
                got.message.body,
                last(t, n).as_bytes(),
                "topic {t} after reopen"
            );
        }
        assert_eq!(
            s.list_logs(LOG_KIND).unwrap().len(),
            1,
            "one generation left"
        );
    }

    #[test]
    fn a_generation_without_base_is_ignored() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let (s, r) = open(tmp.path(), 10);
            r.set("a", Some(msg("1"))).unwrap();
            // a compaction cut short: a newer generation without its Base record
            let l = s.open_log(LOG_KIND, "/.7", LogOptions::default()).unwrap();
            l.append(&[encode(OP_SET, "zzz", 0, Some(&msg("bad")))], 0)
                .unwrap()
                .commit
                .wait()
                .unwrap();
        }
        let (_s, r) = open(tmp.path(), 10);
        assert_eq!(r.len(), 1);
        assert_eq!(r.matching("zzz").len(), 0);
    }
}
