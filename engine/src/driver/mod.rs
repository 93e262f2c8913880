//! Storage drivers: where blob and metadata bytes live.
//!
//! The [`Driver`] trait below *is* the contract; every driver must pass
//! `testkit::driver_conformance`, the one suite of assertions run against
//! all of them (a crate of its own: the library does not ship it).
//!
//! | driver | module | backing | links / rename | durability |
//! |---|---|---|---|---|
//! | `fs` | [`fs`] | a real directory | yes | fsync protocol (below) |
//! | `sim` | [`sim`] | [`SimDisk`], in memory, with a power-failure model | yes | same protocol, same code |
//! | `object` | [`object`] | memory, or a directory | no (copy + delete) | every call durable on return |
//!
//! `fs` and `sim` are one implementation ([`posix::PosixDriver`]) over two
//! small filesystem back ends, so the crash tests on `sim` exercise exactly
//! the commit protocol `fs` runs on a real disk.
//!
//! Wrappers add behaviour without touching drivers: [`Instrumented`] counts
//! calls by kind and turns a failed fsync into a sticky failure; [`Latency`]
//! sleeps per call kind (virtual time under madsim).

mod cas;
mod counters;
mod error;
pub mod fs;
mod instrumented;
mod intercept;
mod latency;
pub mod object;
mod path;
pub mod posix;
pub mod sim;

use std::fmt;
use std::ops::Range;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;

pub use cas::ObjectVersion;
pub use counters::{CallCounters, CallCounts, CallKind};
pub use error::{DriverError, DriverResult};
pub use fs::FsDriver;
pub use instrumented::Instrumented;
pub use intercept::{Intercept, Intercepted};
pub use latency::{Latency, LatencyModel};
pub use object::ObjectDriver;
pub use path::{DriverPath, PathError, RESERVED_PREFIX};
pub use sim::{SimDisk, SimDriver, SimFaults};

/// What a stored object looks like from outside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub size: u64,
    pub modified: SystemTime,
    /// Number of names the bytes have (hard links); `None` where the backend
    /// has no links. The local blobstore reads `links - 1` as "repositories
    /// holding this digest" (DESIGN §4).
    pub links: Option<u64>,
    /// `(device, inode)` where the backend has files: two names with the
    /// same id are one file (hard links), so what was verified under one
    /// name holds for the other. `None` on object stores.
    pub file_id: Option<(u64, u64)>,
}

/// A temp file a writer left behind: the partial bytes of a write whose
/// process died before it committed or discarded them (DESIGN §7,
/// invariant 12). Its name is reserved, so it is not a [`DriverPath`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leftover {
    /// Relative to the driver's root.
    pub path: String,
    pub size: u64,
    pub modified: SystemTime,
}

/// What to do when the target of a write already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutMode {
    /// Replace atomically: readers see the old or the new bytes, never a mix.
    Overwrite,
    /// Fail with [`DriverError::AlreadyExists`] and leave the existing bytes
    /// untouched (conditional put; the dedupe primitive on object stores).
    IfAbsent,
}

/// What a backend can do beyond the common core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// [`Driver::hard_link`] works and [`ObjectMeta::links`] is reported.
    pub hard_links: bool,
    /// [`Driver::rename`] works.
    pub rename: bool,
    /// Every mutation is durable when it returns; [`Driver::sync_dir`] is a no-op.
    pub durable_on_return: bool,
}

impl Capabilities {
    /// What an object store (S3 and its kind) offers: no links, no rename,
    /// every call durable on return.
    pub const OBJECT_STORE: Capabilities = Capabilities {
        hard_links: false,
        rename: false,
        durable_on_return: true,
    };
}

/// The immediate children of a prefix: sub-prefixes ("directories") and objects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    pub dirs: Vec<String>,
    pub files: Vec<String>,
}

/// Where a resumable write stands: what [`BlobWriter::checkpoint`] made
/// durable, and what [`Driver::resume_writer`] needs to carry on from there,
/// in this process or in a later one.
///
/// The caller stores it as it is (an upload session keeps it in the
/// metadata store) and reads only [`Checkpoint::written`] and
/// [`Checkpoint::staged`]; `token` is the driver's own: a temp file's name
/// and length (posix), the parts of an emulated multipart upload (object,
/// in memory), an S3 upload id and its parts' ETags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Bytes durable so far; a resumed writer continues from here.
    pub written: u64,
    /// The driver's record of the staged bytes, opaque to the caller.
    pub token: String,
    /// The [`Leftover`] paths that hold the staged bytes. While the caller
    /// keeps the checkpoint these are live data, not garbage, even when
    /// the process that wrote them is gone.
    pub staged: Vec<String>,
}

impl Checkpoint {
    /// A checkpoint of `written` bytes held in the leftover `staged`, with
    /// the driver's `state` as its token (JSON).
    pub(crate) fn of(written: u64, state: &impl serde::Serialize, staged: String) -> Checkpoint {
        Checkpoint {
            written,
            token: serde_json::to_string(state).expect("a token serialises"),
            staged: vec![staged],
        }
    }

    /// The driver's state, if the token holds a `T` (it comes back from
    /// outside: a metadata store).
    pub(crate) fn state<T: serde::de::DeserializeOwned>(&self) -> Option<T> {
        serde_json::from_str(&self.token).ok()
    }
}

/// Streams one object in; nothing is visible under the target name until
/// [`BlobWriter::commit`] returns `Ok`.
///
/// Dropping a writer without committing abandons it: the target is untouched
/// and the partial bytes are left under a reserved name that no listing shows.
/// An abandoned writer that was never checkpointed is a leftover once its
/// process is gone; one that was checkpointed belongs to whoever keeps the
/// [`Checkpoint`] (resume it, or resume and abort it).
#[async_trait]
pub trait BlobWriter: Send {
    /// Appends a chunk. Memory held by the writer is bounded by a few chunks,
    /// whatever the object's size.
    async fn write(&mut self, chunk: Bytes) -> DriverResult<()>;

    /// Bytes accepted so far.
    fn written(&self) -> u64;

    /// Publishes the object atomically; durable on return (data and name,
    /// and any directory created for it). With [`PutMode::IfAbsent`], fails
    /// with `AlreadyExists` if the target appeared meanwhile.
    async fn commit(self: Box<Self>) -> DriverResult<()>;

    /// Discards the partial object (checkpointed bytes included).
    async fn abort(self: Box<Self>) -> DriverResult<()>;

    /// Makes every byte written so far durable, and returns what
    /// [`Driver::resume_writer`] reopens the write from (after a crash, or
    /// in another process). Bytes written after the last checkpoint are
    /// dropped by a resume. A checkpointed writer that is dropped leaves
    /// its staged bytes in place for a resume.
    ///
    /// Default: `Unsupported`, for drivers without resumable writes.
    async fn checkpoint(&mut self) -> DriverResult<Checkpoint> {
        Err(DriverError::Unsupported {
            driver: "writer",
            op: "checkpoint",
        })
    }

    /// Reads back `range` of the bytes written so far (for a resumed
    /// writer whose caller must rebuild state it could not persist, such as
    /// a running hash).
    async fn read_staged(&mut self, range: Range<u64>) -> DriverResult<Bytes> {
        let _ = range;
        Err(DriverError::Unsupported {
            driver: "writer",
            op: "read_staged",
        })
    }
}

/// The storage contract.
///
/// Paths are [`DriverPath`]s, validated on construction, so no call can
/// escape the driver's root. Objects live at paths; a "directory" is only a
/// shared prefix (created and removed implicitly).
///
/// Durability:
/// - `put`, `writer(..).commit()` and `copy` are durable on return.
/// - `hard_link`, `rename` and `delete` are atomic and visible on return, and
///   durable once [`Driver::sync_dir`] of the changed entry's parent returns
///   (immediately, where [`Capabilities::durable_on_return`]).
/// - Directories a call creates are durable when it returns.
///
/// Undefined: a path that is at once an object and a prefix of another
/// object (drivers may refuse either write); concurrent writers of one path
/// in `Overwrite` mode (one of them wins whole).
#[async_trait]
pub trait Driver: Send + Sync + fmt::Debug {
    /// Short name for errors and reports (`fs`, `sim`, `object`).
    fn name(&self) -> &'static str;

    fn capabilities(&self) -> Capabilities;

    /// Size, modification time and link count. Directories are not objects:
    /// `NotFound`.
    async fn stat(&self, path: &DriverPath) -> DriverResult<ObjectMeta>;

    /// The whole object, or `range` of it. A range must satisfy
    /// `start <= end <= size`, else `InvalidRange`; an empty range is fine.
    async fn get(&self, path: &DriverPath, range: Option<Range<u64>>) -> DriverResult<Bytes>;

    /// Starts streaming a new object to `path`.
    async fn writer(&self, path: &DriverPath, mode: PutMode) -> DriverResult<Box<dyn BlobWriter>>;

    /// Reopens a write to `path` that [`BlobWriter::checkpoint`] left at
    /// `checkpoint`: the writer continues at `checkpoint.written` (bytes
    /// written after that checkpoint are dropped), and its commit publishes
    /// to `path` with `mode`. `NotFound` if the staged bytes are gone (the
    /// write was committed, aborted or reclaimed).
    ///
    /// Default: `Unsupported`, for drivers without resumable writes.
    async fn resume_writer(
        &self,
        path: &DriverPath,
        mode: PutMode,
        checkpoint: &Checkpoint,
    ) -> DriverResult<Box<dyn BlobWriter>> {
        let _ = (path, mode, checkpoint);
        Err(DriverError::Unsupported {
            driver: self.name(),
            op: "resume_writer",
        })
    }

    /// Writes a whole object in one call (durable on return).
    async fn put(&self, path: &DriverPath, data: Bytes, mode: PutMode) -> DriverResult<()> {
        let mut w = self.writer(path, mode).await?;
        w.write(data).await?;
        w.commit().await
    }

    /// Every object below `prefix` (the whole store for `None`), sorted.
    /// A missing prefix lists as empty.
    async fn list(&self, prefix: Option<&DriverPath>) -> DriverResult<Vec<DriverPath>>;

    /// The immediate children of `prefix`, each list sorted.
    async fn list_dir(&self, prefix: Option<&DriverPath>) -> DriverResult<Listing>;

    /// Removes one object; removing a missing object succeeds (idempotent,
    /// as on object stores), so a crashed delete can simply be repeated.
    async fn delete(&self, path: &DriverPath) -> DriverResult<()>;

    /// Gives the bytes of `src` a second name `dst` (`AlreadyExists` if taken).
    async fn hard_link(&self, src: &DriverPath, dst: &DriverPath) -> DriverResult<()> {
        let _ = (src, dst);
        Err(DriverError::Unsupported {
            driver: self.name(),
            op: "hard_link",
        })
    }

    /// Moves `src` to `dst`, replacing `dst` atomically.
    async fn rename(&self, src: &DriverPath, dst: &DriverPath) -> DriverResult<()> {
        let _ = (src, dst);
        Err(DriverError::Unsupported {
            driver: self.name(),
            op: "rename",
        })
    }

    /// Copies `src` to `dst` (server-side on object stores); durable on return.
    async fn copy(&self, src: &DriverPath, dst: &DriverPath, mode: PutMode) -> DriverResult<()>;

    /// Makes the entries of directory `dir` (`None`: the root) durable: the
    /// names created, renamed, linked or removed in it so far survive a crash.
    /// If `dir` itself is gone (emptied and removed by a delete), its removal
    /// is made durable instead, in its nearest existing ancestor.
    async fn sync_dir(&self, dir: Option<&DriverPath>) -> DriverResult<()>;

    /// The whole object and its version, for a later
    /// [`Driver::put_if_version`]. Unsupported where the backend has no
    /// compare-and-swap.
    async fn get_versioned(&self, path: &DriverPath) -> DriverResult<(Bytes, ObjectVersion)> {
        let _ = path;
        Err(DriverError::Unsupported {
            driver: self.name(),
            op: "get_versioned",
        })
    }

    /// Compare-and-swap (S3's `If-Match`, or `If-None-Match: *` for
    /// `expected` `None`): replaces `path` with `data` only if its version
    /// is `expected` now (`None`: it is absent), atomically with respect to
    /// every writer using this call, in any process. Otherwise
    /// [`DriverError::PreconditionFailed`], and nothing changed. Durable on
    /// return; returns the new version. Writers that bypass this call
    /// (`put` in `Overwrite` mode) are not excluded: an object rewritten by
    /// several instances is written through this call only.
    async fn put_if_version(
        &self,
        path: &DriverPath,
        data: Bytes,
        expected: Option<&ObjectVersion>,
    ) -> DriverResult<ObjectVersion> {
        let _ = (path, data, expected);
        Err(DriverError::Unsupported {
            driver: self.name(),
            op: "put_if_version",
        })
    }

    /// Temp files below `prefix` (the whole store for `None`) that no live
    /// writer owns: those of a process that is gone. A write in progress in
    /// this process, or in another live process, is never listed. None
    /// where writes leave nothing behind (memory, a real object store's
    /// multipart uploads expire by themselves).
    async fn leftovers(&self, prefix: Option<&DriverPath>) -> DriverResult<Vec<Leftover>> {
        let _ = prefix;
        Ok(Vec::new())
    }

    /// Removes a leftover [`Driver::leftovers`] listed (idempotent).
    async fn remove_leftover(&self, leftover: &Leftover) -> DriverResult<()> {
        let _ = leftover;
        Ok(())
    }
}

/// Implements [`Driver`] by forwarding every call to `$to` (an expression
/// of `$this`, the `&self`): for the pointer types below, and for
/// [`Intercepted`], whose target is an [`Intercept`] (same method names).
macro_rules! forward_driver {
    ({ $($header:tt)* }, $this:ident => $to:expr) => {
        #[async_trait]
        $($header)* {
            fn name(&self) -> &'static str {
                let $this = self;
                $to.name()
            }
            fn capabilities(&self) -> Capabilities {
                let $this = self;
                $to.capabilities()
            }
            async fn stat(&self, path: &DriverPath) -> DriverResult<ObjectMeta> {
                let $this = self;
                $to.stat(path).await
            }
            async fn get(
                &self,
                path: &DriverPath,
                range: Option<Range<u64>>,
            ) -> DriverResult<Bytes> {
                let $this = self;
                $to.get(path, range).await
            }
            async fn writer(
                &self,
                path: &DriverPath,
                mode: PutMode,
            ) -> DriverResult<Box<dyn BlobWriter>> {
                let $this = self;
                $to.writer(path, mode).await
            }
            async fn resume_writer(
                &self,
                path: &DriverPath,
                mode: PutMode,
                checkpoint: &Checkpoint,
            ) -> DriverResult<Box<dyn BlobWriter>> {
                let $this = self;
                $to.resume_writer(path, mode, checkpoint).await
            }
            async fn put(&self, path: &DriverPath, data: Bytes, mode: PutMode) -> DriverResult<()> {
                let $this = self;
                $to.put(path, data, mode).await
            }
            async fn list(&self, prefix: Option<&DriverPath>) -> DriverResult<Vec<DriverPath>> {
                let $this = self;
                $to.list(prefix).await
            }
            async fn list_dir(&self, prefix: Option<&DriverPath>) -> DriverResult<Listing> {
                let $this = self;
                $to.list_dir(prefix).await
            }
            async fn delete(&self, path: &DriverPath) -> DriverResult<()> {
                let $this = self;
                $to.delete(path).await
            }
            async fn hard_link(&self, src: &DriverPath, dst: &DriverPath) -> DriverResult<()> {
                let $this = self;
                $to.hard_link(src, dst).await
            }
            async fn rename(&self, src: &DriverPath, dst: &DriverPath) -> DriverResult<()> {
                let $this = self;
                $to.rename(src, dst).await
            }
            async fn copy(
                &self,
                src: &DriverPath,
                dst: &DriverPath,
                mode: PutMode,
            ) -> DriverResult<()> {
                let $this = self;
                $to.copy(src, dst, mode).await
            }
            async fn sync_dir(&self, dir: Option<&DriverPath>) -> DriverResult<()> {
                let $this = self;
                $to.sync_dir(dir).await
            }
            async fn get_versioned(
                &self,
                path: &DriverPath,
            ) -> DriverResult<(Bytes, ObjectVersion)> {
                let $this = self;
                $to.get_versioned(path).await
            }
            async fn put_if_version(
                &self,
                path: &DriverPath,
                data: Bytes,
                expected: Option<&ObjectVersion>,
            ) -> DriverResult<ObjectVersion> {
                let $this = self;
                $to.put_if_version(path, data, expected).await
            }
            async fn leftovers(&self, prefix: Option<&DriverPath>) -> DriverResult<Vec<Leftover>> {
                let $this = self;
                $to.leftovers(prefix).await
            }
            async fn remove_leftover(&self, leftover: &Leftover) -> DriverResult<()> {
                let $this = self;
                $to.remove_leftover(leftover).await
            }
        }
    };
}

use std::sync::Arc;
// `Box<dyn Driver>` and `Arc<dyn Driver>` are drivers too, so wrappers and
// the store can hold a driver chosen at run time.
forward_driver!({ impl<D: Driver + ?Sized> Driver for Box<D> }, s => (**s));
forward_driver!({ impl<D: Driver + ?Sized> Driver for Arc<D> }, s => (**s));
forward_driver!({ impl<I: Intercept> Driver for Intercepted<I> }, s => s.0);

/// Reads ranges in chunks so that a caller can stream a large object
/// without holding it whole; shared by `copy` implementations.
pub(crate) const COPY_CHUNK: u64 = 4 << 20;

pub(crate) fn check_range(
    path: &DriverPath,
    range: Option<Range<u64>>,
    size: u64,
) -> DriverResult<Range<u64>> {
    let range = range.unwrap_or(0..size);
    if range.start > range.end || range.end > size {
        return Err(DriverError::InvalidRange {
            path: path.clone(),
            start: range.start,
            end: range.end,
            size,
        });
    }
    Ok(range)
}

/// Streams `src` into `dst` in [`COPY_CHUNK`] pieces through `driver`'s own
/// calls; for backends without a native copy.
pub(crate) async fn copy_by_streaming<D: Driver + ?Sized>(
    driver: &D,
    src: &DriverPath,
    dst: &DriverPath,
    mode: PutMode,
) -> DriverResult<()> {
    let size = driver.stat(src).await?.size;
    let mut w = driver.writer(dst, mode).await?;
    let mut at = 0;
    while at < size {
        let end = (at + COPY_CHUNK).min(size);
        w.write(driver.get(src, Some(at..end)).await?).await?;
        at = end;
    }
    w.commit().await
}
