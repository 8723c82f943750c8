//! The segment-file format of the release before the log moved onto fjall:
//! read once, to move such a log into the database (`legacy.rs`), and
//! written only by the `log.redb` migration on its way there (`migrate.rs`).
//!
//! One append-only stream of checksummed frames spread over numbered
//! segment files (`00000001.wal`, ...).
//!
//! A frame is `len: u32 | crc32: u32 | lsn: u64 | kind: u8 | payload`, all
//! little-endian; `len` counts `kind` and the payload, the CRC covers `lsn`,
//! `kind` and the payload, and `lsn` (the frame's number) grows by one per
//! frame across segments. A segment is preallocated, so it reads as zeros
//! past its last frame: the first frame that is zero, short, fails its CRC
//! or breaks the `lsn` sequence ends that segment (a write torn by a crash:
//! it was never acknowledged, since acknowledgements follow the fsync that
//! covers the whole frame). A segment is never written again once the log
//! has moved on to the next, and every segment starts with a checkpoint of
//! the small state (partitions' next offsets and starts, consumer
//! positions), so the oldest segments can be deleted.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

pub(crate) const HEADER: usize = 16;
/// Largest frame body accepted when reading (a corrupt length is not
/// allocated).
pub(crate) const MAX_BODY: u32 = 1 << 30;

pub(crate) const CHECKPOINT: u8 = 1;
pub(crate) const APPEND: u8 = 2;
pub(crate) const COMMIT: u8 = 3;
pub(crate) const DELETE: u8 = 4;
/// Live records of an old segment written again (same offsets), so the old
/// segment can go.
pub(crate) const RELOCATE: u8 = 5;

pub(crate) fn segment_path(dir: &Path, id: u32) -> PathBuf {
    dir.join(format!("{id:08}.wal"))
}

/// Segment ids present in `dir`, ascending.
pub(crate) fn list(dir: &Path) -> std::io::Result<Vec<u32>> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(id) = name.strip_suffix(".wal").and_then(|n| n.parse().ok()) {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// Builds frames into one buffer (a group commit is one write).
#[derive(Default)]
pub(crate) struct FrameBuf {
    pub buf: Vec<u8>,
    start: usize,
}

impl FrameBuf {
    pub fn clear(&mut self) {
        self.buf.clear();
    }

    pub fn begin(&mut self, lsn: u64, kind: u8) {
        self.start = self.buf.len();
        self.buf.extend_from_slice(&[0; 8]);
        self.buf.extend_from_slice(&lsn.to_le_bytes());
        self.buf.push(kind);
    }

    pub fn finish(&mut self) {
        let s = self.start;
        let len = (self.buf.len() - s - HEADER) as u32;
        let crc = crc32fast::hash(&self.buf[s + 8..]);
        self.buf[s..s + 4].copy_from_slice(&len.to_le_bytes());
        self.buf[s + 4..s + 8].copy_from_slice(&crc.to_le_bytes());
    }

    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    pub fn str(&mut self, s: &str) {
        self.u32(s.len() as u32);
        self.buf.extend_from_slice(s.as_bytes());
    }

    /// A consumer position, as checkpoints and commit frames hold it.
    pub fn position(&mut self, group: &str, topic: &str, partition: u32, next: u64) {
        self.str(group);
        self.str(topic);
        self.u32(partition);
        self.u64(next);
    }

    /// One record of an append or relocate frame; returns its position in
    /// the buffer and its length (what a reader reads back).
    pub fn record(&mut self, key: &str, value: &[u8]) -> (usize, u32) {
        let at = self.buf.len();
        self.u32(key.len() as u32);
        self.u32(value.len() as u32);
        self.buf.extend_from_slice(key.as_bytes());
        self.buf.extend_from_slice(value);
        (at, (self.buf.len() - at) as u32)
    }
}

/// Reads fields of a frame body; every read is checked.
pub(crate) struct Body<'a> {
    pub bytes: &'a [u8],
    pub at: usize,
}

#[derive(Debug)]
pub(crate) struct Malformed;

impl<'a> Body<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        let end = self.at.checked_add(n).ok_or(Malformed)?;
        let s = self.bytes.get(self.at..end).ok_or(Malformed)?;
        self.at = end;
        Ok(s)
    }

    pub fn u32(&mut self) -> Result<u32, Malformed> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    pub fn u64(&mut self) -> Result<u64, Malformed> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    pub fn str(&mut self) -> Result<&'a str, Malformed> {
        let n = self.u32()? as usize;
        std::str::from_utf8(self.take(n)?).map_err(|_| Malformed)
    }

    /// A consumer position written by [`FrameBuf::position`].
    pub fn position(&mut self) -> Result<((String, String, u32), u64), Malformed> {
        let group = self.str()?.to_owned();
        let topic = self.str()?.to_owned();
        let partition = self.u32()?;
        Ok(((group, topic, partition), self.u64()?))
    }

    /// A record's key and value lengths, skipping its bytes; returns where
    /// it starts and its whole length.
    pub fn skip_record(&mut self) -> Result<(usize, u32), Malformed> {
        let at = self.at;
        let k = self.u32()? as usize;
        let v = self.u32()? as usize;
        self.take(k)?;
        self.take(v)?;
        Ok((at, (self.at - at) as u32))
    }
}

/// A record read back from its bytes (`key_len | value_len | key | value`).
pub(crate) fn parse_record(bytes: &[u8]) -> Result<(String, Vec<u8>), Malformed> {
    let mut b = Body { bytes, at: 0 };
    let k = b.u32()? as usize;
    let v = b.u32()? as usize;
    let key = std::str::from_utf8(b.take(k)?).map_err(|_| Malformed)?;
    let value = b.take(v)?;
    if b.at != bytes.len() {
        return Err(Malformed);
    }
    Ok((key.to_owned(), value.to_vec()))
}

/// One valid frame of a segment.
pub(crate) struct Frame {
    /// Position of the frame in its segment.
    pub pos: u64,
    pub lsn: u64,
    pub kind: u8,
    /// `kind` and payload.
    pub body: Vec<u8>,
}

/// Reads a segment's frames in order, stopping at its end (zeros, a torn
/// frame, or an `lsn` out of sequence).
pub(crate) struct Scanner {
    r: BufReader<File>,
    pos: u64,
    len: u64,
    next_lsn: Option<u64>,
}

impl Scanner {
    pub fn open(path: &Path) -> std::io::Result<Scanner> {
        let f = File::open(path)?;
        let len = f.metadata()?.len();
        Ok(Scanner {
            r: BufReader::with_capacity(1 << 20, f),
            pos: 0,
            len,
            next_lsn: None,
        })
    }

    pub fn next_lsn(&self) -> Option<u64> {
        self.next_lsn
    }

    pub fn next(&mut self) -> std::io::Result<Option<Frame>> {
        if self.pos + HEADER as u64 > self.len {
            return Ok(None);
        }
        let mut h = [0u8; HEADER];
        self.r.read_exact(&mut h)?;
        let len = u32::from_le_bytes(h[0..4].try_into().expect("4"));
        let crc = u32::from_le_bytes(h[4..8].try_into().expect("4"));
        let lsn = u64::from_le_bytes(h[8..16].try_into().expect("8"));
        if len == 0 || len > MAX_BODY || self.pos + HEADER as u64 + len as u64 > self.len {
            return Ok(None);
        }
        if self.next_lsn.is_some_and(|n| n != lsn) {
            return Ok(None);
        }
        let mut body = vec![0u8; len as usize];
        self.r.read_exact(&mut body)?;
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&h[8..16]);
        hasher.update(&body);
        if hasher.finalize() != crc {
            return Ok(None);
        }
        let pos = self.pos;
        self.pos += (HEADER + body.len()) as u64;
        self.next_lsn = Some(lsn + 1);
        let kind = body[0];
        Ok(Some(Frame {
            pos,
            lsn,
            kind,
            body,
        }))
    }
}
