//! One text per document for a transformer and a fanout in one process.
//!
//! The transformer and fanout each keep every active document's text, and
//! both texts are the same at a given version: that is two copies. Ropes
//! are persistent (a clone shares every chunk, an edit copies only the
//! chunks it touches), so when the roles run in one process the
//! transformer offers its text at the version each document reaches in a
//! batch of ops, just before it produces their records (so the text is
//! there when fanout reads them), and fanout, applying that version, takes
//! the offer instead of editing its own copy: the two roles then share the
//! chunks that later edits did not touch. An offer whose record never
//! lands (a failed produce) is taken only if a restarted transformer
//! writes that very record again (same chain hash, so the same text);
//! otherwise it is dropped by the age check of a later offer. The
//! transformer also offers the text it repacked when idle
//! (`DocState::tidy`), which fanout takes on its own next tidy pass
//! instead of repacking its copy.
//!
//! Offers are only an optimisation: fanout takes one only for the exact
//! version it is applying, only if the offer's chain hash is the record's
//! (so it came from this very record, not from another record with its
//! seq) and only if its length is the one the record gives (in debug
//! builds, only if it is the text the record gives); in every other case
//! it edits its own text as before. The map is bounded: when it is full it
//! is emptied.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use protocol::chain::ChainHash;
use ropey::Rope;

/// How long an offer waits to be taken: fanout takes a version's offer
/// within milliseconds, a repacked text's on its next tidy pass (every
/// 5 s); anything older is a document fanout does not hold.
const MAX_AGE: Duration = Duration::from_secs(12);

/// A document's text at a version, and the hash chain there (the hash of
/// the record that made the version).
#[derive(Debug, Clone)]
pub struct Offer {
    pub version: u64,
    pub chain: ChainHash,
    pub text: Rope,
}

#[derive(Debug)]
struct Offers {
    map: HashMap<String, (Instant, Offer)>,
    /// The offered texts' bytes (shared with the transformer's texts while
    /// it keeps the document, the only copy once it evicted it).
    bytes: usize,
    purged: Instant,
}

/// Offers by document, bounded by count, by bytes and by age: when full it
/// is emptied, and offers older than `MAX_AGE` are dropped (checked at most
/// once a second). Ropes leave the lock before they are dropped.
#[derive(Debug)]
pub struct TextShare {
    offers: Mutex<Offers>,
    max_docs: usize,
    max_bytes: usize,
}

impl TextShare {
    /// Keeps at most `max_docs` documents' offers and `max_bytes` of text.
    pub fn new(max_docs: usize, max_bytes: usize) -> TextShare {
        TextShare {
            offers: Mutex::new(Offers {
                map: HashMap::new(),
                bytes: 0,
                purged: Instant::now(),
            }),
            max_docs: max_docs.max(1),
            max_bytes,
        }
    }

    fn offers(&self) -> std::sync::MutexGuard<'_, Offers> {
        // A panic elsewhere cannot leave the map inconsistent: each
        // operation is one insert or remove and its byte count.
        self.offers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Offers `doc`'s text at a version, replacing an offer for it.
    pub fn offer(&self, doc: &str, offer: Offer) {
        let now = Instant::now();
        let size = offer.text.len_bytes();
        let mut gone = Vec::new();
        {
            let mut o = self.offers();
            if now.duration_since(o.purged) >= Duration::from_secs(1) {
                o.purged = now;
                let old: Vec<String> = o
                    .map
                    .iter()
                    .filter(|(_, (at, _))| now.duration_since(*at) >= MAX_AGE)
                    .map(|(d, _)| d.clone())
                    .collect();
                for d in old {
                    gone.extend(o.map.remove(&d));
                }
            }
            if let Some(prev) = o.map.remove(doc) {
                gone.push(prev);
            } else if o.map.len() >= self.max_docs {
                gone.extend(o.map.drain().map(|(_, v)| v));
            }
            let left: usize = gone.iter().map(|(_, g)| g.text.len_bytes()).sum();
            o.bytes = o.bytes.saturating_sub(left);
            if o.bytes + size > self.max_bytes {
                gone.extend(o.map.drain().map(|(_, v)| v));
                o.bytes = 0;
            }
            if size <= self.max_bytes {
                o.bytes += size;
                o.map.insert(doc.to_owned(), (now, offer));
            }
        }
        drop(gone);
    }

    fn remove(&self, doc: &str) -> Option<Offer> {
        let mut o = self.offers();
        let (_, offer) = o.map.remove(doc)?;
        o.bytes = o.bytes.saturating_sub(offer.text.len_bytes());
        Some(offer)
    }

    /// The offer for `doc` at `version`, if that is the offer. An offer
    /// for an older version is dropped, a newer one stays.
    pub fn take(&self, doc: &str, version: u64) -> Option<Offer> {
        let older = {
            let o = self.offers();
            matches!(o.map.get(doc), Some((_, offer)) if offer.version <= version)
        };
        if !older {
            return None;
        }
        // (Another thread may have replaced it meanwhile: the version is
        // checked again on what was removed.)
        let offer = self.remove(doc)?;
        (offer.version == version).then_some(offer)
    }

    /// Drops `doc`'s offer (fanout does not hold the document).
    pub fn forget(&self, doc: &str) {
        drop(self.remove(doc));
    }

    pub fn len(&self) -> usize {
        self.offers().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes of text offered now.
    pub fn bytes(&self) -> usize {
        self.offers().bytes
    }
}

/// An offer of `text` at `version` whose chain hash is `[version; 32]` (the
/// hash the tests' records at `version` carry).
#[cfg(test)]
pub(crate) fn test_offer(version: u64, text: &str) -> Offer {
    Offer {
        version,
        chain: [version as u8; 32],
        text: Rope::from_str(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::test_offer as at;

    #[test]
    fn an_offer_is_taken_once_at_its_version() {
        let s = TextShare::new(2, 16);
        s.offer("a", at(5, "five"));
        assert!(
            s.take("a", 4).is_none(),
            "an older version leaves a newer offer"
        );
        assert_eq!(
            s.take("a", 5).map(|o| String::from(o.text)),
            Some("five".into())
        );
        assert!(s.take("a", 5).is_none(), "taken once");
        s.offer("a", at(6, "six"));
        s.offer("a", at(7, "seven"));
        assert!(s.take("a", 6).is_none(), "replaced by 7");
        assert_eq!(s.len(), 1);
        assert!(
            s.take("a", 8).is_none(),
            "an offer older than the version goes"
        );
        assert!(s.is_empty());
        // Bounded: a third document empties the full map.
        s.offer("a", at(1, ""));
        s.offer("b", at(1, ""));
        s.offer("c", at(1, ""));
        assert_eq!(s.len(), 1);
        assert!(s.take("c", 1).is_some());
        s.offer("d", at(1, ""));
        s.forget("d");
        assert!(s.is_empty());
        // Bounded by bytes: an offer past 16 empties the map first; one
        // larger than all of it is not kept.
        s.offer("a", at(1, "0123456789"));
        s.offer("b", at(1, "01234"));
        assert_eq!((s.len(), s.bytes()), (2, 15));
        s.offer("c", at(1, "01"));
        assert_eq!((s.len(), s.bytes()), (1, 2));
        s.offer("c", at(2, "0123"));
        assert_eq!((s.len(), s.bytes()), (1, 4), "a replaced offer's bytes go");
        s.offer("d", at(1, &"x".repeat(17)));
        assert_eq!((s.len(), s.bytes()), (0, 0));
    }
}
