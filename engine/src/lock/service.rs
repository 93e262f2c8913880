//! Locks behind a trait (DESIGN §5, §15): the in-process [`LockManager`]
//! is one implementation; several instances over one store need locks that
//! live outside any of them (PostgreSQL advisory locks in the `pgmeta`
//! crate) and take the same plans in the same canonical order.
//!
//! A lock held through a network service can be lost while its holder
//! still runs: the connection drops, the service releases the locks, and
//! another instance takes them. The holder must then stop before it writes
//! again; [`HeldLocks::check`] says whether it may, and the store asks it
//! before every protected write (index.json, GC removals). Between a check
//! and its write a lost lock can still go unnoticed: compare-and-swap on
//! the objects written, not this check, is what makes that write safe.

use std::fmt;

use async_trait::async_trait;

use super::{Domain, LockGuard, LockManager, LockPlan, Mode};

/// Why locks could not be taken, or are no longer held.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    #[error("lock service {service} unavailable: {message}")]
    Unavailable {
        service: &'static str,
        message: String,
    },
    /// The service may have released them (its connection was lost): the
    /// operation stopped before writing.
    #[error("locks lost ({service}: {message}); stopped before writing")]
    Lost {
        service: &'static str,
        message: String,
    },
}

/// Where locks live.
#[async_trait]
pub trait LockService: Send + Sync + fmt::Debug {
    /// Takes every lock of `plan`, in [`LockPlan::in_canonical_order`].
    async fn acquire(&self, plan: &LockPlan) -> Result<Box<dyn HeldLocks>, LockError>;
}

/// The locks a [`LockService`] granted; released when dropped.
pub trait HeldLocks: Send + Sync + fmt::Debug {
    /// `Ok` while the locks are certainly held.
    fn check(&self) -> Result<(), LockError>;
}

/// One lock of a plan: its domain, its name within the domain (empty for
/// the single global and blobstore locks) and its mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedLock {
    pub domain: Domain,
    pub name: String,
    pub mode: Mode,
}

impl LockPlan {
    /// The plan's locks in the one order every implementation takes them:
    /// global -> blobstore -> repo -> digest.
    pub fn in_canonical_order(&self) -> Vec<PlannedLock> {
        let single = |domain, mode: Option<Mode>| {
            mode.map(|mode| PlannedLock {
                domain,
                name: String::new(),
                mode,
            })
        };
        let named = |domain, entry: Option<(String, Mode)>| {
            entry.map(|(name, mode)| PlannedLock { domain, name, mode })
        };
        [
            single(Domain::Global, self.global),
            single(Domain::Blobstore, self.blobstore),
            named(
                Domain::Repo,
                self.repo.as_ref().map(|(r, m)| (r.to_string(), *m)),
            ),
            named(
                Domain::Digest,
                self.digest.as_ref().map(|(d, m)| (d.to_string(), *m)),
            ),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

#[async_trait]
impl LockService for LockManager {
    async fn acquire(&self, plan: &LockPlan) -> Result<Box<dyn HeldLocks>, LockError> {
        Ok(Box::new(self.acquire_plan(plan).await))
    }
}

/// In-process locks cannot be lost while their guard lives.
impl HeldLocks for LockGuard {
    fn check(&self) -> Result<(), LockError> {
        Ok(())
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::digest::Digest;
    use crate::lock::{Intent, LockPolicy};
    use crate::oci::names::RepoName;

    /// What a shared lock service takes for a plan: the in-process order.
    #[test]
    fn plans_list_their_locks_in_canonical_order() {
        let r = RepoName::parse("a/b").unwrap();
        let d = Digest::sha256(b"x");
        let listed = |intent: Intent, policy| {
            intent
                .plan(policy)
                .in_canonical_order()
                .into_iter()
                .map(|l| (l.domain, l.name, l.mode))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            listed(Intent::blob_remove(&r, &d), LockPolicy::Striped),
            vec![
                (Domain::Blobstore, String::new(), Mode::Shared),
                (Domain::Repo, "a/b".to_owned(), Mode::Exclusive),
                (Domain::Digest, d.to_string(), Mode::Exclusive),
            ]
        );
        assert_eq!(
            listed(Intent::blob_insert(&r, &d), LockPolicy::Global),
            vec![(Domain::Global, String::new(), Mode::Exclusive)]
        );
        assert_eq!(
            listed(Intent::blobstore_sweep(&d), LockPolicy::Split),
            vec![(Domain::Blobstore, String::new(), Mode::Exclusive)]
        );
    }
}
