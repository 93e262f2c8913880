//! Streaming and resumable writes: the bytes of a large object are staged
//! as ordinary objects under the writer's own reserved name, and the
//! commit assembles them server-side as a multipart upload.
//!
//! # Why staged objects, not multipart parts
//!
//! A resumable writer must give its bytes back ([`BlobWriter::read_staged`]:
//! an upload session rebuilds its hash from them after a restart), but S3
//! cannot read the parts of an unfinished multipart upload; and S3 parts
//! must be at least 5 MiB (but the last), while a checkpoint comes
//! wherever a client's chunk ends. So a writer keeps, under
//! `.ocistore-writers/<id>/`:
//!
//! - `record`: the target's key (and whether a commit began), written
//!   before anything else and deleted last;
//! - `part-<n>`: the n-th [`PART_SIZE`] bytes, written as soon as they
//!   are in hand (memory: one part, plus the chunk being written);
//! - `tail-<offset>`: what a checkpoint had to make durable past the last
//!   full part: the bytes since the previous tail piece, never rewritten.
//!
//! The commit of an object that fits in one part is one PUT from memory
//! (`If-None-Match: *` for `IfAbsent`). A larger one is a multipart
//! upload on the target key whose parts are the `part-<n>` objects,
//! copied by the server (`UploadPartCopy`, no bytes through us), plus the
//! tail from memory; `CompleteMultipartUpload` carries `If-None-Match: *`
//! for `IfAbsent`, so a conditional object of any size is created in
//! place. Then the writer's objects go, the record last.
//!
//! # What it costs (requests to S3)
//!
//! - writing: one PUT per [`PART_SIZE`] bytes; the first object a writer
//!   stores is preceded by one PUT of its record;
//! - a checkpoint: one PUT of the new tail bytes, if any; now and then
//!   one bulk DELETE of tail pieces a part has superseded (below);
//! - a commit past one part: a record PUT, CreateMultipartUpload, one
//!   UploadPartCopy per part (four at a time), one UploadPart for the
//!   tail, CompleteMultipartUpload, then one bulk DELETE per 1,000 staged
//!   objects and the record's DELETE (and a LIST first for a resumed
//!   writer, which cannot know what the write it resumed stored past its
//!   checkpoint). Within one part: one PUT, and the same clean-up if
//!   anything was staged;
//! - a resume: a LIST and a GET of the record, a GET per tail piece;
//!   reading the staged bytes back is one GET per part touched.
//!
//! Bytes cross the network once, plus once more for those that went
//! through a tail piece before their part was full (each byte at most
//! twice); the server copies each part once at the commit. Storage while
//! a write is open: the parts, plus the tail pieces of the last two
//! checkpoints (at most two parts' worth).
//!
//! # Which checkpoints stay resumable
//!
//! Tail pieces superseded by a full part are deleted at the checkpoint
//! after the one that first included that part: the caller may still hold
//! the previous checkpoint (it failed to record the new one), never an
//! older one (an upload session records each checkpoint before taking the
//! next; a failed record drops the writer and resumes from the last one
//! recorded). A checkpoint two or more behind the last one taken may
//! therefore find its pieces gone: `NotFound`, like any write whose staged
//! bytes are gone. A resumed writer overwrites the parts and pieces past
//! its checkpoint as it goes; what it does not overwrite goes with the rest
//! at the commit or abort.
//!
//! # Leftovers
//!
//! A writer's directory whose writer is not alive in this process and has
//! stored nothing for `writer_stale_after` is a leftover (invariant 12),
//! unless a caller keeps a [`Checkpoint`] naming it (the store's upload
//! sessions do: [`Checkpoint::staged`] is `.ocistore-writers/<id>`).
//! Removing it aborts a multipart upload its commit may have begun (the
//! record says one did: the uploads in progress on the target key are
//! listed and aborted, so one created just before a crash is found too),
//! deletes its objects, then the record. Concurrent `Overwrite` writers of
//! one key are undefined by the contract; one of them dying mid-commit
//! may make the other's commit fail when its leftover is removed.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use engine::driver::{
    BlobWriter, Checkpoint, DriverError, DriverPath, DriverResult, Leftover, PutMode,
};
use futures_util::{StreamExt, TryStreamExt};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{GetOptions, GetRange, MultipartId, ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use crate::raw::Completed;
use crate::{Shared, error, map_error};

/// Bytes per staged part: above S3's 5 MiB minimum; with S3's 10,000
/// parts an object can reach 80 GiB. Every part but the last has this size
/// (some S3 servers require equal parts).
pub const PART_SIZE: usize = 8 << 20;
const PART: u64 = PART_SIZE as u64;

/// S3's limit on the parts of one upload.
const MAX_PARTS: usize = 10_000;

/// Parts copied at once by a commit.
const COPY_CONCURRENCY: usize = 4;

/// The driver's own key space for writers (a reserved name).
const WRITERS: &str = ".ocistore-writers";
const RECORD: &str = "record";

/// Ids of the writers alive in this process: never leftovers, however
/// long they idle.
#[derive(Debug, Default)]
pub(crate) struct LiveWriters(Mutex<HashSet<String>>);

impl LiveWriters {
    fn contains(&self, id: &str) -> bool {
        self.0.lock().unwrap().contains(id)
    }

    fn insert(&self, id: &str) {
        self.0.lock().unwrap().insert(id.to_owned());
    }

    fn remove(&self, id: &str) {
        self.0.lock().unwrap().remove(id);
    }
}

/// What a [`Checkpoint`]'s token holds: whose objects, and which of them
/// hold its bytes.
#[derive(Serialize, Deserialize)]
struct Token {
    id: String,
    /// The target's key: a checkpoint resumes only its own write.
    target: String,
    /// `part-0` .. `part-<parts - 1>`.
    parts: usize,
    /// The tail pieces after the parts, `(offset, length)`, contiguous.
    pieces: Vec<(u64, u64)>,
}

/// The writer's `record` object.
#[derive(Serialize, Deserialize)]
struct Record {
    target: String,
    /// A commit began: a multipart upload may be in progress on `target`.
    #[serde(default)]
    committing: bool,
}

pub(crate) struct S3Writer {
    shared: Arc<Shared>,
    target: DriverPath,
    key: Path,
    mode: PutMode,
    id: String,
    /// Bytes past the last part, less than one part once `write` returns.
    pending: VecDeque<Bytes>,
    pending_len: usize,
    written: u64,
    /// Full parts stored.
    parts: usize,
    /// Tail pieces stored and not yet superseded, `(offset, length)`.
    pieces: Vec<(u64, u64)>,
    /// Bytes held by parts and pieces (the rest is only in memory).
    durable: u64,
    /// Parts at the previous checkpoint.
    parts_at_checkpoint: usize,
    /// The record exists.
    recorded: bool,
    /// The record says a commit began.
    committing: bool,
    /// Resumed: objects of the write it resumed may lie past its
    /// checkpoint, so only a listing knows all of them.
    resumed: bool,
}

impl S3Writer {
    pub(crate) fn new(shared: Arc<Shared>, target: DriverPath, mode: PutMode) -> S3Writer {
        let id = writer_id();
        shared.writers.insert(&id);
        S3Writer {
            key: shared.object(&target),
            shared,
            target,
            mode,
            id,
            pending: VecDeque::new(),
            pending_len: 0,
            written: 0,
            parts: 0,
            pieces: Vec::new(),
            durable: 0,
            parts_at_checkpoint: 0,
            recorded: false,
            committing: false,
            resumed: false,
        }
    }

    /// Reopens the write `checkpoint` left: checks that its objects are
    /// all there and fetches its tail pieces back into memory.
    pub(crate) async fn resume(
        shared: Arc<Shared>,
        target: DriverPath,
        mode: PutMode,
        checkpoint: &Checkpoint,
    ) -> DriverResult<S3Writer> {
        let key = shared.object(&target);
        let refused = |why: &str| DriverError::Io {
            driver: "s3",
            op: "resume",
            path: target.to_string(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_owned()),
        };
        let token: Token = serde_json::from_str(&checkpoint.token)
            .map_err(|_| refused("not a checkpoint of the s3 driver"))?;
        if !valid_id(&token.id) || token.target != key.as_ref() {
            return Err(refused("not a checkpoint of this write"));
        }
        let staged_len = token.parts as u64 * PART + token.pieces.iter().map(|p| p.1).sum::<u64>();
        let contiguous = token
            .pieces
            .iter()
            .try_fold(token.parts as u64 * PART, |at, &(start, len)| {
                (start == at).then_some(at + len)
            });
        if staged_len != checkpoint.written || contiguous.is_none() || token.parts > MAX_PARTS {
            return Err(refused("the checkpoint's objects do not add up to it"));
        }
        let objects = shared.writer_objects(&token.id).await?;
        let record = match objects.contains_key(RECORD) {
            true => shared.read_record(&token.id).await?,
            false => None,
        };
        if let Some(record) = &record
            && record.target != key.as_ref()
        {
            return Err(refused("the writer's record names another target"));
        }
        let gone = || DriverError::NotFound {
            path: target.clone(),
        };
        if checkpoint.written > 0 {
            // Committed, aborted or reclaimed: the record goes last.
            if record.is_none() {
                return Err(gone());
            }
            let parts_whole = (0..token.parts).all(|i| objects.get(&part_name(i)) == Some(&PART));
            let pieces_whole = token
                .pieces
                .iter()
                .all(|&(start, len)| objects.get(&piece_name(start)) == Some(&len));
            if !parts_whole || !pieces_whole {
                return Err(gone());
            }
        }
        let mut pending = VecDeque::new();
        for &(start, len) in &token.pieces {
            let piece = shared.piece_key(&token.id, start);
            let data = match shared.store.get(&piece).await {
                Ok(result) => result.bytes().await,
                Err(e) => Err(e),
            };
            let data = data.map_err(|e| map_error("get", &target, e))?;
            if data.len() as u64 != len {
                return Err(gone());
            }
            pending.push_back(data);
        }
        let (recorded, committing) = (record.is_some(), record.is_some_and(|r| r.committing));
        shared.writers.insert(&token.id);
        Ok(S3Writer {
            shared,
            target,
            key,
            mode,
            id: token.id,
            pending_len: (checkpoint.written - token.parts as u64 * PART) as usize,
            pending,
            written: checkpoint.written,
            parts: token.parts,
            pieces: token.pieces,
            durable: checkpoint.written,
            parts_at_checkpoint: token.parts,
            recorded,
            committing,
            resumed: true,
        })
    }

    /// The first `len` pending bytes, without copying or taking them.
    fn peek(&self, mut len: usize) -> PutPayload {
        let mut out = Vec::new();
        for chunk in &self.pending {
            if len == 0 {
                break;
            }
            let take = chunk.len().min(len);
            out.push(chunk.slice(..take));
            len -= take;
        }
        out.into_iter().collect()
    }

    /// Pending bytes `range` (offsets into the pending bytes).
    fn pending_slice(&self, range: Range<usize>) -> Vec<Bytes> {
        let mut out = Vec::new();
        let mut at = 0;
        for chunk in &self.pending {
            let (from, to) = (at, at + chunk.len());
            at = to;
            if to <= range.start || from >= range.end {
                continue;
            }
            out.push(chunk.slice(range.start.max(from) - from..range.end.min(to) - from));
        }
        out
    }

    /// Drops the first `len` pending bytes (they are stored now).
    fn advance(&mut self, mut len: usize) {
        self.pending_len -= len;
        while len > 0 {
            let mut chunk = self.pending.pop_front().expect("pending bytes");
            if chunk.len() > len {
                self.pending.push_front(chunk.split_off(len));
                len = 0;
            } else {
                len -= chunk.len();
            }
        }
    }

    async fn ensure_record(&mut self) -> DriverResult<()> {
        if !self.recorded {
            self.shared
                .write_record(&self.id, &self.key, self.committing)
                .await?;
            self.recorded = true;
        }
        Ok(())
    }

    /// Stores the next full part from the pending bytes.
    async fn store_part(&mut self) -> DriverResult<()> {
        if self.parts == MAX_PARTS {
            return Err(DriverError::Io {
                driver: "s3",
                op: "put",
                path: self.target.to_string(),
                source: std::io::Error::other(format!(
                    "larger than S3's {MAX_PARTS} parts of {PART_SIZE} bytes"
                )),
            });
        }
        self.ensure_record().await?;
        let part = self.peek(PART_SIZE);
        let key = self.shared.part_key(&self.id, self.parts);
        self.shared
            .store
            .put(&key, part)
            .await
            .map_err(|e| map_error("put", &self.target, e))?;
        self.advance(PART_SIZE);
        self.parts += 1;
        self.durable = self.durable.max(self.parts as u64 * PART);
        Ok(())
    }

    /// This writer's objects but the record, if it knows them all: those
    /// it stored, and the next part and piece, which a PUT that failed may
    /// have stored anyway (a missing key costs a bulk DELETE nothing).
    fn known_objects(&self) -> Option<Vec<Path>> {
        let parts = (0..=self.parts).map(|i| self.shared.part_key(&self.id, i));
        let pieces = self.pieces.iter().map(|&(start, _)| start);
        let pieces = pieces
            .chain([self.durable])
            .map(|start| self.shared.piece_key(&self.id, start));
        (!self.resumed).then(|| parts.chain(pieces).collect())
    }

    /// Removes this writer's objects, then its record.
    async fn remove(&self, sweep: Option<&Path>) -> DriverResult<()> {
        self.shared
            .remove_writer(&self.id, sweep, self.known_objects())
            .await
    }

    fn token(&self) -> Token {
        let base = self.parts as u64 * PART;
        Token {
            id: self.id.clone(),
            target: self.key.to_string(),
            parts: self.parts,
            pieces: self
                .pieces
                .iter()
                .copied()
                .filter(|&(start, _)| start >= base)
                .collect(),
        }
    }

    async fn finish(&mut self) -> DriverResult<()> {
        if self.parts == 0 {
            let payload = self.peek(self.pending_len);
            let published = self
                .shared
                .put_whole(&self.target, payload, self.mode)
                .await;
            // Refused or done, the staged bytes have served; after any
            // other failure they stay for a resume.
            if self.recorded
                && matches!(&published, Ok(()) | Err(DriverError::AlreadyExists { .. }))
            {
                self.remove(None).await?;
            }
            return published;
        }
        // Recorded before the upload exists: a crash from here on leaves
        // a record that says where to look for it.
        self.shared.write_record(&self.id, &self.key, true).await?;
        (self.recorded, self.committing) = (true, true);
        let upload_id = self
            .shared
            .store
            .create_multipart(&self.key)
            .await
            .map_err(|e| map_error("put", &self.target, e))?;
        let assembled = self.assemble(&upload_id).await;
        let failed = match assembled {
            Ok(Completed::Done) => None,
            Ok(Completed::Exists) => Some(DriverError::AlreadyExists {
                path: self.target.clone(),
            }),
            Err(e) => Some(e),
        };
        if let Some(e) = failed {
            // Best effort: the record still names the key if this fails.
            let _ = self
                .shared
                .store
                .abort_multipart(&self.key, &upload_id)
                .await;
            if e.is_already_exists() {
                self.remove(None).await?;
            }
            return Err(e);
        }
        self.remove(None).await
    }

    /// The parts copied from the staged objects, the tail from memory,
    /// and the completion.
    async fn assemble(&self, upload_id: &MultipartId) -> DriverResult<Completed> {
        let shared = &self.shared;
        let mut parts: Vec<PartId> = futures_util::stream::iter(0..self.parts)
            .map(|i| async move {
                let source = shared.part_key(&self.id, i);
                shared.copy_part(&self.key, upload_id, i, &source).await
            })
            .buffered(COPY_CONCURRENCY)
            .try_collect()
            .await?;
        if self.pending_len > 0 {
            let tail = self.peek(self.pending_len);
            let part = shared
                .store
                .put_part(&self.key, upload_id, self.parts, tail)
                .await
                .map_err(|e| map_error("put", &self.target, e))?;
            parts.push(part);
        }
        shared
            .complete(&self.key, upload_id, &parts, self.mode == PutMode::IfAbsent)
            .await
    }
}

impl Drop for S3Writer {
    /// A dropped writer is abandoned: what it stored is a leftover, or
    /// its checkpoint's keeper's to resume.
    fn drop(&mut self) {
        self.shared.writers.remove(&self.id);
    }
}

#[async_trait]
impl BlobWriter for S3Writer {
    async fn write(&mut self, chunk: Bytes) -> DriverResult<()> {
        self.written += chunk.len() as u64;
        self.pending_len += chunk.len();
        self.pending.push_back(chunk);
        while self.pending_len >= PART_SIZE {
            self.store_part().await?;
        }
        Ok(())
    }

    fn written(&self) -> u64 {
        self.written
    }

    async fn commit(mut self: Box<Self>) -> DriverResult<()> {
        self.finish().await
    }

    async fn abort(self: Box<Self>) -> DriverResult<()> {
        if self.recorded {
            self.remove(self.committing.then_some(&self.key)).await?;
        }
        Ok(())
    }

    /// Stores the bytes past the last part and piece as a new tail piece.
    async fn checkpoint(&mut self) -> DriverResult<Checkpoint> {
        if self.written > 0 {
            self.ensure_record().await?;
        }
        // Superseded by parts the previous checkpoint already had: in
        // neither that checkpoint nor this one.
        let below = self.parts_at_checkpoint as u64 * PART;
        let superseded: Vec<Path> = self
            .pieces
            .iter()
            .filter(|&&(start, _)| start < below)
            .map(|&(start, _)| self.shared.piece_key(&self.id, start))
            .collect();
        if !superseded.is_empty() {
            let op_path = format!("{WRITERS}/{}", self.id);
            self.shared.delete_all(superseded, &op_path).await?;
            self.pieces.retain(|&(start, _)| start >= below);
        }
        if self.written > self.durable {
            let base = self.parts as u64 * PART;
            let from = (self.durable - base) as usize;
            let piece: PutPayload = self
                .pending_slice(from..self.pending_len)
                .into_iter()
                .collect();
            let key = self.shared.piece_key(&self.id, self.durable);
            self.shared
                .store
                .put(&key, piece)
                .await
                .map_err(|e| map_error("put", &self.target, e))?;
            self.pieces
                .push((self.durable, self.written - self.durable));
            self.durable = self.written;
        }
        self.parts_at_checkpoint = self.parts;
        Ok(Checkpoint {
            written: self.written,
            token: serde_json::to_string(&self.token()).expect("a token serialises"),
            staged: match self.recorded {
                true => vec![format!("{WRITERS}/{}", self.id)],
                false => Vec::new(),
            },
        })
    }

    async fn read_staged(&mut self, range: Range<u64>) -> DriverResult<Bytes> {
        if range.start > range.end || range.end > self.written {
            return Err(DriverError::InvalidRange {
                path: self.target.clone(),
                start: range.start,
                end: range.end,
                size: self.written,
            });
        }
        let base = self.parts as u64 * PART;
        let mut out = BytesMut::with_capacity((range.end - range.start) as usize);
        let mut at = range.start;
        while at < range.end.min(base) {
            let part = (at / PART) as usize;
            let within = at % PART..(range.end - part as u64 * PART).min(PART);
            let key = self.shared.part_key(&self.id, part);
            let options = GetOptions {
                range: Some(GetRange::Bounded(within.clone())),
                ..GetOptions::default()
            };
            let data = match self.shared.store.get_opts(&key, options).await {
                Ok(result) => result.bytes().await,
                Err(e) => Err(e),
            };
            out.extend_from_slice(&data.map_err(|e| map_error("get", &self.target, e))?);
            at += within.end - within.start;
        }
        if range.end > base {
            let from = (range.start.max(base) - base) as usize;
            for piece in self.pending_slice(from..(range.end - base) as usize) {
                out.extend_from_slice(&piece);
            }
        }
        Ok(out.freeze())
    }
}

/// Unique across processes and machines sharing a bucket: time, host,
/// process, and a counter (a key component, so only `[0-9a-f-]`).
fn writer_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let host = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let host: String = host
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(8)
        .collect();
    format!(
        "{nanos:x}-{host}-{:x}-{:x}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A token's id names keys: only what [`writer_id`] makes.
fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 100 && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

fn part_name(index: usize) -> String {
    format!("part-{index:05}")
}

fn piece_name(offset: u64) -> String {
    format!("tail-{offset:015}")
}

impl Shared {
    fn writer_dir(&self, id: &str) -> Path {
        Path::from(format!("{}{WRITERS}/{id}", self.key_prefix))
    }

    fn writer_key(&self, id: &str, name: &str) -> Path {
        Path::from(format!("{}{WRITERS}/{id}/{name}", self.key_prefix))
    }

    fn part_key(&self, id: &str, index: usize) -> Path {
        self.writer_key(id, &part_name(index))
    }

    fn piece_key(&self, id: &str, offset: u64) -> Path {
        self.writer_key(id, &piece_name(offset))
    }

    async fn write_record(&self, id: &str, target: &Path, committing: bool) -> DriverResult<()> {
        let record = Record {
            target: target.to_string(),
            committing,
        };
        let body = serde_json::to_vec(&record).expect("a record serialises");
        self.store
            .put(&self.writer_key(id, RECORD), PutPayload::from(body))
            .await
            .map(drop)
            .map_err(|e| error("put", &format!("{WRITERS}/{id}/{RECORD}"), e))
    }

    /// The record, `None` if it is gone; one that does not parse (not
    /// ours, or torn by a bug) counts as naming no target.
    async fn read_record(&self, id: &str) -> DriverResult<Option<Record>> {
        let body = match self.store.get(&self.writer_key(id, RECORD)).await {
            Ok(r) => r.bytes().await,
            Err(e) => Err(e),
        };
        match body {
            Ok(body) => Ok(Some(serde_json::from_slice(&body).unwrap_or(Record {
                target: String::new(),
                committing: false,
            }))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(error("get", &format!("{WRITERS}/{id}/{RECORD}"), e)),
        }
    }

    /// The writer's objects by name, with their sizes.
    async fn writer_objects(&self, id: &str) -> DriverResult<BTreeMap<String, u64>> {
        let metas: Vec<_> = self
            .store
            .list(Some(&self.writer_dir(id)))
            .try_collect()
            .await
            .map_err(|e| error("list", &format!("{WRITERS}/{id}"), e))?;
        Ok(metas
            .into_iter()
            .filter_map(|m| Some((m.location.filename()?.to_owned(), m.size)))
            .collect())
    }

    /// Bulk DELETEs (1,000 keys a request); a missing key is fine.
    async fn delete_all(&self, keys: Vec<Path>, op_path: &str) -> DriverResult<()> {
        let keys = futures_util::stream::iter(keys.into_iter().map(Ok)).boxed();
        self.store
            .delete_stream(keys)
            .try_collect::<Vec<_>>()
            .await
            .map(drop)
            .or_else(|e| match e {
                object_store::Error::NotFound { .. } => Ok(()),
                e => Err(error("delete", op_path, e)),
            })
    }

    /// Removes writer `id`: aborts the multipart uploads in progress on
    /// `sweep` (a commit began), deletes its objects (`known`, or listed),
    /// then its record (last, so a crash in between leaves a record to try
    /// again from).
    async fn remove_writer(
        &self,
        id: &str,
        sweep: Option<&Path>,
        known: Option<Vec<Path>>,
    ) -> DriverResult<()> {
        let op_path = format!("{WRITERS}/{id}");
        if let Some(key) = sweep {
            for (upload_key, upload_id) in self.uploads_in_progress(key.as_ref()).await? {
                if upload_key == *key {
                    match self.store.abort_multipart(key, &upload_id).await {
                        Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                        Err(e) => return Err(error("delete", &op_path, e)),
                    }
                }
            }
        }
        let objects: Vec<Path> = match known {
            Some(known) => known,
            None => self
                .writer_objects(id)
                .await?
                .into_keys()
                .filter(|name| name != RECORD)
                .map(|name| self.writer_key(id, &name))
                .collect(),
        };
        if !objects.is_empty() {
            self.delete_all(objects, &op_path).await?;
        }
        match self.store.delete(&self.writer_key(id, RECORD)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(error("delete", &op_path, e)),
        }
    }

    /// Writers that are gone: not alive in this process, and nothing
    /// stored for `writer_stale_after`. Below `prefix`: whose target is.
    pub(crate) async fn leftovers(
        &self,
        prefix: Option<&DriverPath>,
    ) -> DriverResult<Vec<Leftover>> {
        let dir = Path::from(format!("{}{WRITERS}", self.key_prefix));
        let metas: Vec<_> = self
            .store
            .list(Some(&dir))
            .try_collect()
            .await
            .map_err(|e| error("list", WRITERS, e))?;
        let below = format!("{dir}/");
        // id -> (bytes staged, newest object)
        let mut writers: BTreeMap<String, (u64, SystemTime)> = BTreeMap::new();
        for meta in metas {
            let Some((id, name)) = meta
                .location
                .as_ref()
                .strip_prefix(&below)
                .and_then(|rel| rel.split_once('/'))
            else {
                continue;
            };
            let entry = writers
                .entry(id.to_owned())
                .or_insert((0, SystemTime::UNIX_EPOCH));
            if name != RECORD {
                entry.0 += meta.size;
            }
            entry.1 = entry.1.max(SystemTime::from(meta.last_modified));
        }
        let now = SystemTime::now();
        let mut out = Vec::new();
        for (id, (size, modified)) in writers {
            if !valid_id(&id)
                || self.writers.contains(&id)
                || now.duration_since(modified).unwrap_or_default() < self.config.writer_stale_after
            {
                continue;
            }
            if let Some(prefix) = prefix {
                let target_below = format!("{}{prefix}/", self.key_prefix);
                let record = self.read_record(&id).await?;
                if !record.is_some_and(|r| r.target.starts_with(&target_below)) {
                    continue;
                }
            }
            out.push(Leftover {
                path: format!("{WRITERS}/{id}"),
                size,
                modified,
            });
        }
        Ok(out)
    }

    pub(crate) async fn remove_leftover(&self, leftover: &Leftover) -> DriverResult<()> {
        let id = leftover
            .path
            .strip_prefix(&format!("{WRITERS}/"))
            .filter(|id| valid_id(id));
        let Some(id) = id else {
            return Err(DriverError::Io {
                driver: "s3",
                op: "delete",
                path: leftover.path.clone(),
                source: std::io::Error::other("not a writer of this driver"),
            });
        };
        if self.writers.contains(id) {
            return Ok(()); // resumed meanwhile: not a leftover any more
        }
        let record = self.read_record(id).await?;
        let sweep = record
            .filter(|r| r.committing && !r.target.is_empty())
            .map(|r| Path::from(r.target));
        self.remove_writer(id, sweep.as_ref(), None).await
    }
}
