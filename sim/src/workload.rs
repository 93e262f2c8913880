//! The workload: clients doing what registry clients do, drawn from the seed.
//!
//! Push: HEAD each blob (or not: a retrying client pushes blind), mount a
//! missing shared layer from another repository or upload it (monolithic,
//! or a session whose chunks are spread over virtual time), then PUT the
//! manifest under one of the client's own tags or by digest (a client
//! retries when GC took a layer before its manifest arrived). Pull: resolve
//! an acknowledged tag, fetch the manifest, then every blob. Head, retag and
//! delete; indexes over images pushed by digest; signatures (referrers);
//! re-pushes of a recent image; sessions abandoned after one chunk.
//! Layers come from a shared pool (cross-repository dedupe, the pathological
//! fan-in when the pool is small) or are new; sizes follow the scenario.
//!
//! Every acknowledged blob and manifest is reported to the checker with the
//! time its call was sent, for the delay contract (invariant 10).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use engine::driver::{Driver, SimDisk};
use engine::layout::{blobstore_blob, repo_blob};
use engine::oci::media;
use engine::{Digest, ErrorCode, Reference, RepoName, Store, Tag};
use hdrhistogram::Histogram;
use testkit::oci;

use crate::checker::{Acked, Checker};
use crate::rng::Rng;
use crate::scenario::{GcSection, LayerBytes, Workload};

/// What a client does in one operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpClass {
    Push,
    Pull,
    /// A pull of a repository other than the hot one (hot-repo scenarios).
    PullQuiet,
    Head,
    Retag,
    Delete,
    Index,
    Referrer,
    Repush,
    Abandon,
}

impl OpClass {
    /// Every class, in report order.
    pub const ALL: [OpClass; 10] = [
        OpClass::Push,
        OpClass::Pull,
        OpClass::PullQuiet,
        OpClass::Head,
        OpClass::Retag,
        OpClass::Delete,
        OpClass::Index,
        OpClass::Referrer,
        OpClass::Repush,
        OpClass::Abandon,
    ];

    /// The classes a client draws, in the order of [`crate::scenario::Mix::weights`].
    pub const DRAWN: [OpClass; 9] = [
        OpClass::Push,
        OpClass::Pull,
        OpClass::Head,
        OpClass::Retag,
        OpClass::Delete,
        OpClass::Index,
        OpClass::Referrer,
        OpClass::Repush,
        OpClass::Abandon,
    ];

    pub fn name(self) -> &'static str {
        match self {
            OpClass::Push => "push",
            OpClass::Pull => "pull",
            OpClass::PullQuiet => "pull_quiet",
            OpClass::Head => "head",
            OpClass::Retag => "retag",
            OpClass::Delete => "delete",
            OpClass::Index => "index",
            OpClass::Referrer => "referrer",
            OpClass::Repush => "repush",
            OpClass::Abandon => "abandon",
        }
    }

    /// Whether it writes (hot-repo scenarios send every write to the hot repository).
    fn writes(self) -> bool {
        !matches!(self, OpClass::Pull | OpClass::PullQuiet | OpClass::Head)
    }
}

/// How an operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The store gave the answer the protocol promises (a write taken, a
    /// read served in full, a definite "unknown" for what is not there).
    Acked,
    /// Refused or failed: a full disk, a crash, a blob GC took.
    Failed,
    /// Nothing to do (no acknowledged tag to pull or sign yet).
    Idle,
}

/// Per-class latency (virtual nanoseconds, acknowledged operations only)
/// and outcome counts, shared by every client and surviving node restarts.
#[derive(Debug)]
pub struct Stats {
    latency: Mutex<HashMap<OpClass, Histogram<u64>>>,
    /// Per class: acknowledged, failed.
    outcomes: Mutex<HashMap<OpClass, (u64, u64)>>,
    /// Acknowledged operations of every class.
    pub ops: AtomicU64,
    pub store_ops: AtomicU64,
    pub refused: AtomicU64,
    pub retries: AtomicU64,
    /// Writes refused for lack of space.
    pub no_space: AtomicU64,
    /// Manifests acknowledged after the first no-space refusal.
    pub acked_after_full: AtomicU64,
}

impl Default for Stats {
    fn default() -> Stats {
        let latency = OpClass::ALL
            .iter()
            .map(|c| (*c, engine::lock::histogram()))
            .collect();
        Stats {
            latency: Mutex::new(latency),
            outcomes: Mutex::default(),
            ops: AtomicU64::new(0),
            store_ops: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            no_space: AtomicU64::new(0),
            acked_after_full: AtomicU64::new(0),
        }
    }
}

impl Stats {
    fn record(&self, class: OpClass, outcome: Outcome, d: Duration) {
        let mut outcomes = self.outcomes.lock().unwrap();
        let counts = outcomes.entry(class).or_default();
        match outcome {
            Outcome::Acked => counts.0 += 1,
            Outcome::Failed => counts.1 += 1,
            Outcome::Idle => return,
        }
        if outcome == Outcome::Failed {
            return;
        }
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1);
        self.latency
            .lock()
            .unwrap()
            .get_mut(&class)
            .expect("known class")
            .saturating_record(ns);
        self.ops.fetch_add(1, Ordering::Relaxed);
    }

    /// Acknowledged and failed operations of `class`.
    pub fn outcomes(&self, class: OpClass) -> (u64, u64) {
        self.outcomes
            .lock()
            .unwrap()
            .get(&class)
            .copied()
            .unwrap_or_default()
    }

    pub fn histogram(&self, class: OpClass) -> Histogram<u64> {
        self.latency.lock().unwrap()[&class].clone()
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
    /// Per client, its last few acknowledged images (for re-pushes).
    recent: Vec<Mutex<VecDeque<Recent>>>,
    /// How long a session may sit between two calls and still be live
    /// (`None`: no GC, nothing cancels sessions).
    session_idle_limit: Option<Duration>,
    /// The store keeps a reserve for removals: invariant 11 is checked.
    pub keeps_reserve: bool,
    pub finished: AtomicU64,
    read_faults: ReadFaults,
    pool_seed: u64,
    /// The shared layers, built on first use: every push and HEAD of a pool
    /// layer would otherwise regenerate and re-hash its bytes.
    pool: Vec<OnceLock<(Digest, Bytes)>>,
}

/// What clients know of the faults on their reads.
#[derive(Debug, Default)]
pub struct ReadFaults {
    /// The disk, when its reads may come back with a flipped bit: the
    /// store must refuse such a read (invariant 6), so an operation during
    /// which one was served may fail where it otherwise could not. Wrong
    /// bytes are never excused.
    pub flips: Option<Arc<SimDisk>>,
    /// A deliberately broken store that skips read verification: blobs
    /// are served straight from this driver (see [`crate::broken`]).
    pub unverified: Option<Arc<dyn Driver>>,
}

impl ReadFaults {
    /// Reads served with a flipped bit so far.
    fn flips_served(&self) -> u64 {
        self.flips.as_ref().map_or(0, |disk| disk.flipped_reads())
    }
}

/// An image a client pushed and got acknowledged.
#[derive(Debug, Clone)]
struct Recent {
    repo: RepoName,
    blobs: Vec<(Digest, Bytes)>,
    media_type: &'static str,
    manifest: Bytes,
}

/// How many recent images a client remembers for re-pushes.
const RECENT: usize = 4;

impl Shared {
    /// `gc`: the scenario's periodic GC, whose delay and session limit the
    /// clients and the checker hold it to.
    pub fn new(
        workload: Workload,
        gc: Option<&GcSection>,
        keeps_reserve: bool,
        read_faults: ReadFaults,
        rng: &Rng,
    ) -> Shared {
        let clients = (0..workload.clients)
            .map(|c| Mutex::new((rng.fork(100 + c), 0)))
            .collect();
        let recent = (0..workload.clients).map(|_| Mutex::default()).collect();
        let pool = (0..workload.shared_layers)
            .map(|_| OnceLock::new())
            .collect();
        Shared {
            workload,
            checker: if gc.is_some_and(|gc| gc.delay_s > 0.0) {
                Checker::with_touches()
            } else {
                Checker::default()
            },
            stats: Stats::default(),
            stop: AtomicBool::new(false),
            clients,
            recent,
            session_idle_limit: gc.map(GcSection::session_idle_limit),
            keeps_reserve,
            finished: AtomicU64::new(0),
            read_faults,
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
    let data = testkit::pattern(seed, len);
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
        let manifest = oci::Image::new(&blobs[0], &blobs[1..]).build().bytes;
        (blobs, manifest)
    }
}

/// An OCI index over `children` (image manifests), one platform each.
fn index_over(children: &[(Digest, Bytes)]) -> Bytes {
    const ARCHES: [&str; 4] = ["amd64", "arm64", "s390x", "ppc64le"];
    let manifests = children
        .iter()
        .zip(ARCHES.iter().cycle())
        .map(|(c, arch)| oci::Desc::of(media::OCI_MANIFEST, c).platform(arch, "linux"))
        .collect();
    oci::Index::new(manifests).build().bytes
}

/// A signature artifact over `subject`: the empty config, one small layer.
fn signature_of(
    subject: (&str, &Digest, usize),
    signature: &(Digest, Bytes),
) -> (Vec<(Digest, Bytes)>, Bytes) {
    let (media_type, digest, size) = subject;
    let subject = oci::Desc::new(media_type, digest.clone(), size);
    let (blobs, manifest) = oci::signature(subject, signature);
    (blobs, manifest.bytes)
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
                shared.checker.learn(d, data);
            }
            let tag = format!("pre{k}");
            let digest = Digest::sha256(&manifest);
            shared.checker.learn(&digest, &manifest);
            let acked = Acked {
                blobs: shared
                    .checker
                    .manifest_blobs(media::OCI_MANIFEST, &digest, &manifest),
                digest,
            };
            let write = shared.checker.begin(&repo, &tag, Some(acked));
            let reference = Reference::Tag(Tag::parse(&tag).expect("valid"));
            store
                .put_manifest(&repo, &reference, media::OCI_MANIFEST, manifest)
                .await
                .expect("preload manifest");
            shared.checker.ack(&repo, &tag, write);
        }
    }
}

/// One client, until the run stops or its operation budget is spent.
pub async fn client(id: u64, store: Store, shared: Arc<Shared>) {
    let w = shared.workload.clone();
    let weights = w.mix.weights();
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
            .map_or(OpClass::Push, |i| OpClass::DRAWN[i]);
        let repo_i = if w.client_owns_repo {
            id % w.repos
        } else if w.hot_repo_fraction > 0.0 {
            if class.writes() || w.repos == 1 || rng.unit() < w.hot_repo_fraction {
                0
            } else {
                1 + rng.below(w.repos - 1)
            }
        } else {
            rng.zipf(w.repos, w.pull_zipf)
        };
        let repo = repo_name(repo_i);
        let started = now();
        let c = Client {
            id,
            store: &store,
            shared: &shared,
            repo: &repo,
            flips_before: shared.read_faults.flips_served(),
        };
        let (class, outcome) = match class {
            OpClass::Push => c.push(&mut rng).await,
            OpClass::Pull | OpClass::PullQuiet => c.pull(&mut rng, repo_i != 0).await,
            OpClass::Head => c.head(&mut rng).await,
            OpClass::Retag => c.retag(&mut rng).await,
            OpClass::Delete => c.delete(&mut rng).await,
            OpClass::Index => c.index(&mut rng).await,
            OpClass::Referrer => c.referrer(&mut rng).await,
            OpClass::Repush => c.repush(&mut rng).await,
            OpClass::Abandon => c.abandon(&mut rng).await,
        };
        shared.stats.record(class, outcome, started.elapsed());
        tokio::time::sleep(Duration::from_micros(w.think_us)).await;
    }
    shared.finished.fetch_add(1, Ordering::Relaxed);
}

/// The tag a client writes: its own (`c<id>-<k>`, one writer per tag), or
/// with `shared_tags` one every client of the repository writes (`t<k>`).
fn tag_of(workload: &Workload, id: u64, k: u64) -> String {
    if workload.shared_tags {
        format!("t{k}")
    } else {
        format!("c{id}-{k}")
    }
}

fn refused(shared: &Shared, e: &engine::StoreError) {
    // A full disk refuses writes: a definite answer, not a violation.
    if e.code().is_none() {
        shared.stats.refused.fetch_add(1, Ordering::Relaxed);
    }
    if e.is_no_space() {
        shared.stats.no_space.fetch_add(1, Ordering::Relaxed);
    }
}

/// Where a manifest goes: under a tag (tracked for invariants 1 and 2) or
/// by its digest.
enum Target {
    Tag(String),
    Digest,
}

/// One client's view for one operation.
struct Client<'a> {
    id: u64,
    store: &'a Store,
    shared: &'a Shared,
    repo: &'a RepoName,
    /// Reads served with a flipped bit when the operation began.
    flips_before: u64,
}

impl Client<'_> {
    /// Whether a read during this operation came back corrupted (the store
    /// may then refuse what it could not refuse otherwise).
    fn read_flipped(&self) -> bool {
        self.shared.read_faults.flips_served() != self.flips_before
    }

    /// A blob read as the client sees it: through the store, or, for a
    /// store broken to skip verification, straight from the disk.
    async fn get_blob(&self, d: &Digest) -> Result<Bytes, engine::StoreError> {
        let Some(driver) = &self.shared.read_faults.unverified else {
            return self.store.get_blob(self.repo, d).await;
        };
        for path in [repo_blob(self.repo, d), blobstore_blob(d)] {
            if let Ok(bytes) = driver.get(&path, None).await {
                return Ok(bytes);
            }
        }
        Err(engine::StoreError::BlobUnknown {
            repo: self.repo.to_string(),
            digest: d.clone(),
        })
    }

    fn count(&self, store_ops: u64) {
        self.shared
            .stats
            .store_ops
            .fetch_add(store_ops, Ordering::Relaxed);
    }

    /// Sends one blob the way the scenario's clients do: a mount from
    /// another repository if drawn and possible, else one monolithic push
    /// or an upload session whose chunks are spread over virtual time.
    async fn send_blob(
        &self,
        rng: &mut Rng,
        (d, data): &(Digest, Bytes),
        shared_layer: bool,
    ) -> Result<(), engine::StoreError> {
        let p = &self.shared.workload.protocol;
        if shared_layer && p.mount > 0.0 && rng.unit() < p.mount {
            let from = repo_name(rng.below(self.shared.workload.repos));
            let sent = now();
            self.count(1);
            if from != *self.repo && self.store.mount_blob(&from, self.repo, d).await? {
                self.shared.checker.touch_blob(sent, self.repo, d);
                self.shared.checker.learn(d, data);
                return Ok(());
            }
        }
        let chunk = p.chunk_bytes as usize;
        if chunk == 0 || data.len() <= chunk {
            let sent = now();
            self.count(1);
            self.store.push_blob(self.repo, d, data.clone()).await?;
            self.shared.checker.touch_blob(sent, self.repo, d);
            self.shared.checker.learn(d, data);
            return Ok(());
        }
        let gap = Duration::from_millis(p.chunk_gap_ms);
        self.count(1);
        let id = self.store.start_upload(self.repo).await?;
        let mut offset = 0;
        let mut last_call = now();
        while data.len() - offset > chunk {
            let piece = data.slice(offset..offset + chunk);
            let range = (offset as u64, (offset + chunk) as u64 - 1);
            self.count(1);
            let sent = now();
            let idle = sent.duration_since(last_call);
            let r = self.store.upload_chunk(&id, Some(range), piece).await;
            self.session_answer(&r, idle, d);
            r?;
            offset += chunk;
            last_call = now();
            tokio::time::sleep(gap).await;
        }
        self.count(1);
        let sent = now();
        let idle = sent.duration_since(last_call);
        let r = self
            .store
            .finish_upload(&id, d, Some(data.slice(offset..)))
            .await;
        self.session_answer(&r, idle, d);
        r?;
        self.shared.checker.touch_blob(sent, self.repo, d);
        self.shared.checker.learn(d, data);
        Ok(())
    }

    /// A session call refused as unknown after an idle time shorter than
    /// GC's session limit: GC cancelled a live upload (invariant 10).
    fn session_answer<T>(&self, r: &Result<T, engine::StoreError>, idle: Duration, d: &Digest) {
        if let Err(e) = r
            && e.code() == Some(ErrorCode::BlobUploadUnknown)
            && self
                .shared
                .session_idle_limit
                .is_some_and(|limit| idle < limit)
        {
            self.shared.checker.violation(format!(
                "upload of {d} to {}: session cancelled after {idle:?} idle, inside the session limit {:?}: {e} (invariant 10)",
                self.repo, self.shared.session_idle_limit
            ));
        }
    }

    /// HEADs (if drawn) and sends every blob the repository lacks.
    async fn send_blobs(
        &self,
        rng: &mut Rng,
        blobs: &[(Digest, Bytes)],
        blind: bool,
    ) -> Result<(), engine::StoreError> {
        let head_first = self.shared.workload.protocol.head_first;
        for (i, blob) in blobs.iter().enumerate() {
            let head = !blind && (head_first >= 1.0 || rng.unit() < head_first);
            if head {
                self.count(1);
                if self.store.stat_blob(self.repo, &blob.0).await.is_ok() {
                    continue;
                }
            }
            // The config (first) is the image's own; layers may be shared.
            self.send_blob(rng, blob, i > 0).await?;
        }
        Ok(())
    }

    /// PUTs a manifest; on success reports it (and its tag) to the checker.
    async fn put_manifest(
        &self,
        target: &Target,
        media_type: &str,
        manifest: &Bytes,
    ) -> Result<(), engine::StoreError> {
        let checker = &self.shared.checker;
        let digest = Digest::sha256(manifest);
        checker.learn(&digest, manifest);
        let (reference, write) = match target {
            Target::Tag(tag) => {
                let acked = Acked {
                    blobs: checker.manifest_blobs(media_type, &digest, manifest),
                    digest,
                };
                let write = checker.begin(self.repo, tag, Some(acked));
                (Reference::Tag(Tag::parse(tag).expect("valid")), Some(write))
            }
            Target::Digest => (Reference::Digest(digest), None),
        };
        self.count(1);
        let sent = now();
        let result = self
            .store
            .put_manifest(self.repo, &reference, media_type, manifest.clone())
            .await;
        if let (Target::Tag(tag), Some(write)) = (target, write) {
            match &result {
                Ok(_) => checker.ack(self.repo, tag, write),
                Err(e) => checker.failed(self.repo, tag, write, e),
            }
        }
        result?;
        checker.touch_manifest(sent, self.repo, media_type, manifest);
        if self.shared.stats.no_space.load(Ordering::Relaxed) > 0 {
            self.shared
                .stats
                .acked_after_full
                .fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Blobs, then the manifest; a manifest refused for a missing blob (GC
    /// took one the client had not touched within the delay) is retried,
    /// sending what is missing again.
    async fn push_image(
        &self,
        rng: &mut Rng,
        blobs: &[(Digest, Bytes)],
        media_type: &'static str,
        manifest: &Bytes,
        target: &Target,
        blind: bool,
    ) -> bool {
        for attempt in 0..4 {
            if let Err(e) = self.send_blobs(rng, blobs, blind && attempt == 0).await {
                // A session idle past GC's limit may be cancelled (a
                // cancelled live one is reported where it happens).
                self.unexpected("blob push", &e, &[ErrorCode::BlobUploadUnknown]);
                return false;
            }
            match self.put_manifest(target, media_type, manifest).await {
                Ok(()) => {
                    self.remember(blobs, media_type, manifest);
                    return true;
                }
                Err(e) if e.code() == Some(ErrorCode::ManifestBlobUnknown) && attempt < 3 => {
                    self.shared.stats.retries.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    refused(self.shared, &e);
                    if e.code().is_some()
                        && e.code() != Some(ErrorCode::ManifestBlobUnknown)
                        && !self.read_flipped()
                    {
                        self.shared
                            .checker
                            .violation(format!("push to {}: unexpected {e}", self.repo));
                    }
                    return false;
                }
            }
        }
        false
    }

    fn remember(&self, blobs: &[(Digest, Bytes)], media_type: &'static str, manifest: &Bytes) {
        if self.shared.workload.mix.repush == 0 {
            return;
        }
        let mut recent = self.shared.recent[self.id as usize].lock().unwrap();
        if recent.len() == RECENT {
            recent.pop_front();
        }
        recent.push_back(Recent {
            repo: self.repo.clone(),
            blobs: blobs.to_vec(),
            media_type,
            manifest: manifest.clone(),
        });
    }

    async fn push(&self, rng: &mut Rng) -> (OpClass, Outcome) {
        let (blobs, manifest) = self.shared.image(rng);
        let tag = tag_of(&self.shared.workload, self.id, rng.below(3));
        let by_digest = self.shared.workload.protocol.by_digest;
        let target = if by_digest > 0.0 && rng.unit() < by_digest {
            Target::Digest
        } else {
            Target::Tag(tag)
        };
        let pushed = self
            .push_image(rng, &blobs, media::OCI_MANIFEST, &manifest, &target, false)
            .await;
        (OpClass::Push, acked_if(pushed))
    }

    /// Two images by digest (their layers take as long as the protocol
    /// says), then an index over them, by digest or under a tag: the
    /// index's children may be older than the delay when it arrives.
    async fn index(&self, rng: &mut Rng) -> (OpClass, Outcome) {
        let children = [self.shared.image(rng), self.shared.image(rng)];
        let by_digest = rng.unit() < self.shared.workload.protocol.by_digest.max(0.5);
        let target = if by_digest {
            Target::Digest
        } else {
            Target::Tag(tag_of(&self.shared.workload, self.id, rng.below(3)))
        };
        let body = index_over(
            &children
                .iter()
                .map(|(_, m)| (Digest::sha256(m), m.clone()))
                .collect::<Vec<_>>(),
        );
        for attempt in 0..3 {
            for (blobs, manifest) in &children {
                let pushed = self
                    .push_image(
                        rng,
                        blobs,
                        media::OCI_MANIFEST,
                        manifest,
                        &Target::Digest,
                        false,
                    )
                    .await;
                if !pushed {
                    return (OpClass::Index, Outcome::Failed);
                }
            }
            match self.put_manifest(&target, media::OCI_INDEX, &body).await {
                Ok(()) => return (OpClass::Index, Outcome::Acked),
                // A child went before its index arrived: put it again.
                Err(e) if e.code() == Some(ErrorCode::ManifestBlobUnknown) && attempt < 2 => {
                    self.shared.stats.retries.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    self.unexpected("index", &e, &[ErrorCode::ManifestBlobUnknown]);
                    break;
                }
            }
        }
        (OpClass::Index, Outcome::Failed)
    }

    /// A signature over an acknowledged manifest of the repository.
    async fn referrer(&self, rng: &mut Rng) -> (OpClass, Outcome) {
        let checker = &self.shared.checker;
        let Some((_, subject)) = checker.acked_tag(self.repo, |n| rng.below(n as u64) as usize)
        else {
            return (OpClass::Referrer, Outcome::Idle);
        };
        let signature = content(rng.next(), 64 + rng.below(400) as usize);
        self.count(1);
        let m = match self
            .store
            .get_manifest(self.repo, &Reference::Digest(subject.digest.clone()))
            .await
        {
            Ok(m) => m,
            // Its tag moved and GC took it meanwhile.
            Err(e) => {
                self.unexpected("referrer's subject", &e, &[ErrorCode::ManifestUnknown]);
                return (OpClass::Referrer, Outcome::Failed);
            }
        };
        let (blobs, manifest) = signature_of((&m.media_type, &m.digest, m.body.len()), &signature);
        let pushed = self
            .push_image(
                rng,
                &blobs,
                media::OCI_MANIFEST,
                &manifest,
                &Target::Digest,
                false,
            )
            .await;
        (OpClass::Referrer, acked_if(pushed))
    }

    /// One of this client's recent images into its repository again:
    /// every blob pushed blind, the manifest put by digest. Each is a touch
    /// that restarts the item's age, however long ago GC marked it.
    async fn repush(&self, rng: &mut Rng) -> (OpClass, Outcome) {
        let recent: Vec<Recent> = self.shared.recent[self.id as usize]
            .lock()
            .unwrap()
            .iter()
            .filter(|r| &r.repo == self.repo)
            .cloned()
            .collect();
        if recent.is_empty() {
            return (OpClass::Repush, Outcome::Idle);
        }
        let r = &recent[rng.below(recent.len() as u64) as usize];
        let pushed = self
            .push_image(
                rng,
                &r.blobs,
                r.media_type,
                &r.manifest,
                &Target::Digest,
                true,
            )
            .await;
        (OpClass::Repush, acked_if(pushed))
    }

    /// A session started, one chunk sent, then the client walks away.
    async fn abandon(&self, rng: &mut Rng) -> (OpClass, Outcome) {
        let (_, chunk) = content(rng.next(), 256 + rng.below(4096) as usize);
        self.count(2);
        let sent = match self.store.start_upload(self.repo).await {
            Ok(id) => self.store.upload_chunk(&id, None, chunk).await.map(|_| ()),
            Err(e) => Err(e),
        };
        if let Err(e) = &sent {
            self.unexpected("abandoned upload", e, &[]);
        }
        (OpClass::Abandon, acked_if(sent.is_ok()))
    }

    /// An acknowledged tag, its manifest, then every blob. With no write to
    /// that tag overlapping the pull (its version unchanged), the store
    /// must serve the acknowledged value (or the one in flight) and every
    /// blob of it (invariants 1, 2 and 6).
    async fn pull(&self, rng: &mut Rng, quiet: bool) -> (OpClass, Outcome) {
        let (store, shared, repo) = (self.store, self.shared, self.repo);
        let checker = &shared.checker;
        let class = if quiet && shared.workload.hot_repo_fraction > 0.0 {
            OpClass::PullQuiet
        } else {
            OpClass::Pull
        };
        let Some((tag, _)) = checker.acked_tag(repo, |n| rng.below(n as u64) as usize) else {
            self.count(1);
            return match store.tags(repo, None, None).await {
                Ok(_) => (class, Outcome::Acked),
                Err(e) => {
                    self.unexpected("tags list", &e, &[ErrorCode::NameUnknown]);
                    (class, acked_if(e.code() == Some(ErrorCode::NameUnknown)))
                }
            };
        };
        let version = checker.tag_version(repo, &tag);
        let untouched = || checker.tag_version(repo, &tag) == version;
        self.count(1);
        let m = match store
            .get_manifest(repo, &Reference::Tag(Tag::parse(&tag).expect("valid")))
            .await
        {
            Ok(m) => m,
            Err(e) => {
                let absent = matches!(
                    e.code(),
                    Some(ErrorCode::ManifestUnknown | ErrorCode::NameUnknown)
                );
                if e.code().is_some()
                    && !(absent && checker.may_show(repo, &tag, version, None))
                    && !self.read_flipped()
                {
                    checker.violation(format!(
                        "pull {repo}:{tag}: the acknowledged tag is unreadable, no write to it in flight: {e} (invariant 1)"
                    ));
                }
                return (class, Outcome::Failed); // moved, deleted, or a storage failure
            }
        };
        if !checker.hashes_to(&m.digest, &m.body) {
            checker.violation(format!(
                "pull {repo}:{tag}: manifest bytes do not hash to {} (invariant 6)",
                m.digest
            ));
        }
        if !checker.may_show(repo, &tag, version, Some(&m.digest)) {
            checker.violation(format!(
                "pull {repo}:{tag}: served {}, neither the acknowledged value nor a write in flight (invariant 2)",
                m.digest
            ));
        }
        let mut outcome = Outcome::Acked;
        for d in checker.manifest_blobs(&m.media_type, &m.digest, &m.body) {
            self.count(1);
            match self.get_blob(&d).await {
                Ok(bytes) if checker.hashes_to(&d, &bytes) => {}
                Ok(_) => checker.violation(format!(
                    "pull {repo}: blob {d} served wrong bytes (invariant 6)"
                )),
                Err(e) => {
                    if untouched() && e.code().is_some() && !self.read_flipped() {
                        checker.violation(format!(
                            "pull {repo}:{tag}: blob {d} of the acknowledged manifest {} unreadable: {e} (invariant 1)",
                            m.digest
                        ));
                    }
                    outcome = Outcome::Failed;
                }
            }
        }
        (class, outcome)
    }

    async fn head(&self, rng: &mut Rng) -> (OpClass, Outcome) {
        let (d, _) = self
            .shared
            .pool_layer(rng.below(self.shared.workload.shared_layers.max(1)));
        self.count(1);
        let answered = match self.store.stat_blob(self.repo, &d).await {
            Ok(_) => true,
            Err(e) => {
                self.unexpected(
                    "head",
                    &e,
                    &[ErrorCode::BlobUnknown, ErrorCode::NameUnknown],
                );
                e.code().is_some()
            }
        };
        (OpClass::Head, acked_if(answered))
    }

    async fn retag(&self, rng: &mut Rng) -> (OpClass, Outcome) {
        let (store, shared, repo) = (self.store, self.shared, self.repo);
        let Some((_, acked)) = shared
            .checker
            .acked_tag(repo, |n| rng.below(n as u64) as usize)
        else {
            return (OpClass::Retag, Outcome::Idle);
        };
        let tag = tag_of(&self.shared.workload, self.id, rng.below(3));
        self.count(2);
        let m = match store
            .get_manifest(repo, &Reference::Digest(acked.digest.clone()))
            .await
        {
            Ok(m) => m,
            Err(e) => {
                // Its tag moved since and GC took the untagged manifest.
                self.unexpected("retag source", &e, &[ErrorCode::ManifestUnknown]);
                return (OpClass::Retag, Outcome::Failed);
            }
        };
        let write = shared.checker.begin(repo, &tag, Some(acked));
        let sent = now();
        match store
            .put_manifest(
                repo,
                &Reference::Tag(Tag::parse(&tag).expect("valid")),
                &m.media_type,
                m.body.clone(),
            )
            .await
        {
            Ok(_) => {
                shared.checker.ack(repo, &tag, write);
                shared
                    .checker
                    .touch_manifest(sent, repo, &m.media_type, &m.body);
                (OpClass::Retag, Outcome::Acked)
            }
            Err(e) => {
                // Its blobs may have been collected since (an untagged image).
                shared.checker.failed(repo, &tag, write, &e);
                self.unexpected("retag", &e, &[ErrorCode::ManifestBlobUnknown]);
                (OpClass::Retag, Outcome::Failed)
            }
        }
    }

    async fn delete(&self, rng: &mut Rng) -> (OpClass, Outcome) {
        let (store, shared, repo) = (self.store, self.shared, self.repo);
        let tag = tag_of(&self.shared.workload, self.id, rng.below(3));
        let write = shared.checker.begin(repo, &tag, None);
        self.count(1);
        match store
            .delete_manifest(repo, &Reference::Tag(Tag::parse(&tag).expect("valid")))
            .await
        {
            Ok(()) => {
                shared.checker.ack(repo, &tag, write);
                (OpClass::Delete, Outcome::Acked)
            }
            // A definite answer: the tag is not there (nothing changed).
            Err(e)
                if matches!(
                    e.code(),
                    Some(ErrorCode::ManifestUnknown | ErrorCode::NameUnknown)
                ) =>
            {
                shared.checker.abandon(repo, &tag, write);
                (OpClass::Delete, Outcome::Acked)
            }
            Err(e) => {
                shared.checker.failed(repo, &tag, write, &e);
                self.unexpected("delete", &e, &[]);
                if e.is_no_space() && shared.keeps_reserve {
                    shared.checker.violation(format!(
                        "delete {repo}:{tag} refused on a full disk: {e} (invariant 11)"
                    ));
                }
                (OpClass::Delete, Outcome::Failed)
            }
        }
    }

    /// Counts a refusal; an OCI error the race at hand cannot cause
    /// (anything but `expected`) is a violation: the store answered wrong.
    fn unexpected(&self, what: &str, e: &engine::StoreError, expected: &[ErrorCode]) {
        refused(self.shared, e);
        if let Some(code) = e.code()
            && !expected.contains(&code)
            && !self.read_flipped()
        {
            self.shared
                .checker
                .violation(format!("{what} in {}: unexpected {e}", self.repo));
        }
    }
}

fn acked_if(ok: bool) -> Outcome {
    if ok { Outcome::Acked } else { Outcome::Failed }
}
