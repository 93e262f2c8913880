//! The shared service node: what PostgreSQL is to real instances (DESIGN
//! §15). It keeps the metadata (the world's store, durable: a restart of
//! the service loses no row) and a lock table whose locks belong to
//! sessions. A session lives while its instance heartbeats; one silent for
//! the session's time to live is ended and its locks released, as a
//! database ends a dead connection's advisory locks. A restart ends every
//! session at once, sooner than their instances can know: so a restarted
//! service grants no lock for one time to live (a grace period, as NFS
//! lock recovery has), by when every instance that held one has stopped
//! trusting it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use engine::meta::{MemoryMeta, MetaError, MetaStore};
use madsim::net::Endpoint;
use tokio::time::Instant;

use super::protocol::{
    Commit, CommitRefused, Get, Heartbeat, LockAnswer, LockName, Open, Scan, TryLock, Unlock,
    table_id, table_of,
};

/// Serves until the node is killed. Sessions are numbered across restarts
/// by `sessions`; a restart (`restarted`) begins with the grace period.
pub async fn serve(
    meta: Arc<MemoryMeta>,
    ttl: Duration,
    sessions: Arc<AtomicU64>,
    restarted: bool,
) {
    let addr: SocketAddr = super::protocol::SERVICE_ADDR.parse().expect("an address");
    let net = Endpoint::bind(addr)
        .await
        .expect("the service's address is free");
    let grace = if restarted { ttl } else { Duration::ZERO };
    let locks = Arc::new(Mutex::new(LockTable {
        grants_from: Instant::now() + grace,
        ..LockTable::default()
    }));

    let m = meta.clone();
    net.add_rpc_handler(move |r: Get| {
        let m = m.clone();
        async move {
            m.get(table_of(r.table), &r.key)
                .await
                .map_err(|e| e.to_string())
        }
    });
    let m = meta.clone();
    net.add_rpc_handler(move |r: Scan| {
        let m = m.clone();
        async move {
            m.scan(table_of(r.table), &r.prefix, r.after.as_deref(), r.limit)
                .await
                .map_err(|e| e.to_string())
        }
    });
    let m = meta;
    net.add_rpc_handler(move |r: Commit| {
        let m = m.clone();
        async move {
            m.commit(r.into_batch()).await.map_err(|e| match e {
                MetaError::Conflict { table, key } => CommitRefused::Conflict(table_id(table), key),
                e => CommitRefused::Failed(e.to_string()),
            })
        }
    });
    let t = locks.clone();
    net.add_rpc_handler(move |_: Open| {
        let id = sessions.fetch_add(1, Ordering::Relaxed);
        t.lock().unwrap().open(id);
        async move { id }
    });
    let t = locks.clone();
    net.add_rpc_handler(move |r: Heartbeat| {
        let known = t.lock().unwrap().touch(r.session);
        async move { known }
    });
    let t = locks.clone();
    net.add_rpc_handler(move |r: TryLock| {
        let answer = t.lock().unwrap().try_lock(r);
        async move { answer }
    });
    let t = locks.clone();
    net.add_rpc_handler(move |r: Unlock| {
        t.lock().unwrap().unlock(r.session, r.grant);
        async {}
    });

    // Ends silent sessions. Checked often enough that a session ends
    // within a quarter of its time to live after it expired.
    loop {
        tokio::time::sleep(ttl / 4).await;
        locks.lock().unwrap().expire(ttl);
    }
}

/// A grant of a session: the locks of one plan.
type Holder = (u64, u64);

#[derive(Debug)]
struct LockTable {
    /// The end of the grace period after the service started.
    grants_from: Instant,
    sessions: BTreeMap<u64, Session>,
    locks: HashMap<LockName, LockState>,
}

#[derive(Debug)]
struct Session {
    last_heard: Instant,
    /// What each grant of the session holds.
    held: HashMap<u64, Vec<LockName>>,
    /// Grants their instance released. Messages can overtake each other
    /// (each is delayed on its own), so a request for one of these may
    /// still arrive after its release: granting it would leave a lock no
    /// one will ever release while the session lives (a seed stalled so).
    released: HashSet<u64>,
}

#[derive(Debug, Default)]
struct LockState {
    exclusive: Option<Holder>,
    shared: HashSet<Holder>,
    /// A writer that found the lock taken: later readers wait behind it
    /// (tokio's fairness, as the in-process locks have) until it is
    /// granted or stops asking.
    writer_waiting: Option<(Holder, Instant)>,
}

/// How long a waiting writer keeps readers out without asking again.
const WRITER_PATIENCE: Duration = Duration::from_millis(50);

impl Default for LockTable {
    fn default() -> LockTable {
        LockTable {
            grants_from: Instant::now(),
            sessions: BTreeMap::new(),
            locks: HashMap::new(),
        }
    }
}

impl LockTable {
    fn open(&mut self, id: u64) {
        self.sessions.insert(
            id,
            Session {
                last_heard: Instant::now(),
                held: HashMap::new(),
                released: HashSet::new(),
            },
        );
    }

    fn touch(&mut self, session: u64) -> bool {
        match self.sessions.get_mut(&session) {
            Some(s) => {
                s.last_heard = Instant::now();
                true
            }
            None => false,
        }
    }

    fn try_lock(&mut self, r: TryLock) -> LockAnswer {
        if !self.touch(r.session) {
            return LockAnswer::UnknownSession;
        }
        if self.sessions[&r.session].released.contains(&r.grant) {
            return LockAnswer::Busy; // its instance gave up on it
        }
        let holder = (r.session, r.grant);
        let now = Instant::now();
        if now < self.grants_from {
            return LockAnswer::Busy;
        }
        let state = self.locks.entry(r.lock.clone()).or_default();
        if state.exclusive == Some(holder) || state.shared.contains(&holder) {
            return LockAnswer::Granted; // a retry whose answer was lost
        }
        let waiting = state
            .writer_waiting
            .filter(|(_, since)| now.duration_since(*since) < WRITER_PATIENCE);
        let free = if r.exclusive {
            state.exclusive.is_none() && state.shared.is_empty()
        } else {
            state.exclusive.is_none() && waiting.is_none_or(|(w, _)| w == holder)
        };
        if !free {
            if r.exclusive && waiting.is_none_or(|(w, _)| w == holder) {
                state.writer_waiting = Some((holder, now));
            }
            return LockAnswer::Busy;
        }
        if r.exclusive {
            state.exclusive = Some(holder);
            if waiting.is_some_and(|(w, _)| w == holder) {
                state.writer_waiting = None;
            }
        } else {
            state.shared.insert(holder);
        }
        let session = self.sessions.get_mut(&r.session).expect("touched above");
        session.held.entry(r.grant).or_default().push(r.lock);
        LockAnswer::Granted
    }

    fn unlock(&mut self, session: u64, grant: u64) {
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        s.released.insert(grant);
        let Some(names) = s.held.remove(&grant) else {
            return;
        };
        self.release(session, grant, names);
    }

    fn release(&mut self, session: u64, grant: u64, names: Vec<LockName>) {
        let holder = (session, grant);
        for name in names {
            if let Some(state) = self.locks.get_mut(&name) {
                if state.exclusive == Some(holder) {
                    state.exclusive = None;
                }
                state.shared.remove(&holder);
                if state.exclusive.is_none()
                    && state.shared.is_empty()
                    && state.writer_waiting.is_none()
                {
                    self.locks.remove(&name);
                }
            }
        }
    }

    /// Ends every session not heard from for `ttl`, releasing its locks.
    fn expire(&mut self, ttl: Duration) {
        let now = Instant::now();
        let dead: Vec<u64> = self
            .sessions
            .iter()
            .filter(|(_, s)| now.duration_since(s.last_heard) >= ttl)
            .map(|(id, _)| *id)
            .collect();
        for id in dead {
            let session = self.sessions.remove(&id).expect("listed");
            for (grant, names) in session.held {
                self.release(id, grant, names);
            }
        }
    }
}
