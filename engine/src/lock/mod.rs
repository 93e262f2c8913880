//! Every lock the store takes, owned by one module (DESIGN §5).
//!
//! An operation states its [`Intent`] (what it touches); the [`LockPolicy`]
//! turns that into a [`LockPlan`] (which locks, which modes); the
//! [`LockManager`] acquires the plan in the one canonical order
//! `global -> blobstore -> repo -> digest` and hands back a single guard.
//! Callers never acquire locks themselves, so an inversion cannot be written,
//! and a plan holds at most one repository and one digest, so two
//! repositories can never be locked together.
//!
//! # The lock-plan table
//!
//! | intent (used by) | `global` | `split` | `striped` |
//! |---|---|---|---|
//! | `repo_read` (tags list) | G:S | R:S | R:S |
//! | `repo_write` (delete tag) | G:X | R:X | R:X |
//! | `blob_read` (stat/get blob, get manifest, referrers) | G:S | B:S R:S | B:S R:S |
//! | `blob_insert` (upload finish, mount) | G:X | B:X R:S | B:S R:S D:X |
//! | `manifest_put` | G:X | B:X R:X | B:S R:X D:X |
//! | `blob_remove` (delete blob, delete manifest by digest) | G:X | B:X R:X | B:S R:X D:X |
//! | `repo_change` (GC repo pass) | G:X | B:S R:X | B:S R:X |
//! | `blobstore_sweep` (GC of one `_blobstore` digest) | G:X | B:X | B:S D:X |
//!
//! G = the single global lock, B = blobstore, R = the repository, D = the
//! digest; S = shared, X = exclusive. `striped` never takes B exclusively:
//! two pushes of the same layer to different repositories meet only on that
//! digest's lock (the proposal's pathological fan-in), and GC never stops
//! the world.
//!
//! There is no stop-the-world intent. Under `split` and `striped` the tag
//! intents take no blobstore lock, so B:X would not exclude them, and the
//! one client that wanted it (in-place migration) runs before a store is
//! opened: nothing else runs then. Excluding everything would mean adding
//! B:S to every tag operation, a cost no caller pays for.

mod manager;
mod metrics;
mod service;

use std::fmt;
use std::str::FromStr;

use crate::digest::Digest;
use crate::oci::names::RepoName;

pub use manager::{LockGuard, LockManager};
pub use metrics::{Domain, LockMetrics, LockStats, histogram};
pub use service::{HeldLocks, LockError, LockService, PlannedLock};

/// Shared or exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mode {
    Shared,
    Exclusive,
}

/// How operations are mapped onto locks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LockPolicy {
    /// One RwLock for everything: today's zot, the baseline.
    Global,
    /// Blobstore RwLock + per-repository RwLocks: the proposal as written.
    Split,
    /// `split`, with blob inserts under a per-digest lock instead of the
    /// blobstore lock exclusive.
    Striped,
}

impl LockPolicy {
    pub const ALL: [LockPolicy; 3] = [LockPolicy::Global, LockPolicy::Split, LockPolicy::Striped];

    pub fn as_str(self) -> &'static str {
        match self {
            LockPolicy::Global => "global",
            LockPolicy::Split => "split",
            LockPolicy::Striped => "striped",
        }
    }
}

impl fmt::Display for LockPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for LockPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        LockPolicy::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("unknown lock policy {s:?} (global, split, striped)"))
    }
}

/// What an operation touches, independent of the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intent {
    repo: Option<(RepoName, Mode)>,
    /// Reads bytes from `_blobstore`.
    reads_blobstore: bool,
    /// Adds or removes `_blobstore` bytes or references for this digest.
    changes_digest: Option<Digest>,
}

impl Intent {
    fn on_repo(repo: &RepoName, mode: Mode) -> Intent {
        Intent {
            repo: Some((repo.clone(), mode)),
            reads_blobstore: false,
            changes_digest: None,
        }
    }

    /// Reads repository metadata only (tags).
    pub fn repo_read(repo: &RepoName) -> Intent {
        Intent::on_repo(repo, Mode::Shared)
    }

    /// Changes repository metadata only (a tag).
    pub fn repo_write(repo: &RepoName) -> Intent {
        Intent::on_repo(repo, Mode::Exclusive)
    }

    /// Reads a repository's blobs or manifests.
    pub fn blob_read(repo: &RepoName) -> Intent {
        Intent {
            reads_blobstore: true,
            ..Intent::on_repo(repo, Mode::Shared)
        }
    }

    /// Adds `digest` to `repo` (and to `_blobstore` if new).
    pub fn blob_insert(repo: &RepoName, digest: &Digest) -> Intent {
        Intent {
            reads_blobstore: true,
            changes_digest: Some(digest.clone()),
            ..Intent::on_repo(repo, Mode::Shared)
        }
    }

    /// Stores manifest `digest` and updates `repo`'s index.
    pub fn manifest_put(repo: &RepoName, digest: &Digest) -> Intent {
        Intent {
            reads_blobstore: true,
            changes_digest: Some(digest.clone()),
            ..Intent::on_repo(repo, Mode::Exclusive)
        }
    }

    /// Removes `digest` from `repo` (the legacy layout may move its bytes to
    /// another repository when `repo` held the original).
    pub fn blob_remove(repo: &RepoName, digest: &Digest) -> Intent {
        Intent::manifest_put(repo, digest)
    }

    /// Changes a repository as a whole (a GC pass).
    pub fn repo_change(repo: &RepoName) -> Intent {
        Intent {
            reads_blobstore: true,
            ..Intent::on_repo(repo, Mode::Exclusive)
        }
    }

    /// Re-checks and deletes one `_blobstore` digest.
    pub fn blobstore_sweep(digest: &Digest) -> Intent {
        Intent {
            repo: None,
            reads_blobstore: true,
            changes_digest: Some(digest.clone()),
        }
    }

    /// The locks `policy` takes for this intent.
    pub fn plan(&self, policy: LockPolicy) -> LockPlan {
        let writes = self.changes_digest.is_some()
            || self
                .repo
                .as_ref()
                .is_some_and(|(_, m)| *m == Mode::Exclusive);
        match policy {
            LockPolicy::Global => LockPlan {
                global: Some(if writes {
                    Mode::Exclusive
                } else {
                    Mode::Shared
                }),
                ..LockPlan::default()
            },
            LockPolicy::Split | LockPolicy::Striped => {
                // Every digest change is a `_blobstore` insert or sweep: the
                // proposal serialises those on the blobstore lock.
                let blobstore_exclusive =
                    policy == LockPolicy::Split && self.changes_digest.is_some();
                let blobstore = if blobstore_exclusive {
                    Some(Mode::Exclusive)
                } else if self.reads_blobstore {
                    Some(Mode::Shared)
                } else {
                    None
                };
                let digest = match policy {
                    LockPolicy::Striped => {
                        self.changes_digest.clone().map(|d| (d, Mode::Exclusive))
                    }
                    _ => None,
                };
                LockPlan {
                    global: None,
                    blobstore,
                    repo: self.repo.clone(),
                    digest,
                }
            }
        }
    }
}

/// Which locks to take, in which modes. Built only by [`Intent::plan`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LockPlan {
    pub global: Option<Mode>,
    pub blobstore: Option<Mode>,
    pub repo: Option<(RepoName, Mode)>,
    pub digest: Option<(Digest, Mode)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn short(plan: &LockPlan) -> String {
        let m = |m: &Mode| if *m == Mode::Shared { "S" } else { "X" };
        let mut parts = vec![];
        if let Some(g) = &plan.global {
            parts.push(format!("G:{}", m(g)));
        }
        if let Some(b) = &plan.blobstore {
            parts.push(format!("B:{}", m(b)));
        }
        if let Some((_, r)) = &plan.repo {
            parts.push(format!("R:{}", m(r)));
        }
        if let Some((_, d)) = &plan.digest {
            parts.push(format!("D:{}", m(d)));
        }
        parts.join(" ")
    }

    /// The table in the module docs, checked row by row.
    #[test]
    fn plans_match_the_documented_table() {
        let r = RepoName::parse("a").unwrap();
        let d = Digest::sha256(b"x");
        let rows: Vec<(Intent, [&str; 3])> = vec![
            (Intent::repo_read(&r), ["G:S", "R:S", "R:S"]),
            (Intent::repo_write(&r), ["G:X", "R:X", "R:X"]),
            (Intent::blob_read(&r), ["G:S", "B:S R:S", "B:S R:S"]),
            (
                Intent::blob_insert(&r, &d),
                ["G:X", "B:X R:S", "B:S R:S D:X"],
            ),
            (
                Intent::manifest_put(&r, &d),
                ["G:X", "B:X R:X", "B:S R:X D:X"],
            ),
            (
                Intent::blob_remove(&r, &d),
                ["G:X", "B:X R:X", "B:S R:X D:X"],
            ),
            (Intent::repo_change(&r), ["G:X", "B:S R:X", "B:S R:X"]),
            (Intent::blobstore_sweep(&d), ["G:X", "B:X", "B:S D:X"]),
        ];
        for (intent, expected) in rows {
            for (policy, want) in LockPolicy::ALL.into_iter().zip(expected) {
                assert_eq!(
                    short(&intent.plan(policy)),
                    want,
                    "{intent:?} under {policy}"
                );
            }
        }
    }
}
