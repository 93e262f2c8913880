//! # pgmeta: the shared state of several instances, on PostgreSQL
//!
//! DESIGN §15: when several `ocistore serve` instances share one object
//! store, what the in-process store kept in memory or in a local file must
//! live in an existing distributed engine. This crate puts it in PostgreSQL:
//!
//! - [`PgMeta`]: the engine's [`engine::meta::MetaStore`] (reference rows,
//!   dedupe index, migration progress, GC marks, settings, and any table the
//!   engine adds: rows are keyed by the table's name, so there is nothing to
//!   create per table).
//! - [`PgLocks`]: the engine's [`engine::lock::LockService`] on advisory
//!   locks, the same plans in the same canonical order as the in-process
//!   lock manager; a lost connection releases its locks.
//!
//! Everything runs on real tokio (the engine's madsim and loom builds never
//! see this crate), over a small pool of connections ([`pool`]).

mod locks;
mod meta;
mod pool;

pub use locks::PgLocks;
pub use meta::PgMeta;
pub use pool::PgError;
