//! Repository names, tags and references: the OCI distribution grammar, plus
//! the names this store reserves for itself.

use std::fmt;

use crate::digest::Digest;

/// Longest repository name accepted (CNCF distribution's limit).
pub const MAX_REPO_NAME: usize = 255;
/// Longest tag (OCI distribution spec).
pub const MAX_TAG: usize = 128;

/// Names that may not appear as a component below a repository's root,
/// because that is where the repository keeps its own files: a repo `a/blobs`
/// would live inside repo `a`'s blob directory.
const RESERVED_COMPONENTS: [&str; 3] = ["blobs", "index.json", "oci-layout"];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid name {name:?}: {reason}")]
pub struct NameError {
    pub name: String,
    pub reason: &'static str,
}

fn name_error(name: &str, reason: &'static str) -> NameError {
    NameError {
        name: name.chars().take(80).collect(),
        reason,
    }
}

/// A valid repository name, e.g. `library/nginx` or `org/team/app`.
///
/// Grammar (OCI distribution):
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`,
/// at most 255 bytes. Every component starts with `[a-z0-9]`, so `_blobstore`,
/// `.uploads` and anything `..`-like can never be a repository; below the
/// first component, `blobs`, `index.json` and `oci-layout` are refused too.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RepoName(Box<str>);

impl RepoName {
    pub fn parse(name: &str) -> Result<RepoName, NameError> {
        if name.is_empty() {
            return Err(name_error(name, "empty"));
        }
        if name.len() > MAX_REPO_NAME {
            return Err(name_error(name, "longer than 255 bytes"));
        }
        for (i, component) in name.split('/').enumerate() {
            check_component(name, component)?;
            if i > 0 && RESERVED_COMPONENTS.contains(&component) {
                return Err(name_error(
                    name,
                    "blobs, index.json and oci-layout cannot name a nested repository",
                ));
            }
        }
        Ok(RepoName(name.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn check_component(name: &str, c: &str) -> Result<(), NameError> {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() {
        return Err(name_error(
            name,
            "empty path component ('/' at an end or doubled)",
        ));
    }
    if !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return Err(name_error(
            name,
            "each component must start and end with a-z or 0-9",
        ));
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__" or "-+", then an alphanumeric.
        let run_start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[run_start..i];
        let ok = matches!(sep, "." | "_" | "__") || sep.bytes().all(|x| x == b'-');
        if !ok {
            return Err(name_error(
                name,
                "only a-z 0-9 and single '.', '_', '__' or '-' runs between them",
            ));
        }
    }
    Ok(())
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

/// A valid tag: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tag(Box<str>);

impl Tag {
    pub fn parse(tag: &str) -> Result<Tag, NameError> {
        let b = tag.as_bytes();
        if b.is_empty() || b.len() > MAX_TAG {
            return Err(name_error(tag, "a tag has 1 to 128 characters"));
        }
        if !(b[0].is_ascii_alphanumeric() || b[0] == b'_') {
            return Err(name_error(tag, "a tag starts with a letter, digit or '_'"));
        }
        if !b
            .iter()
            .all(|x| x.is_ascii_alphanumeric() || matches!(x, b'_' | b'.' | b'-'))
        {
            return Err(name_error(
                tag,
                "a tag has only letters, digits, '_', '.', '-'",
            ));
        }
        Ok(Tag(tag.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

/// What a manifest URL names: a tag or a digest.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Reference {
    Tag(Tag),
    Digest(Digest),
}

impl Reference {
    /// A digest if it has a ':', a tag otherwise (tags cannot contain ':').
    pub fn parse(s: &str) -> Result<Reference, crate::StoreError> {
        if s.contains(':') {
            Ok(Reference::Digest(Digest::parse(s)?))
        } else {
            Ok(Reference::Tag(Tag::parse(s)?))
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => t.fmt(f),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

impl fmt::Debug for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Reference({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_grammar() {
        for ok in [
            "a",
            "library/nginx",
            "org/team/app",
            "a.b_c__d---e",
            "blobs/foo",
            "x9/y-1",
        ] {
            RepoName::parse(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        let long = "a".repeat(256);
        for bad in [
            "",
            "A",
            "_blobstore",
            "_blobstore/x",
            ".uploads",
            "a/.uploads",
            "..",
            "a/../b",
            "/a",
            "a/",
            "a//b",
            "a.",
            "-a",
            "a..b",
            "a___b",
            "a.-b",
            "a b",
            "a/blobs",
            "a/blobs/x",
            "x/index.json",
            "x/oci-layout",
            "é",
            &long,
        ] {
            assert!(RepoName::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn tag_grammar() {
        for ok in ["latest", "v1.2.3", "_x", "A-b_c.d", &"t".repeat(128)] {
            Tag::parse(ok).unwrap();
        }
        for bad in ["", ".x", "-x", "a:b", "a/b", &"t".repeat(129)] {
            assert!(Tag::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn references() {
        assert!(matches!(
            Reference::parse("latest").unwrap(),
            Reference::Tag(_)
        ));
        let d = Digest::sha256(b"x").to_string();
        assert!(matches!(
            Reference::parse(&d).unwrap(),
            Reference::Digest(_)
        ));
        assert!(Reference::parse("sha256:zz").is_err());
    }
}
