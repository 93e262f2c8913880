//! Helpers shared by the store's test files: a store per configuration,
//! images to push, and faults the driver API cannot express.
#![allow(dead_code)] // each test file uses a different part

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use engine::driver::{
    BlobWriter, Driver, DriverPath, DriverResult, FsDriver, Intercepted, ObjectDriver, PutMode,
    SimDisk, SimDriver,
};
use engine::meta::MemoryMeta;
use engine::oci::media;
use engine::{Digest, LayoutKind, LockPolicy, Reference, RepoName, Store, StoreConfig};
use testkit::{oci, pattern};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Fs,
    Sim,
    ObjectMemory,
    ObjectDir,
    /// The `s3` driver on a fresh bucket of the process's moto_server;
    /// not in [`Backend::ALL`]: a real server costs milliseconds a call,
    /// so the suites that run on it say so.
    S3,
}

impl Backend {
    pub const ALL: [Backend; 4] = [
        Backend::Fs,
        Backend::Sim,
        Backend::ObjectMemory,
        Backend::ObjectDir,
    ];
}

/// A fresh store and what it stands on.
pub struct Harness {
    pub store: Store,
    pub backend: Backend,
    pub disk: Option<Arc<SimDisk>>,
    pub root: Option<PathBuf>,
    pub label: String,
    _dir: Option<tempfile::TempDir>,
}

/// A fresh driver of `backend` (rooted at `root` where it has a directory),
/// with its sim disk if it has one.
fn backend_driver(
    backend: Backend,
    root: &std::path::Path,
) -> (Arc<dyn Driver>, Option<Arc<SimDisk>>) {
    match backend {
        Backend::Fs => (Arc::new(FsDriver::open(root).unwrap()), None),
        Backend::Sim => {
            let d = SimDisk::new();
            (Arc::new(SimDriver::on(d.clone())), Some(d))
        }
        Backend::ObjectMemory => (Arc::new(ObjectDriver::in_memory()), None),
        Backend::ObjectDir => (Arc::new(ObjectDriver::in_dir(root).unwrap()), None),
        Backend::S3 => (Arc::new(s3_driver("store")), None),
    }
}

/// A driver on a fresh bucket of this process's moto_server.
pub fn s3_driver(hint: &str) -> ocistore_s3::S3Driver {
    let moto = testkit::moto::Moto::shared();
    ocistore_s3::S3Driver::open(ocistore_s3::S3Config::for_test_server(
        moto.endpoint(),
        moto.bucket(hint),
    ))
    .unwrap()
}

pub async fn harness(layout: LayoutKind, policy: LockPolicy, backend: Backend) -> Harness {
    harness_wrapped(layout, policy, backend, |d| d).await
}

/// [`harness`] with the driver wrapped by `wrap` (a fault or a gate).
pub async fn harness_wrapped(
    layout: LayoutKind,
    policy: LockPolicy,
    backend: Backend,
    wrap: impl FnOnce(Arc<dyn Driver>) -> Arc<dyn Driver>,
) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let (driver, disk) = backend_driver(backend, &root);
    let store = Store::open(
        wrap(driver),
        Arc::new(MemoryMeta::new()),
        StoreConfig { layout, policy },
    )
    .await
    .unwrap();
    Harness {
        store,
        backend,
        disk,
        root: matches!(backend, Backend::Fs | Backend::ObjectDir).then_some(root),
        label: format!("{layout}/{policy}/{backend:?}"),
        _dir: Some(dir),
    }
}

/// A store that can be opened again over the same driver and metadata
/// store: a restart, or with [`Reopenable::reopen`]`(true)` on the sim
/// disk, a power cut and a restart.
pub struct Reopenable {
    pub store: Store,
    pub driver: Arc<dyn Driver>,
    pub meta: Arc<MemoryMeta>,
    pub disk: Option<Arc<SimDisk>>,
    /// The directory, for the backends that have one.
    pub root: Option<PathBuf>,
    pub label: String,
    _dir: tempfile::TempDir,
}

/// [`harness_wrapped`], keeping what [`Reopenable::reopen`] needs.
pub async fn reopenable(
    layout: LayoutKind,
    policy: LockPolicy,
    backend: Backend,
    wrap: impl FnOnce(Arc<dyn Driver>) -> Arc<dyn Driver>,
) -> Reopenable {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let (driver, disk) = backend_driver(backend, &root);
    let driver = wrap(driver);
    let meta = Arc::new(MemoryMeta::new());
    let store = Store::open(driver.clone(), meta.clone(), StoreConfig { layout, policy })
        .await
        .unwrap();
    Reopenable {
        store,
        driver,
        meta,
        disk,
        root: matches!(backend, Backend::Fs | Backend::ObjectDir).then_some(root),
        label: format!("{layout}/{policy}/{backend:?}"),
        _dir: dir,
    }
}

impl Reopenable {
    /// Drops the store and opens it again over the same driver and
    /// metadata; with `crash`, the sim disk loses power first (everything
    /// not yet durable goes). Other backends have no crash: a plain restart.
    pub async fn reopen(&mut self, crash: bool) -> engine::StoreResult<()> {
        let config = self.store.config();
        if crash && let Some(disk) = &self.disk {
            disk.crash();
        }
        self.store = Store::open(self.driver.clone(), self.meta.clone(), config).await?;
        Ok(())
    }
}

/// Every layout x policy x backend.
pub fn all_configs() -> Vec<(LayoutKind, LockPolicy, Backend)> {
    let mut out = Vec::new();
    for layout in [LayoutKind::Legacy, LayoutKind::Blobstore] {
        for policy in LockPolicy::ALL {
            for backend in Backend::ALL {
                out.push((layout, policy, backend));
            }
        }
    }
    out
}

impl Harness {
    /// Flips a byte of the file at `path` in place (bit rot: every hard
    /// link sees it). Object stores have no links, so an overwrite is the same.
    pub async fn corrupt_in_place(&self, path: &str) {
        match self.backend {
            Backend::Sim => assert!(
                self.disk.as_ref().unwrap().corrupt(path),
                "{path} not found"
            ),
            Backend::Fs | Backend::ObjectDir => {
                use std::io::{Read, Seek, SeekFrom, Write};
                let p = self.root.as_ref().unwrap().join(path);
                let mtime = std::fs::metadata(&p).unwrap().modified().unwrap();
                let mut f = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&p)
                    .unwrap();
                let mut b = [0u8];
                f.read_exact(&mut b).unwrap();
                f.seek(SeekFrom::Start(0)).unwrap();
                f.write_all(&[b[0] ^ 0xff]).unwrap();
                // Bit rot does not touch the mtime.
                f.set_modified(mtime).unwrap();
            }
            Backend::ObjectMemory | Backend::S3 => {
                let path = engine::driver::DriverPath::new(path).unwrap();
                let d = self.store.driver();
                let mut bytes = d.get(&path, None).await.unwrap().to_vec();
                bytes[0] ^= 0xff;
                d.put(&path, bytes.into(), engine::driver::PutMode::Overwrite)
                    .await
                    .unwrap();
            }
        }
    }
}

pub fn repo(name: &str) -> RepoName {
    RepoName::parse(name).unwrap()
}

pub fn tag(t: &str) -> Reference {
    Reference::parse(t).unwrap()
}

pub fn blob(seed: u64, len: usize) -> (Digest, Bytes) {
    let data = pattern(seed, len);
    (Digest::sha256(&data), data)
}

/// An image: config, layers, and its OCI manifest.
#[derive(Debug, Clone)]
pub struct Image {
    pub config: (Digest, Bytes),
    pub layers: Vec<(Digest, Bytes)>,
    pub manifest: Bytes,
    pub digest: Digest,
}

pub fn image_with(
    config: (Digest, Bytes),
    layers: Vec<(Digest, Bytes)>,
    subject: Option<&Digest>,
    artifact_type: Option<&str>,
) -> Image {
    let mut m = oci::Image::new(&config, &layers);
    if let Some(s) = subject {
        m = m.subject(oci::Desc::new(media::OCI_MANIFEST, s.clone(), 1));
    }
    if let Some(at) = artifact_type {
        m = m.artifact_type(at);
    }
    let built = m.build();
    Image {
        digest: built.digest,
        config,
        layers,
        manifest: built.bytes,
    }
}

/// An image whose config and `n` layers derive from `seed`.
pub fn image(seed: u64, n: usize) -> Image {
    let config = blob(seed * 1000, 64 + seed as usize % 50);
    let layers = (1..=n as u64)
        .map(|i| blob(seed * 1000 + i, 100 + (i as usize * 37) % 3000))
        .collect();
    image_with(config, layers, None, None)
}

/// Pushes every blob then the manifest, by tag (or by digest with `None`).
pub async fn push_image(store: &Store, r: &RepoName, img: &Image, t: Option<&str>) -> Digest {
    for (d, data) in std::iter::once(&img.config).chain(&img.layers) {
        store.push_blob(r, d, data.clone()).await.unwrap();
    }
    let reference = match t {
        Some(t) => tag(t),
        None => Reference::Digest(img.digest.clone()),
    };
    store
        .put_manifest(r, &reference, media::OCI_MANIFEST, img.manifest.clone())
        .await
        .unwrap()
}

/// An OCI index over `children` (pushed by digest already).
pub fn index_of(children: &[&Image]) -> (Digest, Bytes) {
    let built = oci::Index::new(
        children
            .iter()
            .map(|c| {
                oci::Desc::new(media::OCI_MANIFEST, c.digest.clone(), c.manifest.len())
                    .platform("amd64", "linux")
            })
            .collect(),
    )
    .build();
    (built.digest, built.bytes)
}

/// fsck must find no error.
pub async fn assert_clean(store: &Store, context: &str) {
    let findings = store.fsck().await.unwrap();
    let errors: Vec<_> = findings.iter().filter(|f| f.is_error()).collect();
    assert!(errors.is_empty(), "{context}: fsck found {errors:#?}");
}

/// Holds one write in flight: once armed, the next [`BlobWriter::write`]
/// through a [`Gated`] driver announces itself and waits for
/// [`Gate::release`], so a test can run something while a call is inside.
#[derive(Debug, Default)]
pub struct Gate {
    armed: AtomicBool,
    entered: tokio::sync::Notify,
    released: tokio::sync::Notify,
}

impl Gate {
    pub fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    /// Waits until the armed write is held.
    pub async fn entered(&self) {
        tokio::time::timeout(std::time::Duration::from_secs(30), self.entered.notified())
            .await
            .expect("no write reached the gate");
    }

    pub fn release(&self) {
        self.released.notify_one();
    }
}

/// A driver whose writers stop at a [`Gate`]; everything else passes through.
#[derive(Debug)]
pub struct Gated {
    inner: Arc<dyn Driver>,
    gate: Arc<Gate>,
}

impl Gated {
    pub fn new(inner: Arc<dyn Driver>, gate: Arc<Gate>) -> Intercepted<Gated> {
        Intercepted(Gated { inner, gate })
    }
}

struct GatedWriter {
    inner: Box<dyn BlobWriter>,
    gate: Arc<Gate>,
}

#[async_trait::async_trait]
impl BlobWriter for GatedWriter {
    async fn write(&mut self, chunk: Bytes) -> DriverResult<()> {
        if self.gate.armed.swap(false, Ordering::SeqCst) {
            self.gate.entered.notify_one();
            self.gate.released.notified().await;
        }
        self.inner.write(chunk).await
    }

    fn written(&self) -> u64 {
        self.inner.written()
    }

    async fn commit(self: Box<Self>) -> DriverResult<()> {
        self.inner.commit().await
    }

    async fn abort(self: Box<Self>) -> DriverResult<()> {
        self.inner.abort().await
    }

    async fn checkpoint(&mut self) -> DriverResult<engine::driver::Checkpoint> {
        self.inner.checkpoint().await
    }

    async fn read_staged(&mut self, range: std::ops::Range<u64>) -> DriverResult<Bytes> {
        self.inner.read_staged(range).await
    }
}

#[async_trait::async_trait]
impl engine::driver::Intercept for Gated {
    fn inner(&self) -> &dyn Driver {
        &*self.inner
    }

    async fn writer(&self, path: &DriverPath, mode: PutMode) -> DriverResult<Box<dyn BlobWriter>> {
        Ok(Box::new(GatedWriter {
            inner: self.inner.writer(path, mode).await?,
            gate: self.gate.clone(),
        }))
    }

    async fn resume_writer(
        &self,
        path: &DriverPath,
        mode: PutMode,
        checkpoint: &engine::driver::Checkpoint,
    ) -> DriverResult<Box<dyn BlobWriter>> {
        Ok(Box::new(GatedWriter {
            inner: self.inner.resume_writer(path, mode, checkpoint).await?,
            gate: self.gate.clone(),
        }))
    }
}

/// A driver with faults the real backends show now and then; each is off
/// until a test turns it on.
#[derive(Debug)]
pub struct Faulty {
    inner: Arc<dyn Driver>,
    /// The next delete of a path below this prefix removes the object,
    /// then reports a failure anyway (an object store's DELETE whose
    /// response is lost).
    delete_fails_after_effect: std::sync::Mutex<Option<String>>,
}

impl Faulty {
    pub fn new(inner: Arc<dyn Driver>) -> Arc<Intercepted<Faulty>> {
        Arc::new(Intercepted(Faulty {
            inner,
            delete_fails_after_effect: std::sync::Mutex::new(None),
        }))
    }

    pub fn fail_next_delete_after_effect(&self, prefix: &str) {
        *self.delete_fails_after_effect.lock().unwrap() = Some(prefix.to_owned());
    }
}

#[async_trait::async_trait]
impl engine::driver::Intercept for Faulty {
    fn inner(&self) -> &dyn Driver {
        &*self.inner
    }

    async fn delete(&self, path: &DriverPath) -> DriverResult<()> {
        self.inner.delete(path).await?;
        let mut armed = self.delete_fails_after_effect.lock().unwrap();
        if armed
            .as_deref()
            .is_some_and(|prefix| path.as_str().starts_with(prefix))
        {
            *armed = None;
            return Err(engine::driver::DriverError::Io {
                driver: "faulty",
                op: "delete",
                path: path.to_string(),
                source: std::io::Error::other("connection reset after the delete took effect"),
            });
        }
        Ok(())
    }
}
