//! What a repository keeps: a pure function of its index rows and their
//! manifests' edges, computed once per pass in O(manifests + edges).
//!
//! Kept, transitively:
//! - every tagged row, and every row younger than GC's delay (the roots:
//!   the delay contract keeps a young item *with what it references*);
//! - the children of a kept index;
//! - the referrers of a kept manifest (and referrers of those).
//!
//! Everything else is garbage: untagged manifests no kept index lists,
//! referrers whose subject is gone, rows of unknown media type, and rows
//! whose manifest bytes are gone. Blobs are kept iff a kept image manifest
//! references them or they are a kept manifest themselves.

use std::borrow::Borrow;
use std::collections::{HashMap, HashSet, VecDeque};

use crate::digest::Digest;
use crate::oci::index_rows::IndexRow;
use crate::oci::manifest::{Manifest, media};

/// What reachability needs of a manifest: the digests it points at.
/// A pass holds one per manifest of the repository, so it keeps these and
/// drops the parsed manifest at once: a parsed image manifest is about 1 KB
/// of descriptors and strings, its edges about 200 bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Edges {
    /// The manifest it refers to (OCI 1.1 `subject`).
    subject: Option<Digest>,
    /// Config and layers of an image manifest.
    blobs: Box<[Digest]>,
    /// Manifests an index lists.
    children: Box<[Digest]>,
}

impl Edges {
    /// Blobs a kept manifest keeps.
    pub(crate) fn blobs(&self) -> &[Digest] {
        &self.blobs
    }
}

impl From<&Manifest> for Edges {
    fn from(m: &Manifest) -> Edges {
        Edges {
            subject: m.subject.as_ref().map(|s| s.digest.clone()),
            blobs: m.blobs().into_iter().map(|b| b.digest.clone()).collect(),
            children: m.children().iter().map(|c| c.digest.clone()).collect(),
        }
    }
}

/// The outcome of a reachability pass over one repository.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Reach {
    /// Manifests (index rows) to keep.
    pub(crate) manifests: HashSet<Digest>,
    /// Blobs to keep: referenced blobs and kept manifests.
    pub(crate) blobs: HashSet<Digest>,
}

/// `rows` with each row's manifest (`None`: bytes gone or unparsable),
/// from the tagged rows.
#[cfg(test)]
pub(crate) fn reach<R, M>(rows: &[(R, Option<M>)]) -> Reach
where
    R: IndexRow,
    M: Borrow<Edges>,
{
    reach_from(rows, &HashSet::new())
}

/// As [`reach`], with the rows whose digest is in `young` as roots too.
pub(crate) fn reach_from<R, M>(rows: &[(R, Option<M>)], young: &HashSet<Digest>) -> Reach
where
    R: IndexRow,
    M: Borrow<Edges>,
{
    let rows = rows.iter().map(|(row, m)| (row, m.as_ref()));
    let parsed: HashMap<&Digest, &Edges> = rows
        .clone()
        .filter(|(row, _)| media::MANIFESTS.contains(&row.media_type()))
        .filter_map(|(row, m)| m.map(|m| (row.digest(), m.borrow())))
        .collect();
    let mut referrers: HashMap<&Digest, Vec<&Digest>> = HashMap::new();
    for (digest, m) in &parsed {
        if let Some(subject) = &m.subject {
            referrers.entry(subject).or_default().push(digest);
        }
    }
    let mut out = Reach::default();
    let mut queue: VecDeque<&Digest> = rows
        .filter(|(row, _)| {
            (row.tag().is_some() || young.contains(row.digest()))
                && parsed.contains_key(row.digest())
        })
        .map(|(row, _)| row.digest())
        .collect();
    while let Some(d) = queue.pop_front() {
        if !out.manifests.insert(d.clone()) {
            continue;
        }
        if let Some(m) = parsed.get(d) {
            out.blobs.extend(m.blobs.iter().cloned());
            // Children an index lists are kept only if the repository has them.
            queue.extend(m.children.iter().filter(|c| parsed.contains_key(c)));
        }
        if let Some(rs) = referrers.get(d) {
            queue.extend(rs.iter().copied());
        }
    }
    out.blobs.extend(out.manifests.iter().cloned());
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::oci::manifest::{Descriptor, ManifestKind, REF_NAME};

    fn d(s: &str) -> Digest {
        Digest::sha256(s.as_bytes())
    }

    fn desc(mt: &str, name: &str, tag: Option<&str>) -> Descriptor {
        let mut annotations = BTreeMap::new();
        if let Some(t) = tag {
            annotations.insert(REF_NAME.to_owned(), t.to_owned());
        }
        Descriptor {
            media_type: mt.to_owned(),
            digest: d(name),
            size: 1,
            artifact_type: None,
            annotations,
            platform: None,
        }
    }

    fn image(layers: &[&str], subject: Option<&str>) -> Manifest {
        Manifest {
            media_type: media::OCI_MANIFEST.to_owned(),
            kind: ManifestKind::Image {
                config: desc(media::OCI_CONFIG, &format!("cfg-{}", layers.join("")), None),
                layers: layers
                    .iter()
                    .map(|l| desc(media::OCI_LAYER, l, None))
                    .collect(),
            },
            subject: subject.map(|s| desc(media::OCI_MANIFEST, s, None)),
            artifact_type: None,
            annotations: BTreeMap::new(),
        }
    }

    fn index(children: &[&str]) -> Manifest {
        Manifest {
            media_type: media::OCI_INDEX.to_owned(),
            kind: ManifestKind::Index {
                manifests: children
                    .iter()
                    .map(|c| desc(media::OCI_MANIFEST, c, None))
                    .collect(),
            },
            subject: None,
            artifact_type: None,
            annotations: BTreeMap::new(),
        }
    }

    #[test]
    fn tags_children_and_referrer_chains_are_kept() {
        let rows = vec![
            (
                desc(media::OCI_INDEX, "idx", Some("latest")),
                Some(index(&["amd", "arm"])),
            ),
            (
                desc(media::OCI_MANIFEST, "amd", None),
                Some(image(&["l1", "shared"], None)),
            ),
            (
                desc(media::OCI_MANIFEST, "arm", None),
                Some(image(&["l2", "shared"], None)),
            ),
            (
                desc(media::OCI_MANIFEST, "sig", None),
                Some(image(&["s"], Some("idx"))),
            ),
            (
                desc(media::OCI_MANIFEST, "sig-of-sig", None),
                Some(image(&["ss"], Some("sig"))),
            ),
            (
                desc(media::OCI_MANIFEST, "orphan-ref", None),
                Some(image(&["o"], Some("gone"))),
            ),
            (
                desc(media::OCI_MANIFEST, "untagged", None),
                Some(image(&["u", "shared"], None)),
            ),
            (desc("application/x-unknown", "weird", Some("odd")), None),
            (desc(media::OCI_MANIFEST, "lost", Some("lost")), None),
        ];
        let rows: Vec<_> = rows
            .iter()
            .map(|(row, m)| (row, m.as_ref().map(Edges::from)))
            .collect();
        let r = reach(&rows);
        let kept: HashSet<Digest> = ["idx", "amd", "arm", "sig", "sig-of-sig"]
            .iter()
            .map(|s| d(s))
            .collect();
        assert_eq!(r.manifests, kept);
        for b in ["l1", "l2", "shared", "s", "ss", "idx", "amd"] {
            assert!(r.blobs.contains(&d(b)), "{b} dropped");
        }
        for b in ["u", "o", "untagged", "orphan-ref", "weird", "lost"] {
            assert!(!r.blobs.contains(&d(b)), "{b} kept");
        }
    }
}
