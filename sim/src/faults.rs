//! The fault plan: when the power goes, when latency spikes, drawn from the
//! scenario and the seed before the run starts (so a seed names one plan).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use engine::driver::{CallKind, LatencyModel};

use crate::rng::Rng;
use crate::scenario::{Latency, Scenario};

#[derive(Debug, Clone)]
pub struct FaultPlan {
    /// Virtual times of power cuts, sorted.
    pub crashes: Vec<Duration>,
    /// (start, end, factor) latency spikes.
    pub spikes: Vec<(Duration, Duration, u64)>,
    /// Machine-operation counts at which the migration loses power.
    pub migration_crashes: Vec<u64>,
    /// Where seeded power cuts fall in the migration, as fractions of its
    /// length (known only once the dataset is written).
    pub migration_crash_fractions: Vec<f64>,
    pub migration_no_space: Vec<u64>,
}

impl FaultPlan {
    pub fn draw(s: &Scenario, rng: &Rng) -> FaultPlan {
        let mut rng = rng.fork(0xfa17);
        let duration = s.workload.duration_s;
        let mut crashes: Vec<Duration> = s
            .faults
            .crash_at_s
            .iter()
            .map(|t| Duration::from_secs_f64(*t))
            .collect();
        for _ in 0..s.faults.random_crashes {
            crashes.push(Duration::from_secs_f64(
                duration * (0.05 + 0.9 * rng.unit()),
            ));
        }
        crashes.sort();
        let spikes = s
            .faults
            .latency_spikes
            .iter()
            .map(|sp| {
                (
                    Duration::from_secs_f64(sp.at_s),
                    Duration::from_secs_f64(sp.at_s + sp.duration_s),
                    sp.factor.max(1),
                )
            })
            .collect();
        let (mut migration_crashes, mut migration_no_space) = (Vec::new(), Vec::new());
        let mut migration_crash_fractions = Vec::new();
        if let Some(m) = &s.migration {
            migration_crashes = m.crash_after_ops.clone();
            migration_crash_fractions = (0..m.random_crashes).map(|_| rng.unit()).collect();
            migration_no_space = m.no_space_after_ops.clone();
        }
        FaultPlan {
            crashes,
            spikes,
            migration_crashes,
            migration_crash_fractions,
            migration_no_space,
        }
    }
}

/// The latency model of the scenario, scaled by the current spike factor.
pub fn latency_model(l: &Latency, spike: Arc<AtomicU64>) -> LatencyModel {
    let (per_call, sync, rate) = (
        Duration::from_micros(l.per_call_us),
        Duration::from_micros(l.sync_us),
        l.bytes_per_sec,
    );
    LatencyModel::new(move |kind, bytes| {
        let mut d = per_call;
        if kind == CallKind::Sync {
            d += sync;
        }
        if rate > 0 {
            d += Duration::from_secs_f64(bytes as f64 / rate as f64);
        }
        d * spike.load(Ordering::Relaxed) as u32
    })
}
