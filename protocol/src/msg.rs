use ot::{Op, SentOp};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{validate_client_id, AppliedRecord, ErrorCode, ProtoError};

/// A cursor or selection, in code points of the document at `seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    pub anchor: u64,
    pub head: u64,
}

/// Client → server (SPEC §5). Unknown fields are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ClientMsg {
    Hello {
        client: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<u64>,
    },
    Op {
        client: String,
        cseq: u64,
        base: u64,
        /// As sent: its span decides whether it fits (SPEC §3).
        op: SentOp,
    },
    Presence {
        seq: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cursor: Option<Cursor>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        meta: Option<Value>,
    },
    Ping,
}

/// Presence `meta` is a small object (name, colour); larger is refused.
pub const MAX_META_BYTES: usize = 1024;

impl ClientMsg {
    /// Parses and checks one text frame.
    pub fn parse(text: &str) -> Result<ClientMsg, ProtoError> {
        let msg: ClientMsg = serde_json::from_str(text).map_err(|e| {
            ProtoError::new(ErrorCode::BadMessage, format!("unreadable message: {e}"))
        })?;
        msg.check()?;
        Ok(msg)
    }

    /// Field checks that serde's types cannot express.
    pub fn check(&self) -> Result<(), ProtoError> {
        match self {
            ClientMsg::Hello { client, .. } => validate_client_id(client),
            ClientMsg::Op { client, cseq, .. } => {
                validate_client_id(client)?;
                if *cseq == 0 {
                    return Err(ProtoError::new(ErrorCode::BadMessage, "cseq starts at 1"));
                }
                Ok(())
            }
            ClientMsg::Presence { meta, .. } => match meta {
                None => Ok(()),
                Some(Value::Object(_)) if meta_len(meta) <= MAX_META_BYTES => Ok(()),
                Some(Value::Object(_)) => Err(ProtoError::new(
                    ErrorCode::TooLarge,
                    format!("presence meta is over {MAX_META_BYTES} bytes"),
                )),
                Some(_) => Err(ProtoError::new(
                    ErrorCode::BadMessage,
                    "presence meta must be an object",
                )),
            },
            ClientMsg::Ping => Ok(()),
        }
    }
}

fn meta_len(meta: &Option<Value>) -> usize {
    meta.as_ref().map_or(0, |m| m.to_string().len())
}

/// RATE_LIMITED and OVERLOADED always say when to retry (SPEC §7); where
/// the server knows no better, one second.
pub const DEFAULT_RETRY_AFTER_MS: u64 = 1000;

fn default_retry_after(code: ErrorCode) -> Option<u64> {
    matches!(code, ErrorCode::RateLimited | ErrorCode::Overloaded).then_some(DEFAULT_RETRY_AFTER_MS)
}

/// Server → client (SPEC §5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ServerMsg {
    Snapshot {
        seq: u64,
        text: String,
    },
    Applied {
        seq: u64,
        prev: u64,
        client: String,
        cseq: u64,
        user: String,
        ts: i64,
        op: Op,
    },
    Ready {
        seq: u64,
    },
    Ack {
        client: String,
        cseq: u64,
        seq: u64,
        dup: bool,
    },
    Error {
        code: ErrorCode,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cseq: Option<u64>,
        #[serde(
            rename = "retryAfterMs",
            default,
            skip_serializing_if = "Option::is_none"
        )]
        retry_after_ms: Option<u64>,
    },
    Presence {
        client: String,
        user: String,
        seq: u64,
        #[serde(default)]
        cursor: Option<Cursor>,
        #[serde(default)]
        meta: Option<Value>,
    },
    Leave {
        client: String,
    },
    Pong,
}

impl ServerMsg {
    pub fn applied(r: &AppliedRecord) -> ServerMsg {
        ServerMsg::Applied {
            seq: r.seq,
            prev: r.prev,
            client: r.client.clone(),
            cseq: r.cseq,
            user: r.user.clone(),
            ts: r.ts,
            op: r.op.clone(),
        }
    }

    pub fn error(e: &ProtoError) -> ServerMsg {
        ServerMsg::Error {
            code: e.code,
            message: e.message.clone(),
            client: None,
            cseq: None,
            retry_after_ms: default_retry_after(e.code),
        }
    }

    pub fn op_error(e: &ProtoError, client: &str, cseq: u64) -> ServerMsg {
        ServerMsg::Error {
            code: e.code,
            message: e.message.clone(),
            client: Some(client.to_owned()),
            cseq: Some(cseq),
            retry_after_ms: default_retry_after(e.code),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("server messages always serialise")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(text: &str) -> ErrorCode {
        ClientMsg::parse(text).unwrap_err().code
    }

    #[test]
    fn parses_every_client_message() {
        assert_eq!(
            ClientMsg::parse(r#"{"type":"hello","client":"c1","since":4,"extra":1}"#).unwrap(),
            ClientMsg::Hello {
                client: "c1".into(),
                since: Some(4)
            }
        );
        assert!(matches!(
            ClientMsg::parse(r#"{"type":"op","client":"c1","cseq":1,"base":0,"op":["hi"]}"#),
            Ok(ClientMsg::Op { .. })
        ));
        assert!(matches!(
            ClientMsg::parse(
                r#"{"type":"presence","seq":3,"cursor":{"anchor":1,"head":2},"meta":{"name":"a"}}"#
            ),
            Ok(ClientMsg::Presence { .. })
        ));
        assert_eq!(
            ClientMsg::parse(r#"{"type":"ping"}"#).unwrap(),
            ClientMsg::Ping
        );
    }

    #[test]
    fn malformed_input_gets_a_code() {
        assert_eq!(code("not json"), ErrorCode::BadMessage);
        assert_eq!(code(r#"{"type":"nope"}"#), ErrorCode::BadMessage);
        assert_eq!(code(r#"{"client":"c"}"#), ErrorCode::BadMessage);
        assert_eq!(
            code(r#"{"type":"op","client":"c","cseq":"1","base":0,"op":[]}"#),
            ErrorCode::BadMessage
        );
        assert_eq!(
            code(r#"{"type":"op","client":"c","cseq":-1,"base":0,"op":[]}"#),
            ErrorCode::BadMessage
        );
        assert_eq!(
            code(r#"{"type":"op","client":"c","cseq":0,"base":0,"op":[]}"#),
            ErrorCode::BadMessage
        );
        assert_eq!(
            code(r#"{"type":"op","client":"c","cseq":1,"base":0,"op":[1.5]}"#),
            ErrorCode::BadMessage
        );
        assert_eq!(
            code(r#"{"type":"op","client":"c","cseq":1,"base":0,"op":{}}"#),
            ErrorCode::BadMessage
        );
        assert_eq!(
            code(r#"{"type":"hello","client":"bad id!"}"#),
            ErrorCode::BadMessage
        );
        assert_eq!(
            code(r#"{"type":"presence","seq":1,"meta":"x"}"#),
            ErrorCode::BadMessage
        );
        let big = format!(
            r#"{{"type":"presence","seq":1,"meta":{{"n":"{}"}}}}"#,
            "x".repeat(2000)
        );
        assert_eq!(code(&big), ErrorCode::TooLarge);
    }

    #[test]
    fn server_messages_have_spec_names() {
        let e = ServerMsg::Error {
            code: ErrorCode::RateLimited,
            message: "slow down".into(),
            client: None,
            cseq: None,
            retry_after_ms: Some(50),
        };
        assert_eq!(
            e.to_json(),
            r#"{"type":"error","code":"RATE_LIMITED","message":"slow down","retryAfterMs":50}"#
        );
        let ack = ServerMsg::Ack {
            client: "c".into(),
            cseq: 2,
            seq: 9,
            dup: true,
        };
        assert_eq!(
            ack.to_json(),
            r#"{"type":"ack","client":"c","cseq":2,"seq":9,"dup":true}"#
        );
    }
}
