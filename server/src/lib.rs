//! # server: the OCI Distribution API v1.1 over an ocistore [`Store`]
//!
//! One axum route takes everything under `/v2/`; [`path`] parses it by hand
//! (repository names contain `/`), the handlers turn a request into one
//! engine call or a few, and [`error`] maps the engine's errors to the
//! spec's JSON body and status in one place. Handlers stay thin: every rule
//! about names, digests, manifests and sessions lives in the engine.
//!
//! ## What is streamed, what is buffered
//! - Upload bodies (POST `?digest=`, PATCH, PUT) are read frame by frame and
//!   fed to [`Store::append_upload`] in pieces of at most [`UPLOAD_PIECE`]
//!   bytes: memory per request is bounded whatever the blob's size.
//! - Blob GET: a blob up to [`WHOLE_READ_MAX`] is read whole with
//!   [`Store::get_blob`] (the engine verifies it before a byte is sent).
//!   A larger blob is sent in [`READ_PIECE`] ranges from
//!   [`Store::get_blob_range`], hashed as it goes; if the bytes do not hash
//!   to the digest the body is cut short with an error, so a client never
//!   receives a complete response with the wrong content (it may have
//!   received a prefix). Ranged GETs read only the range (not verifiable).
//! - Manifest bodies are buffered (at most 4 MiB, the engine's limit;
//!   larger is 413), as are manifest GETs (the engine returns whole bytes).
//!
//! ## Where it differs from CNCF distribution
//! `docs/distribution-differences.md` lists every difference a differential
//! run against distribution 2.8.2 finds (`tests/e2e/differential.rs` keeps
//! it true), each with the spec clause that allows it.
//!
//! ## Upload sessions survive a restart
//! A PATCH is answered only once its bytes are durable and the session's
//! record (metadata store) says so ([`Store::sync_upload`]): after a
//! restart, or a crash, `GET` on the session answers 204 with the `Range`
//! of the acknowledged bytes and the client carries on from there (a crash
//! mid-PATCH loses only that unacknowledged request's bytes). The first
//! call on a session after a restart reads its staged bytes back once, to
//! rebuild the hash. Sessions expire by last activity: the GC run inside
//! `serve` (`--gc-every`) cancels those idle longer than the larger of the
//! upload timeout and `--gc-delay`. See `engine::store` (blobs) for the
//! crash points. With several instances (`--meta-postgres`) the record is
//! the session: each request on it may go to any instance
//! (`docs/multi-instance.md`).

pub mod auth;
pub mod error;
mod handlers;
pub mod path;
pub mod periodic_gc;
pub mod redirect;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Instant;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::Response;
use engine::Store;

pub use handlers::{READ_PIECE, UPLOAD_PIECE, WHOLE_READ_MAX};

/// The header every response carries (clients probe it on `/v2/`).
pub const API_VERSION: (&str, &str) = ("docker-distribution-api-version", "registry/2.0");

/// The application: every route, the API version header, one log line per request.
pub fn router(store: Store) -> Router {
    router_with(store, None)
}

/// [`router`], with access control when `access` is given ([`auth`]).
pub fn router_with(store: Store, access: Option<std::sync::Arc<auth::Access>>) -> Router {
    let app = Router::new().fallback(handlers::dispatch).with_state(store);
    let app = match access {
        Some(access) => app.layer(middleware::from_fn_with_state(access, auth::enforce)),
        None => app,
    };
    app.layer(middleware::from_fn(log_request))
}

/// Serves `store` on `listener` until `shutdown` completes, then lets
/// requests in flight finish (axum's graceful shutdown).
pub async fn serve(
    listener: rtokio::net::TcpListener,
    store: Store,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_router(listener, router(store), shutdown).await
}

/// Serves `app` (a [`router_with`]) on `listener` until `shutdown`.
pub async fn serve_router(
    listener: rtokio::net::TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Binds `addr` (a loopback address by default in the CLI).
pub async fn bind(addr: SocketAddr) -> std::io::Result<rtokio::net::TcpListener> {
    rtokio::net::TcpListener::bind(addr).await
}

/// Completes on SIGTERM or ctrl-c.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if rtokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match rtokio::signal::unix::signal(rtokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    rtokio::select! {
        () = ctrl_c => tracing::info!("ctrl-c: shutting down"),
        () = term => tracing::info!("SIGTERM: shutting down"),
    }
}

async fn log_request(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let uri = req.uri().clone();
    let mut response = next.run(req).await;
    response.headers_mut().insert(
        HeaderName::from_static(API_VERSION.0),
        HeaderValue::from_static(API_VERSION.1),
    );
    let length = response
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned();
    tracing::info!(
        target: "ocistore::http",
        "{method} {uri} {} {length} {:.3}ms",
        response.status().as_u16(),
        start.elapsed().as_secs_f64() * 1e3
    );
    response
}
