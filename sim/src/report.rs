//! Results of runs: the side-by-side table, JSON, and an HTML page with
//! plotters charts. All times are virtual (madsim), so they are free of
//! machine noise and identical for the same seed.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::time::Duration;

use engine::driver::CallCounts;
use engine::lock::{Domain, LockMetrics, Mode};
use engine::{LayoutKind, LockPolicy};
use hdrhistogram::Histogram;
use serde::Serialize;

use report::charts;

use crate::migration::MigrationSummary;
use crate::scenario::Metric;
use crate::scenario::Scenario;
use crate::workload::{OpClass, Shared};

/// Lock and call counters summed over every store instance of a run.
#[derive(Debug, Clone, Default)]
pub struct Accumulated {
    pub locks: Option<LockMetrics>,
    pub calls: CallCounts,
}

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LockRow {
    pub domain: String,
    pub acquisitions: u64,
    pub exclusive: u64,
    pub wait_p99_ms: f64,
    pub hold_total_ms: f64,
}

/// One run's figures.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub scenario: String,
    pub layout: String,
    pub policy: String,
    pub seed: u64,
    pub virtual_secs: f64,
    pub ops: u64,
    pub throughput: f64,
    pub latency: BTreeMap<String, Latency>,
    /// Per class: operations acknowledged and failed.
    pub outcomes: BTreeMap<String, (u64, u64)>,
    pub locks: Vec<LockRow>,
    pub driver_calls: u64,
    pub calls_per_op: f64,
    pub refused: u64,
    pub retries: u64,
    /// Acknowledged touches invariant 10 checked while GC ran (0 without a GC delay).
    pub young_checked: u64,
    /// Writes refused for lack of space, and manifests acknowledged after the first.
    pub no_space: u64,
    pub acked_after_full: u64,
    pub crashes: usize,
    /// Disk faults delivered: reads answered with a flipped bit, and power
    /// cuts that tore a write a name still reaches.
    pub flipped_reads: u64,
    pub torn_writes: u64,
    pub migration: Option<MigrationSummary>,
    /// With several instances: how often their fences stopped one.
    pub cluster: Option<ClusterFigures>,
    pub violations: Vec<String>,
    pub final_hash: String,
    pub store_ops: u64,
    /// What the run cost this process: see [`RunCost`].
    pub wall_ms: f64,
    pub cpu_ms: f64,
}

/// With several instances: the times a fence stopped an instance that
/// could have acted on a stale view (the faults must reach them, or the
/// run proved little).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ClusterFigures {
    /// Lock checks before a write that found the session unconfirmed
    /// (partitioned, paused, the service gone): the write did not happen.
    pub stale_lock_checks: u64,
    /// Sessions the service had ended when their instance next spoke.
    pub sessions_ended: u64,
    /// index.json rewrites refused because another instance had written
    /// it since it was read (compare-and-swap).
    pub swaps_refused: u64,
    /// Metadata writes refused by a lease taken over: its epoch (the
    /// fencing token) or its row had moved on.
    pub fenced_writes: u64,
}

/// Store operations and what they cost, summed over runs: the wall-clock
/// time of each run (from its runtime's creation to its drop) and the CPU
/// time its thread used meanwhile. On a shared machine the wall time grows
/// with the load of other processes; the CPU time does not, so the two
/// rates side by side say how much of a slow figure is the machine.
#[derive(Debug, Default, Clone, Copy)]
pub struct RunCost {
    pub store_ops: u64,
    pub wall_ms: f64,
    pub cpu_ms: f64,
}

impl std::ops::AddAssign for RunCost {
    fn add_assign(&mut self, other: RunCost) {
        self.store_ops += other.store_ops;
        self.wall_ms += other.wall_ms;
        self.cpu_ms += other.cpu_ms;
    }
}

impl RunCost {
    /// Store operations per second of the runs' wall time, and per second
    /// of their threads' CPU time.
    pub fn rates(&self) -> (f64, f64) {
        let per = |ms: f64| self.store_ops as f64 / (ms / 1e3).max(1e-9);
        (per(self.wall_ms), per(self.cpu_ms))
    }
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

fn latency(h: &Histogram<u64>) -> Latency {
    Latency {
        count: h.len(),
        p50_ms: ms(h.value_at_quantile(0.5)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        p999_ms: ms(h.value_at_quantile(0.999)),
    }
}

impl RunResult {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        scenario: &Scenario,
        layout: LayoutKind,
        policy: LockPolicy,
        seed: u64,
        elapsed: Duration,
        shared: &Shared,
        acc: Accumulated,
        crashes: usize,
        migration: Option<MigrationSummary>,
        final_hash: String,
    ) -> RunResult {
        let ops = shared.stats.ops.load(Ordering::Relaxed);
        let virtual_secs = elapsed.as_secs_f64();
        let latency = OpClass::ALL
            .iter()
            .map(|c| (c.name().to_string(), latency(&shared.stats.histogram(*c))))
            .filter(|(_, l)| l.count > 0)
            .collect();
        let outcomes = OpClass::ALL
            .iter()
            .map(|c| (c.name().to_string(), shared.stats.outcomes(*c)))
            .filter(|(_, (a, f))| a + f > 0)
            .collect();
        let mut locks = Vec::new();
        if let Some(m) = &acc.locks {
            for domain in Domain::ALL {
                let (s, x) = (m.get(domain, Mode::Shared), m.get(domain, Mode::Exclusive));
                let mut wait = s.wait.clone();
                let _ = wait.add(&x.wait);
                if wait.is_empty() {
                    continue;
                }
                locks.push(LockRow {
                    domain: domain.to_string(),
                    acquisitions: wait.len(),
                    exclusive: x.acquisitions(),
                    wait_p99_ms: ms(wait.value_at_quantile(0.99)),
                    hold_total_ms: ms(s.total_hold_ns() + x.total_hold_ns()),
                });
            }
        }
        RunResult {
            scenario: scenario.name.clone(),
            layout: layout.to_string(),
            policy: policy.to_string(),
            seed,
            virtual_secs,
            ops,
            throughput: if virtual_secs > 0.0 {
                ops as f64 / virtual_secs
            } else {
                0.0
            },
            latency,
            outcomes,
            locks,
            driver_calls: acc.calls.total(),
            calls_per_op: acc.calls.total() as f64 / ops.max(1) as f64,
            refused: shared.stats.refused.load(Ordering::Relaxed),
            retries: shared.stats.retries.load(Ordering::Relaxed),
            young_checked: shared.checker.touches_checked(),
            no_space: shared.stats.no_space.load(Ordering::Relaxed),
            acked_after_full: shared.stats.acked_after_full.load(Ordering::Relaxed),
            crashes,
            flipped_reads: 0,
            torn_writes: 0,
            migration,
            cluster: None,
            violations: shared.checker.violations(),
            final_hash,
            store_ops: shared.stats.store_ops.load(Ordering::Relaxed),
            wall_ms: 0.0,
            cpu_ms: 0.0,
        }
    }

    pub fn cost(&self) -> RunCost {
        RunCost {
            store_ops: self.store_ops,
            wall_ms: self.wall_ms,
            cpu_ms: self.cpu_ms,
        }
    }

    pub fn label(&self) -> String {
        format!("{}/{}", self.layout, self.policy)
    }

    /// One figure of this run.
    pub fn metric(&self, metric: Metric) -> Option<f64> {
        match metric {
            Metric::Throughput => Some(self.throughput),
            Metric::QuietP99 => self
                .latency
                .get(OpClass::PullQuiet.name())
                .map(|l| l.p99_ms),
            Metric::P99(class) => self.latency.get(class.name()).map(|l| l.p99_ms),
        }
    }
}

/// The side-by-side table for one seed.
pub fn table(results: &[RunResult]) -> String {
    let mut out = String::new();
    let classes: Vec<&str> = OpClass::ALL
        .iter()
        .map(|c| c.name())
        .filter(|c| results.iter().any(|r| r.latency.contains_key(*c)))
        .collect();
    let _ = write!(out, "{:<18} {:>9} {:>8}", "layout/policy", "ops/s", "ops");
    for c in &classes {
        let _ = write!(out, " {:>22}", format!("{c} p50/p99/p999 ms"));
    }
    let _ = writeln!(
        out,
        " {:>10} {:>6} {:>5}  {:<16}",
        "calls/op", "crash", "viol", "final hash"
    );
    for r in results {
        let _ = write!(out, "{:<18} {:>9.0} {:>8}", r.label(), r.throughput, r.ops);
        for c in &classes {
            let cell = r.latency.get(*c).map_or("-".into(), |l| {
                format!("{:.2}/{:.2}/{:.2}", l.p50_ms, l.p99_ms, l.p999_ms)
            });
            let _ = write!(out, " {cell:>22}");
        }
        let _ = writeln!(
            out,
            " {:>10.1} {:>6} {:>5}  {:<16}",
            r.calls_per_op,
            r.crashes,
            r.violations.len(),
            r.final_hash
        );
    }
    let _ = writeln!(out, "\nlock wait (p99) and hold (total), virtual ms:");
    for r in results {
        let cells: Vec<String> = r
            .locks
            .iter()
            .map(|l| {
                format!(
                    "{} n={} x={} wait99={:.2} hold={:.0}",
                    l.domain, l.acquisitions, l.exclusive, l.wait_p99_ms, l.hold_total_ms
                )
            })
            .collect();
        let _ = writeln!(out, "  {:<16} {}", r.label(), cells.join(" | "));
    }
    let _ = writeln!(out, "\nacknowledged (failed) operations per class:");
    for r in results {
        let cells: Vec<String> = r
            .outcomes
            .iter()
            .map(|(c, (acked, failed))| format!("{c} {acked} ({failed})"))
            .collect();
        let _ = writeln!(out, "  {:<16} {}", r.label(), cells.join(", "));
    }
    for r in results.iter().filter(|r| r.young_checked > 0) {
        let _ = writeln!(
            out,
            "delay contract ({}): {} acknowledged touches checked inside the delay while GC ran; {} manifest puts retried after GC took an untouched blob",
            r.label(),
            r.young_checked,
            r.retries
        );
    }
    for r in results.iter() {
        let Some(c) = r.cluster else { continue };
        let _ = writeln!(
            out,
            "several instances ({}): {} lock checks found the session unconfirmed; {} sessions ended by the service; {} index.json swaps refused; {} writes fenced by a lease taken over",
            r.label(),
            c.stale_lock_checks,
            c.sessions_ended,
            c.swaps_refused,
            c.fenced_writes
        );
    }
    for r in results.iter().filter(|r| r.no_space > 0) {
        let _ = writeln!(
            out,
            "full disk ({}): {} writes refused for space; {} manifests acknowledged after the first refusal",
            r.label(),
            r.no_space,
            r.acked_after_full
        );
    }
    for r in results
        .iter()
        .filter(|r| r.flipped_reads + r.torn_writes > 0)
    {
        let _ = writeln!(
            out,
            "disk faults ({}): {} reads answered with a flipped bit; {} power cuts tore a write",
            r.label(),
            r.flipped_reads,
            r.torn_writes
        );
    }
    for r in results {
        if let Some(m) = &r.migration {
            let _ = writeln!(
                out,
                "migration ({}): {} repos, {} operations; {} crash(es) and {} full-disk stop(s) delivered of {} planned; {} relinked, {} bytes copied, {} markers removed, {:.0} virtual ms",
                m.mode,
                m.repos,
                m.ops,
                m.crashes,
                m.no_space_stops,
                m.planned_stops,
                m.blobs_relinked,
                m.bytes_copied,
                m.markers_removed,
                m.virtual_ms
            );
            break;
        }
    }
    out
}

/// A self-contained HTML page: table, charts, violations.
pub fn html(scenario: &Scenario, results: &[RunResult], command: &str) -> String {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    let mut page = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>ocistore sim: {name}</title>\
         <style>body{{font-family:sans-serif;max-width:980px;margin:2em auto}}pre{{background:#f6f6f6;padding:1em;overflow-x:auto}}</style>\
         </head><body><h1>Simulation: {name}</h1><p>{desc}</p><p>Regenerate: <code>{cmd}</code>. Times are virtual (madsim).</p>",
        name = esc(&scenario.name),
        desc = esc(&scenario.description),
        cmd = esc(command)
    );
    page.push_str(&charts::bars(
        "Throughput",
        "ops / virtual s",
        &results
            .iter()
            .map(|r| (r.label(), r.throughput))
            .collect::<Vec<_>>(),
    ));
    for class in OpClass::ALL.map(OpClass::name) {
        let rows: Vec<(String, f64)> = results
            .iter()
            .filter_map(|r| r.latency.get(class).map(|l| (r.label(), l.p99_ms)))
            .collect();
        if !rows.is_empty() {
            page.push_str(&charts::bars(
                &format!("{class}: p99 latency"),
                "virtual ms",
                &rows,
            ));
        }
    }
    let holds: Vec<(String, f64)> = results
        .iter()
        .map(|r| {
            (
                r.label(),
                r.locks
                    .iter()
                    .find(|l| l.domain == "blobstore" || l.domain == "global")
                    .map_or(0.0, |l| l.wait_p99_ms),
            )
        })
        .collect();
    page.push_str(&charts::bars(
        "Wait p99 on the widest lock (global or blobstore)",
        "virtual ms",
        &holds,
    ));
    page.push_str(&format!(
        "<h2>Table</h2><pre>{}</pre>",
        esc(&table(results))
    ));
    for r in results.iter().filter(|r| !r.violations.is_empty()) {
        page.push_str(&format!(
            "<h2>Violations: {}</h2><pre>{}</pre>",
            esc(&r.label()),
            esc(&r.violations.join("\n"))
        ));
    }
    page.push_str("</body></html>\n");
    page
}
