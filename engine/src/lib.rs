//! # ocistore engine
//!
//! The storage engine of an OCI image registry built the way zot's storage
//! refactoring proposal (PR #3927) describes: one hidden content-addressed
//! `_blobstore`, per-repository locks, dedupe without marker objects, safe
//! GC, and crash-safe migration from the legacy layout.
//!
//! Read top-down:
//! - [`digest`]: content digests, validated, hashed while streaming.
//! - [`driver`]: where bytes live (`fs`, `object`, `sim`) and the durability contract.
//! - [`meta`]: what the filesystem cannot say (reference index, migration progress).
//!
//! `sync` is the single choke point for concurrency primitives.

pub mod digest;
pub mod driver;
pub mod meta;
mod sync;

pub use digest::{Algorithm, Digest, DigestError, DigestHasher};
