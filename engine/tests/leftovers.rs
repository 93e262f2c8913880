//! Nothing leaks (DESIGN §7, invariant 12): temp files a killed process
//! left beside their targets are listed by the driver, reported by fsck
//! and reclaimed by GC once older than the delay; a write in progress,
//! in this process or another live one, is never touched.

mod common;

use std::path::Path;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use common::*;
use engine::driver::{Driver, DriverPath, FsDriver, PutMode};
use engine::gc::{GcKind, GcOptions};
use engine::store::FindingKind;
use engine::{LayoutKind, LockPolicy};

/// The pid of a process that has exited.
fn dead_pid() -> u32 {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

/// Writes a temp file named as the driver's commit protocol names them.
fn plant(root: &Path, dir: &str, pid: u32, n: u64, len: usize) -> String {
    let rel = format!("{dir}/.ocistore-tmp.{pid}.{n}");
    std::fs::create_dir_all(root.join(dir)).unwrap();
    std::fs::write(root.join(&rel), vec![7u8; len]).unwrap();
    rel
}

#[tokio::test]
async fn the_driver_lists_only_temp_files_of_dead_writers() {
    let opened = SystemTime::now();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let driver = FsDriver::open(&root).unwrap();
    // A write in progress in this process.
    let target = DriverPath::new("_blobstore/blobs/sha256/live").unwrap();
    let mut live = driver.writer(&target, PutMode::IfAbsent).await.unwrap();
    live.write(Bytes::from_static(b"in progress"))
        .await
        .unwrap();
    // The kernel stamps files from a coarse clock, so a file made just
    // after the process started can carry an mtime before its start (CI
    // listed this live file as a leftover). Make that lag certain.
    let ours = format!(".ocistore-tmp.{}.", std::process::id());
    let live_temp = std::fs::read_dir(root.join("_blobstore/blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(&ours))
        .expect("the live writer's temp file");
    std::fs::File::options()
        .write(true)
        .open(&live_temp)
        .unwrap()
        .set_modified(opened - Duration::from_millis(500))
        .unwrap();

    let dead = dead_pid();
    let killed = plant(&root, "_blobstore/blobs/sha256", dead, 3, 771);
    let empty = plant(&root, "repo/.uploads", dead, 0, 0);
    // Another live process's write (pid 1 always runs).
    plant(&root, "_blobstore/blobs/sha256", 1, 9, 10);
    // Ours by pid, but older than this process: a previous process that
    // had the same pid (a container restarted as the same pid).
    let reused = plant(&root, "repo/blobs/sha256", std::process::id(), 7, 5);
    let old = SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(root.join(&reused))
        .unwrap()
        .set_modified(old)
        .unwrap();

    let found = driver.leftovers(None).await.unwrap();
    let mut paths: Vec<(&str, u64)> = found.iter().map(|l| (l.path.as_str(), l.size)).collect();
    paths.sort();
    let mut expected = vec![
        (killed.as_str(), 771),
        (empty.as_str(), 0),
        (reused.as_str(), 5),
    ];
    expected.sort();
    assert_eq!(paths, expected);
    let below = driver
        .leftovers(Some(&DriverPath::new("repo").unwrap()))
        .await
        .unwrap();
    assert_eq!(below.len(), 2, "{below:?}");

    for l in &found {
        driver.remove_leftover(l).await.unwrap();
        driver.remove_leftover(l).await.unwrap(); // idempotent
        assert!(!root.join(&l.path).exists(), "{} not removed", l.path);
    }
    assert!(driver.leftovers(None).await.unwrap().is_empty());
    assert!(
        !root.join("repo/.uploads").exists(),
        "an emptied directory stayed"
    );
    // The live write was not touched.
    live.commit().await.unwrap();
    assert_eq!(driver.get(&target, None).await.unwrap(), "in progress");
    // A listed name is the only thing remove_leftover removes.
    let not_temp = engine::driver::Leftover {
        path: "_blobstore/blobs/sha256/live".into(),
        ..found[0].clone()
    };
    assert!(driver.remove_leftover(&not_temp).await.is_err());
    assert!(driver.stat(&target).await.is_ok());
}

/// fsck notes leftovers (not as errors); GC keeps them while younger than
/// the delay and reclaims them after, while an upload session of this
/// process goes on untouched; on fs and on the object backend in a
/// directory, both layouts.
#[tokio::test]
async fn fsck_reports_and_gc_reclaims_leftovers() {
    for backend in [Backend::Fs, Backend::ObjectDir] {
        for layout in [LayoutKind::Blobstore, LayoutKind::Legacy] {
            let h = harness(layout, LockPolicy::Striped, backend).await;
            let (s, root) = (&h.store, h.root.clone().unwrap());
            let r = repo("app");
            let img = image(1, 2);
            push_image(s, &r, &img, Some("v1")).await;
            let (d, data) = blob(77, 5000);
            let id = s.start_upload(&r).await.unwrap();
            s.upload_chunk(&id, None, data.slice(..2000)).await.unwrap();

            let dead = dead_pid();
            let planted = [
                plant(&root, "_blobstore/blobs/sha256", dead, 1, 771),
                plant(&root, "_blobstore/blobs/sha256", dead, 2, 0),
                plant(&root, "app/.uploads", dead, 5, 22_000),
            ];
            let leftovers = |findings: &[engine::store::Finding]| {
                let mut seen: Vec<String> = findings
                    .iter()
                    .filter(|f| f.kind == FindingKind::Leftover)
                    .map(|f| f.detail.split(':').next().unwrap().to_owned())
                    .collect();
                seen.sort();
                seen
            };
            let mut expected = planted.to_vec();
            expected.sort();
            let findings = s.fsck().await.unwrap();
            assert_eq!(leftovers(&findings), expected, "{}: {findings:#?}", h.label);
            assert_clean(s, &h.label).await; // leftovers are not errors

            let report = s
                .gc(GcOptions::new(Duration::from_secs(3600)))
                .await
                .unwrap();
            assert_eq!(report.count(GcKind::Leftover), 0, "{}: young", h.label);
            let report = s.gc(GcOptions::new(Duration::ZERO)).await.unwrap();
            assert_eq!(report.count(GcKind::Leftover), 3, "{}: {report:?}", h.label);
            for p in &planted {
                assert!(!root.join(p).exists(), "{}: {p} stayed", h.label);
            }
            assert!(
                leftovers(&s.fsck().await.unwrap()).is_empty(),
                "{}",
                h.label
            );

            // The session's own staging was not a leftover.
            s.upload_chunk(&id, None, data.slice(2000..)).await.unwrap();
            s.finish_upload(&id, &d, None)
                .await
                .unwrap_or_else(|e| panic!("{}: upload after GC: {e}", h.label));
            assert_eq!(s.get_blob(&r, &d).await.unwrap(), data, "{}", h.label);
            assert_eq!(
                s.get_manifest(&r, &tag("v1")).await.unwrap().body,
                img.manifest
            );
            assert_clean(s, &h.label).await;
        }
    }
}
