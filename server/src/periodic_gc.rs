//! GC inside `serve` (`--gc-every`): a running registry collects its own
//! garbage (with several instances over one root, any of them may: repository
//! passes take the shared locks, and one sweeps `_blobstore` at a time). Each pass is the engine's
//! online GC (no stop-the-world under `striped`), held to the delay
//! contract of DESIGN §7: nothing a client touched less than the delay ago
//! goes, and an upload session goes only after `upload_timeout` idle.

use std::time::Duration;

use engine::Store;
use engine::gc::{GcKind, GcOptions};

/// Runs a pass every `every` until the returned task is aborted (or the
/// runtime stops). A failed pass is logged and the next one runs on time.
pub fn spawn(store: Store, every: Duration, opts: GcOptions) -> rtokio::task::JoinHandle<()> {
    rtokio::spawn(async move {
        let mut ticks = rtokio::time::interval(every);
        ticks.set_missed_tick_behavior(rtokio::time::MissedTickBehavior::Delay);
        ticks.tick().await; // the first tick is immediate: wait a period first
        loop {
            ticks.tick().await;
            match store.gc(opts).await {
                Ok(r) if !r.deferred.is_empty() => tracing::warn!(
                    "gc: the disk was too full to prune {}; {} bytes freed, the rest waits for the next pass",
                    r.deferred.join(", "),
                    r.bytes_freed
                ),
                Ok(r) => tracing::info!(
                    "gc: {} manifests, {} blobs, {} uploads, {} repositories removed; {} bytes freed in {:.1} ms",
                    r.count(GcKind::Manifest),
                    r.count(GcKind::Blob) + r.count(GcKind::BlobstoreBlob),
                    r.count(GcKind::Upload),
                    r.count(GcKind::Repository),
                    r.bytes_freed,
                    r.pass_ns as f64 / 1e6
                ),
                Err(e) => tracing::warn!("gc pass failed: {e}"),
            }
        }
    })
}
