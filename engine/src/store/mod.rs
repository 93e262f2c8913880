//! The OCI store: repositories, blobs, uploads, manifests, tags and
//! referrers over a driver, a metadata store, a layout and a lock policy.
//!
//! Every operation names its lock [`Intent`] once, at the top, and holds the
//! guard for its whole critical section; the table of intents per operation
//! is in [`crate::lock`]. Inputs arrive as parsed types ([`RepoName`],
//! [`Digest`], [`Reference`]): parsing is where hostile strings stop.

mod blobs;
mod fsck;
mod manifests;
mod probe;
mod repos;
mod reserve;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use bytes::Bytes;

pub use self::blobs::UploadStatus;
pub use self::fsck::{Finding, FindingKind};
pub use self::manifests::StoredManifest;
pub use self::repos::MAX_PAGE;
pub(crate) use self::repos::{list_repos, walk_repo_dirs};
pub use self::reserve::{DEFAULT_RESERVE, RESERVE_PATH};

use crate::driver::{CallCounts, Driver, Instrumented, ObjectVersion, PutMode};
use crate::error::{StoreError, StoreResult};
use crate::layout::{self, BlobLayout, BlobstoreLayout, LayoutKind, LegacyLayout};
use crate::lock::{HeldLocks, Intent, LockError, LockGuard, LockManager, LockMetrics, LockService};
use crate::meta::MetaStore;
use crate::oci::manifest::ImageIndex;
use crate::oci::names::RepoName;
use crate::sync::unmodeled::Mutex;

use crate::root;
pub use crate::root::{CONFIG_PATH, StoreConfig};

/// Parsed index.json files kept before the cache starts over (bounded memory).
const PARSED_INDEX_LIMIT: usize = 1024;

/// Counters a report wants from a store.
#[derive(Debug, Clone)]
pub struct StoreMetrics {
    pub locks: LockMetrics,
    pub calls: CallCounts,
}

/// A registry's storage engine.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    config: StoreConfig,
    driver: Arc<Instrumented<Arc<dyn Driver>>>,
    meta: Arc<dyn MetaStore>,
    layout: Box<dyn BlobLayout>,
    locks: LockManager,
    /// With several instances over one store (DESIGN §15): the locks they
    /// share, taken after this process's own for the same plan.
    shared_locks: Option<Arc<dyn LockService>>,
    uploads: blobs::Uploads,
    /// Space kept aside for removals on a full disk.
    reserve: reserve::Reserve,
    /// Repositories known to exist, so pushes do not stat index.json each time.
    known_repos: Mutex<HashSet<RepoName>>,
    /// Bumped on every index.json write: GC re-checks a repository's
    /// references only when its generation moved (one process per root).
    generations: Mutex<HashMap<RepoName, u64>>,
    /// Per repository, index.json's bytes as last read and their parse.
    parsed_indexes: Mutex<HashMap<RepoName, (Bytes, Arc<ImageIndex>)>>,
    id_counter: AtomicU64,
    instance: u64,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("config", &self.inner.config)
            .field("driver", &self.inner.driver.name())
            .finish()
    }
}

impl Store {
    /// Opens the store at the driver's root, creating its configuration on
    /// first use. A root created with another layout or policy is refused:
    /// reading a legacy root as a blobstore one would hide every blob.
    pub async fn open(
        driver: Arc<dyn Driver>,
        meta: Arc<dyn MetaStore>,
        config: StoreConfig,
    ) -> StoreResult<Store> {
        Store::open_with(driver, meta, config, None).await
    }

    /// [`Store::open`] for one of several instances over one store: `meta`
    /// is shared by all of them, and every lock plan is also taken in
    /// `shared_locks` (DESIGN §15).
    pub async fn open_shared(
        driver: Arc<dyn Driver>,
        meta: Arc<dyn MetaStore>,
        config: StoreConfig,
        shared_locks: Arc<dyn LockService>,
    ) -> StoreResult<Store> {
        Store::open_with(driver, meta, config, Some(shared_locks)).await
    }

    async fn open_with(
        driver: Arc<dyn Driver>,
        meta: Arc<dyn MetaStore>,
        config: StoreConfig,
        shared_locks: Option<Arc<dyn LockService>>,
    ) -> StoreResult<Store> {
        match root::read_config(&*driver).await? {
            Some(stored) => {
                if stored.layout == LayoutKind::Legacy && config.layout == LayoutKind::Blobstore {
                    return Err(StoreError::Denied {
                        reason: "this root uses the legacy layout: convert it with `ocistore migrate` (in place) \
                                 or `ocistore sync` (side by side) before opening it as blobstore"
                            .into(),
                    });
                }
                if stored != config {
                    return Err(StoreError::Denied {
                        reason: format!(
                            "this root was created with layout {} and policy {}, not layout {} and policy {}",
                            stored.layout, stored.policy, config.layout, config.policy
                        ),
                    });
                }
                if root::migration_in_progress(&*meta).await? {
                    return Err(StoreError::Denied {
                        reason: "an in-place migration of this root is unfinished: run `ocistore migrate` to complete it".into(),
                    });
                }
            }
            None => {
                if !root::create_config(&*driver, config).await? {
                    // Another opener created it first: check against theirs.
                    return Box::pin(Store::open_with(driver, meta, config, shared_locks)).await;
                }
            }
        }
        if shared_locks.is_some() && config.layout != LayoutKind::Blobstore {
            return Err(StoreError::Denied {
                reason:
                    "several instances share only a blobstore root (the legacy layout's dedupe \
                         index is rewritten in place)"
                        .into(),
            });
        }
        let mut store = Store::new_unchecked(driver, meta, config, shared_locks.is_some());
        if shared_locks.is_some() {
            probe::conditional_writes(store.driver(), &store.instance_name()).await?;
        }
        Arc::get_mut(&mut store.inner)
            .expect("not shared yet")
            .shared_locks = shared_locks;
        store.layout().recover().await?;
        store.restore_uploads().await?;
        Ok(store)
    }

    /// The configuration a root was created with, if any.
    pub async fn stored_config(driver: &dyn Driver) -> StoreResult<Option<StoreConfig>> {
        root::read_config(driver).await
    }

    fn new_unchecked(
        driver: Arc<dyn Driver>,
        meta: Arc<dyn MetaStore>,
        config: StoreConfig,
        shared: bool,
    ) -> Store {
        let instrumented = Arc::new(Instrumented::new(driver));
        let driver_for_layout: Arc<dyn Driver> = instrumented.clone();
        let layout: Box<dyn BlobLayout> = match config.layout {
            LayoutKind::Legacy => Box::new(LegacyLayout::new(driver_for_layout, meta.clone())),
            LayoutKind::Blobstore if shared => {
                Box::new(BlobstoreLayout::new_shared(driver_for_layout, meta.clone()))
            }
            LayoutKind::Blobstore => {
                Box::new(BlobstoreLayout::new(driver_for_layout, meta.clone()))
            }
        };
        // One process alone needs no more than the start time; several
        // instances may start in the same nanosecond.
        let instance = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ if shared { random_u64() } else { 0 };
        Store {
            inner: Arc::new(Inner {
                config,
                driver: instrumented,
                meta,
                layout,
                locks: LockManager::new(config.policy),
                shared_locks: None,
                uploads: blobs::Uploads::default(),
                reserve: reserve::Reserve::default(),
                known_repos: Mutex::new(HashSet::new()),
                generations: Mutex::new(HashMap::new()),
                parsed_indexes: Mutex::new(HashMap::new()),
                id_counter: AtomicU64::new(0),
                instance,
            }),
        }
    }

    pub fn config(&self) -> StoreConfig {
        self.inner.config
    }

    pub fn metrics(&self) -> StoreMetrics {
        StoreMetrics {
            locks: self.inner.locks.metrics(),
            calls: self.inner.driver.counts(),
        }
    }

    /// Lock acquisitions of one domain and mode so far (cheap).
    pub fn lock_acquisitions(&self, domain: crate::lock::Domain, mode: crate::lock::Mode) -> u64 {
        self.inner.locks.acquisitions(domain, mode)
    }

    /// Live per-repository and per-digest locks (bounded by contention).
    pub fn lock_table_sizes(&self) -> (usize, usize) {
        self.inner.locks.table_sizes()
    }

    /// The driver the store writes through (instrumented).
    pub fn driver(&self) -> &dyn Driver {
        &*self.inner.driver
    }

    pub fn meta(&self) -> &dyn MetaStore {
        &*self.inner.meta
    }

    pub(crate) fn layout(&self) -> &dyn BlobLayout {
        &*self.inner.layout
    }

    /// Takes `intent`'s locks: this process's, then the shared ones.
    pub(crate) async fn lock(&self, intent: Intent) -> StoreResult<StoreGuard> {
        let plan = intent.plan(self.inner.config.policy);
        let local = self.inner.locks.acquire_plan(&plan).await;
        let shared = match &self.inner.shared_locks {
            Some(service) => Some(service.acquire(&plan).await?),
            None => None,
        };
        Ok(StoreGuard {
            shared,
            _local: local,
        })
    }

    /// Whether several instances share this store (and its locks).
    pub(crate) fn is_shared(&self) -> bool {
        self.inner.shared_locks.is_some()
    }

    /// This instance's name among several (a lease's holder).
    pub fn instance_name(&self) -> String {
        format!("{:016x}", self.inner.instance)
    }

    fn next_id(&self) -> String {
        let n = self.inner.id_counter.fetch_add(1, Ordering::Relaxed);
        format!("{:016x}-{n:08x}", self.inner.instance)
    }

    pub(crate) fn uploads(&self) -> &blobs::Uploads {
        &self.inner.uploads
    }

    /// How many times `repo`'s index.json was written by this process.
    pub(crate) fn generation(&self, repo: &RepoName) -> u64 {
        self.inner
            .generations
            .lock()
            .unwrap()
            .get(repo)
            .copied()
            .unwrap_or(0)
    }

    /// What changes whenever `repo`'s index.json is rewritten, for GC's
    /// re-check. One process alone counts its own writes (free); several
    /// instances write each other's index, so then it is a hash of the
    /// bytes as they are now (one read), and those bytes come back too
    /// (`None` when nothing was read, or there is no index.json).
    pub(crate) async fn index_generation(
        &self,
        repo: &RepoName,
    ) -> StoreResult<(u64, Option<Bytes>)> {
        if !self.is_shared() {
            return Ok((self.generation(repo), None));
        }
        match self.read_index_bytes(repo).await {
            Ok(body) => Ok((self.generation_of(repo, Some(&body)), Some(body))),
            Err(StoreError::NameUnknown { .. }) => Ok((self.generation_of(repo, None), None)),
            Err(e) => Err(e),
        }
    }

    /// [`Store::index_generation`] of index.json's bytes the caller has
    /// just read (`None`: it has none), without reading them again: the
    /// generation is then that of exactly what the caller parsed.
    pub(crate) fn generation_of(&self, repo: &RepoName, body: Option<&[u8]>) -> u64 {
        if !self.is_shared() {
            return self.generation(repo);
        }
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        if let Some(body) = body {
            body.hash(&mut h);
        }
        h.finish()
    }

    // --- index.json -------------------------------------------------------

    /// index.json, parsed (`NameUnknown` if the repository has none).
    ///
    /// The bytes are read every time (a crash, or another process on the
    /// same root, may have replaced them); their parse is reused while they
    /// are the bytes parsed last (compared whole: the same bytes parse the
    /// same). Parsing was the largest cost of a tag lookup. A caller that
    /// changes the index takes its own copy (`Arc::unwrap_or_clone`).
    pub(crate) async fn read_index(&self, repo: &RepoName) -> StoreResult<Arc<ImageIndex>> {
        let body = self.read_index_bytes(repo).await?;
        self.parse_index(repo, body)
    }

    /// Parses index.json's bytes, reusing the last parse of this
    /// repository's index while its bytes are unchanged (compared whole).
    fn parse_index(&self, repo: &RepoName, body: Bytes) -> StoreResult<Arc<ImageIndex>> {
        if let Some((bytes, index)) = self.inner.parsed_indexes.lock().unwrap().get(repo)
            && *bytes == body
        {
            return Ok(index.clone());
        }
        // Parsed outside the cache's lock, which every repository's reads take.
        let index: Arc<ImageIndex> =
            Arc::new(serde_json::from_slice(&body).map_err(|e| corrupt_index(repo, e))?);
        let mut parsed = self.inner.parsed_indexes.lock().unwrap();
        if parsed.len() >= PARSED_INDEX_LIMIT {
            parsed.clear();
        }
        parsed.insert(repo.clone(), (body, index.clone()));
        Ok(index)
    }

    /// index.json, parsed, read to be rewritten: the [`IndexBasis`] says
    /// what [`Store::write_index`] may replace.
    pub(crate) async fn read_index_for_update(
        &self,
        repo: &RepoName,
    ) -> StoreResult<(ImageIndex, IndexBasis)> {
        let (body, basis) = self.read_index_bytes_for_update(repo).await?;
        let index = Arc::unwrap_or_clone(self.parse_index(repo, body)?);
        Ok((index, basis))
    }

    /// index.json's bytes, read to be rewritten. With several instances,
    /// with their version: the rewrite is a compare-and-swap against it.
    pub(crate) async fn read_index_bytes_for_update(
        &self,
        repo: &RepoName,
    ) -> StoreResult<(Bytes, IndexBasis)> {
        if !self.is_shared() {
            return Ok((self.read_index_bytes(repo).await?, IndexBasis(None)));
        }
        match self.driver().get_versioned(&layout::index_json(repo)).await {
            Ok((body, version)) => Ok((body, IndexBasis(Some(version)))),
            Err(e) if e.is_not_found() => Err(StoreError::NameUnknown {
                repo: repo.to_string(),
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// index.json's bytes (`NameUnknown` if the repository has none).
    pub(crate) async fn read_index_bytes(&self, repo: &RepoName) -> StoreResult<Bytes> {
        match self.driver().get(&layout::index_json(repo), None).await {
            Ok(body) => Ok(body),
            Err(e) if e.is_not_found() => Err(StoreError::NameUnknown {
                repo: repo.to_string(),
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Replaces index.json with `index` atomically (the driver's commit
    /// protocol), under `held`, the repository's exclusive lock: refused
    /// if that lock may be lost.
    pub(crate) async fn write_index(
        &self,
        repo: &RepoName,
        index: &ImageIndex,
        basis: &IndexBasis,
        held: &StoreGuard,
    ) -> StoreResult<()> {
        let body = serde_json::to_vec(index).expect("index serialises");
        self.write_index_bytes(repo, body.into(), basis, held).await
    }

    /// [`Store::write_index`] for a removal: works on a full disk (see
    /// [`reserve`]).
    pub(crate) async fn write_index_removing(
        &self,
        repo: &RepoName,
        index: &ImageIndex,
        basis: &IndexBasis,
        held: &StoreGuard,
    ) -> StoreResult<()> {
        let body = serde_json::to_vec(index).expect("index serialises");
        self.write_index_bytes_removing(repo, body.into(), basis, held)
            .await
    }

    /// Replaces index.json with `body`, a serialised [`ImageIndex`].
    pub(crate) async fn write_index_bytes(
        &self,
        repo: &RepoName,
        body: Bytes,
        basis: &IndexBasis,
        held: &StoreGuard,
    ) -> StoreResult<()> {
        held.check()?;
        *self
            .inner
            .generations
            .lock()
            .unwrap()
            .entry(repo.clone())
            .or_default() += 1;
        let path = layout::index_json(repo);
        if !self.is_shared() {
            return Ok(self.driver().put(&path, body, PutMode::Overwrite).await?);
        }
        match self
            .driver()
            .put_if_version(&path, body.clone(), basis.0.as_ref())
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.is_precondition_failed() => {
                // A conditional PUT whose answer was lost is sent again by
                // the client library (object_store retries), and the retry
                // is refused by the first attempt's own write: if index.json
                // holds exactly our bytes, the state we meant is there.
                match self.driver().get_versioned(&path).await {
                    Ok((now, _)) if now == body => return Ok(()),
                    Ok(_) => {}
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e.into()),
                }
                // Another instance wrote it under what should have been
                // our exclusive lock: one of us lost its locks. Nothing
                // written; the client may retry.
                Err(StoreError::Lock(LockError::Lost {
                    service: "compare-and-swap",
                    message: format!("{repo}/index.json changed since it was read"),
                }))
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// Random bits that tell apart two instances started in the same
/// nanosecond (simulated instances share one process and one virtual
/// clock). From the OS; the simulator's runtime answers this call from its
/// seed, so a run replays with the same names.
fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    #[cfg(target_os = "linux")]
    // SAFETY: `getrandom` writes at most `bytes.len()` bytes into `bytes`.
    unsafe {
        libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0);
    }
    u64::from_le_bytes(bytes)
}

/// What a rewrite of index.json may replace: with several instances, the
/// version read (compare-and-swap); alone, whatever is there.
#[derive(Debug, Clone)]
pub(crate) struct IndexBasis(Option<ObjectVersion>);

/// The locks of one operation. Shared locks go first when it ends
/// (fields drop in order), the reverse of their acquisition.
pub(crate) struct StoreGuard {
    shared: Option<Box<dyn HeldLocks>>,
    _local: LockGuard,
}

impl StoreGuard {
    /// `Ok` while every lock is certainly held; a holder whose shared locks
    /// may be lost stops before writing.
    pub(crate) fn check(&self) -> StoreResult<()> {
        match &self.shared {
            Some(held) => Ok(held.check()?),
            None => Ok(()),
        }
    }
}

pub(crate) fn corrupt_index(repo: &RepoName, e: serde_json::Error) -> StoreError {
    StoreError::Corrupt(format!("{repo}/index.json: {e}"))
}
