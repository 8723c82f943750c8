//! `quire export` and `quire import`: one document's history as a file, for
//! backups, moving a document between deployments, and seeding test data.
//!
//! The file is JSON lines: a header, then the document's applied records
//! (docs/records.md), oldest first. Import submits each record's op again,
//! in order, as the raw ops of the target document, with the record's
//! client, cseq, user and ts: the target's transformer applies them and
//! writes its own seqs and hash chain (seqs are log offsets of the target).

use std::io::{BufRead, Write};

use anyhow::{bail, Context};
use document::{records_after, Sources, Topics, WindowPolicy};
use oplog::OpLog;
use protocol::{
    decode_out_record, validate_doc_id, AppliedRecord, OutRecord, RawRecord, RECORD_VERSION,
};
use serde::{Deserialize, Serialize};
use store::Store;

/// Format of the export file.
pub const EXPORT_FORMAT: u32 = 1;

/// The export file's first line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExportHeader {
    pub quire_export: u32,
    pub doc: String,
    /// The document's version at the end of the export.
    pub seq: u64,
    pub records: u64,
    /// The text at `seq` (import checks its replay against it).
    pub text: String,
}

/// The applied records of `doc` with `seq <= at`: the store's history, then
/// the applied topic beyond what the compactor archived.
pub async fn history(
    log: &dyn OpLog,
    store: &dyn Store,
    topics: &Topics,
    doc: &str,
    at: u64,
) -> anyhow::Result<Vec<AppliedRecord>> {
    let src = Sources {
        log,
        store,
        topics,
        window: WindowPolicy::NONE,
    };
    let mut out = records_after(src, doc, 0, usize::MAX).await?;
    out.retain(|r| r.seq <= at);
    Ok(out)
}

/// Writes the export of `doc` at version `at` (`u64::MAX`: the latest).
pub async fn export(
    log: &dyn OpLog,
    store: &dyn Store,
    topics: &Topics,
    doc: &str,
    at: u64,
    out: &mut dyn Write,
) -> anyhow::Result<ExportHeader> {
    validate_doc_id(doc).map_err(|e| anyhow::anyhow!("{}", e.message))?;
    let records = history(log, store, topics, doc, at).await?;
    // Replay to check the records form one chain and to state the text.
    let mut state = document::DocState::<document::OpShape>::empty(doc);
    for r in &records {
        state
            .apply_record(r)
            .with_context(|| format!("{doc}: the history does not replay at seq {}", r.seq))?;
        state.trim(document::WindowPolicy::NONE);
    }
    let header = ExportHeader {
        quire_export: EXPORT_FORMAT,
        doc: doc.to_owned(),
        seq: state.version,
        records: records.len() as u64,
        text: state.text.to_string(),
    };
    serde_json::to_writer(&mut *out, &header)?;
    writeln!(out)?;
    for r in &records {
        out.write_all(&r.encode())?;
        writeln!(out)?;
    }
    out.flush()?;
    Ok(header)
}

/// What an import did.
#[derive(Debug, Clone, Serialize)]
pub struct ImportSummary {
    pub doc: String,
    pub ops: u64,
    /// seq of the last op submitted (the document's version once applied).
    pub last_seq: u64,
}

/// Reads an export and submits its ops as the raw ops of `target` (the
/// exported document's id unless given). The target must be empty: its
/// history would otherwise interleave with the imported one.
pub async fn import(
    log: &dyn OpLog,
    store: &dyn Store,
    topics: &Topics,
    input: &mut dyn BufRead,
    target: Option<&str>,
) -> anyhow::Result<ImportSummary> {
    let mut lines = input.lines();
    let first = lines.next().context("the file is empty")??;
    let header: ExportHeader =
        serde_json::from_str(&first).context("the first line is not a Quire export header")?;
    if header.quire_export != EXPORT_FORMAT {
        bail!(
            "export format {} is not known to this build (knows {EXPORT_FORMAT})",
            header.quire_export
        );
    }
    let doc = target.unwrap_or(&header.doc).to_owned();
    validate_doc_id(&doc).map_err(|e| anyhow::anyhow!("{}", e.message))?;
    let existing = history(log, store, topics, &doc, u64::MAX).await?;
    if let Some(last) = existing.last() {
        bail!(
            "{doc} already has a history (version {}): import into an empty document (--doc NEW_ID)",
            last.seq
        );
    }
    // Read and check every record before submitting any.
    let mut records = Vec::new();
    let mut replay = document::DocState::<document::OpShape>::empty(&header.doc);
    for (i, line) in lines.enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let rec = match decode_out_record(line.as_bytes()) {
            Ok(OutRecord::Applied(a)) => a,
            Ok(OutRecord::Rejected(_)) => continue,
            Err(e) => bail!("line {}: {}", i + 2, e.message),
        };
        replay
            .apply_record(&rec)
            .with_context(|| format!("line {}: the records do not form one history", i + 2))?;
        replay.trim(document::WindowPolicy::NONE);
        records.push(rec);
    }
    if records.len() as u64 != header.records || replay.text != header.text.as_str() {
        bail!(
            "the file is incomplete or altered: {} records replay to a text that is not the header's ({} records)",
            records.len(),
            header.records
        );
    }
    // Each op is based on the previous one's seq, so none is transformed:
    // the target gets the same texts, version by version.
    let mut base = 0;
    for r in &records {
        let raw = RawRecord {
            v: RECORD_VERSION,
            doc: doc.clone(),
            client: r.client.clone(),
            cseq: r.cseq,
            base,
            op: r.op.clone().into(),
            user: r.user.clone(),
            ts: r.ts,
        };
        let placed = log
            .produce(&topics.ops, vec![(doc.clone(), raw.encode())])
            .await?;
        base = placed[0].1 + 1;
    }
    Ok(ImportSummary {
        doc,
        ops: records.len() as u64,
        last_seq: base,
    })
}
