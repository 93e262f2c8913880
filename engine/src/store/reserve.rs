//! A full disk must not lock the registry (DESIGN §7, invariant 11): tag and
//! manifest deletes and GC work on a completely full disk, and writes work
//! again, in the same process, once space is free.
//!
//! # Why a reserve, and not "removing needs no new space"
//!
//! Removing a tag or a manifest, and GC's pruning, rewrite `index.json`,
//! and a rewrite is crash-safe only as a new file renamed over the old one
//! (the driver's commit protocol): old and new exist together for a moment,
//! so a shrinking rewrite still needs new space. Nothing can be freed
//! first: a tag delete frees nothing at all, and GC freeing blobs before
//! the rows that reference them are gone would leave dangling rows behind
//! a crash. Rewriting in place is not crash-safe. So removal does need a
//! little space, and it is kept aside for it: a reserve file,
//! `_ocistore/reserve`, released when a removal's write finds the disk
//! full, and re-created by that removal as soon as its write is in (still
//! under its lock), else before the next client write is admitted or at
//! the end of a GC pass.
//!
//! Re-creating it before admitting a write means that space freed by GC
//! (or by anyone) goes to the reserve first, so the next removal on a full
//! disk works again; a write the reserve cannot be re-created for fails
//! with "no space" and changes nothing, as any write on a full disk does.
//!
//! What it covers: a rewrite of an `index.json` up to the reserve's size
//! (rows are ~200 bytes, so [`DEFAULT_RESERVE`] holds some 5,000 rows), once
//! per release; a larger index, or metadata writes of a metadata store on
//! the same full disk, are not covered. The reserve is opt-in
//! ([`Store::keep_reserve`]): a store without one behaves as before.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;

use super::Store;
use crate::driver::{DriverError, DriverPath, PutMode};
use crate::error::{StoreError, StoreResult};
use crate::oci::names::RepoName;

/// Where the reserve lives, inside the store's hidden namespace.
pub const RESERVE_PATH: &str = "_ocistore/reserve";

/// A reserve that covers the rewrite of a few thousand index rows.
pub const DEFAULT_RESERVE: u64 = 1 << 20;

/// How often a removal on a full disk tries its write again, waiting a
/// little longer each time (1, 2, 4, ... ms): writes admitted before it
/// released the reserve may still hold the space it freed, until they end.
const RELEASE_RETRIES: u32 = 8;

#[derive(Debug, Default)]
pub(crate) struct Reserve {
    /// Bytes to keep aside; 0 keeps none.
    size: AtomicU64,
    /// The reserve file is in place, as far as this process knows.
    held: AtomicBool,
    /// Removals that found the disk full and are retrying: no client write
    /// is admitted meanwhile, so none re-creates the reserve with the space
    /// that was freed for them.
    removing: AtomicU64,
}

fn reserve_path() -> DriverPath {
    DriverPath::new(RESERVE_PATH).expect("valid")
}

impl Store {
    /// Keeps `bytes` of the disk aside (`_ocistore/reserve`) for removals
    /// to use when the disk is full; 0 gives any reserve back. Created now
    /// if there is room, otherwise before the next write that finds room.
    pub async fn keep_reserve(&self, bytes: u64) -> StoreResult<()> {
        let reserve = &self.inner.reserve;
        reserve.size.store(bytes, Ordering::SeqCst);
        reserve.held.store(false, Ordering::SeqCst);
        if bytes == 0 {
            let path = reserve_path();
            self.driver().delete(&path).await?;
            return Ok(self.driver().sync_dir(path.parent().as_ref()).await?);
        }
        self.restore_reserve().await.map(|_| ())
    }

    /// Whether the reserve is in place (always true without one).
    pub fn reserve_held(&self) -> bool {
        let reserve = &self.inner.reserve;
        reserve.size.load(Ordering::SeqCst) == 0 || reserve.held.load(Ordering::SeqCst)
    }

    /// Puts the reserve back if it is missing; false if the disk has no
    /// room for it yet.
    pub(crate) async fn restore_reserve(&self) -> StoreResult<bool> {
        let reserve = &self.inner.reserve;
        let size = reserve.size.load(Ordering::SeqCst);
        if size == 0 || reserve.held.load(Ordering::SeqCst) {
            return Ok(true);
        }
        let path = reserve_path();
        match self.driver().stat(&path).await {
            Ok(meta) if meta.size >= size => {
                reserve.held.store(true, Ordering::SeqCst);
                return Ok(true);
            }
            Ok(_) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
        // Zeros are written, not a sparse file, so the space is really
        // taken (on tmpfs as on a disk).
        let zeros = Bytes::from(vec![0u8; usize::try_from(size).unwrap_or(usize::MAX)]);
        match self.driver().put(&path, zeros, PutMode::Overwrite).await {
            Ok(()) => {
                reserve.held.store(true, Ordering::SeqCst);
                Ok(true)
            }
            Err(e) if e.is_no_space() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Before a client write: the reserve must be in place first, so a
    /// full disk keeps room for removals. The write is refused with "no
    /// space" while it cannot be.
    pub(crate) async fn admit_write(&self) -> StoreResult<()> {
        let removing = self.inner.reserve.removing.load(Ordering::SeqCst) > 0;
        if !removing && (self.reserve_held() || self.restore_reserve().await?) {
            return Ok(());
        }
        Err(StoreError::Storage(DriverError::NoSpace {
            driver: self.driver().name(),
        }))
    }

    /// Gives the reserve's space back to the disk; false if there was none.
    async fn release_reserve(&self) -> StoreResult<bool> {
        let reserve = &self.inner.reserve;
        if reserve.size.load(Ordering::SeqCst) == 0 {
            return Ok(false);
        }
        let path = reserve_path();
        let existed = match self.driver().stat(&path).await {
            Ok(_) => true,
            Err(e) if e.is_not_found() => false,
            Err(e) => return Err(e.into()),
        };
        reserve.held.store(false, Ordering::SeqCst);
        if existed {
            self.driver().delete(&path).await?;
            self.driver().sync_dir(path.parent().as_ref()).await?;
        }
        Ok(existed)
    }

    /// Rewrites `repo`'s index.json for a removal (a tag or manifest delete,
    /// GC's pruning): on a full disk, the reserve is released for it.
    pub(crate) async fn write_index_bytes_removing(
        &self,
        repo: &RepoName,
        body: Bytes,
        basis: &super::IndexBasis,
        held: &super::StoreGuard,
    ) -> StoreResult<()> {
        let first = self
            .write_index_bytes(repo, body.clone(), basis, held)
            .await;
        let reserve = &self.inner.reserve;
        if !first.as_ref().is_err_and(StoreError::is_no_space)
            || reserve.size.load(Ordering::SeqCst) == 0
        {
            return first;
        }
        // Dropped on every way out, a cancelled future's included: a count
        // left behind would refuse every write from then on.
        struct Removing<'a>(&'a AtomicU64);
        impl Drop for Removing<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        reserve.removing.fetch_add(1, Ordering::SeqCst);
        let _removing = Removing(&reserve.removing);
        let mut result = first;
        for attempt in 0..RELEASE_RETRIES {
            // Another removal may have released it already: then wait for
            // the writes in flight to end instead.
            if !self.release_reserve().await? {
                crate::sync::sleep(std::time::Duration::from_millis(1 << attempt)).await;
            }
            result = self
                .write_index_bytes(repo, body.clone(), basis, held)
                .await;
            if !result.as_ref().is_err_and(StoreError::is_no_space) {
                break;
            }
        }
        if result.is_ok() {
            // The reserve back at once, from the space the release left
            // (the rewrite shrank the index): writes admitted before the
            // release and waiting on this removal's lock would otherwise
            // take it when the lock goes, and every removal after would
            // find neither space nor reserve until a GC pass ended. Its
            // failure is the next admission's to report: this removal is
            // done.
            let _ = self.restore_reserve().await;
        }
        result
    }
}
