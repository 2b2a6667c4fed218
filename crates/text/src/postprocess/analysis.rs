//! What the rules need to know about the document, computed once per request from the [`Context`]: the
//! cursor's line, indentation, the next line of the suffix, the document's line break, and which brackets and
//! quotes are open before the cursor and which of those the suffix closes.

use super::lexer::{Frame, Lexer, Token};
use super::text::{advance, indent_width, is_blank, leading_ws};
use super::{Config, Context, Mode};
use crate::language::Language;

/// How far back into the prefix and forward into the suffix bracket matching looks. Far enough for any
/// function; bounded so a huge file costs a bounded scan.
const SCAN_LIMIT: usize = 256 * 1024;

/// The first non-blank line of the suffix after the cursor's line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct NextLine {
    pub indent: usize,
    pub text: String,
}

#[derive(Clone, Debug)]
pub(crate) struct Analysis {
    pub language: Language,
    /// Text of the cursor's line before the cursor.
    pub before: String,
    /// Text of the cursor's line after the cursor.
    pub rest_of_line: String,
    /// Whether the rest of the line has text (other than an auto-closed brace, see `auto_closed`).
    pub mid_line: bool,
    /// Whether the rest of the line is a `}` the editor closed (with only closers, `;` and `,` after it), as
    /// in `{║}`: the cursor counts as at the end of the line, and a block goes above the brace.
    pub auto_closed: bool,
    /// Whether suggestions are a single line (from the mode and the cursor position).
    pub single_line: bool,
    /// Column of the cursor (indentation width of `before` when it is blank).
    pub cursor_col: usize,
    /// Indentation width of the cursor's line when it has text before the cursor, else of the last
    /// non-blank line above (0 when none).
    pub reference_indent: usize,
    /// The same indentation as written (spaces and tabs).
    pub reference_ws: String,
    pub next_line: Option<NextLine>,
    pub crlf: bool,
    /// Brackets, strings and comments open at the cursor, outermost first.
    pub open: Vec<Frame>,
    /// For each of `open`: whether the suffix closes it.
    pub closed_by_suffix: Vec<bool>,
}

impl Analysis {
    pub fn new(ctx: &Context<'_>, config: &Config) -> Analysis {
        let prefix = ctx.prefix;
        let mut suffix = ctx.suffix;
        // A cursor between `\r` and `\n` is at the end of its line.
        let prefix_line_start = prefix.rfind('\n').map_or(0, |i| i + 1);
        let mut before = &prefix[prefix_line_start..];
        if suffix.starts_with('\n') {
            before = before.strip_suffix('\r').unwrap_or(before);
        }
        let (rest_of_line, after_line) = match suffix.find('\n') {
            Some(nl) => (&suffix[..nl], &suffix[nl + 1..]),
            None => (suffix, ""),
        };
        let rest_of_line = rest_of_line.strip_suffix('\r').unwrap_or(rest_of_line);
        let rest = rest_of_line.trim();
        let auto_closed = rest.starts_with('}')
            && rest
                .chars()
                .all(|c| matches!(c, ')' | ']' | '}' | ';' | ','));
        let mid_line = !rest.is_empty() && !auto_closed;
        let single_line = match config.mode {
            Mode::Auto => mid_line,
            Mode::SingleLine => true,
            Mode::Block => false,
        };
        let reference_line = if is_blank(before) {
            prefix[..prefix_line_start]
                .split('\n')
                .rev()
                .find(|l| !is_blank(l))
                .unwrap_or("")
        } else {
            before
        };
        let reference_indent = indent_width(reference_line);
        let next_line = after_line
            .split('\n')
            .find(|l| !is_blank(l))
            .map(|l| NextLine {
                indent: indent_width(l),
                text: l.trim().to_string(),
            });
        // The line break nearest before the cursor decides, else the first one after it.
        let crlf = match prefix[..prefix_line_start].strip_suffix('\n') {
            Some(p) => p.ends_with('\r'),
            None if prefix.ends_with('\r') && suffix.starts_with('\n') => true,
            None => suffix
                .find('\n')
                .is_some_and(|nl| nl > 0 && suffix.as_bytes()[nl - 1] == b'\r'),
        };
        let lexer = Lexer::new(ctx.language);
        let open = open_frames(lexer, prefix);
        if suffix.len() > SCAN_LIMIT {
            let mut end = SCAN_LIMIT;
            while !suffix.is_char_boundary(end) {
                end -= 1;
            }
            suffix = &suffix[..end];
        }
        let closed_by_suffix = closed_by(lexer, &open, suffix);
        let cursor_col = if is_blank(before) {
            advance(0, leading_ws(before))
        } else {
            indent_width(before)
        };
        Analysis {
            language: ctx.language,
            before: before.to_string(),
            rest_of_line: rest_of_line.to_string(),
            mid_line,
            auto_closed,
            single_line,
            cursor_col,
            reference_indent,
            reference_ws: leading_ws(reference_line).to_string(),
            next_line,
            crlf,
            open,
            closed_by_suffix,
        }
    }

    /// Whether the cursor's line has nothing but whitespace before the cursor.
    pub fn before_blank(&self) -> bool {
        is_blank(&self.before)
    }
}

/// Frames open at the end of `prefix` (its last `SCAN_LIMIT` bytes, from a line start).
fn open_frames(lexer: Lexer, prefix: &str) -> Vec<Frame> {
    let mut start = prefix.len().saturating_sub(SCAN_LIMIT);
    if start > 0 {
        start = prefix[start..]
            .find('\n')
            .map_or(prefix.len(), |nl| start + nl + 1);
    }
    let mut stack: Vec<Frame> = Vec::new();
    let mut i = start;
    while i < prefix.len() {
        let Some((tok, len)) = lexer.next(prefix, i, stack.last(), true) else {
            break;
        };
        match tok {
            Token::Open(f) => stack.push(f),
            Token::CloseBracket(c) => {
                // Recover from a mismatch by closing everything above the matching opener; a closer with no
                // opener is ignored.
                if let Some(j) = stack
                    .iter()
                    .rposition(|f| *f == Frame::Bracket { close: c })
                {
                    stack.truncate(j);
                }
            }
            Token::CloseLiteral | Token::End => {
                stack.pop();
            }
            Token::Other => {}
        }
        i += len;
    }
    stack
}

/// For each frame in `open`: whether `suffix` closes it. When unsure (a multi-line string whose end is not on
/// the cursor's line), the frame counts as not closed, which lets the suggestion close it.
fn closed_by(lexer: Lexer, open: &[Frame], suffix: &str) -> Vec<bool> {
    let mut closed = vec![false; open.len()];
    let mut outer = open.len(); // open[..outer] are still open as the suffix is read
    let mut local: Vec<Frame> = Vec::new();
    let mut i = 0;
    while i < suffix.len() && outer > 0 {
        let top = local.last().or_else(|| open[..outer].last());
        if local.is_empty()
            && top.is_some_and(Frame::is_multiline_literal)
            && suffix[i..].starts_with('\n')
        {
            break;
        }
        let Some((tok, len)) = lexer.next(suffix, i, top, true) else {
            break;
        };
        match tok {
            Token::Open(f) => local.push(f),
            Token::CloseBracket(c) => {
                let want = Frame::Bracket { close: c };
                if local.is_empty() {
                    if let Some(j) = open[..outer].iter().rposition(|f| *f == want) {
                        closed[j] = true;
                        outer = j;
                    }
                } else if let Some(j) = local.iter().rposition(|f| *f == want) {
                    local.truncate(j);
                }
            }
            Token::CloseLiteral => {
                if local.pop().is_none() {
                    closed[outer - 1] = true;
                    outer -= 1;
                }
            }
            Token::End => {
                if local.pop().is_none() {
                    outer -= 1;
                }
            }
            Token::Other => {}
        }
        i += len;
    }
    closed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn analyze(lang: Language, prefix: &str, suffix: &str) -> Analysis {
        Analysis::new(&Context::new(prefix, suffix, lang), &Config::default())
    }

    #[test]
    fn cursor_line() {
        let a = analyze(
            Language::Python,
            "def f(x):\n    y = x\n    ",
            "\n\n    return y\n",
        );
        assert_eq!(a.before, "    ");
        assert!(!a.mid_line && !a.single_line);
        assert_eq!((a.cursor_col, a.reference_indent), (4, 4));
        assert_eq!(
            a.next_line,
            Some(NextLine {
                indent: 4,
                text: "return y".into()
            })
        );
        assert!(!a.crlf);
        let a = analyze(Language::Rust, "fn f() {\r\n    let x = g(", ");\r\n}\r\n");
        assert!(a.crlf && a.mid_line && a.single_line);
        assert_eq!(a.rest_of_line, ");");
        assert_eq!(a.reference_indent, 4);
        let a = analyze(Language::Go, "func f() {\n\tif x {", "});\n");
        assert!(a.auto_closed && !a.mid_line && !a.single_line);
        assert_eq!((a.reference_indent, a.reference_ws.as_str()), (4, "\t"));
        for rest in [")", "]", "}x", "\"", "} else {"] {
            let a = analyze(Language::Rust, "f(", rest);
            assert!(!a.auto_closed && a.mid_line, "{rest}");
        }
    }

    #[test]
    fn brackets_closed_by_suffix() {
        let a = analyze(Language::Rust, "fn f() {\n    g(h(", "))\n");
        assert_eq!(a.open.len(), 3);
        assert_eq!(a.closed_by_suffix, vec![false, true, true]);
        let a = analyze(Language::Python, "print(\"hi ", "\")\n");
        assert_eq!(a.closed_by_suffix, vec![true, true]);
        let a = analyze(
            Language::Python,
            "def f():\n    \"\"\"",
            "\n    x = 1\n    \"\"\"\n",
        );
        assert_eq!(a.closed_by_suffix, vec![false]);
        let a = analyze(Language::C, "int main() {\n  if (x) {\n", "  }\n");
        assert_eq!(a.closed_by_suffix, vec![false, true]);
    }
}
