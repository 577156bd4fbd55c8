//! Measurements: latency histograms, process CPU time and memory from `/proc`, and the report
//! (a human table or one JSON line).

use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde_json::{Map, Value};

/// A latency histogram in nanoseconds (1 ns to 100 s, 3 significant digits).
#[derive(Debug, Clone)]
pub(crate) struct Latency(Histogram<u64>);

impl Latency {
    /// An empty histogram.
    #[allow(clippy::expect_used)]
    pub(crate) fn new() -> Latency {
        // Constant bounds that hdrhistogram accepts: this cannot fail.
        Latency(Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid bounds"))
    }

    /// Records one latency.
    #[inline]
    pub(crate) fn record(&mut self, d: Duration) {
        self.0.saturating_record((d.as_nanos() as u64).max(1));
    }

    /// Number of samples.
    pub(crate) fn len(&self) -> u64 {
        self.0.len()
    }

    /// Writes p50, p99, p99.9 and max in microseconds under `prefix`.
    pub(crate) fn report(&self, r: &mut Report, prefix: &str) {
        let us = |v: u64| (v as f64 / 1000.0 * 10.0).round() / 10.0;
        let empty = self.0.is_empty();
        let mean = if empty {
            0
        } else {
            self.0.mean().round() as u64
        };
        r.num(&format!("{prefix}mean_us"), us(mean));
        for (name, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999)] {
            let v = if empty {
                0
            } else {
                self.0.value_at_quantile(q)
            };
            r.num(&format!("{prefix}{name}_us"), us(v));
        }
        r.num(
            &format!("{prefix}max_us"),
            us(if empty { 0 } else { self.0.max() }),
        );
    }
}

/// The histogram every worker of a run records into: one histogram stays in cache, where one per
/// connection spread the records over as many tables (2.6% of the generator's CPU at 100 × 1).
#[derive(Debug, Clone)]
pub(crate) struct SharedLatency(Arc<Mutex<Latency>>);

impl SharedLatency {
    /// An empty shared histogram.
    pub(crate) fn new() -> SharedLatency {
        SharedLatency(Arc::new(Mutex::new(Latency::new())))
    }

    /// Records one latency.
    #[inline]
    pub(crate) fn record(&self, d: Duration) {
        self.0.lock().record(d);
    }

    /// What was recorded so far.
    pub(crate) fn snapshot(&self) -> Latency {
        self.0.lock().clone()
    }
}

/// CPU time (user + system) of a process, from `/proc/<pid>/stat`.
pub(crate) fn cpu_time(pid: Option<u32>) -> Option<Duration> {
    cpu_times(pid).map(|t| t.user + t.system)
}

/// CPU time of a process, user and system apart.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CpuTimes {
    /// In the process's own code (`utime`).
    pub(crate) user: Duration,
    /// In the kernel on the process's behalf (`stime`): its system calls, and on loopback the
    /// peer's TCP receive work that a send runs inline.
    pub(crate) system: Duration,
}

/// [`CpuTimes`] of a process (`None`: this one), from `/proc/<pid>/stat`.
pub(crate) fn cpu_times(pid: Option<u32>) -> Option<CpuTimes> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let text = std::fs::read_to_string(path).ok()?;
    // The command name (field 2) may hold spaces: count the fields after its closing paren.
    let rest = &text[text.rfind(')')? + 2..];
    let mut f = rest.split(' ');
    // After the paren come field 3 (state) ...; utime and stime are fields 14 and 15.
    let utime: u64 = f.nth(11)?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    let hz = rustix::param::clock_ticks_per_second().max(1);
    let ticks = |t: u64| Duration::from_nanos(t * 1_000_000_000 / hz);
    Some(CpuTimes {
        user: ticks(utime),
        system: ticks(stime),
    })
}

/// Time on a CPU of every thread of a process, from `/proc/<pid>/task/*/schedstat` (in ns, where
/// `/proc/<pid>/stat` counts 10 ms ticks: too coarse for a process that works a few ms a second,
/// such as a store under a light load).
pub(crate) fn cpu_time_fine(pid: u32) -> Option<Duration> {
    let mut ns = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        // A thread may end between the listing and the read: it is skipped.
        if let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) {
            ns += text.split(' ').next()?.trim().parse::<u64>().ok()?;
        }
    }
    Some(Duration::from_nanos(ns))
}

/// Resident memory of a process in KiB (`VmRSS` in `/proc/<pid>/status`).
pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// CPU use of the generator and, when its pid is known, of the server over the measured window.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CpuWindow {
    gen_start: Option<Duration>,
    srv_start: Option<CpuTimes>,
    pid: Option<u32>,
}

impl CpuWindow {
    /// Starts the window now.
    pub(crate) fn start(pid: Option<u32>) -> CpuWindow {
        CpuWindow {
            gen_start: cpu_time(None),
            srv_start: pid.and_then(|p| cpu_times(Some(p))),
            pid,
        }
    }

    /// Ends the window now.
    pub(crate) fn end(&self) -> CpuUse {
        CpuUse {
            generator: self
                .gen_start
                .zip(cpu_time(None))
                .map(|(a, b)| b.saturating_sub(a)),
            server: self
                .srv_start
                .zip(self.pid.and_then(|p| cpu_times(Some(p))))
                .map(|(a, b)| CpuTimes {
                    user: b.user.saturating_sub(a.user),
                    system: b.system.saturating_sub(a.system),
                }),
        }
    }
}

/// CPU time used over a window.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CpuUse {
    generator: Option<Duration>,
    server: Option<CpuTimes>,
}

impl CpuUse {
    /// The server's CPU time over the window, when its pid was known.
    pub(crate) fn server(&self) -> Option<Duration> {
        self.server.map(|t| t.user + t.system)
    }

    /// Reports CPU share over `wall` and CPU time per `messages` (named `unit`).
    pub(crate) fn report(&self, r: &mut Report, wall: Duration, messages: u64, unit: &str) {
        let wall = wall.as_secs_f64().max(1e-9);
        let per = |d: Duration| {
            if messages == 0 {
                0.0
            } else {
                round2(d.as_secs_f64() * 1e6 / messages as f64)
            }
        };
        if let Some(d) = self.generator {
            r.num("gen_cpu_pct", round1(d.as_secs_f64() / wall * 100.0));
            r.num(&format!("gen_cpu_us_per_{unit}"), per(d));
        }
        if let Some(t) = self.server {
            let d = t.user + t.system;
            r.num("server_cpu_pct", round1(d.as_secs_f64() / wall * 100.0));
            r.num(&format!("server_cpu_us_per_{unit}"), per(d));
            // The kernel's part: what no server code can save (system calls, TCP).
            r.num(&format!("server_sys_us_per_{unit}"), per(t.system));
        }
    }
}

/// Rounds to one decimal.
pub(crate) fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// Rounds to two decimals.
pub(crate) fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// The result of one run: ordered fields.
#[derive(Debug, Default)]
pub(crate) struct Report {
    fields: Map<String, Value>,
    order: Vec<String>,
}

impl Report {
    /// A report for `scenario`.
    pub(crate) fn new(scenario: &str) -> Report {
        let mut r = Report::default();
        r.set("scenario", Value::from(scenario));
        r
    }

    /// Sets a field.
    pub(crate) fn set(&mut self, k: &str, v: Value) {
        if !self.fields.contains_key(k) {
            self.order.push(k.to_owned());
        }
        self.fields.insert(k.to_owned(), v);
    }

    /// Sets a number.
    pub(crate) fn num(&mut self, k: &str, v: impl Into<Value>) {
        self.set(k, v.into());
    }

    /// One JSON line.
    pub(crate) fn json(&self) -> String {
        let mut s = String::from("{");
        for k in &self.order {
            if let Some(v) = self.fields.get(k) {
                if s.len() > 1 {
                    s.push(',');
                }
                s.push_str(&Value::from(k.as_str()).to_string());
                s.push(':');
                s.push_str(&v.to_string());
            }
        }
        s.push('}');
        s
    }

    /// A two-column table.
    pub(crate) fn table(&self) -> String {
        let w = self.order.iter().map(String::len).max().unwrap_or(0);
        let mut s = String::new();
        for k in &self.order {
            if let Some(v) = self.fields.get(k) {
                let v = match v {
                    Value::String(t) => t.clone(),
                    other => other.to_string(),
                };
                s.push_str(&format!("{k:<w$}  {v}\n"));
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cpu_time_and_memory_are_readable() {
        assert!(cpu_time(None).is_some());
        assert!(cpu_time_fine(std::process::id()).is_some());
        assert!(rss_kib(std::process::id()).unwrap_or(0) > 0);
    }

    #[test]
    fn latency_percentiles() {
        let mut l = Latency::new();
        for i in 1..=1000u64 {
            l.record(Duration::from_micros(i));
        }
        let mut r = Report::new("x");
        l.report(&mut r, "");
        assert!(r.json().contains("\"p50_us\":500"));
    }
}
