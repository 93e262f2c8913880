//! Push: POST then PUT, single POST, chunked (in order and out of order),
//! streamed, mount, cancel, manifests (tags, subject, Docker types, limits).

use bytes::Bytes;
use e2e::{Client, DOCKER_MANIFEST, MANIFEST, Registry, image_manifest, push_image};
use engine::Digest;
use hyper::{Method, StatusCode};
use testkit::oci::{Desc, Image};

async fn start_session(c: &Client, repo: &str) -> String {
    c.start_session(repo).await
}

pub(crate) fn with_digest(location: &str, digest: &Digest) -> String {
    let sep = if location.contains('?') { '&' } else { '?' };
    format!("{location}{sep}digest={digest}")
}

async fn patch(c: &Client, location: &str, range: &str, data: &[u8]) -> e2e::Resp {
    c.patch_chunk(location, range, data).await
}

#[rtokio::test(crate = "rtokio", flavor = "multi_thread", worker_threads = 2)]
async fn push_post_then_put() {
    let reg = Registry::start().await;
    let c = reg.client();
    let data = b"post then put".to_vec();
    let d = Digest::sha256(&data);
    let location = start_session(&c, "a/b").await;
    let r = c
        .send(
            Method::PUT,
            &with_digest(&location, &d),
            &[("content-type", "application/octet-stream")],
            data.clone(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    assert_eq!(
        r.header("location"),
        Some(format!("/v2/a/b/blobs/{d}").as_str())
    );
    assert_eq!(
        r.header("docker-content-digest"),
        Some(d.to_string().as_str())
    );
    let r = c.get(&format!("/v2/a/b/blobs/{d}")).await;
    assert_eq!(&r.body[..], &data[..]);
    // The session is over.
    assert_eq!(c.get(&location).await.status, StatusCode::NOT_FOUND);
}

#[rtokio::test(crate = "rtokio", flavor = "multi_thread", worker_threads = 2)]
async fn push_single_post_and_empty_blob() {
    let reg = Registry::start().await;
    let c = reg.client();
    for data in [&b"single post"[..], b""] {
        let d = Digest::sha256(data);
        let r = c
            .send(
                Method::POST,
                &format!("/v2/r/blobs/uploads/?digest={d}"),
                &[],
                Bytes::copy_from_slice(data),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
        assert_eq!(
            r.header("location"),
            Some(format!("/v2/r/blobs/{d}").as_str())
        );
        let g = c.get(r.header("location").unwrap()).await;
        assert_eq!(g.status, StatusCode::OK);
        assert_eq!(&g.body[..], data);
    }
}

#[rtokio::test(crate = "rtokio", flavor = "multi_thread", worker_threads = 2)]
async fn push_chunked_with_status_and_last_chunk_on_put() {
    let reg = Registry::start().await;
    let c = reg.client();
    let data: Vec<u8> = (0..25u8).collect();
    let d = Digest::sha256(&data);
    let mut location = start_session(&c, "chunky").await;
    for (range, part) in [("0-9", &data[0..10]), ("10-19", &data[10..20])] {
        let r = patch(&c, &location, range, part).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{r:?}");
        assert_eq!(
            r.header("range"),
            Some(format!("0-{}", range.split('-').nth(1).unwrap()).as_str())
        );
        location = r
            .header("location")
            .expect("Location on every step")
            .to_owned();
    }
    let s = c.get(&location).await;
    assert_eq!(s.status, StatusCode::NO_CONTENT);
    assert_eq!(s.header("range"), Some("0-19"));
    assert_eq!(s.header("location"), Some(location.as_str()));
    let r = c
        .send(
            Method::PUT,
            &with_digest(&location, &d),
            &[("content-range", "20-24"), ("content-length", "5")],
            Bytes::copy_from_slice(&data[20..]),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    assert_eq!(
        &c.get(&format!("/v2/chunky/blobs/{d}")).await.body[..],
        &data[..]
    );
}

#[rtokio::test(crate = "rtokio", flavor = "multi_thread", worker_threads = 2)]
async fn push_chunk_out_of_order_is_416_and_recoverable() {
    let reg = Registry::start().await;
    let c = reg.client();
    let data: Vec<u8> = (0..30u8).collect();
    let location = start_session(&c, "ooo").await;
    assert_eq!(
        patch(&c, &location, "0-9", &data[..10]).await.status,
        StatusCode::ACCEPTED
    );
    for (range, part) in [
        ("5-14", &data[5..15]),
        ("20-29", &data[20..30]),
        ("0-9", &data[..10]),
    ] {
        let r = patch(&c, &location, range, part).await;
        assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE, "{range}");
        assert_eq!(r.header("range"), Some("0-9"), "{range}");
        assert!(r.header("location").is_some(), "{range}");
    }
    // The final chunk out of order on PUT: 416 as well.
    let d = Digest::sha256(&data);
    let r = c
        .send(
            Method::PUT,
            &with_digest(&location, &d),
            &[("content-range", "25-29")],
            Bytes::copy_from_slice(&data[25..]),
        )
        .await;
    assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(c.get(&location).await.header("range"), Some("0-9"));
    assert_eq!(
        patch(&c, &location, "10-29", &data[10..]).await.status,
        StatusCode::ACCEPTED
    );
    let r = c
        .send(Method::PUT, &with_digest(&location, &d), &[], Bytes::new())
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    assert_eq!(
        &c.get(&format!("/v2/ooo/blobs/{d}")).await.body[..],
        &data[..]
    );
}

/// A PATCH without `Content-Range`, its body sent as produced (chunked
/// transfer encoding), in pieces that do not line up with the server's.
#[rtokio::test(crate = "rtokio", flavor = "multi_thread", worker_threads = 2)]
async fn push_streamed_patch() {
    let reg = Registry::start().await;
    let c = reg.client();
    let piece: Vec<u8> = (0..=255u8).cycle().take(300_001).collect();
    let pieces = 9;
    let mut all = Vec::new();
    for _ in 0..pieces {
        all.extend_from_slice(&piece);
    }
    let d = Digest::sha256(&all);
    let location = start_session(&c, "streamed").await;
    let chunks = futures_util::stream::iter((0..pieces).map(move |_| Bytes::from(piece.clone())));
    let r = c
        .send_stream(
            Method::PATCH,
            &location,
            &[("content-type", "application/octet-stream")],
            chunks,
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{r:?}");
    assert_eq!(
        r.header("range"),
        Some(format!("0-{}", all.len() - 1).as_str())
    );
    let r = c
        .send(
            Method::PUT,
            &with_digest(r.header("location").unwrap(), &d),
            &[],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    let g = c.get(&format!("/v2/streamed/blobs/{d}")).await;
    assert_eq!(Digest::sha256(&g.body), d);
}

#[rtokio::test(crate = "rtokio", flavor = "multi_thread", worker_threads = 2)]
async fn push_wrong_digest_is_refused_and_nothing_stored() {
    let reg = Registry::start().await;
    let c = reg.client();
    let data = b"the real content";
    let claimed = Digest::sha256(b"something else");
    let r = c
        .send(
            Method::POST,
            &format!("/v2/w/blobs/uploads/?digest={claimed}"),
            &[],
            Bytes::from_static(data),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.error_code().as_deref(), Some("DIGEST_INVALID"));
    let location = start_session(&c, "w").await;
    let r = c
        .send(
            Method::PUT,
            &with_digest(&location, &claimed),
            &[],
            Bytes::from_static(data),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.error_code().as_deref(), Some("DIGEST_INVALID"));
    for d in [claimed, Digest::sha256(data)] {
        assert_eq!(
            c.head(&format!("/v2/w/blobs/{d}")).await.status,
            StatusCode::NOT_FOUND
        );
    }
    // A closing PUT without ?digest=: 400, the session stays usable.
    let location = start_session(&c, "w").await;
    let r = c.send(Method::PUT, &location, &[], Bytes::new()).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.error_code().as_deref(), Some("DIGEST_INVALID"));
    assert_eq!(c.get(&location).await.status, StatusCode::NO_CONTENT);
}

#[rtokio::test(crate = "rtokio", flavor = "multi_thread", worker_threads = 2)]
async fn mount_from_another_repository_or_fall_back_to_a_session() {
    let reg = Registry::start().await;
    let c = reg.client();
    let d = c.push_blob("src/repo", b"shared layer").await;
    let r = c
        .send(
            Method::POST,
            &format!("/v2/dst/blobs/uploads/?mount={d}&from=src/repo"),
            &[],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    assert_eq!(
        r.header("location"),
        Some(format!("/v2/dst/blobs/{d}").as_str())
    );
    assert_eq!(
        r.header("docker-content-digest"),
        Some(d.to_string().as_str())
    );
    assert_eq!(
        &c.get(&format!("/v2/dst/blobs/{d}")).await.body[..],
        b"shared layer"
    );
    // The source lacks it, the source does not exist, or no source: a session.
    let other = Digest::sha256(b"nowhere");
    for query in [
        format!("mount={other}&from=src/repo"),
        format!("mount={d}&from=no/such/repo"),
        format!("mount={d}"),
    ] {
        let r = c
            .send(
                Method::POST,
                &format!("/v2/dst2/blobs/uploads/?{query}"),
                &[],
                Bytes::new(),
            )
            .await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{query}: {r:?}");
        let location = r.header("location").expect("session Location");
        assert!(
            location.starts_with("/v2/dst2/blobs/uploads/"),
            "{location}"
        );
        assert_eq!(c.get(location).await.status, StatusCode::NO_CONTENT);
    }
    // A blob is repository-scoped: dst2 did not get it.
    assert_eq!(
        c.head(&format!("/v2/dst2/blobs/{d}")).await.status,
        StatusCode::NOT_FOUND
    );
}

#[rtokio::test(crate = "rtokio", flavor = "multi_thread", worker_threads = 2)]
async fn cancel_upload() {
    let reg = Registry::start().await;
    let c = reg.client();
    let location = start_session(&c, "cancel").await;
    assert_eq!(
        patch(&c, &location, "0-3", b"abcd").await.status,
        StatusCode::ACCEPTED
    );
    let r = c
        .send(
            Method::DELETE,
            &location,
            &[("content-length", "0")],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    for r in [
        c.get(&location).await,
        patch(&c, &location, "4-5", b"ef").await,
        c.delete(&location).await,
    ] {
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        assert_eq!(r.error_code().as_deref(), Some("BLOB_UPLOAD_UNKNOWN"));
    }
    // A session is only known in its own repository.
    let location = start_session(&c, "one").await;
    let elsewhere = location.replacen("/v2/one/", "/v2/two/", 1);
    assert_eq!(c.get(&elsewhere).await.status, StatusCode::NOT_FOUND);
}

#[rtokio::test(crate = "rtokio", flavor = "multi_thread", worker_threads = 2)]
async fn push_manifest_with_tag_params_subject_and_docker_type() {
    let reg = Registry::start().await;
    let c = reg.client();
    let (subject, _, _, _) = push_image(&c, "m", "base", "s").await;
    let cd = c.push_blob("m", b"{}").await;
    let referrer = image_manifest((&cd, 2), &[])
        .subject(e2e::subject(&subject))
        .build()
        .bytes;
    let rd = Digest::sha256(&referrer);
    let r = c
        .send(
            Method::PUT,
            &format!("/v2/m/manifests/{rd}?tag=t1&tag=t2"),
            &[("content-type", MANIFEST)],
            referrer.clone(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    assert_eq!(
        r.header("location"),
        Some(format!("/v2/m/manifests/{rd}").as_str())
    );
    assert_eq!(
        r.header("docker-content-digest"),
        Some(rd.to_string().as_str())
    );
    assert_eq!(r.header("oci-subject"), Some(subject.to_string().as_str()));
    let tags: Vec<&str> = r
        .headers
        .get_all("oci-tag")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(tags, ["t1", "t2"]);
    for t in ["t1", "t2"] {
        assert_eq!(
            c.get(&format!("/v2/m/manifests/{t}")).await.body,
            referrer.clone()
        );
    }
    // A Docker v2 manifest is accepted and served with its own type.
    let layer = c.push_blob("m", b"docker layer").await;
    let docker = Image::from_descriptors(
        Desc::new(
            "application/vnd.docker.container.image.v1+json",
            cd.clone(),
            2,
        ),
        vec![Desc::new(
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
            layer.clone(),
            12,
        )],
    )
    .media_type(DOCKER_MANIFEST)
    .build()
    .bytes;
    let r = c
        .put_manifest("m", "docker", DOCKER_MANIFEST, &docker)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    assert!(r.header("oci-subject").is_none());
    let g = c.get("/v2/m/manifests/docker").await;
    assert_eq!(g.header("content-type"), Some(DOCKER_MANIFEST));
    assert_eq!(&g.body[..], &docker[..]);
}

#[rtokio::test(crate = "rtokio", flavor = "multi_thread", worker_threads = 2)]
async fn manifest_errors() {
    let reg = Registry::start().await;
    let c = reg.client();
    let cd = c.push_blob("e", b"{}").await;
    let missing = Digest::sha256(b"missing layer");
    let m = image_manifest((&cd, 2), &[(&missing, 13)]).build().bytes;
    let r = c.put_manifest("e", "v1", MANIFEST, &m).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.error_code().as_deref(), Some("MANIFEST_BLOB_UNKNOWN"));
    for (ct, body) in [
        (MANIFEST, &b"{not json"[..]),
        (MANIFEST, b"{\"schemaVersion\":1}"),
        ("text/plain", &m[..]),
    ] {
        let r = c.put_manifest("e", "v1", ct, body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{ct}");
        assert_eq!(r.error_code().as_deref(), Some("MANIFEST_INVALID"), "{ct}");
    }
    // By digest, the body must hash to it.
    let good = image_manifest((&cd, 2), &[]).build().bytes;
    let r = c
        .put_manifest("e", &Digest::sha256(b"other").to_string(), MANIFEST, &good)
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.error_code().as_deref(), Some("DIGEST_INVALID"));
    // Over 4 MiB: 413, nothing stored.
    let big = image_manifest((&cd, 2), &[])
        .annotation("pad", &"x".repeat(4 << 20))
        .build()
        .bytes;
    let r = c.put_manifest("e", "big", MANIFEST, &big).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        c.get("/v2/e/manifests/big").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        c.get("/v2/e/manifests/v1").await.status,
        StatusCode::NOT_FOUND
    );
    // Just under the limit is accepted.
    let pad = (4 << 20) - good.len() - 64;
    let near = image_manifest((&cd, 2), &[])
        .annotation("pad", &"y".repeat(pad))
        .build()
        .bytes;
    assert!(near.len() <= 4 << 20);
    let r = c.put_manifest("e", "near", MANIFEST, &near).await;
    assert_eq!(r.status, StatusCode::CREATED, "{} bytes: {r:?}", near.len());
}
