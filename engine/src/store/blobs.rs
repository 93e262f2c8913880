//! Blobs: upload sessions (monolithic, chunked, streamed), existence, reads,
//! cross-repository mounts and deletes.
//!
//! An upload streams into `<repo>/.uploads/<id>` while it is hashed, so the
//! digest is known the moment the last chunk lands and the bytes are never
//! read back to hash them (except for a non-sha256 digest, see
//! [`Store::finish_upload`]). Only a verified upload enters the layout, under
//! the `blob_insert` lock plan.

use std::collections::HashMap;
use std::ops::Range;
use std::time::SystemTime;

use bytes::Bytes;

use super::Store;
use crate::digest::{Algorithm, Digest, DigestHasher};
use crate::driver::{BlobWriter, PutMode};
use crate::error::{StoreError, StoreResult};
use crate::gc::Marked;
use crate::layout;
use crate::lock::Intent;
use crate::oci::names::RepoName;
use crate::sync::unmodeled::Mutex;

/// Live upload sessions, by id.
///
/// A session's slot stays in the map from `start_upload` until it finishes,
/// is cancelled or fails, so GC sees every live session, including one
/// whose call is running. Its writer and hasher are taken out of the slot
/// while one of its calls runs, so two concurrent calls on one session
/// cannot interleave: the second sees `BLOB_UPLOAD_UNKNOWN`, as a client
/// misusing a session should, and GC never cancels a session mid-call.
#[derive(Default)]
pub(crate) struct Uploads {
    sessions: Mutex<HashMap<String, Session>>,
}

struct Session {
    repo: RepoName,
    started: SystemTime,
    /// The last client call on the session: it ages from here (DESIGN §7).
    touched: SystemTime,
    /// Bytes received so far.
    offset: u64,
    /// `None` while one of its calls runs.
    io: Option<SessionIo>,
}

struct SessionIo {
    writer: Box<dyn BlobWriter>,
    hasher: DigestHasher,
}

/// Where an upload stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadStatus {
    pub repo: RepoName,
    /// Bytes received so far (the next chunk must start here).
    pub offset: u64,
    pub started: SystemTime,
    /// The last chunk (or the start): idle time counts from here.
    pub touched: SystemTime,
}

fn upload_unknown(id: &str) -> StoreError {
    StoreError::BlobUploadUnknown {
        id: id.chars().take(80).collect(),
    }
}

impl Uploads {
    /// Reserves a slot for a session whose writer is being opened: from
    /// now on its repository is not empty.
    fn reserve(&self, id: &str, repo: &RepoName) {
        let now = SystemTime::now();
        self.sessions.lock().unwrap().insert(
            id.to_owned(),
            Session {
                repo: repo.clone(),
                started: now,
                touched: now,
                offset: 0,
                io: None,
            },
        );
    }

    /// Takes the session's writer for one call (the slot stays, busy).
    fn take(&self, id: &str) -> StoreResult<SessionIo> {
        let mut sessions = self.sessions.lock().unwrap();
        let session = sessions.get_mut(id).ok_or_else(|| upload_unknown(id))?;
        let io = session.io.take().ok_or_else(|| upload_unknown(id))?;
        session.touched = SystemTime::now();
        Ok(io)
    }

    /// Ends a call: the session is idle again, touched now.
    fn put_back(&self, id: &str, io: SessionIo) {
        let mut sessions = self.sessions.lock().unwrap();
        if let Some(session) = sessions.get_mut(id) {
            session.offset = io.hasher.len();
            session.touched = SystemTime::now();
            session.io = Some(io);
        }
    }

    /// The session is over (finished, cancelled or failed).
    fn end(&self, id: &str) {
        self.sessions.lock().unwrap().remove(id);
    }

    /// Idle sessions of `repo` not touched since `idle_since`.
    pub(crate) fn idle_sessions(&self, repo: &RepoName, idle_since: SystemTime) -> Vec<String> {
        let sessions = self.sessions.lock().unwrap();
        sessions
            .iter()
            .filter(|(_, s)| &s.repo == repo && s.io.is_some() && s.touched <= idle_since)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Cancels session `id` if it is still idle since `idle_since`, in one
    /// step with the check, so a chunk that arrives meanwhile keeps it.
    pub(crate) async fn cancel_if_idle(
        &self,
        id: &str,
        idle_since: SystemTime,
    ) -> StoreResult<bool> {
        let io = {
            let mut sessions = self.sessions.lock().unwrap();
            match sessions.get(id) {
                Some(s) if s.io.is_some() && s.touched <= idle_since => {
                    sessions.remove(id).and_then(|s| s.io)
                }
                _ => None,
            }
        };
        match io {
            Some(io) => {
                io.writer.abort().await?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Whether `repo` has a live session (idle or in a call).
    pub(crate) fn any_open(&self, repo: &RepoName) -> bool {
        self.sessions
            .lock()
            .unwrap()
            .values()
            .any(|s| &s.repo == repo)
    }

    /// Whether `id` is a live session (its staged file is in use).
    pub(crate) fn in_use(&self, id: &str) -> bool {
        self.sessions.lock().unwrap().contains_key(id)
    }
}

impl Store {
    /// Opens an upload session in `repo` (created on first push).
    pub async fn start_upload(&self, repo: &RepoName) -> StoreResult<String> {
        self.admit_write().await?;
        let id = self.next_id();
        {
            // The slot is reserved under the repository's lock, so GC's
            // empty-repository check (exclusive) sees either no repository
            // yet or one with a live session.
            let _guard = self.lock(Intent::repo_read(repo)).await;
            self.ensure_repo(repo).await?;
            self.inner.uploads.reserve(&id, repo);
        }
        match self
            .driver()
            .writer(&layout::upload(repo, &id), PutMode::IfAbsent)
            .await
        {
            Ok(writer) => {
                let io = SessionIo {
                    writer,
                    hasher: DigestHasher::new(Algorithm::Sha256),
                };
                self.inner.uploads.put_back(&id, io);
                Ok(id)
            }
            Err(e) => {
                self.inner.uploads.end(&id);
                Err(e.into())
            }
        }
    }

    /// Appends a chunk. With `range` (the `Content-Range` of a chunked
    /// upload, inclusive end), the chunk must start at the current offset
    /// (`BLOB_UPLOAD_INVALID` otherwise) and be exactly that long
    /// (`SIZE_INVALID`); a refused chunk changes nothing. Returns the new offset.
    pub async fn upload_chunk(
        &self,
        id: &str,
        range: Option<(u64, u64)>,
        data: Bytes,
    ) -> StoreResult<u64> {
        self.admit_write().await?;
        let mut session = self.inner.uploads.take(id)?;
        let offset = session.hasher.len();
        let check = match range {
            Some((start, _)) if start != offset => Err(StoreError::BlobUploadInvalid {
                reason: format!("chunk starts at {start}, upload is at {offset}"),
            }),
            // `end` is inclusive and client-chosen: `0-18446744073709551615`
            // is a length one past u64, so the arithmetic is checked.
            Some((start, end))
                if end
                    .checked_sub(start)
                    .and_then(|n| n.checked_add(1))
                    .is_none_or(|len| len != data.len() as u64) =>
            {
                Err(StoreError::SizeInvalid {
                    reason: format!(
                        "range {start}-{end} does not match a {}-byte chunk",
                        data.len()
                    ),
                })
            }
            _ => Ok(()),
        };
        if let Err(e) = check {
            self.inner.uploads.put_back(id, session);
            return Err(e);
        }
        session.hasher.update(&data);
        if let Err(e) = session.writer.write(data).await {
            // The session's bytes are now uncertain: it ends here (its
            // staged bytes are reclaimed as a leftover).
            self.inner.uploads.end(id);
            return Err(e.into());
        }
        let offset = session.hasher.len();
        self.inner.uploads.put_back(id, session);
        Ok(offset)
    }

    /// Where upload `id` stands.
    pub fn upload_status(&self, id: &str) -> StoreResult<UploadStatus> {
        let sessions = self.inner.uploads.sessions.lock().unwrap();
        let s = sessions.get(id).ok_or_else(|| upload_unknown(id))?;
        Ok(UploadStatus {
            repo: s.repo.clone(),
            offset: s.offset,
            started: s.started,
            touched: s.touched,
        })
    }

    /// Abandons upload `id`; nothing of it remains.
    pub async fn cancel_upload(&self, id: &str) -> StoreResult<()> {
        let session = self.inner.uploads.take(id)?;
        self.inner.uploads.end(id);
        Ok(session.writer.abort().await?)
    }

    /// Completes upload `id` as `digest`, with an optional last chunk.
    ///
    /// The content is checked against `digest` before anything becomes
    /// visible (`DIGEST_INVALID`, and the upload is discarded). sha256 is
    /// hashed while streaming; a sha512 digest costs one read of the staged
    /// file, as in CNCF distribution, since the algorithm is only known now.
    pub async fn finish_upload(
        &self,
        id: &str,
        digest: &Digest,
        last: Option<Bytes>,
    ) -> StoreResult<()> {
        self.admit_write().await?;
        let session = self.inner.uploads.take(id)?;
        // The slot stays busy until the blob is in the layout: the staged
        // file is in use and the repository is not empty meanwhile.
        let result = self.finish_session(id, session, digest, last).await;
        self.inner.uploads.end(id);
        result
    }

    async fn finish_session(
        &self,
        id: &str,
        mut session: SessionIo,
        digest: &Digest,
        last: Option<Bytes>,
    ) -> StoreResult<()> {
        if let Some(last) = last {
            session.hasher.update(&last);
            session.writer.write(last).await?;
        }
        let repo = self.upload_status(id)?.repo;
        let streamed = session.hasher.finish();
        if digest.algorithm() == Algorithm::Sha256 && &streamed != digest {
            session.writer.abort().await?;
            return Err(StoreError::DigestMismatch {
                expected: digest.clone(),
                actual: streamed,
            });
        }
        self.ingest_upload(&repo, id, digest, session.writer).await
    }

    /// Commits a verified upload and hands it to the layout.
    async fn ingest_upload(
        &self,
        repo: &RepoName,
        id: &str,
        digest: &Digest,
        writer: Box<dyn BlobWriter>,
    ) -> StoreResult<()> {
        let staged = layout::upload(repo, id);
        writer.commit().await?;
        if digest.algorithm() != Algorithm::Sha256 {
            let actual = Digest::of(digest.algorithm(), &self.driver().get(&staged, None).await?);
            if &actual != digest {
                self.driver().delete(&staged).await?;
                return Err(StoreError::DigestMismatch {
                    expected: digest.clone(),
                    actual,
                });
            }
        }
        let _guard = self.lock(Intent::blob_insert(repo, digest)).await;
        self.layout().ingest(repo, digest, &staged).await?;
        self.touch(&[Marked::Blob(repo, digest)]).await
    }

    /// A monolithic upload: the whole blob in one call, digest known up
    /// front. Hashed in memory, then handed to the layout directly: nothing
    /// is staged, so a blob the store already has costs no write at all.
    pub async fn push_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        data: Bytes,
    ) -> StoreResult<()> {
        let actual = Digest::of(digest.algorithm(), &data);
        if &actual != digest {
            return Err(StoreError::DigestMismatch {
                expected: digest.clone(),
                actual,
            });
        }
        self.admit_write().await?;
        // The dedupe check (does `_blobstore` hold it?) and the insert are
        // one critical section: a sweep cannot fall between them.
        #[cfg(ocistore_mutation = "split_dedupe")]
        if self.mutation_split_dedupe_hit(repo, digest).await? {
            let _guard = self.lock(Intent::blob_insert(repo, digest)).await;
            return self.layout().hold_existing(repo, digest).await;
        }
        let _guard = self.lock(Intent::blob_insert(repo, digest)).await;
        self.ensure_repo(repo).await?;
        self.layout().ingest_bytes(repo, digest, data).await?;
        self.touch(&[Marked::Blob(repo, digest)]).await
    }

    /// MUTATION (c), for the loom suite only: the dedupe check in its own
    /// critical section, released before the insert.
    #[cfg(ocistore_mutation = "split_dedupe")]
    async fn mutation_split_dedupe_hit(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> StoreResult<bool> {
        let _guard = self.lock(Intent::blob_insert(repo, digest)).await;
        self.ensure_repo(repo).await?;
        Ok(self.layout().blobstore_digests().await?.contains(digest))
    }

    /// The blob's size, if `repo` holds it (HEAD).
    pub async fn stat_blob(&self, repo: &RepoName, digest: &Digest) -> StoreResult<u64> {
        let _guard = self.lock(Intent::blob_read(repo)).await;
        self.require_repo(repo).await?;
        self.layout()
            .stat(repo, digest)
            .await?
            .ok_or_else(|| blob_unknown(repo, digest))
    }

    /// The whole blob, verified against its digest.
    pub async fn get_blob(&self, repo: &RepoName, digest: &Digest) -> StoreResult<Bytes> {
        self.read_blob(repo, digest, None).await
    }

    /// `range` of the blob; a range past its end is `RangeInvalid`.
    pub async fn get_blob_range(
        &self,
        repo: &RepoName,
        digest: &Digest,
        range: Range<u64>,
    ) -> StoreResult<Bytes> {
        self.read_blob(repo, digest, Some(range)).await
    }

    async fn read_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        range: Option<Range<u64>>,
    ) -> StoreResult<Bytes> {
        let _guard = self.lock(Intent::blob_read(repo)).await;
        self.require_repo(repo).await?;
        self.layout()
            .read(repo, digest, range)
            .await?
            .ok_or_else(|| blob_unknown(repo, digest))
    }

    /// Makes `digest` available in `to` if `from` holds it, without moving
    /// bytes. `Ok(false)`: `from` does not hold it; the client uploads instead.
    ///
    /// `from` is read without its lock (a plan holds one repository): a
    /// concurrent delete in `from` may win or lose, and either outcome is a
    /// linearisable mount, because the digest lock keeps the bytes in place.
    pub async fn mount_blob(
        &self,
        from: &RepoName,
        to: &RepoName,
        digest: &Digest,
    ) -> StoreResult<bool> {
        self.admit_write().await?;
        let _guard = self.lock(Intent::blob_insert(to, digest)).await;
        // A failed mount falls back to an upload into `to`, so `to` exists
        // either way.
        self.ensure_repo(to).await?;
        let mounted = if from == to {
            self.layout().stat(to, digest).await?.is_some()
        } else {
            self.layout().mount(from, to, digest).await?
        };
        if mounted {
            self.touch(&[Marked::Blob(to, digest)]).await?;
        }
        Ok(mounted)
    }

    /// Every digest `repo` holds (blobs and manifests), sorted.
    pub async fn repo_blobs(&self, repo: &RepoName) -> StoreResult<Vec<Digest>> {
        let _guard = self.lock(Intent::blob_read(repo)).await;
        self.require_repo(repo).await?;
        let mut digests = self.layout().repo_digests(repo).await?;
        digests.sort();
        Ok(digests)
    }

    /// Removes `digest` from `repo`. Refused (`DENIED`) while a manifest of
    /// the repository references it, or while it is one of its manifests.
    pub async fn delete_blob(&self, repo: &RepoName, digest: &Digest) -> StoreResult<()> {
        let _guard = self.lock(Intent::blob_remove(repo, digest)).await;
        let index = self.read_index(repo).await?;
        if self.layout().stat(repo, digest).await?.is_none() {
            return Err(blob_unknown(repo, digest));
        }
        if index.manifests.iter().any(|row| &row.digest == digest) {
            return Err(StoreError::Denied {
                reason: format!("{digest} is a manifest of {repo}; delete the manifest instead"),
            });
        }
        if self.referenced_blobs(repo, &index).await?.contains(digest) {
            return Err(StoreError::Denied {
                reason: format!("{digest} is referenced by a manifest of {repo}"),
            });
        }
        self.layout().remove(repo, digest).await
    }
}

pub(crate) fn blob_unknown(repo: &RepoName, digest: &Digest) -> StoreError {
    StoreError::BlobUnknown {
        repo: repo.to_string(),
        digest: digest.clone(),
    }
}
