//! Redirected pulls (zot #2752; distribution-spec allows a redirect on
//! blob GET): a blob GET is answered with `307` to a short-lived presigned
//! URL of the digest's one `_blobstore` object, so layer bytes flow from
//! the object store to the client, not through the registry. Off unless
//! `serve` is given the option.
//!
//! Only a whole-blob GET of the blobstore layout on `s3` is redirected:
//! HEAD, ranged GETs and manifests are served directly, and the legacy
//! layout has no single object per digest (a repository's copy may be a
//! marker). The repository's membership is checked before the redirect,
//! like any read. The registry does not re-hash redirected bytes: they
//! were verified when written to `_blobstore`, and the client checks the
//! digest of what it pulls.

use std::time::Duration;

use axum::Router;
use engine::layout::blobstore_blob;
use engine::{Digest, LayoutKind, Store, StoreError};

/// Where redirected blob GETs point: presigned GETs on an `s3` root.
#[derive(Debug, Clone)]
pub struct BlobRedirect {
    driver: ocistore_s3::S3Driver,
    expires_in: Duration,
}

impl BlobRedirect {
    /// Redirects into `driver`'s bucket, each URL valid for `expires_in`.
    pub fn new(driver: ocistore_s3::S3Driver, expires_in: Duration) -> BlobRedirect {
        BlobRedirect { driver, expires_in }
    }

    /// The presigned URL of `digest`'s bytes, or `None` where this store
    /// has no single object per digest (the legacy layout).
    pub async fn location(
        &self,
        store: &Store,
        digest: &Digest,
    ) -> Result<Option<String>, StoreError> {
        if store.config().layout != LayoutKind::Blobstore {
            return Ok(None);
        }
        let url = self
            .driver
            .presigned_get(&blobstore_blob(digest), self.expires_in)
            .await?;
        Ok(Some(url))
    }
}

/// `app` with blob GETs redirected through `redirect`.
pub fn redirect_blob_gets(app: Router, redirect: BlobRedirect) -> Router {
    app.layer(axum::Extension(redirect))
}
