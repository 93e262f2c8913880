//! `object`: object-store semantics, as S3 and its kind offer them.
//!
//! No hard links, no rename, no directories (a "directory" is a shared key
//! prefix); a move is copy + delete; put can be conditional (if absent); and
//! every call is durable when it returns. Kept close to the `object_store`
//! crate's `ObjectStore` so a real S3 back end can slot in later.
//!
//! Two backings for the lab: memory, and a directory (objects as files, made
//! crash-safe by the `fs` driver's commit protocol underneath). Both offer
//! compare-and-swap as S3 does with `If-Match` ([`super::cas`]); on a
//! directory it holds between processes.

use std::collections::HashMap;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};

use super::{
    BlobWriter, Capabilities, Checkpoint, Driver, DriverError, DriverPath, DriverResult, FsDriver,
    Leftover, Listing, ObjectMeta, ObjectVersion, PutMode, check_range,
};
use crate::indexed_map::IndexedMap;
use crate::sync::RwLock;
use crate::sync::unmodeled::Mutex;

/// A driver with object-store semantics over one of two backings.
#[derive(Debug)]
pub struct ObjectDriver {
    backing: Backing,
}

#[derive(Debug)]
enum Backing {
    Memory(Arc<MemoryObjects>),
    /// The directory's path is kept for the compare-and-swap lock files.
    Dir(FsDriver, PathBuf),
    /// Object semantics over the simulated disk: crashes and full disks
    /// for the object layout's crash tests. Every node of a simulation is
    /// in this process, so the disk's lock serialises the swaps of every
    /// driver over it, as the object store's own would.
    Sim(Arc<RwLock<()>>, super::SimDriver),
}

impl ObjectDriver {
    /// Objects held in memory.
    pub fn in_memory() -> ObjectDriver {
        ObjectDriver {
            backing: Backing::Memory(Arc::default()),
        }
    }

    /// Objects stored as files below `root`.
    pub fn in_dir(root: impl Into<PathBuf>) -> std::io::Result<ObjectDriver> {
        let root = root.into();
        Ok(ObjectDriver {
            backing: Backing::Dir(FsDriver::open(&root)?, root),
        })
    }

    /// Objects on a simulated disk (which a test keeps to crash or fill).
    pub fn on_sim(disk: Arc<super::SimDisk>) -> ObjectDriver {
        ObjectDriver {
            backing: Backing::Sim(disk.swap_lock(), super::SimDriver::on(disk)),
        }
    }

    /// Objects on a simulated disk shared by several simulated engines,
    /// for life `life` of one of them ([`super::PosixDriver::for_life`]; life 0 is the single engine's).
    pub fn on_sim_for_life(disk: Arc<super::SimDisk>, life: u64) -> ObjectDriver {
        ObjectDriver {
            backing: Backing::Sim(disk.swap_lock(), super::SimDriver::for_life(disk, life)),
        }
    }

    fn inner(&self) -> &dyn Driver {
        match &self.backing {
            Backing::Memory(m) => &**m,
            Backing::Dir(d, _) => d,
            Backing::Sim(_, d) => d,
        }
    }
}

#[async_trait]
impl Driver for ObjectDriver {
    fn name(&self) -> &'static str {
        "object"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::OBJECT_STORE
    }

    async fn stat(&self, path: &DriverPath) -> DriverResult<ObjectMeta> {
        let meta = self.inner().stat(path).await?;
        // Object stores have no link counts; do not leak the backing's.
        Ok(ObjectMeta {
            links: None,
            file_id: None,
            ..meta
        })
    }

    async fn get(&self, path: &DriverPath, range: Option<Range<u64>>) -> DriverResult<Bytes> {
        self.inner().get(path, range).await
    }

    async fn writer(&self, path: &DriverPath, mode: PutMode) -> DriverResult<Box<dyn BlobWriter>> {
        self.inner().writer(path, mode).await
    }

    async fn resume_writer(
        &self,
        path: &DriverPath,
        mode: PutMode,
        checkpoint: &Checkpoint,
    ) -> DriverResult<Box<dyn BlobWriter>> {
        self.inner().resume_writer(path, mode, checkpoint).await
    }

    async fn list(&self, prefix: Option<&DriverPath>) -> DriverResult<Vec<DriverPath>> {
        self.inner().list(prefix).await
    }

    async fn list_dir(&self, prefix: Option<&DriverPath>) -> DriverResult<Listing> {
        self.inner().list_dir(prefix).await
    }

    async fn delete(&self, path: &DriverPath) -> DriverResult<()> {
        self.inner().delete(path).await?;
        // Durable on return, as an object store's DELETE is.
        self.inner().sync_dir(path.parent().as_ref()).await
    }

    async fn copy(&self, src: &DriverPath, dst: &DriverPath, mode: PutMode) -> DriverResult<()> {
        self.inner().copy(src, dst, mode).await
    }

    async fn sync_dir(&self, _dir: Option<&DriverPath>) -> DriverResult<()> {
        Ok(())
    }

    async fn leftovers(&self, prefix: Option<&DriverPath>) -> DriverResult<Vec<Leftover>> {
        self.inner().leftovers(prefix).await
    }

    async fn remove_leftover(&self, leftover: &Leftover) -> DriverResult<()> {
        self.inner().remove_leftover(leftover).await
    }

    async fn get_versioned(&self, path: &DriverPath) -> DriverResult<(Bytes, ObjectVersion)> {
        match &self.backing {
            Backing::Memory(m) => m.get_versioned(path).await,
            Backing::Dir(d, _) => versioned_get(d, path).await,
            Backing::Sim(_, d) => versioned_get(d, path).await,
        }
    }

    async fn put_if_version(
        &self,
        path: &DriverPath,
        data: Bytes,
        expected: Option<&ObjectVersion>,
    ) -> DriverResult<ObjectVersion> {
        match &self.backing {
            Backing::Memory(m) => m.put_if_version(path, data, expected).await,
            Backing::Dir(d, root) => dir_put_if_version(d, root, path, data, expected).await,
            Backing::Sim(swaps, d) => {
                let _swapping = swaps.clone().write_owned().await;
                swap_unlocked(d, path, data, expected).await
            }
        }
    }
}

/// An object and its version, from a backing that keeps no versions (the
/// version is the content hash, [`ObjectVersion::of`]).
async fn versioned_get(
    backing: &dyn Driver,
    path: &DriverPath,
) -> DriverResult<(Bytes, ObjectVersion)> {
    let data = backing.get(path, None).await?;
    let version = ObjectVersion::of(&data);
    Ok((data, version))
}

/// The compare and the write of a swap, for a caller that holds the lock
/// every swapper of `path` takes.
async fn swap_unlocked(
    backing: &dyn Driver,
    path: &DriverPath,
    data: Bytes,
    expected: Option<&ObjectVersion>,
) -> DriverResult<ObjectVersion> {
    let current = match backing.get(path, None).await {
        Ok(data) => Some(ObjectVersion::of(&data)),
        Err(e) if e.is_not_found() => None,
        Err(e) => return Err(e),
    };
    if current.as_ref() != expected {
        return Err(DriverError::PreconditionFailed { path: path.clone() });
    }
    let version = ObjectVersion::of(&data);
    // "Absent" is re-checked by the write itself: a writer that does not
    // take the lock (a put-if-absent) may have created it meanwhile.
    let mode = match expected {
        None => PutMode::IfAbsent,
        Some(_) => PutMode::Overwrite,
    };
    match backing.put(path, data, mode).await {
        Err(e) if e.is_already_exists() => {
            Err(DriverError::PreconditionFailed { path: path.clone() })
        }
        other => other.map(|()| version),
    }
}

/// Compare-and-swap on a directory: the check and the write under the lock
/// file of the object's directory, which every process writing it this way
/// takes.
#[cfg(target_os = "linux")]
async fn dir_put_if_version(
    dir: &FsDriver,
    root: &std::path::Path,
    path: &DriverPath,
    data: Bytes,
    expected: Option<&ObjectVersion>,
) -> DriverResult<ObjectVersion> {
    // One lock per directory of objects (a repository, the probes): a
    // bounded set of files, where one per object would grow with every
    // probe an instance runs at startup.
    let dir_name = path.parent().map_or(String::new(), |p| p.to_string());
    let name = ObjectVersion::of(&Bytes::from(dir_name));
    let lock_file = root
        .join(super::cas::LOCK_DIR)
        .join(format!("{}.lock", name.as_str()));
    let _locked = super::cas::FileLock::acquire(&lock_file)
        .await
        .map_err(|source| DriverError::Io {
            driver: "object",
            op: "lock",
            path: lock_file.display().to_string(),
            source,
        })?;
    swap_unlocked(dir, path, data, expected).await
}

#[cfg(not(target_os = "linux"))]
async fn dir_put_if_version(
    _dir: &FsDriver,
    _root: &std::path::Path,
    _path: &DriverPath,
    _data: Bytes,
    _expected: Option<&ObjectVersion>,
) -> DriverResult<ObjectVersion> {
    Err(DriverError::Unsupported {
        driver: "object",
        op: "put_if_version",
    })
}

/// The in-memory object map behind [`ObjectDriver::in_memory`].
#[derive(Debug, Default)]
pub struct MemoryObjects {
    objects: Arc<Mutex<ObjectMap>>,
    /// Checkpointed writes, as S3 keeps multipart uploads: parts stored
    /// apart from the objects, never listed, published by the commit
    /// (`CompleteMultipartUpload`) and dropped by an abort.
    multipart: Arc<Mutex<HashMap<String, Multipart>>>,
}

/// Multipart upload ids, unique in the process.
static MULTIPART_IDS: AtomicU64 = AtomicU64::new(0);

/// One multipart upload: the parts its checkpoints stored.
#[derive(Debug)]
struct Multipart {
    parts: Vec<Bytes>,
    modified: SystemTime,
    /// Whether a writer of this process holds it. One nobody holds is a
    /// leftover (unless its checkpoint's keeper resumes it).
    held: bool,
}

impl Multipart {
    fn size(&self) -> u64 {
        self.parts.iter().map(|p| p.len() as u64).sum()
    }
}

/// The token of a checkpointed in-memory write: its upload and how many
/// of its parts the checkpoint covers (later parts are dropped on resume,
/// as parts left out of `CompleteMultipartUpload` are).
#[derive(serde::Serialize, serde::Deserialize)]
struct MultipartToken {
    upload: String,
    parts: usize,
}

/// Objects by path: hashed for get, stat, put and delete, ordered for
/// listings ([`IndexedMap`]).
type ObjectMap = IndexedMap<DriverPath, StoredObject>;

#[derive(Debug, Clone)]
struct StoredObject {
    data: Bytes,
    modified: SystemTime,
}

fn commit(
    objects: &Mutex<ObjectMap>,
    path: &DriverPath,
    data: Bytes,
    mode: PutMode,
) -> DriverResult<()> {
    let mut objects = objects.lock().unwrap();
    if mode == PutMode::IfAbsent && objects.contains_key(path) {
        return Err(DriverError::AlreadyExists { path: path.clone() });
    }
    objects.insert(
        path.clone(),
        StoredObject {
            data,
            modified: SystemTime::now(),
        },
    );
    Ok(())
}

impl MemoryObjects {
    fn object(&self, path: &DriverPath) -> DriverResult<StoredObject> {
        self.objects
            .lock()
            .unwrap()
            .get(path)
            .cloned()
            .ok_or_else(|| DriverError::NotFound { path: path.clone() })
    }

    /// Keys strictly below `prefix` (everything for `None`), in order.
    fn below<'a>(
        objects: &'a ObjectMap,
        prefix: Option<&DriverPath>,
    ) -> impl Iterator<Item = (&'a DriverPath, &'a str)> + 'a {
        use std::ops::Bound;
        let start = prefix.map_or(String::new(), |p| format!("{p}/"));
        let skip = start.len();
        // Keys below a prefix are contiguous in key order: start there
        // instead of scanning every object.
        objects
            .range::<str, _>((Bound::Included(start.as_str()), Bound::Unbounded))
            .take_while(move |(k, _)| k.as_str().starts_with(&start))
            .map(move |(k, _)| (k, &k.as_str()[skip..]))
    }
}

#[async_trait]
impl Driver for MemoryObjects {
    fn name(&self) -> &'static str {
        "object"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::OBJECT_STORE
    }

    async fn stat(&self, path: &DriverPath) -> DriverResult<ObjectMeta> {
        let obj = self.object(path)?;
        Ok(ObjectMeta {
            size: obj.data.len() as u64,
            modified: obj.modified,
            links: None,
            file_id: None,
        })
    }

    async fn get(&self, path: &DriverPath, range: Option<Range<u64>>) -> DriverResult<Bytes> {
        let obj = self.object(path)?;
        let range = check_range(path, range, obj.data.len() as u64)?;
        Ok(obj.data.slice(range.start as usize..range.end as usize))
    }

    async fn writer(&self, path: &DriverPath, mode: PutMode) -> DriverResult<Box<dyn BlobWriter>> {
        Ok(Box::new(MemoryWriter {
            objects: self.objects.clone(),
            path: path.clone(),
            mode,
            buf: Buffered::One(Bytes::new()),
            multipart: self.multipart.clone(),
            upload: None,
        }))
    }

    async fn resume_writer(
        &self,
        path: &DriverPath,
        mode: PutMode,
        checkpoint: &Checkpoint,
    ) -> DriverResult<Box<dyn BlobWriter>> {
        let refused = |why: &str| DriverError::Io {
            driver: "object",
            op: "resume",
            path: path.to_string(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, why),
        };
        let token = checkpoint.state::<MultipartToken>();
        let Some(token) = token.filter(|t| t.upload.starts_with(&multipart_prefix(path))) else {
            return Err(refused("not a checkpoint of this write"));
        };
        let mut multipart = self.multipart.lock().unwrap();
        let Some(upload) = multipart.get_mut(&token.upload) else {
            return Err(DriverError::NotFound { path: path.clone() });
        };
        upload.parts.truncate(token.parts);
        if upload.size() != checkpoint.written {
            return Err(refused(
                "the upload's parts do not add up to its checkpoint",
            ));
        }
        upload.held = true;
        Ok(Box::new(MemoryWriter {
            objects: self.objects.clone(),
            path: path.clone(),
            mode,
            buf: Buffered::One(Bytes::new()),
            multipart: self.multipart.clone(),
            upload: Some(UploadHandle {
                multipart: self.multipart.clone(),
                id: token.upload,
                parts: token.parts,
                written: checkpoint.written,
            }),
        }))
    }

    async fn list(&self, prefix: Option<&DriverPath>) -> DriverResult<Vec<DriverPath>> {
        let objects = self.objects.lock().unwrap();
        Ok(MemoryObjects::below(&objects, prefix)
            .map(|(k, _)| k.clone())
            .collect())
    }

    async fn list_dir(&self, prefix: Option<&DriverPath>) -> DriverResult<Listing> {
        let objects = self.objects.lock().unwrap();
        let mut listing = Listing::default();
        for (_, rest) in MemoryObjects::below(&objects, prefix) {
            match rest.split_once('/') {
                Some((dir, _)) => {
                    if listing.dirs.last().map(String::as_str) != Some(dir) {
                        listing.dirs.push(dir.to_owned());
                    }
                }
                None => listing.files.push(rest.to_owned()),
            }
        }
        listing.dirs.sort();
        listing.dirs.dedup();
        Ok(listing)
    }

    async fn delete(&self, path: &DriverPath) -> DriverResult<()> {
        self.objects.lock().unwrap().remove(path);
        Ok(())
    }

    async fn copy(&self, src: &DriverPath, dst: &DriverPath, mode: PutMode) -> DriverResult<()> {
        let obj = self.object(src)?;
        commit(&self.objects, dst, obj.data, mode)
    }

    async fn sync_dir(&self, _dir: Option<&DriverPath>) -> DriverResult<()> {
        Ok(())
    }

    async fn get_versioned(&self, path: &DriverPath) -> DriverResult<(Bytes, ObjectVersion)> {
        let obj = self.object(path)?;
        let version = ObjectVersion::of(&obj.data);
        Ok((obj.data, version))
    }

    async fn put_if_version(
        &self,
        path: &DriverPath,
        data: Bytes,
        expected: Option<&ObjectVersion>,
    ) -> DriverResult<ObjectVersion> {
        let mut objects = self.objects.lock().unwrap();
        let current = objects.get(path).map(|o| ObjectVersion::of(&o.data));
        if current.as_ref() != expected {
            return Err(DriverError::PreconditionFailed { path: path.clone() });
        }
        let version = ObjectVersion::of(&data);
        objects.insert(
            path.clone(),
            StoredObject {
                data,
                modified: SystemTime::now(),
            },
        );
        Ok(version)
    }

    /// Multipart uploads no writer holds: their checkpoints' keepers are
    /// gone, or have not resumed them yet.
    async fn leftovers(&self, prefix: Option<&DriverPath>) -> DriverResult<Vec<Leftover>> {
        let below = prefix.map(|p| format!("{p}/"));
        let multipart = self.multipart.lock().unwrap();
        let mut out: Vec<Leftover> = multipart
            .iter()
            .filter(|(id, u)| !u.held && below.as_ref().is_none_or(|b| id.starts_with(b)))
            .map(|(id, u)| Leftover {
                path: id.clone(),
                size: u.size(),
                modified: u.modified,
            })
            .collect();
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    async fn remove_leftover(&self, leftover: &Leftover) -> DriverResult<()> {
        let mut multipart = self.multipart.lock().unwrap();
        if multipart.get(&leftover.path).is_some_and(|u| !u.held) {
            multipart.remove(&leftover.path);
        }
        Ok(())
    }
}

/// Where the multipart uploads of writes to `target` are named: beside
/// it, under the drivers' reserved prefix (so never a [`DriverPath`]).
fn multipart_prefix(target: &DriverPath) -> String {
    format!("{target}.{}-multipart.", super::RESERVED_PREFIX)
}

/// Buffers the object; once checkpointed, it is a multipart upload and
/// the buffer holds only what came after the last part.
struct MemoryWriter {
    objects: Arc<Mutex<ObjectMap>>,
    path: DriverPath,
    mode: PutMode,
    buf: Buffered,
    multipart: Arc<Mutex<HashMap<String, Multipart>>>,
    /// The multipart upload, from the first checkpoint on.
    upload: Option<UploadHandle>,
}

/// A writer's hold on its multipart upload; dropping it releases the
/// upload (to a resume, or to leftover reclamation).
struct UploadHandle {
    multipart: Arc<Mutex<HashMap<String, Multipart>>>,
    id: String,
    /// Parts stored so far, and their bytes.
    parts: usize,
    written: u64,
}

impl UploadHandle {
    /// Takes the parts out (for a commit or an abort): nothing is left to release.
    fn take_parts(self) -> Vec<Bytes> {
        let parts = self
            .multipart
            .lock()
            .unwrap()
            .remove(&self.id)
            .map(|u| u.parts)
            .unwrap_or_default();
        std::mem::forget(self);
        parts
    }
}

impl Drop for UploadHandle {
    fn drop(&mut self) {
        if let Some(u) = self.multipart.lock().unwrap().get_mut(&self.id) {
            u.held = false;
        }
    }
}

impl Buffered {
    fn take(&mut self) -> Bytes {
        match std::mem::replace(self, Buffered::One(Bytes::new())) {
            Buffered::One(b) => b,
            Buffered::Many(b) => b.freeze(),
        }
    }

    fn len(&self) -> u64 {
        match self {
            Buffered::One(b) => b.len() as u64,
            Buffered::Many(b) => b.len() as u64,
        }
    }

    /// `range` of the buffered bytes.
    fn slice(&self, range: Range<usize>) -> Bytes {
        match self {
            Buffered::One(b) => b.slice(range),
            Buffered::Many(b) => Bytes::copy_from_slice(&b[range]),
        }
    }
}

/// An object written in one chunk (a `put`) is kept as that chunk, not
/// copied: an index.json rewrite of a large repository is megabytes.
enum Buffered {
    One(Bytes),
    Many(BytesMut),
}

#[async_trait]
impl BlobWriter for MemoryWriter {
    async fn write(&mut self, chunk: Bytes) -> DriverResult<()> {
        match &mut self.buf {
            Buffered::One(first) if first.is_empty() => *first = chunk,
            Buffered::One(first) => {
                let mut all = BytesMut::with_capacity(first.len() + chunk.len());
                all.extend_from_slice(first);
                all.extend_from_slice(&chunk);
                self.buf = Buffered::Many(all);
            }
            Buffered::Many(all) => all.extend_from_slice(&chunk),
        }
        Ok(())
    }

    fn written(&self) -> u64 {
        self.upload.as_ref().map_or(0, |u| u.written) + self.buf.len()
    }

    async fn commit(mut self: Box<Self>) -> DriverResult<()> {
        let tail = self.buf.take();
        let data = match self.upload.take() {
            None => tail,
            Some(upload) => {
                let mut all =
                    BytesMut::with_capacity((upload.written + tail.len() as u64) as usize);
                for part in upload.take_parts() {
                    all.extend_from_slice(&part);
                }
                all.extend_from_slice(&tail);
                all.freeze()
            }
        };
        commit(&self.objects, &self.path, data, self.mode)
    }

    async fn abort(mut self: Box<Self>) -> DriverResult<()> {
        if let Some(upload) = self.upload.take() {
            upload.take_parts();
        }
        Ok(())
    }

    /// Stores what came since the last checkpoint as the upload's next
    /// part (S3's `UploadPart`, durable on return).
    async fn checkpoint(&mut self) -> DriverResult<Checkpoint> {
        let upload = match &mut self.upload {
            Some(upload) => upload,
            None => {
                let n = MULTIPART_IDS.fetch_add(1, Ordering::Relaxed);
                let id = format!("{}{n}", multipart_prefix(&self.path));
                let handle = UploadHandle {
                    multipart: self.multipart.clone(),
                    id,
                    parts: 0,
                    written: 0,
                };
                handle.multipart.lock().unwrap().insert(
                    handle.id.clone(),
                    Multipart {
                        parts: Vec::new(),
                        modified: SystemTime::now(),
                        held: true,
                    },
                );
                self.upload.insert(handle)
            }
        };
        let part = self.buf.take();
        if !part.is_empty() {
            let mut multipart = upload.multipart.lock().unwrap();
            let Some(u) = multipart.get_mut(&upload.id) else {
                return Err(DriverError::NotFound {
                    path: self.path.clone(),
                });
            };
            upload.written += part.len() as u64;
            u.parts.push(part);
            u.modified = SystemTime::now();
            upload.parts = u.parts.len();
        }
        let token = MultipartToken {
            upload: upload.id.clone(),
            parts: upload.parts,
        };
        Ok(Checkpoint::of(upload.written, &token, upload.id.clone()))
    }

    async fn read_staged(&mut self, range: Range<u64>) -> DriverResult<Bytes> {
        let (start, end) = (range.start, range.end);
        if start > end || end > self.written() {
            return Err(DriverError::InvalidRange {
                path: self.path.clone(),
                start,
                end,
                size: self.written(),
            });
        }
        let mut pieces: Vec<Bytes> = self.upload.as_ref().map_or_else(Vec::new, |u| {
            u.multipart
                .lock()
                .unwrap()
                .get(&u.id)
                .map(|m| m.parts.clone())
                .unwrap_or_default()
        });
        pieces.push(self.buf.slice(0..self.buf.len() as usize));
        let mut out = BytesMut::with_capacity((end - start) as usize);
        let mut at = 0u64;
        for piece in pieces {
            let (from, to) = (at, at + piece.len() as u64);
            at = to;
            if to <= start || from >= end {
                continue;
            }
            let a = start.max(from) - from;
            let b = end.min(to) - from;
            out.extend_from_slice(&piece[a as usize..b as usize]);
        }
        Ok(out.freeze())
    }
}
