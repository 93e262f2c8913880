//! [`MetaStore`] on PostgreSQL: one row per key, one transaction per batch.
//!
//! All tables share one SQL table, `meta(tbl, key, value)`, keyed by the
//! engine's table name: whatever tables the engine defines
//! ([`Table::ALL`]) exist here without a migration. Keys are `bytea`,
//! which PostgreSQL orders byte by byte, as the contract's scans require.
//!
//! # Commit
//!
//! A batch is one transaction that first takes a transaction-scoped
//! advisory lock on every key it reads or writes (a 64-bit hash of table
//! and key; sorted, so two batches never wait on each other in a cycle),
//! then checks its conditions, then writes. Two batches touching one key
//! therefore run one after the other, on every instance: a condition read
//! cannot be overtaken by another batch's write before this one commits.
//! The locks end with the transaction, so a crashed instance holds none
//! (PostgreSQL aborts the transaction of a dropped connection).

use std::collections::BTreeSet;

use async_trait::async_trait;
use engine::meta::{Batch, Entry, MetaError, MetaResult, MetaStore, Table};

use crate::pool::{PgError, Pool};

/// The metadata store of several instances, in one PostgreSQL schema.
#[derive(Debug)]
pub struct PgMeta {
    pool: Pool,
}

/// Connections kept for metadata calls (each call holds one while it runs).
const POOL_SIZE: usize = 16;

fn backend(e: impl Into<PgError>) -> MetaError {
    MetaError::Backend {
        backend: "postgres",
        message: e.into().0,
    }
}

impl PgMeta {
    /// Connects to `conninfo` (a libpq string or `postgres://` URL) and
    /// creates `schema` and its table if missing. Instances sharing a store
    /// name the same schema.
    pub async fn connect(conninfo: &str, schema: &str) -> MetaResult<PgMeta> {
        let pool = Pool::new(conninfo, schema, POOL_SIZE).map_err(backend)?;
        let mut conn = pool.get().await.map_err(backend)?;
        // Concurrent `CREATE ... IF NOT EXISTS` can still collide in the
        // catalog; instances starting together take turns.
        let txn = conn.transaction().await.map_err(backend)?;
        txn.batch_execute(&format!(
            "SELECT pg_advisory_xact_lock(0);
             CREATE SCHEMA IF NOT EXISTS {schema};
             CREATE TABLE IF NOT EXISTS {schema}.meta (
                 tbl text NOT NULL,
                 key bytea NOT NULL,
                 value bytea NOT NULL,
                 PRIMARY KEY (tbl, key)
             );"
        ))
        .await
        .map_err(backend)?;
        txn.commit().await.map_err(backend)?;
        drop(conn);
        Ok(PgMeta { pool })
    }

    pub fn schema(&self) -> &str {
        self.pool.schema()
    }
}

/// The advisory-lock key of one metadata key: FNV-1a over table and key,
/// the same in every process.
fn lock_key(table: Table, key: &[u8]) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in table.name().bytes().chain([0]).chain(key.iter().copied()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h as i64
}

/// The least key greater than every key starting with `prefix`, if any.
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[async_trait]
impl MetaStore for PgMeta {
    async fn get(&self, table: Table, key: &[u8]) -> MetaResult<Option<Vec<u8>>> {
        let conn = self.pool.get().await.map_err(backend)?;
        let row = conn
            .query_opt(
                "SELECT value FROM meta WHERE tbl = $1 AND key = $2",
                &[&table.name(), &key],
            )
            .await
            .map_err(backend)?;
        Ok(row.map(|r| r.get(0)))
    }

    async fn scan(
        &self,
        table: Table,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> MetaResult<Vec<Entry>> {
        let start = engine::meta::scan_start(prefix, after);
        let end = prefix_end(prefix);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        // `after` is exclusive, a bare prefix inclusive.
        let lower = if after.is_some_and(|a| a >= prefix) {
            ">"
        } else {
            ">="
        };
        let conn = self.pool.get().await.map_err(backend)?;
        let rows = match &end {
            Some(end) => {
                conn.query(
                    &format!(
                        "SELECT key, value FROM meta WHERE tbl = $1 AND key {lower} $2 AND key < $3 \
                         ORDER BY key LIMIT $4"
                    ),
                    &[&table.name(), &start, &end.as_slice(), &limit],
                )
                .await
            }
            None => {
                conn.query(
                    &format!(
                        "SELECT key, value FROM meta WHERE tbl = $1 AND key {lower} $2 \
                         ORDER BY key LIMIT $3"
                    ),
                    &[&table.name(), &start, &limit],
                )
                .await
            }
        }
        .map_err(backend)?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    async fn commit(&self, batch: Batch) -> MetaResult<()> {
        let keys: BTreeSet<i64> = batch
            .conditions()
            .chain(batch.writes())
            .map(|(table, key, _)| lock_key(table, key))
            .collect();
        let keys: Vec<i64> = keys.into_iter().collect();
        let mut conn = self.pool.get().await.map_err(backend)?;
        let txn = conn.transaction().await.map_err(backend)?;
        // unnest yields the sorted array in order: the locks are taken in it.
        txn.execute(
            "SELECT pg_advisory_xact_lock(k) FROM unnest($1::bigint[]) AS k",
            &[&keys],
        )
        .await
        .map_err(backend)?;
        for (table, key, expected) in batch.conditions() {
            let current: Option<Vec<u8>> = txn
                .query_opt(
                    "SELECT value FROM meta WHERE tbl = $1 AND key = $2",
                    &[&table.name(), &key],
                )
                .await
                .map_err(backend)?
                .map(|r| r.get(0));
            if current.as_deref() != expected {
                // Dropping the transaction rolls it back: nothing written.
                return Err(MetaError::Conflict {
                    table,
                    key: key.to_vec(),
                });
            }
        }
        for (table, key, value) in batch.writes() {
            match value {
                Some(value) => {
                    txn.execute(
                        "INSERT INTO meta (tbl, key, value) VALUES ($1, $2, $3) \
                         ON CONFLICT (tbl, key) DO UPDATE SET value = EXCLUDED.value",
                        &[&table.name(), &key, &value],
                    )
                    .await
                }
                None => {
                    txn.execute(
                        "DELETE FROM meta WHERE tbl = $1 AND key = $2",
                        &[&table.name(), &key],
                    )
                    .await
                }
            }
            .map_err(backend)?;
        }
        txn.commit().await.map_err(backend)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_least_key_past_the_prefix() {
        assert_eq!(prefix_end(b"a/"), Some(b"a0".to_vec()));
        assert_eq!(prefix_end(&[b'a', 0xff]), Some(b"b".to_vec()));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
        assert_eq!(prefix_end(b""), None);
    }
}
