//! Kill a process in the middle of `fs` commits, many times: every object
//! is either absent or complete (never torn, never a temp file under a real
//! name), and every write the child acknowledged is there.
//!
//! A SIGKILL keeps the page cache, so this checks atomic visibility and the
//! protocol's ordering on a real kernel; power loss is the sim disk's job.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use engine::driver::{Driver, DriverPath, FsDriver, PutMode, conformance::pattern};

const ROOT_ENV: &str = "OCISTORE_KILL_TEST_ROOT";
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

/// The child: commits objects forever, printing `ACK path version` after
/// each commit (and `DELETING`/`DEL` around deletes).
#[tokio::test]
#[ignore = "helper process for kill_during_commits_leaves_only_whole_objects"]
async fn child_writer() {
    let root = std::env::var(ROOT_ENV).expect("run by the parent test");
    let d = FsDriver::open(root).unwrap();
    let start: u64 = std::env::var("OCISTORE_KILL_TEST_START")
        .unwrap()
        .parse()
        .unwrap();
    for version in start.. {
        let slot = version % 8;
        let path = DriverPath::new(format!("objs/{}/{slot}", slot % 3)).unwrap();
        let mode = if version % 4 == 0 {
            PutMode::IfAbsent
        } else {
            PutMode::Overwrite
        };
        let mut w = d.writer(&path, mode).await.unwrap();
        for chunk in object(slot, version).chunks(1 << 20) {
            w.write(Bytes::copy_from_slice(chunk)).await.unwrap();
        }
        match w.commit().await {
            Ok(()) => println!("ACK {path} {version}"),
            Err(e) if e.is_already_exists() => {}
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

#[tokio::test]
async fn kill_during_commits_leaves_only_whole_objects() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut verified = 0;
    let mut next_version = 0u64;
    for round in 0..20u64 {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "child_writer",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(ROOT_ENV, dir.path())
            .env("OCISTORE_KILL_TEST_START", next_version.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .collect::<Vec<String>>()
        });
        // Kill at a different moment each round, some before any commit.
        std::thread::sleep(Duration::from_millis(5 + (round * 37) % 180));
        child.kill().unwrap(); // SIGKILL: no destructor, no flush, no cleanup
        child.wait().unwrap();
        let lines = reader.join().unwrap();

        // The last acknowledgement per path is what must be visible now.
        let mut last: std::collections::BTreeMap<String, Option<u64>> = Default::default();
        for line in &lines {
            let mut parts = line.split_whitespace();
            match (parts.next(), parts.next(), parts.next()) {
                (Some("ACK"), Some(path), Some(v)) => {
                    last.insert(path.to_owned(), Some(v.parse().unwrap()));
                    next_version = next_version.max(v.parse::<u64>().unwrap() + 1);
                }
                // Killed between these two lines: either outcome is right.
                (Some("DELETING"), Some(path), Some(_)) => {
                    last.remove(path);
                }
                (Some("DEL"), Some(path), Some(v)) => {
                    last.insert(path.to_owned(), None);
                    next_version = next_version.max(v.parse::<u64>().unwrap() + 1);
                }
                _ => {}
            }
        }
        next_version += 1; // never reuse a version the killed child may have started

        let d = FsDriver::open(dir.path()).unwrap();
        for path in d.list(None).await.unwrap() {
            let data = d.get(&path, None).await.unwrap();
            check_object(path.as_str(), &data);
            verified += 1;
        }
        for (path, acked) in last {
            let got = d.get(&DriverPath::new(&path).unwrap(), None).await;
            match acked {
                Some(version) => {
                    let data = got.unwrap_or_else(|e| {
                        panic!("round {round}: acked {path} v{version} lost: {e}")
                    });
                    // A later, unacknowledged commit may have landed too.
                    assert!(
                        check_object(&path, &data) >= version,
                        "round {round}: {path} went back"
                    );
                }
                None => assert!(got.is_err(), "round {round}: deleted {path} is back"),
            }
        }
    }
    eprintln!("verified {verified} objects over 20 kills; last version {next_version}");
    assert!(
        verified > 20,
        "only {verified} objects were checked: the child barely ran"
    );
}
