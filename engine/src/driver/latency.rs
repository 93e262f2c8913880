//! Injected latency per call kind: a remote-store model for benches, and the
//! source of virtual time for the simulator (under madsim the sleep is virtual).

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use super::{
    BlobWriter, CallKind, Capabilities, Checkpoint, Driver, DriverPath, DriverResult, Listing,
    ObjectMeta, PutMode,
};

/// How long a call of `kind` moving `bytes` takes.
#[derive(Clone)]
pub struct LatencyModel(Arc<dyn Fn(CallKind, u64) -> Duration + Send + Sync>);

impl LatencyModel {
    pub fn new(f: impl Fn(CallKind, u64) -> Duration + Send + Sync + 'static) -> LatencyModel {
        LatencyModel(Arc::new(f))
    }

    /// The same delay for every call.
    pub fn fixed(per_call: Duration) -> LatencyModel {
        LatencyModel::new(move |_, _| per_call)
    }

    /// A remote store: `per_call` round trip plus `bytes / bytes_per_sec`.
    pub fn remote(per_call: Duration, bytes_per_sec: u64) -> LatencyModel {
        LatencyModel::new(move |_, bytes| {
            per_call + Duration::from_secs_f64(bytes as f64 / bytes_per_sec.max(1) as f64)
        })
    }

    pub fn delay(&self, kind: CallKind, bytes: u64) -> Duration {
        (self.0)(kind, bytes)
    }
}

impl fmt::Debug for LatencyModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LatencyModel(..)")
    }
}

/// Wraps a driver and sleeps before each call per a [`LatencyModel`].
#[derive(Debug)]
pub struct Latency<D> {
    inner: D,
    model: LatencyModel,
}

impl<D: Driver> Latency<D> {
    pub fn new(inner: D, model: LatencyModel) -> Latency<D> {
        Latency { inner, model }
    }

    pub fn inner(&self) -> &D {
        &self.inner
    }

    async fn wait(&self, kind: CallKind, bytes: u64) {
        crate::sync::sleep(self.model.delay(kind, bytes)).await;
    }
}

#[async_trait]
impl<D: Driver> Driver for Latency<D> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn stat(&self, path: &DriverPath) -> DriverResult<ObjectMeta> {
        self.wait(CallKind::Stat, 0).await;
        self.inner.stat(path).await
    }

    async fn get(&self, path: &DriverPath, range: Option<Range<u64>>) -> DriverResult<Bytes> {
        // The delay depends on the bytes, so it comes after the call; the
        // zero sleep before is a scheduling point under loom (the request
        // is in flight) and nothing anywhere else.
        crate::sync::sleep(Duration::ZERO).await;
        let data = self.inner.get(path, range).await?;
        self.wait(CallKind::Get, data.len() as u64).await;
        Ok(data)
    }

    async fn writer(&self, path: &DriverPath, mode: PutMode) -> DriverResult<Box<dyn BlobWriter>> {
        Ok(Box::new(SlowWriter {
            inner: self.inner.writer(path, mode).await?,
            model: self.model.clone(),
        }))
    }

    async fn resume_writer(
        &self,
        path: &DriverPath,
        mode: PutMode,
        checkpoint: &Checkpoint,
    ) -> DriverResult<Box<dyn BlobWriter>> {
        self.wait(CallKind::Stat, 0).await;
        Ok(Box::new(SlowWriter {
            inner: self.inner.resume_writer(path, mode, checkpoint).await?,
            model: self.model.clone(),
        }))
    }

    async fn list(&self, prefix: Option<&DriverPath>) -> DriverResult<Vec<DriverPath>> {
        self.wait(CallKind::List, 0).await;
        self.inner.list(prefix).await
    }

    async fn list_dir(&self, prefix: Option<&DriverPath>) -> DriverResult<Listing> {
        self.wait(CallKind::List, 0).await;
        self.inner.list_dir(prefix).await
    }

    async fn delete(&self, path: &DriverPath) -> DriverResult<()> {
        self.wait(CallKind::Delete, 0).await;
        self.inner.delete(path).await
    }

    async fn hard_link(&self, src: &DriverPath, dst: &DriverPath) -> DriverResult<()> {
        self.wait(CallKind::Link, 0).await;
        self.inner.hard_link(src, dst).await
    }

    async fn rename(&self, src: &DriverPath, dst: &DriverPath) -> DriverResult<()> {
        self.wait(CallKind::Rename, 0).await;
        self.inner.rename(src, dst).await
    }

    async fn copy(&self, src: &DriverPath, dst: &DriverPath, mode: PutMode) -> DriverResult<()> {
        self.wait(CallKind::Copy, 0).await;
        self.inner.copy(src, dst, mode).await
    }

    async fn sync_dir(&self, dir: Option<&DriverPath>) -> DriverResult<()> {
        if !self.inner.capabilities().durable_on_return {
            self.wait(CallKind::Sync, 0).await;
        }
        self.inner.sync_dir(dir).await
    }

    async fn get_versioned(
        &self,
        path: &DriverPath,
    ) -> DriverResult<(Bytes, super::ObjectVersion)> {
        crate::sync::sleep(Duration::ZERO).await;
        let (data, version) = self.inner.get_versioned(path).await?;
        self.wait(CallKind::Get, data.len() as u64).await;
        Ok((data, version))
    }

    /// One PUT: the transfer and its round trip before the swap lands.
    async fn put_if_version(
        &self,
        path: &DriverPath,
        data: Bytes,
        expected: Option<&super::ObjectVersion>,
    ) -> DriverResult<super::ObjectVersion> {
        self.wait(CallKind::Put, data.len() as u64).await;
        self.inner.put_if_version(path, data, expected).await
    }

    async fn leftovers(&self, prefix: Option<&DriverPath>) -> DriverResult<Vec<super::Leftover>> {
        self.wait(CallKind::List, 0).await;
        self.inner.leftovers(prefix).await
    }

    async fn remove_leftover(&self, leftover: &super::Leftover) -> DriverResult<()> {
        self.wait(CallKind::Delete, 0).await;
        self.inner.remove_leftover(leftover).await
    }
}

/// Charges the transfer and one round trip at commit, as one PUT would.
struct SlowWriter {
    inner: Box<dyn BlobWriter>,
    model: LatencyModel,
}

#[async_trait]
impl BlobWriter for SlowWriter {
    async fn write(&mut self, chunk: Bytes) -> DriverResult<()> {
        self.inner.write(chunk).await
    }

    fn written(&self) -> u64 {
        self.inner.written()
    }

    async fn commit(self: Box<Self>) -> DriverResult<()> {
        let delay = self.model.delay(CallKind::Put, self.inner.written());
        crate::sync::sleep(delay).await;
        self.inner.commit().await
    }

    async fn abort(self: Box<Self>) -> DriverResult<()> {
        self.inner.abort().await
    }

    /// One round trip (an fsync, or an object store's part upload). A
    /// zero delay is no call at all: under loom it adds no scheduling
    /// point, so the models' search stays the size of their operations'.
    async fn checkpoint(&mut self) -> DriverResult<Checkpoint> {
        let delay = self.model.delay(CallKind::Sync, 0);
        if !delay.is_zero() {
            crate::sync::sleep(delay).await;
        }
        self.inner.checkpoint().await
    }

    async fn read_staged(&mut self, range: Range<u64>) -> DriverResult<Bytes> {
        let data = self.inner.read_staged(range).await?;
        crate::sync::sleep(self.model.delay(CallKind::Get, data.len() as u64)).await;
        Ok(data)
    }
}
