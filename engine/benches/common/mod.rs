//! Pieces every bench shares: deterministic blobs, images, the two backends
//! of the lab (a remote model and real files), and where results go for the
//! report generator (`target/ocistore-bench/*.json`).
//!
//! Each bench includes this with `mod common;` and uses what it needs.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use engine::driver::{Driver, FsDriver, Latency, LatencyModel, ObjectDriver};
use engine::meta::{MemoryMeta, MetaStore, RedbMeta};
use engine::oci::media;
use engine::{Digest, LayoutKind, LockPolicy, Reference, RepoName, Store, StoreConfig};

pub mod gc_fixture;

pub const POLICIES: [LockPolicy; 3] = [LockPolicy::Global, LockPolicy::Split, LockPolicy::Striped];

/// `OCISTORE_BENCH_QUICK=1`: a small run that only proves the pipeline
/// (benches, JSON, report) works end to end.
pub fn quick() -> bool {
    std::env::var_os("OCISTORE_BENCH_QUICK").is_some_and(|v| v != "0")
}

/// criterion as every bench here uses it: the plotters backend set
/// explicitly (criterion picks gnuplot when installed), ten samples, and
/// command-line filters honoured.
pub fn criterion(warm_up: Duration, measurement: Duration) -> criterion::Criterion {
    criterion::Criterion::default()
        .plotting_backend(criterion::PlottingBackend::Plotters)
        .sample_size(10)
        .warm_up_time(warm_up)
        .measurement_time(measurement)
        .configure_from_args()
}

/// A blob whose bytes are a function of `seed`.
pub fn blob(seed: u64, len: usize) -> (Digest, Bytes) {
    let b = testkit::pattern(seed, len);
    (Digest::sha256(&b), b)
}

/// An image manifest over a config and layers, and every blob it needs.
#[derive(Debug, Clone)]
pub struct Image {
    pub blobs: Vec<(Digest, Bytes)>,
    pub manifest: Bytes,
}

impl Image {
    pub fn new(config: (Digest, Bytes), layers: Vec<(Digest, Bytes)>) -> Image {
        let manifest = testkit::oci::Image::new(&config, &layers).build().bytes;
        let mut blobs = vec![config];
        blobs.extend(layers);
        Image { blobs, manifest }
    }

    pub fn manifest_digest(&self) -> Digest {
        Digest::sha256(&self.manifest)
    }

    /// The client's monolithic push: HEAD each blob, PUT the missing ones,
    /// then the manifest under `tag`.
    pub async fn push(&self, store: &Store, repo: &RepoName, tag: &str) {
        for (d, data) in &self.blobs {
            if store.stat_blob(repo, d).await.is_ok() {
                continue;
            }
            store.push_blob(repo, d, data.clone()).await.unwrap();
        }
        self.tag(store, repo, tag).await;
    }

    /// PUT the manifest (already pushed or not) under `tag`.
    pub async fn tag(&self, store: &Store, repo: &RepoName, tag: &str) {
        store
            .put_manifest(
                repo,
                &Reference::parse(tag).unwrap(),
                media::OCI_MANIFEST,
                self.manifest.clone(),
            )
            .await
            .unwrap();
    }

    /// A pull: the manifest by tag, then every blob.
    pub async fn pull(&self, store: &Store, repo: &RepoName, tag: &str) {
        store
            .get_manifest(repo, &Reference::parse(tag).unwrap())
            .await
            .unwrap();
        for (d, _) in &self.blobs {
            store.get_blob(repo, d).await.unwrap();
        }
    }
}

/// The two backends of DESIGN's lab.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `object` in memory behind a fixed per-call latency: a remote store.
    Object { per_call: Duration },
    /// `fs` on a temporary directory with redb metadata: real fsyncs.
    Fs,
}

impl Backend {
    pub fn label(self) -> String {
        match self {
            Backend::Object { per_call } => format!("object-{}us", per_call.as_micros()),
            Backend::Fs => "fs".into(),
        }
    }

    /// A fresh store; the returned guard owns the temporary directory.
    pub async fn open(
        self,
        layout: LayoutKind,
        policy: LockPolicy,
    ) -> (Store, Option<tempfile::TempDir>) {
        let config = StoreConfig { layout, policy };
        let (driver, meta, dir): (Arc<dyn Driver>, Arc<dyn MetaStore>, _) = match self {
            Backend::Object { per_call } => (
                Arc::new(Latency::new(
                    ObjectDriver::in_memory(),
                    LatencyModel::fixed(per_call),
                )),
                Arc::new(MemoryMeta::new()),
                None,
            ),
            Backend::Fs => {
                let dir = tempfile::Builder::new()
                    .prefix("ocistore-bench-")
                    .tempdir_in(target_tmp())
                    .unwrap();
                let driver = FsDriver::open(dir.path().join("root")).unwrap();
                let meta = RedbMeta::open(dir.path().join("meta.redb")).unwrap();
                (Arc::new(driver), Arc::new(meta), Some(dir))
            }
        };
        let store = Store::open(driver, meta, config).await.unwrap();
        (store, dir)
    }
}

/// Benches' scratch space on the target's filesystem (not tmpfs), so `fs`
/// figures include a real disk's fsync.
pub fn target_tmp() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `target/ocistore-bench`: the JSON the report generator reads.
pub fn results_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("ocistore-bench");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn write_results(name: &str, value: &serde_json::Value) {
    let path = results_dir().join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(value).unwrap()).unwrap();
    println!("wrote {}", path.display());
}

/// The p-quantile of unsorted samples.
pub fn quantile(mut v: Vec<Duration>, q: f64) -> Duration {
    assert!(!v.is_empty(), "no samples");
    v.sort();
    v[((v.len() as f64 * q) as usize).min(v.len() - 1)]
}

pub fn median(mut v: Vec<f64>) -> f64 {
    assert!(!v.is_empty(), "no samples");
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
