//! Rule `brackets`: never close more than is open.
//!
//! A closing bracket or quote in the suggestion may close what the suggestion itself opened, or something
//! open before the cursor that the suffix does not already close. Anything else is an excess closer: the
//! model re-typed the suffix (`foo(a, b))` before a `)`) or ran past the end of the block. The suggestion
//! ends before the first excess closer, so everything after it (usually the rest of the re-typed suffix)
//! goes too.
//!
//! The tracker also follows strings and comments through the suggestion, which the scope rule uses to skip
//! lines inside multi-line literals; that part runs even when the rule is disabled.

use super::analysis::Analysis;
use super::lexer::{Frame, Token};

#[derive(Clone, Debug)]
pub(crate) struct BracketTracker {
    /// `Analysis::open[..outer]` (the frames open at the cursor) are still open at this point.
    outer: usize,
    /// Frames the suggestion opened.
    local: Vec<Frame>,
}

impl BracketTracker {
    pub fn new(an: &Analysis) -> Self {
        BracketTracker {
            outer: an.open.len(),
            local: Vec::new(),
        }
    }

    /// The innermost open frame (the lexing context).
    pub fn top(&self, an: &Analysis) -> Option<Frame> {
        self.local
            .last()
            .or_else(|| an.open[..self.outer].last())
            .copied()
    }

    /// Inside a string or comment that spans lines.
    pub fn in_multiline_literal(&self, an: &Analysis) -> bool {
        self.top(an).is_some_and(|f| f.is_multiline_literal())
    }

    /// Follows one token; returns `true` when it is an excess closer.
    pub fn feed(&mut self, an: &Analysis, tok: Token) -> bool {
        match tok {
            Token::Open(f) => {
                self.local.push(f);
                false
            }
            Token::CloseBracket(c) => {
                let want = Frame::Bracket { close: c };
                if let Some(top) = self.local.last() {
                    if *top == want {
                        self.local.pop();
                        return false;
                    }
                    // Mismatched (`(]`): recover like the prefix scan, but it is still an excess closer.
                    if let Some(j) = self.local.iter().rposition(|f| *f == want) {
                        self.local.truncate(j);
                    }
                    return true;
                }
                match self.outer.checked_sub(1) {
                    Some(j) if an.open[j] == want => {
                        self.outer = j;
                        an.closed_by_suffix[j]
                    }
                    _ => true,
                }
            }
            Token::CloseLiteral => {
                if self.local.pop().is_some() {
                    return false;
                }
                match self.outer.checked_sub(1) {
                    Some(j) => {
                        self.outer = j;
                        matches!(an.open[j], Frame::Str(_)) && an.closed_by_suffix[j]
                    }
                    None => false,
                }
            }
            Token::End => {
                if self.local.pop().is_none() {
                    self.outer = self.outer.saturating_sub(1);
                }
                false
            }
            Token::Other => false,
        }
    }
}
