//! Kill a process in the middle of `fs` commits, many times: every object
//! is either absent or complete (never torn, never a temp file under a real
//! name), and every write the child acknowledged is there, across all the
//! rounds so far. The child reports each commit as it starts and as it is
//! acknowledged, so the test knows that kills did land mid-commit, and it
//! must die by our SIGKILL, not by an error of its own.
//!
//! A SIGKILL keeps the page cache, so this checks atomic visibility and the
//! protocol's ordering on a real kernel; power loss is the sim disk's job.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;
use engine::driver::{Driver, DriverPath, FsDriver, PutMode};
use testkit::pattern;

const ROOT_ENV: &str = "OCISTORE_KILL_TEST_ROOT";
const MODE_ENV: &str = "OCISTORE_KILL_TEST_MODE";
const HEADER: usize = 16;

/// An object that names itself: `[slot u64][version u64][pattern(version)]`.
fn object(slot: u64, version: u64) -> Bytes {
    // Sizes from empty to past the writer's pipelining threshold (4 MiB).
    let len = match version % 5 {
        0 => 0,
        1 => 100,
        2 => 70_000,
        3 => 1_500_000,
        _ => 5_000_000,
    };
    let mut v = Vec::with_capacity(HEADER + len);
    v.extend_from_slice(&slot.to_le_bytes());
    v.extend_from_slice(&version.to_le_bytes());
    v.extend_from_slice(&pattern(version, len));
    v.into()
}

fn check_object(path: &str, data: &[u8]) -> u64 {
    assert!(
        data.len() >= HEADER,
        "{path}: {} bytes, torn header",
        data.len()
    );
    let slot = u64::from_le_bytes(data[..8].try_into().unwrap());
    let version = u64::from_le_bytes(data[8..16].try_into().unwrap());
    let expected = object(slot, version);
    assert!(
        expected[..] == data[..],
        "{path}: torn or mixed object (slot {slot} v{version})"
    );
    assert!(
        path.ends_with(&format!("/{slot}")),
        "{path} holds slot {slot}"
    );
    version
}

/// The child: commits objects forever, printing `BEGIN path version` before
/// each commit starts (the temp file), `COMMIT path version` before the
/// driver's commit call, then `ACK path version` once it is acknowledged
/// (`EXISTS path version` if an if-absent target was taken), and
/// `DELETING`/`DEL` around deletes. Each line is flushed as printed.
#[tokio::test]
#[ignore = "helper process for kill_during_commits_leaves_only_whole_objects"]
async fn child_writer() {
    let root = std::env::var(ROOT_ENV).expect("run by the parent test");
    let d = FsDriver::open(&root).unwrap();
    let start: u64 = std::env::var("OCISTORE_KILL_TEST_START")
        .unwrap()
        .parse()
        .unwrap();
    let mode_env = std::env::var(MODE_ENV).unwrap_or_default();
    if mode_env == ChildMode::FailsAtOnce.env() {
        panic!("failing at once, as asked");
    }
    let in_place = mode_env == ChildMode::WritesInPlace.env();
    for version in start.. {
        let slot = version % 8;
        let path = DriverPath::new(format!("objs/{}/{slot}", slot % 3)).unwrap();
        let mode = if version % 4 == 0 {
            PutMode::IfAbsent
        } else {
            PutMode::Overwrite
        };
        println!("BEGIN {path} {version}");
        if in_place {
            // Broken on purpose: no temp file, no rename.
            use std::io::Write;
            let file = std::path::Path::new(&root).join(path.as_str());
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            let mut f = std::fs::File::create(&file).unwrap();
            for chunk in object(slot, version).chunks(1 << 20) {
                f.write_all(chunk).unwrap();
            }
            println!("COMMIT {path} {version}");
            f.sync_all().unwrap();
            println!("ACK {path} {version}");
            continue;
        }
        let mut w = d.writer(&path, mode).await.unwrap();
        for chunk in object(slot, version).chunks(1 << 20) {
            w.write(Bytes::copy_from_slice(chunk)).await.unwrap();
        }
        println!("COMMIT {path} {version}");
        match w.commit().await {
            Ok(()) => println!("ACK {path} {version}"),
            Err(e) if e.is_already_exists() => println!("EXISTS {path} {version}"),
            Err(e) => panic!("{e}"),
        }
        if version % 11 == 0 {
            println!("DELETING {path} {version}");
            d.delete(&path).await.unwrap();
            d.sync_dir(path.parent().as_ref()).await.unwrap();
            println!("DEL {path} {version}");
        }
    }
}

/// The child's operation the kill interrupted, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
enum InFlight {
    /// Between `BEGIN` and `ACK`/`EXISTS`; `committing` once `COMMIT` was printed.
    Write {
        version: u64,
        committing: bool,
    },
    Delete,
}

/// What the parent knows: per path, the version that must be there
/// (absent from the map: the object must be absent).
#[derive(Debug, Default)]
struct Known {
    objects: BTreeMap<String, u64>,
    /// Versions started so far + 1: a new child never reuses one.
    next_version: u64,
    acks: u64,
}

impl Known {
    /// Applies one round's lines; returns the operation the kill cut short.
    fn apply(&mut self, lines: &[String]) -> Option<(String, InFlight)> {
        let mut in_flight = None;
        for line in lines {
            let mut parts = line.split_whitespace();
            let (Some(what), Some(path), Some(v)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let Ok(version) = v.parse::<u64>() else {
                continue;
            };
            let path = path.to_owned();
            match what {
                "BEGIN" => {
                    self.next_version = self.next_version.max(version + 1);
                    in_flight = Some((
                        path,
                        InFlight::Write {
                            version,
                            committing: false,
                        },
                    ));
                }
                "COMMIT" => {
                    in_flight = Some((
                        path,
                        InFlight::Write {
                            version,
                            committing: true,
                        },
                    ));
                }
                "ACK" => {
                    self.objects.insert(path, version);
                    self.acks += 1;
                    in_flight = None;
                }
                "EXISTS" => in_flight = None,
                "DELETING" => in_flight = Some((path, InFlight::Delete)),
                "DEL" => {
                    self.objects.remove(&path);
                    in_flight = None;
                }
                _ => {}
            }
        }
        in_flight
    }
}

/// Collects the child's stdout line by line as it comes, and its stderr.
fn watch(
    child: &mut std::process::Child,
) -> (mpsc::Receiver<String>, std::thread::JoinHandle<String>) {
    let stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let errors = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    (rx, errors)
}

/// How the child writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChildMode {
    /// Through the `fs` driver: the real thing.
    Driver,
    /// Broken on purpose: straight into the object's file, so a kill can
    /// leave it torn.
    WritesInPlace,
    /// Broken on purpose: dies of an error before writing anything.
    FailsAtOnce,
}

impl ChildMode {
    fn env(self) -> &'static str {
        match self {
            ChildMode::Driver => "driver",
            ChildMode::WritesInPlace => "in-place",
            ChildMode::FailsAtOnce => "fails",
        }
    }
}

#[tokio::test]
async fn kill_during_commits_leaves_only_whole_objects() {
    kill_rounds(ChildMode::Driver).await;
}

/// The checks fail on a child whose writes are not atomic...
#[tokio::test]
async fn the_kill_test_catches_a_writer_that_is_not_atomic() {
    let e = tokio::spawn(kill_rounds(ChildMode::WritesInPlace))
        .await
        .expect_err("kills during in-place writes left only whole objects");
    let message = panic_message(e);
    assert!(message.contains("torn"), "{message}");
}

/// ...and on a child that dies of its own error, not of the kill.
#[tokio::test]
async fn the_kill_test_catches_a_child_that_died_of_an_error() {
    let e = tokio::spawn(kill_rounds(ChildMode::FailsAtOnce))
        .await
        .expect_err("a child that failed by itself passed");
    let message = panic_message(e);
    assert!(
        message.contains("not by our SIGKILL") && message.contains("failing at once, as asked"),
        "{message}"
    );
}

fn panic_message(e: tokio::task::JoinError) -> String {
    let p = e.into_panic();
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "non-string panic".to_owned())
}

/// Kills a child writing in `mode` 20 times and checks what each kill left.
async fn kill_rounds(mode: ChildMode) {
    const ROUNDS: u64 = 20;
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut known = Known::default();
    let (mut mid_commit, mut inside_commit_call) = (0, 0);
    for round in 0..ROUNDS {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "child_writer",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(ROOT_ENV, dir.path())
            .env(MODE_ENV, mode.env())
            .env("OCISTORE_KILL_TEST_START", known.next_version.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (rx, errors) = watch(&mut child);
        let mut lines = Vec::new();
        if round % 2 == 0 {
            // Kill at a different moment each round, some before any commit.
            std::thread::sleep(Duration::from_millis(5 + (round * 37) % 180));
        } else {
            // Kill just as the commit call of a large object starts, after
            // a few acknowledged writes.
            let acks_first = round / 2 % 3;
            let mut acks = 0;
            loop {
                match rx.recv_timeout(Duration::from_secs(60)) {
                    Ok(line) => {
                        let big = line.starts_with("COMMIT")
                            && line
                                .rsplit(' ')
                                .next()
                                .and_then(|v| v.parse::<u64>().ok())
                                .is_some_and(|v| v % 5 >= 3);
                        acks += u64::from(line.starts_with("ACK"));
                        lines.push(line);
                        // (A child that never commits a large object is
                        // killed anyway, after a while.)
                        if big && acks >= acks_first || lines.len() > 1000 {
                            break;
                        }
                    }
                    // Ended on its own: the status check below says why.
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        panic!("round {round}: the child printed nothing for 60 s")
                    }
                }
            }
        }
        child.kill().unwrap(); // SIGKILL: no destructor, no flush, no cleanup
        let status = child.wait().unwrap();
        let stderr = errors.join().unwrap();
        assert_eq!(
            status.signal(),
            Some(libc::SIGKILL),
            "round {round}: the child ended by itself ({status}), not by our SIGKILL; stderr:\n{stderr}"
        );
        lines.extend(rx.iter());

        let in_flight = known.apply(&lines);
        if let Some((_, InFlight::Write { committing, .. })) = &in_flight {
            mid_commit += 1;
            inside_commit_call += u64::from(*committing);
        }
        known.next_version += 1; // never reuse a version the killed child may have started

        let d = FsDriver::open(dir.path()).unwrap();
        // Every object on disk is whole, and one the child wrote.
        for path in d.list(None).await.unwrap() {
            let data = d.get(&path, None).await.unwrap();
            check_object(path.as_str(), &data);
            assert!(
                known.objects.contains_key(path.as_str())
                    || in_flight.as_ref().is_some_and(|(p, _)| p == path.as_str()),
                "round {round}: {path} is there, but no write of it was acknowledged or in flight"
            );
        }
        // Every object acknowledged in any round so far is exactly as
        // acknowledged; the one operation cut short may have landed or not.
        let mut paths: Vec<String> = known.objects.keys().cloned().collect();
        paths.extend(in_flight.iter().map(|(p, _)| p.clone()));
        for path in paths {
            let got = match d.get(&DriverPath::new(&path).unwrap(), None).await {
                Ok(data) => Some(check_object(&path, &data)),
                Err(e) if e.is_not_found() => None,
                Err(e) => panic!("round {round}: reading {path}: {e}"),
            };
            let before = known.objects.get(&path).copied();
            match &in_flight {
                Some((p, op)) if *p == path => {
                    let landed = match op {
                        InFlight::Write { version, .. } => Some(*version),
                        InFlight::Delete => None,
                    };
                    assert!(
                        got == before || got == landed,
                        "round {round}: {path} holds {got:?}; before the cut-short {op:?} it was {before:?}"
                    );
                    // Whichever it was, it is what the next rounds must find.
                    match got {
                        Some(v) => known.objects.insert(path, v),
                        None => known.objects.remove(&path),
                    };
                }
                _ => assert_eq!(
                    got, before,
                    "round {round}: {path} holds version {got:?}, acknowledged {before:?}"
                ),
            }
        }
    }
    eprintln!(
        "{} acknowledged writes; {mid_commit} of {ROUNDS} kills landed mid-commit, \
         {inside_commit_call} inside the driver's commit call",
        known.acks
    );
    assert!(
        known.acks > 20,
        "only {} writes were acknowledged: the child barely ran",
        known.acks
    );
    assert!(
        mid_commit >= ROUNDS / 4,
        "only {mid_commit} of {ROUNDS} kills landed between a commit's start and its acknowledgement"
    );
    // Half the rounds kill as the commit call of a large object starts,
    // which takes milliseconds (fsync of megabytes): some must land inside.
    assert!(
        mode != ChildMode::Driver || inside_commit_call > 0,
        "no kill landed inside the driver's commit call"
    );
}
