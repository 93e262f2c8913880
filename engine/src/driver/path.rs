//! The path grammar every driver accepts, as one type.
//!
//! A [`DriverPath`] can only be built by validation, so a driver never sees a
//! path that escapes its root: no absolute paths, no `.`/`..`, no empty
//! components, a small character set, and no use of the names reserved for the
//! drivers' own bookkeeping. Grammar (one regexp, CNCF distribution style):
//!
//! ```text
//! path      := component ( "/" component )*        at most 4096 bytes
//! component := [A-Za-z0-9._-]{1,255}, not "." or "..",
//!              and not starting with ".ocistore"
//! ```
//!
//! Names starting with `.ocistore` are the drivers' own (temp files beside the
//! object they will become); listings never show them.

use std::fmt;

/// Names starting with this belong to the drivers (temp files); never listed.
pub const RESERVED_PREFIX: &str = ".ocistore";

const MAX_PATH: usize = 4096;
const MAX_COMPONENT: usize = 255;

/// The bytes a component may hold: `[A-Za-z0-9._-]`.
const ALLOWED: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric() || c == b'.' || c == b'_' || c == b'-';
        b += 1;
    }
    t
};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid storage path {path:?}: {reason}")]
pub struct PathError {
    pub path: String,
    pub reason: &'static str,
}

/// A validated relative path inside a driver's root.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DriverPath(Box<str>);

impl DriverPath {
    pub fn new(path: impl AsRef<str>) -> Result<DriverPath, PathError> {
        let path = path.as_ref();
        DriverPath::check(path)?;
        Ok(DriverPath(path.into()))
    }

    /// [`DriverPath::new`] for a path already in a `String`: no copy when
    /// it has no spare capacity.
    pub fn from_string(path: String) -> Result<DriverPath, PathError> {
        DriverPath::check(&path)?;
        Ok(DriverPath(path.into_boxed_str()))
    }

    /// One pass over the bytes (every driver call builds paths, so this is
    /// on every hot path): a table says which bytes may appear, and only a
    /// component starting with '.' needs a closer look.
    fn check(path: &str) -> Result<(), PathError> {
        let fail = |reason| {
            Err(PathError {
                path: path.chars().take(120).collect(),
                reason,
            })
        };
        if path.is_empty() {
            return fail("empty");
        }
        if path.len() > MAX_PATH {
            return fail("longer than 4096 bytes");
        }
        for component in path.as_bytes().split(|&b| b == b'/') {
            if component.is_empty() {
                return fail("empty component (leading, trailing or doubled '/')");
            }
            if component.len() > MAX_COMPONENT {
                return fail("component longer than 255 bytes");
            }
            if !component.iter().all(|&b| ALLOWED[b as usize]) {
                return fail("only A-Z a-z 0-9 . _ - and '/' are allowed");
            }
            if component[0] == b'.' {
                if component == b"." || component == b".." {
                    return fail("'.' and '..' components are not allowed");
                }
                if component.starts_with(RESERVED_PREFIX.as_bytes()) {
                    return fail("names starting with .ocistore are reserved for the driver");
                }
            }
        }
        Ok(())
    }

    /// `self/child`, validated.
    pub fn join(&self, child: impl AsRef<str>) -> Result<DriverPath, PathError> {
        DriverPath::new(format!("{}/{}", self.0, child.as_ref()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The containing directory, or `None` for a top-level name.
    pub fn parent(&self) -> Option<DriverPath> {
        self.0
            .rsplit_once('/')
            .map(|(parent, _)| DriverPath(parent.into()))
    }

    /// The last component.
    pub fn file_name(&self) -> &str {
        self.0.rsplit_once('/').map_or(&self.0, |(_, name)| name)
    }

    /// Every proper ancestor, outermost first: `a/b/c` gives `a`, `a/b`.
    pub fn ancestors(&self) -> impl Iterator<Item = DriverPath> + '_ {
        self.0
            .match_indices('/')
            .map(|(i, _)| DriverPath(self.0[..i].into()))
    }

    /// True when `self` is `prefix` or lies below it.
    pub fn starts_with(&self, prefix: &DriverPath) -> bool {
        self.0
            .strip_prefix(&*prefix.0)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }
}

impl fmt::Display for DriverPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for DriverPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

/// Paths order as their strings do, so ordered maps keyed by `DriverPath`
/// can be ranged by a `str` prefix.
impl std::borrow::Borrow<str> for DriverPath {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for DriverPath {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_registry_shaped_paths() {
        for p in [
            "_blobstore/blobs/sha256/abc",
            "org/team/app/index.json",
            "a/.uploads/0f-1",
            "oci-layout",
            "blobs/foo",
            "x/..hidden/...",
            &"b".repeat(255),
        ] {
            DriverPath::new(p).unwrap();
        }
    }

    #[test]
    fn refuses_everything_that_could_escape_or_alias() {
        let long_component = "a".repeat(256);
        let long_path = vec!["a"; 3000].join("/");
        for p in [
            "",
            "/etc/passwd",
            "a/",
            "a//b",
            "..",
            "a/../../b",
            "./a",
            "a/./b",
            "a\\b",
            "a b",
            "a\0b",
            "é",
            ".ocistore-tmp/x",
            &long_component,
            &long_path,
        ] {
            assert!(DriverPath::new(p).is_err(), "{p:?} was accepted");
        }
        assert!(DriverPath::new("repo/.ocistore-tmp.1").is_err());
    }

    #[test]
    fn navigation() {
        let p = DriverPath::new("a/b/c").unwrap();
        assert_eq!(p.parent().unwrap().as_str(), "a/b");
        assert_eq!(p.file_name(), "c");
        let anc: Vec<_> = p.ancestors().map(|a| a.to_string()).collect();
        assert_eq!(anc, ["a", "a/b"]);
        assert!(p.starts_with(&DriverPath::new("a/b").unwrap()));
        assert!(!p.starts_with(&DriverPath::new("a/bc").unwrap()));
        assert!(DriverPath::new("top").unwrap().parent().is_none());
    }
}
