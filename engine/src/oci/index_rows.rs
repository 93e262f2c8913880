//! `index.json` read for a pass over every row that rewrites few (GC):
//! each row's deciding fields, borrowed from the file's bytes, and the
//! row's own JSON text, so a pruned index is the kept rows' text copied.
//!
//! Parsed into [`ImageIndex`], a row is a descriptor with its own strings
//! and, for a tag, a one-entry annotation map (a B-tree leaf of half a
//! kilobyte): a 10,000-row index was some 8 MB, allocated, walked and freed
//! once per pass, most of it out of the cache. Here a row is under 100
//! bytes pointing into the file.
//!
//! Accepts exactly the files [`ImageIndex`] accepts (the same required
//! fields, of the same types), so GC and the rest of the store never
//! disagree on whether an index is corrupt; a test holds the two together.
//!
//! [`ImageIndex`]: super::ImageIndex

use std::borrow::Cow;
use std::fmt;

use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

use super::manifest::{Descriptor, REF_NAME, digest_serde};
use crate::digest::Digest;

/// What GC decides a row on; [`Descriptor`] and [`Row`] both have it.
pub(crate) trait IndexRow {
    fn media_type(&self) -> &str;
    fn digest(&self) -> &Digest;
    /// The row's tag (`org.opencontainers.image.ref.name`), if any.
    fn tag(&self) -> Option<&str>;
}

impl IndexRow for Descriptor {
    fn media_type(&self) -> &str {
        &self.media_type
    }
    fn digest(&self) -> &Digest {
        &self.digest
    }
    fn tag(&self) -> Option<&str> {
        Descriptor::tag(self)
    }
}

impl<T: IndexRow + ?Sized> IndexRow for &T {
    fn media_type(&self) -> &str {
        (**self).media_type()
    }
    fn digest(&self) -> &Digest {
        (**self).digest()
    }
    fn tag(&self) -> Option<&str> {
        (**self).tag()
    }
}

/// One row of an [`IndexRows`].
#[derive(Debug)]
pub(crate) struct Row<'a> {
    media_type: Cow<'a, str>,
    digest: Digest,
    tag: Option<Cow<'a, str>>,
    /// The row as it is in the file.
    text: &'a RawValue,
}

impl IndexRow for Row<'_> {
    fn media_type(&self) -> &str {
        &self.media_type
    }
    fn digest(&self) -> &Digest {
        &self.digest
    }
    fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }
}

/// An `index.json`, its rows borrowed from its bytes.
#[derive(Debug)]
pub(crate) struct IndexRows<'a> {
    schema_version: u32,
    media_type: Option<Cow<'a, str>>,
    rows: Vec<Row<'a>>,
}

/// The file's top level, rows still unparsed.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Top<'a> {
    schema_version: u32,
    #[serde(default, borrow)]
    media_type: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    manifests: Vec<&'a RawValue>,
}

/// A row's fields, with the types [`Descriptor`] gives them: the ones GC
/// does not use are checked and dropped.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Fields<'a> {
    #[serde(borrow)]
    media_type: Cow<'a, str>,
    #[serde(with = "digest_serde")]
    digest: Digest,
    #[allow(dead_code)] // checked, as Descriptor checks it
    size: u64,
    #[serde(default, borrow)]
    #[allow(dead_code)]
    artifact_type: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    annotations: RefName<'a>,
    #[serde(default)]
    #[allow(dead_code)]
    platform: Option<IgnoredAny>,
}

/// An annotation map (string to string) of which only the tag is kept.
#[derive(Default)]
struct RefName<'a>(Option<Cow<'a, str>>);

impl<'de: 'a, 'a> Deserialize<'de> for RefName<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Annotations<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for Annotations<'a> {
            type Value = RefName<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of strings")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RefName<'a>, A::Error> {
                let mut tag = None;
                while let Some(Text(key)) = map.next_key()? {
                    let Text(value) = map.next_value()?;
                    // A repeated key: the last one wins, as in a map.
                    if key == REF_NAME {
                        tag = Some(value);
                    }
                }
                Ok(RefName(tag))
            }
        }
        d.deserialize_map(Annotations(std::marker::PhantomData))
    }
}

/// A JSON string, borrowed unless it has escapes. (serde's own `Cow`
/// always copies outside a derived field marked `borrow`.)
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Str<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for Str<'a> {
            type Value = Text<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Owned(s.to_owned())))
            }
        }
        d.deserialize_str(Str(std::marker::PhantomData))
    }
}

impl<'a> IndexRows<'a> {
    pub(crate) fn parse(body: &'a [u8]) -> serde_json::Result<IndexRows<'a>> {
        let top: Top<'a> = serde_json::from_slice(body)?;
        let rows = top
            .manifests
            .into_iter()
            .map(|text| {
                let f: Fields<'a> = serde_json::from_str(text.get())?;
                Ok(Row {
                    media_type: f.media_type,
                    digest: f.digest,
                    tag: f.annotations.0,
                    text,
                })
            })
            .collect::<serde_json::Result<_>>()?;
        Ok(IndexRows {
            schema_version: top.schema_version,
            media_type: top.media_type,
            rows,
        })
    }

    pub(crate) fn rows(&self) -> &[Row<'a>] {
        &self.rows
    }

    /// The file without the rows `drop` picks: the others as they were.
    pub(crate) fn without(&self, drop: impl Fn(&Row<'a>) -> bool) -> Vec<u8> {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Out<'r> {
            schema_version: u32,
            #[serde(skip_serializing_if = "Option::is_none")]
            media_type: Option<&'r str>,
            manifests: Vec<&'r RawValue>,
        }
        let out = Out {
            schema_version: self.schema_version,
            media_type: self.media_type.as_deref(),
            manifests: self
                .rows
                .iter()
                .filter(|r| !drop(r))
                .map(|r| r.text)
                .collect(),
        };
        // The kept rows are no longer than the file was.
        let mut body = Vec::with_capacity(
            self.rows
                .iter()
                .map(|r| r.text.get().len() + 1)
                .sum::<usize>()
                + 128,
        );
        serde_json::to_writer(&mut body, &out).expect("index serialises");
        body
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::ImageIndex;

    /// Both parsers give `body` the verdict `accepted`, and the same rows.
    fn same_verdict(body: &str, accepted: bool) {
        let full = serde_json::from_str::<ImageIndex>(body);
        let rows = IndexRows::parse(body.as_bytes());
        assert_eq!(full.is_ok(), accepted, "{body}: ImageIndex {full:?}");
        assert_eq!(
            full.is_ok(),
            rows.is_ok(),
            "{body}: ImageIndex {full:?}, IndexRows {rows:?}"
        );
        let (Ok(full), Ok(rows)) = (full, rows) else {
            return;
        };
        assert_eq!(full.manifests.len(), rows.rows().len());
        for (d, r) in full.manifests.iter().zip(rows.rows()) {
            assert_eq!(IndexRow::media_type(d), r.media_type());
            assert_eq!(IndexRow::digest(d), r.digest());
            assert_eq!(IndexRow::tag(d), r.tag());
        }
        // Dropping nothing gives back the same index.
        let again: ImageIndex = serde_json::from_slice(&rows.without(|_| false)).unwrap();
        assert_eq!(again, full);
    }

    #[test]
    fn accepts_and_refuses_what_image_index_does() {
        let d = Digest::sha256(b"m").to_string();
        let ok_row = format!(r#"{{"mediaType":"a/b","digest":"{d}","size":3}}"#);
        let accepted = [
            format!(r#"{{"schemaVersion":2,"manifests":[{ok_row}]}}"#),
            r#"{"schemaVersion":2}"#.to_owned(),
            format!(
                r#"{{"schemaVersion":2,"mediaType":"x","manifests":[{ok_row},{ok_row}],"other":1}}"#
            ),
            // A tag, other annotations, a repeated key (the last wins), escapes.
            format!(
                r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"a\/b","digest":"{d}","size":3,
                "annotations":{{"org.opencontainers.image.ref.name":"v1","k":"v","org.opencontainers.image.ref.name":"v\u0032"}},
                "platform":{{"os":"linux"}},"artifactType":"t","unknown":[1,2]}}]}}"#
            ),
        ];
        let refused = [
            "".to_owned(),
            r#"{"manifests":[]}"#.to_owned(),
            r#"{"schemaVersion":-1}"#.to_owned(),
            r#"{"schemaVersion":2,"manifests":{}}"#.to_owned(),
            format!(r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"a/b","digest":"{d}"}}]}}"#),
            format!(r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"a/b","digest":"{d}","size":-3}}]}}"#),
            r#"{"schemaVersion":2,"manifests":[{"mediaType":"a/b","digest":"sha256:AB","size":3}]}"#.to_owned(),
            format!(r#"{{"schemaVersion":2,"manifests":[{{"mediaType":7,"digest":"{d}","size":3}}]}}"#),
            format!(r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"a/b","digest":"{d}","size":3,"annotations":{{"k":1}}}}]}}"#),
            format!(r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"a/b","digest":"{d}","size":3,"annotations":null}}]}}"#),
            format!(r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"a/b","digest":"{d}","size":3,"artifactType":5}}]}}"#),
            format!(r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"a/b","mediaType":"a/b","digest":"{d}","size":3}}]}}"#),
        ];
        for body in accepted {
            same_verdict(&body, true);
        }
        for body in refused {
            same_verdict(&body, false);
        }
    }

    #[test]
    fn rows_not_dropped_are_kept_byte_for_byte() {
        let (a, b) = (Digest::sha256(b"a"), Digest::sha256(b"b"));
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[
              {{"mediaType":"a/b", "digest":"{a}","size":1,"annotations":{{"org.opencontainers.image.ref.name":"keep"}},"x-unknown":{{"kept":true}}}},
              {{"mediaType":"a/b","digest":"{b}","size":1}}]}}"#
        );
        let rows = IndexRows::parse(body.as_bytes()).unwrap();
        let pruned = rows.without(|r| r.digest() == &b);
        let pruned = String::from_utf8(pruned).unwrap();
        let kept = format!(
            r#"{{"mediaType":"a/b", "digest":"{a}","size":1,"annotations":{{"org.opencontainers.image.ref.name":"keep"}},"x-unknown":{{"kept":true}}}}"#
        );
        assert_eq!(
            pruned,
            format!(
                r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{kept}]}}"#
            )
        );
        let index: ImageIndex = serde_json::from_str(&pruned).unwrap();
        assert_eq!(index.manifests.len(), 1);
        assert_eq!(index.manifests[0].tag(), Some("keep"));
    }
}
