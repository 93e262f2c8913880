//! Access control (`--htpasswd` + `--access`): 401 with `WWW-Authenticate`
//! for anonymous clients a rule does not cover, 401 for wrong credentials,
//! 403 `DENIED` for users without the right, and nothing written by a
//! refused request.

use e2e::Registry;
use hyper::{Method, StatusCode};

const ALICE: &str = "Basic YWxpY2U6c2VjcmV0"; // alice:secret
const BOB: &str = "Basic Ym9iOmh1bnRlcjI="; // bob:hunter2
const WRONG: &str = "Basic YWxpY2U6d3Jvbmc="; // alice:wrong

async fn guarded() -> Registry {
    let hash = |pw: &str| bcrypt::hash(pw, 4).unwrap();
    let users = format!("alice:{}\nbob:{}\n", hash("secret"), hash("hunter2"));
    let rules = "alice push team/\nbob pull *\n* pull library/\n";
    Registry::start_guarded(server::auth::Access::parse(&users, rules).unwrap()).await
}

#[rtokio::test(crate = "rtokio", flavor = "multi_thread", worker_threads = 2)]
async fn rights_by_user_and_prefix() {
    let reg = guarded().await;
    let c = reg.client();
    let data = b"a layer";
    let digest = engine::Digest::sha256(data);
    let push = |repo: &str, auth: Option<&'static str>| {
        let path = format!("/v2/{repo}/blobs/uploads/?digest={digest}");
        let c = c.clone();
        async move {
            let mut headers = vec![("content-type", "application/octet-stream")];
            headers.extend(auth.map(|a| ("authorization", a)));
            c.send(
                Method::POST,
                &path,
                &headers,
                bytes::Bytes::from_static(data),
            )
            .await
        }
    };
    let get = |path: String, auth: Option<&'static str>| {
        let c = c.clone();
        async move {
            let headers: Vec<(&str, &str)> =
                auth.map(|a| ("authorization", a)).into_iter().collect();
            c.send(Method::GET, &path, &headers, bytes::Bytes::new())
                .await
        }
    };

    // Anonymous: refused with a challenge; nothing is written.
    let r = push("team/app", None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.error_code().as_deref(), Some("UNAUTHORIZED"));
    assert!(
        r.header("www-authenticate")
            .is_some_and(|h| h.starts_with("Basic ")),
        "{r:?}"
    );
    // Wrong password: 401 even where anonymous pulls are allowed.
    assert_eq!(
        push("team/app", Some(WRONG)).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get("/v2/library/x/tags/list".into(), Some(WRONG))
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    assert!(
        reg.store.catalog(None, None).await.unwrap().is_empty(),
        "a refused push wrote"
    );

    // alice pushes under team/ only.
    assert_eq!(
        push("team/app", Some(ALICE)).await.status,
        StatusCode::CREATED
    );
    let r = push("other", Some(ALICE)).await;
    assert_eq!(
        (r.status, r.error_code().as_deref()),
        (StatusCode::FORBIDDEN, Some("DENIED"))
    );
    // bob pulls everything, pushes nothing; the catalog is his.
    let blob = format!("/v2/team/app/blobs/{digest}");
    assert_eq!(get(blob.clone(), Some(BOB)).await.status, StatusCode::OK);
    assert_eq!(
        push("team/app", Some(BOB)).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        get("/v2/_catalog".into(), Some(BOB)).await.status,
        StatusCode::OK
    );
    assert_eq!(
        get("/v2/_catalog".into(), Some(ALICE)).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        get("/v2/_catalog".into(), None).await.status,
        StatusCode::UNAUTHORIZED
    );
    // Anonymous pulls under library/ only.
    assert_eq!(get(blob, None).await.status, StatusCode::UNAUTHORIZED);
    let r = get("/v2/library/x/tags/list".into(), None).await;
    assert_eq!(r.error_code().as_deref(), Some("NAME_UNKNOWN"), "{r:?}");
    // The version check answers anyone a rule covers (here: everyone).
    assert_eq!(get("/v2/".into(), None).await.status, StatusCode::OK);
}
