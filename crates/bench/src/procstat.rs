//! CPU time and resident memory of a broker process and its descendants, read from `/proc`.
//!
//! RabbitMQ's `rabbitmq-server` is a shell script whose child is the Erlang VM, so a broker
//! is measured as a process tree: the given pid and every process descended from it.

use std::collections::HashMap;
use std::fs;

/// CPU time (user + system) and resident set of a process tree at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    pub cpu_s: f64,
    pub rss_bytes: u64,
    /// Processes in the tree that were read.
    pub processes: usize,
}

/// Parses `/proc/PID/stat`: (ppid, utime + stime in clock ticks). The command name may
/// contain spaces and parentheses, so fields are counted after the last `)`.
pub fn parse_stat(stat: &str) -> Option<(u32, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(0) ppid(1) ... utime(11) stime(12).
    let ppid = f.get(1)?.parse().ok()?;
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((ppid, utime + stime))
}

/// Parses `VmRSS:` (kB) from `/proc/PID/status`, in bytes.
pub fn parse_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// Every process's parent, for finding descendants.
fn all_parents() -> HashMap<u32, u32> {
    let mut m = HashMap::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return m;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Some((ppid, _)) = fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .as_deref()
            .and_then(parse_stat)
        {
            m.insert(pid, ppid);
        }
    }
    m
}

/// `root` and its descendants, given every process's parent.
pub fn tree(root: u32, parents: &HashMap<u32, u32>) -> Vec<u32> {
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        let mut kids: Vec<u32> = parents
            .iter()
            .filter(|(c, pp)| **pp == p && !out.contains(c))
            .map(|(c, _)| *c)
            .collect();
        kids.sort_unstable();
        out.extend(kids);
        i += 1;
    }
    out
}

/// CPU time (user + system, all threads) of this process alone, without its children (the
/// brokers `compare` starts are children of the load generator).
pub fn self_cpu_s() -> Option<f64> {
    let stat = fs::read_to_string("/proc/self/stat").ok()?;
    parse_stat(&stat).map(|(_, t)| t as f64 / clock_ticks())
}

/// Samples the tree rooted at `pid`; `None` if `pid` is gone.
pub fn sample(pid: u32) -> Option<Sample> {
    let ticks = clock_ticks();
    let parents = all_parents();
    if !parents.contains_key(&pid) {
        return None;
    }
    let mut s = Sample::default();
    for p in tree(pid, &parents) {
        let stat = fs::read_to_string(format!("/proc/{p}/stat")).ok();
        let status = fs::read_to_string(format!("/proc/{p}/status")).ok();
        if let (Some((_, t)), Some(rss)) = (
            stat.as_deref().and_then(parse_stat),
            status.as_deref().and_then(parse_rss),
        ) {
            s.cpu_s += t as f64 / ticks;
            s.rss_bytes += rss;
            s.processes += 1;
        }
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_a_hostile_command_name() {
        let stat =
            "4242 (we ird) (x)) S 17 4242 4242 0 -1 4194560 1 0 0 0 150 25 0 0 20 0 4 0 1 2 3";
        assert_eq!(parse_stat(stat), Some((17, 175)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn rss_from_status() {
        let status = "Name:\tferrymq\nVmPeak:\t  999 kB\nVmRSS:\t   2048 kB\nThreads:\t3\n";
        assert_eq!(parse_rss(status), Some(2 * 1024 * 1024));
        assert_eq!(parse_rss("Name: x\n"), None);
    }

    #[test]
    fn descendants_of_a_pid() {
        let parents: HashMap<u32, u32> = [(2, 1), (3, 2), (4, 2), (5, 3), (9, 8)].into();
        assert_eq!(tree(2, &parents), vec![2, 3, 4, 5]);
        assert_eq!(tree(9, &parents), vec![9]);
    }

    #[test]
    fn samples_this_process() {
        let s = sample(std::process::id()).expect("we exist");
        assert!(s.rss_bytes > 0 && s.processes >= 1, "{s:?}");
        assert_eq!(sample(u32::MAX), None);
    }
}
