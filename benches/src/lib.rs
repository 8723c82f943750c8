//! Loads the editing traces in `testdata/traces/` as Quire ops, for the
//! benchmarks.

use std::io::Read;
use std::path::{Path, PathBuf};

use ot::Op;
use serde::Deserialize;

#[derive(Deserialize)]
struct Trace {
    #[serde(rename = "endContent")]
    end_content: String,
    txns: Vec<Txn>,
}

#[derive(Deserialize)]
struct Txn {
    patches: Vec<(usize, usize, String)>,
}

/// A trace as a list of ops (one per patch) and the expected final text.
pub struct Loaded {
    pub name: String,
    pub ops: Vec<Op>,
    pub end: String,
}

/// `testdata/traces/sequential_traces` at the repository root.
pub fn traces_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/traces/sequential_traces")
}

pub fn load(name: &str) -> Loaded {
    let path = traces_dir().join(format!("{name}.json.gz"));
    let mut s = String::new();
    flate2::read::GzDecoder::new(
        std::fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .read_to_string(&mut s)
    .unwrap();
    let t: Trace = serde_json::from_str(&s).unwrap();
    let ops = t
        .txns
        .iter()
        .flat_map(|t| t.patches.iter().map(|(p, d, i)| Op::splice(*p, *d, i)))
        .collect();
    Loaded {
        name: name.to_owned(),
        ops,
        end: t.end_content,
    }
}
