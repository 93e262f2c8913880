//! Remote cost of dedupe: backend calls for pushing a 5-layer image whose
//! layers (and config, and manifest) already exist in another repository,
//! on the `object` driver, legacy (0-byte markers + dedupe index) against
//! blobstore (reference rows, no markers). Calls are counted, not timed, so
//! the figures are exact and machine-independent.
//!
//! `cargo bench -p engine --bench dedupe_calls` prints the table and writes
//! `target/ocistore-bench/dedupe_calls.json` for the report generator, then
//! criterion times the same push with 1 ms per call, per lock policy.

mod common;

/// Every binary of this project allocates with mimalloc (README, "Allocator");
/// the benches measure what those binaries run.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;

use common::{Image, blob};
use engine::driver::{CallCounts, CallKind, Driver, ObjectDriver};
use engine::meta::MemoryMeta;
use engine::oci::media;
use engine::{LayoutKind, LockPolicy, Reference, RepoName, Store, StoreConfig};
use serde_json::json;

const LAYERS: u64 = 5;

fn image() -> Image {
    let layers = (0..LAYERS)
        .map(|i| blob(10 + i, 20_000 + i as usize * 1000))
        .collect();
    Image::new(blob(1, 300), layers)
}

#[derive(Clone, Copy, Debug)]
enum Flow {
    /// HEAD each blob, then one monolithic PUT with the digest (oras, crane).
    Monolithic,
    /// HEAD, then POST + PATCH + PUT per blob (docker's default).
    Chunked,
}

/// The client's push sequence, as the OCI distribution spec describes it.
async fn push(store: &Store, repo: &RepoName, img: &Image, flow: Flow) {
    for (d, data) in &img.blobs {
        if store.stat_blob(repo, d).await.is_ok() {
            continue;
        }
        match flow {
            Flow::Monolithic => store.push_blob(repo, d, data.clone()).await.unwrap(),
            Flow::Chunked => {
                let id = store.start_upload(repo).await.unwrap();
                store.upload_chunk(&id, None, data.clone()).await.unwrap();
                store.finish_upload(&id, d, None).await.unwrap();
            }
        }
    }
    let tag = Reference::parse("v1").unwrap();
    store
        .put_manifest(repo, &tag, media::OCI_MANIFEST, img.manifest.clone())
        .await
        .unwrap();
}

async fn markers(store: &Store) -> usize {
    let d = store.driver();
    let mut n = 0;
    for p in d.list(None).await.unwrap() {
        let is_blob = p.as_str().contains("/blobs/sha256/");
        if is_blob && d.stat(&p).await.unwrap().size == 0 {
            n += 1;
        }
    }
    n
}

async fn measure(layout: LayoutKind, flow: Flow) -> (CallCounts, usize) {
    let driver: Arc<dyn Driver> = Arc::new(ObjectDriver::in_memory());
    let config = StoreConfig {
        layout,
        policy: LockPolicy::Striped,
    };
    let store = Store::open(driver, Arc::new(MemoryMeta::new()), config)
        .await
        .unwrap();
    let img = image();
    push(
        &store,
        &RepoName::parse("library/base").unwrap(),
        &img,
        flow,
    )
    .await;
    let before = store.metrics().calls;
    push(&store, &RepoName::parse("team/app").unwrap(), &img, flow).await;
    let calls = store.metrics().calls.since(&before);
    (calls, markers(&store).await)
}

/// criterion: the time of the same push on a remote model (1 ms per call),
/// each iteration into a fresh repository, per layout, flow and policy.
fn timed(rt: &tokio::runtime::Runtime) {
    let mut c = common::criterion(
        std::time::Duration::from_millis(300),
        std::time::Duration::from_secs(if common::quick() { 1 } else { 2 }),
    );
    let backend = common::Backend::Object {
        per_call: std::time::Duration::from_millis(1),
    };
    let img = image();
    for flow in [Flow::Monolithic, Flow::Chunked] {
        let name = format!("{flow:?}").to_lowercase();
        let mut group = c.benchmark_group(format!("dedupe-push-{name}.{}", backend.label()));
        group.sampling_mode(criterion::SamplingMode::Flat);
        for layout in [LayoutKind::Legacy, LayoutKind::Blobstore] {
            for policy in common::POLICIES {
                let (store, _dir) = rt.block_on(backend.open(layout, policy));
                let base = RepoName::parse("library/base").unwrap();
                rt.block_on(push(&store, &base, &img, flow));
                let mut n = 0u64;
                group.bench_function(
                    criterion::BenchmarkId::new(policy.to_string(), layout),
                    |b| {
                        b.iter(|| {
                            n += 1;
                            let repo = RepoName::parse(&format!("team/app{n}")).unwrap();
                            rt.block_on(push(&store, &repo, &img, flow));
                        })
                    },
                );
            }
        }
        group.finish();
    }
    c.final_summary();
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(counted());
    timed(&rt);
}

/// The exact counts, printed and written for the report.
async fn counted() {
    println!(
        "backend calls to push a {LAYERS}-layer image already stored in another repository (object driver)\n"
    );
    println!(
        "{:<11} {:<10} {:>6} {:>8}  {:<40}",
        "flow", "layout", "calls", "markers", "by kind"
    );
    let mut rows = Vec::new();
    for flow in [Flow::Monolithic, Flow::Chunked] {
        let (legacy, legacy_markers) = measure(LayoutKind::Legacy, flow).await;
        let (blobstore, blobstore_markers) = measure(LayoutKind::Blobstore, flow).await;
        for (name, c, m) in [
            ("legacy", &legacy, legacy_markers),
            ("blobstore", &blobstore, blobstore_markers),
        ] {
            println!(
                "{:<11} {:<10} {:>6} {:>8}  {c}",
                format!("{flow:?}").to_lowercase(),
                name,
                c.total(),
                m
            );
            rows.push(json!({
                "flow": format!("{flow:?}").to_lowercase(), "layout": name, "calls": c.total(), "markers": m,
                "by_kind": CallKind::ALL.iter().map(|k| (k.as_str().to_owned(), json!(c.get(*k)))).collect::<serde_json::Map<_, _>>(),
            }));
        }
        let ratio = blobstore.total() as f64 / legacy.total() as f64;
        println!(
            "{:<11} blobstore/legacy = {ratio:.2} (target <= 0.50), blobstore markers = {blobstore_markers}\n",
            ""
        );
    }
    common::write_results("dedupe_calls", &serde_json::Value::Array(rows));
}
