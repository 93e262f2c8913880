//! The `/v2/` path grammar, parsed by hand.
//!
//! Repository names contain `/` and axum wildcards may only end a path, so
//! the router hands everything under `/v2/` here. A path is split at its
//! LAST segment; what precedes it names the endpoint (`…/manifests`,
//! `…/blobs`, `…/blobs/uploads`, `…/referrers`, `…/tags/list`) and the rest
//! is the repository name. The name is never percent-decoded: the OCI name
//! grammar has no character that needs encoding, so `%2e%2e` stays the
//! invalid name it looks like. Only the last segment (a tag, digest or
//! session id) is decoded, since clients may encode the digest's `:`. Every
//! part is then validated by the engine's parsers before any store call.

use engine::{Digest, Reference, RepoName, StoreError};

/// What a `/v2/...` request addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/v2/` (the API version check).
    Ping,
    /// `/v2/_catalog`.
    Catalog,
    /// `/v2/<name>/tags/list`.
    Tags(RepoName),
    /// `/v2/<name>/manifests/<reference>`.
    Manifest(RepoName, Reference),
    /// `/v2/<name>/blobs/<digest>`.
    Blob(RepoName, Digest),
    /// `/v2/<name>/blobs/uploads/` (start a session, monolithic push, mount).
    Uploads(RepoName),
    /// `/v2/<name>/blobs/uploads/<id>`.
    Upload(RepoName, String),
    /// `/v2/<name>/referrers/<digest>`.
    Referrers(RepoName, Digest),
}

/// Why a path is not a route: no such endpoint (404 without an OCI code),
/// or an endpoint with an invalid part (the engine's error, 400).
#[derive(Debug)]
pub enum RouteError {
    NotFound,
    Invalid(StoreError),
}

impl From<StoreError> for RouteError {
    fn from(e: StoreError) -> RouteError {
        RouteError::Invalid(e)
    }
}

/// The longest session id accepted in a URL (ours are 25 characters).
const MAX_SESSION_ID: usize = 128;

/// Parses the raw (undecoded) request path.
pub fn parse(path: &str) -> Result<Route, RouteError> {
    let rest = match path.strip_prefix("/v2") {
        Some("" | "/") => return Ok(Route::Ping),
        Some(rest) => rest.strip_prefix('/').ok_or(RouteError::NotFound)?,
        None => return Err(RouteError::NotFound),
    };
    if rest == "_catalog" {
        return Ok(Route::Catalog);
    }
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Ok(Route::Tags(repo(name)?));
    }
    if let Some(name) = rest
        .strip_suffix("/blobs/uploads/")
        .or_else(|| rest.strip_suffix("/blobs/uploads"))
    {
        return Ok(Route::Uploads(repo(name)?));
    }
    let (head, last) = rest.rsplit_once('/').ok_or(RouteError::NotFound)?;
    let last = decode(last)?;
    if let Some(name) = head.strip_suffix("/blobs/uploads") {
        if last.is_empty()
            || last.len() > MAX_SESSION_ID
            || !last
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            // Not one of ours: the session is unknown, whatever it says.
            return Err(RouteError::Invalid(StoreError::BlobUploadUnknown {
                id: last.chars().take(80).collect(),
            }));
        }
        return Ok(Route::Upload(repo(name)?, last));
    }
    if let Some(name) = head.strip_suffix("/blobs") {
        return Ok(Route::Blob(repo(name)?, digest(&last)?));
    }
    if let Some(name) = head.strip_suffix("/manifests") {
        return Ok(Route::Manifest(repo(name)?, Reference::parse(&last)?));
    }
    if let Some(name) = head.strip_suffix("/referrers") {
        return Ok(Route::Referrers(repo(name)?, digest(&last)?));
    }
    Err(RouteError::NotFound)
}

fn repo(name: &str) -> Result<RepoName, StoreError> {
    Ok(RepoName::parse(name)?)
}

fn digest(s: &str) -> Result<Digest, StoreError> {
    Ok(Digest::parse(s)?)
}

/// Percent-decodes one segment; a bad escape or non-UTF-8 result is a 404
/// (no endpoint has such a segment).
fn decode(segment: &str) -> Result<String, RouteError> {
    if !segment.contains('%') {
        return Ok(segment.to_owned());
    }
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(RouteError::NotFound)?;
            let hex = std::str::from_utf8(hex).map_err(|_| RouteError::NotFound)?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| RouteError::NotFound)?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| RouteError::NotFound)
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn ok(path: &str) -> Route {
        parse(path).unwrap_or_else(|e| panic!("{path}: {e:?}"))
    }

    #[test]
    fn endpoints() {
        assert_eq!(ok("/v2/"), Route::Ping);
        assert_eq!(ok("/v2"), Route::Ping);
        assert_eq!(ok("/v2/_catalog"), Route::Catalog);
        assert!(matches!(ok("/v2/a/b/tags/list"), Route::Tags(r) if r.as_str() == "a/b"));
        assert!(matches!(ok("/v2/a/blobs/uploads/"), Route::Uploads(r) if r.as_str() == "a"));
        assert!(matches!(ok("/v2/a/blobs/uploads"), Route::Uploads(_)));
        assert!(
            matches!(ok("/v2/org/app/blobs/uploads/0123-ab"), Route::Upload(r, id) if r.as_str() == "org/app" && id == "0123-ab")
        );
        assert!(matches!(ok(&format!("/v2/a/blobs/{D}")), Route::Blob(r, _) if r.as_str() == "a"));
        assert!(matches!(
            ok(&format!("/v2/a/blobs/{}", D.replace(':', "%3A"))),
            Route::Blob(..)
        ));
        assert!(matches!(
            ok("/v2/a/manifests/latest"),
            Route::Manifest(_, Reference::Tag(_))
        ));
        assert!(matches!(
            ok(&format!("/v2/a/manifests/{D}")),
            Route::Manifest(_, Reference::Digest(_))
        ));
        assert!(matches!(
            ok(&format!("/v2/a/referrers/{D}")),
            Route::Referrers(..)
        ));
        // `blobs` never names a nested repository (the engine's grammar),
        // so `/blobs/` inside a name cannot make a path ambiguous.
        assert!(matches!(
            parse(&format!("/v2/a/blobs/blobs/{D}")),
            Err(RouteError::Invalid(_))
        ));
    }

    #[test]
    fn hostile() {
        for bad in [
            "/v2/../etc/manifests/latest",
            "/v2/%2e%2e/manifests/latest",
            "/v2/_blobstore/manifests/latest",
            "/v2/a/.uploads/manifests/latest",
            "/v2//a/manifests/latest",
            "/v2/A/manifests/latest",
            "/v2/a/manifests/..",
            "/v2/a/manifests/%2e%2e",
            "/v2/a/blobs/sha256:zz",
            "/v2/a/blobs/uploads/..",
            "/v2/a/blobs/uploads/%2e%2e%2fx",
        ] {
            assert!(
                matches!(parse(bad), Err(RouteError::Invalid(_))),
                "{bad}: {:?}",
                parse(bad)
            );
        }
        for unknown in [
            "/v2/a",
            "/v3/",
            "/v2x",
            "/v2/a/nothing/here",
            "/v2/a/manifests/%zz",
        ] {
            assert!(
                matches!(parse(unknown), Err(RouteError::NotFound)),
                "{unknown}"
            );
        }
    }
}
