//! Prompt-lookup drafting for speculative decoding: code repeats itself (names, calls, whole lines of the
//! document or of another open file), so the tokens that followed an earlier occurrence of what the
//! history ends with are a cheap guess at what comes next. The worker verifies a guess in one forward
//! pass and keeps the prefix the model agrees with, so a guess changes the speed, never the output.
//!
//! The history (prompt, then every token the model produced) is indexed once per request by its pairs of
//! tokens, each mapped to the positions that followed its occurrences; a token adds one entry. A draft
//! looks at the latest [`CANDIDATES`] occurrences of the pair ending the history and takes the one whose
//! tokens before it agree with the history's for longest (the latest on a tie): the longer the agreement,
//! the likelier the copy goes on, so a match of [`LONG_MATCH`] tokens or more drafts up to
//! [`LONG_DRAFT`] tokens, a shorter one [`SHORT_DRAFT`].

use std::collections::HashMap;

/// Tokens drafted after a short match. The token fed and three drafted ones fill one tile of four
/// activation rows of the packed matrix kernels (a pass of 4 tokens costs about 1.4 single steps of
/// Qwen2.5-Coder 1.5B at a depth of 1,800, at 2 threads), and holes cut from real code accept about half
/// of such drafts.
pub const SHORT_DRAFT: usize = 3;

/// Tokens drafted after a long match: with the token fed, one tile of eight rows (`WIDE` in the packed
/// kernels; about 1.95 single steps in the same measurement, against 1.83 for six rows). Measured on
/// the holes of `bench --code` (replayed offline from their greedy outputs): drafting 7 after matches of
/// 6 or more gives 2.17 tokens per pass against 1.98 with 3 always, 5 after such matches 2.09.
pub const LONG_DRAFT: usize = 7;

/// A match this long (in tokens, the pair included) drafts [`LONG_DRAFT`] tokens.
pub const LONG_MATCH: usize = 6;

/// The latest occurrences of the ending pair compared with the history: in the measurement above, 16
/// found the same drafts as all of them; common pairs (a line break and an indent) occur hundreds of
/// times in a prompt.
const CANDIDATES: usize = 16;

/// Agreement is counted up to this many tokens: longer ones draft no more.
const MAX_MATCH: usize = 64;

pub struct PromptLookup {
    history: Vec<u32>,
    /// Pair of tokens → the positions right after its occurrences that have a continuation
    /// (`< history.len()`), oldest first.
    index: HashMap<u64, Vec<usize>>,
    /// Continuation positions `..=indexed` are in the index.
    indexed: usize,
}

impl PromptLookup {
    /// Indexes `prompt`.
    pub fn new(prompt: &[u32]) -> Self {
        let mut lookup = Self {
            history: prompt.to_vec(),
            index: HashMap::with_capacity(prompt.len()),
            indexed: 1,
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

    /// At most `max` tokens that followed the earlier occurrence of the pair ending the history that
    /// agrees with it for longest ([`SHORT_DRAFT`] or [`LONG_DRAFT`] of them, by the agreement's length);
    /// empty when the pair did not occur before.
    pub fn draft(&self, max: usize) -> &[u32] {
        let len = self.history.len();
        let Some(found) = len
            .checked_sub(2)
            .and_then(|at| self.index.get(&key(&self.history[at..])))
        else {
            return &[];
        };
        let mut best = (0, len);
        for &at in found.iter().rev().take(CANDIDATES) {
            let matched = self.agreement(at);
            if matched > best.0 {
                best = (matched, at);
            }
        }
        let (matched, at) = best;
        let n = if matched >= LONG_MATCH {
            LONG_DRAFT
        } else {
            SHORT_DRAFT
        };
        &self.history[at..(at + n.min(max)).min(len)]
    }

    /// How many tokens before position `at` are those ending the history, up to [`MAX_MATCH`].
    fn agreement(&self, at: usize) -> usize {
        let before = self.history[..at].iter().rev();
        let ending = self.history.iter().rev();
        before
            .zip(ending)
            .take(MAX_MATCH)
            .take_while(|(a, b)| a == b)
            .count()
    }

    /// Indexes every pair that has a continuation, except the one ending the history (looking it up
    /// must find an earlier occurrence, not itself).
    fn catch_up(&mut self) {
        let len = self.history.len();
        while self.indexed + 1 < len {
            self.indexed += 1;
            let at = self.indexed;
            let pair = key(&self.history[at - 2..at]);
            self.index.entry(pair).or_default().push(at);
        }
    }
}

/// The pair's ids packed into one number.
fn key(pair: &[u32]) -> u64 {
    pair.iter().fold(0u64, |k, &t| (k << 32) | u64::from(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drafts_what_followed_the_occurrence_that_agrees_for_longest() {
        // "2 3" occurs three times; the one after "9" agrees with the ending "9 2 3" for three tokens,
        // the later ones for two.
        let mut p = PromptLookup::new(&[9, 2, 3, 4, 0, 2, 3, 5, 8, 2, 3, 6, 9]);
        assert_eq!(p.draft(4), &[] as &[u32], "\"6 9\" never occurred before");
        p.push(2);
        p.push(3);
        assert_eq!(p.draft(8), &[4, 0, 2]);
        // Agreeing for as long: the latest wins.
        let mut q = PromptLookup::new(&[1, 2, 3, 4, 0, 2, 3, 5, 8]);
        q.push(2);
        q.push(3);
        assert_eq!(q.draft(2), &[5, 8]);
    }

    #[test]
    fn a_long_match_drafts_more_and_max_caps_it() {
        let line: Vec<u32> = (10..30).collect();
        let mut p = PromptLookup::new(&line);
        for &t in &line[..LONG_MATCH] {
            p.push(t);
        }
        assert_eq!(p.draft(100), &line[LONG_MATCH..LONG_MATCH + LONG_DRAFT]);
        assert_eq!(p.draft(2), &line[LONG_MATCH..LONG_MATCH + 2]);
        let mut short = PromptLookup::new(&line);
        for &t in &line[..LONG_MATCH - 1] {
            short.push(t);
        }
        assert_eq!(
            short.draft(100),
            &line[LONG_MATCH - 1..LONG_MATCH - 1 + SHORT_DRAFT]
        );
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
        assert_eq!(p.draft(8), &[3, 4, 1]);
    }

    #[test]
    fn only_the_latest_candidates_are_compared() {
        // An old occurrence agreeing for long, then CANDIDATES later ones agreeing for two tokens.
        let mut prompt = vec![7, 8, 1, 2, 50];
        for i in 0..CANDIDATES as u32 {
            prompt.extend([0, 1, 2, 60 + i]);
        }
        let mut p = PromptLookup::new(&prompt);
        for t in [7, 8, 1, 2] {
            p.push(t);
        }
        assert_eq!(p.draft(1), &[60 + CANDIDATES as u32 - 1]);
        let mut all = prompt.clone();
        all.truncate(prompt.len() - 4);
        let mut q = PromptLookup::new(&all);
        for t in [7, 8, 1, 2] {
            q.push(t);
        }
        assert_eq!(
            q.draft(1),
            &[50],
            "within the latest CANDIDATES it is found"
        );
    }
}
