//! The faults: the plan (when the power goes, when latency spikes, where
//! the migration stops), drawn from the scenario and the seed before the
//! run starts (so a seed names one plan), and its execution against the
//! [`World`]: power cuts that kill the node, restarts, spikes, migration
//! stops. Faults the disk injects by itself (tears, flipped reads, a full
//! disk) are set on the world's disk ([`World::new`]).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use engine::driver::{CallKind, LatencyModel, SimFaults};

#[cfg(madsim)]
use crate::node::Node;
use crate::report::Accumulated;
use crate::rng::Rng;
use crate::scenario::{Instances, Latency, Scenario};
use crate::world::World;

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
    /// Faults of several instances ([`crate::scenario::Instances`]), by
    /// start time; executed one after the other, each undone before the
    /// next begins.
    pub cluster: Vec<ClusterFault>,
}

/// One fault of a cluster and how long it lasts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClusterFault {
    pub at: Duration,
    pub kind: ClusterFaultKind,
    pub lasts: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterFaultKind {
    /// The instance is killed; it starts again when the fault ends.
    Crash(usize),
    /// The instance stops running (its tasks are not polled), then goes
    /// on where it stopped, with whatever view it had.
    Pause(usize),
    /// [`ClusterFaultKind::Pause`] of the instance holding the GC sweep's
    /// lease, as soon as one does.
    PauseSweeper,
    /// Messages between the instance and the service are lost both ways.
    Partition(usize),
    /// The instance's next index.json write stalls, after its lock check,
    /// while the instance is cut off from the service.
    StallSwap(usize),
    /// The service goes down, losing every session and lock, and comes
    /// back with its data.
    ServiceRestart,
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
        // Drawn last, from a stream of their own: scenarios without
        // instances keep the plans (and final states) they had.
        let cluster = s
            .instances
            .as_ref()
            .map_or_else(Vec::new, |i| draw_cluster(i, duration, &rng.fork(0xc105)));
        FaultPlan {
            crashes,
            spikes,
            migration_crashes,
            migration_crash_fractions,
            migration_no_space,
            cluster,
        }
    }
}

fn draw_cluster(i: &Instances, duration: f64, rng: &Rng) -> Vec<ClusterFault> {
    let mut rng = rng.clone();
    let secs = Duration::from_secs_f64;
    let mut faults = Vec::new();
    let mut draw = |n: u64, lasts: f64, kind: &dyn Fn(usize) -> ClusterFaultKind| {
        for _ in 0..n {
            let at = secs(duration * (0.05 + 0.8 * rng.unit()));
            let instance = rng.below(i.count) as usize;
            faults.push(ClusterFault {
                at,
                kind: kind(instance),
                lasts: secs(lasts),
            });
        }
    };
    draw(i.crashes, i.restart_after_s, &ClusterFaultKind::Crash);
    draw(i.pauses, i.pause_s, &ClusterFaultKind::Pause);
    draw(i.sweeper_pauses, i.pause_s, &|_| {
        ClusterFaultKind::PauseSweeper
    });
    draw(i.partitions, i.partition_s, &ClusterFaultKind::Partition);
    draw(i.stalled_swaps, i.partition_s, &ClusterFaultKind::StallSwap);
    draw(i.service_restarts, i.restart_after_s, &|_| {
        ClusterFaultKind::ServiceRestart
    });
    faults.sort_by_key(|f| f.at);
    faults
}

/// Where a migration is stopped, counted in machine operations along
/// the uninterrupted migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MigrationStop {
    pub after_ops: u64,
    pub kind: StopKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopKind {
    PowerCut,
    DiskFull,
}

impl FaultPlan {
    /// The migration's stops, for a migration `n` operations long, in
    /// order, one per position (a full disk wins over a power cut).
    pub fn migration_stops(&self, n: u64) -> Vec<MigrationStop> {
        let stop = |after_ops, kind| MigrationStop { after_ops, kind };
        let mut stops: Vec<MigrationStop> = self
            .migration_crashes
            .iter()
            .map(|k| stop(*k, StopKind::PowerCut))
            .chain(
                self.migration_crash_fractions
                    .iter()
                    .map(|f| stop(1 + (f * (n - 1) as f64) as u64, StopKind::PowerCut)),
            )
            .chain(
                self.migration_no_space
                    .iter()
                    .map(|k| stop(*k, StopKind::DiskFull)),
            )
            .collect();
        stops.sort_by_key(|s| (s.after_ops, s.kind == StopKind::PowerCut));
        stops.dedup_by_key(|s| s.after_ops);
        stops
    }

    /// Starts the latency spikes, timed from `start`, beside the run.
    pub fn start_spikes(&self, world: &World, start: tokio::time::Instant) {
        for (from, to, factor) in self.spikes.clone() {
            let spike = world.spike.clone();
            tokio::spawn(async move {
                tokio::time::sleep_until(start + from).await;
                spike.store(factor, Ordering::Relaxed);
                tokio::time::sleep_until(start + to).await;
                spike.store(1, Ordering::Relaxed);
            });
        }
    }
}

/// A power cut of the machine: the disk first, so nothing the dying node
/// does reaches it, then the node; the power comes back with the node
/// still down (the checker looks at what survived before [`restart`]).
#[cfg(madsim)]
pub fn power_cut(world: &World, node: &Node, acc: &Mutex<Accumulated>) {
    world.disk.power_off();
    node.kill(acc);
    world.disk.power_on();
}

/// Executes the cluster's faults in order, each undone before the next;
/// none starts after `end`. Returns the instance crashes delivered.
#[cfg(madsim)]
pub async fn run_cluster_faults(
    cluster: &crate::cluster::Cluster,
    faults: &[ClusterFault],
    start: tokio::time::Instant,
    end: tokio::time::Instant,
    acc: &Mutex<Accumulated>,
) -> usize {
    let mut crashes = 0;
    for f in faults {
        let at = (start + f.at).max(tokio::time::Instant::now());
        if at >= end {
            break;
        }
        tokio::time::sleep_until(at).await;
        match f.kind {
            ClusterFaultKind::Crash(i) => {
                crashes += 1;
                held(f.lasts, || cluster.kill(i, acc), || cluster.restart(i)).await;
            }
            ClusterFaultKind::Pause(i) => {
                held(f.lasts, || cluster.pause(i), || cluster.resume(i)).await
            }
            ClusterFaultKind::PauseSweeper => {
                if let Some(i) = cluster.next_sweeper(end).await {
                    held(f.lasts, || cluster.pause(i), || cluster.resume(i)).await;
                }
            }
            ClusterFaultKind::Partition(i) => {
                held(f.lasts, || cluster.partition(i), || cluster.heal(i)).await;
            }
            ClusterFaultKind::StallSwap(i) => cluster.stall_next_swap(i, f.lasts, end).await,
            ClusterFaultKind::ServiceRestart => {
                held(
                    f.lasts,
                    || cluster.stop_service(),
                    || cluster.start_service(),
                )
                .await;
            }
        }
    }
    crashes
}

/// A fault begun, held for `lasts`, undone.
#[cfg(madsim)]
async fn held(lasts: Duration, begin: impl FnOnce(), undo: impl FnOnce()) {
    begin();
    tokio::time::sleep(lasts).await;
    undo();
}

/// The node boots again over what survived, and serves.
#[cfg(madsim)]
pub fn restart(world: &World, node: &Node) {
    world.serving();
    node.restart();
}

/// Runs `migration` (counted from now) until `stop`: the disk loses power,
/// or fills, after that many more machine operations. The disk is back to
/// the run's faults and powered afterwards.
pub async fn stop_migration<T>(
    world: &World,
    stop: MigrationStop,
    after_ops: u64,
    migration: impl Future<Output = T>,
) -> T {
    let base = world.base_faults();
    world.disk.set_faults(match stop.kind {
        StopKind::PowerCut => SimFaults {
            crash_after_ops: Some(after_ops),
            ..base.clone()
        },
        StopKind::DiskFull => SimFaults {
            no_space_after_ops: Some(after_ops),
            ..base.clone()
        },
    });
    let result = migration.await;
    world.disk.set_faults(base.clone());
    world.disk.power_on();
    result
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
