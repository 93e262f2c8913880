//! A full disk, for real: a small tmpfs filled to its last byte (DESIGN §7,
//! invariant 11). A full disk stops writes cleanly, never removals, GC or
//! reads, and once space is free, writes succeed again in the same process.

mod common;

use bytes::Bytes;
use common::*;
use engine::driver::conformance::pattern;
use engine::driver::{Driver, DriverPath, FsDriver, Instrumented, PutMode};

const MIB: usize = 1 << 20;

/// Past 4 MiB the fs driver streams through a writer thread, whose
/// `ENOSPC` reaches the caller only when the commit waits for it. That is
/// "no space", as it is for a small write: nothing visible changed and
/// freeing space is the cure. It must not poison the driver the way a
/// failed fsync does.
#[tokio::test]
async fn no_space_in_a_large_streamed_write_is_not_sticky() {
    let tmpfs = Tmpfs::mount(6 * MIB as u64);
    let driver = Instrumented::new(FsDriver::open(tmpfs.path().join("root")).unwrap());
    let big = DriverPath::new("big/object").unwrap();
    let mut w = driver.writer(&big, PutMode::IfAbsent).await.unwrap();
    // 5 MiB fit; the last 2 MiB chunk does not. The first 4 MiB are written
    // inline, the rest goes through the writer thread, whose ENOSPC on the
    // last chunk can only reach the caller when commit waits for it.
    for (i, len) in [1, 1, 1, 1, 1, 2].into_iter().enumerate() {
        w.write(pattern(i as u64, len * MIB))
            .await
            .unwrap_or_else(|e| panic!("chunk {i} refused before commit: {e}"));
    }
    let e = w.commit().await.unwrap_err();
    assert!(e.is_no_space(), "a full disk reported as: {e}");
    assert_eq!(driver.poisoned(), None, "no space poisoned the driver");
    assert!(
        tmpfs.files_named(".ocistore").is_empty(),
        "the failed write left {:?}",
        tmpfs.files_named(".ocistore")
    );
    // The space is back, and the same driver writes again.
    let small = DriverPath::new("small/object").unwrap();
    driver
        .put(&small, Bytes::from_static(b"after"), PutMode::IfAbsent)
        .await
        .unwrap_or_else(|e| panic!("a write after the failed one: {e}"));
    assert_eq!(driver.get(&small, None).await.unwrap(), "after");
    assert!(matches!(
        driver.stat(&big).await,
        Err(e) if e.is_not_found()
    ));
}
