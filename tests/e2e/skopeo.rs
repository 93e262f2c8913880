//! A real client: skopeo copies an OCI layout into the registry and back,
//! and every blob comes back byte for byte. skopeo must be installed: the
//! test fails (never skips) without it. Run on both layouts.

use std::path::Path;
use std::process::Command;

use e2e::{Backend, Registry, image_manifest};
use engine::{Digest, LayoutKind, LockPolicy};
use testkit::oci;

fn write_blob(dir: &Path, data: &[u8]) -> Digest {
    let d = Digest::sha256(data);
    let hex = d.to_string()["sha256:".len()..].to_owned();
    std::fs::write(dir.join("blobs/sha256").join(hex), data).unwrap();
    d
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// `data` as a valid gzip stream of stored (uncompressed) deflate blocks:
/// skopeo compresses layers it sees as uncompressed, which would change
/// the digests this test compares.
fn gzip_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    let mut blocks = data.chunks(65_535).peekable();
    if blocks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(block) = blocks.next() {
        out.push(u8::from(blocks.peek().is_none()));
        let len = block.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(block);
    }
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

/// An OCI image layout with one image (config + two layers) tagged `tag`.
pub(crate) fn make_layout(dir: &Path, tag: &str) -> Digest {
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let layer1 = gzip_stored(
        &(0..200_000u32)
            .map(|i| (i * 7 % 256) as u8)
            .collect::<Vec<_>>(),
    );
    let layer2 = gzip_stored(&b"second layer".repeat(1000));
    let cd = write_blob(dir, config);
    let l1 = write_blob(dir, &layer1);
    let l2 = write_blob(dir, &layer2);
    let manifest = image_manifest(
        (&cd, config.len()),
        &[(&l1, layer1.len()), (&l2, layer2.len())],
    )
    .build();
    let md = write_blob(dir, &manifest.bytes);
    let index = oci::Index::new(vec![manifest.descriptor().tagged(tag)]).build();
    std::fs::write(dir.join("index.json"), &index.bytes).unwrap();
    md
}

pub(crate) fn skopeo(args: &[&str]) {
    let out = match Command::new("skopeo").args(args).output() {
        Ok(out) => out,
        Err(e) => panic!(
            "cannot run skopeo ({e}): install it with `sudo apt-get install -y skopeo` (Debian/Ubuntu)"
        ),
    };
    assert!(
        out.status.success(),
        "skopeo {}: {}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn skopeo_round_trip(layout: LayoutKind) {
    let reg = Registry::start_with(Backend::Fs, layout, LockPolicy::Striped).await;
    let work = tempfile::tempdir().unwrap();
    let (src, back) = (work.path().join("src"), work.path().join("back"));
    let manifest = make_layout(&src, "v1");
    let dest = format!("docker://{}/lab/skopeo:v1", reg.addr);
    let (src_ref, back_ref) = (
        format!("oci:{}:v1", src.display()),
        format!("oci:{}:v1", back.display()),
    );
    let (dest2, src_ref2, back_ref2) = (dest.clone(), src_ref.clone(), back_ref.clone());
    rtokio::task::spawn_blocking(move || {
        skopeo(&["copy", "--dest-tls-verify=false", &src_ref2, &dest2]);
        skopeo(&["copy", "--src-tls-verify=false", &dest2, &back_ref2]);
    })
    .await
    .unwrap();
    // The registry holds the manifest as pushed (skopeo does not convert an OCI image).
    let c = reg.client();
    let r = c.get("/v2/lab/skopeo/manifests/v1").await;
    assert_eq!(r.status, hyper::StatusCode::OK);
    assert_eq!(
        Digest::sha256(&r.body),
        manifest,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    // Every blob came back byte for byte.
    let mut compared = 0;
    for entry in std::fs::read_dir(src.join("blobs/sha256")).unwrap() {
        let entry = entry.unwrap();
        let returned = back.join("blobs/sha256").join(entry.file_name());
        assert_eq!(
            std::fs::read(entry.path()).unwrap(),
            std::fs::read(&returned).unwrap_or_else(|e| panic!("{}: {e}", returned.display())),
        );
        compared += 1;
    }
    assert_eq!(compared, 4);
    let _ = (src_ref, back_ref, dest);
}

#[rtokio::test(crate = "rtokio", flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_round_trip_legacy() {
    skopeo_round_trip(LayoutKind::Legacy).await;
}

#[rtokio::test(crate = "rtokio", flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_round_trip_blobstore() {
    skopeo_round_trip(LayoutKind::Blobstore).await;
}
