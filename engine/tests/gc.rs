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
use testkit::oci;

const NOW: GcOptions = GcOptions::new(Duration::ZERO);
const HOUR: GcOptions = GcOptions::new(Duration::from_secs(3600));

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
    // Marked on the first sight; once older than the delay, gone. The
    // delay is [`DELAY`], not a few milliseconds: the passes above marked
    // at once, and on a loaded machine the next pass can come tens of
    // milliseconds later.
    assert!(
        s.gc(DELAY).await.unwrap().items.is_empty(),
        "{}: removed on first sight",
        h.label
    );
    tokio::time::sleep(PAST_DELAY).await;
    let report = s.gc(DELAY).await.unwrap();
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
    let short = GcOptions::new(Duration::from_millis(30));
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
    let outer = oci::Index::new(vec![
        oci::Desc::new(media::OCI_INDEX, inner.clone(), inner_body.len()),
        oci::Desc::new(
            media::OCI_MANIFEST,
            extra.digest.clone(),
            extra.manifest.len(),
        ),
    ])
    .build();
    s.put_manifest(&r, &tag("all"), media::OCI_INDEX, outer.bytes)
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
    let dry = s.gc(NOW.dry_run()).await.unwrap();
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

async fn stale_uploads_go_only_past_the_delay_and_idle_limit(h: &Harness) {
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
    s.upload_status(&id).await.unwrap();
    // Delay 0 takes the leftover; the session, idle for less than the
    // upload timeout, is live.
    assert_eq!(s.gc(NOW).await.unwrap().count(GcKind::Upload), 1);
    assert!(s.driver().stat(&leftover).await.unwrap_err().is_not_found());
    s.upload_status(&id).await.unwrap();
    let abandoned = NOW.upload_timeout(Duration::ZERO);
    assert_eq!(s.gc(abandoned).await.unwrap().count(GcKind::Upload), 1);
    assert_eq!(
        code(s.upload_status(&id).await),
        Some(ErrorCode::BlobUploadUnknown)
    );
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

/// A repository a process died making or removing is an `oci-layout`
/// without its `index.json`: no catalog lists it, so only GC's leftover
/// pass comes back to it. Past the delay it goes; younger, or a real
/// repository's, it stays.
async fn a_half_made_repository_goes_past_the_delay(h: &Harness) {
    let s = &h.store;
    let real = repo("real");
    push_image(s, &real, &image(70, 1), Some("v")).await;
    let skeleton = DriverPath::new("half/made/oci-layout").unwrap();
    s.driver()
        .put(
            &skeleton,
            Bytes::from_static(br#"{"imageLayoutVersion":"1.0.0"}"#),
            PutMode::IfAbsent,
        )
        .await
        .unwrap();
    let report = s.gc(HOUR).await.unwrap();
    assert_eq!(
        report.count(GcKind::Leftover),
        0,
        "{}: {:?}",
        h.label,
        report.items
    );
    s.driver().stat(&skeleton).await.unwrap();

    let report = s.gc(NOW).await.unwrap();
    let paths: Vec<_> = report
        .items
        .iter()
        .filter_map(|i| i.path.as_deref())
        .collect();
    assert_eq!(
        paths,
        ["half/made/oci-layout"],
        "{}: {:?}",
        h.label,
        report.items
    );
    assert!(s.driver().stat(&skeleton).await.unwrap_err().is_not_found());
    s.driver()
        .stat(&engine::layout::oci_layout(&real))
        .await
        .unwrap_or_else(|e| panic!("{}: the real repository's oci-layout: {e}", h.label));
    // The name is free again: pushing there makes a whole repository.
    let half = repo("half/made");
    push_image(s, &half, &image(71, 1), Some("v")).await;
    s.get_manifest(&half, &tag("v")).await.unwrap();
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
    a_young_manifest_keeps_an_old_garbage_blob,
    untagged_go_referrers_stay,
    nested_index_dag_is_kept,
    dry_run_changes_nothing_and_predicts_the_real_run,
    unknown_media_type_rows_are_pruned_shared_config_survives,
    stale_uploads_go_only_past_the_delay_and_idle_limit,
    an_emptied_repository_disappears,
    a_half_made_repository_goes_past_the_delay,
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

/// The delay of the cases below: long enough that "touch, then a pass at
/// once" stays well inside it on a loaded machine.
const DELAY: GcOptions = GcOptions::new(Duration::from_millis(1000));

/// Longer than [`DELAY`]: a mark set before this sleep is past the delay after it.
const PAST_DELAY: Duration = Duration::from_millis(1200);

fn panic_message(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(p) => p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "non-string panic".to_owned()),
        Err(e) => e.to_string(),
    }
}

/// Runs `case` on every layout x policy x driver at once, so the cases'
/// sleeps overlap; fails with the panic of each failing combination.
async fn on_every_config<F, Fut>(case: F)
where
    F: Fn(LayoutKind, LockPolicy, Backend) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let configs = all_configs();
    let total = configs.len();
    let mut set = tokio::task::JoinSet::new();
    for (layout, policy, backend) in configs {
        set.spawn(case(layout, policy, backend));
    }
    let mut failures = Vec::new();
    while let Some(joined) = set.join_next().await {
        if let Err(e) = joined {
            failures.push(panic_message(e));
        }
    }
    failures.sort();
    assert!(
        failures.is_empty(),
        "{} of {total} configurations failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Pushing a blob again is a touch: its age restarts, whatever GC marked
/// before. A client that pushes an image's blobs again (each push
/// acknowledged) and then its manifest must not find them gone, though a
/// pass saw them as garbage more than `delay` ago.
async fn a_repush_restarts_the_clock(h: &Harness) {
    let s = &h.store;
    let r = repo("repush");
    let img = image(80, 2);
    let blobs = || std::iter::once(&img.config).chain(&img.layers);
    for (d, data) in blobs() {
        s.push_blob(&r, d, data.clone()).await.unwrap();
    }
    s.gc(DELAY).await.unwrap();
    tokio::time::sleep(PAST_DELAY).await;
    for (d, data) in blobs() {
        s.push_blob(&r, d, data.clone())
            .await
            .unwrap_or_else(|e| panic!("{}: second push of {d} refused: {e}", h.label));
    }
    let report = s.gc(DELAY).await.unwrap();
    if let Err(e) = s
        .put_manifest(&r, &tag("v"), media::OCI_MANIFEST, img.manifest.clone())
        .await
    {
        panic!(
            "{}: manifest over blobs pushed again just before the pass refused: {e} (the pass removed {:?})",
            h.label, report.items
        );
    }
    for (d, _) in blobs() {
        s.stat_blob(&r, d)
            .await
            .unwrap_or_else(|e| panic!("{}: blob {d} pushed again before the pass: {e}", h.label));
    }
}

/// Putting a manifest again by digest is a touch: an untagged manifest a
/// client puts again (acknowledged) restarts its age, so a pass right
/// after keeps it, however long ago GC first marked it.
async fn a_manifest_reput_by_digest_restarts_the_clock(h: &Harness) {
    let s = &h.store;
    let r = repo("reput");
    let img = image(81, 2);
    push_image(s, &r, &img, None).await;
    s.gc(DELAY).await.unwrap();
    tokio::time::sleep(PAST_DELAY).await;
    s.put_manifest(
        &r,
        &digest_ref(&img),
        media::OCI_MANIFEST,
        img.manifest.clone(),
    )
    .await
    .unwrap_or_else(|e| panic!("{}: second put by digest refused: {e}", h.label));
    let report = s.gc(DELAY).await.unwrap();
    if let Err(e) = s.get_manifest(&r, &digest_ref(&img)).await {
        panic!(
            "{}: manifest put again by digest just before the pass is gone: {e} (the pass removed {:?})",
            h.label, report.items
        );
    }
    for (d, _) in std::iter::once(&img.config).chain(&img.layers) {
        s.stat_blob(&r, d)
            .await
            .unwrap_or_else(|e| panic!("{}: blob {d} of the manifest put again: {e}", h.label));
    }
}

/// A young manifest keeps what it references, manifests included: an
/// index pushed just before a pass keeps the children it lists, even a
/// child GC marked as garbage more than `delay` ago, so the index never
/// dangles.
async fn a_young_index_keeps_its_children(h: &Harness) {
    let s = &h.store;
    let r = repo("young-index");
    let child = image(82, 1);
    push_image(s, &r, &child, None).await;
    s.gc(DELAY).await.unwrap();
    tokio::time::sleep(PAST_DELAY).await;
    let (index, body) = index_of(&[&child]);
    s.put_manifest(
        &r,
        &Reference::Digest(index.clone()),
        media::OCI_INDEX,
        body,
    )
    .await
    .unwrap_or_else(|e| panic!("{}: index over a marked child refused: {e}", h.label));
    let report = s.gc(DELAY).await.unwrap();
    if let Err(e) = s.get_manifest(&r, &digest_ref(&child)).await {
        panic!(
            "{}: child of an index pushed just before the pass is gone: {e} (the pass removed {:?})",
            h.label, report.items
        );
    }
    s.get_manifest(&r, &Reference::Digest(index))
        .await
        .unwrap_or_else(|e| panic!("{}: index pushed just before the pass: {e}", h.label));
    let findings = s.fsck().await.unwrap();
    assert!(
        findings.is_empty(),
        "{}: fsck after the pass: {findings:#?}",
        h.label
    );
}

/// A young subject keeps its referrers: a signature pushed long ago for a
/// manifest that a client has just put again stays with it, even though
/// GC marked both as garbage more than `delay` ago.
async fn a_young_subject_keeps_its_referrers(h: &Harness) {
    let s = &h.store;
    let r = repo("young-subject");
    let subject = image(88, 1);
    push_image(s, &r, &subject, None).await;
    let signature = image_with(
        blob(89, 64),
        vec![blob(90, 128)],
        Some(&subject.digest),
        Some("application/vnd.example.signature"),
    );
    push_image(s, &r, &signature, None).await;
    s.gc(DELAY).await.unwrap();
    tokio::time::sleep(PAST_DELAY).await;
    s.put_manifest(
        &r,
        &digest_ref(&subject),
        media::OCI_MANIFEST,
        subject.manifest.clone(),
    )
    .await
    .unwrap_or_else(|e| panic!("{}: second put of the subject refused: {e}", h.label));
    let report = s.gc(DELAY).await.unwrap();
    if let Err(e) = s.get_manifest(&r, &digest_ref(&signature)).await {
        panic!(
            "{}: referrer of a subject put just before the pass is gone: {e} (the pass removed {:?})",
            h.label, report.items
        );
    }
    for (d, _) in std::iter::once(&signature.config).chain(&signature.layers) {
        s.stat_blob(&r, d)
            .await
            .unwrap_or_else(|e| panic!("{}: blob {d} of the kept referrer: {e}", h.label));
    }
    let referrers = s.referrers(&r, &subject.digest, None).await.unwrap();
    assert_eq!(referrers.len(), 1, "{}: referrers after the pass", h.label);
}

/// A mount is a touch too: a blob a repository held as garbage, mounted
/// into it again from another repository (acknowledged), restarts its age.
async fn a_mount_restarts_the_clock(h: &Harness) {
    let s = &h.store;
    let (r, from) = (repo("mount-target"), repo("mount-source"));
    let (d, data) = blob(91, 3000);
    s.push_blob(&r, &d, data.clone()).await.unwrap();
    s.push_blob(&from, &d, data).await.unwrap();
    s.gc(DELAY).await.unwrap();
    tokio::time::sleep(PAST_DELAY).await;
    let mounted = s.mount_blob(&from, &r, &d).await;
    assert!(
        matches!(mounted, Ok(true)),
        "{}: mount refused: {mounted:?}",
        h.label
    );
    let report = s.gc(DELAY).await.unwrap();
    if let Err(e) = s.stat_blob(&r, &d).await {
        panic!(
            "{}: blob mounted just before the pass is gone: {e} (the pass removed {:?})",
            h.label, report.items
        );
    }
}

/// An upload session ages from its last chunk, not from its start: a
/// client streaming a blob slowly is not idle while chunks keep arriving,
/// so a pass right after a chunk leaves it to finish.
async fn a_session_ages_from_its_last_chunk(h: &Harness) {
    let s = &h.store;
    let r = repo("slow-upload");
    let (d, data) = blob(83, 4000);
    let id = s.start_upload(&r).await.unwrap();
    s.upload_chunk(&id, None, data.slice(..2000)).await.unwrap();
    tokio::time::sleep(PAST_DELAY).await;
    s.upload_chunk(&id, None, data.slice(2000..))
        .await
        .unwrap_or_else(|e| panic!("{}: second chunk refused: {e}", h.label));
    let report = s.gc(DELAY).await.unwrap();
    if let Err(e) = s.finish_upload(&id, &d, None).await {
        panic!(
            "{}: session with a chunk just before the pass cannot finish: {e} (the pass removed {:?})",
            h.label, report.items
        );
    }
    s.stat_blob(&r, &d)
        .await
        .unwrap_or_else(|e| panic!("{}: finished upload: {e}", h.label));
}

/// Delay 0 removes unreferenced content at once, but a session that just
/// received a chunk is a push in progress, not content: even a pass with
/// delay 0 leaves it, and the client finishes.
async fn delay_zero_keeps_a_session_with_a_fresh_chunk(h: &Harness) {
    let s = &h.store;
    let r = repo("fresh-upload");
    push_image(s, &r, &image(84, 1), Some("v")).await;
    let (d, data) = blob(85, 3000);
    let id = s.start_upload(&r).await.unwrap();
    s.upload_chunk(&id, None, data).await.unwrap();
    let report = s.gc(NOW).await.unwrap();
    if let Err(e) = s.finish_upload(&id, &d, None).await {
        panic!(
            "{}: session with a chunk just before a delay-0 pass cannot finish: {e} (the pass removed {:?})",
            h.label, report.items
        );
    }
    s.stat_blob(&r, &d)
        .await
        .unwrap_or_else(|e| panic!("{}: finished upload: {e}", h.label));
}

/// Deleting a manifest by digest drops its row, not bytes another manifest
/// of the repository references: a manifest's bytes are a blob of the
/// repository like any other, and an image may use them as a layer.
async fn delete_by_digest_keeps_a_blob_another_manifest_uses(h: &Harness) {
    let s = &h.store;
    let r = repo("shared-bytes");
    let m = image(86, 1);
    push_image(s, &r, &m, None).await;
    let n = image_with(
        blob(87, 64),
        vec![(m.digest.clone(), m.manifest.clone())],
        None,
        None,
    );
    push_image(s, &r, &n, Some("n")).await;
    s.delete_manifest(&r, &digest_ref(&m)).await.unwrap();
    for pass in ["after the delete", "after a delay-0 pass"] {
        s.get_manifest(&r, &tag("n"))
            .await
            .unwrap_or_else(|e| panic!("{}: {pass}: tagged manifest: {e}", h.label));
        match s.get_blob(&r, &m.digest).await {
            Ok(bytes) => assert_eq!(bytes, m.manifest, "{}: {pass}: layer bytes", h.label),
            Err(e) => panic!(
                "{}: {pass}: layer of a tagged image (the deleted manifest's bytes) is gone: {e}",
                h.label
            ),
        }
        s.gc(NOW).await.unwrap();
    }
}

macro_rules! delay_contract_cases {
    ($($case:ident),* $(,)?) => {
        mod delay_contract {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    on_every_config(|layout, policy, backend| async move {
                        let h = harness(layout, policy, backend).await;
                        super::$case(&h).await;
                        assert_clean(&h.store, &format!("{} after {}", h.label, stringify!($case))).await;
                    })
                    .await;
                }
            )*
        }
    };
}

delay_contract_cases!(
    a_delay_keeps_everything_then_lets_go,
    a_repush_restarts_the_clock,
    a_manifest_reput_by_digest_restarts_the_clock,
    a_young_index_keeps_its_children,
    a_session_ages_from_its_last_chunk,
    delay_zero_keeps_a_session_with_a_fresh_chunk,
    delete_by_digest_keeps_a_blob_another_manifest_uses,
    a_young_subject_keeps_its_referrers,
    a_mount_restarts_the_clock,
);

/// A repository whose only content is an upload session is not empty: a
/// pass leaves it, also while one of the session's calls is in flight
/// (the session is then out of the session map, and its staged bytes are
/// invisible until commit). The client finishes into the repository it
/// started in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repository_with_only_a_live_upload_is_not_removed() {
    on_every_config(|layout, policy, backend| async move {
        let gate = Arc::new(Gate::default());
        let h = Arc::new(
            harness_wrapped(layout, policy, backend, {
                let gate = gate.clone();
                move |d| Arc::new(Gated::new(d, gate))
            })
            .await,
        );
        let s = &h.store;
        let r = repo("upload-only");
        let listed = |repos: Vec<engine::RepoName>| repos.contains(&r);
        let (d, data) = blob(88, 3000);
        let id = s.start_upload(&r).await.unwrap();
        s.upload_chunk(&id, None, data.slice(..1000)).await.unwrap();
        let report = s.gc(DELAY).await.unwrap();
        assert!(
            listed(s.catalog(None, None).await.unwrap()),
            "{}: a pass between chunks removed the repository of an open upload: {:?}",
            h.label,
            report.items
        );
        gate.arm();
        let chunk = tokio::spawn({
            let (h, id, data) = (h.clone(), id.clone(), data.clone());
            async move { h.store.upload_chunk(&id, None, data.slice(1000..)).await }
        });
        gate.entered().await;
        let report = s.gc(DELAY).await.unwrap();
        gate.release();
        chunk
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{}: chunk written during the pass: {e}", h.label));
        assert!(
            listed(s.catalog(None, None).await.unwrap()),
            "{}: a pass during a chunk removed the repository of an open upload: {:?}",
            h.label,
            report.items
        );
        s.tags(&r, None, None)
            .await
            .unwrap_or_else(|e| panic!("{}: tags of the upload's repository: {e}", h.label));
        s.finish_upload(&id, &d, None)
            .await
            .unwrap_or_else(|e| panic!("{}: finish after the pass: {e}", h.label));
        s.stat_blob(&r, &d)
            .await
            .unwrap_or_else(|e| panic!("{}: finished upload: {e}", h.label));
        assert_clean(&h.store, &h.label).await;
    })
    .await;
}

/// A sweep whose delete fails after taking effect (a lost response) must
/// not leave the layout vouching for the deleted copy: on an object store a
/// remembered copy is trusted without a stat, so the next push of that
/// digest would write nothing and acknowledge a blob that is gone.
#[tokio::test]
async fn a_sweep_delete_that_fails_after_taking_effect_is_not_trusted() {
    for backend in [Backend::ObjectMemory, Backend::ObjectDir, Backend::Fs] {
        for policy in LockPolicy::ALL {
            let faulty = std::sync::Mutex::new(None);
            let h = harness_wrapped(LayoutKind::Blobstore, policy, backend, |d| {
                let f = Faulty::new(d);
                *faulty.lock().unwrap() = Some(f.clone());
                f
            })
            .await;
            let faulty = faulty.lock().unwrap().take().unwrap();
            let s = &h.store;
            let r = repo("lost-delete");
            let (d, data) = blob(4242, 500);
            s.push_blob(&r, &d, data.clone()).await.unwrap();
            s.delete_blob(&r, &d).await.unwrap();
            faulty.fail_next_delete_after_effect("_blobstore/");
            let e = s.gc(NOW).await.unwrap_err();
            assert!(
                e.to_string().contains("after the delete"),
                "{}: {e}",
                h.label
            );
            s.push_blob(&r, &d, data.clone()).await.unwrap();
            let got = s.get_blob(&r, &d).await;
            assert_eq!(
                got.as_ref().ok(),
                Some(&data),
                "{}: a push acknowledged after the lost delete: {got:?}",
                h.label
            );
            assert_clean(s, &h.label).await;
        }
    }
}

/// GC and fsck work over every repository, not over one catalog page:
/// `catalog` stops at `MAX_PAGE` (10,000), and GC and fsck used to call it,
/// so a store with more repositories never collected or checked the rest.
/// 10,001 empty repositories (an empty index each) on the in-memory object
/// store, the last one holding an unreferenced blob: GC takes it.
#[tokio::test]
async fn gc_reaches_past_a_catalog_page() {
    let h = harness(
        LayoutKind::Blobstore,
        LockPolicy::Striped,
        Backend::ObjectMemory,
    )
    .await;
    let s = &h.store;
    let count = engine::store::MAX_PAGE + 1;
    let names: Vec<engine::RepoName> = (0..count).map(|i| repo(&format!("r{i:05}"))).collect();
    for r in &names {
        s.init_repo(r).await.unwrap();
    }
    let last = names.last().unwrap();
    let (d, data) = blob(80, 100);
    s.push_blob(last, &d, data).await.unwrap();
    assert_eq!(
        s.catalog(None, None).await.unwrap().len(),
        engine::store::MAX_PAGE
    );
    assert_eq!(s.repositories().await.unwrap().len(), count);

    let report = s.gc(NOW).await.unwrap();
    assert_eq!(report.repos_scanned, count, "{}", h.label);
    assert!(
        s.stat_blob(last, &d).await.is_err(),
        "{}: the blob of repository {last}, past the first page, survived",
        h.label
    );
}
