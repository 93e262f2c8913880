//! [`LockService`] on PostgreSQL advisory locks: the repository and digest
//! locks of several instances (DESIGN §5, §15).
//!
//! A plan is one transaction on a connection of its own: `BEGIN`, then
//! `pg_advisory_xact_lock[_shared](domain, hash)` for each lock of the
//! plan in [`LockPlan::in_canonical_order`] (one script, one round trip) (global -> blobstore -> repo ->
//! digest, the order the in-process manager uses, so no two plans of any
//! instances wait on each other in a cycle), held until the guard drops
//! and `COMMIT` ends the transaction. Transaction-scoped locks cannot
//! outlive their connection: when an instance dies or its connection is
//! lost, PostgreSQL aborts the transaction and another instance gets the
//! locks. The holder learns it from [`HeldLocks::check`] (its connection
//! closed) and stops before writing again.
//!
//! Keys: `(domain, hash)` with the two-`int4` advisory functions, a key
//! space apart from the `bigint` keys [`crate::PgMeta`]'s batches lock. The
//! hash (FNV-1a of schema and name) may collide: two names then share a
//! lock, which costs waiting, never safety.

use async_trait::async_trait;
use engine::lock::{Domain, HeldLocks, LockError, LockPlan, LockService, Mode, PlannedLock};

use crate::pool::{Conn, PgError, Pool};

const SERVICE: &str = "postgres";

/// Lock sessions open at once per instance: operations beyond it wait.
const SESSIONS: usize = 64;

/// Advisory locks shared by every instance using the same schema.
#[derive(Debug)]
pub struct PgLocks {
    pool: Pool,
}

fn unavailable(e: impl Into<PgError>) -> LockError {
    LockError::Unavailable {
        service: SERVICE,
        message: e.into().0,
    }
}

impl PgLocks {
    /// Locks of the store whose metadata lives in `schema`.
    pub async fn connect(conninfo: &str, schema: &str) -> Result<PgLocks, PgError> {
        let pool = Pool::new(conninfo, schema, SESSIONS)?;
        drop(pool.get().await?); // reachable now, not at the first request
        Ok(PgLocks { pool })
    }

    fn key(&self, lock: &PlannedLock) -> (i32, i32) {
        let domain = match lock.domain {
            Domain::Global => 1,
            Domain::Blobstore => 2,
            Domain::Repo => 3,
            Domain::Digest => 4,
        };
        let mut h: u32 = 0x811c_9dc5;
        let bytes = self.pool.schema().bytes().chain([0]);
        for b in bytes.chain(lock.name.bytes()) {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
        (domain, h as i32)
    }
}

#[async_trait]
impl LockService for PgLocks {
    async fn acquire(&self, plan: &LockPlan) -> Result<Box<dyn HeldLocks>, LockError> {
        let mut conn = self.pool.get().await.map_err(unavailable)?;
        // Until COMMIT, this session is inside a transaction holding locks:
        // never hand it to anyone else (dropped here, it closes instead).
        conn.set_reusable(false);
        // One round trip: a simple-protocol script runs its statements in
        // order, so the locks are taken in the plan's canonical order. Its
        // values are integers computed here, never text from a client.
        let mut script = String::from("BEGIN;");
        for lock in plan.in_canonical_order() {
            let (domain, hash) = self.key(&lock);
            let function = match lock.mode {
                Mode::Shared => "pg_advisory_xact_lock_shared",
                Mode::Exclusive => "pg_advisory_xact_lock",
            };
            script.push_str(&format!(" SELECT {function}({domain}, {hash});"));
        }
        conn.batch_execute(&script).await.map_err(unavailable)?;
        Ok(Box::new(PgHeld { conn: Some(conn) }))
    }
}

/// One plan's locks: an open transaction on its own connection.
#[derive(Debug)]
struct PgHeld {
    conn: Option<Conn>,
}

impl HeldLocks for PgHeld {
    fn check(&self) -> Result<(), LockError> {
        match &self.conn {
            Some(conn) if !conn.is_closed() => Ok(()),
            _ => Err(LockError::Lost {
                service: SERVICE,
                message: "the connection holding them closed".into(),
            }),
        }
    }
}

impl Drop for PgHeld {
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        // COMMIT ends the transaction and its locks; the session is clean
        // again. Without a runtime to send it, closing the connection
        // releases them as surely (the server aborts the transaction).
        if let Ok(runtime) = rtokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if conn.batch_execute("COMMIT").await.is_ok() {
                    conn.set_reusable(true);
                }
            });
        }
    }
}
