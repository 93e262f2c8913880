//! Compare-and-swap of whole objects (DESIGN §15): what several instances
//! need for every object more than one of them may rewrite (a repository's
//! `index.json`). S3 offers it as `If-Match: <ETag>` (and `If-None-Match:
//! *` for "only if absent"); the lab's backends offer the same contract:
//!
//! - memory: the check and the write under the object map's lock;
//! - a directory: the check and the write under an exclusive `flock` on a
//!   lock file kept for the object's directory (a repository) in
//!   `.ocistore-cas/` (a driver-reserved name, so never listed as an
//!   object), which every process writing through this call takes
//!   (a lock held by a process that dies is released by the kernel).
//!
//! A version is the object's content hash, as a single-part S3 ETag is:
//! an object rewritten with the same bytes keeps its version, and a swap
//! expecting those bytes is right to succeed (the whole object is the state).

use std::fmt;

use bytes::Bytes;

use crate::digest::Digest;

/// Where a directory keeps one lock file per directory of objects ever
/// swapped (as many as repositories, plus one): a name starting with
/// `RESERVED_PREFIX`, which listings skip, so the store never sees its own locks as objects.
#[cfg(target_os = "linux")]
pub(crate) const LOCK_DIR: &str = ".ocistore-cas";

/// An object's version (its ETag): what a compare-and-swap expects.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ObjectVersion(String);

impl ObjectVersion {
    /// The version of an object holding `data`.
    pub fn of(data: &Bytes) -> ObjectVersion {
        ObjectVersion(Digest::sha256(data).hex().to_string())
    }

    /// A version as a backend reported it (an S3 ETag).
    pub fn from_etag(etag: impl Into<String>) -> ObjectVersion {
        ObjectVersion(etag.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ObjectVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectVersion({})", self.0)
    }
}

#[cfg(target_os = "linux")]
pub(crate) use file_lock::FileLock;

#[cfg(target_os = "linux")]
mod file_lock {
    use std::fs::{File, OpenOptions};
    use std::os::fd::AsRawFd;
    use std::path::Path;
    use std::time::Duration;

    /// An exclusive `flock` on a file, released on drop (or by the kernel
    /// when the process dies). Between processes and between two opens in
    /// one process alike: `flock` locks belong to the open file.
    #[derive(Debug)]
    pub(crate) struct FileLock {
        _file: File,
    }

    impl FileLock {
        /// Waits for the lock without blocking a runtime thread: polls,
        /// sleeping a little between tries (holders keep it for one write).
        pub(crate) async fn acquire(path: &Path) -> std::io::Result<FileLock> {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(path)?;
            let mut wait = Duration::from_micros(100);
            loop {
                // SAFETY: flock on a file descriptor we own and keep open.
                let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
                if r == 0 {
                    return Ok(FileLock { _file: file });
                }
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                    return Err(e);
                }
                crate::sync::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_millis(5));
            }
        }
    }
}
