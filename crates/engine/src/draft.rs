//! Prompt-lookup drafting for speculative decoding: code repeats itself (names, calls, whole lines of the
//! document or of another open file), so the tokens that followed the latest earlier occurrence of the
//! last few tokens are a cheap guess at what comes next. The worker verifies a guess in one forward pass
//! and keeps the prefix the model agrees with, so a guess changes the speed, never the output.
//!
//! The history (prompt, then every token the model produced) is indexed once per request by its n-grams
//! of `MIN_NGRAM..=MAX_NGRAM` tokens, each mapped to where its latest occurrence was followed; a token
//! adds one entry per n-gram size, and a draft is a few hash look-ups, not a scan.

use std::collections::HashMap;

/// The longest n-gram looked up: longer matches predict better, and four 32-bit ids pack into a `u128`.
const MAX_NGRAM: usize = 4;

/// The shortest: a single repeated token (a bracket, a space) says too little about what follows, and a
/// draft the model rejects costs a wider forward pass for nothing.
const MIN_NGRAM: usize = 2;

pub struct PromptLookup {
    history: Vec<u32>,
    /// `index[n - MIN_NGRAM]`: n-gram → the position right after its latest occurrence that has a
    /// continuation (`< history.len()`).
    index: Vec<HashMap<u128, usize>>,
    /// Continuation positions `..=indexed` are in the index.
    indexed: usize,
}

impl PromptLookup {
    /// Indexes `prompt`.
    pub fn new(prompt: &[u32]) -> Self {
        let mut lookup = Self {
            history: prompt.to_vec(),
            index: vec![HashMap::with_capacity(prompt.len()); MAX_NGRAM - MIN_NGRAM + 1],
            indexed: 0,
        };
        lookup.catch_up();
        lookup
    }

    /// Appends a token the model produced.
    pub fn push(&mut self, token: u32) {
        self.history.push(token);
        self.catch_up();
    }

    /// The prompt and every token pushed since.
    pub fn history(&self) -> &[u32] {
        &self.history
    }

    /// Up to `max` tokens that followed the latest earlier occurrence of the longest n-gram ending the
    /// history (empty when none occurred before).
    pub fn draft(&self, max: usize) -> &[u32] {
        let len = self.history.len();
        for n in (MIN_NGRAM..=MAX_NGRAM.min(len)).rev() {
            if let Some(&at) = self.index[n - MIN_NGRAM].get(&key(&self.history[len - n..])) {
                return &self.history[at..(at + max).min(len)];
            }
        }
        &[]
    }

    /// Indexes every n-gram that has a continuation, except the one ending the history (looking it up
    /// must find an earlier occurrence, not itself).
    fn catch_up(&mut self) {
        let len = self.history.len();
        while self.indexed + 1 < len {
            self.indexed += 1;
            let at = self.indexed;
            for n in MIN_NGRAM..=MAX_NGRAM.min(at) {
                self.index[n - MIN_NGRAM].insert(key(&self.history[at - n..at]), at);
            }
        }
    }
}

/// The n-gram's ids packed into one number (n ≤ 4, so distinct n-grams of one size get distinct keys).
fn key(ngram: &[u32]) -> u128 {
    ngram.iter().fold(0u128, |k, &t| (k << 32) | u128::from(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drafts_what_followed_the_latest_occurrence_of_the_longest_match() {
        // "1 2 3 4" then later "9 2 3 5": the history ends in "2 3".
        let mut p = PromptLookup::new(&[1, 2, 3, 4, 8, 9, 2, 3, 5, 6, 7]);
        assert_eq!(p.draft(4), &[] as &[u32], "7 alone never occurred before");
        p.push(2);
        p.push(3);
        // "7 2 3" never occurred; "2 3" did, latest at 6..8, followed by 5 6 7 2 3.
        assert_eq!(p.draft(3), &[5, 6, 7]);
        assert_eq!(p.draft(10), &[5, 6, 7, 2, 3]);
        // "9 2 3" occurred: its continuation wins over the more recent "2 3".
        let mut q = PromptLookup::new(&[9, 2, 3, 4, 0, 2, 3, 5, 9]);
        q.push(2);
        q.push(3);
        assert_eq!(q.draft(2), &[4, 0]);
    }

    #[test]
    fn a_single_token_or_an_unseen_ending_drafts_nothing() {
        assert!(PromptLookup::new(&[5]).draft(4).is_empty());
        let mut p = PromptLookup::new(&[1, 2, 1, 3]);
        p.push(1);
        assert!(
            p.draft(4).is_empty(),
            "\"3 1\" never occurred; \"1\" alone is too short"
        );
        assert!(PromptLookup::new(&[]).draft(4).is_empty());
    }

    #[test]
    fn generated_tokens_are_drafted_from_too() {
        let mut p = PromptLookup::new(&[100]);
        for t in [1, 2, 3, 4, 1, 2] {
            p.push(t);
        }
        assert_eq!(p.draft(8), &[3, 4, 1, 2]);
    }
}
