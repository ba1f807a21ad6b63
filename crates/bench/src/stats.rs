//! Percentiles and sampling of a server process's CPU and RSS from /proc.

use std::time::Instant;

/// p50/p99/max of samples.
#[derive(Debug, Default, Clone, Copy)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
    /// Sample count.
    pub n: usize,
}

impl Percentiles {
    /// Of a set of samples (unsorted).
    pub fn of(samples: &[f64]) -> Percentiles {
        if samples.is_empty() {
            return Percentiles::default();
        }
        let mut v = samples.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        Percentiles { p50: at(0.5), p99: at(0.99), max: v[v.len() - 1], n: v.len() }
    }
}

/// The median.
pub fn median(samples: &[f64]) -> f64 {
    Percentiles::of(samples).p50
}

/// CPU and RSS of a process, from /proc/PID/stat and /proc/PID/status.
pub struct ServerSampler {
    pid: u32,
    last: Option<(Instant, u64)>,
    cpu: Vec<f64>,
    rss_max_kib: u64,
    /// Every sample after the first: (interval start, end, CPU percent over it, RSS at its end).
    timed: Vec<(Instant, Instant, f64, u64)>,
}

/// The server's CPU and RSS over a window of a run.
#[derive(Debug, Default, Clone, Copy)]
pub struct Window {
    /// Median CPU percent (of one core) of the samples whose interval lies in the window.
    pub cpu_percent_median: f64,
    /// RSS at the last of them and the largest, KiB.
    pub rss_last_kib: u64,
    pub rss_max_kib: u64,
    /// How many samples.
    pub samples: usize,
}

impl Window {
    /// As JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "cpu_percent_median": self.cpu_percent_median,
            "rss_last_kib": self.rss_last_kib,
            "rss_max_kib": self.rss_max_kib,
            "samples": self.samples,
        })
    }
}

fn clock_ticks() -> f64 {
    100.0 // USER_HZ on Linux
}

impl ServerSampler {
    /// Samples `pid`.
    pub fn new(pid: u32) -> ServerSampler {
        ServerSampler { pid, last: None, cpu: Vec::new(), rss_max_kib: 0, timed: Vec::new() }
    }

    fn ticks(&self) -> Option<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).ok()?;
        let after = stat.rsplit_once(')')?.1;
        let f: Vec<&str> = after.split_whitespace().collect();
        Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
    }

    fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse().ok())
    }

    /// CPU percent of one core since the last sample, and RSS in KiB.
    pub fn sample(&mut self) -> Option<(f64, u64)> {
        let now = Instant::now();
        let ticks = self.ticks()?;
        let rss = self.rss_kib()?;
        self.rss_max_kib = self.rss_max_kib.max(rss);
        let cpu = match self.last {
            Some((t, k)) => (ticks - k) as f64 / clock_ticks() / now.duration_since(t).as_secs_f64() * 100.0,
            None => 0.0,
        };
        if let Some((t, _)) = self.last {
            self.cpu.push(cpu);
            self.timed.push((t, now, cpu, rss));
        }
        self.last = Some((now, ticks));
        Some((cpu, rss))
    }

    /// The samples taken wholly from `from` to `to`; `None` when there is none.
    pub fn window(&self, from: Instant, to: Instant) -> Option<Window> {
        let inside: Vec<_> = self.timed.iter().filter(|(a, z, _, _)| *a >= from && *z <= to).collect();
        let last = inside.last()?;
        Some(Window {
            cpu_percent_median: median(&inside.iter().map(|s| s.2).collect::<Vec<_>>()),
            rss_last_kib: last.3,
            rss_max_kib: inside.iter().map(|s| s.3).max().unwrap_or(0),
            samples: inside.len(),
        })
    }

    /// Median CPU and peak RSS as JSON.
    pub fn summary(&self) -> serde_json::Value {
        serde_json::json!({ "cpu_percent_median": median(&self.cpu), "rss_max_kib": self.rss_max_kib })
    }
}
