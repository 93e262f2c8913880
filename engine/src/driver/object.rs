//! `object`: object-store semantics, as S3 and its kind offer them.
//!
//! No hard links, no rename, no directories (a "directory" is a shared key
//! prefix); a move is copy + delete; put can be conditional (if absent); and
//! every call is durable when it returns. Kept close to the `object_store`
//! crate's `ObjectStore` so a real S3 back end can slot in later.
//!
//! Two backings for the lab: memory, and a directory (objects as files, made
//! crash-safe by the `fs` driver's commit protocol underneath).

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};

use super::{
    BlobWriter, Capabilities, Driver, DriverError, DriverPath, DriverResult, FsDriver, Leftover,
    Listing, ObjectMeta, PutMode, check_range,
};
use crate::indexed_map::IndexedMap;
use crate::sync::unmodeled::Mutex;

/// A driver with object-store semantics over one of two backings.
#[derive(Debug)]
pub struct ObjectDriver {
    backing: Backing,
}

#[derive(Debug)]
enum Backing {
    Memory(Arc<MemoryObjects>),
    Dir(FsDriver),
    /// Object semantics over the simulated disk: crashes and full disks
    /// for the object layout's crash tests.
    Sim(super::SimDriver),
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
        Ok(ObjectDriver {
            backing: Backing::Dir(FsDriver::open(root)?),
        })
    }

    /// Objects on a simulated disk (which a test keeps to crash or fill).
    pub fn on_sim(disk: Arc<super::SimDisk>) -> ObjectDriver {
        ObjectDriver {
            backing: Backing::Sim(super::SimDriver::on(disk)),
        }
    }

    fn inner(&self) -> &dyn Driver {
        match &self.backing {
            Backing::Memory(m) => &**m,
            Backing::Dir(d) => d,
            Backing::Sim(d) => d,
        }
    }
}

#[async_trait]
impl Driver for ObjectDriver {
    fn name(&self) -> &'static str {
        "object"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            hard_links: false,
            rename: false,
            durable_on_return: true,
        }
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
}

/// The in-memory object map behind [`ObjectDriver::in_memory`].
#[derive(Debug, Default)]
pub struct MemoryObjects {
    objects: Arc<Mutex<ObjectMap>>,
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
        Capabilities {
            hard_links: false,
            rename: false,
            durable_on_return: true,
        }
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
}

/// Buffers the object; an object store's multipart upload would stream parts.
struct MemoryWriter {
    objects: Arc<Mutex<ObjectMap>>,
    path: DriverPath,
    mode: PutMode,
    buf: Buffered,
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
        match &self.buf {
            Buffered::One(b) => b.len() as u64,
            Buffered::Many(b) => b.len() as u64,
        }
    }

    async fn commit(self: Box<Self>) -> DriverResult<()> {
        let data = match self.buf {
            Buffered::One(b) => b,
            Buffered::Many(b) => b.freeze(),
        };
        commit(&self.objects, &self.path, data, self.mode)
    }

    async fn abort(self: Box<Self>) -> DriverResult<()> {
        Ok(())
    }
}
