//! Rule `scope`: a block suggestion stays inside the cursor's indentation scope.
//!
//! The reference is the indentation of the cursor's line when it has text before the cursor (the first
//! generated line then continues it), otherwise of the last non-blank line above. The first generated line
//! that starts a line of its own (after the continued line, or the first non-blank one on a blank cursor line)
//! sets the scope:
//! - indented deeper than the reference: the cursor opened a block (`def f():`, `if x {`), so later lines must
//!   stay deeper than the reference;
//! - otherwise the cursor is among siblings, so later lines must not go left of that line (and never left of
//!   the reference when continuing the cursor's line).
//!
//! A line left of the scope ends the suggestion before it, except:
//! - a closing line (`}`, `)`, `end`, `fi`) is kept and ends the suggestion after it; in brace languages this
//!   is how a block ends, while in Python any dedent simply ends it;
//! - a continuation (`} else {`, `else:`, `elif x:`) is kept and the block goes on.
//!
//! Lines that start inside a multi-line string or comment are not judged (docstrings may be dedented).

use super::analysis::Analysis;
use super::text::first_word;
use crate::language::Language;

/// What a dedented line turned out to be, decided when it is complete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pending {
    /// Starts with a closer: kept; ends the suggestion unless it re-opens (`} else {`).
    Closer,
    /// Starts with a continuation keyword: kept, the block goes on.
    Continuation,
}

#[derive(Clone, Debug)]
pub(crate) struct Scope {
    language: Language,
    reference: usize,
    /// The first generated line continues the cursor's line.
    continues_line: bool,
    /// Lines left of this end the scope; `None` until set by the first line of its own.
    limit: Option<usize>,
    pending: Option<Pending>,
}

/// What the scope says about a line once its indentation and first word are known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Keep,
    /// End the suggestion before this line.
    CutBefore,
}

impl Scope {
    pub fn new(an: &Analysis) -> Self {
        Scope {
            language: an.language,
            reference: an.reference_indent,
            continues_line: !an.before_blank(),
            limit: None,
            pending: None,
        }
    }

    /// A non-blank line: its index, indentation width (counting the cursor column for line 0), the line
    /// after its indentation (at least up to the end of its first word), and whether it starts inside a
    /// multi-line string or comment.
    pub fn line(
        &mut self,
        index: usize,
        indent: usize,
        content: &str,
        in_literal: bool,
    ) -> Verdict {
        self.pending = None;
        if index == 0 && self.continues_line {
            return Verdict::Keep;
        }
        let Some(limit) = self.limit else {
            if in_literal {
                return Verdict::Keep;
            }
            self.limit = Some(if indent > self.reference {
                self.reference + 1
            } else if self.continues_line {
                self.reference
            } else {
                indent
            });
            // A continued line followed by a dedent is judged like any later line.
            if !(self.continues_line && indent < self.reference) {
                return Verdict::Keep;
            }
            return self.line(index, indent, content, in_literal);
        };
        if in_literal || indent >= limit {
            return Verdict::Keep;
        }
        let first = content.chars().next().unwrap_or(' ');
        let word = first_word(content);
        if matches!(first, ')' | ']' | '}') || self.language.closing_keywords().contains(&word) {
            self.pending = Some(Pending::Closer);
            Verdict::Keep
        } else if self.language.continuation_keywords().contains(&word) {
            self.pending = Some(Pending::Continuation);
            Verdict::Keep
        } else {
            Verdict::CutBefore
        }
    }

    /// The current line is complete: whether the suggestion ends right after it.
    pub fn line_end(&mut self, line: &str) -> bool {
        match self.pending.take() {
            Some(Pending::Closer) => {
                let t = line.trim_end();
                let reopens = t.ends_with(['{', '(', '['])
                    || (self.language == Language::Python && t.ends_with(':'));
                !reopens
            }
            Some(Pending::Continuation) | None => false,
        }
    }
}
