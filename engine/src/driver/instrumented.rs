//! Counting and sticky failure, once, for every driver.
//!
//! After an fsync fails, what reached the disk is unknown (Linux may already
//! have dropped the dirty pages it could not write, "fsyncgate"), so carrying
//! on could acknowledge data that is gone. Like redb's checked backend, the
//! first such failure poisons the driver: every later call fails with
//! [`DriverError::Poisoned`] until the store is reopened. "No space" is not
//! sticky: nothing visible changed, and freeing space is the cure.

use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use super::{
    BlobWriter, CallCounters, CallCounts, CallKind, Capabilities, Checkpoint, Driver, DriverError,
    DriverPath, DriverResult, Leftover, Listing, ObjectMeta, ObjectVersion, PutMode,
};
use crate::sync::unmodeled::Mutex;

/// Wraps a driver: counts every call by [`CallKind`] and fails sticky after an fsync error.
#[derive(Debug)]
pub struct Instrumented<D> {
    inner: D,
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    counters: CallCounters,
    poisoned: Mutex<Option<String>>,
}

impl Shared {
    fn enter(&self, name: &'static str, kind: CallKind) -> DriverResult<()> {
        self.refuse_if_poisoned(name)?;
        self.counters.count(kind);
        Ok(())
    }

    fn refuse_if_poisoned(&self, name: &'static str) -> DriverResult<()> {
        match self.poisoned.lock().unwrap().clone() {
            Some(first) => Err(DriverError::Poisoned {
                driver: name,
                first,
            }),
            None => Ok(()),
        }
    }

    fn check<T>(&self, result: DriverResult<T>) -> DriverResult<T> {
        if let Err(e @ DriverError::SyncFailed { .. }) = &result {
            self.poisoned
                .lock()
                .unwrap()
                .get_or_insert_with(|| e.to_string());
        }
        result
    }
}

impl<D: Driver> Instrumented<D> {
    pub fn new(inner: D) -> Instrumented<D> {
        Instrumented {
            inner,
            shared: Arc::default(),
        }
    }

    pub fn inner(&self) -> &D {
        &self.inner
    }

    pub fn counts(&self) -> CallCounts {
        self.shared.counters.snapshot()
    }

    /// The first fsync failure, if one poisoned the driver.
    pub fn poisoned(&self) -> Option<String> {
        self.shared.poisoned.lock().unwrap().clone()
    }

    async fn call<T>(
        &self,
        kind: CallKind,
        f: impl std::future::Future<Output = DriverResult<T>>,
    ) -> DriverResult<T> {
        self.shared.enter(self.inner.name(), kind)?;
        self.shared.check(f.await)
    }
}

#[async_trait]
impl<D: Driver> Driver for Instrumented<D> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn stat(&self, path: &DriverPath) -> DriverResult<ObjectMeta> {
        self.call(CallKind::Stat, self.inner.stat(path)).await
    }

    async fn get(&self, path: &DriverPath, range: Option<Range<u64>>) -> DriverResult<Bytes> {
        let data = self
            .call(CallKind::Get, self.inner.get(path, range))
            .await?;
        self.shared.counters.add_read(data.len() as u64);
        Ok(data)
    }

    async fn writer(&self, path: &DriverPath, mode: PutMode) -> DriverResult<Box<dyn BlobWriter>> {
        self.shared.enter(self.inner.name(), CallKind::Put)?;
        let inner = self.shared.check(self.inner.writer(path, mode).await)?;
        Ok(Box::new(InstrumentedWriter {
            inner,
            shared: self.shared.clone(),
        }))
    }

    async fn resume_writer(
        &self,
        path: &DriverPath,
        mode: PutMode,
        checkpoint: &Checkpoint,
    ) -> DriverResult<Box<dyn BlobWriter>> {
        self.shared.enter(self.inner.name(), CallKind::Put)?;
        let inner = self
            .shared
            .check(self.inner.resume_writer(path, mode, checkpoint).await)?;
        Ok(Box::new(InstrumentedWriter {
            inner,
            shared: self.shared.clone(),
        }))
    }

    async fn put(&self, path: &DriverPath, data: Bytes, mode: PutMode) -> DriverResult<()> {
        let len = data.len() as u64;
        self.call(CallKind::Put, self.inner.put(path, data, mode))
            .await?;
        self.shared.counters.add_written(len);
        Ok(())
    }

    async fn get_versioned(&self, path: &DriverPath) -> DriverResult<(Bytes, ObjectVersion)> {
        let (data, version) = self
            .call(CallKind::Get, self.inner.get_versioned(path))
            .await?;
        self.shared.counters.add_read(data.len() as u64);
        Ok((data, version))
    }

    async fn put_if_version(
        &self,
        path: &DriverPath,
        data: Bytes,
        expected: Option<&ObjectVersion>,
    ) -> DriverResult<ObjectVersion> {
        let len = data.len() as u64;
        let version = self
            .call(
                CallKind::Put,
                self.inner.put_if_version(path, data, expected),
            )
            .await?;
        self.shared.counters.add_written(len);
        Ok(version)
    }

    async fn list(&self, prefix: Option<&DriverPath>) -> DriverResult<Vec<DriverPath>> {
        self.call(CallKind::List, self.inner.list(prefix)).await
    }

    async fn list_dir(&self, prefix: Option<&DriverPath>) -> DriverResult<Listing> {
        self.call(CallKind::List, self.inner.list_dir(prefix)).await
    }

    async fn delete(&self, path: &DriverPath) -> DriverResult<()> {
        self.call(CallKind::Delete, self.inner.delete(path)).await
    }

    async fn hard_link(&self, src: &DriverPath, dst: &DriverPath) -> DriverResult<()> {
        self.call(CallKind::Link, self.inner.hard_link(src, dst))
            .await
    }

    async fn rename(&self, src: &DriverPath, dst: &DriverPath) -> DriverResult<()> {
        self.call(CallKind::Rename, self.inner.rename(src, dst))
            .await
    }

    async fn copy(&self, src: &DriverPath, dst: &DriverPath, mode: PutMode) -> DriverResult<()> {
        self.call(CallKind::Copy, self.inner.copy(src, dst, mode))
            .await
    }

    async fn sync_dir(&self, dir: Option<&DriverPath>) -> DriverResult<()> {
        if self.inner.capabilities().durable_on_return {
            // Nothing to do, and nothing a real backend would bill; but a
            // poisoned driver refuses it like every other call.
            return self.shared.refuse_if_poisoned(self.inner.name());
        }
        self.call(CallKind::Sync, self.inner.sync_dir(dir)).await
    }

    async fn leftovers(&self, prefix: Option<&DriverPath>) -> DriverResult<Vec<Leftover>> {
        self.call(CallKind::List, self.inner.leftovers(prefix))
            .await
    }

    async fn remove_leftover(&self, leftover: &Leftover) -> DriverResult<()> {
        self.call(CallKind::Delete, self.inner.remove_leftover(leftover))
            .await
    }
}

/// Counts one Put per stream (at `writer`) and the bytes as they pass.
struct InstrumentedWriter {
    inner: Box<dyn BlobWriter>,
    shared: Arc<Shared>,
}

#[async_trait]
impl BlobWriter for InstrumentedWriter {
    async fn write(&mut self, chunk: Bytes) -> DriverResult<()> {
        let len = chunk.len() as u64;
        self.shared.check(self.inner.write(chunk).await)?;
        self.shared.counters.add_written(len);
        Ok(())
    }

    fn written(&self) -> u64 {
        self.inner.written()
    }

    async fn commit(self: Box<Self>) -> DriverResult<()> {
        if let Some(first) = self.shared.poisoned.lock().unwrap().clone() {
            return Err(DriverError::Poisoned {
                driver: "instrumented",
                first,
            });
        }
        let shared = self.shared.clone();
        shared.check(self.inner.commit().await)
    }

    async fn abort(self: Box<Self>) -> DriverResult<()> {
        self.inner.abort().await
    }

    /// One Sync call; a failed fsync poisons the driver as a commit's does.
    async fn checkpoint(&mut self) -> DriverResult<Checkpoint> {
        self.shared.enter("instrumented", CallKind::Sync)?;
        self.shared.check(self.inner.checkpoint().await)
    }

    async fn read_staged(&mut self, range: Range<u64>) -> DriverResult<Bytes> {
        self.shared.enter("instrumented", CallKind::Get)?;
        let data = self.shared.check(self.inner.read_staged(range).await)?;
        self.shared.counters.add_read(data.len() as u64);
        Ok(data)
    }
}
