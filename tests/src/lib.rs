//! Test support for the cross-crate tests: a registry served in-process on
//! `127.0.0.1:0` over a fresh root, a small HTTP client on hyper, and a raw
//! TCP client for requests a well-behaved client library refuses to send
//! (`..` in paths, lying `Content-Length`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use engine::driver::{Driver, FsDriver, ObjectDriver};
use engine::meta::RedbMeta;
use engine::oci::media;
use engine::{Digest, LayoutKind, LockPolicy, Store, StoreConfig};
use futures_util::Stream;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rtokio::io::{AsyncReadExt, AsyncWriteExt};
use testkit::oci;

pub mod bench;
pub mod distribution;

/// Which driver the served root uses.
#[derive(Debug, Clone, Copy)]
pub enum Backend {
    Fs,
    Object,
    /// A fresh bucket of the process's moto_server.
    S3,
}

/// A registry serving a fresh root until dropped.
#[derive(Debug)]
pub struct Registry {
    pub addr: SocketAddr,
    pub store: Store,
    pub root: tempfile::TempDir,
    stop: Option<rtokio::sync::oneshot::Sender<()>>,
    /// The serving task, awaited by [`Registry::restart`].
    served: Option<rtokio::task::JoinHandle<()>>,
    /// How it was started, for [`Registry::restart`].
    setup: Setup,
}

#[derive(Debug, Clone)]
struct Setup {
    backend: Backend,
    layout: LayoutKind,
    policy: LockPolicy,
    access: Option<Arc<server::auth::Access>>,
    redirect_for: Option<Duration>,
    /// The S3 backend's bucket, made once: a restart serves it again.
    bucket: Option<String>,
}

impl Registry {
    /// blobstore layout, striped locks, `fs` driver.
    pub async fn start() -> Registry {
        Registry::start_with(Backend::Fs, LayoutKind::Blobstore, LockPolicy::Striped).await
    }

    pub async fn start_with(backend: Backend, layout: LayoutKind, policy: LockPolicy) -> Registry {
        Registry::serve(backend, layout, policy, None, None).await
    }

    /// A blobstore root on S3 (moto) whose blob GETs redirect to presigned
    /// URLs valid for `expires_in` (`serve --redirect-blobs`).
    pub async fn start_redirected(expires_in: Duration) -> Registry {
        Registry::serve(
            Backend::S3,
            LayoutKind::Blobstore,
            LockPolicy::Striped,
            None,
            Some(expires_in),
        )
        .await
    }

    /// [`Registry::start`] behind access control.
    pub async fn start_guarded(access: server::auth::Access) -> Registry {
        let access = Some(Arc::new(access));
        Registry::serve(
            Backend::Fs,
            LayoutKind::Blobstore,
            LockPolicy::Striped,
            access,
            None,
        )
        .await
    }

    async fn serve(
        backend: Backend,
        layout: LayoutKind,
        policy: LockPolicy,
        access: Option<Arc<server::auth::Access>>,
        redirect_for: Option<Duration>,
    ) -> Registry {
        let root = tempfile::tempdir().expect("tempdir");
        let bucket =
            matches!(backend, Backend::S3).then(|| testkit::moto::Moto::shared().bucket("e2e"));
        let setup = Setup {
            backend,
            layout,
            policy,
            access,
            redirect_for,
            bucket,
        };
        Registry::serve_on(root, setup).await
    }

    /// Shuts the server down gracefully (requests in flight finish), drops
    /// its store, and serves the same root again from a newly opened
    /// store (metadata included) on a new port: a restart of `serve`.
    pub async fn restart(mut self) -> Registry {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(served) = self.served.take() {
            rtokio::time::timeout(Duration::from_secs(30), served)
                .await
                .expect("the server shuts down")
                .expect("the server task ends cleanly");
        }
        let root = std::mem::replace(&mut self.root, tempfile::tempdir().expect("tempdir"));
        let setup = self.setup.clone();
        // The old store (and its metadata database) closes here, before
        // the root is opened again.
        drop(self);
        Registry::serve_on(root, setup).await
    }

    async fn serve_on(root: tempfile::TempDir, setup: Setup) -> Registry {
        let (backend, layout, policy) = (setup.backend, setup.layout, setup.policy);
        let access = setup.access.clone();
        let mut redirect = None;
        let driver: Arc<dyn Driver> = match backend {
            Backend::Fs => Arc::new(FsDriver::open(root.path()).expect("fs driver")),
            Backend::Object => Arc::new(ObjectDriver::in_dir(root.path()).expect("object driver")),
            Backend::S3 => {
                let moto = testkit::moto::Moto::shared();
                let bucket = setup.bucket.clone().expect("an S3 setup has its bucket");
                let s3 = ocistore_s3::S3Driver::open(ocistore_s3::S3Config::for_test_server(
                    moto.endpoint(),
                    bucket,
                ))
                .expect("s3 driver");
                redirect = setup
                    .redirect_for
                    .map(|expires| server::redirect::BlobRedirect::new(s3.clone(), expires));
                Arc::new(s3)
            }
        };
        let meta_dir = root.path().join("_ocistore");
        std::fs::create_dir_all(&meta_dir).expect("meta dir");
        let meta = Arc::new(RedbMeta::open(meta_dir.join("meta.redb")).expect("redb"));
        let store = Store::open(driver, meta, StoreConfig { layout, policy })
            .await
            .expect("store opens");
        let listener = server::bind("127.0.0.1:0".parse().unwrap())
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = rtokio::sync::oneshot::channel();
        let served = store.clone();
        let served = rtokio::spawn(async move {
            let app = server::router_with(served, access);
            let app = match redirect {
                Some(redirect) => server::redirect::redirect_blob_gets(app, redirect),
                None => app,
            };
            server::serve_router(listener, app, async {
                let _ = stopped.await;
            })
            .await
            .expect("serve");
        });
        Registry {
            addr,
            store,
            root,
            stop: Some(stop),
            served: Some(served),
            setup,
        }
    }

    pub fn client(&self) -> Client {
        Client::new(self.addr)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

type Body = BoxBody<Bytes, std::io::Error>;

/// A response, body read whole.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The body ended before its `Content-Length` (only a
    /// [`Client::tolerant`] client returns such a response).
    pub body_cut_short: bool,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The first error code of a spec error body.
    pub fn error_code(&self) -> Option<String> {
        let v: serde_json::Value = serde_json::from_slice(&self.body).ok()?;
        Some(v["errors"][0]["code"].as_str()?.to_owned())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
}

/// A loopback HTTP/1.1 client.
#[derive(Debug, Clone)]
pub struct Client {
    pub addr: SocketAddr,
    http: HyperClient<HttpConnector, Body>,
    tolerant: bool,
}

impl Client {
    pub fn new(addr: SocketAddr) -> Client {
        Client {
            addr,
            http: HyperClient::builder(TokioExecutor::new()).build_http(),
            tolerant: false,
        }
    }

    /// A client that returns a response whose body breaks off (marked
    /// [`Resp::body_cut_short`]) instead of failing the test: for servers
    /// not under test.
    pub fn tolerant(mut self) -> Client {
        self.tolerant = true;
        self
    }

    /// `path` is a path (`/v2/...`) or a `Location` the server returned
    /// (relative, or absolute as CNCF distribution sends it).
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Resp {
        let body = Full::new(body.into())
            .map_err(|e: Infallible| match e {})
            .boxed();
        self.request(method, path, headers, body).await
    }

    /// A body sent as it is produced (chunked transfer encoding, no
    /// `Content-Length`).
    pub async fn send_stream(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        chunks: impl Stream<Item = Bytes> + Send + Sync + 'static,
    ) -> Resp {
        use futures_util::StreamExt;
        let body = BodyExt::boxed(StreamBody::new(chunks.map(|b| Ok(Frame::data(b)))));
        self.request(method, path, headers, body).await
    }

    /// A GET whose response body is left unread, for the caller to stream
    /// (a large blob need not be held in memory).
    pub async fn get_streaming(&self, path: &str) -> hyper::Response<hyper::body::Incoming> {
        let uri = self.uri(path);
        let req = Request::get(&uri)
            .body(
                Full::new(Bytes::new())
                    .map_err(|e: Infallible| match e {})
                    .boxed(),
            )
            .expect("request");
        self.http
            .request(req)
            .await
            .unwrap_or_else(|e| panic!("{uri}: {e}"))
    }

    fn uri(&self, path: &str) -> String {
        if path.starts_with("http://") {
            path.to_owned()
        } else {
            format!("http://{}{path}", self.addr)
        }
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Body,
    ) -> Resp {
        let uri = self.uri(path);
        let mut req = Request::builder().method(method).uri(&uri);
        for (k, v) in headers {
            req = req.header(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let req = req.body(body).expect("request");
        let resp = rtokio::time::timeout(Duration::from_secs(60), self.http.request(req))
            .await
            .unwrap_or_else(|_| panic!("{uri}: timed out"))
            .unwrap_or_else(|e| panic!("{uri}: {e}"));
        let (parts, body) = resp.into_parts();
        let (body, body_cut_short) = match body.collect().await {
            Ok(body) => (body.to_bytes(), false),
            Err(_) if self.tolerant => (Bytes::new(), true),
            Err(e) => panic!("{uri}: response body: {e}"),
        };
        Resp {
            status: parts.status,
            headers: parts.headers,
            body,
            body_cut_short,
        }
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.send(Method::GET, path, &[], Bytes::new()).await
    }

    pub async fn head(&self, path: &str) -> Resp {
        self.send(Method::HEAD, path, &[], Bytes::new()).await
    }

    pub async fn delete(&self, path: &str) -> Resp {
        self.send(Method::DELETE, path, &[], Bytes::new()).await
    }

    /// POST of a new upload session in `repo`; panics unless 202. Returns
    /// its `Location`.
    pub async fn start_session(&self, repo: &str) -> String {
        let r = self
            .send(
                Method::POST,
                &format!("/v2/{repo}/blobs/uploads/"),
                &[("content-length", "0")],
                Bytes::new(),
            )
            .await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{r:?}");
        let location = r.header("location").expect("Location").to_owned();
        assert!(
            location.starts_with(&format!("/v2/{repo}/blobs/uploads/")),
            "{location}"
        );
        location
    }

    /// A chunk PATCHed to a session's `location` with `Content-Range: range`.
    pub async fn patch_chunk(&self, location: &str, range: &str, data: &[u8]) -> Resp {
        let len = data.len().to_string();
        self.send(
            Method::PATCH,
            location,
            &[
                ("content-type", "application/octet-stream"),
                ("content-range", range),
                ("content-length", &len),
            ],
            Bytes::copy_from_slice(data),
        )
        .await
    }

    /// The closing PUT of a session at `location`, with no last chunk;
    /// returns the response.
    pub async fn finish_session(&self, location: &str, digest: &Digest) -> Resp {
        let separator = if location.contains('?') { '&' } else { '?' };
        self.send(
            Method::PUT,
            &format!("{location}{separator}digest={digest}"),
            &[("content-length", "0")],
            Bytes::new(),
        )
        .await
    }

    /// A monolithic push (single POST); panics unless 201.
    pub async fn push_blob(&self, repo: &str, data: &[u8]) -> Digest {
        let digest = Digest::sha256(data);
        let r = self
            .send(
                Method::POST,
                &format!("/v2/{repo}/blobs/uploads/?digest={digest}"),
                &[("content-type", "application/octet-stream")],
                Bytes::copy_from_slice(data),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "push blob: {:?}", r);
        digest
    }

    /// A manifest PUT; returns the response.
    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> Resp {
        self.send(
            Method::PUT,
            &format!("/v2/{repo}/manifests/{reference}"),
            &[("content-type", media_type)],
            Bytes::copy_from_slice(body),
        )
        .await
    }
}

/// Sends `request` as raw bytes over a new connection and returns the
/// response's status code and the whole text read until the server closes
/// (`connection: close` in the request) or 10 s pass. For requests a client library would normalise or refuse.
pub async fn raw(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    raw_with(addr, request, false).await
}

/// [`raw`]; with `half_close`, the client then closes its sending side, so
/// a body shorter than its `Content-Length` ends early (the server may drop
/// the connection without an answer: status 0).
pub async fn raw_with(addr: SocketAddr, request: &[u8], half_close: bool) -> (u16, String) {
    let mut conn = rtokio::net::TcpStream::connect(addr)
        .await
        .expect("connect");
    conn.write_all(request).await.expect("write");
    if half_close {
        let _ = conn.shutdown().await;
    }
    let mut out = Vec::new();
    let _ = rtokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// An OCI image manifest over `config` and `layers` (sizes given, blobs
/// pushed or not): add a subject, an artifact type or annotations, then
/// `.build()`.
pub fn image_manifest(config: (&Digest, usize), layers: &[(&Digest, usize)]) -> oci::Image {
    oci::Image::from_descriptors(
        oci::Desc::new(media::OCI_CONFIG, config.0.clone(), config.1),
        layers
            .iter()
            .map(|(d, n)| oci::Desc::new(media::OCI_LAYER, (*d).clone(), *n))
            .collect(),
    )
}

/// What a referrer's `subject` says of a manifest known only by digest.
pub fn subject(digest: &Digest) -> oci::Desc {
    oci::Desc::new(MANIFEST, digest.clone(), 1)
}

pub const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// Pushes a config and one layer and a manifest tagged `tag`; returns
/// (manifest digest, manifest bytes, layer digest, layer bytes).
pub async fn push_image(
    c: &Client,
    repo: &str,
    tag: &str,
    seed: &str,
) -> (Digest, Vec<u8>, Digest, Vec<u8>) {
    let config = format!("{{\"seed\":\"{seed}\"}}").into_bytes();
    let layer = format!("layer of {seed}").repeat(100).into_bytes();
    let cd = c.push_blob(repo, &config).await;
    let ld = c.push_blob(repo, &layer).await;
    let manifest = image_manifest((&cd, config.len()), &[(&ld, layer.len())])
        .build()
        .bytes
        .to_vec();
    let r = c.put_manifest(repo, tag, MANIFEST, &manifest).await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    (Digest::sha256(&manifest), manifest, ld, layer)
}
