//! Several `ocistore serve` processes over one root, sharing their
//! metadata and locks in PostgreSQL (DESIGN §15, invariant 13): the zot
//! #4337 workload that loses tags in the unsafe mode
//! (`unsafe_shared_root.rs`) loses none here.
//!
//! Each workload runs over the object backend (a directory) and over S3
//! (one moto bucket): the same body, the backend a parameter.
//!
//! PostgreSQL comes from Debian's `postgresql` package; each test starts
//! its own cluster (testkit::Postgres) and fails, saying how to install
//! it, when it is missing; moto likewise (testkit::moto).

mod instances;

use std::path::Path;

use instances::{
    CLIENTS, INSTANCES, Instance, Root, TAGS_PER_CLIENT, init_root, ocistore, push_tagged,
    push_tags_concurrently,
};
use testkit::Postgres;
use testkit::moto::Moto;

/// A backend: the root it makes at a temporary directory.
type Backend = fn(&Path) -> Root;

const OBJECT: Backend = Root::object;
const S3: Backend = |dir| Root::s3(Moto::shared(), dir);

/// The root's options that make it shared through `pg`.
fn shared(pg: &Postgres) -> Vec<String> {
    vec!["--meta-postgres".into(), pg.conninfo()]
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// A root shared through its own PostgreSQL, and [`INSTANCES`] `serve`
/// processes over it (fields drop in order: the instances first).
struct SharedRoot {
    instances: Vec<Instance>,
    root: Root,
    args: Vec<String>,
    _dir: tempfile::TempDir,
    _pg: Postgres,
}

impl SharedRoot {
    fn start(backend: Backend) -> SharedRoot {
        let pg = Postgres::start();
        let args = shared(&pg);
        let (dir, root) = init_root(backend, &strs(&args));
        let instances = (0..INSTANCES)
            .map(|_| Instance::start(&root, &strs(&args), &[]))
            .collect();
        SharedRoot {
            instances,
            root,
            args,
            _dir: dir,
            _pg: pg,
        }
    }

    /// Stops the instances, then judges the root with the CLI's fsck over
    /// the same shared metadata (it fails the test on a finding).
    fn stop_and_fsck(mut self) {
        self.instances.clear();
        let fsck = ocistore(&self.root, &[strs(&self.args), vec!["fsck"]].concat());
        println!("{fsck}");
    }
}

#[rtokio::test(crate = "rtokio", flavor = "multi_thread", worker_threads = 4)]
async fn shared_instances_lose_no_acknowledged_tag() {
    no_acknowledged_tag_lost(OBJECT).await;
}

#[rtokio::test(crate = "rtokio", flavor = "multi_thread", worker_threads = 4)]
async fn shared_instances_on_s3_lose_no_acknowledged_tag() {
    no_acknowledged_tag_lost(S3).await;
}

/// The zot #4337 workload through [`INSTANCES`] instances sharing
/// PostgreSQL: every tag acknowledged, none lost, fsck clean.
async fn no_acknowledged_tag_lost(backend: Backend) {
    let shared = SharedRoot::start(backend);
    let addrs: Vec<_> = shared.instances.iter().map(|i| i.addr).collect();
    let outcome = push_tags_concurrently(&addrs, "shared/app", CLIENTS, TAGS_PER_CLIENT).await;
    println!(
        "{INSTANCES} shared instances, {CLIENTS} clients x {TAGS_PER_CLIENT} tags: \
         {} acknowledged, {} refused, {} acknowledged tags lost",
        outcome.acknowledged,
        outcome.refused.len(),
        outcome.lost.len()
    );
    assert_eq!(
        outcome.acknowledged,
        CLIENTS * TAGS_PER_CLIENT,
        "refused: {:?}",
        outcome.refused
    );
    assert!(outcome.lost.is_empty(), "lost: {:?}", outcome.lost);
    shared.stop_and_fsck();
}

/// What a client last made of one tag, as far as it knows.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expect {
    /// Pushed (or moved) there, acknowledged: must resolve to this digest.
    Manifest(engine::Digest),
    /// Deleted, acknowledged: must be gone.
    Deleted,
    /// The last request got no answer (its instance was killed): either.
    Unknown,
}

type Expectations =
    std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<(String, String), Expect>>>;

/// One client's rounds: push an image under one of its tags (a new tag, or
/// a move of an old one), and every fourth round delete one. Each tag is
/// `Unknown` while its request is in flight, then what was acknowledged.
async fn client_rounds(
    client: e2e::Client,
    c: usize,
    repo: String,
    rounds: usize,
    expect: Expectations,
) {
    let key = |tag: &str| (repo.clone(), tag.to_owned());
    for round in 0..rounds {
        let tag = format!("c{c}-t{}", round % 3);
        expect.lock().unwrap().insert(key(&tag), Expect::Unknown);
        let (r, digest) = push_tagged(&client, &repo, &tag, (c * 1000 + round) as u64).await;
        assert_eq!(r.status.as_u16(), 201, "push {repo}:{tag}: {r:?}");
        expect
            .lock()
            .unwrap()
            .insert(key(&tag), Expect::Manifest(digest));
        if round % 4 == 3 {
            let gone = format!("c{c}-t{}", (round + 1) % 3);
            if expect
                .lock()
                .unwrap()
                .get(&key(&gone))
                .is_some_and(|e| matches!(e, Expect::Manifest(_)))
            {
                expect.lock().unwrap().insert(key(&gone), Expect::Unknown);
                let r = client.delete(&format!("/v2/{repo}/manifests/{gone}")).await;
                assert_eq!(r.status.as_u16(), 202, "delete {repo}:{gone}: {r:?}");
                expect.lock().unwrap().insert(key(&gone), Expect::Deleted);
            }
        }
    }
}

/// Advisory locks `instance`'s sessions hold right now (application_name).
fn advisory_locks_held(pg: &Postgres, instance: &str) -> usize {
    pg.psql(&format!(
        "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE l.locktype = 'advisory' AND l.granted AND a.application_name = '{instance}'"
    ))
    .trim()
    .parse()
    .unwrap()
}

#[rtokio::test(crate = "rtokio", flavor = "multi_thread", worker_threads = 4)]
async fn pushes_moves_deletes_gc_and_a_killed_instance_lose_nothing() {
    pushes_moves_deletes_gc_and_a_kill(OBJECT).await;
}

#[rtokio::test(crate = "rtokio", flavor = "multi_thread", worker_threads = 4)]
async fn on_s3_pushes_moves_deletes_gc_and_a_killed_instance_lose_nothing() {
    pushes_moves_deletes_gc_and_a_kill(S3).await;
}

/// Three instances over one root and one PostgreSQL: clients push, move
/// and delete tags in two shared repositories through all of them, one
/// instance collects garbage every second (delay 2 s, so untagged
/// manifests and their blobs go while the others push), and one instance
/// is SIGKILLed while it holds locks. Afterwards every acknowledged tag
/// resolves to its manifest, every blob of those manifests is readable,
/// every acknowledged delete stayed deleted, and fsck is clean.
async fn pushes_moves_deletes_gc_and_a_kill(backend: Backend) {
    const CLIENTS: usize = 9;
    const ROUNDS: usize = 12;
    let pg = Postgres::start();
    let conninfo = |name: &str| format!("{} application_name={name}", pg.conninfo());
    let (_dir, root) = init_root(backend, &["--meta-postgres", &conninfo("init")]);
    let gc = ["--gc-every", "1s", "--gc-delay", "2s"];
    let mut instances: Vec<Instance> = (0..3)
        .map(|i| {
            let serve: &[&str] = if i == 0 { &gc } else { &[] };
            Instance::start(
                &root,
                &["--meta-postgres", &conninfo(&format!("inst{i}"))],
                serve,
            )
        })
        .collect();
    let expect: Expectations = Default::default();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let client = e2e::Client::new(instances[c % 3].addr);
        let repo = format!("team/r{}", c % 2);
        tasks.push(rtokio::spawn(client_rounds(
            client,
            c,
            repo,
            ROUNDS,
            expect.clone(),
        )));
    }

    // Once instance 2 has acknowledged a few pushes, kill it the moment it
    // is seen holding locks.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let acknowledged_by_2 = || {
        expect
            .lock()
            .unwrap()
            .iter()
            .filter(|((_, tag), e)| {
                let c: usize = tag[1..].split('-').next().unwrap().parse().unwrap();
                c % 3 == 2 && matches!(e, Expect::Manifest(_))
            })
            .count()
    };
    while acknowledged_by_2() < 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "instance 2 acknowledged nothing"
        );
        rtokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let held_at_kill = loop {
        let held = advisory_locks_held(&pg, "inst2");
        if held > 0 {
            instances[2].kill();
            break held;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "instance 2 never held a lock"
        );
    };
    println!("instance 2 SIGKILLed holding {held_at_kill} advisory lock(s)");

    let mut completed = 0;
    for (c, task) in tasks.into_iter().enumerate() {
        match task.await {
            Ok(()) => completed += 1,
            // Only the killed instance's clients may fail, on a request
            // that got no answer.
            Err(e) => assert_eq!(c % 3, 2, "client {c} of a live instance failed: {e}"),
        }
    }
    assert!(
        completed >= CLIENTS * 2 / 3,
        "{completed} clients completed"
    );
    // Let the collector run past the delay once more after the last push:
    // the untagged manifests of the last moves become garbage, and what is
    // checked below must survive that pass too.
    rtokio::time::sleep(std::time::Duration::from_millis(3500)).await;
    let reader = e2e::Client::new(instances[1].addr);
    let expect = expect.lock().unwrap().clone();
    let (mut present, mut deleted, mut unknown) = (0, 0, 0);
    for ((repo, tag), state) in &expect {
        let r = reader.get(&format!("/v2/{repo}/manifests/{tag}")).await;
        match state {
            Expect::Manifest(d) => {
                assert_eq!(
                    r.status.as_u16(),
                    200,
                    "acknowledged {repo}:{tag} lost: {r:?}"
                );
                assert_eq!(
                    r.header("docker-content-digest"),
                    Some(&*d.to_string()),
                    "{repo}:{tag}"
                );
                let m = r.json();
                let blobs = std::iter::once(&m["config"]).chain(m["layers"].as_array().unwrap());
                for b in blobs {
                    let bd = b["digest"].as_str().unwrap();
                    let got = reader.get(&format!("/v2/{repo}/blobs/{bd}")).await;
                    assert_eq!(
                        got.status.as_u16(),
                        200,
                        "{repo}:{tag} references {bd}, deleted: {got:?}"
                    );
                    assert_eq!(engine::Digest::sha256(&got.body).to_string(), bd);
                }
                present += 1;
            }
            Expect::Deleted => {
                assert_eq!(
                    r.status.as_u16(),
                    404,
                    "deleted {repo}:{tag} is back: {r:?}"
                );
                deleted += 1;
            }
            Expect::Unknown => unknown += 1,
        }
    }
    let gc_log: Vec<String> = instances[0]
        .drain_log()
        .into_iter()
        .filter(|l| l.contains("gc"))
        .collect();
    let removed: usize = gc_log
        .iter()
        .filter_map(|l| {
            l.split("gc: ")
                .nth(1)?
                .split(' ')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .sum();
    println!(
        "{present} tags present, {deleted} deleted, {unknown} unknown (killed mid-request); \
         {} gc passes removed {removed} manifests",
        gc_log.len()
    );
    assert!(
        !gc_log.iter().any(|l| l.contains("failed")),
        "a gc pass failed: {gc_log:?}"
    );
    assert!(
        removed > 0,
        "gc removed nothing while the others pushed: {gc_log:?}"
    );
    drop(instances);
    ocistore(&root, &["--meta-postgres", &conninfo("fsck"), "fsck"]);
}

#[rtokio::test(crate = "rtokio", flavor = "multi_thread", worker_threads = 4)]
async fn a_chunked_upload_round_robined_across_instances() {
    chunked_upload_round_robin(OBJECT).await;
}

#[rtokio::test(crate = "rtokio", flavor = "multi_thread", worker_threads = 4)]
async fn on_s3_a_chunked_upload_round_robined_across_instances() {
    chunked_upload_round_robin(S3).await;
}

/// A load balancer with no session affinity: one upload's POST, PATCHes,
/// status and PUT each land on the next instance. The session is its
/// record in PostgreSQL, so each instance carries on where the last left
/// off (one of them holding a writer the others have moved past), and the
/// blob pulled through any instance is the bytes sent.
async fn chunked_upload_round_robin(backend: Backend) {
    let shared = SharedRoot::start(backend);
    let clients: Vec<e2e::Client> = shared
        .instances
        .iter()
        .map(|i| e2e::Client::new(i.addr))
        .collect();
    let at = |n: usize| &clients[n % clients.len()];
    let repo = "lb/app";
    let data = testkit::pattern(42, 7 * 4096);
    let location = at(0).start_session(repo).await;
    for (n, chunk) in data.chunks(4096).enumerate() {
        let start = n * 4096;
        let range = format!("{start}-{}", start + chunk.len() - 1);
        let r = at(n + 1).patch_chunk(&location, &range, chunk).await;
        assert_eq!(r.status.as_u16(), 202, "chunk {n} ({range}): {r:?}");
        let status = at(n + 2).get(&location).await;
        assert_eq!(
            status.status.as_u16(),
            204,
            "status after chunk {n}: {status:?}"
        );
        assert_eq!(
            status.header("range"),
            Some(format!("0-{}", start + chunk.len() - 1).as_str()),
            "status after chunk {n}"
        );
    }
    let digest = engine::Digest::sha256(&data);
    let r = at(1).finish_session(&location, &digest).await;
    assert_eq!(r.status.as_u16(), 201, "PUT: {r:?}");
    for client in &clients {
        let pulled = client.get(&format!("/v2/{repo}/blobs/{digest}")).await;
        assert_eq!(pulled.status.as_u16(), 200, "{pulled:?}");
        assert!(pulled.body[..] == data[..], "pulled other bytes");
    }
    shared.stop_and_fsck();
}
