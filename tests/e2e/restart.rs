//! Push: resume after a restart (DESIGN §13). A chunked upload whose
//! server is shut down after an acknowledged PATCH carries on against a
//! new server on the same root: GET on the session gives its `Range` and
//! `Location`, the rest is PATCHed, the closing PUT's digest is verified,
//! and the blob comes back byte-identical. On both layouts, and on the
//! fs, object and S3 (moto: the same bucket after the restart) backends.

use e2e::{Backend, Registry};
use engine::{Digest, LayoutKind, LockPolicy};
use hyper::StatusCode;

async fn resume_after_restart(backend: Backend, layout: LayoutKind, policy: LockPolicy) {
    let label = format!("{backend:?}/{layout}/{policy}");
    let reg = Registry::start_with(backend, layout, policy).await;
    let c = reg.client();
    let repo = "restart/app";
    let (first, rest) = (
        testkit::pattern(1, 1_500_000).to_vec(),
        testkit::pattern(2, 700_001).to_vec(),
    );
    let whole = [first.clone(), rest.clone()].concat();
    let digest = Digest::sha256(&whole);

    let location = c.start_session(repo).await;
    let first_range = format!("0-{}", first.len() - 1);
    let r = c.patch_chunk(&location, &first_range, &first).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{label}: {r:?}");
    assert_eq!(r.header("range"), Some(first_range.as_str()), "{label}");

    let reg = reg.restart().await;
    let c = reg.client();
    let r = c.get(&location).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{label}: {r:?}");
    assert_eq!(r.header("range"), Some(first_range.as_str()), "{label}");
    assert_eq!(r.header("location"), Some(location.as_str()), "{label}");

    // A resent first chunk is out of order now: 416 with the same Range.
    let r = c.patch_chunk(&location, &first_range, &first).await;
    assert_eq!(
        r.status,
        StatusCode::RANGE_NOT_SATISFIABLE,
        "{label}: {r:?}"
    );
    assert_eq!(r.header("range"), Some(first_range.as_str()), "{label}");

    let rest_range = format!("{}-{}", first.len(), whole.len() - 1);
    let r = c.patch_chunk(&location, &rest_range, &rest).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{label}: {r:?}");
    let whole_range = format!("0-{}", whole.len() - 1);
    assert_eq!(r.header("range"), Some(whole_range.as_str()), "{label}");

    // The closing PUT verifies the digest of everything, both servers' parts.
    let wrong = Digest::sha256(&first);
    let r = c.finish_session(&location, &wrong).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{label}: {r:?}");
    assert_eq!(r.error_code().as_deref(), Some("DIGEST_INVALID"), "{label}");
    // A refused digest ends the session; the client starts over, the
    // same way, and this time through a restart before the PUT.
    let location = c.start_session(repo).await;
    let r = c.patch_chunk(&location, &whole_range, &whole).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{label}: {r:?}");
    let reg = reg.restart().await;
    let c = reg.client();
    let r = c.finish_session(&location, &digest).await;
    assert_eq!(r.status, StatusCode::CREATED, "{label}: {r:?}");
    assert_eq!(
        r.header("docker-content-digest"),
        Some(digest.to_string().as_str()),
        "{label}"
    );

    let r = c.get(&format!("/v2/{repo}/blobs/{digest}")).await;
    assert_eq!(r.status, StatusCode::OK, "{label}");
    assert!(r.body[..] == whole[..], "{label}: blob differs");
    // Finished sessions are gone, through restarts too.
    assert_eq!(
        c.get(&location).await.status,
        StatusCode::NOT_FOUND,
        "{label}"
    );
    let reg = reg.restart().await;
    assert_eq!(
        reg.client().get(&location).await.status,
        StatusCode::NOT_FOUND,
        "{label}"
    );
}

#[rtokio::test(crate = "rtokio", flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_restart_blobstore() {
    resume_after_restart(Backend::Fs, LayoutKind::Blobstore, LockPolicy::Striped).await;
}

#[rtokio::test(crate = "rtokio", flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_restart_legacy() {
    resume_after_restart(Backend::Fs, LayoutKind::Legacy, LockPolicy::Global).await;
}

#[rtokio::test(crate = "rtokio", flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_restart_object_backend() {
    resume_after_restart(Backend::Object, LayoutKind::Blobstore, LockPolicy::Split).await;
}

#[rtokio::test(crate = "rtokio", flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_restart_s3_backend() {
    resume_after_restart(Backend::S3, LayoutKind::Blobstore, LockPolicy::Striped).await;
}
