//! The proposal's layout: `_blobstore/blobs/<alg>/<hex>` holds the only copy.
//!
//! Local drivers (hard links): each repository holds a hard link, so every
//! repository directory is still a valid OCI layout, and the link count is
//! the reference truth (links - 1 = repositories holding the digest). No
//! second record exists for a crash to split from the first.
//!
//! Object drivers (no links): repositories hold no object at all. Which
//! repository holds which digest is two rows per pair in the metadata
//! store's `refs` table, written in one batch:
//! `d\0<digest>\0<repo>` (who holds a digest: the GC sweep's question) and
//! `r\0<repo>\0<digest>` (what a repo holds: GC and export's question).
//!
//! Write order, everywhere: bytes into `_blobstore` (durable), then the
//! repository's link or rows. A crash between leaves an unreferenced blob
//! for GC to sweep, never a reference without bytes.

use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use super::verify::read_verified;
use super::{
    BlobLayout, LayoutKind, Source, Verifier, blobstore_blob, blobstore_dir, holders_each,
    parse_blob_paths, place, repo_blob, repo_blobs_dir,
};
use crate::digest::Digest;
use crate::driver::{Driver, DriverPath};
use crate::error::StoreResult;
use crate::meta::{Batch, MetaStore, Table, for_each_key, scan_keys};
use crate::oci::names::RepoName;

/// The blobstore layout on any driver.
#[derive(Debug)]
pub struct BlobstoreLayout {
    driver: Arc<dyn Driver>,
    meta: Arc<dyn MetaStore>,
    verifier: Verifier,
    /// Hard links available: link counts are the reference truth.
    local: bool,
    /// One of several instances: references respect sweep tombstones.
    shared: bool,
}

// Reference rows, one per (repository, digest), in both orders:
// `d\0<digest>\0<repo>` answers "who holds this digest" (the sweep),
// `r\0<repo>\0<digest>` answers "what does this repository hold" (GC).
// Built by hand rather than with `format!`: GC builds one per blob it visits.

fn ref_key(tag: u8, first: &[&str], second: &[&str]) -> Vec<u8> {
    let len = |parts: &[&str]| parts.iter().map(|p| p.len()).sum::<usize>();
    let mut key = Vec::with_capacity(4 + len(first) + len(second));
    key.extend_from_slice(&[tag, 0]);
    first
        .iter()
        .for_each(|p| key.extend_from_slice(p.as_bytes()));
    key.push(0);
    second
        .iter()
        .for_each(|p| key.extend_from_slice(p.as_bytes()));
    key
}

pub(crate) fn ref_by_digest(d: &Digest, repo: &RepoName) -> Vec<u8> {
    ref_key(b'd', &[d.algorithm().prefix(), &d.hex()], &[repo.as_str()])
}

pub(crate) fn ref_by_repo(repo: &RepoName, d: &Digest) -> Vec<u8> {
    ref_key(b'r', &[repo.as_str()], &[d.algorithm().prefix(), &d.hex()])
}

/// With several instances, a sweep announces that it is about to delete
/// `d`'s bytes with this row (its lease's epoch as the value) before its
/// final re-check, and removes it after the delete; a new reference to `d`
/// is refused while it exists. The announcement and the reference are each
/// one atomic batch, so whichever lands second sees the first: the sweep's
/// re-check finds the reference and keeps the bytes, or the push is
/// refused (and retried after the sweep, re-uploading the bytes).
pub(crate) fn sweep_tombstone(d: &Digest) -> Vec<u8> {
    format!("sweep\0{d}").into_bytes()
}

/// The prefix of every [`sweep_tombstone`].
pub(crate) const SWEEP_TOMBSTONES: &[u8] = b"sweep\0";

/// The digest a reference key spells (`<alg>:<hex>`), if it is one.
fn digest_in(part: &[u8]) -> Option<Digest> {
    Digest::parse(std::str::from_utf8(part).ok()?).ok()
}

impl BlobstoreLayout {
    /// The layout for one of several instances over one object store.
    pub fn new_shared(driver: Arc<dyn Driver>, meta: Arc<dyn MetaStore>) -> BlobstoreLayout {
        let layout = BlobstoreLayout::new(driver, meta);
        BlobstoreLayout {
            verifier: layout.verifier.shared(),
            shared: true,
            ..layout
        }
    }

    pub fn new(driver: Arc<dyn Driver>, meta: Arc<dyn MetaStore>) -> BlobstoreLayout {
        let local = driver.capabilities().hard_links;
        BlobstoreLayout {
            verifier: Verifier::new(&*driver),
            driver,
            meta,
            local,
            shared: false,
        }
    }

    async fn has_ref(&self, repo: &RepoName, d: &Digest) -> StoreResult<bool> {
        Ok(self
            .meta
            .get(Table::REFS, &ref_by_repo(repo, d))
            .await?
            .is_some())
    }

    /// Makes `_blobstore` hold valid bytes of `d`, from `source` if it does
    /// not already (a dedupe hit costs one stat while the verifier remembers).
    /// Returns whether `source` was consumed.
    async fn ensure_blobstore(&self, d: &Digest, source: Source<'_>) -> StoreResult<bool> {
        let bs = blobstore_blob(d);
        let driver = &*self.driver;
        if self.verifier.check(driver, &bs, d).await?.is_some() {
            return Ok(false);
        }
        // Absent, or present with bytes that do not hash to `d` (corrupt):
        // the new, verified bytes replace them.
        place(driver, &self.verifier, d, &bs, &source).await
    }

    /// Points `repo` at the blobstore copy of `d` (which must be valid).
    async fn add_holder(&self, repo: &RepoName, d: &Digest) -> StoreResult<()> {
        if !self.local {
            let mut batch = Batch::new()
                .put(Table::REFS, ref_by_digest(d, repo), Vec::new())
                .put(Table::REFS, ref_by_repo(repo, d), Vec::new());
            if self.shared {
                // Not while a sweep has announced this digest's deletion:
                // its bytes may be going (see `sweep_tombstone`).
                batch = batch.expect(Table::GC, sweep_tombstone(d), None);
            }
            return Ok(self.meta.commit(batch).await?);
        }
        let (bs, link) = (blobstore_blob(d), repo_blob(repo, d));
        let driver = &*self.driver;
        match driver.hard_link(&bs, &link).await {
            Ok(()) => {}
            Err(e) if e.is_already_exists() => {
                if self.verifier.check(driver, &link, d).await?.is_some() {
                    return Ok(()); // already held, with good bytes
                }
                // A stale link to bytes that no longer verify: re-point it.
                driver.delete(&link).await?;
                driver.hard_link(&bs, &link).await?;
            }
            Err(e) => return Err(e.into()),
        }
        driver.sync_dir(link.parent().as_ref()).await?;
        let size = driver.stat(&link).await?.size;
        self.verifier.trust_written(driver, &link, d, size).await
    }
}

#[async_trait]
impl BlobLayout for BlobstoreLayout {
    fn kind(&self) -> LayoutKind {
        LayoutKind::Blobstore
    }

    async fn ingest(
        &self,
        repo: &RepoName,
        digest: &Digest,
        staged: &DriverPath,
    ) -> StoreResult<()> {
        let consumed = self
            .ensure_blobstore(digest, Source::Staged(staged))
            .await?;
        self.add_holder(repo, digest).await?;
        if !consumed {
            self.driver.delete(staged).await?;
        }
        Ok(())
    }

    async fn ingest_bytes(&self, repo: &RepoName, digest: &Digest, data: Bytes) -> StoreResult<()> {
        self.ensure_blobstore(digest, Source::Bytes(data)).await?;
        self.add_holder(repo, digest).await
    }

    async fn stat(&self, repo: &RepoName, digest: &Digest) -> StoreResult<Option<u64>> {
        if self.local {
            return self
                .verifier
                .check(&*self.driver, &repo_blob(repo, digest), digest)
                .await;
        }
        if !self.has_ref(repo, digest).await? {
            return Ok(None);
        }
        self.verifier
            .check(&*self.driver, &blobstore_blob(digest), digest)
            .await
    }

    async fn read(
        &self,
        repo: &RepoName,
        digest: &Digest,
        range: Option<Range<u64>>,
    ) -> StoreResult<Option<Bytes>> {
        let path = if self.local {
            repo_blob(repo, digest)
        } else if self.has_ref(repo, digest).await? {
            blobstore_blob(digest)
        } else {
            return Ok(None);
        };
        read_verified(&*self.driver, &self.verifier, &path, digest, range).await
    }

    async fn mount(&self, from: &RepoName, to: &RepoName, digest: &Digest) -> StoreResult<bool> {
        if self.stat(from, digest).await?.is_none() {
            return Ok(false);
        }
        if self.local {
            // `from` holds a good link; if the blobstore name is missing or
            // bad, restore it from that link first.
            let bs = blobstore_blob(digest);
            if self
                .verifier
                .check(&*self.driver, &bs, digest)
                .await?
                .is_none()
            {
                self.driver.delete(&bs).await?;
                self.driver.hard_link(&repo_blob(from, digest), &bs).await?;
                self.driver.sync_dir(bs.parent().as_ref()).await?;
            }
        }
        self.add_holder(to, digest).await?;
        Ok(true)
    }

    async fn remove(&self, repo: &RepoName, digest: &Digest) -> StoreResult<()> {
        if self.local {
            let link = repo_blob(repo, digest);
            // Forgotten first: a delete that fails after taking effect must
            // not leave the cache vouching for a name that is gone.
            self.verifier.forget(&link);
            self.driver.delete(&link).await?;
            self.driver.sync_dir(link.parent().as_ref()).await?;
            return Ok(());
        }
        let batch = Batch::new()
            .delete(Table::REFS, ref_by_digest(digest, repo))
            .delete(Table::REFS, ref_by_repo(repo, digest));
        Ok(self.meta.commit(batch).await?)
    }

    async fn repo_digests(&self, repo: &RepoName) -> StoreResult<Vec<Digest>> {
        if self.local {
            let dir = repo_blobs_dir(repo);
            let paths = self.driver.list(Some(&dir)).await?;
            return Ok(parse_blob_paths(&dir, &paths));
        }
        let prefix = ref_key(b'r', &[repo.as_str()], &[]);
        let mut digests = Vec::new();
        for_each_key(&*self.meta, Table::REFS, &prefix, |k| {
            digests.extend(digest_in(&k[prefix.len()..]));
        })
        .await?;
        Ok(digests)
    }

    async fn blobstore_digests(&self) -> StoreResult<Vec<Digest>> {
        let dir = blobstore_dir();
        let paths = self.driver.list(Some(&dir)).await?;
        Ok(parse_blob_paths(&dir, &paths))
    }

    async fn sweep(&self, digest: &Digest) -> StoreResult<Option<u64>> {
        // The final re-check (Quay does the same under its per-digest lock):
        // a push that linked or recorded this digest since the candidate
        // list was made wins, and nothing is deleted. MUTATION (b) removes
        // it, for the loom suite only.
        #[cfg(not(ocistore_mutation = "sweep_without_recheck"))]
        if self.recorded_holders(digest).await? > 0 {
            return Ok(None);
        }
        let bs = blobstore_blob(digest);
        let size = match self.driver.stat(&bs).await {
            Ok(meta) => meta.size,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        // No repository holds it, so this is its only name: forget just it
        // (distrust() walks the whole cache, and a sweep deletes thousands).
        // Forgotten before the delete: an object store's DELETE can fail
        // after taking effect, and a remembered stamp is trusted without a
        // stat there, so the next push of the digest would skip writing the
        // bytes and acknowledge a blob that is gone.
        self.verifier.forget(&bs);
        self.driver.delete(&bs).await?;
        self.driver.sync_dir(bs.parent().as_ref()).await?;
        Ok(Some(size))
    }

    #[cfg(ocistore_mutation = "split_dedupe")]
    async fn hold_existing(&self, repo: &RepoName, digest: &Digest) -> StoreResult<()> {
        self.add_holder(repo, digest).await
    }

    /// On reference rows, one scan of the by-digest rows counts every
    /// digest's holders (a scan per digest made a sweep O(n log n) in
    /// lookups). On hard links the count is each file's link count: one stat
    /// each, as in the default.
    async fn blobstore_holders(&self) -> StoreResult<Vec<(Digest, u64)>> {
        let digests = self.blobstore_digests().await?;
        if self.local {
            return holders_each(self, digests).await;
        }
        // Both sides in digest order (`<alg>:<hex>` sorts as `Digest` does,
        // and a scan returns keys in order), so counting is one merge, with
        // no table to look each row up in. A count too low could only make
        // a candidate, which `sweep` re-checks under the digest's lock.
        let mut holders: Vec<(Digest, u64)> = digests.into_iter().map(|d| (d, 0)).collect();
        holders.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut at = 0;
        for_each_key(&*self.meta, Table::REFS, &[b'd', 0], |key| {
            // `d \0 <alg>:<hex> \0 <repo>`
            let rest = &key[2..];
            let Some(d) = rest
                .iter()
                .position(|&b| b == 0)
                .and_then(|end| digest_in(&rest[..end]))
            else {
                return;
            };
            while holders.get(at).is_some_and(|(h, _)| *h < d) {
                at += 1;
            }
            if let Some((h, n)) = holders.get_mut(at)
                && *h == d
            {
                *n += 1;
            }
        })
        .await?;
        Ok(holders)
    }

    async fn recorded_holders(&self, digest: &Digest) -> StoreResult<u64> {
        if self.local {
            return match self.driver.stat(&blobstore_blob(digest)).await {
                Ok(meta) => Ok(meta.links.unwrap_or(1).saturating_sub(1)),
                Err(e) if e.is_not_found() => Ok(0),
                Err(e) => Err(e.into()),
            };
        }
        let prefix = ref_key(b'd', &[digest.algorithm().prefix(), &digest.hex()], &[]);
        Ok(scan_keys(&*self.meta, Table::REFS, &prefix).await?.len() as u64)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::driver::{ObjectDriver, SimDisk, SimDriver};
    use crate::meta::MemoryMeta;

    /// The sweep's one-scan count agrees with asking digest by digest, on
    /// reference rows and on hard links: held twice, once, and by nobody.
    #[tokio::test]
    async fn holders_counted_in_one_scan_match_one_by_one() {
        let drivers: [Arc<dyn Driver>; 2] = [
            Arc::new(ObjectDriver::in_memory()),
            Arc::new(SimDriver::on(SimDisk::new())),
        ];
        for driver in drivers {
            let layout = BlobstoreLayout::new(driver, Arc::new(MemoryMeta::new()));
            let (a, b) = (
                RepoName::parse("a").unwrap(),
                RepoName::parse("b/c").unwrap(),
            );
            let blob = |s: &'static str| {
                (
                    Digest::sha256(s.as_bytes()),
                    Bytes::from_static(s.as_bytes()),
                )
            };
            let (twice, once, orphan) = (blob("twice"), blob("once"), blob("orphan"));
            for (repo, (d, bytes)) in [(&a, &twice), (&b, &twice), (&b, &once), (&a, &orphan)] {
                layout.ingest_bytes(repo, d, bytes.clone()).await.unwrap();
            }
            layout.remove(&a, &orphan.0).await.unwrap();

            // (one scan, one digest at a time), both sorted
            let counts = async || {
                let mut bulk = layout.blobstore_holders().await.unwrap();
                let mut each = holders_each(&layout, layout.blobstore_digests().await.unwrap())
                    .await
                    .unwrap();
                bulk.sort();
                each.sort();
                (bulk, each)
            };
            let (bulk, each) = counts().await;
            assert_eq!(bulk, each, "local: {}", layout.local);
            let mut expected = vec![(twice.0, 2), (once.0, 1), (orphan.0, 0)];
            expected.sort();
            assert_eq!(bulk, expected, "local: {}", layout.local);

            // Many digests, in no order of holders: the count is a merge of
            // two sorted sequences, so held and unheld ones interleave.
            for i in 0..40u32 {
                let bytes = Bytes::from(i.to_le_bytes().to_vec());
                let d = Digest::sha256(&bytes);
                for repo in [&a, &b].into_iter().take((i % 3) as usize) {
                    layout.ingest_bytes(repo, &d, bytes.clone()).await.unwrap();
                }
                if i % 3 == 0 {
                    layout.ingest_bytes(&a, &d, bytes.clone()).await.unwrap();
                    layout.remove(&a, &d).await.unwrap();
                }
            }
            let (bulk, each) = counts().await;
            assert_eq!(bulk.len(), 43);
            assert_eq!(bulk, each, "local: {}", layout.local);
        }
    }
}
