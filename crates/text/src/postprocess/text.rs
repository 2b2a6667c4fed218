//! Line and indentation helpers shared by the rules. Lines end at `\n`; a `\r` right before it (or at the very
//! end of unfinished text) belongs to the line break, not to the line.

/// Columns a tab advances to (the next multiple of this). Only relative indentation matters, and 4 matches
/// the common space indentation when a model mixes tabs and spaces.
pub(crate) const TAB_WIDTH: usize = 4;

/// One line of a text.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Line<'t> {
    /// Byte offset of the line's first character.
    pub start: usize,
    /// The line without its line break.
    pub text: &'t str,
    /// Byte offset where the next line starts (after the `\n`); equals `start + text.len()` (plus a
    /// trailing `\r`, if any) for the last line.
    pub next: usize,
    /// Whether a `\n` ends the line.
    pub terminated: bool,
}

impl Line<'_> {
    /// Byte offset just past the line's text (where its line break starts).
    pub fn end(&self) -> usize {
        self.start + self.text.len()
    }
}

/// The line starting at byte `start` (which must be 0 or just after a `\n`).
pub(crate) fn line_at(text: &str, start: usize) -> Line<'_> {
    let rest = &text[start..];
    match rest.find('\n') {
        Some(nl) => Line {
            start,
            text: rest[..nl].strip_suffix('\r').unwrap_or(&rest[..nl]),
            next: start + nl + 1,
            terminated: true,
        },
        None => Line {
            start,
            text: rest.strip_suffix('\r').unwrap_or(rest),
            next: text.len(),
            terminated: false,
        },
    }
}

/// The leading spaces and tabs of `s`.
pub(crate) fn leading_ws(s: &str) -> &str {
    let content = s.trim_start_matches([' ', '\t']);
    &s[..s.len() - content.len()]
}

/// The column reached after `ws` (spaces and tabs), starting at column `col`.
pub(crate) fn advance(col: usize, ws: &str) -> usize {
    ws.chars().fold(col, |c, ch| match ch {
        '\t' => (c / TAB_WIDTH + 1) * TAB_WIDTH,
        _ => c + 1,
    })
}

/// The indentation width of a line.
pub(crate) fn indent_width(line: &str) -> usize {
    advance(0, leading_ws(line))
}

/// Whether `s` has nothing but whitespace.
pub(crate) fn is_blank(s: &str) -> bool {
    s.trim().is_empty()
}

/// A character that can be part of an identifier or keyword.
pub(crate) fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The first word of `s` after its indentation (empty when it starts with punctuation).
pub(crate) fn first_word(s: &str) -> &str {
    let s = s.trim_start();
    let end = s.find(|c: char| !is_word_char(c)).unwrap_or(s.len());
    &s[..end]
}

/// Byte offset of the last line break (of a `\r\n`, its `\r`) that has non-whitespace text before it.
pub(crate) fn last_break_after_content(text: &str) -> Option<usize> {
    let nl = text.rfind('\n')?;
    let at = if nl > 0 && text.as_bytes()[nl - 1] == b'\r' {
        nl - 1
    } else {
        nl
    };
    (!is_blank(&text[..at])).then_some(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_breaks() {
        let t = "a\r\nbc\n\r";
        let l0 = line_at(t, 0);
        assert_eq!(
            (l0.text, l0.end(), l0.next, l0.terminated),
            ("a", 1, 3, true)
        );
        let l1 = line_at(t, l0.next);
        assert_eq!((l1.text, l1.next, l1.terminated), ("bc", 6, true));
        let l2 = line_at(t, l1.next);
        assert_eq!((l2.text, l2.next, l2.terminated), ("", 7, false));
    }

    #[test]
    fn widths() {
        assert_eq!(indent_width("    x"), 4);
        assert_eq!(indent_width("\tx"), 4);
        assert_eq!(indent_width("  \tx"), 4);
        assert_eq!(indent_width("\t  x"), 6);
        assert_eq!(advance(2, "\t"), 4);
        assert_eq!(indent_width("\u{3000}x"), 0);
    }

    #[test]
    fn last_break() {
        assert_eq!(last_break_after_content("\n  x"), None);
        assert_eq!(last_break_after_content("a\r\nb"), Some(1));
        assert_eq!(last_break_after_content("a\nb\n"), Some(3));
        assert_eq!(first_word("   else:"), "else");
        assert_eq!(first_word("} else {"), "");
    }
}
