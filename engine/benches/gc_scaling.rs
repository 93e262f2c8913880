//! GC at scale, measured side by side in one run:
//!
//! 1. a pass over one repository with 1,000 and with 10,000 manifests over
//!    shared layers (10% untagged, so the pass removes something): the time
//!    ratio (target: at most 12x for 10x the manifests);
//! 2. exclusive acquisitions of the blobstore lock during GC under
//!    `striped` (target: 0);
//! 3. push latency in other repositories with and without a GC running on
//!    the big one (target: p99 within 1.5x), multi-thread runtime, object
//!    driver with 100 us injected per call.
//!
//! `cargo bench -p engine --bench gc_scaling`

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use engine::driver::{Driver, DriverPath, Latency, LatencyModel, ObjectDriver, PutMode};
use engine::gc::GcOptions;
use engine::lock::{Domain, Mode};
use engine::meta::MemoryMeta;
use engine::oci::{Descriptor, ImageIndex, REF_NAME, media};
use engine::{Digest, LayoutKind, LockPolicy, Reference, RepoName, Store, StoreConfig};
use serde_json::json;

fn blob(seed: u64, len: usize) -> (Digest, Bytes) {
    let b = engine::driver::conformance::pattern(seed, len);
    (Digest::sha256(&b), b)
}

/// A store whose repo `big` holds `n` manifests over 20 shared layers.
/// Blobs and manifests go in through the store; index.json is written once
/// (pushing 10,000 tags one by one would rewrite it 10,000 times).
async fn fixture(n: usize, per_call: Duration) -> Store {
    let driver: Arc<dyn Driver> = Arc::new(Latency::new(
        ObjectDriver::in_memory(),
        LatencyModel::fixed(per_call),
    ));
    let config = StoreConfig {
        layout: LayoutKind::Blobstore,
        policy: LockPolicy::Striped,
    };
    let store = Store::open(driver, Arc::new(MemoryMeta::new()), config)
        .await
        .unwrap();
    let repo = RepoName::parse("big").unwrap();
    let layers: Vec<_> = (0..20).map(|i| blob(10_000 + i, 2000)).collect();
    for (d, b) in &layers {
        store.push_blob(&repo, d, b.clone()).await.unwrap();
    }
    let mut rows = Vec::with_capacity(n);
    for i in 0..n as u64 {
        let config = blob(i, 64);
        store
            .push_blob(&repo, &config.0, config.1.clone())
            .await
            .unwrap();
        let picked = [
            &layers[(i % 20) as usize],
            &layers[((i * 7 + 3) % 20) as usize],
        ];
        let desc = |mt: &str, (d, b): &(Digest, Bytes)| json!({"mediaType": mt, "digest": d.to_string(), "size": b.len()});
        let body = json!({"schemaVersion": 2, "mediaType": media::OCI_MANIFEST, "config": desc(media::OCI_CONFIG, &config),
            "layers": picked.iter().map(|l| desc(media::OCI_LAYER, l)).collect::<Vec<_>>()});
        let body = Bytes::from(body.to_string());
        let d = Digest::sha256(&body);
        store.push_blob(&repo, &d, body.clone()).await.unwrap();
        let mut annotations = std::collections::BTreeMap::new();
        if i % 10 != 0 {
            annotations.insert(REF_NAME.to_owned(), format!("t{i}"));
        }
        rows.push(Descriptor {
            media_type: media::OCI_MANIFEST.into(),
            digest: d,
            size: body.len() as u64,
            artifact_type: None,
            annotations,
            platform: None,
        });
    }
    let index = ImageIndex {
        manifests: rows,
        ..ImageIndex::default()
    };
    let path = DriverPath::new("big/index.json").unwrap();
    store
        .driver()
        .put(
            &path,
            Bytes::from(serde_json::to_vec(&index).unwrap()),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
    store
}

fn p99(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[(v.len() * 99 / 100).min(v.len() - 1)]
}

/// Pushes small images to repos other than `big`, one after another, for `count` pushes.
async fn pushes(store: &Store, tag: &str, count: u64) -> Vec<Duration> {
    let mut out = Vec::new();
    for i in 0..count {
        let repo = RepoName::parse(&format!("other{}", i % 8)).unwrap();
        let (cd, cb) = blob(1_000_000 + i + tag.len() as u64 * 100_000, 64);
        let (ld, lb) = blob(2_000_000 + i + tag.len() as u64 * 100_000, 500);
        let started = Instant::now();
        store.push_blob(&repo, &cd, cb.clone()).await.unwrap();
        store.push_blob(&repo, &ld, lb.clone()).await.unwrap();
        let body = json!({"schemaVersion": 2, "mediaType": media::OCI_MANIFEST,
            "config": {"mediaType": media::OCI_CONFIG, "digest": cd.to_string(), "size": cb.len()},
            "layers": [{"mediaType": media::OCI_LAYER, "digest": ld.to_string(), "size": lb.len()}]});
        let r = Reference::parse(&format!("{tag}{}", i % 5)).unwrap();
        store
            .put_manifest(
                &repo,
                &r,
                media::OCI_MANIFEST,
                Bytes::from(body.to_string()),
            )
            .await
            .unwrap();
        out.push(started.elapsed());
    }
    out
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let now = GcOptions {
        delay: Duration::ZERO,
        dry_run: false,
    };
    println!("GC of one repository (object driver in memory, no injected latency):");
    let mut times = Vec::new();
    for n in [1_000usize, 10_000] {
        let store = fixture(n, Duration::ZERO).await;
        let started = Instant::now();
        let report = store.gc(now).await.unwrap();
        let t = started.elapsed();
        println!(
            "  {n:>6} manifests: pass {:>8.1} ms, removed {} manifest rows and {} blob refs, {} blobstore-exclusive acquisitions",
            t.as_secs_f64() * 1e3,
            report.count(engine::gc::GcKind::Manifest),
            report.count(engine::gc::GcKind::Blob),
            report.blobstore_exclusive_acquisitions
        );
        assert_eq!(report.blobstore_exclusive_acquisitions, 0);
        times.push(t);
    }
    let ratio = times[1].as_secs_f64() / times[0].as_secs_f64();
    println!("  10x the manifests took {ratio:.1}x the time (target <= 12x)\n");

    println!(
        "Pushes to other repositories while GC passes over 10,000 manifests (100 us per call, striped):"
    );
    let per_call = Duration::from_micros(100);
    let store = fixture(10_000, per_call).await;
    let quiet = p99(pushes(&store, "quiet", 300).await);
    let exclusive_before = store.lock_acquisitions(Domain::Blobstore, Mode::Exclusive);
    let gc = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut passes = 0;
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(3) {
                store
                    .gc(GcOptions {
                        delay: Duration::from_secs(3600),
                        dry_run: false,
                    })
                    .await
                    .unwrap();
                passes += 1;
            }
            passes
        })
    };
    let busy = p99(pushes(&store, "busy", 300).await);
    let passes = gc.await.unwrap();
    let exclusive = store.lock_acquisitions(Domain::Blobstore, Mode::Exclusive) - exclusive_before;
    println!(
        "  push p99 without GC {:.2} ms, with GC running {:.2} ms: {:.2}x (target <= 1.5x)",
        quiet.as_secs_f64() * 1e3,
        busy.as_secs_f64() * 1e3,
        busy.as_secs_f64() / quiet.as_secs_f64()
    );
    println!(
        "  {passes} GC passes during the pushes; blobstore-exclusive acquisitions: {exclusive} (target 0)"
    );
}
