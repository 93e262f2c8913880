#![allow(unused, unexpected_cfgs)]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{POLICIES, blob, median, quantile};
use criterion::{BenchmarkId, SamplingMode, Throughput};
use engine::driver::{Driver, DriverPath, Latency, LatencyModel, ObjectDriver, PutMode};
use engine::gc::GcOptions;
use engine::lock::{Domain, Mode};
use engine::meta::MemoryMeta;
use engine::oci::{Descriptor, ImageIndex, REF_NAME, media};
use engine::{Digest, LayoutKind, LockPolicy, Reference, RepoName, Store, StoreConfig};
use serde_json::json;

const REPEATS: usize = 5;

fn sizes() -> &'static [usize] {
    if common::quick() {
        &[1_000, 3_000]
    } else {
        &[1_000, 3_000, 10_000]
    }
}

/// A store whose repo `big` holds `n` manifests over 20 shared layers.
/// Blobs and manifests go in through the store; index.json is written once
/// (pushing 10,000 tags one by one would rewrite it 10,000 times).
async fn fixture_in(
    store: Option<Store>,
    name: &str,
    n: usize,
    per_call: Duration,
    policy: LockPolicy,
) -> Store {
    let driver: Arc<dyn Driver> = Arc::new(Latency::new(
        ObjectDriver::in_memory(),
        LatencyModel::fixed(per_call),
    ));
    let config = StoreConfig {
        layout: LayoutKind::Blobstore,
        policy,
    };
    let store = match store {
        Some(s) => s,
        None => Store::open(driver, Arc::new(MemoryMeta::new()), config)
            .await
            .unwrap(),
    };
    let repo = RepoName::parse(name).unwrap();
    let layers: Vec<_> = (0..20).map(|i| blob(10_000 + i, 2000)).collect();
    for (d, b) in &layers {
        store.push_blob(&repo, d, b.clone()).await.unwrap();
    }
    let mut rows = Vec::with_capacity(n);
    for i in 0..n as u64 {
        let config = blob(i + if name == "big" { 0 } else { 50_000_000 }, 64);
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
    let path = DriverPath::new(format!("{name}/index.json")).unwrap();
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

#[cfg(feature_mi)]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let small = RepoName::parse("small").unwrap();
    let big = RepoName::parse("big").unwrap();
    for round in 0..3 {
        for bigsize in [0usize, 10_000] {
            let store = if bigsize > 0 {
                Some(rt.block_on(fixture_in(
                    None,
                    "big",
                    bigsize,
                    Duration::ZERO,
                    LockPolicy::Striped,
                )))
            } else {
                None
            };
            let store = rt.block_on(fixture_in(
                store,
                "small",
                1000,
                Duration::ZERO,
                LockPolicy::Striped,
            ));
            let t = Instant::now();
            rt.block_on(store.gc_repository(
                &small,
                GcOptions {
                    delay: Duration::ZERO,
                    dry_run: false,
                },
            ))
            .unwrap();
            println!(
                "round {round}: 1k repo beside {bigsize} others: {:.1} ms",
                t.elapsed().as_secs_f64() * 1e3
            );
        }
        for n in [1000usize, 10_000] {
            let store = rt.block_on(fixture_in(
                None,
                "big",
                n,
                Duration::ZERO,
                LockPolicy::Striped,
            ));
            let t = Instant::now();
            rt.block_on(store.gc(GcOptions {
                delay: Duration::ZERO,
                dry_run: false,
            }))
            .unwrap();
            println!(
                "round {round}: full pass {n}: {:.1} ms",
                t.elapsed().as_secs_f64() * 1e3
            );
        }
    }
}
