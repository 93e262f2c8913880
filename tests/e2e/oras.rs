//! A real client: the ORAS Python SDK (PyPI `oras`) pushes two files as an
//! artifact with chunked uploads (POST, PATCH per chunk, PUT) and pulls them
//! back, byte for byte, on both layouts. The SDK runs in a venv: the test
//! fails (never skips) without it, saying how to make it.

use std::path::{Path, PathBuf};
use std::process::Command;

use e2e::{MANIFEST, Registry};
use engine::{Digest, LayoutKind, LockPolicy};

/// The version `.ci/run` installs and this test was written against.
const ORAS_VERSION: &str = "0.2.43";
/// Small enough that both files take several PATCHes.
const CHUNK: usize = 64 * 1024;

/// Pushes the files of `src` (names relative to it, as the SDK wants) to
/// `target` with `do_chunked=True`, pulls `target` into `out`, and writes
/// every HTTP request the SDK made (method, URL, status, Content-Range) and
/// the pulled paths as JSON to `report`.
const SCRIPT: &str = r#"
import json, os, sys
import oras.provider, oras.version

target, src, out, chunk, report = sys.argv[1:6]
log = []
reg = oras.provider.Registry(insecure=True)
reg.session.hooks["response"].append(
    lambda r, *a, **k: log.append(
        [r.request.method, r.request.url, r.status_code, r.request.headers.get("Content-Range")]
    )
)
os.chdir(src)
files = sorted(os.listdir("."))
reg.push(target, files=files, do_chunked=True, chunk_size=int(chunk), quiet=True)
pulled = reg.pull(target, outdir=out)
with open(report, "w") as f:
    json.dump({"version": oras.version.__version__, "pulled": pulled, "requests": log}, f)
"#;

fn python() -> PathBuf {
    let path = match std::env::var_os("OCISTORE_ORAS_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/venv-oras/bin/python"),
    };
    assert!(
        path.exists(),
        "{} is missing: create the venv from the workspace root with \
         `python3 -m venv target/venv-oras && target/venv-oras/bin/pip install -q oras=={ORAS_VERSION}` \
         (.ci/run does), or point OCISTORE_ORAS_PYTHON at a python that has `oras`",
        path.display()
    );
    path
}

/// Runs `script` with the venv's python, `args` and then the path of the
/// JSON report it must write; returns the report, checked to come from
/// the pinned SDK.
pub(crate) async fn run_script(
    work: &Path,
    script: &str,
    args: &[&std::ffi::OsStr],
) -> serde_json::Value {
    let py = python();
    let script_path = work.join("oras_script.py");
    std::fs::write(&script_path, script).unwrap();
    let report = work.join("report.json");
    let mut cmd = Command::new(&py);
    cmd.arg(&script_path).args(args).arg(&report);
    let output = rtokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", py.display()));
    assert!(
        output.status.success(),
        "oras script failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(report["version"], ORAS_VERSION, "the venv has another oras");
    report
}

/// Deterministic bytes that do not repeat with the chunk size.
fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

async fn oras_round_trip(layout: LayoutKind) {
    let reg = Registry::start_with(e2e::Backend::Fs, layout, LockPolicy::Striped).await;
    let work = tempfile::tempdir().unwrap();
    let (src, out) = (work.path().join("src"), work.path().join("out"));
    std::fs::create_dir_all(&src).unwrap();
    // 4 chunks (the last one short) and 2 chunks.
    let files = [
        ("a.bin", pattern(3 * CHUNK + 3_392, 1)),
        ("b.txt", pattern(CHUNK + 1, 2)),
    ];
    for (name, data) in &files {
        std::fs::write(src.join(name), data).unwrap();
    }
    let target = format!("{}/lab/oras:v1", reg.addr);
    let chunk = CHUNK.to_string();
    let report = run_script(
        work.path(),
        SCRIPT,
        &[target.as_ref(), src.as_ref(), out.as_ref(), chunk.as_ref()],
    )
    .await;
    let requests = report["requests"].as_array().unwrap();
    let log = || serde_json::to_string_pretty(requests).unwrap();

    // Every request answered without an error or a retry: the only non-2xx
    // answers are the 404s of the SDK's HEAD before each blob upload.
    for r in requests {
        let (method, status) = (r[0].as_str().unwrap(), r[2].as_u64().unwrap());
        assert!(
            (200..300).contains(&status) || (method == "HEAD" && status == 404),
            "{r}\n{}",
            log()
        );
    }
    // Uploads were chunked: one PATCH per chunk, contiguous bare ranges.
    let patches: Vec<&str> = requests
        .iter()
        .filter(|r| r[0] == "PATCH")
        .map(|r| r[3].as_str().unwrap())
        .collect();
    let mut expected = Vec::new();
    for (_, data) in &files {
        for start in (0..data.len()).step_by(CHUNK) {
            let end = (start + CHUNK).min(data.len()) - 1;
            expected.push(format!("{start}-{end}"));
        }
    }
    assert_eq!(patches, expected, "{}", log());
    assert_eq!(patches.len(), 6);
    assert!(
        requests.iter().any(|r| r[0] == "PUT"
            && r[1].as_str().unwrap().ends_with("/manifests/v1")
            && r[2] == 201),
        "{}",
        log()
    );

    // Pulled back byte for byte, under the names pushed.
    assert_eq!(report["pulled"].as_array().unwrap().len(), files.len());
    for (name, data) in &files {
        let back = out.join(name);
        assert_eq!(
            &std::fs::read(&back).unwrap_or_else(|e| panic!("{}: {e}", back.display())),
            data,
            "{name}"
        );
    }

    // The registry's own API serves the manifest naming both blobs.
    let c = reg.client();
    let r = c
        .send(
            hyper::Method::GET,
            "/v2/lab/oras/manifests/v1",
            &[("accept", MANIFEST)],
            bytes::Bytes::new(),
        )
        .await;
    assert_eq!(r.status, hyper::StatusCode::OK, "{r:?}");
    assert_eq!(r.header("content-type"), Some(MANIFEST));
    assert_eq!(
        r.header("docker-content-digest"),
        Some(Digest::sha256(&r.body).to_string().as_str())
    );
    let m = r.json();
    let layers = m["layers"].as_array().unwrap();
    assert_eq!(layers.len(), files.len(), "{m}");
    for ((name, data), layer) in files.iter().zip(layers) {
        let digest = Digest::sha256(data).to_string();
        assert_eq!(layer["digest"], digest.as_str(), "{m}");
        assert_eq!(layer["size"], data.len(), "{m}");
        assert_eq!(
            layer["annotations"]["org.opencontainers.image.title"], *name,
            "{m}"
        );
        let b = c.get(&format!("/v2/lab/oras/blobs/{digest}")).await;
        assert_eq!(b.status, hyper::StatusCode::OK);
        assert_eq!(&b.body[..], &data[..]);
    }
}

#[rtokio::test(crate = "rtokio", flavor = "multi_thread", worker_threads = 2)]
async fn oras_round_trip_legacy() {
    oras_round_trip(LayoutKind::Legacy).await;
}

#[rtokio::test(crate = "rtokio", flavor = "multi_thread", worker_threads = 2)]
async fn oras_round_trip_blobstore() {
    oras_round_trip(LayoutKind::Blobstore).await;
}
