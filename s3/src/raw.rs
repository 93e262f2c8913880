//! The three S3 requests `object_store` 0.14 keeps private, sent as
//! presigned requests: `UploadPartCopy` (a part copied server-side from a
//! staged object), `CompleteMultipartUpload` with `If-None-Match: *` (a
//! conditional create of a multipart object) and `ListMultipartUploads`
//! (uploads in progress, which the store cannot list).
//!
//! The URLs are signed by `object_store`'s own SigV4 signer
//! ([`Signer::signed_url_opts`]), so credentials, region, endpoint and
//! addressing style are exactly those of every other call; the headers
//! that carry meaning (`x-amz-copy-source`, `If-None-Match`) are signed
//! too. Each request is retried on a transport error or a 5xx, as
//! `object_store` retries its own.
//!
//! Keys are `[A-Za-z0-9._/-]` (the driver path grammar, the reserved
//! names and the prefix all obey it), so they need no escaping in a
//! header or the copy source.

use std::time::Duration;

use bytes::Bytes;
use engine::driver::{DriverError, DriverResult};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use object_store::client::{HttpClient, HttpConnector, HttpRequestBody, ReqwestConnector};
use object_store::multipart::PartId;
use object_store::path::Path;
use object_store::signer::{SignedUrlOptions, Signer};
use object_store::{ClientOptions, MultipartId};

use crate::Shared;

/// How long a presigned request stays valid: one attempt's worth.
const SIGNED_FOR: Duration = Duration::from_secs(15 * 60);
/// Attempts per request (the first and two retries).
const ATTEMPTS: u32 = 3;

/// The HTTP client for the presigned requests.
pub(crate) fn client(options: &ClientOptions) -> object_store::Result<HttpClient> {
    ReqwestConnector::default().connect(options)
}

/// How a conditional completion ended.
pub(crate) enum Completed {
    Done,
    /// `If-None-Match: *` failed: the key exists.
    Exists,
}

impl Shared {
    /// One presigned request for `key` (`""`: the bucket), retried on a
    /// transport error or a 5xx. The status and body of the last attempt.
    async fn signed(
        &self,
        op: &'static str,
        method: Method,
        key: &Path,
        query: &[(&str, &str)],
        headers: &[(HeaderName, String)],
        body: Bytes,
    ) -> DriverResult<(StatusCode, Bytes)> {
        let fail = |e: String| raw_error(op, key, e);
        let mut options = SignedUrlOptions::new().with_query(query.iter().copied());
        let mut signed_headers = HeaderMap::new();
        for (name, value) in headers {
            let value = HeaderValue::from_str(value).map_err(|e| fail(e.to_string()))?;
            options = options.with_signed_header(name.clone(), value.clone());
            signed_headers.insert(name.clone(), value);
        }
        let mut last = String::new();
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                rtokio::time::sleep(Duration::from_millis(100 << (2 * attempt))).await;
            }
            let url = self
                .store
                .signed_url_opts(method.clone(), key, SIGNED_FOR, &options)
                .await
                .map_err(|e| fail(e.to_string()))?;
            let mut request = http::Request::builder()
                .method(method.clone())
                .uri(url.as_str())
                .body(HttpRequestBody::from(body.clone()))
                .map_err(|e| fail(e.to_string()))?;
            request.headers_mut().extend(signed_headers.clone());
            let answer = match self.http.execute(request).await {
                Ok(response) => {
                    let status = response.status();
                    match response.into_body().bytes().await {
                        Ok(body) => Ok((status, body)),
                        Err(e) => Err(e.to_string()),
                    }
                }
                Err(e) => Err(e.to_string()),
            };
            match answer {
                // S3 may answer 200 and fail in the body (copy, complete).
                Ok((status, body)) if status.is_server_error() || is_internal_error(&body) => {
                    last = format!("{status}: {}", String::from_utf8_lossy(&body));
                }
                Ok(answer) => return Ok(answer),
                Err(e) => last = e,
            }
        }
        Err(fail(format!(
            "{ATTEMPTS} attempts failed, the last: {last}"
        )))
    }

    /// `UploadPartCopy`: part `index` (from 0) of upload `upload_id` to
    /// `key` is the whole object `source`, copied by the server.
    pub(crate) async fn copy_part(
        &self,
        key: &Path,
        upload_id: &MultipartId,
        index: usize,
        source: &Path,
    ) -> DriverResult<PartId> {
        let part_number = (index + 1).to_string();
        let (status, body) = self
            .signed(
                "copy",
                Method::PUT,
                key,
                &[("partNumber", &part_number), ("uploadId", upload_id)],
                &[(
                    HeaderName::from_static("x-amz-copy-source"),
                    format!("{}/{source}", self.config.bucket),
                )],
                Bytes::new(),
            )
            .await?;
        match (status.is_success(), xml_text(&body, "ETag")) {
            (true, Some(e_tag)) => Ok(PartId { content_id: e_tag }),
            _ => Err(answer_error("copy", key, status, &body)),
        }
    }

    /// `CompleteMultipartUpload` of `parts`, with `If-None-Match: *` when
    /// `if_absent`.
    pub(crate) async fn complete(
        &self,
        key: &Path,
        upload_id: &MultipartId,
        parts: &[PartId],
        if_absent: bool,
    ) -> DriverResult<Completed> {
        let mut xml = String::from("<CompleteMultipartUpload>");
        for (i, part) in parts.iter().enumerate() {
            xml.push_str(&format!(
                "<Part><ETag>{}</ETag><PartNumber>{}</PartNumber></Part>",
                escape(&part.content_id),
                i + 1
            ));
        }
        xml.push_str("</CompleteMultipartUpload>");
        let condition = [(http::header::IF_NONE_MATCH, "*".to_owned())];
        let headers: &[_] = if if_absent { &condition } else { &[] };
        let (status, body) = self
            .signed(
                "put",
                Method::POST,
                key,
                &[("uploadId", upload_id)],
                headers,
                Bytes::from(xml),
            )
            .await?;
        if status == StatusCode::PRECONDITION_FAILED
            || xml_text(&body, "Code").as_deref() == Some("PreconditionFailed")
        {
            return Ok(Completed::Exists);
        }
        match status.is_success() && xml_text(&body, "Error").is_none() {
            true => Ok(Completed::Done),
            false => Err(answer_error("put", key, status, &body)),
        }
    }

    /// The multipart uploads in progress on keys starting with `prefix`:
    /// `(key, upload id)`, every page.
    pub(crate) async fn uploads_in_progress(
        &self,
        prefix: &str,
    ) -> DriverResult<Vec<(Path, MultipartId)>> {
        let bucket = Path::default();
        let mut out = Vec::new();
        let (mut key_marker, mut id_marker) = (String::new(), String::new());
        loop {
            let mut query = vec![("uploads", ""), ("prefix", prefix)];
            if !key_marker.is_empty() {
                query.push(("key-marker", &key_marker));
                query.push(("upload-id-marker", &id_marker));
            }
            let (status, body) = self
                .signed("list", Method::GET, &bucket, &query, &[], Bytes::new())
                .await?;
            if !status.is_success() {
                return Err(answer_error("list", &bucket, status, &body));
            }
            let text = String::from_utf8_lossy(&body);
            for upload in text.split("<Upload>").skip(1) {
                if let (Some(key), Some(id)) = (
                    xml_text(upload.as_bytes(), "Key"),
                    xml_text(upload.as_bytes(), "UploadId"),
                ) {
                    out.push((Path::from(key), id));
                }
            }
            if xml_text(&body, "IsTruncated").as_deref() != Some("true") {
                return Ok(out);
            }
            key_marker = xml_text(&body, "NextKeyMarker").unwrap_or_default();
            id_marker = xml_text(&body, "NextUploadIdMarker").unwrap_or_default();
            if key_marker.is_empty() {
                return Ok(out);
            }
        }
    }
}

/// The text of the first `<tag>` element of `body`, unescaped.
fn xml_text(body: &[u8], tag: &str) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let open = format!("<{tag}>");
    let start = text.find(&open)? + open.len();
    let end = start + text[start..].find(&format!("</{tag}>"))?;
    Some(unescape(&text[start..end]))
}

fn is_internal_error(body: &[u8]) -> bool {
    matches!(
        xml_text(body, "Code").as_deref(),
        Some("InternalError" | "SlowDown" | "ServiceUnavailable")
    )
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&#34;", "\"")
        .replace("&amp;", "&")
}

fn raw_error(op: &'static str, key: &Path, message: String) -> DriverError {
    DriverError::Io {
        driver: "s3",
        op,
        path: key.to_string(),
        source: std::io::Error::other(message),
    }
}

fn answer_error(op: &'static str, key: &Path, status: StatusCode, body: &[u8]) -> DriverError {
    raw_error(
        op,
        key,
        format!("{status}: {}", String::from_utf8_lossy(body)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_text_takes_the_first_element_unescaped() {
        let body = b"<CopyPartResult><ETag>&quot;9b2cf&quot;</ETag></CopyPartResult>";
        assert_eq!(xml_text(body, "ETag").as_deref(), Some("\"9b2cf\""));
        assert_eq!(xml_text(body, "Key"), None);
        assert_eq!(escape("\"a&b\""), "&quot;a&amp;b&quot;");
        assert_eq!(unescape(&escape("<'\"&\">")), "<'\"&\">");
    }
}
