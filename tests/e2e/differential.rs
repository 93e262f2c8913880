//! The differential run: one request sequence sent to CNCF distribution
//! 2.8.2 (Debian's `docker-registry`, filesystem driver) and to `ocistore
//! serve`, comparing what clients read: the status, the headers they use
//! (`Location` with host, session id and query normalised, digests,
//! lengths, types, ranges, `Link`, `OCI-*`), the error codes of error
//! bodies, and success bodies.
//!
//! Every difference must be a row of the table in
//! `docs/distribution-differences.md` (with the spec clause that allows it),
//! and every row must still be a difference: a new difference, a changed
//! one or a stale row fails the test, which prints the rows to paste.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use bytes::Bytes;
use e2e::distribution::Distribution;
use e2e::{Client, DOCKER_MANIFEST, INDEX, MANIFEST, Registry, Resp, image_manifest};
use engine::{Algorithm, Digest};
use hyper::Method;
use testkit::oci::{Desc, Image, Index};

const DOC: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../docs/distribution-differences.md"
);
const OCTET: (&str, &str) = ("content-type", "application/octet-stream");
/// What a response's absence of a header is written as.
const ABSENT: &str = "—";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
const SIGNATURE: &str = "application/vnd.example.signature.v1";

/// The headers clients read, compared as sent (after normalisation).
const HEADERS: [&str; 11] = [
    "location",
    "docker-content-digest",
    "content-type",
    "range",
    "content-range",
    "accept-ranges",
    "link",
    "oci-subject",
    "oci-filters-applied",
    "oci-chunk-min-length",
    "docker-upload-uuid",
];

/// One response, as the comparison sees it: field name -> normalised value.
type Observed = BTreeMap<&'static str, String>;

/// Sends the sequence's requests to one server and records each response.
struct Recorder {
    c: Client,
    /// Digest text -> the name the table uses for it.
    aliases: Vec<(String, String)>,
    steps: Vec<(&'static str, Observed)>,
}

impl Recorder {
    fn new(c: Client) -> Recorder {
        Recorder {
            c,
            aliases: Vec::new(),
            steps: Vec::new(),
        }
    }

    fn alias(&mut self, digest: &Digest, name: &str) {
        self.aliases.push((digest.to_string(), format!("<{name}>")));
    }

    async fn step(
        &mut self,
        name: &'static str,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Resp {
        let r = self.c.send(method, path, headers, body).await;
        self.record(name, &r);
        r
    }

    /// A request without headers or body.
    async fn call(&mut self, name: &'static str, method: Method, path: &str) -> Resp {
        self.step(name, method, path, &[], Bytes::new()).await
    }

    /// A POST with an empty body (a new session, or a mount).
    async fn post_empty(&mut self, name: &'static str, path: &str) -> Resp {
        self.step(
            name,
            Method::POST,
            path,
            &[("content-length", "0")],
            Bytes::new(),
        )
        .await
    }

    /// A PATCH of `data` declared as `range`.
    async fn chunk(
        &mut self,
        name: &'static str,
        location: &str,
        range: &str,
        data: impl Into<Bytes>,
    ) -> Resp {
        let headers = [OCTET, ("content-range", range)];
        self.step(name, Method::PATCH, location, &headers, data)
            .await
    }

    /// The closing PUT of a session, without a body.
    async fn close(&mut self, name: &'static str, location: &str, digest: &str) -> Resp {
        let url = with_digest(location, digest);
        self.step(
            name,
            Method::PUT,
            &url,
            &[("content-length", "0")],
            Bytes::new(),
        )
        .await
    }

    /// A request whose body is sent with chunked transfer encoding.
    async fn step_streamed(&mut self, name: &'static str, path: &str, data: &[u8]) -> Resp {
        let pieces: Vec<Bytes> = data.chunks(1000).map(Bytes::copy_from_slice).collect();
        let r = self
            .c
            .send_stream(
                Method::PATCH,
                path,
                &[OCTET],
                futures_util::stream::iter(pieces),
            )
            .await;
        self.record(name, &r);
        r
    }

    fn record(&mut self, name: &'static str, r: &Resp) {
        assert!(
            !self.steps.iter().any(|(n, _)| *n == name),
            "step {name} twice"
        );
        let mut seen = Observed::new();
        seen.insert("status", r.status.as_u16().to_string());
        for h in HEADERS {
            if let Some(v) = r.header(h) {
                let v = match h {
                    "docker-upload-uuid" => "<id>".to_owned(),
                    "location" => self.normalise_url(v),
                    "link" => normalise_link(&self.normalise_url(v)),
                    // "The client SHOULD ignore parameters on the
                    // Content-Type header" (spec: "Pulling manifests").
                    "content-type" => v.split(';').next().unwrap_or("").trim().to_owned(),
                    _ => v.to_owned(),
                };
                seen.insert(h, self.named(&v));
            }
        }
        let media = r.header("content-type").unwrap_or("");
        let api_json = media.starts_with("application/json");
        // An error body's text is free (spec: "Error Codes") and an API
        // document's whitespace too: their lengths are not compared.
        if r.status.as_u16() < 400
            && !api_json
            && let Some(v) = r.header("content-length")
        {
            seen.insert("content-length", v.to_owned());
        }
        if r.body_cut_short {
            seen.insert("body", "(cut short of its Content-Length)".to_owned());
        } else if r.status.as_u16() >= 400 {
            let codes = serde_json::from_slice::<serde_json::Value>(&r.body)
                .ok()
                .and_then(|v| {
                    Some(
                        v["errors"]
                            .as_array()?
                            .iter()
                            .map(|e| e["code"].as_str().unwrap_or("?").to_owned())
                            .collect::<Vec<_>>()
                            .join(","),
                    )
                })
                .unwrap_or_else(|| "(not a spec error body)".to_owned());
            seen.insert("errors", codes);
        } else if api_json {
            let mut v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
            // Tag order is compared apart from the set: distribution 2.8
            // lists tags in its filesystem's directory order, which differs
            // from one filesystem to the next.
            if let Some(tags) = v.get_mut("tags").and_then(|t| t.as_array_mut()) {
                let before = tags.clone();
                tags.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
                let order = if *tags == before {
                    "lexical"
                } else {
                    "not lexical"
                };
                seen.insert("tag-order", order.to_owned());
            }
            seen.insert("body", self.named(&v.to_string()));
        } else if media.starts_with("multipart/") {
            // Its parts are separated by a random boundary.
            seen.insert("body", "(multipart)".to_owned());
        } else if !r.body.is_empty() {
            let body = format!("{} bytes {}", r.body.len(), Digest::sha256(&r.body));
            seen.insert("body", self.named(&body));
        }
        self.steps.push((name, seen));
    }

    /// Relative form, session ids and their query (distribution's `_state`)
    /// replaced: both are the server's own business (spec: "POST then PUT").
    fn normalise_url(&self, v: &str) -> String {
        let v = v.replace(&format!("http://{}", self.c.addr), "");
        match v.split_once("/blobs/uploads/") {
            Some((repo, rest)) if !rest.starts_with('>') && !rest.is_empty() => {
                let tail = rest.find('>').map_or("", |i| &rest[i..]);
                format!("{repo}/blobs/uploads/<session>{tail}")
            }
            _ => v,
        }
    }

    fn named(&self, v: &str) -> String {
        let mut v = v.to_owned();
        for (digest, name) in &self.aliases {
            v = v.replace(digest.as_str(), name);
        }
        v
    }
}

/// A `Link`'s query parameters in sorted order: a client follows the URL
/// as given, so their order means nothing.
fn normalise_link(v: &str) -> String {
    let Some((head, rest)) = v.split_once('?') else {
        return v.to_owned();
    };
    let Some((query, tail)) = rest.split_once('>') else {
        return v.to_owned();
    };
    let mut pairs: Vec<&str> = query.split('&').collect();
    pairs.sort_unstable();
    format!("{head}?{}>{tail}", pairs.join("&"))
}

fn with_digest(location: &str, digest: &str) -> String {
    let sep = if location.contains('?') { '&' } else { '?' };
    format!("{location}{sep}digest={digest}")
}

fn location(r: &Resp) -> String {
    r.header("location")
        .unwrap_or("/v2/diff/app/blobs/uploads/no-location")
        .to_owned()
}

/// Bytes of `len` drawn from `seed`, so each blob has its own digest.
fn blob(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// The request sequence. It never branches on a response, so both servers
/// see exactly the same requests (only session `Location`s differ, and
/// each is used as the server returned it).
async fn sequence(rec: &mut Recorder) {
    use Method as M;
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#
            .to_vec();
    let chunked = blob(1, 2500);
    let streamed = blob(2, 5000);
    let single_post = blob(3, 700);
    let absent = Digest::sha256(b"never pushed");
    let sha512 = blob(4, 300);
    let sha512_digest = Digest::of(Algorithm::Sha512, &sha512);
    let (dc, dk, ds, dp) = (
        Digest::sha256(&config),
        Digest::sha256(&chunked),
        Digest::sha256(&streamed),
        Digest::sha256(&single_post),
    );
    let image = image_manifest(
        (&dc, config.len()),
        &[(&dk, chunked.len()), (&ds, streamed.len())],
    )
    .build();
    let docker = Image::from_descriptors(
        Desc::new(DOCKER_CONFIG, dc.clone(), config.len()),
        vec![Desc::new(DOCKER_LAYER, dk.clone(), chunked.len())],
    )
    .media_type(DOCKER_MANIFEST)
    .build();
    let index = Index::new(vec![image.descriptor()]).build();
    let referrer = image_manifest((&dc, config.len()), &[(&dk, chunked.len())])
        .artifact_type(SIGNATURE)
        .subject(image.descriptor())
        .build();
    let dangling = image_manifest((&dc, config.len()), &[(&absent, 10)]).build();
    for (d, name) in [
        (&dc, "config"),
        (&dk, "chunked"),
        (&ds, "streamed"),
        (&dp, "single-post"),
        (&absent, "absent"),
        (&sha512_digest, "sha512-blob"),
        (&image.digest, "image"),
        (&docker.digest, "docker-image"),
        (&index.digest, "index"),
        (&referrer.digest, "referrer"),
        (&dangling.digest, "dangling"),
    ] {
        rec.alias(d, name);
    }
    let app = "/v2/diff/app";
    let none: &[(&str, &str)] = &[];
    let empty = Bytes::new();
    let zero = [("content-length", "0")];

    // Determining support.
    rec.call("ping.get", M::GET, "/v2/").await;
    rec.call("ping.head", M::HEAD, "/v2/").await;

    // Before the repository exists.
    rec.call(
        "unknown-repo.blob.head",
        M::HEAD,
        &format!("{app}/blobs/{absent}"),
    )
    .await;
    rec.call(
        "unknown-repo.manifest.get",
        M::GET,
        &format!("{app}/manifests/latest"),
    )
    .await;
    rec.call("unknown-repo.tags", M::GET, &format!("{app}/tags/list"))
        .await;
    rec.call(
        "name-invalid.uppercase.tags",
        M::GET,
        "/v2/Diff/App/tags/list",
    )
    .await;
    rec.post_empty("name-invalid.dash.post", "/v2/diff/-bad/blobs/uploads/")
        .await;
    rec.call(
        "digest-invalid.short.get",
        M::GET,
        &format!("{app}/blobs/sha256:1234"),
    )
    .await;
    rec.call(
        "digest-invalid.algorithm.get",
        M::GET,
        &format!("{app}/blobs/md5:d41d8cd98f00b204e9800998ecf8427e"),
    )
    .await;

    // Monolithic pushes. The blob of the single POST is used nowhere
    // else: a registry may answer it with a session instead (spec: "Single
    // POST"), and the rest of the sequence must not depend on it.
    rec.step(
        "push.single-post",
        M::POST,
        &format!("{app}/blobs/uploads/?digest={dp}"),
        &[OCTET],
        single_post.clone(),
    )
    .await;
    rec.step(
        "push.single-post.digest-mismatch",
        M::POST,
        &format!("{app}/blobs/uploads/?digest={absent}"),
        &[OCTET],
        &b"other bytes"[..],
    )
    .await;
    rec.step(
        "push.single-post.digest-malformed",
        M::POST,
        &format!("{app}/blobs/uploads/?digest=sha256:zz"),
        &[OCTET],
        &b"other bytes"[..],
    )
    .await;
    let r = rec
        .post_empty("push.post-put.post", &format!("{app}/blobs/uploads/"))
        .await;
    let loc = location(&r);
    rec.step(
        "push.post-put.put",
        M::PUT,
        &with_digest(&loc, &dc.to_string()),
        &[OCTET],
        config.clone(),
    )
    .await;
    rec.call("push.post-put.session-after", M::GET, &loc).await;

    // A chunked push; every step uses the Location of the one before.
    let r = rec
        .post_empty("push.chunked.post", &format!("{app}/blobs/uploads/"))
        .await;
    let r = rec
        .call("push.chunked.status-empty", M::GET, &location(&r))
        .await;
    let r = rec
        .chunk(
            "push.chunked.patch-1",
            &location(&r),
            "0-999",
            chunked[..1000].to_vec(),
        )
        .await;
    let r = rec.call("push.chunked.status", M::GET, &location(&r)).await;
    let r = rec
        .chunk(
            "push.chunked.patch-2",
            &location(&r),
            "1000-2499",
            chunked[1000..].to_vec(),
        )
        .await;
    rec.close("push.chunked.put", &location(&r), &dk.to_string())
        .await;

    // Chunks a registry must refuse, each in a session of its own (a
    // registry that accepts one has a session no later step relies on).
    for (name, range) in [
        ("push.chunk.out-of-order", "20-29"),
        ("push.chunk.overlapping", "5-14"),
        ("push.chunk.content-range-malformed", "bytes=10-19"),
        ("push.chunk.content-range-length-mismatch", "10-29"),
    ] {
        let r = rec
            .c
            .send(
                M::POST,
                &format!("{app}/blobs/uploads/"),
                &zero,
                empty.clone(),
            )
            .await;
        let r = rec
            .c
            .send(
                M::PATCH,
                &location(&r),
                &[OCTET, ("content-range", "0-9")],
                streamed[..10].to_vec(),
            )
            .await;
        rec.chunk(name, &location(&r), range, streamed[10..20].to_vec())
            .await;
    }

    // A streamed push: one PATCH, no Content-Range, chunked encoding.
    let r = rec
        .post_empty("push.streamed.post", &format!("{app}/blobs/uploads/"))
        .await;
    let r = rec
        .step_streamed("push.streamed.patch", &location(&r), &streamed)
        .await;
    rec.close("push.streamed.put", &location(&r), &ds.to_string())
        .await;

    // Closing with the wrong digest, or none.
    let r = rec
        .post_empty("push.put-mismatch.post", &format!("{app}/blobs/uploads/"))
        .await;
    let r = rec
        .chunk(
            "push.put-mismatch.patch",
            &location(&r),
            "0-9",
            streamed[..10].to_vec(),
        )
        .await;
    let loc = location(&r);
    rec.close("push.put-mismatch.put", &loc, &absent.to_string())
        .await;
    let r = rec
        .post_empty("push.put-no-digest.post", &format!("{app}/blobs/uploads/"))
        .await;
    rec.step(
        "push.put-no-digest.put",
        M::PUT,
        &location(&r),
        &[OCTET],
        streamed[..10].to_vec(),
    )
    .await;

    // Cancel.
    let r = rec
        .post_empty("cancel.post", &format!("{app}/blobs/uploads/"))
        .await;
    let r = rec
        .chunk(
            "cancel.patch",
            &location(&r),
            "0-9",
            streamed[..10].to_vec(),
        )
        .await;
    let loc = location(&r);
    rec.call("cancel.delete", M::DELETE, &loc).await;
    rec.call("cancel.status-after", M::GET, &loc).await;
    rec.call(
        "upload.unknown-session",
        M::GET,
        &format!("{app}/blobs/uploads/0b6f3e2c-8a51-4f49-9d7e-0c4d2a9e1f00"),
    )
    .await;

    // Cross-repository mounts.
    rec.post_empty(
        "mount.with-from",
        &format!("/v2/diff/other/blobs/uploads/?mount={dc}&from=diff/app"),
    )
    .await;
    rec.call(
        "mount.head-after",
        M::HEAD,
        &format!("/v2/diff/other/blobs/{dc}"),
    )
    .await;
    rec.post_empty(
        "mount.source-lacks-blob",
        &format!("/v2/diff/other/blobs/uploads/?mount={absent}&from=diff/app"),
    )
    .await;
    rec.post_empty(
        "mount.unknown-source",
        &format!("/v2/diff/other/blobs/uploads/?mount={dc}&from=diff/nowhere"),
    )
    .await;
    rec.post_empty(
        "mount.without-from",
        &format!("/v2/diff/third/blobs/uploads/?mount={dk}"),
    )
    .await;

    // Pulling blobs, whole and in ranges.
    let blob_url = format!("{app}/blobs/{dk}");
    rec.call("blob.get", M::GET, &blob_url).await;
    rec.call("blob.head", M::HEAD, &blob_url).await;
    for (name, range) in [
        ("blob.range.first-ten", "bytes=0-9"),
        ("blob.range.open-end", "bytes=2490-"),
        ("blob.range.suffix", "bytes=-5"),
        ("blob.range.past-end", "bytes=2490-9999"),
        ("blob.range.unsatisfiable", "bytes=5000-"),
        ("blob.range.inverted", "bytes=9-0"),
        ("blob.range.several", "bytes=0-1,5-6"),
    ] {
        rec.step(name, M::GET, &blob_url, &[("range", range)], empty.clone())
            .await;
    }
    rec.call("blob.unknown.get", M::GET, &format!("{app}/blobs/{absent}"))
        .await;
    rec.step(
        "blob.method-not-allowed",
        M::PUT,
        &blob_url,
        &[OCTET],
        empty.clone(),
    )
    .await;

    // Manifests.
    let huge = Bytes::from(vec![b' '; 5 << 20]);
    let broken = Bytes::from_static(b"{not json");
    for (name, reference, media, body) in [
        (
            "manifest.put.oci-tag",
            "v1".to_owned(),
            MANIFEST,
            &image.bytes,
        ),
        (
            "manifest.put.oci-digest",
            image.digest.to_string(),
            MANIFEST,
            &image.bytes,
        ),
        (
            "manifest.put.docker-tag",
            "docker".to_owned(),
            DOCKER_MANIFEST,
            &docker.bytes,
        ),
        (
            "manifest.put.index-tag",
            "multi".to_owned(),
            INDEX,
            &index.bytes,
        ),
        (
            "manifest.put.digest-mismatch",
            absent.to_string(),
            MANIFEST,
            &image.bytes,
        ),
        (
            "manifest.put.blob-unknown",
            "dangling".to_owned(),
            MANIFEST,
            &dangling.bytes,
        ),
        (
            "manifest.put.invalid-json",
            "broken".to_owned(),
            MANIFEST,
            &broken,
        ),
        (
            "manifest.put.tag-invalid",
            "-bad".to_owned(),
            MANIFEST,
            &image.bytes,
        ),
        ("manifest.put.too-large", "huge".to_owned(), MANIFEST, &huge),
        // Subject: the referrer of the image.
        (
            "referrer.put",
            referrer.digest.to_string(),
            MANIFEST,
            &referrer.bytes,
        ),
        ("tags.put-t1", "t1".to_owned(), MANIFEST, &image.bytes),
        ("tags.put-t2", "t2".to_owned(), MANIFEST, &image.bytes),
        ("tags.put-t3", "t3".to_owned(), MANIFEST, &image.bytes),
    ] {
        let path = format!("{app}/manifests/{reference}");
        rec.step(
            name,
            M::PUT,
            &path,
            &[("content-type", media)],
            body.clone(),
        )
        .await;
    }
    let accept = |media: &'static str| [("accept", media)];
    let both = [("accept", MANIFEST), ("accept", DOCKER_MANIFEST)];
    for (name, reference, headers) in [
        ("manifest.get.tag-accept-oci", "v1", &accept(MANIFEST)[..]),
        ("manifest.get.tag-no-accept", "v1", none),
        (
            "manifest.get.docker-accept-docker",
            "docker",
            &accept(DOCKER_MANIFEST)[..],
        ),
        ("manifest.get.docker-accept-both", "docker", &both[..]),
        (
            "manifest.get.docker-accept-oci-only",
            "docker",
            &accept(MANIFEST)[..],
        ),
        (
            "manifest.get.index-accept-index",
            "multi",
            &accept(INDEX)[..],
        ),
        (
            "manifest.get.index-accept-manifest-only",
            "multi",
            &accept(MANIFEST)[..],
        ),
        ("manifest.get.unknown-tag", "nope", none),
    ] {
        rec.step(
            name,
            M::GET,
            &format!("{app}/manifests/{reference}"),
            headers,
            empty.clone(),
        )
        .await;
    }
    rec.step(
        "manifest.get.digest",
        M::GET,
        &format!("{app}/manifests/{}", image.digest),
        &accept(MANIFEST),
        empty.clone(),
    )
    .await;
    rec.call(
        "manifest.get.unknown-digest",
        M::GET,
        &format!("{app}/manifests/{absent}"),
    )
    .await;
    rec.step(
        "manifest.head.tag",
        M::HEAD,
        &format!("{app}/manifests/v1"),
        &accept(MANIFEST),
        empty.clone(),
    )
    .await;
    rec.step(
        "manifest.head.digest",
        M::HEAD,
        &format!("{app}/manifests/{}", docker.digest),
        &accept(DOCKER_MANIFEST),
        empty.clone(),
    )
    .await;

    // Subject and referrers.
    rec.call(
        "referrers.get",
        M::GET,
        &format!("{app}/referrers/{}", image.digest),
    )
    .await;
    rec.call(
        "referrers.filtered",
        M::GET,
        &format!("{app}/referrers/{}?artifactType={SIGNATURE}", image.digest),
    )
    .await;

    // Tags and catalog, paged.
    for (name, query) in [
        ("tags.list", ""),
        ("tags.page-1", "?n=2"),
        ("tags.page-2", "?n=2&last=multi"),
        ("tags.last-only", "?last=t2"),
        ("tags.n-zero", "?n=0"),
        ("tags.n-invalid", "?n=x"),
    ] {
        rec.call(name, M::GET, &format!("{app}/tags/list{query}"))
            .await;
    }
    for (name, query) in [
        ("catalog.all", ""),
        ("catalog.page-1", "?n=1"),
        ("catalog.page-2", "?n=1&last=diff/app"),
        ("catalog.n-zero", "?n=0"),
    ] {
        rec.call(name, M::GET, &format!("/v2/_catalog{query}"))
            .await;
    }

    // Content management.
    rec.call("delete.tag", M::DELETE, &format!("{app}/manifests/t3"))
        .await;
    rec.call("delete.tag-after", M::GET, &format!("{app}/manifests/t3"))
        .await;
    rec.call(
        "delete.manifest",
        M::DELETE,
        &format!("{app}/manifests/{}", docker.digest),
    )
    .await;
    rec.call(
        "delete.manifest-after.digest",
        M::GET,
        &format!("{app}/manifests/{}", docker.digest),
    )
    .await;
    rec.call(
        "delete.manifest-after.tag",
        M::GET,
        &format!("{app}/manifests/docker"),
    )
    .await;
    rec.call(
        "delete.manifest-unknown",
        M::DELETE,
        &format!("{app}/manifests/{absent}"),
    )
    .await;
    // A blob no manifest references (mounted into diff/other), then one
    // the image in diff/app still references.
    let other_blob = format!("/v2/diff/other/blobs/{dc}");
    rec.call("delete.blob", M::DELETE, &other_blob).await;
    rec.call("delete.blob-after", M::HEAD, &other_blob).await;
    rec.call("delete.blob-again", M::DELETE, &other_blob).await;
    rec.call(
        "delete.blob-referenced",
        M::DELETE,
        &format!("{app}/blobs/{ds}"),
    )
    .await;

    // sha512 (distribution-spec allows any registered algorithm).
    rec.step(
        "sha512.single-post",
        M::POST,
        &format!("{app}/blobs/uploads/?digest={sha512_digest}"),
        &[OCTET],
        sha512.clone(),
    )
    .await;
    rec.call(
        "sha512.head",
        M::HEAD,
        &format!("{app}/blobs/{sha512_digest}"),
    )
    .await;
}

/// How one step's responses differ: (step, the fields that differ,
/// ocistore's values, distribution's values), values as `field=value; ...`.
type Difference = (String, String, String, String);

fn differences(
    ours: &[(&'static str, Observed)],
    theirs: &[(&'static str, Observed)],
) -> Vec<Difference> {
    assert_eq!(ours.len(), theirs.len());
    let mut out = Vec::new();
    for ((step, a), (step_b, b)) in ours.iter().zip(theirs) {
        assert_eq!(step, step_b);
        let mut fields: Vec<&&str> = a.keys().chain(b.keys()).collect();
        fields.sort();
        fields.dedup();
        let get =
            |m: &Observed, field: &str| m.get(field).cloned().unwrap_or_else(|| ABSENT.into());
        let differing: Vec<&str> = fields
            .into_iter()
            .filter(|f| get(a, f) != get(b, f))
            .copied()
            .collect();
        if differing.is_empty() {
            continue;
        }
        let values = |m: &Observed| {
            differing
                .iter()
                .map(|f| format!("{f}={}", get(m, f)))
                .collect::<Vec<_>>()
                .join("; ")
        };
        out.push((step.to_string(), differing.join(", "), values(a), values(b)));
    }
    out
}

/// The rows of the doc's table between its markers: step, field, ours,
/// theirs (cells without their backticks), and the clause.
fn documented() -> Vec<(Difference, String)> {
    let text = std::fs::read_to_string(DOC).unwrap_or_else(|e| panic!("{DOC}: {e}"));
    let table = text
        .split_once("<!-- differences:begin -->")
        .and_then(|(_, rest)| rest.split_once("<!-- differences:end -->"))
        .unwrap_or_else(|| panic!("{DOC}: no differences:begin/end markers"))
        .0;
    let cell = |s: &str| {
        let s = s.trim();
        s.strip_prefix('`')
            .and_then(|s| s.strip_suffix('`'))
            .unwrap_or(s)
            .to_owned()
    };
    table
        .lines()
        .filter(|l| l.starts_with('|') && !l.starts_with("| step") && !l.starts_with("|--"))
        .map(|l| {
            let cells: Vec<String> = l.trim().trim_matches('|').split(" | ").map(cell).collect();
            assert_eq!(cells.len(), 5, "{DOC}: a row needs 5 cells: {l}");
            (
                (
                    cells[0].clone(),
                    cells[1].clone(),
                    cells[2].clone(),
                    cells[3].clone(),
                ),
                cells[4].clone(),
            )
        })
        .collect()
}

fn row((step, field, ours, theirs): &Difference) -> String {
    format!("| `{step}` | {field} | `{ours}` | `{theirs}` | TODO |")
}

#[rtokio::test(crate = "rtokio", flavor = "multi_thread", worker_threads = 2)]
async fn same_requests_as_distribution_2_8() {
    let distribution = Distribution::start();
    let ours = Registry::start().await;
    let mut theirs_rec = Recorder::new(distribution.client().tolerant());
    sequence(&mut theirs_rec).await;
    let mut ours_rec = Recorder::new(ours.client());
    sequence(&mut ours_rec).await;
    assert!(
        ours_rec.steps.len() >= 100,
        "the sequence ran {} steps",
        ours_rec.steps.len()
    );

    let found = differences(&ours_rec.steps, &theirs_rec.steps);
    let allowed = documented();
    for (_, clause) in &allowed {
        assert!(
            !clause.is_empty() && clause != "TODO",
            "every documented difference names the clause that allows it"
        );
    }
    let new: Vec<&Difference> = found
        .iter()
        .filter(|d| !allowed.iter().any(|(a, _)| a == *d))
        .collect();
    let stale: Vec<&Difference> = allowed
        .iter()
        .map(|(a, _)| a)
        .filter(|a| !found.contains(a))
        .collect();
    let mut report = String::new();
    if !new.is_empty() {
        let _ = writeln!(
            report,
            "{} difference(s) not in {DOC} (fix the server or add the row with its clause):",
            new.len()
        );
        for d in &new {
            let _ = writeln!(report, "{}", row(d));
        }
    }
    if !stale.is_empty() {
        let _ = writeln!(
            report,
            "{} row(s) of {DOC} no longer differ (remove them):",
            stale.len()
        );
        for d in &stale {
            let _ = writeln!(report, "{}", row(d));
        }
    }
    assert!(report.is_empty(), "{report}");
}

/// The comparison itself can fail: a changed status, a header one side
/// lacks and an error code are each a difference.
#[test]
fn a_changed_response_is_a_difference() {
    let base: Observed = [("status", "201"), ("location", "/v2/a/blobs/<x>")]
        .into_iter()
        .map(|(k, v)| (k, v.to_owned()))
        .collect();
    let mut changed = base.clone();
    changed.insert("status", "202".into());
    changed.remove("location");
    changed.insert("errors", "BLOB_UNKNOWN".into());
    let found = differences(&[("s", base.clone())], &[("s", changed)]);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].1, "errors, location, status");
    assert_eq!(found[0].2, "errors=—; location=/v2/a/blobs/<x>; status=201");
    assert_eq!(found[0].3, "errors=BLOB_UNKNOWN; location=—; status=202");
    assert!(differences(&[("s", base.clone())], &[("s", base)]).is_empty());
}
