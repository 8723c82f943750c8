//! SPEC §8: HS256 JWTs with `sub`, `docs` (globs over doc ids), `role`, `exp`.

use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};
use protocol::{ErrorCode, ProtoError};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Read,
    Write,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub docs: Vec<String>,
    pub role: Role,
    pub exp: u64,
}

/// Who is asking, and what they may touch.
#[derive(Debug, Clone)]
pub struct Principal {
    pub user: String,
    pub role: Role,
    pub docs: Vec<String>,
}

impl Principal {
    pub fn can_access(&self, doc: &str) -> bool {
        self.docs
            .iter()
            .any(|g| glob_match(g.as_bytes(), doc.as_bytes()))
    }

    pub fn check_doc(&self, doc: &str) -> Result<(), ProtoError> {
        if self.can_access(doc) {
            Ok(())
        } else {
            Err(ProtoError::new(
                ErrorCode::Forbidden,
                format!("token does not grant document {doc}"),
            ))
        }
    }

    pub fn check_write(&self) -> Result<(), ProtoError> {
        match self.role {
            Role::Write => Ok(()),
            Role::Read => Err(ProtoError::new(
                ErrorCode::Forbidden,
                "read role may not submit ops",
            )),
        }
    }
}

/// Open mode (no secret) or HS256 verification.
#[derive(Clone)]
pub struct Auth {
    key: Option<(DecodingKey, Validation)>,
}

impl Auth {
    pub fn open() -> Auth {
        Auth { key: None }
    }

    pub fn hs256(secret: &[u8]) -> Auth {
        let mut v = Validation::new(Algorithm::HS256);
        v.leeway = 0;
        v.set_required_spec_claims(&["exp", "sub"]);
        Auth {
            key: Some((DecodingKey::from_secret(secret), v)),
        }
    }

    pub fn is_open(&self) -> bool {
        self.key.is_none()
    }

    pub fn authenticate(&self, token: Option<&str>) -> Result<Principal, ProtoError> {
        let Some((key, validation)) = &self.key else {
            return Ok(Principal {
                user: "anonymous".into(),
                role: Role::Write,
                docs: vec!["*".into()],
            });
        };
        let token = token.ok_or_else(|| {
            ProtoError::new(ErrorCode::Unauthorized, "a bearer token is required")
        })?;
        let data = decode::<Claims>(token, key, validation)
            .map_err(|e| ProtoError::new(ErrorCode::Unauthorized, format!("invalid token: {e}")))?;
        let c = data.claims;
        if c.sub.is_empty() {
            return Err(ProtoError::new(
                ErrorCode::Unauthorized,
                "token has an empty sub",
            ));
        }
        Ok(Principal {
            user: c.sub,
            role: c.role,
            docs: c.docs,
        })
    }
}

/// `*` matches any run of characters, `?` any one; everything else itself.
fn glob_match(pat: &[u8], s: &[u8]) -> bool {
    let (mut p, mut i) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while i < s.len() {
        if p < pat.len() && (pat[p] == b'?' || pat[p] == s[i]) {
            p += 1;
            i += 1;
        } else if p < pat.len() && pat[p] == b'*' {
            star = Some(p);
            mark = i;
            p += 1;
        } else if let Some(sp) = star {
            p = sp + 1;
            mark += 1;
            i = mark;
        } else {
            return false;
        }
    }
    while p < pat.len() && pat[p] == b'*' {
        p += 1;
    }
    p == pat.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match(b"*", b"anything"));
        assert!(glob_match(b"team-a.*", b"team-a.notes"));
        assert!(!glob_match(b"team-a.*", b"team-b.notes"));
        assert!(glob_match(b"a*c*e", b"abcde"));
        assert!(!glob_match(b"a*c*e", b"abcd"));
        assert!(glob_match(b"doc?", b"doc1"));
        assert!(!glob_match(b"doc", b"doc1"));
    }

    #[test]
    fn tokens() {
        let auth = Auth::hs256(b"s3cret");
        let exp = (protocol::now_ms() / 1000 + 3600) as u64;
        let claims = Claims {
            sub: "alice".into(),
            docs: vec!["a.*".into()],
            role: Role::Read,
            exp,
        };
        let key = jsonwebtoken::EncodingKey::from_secret(b"s3cret");
        let tok = jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap();
        let p = auth.authenticate(Some(&tok)).unwrap();
        assert_eq!(p.user, "alice");
        assert!(p.check_doc("a.x").is_ok() && p.check_doc("b.x").is_err());
        assert!(p.check_write().is_err());
        let bad = jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(b"other"),
        )
        .unwrap();
        assert_eq!(
            auth.authenticate(Some(&bad)).unwrap_err().code,
            ErrorCode::Unauthorized
        );
        let old = Claims {
            exp: (protocol::now_ms() / 1000 - 5) as u64,
            ..claims
        };
        let expired = jsonwebtoken::encode(&jsonwebtoken::Header::default(), &old, &key).unwrap();
        assert_eq!(
            auth.authenticate(Some(&expired)).unwrap_err().code,
            ErrorCode::Unauthorized
        );
        assert_eq!(
            auth.authenticate(None).unwrap_err().code,
            ErrorCode::Unauthorized
        );
    }
}
