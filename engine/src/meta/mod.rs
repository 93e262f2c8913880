//! The metadata store: what the filesystem cannot say (DESIGN §4).
//!
//! - for `object` backends, which repositories hold which digest (reference index);
//! - for the legacy layout, zot's dedupe index (original + duplicates);
//! - migration progress per repository, GC bookkeeping, the store's settings;
//! - upload sessions (so they survive a restart).
//!
//! The local `fs` blobstore does NOT record references here: its link counts
//! are the truth, and a second truth is one a crash could split from the first.
//!
//! The API is a small key-value contract that a networked store can honour
//! (Redis `WATCH`/`MULTI`, DynamoDB conditional transactions, PostgreSQL):
//! point reads, ordered prefix scans, and atomic [`Batch`] commits guarded by
//! conditions (optimistic concurrency). Two implementations:
//! [`RedbMeta`] (embedded, ACID, a file next to the store) and [`MemoryMeta`]
//! (for the simulator: committed batches survive a crash, nothing else does).

mod memory;
mod redb;

use std::fmt;

use async_trait::async_trait;

pub use self::memory::{MemoryMeta, MetaFaults};
pub use self::redb::RedbMeta;

/// A named key space. The set is fixed so that every backend can create them up front.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Table(&'static str);

impl Table {
    /// digest -> repositories holding it (object blobstore).
    pub const REFS: Table = Table("refs");
    /// digest -> original + duplicates (legacy layout's dedupe index).
    pub const DEDUPE: Table = Table("dedupe");
    /// repository -> migration progress.
    pub const MIGRATION: Table = Table("migration");
    /// GC bookkeeping (pass markers, candidates).
    pub const GC: Table = Table("gc");
    /// Store-wide settings (layout, policy, format version).
    pub const CONFIG: Table = Table("config");
    /// upload session id -> its repository, clock and writer checkpoint
    /// (sessions survive a restart; see `store::blobs`).
    pub const UPLOADS: Table = Table("uploads");

    pub const ALL: [Table; 6] = [
        Table::REFS,
        Table::DEDUPE,
        Table::MIGRATION,
        Table::GC,
        Table::CONFIG,
        Table::UPLOADS,
    ];

    pub fn name(self) -> &'static str {
        self.0
    }
}

impl fmt::Debug for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Table({})", self.0)
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Write {
    Put {
        table: Table,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        table: Table,
        key: Vec<u8>,
    },
}

/// `key` must currently hold `expected` (`None`: must be absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Condition {
    pub(crate) table: Table,
    pub(crate) key: Vec<u8>,
    pub(crate) expected: Option<Vec<u8>>,
}

/// Writes applied all together or not at all, if every condition holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    pub(crate) conditions: Vec<Condition>,
    pub(crate) writes: Vec<Write>,
}

impl Batch {
    pub fn new() -> Batch {
        Batch::default()
    }

    pub fn put(
        mut self,
        table: Table,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) -> Batch {
        self.writes.push(Write::Put {
            table,
            key: key.into(),
            value: value.into(),
        });
        self
    }

    pub fn delete(mut self, table: Table, key: impl Into<Vec<u8>>) -> Batch {
        self.writes.push(Write::Delete {
            table,
            key: key.into(),
        });
        self
    }

    /// Commit only if `key` holds `expected` now (`None`: is absent).
    pub fn expect(
        mut self,
        table: Table,
        key: impl Into<Vec<u8>>,
        expected: Option<Vec<u8>>,
    ) -> Batch {
        self.conditions.push(Condition {
            table,
            key: key.into(),
            expected,
        });
        self
    }

    pub fn is_empty(&self) -> bool {
        self.writes.is_empty() && self.conditions.is_empty()
    }

    /// The conditions, for stores outside this crate: `(table, key,
    /// expected)`, `expected` `None` meaning "absent".
    pub fn conditions(&self) -> impl Iterator<Item = (Table, &[u8], Option<&[u8]>)> {
        self.conditions
            .iter()
            .map(|c| (c.table, &c.key[..], c.expected.as_deref()))
    }

    /// The writes in order, for stores outside this crate: `(table, key,
    /// value)`, `value` `None` meaning "delete".
    pub fn writes(&self) -> impl Iterator<Item = (Table, &[u8], Option<&[u8]>)> {
        self.writes.iter().map(|w| match w {
            Write::Put { table, key, value } => (*table, &key[..], Some(&value[..])),
            Write::Delete { table, key } => (*table, &key[..], None),
        })
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetaError {
    /// A batch condition did not hold; nothing was written. Re-read and retry.
    #[error("conflict on {table}/{key}: the value changed", key = String::from_utf8_lossy(.key))]
    Conflict { table: Table, key: Vec<u8> },
    /// The simulated machine lost power; every call fails until it restarts.
    #[error("metadata store lost power (simulated crash)")]
    Crashed,
    #[error("metadata store {backend}: {message}")]
    Backend {
        backend: &'static str,
        message: String,
    },
}

pub type MetaResult<T> = Result<T, MetaError>;

/// One key-value pair of a scan.
pub type Entry = (Vec<u8>, Vec<u8>);

/// The metadata contract. Every method is atomic; `commit` is durable on return.
#[async_trait]
pub trait MetaStore: Send + Sync + fmt::Debug {
    async fn get(&self, table: Table, key: &[u8]) -> MetaResult<Option<Vec<u8>>>;

    /// Up to `limit` entries whose key starts with `prefix` and sorts after
    /// `after` (if given), in key order. Page with the last key returned.
    async fn scan(
        &self,
        table: Table,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> MetaResult<Vec<Entry>>;

    /// Applies `batch` atomically and durably, or fails with
    /// [`MetaError::Conflict`] (nothing written) if a condition does not hold.
    async fn commit(&self, batch: Batch) -> MetaResult<()>;
}

/// Where a scan of `prefix` after `after` starts in key order: at the
/// cursor, not at the prefix, so paging through n keys stays O(n) (a cursor
/// before the prefix starts at the prefix). For every backend.
pub fn scan_start<'a>(prefix: &'a [u8], after: Option<&'a [u8]>) -> &'a [u8] {
    match after {
        Some(a) if a > prefix => a,
        _ => prefix,
    }
}

/// Shared by both backends: does `key` pass the scan's prefix and cursor?
pub(crate) fn in_scan(key: &[u8], prefix: &[u8], after: Option<&[u8]>) -> bool {
    key.starts_with(prefix) && after.is_none_or(|a| key > a)
}

/// Every key of `table` starting with `prefix`, paging through the store.
pub async fn scan_keys(
    meta: &dyn MetaStore,
    table: Table,
    prefix: &[u8],
) -> MetaResult<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for_each_key(meta, table, prefix, |k| out.push(k.to_vec())).await?;
    Ok(out)
}

/// Calls `each` with every key of `table` starting with `prefix`, in order,
/// one page at a time: a caller that keeps less than the keys (a parsed
/// digest, a count) never holds more than a page of them. (Collected first,
/// the 20,000 keys of a large repository were 20,000 allocations made,
/// walked and freed again, mostly out of the cache, in every GC pass.)
pub async fn for_each_key(
    meta: &dyn MetaStore,
    table: Table,
    prefix: &[u8],
    mut each: impl FnMut(&[u8]),
) -> MetaResult<()> {
    for_each_entry(meta, table, prefix, |k, _| each(k)).await
}

/// Every entry of `table` starting with `prefix`, in key order.
pub async fn scan_all(meta: &dyn MetaStore, table: Table, prefix: &[u8]) -> MetaResult<Vec<Entry>> {
    let mut out = Vec::new();
    for_each_entry(meta, table, prefix, |k, v| {
        out.push((k.to_vec(), v.to_vec()))
    })
    .await?;
    Ok(out)
}

/// As [`for_each_key`], with each key's value.
pub async fn for_each_entry(
    meta: &dyn MetaStore,
    table: Table,
    prefix: &[u8],
    mut each: impl FnMut(&[u8], &[u8]),
) -> MetaResult<()> {
    const PAGE: usize = 1000;
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = meta.scan(table, prefix, after.as_deref(), PAGE).await?;
        page.iter().for_each(|(k, v)| each(k, v));
        if page.len() < PAGE {
            return Ok(());
        }
        after = page.into_iter().next_back().map(|(k, _)| k);
    }
}
