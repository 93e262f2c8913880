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

/// GC inside `serve` (`--gc-every`) over HTTP: an orphan blob a client just
/// pushed survives the passes that run inside the delay, then goes; a
/// tagged image stays throughout (DESIGN §7's delay contract).
#[rtokio::test(crate = "rtokio", flavor = "multi_thread", worker_threads = 2)]
async fn gc_inside_serve_keeps_the_young_and_takes_the_old() {
    let reg = Registry::start().await;
    let c = reg.client();
    let (digest, _, layer, _) = push_image(&c, "gc", "v1", "kept").await;
    let orphan = c.push_blob("gc", b"pushed, never referenced").await;
    let delay = std::time::Duration::from_secs(1);
    let every = std::time::Duration::from_millis(50);
    let gc =
        server::periodic_gc::spawn(reg.store.clone(), every, engine::gc::GcOptions::new(delay));
    rtokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let blob = |d: &Digest| format!("/v2/gc/blobs/{d}");
    assert_eq!(
        c.head(&blob(&orphan)).await.status,
        StatusCode::OK,
        "collected inside the delay"
    );
    let mut gone = false;
    for _ in 0..100 {
        rtokio::time::sleep(std::time::Duration::from_millis(100)).await;
        if c.head(&blob(&orphan)).await.status == StatusCode::NOT_FOUND {
            gone = true;
            break;
        }
    }
    gc.abort();
    assert!(gone, "the orphan was never collected");
    assert_eq!(
        c.get(&format!("/v2/gc/manifests/{digest}")).await.status,
        StatusCode::OK
    );
    assert_eq!(c.head(&blob(&layer)).await.status, StatusCode::OK);
}
