//! What the HTTP benches (`tests/benches/serve.rs`,
//! `cli/benches/multi_instance.rs`) share: the quick switch, one phase's
//! timings summarised the same way, and where their JSON goes for the
//! report.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

/// `OCISTORE_BENCH_QUICK=1` (set by `scripts/bench-report --quick`): small
/// sizes and one round, to prove the pipeline rather than to measure.
pub fn quick() -> bool {
    std::env::var_os("OCISTORE_BENCH_QUICK").is_some_and(|v| v != "0")
}

/// One phase (e.g. the pushes of one level) in one round: its wall time and
/// each image's own time.
#[derive(Debug, Default, Clone)]
pub struct Phase {
    pub wall: Duration,
    pub latencies: Vec<Duration>,
}

/// A phase over its rounds: the median round's wall time gives the
/// throughput; p50/p99 are over every image of every round.
pub fn summarise(rounds: &[Phase], images: usize, bytes: u64) -> Value {
    let mut walls: Vec<f64> = rounds.iter().map(|p| p.wall.as_secs_f64()).collect();
    walls.sort_by(f64::total_cmp);
    let secs = walls[walls.len() / 2];
    let mut latencies: Vec<Duration> = rounds.iter().flat_map(|p| p.latencies.clone()).collect();
    latencies.sort();
    let q = |p: f64| {
        let i = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[i].as_secs_f64() * 1e3
    };
    json!({
        "seconds": secs,
        "rounds_seconds": rounds.iter().map(|p| p.wall.as_secs_f64()).collect::<Vec<_>>(),
        "images": images,
        "bytes": bytes,
        "mb_per_s": bytes as f64 / 1e6 / secs,
        "images_per_s": images as f64 / secs,
        "latency_samples": latencies.len(),
        "p50_ms": q(0.50),
        "p99_ms": q(0.99),
        "max_ms": q(1.0),
    })
}

/// Writes `result` as `ocistore-bench/NAME.json` in the target directory
/// that holds `target_tmpdir` (a bench's `CARGO_TARGET_TMPDIR`), where
/// the report reads it; returns the path.
pub fn write_result(target_tmpdir: &str, name: &str, result: &Value) -> PathBuf {
    let dir = Path::new(target_tmpdir)
        .parent()
        .expect("target dir")
        .join("ocistore-bench");
    std::fs::create_dir_all(&dir).expect("results dir");
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(result).unwrap()).expect("write");
    println!("wrote {}", path.display());
    path
}
