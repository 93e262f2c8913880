//! `ocistore serve` against CNCF distribution 2.8.2 over HTTP on loopback,
//! side by side in one run, with the same client code (hyper) for every
//! server:
//!
//! - `ocistore serve` (release binary, `fs` backend, blobstore layout) with
//!   the `striped` and the `global` lock policy, and Debian's
//!   `docker-registry` (filesystem driver), each a child process so its
//!   peak RSS (`VmHWM`) is its own;
//! - 1, 4 and 16 concurrent clients push the same 16 images (WORKLOADS.md's
//!   shape: shared base layers plus each image's own layers; the issue's
//!   reference is 32 MiB shared + 8 MiB own), each image to its own
//!   repository, on a fresh server per level; then they pull them back.
//!   One client pushing all 16 is "16 sequential"; 16 clients one each is
//!   "16 concurrent"; in each of 3 rounds the servers take turns at each
//!   level, so compared figures are measured close in time (the machine is
//!   shared and its load drifts); the median round's time gives the
//!   throughput, p99 is over every image of every round;
//! - a 1 GiB blob pushed in chunked PATCHes and again in one streamed
//!   PATCH, then pulled, on a fresh server: peak RSS minus the RSS before.
//!
//! A client pushes like Docker: HEAD each blob, then POST, one streamed
//! PATCH and a PUT for those missing, then the manifest; layers one after
//! another. It pulls the manifest, then every blob, checking each length
//! (and, in an untimed pass, every digest of one image per level).
//!
//! Writes `target/ocistore-bench/serve.json` for the report. Needs
//! `cargo build --release -p ocistore` first (`scripts/bench-report` does)
//! and `docker-registry`. `OCISTORE_BENCH_QUICK=1`: small sizes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use e2e::bench::{Phase, quick, summarise, write_result};
use e2e::distribution::{self, Distribution};
use e2e::{Client, MANIFEST};
use engine::{Algorithm, Digest, DigestHasher};
use http_body_util::BodyExt;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

const MIB: usize = 1 << 20;
const CLIENTS: [usize; 3] = [1, 4, 16];
/// Rounds of the level runs in a full run (the median round counts).
const ROUNDS: usize = 3;

/// The workload's sizes.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    images: usize,
    base_layers: usize,
    base_layer: usize,
    own_layers: usize,
    own_layer: usize,
    big: u64,
    /// The chunked push of the big blob sends PATCHes of this size.
    big_chunk: usize,
}

impl Sizes {
    fn get() -> Sizes {
        if quick() {
            Sizes {
                images: 16,
                base_layers: 2,
                base_layer: MIB,
                own_layers: 1,
                own_layer: MIB,
                big: 64 << 20,
                big_chunk: 8 * MIB,
            }
        } else {
            Sizes {
                images: 16,
                base_layers: 4,
                base_layer: 8 * MIB,
                own_layers: 2,
                own_layer: 4 * MIB,
                big: 1 << 30,
                big_chunk: 16 * MIB,
            }
        }
    }
}

// --- the servers --------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum Kind {
    Ocistore(&'static str),
    Distribution,
}

impl Kind {
    fn name(self) -> String {
        match self {
            Kind::Ocistore(policy) => format!("ocistore-{policy}"),
            Kind::Distribution => "distribution-2.8.2".into(),
        }
    }
}

/// A server process on a loopback port, over a fresh directory.
enum Running {
    Ocistore {
        child: Child,
        addr: std::net::SocketAddr,
        _dir: tempfile::TempDir,
    },
    Distribution(Distribution),
}

impl Running {
    fn start(kind: Kind) -> Running {
        match kind {
            Kind::Distribution => Running::Distribution(Distribution::start()),
            Kind::Ocistore(policy) => {
                let bin = ocistore_binary();
                let dir = tempfile::Builder::new()
                    .prefix("serve-bench-")
                    .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
                    .expect("tempdir");
                let root = dir.path().join("root");
                let status = Command::new(&bin)
                    .arg("--root")
                    .arg(&root)
                    .args(["init", "--layout", "blobstore", "--policy", policy])
                    .stdout(Stdio::null())
                    .status()
                    .expect("ocistore init");
                assert!(status.success(), "ocistore init: {status}");
                let addr: std::net::SocketAddr = format!("127.0.0.1:{}", distribution::free_port())
                    .parse()
                    .unwrap();
                let log = std::fs::File::create(dir.path().join("serve.log")).expect("log");
                let mut child = Command::new(&bin)
                    .arg("--root")
                    .arg(&root)
                    .args(["serve", "--addr", &addr.to_string()])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .expect("ocistore serve");
                distribution::wait_until_serving(addr, || match child.try_wait() {
                    Ok(None) => Ok(()),
                    Ok(Some(s)) => Err(s.to_string()),
                    Err(e) => Err(e.to_string()),
                });
                Running::Ocistore {
                    child,
                    addr,
                    _dir: dir,
                }
            }
        }
    }

    fn addr(&self) -> std::net::SocketAddr {
        match self {
            Running::Ocistore { addr, .. } => *addr,
            Running::Distribution(d) => d.addr,
        }
    }

    fn pid(&self) -> u32 {
        match self {
            Running::Ocistore { child, .. } => child.id(),
            Running::Distribution(d) => d.pid(),
        }
    }

    /// (VmRSS, VmHWM) in bytes.
    fn rss(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("/proc/<pid>/status");
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .map(|kb| kb * 1024)
                .unwrap_or_else(|| panic!("{name} not in /proc/<pid>/status"))
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Running::Ocistore { child, .. } = self {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The release `ocistore` beside this bench's own directory.
fn ocistore_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|release| release.join("ocistore"))
        .expect("target dir");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --release -p ocistore` first (scripts/bench-report does)",
        bin.display()
    );
    bin
}

// --- the workload -------------------------------------------------------------

#[derive(Debug, Clone)]
struct Blob {
    digest: Digest,
    data: Bytes,
}

impl Blob {
    fn new(data: Bytes) -> Blob {
        Blob {
            digest: Digest::sha256(&data),
            data,
        }
    }
}

#[derive(Debug, Clone)]
struct Image {
    repo: String,
    /// Config first, then the layers.
    blobs: Vec<Blob>,
    manifest: Bytes,
}

impl Image {
    fn bytes(&self) -> u64 {
        self.blobs.iter().map(|b| b.data.len() as u64).sum::<u64>() + self.manifest.len() as u64
    }
}

/// 16 images over the same base layers, each with its own top layers.
fn images(s: Sizes) -> Vec<Image> {
    let base: Vec<Blob> = (0..s.base_layers)
        .map(|i| Blob::new(testkit::pattern(1000 + i as u64, s.base_layer)))
        .collect();
    (0..s.images)
        .map(|k| {
            let config = Blob::new(Bytes::from(format!(
                "{{\"architecture\":\"amd64\",\"os\":\"linux\",\"image\":{k}}}"
            )));
            let mut layers = base.clone();
            layers.extend((0..s.own_layers).map(|i| {
                Blob::new(testkit::pattern(
                    10_000 + (k * s.own_layers + i) as u64,
                    s.own_layer,
                ))
            }));
            let as_pair = |b: &Blob| (b.digest.clone(), b.data.clone());
            let manifest = testkit::oci::Image::new(
                &as_pair(&config),
                &layers.iter().map(as_pair).collect::<Vec<_>>(),
            )
            .build()
            .bytes;
            let mut blobs = vec![config];
            blobs.extend(layers);
            Image {
                repo: format!("bench/img{k}"),
                blobs,
                manifest,
            }
        })
        .collect()
}

fn expect(status: StatusCode, wanted: StatusCode, what: &str) {
    assert_eq!(status, wanted, "{what}");
}

/// The body in 1 MiB frames, sent with chunked transfer encoding.
fn frames(data: &Bytes) -> impl futures_util::Stream<Item = Bytes> + Send + Sync + 'static {
    let pieces: Vec<Bytes> = (0..data.len())
        .step_by(MIB)
        .map(|i| data.slice(i..(i + MIB).min(data.len())))
        .collect();
    futures_util::stream::iter(pieces)
}

async fn push_image(c: &Client, image: &Image) {
    for blob in &image.blobs {
        let url = format!("/v2/{}/blobs/{}", image.repo, blob.digest);
        if c.head(&url).await.status == StatusCode::OK {
            continue;
        }
        let r = c
            .send(
                Method::POST,
                &format!("/v2/{}/blobs/uploads/", image.repo),
                &[("content-length", "0")],
                Bytes::new(),
            )
            .await;
        expect(r.status, StatusCode::ACCEPTED, "POST upload");
        let r = c
            .send_stream(
                Method::PATCH,
                r.header("location").expect("Location"),
                &[("content-type", "application/octet-stream")],
                frames(&blob.data),
            )
            .await;
        expect(r.status, StatusCode::ACCEPTED, "PATCH");
        let location = r.header("location").expect("Location");
        let sep = if location.contains('?') { '&' } else { '?' };
        let r = c
            .send(
                Method::PUT,
                &format!("{location}{sep}digest={}", blob.digest),
                &[("content-length", "0")],
                Bytes::new(),
            )
            .await;
        expect(r.status, StatusCode::CREATED, "PUT");
    }
    let r = c
        .send(
            Method::PUT,
            &format!("/v2/{}/manifests/v1", image.repo),
            &[("content-type", MANIFEST)],
            image.manifest.clone(),
        )
        .await;
    expect(r.status, StatusCode::CREATED, "manifest PUT");
}

/// Streams a GET's body; returns its length, and its digest if asked.
async fn pull_blob(c: &Client, url: &str, hash: Option<Algorithm>) -> (u64, Option<Digest>) {
    let resp = c.get_streaming(url).await;
    expect(resp.status(), StatusCode::OK, url);
    let mut body = resp.into_body();
    let mut hasher = hash.map(DigestHasher::new);
    let mut len = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.unwrap_or_else(|e| panic!("{url}: {e}"));
        if let Some(data) = frame.data_ref() {
            len += data.len() as u64;
            if let Some(h) = hasher.as_mut() {
                h.update(data);
            }
        }
    }
    (len, hasher.map(DigestHasher::finish))
}

async fn pull_image(c: &Client, image: &Image, verify: bool) {
    let r = c
        .send(
            Method::GET,
            &format!("/v2/{}/manifests/v1", image.repo),
            &[("accept", MANIFEST)],
            Bytes::new(),
        )
        .await;
    expect(r.status, StatusCode::OK, "manifest GET");
    assert_eq!(r.body, image.manifest, "manifest bytes");
    for blob in &image.blobs {
        let url = format!("/v2/{}/blobs/{}", image.repo, blob.digest);
        let (len, digest) = pull_blob(c, &url, verify.then_some(Algorithm::Sha256)).await;
        assert_eq!(len, blob.data.len() as u64, "{url}: length");
        if let Some(d) = digest {
            assert_eq!(d, blob.digest, "{url}: bytes");
        }
    }
}

// --- measuring ------------------------------------------------------------------

/// `clients` clients share `images` (client i takes images i, i+clients,
/// ...): all push, then all pull. Returns (push, pull) phases.
async fn level(addr: std::net::SocketAddr, images: &[Image], clients: usize) -> (Phase, Phase) {
    let images = Arc::new(images.to_vec());
    let mut results = Vec::new();
    for pulling in [false, true] {
        let start = Instant::now();
        let tasks: Vec<_> = (0..clients)
            .map(|i| {
                let images = Arc::clone(&images);
                rtokio::spawn(async move {
                    let c = Client::new(addr);
                    let mut latencies = Vec::new();
                    for image in images.iter().skip(i).step_by(clients) {
                        let t = Instant::now();
                        if pulling {
                            pull_image(&c, image, false).await;
                        } else {
                            push_image(&c, image).await;
                        }
                        latencies.push(t.elapsed());
                    }
                    latencies
                })
            })
            .collect();
        let mut latencies = Vec::new();
        for t in tasks {
            latencies.extend(t.await.expect("client task"));
        }
        results.push(Phase {
            wall: start.elapsed(),
            latencies,
        });
    }
    // Untimed: one image's every byte, against its digests.
    pull_image(&Client::new(addr), &images[images.len() - 1], true).await;
    let pull = results.pop().unwrap();
    (results.pop().unwrap(), pull)
}

/// The pieces of a big blob: 1 MiB each, drawn from `seed`.
fn big_piece(seed: u64, index: u64, len: usize) -> Bytes {
    testkit::pattern(seed.wrapping_mul(1 << 32).wrapping_add(index), len)
}

/// A 1 GiB blob pushed in chunked PATCHes, another in one streamed PATCH,
/// the first pulled back; RSS before and at peak.
async fn big_blob(kind: Kind, s: Sizes) -> Value {
    let server = Running::start(kind);
    let addr = server.addr();
    let c = Client::new(addr);
    expect(c.get("/v2/").await.status, StatusCode::OK, "ping");
    let (rss_before, _) = server.rss();
    let pieces = s.big / MIB as u64;

    // Chunked: PATCHes of `big_chunk` bytes with Content-Range.
    let t = Instant::now();
    let r = c
        .send(
            Method::POST,
            "/v2/big/chunked/blobs/uploads/",
            &[("content-length", "0")],
            Bytes::new(),
        )
        .await;
    expect(r.status, StatusCode::ACCEPTED, "POST");
    let mut location = r.header("location").expect("Location").to_owned();
    let mut hasher = DigestHasher::new(Algorithm::Sha256);
    let per_patch = (s.big_chunk / MIB) as u64;
    let mut offset = 0u64;
    for first in (0..pieces).step_by(per_patch as usize) {
        let mut chunk = Vec::with_capacity(s.big_chunk);
        for i in first..(first + per_patch).min(pieces) {
            chunk.extend_from_slice(&big_piece(1, i, MIB));
        }
        hasher.update(&chunk);
        let end = offset + chunk.len() as u64 - 1;
        let range = format!("{offset}-{end}");
        let len = chunk.len().to_string();
        let r = c
            .send(
                Method::PATCH,
                &location,
                &[
                    ("content-type", "application/octet-stream"),
                    ("content-range", &range),
                    ("content-length", &len),
                ],
                chunk,
            )
            .await;
        expect(r.status, StatusCode::ACCEPTED, "chunk PATCH");
        location = r.header("location").expect("Location").to_owned();
        offset = end + 1;
    }
    let chunked_digest = hasher.finish();
    let sep = if location.contains('?') { '&' } else { '?' };
    let r = c
        .send(
            Method::PUT,
            &format!("{location}{sep}digest={chunked_digest}"),
            &[("content-length", "0")],
            Bytes::new(),
        )
        .await;
    expect(r.status, StatusCode::CREATED, "PUT");
    let chunked_secs = t.elapsed().as_secs_f64();
    let (_, peak_after_chunked) = server.rss();

    // Streamed: one PATCH whose body is produced as it is sent, hashed on
    // the way (the digest is known when the PATCH ends, as for Docker).
    let t = Instant::now();
    let r = c
        .send(
            Method::POST,
            "/v2/big/streamed/blobs/uploads/",
            &[("content-length", "0")],
            Bytes::new(),
        )
        .await;
    expect(r.status, StatusCode::ACCEPTED, "POST");
    let hasher = Arc::new(Mutex::new(Some(DigestHasher::new(Algorithm::Sha256))));
    let body_hasher = Arc::clone(&hasher);
    let body = futures_util::stream::iter(0..pieces).map(move |i| {
        let piece = big_piece(2, i, MIB);
        if let Some(h) = body_hasher.lock().unwrap().as_mut() {
            h.update(&piece);
        }
        piece
    });
    let r = c
        .send_stream(
            Method::PATCH,
            r.header("location").expect("Location"),
            &[("content-type", "application/octet-stream")],
            body,
        )
        .await;
    expect(r.status, StatusCode::ACCEPTED, "streamed PATCH");
    let streamed_digest = hasher.lock().unwrap().take().unwrap().finish();
    let location = r.header("location").expect("Location");
    let sep = if location.contains('?') { '&' } else { '?' };
    let r = c
        .send(
            Method::PUT,
            &format!("{location}{sep}digest={streamed_digest}"),
            &[("content-length", "0")],
            Bytes::new(),
        )
        .await;
    expect(r.status, StatusCode::CREATED, "PUT");
    let streamed_secs = t.elapsed().as_secs_f64();
    let (_, peak_after_streamed) = server.rss();

    // Pull the chunked one back, every byte hashed.
    let t = Instant::now();
    let (len, digest) = pull_blob(
        &c,
        &format!("/v2/big/chunked/blobs/{chunked_digest}"),
        Some(Algorithm::Sha256),
    )
    .await;
    let pull_secs = t.elapsed().as_secs_f64();
    assert_eq!((len, digest), (s.big, Some(chunked_digest)), "pulled bytes");

    let (_, peak) = server.rss();
    let mb = s.big as f64 / 1e6;
    json!({
        "bytes": s.big,
        "chunk_bytes": s.big_chunk,
        "chunked_push_mb_per_s": mb / chunked_secs,
        "streamed_push_mb_per_s": mb / streamed_secs,
        "pull_mb_per_s": mb / pull_secs,
        "rss_before_bytes": rss_before,
        "peak_rss_bytes": peak,
        "extra_rss_bytes": peak.saturating_sub(rss_before),
        // VmHWM is a running maximum: which phase raised it.
        "extra_rss_after_chunked_push_bytes": peak_after_chunked.saturating_sub(rss_before),
        "extra_rss_after_streamed_push_bytes": peak_after_streamed.saturating_sub(rss_before),
    })
}

use futures_util::StreamExt as _;

#[rtokio::main(crate = "rtokio", flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench -p e2e --bench serve -- FILTER` runs only the parts
    // named `<server>/levels` or `<server>/big` that contain FILTER
    // (`cargo bench` itself passes `--bench`).
    let filter = std::env::args().skip(1).find(|a| !a.starts_with("--"));
    let wanted = |part: String| filter.as_ref().is_none_or(|f| part.contains(f.as_str()));
    let s = Sizes::get();
    distribution::binary();
    ocistore_binary();
    let images = images(s);
    let kinds = [
        Kind::Ocistore("striped"),
        Kind::Ocistore("global"),
        Kind::Distribution,
    ];
    // Rounds, and in each the servers one after another at each level, so
    // that the figures compared were measured close in time (a shared
    // machine's load drifts).
    let rounds = if quick() { 1 } else { ROUNDS };
    let bytes: u64 = images.iter().map(Image::bytes).sum();
    // (push rounds, pull rounds, peak RSS) per server and level.
    let mut measured = vec![vec![(Vec::new(), Vec::new(), 0u64); CLIENTS.len()]; kinds.len()];
    for round in 0..rounds {
        for (l, clients) in CLIENTS.into_iter().enumerate() {
            for (k, kind) in kinds.into_iter().enumerate() {
                if !wanted(format!("{}/levels", kind.name())) {
                    continue;
                }
                let server = Running::start(kind);
                let (push, pull) = level(server.addr(), &images, clients).await;
                let (_, peak) = server.rss();
                println!(
                    "round {round}: {:<20} {clients:>2} clients: push {:>6.2} s | pull {:>6.2} s | peak RSS {:.1} MiB",
                    kind.name(),
                    push.wall.as_secs_f64(),
                    pull.wall.as_secs_f64(),
                    peak as f64 / MIB as f64,
                );
                let m = &mut measured[k][l];
                m.0.push(push);
                m.1.push(pull);
                m.2 = m.2.max(peak);
            }
        }
    }
    let mut servers = Vec::new();
    for (k, kind) in kinds.into_iter().enumerate() {
        let mut levels = Vec::new();
        for (l, clients) in CLIENTS.into_iter().enumerate() {
            let (pushes, pulls, peak) = &measured[k][l];
            if pushes.is_empty() {
                continue;
            }
            let push = summarise(pushes, images.len(), bytes);
            let pull = summarise(pulls, images.len(), bytes);
            println!(
                "{:<20} {clients:>2} clients: push {:>7.1} MB/s p99 {:>7.1} ms | pull {:>7.1} MB/s p99 {:>7.1} ms | peak RSS {:.1} MiB",
                kind.name(),
                push["mb_per_s"].as_f64().unwrap(),
                push["p99_ms"].as_f64().unwrap(),
                pull["mb_per_s"].as_f64().unwrap(),
                pull["p99_ms"].as_f64().unwrap(),
                *peak as f64 / MIB as f64,
            );
            levels.push(json!({
                "clients": clients,
                "push": push,
                "pull": pull,
                "peak_rss_bytes": peak,
            }));
        }
        if !wanted(format!("{}/big", kind.name())) {
            servers.push(json!({"name": kind.name(), "levels": levels}));
            continue;
        }
        let big = big_blob(kind, s).await;
        println!(
            "{:<20} {} MiB blob: chunked push {:.0} MB/s, streamed push {:.0} MB/s, pull {:.0} MB/s, extra RSS {:.1} MiB",
            kind.name(),
            s.big >> 20,
            big["chunked_push_mb_per_s"].as_f64().unwrap(),
            big["streamed_push_mb_per_s"].as_f64().unwrap(),
            big["pull_mb_per_s"].as_f64().unwrap(),
            big["extra_rss_bytes"].as_u64().unwrap() as f64 / MIB as f64,
        );
        servers.push(json!({"name": kind.name(), "levels": levels, "big_blob": big}));
    }
    let result = json!({
        "quick": quick(),
        "rounds": rounds,
        "workload": {
            "images": s.images,
            "base_layers": s.base_layers,
            "base_layer_bytes": s.base_layer,
            "own_layers": s.own_layers,
            "own_layer_bytes": s.own_layer,
            "image_bytes": images[0].bytes(),
        },
        "servers": servers,
    });
    write_result(env!("CARGO_TARGET_TMPDIR"), "serve", &result);
}
