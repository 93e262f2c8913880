//! `fs`: a real directory, through [`PosixDriver`] and its commit protocol.
//!
//! Large objects are written by a background thread fed through a bounded
//! queue, so the caller (which hashes each chunk as it passes, DESIGN §6)
//! and the disk work at the same time instead of taking turns. Memory held is
//! at most [`PIPE_DEPTH`] chunks plus the one being written.

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
                    let mut file = file;
                    let mut writeback = Writeback::new(inline_bytes);
                    for chunk in rx {
                        file.write_all(&chunk)?;
                        writeback.advance(&file, chunk.len() as u64);
                    }
                    Ok(file)
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

    async fn write(&self, file: &mut RealFile, data: Bytes) -> io::Result<()> {
        file.write(data)
    }

    async fn fsync(&self, file: &mut RealFile) -> io::Result<()> {
        file.finish()?.sync_all()
    }

    async fn read_at(&self, path: &str, range: Range<u64>) -> io::Result<Bytes> {
        let mut file = File::open(self.abs(path))?;
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
