//! GC's clock: when it first saw an item as garbage, and the client
//! touches that make it forget (DESIGN §7, invariant 10).
//!
//! The delay contract says an item's age runs from the last time a client
//! touched it. The backend cannot tell that: a hard-linked inode's mtime is
//! the first push anywhere, and a re-push of a blob the store holds writes
//! nothing. So GC keeps its own clock in [`Table::GC`]: a mark holding the
//! time it first saw the item as garbage. An item goes only once its mark
//! is older than the delay.
//!
//! What keeps the contract:
//! - A client touch (a blob pushed or mounted, an upload finished, a
//!   manifest put) deletes the item's mark before it is acknowledged, under
//!   a lock plan that excludes the plan GC removes the item under
//!   (`blob_insert` or `manifest_put` against `repo_change` and
//!   `blob_remove`, see the table in [`crate::lock`]).
//! - GC reads the mark again under the removal's own plan, so a touch that
//!   landed after the analysis is seen.
//! - A mark GC writes later is later than the touch, so an age counted from
//!   the mark never exceeds the age counted from the touch.
//!
//! A touch costs one metadata read per item, and a commit only when GC had
//! marked the item. A delay of zero keeps no marks at all.

use std::time::{Duration, SystemTime};

use crate::digest::Digest;
use crate::error::StoreResult;
use crate::meta::{Batch, Table};
use crate::oci::names::RepoName;
use crate::store::Store;

/// What a mark is about.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Marked<'a> {
    /// A manifest row of a repository's index.json.
    Manifest(&'a RepoName, &'a Digest),
    /// A repository's hold on a blob (manifests are blobs too).
    Blob(&'a RepoName, &'a Digest),
    /// A `_blobstore` copy no repository holds.
    Shared(&'a Digest),
}

/// The scope every mark of `_blobstore` copies lives under.
pub(crate) const SHARED_SCOPE: &str = "_blobstore";

impl Marked<'_> {
    /// `mark\0<scope>\0<item>`: one prefix per repository, so a pass can
    /// forget the marks of one scope by a prefix scan.
    pub(crate) fn key(self) -> Vec<u8> {
        let (scope, item) = match self {
            Marked::Manifest(repo, d) => (repo.as_str(), format!("m:{d}")),
            Marked::Blob(repo, d) => (repo.as_str(), format!("b:{d}")),
            Marked::Shared(d) => (SHARED_SCOPE, d.to_string()),
        };
        let mut key = scope_prefix(scope);
        key.extend_from_slice(item.as_bytes());
        key
    }
}

/// The prefix of every mark of `scope` (a repository, or `_blobstore`).
pub(crate) fn scope_prefix(scope: &str) -> Vec<u8> {
    format!("mark\0{scope}\0").into_bytes()
}

/// Milliseconds since the Unix epoch: how marks, leases and upload
/// session records store a time (0 before the epoch, saturating after).
pub(crate) fn millis(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Whether a mark written at `since` (ms) is at least `delay` old at `now` (ms).
pub(crate) fn old_enough(since: u64, now: u64, delay: Duration) -> bool {
    now.saturating_sub(since) >= delay.as_millis() as u64
}

pub(crate) fn parse_mark(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value).ok()?.parse().ok()
}

impl Store {
    /// Records that a client touched `items` just now: GC forgets any mark
    /// it left on them, so their age starts again. The caller holds the lock
    /// plan that excludes their removal, and acknowledges only after this.
    pub(crate) async fn touch(&self, items: &[Marked<'_>]) -> StoreResult<()> {
        let mut batch = Batch::new();
        for item in items {
            let key = item.key();
            if self.meta().get(Table::GC, &key).await?.is_some() {
                batch = batch.delete(Table::GC, key);
            }
        }
        if !batch.is_empty() {
            self.meta().commit(batch).await?;
        }
        Ok(())
    }

    /// Under the removal's lock plan: whether `item` is still marked and
    /// the mark is at least `delay` old (a touch since the analysis
    /// deleted it). Always true for a delay of zero.
    pub(crate) async fn still_aged(&self, item: Marked<'_>, delay: Duration) -> StoreResult<bool> {
        // MUTATION (d), for the loom suite only: trust the analysis.
        if delay.is_zero() || cfg!(ocistore_mutation = "gc_without_touch_recheck") {
            return Ok(true);
        }
        let now = millis(SystemTime::now());
        Ok(self
            .meta()
            .get(Table::GC, &item.key())
            .await?
            .and_then(|v| parse_mark(&v))
            .is_some_and(|since| old_enough(since, now, delay)))
    }
}
