//! The store's errors. Each variant maps to exactly one OCI distribution
//! error code ([`StoreError::code`]), so an HTTP front can be added without
//! touching the store; storage failures have no OCI code (HTTP 500).

use crate::digest::{Digest, DigestError};
use crate::driver::DriverError;
use crate::meta::MetaError;
use crate::oci::names::NameError;

/// OCI distribution spec error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    SizeInvalid,
    Unsupported,
    Denied,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BlobUnknown => "BLOB_UNKNOWN",
            ErrorCode::BlobUploadInvalid => "BLOB_UPLOAD_INVALID",
            ErrorCode::BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            ErrorCode::DigestInvalid => "DIGEST_INVALID",
            ErrorCode::ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            ErrorCode::ManifestInvalid => "MANIFEST_INVALID",
            ErrorCode::ManifestUnknown => "MANIFEST_UNKNOWN",
            ErrorCode::NameInvalid => "NAME_INVALID",
            ErrorCode::NameUnknown => "NAME_UNKNOWN",
            ErrorCode::SizeInvalid => "SIZE_INVALID",
            ErrorCode::Unsupported => "UNSUPPORTED",
            ErrorCode::Denied => "DENIED",
        }
    }

    /// The HTTP status a front end answers with.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BlobUnknown
            | ErrorCode::BlobUploadUnknown
            | ErrorCode::ManifestUnknown
            | ErrorCode::NameUnknown => 404,
            ErrorCode::BlobUploadInvalid => 416,
            ErrorCode::Unsupported => 415,
            ErrorCode::Denied => 403,
            _ => 400,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error(transparent)]
    NameInvalid(#[from] NameError),
    #[error("repository {repo} not found")]
    NameUnknown { repo: String },
    #[error("blob {digest} not found in {repo}")]
    BlobUnknown { repo: String, digest: Digest },
    #[error("upload session {id:?} not found")]
    BlobUploadUnknown { id: String },
    #[error("upload invalid: {reason}")]
    BlobUploadInvalid { reason: String },
    #[error(transparent)]
    DigestInvalid(#[from] DigestError),
    #[error("content digest is {actual}, not the {expected} given")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("size invalid: {reason}")]
    SizeInvalid { reason: String },
    #[error("range {start}..{end} is outside the blob's {size} bytes")]
    RangeInvalid { start: u64, end: u64, size: u64 },
    #[error("manifest invalid: {reason}")]
    ManifestInvalid { reason: String },
    #[error("manifest {reference} not found in {repo}")]
    ManifestUnknown { repo: String, reference: String },
    #[error("manifest references {digest}, which {repo} does not have")]
    ManifestBlobUnknown { repo: String, digest: Digest },
    #[error("unsupported: {what}")]
    Unsupported { what: String },
    #[error("{reason}")]
    Denied { reason: String },
    /// A backend failed; the operation changed nothing acknowledged.
    #[error("storage: {0}")]
    Storage(#[from] DriverError),
    #[error("metadata: {0}")]
    Meta(#[from] MetaError),
    /// Shared locks could not be taken or were lost (several instances).
    #[error("locks: {0}")]
    Lock(#[from] crate::lock::LockError),
    /// Stored state that the store did not write (a damaged index.json, a
    /// store configured differently). Reported, never "repaired" silently.
    #[error("corrupt store: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// The backend refused a write for lack of space: a definite answer,
    /// nothing changed, and the same write may succeed once space is freed.
    pub fn is_no_space(&self) -> bool {
        matches!(self, StoreError::Storage(d) if d.is_no_space())
    }

    /// Nothing changed, and the same request may succeed if sent again:
    /// shared locks were unavailable or lost, or another instance changed
    /// the state the request was decided on (several instances, DESIGN §15).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            StoreError::Lock(_) | StoreError::Meta(MetaError::Conflict { .. })
        )
    }

    /// The OCI error code, or `None` for a storage failure (HTTP 500).
    pub fn code(&self) -> Option<ErrorCode> {
        Some(match self {
            StoreError::NameInvalid(_) => ErrorCode::NameInvalid,
            StoreError::NameUnknown { .. } => ErrorCode::NameUnknown,
            StoreError::BlobUnknown { .. } => ErrorCode::BlobUnknown,
            StoreError::BlobUploadUnknown { .. } => ErrorCode::BlobUploadUnknown,
            StoreError::BlobUploadInvalid { .. } => ErrorCode::BlobUploadInvalid,
            StoreError::DigestInvalid(_) | StoreError::DigestMismatch { .. } => {
                ErrorCode::DigestInvalid
            }
            StoreError::SizeInvalid { .. } => ErrorCode::SizeInvalid,
            StoreError::RangeInvalid { .. } => ErrorCode::BlobUploadInvalid,
            StoreError::ManifestInvalid { .. } => ErrorCode::ManifestInvalid,
            StoreError::ManifestUnknown { .. } => ErrorCode::ManifestUnknown,
            StoreError::ManifestBlobUnknown { .. } => ErrorCode::ManifestBlobUnknown,
            StoreError::Unsupported { .. } => ErrorCode::Unsupported,
            StoreError::Denied { .. } => ErrorCode::Denied,
            StoreError::Storage(_)
            | StoreError::Meta(_)
            | StoreError::Lock(_)
            | StoreError::Corrupt(_) => return None,
        })
    }
}

pub type StoreResult<T> = Result<T, StoreError>;
