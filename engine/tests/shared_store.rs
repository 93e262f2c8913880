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

/// Three instances over one object directory, one metadata store and one
/// set of locks, as a load balancer with no session affinity sees them.
async fn three_instances(dir: &std::path::Path) -> Vec<Store> {
    let meta = Arc::new(MemoryMeta::new());
    let locks = Arc::new(engine::lock::LockManager::new(LockPolicy::Striped));
    let mut stores = Vec::new();
    for _ in 0..3 {
        let driver: Arc<dyn Driver> = Arc::new(ObjectDriver::in_dir(dir).unwrap());
        stores.push(
            Store::open_shared(driver, meta.clone(), CONFIG, locks.clone())
                .await
                .unwrap(),
        );
    }
    stores
}

fn is_upload_unknown(e: &StoreError) -> bool {
    matches!(e, StoreError::BlobUploadUnknown { .. })
}

/// A chunked upload whose requests land on whichever instance: started on
/// one, each chunk through another (one of them holding a writer the others
/// have since moved past), its status asked anywhere, finished on a third.
#[tokio::test]
async fn an_upload_moves_between_instances_chunk_by_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let s = three_instances(dir.path()).await;
    let repo = RepoName::parse("lb/app").unwrap();
    let (digest, data) = oci::blob(testkit::pattern(11, 5 * 1000));
    let id = s[0].start_upload(&repo).await.unwrap();
    for (n, at) in [1, 2, 0, 1, 2].into_iter().enumerate() {
        let (start, end) = (n as u64 * 1000, n as u64 * 1000 + 999);
        let chunk = data.slice(start as usize..=end as usize);
        let offset = s[at]
            .upload_chunk(&id, Some((start, end)), chunk)
            .await
            .unwrap_or_else(|e| panic!("chunk {n} through instance {at}: {e}"));
        assert_eq!(offset, end + 1);
        for other in &s {
            assert_eq!(other.upload_status(&id).await.unwrap().offset, end + 1);
        }
    }
    s[0].finish_upload(&id, &digest, None).await.unwrap();
    for other in &s {
        assert_eq!(other.get_blob(&repo, &digest).await.unwrap(), data);
        assert!(is_upload_unknown(
            &other.upload_status(&id).await.unwrap_err()
        ));
    }
    let findings = s[1].fsck().await.unwrap();
    assert!(findings.iter().all(|f| !f.is_error()), "{findings:?}");
    assert!(
        s[2].driver().leftovers(None).await.unwrap().is_empty(),
        "staged bytes left behind"
    );
}

/// Cancelled through one instance, a session is over on every other:
/// the one that wrote its chunks (and still holds a writer) included.
#[tokio::test]
async fn an_upload_cancelled_through_another_instance_is_over_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let s = three_instances(dir.path()).await;
    let repo = RepoName::parse("lb/app").unwrap();
    let id = s[0].start_upload(&repo).await.unwrap();
    s[0].upload_chunk(&id, None, testkit::pattern(1, 3000))
        .await
        .unwrap();
    s[1].cancel_upload(&id).await.unwrap();
    for other in &s {
        assert!(is_upload_unknown(
            &other.upload_status(&id).await.unwrap_err()
        ));
    }
    let late = s[0]
        .upload_chunk(&id, None, testkit::pattern(2, 10))
        .await
        .unwrap_err();
    assert!(is_upload_unknown(&late), "{late}");
    assert!(
        s[2].driver().leftovers(None).await.unwrap().is_empty(),
        "staged bytes left behind"
    );
}

/// GC expires a session once idle, and keeps one whose last chunk came
/// through another instance, however long ago the instance running GC
/// (which started both) last saw it; then GC in an instance that never saw
/// the abandoned one finds nothing more to do.
#[tokio::test]
async fn sessions_expire_by_their_last_chunk_through_any_instance() {
    use engine::gc::{GcKind, GcOptions};
    use std::time::Duration;

    let dir = tempfile::tempdir().unwrap();
    let s = three_instances(dir.path()).await;
    let repo = RepoName::parse("lb/app").unwrap();
    // A stall of the machine only ages both sessions more: the abandoned
    // one stays expired, and the kept one has the whole limit as margin.
    let limit = Duration::from_secs(2);
    let idle = GcOptions::new(Duration::ZERO).upload_timeout(limit);

    let abandoned = s[0].start_upload(&repo).await.unwrap();
    s[0].upload_chunk(&abandoned, None, testkit::pattern(3, 3000))
        .await
        .unwrap();
    let kept = s[0].start_upload(&repo).await.unwrap();
    s[0].upload_chunk(&kept, None, testkit::pattern(4, 3000))
        .await
        .unwrap();
    tokio::time::sleep(limit + Duration::from_millis(100)).await;
    // Both are idle as the instance that started them saw them; one
    // of them is not: a chunk just came through another instance.
    s[1].upload_chunk(&kept, None, testkit::pattern(5, 1000))
        .await
        .unwrap();

    let report = s[0].gc(idle).await.unwrap();
    assert_eq!(report.count(GcKind::Upload), 1, "{report:?}");
    let report = s[2].gc(idle).await.unwrap();
    assert_eq!(report.count(GcKind::Upload), 0, "{report:?}");
    for other in &s {
        assert!(is_upload_unknown(
            &other.upload_status(&abandoned).await.unwrap_err()
        ));
        assert_eq!(other.upload_status(&kept).await.unwrap().offset, 4000);
    }
    let (digest, data) = {
        let mut all = testkit::pattern(4, 3000).to_vec();
        all.extend_from_slice(&testkit::pattern(5, 1000));
        let data = bytes::Bytes::from(all);
        (engine::Digest::sha256(&data), data)
    };
    s[0].finish_upload(&kept, &digest, None).await.unwrap();
    assert_eq!(s[2].get_blob(&repo, &digest).await.unwrap(), data);
    assert!(
        s[1].driver().leftovers(None).await.unwrap().is_empty(),
        "the expired session's staged bytes are left behind"
    );
}

/// A compare-and-swap whose answer was lost: the write lands, and the
/// client library's retry of the same request is refused (412) by that
/// very write. Armed, it does so for the next index.json swap.
#[derive(Debug)]
struct LostAnswer {
    inner: Arc<dyn Driver>,
    armed: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl engine::driver::Intercept for LostAnswer {
    fn inner(&self) -> &dyn Driver {
        &*self.inner
    }

    async fn put_if_version(
        &self,
        path: &DriverPath,
        data: Bytes,
        expected: Option<&engine::driver::ObjectVersion>,
    ) -> engine::driver::DriverResult<engine::driver::ObjectVersion> {
        let version = self.inner.put_if_version(path, data, expected).await?;
        if path.as_str().ends_with("/index.json") && self.armed.swap(false, Ordering::SeqCst) {
            return Err(engine::driver::DriverError::PreconditionFailed { path: path.clone() });
        }
        Ok(version)
    }
}

/// docs/multi-instance.md used to list this as a spurious refusal: the
/// push was answered 503 while its tag was in. The store reads index.json
/// back after a refused swap: its own bytes there mean the write landed.
#[tokio::test]
async fn a_swap_refused_by_its_own_retried_write_is_acknowledged() {
    let lost = Arc::new(engine::driver::Intercepted(LostAnswer {
        inner: Arc::new(ObjectDriver::in_memory()),
        armed: Default::default(),
    }));
    let locks = Arc::new(engine::lock::LockManager::new(LockPolicy::Striped));
    let store = Store::open_shared(lost.clone(), Arc::new(MemoryMeta::new()), CONFIG, locks)
        .await
        .unwrap();
    let repo = RepoName::parse("retried/app").unwrap();
    let config = oci::blob("{}");
    let layer = oci::blob(testkit::pattern(9, 1024));
    for (d, data) in [&config, &layer] {
        store.push_blob(&repo, d, data.clone()).await.unwrap();
    }
    let image = oci::Image::new(&config, &[layer]).build();
    let tag = Reference::parse("v1").unwrap();
    lost.armed.store(true, Ordering::SeqCst);
    store
        .put_manifest(&repo, &tag, &image.media_type, image.bytes.clone())
        .await
        .expect("the tag is in: the refusal was the retry's");
    assert!(
        !lost.armed.load(Ordering::SeqCst),
        "the answer was not lost"
    );
    let tags = store.tags(&repo, None, None).await.unwrap();
    assert_eq!(tags.len(), 1, "{tags:?}");
}

/// Counts whole reads of index.json, plain and versioned. Armed with
/// a push, it lets that push in (another instance, no locks) just before
/// the next plain read answers: a tag that lands between GC's analysis and
/// its removals.
#[derive(Debug)]
struct IndexReads {
    inner: Arc<dyn Driver>,
    reads: AtomicUsize,
    push_before_read: std::sync::Mutex<Option<(Store, RepoName, oci::Built)>>,
}

impl IndexReads {
    fn count(&self, path: &DriverPath) -> bool {
        let index = path.as_str().ends_with("/index.json");
        if index {
            self.reads.fetch_add(1, Ordering::SeqCst);
        }
        index
    }
}

#[async_trait::async_trait]
impl engine::driver::Intercept for IndexReads {
    fn inner(&self) -> &dyn Driver {
        &*self.inner
    }

    async fn get(
        &self,
        path: &DriverPath,
        range: Option<std::ops::Range<u64>>,
    ) -> engine::driver::DriverResult<Bytes> {
        if self.count(path) {
            let armed = self.push_before_read.lock().unwrap().take();
            if let Some((other, repo, image)) = armed {
                let tag = Reference::parse("pushed-meanwhile").unwrap();
                other
                    .put_manifest(&repo, &tag, &image.media_type, image.bytes.clone())
                    .await
                    .expect("the other instance's push");
            }
        }
        self.inner.get(path, range).await
    }

    async fn get_versioned(
        &self,
        path: &DriverPath,
    ) -> engine::driver::DriverResult<(Bytes, engine::driver::ObjectVersion)> {
        self.count(path);
        self.inner.get_versioned(path).await
    }
}

/// A shared store counting its index.json reads, with one repository
/// holding a tagged image and three unreferenced blobs.
struct TaggedWithGarbage {
    counted: Arc<engine::driver::Intercepted<IndexReads>>,
    meta: Arc<MemoryMeta>,
    store: Store,
    repo: RepoName,
    garbage: Vec<oci::Blob>,
}

async fn tagged_with_garbage() -> TaggedWithGarbage {
    let counted = Arc::new(engine::driver::Intercepted(IndexReads {
        inner: Arc::new(ObjectDriver::in_memory()),
        reads: AtomicUsize::new(0),
        push_before_read: Default::default(),
    }));
    let meta = Arc::new(MemoryMeta::new());
    let locks = Arc::new(engine::lock::LockManager::new(LockPolicy::Striped));
    let store = Store::open_shared(counted.clone(), meta.clone(), CONFIG, locks)
        .await
        .unwrap();
    let repo = RepoName::parse("counted/app").unwrap();
    let config = oci::blob("{}");
    let layer = oci::blob(testkit::pattern(3, 512));
    let image = oci::Image::new(&config, std::slice::from_ref(&layer)).build();
    let garbage: Vec<_> = (0..3)
        .map(|i| oci::blob(testkit::pattern(100 + i, 256)))
        .collect();
    for (d, data) in [&config, &layer].into_iter().chain(&garbage) {
        store.push_blob(&repo, d, data.clone()).await.unwrap();
    }
    let tag = Reference::parse("v1").unwrap();
    store
        .put_manifest(&repo, &tag, &image.media_type, image.bytes.clone())
        .await
        .unwrap();
    TaggedWithGarbage {
        counted,
        meta,
        store,
        repo,
        garbage,
    }
}

/// The blobs a pass removed.
fn removed_blobs(report: &engine::gc::GcReport) -> Vec<String> {
    report
        .items
        .iter()
        .filter(|item| item.kind == engine::gc::GcKind::Blob)
        .filter_map(|item| item.digest.clone())
        .collect()
}

/// Shared mode pays a read of index.json for each GC candidate (another
/// instance may have rewritten it), and no more: the analysis and the
/// re-check take the generation of the bytes they parsed instead of
/// reading them again. One read for the analysis, one per candidate, one
/// to see whether the repository is empty.
#[tokio::test]
async fn gc_reads_a_shared_index_once_for_the_analysis_and_once_per_candidate() {
    let TaggedWithGarbage {
        counted,
        store,
        repo,
        garbage,
        ..
    } = tagged_with_garbage().await;
    counted.reads.store(0, Ordering::SeqCst);
    let report = store
        .gc(engine::gc::GcOptions::new(std::time::Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(removed_blobs(&report).len(), garbage.len(), "{report:?}");
    assert_eq!(
        counted.reads.load(Ordering::SeqCst),
        1 + garbage.len() + 1,
        "index.json reads in one pass over one repository with {} candidates",
        garbage.len()
    );
    store
        .get_manifest(&repo, &Reference::parse("v1").unwrap())
        .await
        .unwrap();
}

/// Another instance tags an image over two of the candidates after GC's
/// analysis and before its removals: the re-check sees index.json changed,
/// recomputes what is kept from the bytes it read, and removes only the
/// third blob (delay zero, so nothing but that re-check keeps them). Still
/// one read per candidate.
#[tokio::test]
async fn gc_keeps_what_another_instance_tagged_after_the_analysis() {
    let TaggedWithGarbage {
        counted,
        meta,
        store,
        repo,
        garbage,
    } = tagged_with_garbage().await;
    let other = Store::open_shared(counted.inner.clone(), meta, CONFIG, Arc::new(NoLocks))
        .await
        .unwrap();
    let image = oci::Image::new(&garbage[0], std::slice::from_ref(&garbage[1])).build();
    *counted.push_before_read.lock().unwrap() = Some((other, repo.clone(), image));
    counted.reads.store(0, Ordering::SeqCst);
    let report = store
        .gc(engine::gc::GcOptions::new(std::time::Duration::ZERO))
        .await
        .unwrap();
    assert!(
        counted.push_before_read.lock().unwrap().is_none(),
        "the other instance never pushed"
    );
    assert_eq!(
        removed_blobs(&report),
        vec![garbage[2].0.to_string()],
        "{report:?}"
    );
    for (d, _) in &garbage[..2] {
        store.get_blob(&repo, d).await.unwrap();
    }
    assert_eq!(counted.reads.load(Ordering::SeqCst), 1 + garbage.len() + 1);
    let findings = store.fsck().await.unwrap();
    assert!(findings.is_empty(), "{findings:#?}");
}
