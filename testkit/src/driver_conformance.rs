//! The driver conformance suite: one list of behaviours, run against every
//! driver (CNCF distribution's `testsuites`, object_store's `integration`).
//!
//! Each behaviour is a `pub async fn` over `&dyn Driver` so a new backend
//! (S3 through `object_store`, later) gets the whole contract by calling
//! [`run`] on an empty instance. Capability gaps come from
//! [`Driver::capabilities`](engine::driver::Driver::capabilities), never from the backend's name. The suite ends
//! by checking it left nothing behind.

use bytes::Bytes;

use engine::driver::{Checkpoint, Driver, DriverError, DriverPath, ObjectVersion, PutMode};

use crate::pattern;

fn p(s: &str) -> DriverPath {
    DriverPath::new(s).expect("test path is valid")
}

/// Runs every behaviour against `driver`, which must start empty.
pub async fn run(driver: &dyn Driver) {
    starts_empty(driver).await;
    put_get_round_trip(driver).await;
    empty_object_is_real(driver).await;
    ranged_reads(driver).await;
    put_modes(driver).await;
    streaming_writer_is_invisible_until_commit(driver).await;
    competing_conditional_writers(driver).await;
    large_streamed_object(driver).await;
    listing(driver).await;
    delete_is_idempotent(driver).await;
    copy(driver).await;
    hard_links(driver).await;
    rename(driver).await;
    sync_dir_accepts_any_directory(driver).await;
    resumable_writes(driver).await;
    compare_and_swap(driver).await;
    leaves_nothing_behind(driver).await;
}

pub async fn starts_empty(d: &dyn Driver) {
    assert_eq!(
        d.list(None).await.unwrap(),
        Vec::<DriverPath>::new(),
        "{} not empty",
        d.name()
    );
    assert!(d.stat(&p("nope")).await.unwrap_err().is_not_found());
    assert!(
        d.get(&p("no/such/thing"), None)
            .await
            .unwrap_err()
            .is_not_found()
    );
}

pub async fn put_get_round_trip(d: &dyn Driver) {
    let data = pattern(1, 10_000);
    d.put(&p("rt/a"), data.clone(), PutMode::Overwrite)
        .await
        .unwrap();
    assert_eq!(d.get(&p("rt/a"), None).await.unwrap(), data);
    let meta = d.stat(&p("rt/a")).await.unwrap();
    assert_eq!(meta.size, 10_000);
    assert_eq!(meta.links.is_some(), d.capabilities().hard_links);
    // A directory is not an object.
    assert!(d.stat(&p("rt")).await.unwrap_err().is_not_found());
    assert!(d.get(&p("rt"), None).await.unwrap_err().is_not_found());
    d.delete(&p("rt/a")).await.unwrap();
}

pub async fn empty_object_is_real(d: &dyn Driver) {
    d.put(&p("empty"), Bytes::new(), PutMode::IfAbsent)
        .await
        .unwrap();
    assert_eq!(d.stat(&p("empty")).await.unwrap().size, 0);
    assert_eq!(d.get(&p("empty"), None).await.unwrap(), Bytes::new());
    assert_eq!(d.list(None).await.unwrap(), vec![p("empty")]);
    d.delete(&p("empty")).await.unwrap();
}

pub async fn ranged_reads(d: &dyn Driver) {
    let data = pattern(2, 1000);
    d.put(&p("range"), data.clone(), PutMode::Overwrite)
        .await
        .unwrap();
    assert_eq!(
        d.get(&p("range"), Some(10..20)).await.unwrap(),
        data.slice(10..20)
    );
    assert_eq!(d.get(&p("range"), Some(0..1000)).await.unwrap(), data);
    assert_eq!(
        d.get(&p("range"), Some(1000..1000)).await.unwrap(),
        Bytes::new()
    );
    #[allow(clippy::reversed_empty_ranges)] // a reversed range is exactly the hostile input
    let hostile = [999..1001, 1001..1002, 5..4];
    for bad in hostile {
        let err = d.get(&p("range"), Some(bad.clone())).await.unwrap_err();
        assert!(
            matches!(err, DriverError::InvalidRange { size: 1000, .. }),
            "{bad:?}: {err:?}"
        );
    }
    d.delete(&p("range")).await.unwrap();
}

pub async fn put_modes(d: &dyn Driver) {
    let (v1, v2) = (pattern(3, 100), pattern(4, 50));
    d.put(&p("m/x"), v1.clone(), PutMode::IfAbsent)
        .await
        .unwrap();
    let err = d
        .put(&p("m/x"), v2.clone(), PutMode::IfAbsent)
        .await
        .unwrap_err();
    assert!(err.is_already_exists(), "{err:?}");
    assert_eq!(
        d.get(&p("m/x"), None).await.unwrap(),
        v1,
        "a refused put changed the bytes"
    );
    d.put(&p("m/x"), v2.clone(), PutMode::Overwrite)
        .await
        .unwrap();
    assert_eq!(d.get(&p("m/x"), None).await.unwrap(), v2);
    assert_eq!(d.list(Some(&p("m"))).await.unwrap(), vec![p("m/x")]);
    d.delete(&p("m/x")).await.unwrap();
}

pub async fn streaming_writer_is_invisible_until_commit(d: &dyn Driver) {
    let mut w = d.writer(&p("s/obj"), PutMode::IfAbsent).await.unwrap();
    w.write(pattern(5, 100)).await.unwrap();
    w.write(pattern(6, 100)).await.unwrap();
    assert_eq!(w.written(), 200);
    assert!(d.stat(&p("s/obj")).await.unwrap_err().is_not_found());
    assert!(
        d.list(None).await.unwrap().is_empty(),
        "partial upload is listed"
    );
    w.commit().await.unwrap();
    let mut expected = pattern(5, 100).to_vec();
    expected.extend_from_slice(&pattern(6, 100));
    assert_eq!(d.get(&p("s/obj"), None).await.unwrap(), expected);

    let mut w = d.writer(&p("s/aborted"), PutMode::Overwrite).await.unwrap();
    w.write(pattern(7, 10)).await.unwrap();
    w.abort().await.unwrap();
    assert!(d.stat(&p("s/aborted")).await.unwrap_err().is_not_found());

    // A dropped writer behaves like an aborted one.
    let mut w = d.writer(&p("s/dropped"), PutMode::Overwrite).await.unwrap();
    w.write(pattern(8, 10)).await.unwrap();
    drop(w);
    assert_eq!(d.list(None).await.unwrap(), vec![p("s/obj")]);
    d.delete(&p("s/obj")).await.unwrap();
}

pub async fn competing_conditional_writers(d: &dyn Driver) {
    let mut first = d.writer(&p("race"), PutMode::IfAbsent).await.unwrap();
    let mut second = d.writer(&p("race"), PutMode::IfAbsent).await.unwrap();
    first.write(pattern(9, 64)).await.unwrap();
    second.write(pattern(10, 64)).await.unwrap();
    second.commit().await.unwrap();
    assert!(first.commit().await.unwrap_err().is_already_exists());
    assert_eq!(d.get(&p("race"), None).await.unwrap(), pattern(10, 64));
    d.delete(&p("race")).await.unwrap();
}

pub async fn large_streamed_object(d: &dyn Driver) {
    // Crosses the fs driver's pipelining threshold, its direct-I/O staging
    // size and chunk boundaries; the odd chunk size leaves the pipelined
    // part starting, and the object ending, off any block boundary.
    for (chunk, count) in [(1 << 20, 6), (999_999, 14)] {
        let chunks: Vec<Bytes> = (0..count).map(|i| pattern(100 + i, chunk)).collect();
        let mut w = d.writer(&p("big/blob"), PutMode::Overwrite).await.unwrap();
        for c in &chunks {
            w.write(c.clone()).await.unwrap();
        }
        w.commit().await.unwrap();
        let size = (count as usize * chunk) as u64;
        assert_eq!(d.stat(&p("big/blob")).await.unwrap().size, size);
        let all: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        let across = (chunk as u64 - 7)..(3 * chunk as u64 + 11);
        let got = d.get(&p("big/blob"), Some(across.clone())).await.unwrap();
        assert!(
            got[..] == all[across.start as usize..across.end as usize],
            "ranged read across chunks"
        );
        assert!(
            d.get(&p("big/blob"), None).await.unwrap()[..] == all[..],
            "{count} chunks of {chunk} bytes read back whole"
        );
        d.delete(&p("big/blob")).await.unwrap();
    }
}

pub async fn listing(d: &dyn Driver) {
    for key in ["l/a/1", "l/a/2", "l/a/deep/3", "l/ab/4", "l/b", "l/a.b/5"] {
        d.put(&p(key), Bytes::from_static(b"x"), PutMode::Overwrite)
            .await
            .unwrap();
    }
    let all = d.list(Some(&p("l/a"))).await.unwrap();
    assert_eq!(
        all,
        vec![p("l/a/1"), p("l/a/2"), p("l/a/deep/3")],
        "prefix is by component"
    );
    let root = d.list_dir(Some(&p("l"))).await.unwrap();
    assert_eq!(root.dirs, ["a", "a.b", "ab"]);
    assert_eq!(root.files, ["b"]);
    let a = d.list_dir(Some(&p("l/a"))).await.unwrap();
    assert_eq!(
        (a.dirs, a.files),
        (
            vec!["deep".to_owned()],
            vec!["1".to_owned(), "2".to_owned()]
        )
    );
    assert!(d.list(Some(&p("l/missing"))).await.unwrap().is_empty());
    assert_eq!(
        d.list_dir(Some(&p("l/missing"))).await.unwrap(),
        Default::default()
    );
    assert!(
        d.list(Some(&p("l/b"))).await.unwrap().is_empty(),
        "an object is not a prefix"
    );
    let top = d.list_dir(None).await.unwrap();
    assert_eq!((top.dirs, top.files), (vec!["l".to_owned()], vec![]));
    for key in all.iter().chain(&[p("l/ab/4"), p("l/b"), p("l/a.b/5")]) {
        d.delete(key).await.unwrap();
    }
    assert_eq!(
        d.list_dir(None).await.unwrap(),
        Default::default(),
        "emptied prefixes vanish"
    );
}

pub async fn delete_is_idempotent(d: &dyn Driver) {
    d.put(&p("del/x"), Bytes::from_static(b"1"), PutMode::Overwrite)
        .await
        .unwrap();
    d.put(&p("del/y"), Bytes::from_static(b"2"), PutMode::Overwrite)
        .await
        .unwrap();
    d.delete(&p("del/x")).await.unwrap();
    d.delete(&p("del/x")).await.unwrap();
    d.delete(&p("never/was")).await.unwrap();
    assert!(d.stat(&p("del/x")).await.unwrap_err().is_not_found());
    assert_eq!(
        d.get(&p("del/y"), None).await.unwrap(),
        Bytes::from_static(b"2")
    );
    // Deleting a "directory" deletes nothing.
    d.delete(&p("del")).await.unwrap();
    assert_eq!(d.list(None).await.unwrap(), vec![p("del/y")]);
    d.delete(&p("del/y")).await.unwrap();
}

pub async fn copy(d: &dyn Driver) {
    let data = pattern(11, 5000);
    d.put(&p("c/src"), data.clone(), PutMode::Overwrite)
        .await
        .unwrap();
    d.copy(&p("c/src"), &p("c2/dst"), PutMode::IfAbsent)
        .await
        .unwrap();
    assert_eq!(d.get(&p("c2/dst"), None).await.unwrap(), data);
    let err = d
        .copy(&p("c/src"), &p("c2/dst"), PutMode::IfAbsent)
        .await
        .unwrap_err();
    assert!(err.is_already_exists(), "{err:?}");
    let err = d
        .copy(&p("c/none"), &p("c2/other"), PutMode::Overwrite)
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    // A copy is independent of its source.
    d.delete(&p("c/src")).await.unwrap();
    assert_eq!(d.get(&p("c2/dst"), None).await.unwrap(), data);
    d.delete(&p("c2/dst")).await.unwrap();
}

pub async fn hard_links(d: &dyn Driver) {
    let data = pattern(12, 300);
    d.put(&p("h/a"), data.clone(), PutMode::Overwrite)
        .await
        .unwrap();
    if !d.capabilities().hard_links {
        let err = d.hard_link(&p("h/a"), &p("h/b")).await.unwrap_err();
        assert!(matches!(err, DriverError::Unsupported { .. }), "{err:?}");
        assert!(d.stat(&p("h/b")).await.unwrap_err().is_not_found());
        d.delete(&p("h/a")).await.unwrap();
        return;
    }
    d.hard_link(&p("h/a"), &p("h2/deep/b")).await.unwrap();
    assert_eq!(d.stat(&p("h/a")).await.unwrap().links, Some(2));
    assert_eq!(d.get(&p("h2/deep/b"), None).await.unwrap(), data);
    let err = d.hard_link(&p("h/a"), &p("h2/deep/b")).await.unwrap_err();
    assert!(err.is_already_exists(), "{err:?}");
    let err = d.hard_link(&p("h/none"), &p("h/c")).await.unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    d.delete(&p("h/a")).await.unwrap();
    assert_eq!(d.stat(&p("h2/deep/b")).await.unwrap().links, Some(1));
    assert_eq!(d.get(&p("h2/deep/b"), None).await.unwrap(), data);
    d.delete(&p("h2/deep/b")).await.unwrap();
}

pub async fn rename(d: &dyn Driver) {
    d.put(&p("r/a"), pattern(13, 10), PutMode::Overwrite)
        .await
        .unwrap();
    if !d.capabilities().rename {
        let err = d.rename(&p("r/a"), &p("r/b")).await.unwrap_err();
        assert!(matches!(err, DriverError::Unsupported { .. }), "{err:?}");
        d.delete(&p("r/a")).await.unwrap();
        return;
    }
    d.put(&p("r2/b"), pattern(14, 10), PutMode::Overwrite)
        .await
        .unwrap();
    d.rename(&p("r/a"), &p("r2/b")).await.unwrap();
    assert_eq!(
        d.get(&p("r2/b"), None).await.unwrap(),
        pattern(13, 10),
        "rename replaces"
    );
    assert!(d.stat(&p("r/a")).await.unwrap_err().is_not_found());
    let err = d.rename(&p("r/a"), &p("r2/c")).await.unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    d.delete(&p("r2/b")).await.unwrap();
}

pub async fn sync_dir_accepts_any_directory(d: &dyn Driver) {
    d.put(&p("sy/a"), Bytes::from_static(b"1"), PutMode::Overwrite)
        .await
        .unwrap();
    d.sync_dir(None).await.unwrap();
    d.sync_dir(Some(&p("sy"))).await.unwrap();
    d.sync_dir(Some(&p("sy/missing"))).await.unwrap();
    d.delete(&p("sy/a")).await.unwrap();
    d.sync_dir(Some(&p("sy"))).await.unwrap();
}

/// A checkpointed write survives its writer: a resume continues at the
/// checkpoint (dropping what was written after it), reads back what is
/// staged, and commits the whole object; a resumed writer's abort leaves
/// nothing to resume. A driver without resumable writes says
/// `Unsupported` to both calls.
pub async fn resumable_writes(d: &dyn Driver) {
    let target = p("rs/obj");
    let mut w = d.writer(&target, PutMode::IfAbsent).await.unwrap();
    w.write(pattern(11, 1000)).await.unwrap();
    let first = match w.checkpoint().await {
        Err(DriverError::Unsupported { .. }) => {
            // Upload sessions survive a restart only on drivers that keep
            // staged bytes; an object store (S3's multipart) always can,
            // so a wrapper that loses the call shows here.
            assert!(
                d.capabilities().hard_links,
                "{}: an object store without resumable writes",
                d.name()
            );
            w.abort().await.unwrap();
            let none = Checkpoint {
                written: 0,
                token: String::new(),
                staged: Vec::new(),
            };
            let resumed = d.resume_writer(&target, PutMode::IfAbsent, &none).await;
            assert!(
                matches!(resumed, Err(DriverError::Unsupported { .. })),
                "{}: checkpoint unsupported, resume_writer is not",
                d.name()
            );
            return;
        }
        other => other.unwrap(),
    };
    assert_eq!(first.written, 1000);
    // Not checkpointed: a resume drops it.
    w.write(pattern(12, 500)).await.unwrap();
    drop(w);
    assert!(d.stat(&target).await.unwrap_err().is_not_found());
    assert!(
        d.list(None).await.unwrap().is_empty(),
        "staged bytes listed"
    );

    let mut w = d
        .resume_writer(&target, PutMode::IfAbsent, &first)
        .await
        .unwrap();
    assert_eq!(w.written(), 1000);
    assert_eq!(w.read_staged(0..1000).await.unwrap(), pattern(11, 1000));
    assert_eq!(
        w.read_staged(990..1000).await.unwrap(),
        pattern(11, 1000).slice(990..)
    );
    w.write(pattern(13, 300)).await.unwrap();
    let second = w.checkpoint().await.unwrap();
    assert_eq!(second.written, 1300);
    drop(w);
    let w = d
        .resume_writer(&target, PutMode::IfAbsent, &second)
        .await
        .unwrap();
    w.commit().await.unwrap();
    let mut expected = pattern(11, 1000).to_vec();
    expected.extend_from_slice(&pattern(13, 300));
    assert_eq!(d.get(&target, None).await.unwrap(), expected);
    let gone = d.resume_writer(&target, PutMode::IfAbsent, &second).await;
    assert!(
        gone.is_err_and(|e| e.is_not_found()),
        "{}: a committed write resumed",
        d.name()
    );
    d.delete(&target).await.unwrap();

    let aborted = p("rs/aborted");
    let mut w = d.writer(&aborted, PutMode::Overwrite).await.unwrap();
    w.write(pattern(14, 10)).await.unwrap();
    let staged = w.checkpoint().await.unwrap();
    drop(w);
    // A checkpoint is its own write's: not another target's.
    let elsewhere = d
        .resume_writer(&p("other/obj"), PutMode::Overwrite, &staged)
        .await;
    assert!(elsewhere.is_err(), "{}: resumed elsewhere", d.name());
    let w = d
        .resume_writer(&aborted, PutMode::Overwrite, &staged)
        .await
        .unwrap();
    w.abort().await.unwrap();
    let gone = d.resume_writer(&aborted, PutMode::Overwrite, &staged).await;
    assert!(
        gone.is_err_and(|e| e.is_not_found()),
        "{}: an aborted write resumed",
        d.name()
    );
    assert!(d.stat(&aborted).await.unwrap_err().is_not_found());
}

/// Compare-and-swap (`get_versioned` / `put_if_version`, S3's `If-Match`
/// and `If-None-Match: *`): every refusal is `PreconditionFailed` and
/// changes nothing. A backend without it says `Unsupported` for both calls
/// and writes nothing.
pub async fn compare_and_swap(d: &dyn Driver) {
    let path = p("cas/index.json");
    let refused = |r: Result<ObjectVersion, DriverError>, what: &str| match r {
        Err(e) if e.is_precondition_failed() => {}
        other => panic!("{}: {what}: {other:?}", d.name()),
    };
    let v1 = match d.put_if_version(&path, Bytes::from("one"), None).await {
        Err(DriverError::Unsupported { .. }) => {
            // Several instances need it on every object store (DESIGN §15):
            // a wrapper dropping it (the latency wrapper once did) shows here.
            assert!(
                d.capabilities().hard_links,
                "{}: an object store without compare-and-swap",
                d.name()
            );
            assert!(
                matches!(
                    d.get_versioned(&path).await,
                    Err(DriverError::Unsupported { .. })
                ),
                "{}: put_if_version unsupported, get_versioned not",
                d.name()
            );
            assert!(d.stat(&path).await.unwrap_err().is_not_found());
            return;
        }
        r => r.unwrap(),
    };
    refused(
        d.put_if_version(&path, Bytes::from("x"), None).await,
        "a create over an existing object",
    );
    let v2 = d
        .put_if_version(&path, Bytes::from("two"), Some(&v1))
        .await
        .unwrap();
    refused(
        d.put_if_version(&path, Bytes::from("x"), Some(&v1)).await,
        "a swap expecting a stale version",
    );
    refused(
        d.put_if_version(
            &path,
            Bytes::from("x"),
            Some(&ObjectVersion::from_etag("bogus")),
        )
        .await,
        "a swap expecting a version the object never had",
    );
    let (data, version) = d.get_versioned(&path).await.unwrap();
    assert_eq!((&data[..], &version), (&b"two"[..], &v2), "{}", d.name());
    // A plain overwrite is a new version too: a swap from before it loses.
    d.put(&path, Bytes::from("three"), PutMode::Overwrite)
        .await
        .unwrap();
    refused(
        d.put_if_version(&path, Bytes::from("x"), Some(&v2)).await,
        "a swap expecting the version before an overwrite",
    );
    let (data, v3) = d.get_versioned(&path).await.unwrap();
    assert_eq!(&data[..], b"three", "{}", d.name());
    // Gone: a swap expecting any version is refused, a create works.
    d.delete(&path).await.unwrap();
    assert!(d.get_versioned(&path).await.unwrap_err().is_not_found());
    refused(
        d.put_if_version(&path, Bytes::from("x"), Some(&v3)).await,
        "a swap of a deleted object",
    );
    assert!(d.stat(&path).await.unwrap_err().is_not_found());
    d.put_if_version(&path, Bytes::from("four"), None)
        .await
        .unwrap();
    assert_eq!(d.get(&path, None).await.unwrap(), Bytes::from("four"));
    d.delete(&path).await.unwrap();
}

pub async fn leaves_nothing_behind(d: &dyn Driver) {
    assert_eq!(
        d.list(None).await.unwrap(),
        Vec::<DriverPath>::new(),
        "suite left objects"
    );
    assert_eq!(
        d.list_dir(None).await.unwrap(),
        Default::default(),
        "suite left prefixes"
    );
}
