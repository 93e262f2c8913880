//! [`MetaStore`] in memory, crash-aware, for the simulator and tests.
//!
//! A committed batch is durable; a batch not yet committed when the power
//! goes is lost whole (batches are atomic, so there is no half of one to
//! keep). Like the simulated disk, the store lives outside the simulated
//! node, and [`MemoryMeta::power_off`] makes every call fail until
//! [`MemoryMeta::power_on`].

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;

use super::{Batch, Entry, MetaError, MetaResult, MetaStore, Table, Write, in_scan, scan_start};
use crate::indexed_map::IndexedMap;
use crate::sync::unmodeled::Mutex;

/// Faults to inject, all off by default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetaFaults {
    /// Lose power instead of applying commit number `k + 1` (counted since
    /// the last power-on): that batch is lost, earlier ones are kept.
    pub crash_after_commits: Option<u64>,
}

/// The in-memory, crash-aware metadata store.
#[derive(Debug, Default)]
pub struct MemoryMeta {
    state: Mutex<State>,
    /// The simulated machine this store runs on: its power cuts stop the
    /// store too, and its operation counter counts ours.
    machine: Option<std::sync::Arc<crate::driver::SimDisk>>,
}

#[derive(Debug, Default)]
struct State {
    tables: BTreeMap<Table, Rows>,
    powered_off: bool,
    faults: MetaFaults,
    commits_since_power_on: u64,
}

/// One table: hashed for point reads, ordered for scans ([`IndexedMap`]).
/// Keys and values are shared pointers, so the two maps share them.
type Rows = IndexedMap<Arc<[u8]>, Arc<[u8]>>;

impl State {
    fn enter(&self) -> MetaResult<()> {
        if self.powered_off {
            Err(MetaError::Crashed)
        } else {
            Ok(())
        }
    }
}

impl MemoryMeta {
    /// A store on the same simulated machine as `disk`: every call is one
    /// of the machine's operations (a crash point), and nothing answers
    /// while the machine is powered off.
    pub fn on_machine(disk: std::sync::Arc<crate::driver::SimDisk>) -> MemoryMeta {
        MemoryMeta {
            machine: Some(disk),
            ..MemoryMeta::default()
        }
    }

    fn machine_tick(&self) -> MetaResult<()> {
        match &self.machine {
            Some(disk) => disk.tick().map_err(|_| MetaError::Crashed),
            None => Ok(()),
        }
    }
}

impl MemoryMeta {
    pub fn new() -> MemoryMeta {
        MemoryMeta::default()
    }

    pub fn set_faults(&self, faults: MetaFaults) {
        self.state.lock().unwrap().faults = faults;
    }

    pub fn power_off(&self) {
        self.state.lock().unwrap().powered_off = true;
    }

    pub fn power_on(&self) {
        let mut st = self.state.lock().unwrap();
        st.powered_off = false;
        st.commits_since_power_on = 0;
    }

    /// Every entry of every table, for checkers comparing states.
    pub fn dump(&self) -> BTreeMap<Table, BTreeMap<Vec<u8>, Vec<u8>>> {
        let st = self.state.lock().unwrap();
        st.tables
            .iter()
            .map(|(table, rows)| {
                let rows = rows.iter().map(|(k, v)| (k.to_vec(), v.to_vec()));
                (*table, rows.collect())
            })
            .collect()
    }
}

#[async_trait]
impl MetaStore for MemoryMeta {
    async fn get(&self, table: Table, key: &[u8]) -> MetaResult<Option<Vec<u8>>> {
        self.machine_tick()?;
        let st = self.state.lock().unwrap();
        st.enter()?;
        Ok(st
            .tables
            .get(&table)
            .and_then(|t| t.get(key))
            .map(|v| v.to_vec()))
    }

    async fn scan(
        &self,
        table: Table,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> MetaResult<Vec<Entry>> {
        self.machine_tick()?;
        let st = self.state.lock().unwrap();
        st.enter()?;
        let Some(t) = st.tables.get(&table) else {
            return Ok(Vec::new());
        };
        let start = scan_start(prefix, after);
        use std::ops::Bound;
        Ok(
            t.range::<[u8], _>((Bound::Included(start), Bound::Unbounded))
                .take_while(|(k, _)| k.starts_with(prefix))
                .filter(|(k, _)| in_scan(k, prefix, after))
                .take(limit)
                .map(|(k, v)| (k.to_vec(), v.to_vec()))
                .collect(),
        )
    }

    async fn commit(&self, batch: Batch) -> MetaResult<()> {
        self.machine_tick()?;
        let mut st = self.state.lock().unwrap();
        st.enter()?;
        st.commits_since_power_on += 1;
        if st
            .faults
            .crash_after_commits
            .is_some_and(|k| st.commits_since_power_on > k)
        {
            st.powered_off = true;
            return Err(MetaError::Crashed);
        }
        for c in &batch.conditions {
            let current = st.tables.get(&c.table).and_then(|t| t.get(&c.key[..]));
            if current.map(|v| &v[..]) != c.expected.as_deref() {
                return Err(MetaError::Conflict {
                    table: c.table,
                    key: c.key.clone(),
                });
            }
        }
        for w in batch.writes {
            match w {
                Write::Put { table, key, value } => {
                    st.tables
                        .entry(table)
                        .or_default()
                        .insert(key.into(), value.into());
                }
                Write::Delete { table, key } => {
                    if let Some(t) = st.tables.get_mut(&table) {
                        t.remove(&key[..]);
                    }
                }
            }
        }
        Ok(())
    }
}
