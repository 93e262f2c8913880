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
/// The hex is shared, not owned: GC, fsck and migration put tens of
/// thousands of digests into sets and maps, and a clone is then a count,
/// not an allocation. (Held inline, a digest made every descriptor and
/// error twice as large; the count is cheaper.)
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest {
    alg: Algorithm,
    /// Lower-case hex, exactly `alg.hex_len()` characters.
    hex: Arc<str>,
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
        let canonical = |c: char| matches!(c, '0'..='9' | 'a'..='f');
        // Bytes first: a non-ASCII byte fails here and is then named as a char.
        if !hex.bytes().all(|b| canonical(char::from(b))) {
            let bad = hex.chars().find(|&c| !canonical(c)).unwrap_or('?');
            return Err(DigestError::BadHex(bad));
        }
        Ok(Digest {
            alg,
            hex: hex.into(),
        })
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
        self.alg
    }

    pub fn hex(&self) -> &str {
        &self.hex
    }
}

fn truncated(s: &str) -> String {
    // Error messages echo hostile input; cap what they carry.
    s.chars().take(80).collect()
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.alg, self.hex())
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

impl Digest {
    /// Encodes a hash function's output.
    fn from_raw(alg: Algorithm, raw: &[u8]) -> Digest {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let hex: Vec<u8> = raw
            .iter()
            .flat_map(|b| [HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]])
            .collect();
        let hex = String::from_utf8(hex).expect("hex digits are ASCII");
        Digest {
            alg,
            hex: hex.into(),
        }
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
