//! Today's zot 2.1 layout, the baseline: every repository keeps its blobs
//! under `<repo>/blobs/<alg>/<hex>`, and dedupe is recorded in a dedupe
//! index (metadata table `dedupe`: digest -> original path + duplicates).
//!
//! - Local drivers: the first repository to receive a digest keeps the bytes
//!   (the original); other repositories get hard links to it.
//! - Object drivers: other repositories get an EMPTY marker object, and reads
//!   follow the index to the original. When the original is deleted, its
//!   bytes are copied over the first duplicate's marker, which becomes the
//!   original (zot's "move content on delete").
//!
//! The empty blob is a real blob, never a marker: a 0-byte object is a
//! marker only when the digest is not the empty digest. A marker whose index
//! entry is missing or whose original does not verify is reported missing:
//! no stub is ever served (zot #2625, #4427).

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::verify::read_verified;
use super::{
    BlobLayout, LayoutKind, Source, Verifier, parse_blob_paths, place, repo_blob, repo_blobs_dir,
};
use crate::digest::Digest;
use crate::driver::{Driver, DriverPath, PutMode};
use crate::error::{StoreError, StoreResult};
use crate::meta::{Batch, MetaStore, Table};
use crate::oci::names::RepoName;

/// One digest's dedupe record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DedupeEntry {
    /// The path holding the bytes.
    pub(crate) original: Option<String>,
    /// Paths holding a hard link (local) or a marker (object).
    pub(crate) duplicates: BTreeSet<String>,
}

/// The legacy layout on any driver.
#[derive(Debug)]
pub struct LegacyLayout {
    driver: Arc<dyn Driver>,
    meta: Arc<dyn MetaStore>,
    verifier: Verifier,
    local: bool,
}

fn path_of(s: &str) -> StoreResult<DriverPath> {
    DriverPath::new(s)
        .map_err(|e| StoreError::Corrupt(format!("dedupe index holds a bad path: {e}")))
}

impl LegacyLayout {
    pub fn new(driver: Arc<dyn Driver>, meta: Arc<dyn MetaStore>) -> LegacyLayout {
        let local = driver.capabilities().hard_links;
        LegacyLayout {
            verifier: Verifier::new(&*driver),
            driver,
            meta,
            local,
        }
    }

    async fn entry(&self, d: &Digest) -> StoreResult<DedupeEntry> {
        match self
            .meta
            .get(Table::DEDUPE, d.to_string().as_bytes())
            .await?
        {
            None => Ok(DedupeEntry::default()),
            Some(v) => serde_json::from_slice(&v)
                .map_err(|e| StoreError::Corrupt(format!("dedupe index entry for {d}: {e}"))),
        }
    }

    async fn save(&self, d: &Digest, entry: &DedupeEntry) -> StoreResult<()> {
        let key = d.to_string();
        let batch = if entry.original.is_none() && entry.duplicates.is_empty() {
            Batch::new().delete(Table::DEDUPE, key)
        } else {
            let value = serde_json::to_vec(entry).expect("dedupe entry serialises");
            Batch::new().put(Table::DEDUPE, key, value)
        };
        Ok(self.meta.commit(batch).await?)
    }

    fn is_marker_size(d: &Digest, size: u64) -> bool {
        size == 0 && !is_empty_digest(d)
    }

    /// Where the bytes `repo` holds for `d` really are: the repo's own path,
    /// or for a marker, the original's. `None` if the repo holds nothing.
    async fn resolve(&self, repo: &RepoName, d: &Digest) -> StoreResult<Option<DriverPath>> {
        let path = repo_blob(repo, d);
        let size = match self.driver.stat(&path).await {
            Ok(meta) => meta.size,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        if self.local || !LegacyLayout::is_marker_size(d, size) {
            return Ok(Some(path));
        }
        match self.entry(d).await?.original {
            Some(original) if original != path.as_str() => Ok(Some(path_of(&original)?)),
            // A marker with no original to follow: data lost before us.
            _ => Ok(None),
        }
    }

    /// Runs `access` on where `repo`'s bytes of `d` are, following a marker
    /// to its original. A marker's original can be removed between reading
    /// the index and reading the bytes: `remove` promotes a duplicate first
    /// (copy, then index, then delete), so the index then names a new
    /// original. Readers take no digest lock under `striped`, so they look
    /// again while the index keeps naming a different place.
    async fn follow<T, F, Fut>(
        &self,
        repo: &RepoName,
        d: &Digest,
        access: F,
    ) -> StoreResult<Option<T>>
    where
        F: Fn(DriverPath) -> Fut,
        Fut: std::future::Future<Output = StoreResult<Option<T>>>,
    {
        let own = repo_blob(repo, d);
        let mut tried = None;
        // Each retry needs another removal to have promoted another holder;
        // the bound only stops a pathological chain.
        for _ in 0..8 {
            let Some(path) = self.resolve(repo, d).await? else {
                return Ok(None);
            };
            if tried.as_ref() == Some(&path) {
                return Ok(None);
            }
            if let Some(found) = access(path.clone()).await? {
                return Ok(Some(found));
            }
            if path == own {
                return Ok(None);
            }
            tried = Some(path);
        }
        Ok(None)
    }

    /// Makes `path` a duplicate of `original`: a hard link, or a marker.
    async fn place_duplicate(&self, original: &DriverPath, path: &DriverPath) -> StoreResult<()> {
        let driver = &*self.driver;
        if !self.local {
            return Ok(driver.put(path, Bytes::new(), PutMode::Overwrite).await?);
        }
        match driver.hard_link(original, path).await {
            Ok(()) => {}
            Err(e) if e.is_already_exists() => {
                driver.delete(path).await?;
                driver.hard_link(original, path).await?;
            }
            Err(e) => return Err(e.into()),
        }
        driver.sync_dir(path.parent().as_ref()).await?;
        Ok(())
    }

    /// True if `path` is already a good duplicate of `d`: a hard link whose
    /// bytes verify, or a marker (its original was just verified by the
    /// caller; a marker never hashes as itself, so it is not checked).
    async fn holds_valid(&self, path: &DriverPath, d: &Digest) -> StoreResult<bool> {
        if self.local {
            return Ok(self.verifier.check(&*self.driver, path, d).await?.is_some());
        }
        match self.driver.stat(path).await {
            Ok(meta) => Ok(LegacyLayout::is_marker_size(d, meta.size)),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// The recorded original of `d`, if its bytes verify.
    async fn valid_original(
        &self,
        d: &Digest,
        entry: &DedupeEntry,
    ) -> StoreResult<Option<DriverPath>> {
        let Some(original) = &entry.original else {
            return Ok(None);
        };
        let original = path_of(original)?;
        Ok(self
            .verifier
            .check(&*self.driver, &original, d)
            .await?
            .map(|_| original))
    }

    async fn add(&self, repo: &RepoName, d: &Digest, source: Source<'_>) -> StoreResult<()> {
        let path = repo_blob(repo, d);
        let consumed = if is_empty_digest(d) {
            // Not deduplicated: a 0-byte object of the empty digest is its
            // real content, so every repository keeps its own.
            place(&*self.driver, &self.verifier, d, &path, &source).await?
        } else {
            let mut entry = self.entry(d).await?;
            let consumed = match self.valid_original(d, &entry).await? {
                Some(original) if original == path => false,
                // Already a good duplicate. Re-placing it would open a
                // window (unlink, then link) in which a reader of this
                // repository, which takes no digest lock under `striped`,
                // finds the blob missing.
                Some(_)
                    if entry.duplicates.contains(path.as_str())
                        && self.holds_valid(&path, d).await? =>
                {
                    false
                }
                Some(original) => {
                    self.place_duplicate(&original, &path).await?;
                    entry.duplicates.insert(path.to_string());
                    false
                }
                None => {
                    let consumed = place(&*self.driver, &self.verifier, d, &path, &source).await?;
                    entry.duplicates.remove(path.as_str());
                    entry.original = Some(path.to_string());
                    consumed
                }
            };
            self.save(d, &entry).await?;
            consumed
        };
        if let Source::Staged(staged) = source
            && !consumed
        {
            self.driver.delete(staged).await?;
        }
        Ok(())
    }
}

fn is_empty_digest(d: &Digest) -> bool {
    *d == Digest::of(d.algorithm(), b"")
}

#[async_trait]
impl BlobLayout for LegacyLayout {
    fn kind(&self) -> LayoutKind {
        LayoutKind::Legacy
    }

    async fn ingest(
        &self,
        repo: &RepoName,
        digest: &Digest,
        staged: &DriverPath,
    ) -> StoreResult<()> {
        self.add(repo, digest, Source::Staged(staged)).await
    }

    async fn ingest_bytes(&self, repo: &RepoName, digest: &Digest, data: Bytes) -> StoreResult<()> {
        self.add(repo, digest, Source::Bytes(data)).await
    }

    async fn stat(&self, repo: &RepoName, digest: &Digest) -> StoreResult<Option<u64>> {
        self.follow(repo, digest, |path| async move {
            self.verifier.check(&*self.driver, &path, digest).await
        })
        .await
    }

    async fn read(
        &self,
        repo: &RepoName,
        digest: &Digest,
        range: Option<Range<u64>>,
    ) -> StoreResult<Option<Bytes>> {
        self.follow(repo, digest, |path| {
            let range = range.clone();
            async move { read_verified(&*self.driver, &self.verifier, &path, digest, range).await }
        })
        .await
    }

    async fn mount(&self, from: &RepoName, to: &RepoName, digest: &Digest) -> StoreResult<bool> {
        let Some(source) = self.resolve(from, digest).await? else {
            return Ok(false);
        };
        if self
            .verifier
            .check(&*self.driver, &source, digest)
            .await?
            .is_none()
        {
            return Ok(false);
        }
        // Already held with good bytes (possibly as the original itself):
        // recording it again would count one holder twice.
        if self.stat(to, digest).await?.is_some() {
            return Ok(true);
        }
        let path = repo_blob(to, digest);
        if is_empty_digest(digest) {
            self.driver
                .put(&path, Bytes::new(), PutMode::Overwrite)
                .await?;
            return Ok(true);
        }
        let mut entry = self.entry(digest).await?;
        if entry.original.is_none() {
            entry.original = Some(source.to_string());
        }
        self.place_duplicate(&source, &path).await?;
        entry.duplicates.insert(path.to_string());
        self.save(digest, &entry).await?;
        Ok(true)
    }

    async fn remove(&self, repo: &RepoName, digest: &Digest) -> StoreResult<()> {
        let path = repo_blob(repo, digest);
        let mut entry = self.entry(digest).await?;
        if entry.original.as_deref() == Some(path.as_str()) {
            entry.original = None;
            // Promote a duplicate. On object stores its marker becomes the
            // bytes first (copy over it), and only then the original goes.
            if let Some(dup) = entry.duplicates.pop_first() {
                let dup_path = path_of(&dup)?;
                if !self.local {
                    self.driver
                        .copy(&path, &dup_path, PutMode::Overwrite)
                        .await?;
                }
                entry.original = Some(dup);
            }
            self.save(digest, &entry).await?;
        } else if entry.duplicates.remove(path.as_str()) {
            self.save(digest, &entry).await?;
        }
        // Forgotten first: see `BlobstoreLayout::sweep`.
        self.verifier.forget(&path);
        self.driver.delete(&path).await?;
        self.driver.sync_dir(path.parent().as_ref()).await?;
        Ok(())
    }

    async fn repo_digests(&self, repo: &RepoName) -> StoreResult<Vec<Digest>> {
        let dir = repo_blobs_dir(repo);
        let paths = self.driver.list(Some(&dir)).await?;
        Ok(parse_blob_paths(&dir, &paths))
    }

    async fn blobstore_digests(&self) -> StoreResult<Vec<Digest>> {
        Ok(Vec::new())
    }

    async fn sweep(&self, _digest: &Digest) -> StoreResult<Option<u64>> {
        Ok(None)
    }

    async fn recorded_holders(&self, digest: &Digest) -> StoreResult<u64> {
        let entry = self.entry(digest).await?;
        Ok(u64::from(entry.original.is_some()) + entry.duplicates.len() as u64)
    }

    /// The dedupe index is a second truth beside the disk, and no write
    /// order keeps the two together through a power cut: a blob placed
    /// before its entry is committed, or an entry dropped before its file
    /// is unlinked, leaves a holder the index does not know (zot rebuilds
    /// its index at startup for the same reason). So the store reconciles
    /// on open: every digest whose recorded holders differ from the paths
    /// on disk gets an entry rebuilt from the disk, keeping a recorded
    /// original that still verifies, else the first holder whose bytes do.
    /// A marker is never made an original, so no stub is ever served, and
    /// an original the index lost is found again instead of its markers
    /// being taken for lost data (zot #2625). Costs one listing of every
    /// repository's blobs and one scan of the index; bytes are hashed only
    /// where the two disagree.
    async fn recover(&self) -> StoreResult<()> {
        let mut on_disk: BTreeMap<Digest, BTreeSet<String>> = BTreeMap::new();
        for repo in crate::store::list_repos(&*self.driver).await? {
            for d in self.repo_digests(&repo).await? {
                if !is_empty_digest(&d) {
                    on_disk
                        .entry(d.clone())
                        .or_default()
                        .insert(repo_blob(&repo, &d).to_string());
                }
            }
        }
        let mut recorded: BTreeMap<Digest, DedupeEntry> = BTreeMap::new();
        for (key, value) in crate::meta::scan_all(&*self.meta, Table::DEDUPE, b"").await? {
            let d = std::str::from_utf8(&key)
                .ok()
                .and_then(|k| Digest::parse(k).ok())
                .ok_or_else(|| {
                    StoreError::Corrupt(format!(
                        "dedupe index key {:?} is not a digest",
                        String::from_utf8_lossy(&key)
                    ))
                })?;
            let entry = serde_json::from_slice(&value)
                .map_err(|e| StoreError::Corrupt(format!("dedupe index entry for {d}: {e}")))?;
            recorded.insert(d, entry);
        }
        let digests: BTreeSet<&Digest> = on_disk.keys().chain(recorded.keys()).collect();
        let no_paths = BTreeSet::new();
        for d in digests {
            let paths = on_disk.get(d).unwrap_or(&no_paths);
            let entry = recorded.get(d).cloned().unwrap_or_default();
            let listed: BTreeSet<&String> =
                entry.original.iter().chain(&entry.duplicates).collect();
            if listed == paths.iter().collect() {
                continue;
            }
            let mut original = None;
            let candidates = entry
                .original
                .iter()
                .filter(|o| paths.contains(*o))
                .chain(paths.iter().filter(|p| Some(*p) != entry.original.as_ref()));
            for candidate in candidates {
                let path = path_of(candidate)?;
                if self
                    .verifier
                    .check(&*self.driver, &path, d)
                    .await?
                    .is_some()
                {
                    original = Some(candidate.clone());
                    break;
                }
            }
            let duplicates = paths
                .iter()
                .filter(|p| Some(*p) != original.as_ref())
                .cloned()
                .collect();
            self.save(
                d,
                &DedupeEntry {
                    original,
                    duplicates,
                },
            )
            .await?;
        }
        Ok(())
    }
}
