//! One run: a scenario, a layout, a policy and a seed, in a madsim runtime.
//!
//! The engine (store, clients, GC) runs on the `engine` node, so a crash is
//! `Handle::kill` of that node plus a power cut of the sim disk; what must
//! survive (disk, metadata store, checker, statistics) lives outside it, on
//! the supervisor, which also injects the faults and checks invariants
//! after every crash and at the end.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use engine::driver::{
    Driver, Intercepted, Latency as LatencyDriver, ObjectDriver, SimDisk, SimDriver, SimFaults,
};
use engine::lock::LockMetrics;
use engine::meta::{MemoryMeta, MetaStore};
use engine::{LayoutKind, LockPolicy, Store, StoreConfig};
use madsim::runtime::{Handle, Runtime};
use sha2::Digest as _;

use crate::broken::{Broken, BrokenDriver};
use crate::faults::{FaultPlan, latency_model};
use crate::migration;
use crate::report::{Accumulated, RunResult};
use crate::rng::Rng;
use crate::scenario::{DriverKind, Scenario};
use crate::workload::{Shared, client};

/// Runs one configuration of `scenario` under `seed`.
pub fn run(scenario: &Scenario, layout: LayoutKind, policy: LockPolicy, seed: u64) -> RunResult {
    let mut rt = Runtime::with_seed_and_config(seed, madsim::Config::default());
    // Liveness: a run that does not finish in 20x its virtual duration
    // (plus slack) is stuck; madsim panics and the caller reports it.
    rt.set_time_limit(Duration::from_secs_f64(
        scenario.workload.duration_s * 20.0 + 600.0,
    ));
    let wall = std::time::Instant::now();
    let mut result = rt.block_on(simulate(scenario.clone(), layout, policy, seed));
    result.wall_ms = wall.elapsed().as_secs_f64() * 1e3;
    result
}

fn driver(disk: &Arc<SimDisk>, scenario: &Scenario, spike: Arc<AtomicU64>) -> Arc<dyn Driver> {
    let model = latency_model(&scenario.store.latency, spike);
    let driver: Arc<dyn Driver> = match scenario.store.driver {
        DriverKind::Objects => Arc::new(LatencyDriver::new(
            ObjectDriver::on_sim(disk.clone()),
            model,
        )),
        DriverKind::Links => Arc::new(LatencyDriver::new(SimDriver::on(disk.clone()), model)),
    };
    match scenario.faults.broken {
        Some(broken) => Arc::new(Intercepted(BrokenDriver::new(driver, broken))),
        None => driver,
    }
}

async fn simulate(
    scenario: Scenario,
    layout: LayoutKind,
    policy: LockPolicy,
    seed: u64,
) -> RunResult {
    let rng = Rng::new(seed);
    let plan = FaultPlan::draw(&scenario, &rng);
    let base_faults = SimFaults {
        capacity: (scenario.faults.capacity_bytes > 0).then_some(scenario.faults.capacity_bytes),
        torn_writes: scenario.faults.torn_writes,
        lying_fsync: scenario.faults.broken.is_some_and(Broken::lies_about_fsync),
        ..SimFaults::default()
    };
    let disk = SimDisk::with_faults(base_faults.clone(), seed);
    let meta = Arc::new(MemoryMeta::on_machine(disk.clone()));
    let spike = Arc::new(AtomicU64::new(1));
    let driver = driver(&disk, &scenario, spike.clone());
    let config = StoreConfig { layout, policy };
    let reserve = scenario.store.reserve_bytes;
    let shared = Arc::new(Shared::new(
        scenario.workload.clone(),
        scenario.gc.as_ref(),
        reserve > 0,
        &rng,
    ));
    let accumulated = Arc::new(Mutex::new(Accumulated::default()));

    let migration = match &scenario.migration {
        Some(m) => Some(
            migration::run(
                m,
                policy,
                &disk,
                &meta,
                &driver,
                &|d: &Arc<SimDisk>| self::driver(d, &scenario, Arc::new(AtomicU64::new(1))),
                &plan,
                &base_faults,
                &shared.checker,
                &rng,
            )
            .await,
        ),
        None => None,
    };

    if scenario.workload.preload_images > 0 {
        let meta: Arc<dyn MetaStore> = meta.clone();
        match open_store(driver.clone(), meta, config, reserve).await {
            Ok(store) => crate::workload::preload(&store, &shared, &rng).await,
            Err(e) => shared.checker.violation(format!("preload: {e}")),
        }
    }

    let handle = Handle::current();
    let slot: Arc<Mutex<Option<Store>>> = Arc::default();
    let node = {
        let (driver, meta, shared, slot) =
            (driver.clone(), meta.clone(), shared.clone(), slot.clone());
        let gc = scenario.gc.clone();
        handle
            .create_node()
            .name("engine")
            .init(move || {
                let (driver, meta, shared, slot, gc) = (
                    driver.clone(),
                    meta.clone(),
                    shared.clone(),
                    slot.clone(),
                    gc.clone(),
                );
                async move {
                    let meta: Arc<dyn MetaStore> = meta;
                    let store = match open_store(driver, meta, config, reserve).await {
                        Ok(s) => s,
                        Err(e) => {
                            shared.checker.violation(format!(
                                "the store did not reopen after a restart: {e}"
                            ));
                            return;
                        }
                    };
                    *slot.lock().unwrap() = Some(store.clone());
                    let mut tasks = Vec::new();
                    for c in 0..shared.workload.clients {
                        tasks.push(tokio::spawn(client(c, store.clone(), shared.clone())));
                    }
                    if let Some(gc) = gc {
                        let (store, shared) = (store.clone(), shared.clone());
                        tasks.push(tokio::spawn(async move {
                            let opts = gc.options();
                            while !shared.stop.load(Ordering::Relaxed) {
                                tokio::time::sleep(Duration::from_secs_f64(gc.every_s)).await;
                                match store.gc(opts).await {
                                    Err(e) if e.code().is_some() => {
                                        shared.checker.violation(format!("gc: {e}"));
                                    }
                                    Err(e) if e.is_no_space() && reserve > 0 => {
                                        shared.checker.violation(format!(
                                            "gc on a full disk: {e} (invariant 11)"
                                        ));
                                    }
                                    Err(_) => {}
                                    // Checked while clients keep pushing.
                                    Ok(_) if !opts.delay.is_zero() => {
                                        shared
                                            .checker
                                            .verify_young(&store, opts.delay, "after a gc pass")
                                            .await;
                                    }
                                    Ok(_) => {}
                                }
                            }
                        }));
                    }
                    for t in tasks {
                        let _ = t.await;
                    }
                }
            })
            .build()
    };

    let start = tokio::time::Instant::now();
    let absorb = |slot: &Mutex<Option<Store>>| {
        if let Some(store) = slot.lock().unwrap().take() {
            accumulated.lock().unwrap().absorb(store.metrics());
        }
    };
    // Latency spikes run beside the crash schedule.
    for (from, to, factor) in plan.spikes.clone() {
        let spike = spike.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(start + from).await;
            spike.store(factor, Ordering::Relaxed);
            tokio::time::sleep_until(start + to).await;
            spike.store(1, Ordering::Relaxed);
        });
    }
    let mut crashes = 0;
    for at in &plan.crashes {
        tokio::time::sleep_until(start + *at).await;
        // Power first, so nothing the dying node does reaches the disk.
        disk.power_off();
        handle.kill(node.id());
        absorb(&slot);
        disk.power_on();
        crashes += 1;
        let when = format!("after the crash at {:.3}s", at.as_secs_f64());
        match open_store(driver.clone(), meta.clone(), config, reserve).await {
            Ok(recovered) => {
                shared.checker.verify_tags(&recovered, &when).await;
                shared.checker.fsck(&recovered, &when, false).await;
                accumulated.lock().unwrap().absorb(recovered.metrics());
            }
            Err(e) => shared
                .checker
                .violation(format!("{when}: the store did not reopen: {e}")),
        }
        shared.finished.store(0, Ordering::Relaxed);
        handle.restart(node.id());
    }
    tokio::time::sleep_until(start + Duration::from_secs_f64(scenario.workload.duration_s)).await;
    shared.stop.store(true, Ordering::Relaxed);
    while shared.finished.load(Ordering::Relaxed) < shared.workload.clients {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = start.elapsed();
    handle.kill(node.id());
    absorb(&slot);

    // The end: a quiescent GC with delay 0 (if the scenario collects), then
    // every acknowledged write read back, and fsck.
    spike.store(1, Ordering::Relaxed);
    let final_store = open_store(driver.clone(), meta.clone(), config, reserve).await;
    match &final_store {
        Ok(store) => {
            if let Some(gc) = &scenario.gc
                && gc.delay_s > 0.0
            {
                shared
                    .checker
                    .verify_young(store, gc.delay(), "at the end, before the final gc")
                    .await;
            }
            if scenario.gc.is_some() {
                // Quiescent: no client is in flight, so every open session
                // is abandoned.
                let opts =
                    engine::gc::GcOptions::new(Duration::ZERO).upload_timeout(Duration::ZERO);
                if let Err(e) = store.gc(opts).await {
                    shared.checker.violation(format!("final gc: {e}"));
                }
            }
            shared.checker.verify_tags(store, "at the end").await;
            shared
                .checker
                .fsck(store, "at the end", scenario.gc.is_some())
                .await;
            if scenario.gc.is_some() {
                let files = disk
                    .durable_image()
                    .into_iter()
                    .map(|(path, bytes)| (path, bytes.len() as u64))
                    .collect();
                shared
                    .checker
                    .verify_no_leaks(store, &files, "after the final gc")
                    .await;
            }
        }
        Err(e) => shared
            .checker
            .violation(format!("at the end: the store did not reopen: {e}")),
    }

    let (pushes, _) = shared.stats.outcomes(crate::workload::OpClass::Push);
    if pushes < scenario.workload.min_acked_pushes {
        shared.checker.violation(format!(
            "{pushes} pushes acknowledged, fewer than the scenario's minimum of {}",
            scenario.workload.min_acked_pushes
        ));
    }
    // Invariant 11: once the disk filled, GC's frees let pushes in again,
    // in the same run, without a restart.
    let stats = &shared.stats;
    if reserve > 0
        && stats.no_space.load(Ordering::Relaxed) > 0
        && stats.acked_after_full.load(Ordering::Relaxed) == 0
    {
        shared.checker.violation(format!(
            "the disk filled ({} writes refused for space) and no push was acknowledged after (invariant 11)",
            stats.no_space.load(Ordering::Relaxed)
        ));
    }
    let acc = accumulated.lock().unwrap().clone();
    RunResult::new(
        &scenario,
        layout,
        policy,
        seed,
        elapsed,
        &shared,
        acc,
        crashes,
        migration,
        final_hash(&disk, &meta),
    )
}

/// Opens the store as the engine node does after every (re)start: with the
/// scenario's reserve for removals on a full disk, if it keeps one.
async fn open_store(
    driver: Arc<dyn Driver>,
    meta: Arc<dyn MetaStore>,
    config: StoreConfig,
    reserve: u64,
) -> engine::StoreResult<Store> {
    let store = Store::open(driver, meta, config).await?;
    if reserve > 0 {
        store.keep_reserve(reserve).await?;
    }
    Ok(store)
}

/// The "unseed": a hash of the durable disk image and the metadata store.
fn final_hash(disk: &SimDisk, meta: &MemoryMeta) -> String {
    let mut h = sha2::Sha256::new();
    for (path, bytes) in disk.durable_image() {
        h.update(path.as_bytes());
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(&bytes);
    }
    for (table, rows) in meta.dump() {
        h.update(table.name().as_bytes());
        for (k, v) in rows {
            h.update(&k);
            h.update(&v);
        }
    }
    h.finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

// Locks and calls across store instances (one per node life).
impl Accumulated {
    pub fn absorb(&mut self, m: engine::store::StoreMetrics) {
        self.calls = self.calls.plus(&m.calls);
        match &mut self.locks {
            None => self.locks = Some(m.locks),
            Some(acc) => merge_locks(acc, &m.locks),
        }
    }
}

fn merge_locks(acc: &mut LockMetrics, m: &LockMetrics) {
    for (a, b) in acc.stats.iter_mut().zip(&m.stats) {
        let _ = a.wait.add(&b.wait);
        let _ = a.hold.add(&b.hold);
    }
}
