//! Remote cost of dedupe: backend calls for pushing a 5-layer image whose
//! layers (and config, and manifest) already exist in another repository,
//! on the `object` driver, legacy (0-byte markers + dedupe index) against
//! blobstore (reference rows, no markers). Calls are counted, not timed, so
//! the figures are exact and machine-independent.
//!
//! The same counts on a real S3 API (the `s3` driver on moto_server), two
//! ways: by the driver wrapper, as everywhere, and independently from
//! moto's request recorder (every HTTP request the server received).
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
use ocistore_s3::{S3Config, S3Driver};
use serde_json::json;
use testkit::moto::Moto;

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

/// Where the pushes go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    /// The `object` driver in memory: the emulation.
    Emulated,
    /// The `s3` driver on a fresh bucket of a local moto_server.
    S3,
}

impl Backend {
    fn label(self) -> &'static str {
        match self {
            Backend::Emulated => "object (emulated)",
            Backend::S3 => "s3 (moto)",
        }
    }
}

/// What one re-push cost.
struct Measured {
    calls: CallCounts,
    markers: usize,
    /// HTTP requests moto received for the re-push (S3 only).
    server_requests: Option<u64>,
}

async fn measure(layout: LayoutKind, flow: Flow, backend: Backend) -> Measured {
    let moto = (backend == Backend::S3).then(Moto::shared);
    if let Some(moto) = moto {
        moto.record();
    }
    let driver: Arc<dyn Driver> = match moto {
        None => Arc::new(ObjectDriver::in_memory()),
        Some(moto) => Arc::new(
            S3Driver::open(S3Config::for_test_server(
                moto.endpoint(),
                moto.bucket("dedupe"),
            ))
            .unwrap(),
        ),
    };
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
    let requests_before = moto.map(Moto::requests);
    let before = store.metrics().calls;
    push(&store, &RepoName::parse("team/app").unwrap(), &img, flow).await;
    let calls = store.metrics().calls.since(&before);
    let server_requests = moto.map(|m| m.requests() - requests_before.unwrap());
    Measured {
        calls,
        markers: markers(&store).await,
        server_requests,
    }
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
    println!("backend calls to push a {LAYERS}-layer image already stored in another repository\n");
    println!(
        "{:<18} {:<11} {:<10} {:>6} {:>8} {:>8}  {:<40}",
        "backend", "flow", "layout", "calls", "requests", "markers", "by kind"
    );
    let mut rows = Vec::new();
    for backend in [Backend::Emulated, Backend::S3] {
        for flow in [Flow::Monolithic, Flow::Chunked] {
            let legacy = measure(LayoutKind::Legacy, flow, backend).await;
            let blobstore = measure(LayoutKind::Blobstore, flow, backend).await;
            for (name, m) in [("legacy", &legacy), ("blobstore", &blobstore)] {
                let c = &m.calls;
                println!(
                    "{:<18} {:<11} {:<10} {:>6} {:>8} {:>8}  {c}",
                    backend.label(),
                    format!("{flow:?}").to_lowercase(),
                    name,
                    c.total(),
                    m.server_requests.map_or("-".into(), |n| n.to_string()),
                    m.markers
                );
                rows.push(json!({
                    "backend": backend.label(),
                    "flow": format!("{flow:?}").to_lowercase(), "layout": name, "calls": c.total(), "markers": m.markers,
                    "server_requests": m.server_requests,
                    "by_kind": CallKind::ALL.iter().map(|k| (k.as_str().to_owned(), json!(c.get(*k)))).collect::<serde_json::Map<_, _>>(),
                }));
            }
            let ratio = blobstore.calls.total() as f64 / legacy.calls.total() as f64;
            println!(
                "{:<18} {:<11} blobstore/legacy = {ratio:.2} (target <= 0.50), blobstore markers = {}\n",
                "", "", blobstore.markers
            );
        }
    }
    common::write_results("dedupe_calls", &serde_json::Value::Array(rows));
}
