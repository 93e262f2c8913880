//! The `s3` driver against a real S3 API: `moto_server` on loopback.
//! The driver conformance suite unchanged (compare-and-swap by ETag
//! included), then what only a real server can show: conditional creates
//! racing, multipart writes and what a dead writer leaves.

use std::sync::Arc;

use bytes::Bytes;
use engine::driver::{BlobWriter, Driver, DriverPath, PutMode};
use ocistore_s3::{PART_SIZE, S3Config, S3Driver};
use testkit::moto::Moto;
use testkit::pattern;

fn p(s: &str) -> DriverPath {
    DriverPath::new(s).unwrap()
}

fn driver(moto: &Moto, hint: &str) -> S3Driver {
    S3Driver::open(S3Config::for_test_server(
        moto.endpoint(),
        moto.bucket(hint),
    ))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite() {
    let moto = Moto::shared();
    testkit::driver_conformance::run(&driver(moto, "conformance")).await;
    // Below a prefix too: keys outside it are never seen.
    let bucket = moto.bucket("prefixed");
    let outside =
        S3Driver::open(S3Config::for_test_server(moto.endpoint(), bucket.clone())).unwrap();
    outside
        .put(
            &p("elsewhere/x"),
            Bytes::from_static(b"x"),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
    let prefixed = S3Driver::open(S3Config {
        prefix: Some("store/root".into()),
        ..S3Config::for_test_server(moto.endpoint(), bucket)
    })
    .unwrap();
    testkit::driver_conformance::run(&prefixed).await;
}

/// Two conditional creates of one key at once: exactly one wins, and the
/// object holds the winner's bytes whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_conditional_creates_one_wins() {
    let d = Arc::new(driver(Moto::shared(), "race"));
    for round in 0..10u64 {
        let key = p(&format!("race/{round}"));
        let attempts = (0..2u64).map(|i| {
            let (d, key) = (d.clone(), key.clone());
            tokio::spawn(async move {
                let data = pattern(round * 10 + i, 1000 + i as usize);
                (d.put(&key, data.clone(), PutMode::IfAbsent).await, data)
            })
        });
        let mut results = Vec::new();
        for a in attempts {
            results.push(a.await.unwrap());
        }
        let winners: Vec<_> = results.iter().filter(|(r, _)| r.is_ok()).collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        for (r, _) in &results {
            if let Err(e) = r {
                assert!(e.is_already_exists(), "{e}");
            }
        }
        assert_eq!(d.get(&key, None).await.unwrap(), winners[0].1);
    }
}

async fn stream(
    d: &S3Driver,
    key: &DriverPath,
    mode: PutMode,
    data: &Bytes,
) -> Box<dyn BlobWriter> {
    let mut w = d.writer(key, mode).await.unwrap();
    for chunk in data.chunks(1 << 20) {
        w.write(data.slice_ref(chunk)).await.unwrap();
    }
    w
}

/// Objects past one part go up as multipart uploads; a conditional one
/// still loses whole to an object that appeared meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_writes_keep_the_put_modes() {
    let moto = Moto::shared();
    let d = driver(moto, "multipart");
    let big = pattern(7, 2 * PART_SIZE + 12_345);
    let key = p("big/layer");
    let w = stream(&d, &key, PutMode::IfAbsent, &big).await;
    assert!(d.list(None).await.unwrap().is_empty(), "parts are listed");
    w.commit().await.unwrap();
    assert_eq!(d.stat(&key).await.unwrap().size, big.len() as u64);
    assert!(d.get(&key, None).await.unwrap() == big);
    assert!(
        d.get(&key, Some(PART_SIZE as u64 - 3..PART_SIZE as u64 + 3))
            .await
            .unwrap()[..]
            == big[PART_SIZE - 3..PART_SIZE + 3]
    );

    let other = pattern(8, PART_SIZE + 1);
    let w = stream(&d, &key, PutMode::IfAbsent, &other).await;
    let e = w.commit().await.unwrap_err();
    assert!(e.is_already_exists(), "{e}");
    assert!(
        d.get(&key, None).await.unwrap() == big,
        "a refused write changed the bytes"
    );

    let w = stream(&d, &key, PutMode::Overwrite, &other).await;
    w.commit().await.unwrap();
    assert!(d.get(&key, None).await.unwrap() == other);
    let w = stream(&d, &p("big/aborted"), PutMode::Overwrite, &other).await;
    w.abort().await.unwrap();
    assert!(d.stat(&p("big/aborted")).await.unwrap_err().is_not_found());
    assert_eq!(d.list(None).await.unwrap(), vec![key.clone()]);
    assert!(d.leftovers(None).await.unwrap().is_empty());
    // Nothing staged and no upload in progress is left, the refused
    // conditional write's included.
    assert_eq!(
        bucket_state(&d).await,
        (vec!["big/layer".to_owned()], Vec::new())
    );
    d.delete(&key).await.unwrap();
}

/// A multipart writer that dies leaves its record: listed as a leftover
/// (never while it is alive), and removing it aborts the upload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_multipart_writer_is_a_leftover_until_removed() {
    let d = driver(Moto::shared(), "leftover");
    let data = pattern(9, PART_SIZE + 10);
    let live = stream(&d, &p("a/live"), PutMode::IfAbsent, &data).await;
    assert!(
        d.leftovers(None).await.unwrap().is_empty(),
        "a live writer is listed"
    );
    drop(live);
    let dead = stream(&d, &p("b/dead"), PutMode::Overwrite, &data).await;
    drop(dead);
    let leftovers = d.leftovers(None).await.unwrap();
    assert_eq!(leftovers.len(), 2, "{leftovers:?}");
    assert!(
        leftovers.iter().all(|l| l.size == PART_SIZE as u64),
        "{leftovers:?}"
    );
    assert_eq!(d.leftovers(Some(&p("b"))).await.unwrap().len(), 1);
    assert!(d.list(None).await.unwrap().is_empty());
    assert!(
        d.list_dir(None).await.unwrap().dirs.is_empty(),
        "records are listed"
    );
    for l in &leftovers {
        d.remove_leftover(l).await.unwrap();
        d.remove_leftover(l).await.unwrap();
    }
    assert!(d.leftovers(None).await.unwrap().is_empty());
}

/// Every key in the driver's bucket, its own reserved ones included, and
/// the keys with a multipart upload in progress.
async fn bucket_state(d: &S3Driver) -> (Vec<String>, Vec<String>) {
    (
        d.all_keys().await.unwrap(),
        d.multipart_uploads().await.unwrap(),
    )
}

/// A resumable write past several parts, checkpointed after each 6 MiB
/// chunk (so checkpoints fall inside parts): a resume reads every staged
/// byte back and commits the whole object; the staged objects are the
/// parts plus the tail pieces of the last two checkpoints; a checkpoint
/// older than those is gone; nothing is left after the commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumable_write_across_parts() {
    let d = driver(Moto::shared(), "resume");
    let key = p("up/blob");
    let chunks: Vec<Bytes> = (0..3).map(|i| pattern(20 + i, 6 << 20)).collect();
    let mut w = d.writer(&key, PutMode::IfAbsent).await.unwrap();
    let mut checkpoints = Vec::new();
    for c in &chunks {
        w.write(c.clone()).await.unwrap();
        checkpoints.push(w.checkpoint().await.unwrap());
    }
    let last = checkpoints.last().unwrap().clone();
    assert_eq!(last.written, 18 << 20);
    assert_eq!(last.staged.len(), 1, "{last:?}");
    drop(w);
    let (keys, uploads) = bucket_state(&d).await;
    let staged: Vec<&str> = keys.iter().filter_map(|k| k.rsplit('/').next()).collect();
    // tail-0 (the first 6 MiB) was superseded by part-0 before the
    // previous checkpoint: gone; tail at 8 MiB is the previous one's.
    assert_eq!(
        staged,
        [
            "part-00000",
            "part-00001",
            "record",
            "tail-000000008388608",
            "tail-000000016777216"
        ],
        "{keys:?}"
    );
    assert!(uploads.is_empty(), "{uploads:?}");
    // Listed as a dead writer's (it is one, to the driver), whole.
    let leftovers = d.leftovers(None).await.unwrap();
    assert_eq!(leftovers.len(), 1);
    assert_eq!(leftovers[0].path, last.staged[0]);
    assert_eq!(leftovers[0].size, (16 + 4 + 2) << 20);

    let e = d
        .resume_writer(&key, PutMode::IfAbsent, &checkpoints[0])
        .await
        .err()
        .expect("a checkpoint two behind resumed");
    assert!(e.is_not_found(), "{e}");

    let mut w = d
        .resume_writer(&key, PutMode::IfAbsent, &last)
        .await
        .unwrap();
    assert!(
        d.leftovers(None).await.unwrap().is_empty(),
        "a live writer is listed"
    );
    let mut whole: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
    let mut read = Vec::new();
    let mut at = 0;
    while at < last.written {
        let end = (at + (3 << 20)).min(last.written);
        read.extend_from_slice(&w.read_staged(at..end).await.unwrap());
        at = end;
    }
    assert!(read == whole, "staged bytes read back differ");
    let tail = pattern(23, 1 << 20);
    w.write(tail.clone()).await.unwrap();
    w.checkpoint().await.unwrap();
    w.commit().await.unwrap();
    whole.extend_from_slice(&tail);
    assert!(d.get(&key, None).await.unwrap()[..] == whole[..]);
    assert_eq!(
        bucket_state(&d).await,
        (vec!["up/blob".to_owned()], Vec::new()),
        "staged objects or uploads left"
    );
    let gone = d.resume_writer(&key, PutMode::IfAbsent, &last).await;
    assert!(gone.is_err_and(|e| e.is_not_found()));
    d.delete(&key).await.unwrap();
}

/// A write whose commit died after it began the multipart upload: the
/// record says so, and removing the leftover aborts the upload in
/// progress on the target key, even one the record never saw (created
/// just before the crash).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_that_died_leaves_no_upload_behind() {
    use object_store::multipart::MultipartStore;
    let moto = Moto::shared();
    let bucket = moto.bucket("deadcommit");
    let d = S3Driver::open(S3Config::for_test_server(moto.endpoint(), bucket.clone())).unwrap();
    let key = p("x/layer");
    let data = pattern(30, 2 * PART_SIZE + 5);
    let w = stream(&d, &key, PutMode::IfAbsent, &data).await;
    // Take a part away behind the writer's back: the commit fails after
    // it began, as a crash would leave it (the upload is aborted by the
    // failing commit itself, so the crash's upload is made by hand).
    let raw = object_store::aws::AmazonS3Builder::new()
        .with_bucket_name(&bucket)
        .with_endpoint(moto.endpoint())
        .with_allow_http(true)
        .with_region("us-east-1")
        .with_access_key_id("testing")
        .with_secret_access_key("testing")
        .build()
        .unwrap();
    let (keys, _) = bucket_state(&d).await;
    let part1 = keys.iter().find(|k| k.ends_with("part-00001")).unwrap();
    object_store::ObjectStoreExt::delete(&raw, &object_store::path::Path::from(part1.as_str()))
        .await
        .unwrap();
    assert!(w.commit().await.is_err(), "a commit with a part missing");
    assert!(d.stat(&key).await.unwrap_err().is_not_found());
    raw.create_multipart(&object_store::path::Path::from("x/layer"))
        .await
        .unwrap();
    assert_eq!(bucket_state(&d).await.1, vec!["x/layer".to_owned()]);

    let leftovers = d.leftovers(Some(&p("x"))).await.unwrap();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");
    assert!(d.leftovers(Some(&p("y"))).await.unwrap().is_empty());
    d.remove_leftover(&leftovers[0]).await.unwrap();
    assert_eq!(bucket_state(&d).await, (Vec::new(), Vec::new()));
}
