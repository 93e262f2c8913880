//! "Never serve bytes whose digest is not the one asked for" (DESIGN §6).
//!
//! A blob counts as present only if its bytes hash to its digest. Hashing on
//! every existence check would read every layer on every HEAD, so a verified
//! blob is remembered:
//!
//! - on local drivers, by path, size and modification time, re-checked with
//!   a (cheap) stat each time: a stub or a truncation changes them;
//! - on object stores, where a stat is a billed round trip, what this
//!   process wrote or verified, and has not removed since, is trusted
//!   without one: the store is the only writer of its namespace, and every
//!   removal path forgets the entry. (Several instances over one bucket will
//!   need a shared invalidation; see DESIGN §5.)
//!
//! Silent bit rot changes neither size nor mtime, so a whole read always
//! hashes, and a mismatch distrusts every name of that digest: the next
//! existence check hashes again and reports the blob missing.

use std::collections::HashMap;
use std::time::SystemTime;

use crate::digest::{Digest, DigestHasher};
use crate::driver::{COPY_CHUNK, Driver, DriverPath};
use crate::error::StoreResult;
use crate::sync::unmodeled::Mutex;

/// Entries kept before the cache starts over (bounded memory).
const CACHE_LIMIT: usize = 100_000;

#[derive(Debug)]
pub(crate) struct Verifier {
    verified: Mutex<HashMap<DriverPath, Stamp>>,
    /// Trust remembered entries without a stat (object stores).
    remote: bool,
}

/// What a verified object looked like, and which digest it verified as.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    size: u64,
    /// `None` for entries trusted without a stat (remote).
    modified: Option<SystemTime>,
    digest: Digest,
}

impl Verifier {
    pub(crate) fn new(driver: &dyn Driver) -> Verifier {
        Verifier {
            verified: Mutex::default(),
            remote: driver.capabilities().durable_on_return,
        }
    }

    /// The size of the object at `path` if it exists and hashes to `digest`.
    pub(crate) async fn check(
        &self,
        d: &dyn Driver,
        path: &DriverPath,
        digest: &Digest,
    ) -> StoreResult<Option<u64>> {
        if self.remote
            && let Some(stamp) = self.verified.lock().unwrap().get(path)
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
            digest: digest.clone(),
        };
        if self.verified.lock().unwrap().get(path) == Some(&stamp) {
            return Ok(Some(meta.size));
        }
        let mut hasher = DigestHasher::new(digest.algorithm());
        let mut at = 0;
        while at < meta.size {
            let end = (at + COPY_CHUNK).min(meta.size);
            match d.get(path, Some(at..end)).await {
                Ok(chunk) => hasher.update(&chunk),
                // Changed under us (shrunk or gone): not a valid blob now.
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
        if &hasher.finish() != digest {
            self.distrust(digest);
            return Ok(None);
        }
        self.remember(path, stamp);
        Ok(Some(meta.size))
    }

    /// Records `size` bytes the caller has just written and hashed itself.
    pub(crate) async fn trust_written(
        &self,
        d: &dyn Driver,
        path: &DriverPath,
        digest: &Digest,
        size: u64,
    ) -> StoreResult<()> {
        let modified = if self.remote {
            None
        } else {
            Some(d.stat(path).await?.modified)
        };
        self.remember(
            path,
            Stamp {
                size,
                modified,
                digest: digest.clone(),
            },
        );
        Ok(())
    }

    /// Bytes of `digest` failed verification somewhere: every other name
    /// for them (a hard link, the blobstore copy) may be the same bad inode,
    /// so none of them is vouched for any more.
    pub(crate) fn distrust(&self, digest: &Digest) {
        self.verified
            .lock()
            .unwrap()
            .retain(|_, stamp| &stamp.digest != digest);
    }

    fn remember(&self, path: &DriverPath, stamp: Stamp) {
        let mut verified = self.verified.lock().unwrap();
        if verified.len() >= CACHE_LIMIT {
            verified.clear();
        }
        verified.insert(path.clone(), stamp);
    }

    pub(crate) fn forget(&self, path: &DriverPath) {
        self.verified.lock().unwrap().remove(path);
    }
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
            let data = match d.get(path, None).await {
                Ok(data) => data,
                Err(e) if e.is_not_found() => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            if &Digest::of(digest.algorithm(), &data) != digest {
                verifier.distrust(digest);
                return Ok(None);
            }
            Ok(Some(data))
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
