//! One run as its phases, in order:
//!
//! 1. migration (if the scenario has one): a legacy dataset converted
//!    under its planned stops, then checked (invariant 8);
//! 2. preload: images every repository starts with;
//! 3. workload with faults: the node serves the clients and the GC while
//!    the fault plan cuts the power (each cut is checked before the node
//!    restarts) and spikes the latency, until the scenario's duration;
//! 4. settle: the node is gone, a quiescent GC, then the final check of
//!    everything acknowledged, fsck and leaks, and the run-wide claims
//!    (enough pushes acknowledged, invariant 11).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use engine::{LayoutKind, LockPolicy, StoreConfig};

use crate::cluster::Cluster;
use crate::faults::{self, FaultPlan};
use crate::migration::{self, MigrationSummary};
use crate::node::Node;
use crate::report::{Accumulated, ClusterFigures, RunResult};
use crate::rng::Rng;
use crate::scenario::{Instances, Scenario};
use crate::workload::{OpClass, Shared};
use crate::world::World;

/// Runs every phase of one configuration of `scenario` under `seed`.
pub async fn simulate(
    scenario: Arc<Scenario>,
    layout: LayoutKind,
    policy: LockPolicy,
    seed: u64,
) -> RunResult {
    let rng = Rng::new(seed);
    let plan = FaultPlan::draw(&scenario, &rng);
    let world = Arc::new(World::new(&scenario, StoreConfig { layout, policy }, seed));
    let shared = Arc::new(Shared::new(
        scenario.workload.clone(),
        scenario.gc.as_ref(),
        world.reserve > 0,
        world.read_faults(),
        &rng,
    ));
    let acc = Mutex::new(Accumulated::default());

    let migration = migrate(&scenario, &world, &plan, &shared, &rng).await;
    preload(&scenario, &world, &shared, &rng).await;
    let (elapsed, crashes, cluster) = match &scenario.instances {
        Some(instances) => {
            let (elapsed, crashes, figures) =
                serve_cluster(&scenario, instances, &world, &plan, &shared, &acc).await;
            (elapsed, crashes, Some(figures))
        }
        None => {
            let (elapsed, crashes) = serve(&scenario, &world, &plan, &shared, &acc).await;
            (elapsed, crashes, None)
        }
    };
    settle(&scenario, &world, &shared).await;

    let acc = acc.into_inner().unwrap();
    let mut result = RunResult::new(
        &scenario,
        layout,
        policy,
        seed,
        elapsed,
        &shared,
        acc,
        crashes,
        migration,
        world.final_hash(),
    );
    result.flipped_reads = world.disk.flipped_reads();
    result.cluster = cluster;
    result.torn_writes = world.disk.torn_writes_applied();
    result
}

/// Phase 1: the migration, if the scenario has one.
async fn migrate(
    scenario: &Scenario,
    world: &World,
    plan: &FaultPlan,
    shared: &Shared,
    rng: &Rng,
) -> Option<MigrationSummary> {
    let m = scenario.migration.as_ref()?;
    Some(migration::run(m, world, plan, &shared.checker, rng).await)
}

/// Phase 2: the images every repository starts with.
async fn preload(scenario: &Scenario, world: &World, shared: &Shared, rng: &Rng) {
    if scenario.workload.preload_images == 0 {
        return;
    }
    match world.open_store().await {
        Ok(store) => crate::workload::preload(&store, shared, rng).await,
        Err(e) => shared.checker.violation(format!("preload: {e}")),
    }
}

/// Phase 3: the node serves for the scenario's duration under the fault
/// plan. Returns the virtual time it served and the power cuts delivered.
async fn serve(
    scenario: &Scenario,
    world: &World,
    plan: &FaultPlan,
    shared: &Arc<Shared>,
    acc: &Mutex<Accumulated>,
) -> (Duration, usize) {
    world.serving();
    let node = Node::start(world, shared, scenario.gc.clone());
    let start = tokio::time::Instant::now();
    plan.start_spikes(world, start);
    let mut crashes = 0;
    for at in &plan.crashes {
        tokio::time::sleep_until(start + *at).await;
        faults::power_cut(world, &node, acc);
        crashes += 1;
        world.checking();
        let when = format!("after the crash at {:.3}s", at.as_secs_f64());
        match world.open_store().await {
            Ok(recovered) => {
                shared.checker.verify_tags(&recovered, &when).await;
                shared.checker.fsck(&recovered, &when, false).await;
                acc.lock().unwrap().absorb(recovered.metrics());
            }
            Err(e) => shared
                .checker
                .violation(format!("{when}: the store did not reopen: {e}")),
        }
        shared.finished.store(0, Ordering::Relaxed);
        faults::restart(world, &node);
    }
    tokio::time::sleep_until(start + Duration::from_secs_f64(scenario.workload.duration_s)).await;
    shared.stop.store(true, Ordering::Relaxed);
    while shared.finished.load(Ordering::Relaxed) < shared.workload.clients {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = start.elapsed();
    node.kill(acc);
    world.checking();
    (elapsed, crashes)
}

/// Phase 3 with several instances: they serve for the scenario's
/// duration while the cluster's faults come one after another; then every
/// instance is up again, the clients finish, and the cluster stops.
/// Returns the virtual time served, the instance crashes delivered and
/// what the fences stopped.
async fn serve_cluster(
    scenario: &Scenario,
    instances: &Instances,
    world: &Arc<World>,
    plan: &FaultPlan,
    shared: &Arc<Shared>,
    acc: &Mutex<Accumulated>,
) -> (Duration, usize, ClusterFigures) {
    let cluster = Cluster::start(world, shared, scenario.gc.clone(), instances);
    let start = tokio::time::Instant::now();
    plan.start_spikes(world, start);
    let end = start + Duration::from_secs_f64(scenario.workload.duration_s);
    let crashes = faults::run_cluster_faults(&cluster, &plan.cluster, start, end, acc).await;
    tokio::time::sleep_until(end).await;
    shared.stop.store(true, Ordering::Relaxed);
    while shared.finished.load(Ordering::Relaxed) < shared.workload.clients {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = start.elapsed();
    cluster.stop(acc);
    (elapsed, crashes, cluster.tally.figures())
}

/// Phase 4: with no client in flight, a quiescent GC with delay 0 (if the
/// scenario collects), then every acknowledged write read back, fsck, no
/// leaks; and the claims about the whole run.
async fn settle(scenario: &Scenario, world: &World, shared: &Shared) {
    world.calm();
    let checker = &shared.checker;
    match world.open_store().await {
        Ok(store) => {
            if let Some(gc) = &scenario.gc
                && gc.delay_s > 0.0
            {
                checker
                    .verify_young(&store, gc.delay(), "at the end, before the final gc")
                    .await;
            }
            if scenario.gc.is_some() {
                // Quiescent: no client is in flight, so every open session
                // is abandoned.
                let opts =
                    engine::gc::GcOptions::new(Duration::ZERO).upload_timeout(Duration::ZERO);
                match store.gc(opts).await {
                    Err(e) => checker.violation(format!("final gc: {e}")),
                    // With no client in flight, the reserve (or the space
                    // the pass freed) must cover every index rewrite.
                    Ok(report) if !report.deferred.is_empty() => checker.violation(format!(
                        "final gc: no space to prune {:?} (invariant 11)",
                        report.deferred
                    )),
                    Ok(_) => {}
                }
            }
            checker.verify_tags(&store, "at the end").await;
            checker
                .fsck(&store, "at the end", scenario.gc.is_some())
                .await;
            if scenario.gc.is_some() {
                checker
                    .verify_no_leaks(&store, &world.live_sizes(), "after the final gc")
                    .await;
            }
        }
        Err(e) => checker.violation(format!("at the end: the store did not reopen: {e}")),
    }

    let (pushes, _) = shared.stats.outcomes(OpClass::Push);
    if pushes < scenario.workload.min_acked_pushes {
        checker.violation(format!(
            "{pushes} pushes acknowledged, fewer than the scenario's minimum of {}",
            scenario.workload.min_acked_pushes
        ));
    }
    // Invariant 11: once the disk filled, GC's frees let pushes in again,
    // in the same run, without a restart.
    let stats = &shared.stats;
    if world.reserve > 0
        && stats.no_space.load(Ordering::Relaxed) > 0
        && stats.acked_after_full.load(Ordering::Relaxed) == 0
    {
        checker.violation(format!(
            "the disk filled ({} writes refused for space) and no push was acknowledged after (invariant 11)",
            stats.no_space.load(Ordering::Relaxed)
        ));
    }
}
