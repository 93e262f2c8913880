//! Wrappers that change one or two calls of a driver and pass the rest on.
//!
//! A test that needs a driver which fails, lies or waits in one place (and
//! the simulator's deliberately broken stores) implements [`Intercept`]:
//! every call forwards to [`Intercept::inner`] unless overridden, so the
//! wrapper states only what it breaks. [`Intercepted`] makes it a
//! [`Driver`]. The instrumented and latency wrappers touch every call and
//! implement [`Driver`] directly.

use std::fmt;
use std::ops::Range;

use async_trait::async_trait;
use bytes::Bytes;

use super::{
    BlobWriter, Capabilities, Checkpoint, Driver, DriverPath, DriverResult, Leftover, Listing,
    ObjectMeta, ObjectVersion, PutMode,
};

/// A driver wrapper: each method forwards to [`Intercept::inner`] unless
/// the wrapper overrides it. The methods are [`Driver`]'s.
#[async_trait]
pub trait Intercept: Send + Sync + fmt::Debug {
    /// The driver every call not overridden goes to.
    fn inner(&self) -> &dyn Driver;

    fn name(&self) -> &'static str {
        self.inner().name()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner().capabilities()
    }
    async fn stat(&self, path: &DriverPath) -> DriverResult<ObjectMeta> {
        self.inner().stat(path).await
    }
    async fn get(&self, path: &DriverPath, range: Option<Range<u64>>) -> DriverResult<Bytes> {
        self.inner().get(path, range).await
    }
    async fn writer(&self, path: &DriverPath, mode: PutMode) -> DriverResult<Box<dyn BlobWriter>> {
        self.inner().writer(path, mode).await
    }
    async fn resume_writer(
        &self,
        path: &DriverPath,
        mode: PutMode,
        checkpoint: &Checkpoint,
    ) -> DriverResult<Box<dyn BlobWriter>> {
        self.inner().resume_writer(path, mode, checkpoint).await
    }
    async fn put(&self, path: &DriverPath, data: Bytes, mode: PutMode) -> DriverResult<()> {
        self.inner().put(path, data, mode).await
    }
    async fn list(&self, prefix: Option<&DriverPath>) -> DriverResult<Vec<DriverPath>> {
        self.inner().list(prefix).await
    }
    async fn list_dir(&self, prefix: Option<&DriverPath>) -> DriverResult<Listing> {
        self.inner().list_dir(prefix).await
    }
    async fn delete(&self, path: &DriverPath) -> DriverResult<()> {
        self.inner().delete(path).await
    }
    async fn hard_link(&self, src: &DriverPath, dst: &DriverPath) -> DriverResult<()> {
        self.inner().hard_link(src, dst).await
    }
    async fn rename(&self, src: &DriverPath, dst: &DriverPath) -> DriverResult<()> {
        self.inner().rename(src, dst).await
    }
    async fn copy(&self, src: &DriverPath, dst: &DriverPath, mode: PutMode) -> DriverResult<()> {
        self.inner().copy(src, dst, mode).await
    }
    async fn sync_dir(&self, dir: Option<&DriverPath>) -> DriverResult<()> {
        self.inner().sync_dir(dir).await
    }
    async fn get_versioned(&self, path: &DriverPath) -> DriverResult<(Bytes, ObjectVersion)> {
        self.inner().get_versioned(path).await
    }
    async fn put_if_version(
        &self,
        path: &DriverPath,
        data: Bytes,
        expected: Option<&ObjectVersion>,
    ) -> DriverResult<ObjectVersion> {
        self.inner().put_if_version(path, data, expected).await
    }
    async fn leftovers(&self, prefix: Option<&DriverPath>) -> DriverResult<Vec<Leftover>> {
        self.inner().leftovers(prefix).await
    }
    async fn remove_leftover(&self, leftover: &Leftover) -> DriverResult<()> {
        self.inner().remove_leftover(leftover).await
    }
}

/// An [`Intercept`] as a [`Driver`] (the impl is `forward_driver!`'s, in
/// the module above).
#[derive(Debug)]
pub struct Intercepted<I>(pub I);

/// The wrapper's own methods (a test arming a fault) stay at hand.
impl<I> std::ops::Deref for Intercepted<I> {
    type Target = I;
    fn deref(&self) -> &I {
        &self.0
    }
}
