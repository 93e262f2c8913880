//! `fs`: a real directory, through [`PosixDriver`] and its commit protocol.
//!
//! Large objects are written by a background thread fed through a bounded
//! queue, so the caller (which hashes each chunk as it passes, DESIGN §6)
//! and the disk work at the same time instead of taking turns. The thread
//! writes with direct I/O where the file system allows it ([`DirectSink`]):
//! on a two-core machine the caller's hashing holds one core, and copying
//! into the page cache plus the kernel's writeback would need more than
//! the other. Memory held is at most [`PIPE_DEPTH`] chunks, the one being
//! written and one [`STAGING`] buffer.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;

use async_trait::async_trait;
use bytes::Bytes;

use super::posix::{FsStat, PosixDriver, PosixFs};

/// `fs` driver: [`PosixDriver`] over a real directory.
pub type FsDriver = PosixDriver<RealFs>;

impl FsDriver {
    /// Opens (creating if needed) a store rooted at `root`.
    pub fn open(root: impl Into<PathBuf>) -> io::Result<FsDriver> {
        let root = root.into();
        fs::create_dir_all(&root)?;
        let root = root.canonicalize()?;
        Ok(PosixDriver::new(RealFs { root }))
    }
}

/// Chunks queued to the writer thread at most.
pub const PIPE_DEPTH: usize = 8;

/// Below this many bytes a file is written inline: a thread per small blob
/// would cost more than it saves.
const PIPE_THRESHOLD: u64 = 4 << 20;

/// The real-directory back end of [`FsDriver`].
#[derive(Debug)]
pub struct RealFs {
    root: PathBuf,
}

impl RealFs {
    fn abs(&self, rel: &str) -> PathBuf {
        if rel.is_empty() {
            self.root.clone()
        } else {
            self.root.join(rel)
        }
    }
}

/// An open file, written inline until it grows past [`PIPE_THRESHOLD`].
pub struct RealFile {
    state: FileState,
    written: u64,
}

enum FileState {
    Inline(File),
    Piped {
        queue: mpsc::SyncSender<Bytes>,
        worker: thread::JoinHandle<io::Result<File>>,
    },
    /// Only transiently, while switching states or after a failure.
    Gone,
}

impl std::fmt::Debug for RealFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RealFile")
            .field("written", &self.written)
            .finish()
    }
}

impl RealFile {
    fn write(&mut self, data: Bytes) -> io::Result<()> {
        self.written += data.len() as u64;
        if let FileState::Inline(_) = self.state
            && self.written > PIPE_THRESHOLD
        {
            let FileState::Inline(file) = std::mem::replace(&mut self.state, FileState::Gone)
            else {
                unreachable!()
            };
            let (queue, rx) = mpsc::sync_channel::<Bytes>(PIPE_DEPTH);
            let inline_bytes = self.written - data.len() as u64;
            let worker = thread::Builder::new()
                .name("ocistore-fs-writer".into())
                .spawn(move || {
                    let mut sink = DirectSink::new(file, inline_bytes);
                    for chunk in rx {
                        sink.write(&chunk)?;
                    }
                    sink.finish()
                })?;
            self.state = FileState::Piped { queue, worker };
        }
        match &mut self.state {
            FileState::Inline(file) => file.write_all(&data),
            FileState::Piped { queue, .. } => match queue.send(data) {
                Ok(()) => Ok(()),
                // The worker stopped on an error; `finish` reports it.
                Err(_) => Err(self
                    .finish()
                    .err()
                    .unwrap_or_else(|| io::Error::other("writer thread stopped"))),
            },
            FileState::Gone => Err(io::Error::other("file already failed")),
        }
    }

    /// Waits for queued writes and hands back the file.
    fn finish(&mut self) -> io::Result<&mut File> {
        if let FileState::Piped { .. } = self.state {
            let FileState::Piped { queue, worker } =
                std::mem::replace(&mut self.state, FileState::Gone)
            else {
                unreachable!()
            };
            drop(queue);
            let file = worker
                .join()
                .map_err(|_| io::Error::other("writer thread panicked"))??;
            self.state = FileState::Inline(file);
        }
        match &mut self.state {
            FileState::Inline(file) => Ok(file),
            _ => Err(io::Error::other("file already failed")),
        }
    }
}

/// Bytes gathered before one direct write: large enough that the device
/// streams, small enough to stay inside the memory bound.
pub const STAGING: usize = 4 << 20;

/// The block size direct I/O is aligned to (buffer, length and offset).
const DIRECT_ALIGN: usize = 4096;

/// Writes the bulk of a large object with `O_DIRECT`, from an aligned
/// staging buffer, so its bytes go from that buffer to the device with no
/// page-cache copy and no writeback work for the kernel.
///
/// Direct I/O needs an aligned offset, so bytes before the first aligned
/// offset, and the unaligned tail, are written through the page cache.
/// If the file system refuses direct I/O (`EINVAL`: tmpfs, some FUSE and
/// network file systems), the sink falls back to buffered writes with
/// [`Writeback`] for the rest of the file. Nothing here is a durability
/// promise: the fsync at commit makes the data (and the file size, which
/// direct writes leave in the journal) durable either way.
struct DirectSink {
    file: File,
    /// Offset of the next byte handed to the sink.
    offset: u64,
    /// `STAGING + DIRECT_ALIGN` bytes, used from the first aligned address.
    staging: Vec<u8>,
    /// Where the aligned part of `staging` starts.
    aligned_at: usize,
    staged: usize,
    mode: SinkMode,
}

enum SinkMode {
    /// Not yet at an aligned offset: buffered until then.
    Aligning,
    Direct,
    Buffered(Writeback),
}

impl DirectSink {
    fn new(file: File, offset: u64) -> DirectSink {
        let mut sink = DirectSink {
            file,
            offset,
            staging: Vec::new(),
            aligned_at: 0,
            staged: 0,
            mode: SinkMode::Aligning,
        };
        sink.enter_direct_if_aligned();
        sink
    }

    fn enter_direct_if_aligned(&mut self) {
        if !self.offset.is_multiple_of(DIRECT_ALIGN as u64) {
            return;
        }
        let staging = vec![0; STAGING + DIRECT_ALIGN];
        let aligned_at = staging.as_ptr().align_offset(DIRECT_ALIGN);
        if aligned_at < DIRECT_ALIGN && set_direct(&self.file, true) {
            self.staging = staging;
            self.aligned_at = aligned_at;
            self.mode = SinkMode::Direct;
        } else {
            self.mode = SinkMode::Buffered(Writeback::new(self.offset));
        }
    }

    fn write(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            match &mut self.mode {
                SinkMode::Aligning => {
                    let to_aligned = DIRECT_ALIGN - (self.offset % DIRECT_ALIGN as u64) as usize;
                    let n = to_aligned.min(data.len());
                    self.file.write_all(&data[..n])?;
                    self.offset += n as u64;
                    data = &data[n..];
                    self.enter_direct_if_aligned();
                }
                SinkMode::Buffered(writeback) => {
                    self.file.write_all(data)?;
                    self.offset += data.len() as u64;
                    writeback.advance(&self.file, data.len() as u64);
                    return Ok(());
                }
                SinkMode::Direct => {
                    let staged = self.staged;
                    let n = (STAGING - staged).min(data.len());
                    let at = self.aligned_at + staged;
                    self.staging[at..at + n].copy_from_slice(&data[..n]);
                    self.staged += n;
                    self.offset += n as u64;
                    data = &data[n..];
                    if self.staged == STAGING {
                        self.flush_staged()?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Writes the staged bytes; whole blocks directly, a partial block
    /// (only ever at the end of the file) through the page cache.
    fn flush_staged(&mut self) -> io::Result<()> {
        let staged = std::mem::take(&mut self.staged);
        let whole = staged - staged % DIRECT_ALIGN;
        let mut done = 0;
        while done < staged {
            if done == whole && matches!(self.mode, SinkMode::Direct) {
                self.leave_direct()?;
            }
            let end = if matches!(self.mode, SinkMode::Direct) {
                whole
            } else {
                staged
            };
            let buf = &self.staging[self.aligned_at + done..self.aligned_at + end];
            match self.file.write(buf) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // Refused after all (or a short write left us unaligned):
                // the rest goes through the page cache.
                Err(e)
                    if e.raw_os_error() == Some(libc::EINVAL)
                        && matches!(self.mode, SinkMode::Direct) =>
                {
                    self.leave_direct()?;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn leave_direct(&mut self) -> io::Result<()> {
        if !set_direct(&self.file, false) {
            return Err(io::Error::other("could not leave direct I/O"));
        }
        self.mode = SinkMode::Buffered(Writeback::new(self.offset));
        Ok(())
    }

    /// Writes what is staged and hands the file back for the commit's fsync.
    fn finish(mut self) -> io::Result<File> {
        if matches!(self.mode, SinkMode::Direct) {
            self.flush_staged()?;
            if matches!(self.mode, SinkMode::Direct) {
                self.leave_direct()?;
            }
        }
        Ok(self.file)
    }
}

/// Turns `O_DIRECT` on or off for an open file; false if refused.
#[cfg(target_os = "linux")]
fn set_direct(file: &File, on: bool) -> bool {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own, reading and setting flags only.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 {
            return false;
        }
        let flags = if on {
            flags | libc::O_DIRECT
        } else {
            flags & !libc::O_DIRECT
        };
        libc::fcntl(fd, libc::F_SETFL, flags) == 0
    }
}

#[cfg(not(target_os = "linux"))]
fn set_direct(_file: &File, _on: bool) -> bool {
    false
}

/// Keeps the file's dirty pages bounded while it streams: each completed
/// stride is handed to the kernel's writeback at once, and the stride before
/// it is waited for. The disk then works while later chunks are still being
/// hashed, and the closing fsync only has the last stride left to write,
/// instead of the whole object. Nothing here promises durability; the fsync
/// at commit does.
struct Writeback {
    /// Start of the stride handed to writeback last (not yet waited for).
    pending: Option<(u64, u64)>,
    /// Bytes handed to writeback so far.
    started: u64,
    /// Bytes written so far.
    written: u64,
}

/// How much dirty data accumulates before writeback is kicked.
const WRITEBACK_STRIDE: u64 = 8 << 20;

impl Writeback {
    fn new(written: u64) -> Writeback {
        Writeback {
            pending: None,
            started: 0,
            written,
        }
    }

    fn advance(&mut self, file: &File, n: u64) {
        self.written += n;
        if self.written - self.started >= WRITEBACK_STRIDE {
            let stride = (self.started, self.written - self.started);
            kick_writeback(file, stride, false);
            if let Some(previous) = self.pending.replace(stride) {
                kick_writeback(file, previous, true);
            }
            self.started = self.written;
        }
    }
}

#[cfg(target_os = "linux")]
fn kick_writeback(file: &File, (offset, len): (u64, u64), wait: bool) {
    use std::os::fd::AsRawFd;
    let flags = if wait {
        libc::SYNC_FILE_RANGE_WAIT_BEFORE
            | libc::SYNC_FILE_RANGE_WRITE
            | libc::SYNC_FILE_RANGE_WAIT_AFTER
    } else {
        libc::SYNC_FILE_RANGE_WRITE
    };
    // SAFETY: a plain syscall on a descriptor we own; it reads no memory of
    // ours. Failure only means the kernel writes back later, at the fsync.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            flags,
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn kick_writeback(_file: &File, _stride: (u64, u64), _wait: bool) {}

#[async_trait]
impl PosixFs for RealFs {
    type File = RealFile;

    fn name(&self) -> &'static str {
        "fs"
    }

    async fn create_new(&self, path: &str) -> io::Result<RealFile> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(self.abs(path))?;
        Ok(RealFile {
            state: FileState::Inline(file),
            written: 0,
        })
    }

    async fn open_truncated(&self, path: &str, len: u64) -> io::Result<RealFile> {
        let mut file = OpenOptions::new().write(true).open(self.abs(path))?;
        if file.metadata()?.len() < len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "shorter than its checkpoint",
            ));
        }
        file.set_len(len)?;
        file.seek(SeekFrom::Start(len))?;
        Ok(RealFile {
            state: FileState::Inline(file),
            written: len,
        })
    }

    async fn write(&self, file: &mut RealFile, data: Bytes) -> io::Result<()> {
        file.write(data)
    }

    async fn flush(&self, file: &mut RealFile) -> io::Result<()> {
        file.finish().map(|_| ())
    }

    async fn fsync(&self, file: &mut RealFile) -> io::Result<()> {
        file.finish()?.sync_all()
    }

    async fn read_at(&self, path: &str, range: Option<Range<u64>>) -> io::Result<Bytes> {
        let mut file = File::open(self.abs(path))?;
        let range = match range {
            Some(range) => range,
            None => {
                let md = file.metadata()?;
                if md.is_dir() {
                    return Err(io::ErrorKind::IsADirectory.into());
                }
                0..md.len()
            }
        };
        file.seek(SeekFrom::Start(range.start))?;
        let len = usize::try_from(range.end - range.start).map_err(io::Error::other)?;
        let mut buf = vec![0; len];
        file.read_exact(&mut buf)?;
        Ok(Bytes::from(buf))
    }

    async fn stat(&self, path: &str) -> io::Result<FsStat> {
        let md = fs::symlink_metadata(self.abs(path))?;
        Ok(FsStat {
            is_dir: md.is_dir(),
            size: md.len(),
            modified: md.modified()?,
            links: md.nlink(),
            file_id: (md.dev(), md.ino()),
        })
    }

    async fn mkdir(&self, path: &str) -> io::Result<()> {
        fs::create_dir(self.abs(path))
    }

    async fn rmdir(&self, path: &str) -> io::Result<()> {
        fs::remove_dir(self.abs(path))
    }

    async fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        fs::rename(self.abs(from), self.abs(to))
    }

    async fn link(&self, from: &str, to: &str) -> io::Result<()> {
        fs::hard_link(self.abs(from), self.abs(to))
    }

    async fn unlink(&self, path: &str) -> io::Result<()> {
        let abs = self.abs(path);
        if fs::symlink_metadata(&abs)?.is_dir() {
            // Objects only: a directory is not something `delete` removes.
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        fs::remove_file(abs)
    }

    async fn fsync_dir(&self, path: &str) -> io::Result<()> {
        File::open(self.abs(path))?.sync_all()
    }

    fn discard(&self, temp: &str) {
        if fs::remove_file(self.abs(temp)).is_err() {
            return;
        }
        let mut dir = Path::new(temp).parent();
        while let Some(d) = dir.filter(|d| !d.as_os_str().is_empty()) {
            if fs::remove_dir(self.root.join(d)).is_err() {
                break;
            }
            dir = d.parent();
        }
    }

    async fn read_dir(&self, path: &str) -> io::Result<Vec<(String, bool)>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(self.abs(path))? {
            let entry = entry?;
            let Ok(name) = entry.file_name().into_string() else {
                continue; // not a name this store could have written
            };
            out.push((name, entry.file_type()?.is_dir()));
        }
        Ok(out)
    }
}

impl RealFs {
    pub fn root(&self) -> &Path {
        &self.root
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn bytes(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// Streams `total` bytes in `chunk`-sized pieces through a sink that
    /// starts at `start` (bytes already written inline), optionally forced
    /// off direct I/O after `fallback_after` chunks, and reads the file back.
    fn stream(start: usize, chunk: usize, total: usize, fallback_after: Option<usize>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("obj");
        let data = bytes(start + total, chunk as u8);
        let mut file = File::create(&path).unwrap();
        file.write_all(&data[..start]).unwrap();
        let mut sink = DirectSink::new(file, start as u64);
        for (i, piece) in data[start..].chunks(chunk).enumerate() {
            if fallback_after == Some(i) && matches!(sink.mode, SinkMode::Direct) {
                // What an EINVAL from the file system does mid-stream.
                sink.flush_staged().unwrap();
                sink.leave_direct().unwrap();
            }
            sink.write(piece).unwrap();
        }
        sink.finish().unwrap().sync_all().unwrap();
        let got = fs::read(&path).unwrap();
        assert_eq!(got.len(), data.len(), "start {start}, chunk {chunk}");
        assert!(got == data, "start {start}, chunk {chunk}: bytes differ");
    }

    #[test]
    fn direct_sink_keeps_every_byte_at_any_alignment() {
        for (start, chunk, total) in [
            (4 << 20, 1 << 20, 9 << 20),      // aligned start, aligned chunks
            (3_999_996, 999_999, 11_000_001), // unaligned start and end
            (0, 4096, STAGING + 4096),        // exactly one staging buffer and a block
            (17, 65_536, 100),                // ends before the first aligned offset
            (8192, 7, 30_000),                // tiny chunks
        ] {
            stream(start, chunk, total, None);
        }
    }

    #[test]
    fn direct_sink_falls_back_to_buffered_writes_midway() {
        stream(4 << 20, 1 << 20, 9 << 20, Some(5));
        stream(3_999_996, 999_999, 11_000_001, Some(3));
    }
}
