//! Migration at scale: a legacy store with 1,000 repositories and 10,000
//! blob memberships over heavily shared layers, converted in place.
//!
//! - local (hard links, on the sim disk's in-memory filesystem): bytes
//!   copied must be 0; reports blobs per second;
//! - object store (markers): bytes copied must equal the unique content
//!   bytes exactly (each digest copied once).
//!
//! `cargo bench -p engine --bench migration`

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use engine::driver::{Driver, ObjectDriver, SimDisk, SimDriver};
use engine::meta::{MemoryMeta, MetaStore};
use engine::migrate::migrate_in_place;
use engine::oci::media;
use engine::{Digest, LayoutKind, LockPolicy, Reference, RepoName, Store, StoreConfig};
use serde_json::json;

const REPOS: u64 = 1_000;
const IMAGES_PER_REPO: u64 = 2;
/// config + 3 layers + the manifest = 5 memberships per image: 10,000 in all.
const SHARED: u64 = 300;

fn blob(seed: u64, len: usize) -> (Digest, Bytes) {
    let b = engine::driver::conformance::pattern(seed, len);
    (Digest::sha256(&b), b)
}

async fn legacy(driver: Arc<dyn Driver>, meta: Arc<dyn MetaStore>) -> (u64, u64) {
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
    for r in 0..REPOS {
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
            let desc = |mt: &str, (d, b): &(Digest, Bytes)| json!({"mediaType": mt, "digest": d.to_string(), "size": b.len()});
            let body = json!({"schemaVersion": 2, "mediaType": media::OCI_MANIFEST, "config": desc(media::OCI_CONFIG, &blobs[0]),
                "layers": blobs[1..].iter().map(|l| desc(media::OCI_LAYER, l)).collect::<Vec<_>>()});
            let body = Bytes::from(body.to_string());
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

#[tokio::main(flavor = "current_thread")]
async fn main() {
    println!(
        "in-place migration of {REPOS} repositories, {} images, heavy sharing\n",
        REPOS * IMAGES_PER_REPO
    );
    for (label, driver) in [
        (
            "local (hard links)",
            Arc::new(SimDriver::on(SimDisk::new())) as Arc<dyn Driver>,
        ),
        (
            "object (markers)",
            Arc::new(ObjectDriver::in_memory()) as Arc<dyn Driver>,
        ),
    ] {
        let meta: Arc<dyn MetaStore> = Arc::new(MemoryMeta::new());
        let (memberships, unique_bytes) = legacy(driver.clone(), meta.clone()).await;
        let started = Instant::now();
        let report = migrate_in_place(driver.clone(), meta.clone(), &|_, _| {})
            .await
            .unwrap();
        let secs = started.elapsed().as_secs_f64();
        let processed =
            report.blobs_relinked + report.legacy_objects_removed + report.markers_removed;
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
        if label.starts_with("local") {
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
        println!("  fsck after: {errors} error(s)\n");
        assert_eq!(errors, 0);
    }
}
