//! The BPE merge loop used for GGUF vocabularies, as llama.cpp and SentencePiece run it: start from one
//! symbol per character, repeatedly merge the adjacent pair with the best priority (highest piece score
//! for SentencePiece, lowest merge rank for byte-level BPE), leftmost on ties, until no pair merges.
//! Merges may only produce spellable tokens (`Vocab::is_spellable`), which is what keeps protected ids
//! out of encoded text.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use super::pretokenize::PreTokenizer;
use super::vocab::{byte_level_byte, byte_level_encode, Vocab, SPACE_MARK};

/// A run of the text being merged and the token it spells (`None`: a character with no token).
#[derive(Debug, Clone, Copy)]
struct Symbol {
    start: usize,
    end: usize,
    id: Option<u32>,
    prev: Option<usize>,
    next: Option<usize>,
}

impl Symbol {
    fn len(&self) -> usize {
        self.end - self.start
    }
}

/// A possible merge of `left` with its right neighbour. Ordered so that the heap pops the best priority
/// first and, among equals, the leftmost pair.
struct Candidate<P> {
    priority: P,
    left: usize,
    right: usize,
    /// Combined length when queued; a different length later means the candidate is stale.
    len: usize,
    merged: u32,
}

impl<P: Ord> Ord for Candidate<P> {
    fn cmp(&self, other: &Self) -> Ordering {
        // BinaryHeap pops the greatest: best = smallest priority, then smallest left index.
        other
            .priority
            .cmp(&self.priority)
            .then(other.left.cmp(&self.left))
    }
}

impl<P: Ord> PartialOrd for Candidate<P> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<P: Ord> PartialEq for Candidate<P> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl<P: Ord> Eq for Candidate<P> {}

/// Merges the characters of `text` (each starting as `initial(char)`) with `pair(merged_text, left_id,
/// right_id) -> (priority, merged_id)`; smaller priorities merge first. Returns the final symbols as
/// (byte range, token).
fn merge<P: Ord>(
    text: &str,
    initial: impl Fn(&str) -> Option<u32>,
    pair: impl Fn(&str, Option<u32>, Option<u32>) -> Option<(P, u32)>,
) -> Vec<(std::ops::Range<usize>, Option<u32>)> {
    let mut symbols: Vec<Symbol> = text
        .char_indices()
        .map(|(start, ch)| {
            let end = start + ch.len_utf8();
            Symbol {
                start,
                end,
                id: initial(&text[start..end]),
                prev: None,
                next: None,
            }
        })
        .collect();
    let count = symbols.len();
    for (i, symbol) in symbols.iter_mut().enumerate() {
        symbol.prev = i.checked_sub(1);
        symbol.next = (i + 1 < count).then_some(i + 1);
    }

    let mut queue = BinaryHeap::new();
    let consider =
        |queue: &mut BinaryHeap<Candidate<P>>, symbols: &[Symbol], left: usize, right: usize| {
            let (l, r) = (&symbols[left], &symbols[right]);
            if let Some((priority, merged)) = pair(&text[l.start..r.end], l.id, r.id) {
                queue.push(Candidate {
                    priority,
                    left,
                    right,
                    len: l.len() + r.len(),
                    merged,
                });
            }
        };
    for i in 1..count {
        consider(&mut queue, &symbols, i - 1, i);
    }

    while let Some(candidate) = queue.pop() {
        let (left, right) = (candidate.left, candidate.right);
        let (l, r) = (symbols[left], symbols[right]);
        if l.len() == 0 || r.len() == 0 || l.len() + r.len() != candidate.len {
            continue;
        }
        symbols[left].end = r.end;
        symbols[left].id = Some(candidate.merged);
        symbols[left].next = r.next;
        symbols[right].end = symbols[right].start;
        if let Some(next) = r.next {
            symbols[next].prev = Some(left);
            consider(&mut queue, &symbols, left, next);
        }
        if let Some(prev) = l.prev {
            consider(&mut queue, &symbols, prev, left);
        }
    }

    symbols
        .into_iter()
        .filter(|s| s.len() > 0)
        .map(|s| (s.start..s.end, s.id))
        .collect()
}

/// A SentencePiece score ordered so that higher scores sort first (total order, NaN included).
struct Score(f32);

impl PartialEq for Score {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Score {}

impl Ord for Score {
    fn cmp(&self, other: &Self) -> Ordering {
        other.0.total_cmp(&self.0)
    }
}

impl PartialOrd for Score {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// SentencePiece BPE over GGUF scores (`tokenizer.ggml.model = "llama"`).
pub(super) struct SpmModel {
    scores: Vec<f32>,
    user_defined: Vec<(String, u32)>,
}

impl SpmModel {
    pub(super) fn new(vocab: &Vocab, scores: Vec<f32>) -> Self {
        Self {
            scores,
            user_defined: vocab.user_defined(),
        }
    }

    /// Spaces become "▁"; with `dummy_prefix` one "▁" is prepended (SentencePiece's implicit space).
    /// User-defined tokens are matched whole first; the dummy "▁" goes only before the first text
    /// fragment, as in SentencePiece (llama.cpp re-adds it after each such token; Code Llama has none).
    pub(super) fn encode(&self, vocab: &Vocab, text: &str, dummy_prefix: bool) -> Vec<u32> {
        let mut out = Vec::new();
        for (index, fragment) in split_user_defined(text, &self.user_defined)
            .into_iter()
            .enumerate()
        {
            match fragment {
                Fragment::Token(id) => out.push(id),
                Fragment::Text(part) => {
                    let mut escaped = String::with_capacity(part.len() + 3);
                    if dummy_prefix && index == 0 {
                        escaped.push(SPACE_MARK);
                    }
                    escaped.extend(part.chars().map(|c| if c == ' ' { SPACE_MARK } else { c }));
                    self.encode_escaped(vocab, &escaped, &mut out);
                }
            }
        }
        out
    }

    fn encode_escaped(&self, vocab: &Vocab, text: &str, out: &mut Vec<u32>) {
        let spellable = |piece: &str| vocab.id(piece).filter(|&id| vocab.is_spellable(id));
        let symbols = merge(text, spellable, |merged, _, _| {
            let id = spellable(merged)?;
            Some((Score(self.scores[id as usize]), id))
        });
        for (range, id) in symbols {
            match id {
                Some(id) => out.push(id),
                None => vocab.push_bytes(text[range].as_bytes(), out),
            }
        }
    }
}

/// Byte-level BPE over ranked GGUF merges (`tokenizer.ggml.model = "gpt2"`).
pub(super) struct ByteBpeModel {
    pre: PreTokenizer,
    /// (left id, right id) -> (rank, merged id), only for merges whose result is spellable.
    ranks: HashMap<(u32, u32), (u32, u32)>,
    user_defined: Vec<(String, u32)>,
}

impl ByteBpeModel {
    /// `merges` are "left right" strings, best first.
    pub(super) fn new<'a>(
        vocab: &Vocab,
        merges: impl IntoIterator<Item = &'a str>,
        pre: PreTokenizer,
    ) -> Self {
        let mut ranks = HashMap::new();
        let mut joined = String::new();
        let mut malformed = 0usize;
        for (rank, merge) in (0u32..).zip(merges) {
            // llama.cpp keeps going past a malformed entry (it can never match); so do we.
            let Some((left, right)) = split_merge(merge) else {
                malformed += 1;
                continue;
            };
            joined.clear();
            joined.push_str(left);
            joined.push_str(right);
            let (Some(l), Some(r)) = (vocab.id(left), vocab.id(right)) else {
                continue;
            };
            let Some(merged) = vocab.id(&joined).filter(|&id| vocab.is_spellable(id)) else {
                continue;
            };
            ranks.entry((l, r)).or_insert((rank, merged));
        }
        if malformed > 0 {
            tracing::warn!(
                "ignored {malformed} tokenizer.ggml.merges entries that are not \"left right\""
            );
        }
        Self {
            pre,
            ranks,
            user_defined: vocab.user_defined(),
        }
    }

    pub(super) fn line_cuts(&self) -> super::LineCuts {
        self.pre.line_cuts()
    }

    pub(super) fn encode(&self, vocab: &Vocab, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        for fragment in split_user_defined(text, &self.user_defined) {
            match fragment {
                Fragment::Token(id) => out.push(id),
                Fragment::Text(part) => {
                    for word in self.pre.split(part) {
                        self.encode_word(vocab, &byte_level_encode(word), &mut out);
                    }
                }
            }
        }
        out
    }

    fn encode_word(&self, vocab: &Vocab, word: &str, out: &mut Vec<u32>) {
        let spellable = |piece: &str| vocab.id(piece).filter(|&id| vocab.is_spellable(id));
        if self.pre.ignore_merges() {
            if let Some(id) = spellable(word) {
                out.push(id);
                return;
            }
        }
        let symbols = merge(word, spellable, |_, left, right| {
            self.ranks.get(&(left?, right?)).copied()
        });
        for (range, id) in symbols {
            match id {
                Some(id) => out.push(id),
                None => {
                    let raw: Vec<u8> = word[range].chars().filter_map(byte_level_byte).collect();
                    vocab.push_bytes(&raw, out);
                }
            }
        }
    }
}

/// llama.cpp splits a merge at the first space after its first byte.
fn split_merge(merge: &str) -> Option<(&str, &str)> {
    let first_len = merge.chars().next()?.len_utf8();
    let space = merge[first_len..].find(' ')? + first_len;
    Some((&merge[..space], &merge[space + 1..]))
}

/// A piece of input: raw text to merge, or a user-defined token matched whole.
enum Fragment<'t> {
    Text(&'t str),
    Token(u32),
}

/// Splits out user-defined tokens, longest first, as llama.cpp's `tokenizer_st_partition` does.
fn split_user_defined<'t>(text: &'t str, tokens: &[(String, u32)]) -> Vec<Fragment<'t>> {
    let mut fragments = vec![Fragment::Text(text)];
    for (token_text, id) in tokens {
        fragments = fragments
            .into_iter()
            .flat_map(|fragment| match fragment {
                Fragment::Text(part) if part.contains(token_text.as_str()) => {
                    split_on(part, token_text, *id)
                }
                other => vec![other],
            })
            .collect();
    }
    fragments
}

fn split_on<'t>(part: &'t str, token_text: &str, id: u32) -> Vec<Fragment<'t>> {
    let mut out = Vec::new();
    let mut last = 0;
    for (at, _) in part.match_indices(token_text) {
        if at > last {
            out.push(Fragment::Text(&part[last..at]));
        }
        out.push(Fragment::Token(id));
        last = at + token_text.len();
    }
    if last < part.len() {
        out.push(Fragment::Text(&part[last..]));
    }
    out
}
