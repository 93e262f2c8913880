//! GC at scale, for each lock policy:
//!
//! 1. criterion times dry-run passes (the full mark and sweep without the
//!    deletes, so each iteration does the same work) over one repository of
//!    1,000, 3,000 and 10,000 manifests over shared layers;
//! 2. the first real pass (10% of the manifests untagged, so it removes
//!    something) on fresh stores, median of seven with the sizes taking
//!    turns, wall time (process CPU time beside it): the 10x ratio
//!    (target: at most 12x for 10x the manifests under `striped`). Each
//!    size is measured twice per repeat, on two fresh stores: warm (the
//!    pass right after the build, which leaves a small store in the CPU
//!    cache and a large one mostly out of it) and cold (64 MiB of other
//!    memory touched between build and pass, as for a pass that runs long
//!    after the pushes), so the ratio is also given from equal footing;
//! 3. exclusive acquisitions of the blobstore lock during GC under
//!    `striped` (target: 0);
//! 4. push latency in other repositories with and without a GC running on
//!    the big one (target: p99 within 1.5x), multi-thread runtime, object
//!    driver with 100 us injected per call.
//!
//! `cargo bench -p engine --bench gc_scaling`; results also go to
//! `target/ocistore-bench/gc_scaling.json` for the report.

mod common;

/// Every binary of this project allocates with mimalloc (README, "Allocator");
/// the benches measure what those binaries run.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::{Duration, Instant};

use common::{POLICIES, blob, median, quantile};
use criterion::{BenchmarkId, SamplingMode, Throughput};
use engine::gc::GcOptions;
use engine::lock::{Domain, Mode};
use engine::oci::media;
use engine::{LockPolicy, Reference, RepoName, Store};
use serde_json::json;

const REPEATS: usize = 7;

/// Whether the store's data may still be in the CPU cache when the pass starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cache {
    /// The pass right after the build.
    Warm,
    /// 64 MiB of other memory touched between build and pass (more than
    /// this machine's L2 per core, many times over).
    Cold,
}

impl Cache {
    fn name(self) -> &'static str {
        match self {
            Cache::Warm => "warm",
            Cache::Cold => "cold",
        }
    }

    fn prepare(self) {
        if self == Cache::Cold {
            let mut other = vec![0u8; 64 << 20];
            for (i, b) in other.iter_mut().enumerate().step_by(64) {
                *b = i as u8;
            }
            std::hint::black_box(&other);
        }
    }
}

fn sizes() -> &'static [usize] {
    if common::quick() {
        &[1_000, 3_000]
    } else {
        &[1_000, 3_000, 10_000]
    }
}

/// CPU time used by this process so far (all threads): unlike wall time,
/// it does not grow when other processes take the shared machine's cores.
fn process_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only the timespec we pass.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_PROCESS_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Pushes small images to repos other than `big`, one after another, for `count` pushes.
async fn pushes(store: &Store, tag: &str, count: u64) -> Vec<Duration> {
    let mut out = Vec::new();
    for i in 0..count {
        let repo = RepoName::parse(&format!("other{}", i % 8)).unwrap();
        let (cd, cb) = blob(1_000_000 + i + tag.len() as u64 * 100_000, 64);
        let (ld, lb) = blob(2_000_000 + i + tag.len() as u64 * 100_000, 500);
        let started = Instant::now();
        store.push_blob(&repo, &cd, cb.clone()).await.unwrap();
        store.push_blob(&repo, &ld, lb.clone()).await.unwrap();
        let body = testkit::oci::Image::new(&(cd, cb), &[(ld, lb)])
            .build()
            .bytes;
        let r = Reference::parse(&format!("{tag}{}", i % 5)).unwrap();
        store
            .put_manifest(&repo, &r, media::OCI_MANIFEST, body)
            .await
            .unwrap();
        out.push(started.elapsed());
    }
    out
}

const NOW: GcOptions = GcOptions::new(Duration::ZERO);

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut c = common::criterion(Duration::from_millis(300), Duration::from_secs(2));
    let mut group = c.benchmark_group("gc-dry-run.object");
    group.sampling_mode(SamplingMode::Flat);
    for &n in sizes() {
        group.throughput(Throughput::Elements(n as u64));
        for policy in POLICIES {
            let store = rt.block_on(common::gc_fixture::build(n, Duration::ZERO, policy));
            let dry = NOW.dry_run();
            group.bench_with_input(BenchmarkId::new(policy.to_string(), n), &n, |b, _| {
                b.iter(|| rt.block_on(store.gc(dry)).unwrap())
            });
        }
    }
    group.finish();
    c.final_summary();

    println!(
        "\nfirst GC pass over one repository (object driver in memory), median of {REPEATS} fresh stores;\n\
         the sizes take turns, so a burst of load on this shared machine lands on all of them:"
    );
    let mut passes = Vec::new();
    // Striped's medians per size, for each cache state.
    struct Striped {
        cache: Cache,
        ms: Vec<(usize, f64)>,
        cpu_ms: Vec<f64>,
    }
    let mut striped = Vec::new();
    for policy in POLICIES {
        for cache in [Cache::Warm, Cache::Cold] {
            // runs[size] = (wall ms, process CPU ms) per repeat
            let mut runs: Vec<Vec<(f64, f64)>> = vec![Vec::new(); sizes().len()];
            let mut exclusive = vec![0; sizes().len()];
            let mut removed = vec![0; sizes().len()];
            for _ in 0..REPEATS {
                for (i, &n) in sizes().iter().enumerate() {
                    let store = rt.block_on(common::gc_fixture::build(n, Duration::ZERO, policy));
                    cache.prepare();
                    let (started, cpu) = (Instant::now(), process_cpu());
                    let report = rt.block_on(store.gc(NOW)).unwrap();
                    runs[i].push((
                        started.elapsed().as_secs_f64() * 1e3,
                        (process_cpu() - cpu).as_secs_f64() * 1e3,
                    ));
                    exclusive[i] = exclusive[i].max(report.blobstore_exclusive_acquisitions);
                    removed[i] = report.count(engine::gc::GcKind::Manifest);
                    if policy == LockPolicy::Striped {
                        assert_eq!(report.blobstore_exclusive_acquisitions, 0);
                    }
                }
            }
            let mut medians = Vec::new();
            let mut cpus = Vec::new();
            for (i, &n) in sizes().iter().enumerate() {
                let wall: Vec<f64> = runs[i].iter().map(|r| r.0).collect();
                let pass_ms = median(wall.clone());
                let cpu_ms = median(runs[i].iter().map(|r| r.1).collect());
                println!(
                    "  {policy:<8} {:<4} {n:>6} manifests: {pass_ms:>8.1} ms (runs {wall:.1?}; process CPU {cpu_ms:.1} ms), \
                     removed {} manifests, {} blobstore-exclusive acquisitions",
                    cache.name(),
                    removed[i],
                    exclusive[i]
                );
                medians.push((n, pass_ms));
                cpus.push(cpu_ms);
                passes.push(json!({"policy": policy.to_string(), "cache": cache.name(), "manifests": n,
                    "pass_ms": pass_ms, "runs_ms": wall, "cpu_ms": cpu_ms, "removed_manifests": removed[i],
                    "blobstore_exclusive": exclusive[i]}));
            }
            if policy == LockPolicy::Striped {
                striped.push(Striped {
                    cache,
                    ms: medians,
                    cpu_ms: cpus,
                });
            }
        }
    }
    let ratio_of = |cache: Cache| {
        let Striped {
            ms, cpu_ms: cpu, ..
        } = striped.iter().find(|s| s.cache == cache).expect("measured");
        let (first, last) = (ms[0], ms[ms.len() - 1]);
        let ratio = last.1 / first.1;
        let cpu_ratio = cpu[cpu.len() - 1] / cpu[0];
        println!(
            "  striped, {}: {}x the manifests took {ratio:.1}x the time (target <= {}x); process CPU {cpu_ratio:.1}x",
            cache.name(),
            last.0 / first.0,
            (last.0 / first.0) as f64 * 1.2
        );
        (first.0, last.0, ratio, cpu_ratio)
    };
    let (first, last, ratio, cpu_ratio) = ratio_of(Cache::Warm);
    let (_, _, cold_ratio, cold_cpu_ratio) = ratio_of(Cache::Cold);
    println!();
    let pushes = rt.block_on(pushes_during_gc());
    common::write_results(
        "gc_scaling",
        &json!({"passes": passes, "ratio": ratio, "cpu_ratio": cpu_ratio, "cold_ratio": cold_ratio,
            "cold_cpu_ratio": cold_cpu_ratio, "ratio_of": [first, last], "pushes": pushes}),
    );
}

/// Push p99 in other repositories, alone and beside GC passes over the big one.
async fn pushes_during_gc() -> serde_json::Value {
    let n = *sizes().last().unwrap();
    println!(
        "pushes to other repositories while GC passes over {n} manifests (100 us per call, striped):"
    );
    let per_call = Duration::from_micros(100);
    let store = common::gc_fixture::build(n, per_call, LockPolicy::Striped).await;
    let quiet = quantile(pushes(&store, "quiet", 300).await, 0.99);
    let exclusive_before = store.lock_acquisitions(Domain::Blobstore, Mode::Exclusive);
    let gc = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut passes = 0;
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(3) {
                store
                    .gc(GcOptions::new(Duration::from_secs(3600)))
                    .await
                    .unwrap();
                passes += 1;
            }
            passes
        })
    };
    let busy = quantile(pushes(&store, "busy", 300).await, 0.99);
    let passes = gc.await.unwrap();
    let exclusive = store.lock_acquisitions(Domain::Blobstore, Mode::Exclusive) - exclusive_before;
    let ratio = busy.as_secs_f64() / quiet.as_secs_f64();
    println!(
        "  push p99 without GC {:.2} ms, with GC running {:.2} ms: {ratio:.2}x (target <= 1.5x)",
        quiet.as_secs_f64() * 1e3,
        busy.as_secs_f64() * 1e3,
    );
    println!(
        "  {passes} GC passes during the pushes; blobstore-exclusive acquisitions: {exclusive} (target 0)"
    );
    json!({"quiet_p99_ms": quiet.as_secs_f64() * 1e3, "busy_p99_ms": busy.as_secs_f64() * 1e3, "ratio": ratio,
        "gc_passes": passes, "blobstore_exclusive": exclusive})
}
