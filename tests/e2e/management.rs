//! Content management: deleting tags, manifests and blobs.

use e2e::{Registry, push_image};
use engine::Digest;
use hyper::StatusCode;

#[rtokio::test(crate = "rtokio", flavor = "multi_thread", worker_threads = 2)]
async fn delete_tag_keeps_the_manifest_by_digest() {
    let reg = Registry::start().await;
    let c = reg.client();
    let (digest, _, _, _) = push_image(&c, "del", "v1", "a").await;
    let r = c.delete("/v2/del/manifests/v1").await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(
        c.get("/v2/del/manifests/v1").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        c.get(&format!("/v2/del/manifests/{digest}")).await.status,
        StatusCode::OK
    );
    assert_eq!(
        c.delete("/v2/del/manifests/v1").await.status,
        StatusCode::NOT_FOUND
    );
}

#[rtokio::test(crate = "rtokio", flavor = "multi_thread", worker_threads = 2)]
async fn delete_manifest_then_its_blobs() {
    let reg = Registry::start().await;
    let c = reg.client();
    let (digest, _, layer, _) = push_image(&c, "del", "v1", "b").await;
    // A blob a manifest references is refused (DENIED) while the manifest stays.
    let r = c.delete(&format!("/v2/del/blobs/{layer}")).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.error_code().as_deref(), Some("DENIED"));
    let r = c.delete(&format!("/v2/del/manifests/{digest}")).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    for reference in [digest.to_string(), "v1".to_owned()] {
        let r = c.get(&format!("/v2/del/manifests/{reference}")).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{reference}");
    }
    let r = c.delete(&format!("/v2/del/blobs/{layer}")).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(
        c.head(&format!("/v2/del/blobs/{layer}")).await.status,
        StatusCode::NOT_FOUND
    );
    let r = c.delete(&format!("/v2/del/blobs/{layer}")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.error_code().as_deref(), Some("BLOB_UNKNOWN"));
    let r = c
        .delete(&format!("/v2/nope/manifests/{}", Digest::sha256(b"x")))
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(
        reg.store
            .fsck()
            .await
            .unwrap()
            .iter()
            .filter(|f| f.is_error())
            .count(),
        0
    );
}
