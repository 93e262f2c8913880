//! Blobs (HEAD, GET with ranges, DELETE) and upload sessions (POST, PATCH,
//! PUT, GET status, DELETE).

use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use engine::{Digest, DigestHasher, ErrorCode, RepoName, Store, StoreError};
use futures_util::StreamExt;

use super::{DOCKER_CONTENT_DIGEST, DOCKER_UPLOAD_UUID, Req, content_length, header_str, respond};
use crate::error::{ApiError, ApiResult};

/// Upload bodies reach the engine in pieces of at most this many bytes.
pub const UPLOAD_PIECE: usize = 1 << 20;
/// Blobs up to this size are read whole (and verified by the engine).
pub const WHOLE_READ_MAX: u64 = 8 << 20;
/// Larger blobs are read in ranges of this size.
pub const READ_PIECE: u64 = 1 << 20;

fn blob_location(repo: &RepoName, digest: &Digest) -> String {
    format!("/v2/{repo}/blobs/{digest}")
}

fn upload_location(repo: &RepoName, id: &str) -> String {
    format!("/v2/{repo}/blobs/uploads/{id}")
}

/// The `Range` of a session that has received `offset` bytes: `0-<last>`,
/// and `0-0` for an empty session (CNCF distribution's convention; the
/// spec's `0-<end-of-range>` has no value for zero bytes).
fn upload_range(offset: u64) -> String {
    format!("0-{}", offset.saturating_sub(1))
}

fn session_headers(repo: &RepoName, id: &str, offset: u64) -> Vec<(header::HeaderName, String)> {
    vec![
        (header::LOCATION, upload_location(repo, id)),
        (header::RANGE, upload_range(offset)),
        (DOCKER_UPLOAD_UUID, id.to_owned()),
        (header::CONTENT_LENGTH, "0".into()),
    ]
}

fn digest_param(req: &Req) -> ApiResult<Option<Digest>> {
    req.query
        .one("digest")?
        .map(|d| Digest::parse(d).map_err(|e| ApiError::from(StoreError::from(e))))
        .transpose()
}

// --- blobs ------------------------------------------------------------------

pub(super) async fn get(
    store: &Store,
    repo: &RepoName,
    digest: &Digest,
    req: &Req,
    head: bool,
) -> ApiResult<Response> {
    let size = store.stat_blob(repo, digest).await?;
    let mut headers = vec![
        (DOCKER_CONTENT_DIGEST, digest.to_string()),
        (header::CONTENT_TYPE, "application/octet-stream".into()),
        (header::ACCEPT_RANGES, "bytes".into()),
    ];
    let range = match header_str(&req.headers, &header::RANGE) {
        Some(h) => parse_range(h, size).map_err(|()| {
            ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                ErrorCode::SizeInvalid,
                format!("range {h:?} is not satisfiable for a blob of {size} bytes"),
            )
            .with_header(header::CONTENT_RANGE, format!("bytes */{size}"))
        })?,
        None => None,
    };
    if !head
        && range.is_none()
        && let Some(redirect) = &req.redirect
        && let Some(url) = redirect.location(store, digest).await?
    {
        headers.push((header::LOCATION, url));
        headers.push((header::CONTENT_LENGTH, "0".into()));
        return Ok(respond(
            StatusCode::TEMPORARY_REDIRECT,
            headers,
            Body::empty(),
        ));
    }
    if let Some((start, end)) = range {
        headers.push((header::CONTENT_LENGTH, (end - start + 1).to_string()));
        headers.push((header::CONTENT_RANGE, format!("bytes {start}-{end}/{size}")));
        let body = if head {
            Body::empty()
        } else {
            Body::from(store.get_blob_range(repo, digest, start..end + 1).await?)
        };
        return Ok(respond(StatusCode::PARTIAL_CONTENT, headers, body));
    }
    headers.push((header::CONTENT_LENGTH, size.to_string()));
    let body = if head {
        Body::empty()
    } else if size <= WHOLE_READ_MAX {
        Body::from(store.get_blob(repo, digest).await?)
    } else {
        streamed_blob(store.clone(), repo.clone(), digest.clone(), size)
    };
    Ok(respond(StatusCode::OK, headers, body))
}

/// A large blob in [`READ_PIECE`] ranges, hashed on the way: a digest
/// mismatch (or a read failure) ends the body with an error, so the client
/// sees a broken transfer instead of a complete wrong blob.
fn streamed_blob(store: Store, repo: RepoName, digest: Digest, size: u64) -> Body {
    let hasher = DigestHasher::new(digest.algorithm());
    let state = Some((0u64, hasher));
    let stream = futures_util::stream::unfold(state, move |state| {
        let (store, repo, digest) = (store.clone(), repo.clone(), digest.clone());
        async move {
            let (offset, mut hasher) = state?;
            let end = (offset + READ_PIECE).min(size);
            let piece = match store.get_blob_range(&repo, &digest, offset..end).await {
                Ok(piece) => piece,
                Err(e) => return Some((Err(std::io::Error::other(e.to_string())), None)),
            };
            hasher.update(&piece);
            if end < size {
                return Some((Ok(piece), Some((end, hasher))));
            }
            let actual = hasher.finish();
            if actual != digest {
                tracing::error!(%repo, %digest, %actual, "stored bytes do not match their digest");
                return Some((
                    Err(std::io::Error::other(
                        "stored bytes do not match the digest",
                    )),
                    None,
                ));
            }
            Some((Ok(piece), None))
        }
    });
    Body::from_stream(stream)
}

/// One `bytes=` range of a blob of `size` bytes, as inclusive bounds.
/// `Ok(None)`: not a byte range (ignored, RFC 9110 §14.2). `Err`: not
/// satisfiable, malformed, or several ranges (multipart responses are not
/// supported): 416.
fn parse_range(h: &str, size: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = h.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') || size == 0 {
        return Err(());
    }
    let (a, b) = spec.trim().split_once('-').ok_or(())?;
    let num = |s: &str| -> Result<u64, ()> {
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            return Err(());
        }
        s.parse().map_err(|_| ())
    };
    let (start, end) = if a.is_empty() {
        let suffix = num(b)?;
        if suffix == 0 {
            return Err(());
        }
        (size.saturating_sub(suffix), size - 1)
    } else {
        let start = num(a)?;
        let end = if b.is_empty() { size - 1 } else { num(b)? };
        if end < start || start >= size {
            return Err(());
        }
        (start, end.min(size - 1))
    };
    Ok(Some((start, end)))
}

pub(super) async fn delete(store: &Store, repo: &RepoName, digest: &Digest) -> ApiResult<Response> {
    store.delete_blob(repo, digest).await?;
    Ok(respond(
        StatusCode::ACCEPTED,
        vec![(header::CONTENT_LENGTH, "0".into())],
        Body::empty(),
    ))
}

// --- uploads ----------------------------------------------------------------

/// POST `/v2/<name>/blobs/uploads/`: a mount (`?mount=&from=`), a
/// monolithic push (`?digest=`), or a new session.
pub(super) async fn post(
    store: &Store,
    repo: &RepoName,
    req: &Req,
    body: Body,
) -> ApiResult<Response> {
    if let Some(mount) = req.query.one("mount")? {
        let digest = Digest::parse(mount).map_err(StoreError::from)?;
        // No usable `from`: nothing to mount from, so a plain session (202).
        if let Some(Ok(from)) = req.query.one("from")?.map(RepoName::parse) {
            match store.mount_blob(&from, repo, &digest).await {
                Ok(true) => return Ok(created_blob(repo, &digest)),
                Ok(false) => {}
                Err(e)
                    if matches!(
                        e.code(),
                        Some(ErrorCode::NameUnknown | ErrorCode::BlobUnknown)
                    ) => {}
                Err(e) => return Err(e.into()),
            }
        }
        return start_session(store, repo).await;
    }
    if let Some(digest) = digest_param(req)? {
        let id = store.start_upload(repo).await?;
        let result = async {
            // Finished in the same request: the commit makes it durable,
            // nothing to acknowledge before.
            feed_pieces(store, &id, body).await?;
            store.finish_upload(&id, &digest, None).await?;
            Ok::<_, ApiError>(())
        }
        .await;
        if let Err(e) = result {
            // Nothing of a failed monolithic push remains (the session may
            // already be gone: a digest mismatch ends it).
            let _ = store.cancel_upload(&id).await;
            return Err(e);
        }
        return Ok(created_blob(repo, &digest));
    }
    start_session(store, repo).await
}

async fn start_session(store: &Store, repo: &RepoName) -> ApiResult<Response> {
    let id = store.start_upload(repo).await?;
    Ok(respond(
        StatusCode::ACCEPTED,
        session_headers(repo, &id, 0),
        Body::empty(),
    ))
}

fn created_blob(repo: &RepoName, digest: &Digest) -> Response {
    respond(
        StatusCode::CREATED,
        vec![
            (header::LOCATION, blob_location(repo, digest)),
            (DOCKER_CONTENT_DIGEST, digest.to_string()),
            (header::CONTENT_LENGTH, "0".into()),
        ],
        Body::empty(),
    )
}

/// The session's offset, if `id` is a live session of `repo` (a session
/// of another repository is unknown here).
async fn session_offset(store: &Store, repo: &RepoName, id: &str) -> ApiResult<u64> {
    let status = store.upload_status(id).await?;
    if &status.repo != repo {
        return Err(StoreError::BlobUploadUnknown { id: id.to_owned() }.into());
    }
    Ok(status.offset)
}

/// Checks a chunk's `Content-Range` (bare `<start>-<end>`, inclusive)
/// against the session's offset and the `Content-Length`, before any byte
/// is read: out of order is 416 with the session's `Range`.
fn check_chunk(repo: &RepoName, id: &str, offset: u64, req: &Req) -> ApiResult<()> {
    let Some(h) = req.headers.get(header::CONTENT_RANGE) else {
        return Ok(());
    };
    let invalid = |why: String| {
        ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::BlobUploadInvalid, why)
            .with_header(header::LOCATION, upload_location(repo, id))
            .with_header(header::RANGE, upload_range(offset))
    };
    let text = h.to_str().unwrap_or("");
    let parsed = text.split_once('-').and_then(|(a, b)| {
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
        (digits(a) && digits(b)).then(|| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)))?
    });
    let Some((start, end)) = parsed else {
        return Err(invalid(format!(
            "Content-Range {:?} is not <start>-<end>",
            text.chars().take(80).collect::<String>()
        )));
    };
    if start != offset {
        return Err(ApiError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            ErrorCode::BlobUploadInvalid,
            format!("chunk starts at {start}, the upload is at {offset}"),
        )
        .with_header(header::LOCATION, upload_location(repo, id))
        .with_header(header::RANGE, upload_range(offset)));
    }
    if end < start {
        return Err(invalid(format!(
            "Content-Range {start}-{end} ends before it starts"
        )));
    }
    // `end` is client-chosen: `0-18446744073709551615` is one past u64.
    let len = (end - start).checked_add(1);
    if let Some(cl) = content_length(&req.headers)?
        && Some(cl) != len
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::SizeInvalid,
            format!("Content-Range {start}-{end} does not match Content-Length {cl}"),
        ));
    }
    Ok(())
}

/// Streams `body` into session `id`, [`UPLOAD_PIECE`] bytes at a time,
/// then acknowledges what arrived ([`Store::sync_upload`]: durable and
/// recorded, so it survives a restart) before the caller answers. Returns
/// the session's offset afterwards. A body that breaks off (client gone,
/// or shorter than its `Content-Length`) keeps what arrived, acknowledged
/// too; its `Range` says how much.
async fn feed(store: &Store, id: &str, body: Body) -> ApiResult<u64> {
    let received = feed_pieces(store, id, body).await;
    let acknowledged = store.sync_upload(id).await;
    received?;
    Ok(acknowledged?)
}

/// Streams `body` into session `id` without acknowledging it (for a
/// request that finishes the upload itself).
///
/// Each piece is its own allocation of exactly [`UPLOAD_PIECE`] bytes,
/// filled from the frames and handed over whole: a piece queued in the
/// engine's writer then holds 1 MiB, not a share of a larger buffer that
/// also holds the next piece. Splitting one growing buffer instead put
/// `ocistore serve` at 70-73 MiB above its idle RSS for a 1 GiB blob pushed
/// twice and pulled; this at 30-40 (the `serve` bench, `tests/benches/serve.rs`).
async fn feed_pieces(store: &Store, id: &str, body: Body) -> ApiResult<()> {
    let mut stream = body.into_data_stream();
    let mut piece = BytesMut::new();
    while let Some(frame) = stream.next().await {
        let mut frame: Bytes = frame.map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::SizeInvalid,
                format!("request body: {e}"),
            )
        })?;
        while !frame.is_empty() {
            if piece.capacity() == 0 {
                piece = BytesMut::with_capacity(UPLOAD_PIECE);
            }
            let n = frame.len().min(UPLOAD_PIECE - piece.len());
            piece.extend_from_slice(&frame.split_to(n));
            if piece.len() == UPLOAD_PIECE {
                let full = std::mem::take(&mut piece).freeze();
                store.append_upload(id, full).await?;
            }
        }
    }
    if !piece.is_empty() {
        store.append_upload(id, piece.freeze()).await?;
    }
    Ok(())
}

pub(super) async fn patch(
    store: &Store,
    repo: &RepoName,
    id: &str,
    req: &Req,
    body: Body,
) -> ApiResult<Response> {
    let offset = session_offset(store, repo, id).await?;
    check_chunk(repo, id, offset, req)?;
    let offset = feed(store, id, body).await?;
    Ok(respond(
        StatusCode::ACCEPTED,
        session_headers(repo, id, offset),
        Body::empty(),
    ))
}

pub(super) async fn put(
    store: &Store,
    repo: &RepoName,
    id: &str,
    req: &Req,
    body: Body,
) -> ApiResult<Response> {
    let offset = session_offset(store, repo, id).await?;
    let Some(digest) = digest_param(req)? else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::DigestInvalid,
            "closing PUT needs ?digest=",
        ));
    };
    check_chunk(repo, id, offset, req)?;
    feed_pieces(store, id, body).await?;
    store.finish_upload(id, &digest, None).await?;
    Ok(created_blob(repo, &digest))
}

pub(super) async fn status(store: &Store, repo: &RepoName, id: &str) -> ApiResult<Response> {
    let offset = session_offset(store, repo, id).await?;
    Ok(respond(
        StatusCode::NO_CONTENT,
        session_headers(repo, id, offset),
        Body::empty(),
    ))
}

pub(super) async fn cancel(store: &Store, repo: &RepoName, id: &str) -> ApiResult<Response> {
    session_offset(store, repo, id).await?;
    store.cancel_upload(id).await?;
    Ok(respond(
        StatusCode::NO_CONTENT,
        vec![(DOCKER_UPLOAD_UUID, id.to_owned())],
        Body::empty(),
    ))
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-0", 10), Ok(Some((0, 0))));
        assert_eq!(parse_range("bytes=2-", 10), Ok(Some((2, 9))));
        assert_eq!(parse_range("bytes=-3", 10), Ok(Some((7, 9))));
        assert_eq!(parse_range("bytes=-30", 10), Ok(Some((0, 9))));
        assert_eq!(parse_range("bytes=5-100", 10), Ok(Some((5, 9))));
        assert_eq!(parse_range("items=0-1", 10), Ok(None));
        for bad in [
            "bytes=10-",
            "bytes=5-4",
            "bytes=-0",
            "bytes=0-1,1-2",
            "bytes=a-b",
            "bytes=-",
            "bytes=0-18446744073709551616",
            "bytes=+1-2",
        ] {
            assert_eq!(parse_range(bad, 10), Err(()), "{bad}");
        }
        assert_eq!(parse_range("bytes=0-0", 0), Err(()));
    }
}
