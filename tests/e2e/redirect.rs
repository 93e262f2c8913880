//! Redirected pulls (`serve --redirect-blobs`): on a blobstore root on S3
//! (moto), a blob GET answers 307 to a presigned URL of the digest's one
//! `_blobstore` object; HEAD and manifests are served directly. Real
//! clients (skopeo, the ORAS SDK) follow the redirect to moto and get the
//! bytes pushed, identical.

use std::time::Duration;

use e2e::Registry;
use engine::Digest;
use hyper::StatusCode;
use testkit::moto::Moto;

use crate::oras::run_script;
use crate::skopeo::{make_layout, skopeo};

/// GETs of `_blobstore` objects that reached moto with a presigned query.
fn presigned_blob_gets() -> Vec<String> {
    Moto::shared().record();
    Moto::shared()
        .request_log()
        .into_iter()
        .filter(|l| {
            l.starts_with("GET ")
                && l.contains("/_blobstore/blobs/")
                && l.contains("X-Amz-Signature=")
        })
        .collect()
}

#[rtokio::test(crate = "rtokio", flavor = "multi_thread", worker_threads = 2)]
async fn blob_gets_redirect_to_the_object_store() {
    let reg = Registry::start_redirected(Duration::from_secs(300)).await;
    let c = reg.client();
    let data = b"layer bytes that leave through the object store".repeat(1000);
    let digest = c.push_blob("lab/redirect", &data).await;
    let path = format!("/v2/lab/redirect/blobs/{digest}");

    let r = c.get(&path).await;
    assert_eq!(r.status, StatusCode::TEMPORARY_REDIRECT, "{r:?}");
    assert_eq!(
        r.header("docker-content-digest"),
        Some(digest.to_string().as_str())
    );
    let location = r.header("location").expect("a Location").to_owned();
    assert!(
        location.starts_with(&Moto::shared().endpoint()) && location.contains("X-Amz-Expires=300"),
        "{location}"
    );
    // The presigned URL serves the bytes to a client without credentials.
    let url = location.strip_prefix(&Moto::shared().endpoint()).unwrap();
    let moto: std::net::SocketAddr = Moto::shared().endpoint()["http://".len()..]
        .parse()
        .unwrap();
    let (status, body) = e2e::raw(
        moto,
        format!("GET {url} HTTP/1.1\r\nHost: {moto}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.ends_with(std::str::from_utf8(&data).unwrap()),
        "{body}"
    );

    // HEAD and ranged GETs are answered here; a blob the repository does
    // not hold is refused before any redirect.
    let r = c.head(&path).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.header("content-length"),
        Some(data.len().to_string().as_str())
    );
    let r = c
        .send(
            hyper::Method::GET,
            &path,
            &[("range", "bytes=0-4")],
            bytes::Bytes::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(&r.body[..], &data[..5]);
    let r = c.get(&format!("/v2/lab/other/blobs/{digest}")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{r:?}");
}

#[rtokio::test(crate = "rtokio", flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_pulls_through_the_redirect() {
    let reg = Registry::start_redirected(Duration::from_secs(300)).await;
    let work = tempfile::tempdir().unwrap();
    let (src, back) = (work.path().join("src"), work.path().join("back"));
    let manifest = make_layout(&src, "v1");
    let remote = format!("docker://{}/lab/skopeo-redirect:v1", reg.addr);
    let (src_ref, back_ref) = (
        format!("oci:{}:v1", src.display()),
        format!("oci:{}:v1", back.display()),
    );
    let before = presigned_blob_gets().len();
    rtokio::task::spawn_blocking(move || {
        skopeo(&["copy", "--dest-tls-verify=false", &src_ref, &remote]);
        skopeo(&["copy", "--src-tls-verify=false", &remote, &back_ref]);
    })
    .await
    .unwrap();
    // The manifest was served directly, the config and layers from moto.
    let r = reg
        .client()
        .get("/v2/lab/skopeo-redirect/manifests/v1")
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(Digest::sha256(&r.body), manifest);
    // Other tests share this moto: only GETs naming this layout's config
    // and layers count, and each must be there.
    let redirected = presigned_blob_gets().split_off(before);
    for entry in std::fs::read_dir(src.join("blobs/sha256")).unwrap() {
        let hex = entry.unwrap().file_name().into_string().unwrap();
        if hex == manifest.hex().to_string() {
            continue;
        }
        assert!(
            redirected.iter().any(|l| l.contains(&hex)),
            "blob {hex} was not fetched from moto by a presigned GET"
        );
    }
    let mut compared = 0;
    for entry in std::fs::read_dir(src.join("blobs/sha256")).unwrap() {
        let entry = entry.unwrap();
        let returned = back.join("blobs/sha256").join(entry.file_name());
        assert!(
            std::fs::read(entry.path()).unwrap()
                == std::fs::read(&returned)
                    .unwrap_or_else(|e| panic!("{}: {e}", returned.display())),
            "{} differs",
            returned.display()
        );
        compared += 1;
    }
    assert_eq!(compared, 4);
}

/// Pushes the files of `src`, pulls them into `out`, and logs every
/// response the SDK saw (method, URL, status), redirects included.
const ORAS_SCRIPT: &str = r#"
import json, os, sys
import oras.provider, oras.version

target, src, out, report = sys.argv[1:5]
log = []
reg = oras.provider.Registry(insecure=True)
reg.session.hooks["response"].append(
    lambda r, *a, **k: log.append([r.request.method, r.request.url, r.status_code])
)
os.chdir(src)
reg.push(target, files=sorted(os.listdir(".")), quiet=True)
pulled = reg.pull(target, outdir=out)
with open(report, "w") as f:
    json.dump({"version": oras.version.__version__, "pulled": pulled, "requests": log}, f)
"#;

#[rtokio::test(crate = "rtokio", flavor = "multi_thread", worker_threads = 2)]
async fn oras_pulls_through_the_redirect() {
    let reg = Registry::start_redirected(Duration::from_secs(300)).await;
    let work = tempfile::tempdir().unwrap();
    let (src, out) = (work.path().join("src"), work.path().join("out"));
    std::fs::create_dir_all(&src).unwrap();
    let files = [
        ("a.bin", testkit::pattern(1, 300_000)),
        ("b.txt", testkit::pattern(2, 1_000)),
    ];
    for (name, data) in &files {
        std::fs::write(src.join(name), data).unwrap();
    }
    let target = format!("{}/lab/oras-redirect:v1", reg.addr);
    let report = run_script(
        work.path(),
        ORAS_SCRIPT,
        &[target.as_ref(), src.as_ref(), out.as_ref()],
    )
    .await;
    let requests = report["requests"].as_array().unwrap();
    let log = serde_json::to_string_pretty(requests).unwrap();
    // Each layer: a 307 from the registry, then a 200 from moto.
    for (_, data) in &files {
        let blob = format!("/blobs/{}", Digest::sha256(data));
        let hex = Digest::sha256(data).to_string().replace("sha256:", "");
        assert!(
            requests
                .iter()
                .any(|r| r[0] == "GET" && r[1].as_str().unwrap().ends_with(&blob) && r[2] == 307),
            "no redirect for {blob}: {log}"
        );
        assert!(
            requests.iter().any(|r| r[0] == "GET"
                && r[1]
                    .as_str()
                    .unwrap()
                    .starts_with(&Moto::shared().endpoint())
                && r[1].as_str().unwrap().contains(&hex)
                && r[2] == 200),
            "no GET of {hex} from moto: {log}"
        );
    }
    for (name, data) in &files {
        let back = out.join(name);
        assert!(
            std::fs::read(&back).unwrap_or_else(|e| panic!("{}: {e}", back.display())) == data[..],
            "{name} differs"
        );
    }
}
