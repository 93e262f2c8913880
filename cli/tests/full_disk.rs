//! The user's reproduction of a full disk, through the CLI on a real file
//! system (DESIGN §7, invariant 11): imports fill a small tmpfs until one is
//! refused for space; `ocistore rm` and `ocistore gc --delay 0s` still work
//! on the completely full disk, and an import succeeds again afterwards.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use testkit::{Tmpfs, oci, pattern};

fn ocistore(root: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ocistore"))
        .arg("--root")
        .arg(root)
        .env("OCISTORE_BACKEND", "fs")
        .args(args)
        .output()
        .unwrap()
}

fn ok(root: &Path, args: &[&str]) -> String {
    let out = ocistore(root, args);
    assert!(
        out.status.success(),
        "ocistore {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// An OCI layout holding one image tagged `v1` with a `layer_bytes` layer.
fn layout(dir: &Path, seed: u64, layer_bytes: usize) -> PathBuf {
    let write = |blob: &oci::Blob| {
        let p = dir.join("blobs/sha256").join(&*blob.0.hex());
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, &blob.1).unwrap();
    };
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let config = oci::blob(format!(r#"{{"seed":{seed}}}"#));
    let layer = oci::blob(pattern(seed, layer_bytes));
    let manifest = oci::Image::new(&config, std::slice::from_ref(&layer)).build();
    for b in [
        &config,
        &layer,
        &(manifest.digest.clone(), manifest.bytes.clone()),
    ] {
        write(b);
    }
    let index = oci::Index::new(vec![manifest.descriptor().tagged("v1")]).build();
    fs::write(dir.join("index.json"), index.bytes).unwrap();
    dir.to_owned()
}

#[test]
fn rm_and_gc_work_on_a_completely_full_disk_and_imports_resume() {
    let disk = Tmpfs::mount(8 << 20);
    let root = disk.path().join("root");
    let sources = tempfile::tempdir().unwrap();
    ok(&root, &["init"]);

    // Fill the disk with images of distinct 700 KB layers.
    let mut imported = 0;
    let refusal = loop {
        let src = layout(
            &sources.path().join(format!("app{imported}")),
            imported,
            700_000,
        );
        let out = ocistore(
            &root,
            &["import", &format!("app{imported}"), src.to_str().unwrap()],
        );
        if !out.status.success() {
            break String::from_utf8_lossy(&out.stderr).into_owned();
        }
        imported += 1;
        assert!(imported < 100, "8 MiB never filled up");
    };
    assert!(imported >= 3, "only {imported} imports before: {refusal}");
    assert!(refusal.contains("no space"), "{refusal}");
    // What the refused import left free, taken too: 0 bytes free.
    let filler = disk.path().join("filler");
    let mut f = fs::File::create(&filler).unwrap();
    let chunk = vec![0u8; 4096];
    while std::io::Write::write_all(&mut f, &chunk).is_ok() {}
    drop(f);
    let probe = fs::write(disk.path().join("probe"), b"x");
    assert!(probe.is_err(), "the disk still takes a byte");

    // Removals on the full disk: a tag, then GC of what it leaves.
    ok(&root, &["rm", "app0:v1"]);
    ok(&root, &["rm", "app1:v1"]);
    let gc = ok(&root, &["--json", "gc", "--delay", "0s"]);
    let report: serde_json::Value = serde_json::from_str(&gc).unwrap();
    assert!(
        report["bytes_freed"].as_u64().unwrap() >= 1_400_000,
        "{report}"
    );

    // The same disk takes an image again, without anything restarted.
    let src = layout(&sources.path().join("after"), 1000, 700_000);
    ok(&root, &["import", "after", src.to_str().unwrap()]);
    ok(&root, &["fsck"]);
    let tags = ok(&root, &["tags", "after"]);
    assert!(tags.contains("v1"), "{tags}");
}
