use crate::{ErrorCode, ProtoError};

fn check(kind: &str, s: &str, max: usize, extra: &[char]) -> Result<(), ProtoError> {
    let ok = !s.is_empty()
        && s.len() <= max
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || extra.contains(&c));
    if ok {
        Ok(())
    } else {
        Err(ProtoError::new(
            ErrorCode::BadMessage,
            format!(
                "{kind} must be 1-{max} characters of [A-Za-z0-9_-{}]",
                extra.iter().collect::<String>()
            ),
        ))
    }
}

/// Doc id: 1–128 chars of `[A-Za-z0-9._-]`.
pub fn validate_doc_id(doc: &str) -> Result<(), ProtoError> {
    check("doc id", doc, 128, &['.'])
}

/// clientId: 1–64 chars of `[A-Za-z0-9_-]`.
pub fn validate_client_id(client: &str) -> Result<(), ProtoError> {
    check("client id", client, 64, &[])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(validate_doc_id("team-a.notes_1").is_ok());
        assert!(validate_doc_id("").is_err());
        assert!(validate_doc_id("a/b").is_err());
        assert!(validate_doc_id(&"x".repeat(129)).is_err());
        assert!(validate_client_id("c-1_A").is_ok());
        assert!(validate_client_id("c.1").is_err());
        assert!(validate_client_id(&"x".repeat(65)).is_err());
    }
}
