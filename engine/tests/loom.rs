//! loom model checks of the store's real code paths (DESIGN §5, §9, §10):
//! every interleaving, up to `LOOM_MAX_PREEMPTIONS`, of pairs and triples of
//! store operations, for each lock policy.
//!
//! ```text
//! RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 \
//!   cargo test -p engine --test loom --release --target-dir target/loom
//! ```
//!
//! The operations are the engine's own (`finish_upload`, `push_blob`,
//! `mount_blob`, `put_manifest`, `delete_manifest`, `delete_blob`,
//! `gc_repository`, `sweep_blobstore`, and `sync_stores` for one step of a
//! side-by-side migration), on the in-memory object driver and metadata
//! store. The locks are the `sync` shim's loom build: a FIFO reader-writer
//! lock with tokio's fairness. Nothing here models the locks separately.
//!
//! The file has three parts: the world every model starts from, the
//! operations and what each may answer, and the checker of DESIGN §9's
//! invariants. Then the models, the fairness check, and the mutation checks
//! that prove the suite can fail (`OCISTORE_MUTATION`, see engine/build.rs).
#![cfg(loom)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use engine::driver::{Driver, Latency, LatencyModel, ObjectDriver, SimDisk, SimDriver};
use engine::gc::GcOptions;
use engine::lock::{Intent, LockManager};
use engine::meta::MemoryMeta;
use engine::migrate::sync::sync_stores;
use engine::oci::media;
use engine::{Digest, LayoutKind, LockPolicy, Reference, RepoName, Store, StoreConfig, StoreError};
use loom::future::block_on;
use testkit::oci;

// ---------------------------------------------------------------- the world

/// The blobs of the world, by role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Blob {
    /// A layer of `a:v1`, also held (unreferenced) by `b`.
    Layer,
    /// In `_blobstore` with no holder: what the sweep is about to delete.
    Orphan,
    /// Stored nowhere yet.
    Fresh,
    Config1,
    Config2,
}

const BLOBS: [Blob; 5] = [
    Blob::Layer,
    Blob::Orphan,
    Blob::Fresh,
    Blob::Config1,
    Blob::Config2,
];

impl Blob {
    fn bytes(self) -> Bytes {
        Bytes::from_static(match self {
            Blob::Layer => b"shared layer",
            Blob::Orphan => b"orphaned layer",
            Blob::Fresh => b"fresh layer",
            Blob::Config1 => b"{\"config\":1}",
            Blob::Config2 => b"{\"config\":2}",
        })
    }

    fn digest(self) -> Digest {
        Digest::sha256(&self.bytes())
    }
}

/// The images of the world: a config and one layer each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Image {
    /// Config1 + Layer: `a:v1` at the start.
    One,
    /// Config2 + Orphan: revives the orphan.
    Revive,
}

impl Image {
    fn blobs(self) -> [Blob; 2] {
        match self {
            Image::One => [Blob::Config1, Blob::Layer],
            Image::Revive => [Blob::Config2, Blob::Orphan],
        }
    }

    fn body(self) -> Bytes {
        let [config, layer] = self.blobs().map(|b| (b.digest(), b.bytes()));
        oci::Image::new(&config, &[layer]).build().bytes
    }
}

fn repo(s: &str) -> RepoName {
    RepoName::parse(s).unwrap()
}

fn tag(s: &str) -> Reference {
    Reference::parse(s).unwrap()
}

fn open(layout: LayoutKind, policy: LockPolicy, driver: Arc<dyn Driver>) -> Store {
    let config = StoreConfig { layout, policy };
    block_on(Store::open(driver, Arc::new(MemoryMeta::new()), config)).unwrap()
}

fn memory() -> Arc<dyn Driver> {
    Arc::new(ObjectDriver::in_memory())
}

/// Every driver call a scheduling point (a sleep is one under loom), for
/// races between one operation's driver calls rather than at its locks.
/// Used by the legacy models only: it multiplies interleavings.
fn yielding(driver: impl Driver + 'static) -> Arc<dyn Driver> {
    Arc::new(Latency::new(driver, LatencyModel::fixed(Duration::ZERO)))
}

fn put(store: &Store, r: &str, t: &str, image: Image) -> Result<(), StoreError> {
    block_on(store.put_manifest(&repo(r), &tag(t), media::OCI_MANIFEST, image.body())).map(|_| ())
}

/// `a` holds `a:v1` (Config1 + Layer); `b` holds Layer alone; `_blobstore`
/// holds Orphan, which no repository holds any more. In the legacy layout
/// `a` holds Layer's bytes (the original) and `b` a marker to them. Built single-threaded,
/// so it costs loom no branching.
/// Which store the models start from.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// The blobstore layout on the in-memory object driver.
    Blobstore,
    /// The legacy layout on objects: duplicates are markers.
    LegacyMarkers,
    /// The legacy layout on the sim disk: duplicates are hard links.
    LegacyLinks,
}

impl Kind {
    fn layout(self) -> LayoutKind {
        match self {
            Kind::Blobstore => LayoutKind::Blobstore,
            Kind::LegacyMarkers | Kind::LegacyLinks => LayoutKind::Legacy,
        }
    }

    fn driver(self) -> Arc<dyn Driver> {
        match self {
            Kind::Blobstore => memory(),
            Kind::LegacyMarkers => yielding(ObjectDriver::in_memory()),
            Kind::LegacyLinks => yielding(SimDriver::on(SimDisk::new())),
        }
    }
}

fn world(kind: Kind, policy: LockPolicy) -> Store {
    let s = open(kind.layout(), policy, kind.driver());
    for (r, b) in [
        ("a", Blob::Config1),
        ("a", Blob::Layer),
        ("b", Blob::Layer),
        ("c", Blob::Orphan),
    ] {
        block_on(s.push_blob(&repo(r), &b.digest(), b.bytes())).unwrap();
    }
    put(&s, "a", "v1", Image::One).unwrap();
    block_on(s.delete_blob(&repo("c"), &Blob::Orphan.digest())).unwrap();
    // `b`'s Layer is garbage (no manifest of `b` uses it), and a GC pass
    // marked it long ago: a pass with a delay may take it, unless a client
    // touches it again first.
    let mark = format!("mark\0b\0b:{}", Blob::Layer.digest());
    block_on(
        s.meta()
            .commit(engine::meta::Batch::new().put(engine::meta::Table::GC, mark, "0")),
    )
    .unwrap();
    s
}

/// The legacy store a side-by-side migration copies from: `m:v1` = One.
fn legacy_source(policy: LockPolicy) -> Store {
    let s = open(LayoutKind::Legacy, policy, memory());
    for b in Image::One.blobs() {
        block_on(s.push_blob(&repo("m"), &b.digest(), b.bytes())).unwrap();
    }
    put(&s, "m", "v1", Image::One).unwrap();
    s
}

// ----------------------------------------------------------- the operations

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    /// POST + PATCH + PUT: the chunked upload's finish.
    Upload(&'static str, Blob),
    /// One monolithic PUT (`push_blob`).
    Push(&'static str, Blob),
    Mount {
        from: &'static str,
        to: &'static str,
        blob: Blob,
    },
    PutManifest(&'static str, &'static str, Image),
    DeleteManifest(&'static str, &'static str),
    DeleteBlob(&'static str, Blob),
    /// GC's pass over one repository (delay 0: everything unreferenced goes).
    GcRepo(&'static str),
    /// GC's `_blobstore` sweep (delay 0).
    Sweep,
    /// GC's pass over one repository with a delay of an hour: only garbage
    /// marked more than an hour ago and untouched since goes.
    GcRepoPastDelay(&'static str),
    /// One side-by-side migration step: the legacy store's `m` into the world.
    MigrateStep,
    /// A GET of a blob, concurrent with the rest: it must be served whole
    /// unless the scenario itself removes it from that repository.
    Pull(&'static str, Blob),
}

const NOW: GcOptions = GcOptions::new(Duration::ZERO);
const HOUR: GcOptions = GcOptions::new(Duration::from_secs(3600));

/// What an operation answered: done, done without effect, or an error.
#[derive(Debug)]
enum Outcome {
    Done,
    NoEffect,
    Refused(StoreError),
}

impl Op {
    fn run(self, s: &Store, old: &Store) -> Outcome {
        let d = |b: Blob| b.digest();
        let result = match self {
            Op::Upload(r, b) => block_on(async {
                let id = s.start_upload(&repo(r)).await?;
                s.upload_chunk(&id, None, b.bytes()).await?;
                s.finish_upload(&id, &d(b), None).await
            }),
            Op::Push(r, b) => block_on(s.push_blob(&repo(r), &d(b), b.bytes())),
            Op::Mount { from, to, blob } => {
                match block_on(s.mount_blob(&repo(from), &repo(to), &d(blob))) {
                    Ok(false) => return Outcome::NoEffect,
                    other => other.map(|_| ()),
                }
            }
            Op::PutManifest(r, t, image) => put(s, r, t, image),
            Op::DeleteManifest(r, t) => block_on(s.delete_manifest(&repo(r), &tag(t))),
            Op::DeleteBlob(r, b) => block_on(s.delete_blob(&repo(r), &d(b))),
            Op::GcRepo(r) => block_on(s.gc_repository(&repo(r), NOW)).map(|_| ()),
            Op::Sweep => block_on(s.sweep_blobstore(NOW)).map(|_| ()),
            Op::GcRepoPastDelay(r) => block_on(s.gc_repository(&repo(r), HOUR)).map(|_| ()),
            Op::MigrateStep => block_on(sync_stores(old, s)).map(|report| {
                assert!(report.problems.is_empty(), "{:?}", report.problems);
            }),
            Op::Pull(r, b) => block_on(s.get_blob(&repo(r), &d(b))).map(|got| {
                assert_eq!(got, b.bytes(), "{self:?} served a stub");
            }),
        };
        match result {
            Ok(()) => Outcome::Done,
            Err(e) => Outcome::Refused(e),
        }
    }

    /// The blob this operation adds to a repository, if it succeeded.
    fn adds(self) -> Option<(&'static str, Blob)> {
        match self {
            Op::Upload(r, b) | Op::Push(r, b) => Some((r, b)),
            Op::Mount { to, blob, .. } => Some((to, blob)),
            _ => None,
        }
    }

    /// Whether this operation may take `blob` out of `repo`: a delete of
    /// it, or a GC pass over the repository (delay 0 takes any
    /// unreferenced blob; the pass past its delay takes `b`'s Layer, which
    /// the world marked long ago).
    fn may_remove(self, repo: &str, blob: Blob) -> bool {
        match self {
            Op::DeleteBlob(r, b) => r == repo && b == blob,
            Op::GcRepo(r) | Op::GcRepoPastDelay(r) => r == repo,
            _ => false,
        }
    }
}

/// Whether the world holds `blob` in `repo` before the race.
fn held_at_start(repo: &str, blob: Blob) -> bool {
    matches!(
        (repo, blob),
        ("a", Blob::Config1 | Blob::Layer) | ("b", Blob::Layer)
    )
}

/// Whether the world tags `repo:tag` before the race.
fn tagged_at_start(repo: &str, t: &str) -> bool {
    (repo, t) == ("a", "v1")
}

/// The answers a race in `scenario` can explain for `op` (the `index`-th
/// operation of `thread`); anything else is a failure. Derived from the
/// world and the other operations of the scenario, so a model allows only
/// what its own operations can cause.
fn explained(scenario: &[Vec<Op>], thread: usize, index: usize, outcome: &Outcome) -> bool {
    let op = scenario[thread][index];
    // The operations that may run before `op` or alongside it.
    let others = || {
        scenario.iter().enumerate().flat_map(move |(t, ops)| {
            let upto = if t == thread { index } else { ops.len() };
            ops[..upto].iter().copied()
        })
    };
    let removable = |r: &str, b: Blob| others().any(|o| o.may_remove(r, b));
    match (op, outcome) {
        (_, Outcome::Done) => true,
        // A mount finds nothing only if its source may lack the blob.
        (Op::Mount { from, blob, .. }, Outcome::NoEffect) => {
            !held_at_start(from, blob) || removable(from, blob)
        }
        (_, Outcome::NoEffect) => false,
        (_, Outcome::Refused(e)) => match (op, e) {
            // One of its blobs was never there, or was taken first.
            (Op::PutManifest(r, _, image), StoreError::ManifestBlobUnknown { .. }) => {
                image.blobs().iter().any(|&b| {
                    removable(r, b)
                        || (!held_at_start(r, b) && !others().any(|o| o.adds() == Some((r, b))))
                })
            }
            // The tag was never there, or another delete took it first.
            (Op::DeleteManifest(r, t), StoreError::ManifestUnknown { .. }) => {
                !tagged_at_start(r, t) || others().any(|o| o == Op::DeleteManifest(r, t))
            }
            (Op::DeleteBlob(r, b), StoreError::BlobUnknown { .. }) => {
                !held_at_start(r, b) || removable(r, b)
            }
            // A manifest of the repository lists it: `a:v1` from the
            // start (its row outlives an untag), or one the scenario puts.
            (Op::DeleteBlob(r, b), StoreError::Denied { .. }) => (r == "a"
                && Image::One.blobs().contains(&b))
                || others().any(
                    |o| matches!(o, Op::PutManifest(pr, _, i) if pr == r && i.blobs().contains(&b)),
                ),
            // A read of a blob the scenario itself removes.
            (Op::Pull(r, b), StoreError::BlobUnknown { .. }) => removable(r, b),
            _ => false,
        },
    }
}

// ------------------------------------------------------------- the checker

/// One operation as it ran: what it answered, and when it started and
/// returned. The stamps come from a std atomic, which loom does not model:
/// they add no interleavings, and since loom runs one thread at a time they
/// are the real order of the calls. An operation's effect happens inside
/// its critical section, between its two stamps: `a` took effect before
/// `b` for sure only when `a.end < b.start`. Completion order alone would
/// not do: an operation can be preempted after its critical section and
/// before it returns, while another one runs whole.
#[derive(Debug)]
struct Record {
    op: Op,
    outcome: Outcome,
    /// Which thread of the scenario, and which of its operations.
    thread: usize,
    index: usize,
    start: usize,
    end: usize,
}

impl Record {
    /// `self` may have taken effect after `other` did (it had not returned
    /// before `other` started).
    fn may_follow(&self, other: &Record) -> bool {
        self.end > other.start
    }

    fn done(&self) -> bool {
        matches!(self.outcome, Outcome::Done)
    }
}

/// Runs the operations of one thread, stamping each.
fn run_thread(
    thread: usize,
    ops: &[Op],
    s: &Store,
    old: &Store,
    clock: &std::sync::atomic::AtomicUsize,
) -> Vec<Record> {
    ops.iter()
        .enumerate()
        .map(|(index, op)| {
            let start = clock.fetch_add(1, Ordering::SeqCst);
            let outcome = op.run(s, old);
            let end = clock.fetch_add(1, Ordering::SeqCst);
            Record {
                op: *op,
                outcome,
                thread,
                index,
                start,
                end,
            }
        })
        .collect()
}

/// What the store shows after the race, for the tags and blobs the
/// scenario names (read single-threaded, so it costs loom no branching).
#[derive(Debug, Default)]
struct Observed {
    /// `repo:tag` -> whether it resolves.
    tags: BTreeMap<(&'static str, &'static str), bool>,
    /// `repo`, blob -> its bytes, if the repository serves it.
    blobs: BTreeMap<(&'static str, Blob), Option<Bytes>>,
}

impl Observed {
    fn read(s: &Store, scenario: &[Vec<Op>]) -> Observed {
        let mut seen = Observed::default();
        let mut tag_of = |r: &'static str, t: &'static str| {
            seen.tags
                .entry((r, t))
                .or_insert_with(|| block_on(s.get_manifest(&repo(r), &tag(t))).is_ok());
        };
        tag_of("a", "v1");
        for op in scenario.iter().flatten() {
            if let Op::PutManifest(r, t, _) | Op::DeleteManifest(r, t) = *op {
                tag_of(r, t);
            }
        }
        for op in scenario.iter().flatten() {
            if let Some((r, b)) = op.adds().or(match *op {
                Op::DeleteBlob(r, b) => Some((r, b)),
                _ => None,
            }) {
                seen.blobs
                    .entry((r, b))
                    .or_insert_with(|| block_on(s.get_blob(&repo(r), &b.digest())).ok());
            }
        }
        seen
    }

    fn tagged(&self, r: &'static str, t: &'static str) -> bool {
        self.tags[&(r, t)]
    }

    fn holds(&self, r: &'static str, b: Blob) -> bool {
        self.blobs[&(r, b)].is_some()
    }
}

/// DESIGN §9 after every interleaving: the reference truth (fsck), no blob
/// lost from a manifest a repository still lists, no stub served, then
/// [`judge`] on what the operations answered and what the store shows.
fn check(s: &Store, scenario: &[Vec<Op>], records: &[Record]) {
    let findings = block_on(s.fsck()).unwrap();
    let errors: Vec<_> = findings.iter().filter(|f| f.is_error()).collect();
    assert!(errors.is_empty(), "reference truth broken: {errors:?}");

    let by_digest: BTreeMap<Digest, Bytes> =
        BLOBS.iter().map(|b| (b.digest(), b.bytes())).collect();
    let images: BTreeMap<Digest, Image> = [Image::One, Image::Revive]
        .iter()
        .map(|i| (Digest::sha256(&i.body()), *i))
        .collect();
    for r in block_on(s.catalog(None, None)).unwrap() {
        for t in block_on(s.tags(&r, None, None)).unwrap() {
            let m = block_on(s.get_manifest(&r, &tag(t.as_str())))
                .unwrap_or_else(|e| panic!("{r}:{t} is listed but unreadable: {e}"));
            let image = images
                .get(&m.digest)
                .unwrap_or_else(|| panic!("{r}:{t} serves an unknown manifest"));
            for b in image.blobs() {
                let got = block_on(s.get_blob(&r, &b.digest()))
                    .unwrap_or_else(|e| panic!("{r}:{t} lost {b:?}: {e}"));
                assert_eq!(
                    got,
                    by_digest[&b.digest()],
                    "{r}:{t} served a stub for {b:?}"
                );
            }
        }
    }
    let seen = Observed::read(s, scenario);
    if let Err(why) = judge(scenario, records, &seen) {
        panic!("{why}\nrecords: {records:#?}\nseen: {seen:?}");
    }
}

/// The answers against the final state, in the order the operations took
/// effect as far as their stamps tell it (plain code: testable outside loom):
/// - every refusal is one the scenario can cause ([`explained`]);
/// - an acknowledged put of a tag, or an addition of a blob, is visible
///   unless a delete of it (or a GC pass over the repository, for a blob)
///   may have taken effect after it;
/// - an acknowledged delete of a tag or a blob took effect: it is gone
///   unless an acknowledged put or addition may have taken effect after it.
///   In `retag_vs_delete_vs_gc_same_repo` this is the final tag's check:
///   the delete and the put both hold the repository exclusively, so the
///   one that took effect last decides, and when one returned before the
///   other started, that order is known;
/// - `a:v1`, there before the race, stays unless deleted.
fn judge(scenario: &[Vec<Op>], records: &[Record], seen: &Observed) -> Result<(), String> {
    let acknowledged = |pred: &dyn Fn(Op) -> bool| {
        records
            .iter()
            .filter(move |r| r.done() && pred(r.op))
            .collect::<Vec<_>>()
    };
    for rec in records {
        if !explained(scenario, rec.thread, rec.index, &rec.outcome) {
            return Err(format!(
                "{:?} answered {:?}, which no race in this scenario explains",
                rec.op, rec.outcome
            ));
        }
        if !rec.done() {
            continue;
        }
        if let Op::PutManifest(r, t, _) = rec.op {
            let undone = acknowledged(&|o| o == Op::DeleteManifest(r, t))
                .iter()
                .any(|d| d.may_follow(rec));
            if !undone && !seen.tagged(r, t) {
                return Err(format!("acknowledged {:?} is gone", rec.op));
            }
        }
        if let Op::DeleteManifest(r, t) = rec.op {
            let redone =
                acknowledged(&|o| matches!(o, Op::PutManifest(pr, pt, _) if (pr, pt) == (r, t)))
                    .iter()
                    .any(|p| p.may_follow(rec));
            if !redone && seen.tagged(r, t) {
                return Err(format!(
                    "acknowledged {:?} did not take effect: {r}:{t} is still there",
                    rec.op
                ));
            }
        }
        if let Some((r, b)) = rec.op.adds() {
            let undone =
                acknowledged(&|o| o.may_remove(r, b) && !matches!(o, Op::GcRepoPastDelay(_)))
                    .iter()
                    .any(|d| d.may_follow(rec));
            if !undone && seen.blobs[&(r, b)].as_ref() != Some(&b.bytes()) {
                return Err(format!("acknowledged {:?} lost its bytes", rec.op));
            }
        }
        if let Op::DeleteBlob(r, b) = rec.op {
            let redone = acknowledged(&|o| o.adds() == Some((r, b)))
                .iter()
                .any(|a| a.may_follow(rec));
            if !redone && seen.holds(r, b) {
                return Err(format!(
                    "acknowledged {:?} did not take effect: {r} still serves {b:?}",
                    rec.op
                ));
            }
        }
    }
    // `a:v1` was there before the race: only its own deletion may remove it.
    let deleted = acknowledged(&|o| o == Op::DeleteManifest("a", "v1"));
    if deleted.is_empty() && !seen.tagged("a", "v1") {
        return Err("a:v1 vanished".into());
    }
    Ok(())
}

// --------------------------------------------------------------- the models

/// Runs `threads` (each a sequence of operations) concurrently from the
/// world, under every interleaving loom explores; reports how many and how
/// long it took.
fn model(name: &str, kind: Kind, policy: LockPolicy, threads: &[&[Op]]) {
    let scenario: Vec<Vec<Op>> = threads.iter().map(|t| t.to_vec()).collect();
    let explored = Arc::new(AtomicUsize::new(0));
    let counter = explored.clone();
    let started = Instant::now();
    loom::model(move || {
        counter.fetch_add(1, Ordering::Relaxed);
        let s = world(kind, policy);
        let old = legacy_source(policy);
        // Bookkeeping, not modelled: see `Record`.
        let clock = Arc::new(AtomicUsize::new(0));
        let (last, others) = scenario.split_last().unwrap();
        let handles: Vec<_> = others
            .iter()
            .enumerate()
            .map(|(thread, ops)| {
                let (s, old, ops, clock) = (s.clone(), old.clone(), ops.clone(), clock.clone());
                loom::thread::spawn(move || run_thread(thread, &ops, &s, &old, &clock))
            })
            .collect();
        let mut records = run_thread(others.len(), last, &s, &old, &clock);
        for h in handles {
            records.extend(h.join().unwrap());
        }
        check(&s, &scenario, &records);
    });
    let n = explored.load(Ordering::Relaxed);
    eprintln!(
        "loom: {name} [{kind:?}/{policy}]: {n} interleavings in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        n > 1,
        "loom explored a single interleaving: nothing was modelled"
    );
}

/// One test per scenario and policy.
macro_rules! models {
    ($($name:ident: [$($thread:expr),+ $(,)?];)+) => {
        models!(@kind Kind::Blobstore; $($name: [$($thread),+];)+);
    };
    (@kind $kind:expr; $($name:ident: [$($thread:expr),+ $(,)?];)+) => {
        mod split {
            use super::*;
            $(#[test] fn $name() { model(stringify!($name), $kind, LockPolicy::Split, &[$(&$thread),+]); })+
        }
        mod striped {
            use super::*;
            $(#[test] fn $name() { model(stringify!($name), $kind, LockPolicy::Striped, &[$(&$thread),+]); })+
        }
        mod global {
            use super::*;
            $(#[test] fn $name() { model(stringify!($name), $kind, LockPolicy::Global, &[$(&$thread),+]); })+
        }
    };
}

use Blob::*;
use Op::*;

models! {
    // Pairs. Same digest: the sweep's re-check keeps what an upload or a
    // push revives (mutations b and c break these).
    upload_vs_sweep_same_digest: [[Upload("b", Orphan)], [Sweep]];
    push_vs_sweep_same_digest: [[Push("b", Orphan)], [Sweep]];
    upload_vs_sweep_different_digests: [[Upload("b", Fresh)], [Sweep]];
    // Same repo, same digest: an insert against a removal (mutation a
    // deadlocks here).
    mount_vs_delete_blob_same_repo: [[Mount { from: "a", to: "b", blob: Layer }], [DeleteBlob("b", Layer)]];
    // A manifest against GC of its repository: either GC wins and the put
    // is refused, or the put wins and GC keeps its blobs.
    put_manifest_vs_gc_repo_same_repo: [[Push("b", Config1), PutManifest("b", "v1", Image::One)], [GcRepo("b")]];
    delete_manifest_vs_gc_repo_same_repo: [[DeleteManifest("a", "v1")], [GcRepo("a")]];
    // Different repos, same digest: manifests sharing a layer.
    put_manifest_vs_put_manifest_different_repos: [[Push("b", Config1), PutManifest("b", "v1", Image::One)], [PutManifest("a", "v2", Image::One)]];
    delete_blob_vs_sweep_different_repos: [[DeleteBlob("b", Layer)], [Sweep]];
    // The fan-in: one new digest into two repositories at once.
    upload_vs_upload_fan_in: [[Upload("a", Fresh)], [Upload("b", Fresh)]];
    // A migration step deduplicating into a layer whose holders change.
    migrate_step_vs_sweep: [[MigrateStep], [Sweep]];
    migrate_step_vs_gc_repo: [[MigrateStep], [DeleteManifest("a", "v1"), GcRepo("a")]];
    // Triples.
    revive_orphan_vs_mount_vs_sweep: [[Upload("b", Orphan)], [Mount { from: "b", to: "a", blob: Orphan }], [Sweep]];
    retag_vs_delete_vs_gc_same_repo: [[DeleteManifest("a", "v1")], [GcRepo("a")], [PutManifest("a", "v1", Image::One)]];
    delete_blob_vs_gc_repo_vs_sweep: [[DeleteBlob("b", Layer)], [GcRepo("a")], [Sweep]];
    // The delay contract: a blob GC marked long ago, pushed again while a
    // pass with a delay runs. The push restarts its age, so whichever goes
    // first, the acknowledged push keeps its bytes (mutation d breaks this).
    repush_vs_gc_past_delay: [[Push("b", Layer)], [GcRepoPastDelay("b")]];
    revive_with_manifest_vs_gc_vs_sweep: [[Push("b", Orphan), Push("b", Config2), PutManifest("b", "r", Image::Revive)], [GcRepo("b")], [Sweep]];
    migrate_step_vs_upload_vs_sweep: [[MigrateStep], [Upload("b", Orphan)], [Sweep]];
}

/// The legacy layout, where a read follows a marker to another
/// repository's original, and the original's removal promotes a marker;
/// and where a repeated push re-links a duplicate. Readers take no digest
/// lock under `striped`, so a read may meet either half-way, and must
/// still be served (found by `gc_races_pushes_every_policy`, about 1 run in
/// 10, before the fix in `layout/legacy.rs`).
mod legacy_markers {
    use super::*;

    models! {
        @kind Kind::LegacyMarkers;
        pull_vs_delete_original: [[Pull("b", Layer)], [DeleteManifest("a", "v1"), DeleteBlob("a", Layer)]];
        pull_vs_gc_of_original: [[Pull("b", Layer)], [DeleteManifest("a", "v1"), GcRepo("a")]];
        pull_vs_push_same_repo: [[Pull("b", Layer)], [Push("b", Layer)]];
    }
}

mod legacy_links {
    use super::*;

    models! {
        @kind Kind::LegacyLinks;
        pull_vs_gc_of_original: [[Pull("b", Layer)], [DeleteManifest("a", "v1"), GcRepo("a")]];
        pull_vs_push_same_repo: [[Pull("b", Layer)], [Push("b", Layer)]];
    }
}

// ------------------------------------------------------ the checker can fail

/// [`judge`] is plain code: these run it outside loom on fabricated
/// answers and states, to show that each stricter check fails when it
/// should and passes when the order allows it.
mod checker_can_fail {
    use super::*;

    fn rec(thread: usize, op: Op, outcome: Outcome, start: usize, end: usize) -> Record {
        Record {
            op,
            outcome,
            thread,
            index: 0,
            start,
            end,
        }
    }

    fn seen(
        tags: &[(&'static str, &'static str, bool)],
        blobs: &[(&'static str, Blob, bool)],
    ) -> Observed {
        Observed {
            tags: tags.iter().map(|&(r, t, there)| ((r, t), there)).collect(),
            blobs: blobs
                .iter()
                .map(|&(r, b, there)| ((r, b), there.then(|| b.bytes())))
                .collect(),
        }
    }

    fn blob_unknown(r: &str, b: Blob) -> Outcome {
        Outcome::Refused(StoreError::BlobUnknown {
            repo: r.into(),
            digest: b.digest(),
        })
    }

    #[test]
    fn an_acknowledged_blob_delete_must_take_effect() {
        let scenario = vec![vec![DeleteBlob("b", Layer)], vec![Sweep]];
        let records = [
            rec(0, DeleteBlob("b", Layer), Outcome::Done, 0, 1),
            rec(1, Sweep, Outcome::Done, 2, 3),
        ];
        let gone = seen(&[("a", "v1", true)], &[("b", Layer, false)]);
        assert_eq!(judge(&scenario, &records, &gone), Ok(()));
        let still_there = seen(&[("a", "v1", true)], &[("b", Layer, true)]);
        let why = judge(&scenario, &records, &still_there).unwrap_err();
        assert!(why.contains("did not take effect"), "{why}");
    }

    #[test]
    fn a_blob_delete_is_undone_only_by_an_addition_that_may_follow_it() {
        let scenario = vec![
            vec![Mount {
                from: "a",
                to: "b",
                blob: Layer,
            }],
            vec![DeleteBlob("b", Layer)],
        ];
        let mount = |start, end| {
            rec(
                0,
                Mount {
                    from: "a",
                    to: "b",
                    blob: Layer,
                },
                Outcome::Done,
                start,
                end,
            )
        };
        let delete = |start, end| rec(1, DeleteBlob("b", Layer), Outcome::Done, start, end);
        let held = seen(&[("a", "v1", true)], &[("b", Layer, true)]);
        let gone = seen(&[("a", "v1", true)], &[("b", Layer, false)]);
        // The mount returned before the delete started: the delete decides.
        let before = [mount(0, 1), delete(2, 3)];
        assert_eq!(judge(&scenario, &before, &gone), Ok(()));
        let why = judge(&scenario, &before, &held).unwrap_err();
        assert!(
            why.contains("DeleteBlob") && why.contains("did not take effect"),
            "{why}"
        );
        // The delete returned before the mount started: the mount decides.
        let after = [delete(0, 1), mount(2, 3)];
        assert_eq!(judge(&scenario, &after, &held), Ok(()));
        let why = judge(&scenario, &after, &gone).unwrap_err();
        assert!(why.contains("lost its bytes"), "{why}");
        // Overlapping calls: either order is a linearisation.
        let overlap = [delete(0, 3), mount(1, 2)];
        assert_eq!(judge(&scenario, &overlap, &held), Ok(()));
        assert_eq!(judge(&scenario, &overlap, &gone), Ok(()));
    }

    #[test]
    fn the_final_tag_follows_the_order_of_retag_and_delete() {
        let scenario = vec![
            vec![DeleteManifest("a", "v1")],
            vec![GcRepo("a")],
            vec![PutManifest("a", "v1", Image::One)],
        ];
        let delete = |start, end| rec(0, DeleteManifest("a", "v1"), Outcome::Done, start, end);
        let gc = || rec(1, GcRepo("a"), Outcome::Done, 10, 11);
        let put = |start, end| {
            rec(
                2,
                PutManifest("a", "v1", Image::One),
                Outcome::Done,
                start,
                end,
            )
        };
        let tagged = seen(&[("a", "v1", true)], &[]);
        let untagged = seen(&[("a", "v1", false)], &[]);
        // The put, then the delete: no tag.
        let put_first = [put(0, 1), delete(2, 3), gc()];
        assert_eq!(judge(&scenario, &put_first, &untagged), Ok(()));
        let why = judge(&scenario, &put_first, &tagged).unwrap_err();
        assert!(why.contains("did not take effect"), "{why}");
        // The delete, then the put: tagged.
        let delete_first = [delete(0, 1), put(2, 3), gc()];
        assert_eq!(judge(&scenario, &delete_first, &tagged), Ok(()));
        let why = judge(&scenario, &delete_first, &untagged).unwrap_err();
        assert!(why.contains("is gone"), "{why}");
        // Overlapping: either.
        let overlap = [delete(0, 3), put(1, 2), gc()];
        assert_eq!(judge(&scenario, &overlap, &tagged), Ok(()));
        assert_eq!(judge(&scenario, &overlap, &untagged), Ok(()));
    }

    #[test]
    fn a_refusal_must_be_one_the_scenario_can_cause() {
        // Nothing in this scenario takes Layer out of `b`.
        let scenario = vec![vec![DeleteBlob("b", Layer)], vec![Sweep]];
        let records = [
            rec(0, DeleteBlob("b", Layer), blob_unknown("b", Layer), 0, 1),
            rec(1, Sweep, Outcome::Done, 2, 3),
        ];
        let state = seen(&[("a", "v1", true)], &[("b", Layer, true)]);
        let why = judge(&scenario, &records, &state).unwrap_err();
        assert!(why.contains("no race in this scenario explains"), "{why}");
        // Nor can a GC pass untag `a:v1` before its delete.
        let scenario = vec![vec![DeleteManifest("a", "v1")], vec![GcRepo("a")]];
        let unknown = Outcome::Refused(StoreError::ManifestUnknown {
            repo: "a".into(),
            reference: "v1".into(),
        });
        let records = [
            rec(0, DeleteManifest("a", "v1"), unknown, 0, 1),
            rec(1, GcRepo("a"), Outcome::Done, 2, 3),
        ];
        let state = seen(&[("a", "v1", true)], &[]);
        assert!(judge(&scenario, &records, &state).is_err());
        // A put whose blobs nothing removes cannot miss one; with a GC pass
        // over its repository it can.
        let blob_gone = || {
            Outcome::Refused(StoreError::ManifestBlobUnknown {
                repo: "b".into(),
                digest: Config1.digest(),
            })
        };
        let put = PutManifest("b", "v1", Image::One);
        let state = seen(
            &[("a", "v1", true), ("b", "v1", false)],
            &[("b", Config1, true)],
        );
        for (other, explained) in [(Sweep, false), (GcRepo("b"), true)] {
            let scenario = vec![vec![Push("b", Config1), put], vec![other]];
            let records = [
                rec(0, Push("b", Config1), Outcome::Done, 0, 1),
                Record {
                    index: 1,
                    ..rec(0, put, blob_gone(), 2, 3)
                },
                rec(1, other, Outcome::Done, 4, 5),
            ];
            let verdict = judge(&scenario, &records, &state);
            assert_eq!(verdict.is_ok(), explained, "{other:?}: {verdict:?}");
        }
    }
}

// ------------------------------------------------------------ the fairness

/// Takes a repository's lock for reading, then again while still holding
/// it, as a careless nested call would; another thread asks to write. With
/// tokio's FIFO fairness the writer queues behind the first read and the
/// nested read queues behind the writer: a deadlock loom must find.
/// Run only as a child of `fair_lock_finds_nested_read_behind_queued_writer`.
#[test]
#[ignore = "deadlocks by design; run by the test below as a child process"]
fn nested_read_behind_queued_writer() {
    loom::model(|| {
        let locks = Arc::new(LockManager::new(LockPolicy::Striped));
        let writer = {
            let locks = locks.clone();
            loom::thread::spawn(move || {
                drop(block_on(locks.acquire(&Intent::repo_write(&repo("a")))));
            })
        };
        let outer = block_on(locks.acquire(&Intent::repo_read(&repo("a"))));
        let nested = block_on(locks.acquire(&Intent::repo_read(&repo("a"))));
        drop((nested, outer));
        writer.join().unwrap();
    });
}

/// Runs one test of `exe` in a child process (loom aborts the whole process
/// on a deadlock); returns whether it passed, and its output.
fn run_child(exe: &std::path::Path, test: &str, ignored: bool) -> (bool, String) {
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["--exact", test, "--nocapture", "--test-threads=1"]);
    if ignored {
        cmd.arg("--ignored");
    }
    let out = cmd.output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// The checks below run children; a child must not run them again.
fn is_child() -> bool {
    std::env::var_os("OCISTORE_LOOM_CHILD").is_some()
}

#[test]
fn fair_lock_finds_nested_read_behind_queued_writer() {
    if is_child() {
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let (passed, out) = run_child(&exe, "nested_read_behind_queued_writer", true);
    assert!(!passed, "the nested read was not caught:\n{out}");
    assert!(
        out.contains("deadlock"),
        "failed, but not with loom's deadlock report:\n{out}"
    );
}

// -------------------------------------------------------- the mutations

/// Builds this suite with one known bug injected (`OCISTORE_MUTATION`, in
/// its own target directory) and runs each of its tests in a child process;
/// returns the failed tests with their output.
fn run_mutated(mutation: &str) -> BTreeMap<String, String> {
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let target = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/loom-mutations");
    let build =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args([
                "test",
                "--release",
                "--no-run",
                "--message-format=json",
                "--manifest-path",
                manifest,
            ])
            .args(["--test", "loom", "--target-dir", target])
            .env("RUSTFLAGS", "--cfg loom")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env("OCISTORE_MUTATION", mutation)
            .stderr(std::process::Stdio::inherit())
            .output()
            .unwrap();
    assert!(build.status.success(), "the mutated suite did not build");
    let exe = String::from_utf8_lossy(&build.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["target"]["name"] == "loom" && v["executable"].is_string())
        .map(|v| std::path::PathBuf::from(v["executable"].as_str().unwrap()))
        .expect("cargo named no loom test executable");
    let listed = std::process::Command::new(&exe)
        .arg("--list")
        .output()
        .unwrap();
    let tests: Vec<String> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter_map(|l| l.strip_suffix(": test"))
        .map(str::to_owned)
        .collect();
    assert!(
        tests.len() > 40,
        "the mutated build lists {} tests",
        tests.len()
    );
    let mut failed = BTreeMap::new();
    for test in tests {
        let mut child = std::process::Command::new(&exe);
        child
            .args(["--exact", &test, "--nocapture", "--test-threads=1"])
            .env("OCISTORE_LOOM_CHILD", "1")
            .env("OCISTORE_MUTATION", mutation)
            // Bound 2 finds all three; a longer run's bound would only
            // lengthen the models the mutation does not touch.
            .env("LOOM_MAX_PREEMPTIONS", "2");
        let out = child.output().unwrap();
        if !out.status.success() {
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            failed.insert(test, text);
        }
    }
    failed
}

/// (a) an inverted acquisition order deadlocks an insert against a removal;
/// (b) a sweep without its final re-check deletes bytes a push revived;
/// (c) a dedupe check released before its insert lets the sweep in between;
/// (d) a GC removal that trusts its analysis, not the mark re-read under
/// the removal's lock, takes a blob a client pushed again meanwhile.
/// Each must fail the scenarios that exercise it, with loom's report.
#[test]
fn mutations_are_caught() {
    if is_child() {
        // In a mutated child: prove the build flag took effect.
        let expected = std::env::var("OCISTORE_MUTATION").ok();
        assert_eq!(
            engine::INJECTED_MUTATION,
            expected.as_deref(),
            "the build flag did not take effect"
        );
        return;
    }
    if let Some(m) = engine::INJECTED_MUTATION {
        panic!("this build injects {m}; the mutation checks run from a clean build");
    }
    // Each mutation fails exactly these models (what one run measured; the
    // table in docs/loom.md), the first one under its last policy with
    // this report.
    const ALL: &[&str] = &["global", "split", "striped"];
    const LOCKED: &[&str] = &["split", "striped"];
    type Expected = (
        &'static str,
        &'static [(&'static [&'static str], &'static str)],
        &'static str,
    );
    let cases: [Expected; 4] = [
        (
            "inverted_order",
            &[
                (LOCKED, "mount_vs_delete_blob_same_repo"),
                (LOCKED, "repush_vs_gc_past_delay"),
                (&["split"], "put_manifest_vs_gc_repo_same_repo"),
                (&["split"], "revive_with_manifest_vs_gc_vs_sweep"),
            ],
            "deadlock",
        ),
        (
            "sweep_without_recheck",
            &[
                (ALL, "upload_vs_sweep_same_digest"),
                (ALL, "push_vs_sweep_same_digest"),
                (ALL, "revive_orphan_vs_mount_vs_sweep"),
                (ALL, "revive_with_manifest_vs_gc_vs_sweep"),
                (ALL, "migrate_step_vs_upload_vs_sweep"),
                // GC with delay 0 sweeps a copy as its last holder goes,
                // under the removal's plan: the re-check guards that too.
                (ALL, "delete_manifest_vs_gc_repo_same_repo"),
                (ALL, "put_manifest_vs_gc_repo_same_repo"),
                (ALL, "retag_vs_delete_vs_gc_same_repo"),
                (ALL, "migrate_step_vs_gc_repo"),
            ],
            "reference truth broken",
        ),
        (
            "split_dedupe",
            &[
                (ALL, "push_vs_sweep_same_digest"),
                (ALL, "revive_with_manifest_vs_gc_vs_sweep"),
                (ALL, "repush_vs_gc_past_delay"),
                // The migration's push lands in the split; GC's delay-0
                // sweep deletes the bytes it then references.
                (ALL, "migrate_step_vs_gc_repo"),
            ],
            "reference truth broken",
        ),
        (
            "gc_without_touch_recheck",
            &[(ALL, "repush_vs_gc_past_delay")],
            "lost its bytes",
        ),
    ];
    for (mutation, models, report) in cases {
        let started = Instant::now();
        let failed = run_mutated(mutation);
        eprintln!(
            "mutation {mutation}: {} tests failed ({:.0} s): {:?}",
            failed.len(),
            started.elapsed().as_secs_f64(),
            failed.keys().collect::<Vec<_>>()
        );
        assert!(
            !failed.contains_key("mutations_are_caught"),
            "the build does not inject {mutation}: {:?}",
            failed.get("mutations_are_caught")
        );
        let expected: std::collections::BTreeSet<String> = models
            .iter()
            .flat_map(|(policies, model)| policies.iter().map(move |p| format!("{p}::{model}")))
            .collect();
        let got: std::collections::BTreeSet<String> = failed.keys().cloned().collect();
        assert_eq!(
            got, expected,
            "mutation {mutation}: the models that fail are not the ones docs/loom.md lists"
        );
        let (policies, model) = models[0];
        let first = format!("{}::{model}", policies[policies.len() - 1]);
        assert!(
            failed[&first].contains(report),
            "mutation {mutation}: {first} failed without {report:?}:\n{}",
            failed[&first]
        );
    }
}
