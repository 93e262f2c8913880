//! loom models of the store's real code paths (DESIGN §10): every
//! interleaving of two operations' lock plans, bounded by LOOM_MAX_PREEMPTIONS.
//!
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p engine --test loom --release --target-dir target/loom`
//!
//! The store runs on the in-memory object driver and metadata store; the
//! locks come from the `sync` shim's loom build, a FIFO reader-writer lock
//! with tokio's fairness. Only the locks are modelled: the data structures
//! behind them are plain mutexes held for a few instructions.
#![cfg(loom)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use engine::driver::{Driver, ObjectDriver};
use engine::gc::GcOptions;
use engine::meta::MemoryMeta;
use engine::{Digest, LayoutKind, LockPolicy, RepoName, Store, StoreConfig};
use loom::future::block_on;

fn store(policy: LockPolicy) -> Store {
    let driver: Arc<dyn Driver> = Arc::new(ObjectDriver::in_memory());
    let config = StoreConfig {
        layout: LayoutKind::Blobstore,
        policy,
    };
    block_on(Store::open(driver, Arc::new(MemoryMeta::new()), config)).unwrap()
}

fn repo(s: &str) -> RepoName {
    RepoName::parse(s).unwrap()
}

/// A `_blobstore` orphan being swept while another repository pushes the
/// same digest: the sweep's final re-check under the digest lock (striped)
/// or the blobstore lock (split) must keep the bytes the push relies on.
fn push_races_sweep(policy: LockPolicy) {
    // Per model (tests run in parallel): how many interleavings loom ran.
    let explored = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = explored.clone();
    loom::model(move || {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let s = store(policy);
        let data = Bytes::from_static(b"layer");
        let d = Digest::sha256(&data);
        // An orphan: pushed to `a`, then removed from it.
        block_on(s.push_blob(&repo("a"), &d, data.clone())).unwrap();
        block_on(s.delete_blob(&repo("a"), &d)).unwrap();

        let pusher = {
            let (s, data, d) = (s.clone(), data.clone(), d.clone());
            loom::thread::spawn(move || block_on(s.push_blob(&repo("b"), &d, data)).unwrap())
        };
        block_on(s.gc(GcOptions {
            delay: Duration::ZERO,
            dry_run: false,
        }))
        .unwrap();
        pusher.join().unwrap();

        // The push was acknowledged: its bytes are readable, and the
        // reference truth matches (no orphan, no reference without bytes).
        assert_eq!(block_on(s.get_blob(&repo("b"), &d)).unwrap(), data);
        let findings = block_on(s.fsck()).unwrap();
        assert!(findings.iter().all(|f| !f.is_error()), "{findings:?}");
    });
    let n = explored.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("{policy}: {n} interleavings explored");
    assert!(
        n > 1,
        "loom explored a single interleaving: nothing was modelled"
    );
}

#[test]
fn push_races_sweep_striped() {
    push_races_sweep(LockPolicy::Striped);
}

#[test]
fn push_races_sweep_split() {
    push_races_sweep(LockPolicy::Split);
}

#[test]
fn push_races_sweep_global() {
    push_races_sweep(LockPolicy::Global);
}
