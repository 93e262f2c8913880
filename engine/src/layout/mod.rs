//! Where a repository's blobs live, and how "repo R holds digest D" is
//! recorded: the two layouts of DESIGN §1, each on local (hard links) and
//! object (no links) drivers.
//!
//! ```text
//! <root>/<repo>/oci-layout, index.json       both layouts (the store owns these)
//! <root>/<repo>/.uploads/<id>                upload sessions, both layouts
//! legacy:    <root>/<repo>/blobs/<alg>/<hex> the bytes; local dedupe = a hard link
//!            to the first copy; object dedupe = a 0-byte marker + dedupe index
//! blobstore: <root>/_blobstore/blobs/<alg>/<hex>   the only copy
//!            local:  <root>/<repo>/blobs/<alg>/<hex> is a hard link to it, so
//!                    each repo stays a valid OCI layout; links - 1 = holders
//!            object: nothing per repo; the metadata store's reference rows
//! ```
//!
//! Invariant kept here (DESIGN §9.3, §9.6): the recorded holders of a digest
//! are exactly the repositories that hold it, and a read never returns bytes
//! whose digest differs from the one asked for (markers and stubs included).
//! The caller holds the locks of the operation's plan.

mod blobstore;
mod legacy;
mod verify;

use std::fmt;
use std::ops::Range;
use std::str::FromStr;

use async_trait::async_trait;
use bytes::Bytes;

pub use self::blobstore::BlobstoreLayout;
pub(crate) use self::blobstore::{SWEEP_TOMBSTONES, ref_by_digest, ref_by_repo, sweep_tombstone};
pub(crate) use self::legacy::DedupeEntry;
pub use self::legacy::LegacyLayout;
pub(crate) use self::verify::Verifier;

use crate::digest::{Algorithm, Digest};
use crate::driver::DriverPath;
use crate::error::StoreResult;
use crate::oci::names::RepoName;

/// The hidden namespace of the blobstore layout. Not a valid repository
/// name (components start with `[a-z0-9]`), so it can never be one.
pub const BLOBSTORE: &str = "_blobstore";

/// Which layout a store uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LayoutKind {
    /// Today's zot 2.1 layout: per-repository blobs, markers on object stores.
    Legacy,
    /// The proposal: one `_blobstore`, no markers.
    Blobstore,
}

impl LayoutKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LayoutKind::Legacy => "legacy",
            LayoutKind::Blobstore => "blobstore",
        }
    }
}

impl fmt::Display for LayoutKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for LayoutKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "legacy" => Ok(LayoutKind::Legacy),
            "blobstore" => Ok(LayoutKind::Blobstore),
            _ => Err(format!("unknown layout {s:?} (legacy, blobstore)")),
        }
    }
}

/// The path of `parts` joined, built in one exact allocation: these are
/// built on every blob read, so no formatting machinery.
fn path(parts: &[&str]) -> DriverPath {
    let mut s = String::with_capacity(parts.iter().map(|p| p.len()).sum());
    parts.iter().for_each(|p| s.push_str(p));
    DriverPath::from_string(s).expect("paths built from valid names and digests are valid")
}

pub fn repo_dir(repo: &RepoName) -> DriverPath {
    path(&[repo.as_str()])
}

pub fn repo_blob(repo: &RepoName, d: &Digest) -> DriverPath {
    path(&[
        repo.as_str(),
        "/blobs/",
        d.algorithm().as_str(),
        "/",
        &d.hex(),
    ])
}

pub fn repo_blobs_dir(repo: &RepoName) -> DriverPath {
    path(&[repo.as_str(), "/blobs"])
}

pub fn blobstore_blob(d: &Digest) -> DriverPath {
    path(&[BLOBSTORE, "/blobs/", d.algorithm().as_str(), "/", &d.hex()])
}

pub fn blobstore_dir() -> DriverPath {
    path(&[BLOBSTORE, "/blobs"])
}

pub fn index_json(repo: &RepoName) -> DriverPath {
    path(&[repo.as_str(), "/index.json"])
}

pub fn oci_layout(repo: &RepoName) -> DriverPath {
    path(&[repo.as_str(), "/oci-layout"])
}

pub fn upload(repo: &RepoName, id: &str) -> DriverPath {
    path(&[repo.as_str(), "/.uploads/", id])
}

/// Digests stored below a `blobs/` directory, from its listing.
pub(crate) fn parse_blob_paths<'a>(
    blobs_dir: &DriverPath,
    paths: impl IntoIterator<Item = &'a DriverPath>,
) -> Vec<Digest> {
    let prefix = format!("{blobs_dir}/");
    let mut out = Vec::new();
    for p in paths {
        let Some(rest) = p.as_str().strip_prefix(&prefix) else {
            continue;
        };
        let Some((alg, hex)) = rest.split_once('/') else {
            continue;
        };
        let alg = Algorithm::ALL.into_iter().find(|a| a.as_str() == alg);
        if let Some(d) = alg.and_then(|a| Digest::from_hex(a, hex).ok()) {
            out.push(d);
        }
    }
    out
}

/// Where new bytes for a layout come from.
pub(crate) enum Source<'a> {
    /// A committed upload file (consumed when renamed into place).
    Staged(&'a DriverPath),
    /// A small body in memory (manifests, monolithic pushes).
    Bytes(Bytes),
}

/// Puts `source`'s bytes at `path`, replacing what is there, durably, and
/// records them as verified (the caller hashed them). Returns whether a
/// staged file was consumed: renamed into place on linking drivers; copied
/// elsewhere (the caller then deletes it).
pub(crate) async fn place(
    driver: &dyn crate::driver::Driver,
    verifier: &Verifier,
    digest: &Digest,
    path: &DriverPath,
    source: &Source<'_>,
) -> StoreResult<bool> {
    use crate::driver::PutMode;
    let size = match source {
        Source::Staged(staged) => driver.stat(staged).await?.size,
        Source::Bytes(data) => data.len() as u64,
    };
    let consumed = match source {
        Source::Staged(staged) if driver.capabilities().rename => {
            driver.rename(staged, path).await?;
            // The staged name's removal is made durable first: a crash after
            // the target's sync but before this one would leave two names on
            // the inode, and the link count (reference truth) would lie.
            driver.sync_dir(staged.parent().as_ref()).await?;
            driver.sync_dir(path.parent().as_ref()).await?;
            true
        }
        Source::Staged(staged) => {
            driver.copy(staged, path, PutMode::Overwrite).await?;
            false
        }
        Source::Bytes(data) => {
            driver.put(path, data.clone(), PutMode::Overwrite).await?;
            false
        }
    };
    verifier.trust_written(driver, path, digest, size).await?;
    Ok(consumed)
}

/// One layout's bookkeeping of blobs. The caller holds the lock plan.
#[async_trait]
pub trait BlobLayout: Send + Sync + fmt::Debug {
    fn kind(&self) -> LayoutKind;

    /// Makes `digest`, whose bytes (already verified) are staged at
    /// `staged`, part of `repo`. Durable on return; `staged` is consumed.
    async fn ingest(
        &self,
        repo: &RepoName,
        digest: &Digest,
        staged: &DriverPath,
    ) -> StoreResult<()>;

    /// The same for a small body held in memory (manifests).
    async fn ingest_bytes(&self, repo: &RepoName, digest: &Digest, data: Bytes) -> StoreResult<()>;

    /// The blob's size, if `repo` holds `digest` with bytes that hash to it.
    async fn stat(&self, repo: &RepoName, digest: &Digest) -> StoreResult<Option<u64>>;

    /// The bytes of `digest` as held by `repo`, verified when read whole.
    /// `None` if the repo does not hold it (or holds no valid bytes for it).
    async fn read(
        &self,
        repo: &RepoName,
        digest: &Digest,
        range: Option<Range<u64>>,
    ) -> StoreResult<Option<Bytes>>;

    /// Adds `digest` to `to` if `from` holds it; false if it does not.
    async fn mount(&self, from: &RepoName, to: &RepoName, digest: &Digest) -> StoreResult<bool>;

    /// Removes `digest` from `repo` (idempotent). Bytes other repositories
    /// hold stay readable.
    async fn remove(&self, repo: &RepoName, digest: &Digest) -> StoreResult<()>;

    /// Every digest `repo` holds a record of (valid or not).
    async fn repo_digests(&self, repo: &RepoName) -> StoreResult<Vec<Digest>>;

    /// Digests held in the shared `_blobstore` (empty for the legacy layout).
    async fn blobstore_digests(&self) -> StoreResult<Vec<Digest>>;

    /// Deletes the shared copy of `digest` if, checked now, no repository
    /// holds it; returns the bytes freed. The caller holds the sweep plan,
    /// which is what makes this final re-check race-free. Legacy: no-op.
    async fn sweep(&self, digest: &Digest) -> StoreResult<Option<u64>>;

    /// MUTATION (c)'s insert without the dedupe check: records `repo` as a
    /// holder of a `_blobstore` copy found earlier. Blobstore layout only.
    #[cfg(ocistore_mutation = "split_dedupe")]
    async fn hold_existing(&self, _repo: &RepoName, _digest: &Digest) -> StoreResult<()> {
        unimplemented!("mutation (c) targets the blobstore layout")
    }

    /// How many repositories the reference truth says hold `digest`
    /// (link count - 1, reference rows, or dedupe-index entries).
    async fn recorded_holders(&self, digest: &Digest) -> StoreResult<u64>;

    /// Brings the reference truth back in line with the disk after a crash,
    /// before the store serves anything. Nothing to do where the disk is
    /// the only truth (link counts); see the legacy layout's dedupe index.
    async fn recover(&self) -> StoreResult<()> {
        Ok(())
    }

    /// Every `_blobstore` digest with its [`recorded_holders`] count, for a
    /// sweep choosing its candidates. Not a snapshot: a holder added while
    /// this runs may be missed, which is why [`sweep`] checks again under
    /// the digest's lock before deleting anything.
    ///
    /// [`recorded_holders`]: BlobLayout::recorded_holders
    /// [`sweep`]: BlobLayout::sweep
    async fn blobstore_holders(&self) -> StoreResult<Vec<(Digest, u64)>> {
        holders_each(self, self.blobstore_digests().await?).await
    }
}

/// [`BlobLayout::blobstore_holders`] asked one digest at a time.
pub(crate) async fn holders_each<L: BlobLayout + ?Sized>(
    layout: &L,
    digests: Vec<Digest>,
) -> StoreResult<Vec<(Digest, u64)>> {
    let mut out = Vec::with_capacity(digests.len());
    for d in digests {
        let holders = layout.recorded_holders(&d).await?;
        out.push((d, holders));
    }
    Ok(out)
}
