//! Streaming a blob through the `fs` driver with sha256 verification and
//! fsync, against the machine's own limits measured in the same run on the
//! same bytes: sha256 alone, and write + fsync alone (plain `std::fs`).
//!
//! `cargo bench -p engine --bench upload` (1 GiB; `OCISTORE_UPLOAD_MIB=256`
//! for a quicker run). After criterion's runs it prints the ratio of the
//! driver's throughput to the slower baseline (target >= 0.8) and the peak
//! extra heap of one streamed upload (target <= 16 MiB, size-independent).
//! Every timed write creates its file afresh; removing the previous one is
//! untimed setup for all three.

mod common;

use std::alloc::{GlobalAlloc, Layout};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use criterion::{BatchSize, Throughput};
use engine::driver::{Driver, DriverPath, FsDriver, PutMode};
use engine::{Algorithm, Digest, DigestHasher};

/// Counts live heap bytes and their high-water mark, over mimalloc (the
/// allocator every binary of this project uses).
struct PeakAlloc;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to mimalloc unchanged; only counts.
unsafe impl GlobalAlloc for PeakAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { mimalloc::MiMalloc.alloc(layout) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc;

const CHUNK: usize = 1 << 20;

/// Where the driver stores the uploaded blob, below its root.
const UPLOAD_PATH: &str = "blobs/sha256/upload";

fn remove_if_present(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => panic!("{}: {e}", path.display()),
    }
}

fn blob_mib() -> usize {
    std::env::var("OCISTORE_UPLOAD_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if common::quick() { 64 } else { 1024 })
}

fn source_chunk() -> Bytes {
    testkit::pattern(42, CHUNK)
}

fn expected_digest(chunk: &Bytes, chunks: usize) -> Digest {
    let mut h = DigestHasher::new(Algorithm::Sha256);
    for _ in 0..chunks {
        h.update(chunk);
    }
    h.finish()
}

/// The path under test: hash each chunk as it streams into the driver,
/// commit (fsync, rename, fsync dir), and verify the digest.
async fn driver_upload(d: &FsDriver, chunks: impl Iterator<Item = Bytes>, expected: &Digest) {
    let path = DriverPath::new(UPLOAD_PATH).unwrap();
    let mut w = d.writer(&path, PutMode::Overwrite).await.unwrap();
    let mut h = DigestHasher::new(Algorithm::Sha256);
    for chunk in chunks {
        h.update(&chunk);
        w.write(chunk).await.unwrap();
    }
    w.commit().await.unwrap();
    assert_eq!(&h.finish(), expected, "digest mismatch");
}

fn raw_write_fsync(path: &Path, chunk: &Bytes, chunks: usize) {
    let mut f = std::fs::File::create_new(path).unwrap();
    for _ in 0..chunks {
        f.write_all(chunk).unwrap();
    }
    f.sync_all().unwrap();
}

fn bench_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("upload-bench");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn main() {
    let mib = blob_mib();
    let chunk = source_chunk();
    let expected = expected_digest(&chunk, mib);
    let dir = bench_dir();
    let driver = FsDriver::open(dir.join("store")).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let mut c = common::criterion(
        Duration::from_secs(1),
        Duration::from_secs(if common::quick() { 3 } else { 15 }),
    );
    let mut group = c.benchmark_group("upload");
    group.throughput(Throughput::Bytes((mib * CHUNK) as u64));
    group.bench_function("sha256_only", |b| {
        b.iter(|| assert_eq!(expected_digest(&chunk, mib), expected))
    });
    // Each timed write starts from no file: removing the previous
    // iteration's 1 GiB (a third of a second on ext4) is setup, not timed,
    // for the baseline and the driver alike. A blob store never overwrites.
    let raw = dir.join("raw");
    group.bench_function("write_fsync_only", |b| {
        b.iter_batched(
            || remove_if_present(&raw),
            |()| raw_write_fsync(&raw, &chunk, mib),
            BatchSize::PerIteration,
        )
    });
    let stored = dir.join("store").join(UPLOAD_PATH);
    group.bench_function("fs_driver_sha256_fsync", |b| {
        b.iter_batched(
            || remove_if_present(&stored),
            |()| {
                rt.block_on(driver_upload(
                    &driver,
                    std::iter::repeat_n(chunk.clone(), mib),
                    &expected,
                ))
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
    c.final_summary();

    // Peak memory of one upload whose every chunk is a fresh buffer, as
    // chunks arriving from a network would be.
    let before = CURRENT.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let fresh = (0..mib).map(|_| Bytes::copy_from_slice(&chunk));
    remove_if_present(&stored);
    rt.block_on(driver_upload(&driver, fresh, &expected));
    let peak_extra = PEAK.load(Ordering::Relaxed) - before;
    report(mib, peak_extra);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Reads criterion's estimates of this run and prints the ratio.
fn report(mib: usize, peak_extra: usize) {
    let root = criterion_dir().join("upload");
    let mean_ns = |name: &str| -> Option<f64> {
        let text = std::fs::read_to_string(root.join(name).join("new/estimates.json")).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        v["mean"]["point_estimate"].as_f64()
    };
    let mibps = |ns: f64| mib as f64 / (ns / 1e9);
    println!("\nupload of {mib} MiB in {} KiB chunks:", CHUNK / 1024);
    let (Some(hash), Some(write), Some(driver)) = (
        mean_ns("sha256_only"),
        mean_ns("write_fsync_only"),
        mean_ns("fs_driver_sha256_fsync"),
    ) else {
        println!(
            "  (no estimates found under {}; run without a filter)",
            root.display()
        );
        return;
    };
    println!("  sha256 alone            {:8.0} MiB/s", mibps(hash));
    println!("  write + fsync alone     {:8.0} MiB/s", mibps(write));
    println!("  fs driver, sha256+fsync {:8.0} MiB/s", mibps(driver));
    let ratio = hash.max(write) / driver;
    println!("  ratio to the slower baseline: {ratio:.2} (target >= 0.80)");
    let peak_mib = peak_extra as f64 / (1 << 20) as f64;
    println!("  peak extra heap during one upload: {peak_mib:.1} MiB (target <= 16 MiB)");
    common::write_results(
        "upload",
        &serde_json::json!({"mib": mib, "chunk_kib": CHUNK / 1024, "sha256_mibps": mibps(hash),
            "write_fsync_mibps": mibps(write), "driver_mibps": mibps(driver), "ratio": ratio,
            "peak_heap_mib": peak_mib}),
    );
}

fn criterion_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("CRITERION_HOME") {
        return dir.into();
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
                .parent()
                .unwrap()
                .to_path_buf()
        });
    target.join("criterion")
}
