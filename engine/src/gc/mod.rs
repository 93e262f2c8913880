//! Garbage collection without stop-the-world (DESIGN §7).
//!
//! One pass = a pass over every repository, then the `_blobstore` sweep.
//!
//! **Repository pass** (under `repo_change`: the repository exclusive):
//! load index.json once, parse each manifest once, compute what is kept
//! ([`reach`]), drop unkept rows, and list unkept blobs. The blobs are then
//! removed one at a time, each under its own `blob_remove` plan, so pushes
//! to the repository interleave with the pass. Before each removal the
//! repository's generation (bumped by every index.json write) is compared
//! with the one the analysis saw: if a manifest changed meanwhile, the kept
//! set is recomputed before anything goes. That closes the
//! compute-then-delete race (TOCTOU) without re-reading every manifest per
//! blob (zot #4235). Stale uploads go last; an empty repository goes whole.
//!
//! **Blobstore sweep**: a `_blobstore` digest no repository holds is
//! deleted only after [`BlobLayout::sweep`] re-checks, under the digest's
//! lock (`striped`) or the blobstore lock (`split`), that still no
//! repository holds it. Under `striped` no GC step takes the blobstore lock
//! exclusively.
//!
//! **Delay** (the contract of DESIGN §7, invariant 10): nothing goes until
//! it has been garbage for `delay` since a client last touched it. GC keeps
//! that clock itself ([`marks`]): a mark when it first sees an item as
//! garbage, deleted by any client touch, re-read under the removal's lock.
//! A young row is a root of [`reach`], so it keeps what it references: an
//! index its children, a manifest its config and layers, a subject its
//! referrers. An upload session ages from its last chunk and is never
//! cancelled during one of its calls; a repository with an open session is
//! not empty. A session recorded by an earlier process (dormant: it
//! survived a restart) ages from its last acknowledged chunk too; its
//! staged bytes are kept from leftover reclamation until it expires, and
//! then go with its record.
//!
//! [`BlobLayout::sweep`]: crate::layout::BlobLayout::sweep

mod fenced;
mod marks;
mod reach;

pub(crate) use marks::{Marked, millis};
use reach::Edges;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde::Serialize;

use crate::digest::Digest;
use crate::error::{StoreError, StoreResult};
use crate::layout::{self, LayoutKind};
use crate::lock::{Domain, Intent, Mode};
use crate::meta::{Batch, Table};
use crate::oci::index_rows::{IndexRow, IndexRows};
use crate::oci::names::RepoName;
use crate::store::{Store, StoreGuard, corrupt_index};
use crate::sync::Instant;

/// How a pass behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcOptions {
    /// Garbage a client touched less than this ago stays, with everything
    /// it references.
    pub delay: Duration,
    /// Report what would go; change nothing.
    pub dry_run: bool,
    /// An upload session idle (no chunk) this long is abandoned and
    /// cancelled. Never less than `delay`: the larger of the two applies. A
    /// session in the middle of one of its calls is never cancelled.
    pub upload_timeout: Duration,
    /// With several instances: how long the sweep's lease lasts without
    /// renewal (renewed at half of it). An instance paused longer than
    /// this loses the sweep to another, and its next fenced write fails.
    pub sweep_lease: Duration,
}

impl GcOptions {
    /// How long an idle upload session lives by default: clients pause
    /// between chunks while they read their next layer or retry.
    pub const DEFAULT_UPLOAD_TIMEOUT: Duration = Duration::from_secs(15 * 60);

    /// How long a sweep's lease lasts by default.
    pub const DEFAULT_SWEEP_LEASE: Duration = Duration::from_secs(60);

    /// A real pass with `delay` and the default upload timeout.
    pub const fn new(delay: Duration) -> GcOptions {
        GcOptions {
            delay,
            dry_run: false,
            upload_timeout: GcOptions::DEFAULT_UPLOAD_TIMEOUT,
            sweep_lease: GcOptions::DEFAULT_SWEEP_LEASE,
        }
    }

    /// The same pass, reporting only.
    pub const fn dry_run(self) -> GcOptions {
        GcOptions {
            dry_run: true,
            ..self
        }
    }

    /// The same pass, with upload sessions abandoned after `timeout` idle
    /// (zero: every idle session, as a quiescent pass wants).
    pub const fn upload_timeout(self, timeout: Duration) -> GcOptions {
        GcOptions {
            upload_timeout: timeout,
            ..self
        }
    }

    /// The same pass, with the sweep's lease lasting `ttl` (several instances).
    pub const fn sweep_lease(self, ttl: Duration) -> GcOptions {
        GcOptions {
            sweep_lease: ttl,
            ..self
        }
    }

    /// How long a session must be idle before this pass cancels it.
    fn session_idle_limit(self) -> Duration {
        self.delay.max(self.upload_timeout)
    }
}

/// One thing removed (or, in a dry run, that would be).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GcItem {
    pub kind: GcKind,
    pub repo: Option<String>,
    pub digest: Option<String>,
    /// Bytes freed on the backend (0 for references, markers and rows).
    pub bytes: u64,
    /// The file, for a leftover.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GcKind {
    /// A manifest row dropped from index.json.
    Manifest,
    /// A blob removed from a repository.
    Blob,
    /// A `_blobstore` copy deleted.
    BlobstoreBlob,
    /// An upload session or leftover upload file.
    Upload,
    /// An emptied repository.
    Repository,
    /// A temp file a dead writer left (its path in `repo`'s place is not
    /// a repository: see [`GcItem::path`]).
    Leftover,
}

/// What a pass did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    pub dry_run: bool,
    pub repos_scanned: usize,
    pub items: Vec<GcItem>,
    pub bytes_freed: u64,
    /// Wall (or virtual, under madsim) time of the pass.
    pub pass_ns: u64,
    /// Exclusive acquisitions of the blobstore lock during the pass, by
    /// anyone (zero under `striped` unless something stopped the world).
    pub blobstore_exclusive_acquisitions: u64,
    /// Repositories whose untagged rows stay for now: the disk was full
    /// even for their index rewrite, twice in the pass (DESIGN §7: GC goes
    /// on without the bookkeeping that needs space, and a later pass
    /// tries again). Their garbage is kept, never lost track of.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deferred: Vec<String>,
}

impl GcReport {
    pub fn count(&self, kind: GcKind) -> usize {
        self.items.iter().filter(|i| i.kind == kind).count()
    }

    fn add(&mut self, kind: GcKind, repo: Option<&RepoName>, digest: Option<&Digest>, bytes: u64) {
        self.bytes_freed += bytes;
        self.items.push(GcItem {
            kind,
            repo: repo.map(ToString::to_string),
            digest: digest.map(ToString::to_string),
            bytes,
            path: None,
        });
    }
}

/// An index row with its manifest's edges (`None`: bytes gone or unparsable).
type ParsedRow<'a, R> = (&'a R, Option<Arc<Edges>>);

/// What one repository keeps, and the generation it was computed at.
struct Analysis {
    generation: u64,
    keep: HashSet<Digest>,
}

impl Store {
    /// Runs one GC pass over the whole store.
    pub async fn gc(&self, opts: GcOptions) -> StoreResult<GcReport> {
        let started = Instant::now();
        let exclusive_before = self.lock_acquisitions(Domain::Blobstore, Mode::Exclusive);
        let mut report = GcReport {
            dry_run: opts.dry_run,
            ..GcReport::default()
        };
        // References a dry run would have removed, so its sweep can say what
        // a real pass would sweep.
        let mut dropped: HashMap<Digest, u64> = HashMap::new();
        // Sessions other instances started expire here too.
        self.sync_sessions().await?;
        // One walk finds the repositories and the skeletons (see
        // `gc_leftovers`).
        let dirs = crate::store::walk_repo_dirs(self.driver()).await?;
        let mut no_room = Vec::new();
        for repo in dirs.repos {
            report.repos_scanned += 1;
            let deferred = report.deferred.len();
            self.gc_listed_repo(&repo, opts, &mut report, &mut dropped)
                .await?;
            if report.deferred.len() > deferred {
                no_room.push(repo);
            }
        }
        self.gc_blobstore(opts, &mut report, &dropped).await?;
        self.gc_leftovers(&dirs.skeletons, opts, &mut report)
            .await?;
        // Pruning the disk had no room for, once more now that the pass
        // has freed what it could, and the sweep of what that lets go;
        // what still fails waits for the next pass.
        if !no_room.is_empty() {
            report.deferred.clear();
            for repo in &no_room {
                self.gc_listed_repo(repo, opts, &mut report, &mut dropped)
                    .await?;
            }
            self.gc_blobstore(opts, &mut report, &dropped).await?;
        }
        if !opts.dry_run {
            // Space this pass freed goes to the reserve first (if one is
            // kept and was released), so the next full disk finds it.
            self.restore_reserve().await?;
        }
        report.pass_ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        report.blobstore_exclusive_acquisitions =
            self.lock_acquisitions(Domain::Blobstore, Mode::Exclusive) - exclusive_before;
        Ok(report)
    }

    /// One repository's part of a pass: its untagged manifests and
    /// unreferenced blobs, then its stale uploads. The shared copies it
    /// leaves unreferenced wait for [`Store::sweep_blobstore`].
    pub async fn gc_repository(&self, repo: &RepoName, opts: GcOptions) -> StoreResult<GcReport> {
        let mut report = GcReport {
            dry_run: opts.dry_run,
            repos_scanned: 1,
            ..GcReport::default()
        };
        self.sync_sessions().await?;
        self.gc_repo(repo, opts, &mut report, &mut HashMap::new())
            .await?;
        Ok(report)
    }

    /// The `_blobstore` part of a pass alone: shared copies no repository
    /// holds, each re-checked under its sweep plan before it is deleted.
    pub async fn sweep_blobstore(&self, opts: GcOptions) -> StoreResult<GcReport> {
        let mut report = GcReport {
            dry_run: opts.dry_run,
            ..GcReport::default()
        };
        self.gc_blobstore(opts, &mut report, &HashMap::new())
            .await?;
        Ok(report)
    }

    /// True once `item` has been garbage for `delay` since the last client
    /// touch (marking it on first sight).
    async fn aged(
        &self,
        item: Marked<'_>,
        opts: GcOptions,
        seen: &mut Vec<Vec<u8>>,
    ) -> StoreResult<bool> {
        if opts.delay.is_zero() {
            return Ok(true);
        }
        let key = item.key();
        seen.push(key.clone());
        let now = marks::millis(SystemTime::now());
        match self.meta().get(Table::GC, &key).await? {
            Some(v) => {
                let since = marks::parse_mark(&v).unwrap_or(now);
                Ok(marks::old_enough(since, now, opts.delay))
            }
            None => {
                if !opts.dry_run {
                    self.meta()
                        .commit(Batch::new().put(Table::GC, key, now.to_string()))
                        .await?;
                }
                Ok(false)
            }
        }
    }

    /// Forgets marks of `scope` that this pass did not see as garbage.
    async fn clear_marks(&self, scope: &str, seen: &[Vec<u8>], opts: GcOptions) -> StoreResult<()> {
        if opts.delay.is_zero() || opts.dry_run {
            return Ok(());
        }
        let seen: HashSet<&[u8]> = seen.iter().map(Vec::as_slice).collect();
        let stale: Vec<Vec<u8>> =
            crate::meta::scan_keys(self.meta(), Table::GC, &marks::scope_prefix(scope))
                .await?
                .into_iter()
                .filter(|k| !seen.contains(k.as_slice()))
                .collect();
        if stale.is_empty() {
            return Ok(());
        }
        let batch = stale
            .into_iter()
            .fold(Batch::new(), |b, k| b.delete(Table::GC, k));
        Ok(self.meta().commit(batch).await?)
    }

    /// Rows of `repo` with their manifests' edges (each manifest read and
    /// parsed once, however many rows name it).
    async fn parsed_rows<'a, R: IndexRow>(
        &self,
        repo: &RepoName,
        rows: &'a [R],
    ) -> StoreResult<Vec<ParsedRow<'a, R>>> {
        let mut parsed: HashMap<&Digest, Option<Arc<Edges>>> = HashMap::with_capacity(rows.len());
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let manifest = match parsed.get(row.digest()) {
                Some(m) => m.clone(),
                None => {
                    let m = self
                        .parse_stored(repo, row)
                        .await?
                        .map(|m| Arc::new(Edges::from(&m)));
                    parsed.insert(row.digest(), m.clone());
                    m
                }
            };
            out.push((row, manifest));
        }
        Ok(out)
    }

    /// Adds to `keep` every blob the given rows keep: the rows' manifests
    /// and what those reference.
    fn keep_rows<'r, 'a: 'r, R: IndexRow + 'a>(
        keep: &mut HashSet<Digest>,
        rows: impl IntoIterator<Item = &'r ParsedRow<'a, R>>,
    ) {
        for (row, m) in rows {
            keep.insert(row.digest().clone());
            if let Some(m) = m {
                keep.extend(m.blobs().iter().cloned());
            }
        }
    }

    /// Under the repository's exclusive lock: prune rows, return what stays.
    async fn analyse(
        &self,
        repo: &RepoName,
        opts: GcOptions,
        report: &mut GcReport,
        seen: &mut Vec<Vec<u8>>,
        held: &StoreGuard,
    ) -> StoreResult<Option<(Analysis, Vec<Digest>)>> {
        let (body, basis) = match self.read_index_bytes_for_update(repo).await {
            Ok(read) => read,
            Err(StoreError::NameUnknown { .. }) => return Ok(None), // gone meanwhile
            Err(e) => return Err(e),
        };
        let index = IndexRows::parse(&body).map_err(|e| corrupt_index(repo, e))?;
        let rows = self.parsed_rows(repo, index.rows()).await?;
        let no_young = HashSet::new();
        let mut reached = reach::reach_from(&rows, &no_young);
        // Rows no tag reaches are garbage once aged; the young ones are
        // roots too, and keep whatever they reference.
        let mut young = HashSet::new();
        let mut old = HashSet::new();
        for (row, _) in &rows {
            let digest = row.digest();
            if reached.manifests.contains(digest) || young.contains(digest) || old.contains(digest)
            {
                continue;
            }
            if self
                .aged(Marked::Manifest(repo, digest), opts, seen)
                .await?
            {
                old.insert(digest.clone());
            } else {
                young.insert(digest.clone());
            }
        }
        if !young.is_empty() {
            reached = reach::reach_from(&rows, &young);
        }
        let drop_rows: HashSet<Digest> = old
            .into_iter()
            .filter(|d| !reached.manifests.contains(d))
            .collect();
        // What stays: what the roots reach, and young rows whose manifest
        // could not be parsed (reach cannot follow them, but they are young).
        let mut keep = reached.blobs;
        keep.extend(young);
        // The bytes `keep` was computed from, as index.json now holds them.
        let mut kept_body = body.clone();
        let pruned = if drop_rows.is_empty() || opts.dry_run {
            true
        } else {
            // The kept rows are written back as they were read.
            let pruned = Bytes::from(index.without(|row| drop_rows.contains(row.digest())));
            match self
                .write_index_bytes_removing(repo, pruned.clone(), &basis, held)
                .await
            {
                Ok(()) => {
                    kept_body = pruned;
                    true
                }
                // Full even past the reserve (writes admitted before it was
                // released took the space). Aborting here would wedge the
                // store: the space comes from this very pass's removals and
                // sweep. So the rows stay, and with them all they
                // reference; `Store::gc` tries again once it has freed space.
                Err(e) if e.is_no_space() => {
                    Store::keep_rows(&mut keep, &rows);
                    report.deferred.push(repo.to_string());
                    false
                }
                Err(e) => return Err(e),
            }
        };
        if pruned {
            for d in &drop_rows {
                report.add(GcKind::Manifest, Some(repo), Some(d), 0);
            }
        }
        drop(rows);
        let mut candidates = Vec::new();
        for d in self.layout().repo_digests(repo).await? {
            if !keep.contains(&d) && self.aged(Marked::Blob(repo, &d), opts, seen).await? {
                candidates.push(d);
            }
        }
        let analysis = Analysis {
            generation: self.generation_of(repo, Some(&kept_body)),
            keep,
        };
        Ok(Some((analysis, candidates)))
    }

    /// [`Store::gc_repo`] for a repository the pass listed, which may have
    /// been removed meanwhile: another instance's pass found it empty (with
    /// one process, the listing and the pass agree).
    async fn gc_listed_repo(
        &self,
        repo: &RepoName,
        opts: GcOptions,
        report: &mut GcReport,
        dropped: &mut HashMap<Digest, u64>,
    ) -> StoreResult<()> {
        match self.gc_repo(repo, opts, report, dropped).await {
            Err(StoreError::NameUnknown { .. }) => Ok(()),
            done => done,
        }
    }

    async fn gc_repo(
        &self,
        repo: &RepoName,
        opts: GcOptions,
        report: &mut GcReport,
        dropped: &mut HashMap<Digest, u64>,
    ) -> StoreResult<()> {
        let mut seen = Vec::new();
        let analysed = {
            let guard = self.lock(Intent::repo_change(repo)).await?;
            self.analyse(repo, opts, report, &mut seen, &guard).await?
        };
        let Some((mut analysis, candidates)) = analysed else {
            return Ok(());
        };

        for d in candidates {
            let guard = self.lock(Intent::blob_remove(repo, &d)).await?;
            let (generation, read) = self.index_generation(repo).await?;
            if generation != analysis.generation {
                // A manifest changed since the analysis: recompute what is kept.
                let body = match read {
                    Some(body) => body,
                    None => self.read_index_bytes(repo).await?,
                };
                let index = IndexRows::parse(&body).map_err(|e| corrupt_index(repo, e))?;
                let rows = self.parsed_rows(repo, index.rows()).await?;
                let mut keep = HashSet::new();
                Store::keep_rows(&mut keep, &rows);
                analysis = Analysis {
                    generation: self.generation_of(repo, Some(&body)),
                    keep,
                };
            }
            // A push or mount since the analysis restarted the blob's clock.
            if analysis.keep.contains(&d)
                || !self.still_aged(Marked::Blob(repo, &d), opts.delay).await?
            {
                continue;
            }
            let Some(size) = self.layout().stat(repo, &d).await? else {
                continue; // removed meanwhile
            };
            *dropped.entry(d.clone()).or_default() += 1;
            if opts.dry_run {
                report.add(GcKind::Blob, Some(repo), Some(&d), 0);
                continue;
            }
            guard.check()?;
            self.layout().remove(repo, &d).await?;
            // The legacy layout frees bytes when the last holder goes; the
            // blobstore frees them in the sweep.
            let shared_namespace = self.config().layout == LayoutKind::Blobstore;
            let freed = if shared_namespace || self.layout().recorded_holders(&d).await? > 0 {
                0
            } else {
                size
            };
            report.add(GcKind::Blob, Some(repo), Some(&d), freed);
            // With no delay, a copy no repository holds any more goes now,
            // not at the pass's end (where the sweep would take it with no
            // age to check either): a pass on a full disk frees space as
            // it goes, and clients push again before it ends. This plan
            // holds what the sweep's own plan does (the digest's lock, the
            // blobstore read), and the sweep re-checks the holders under
            // it. Several instances sweep under a lease only.
            if shared_namespace
                && opts.delay.is_zero()
                && !self.is_shared()
                && let Some(bytes) = self.layout().sweep(&d).await?
            {
                report.add(GcKind::BlobstoreBlob, None, Some(&d), bytes);
            }
        }

        self.gc_uploads(repo, opts, report).await?;
        self.clear_marks(repo.as_str(), &seen, opts).await?;
        if !opts.dry_run {
            let guard = self.lock(Intent::repo_change(repo)).await?;
            guard.check()?;
            self.remove_if_empty(repo, report).await?;
        }
        Ok(())
    }

    /// Upload sessions idle past the session limit, and upload files no
    /// session owns (a crash's leftovers) older than the delay.
    async fn gc_uploads(
        &self,
        repo: &RepoName,
        opts: GcOptions,
        report: &mut GcReport,
    ) -> StoreResult<()> {
        let now = SystemTime::now();
        let idle_since = now
            .checked_sub(opts.session_idle_limit())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        for id in self.uploads().idle_sessions(repo, idle_since) {
            if opts.dry_run {
                report.add(GcKind::Upload, Some(repo), None, 0);
            } else if self.cancel_upload_if_idle(&id, idle_since).await? {
                // A chunk that arrived since the listing kept it alive.
                report.add(GcKind::Upload, Some(repo), None, 0);
            }
        }
        let old = |t: SystemTime| now.duration_since(t).unwrap_or_default() >= opts.delay;
        let dir = layout::repo_dir(repo).join(".uploads").expect("valid");
        let mut removed = false;
        for path in self.driver().list(Some(&dir)).await? {
            if self.uploads().in_use(path.file_name()) {
                continue;
            }
            let meta = match self.driver().stat(&path).await {
                Ok(meta) => meta,
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e.into()),
            };
            if old(meta.modified) {
                report.add(GcKind::Upload, Some(repo), None, meta.size);
                if !opts.dry_run {
                    self.driver().delete(&path).await?;
                    removed = true;
                }
            }
        }
        if removed {
            // Durable, or a crash brings the staged files back.
            self.driver().sync_dir(Some(&dir)).await?;
        }
        Ok(())
    }

    /// Temp files of dead writers (crashed or killed processes), anywhere
    /// in the store, and repository skeletons (an `oci-layout` without its
    /// `index.json`), once older than the delay (invariant 12).
    ///
    /// Reclaimed here rather than when the store opens: opening must stay
    /// cheap and read-only (a CLI `ls` opens the store too, and another
    /// process may be writing), while GC already walks the store and owns
    /// the delay. The driver lists only files whose writer is gone, so a
    /// write in progress, here or in another live process, is never
    /// touched however long it idles; the delay is the margin for writers
    /// the driver cannot see (another machine sharing the directory).
    async fn gc_leftovers(
        &self,
        skeletons: &[RepoName],
        opts: GcOptions,
        report: &mut GcReport,
    ) -> StoreResult<()> {
        // Half-made or half-removed repositories: no catalog lists them,
        // so nothing else would ever come back to them.
        for repo in skeletons {
            let guard = self.lock(Intent::repo_change(repo)).await?;
            guard.check()?;
            if let Some((path, size)) = self.remove_skeleton(repo, opts.delay, opts.dry_run).await?
            {
                report.bytes_freed += size;
                report.items.push(GcItem {
                    kind: GcKind::Leftover,
                    repo: None,
                    digest: None,
                    bytes: size,
                    path: Some(path.to_string()),
                });
            }
        }
        let now = SystemTime::now();
        // Recorded upload sessions' staged bytes are not among them: they
        // go when their session ends or expires (the repository passes).
        for leftover in self.leftovers().await? {
            if now.duration_since(leftover.modified).unwrap_or_default() < opts.delay {
                continue;
            }
            if !opts.dry_run {
                self.driver().remove_leftover(&leftover).await?;
            }
            report.bytes_freed += leftover.size;
            report.items.push(GcItem {
                kind: GcKind::Leftover,
                repo: None,
                digest: None,
                bytes: leftover.size,
                path: Some(leftover.path),
            });
        }
        Ok(())
    }

    async fn remove_if_empty(&self, repo: &RepoName, report: &mut GcReport) -> StoreResult<()> {
        let index = match self.read_index(repo).await {
            Ok(index) => index,
            Err(StoreError::NameUnknown { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        // Open sessions count whether or not a call of theirs is running,
        // or their staged bytes are visible yet (an object store shows them
        // only at commit).
        if index.manifests.is_empty() {
            self.sync_sessions().await?; // with several instances
        }
        let uploads_open = self.uploads().any_open(repo);
        let staged = self
            .driver()
            .list(Some(
                &layout::repo_dir(repo).join(".uploads").expect("valid"),
            ))
            .await?;
        if index.manifests.is_empty()
            && !uploads_open
            && staged.is_empty()
            && self.layout().repo_digests(repo).await?.is_empty()
        {
            self.remove_repo_files(repo).await?;
            report.add(GcKind::Repository, Some(repo), None, 0);
        }
        Ok(())
    }

    /// `_blobstore` digests no repository holds, each re-checked under its
    /// lock. With several instances, one sweeps at a time, under a lease
    /// ([`fenced`]); the others skip the sweep.
    async fn gc_blobstore(
        &self,
        opts: GcOptions,
        report: &mut GcReport,
        dropped: &HashMap<Digest, u64>,
    ) -> StoreResult<()> {
        if !self.is_shared() || opts.dry_run {
            return self.sweep_unheld(opts, report, dropped, None).await;
        }
        let Some(mut lease) = self.take_sweep_lease(opts.sweep_lease).await? else {
            return Ok(()); // another instance is sweeping
        };
        let swept = async {
            self.finish_stale_sweeps(&lease, report).await?;
            self.sweep_unheld(opts, report, dropped, Some(&mut lease))
                .await
        }
        .await;
        lease.release(self.meta()).await?;
        swept
    }

    async fn sweep_unheld(
        &self,
        opts: GcOptions,
        report: &mut GcReport,
        dropped: &HashMap<Digest, u64>,
        mut lease: Option<&mut fenced::SweepLease>,
    ) -> StoreResult<()> {
        let mut seen = Vec::new();
        for (d, holders) in self.layout().blobstore_holders().await? {
            let would_be = if opts.dry_run {
                holders.saturating_sub(dropped.get(&d).copied().unwrap_or(0))
            } else {
                holders
            };
            if would_be > 0 || !self.aged(Marked::Shared(&d), opts, &mut seen).await? {
                continue;
            }
            let guard = self.lock(Intent::blobstore_sweep(&d)).await?;
            guard.check()?;
            if opts.dry_run {
                let size = self
                    .driver()
                    .stat(&layout::blobstore_blob(&d))
                    .await
                    .map_or(0, |m| m.size);
                report.add(GcKind::BlobstoreBlob, None, Some(&d), size);
            } else if let Some(lease) = lease.as_deref_mut() {
                if let Some(size) = self.sweep_announced(lease, &d).await? {
                    report.add(GcKind::BlobstoreBlob, None, Some(&d), size);
                }
            } else if let Some(size) = self.layout().sweep(&d).await? {
                report.add(GcKind::BlobstoreBlob, None, Some(&d), size);
            }
        }
        self.clear_marks(marks::SHARED_SCOPE, &seen, opts).await
    }
}
