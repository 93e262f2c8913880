//! Several instances over one store (DESIGN §15, invariant 13), as madsim
//! nodes: `instance-<i>` nodes serve the clients, each over the world's
//! object store with its own driver stack, and a `service` node holds the
//! shared metadata and locks, reached over madsim's network (messages
//! delayed, lost across a partition, unanswered while the service is
//! down). What the instances share and nothing else:
//!
//! - `protocol`: the messages;
//! - `service`: the service node (metadata, sessions, locks);
//! - `remote`: an instance's metadata store and lock service over it.
//!
//! A killed instance loses everything but what it wrote; a paused one
//! stops mid-operation and goes on later with its stale view; both are the
//! faults ([`crate::faults::ClusterFault`]) the fenced lease, the
//! compare-and-swap on index.json and the session checks must survive.

pub mod protocol;
pub mod remote;
pub mod service;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use engine::Store;
use engine::driver::{
    Driver, DriverError, DriverPath, DriverResult, Intercept, Intercepted, ObjectVersion,
};
use engine::meta::{MetaStore, Table};
use madsim::net::NetSim;
use madsim::runtime::{Handle, NodeHandle};
use madsim::task::NodeId;

use crate::node::periodic_gc;
use crate::report::{Accumulated, ClusterFigures};
use crate::scenario::{GcSection, Instances, SharedState};
use crate::workload::{Shared, client};
use crate::world::World;

use remote::{RemoteLocks, RemoteMeta, ServiceLink};

/// What the fences stopped, counted as it happens ([`ClusterFigures`]).
#[derive(Debug, Default)]
pub struct Tally {
    pub stale_lock_checks: AtomicU64,
    pub sessions_ended: AtomicU64,
    pub swaps_refused: AtomicU64,
    pub fenced_writes: AtomicU64,
}

impl Tally {
    pub fn figures(&self) -> ClusterFigures {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ClusterFigures {
            stale_lock_checks: n(&self.stale_lock_checks),
            sessions_ended: n(&self.sessions_ended),
            swaps_refused: n(&self.swaps_refused),
            fenced_writes: n(&self.fenced_writes),
        }
    }
}

/// An instance's index.json writes: counts the compare-and-swaps another
/// instance won, and stalls one when the fault plan arms it.
#[derive(Debug)]
struct SwapTally {
    inner: Arc<dyn Driver>,
    tally: Arc<Tally>,
    stall: Arc<Stall>,
    service: NodeId,
    /// [`crate::scenario::Instances::ignore_swap_conditions`].
    ignore_conditions: bool,
}

/// A stall armed for an instance's next index.json write: how long.
#[derive(Debug, Default)]
struct Stall(Mutex<Option<Duration>>);

#[async_trait]
impl Intercept for SwapTally {
    fn inner(&self) -> &dyn Driver {
        &*self.inner
    }

    async fn put_if_version(
        &self,
        path: &DriverPath,
        data: Bytes,
        expected: Option<&ObjectVersion>,
    ) -> DriverResult<ObjectVersion> {
        let index = path.as_str().ends_with("/index.json");
        let stall = if index {
            self.stall.0.lock().unwrap().take()
        } else {
            None
        };
        if let Some(lasts) = stall {
            // The lock was checked; now the instance loses the service and
            // the write takes its time: the locks lapse meanwhile.
            let (me, net) = (madsim::plugin::node(), NetSim::current());
            net.clog_link(me, self.service);
            net.clog_link(self.service, me);
            tokio::time::sleep(lasts).await;
            net.unclog_link(me, self.service);
            net.unclog_link(self.service, me);
        }
        let swapped = if index && self.ignore_conditions {
            self.inner
                .put(path, data.clone(), engine::driver::PutMode::Overwrite)
                .await
                .map(|()| ObjectVersion::of(&data))
        } else {
            self.inner.put_if_version(path, data, expected).await
        };
        // Only index.json: the startup probe's refusals are by design.
        if index
            && swapped
                .as_ref()
                .is_err_and(DriverError::is_precondition_failed)
        {
            self.tally.swaps_refused.fetch_add(1, Ordering::Relaxed);
        }
        swapped
    }
}

/// How long an instance waits before trying to open the store again when
/// the service did not answer (a process supervisor's restart delay).
const REOPEN_AFTER: Duration = Duration::from_millis(100);

pub struct Cluster {
    handle: Handle,
    service: NodeHandle,
    instances: Vec<Instance>,
    world_disk: Arc<engine::driver::SimDisk>,
    /// The service's data, read by the fault that pauses the sweeper.
    meta: Arc<engine::meta::MemoryMeta>,
    pub tally: Arc<Tally>,
}

struct Instance {
    node: NodeHandle,
    stall: Arc<Stall>,
    /// The life the instance is in ([`engine::driver::SimDisk::end_life`]).
    life: Arc<AtomicU64>,
    /// Its store in this life, for its metrics once it dies.
    store: Arc<Mutex<Option<Store>>>,
}

impl Cluster {
    /// Starts the service, then every instance: each opens the store and
    /// runs its share of the clients (client `c` on instance `c % count`)
    /// and the periodic GC.
    pub fn start(
        world: &Arc<World>,
        shared: &Arc<Shared>,
        gc: Option<GcSection>,
        spec: &Instances,
    ) -> Cluster {
        let handle = Handle::current();
        let ms = Duration::from_millis;
        let latency = ms(spec.net_ms[0])..ms(spec.net_ms[1].max(spec.net_ms[0] + 1));
        NetSim::current().update_config(|c| c.send_latency = latency);
        let ttl = Duration::from_secs_f64(spec.session_ttl_s);

        let (meta, sessions) = (world.meta.clone(), Arc::new(AtomicU64::new(1)));
        let boots = AtomicU64::new(0);
        let service = handle
            .create_node()
            .name("service")
            .ip(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)))
            .init(move || {
                let restarted = boots.fetch_add(1, Ordering::Relaxed) > 0;
                service::serve(meta.clone(), ttl, sessions.clone(), restarted)
            })
            .build();

        let lives = Arc::new(AtomicU64::new(1));
        let tally = Arc::new(Tally::default());
        let instances = (0..spec.count)
            .map(|i| {
                let life = Arc::new(AtomicU64::new(0));
                let store: Arc<Mutex<Option<Store>>> = Arc::default();
                let stall = Arc::new(Stall::default());
                let start = InstanceStart {
                    index: i,
                    count: spec.count,
                    world: world.clone(),
                    shared: shared.clone(),
                    gc: gc.clone(),
                    sweep_lease: Duration::from_secs_f64(spec.sweep_lease_s),
                    mode: spec.shared,
                    ttl,
                    lives: lives.clone(),
                    life: life.clone(),
                    slot: store.clone(),
                    tally: tally.clone(),
                    stall: stall.clone(),
                    service: service.id(),
                    ignore_conditions: spec.ignore_swap_conditions,
                };
                let node = handle
                    .create_node()
                    .name(format!("instance-{i}"))
                    .ip(IpAddr::V4(Ipv4Addr::new(10, 0, 1, 1 + i as u8)))
                    .init(move || start.clone().run())
                    .build();
                Instance {
                    node,
                    stall,
                    life,
                    store,
                }
            })
            .collect();
        Cluster {
            handle,
            service,
            instances,
            world_disk: world.disk.clone(),
            meta: world.meta.clone(),
            tally,
        }
    }

    /// Kills instance `i`: its tasks and store are gone, its writes in
    /// progress are leftovers now, and its metrics go into `acc`.
    pub fn kill(&self, i: usize, acc: &Mutex<Accumulated>) {
        let instance = &self.instances[i];
        self.handle.kill(instance.node.id());
        let life = instance.life.swap(0, Ordering::Relaxed);
        if life > 0 {
            self.world_disk.end_life(life);
        }
        if let Some(store) = instance.store.lock().unwrap().take() {
            acc.lock().unwrap().absorb(store.metrics());
        }
    }

    /// Starts killed instance `i` again: a new life, the store opened anew.
    pub fn restart(&self, i: usize) {
        self.handle.restart(self.instances[i].node.id());
    }

    pub fn pause(&self, i: usize) {
        self.handle.pause(self.instances[i].node.id());
    }

    pub fn resume(&self, i: usize) {
        self.handle.resume(self.instances[i].node.id());
    }

    /// The instance holding the GC sweep's lease, as soon as one does
    /// (looked up every millisecond until `until`).
    pub async fn next_sweeper(&self, until: tokio::time::Instant) -> Option<usize> {
        while tokio::time::Instant::now() < until {
            let lease = self
                .meta
                .get(Table::CONFIG, b"lease/gc-sweep")
                .await
                .ok()
                .flatten();
            let holder = lease
                .as_deref()
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|v| v.split(' ').nth(1).map(str::to_owned));
            if let Some(holder) = holder
                && let Some(i) = self.instances.iter().position(|inst| {
                    inst.store
                        .lock()
                        .unwrap()
                        .as_ref()
                        .is_some_and(|s| s.instance_name() == holder)
                })
            {
                return Some(i);
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        None
    }

    /// Arms a stall of instance `i`'s next index.json write ([`SwapTally`])
    /// and waits until it has happened (or `until`).
    pub async fn stall_next_swap(&self, i: usize, lasts: Duration, until: tokio::time::Instant) {
        let stall = &self.instances[i].stall;
        *stall.0.lock().unwrap() = Some(lasts);
        while stall.0.lock().unwrap().is_some() && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        *stall.0.lock().unwrap() = None;
        // The stalled write goes on for `lasts` from when it began.
        tokio::time::sleep(lasts).await;
    }

    /// Messages between instance `i` and the service are lost, both ways.
    pub fn partition(&self, i: usize) {
        let (a, b) = (self.instances[i].node.id(), self.service.id());
        let net = NetSim::current();
        net.clog_link(a, b);
        net.clog_link(b, a);
    }

    pub fn heal(&self, i: usize) {
        let (a, b) = (self.instances[i].node.id(), self.service.id());
        let net = NetSim::current();
        net.unclog_link(a, b);
        net.unclog_link(b, a);
    }

    /// The service goes down: every session and lock it held is gone.
    pub fn stop_service(&self) {
        self.handle.kill(self.service.id());
    }

    /// The service comes back over the same (durable) metadata.
    pub fn start_service(&self) {
        self.handle.restart(self.service.id());
    }

    /// Every instance and the service stop (the run's end).
    pub fn stop(&self, acc: &Mutex<Accumulated>) {
        for i in 0..self.instances.len() {
            self.kill(i, acc);
        }
        self.stop_service();
    }
}

/// What an instance's node runs at each (re)start.
#[derive(Clone)]
struct InstanceStart {
    index: u64,
    count: u64,
    world: Arc<World>,
    shared: Arc<Shared>,
    gc: Option<GcSection>,
    sweep_lease: Duration,
    mode: SharedState,
    ttl: Duration,
    lives: Arc<AtomicU64>,
    life: Arc<AtomicU64>,
    slot: Arc<Mutex<Option<Store>>>,
    tally: Arc<Tally>,
    stall: Arc<Stall>,
    service: NodeId,
    ignore_conditions: bool,
}

impl InstanceStart {
    /// This instance's clients, by number.
    fn clients(&self) -> impl Iterator<Item = u64> + use<> {
        (self.index..self.shared.workload.clients).step_by(self.count as usize)
    }

    async fn run(self) {
        let life = self.lives.fetch_add(1, Ordering::Relaxed);
        self.life.store(life, Ordering::Relaxed);
        let Some(store) = self.open(life).await else {
            // The run ended before the store opened: these clients are done.
            let n = self.clients().count() as u64;
            self.shared.finished.fetch_add(n, Ordering::Relaxed);
            return;
        };
        *self.slot.lock().unwrap() = Some(store.clone());
        let mut tasks = Vec::new();
        for c in self.clients() {
            tasks.push(tokio::spawn(client(c, store.clone(), self.shared.clone())));
        }
        if let Some(gc) = self.gc.clone() {
            let opts = gc.options().sweep_lease(self.sweep_lease);
            tasks.push(tokio::spawn(periodic_gc(
                store,
                self.shared.clone(),
                gc,
                opts,
                0,
            )));
        }
        for t in tasks {
            let _ = t.await;
        }
    }

    /// Opens the store, again and again while the service does not
    /// answer, until the run stops.
    async fn open(&self, life: u64) -> Option<Store> {
        let link = ServiceLink::connect(self.ttl, self.tally.clone()).await;
        loop {
            if self.shared.stop.load(Ordering::Relaxed) {
                return None;
            }
            let driver = Arc::new(Intercepted(SwapTally {
                inner: self.world.driver_for_life(life),
                tally: self.tally.clone(),
                stall: self.stall.clone(),
                service: self.service,
                ignore_conditions: self.ignore_conditions,
            }));
            let meta = Arc::new(RemoteMeta(link.clone()));
            let config = self.world.config;
            let opened = match self.mode {
                SharedState::Service => {
                    let locks = Arc::new(RemoteLocks(link.clone()));
                    Store::open_shared(driver, meta, config, locks).await
                }
                SharedState::InProcessLocks => Store::open(driver, meta, config).await,
            };
            match opened {
                Ok(store) => return Some(store),
                Err(engine::StoreError::Denied { reason }) => {
                    self.shared.checker.violation(format!(
                        "instance {}: refused to open: {reason}",
                        self.index
                    ));
                    return None;
                }
                Err(_) => tokio::time::sleep(REOPEN_AFTER).await,
            }
        }
    }
}
