//! The repository `gc_scaling` collects, also built by
//! `examples/gc_pass.rs` (which includes this file alone: it needs nothing
//! else from the benches' common module).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use engine::driver::{Driver, DriverPath, Latency, LatencyModel, ObjectDriver, PutMode};
use engine::meta::MemoryMeta;
use engine::oci::{Descriptor, ImageIndex, REF_NAME, media};
use engine::{Digest, LayoutKind, LockPolicy, RepoName, Store, StoreConfig};

fn blob(seed: u64, len: usize) -> (Digest, Bytes) {
    let b = testkit::pattern(seed, len);
    (Digest::sha256(&b), b)
}

/// A store whose repo `big` holds `n` manifests over 20 shared layers, one
/// in ten untagged (what a first GC pass removes).
/// Blobs and manifests go in through the store; index.json is written once
/// (pushing 10,000 tags one by one would rewrite it 10,000 times).
pub async fn build(n: usize, per_call: Duration, policy: LockPolicy) -> Store {
    let driver: Arc<dyn Driver> = Arc::new(Latency::new(
        ObjectDriver::in_memory(),
        LatencyModel::fixed(per_call),
    ));
    let config = StoreConfig {
        layout: LayoutKind::Blobstore,
        policy,
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
        let picked = picked.map(Clone::clone);
        let body = testkit::oci::Image::new(&config, &picked).build().bytes;
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
