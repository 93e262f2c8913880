//! The driver conformance suite against every backend, bare and wrapped.

use std::sync::Arc;
use std::time::Duration;

use engine::driver::{
    Driver, FsDriver, Instrumented, Latency, LatencyModel, ObjectDriver, SimDisk, SimDriver,
    conformance,
};

#[tokio::test]
async fn fs() {
    let dir = tempfile::tempdir().unwrap();
    conformance::run(&FsDriver::open(dir.path()).unwrap()).await;
}

#[tokio::test]
async fn sim() {
    conformance::run(&SimDriver::on(SimDisk::new())).await;
}

#[tokio::test]
async fn object_in_memory() {
    conformance::run(&ObjectDriver::in_memory()).await;
}

#[tokio::test]
async fn object_in_dir() {
    let dir = tempfile::tempdir().unwrap();
    conformance::run(&ObjectDriver::in_dir(dir.path()).unwrap()).await;
}

#[tokio::test]
async fn instrumented_sim() {
    let driver = Instrumented::new(SimDriver::on(SimDisk::new()));
    conformance::run(&driver).await;
    assert!(driver.counts().total() > 0);
}

#[tokio::test]
async fn latency_over_object() {
    let model = LatencyModel::fixed(Duration::from_micros(10));
    conformance::run(&Latency::new(ObjectDriver::in_memory(), model)).await;
}

#[tokio::test]
async fn sim_disk_survives_the_suite_and_a_crash_with_nothing_left() {
    let disk = SimDisk::new();
    let driver = SimDriver::on(Arc::clone(&disk));
    conformance::run(&driver).await;
    // The suite's deletes removed their emptied directories; persisting the
    // root's entries makes everything below unreachable after a crash.
    driver.sync_dir(None).await.unwrap();
    disk.crash();
    assert!(
        disk.durable_image().is_empty(),
        "{:?}",
        disk.durable_image().keys()
    );
}
