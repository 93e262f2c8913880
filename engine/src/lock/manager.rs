//! The local lock manager: acquires a [`LockPlan`] in canonical order and
//! keeps per-repository and per-digest locks only while someone uses them.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::sync::Arc;

use super::metrics::Recorder;
use super::{Domain, Intent, LockMetrics, LockPlan, LockPolicy, Mode};
use crate::digest::Digest;
use crate::oci::names::RepoName;
use crate::sync::{Instant, OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock, modeled};

type Lock = Arc<RwLock<()>>;

/// Locks created on first use and dropped when the last holder or waiter
/// lets go, so the table's size follows live contention, not the number of
/// repositories or digests ever seen.
struct LockTable<K> {
    locks: modeled::Mutex<HashMap<K, Lock>>,
}

impl<K: Hash + Eq + Clone> LockTable<K> {
    fn new() -> LockTable<K> {
        LockTable {
            locks: modeled::Mutex::new(HashMap::new()),
        }
    }

    fn get(&self, key: &K) -> Lock {
        let mut locks = self.locks.lock().unwrap();
        locks
            .entry(key.clone())
            .or_insert_with(|| Arc::new(RwLock::new(())))
            .clone()
    }

    /// Called after a guard (and its `Arc`) is gone. Waiters hold clones of
    /// the `Arc`, so a lock somebody waits for is never removed.
    fn release(&self, key: &K) {
        let mut locks = self.locks.lock().unwrap();
        if locks.get(key).is_some_and(|l| Arc::strong_count(l) == 1) {
            locks.remove(key);
        }
    }

    fn len(&self) -> usize {
        self.locks.lock().unwrap().len()
    }
}

/// Acquires lock plans; one per store.
pub struct LockManager {
    inner: Arc<Inner>,
}

struct Inner {
    policy: LockPolicy,
    global: Lock,
    blobstore: Lock,
    repos: LockTable<RepoName>,
    digests: LockTable<Digest>,
    recorder: Recorder,
}

impl fmt::Debug for LockManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockManager")
            .field("policy", &self.inner.policy)
            .field("repo_locks", &self.inner.repos.len())
            .field("digest_locks", &self.inner.digests.len())
            .finish()
    }
}

enum Guard {
    Read(#[allow(dead_code)] OwnedRwLockReadGuard<()>),
    Write(#[allow(dead_code)] OwnedRwLockWriteGuard<()>),
}

struct Taken {
    guard: Guard,
    since: Instant,
    domain: Domain,
    mode: Mode,
}

/// Everything one plan holds. Released in reverse order of acquisition.
pub struct LockGuard {
    inner: Arc<Inner>,
    global: Option<Taken>,
    blobstore: Option<Taken>,
    repo: Option<(RepoName, Taken)>,
    digest: Option<(Digest, Taken)>,
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard")
            .field("repo", &self.repo.as_ref().map(|(r, _)| r))
            .field("digest", &self.digest.as_ref().map(|(d, _)| d))
            .finish()
    }
}

impl LockManager {
    pub fn new(policy: LockPolicy) -> LockManager {
        LockManager {
            inner: Arc::new(Inner {
                policy,
                global: Arc::new(RwLock::new(())),
                blobstore: Arc::new(RwLock::new(())),
                repos: LockTable::new(),
                digests: LockTable::new(),
                recorder: Recorder::default(),
            }),
        }
    }

    pub fn policy(&self) -> LockPolicy {
        self.inner.policy
    }

    /// Takes every lock `intent` needs under this manager's policy, in the
    /// order global -> blobstore -> repo -> digest.
    pub async fn acquire(&self, intent: &Intent) -> LockGuard {
        self.acquire_plan(&intent.plan(self.inner.policy)).await
    }

    /// Takes every lock of `plan`, in the order global -> blobstore -> repo -> digest.
    pub async fn acquire_plan(&self, plan: &LockPlan) -> LockGuard {
        let inner = &self.inner;
        let mut guard = LockGuard {
            inner: inner.clone(),
            global: None,
            blobstore: None,
            repo: None,
            digest: None,
        };
        for domain in acquisition_order(plan) {
            match domain {
                Domain::Global => {
                    if let Some(mode) = plan.global {
                        guard.global = Some(inner.take(domain, inner.global.clone(), mode).await);
                    }
                }
                Domain::Blobstore => {
                    if let Some(mode) = plan.blobstore {
                        guard.blobstore =
                            Some(inner.take(domain, inner.blobstore.clone(), mode).await);
                    }
                }
                Domain::Repo => {
                    if let Some((repo, mode)) = &plan.repo {
                        let lock = inner.repos.get(repo);
                        guard.repo = Some((repo.clone(), inner.take(domain, lock, *mode).await));
                    }
                }
                Domain::Digest => {
                    if let Some((digest, mode)) = &plan.digest {
                        let lock = inner.digests.get(digest);
                        guard.digest =
                            Some((digest.clone(), inner.take(domain, lock, *mode).await));
                    }
                }
            }
        }
        guard
    }

    pub fn metrics(&self) -> LockMetrics {
        self.inner.recorder.snapshot()
    }

    /// Acquisitions of one domain and mode so far (cheap: no histogram copies).
    pub fn acquisitions(&self, domain: Domain, mode: Mode) -> u64 {
        self.inner.recorder.acquisitions(domain, mode)
    }

    /// Live per-repository and per-digest locks (they are dropped when unused).
    pub fn table_sizes(&self) -> (usize, usize) {
        (self.inner.repos.len(), self.inner.digests.len())
    }
}

/// The canonical order, global -> blobstore -> repo -> digest: every plan
/// takes its locks in this one order, so no two plans can wait on each other
/// in a cycle.
#[cfg(not(ocistore_mutation = "inverted_order"))]
fn acquisition_order(_plan: &LockPlan) -> [Domain; 4] {
    Domain::ALL
}

/// MUTATION (a), for the loom suite only (`--cfg ocistore_mutation="inverted_order"`):
/// plans that change a repository exclusively take their locks in reverse,
/// so an insert (repo, then digest) and a removal (digest, then repo) can
/// each hold what the other waits for.
#[cfg(ocistore_mutation = "inverted_order")]
fn acquisition_order(plan: &LockPlan) -> [Domain; 4] {
    let mut order = Domain::ALL;
    if matches!(plan.repo, Some((_, Mode::Exclusive))) {
        order.reverse();
    }
    order
}

impl Inner {
    async fn take(&self, domain: Domain, lock: Lock, mode: Mode) -> Taken {
        let asked = Instant::now();
        let guard = match mode {
            Mode::Shared => Guard::Read(lock.read_owned().await),
            Mode::Exclusive => Guard::Write(lock.write_owned().await),
        };
        let since = Instant::now();
        self.recorder.waited(domain, mode, since - asked);
        Taken {
            guard,
            since,
            domain,
            mode,
        }
    }

    fn release(&self, taken: Taken) {
        let held = taken.since.elapsed();
        drop(taken.guard);
        self.recorder.held(taken.domain, taken.mode, held);
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if let Some((digest, taken)) = self.digest.take() {
            self.inner.release(taken);
            self.inner.digests.release(&digest);
        }
        if let Some((repo, taken)) = self.repo.take() {
            self.inner.release(taken);
            self.inner.repos.release(&repo);
        }
        if let Some(taken) = self.blobstore.take() {
            self.inner.release(taken);
        }
        if let Some(taken) = self.global.take() {
            self.inner.release(taken);
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::lock::Domain;

    /// Waits and holds are recorded at their size, not clamped.
    #[tokio::test(start_paused = true)]
    async fn metrics_record_real_durations() {
        let m = Arc::new(LockManager::new(LockPolicy::Global));
        let r = RepoName::parse("a").unwrap();
        let held = m.acquire(&Intent::repo_write(&r)).await;
        let waiter = {
            let m = m.clone();
            let r = r.clone();
            tokio::spawn(async move { drop(m.acquire(&Intent::repo_write(&r)).await) })
        };
        tokio::time::sleep(std::time::Duration::from_millis(40)).await;
        drop(held);
        waiter.await.unwrap();
        let metrics = m.metrics();
        let x = metrics.get(Domain::Global, Mode::Exclusive);
        assert_eq!(x.acquisitions(), 2);
        assert_eq!(m.acquisitions(Domain::Global, Mode::Exclusive), 2);
        // A pair never taken (its histograms are made lazily) reads empty.
        let untaken = metrics.get(Domain::Digest, Mode::Shared);
        assert_eq!((untaken.acquisitions(), untaken.total_hold_ns()), (0, 0));
        assert_eq!(m.acquisitions(Domain::Digest, Mode::Shared), 0);
        assert!(x.wait.max() >= 39_000_000, "wait max {} ns", x.wait.max());
        assert!(
            x.total_hold_ns() >= 39_000_000,
            "hold {} ns",
            x.total_hold_ns()
        );
    }
}
