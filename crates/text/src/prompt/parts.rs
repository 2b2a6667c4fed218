//! The encodings of the text around the cursor, kept between requests so that each keystroke tokenizes
//! only what changed. A text is encoded in parts, cut at the line starts where the tokenizer promises that
//! the parts' ids make up the whole's (`Tokenizer::cuts_at`), and each part's ids are kept by its text. So
//! the budget's counts and the prompt's ids are exactly those of encoding each text whole, while a
//! keystroke encodes only the line it changed (and the partial lines at the ends of the budget's window).
//! The parts used by one request are kept until the end of the next one; older ones are dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use codellama_engine::tokenizer::Tokenizer;

pub(crate) struct Parts {
    tokenizer: Arc<Tokenizer>,
    kept: Mutex<Kept>,
}

#[derive(Default)]
struct Kept {
    /// Parts used since the current request began.
    current: Encodings,
    /// Parts the request before used (moved to `current` when used again).
    previous: Encodings,
}

/// Ids by text, without and with SentencePiece's dummy space (the first part of a prefix gets it; see
/// `Tokenizer::encode`).
type Encodings = [HashMap<Box<str>, Arc<[u32]>>; 2];

impl Parts {
    pub(crate) fn new(tokenizer: Arc<Tokenizer>) -> Self {
        Self {
            tokenizer,
            kept: Mutex::new(Kept::default()),
        }
    }

    fn kept(&self) -> MutexGuard<'_, Kept> {
        self.kept.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A request begins: what the request before last used is dropped.
    pub(crate) fn next_request(&self) {
        let mut kept = self.kept();
        kept.previous = std::mem::take(&mut kept.current);
    }

    /// `encode(text, false).len()`.
    pub(crate) fn count(&self, text: &str) -> usize {
        let mut kept = self.kept();
        self.cuts(text)
            .map(|(part, _)| self.part(&mut kept, part, false).len())
            .sum()
    }

    /// `encode(text, dummy_prefix)`.
    pub(crate) fn encode(&self, text: &str, dummy_prefix: bool) -> Vec<u32> {
        let mut kept = self.kept();
        let mut ids = Vec::new();
        for (part, first) in self.cuts(text) {
            ids.extend_from_slice(&self.part(&mut kept, part, first && dummy_prefix));
        }
        ids
    }

    /// The parts of `text`, each with whether it is the first.
    fn cuts<'t>(&self, text: &'t str) -> impl Iterator<Item = (&'t str, bool)> + use<'t, '_> {
        let mut from = 0;
        let ends = text
            .match_indices('\n')
            .map(|(i, _)| i + 1)
            .filter(|&at| at < text.len() && self.tokenizer.cuts_at(text, at))
            .chain((!text.is_empty()).then_some(text.len()));
        ends.map(move |end| {
            let part = (&text[from..end], from == 0);
            from = end;
            part
        })
    }

    fn part(&self, kept: &mut Kept, text: &str, dummy_prefix: bool) -> Arc<[u32]> {
        let which = usize::from(dummy_prefix);
        if let Some(ids) = kept.current[which].get(text) {
            return ids.clone();
        }
        let ids = kept.previous[which]
            .remove(text)
            .unwrap_or_else(|| self.tokenizer.encode(text, dummy_prefix).into());
        kept.current[which].insert(text.into(), ids.clone());
        ids
    }
}
