//! Hostile requests: traversal (plain and percent-encoded), hidden names,
//! bad digests, bad ranges, oversized manifests, lying `Content-Length`,
//! ambiguous queries. Each gets a spec error, and nothing is written
//! (`fsck` clean, no repository appears).

use bytes::Bytes;
use e2e::{MANIFEST, Registry, image_manifest, raw, raw_with};
use engine::Digest;
use hyper::{Method, StatusCode};

async fn assert_clean(reg: &Registry) {
    let findings = reg.store.fsck().await.expect("fsck");
    let errors: Vec<_> = findings.iter().filter(|f| f.is_error()).collect();
    assert!(errors.is_empty(), "{errors:?}");
}

fn request(method: &str, path: &str, headers: &str, body: &[u8]) -> Vec<u8> {
    let mut out =
        format!("{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n{headers}\r\n")
            .into_bytes();
    out.extend_from_slice(body);
    out
}

#[rtokio::test(crate = "rtokio", flavor = "multi_thread", worker_threads = 2)]
async fn traversal_and_hidden_names_are_name_invalid() {
    let reg = Registry::start().await;
    let d = Digest::sha256(b"x");
    for name in [
        "..",
        "../..",
        "a/../../b",
        "%2e%2e",
        "%2E%2E/x",
        "a/%2e%2e/%2e%2e",
        "..%2f..%2fetc",
        "_blobstore",
        "_ocistore",
        "a/.uploads",
        "a/blobs/.uploads",
        ".uploads",
        "a//b",
        "/etc",
        "A",
    ] {
        for (method, path) in [
            ("GET", format!("/v2/{name}/tags/list")),
            ("PUT", format!("/v2/{name}/manifests/latest")),
            ("POST", format!("/v2/{name}/blobs/uploads/?digest={d}")),
            ("GET", format!("/v2/{name}/blobs/{d}")),
        ] {
            // No body: the server answers before reading one, and unread
            // bytes would make the kernel reset the connection.
            let (status, text) = raw(
                reg.addr,
                &request(method, &path, "content-length: 0\r\n", b""),
            )
            .await;
            assert_eq!(status, 400, "{method} {path}: {text}");
            assert!(text.contains("NAME_INVALID"), "{method} {path}: {text}");
        }
    }
    // Traversal in the last segment: a tag or digest grammar error.
    for (path, code) in [
        ("/v2/a/manifests/..", "NAME_INVALID"),
        ("/v2/a/manifests/%2e%2e%2f%2e%2e", "NAME_INVALID"),
        ("/v2/a/blobs/..%2f..%2fx", "DIGEST_INVALID"),
        ("/v2/a/blobs/sha256:..%2f..", "DIGEST_INVALID"),
        ("/v2/a/blobs/uploads/..%2f..%2fx", "BLOB_UPLOAD_UNKNOWN"),
    ] {
        let (status, text) = raw(reg.addr, &request("GET", path, "", b"")).await;
        assert!(status == 400 || status == 404, "{path}: {text}");
        assert!(text.contains(code), "{path}: {text}");
    }
    let c = reg.client();
    assert_eq!(
        c.get("/v2/_catalog").await.json()["repositories"],
        serde_json::json!([])
    );
    assert_clean(&reg).await;
}

#[rtokio::test(crate = "rtokio", flavor = "multi_thread", worker_threads = 2)]
async fn bad_digests() {
    let reg = Registry::start().await;
    let c = reg.client();
    c.push_blob("r", b"x").await;
    for bad in [
        "sha256:zz",
        "sha256:",
        "md5:d41d8cd98f00b204e9800998ecf8427e",
        "SHA256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85500",
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    ] {
        let r = c
            .send(
                Method::POST,
                &format!("/v2/r/blobs/uploads/?digest={bad}"),
                &[],
                Bytes::from_static(b""),
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(r.error_code().as_deref(), Some("DIGEST_INVALID"), "{bad}");
        if bad.contains(':') {
            let r = c.get(&format!("/v2/r/blobs/{bad}")).await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
            let r = c
                .send(
                    Method::POST,
                    &format!("/v2/r/blobs/uploads/?mount={bad}&from=r"),
                    &[],
                    Bytes::new(),
                )
                .await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
        }
    }
    // Two digests for one push: ambiguous, refused before anything is written.
    let (a, b) = (Digest::sha256(b"a"), Digest::sha256(b"b"));
    let r = c
        .send(
            Method::POST,
            &format!("/v2/r/blobs/uploads/?digest={a}&digest={b}"),
            &[],
            Bytes::from_static(b"a"),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        c.head(&format!("/v2/r/blobs/{a}")).await.status,
        StatusCode::NOT_FOUND
    );
    assert_clean(&reg).await;
}

#[rtokio::test(crate = "rtokio", flavor = "multi_thread", worker_threads = 2)]
async fn bad_content_ranges_change_nothing() {
    let reg = Registry::start().await;
    let c = reg.client();
    let r = c
        .send(Method::POST, "/v2/r/blobs/uploads/", &[], Bytes::new())
        .await;
    let location = r.header("location").unwrap().to_owned();
    for (range, body, status, code) in [
        ("bytes=0-3", &b"abcd"[..], 400, "BLOB_UPLOAD_INVALID"),
        ("bytes 0-3/4", b"abcd", 400, "BLOB_UPLOAD_INVALID"),
        ("abc", b"abcd", 400, "BLOB_UPLOAD_INVALID"),
        ("-1-3", b"abcd", 400, "BLOB_UPLOAD_INVALID"),
        ("3-0", b"abcd", 416, "BLOB_UPLOAD_INVALID"),
        ("0-0", b"abcd", 400, "SIZE_INVALID"),
        ("0-9", b"abcd", 400, "SIZE_INVALID"),
        ("0-18446744073709551615", b"abcd", 400, "SIZE_INVALID"),
        (
            "0-18446744073709551616",
            b"abcd",
            400,
            "BLOB_UPLOAD_INVALID",
        ),
    ] {
        let r = c
            .send(
                Method::PATCH,
                &location,
                &[
                    ("content-range", range),
                    ("content-length", &body.len().to_string()),
                ],
                Bytes::copy_from_slice(body),
            )
            .await;
        assert_eq!(r.status.as_u16(), status, "{range}: {r:?}");
        assert_eq!(r.error_code().as_deref(), Some(code), "{range}");
        let s = c.get(&location).await;
        assert_eq!(s.header("range"), Some("0-0"), "{range}: nothing written");
    }
    // The session still works.
    let r = c
        .send(
            Method::PATCH,
            &location,
            &[("content-range", "0-3")],
            Bytes::from_static(b"abcd"),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{r:?}");
    assert_eq!(r.header("range"), Some("0-3"));
    assert_clean(&reg).await;
}

#[rtokio::test(crate = "rtokio", flavor = "multi_thread", worker_threads = 2)]
async fn lying_content_length_is_refused_and_nothing_written() {
    let reg = Registry::start().await;
    let data = b"0123456789";
    let d = Digest::sha256(data);
    // Shorter than the body: the server reads 5 bytes, which do not hash to d.
    let (status, text) = raw(
        reg.addr,
        &request(
            "POST",
            &format!("/v2/cl/blobs/uploads/?digest={d}"),
            "content-length: 5\r\n",
            data,
        ),
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("DIGEST_INVALID"), "{text}");
    // Longer than the body: the body ends early (the client closed).
    let (status, text) = raw_with(
        reg.addr,
        &request(
            "POST",
            &format!("/v2/cl/blobs/uploads/?digest={d}"),
            "content-length: 50\r\n",
            data,
        ),
        true,
    )
    .await;
    assert!(status == 400 || status == 0, "{text}");
    // A manifest that announces far more than 4 MiB is refused before its
    // body (a little more is read and discarded first: `manifest_errors`).
    let (status, text) = raw(
        reg.addr,
        &request(
            "PUT",
            "/v2/cl/manifests/v1",
            &format!(
                "content-type: {MANIFEST}\r\ncontent-length: {}\r\n",
                1u64 << 30
            ),
            b"",
        ),
    )
    .await;
    assert_eq!(status, 413, "{text}");
    let c = reg.client();
    assert_eq!(
        c.head(&format!("/v2/cl/blobs/{d}")).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        c.get("/v2/cl/manifests/v1").await.status,
        StatusCode::NOT_FOUND
    );
    // A chunk whose Content-Length disagrees with its Content-Range.
    let r = c
        .send(Method::POST, "/v2/cl/blobs/uploads/", &[], Bytes::new())
        .await;
    let location = r.header("location").unwrap().to_owned();
    let id = location.rsplit('/').next().unwrap();
    let (status, text) = raw(
        reg.addr,
        &request(
            "PATCH",
            &location,
            "content-range: 0-9\r\ncontent-length: 4\r\n",
            b"abcd",
        ),
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("SIZE_INVALID"), "{text}");
    assert_eq!(reg.store.upload_status(id).await.unwrap().offset, 0);
    assert_clean(&reg).await;
}

#[rtokio::test(crate = "rtokio", flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_malformed_manifests() {
    let reg = Registry::start().await;
    let c = reg.client();
    let cd = c.push_blob("m", b"{}").await;
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    // (Over 4 MiB is `lying_content_length_is_refused_and_nothing_written`:
    // the server answers 413 before reading, so a client still sending sees
    // a reset instead.)
    for (name, body) in [("deep", deep.as_bytes()), ("empty", &b""[..])] {
        let r = c.put_manifest("m", name, MANIFEST, body).await;
        assert!(r.status.is_client_error(), "{name}: {r:?}");
        assert!(r.error_code().is_some(), "{name}: a spec error body");
    }
    let m = image_manifest((&cd, 2), &[]).build().bytes;
    for reference in ["../../x", "..", "%2e%2e"] {
        let r = c.put_manifest("m", reference, MANIFEST, &m).await;
        assert!(
            r.status == StatusCode::BAD_REQUEST || r.status == StatusCode::NOT_FOUND,
            "{reference}: {r:?}"
        );
    }
    let tags = (0..101)
        .map(|i| format!("tag={i}"))
        .collect::<Vec<_>>()
        .join("&");
    let r = c
        .send(
            Method::PUT,
            &format!("/v2/m/manifests/{}?{tags}", Digest::sha256(&m)),
            &[("content-type", MANIFEST)],
            m.clone(),
        )
        .await;
    assert_eq!(r.status, StatusCode::URI_TOO_LONG);
    let r = c
        .send(
            Method::PUT,
            &format!("/v2/m/manifests/{}?tag=ok&tag=..", Digest::sha256(&m)),
            &[("content-type", MANIFEST)],
            m.clone(),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        c.get(&format!("/v2/m/manifests/{}", Digest::sha256(&m)))
            .await
            .status,
        StatusCode::NOT_FOUND,
        "nothing stored"
    );
    assert_eq!(
        c.get("/v2/m/tags/list").await.json()["tags"],
        serde_json::json!([])
    );
    assert_clean(&reg).await;
}
