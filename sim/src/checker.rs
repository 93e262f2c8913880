//! The checker: what clients were promised, and whether the store keeps it.
//!
//! It lives outside the engine node, so it survives the node's crashes.
//! Clients tell it about every tag write before they send it (in flight) and
//! after it is acknowledged. After each crash and at the end it reads the
//! store back through the store API:
//!
//! - 1: every acknowledged manifest is readable by its tag with identical
//!   bytes, and so is every blob it references;
//! - 2: each tag shows its last acknowledged value, or the one write that
//!   was in flight when the power went (per-tag last-writer-wins: every tag
//!   has exactly one writing client, so its history is sequential);
//! - 3-6: fsck (reference truth, no membership without bytes, `_blobstore`
//!   hidden, no stubs); after a final quiescent GC with delay 0, no orphans;
//! - 6 also during the run: every byte a pull receives is checked here
//!   again (hashed, or compared with the bytes clients sent under that
//!   digest: see [`Known`]);
//! - 10, while GC runs: after every pass, each blob and manifest a client
//!   touched (pushed, mounted, put) less than `delay` before the pass
//!   ended is still there, and so is everything such a manifest
//!   references (config, layers, an index's children). Nothing in the
//!   workload removes a blob or a manifest by digest but GC, so each one
//!   missing is GC breaking the delay contract.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;

use engine::oci::Manifest;
use engine::store::FindingKind;
use engine::{Digest, ErrorCode, Reference, RepoName, Store, Tag};

/// An acknowledged manifest: what a reader must get back.
#[derive(Debug, Clone)]
pub struct Acked {
    pub digest: Digest,
    pub blobs: Vec<Digest>,
}

/// One write of a tag: its value (`None`: a delete, or the tag's absence
/// before any write), when it was sent and, once acknowledged, when that
/// was. One sequence orders every send and acknowledgement, so "W' was
/// sent after W was acknowledged" is real-time order.
#[derive(Debug, Clone)]
struct TagWrite {
    id: u64,
    value: Option<Acked>,
    sent: u64,
    acked: Option<u64>,
}

/// A tag's writes that may still decide what it shows (invariant 2,
/// linearizable last-writer-wins, any number of writers): a write is
/// superseded once another write, sent after it was acknowledged, is
/// acknowledged too; every other write, in flight or acknowledged, may be
/// the last to have taken effect.
#[derive(Debug, Clone)]
struct TagState {
    writes: Vec<TagWrite>,
    /// Bumped by every change of `writes`: a reader that sees the same
    /// version before and after its read knows no write overlapped it.
    version: u64,
}

impl Default for TagState {
    /// Absent: what a tag shows before its first write.
    fn default() -> TagState {
        TagState {
            writes: vec![TagWrite {
                id: 0,
                value: None,
                sent: 0,
                acked: Some(0),
            }],
            version: 0,
        }
    }
}

impl TagState {
    fn superseded(&self, w: &TagWrite) -> bool {
        w.acked.is_some_and(|done| {
            self.writes
                .iter()
                .any(|o| o.acked.is_some() && o.sent > done)
        })
    }

    /// The writes whose value the tag may show now.
    fn allowed(&self) -> impl Iterator<Item = &TagWrite> {
        self.writes.iter().filter(|w| !self.superseded(w))
    }

    fn may_show(&self, seen: Option<&Digest>) -> bool {
        self.allowed()
            .any(|w| w.value.as_ref().map(|a| &a.digest) == seen)
    }

    fn prune(&mut self) {
        let keep: Vec<TagWrite> = self.allowed().cloned().collect();
        self.writes = keep;
        self.version += 1;
    }
}

/// A tag write in flight, as [`Checker::begin`] handed it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteId(u64);

/// Something a client touched, and when it sent the acknowledging call
/// (the touch happened no earlier: a conservative clock for invariant 10).
#[derive(Debug, Clone)]
struct Touch {
    at: tokio::time::Instant,
    repo: RepoName,
    digest: Digest,
    /// For a manifest: the blobs and the child manifests it references.
    manifest: Option<(Vec<Digest>, Vec<Digest>)>,
}

/// What clients sent, by digest: the bytes, and for a manifest its media
/// type and the blobs it references.
///
/// Checking that served bytes hash to the digest asked for (invariant 6)
/// is most of what the checker costs, and nearly every read serves bytes a
/// client sent. Recorded bytes hash to their digest (the client computed
/// the digest from them), so served bytes equal to them hash to it too:
/// one comparison instead of a hash. Bytes that differ, or were never recorded, are hashed as before,
/// so every verdict is the one hashing alone would give.
#[derive(Debug, Default)]
struct Known {
    bytes: HashMap<Digest, Bytes>,
    /// A manifest's media type and the blobs it references: parsing the
    /// same bytes again gives the same answer.
    manifests: HashMap<Digest, (String, Vec<Digest>)>,
}

#[derive(Debug, Default)]
pub struct Checker {
    known: Mutex<Known>,
    /// By repository, then tag: looked up by `&str` on every pull and tag
    /// write (a `(String, String)` key cost two allocations per lookup),
    /// and iterated in the same (repository, tag) order.
    tags: Mutex<BTreeMap<String, BTreeMap<String, TagState>>>,
    /// The real-time order of tag writes' sends and acknowledgements.
    seq: std::sync::atomic::AtomicU64,
    /// Touches in the order they were acknowledged (virtual time only
    /// moves forward, so the oldest are at the front).
    touches: Mutex<VecDeque<Touch>>,
    /// How many touches invariant 10 has checked at least once.
    touches_checked: std::sync::atomic::AtomicU64,
    /// Whether touches are kept at all (only a GC with a delay makes a
    /// window to check them in).
    keep_touches: bool,
    violations: Mutex<Vec<String>>,
}

fn tag_state<'a>(
    tags: &'a BTreeMap<String, BTreeMap<String, TagState>>,
    repo: &RepoName,
    tag: &str,
) -> Option<&'a TagState> {
    tags.get(repo.as_str())?.get(tag)
}

fn tag_mut<'a>(
    tags: &'a mut BTreeMap<String, BTreeMap<String, TagState>>,
    repo: &RepoName,
    tag: &str,
) -> Option<&'a mut TagState> {
    tags.get_mut(repo.as_str())?.get_mut(tag)
}

fn tag_ref(tag: &str) -> Reference {
    Reference::Tag(Tag::parse(tag).expect("workload tags are valid"))
}

impl Checker {
    /// A checker that also keeps what clients touch, for invariant 10.
    pub fn with_touches() -> Checker {
        Checker {
            keep_touches: true,
            ..Checker::default()
        }
    }

    /// A client sends (or sent) `bytes` under `digest`, computed from them.
    pub fn learn(&self, digest: &Digest, bytes: &Bytes) {
        let mut known = self.known.lock().unwrap();
        if !known.bytes.contains_key(digest) {
            known.bytes.insert(digest.clone(), bytes.clone());
        }
    }

    /// Whether `bytes` hash to `digest` (see [`Known`]).
    pub fn hashes_to(&self, digest: &Digest, bytes: &[u8]) -> bool {
        let known = self.known.lock().unwrap().bytes.get(digest).cloned();
        known.is_some_and(|k| k == bytes) || Digest::of(digest.algorithm(), bytes) == *digest
    }

    /// [`blobs_of`] a manifest whose body hashes to `digest` (the caller
    /// checked), remembered for bytes clients sent.
    pub fn manifest_blobs(&self, media_type: &str, digest: &Digest, body: &[u8]) -> Vec<Digest> {
        let mut known = self.known.lock().unwrap();
        let sent = known.bytes.get(digest).is_some_and(|k| k == body);
        if !sent {
            drop(known);
            return blobs_of(media_type, body);
        }
        if let Some((m, blobs)) = known.manifests.get(digest)
            && m == media_type
        {
            return blobs.clone();
        }
        let blobs = blobs_of(media_type, body);
        known
            .manifests
            .insert(digest.clone(), (media_type.to_owned(), blobs.clone()));
        blobs
    }

    pub fn violation(&self, v: String) {
        self.violations.lock().unwrap().push(v);
    }

    pub fn violations(&self) -> Vec<String> {
        self.violations.lock().unwrap().clone()
    }

    fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1
    }

    /// A client sends a write of `tag` (`None`: a delete).
    pub fn begin(&self, repo: &RepoName, tag: &str, value: Option<Acked>) -> WriteId {
        let sent = self.next_seq();
        let mut tags = self.tags.lock().unwrap();
        if !tags.contains_key(repo.as_str()) {
            tags.insert(repo.to_string(), BTreeMap::new());
        }
        let repo_tags = tags.get_mut(repo.as_str()).expect("inserted above");
        if !repo_tags.contains_key(tag) {
            repo_tags.insert(tag.to_owned(), TagState::default());
        }
        let state = repo_tags.get_mut(tag).expect("inserted above");
        state.writes.push(TagWrite {
            id: sent,
            value,
            sent,
            acked: None,
        });
        state.version += 1;
        WriteId(sent)
    }

    /// The write was acknowledged.
    pub fn ack(&self, repo: &RepoName, tag: &str, id: WriteId) {
        let at = self.next_seq();
        let mut tags = self.tags.lock().unwrap();
        if let Some(state) = tag_mut(&mut tags, repo, tag) {
            if let Some(w) = state.writes.iter_mut().find(|w| w.id == id.0) {
                w.acked = Some(at);
            }
            state.prune();
        }
    }

    /// The write failed with a definite answer: nothing changed.
    pub fn abandon(&self, repo: &RepoName, tag: &str, id: WriteId) {
        let mut tags = self.tags.lock().unwrap();
        if let Some(state) = tag_mut(&mut tags, repo, tag) {
            state.writes.retain(|w| w.id != id.0);
            state.version += 1;
        }
    }

    /// The write failed with `e`. An OCI error is a definite answer
    /// (nothing changed); any other (storage, metadata, locks) may come
    /// after the write took effect (with several instances: index.json
    /// written, then the metadata service did not answer), so the write
    /// stays in flight for good: its value may show or not, as after a
    /// crash.
    pub fn failed(&self, repo: &RepoName, tag: &str, id: WriteId, e: &engine::StoreError) {
        if e.code().is_some() {
            self.abandon(repo, tag, id);
        }
    }

    /// The tag's version (see [`TagState::version`]).
    pub fn tag_version(&self, repo: &RepoName, tag: &str) -> u64 {
        let tags = self.tags.lock().unwrap();
        tag_state(&tags, repo, tag).map_or(0, |s| s.version)
    }

    /// Whether a reader that saw `seen` (`None`: no such tag) may have:
    /// true if a write of the tag began or ended since the read began (at
    /// `version`), else `seen` must be a value the tag may show.
    pub fn may_show(
        &self,
        repo: &RepoName,
        tag: &str,
        version: u64,
        seen: Option<&Digest>,
    ) -> bool {
        let tags = self.tags.lock().unwrap();
        let Some(s) = tag_state(&tags, repo, tag) else {
            return seen.is_none();
        };
        s.version != version || s.may_show(seen)
    }

    /// A tag of `repo` with an acknowledged value (for pulls), chosen by
    /// `pick`, with the latest acknowledged value it may show.
    pub fn acked_tag(
        &self,
        repo: &RepoName,
        pick: impl FnOnce(usize) -> usize,
    ) -> Option<(String, Acked)> {
        let tags = self.tags.lock().unwrap();
        let live: Vec<(&String, &Acked)> = tags
            .get(repo.as_str())
            .into_iter()
            .flatten()
            .filter_map(|(t, s)| {
                s.allowed()
                    .filter(|w| w.acked.is_some())
                    .max_by_key(|w| w.acked)
                    .and_then(|w| w.value.as_ref())
                    .map(|v| (t, v))
            })
            .collect();
        if live.is_empty() {
            return None;
        }
        let (tag, acked) = live[pick(live.len())];
        Some((tag.clone(), acked.clone()))
    }

    /// Reads every tag back (after a crash, or at the end) and settles
    /// in-flight writes to what the store shows.
    ///
    /// The store is at rest here (the node is down, or the clients have
    /// stopped), so a blob read back once in a repository needs no second
    /// read for the next tag that references it there.
    pub async fn verify_tags(&self, store: &Store, when: &str) {
        let mut read_back: HashSet<(String, Digest)> = HashSet::new();
        let snapshot: Vec<_> = self
            .tags
            .lock()
            .unwrap()
            .iter()
            .flat_map(|(repo, tags)| {
                tags.iter()
                    .map(|(tag, state)| ((repo.clone(), tag.clone()), state.clone()))
            })
            .collect();
        for ((repo, tag), state) in snapshot {
            let r = RepoName::parse(&repo).expect("valid");
            let seen = match store.get_manifest(&r, &tag_ref(&tag)).await {
                Ok(m) => {
                    if !self.hashes_to(&m.digest, &m.body) {
                        self.violation(format!(
                            "{when}: {repo}:{tag} served bytes that do not hash to {}",
                            m.digest
                        ));
                    }
                    Some(m.digest)
                }
                Err(e)
                    if matches!(
                        e.code(),
                        Some(ErrorCode::ManifestUnknown | ErrorCode::NameUnknown)
                    ) =>
                {
                    None
                }
                Err(e) => {
                    self.violation(format!("{when}: {repo}:{tag}: {e}"));
                    continue;
                }
            };
            let matching = state
                .allowed()
                .find(|w| w.value.as_ref().map(|a| &a.digest) == seen.as_ref())
                .cloned();
            let Some(matching) = matching else {
                let allowed: Vec<Option<&Digest>> = state
                    .allowed()
                    .map(|w| w.value.as_ref().map(|a| &a.digest))
                    .collect();
                self.violation(format!(
                    "{when}: {repo}:{tag} shows {seen:?}; it may show only {allowed:?} (invariant 1/2)"
                ));
                continue;
            };
            // Settle: what the store shows is now the one acknowledged value.
            if let Some(v) = &matching.value {
                self.verify_manifest(store, &r, v, when, &mut read_back)
                    .await;
            }
            let at = self.next_seq();
            let mut tags = self.tags.lock().unwrap();
            let s = tag_mut(&mut tags, &r, &tag).expect("present");
            s.writes = vec![TagWrite {
                id: at,
                value: matching.value,
                sent: at,
                acked: Some(at),
            }];
            s.version += 1;
        }
    }

    /// Every blob of an acknowledged manifest is there, with its bytes
    /// (those not in `read_back` yet).
    async fn verify_manifest(
        &self,
        store: &Store,
        repo: &RepoName,
        m: &Acked,
        when: &str,
        read_back: &mut HashSet<(String, Digest)>,
    ) {
        for d in &m.blobs {
            if !read_back.insert((repo.to_string(), d.clone())) {
                continue;
            }
            match store.get_blob(repo, d).await {
                Ok(bytes) if self.hashes_to(d, &bytes) => {}
                Ok(_) => self.violation(format!(
                    "{when}: {repo}: blob {d} served wrong bytes (invariant 6)"
                )),
                Err(e) => self.violation(format!(
                    "{when}: {repo}: blob {d} of acknowledged {} lost: {e} (invariant 1)",
                    m.digest
                )),
            }
        }
    }

    /// A client's blob push, finished upload or mount into `repo` was
    /// acknowledged; the call was sent at `sent`.
    pub fn touch_blob(&self, sent: tokio::time::Instant, repo: &RepoName, digest: &Digest) {
        if !self.keep_touches {
            return;
        }
        self.touches.lock().unwrap().push_back(Touch {
            at: sent,
            repo: repo.clone(),
            digest: digest.clone(),
            manifest: None,
        });
    }

    /// A client's manifest put (by tag or digest) was acknowledged.
    pub fn touch_manifest(
        &self,
        sent: tokio::time::Instant,
        repo: &RepoName,
        media_type: &str,
        body: &[u8],
    ) {
        if !self.keep_touches {
            return;
        }
        let (blobs, children) = Manifest::parse(media_type, body)
            .map(|m| {
                (
                    m.blobs().into_iter().map(|b| b.digest.clone()).collect(),
                    m.children().iter().map(|c| c.digest.clone()).collect(),
                )
            })
            .unwrap_or_default();
        self.touches.lock().unwrap().push_back(Touch {
            at: sent,
            repo: repo.clone(),
            digest: Digest::sha256(body),
            manifest: Some((blobs, children)),
        });
    }

    /// How many acknowledged touches invariant 10 has checked.
    pub fn touches_checked(&self) -> u64 {
        self.touches_checked
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Invariant 10 after a GC pass that ended just now: every touch
    /// acknowledged less than `delay` ago is readable, with what it
    /// references. Older touches leave the window for good (a later pass
    /// ends later), so the window stays as small as the delay.
    pub async fn verify_young(&self, store: &Store, delay: Duration, when: &str) {
        let now = tokio::time::Instant::now();
        let young: Vec<Touch> = {
            let mut touches = self.touches.lock().unwrap();
            while touches
                .front()
                .is_some_and(|t| now.duration_since(t.at) >= delay)
            {
                touches.pop_front();
            }
            touches.iter().cloned().collect()
        };
        self.touches_checked
            .fetch_add(young.len() as u64, std::sync::atomic::Ordering::Relaxed);
        let mut blobs_seen: HashSet<(&RepoName, &Digest)> = HashSet::new();
        let mut manifests_seen: HashSet<(&RepoName, &Digest)> = HashSet::new();
        for t in &young {
            // Judged when the failed read's answer came back, not when it
            // was sent nor at the pass's end: the absence it reports held at
            // some moment up to then. A read can wait long (on a lock a
            // paused instance holds, across a network), and GC may rightly
            // remove the item meanwhile, once it left the window: judged at
            // the sending, that was a false violation (several-instances
            // seed 908 at 4a53e4a: a read asked 494 ms after the touch was
            // answered 1.9 s later; GC had removed the manifest 1.37 s
            // after the touch, from a mark written after it).
            let lost = |what: &str, d: &Digest, failed: ReadFailed| {
                let Answered { error, at } = failed else {
                    return;
                };
                let age = at.duration_since(t.at);
                if age < delay {
                    self.violation(format!(
                        "{when}: {repo}: {what} {d} gone {age:?} after a client touched {touched}, inside the delay of {delay:?}: {error} (invariant 10)",
                        repo = t.repo,
                        touched = t.digest,
                    ));
                }
            };
            let mut manifests = Vec::new();
            let mut blobs = Vec::new();
            match &t.manifest {
                Some((refs, children)) => {
                    manifests.push(&t.digest);
                    manifests.extend(children);
                    blobs.extend(refs);
                }
                None => blobs.push(&t.digest),
            }
            for d in manifests {
                if !manifests_seen.insert((&t.repo, d)) {
                    continue;
                }
                let reference = Reference::Digest(d.clone());
                match answered(|| store.get_manifest(&t.repo, &reference)).await {
                    Ok(m)
                        if m.digest.algorithm() == d.algorithm() && self.hashes_to(d, &m.body) => {}
                    Ok(_) => self.violation(format!(
                        "{when}: {}: manifest {d} served wrong bytes (invariant 6)",
                        t.repo
                    )),
                    Err(failed) => lost("manifest", d, failed),
                }
            }
            for d in blobs {
                if !blobs_seen.insert((&t.repo, d)) {
                    continue;
                }
                if let Err(failed) = answered(|| store.stat_blob(&t.repo, d)).await {
                    lost("blob", d, failed);
                }
            }
        }
    }
}

/// Why a read the checker made did not succeed.
enum ReadFailed {
    /// The store answered (not found, corrupt, refused); the answer came
    /// back `at`.
    Answered {
        error: engine::StoreError,
        at: tokio::time::Instant,
    },
    /// The store could not answer in time (several instances: the shared
    /// service unreachable, the locks lost): nothing is known.
    Unanswered,
}
use ReadFailed::{Answered, Unanswered};

/// `read`, tried again while the store cannot answer (a lock or
/// metadata service unavailable), for up to a second of virtual time. One
/// process alone always answers, so this never retries there.
async fn answered<T, F: std::future::Future<Output = engine::StoreResult<T>>>(
    read: impl Fn() -> F,
) -> Result<T, ReadFailed> {
    for _ in 0..20 {
        match read().await {
            Ok(v) => return Ok(v),
            Err(engine::StoreError::Lock(_) | engine::StoreError::Meta(_)) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => {
                let at = tokio::time::Instant::now();
                return Err(Answered { error, at });
            }
        }
    }
    Err(Unanswered)
}

impl Checker {
    /// Invariant 12 after crashes and a quiescent GC with delay 0: every
    /// file on the disk (`files`: path and size) is live content (the
    /// store's configuration and reserve, a repository's own files and the
    /// blobs it holds, their `_blobstore` copies). A temp file, a staged
    /// upload, a removed repository's leftover is reported with its bytes.
    pub async fn verify_no_leaks(&self, store: &Store, files: &BTreeMap<String, u64>, when: &str) {
        let mut live: HashSet<String> = [engine::store::CONFIG_PATH, engine::store::RESERVE_PATH]
            .into_iter()
            .map(str::to_owned)
            .collect();
        let repos = match store.repositories().await {
            Ok(repos) => repos,
            Err(e) => return self.violation(format!("{when}: catalog: {e}")),
        };
        for repo in &repos {
            live.insert(engine::layout::index_json(repo).to_string());
            live.insert(engine::layout::oci_layout(repo).to_string());
            let digests = match store.repo_blobs(repo).await {
                Ok(d) => d,
                Err(e) => return self.violation(format!("{when}: {repo}: {e}")),
            };
            for d in digests {
                live.insert(engine::layout::repo_blob(repo, &d).to_string());
                live.insert(engine::layout::blobstore_blob(&d).to_string());
            }
        }
        let leaked: Vec<(&String, &u64)> = files
            .iter()
            .filter(|(path, _)| !live.contains(*path))
            .collect();
        if !leaked.is_empty() {
            let bytes: u64 = leaked.iter().map(|(_, size)| **size).sum();
            let first: Vec<&str> = leaked.iter().take(5).map(|(p, _)| p.as_str()).collect();
            self.violation(format!(
                "{when}: {} file(s), {bytes} bytes on the disk are no live content, e.g. {first:?} (invariant 12)",
                leaked.len()
            ));
        }
    }

    /// fsck (invariants 3-6); `quiescent_gc`: orphans count too (invariant 4).
    pub async fn fsck(&self, store: &Store, when: &str, quiescent_gc: bool) {
        match store.fsck().await {
            Ok(findings) => {
                for f in findings {
                    if f.is_error() || (quiescent_gc && f.kind == FindingKind::Orphan) {
                        self.violation(format!("{when}: fsck: {f}"));
                    }
                }
            }
            Err(e) => self.violation(format!("{when}: fsck failed: {e}")),
        }
    }
}

/// The blobs a manifest body references (for acknowledgement records).
pub fn blobs_of(media_type: &str, body: &[u8]) -> Vec<Digest> {
    Manifest::parse(media_type, body)
        .map(|m| m.blobs().into_iter().map(|b| b.digest.clone()).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use engine::driver::{SimDisk, SimDriver};
    use engine::meta::MemoryMeta;
    use engine::oci::media;
    use engine::{LayoutKind, LockPolicy, StoreConfig};
    use testkit::oci;

    use super::*;

    /// A blobstore/striped store on `disk`, metadata in memory.
    async fn store_on(disk: Arc<SimDisk>) -> Store {
        let config = StoreConfig {
            layout: LayoutKind::Blobstore,
            policy: LockPolicy::Striped,
        };
        Store::open(
            Arc::new(SimDriver::on(disk)),
            Arc::new(MemoryMeta::new()),
            config,
        )
        .await
        .unwrap()
    }

    /// Invariant 10 speaks too: a blob and a manifest a client touched
    /// inside the delay, removed behind the checker's back, are reported;
    /// the same touches outside the delay are not checked at all.
    #[tokio::test]
    async fn young_touches_removed_are_reported() {
        let store = store_on(SimDisk::new()).await;
        let repo = RepoName::parse("r").unwrap();
        let (orphan, config_blob) = (Bytes::from_static(b"orphan"), Bytes::from_static(b"{}"));
        let (od, cd) = (Digest::sha256(&orphan), Digest::sha256(&config_blob));
        let body = oci::Image::from_descriptors(oci::Desc::new("a/b", cd.clone(), 2), vec![])
            .build()
            .bytes;
        let checker = Checker::with_touches();
        let sent = tokio::time::Instant::now();
        store.push_blob(&repo, &od, orphan).await.unwrap();
        checker.touch_blob(sent, &repo, &od);
        store.push_blob(&repo, &cd, config_blob).await.unwrap();
        let md = store
            .put_manifest(
                &repo,
                &Reference::Digest(Digest::sha256(&body)),
                media::OCI_MANIFEST,
                body.clone(),
            )
            .await
            .unwrap();
        checker.touch_manifest(sent, &repo, media::OCI_MANIFEST, &body);
        let hour = Duration::from_secs(3600);
        checker.verify_young(&store, hour, "clean").await;
        assert!(
            checker.violations().is_empty(),
            "{:?}",
            checker.violations()
        );
        assert_eq!(checker.touches_checked(), 2);

        // Behind the checker's back: the orphan blob and the manifest's config go.
        store
            .driver()
            .delete(&engine::layout::repo_blob(&repo, &od))
            .await
            .unwrap();
        store
            .driver()
            .delete(&engine::layout::repo_blob(&repo, &cd))
            .await
            .unwrap();
        checker.verify_young(&store, hour, "young").await;
        let v = checker.violations();
        assert_eq!(v.len(), 2, "{v:?}");
        assert!(v.iter().all(|v| v.contains("invariant 10")), "{v:?}");
        assert!(v.iter().any(|v| v.contains(&od.to_string())), "{v:?}");
        assert!(
            v.iter()
                .any(|v| v.contains(&cd.to_string()) && v.contains(&md.to_string())),
            "{v:?}"
        );

        // Outside the delay the same touches leave the window.
        checker.verify_young(&store, Duration::ZERO, "old").await;
        assert_eq!(checker.violations().len(), 2);
    }

    /// An absence the store reports after the window closed proves
    /// nothing: it may have begun after the item left the window (a read
    /// can wait long on a lock a paused instance holds). The same removal
    /// answered inside the window is a violation. Judged at the read's
    /// sending, the first was a false violation.
    #[tokio::test]
    async fn an_absence_answered_after_the_window_is_not_judged_young() {
        let per_call = Duration::from_millis(50);
        let slow = engine::driver::Latency::new(
            SimDriver::on(SimDisk::new()),
            engine::driver::LatencyModel::fixed(per_call),
        );
        let config = StoreConfig {
            layout: LayoutKind::Blobstore,
            policy: LockPolicy::Striped,
        };
        let store = Store::open(Arc::new(slow), Arc::new(MemoryMeta::new()), config)
            .await
            .unwrap();
        let repo = RepoName::parse("r").unwrap();
        let blob = Bytes::from_static(b"young");
        let d = Digest::sha256(&blob);
        store.push_blob(&repo, &d, blob).await.unwrap();
        store
            .driver()
            .delete(&engine::layout::repo_blob(&repo, &d))
            .await
            .unwrap();

        // Touched just now; the read that finds it gone takes a call or more.
        let checker = Checker::with_touches();
        checker.touch_blob(tokio::time::Instant::now(), &repo, &d);
        checker.verify_young(&store, per_call / 2, "slow").await;
        assert!(
            checker.violations().is_empty(),
            "{:?}",
            checker.violations()
        );
        assert_eq!(checker.touches_checked(), 1);

        checker.touch_blob(tokio::time::Instant::now(), &repo, &d);
        checker
            .verify_young(&store, Duration::from_secs(3600), "inside")
            .await;
        let v = checker.violations();
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].contains("invariant 10"), "{v:?}");
    }

    /// Learnt bytes spare the hash, never the verdict: bytes that differ
    /// from what was sent under a digest fail, whether or not it was learnt,
    /// and a manifest's blobs come from the bytes served, not the record.
    #[test]
    fn known_bytes_give_the_verdict_hashing_gives() {
        let checker = Checker::default();
        let sent = Bytes::from_static(b"layer bytes");
        let d = Digest::sha256(&sent);
        let flipped = b"layer bytez";
        assert!(checker.hashes_to(&d, &sent) && !checker.hashes_to(&d, flipped));
        checker.learn(&d, &sent);
        assert!(checker.hashes_to(&d, &sent) && !checker.hashes_to(&d, flipped));
        assert!(!checker.hashes_to(&Digest::sha256(b"other"), &sent));

        let layer = (d.clone(), sent.clone());
        let config = (Digest::sha256(b"{}"), Bytes::from_static(b"{}"));
        let body = oci::Image::new(&config, &[layer]).build().bytes;
        let md = Digest::sha256(&body);
        checker.learn(&md, &body);
        let blobs = vec![config.0.clone(), d.clone()];
        for _ in 0..2 {
            assert_eq!(
                checker.manifest_blobs(media::OCI_MANIFEST, &md, &body),
                blobs
            );
        }
        // Other bytes (or another media type) under the same digest are parsed.
        let other = oci::Image::new(&config, &[]).build().bytes;
        assert_eq!(
            checker.manifest_blobs(media::OCI_MANIFEST, &md, &other),
            vec![config.0.clone()]
        );
        assert_eq!(checker.manifest_blobs("text/plain", &md, &body), vec![]);
    }

    /// Several writers on one tag (invariant 2): overlapping writes may
    /// land in either order, but a write acknowledged before another was
    /// sent can never show once that other is acknowledged.
    #[test]
    fn concurrent_writers_follow_last_writer_wins() {
        let checker = Checker::default();
        let repo = RepoName::parse("r").unwrap();
        let value = |s: &str| Acked {
            digest: Digest::sha256(s.as_bytes()),
            blobs: vec![],
        };
        let (a, b, c) = (value("a"), value("b"), value("c"));
        let shows = |d: Option<&Acked>| {
            let v = checker.tag_version(&repo, "t");
            checker.may_show(&repo, "t", v, d.map(|x| &x.digest))
        };
        assert!(shows(None), "absent before any write");
        let wa = checker.begin(&repo, "t", Some(a.clone()));
        let wb = checker.begin(&repo, "t", Some(b.clone()));
        assert!(shows(None) && shows(Some(&a)) && shows(Some(&b)));
        checker.ack(&repo, "t", wb);
        checker.ack(&repo, "t", wa);
        // Overlapping: either may have been last; the absence may not.
        assert!(shows(Some(&a)) && shows(Some(&b)) && !shows(None));
        // c is sent after both were acknowledged: once it is, only c.
        let wc = checker.begin(&repo, "t", Some(c.clone()));
        assert!(shows(Some(&a)) && shows(Some(&c)));
        checker.ack(&repo, "t", wc);
        assert!(shows(Some(&c)) && !shows(Some(&a)) && !shows(Some(&b)));
        // A delete refused changes nothing.
        let wd = checker.begin(&repo, "t", None);
        assert!(shows(None));
        checker.abandon(&repo, "t", wd);
        assert!(shows(Some(&c)) && !shows(None));
        // A read overlapping a write (its version moved) is not judged.
        let v = checker.tag_version(&repo, "t");
        let we = checker.begin(&repo, "t", None);
        assert!(checker.may_show(&repo, "t", v, Some(&a.digest)));
        checker.ack(&repo, "t", we);
        assert!(shows(None) && !shows(Some(&c)));
    }

    /// Invariant 12 speaks: live content alone passes; a staged upload no
    /// session owns and a `_blobstore` copy no repository holds are leaks.
    #[tokio::test]
    async fn bytes_that_are_no_live_content_are_reported() {
        let disk = SimDisk::new();
        let store = store_on(disk.clone()).await;
        let repo = RepoName::parse("r").unwrap();
        let layer = Bytes::from_static(b"layer");
        store
            .push_blob(&repo, &Digest::sha256(&layer), layer)
            .await
            .unwrap();
        let files = |disk: &SimDisk| -> BTreeMap<String, u64> {
            disk.durable_image()
                .into_iter()
                .map(|(p, b)| (p, b.len() as u64))
                .collect()
        };
        let checker = Checker::default();
        checker
            .verify_no_leaks(&store, &files(&disk), "clean")
            .await;
        assert!(
            checker.violations().is_empty(),
            "{:?}",
            checker.violations()
        );

        let put = |path: &'static str| {
            let store = store.clone();
            async move {
                let p = engine::driver::DriverPath::new(path).unwrap();
                store
                    .driver()
                    .put(
                        &p,
                        Bytes::from_static(b"junk!"),
                        engine::driver::PutMode::Overwrite,
                    )
                    .await
                    .unwrap();
            }
        };
        put("r/.uploads/stale").await;
        put("_blobstore/blobs/sha256/0000000000000000000000000000000000000000000000000000000000000000").await;
        checker
            .verify_no_leaks(&store, &files(&disk), "leaky")
            .await;
        let v = checker.violations();
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(
            v[0].contains("2 file(s), 10 bytes") && v[0].contains("r/.uploads/stale"),
            "{v:?}"
        );
    }

    /// The checker is only worth its silence if it speaks: a tag lost
    /// behind its back, and a blob gone from under an acknowledged manifest,
    /// are both reported.
    #[tokio::test]
    async fn lost_acknowledged_writes_are_reported() {
        let store = store_on(SimDisk::new()).await;
        // One image in two repositories: `r` is read back first each pass.
        let (repo, other) = (RepoName::parse("r").unwrap(), RepoName::parse("s").unwrap());
        let layer = Bytes::from_static(b"layer bytes");
        let (ld, cd) = (Digest::sha256(&layer), Digest::sha256(b"{}"));
        let body = oci::Image::from_descriptors(
            oci::Desc::new("a/b", cd.clone(), 2),
            vec![oci::Desc::new("a/b", ld.clone(), layer.len())],
        )
        .build()
        .bytes;
        let checker = Checker::default();
        for r in [&repo, &other] {
            store.push_blob(r, &ld, layer.clone()).await.unwrap();
            store
                .push_blob(r, &cd, Bytes::from_static(b"{}"))
                .await
                .unwrap();
            let acked = Acked {
                digest: Digest::sha256(&body),
                blobs: blobs_of(media::OCI_MANIFEST, &body),
            };
            let write = checker.begin(r, "v1", Some(acked));
            store
                .put_manifest(r, &tag_ref("v1"), media::OCI_MANIFEST, body.clone())
                .await
                .unwrap();
            checker.ack(r, "v1", write);
        }
        checker.verify_tags(&store, "clean").await;
        assert!(
            checker.violations().is_empty(),
            "{:?}",
            checker.violations()
        );

        // Behind the checker's back: the layer leaves `s` only. Reading it
        // back from `r` in the same pass must not vouch for `s`.
        // (The store itself refuses: a manifest of `s` references it.)
        let link = engine::layout::repo_blob(&other, &ld);
        store.driver().delete(&link).await.unwrap();
        checker.verify_tags(&store, "lost blob").await;
        assert_eq!(checker.violations().len(), 1, "{:?}", checker.violations());
        assert!(
            checker.violations()[0].contains("s: blob") && checker.violations()[0].contains("lost"),
            "{:?}",
            checker.violations()
        );

        // Behind the checker's back: the tag goes.
        store.delete_manifest(&repo, &tag_ref("v1")).await.unwrap();
        checker.verify_tags(&store, "lost tag").await;
        let v = checker.violations();
        assert_eq!(v.len(), 3, "{v:?}");
        assert!(v[1].starts_with("lost tag: r:v1") && v[1].contains("invariant 1/2"));
        assert!(v[2].starts_with("lost tag: s: blob"), "{v:?}");
    }
}
