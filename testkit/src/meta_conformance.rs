//! The metadata-store conformance suite, run against every [`MetaStore`].
//!
//! [`run`] takes a `reopen` function: given the previous instance (or `None`
//! for the first), it returns the store as it is after a restart. For redb
//! that is dropping the handle and opening the file again; for the memory
//! store, a power cut and power-on. What was committed must still be there.

use engine::meta::{Batch, MetaError, MetaStore, Table};

/// Runs every behaviour. `reopen(None)` must give an empty store.
pub async fn run<S: MetaStore>(mut reopen: impl FnMut(Option<S>) -> S) {
    let s = reopen(None);
    missing_keys_read_as_none(&s).await;
    puts_and_deletes(&s).await;
    conditions_guard_the_whole_batch(&s).await;
    tables_are_independent(&s).await;
    scans_page_in_key_order(&s).await;
    committed_batches_survive_a_restart(s, &mut reopen).await;
}

pub async fn missing_keys_read_as_none(s: &dyn MetaStore) {
    for table in Table::ALL {
        assert_eq!(s.get(table, b"nothing").await.unwrap(), None);
        assert!(s.scan(table, b"", None, 10).await.unwrap().is_empty());
    }
}

pub async fn puts_and_deletes(s: &dyn MetaStore) {
    s.commit(
        Batch::new()
            .put(Table::REFS, "k1", "v1")
            .put(Table::REFS, "k2", "v2"),
    )
    .await
    .unwrap();
    assert_eq!(
        s.get(Table::REFS, b"k1").await.unwrap().as_deref(),
        Some(&b"v1"[..])
    );
    s.commit(
        Batch::new()
            .put(Table::REFS, "k1", "v1b")
            .delete(Table::REFS, "k2"),
    )
    .await
    .unwrap();
    assert_eq!(
        s.get(Table::REFS, b"k1").await.unwrap().as_deref(),
        Some(&b"v1b"[..])
    );
    assert_eq!(s.get(Table::REFS, b"k2").await.unwrap(), None);
    // Deleting a missing key is fine; an empty value is a value.
    s.commit(
        Batch::new()
            .delete(Table::REFS, "nope")
            .put(Table::REFS, "empty", ""),
    )
    .await
    .unwrap();
    assert_eq!(s.get(Table::REFS, b"empty").await.unwrap(), Some(vec![]));
    s.commit(
        Batch::new()
            .delete(Table::REFS, "k1")
            .delete(Table::REFS, "empty"),
    )
    .await
    .unwrap();
    assert!(s.scan(Table::REFS, b"", None, 10).await.unwrap().is_empty());
}

pub async fn conditions_guard_the_whole_batch(s: &dyn MetaStore) {
    // Insert-if-absent.
    s.commit(
        Batch::new()
            .expect(Table::GC, "lock", None)
            .put(Table::GC, "lock", "a"),
    )
    .await
    .unwrap();
    let err = s
        .commit(
            Batch::new()
                .put(Table::GC, "other", "x")
                .expect(Table::GC, "lock", None)
                .put(Table::GC, "lock", "b"),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            MetaError::Conflict {
                table: Table::GC,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        s.get(Table::GC, b"other").await.unwrap(),
        None,
        "a refused batch wrote"
    );
    assert_eq!(
        s.get(Table::GC, b"lock").await.unwrap().as_deref(),
        Some(&b"a"[..])
    );
    // Compare-and-set.
    s.commit(
        Batch::new()
            .expect(Table::GC, "lock", Some(b"a".to_vec()))
            .put(Table::GC, "lock", "c"),
    )
    .await
    .unwrap();
    let stale = Batch::new()
        .expect(Table::GC, "lock", Some(b"a".to_vec()))
        .delete(Table::GC, "lock");
    assert!(matches!(
        s.commit(stale).await,
        Err(MetaError::Conflict { .. })
    ));
    s.commit(Batch::new().delete(Table::GC, "lock"))
        .await
        .unwrap();
}

pub async fn tables_are_independent(s: &dyn MetaStore) {
    s.commit(
        Batch::new()
            .put(Table::MIGRATION, "repo", "m")
            .put(Table::DEDUPE, "repo", "d"),
    )
    .await
    .unwrap();
    assert_eq!(
        s.get(Table::MIGRATION, b"repo").await.unwrap().as_deref(),
        Some(&b"m"[..])
    );
    assert_eq!(
        s.get(Table::DEDUPE, b"repo").await.unwrap().as_deref(),
        Some(&b"d"[..])
    );
    assert_eq!(s.get(Table::CONFIG, b"repo").await.unwrap(), None);
    s.commit(
        Batch::new()
            .delete(Table::MIGRATION, "repo")
            .delete(Table::DEDUPE, "repo"),
    )
    .await
    .unwrap();
}

pub async fn scans_page_in_key_order(s: &dyn MetaStore) {
    let mut b = Batch::new();
    for k in ["a/3", "a/1", "a/2", "a/10", "b/1", "a", "9"] {
        b = b.put(Table::CONFIG, k, k);
    }
    s.commit(b).await.unwrap();
    let keys = |v: Vec<(Vec<u8>, Vec<u8>)>| -> Vec<String> {
        v.into_iter()
            .map(|(k, _)| String::from_utf8(k).unwrap())
            .collect()
    };
    let all = keys(s.scan(Table::CONFIG, b"a/", None, 100).await.unwrap());
    assert_eq!(all, ["a/1", "a/10", "a/2", "a/3"]);
    let page1 = keys(s.scan(Table::CONFIG, b"a/", None, 2).await.unwrap());
    assert_eq!(page1, ["a/1", "a/10"]);
    let page2 = keys(
        s.scan(Table::CONFIG, b"a/", Some(b"a/10"), 2)
            .await
            .unwrap(),
    );
    assert_eq!(page2, ["a/2", "a/3"]);
    assert!(
        s.scan(Table::CONFIG, b"a/", Some(b"a/3"), 2)
            .await
            .unwrap()
            .is_empty()
    );
    // A cursor before the prefix starts at the prefix.
    let from_start = keys(s.scan(Table::CONFIG, b"a/", Some(b"0"), 1).await.unwrap());
    assert_eq!(from_start, ["a/1"]);
    assert_eq!(
        s.scan(Table::CONFIG, b"", None, 100).await.unwrap().len(),
        7
    );
    assert!(
        s.scan(Table::CONFIG, b"a/", None, 0)
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn committed_batches_survive_a_restart<S: MetaStore>(
    s: S,
    reopen: &mut impl FnMut(Option<S>) -> S,
) {
    s.commit(Batch::new().put(Table::MIGRATION, "r1", "done"))
        .await
        .unwrap();
    // Built but never committed: must not exist after the restart.
    let _uncommitted = Batch::new().put(Table::MIGRATION, "r2", "done");
    let s = reopen(Some(s));
    assert_eq!(
        s.get(Table::MIGRATION, b"r1").await.unwrap().as_deref(),
        Some(&b"done"[..])
    );
    assert_eq!(s.get(Table::MIGRATION, b"r2").await.unwrap(), None);
    assert_eq!(
        s.scan(Table::CONFIG, b"a/", None, 100).await.unwrap().len(),
        4
    );
}
