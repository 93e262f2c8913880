//! One driver over any POSIX-like filesystem: the commit protocol lives here,
//! once, for the real directory ([`super::fs`]) and the simulated disk
//! ([`super::sim`]).
//!
//! # Commit protocol (what makes a put crash-safe)
//!
//! ```text
//! 1. mkdir -p parent          each created dir: fsync ITS parent
//! 2. create parent/.ocistore-tmp.N   (same directory: step 4 touches one dir)
//! 3. write chunks; fsync(temp)        -- data durable, name not yet
//! 4. Overwrite: rename(temp, target)
//!    IfAbsent:  link(temp, target) (fails if taken); unlink(temp)
//! 5. fsync(parent)                    -- POINT OF NO RETURN: the name is durable
//! ```
//!
//! Crash before 5: the target holds its old bytes or does not exist; at most
//! a temp name survives, which no listing shows. Crash after 5: the target
//! holds all the new bytes. A torn write can only ever land in a temp file.
//! Temp and target share a directory so that one directory fsync covers the
//! new name and the temp's removal (a surviving temp link would inflate the
//! link count the local blobstore uses as reference truth).

use std::fmt;
use std::io;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;

use super::{
    BlobWriter, Capabilities, Checkpoint, Driver, DriverError, DriverPath, DriverResult, Leftover,
    Listing, ObjectMeta, PutMode, RESERVED_PREFIX, check_range, copy_by_streaming,
};

/// What a filesystem says about one name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsStat {
    pub is_dir: bool,
    pub size: u64,
    pub modified: SystemTime,
    pub links: u64,
    /// `(device, inode)`.
    pub file_id: (u64, u64),
}

/// The few calls the commit protocol needs. Paths are relative to the
/// filesystem's root and already valid; `""` is the root itself.
///
/// Errors use `io::ErrorKind` (`NotFound`, `AlreadyExists`, `StorageFull`,
/// `DirectoryNotEmpty`); a back end may carry its own payload in
/// `io::Error::other` for faults the kinds cannot say (see [`super::sim`]).
#[async_trait]
pub trait PosixFs: Send + Sync + fmt::Debug + 'static {
    type File: Send + 'static;

    /// Driver name for errors and reports.
    fn name(&self) -> &'static str;

    /// Creates a new, empty file; `AlreadyExists` if the name is taken.
    async fn create_new(&self, path: &str) -> io::Result<Self::File>;
    async fn write(&self, file: &mut Self::File, data: Bytes) -> io::Result<()>;
    /// Waits for writes still in flight (a back end may write behind the
    /// caller) and reports how they ended: a write's error, such as no
    /// space, not an fsync's.
    async fn flush(&self, file: &mut Self::File) -> io::Result<()> {
        let _ = file;
        Ok(())
    }
    /// Makes the file's data durable (and waits for any write still in flight).
    async fn fsync(&self, file: &mut Self::File) -> io::Result<()>;
    /// Reopens an existing file for appending, cut to its first `len` bytes
    /// (what a checkpoint made durable; what was written after it is
    /// dropped). `NotFound` if it is gone, `InvalidData` if it is shorter.
    /// Default: `Unsupported` (no resumable writes on this back end).
    async fn open_truncated(&self, path: &str, len: u64) -> io::Result<Self::File> {
        let _ = (path, len);
        Err(io::ErrorKind::Unsupported.into())
    }
    /// Reads `range` of a file (`UnexpectedEof` past its end), or with
    /// `None` the whole file, sized and read through one open: a file
    /// replaced meanwhile (another process's swap of an `index.json`) is
    /// read whole, the old or the new, never the new cut at the old length.
    /// A directory is `NotFound` or `IsADirectory`.
    async fn read_at(&self, path: &str, range: Option<Range<u64>>) -> io::Result<Bytes>;
    async fn stat(&self, path: &str) -> io::Result<FsStat>;
    /// `AlreadyExists` if present.
    async fn mkdir(&self, path: &str) -> io::Result<()>;
    /// `DirectoryNotEmpty` unless empty.
    async fn rmdir(&self, path: &str) -> io::Result<()>;
    async fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    /// `AlreadyExists` if `to` is taken.
    async fn link(&self, from: &str, to: &str) -> io::Result<()>;
    async fn unlink(&self, path: &str) -> io::Result<()>;
    async fn fsync_dir(&self, path: &str) -> io::Result<()>;
    /// `(name, is_dir)` of every entry, any order.
    async fn read_dir(&self, path: &str) -> io::Result<Vec<(String, bool)>>;
    /// Removes an abandoned temp file and the directories that leaves empty,
    /// best effort and synchronously: it runs from `Drop`, where nothing can
    /// be awaited and nothing can be reported.
    fn discard(&self, temp: &str);
    /// Who writes temp files now, as named in them: on a real machine the
    /// process. A back end that models a machine's power cycles (the sim
    /// disk, where a crashed engine restarts inside one process) names the
    /// boot instead.
    fn writer_id(&self) -> u64 {
        u64::from(std::process::id())
    }
    /// Whether writer `writer` (from a temp file's name; the file was last
    /// modified at `modified`) is gone, so its temp files are leftovers.
    fn writer_gone(&self, writer: u64, modified: SystemTime) -> bool {
        process_gone(writer, modified)
    }
    /// Turns a back-end specific error into a driver error, or `None` to let
    /// the generic mapping by kind decide.
    fn classify(&self, err: &io::Error) -> Option<DriverError> {
        let _ = err;
        None
    }
}

/// The first part of every temp file's name: `.ocistore-tmp.<writer>.<n>`
/// ([`PosixFs::writer_id`]).
fn temp_prefix() -> String {
    format!("{RESERVED_PREFIX}-tmp.")
}

/// When this process started writing temp files (the first driver made):
/// a temp file of our pid older than that, by more than
/// [`MTIME_SLACK`], is a previous process's that had the same pid
/// (containers restart as pid 1).
fn process_start() -> SystemTime {
    static START: std::sync::OnceLock<SystemTime> = std::sync::OnceLock::new();
    *START.get_or_init(SystemTime::now)
}

/// Whether process `pid` is alive on this machine. `kill(pid, 0)` checks
/// without signalling; EPERM means it exists under another user.
fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks that the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// The writer part of a temp file's name (`.ocistore-tmp.<writer>.<n>`).
fn temp_writer(name: &str) -> Option<u64> {
    name.strip_prefix(&temp_prefix())
        .and_then(|rest| rest.split_once('.'))
        .and_then(|(writer, _)| writer.parse().ok())
}

/// On a real machine: whether process `pid`, the writer of a temp file
/// modified at `modified`, is gone.
///
/// Ours: only if the file predates this process. Another live process's:
/// never, however old (an upload can idle between chunks). A pid reused
/// since is taken as alive, which keeps a leftover longer, never removes a
/// live one. The check is this machine's: processes of other machines
/// sharing the directory are not seen, and their temp files age out by
/// GC's delay only.
pub(crate) fn process_gone(pid: u64, modified: SystemTime) -> bool {
    if pid == u64::from(std::process::id()) {
        return modified + MTIME_SLACK < process_start();
    }
    !u32::try_from(pid).is_ok_and(pid_alive)
}

/// How far a file's mtime may lag the clock that read [`process_start`].
/// The kernel stamps files from a coarse clock (a tick behind
/// `clock_gettime`, up to 2 s on FAT), so a temp file this process made
/// just after starting can carry an mtime *before* its start; without the
/// slack that live file was listed as a leftover (seen on CI). The cost: a
/// same-pid predecessor's leftover from the last 2 s before this start
/// stays until this process exits, which errs toward keeping.
const MTIME_SLACK: std::time::Duration = std::time::Duration::from_secs(2);

/// How often a commit retries when a concurrent delete removed the directory
/// it had just created (rmdir of emptied parents races mkdir -p).
const DIR_RACE_RETRIES: usize = 8;

/// [`Driver`] over a [`PosixFs`].
#[derive(Debug)]
pub struct PosixDriver<F: PosixFs> {
    fs: std::sync::Arc<F>,
    temp_counter: AtomicU64,
    /// Which life of an engine this driver writes for, in the upper half of
    /// its temp files' writer ([`PosixFs::writer_id`] in the lower): 0 for
    /// a real process (its pid tells it apart), one per start of a
    /// simulated instance, so the simulated disk can tell a killed
    /// instance's temp files from a running one's
    /// ([`super::SimDisk::end_life`]).
    life: u64,
}

impl<F: PosixFs> PosixDriver<F> {
    pub fn new(fs: F) -> PosixDriver<F> {
        PosixDriver::for_life(fs, 0)
    }

    /// A driver writing for life `life` of an engine (see the field).
    pub fn for_life(fs: F, life: u64) -> PosixDriver<F> {
        process_start();
        PosixDriver {
            fs: std::sync::Arc::new(fs),
            temp_counter: AtomicU64::new(0),
            life,
        }
    }

    /// The filesystem underneath (the sim tests reach the disk model this way).
    pub fn filesystem(&self) -> &F {
        &self.fs
    }

    fn err(&self, op: &'static str, path: &str, e: io::Error) -> DriverError {
        map_err(&*self.fs, op, path, e)
    }

    /// mkdir -p of `dir`'s chain; every directory created is made durable by
    /// an fsync of its parent before this returns.
    ///
    /// A concurrent delete removes parents it empties, so a directory this
    /// found or made can be gone by the next step (its child's mkdir, or
    /// its parent's fsync, says `NotFound`): the chain is then walked again.
    async fn ensure_dir(&self, dir: Option<&DriverPath>) -> DriverResult<()> {
        let Some(dir) = dir else { return Ok(()) };
        if self.fs.stat(dir.as_str()).await.is_ok_and(|s| s.is_dir) {
            return Ok(());
        }
        'again: for _ in 0..DIR_RACE_RETRIES {
            for d in dir.ancestors().chain(std::iter::once(dir.clone())) {
                match self.fs.mkdir(d.as_str()).await {
                    Ok(()) => {
                        let parent = d.parent();
                        let parent = parent.as_ref().map_or("", |p| p.as_str());
                        match self.fs.fsync_dir(parent).await {
                            Ok(()) => {}
                            Err(e) if e.kind() == io::ErrorKind::NotFound => continue 'again,
                            Err(e) => return Err(sync_err(&*self.fs, parent, e)),
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue 'again,
                    Err(e) => return Err(self.err("mkdir", d.as_str(), e)),
                }
            }
            return Ok(());
        }
        Err(self.err(
            "mkdir",
            dir.as_str(),
            io::Error::other("a parent directory kept vanishing"),
        ))
    }

    async fn create_temp(&self, target: &DriverPath) -> DriverResult<(String, F::File)> {
        let parent = target.parent();
        for _ in 0..DIR_RACE_RETRIES {
            self.ensure_dir(parent.as_ref()).await?;
            loop {
                let n = self.temp_counter.fetch_add(1, Ordering::Relaxed);
                let writer = self.fs.writer_id() | self.life << 32;
                let name = format!("{}{writer}.{n}", temp_prefix());
                let temp = match &parent {
                    Some(p) => format!("{p}/{name}"),
                    None => name,
                };
                match self.fs.create_new(&temp).await {
                    Ok(file) => return Ok((temp, file)),
                    // A leftover from an earlier process with our pid: next number.
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(e) => return Err(self.err("create", &temp, e)),
                }
            }
        }
        Err(self.err(
            "create",
            target.as_str(),
            io::Error::other("parent directory kept vanishing"),
        ))
    }

    async fn remove_empty_parents(&self, path: &DriverPath) {
        let mut dir = path.parent();
        while let Some(d) = dir {
            // Fails harmlessly when the directory still has entries (or a
            // concurrent writer's temp file): that is the stop condition.
            if self.fs.rmdir(d.as_str()).await.is_err() {
                break;
            }
            dir = d.parent();
        }
    }

    /// Every file below `dir` whose name `keep` accepts, as paths from the
    /// root. Names with the reserved prefix are never walked into.
    async fn walk_files(
        &self,
        dir: String,
        keep: impl Fn(&str) -> bool,
    ) -> DriverResult<Vec<String>> {
        let mut out = Vec::new();
        let mut stack = vec![dir];
        while let Some(dir) = stack.pop() {
            let entries = match self.fs.read_dir(&dir).await {
                Ok(entries) => entries,
                Err(e) if is_missing_dir(&e) => continue,
                Err(e) => return Err(self.err("list", &dir, e)),
            };
            for (name, is_dir) in entries {
                if is_dir && name.starts_with(RESERVED_PREFIX) {
                    continue;
                }
                if !is_dir && !keep(&name) {
                    continue;
                }
                // Not `format!`: listings build a path per file, and the
                // formatting machinery cost more than the copy.
                let child = if dir.is_empty() {
                    name
                } else {
                    [dir.as_str(), "/", &name].concat()
                };
                if is_dir {
                    stack.push(child);
                } else {
                    out.push(child);
                }
            }
        }
        Ok(out)
    }
}

/// fsyncs `dir`. A directory that is gone (a delete emptied and removed
/// it) has one change left to persist: its own removal, in the nearest
/// ancestor that still exists.
async fn sync_nearest_dir<F: PosixFs + ?Sized>(
    fs: &F,
    mut dir: Option<DriverPath>,
) -> DriverResult<()> {
    loop {
        let name = dir.as_ref().map_or("", |d| d.as_str());
        match fs.fsync_dir(name).await {
            Ok(()) => return Ok(()),
            Err(e) if is_missing_dir(&e) && dir.is_some() => {
                dir = dir.and_then(|d| d.parent());
            }
            Err(e) => return Err(sync_err(fs, name, e)),
        }
    }
}

fn is_missing_dir(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

fn sync_err<F: PosixFs + ?Sized>(fs: &F, path: &str, e: io::Error) -> DriverError {
    match fs.classify(&e) {
        Some(err) => err,
        None => DriverError::SyncFailed {
            driver: fs.name(),
            path: path.to_owned(),
            source: e,
        },
    }
}

/// An fsync of a temp file's data failed. The file is discarded and no
/// name ever pointed at it, so nothing anyone can read is in doubt; "no
/// space" (thin provisioning, network file systems report it at fsync) is
/// then what it is for a write, and not sticky. Any other failure is a
/// real fsync failure and poisons the driver (see [`super::Instrumented`]).
fn temp_sync_err<F: PosixFs + ?Sized>(fs: &F, temp: &str, e: io::Error) -> DriverError {
    match e.kind() {
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => map_err(fs, "fsync", temp, e),
        _ => sync_err(fs, temp, e),
    }
}

fn map_err<F: PosixFs + ?Sized>(fs: &F, op: &'static str, path: &str, e: io::Error) -> DriverError {
    if let Some(err) = fs.classify(&e) {
        return err;
    }
    let as_path = || DriverPath::new(path).unwrap_or_else(|_| DriverPath::new("invalid").unwrap());
    match e.kind() {
        io::ErrorKind::NotFound => DriverError::NotFound { path: as_path() },
        io::ErrorKind::AlreadyExists => DriverError::AlreadyExists { path: as_path() },
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => {
            DriverError::NoSpace { driver: fs.name() }
        }
        _ => DriverError::Io {
            driver: fs.name(),
            op,
            path: path.to_owned(),
            source: e,
        },
    }
}

#[async_trait]
impl<F: PosixFs> Driver for PosixDriver<F> {
    fn name(&self) -> &'static str {
        self.fs.name()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            hard_links: true,
            rename: true,
            durable_on_return: false,
        }
    }

    async fn stat(&self, path: &DriverPath) -> DriverResult<ObjectMeta> {
        let st = self
            .fs
            .stat(path.as_str())
            .await
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotADirectory => DriverError::NotFound { path: path.clone() },
                _ => self.err("stat", path.as_str(), e),
            })?;
        if st.is_dir {
            return Err(DriverError::NotFound { path: path.clone() });
        }
        Ok(ObjectMeta {
            size: st.size,
            modified: st.modified,
            links: Some(st.links),
            file_id: Some(st.file_id),
        })
    }

    async fn get(&self, path: &DriverPath, range: Option<Range<u64>>) -> DriverResult<Bytes> {
        // A range is checked against a stat first, for an error that gives
        // the size; only blobs are read by range, and they never change.
        let range = match range {
            Some(range) => Some(check_range(path, Some(range), self.stat(path).await?.size)?),
            None => None,
        };
        self.fs
            .read_at(path.as_str(), range)
            .await
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotADirectory | io::ErrorKind::IsADirectory => {
                    DriverError::NotFound { path: path.clone() }
                }
                _ => self.err("read", path.as_str(), e),
            })
    }

    async fn writer(&self, path: &DriverPath, mode: PutMode) -> DriverResult<Box<dyn BlobWriter>> {
        let (temp, file) = self.create_temp(path).await?;
        Ok(Box::new(PosixWriter {
            fs: self.fs.clone(),
            target: path.clone(),
            temp,
            file: Some(file),
            mode,
            written: 0,
            checkpointed: false,
            name_durable: false,
            synced: false,
        }))
    }

    async fn resume_writer(
        &self,
        path: &DriverPath,
        mode: PutMode,
        checkpoint: &Checkpoint,
    ) -> DriverResult<Box<dyn BlobWriter>> {
        let temp = staged_temp(path, checkpoint).ok_or_else(|| {
            self.err(
                "resume",
                path.as_str(),
                io::Error::new(io::ErrorKind::InvalidData, "not a checkpoint of this write"),
            )
        })?;
        let file = self
            .fs
            .open_truncated(&temp, checkpoint.written)
            .await
            .map_err(|e| self.err("resume", &temp, e))?;
        Ok(Box::new(PosixWriter {
            fs: self.fs.clone(),
            target: path.clone(),
            temp,
            file: Some(file),
            mode,
            written: checkpoint.written,
            checkpointed: true,
            name_durable: true,
            // The truncation that cut a tail off is not durable yet.
            synced: false,
        }))
    }

    async fn list(&self, prefix: Option<&DriverPath>) -> DriverResult<Vec<DriverPath>> {
        let root = prefix.map_or(String::new(), |p| p.to_string());
        let files = self
            .walk_files(root, |name| !name.starts_with(RESERVED_PREFIX))
            .await?;
        let mut out = files
            .into_iter()
            .map(DriverPath::from_string)
            .collect::<Result<Vec<_>, _>>()?;
        out.sort();
        Ok(out)
    }

    async fn list_dir(&self, prefix: Option<&DriverPath>) -> DriverResult<Listing> {
        let dir = prefix.map_or("", |p| p.as_str());
        let entries = match self.fs.read_dir(dir).await {
            Ok(entries) => entries,
            Err(e) if is_missing_dir(&e) => return Ok(Listing::default()),
            Err(e) => return Err(self.err("list", dir, e)),
        };
        let mut listing = Listing::default();
        for (name, is_dir) in entries {
            if name.starts_with(RESERVED_PREFIX) {
                continue;
            }
            if is_dir {
                listing.dirs.push(name);
            } else {
                listing.files.push(name);
            }
        }
        listing.dirs.sort();
        listing.files.sort();
        Ok(listing)
    }

    async fn delete(&self, path: &DriverPath) -> DriverResult<()> {
        match self.fs.unlink(path.as_str()).await {
            Ok(()) => {}
            Err(e) if is_missing_dir(&e) => return Ok(()),
            Err(e) => return Err(self.err("delete", path.as_str(), e)),
        }
        self.remove_empty_parents(path).await;
        Ok(())
    }

    async fn hard_link(&self, src: &DriverPath, dst: &DriverPath) -> DriverResult<()> {
        for _ in 0..DIR_RACE_RETRIES {
            self.ensure_dir(dst.parent().as_ref()).await?;
            match self.fs.link(src.as_str(), dst.as_str()).await {
                Ok(()) => return Ok(()),
                // Which side is missing? A missing source is the caller's
                // NotFound; a vanished target dir is a race to retry.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    self.stat(src).await?;
                }
                Err(e) => return Err(self.err("link", dst.as_str(), e)),
            }
        }
        Err(self.err(
            "link",
            dst.as_str(),
            io::Error::other("target directory kept vanishing"),
        ))
    }

    async fn rename(&self, src: &DriverPath, dst: &DriverPath) -> DriverResult<()> {
        for _ in 0..DIR_RACE_RETRIES {
            self.ensure_dir(dst.parent().as_ref()).await?;
            match self.fs.rename(src.as_str(), dst.as_str()).await {
                Ok(()) => {
                    self.remove_empty_parents(src).await;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    self.stat(src).await?;
                }
                Err(e) => return Err(self.err("rename", dst.as_str(), e)),
            }
        }
        Err(self.err(
            "rename",
            dst.as_str(),
            io::Error::other("target directory kept vanishing"),
        ))
    }

    async fn copy(&self, src: &DriverPath, dst: &DriverPath, mode: PutMode) -> DriverResult<()> {
        copy_by_streaming(self, src, dst, mode).await
    }

    async fn leftovers(&self, prefix: Option<&DriverPath>) -> DriverResult<Vec<Leftover>> {
        let temp = temp_prefix();
        let root = prefix.map_or(String::new(), |p| p.to_string());
        let mut out = Vec::new();
        for path in self
            .walk_files(root, |name| name.starts_with(&temp))
            .await?
        {
            let st = match self.fs.stat(&path).await {
                Ok(st) => st,
                Err(e) if is_missing_dir(&e) => continue, // committed or discarded meanwhile
                Err(e) => return Err(self.err("stat", &path, e)),
            };
            let name = path.rsplit('/').next().unwrap_or_default();
            if temp_writer(name).is_some_and(|w| self.fs.writer_gone(w, st.modified)) {
                out.push(Leftover {
                    path,
                    size: st.size,
                    modified: st.modified,
                });
            }
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    async fn remove_leftover(&self, leftover: &Leftover) -> DriverResult<()> {
        let name = leftover.path.rsplit('/').next().unwrap_or_default();
        if !name.starts_with(&temp_prefix()) {
            return Err(self.err(
                "delete",
                &leftover.path,
                io::Error::other("not a temp file"),
            ));
        }
        match self.fs.unlink(&leftover.path).await {
            Ok(()) => {}
            Err(e) if is_missing_dir(&e) => return Ok(()),
            Err(e) => return Err(self.err("delete", &leftover.path, e)),
        }
        // Durable, so the space a crash would otherwise find taken again
        // stays free; then the directories that leaves empty.
        let parent = leftover.path.rsplit_once('/').map_or("", |(p, _)| p);
        self.fs
            .fsync_dir(parent)
            .await
            .map_err(|e| sync_err(&*self.fs, parent, e))?;
        if let Ok(parent) = DriverPath::new(parent) {
            self.remove_empty_parents(&parent.join("x").expect("valid"))
                .await;
        }
        Ok(())
    }

    async fn sync_dir(&self, dir: Option<&DriverPath>) -> DriverResult<()> {
        sync_nearest_dir(&*self.fs, dir.cloned()).await
    }
}

/// The checkpoint token of a posix write: its temp file, beside the
/// target. The length is [`Checkpoint::written`].
#[derive(serde::Serialize, serde::Deserialize)]
struct PosixToken {
    temp: String,
}

/// The temp file a checkpoint of a write to `target` names, if it is one:
/// a temp name in the target's own directory (so a token read back from
/// the metadata store cannot point anywhere else).
fn staged_temp(target: &DriverPath, checkpoint: &Checkpoint) -> Option<String> {
    let token: PosixToken = checkpoint.state()?;
    let (dir, name) = match token.temp.rsplit_once('/') {
        Some((dir, name)) => (Some(dir), name),
        None => (None, token.temp.as_str()),
    };
    let parent = target.parent();
    (dir == parent.as_ref().map(DriverPath::as_str) && temp_writer(name).is_some())
        .then_some(token.temp)
}

struct PosixWriter<F: PosixFs> {
    fs: std::sync::Arc<F>,
    target: DriverPath,
    temp: String,
    file: Option<F::File>,
    mode: PutMode,
    written: u64,
    /// A checkpoint handed the temp file to its caller: dropping the
    /// writer keeps it (only `abort` and `commit` end it).
    checkpointed: bool,
    /// The temp file's name is durable in its directory.
    name_durable: bool,
    /// Every byte written is durable: a checkpoint fsynced the file and
    /// nothing was written since. A commit or checkpoint then skips the
    /// fsync (a PATCH acknowledged the bytes, the PUT that follows with
    /// no body only publishes them).
    synced: bool,
}

impl<F: PosixFs> PosixWriter<F> {
    fn err(&self, op: &'static str, e: io::Error) -> DriverError {
        map_err(&*self.fs, op, &self.temp, e)
    }

    fn parent(&self) -> String {
        self.target
            .parent()
            .map_or(String::new(), |p| p.to_string())
    }
}

#[async_trait]
impl<F: PosixFs> BlobWriter for PosixWriter<F> {
    async fn write(&mut self, chunk: Bytes) -> DriverResult<()> {
        let len = chunk.len() as u64;
        let file = self.file.as_mut().expect("writer used after commit");
        self.synced = false;
        if let Err(e) = self.fs.write(file, chunk).await {
            return Err(self.err("write", e));
        }
        self.written += len;
        Ok(())
    }

    fn written(&self) -> u64 {
        self.written
    }

    async fn commit(mut self: Box<Self>) -> DriverResult<()> {
        let mut file = self.file.take().expect("writer committed twice");
        if !self.synced {
            // Writes still in flight end first, so their failure (a full
            // disk under a large streamed write) is reported as the
            // write's, not mistaken for the fsync's.
            if let Err(e) = self.fs.flush(&mut file).await {
                drop(file);
                self.fs.discard(&self.temp);
                return Err(self.err("write", e));
            }
            let synced = self.fs.fsync(&mut file).await;
            if let Err(e) = synced {
                drop(file);
                self.fs.discard(&self.temp);
                return Err(temp_sync_err(&*self.fs, &self.temp, e));
            }
        }
        drop(file);
        let target = self.target.as_str();
        match self.mode {
            PutMode::Overwrite => {
                if let Err(e) = self.fs.rename(&self.temp, target).await {
                    self.fs.discard(&self.temp);
                    return Err(map_err(&*self.fs, "rename", target, e));
                }
            }
            PutMode::IfAbsent => {
                let linked = self.fs.link(&self.temp, target).await;
                let _ = self.fs.unlink(&self.temp).await;
                if let Err(e) = linked {
                    // The winner's sync of this directory may have made
                    // our temp's name durable; its removal is made durable
                    // too, or a crash would bring it back (the simulator's
                    // leak check saw these from instances racing to create
                    // config.json).
                    let _ = self.fs.fsync_dir(&self.parent()).await;
                    return Err(map_err(&*self.fs, "link", target, e));
                }
            }
        }
        // Point of no return: once the parent is synced the new name survives.
        let parent = self.parent();
        self.fs
            .fsync_dir(&parent)
            .await
            .map_err(|e| sync_err(&*self.fs, &parent, e))
    }

    /// Discards the temp file; durably if a checkpoint made its name
    /// durable (else a crash would bring it back, as a leftover).
    async fn abort(mut self: Box<Self>) -> DriverResult<()> {
        if let Some(file) = self.file.take() {
            drop(file);
            self.fs.discard(&self.temp);
            if self.name_durable {
                // The discard may have removed the emptied directory too.
                sync_nearest_dir(&*self.fs, self.target.parent()).await?;
            }
        }
        Ok(())
    }

    /// Checkpoint protocol (the commit protocol's steps 3 and 5, without
    /// the rename): flush, fsync the temp file, and, the first time, fsync
    /// its directory so the temp's name survives a crash too. The token
    /// names the temp file; a resume cuts it back to `written`.
    async fn checkpoint(&mut self) -> DriverResult<Checkpoint> {
        let file = self.file.as_mut().expect("writer used after commit");
        if !self.synced {
            if let Err(e) = self.fs.flush(file).await {
                return Err(map_err(&*self.fs, "write", &self.temp, e));
            }
            if let Err(e) = self.fs.fsync(file).await {
                return Err(temp_sync_err(&*self.fs, &self.temp, e));
            }
            self.synced = true;
        }
        if !self.name_durable {
            let parent = self.parent();
            self.fs
                .fsync_dir(&parent)
                .await
                .map_err(|e| sync_err(&*self.fs, &parent, e))?;
            self.name_durable = true;
        }
        self.checkpointed = true;
        let token = PosixToken {
            temp: self.temp.clone(),
        };
        Ok(Checkpoint::of(self.written, &token, self.temp.clone()))
    }

    async fn read_staged(&mut self, range: Range<u64>) -> DriverResult<Bytes> {
        let file = self.file.as_mut().expect("writer used after commit");
        if let Err(e) = self.fs.flush(file).await {
            return Err(map_err(&*self.fs, "write", &self.temp, e));
        }
        self.fs
            .read_at(&self.temp, Some(range))
            .await
            .map_err(|e| map_err(&*self.fs, "read", &self.temp, e))
    }
}

impl<F: PosixFs> Drop for PosixWriter<F> {
    fn drop(&mut self) {
        if let Some(file) = self.file.take() {
            drop(file);
            if !self.checkpointed {
                self.fs.discard(&self.temp);
            }
        }
    }
}

impl<F: PosixFs> fmt::Debug for PosixWriter<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PosixWriter")
            .field("target", &self.target)
            .field("written", &self.written)
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::sync::Arc;
    use std::sync::Mutex;

    use super::*;
    use crate::driver::SimDisk;

    /// The simulated disk with two faults it cannot show by itself.
    #[derive(Debug)]
    struct Rigged {
        disk: Arc<SimDisk>,
        /// A concurrent delete removing an (empty) directory at the worst
        /// moment: `(mkdir path that triggers, dir removed just before)`,
        /// once, as GC's removal of emptied parents can do.
        trigger: Mutex<Option<(String, String)>>,
        /// The next file fsync fails with this errno.
        fsync_fails: Mutex<Option<i32>>,
    }

    impl Rigged {
        fn new() -> Rigged {
            Rigged {
                disk: SimDisk::new(),
                trigger: Mutex::new(None),
                fsync_fails: Mutex::new(None),
            }
        }
    }

    #[async_trait]
    impl PosixFs for Rigged {
        type File = <Arc<SimDisk> as PosixFs>::File;
        fn name(&self) -> &'static str {
            "racing"
        }
        async fn create_new(&self, path: &str) -> io::Result<Self::File> {
            self.disk.create_new(path).await
        }
        async fn write(&self, file: &mut Self::File, data: Bytes) -> io::Result<()> {
            self.disk.write(file, data).await
        }
        async fn fsync(&self, file: &mut Self::File) -> io::Result<()> {
            if let Some(errno) = self.fsync_fails.lock().unwrap().take() {
                return Err(io::Error::from_raw_os_error(errno));
            }
            self.disk.fsync(file).await
        }
        async fn read_at(&self, path: &str, range: Option<Range<u64>>) -> io::Result<Bytes> {
            self.disk.read_at(path, range).await
        }
        async fn stat(&self, path: &str) -> io::Result<FsStat> {
            self.disk.stat(path).await
        }
        async fn mkdir(&self, path: &str) -> io::Result<()> {
            let victim = {
                let mut trigger = self.trigger.lock().unwrap();
                match trigger.as_ref() {
                    Some((at, _)) if at == path => trigger.take().map(|(_, v)| v),
                    _ => None,
                }
            };
            if let Some(victim) = victim {
                self.disk.rmdir(&victim).await?;
            }
            self.disk.mkdir(path).await
        }
        async fn rmdir(&self, path: &str) -> io::Result<()> {
            self.disk.rmdir(path).await
        }
        async fn rename(&self, from: &str, to: &str) -> io::Result<()> {
            self.disk.rename(from, to).await
        }
        async fn link(&self, from: &str, to: &str) -> io::Result<()> {
            self.disk.link(from, to).await
        }
        async fn unlink(&self, path: &str) -> io::Result<()> {
            self.disk.unlink(path).await
        }
        async fn fsync_dir(&self, path: &str) -> io::Result<()> {
            self.disk.fsync_dir(path).await
        }
        async fn read_dir(&self, path: &str) -> io::Result<Vec<(String, bool)>> {
            self.disk.read_dir(path).await
        }
        fn discard(&self, temp: &str) {
            self.disk.discard(temp)
        }
    }

    /// mkdir -p that loses its parent to a concurrent rmdir between two of
    /// its mkdirs starts over instead of failing the write.
    #[tokio::test]
    async fn a_parent_removed_during_mkdir_p_is_recreated() {
        let fs = Rigged::new();
        fs.disk.mkdir("repo").await.unwrap();
        *fs.trigger.lock().unwrap() = Some(("repo/blobs".into(), "repo".into()));
        let driver = PosixDriver::new(fs);
        let path = DriverPath::new("repo/blobs/sha256/abc").unwrap();
        driver
            .put(&path, Bytes::from_static(b"x"), PutMode::IfAbsent)
            .await
            .expect("a write whose parent vanished mid mkdir -p");
        assert_eq!(driver.get(&path, None).await.unwrap(), "x");
        assert!(
            driver.filesystem().trigger.lock().unwrap().is_none(),
            "the race was not exercised"
        );

        // The same race on a hard link's and a rename's target directory.
        for op in ["link", "rename"] {
            let dst = DriverPath::new(format!("{op}/blobs/sha256/abc")).unwrap();
            driver.filesystem().disk.mkdir(op).await.unwrap();
            *driver.filesystem().trigger.lock().unwrap() =
                Some((format!("{op}/blobs"), op.to_owned()));
            let result = match op {
                "link" => driver.hard_link(&path, &dst).await,
                _ => driver.rename(&path, &dst).await,
            };
            result.unwrap_or_else(|e| panic!("{op} whose target dir vanished: {e}"));
            assert_eq!(driver.get(&dst, None).await.unwrap(), "x", "{op}");
        }
    }

    /// A failed fsync of a temp file's data poisons the driver (what reached
    /// the disk is unknown), except when it says "no space": the temp file
    /// is discarded, nothing visible changed, and freeing space is the cure.
    #[tokio::test]
    async fn only_a_real_fsync_failure_is_sticky() {
        use crate::driver::Instrumented;
        let driver = Instrumented::new(PosixDriver::new(Rigged::new()));
        let path = DriverPath::new("a/b").unwrap();
        let put = || driver.put(&path, Bytes::from_static(b"x"), PutMode::Overwrite);

        *driver.inner().filesystem().fsync_fails.lock().unwrap() = Some(libc::ENOSPC);
        let e = put().await.unwrap_err();
        assert!(e.is_no_space(), "ENOSPC at fsync reported as {e}");
        assert_eq!(driver.poisoned(), None);
        put().await.expect("a write once space is back");

        *driver.inner().filesystem().fsync_fails.lock().unwrap() = Some(libc::EIO);
        let e = put().await.unwrap_err();
        assert!(
            matches!(e, DriverError::SyncFailed { .. }),
            "EIO at fsync reported as {e}"
        );
        let e = put().await.unwrap_err();
        assert!(matches!(e, DriverError::Poisoned { .. }), "after EIO: {e}");
    }
}
