//! Log records and snapshots (SPEC §10). Every record carries `v`; readers
//! refuse versions they do not know.

use ot::{Op, SentOp};
use serde::{Deserialize, Serialize};

use crate::{ErrorCode, ProtoError};

pub const RECORD_VERSION: u32 = 1;

/// A submitted op, as ingest produces it to `quire.ops`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RawRecord {
    pub v: u32,
    pub doc: String,
    pub client: String,
    pub cseq: u64,
    pub base: u64,
    /// The op as the client sent it, trailing retain included: the
    /// transformer checks that it fits the document at `base`.
    pub op: SentOp,
    pub user: String,
    pub ts: i64,
}

/// An op the transformer applied, as written to `quire.applied`.
/// `op` is the transformed op; `del` holds the text each delete removed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppliedRecord {
    pub v: u32,
    pub doc: String,
    pub seq: u64,
    pub prev: u64,
    pub client: String,
    pub cseq: u64,
    pub base: u64,
    pub user: String,
    pub ts: i64,
    pub op: Op,
    pub del: Vec<String>,
}

/// A refused op; `seq` is the raw record's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RejectedRecord {
    pub v: u32,
    pub doc: String,
    pub seq: u64,
    pub client: String,
    pub cseq: u64,
    pub code: ErrorCode,
    pub message: String,
}

/// A `quire.applied` value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum OutRecord {
    Applied(AppliedRecord),
    Rejected(RejectedRecord),
}

impl OutRecord {
    pub fn doc(&self) -> &str {
        match self {
            OutRecord::Applied(a) => &a.doc,
            OutRecord::Rejected(r) => &r.doc,
        }
    }

    /// The raw record's seq (for applied records, the op's own seq).
    pub fn raw_seq(&self) -> u64 {
        match self {
            OutRecord::Applied(a) => a.seq,
            OutRecord::Rejected(r) => r.seq,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("records always serialise")
    }
}

impl RawRecord {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("records always serialise")
    }
}

impl AppliedRecord {
    pub fn encode(&self) -> Vec<u8> {
        OutRecord::Applied(self.clone()).encode()
    }
}

#[derive(Deserialize)]
struct Header {
    v: u32,
}

fn check_version(bytes: &[u8]) -> Result<(), ProtoError> {
    let h: Header = serde_json::from_slice(bytes).map_err(|e| {
        ProtoError::new(
            ErrorCode::BadMessage,
            format!("record without a version: {e}"),
        )
    })?;
    if h.v != RECORD_VERSION {
        return Err(ProtoError::new(
            ErrorCode::BadMessage,
            format!(
                "record version {} is not known to this reader (knows {RECORD_VERSION})",
                h.v
            ),
        ));
    }
    Ok(())
}

pub fn decode_raw_record(bytes: &[u8]) -> Result<RawRecord, ProtoError> {
    check_version(bytes)?;
    serde_json::from_slice(bytes)
        .map_err(|e| ProtoError::new(ErrorCode::BadMessage, format!("bad ops record: {e}")))
}

pub fn decode_out_record(bytes: &[u8]) -> Result<OutRecord, ProtoError> {
    check_version(bytes)?;
    serde_json::from_slice(bytes)
        .map_err(|e| ProtoError::new(ErrorCode::BadMessage, format!("bad applied record: {e}")))
}

/// A `quire.presence` value: ephemeral cursor state, or a client leaving.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum PresenceRecord {
    Presence {
        v: u32,
        doc: String,
        client: String,
        user: String,
        seq: u64,
        #[serde(default)]
        cursor: Option<crate::Cursor>,
        #[serde(default)]
        meta: Option<serde_json::Value>,
        ts: i64,
    },
    Leave {
        v: u32,
        doc: String,
        client: String,
        ts: i64,
    },
}

impl PresenceRecord {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("records always serialise")
    }

    pub fn client(&self) -> &str {
        match self {
            PresenceRecord::Presence { client, .. } | PresenceRecord::Leave { client, .. } => {
                client
            }
        }
    }

    /// The message other subscribers get.
    pub fn to_msg(&self) -> crate::ServerMsg {
        match self {
            PresenceRecord::Presence {
                client,
                user,
                seq,
                cursor,
                meta,
                ..
            } => crate::ServerMsg::Presence {
                client: client.clone(),
                user: user.clone(),
                seq: *seq,
                cursor: *cursor,
                meta: meta.clone(),
            },
            PresenceRecord::Leave { client, .. } => crate::ServerMsg::Leave {
                client: client.clone(),
            },
        }
    }
}

pub fn decode_presence_record(bytes: &[u8]) -> Result<PresenceRecord, ProtoError> {
    check_version(bytes)?;
    serde_json::from_slice(bytes)
        .map_err(|e| ProtoError::new(ErrorCode::BadMessage, format!("bad presence record: {e}")))
}

/// One row of a document's dedup table: the last op of each client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientEntry {
    pub client: String,
    pub user: String,
    pub cseq: u64,
    pub seq: u64,
}

/// A document at version `seq` (its lastIncludedSeq), with its dedup table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub doc: String,
    pub seq: u64,
    pub text: String,
    pub clients: Vec<ClientEntry>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applied_record_format() {
        let r = AppliedRecord {
            v: 1,
            doc: "d".into(),
            seq: 5,
            prev: 2,
            client: "c".into(),
            cseq: 1,
            base: 2,
            user: "u".into(),
            ts: 7,
            op: serde_json::from_str(r#"[1,"x",-1]"#).unwrap(),
            del: vec!["y".into()],
        };
        let json = String::from_utf8(r.encode()).unwrap();
        assert_eq!(
            json,
            r#"{"kind":"applied","v":1,"doc":"d","seq":5,"prev":2,"client":"c","cseq":1,"base":2,"user":"u","ts":7,"op":[1,"x",-1],"del":["y"]}"#
        );
        assert_eq!(
            decode_out_record(json.as_bytes()).unwrap(),
            OutRecord::Applied(r)
        );
    }

    #[test]
    fn unknown_versions_are_refused() {
        let e = decode_out_record(br#"{"v":2,"kind":"applied"}"#).unwrap_err();
        assert!(e.message.contains("version 2"), "{e}");
        assert!(decode_raw_record(b"{}").is_err());
        assert!(decode_raw_record(b"garbage").is_err());
    }
}
