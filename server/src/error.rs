//! Errors at the HTTP edge: every failure becomes the spec's JSON body
//! `{"errors":[{"code","message","detail"}]}` with its status, in one place.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use engine::{ErrorCode, StoreError};
use serde_json::json;

/// One API error: a status, a code (the spec's, or `UNKNOWN` for a server
/// fault), a message, and extra headers (`Range` on a 416 of an upload).
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub headers: HeaderMap,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code: code.as_str(),
            message: message.into(),
            headers: HeaderMap::new(),
        }
    }

    /// The engine's own mapping (`ErrorCode::http_status`).
    pub fn code(code: ErrorCode, message: impl Into<String>) -> ApiError {
        let status = StatusCode::from_u16(code.http_status()).expect("valid status");
        ApiError::new(status, code, message)
    }

    /// No such endpoint: 404 with the spec's body shape (code `NOT_FOUND`
    /// is not one of the spec's codes; no spec code fits an unknown URL).
    pub fn no_route() -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            code: "NOT_FOUND",
            message: "no such endpoint".into(),
            headers: HeaderMap::new(),
        }
    }

    pub fn method_not_allowed() -> ApiError {
        ApiError {
            status: StatusCode::METHOD_NOT_ALLOWED,
            code: ErrorCode::Unsupported.as_str(),
            message: "method not allowed on this endpoint".into(),
            headers: HeaderMap::new(),
        }
    }

    pub fn with_header(mut self, name: header::HeaderName, value: String) -> ApiError {
        if let Ok(v) = HeaderValue::from_str(&value) {
            self.headers.insert(name, v);
        }
        self
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        let message = e.to_string();
        match e.code() {
            Some(code) => ApiError::code(code, message),
            None if e.is_no_space() => ApiError {
                status: StatusCode::INSUFFICIENT_STORAGE,
                code: "UNKNOWN",
                message,
                headers: HeaderMap::new(),
            },
            None if e.is_retryable() => {
                let mut headers = HeaderMap::new();
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                ApiError {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    code: "UNKNOWN",
                    message,
                    headers,
                }
            }
            None => {
                tracing::error!(error = %message, "storage failure");
                ApiError {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    code: "UNKNOWN",
                    message,
                    headers: HeaderMap::new(),
                }
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body =
            json!({"errors": [{"code": self.code, "message": self.message, "detail": null}]});
        let mut response = (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response();
        response.headers_mut().extend(self.headers);
        response
    }
}
