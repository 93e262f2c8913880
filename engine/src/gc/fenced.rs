//! The `_blobstore` sweep of several instances (DESIGN §15, invariant 13):
//! one instance sweeps at a time, under a lease whose epoch fences every
//! metadata write of the sweep, and each deletion is announced by a
//! tombstone before the final re-check ([`sweep_tombstone`]).
//!
//! Per digest, under its lock: (1) write the tombstone, fenced by the
//! epoch (a sweeper whose lease was taken over stops here); (2) re-check
//! that no repository holds the digest (a reference written before the
//! tombstone is seen; one after it is refused); (3) delete the bytes;
//! (4) remove the tombstone. A sweeper that dies between (1) and (4) leaves
//! its tombstone: pushes of that digest are refused until the next lease
//! holder, whose epoch is higher, finishes that deletion first thing.
//!
//! What the fence cannot cover: the object store's DELETE itself carries no
//! condition, so a sweeper paused between (2) and (3) for longer than its
//! lease, while the next holder finishes its tombstone and a client pushes
//! the digest again, would delete the new bytes. The lease's time to live
//! is what bounds that window; a store with conditional deletes would
//! close it.
//!
//! [`sweep_tombstone`]: crate::layout::sweep_tombstone

use std::time::Duration;

use crate::digest::Digest;
use crate::error::{StoreError, StoreResult};
use crate::layout::{SWEEP_TOMBSTONES, sweep_tombstone};
use crate::lease::Lease;
use crate::lock::{Intent, LockError};
use crate::meta::{Batch, MetaError, Table, scan_all};
use crate::store::Store;
use crate::sync::Instant;

use super::{GcKind, GcReport};

const JOB: &str = "gc-sweep";

/// The lease a sweep holds, renewed as it goes.
#[derive(Debug)]
pub(crate) struct SweepLease {
    lease: Lease,
    renewed: Instant,
    /// Its time to live ([`super::GcOptions::sweep_lease`]); renewed at half.
    ttl: Duration,
}

fn lost(e: MetaError) -> StoreError {
    match e {
        MetaError::Conflict { .. } => StoreError::Lock(LockError::Lost {
            service: "gc-sweep lease",
            message: "another instance took the sweep over (a newer epoch)".into(),
        }),
        e => e.into(),
    }
}

impl SweepLease {
    pub(crate) async fn release(self, meta: &dyn crate::meta::MetaStore) -> StoreResult<()> {
        self.lease.release(meta).await
    }
}

impl Store {
    /// The sweep's lease, or `None` while another instance holds it.
    pub(super) async fn take_sweep_lease(&self, ttl: Duration) -> StoreResult<Option<SweepLease>> {
        Ok(Lease::acquire(self.meta(), JOB, &self.instance_name(), ttl)
            .await?
            .map(|lease| SweepLease {
                lease,
                renewed: Instant::now(),
                ttl,
            }))
    }

    /// Deletions that holders of earlier epochs announced and did not
    /// finish (they died): finished now, each re-checked as any sweep is.
    pub(super) async fn finish_stale_sweeps(
        &self,
        lease: &SweepLease,
        report: &mut GcReport,
    ) -> StoreResult<()> {
        for (key, epoch) in scan_all(self.meta(), Table::GC, SWEEP_TOMBSTONES).await? {
            let stale = std::str::from_utf8(&epoch)
                .ok()
                .and_then(|e| e.parse::<u64>().ok())
                .is_none_or(|e| e < lease.lease.epoch());
            let digest = std::str::from_utf8(&key[SWEEP_TOMBSTONES.len()..])
                .ok()
                .and_then(|d| Digest::parse(d).ok());
            let (true, Some(d)) = (stale, digest) else {
                continue;
            };
            let guard = self.lock(Intent::blobstore_sweep(&d)).await?;
            guard.check()?;
            if let Some(size) = self.layout().sweep(&d).await? {
                report.add(GcKind::BlobstoreBlob, None, Some(&d), size);
            }
            self.meta()
                .commit(lease.lease.fence(Batch::new().delete(Table::GC, key)))
                .await
                .map_err(lost)?;
        }
        Ok(())
    }

    /// Steps (1)-(4) of the module docs for `d`, under its lock (taken by
    /// the caller); the bytes freed, if deleted.
    pub(super) async fn sweep_announced(
        &self,
        lease: &mut SweepLease,
        d: &Digest,
    ) -> StoreResult<Option<u64>> {
        if lease.renewed.elapsed() > lease.ttl / 2 {
            lease.lease.renew(self.meta()).await.map_err(|e| match e {
                StoreError::Meta(e) => lost(e),
                e => e,
            })?;
            lease.renewed = Instant::now();
        }
        let tombstone = sweep_tombstone(d);
        let epoch = lease.lease.epoch().to_string();
        self.meta()
            .commit(
                lease
                    .lease
                    .fence(Batch::new().put(Table::GC, tombstone.clone(), epoch)),
            )
            .await
            .map_err(lost)?;
        let swept = self.layout().sweep(d).await?;
        self.meta()
            .commit(lease.lease.fence(Batch::new().delete(Table::GC, tombstone)))
            .await
            .map_err(lost)?;
        Ok(swept)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;
    use crate::driver::ObjectDriver;
    use crate::gc::GcOptions;
    use crate::lock::{LockManager, LockPolicy};
    use crate::meta::{MemoryMeta, MetaStore};
    use crate::oci::names::RepoName;
    use crate::{LayoutKind, StoreConfig};

    /// A sweeper died after announcing a deletion: pushes of that digest
    /// are refused (its bytes may be gone any moment) until the next
    /// sweep, under a newer epoch, finishes the deletion; then a push
    /// uploads the bytes again, and they are there to read (not a
    /// remembered "present" from before the sweep).
    #[tokio::test]
    async fn a_dead_sweepers_announcement_is_finished_by_the_next_lease() {
        let meta = Arc::new(MemoryMeta::new());
        let store = Store::open_shared(
            Arc::new(ObjectDriver::in_memory()),
            meta.clone(),
            StoreConfig {
                layout: LayoutKind::Blobstore,
                policy: LockPolicy::Striped,
            },
            Arc::new(LockManager::new(LockPolicy::Striped)),
        )
        .await
        .unwrap();
        let (a, b) = (RepoName::parse("a").unwrap(), RepoName::parse("b").unwrap());
        let data = Bytes::from_static(b"layer");
        let d = Digest::sha256(&data);
        store.push_blob(&a, &d, data.clone()).await.unwrap();
        store.delete_blob(&a, &d).await.unwrap(); // unheld, bytes still there

        let dead = Lease::acquire(&*meta, JOB, "dead", Duration::ZERO)
            .await
            .unwrap()
            .unwrap();
        meta.commit(dead.fence(Batch::new().put(
            Table::GC,
            sweep_tombstone(&d),
            dead.epoch().to_string(),
        )))
        .await
        .unwrap();
        let refused = store.push_blob(&b, &d, data.clone()).await;
        assert!(
            matches!(refused, Err(StoreError::Meta(MetaError::Conflict { .. }))),
            "a push during an announced deletion: {refused:?}"
        );

        let report = store.gc(GcOptions::new(Duration::ZERO)).await.unwrap();
        assert_eq!(report.count(GcKind::BlobstoreBlob), 1, "{report:?}");
        assert!(
            scan_all(&*meta, Table::GC, SWEEP_TOMBSTONES)
                .await
                .unwrap()
                .is_empty()
        );
        store.push_blob(&b, &d, data.clone()).await.unwrap();
        assert_eq!(store.get_blob(&b, &d).await.unwrap(), data);
    }
}
