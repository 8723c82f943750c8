//! One text per document for a transformer and a fanout in one process.
//!
//! The transformer and fanout each keep every active document's text, and
//! both texts are the same at a given version: that is two copies. Ropes
//! are persistent (a clone shares every chunk, an edit copies only the
//! chunks it touches), so when the roles run in one process the
//! transformer offers its text at each version it has produced (after the
//! produce returned), and fanout, applying that version, takes the offer
//! instead of editing its own copy: the two roles then share the chunks
//! that later edits did not touch. The transformer also offers the text it
//! repacked when idle (`DocState::tidy`), which fanout takes on its own
//! next tidy pass instead of repacking its copy.
//!
//! Offers are only an optimisation: fanout takes one only for the exact
//! version it is applying and only if its length is the one the record
//! gives (in debug builds, only if it is the text the record gives); in
//! every other case it edits its own text as before. The map is bounded:
//! when it is full it is emptied.

use std::collections::HashMap;
use std::sync::Mutex;

use ropey::Rope;

#[derive(Debug)]
pub struct TextShare {
    offers: Mutex<HashMap<String, (u64, Rope)>>,
    cap: usize,
}

impl TextShare {
    /// Keeps at most `cap` documents' offers.
    pub fn new(cap: usize) -> TextShare {
        TextShare {
            offers: Mutex::new(HashMap::new()),
            cap: cap.max(1),
        }
    }

    fn offers(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, Rope)>> {
        // A panic elsewhere cannot leave the map inconsistent: each
        // operation is one insert or remove.
        self.offers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Offers `doc`'s text at `version`, replacing an offer for it.
    pub fn offer(&self, doc: &str, version: u64, text: &Rope) {
        let mut offers = self.offers();
        if let Some(o) = offers.get_mut(doc) {
            *o = (version, text.clone());
            return;
        }
        if offers.len() >= self.cap {
            offers.clear();
        }
        offers.insert(doc.to_owned(), (version, text.clone()));
    }

    /// The text offered for `doc` at `version`, if that is the offer. An
    /// offer for an older version is dropped, a newer one stays.
    pub fn take(&self, doc: &str, version: u64) -> Option<Rope> {
        let mut offers = self.offers();
        match offers.get(doc) {
            Some((v, _)) if *v <= version => {
                let (v, text) = offers.remove(doc).expect("just seen");
                (v == version).then_some(text)
            }
            _ => None,
        }
    }

    /// Drops `doc`'s offer (fanout does not hold the document).
    pub fn forget(&self, doc: &str) {
        self.offers().remove(doc);
    }

    pub fn len(&self) -> usize {
        self.offers().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_offer_is_taken_once_at_its_version() {
        let s = TextShare::new(2);
        s.offer("a", 5, &Rope::from_str("five"));
        assert_eq!(
            s.take("a", 4),
            None,
            "an older version leaves a newer offer"
        );
        assert_eq!(s.take("a", 5).map(String::from), Some("five".into()));
        assert_eq!(s.take("a", 5), None, "taken once");
        s.offer("a", 6, &Rope::from_str("six"));
        s.offer("a", 7, &Rope::from_str("seven"));
        assert_eq!(s.take("a", 6), None, "replaced by 7");
        assert_eq!(s.len(), 1);
        assert_eq!(s.take("a", 8), None, "an offer older than the version goes");
        assert!(s.is_empty());
        // Bounded: a third document empties the full map.
        s.offer("a", 1, &Rope::new());
        s.offer("b", 1, &Rope::new());
        s.offer("c", 1, &Rope::new());
        assert_eq!(s.len(), 1);
        assert!(s.take("c", 1).is_some());
        s.offer("d", 1, &Rope::new());
        s.forget("d");
        assert!(s.is_empty());
    }
}
