//! The sequential editing traces in `testdata/traces/` (copied from
//! josephg/editing-traces, CC BY 4.0: see `testdata/README.md`).

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// One trace: replay every patch in order on an empty document and the text
/// is `end_content`.
#[derive(Debug, Deserialize)]
pub struct Trace {
    #[serde(rename = "endContent")]
    pub end_content: String,
    pub txns: Vec<Txn>,
}

/// The patches one editor event made, in the order they apply.
#[derive(Debug, Deserialize)]
pub struct Txn {
    pub patches: Vec<Patch>,
}

/// `Array.splice` semantics, positions in code points: at `pos`, delete `del`
/// code points and insert `ins`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "(usize, usize, String)")]
pub struct Patch {
    pub pos: usize,
    pub del: usize,
    pub ins: String,
}

impl From<(usize, usize, String)> for Patch {
    fn from((pos, del, ins): (usize, usize, String)) -> Self {
        Patch { pos, del, ins }
    }
}

impl Trace {
    /// Every patch of every transaction, in order.
    pub fn patches(&self) -> impl Iterator<Item = &Patch> {
        self.txns.iter().flat_map(|t| &t.patches)
    }
}

/// `testdata/traces/sequential_traces` at the repository root.
pub fn traces_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/traces/sequential_traces")
}

/// Every trace file (`*.json.gz`) in [`traces_dir`] and its `ascii_only/`,
/// sorted.
pub fn trace_files() -> Vec<PathBuf> {
    let root = traces_dir();
    let mut out = Vec::new();
    for dir in [root.clone(), root.join("ascii_only")] {
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for e in entries {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "gz") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Reads and parses one gzip'd trace file; panics with the path on error.
pub fn load_file(path: &Path) -> Trace {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut s = String::new();
    flate2::read::GzDecoder::new(file)
        .read_to_string(&mut s)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&s).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The trace `name` (e.g. `"automerge-paper"`) from [`traces_dir`].
pub fn load(name: &str) -> Trace {
    load_file(&traces_dir().join(format!("{name}.json.gz")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Replays on a `Vec<char>`, independently of `ot`.
    fn replay(t: &Trace) -> String {
        let mut doc: Vec<char> = Vec::new();
        for p in t.patches() {
            doc.splice(p.pos..p.pos + p.del, p.ins.chars());
        }
        doc.into_iter().collect()
    }

    #[test]
    fn finds_every_trace() {
        let files = trace_files();
        assert_eq!(files.len(), 14, "{files:?}");
        assert!(files
            .iter()
            .any(|p| p.ends_with("ascii_only/rustcode.json.gz")));
    }

    #[test]
    fn loads_a_trace_that_replays_to_its_end_content() {
        let t = load("sveltecomponent");
        assert_eq!(t.patches().count(), 19_749);
        assert_eq!(replay(&t), t.end_content);
        assert_eq!(t.end_content.chars().count(), 18_451);
    }
}
