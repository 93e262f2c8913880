//! Deliberately broken stores, to prove the checker notices: a scenario
//! with `[faults] broken = "..."` runs the store over a driver that breaks
//! one promise, and the run must fail (sim/tests/scenarios.rs asserts it
//! for each). A check that passes against these is a check that cannot fail.

use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use engine::driver::{Driver, DriverError, DriverPath, DriverResult, Intercept, PutMode};
use serde::{Deserialize, Serialize};

/// Which promise the store breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Broken {
    /// Every rewrite of a repository's index.json fails: no manifest put
    /// (or tag change) is ever taken.
    RefuseManifests,
    /// Rewrites of index.json answer success and change nothing: tags are
    /// acknowledged and never move.
    StaleTags,
    /// Blobs whose digest starts with `0` read as missing: acknowledged
    /// bytes dropped.
    DropBlobs,
    /// Blobs whose digest starts with `0` read with their first byte flipped.
    WrongBytes,
    /// fsync persists nothing (the sim disk lies): power cuts lose
    /// acknowledged writes.
    NotDurable,
    /// Blob reads skip the store's digest check (served straight from the
    /// disk): with `[faults] read_flips_one_in`, a read that came back
    /// corrupted reaches the client (invariant 6).
    UnverifiedReads,
}

impl Broken {
    /// Set on the sim disk rather than in the driver (durability lives there).
    pub fn lies_about_fsync(self) -> bool {
        self == Broken::NotDurable
    }

    /// Set in the clients' read path rather than in the driver: the store
    /// verifies above the driver, so only a read around it skips that.
    pub fn skips_read_verification(self) -> bool {
        self == Broken::UnverifiedReads
    }
}

/// A driver that breaks [`Broken`]'s promise and passes everything else on
/// (a [`Driver`] as `Intercepted<BrokenDriver>`).
#[derive(Debug)]
pub struct BrokenDriver {
    inner: Arc<dyn Driver>,
    broken: Broken,
}

impl BrokenDriver {
    pub fn new(inner: Arc<dyn Driver>, broken: Broken) -> BrokenDriver {
        BrokenDriver { inner, broken }
    }

    fn is_index(path: &DriverPath) -> bool {
        path.as_str().ends_with("/index.json")
    }

    /// A blob's file (in a repository or `_blobstore`) whose digest starts with `0`.
    fn is_victim(path: &DriverPath) -> bool {
        path.as_str().contains("/blobs/sha256/0")
    }
}

#[async_trait]
impl Intercept for BrokenDriver {
    fn inner(&self) -> &dyn Driver {
        &*self.inner
    }

    async fn get(&self, path: &DriverPath, range: Option<Range<u64>>) -> DriverResult<Bytes> {
        if !BrokenDriver::is_victim(path) {
            return self.inner.get(path, range).await;
        }
        match self.broken {
            Broken::DropBlobs => Err(DriverError::NotFound { path: path.clone() }),
            Broken::WrongBytes => {
                let bytes = self.inner.get(path, range).await?;
                let mut flipped = bytes.to_vec();
                if let Some(b) = flipped.first_mut() {
                    *b ^= 0xff;
                }
                Ok(Bytes::from(flipped))
            }
            _ => self.inner.get(path, range).await,
        }
    }

    async fn put(&self, path: &DriverPath, data: Bytes, mode: PutMode) -> DriverResult<()> {
        if BrokenDriver::is_index(path) && mode == PutMode::Overwrite {
            match self.broken {
                Broken::RefuseManifests => {
                    return Err(DriverError::Io {
                        driver: "broken",
                        op: "put",
                        path: path.to_string(),
                        source: std::io::Error::other("injected: index.json is never rewritten"),
                    });
                }
                Broken::StaleTags => return Ok(()),
                _ => {}
            }
        }
        self.inner.put(path, data, mode).await
    }
}
