//! GC passes over `gc_scaling`'s repository, for counting what a pass does
//! rather than timing it: `scripts/gc-instructions` runs this under
//! callgrind, whose instruction counts do not move with the load of a
//! shared machine.
//!
//! `cargo run --release -p engine --example gc_pass -- <manifests> <passes>`
//! builds the store, then runs `<passes>` real passes with delay 0 (the first
//! removes the untagged tenth). With 0 passes it only builds the store, so
//! the difference between the two is the pass.

#[path = "../benches/common/gc_fixture.rs"]
mod gc_fixture;

/// As every binary of this project (README, "Allocator").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;
use std::time::Duration;

use engine::LockPolicy;
use engine::gc::{GcKind, GcOptions};

fn main() -> ExitCode {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()
        .unwrap_or_default();
    let [manifests, passes] = args[..] else {
        eprintln!("usage: gc_pass <manifests> <passes>");
        return ExitCode::from(2);
    };
    // One thread: the count is then the same from run to run.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let store = rt.block_on(gc_fixture::build(
        manifests as usize,
        Duration::ZERO,
        LockPolicy::Striped,
    ));
    let now = GcOptions::new(Duration::ZERO);
    for pass in 0..passes {
        let report = rt.block_on(store.gc(now)).expect("gc");
        println!(
            "pass {pass}: removed {} manifests and {} blobs in {:.1} ms",
            report.count(GcKind::Manifest),
            report.count(GcKind::Blob) + report.count(GcKind::BlobstoreBlob),
            report.pass_ns as f64 / 1e6
        );
    }
    ExitCode::SUCCESS
}
