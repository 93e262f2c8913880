//! Repositories: creation, existence, the catalog, and tag listing.

use bytes::Bytes;

use super::Store;
use crate::driver::{DriverPath, PutMode};
use crate::error::{StoreError, StoreResult};
use crate::layout::{self, BLOBSTORE};
use crate::lock::Intent;
use crate::oci::manifest::ImageIndex;
use crate::oci::names::{RepoName, Tag};

const OCI_LAYOUT_BODY: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

/// Page size limit for catalog and tag listings, whatever `n` asks for.
pub const MAX_PAGE: usize = 10_000;

impl Store {
    /// Creates `repo` as an empty OCI layout. Idempotent.
    pub async fn init_repo(&self, repo: &RepoName) -> StoreResult<()> {
        self.admit_write().await?;
        let _guard = self.lock(Intent::repo_write(repo)).await?;
        self.ensure_repo(repo).await
    }

    /// Creates the repo's files if missing. Safe under any lock on the repo:
    /// both writes are put-if-absent, and `index.json` (what makes a
    /// directory a repository) comes last.
    pub(crate) async fn ensure_repo(&self, repo: &RepoName) -> StoreResult<()> {
        if self.repo_known(repo) {
            return Ok(());
        }
        let d = self.driver();
        for (path, body) in [
            (
                layout::oci_layout(repo),
                Bytes::from_static(OCI_LAYOUT_BODY),
            ),
            (
                layout::index_json(repo),
                Bytes::from(serde_json::to_vec(&ImageIndex::default()).expect("serialises")),
            ),
        ] {
            match d.put(&path, body, PutMode::IfAbsent).await {
                Ok(()) => {}
                Err(e) if e.is_already_exists() => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.inner.known_repos.lock().unwrap().insert(repo.clone());
        Ok(())
    }

    /// `NAME_UNKNOWN` unless `repo` exists.
    pub(crate) async fn require_repo(&self, repo: &RepoName) -> StoreResult<()> {
        if self.repo_known(repo) {
            return Ok(());
        }
        match self.driver().stat(&layout::index_json(repo)).await {
            Ok(_) => {
                self.inner.known_repos.lock().unwrap().insert(repo.clone());
                Ok(())
            }
            Err(e) if e.is_not_found() => Err(StoreError::NameUnknown {
                repo: repo.to_string(),
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Known to exist without asking the driver. Only one process alone can
    /// trust what it saw: with several instances, another one's GC may
    /// have removed the repository since.
    fn repo_known(&self, repo: &RepoName) -> bool {
        !self.is_shared() && self.inner.known_repos.lock().unwrap().contains(repo)
    }

    /// Removes an empty repository's own files (GC, under its lock).
    pub(crate) async fn remove_repo_files(&self, repo: &RepoName) -> StoreResult<()> {
        self.inner.known_repos.lock().unwrap().remove(repo);
        let d = self.driver();
        // index.json first: without it the directory is no longer a repository.
        d.delete(&layout::index_json(repo)).await?;
        d.delete(&layout::oci_layout(repo)).await?;
        d.sync_dir(Some(&layout::repo_dir(repo))).await?;
        Ok(())
    }

    /// Under `repo`'s exclusive lock: removes the `oci-layout` of a
    /// directory that is no repository (no `index.json`, re-checked here)
    /// once it is at least `min_age` old, and returns its path and size.
    /// `None`: a repository now, gone, or too young. `dry_run` only says.
    pub(crate) async fn remove_skeleton(
        &self,
        repo: &RepoName,
        min_age: std::time::Duration,
        dry_run: bool,
    ) -> StoreResult<Option<(DriverPath, u64)>> {
        let d = self.driver();
        let layout_file = layout::oci_layout(repo);
        let meta = match d.stat(&layout_file).await {
            Ok(meta) => meta,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        match d.stat(&layout::index_json(repo)).await {
            Ok(_) => return Ok(None), // made a repository meanwhile
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
        let age = std::time::SystemTime::now()
            .duration_since(meta.modified)
            .unwrap_or_default();
        if age < min_age {
            return Ok(None);
        }
        if !dry_run {
            self.inner.known_repos.lock().unwrap().remove(repo);
            d.delete(&layout_file).await?;
            d.sync_dir(Some(&layout::repo_dir(repo))).await?;
        }
        Ok(Some((layout_file, meta.size)))
    }

    /// Every repository in lexical order, unpaged: for work over the whole
    /// store (fsck, sync, the CLI). [`Store::catalog`] pages at most
    /// [`MAX_PAGE`]; GC and fsck used to call it, and a store with more
    /// repositories than that was never collected or checked past them.
    pub async fn repositories(&self) -> StoreResult<Vec<RepoName>> {
        list_repos(self.driver()).await
    }

    /// Repositories in lexical order, after `last`, at most `n` (OCI paging).
    /// `_blobstore` and every `_`-prefixed name are never listed.
    pub async fn catalog(
        &self,
        n: Option<usize>,
        last: Option<&str>,
    ) -> StoreResult<Vec<RepoName>> {
        let repos = list_repos(self.driver()).await?;
        Ok(page(repos, n, last, |r| r.as_str()))
    }

    /// Tags of `repo` in lexical order, after `last`, at most `n`.
    pub async fn tags(
        &self,
        repo: &RepoName,
        n: Option<usize>,
        last: Option<&str>,
    ) -> StoreResult<Vec<Tag>> {
        let _guard = self.lock(Intent::repo_read(repo)).await?;
        let index = self.read_index(repo).await?;
        let mut tags: Vec<Tag> = index
            .manifests
            .iter()
            .filter_map(|d| d.tag())
            .filter_map(|t| Tag::parse(t).ok())
            .collect();
        tags.sort();
        tags.dedup();
        Ok(page(tags, n, last, |t| t.as_str()))
    }
}

fn page<T>(
    items: Vec<T>,
    n: Option<usize>,
    last: Option<&str>,
    key: impl Fn(&T) -> &str,
) -> Vec<T> {
    let n = n.unwrap_or(MAX_PAGE).min(MAX_PAGE);
    items
        .into_iter()
        .filter(|item| last.is_none_or(|l| key(item) > l))
        .take(n)
        .collect()
}

/// Every repository below the driver's root, sorted: a directory holding an
/// `index.json`. Hidden `_` names at the top, and a repository's own `blobs`
/// and `.uploads`, are not walked.
pub(crate) async fn list_repos(driver: &dyn crate::driver::Driver) -> StoreResult<Vec<RepoName>> {
    Ok(walk_repo_dirs(driver).await?.repos)
}

/// What [`walk_repo_dirs`] finds.
pub(crate) struct RepoDirs {
    /// Directories holding an `index.json`, sorted.
    pub repos: Vec<RepoName>,
    /// Directories holding an `oci-layout` and no `index.json`: a repository
    /// a process died making (`ensure_repo` writes `oci-layout` first) or
    /// removing (`remove_repo_files` deletes `index.json` first).
    pub skeletons: Vec<RepoName>,
}

/// One walk of the root for [`list_repos`] and GC's skeletons.
pub(crate) async fn walk_repo_dirs(driver: &dyn crate::driver::Driver) -> StoreResult<RepoDirs> {
    let (mut repos, mut skeletons) = (Vec::new(), Vec::new());
    let mut stack: Vec<Option<DriverPath>> = vec![None];
    while let Some(dir) = stack.pop() {
        let listing = driver.list_dir(dir.as_ref()).await?;
        let has = |name: &str| listing.files.iter().any(|f| f == name);
        let is_repo = dir.is_some() && has("index.json");
        if let Some(dir) = &dir
            && let Ok(repo) = RepoName::parse(dir.as_str())
        {
            if is_repo {
                repos.push(repo);
            } else if has("oci-layout") {
                skeletons.push(repo);
            }
        }
        for child in listing.dirs {
            let skip = match &dir {
                None => child.starts_with('_') || child == BLOBSTORE,
                Some(_) => is_repo && (child == "blobs" || child == ".uploads"),
            };
            if skip {
                continue;
            }
            let path = match &dir {
                None => DriverPath::new(&child),
                Some(d) => d.join(&child),
            };
            if let Ok(path) = path {
                stack.push(Some(path));
            }
        }
    }
    repos.sort();
    skeletons.sort();
    Ok(RepoDirs { repos, skeletons })
}
