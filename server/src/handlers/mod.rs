//! Request dispatch and the helpers the handlers share.

mod blobs;
mod listing;
mod manifests;

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use engine::{ErrorCode, Store};

use crate::error::{ApiError, ApiResult};
use crate::path::{self, Route, RouteError};

pub use blobs::{READ_PIECE, UPLOAD_PIECE, WHOLE_READ_MAX};

pub(crate) const DOCKER_CONTENT_DIGEST: HeaderName =
    HeaderName::from_static("docker-content-digest");
pub(crate) const DOCKER_UPLOAD_UUID: HeaderName = HeaderName::from_static("docker-upload-uuid");
pub(crate) const OCI_SUBJECT: HeaderName = HeaderName::from_static("oci-subject");
pub(crate) const OCI_TAG: HeaderName = HeaderName::from_static("oci-tag");
pub(crate) const OCI_FILTERS_APPLIED: HeaderName = HeaderName::from_static("oci-filters-applied");

/// The request as the handlers see it (the body is taken separately).
pub(crate) struct Req {
    pub method: Method,
    pub headers: HeaderMap,
    pub query: Query,
    /// Set when blob GETs are redirected to the object store.
    pub redirect: Option<crate::redirect::BlobRedirect>,
}

/// Query parameters, decoded; a parameter given twice keeps every value.
#[derive(Debug, Default)]
pub(crate) struct Query(HashMap<String, Vec<String>>);

impl Query {
    fn parse(raw: Option<&str>) -> Query {
        let mut map: HashMap<String, Vec<String>> = HashMap::new();
        for (k, v) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
            map.entry(k.into_owned()).or_default().push(v.into_owned());
        }
        Query(map)
    }

    /// The parameter's value; given more than once it is ambiguous (400).
    pub fn one(&self, key: &str) -> ApiResult<Option<&str>> {
        match self.0.get(key).map(Vec::as_slice) {
            None => Ok(None),
            Some([v]) => Ok(Some(v.as_str())),
            Some(_) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::Unsupported,
                format!("query parameter {key:?} given more than once"),
            )),
        }
    }

    pub fn all(&self, key: &str) -> &[String] {
        self.0.get(key).map_or(&[], Vec::as_slice)
    }
}

/// Every request under `/`: parse the path, then the method.
pub(crate) async fn dispatch(State(store): State<Store>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let route = match path::parse(parts.uri.path()) {
        Ok(route) => route,
        Err(RouteError::NotFound) => return ApiError::no_route().into_response(),
        Err(RouteError::Invalid(e)) => return ApiError::from(e).into_response(),
    };
    let req = Req {
        method: parts.method,
        headers: parts.headers,
        query: Query::parse(parts.uri.query()),
        redirect: parts.extensions.get().cloned(),
    };
    let result = route_request(&store, route, req, body).await;
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn route_request(store: &Store, route: Route, req: Req, body: Body) -> ApiResult<Response> {
    let m = req.method.clone();
    let head = m == Method::HEAD;
    match route {
        Route::Ping if m == Method::GET || head => bodiless_if(
            head,
            Ok(respond(
                StatusCode::OK,
                vec![(header::CONTENT_TYPE, "application/json".into())],
                Body::from("{}"),
            )),
        ),
        Route::Catalog if m == Method::GET || head => {
            bodiless_if(head, listing::catalog(store, &req).await)
        }
        Route::Tags(repo) if m == Method::GET || head => {
            bodiless_if(head, listing::tags(store, &repo, &req).await)
        }
        Route::Referrers(repo, digest) if m == Method::GET || head => bodiless_if(
            head,
            manifests::referrers(store, &repo, &digest, &req).await,
        ),
        Route::Manifest(repo, reference) => match m {
            Method::GET | Method::HEAD => manifests::get(store, &repo, &reference, head).await,
            Method::PUT => manifests::put(store, &repo, &reference, &req, body).await,
            Method::DELETE => manifests::delete(store, &repo, &reference).await,
            _ => Err(ApiError::method_not_allowed()),
        },
        Route::Blob(repo, digest) => match m {
            Method::GET | Method::HEAD => blobs::get(store, &repo, &digest, &req, head).await,
            Method::DELETE => blobs::delete(store, &repo, &digest).await,
            _ => Err(ApiError::method_not_allowed()),
        },
        Route::Uploads(repo) if m == Method::POST => blobs::post(store, &repo, &req, body).await,
        Route::Upload(repo, id) => match m {
            Method::GET => blobs::status(store, &repo, &id).await,
            Method::PATCH => blobs::patch(store, &repo, &id, &req, body).await,
            Method::PUT => blobs::put(store, &repo, &id, &req, body).await,
            Method::DELETE => blobs::cancel(store, &repo, &id).await,
            _ => Err(ApiError::method_not_allowed()),
        },
        _ => Err(ApiError::method_not_allowed()),
    }
}

/// HEAD where GET is (DESIGN §13): the GET's status and headers, with the
/// length its body would have, and no body.
fn bodiless_if(head: bool, result: ApiResult<Response>) -> ApiResult<Response> {
    if !head {
        return result;
    }
    let (mut parts, body) = result
        .unwrap_or_else(IntoResponse::into_response)
        .into_parts();
    if let Some(len) = axum::body::HttpBody::size_hint(&body).exact() {
        parts.headers.insert(header::CONTENT_LENGTH, len.into());
    }
    Ok(Response::from_parts(parts, Body::empty()))
}

/// A response with `headers` (values that are not valid header text are
/// dropped: every value here is built from validated names and digests).
pub(crate) fn respond(
    status: StatusCode,
    headers: Vec<(HeaderName, String)>,
    body: Body,
) -> Response {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    for (name, value) in headers {
        if let Ok(v) = HeaderValue::from_str(&value) {
            response.headers_mut().append(name, v);
        }
    }
    response
}

/// A header's value as text, if present and valid.
pub(crate) fn header_str<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// `Content-Length` if the client sent one (a malformed one is refused).
pub(crate) fn content_length(headers: &HeaderMap) -> ApiResult<Option<u64>> {
    match headers.get(header::CONTENT_LENGTH) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.parse().ok())
            .map(Some)
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::SizeInvalid,
                    "malformed Content-Length",
                )
            }),
    }
}
