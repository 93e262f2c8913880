//! Manifests (PUT, GET, HEAD, DELETE by tag or digest) and referrers.

use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::Response;
use bytes::BytesMut;
use engine::oci::manifest::{ImageIndex, MAX_MANIFEST_SIZE, Manifest, media};
use engine::{Digest, ErrorCode, Reference, RepoName, Store, StoreError, Tag};
use futures_util::StreamExt;

use super::{
    DOCKER_CONTENT_DIGEST, OCI_FILTERS_APPLIED, OCI_SUBJECT, OCI_TAG, Req, content_length,
    header_str, respond,
};
use crate::error::{ApiError, ApiResult};

/// At most this many `?tag=` on one manifest PUT (414 beyond).
pub const MAX_TAGS_PER_PUT: usize = 100;

/// A refused manifest body up to this size is read and discarded before
/// the 413, so a client still sending it gets the answer instead of a
/// connection reset; a larger one is cut off.
const DRAIN_MAX: u64 = 4 * MAX_MANIFEST_SIZE as u64;

async fn drain(stream: &mut axum::body::BodyDataStream) {
    let mut seen = 0u64;
    while let Some(Ok(frame)) = stream.next().await {
        seen += frame.len() as u64;
        if seen > DRAIN_MAX {
            break;
        }
    }
}

fn too_large(len: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::SizeInvalid,
        format!("manifest of {len} bytes or more exceeds the {MAX_MANIFEST_SIZE}-byte limit"),
    )
}

pub(super) async fn get(
    store: &Store,
    repo: &RepoName,
    reference: &Reference,
    head: bool,
) -> ApiResult<Response> {
    let m = store.get_manifest(repo, reference).await?;
    let headers = vec![
        (header::CONTENT_TYPE, m.media_type.clone()),
        (DOCKER_CONTENT_DIGEST, m.digest.to_string()),
        (header::CONTENT_LENGTH, m.body.len().to_string()),
    ];
    let body = if head {
        Body::empty()
    } else {
        Body::from(m.body)
    };
    Ok(respond(StatusCode::OK, headers, body))
}

/// The declared media type: `Content-Type` without parameters, else the
/// body's own `mediaType` (the engine checks the two agree).
fn media_type(req: &Req, body: &[u8]) -> String {
    if let Some(ct) = header_str(&req.headers, &header::CONTENT_TYPE) {
        let ct = ct.split(';').next().unwrap_or("").trim();
        if !ct.is_empty() {
            return ct.to_owned();
        }
    }
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("mediaType")?.as_str().map(str::to_owned))
        .unwrap_or_default()
}

pub(super) async fn put(
    store: &Store,
    repo: &RepoName,
    reference: &Reference,
    req: &Req,
    body: Body,
) -> ApiResult<Response> {
    // Every tag is checked before anything is stored.
    let extra = req.query.all("tag");
    if extra.len() > MAX_TAGS_PER_PUT {
        return Err(ApiError::new(
            StatusCode::URI_TOO_LONG,
            ErrorCode::Unsupported,
            format!("at most {MAX_TAGS_PER_PUT} tags per request"),
        ));
    }
    let extra: Vec<Tag> = extra
        .iter()
        .map(|t| Tag::parse(t).map_err(|e| ApiError::from(StoreError::from(e))))
        .collect::<ApiResult<_>>()?;
    let mut stream = body.into_data_stream();
    if let Some(len) = content_length(&req.headers)?
        && len > MAX_MANIFEST_SIZE as u64
    {
        if len <= DRAIN_MAX {
            drain(&mut stream).await;
        }
        return Err(too_large(len));
    }
    let mut buf = BytesMut::new();
    while let Some(frame) = stream.next().await {
        let frame = frame.map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::SizeInvalid,
                format!("request body: {e}"),
            )
        })?;
        if buf.len() + frame.len() > MAX_MANIFEST_SIZE {
            let seen = (buf.len() + frame.len()) as u64;
            drop(buf);
            drain(&mut stream).await;
            return Err(too_large(seen));
        }
        buf.extend_from_slice(&frame);
    }
    let body = buf.freeze();
    let media_type = media_type(req, &body);
    let subject = Manifest::parse(&media_type, &body)?
        .subject
        .map(|s| s.digest);
    let digest = store
        .put_manifest(repo, reference, &media_type, body.clone())
        .await?;
    let mut headers = vec![
        (header::LOCATION, format!("/v2/{repo}/manifests/{digest}")),
        (DOCKER_CONTENT_DIGEST, digest.to_string()),
        (header::CONTENT_LENGTH, "0".into()),
    ];
    if let Reference::Digest(_) = reference {
        for tag in &extra {
            store
                .put_manifest(
                    repo,
                    &Reference::Tag(tag.clone()),
                    &media_type,
                    body.clone(),
                )
                .await?;
            headers.push((OCI_TAG, tag.to_string()));
        }
    }
    if let Some(subject) = subject {
        headers.push((OCI_SUBJECT, subject.to_string()));
    }
    Ok(respond(StatusCode::CREATED, headers, Body::empty()))
}

pub(super) async fn delete(
    store: &Store,
    repo: &RepoName,
    reference: &Reference,
) -> ApiResult<Response> {
    store.delete_manifest(repo, reference).await?;
    Ok(respond(
        StatusCode::ACCEPTED,
        vec![(header::CONTENT_LENGTH, "0".into())],
        Body::empty(),
    ))
}

/// GET `/v2/<name>/referrers/<digest>`: never 404 (spec): an unknown
/// repository has no referrers. Every referrer fits one response (no `Link`).
pub(super) async fn referrers(
    store: &Store,
    repo: &RepoName,
    subject: &Digest,
    req: &Req,
) -> ApiResult<Response> {
    let artifact_type = req.query.one("artifactType")?;
    let manifests = match store.referrers(repo, subject, artifact_type).await {
        Ok(m) => m,
        Err(e) if e.code() == Some(ErrorCode::NameUnknown) => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    let index = ImageIndex {
        manifests,
        ..ImageIndex::default()
    };
    let body = serde_json::to_vec(&index).expect("an index serialises");
    let mut headers = vec![
        (header::CONTENT_TYPE, media::OCI_INDEX.to_owned()),
        (header::CONTENT_LENGTH, body.len().to_string()),
    ];
    if artifact_type.is_some() {
        headers.push((OCI_FILTERS_APPLIED, "artifactType".into()));
    }
    Ok(respond(StatusCode::OK, headers, Body::from(body)))
}
