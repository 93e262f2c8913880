//! [`MetaStore`] on redb: embedded, ACID, one file next to the store.
//! A commit returns after redb's fsync (durability `Immediate`, its default).

use std::path::Path;

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableError};

use super::{Batch, Entry, MetaError, MetaResult, MetaStore, Table, Write, in_scan, scan_start};

/// The redb-backed metadata store.
#[derive(Debug)]
pub struct RedbMeta {
    db: Database,
}

fn def(table: Table) -> TableDefinition<'static, &'static [u8], &'static [u8]> {
    TableDefinition::new(table.name())
}

fn backend(e: impl std::fmt::Display) -> MetaError {
    MetaError::Backend {
        backend: "redb",
        message: e.to_string(),
    }
}

impl RedbMeta {
    /// Opens the database at `path`, creating it (and every table) if needed.
    pub fn open(path: impl AsRef<Path>) -> MetaResult<RedbMeta> {
        let db = Database::create(path).map_err(backend)?;
        let txn = db.begin_write().map_err(backend)?;
        for table in Table::ALL {
            txn.open_table(def(table)).map_err(backend)?;
        }
        txn.commit().map_err(backend)?;
        Ok(RedbMeta { db })
    }
}

#[async_trait]
impl MetaStore for RedbMeta {
    async fn get(&self, table: Table, key: &[u8]) -> MetaResult<Option<Vec<u8>>> {
        let txn = self.db.begin_read().map_err(backend)?;
        let t = match txn.open_table(def(table)) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(backend(e)),
        };
        Ok(t.get(key).map_err(backend)?.map(|v| v.value().to_vec()))
    }

    async fn scan(
        &self,
        table: Table,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> MetaResult<Vec<Entry>> {
        let txn = self.db.begin_read().map_err(backend)?;
        let t = txn.open_table(def(table)).map_err(backend)?;
        let start = scan_start(prefix, after);
        let mut out = Vec::new();
        for item in t.range(start..).map_err(backend)? {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item.map_err(backend)?;
            let k = k.value();
            if !k.starts_with(prefix) {
                break;
            }
            if in_scan(k, prefix, after) {
                out.push((k.to_vec(), v.value().to_vec()));
            }
        }
        Ok(out)
    }

    async fn commit(&self, batch: Batch) -> MetaResult<()> {
        let txn = self.db.begin_write().map_err(backend)?;
        for c in &batch.conditions {
            let t = txn.open_table(def(c.table)).map_err(backend)?;
            let current = t
                .get(c.key.as_slice())
                .map_err(backend)?
                .map(|v| v.value().to_vec());
            if current != c.expected {
                // Dropping the transaction aborts it: nothing was written.
                return Err(MetaError::Conflict {
                    table: c.table,
                    key: c.key.clone(),
                });
            }
        }
        for w in &batch.writes {
            match w {
                Write::Put { table, key, value } => {
                    let mut t = txn.open_table(def(*table)).map_err(backend)?;
                    t.insert(key.as_slice(), value.as_slice())
                        .map_err(backend)?;
                }
                Write::Delete { table, key } => {
                    let mut t = txn.open_table(def(*table)).map_err(backend)?;
                    t.remove(key.as_slice()).map_err(backend)?;
                }
            }
        }
        txn.commit().map_err(backend)
    }
}
