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
pub(crate) use self::repos::list_repos;
pub use self::reserve::{DEFAULT_RESERVE, RESERVE_PATH};

use crate::driver::{CallCounts, Driver, Instrumented, PutMode};
use crate::error::{StoreError, StoreResult};
use crate::layout::{self, BlobLayout, BlobstoreLayout, LayoutKind, LegacyLayout};
use crate::lock::{Intent, LockGuard, LockManager, LockMetrics};
use crate::meta::MetaStore;
use crate::oci::manifest::ImageIndex;
use crate::oci::names::RepoName;
use crate::sync::unmodeled::Mutex;

use crate::root;
pub use crate::root::{CONFIG_PATH, StoreConfig};

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
    uploads: blobs::Uploads,
    /// Space kept aside for removals on a full disk.
    reserve: reserve::Reserve,
    /// Repositories known to exist, so pushes do not stat index.json each time.
    known_repos: Mutex<HashSet<RepoName>>,
    /// Bumped on every index.json write: GC re-checks a repository's
    /// references only when its generation moved (one process per root).
    generations: Mutex<HashMap<RepoName, u64>>,
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
                    return Box::pin(Store::open(driver, meta, config)).await;
                }
            }
        }
        let store = Store::new_unchecked(driver, meta, config);
        store.layout().recover().await?;
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
    ) -> Store {
        let instrumented = Arc::new(Instrumented::new(driver));
        let shared: Arc<dyn Driver> = instrumented.clone();
        let layout: Box<dyn BlobLayout> = match config.layout {
            LayoutKind::Legacy => Box::new(LegacyLayout::new(shared, meta.clone())),
            LayoutKind::Blobstore => Box::new(BlobstoreLayout::new(shared, meta.clone())),
        };
        let instance = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Store {
            inner: Arc::new(Inner {
                config,
                driver: instrumented,
                meta,
                layout,
                locks: LockManager::new(config.policy),
                uploads: blobs::Uploads::default(),
                reserve: reserve::Reserve::default(),
                known_repos: Mutex::new(HashSet::new()),
                generations: Mutex::new(HashMap::new()),
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

    pub(crate) async fn lock(&self, intent: Intent) -> LockGuard {
        self.inner.locks.acquire(&intent).await
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

    // --- index.json -------------------------------------------------------

    /// index.json, parsed (`NameUnknown` if the repository has none).
    pub(crate) async fn read_index(&self, repo: &RepoName) -> StoreResult<ImageIndex> {
        let body = self.read_index_bytes(repo).await?;
        serde_json::from_slice(&body).map_err(|e| corrupt_index(repo, e))
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

    /// Replaces index.json with `index` atomically (the driver's commit protocol).
    pub(crate) async fn write_index(&self, repo: &RepoName, index: &ImageIndex) -> StoreResult<()> {
        let body = serde_json::to_vec(index).expect("index serialises");
        self.write_index_bytes(repo, body).await
    }

    /// [`Store::write_index`] for a removal: works on a full disk (see
    /// [`reserve`]).
    pub(crate) async fn write_index_removing(
        &self,
        repo: &RepoName,
        index: &ImageIndex,
    ) -> StoreResult<()> {
        let body = serde_json::to_vec(index).expect("index serialises");
        self.write_index_bytes_removing(repo, body).await
    }

    /// Replaces index.json with `body`, a serialised [`ImageIndex`].
    pub(crate) async fn write_index_bytes(
        &self,
        repo: &RepoName,
        body: Vec<u8>,
    ) -> StoreResult<()> {
        *self
            .inner
            .generations
            .lock()
            .unwrap()
            .entry(repo.clone())
            .or_default() += 1;
        Ok(self
            .driver()
            .put(
                &layout::index_json(repo),
                Bytes::from(body),
                PutMode::Overwrite,
            )
            .await?)
    }
}

pub(crate) fn corrupt_index(repo: &RepoName, e: serde_json::Error) -> StoreError {
    StoreError::Corrupt(format!("{repo}/index.json: {e}"))
}
