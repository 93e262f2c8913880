//! A tour of the foundation, on embedded defaults (a temp directory, memory):
//! stream a blob into each driver while hashing it, read it back verified,
//! cut the power on the simulated disk, and show what each backend was
//! asked to do.
//!
//! `cargo run --release -p engine --example quickstart`

use std::sync::Arc;

use bytes::Bytes;
use engine::driver::{
    Driver, DriverPath, FsDriver, Instrumented, ObjectDriver, PutMode, SimDisk, SimDriver,
};
use engine::meta::{Batch, MetaStore, RedbMeta, Table};
use engine::{Algorithm, Digest, DigestHasher};
use testkit::pattern;

const CHUNK: usize = 1 << 20;

/// Streams `chunks` into `blobs/sha256/<digest>`, hashing on the way, the way
/// an upload session will: the digest is known when the last byte is written.
async fn upload(d: &dyn Driver, chunks: &[Bytes]) -> Digest {
    let staging = DriverPath::new("uploads/session-1").unwrap();
    let mut w = d.writer(&staging, PutMode::Overwrite).await.unwrap();
    let mut hasher = DigestHasher::new(Algorithm::Sha256);
    for c in chunks {
        hasher.update(c);
        w.write(c.clone()).await.unwrap();
    }
    w.commit().await.unwrap();
    let digest = hasher.finish();
    let target = DriverPath::new(format!("blobs/{}/{}", digest.algorithm(), digest.hex())).unwrap();
    // Content-addressed: the second copy of the same bytes is refused, not stored.
    match d.copy(&staging, &target, PutMode::IfAbsent).await {
        Ok(()) => {}
        Err(e) if e.is_already_exists() => {}
        Err(e) => panic!("{e}"),
    }
    d.delete(&staging).await.unwrap();
    digest
}

async fn verify(d: &dyn Driver, digest: &Digest) -> u64 {
    let path = DriverPath::new(format!("blobs/{}/{}", digest.algorithm(), digest.hex())).unwrap();
    let size = d.stat(&path).await.unwrap().size;
    let mut hasher = DigestHasher::new(digest.algorithm());
    let mut at = 0;
    while at < size {
        let end = (at + CHUNK as u64).min(size);
        hasher.update(&d.get(&path, Some(at..end)).await.unwrap());
        at = end;
    }
    assert_eq!(&hasher.finish(), digest, "bytes do not match their digest");
    size
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let chunks: Vec<Bytes> = (0..24).map(|i| pattern(i, CHUNK)).collect();
    println!(
        "ocistore quickstart: a {} MiB blob through every driver\n",
        chunks.len()
    );

    let sim_disk = SimDisk::new();
    let drivers: Vec<(&str, Instrumented<Box<dyn Driver>>)> = vec![
        (
            "fs (temp dir)",
            Instrumented::new(Box::new(FsDriver::open(dir.path().join("fs")).unwrap())),
        ),
        (
            "object (memory)",
            Instrumented::new(Box::new(ObjectDriver::in_memory())),
        ),
        (
            "sim (power-loss model)",
            Instrumented::new(Box::new(SimDriver::on(Arc::clone(&sim_disk)))),
        ),
    ];
    for (label, d) in &drivers {
        let digest = upload(d, &chunks).await;
        upload(d, &chunks).await; // the same bytes again: deduplicated
        let size = verify(d, &digest).await;
        println!("{label:24} {digest} {size} bytes verified");
        println!("{:24} calls: {}", "", d.counts());
    }

    // Power cut: committed blobs survive; an unsynced delete does not happen.
    let sim = SimDriver::on(Arc::clone(&sim_disk));
    let blobs = sim
        .list(Some(&DriverPath::new("blobs").unwrap()))
        .await
        .unwrap();
    sim.delete(&blobs[0]).await.unwrap();
    sim_disk.crash();
    let after = sim.list(None).await.unwrap();
    println!(
        "\nsim disk after a power cut: {} object(s): {:?}",
        after.len(),
        after
    );
    println!(
        "  (neither delete was made durable with sync_dir, so the blob and the staged upload are back)"
    );

    let meta = RedbMeta::open(dir.path().join("meta.redb")).unwrap();
    meta.commit(Batch::new().put(Table::MIGRATION, "library/nginx", "done"))
        .await
        .unwrap();
    drop(meta);
    let meta = RedbMeta::open(dir.path().join("meta.redb")).unwrap();
    let progress = meta.get(Table::MIGRATION, b"library/nginx").await.unwrap();
    println!(
        "redb metadata after reopening: migration/library/nginx = {:?}",
        progress.map(|v| String::from_utf8_lossy(&v).into_owned())
    );
}
