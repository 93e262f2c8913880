//! OCI documents for tests: image manifests, indexes and referrers, built
//! from blobs instead of written by hand.
//!
//! ```
//! use testkit::oci::{self, Image, Index};
//!
//! let config = oci::blob(&b"{}"[..]);
//! let layer = oci::blob(testkit::pattern(1, 100));
//! let image = Image::new(&config, &[layer]).build();
//! let index = Index::new(vec![image.descriptor().platform("amd64", "linux")]).build();
//! assert_eq!(index.digest, engine::Digest::sha256(&index.bytes));
//! ```
//!
//! # The bytes are part of the contract
//!
//! The simulator's final-state hashes cover manifest bytes, so the output
//! must not move: compact JSON, every object's keys in alphabetical order
//! (what `serde_json::json!` gave the hand-written manifests this replaces,
//! since the workspace does not turn on serde_json's `preserve_order`).
//! The structs below declare their fields in that order, so the output does
//! not depend on that feature; `tests::bytes_are_stable` pins it.

use std::collections::BTreeMap;

use bytes::Bytes;
use engine::Digest;
use engine::oci::{REF_NAME, media};
use serde::{Serialize, Serializer};

/// A blob and its digest, as the store takes it.
pub type Blob = (Digest, Bytes);

/// `data` with its sha256 digest.
pub fn blob(data: impl Into<Bytes>) -> Blob {
    let data = data.into();
    (Digest::sha256(&data), data)
}

fn digest_string<S: Serializer>(d: &Digest, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(d)
}

/// A descriptor. Fields in alphabetical order: see the module docs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Desc {
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(rename = "artifactType", skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(serialize_with = "digest_string")]
    pub digest: Digest,
    #[serde(rename = "mediaType")]
    pub media_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    pub size: u64,
}

/// An index entry's platform.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
}

impl Desc {
    pub fn new(media_type: &str, digest: Digest, size: usize) -> Desc {
        Desc {
            annotations: BTreeMap::new(),
            artifact_type: None,
            digest,
            media_type: media_type.to_owned(),
            platform: None,
            size: size as u64,
        }
    }

    /// `blob` described as `media_type`.
    pub fn of(media_type: &str, (digest, data): &Blob) -> Desc {
        Desc::new(media_type, digest.clone(), data.len())
    }

    pub fn platform(mut self, architecture: &str, os: &str) -> Desc {
        self.platform = Some(Platform {
            architecture: architecture.to_owned(),
            os: os.to_owned(),
        });
        self
    }

    pub fn annotation(mut self, key: &str, value: &str) -> Desc {
        self.annotations.insert(key.to_owned(), value.to_owned());
        self
    }

    /// The tag an OCI layout's `index.json` gives this entry.
    pub fn tagged(self, tag: &str) -> Desc {
        self.annotation(REF_NAME, tag)
    }
}

/// A manifest or index as bytes, with its digest and media type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Built {
    pub media_type: String,
    pub digest: Digest,
    pub bytes: Bytes,
}

impl Built {
    fn of(media_type: &str, doc: &impl Serialize) -> Built {
        let bytes = Bytes::from(serde_json::to_vec(doc).expect("json"));
        Built {
            media_type: media_type.to_owned(),
            digest: Digest::sha256(&bytes),
            bytes,
        }
    }

    /// What an index entry or a referrer's `subject` says of this document.
    pub fn descriptor(&self) -> Desc {
        Desc::new(&self.media_type, self.digest.clone(), self.bytes.len())
    }
}

/// An image manifest (OCI by default). Fields in alphabetical order.
#[derive(Debug, Clone, Serialize)]
pub struct Image {
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<String, String>,
    #[serde(rename = "artifactType", skip_serializing_if = "Option::is_none")]
    artifact_type: Option<String>,
    config: Desc,
    layers: Vec<Desc>,
    #[serde(rename = "mediaType")]
    media_type: String,
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<Desc>,
}

impl Image {
    /// An OCI image: `config` as an image config, `layers` as gzip layers.
    pub fn new(config: &Blob, layers: &[Blob]) -> Image {
        Image::from_descriptors(
            Desc::of(media::OCI_CONFIG, config),
            layers
                .iter()
                .map(|l| Desc::of(media::OCI_LAYER, l))
                .collect(),
        )
    }

    /// An OCI image over descriptors (other media types, blobs not at hand).
    pub fn from_descriptors(config: Desc, layers: Vec<Desc>) -> Image {
        Image {
            annotations: BTreeMap::new(),
            artifact_type: None,
            config,
            layers,
            media_type: media::OCI_MANIFEST.to_owned(),
            schema_version: 2,
            subject: None,
        }
    }

    /// The manifest's own media type (e.g. [`media::DOCKER_MANIFEST`]).
    pub fn media_type(mut self, media_type: &str) -> Image {
        self.media_type = media_type.to_owned();
        self
    }

    pub fn artifact_type(mut self, artifact_type: &str) -> Image {
        self.artifact_type = Some(artifact_type.to_owned());
        self
    }

    /// Makes this a referrer of `subject`.
    pub fn subject(mut self, subject: Desc) -> Image {
        self.subject = Some(subject);
        self
    }

    pub fn annotation(mut self, key: &str, value: &str) -> Image {
        self.annotations.insert(key.to_owned(), value.to_owned());
        self
    }

    pub fn build(&self) -> Built {
        Built::of(&self.media_type, self)
    }
}

/// An image index (OCI). Fields in alphabetical order.
#[derive(Debug, Clone, Serialize)]
pub struct Index {
    manifests: Vec<Desc>,
    #[serde(rename = "mediaType")]
    media_type: String,
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<Desc>,
}

impl Index {
    /// An index over `manifests` (see [`Built::descriptor`], [`Desc::platform`]).
    pub fn new(manifests: Vec<Desc>) -> Index {
        Index {
            manifests,
            media_type: media::OCI_INDEX.to_owned(),
            schema_version: 2,
            subject: None,
        }
    }

    /// Makes this a referrer of `subject`.
    pub fn subject(mut self, subject: Desc) -> Index {
        self.subject = Some(subject);
        self
    }

    pub fn build(&self) -> Built {
        Built::of(&self.media_type, self)
    }
}

/// The artifact type of [`signature`].
pub const SIGNATURE_TYPE: &str = "application/vnd.example.signature";
/// The media type of a [`signature`]'s one layer.
pub const SIGNATURE_LAYER: &str = "application/vnd.example.signature.v1";

/// A signature artifact over `subject`: the empty config `{}`, one layer
/// holding `signature`. Returns the blobs to push and the manifest.
pub fn signature(subject: Desc, signature: &Blob) -> (Vec<Blob>, Built) {
    let config = blob(&b"{}"[..]);
    let manifest = Image::from_descriptors(
        Desc::of(media::OCI_EMPTY, &config),
        vec![Desc::of(SIGNATURE_LAYER, signature)],
    )
    .artifact_type(SIGNATURE_TYPE)
    .subject(subject)
    .build();
    (vec![config, signature.clone()], manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The simulator's hashes depend on these exact bytes.
    #[test]
    fn bytes_are_stable() {
        let config = blob(&b"{}"[..]);
        let layer = blob(&b"layer"[..]);
        let image = Image::new(&config, std::slice::from_ref(&layer)).build();
        let (cd, ld) = (&config.0, &layer.0);
        assert_eq!(
            std::str::from_utf8(&image.bytes).unwrap(),
            format!(
                r#"{{"config":{{"digest":"{cd}","mediaType":"{}","size":2}},"layers":[{{"digest":"{ld}","mediaType":"{}","size":5}}],"mediaType":"{}","schemaVersion":2}}"#,
                media::OCI_CONFIG,
                media::OCI_LAYER,
                media::OCI_MANIFEST
            )
        );
        let md = &image.digest;
        let n = image.bytes.len();
        let index = Index::new(vec![image.descriptor().platform("amd64", "linux")]).build();
        assert_eq!(
            std::str::from_utf8(&index.bytes).unwrap(),
            format!(
                r#"{{"manifests":[{{"digest":"{md}","mediaType":"{}","platform":{{"architecture":"amd64","os":"linux"}},"size":{n}}}],"mediaType":"{}","schemaVersion":2}}"#,
                media::OCI_MANIFEST,
                media::OCI_INDEX
            )
        );
        let (_, sig) = signature(image.descriptor(), &layer);
        let text = std::str::from_utf8(&sig.bytes).unwrap();
        assert!(
            text.starts_with(&format!(r#"{{"artifactType":"{SIGNATURE_TYPE}","config":"#)),
            "{text}"
        );
        assert!(
            text.ends_with(&format!(
                r#""schemaVersion":2,"subject":{{"digest":"{md}","mediaType":"{}","size":{n}}}}}"#,
                media::OCI_MANIFEST
            )),
            "{text}"
        );
    }

    /// The same bytes as the `json!` manifests the simulator wrote before
    /// (its seeds' hashes were recorded over those): image, index, signature.
    #[test]
    fn bytes_match_the_json_macro() {
        use serde_json::json;
        let desc = |mt: &str, (d, b): &Blob| json!({"mediaType": mt, "digest": d.to_string(), "size": b.len()});
        let bytes = |v: serde_json::Value| Bytes::from(serde_json::to_vec(&v).unwrap());
        let blobs: Vec<Blob> = (0..3)
            .map(|i| blob(crate::pattern(i, 100 + i as usize)))
            .collect();
        let image = Image::new(&blobs[0], &blobs[1..]).build();
        assert_eq!(
            image.bytes,
            bytes(json!({
                "schemaVersion": 2, "mediaType": media::OCI_MANIFEST,
                "config": desc(media::OCI_CONFIG, &blobs[0]),
                "layers": blobs[1..].iter().map(|l| desc(media::OCI_LAYER, l)).collect::<Vec<_>>(),
            }))
        );
        let child = (image.digest.clone(), image.bytes.clone());
        let mut d = desc(media::OCI_MANIFEST, &child);
        d["platform"] = json!({"architecture": "s390x", "os": "linux"});
        let index = Index::new(vec![image.descriptor().platform("s390x", "linux")]).build();
        assert_eq!(
            index.bytes,
            bytes(json!({"schemaVersion": 2, "mediaType": media::OCI_INDEX, "manifests": [d]}))
        );
        let (_, sig) = signature(image.descriptor(), &blobs[2]);
        assert_eq!(
            sig.bytes,
            bytes(json!({
                "schemaVersion": 2, "mediaType": media::OCI_MANIFEST,
                "artifactType": SIGNATURE_TYPE,
                "config": desc(media::OCI_EMPTY, &blob(&b"{}"[..])),
                "layers": [desc(SIGNATURE_LAYER, &blobs[2])],
                "subject": {"mediaType": media::OCI_MANIFEST, "digest": image.digest.to_string(), "size": image.bytes.len()},
            }))
        );
    }
}
