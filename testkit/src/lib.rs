//! # testkit: shared by the tests, benches and the simulator, never shipped
//!
//! - [`driver_conformance`]: one suite of assertions run against every
//!   storage driver and wrapper (CNCF distribution's storage driver suites).
//! - [`meta_conformance`]: the same for every metadata store, restarts included.
//! - [`oci`]: image manifests, indexes and referrers built from blobs;
//!   no test writes manifest JSON by hand.
//! - [`pattern`]: test data that differs per seed.
//! - [`moto`]: a local S3 API (`moto_server`) for the `s3` driver's tests.
//! - [`Tmpfs`]: a small real file system that fills up, for full-disk tests.
//! - [`Postgres`]: a throwaway PostgreSQL cluster, for the shared metadata
//!   and locks of several instances.
//!
//! The engine library carries none of this; its tests, benches and
//! examples take it as a dev-dependency.

pub mod driver_conformance;
pub mod meta_conformance;
pub mod moto;
pub mod oci;
mod postgres;
mod tmpfs;

pub use postgres::Postgres;
pub use tmpfs::Tmpfs;

use bytes::Bytes;

/// Bytes that differ per `seed`, so a mix-up of two objects cannot pass.
pub fn pattern(seed: u64, len: usize) -> Bytes {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out.into()
}
