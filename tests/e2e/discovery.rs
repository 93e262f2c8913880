//! Content discovery: tags and catalog with `n`/`last` and `Link`, referrers.

use e2e::{Client, INDEX, MANIFEST, Registry, image_manifest, push_image};
use engine::Digest;
use hyper::StatusCode;

/// Follows `Link: <...>; rel="next"` from `first`, collecting `key`.
async fn all_pages(c: &Client, first: &str, key: &str) -> (Vec<String>, usize) {
    let mut items = Vec::new();
    let mut next = Some(first.to_owned());
    let mut pages = 0;
    while let Some(url) = next.take() {
        let r = c.get(&url).await;
        assert_eq!(r.status, StatusCode::OK, "{url}");
        pages += 1;
        items.extend(
            r.json()[key]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_owned()),
        );
        if let Some(link) = r.header("link") {
            assert!(link.ends_with(">; rel=\"next\""), "{link}");
            next = Some(link[1..link.find('>').unwrap()].to_owned());
        }
    }
    (items, pages)
}

#[rtokio::test(crate = "rtokio", flavor = "multi_thread", worker_threads = 2)]
async fn tags_list_with_paging() {
    let reg = Registry::start().await;
    let c = reg.client();
    let (_, manifest, _, _) = push_image(&c, "t", "b", "x").await;
    for tag in ["e", "a", "D", "c"] {
        assert_eq!(
            c.put_manifest("t", tag, MANIFEST, &manifest).await.status,
            StatusCode::CREATED
        );
    }
    let r = c.get("/v2/t/tags/list").await;
    assert_eq!(
        r.json(),
        serde_json::json!({"name": "t", "tags": ["D", "a", "b", "c", "e"]})
    );
    assert!(r.header("link").is_none());
    let r = c.get("/v2/t/tags/list?n=2").await;
    assert_eq!(r.json()["tags"], serde_json::json!(["D", "a"]));
    assert_eq!(
        r.header("link"),
        Some("</v2/t/tags/list?n=2&last=a>; rel=\"next\"")
    );
    let (tags, pages) = all_pages(&c, "/v2/t/tags/list?n=2", "tags").await;
    assert_eq!(tags, ["D", "a", "b", "c", "e"]);
    assert_eq!(pages, 3);
    let r = c.get("/v2/t/tags/list?n=0").await;
    assert_eq!(r.json()["tags"], serde_json::json!([]));
    assert!(r.header("link").is_none());
    let r = c.get("/v2/t/tags/list?last=b").await;
    assert_eq!(r.json()["tags"], serde_json::json!(["c", "e"]));
    let r = c.get("/v2/t/tags/list?n=5").await;
    assert_eq!(r.json()["tags"].as_array().unwrap().len(), 5);
    assert!(r.header("link").is_none(), "no next page");
    let r = c.get("/v2/none/tags/list").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.error_code().as_deref(), Some("NAME_UNKNOWN"));
    let r = c.get("/v2/t/tags/list?n=-1").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

#[rtokio::test(crate = "rtokio", flavor = "multi_thread", worker_threads = 2)]
async fn catalog_with_paging() {
    let reg = Registry::start().await;
    let c = reg.client();
    for repo in ["b/c", "a", "d", "b"] {
        c.push_blob(repo, repo.as_bytes()).await;
    }
    let r = c.get("/v2/_catalog").await;
    assert_eq!(
        r.json(),
        serde_json::json!({"repositories": ["a", "b", "b/c", "d"]})
    );
    let (repos, pages) = all_pages(&c, "/v2/_catalog?n=3", "repositories").await;
    assert_eq!(repos, ["a", "b", "b/c", "d"]);
    assert_eq!(pages, 2);
    let r = c.get("/v2/_catalog?n=2&last=b").await;
    assert_eq!(r.json()["repositories"], serde_json::json!(["b/c", "d"]));
    assert!(r.header("link").is_none());
}

#[rtokio::test(crate = "rtokio", flavor = "multi_thread", worker_threads = 2)]
async fn referrers_with_artifact_type_filter() {
    let reg = Registry::start().await;
    let c = reg.client();
    let (subject, _, _, _) = push_image(&c, "ref", "v1", "subject").await;
    let cd = c.push_blob("ref", b"{}").await;
    // One with artifactType, one typed by its config, one index without a type.
    let sbom = image_manifest((&cd, 2), &[])
        .artifact_type("application/vnd.example.sbom")
        .annotation("k", "v")
        .subject(e2e::subject(&subject))
        .build()
        .bytes;
    let sig = image_manifest((&cd, 2), &[])
        .subject(e2e::subject(&subject))
        .build()
        .bytes;
    let index = testkit::oci::Index::new(vec![])
        .subject(e2e::subject(&subject))
        .build()
        .bytes;
    for (mt, body) in [(MANIFEST, &sbom), (MANIFEST, &sig), (INDEX, &index)] {
        let r = c
            .put_manifest("ref", &Digest::sha256(body).to_string(), mt, body)
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
        assert_eq!(r.header("oci-subject"), Some(subject.to_string().as_str()));
    }
    let r = c.get(&format!("/v2/ref/referrers/{subject}")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-type"), Some(INDEX));
    assert!(r.header("oci-filters-applied").is_none());
    let body = r.json();
    assert_eq!(body["schemaVersion"], 2);
    assert_eq!(body["mediaType"], INDEX);
    let found = body["manifests"].as_array().unwrap();
    assert_eq!(found.len(), 3);
    let by_digest = |d: &Digest| {
        found
            .iter()
            .find(|m| m["digest"] == d.to_string())
            .unwrap()
            .clone()
    };
    let s = by_digest(&Digest::sha256(&sbom));
    assert_eq!(s["artifactType"], "application/vnd.example.sbom");
    assert_eq!(s["annotations"]["k"], "v");
    assert_eq!(s["size"], sbom.len());
    assert_eq!(s["mediaType"], MANIFEST);
    assert_eq!(
        by_digest(&Digest::sha256(&sig))["artifactType"],
        "application/vnd.oci.image.config.v1+json"
    );
    assert!(
        by_digest(&Digest::sha256(&index))
            .get("artifactType")
            .is_none()
    );

    let r = c
        .get(&format!(
            "/v2/ref/referrers/{subject}?artifactType=application/vnd.example.sbom"
        ))
        .await;
    assert_eq!(r.header("oci-filters-applied"), Some("artifactType"));
    let found = r.json()["manifests"].as_array().unwrap().clone();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["digest"], Digest::sha256(&sbom).to_string());

    // Never 404: an unknown subject or repository has no referrers.
    for path in [
        format!("/v2/ref/referrers/{}", Digest::sha256(b"nothing")),
        format!("/v2/no/such/repo/referrers/{subject}"),
    ] {
        let r = c.get(&path).await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
        assert_eq!(r.json()["manifests"], serde_json::json!([]), "{path}");
    }
    let r = c.get("/v2/ref/referrers/sha256:nothex").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

/// HEAD is answered everywhere GET is (DESIGN §13): the same status and
/// headers, the length of the body GET would send, and no body.
#[rtokio::test(crate = "rtokio", flavor = "multi_thread", worker_threads = 2)]
async fn head_wherever_get_is() {
    let reg = Registry::start().await;
    let c = reg.client();
    let (digest, _, _, _) = push_image(&c, "h", "v1", "head").await;
    for path in [
        "/v2/_catalog".to_owned(),
        "/v2/_catalog?n=1".to_owned(),
        "/v2/h/tags/list".to_owned(),
        format!("/v2/h/referrers/{digest}"),
        "/v2/nope/tags/list".to_owned(),
    ] {
        let (get, head) = (c.get(&path).await, c.head(&path).await);
        assert_eq!(head.status, get.status, "{path}");
        assert!(head.body.is_empty(), "{path}: HEAD sent a body");
        assert_eq!(
            head.header("content-length"),
            Some(get.body.len().to_string().as_str()),
            "{path}"
        );
        for name in ["content-type", "link", "oci-filters-applied"] {
            assert_eq!(head.header(name), get.header(name), "{path}: {name}");
        }
    }
}
