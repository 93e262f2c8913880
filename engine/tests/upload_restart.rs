//! Upload sessions survive a restart (DESIGN §13) and expire by last
//! activity (§7): a session's acknowledged chunks are durable and recorded
//! in the metadata store, so a store opened again (after a drop, or a
//! power cut on the sim disk) resumes it at its last acknowledged offset,
//! with a hash that still proves the digest; GC keeps its staged bytes
//! until it expires, then removes them with its record. On every local
//! backend and on S3 (moto), where the bucket itself is looked at too:
//! staged objects and multipart uploads in progress.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use engine::driver::Driver;
use engine::gc::{GcKind, GcOptions};
use engine::meta::{Table, scan_keys};
use engine::store::FindingKind;
use engine::{Digest, ErrorCode, LayoutKind, LockPolicy};
use ocistore_s3::S3Driver;
use testkit::pattern;

const CONFIGS: [(LayoutKind, LockPolicy); 2] = [
    (LayoutKind::Blobstore, LockPolicy::Striped),
    (LayoutKind::Legacy, LockPolicy::Global),
];

fn joined(parts: &[&Bytes]) -> Bytes {
    Bytes::from(
        parts
            .iter()
            .flat_map(|p| p.iter().copied())
            .collect::<Vec<u8>>(),
    )
}

/// Every backend: the local ones and S3.
fn backends() -> impl Iterator<Item = Backend> {
    Backend::ALL.into_iter().chain([Backend::S3])
}

/// [`reopenable`], with the S3 driver kept aside on S3 so the tests can
/// look at the bucket (the harness's own bucket then goes unused).
async fn reopenable_on(
    layout: LayoutKind,
    policy: LockPolicy,
    backend: Backend,
) -> (Reopenable, Option<S3Driver>) {
    if backend != Backend::S3 {
        return (reopenable(layout, policy, backend, |d| d).await, None);
    }
    let s3 = s3_driver("restart");
    let store_driver: Arc<dyn Driver> = Arc::new(s3.clone());
    let r = reopenable(layout, policy, backend, move |_| store_driver).await;
    (r, Some(s3))
}

/// What the bucket holds of writers' staging: the driver's own keys, and
/// the keys with a multipart upload in progress.
async fn bucket_staging(s3: Option<&S3Driver>) -> Vec<String> {
    let Some(s3) = s3 else {
        return Vec::new();
    };
    let mut out: Vec<String> = s3
        .all_keys()
        .await
        .unwrap()
        .into_iter()
        .filter(|k| k.contains("/.ocistore") || k.starts_with(".ocistore"))
        .collect();
    for key in s3.multipart_uploads().await.unwrap() {
        out.push(format!("upload in progress: {key}"));
    }
    out
}

/// Temp files (staged or leftover) anywhere below `root`.
fn temp_files(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else if e.file_name().to_string_lossy().starts_with(".ocistore-tmp") {
                out.push(e.path().display().to_string());
            }
        }
    }
    out
}

/// What is left of upload staging: temp files on a directory backend;
/// elsewhere, what the driver lists as a dead writer's (after a crash or
/// a restart, every staged byte of a gone store is).
async fn staging_left(r: &Reopenable) -> Vec<String> {
    match &r.root {
        Some(root) => temp_files(root),
        None => r
            .driver
            .leftovers(None)
            .await
            .unwrap()
            .into_iter()
            .map(|l| l.path)
            .collect(),
    }
}

/// Sends session `id`'s last chunk, at offset `at`, and closes it as `digest`.
async fn finish_with(r: &Reopenable, id: &str, at: u64, last: &Bytes, digest: &Digest) {
    let label = &r.label;
    let end = at + last.len() as u64 - 1;
    r.store
        .upload_chunk(id, Some((at, end)), last.clone())
        .await
        .unwrap_or_else(|e| panic!("{label}: {e}"));
    r.store
        .finish_upload(id, digest, None)
        .await
        .unwrap_or_else(|e| panic!("{label}: {e}"));
}

async fn recorded_sessions(r: &Reopenable) -> usize {
    scan_keys(&*r.meta, Table::UPLOADS, b"")
        .await
        .unwrap()
        .len()
}

/// A chunked upload interrupted by a restart after its first chunk: the
/// new store knows the session and its offset, takes the rest, and the
/// finished blob has the right digest and bytes (so the hash rebuilt from
/// the staged bytes is the one the first store had).
#[tokio::test]
async fn a_session_survives_a_restart_on_every_backend() {
    for (layout, policy) in CONFIGS {
        for backend in backends() {
            let (mut r, s3) = reopenable_on(layout, policy, backend).await;
            let label = r.label.clone();
            let repo = repo("app/web");
            let (first, rest) = (pattern(1, 300_000), pattern(2, 123_457));
            let whole = joined(&[&first, &rest]);
            let digest = Digest::sha256(&whole);

            let id = r.store.start_upload(&repo).await.unwrap();
            let at = r
                .store
                .upload_chunk(&id, Some((0, first.len() as u64 - 1)), first.clone())
                .await
                .unwrap();
            assert_eq!(at, first.len() as u64, "{label}");
            r.reopen(false).await.unwrap();

            let status = r
                .store
                .upload_status(&id)
                .await
                .unwrap_or_else(|e| panic!("{label}: {e}"));
            assert_eq!(status.repo, repo, "{label}");
            assert_eq!(status.offset, first.len() as u64, "{label}");
            // Out of order is still refused, and changes nothing.
            let e = r
                .store
                .upload_chunk(&id, Some((0, rest.len() as u64 - 1)), rest.clone())
                .await
                .unwrap_err();
            assert_eq!(e.code(), Some(ErrorCode::BlobUploadInvalid), "{label}");
            finish_with(&r, &id, first.len() as u64, &rest, &digest).await;
            assert_eq!(
                r.store.get_blob(&repo, &digest).await.unwrap(),
                whole,
                "{label}"
            );
            assert_eq!(recorded_sessions(&r).await, 0, "{label}: record left");
            assert_eq!(bucket_staging(s3.as_ref()).await, Vec::<String>::new());
            assert_clean(&r.store, &label).await;
        }
    }
}

/// A session of chunks larger than S3's 5 MiB part minimum (three of
/// 6 MiB, so its checkpoints fall inside the driver's 8 MiB parts), a
/// restart, then a 1 MiB tail: the hash rebuilt from the staged bytes
/// proves the digest, and nothing of the staging is left. On S3, whose
/// staging has that part structure (hashing 19 MiB a few times in a debug
/// build costs seconds a backend; the local ones have no parts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_session_resumes_with_the_right_digest_on_s3() {
    let (mut r, s3) = reopenable_on(LayoutKind::Blobstore, LockPolicy::Striped, Backend::S3).await;
    let label = r.label.clone();
    let repo = repo("big");
    let chunks: Vec<Bytes> = (0..3).map(|i| pattern(40 + i, 6 << 20)).collect();
    let tail = pattern(43, 1 << 20);
    let mut all: Vec<&Bytes> = chunks.iter().collect();
    all.push(&tail);
    let whole = joined(&all);
    let digest = Digest::sha256(&whole);

    let id = r.store.start_upload(&repo).await.unwrap();
    let mut at = 0u64;
    for c in &chunks {
        let end = at + c.len() as u64 - 1;
        at = r
            .store
            .upload_chunk(&id, Some((at, end)), c.clone())
            .await
            .unwrap_or_else(|e| panic!("{label}: {e}"));
    }
    r.reopen(true).await.unwrap();
    assert_eq!(
        r.store.upload_status(&id).await.unwrap().offset,
        18 << 20,
        "{label}"
    );
    finish_with(&r, &id, at, &tail, &digest).await;
    let read = r.store.get_blob(&repo, &digest).await.unwrap();
    assert!(read == whole, "{label}: the blob's bytes differ");
    assert_eq!(recorded_sessions(&r).await, 0, "{label}: record left");
    assert_eq!(staging_left(&r).await, Vec::<String>::new(), "{label}");
    assert_eq!(
        bucket_staging(s3.as_ref()).await,
        Vec::<String>::new(),
        "{label}"
    );
    assert_clean(&r.store, &label).await;
}

/// A power cut after an acknowledged chunk and during an unacknowledged
/// one: the acknowledged bytes survive, the rest is dropped, and the
/// client resumes from the offset the session reports.
#[tokio::test]
async fn a_power_cut_keeps_the_acknowledged_chunks() {
    for (layout, policy) in CONFIGS {
        let mut r = reopenable(layout, policy, Backend::Sim, |d| d).await;
        let label = r.label.clone();
        let repo = repo("cut");
        let (acked, lost, rest) = (pattern(3, 70_000), pattern(4, 5_000), pattern(5, 9_999));
        let whole = joined(&[&acked, &rest]);
        let digest = Digest::sha256(&whole);

        let id = r.store.start_upload(&repo).await.unwrap();
        r.store
            .upload_chunk(&id, None, acked.clone())
            .await
            .unwrap();
        // Written, not acknowledged: a streamed body cut off by the crash.
        r.store.append_upload(&id, lost.clone()).await.unwrap();
        assert_eq!(
            r.store.upload_status(&id).await.unwrap().offset,
            (acked.len() + lost.len()) as u64
        );
        r.reopen(true).await.unwrap();

        assert_eq!(
            r.store.upload_status(&id).await.unwrap().offset,
            acked.len() as u64,
            "{label}"
        );
        r.store.append_upload(&id, rest.clone()).await.unwrap();
        assert_eq!(r.store.sync_upload(&id).await.unwrap(), whole.len() as u64);
        r.store.finish_upload(&id, &digest, None).await.unwrap();
        assert_eq!(
            r.store.get_blob(&repo, &digest).await.unwrap(),
            whole,
            "{label}"
        );
        r.store
            .gc(GcOptions::new(Duration::ZERO).upload_timeout(Duration::ZERO))
            .await
            .unwrap();
        assert_eq!(staging_left(&r).await, Vec::<String>::new(), "{label}");
        assert_clean(&r.store, &label).await;
    }
}

/// A session nobody resumed is kept, staged bytes and all, while it is
/// younger than its upload timeout, even by a GC whose delay is zero and
/// whose driver lists its bytes as a dead writer's; once it is idle past
/// the timeout, GC removes its bytes and its record, and nothing is left.
#[tokio::test]
async fn a_recorded_session_lives_until_it_expires_then_nothing_is_left() {
    // Past one part of the s3 driver: staged as a part and a tail piece.
    let staged = pattern(6, (8 << 20) + 4096);
    for backend in backends() {
        let (mut r, s3) = reopenable_on(LayoutKind::Blobstore, LockPolicy::Striped, backend).await;
        let label = r.label.clone();
        let repo = repo("idle");
        let id = r.store.start_upload(&repo).await.unwrap();
        r.store
            .upload_chunk(&id, None, staged.clone())
            .await
            .unwrap();
        r.reopen(true).await.unwrap();
        assert_eq!(recorded_sessions(&r).await, 1, "{label}");

        // Young: kept, and not taken for a leftover.
        let report = r.store.gc(GcOptions::new(Duration::ZERO)).await.unwrap();
        assert_eq!(report.count(GcKind::Upload), 0, "{label}: {report:?}");
        assert_eq!(report.count(GcKind::Leftover), 0, "{label}: {report:?}");
        assert_eq!(report.count(GcKind::Repository), 0, "{label}: {report:?}");
        assert_eq!(
            r.store.upload_status(&id).await.unwrap().offset,
            staged.len() as u64,
            "{label}"
        );
        assert_eq!(
            staging_left(&r).await.len(),
            1,
            "{label}: staged bytes gone"
        );
        if s3.is_some() {
            assert_eq!(
                bucket_staging(s3.as_ref()).await.len(),
                3,
                "{label}: a record, a part and a tail piece"
            );
        }
        // Nor does fsck call them a dead writer's.
        let findings = r.store.fsck().await.unwrap();
        assert!(
            findings.iter().all(|f| f.kind != FindingKind::Leftover),
            "{label}: {findings:?}"
        );

        // Idle past its timeout: expired, bytes and record.
        let report = r
            .store
            .gc(GcOptions::new(Duration::ZERO).upload_timeout(Duration::ZERO))
            .await
            .unwrap();
        assert_eq!(report.count(GcKind::Upload), 1, "{label}: {report:?}");
        let e = r.store.upload_status(&id).await.unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::BlobUploadUnknown), "{label}");
        assert_eq!(recorded_sessions(&r).await, 0, "{label}");
        assert_eq!(staging_left(&r).await, Vec::<String>::new(), "{label}");
        assert_eq!(
            bucket_staging(s3.as_ref()).await,
            Vec::<String>::new(),
            "{label}: staging objects, record or upload left"
        );
        // And after yet another restart, nothing comes back.
        r.reopen(true).await.unwrap();
        assert!(r.store.upload_status(&id).await.is_err(), "{label}");
        assert_eq!(staging_left(&r).await, Vec::<String>::new(), "{label}");
        assert_clean(&r.store, &label).await;
    }
}

/// A started session with no chunk yet stages nothing (its POST writes
/// its record only), yet it survives a power cut at offset 0, takes its
/// chunks and finishes; another one, cancelled after the cut, leaves
/// neither bytes nor record.
#[tokio::test]
async fn a_session_without_chunks_is_a_record_only_and_survives_a_power_cut() {
    for backend in Backend::ALL {
        let mut r = reopenable(LayoutKind::Blobstore, LockPolicy::Striped, backend, |d| d).await;
        let label = r.label.clone();
        let repo = repo("empty/start");
        let kept = r.store.start_upload(&repo).await.unwrap();
        let cancelled = r.store.start_upload(&repo).await.unwrap();
        assert_eq!(staging_left(&r).await, Vec::<String>::new(), "{label}");
        assert_eq!(recorded_sessions(&r).await, 2, "{label}");
        r.reopen(true).await.unwrap();

        assert_eq!(
            r.store.upload_status(&kept).await.unwrap().offset,
            0,
            "{label}"
        );
        r.store.cancel_upload(&cancelled).await.unwrap();
        let data = pattern(8, 70_000);
        let digest = Digest::sha256(&data);
        r.store
            .upload_chunk(&kept, Some((0, data.len() as u64 - 1)), data.clone())
            .await
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        r.store
            .finish_upload(&kept, &digest, None)
            .await
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        assert_eq!(
            r.store.get_blob(&repo, &digest).await.unwrap(),
            data,
            "{label}"
        );
        assert_eq!(recorded_sessions(&r).await, 0, "{label}");
        assert_eq!(staging_left(&r).await, Vec::<String>::new(), "{label}");
        assert_clean(&r.store, &label).await;
    }
}

/// Cancel after a restart removes the staged bytes and the record.
#[tokio::test]
async fn cancelling_a_resumed_session_leaves_nothing() {
    for backend in backends() {
        let (mut r, s3) = reopenable_on(LayoutKind::Blobstore, LockPolicy::Striped, backend).await;
        let label = r.label.clone();
        let id = r.store.start_upload(&repo("c")).await.unwrap();
        r.store
            .upload_chunk(&id, None, pattern(7, 1000))
            .await
            .unwrap();
        r.reopen(true).await.unwrap();
        r.store.cancel_upload(&id).await.unwrap();
        assert!(r.store.upload_status(&id).await.is_err(), "{label}");
        assert_eq!(recorded_sessions(&r).await, 0, "{label}");
        assert_eq!(staging_left(&r).await, Vec::<String>::new(), "{label}");
        assert_eq!(
            bucket_staging(s3.as_ref()).await,
            Vec::<String>::new(),
            "{label}"
        );
    }
}

/// Two calls on one session at once: the second is refused, as before
/// restarts existed, also while the first is resuming a dormant session.
#[tokio::test]
async fn concurrent_calls_on_a_resumed_session_are_refused() {
    let gate = Arc::new(Gate::default());
    let g = gate.clone();
    let mut r = reopenable(
        LayoutKind::Blobstore,
        LockPolicy::Striped,
        Backend::Sim,
        move |d| Arc::new(Gated::new(d, g)) as Arc<dyn Driver>,
    )
    .await;
    let id = r.store.start_upload(&repo("busy")).await.unwrap();
    let first = pattern(8, 100);
    r.store
        .upload_chunk(&id, None, first.clone())
        .await
        .unwrap();
    r.reopen(true).await.unwrap();

    gate.arm();
    let store = r.store.clone();
    let id2 = id.clone();
    let second = pattern(9, 50);
    let held = tokio::spawn({
        let second = second.clone();
        async move { store.upload_chunk(&id2, None, second).await }
    });
    gate.entered().await;
    let e = r
        .store
        .upload_chunk(&id, None, pattern(10, 1))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::BlobUploadUnknown));
    let e = r.store.cancel_upload(&id).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::BlobUploadUnknown));
    gate.release();
    assert_eq!(held.await.unwrap().unwrap(), 150);
    let whole = joined(&[&first, &second]);
    let digest = Digest::sha256(&whole);
    r.store.finish_upload(&id, &digest, None).await.unwrap();
    assert_eq!(
        r.store.get_blob(&repo("busy"), &digest).await.unwrap(),
        whole
    );
}
