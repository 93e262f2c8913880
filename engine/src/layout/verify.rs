//! "Never serve bytes whose digest is not the one asked for" (DESIGN §6).
//!
//! A blob counts as present only if its bytes hash to its digest. Hashing on
//! every existence check would read every layer on every HEAD, so a verified
//! blob is remembered:
//!
//! - on local drivers, by path, size and modification time, re-checked with
//!   a (cheap) stat each time: a stub or a truncation changes them. The
//!   stat also names the file (device, inode), and a stamp found under the
//!   file holds for each of its names: the blobstore copy and every
//!   repository's hard link are one file, hashed once (after a restart, a
//!   digest held by ten repositories was hashed eleven times);
//! - on object stores, where a stat is a billed round trip, what this
//!   process wrote or verified, and has not removed since, is trusted
//!   without one: the store is the only writer of its namespace, and every
//!   removal path forgets the entry. With several instances over one
//!   store that is not true (another instance sweeps), so there every
//!   check stats ([`Verifier::shared`]).
//!
//! Silent bit rot changes neither size nor mtime, so a whole read always
//! hashes, and a mismatch distrusts every name of that digest: the next
//! existence check hashes again and reports the blob missing.
//!
//! A mismatch is read again before it counts: bit rot reads the same wrong
//! bytes every time (the blob is missing), a bad read path (a flipped bit
//! on the way back) does not. Treating one corrupted read as absence made
//! GC drop the manifest it could not read and sweep its blobs; reads that
//! keep disagreeing are an error instead, and nothing is concluded.

use std::collections::HashMap;
use std::time::SystemTime;

use crate::digest::{Digest, DigestHasher};
use crate::driver::{COPY_CHUNK, Driver, DriverPath};
use crate::error::{StoreError, StoreResult};
use crate::sync::unmodeled::Mutex;

/// Entries kept before the cache starts over (bounded memory).
const CACHE_LIMIT: usize = 100_000;

/// Reads of bytes that do not hash to their digest before they count as
/// unreadable (when no two of them agree).
const READ_ATTEMPTS: usize = 4;

/// What one more read of bytes that must hash to `digest` tells.
enum Attempt {
    Verified,
    /// The same wrong bytes as the read before: stored so (bit rot).
    Rotten,
    /// Not what the read before returned: read again.
    Unstable,
}

fn judge(digest: &Digest, got: Digest, previous: &mut Option<Digest>) -> Attempt {
    if &got == digest {
        Attempt::Verified
    } else if previous.as_ref() == Some(&got) {
        Attempt::Rotten
    } else {
        *previous = Some(got);
        Attempt::Unstable
    }
}

fn unreliable(path: &DriverPath, digest: &Digest) -> StoreError {
    StoreError::Corrupt(format!(
        "{path}: {READ_ATTEMPTS} reads of {digest} hash differently, none to it (unreliable reads)"
    ))
}

#[derive(Debug)]
pub(crate) struct Verifier {
    verified: Mutex<Cache>,
    /// Object stores: stamps carry no modification time or file id.
    remote: bool,
    /// Trust remembered entries without a stat: object stores written by
    /// this process alone. With several instances another one may have
    /// swept the object since (zot's "unknown blob" after scale-out), so
    /// every check stats.
    trust_memory: bool,
}

/// What a verified object looked like, and which digest it verified as.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    size: u64,
    /// `None` for entries trusted without a stat (remote).
    modified: Option<SystemTime>,
    /// `(device, inode)` on local drivers.
    file: Option<(u64, u64)>,
    digest: Digest,
}

#[derive(Debug, Default)]
struct Cache {
    by_path: HashMap<DriverPath, Stamp>,
    /// Local drivers: the same stamps by file, for a file's other names.
    by_file: HashMap<(u64, u64), Stamp>,
}

impl Cache {
    fn vouches(&self, path: &DriverPath, stamp: &Stamp) -> bool {
        self.by_path.get(path) == Some(stamp)
            || stamp
                .file
                .is_some_and(|f| self.by_file.get(&f) == Some(stamp))
    }
}

impl Verifier {
    pub(crate) fn new(driver: &dyn Driver) -> Verifier {
        Verifier {
            verified: Mutex::default(),
            remote: driver.capabilities().durable_on_return,
            trust_memory: driver.capabilities().durable_on_return,
        }
    }

    /// A verifier for one of several instances: never trusts memory alone.
    pub(crate) fn shared(self) -> Verifier {
        Verifier {
            trust_memory: false,
            ..self
        }
    }

    /// The size of the object at `path` if it exists and hashes to `digest`.
    pub(crate) async fn check(
        &self,
        d: &dyn Driver,
        path: &DriverPath,
        digest: &Digest,
    ) -> StoreResult<Option<u64>> {
        if self.trust_memory
            && let Some(stamp) = self.verified.lock().unwrap().by_path.get(path)
            && &stamp.digest == digest
        {
            return Ok(Some(stamp.size));
        }
        let meta = match d.stat(path).await {
            Ok(meta) => meta,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let stamp = Stamp {
            size: meta.size,
            modified: (!self.remote).then_some(meta.modified),
            file: meta.file_id.filter(|_| !self.remote),
            digest: digest.clone(),
        };
        if self.verified.lock().unwrap().vouches(path, &stamp) {
            return Ok(Some(meta.size));
        }
        let mut previous = None;
        for _ in 0..READ_ATTEMPTS {
            let Some(got) = hash_file(d, path, meta.size, digest).await? else {
                return Ok(None);
            };
            match judge(digest, got, &mut previous) {
                Attempt::Verified => {
                    self.remember(path, stamp);
                    return Ok(Some(meta.size));
                }
                Attempt::Rotten => {
                    self.distrust(digest);
                    return Ok(None);
                }
                Attempt::Unstable => {}
            }
        }
        Err(unreliable(path, digest))
    }

    /// Records `size` bytes the caller has just written and hashed itself.
    pub(crate) async fn trust_written(
        &self,
        d: &dyn Driver,
        path: &DriverPath,
        digest: &Digest,
        size: u64,
    ) -> StoreResult<()> {
        let (modified, file) = if self.remote {
            (None, None)
        } else {
            let meta = d.stat(path).await?;
            (Some(meta.modified), meta.file_id)
        };
        self.remember(
            path,
            Stamp {
                size,
                modified,
                file,
                digest: digest.clone(),
            },
        );
        Ok(())
    }

    /// Bytes of `digest` failed verification somewhere: every other name
    /// for them (a hard link, the blobstore copy) may be the same bad inode,
    /// so none of them is vouched for any more.
    pub(crate) fn distrust(&self, digest: &Digest) {
        let mut cache = self.verified.lock().unwrap();
        cache.by_path.retain(|_, stamp| &stamp.digest != digest);
        cache.by_file.retain(|_, stamp| &stamp.digest != digest);
    }

    fn remember(&self, path: &DriverPath, stamp: Stamp) {
        let mut cache = self.verified.lock().unwrap();
        if cache.by_path.len() >= CACHE_LIMIT {
            *cache = Cache::default();
        }
        if let Some(file) = stamp.file {
            cache.by_file.insert(file, stamp.clone());
        }
        cache.by_path.insert(path.clone(), stamp);
    }

    pub(crate) fn forget(&self, path: &DriverPath) {
        let mut cache = self.verified.lock().unwrap();
        if let Some(file) = cache.by_path.remove(path).and_then(|s| s.file) {
            cache.by_file.remove(&file);
        }
    }
}

/// The digest of the `size` bytes at `path`, read in chunks; `None` if
/// the file changed under us (shrunk or gone): not a valid blob now.
async fn hash_file(
    d: &dyn Driver,
    path: &DriverPath,
    size: u64,
    digest: &Digest,
) -> StoreResult<Option<Digest>> {
    let mut hasher = DigestHasher::new(digest.algorithm());
    let mut at = 0;
    while at < size {
        let end = (at + COPY_CHUNK).min(size);
        match d.get(path, Some(at..end)).await {
            Ok(chunk) => hasher.update(&chunk),
            Err(e)
                if e.is_not_found()
                    || matches!(e, crate::driver::DriverError::InvalidRange { .. }) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        }
        at = end;
    }
    Ok(Some(hasher.finish()))
}

/// Reads `digest` at `path`, never returning bytes that do not hash to it:
/// a whole read is hashed on the way; a ranged read first checks the whole
/// blob (cached by [`Verifier`]). `None` when absent or invalid.
pub(crate) async fn read_verified(
    d: &dyn Driver,
    verifier: &Verifier,
    path: &DriverPath,
    digest: &Digest,
    range: Option<std::ops::Range<u64>>,
) -> StoreResult<Option<bytes::Bytes>> {
    match range {
        None => {
            let mut previous = None;
            for _ in 0..READ_ATTEMPTS {
                let data = match d.get(path, None).await {
                    Ok(data) => data,
                    Err(e) if e.is_not_found() => return Ok(None),
                    Err(e) => return Err(e.into()),
                };
                match judge(digest, Digest::of(digest.algorithm(), &data), &mut previous) {
                    Attempt::Verified => return Ok(Some(data)),
                    Attempt::Rotten => {
                        verifier.distrust(digest);
                        return Ok(None);
                    }
                    Attempt::Unstable => {}
                }
            }
            Err(unreliable(path, digest))
        }
        Some(range) => {
            let Some(size) = verifier.check(d, path, digest).await? else {
                return Ok(None);
            };
            if range.start > range.end || range.end > size {
                return Err(crate::error::StoreError::RangeInvalid {
                    start: range.start,
                    end: range.end,
                    size,
                });
            }
            Ok(Some(d.get(path, Some(range)).await?))
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::driver::{CallKind, Instrumented, PutMode, SimDisk, SimDriver};

    /// A stamp found under a file holds for its other names (one hash for
    /// the blobstore copy and every repository's link), and not after the
    /// bytes of that digest failed somewhere.
    #[tokio::test]
    async fn one_hash_per_file_not_per_name() {
        let driver = Instrumented::new(SimDriver::on(SimDisk::new()));
        let verifier = Verifier::new(&driver);
        let bytes = Bytes::from_static(b"layer");
        let digest = Digest::sha256(&bytes);
        let (copy, link, other) = (
            DriverPath::new("_blobstore/x").unwrap(),
            DriverPath::new("r/x").unwrap(),
            DriverPath::new("s/x").unwrap(),
        );
        driver
            .put(&copy, bytes.clone(), PutMode::IfAbsent)
            .await
            .unwrap();
        driver.hard_link(&copy, &link).await.unwrap();
        // Same bytes, another file.
        driver.put(&other, bytes, PutMode::IfAbsent).await.unwrap();
        let reads = || driver.counts().get(CallKind::Get);

        assert_eq!(
            verifier.check(&driver, &copy, &digest).await.unwrap(),
            Some(5)
        );
        let after_first = reads();
        assert!(after_first > 0, "the first check hashes");
        assert_eq!(
            verifier.check(&driver, &link, &digest).await.unwrap(),
            Some(5)
        );
        assert_eq!(
            reads(),
            after_first,
            "a hard link of a verified file is not hashed again"
        );
        assert_eq!(
            verifier.check(&driver, &other, &digest).await.unwrap(),
            Some(5)
        );
        assert!(
            reads() > after_first,
            "another file with the same bytes is hashed"
        );

        verifier.distrust(&digest);
        let before = reads();
        assert_eq!(
            verifier.check(&driver, &link, &digest).await.unwrap(),
            Some(5)
        );
        assert!(reads() > before, "distrusted: hashed again");
    }
}
