//! Optional access control (DESIGN §13): users from an htpasswd file
//! (bcrypt hashes only), and rules granting pull or push on repository-name
//! prefixes. Without it the registry is anonymous (bind it to loopback).
//!
//! The rules file, one rule a line (`#` comments):
//!
//! ```text
//! # user   right   repositories (a name prefix, or * for every one)
//! alice    push    team/
//! ci       push    *
//! *        pull    library/
//! ```
//!
//! `*` as the user is anyone, anonymous clients included; `push` implies
//! `pull`, and covers deletes. A request needs `pull` for GET and HEAD,
//! `push` for everything else, and `pull` on `from` for a cross-repository
//! mount; the catalog needs `pull` on `*`. An anonymous client refused
//! gets 401 with `WWW-Authenticate: Basic`; an authenticated one, 403
//! `DENIED`; wrong credentials are always 401. bcrypt is slow on purpose,
//! so a verified user:password pair is remembered (as a SHA-256 of the
//! pair, never the password) for the life of the process.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use engine::ErrorCode;
use engine::oci::names::RepoName;
use sha2::{Digest as _, Sha256};

use crate::error::ApiError;
use crate::path::{self, Route};

/// Who may do what.
#[derive(Debug)]
pub struct Access {
    /// user -> bcrypt hash.
    users: HashMap<String, String>,
    rules: Vec<Rule>,
    /// SHA-256 of `user:password` pairs bcrypt already accepted.
    verified: Mutex<HashSet<[u8; 32]>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    /// `None`: anyone, anonymous included.
    user: Option<String>,
    push: bool,
    /// `None`: every repository.
    prefix: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Right {
    Pull,
    Push,
}

impl Access {
    /// Reads the htpasswd file and the rules file.
    pub fn from_files(htpasswd: &Path, rules: &Path) -> Result<Access, String> {
        let read =
            |p: &Path| std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()));
        Access::parse(&read(htpasswd)?, &read(rules)?)
    }

    /// Parses an htpasswd text and a rules text (see the module docs).
    pub fn parse(htpasswd: &str, rules: &str) -> Result<Access, String> {
        let mut users = HashMap::new();
        for (n, line) in htpasswd.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (user, hash) = line
                .split_once(':')
                .ok_or_else(|| format!("htpasswd line {}: not user:hash", n + 1))?;
            if !hash.starts_with("$2") {
                return Err(format!(
                    "htpasswd line {}: {user}'s hash is not bcrypt (htpasswd -B)",
                    n + 1
                ));
            }
            users.insert(user.to_owned(), hash.to_owned());
        }
        let mut parsed = Vec::new();
        for (n, line) in rules.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let words: Vec<&str> = line.split_whitespace().collect();
            let [user, right, prefix] = words[..] else {
                return Err(format!(
                    "rules line {}: want `user right repositories`",
                    n + 1
                ));
            };
            let push = match right {
                "pull" => false,
                "push" => true,
                _ => {
                    return Err(format!(
                        "rules line {}: right {right:?} is not pull or push",
                        n + 1
                    ));
                }
            };
            if user != "*" && !users.contains_key(user) {
                return Err(format!(
                    "rules line {}: no user {user:?} in the htpasswd file",
                    n + 1
                ));
            }
            parsed.push(Rule {
                user: (user != "*").then(|| user.to_owned()),
                push,
                prefix: (prefix != "*").then(|| prefix.to_owned()),
            });
        }
        Ok(Access {
            users,
            rules: parsed,
            verified: Mutex::default(),
        })
    }

    /// The user the request's credentials name (`Ok(None)`: anonymous);
    /// `Err` for credentials that do not verify.
    fn identify(&self, headers: &HeaderMap) -> Result<Option<String>, ApiError> {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Ok(None);
        };
        let bad = || unauthorized("the credentials are not valid");
        let encoded = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Basic "))
            .ok_or_else(bad)?;
        let decoded = base64_decode(encoded.trim()).ok_or_else(bad)?;
        let pair = String::from_utf8(decoded).map_err(|_| bad())?;
        let (user, password) = pair.split_once(':').ok_or_else(bad)?;
        let hash = self.users.get(user).ok_or_else(bad)?;
        let key: [u8; 32] = Sha256::digest(pair.as_bytes()).into();
        if self.verified.lock().unwrap().contains(&key) {
            return Ok(Some(user.to_owned()));
        }
        if !bcrypt::verify(password, hash).unwrap_or(false) {
            return Err(bad());
        }
        self.verified.lock().unwrap().insert(key);
        Ok(Some(user.to_owned()))
    }

    fn allows(&self, user: Option<&str>, repo: Option<&RepoName>, right: Right) -> bool {
        self.rules.iter().any(|r| {
            r.user.as_deref().is_none_or(|u| Some(u) == user)
                && (r.push || right == Right::Pull)
                && match (&r.prefix, repo) {
                    (None, _) => true,
                    (Some(p), Some(repo)) => repo.as_str().starts_with(p.as_str()),
                    (Some(_), None) => false,
                }
        })
    }

    /// What `method` on `route` needs: (repository, right) pairs; `None`
    /// as the repository means every one (the catalog).
    fn needs(
        route: &Route,
        method: &Method,
        query: Option<&str>,
    ) -> Vec<(Option<RepoName>, Right)> {
        let right = if matches!(*method, Method::GET | Method::HEAD) {
            Right::Pull
        } else {
            Right::Push
        };
        let repo = match route {
            Route::Ping => return Vec::new(),
            Route::Catalog => return vec![(None, Right::Pull)],
            Route::Tags(r)
            | Route::Manifest(r, _)
            | Route::Blob(r, _)
            | Route::Uploads(r)
            | Route::Upload(r, _)
            | Route::Referrers(r, _) => r.clone(),
        };
        let mut out = vec![(Some(repo), right)];
        if let Route::Uploads(_) = route {
            let from = form_urlencoded::parse(query.unwrap_or("").as_bytes())
                .find(|(k, _)| k == "from")
                .and_then(|(_, v)| RepoName::parse(&v).ok());
            if let Some(from) = from {
                out.push((Some(from), Right::Pull));
            }
        }
        out
    }

    /// Whether the request may go on; the refusal otherwise.
    fn check(&self, req: &Request) -> Result<(), ApiError> {
        let user = self.identify(req.headers())?;
        let Ok(route) = path::parse(req.uri().path()) else {
            return Ok(()); // the handler answers 404 or 400 for what is no route
        };
        let needs = Access::needs(&route, req.method(), req.uri().query());
        let granted = if needs.is_empty() {
            // The version check: anyone the rules know of.
            self.rules
                .iter()
                .any(|r| r.user.is_none() || r.user.as_deref() == user.as_deref())
        } else {
            needs
                .iter()
                .all(|(repo, right)| self.allows(user.as_deref(), repo.as_ref(), *right))
        };
        match (granted, &user) {
            (true, _) => Ok(()),
            (false, None) => Err(unauthorized("authentication required")),
            (false, Some(u)) => Err(ApiError::code(
                ErrorCode::Denied,
                format!("{u} may not {} here", req.method()),
            )),
        }
    }
}

fn unauthorized(message: &str) -> ApiError {
    ApiError {
        status: StatusCode::UNAUTHORIZED,
        code: "UNAUTHORIZED",
        message: message.to_owned(),
        headers: HeaderMap::new(),
    }
    .with_header(
        header::WWW_AUTHENTICATE,
        "Basic realm=\"ocistore\", charset=\"UTF-8\"".into(),
    )
}

/// The middleware: refuses before any handler (or body read) runs.
pub(crate) async fn enforce(
    State(access): State<Arc<Access>>,
    req: Request,
    next: Next,
) -> Response {
    match access.check(&req) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// Standard base64 (RFC 4648, with padding), as Basic credentials use.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let bytes = s.as_bytes();
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for chunk in bytes.chunks(4) {
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || chunk[..4 - pad].contains(&b'=') {
            return None;
        }
        let mut n = 0u32;
        for &c in &chunk[..4 - pad] {
            n = n << 6 | value(c)?;
        }
        n <<= 6 * pad as u32;
        let three = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&three[..3 - pad]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_of_credentials() {
        assert_eq!(base64_decode("YWxpY2U6c2VjcmV0").unwrap(), b"alice:secret");
        assert_eq!(base64_decode("YQ==").unwrap(), b"a");
        assert_eq!(base64_decode("YWI=").unwrap(), b"ab");
        for bad in ["YQ=", "Y===", "YQ=a", "a b=", "@@@@"] {
            assert!(base64_decode(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn rules_grant_by_user_prefix_and_right() {
        let hash = bcrypt::hash("pw", 4).unwrap();
        let access = Access::parse(
            &format!("alice:{hash}\nbob:{hash}\n"),
            "alice push team/\n* pull library/\nbob pull *\n",
        )
        .unwrap();
        let repo = |s: &str| RepoName::parse(s).unwrap();
        let (team, lib, other) = (repo("team/app"), repo("library/x"), repo("other"));
        assert!(access.allows(Some("alice"), Some(&team), Right::Push));
        assert!(access.allows(Some("alice"), Some(&team), Right::Pull));
        assert!(!access.allows(Some("alice"), Some(&other), Right::Pull));
        assert!(access.allows(None, Some(&lib), Right::Pull));
        assert!(!access.allows(None, Some(&lib), Right::Push));
        assert!(access.allows(Some("bob"), Some(&other), Right::Pull));
        assert!(!access.allows(Some("bob"), Some(&other), Right::Push));
        assert!(
            access.allows(Some("bob"), None, Right::Pull),
            "bob sees the catalog"
        );
        assert!(!access.allows(Some("alice"), None, Right::Pull));
        for (htpasswd, rules) in [
            ("alice:plain", "alice pull *"),
            (&*format!("alice:{hash}"), "carol pull *"),
            (&*format!("alice:{hash}"), "alice read *"),
            (&*format!("alice:{hash}"), "alice pull"),
        ] {
            assert!(
                Access::parse(htpasswd, rules).is_err(),
                "{htpasswd} / {rules}"
            );
        }
    }
}
