//! The metadata-store conformance suite, unchanged, on a real PostgreSQL
//! started for the test. Each fresh store is a new schema (an empty
//! store); a restart drops every connection and connects again.

use std::sync::atomic::{AtomicUsize, Ordering};

use pgmeta::PgMeta;
use testkit::Postgres;
use testkit::meta_conformance as conformance;

#[rtokio::test(crate = "rtokio", flavor = "multi_thread", worker_threads = 2)]
async fn postgres() {
    let pg = Postgres::start();
    let conninfo = pg.conninfo();
    let fresh = AtomicUsize::new(0);
    // The suite's `reopen` is synchronous; connecting is not.
    let connect = |schema: String| {
        rtokio::task::block_in_place(|| {
            rtokio::runtime::Handle::current()
                .block_on(PgMeta::connect(&conninfo, &schema))
                .expect("connect")
        })
    };
    conformance::run(|previous: Option<PgMeta>| match previous {
        None => connect(format!(
            "conformance_{}",
            fresh.fetch_add(1, Ordering::SeqCst)
        )),
        Some(store) => {
            let schema = store.schema().to_owned();
            drop(store); // every connection closes: the next connect is a restart
            connect(schema)
        }
    })
    .await;
}

/// Two stores on one schema are two instances: conditional batches racing
/// from both must still act one at a time. Each key is created by exactly
/// one of the racing insert-if-absent batches, and read-compare-swap
/// increments lose none (under plain READ COMMITTED both would fail: two
/// batches read "absent" and both write).
#[rtokio::test(crate = "rtokio", flavor = "multi_thread", worker_threads = 2)]
async fn conditions_hold_across_instances() {
    use engine::meta::{Batch, MetaError, MetaStore, Table};
    use std::sync::Arc;

    let pg = Postgres::start();
    let a = Arc::new(PgMeta::connect(&pg.conninfo(), "race").await.unwrap());
    let b = Arc::new(PgMeta::connect(&pg.conninfo(), "race").await.unwrap());
    const KEYS: usize = 20;
    const RACERS: usize = 8;
    const INCREMENTS: usize = 15;
    let mut tasks = Vec::new();
    for racer in 0..RACERS {
        let store = if racer % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(rtokio::spawn(async move {
            let mut created = 0;
            for k in 0..KEYS {
                let key = format!("k{k}");
                let batch = Batch::new().expect(Table::GC, key.clone(), None).put(
                    Table::GC,
                    key,
                    format!("{racer}"),
                );
                match store.commit(batch).await {
                    Ok(()) => created += 1,
                    Err(MetaError::Conflict { .. }) => {}
                    Err(e) => panic!("{e}"),
                }
            }
            for _ in 0..INCREMENTS {
                loop {
                    let now = store.get(Table::CONFIG, b"counter").await.unwrap();
                    let n: u64 = now
                        .as_deref()
                        .map_or(0, |v| std::str::from_utf8(v).unwrap().parse().unwrap());
                    let batch = Batch::new().expect(Table::CONFIG, "counter", now).put(
                        Table::CONFIG,
                        "counter",
                        (n + 1).to_string(),
                    );
                    match store.commit(batch).await {
                        Ok(()) => break,
                        Err(MetaError::Conflict { .. }) => continue,
                        Err(e) => panic!("{e}"),
                    }
                }
            }
            created
        }));
    }
    let mut created = 0;
    for t in tasks {
        created += t.await.unwrap();
    }
    assert_eq!(created, KEYS, "each key created exactly once");
    let counter = a.get(Table::CONFIG, b"counter").await.unwrap().unwrap();
    assert_eq!(
        String::from_utf8(counter).unwrap(),
        (RACERS * INCREMENTS).to_string(),
        "an increment was lost"
    );
}
