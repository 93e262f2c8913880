//! The one error type of the driver layer.

use std::io;

use super::{DriverPath, PathError};

pub type DriverResult<T> = Result<T, DriverError>;

/// What a driver call can fail with. Each variant names the driver where it
/// helps the reader of a log find the backend at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DriverError {
    #[error("{path}: not found")]
    NotFound { path: DriverPath },

    #[error("{path}: already exists")]
    AlreadyExists { path: DriverPath },

    /// A compare-and-swap found another version than the one expected:
    /// someone else wrote the object since it was read. Nothing changed.
    #[error("{path}: changed since it was read (compare-and-swap refused)")]
    PreconditionFailed { path: DriverPath },

    #[error(transparent)]
    InvalidPath(#[from] PathError),

    #[error("{path}: range {start}..{end} is outside the object's {size} bytes")]
    InvalidRange {
        path: DriverPath,
        start: u64,
        end: u64,
        size: u64,
    },

    /// The backend is full. Nothing visible changed; freeing space and
    /// retrying is safe.
    #[error("{driver}: no space left on the device")]
    NoSpace { driver: &'static str },

    #[error("{driver}: {op} is not supported by this backend")]
    Unsupported {
        driver: &'static str,
        op: &'static str,
    },

    /// The simulated machine lost power; every call fails until it restarts.
    #[error("{driver}: the disk lost power (simulated crash)")]
    Crashed { driver: &'static str },

    /// An fsync failed. What reached the disk is unknown from here on, so the
    /// instrumented driver refuses every later call (see [`super::Instrumented`]).
    #[error("{driver}: fsync of {path} failed: {source}")]
    SyncFailed {
        driver: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },

    /// A previous fsync failure made this driver unusable.
    #[error("{driver}: refusing calls after an earlier fsync failure: {first}")]
    Poisoned { driver: &'static str, first: String },

    #[error("{driver}: {op} {path}: {source}")]
    Io {
        driver: &'static str,
        op: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
}

impl DriverError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, DriverError::NotFound { .. })
    }

    pub fn is_already_exists(&self) -> bool {
        matches!(self, DriverError::AlreadyExists { .. })
    }

    pub fn is_precondition_failed(&self) -> bool {
        matches!(self, DriverError::PreconditionFailed { .. })
    }

    pub fn is_no_space(&self) -> bool {
        matches!(self, DriverError::NoSpace { .. })
    }
}
