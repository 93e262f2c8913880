//! A full disk, for real: a small tmpfs filled to its last byte (DESIGN §7,
//! invariant 11). A full disk stops writes cleanly, never removals, GC or
//! reads, and once space is free, writes succeed again in the same process.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use engine::driver::{Driver, DriverPath, FsDriver, Instrumented, ObjectDriver, PutMode};
use engine::gc::GcOptions;
use engine::meta::MemoryMeta;
use engine::oci::media;
use engine::store::DEFAULT_RESERVE;
use engine::{
    LayoutKind, LockPolicy, Reference, RepoName, Store, StoreConfig, StoreError, StoreResult,
};
use testkit::Tmpfs;
use testkit::pattern;

const MIB: usize = 1 << 20;

/// Past 4 MiB the fs driver streams through a writer thread, whose
/// `ENOSPC` reaches the caller only when the commit waits for it. That is
/// "no space", as it is for a small write: nothing visible changed and
/// freeing space is the cure. It must not poison the driver the way a
/// failed fsync does.
#[tokio::test]
async fn no_space_in_a_large_streamed_write_is_not_sticky() {
    let tmpfs = Tmpfs::mount(6 * MIB as u64);
    let driver = Instrumented::new(FsDriver::open(tmpfs.path().join("root")).unwrap());
    let big = DriverPath::new("big/object").unwrap();
    let mut w = driver.writer(&big, PutMode::IfAbsent).await.unwrap();
    // 5 MiB fit; the last 2 MiB chunk does not. The first 4 MiB are written
    // inline, the rest goes through the writer thread, whose ENOSPC on the
    // last chunk can only reach the caller when commit waits for it.
    for (i, len) in [1, 1, 1, 1, 1, 2].into_iter().enumerate() {
        w.write(pattern(i as u64, len * MIB))
            .await
            .unwrap_or_else(|e| panic!("chunk {i} refused before commit: {e}"));
    }
    let e = w.commit().await.unwrap_err();
    assert!(e.is_no_space(), "a full disk reported as: {e}");
    assert_eq!(driver.poisoned(), None, "no space poisoned the driver");
    assert!(
        tmpfs.files_named(".ocistore").is_empty(),
        "the failed write left {:?}",
        tmpfs.files_named(".ocistore")
    );
    // The space is back, and the same driver writes again.
    let small = DriverPath::new("small/object").unwrap();
    driver
        .put(&small, Bytes::from_static(b"after"), PutMode::IfAbsent)
        .await
        .unwrap_or_else(|e| panic!("a write after the failed one: {e}"));
    assert_eq!(driver.get(&small, None).await.unwrap(), "after");
    assert!(matches!(
        driver.stat(&big).await,
        Err(e) if e.is_not_found()
    ));
}

/// Pushes `img` (its blobs, then its manifest by `tag`), stopping at the
/// first refusal.
async fn try_push(s: &Store, r: &RepoName, img: &Image, tag: &str) -> StoreResult<()> {
    for (d, data) in std::iter::once(&img.config).chain(&img.layers) {
        s.push_blob(r, d, data.clone()).await?;
    }
    s.put_manifest(
        r,
        &Reference::parse(tag)?,
        media::OCI_MANIFEST,
        img.manifest.clone(),
    )
    .await?;
    Ok(())
}

fn no_space(e: &StoreError) -> bool {
    matches!(e, StoreError::Storage(d) if d.is_no_space())
}

/// Fills the tmpfs to its last byte with tagged images (layers halving
/// as they stop fitting), then single blobs; returns the tagged images.
async fn fill(tmpfs: &Tmpfs, s: &Store) -> Vec<(RepoName, Image)> {
    let mut images = Vec::new();
    let mut layer = 512 * 1024;
    let mut seed = 0;
    while layer >= 1024 {
        seed += 1;
        let r = repo(&format!("app{seed}"));
        let img = image_with(
            blob(seed * 10, 200),
            vec![blob(seed * 10 + 1, layer)],
            None,
            None,
        );
        match try_push(s, &r, &img, "v1").await {
            Ok(()) => images.push((r, img)),
            Err(e) if no_space(&e) => layer /= 2,
            Err(e) => panic!("filling: {e}"),
        }
    }
    let r = repo("crumbs");
    while tmpfs.free() > 0 {
        seed += 1;
        let (d, data) = blob(seed * 10, 1);
        match s.push_blob(&r, &d, data).await {
            Ok(()) => {}
            Err(e) if no_space(&e) => break,
            Err(e) => panic!("filling: {e}"),
        }
    }
    assert!(images.len() >= 2, "only {} images fit", images.len());
    images
}

/// Every image of `images` is still there by its tag, and fsck is clean.
async fn assert_still_tagged_and_clean(s: &Store, images: &[(RepoName, Image)], label: &str) {
    for (r, img) in images {
        assert_eq!(
            s.get_manifest(r, &tag("v1")).await.unwrap().body,
            img.manifest,
            "{label}: {r}"
        );
    }
    assert_clean(s, label).await;
}

/// The layouts and backends a full disk is tried on.
const CASES: [(LayoutKind, Backend); 3] = [
    (LayoutKind::Blobstore, Backend::Fs),
    (LayoutKind::Blobstore, Backend::ObjectDir),
    (LayoutKind::Legacy, Backend::Fs),
];

/// A striped store of `layout` on `backend` over a fresh 6 MiB tmpfs, and
/// a label for its messages.
async fn store_on_tmpfs((layout, backend): (LayoutKind, Backend)) -> (Tmpfs, Store, String) {
    let tmpfs = Tmpfs::mount(6 * MIB as u64);
    let root = tmpfs.path().join("root");
    let driver: Arc<dyn Driver> = match backend {
        Backend::Fs => Arc::new(FsDriver::open(&root).unwrap()),
        _ => Arc::new(ObjectDriver::in_dir(&root).unwrap()),
    };
    let config = StoreConfig {
        layout,
        policy: LockPolicy::Striped,
    };
    let store = Store::open(driver, Arc::new(MemoryMeta::new()), config)
        .await
        .unwrap();
    (tmpfs, store, format!("{layout}/{backend:?}"))
}

/// DESIGN §7, invariant 11, on a real full disk: with the disk at 0 bytes
/// free, a push fails cleanly with "no space", reads work, a tag delete
/// works, GC with delay 0 frees the untagged image, and the same store
/// pushes again.
#[tokio::test]
async fn a_full_disk_stops_writes_not_removals_and_recovers() {
    for case in CASES {
        let (tmpfs, s, label) = store_on_tmpfs(case).await;
        s.keep_reserve(DEFAULT_RESERVE).await.unwrap();
        assert!(s.reserve_held(), "{label}: no reserve on an empty disk");
        let images = fill(&tmpfs, &s).await;
        assert_eq!(tmpfs.free(), 0, "{label}: the disk is not full");

        // A write fails cleanly: "no space", and nothing of it is left.
        let (d, data) = blob(999_999, 3000);
        let e = s
            .push_blob(&repo("late"), &d, data.clone())
            .await
            .unwrap_err();
        assert!(no_space(&e), "{label}: a push on a full disk: {e}");
        assert!(e.to_string().contains("no space left"), "{label}: {e}");
        assert!(
            tmpfs.files_named(".ocistore").is_empty(),
            "{label}: a refused write left {:?}",
            tmpfs.files_named(".ocistore")
        );

        // Reads work; a tag delete works.
        let (r0, img0) = &images[0];
        let (r1, img1) = &images[1];
        assert_eq!(
            s.get_manifest(r1, &tag("v1")).await.unwrap().body,
            img1.manifest,
            "{label}"
        );
        s.delete_manifest(r0, &tag("v1"))
            .await
            .unwrap_or_else(|e| panic!("{label}: a tag delete on a full disk: {e}"));
        assert!(s.tags(r0, None, None).await.unwrap().is_empty(), "{label}");
        // The delete took the reserve back from the space it released
        // (its rewrite shrank the index): a write already admitted cannot
        // take that space, and the next removal finds the reserve again.
        assert!(
            s.reserve_held(),
            "{label}: the delete left the reserve released"
        );

        // GC frees the untagged image's bytes (and takes its reserve back
        // from them first).
        let report = s
            .gc(GcOptions::new(Duration::ZERO))
            .await
            .unwrap_or_else(|e| panic!("{label}: gc on a full disk: {e}"));
        let layer = img0.layers[0].1.len() as u64;
        assert!(
            report.bytes_freed >= layer,
            "{label}: gc freed {} bytes, not the {layer}-byte layer: {report:?}",
            report.bytes_freed
        );
        assert!(tmpfs.free() > 0, "{label}: still full after GC");
        assert!(
            s.get_manifest(r0, &Reference::Digest(img0.digest.clone()))
                .await
                .is_err(),
            "{label}: the untagged image survived GC"
        );

        // The same store writes again.
        assert!(s.reserve_held(), "{label}: the reserve was not re-created");
        s.push_blob(&repo("late"), &d, data.clone())
            .await
            .unwrap_or_else(|e| panic!("{label}: a push after GC freed space: {e}"));
        assert_eq!(
            s.get_blob(&repo("late"), &d).await.unwrap(),
            data,
            "{label}"
        );
        assert_still_tagged_and_clean(&s, &images[1..], &label).await;
    }
}

/// DESIGN §7: a full disk must not stop GC, even with no reserve at all
/// (none kept, or taken by writes admitted before its release). Pruning
/// an untagged image needs an index rewrite, which finds no room; the pass
/// goes on instead of failing: it keeps those rows and all they reference,
/// frees what needs no space (a repository of unreferenced blobs), and
/// then prunes with the space that freed. Before, the first rewrite's
/// "no space" ended the pass, and the store stayed full for good.
#[tokio::test]
async fn gc_on_a_full_disk_without_a_reserve_frees_then_prunes() {
    for case in CASES {
        let (tmpfs, s, label) = store_on_tmpfs(case).await;
        // Filled with a reserve, which the tag delete uses; then no
        // reserve, and the space it held filled with loose blobs too.
        s.keep_reserve(DEFAULT_RESERVE).await.unwrap();
        let images = fill(&tmpfs, &s).await;
        let (r0, img0) = &images[0];
        s.delete_manifest(r0, &tag("v1")).await.unwrap();
        s.keep_reserve(0).await.unwrap();
        fill_with_loose_blobs(&tmpfs, &s).await;
        assert_eq!(tmpfs.free(), 0, "{label}: the disk is not full");

        let report = s
            .gc(GcOptions::new(Duration::ZERO))
            .await
            .unwrap_or_else(|e| panic!("{label}: gc on a full disk with no reserve: {e}"));
        assert!(
            report.deferred.is_empty(),
            "{label}: still deferred after the pass freed space: {report:?}"
        );
        assert!(
            s.get_manifest(r0, &Reference::Digest(img0.digest.clone()))
                .await
                .is_err(),
            "{label}: the untagged image survived GC"
        );
        let layer = img0.layers[0].1.len() as u64;
        assert!(
            report.bytes_freed >= layer,
            "{label}: gc freed {} bytes, not even the {layer}-byte layer: {report:?}",
            report.bytes_freed
        );
        assert_still_tagged_and_clean(&s, &images[1..], &label).await;
    }
}

/// Pushes 1 KiB blobs no manifest references into repository `loose`
/// until the disk refuses one.
async fn fill_with_loose_blobs(tmpfs: &Tmpfs, s: &Store) {
    let r = repo("loose");
    for seed in 500_000.. {
        let (d, data) = blob(seed, if tmpfs.free() > 4096 { 1024 } else { 1 });
        match s.push_blob(&r, &d, data).await {
            Ok(()) => {}
            Err(e) if no_space(&e) => break,
            Err(e) => panic!("filling: {e}"),
        }
    }
}
