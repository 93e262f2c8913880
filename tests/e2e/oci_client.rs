//! A real client: the `oci-client` crate (the ORAS project's Rust client)
//! pushes an image, pushes a referrer (an artifact whose `subject` is the
//! image) and lists it through the referrers API, with and without an
//! `artifactType` filter, mounts the image's blobs into another repository,
//! and pulls both copies back byte for byte. Plain HTTP (`ClientProtocol::Http`).

use std::collections::BTreeMap;

use e2e::Registry;
use engine::{LayoutKind, LockPolicy};
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::manifest::{
    IMAGE_LAYER_GZIP_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE, OciDescriptor, OciImageManifest, OciManifest,
};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

const SBOM: &str = "application/vnd.example.sbom.v1+json";
const OTHER: &str = "application/vnd.example.other.v1";

fn client() -> Client {
    // Another test may have installed it already. (Deprecated for its lack
    // of post-quantum key exchange, which plain HTTP never uses.)
    #[allow(deprecated)]
    let _ = rustls::crypto::ring::default_provider().install_default();
    Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..ClientConfig::default()
    })
}

fn descriptor(media_type: &str, data: &[u8]) -> OciDescriptor {
    OciDescriptor {
        media_type: media_type.to_owned(),
        digest: engine::Digest::sha256(data).to_string(),
        size: data.len() as i64,
        ..OciDescriptor::default()
    }
}

async fn round_trip(layout: LayoutKind) {
    let reg = Registry::start_with(e2e::Backend::Fs, layout, LockPolicy::Striped).await;
    let host = reg.addr.to_string();
    let c = client();
    let auth = RegistryAuth::Anonymous;

    // An image of two layers (one bigger than the engine's upload piece),
    // pushed the client's way (POST, PATCH chunks, PUT).
    let layers = vec![
        ImageLayer::oci_v1_gzip(vec![7u8; 3 << 20], None),
        ImageLayer::oci_v1_gzip(b"a small layer".to_vec(), None),
    ];
    let config = Config::oci_v1(br#"{"architecture":"amd64","os":"linux"}"#.to_vec(), None);
    let image = Reference::with_tag(host.clone(), "lib/app".into(), "v1".into());
    let pushed = c
        .push(&image, &layers, config.clone(), &auth, None)
        .await
        .expect("push the image");
    assert!(
        pushed.manifest_url.contains("/v2/lib/app/manifests/"),
        "{}",
        pushed.manifest_url
    );
    let (manifest, image_digest) = c
        .pull_image_manifest(&image, &auth)
        .await
        .expect("manifest");
    assert_eq!(manifest.layers.len(), 2);

    // A referrer: an SBOM artifact whose subject is the image.
    let sbom = br#"{"packages":[]}"#.to_vec();
    let empty_config = b"{}".to_vec();
    let (image_bytes, _) = c
        .pull_manifest_raw(&image, &auth, &[OCI_IMAGE_MEDIA_TYPE])
        .await
        .expect("raw manifest");
    let subject = OciDescriptor {
        digest: image_digest.clone(),
        ..descriptor(OCI_IMAGE_MEDIA_TYPE, &image_bytes)
    };
    assert_eq!(subject.digest, descriptor("", &image_bytes).digest);
    let referrer_ref = Reference::with_tag(host.clone(), "lib/app".into(), "sbom".into());
    c.push_blob(&referrer_ref, sbom.clone(), &descriptor(SBOM, &sbom).digest)
        .await
        .expect("sbom blob");
    c.push_blob(
        &referrer_ref,
        empty_config.clone(),
        &descriptor("application/vnd.oci.empty.v1+json", &empty_config).digest,
    )
    .await
    .expect("empty config");
    let referrer = OciImageManifest {
        schema_version: 2,
        media_type: Some(OCI_IMAGE_MEDIA_TYPE.into()),
        config: descriptor("application/vnd.oci.empty.v1+json", &empty_config),
        layers: vec![descriptor(SBOM, &sbom)],
        subject: Some(subject),
        artifact_type: Some(SBOM.into()),
        annotations: Some(BTreeMap::from([("org.example.kind".into(), "sbom".into())])),
    };
    c.push_manifest(&referrer_ref, &OciManifest::Image(referrer))
        .await
        .expect("push the referrer");
    let (_, referrer_digest) = c
        .pull_image_manifest(&referrer_ref, &auth)
        .await
        .expect("referrer manifest");

    let by_digest = Reference::with_digest(host.clone(), "lib/app".into(), image_digest.clone());
    for (filter, expected) in [(None, 1), (Some(SBOM), 1), (Some(OTHER), 0)] {
        let index = c
            .pull_referrers(&by_digest, filter)
            .await
            .unwrap_or_else(|e| panic!("referrers {filter:?}: {e}"));
        assert_eq!(index.manifests.len(), expected, "filter {filter:?}");
        if let Some(entry) = index.manifests.first() {
            assert_eq!(entry.digest, referrer_digest);
            assert_eq!(entry.artifact_type.as_deref(), Some(SBOM));
            assert_eq!(
                entry
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get("org.example.kind")),
                Some(&"sbom".to_owned())
            );
        }
    }

    // Cross-repository mounts of every blob, then the same manifest.
    let copy = Reference::with_tag(host.clone(), "team/copy".into(), "v1".into());
    for d in std::iter::once(&manifest.config).chain(&manifest.layers) {
        c.mount_blob(&copy, &image, &d.digest)
            .await
            .unwrap_or_else(|e| panic!("mount {}: {e}", d.digest));
    }
    c.push_manifest(&copy, &OciManifest::Image(manifest.clone()))
        .await
        .expect("manifest over mounted blobs");

    // Both copies come back byte for byte.
    for reference in [&image, &copy] {
        let pulled = c
            .pull(reference, &auth, vec![IMAGE_LAYER_GZIP_MEDIA_TYPE])
            .await
            .unwrap_or_else(|e| panic!("pull {reference}: {e}"));
        assert_eq!(pulled.digest.as_deref(), Some(image_digest.as_str()));
        assert!(
            pulled.config.data == config.data,
            "{reference}: config bytes differ"
        );
        // The client downloads layers concurrently and keeps them in
        // arrival order: compare the multisets of their bytes' digests.
        let digests = |ls: &[ImageLayer]| {
            let mut d: Vec<String> = ls
                .iter()
                .map(|l| engine::Digest::sha256(&l.data).to_string())
                .collect();
            d.sort();
            d
        };
        assert_eq!(
            digests(&pulled.layers),
            digests(&layers),
            "{reference}: layer bytes"
        );
        let mut sizes: Vec<usize> = pulled.layers.iter().map(|l| l.data.len()).collect();
        sizes.sort();
        assert_eq!(sizes, [13, 3 << 20]);
    }
}

#[rtokio::test(crate = "rtokio", flavor = "multi_thread", worker_threads = 2)]
async fn oci_client_push_referrers_mount_pull_blobstore() {
    round_trip(LayoutKind::Blobstore).await;
}

#[rtokio::test(crate = "rtokio", flavor = "multi_thread", worker_threads = 2)]
async fn oci_client_push_referrers_mount_pull_legacy() {
    round_trip(LayoutKind::Legacy).await;
}
