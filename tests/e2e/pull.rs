//! Pull: the version check, manifests and blobs by tag and digest, HEAD, ranges.

use bytes::Bytes;
use e2e::{MANIFEST, Registry, push_image};
use engine::Digest;
use hyper::{Method, StatusCode};

#[rtokio::test(crate = "rtokio", flavor = "multi_thread", worker_threads = 2)]
async fn ping_v2() {
    let reg = Registry::start().await;
    let c = reg.client();
    for r in [
        c.get("/v2/").await,
        c.head("/v2/").await,
        c.get("/v2").await,
    ] {
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(
            r.header("docker-distribution-api-version"),
            Some("registry/2.0")
        );
    }
    let r = c.get("/v3/").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[rtokio::test(crate = "rtokio", flavor = "multi_thread", worker_threads = 2)]
async fn pull_manifest_by_tag_and_digest() {
    let reg = Registry::start().await;
    let c = reg.client();
    let (digest, manifest, _, _) = push_image(&c, "org/team/app", "v1", "a").await;
    for reference in ["v1".to_owned(), digest.to_string()] {
        let path = format!("/v2/org/team/app/manifests/{reference}");
        let r = c.get(&path).await;
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
        assert_eq!(&r.body[..], &manifest[..], "exact bytes");
        assert_eq!(r.header("content-type"), Some(MANIFEST));
        assert_eq!(
            r.header("docker-content-digest"),
            Some(digest.to_string().as_str())
        );
        let h = c.head(&path).await;
        assert_eq!(h.status, StatusCode::OK);
        assert!(h.body.is_empty());
        assert_eq!(
            h.header("content-length"),
            Some(manifest.len().to_string().as_str())
        );
        assert_eq!(
            h.header("docker-content-digest"),
            Some(digest.to_string().as_str())
        );
        assert_eq!(h.header("content-type"), Some(MANIFEST));
    }
    let r = c.get("/v2/org/team/app/manifests/v2").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.error_code().as_deref(), Some("MANIFEST_UNKNOWN"));
    let r = c.head("/v2/org/team/app/manifests/v2").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = c.get("/v2/nothing/here/manifests/v1").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.error_code().as_deref(), Some("NAME_UNKNOWN"));
}

#[rtokio::test(crate = "rtokio", flavor = "multi_thread", worker_threads = 2)]
async fn pull_blob_with_ranges() {
    let reg = Registry::start().await;
    let c = reg.client();
    let data: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
    let d = c.push_blob("r", &data).await;
    let path = format!("/v2/r/blobs/{d}");
    let r = c.get(&path).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(&r.body[..], &data[..]);
    assert_eq!(
        r.header("docker-content-digest"),
        Some(d.to_string().as_str())
    );
    let h = c.head(&path).await;
    assert_eq!(h.status, StatusCode::OK);
    assert_eq!(h.header("content-length"), Some("1000"));
    assert!(h.body.is_empty());

    for (range, start, end) in [
        ("bytes=10-19", 10, 19),
        ("bytes=990-", 990, 999),
        ("bytes=-5", 995, 999),
        ("bytes=0-0", 0, 0),
        ("bytes=900-5000", 900, 999),
    ] {
        let r = c
            .send(Method::GET, &path, &[("range", range)], Bytes::new())
            .await;
        assert_eq!(r.status, StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(
            r.header("content-range"),
            Some(format!("bytes {start}-{end}/1000").as_str()),
            "{range}"
        );
        assert_eq!(&r.body[..], &data[start..=end], "{range}");
    }
    for range in [
        "bytes=1000-",
        "bytes=5-2",
        "bytes=-0",
        "bytes=0-1,3-4",
        "bytes=0-5,2-8",
        "bytes=x-y",
    ] {
        let r = c
            .send(Method::GET, &path, &[("range", range)], Bytes::new())
            .await;
        assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE, "{range}");
        assert_eq!(r.header("content-range"), Some("bytes */1000"), "{range}");
    }
    let missing = Digest::sha256(b"not pushed");
    let r = c.get(&format!("/v2/r/blobs/{missing}")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.error_code().as_deref(), Some("BLOB_UNKNOWN"));
    assert_eq!(
        c.head(&format!("/v2/r/blobs/{missing}")).await.status,
        StatusCode::NOT_FOUND
    );
}

/// A blob over `WHOLE_READ_MAX` is served in ranges, hashed on the way.
#[rtokio::test(crate = "rtokio", flavor = "multi_thread", worker_threads = 2)]
async fn pull_large_blob_in_pieces() {
    let reg = Registry::start().await;
    let c = reg.client();
    let size = server::WHOLE_READ_MAX as usize + 3 * server::READ_PIECE as usize + 7;
    let data: Vec<u8> = (0..size).map(|i| (i * 31 % 256) as u8).collect();
    let d = c.push_blob("big", &data).await;
    let r = c.get(&format!("/v2/big/blobs/{d}")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body.len(), size);
    assert_eq!(Digest::sha256(&r.body), d);
}
