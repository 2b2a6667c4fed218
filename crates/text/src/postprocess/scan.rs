//! The forward scan that runs every cut rule over the generated text and stops at the first cut.
//!
//! Each rule decides only from text the scan has already read, at a fixed point (a line's start, a token, a
//! line's first word, a line's end), and unfinished text (`complete == false`) never decides anything that
//! more text could change. That makes the scan *prefix-stable*: if it cuts at `at` while streaming, it cuts
//! at the same place on any continuation of that text, which is what lets the decode loop stop early without
//! changing the final suggestion.
//!
//! The scanner's state at the start of a line depends only on the text before it, so the streaming stopper
//! keeps the scanner at the start of the unfinished line and re-reads only that line on each token.

use super::analysis::Analysis;
use super::brackets::BracketTracker;
use super::lexer::Lexer;
use super::repetition::{RepeatedChunk, RepeatedLines};
use super::scope::{Scope, Verdict};
use super::single_line::SingleLine;
use super::text::{advance, is_blank, is_word_char, leading_ws, line_at, Line};
use super::{max_lines, next_line, Config, Rule};
use crate::language::Language;

/// The suggestion ends at byte `at` of the generated text, because of `rule`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Cut {
    pub at: usize,
    pub rule: Rule,
}

/// The earliest cut of `text` by the enabled rules; `complete` tells whether the model has finished (else
/// only certain cuts are reported).
pub(crate) fn scan(an: &Analysis, config: &Config, text: &str, complete: bool) -> Option<Cut> {
    Scanner::new(an, config).scan(an, config, text, complete)
}

/// The scan's state at the start of a line.
#[derive(Clone, Debug)]
pub(crate) struct Scanner {
    /// Byte offset where the line starts.
    pos: usize,
    /// Byte offset the lexer has read up to (at or just past `pos`).
    lex_pos: usize,
    /// For each line started so far: where the suggestion ends if it ends before that line.
    line_cuts: Vec<usize>,
    single_line: SingleLine,
    scope: Option<Scope>,
    repeated_lines: RepeatedLines,
    tracker: BracketTracker,
}

impl Scanner {
    pub fn new(an: &Analysis, config: &Config) -> Self {
        let single = an.single_line && config.enabled(Rule::SingleLine);
        Scanner {
            pos: 0,
            lex_pos: 0,
            line_cuts: Vec::new(),
            single_line: SingleLine::new(an.mid_line),
            scope: (!single && config.enabled(Rule::Scope)).then(|| Scope::new(an)),
            repeated_lines: RepeatedLines::new(config.repeated_lines),
            tracker: BracketTracker::new(an),
        }
    }

    /// Byte offset of the line the scanner is at; the text before it has been read for good.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Reads `text` from the scanner's line on (the text before it must be what the scanner already read)
    /// and returns the first cut. The scanner moves past every line read to its end without a cut and stays
    /// at the start of an unfinished last line; after a cut its state is spent.
    pub fn scan(
        &mut self,
        an: &Analysis,
        config: &Config,
        text: &str,
        complete: bool,
    ) -> Option<Cut> {
        loop {
            let line = line_at(text, self.pos);
            if !(line.terminated || complete) {
                // Read the unfinished line on a copy, so the next call starts it again with more text.
                return self.clone().line(an, config, text, line, complete);
            }
            if let Some(cut) = self.line(an, config, text, line, complete) {
                return Some(cut);
            }
            if !line.terminated {
                return None;
            }
            self.pos = line.next;
        }
    }

    /// Reads one line (and its line break, when it is complete).
    fn line(
        &mut self,
        an: &Analysis,
        config: &Config,
        text: &str,
        line: Line<'_>,
        complete: bool,
    ) -> Option<Cut> {
        let on = |rule| config.enabled(rule);
        let single = an.single_line && on(Rule::SingleLine);
        let cut = |at, rule| Some(Cut { at, rule });
        let lexer = Lexer::new(an.language);
        let index = self.line_cuts.len();
        let before_line = if index == 0 {
            0
        } else {
            pos_before(text, line.start)
        };
        self.line_cuts.push(before_line);

        // Line start.
        if single && self.single_line.line_start(index) {
            return cut(before_line, Rule::SingleLine);
        }
        if on(Rule::MaxLines) && max_lines::ends_before(index, config.max_lines) {
            return cut(before_line, Rule::MaxLines);
        }

        let lead = leading_ws(line.text);
        let indent = advance(if index == 0 { an.cursor_col } else { 0 }, lead);
        let content = &line.text[lead.len()..];
        let has_content = !is_blank(line.text);
        let in_literal = self.tracker.in_multiline_literal(an);
        if on(Rule::Fence)
            && index > 0
            && content.starts_with("```")
            && !in_literal
            && an.language != Language::Other
        {
            return cut(before_line, Rule::Fence);
        }
        // The scope judges the line at the first character after its first word.
        let judge_at = has_content.then(|| {
            let word = if content.starts_with(is_word_char) {
                content.find(|c: char| !is_word_char(c))
            } else {
                Some(0)
            };
            word.map(|w| line.start + lead.len() + w)
        });
        let mut judged = false;
        let judge = |scope: &mut Option<Scope>| {
            let verdict = scope
                .as_mut()
                .map(|s| s.line(index, indent, content, in_literal));
            verdict == Some(Verdict::CutBefore)
        };

        // Tokens of the line.
        let mut chunk = RepeatedChunk::new(config.repeated_chunk_chars);
        while self.lex_pos < line.end() {
            if !judged && judge_at.flatten().is_some_and(|j| j <= self.lex_pos) {
                judged = true;
                if judge(&mut self.scope) {
                    return cut(before_line, Rule::Scope);
                }
            }
            let (tok, len) =
                lexer.next(text, self.lex_pos, self.tracker.top(an).as_ref(), complete)?;
            if self.tracker.feed(an, tok) && on(Rule::Brackets) {
                return cut(self.lex_pos, Rule::Brackets);
            }
            if on(Rule::Repetition) {
                let end = (self.lex_pos + len).min(line.end());
                if text[self.lex_pos..end].chars().any(|c| chunk.push(c)) {
                    return cut(before_line, Rule::Repetition);
                }
            }
            self.lex_pos += len;
        }
        if !(line.terminated || complete) {
            return None;
        }
        if has_content && !judged && judge(&mut self.scope) {
            return cut(before_line, Rule::Scope);
        }

        // Line end: the earliest of the cuts decided here.
        self.single_line.line_end(!has_content);
        let mut best: Option<Cut> = None;
        let mut consider = |at: usize, rule: Rule| {
            if best.is_none_or(|b| at < b.at) {
                best = Some(Cut { at, rule });
            }
        };
        if on(Rule::NextLine) && next_line::repeats(an, index, indent, line.text) {
            consider(before_line, Rule::NextLine);
        }
        if on(Rule::Repetition) {
            if let Some(first_repeat) = self.repeated_lines.line_end(indent, line.text) {
                consider(self.line_cuts[first_repeat], Rule::Repetition);
            }
        }
        if self.scope.as_mut().is_some_and(|s| s.line_end(line.text)) {
            consider(line.end(), Rule::Scope);
        }
        if best.is_some() {
            return best;
        }

        // The line break.
        while self.lex_pos < line.next {
            let (tok, len) =
                lexer.next(text, self.lex_pos, self.tracker.top(an).as_ref(), complete)?;
            self.tracker.feed(an, tok);
            self.lex_pos += len;
        }
        None
    }
}

/// Where the suggestion ends if it ends before the line starting at `pos` (> 0): before the previous line's
/// line break.
fn pos_before(text: &str, pos: usize) -> usize {
    let nl = pos - 1;
    if nl > 0 && text.as_bytes()[nl - 1] == b'\r' {
        nl - 1
    } else {
        nl
    }
}
