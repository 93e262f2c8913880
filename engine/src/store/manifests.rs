//! Manifests and indexes: push with full validation, get, delete by tag or
//! digest, referrers.
//!
//! A repository's manifests are the rows of its `index.json`: one row per
//! tag (annotation `org.opencontainers.image.ref.name`) plus untagged rows
//! for manifests pushed by digest or left behind when a tag moved. The
//! manifest bodies are blobs like any other, so they are deduplicated too.

use std::collections::{BTreeMap, HashSet};

use bytes::Bytes;

use super::Store;
use crate::digest::Digest;
use crate::error::{StoreError, StoreResult};
use crate::gc::Marked;
use crate::lock::Intent;
use crate::oci::index_rows::IndexRow;
use crate::oci::manifest::{Descriptor, ImageIndex, Manifest, REF_NAME, media};
use crate::oci::names::{Reference, RepoName};

/// A manifest as stored: its media type, digest and exact bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredManifest {
    pub media_type: String,
    pub digest: Digest,
    pub body: Bytes,
}

fn row_for(
    media_type: &str,
    digest: &Digest,
    size: u64,
    tag: Option<&str>,
    artifact_type: Option<&str>,
) -> Descriptor {
    let mut annotations = BTreeMap::new();
    if let Some(tag) = tag {
        annotations.insert(REF_NAME.to_owned(), tag.to_owned());
    }
    Descriptor {
        media_type: media_type.to_owned(),
        digest: digest.clone(),
        size,
        artifact_type: artifact_type.map(str::to_owned),
        annotations,
        platform: None,
    }
}

/// Removes the row of `tag`; if that leaves its manifest without any row,
/// keeps it as an untagged row (still reachable by digest).
fn untag(index: &mut ImageIndex, tag: &str) -> Option<Digest> {
    let pos = index
        .manifests
        .iter()
        .position(|row| row.tag() == Some(tag))?;
    let mut row = index.manifests.remove(pos);
    if !index.manifests.iter().any(|r| r.digest == row.digest) {
        row.annotations.remove(REF_NAME);
        index.manifests.push(row.clone());
    }
    Some(row.digest)
}

impl Store {
    /// Pushes a manifest or index under a tag or its digest; returns its digest.
    ///
    /// Rules: the body validates ([`Manifest::parse`]); by digest, it hashes
    /// to that digest; an image's config and layers, and an index's children,
    /// exist in THIS repository (`MANIFEST_BLOB_UNKNOWN`); a `subject` may
    /// dangle. Nothing changes unless every rule holds.
    pub async fn put_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        media_type: &str,
        body: Bytes,
    ) -> StoreResult<Digest> {
        let manifest = Manifest::parse(media_type, &body)?;
        self.admit_write().await?;
        let digest = match reference {
            Reference::Digest(d) => {
                let actual = Digest::of(d.algorithm(), &body);
                if &actual != d {
                    return Err(StoreError::DigestMismatch {
                        expected: d.clone(),
                        actual,
                    });
                }
                actual
            }
            Reference::Tag(_) => Digest::sha256(&body),
        };
        let guard = self.lock(Intent::manifest_put(repo, &digest)).await?;
        self.ensure_repo(repo).await?;
        let (mut index, basis) = self.read_index_for_update(repo).await?;
        for blob in manifest.blobs() {
            match self.layout().stat(repo, &blob.digest).await? {
                Some(size) if size == blob.size => {}
                Some(size) => {
                    return Err(StoreError::ManifestInvalid {
                        reason: format!(
                            "{} is {size} bytes, the manifest says {}",
                            blob.digest, blob.size
                        ),
                    });
                }
                None => {
                    return Err(StoreError::ManifestBlobUnknown {
                        repo: repo.to_string(),
                        digest: blob.digest.clone(),
                    });
                }
            }
        }
        for child in manifest.children() {
            if !index.manifests.iter().any(|row| row.digest == child.digest) {
                return Err(StoreError::ManifestBlobUnknown {
                    repo: repo.to_string(),
                    digest: child.digest.clone(),
                });
            }
        }
        self.layout()
            .ingest_bytes(repo, &digest, body.clone())
            .await?;
        let artifact_type = manifest.artifact_type.as_deref();
        match reference {
            Reference::Tag(tag) => {
                untag(&mut index, tag.as_str());
                index
                    .manifests
                    .retain(|row| !(row.digest == digest && row.tag().is_none()));
                index.manifests.push(row_for(
                    media_type,
                    &digest,
                    body.len() as u64,
                    Some(tag.as_str()),
                    artifact_type,
                ));
            }
            Reference::Digest(_) => {
                if !index.manifests.iter().any(|row| row.digest == digest) {
                    index.manifests.push(row_for(
                        media_type,
                        &digest,
                        body.len() as u64,
                        None,
                        artifact_type,
                    ));
                }
            }
        }
        self.write_index(repo, &index, &basis, &guard).await?;
        // A put, even of a manifest the repository has, restarts its clock.
        self.touch(&[Marked::Manifest(repo, &digest), Marked::Blob(repo, &digest)])
            .await?;
        Ok(digest)
    }

    /// The manifest a tag or digest names, verified against its digest.
    pub async fn get_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> StoreResult<StoredManifest> {
        let _guard = self.lock(Intent::blob_read(repo)).await?;
        let index = self.read_index(repo).await?;
        let row = find_row(&index, reference).ok_or_else(|| manifest_unknown(repo, reference))?;
        let body = self
            .layout()
            .read(repo, &row.digest, None)
            .await?
            .ok_or_else(|| manifest_unknown(repo, reference))?;
        Ok(StoredManifest {
            media_type: row.media_type.clone(),
            digest: row.digest.clone(),
            body,
        })
    }

    /// Deletes a tag (the manifest stays reachable by digest), or a manifest
    /// by digest with all its tags (refused while an index of the repository
    /// lists it).
    pub async fn delete_manifest(&self, repo: &RepoName, reference: &Reference) -> StoreResult<()> {
        match reference {
            Reference::Tag(tag) => {
                let guard = self.lock(Intent::repo_write(repo)).await?;
                let (mut index, basis) = self.read_index_for_update(repo).await?;
                untag(&mut index, tag.as_str()).ok_or_else(|| manifest_unknown(repo, reference))?;
                self.write_index_removing(repo, &index, &basis, &guard)
                    .await
            }
            Reference::Digest(digest) => {
                let guard = self.lock(Intent::blob_remove(repo, digest)).await?;
                let (mut index, basis) = self.read_index_for_update(repo).await?;
                if !index.manifests.iter().any(|row| &row.digest == digest) {
                    return Err(manifest_unknown(repo, reference));
                }
                for row in index
                    .manifests
                    .iter()
                    .filter(|r| media::is_index(&r.media_type) && &r.digest != digest)
                {
                    if let Some(parent) = self.parse_stored(repo, row).await?
                        && parent.children().iter().any(|c| &c.digest == digest)
                    {
                        return Err(StoreError::Denied {
                            reason: format!("{digest} is listed by index {} in {repo}", row.digest),
                        });
                    }
                }
                index.manifests.retain(|row| &row.digest != digest);
                self.write_index_removing(repo, &index, &basis, &guard)
                    .await?;
                // Its bytes stay while another manifest of the repository
                // uses them as its config or a layer (a blob like any other).
                if self.referenced_blobs(repo, &index).await?.contains(digest) {
                    return Ok(());
                }
                self.layout().remove(repo, digest).await
            }
        }
    }

    /// Manifests of `repo` whose `subject` is `subject`, optionally only
    /// those of one artifact type (OCI referrers API).
    pub async fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> StoreResult<Vec<Descriptor>> {
        let _guard = self.lock(Intent::blob_read(repo)).await?;
        let index = self.read_index(repo).await?;
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for row in &index.manifests {
            if !seen.insert(&row.digest) {
                continue;
            }
            let Some(m) = self.parse_stored(repo, row).await? else {
                continue;
            };
            if m.subject.as_ref().is_none_or(|s| &s.digest != subject) {
                continue;
            }
            let at = m.effective_artifact_type();
            if artifact_type.is_some_and(|want| Some(want) != at) {
                continue;
            }
            out.push(Descriptor {
                media_type: row.media_type.clone(),
                digest: row.digest.clone(),
                size: row.size,
                artifact_type: at.map(str::to_owned),
                annotations: m.annotations.clone(),
                platform: None,
            });
        }
        out.sort_by(|a, b| a.digest.cmp(&b.digest));
        Ok(out)
    }

    /// How many distinct manifests `repo` has (rows of its index.json).
    pub async fn manifest_count(&self, repo: &RepoName) -> StoreResult<usize> {
        let _guard = self.lock(Intent::repo_read(repo)).await?;
        let index = self.read_index(repo).await?;
        Ok(index
            .manifests
            .iter()
            .map(|r| &r.digest)
            .collect::<HashSet<_>>()
            .len())
    }

    /// The stored manifest of an index row, parsed; `None` if its bytes are
    /// gone or do not parse (fsck reports those).
    pub(crate) async fn parse_stored(
        &self,
        repo: &RepoName,
        row: &impl IndexRow,
    ) -> StoreResult<Option<Manifest>> {
        let Some(body) = self.layout().read(repo, row.digest(), None).await? else {
            return Ok(None);
        };
        Ok(Manifest::parse(row.media_type(), &body).ok())
    }

    /// Every blob an image manifest of the repository references: computed
    /// once per call, O(manifests).
    pub(crate) async fn referenced_blobs(
        &self,
        repo: &RepoName,
        index: &ImageIndex,
    ) -> StoreResult<HashSet<Digest>> {
        let mut out = HashSet::new();
        let mut seen = HashSet::new();
        for row in &index.manifests {
            if !seen.insert(&row.digest) {
                continue;
            }
            if let Some(m) = self.parse_stored(repo, row).await? {
                out.extend(m.blobs().into_iter().map(|d| d.digest.clone()));
            }
        }
        Ok(out)
    }
}

fn find_row<'a>(index: &'a ImageIndex, reference: &Reference) -> Option<&'a Descriptor> {
    match reference {
        Reference::Tag(tag) => index
            .manifests
            .iter()
            .find(|row| row.tag() == Some(tag.as_str())),
        Reference::Digest(d) => index.manifests.iter().find(|row| &row.digest == d),
    }
}

fn manifest_unknown(repo: &RepoName, reference: &Reference) -> StoreError {
    StoreError::ManifestUnknown {
        repo: repo.to_string(),
        reference: reference.to_string(),
    }
}
