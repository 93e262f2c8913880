//! The workload: clients doing what registry clients do, drawn from the seed.
//!
//! Push: HEAD each blob, push the missing ones, PUT the manifest under one
//! of the client's own tags (a client retries when a GC with delay 0 took a
//! layer before its manifest arrived). Pull: resolve an acknowledged tag,
//! fetch the manifest, then every blob. Head, retag and delete round it off.
//! Layers come from a shared pool (cross-repository dedupe, the pathological
//! fan-in when the pool is small) or are new; sizes follow the scenario.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use engine::oci::media;
use engine::{Digest, ErrorCode, Reference, RepoName, Store, Tag};
use hdrhistogram::Histogram;
use serde_json::json;

use crate::checker::{Acked, Checker, blobs_of};
use crate::rng::Rng;
use crate::scenario::{LayerBytes, Workload};

/// Operation classes, as reported.
pub const CLASSES: [&str; 6] = ["push", "pull", "pull_quiet", "head", "retag", "delete"];

/// Per-class latency (virtual nanoseconds) and outcome counts, shared by
/// every client and surviving node restarts.
#[derive(Debug)]
pub struct Stats {
    latency: Mutex<HashMap<&'static str, Histogram<u64>>>,
    pub ops: AtomicU64,
    pub store_ops: AtomicU64,
    pub refused: AtomicU64,
    pub retries: AtomicU64,
}

impl Default for Stats {
    fn default() -> Stats {
        let latency = CLASSES
            .iter()
            .map(|c| (*c, engine::lock::histogram()))
            .collect();
        Stats {
            latency: Mutex::new(latency),
            ops: AtomicU64::new(0),
            store_ops: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            retries: AtomicU64::new(0),
        }
    }
}

impl Stats {
    fn record(&self, class: &'static str, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1);
        self.latency
            .lock()
            .unwrap()
            .get_mut(class)
            .expect("known class")
            .saturating_record(ns);
        self.ops.fetch_add(1, Ordering::Relaxed);
    }

    pub fn histogram(&self, class: &str) -> Histogram<u64> {
        self.latency.lock().unwrap()[class].clone()
    }
}

/// Everything a client keeps across node restarts.
#[derive(Debug)]
pub struct Shared {
    pub workload: Workload,
    pub checker: Checker,
    pub stats: Stats,
    pub stop: AtomicBool,
    /// Per-client generator and operation count.
    pub clients: Vec<Mutex<(Rng, u64)>>,
    pub finished: AtomicU64,
    pool_seed: u64,
    /// The shared layers, built on first use: every push and HEAD of a pool
    /// layer would otherwise regenerate and re-hash its bytes.
    pool: Vec<OnceLock<(Digest, Bytes)>>,
}

impl Shared {
    pub fn new(workload: Workload, rng: &Rng) -> Shared {
        let clients = (0..workload.clients)
            .map(|c| Mutex::new((rng.fork(100 + c), 0)))
            .collect();
        let pool = (0..workload.shared_layers)
            .map(|_| OnceLock::new())
            .collect();
        Shared {
            workload,
            checker: Checker::default(),
            stats: Stats::default(),
            stop: AtomicBool::new(false),
            clients,
            finished: AtomicU64::new(0),
            pool_seed: rng.fork(7).next(),
            pool,
        }
    }
}

fn repo_name(i: u64) -> RepoName {
    RepoName::parse(&format!("repo{i}")).expect("valid")
}

fn layer_size(rng: &mut Rng, dist: &LayerBytes) -> usize {
    match dist {
        LayerBytes::Fixed { bytes } => *bytes as usize,
        LayerBytes::Uniform { min, max } => rng.range(*min, *max) as usize,
        LayerBytes::Mixture {
            small_share,
            small_median,
            large_median,
            cap,
        } => {
            let (median, sigma) = if rng.unit() < *small_share {
                (*small_median, 1.26)
            } else {
                (*large_median, 1.8)
            };
            ((median * (sigma * rng.normal()).exp()) as u64).clamp(1, *cap) as usize
        }
    }
}

/// Bytes derived from `seed` alone, so any client can rebuild a pool layer.
fn content(seed: u64, len: usize) -> (Digest, Bytes) {
    let data = engine::driver::conformance::pattern(seed, len);
    (Digest::sha256(&data), data)
}

impl Shared {
    fn pool_layer(&self, i: u64) -> (Digest, Bytes) {
        let build = || {
            let mut rng = Rng::new(self.pool_seed).fork(i);
            let len = layer_size(&mut rng, &self.workload.layer_bytes);
            content(self.pool_seed ^ (i + 1).wrapping_mul(0x9e37_79b9), len)
        };
        match self.pool.get(i as usize) {
            Some(cell) => cell.get_or_init(build).clone(),
            None => build(),
        }
    }

    fn image(&self, rng: &mut Rng) -> (Vec<(Digest, Bytes)>, Bytes) {
        let w = &self.workload;
        let n = rng.range(w.layers_per_image[0], w.layers_per_image[1]);
        let mut blobs = vec![content(rng.next(), 64 + rng.below(200) as usize)];
        for _ in 0..n {
            if w.shared_layers > 0 && rng.unit() < w.share_probability {
                blobs.push(self.pool_layer(rng.zipf(w.shared_layers, w.share_zipf)));
            } else {
                let len = layer_size(rng, &w.layer_bytes);
                blobs.push(content(rng.next(), len));
            }
        }
        let desc = |mt: &str, (d, b): &(Digest, Bytes)| json!({"mediaType": mt, "digest": d.to_string(), "size": b.len()});
        let manifest = json!({
            "schemaVersion": 2, "mediaType": media::OCI_MANIFEST,
            "config": desc(media::OCI_CONFIG, &blobs[0]),
            "layers": blobs[1..].iter().map(|l| desc(media::OCI_LAYER, l)).collect::<Vec<_>>(),
        });
        (
            blobs,
            Bytes::from(serde_json::to_vec(&manifest).expect("json")),
        )
    }
}

fn now() -> tokio::time::Instant {
    tokio::time::Instant::now()
}

/// Pushes `preload_images` images to every repository (untimed), as
/// acknowledged tags `pre0`, `pre1`, ...
pub async fn preload(store: &Store, shared: &Shared, rng: &Rng) {
    let mut rng = rng.fork(0x9e1d);
    for r in 0..shared.workload.repos {
        let repo = repo_name(r);
        for k in 0..shared.workload.preload_images {
            let (blobs, manifest) = shared.image(&mut rng);
            for (d, data) in &blobs {
                store
                    .push_blob(&repo, d, data.clone())
                    .await
                    .expect("preload blob");
            }
            let tag = format!("pre{k}");
            let acked = Acked {
                digest: Digest::sha256(&manifest),
                blobs: blobs_of(media::OCI_MANIFEST, &manifest),
            };
            shared.checker.begin(&repo, &tag, Some(acked));
            let reference = Reference::Tag(Tag::parse(&tag).expect("valid"));
            store
                .put_manifest(&repo, &reference, media::OCI_MANIFEST, manifest)
                .await
                .expect("preload manifest");
            shared.checker.ack(&repo, &tag);
        }
    }
}

/// One client, until the run stops or its operation budget is spent.
pub async fn client(id: u64, store: Store, shared: Arc<Shared>) {
    let w = shared.workload.clone();
    let weights = [
        w.mix.push,
        w.mix.pull,
        w.mix.head,
        w.mix.retag,
        w.mix.delete,
    ];
    let total: u64 = weights.iter().sum();
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        // Draw the whole operation up front: a crash mid-operation then
        // leaves the generator where a restart expects it.
        let (mut rng, _n) = {
            let mut state = shared.clients[id as usize].lock().unwrap();
            if w.ops_per_client > 0 && state.1 >= w.ops_per_client {
                break;
            }
            state.1 += 1;
            let r = state.0.clone();
            state.0.next();
            (r.fork(state.1), state.1)
        };
        let mut pick = rng.below(total);
        let class = weights
            .iter()
            .position(|wt| {
                if pick < *wt {
                    true
                } else {
                    pick -= wt;
                    false
                }
            })
            .unwrap_or(0);
        let write = matches!(class, 0 | 3 | 4);
        let repo_i = if w.client_owns_repo {
            id % w.repos
        } else if w.hot_repo_fraction > 0.0 {
            if write || w.repos == 1 || rng.unit() < w.hot_repo_fraction {
                0
            } else {
                1 + rng.below(w.repos - 1)
            }
        } else {
            rng.zipf(w.repos, w.pull_zipf)
        };
        let repo = repo_name(repo_i);
        let started = now();
        let name = match class {
            0 => push(id, &store, &shared, &repo, &mut rng).await,
            1 => pull(&store, &shared, &repo, &mut rng, repo_i != 0).await,
            2 => head(&store, &shared, &repo, &mut rng).await,
            3 => retag(id, &store, &shared, &repo, &mut rng).await,
            _ => delete(id, &store, &shared, &repo, &mut rng).await,
        };
        shared.stats.record(name, started.elapsed());
        tokio::time::sleep(Duration::from_micros(w.think_us)).await;
    }
    shared.finished.fetch_add(1, Ordering::Relaxed);
}

fn own_tag(id: u64, k: u64) -> String {
    format!("c{id}-{k}")
}

fn refused(shared: &Shared, e: &engine::StoreError) {
    // A full disk refuses writes: a definite answer, not a violation.
    if e.code().is_none() {
        shared.stats.refused.fetch_add(1, Ordering::Relaxed);
    }
}

async fn push(
    id: u64,
    store: &Store,
    shared: &Shared,
    repo: &RepoName,
    rng: &mut Rng,
) -> &'static str {
    let (blobs, manifest) = shared.image(rng);
    let tag = own_tag(id, rng.below(3));
    let digest = Digest::sha256(&manifest);
    for attempt in 0..4 {
        for (d, data) in &blobs {
            shared.stats.store_ops.fetch_add(1, Ordering::Relaxed);
            if store.stat_blob(repo, d).await.is_ok() {
                continue;
            }
            shared.stats.store_ops.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = store.push_blob(repo, d, data.clone()).await {
                refused(shared, &e);
                return "push";
            }
        }
        let acked = Acked {
            digest: digest.clone(),
            blobs: blobs_of(media::OCI_MANIFEST, &manifest),
        };
        shared.checker.begin(repo, &tag, Some(acked));
        shared.stats.store_ops.fetch_add(1, Ordering::Relaxed);
        let reference = Reference::Tag(Tag::parse(&tag).expect("valid"));
        match store
            .put_manifest(repo, &reference, media::OCI_MANIFEST, manifest.clone())
            .await
        {
            Ok(_) => {
                shared.checker.ack(repo, &tag);
                return "push";
            }
            Err(e) if e.code() == Some(ErrorCode::ManifestBlobUnknown) && attempt < 3 => {
                shared.checker.abandon(repo, &tag);
                shared.stats.retries.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                shared.checker.abandon(repo, &tag);
                refused(shared, &e);
                if e.code().is_some() && e.code() != Some(ErrorCode::ManifestBlobUnknown) {
                    shared
                        .checker
                        .violation(format!("push to {repo}: unexpected {e}"));
                }
                return "push";
            }
        }
    }
    "push"
}

async fn pull(
    store: &Store,
    shared: &Shared,
    repo: &RepoName,
    rng: &mut Rng,
    quiet: bool,
) -> &'static str {
    let class = if quiet && shared.workload.hot_repo_fraction > 0.0 {
        "pull_quiet"
    } else {
        "pull"
    };
    let Some((tag, _)) = shared
        .checker
        .acked_tag(repo, |n| rng.below(n as u64) as usize)
    else {
        shared.stats.store_ops.fetch_add(1, Ordering::Relaxed);
        let _ = store.tags(repo, None, None).await;
        return class;
    };
    shared.stats.store_ops.fetch_add(1, Ordering::Relaxed);
    let Ok(m) = store
        .get_manifest(repo, &Reference::Tag(Tag::parse(&tag).expect("valid")))
        .await
    else {
        return class; // moved or deleted meanwhile
    };
    if Digest::of(m.digest.algorithm(), &m.body) != m.digest {
        shared.checker.violation(format!(
            "pull {repo}:{tag}: manifest bytes do not hash to {} (invariant 6)",
            m.digest
        ));
    }
    for d in blobs_of(&m.media_type, &m.body) {
        shared.stats.store_ops.fetch_add(1, Ordering::Relaxed);
        if let Ok(bytes) = store.get_blob(repo, &d).await
            && Digest::of(d.algorithm(), &bytes) != d
        {
            shared.checker.violation(format!(
                "pull {repo}: blob {d} served wrong bytes (invariant 6)"
            ));
        }
    }
    class
}

async fn head(store: &Store, shared: &Shared, repo: &RepoName, rng: &mut Rng) -> &'static str {
    let (d, _) = shared.pool_layer(rng.below(shared.workload.shared_layers.max(1)));
    shared.stats.store_ops.fetch_add(1, Ordering::Relaxed);
    let _ = store.stat_blob(repo, &d).await;
    "head"
}

async fn retag(
    id: u64,
    store: &Store,
    shared: &Shared,
    repo: &RepoName,
    rng: &mut Rng,
) -> &'static str {
    let prefix = format!("c{id}-");
    let Some((_, acked)) = shared
        .checker
        .acked_tag(repo, |n| rng.below(n as u64) as usize)
    else {
        return "retag";
    };
    let tag = own_tag(id, rng.below(3));
    debug_assert!(tag.starts_with(&prefix));
    shared.stats.store_ops.fetch_add(2, Ordering::Relaxed);
    let Ok(m) = store
        .get_manifest(repo, &Reference::Digest(acked.digest.clone()))
        .await
    else {
        return "retag";
    };
    shared.checker.begin(repo, &tag, Some(acked));
    match store
        .put_manifest(
            repo,
            &Reference::Tag(Tag::parse(&tag).expect("valid")),
            &m.media_type,
            m.body,
        )
        .await
    {
        Ok(_) => shared.checker.ack(repo, &tag),
        Err(e) => {
            // Its blobs may have been collected since (an untagged image).
            shared.checker.abandon(repo, &tag);
            refused(shared, &e);
        }
    }
    "retag"
}

async fn delete(
    id: u64,
    store: &Store,
    shared: &Shared,
    repo: &RepoName,
    rng: &mut Rng,
) -> &'static str {
    let tag = own_tag(id, rng.below(3));
    shared.checker.begin(repo, &tag, None);
    shared.stats.store_ops.fetch_add(1, Ordering::Relaxed);
    match store
        .delete_manifest(repo, &Reference::Tag(Tag::parse(&tag).expect("valid")))
        .await
    {
        Ok(()) => shared.checker.ack(repo, &tag),
        Err(e) => {
            shared.checker.abandon(repo, &tag);
            refused(shared, &e);
        }
    }
    "delete"
}
