//! Blobs: upload sessions (monolithic, chunked, streamed), existence, reads,
//! cross-repository mounts and deletes.
//!
//! An upload streams into a resumable writer for `<repo>/.uploads/<id>`
//! while it is hashed, so the digest is known the moment the last chunk
//! lands and the bytes are never read back to hash them (except for a
//! non-sha256 digest, see [`Store::finish_upload`], and once after a
//! restart, below). Only a verified upload enters the layout, under the
//! `blob_insert` lock plan.
//!
//! # Sessions survive a restart (DESIGN §13)
//!
//! Each session has a record in the metadata store ([`Table::UPLOADS`]):
//! its repository, its clock and the driver's [`Checkpoint`] of its staged
//! bytes. A session starts with a record and nothing staged
//! ([`unstaged`]): its writer is opened by its first chunk, so a POST costs
//! one metadata commit and no file (a temp file, its fsync and its
//! directory's fsync would hold no byte). A chunk is acknowledged only once it is durable: the writer is
//! checkpointed (posix: fsync of the temp file; object: a stored part) and
//! then the record is written with the new offset. So after a crash the
//! record's offset is the last acknowledged one, and the staged bytes hold
//! at least that much (a resume drops any tail written after it); a client
//! asks for the session's `Range` and resends from there.
//!
//! [`Store::open`] loads every record as a *dormant* session (metadata
//! only: opening stays cheap and writes nothing). The first call on a
//! dormant session resumes its writer and rebuilds its hash by reading
//! the staged bytes back once (a sha256 state cannot be serialised: the
//! cost of a restart is one read of each resumed upload, paid by its next
//! call). A call whose write fails leaves its session dormant too, at its
//! last acknowledged offset.
//!
//! Crash points: after a checkpoint, before its record: the record's
//! older offset wins, the extra bytes are dropped on resume. After the
//! commit (publish or abort) of the staged bytes, before the record is
//! deleted: the record names bytes that are gone, and its resume ends it
//! (`BLOB_UPLOAD_UNKNOWN`). After the record is deleted and before an
//! abort removed the bytes: they are a driver leftover, reclaimed by GC.
//!
//! Expiry is by last activity: GC cancels a session idle for the larger
//! of its upload timeout and delay, dormant or not (DESIGN §7). Until
//! then, a recorded session's staged bytes are live data, even when the
//! driver lists them as a dead writer's leftovers
//! ([`Store::leftovers`]).

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::Store;
use crate::digest::{Algorithm, Digest, DigestHasher};
use crate::driver::{BlobWriter, COPY_CHUNK, Checkpoint, DriverError, Leftover, PutMode};
use crate::error::{StoreError, StoreResult};
use crate::gc::{Marked, millis};
use crate::layout;
use crate::lock::Intent;
use crate::meta::{Batch, MetaError, Table};
use crate::oci::names::RepoName;
use crate::sync::unmodeled::Mutex;

/// Upload sessions, by id: the live ones of this process and the dormant
/// ones recorded by an earlier one.
///
/// A session's slot stays in the map from `start_upload` until it finishes,
/// is cancelled or expires, so GC sees every session, including one whose
/// call is running. Its writer and hasher are taken out of the slot while
/// one of its calls runs, so two concurrent calls on one session cannot
/// interleave: the second sees `BLOB_UPLOAD_UNKNOWN`, as a client misusing
/// a session should, and GC never cancels a session mid-call.
#[derive(Default)]
pub(crate) struct Uploads {
    sessions: Mutex<HashMap<String, Session>>,
}

struct Session {
    repo: RepoName,
    started: SystemTime,
    /// The last client call on the session: it ages from here (DESIGN §7).
    touched: SystemTime,
    /// Bytes received so far (acknowledged, or written by the call running).
    offset: u64,
    /// The checkpoint its record holds (`None` only while it starts).
    recorded: Option<Checkpoint>,
    state: State,
}

enum State {
    /// Writer open, no call running (boxed: a hasher's state is large
    /// next to the other states').
    Idle(Box<SessionIo>),
    /// One of its calls is running (or it is starting, or ending).
    Busy,
    /// Recorded, no writer open in this process: resumed by its next call.
    Dormant,
}

struct SessionIo {
    writer: Box<dyn BlobWriter>,
    hasher: DigestHasher,
}

/// A session taken out of its slot for one call.
enum Taken {
    Live(SessionIo),
    /// Its writer must be resumed from this checkpoint first.
    Dormant(Checkpoint),
}

/// What [`Table::UPLOADS`] holds per session id.
#[derive(Serialize, Deserialize)]
struct SessionRecord {
    repo: String,
    started_ms: u64,
    touched_ms: u64,
    /// Bytes acknowledged ([`Checkpoint::written`]).
    offset: u64,
    token: String,
    staged: Vec<String>,
}

impl SessionRecord {
    fn parse(value: &[u8]) -> Option<SessionRecord> {
        serde_json::from_slice(value).ok()
    }

    fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            written: self.offset,
            token: self.token.clone(),
            staged: self.staged.clone(),
        }
    }

    /// The session as this record describes it, with no writer open here.
    fn dormant(self) -> Option<Session> {
        let repo = RepoName::parse(&self.repo).ok()?;
        Some(Session {
            repo,
            started: from_millis(self.started_ms),
            touched: from_millis(self.touched_ms),
            offset: self.offset,
            recorded: Some(self.checkpoint()),
            state: State::Dormant,
        })
    }
}

fn from_millis(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
}

/// The checkpoint of a session that has no staged bytes yet: no writer was
/// opened, so there is nothing to resume, abort or keep.
fn unstaged() -> Checkpoint {
    Checkpoint {
        written: 0,
        token: String::new(),
        staged: Vec::new(),
    }
}

fn is_unstaged(checkpoint: &Checkpoint) -> bool {
    *checkpoint == unstaged()
}

/// Where an upload stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadStatus {
    pub repo: RepoName,
    /// Bytes received so far (the next chunk must start here).
    pub offset: u64,
    pub started: SystemTime,
    /// The last chunk (or the start): idle time counts from here.
    pub touched: SystemTime,
}

fn upload_unknown(id: &str) -> StoreError {
    StoreError::BlobUploadUnknown {
        id: id.chars().take(80).collect(),
    }
}

impl Uploads {
    /// Reserves a slot for a session whose record is being written: from
    /// now on its repository is not empty. Returns its start.
    fn reserve(&self, id: &str, repo: &RepoName) -> SystemTime {
        let now = SystemTime::now();
        self.sessions.lock().unwrap().insert(
            id.to_owned(),
            Session {
                repo: repo.clone(),
                started: now,
                touched: now,
                offset: 0,
                recorded: None,
                state: State::Busy,
            },
        );
        now
    }

    /// Brings session `id` in line with its record as read just now: at
    /// open, for each record an earlier process left; with several
    /// instances, at each call, where the record is the session: another
    /// instance may have started it, advanced it, or ended it since this
    /// one last saw it. A session one of this instance's calls is running
    /// is left alone (that call writes the record next), and so is one
    /// whose driver keeps no records (it lives in this process only).
    ///
    /// A live writer this replaces is dropped, not aborted: it was
    /// checkpointed at its last call, so its staged bytes, which the
    /// record still names, are kept (DESIGN §13).
    fn reconcile(&self, id: &str, record: Option<SessionRecord>) {
        let mut sessions = self.sessions.lock().unwrap();
        let Some(session) = sessions.get_mut(id) else {
            if let Some(session) = record.and_then(SessionRecord::dormant) {
                sessions.insert(id.to_owned(), session);
            }
            return;
        };
        if matches!(session.state, State::Busy) || session.recorded.is_none() {
            return;
        }
        let Some(record) = record else {
            sessions.remove(id); // finished, cancelled or expired elsewhere
            return;
        };
        let same = session
            .recorded
            .as_ref()
            .is_some_and(|c| c.written == record.offset && c.token == record.token);
        if same {
            session.touched = session.touched.max(from_millis(record.touched_ms));
        } else if let Some(dormant) = record.dormant() {
            *session = dormant;
        }
    }

    /// Every session `records` holds, and none it does not (see
    /// [`Uploads::reconcile`]).
    fn reconcile_all(&self, records: Vec<(String, SessionRecord)>) {
        let mut ids: HashSet<String> = self.sessions.lock().unwrap().keys().cloned().collect();
        for (id, record) in records {
            ids.remove(&id);
            self.reconcile(&id, Some(record));
        }
        for id in ids {
            self.reconcile(&id, None);
        }
    }

    /// Takes the session for one call (the slot stays, busy).
    fn take(&self, id: &str) -> StoreResult<(RepoName, Taken)> {
        let mut sessions = self.sessions.lock().unwrap();
        let session = sessions.get_mut(id).ok_or_else(|| upload_unknown(id))?;
        let taken = match std::mem::replace(&mut session.state, State::Busy) {
            State::Idle(io) => Taken::Live(*io),
            State::Dormant => match session.recorded.clone() {
                Some(checkpoint) => Taken::Dormant(checkpoint),
                None => unreachable!("a dormant session has a record"),
            },
            State::Busy => return Err(upload_unknown(id)),
        };
        session.touched = SystemTime::now();
        Ok((session.repo.clone(), taken))
    }

    /// Ends a call: the session is idle again, touched now.
    fn put_back(&self, id: &str, io: SessionIo) {
        let mut sessions = self.sessions.lock().unwrap();
        if let Some(session) = sessions.get_mut(id) {
            session.offset = io.hasher.len();
            session.touched = SystemTime::now();
            session.state = State::Idle(Box::new(io));
        }
    }

    /// The session's record was dropped (its driver cannot checkpoint):
    /// it lives in this process only.
    fn unrecorded(&self, id: &str) {
        if let Some(session) = self.sessions.lock().unwrap().get_mut(id) {
            session.recorded = None;
        }
    }

    /// Ends a call that lost its writer (or a start that opened none): the
    /// session falls back to its record (the last acknowledged offset),
    /// resumed by its next call.
    fn fall_back(&self, id: &str) {
        let mut sessions = self.sessions.lock().unwrap();
        if let Some(session) = sessions.get_mut(id) {
            match &session.recorded {
                Some(checkpoint) => {
                    session.offset = checkpoint.written;
                    session.state = State::Dormant;
                }
                None => {
                    sessions.remove(id);
                }
            }
        }
    }

    /// The session's record now holds `checkpoint`.
    fn recorded(&self, id: &str, checkpoint: Checkpoint) {
        if let Some(session) = self.sessions.lock().unwrap().get_mut(id) {
            session.recorded = Some(checkpoint);
        }
    }

    /// Whether the session has a record in the metadata store.
    fn has_record(&self, id: &str) -> bool {
        self.sessions
            .lock()
            .unwrap()
            .get(id)
            .is_some_and(|s| s.recorded.is_some())
    }

    /// The session is over (finished, cancelled or failed).
    fn end(&self, id: &str) {
        self.sessions.lock().unwrap().remove(id);
    }

    /// Idle or dormant sessions of `repo` not touched since `idle_since`.
    pub(crate) fn idle_sessions(&self, repo: &RepoName, idle_since: SystemTime) -> Vec<String> {
        let sessions = self.sessions.lock().unwrap();
        sessions
            .iter()
            .filter(|(_, s)| {
                &s.repo == repo && !matches!(s.state, State::Busy) && s.touched <= idle_since
            })
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Takes session `id` out for good if it is still idle since
    /// `idle_since`, in one step with the check, so a chunk that arrives
    /// meanwhile keeps it.
    fn take_if_idle(&self, id: &str, idle_since: SystemTime) -> Option<(RepoName, Taken)> {
        let mut sessions = self.sessions.lock().unwrap();
        match sessions.get(id) {
            Some(s) if !matches!(s.state, State::Busy) && s.touched <= idle_since => {}
            _ => return None,
        }
        let session = sessions.remove(id)?;
        let taken = match session.state {
            State::Idle(io) => Taken::Live(*io),
            _ => Taken::Dormant(session.recorded?),
        };
        Some((session.repo, taken))
    }

    /// Whether `repo` has a session (idle, dormant or in a call).
    pub(crate) fn any_open(&self, repo: &RepoName) -> bool {
        self.sessions
            .lock()
            .unwrap()
            .values()
            .any(|s| &s.repo == repo)
    }

    /// Whether one of this instance's calls on `id` is running.
    fn busy(&self, id: &str) -> bool {
        self.sessions
            .lock()
            .unwrap()
            .get(id)
            .is_some_and(|s| matches!(s.state, State::Busy))
    }

    /// Whether `id` is a session (its staged file is in use).
    pub(crate) fn in_use(&self, id: &str) -> bool {
        self.sessions.lock().unwrap().contains_key(id)
    }

    /// The driver leftovers that hold recorded sessions' bytes.
    fn staged_paths(&self) -> HashSet<String> {
        self.sessions
            .lock()
            .unwrap()
            .values()
            .filter_map(|s| s.recorded.as_ref())
            .flat_map(|c| c.staged.iter().cloned())
            .collect()
    }
}

impl Store {
    /// The driver's leftovers (temp files of dead writers), less those
    /// holding a recorded session's staged bytes: live data until the
    /// session ends or expires, whoever wrote them.
    pub(crate) async fn leftovers(&self) -> StoreResult<Vec<Leftover>> {
        self.sync_sessions().await?;
        let staged = self.inner.uploads.staged_paths();
        let mut leftovers = self.driver().leftovers(None).await?;
        leftovers.retain(|l| !staged.contains(&l.path));
        Ok(leftovers)
    }

    /// Loads the sessions an earlier process recorded, dormant (see the
    /// module docs). Reads only; a record that does not parse is left to
    /// the GC pass that expires sessions.
    pub(super) async fn restore_uploads(&self) -> StoreResult<()> {
        for (id, record) in self.session_records().await? {
            self.inner.uploads.reconcile(&id, Some(record));
        }
        Ok(())
    }

    /// Every session record that parses, in id order.
    async fn session_records(&self) -> StoreResult<Vec<(String, SessionRecord)>> {
        Ok(crate::meta::scan_all(self.meta(), Table::UPLOADS, b"")
            .await?
            .into_iter()
            .filter_map(|(key, value)| {
                Some((String::from_utf8(key).ok()?, SessionRecord::parse(&value)?))
            })
            .collect())
    }

    /// With several instances, session `id` as its record says now (see
    /// [`Uploads::reconcile`]); with one, the table is the truth already.
    async fn sync_session(&self, id: &str) -> StoreResult<()> {
        if self.is_shared() {
            let record = self.meta().get(Table::UPLOADS, id.as_bytes()).await?;
            let record = record.as_deref().and_then(SessionRecord::parse);
            self.inner.uploads.reconcile(id, record);
        }
        Ok(())
    }

    /// With several instances, every session as the records say now: the
    /// ones other instances started included, for GC's expiry and its
    /// empty-repository and leftover checks.
    pub(crate) async fn sync_sessions(&self) -> StoreResult<()> {
        if self.is_shared() {
            let records = self.session_records().await?;
            self.inner.uploads.reconcile_all(records);
        }
        Ok(())
    }

    /// Makes what `io` wrote durable and records it: from here on the
    /// bytes are acknowledged and survive a restart.
    async fn record_session(
        &self,
        id: &str,
        repo: &RepoName,
        io: &mut SessionIo,
    ) -> StoreResult<()> {
        let checkpoint = match io.writer.checkpoint().await {
            Ok(checkpoint) => checkpoint,
            // A driver without resumable writes: the session lives in
            // this process only, as sessions did before records (its
            // start's record, which staged nothing, goes).
            Err(DriverError::Unsupported { .. }) => {
                if self.inner.uploads.has_record(id) {
                    self.forget_session(id).await?;
                    self.inner.uploads.unrecorded(id);
                }
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        let (started, touched) = {
            let sessions = self.inner.uploads.sessions.lock().unwrap();
            let s = sessions.get(id).ok_or_else(|| upload_unknown(id))?;
            (s.started, SystemTime::now())
        };
        let record = SessionRecord {
            repo: repo.to_string(),
            started_ms: millis(started),
            touched_ms: millis(touched),
            offset: checkpoint.written,
            token: checkpoint.token.clone(),
            staged: checkpoint.staged.clone(),
        };
        self.write_record(id, &record).await?;
        self.inner.uploads.recorded(id, checkpoint);
        Ok(())
    }

    async fn write_record(&self, id: &str, record: &SessionRecord) -> StoreResult<()> {
        let value = serde_json::to_vec(record).expect("record serialises");
        Ok(self
            .meta()
            .commit(Batch::new().put(Table::UPLOADS, id, value))
            .await?)
    }

    /// Deletes session `id`'s record (its staged bytes are published or gone).
    async fn forget_session(&self, id: &str) -> StoreResult<()> {
        Ok(self
            .meta()
            .commit(Batch::new().delete(Table::UPLOADS, id))
            .await?)
    }

    /// Reopens a dormant session's writer and rebuilds its hash from the
    /// staged bytes (read back once, in bounded pieces). Staged bytes that
    /// are gone end the session.
    async fn resume_session(
        &self,
        id: &str,
        repo: &RepoName,
        checkpoint: &Checkpoint,
    ) -> StoreResult<SessionIo> {
        if is_unstaged(checkpoint) {
            let writer = self
                .driver()
                .writer(&layout::upload(repo, id), PutMode::IfAbsent)
                .await?;
            return Ok(SessionIo {
                writer,
                hasher: DigestHasher::new(Algorithm::Sha256),
            });
        }
        let resumed = self
            .driver()
            .resume_writer(&layout::upload(repo, id), PutMode::IfAbsent, checkpoint)
            .await;
        let mut writer = match resumed {
            Ok(writer) => writer,
            Err(e) if e.is_not_found() => {
                self.inner.uploads.end(id);
                self.forget_session(id).await?;
                return Err(upload_unknown(id));
            }
            Err(e) => return Err(e.into()),
        };
        let mut hasher = DigestHasher::new(Algorithm::Sha256);
        let mut at = 0;
        while at < checkpoint.written {
            let end = (at + COPY_CHUNK).min(checkpoint.written);
            hasher.update(&writer.read_staged(at..end).await?);
            at = end;
        }
        Ok(SessionIo { writer, hasher })
    }

    /// Takes session `id` for one call, resuming it if it is dormant.
    async fn take_session(&self, id: &str) -> StoreResult<(RepoName, SessionIo)> {
        self.sync_session(id).await?;
        let (repo, taken) = self.inner.uploads.take(id)?;
        match taken {
            Taken::Live(io) => Ok((repo, io)),
            Taken::Dormant(checkpoint) => match self.resume_session(id, &repo, &checkpoint).await {
                Ok(io) => Ok((repo, io)),
                Err(e) => {
                    self.inner.uploads.fall_back(id);
                    Err(e)
                }
            },
        }
    }

    /// Discards a session taken out of the map: its staged bytes, then
    /// its record.
    async fn discard_session(&self, id: &str, repo: &RepoName, taken: Taken) -> StoreResult<()> {
        match taken {
            Taken::Live(io) => io.writer.abort().await?,
            Taken::Dormant(checkpoint) => self.abort_staged(repo, id, &checkpoint).await?,
        }
        self.forget_session(id).await
    }

    /// Removes the staged bytes `checkpoint` names, if any are left.
    async fn abort_staged(
        &self,
        repo: &RepoName,
        id: &str,
        checkpoint: &Checkpoint,
    ) -> StoreResult<()> {
        if is_unstaged(checkpoint) {
            return Ok(());
        }
        match self
            .driver()
            .resume_writer(&layout::upload(repo, id), PutMode::IfAbsent, checkpoint)
            .await
        {
            Ok(writer) => Ok(writer.abort().await?),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Cancels session `id` if it is still idle (or dormant) since
    /// `idle_since`; true if it did. For GC's expiry.
    pub(crate) async fn cancel_upload_if_idle(
        &self,
        id: &str,
        idle_since: SystemTime,
    ) -> StoreResult<bool> {
        if self.is_shared() {
            return self.expire_shared_session(id, idle_since).await;
        }
        match self.inner.uploads.take_if_idle(id, idle_since) {
            Some((repo, taken)) => {
                self.discard_session(id, &repo, taken).await?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// [`Store::cancel_upload_if_idle`] with several instances: idle means
    /// the record says so (a chunk through any instance touches it), and
    /// the record goes first, on the condition that it is still the one
    /// read, so a chunk another instance acknowledges meanwhile keeps the
    /// session. Then its staged bytes go (a crash between the two leaves
    /// them as leftovers, which GC reclaims once nothing records them).
    async fn expire_shared_session(&self, id: &str, idle_since: SystemTime) -> StoreResult<bool> {
        let Some(value) = self.meta().get(Table::UPLOADS, id.as_bytes()).await? else {
            self.inner.uploads.reconcile(id, None);
            return Ok(false);
        };
        let Some(record) = SessionRecord::parse(&value) else {
            return Ok(false);
        };
        if from_millis(record.touched_ms) > idle_since || self.inner.uploads.busy(id) {
            return Ok(false);
        }
        let forget = Batch::new()
            .expect(Table::UPLOADS, id, Some(value))
            .delete(Table::UPLOADS, id);
        match self.meta().commit(forget).await {
            Ok(()) => {}
            Err(MetaError::Conflict { .. }) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
        self.inner.uploads.reconcile(id, None);
        let Ok(repo) = RepoName::parse(&record.repo) else {
            return Ok(true);
        };
        self.abort_staged(&repo, id, &record.checkpoint()).await?;
        Ok(true)
    }

    /// Opens an upload session in `repo` (created on first push). Its
    /// record is written before this returns: the session survives a
    /// restart from the start. Nothing is staged yet: the first chunk
    /// opens the writer (see the module docs).
    pub async fn start_upload(&self, repo: &RepoName) -> StoreResult<String> {
        self.admit_write().await?;
        let id = self.next_id();
        // The slot is reserved under the repository's lock, so GC's
        // empty-repository check (exclusive) sees either no repository yet
        // or one with a live session. Another instance's GC sees the
        // session only by its record: with several, it is written under
        // the lock too.
        let guard = self.lock(Intent::repo_read(repo)).await?;
        self.ensure_repo(repo).await?;
        let started = millis(self.inner.uploads.reserve(&id, repo));
        let guard = if self.is_shared() {
            Some(guard)
        } else {
            drop(guard);
            None
        };
        let record = SessionRecord {
            repo: repo.to_string(),
            started_ms: started,
            touched_ms: started,
            offset: 0,
            token: String::new(),
            staged: Vec::new(),
        };
        let written = self.write_record(&id, &record).await;
        drop(guard);
        if let Err(e) = written {
            self.inner.uploads.end(&id);
            return Err(e);
        }
        self.inner.uploads.recorded(&id, unstaged());
        self.inner.uploads.fall_back(&id);
        Ok(id)
    }

    /// Appends an acknowledged chunk: durable, and recorded, on return.
    /// With `range` (the `Content-Range` of a chunked upload, inclusive
    /// end), the chunk must start at the current offset
    /// (`BLOB_UPLOAD_INVALID` otherwise) and be exactly that long
    /// (`SIZE_INVALID`); a refused chunk changes nothing. Returns the new
    /// offset.
    pub async fn upload_chunk(
        &self,
        id: &str,
        range: Option<(u64, u64)>,
        data: Bytes,
    ) -> StoreResult<u64> {
        self.admit_write().await?;
        let (repo, mut session) = self.take_session(id).await?;
        let offset = session.hasher.len();
        let check = match range {
            Some((start, _)) if start != offset => Err(StoreError::BlobUploadInvalid {
                reason: format!("chunk starts at {start}, upload is at {offset}"),
            }),
            // `end` is inclusive and client-chosen: `0-18446744073709551615`
            // is a length one past u64, so the arithmetic is checked.
            Some((start, end))
                if end
                    .checked_sub(start)
                    .and_then(|n| n.checked_add(1))
                    .is_none_or(|len| len != data.len() as u64) =>
            {
                Err(StoreError::SizeInvalid {
                    reason: format!(
                        "range {start}-{end} does not match a {}-byte chunk",
                        data.len()
                    ),
                })
            }
            _ => Ok(()),
        };
        if let Err(e) = check {
            self.inner.uploads.put_back(id, session);
            return Err(e);
        }
        let written = async {
            self.write_session(&mut session, data).await?;
            self.record_session(id, &repo, &mut session).await
        }
        .await;
        self.end_call(id, session, written)
    }

    /// Appends `data` to session `id` without acknowledging it: a crash
    /// may lose it until [`Store::sync_upload`] returns. For a body
    /// streamed in pieces, acknowledged once at its end (one fsync and
    /// one record per request, not per piece). Returns the new offset.
    pub async fn append_upload(&self, id: &str, data: Bytes) -> StoreResult<u64> {
        self.admit_write().await?;
        let (_, mut session) = self.take_session(id).await?;
        let written = self.write_session(&mut session, data).await;
        self.end_call(id, session, written)
    }

    /// Acknowledges what session `id` received: durable and recorded on
    /// return. Returns the offset.
    pub async fn sync_upload(&self, id: &str) -> StoreResult<u64> {
        let (repo, mut session) = self.take_session(id).await?;
        let recorded = self.record_session(id, &repo, &mut session).await;
        self.end_call(id, session, recorded)
    }

    async fn write_session(&self, session: &mut SessionIo, data: Bytes) -> StoreResult<()> {
        session.hasher.update(&data);
        Ok(session.writer.write(data).await?)
    }

    /// Ends a call on a session: idle again at its new offset, or, if the
    /// call failed in its writer, back to its last acknowledged offset
    /// (the writer is dropped; the next call resumes from the record).
    fn end_call(&self, id: &str, session: SessionIo, result: StoreResult<()>) -> StoreResult<u64> {
        match result {
            Ok(()) => {
                let offset = session.hasher.len();
                self.inner.uploads.put_back(id, session);
                Ok(offset)
            }
            Err(e) => {
                drop(session);
                self.inner.uploads.fall_back(id);
                Err(e)
            }
        }
    }

    /// Where upload `id` stands.
    pub async fn upload_status(&self, id: &str) -> StoreResult<UploadStatus> {
        self.sync_session(id).await?;
        let sessions = self.inner.uploads.sessions.lock().unwrap();
        let s = sessions.get(id).ok_or_else(|| upload_unknown(id))?;
        Ok(UploadStatus {
            repo: s.repo.clone(),
            offset: s.offset,
            started: s.started,
            touched: s.touched,
        })
    }

    /// Abandons upload `id`; nothing of it remains.
    pub async fn cancel_upload(&self, id: &str) -> StoreResult<()> {
        self.sync_session(id).await?;
        let (repo, taken) = self.inner.uploads.take(id)?;
        self.inner.uploads.end(id);
        self.discard_session(id, &repo, taken).await
    }

    /// Completes upload `id` as `digest`, with an optional last chunk.
    ///
    /// The content is checked against `digest` before anything becomes
    /// visible (`DIGEST_INVALID`, and the upload is discarded). sha256 is
    /// hashed while streaming; a sha512 digest costs one read of the staged
    /// file, as in CNCF distribution, since the algorithm is only known now.
    pub async fn finish_upload(
        &self,
        id: &str,
        digest: &Digest,
        last: Option<Bytes>,
    ) -> StoreResult<()> {
        self.admit_write().await?;
        let (repo, session) = self.take_session(id).await?;
        // The slot stays busy until the blob is in the layout: the staged
        // file is in use and the repository is not empty meanwhile.
        let result = self.finish_session(id, &repo, session, digest, last).await;
        self.inner.uploads.end(id);
        result
    }

    async fn finish_session(
        &self,
        id: &str,
        repo: &RepoName,
        mut session: SessionIo,
        digest: &Digest,
        last: Option<Bytes>,
    ) -> StoreResult<()> {
        if let Some(last) = last
            && let Err(e) = self.write_session(&mut session, last).await
        {
            session.writer.abort().await?;
            self.forget_session(id).await?;
            return Err(e);
        }
        let streamed = session.hasher.finish();
        if digest.algorithm() == Algorithm::Sha256 && &streamed != digest {
            session.writer.abort().await?;
            self.forget_session(id).await?;
            return Err(StoreError::DigestMismatch {
                expected: digest.clone(),
                actual: streamed,
            });
        }
        self.ingest_upload(repo, id, digest, session.writer).await
    }

    /// Commits a verified upload and hands it to the layout.
    async fn ingest_upload(
        &self,
        repo: &RepoName,
        id: &str,
        digest: &Digest,
        writer: Box<dyn BlobWriter>,
    ) -> StoreResult<()> {
        let staged = layout::upload(repo, id);
        let committed = writer.commit().await;
        // Published or gone: the record has nothing left to resume.
        self.forget_session(id).await?;
        committed?;
        if digest.algorithm() != Algorithm::Sha256 {
            let actual = Digest::of(digest.algorithm(), &self.driver().get(&staged, None).await?);
            if &actual != digest {
                self.driver().delete(&staged).await?;
                return Err(StoreError::DigestMismatch {
                    expected: digest.clone(),
                    actual,
                });
            }
        }
        let _guard = self.lock(Intent::blob_insert(repo, digest)).await?;
        self.layout().ingest(repo, digest, &staged).await?;
        self.touch(&[Marked::Blob(repo, digest)]).await
    }

    /// A monolithic upload: the whole blob in one call, digest known up
    /// front. Hashed in memory, then handed to the layout directly: nothing
    /// is staged, so a blob the store already has costs no write at all.
    pub async fn push_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        data: Bytes,
    ) -> StoreResult<()> {
        let actual = Digest::of(digest.algorithm(), &data);
        if &actual != digest {
            return Err(StoreError::DigestMismatch {
                expected: digest.clone(),
                actual,
            });
        }
        self.admit_write().await?;
        // The dedupe check (does `_blobstore` hold it?) and the insert are
        // one critical section: a sweep cannot fall between them.
        #[cfg(ocistore_mutation = "split_dedupe")]
        if self.mutation_split_dedupe_hit(repo, digest).await? {
            let _guard = self.lock(Intent::blob_insert(repo, digest)).await?;
            return self.layout().hold_existing(repo, digest).await;
        }
        let _guard = self.lock(Intent::blob_insert(repo, digest)).await?;
        self.ensure_repo(repo).await?;
        self.layout().ingest_bytes(repo, digest, data).await?;
        self.touch(&[Marked::Blob(repo, digest)]).await
    }

    /// MUTATION (c), for the loom suite only: the dedupe check in its own
    /// critical section, released before the insert.
    #[cfg(ocistore_mutation = "split_dedupe")]
    async fn mutation_split_dedupe_hit(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> StoreResult<bool> {
        let _guard = self.lock(Intent::blob_insert(repo, digest)).await?;
        self.ensure_repo(repo).await?;
        Ok(self.layout().blobstore_digests().await?.contains(digest))
    }

    /// The blob's size, if `repo` holds it (HEAD).
    pub async fn stat_blob(&self, repo: &RepoName, digest: &Digest) -> StoreResult<u64> {
        let _guard = self.lock(Intent::blob_read(repo)).await?;
        self.require_repo(repo).await?;
        self.layout()
            .stat(repo, digest)
            .await?
            .ok_or_else(|| blob_unknown(repo, digest))
    }

    /// The whole blob, verified against its digest.
    pub async fn get_blob(&self, repo: &RepoName, digest: &Digest) -> StoreResult<Bytes> {
        self.read_blob(repo, digest, None).await
    }

    /// `range` of the blob; a range past its end is `RangeInvalid`.
    pub async fn get_blob_range(
        &self,
        repo: &RepoName,
        digest: &Digest,
        range: Range<u64>,
    ) -> StoreResult<Bytes> {
        self.read_blob(repo, digest, Some(range)).await
    }

    async fn read_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        range: Option<Range<u64>>,
    ) -> StoreResult<Bytes> {
        let _guard = self.lock(Intent::blob_read(repo)).await?;
        self.require_repo(repo).await?;
        self.layout()
            .read(repo, digest, range)
            .await?
            .ok_or_else(|| blob_unknown(repo, digest))
    }

    /// Makes `digest` available in `to` if `from` holds it, without moving
    /// bytes. `Ok(false)`: `from` does not hold it; the client uploads instead.
    ///
    /// `from` is read without its lock (a plan holds one repository): a
    /// concurrent delete in `from` may win or lose, and either outcome is a
    /// linearisable mount, because the digest lock keeps the bytes in place.
    pub async fn mount_blob(
        &self,
        from: &RepoName,
        to: &RepoName,
        digest: &Digest,
    ) -> StoreResult<bool> {
        self.admit_write().await?;
        let _guard = self.lock(Intent::blob_insert(to, digest)).await?;
        // A failed mount falls back to an upload into `to`, so `to` exists
        // either way.
        self.ensure_repo(to).await?;
        let mounted = if from == to {
            self.layout().stat(to, digest).await?.is_some()
        } else {
            self.layout().mount(from, to, digest).await?
        };
        if mounted {
            self.touch(&[Marked::Blob(to, digest)]).await?;
        }
        Ok(mounted)
    }

    /// Every digest `repo` holds (blobs and manifests), sorted.
    pub async fn repo_blobs(&self, repo: &RepoName) -> StoreResult<Vec<Digest>> {
        let _guard = self.lock(Intent::blob_read(repo)).await?;
        self.require_repo(repo).await?;
        let mut digests = self.layout().repo_digests(repo).await?;
        digests.sort();
        Ok(digests)
    }

    /// Removes `digest` from `repo`. Refused (`DENIED`) while a manifest of
    /// the repository references it, or while it is one of its manifests.
    pub async fn delete_blob(&self, repo: &RepoName, digest: &Digest) -> StoreResult<()> {
        let _guard = self.lock(Intent::blob_remove(repo, digest)).await?;
        let index = self.read_index(repo).await?;
        if self.layout().stat(repo, digest).await?.is_none() {
            return Err(blob_unknown(repo, digest));
        }
        if index.manifests.iter().any(|row| &row.digest == digest) {
            return Err(StoreError::Denied {
                reason: format!("{digest} is a manifest of {repo}; delete the manifest instead"),
            });
        }
        if self.referenced_blobs(repo, &index).await?.contains(digest) {
            return Err(StoreError::Denied {
                reason: format!("{digest} is referenced by a manifest of {repo}"),
            });
        }
        self.layout().remove(repo, digest).await
    }
}

pub(crate) fn blob_unknown(repo: &RepoName, digest: &Digest) -> StoreError {
    StoreError::BlobUnknown {
        repo: repo.to_string(),
        digest: digest.clone(),
    }
}
