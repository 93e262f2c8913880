//! Leases for the singleton jobs of several instances (DESIGN §15): the
//! `_blobstore` sweep and the in-place migration run in one instance at a
//! time, under a lease kept in the shared metadata store.
//!
//! A lease has an **epoch** (fencing token), raised each time the lease
//! changes hands. Every write the job makes on the lease's authority is a
//! metadata batch that carries [`Lease::fence`]: a condition that the
//! epoch is still its own. An instance paused past its lease (a long GC
//! stop, a frozen VM) wakes with a stale view; its next fenced write finds
//! a newer epoch and fails, so it cannot act on that view.
//!
//! Stored in [`Table::CONFIG`]: `lease/<job>` = `<epoch> <holder>
//! <expires, ms since the epoch>` while held, and `lease/<job>/epoch` =
//! the last epoch granted, kept after release so epochs only grow.

use std::time::{Duration, SystemTime};

use crate::error::StoreResult;
use crate::gc::millis;
use crate::meta::{Batch, MetaError, MetaStore, Table};

/// A lease this instance holds.
#[derive(Debug, Clone)]
pub(crate) struct Lease {
    key: Vec<u8>,
    epoch: u64,
    holder: String,
    /// The stored value, what renewals and the release expect.
    value: Vec<u8>,
    ttl: Duration,
}

fn epoch_key(key: &[u8]) -> Vec<u8> {
    [key, b"/epoch"].concat()
}

/// `(epoch, holder, expires_ms)` of a stored lease.
fn parse(value: &[u8]) -> Option<(u64, String, u64)> {
    let text = std::str::from_utf8(value).ok()?;
    let mut parts = text.splitn(3, ' ');
    let epoch = parts.next()?.parse().ok()?;
    let holder = parts.next()?.to_owned();
    let expires = parts.next()?.parse().ok()?;
    Some((epoch, holder, expires))
}

impl Lease {
    /// Takes the lease on `job` for `ttl` if it is free or expired (or
    /// already this `holder`'s), raising its epoch; `None` if another
    /// instance holds it.
    pub(crate) async fn acquire(
        meta: &dyn MetaStore,
        job: &str,
        holder: &str,
        ttl: Duration,
    ) -> StoreResult<Option<Lease>> {
        let key = format!("lease/{job}").into_bytes();
        let current = meta.get(Table::CONFIG, &key).await?;
        let now = millis(SystemTime::now());
        if let Some((_, who, expires)) = current.as_deref().and_then(parse)
            && expires > now
            && who != holder
        {
            return Ok(None);
        }
        let last = meta.get(Table::CONFIG, &epoch_key(&key)).await?;
        let epoch = last
            .as_deref()
            .and_then(|v| std::str::from_utf8(v).ok()?.parse::<u64>().ok())
            .unwrap_or(0)
            + 1;
        let value = format!("{epoch} {holder} {}", now + ttl.as_millis() as u64).into_bytes();
        let batch = Batch::new()
            .expect(Table::CONFIG, key.clone(), current)
            .expect(Table::CONFIG, epoch_key(&key), last)
            .put(Table::CONFIG, key.clone(), value.clone())
            .put(Table::CONFIG, epoch_key(&key), epoch.to_string());
        match meta.commit(batch).await {
            Ok(()) => Ok(Some(Lease {
                key,
                epoch,
                holder: holder.to_owned(),
                value,
                ttl,
            })),
            Err(MetaError::Conflict { .. }) => Ok(None), // another instance won
            Err(e) => Err(e.into()),
        }
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.epoch
    }

    /// `batch`, applied only while this lease's epoch is the current one.
    pub(crate) fn fence(&self, batch: Batch) -> Batch {
        batch.expect(
            Table::CONFIG,
            epoch_key(&self.key),
            Some(self.epoch.to_string().into_bytes()),
        )
    }

    /// Extends the lease by its time to live; `Conflict` if it was lost.
    pub(crate) async fn renew(&mut self, meta: &dyn MetaStore) -> StoreResult<()> {
        let expires = millis(SystemTime::now()) + self.ttl.as_millis() as u64;
        let value = format!("{} {} {expires}", self.epoch, self.holder).into_bytes();
        meta.commit(
            Batch::new()
                .expect(Table::CONFIG, self.key.clone(), Some(self.value.clone()))
                .put(Table::CONFIG, self.key.clone(), value.clone()),
        )
        .await?;
        self.value = value;
        Ok(())
    }

    /// Gives the lease back (if still ours; the epoch stays).
    pub(crate) async fn release(self, meta: &dyn MetaStore) -> StoreResult<()> {
        let batch = Batch::new()
            .expect(Table::CONFIG, self.key.clone(), Some(self.value))
            .delete(Table::CONFIG, self.key);
        match meta.commit(batch).await {
            Ok(()) | Err(MetaError::Conflict { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::meta::MemoryMeta;

    #[tokio::test]
    async fn epochs_grow_and_fence_a_stale_holder() {
        let meta = MemoryMeta::new();
        let hour = Duration::from_secs(3600);
        let a = Lease::acquire(&meta, "gc", "a", hour)
            .await
            .unwrap()
            .unwrap();
        assert!(
            Lease::acquire(&meta, "gc", "b", hour)
                .await
                .unwrap()
                .is_none(),
            "a held lease was granted twice"
        );
        // a's lease expires (a paused instance); b takes over.
        let b = Lease::acquire(&meta, "gc", "b", Duration::ZERO)
            .await
            .unwrap();
        assert!(b.is_none(), "granted before expiry");
        let mut expired = a.clone();
        expired.ttl = Duration::ZERO;
        expired.renew(&meta).await.unwrap();
        let b = Lease::acquire(&meta, "gc", "b", hour)
            .await
            .unwrap()
            .unwrap();
        assert!(b.epoch() > a.epoch());
        // a wakes with its stale view: its fenced write is refused.
        let stale = a.fence(Batch::new().put(Table::GC, "x", "a"));
        assert!(matches!(
            meta.commit(stale).await,
            Err(MetaError::Conflict { .. })
        ));
        assert!(a.clone().renew(&meta).await.is_err(), "a renewed b's lease");
        meta.commit(b.fence(Batch::new().put(Table::GC, "x", "b")))
            .await
            .unwrap();
        let b_epoch = b.epoch();
        b.release(&meta).await.unwrap();
        let c = Lease::acquire(&meta, "gc", "c", hour)
            .await
            .unwrap()
            .unwrap();
        assert!(c.epoch() > b_epoch, "epochs only grow");
    }
}
