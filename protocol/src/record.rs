//! Log records and snapshots (SPEC §10). Every record carries `v`; readers
//! refuse versions they do not know.

use ot::{Op, SentOp};
use serde::{Deserialize, Serialize};

use crate::{ErrorCode, ProtoError};

/// Version of `quire.ops` and `quire.presence` records.
pub const RECORD_VERSION: u32 = 1;

/// Version of `quire.applied` records this build writes: 2 adds `hash` to
/// applied records (the chain, see [`crate::chain`]). Readers take 1 and 2.
pub const APPLIED_VERSION: u32 = 2;

/// `quire.applied` versions this build reads.
pub const APPLIED_VERSIONS_READ: &[u32] = &[1, 2];

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
    /// Version 2: the chain hash (64 hex digits) over the document's
    /// previous record's hash and this record's content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
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

fn check_version(bytes: &[u8], known: &[u32]) -> Result<(), ProtoError> {
    let h: Header = serde_json::from_slice(bytes).map_err(|e| {
        ProtoError::new(
            ErrorCode::BadMessage,
            format!("record without a version: {e}"),
        )
    })?;
    if !known.contains(&h.v) {
        return Err(ProtoError::new(
            ErrorCode::BadMessage,
            format!(
                "record version {} is not known to this reader (knows {known:?})",
                h.v
            ),
        ));
    }
    Ok(())
}

pub fn decode_raw_record(bytes: &[u8]) -> Result<RawRecord, ProtoError> {
    check_version(bytes, &[RECORD_VERSION])?;
    serde_json::from_slice(bytes)
        .map_err(|e| ProtoError::new(ErrorCode::BadMessage, format!("bad ops record: {e}")))
}

pub fn decode_out_record(bytes: &[u8]) -> Result<OutRecord, ProtoError> {
    check_version(bytes, APPLIED_VERSIONS_READ)?;
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
    check_version(bytes, &[RECORD_VERSION])?;
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
    /// The chain hash at `seq` (hex; absent in snapshots written before
    /// the chain existed: the chain then restarts from the snapshot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
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
            hash: None,
        };
        let json = String::from_utf8(r.encode()).unwrap();
        assert_eq!(
            json,
            r#"{"kind":"applied","v":1,"doc":"d","seq":5,"prev":2,"client":"c","cseq":1,"base":2,"user":"u","ts":7,"op":[1,"x",-1],"del":["y"]}"#
        );
        assert_eq!(
            decode_out_record(json.as_bytes()).unwrap(),
            OutRecord::Applied(r.clone())
        );
        // Version 2 adds the chain hash; both versions are read.
        let v2 = AppliedRecord {
            v: 2,
            hash: Some("ab".repeat(32)),
            ..r
        };
        let json = String::from_utf8(v2.encode()).unwrap();
        assert!(
            json.ends_with(&format!(r#","hash":"{}"}}"#, "ab".repeat(32))),
            "{json}"
        );
        assert_eq!(
            decode_out_record(json.as_bytes()).unwrap(),
            OutRecord::Applied(v2)
        );
    }

    #[test]
    fn unknown_versions_are_refused() {
        let e = decode_out_record(br#"{"v":3,"kind":"applied"}"#).unwrap_err();
        assert!(e.message.contains("version 3"), "{e}");
        // Raw and presence records are still version 1 only.
        let e = decode_raw_record(br#"{"v":2}"#).unwrap_err();
        assert!(e.message.contains("version 2"), "{e}");
        assert!(decode_raw_record(b"{}").is_err());
        assert!(decode_raw_record(b"garbage").is_err());
    }
}
