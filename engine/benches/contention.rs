//! The proposal's table on real threads: the six rows, plus the
//! pathological shared-digest fan-in, for each lock policy and repo count,
//! on a remote model (`object` in memory, 1 ms per call) and on real files
//! (`fs` on a temporary directory, redb metadata, fsync).
//!
//! A criterion iteration is one round: 16 tasks on the multi-thread runtime,
//! two operations each, spread over the case's repos. After criterion has
//! timed a point, one more profiled run of three rounds on a fresh store
//! records what criterion cannot: per-class latency histograms, lock wait
//! and hold per domain, and driver calls per operation. Those go to
//! `target/ocistore-bench/contention.json` for the report.
//!
//! `cargo bench -p engine --bench contention` (about 25 minutes);
//! `OCISTORE_BENCH_QUICK=1` runs one repo count, the remote model only.

mod common;

/// Every binary of this project allocates with mimalloc (README, "Allocator");
/// the benches measure what those binaries run.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Backend, Image, POLICIES, blob};
use criterion::{BenchmarkId, SamplingMode, Throughput};
use engine::lock::{Domain, Mode};
use engine::{LayoutKind, LockPolicy, RepoName, Store};
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::runtime::Runtime;

/// Concurrent clients in every round.
const TASKS: u64 = 16;
/// Operations per client per round.
const OPS: u64 = 2;
/// Clients that write the hot repository in `hot-repo`.
const HOT_WRITERS: u64 = 4;
const LAYER_BYTES: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    /// Row 1: pushes of distinct images into distinct repositories.
    DifferentRepos,
    /// Row 2: distinct repositories, the same layer pushed into each at once.
    SameDigest,
    /// Row 3: pulls from half of the repositories while the others are pushed.
    ReadWhileWriting,
    /// Row 4: tag updates (manifest already stored) in independent repos.
    TagUpdates,
    /// Row 5: nine pulls for each push.
    HeavyReads,
    /// Row 6: four clients push one hot repository; the rest pull quiet ones.
    HotRepo,
    /// Every client pushes the very same image at once, one digest fanning in.
    FanIn,
}

impl Case {
    const ALL: [Case; 7] = [
        Case::DifferentRepos,
        Case::SameDigest,
        Case::ReadWhileWriting,
        Case::TagUpdates,
        Case::HeavyReads,
        Case::HotRepo,
        Case::FanIn,
    ];

    fn name(self) -> &'static str {
        match self {
            Case::DifferentRepos => "different-repos",
            Case::SameDigest => "same-digest",
            Case::ReadWhileWriting => "read-while-writing",
            Case::TagUpdates => "tag-updates",
            Case::HeavyReads => "heavy-reads",
            Case::HotRepo => "hot-repo",
            Case::FanIn => "fan-in",
        }
    }

    /// Cases that set readers against writers need two repositories.
    fn repo_counts(self) -> Vec<u64> {
        let all: &[u64] = if common::quick() {
            &[16]
        } else {
            &[1, 4, 16, 64]
        };
        let min = match self {
            Case::ReadWhileWriting | Case::HotRepo => 2,
            _ => 1,
        };
        all.iter().copied().filter(|&r| r >= min).collect()
    }
}

/// What one operation was, for latency histograms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    Push,
    Pull,
    Tag,
    HotPush,
    QuietPull,
}

impl Class {
    fn name(self) -> &'static str {
        match self {
            Class::Push => "push",
            Class::Pull => "pull",
            Class::Tag => "tag",
            Class::HotPush => "hot-push",
            Class::QuietPull => "quiet-pull",
        }
    }
}

/// A store with one base image tagged `base` in each repository.
struct Fixture {
    store: Store,
    repos: Vec<RepoName>,
    base: Vec<Image>,
    _dir: Option<tempfile::TempDir>,
}

fn base_image(r: u64) -> Image {
    Image::new(
        blob(7_000_000 + r, 300),
        vec![blob(8_000_000 + r, LAYER_BYTES)],
    )
}

async fn fixture(backend: Backend, policy: LockPolicy, repos: u64) -> Arc<Fixture> {
    let (store, dir) = backend.open(LayoutKind::Blobstore, policy).await;
    let repos: Vec<_> = (0..repos)
        .map(|r| RepoName::parse(&format!("team{}/app{r}", r % 4)).unwrap())
        .collect();
    let base: Vec<_> = (0..repos.len() as u64).map(base_image).collect();
    let pushes = repos.iter().zip(&base).map(|(repo, img)| {
        let (store, repo, img) = (store.clone(), repo.clone(), img.clone());
        tokio::spawn(async move { img.push(&store, &repo, "base").await })
    });
    for p in pushes.collect::<Vec<_>>() {
        p.await.unwrap();
    }
    Arc::new(Fixture {
        store,
        repos,
        base,
        _dir: dir,
    })
}

/// A fresh image, unique to (round, task, op).
fn unique_image(n: u64, t: u64, k: u64) -> Image {
    let id = 1_000_000_000 + ((n * TASKS + t) * OPS + k) * 2;
    Image::new(blob(id, 200), vec![blob(id + 1, LAYER_BYTES)])
}

/// One client operation; returns its class, or `None` when it sat out.
async fn op(fx: &Fixture, case: Case, n: u64, t: u64, k: u64, hot_writers: bool) -> Option<Class> {
    let repos = fx.repos.len() as u64;
    // Round-robin over every repository across rounds.
    let r = ((t + TASKS * (k + n * OPS)) % repos) as usize;
    let repo = &fx.repos[r];
    let tag = format!("c{t}");
    match case {
        Case::DifferentRepos => {
            unique_image(n, t, k).push(&fx.store, repo, &tag).await;
            Some(Class::Push)
        }
        Case::SameDigest => {
            // Every client of this (round, op) pushes the same layer.
            let shared = blob(2_000_000_000 + n * OPS + k, LAYER_BYTES);
            let config = unique_image(n, t, k).blobs[0].clone();
            Image::new(config, vec![shared])
                .push(&fx.store, repo, &tag)
                .await;
            Some(Class::Push)
        }
        Case::ReadWhileWriting => {
            // Readers on the first half of the repos, writers on the second.
            let half = repos / 2;
            if t.is_multiple_of(2) {
                let r = (r as u64 % half) as usize;
                fx.base[r].pull(&fx.store, &fx.repos[r], "base").await;
                Some(Class::Pull)
            } else {
                let r = (half + r as u64 % (repos - half)) as usize;
                unique_image(n, t, k)
                    .push(&fx.store, &fx.repos[r], &tag)
                    .await;
                Some(Class::Push)
            }
        }
        Case::TagUpdates => {
            fx.base[r]
                .tag(&fx.store, repo, &format!("u{t}-{}", (n + k) % 4))
                .await;
            Some(Class::Tag)
        }
        Case::HeavyReads => {
            if (t * OPS + k).is_multiple_of(10) {
                unique_image(n, t, k).push(&fx.store, repo, &tag).await;
                Some(Class::Push)
            } else {
                fx.base[r].pull(&fx.store, repo, "base").await;
                Some(Class::Pull)
            }
        }
        Case::HotRepo => {
            if t < HOT_WRITERS {
                if !hot_writers {
                    return None;
                }
                unique_image(n, t, k)
                    .push(&fx.store, &fx.repos[0], &tag)
                    .await;
                Some(Class::HotPush)
            } else {
                let quiet = 1 + r % (fx.repos.len() - 1);
                fx.base[quiet]
                    .pull(&fx.store, &fx.repos[quiet], "base")
                    .await;
                Some(Class::QuietPull)
            }
        }
        Case::FanIn => {
            let id = 3_000_000_000 + (n * OPS + k) * 2;
            Image::new(blob(id, 200), vec![blob(id + 1, LAYER_BYTES)])
                .push(&fx.store, repo, "fan")
                .await;
            Some(Class::Push)
        }
    }
}

/// One round: every client runs its operations; returns each one's latency.
async fn round(fx: &Arc<Fixture>, case: Case, n: u64, hot_writers: bool) -> Vec<(Class, Duration)> {
    let clients: Vec<_> = (0..TASKS)
        .map(|t| {
            let fx = fx.clone();
            tokio::spawn(async move {
                let mut out = Vec::new();
                for k in 0..OPS {
                    let started = Instant::now();
                    if let Some(class) = op(&fx, case, n, t, k, hot_writers).await {
                        out.push((class, started.elapsed()));
                    }
                }
                out
            })
        })
        .collect();
    let mut all = Vec::new();
    for c in clients {
        all.extend(c.await.unwrap());
    }
    all
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

fn latency_json(h: &Histogram<u64>) -> serde_json::Value {
    json!({
        "count": h.len(),
        "p50_ms": ms(h.value_at_quantile(0.5)),
        "p90_ms": ms(h.value_at_quantile(0.9)),
        "p99_ms": ms(h.value_at_quantile(0.99)),
        "max_ms": ms(h.max()),
    })
}

/// The waits recorded after `before` was taken: the histograms are
/// cumulative, and the fixture's pushes and the baseline rounds must not
/// count towards the profiled rounds' p99.
fn waits_since(now: &Histogram<u64>, before: &Histogram<u64>) -> Histogram<u64> {
    let mut waits = now.clone();
    waits
        .subtract(before)
        .expect("a later snapshot of the same histogram holds every earlier count");
    waits
}

/// Three rounds on a fresh store, with everything criterion does not see.
async fn profile(
    backend: Backend,
    policy: LockPolicy,
    case: Case,
    repos: u64,
) -> serde_json::Value {
    const ROUNDS: u64 = 3;
    let fx = fixture(backend, policy, repos).await;
    let mut classes: BTreeMap<String, Histogram<u64>> = BTreeMap::new();
    let mut record = |label: String, d: Duration| {
        classes
            .entry(label)
            .or_insert_with(engine::lock::histogram)
            .saturating_record(d.as_nanos() as u64);
    };
    if case == Case::HotRepo {
        // The same pulls with the hot writers idle: the quiet repos' baseline.
        for n in 0..ROUNDS {
            for (class, d) in round(&fx, case, n, false).await {
                record(format!("{}-baseline", class.name()), d);
            }
        }
    }
    let before = fx.store.metrics();
    let started = Instant::now();
    let mut ops = 0;
    for n in ROUNDS..2 * ROUNDS {
        for (class, d) in round(&fx, case, n, true).await {
            record(class.name().to_owned(), d);
            ops += 1;
        }
    }
    let wall = started.elapsed();
    let after = fx.store.metrics();
    let calls = after.calls.since(&before.calls).total();
    let mut locks = Vec::new();
    for domain in Domain::ALL {
        for mode in [Mode::Shared, Mode::Exclusive] {
            let (a, b) = (
                after.locks.get(domain, mode),
                before.locks.get(domain, mode),
            );
            let acquisitions = a.acquisitions() - b.acquisitions();
            if acquisitions == 0 {
                continue;
            }
            locks.push(json!({
                "domain": domain.as_str(),
                "mode": format!("{mode:?}").to_lowercase(),
                "acquisitions": acquisitions,
                "wait_p99_ms": ms(waits_since(&a.wait, &b.wait).value_at_quantile(0.99)),
                "hold_total_ms": ms(a.total_hold_ns() - b.total_hold_ns()),
            }));
        }
    }
    json!({
        "case": case.name(),
        "backend": backend.label(),
        "policy": policy.to_string(),
        "repos": repos,
        "ops": ops,
        "ops_per_sec": ops as f64 / wall.as_secs_f64(),
        "calls_per_op": calls as f64 / ops as f64,
        "latency": classes.iter().map(|(k, h)| (k.clone(), latency_json(h))).collect::<serde_json::Map<_, _>>(),
        "locks": locks,
    })
}

fn backends() -> Vec<Backend> {
    let remote = Backend::Object {
        per_call: Duration::from_millis(1),
    };
    if common::quick() {
        vec![remote]
    } else {
        vec![remote, Backend::Fs]
    }
}

fn main() {
    let rt = Runtime::new().unwrap();
    let mut c = common::criterion(
        Duration::from_millis(300),
        Duration::from_secs(if common::quick() { 1 } else { 3 }),
    );
    let mut profiles = Vec::new();
    for backend in backends() {
        for case in Case::ALL {
            let mut group = c.benchmark_group(format!("{}.{}", case.name(), backend.label()));
            group
                .sampling_mode(SamplingMode::Flat)
                .throughput(Throughput::Elements(TASKS * OPS));
            for repos in case.repo_counts() {
                for policy in POLICIES {
                    let fx = rt.block_on(fixture(backend, policy, repos));
                    let mut n = 0;
                    group.bench_with_input(
                        BenchmarkId::new(policy.to_string(), repos),
                        &repos,
                        |b, _| {
                            b.iter_custom(|iters| {
                                let started = Instant::now();
                                for _ in 0..iters {
                                    rt.block_on(round(&fx, case, n, true));
                                    n += 1;
                                }
                                started.elapsed()
                            })
                        },
                    );
                    drop(fx);
                    profiles.push(rt.block_on(profile(backend, policy, case, repos)));
                }
            }
            group.finish();
        }
    }
    c.final_summary();
    common::write_results(
        "contention",
        &json!({"tasks": TASKS, "ops_per_task": OPS, "points": profiles}),
    );
}
