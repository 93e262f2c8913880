//! The world: what survives a crash of the engine node. The sim disk (and
//! the power that feeds it), the metadata store on the same machine, the
//! driver stack over the disk (latency model, a deliberately broken store),
//! and the faults the disk currently injects. The node (store, clients, GC;
//! [`crate::node`]) dies and restarts; the world stays, and `faults`
//! executes the fault plan against it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use engine::driver::sim::ReadFlips;
use engine::driver::{
    Driver, Intercepted, Latency as LatencyDriver, ObjectDriver, SimDisk, SimDriver, SimFaults,
};
use engine::meta::{MemoryMeta, MetaStore};
use engine::{Store, StoreConfig};
use sha2::Digest as _;

use crate::broken::{Broken, BrokenDriver};
use crate::faults::latency_model;
use crate::scenario::{DriverKind, Scenario};
use crate::workload::ReadFaults;

#[derive(Debug)]
pub struct World {
    pub disk: Arc<SimDisk>,
    pub meta: Arc<MemoryMeta>,
    pub driver: Arc<dyn Driver>,
    /// The current latency factor (1 outside a spike).
    pub spike: Arc<AtomicU64>,
    /// What the store is opened with after every (re)start.
    pub config: StoreConfig,
    /// Bytes the store keeps for removals on a full disk (0: none).
    pub reserve: u64,
    /// The disk faults of the whole run (capacity, tears, a lying fsync).
    base_faults: SimFaults,
    /// Added while the node serves clients: reads that flip a bit. Off
    /// while the checker reads, whose reads must see what is stored.
    read_flips: Option<ReadFlips>,
    scenario: Arc<Scenario>,
}

impl World {
    pub fn new(scenario: &Arc<Scenario>, config: StoreConfig, seed: u64) -> World {
        let f = &scenario.faults;
        let base_faults = SimFaults {
            capacity: (f.capacity_bytes > 0).then_some(f.capacity_bytes),
            torn_writes: f.torn_writes,
            torn_inside: f.torn_inside,
            lying_fsync: f.broken.is_some_and(Broken::lies_about_fsync),
            ..SimFaults::default()
        };
        let disk = SimDisk::with_faults(base_faults.clone(), seed);
        let meta = Arc::new(MemoryMeta::on_machine(disk.clone()));
        let spike = Arc::new(AtomicU64::new(1));
        let driver = driver_on(scenario, &disk, spike.clone(), 0);
        World {
            disk,
            meta,
            driver,
            spike,
            config,
            reserve: scenario.store.reserve_bytes,
            base_faults,
            read_flips: f.read_flips_one_in.map(|one_in| ReadFlips {
                one_in,
                // Content-addressed files only: the store hashes those on
                // every whole read (invariant 6).
                path_contains: "/blobs/".into(),
            }),
            scenario: scenario.clone(),
        }
    }

    /// The scenario's driver stack over another disk (a migration probe),
    /// without latency spikes.
    pub fn driver_on(&self, disk: &Arc<SimDisk>) -> Arc<dyn Driver> {
        driver_on(&self.scenario, disk, Arc::new(AtomicU64::new(1)), 0)
    }

    /// The scenario's driver stack over the world's disk for life `life`
    /// of one of several instances ([`engine::driver::SimDisk::end_life`]).
    pub fn driver_for_life(&self, life: u64) -> Arc<dyn Driver> {
        driver_on(&self.scenario, &self.disk, self.spike.clone(), life)
    }

    pub fn meta(&self) -> Arc<dyn MetaStore> {
        self.meta.clone()
    }

    /// The run's disk faults, without the ones only clients see.
    pub fn base_faults(&self) -> &SimFaults {
        &self.base_faults
    }

    /// Reads flip bits (if the scenario asks for it): the node serves.
    pub fn serving(&self) {
        if let Some(flips) = &self.read_flips {
            self.disk.set_faults(SimFaults {
                read_flips: Some(flips.clone()),
                ..self.base_faults.clone()
            });
        }
    }

    /// Reads are exact again: the checker reads.
    pub fn checking(&self) {
        if self.read_flips.is_some() {
            self.disk.set_faults(self.base_faults.clone());
        }
    }

    /// What the clients know of the faults on their reads.
    pub fn read_faults(&self) -> ReadFaults {
        let broken = self.scenario.faults.broken;
        ReadFaults {
            flips: self.read_flips.as_ref().map(|_| self.disk.clone()),
            unverified: broken
                .is_some_and(Broken::skips_read_verification)
                .then(|| self.driver.clone()),
        }
    }

    /// Opens the store as the engine node does after every (re)start: with
    /// the scenario's reserve for removals on a full disk, if it keeps one.
    pub async fn open_store(&self) -> engine::StoreResult<Store> {
        open_store(self.driver.clone(), self.meta(), self.config, self.reserve).await
    }

    /// Every file on the disk as the system sees it, and its size (for the
    /// leak check). The live view, not the durable image: the engine node
    /// is killed at the end of serving, and a kill between an unlink and
    /// its directory's fsync leaves the unlink live but not yet durable. A
    /// real machine writes it back on its own (only a power cut first
    /// would bring the name back, and the next GC would take it again);
    /// judged on the durable image it was a false leak (gc-during-pushes
    /// seed 81, blobstore/split, at a1888d5: the GC's unlink was the last
    /// call the node made).
    pub fn live_sizes(&self) -> std::collections::BTreeMap<String, u64> {
        self.disk.live_sizes()
    }

    /// The "unseed": a hash of the durable disk image and the metadata store.
    pub fn final_hash(&self) -> String {
        let mut h = sha2::Sha256::new();
        for (path, bytes) in self.disk.durable_files() {
            h.update(path.as_bytes());
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(&bytes);
        }
        for (table, rows) in self.meta.dump() {
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

    /// Back to the normal latency (the end of the run).
    pub fn calm(&self) {
        self.spike.store(1, Ordering::Relaxed);
    }
}

/// See [`World::open_store`]; also for the engine node, which holds the
/// pieces rather than the world.
pub async fn open_store(
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

/// The driver stack over `disk`, for life `life` of an engine (0: the one
/// engine of a run without instances).
fn driver_on(
    scenario: &Scenario,
    disk: &Arc<SimDisk>,
    spike: Arc<AtomicU64>,
    life: u64,
) -> Arc<dyn Driver> {
    let model = latency_model(&scenario.store.latency, spike);
    let driver: Arc<dyn Driver> = match scenario.store.driver {
        DriverKind::Objects if life > 0 => Arc::new(LatencyDriver::new(
            ObjectDriver::on_sim_for_life(disk.clone(), life),
            model,
        )),
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
