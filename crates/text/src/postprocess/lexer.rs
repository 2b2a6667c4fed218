//! A tiny lexer that knows only what bracket balancing needs: brackets, string literals and comments.
//!
//! It reads one token at a time in the context of the innermost open [`Frame`] (code, a string, a comment),
//! and the caller keeps the stack, because the prefix, the suffix and the generated text each treat closers
//! differently. It is a heuristic (no regex literals, raw strings or nested block comments), so callers treat
//! its answers as hints and stay on the permissive side when unsure.

use crate::language::{Language, StringDelimiter};

/// Something open at a point of the text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Frame {
    Bracket { close: char },
    Str(StringDelimiter),
    LineComment,
    BlockComment { close: &'static str },
}

impl Frame {
    /// Inside a literal or comment that continues over line breaks.
    pub fn is_multiline_literal(&self) -> bool {
        match self {
            Frame::Str(d) => d.multiline,
            Frame::BlockComment { .. } => true,
            Frame::Bracket { .. } | Frame::LineComment => false,
        }
    }
}

/// One lexical event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Token {
    /// Opens a bracket, string or comment.
    Open(Frame),
    /// A closing bracket (any, matched or not) in code.
    CloseBracket(char),
    /// Closes the current string or block comment with its delimiter.
    CloseLiteral,
    /// The current line comment or single-line string ends at a line break without a delimiter.
    End,
    /// Anything else.
    Other,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Lexer {
    lang: Language,
    /// Bit `b` set: ASCII byte `b` may start a token in code (a bracket, quote or comment marker); every
    /// other character is plain text, the common case.
    special: u128,
}

impl Lexer {
    pub fn new(lang: Language) -> Self {
        let mut special = 0u128;
        let mut mark = |s: &str| {
            if let Some(&b) = s.as_bytes().first() {
                if b < 128 {
                    special |= 1 << b;
                }
            }
        };
        if let Some((open, _)) = lang.block_comment() {
            mark(open);
        }
        if let Some(marker) = lang.line_comment() {
            mark(marker);
        }
        for d in lang.string_delimiters() {
            mark(d.quote);
        }
        if lang.has_rust_char_literals() {
            mark("'");
        }
        for &(open, close) in lang.brackets() {
            mark(open.encode_utf8(&mut [0; 4]));
            mark(close.encode_utf8(&mut [0; 4]));
        }
        Lexer { lang, special }
    }

    /// Reads the token at byte `i` of `text` (a char boundary, `i < text.len()`) in the context `top`.
    /// Returns the token and its length in bytes (at least one character), or `None` when `text` may be
    /// unfinished (`complete == false`) and the bytes so far do not decide the token yet (a `"` that could
    /// become `"""`, a backslash at the very end).
    pub fn next(
        &self,
        text: &str,
        i: usize,
        top: Option<&Frame>,
        complete: bool,
    ) -> Option<(Token, usize)> {
        let rest = &text[i..];
        let first = rest.chars().next()?;
        let one = first.len_utf8();
        // `rest` is a proper prefix of a delimiter that could still complete: wait for more text.
        let undecided =
            |delim: &str| !complete && rest.len() < delim.len() && delim.starts_with(rest);
        match top {
            Some(Frame::LineComment) => Some((
                if first == '\n' {
                    Token::End
                } else {
                    Token::Other
                },
                one,
            )),
            Some(Frame::BlockComment { close }) => {
                if rest.starts_with(close) {
                    Some((Token::CloseLiteral, close.len()))
                } else if undecided(close) {
                    None
                } else {
                    Some((Token::Other, one))
                }
            }
            Some(Frame::Str(d)) => {
                if d.escapes && first == '\\' {
                    match rest[1..].chars().next() {
                        Some(c) => Some((Token::Other, 1 + c.len_utf8())),
                        None if complete => Some((Token::Other, 1)),
                        None => None,
                    }
                } else if rest.starts_with(d.quote) {
                    Some((Token::CloseLiteral, d.quote.len()))
                } else if undecided(d.quote) {
                    None
                } else if first == '\n' && !d.multiline {
                    Some((Token::End, 1))
                } else {
                    Some((Token::Other, one))
                }
            }
            Some(Frame::Bracket { .. }) | None => self.code(text, i, complete),
        }
    }

    fn code(&self, text: &str, i: usize, complete: bool) -> Option<(Token, usize)> {
        let rest = &text[i..];
        let first = rest.chars().next()?;
        if !(first.is_ascii() && self.special & (1 << first as u32) != 0) {
            return Some((Token::Other, first.len_utf8()));
        }
        let undecided =
            |delim: &str| !complete && rest.len() < delim.len() && delim.starts_with(rest);
        if let Some((open, close)) = self.lang.block_comment() {
            if rest.starts_with(open) {
                return Some((Token::Open(Frame::BlockComment { close }), open.len()));
            }
            if undecided(open) {
                return None;
            }
        }
        if let Some(marker) = self.lang.line_comment() {
            let word_start = !self.lang.line_comment_needs_word_start()
                || text[..i]
                    .chars()
                    .next_back()
                    .is_none_or(char::is_whitespace);
            if word_start && rest.starts_with(marker) {
                return Some((Token::Open(Frame::LineComment), marker.len()));
            }
            if word_start && undecided(marker) {
                return None;
            }
        }
        if first == '\'' && self.lang.has_rust_char_literals() {
            return rust_quote(rest, complete).map(|len| (Token::Other, len));
        }
        for d in self.lang.string_delimiters() {
            if rest.starts_with(d.quote) {
                // A longer delimiter sharing this start (`"` vs `"""`) must be decidable first.
                if self
                    .lang
                    .string_delimiters()
                    .iter()
                    .any(|longer| longer.quote.len() > d.quote.len() && undecided(longer.quote))
                {
                    return None;
                }
                return Some((Token::Open(Frame::Str(*d)), d.quote.len()));
            }
        }
        for &(open, close) in self.lang.brackets() {
            if first == open {
                return Some((Token::Open(Frame::Bracket { close }), 1));
            }
            if first == close {
                return Some((Token::CloseBracket(close), 1));
            }
        }
        Some((Token::Other, first.len_utf8()))
    }
}

/// Length of a Rust character literal starting at `rest` (`'a'`, `'\n'`, `'\u{1F600}'`), or 1 for a lifetime
/// or label quote; `None` when unfinished text does not decide yet.
fn rust_quote(rest: &str, complete: bool) -> Option<usize> {
    let mut chars = rest.char_indices().skip(1);
    let lifetime = Some(1);
    match chars.next() {
        None => (complete).then_some(1),
        Some((_, '\\')) => {
            // An escape: the closing quote follows within a few characters on the same line.
            for (j, c) in chars.take(10) {
                match c {
                    '\'' => return Some(j + 1),
                    '\n' => return lifetime,
                    _ => {}
                }
            }
            if !complete && rest.len() < 12 {
                None
            } else {
                lifetime
            }
        }
        Some((_, '\n')) | Some((_, '\'')) => lifetime,
        Some((_, _)) => match chars.next() {
            Some((j, '\'')) => Some(j + 1),
            Some(_) => lifetime,
            None if complete => lifetime,
            None => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(lang: Language, text: &str) -> Vec<Token> {
        let lx = Lexer::new(lang);
        let mut stack: Vec<Frame> = Vec::new();
        let mut out = Vec::new();
        let mut i = 0;
        while i < text.len() {
            let (tok, len) = lx.next(text, i, stack.last(), true).unwrap();
            match tok {
                Token::Open(f) => stack.push(f),
                Token::CloseLiteral | Token::End => {
                    stack.pop();
                }
                Token::CloseBracket(_) => {
                    stack.pop();
                }
                Token::Other => {}
            }
            if tok != Token::Other {
                out.push(tok);
            }
            i += len;
        }
        out
    }

    #[test]
    fn strings_hide_brackets() {
        let t = tokens(Language::Python, "f(\")\", '(')  # )\n");
        let closers = t
            .iter()
            .filter(|t| matches!(t, Token::CloseBracket(_)))
            .count();
        assert_eq!(closers, 1, "{t:?}");
    }

    #[test]
    fn rust_lifetimes_and_chars() {
        assert_eq!(rust_quote("'a>", true), Some(1));
        assert_eq!(rust_quote("'a'", true), Some(3));
        assert_eq!(rust_quote("'\\n'", true), Some(4));
        assert_eq!(rust_quote("'\\u{1F600}'", true), Some(11));
        assert_eq!(rust_quote("'(' ", true), Some(3));
        assert_eq!(rust_quote("'é'", true), Some(4));
        assert_eq!(rust_quote("'a", false), None);
        let t = tokens(Language::Rust, "fn f<'a>(x: &'a str) -> char { ')' }");
        let closers = t
            .iter()
            .filter(|t| matches!(t, Token::CloseBracket(_)))
            .count();
        assert_eq!(closers, 2, "{t:?}");
    }

    #[test]
    fn undecided_at_end_of_unfinished_text() {
        let lx = Lexer::new(Language::Python);
        assert_eq!(lx.next("x = \"", 4, None, false), None);
        assert!(lx.next("x = \"", 4, None, true).is_some());
        assert!(lx.next("x = \"a", 4, None, false).is_some());
        let lx = Lexer::new(Language::Go);
        assert_eq!(lx.next("a /", 2, None, false), None);
    }

    #[test]
    fn shell_hash_needs_word_start() {
        let t = tokens(Language::Shell, "echo $# # c");
        assert_eq!(t, vec![Token::Open(Frame::LineComment)]);
    }
}
