//! What instances and the service say to each other over madsim's network:
//! the metadata store's three calls and a lock service's four, as plain
//! data (the service is another machine; nothing of the engine's types
//! crosses the wire). Each request is one RPC with a timeout on the
//! instance's side: a message the network drops or a service that is down
//! is a timeout, and a commit that timed out may or may not have happened,
//! as with a real database.

use madsim::net::rpc::Request;
use serde::{Deserialize, Serialize};

use engine::lock::{Domain, Mode, PlannedLock};
use engine::meta::{Batch, Table};

/// Where the service listens.
pub const SERVICE_ADDR: &str = "10.0.0.1:5432";

/// A table by its place in [`Table::ALL`].
pub fn table_id(table: Table) -> u8 {
    Table::ALL
        .iter()
        .position(|t| *t == table)
        .expect("every table is in Table::ALL") as u8
}

pub fn table_of(id: u8) -> Table {
    Table::ALL[usize::from(id)]
}

/// `(table, key, value)`, a value of `None` meaning absent (a condition)
/// or delete (a write).
pub type Row = (u8, Vec<u8>, Option<Vec<u8>>);

#[derive(Debug, Serialize, Deserialize)]
pub struct Get {
    pub table: u8,
    pub key: Vec<u8>,
}
impl Request for Get {
    type Response = Result<Option<Vec<u8>>, String>;
    const ID: u64 = 0x6d65_7461_0001;
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Scan {
    pub table: u8,
    pub prefix: Vec<u8>,
    pub after: Option<Vec<u8>>,
    pub limit: usize,
}
impl Request for Scan {
    type Response = Result<Vec<(Vec<u8>, Vec<u8>)>, String>;
    const ID: u64 = 0x6d65_7461_0002;
}

/// A batch: every condition holds and every write applies, or nothing.
#[derive(Debug, Serialize, Deserialize)]
pub struct Commit {
    pub conditions: Vec<Row>,
    pub writes: Vec<Row>,
}
impl Request for Commit {
    type Response = Result<(), CommitRefused>;
    const ID: u64 = 0x6d65_7461_0003;
}

impl Commit {
    pub fn of(batch: &Batch) -> Commit {
        let rows = |(t, k, v): (Table, &[u8], Option<&[u8]>)| {
            (table_id(t), k.to_vec(), v.map(<[u8]>::to_vec))
        };
        Commit {
            conditions: batch.conditions().map(rows).collect(),
            writes: batch.writes().map(rows).collect(),
        }
    }

    pub fn into_batch(self) -> Batch {
        let mut batch = Batch::new();
        for (t, k, v) in self.conditions {
            batch = batch.expect(table_of(t), k, v);
        }
        for (t, k, v) in self.writes {
            batch = match v {
                Some(v) => batch.put(table_of(t), k, v),
                None => batch.delete(table_of(t), k),
            };
        }
        batch
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub enum CommitRefused {
    /// A condition did not hold: `(table, key)`.
    Conflict(u8, Vec<u8>),
    Failed(String),
}

/// A new session: the locks an instance takes live as long as it keeps
/// the session alive (a database connection).
#[derive(Debug, Serialize, Deserialize)]
pub struct Open;
impl Request for Open {
    type Response = u64;
    const ID: u64 = 0x6c6f_636b_0001;
}

/// "Still here": answers whether the service still knows the session.
#[derive(Debug, Serialize, Deserialize)]
pub struct Heartbeat {
    pub session: u64,
}
impl Request for Heartbeat {
    type Response = bool;
    const ID: u64 = 0x6c6f_636b_0002;
}

/// One lock of a plan, for grant `grant` of `session`; granted at once or
/// busy (the instance retries: no waiter is left behind at the service
/// when an instance gives up or its message is lost).
#[derive(Debug, Serialize, Deserialize)]
pub struct TryLock {
    pub session: u64,
    pub grant: u64,
    pub lock: LockName,
    pub exclusive: bool,
}
impl Request for TryLock {
    type Response = LockAnswer;
    const ID: u64 = 0x6c6f_636b_0003;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LockAnswer {
    Granted,
    Busy,
    /// The session expired (or the service restarted): its locks are gone.
    UnknownSession,
}

/// Every lock of a grant released.
#[derive(Debug, Serialize, Deserialize)]
pub struct Unlock {
    pub session: u64,
    pub grant: u64,
}
impl Request for Unlock {
    type Response = ();
    const ID: u64 = 0x6c6f_636b_0004;
}

/// A lock's name: its domain's place in the canonical order, and its name
/// within the domain.
pub type LockName = (u8, String);

pub fn lock_name(lock: &PlannedLock) -> (LockName, bool) {
    let domain = match lock.domain {
        Domain::Global => 0,
        Domain::Blobstore => 1,
        Domain::Repo => 2,
        Domain::Digest => 3,
    };
    ((domain, lock.name.clone()), lock.mode == Mode::Exclusive)
}
