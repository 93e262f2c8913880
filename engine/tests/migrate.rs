//! In-place migration under every crash point and every full-disk point,
//! on local (hard links) and object (markers) semantics over the sim disk;
//! then side-by-side sync and its comparison.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use engine::driver::{Driver, DriverError, ObjectDriver, SimDisk, SimDriver, SimFaults};
use engine::meta::{MemoryMeta, MetaStore};
use engine::migrate::{migrate_in_place, sync::sync_stores};
use engine::oci::media;
use engine::{Digest, LayoutKind, LockPolicy, Reference, Store, StoreConfig, StoreError};

const LEGACY: StoreConfig = StoreConfig {
    layout: LayoutKind::Legacy,
    policy: LockPolicy::Striped,
};
const BLOBSTORE: StoreConfig = StoreConfig {
    layout: LayoutKind::Blobstore,
    policy: LockPolicy::Striped,
};

/// Everything a client can observe: per repo, tags and every blob's bytes
/// (manifests included).
type Logical = BTreeMap<String, (BTreeMap<String, Digest>, BTreeMap<Digest, Bytes>)>;

async fn logical(s: &Store) -> Logical {
    let mut out = Logical::new();
    for repo in s.catalog(None, None).await.unwrap() {
        let mut tags = BTreeMap::new();
        for t in s.tags(&repo, None, None).await.unwrap() {
            let m = s
                .get_manifest(&repo, &Reference::Tag(t.clone()))
                .await
                .unwrap();
            tags.insert(t.to_string(), m.digest);
        }
        let mut blobs = BTreeMap::new();
        for d in s.repo_blobs(&repo).await.unwrap() {
            blobs.insert(d.clone(), s.get_blob(&repo, &d).await.unwrap());
        }
        out.insert(repo.to_string(), (tags, blobs));
    }
    out
}

/// 3 repositories, shared layers, a multi-arch index, a referrer, the empty
/// blob and a blob no manifest references.
async fn populate(s: &Store) {
    let base = image(1, 3);
    push_image(s, &repo("a"), &base, Some("v1")).await;
    push_image(s, &repo("b"), &base, Some("base")).await;
    let app = image_with(
        blob(50, 80),
        vec![base.layers[0].clone(), blob(51, 900)],
        None,
        None,
    );
    push_image(s, &repo("b"), &app, Some("app")).await;
    let (amd, arm) = (image(2, 2), image(3, 1));
    let r = repo("c/d");
    push_image(s, &r, &amd, None).await;
    push_image(s, &r, &arm, None).await;
    let (_, body) = index_of(&[&amd, &arm]);
    s.put_manifest(&r, &tag("multi"), media::OCI_INDEX, body)
        .await
        .unwrap();
    let sig = image_with(
        blob(60, 30),
        vec![blob(61, 40)],
        Some(&base.digest),
        Some("application/vnd.example.sig"),
    );
    push_image(s, &repo("a"), &sig, None).await;
    s.push_blob(&repo("a"), &Digest::sha256(b""), Bytes::new())
        .await
        .unwrap();
    let (loose, data) = blob(70, 500);
    s.push_blob(&repo("c/d"), &loose, data).await.unwrap();
}

#[derive(Clone, Copy, Debug)]
enum Semantics {
    Links,
    Objects,
}

fn driver_on(disk: &Arc<SimDisk>, sem: Semantics) -> Arc<dyn Driver> {
    match sem {
        Semantics::Links => Arc::new(SimDriver::on(disk.clone())),
        Semantics::Objects => Arc::new(ObjectDriver::on_sim(disk.clone())),
    }
}

async fn legacy_root(sem: Semantics) -> (Arc<SimDisk>, Arc<MemoryMeta>, Logical, usize) {
    let disk = SimDisk::new();
    // One machine: a crash can fall between a disk call and a metadata commit.
    let meta = Arc::new(MemoryMeta::on_machine(disk.clone()));
    let store = Store::open(driver_on(&disk, sem), meta.clone(), LEGACY)
        .await
        .unwrap();
    populate(&store).await;
    let before = logical(&store).await;
    let markers = count_markers(&disk);
    (disk, meta, before, markers)
}

fn count_markers(disk: &SimDisk) -> usize {
    let empty = Digest::sha256(b"").hex().to_owned();
    disk.durable_image()
        .iter()
        .filter(|(p, bytes)| {
            p.contains("/blobs/sha256/") && bytes.is_empty() && !p.ends_with(&empty)
        })
        .count()
}

async fn migrate(
    disk: &Arc<SimDisk>,
    meta: &Arc<MemoryMeta>,
    sem: Semantics,
) -> Result<engine::migrate::MigrationReport, StoreError> {
    let meta: Arc<dyn MetaStore> = meta.clone();
    migrate_in_place(driver_on(disk, sem), meta, &|_, _| {}).await
}

/// The migrated root: same logical content, spotless fsck, no legacy leftovers.
async fn check_migrated(
    disk: &Arc<SimDisk>,
    meta: &Arc<MemoryMeta>,
    sem: Semantics,
    before: &Logical,
    context: &str,
) {
    let store = Store::open(driver_on(disk, sem), meta.clone(), BLOBSTORE)
        .await
        .unwrap_or_else(|e| panic!("{context}: {e}"));
    let after = logical(&store).await;
    let changed: Vec<&String> = before
        .keys()
        .chain(after.keys())
        .filter(|r| before.get(*r) != after.get(*r))
        .collect();
    assert!(
        changed.is_empty(),
        "{context}: content changed in {changed:?}"
    );
    let findings = store.fsck().await.unwrap();
    assert!(findings.is_empty(), "{context}: {findings:#?}");
    assert_eq!(count_markers(disk), 0, "{context}: markers left");
    if let Semantics::Objects = sem {
        let leftovers: Vec<_> = disk
            .durable_image()
            .into_keys()
            .filter(|p| !p.starts_with('_') && p.contains("/blobs/"))
            .collect();
        assert!(
            leftovers.is_empty(),
            "{context}: legacy objects left: {leftovers:?}"
        );
    }
    assert!(
        meta.dump()
            .get(&engine::meta::Table::DEDUPE)
            .is_none_or(|t| t.is_empty()),
        "{context}: dedupe index left"
    );
}

fn crashed(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::Storage(DriverError::Crashed { .. })
            | StoreError::Meta(engine::meta::MetaError::Crashed)
    )
}

async fn crash_at_every_call(sem: Semantics) -> u64 {
    let mut k = 0;
    loop {
        let (disk, meta, before, _) = legacy_root(sem).await;
        disk.set_faults(SimFaults {
            crash_after_ops: Some(k),
            ..SimFaults::default()
        });
        let first = migrate(&disk, &meta, sem).await;
        disk.set_faults(SimFaults::default());
        disk.power_on();
        if first.is_ok() {
            check_migrated(&disk, &meta, sem, &before, &format!("{sem:?} no crash")).await;
            return k;
        }
        let err = first.unwrap_err();
        assert!(crashed(&err), "k={k}: {err}");
        // Once started, a legacy store must not open in the middle: it would misread.
        if engine::migrate::in_progress(&*meta).await.unwrap() {
            assert!(
                Store::open(driver_on(&disk, sem), meta.clone(), LEGACY)
                    .await
                    .is_err(),
                "k={k}: opened mid-migration"
            );
        }
        // Every third point, crash again during the resumed run.
        if k % 3 == 0 {
            disk.set_faults(SimFaults {
                crash_after_ops: Some(k / 2 + 1),
                ..SimFaults::default()
            });
            let second = migrate(&disk, &meta, sem).await;
            disk.set_faults(SimFaults::default());
            disk.power_on();
            if let Err(e) = second {
                assert!(crashed(&e), "k={k} (second): {e}");
            }
        }
        let report = migrate(&disk, &meta, sem)
            .await
            .unwrap_or_else(|e| panic!("k={k}: resume failed: {e}"));
        assert!(
            report.completed && report.problems.is_empty(),
            "k={k}: {report:?}"
        );
        check_migrated(
            &disk,
            &meta,
            sem,
            &before,
            &format!("{sem:?} crash after call {k}"),
        )
        .await;
        k += 1;
    }
}

#[tokio::test]
async fn crash_after_every_call_links() {
    let calls = crash_at_every_call(Semantics::Links).await;
    eprintln!("links: crashed after each of {calls} calls");
    assert!(calls > 50, "only {calls} crash points");
}

#[tokio::test]
async fn crash_after_every_call_objects() {
    let calls = crash_at_every_call(Semantics::Objects).await;
    eprintln!("objects: crashed after each of {calls} calls");
    assert!(calls > 50, "only {calls} crash points");
}

async fn no_space_at_every_call(sem: Semantics) {
    let mut k = 0;
    loop {
        let (disk, meta, before, _) = legacy_root(sem).await;
        disk.set_faults(SimFaults {
            no_space_after_ops: Some(k),
            ..SimFaults::default()
        });
        let first = migrate(&disk, &meta, sem).await;
        disk.set_faults(SimFaults::default());
        if first.is_ok() {
            check_migrated(&disk, &meta, sem, &before, &format!("{sem:?} with space")).await;
            break;
        }
        let err = first.unwrap_err();
        assert!(
            matches!(&err, StoreError::Storage(e) if e.is_no_space()),
            "k={k}: {err}"
        );
        // Space freed: the same command finishes the job.
        migrate(&disk, &meta, sem)
            .await
            .unwrap_or_else(|e| panic!("k={k}: {e}"));
        check_migrated(
            &disk,
            &meta,
            sem,
            &before,
            &format!("{sem:?} no space after call {k}"),
        )
        .await;
        k += 1;
    }
    assert!(k > 5, "no space was injected at only {k} points");
}

#[tokio::test]
async fn no_space_at_every_call_links() {
    no_space_at_every_call(Semantics::Links).await;
}

#[tokio::test]
async fn no_space_at_every_call_objects() {
    no_space_at_every_call(Semantics::Objects).await;
}

#[tokio::test]
async fn object_migration_copies_each_digest_once_and_removes_every_marker() {
    let (disk, meta, before, markers) = legacy_root(Semantics::Objects).await;
    assert!(
        markers > 0,
        "the legacy object store has no markers to remove"
    );
    let report = migrate(&disk, &meta, Semantics::Objects).await.unwrap();
    let unique: u64 = before
        .values()
        .flat_map(|(_, blobs)| blobs.iter())
        .map(|(d, b)| (d.clone(), b.len() as u64))
        .collect::<BTreeMap<_, _>>()
        .values()
        .sum();
    assert_eq!(report.bytes_copied, unique, "{report:?}");
    assert_eq!(report.markers_removed as usize, markers, "{report:?}");
    check_migrated(&disk, &meta, Semantics::Objects, &before, "objects").await;
    // Running it again is a no-op.
    let again = migrate(&disk, &meta, Semantics::Objects).await.unwrap();
    assert!(again.completed && again.bytes_copied == 0);
}

#[tokio::test]
async fn local_migration_copies_no_bytes() {
    let (disk, meta, before, _) = legacy_root(Semantics::Links).await;
    let report = migrate(&disk, &meta, Semantics::Links).await.unwrap();
    assert_eq!(report.bytes_copied, 0);
    assert!(report.blobs_relinked >= 10, "{report:?}");
    check_migrated(&disk, &meta, Semantics::Links, &before, "links").await;
}

#[tokio::test]
async fn data_lost_before_migration_is_reported_not_fatal() {
    let (disk, meta, _, _) = legacy_root(Semantics::Objects).await;
    // Destroy the original of a deduplicated layer: only markers remain.
    let base = image(1, 3);
    let victim = format!("a/blobs/sha256/{}", base.layers[1].0.hex());
    let d = ObjectDriver::on_sim(disk.clone());
    d.delete(&engine::driver::DriverPath::new(&victim).unwrap())
        .await
        .unwrap();
    let report = migrate(&disk, &meta, Semantics::Objects).await.unwrap();
    assert!(report.completed);
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains(&*base.layers[1].0.hex())),
        "{report:?}"
    );
    assert_eq!(count_markers(&disk), 0);
}

/// A power cut can split the legacy dedupe index from the disk: here the
/// entry of a layer whose original is in `zz` and whose duplicate (a marker
/// on object stores) is in `aa` is gone while both files stay. Opening the
/// store reconciles it (fsck clean, `aa`'s copy readable), and a migration
/// of the split root, run before any open, still loses nothing: it meets
/// `aa`'s marker first, and a marker whose original the index forgot is
/// not lost data (zot #2625).
#[tokio::test]
async fn a_dedupe_index_split_by_a_crash_is_reconciled_and_migrates_losslessly() {
    let split_root = |sem| async move {
        let (disk, meta, _, _) = legacy_root(sem).await;
        let store = Store::open(driver_on(&disk, sem), meta.clone(), LEGACY)
            .await
            .unwrap();
        let img = image(70, 1);
        push_image(&store, &repo("zz"), &img, Some("v")).await;
        push_image(&store, &repo("aa"), &img, Some("v")).await;
        let before = logical(&store).await;
        let batch = engine::meta::Batch::new()
            .delete(engine::meta::Table::DEDUPE, img.layers[0].0.to_string());
        meta.commit(batch).await.unwrap();
        (disk, meta, before)
    };
    for sem in [Semantics::Links, Semantics::Objects] {
        let (disk, meta, before) = split_root(sem).await;
        let store = Store::open(driver_on(&disk, sem), meta.clone(), LEGACY)
            .await
            .unwrap();
        let findings = store.fsck().await.unwrap();
        assert!(findings.is_empty(), "{sem:?}: after reopen: {findings:#?}");
        assert_eq!(logical(&store).await, before, "{sem:?}: after reopen");

        let (disk, meta, before) = split_root(sem).await;
        let report = migrate(&disk, &meta, sem).await.unwrap();
        assert!(report.problems.is_empty(), "{sem:?}: {:?}", report.problems);
        check_migrated(&disk, &meta, sem, &before, &format!("{sem:?}")).await;
    }
}

#[tokio::test]
async fn a_legacy_root_refuses_to_open_as_blobstore_and_names_the_command() {
    let (disk, meta, _, _) = legacy_root(Semantics::Links).await;
    let e = Store::open(driver_on(&disk, Semantics::Links), meta, BLOBSTORE)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("ocistore migrate"), "{e}");
}

#[tokio::test]
async fn side_by_side_sync_is_complete_incremental_and_compared() {
    for (old_backend, new_backend) in [
        (Backend::Fs, Backend::Fs),
        (Backend::ObjectMemory, Backend::ObjectMemory),
        (Backend::Sim, Backend::ObjectMemory),
    ] {
        let old = harness(LayoutKind::Legacy, LockPolicy::Striped, old_backend).await;
        let new = harness(LayoutKind::Blobstore, LockPolicy::Striped, new_backend).await;
        populate(&old.store).await;
        let report = sync_stores(&old.store, &new.store).await.unwrap();
        assert!(report.equal() && report.problems.is_empty(), "{report:?}");
        assert_eq!(logical(&old.store).await, logical(&new.store).await);
        let again = sync_stores(&old.store, &new.store).await.unwrap();
        assert_eq!(
            (again.blobs_copied, again.manifests_copied),
            (0, 0),
            "not incremental: {again:?}"
        );
        // A change on the old side shows up as a difference until re-synced.
        push_image(&old.store, &repo("late"), &image(9, 1), Some("v")).await;
        let diff = engine::migrate::sync::compare(&old.store, &new.store)
            .await
            .unwrap();
        assert!(diff.iter().any(|d| d.contains("late")), "{diff:?}");
        assert!(sync_stores(&old.store, &new.store).await.unwrap().equal());
        assert_clean(&new.store, "synced store").await;
    }
}
