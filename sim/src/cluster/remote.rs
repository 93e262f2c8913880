//! An instance's side of the service: the metadata store and the lock
//! service the engine is opened with, both over one [`ServiceLink`].
//!
//! A session's locks are certainly held until `valid_until`: the send time
//! of the last message the service answered, plus the session's time to
//! live. The service ends a session no sooner than that (it heard the
//! message after it was sent, and all nodes share madsim's clock), so an
//! instance that has not heard back in time — partitioned, paused, or the
//! service restarted — treats its locks as lost before anyone else can
//! take them ([`HeldLocks::check`]).

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use engine::lock::{HeldLocks, LockError, LockPlan, LockService};
use engine::meta::{Batch, Entry, MetaError, MetaResult, MetaStore, Table};
use madsim::net::Endpoint;
use madsim::net::rpc::Request;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::protocol::{
    Commit, CommitRefused, Get, Heartbeat, LockAnswer, Open, Scan, TryLock, Unlock, lock_name,
    table_id, table_of,
};

/// How long an instance waits for one answer.
const CALL_TIMEOUT: Duration = Duration::from_millis(500);

/// The longest pause between two tries of a busy lock.
const MAX_BACKOFF: Duration = Duration::from_millis(20);

const SERVICE: &str = "sim service";

/// One instance's connection to the service.
pub struct ServiceLink {
    net: Endpoint,
    service: SocketAddr,
    ttl: Duration,
    session: Mutex<SessionView>,
    next_grant: AtomicU64,
    /// Grants to release, sent by the keepalive task (a drop cannot wait).
    releases: mpsc::UnboundedSender<(u64, u64)>,
    tally: Arc<super::Tally>,
}

#[derive(Debug, Clone, Copy)]
struct SessionView {
    id: Option<u64>,
    valid_until: Instant,
}

impl fmt::Debug for ServiceLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceLink")
            .field("service", &self.service)
            .field("session", &*self.session.lock().unwrap())
            .finish()
    }
}

impl ServiceLink {
    /// Binds the instance's endpoint and starts its keepalive, on the
    /// instance's node (both die with it).
    pub async fn connect(ttl: Duration, tally: Arc<super::Tally>) -> Arc<ServiceLink> {
        let net = Endpoint::bind("0.0.0.0:0")
            .await
            .expect("an instance endpoint");
        let (releases, pending) = mpsc::unbounded_channel();
        let link = Arc::new(ServiceLink {
            net,
            service: super::protocol::SERVICE_ADDR.parse().expect("an address"),
            ttl,
            session: Mutex::new(SessionView {
                id: None,
                valid_until: Instant::now(),
            }),
            next_grant: AtomicU64::new(1),
            releases,
            tally,
        });
        tokio::spawn(keepalive(link.clone(), pending));
        link
    }

    async fn call<R: Request>(&self, request: R) -> std::io::Result<R::Response> {
        self.net
            .call_timeout(self.service, request, CALL_TIMEOUT)
            .await
    }

    /// The service answered a message of `session` sent at `sent`.
    fn heard(&self, session: u64, sent: Instant) {
        let mut view = self.session.lock().unwrap();
        if view.id == Some(session) {
            view.valid_until = view.valid_until.max(sent + self.ttl);
        }
    }

    /// The service no longer knows `session`: a new one is opened on next use.
    fn forget(&self, session: u64) {
        let mut view = self.session.lock().unwrap();
        if view.id == Some(session) {
            view.id = None;
            self.tally.sessions_ended.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn holds(&self, session: u64) -> bool {
        let view = self.session.lock().unwrap();
        view.id == Some(session) && Instant::now() < view.valid_until
    }

    /// The current session, opened if there is none.
    async fn session(&self) -> Result<u64, LockError> {
        if let Some(id) = self.session.lock().unwrap().id {
            return Ok(id);
        }
        let sent = Instant::now();
        let id = self.call(Open).await.map_err(unavailable)?;
        let mut view = self.session.lock().unwrap();
        if view.id.is_none() {
            *view = SessionView {
                id: Some(id),
                valid_until: sent + self.ttl,
            };
        }
        // Another task opened one meanwhile: this one expires unused.
        Ok(view.id.expect("set"))
    }
}

fn unavailable(e: std::io::Error) -> LockError {
    LockError::Unavailable {
        service: SERVICE,
        message: e.to_string(),
    }
}

/// Heartbeats at a fifth of the time to live, and sends releases.
async fn keepalive(link: Arc<ServiceLink>, mut releases: mpsc::UnboundedReceiver<(u64, u64)>) {
    let mut next_beat = Instant::now();
    loop {
        tokio::select! {
            biased;
            Some((session, grant)) = releases.recv() => {
                // Unanswered: the session's end releases it.
                let _ = link.call(Unlock { session, grant }).await;
            }
            () = tokio::time::sleep_until(next_beat) => {
                next_beat = Instant::now() + link.ttl / 5;
                let Some(id) = link.session.lock().unwrap().id else {
                    continue;
                };
                let sent = Instant::now();
                match link.call(Heartbeat { session: id }).await {
                    Ok(true) => link.heard(id, sent),
                    Ok(false) => link.forget(id),
                    Err(_) => {} // unheard: the session lapses on its own
                }
            }
        }
    }
}

/// The locks of one plan at the service.
struct RemoteHeld {
    link: Arc<ServiceLink>,
    session: u64,
    grant: u64,
}

impl fmt::Debug for RemoteHeld {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "RemoteHeld(session {}, grant {})",
            self.session, self.grant
        )
    }
}

impl HeldLocks for RemoteHeld {
    fn check(&self) -> Result<(), LockError> {
        if self.link.holds(self.session) {
            Ok(())
        } else {
            self.link
                .tally
                .stale_lock_checks
                .fetch_add(1, Ordering::Relaxed);
            Err(LockError::Lost {
                service: SERVICE,
                message: format!(
                    "session {} not confirmed within its time to live",
                    self.session
                ),
            })
        }
    }
}

impl Drop for RemoteHeld {
    fn drop(&mut self) {
        let _ = self.link.releases.send((self.session, self.grant));
    }
}

/// The instance's lock service: every plan at the service, lock by lock
/// in canonical order, retrying a busy lock.
#[derive(Debug, Clone)]
pub struct RemoteLocks(pub Arc<ServiceLink>);

#[async_trait]
impl LockService for RemoteLocks {
    async fn acquire(&self, plan: &LockPlan) -> Result<Box<dyn HeldLocks>, LockError> {
        let link = &self.0;
        let session = link.session().await?;
        let held = RemoteHeld {
            link: link.clone(),
            session,
            grant: link.next_grant.fetch_add(1, Ordering::Relaxed),
        };
        for lock in plan.in_canonical_order() {
            let (name, exclusive) = lock_name(&lock);
            let mut backoff = Duration::from_millis(1);
            loop {
                let sent = Instant::now();
                let answer = link
                    .call(TryLock {
                        session,
                        grant: held.grant,
                        lock: name.clone(),
                        exclusive,
                    })
                    .await
                    .map_err(unavailable)?;
                match answer {
                    LockAnswer::Granted => {
                        link.heard(session, sent);
                        break;
                    }
                    LockAnswer::Busy => {
                        link.heard(session, sent);
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                    LockAnswer::UnknownSession => {
                        link.forget(session);
                        return Err(LockError::Lost {
                            service: SERVICE,
                            message: format!("session {session} ended by the service"),
                        });
                    }
                }
            }
        }
        Ok(Box::new(held))
    }
}

/// The instance's metadata store: every call at the service.
#[derive(Debug, Clone)]
pub struct RemoteMeta(pub Arc<ServiceLink>);

fn backend(message: String) -> MetaError {
    MetaError::Backend {
        backend: SERVICE,
        message,
    }
}

#[async_trait]
impl MetaStore for RemoteMeta {
    async fn get(&self, table: Table, key: &[u8]) -> MetaResult<Option<Vec<u8>>> {
        let request = Get {
            table: table_id(table),
            key: key.to_vec(),
        };
        self.0
            .call(request)
            .await
            .map_err(|e| backend(e.to_string()))?
            .map_err(backend)
    }

    async fn scan(
        &self,
        table: Table,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> MetaResult<Vec<Entry>> {
        let request = Scan {
            table: table_id(table),
            prefix: prefix.to_vec(),
            after: after.map(<[u8]>::to_vec),
            limit,
        };
        self.0
            .call(request)
            .await
            .map_err(|e| backend(e.to_string()))?
            .map_err(backend)
    }

    async fn commit(&self, batch: Batch) -> MetaResult<()> {
        match self.0.call(Commit::of(&batch)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(CommitRefused::Conflict(table, key))) => {
                // A lease's fence: the condition on its epoch row, or on
                // its row (a renewal or release after a takeover). Not an
                // acquisition another instance won: that batch writes the
                // epoch row itself, and nothing stale was stopped.
                let acquiring = batch
                    .writes()
                    .any(|(_, k, _)| k.starts_with(b"lease/") && k.ends_with(b"/epoch"));
                if key.starts_with(b"lease/") && !acquiring {
                    self.0.tally.fenced_writes.fetch_add(1, Ordering::Relaxed);
                }
                Err(MetaError::Conflict {
                    table: table_of(table),
                    key,
                })
            }
            Ok(Err(CommitRefused::Failed(message))) => Err(backend(message)),
            // Timed out: applied or not, as a database's lost answer.
            Err(e) => Err(backend(format!(
                "no answer ({e}); the commit may have applied"
            ))),
        }
    }
}
