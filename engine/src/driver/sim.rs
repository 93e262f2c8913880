//! `sim`: an in-memory disk that loses power like a real one.
//!
//! madsim's own fs does not model power failure (its `sync_all` is a no-op),
//! so this is ours (DESIGN §3). The model, per POSIX and ext4/xfs practice:
//!
//! - A file's **data** survives a crash only up to its last `fsync`.
//! - A **directory entry** (create, rename, link, unlink, mkdir, rmdir)
//!   survives only once its directory is fsynced. Each directory's entries
//!   are persisted independently of every other directory's.
//! - After a crash, an entry whose parent directory did not survive is gone.
//! - Optionally the last unsynced write is **torn**: a prefix of it survives,
//!   or (`torn_inside`) all of its length with a stretch inside it zeroed.
//! - Optionally a read returns **corrupted bytes**: one bit flipped on the
//!   way back, the stored bytes intact (`read_flips`).
//! - A **capacity** makes writes fail with "no space" and change nothing.
//! - An injected **fsync failure** persists nothing and reports an I/O error.
//!
//! Everything is deterministic: ordered maps, counters, a seeded generator.
//! The disk lives outside the simulated node, so it outlives a killed
//! engine; [`SimDisk::crash`] is the power cut.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::hash::BuildHasherDefault;
use std::io;
use std::ops::{Bound, Range};
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;

use super::DriverError;
use super::posix::{FsStat, PosixDriver, PosixFs};
use crate::indexed_map::{IndexedMap, WordHasher};
use crate::sync::unmodeled::Mutex;

/// `sim` driver: the same [`PosixDriver`] as `fs`, over a [`SimDisk`].
pub type SimDriver = PosixDriver<Arc<SimDisk>>;

impl SimDriver {
    /// A driver over `disk`; keep a clone of the `Arc` to crash the disk.
    pub fn on(disk: Arc<SimDisk>) -> SimDriver {
        PosixDriver::new(disk)
    }

    pub fn disk(&self) -> &Arc<SimDisk> {
        self.filesystem()
    }
}

/// Faults to inject, all off by default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimFaults {
    /// Total bytes of file data the disk holds; writes beyond fail with no space.
    pub capacity: Option<u64>,
    /// Lose power when the disk has served this many calls (counted from the
    /// last power-on): the disk reverts to its durable image and refuses every
    /// call until [`SimDisk::power_on`].
    pub crash_after_ops: Option<u64>,
    /// From this many calls on, every call that would allocate (create, write,
    /// mkdir, link) fails with no space, until cleared.
    pub no_space_after_ops: Option<u64>,
    /// On a crash, keep a random prefix of the last unsynced write.
    pub torn_writes: bool,
    /// fsync of files and directories answers success and persists
    /// nothing: a disk that lies about durability, so a crash loses
    /// acknowledged writes. Only for proving that a checker notices.
    pub lying_fsync: bool,
    /// From this many calls on, every fsync (of a file or a directory)
    /// fails with an I/O error and persists nothing, until cleared: the
    /// disk could not write back. The driver reports it as
    /// [`DriverError::SyncFailed`], which poisons an instrumented driver.
    pub fsync_fails_after_ops: Option<u64>,
    /// On a crash, the last unsynced write (if it extended its file) keeps
    /// its whole length but loses a stretch inside it, which reads as
    /// zeros: the file's size reached the disk, one of its sectors did not
    /// (ext4 `data=writeback`). Takes precedence over `torn_writes`.
    pub torn_inside: bool,
    /// Reads that come back with one bit flipped (a bad cable, a DMA
    /// error): the stored bytes stay intact, so reading again is right.
    pub read_flips: Option<ReadFlips>,
}

/// Which reads [`SimFaults::read_flips`] corrupts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadFlips {
    /// About one read in this many (drawn from the disk's seed).
    pub one_in: u64,
    /// Only reads of files whose path contains this (`""`: every file).
    pub path_contains: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    Dir,
    File(u64),
}

/// A file's bytes. Shared once written: a write of a whole file keeps the
/// caller's buffer (`Bytes` never change), and reads, fsync, crashes and
/// the durable image take slices of one buffer instead of copies. A file
/// written in several pieces grows in a buffer of its own until it is
/// synced.
#[derive(Debug)]
enum Content {
    Shared(Bytes),
    Growing(Vec<u8>),
}

impl Default for Content {
    fn default() -> Content {
        Content::Shared(Bytes::new())
    }
}

impl Content {
    fn as_slice(&self) -> &[u8] {
        match self {
            Content::Shared(b) => b,
            Content::Growing(v) => v,
        }
    }

    fn len(&self) -> usize {
        self.as_slice().len()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A read: a slice of the shared buffer, or a copy out of a growing one
    /// (which would otherwise be shared, then copied by the next append).
    fn read(&self, range: Range<usize>) -> Bytes {
        match self {
            Content::Shared(b) => b.slice(range),
            Content::Growing(v) => Bytes::copy_from_slice(&v[range]),
        }
    }

    fn append(&mut self, data: Bytes) {
        match self {
            Content::Shared(b) if b.is_empty() => *self = Content::Shared(data),
            Content::Shared(b) => {
                let mut grown = Vec::with_capacity(b.len() + data.len());
                grown.extend_from_slice(b);
                grown.extend_from_slice(&data);
                *self = Content::Growing(grown);
            }
            Content::Growing(v) => v.extend_from_slice(&data),
        }
    }

    /// Keeps the first `len` bytes (a resumed writer's cut back to its
    /// checkpoint).
    fn truncate(&mut self, len: usize) {
        match self {
            Content::Shared(b) => b.truncate(len),
            Content::Growing(v) => v.truncate(len),
        }
    }

    /// The bytes as one shared buffer (from now on, until the next append):
    /// what fsync makes durable.
    fn share(&mut self) -> Bytes {
        if let Content::Growing(v) = self {
            *self = Content::Shared(Bytes::from(std::mem::take(v)));
        }
        match self {
            Content::Shared(b) => b.clone(),
            Content::Growing(_) => unreachable!("shared just above"),
        }
    }
}

#[derive(Debug, Default)]
struct Inode {
    live: Content,
    /// What a crash leaves: the bytes at the last fsync.
    durable: Bytes,
    modified: Option<SystemTime>,
    /// Open handles; space is freed when this and `links` reach 0.
    open: u32,
    /// Live names pointing here (kept in step by `set_entry`/`remove_entry`).
    links: u64,
    /// Durable names pointing here (kept in step by `fsync_dir`).
    durable_links: u64,
}

#[derive(Debug, Default)]
struct DiskState {
    /// By inode number. Hashed, not ordered: every file operation looks
    /// its inode up, and nothing depends on the order of a walk over all
    /// of them (a crash resets each inode on its own).
    inodes: HashMap<u64, Inode, BuildHasherDefault<WordHasher>>,
    next_inode: u64,
    /// Namespace as running programs see it. The root `""` is implicit.
    /// Hashed as well as ordered: nearly every operation starts with a
    /// lookup by name (in the B-tree alone, the simulator's top `memcmp`).
    live: IndexedMap<String, Entry>,
    /// Namespace as a crash would leave it.
    durable: BTreeMap<String, Entry>,
    /// Bumped by every crash: handles from before it are dead.
    generation: u64,
    powered_off: bool,
    faults: SimFaults,
    ops_since_power_on: u64,
    /// `(inode, length before)` of the last unsynced write, for tearing.
    last_write: Option<(u64, usize)>,
    rng: u64,
    crashes: u64,
    /// Crashes that kept a non-empty prefix of a torn write (or a write
    /// with a hole inside) under a name that survived.
    tears: u64,
    /// Reads answered with a flipped bit ([`SimFaults::read_flips`]).
    flipped_reads: u64,
    /// Per directory, the children whose live entry changed since its last
    /// fsync: what `fsync_dir` has to persist (so it costs the changes, not
    /// the directory's size).
    dirty: BTreeMap<String, BTreeSet<String>>,
    /// Bytes of file data reachable by a live name or an open handle (what
    /// `capacity` limits; space is freed at unlink, as on a real disk).
    used: u64,
    /// Lives of simulated engines ([`PosixDriver::for_life`]) that ended
    /// without a power cut (a killed instance): their temp files are
    /// leftovers.
    ended_lives: BTreeSet<u64>,
}

/// The crash payload carried inside `io::Error` so the driver reports
/// [`DriverError::Crashed`], not a generic I/O error.
#[derive(Debug)]
struct PowerLoss;

impl fmt::Display for PowerLoss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the simulated disk lost power")
    }
}

impl std::error::Error for PowerLoss {}

/// The in-memory disk with a power-failure model.
#[derive(Debug)]
pub struct SimDisk {
    state: Mutex<DiskState>,
    swaps: Arc<crate::sync::RwLock<()>>,
}

/// A handle to an open file: dead after a crash.
#[derive(Debug)]
pub struct SimFile {
    inode: u64,
    generation: u64,
    disk: Arc<SimDisk>,
}

impl Drop for SimFile {
    fn drop(&mut self) {
        let mut st = self.disk.state.lock().unwrap();
        if st.generation == self.generation
            && let Some(inode) = st.inodes.get_mut(&self.inode)
        {
            inode.open -= 1;
            if inode.links == 0 && inode.open == 0 {
                let len = inode.live.len() as u64;
                st.used -= len;
            }
            st.maybe_free(self.inode);
        }
    }
}

/// Where an interior tear of a `len`-byte write falls: a stretch of at
/// most one 512-byte sector, never touching its first or last byte (so the
/// damage is inside the file, not at its end). `None` if too short.
fn hole_inside(len: usize, r: u64) -> Option<Range<usize>> {
    if len < 3 {
        return None;
    }
    let size = (len - 2).min(512);
    let start = 1 + (r % (len - 1 - size) as u64) as usize;
    Some(start..start + size)
}

fn parent_of(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(p, _)| p)
}

fn err(kind: io::ErrorKind) -> io::Error {
    io::Error::from(kind)
}

impl DiskState {
    /// Every call passes here first: power, the op counter, crash injection.
    fn enter(&mut self, allocates: bool) -> io::Result<()> {
        if self.powered_off {
            return Err(io::Error::other(PowerLoss));
        }
        self.ops_since_power_on += 1;
        if self
            .faults
            .crash_after_ops
            .is_some_and(|k| self.ops_since_power_on > k)
        {
            self.lose_power();
            return Err(io::Error::other(PowerLoss));
        }
        if allocates
            && self
                .faults
                .no_space_after_ops
                .is_some_and(|k| self.ops_since_power_on > k)
        {
            return Err(err(io::ErrorKind::StorageFull));
        }
        Ok(())
    }

    /// The injected fsync failure, checked by fsync calls after [`Self::enter`].
    fn fsync_fault(&self) -> io::Result<()> {
        if self
            .faults
            .fsync_fails_after_ops
            .is_some_and(|k| self.ops_since_power_on > k)
        {
            return Err(io::Error::other(
                "simulated EIO: the disk could not write back",
            ));
        }
        Ok(())
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64*: tiny, deterministic, good enough to pick a tear point.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn used(&self) -> u64 {
        self.used
    }

    /// Frees an inode nothing refers to any more: no live name, no durable
    /// name (a crash could bring it back), no open handle.
    fn maybe_free(&mut self, id: u64) {
        if let Some(inode) = self.inodes.get(&id)
            && inode.links == 0
            && inode.open == 0
            && inode.durable_links == 0
        {
            self.inodes.remove(&id);
        }
    }

    fn mark_dirty(&mut self, path: &str) {
        self.dirty
            .entry(parent_of(path).to_owned())
            .or_default()
            .insert(path.to_owned());
    }

    /// Every live namespace change goes through here and `remove_entry`, so
    /// link counts cannot drift from the namespace.
    fn set_entry(&mut self, path: &str, entry: Entry) {
        if let Entry::File(id) = entry {
            self.inodes.get_mut(&id).expect("linked inode exists").links += 1;
        }
        self.mark_dirty(path);
        if let Some(old) = self.live.insert(path.to_owned(), entry) {
            self.unlinked(old);
        }
    }

    fn remove_entry(&mut self, path: &str) {
        if let Some(old) = self.live.remove(path) {
            self.mark_dirty(path);
            self.unlinked(old);
        }
    }

    fn unlinked(&mut self, entry: Entry) {
        if let Entry::File(id) = entry
            && let Some(inode) = self.inodes.get_mut(&id)
        {
            inode.links -= 1;
            if inode.links == 0 && inode.open == 0 {
                self.used -= inode.live.len() as u64;
            }
            self.maybe_free(id);
        }
    }

    /// Persists the entries of `dir` that changed since its last fsync.
    fn persist_dir(&mut self, dir: &str) {
        let Some(changed) = self.dirty.remove(dir) else {
            return;
        };
        for path in changed {
            let new = self.live.get(&path).copied();
            // A directory removed durably takes its entries with it: rmdir
            // needed it empty, so the removals inside it are durable too
            // (else a crash would bring a file back under a removed name).
            if new.is_none() && self.durable.get(&path) == Some(&Entry::Dir) {
                self.persist_dir(&path);
            }
            let old = match new {
                Some(e) => self.durable.insert(path.clone(), e),
                None => self.durable.remove(&path),
            };
            if let Some(Entry::File(id)) = new {
                self.inodes
                    .get_mut(&id)
                    .expect("live inode exists")
                    .durable_links += 1;
            }
            if let Some(Entry::File(id)) = old
                && let Some(inode) = self.inodes.get_mut(&id)
            {
                inode.durable_links -= 1;
                self.maybe_free(id);
            }
        }
    }

    fn is_dir(&self, path: &str) -> bool {
        path.is_empty() || self.live.get(path) == Some(&Entry::Dir)
    }

    fn is_empty_dir(&self, path: &str) -> bool {
        let prefix = format!("{path}/");
        self.is_dir(path)
            && !self
                .live
                .range::<String, _>(prefix.clone()..)
                .next()
                .is_some_and(|(k, _)| k.starts_with(&prefix))
    }

    /// The parent must exist and be a directory.
    fn check_parent(&self, path: &str) -> io::Result<()> {
        let parent = parent_of(path);
        if self.is_dir(parent) {
            Ok(())
        } else if self.live.contains_key(parent) {
            Err(err(io::ErrorKind::NotADirectory))
        } else {
            Err(err(io::ErrorKind::NotFound))
        }
    }

    fn file(&self, path: &str) -> io::Result<u64> {
        match self.live.get(path) {
            Some(Entry::File(id)) => Ok(*id),
            Some(Entry::Dir) => Err(err(io::ErrorKind::IsADirectory)),
            None => Err(err(io::ErrorKind::NotFound)),
        }
    }

    fn handle<'a>(&'a mut self, file: &SimFile) -> io::Result<&'a mut Inode> {
        if file.generation != self.generation {
            return Err(io::Error::other(PowerLoss));
        }
        Ok(self.inodes.get_mut(&file.inode).expect("open inode exists"))
    }

    /// The durable entries whose whole directory chain is durable too:
    /// exactly what a crash leaves reachable.
    fn reachable_durable(&self) -> BTreeMap<String, Entry> {
        let mut reachable = BTreeMap::new();
        for (path, entry) in &self.durable {
            let parent = parent_of(path);
            if parent.is_empty() || reachable.get(parent) == Some(&Entry::Dir) {
                reachable.insert(path.clone(), *entry);
            }
        }
        reachable
    }

    fn lose_power(&mut self) {
        self.crashes += 1;
        self.generation += 1;
        self.powered_off = true;
        let tearing = self.faults.torn_writes || self.faults.torn_inside;
        let torn = self.last_write.take().filter(|_| tearing);
        let tear = torn.map(|t| (t, self.next_random()));
        let inside = self.faults.torn_inside;
        let mut torn_inode = None;
        for (id, inode) in &mut self.inodes {
            inode.open = 0;
            let durable = &inode.durable;
            let live = inode.live.as_slice();
            let mut survivor = durable.clone();
            // A tear keeps part of the last write, and only when that write
            // extended what was durable (an append, as our writers do).
            if let Some(((torn_id, before), r)) = tear
                && torn_id == *id
                && before == durable.len()
                && live.len() > before
                && live.starts_with(durable)
            {
                let written = &live[before..];
                let mut torn = durable.to_vec();
                if inside {
                    if let Some(hole) = hole_inside(written.len(), r) {
                        torn.extend_from_slice(written);
                        torn[before + hole.start..before + hole.end].fill(0);
                        torn_inode = Some(*id);
                    }
                } else {
                    let extra = (r % written.len() as u64) as usize;
                    torn.extend_from_slice(&written[..extra]);
                    if extra > 0 {
                        torn_inode = Some(*id);
                    }
                }
                survivor = Bytes::from(torn);
            }
            inode.live = Content::Shared(survivor);
        }
        let live = self.reachable_durable();
        // A tear counts when a name still reaches the torn bytes.
        if let Some(id) = torn_inode
            && live.values().any(|e| *e == Entry::File(id))
        {
            self.tears += 1;
        }
        for inode in self.inodes.values_mut() {
            inode.links = 0;
            inode.durable_links = 0;
        }
        for entry in live.values() {
            if let Entry::File(id) = entry {
                let inode = self.inodes.get_mut(id).expect("durable inode exists");
                inode.links += 1;
                inode.durable_links += 1;
            }
        }
        self.durable = live.clone();
        self.live = live.into_iter().collect();
        self.dirty.clear();
        self.inodes.retain(|_, inode| inode.links > 0);
        self.used = self.inodes.values().map(|i| i.live.len() as u64).sum(); // all linked now
    }
}

impl SimDisk {
    pub fn new() -> Arc<SimDisk> {
        SimDisk::with_faults(SimFaults::default(), 0x9e37_79b9_7f4a_7c15)
    }

    /// A disk with `faults`; `seed` drives tear points.
    pub fn with_faults(faults: SimFaults, seed: u64) -> Arc<SimDisk> {
        Arc::new(SimDisk {
            state: Mutex::new(DiskState {
                faults,
                rng: seed | 1,
                ..DiskState::default()
            }),
            swaps: Arc::new(crate::sync::RwLock::new(())),
        })
    }

    pub fn set_faults(&self, faults: SimFaults) {
        self.state.lock().unwrap().faults = faults;
    }

    pub fn faults(&self) -> SimFaults {
        self.state.lock().unwrap().faults.clone()
    }

    /// Power cut and immediate restart: everything not durable is lost.
    pub fn crash(&self) {
        let mut st = self.state.lock().unwrap();
        if !st.powered_off {
            st.lose_power();
        }
        st.powered_off = false;
        st.ops_since_power_on = 0;
    }

    /// Power cut; calls fail with [`DriverError::Crashed`] until [`SimDisk::power_on`].
    pub fn power_off(&self) {
        let mut st = self.state.lock().unwrap();
        if !st.powered_off {
            st.lose_power();
        }
    }

    /// Restores power (after a crash, an injected crash, or `power_off`);
    /// the op counter for `crash_after_ops` starts again from zero.
    pub fn power_on(&self) {
        let mut st = self.state.lock().unwrap();
        st.powered_off = false;
        st.ops_since_power_on = 0;
    }

    /// Counts one operation of another component of the same simulated
    /// machine (the metadata store), so crash points fall between disk calls
    /// and metadata commits alike. Fails once the power is gone.
    pub fn tick(&self) -> Result<(), DriverError> {
        self.state
            .lock()
            .unwrap()
            .enter(false)
            .map_err(|_| DriverError::Crashed { driver: "sim" })
    }

    pub fn is_powered_off(&self) -> bool {
        self.state.lock().unwrap().powered_off
    }

    /// Calls served since the last power-on.
    pub fn ops_since_power_on(&self) -> u64 {
        self.state.lock().unwrap().ops_since_power_on
    }

    /// The engine of life `life` ([`PosixDriver::for_life`]) was killed: its
    /// writes in progress are leftovers now.
    pub fn end_life(&self, life: u64) {
        assert_ne!(
            life, 0,
            "life 0 is the single engine's, ended only by a power cut"
        );
        self.state.lock().unwrap().ended_lives.insert(life);
    }

    /// Compare-and-swap on this disk's objects is atomic between every
    /// driver over it: they all take this lock ([`super::ObjectDriver`]).
    pub(crate) fn swap_lock(&self) -> Arc<crate::sync::RwLock<()>> {
        self.swaps.clone()
    }

    /// Power losses so far.
    pub fn crashes(&self) -> u64 {
        self.state.lock().unwrap().crashes
    }

    /// Crashes that tore a write: kept part, not all, of its unsynced
    /// bytes, in a file a name still reaches (a temp name, if the commit
    /// protocol is right). Lets a test of torn writes check that it tore
    /// something that survived the crash.
    pub fn torn_writes_applied(&self) -> u64 {
        self.state.lock().unwrap().tears
    }

    /// Reads answered with a flipped bit so far ([`SimFaults::read_flips`]).
    pub fn flipped_reads(&self) -> u64 {
        self.state.lock().unwrap().flipped_reads
    }

    /// Bytes of file data held (what `capacity` limits).
    pub fn used_bytes(&self) -> u64 {
        self.state.lock().unwrap().used()
    }

    /// Bit rot: flips the first byte of the file at `path`, in place, in
    /// both its live and durable bytes (every hard link sees it). False if
    /// there is no such non-empty file.
    pub fn corrupt(&self, path: &str) -> bool {
        let mut st = self.state.lock().unwrap();
        let Some(Entry::File(id)) = st.live.get(path).copied() else {
            return false;
        };
        let inode = st.inodes.get_mut(&id).expect("linked inode exists");
        if inode.live.is_empty() {
            return false;
        }
        // Buffers are shared (with the writer, with other files): the
        // rotten bytes are a copy.
        let rot = |bytes: &[u8]| {
            let mut rotten = bytes.to_vec();
            if let Some(b) = rotten.first_mut() {
                *b ^= 0xff;
            }
            Bytes::from(rotten)
        };
        inode.live = Content::Shared(rot(inode.live.as_slice()));
        inode.durable = rot(&inode.durable);
        true
    }

    /// Every file path and its bytes as a crash right now would leave them,
    /// without crashing. For checkers that compare images.
    pub fn durable_image(&self) -> BTreeMap<String, Vec<u8>> {
        self.durable_files()
            .into_iter()
            .map(|(path, bytes)| (path, bytes.to_vec()))
            .collect()
    }

    /// Every file as the running system sees it now, with its size, in
    /// path order: what a process listing the disk would find.
    pub fn live_sizes(&self) -> BTreeMap<String, u64> {
        let st = self.state.lock().unwrap();
        st.live
            .iter()
            .filter_map(|(p, e)| match e {
                Entry::File(id) => Some((p.clone(), st.inodes[id].live.len() as u64)),
                Entry::Dir => None,
            })
            .collect()
    }

    /// [`SimDisk::durable_image`] in path order, without copying the bytes.
    pub fn durable_files(&self) -> Vec<(String, Bytes)> {
        let st = self.state.lock().unwrap();
        st.reachable_durable()
            .into_iter()
            .filter_map(|(p, e)| match e {
                Entry::File(id) => Some((p, st.inodes[&id].durable.clone())),
                Entry::Dir => None,
            })
            .collect()
    }

    fn with<T>(
        self: &Arc<Self>,
        allocates: bool,
        f: impl FnOnce(&mut DiskState) -> io::Result<T>,
    ) -> io::Result<T> {
        let mut st = self.state.lock().unwrap();
        st.enter(allocates)?;
        f(&mut st)
    }
}

#[async_trait]
impl PosixFs for Arc<SimDisk> {
    type File = SimFile;

    fn name(&self) -> &'static str {
        "sim"
    }

    async fn create_new(&self, path: &str) -> io::Result<SimFile> {
        let (inode, generation) = self.with(true, |st| {
            st.check_parent(path)?;
            if st.live.contains_key(path) {
                return Err(err(io::ErrorKind::AlreadyExists));
            }
            let id = st.next_inode;
            st.next_inode += 1;
            st.inodes.insert(
                id,
                Inode {
                    modified: Some(SystemTime::now()),
                    open: 1,
                    ..Inode::default()
                },
            );
            st.set_entry(path, Entry::File(id));
            Ok((id, st.generation))
        })?;
        Ok(SimFile {
            inode,
            generation,
            disk: self.clone(),
        })
    }

    async fn open_truncated(&self, path: &str, len: u64) -> io::Result<SimFile> {
        let (inode, generation) = self.with(false, |st| {
            let id = st.file(path)?;
            let inode = st.inodes.get_mut(&id).expect("a name's inode exists");
            let cut = usize::try_from(len).map_err(io::Error::other)?;
            let Some(dropped) = inode.live.len().checked_sub(cut) else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "shorter than its checkpoint",
                ));
            };
            inode.live.truncate(cut);
            inode.open += 1;
            st.used -= dropped as u64;
            if st.last_write.is_some_and(|(w, _)| w == id) {
                st.last_write = None;
            }
            Ok((id, st.generation))
        })?;
        Ok(SimFile {
            inode,
            generation,
            disk: self.clone(),
        })
    }

    async fn write(&self, file: &mut SimFile, data: Bytes) -> io::Result<()> {
        self.with(true, |st| {
            if let Some(cap) = st.faults.capacity
                && st.used() + data.len() as u64 > cap
            {
                return Err(err(io::ErrorKind::StorageFull));
            }
            let inode = st.handle(file)?;
            let before = inode.live.len();
            let len = data.len() as u64;
            inode.live.append(data);
            inode.modified = Some(SystemTime::now());
            st.used += len;
            st.last_write = Some((file.inode, before));
            Ok(())
        })
    }

    async fn fsync(&self, file: &mut SimFile) -> io::Result<()> {
        self.with(false, |st| {
            st.handle(file)?; // a dead handle first: the power is gone
            st.fsync_fault()?;
            if st.faults.lying_fsync {
                return Ok(());
            }
            let inode = st.handle(file)?;
            inode.durable = inode.live.share();
            if st.last_write.is_some_and(|(id, _)| id == file.inode) {
                st.last_write = None;
            }
            Ok(())
        })
    }

    async fn read_at(&self, path: &str, range: Option<Range<u64>>) -> io::Result<Bytes> {
        self.with(false, |st| {
            let id = st.file(path)?;
            let data = &st.inodes[&id].live;
            let range = range.unwrap_or(0..data.len() as u64);
            let (start, end) = (range.start as usize, range.end as usize);
            if end > data.len() || start > end {
                return Err(err(io::ErrorKind::UnexpectedEof));
            }
            let flip = st.faults.read_flips.as_ref().is_some_and(|f| {
                end > start && f.one_in > 0 && path.contains(f.path_contains.as_str())
            });
            if flip {
                let one_in = st.faults.read_flips.as_ref().map_or(1, |f| f.one_in);
                if st.next_random() % one_in == 0 {
                    let mut bytes = st.inodes[&id].live.as_slice()[start..end].to_vec();
                    let bit = st.next_random() % (bytes.len() as u64 * 8);
                    bytes[(bit / 8) as usize] ^= 1 << (bit % 8);
                    st.flipped_reads += 1;
                    return Ok(Bytes::from(bytes));
                }
            }
            Ok(st.inodes[&id].live.read(start..end))
        })
    }

    async fn stat(&self, path: &str) -> io::Result<FsStat> {
        self.with(false, |st| match st.live.get(path) {
            _ if path.is_empty() => Ok(dir_stat()),
            Some(Entry::Dir) => Ok(dir_stat()),
            Some(Entry::File(id)) => {
                let inode = &st.inodes[id];
                Ok(FsStat {
                    is_dir: false,
                    size: inode.live.len() as u64,
                    modified: inode.modified.unwrap_or(SystemTime::UNIX_EPOCH),
                    links: inode.links,
                    file_id: (0, *id),
                })
            }
            None => {
                st.check_parent(path)?;
                Err(err(io::ErrorKind::NotFound))
            }
        })
    }

    async fn mkdir(&self, path: &str) -> io::Result<()> {
        self.with(true, |st| {
            st.check_parent(path)?;
            if st.live.contains_key(path) {
                return Err(err(io::ErrorKind::AlreadyExists));
            }
            st.set_entry(path, Entry::Dir);
            Ok(())
        })
    }

    async fn rmdir(&self, path: &str) -> io::Result<()> {
        self.with(false, |st| {
            if !st.is_dir(path) || path.is_empty() {
                return Err(err(io::ErrorKind::NotFound));
            }
            if !st.is_empty_dir(path) {
                return Err(err(io::ErrorKind::DirectoryNotEmpty));
            }
            st.remove_entry(path);
            Ok(())
        })
    }

    async fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.with(false, |st| {
            let id = st.file(from)?;
            st.check_parent(to)?;
            if st.is_dir(to) {
                return Err(err(io::ErrorKind::IsADirectory));
            }
            if from == to {
                return Ok(());
            }
            st.set_entry(to, Entry::File(id));
            st.remove_entry(from);
            Ok(())
        })
    }

    async fn link(&self, from: &str, to: &str) -> io::Result<()> {
        self.with(true, |st| {
            let id = st.file(from)?;
            st.check_parent(to)?;
            if st.live.contains_key(to) {
                return Err(err(io::ErrorKind::AlreadyExists));
            }
            st.set_entry(to, Entry::File(id));
            Ok(())
        })
    }

    async fn unlink(&self, path: &str) -> io::Result<()> {
        self.with(false, |st| {
            match st.live.get(path) {
                Some(Entry::File(_)) => {}
                Some(Entry::Dir) => return Err(err(io::ErrorKind::NotFound)),
                None => {
                    st.check_parent(path)?;
                    return Err(err(io::ErrorKind::NotFound));
                }
            }
            st.remove_entry(path);
            Ok(())
        })
    }

    async fn fsync_dir(&self, path: &str) -> io::Result<()> {
        self.with(false, |st| {
            st.fsync_fault()?;
            if !st.is_dir(path) {
                return Err(err(io::ErrorKind::NotFound));
            }
            // Persist exactly this directory's entries: the children created,
            // replaced or removed since its last fsync.
            if !st.faults.lying_fsync {
                st.persist_dir(path);
            }
            Ok(())
        })
    }

    async fn read_dir(&self, path: &str) -> io::Result<Vec<(String, bool)>> {
        self.with(false, |st| {
            if !st.is_dir(path) {
                return Err(if st.live.contains_key(path) {
                    err(io::ErrorKind::NotADirectory)
                } else {
                    err(io::ErrorKind::NotFound)
                });
            }
            let prefix = if path.is_empty() {
                String::new()
            } else {
                format!("{path}/")
            };
            // The children, in key order. A child directory's subtree is
            // skipped in one step ("child/..." sorts below "child0"), so a
            // listing costs the children, not every file below them.
            let from = |key: &str| {
                st.live
                    .range::<str, _>((Bound::Included(key), Bound::Unbounded))
            };
            let mut children = Vec::new();
            let mut entries = from(&prefix);
            while let Some((key, entry)) = entries.next() {
                let Some(rest) = key.strip_prefix(&prefix) else {
                    break;
                };
                match rest.find('/') {
                    None => children.push((rest.to_owned(), *entry == Entry::Dir)),
                    Some(slash) => {
                        let past = format!("{prefix}{}0", &rest[..slash]);
                        entries = from(&past);
                    }
                }
            }
            Ok(children)
        })
    }

    fn discard(&self, temp: &str) {
        let _ = self.with(false, |st| {
            if matches!(st.live.get(temp), Some(Entry::File(_))) {
                st.remove_entry(temp);
                let mut dir = parent_of(temp);
                while !dir.is_empty() && st.is_empty_dir(dir) {
                    st.remove_entry(dir);
                    dir = parent_of(dir);
                }
            }
            Ok(())
        });
    }

    fn classify(&self, e: &io::Error) -> Option<DriverError> {
        e.get_ref()
            .is_some_and(|inner| inner.is::<PowerLoss>())
            .then_some(DriverError::Crashed { driver: "sim" })
    }

    /// The boot: everything written before the last power cut was written
    /// by an engine that is gone, whatever process the simulation runs in.
    /// (The driver adds its engine's life in the upper half.)
    fn writer_id(&self) -> u64 {
        self.crashes()
    }

    fn writer_gone(&self, writer: u64, _modified: std::time::SystemTime) -> bool {
        let (life, boot) = (writer >> 32, writer & 0xffff_ffff);
        let st = self.state.lock().unwrap();
        boot < st.crashes || st.ended_lives.contains(&life)
    }
}

fn dir_stat() -> FsStat {
    FsStat {
        is_dir: true,
        size: 0,
        modified: SystemTime::UNIX_EPOCH,
        links: 1,
        // No file has this id (inode numbers count up from 0).
        file_id: (0, u64::MAX),
    }
}
