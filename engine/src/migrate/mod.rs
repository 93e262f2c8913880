//! Upgrading a legacy root to the blobstore layout (DESIGN §8).
//!
//! - [`migrate_in_place`]: converts a root where it stands, before serving.
//! - [`sync`]: fills a new blobstore store from an old one through the store
//!   API, then compares them ([`sync::sync_stores`]).
//!
//! # In place: the protocol and its crash points
//!
//! ```text
//! 0. meta: migration/state = running      stores refuse to open from here on
//! for each repository (sorted), unless meta says it is done:
//!   0'. remove leftover staged links (.uploads/migrate-*) from a crash
//!   for each blob D under <repo>/blobs:
//!     local:  1. _blobstore holds a verified copy: link it from the repo's
//!                verified file if not (never a byte copy)
//!             2. re-point <repo>/blobs/D at it: link to .uploads/migrate-D,
//!                rename over the repo's name, sync both directories
//!     object: 1. _blobstore holds a verified copy: copy the one content-bearing
//!                legacy object (original per the dedupe index) if not, verify it
//!             2. for every holder still having a legacy object or marker:
//!                record the reference rows, THEN delete the object
//!   3. meta: migration/repo/<name> = done
//! 4. delete the dedupe index; config.json = blobstore   POINT OF NO RETURN
//! 5. meta: migration/state = done
//! ```
//!
//! Every step checks before it acts, so a restart after a crash (or a full
//! disk) at any point redoes at most the interrupted step. Bytes are never
//! overwritten with a marker. On object stores, extra bytes never exceed one
//! blob: the copy into `_blobstore` is followed, before the next digest, by
//! the deletion of the legacy copy. A digest with no valid copy left (data
//! lost before migration) is reported as a problem, not a crash.

pub mod sync;

use std::collections::HashSet;
use std::sync::Arc;

use serde::Serialize;

use crate::digest::{Digest, DigestHasher};
use crate::driver::{COPY_CHUNK, Driver, DriverPath, PutMode};
use crate::error::{StoreError, StoreResult};
use crate::layout::{self, LayoutKind, parse_blob_paths};
use crate::lease::Lease;
use crate::meta::{Batch, MetaStore, Table, scan_keys};
use crate::oci::names::RepoName;
use crate::root::{self, StoreConfig};
use crate::store::list_repos;

/// What a migration run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MigrationReport {
    pub repos_total: usize,
    pub repos_migrated: usize,
    /// Repositories a previous, interrupted run had finished.
    pub repos_already_done: usize,
    /// Local: repository names re-pointed at the blobstore copy.
    pub blobs_relinked: u64,
    /// Object: digests copied into `_blobstore` (each at most once).
    pub blobs_copied: u64,
    pub bytes_copied: u64,
    pub markers_removed: u64,
    pub legacy_objects_removed: u64,
    /// Data found lost or damaged (not caused by the migration).
    pub problems: Vec<String>,
    /// True when the root is now a blobstore root.
    pub completed: bool,
}

/// Progress callbacks: (repositories done, total).
pub type Progress<'a> = &'a (dyn Fn(usize, usize) + Sync);

/// Is an in-place migration started and unfinished on this root?
pub use crate::root::migration_in_progress as in_progress;

struct Migrator<'a> {
    driver: &'a dyn Driver,
    meta: &'a dyn MetaStore,
    local: bool,
    /// Digests whose `_blobstore` copy this run verified.
    verified: HashSet<Digest>,
    report: MigrationReport,
}

/// Converts the legacy root behind `driver` to the blobstore layout, in
/// place. Safe to re-run after any crash or "no space" error; a root that is
/// already blobstore returns at once.
pub async fn migrate_in_place(
    driver: Arc<dyn Driver>,
    meta: Arc<dyn MetaStore>,
    progress: Progress<'_>,
) -> StoreResult<MigrationReport> {
    migrate(driver, meta, progress, None).await
}

/// How long a migration's lease lasts without renewal (renewed after each
/// repository once half of it has passed).
const LEASE_TTL: std::time::Duration = std::time::Duration::from_secs(120);

/// [`migrate_in_place`] over metadata several instances share (DESIGN
/// §15): one migration at a time, under the `migrate` lease, whose epoch
/// fences every progress record; refused while another `holder` has it.
/// A migrator paused past its lease finds its next record refused and
/// stops; the next one resumes from the records (every step is idempotent).
pub async fn migrate_in_place_shared(
    driver: Arc<dyn Driver>,
    meta: Arc<dyn MetaStore>,
    progress: Progress<'_>,
    holder: &str,
) -> StoreResult<MigrationReport> {
    let Some(mut lease) = Lease::acquire(&*meta, "migrate", holder, LEASE_TTL).await? else {
        return Err(StoreError::Denied {
            reason: "another instance is migrating this root (it holds the migrate lease)".into(),
        });
    };
    let result = migrate(driver, meta.clone(), progress, Some(&mut lease)).await;
    lease.release(&*meta).await?;
    result
}

async fn migrate(
    driver: Arc<dyn Driver>,
    meta: Arc<dyn MetaStore>,
    progress: Progress<'_>,
    mut lease: Option<&mut Lease>,
) -> StoreResult<MigrationReport> {
    let Some(config) = root::read_config(&*driver).await? else {
        return Err(StoreError::Denied {
            reason: "not an ocistore root (no _ocistore/config.json)".into(),
        });
    };
    let mut m = Migrator {
        driver: &*driver,
        meta: &*meta,
        local: driver.capabilities().hard_links,
        verified: HashSet::new(),
        report: MigrationReport::default(),
    };
    if config.layout == LayoutKind::Blobstore {
        if root::migration_in_progress(m.meta).await? {
            // Crashed between the config flip and the final mark.
            root::mark_migration_done(m.meta, lease.as_deref()).await?;
        }
        m.report.completed = true;
        return Ok(m.report);
    }
    root::mark_migration_running(m.meta, lease.as_deref()).await?;
    let repos = list_repos(m.driver).await?;
    m.report.repos_total = repos.len();
    let mut renewed = crate::sync::Instant::now();
    for (i, repo) in repos.iter().enumerate() {
        if root::repo_migrated(m.meta, repo).await? {
            m.report.repos_already_done += 1;
        } else {
            m.repo(repo).await?;
            root::mark_repo_migrated(m.meta, repo, lease.as_deref()).await?;
            m.report.repos_migrated += 1;
        }
        if let Some(lease) = lease.as_deref_mut()
            && renewed.elapsed() > LEASE_TTL / 2
        {
            lease.renew(m.meta).await?;
            renewed = crate::sync::Instant::now();
        }
        progress(i + 1, repos.len());
    }
    // The dedupe index has no meaning in the blobstore layout.
    let keys = scan_keys(m.meta, Table::DEDUPE, b"").await?;
    for chunk in keys.chunks(500) {
        let batch = chunk
            .iter()
            .fold(Batch::new(), |b, k| b.delete(Table::DEDUPE, k.clone()));
        meta.commit(batch).await?;
    }
    // Point of no return: from here the root is read as a blobstore root.
    let flipped = StoreConfig {
        layout: LayoutKind::Blobstore,
        policy: config.policy,
    };
    if let Some(lease) = lease.as_deref_mut() {
        // The point of no return is a plain object write: re-assert the
        // lease just before it (a stale migrator stops here).
        lease.renew(m.meta).await?;
    }
    root::replace_config(m.driver, flipped).await?;
    root::mark_migration_done(m.meta, lease.as_deref()).await?;
    m.report.completed = true;
    Ok(m.report)
}

impl Migrator<'_> {
    async fn repo(&mut self, repo: &RepoName) -> StoreResult<()> {
        let uploads = layout::repo_dir(repo).join(".uploads").expect("valid");
        for leftover in self.driver.list(Some(&uploads)).await? {
            if leftover.file_name().starts_with("migrate-") {
                self.driver.delete(&leftover).await?;
                self.driver.sync_dir(Some(&uploads)).await?;
            }
        }
        let dir = layout::repo_blobs_dir(repo);
        let paths = self.driver.list(Some(&dir)).await?;
        for d in parse_blob_paths(&dir, &paths) {
            if self.local {
                self.local_blob(repo, &d).await?;
            } else {
                self.object_blob(repo, &d).await?;
            }
        }
        Ok(())
    }

    /// Hashes the object at `path`; its size if it is `d`'s bytes.
    async fn verify(&self, path: &DriverPath, d: &Digest) -> StoreResult<Option<u64>> {
        let size = match self.driver.stat(path).await {
            Ok(meta) => meta.size,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let mut h = DigestHasher::new(d.algorithm());
        let mut at = 0;
        while at < size {
            let end = (at + COPY_CHUNK).min(size);
            h.update(&self.driver.get(path, Some(at..end)).await?);
            at = end;
        }
        Ok((&h.finish() == d).then_some(size))
    }

    /// Whether `_blobstore` holds `d`'s bytes (hashed once per run).
    async fn blobstore_ok(&mut self, d: &Digest) -> StoreResult<bool> {
        if self.verified.contains(d) {
            return Ok(true);
        }
        let ok = self.verify(&layout::blobstore_blob(d), d).await?.is_some();
        if ok {
            self.verified.insert(d.clone());
        }
        Ok(ok)
    }

    async fn local_blob(&mut self, repo: &RepoName, d: &Digest) -> StoreResult<()> {
        let (p, bs) = (layout::repo_blob(repo, d), layout::blobstore_blob(d));
        if !self.blobstore_ok(d).await? {
            if self.verify(&p, d).await?.is_none() {
                self.report.problems.push(format!(
                    "{repo}: {d} has no valid bytes (damaged before migration)"
                ));
                return Ok(());
            }
            self.driver.delete(&bs).await?; // a damaged copy, if any
            self.driver.hard_link(&p, &bs).await?;
            self.driver.sync_dir(bs.parent().as_ref()).await?;
            self.verified.insert(d.clone());
        }
        // Re-point the repository's name at the blobstore inode atomically:
        // a staged link renamed over it (a no-op if it already is that inode).
        let staged = layout::repo_dir(repo)
            .join(format!(".uploads/migrate-{}", d.hex()))
            .expect("valid");
        match self.driver.hard_link(&bs, &staged).await {
            Ok(()) => {}
            Err(e) if e.is_already_exists() => {
                self.driver.delete(&staged).await?;
                self.driver.hard_link(&bs, &staged).await?;
            }
            Err(e) => return Err(e.into()),
        }
        self.driver.rename(&staged, &p).await?;
        self.driver.delete(&staged).await?; // still there if it was the same inode
        self.driver.sync_dir(staged.parent().as_ref()).await?;
        self.driver.sync_dir(p.parent().as_ref()).await?;
        self.report.blobs_relinked += 1;
        Ok(())
    }

    /// Object stores: one copy into `_blobstore`, then every holder moves
    /// from its legacy object (bytes or marker) to reference rows.
    async fn object_blob(&mut self, repo: &RepoName, d: &Digest) -> StoreResult<()> {
        let entry = self.dedupe_entry(d).await?;
        let mut holders: Vec<DriverPath> = vec![layout::repo_blob(repo, d)];
        for path in entry.iter().flat_map(|(o, dups)| o.iter().chain(dups)) {
            if let Ok(p) = DriverPath::new(path)
                && !holders.contains(&p)
            {
                holders.push(p);
            }
        }
        if !self.blobstore_ok(d).await? {
            let mut source = None;
            for h in &holders {
                if let Some(size) = self.verify(h, d).await? {
                    source = Some((h.clone(), size));
                    break;
                }
            }
            // The index may have lost the original in a crash while its
            // bytes are still on disk: look everywhere before calling the
            // digest lost (zot #2625 took markers for data here).
            if source.is_none() {
                source = self.find_unindexed_copy(d, &holders).await?;
            }
            let Some((source, size)) = source else {
                self.report.problems.push(format!(
                    "{repo}: every copy of {d} is a marker or damaged (lost before migration)"
                ));
                // A marker means nothing in the blobstore layout: drop it.
                let p = layout::repo_blob(repo, d);
                self.driver.delete(&p).await?;
                self.report.markers_removed += 1;
                return Ok(());
            };
            let bs = layout::blobstore_blob(d);
            self.driver.copy(&source, &bs, PutMode::Overwrite).await?;
            if !self.blobstore_ok(d).await? {
                return Err(StoreError::Corrupt(format!(
                    "copy of {d} into _blobstore does not verify"
                )));
            }
            self.report.blobs_copied += 1;
            self.report.bytes_copied += size;
        }
        let empty = *d == Digest::of(d.algorithm(), b"");
        for h in holders {
            let size = match self.driver.stat(&h).await {
                Ok(meta) => meta.size,
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e.into()),
            };
            let Some(holder) = repo_of(&h) else { continue };
            let batch = Batch::new()
                .put(Table::REFS, layout::ref_by_digest(d, &holder), Vec::new())
                .put(Table::REFS, layout::ref_by_repo(&holder, d), Vec::new());
            self.meta.commit(batch).await?;
            self.driver.delete(&h).await?;
            if size == 0 && !empty {
                self.report.markers_removed += 1;
            } else {
                self.report.legacy_objects_removed += 1;
            }
        }
        Ok(())
    }

    /// A verified legacy copy of `d` in a repository the dedupe index does
    /// not list (one stat per repository: only for a digest whose listed
    /// holders are all markers or damaged).
    async fn find_unindexed_copy(
        &self,
        d: &Digest,
        listed: &[DriverPath],
    ) -> StoreResult<Option<(DriverPath, u64)>> {
        for repo in list_repos(self.driver).await? {
            let p = layout::repo_blob(&repo, d);
            if listed.contains(&p) {
                continue;
            }
            if let Some(size) = self.verify(&p, d).await? {
                return Ok(Some((p, size)));
            }
        }
        Ok(None)
    }

    async fn dedupe_entry(&self, d: &Digest) -> StoreResult<Option<(Option<String>, Vec<String>)>> {
        let Some(v) = self
            .meta
            .get(Table::DEDUPE, d.to_string().as_bytes())
            .await?
        else {
            return Ok(None);
        };
        let e: crate::layout::DedupeEntry = serde_json::from_slice(&v)
            .map_err(|e| StoreError::Corrupt(format!("dedupe index entry for {d}: {e}")))?;
        Ok(Some((e.original, e.duplicates.into_iter().collect())))
    }
}

/// `<repo>/blobs/<alg>/<hex>` -> `<repo>`.
fn repo_of(path: &DriverPath) -> Option<RepoName> {
    let s = path.as_str();
    let cut = s.rfind("/blobs/")?;
    RepoName::parse(&s[..cut]).ok()
}

#[cfg(all(test, not(loom)))]
mod shared_tests {
    use std::time::Duration;

    use super::*;
    use crate::driver::ObjectDriver;
    use crate::lock::LockPolicy;
    use crate::meta::MemoryMeta;
    use crate::store::Store;

    /// Two migrators over shared metadata: the second is refused while the
    /// first holds the lease, and runs once it is released.
    #[tokio::test]
    async fn one_migration_at_a_time() {
        let driver: Arc<dyn Driver> = Arc::new(ObjectDriver::in_memory());
        let meta = Arc::new(MemoryMeta::new());
        let legacy = StoreConfig {
            layout: LayoutKind::Legacy,
            policy: LockPolicy::Striped,
        };
        let store = Store::open(driver.clone(), meta.clone(), legacy)
            .await
            .unwrap();
        let repo = RepoName::parse("a").unwrap();
        let data = bytes::Bytes::from_static(b"blob");
        let d = crate::digest::Digest::sha256(&data);
        store.push_blob(&repo, &d, data).await.unwrap();
        drop(store);

        let first = Lease::acquire(&*meta, "migrate", "first", Duration::from_secs(3600))
            .await
            .unwrap()
            .unwrap();
        let refused = migrate_in_place_shared(driver.clone(), meta.clone(), &|_, _| {}, "second")
            .await
            .unwrap_err();
        assert!(matches!(refused, StoreError::Denied { .. }), "{refused}");
        assert!(
            !root::migration_in_progress(&*meta).await.unwrap(),
            "it started"
        );
        first.release(&*meta).await.unwrap();
        let report = migrate_in_place_shared(driver, meta, &|_, _| {}, "second")
            .await
            .unwrap();
        assert!(report.completed && report.repos_migrated == 1, "{report:?}");
    }
}
