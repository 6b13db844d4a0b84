//! Measuring: CPU seconds and resident memory of processes, and statistics
//! over timed passes.

use std::fs;
use std::time::Instant;

use anyhow::Context as _;

/// CPU seconds per process at one instant.
pub struct CpuSample {
    pub at: Instant,
    pub seconds: Vec<(&'static str, f64)>,
}

impl CpuSample {
    /// `name 12.3 s (85% of a core)` for each process, from `earlier` to `self`.
    pub fn since(&self, earlier: &CpuSample) -> String {
        let elapsed_s = self.at.duration_since(earlier.at).as_secs_f64().max(1e-9);
        let mut parts = Vec::new();
        for (name, now) in &self.seconds {
            let before = earlier.seconds.iter().find(|(other, _)| other == name).map_or(0.0, |(_, used)| *used);
            let used = now - before;
            parts.push(format!("{name} {used:.1} s ({:.0}% of a core)", used / elapsed_s * 100.0));
        }
        format!("over {elapsed_s:.1} s on {} cores: {}", cores(), parts.join(", "))
    }

    /// CPU seconds `name` used from `earlier` to `self` (0 for a process not in both).
    pub fn used_since(&self, earlier: &CpuSample, name: &str) -> f64 {
        let at =
            |sample: &CpuSample| sample.seconds.iter().find(|(other, _)| *other == name).map_or(0.0, |(_, used)| *used);
        at(self) - at(earlier)
    }

    /// `name 12.3 s (43% of the 2 cores)` for each process, from `earlier` to `self`.
    pub fn shares_since(&self, earlier: &CpuSample) -> String {
        let elapsed_s = self.at.duration_since(earlier.at).as_secs_f64().max(1e-9);
        let cores = cores();
        let parts: Vec<String> = self
            .seconds
            .iter()
            .map(|(name, _)| {
                let used = self.used_since(earlier, name);
                format!("{name} {used:.1} s ({:.0}% of the {cores} cores)", used / (elapsed_s * cores as f64) * 100.0)
            })
            .collect();
        format!("over {elapsed_s:.1} s: {}", parts.join(", "))
    }
}

pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// utime + stime of `/proc/<pid>/stat`, in seconds (clock ticks of 1/100 s,
/// the value of CLK_TCK on Linux).
pub fn cpu_seconds_of(pid: &str) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; the fields after it are space-separated.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// (VmRSS, VmHWM) in bytes of `/proc/<pid>`.
pub fn rss_of(pid: &str) -> anyhow::Result<(u64, u64)> {
    let status =
        fs::read_to_string(format!("/proc/{pid}/status")).with_context(|| format!("read /proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let line = status.lines().find(|line| line.starts_with(name)).with_context(|| format!("no {name}"))?;
        let kib: u64 = line.split_whitespace().nth(1).context("no value")?.parse()?;
        Ok(kib * 1024)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

pub fn best(seconds: &[f64]) -> f64 {
    seconds.iter().copied().fold(f64::INFINITY, f64::min)
}

pub fn median(seconds: &[f64]) -> f64 {
    let mut sorted = seconds.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

/// The value at `fraction` of the sorted `values` (nearest rank).
pub fn percentile(sorted: &[f64], fraction: f64) -> f64 {
    let rank = ((fraction * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

pub fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}
