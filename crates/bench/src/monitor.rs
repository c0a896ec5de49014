//! Background tasks of a run: the progress line and the broker's CPU/RSS sampler.

use std::io::{IsTerminal, Write};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::procstat::{self, Sample};
use crate::run::Ctx;

/// Prints `sent / confirmed / received` with their rates on one stderr line, every second,
/// while `done` is false. Does nothing when stderr is not a terminal.
pub fn progress(ctx: Arc<Ctx>, mut done: watch::Receiver<bool>) -> Option<JoinHandle<()>> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    Some(tokio::spawn(async move {
        let mut last = (0u64, 0u64, 0u64);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = done.changed() => break,
            }
            let now = (
                ctx.sent.load(Ordering::Relaxed),
                ctx.confirmed.load(Ordering::Relaxed),
                ctx.received.load(Ordering::Relaxed),
            );
            let secs = ctx.now_ns() as f64 / 1e9;
            let mut err = std::io::stderr().lock();
            let _ = write!(
                err,
                "\r[{secs:6.1}s] sent {:>11} ({:>8}/s)  confirmed {:>11}  received {:>11} ({:>8}/s)   ",
                now.0,
                now.0 - last.0,
                now.1,
                now.2,
                now.2 - last.2
            );
            let _ = err.flush();
            last = now;
        }
        let _ = write!(std::io::stderr(), "\r{:100}\r", "");
    }))
}

/// Samples of the broker's process tree.
#[derive(Debug, Clone, Default)]
pub struct Samples {
    /// (ns on the run clock, sample)
    pub points: Vec<(u64, Sample)>,
    pub peak_rss: u64,
}

/// Samples `pid`'s tree every 250 ms until `done`; returns every sample.
pub fn sampler(ctx: Arc<Ctx>, pid: u32, mut done: watch::Receiver<bool>) -> JoinHandle<Samples> {
    tokio::spawn(async move {
        let mut s = Samples::default();
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            let t = ctx.now_ns();
            if let Some(x) = tokio::task::spawn_blocking(move || procstat::sample(pid))
                .await
                .ok()
                .flatten()
            {
                s.peak_rss = s.peak_rss.max(x.rss_bytes);
                s.points.push((t, x));
            }
            if *done.borrow() {
                break;
            }
            tokio::select! {
                _ = tick.tick() => {}
                r = done.changed() => if r.is_err() { break },
            }
        }
        s
    })
}

impl Samples {
    /// The CPU seconds at the sample nearest to `ns` (linear interpolation between samples).
    pub fn cpu_at(&self, ns: u64) -> Option<f64> {
        let i = self.points.partition_point(|(t, _)| *t <= ns);
        match (i.checked_sub(1).map(|j| self.points[j]), self.points.get(i)) {
            (Some((t0, a)), Some(&(t1, b))) if t1 > t0 => {
                let f = (ns - t0) as f64 / (t1 - t0) as f64;
                Some(a.cpu_s + (b.cpu_s - a.cpu_s) * f)
            }
            (Some((_, a)), _) => Some(a.cpu_s),
            (None, Some((_, b))) => Some(b.cpu_s),
            (None, None) => None,
        }
    }

    /// One RSS point a second (the last sample of each second), from `from_ns`.
    pub fn rss_curve(&self, from_ns: u64) -> Vec<(f64, u64)> {
        let mut out: Vec<(f64, u64)> = Vec::new();
        let mut next = from_ns;
        for (t, s) in &self.points {
            if *t >= next {
                out.push(((*t - from_ns.min(*t)) as f64 / 1e9, s.rss_bytes));
                next = t + 1_000_000_000;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t: u64, cpu: f64, rss: u64) -> (u64, Sample) {
        (
            t,
            Sample {
                cpu_s: cpu,
                rss_bytes: rss,
                processes: 1,
            },
        )
    }

    #[test]
    fn cpu_is_interpolated_between_samples() {
        let s = Samples {
            points: vec![at(0, 1.0, 10), at(1_000, 2.0, 20), at(2_000, 4.0, 30)],
            peak_rss: 30,
        };
        assert_eq!(s.cpu_at(500), Some(1.5));
        assert_eq!(s.cpu_at(1_500), Some(3.0));
        assert_eq!(s.cpu_at(5_000), Some(4.0));
        assert_eq!(Samples::default().cpu_at(1), None);
    }

    #[test]
    fn rss_curve_keeps_one_point_a_second() {
        let points = (0..10).map(|i| at(i * 300_000_000, 0.0, i)).collect();
        let s = Samples {
            points,
            peak_rss: 9,
        };
        let c = s.rss_curve(0);
        assert_eq!(c.iter().map(|p| p.1).collect::<Vec<_>>(), vec![0, 4, 8]);
    }
}
