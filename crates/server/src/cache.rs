//! Recent suggestions, to answer without the model when the user types what was suggested.
//!
//! Each entry is a suggestion made for a document, the text before the cursor and the text after it. A
//! request whose text after the cursor is the same, and whose text before the cursor is an entry's plus
//! characters that start that entry's suggestion, gets the rest of the suggestion.

use std::collections::VecDeque;
use std::sync::Arc;

#[derive(Debug, Clone)]
struct Entry {
    uri: Arc<str>,
    prefix: Arc<str>,
    suffix: Arc<str>,
    suggestion: Arc<str>,
}

/// A small least-recently-used list; lookups are linear (it holds a few dozen entries).
#[derive(Debug)]
pub struct TypeAheadCache {
    entries: VecDeque<Entry>,
    capacity: usize,
}

impl TypeAheadCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: VecDeque::with_capacity(capacity.min(1024)),
            capacity,
        }
    }

    pub fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity;
        self.entries.truncate(capacity);
    }

    /// Remembers a suggestion (an empty one too: asking again at the same place gives the same nothing).
    pub fn insert(&mut self, uri: &str, prefix: &str, suffix: &str, suggestion: &str) {
        if self.capacity == 0 {
            return;
        }
        self.entries
            .retain(|e| !(&*e.uri == uri && &*e.prefix == prefix && &*e.suffix == suffix));
        self.entries.push_front(Entry {
            uri: uri.into(),
            prefix: prefix.into(),
            suffix: suffix.into(),
            suggestion: suggestion.into(),
        });
        self.entries.truncate(self.capacity);
    }

    /// The rest of a remembered suggestion for this place, if the user has typed its beginning (or nothing).
    pub fn lookup(&mut self, uri: &str, prefix: &str, suffix: &str) -> Option<String> {
        let (index, rest) = self.entries.iter().enumerate().find_map(|(i, e)| {
            if &*e.uri != uri || &*e.suffix != suffix || !prefix.starts_with(&*e.prefix) {
                return None;
            }
            let typed = &prefix[e.prefix.len()..];
            if typed.is_empty() {
                return Some((i, e.suggestion.to_string()));
            }
            let rest = e.suggestion.strip_prefix(typed)?;
            (!rest.is_empty()).then(|| (i, rest.to_string()))
        })?;
        if let Some(e) = self.entries.remove(index) {
            self.entries.push_front(e);
        }
        Some(rest)
    }

    /// Forgets a document's entries (it was closed).
    pub fn forget(&mut self, uri: &str) {
        self.entries.retain(|e| &*e.uri != uri);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typing_the_suggestion_gives_the_rest() {
        let mut c = TypeAheadCache::new(4);
        c.insert("a", "def f():\n    ", "\n", "return 1");
        assert_eq!(
            c.lookup("a", "def f():\n    ", "\n").as_deref(),
            Some("return 1")
        );
        assert_eq!(
            c.lookup("a", "def f():\n    re", "\n").as_deref(),
            Some("turn 1")
        );
        assert_eq!(
            c.lookup("a", "def f():\n    return 1", "\n"),
            None,
            "nothing left"
        );
        assert_eq!(
            c.lookup("a", "def f():\n    rx", "\n"),
            None,
            "typed something else"
        );
        assert_eq!(
            c.lookup("a", "def f():\n    re", ""),
            None,
            "different suffix"
        );
        assert_eq!(
            c.lookup("b", "def f():\n    re", "\n"),
            None,
            "different document"
        );
        // Multi-byte characters are compared as text.
        c.insert("a", "x = ", "", "\"日本語\"");
        assert_eq!(c.lookup("a", "x = \"日", "").as_deref(), Some("本語\""));
    }

    #[test]
    fn least_recently_used_goes_first() {
        let mut c = TypeAheadCache::new(2);
        c.insert("a", "1", "", "x");
        c.insert("a", "2", "", "y");
        assert!(c.lookup("a", "1", "").is_some());
        c.insert("a", "3", "", "z");
        assert!(c.lookup("a", "2", "").is_none());
        assert!(c.lookup("a", "1", "").is_some());
        c.forget("a");
        assert!(c.is_empty());
        let mut off = TypeAheadCache::new(0);
        off.insert("a", "1", "", "x");
        assert!(off.lookup("a", "1", "").is_none());
    }
}
