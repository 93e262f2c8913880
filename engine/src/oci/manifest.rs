//! Manifests, indexes and descriptors: parsed from hostile JSON, validated,
//! and reduced to what the store needs (what a manifest references).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::StoreError;

/// Media types the store understands.
pub mod media {
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
    pub const OCI_LAYOUT_FILE: &str = "oci-layout";
    pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

    /// Manifest media types accepted on push.
    pub const MANIFESTS: [&str; 4] = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST];

    pub fn is_index(media_type: &str) -> bool {
        media_type == OCI_INDEX || media_type == DOCKER_LIST
    }
}

/// Largest manifest accepted (CNCF distribution's default).
pub const MAX_MANIFEST_SIZE: usize = 4 << 20;

/// The annotation that turns an `index.json` row into a tag.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// A content descriptor, as it appears in manifests, indexes and `index.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    #[serde(with = "digest_serde")]
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Kept as-is so an index row round-trips (multi-arch `platform`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<serde_json::Value>,
}

pub(crate) mod digest_serde {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::digest::Digest;

    pub fn serialize<S: Serializer>(d: &Digest, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(d)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Digest, D::Error> {
        let s = <&str>::deserialize(d)?;
        Digest::parse(s).map_err(serde::de::Error::custom)
    }
}

/// What kind of manifest, and what it points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestKind {
    Image {
        config: Descriptor,
        layers: Vec<Descriptor>,
    },
    Index {
        manifests: Vec<Descriptor>,
    },
}

/// A validated manifest or index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub media_type: String,
    pub kind: ManifestKind,
    pub subject: Option<Descriptor>,
    pub artifact_type: Option<String>,
    pub annotations: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: Option<u32>,
    media_type: Option<String>,
    artifact_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Descriptor>>,
    subject: Option<Descriptor>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

fn invalid(reason: impl Into<String>) -> StoreError {
    StoreError::ManifestInvalid {
        reason: reason.into(),
    }
}

/// `type/subtype`, printable, bounded: a media type is echoed back to
/// clients and written into index.json, so it must be harmless.
fn check_media_type(mt: &str) -> Result<(), StoreError> {
    let ok = mt.len() <= 255
        && mt
            .split_once('/')
            .is_some_and(|(a, b)| !a.is_empty() && !b.is_empty())
        && mt.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(invalid(format!("bad media type {:?}", truncate(mt))))
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

impl Manifest {
    /// Parses and validates a pushed manifest whose declared media type
    /// (the `Content-Type`) is `declared`.
    pub fn parse(declared: &str, body: &[u8]) -> Result<Manifest, StoreError> {
        if body.is_empty() {
            return Err(invalid("empty body"));
        }
        if body.len() > MAX_MANIFEST_SIZE {
            return Err(StoreError::SizeInvalid {
                reason: format!(
                    "manifest of {} bytes exceeds {MAX_MANIFEST_SIZE}",
                    body.len()
                ),
            });
        }
        if !media::MANIFESTS.contains(&declared) {
            return Err(invalid(format!(
                "unsupported manifest media type {:?}",
                truncate(declared)
            )));
        }
        // serde_json refuses nesting deeper than 128 levels, so a "JSON bomb"
        // of brackets fails here instead of exhausting the stack; the size
        // cap bounds everything else.
        let raw: RawManifest = serde_json::from_slice(body)
            .map_err(|e| invalid(format!("not a valid manifest: {e}")))?;
        if raw.schema_version != Some(2) {
            return Err(invalid("schemaVersion must be 2"));
        }
        if let Some(mt) = &raw.media_type
            && mt != declared
        {
            return Err(invalid(format!(
                "body says {:?} but was pushed as {declared:?}",
                truncate(mt)
            )));
        }
        if declared.contains("docker") && raw.media_type.is_none() {
            return Err(invalid("docker manifests must carry mediaType"));
        }
        if let Some(at) = &raw.artifact_type {
            check_media_type(at)?;
        }
        let descriptors = raw
            .config
            .iter()
            .chain(raw.layers.iter().flatten())
            .chain(raw.manifests.iter().flatten())
            .chain(raw.subject.iter());
        for d in descriptors {
            check_media_type(&d.media_type)?;
        }
        let kind = if media::is_index(declared) {
            if raw.config.is_some() || raw.layers.is_some() {
                return Err(invalid("an index has no config or layers"));
            }
            ManifestKind::Index {
                manifests: raw
                    .manifests
                    .ok_or_else(|| invalid("an index needs manifests"))?,
            }
        } else {
            if raw.manifests.is_some() {
                return Err(invalid("an image manifest has no manifests list"));
            }
            ManifestKind::Image {
                config: raw
                    .config
                    .ok_or_else(|| invalid("an image manifest needs a config"))?,
                layers: raw
                    .layers
                    .ok_or_else(|| invalid("an image manifest needs layers"))?,
            }
        };
        Ok(Manifest {
            media_type: declared.to_owned(),
            kind,
            subject: raw.subject,
            artifact_type: raw.artifact_type,
            annotations: raw.annotations,
        })
    }

    /// The blobs an image manifest needs in its repository (config, layers).
    pub fn blobs(&self) -> Vec<&Descriptor> {
        match &self.kind {
            ManifestKind::Image { config, layers } => {
                std::iter::once(config).chain(layers).collect()
            }
            ManifestKind::Index { .. } => Vec::new(),
        }
    }

    /// The manifests an index lists.
    pub fn children(&self) -> &[Descriptor] {
        match &self.kind {
            ManifestKind::Index { manifests } => manifests,
            ManifestKind::Image { .. } => &[],
        }
    }

    /// The artifact type the referrers API reports: `artifactType`, else the
    /// config's media type (OCI image-spec 1.1).
    pub fn effective_artifact_type(&self) -> Option<&str> {
        self.artifact_type.as_deref().or(match &self.kind {
            ManifestKind::Image { config, .. } => Some(config.media_type.as_str()),
            ManifestKind::Index { .. } => None,
        })
    }
}

/// A repository's `index.json`: one row per tag, plus untagged rows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageIndex {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}

impl Default for ImageIndex {
    fn default() -> ImageIndex {
        ImageIndex {
            schema_version: 2,
            media_type: Some(media::OCI_INDEX.to_owned()),
            manifests: Vec::new(),
        }
    }
}

impl Descriptor {
    pub fn tag(&self) -> Option<&str> {
        self.annotations.get(REF_NAME).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(mt: &str, data: &[u8]) -> serde_json::Value {
        serde_json::json!({"mediaType": mt, "digest": Digest::sha256(data).to_string(), "size": data.len()})
    }

    #[test]
    fn image_and_index_parse() {
        let m = serde_json::json!({
            "schemaVersion": 2, "mediaType": media::OCI_MANIFEST,
            "config": desc(media::OCI_CONFIG, b"{}"), "layers": [desc(media::OCI_LAYER, b"l1")],
        });
        let m = Manifest::parse(media::OCI_MANIFEST, m.to_string().as_bytes()).unwrap();
        assert_eq!(m.blobs().len(), 2);
        assert_eq!(m.effective_artifact_type(), Some(media::OCI_CONFIG));
        let i =
            serde_json::json!({"schemaVersion": 2, "manifests": [desc(media::OCI_MANIFEST, b"m")]});
        let i = Manifest::parse(media::OCI_INDEX, i.to_string().as_bytes()).unwrap();
        assert_eq!(i.children().len(), 1);
    }

    #[test]
    fn hostile_manifests_are_refused() {
        let good_desc = desc(media::OCI_LAYER, b"x");
        let bomb = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let cases: Vec<(&str, Vec<u8>)> = vec![
            (media::OCI_MANIFEST, b"".to_vec()),
            (media::OCI_MANIFEST, b"not json".to_vec()),
            (media::OCI_MANIFEST, bomb.into_bytes()),
            (media::OCI_MANIFEST, vec![b' '; MAX_MANIFEST_SIZE + 1]),
            ("text/plain", br#"{"schemaVersion":2}"#.to_vec()),
            (media::OCI_MANIFEST, br#"{"schemaVersion":1,"config":{},"layers":[]}"#.to_vec()),
            (
                media::OCI_MANIFEST,
                serde_json::json!({"schemaVersion":2,"mediaType":media::OCI_INDEX,"manifests":[]}).to_string().into_bytes(),
            ),
            (media::OCI_MANIFEST, serde_json::json!({"schemaVersion":2,"layers":[good_desc]}).to_string().into_bytes()),
            (
                media::OCI_MANIFEST,
                serde_json::json!({"schemaVersion":2,"config":{"mediaType":"a/b","digest":"sha256:zz","size":1},"layers":[]})
                    .to_string()
                    .into_bytes(),
            ),
            (
                media::OCI_MANIFEST,
                serde_json::json!({"schemaVersion":2,"config":{"mediaType":"a/b","digest":Digest::sha256(b"").to_string(),"size":-1},"layers":[]})
                    .to_string()
                    .into_bytes(),
            ),
            (
                media::OCI_MANIFEST,
                serde_json::json!({"schemaVersion":2,"config":{"mediaType":"no-slash","digest":Digest::sha256(b"").to_string(),"size":0},"layers":[]})
                    .to_string()
                    .into_bytes(),
            ),
            (media::DOCKER_MANIFEST, serde_json::json!({"schemaVersion":2,"config":desc("a/b", b""),"layers":[]}).to_string().into_bytes()),
        ];
        for (mt, body) in cases {
            let err = Manifest::parse(mt, &body).unwrap_err();
            assert!(
                matches!(
                    err,
                    StoreError::ManifestInvalid { .. } | StoreError::SizeInvalid { .. }
                ),
                "{:?}: {err:?}",
                String::from_utf8_lossy(&body[..body.len().min(60)])
            );
        }
    }
}
