//! The simulated disk's durability model, and the commit protocol under it.
//!
//! First the model's own rules, one test each (unsynced data, entries of an
//! unsynced directory, capacity). Then sweeps: crash after the k-th disk call
//! of a workload, for every k, and check that every object is either its old
//! bytes or its complete new bytes, that every acknowledged write survived,
//! and that some crash did tear a write; "no space" at every call, and
//! check that the refused write changed nothing. Broken drivers show the
//! no-space sweep can fail.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use engine::driver::posix::PosixFs;
use engine::driver::{
    Driver, DriverError, DriverPath, DriverResult, PutMode, SimDisk, SimDriver, SimFaults,
};
use testkit::pattern;

fn p(s: &str) -> DriverPath {
    DriverPath::new(s).unwrap()
}

fn image(disk: &SimDisk) -> BTreeMap<String, Vec<u8>> {
    disk.durable_image()
}

#[tokio::test]
async fn unsynced_data_is_lost_synced_data_survives() {
    let disk = SimDisk::new();
    let mut f = disk.create_new("f").await.unwrap();
    disk.fsync_dir("").await.unwrap();
    disk.write(&mut f, Bytes::from_static(b"lost"))
        .await
        .unwrap();
    drop(f);
    disk.crash();
    assert_eq!(
        image(&disk)["f"],
        b"",
        "data written without fsync survived"
    );

    let mut f = disk.create_new("g").await.unwrap();
    disk.write(&mut f, Bytes::from_static(b"kept"))
        .await
        .unwrap();
    disk.fsync(&mut f).await.unwrap();
    disk.fsync_dir("").await.unwrap();
    disk.write(&mut f, Bytes::from_static(b"+tail"))
        .await
        .unwrap();
    disk.crash();
    assert_eq!(image(&disk)["g"], b"kept");
    // The handle died with the power.
    let err = disk
        .write(&mut f, Bytes::from_static(b"x"))
        .await
        .unwrap_err();
    assert!(
        matches!(disk.classify(&err), Some(DriverError::Crashed { .. })),
        "{err:?}"
    );
}

async fn durable_file(disk: &Arc<SimDisk>, path: &str, data: &'static [u8]) {
    let mut f = disk.create_new(path).await.unwrap();
    disk.write(&mut f, Bytes::from_static(data)).await.unwrap();
    disk.fsync(&mut f).await.unwrap();
    let parent = path.rsplit_once('/').map_or("", |(d, _)| d);
    disk.fsync_dir(parent).await.unwrap();
}

/// rmdir needs the directory empty, so once its removal is durable so are
/// the removals inside it: a crash must not bring a file back under a
/// directory that is gone. (The driver renames an upload out of `.uploads`,
/// removes the emptied directory, then syncs what is left: its parent;
/// the next upload creates the directory again. Before, the upload's old name came back after a power cut, and a third
/// link inflated the link count the blobstore counts holders by.)
#[tokio::test]
async fn a_durably_removed_directory_takes_its_entries_with_it() {
    let disk = SimDisk::new();
    disk.mkdir("d").await.unwrap();
    disk.fsync_dir("").await.unwrap();
    durable_file(&disk, "d/f", b"1").await;
    disk.rename("d/f", "g").await.unwrap();
    disk.rmdir("d").await.unwrap();
    disk.fsync_dir("").await.unwrap();
    // The next upload creates the directory again.
    disk.mkdir("d").await.unwrap();
    disk.fsync_dir("").await.unwrap();
    disk.crash();
    assert_eq!(image(&disk).keys().collect::<Vec<_>>(), ["g"]);
}

#[tokio::test]
async fn rename_needs_the_directory_fsync() {
    let disk = SimDisk::new();
    durable_file(&disk, "a", b"1").await;
    disk.rename("a", "b").await.unwrap();
    disk.crash();
    assert_eq!(image(&disk).keys().collect::<Vec<_>>(), ["a"]);

    disk.rename("a", "b").await.unwrap();
    disk.fsync_dir("").await.unwrap();
    disk.crash();
    assert_eq!(image(&disk).keys().collect::<Vec<_>>(), ["b"]);
}

#[tokio::test]
async fn link_and_unlink_need_the_directory_fsync() {
    let disk = SimDisk::new();
    disk.mkdir("d").await.unwrap();
    disk.fsync_dir("").await.unwrap();
    durable_file(&disk, "a", b"1").await;
    disk.link("a", "d/b").await.unwrap();
    disk.fsync_dir("").await.unwrap(); // the wrong directory
    disk.crash();
    assert!(
        !image(&disk).contains_key("d/b"),
        "link survived without its dir fsync"
    );
    assert_eq!(
        disk.stat("a").await.unwrap().links,
        1,
        "link count not rebuilt"
    );

    disk.link("a", "d/b").await.unwrap();
    disk.fsync_dir("d").await.unwrap();
    disk.unlink("a").await.unwrap();
    disk.crash();
    assert_eq!(
        image(&disk).keys().collect::<Vec<_>>(),
        ["a", "d/b"],
        "unsynced unlink survived"
    );
    assert_eq!(disk.stat("a").await.unwrap().links, 2);

    disk.unlink("a").await.unwrap();
    disk.fsync_dir("").await.unwrap();
    disk.crash();
    assert_eq!(image(&disk).keys().collect::<Vec<_>>(), ["d/b"]);
}

#[tokio::test]
async fn entries_of_an_unreachable_directory_are_lost() {
    let disk = SimDisk::new();
    disk.mkdir("new").await.unwrap();
    durable_file(&disk, "new/f", b"data").await; // fsyncs "new", not the root
    disk.crash();
    assert!(
        image(&disk).is_empty(),
        "a file survived in a directory that did not"
    );
    assert!(disk.stat("new").await.is_err());
}

#[tokio::test]
async fn the_driver_makes_new_directories_durable() {
    let disk = SimDisk::new();
    let d = SimDriver::on(disk.clone());
    d.put(&p("a/b/c/obj"), pattern(1, 100), PutMode::IfAbsent)
        .await
        .unwrap();
    disk.crash();
    assert_eq!(image(&disk)["a/b/c/obj"], pattern(1, 100).to_vec());
}

/// A listing names the children only, in order, however deep the tree
/// below them, with names that sort around a child directory's subtree
/// (`b-x` and `b.y` before `b/`, `z` after it).
#[tokio::test]
async fn a_listing_names_the_children_only() {
    let disk = SimDisk::new();
    for dir in ["a", "a/b", "a/b/c", "a/e"] {
        disk.mkdir(dir).await.unwrap();
    }
    for file in ["a/b-x", "a/b.y", "a/b/c/f", "a/b/g", "a/e/h", "a/z", "top"] {
        disk.create_new(file).await.unwrap();
    }
    let listed = |entries: Vec<(String, bool)>| {
        entries
            .into_iter()
            .map(|(name, dir)| format!("{name}{}", if dir { "/" } else { "" }))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        listed(disk.read_dir("a").await.unwrap()),
        ["b/", "b-x", "b.y", "e/", "z"]
    );
    assert_eq!(listed(disk.read_dir("a/b").await.unwrap()), ["c/", "g"]);
    assert_eq!(listed(disk.read_dir("").await.unwrap()), ["a/", "top"]);
    assert!(disk.read_dir("a/e/h").await.is_err());
}

#[tokio::test]
async fn capacity_stops_a_write_midway_and_nothing_becomes_visible() {
    let disk = SimDisk::with_faults(
        SimFaults {
            capacity: Some(10_000),
            ..SimFaults::default()
        },
        1,
    );
    let d = SimDriver::on(disk.clone());
    d.put(&p("keep"), pattern(1, 6_000), PutMode::Overwrite)
        .await
        .unwrap();
    let mut w = d.writer(&p("big"), PutMode::IfAbsent).await.unwrap();
    w.write(pattern(2, 3_000)).await.unwrap();
    let err = w.write(pattern(3, 3_000)).await.unwrap_err();
    assert!(err.is_no_space(), "{err:?}");
    drop(w);
    // An overwrite that does not fit leaves the old bytes in place.
    let err = d
        .put(&p("keep"), pattern(4, 9_000), PutMode::Overwrite)
        .await
        .unwrap_err();
    assert!(err.is_no_space(), "{err:?}");
    assert_eq!(d.list(None).await.unwrap(), vec![p("keep")]);
    assert_eq!(d.get(&p("keep"), None).await.unwrap(), pattern(1, 6_000));
    assert_eq!(
        disk.used_bytes(),
        6_000,
        "the failed writes still hold space"
    );
    // Freeing space is the cure.
    d.delete(&p("keep")).await.unwrap();
    d.put(&p("big"), pattern(5, 9_000), PutMode::IfAbsent)
        .await
        .unwrap();
    assert_eq!(d.get(&p("big"), None).await.unwrap(), pattern(5, 9_000));
}

/// What the sweep's workload may leave at each path after a crash.
#[derive(Debug, Default)]
struct Expect {
    /// Allowed contents (`None`: absent) for every path the workload touches.
    allowed: BTreeMap<&'static str, Vec<Option<Bytes>>>,
    /// Contents that were acknowledged: anything older is a lost write.
    acked: BTreeMap<&'static str, Option<Bytes>>,
}

impl Expect {
    fn allow(&mut self, path: &'static str, v: Option<Bytes>) {
        self.allowed.entry(path).or_default().push(v);
    }
}

/// A workload over every kind of mutation, recording as it goes which
/// outcomes are allowed and which are acknowledged. Stops at the first error
/// (the crash), as an engine would.
async fn workload(d: &dyn Driver, e: &mut Expect) -> Result<(), DriverError> {
    let v = |seed: u64, len: usize| Some(pattern(seed, len));
    e.allow("r/old", None);
    e.allow("r/old", v(2, 3000));
    e.allow("r/new", v(3, 5000));
    d.put(&p("r/new"), pattern(3, 5000), PutMode::IfAbsent)
        .await?;
    e.acked.insert("r/new", v(3, 5000));

    d.put(&p("r/old"), pattern(2, 3000), PutMode::Overwrite)
        .await?;
    e.acked.insert("r/old", v(2, 3000));

    e.allow("blobs/x", v(4, 70_000));
    let mut w = d.writer(&p("blobs/x"), PutMode::IfAbsent).await?;
    // A commit in the same directory persists the directory's entries, the
    // temp file of `blobs/x` among them: from here a crash can tear a write
    // under a name that survives (a temp name, which no listing shows).
    e.allow("blobs/y", v(5, 1000));
    d.put(&p("blobs/y"), pattern(5, 1000), PutMode::IfAbsent)
        .await?;
    e.acked.insert("blobs/y", v(5, 1000));
    for i in 0..7 {
        w.write(pattern(4, 70_000).slice(i * 10_000..(i + 1) * 10_000))
            .await?;
    }
    w.commit().await?;
    e.acked.insert("blobs/x", v(4, 70_000));

    e.allow("repo/blobs/x", v(4, 70_000));
    d.hard_link(&p("blobs/x"), &p("repo/blobs/x")).await?;
    d.sync_dir(Some(&p("repo/blobs"))).await?;
    e.acked.insert("repo/blobs/x", v(4, 70_000));

    d.delete(&p("r/new")).await?;
    d.sync_dir(Some(&p("r"))).await?;
    e.acked.insert("r/new", None);
    Ok(())
}

/// The paths [`workload`] touches.
const WORKLOAD_PATHS: [&str; 5] = ["r/old", "r/new", "blobs/x", "blobs/y", "repo/blobs/x"];

/// Runs the workload with a crash after every possible disk call. Returns
/// the number of calls and of crashes that tore a write.
async fn crash_sweep(torn_writes: bool, torn_inside: bool) -> (u64, u64) {
    let mut k = 0;
    let mut tears = 0;
    loop {
        let disk = SimDisk::with_faults(SimFaults::default(), k + 1);
        let d = SimDriver::on(disk.clone());
        d.put(&p("r/old"), pattern(1, 2000), PutMode::Overwrite)
            .await
            .unwrap();
        let mut e = Expect::default();
        e.allow("r/old", Some(pattern(1, 2000)));
        e.allow("r/new", None);
        e.allow("blobs/x", None);
        e.allow("blobs/y", None);
        e.allow("repo/blobs/x", None);
        e.acked.insert("r/old", Some(pattern(1, 2000)));
        disk.set_faults(SimFaults {
            crash_after_ops: Some(k),
            torn_writes,
            torn_inside,
            ..SimFaults::default()
        });
        let finished = workload(&d, &mut e).await;
        if finished.is_ok() {
            assert!(!disk.is_powered_off());
            return (k, tears); // the workload fits in k calls: every crash point was tried
        }
        let err = finished.unwrap_err();
        assert!(matches!(err, DriverError::Crashed { .. }), "k={k}: {err:?}");
        tears += disk.torn_writes_applied();
        disk.set_faults(SimFaults::default());
        disk.power_on();

        let after = image(&disk);
        for (path, allowed) in &e.allowed {
            let got = after.get(*path).map(|b| Bytes::from(b.clone()));
            assert!(
                allowed.contains(&got),
                "k={k}: {path} holds {:?} bytes, allowed {:?}",
                got.as_ref().map(Bytes::len),
                allowed
                    .iter()
                    .map(|a| a.as_ref().map(Bytes::len))
                    .collect::<Vec<_>>()
            );
        }
        for (path, acked) in &e.acked {
            let got = after.get(*path).map(|b| Bytes::from(b.clone()));
            assert_eq!(&got, acked, "k={k}: acknowledged state of {path} lost");
        }
        for path in after.keys() {
            assert!(
                e.allowed.contains_key(path.as_str()) || path.contains(".ocistore"),
                "k={k}: stray {path}"
            );
        }
        // Whatever the crash left, the driver works on: listing hides temp
        // files, and the whole workload can be redone.
        for listed in d.list(None).await.unwrap() {
            assert!(
                e.allowed.contains_key(listed.as_str()),
                "k={k}: listed {listed}"
            );
        }
        k += 1;
    }
}

#[tokio::test]
async fn crash_after_every_disk_call_loses_nothing_acknowledged() {
    let (calls, tears) = crash_sweep(false, false).await;
    assert!(calls > 20, "the sweep covered only {calls} calls");
    assert_eq!(tears, 0, "a write tore with torn writes off");
}

#[tokio::test]
async fn torn_writes_never_become_visible() {
    let (calls, tears) = crash_sweep(true, false).await;
    // Most crash points fall after a synced write, and a tear that no
    // surviving name reaches proves nothing: at least one must have landed.
    assert!(
        tears > 0,
        "none of {calls} crashes tore a write a name still reaches: the sweep tested no tear"
    );
}

#[tokio::test]
async fn writes_torn_inside_never_become_visible() {
    let (calls, tears) = crash_sweep(false, true).await;
    assert!(
        tears > 0,
        "none of {calls} crashes tore a write inside a file a name still reaches"
    );
}

#[tokio::test]
async fn a_tear_inside_keeps_the_length_and_zeroes_a_stretch_within() {
    let disk = SimDisk::with_faults(
        SimFaults {
            torn_inside: true,
            ..SimFaults::default()
        },
        7,
    );
    let mut f = disk.create_new("f").await.unwrap();
    disk.fsync_dir("").await.unwrap();
    let data = vec![0xab_u8; 4000];
    disk.write(&mut f, Bytes::from(data.clone())).await.unwrap();
    drop(f);
    disk.crash();
    // What the restarted machine reads (a tear lands in the live bytes).
    let after = SimDriver::on(disk.clone())
        .get(&p("f"), None)
        .await
        .unwrap();
    assert_eq!(after.len(), data.len(), "an interior tear keeps the length");
    assert_eq!((after[0], after[after.len() - 1]), (0xab, 0xab));
    let zeroed = after.iter().filter(|b| **b == 0).count();
    assert!((1..=512).contains(&zeroed), "{zeroed} bytes zeroed");
    assert_eq!(disk.torn_writes_applied(), 1);
}

#[tokio::test]
async fn read_flips_corrupt_what_a_read_returns_never_what_is_stored() {
    let disk = SimDisk::new();
    let d = SimDriver::on(disk.clone());
    d.put(&p("blobs/x"), pattern(3, 3000), PutMode::Overwrite)
        .await
        .unwrap();
    d.put(&p("r/old"), pattern(4, 3000), PutMode::Overwrite)
        .await
        .unwrap();
    disk.set_faults(SimFaults {
        read_flips: Some(engine::driver::sim::ReadFlips {
            one_in: 1,
            path_contains: "blobs/".into(),
        }),
        ..SimFaults::default()
    });
    let read = d.get(&p("blobs/x"), None).await.unwrap();
    let differing: u32 = read
        .iter()
        .zip(pattern(3, 3000).iter())
        .map(|(a, b)| (a ^ b).count_ones())
        .sum();
    assert_eq!(differing, 1, "one bit flipped");
    assert_eq!(disk.flipped_reads(), 1);
    // Other paths read clean; the stored bytes were never touched.
    assert_eq!(d.get(&p("r/old"), None).await.unwrap(), pattern(4, 3000));
    assert_eq!(image(&disk)["blobs/x"], pattern(3, 3000).to_vec());
    disk.set_faults(SimFaults::default());
    assert_eq!(d.get(&p("blobs/x"), None).await.unwrap(), pattern(3, 3000));
}

/// Sweeps "no space" over every disk call of [`workload`] on a driver that
/// `wrap` builds over a fresh sim disk: each refusal must leave exactly the
/// acknowledged state (a refused overwrite keeps its old bytes, a refused
/// create leaves nothing, not even a temp file), and once space is back the
/// workload completes. Returns how many refusals were checked, or the first
/// violation.
async fn no_space_sweep(wrap: impl Fn(SimDriver) -> Arc<dyn Driver>) -> Result<u64, String> {
    let mut k = 0;
    loop {
        let disk = SimDisk::new();
        let d = wrap(SimDriver::on(disk.clone()));
        d.put(&p("r/old"), pattern(1, 2000), PutMode::Overwrite)
            .await
            .unwrap();
        disk.set_faults(SimFaults {
            no_space_after_ops: Some(k),
            ..SimFaults::default()
        });
        let mut e = Expect::default();
        e.acked.insert("r/old", Some(pattern(1, 2000)));
        let result = workload(&*d, &mut e).await;
        if result.is_ok() {
            return Ok(k);
        }
        let err = result.unwrap_err();
        if !err.is_no_space() {
            return Err(format!("k={k}: failed with {err:?}, not no space"));
        }
        disk.set_faults(SimFaults::default());
        // The refusal changed nothing: every path holds its last acknowledged
        // state, or the state before the workload if none was acknowledged...
        for path in WORKLOAD_PATHS {
            let want = e.acked.get(path).cloned().flatten();
            let got = d.get(&p(path), None).await.ok();
            if got != want {
                return Err(format!(
                    "k={k}: after a refused write {path} holds {:?} bytes, acknowledged {:?}",
                    got.as_ref().map(Bytes::len),
                    want.as_ref().map(Bytes::len)
                ));
            }
        }
        // ...and nothing else is on the disk: no partial object, no temp file
        // (checked before the cleanup below, which would hide them).
        let want: Vec<String> = WORKLOAD_PATHS
            .iter()
            .filter(|path| e.acked.get(*path).is_some_and(Option::is_some))
            .map(|path| path.to_string())
            .collect();
        let mut on_disk = files(&disk).await;
        on_disk.sort();
        let mut want = want;
        want.sort();
        if on_disk != want {
            return Err(format!(
                "k={k}: after a refused write the disk holds {on_disk:?}, acknowledged {want:?}"
            ));
        }
        // Once space is back the same workload completes.
        for path in WORKLOAD_PATHS.iter().filter(|p| **p != "r/old") {
            d.delete(&p(path)).await.unwrap();
        }
        workload(&*d, &mut Expect::default())
            .await
            .map_err(|e| format!("k={k}: retry with space back: {e}"))?;
        k += 1;
    }
}

/// Every file the disk's live namespace holds, temp files included.
async fn files(disk: &Arc<SimDisk>) -> Vec<String> {
    let mut out = Vec::new();
    let mut dirs = vec![String::new()];
    while let Some(dir) = dirs.pop() {
        for (name, is_dir) in disk.read_dir(&dir).await.unwrap() {
            let path = if dir.is_empty() {
                name
            } else {
                format!("{dir}/{name}")
            };
            if is_dir {
                dirs.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

#[tokio::test]
async fn no_space_at_every_call_changes_nothing_and_retry_succeeds() {
    let k = no_space_sweep(|d| Arc::new(d)).await.unwrap();
    assert!(k > 5, "no-space was injected at only {k} points");
}

/// The sweep catches a driver whose refused write is not a no-op.
#[tokio::test]
async fn no_space_sweep_catches_a_refused_write_that_changed_something() {
    let err = no_space_sweep(|d| Arc::new(Broken::new(d, Breakage::DeleteBeforeOverwrite)))
        .await
        .expect_err("an overwrite that deletes first passed the sweep");
    assert!(
        err.contains("r/old holds None bytes, acknowledged Some(2000)"),
        "{err}"
    );
    let err = no_space_sweep(|d| Arc::new(Broken::new(d, Breakage::PlaceholderFirst)))
        .await
        .expect_err("a create that leaves a placeholder passed the sweep");
    assert!(
        err.contains("r/new holds Some(0) bytes, acknowledged None"),
        "{err}"
    );
}

/// How a [`Broken`] driver gets `put` wrong.
#[derive(Debug, Clone, Copy)]
enum Breakage {
    /// An overwrite deletes the old object, then writes the new one: a
    /// refused write loses the old bytes.
    DeleteBeforeOverwrite,
    /// Every put first creates an empty object at the target: a refused
    /// write leaves it behind.
    PlaceholderFirst,
}

/// A sim driver whose `put` is broken as [`Breakage`] says; everything else
/// passes through.
#[derive(Debug)]
struct Broken {
    inner: SimDriver,
    how: Breakage,
}

impl Broken {
    fn new(inner: SimDriver, how: Breakage) -> engine::driver::Intercepted<Broken> {
        engine::driver::Intercepted(Broken { inner, how })
    }
}

#[async_trait::async_trait]
impl engine::driver::Intercept for Broken {
    fn inner(&self) -> &dyn Driver {
        &self.inner
    }

    fn name(&self) -> &'static str {
        "broken"
    }

    async fn put(&self, path: &DriverPath, data: Bytes, mode: PutMode) -> DriverResult<()> {
        match (self.how, mode) {
            (Breakage::DeleteBeforeOverwrite, PutMode::Overwrite) => {
                self.inner.delete(path).await?;
            }
            (Breakage::PlaceholderFirst, _) => {
                self.inner.put(path, Bytes::new(), mode).await?;
                return self.inner.put(path, data, PutMode::Overwrite).await;
            }
            _ => {}
        }
        self.inner.put(path, data, mode).await
    }
}
