//! The PostgreSQL lock service between two "instances" (two services on
//! one schema, as two processes would have): exclusion, sharing, and a
//! lost connection that releases its locks and tells its holder.

use std::time::Duration;

use engine::lock::{Intent, LockError, LockPolicy, LockService};
use engine::{Digest, RepoName};
use pgmeta::PgLocks;
use testkit::Postgres;

const SCHEMA: &str = "locks";

fn repo(name: &str) -> RepoName {
    RepoName::parse(name).unwrap()
}

/// `true` if `task` finishes within `wait`.
async fn finishes<T>(task: &mut rtokio::task::JoinHandle<T>, wait: Duration) -> bool {
    rtokio::time::timeout(wait, task).await.is_ok()
}

#[rtokio::test(crate = "rtokio", flavor = "multi_thread", worker_threads = 2)]
async fn plans_exclude_and_share_across_instances() {
    let pg = Postgres::start();
    let a = PgLocks::connect(&pg.conninfo(), SCHEMA).await.unwrap();
    let b = std::sync::Arc::new(PgLocks::connect(&pg.conninfo(), SCHEMA).await.unwrap());
    let policy = LockPolicy::Striped;
    let d = Digest::sha256(b"layer");

    let held = a
        .acquire(&Intent::manifest_put(&repo("app"), &d).plan(policy))
        .await
        .unwrap();
    // Another repository, another digest: not in the way.
    let other = b
        .acquire(&Intent::manifest_put(&repo("other"), &Digest::sha256(b"x")).plan(policy))
        .await
        .unwrap();
    drop(other);
    // The same repository: waits for the holder in the other instance.
    let mut waiter = {
        let b = b.clone();
        rtokio::spawn(async move {
            b.acquire(&Intent::repo_write(&repo("app")).plan(policy))
                .await
                .map(drop)
        })
    };
    assert!(
        !finishes(&mut waiter, Duration::from_millis(300)).await,
        "an exclusive repository lock was granted to two instances"
    );
    drop(held);
    assert!(
        finishes(&mut waiter, Duration::from_secs(10)).await,
        "the lock was not released"
    );

    // Readers of one repository share it across instances.
    let read = Intent::blob_read(&repo("app")).plan(policy);
    let r1 = a.acquire(&read).await.unwrap();
    let r2 = rtokio::time::timeout(Duration::from_secs(10), b.acquire(&read))
        .await
        .expect("a shared lock waited for a shared holder")
        .unwrap();
    drop((r1, r2));
}

#[rtokio::test(crate = "rtokio", flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_connection_releases_its_locks_and_its_holder_stops() {
    let pg = Postgres::start();
    let a = PgLocks::connect(&pg.conninfo(), SCHEMA).await.unwrap();
    let b = PgLocks::connect(&pg.conninfo(), SCHEMA).await.unwrap();
    let plan = Intent::repo_write(&repo("app")).plan(LockPolicy::Striped);
    let held = a.acquire(&plan).await.unwrap();
    held.check().expect("held");

    // The holder's connection is cut (what a network partition or a
    // restarted database does): its session ends on the server.
    let (admin, connection) = tokio_postgres::connect(&pg.conninfo(), tokio_postgres::NoTls)
        .await
        .unwrap();
    rtokio::spawn(connection);
    let cut = admin
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE state = 'idle in transaction' AND pid <> pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(cut.len(), 1, "exactly the holder's session is cut");

    // The server released the locks: the other instance gets them.
    let taken = rtokio::time::timeout(Duration::from_secs(10), b.acquire(&plan))
        .await
        .expect("the lost holder's locks were not released")
        .unwrap();
    // And the old holder learns it before its next write.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match held.check() {
            Err(LockError::Lost { .. }) => break,
            Err(e) => panic!("unexpected: {e}"),
            Ok(()) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the holder still believes it holds the lock"
                );
                rtokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    drop((held, taken));
}
