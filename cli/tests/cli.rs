//! The `ocistore` binary end to end on real directories: import an OCI
//! layout (multi-arch index + a single image), export it again, and let an
//! independent tool (skopeo) judge the exported layout.

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use bytes::Bytes;
use engine::Digest;
use testkit::{oci, pattern};

/// The binary, pointed at one root and backend.
struct Root {
    path: PathBuf,
    backend: &'static str,
    /// What else the backend needs: the bucket and keys of `s3`.
    env: Vec<(&'static str, String)>,
}

impl Root {
    fn new(path: PathBuf, backend: &'static str) -> Root {
        Root {
            path,
            backend,
            env: Vec::new(),
        }
    }

    /// A root on a fresh bucket of this process's moto_server, set the way
    /// a user would: the usual `AWS_*` variables and the bucket's.
    fn s3(path: PathBuf) -> Root {
        let moto = testkit::moto::Moto::shared();
        Root {
            path,
            backend: "s3",
            env: vec![
                ("AWS_ENDPOINT_URL", moto.endpoint()),
                ("AWS_ACCESS_KEY_ID", testkit::moto::ACCESS_KEY.into()),
                ("AWS_SECRET_ACCESS_KEY", testkit::moto::SECRET_KEY.into()),
                ("OCISTORE_S3_BUCKET", moto.bucket("cli")),
            ],
        }
    }

    /// The `s3` driver on this root's bucket, to look at what is stored.
    fn s3_driver(&self) -> ocistore_s3::S3Driver {
        let var = |k| self.env.iter().find(|(n, _)| *n == k).unwrap().1.clone();
        ocistore_s3::S3Driver::open(ocistore_s3::S3Config::for_test_server(
            var("AWS_ENDPOINT_URL"),
            var("OCISTORE_S3_BUCKET"),
        ))
        .unwrap()
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_ocistore"));
        c.arg("--root")
            .arg(&self.path)
            .env("OCISTORE_BACKEND", self.backend)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .args(args);
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "ocistore {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn fails(&self, args: &[&str], code: i32) -> String {
        let out = self.run(args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "ocistore {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stderr).unwrap()
    }
}

/// Writes `data` into the layout's blobs, returning it as a blob.
fn write_blob(dir: &Path, data: impl Into<Bytes>) -> oci::Blob {
    let blob = oci::blob(data);
    let p = dir.join("blobs/sha256").join(&*blob.0.hex());
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, &blob.1).unwrap();
    blob
}

/// Writes a manifest or index into the layout's blobs, returning its descriptor.
fn write_doc(dir: &Path, doc: oci::Built) -> oci::Desc {
    write_blob(dir, doc.bytes.clone());
    doc.descriptor()
}

/// An OCI layout with a two-platform index tagged `v1` and an image tagged `solo`.
fn source_layout(dir: &Path) -> String {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let shared = write_blob(dir, pattern(1, 300_000));
    let image = |seed: u64, arch: &str| {
        let config = write_blob(
            dir,
            format!(
                r#"{{"architecture":"{arch}","os":"linux","rootfs":{{"type":"layers","diff_ids":[]}}}}"#
            ),
        );
        let own = write_blob(dir, pattern(seed, 9_000_000));
        write_doc(
            dir,
            oci::Image::new(&config, &[shared.clone(), own]).build(),
        )
    };
    let (amd, arm, solo) = (image(2, "amd64"), image(3, "arm64"), image(4, "amd64"));
    let index = oci::Index::new(vec![
        amd.platform("amd64", "linux"),
        arm.platform("arm64", "linux"),
    ]);
    let index_desc = write_doc(dir, index.build());
    let top = oci::Index::new(vec![index_desc.clone().tagged("v1"), solo.tagged("solo")]);
    fs::write(dir.join("index.json"), top.build().bytes).unwrap();
    index_desc.digest.to_string()
}

fn skopeo(args: &[&str]) -> Output {
    let out = Command::new("skopeo").args(args).output();
    let out = out
        .unwrap_or_else(|e| panic!("skopeo is needed (apt-get install skopeo; .ci/run does): {e}"));
    assert!(
        out.status.success(),
        "skopeo {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Every file below `dir`, with its bytes.
fn tree(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((
                    p.strip_prefix(dir).unwrap().to_path_buf(),
                    fs::read(&p).unwrap(),
                ));
            }
        }
    }
    out.sort();
    out
}

fn round_trip(root: impl FnOnce(PathBuf) -> Root) {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let root = root(tmp.path().join("root"));
    let index_digest = source_layout(&src);
    let path = |name: &str| tmp.path().join(name).to_str().unwrap().to_owned();

    root.ok(&["init", "--layout", "blobstore", "--policy", "striped"]);
    root.ok(&["init", "--layout", "blobstore", "--policy", "striped"]);
    let err = root.fails(&["init", "--layout", "legacy"], 4);
    assert!(err.contains("layout blobstore"), "{err}");

    let report: serde_json::Value =
        serde_json::from_str(&root.ok(&["--json", "import", "org/app", &path("src")])).unwrap();
    assert_eq!(report["manifests"], 4, "{report}");
    assert_eq!(
        report["blobs_uploaded"], 6,
        "shared layer uploaded once: {report}"
    );
    let tags: Vec<String> = serde_json::from_str(&root.ok(&["--json", "tags", "org/app"])).unwrap();
    assert_eq!(tags, ["solo", "v1"]);
    assert_eq!(root.ok(&["ls"]).trim(), "org/app");

    // Export the multi-arch index; skopeo must accept the layout and agree on the bytes.
    root.ok(&["export", "org/app:v1", &path("out")]);
    let raw = skopeo(&["inspect", "--raw", &format!("oci:{}:v1", path("out"))]).stdout;
    assert_eq!(Digest::sha256(&raw).to_string(), index_digest);
    skopeo(&[
        "copy",
        "--all",
        &format!("oci:{}:v1", path("out")),
        &format!("oci:{}:v1", path("copy")),
    ]);

    // Import the export into another repo and export again: identical layouts.
    root.ok(&["import", "mirror:v1", &path("out")]);
    root.ok(&["export", "mirror:v1", &path("again")]);
    assert!(
        tree(&tmp.path().join("out")) == tree(&tmp.path().join("again")),
        "export -> import -> export changed the layout"
    );

    let stats: serde_json::Value = serde_json::from_str(&root.ok(&["--json", "stats"])).unwrap();
    assert_eq!(stats["repositories"], 2);
    assert!(
        stats["stored_bytes"].as_u64().unwrap() < stats["logical_bytes"].as_u64().unwrap(),
        "{stats}"
    );
    root.ok(&["fsck"]);

    // cat, rm and their refusals.
    let shared = format!("org/app@{}", Digest::sha256(&pattern(1, 300_000)));
    assert_eq!(
        root.run(&["cat", &shared]).stdout,
        pattern(1, 300_000).to_vec()
    );
    let err = root.fails(&["rm-blob", &shared], 4);
    assert!(err.contains("DENIED"), "{err}");
    root.ok(&["rm", "org/app:solo"]);
    root.fails(&["rm", "org/app:solo"], 3);
    root.ok(&["fsck"]);

    // GC: a 1h delay keeps the untagged image; a dry run names it; delay 0 takes it.
    let kept: serde_json::Value = serde_json::from_str(&root.ok(&["--json", "gc"])).unwrap();
    assert_eq!(kept["items"].as_array().unwrap().len(), 0, "{kept}");
    let dry: serde_json::Value =
        serde_json::from_str(&root.ok(&["--json", "gc", "--delay", "0s", "--dry-run"])).unwrap();
    let real: serde_json::Value =
        serde_json::from_str(&root.ok(&["--json", "gc", "--delay", "0s"])).unwrap();
    assert!(!dry["items"].as_array().unwrap().is_empty());
    assert_eq!(
        dry["items"].as_array().unwrap().len(),
        real["items"].as_array().unwrap().len(),
        "{dry} vs {real}"
    );
    assert!(real["bytes_freed"].as_u64().unwrap() > 9_000_000, "{real}");
    root.fails(&["gc", "--delay", "soon"], 2);
    root.ok(&["fsck"]);
    root.ok(&["export", "org/app:v1", &path("after-gc")]);
}

#[test]
fn import_export_round_trip_fs() {
    round_trip(|p| Root::new(p, "fs"));
}

#[test]
fn import_export_round_trip_object() {
    round_trip(|p| Root::new(p, "object"));
}

#[test]
fn import_export_round_trip_s3() {
    round_trip(Root::s3);
}

#[test]
fn fsck_reports_corruption_and_bad_input_gets_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let root = Root::new(tmp.path().join("root"), "fs");
    source_layout(&src);
    let src = src.to_str().unwrap();
    let err = root.fails(&["ls"], 2);
    assert!(err.contains("ocistore init"), "{err}");
    root.ok(&["init"]);
    root.ok(&["import", "app", src]);

    let missing = tmp.path().join("missing");
    let x = tmp.path().join("x");
    for (args, code) in [
        (vec!["tags", "../etc"], 2),
        (vec!["tags", "_blobstore"], 2),
        (vec!["tags", "nope"], 3),
        (vec!["cat", "app@sha256:zz"], 2),
        (vec!["cat", "app:latest"], 2),
        (vec!["export", "app:nope", x.to_str().unwrap()], 3),
        (vec!["import", "app", missing.to_str().unwrap()], 2),
        (vec!["import", "app:nope", src], 2),
    ] {
        root.fails(&args, code);
    }
    root.ok(&["fsck"]);

    // Bit rot in the blobstore: fsck finds it and exits 1.
    let shared = Digest::sha256(&pattern(1, 300_000));
    let victim = root
        .path
        .join("_blobstore/blobs/sha256")
        .join(&*shared.hex());
    let mut bytes = fs::read(&victim).unwrap();
    bytes[10] ^= 1;
    fs::write(&victim, bytes).unwrap();
    let out = root.run(&["--json", "fsck"]);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["errors"].as_u64().unwrap() > 0, "{report}");
    assert!(
        report["findings"].to_string().contains(&*shared.hex()),
        "{report}"
    );
}

/// SIGKILL's number on Linux (and every Unix this runs on).
const SIGKILL: i32 = 9;

/// SIGKILL `ocistore migrate` at varying moments, re-run until it completes:
/// fsck is clean and every export equals the export taken before migrating.
#[test]
fn migrate_survives_sigkill_at_random_moments() {
    let tmp = tempfile::tempdir().unwrap();
    migrate_survives_sigkill(&tmp, Root::new(tmp.path().join("root"), "fs"), |_| {});
}

/// The same on S3 (moto), where the legacy layout dedupes with 0-byte
/// markers: afterwards no marker is left and each digest is stored once.
#[test]
fn migrate_on_s3_survives_sigkill_and_leaves_no_markers() {
    let tmp = tempfile::tempdir().unwrap();
    let root = Root::s3(tmp.path().join("root"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let markers = |root: &Root| -> Vec<String> {
        rt.block_on(stored_objects(root))
            .into_iter()
            .filter(|(path, data)| data.is_empty() && !path.contains(EMPTY_SHA256))
            .map(|(path, _)| path)
            .collect()
    };
    let root = migrate_survives_sigkill(&tmp, root, |legacy| {
        let before = markers(legacy);
        assert!(
            before.len() >= 4,
            "the legacy root has only {before:?} as markers"
        );
    });
    assert_eq!(markers(&root), Vec::<String>::new(), "markers left");
    let objects = rt.block_on(stored_objects(&root));
    let mut copies = std::collections::BTreeMap::<String, Vec<&str>>::new();
    for (path, data) in &objects {
        let hex = Digest::sha256(data).to_string().replace("sha256:", "");
        if path.contains(&hex) {
            copies.entry(hex).or_default().push(path);
        }
    }
    let doubled: Vec<_> = copies.iter().filter(|(_, paths)| paths.len() > 1).collect();
    assert!(
        doubled.is_empty(),
        "digests stored more than once: {doubled:#?}"
    );
    assert!(
        copies.len() >= 6,
        "found only {} stored digests",
        copies.len()
    );
}

const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Every object in the root's bucket, with its bytes.
async fn stored_objects(root: &Root) -> Vec<(String, Bytes)> {
    use engine::driver::Driver;
    let d = root.s3_driver();
    let mut out = Vec::new();
    for path in d.list(None).await.unwrap() {
        out.push((path.to_string(), d.get(&path, None).await.unwrap()));
    }
    out
}

/// Imports a legacy root with three repositories sharing blobs, kills
/// `ocistore migrate` until a run completes, checks the result; returns
/// the root for the backend's own checks.
fn migrate_survives_sigkill(
    tmp: &tempfile::TempDir,
    root: Root,
    check_legacy: impl FnOnce(&Root),
) -> Root {
    let src = tmp.path().join("src");
    source_layout(&src);
    root.ok(&["init", "--layout", "legacy"]);
    let targets = ["org/app:v1", "org/app:solo", "mirror:v1", "team/x:solo"];
    root.ok(&["import", "org/app", src.to_str().unwrap()]);
    root.ok(&["import", "mirror:v1", src.to_str().unwrap()]);
    root.ok(&["import", "team/x:solo", src.to_str().unwrap()]);
    let export_all = |label: &str| -> Vec<Vec<(PathBuf, Vec<u8>)>> {
        targets
            .iter()
            .map(|t| {
                let dir = tmp
                    .path()
                    .join(format!("{label}-{}", t.replace(['/', ':'], "_")));
                root.ok(&["export", t, dir.to_str().unwrap()]);
                tree(&dir)
            })
            .collect()
    };
    let before = export_all("before");
    check_legacy(&root);

    let migrate = || root.command(&["--json", "migrate"]);
    let (interrupted, finished) = kill_until_done(migrate, tmp.path()).unwrap();
    if !finished {
        root.ok(&["migrate"]);
    }
    root.ok(&["migrate"]); // idempotent once done
    assert!(
        interrupted >= 3,
        "only {interrupted} runs were interrupted: the test did not test much"
    );
    root.ok(&["fsck"]);
    let after = export_all("after");
    assert!(before == after, "exports differ after migration");
    let stats: serde_json::Value = serde_json::from_str(&root.ok(&["--json", "stats"])).unwrap();
    assert_eq!(stats["layout"], "blobstore");
    eprintln!("migration interrupted {interrupted} times before completing");
    root
}

/// Runs `command` up to 40 times, SIGKILLing each run at a varying moment,
/// until a run completes. Returns the number of runs killed and whether one
/// completed; fails on a run that ended with an error before the kill.
fn kill_until_done(command: impl Fn() -> Command, logs: &Path) -> Result<(u32, bool), String> {
    let mut interrupted = 0;
    for attempt in 0..40u64 {
        let stderr_path = logs.join(format!("attempt-{attempt}.stderr"));
        let mut child = command()
            .stdout(std::process::Stdio::null())
            .stderr(fs::File::create(&stderr_path).unwrap())
            .spawn()
            .unwrap();
        // Spread over the whole run (about a second in a debug build).
        std::thread::sleep(std::time::Duration::from_millis(5 + (attempt * 173) % 1500));
        // Kill it unless it has ended; either way, find out how it ended.
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
        }
        let status = child.wait().unwrap();
        match status.signal() {
            Some(SIGKILL) => interrupted += 1,
            // Ended before the kill: only a completed run may.
            _ if status.success() => return Ok((interrupted, true)),
            _ => {
                return Err(format!(
                    "attempt {attempt}: ended by itself with {status}, not by our SIGKILL: {}",
                    fs::read_to_string(&stderr_path).unwrap()
                ));
            }
        }
    }
    Ok((interrupted, false))
}

/// [`kill_until_done`] fails on a run that exits with an error.
#[test]
fn a_run_failing_before_the_kill_is_not_an_interruption() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no-store-here");
    let migrate = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_ocistore"));
        c.arg("--root").arg(&missing).arg("migrate");
        c
    };
    let err = kill_until_done(migrate, tmp.path()).expect_err("a failing migrate passed");
    assert!(err.contains("not by our SIGKILL"), "{err}");
}
