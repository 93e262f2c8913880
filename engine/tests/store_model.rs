//! Model-based test: random sequences of operations run against the store
//! and against a plain in-memory model of OCI semantics; every result (value
//! or error code) must agree, for every lock policy and both layouts, on a
//! linking (sim disk) and a non-linking (in-memory objects) driver. proptest
//! shrinks a failing sequence to a minimal one.
//!
//! The operations: blob push, stat, get, ranged get, delete and mount;
//! chunked upload sessions (start, chunks with and without a range, finish,
//! cancel, status); manifests, artifacts with a subject and indexes over
//! images, put by tag or digest, got by tag or digest (digest, media type
//! and body compared), deleted by tag or digest; tags; referrers with and
//! without an artifact-type filter; a whole GC pass with delay 0 (what it
//! removes is compared with what the model says it keeps); and a restart of
//! the store over the same driver and metadata, with a power cut first on
//! the sim disk (upload sessions survive it with their acknowledged chunks).
//!
//! Cases per configuration: `PROPTEST_CASES`, else [`DEFAULT_CASES`].
//! `broken_*` tests run the same checker over a store whose driver has a
//! known fault and assert that the model reports it.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use engine::driver::{Driver, DriverPath, DriverResult, Intercepted, PutMode};
use engine::gc::{GcKind, GcOptions};
use engine::oci::media;
use engine::{Digest, ErrorCode, LayoutKind, LockPolicy, Reference, StoreError};
use proptest::prelude::*;

/// Cases per configuration when `PROPTEST_CASES` is not set: 12
/// configurations run, and this keeps the file at a few seconds.
const DEFAULT_CASES: u32 = 64;

const REPOS: usize = 3;
const BLOBS: usize = 4;
const TAGS: usize = 3;
/// Upload slots a sequence juggles (a client with two uploads open).
const SLOTS: usize = 2;
/// The largest chunk an upload sends (blobs are 50 to 170 bytes).
const CHUNK: usize = 64;

/// The manifests of the world, by index into [`World::manifests`].
const IMAGES: Range<usize> = 0..3;
const ARTIFACTS: Range<usize> = 3..6;
const INDEXES: Range<usize> = 6..8;
const MANIFESTS: usize = 8;

/// Artifact types a referrers query filters on: the two the world's
/// artifacts declare or imply.
const SIGNATURE: &str = "application/vnd.test.signature";
const FILTERS: [&str; 2] = [SIGNATURE, media::OCI_CONFIG];

#[derive(Debug, Clone, Copy)]
enum Ref {
    Tag(usize),
    Digest(usize),
}

#[derive(Debug, Clone, Copy)]
enum ChunkMode {
    /// The next bytes of the session's blob, with their exact range.
    Next,
    /// The next bytes without a range (a streamed PATCH).
    NextNoRange,
    /// A range that starts one byte past the session's offset.
    BadStart,
    /// A range one byte longer than the chunk.
    BadLen,
}

#[derive(Debug, Clone)]
enum Op {
    PushBlob(usize, usize),
    StatBlob(usize, usize),
    GetBlob(usize, usize),
    /// repo, blob, start and end in eighths of the blob's length (the end
    /// may fall before the start or past the end).
    GetRange(usize, usize, u64, i64),
    DeleteBlob(usize, usize),
    Mount(usize, usize, usize),
    /// repo, manifest, tag (`None`: by digest).
    PushManifest(usize, usize, Option<usize>),
    /// What a client does: the manifest's blobs (for an index, its
    /// children by digest, with their blobs), then the manifest. Expanded
    /// into those steps before it runs.
    PushImage(usize, usize, Option<usize>),
    GetManifest(usize, Ref),
    DeleteTag(usize, usize),
    DeleteManifest(usize, usize),
    Tags(usize),
    /// repo, subject manifest, artifact-type filter.
    Referrers(usize, usize, Option<usize>),
    /// slot, repo, the blob the session is meant to carry.
    StartUpload(usize, usize, usize),
    Chunk(usize, ChunkMode),
    /// slot, send the rest as the last chunk, finish with the right digest.
    Finish(usize, bool, bool),
    Cancel(usize),
    UploadStatus(usize),
    /// A whole GC pass with delay 0.
    Gc,
    /// Drop the store and open it again; `true`: a power cut first (sim disk).
    Reopen(bool),
}

fn op() -> impl Strategy<Value = Op> {
    let r = 0..REPOS;
    let b = 0..BLOBS;
    let m = 0..MANIFESTS;
    let s = 0..SLOTS;
    let reference = prop_oneof![
        (0..TAGS).prop_map(Ref::Tag),
        (0..MANIFESTS).prop_map(Ref::Digest)
    ];
    let mode = prop_oneof![
        3 => Just(ChunkMode::Next),
        2 => Just(ChunkMode::NextNoRange),
        1 => Just(ChunkMode::BadStart),
        1 => Just(ChunkMode::BadLen),
    ];
    prop_oneof![
        4 => (r.clone(), b.clone()).prop_map(|(r, b)| Op::PushBlob(r, b)),
        1 => (r.clone(), b.clone()).prop_map(|(r, b)| Op::StatBlob(r, b)),
        1 => (r.clone(), b.clone()).prop_map(|(r, b)| Op::GetBlob(r, b)),
        2 => (r.clone(), b.clone(), 0..=8u64, -1..=9i64).prop_map(|(r, b, start, len)| Op::GetRange(r, b, start, len)),
        2 => (r.clone(), b.clone()).prop_map(|(r, b)| Op::DeleteBlob(r, b)),
        1 => (r.clone(), r.clone(), b.clone()).prop_map(|(a, c, d)| Op::Mount(a, c, d)),
        2 => (r.clone(), m.clone(), proptest::option::of(0..TAGS)).prop_map(|(r, i, t)| Op::PushManifest(r, i, t)),
        4 => (r.clone(), m.clone(), proptest::option::of(0..TAGS)).prop_map(|(r, i, t)| Op::PushImage(r, i, t)),
        2 => (r.clone(), reference).prop_map(|(r, x)| Op::GetManifest(r, x)),
        1 => (r.clone(), 0..TAGS).prop_map(|(r, t)| Op::DeleteTag(r, t)),
        2 => (r.clone(), m.clone()).prop_map(|(r, i)| Op::DeleteManifest(r, i)),
        1 => r.clone().prop_map(Op::Tags),
        // Mostly the subjects the world's artifacts refer to (image 0, index 0).
        2 => (r.clone(), prop_oneof![2 => Just(IMAGES.start), 2 => Just(INDEXES.start), 1 => m], proptest::option::of(0..FILTERS.len()))
            .prop_map(|(r, i, f)| Op::Referrers(r, i, f)),
        2 => (s.clone(), r.clone(), b).prop_map(|(s, r, b)| Op::StartUpload(s, r, b)),
        3 => (s.clone(), mode).prop_map(|(s, m)| Op::Chunk(s, m)),
        2 => (s.clone(), any::<bool>(), prop::bool::weighted(0.8)).prop_map(|(s, rest, right)| Op::Finish(s, rest, right)),
        1 => s.clone().prop_map(Op::Cancel),
        1 => s.prop_map(Op::UploadStatus),
        1 => Just(Op::Gc),
        1 => any::<bool>().prop_map(Op::Reopen),
    ]
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(op(), 1..50)
}

// ---------------------------------------------------------------- the world

/// A manifest of the world and the edges the model follows.
#[derive(Debug, Clone)]
struct Man {
    digest: Digest,
    body: Bytes,
    media_type: &'static str,
    /// Config and layers (must be blobs of the repository).
    blobs: Vec<Digest>,
    /// The same, as indexes into [`World::blobs`].
    blob_ids: Vec<usize>,
    /// Children, as indexes into [`World::manifests`].
    child_ids: Vec<usize>,
    /// Manifests an index lists (must be manifests of the repository).
    children: Vec<Digest>,
    subject: Option<Digest>,
    /// What the referrers API reports: `artifactType`, else the config's
    /// media type.
    artifact_type: Option<String>,
}

struct World {
    blobs: Vec<(Digest, Bytes)>,
    manifests: Vec<Man>,
}

fn world() -> World {
    let blobs: Vec<_> = (0..BLOBS as u64)
        .map(|i| blob(i + 1, 50 + i as usize * 40))
        .collect();
    let id = |d: &Digest| blobs.iter().position(|(x, _)| x == d).unwrap();
    let image_man = |img: &Image, subject: Option<&Digest>, at: Option<&str>| Man {
        blob_ids: std::iter::once(&img.config)
            .chain(&img.layers)
            .map(|(d, _)| id(d))
            .collect(),
        child_ids: vec![],
        digest: img.digest.clone(),
        body: img.manifest.clone(),
        media_type: media::OCI_MANIFEST,
        blobs: std::iter::once(&img.config)
            .chain(&img.layers)
            .map(|(d, _)| d.clone())
            .collect(),
        children: vec![],
        subject: subject.cloned(),
        artifact_type: Some(at.unwrap_or(media::OCI_CONFIG).to_owned()),
    };
    // Image i: blob i as config, blob i+1 as its layer.
    let images: Vec<Image> = IMAGES
        .map(|i| image_with(blobs[i].clone(), vec![blobs[i + 1].clone()], None, None))
        .collect();
    let index_man = |children: &[usize]| {
        let children: Vec<&Image> = children.iter().map(|&c| &images[c]).collect();
        let (digest, body) = index_of(&children);
        Man {
            blob_ids: vec![],
            child_ids: children
                .iter()
                .map(|c| images.iter().position(|i| i.digest == c.digest).unwrap())
                .collect(),
            digest,
            body,
            media_type: media::OCI_INDEX,
            blobs: vec![],
            children: children.iter().map(|c| c.digest.clone()).collect(),
            subject: None,
            artifact_type: None,
        }
    };
    let indexes = [index_man(&[0, 1]), index_man(&[1, 2])];
    // Artifacts: two referrers of image 0 (one typed, one typed by its
    // config only), one of index 0.
    let artifacts = [
        (3, 0, images[0].digest.clone(), Some(SIGNATURE)),
        (3, 1, images[0].digest.clone(), None),
        (
            2,
            3,
            indexes[0].digest.clone(),
            Some("application/vnd.test.sbom"),
        ),
    ]
    .map(|(config, layer, subject, at)| {
        let img = image_with(
            blobs[config].clone(),
            vec![blobs[layer].clone()],
            Some(&subject),
            at,
        );
        image_man(&img, Some(&subject), at)
    });
    let mut manifests: Vec<Man> = images.iter().map(|i| image_man(i, None, None)).collect();
    manifests.extend(artifacts);
    manifests.extend(indexes);
    assert_eq!(manifests.len(), MANIFESTS);
    const { assert!(ARTIFACTS.end == INDEXES.start && IMAGES.end == ARTIFACTS.start) };
    World { blobs, manifests }
}

impl World {
    /// `PushImage` as the steps a client takes; any other operation as is.
    fn expand(&self, op: &Op) -> Vec<Op> {
        let Op::PushImage(r, m, t) = *op else {
            return vec![op.clone()];
        };
        let man = &self.manifests[m];
        let mut steps = vec![];
        for &c in &man.child_ids {
            steps.extend(
                self.manifests[c]
                    .blob_ids
                    .iter()
                    .map(|&b| Op::PushBlob(r, b)),
            );
            steps.push(Op::PushManifest(r, c, None));
        }
        steps.extend(man.blob_ids.iter().map(|&b| Op::PushBlob(r, b)));
        steps.push(Op::PushManifest(r, m, t));
        steps
    }

    /// The byte range `GetRange(_, b, start, len)` asks for.
    fn range(&self, b: usize, start: u64, len: i64) -> (u64, u64) {
        let n = self.blobs[b].1.len() as u64;
        let start = n * start / 8;
        (start, start.saturating_add_signed(n as i64 * len / 8))
    }

    fn man(&self, d: &Digest) -> &Man {
        self.manifests
            .iter()
            .find(|m| &m.digest == d)
            .expect("a manifest of the world")
    }
}

// ---------------------------------------------------------------- the model

/// An operation with every input made concrete: upload chunks carry their
/// bytes, computed from the client's view of the session (the model's,
/// which equals the store's acknowledged state up to here).
#[derive(Debug, Clone)]
enum Step {
    Op(Op),
    Chunk {
        slot: usize,
        range: Option<(u64, u64)>,
        data: Bytes,
    },
    Finish {
        slot: usize,
        digest: Digest,
        last: Option<Bytes>,
    },
}

/// What an operation returned, reduced to what the model can predict.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Ok,
    Size(u64),
    Bytes(Bytes),
    Bool(bool),
    Digest(Digest),
    Manifest {
        digest: Digest,
        media_type: String,
        body: Bytes,
    },
    Tags(Vec<String>),
    /// (digest, media type, size, artifact type), by digest.
    Referrers(Vec<(Digest, String, u64, Option<String>)>),
    /// Bytes received so far by an upload, and its repository.
    Upload(String, u64),
    /// What a GC pass removed: (kind, repository, digest).
    Gc(BTreeSet<(String, String, String)>),
    Err(Option<ErrorCode>),
}

fn err(e: StoreError) -> Outcome {
    Outcome::Err(e.code())
}

#[derive(Debug, Default, Clone)]
struct RepoModel {
    /// Every digest the repository holds: blobs and manifests.
    blobs: BTreeSet<Digest>,
    /// index.json rows: (digest, tag)
    rows: Vec<(Digest, Option<String>)>,
}

#[derive(Debug, Clone)]
struct Session {
    repo: usize,
    /// The blob the client means to send.
    target: usize,
    data: Vec<u8>,
    open: bool,
}

/// The OCI semantics, written plainly.
#[derive(Debug, Default)]
struct Model {
    repos: BTreeMap<usize, RepoModel>,
    sessions: Vec<Session>,
    slots: [Option<usize>; SLOTS],
}

fn repo_name(r: usize) -> String {
    format!("repo{r}")
}

fn tag_name(t: usize) -> String {
    format!("t{t}")
}

fn gc_item(kind: &str, r: usize, d: Option<&Digest>) -> (String, String, String) {
    (
        kind.to_owned(),
        repo_name(r),
        d.map(ToString::to_string).unwrap_or_default(),
    )
}

impl Model {
    fn untag(rows: &mut Vec<(Digest, Option<String>)>, tag: &str) -> bool {
        let Some(pos) = rows.iter().position(|(_, t)| t.as_deref() == Some(tag)) else {
            return false;
        };
        let (d, _) = rows.remove(pos);
        if !rows.iter().any(|(x, _)| *x == d) {
            rows.push((d, None));
        }
        true
    }

    fn session(&self, slot: usize) -> Option<&Session> {
        self.slots[slot]
            .map(|i| &self.sessions[i])
            .filter(|s| s.open)
    }

    /// The concrete inputs of `op`, as a client that saw every answer so far
    /// would send them.
    fn resolve(&self, w: &World, op: &Op) -> Step {
        match *op {
            Op::Chunk(slot, mode) => {
                let (target, off) = self
                    .session(slot)
                    .map_or((0, 0), |s| (s.target, s.data.len()));
                let bytes = &w.blobs[target].1;
                let data = if off < bytes.len() {
                    bytes.slice(off..bytes.len().min(off + CHUNK))
                } else {
                    // Past the end: whatever it sends makes the upload wrong.
                    Bytes::from_static(b"x")
                };
                let (off, len) = (off as u64, data.len() as u64);
                let range = match mode {
                    ChunkMode::Next => Some((off, off + len - 1)),
                    ChunkMode::NextNoRange => None,
                    ChunkMode::BadStart => Some((off + 1, off + len)),
                    ChunkMode::BadLen => Some((off, off + len)),
                };
                Step::Chunk { slot, range, data }
            }
            Op::Finish(slot, rest, right) => {
                let (target, off) = self
                    .session(slot)
                    .map_or((0, 0), |s| (s.target, s.data.len()));
                let bytes = &w.blobs[target].1;
                let last = (rest && off < bytes.len()).then(|| bytes.slice(off..));
                let digest = if right {
                    w.blobs[target].0.clone()
                } else {
                    w.blobs[(target + 1) % BLOBS].0.clone()
                };
                Step::Finish { slot, digest, last }
            }
            _ => Step::Op(op.clone()),
        }
    }

    /// Whether a manifest of `repo` uses `d` as its config or a layer.
    fn referenced(w: &World, repo: &RepoModel, d: &Digest) -> bool {
        repo.rows.iter().any(|(m, _)| w.man(m).blobs.contains(d))
    }

    fn apply(&mut self, w: &World, step: &Step) -> Outcome {
        use Outcome::*;
        let unknown = |c| Err(Some(c));
        let op = match step {
            Step::Op(op) => op,
            Step::Chunk { slot, range, data } => {
                let Some(i) = self.slots[*slot].filter(|i| self.sessions[*i].open) else {
                    return unknown(ErrorCode::BlobUploadUnknown);
                };
                let s = &mut self.sessions[i];
                let off = s.data.len() as u64;
                if let Some((start, end)) = *range {
                    if start != off {
                        return unknown(ErrorCode::BlobUploadInvalid);
                    }
                    if end + 1 - start != data.len() as u64 {
                        return unknown(ErrorCode::SizeInvalid);
                    }
                }
                s.data.extend_from_slice(data);
                return Size(s.data.len() as u64);
            }
            Step::Finish { slot, digest, last } => {
                let Some(i) = self.slots[*slot].filter(|i| self.sessions[*i].open) else {
                    return unknown(ErrorCode::BlobUploadUnknown);
                };
                let s = &mut self.sessions[i];
                s.open = false;
                let mut all = s.data.clone();
                all.extend_from_slice(last.as_deref().unwrap_or_default());
                if &engine::Digest::sha256(&all) != digest {
                    return unknown(ErrorCode::DigestInvalid);
                }
                let r = s.repo;
                self.repos
                    .get_mut(&r)
                    .expect("a repository with an open session stays")
                    .blobs
                    .insert(digest.clone());
                return Ok;
            }
        };
        match *op {
            Op::PushBlob(r, b) => {
                self.repos
                    .entry(r)
                    .or_default()
                    .blobs
                    .insert(w.blobs[b].0.clone());
                Ok
            }
            Op::StatBlob(r, b) | Op::GetBlob(r, b) | Op::GetRange(r, b, ..) => {
                let Some(repo) = self.repos.get(&r) else {
                    return unknown(ErrorCode::NameUnknown);
                };
                let (d, data) = &w.blobs[b];
                if !repo.blobs.contains(d) {
                    return unknown(ErrorCode::BlobUnknown);
                }
                match *op {
                    Op::StatBlob(..) => Size(data.len() as u64),
                    Op::GetRange(_, _, start, len) => {
                        let (start, end) = w.range(b, start, len);
                        if start > end || end > data.len() as u64 {
                            // RANGE_INVALID is answered as BLOB_UPLOAD_INVALID (416).
                            unknown(ErrorCode::BlobUploadInvalid)
                        } else {
                            Bytes(data.slice(start as usize..end as usize))
                        }
                    }
                    _ => Bytes(data.clone()),
                }
            }
            Op::DeleteBlob(r, b) => {
                let Some(repo) = self.repos.get_mut(&r) else {
                    return unknown(ErrorCode::NameUnknown);
                };
                let d = &w.blobs[b].0;
                if !repo.blobs.contains(d) {
                    return unknown(ErrorCode::BlobUnknown);
                }
                if Model::referenced(w, repo, d) {
                    return unknown(ErrorCode::Denied);
                }
                repo.blobs.remove(d);
                Ok
            }
            Op::Mount(from, to, b) => {
                let d = &w.blobs[b].0;
                let held = self.repos.get(&from).is_some_and(|r| r.blobs.contains(d));
                let target = self.repos.entry(to).or_default();
                if held {
                    target.blobs.insert(d.clone());
                }
                Bool(held)
            }
            Op::PushManifest(r, i, t) => {
                let m = &w.manifests[i];
                let repo = self.repos.entry(r).or_default();
                if m.blobs.iter().any(|d| !repo.blobs.contains(d))
                    || m.children
                        .iter()
                        .any(|c| !repo.rows.iter().any(|(d, _)| d == c))
                {
                    return unknown(ErrorCode::ManifestBlobUnknown);
                }
                repo.blobs.insert(m.digest.clone());
                match t {
                    Some(t) => {
                        let tag = tag_name(t);
                        Model::untag(&mut repo.rows, &tag);
                        repo.rows.retain(|(d, t)| !(d == &m.digest && t.is_none()));
                        repo.rows.push((m.digest.clone(), Some(tag)));
                    }
                    None => {
                        if !repo.rows.iter().any(|(d, _)| d == &m.digest) {
                            repo.rows.push((m.digest.clone(), None));
                        }
                    }
                }
                Digest(m.digest.clone())
            }
            Op::GetManifest(r, reference) => {
                let Some(repo) = self.repos.get(&r) else {
                    return unknown(ErrorCode::NameUnknown);
                };
                let row = match reference {
                    Ref::Tag(t) => repo
                        .rows
                        .iter()
                        .find(|(_, x)| x.as_deref() == Some(&tag_name(t))),
                    Ref::Digest(i) => repo.rows.iter().find(|(d, _)| d == &w.manifests[i].digest),
                };
                match row {
                    Some((d, _)) => {
                        let m = w.man(d);
                        Manifest {
                            digest: d.clone(),
                            media_type: m.media_type.to_owned(),
                            body: m.body.clone(),
                        }
                    }
                    None => unknown(ErrorCode::ManifestUnknown),
                }
            }
            Op::DeleteTag(r, t) => {
                let Some(repo) = self.repos.get_mut(&r) else {
                    return unknown(ErrorCode::NameUnknown);
                };
                if Model::untag(&mut repo.rows, &tag_name(t)) {
                    Ok
                } else {
                    unknown(ErrorCode::ManifestUnknown)
                }
            }
            Op::DeleteManifest(r, i) => {
                let Some(repo) = self.repos.get_mut(&r) else {
                    return unknown(ErrorCode::NameUnknown);
                };
                let d = &w.manifests[i].digest;
                if !repo.rows.iter().any(|(x, _)| x == d) {
                    return unknown(ErrorCode::ManifestUnknown);
                }
                if repo.rows.iter().any(|(x, _)| w.man(x).children.contains(d)) {
                    return unknown(ErrorCode::Denied);
                }
                repo.rows.retain(|(x, _)| x != d);
                if !Model::referenced(w, repo, d) {
                    repo.blobs.remove(d);
                }
                Ok
            }
            Op::Tags(r) => {
                let Some(repo) = self.repos.get(&r) else {
                    return unknown(ErrorCode::NameUnknown);
                };
                let mut tags: Vec<String> =
                    repo.rows.iter().filter_map(|(_, t)| t.clone()).collect();
                tags.sort();
                Tags(tags)
            }
            Op::Referrers(r, i, filter) => {
                let Some(repo) = self.repos.get(&r) else {
                    return unknown(ErrorCode::NameUnknown);
                };
                let subject = &w.manifests[i].digest;
                let digests: BTreeSet<&engine::Digest> = repo.rows.iter().map(|(d, _)| d).collect();
                let out = digests
                    .into_iter()
                    .map(|d| w.man(d))
                    .filter(|m| m.subject.as_ref() == Some(subject))
                    .filter(|m| {
                        filter.is_none_or(|f| m.artifact_type.as_deref() == Some(FILTERS[f]))
                    })
                    .map(|m| {
                        (
                            m.digest.clone(),
                            m.media_type.to_owned(),
                            m.body.len() as u64,
                            m.artifact_type.clone(),
                        )
                    })
                    .collect();
                Referrers(out)
            }
            Op::StartUpload(slot, r, b) => {
                self.repos.entry(r).or_default();
                self.sessions.push(Session {
                    repo: r,
                    target: b,
                    data: vec![],
                    open: true,
                });
                self.slots[slot] = Some(self.sessions.len() - 1);
                Ok
            }
            Op::Cancel(slot) | Op::UploadStatus(slot) => {
                let Some(i) = self.slots[slot].filter(|i| self.sessions[*i].open) else {
                    return unknown(ErrorCode::BlobUploadUnknown);
                };
                let s = &mut self.sessions[i];
                if matches!(op, Op::Cancel(_)) {
                    s.open = false;
                    Ok
                } else {
                    Upload(repo_name(s.repo), s.data.len() as u64)
                }
            }
            Op::Gc => Gc(self.gc(w)),
            // Acknowledged content survives a restart and a power cut,
            // upload sessions and their acknowledged chunks included.
            Op::Reopen(_) => Ok,
            Op::Chunk(..) | Op::Finish(..) => unreachable!("resolved into a step"),
            Op::PushImage(..) => unreachable!("expanded into steps"),
        }
    }

    /// A GC pass with delay 0, per repository: keep what a tag reaches
    /// (an index's children, a kept manifest's referrers, transitively) and
    /// what those reference; drop every other row and blob; remove a
    /// repository left with nothing and no open upload.
    fn gc(&mut self, w: &World) -> BTreeSet<(String, String, String)> {
        let mut removed = BTreeSet::new();
        let mut emptied = Vec::new();
        for (&r, repo) in &mut self.repos {
            let rows: BTreeSet<Digest> = repo.rows.iter().map(|(d, _)| d.clone()).collect();
            let mut kept = BTreeSet::new();
            let mut queue: Vec<Digest> = repo
                .rows
                .iter()
                .filter(|(_, t)| t.is_some())
                .map(|(d, _)| d.clone())
                .collect();
            while let Some(d) = queue.pop() {
                if !kept.insert(d.clone()) {
                    continue;
                }
                queue.extend(
                    w.man(&d)
                        .children
                        .iter()
                        .filter(|c| rows.contains(*c))
                        .cloned(),
                );
                queue.extend(
                    rows.iter()
                        .filter(|x| w.man(x).subject.as_ref() == Some(&d))
                        .cloned(),
                );
            }
            for d in rows.difference(&kept) {
                removed.insert(gc_item("manifest", r, Some(d)));
            }
            repo.rows.retain(|(d, _)| kept.contains(d));
            let mut keep_blobs: BTreeSet<Digest> = kept.clone();
            for d in &kept {
                keep_blobs.extend(w.man(d).blobs.iter().cloned());
            }
            for d in repo.blobs.difference(&keep_blobs) {
                removed.insert(gc_item("blob", r, Some(d)));
            }
            repo.blobs.retain(|d| keep_blobs.contains(d));
            let uploading = self.sessions.iter().any(|s| s.open && s.repo == r);
            if repo.rows.is_empty() && repo.blobs.is_empty() && !uploading {
                removed.insert(gc_item("repository", r, None));
                emptied.push(r);
            }
        }
        for r in emptied {
            self.repos.remove(&r);
        }
        removed
    }
}

// ---------------------------------------------------------------- the store

/// The store under test and the client's upload ids, by slot.
struct Client {
    s: Reopenable,
    uploads: [Option<String>; SLOTS],
}

impl Client {
    fn upload(&self, slot: usize) -> &str {
        self.uploads[slot].as_deref().unwrap_or("never-started")
    }

    async fn run(&mut self, w: &World, step: &Step) -> Outcome {
        let r = |i: usize| repo(&repo_name(i));
        let store = &self.s.store;
        let res = match step {
            Step::Chunk { slot, range, data } => store
                .upload_chunk(self.upload(*slot), *range, data.clone())
                .await
                .map(Outcome::Size),
            Step::Finish { slot, digest, last } => store
                .finish_upload(self.upload(*slot), digest, last.clone())
                .await
                .map(|_| Outcome::Ok),
            Step::Op(op) => match *op {
                Op::PushBlob(i, b) => store
                    .push_blob(&r(i), &w.blobs[b].0, w.blobs[b].1.clone())
                    .await
                    .map(|_| Outcome::Ok),
                Op::StatBlob(i, b) => store
                    .stat_blob(&r(i), &w.blobs[b].0)
                    .await
                    .map(Outcome::Size),
                Op::GetBlob(i, b) => store
                    .get_blob(&r(i), &w.blobs[b].0)
                    .await
                    .map(Outcome::Bytes),
                Op::GetRange(i, b, start, len) => {
                    let (start, end) = w.range(b, start, len);
                    store
                        .get_blob_range(&r(i), &w.blobs[b].0, start..end)
                        .await
                        .map(Outcome::Bytes)
                }
                Op::PushImage(..) => unreachable!("expanded into steps"),
                Op::DeleteBlob(i, b) => store
                    .delete_blob(&r(i), &w.blobs[b].0)
                    .await
                    .map(|_| Outcome::Ok),
                Op::Mount(a, b, d) => store
                    .mount_blob(&r(a), &r(b), &w.blobs[d].0)
                    .await
                    .map(Outcome::Bool),
                Op::PushManifest(i, m, t) => {
                    let m = &w.manifests[m];
                    let reference = match t {
                        Some(t) => tag(&tag_name(t)),
                        None => Reference::Digest(m.digest.clone()),
                    };
                    store
                        .put_manifest(&r(i), &reference, m.media_type, m.body.clone())
                        .await
                        .map(Outcome::Digest)
                }
                Op::GetManifest(i, reference) => {
                    let reference = match reference {
                        Ref::Tag(t) => tag(&tag_name(t)),
                        Ref::Digest(m) => Reference::Digest(w.manifests[m].digest.clone()),
                    };
                    store
                        .get_manifest(&r(i), &reference)
                        .await
                        .map(|m| Outcome::Manifest {
                            digest: m.digest,
                            media_type: m.media_type,
                            body: m.body,
                        })
                }
                Op::DeleteTag(i, t) => store
                    .delete_manifest(&r(i), &tag(&tag_name(t)))
                    .await
                    .map(|_| Outcome::Ok),
                Op::DeleteManifest(i, m) => store
                    .delete_manifest(&r(i), &Reference::Digest(w.manifests[m].digest.clone()))
                    .await
                    .map(|_| Outcome::Ok),
                Op::Tags(i) => store
                    .tags(&r(i), None, None)
                    .await
                    .map(|t| Outcome::Tags(t.iter().map(|t| t.to_string()).collect())),
                Op::Referrers(i, m, f) => store
                    .referrers(&r(i), &w.manifests[m].digest, f.map(|f| FILTERS[f]))
                    .await
                    .map(|list| {
                        Outcome::Referrers(
                            list.into_iter()
                                .map(|d| (d.digest, d.media_type, d.size, d.artifact_type))
                                .collect(),
                        )
                    }),
                Op::StartUpload(slot, i, _) => store.start_upload(&r(i)).await.map(|id| {
                    self.uploads[slot] = Some(id);
                    Outcome::Ok
                }),
                Op::Cancel(slot) => store
                    .cancel_upload(self.upload(slot))
                    .await
                    .map(|_| Outcome::Ok),
                Op::UploadStatus(slot) => store
                    .upload_status(self.upload(slot))
                    .await
                    .map(|s| Outcome::Upload(s.repo.to_string(), s.offset)),
                Op::Gc => store
                    .gc(GcOptions::new(Duration::ZERO))
                    .await
                    .map(|report| {
                        Outcome::Gc(
                            report
                                .items
                                .iter()
                                .filter_map(|item| {
                                    let kind = match item.kind {
                                        GcKind::Manifest => "manifest",
                                        GcKind::Blob => "blob",
                                        GcKind::Repository => "repository",
                                        // Upload files, `_blobstore` copies and
                                        // leftovers depend on the layout and the
                                        // driver, not on OCI semantics.
                                        _ => return None,
                                    };
                                    Some((
                                        kind.to_owned(),
                                        item.repo.clone().unwrap_or_default(),
                                        item.digest.clone().unwrap_or_default(),
                                    ))
                                })
                                .collect(),
                        )
                    }),
                Op::Reopen(crash) => self.s.reopen(crash).await.map(|_| Outcome::Ok),
                Op::Chunk(..) | Op::Finish(..) => unreachable!("resolved into a step"),
            },
        };
        res.unwrap_or_else(err)
    }
}

/// One configuration of the store, optionally over a broken driver.
#[derive(Debug, Clone, Copy)]
struct Config {
    layout: LayoutKind,
    policy: LockPolicy,
    backend: Backend,
    fault: Option<Fault>,
}

/// One runtime for every case: several worker threads, as a server has.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
}

/// Runs `ops` against the model and the store; the first disagreement (or
/// an fsck error at the end) fails the case.
fn check(config: Config, ops: &[Op]) -> Result<(), TestCaseError> {
    runtime().block_on(async {
        let s = reopenable(
            config.layout,
            config.policy,
            config.backend,
            |d| match config.fault {
                Some(fault) => Arc::new(Intercepted(Broken { inner: d, fault })) as Arc<dyn Driver>,
                None => d,
            },
        )
        .await;
        let label = s.label.clone();
        let mut client = Client {
            s,
            uploads: Default::default(),
        };
        let w = world();
        let mut model = Model::default();
        for (n, op) in ops.iter().flat_map(|op| w.expand(op)).enumerate() {
            let step = model.resolve(&w, &op);
            let want = model.apply(&w, &step);
            let got = client.run(&w, &step).await;
            prop_assert_eq!(&got, &want, "{} step {}: {:?}", label, n, step);
        }
        let findings = client.s.store.fsck().await.unwrap();
        prop_assert!(
            findings.iter().all(|f| !f.is_error()),
            "{}: fsck {:?}",
            label,
            findings
        );
        Ok(())
    })
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(DEFAULT_CASES)
}

/// One proptest per layout x policy x driver.
macro_rules! configurations {
    ($($name:ident: $layout:ident, $policy:ident, $backend:ident;)+) => {
        proptest! {
            #![proptest_config(ProptestConfig {
                cases: cases(),
                // tests/store_model.proptest-regressions, replayed first.
                failure_persistence: Some(Box::new(
                    proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"),
                )),
                ..ProptestConfig::default()
            })]
            $(
                #[test]
                fn $name(ops in ops()) {
                    check(
                        Config {
                            layout: LayoutKind::$layout,
                            policy: LockPolicy::$policy,
                            backend: Backend::$backend,
                            fault: None,
                        },
                        &ops,
                    )?;
                }
            )+
        }
    };
}

configurations! {
    blobstore_striped_on_links: Blobstore, Striped, Sim;
    blobstore_striped_on_objects: Blobstore, Striped, ObjectMemory;
    blobstore_split_on_links: Blobstore, Split, Sim;
    blobstore_split_on_objects: Blobstore, Split, ObjectMemory;
    blobstore_global_on_links: Blobstore, Global, Sim;
    blobstore_global_on_objects: Blobstore, Global, ObjectMemory;
    legacy_striped_on_links: Legacy, Striped, Sim;
    legacy_striped_on_objects: Legacy, Striped, ObjectMemory;
    legacy_split_on_links: Legacy, Split, Sim;
    legacy_split_on_objects: Legacy, Split, ObjectMemory;
    legacy_global_on_links: Legacy, Global, Sim;
    legacy_global_on_objects: Legacy, Global, ObjectMemory;
}

// ------------------------------------------------- the model can fail

/// A known fault in the driver under the store.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// A ranged read returns its bytes with the first one flipped (a
    /// backend that serves the wrong part of an object).
    CorruptRangedReads,
    /// An overwrite of an `index.json` reports success and writes nothing
    /// (a lost update: tags go stale).
    DropIndexRewrites,
}

#[derive(Debug)]
struct Broken {
    inner: Arc<dyn Driver>,
    fault: Fault,
}

#[async_trait::async_trait]
impl engine::driver::Intercept for Broken {
    fn inner(&self) -> &dyn Driver {
        &*self.inner
    }

    async fn get(&self, path: &DriverPath, range: Option<Range<u64>>) -> DriverResult<Bytes> {
        let ranged = range.is_some();
        let data = self.inner.get(path, range).await?;
        if ranged && matches!(self.fault, Fault::CorruptRangedReads) && !data.is_empty() {
            let mut v = data.to_vec();
            v[0] ^= 0xff;
            return Ok(v.into());
        }
        Ok(data)
    }

    async fn put(&self, path: &DriverPath, data: Bytes, mode: PutMode) -> DriverResult<()> {
        if matches!(self.fault, Fault::DropIndexRewrites)
            && mode == PutMode::Overwrite
            && path.as_str().ends_with("/index.json")
        {
            return Ok(());
        }
        self.inner.put(path, data, mode).await
    }
}

fn broken(fault: Fault) -> Config {
    Config {
        layout: LayoutKind::Blobstore,
        policy: LockPolicy::Striped,
        backend: Backend::Sim,
        fault: Some(fault),
    }
}

/// The checker's message for `ops` over `fault`; fails the test if the
/// model agrees with the broken store.
fn mismatch(fault: Fault, ops: &[Op]) -> String {
    match check(broken(fault), ops) {
        Err(e) => e.to_string(),
        Ok(()) => panic!("the model did not notice {fault:?} over {ops:?}"),
    }
}

/// Random sequences from a fixed seed (deterministic) over `fault` must
/// find a mismatch; returns proptest's report of the minimal sequence.
fn found_by_search(fault: Fault) -> String {
    let config = ProptestConfig {
        cases: 256,
        failure_persistence: None,
        max_shrink_iters: 512,
        ..ProptestConfig::default()
    };
    let rng = proptest::test_runner::TestRng::deterministic_rng(config.rng_algorithm);
    let mut runner = proptest::test_runner::TestRunner::new_with_rng(config, rng);
    match runner.run(&ops(), |ops| check(broken(fault), &ops)) {
        Err(proptest::test_runner::TestError::Fail(why, ops)) => format!("{why}; minimal: {ops:?}"),
        other => panic!("256 random sequences did not notice {fault:?}: {other:?}"),
    }
}

#[test]
fn broken_ranged_reads_are_caught() {
    let ops = [
        Op::PushBlob(0, 1),
        Op::GetBlob(0, 1),
        Op::GetRange(0, 1, 2, 3),
    ];
    let msg = mismatch(Fault::CorruptRangedReads, &ops);
    // Whole reads are fine; the ranged read (step 2) is where it shows.
    assert!(msg.contains("step 2"), "{msg}");
    let found = found_by_search(Fault::CorruptRangedReads);
    eprintln!("corrupt ranged reads: {msg}\nsearch: {found}");
}

#[test]
fn broken_index_rewrites_are_caught() {
    let ops = [
        Op::PushBlob(0, 0),
        Op::PushBlob(0, 1),
        Op::PushManifest(0, 0, Some(0)),
        Op::GetManifest(0, Ref::Tag(0)),
    ];
    let msg = mismatch(Fault::DropIndexRewrites, &ops);
    // The put is acknowledged (step 2); the tag is not there (step 3).
    assert!(msg.contains("step 3"), "{msg}");
    assert!(
        msg.contains("MANIFEST_UNKNOWN") || msg.contains("ManifestUnknown"),
        "{msg}"
    );
    let found = found_by_search(Fault::DropIndexRewrites);
    eprintln!("dropped index rewrites: {msg}\nsearch: {found}");
}
