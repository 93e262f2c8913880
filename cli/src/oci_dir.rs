//! OCI image layout directories in and out of a store (`import`, `export`).
//!
//! A layout directory is hostile input like any other: its index.json and
//! manifests are size-capped and validated, every blob is checked against its
//! digest while it streams in, and paths inside it are built from validated
//! digests only, so nothing can point outside the directory.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use engine::oci::{Descriptor, ImageIndex, Manifest, REF_NAME, media};
use engine::{Digest, Reference, RepoName, Store, StoreError, Tag};
use serde::Serialize;

use crate::CliError;

const CHUNK: usize = 8 << 20;
/// Index children nest (index of indexes); deeper than this is refused.
const MAX_DEPTH: usize = 8;

fn blob_path(dir: &Path, d: &Digest) -> PathBuf {
    dir.join("blobs")
        .join(d.algorithm().as_str())
        .join(&*d.hex())
}

fn bad_layout(dir: &Path, why: impl std::fmt::Display) -> CliError {
    CliError::Usage(format!(
        "{} is not a usable OCI layout: {why}",
        dir.display()
    ))
}

fn read_capped(path: &Path, cap: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    File::open(path)?
        .take(cap as u64 + 1)
        .read_to_end(&mut buf)?;
    if buf.len() > cap {
        return Err(std::io::Error::other(format!("larger than {cap} bytes")));
    }
    Ok(buf)
}

/// What an import did.
#[derive(Debug, Default, Serialize)]
pub struct ImportReport {
    pub repo: String,
    pub manifests: usize,
    pub tags: Vec<String>,
    pub blobs_uploaded: usize,
    pub blobs_already_present: usize,
    pub bytes_uploaded: u64,
}

struct Importer<'a> {
    store: &'a Store,
    repo: &'a RepoName,
    dir: &'a Path,
    done: HashSet<Digest>,
    report: ImportReport,
}

/// Imports the manifests of the layout at `dir` into `repo`: the one tagged
/// `only` (or the only manifest, tagged `only`), or every manifest with the
/// tags its `org.opencontainers.image.ref.name` annotations give.
pub async fn import(
    store: &Store,
    repo: &RepoName,
    only: Option<&Tag>,
    dir: &Path,
) -> Result<ImportReport, CliError> {
    let layout = read_capped(&dir.join("oci-layout"), 4096)
        .map_err(|e| bad_layout(dir, format!("oci-layout: {e}")))?;
    let layout: serde_json::Value =
        serde_json::from_slice(&layout).map_err(|e| bad_layout(dir, format!("oci-layout: {e}")))?;
    if layout
        .get("imageLayoutVersion")
        .and_then(|v| v.as_str())
        .is_none()
    {
        return Err(bad_layout(dir, "oci-layout has no imageLayoutVersion"));
    }
    let index = read_capped(
        &dir.join("index.json"),
        engine::oci::manifest::MAX_MANIFEST_SIZE,
    )
    .map_err(|e| bad_layout(dir, format!("index.json: {e}")))?;
    let index: ImageIndex =
        serde_json::from_slice(&index).map_err(|e| bad_layout(dir, format!("index.json: {e}")))?;
    let rows: Vec<(&Descriptor, Option<String>)> = match only {
        Some(tag) => {
            let tagged: Vec<_> = index
                .manifests
                .iter()
                .filter(|r| r.tag() == Some(tag.as_str()))
                .collect();
            match (tagged.as_slice(), index.manifests.as_slice()) {
                ([row], _) => vec![(*row, Some(tag.to_string()))],
                ([], [single]) => vec![(single, Some(tag.to_string()))],
                ([], _) => return Err(bad_layout(dir, format!("no manifest is tagged {tag}"))),
                _ => {
                    return Err(bad_layout(
                        dir,
                        format!("several manifests are tagged {tag}"),
                    ));
                }
            }
        }
        None => index
            .manifests
            .iter()
            .map(|r| (r, r.tag().map(str::to_owned)))
            .collect(),
    };
    let mut importer = Importer {
        store,
        repo,
        dir,
        done: HashSet::new(),
        report: ImportReport {
            repo: repo.to_string(),
            ..ImportReport::default()
        },
    };
    for (row, tag) in rows {
        let tag = tag
            .map(|t| Tag::parse(&t).map_err(|e| bad_layout(dir, e)))
            .transpose()?;
        importer
            .manifest(&row.digest, &row.media_type, tag.as_ref(), 0)
            .await?;
    }
    Ok(importer.report)
}

impl Importer<'_> {
    async fn manifest(
        &mut self,
        digest: &Digest,
        media_type: &str,
        tag: Option<&Tag>,
        depth: usize,
    ) -> Result<(), CliError> {
        if depth > MAX_DEPTH {
            return Err(bad_layout(self.dir, "indexes nest deeper than 8 levels"));
        }
        let body = read_capped(
            &blob_path(self.dir, digest),
            engine::oci::manifest::MAX_MANIFEST_SIZE,
        )
        .map_err(|e| bad_layout(self.dir, format!("manifest {digest}: {e}")))?;
        if Digest::of(digest.algorithm(), &body) != *digest {
            return Err(bad_layout(
                self.dir,
                format!("manifest {digest} does not match its digest"),
            ));
        }
        if self.done.insert(digest.clone()) {
            let manifest = Manifest::parse(media_type, &body)?;
            for child in manifest.children() {
                Box::pin(self.manifest(&child.digest, &child.media_type, None, depth + 1)).await?;
            }
            for blob in manifest.blobs() {
                self.blob(&blob.digest).await?;
            }
            self.store
                .put_manifest(
                    self.repo,
                    &Reference::Digest(digest.clone()),
                    media_type,
                    Bytes::from(body.clone()),
                )
                .await?;
            self.report.manifests += 1;
        }
        if let Some(tag) = tag {
            self.store
                .put_manifest(
                    self.repo,
                    &Reference::Tag(tag.clone()),
                    media_type,
                    Bytes::from(body),
                )
                .await?;
            self.report.tags.push(tag.to_string());
        }
        Ok(())
    }

    /// Streams one blob in, hashed by the store as it arrives.
    async fn blob(&mut self, digest: &Digest) -> Result<(), CliError> {
        if !self.done.insert(digest.clone()) {
            return Ok(());
        }
        if self.store.stat_blob(self.repo, digest).await.is_ok() {
            self.report.blobs_already_present += 1;
            return Ok(());
        }
        let path = blob_path(self.dir, digest);
        let mut file =
            File::open(&path).map_err(|e| bad_layout(self.dir, format!("blob {digest}: {e}")))?;
        let id = self.store.start_upload(self.repo).await?;
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = file
                .read(&mut buf)
                .map_err(|e| bad_layout(self.dir, format!("blob {digest}: {e}")))?;
            if n == 0 {
                break;
            }
            self.store
                .upload_chunk(&id, None, Bytes::copy_from_slice(&buf[..n]))
                .await?;
            self.report.bytes_uploaded += n as u64;
        }
        match self.store.finish_upload(&id, digest, None).await {
            Err(StoreError::DigestMismatch { .. }) => Err(bad_layout(
                self.dir,
                format!("blob {digest} does not match its digest"),
            )),
            other => other.map_err(CliError::from),
        }?;
        self.report.blobs_uploaded += 1;
        Ok(())
    }
}

/// What an export wrote.
#[derive(Debug, Default, Serialize)]
pub struct ExportReport {
    pub manifest: String,
    pub media_type: String,
    pub blobs: usize,
    pub bytes: u64,
}

/// Writes `reference` of `repo` and everything it reaches as an OCI layout in
/// `dir`, which must not exist or be empty.
pub async fn export(
    store: &Store,
    repo: &RepoName,
    reference: &Reference,
    dir: &Path,
) -> Result<ExportReport, CliError> {
    if dir.exists()
        && fs::read_dir(dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(CliError::Usage(format!(
            "{} exists and is not empty",
            dir.display()
        )));
    }
    let io = |e: std::io::Error| CliError::Usage(format!("writing {}: {e}", dir.display()));
    fs::create_dir_all(dir).map_err(io)?;
    let top = store.get_manifest(repo, reference).await?;
    let mut report = ExportReport {
        manifest: top.digest.to_string(),
        media_type: top.media_type.clone(),
        ..ExportReport::default()
    };
    let mut written = HashSet::new();
    let mut stack = vec![(top.digest.clone(), top.body.clone(), top.media_type.clone())];
    while let Some((digest, body, media_type)) = stack.pop() {
        write_blob(dir, &digest, &body, &mut written, &mut report).map_err(io)?;
        let manifest = Manifest::parse(&media_type, &body)?;
        for child in manifest.children() {
            let m = store
                .get_manifest(repo, &Reference::Digest(child.digest.clone()))
                .await?;
            stack.push((m.digest, m.body, m.media_type));
        }
        for blob in manifest.blobs() {
            if written.contains(&blob.digest) {
                continue;
            }
            let data = store.get_blob(repo, &blob.digest).await?;
            write_blob(dir, &blob.digest, &data, &mut written, &mut report).map_err(io)?;
        }
    }
    let mut annotations = BTreeMap::new();
    if let Reference::Tag(tag) = reference {
        annotations.insert(REF_NAME.to_owned(), tag.to_string());
    }
    let index = ImageIndex {
        manifests: vec![Descriptor {
            media_type: top.media_type,
            digest: top.digest,
            size: top.body.len() as u64,
            artifact_type: None,
            annotations,
            platform: None,
        }],
        ..ImageIndex::default()
    };
    fs::write(
        dir.join("index.json"),
        serde_json::to_vec_pretty(&index).expect("serialises"),
    )
    .map_err(io)?;
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(io)?;
    debug_assert!(media::MANIFESTS.contains(&report.media_type.as_str()));
    Ok(report)
}

fn write_blob(
    dir: &Path,
    d: &Digest,
    data: &[u8],
    written: &mut HashSet<Digest>,
    report: &mut ExportReport,
) -> std::io::Result<()> {
    if !written.insert(d.clone()) {
        return Ok(());
    }
    let path = blob_path(dir, d);
    fs::create_dir_all(path.parent().expect("has a parent"))?;
    File::create(&path)?.write_all(data)?;
    report.blobs += 1;
    report.bytes += data.len() as u64;
    Ok(())
}
