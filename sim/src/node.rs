//! The node: what dies in a crash. A madsim node named `engine` that opens
//! the store over the [`World`]'s driver and metadata store, and runs the
//! clients and the periodic GC on it. Killing it drops every task and the
//! store; restarting it opens the store again, as a process restart does.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use engine::Store;
use madsim::runtime::{Handle, NodeHandle};

use crate::report::Accumulated;
use crate::scenario::GcSection;
use crate::workload::{Shared, client};
use crate::world::{World, open_store};

pub struct Node {
    handle: Handle,
    node: NodeHandle,
    /// The store of the node's current life, for its metrics once it dies.
    store: Arc<Mutex<Option<Store>>>,
}

impl Node {
    /// Starts the node: the store opens, the clients and the GC run.
    pub fn start(world: &World, shared: &Arc<Shared>, gc: Option<GcSection>) -> Node {
        let handle = Handle::current();
        let store: Arc<Mutex<Option<Store>>> = Arc::default();
        let (driver, meta, shared, slot) = (
            world.driver.clone(),
            world.meta(),
            shared.clone(),
            store.clone(),
        );
        let (config, reserve) = (world.config, world.reserve);
        let node = handle
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
                        let opts = gc.options();
                        tasks.push(tokio::spawn(periodic_gc(store, shared, gc, opts, reserve)));
                    }
                    for t in tasks {
                        let _ = t.await;
                    }
                }
            })
            .build();
        Node {
            handle,
            node,
            store,
        }
    }

    /// Kills the node; its store's metrics go into `acc`.
    pub fn kill(&self, acc: &Mutex<Accumulated>) {
        self.handle.kill(self.node.id());
        if let Some(store) = self.store.lock().unwrap().take() {
            acc.lock().unwrap().absorb(store.metrics());
        }
    }

    pub fn restart(&self) {
        self.handle.restart(self.node.id());
    }
}

/// The scenario's GC, every `every_s` while the run lasts, held to the
/// delay contract while clients keep pushing (invariants 10 and 11).
pub async fn periodic_gc(
    store: Store,
    shared: Arc<Shared>,
    gc: GcSection,
    opts: engine::gc::GcOptions,
    reserve: u64,
) {
    while !shared.stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_secs_f64(gc.every_s)).await;
        match store.gc(opts).await {
            Err(e) if e.code().is_some() => {
                shared.checker.violation(format!("gc: {e}"));
            }
            Err(e) if e.is_no_space() && reserve > 0 => {
                shared
                    .checker
                    .violation(format!("gc on a full disk: {e} (invariant 11)"));
            }
            Err(_) => {}
            Ok(_) if !opts.delay.is_zero() => {
                shared
                    .checker
                    .verify_young(&store, opts.delay, "after a gc pass")
                    .await;
            }
            Ok(_) => {}
        }
    }
}
