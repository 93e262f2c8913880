//! # ocistore engine
//!
//! The storage engine of an OCI image registry built the way zot's storage
//! refactoring proposal (PR #3927) describes: one hidden content-addressed
//! `_blobstore`, per-repository locks, dedupe without marker objects, safe
//! GC, and crash-safe migration from the legacy layout.
//!
//! Read top-down:
//! - [`store`]: the operations (repos, uploads, blobs, manifests, referrers, fsck).
//! - [`root`]: what a root says about itself (its configuration, migration state).
//! - [`gc`]: garbage collection without stop-the-world.
//! - [`migrate`]: legacy -> blobstore, in place (crash-safe) or side by side.
//! - [`lock`]: the lock manager, the three policies, the lock-plan table.
//! - [`layout`]: where blobs live and how references are recorded (legacy, blobstore).
//! - [`meta`]: what the filesystem cannot say (reference rows, dedupe index, progress).
//! - [`driver`]: where bytes live (`fs`, `object`, `sim`) and the durability contract.
//! - [`oci`], [`digest`]: names, manifests and digests, validated at the edge.
//!
//! `sync` is the single choke point for concurrency primitives.

pub mod digest;
pub mod driver;
pub mod error;
pub mod gc;
mod indexed_map;
pub mod layout;
mod lease;
pub mod lock;
pub mod meta;
pub mod migrate;
pub mod oci;
pub mod root;
pub mod store;
mod sync;

pub use digest::{Algorithm, Digest, DigestError, DigestHasher};
pub use error::{ErrorCode, StoreError, StoreResult};
pub use layout::LayoutKind;
pub use lock::LockPolicy;
pub use oci::{Reference, RepoName, Tag};
pub use store::{Store, StoreConfig};

/// The known concurrency bug this build injects, if any (`OCISTORE_MUTATION`
/// at build time, see engine/build.rs): only the loom suite's mutation
/// checks build one, and they check this to know the flag took effect.
#[doc(hidden)]
pub const INJECTED_MUTATION: Option<&str> = {
    #[cfg(ocistore_mutation = "inverted_order")]
    let m = Some("inverted_order");
    #[cfg(ocistore_mutation = "sweep_without_recheck")]
    let m = Some("sweep_without_recheck");
    #[cfg(ocistore_mutation = "split_dedupe")]
    let m = Some("split_dedupe");
    #[cfg(ocistore_mutation = "gc_without_touch_recheck")]
    let m = Some("gc_without_touch_recheck");
    #[cfg(not(ocistore_mutation))]
    let m = None;
    m
};
