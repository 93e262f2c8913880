//! `fsck`: checks a store at rest against the invariants of DESIGN §9.
//!
//! - 1 (at rest): every manifest row's bytes exist and verify, and so do
//!   the blobs it references (children for indexes).
//! - 3: reference truth: the recorded holders of each digest (link count,
//!   reference rows, dedupe index) equal the repositories holding it.
//! - 4: no repository membership without valid bytes; `_blobstore` blobs no
//!   repository holds are reported as orphans (an error only after a
//!   quiescent GC with delay 0, which is the caller's call to make).
//! - 5: `_blobstore` is not a repository.
//! - 6: no marker or stub stands in for a blob in the blobstore layout.
//! - 12: temp files dead writers left are reported as leftovers (garbage
//!   GC reclaims, not an error).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use serde::Serialize;

use super::Store;
use crate::digest::Digest;
use crate::error::StoreResult;
use crate::layout::{self, BLOBSTORE, BlobLayout, LayoutKind, parse_blob_paths};
use crate::oci::names::RepoName;

/// What is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// A repository records a blob whose bytes are missing or do not verify.
    MissingBlob,
    /// An index.json row whose manifest bytes are missing or do not verify.
    MissingManifest,
    /// A manifest references a blob (or an index a child) the repo lacks.
    DanglingReference,
    /// Recorded holders differ from the repositories that hold the digest.
    ReferenceMismatch,
    /// A `_blobstore` blob no repository holds (garbage, not loss).
    Orphan,
    /// A 0-byte stand-in for a non-empty blob where none may exist.
    Marker,
    /// `_blobstore` looks like a repository.
    HiddenNamespaceExposed,
    /// A temp file a dead writer left (garbage, not loss: GC reclaims it).
    Leftover,
}

/// One problem found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub kind: FindingKind,
    pub repo: Option<String>,
    pub digest: Option<String>,
    pub detail: String,
}

impl Finding {
    /// Everything but orphans and leftovers is an error at any time.
    pub fn is_error(&self) -> bool {
        !matches!(self.kind, FindingKind::Orphan | FindingKind::Leftover)
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.kind)?;
        if let Some(r) = &self.repo {
            write!(f, " repo={r}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, " digest={d}")?;
        }
        write!(f, ": {}", self.detail)
    }
}

/// Whether one repository holds each digest with valid bytes, asked of the
/// layout once per digest. fsck runs at rest, so a second answer could not
/// differ, and each is a backend call (a billed request on an object
/// store); a layer most manifests share was asked once per manifest.
struct Held<'a> {
    layout: &'a dyn BlobLayout,
    repo: &'a RepoName,
    answers: HashMap<Digest, bool>,
}

impl<'a> Held<'a> {
    fn new(layout: &'a dyn BlobLayout, repo: &'a RepoName) -> Held<'a> {
        Held {
            layout,
            repo,
            answers: HashMap::new(),
        }
    }

    async fn valid(&mut self, d: &Digest) -> StoreResult<bool> {
        if let Some(&valid) = self.answers.get(d) {
            return Ok(valid);
        }
        let valid = self.layout.stat(self.repo, d).await?.is_some();
        self.answers.insert(d.clone(), valid);
        Ok(valid)
    }
}

fn finding(
    kind: FindingKind,
    repo: Option<&RepoName>,
    digest: Option<&Digest>,
    detail: impl Into<String>,
) -> Finding {
    Finding {
        kind,
        repo: repo.map(ToString::to_string),
        digest: digest.map(ToString::to_string),
        detail: detail.into(),
    }
}

impl Store {
    /// Checks the whole store. Run it at rest: concurrent writes make
    /// transient differences look like findings.
    pub async fn fsck(&self) -> StoreResult<Vec<Finding>> {
        let mut out = Vec::new();
        let layout = self.layout();
        let repos = self.repositories().await?;
        let empty = |d: &Digest| *d == Digest::of(d.algorithm(), b"");

        // Who actually holds what (membership with valid bytes counts; a
        // record without bytes is reported and not counted).
        let mut holders: BTreeMap<Digest, u64> = BTreeMap::new();
        for repo in &repos {
            let mut held = Held::new(layout, repo);
            for d in layout.repo_digests(repo).await? {
                if held.valid(&d).await? {
                    *holders.entry(d).or_default() += 1;
                } else {
                    out.push(finding(
                        FindingKind::MissingBlob,
                        Some(repo),
                        Some(&d),
                        "recorded, but no valid bytes",
                    ));
                }
            }
            let index = self.read_index(repo).await?;
            let rows: BTreeSet<&Digest> = index.manifests.iter().map(|r| &r.digest).collect();
            for row in &index.manifests {
                if !held.valid(&row.digest).await? {
                    out.push(finding(
                        FindingKind::MissingManifest,
                        Some(repo),
                        Some(&row.digest),
                        "index.json row without valid bytes",
                    ));
                    continue;
                }
                let Some(m) = self.parse_stored(repo, row).await? else {
                    out.push(finding(
                        FindingKind::MissingManifest,
                        Some(repo),
                        Some(&row.digest),
                        "stored manifest does not parse",
                    ));
                    continue;
                };
                for blob in m.blobs() {
                    if !held.valid(&blob.digest).await? {
                        out.push(finding(
                            FindingKind::DanglingReference,
                            Some(repo),
                            Some(&blob.digest),
                            format!("referenced by manifest {}", row.digest),
                        ));
                    }
                }
                for child in m.children() {
                    if !rows.contains(&child.digest) {
                        out.push(finding(
                            FindingKind::DanglingReference,
                            Some(repo),
                            Some(&child.digest),
                            format!("child of index {}", row.digest),
                        ));
                    }
                }
            }
            if self.config().layout == LayoutKind::Blobstore {
                self.check_markers(repo, &mut out).await?;
            }
        }

        // Every `_blobstore` digest comes with its recorded count (the
        // sweep's one scan on reference rows); a digest only repositories
        // name is asked alone.
        let stored: HashMap<Digest, u64> = layout.blobstore_holders().await?.into_iter().collect();
        let digests: BTreeSet<&Digest> = holders.keys().chain(stored.keys()).collect();
        for d in digests {
            let actual = holders.get(d).copied().unwrap_or(0);
            if self.config().layout == LayoutKind::Legacy && empty(d) {
                continue; // the empty blob is never deduplicated, so never recorded
            }
            let recorded = match stored.get(d) {
                Some(&n) => n,
                None => layout.recorded_holders(d).await?,
            };
            if recorded != actual {
                out.push(finding(
                    FindingKind::ReferenceMismatch,
                    None,
                    Some(d),
                    format!("recorded {recorded} holders, {actual} repositories hold it"),
                ));
            }
            if actual == 0 && self.config().layout == LayoutKind::Blobstore {
                out.push(finding(
                    FindingKind::Orphan,
                    None,
                    Some(d),
                    "in _blobstore, held by no repository",
                ));
            }
        }

        let hidden =
            crate::driver::DriverPath::new(format!("{BLOBSTORE}/index.json")).expect("valid");
        if self.driver().stat(&hidden).await.is_ok()
            || repos.iter().any(|r| r.as_str().starts_with('_'))
        {
            out.push(finding(
                FindingKind::HiddenNamespaceExposed,
                None,
                None,
                "_blobstore has an index.json",
            ));
        }

        for leftover in self.leftovers().await? {
            out.push(finding(
                FindingKind::Leftover,
                None,
                None,
                format!(
                    "{}: {} bytes a dead writer left behind",
                    leftover.path, leftover.size
                ),
            ));
        }
        Ok(out)
    }

    async fn check_markers(&self, repo: &RepoName, out: &mut Vec<Finding>) -> StoreResult<()> {
        let dir = layout::repo_blobs_dir(repo);
        for path in self.driver().list(Some(&dir)).await? {
            for d in parse_blob_paths(&dir, [&path]) {
                let size = self.driver().stat(&path).await?.size;
                if size == 0 && d != Digest::of(d.algorithm(), b"") {
                    out.push(finding(
                        FindingKind::Marker,
                        Some(repo),
                        Some(&d),
                        "0-byte object in the blobstore layout",
                    ));
                }
            }
        }
        Ok(())
    }
}
