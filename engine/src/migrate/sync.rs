//! Side-by-side migration: fill a new (blobstore) store from an old one
//! through the store API, then compare them before cut-over.
//!
//! Every blob travels through `push_blob`, which verifies its digest, so a
//! damaged source blob is reported, never copied. A re-run copies only what
//! the new store lacks (incremental).

use std::collections::{BTreeMap, BTreeSet, HashSet};

use serde::Serialize;

use crate::digest::Digest;
use crate::error::StoreResult;
use crate::oci::manifest::Manifest;
use crate::oci::names::{Reference, RepoName};
use crate::store::Store;

/// What a sync did and how the two stores compare afterwards.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SyncReport {
    pub repos: usize,
    pub manifests_copied: usize,
    pub blobs_copied: usize,
    pub bytes_copied: u64,
    pub blobs_already_present: usize,
    /// Anything that differs after the sync (empty: safe to cut over).
    pub differences: Vec<String>,
    pub problems: Vec<String>,
}

impl SyncReport {
    pub fn equal(&self) -> bool {
        self.differences.is_empty()
    }
}

/// Copies every repository, manifest, tag and blob of `old` into `new`.
pub async fn sync_stores(old: &Store, new: &Store) -> StoreResult<SyncReport> {
    let mut report = SyncReport::default();
    for repo in old.repositories().await? {
        report.repos += 1;
        let index = old.read_index(&repo).await?;
        let mut done = HashSet::new();
        for row in &index.manifests {
            copy_manifest(old, new, &repo, &row.digest, &mut done, &mut report, 0).await?;
        }
        for row in &index.manifests {
            let Some(tag) = row.tag() else { continue };
            let reference = Reference::parse(tag)?;
            let current = new
                .get_manifest(&repo, &reference)
                .await
                .ok()
                .map(|m| m.digest);
            if current.as_ref() != Some(&row.digest) {
                let m = old
                    .get_manifest(&repo, &Reference::Digest(row.digest.clone()))
                    .await?;
                new.put_manifest(&repo, &reference, &m.media_type, m.body)
                    .await?;
            }
        }
        // Blobs no manifest references still belong to the repository.
        for d in old.repo_blobs(&repo).await? {
            copy_blob(old, new, &repo, &d, &mut report).await?;
        }
    }
    report.differences = compare(old, new).await?;
    Ok(report)
}

async fn copy_blob(
    old: &Store,
    new: &Store,
    repo: &RepoName,
    d: &Digest,
    report: &mut SyncReport,
) -> StoreResult<()> {
    if new.stat_blob(repo, d).await.is_ok() {
        report.blobs_already_present += 1;
        return Ok(());
    }
    match old.get_blob(repo, d).await {
        Ok(data) => {
            report.bytes_copied += data.len() as u64;
            new.push_blob(repo, d, data).await?;
            report.blobs_copied += 1;
        }
        Err(e) => report.problems.push(format!("{repo}: {d}: {e}")),
    }
    Ok(())
}

async fn copy_manifest(
    old: &Store,
    new: &Store,
    repo: &RepoName,
    digest: &Digest,
    done: &mut HashSet<Digest>,
    report: &mut SyncReport,
    depth: usize,
) -> StoreResult<()> {
    if depth > 8 || !done.insert(digest.clone()) {
        return Ok(());
    }
    let reference = Reference::Digest(digest.clone());
    let m = match old.get_manifest(repo, &reference).await {
        Ok(m) => m,
        Err(e) => {
            report
                .problems
                .push(format!("{repo}: manifest {digest}: {e}"));
            return Ok(());
        }
    };
    let parsed = Manifest::parse(&m.media_type, &m.body)?;
    for child in parsed.children() {
        Box::pin(copy_manifest(
            old,
            new,
            repo,
            &child.digest,
            done,
            report,
            depth + 1,
        ))
        .await?;
    }
    for b in parsed.blobs() {
        copy_blob(old, new, repo, &b.digest, report).await?;
    }
    if new.get_manifest(repo, &reference).await.is_err() {
        new.put_manifest(repo, &reference, &m.media_type, m.body)
            .await?;
        report.manifests_copied += 1;
    }
    Ok(())
}

/// Per repository: tags (-> digest), manifests, blobs. Equal, or listed.
pub async fn compare(old: &Store, new: &Store) -> StoreResult<Vec<String>> {
    let mut out = Vec::new();
    let (a, b) = (old.repositories().await?, new.repositories().await?);
    let (a_set, b_set): (BTreeSet<_>, BTreeSet<_>) = (a.iter().collect(), b.iter().collect());
    for r in a_set.symmetric_difference(&b_set) {
        out.push(format!("repository {r} exists on one side only"));
    }
    for repo in a_set.intersection(&b_set) {
        let summary = |s: &Store| {
            let s = s.clone();
            let repo = (*repo).clone();
            async move {
                let index = s.read_index(&repo).await?;
                let tags: BTreeMap<String, Digest> = index
                    .manifests
                    .iter()
                    .filter_map(|r| r.tag().map(|t| (t.to_owned(), r.digest.clone())))
                    .collect();
                let manifests: BTreeSet<Digest> =
                    index.manifests.iter().map(|r| r.digest.clone()).collect();
                let blobs: BTreeSet<Digest> = s.repo_blobs(&repo).await?.into_iter().collect();
                StoreResult::Ok((tags, manifests, blobs))
            }
        };
        let (ta, ma, ba) = summary(old).await?;
        let (tb, mb, bb) = summary(new).await?;
        if ta != tb {
            out.push(format!("{repo}: tags differ"));
        }
        if ma != mb {
            out.push(format!(
                "{repo}: manifests differ ({} vs {})",
                ma.len(),
                mb.len()
            ));
        }
        if ba != bb {
            out.push(format!(
                "{repo}: blobs differ ({} vs {})",
                ba.len(),
                bb.len()
            ));
        }
    }
    Ok(out)
}
