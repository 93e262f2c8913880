//! GC: zot's cases on every layout and driver, the cost of a pass, and the
//! race with live pushes on the real multi-thread runtime under every policy.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use engine::driver::{CallKind, DriverPath, PutMode};
use engine::gc::{GcKind, GcOptions};
use engine::oci::media;
use engine::store::FindingKind;
use engine::{ErrorCode, LayoutKind, LockPolicy, Reference};

const NOW: GcOptions = GcOptions {
    delay: Duration::ZERO,
    dry_run: false,
};
const HOUR: GcOptions = GcOptions {
    delay: Duration::from_secs(3600),
    dry_run: false,
};

fn digest_ref(img: &Image) -> Reference {
    Reference::Digest(img.digest.clone())
}

/// After a quiescent GC with delay 0: no orphan and no error at all (invariant 4).
async fn assert_spotless(h: &Harness) {
    let findings = h.store.fsck().await.unwrap();
    assert!(findings.is_empty(), "{}: {findings:#?}", h.label);
}

async fn a_delay_keeps_everything_then_lets_go(h: &Harness) {
    let s = &h.store;
    let r = repo("delay");
    let (old, new) = (image(1, 2), image(2, 2));
    push_image(s, &r, &old, Some("v")).await;
    push_image(s, &r, &new, Some("v")).await; // `old` is now untagged garbage
    let (orphan, data) = blob(3, 100);
    s.push_blob(&r, &orphan, data).await.unwrap();
    for _ in 0..2 {
        let report = s.gc(HOUR).await.unwrap();
        assert!(
            report.items.is_empty(),
            "{}: delay 1h removed {:?}",
            h.label,
            report.items
        );
    }
    s.get_manifest(&r, &digest_ref(&old)).await.unwrap();
    s.stat_blob(&r, &orphan).await.unwrap();
    // Marked on the first sight; once older than the delay, gone.
    let short = GcOptions {
        delay: Duration::from_millis(30),
        dry_run: false,
    };
    assert!(
        s.gc(short).await.unwrap().items.is_empty(),
        "{}: removed on first sight",
        h.label
    );
    tokio::time::sleep(Duration::from_millis(60)).await;
    let report = s.gc(short).await.unwrap();
    assert_eq!(
        report.count(GcKind::Manifest),
        1,
        "{}: {:?}",
        h.label,
        report.items
    );
    assert_eq!(
        code(s.get_manifest(&r, &digest_ref(&old)).await),
        Some(ErrorCode::ManifestUnknown)
    );
    assert_eq!(
        code(s.stat_blob(&r, &orphan).await),
        Some(ErrorCode::BlobUnknown)
    );
    s.get_manifest(&r, &tag("v")).await.unwrap();
}

fn code<T>(r: Result<T, engine::StoreError>) -> Option<ErrorCode> {
    r.err().and_then(|e| e.code())
}

/// A blob garbage long enough to go, then referenced by an untagged
/// manifest still younger than the delay: the manifest stays, and so does
/// the blob (the kept set covers rows kept for their age, not only rows
/// reached from a tag).
async fn a_young_manifest_keeps_an_old_garbage_blob(h: &Harness) {
    let s = &h.store;
    let r = repo("young");
    let keep_tagged = image(40, 1);
    push_image(s, &r, &keep_tagged, Some("v")).await;
    let img = image(41, 1);
    let (layer, data) = &img.layers[0];
    s.push_blob(&r, layer, data.clone()).await.unwrap();
    let short = GcOptions {
        delay: Duration::from_millis(30),
        dry_run: false,
    };
    s.gc(short).await.unwrap(); // marks the layer as garbage
    tokio::time::sleep(Duration::from_millis(60)).await;
    push_image(s, &r, &img, None).await; // untagged: garbage from now on
    let report = s.gc(short).await.unwrap();
    assert!(
        report.items.is_empty(),
        "{}: removed {:?}",
        h.label,
        report.items
    );
    s.get_manifest(&r, &digest_ref(&img)).await.unwrap();
    s.stat_blob(&r, layer).await.unwrap();
}

async fn untagged_go_referrers_stay(h: &Harness) {
    let s = &h.store;
    let r = repo("refs");
    let subject = image(10, 2);
    push_image(s, &r, &subject, Some("v1")).await;
    let sig = image_with(
        blob(11, 30),
        vec![blob(12, 40)],
        Some(&subject.digest),
        Some("application/vnd.example.sig"),
    );
    let sig_of_sig = image_with(
        blob(13, 30),
        vec![],
        Some(&sig.digest),
        Some("application/vnd.example.sig"),
    );
    let orphan_ref = image_with(
        blob(14, 30),
        vec![blob(15, 40)],
        Some(&image(99, 1).digest),
        None,
    );
    let untagged = image(16, 2);
    for img in [&sig, &sig_of_sig, &orphan_ref, &untagged] {
        push_image(s, &r, img, None).await;
    }
    let report = s.gc(NOW).await.unwrap();
    assert_eq!(
        report.count(GcKind::Manifest),
        2,
        "{}: {:?}",
        h.label,
        report.items
    );
    for kept in [&subject, &sig, &sig_of_sig] {
        s.get_manifest(&r, &digest_ref(kept)).await.unwrap();
        for (d, data) in std::iter::once(&kept.config).chain(&kept.layers) {
            assert_eq!(&s.get_blob(&r, d).await.unwrap(), data);
        }
    }
    for gone in [&orphan_ref, &untagged] {
        assert_eq!(
            code(s.get_manifest(&r, &digest_ref(gone)).await),
            Some(ErrorCode::ManifestUnknown)
        );
        assert_eq!(
            code(s.stat_blob(&r, &gone.layers[0].0).await),
            Some(ErrorCode::BlobUnknown)
        );
    }
    assert_spotless(h).await;
}

async fn nested_index_dag_is_kept(h: &Harness) {
    let s = &h.store;
    let r = repo("dag");
    let (amd, arm, extra) = (image(20, 2), image(21, 2), image(22, 1));
    for img in [&amd, &arm, &extra] {
        push_image(s, &r, img, None).await;
    }
    let (inner, inner_body) = index_of(&[&amd, &arm]);
    s.put_manifest(
        &r,
        &Reference::Digest(inner.clone()),
        media::OCI_INDEX,
        inner_body.clone(),
    )
    .await
    .unwrap();
    // An index of (an index, an image), tagged: everything below is reachable.
    let outer = serde_json::json!({
        "schemaVersion": 2, "mediaType": media::OCI_INDEX,
        "manifests": [
            {"mediaType": media::OCI_INDEX, "digest": inner.to_string(), "size": inner_body.len()},
            {"mediaType": media::OCI_MANIFEST, "digest": extra.digest.to_string(), "size": extra.manifest.len()},
        ],
    });
    s.put_manifest(
        &r,
        &tag("all"),
        media::OCI_INDEX,
        Bytes::from(serde_json::to_vec(&outer).unwrap()),
    )
    .await
    .unwrap();
    let report = s.gc(NOW).await.unwrap();
    assert!(
        report.items.is_empty(),
        "{}: removed {:?}",
        h.label,
        report.items
    );
    for img in [&amd, &arm, &extra] {
        for (d, _) in std::iter::once(&img.config).chain(&img.layers) {
            s.stat_blob(&r, d).await.unwrap();
        }
    }
    // Untag the top: the whole DAG is garbage.
    s.delete_manifest(&r, &tag("all")).await.unwrap();
    let report = s.gc(NOW).await.unwrap();
    assert_eq!(
        report.count(GcKind::Manifest),
        5,
        "{}: {:?}",
        h.label,
        report.items
    );
    assert_spotless(h).await;
}

async fn dry_run_changes_nothing_and_predicts_the_real_run(h: &Harness) {
    let s = &h.store;
    let r = repo("dry");
    push_image(s, &r, &image(30, 2), Some("keep")).await;
    push_image(s, &r, &image(31, 3), None).await;
    let index_path = DriverPath::new("dry/index.json").unwrap();
    let before = s.driver().get(&index_path, None).await.unwrap();
    let objects_before = s.driver().list(None).await.unwrap();
    let dry = s
        .gc(GcOptions {
            delay: Duration::ZERO,
            dry_run: true,
        })
        .await
        .unwrap();
    assert!(dry.dry_run && !dry.items.is_empty());
    assert_eq!(
        s.driver().get(&index_path, None).await.unwrap(),
        before,
        "dry run rewrote index.json"
    );
    assert_eq!(
        s.driver().list(None).await.unwrap(),
        objects_before,
        "dry run changed objects"
    );
    let real = s.gc(NOW).await.unwrap();
    let key = |items: &[engine::gc::GcItem]| {
        let mut v: Vec<_> = items
            .iter()
            .map(|i| (format!("{:?}", i.kind), i.repo.clone(), i.digest.clone()))
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        key(&dry.items),
        key(&real.items),
        "{}: dry run and real run disagree",
        h.label
    );
    assert_spotless(h).await;
}

async fn unknown_media_type_rows_are_pruned_shared_config_survives(h: &Harness) {
    let s = &h.store;
    let r = repo("weird");
    let healthy = image(40, 1);
    push_image(s, &r, &healthy, Some("ok")).await;
    // A row of a media type the store does not know, pointing at the
    // healthy image's config (zot's case), planted as a foreign tool would.
    let index_path = DriverPath::new("weird/index.json").unwrap();
    let mut index: serde_json::Value =
        serde_json::from_slice(&s.driver().get(&index_path, None).await.unwrap()).unwrap();
    index["manifests"].as_array_mut().unwrap().push(serde_json::json!({
        "mediaType": "application/vnd.unknown.thing", "digest": healthy.config.0.to_string(), "size": healthy.config.1.len(),
        "annotations": {"org.opencontainers.image.ref.name": "odd"},
    }));
    s.driver()
        .put(
            &index_path,
            Bytes::from(serde_json::to_vec(&index).unwrap()),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
    let report = s.gc(NOW).await.unwrap();
    assert_eq!(
        report.count(GcKind::Manifest),
        1,
        "{}: {:?}",
        h.label,
        report.items
    );
    assert_eq!(
        report.count(GcKind::Blob),
        0,
        "{}: {:?}",
        h.label,
        report.items
    );
    let names: Vec<String> = s
        .tags(&r, None, None)
        .await
        .unwrap()
        .iter()
        .map(|t| t.to_string())
        .collect();
    assert_eq!(names, ["ok"]);
    assert_eq!(
        s.get_blob(&r, &healthy.config.0).await.unwrap(),
        healthy.config.1
    );
    assert_spotless(h).await;
}

async fn stale_uploads_go_only_past_the_delay(h: &Harness) {
    let s = &h.store;
    let r = repo("uploads");
    push_image(s, &r, &image(50, 1), Some("v")).await;
    let id = s.start_upload(&r).await.unwrap();
    s.upload_chunk(&id, None, Bytes::from_static(b"partial"))
        .await
        .unwrap();
    // A staged upload left by a crash between commit and ingest.
    let leftover = DriverPath::new("uploads/.uploads/left-by-a-crash").unwrap();
    s.driver()
        .put(&leftover, Bytes::from_static(b"junk"), PutMode::Overwrite)
        .await
        .unwrap();
    assert_eq!(s.gc(HOUR).await.unwrap().count(GcKind::Upload), 0);
    s.upload_status(&id).unwrap();
    assert_eq!(s.gc(NOW).await.unwrap().count(GcKind::Upload), 2);
    assert_eq!(
        code(s.upload_status(&id)),
        Some(ErrorCode::BlobUploadUnknown)
    );
    assert!(s.driver().stat(&leftover).await.unwrap_err().is_not_found());
}

async fn an_emptied_repository_disappears(h: &Harness) {
    let s = &h.store;
    let (r, other) = (repo("ephemeral"), repo("stays"));
    let img = image(60, 2);
    push_image(s, &r, &img, Some("v")).await;
    push_image(s, &other, &image(61, 1), Some("v")).await;
    s.delete_manifest(&r, &tag("v")).await.unwrap();
    let report = s.gc(NOW).await.unwrap();
    assert_eq!(
        report.count(GcKind::Repository),
        1,
        "{}: {:?}",
        h.label,
        report.items
    );
    let repos: Vec<String> = s
        .catalog(None, None)
        .await
        .unwrap()
        .iter()
        .map(|r| r.to_string())
        .collect();
    assert_eq!(repos, ["stays"]);
    assert!(
        s.driver()
            .list(Some(&DriverPath::new("ephemeral").unwrap()))
            .await
            .unwrap()
            .is_empty()
    );
    if s.config().layout == LayoutKind::Blobstore {
        assert!(
            report.count(GcKind::BlobstoreBlob) >= 3,
            "{}: {:?}",
            h.label,
            report.items
        );
        assert!(report.bytes_freed > 0);
    }
    assert_spotless(h).await;
    // Pushing again recreates it.
    push_image(s, &r, &img, Some("v")).await;
    s.get_manifest(&r, &tag("v")).await.unwrap();
}

async fn a_pass_reads_each_manifest_once(h: &Harness) {
    let s = &h.store;
    let r = repo("cost");
    let base = image(70, 3);
    push_image(s, &r, &base, Some("base")).await;
    const N: usize = 40;
    for i in 0..N as u64 {
        let img = image_with(blob(1000 + i, 20), base.layers.clone(), None, None);
        push_image(s, &r, &img, Some(&format!("t{i}"))).await;
    }
    let before = s.metrics().calls;
    let report = s.gc(NOW).await.unwrap();
    assert!(report.items.is_empty());
    let gets = s.metrics().calls.since(&before).get(CallKind::Get);
    // index.json once, each manifest once (a verified read), nothing per blob.
    assert!(
        gets <= N as u64 + 1 + 3,
        "{}: {gets} reads for {} manifests",
        h.label,
        N + 1
    );
}

macro_rules! gc_cases {
    ($($name:ident),* $(,)?) => {
        async fn run_cases(layout: LayoutKind, backend: Backend) {
            $(
                let h = harness(layout, LockPolicy::Striped, backend).await;
                $name(&h).await;
                assert_clean(&h.store, &format!("{} after {}", h.label, stringify!($name))).await;
            )*
        }
    };
}

gc_cases!(
    a_delay_keeps_everything_then_lets_go,
    a_young_manifest_keeps_an_old_garbage_blob,
    untagged_go_referrers_stay,
    nested_index_dag_is_kept,
    dry_run_changes_nothing_and_predicts_the_real_run,
    unknown_media_type_rows_are_pruned_shared_config_survives,
    stale_uploads_go_only_past_the_delay,
    an_emptied_repository_disappears,
    a_pass_reads_each_manifest_once,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zot_gc_cases_every_layout_and_driver() {
    for layout in [LayoutKind::Legacy, LayoutKind::Blobstore] {
        for backend in Backend::ALL {
            let label = format!("{layout}/{backend:?}");
            if let Err(e) = tokio::spawn(run_cases(layout, backend)).await {
                panic!("{label}: {e}");
            }
        }
    }
}

/// Pushes `img` as a client would: with delay 0, GC may take a layer
/// between its upload and the manifest, and the client then pushes again.
async fn push_retrying(
    s: &engine::Store,
    r: &engine::RepoName,
    img: &Image,
    reference: &Reference,
) {
    for _ in 0..50 {
        for (d, data) in std::iter::once(&img.config).chain(&img.layers) {
            s.push_blob(r, d, data.clone()).await.unwrap();
        }
        match s
            .put_manifest(r, reference, media::OCI_MANIFEST, img.manifest.clone())
            .await
        {
            Ok(_) => return,
            Err(e) if e.code() == Some(ErrorCode::ManifestBlobUnknown) => continue,
            Err(e) => panic!("{e}"),
        }
    }
    panic!("{r}: never acknowledged in 50 tries");
}

/// GC runs continuously while pushers move tags over shared layers and
/// other repositories drop the same layers. Every acknowledged manifest
/// keeps every blob, during and after.
async fn race(layout: LayoutKind, policy: LockPolicy, backend: Backend) {
    let h = Arc::new(harness(layout, policy, backend).await);
    let layers: Arc<Vec<_>> = Arc::new((0..4).map(|i| blob(7000 + i, 3000)).collect());
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let gc = {
        let (h, done) = (h.clone(), done.clone());
        tokio::spawn(async move {
            let mut passes = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let report = h.store.gc(NOW).await.unwrap();
                if policy == LockPolicy::Striped {
                    assert_eq!(
                        report.blobstore_exclusive_acquisitions, 0,
                        "striped GC stopped the world"
                    );
                }
                passes += 1;
                tokio::task::yield_now().await;
            }
            passes
        })
    };
    let mut tasks = Vec::new();
    for t in 0..6u64 {
        let (h, layers) = (h.clone(), layers.clone());
        tasks.push(tokio::spawn(async move {
            let s = &h.store;
            let r = repo(&format!("race{}", t % 3));
            for i in 0..12u64 {
                let img = image_with(
                    blob(8000 + t * 100 + i, 40),
                    vec![
                        layers[(t + i) as usize % 4].clone(),
                        layers[(t + i + 1) as usize % 4].clone(),
                    ],
                    None,
                    None,
                );
                let tagname = format!("t{t}");
                push_retrying(s, &r, &img, &tag(&tagname)).await;
                // Acknowledged: every blob stays while the tag points here.
                let m = s.get_manifest(&r, &tag(&tagname)).await.unwrap();
                if m.digest == img.digest {
                    for (d, data) in std::iter::once(&img.config).chain(&img.layers) {
                        assert_eq!(
                            &s.get_blob(&r, d).await.unwrap(),
                            data,
                            "acknowledged blob lost"
                        );
                    }
                }
                // Dereference the shared layers elsewhere: push and drop.
                if i % 3 == 0 {
                    let other = repo(&format!("drop{t}"));
                    push_retrying(s, &other, &img, &Reference::Digest(img.digest.clone())).await;
                    // Untagged, so GC (delay 0) may already have taken it,
                    // and the emptied repository with it.
                    match s
                        .delete_manifest(&other, &Reference::Digest(img.digest.clone()))
                        .await
                    {
                        Ok(()) => {}
                        Err(e) => assert!(
                            matches!(
                                e.code(),
                                Some(ErrorCode::ManifestUnknown | ErrorCode::NameUnknown)
                            ),
                            "{e}"
                        ),
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap_or_else(|e| panic!("{}: {e}", h.label));
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let passes = gc.await.unwrap_or_else(|e| panic!("{}: {e}", h.label));
    assert!(passes > 0);
    h.store.gc(NOW).await.unwrap();
    let findings = h.store.fsck().await.unwrap();
    assert!(
        findings
            .iter()
            .all(|f| f.kind != FindingKind::Orphan && !f.is_error()),
        "{}: {findings:#?}",
        h.label
    );
    for t in 0..6u64 {
        let r = repo(&format!("race{}", t % 3));
        let m = h
            .store
            .get_manifest(&r, &tag(&format!("t{t}")))
            .await
            .unwrap();
        let parsed = engine::oci::Manifest::parse(&m.media_type, &m.body).unwrap();
        for b in parsed.blobs() {
            h.store.get_blob(&r, &b.digest).await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gc_races_pushes_every_policy() {
    for layout in [LayoutKind::Legacy, LayoutKind::Blobstore] {
        for policy in LockPolicy::ALL {
            for backend in [Backend::Sim, Backend::ObjectMemory] {
                race(layout, policy, backend).await;
            }
        }
    }
}
