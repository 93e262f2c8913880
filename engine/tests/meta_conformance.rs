//! The metadata-store conformance suite against both implementations.

use engine::meta::{MemoryMeta, RedbMeta};
use testkit::meta_conformance as conformance;

#[tokio::test]
async fn redb() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.redb");
    conformance::run(|previous: Option<RedbMeta>| {
        drop(previous); // closes the file: the next open is a restart
        RedbMeta::open(&path).unwrap()
    })
    .await;
}

#[tokio::test]
async fn memory() {
    conformance::run(|previous: Option<MemoryMeta>| match previous {
        None => MemoryMeta::new(),
        Some(store) => {
            store.power_off();
            store.power_on();
            store
        }
    })
    .await;
}
