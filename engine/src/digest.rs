//! Content digests: parsing, validation, and hashing while bytes stream past.
//!
//! A digest string comes from outside (a URL, a manifest, an index) and is
//! hostile until [`Digest::parse`] accepts it. Accepted digests are canonical:
//! a known algorithm and lower-case hex of exactly that algorithm's length, so
//! two equal digests are always byte-equal strings and can name files.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use sha2::Digest as _;

/// The hash algorithms the store accepts (OCI image-spec "registered algorithms").
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    pub const ALL: [Algorithm; 2] = [Algorithm::Sha256, Algorithm::Sha512];

    /// The name used in digest strings and in `blobs/<alg>/` paths.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    /// `<name>:`, how a digest string starts.
    pub fn prefix(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256:",
            Algorithm::Sha512 => "sha512:",
        }
    }

    /// Length of the hex encoding.
    pub fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }

    fn from_name(name: &str) -> Option<Algorithm> {
        Algorithm::ALL.into_iter().find(|a| a.as_str() == name)
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a digest string was refused. Maps onto OCI `DIGEST_INVALID`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DigestError {
    #[error("digest {0:?} has no ':' between algorithm and hex")]
    MissingSeparator(String),
    #[error("digest algorithm {0:?} is not supported (sha256, sha512 are)")]
    UnsupportedAlgorithm(String),
    #[error("{alg} digest needs {expected} hex characters, got {got}")]
    WrongLength {
        alg: Algorithm,
        expected: usize,
        got: usize,
    },
    #[error("digest hex must be lower-case 0-9a-f; found {0:?}")]
    BadHex(char),
}

/// A validated, canonical content digest such as `sha256:e3b0c4…`.
///
/// Held as the hash's bytes, not as hex: GC, fsck and migration put tens of
/// thousands of digests into sets and maps, and a sha256 digest then hashes
/// and compares inside the set's own memory. (With the hex behind a pointer,
/// each lookup in a set larger than the cache missed it once more to read
/// the hex: `scripts/gc-instructions` counts the misses.) Bytes order as
/// their hex does, so `Ord` is the order of the digest strings. sha512,
/// rare, keeps its 64 bytes behind a shared pointer, so a digest is 40
/// bytes, not 72.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest(Raw);

/// Variant order is [`Algorithm`]'s, so a derived `Ord` sorts as the strings do.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Raw {
    Sha256([u8; 32]),
    Sha512(Arc<[u8; 64]>),
}

impl Digest {
    /// Longest digest string accepted; anything longer is refused before any scan.
    pub const MAX_LEN: usize = "sha512:".len() + 128;

    /// Parses and validates. Upper-case hex is refused rather than folded, as
    /// the OCI spec requires for the registered algorithms: two spellings of
    /// one digest would give two paths for one blob.
    pub fn parse(s: &str) -> Result<Digest, DigestError> {
        let Some((alg, hex)) = s.split_once(':') else {
            return Err(DigestError::MissingSeparator(truncated(s)));
        };
        let alg = Algorithm::from_name(alg)
            .ok_or_else(|| DigestError::UnsupportedAlgorithm(truncated(alg)))?;
        Digest::from_hex(alg, hex)
    }

    /// Builds a digest from an algorithm and its hex, with the same checks as [`Digest::parse`].
    pub fn from_hex(alg: Algorithm, hex: &str) -> Result<Digest, DigestError> {
        if hex.len() != alg.hex_len() {
            return Err(DigestError::WrongLength {
                alg,
                expected: alg.hex_len(),
                got: hex.len(),
            });
        }
        // A table, not a match: a match on random hex digits mispredicts a
        // branch every few characters, and GC parses hundreds of thousands.
        const INVALID: u8 = 0xff;
        const VALUE: [u8; 256] = {
            let mut t = [INVALID; 256];
            let mut i = 0;
            while i < 10 {
                t[b'0' as usize + i] = i as u8;
                i += 1;
            }
            let mut i = 0;
            while i < 6 {
                t[b'a' as usize + i] = 10 + i as u8;
                i += 1;
            }
            t
        };
        let mut raw = [0u8; 64];
        let mut bad = 0u8;
        for (out, pair) in raw.iter_mut().zip(hex.as_bytes().chunks_exact(2)) {
            let (hi, lo) = (VALUE[usize::from(pair[0])], VALUE[usize::from(pair[1])]);
            bad |= hi | lo;
            *out = hi << 4 | (lo & 0xf);
        }
        if bad & 0xf0 != 0 {
            // Name the offending character (a non-ASCII byte as its char).
            let canonical = |c: char| matches!(c, '0'..='9' | 'a'..='f');
            let bad = hex.chars().find(|&c| !canonical(c)).unwrap_or('?');
            return Err(DigestError::BadHex(bad));
        }
        Ok(Digest::from_raw(alg, &raw[..alg.hex_len() / 2]))
    }

    /// The digest of `bytes` in one call (manifests, small bodies).
    pub fn of(alg: Algorithm, bytes: &[u8]) -> Digest {
        let mut hasher = DigestHasher::new(alg);
        hasher.update(bytes);
        hasher.finish()
    }

    pub fn sha256(bytes: &[u8]) -> Digest {
        Digest::of(Algorithm::Sha256, bytes)
    }

    pub fn algorithm(&self) -> Algorithm {
        match self.0 {
            Raw::Sha256(_) => Algorithm::Sha256,
            Raw::Sha512(_) => Algorithm::Sha512,
        }
    }

    /// The hash function's output.
    pub fn raw(&self) -> &[u8] {
        match &self.0 {
            Raw::Sha256(b) => b,
            Raw::Sha512(b) => &b[..],
        }
    }

    /// Lower-case hex, `algorithm().hex_len()` characters (encoded on each
    /// call: a digest holds its bytes).
    pub fn hex(&self) -> Hex {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut hex = Hex {
            buf: [0; 128],
            len: 0,
        };
        for (i, b) in self.raw().iter().enumerate() {
            hex.buf[2 * i] = DIGITS[usize::from(b >> 4)];
            hex.buf[2 * i + 1] = DIGITS[usize::from(b & 0xf)];
        }
        hex.len = 2 * self.raw().len();
        hex
    }

    /// A hash function's output (its length is the algorithm's).
    fn from_raw(alg: Algorithm, raw: &[u8]) -> Digest {
        Digest(match alg {
            Algorithm::Sha256 => Raw::Sha256(raw.try_into().expect("32 bytes")),
            Algorithm::Sha512 => Raw::Sha512(Arc::new(raw.try_into().expect("64 bytes"))),
        })
    }
}

/// A digest's hex on the stack: a `&str` by deref (`&*d.hex()`).
pub struct Hex {
    buf: [u8; 128],
    len: usize,
}

impl std::ops::Deref for Hex {
    type Target = str;
    fn deref(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).expect("hex digits are ASCII")
    }
}

impl AsRef<str> for Hex {
    fn as_ref(&self) -> &str {
        self
    }
}

impl fmt::Display for Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self)
    }
}

impl fmt::Debug for Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

fn truncated(s: &str) -> String {
    // Error messages echo hostile input; cap what they carry.
    s.chars().take(80).collect()
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.algorithm().prefix(), self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

impl FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Digest::parse(s)
    }
}

/// Hashes bytes as they stream through an upload, so the digest is known the
/// moment the last chunk is written and the stored bytes are never re-read.
#[derive(Clone)]
pub struct DigestHasher {
    state: HasherState,
    len: u64,
}

#[derive(Clone)]
enum HasherState {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl DigestHasher {
    pub fn new(alg: Algorithm) -> DigestHasher {
        let state = match alg {
            Algorithm::Sha256 => HasherState::Sha256(sha2::Sha256::new()),
            Algorithm::Sha512 => HasherState::Sha512(sha2::Sha512::new()),
        };
        DigestHasher { state, len: 0 }
    }

    pub fn algorithm(&self) -> Algorithm {
        match self.state {
            HasherState::Sha256(_) => Algorithm::Sha256,
            HasherState::Sha512(_) => Algorithm::Sha512,
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.len += bytes.len() as u64;
        match &mut self.state {
            HasherState::Sha256(h) => h.update(bytes),
            HasherState::Sha512(h) => h.update(bytes),
        }
    }

    /// Bytes hashed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn finish(self) -> Digest {
        let alg = self.algorithm();
        match self.state {
            HasherState::Sha256(h) => Digest::from_raw(alg, &h.finalize()),
            HasherState::Sha512(h) => Digest::from_raw(alg, &h.finalize()),
        }
    }
}

impl fmt::Debug for DigestHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DigestHasher")
            .field("alg", &self.algorithm())
            .field("len", &self.len)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY_SHA256: &str =
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn empty_blob_has_the_well_known_digest() {
        assert_eq!(Digest::sha256(b"").to_string(), EMPTY_SHA256);
        assert_eq!(Digest::parse(EMPTY_SHA256).unwrap(), Digest::sha256(b""));
    }

    #[test]
    fn sha512_round_trips() {
        let d = Digest::of(Algorithm::Sha512, b"abc");
        assert!(d.hex().starts_with("ddaf35a193617aba"));
        assert_eq!(Digest::parse(&d.to_string()).unwrap(), d);
    }

    #[test]
    fn equality_order_and_hash_are_those_of_the_string() {
        use std::collections::hash_map::RandomState;
        use std::hash::BuildHasher;
        let mut digests: Vec<Digest> = (0..200u32)
            .flat_map(|i| Algorithm::ALL.map(|a| Digest::of(a, &i.to_le_bytes())))
            .collect();
        let mut strings: Vec<String> = digests.iter().map(ToString::to_string).collect();
        digests.sort();
        strings.sort();
        let sorted: Vec<String> = digests.iter().map(ToString::to_string).collect();
        assert_eq!(
            sorted, strings,
            "Ord must be the order of the digest strings"
        );
        let state = RandomState::new();
        for d in &digests {
            let again = Digest::parse(&d.to_string()).unwrap();
            assert_eq!(&again, d);
            assert_eq!(state.hash_one(&again), state.hash_one(d));
            assert_eq!(again.hex().len(), d.algorithm().hex_len());
            assert_eq!(Digest::from_hex(d.algorithm(), &d.hex()).unwrap(), again);
        }
        digests.dedup();
        assert_eq!(digests.len(), 400, "distinct inputs give distinct digests");
    }

    #[test]
    fn streaming_equals_one_shot() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        for alg in Algorithm::ALL {
            let mut h = DigestHasher::new(alg);
            for chunk in data.chunks(4093) {
                h.update(chunk);
            }
            assert_eq!(h.len(), data.len() as u64);
            assert_eq!(h.finish(), Digest::of(alg, &data));
        }
    }

    #[test]
    fn hostile_digests_are_refused_with_the_reason() {
        let hex64 = "a".repeat(64);
        type Check = fn(&DigestError) -> bool;
        let cases: Vec<(String, Check)> = vec![
            ("".into(), |e| matches!(e, DigestError::MissingSeparator(_))),
            (hex64.clone(), |e| {
                matches!(e, DigestError::MissingSeparator(_))
            }),
            (format!("md5:{hex64}"), |e| {
                matches!(e, DigestError::UnsupportedAlgorithm(_))
            }),
            (format!("SHA256:{hex64}"), |e| {
                matches!(e, DigestError::UnsupportedAlgorithm(_))
            }),
            ("sha256:abc".into(), |e| {
                matches!(e, DigestError::WrongLength { got: 3, .. })
            }),
            (format!("sha512:{hex64}"), |e| {
                matches!(e, DigestError::WrongLength { expected: 128, .. })
            }),
            (format!("sha256:{}", "A".repeat(64)), |e| {
                matches!(e, DigestError::BadHex('A'))
            }),
            (format!("sha256:{}/..", "a".repeat(61)), |e| {
                matches!(e, DigestError::BadHex('/'))
            }),
            (format!("sha256:{hex64}:x"), |e| {
                matches!(e, DigestError::WrongLength { .. })
            }),
        ];
        for (input, check) in cases {
            let err = Digest::parse(&input).expect_err(&input);
            assert!(check(&err), "{input:?} gave {err:?}");
        }
    }

    #[test]
    fn error_messages_do_not_echo_unbounded_input() {
        let huge = "x".repeat(1 << 20);
        let msg = Digest::parse(&huge).unwrap_err().to_string();
        assert!(msg.len() < 200, "{} bytes", msg.len());
    }
}
