//! Migration at scale: a legacy store with 1,000 repositories and 10,000
//! blob memberships over heavily shared layers, converted in place.
//!
//! - local (hard links, on the sim disk's in-memory filesystem): bytes
//!   copied must be 0; reports blobs per second;
//! - object store (markers): bytes copied must equal the unique content
//!   bytes exactly (each digest copied once).
//!
//! criterion first times migrations of 16, 64 and 256 repositories (a fresh
//! legacy store per iteration, built outside the timing), then one run of
//! 1,000 repositories checks the byte counts and fsck.
//!
//! Then the same on a real S3 API (the `s3` driver on moto_server) at a
//! smaller scale ([`S3_REPOS`]: every call is an HTTP round trip), with the
//! backend calls counted by the driver wrapper and, independently, by
//! moto's request recorder.
//!
//! `cargo bench -p engine --bench migration`; results also go to
//! `target/ocistore-bench/migration.json` for the report.

mod common;

/// Every binary of this project allocates with mimalloc (README, "Allocator");
/// the benches measure what those binaries run.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::blob;
use criterion::{BatchSize, BenchmarkId, Throughput};
use engine::driver::{Driver, Instrumented, ObjectDriver, SimDisk, SimDriver};
use engine::meta::{MemoryMeta, MetaStore};
use engine::migrate::migrate_in_place;
use engine::oci::media;
use engine::{Digest, LayoutKind, LockPolicy, Reference, RepoName, Store, StoreConfig};
use ocistore_s3::{S3Config, S3Driver};
use serde_json::json;
use testkit::moto::Moto;

const REPOS: u64 = 1_000;
const IMAGES_PER_REPO: u64 = 2;
/// config + 3 layers + the manifest = 5 memberships per image: 10,000 in all.
const SHARED: u64 = 300;
/// Repositories of the S3 run.
const S3_REPOS: u64 = 40;

/// Fills a legacy store with `repos` repositories; returns the blob
/// memberships pushed and the unique content bytes.
async fn legacy(driver: Arc<dyn Driver>, meta: Arc<dyn MetaStore>, repos: u64) -> (u64, u64) {
    let store = Store::open(
        driver,
        meta,
        StoreConfig {
            layout: LayoutKind::Legacy,
            policy: LockPolicy::Striped,
        },
    )
    .await
    .unwrap();
    let mut unique: BTreeMap<Digest, u64> = BTreeMap::new();
    let mut memberships = 0;
    for r in 0..repos {
        let repo = RepoName::parse(&format!("team{}/app{r}", r % 20)).unwrap();
        for i in 0..IMAGES_PER_REPO {
            let n = r * IMAGES_PER_REPO + i;
            // Two of three layers from a pool of 300 base layers: heavy sharing.
            let blobs = [
                blob(1_000_000 + n, 100),
                blob(n % SHARED, 4000),
                blob((n * 7 + 1) % SHARED, 4000),
                blob(5_000_000 + n, 1500),
            ];
            for (d, b) in &blobs {
                store.push_blob(&repo, d, b.clone()).await.unwrap();
                unique.insert(d.clone(), b.len() as u64);
            }
            let body = testkit::oci::Image::new(&blobs[0], &blobs[1..])
                .build()
                .bytes;
            unique.insert(Digest::sha256(&body), body.len() as u64);
            store
                .put_manifest(
                    &repo,
                    &Reference::parse(&format!("v{i}")).unwrap(),
                    media::OCI_MANIFEST,
                    body,
                )
                .await
                .unwrap();
            memberships += 5;
        }
    }
    (memberships, unique.values().sum())
}

#[derive(Debug, Clone, Copy)]
enum Backend {
    /// The sim disk's in-memory filesystem: hard links, as on a local disk.
    Local,
    /// An object store: markers, so digests are copied into `_blobstore`.
    Object,
    /// The `s3` driver on a fresh bucket of a local moto_server.
    S3,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Local => "local",
            Backend::Object => "object",
            Backend::S3 => "s3 (moto)",
        }
    }

    fn repos(self) -> u64 {
        match self {
            Backend::S3 => S3_REPOS,
            _ => REPOS,
        }
    }

    fn driver(self) -> Arc<dyn Driver> {
        match self {
            Backend::Local => Arc::new(SimDriver::on(SimDisk::new())),
            Backend::Object => Arc::new(ObjectDriver::in_memory()),
            Backend::S3 => {
                let moto = Moto::shared();
                Arc::new(
                    S3Driver::open(S3Config::for_test_server(
                        moto.endpoint(),
                        moto.bucket("migration"),
                    ))
                    .unwrap(),
                )
            }
        }
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut c = common::criterion(Duration::from_millis(300), Duration::from_secs(2));
    let counts: &[u64] = if common::quick() {
        &[16]
    } else {
        &[16, 64, 256]
    };
    for backend in [Backend::Local, Backend::Object] {
        let mut group = c.benchmark_group(format!("migration.{}", backend.name()));
        for &repos in counts {
            group.throughput(Throughput::Elements(repos * IMAGES_PER_REPO * 5));
            group.bench_with_input(BenchmarkId::new("in-place", repos), &repos, |b, &repos| {
                b.iter_batched(
                    || {
                        let (driver, meta) = (
                            backend.driver(),
                            Arc::new(MemoryMeta::new()) as Arc<dyn MetaStore>,
                        );
                        rt.block_on(legacy(driver.clone(), meta.clone(), repos));
                        (driver, meta)
                    },
                    |(driver, meta)| {
                        rt.block_on(migrate_in_place(driver, meta, &|_, _| {}))
                            .unwrap()
                    },
                    BatchSize::PerIteration,
                )
            });
        }
        group.finish();
    }
    c.final_summary();
    let runs: Vec<_> = [Backend::Local, Backend::Object, Backend::S3]
        .into_iter()
        .map(|b| rt.block_on(at_scale(b)))
        .collect();
    common::write_results("migration", &json!({ "runs": runs }));
}

/// One migration of [`Backend::repos`] repositories, with its byte counts
/// checked and its backend calls counted.
async fn at_scale(backend: Backend) -> serde_json::Value {
    let (label, repos, driver) = (backend.name(), backend.repos(), backend.driver());
    let meta: Arc<dyn MetaStore> = Arc::new(MemoryMeta::new());
    let (memberships, unique_bytes) = legacy(driver.clone(), meta.clone(), repos).await;
    let moto = matches!(backend, Backend::S3).then(Moto::shared);
    let requests_before = moto.map(|m| {
        m.record();
        m.requests()
    });
    let counted = Arc::new(Instrumented::new(driver.clone()));
    let started = Instant::now();
    let report = migrate_in_place(counted.clone(), meta.clone(), &|_, _| {})
        .await
        .unwrap();
    let secs = started.elapsed().as_secs_f64();
    let calls = counted.counts();
    let server_requests = moto.map(|m| m.requests() - requests_before.unwrap());
    let processed = report.blobs_relinked + report.legacy_objects_removed + report.markers_removed;
    println!("{label}:");
    println!(
        "  {processed} repository blobs ({memberships} pushed, some twice in one image) in {secs:.2} s: {:.0} blobs/s",
        processed as f64 / secs
    );
    println!(
        "  relinked {}, copied {} digests = {} bytes (unique content {} bytes), markers removed {}",
        report.blobs_relinked,
        report.blobs_copied,
        report.bytes_copied,
        unique_bytes,
        report.markers_removed
    );
    if matches!(backend, Backend::Local) {
        assert_eq!(report.bytes_copied, 0, "a local migration copied bytes");
    } else {
        assert_eq!(
            report.bytes_copied, unique_bytes,
            "object migration must copy each digest exactly once"
        );
    }
    let store = Store::open(
        driver,
        meta,
        StoreConfig {
            layout: LayoutKind::Blobstore,
            policy: LockPolicy::Striped,
        },
    )
    .await
    .unwrap();
    let errors = store
        .fsck()
        .await
        .unwrap()
        .into_iter()
        .filter(|f| f.is_error())
        .count();
    println!(
        "  backend calls {} ({calls}){}",
        calls.total(),
        server_requests.map_or(String::new(), |n| format!(", requests moto saw {n}"))
    );
    println!("  fsck after: {errors} error(s)\n");
    assert_eq!(errors, 0);
    json!({"backend": label, "repos": repos, "memberships": memberships, "blobs": processed, "secs": secs,
            "blobs_per_sec": processed as f64 / secs, "bytes_copied": report.bytes_copied,
            "unique_bytes": unique_bytes, "digests_copied": report.blobs_copied,
            "calls": calls.total(), "server_requests": server_requests})
}
