//! One behaviour suite for the store, run against every combination of
//! layout x lock policy x driver (2 x 3 x 4). Each behaviour gets a fresh
//! store and ends with a clean fsck.

mod common;

use bytes::Bytes;
use common::*;
use engine::driver::{DriverPath, PutMode};
use engine::oci::media;
use engine::store::FindingKind;
use engine::{Digest, ErrorCode, LayoutKind, Reference, StoreError};

fn code(e: &StoreError) -> Option<ErrorCode> {
    e.code()
}

async fn chunked_uploads_check_ranges_and_sizes(h: &Harness) {
    let s = &h.store;
    let r = repo("up");
    let data = Bytes::from_static(b"0123456789");
    let id = s.start_upload(&r).await.unwrap();
    assert_eq!(
        s.upload_chunk(&id, Some((0, 3)), data.slice(0..4))
            .await
            .unwrap(),
        4
    );
    // A chunk that does not start at the offset, or whose range and length disagree.
    let e = s
        .upload_chunk(&id, Some((3, 6)), data.slice(3..7))
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::BlobUploadInvalid), "{e}");
    let e = s
        .upload_chunk(&id, Some((4, 9)), data.slice(4..7))
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::SizeInvalid), "{e}");
    assert_eq!(
        s.upload_status(&id).await.unwrap().offset,
        4,
        "a refused chunk changed the upload"
    );
    // A range whose length does not fit in u64 (`end - start + 1`) is a
    // size error, not an overflow.
    let fresh = s.start_upload(&r).await.unwrap();
    for range in [(0, u64::MAX), (0, u64::MAX - 1)] {
        let e = s
            .upload_chunk(&fresh, Some(range), data.slice(0..4))
            .await
            .unwrap_err();
        assert_eq!(code(&e), Some(ErrorCode::SizeInvalid), "{range:?}: {e}");
    }
    s.cancel_upload(&fresh).await.unwrap();
    // Streamed (no range) chunk, then finish with the last bytes.
    assert_eq!(
        s.upload_chunk(&id, None, data.slice(4..8)).await.unwrap(),
        8
    );
    let digest = Digest::sha256(&data);
    s.finish_upload(&id, &digest, Some(data.slice(8..)))
        .await
        .unwrap();
    assert_eq!(s.get_blob(&r, &digest).await.unwrap(), data);
    assert_eq!(
        code(&s.upload_status(&id).await.unwrap_err()),
        Some(ErrorCode::BlobUploadUnknown)
    );

    // A wrong digest: refused, nothing becomes visible.
    let id = s.start_upload(&r).await.unwrap();
    let wrong = Digest::sha256(b"something else");
    let e = s
        .finish_upload(&id, &wrong, Some(Bytes::from_static(b"abc")))
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::DigestInvalid), "{e}");
    assert_eq!(
        code(&s.stat_blob(&r, &wrong).await.unwrap_err()),
        Some(ErrorCode::BlobUnknown)
    );
    // Cancel.
    let id = s.start_upload(&r).await.unwrap();
    s.upload_chunk(&id, None, Bytes::from_static(b"partial"))
        .await
        .unwrap();
    s.cancel_upload(&id).await.unwrap();
    assert_eq!(
        code(&s.cancel_upload(&id).await.unwrap_err()),
        Some(ErrorCode::BlobUploadUnknown)
    );
    assert_eq!(
        code(
            &s.upload_chunk("no-such-id", None, Bytes::new())
                .await
                .unwrap_err()
        ),
        Some(ErrorCode::BlobUploadUnknown)
    );
    // sha512 digests work too.
    let d512 = Digest::of(engine::Algorithm::Sha512, &data);
    s.push_blob(&r, &d512, data.clone()).await.unwrap();
    assert_eq!(s.get_blob(&r, &d512).await.unwrap(), data);
}

async fn bad_manifests_are_refused_and_change_nothing(h: &Harness) {
    let s = &h.store;
    let r = repo("bad");
    let img = image(1, 2);
    push_image(s, &r, &img, Some("good")).await;
    let index_path = DriverPath::new("bad/index.json").unwrap();
    let before = s.driver().get(&index_path, None).await.unwrap();
    let missing_layer = image_with(img.config.clone(), vec![blob(999, 10)], None, None);
    let cases: Vec<(&str, Reference, Bytes, ErrorCode)> = vec![
        (
            "text/plain",
            tag("t"),
            img.manifest.clone(),
            ErrorCode::ManifestInvalid,
        ),
        (
            media::OCI_MANIFEST,
            tag("t"),
            Bytes::new(),
            ErrorCode::ManifestInvalid,
        ),
        (
            media::OCI_MANIFEST,
            tag("t"),
            Bytes::from_static(br#"{"schemaVersion":2,"layers":"x"}"#),
            ErrorCode::ManifestInvalid,
        ),
        (
            media::OCI_MANIFEST,
            tag("t"),
            Bytes::from(format!("{}{}", "[".repeat(50_000), "]".repeat(50_000))),
            ErrorCode::ManifestInvalid,
        ),
        (
            media::OCI_MANIFEST,
            Reference::Digest(Digest::sha256(b"other")),
            img.manifest.clone(),
            ErrorCode::DigestInvalid,
        ),
        (
            media::OCI_MANIFEST,
            tag("t"),
            missing_layer.manifest.clone(),
            ErrorCode::ManifestBlobUnknown,
        ),
        (
            media::OCI_INDEX,
            tag("t"),
            index_of(&[&image(77, 1)]).1,
            ErrorCode::ManifestBlobUnknown,
        ),
    ];
    for (mt, reference, body, want) in cases {
        let e = s.put_manifest(&r, &reference, mt, body).await.unwrap_err();
        assert_eq!(code(&e), Some(want), "{mt} {reference}: {e}");
    }
    assert_eq!(
        s.driver().get(&index_path, None).await.unwrap(),
        before,
        "a refused manifest changed index.json"
    );
    assert_eq!(s.tags(&r, None, None).await.unwrap().len(), 1);
}

async fn one_manifest_three_tags(h: &Harness) {
    let s = &h.store;
    let r = repo("tags");
    let img = image(2, 2);
    for t in ["a", "b", "c"] {
        assert_eq!(push_image(s, &r, &img, Some(t)).await, img.digest);
    }
    let names = |v: Vec<engine::Tag>| v.iter().map(|t| t.to_string()).collect::<Vec<_>>();
    assert_eq!(
        names(s.tags(&r, None, None).await.unwrap()),
        ["a", "b", "c"]
    );
    assert_eq!(names(s.tags(&r, Some(1), Some("a")).await.unwrap()), ["b"]);
    s.delete_manifest(&r, &tag("b")).await.unwrap();
    assert_eq!(names(s.tags(&r, None, None).await.unwrap()), ["a", "c"]);
    assert_eq!(
        code(&s.get_manifest(&r, &tag("b")).await.unwrap_err()),
        Some(ErrorCode::ManifestUnknown)
    );
    for reference in [tag("a"), Reference::Digest(img.digest.clone())] {
        let m = s.get_manifest(&r, &reference).await.unwrap();
        assert_eq!(
            (m.body, m.media_type.as_str()),
            (img.manifest.clone(), media::OCI_MANIFEST)
        );
    }
    for (d, data) in &img.layers {
        assert_eq!(&s.get_blob(&r, d).await.unwrap(), data);
    }
    // Deleting the last tags keeps the manifest reachable by digest.
    s.delete_manifest(&r, &tag("a")).await.unwrap();
    s.delete_manifest(&r, &tag("c")).await.unwrap();
    assert!(s.tags(&r, None, None).await.unwrap().is_empty());
    s.get_manifest(&r, &Reference::Digest(img.digest.clone()))
        .await
        .unwrap();
    // A tag moves: the old manifest stays by digest.
    let img2 = image(3, 1);
    push_image(s, &r, &img, Some("x")).await;
    push_image(s, &r, &img2, Some("x")).await;
    assert_eq!(
        s.get_manifest(&r, &tag("x")).await.unwrap().digest,
        img2.digest
    );
    s.get_manifest(&r, &Reference::Digest(img.digest.clone()))
        .await
        .unwrap();
}

/// index.json replaced from outside the store (another process, a
/// restore) is what the next read sees: the store may reuse its parse of
/// bytes it read before, never of other bytes.
async fn index_json_replaced_from_outside_is_read_again(h: &Harness) {
    let s = &h.store;
    let r = repo("outside");
    let names = |v: Vec<engine::Tag>| v.iter().map(|t| t.to_string()).collect::<Vec<_>>();
    push_image(s, &r, &image(4, 1), Some("a")).await;
    assert_eq!(names(s.tags(&r, None, None).await.unwrap()), ["a"]);
    let path = engine::layout::index_json(&r);
    let before = s.driver().get(&path, None).await.unwrap();
    push_image(s, &r, &image(5, 1), Some("b")).await;
    assert_eq!(names(s.tags(&r, None, None).await.unwrap()), ["a", "b"]);
    let after = s.driver().get(&path, None).await.unwrap();
    for (bytes, tags) in [(before, vec!["a"]), (after, vec!["a", "b"])] {
        s.driver()
            .put(&path, bytes, PutMode::Overwrite)
            .await
            .unwrap();
        assert_eq!(names(s.tags(&r, None, None).await.unwrap()), tags);
    }
}

async fn delete_by_digest_and_blob_deletion_rules(h: &Harness) {
    let s = &h.store;
    let r = repo("del");
    let img = image(4, 2);
    push_image(s, &r, &img, Some("v1")).await;
    push_image(s, &r, &img, Some("v2")).await;
    let layer = &img.layers[0].0;
    let e = s.delete_blob(&r, layer).await.unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::Denied), "{e}");
    let e = s.delete_blob(&r, &img.digest).await.unwrap_err();
    assert_eq!(
        code(&e),
        Some(ErrorCode::Denied),
        "a manifest deleted as a blob: {e}"
    );
    s.delete_manifest(&r, &Reference::Digest(img.digest.clone()))
        .await
        .unwrap();
    assert!(
        s.tags(&r, None, None).await.unwrap().is_empty(),
        "delete by digest keeps tags"
    );
    assert_eq!(
        code(&s.get_manifest(&r, &tag("v1")).await.unwrap_err()),
        Some(ErrorCode::ManifestUnknown)
    );
    assert_eq!(
        code(
            &s.delete_manifest(&r, &Reference::Digest(img.digest.clone()))
                .await
                .unwrap_err()
        ),
        Some(ErrorCode::ManifestUnknown)
    );
    s.delete_blob(&r, layer).await.unwrap();
    assert_eq!(
        code(&s.stat_blob(&r, layer).await.unwrap_err()),
        Some(ErrorCode::BlobUnknown)
    );
    assert_eq!(
        code(&s.delete_blob(&r, layer).await.unwrap_err()),
        Some(ErrorCode::BlobUnknown)
    );
}

async fn index_protects_its_children(h: &Harness) {
    let s = &h.store;
    let r = repo("multi");
    let (amd, arm) = (image(5, 1), image(6, 2));
    push_image(s, &r, &amd, None).await;
    push_image(s, &r, &arm, None).await;
    let (idx, body) = index_of(&[&amd, &arm]);
    s.put_manifest(&r, &tag("latest"), media::OCI_INDEX, body.clone())
        .await
        .unwrap();
    let got = s.get_manifest(&r, &tag("latest")).await.unwrap();
    assert_eq!(
        (got.digest, got.media_type.as_str()),
        (idx.clone(), media::OCI_INDEX)
    );
    let e = s
        .delete_manifest(&r, &Reference::Digest(amd.digest.clone()))
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::Denied), "{e}");
    s.delete_manifest(&r, &Reference::Digest(idx))
        .await
        .unwrap();
    s.delete_manifest(&r, &Reference::Digest(amd.digest.clone()))
        .await
        .unwrap();
}

/// The path that holds the blob's bytes in this layout.
fn bytes_path(h: &Harness, r: &str, d: &Digest) -> String {
    match h.store.config().layout {
        LayoutKind::Legacy => format!("{r}/blobs/sha256/{}", d.hex()),
        LayoutKind::Blobstore => format!("_blobstore/blobs/sha256/{}", d.hex()),
    }
}

async fn corrupt_blob_is_missing_and_a_repush_heals_it(h: &Harness) {
    let s = &h.store;
    let r = repo("rot");
    let (d, data) = blob(7, 5000);
    s.push_blob(&r, &d, data.clone()).await.unwrap();
    s.stat_blob(&r, &d).await.unwrap();
    h.corrupt_in_place(&bytes_path(h, "rot", &d)).await;
    // Bit rot keeps size and mtime, so only hashing finds it: a whole read
    // always hashes, and from then on HEAD reports the blob missing too.
    assert_eq!(
        code(&s.get_blob(&r, &d).await.unwrap_err()),
        Some(ErrorCode::BlobUnknown)
    );
    assert_eq!(
        code(&s.stat_blob(&r, &d).await.unwrap_err()),
        Some(ErrorCode::BlobUnknown)
    );
    assert_eq!(
        code(&s.get_blob_range(&r, &d, 0..10).await.unwrap_err()),
        Some(ErrorCode::BlobUnknown)
    );
    s.push_blob(&r, &d, data.clone()).await.unwrap();
    assert_eq!(s.get_blob(&r, &d).await.unwrap(), data);
}

async fn empty_blob_is_real_and_a_marker_never_is(h: &Harness) {
    let s = &h.store;
    let r = repo("empty");
    let empty = Digest::sha256(b"");
    s.push_blob(&r, &empty, Bytes::new()).await.unwrap();
    assert_eq!(s.stat_blob(&r, &empty).await.unwrap(), 0);
    assert_eq!(s.get_blob(&r, &empty).await.unwrap(), Bytes::new());
    s.mount_blob(&r, &repo("empty2"), &empty).await.unwrap();
    assert_eq!(
        s.get_blob(&repo("empty2"), &empty).await.unwrap(),
        Bytes::new()
    );
    // A 0-byte object planted where a non-empty blob would live is not that blob.
    let (d, _) = blob(8, 100);
    let planted = DriverPath::new(format!("empty/blobs/sha256/{}", d.hex())).unwrap();
    s.driver()
        .put(&planted, Bytes::new(), PutMode::Overwrite)
        .await
        .unwrap();
    assert_eq!(
        code(&s.stat_blob(&r, &d).await.unwrap_err()),
        Some(ErrorCode::BlobUnknown)
    );
    assert_eq!(
        code(&s.get_blob(&r, &d).await.unwrap_err()),
        Some(ErrorCode::BlobUnknown)
    );
    s.driver().delete(&planted).await.unwrap();
}

async fn nested_names_and_catalog(h: &Harness) {
    let s = &h.store;
    for name in ["a/b/c", "blobs/foo", "a", "z"] {
        push_image(s, &repo(name), &image(9, 1), Some("v")).await;
    }
    let names = |v: Vec<engine::RepoName>| v.iter().map(|r| r.to_string()).collect::<Vec<_>>();
    assert_eq!(
        names(s.catalog(None, None).await.unwrap()),
        ["a", "a/b/c", "blobs/foo", "z"]
    );
    assert_eq!(
        names(s.catalog(Some(2), Some("a")).await.unwrap()),
        ["a/b/c", "blobs/foo"]
    );
    assert_eq!(
        names(s.catalog(Some(0), None).await.unwrap()),
        Vec::<String>::new()
    );
    s.get_manifest(&repo("a/b/c"), &tag("v")).await.unwrap();
    assert_eq!(
        code(&s.tags(&repo("nope"), None, None).await.unwrap_err()),
        Some(ErrorCode::NameUnknown)
    );
    assert_eq!(
        code(
            &s.stat_blob(&repo("nope"), &Digest::sha256(b""))
                .await
                .unwrap_err()
        ),
        Some(ErrorCode::NameUnknown)
    );
}

async fn dedupe_shares_one_copy_and_survives_deletes(h: &Harness) {
    let s = &h.store;
    let (ra, rb) = (repo("dedupe-a"), repo("dedupe-b"));
    let img = image(10, 3);
    push_image(s, &ra, &img, Some("v")).await;
    push_image(s, &rb, &img, Some("v")).await;
    let (layer, data) = &img.layers[2];
    let d = s.driver();
    if d.capabilities().hard_links {
        let links = d
            .stat(&DriverPath::new(bytes_path(h, "dedupe-a", layer)).unwrap())
            .await
            .unwrap()
            .links;
        let expected = if s.config().layout == LayoutKind::Blobstore {
            3
        } else {
            2
        };
        assert_eq!(links, Some(expected), "one inode shared by every holder");
    } else {
        let mut full_copies = 0;
        for p in d.list(None).await.unwrap() {
            if p.as_str().ends_with(&*layer.hex())
                && d.stat(&p).await.unwrap().size == data.len() as u64
            {
                full_copies += 1;
            }
        }
        assert_eq!(full_copies, 1, "bytes stored more than once");
    }
    // Delete everything in A (which received the bytes first): B keeps them.
    s.delete_manifest(&ra, &Reference::Digest(img.digest.clone()))
        .await
        .unwrap();
    for (dg, _) in std::iter::once(&img.config).chain(&img.layers) {
        s.delete_blob(&ra, dg).await.unwrap();
    }
    assert_eq!(&s.get_blob(&rb, layer).await.unwrap(), data);
    assert_eq!(
        s.get_manifest(&rb, &tag("v")).await.unwrap().body,
        img.manifest
    );
}

async fn mounts_and_ranges(h: &Harness) {
    let s = &h.store;
    let (ra, rb) = (repo("m-a"), repo("m-b"));
    let (d, data) = blob(11, 4000);
    s.push_blob(&ra, &d, data.clone()).await.unwrap();
    assert!(s.mount_blob(&ra, &rb, &d).await.unwrap());
    assert_eq!(s.get_blob(&rb, &d).await.unwrap(), data);
    let (other, _) = blob(12, 10);
    assert!(
        !s.mount_blob(&ra, &rb, &other).await.unwrap(),
        "mounted a blob the source lacks"
    );
    assert_eq!(
        code(&s.stat_blob(&rb, &other).await.unwrap_err()),
        Some(ErrorCode::BlobUnknown)
    );
    assert_eq!(
        s.get_blob_range(&rb, &d, 100..200).await.unwrap(),
        data.slice(100..200)
    );
    assert_eq!(
        s.get_blob_range(&rb, &d, 4000..4000).await.unwrap(),
        Bytes::new()
    );
    let e = s.get_blob_range(&rb, &d, 3990..4001).await.unwrap_err();
    assert!(
        matches!(e, StoreError::RangeInvalid { size: 4000, .. }),
        "{e}"
    );
    // Repo-scoped: a blob exists in a repo only if pushed or mounted there.
    assert_eq!(
        code(&s.stat_blob(&repo("m-c"), &d).await.unwrap_err()),
        Some(ErrorCode::NameUnknown)
    );
    push_image(s, &repo("m-c"), &image(13, 1), Some("v")).await;
    assert_eq!(
        code(&s.stat_blob(&repo("m-c"), &d).await.unwrap_err()),
        Some(ErrorCode::BlobUnknown)
    );
}

async fn referrers_filter_by_artifact_type(h: &Harness) {
    let s = &h.store;
    let r = repo("refs");
    let subject = image(14, 1);
    push_image(s, &r, &subject, Some("v")).await;
    let sig = image_with(
        blob(15, 20),
        vec![blob(16, 30)],
        Some(&subject.digest),
        Some("application/vnd.example.sig"),
    );
    let sbom = image_with(
        blob(17, 20),
        vec![blob(18, 30)],
        Some(&subject.digest),
        Some("application/vnd.example.sbom"),
    );
    // A referrer of a referrer, and one whose subject is not (yet) here.
    let sig_of_sig = image_with(
        blob(19, 20),
        vec![],
        Some(&sig.digest),
        Some("application/vnd.example.sig"),
    );
    let dangling = image_with(blob(20, 20), vec![], Some(&Digest::sha256(b"absent")), None);
    for img in [&sig, &sbom, &sig_of_sig, &dangling] {
        push_image(s, &r, img, None).await;
    }
    let all = s.referrers(&r, &subject.digest, None).await.unwrap();
    let mut want = vec![sig.digest.clone(), sbom.digest.clone()];
    want.sort();
    assert_eq!(
        all.iter().map(|d| d.digest.clone()).collect::<Vec<_>>(),
        want
    );
    let sigs = s
        .referrers(&r, &subject.digest, Some("application/vnd.example.sig"))
        .await
        .unwrap();
    assert_eq!(sigs.len(), 1);
    assert_eq!(sigs[0].digest, sig.digest);
    assert_eq!(
        sigs[0].artifact_type.as_deref(),
        Some("application/vnd.example.sig")
    );
    assert_eq!(s.referrers(&r, &sig.digest, None).await.unwrap().len(), 1);
}

async fn hidden_names_stay_hidden(h: &Harness) {
    let s = &h.store;
    push_image(s, &repo("visible"), &image(21, 1), Some("v")).await;
    let names: Vec<String> = s
        .catalog(None, None)
        .await
        .unwrap()
        .iter()
        .map(|r| r.to_string())
        .collect();
    assert_eq!(
        names,
        ["visible"],
        "hidden namespaces leaked into the catalog"
    );
    for bad in [
        "_blobstore",
        "_ocistore",
        ".uploads",
        "visible/blobs",
        "../x",
        "/abs",
        "a//b",
        "UPPER",
    ] {
        assert!(engine::RepoName::parse(bad).is_err(), "{bad} accepted");
    }
}

macro_rules! behaviours {
    ($($name:ident),* $(,)?) => {
        async fn run_all(layout: LayoutKind, policy: engine::LockPolicy, backend: Backend) {
            $(
                let h = harness(layout, policy, backend).await;
                $name(&h).await;
                assert_clean(&h.store, &format!("{} after {}", h.label, stringify!($name))).await;
            )*
        }
    };
}

behaviours!(
    chunked_uploads_check_ranges_and_sizes,
    bad_manifests_are_refused_and_change_nothing,
    one_manifest_three_tags,
    index_json_replaced_from_outside_is_read_again,
    delete_by_digest_and_blob_deletion_rules,
    index_protects_its_children,
    corrupt_blob_is_missing_and_a_repush_heals_it,
    empty_blob_is_real_and_a_marker_never_is,
    nested_names_and_catalog,
    dedupe_shares_one_copy_and_survives_deletes,
    mounts_and_ranges,
    referrers_filter_by_artifact_type,
    hidden_names_stay_hidden,
    fsck_asks_once_per_digest,
    fsck_names_a_shared_copy_nobody_holds,
);

/// fsck runs at rest, so it asks whether the repository holds a digest
/// once, not once per manifest that references it: with manifests over the
/// same three layers, its backend calls grow with the digests (two per
/// manifest), not with the references (five per manifest).
async fn fsck_asks_once_per_digest(h: &Harness) {
    let s = &h.store;
    let r = repo("fsck-cost");
    let base = image(80, 3);
    push_image(s, &r, &base, Some("base")).await;
    let mut fsck_calls = Vec::new();
    for round in 0..2u64 {
        for i in 0..10 {
            let img = image_with(
                blob(2000 + round * 10 + i, 20),
                base.layers.clone(),
                None,
                None,
            );
            push_image(s, &r, &img, Some(&format!("t{round}-{i}"))).await;
        }
        let before = s.metrics().calls;
        assert!(s.fsck().await.unwrap().is_empty(), "{}", h.label);
        fsck_calls.push(s.metrics().calls.since(&before).total());
    }
    let (first, more) = (fsck_calls[0], fsck_calls[1]);
    // Per added manifest: two new digests (its config and itself), each
    // checked, stat-ed for markers and counted for holders, and one read of
    // the manifest. Asking per reference cost 9 to 16 per manifest here.
    assert!(
        more - first <= 10 * 7,
        "{}: fsck went from {first} to {more} backend calls for 10 more manifests",
        h.label
    );
}

/// A blob deleted from the only repository that held it leaves its
/// `_blobstore` copy for GC: fsck names it as an orphan (garbage, not an
/// error), and only it. The legacy layout frees the bytes at once.
async fn fsck_names_a_shared_copy_nobody_holds(h: &Harness) {
    let s = &h.store;
    let r = repo("orphans");
    let (kept, kept_data) = blob(3100, 300);
    let (gone, gone_data) = blob(3101, 300);
    s.push_blob(&r, &kept, kept_data).await.unwrap();
    s.push_blob(&r, &gone, gone_data).await.unwrap();
    s.delete_blob(&r, &gone).await.unwrap();
    let findings = s.fsck().await.unwrap();
    let expected: Vec<(FindingKind, Option<String>)> = match h.store.config().layout {
        LayoutKind::Blobstore => vec![(FindingKind::Orphan, Some(gone.to_string()))],
        LayoutKind::Legacy => vec![],
    };
    let seen: Vec<_> = findings
        .iter()
        .map(|f| (f.kind, f.digest.clone()))
        .collect();
    assert_eq!(seen, expected, "{}: {findings:#?}", h.label);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_layout_policy_and_driver() {
    for (layout, policy, backend) in all_configs() {
        let label = format!("{layout}/{policy}/{backend:?}");
        // Run each combination as its own task so a panic names it.
        let result = tokio::spawn(run_all(layout, policy, backend)).await;
        if let Err(e) = result {
            panic!("{label}: {e}");
        }
    }
}

/// The whole suite on a real S3 API (moto), both layouts: one lock policy
/// is enough, the policies are the engine's and the backend is the subject.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_layouts_on_s3() {
    for layout in [LayoutKind::Legacy, LayoutKind::Blobstore] {
        let label = format!("{layout}/S3");
        let result = tokio::spawn(run_all(layout, engine::LockPolicy::Striped, Backend::S3)).await;
        if let Err(e) = result {
            panic!("{label}: {e}");
        }
    }
}

#[tokio::test]
async fn a_root_refuses_another_configuration() {
    use engine::driver::ObjectDriver;
    use engine::meta::MemoryMeta;
    use engine::{LockPolicy, Store, StoreConfig};
    use std::sync::Arc;
    let driver: Arc<dyn engine::driver::Driver> = Arc::new(ObjectDriver::in_memory());
    let meta = Arc::new(MemoryMeta::new());
    let cfg = StoreConfig {
        layout: LayoutKind::Blobstore,
        policy: LockPolicy::Striped,
    };
    Store::open(driver.clone(), meta.clone(), cfg)
        .await
        .unwrap();
    Store::open(driver.clone(), meta.clone(), cfg)
        .await
        .unwrap();
    let other = StoreConfig {
        layout: LayoutKind::Legacy,
        ..cfg
    };
    let e = Store::open(driver, meta, other).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Denied), "{e}");
    assert!(e.to_string().contains("layout blobstore"), "{e}");
}
