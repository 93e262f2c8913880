//! Several stores over one object root (DESIGN §15, invariant 13), in one
//! process: compare-and-swap between two views of one directory (the
//! contract itself is the driver conformance suite's), the startup probe that
//! refuses shared mode without it, and CAS keeping every acknowledged tag
//! even when the shared locks are not there at all.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use engine::driver::{Driver, DriverPath, FsDriver, ObjectDriver};
use engine::lock::{HeldLocks, LockError, LockPlan, LockService};
use engine::meta::MemoryMeta;
use engine::{LayoutKind, LockPolicy, Reference, RepoName, Store, StoreConfig, StoreError};
use testkit::oci;

const CONFIG: StoreConfig = StoreConfig {
    layout: LayoutKind::Blobstore,
    policy: LockPolicy::Striped,
};

fn path(p: &str) -> DriverPath {
    DriverPath::new(p).unwrap()
}

/// Two drivers on one directory are two processes' views of it: racing
/// read-then-swap increments lose none (each swap checks and writes under
/// the directory's lock file; a check and write apart would lose some).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn swaps_on_a_directory_exclude_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let drivers: Vec<Arc<ObjectDriver>> = (0..2)
        .map(|_| Arc::new(ObjectDriver::in_dir(dir.path()).unwrap()))
        .collect();
    let p = path("counter/value");
    drivers[0]
        .put_if_version(&p, Bytes::from("0"), None)
        .await
        .unwrap();
    const TASKS: usize = 8;
    const INCREMENTS: usize = 20;
    let refused = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let d = drivers[t % 2].clone();
        let (p, refused) = (p.clone(), refused.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..INCREMENTS {
                loop {
                    let (data, v) = d.get_versioned(&p).await.unwrap();
                    let n: usize = std::str::from_utf8(&data).unwrap().parse().unwrap();
                    match d
                        .put_if_version(&p, Bytes::from((n + 1).to_string()), Some(&v))
                        .await
                    {
                        Ok(_) => break,
                        Err(e) if e.is_precondition_failed() => {
                            refused.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (data, _) = drivers[1].get_versioned(&p).await.unwrap();
    assert_eq!(
        std::str::from_utf8(&data).unwrap(),
        (TASKS * INCREMENTS).to_string()
    );
    println!(
        "{} swaps refused and retried",
        refused.load(Ordering::Relaxed)
    );
}

/// Grants every plan at once: several instances with no shared locks.
#[derive(Debug)]
struct NoLocks;

#[derive(Debug)]
struct Nothing;

impl HeldLocks for Nothing {
    fn check(&self) -> Result<(), LockError> {
        Ok(())
    }
}

#[async_trait::async_trait]
impl LockService for NoLocks {
    async fn acquire(&self, _plan: &LockPlan) -> Result<Box<dyn HeldLocks>, LockError> {
        Ok(Box::new(Nothing))
    }
}

#[tokio::test]
async fn shared_mode_is_refused_without_conditional_writes() {
    let dir = tempfile::tempdir().unwrap();
    let fs: Arc<dyn Driver> = Arc::new(FsDriver::open(dir.path()).unwrap());
    let err = Store::open_shared(fs, Arc::new(MemoryMeta::new()), CONFIG, Arc::new(NoLocks))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Denied { reason } if reason.contains("conditional writes")),
        "{err}"
    );
}

/// The zot #4337 race with the shared locks taken away: instances
/// read-modify-write one index.json at once. The compare-and-swap turns
/// each lost update into a refused push (the client retries); no
/// acknowledged tag disappears.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compare_and_swap_alone_keeps_every_acknowledged_tag() {
    let dir = tempfile::tempdir().unwrap();
    let meta = Arc::new(MemoryMeta::new());
    let mut stores = Vec::new();
    for _ in 0..3 {
        let driver: Arc<dyn Driver> = Arc::new(ObjectDriver::in_dir(dir.path()).unwrap());
        stores.push(
            Store::open_shared(driver, meta.clone(), CONFIG, Arc::new(NoLocks))
                .await
                .unwrap(),
        );
    }
    let repo = RepoName::parse("shared/app").unwrap();
    let mut tasks = Vec::new();
    for c in 0..12usize {
        let store = stores[c % stores.len()].clone();
        let repo = repo.clone();
        tasks.push(tokio::spawn(async move {
            let (mut acked, mut refused) = (Vec::new(), 0usize);
            for t in 0..10usize {
                let tag = format!("c{c}-t{t}");
                let config = oci::blob(format!("{{\"tag\":\"{tag}\"}}"));
                let layer = oci::blob(testkit::pattern((c * 100 + t) as u64, 2048));
                for (d, data) in [&config, &layer] {
                    store.push_blob(&repo, d, data.clone()).await.unwrap();
                }
                let image = oci::Image::new(&config, &[layer]).build();
                let reference = Reference::parse(&tag).unwrap();
                match store
                    .put_manifest(&repo, &reference, &image.media_type, image.bytes)
                    .await
                {
                    Ok(_) => acked.push(tag),
                    Err(StoreError::Lock(LockError::Lost { .. })) => refused += 1,
                    Err(e) => panic!("{tag}: {e}"),
                }
            }
            (acked, refused)
        }));
    }
    let (mut acked, mut refused) = (Vec::new(), 0);
    for t in tasks {
        let (a, r) = t.await.unwrap();
        acked.extend(a);
        refused += r;
    }
    let listed: Vec<String> = stores[0]
        .tags(&repo, None, None)
        .await
        .unwrap()
        .iter()
        .map(|t| t.to_string())
        .collect();
    let lost: Vec<_> = acked.iter().filter(|t| !listed.contains(t)).collect();
    println!(
        "{} acknowledged, {refused} refused by compare-and-swap, {} lost",
        acked.len(),
        lost.len()
    );
    assert!(lost.is_empty(), "acknowledged tags lost: {lost:?}");
    assert!(
        refused > 0,
        "no push raced another: this run did not exercise the compare-and-swap"
    );
}

/// zot's "unknown blob" after scale-out (#4062, #4215): instance A
/// remembers a blob as present; instance B's GC sweeps it; A is asked to
/// push it again. A must write the bytes again, not acknowledge a blob
/// that is gone.
#[tokio::test]
async fn a_blob_swept_by_another_instance_is_written_again() {
    let driver: Arc<dyn Driver> = Arc::new(ObjectDriver::in_memory());
    let meta = Arc::new(MemoryMeta::new());
    let locks = Arc::new(engine::lock::LockManager::new(LockPolicy::Striped));
    let open = || Store::open_shared(driver.clone(), meta.clone(), CONFIG, locks.clone());
    let (a, b) = (open().await.unwrap(), open().await.unwrap());
    let (r1, r2) = (
        RepoName::parse("one").unwrap(),
        RepoName::parse("two").unwrap(),
    );
    let (d, data) = oci::blob(testkit::pattern(7, 4096));
    a.push_blob(&r1, &d, data.clone()).await.unwrap();
    a.delete_blob(&r1, &d).await.unwrap();
    let swept = b
        .gc(engine::gc::GcOptions::new(std::time::Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(
        swept.count(engine::gc::GcKind::BlobstoreBlob),
        1,
        "{swept:?}"
    );
    a.push_blob(&r2, &d, data.clone()).await.unwrap();
    assert_eq!(
        b.get_blob(&r2, &d).await.unwrap(),
        data,
        "acknowledged, but gone"
    );
}
