//! Mixed concurrent traffic on the real multi-thread runtime, every policy
//! and layout: 40 tasks x 25 iterations of push / check / mount / delete /
//! manifest push across 5 repositories and 6 shared digests. It must finish,
//! fail only with the errors each operation may legitimately return, succeed
//! often enough per kind of operation, keep every acknowledged tag (its
//! manifest and every blob, byte for byte), leave fsck clean, and leave no
//! lock behind.
//!
//! The checker is [`check`]; broken drivers show it can fail.

mod common;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use engine::driver::{Driver, DriverError, DriverPath, DriverResult, PutMode};
use engine::oci::media;
use engine::{ErrorCode, LayoutKind, LockPolicy, Reference, RepoName, StoreError};

const TASKS: u64 = 40;
const ITERATIONS: u64 = 25;
const REPOS: u64 = 5;
/// Digests every task pushes, mounts, checks and deletes...
const SHARED: u64 = 6;
/// ...the first of which are also the layers of every image: deletes of
/// these race manifest pushes (and are mostly refused), deletes of the
/// others mostly succeed.
const LAYERS: u64 = 3;

/// Every kind of operation must succeed at least once in this many
/// attempts (a real run: deletes about one in three, the others more often;
/// a store that refuses everything, with errors that each look legitimate,
/// never).
const MIN_SUCCESS_ONE_IN: u64 = 8;

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Op {
    Push,
    Stat,
    Mount,
    Delete,
    Manifest,
}

impl Op {
    const ALL: [Op; 5] = [Op::Push, Op::Stat, Op::Mount, Op::Delete, Op::Manifest];

    /// The errors this operation may return under this traffic, and why.
    fn allowed(self) -> &'static [ErrorCode] {
        match self {
            // Creates the repository if needed; nothing can refuse it.
            Op::Push => &[],
            // The repository or the blob may not exist (yet, or any more).
            Op::Stat => &[ErrorCode::NameUnknown, ErrorCode::BlobUnknown],
            // A missing source is `Ok(false)`, not an error.
            Op::Mount => &[],
            // Absent, or referenced by a manifest of the repository.
            Op::Delete => &[
                ErrorCode::NameUnknown,
                ErrorCode::BlobUnknown,
                ErrorCode::Denied,
            ],
            // A concurrent delete may remove a layer between its push and
            // the manifest.
            Op::Manifest => &[ErrorCode::ManifestBlobUnknown],
        }
    }
}

/// A tag write the store acknowledged: each tag has one writer, once.
struct AckedTag {
    repo: RepoName,
    tag: String,
    image: Image,
}

/// What the tasks of one run saw.
#[derive(Default)]
struct Log {
    attempts: BTreeMap<Op, u64>,
    successes: BTreeMap<Op, u64>,
    tags: Vec<AckedTag>,
    problems: Vec<String>,
}

impl Log {
    fn merge(&mut self, other: Log) {
        for (op, n) in other.attempts {
            *self.attempts.entry(op).or_default() += n;
        }
        for (op, n) in other.successes {
            *self.successes.entry(op).or_default() += n;
        }
        self.tags.extend(other.tags);
        self.problems.extend(other.problems);
    }

    fn record(&mut self, op: Op, result: Result<bool, StoreError>, context: impl fmt::Display) {
        *self.attempts.entry(op).or_default() += 1;
        match result {
            Ok(true) => *self.successes.entry(op).or_default() += 1,
            Ok(false) => {}
            Err(e) if e.code().is_some_and(|c| op.allowed().contains(&c)) => {}
            Err(e) => self
                .problems
                .push(format!("{context}: {op:?} failed with {e}")),
        }
    }
}

/// The config of task `task`'s `i`-th image: unique, so no later push
/// brings it back if it goes missing.
fn config(task: u64, i: u64) -> (engine::Digest, Bytes) {
    blob(1_000_000 + task * ITERATIONS + i, 50)
}

async fn traffic(h: Arc<Harness>, task: u64) -> Log {
    let s = &h.store;
    let shared: Vec<_> = (0..SHARED)
        .map(|i| blob(500 + i, 2000 + i as usize * 1000))
        .collect();
    let mut rng = Rng(task * 7919 + 1);
    let mut log = Log::default();
    for i in 0..ITERATIONS {
        let at = format!("{} task {task} iteration {i}", h.label);
        let r = repo(&format!("r{}", rng.below(REPOS)));
        let (d, data) = &shared[rng.below(SHARED) as usize];
        match rng.below(6) {
            0 | 1 => {
                let result = s.push_blob(&r, d, data.clone()).await;
                log.record(Op::Push, result.map(|_| true), &at);
            }
            2 => {
                let result = s.stat_blob(&r, d).await;
                log.record(Op::Stat, result.map(|_| true), &at);
            }
            3 => {
                let other = repo(&format!("r{}", rng.below(REPOS)));
                // Success is a mount that happened.
                let result = s.mount_blob(&other, &r, d).await;
                log.record(Op::Mount, result, &at);
            }
            4 => {
                let result = s.delete_blob(&r, d).await;
                log.record(Op::Delete, result.map(|_| true), &at);
            }
            _ => {
                // An image over two shared layers, pushed whole.
                let layers = (0..2)
                    .map(|_| shared[rng.below(LAYERS) as usize].clone())
                    .collect();
                let img = image_with(config(task, i), layers, None, None);
                let mut pushed = true;
                for (bd, bb) in std::iter::once(&img.config).chain(&img.layers) {
                    let result = s.push_blob(&r, bd, bb.clone()).await;
                    pushed &= result.is_ok();
                    log.record(Op::Push, result.map(|_| true), &at);
                }
                if pushed {
                    let tag = format!("t{task}-{i}");
                    let result = s
                        .put_manifest(
                            &r,
                            &Reference::parse(&tag).unwrap(),
                            media::OCI_MANIFEST,
                            img.manifest.clone(),
                        )
                        .await;
                    match &result {
                        Ok(digest) if *digest != img.digest => log.problems.push(format!(
                            "{at}: put_manifest returned {digest}, not {}",
                            img.digest
                        )),
                        Ok(_) => log.tags.push(AckedTag {
                            repo: r.clone(),
                            tag,
                            image: img,
                        }),
                        Err(_) => {}
                    }
                    log.record(Op::Manifest, result.map(|_| true), &at);
                }
            }
        }
    }
    log
}

/// Every acknowledged tag names its manifest, byte for byte, and every blob
/// of it reads back with the pushed bytes; no tag appears that was not
/// acknowledged (tags are never deleted here).
async fn verify_tags(h: &Harness, log: &Log) -> Vec<String> {
    let s = &h.store;
    let mut problems = Vec::new();
    let mut per_repo: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for acked in &log.tags {
        let (r, t, img) = (&acked.repo, &acked.tag, &acked.image);
        per_repo.entry(r.to_string()).or_default().push(t.clone());
        match s.get_manifest(r, &Reference::parse(t).unwrap()).await {
            Ok(m) if m.body == img.manifest && m.digest == img.digest => {}
            Ok(m) => problems.push(format!(
                "{}: acknowledged tag {r}:{t} names {}, not {}",
                h.label, m.digest, img.digest
            )),
            Err(e) => problems.push(format!(
                "{}: acknowledged tag {r}:{t} is lost: {e}",
                h.label
            )),
        }
        for (d, data) in std::iter::once(&img.config).chain(&img.layers) {
            match s.get_blob(r, d).await {
                Ok(got) if got == *data => {}
                Ok(got) => problems.push(format!(
                    "{}: blob {d} of acknowledged tag {r}:{t} reads {} other bytes",
                    h.label,
                    got.len()
                )),
                Err(e) => problems.push(format!(
                    "{}: blob {d} of acknowledged tag {r}:{t} is unreadable: {e}",
                    h.label
                )),
            }
        }
    }
    for r in 0..REPOS {
        let name = format!("r{r}");
        let mut want = per_repo.remove(&name).unwrap_or_default();
        want.sort();
        let mut got: Vec<String> = match s.tags(&repo(&name), None, None).await {
            Ok(tags) => tags.iter().map(|t| t.to_string()).collect(),
            Err(e) if e.code() == Some(ErrorCode::NameUnknown) => Vec::new(),
            Err(e) => {
                problems.push(format!("{}: tags of {name}: {e}", h.label));
                continue;
            }
        };
        got.sort();
        if got != want {
            problems.push(format!(
                "{}: {name} lists tags {got:?}, acknowledged {want:?}",
                h.label
            ));
        }
    }
    problems
}

/// Runs the traffic on `h` and checks everything the module doc promises.
/// Returns the successes per kind, or every problem found.
async fn check(h: Harness) -> Result<BTreeMap<Op, u64>, String> {
    let h = Arc::new(h);
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| tokio::spawn(traffic(h.clone(), t)))
        .collect();
    let mut log = Log::default();
    for t in tasks {
        log.merge(t.await.unwrap_or_else(|e| panic!("{}: {e}", h.label)));
    }
    for op in Op::ALL {
        let ok = log.successes.get(&op).copied().unwrap_or(0);
        let tried = log.attempts.get(&op).copied().unwrap_or(0);
        if ok == 0 || ok * MIN_SUCCESS_ONE_IN < tried {
            log.problems.push(format!(
                "{}: only {ok} of {tried} {op:?} operations succeeded \
                 (at least one in {MIN_SUCCESS_ONE_IN} must)",
                h.label
            ));
        }
    }
    let mut problems = log.problems.clone();
    problems.extend(verify_tags(&h, &log).await);
    match h.store.fsck().await {
        Ok(findings) => {
            let errors: Vec<_> = findings.iter().filter(|f| f.is_error()).collect();
            if !errors.is_empty() {
                problems.push(format!("{}: fsck found {errors:?}", h.label));
            }
        }
        Err(e) => problems.push(format!("{}: fsck failed: {e}", h.label)),
    }
    if h.store.lock_table_sizes() != (0, 0) {
        problems.push(format!("{}: locks left behind", h.label));
    }
    if problems.is_empty() {
        Ok(log.successes)
    } else {
        Err(problems.join("\n"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mixed_traffic_every_policy_and_layout() {
    for layout in [LayoutKind::Legacy, LayoutKind::Blobstore] {
        for policy in LockPolicy::ALL {
            for backend in [Backend::Fs, Backend::ObjectMemory, Backend::Sim] {
                let h = harness(layout, policy, backend).await;
                let label = h.label.clone();
                match check(h).await {
                    Ok(successes) => eprintln!("{label}: successes {successes:?}"),
                    Err(problems) => panic!("{problems}"),
                }
            }
        }
    }
}

/// A store that cannot save a manifest (every rewrite of an index.json
/// fails) must fail the check.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_check_catches_a_store_that_refuses_every_manifest() {
    for layout in [LayoutKind::Legacy, LayoutKind::Blobstore] {
        let h = harness_wrapped(layout, LockPolicy::Striped, Backend::Sim, |d| {
            Arc::new(Broken::new(d, Breakage::RefuseManifests))
        })
        .await;
        let problems = check(h)
            .await
            .expect_err("a store refusing manifests passed");
        assert!(
            problems.contains("Manifest operations succeeded (at least one in"),
            "{layout}: {problems}"
        );
        assert!(
            problems.contains("Manifest failed with"),
            "{layout}: {problems}"
        );
    }
}

/// A store that drops an acknowledged blob (the config of each manifest,
/// once the manifest is saved) must fail the check.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_check_catches_a_store_that_drops_an_acknowledged_blob() {
    for layout in [LayoutKind::Legacy, LayoutKind::Blobstore] {
        let h = harness_wrapped(layout, LockPolicy::Striped, Backend::Sim, |d| {
            Arc::new(Broken::new(d, Breakage::DropConfigs))
        })
        .await;
        let problems = check(h).await.expect_err("a store dropping blobs passed");
        assert!(
            problems.contains("of acknowledged tag") && problems.contains("is unreadable"),
            "{layout}: {problems}"
        );
    }
}

/// How a [`Broken`] driver fails the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Breakage {
    /// Every rewrite of an `index.json` fails (creating one still works):
    /// no manifest can be saved.
    RefuseManifests,
    /// Right after an `index.json` rewrite that added a manifest, the
    /// bytes of that manifest's config are deleted: the client was told
    /// both the config and the manifest are stored.
    DropConfigs,
}

#[derive(Debug)]
struct Broken {
    inner: Arc<dyn Driver>,
    how: Breakage,
}

impl Broken {
    fn new(inner: Arc<dyn Driver>, how: Breakage) -> engine::driver::Intercepted<Broken> {
        engine::driver::Intercepted(Broken { inner, how })
    }

    /// Deletes the config of the manifest `index` (an index.json body of
    /// `repo`) lists last, wherever a layout keeps its bytes.
    async fn drop_config_of_newest(&self, repo: &str, index: &[u8]) -> DriverResult<()> {
        let index: serde_json::Value = serde_json::from_slice(index).expect("index.json parses");
        let Some(row) = index["manifests"].as_array().and_then(|rows| rows.last()) else {
            return Ok(());
        };
        let places = |digest: &str| {
            let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
            [
                DriverPath::new(format!("{repo}/blobs/sha256/{hex}")).unwrap(),
                DriverPath::new(format!("_blobstore/blobs/sha256/{hex}")).unwrap(),
            ]
        };
        for at in places(row["digest"].as_str().expect("row digest")) {
            let Ok(body) = self.inner.get(&at, None).await else {
                continue;
            };
            let manifest: serde_json::Value =
                serde_json::from_slice(&body).expect("manifest parses");
            let config = manifest["config"]["digest"]
                .as_str()
                .expect("config digest");
            for victim in places(config) {
                self.inner.delete(&victim).await?;
            }
            break;
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl engine::driver::Intercept for Broken {
    fn inner(&self) -> &dyn Driver {
        &*self.inner
    }

    fn name(&self) -> &'static str {
        "broken"
    }

    async fn put(&self, path: &DriverPath, data: Bytes, mode: PutMode) -> DriverResult<()> {
        let rewrite = (mode == PutMode::Overwrite)
            .then(|| path.as_str().strip_suffix("/index.json"))
            .flatten();
        match (self.how, rewrite) {
            (Breakage::RefuseManifests, Some(_)) => Err(DriverError::Io {
                driver: "broken",
                op: "put",
                path: path.to_string(),
                source: std::io::Error::other("refusing every index.json rewrite"),
            }),
            (Breakage::DropConfigs, Some(repo)) => {
                self.inner.put(path, data.clone(), mode).await?;
                self.drop_config_of_newest(repo, &data).await
            }
            _ => self.inner.put(path, data, mode).await,
        }
    }
}
