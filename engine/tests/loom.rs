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
        let [config, layer] = self.blobs();
        let desc = |mt: &str, b: Blob| {
            format!(
                r#"{{"mediaType":"{mt}","digest":"{}","size":{}}}"#,
                b.digest(),
                b.bytes().len()
            )
        };
        Bytes::from(format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{},"layers":[{}]}}"#,
            media::OCI_MANIFEST,
            desc(media::OCI_CONFIG, config),
            desc(media::OCI_LAYER, layer)
        ))
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

    /// Errors a race may legitimately cause; anything else is a failure.
    fn may_refuse(self, e: &StoreError) -> bool {
        match self {
            // Its blobs were removed first (GC with delay 0, delete blob).
            Op::PutManifest(..) => matches!(e, StoreError::ManifestBlobUnknown { .. }),
            Op::DeleteManifest(..) => matches!(e, StoreError::ManifestUnknown { .. }),
            // Already gone, or referenced by a manifest put first.
            Op::DeleteBlob(..) => {
                matches!(
                    e,
                    StoreError::BlobUnknown { .. } | StoreError::Denied { .. }
                )
            }
            _ => false,
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
}

// ------------------------------------------------------------- the checker

/// DESIGN §9 after every interleaving: the reference truth (fsck), no blob
/// lost from a manifest a repository still lists, no stub served, and every
/// acknowledged change still visible unless the scenario itself undoes it.
fn check(s: &Store, scenario: &[Vec<Op>], outcomes: &[(Op, Outcome)]) {
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

    let ops = || scenario.iter().flatten();
    for (op, outcome) in outcomes {
        match outcome {
            Outcome::Refused(e) => {
                let removed =
                    |r, b| ops().any(|o| *o == Op::DeleteBlob(r, b) || *o == Op::GcRepo(r));
                let pull_of_removed = matches!(op, Op::Pull(r, b) if removed(r, *b));
                assert!(op.may_refuse(e) || pull_of_removed, "{op:?} failed: {e}");
            }
            Outcome::NoEffect => {}
            Outcome::Done => {
                if let Op::PutManifest(r, t, _) = op {
                    let undone = ops().any(|o| *o == Op::DeleteManifest(r, t));
                    let listed = block_on(s.get_manifest(&repo(r), &tag(t))).is_ok();
                    assert!(undone || listed, "acknowledged {op:?} is gone");
                }
                if let Some((r, b)) = op.adds() {
                    let undone = ops().any(|o| *o == Op::DeleteBlob(r, b) || *o == Op::GcRepo(r));
                    if !undone {
                        let got = block_on(s.get_blob(&repo(r), &b.digest()));
                        assert_eq!(
                            got.ok(),
                            Some(b.bytes()),
                            "acknowledged {op:?} lost its bytes"
                        );
                    }
                }
            }
        }
    }
    // `a:v1` was there before the race: only its own deletion may remove it.
    if !ops().any(|o| *o == Op::DeleteManifest("a", "v1")) {
        assert!(
            block_on(s.get_manifest(&repo("a"), &tag("v1"))).is_ok(),
            "a:v1 vanished"
        );
    }
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
        let (last, others) = scenario.split_last().unwrap();
        let handles: Vec<_> = others
            .iter()
            .map(|ops| {
                let (s, old, ops) = (s.clone(), old.clone(), ops.clone());
                loom::thread::spawn(move || {
                    ops.iter()
                        .map(|op| (*op, op.run(&s, &old)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut outcomes: Vec<(Op, Outcome)> =
            last.iter().map(|op| (*op, op.run(&s, &old))).collect();
        for h in handles {
            outcomes.extend(h.join().unwrap());
        }
        check(&s, &scenario, &outcomes);
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
    let cases: [(&str, &[&str], &str); 4] = [
        (
            "inverted_order",
            &[
                "striped::mount_vs_delete_blob_same_repo",
                "split::mount_vs_delete_blob_same_repo",
            ],
            "deadlock",
        ),
        (
            "sweep_without_recheck",
            &[
                "striped::upload_vs_sweep_same_digest",
                "split::upload_vs_sweep_same_digest",
            ],
            "reference truth broken",
        ),
        (
            "split_dedupe",
            &[
                "striped::push_vs_sweep_same_digest",
                "split::push_vs_sweep_same_digest",
            ],
            "reference truth broken",
        ),
        (
            "gc_without_touch_recheck",
            &[
                "striped::repush_vs_gc_past_delay",
                "split::repush_vs_gc_past_delay",
                "global::repush_vs_gc_past_delay",
            ],
            "lost its bytes",
        ),
    ];
    for (mutation, must_fail, report) in cases {
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
        for test in must_fail {
            let out = failed
                .get(*test)
                .unwrap_or_else(|| panic!("mutation {mutation}: {test} did not fail"));
            assert!(
                out.contains(report),
                "mutation {mutation}: {test} failed without {report:?}:\n{out}"
            );
        }
    }
}
