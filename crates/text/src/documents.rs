//! The documents the editor has open, kept on ropes, and the conversion between editor positions and text.
//!
//! Positions are `(line, character)` pairs as LSP sends them: lines are separated by `\n`, `\r\n` or `\r`
//! only, and `character` counts UTF-8 bytes, UTF-16 code units or code points, as negotiated. Every
//! conversion clamps: a line past the end means the end of the document, a character past the end of its line
//! means the end of that line (before the line break), and a position inside a character (the middle of a
//! surrogate pair or of a UTF-8 sequence) means the start of that character. Nothing here panics on input.
//!
//! This module knows nothing about LSP types; the server converts at its edge.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use ropey::Rope;

/// What a position's `character` counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PositionEncoding {
    Utf8,
    /// The LSP default.
    #[default]
    Utf16,
    Utf32,
}

impl PositionEncoding {
    /// The LSP name (`"utf-8"`, `"utf-16"`, `"utf-32"`).
    pub fn lsp_name(self) -> &'static str {
        match self {
            PositionEncoding::Utf8 => "utf-8",
            PositionEncoding::Utf16 => "utf-16",
            PositionEncoding::Utf32 => "utf-32",
        }
    }

    pub fn from_lsp_name(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "utf-8" => Some(PositionEncoding::Utf8),
            "utf-16" => Some(PositionEncoding::Utf16),
            "utf-32" => Some(PositionEncoding::Utf32),
            _ => None,
        }
    }

    /// Picks from what the client offers: UTF-8 when offered (no conversion needed for the prompt), else
    /// UTF-32, else the mandatory UTF-16.
    pub fn negotiate<'a>(offered: impl IntoIterator<Item = &'a str>) -> Self {
        let offered: Vec<PositionEncoding> = offered
            .into_iter()
            .filter_map(Self::from_lsp_name)
            .collect();
        [PositionEncoding::Utf8, PositionEncoding::Utf32]
            .into_iter()
            .find(|e| offered.contains(e))
            .unwrap_or(PositionEncoding::Utf16)
    }
}

/// A position as the editor sends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Pos {
    pub line: u32,
    pub character: u32,
}

impl Pos {
    pub const fn new(line: u32, character: u32) -> Self {
        Self { line, character }
    }
}

/// An open document.
#[derive(Debug, Clone)]
pub struct Document {
    text: Rope,
    pub version: i32,
    pub language_id: String,
}

/// The text around the cursor, as a completion needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// Text before the cursor (possibly cut at the top, at a line start).
    pub prefix: String,
    /// Text after the cursor (possibly cut at the bottom, at a line end).
    pub suffix: String,
    /// The cursor, clamped into the document, as a char index.
    pub cursor: usize,
    /// The document line the prefix starts on (the prompt budget counts its steps from the document's top).
    pub first_line: usize,
    /// The document breaks lines with `\r\n` (first line break found).
    pub crlf: bool,
}

impl Document {
    pub fn new(text: &str, language_id: &str, version: i32) -> Self {
        Self {
            text: Rope::from_str(text),
            version,
            language_id: language_id.to_string(),
        }
    }

    /// Number of lines as LSP counts them (a trailing line break starts one more, empty, line).
    pub fn len_lines(&self) -> usize {
        self.text.len_lines()
    }

    /// First char index of `line` and one past its last char before the line break.
    fn line_bounds(&self, line: usize) -> (usize, usize) {
        let start = self.text.line_to_char(line);
        let slice = self.text.line(line);
        let mut len = slice.len_chars();
        if len > 0 && slice.char(len - 1) == '\n' {
            len -= 1;
        }
        if len > 0 && slice.char(len - 1) == '\r' {
            len -= 1;
        }
        (start, start + len)
    }

    /// The char index of a position (clamped; see the module documentation).
    pub fn offset(&self, pos: Pos, enc: PositionEncoding) -> usize {
        let line = pos.line as usize;
        if line >= self.text.len_lines() {
            return self.text.len_chars();
        }
        let (start, end) = self.line_bounds(line);
        let character = pos.character as usize;
        match enc {
            PositionEncoding::Utf32 => start + character.min(end - start),
            PositionEncoding::Utf16 => {
                let base = self.text.char_to_utf16_cu(start);
                let limit = self.text.char_to_utf16_cu(end);
                let cu = (base + character).min(limit);
                // In the middle of a surrogate pair ropey answers the char that contains it: its start.
                self.text.utf16_cu_to_char(cu).clamp(start, end)
            }
            PositionEncoding::Utf8 => {
                let base = self.text.char_to_byte(start);
                let limit = self.text.char_to_byte(end);
                let byte = (base + character).min(limit);
                self.text.byte_to_char(byte).clamp(start, end)
            }
        }
    }

    /// The position of a char index (clamped to the document).
    pub fn position(&self, offset: usize, enc: PositionEncoding) -> Pos {
        let offset = offset.min(self.text.len_chars());
        let line = self.text.char_to_line(offset);
        let start = self.text.line_to_char(line);
        let character = match enc {
            PositionEncoding::Utf32 => offset - start,
            PositionEncoding::Utf16 => {
                self.text.char_to_utf16_cu(offset) - self.text.char_to_utf16_cu(start)
            }
            PositionEncoding::Utf8 => {
                self.text.char_to_byte(offset) - self.text.char_to_byte(start)
            }
        };
        Pos::new(to_u32(line), to_u32(character))
    }

    /// The byte offset (into [`Document::text`]) of a position (clamped like [`Document::offset`]).
    pub fn byte_offset(&self, pos: Pos, enc: PositionEncoding) -> usize {
        self.text.char_to_byte(self.offset(pos, enc))
    }

    /// The position of a byte offset into [`Document::text`] (clamped to the document; inside a character: its
    /// start).
    pub fn byte_position(&self, byte: usize, enc: PositionEncoding) -> Pos {
        let byte = byte.min(self.text.len_bytes());
        self.position(self.text.byte_to_char(byte), enc)
    }

    /// Replaces the text between two positions (in either order), or the whole document when `range` is
    /// `None`.
    pub fn edit(&mut self, range: Option<(Pos, Pos)>, new_text: &str, enc: PositionEncoding) {
        let Some((a, b)) = range else {
            self.text = Rope::from_str(new_text);
            return;
        };
        let (a, b) = (self.offset(a, enc), self.offset(b, enc));
        let (start, end) = (a.min(b), a.max(b));
        if start < end {
            self.text.remove(start..end);
        }
        if !new_text.is_empty() {
            self.text.insert(start, new_text);
        }
    }

    /// The whole text.
    pub fn text(&self) -> String {
        self.text.to_string()
    }

    /// Splits the text at the cursor. At most about `max_chars` are taken on each side, cut at whole lines
    /// (a line longer than that: at a char count). This only bounds the text copied per request: the
    /// prompt budget (`prompt::budget`) decides where the prompt starts, in steps counted from the
    /// document's top, so that it stays put while the user types.
    pub fn split(&self, pos: Pos, enc: PositionEncoding, max_chars: usize) -> Split {
        let cursor = self.offset(pos, enc);
        let line = self.text.char_to_line(cursor);
        let total = self.text.len_chars();

        // Top: the first line start at most `max_chars` before the cursor.
        let earliest = cursor.saturating_sub(max_chars);
        let mut first_line = self.text.char_to_line(earliest);
        if self.text.line_to_char(first_line) < earliest {
            first_line += 1;
        }
        let from = if first_line <= line {
            self.text.line_to_char(first_line)
        } else {
            first_line = line;
            earliest
        };

        // Bottom: the last line end at most `max_chars` after the cursor.
        let latest = (cursor + max_chars).min(total);
        let to = match self.text.line_to_char(self.text.char_to_line(latest)) {
            _ if latest == total => total,
            end if end > cursor => end,
            _ => latest,
        };

        Split {
            prefix: self.text.slice(from..cursor).to_string(),
            suffix: self.text.slice(cursor..to).to_string(),
            cursor,
            first_line,
            crlf: self.uses_crlf(),
        }
    }

    /// Whether the first line break is `\r\n`.
    pub fn uses_crlf(&self) -> bool {
        if self.text.len_lines() < 2 {
            return false;
        }
        let (_, end) = self.line_bounds(0);
        self.text.get_char(end) == Some('\r') && self.text.get_char(end + 1) == Some('\n')
    }
}

fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The open documents, by URI, in the order they were last opened or edited (most recent last). The lock
/// is only ever held for a lookup, an edit or a clone (cheap: ropes share their nodes), never across an
/// `.await` or inference.
#[derive(Debug, Default)]
pub struct Documents {
    docs: Mutex<Open>,
}

#[derive(Debug, Default)]
struct Open {
    by_uri: HashMap<String, Document>,
    /// URIs, least recently touched first.
    recent: Vec<String>,
}

impl Open {
    fn touch(&mut self, uri: &str) {
        self.recent.retain(|u| u != uri);
        self.recent.push(uri.to_string());
    }
}

impl Documents {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Open> {
        self.docs.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn open(&self, uri: &str, doc: Document) {
        let mut open = self.lock();
        open.by_uri.insert(uri.to_string(), doc);
        open.touch(uri);
    }

    pub fn close(&self, uri: &str) -> bool {
        let mut open = self.lock();
        open.recent.retain(|u| u != uri);
        open.by_uri.remove(uri).is_some()
    }

    /// Runs `f` on the document (an edit), if it is open.
    pub fn with_mut<R>(&self, uri: &str, f: impl FnOnce(&mut Document) -> R) -> Option<R> {
        let mut open = self.lock();
        let out = open.by_uri.get_mut(uri).map(f);
        if out.is_some() {
            open.touch(uri);
        }
        out
    }

    /// A copy of the document to work on without the lock.
    pub fn snapshot(&self, uri: &str) -> Option<Document> {
        self.lock().by_uri.get(uri).cloned()
    }

    /// Copies of up to `n` other open documents, most recently touched first, with their URIs.
    pub fn recent_others(&self, uri: &str, n: usize) -> Vec<(String, Document)> {
        let open = self.lock();
        open.recent
            .iter()
            .rev()
            .filter(|u| *u != uri)
            .filter_map(|u| Some((u.clone(), open.by_uri.get(u)?.clone())))
            .take(n)
            .collect()
    }

    pub fn len(&self) -> usize {
        self.lock().by_uri.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().by_uri.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::PositionEncoding::{Utf16, Utf32, Utf8};
    use super::*;

    fn doc(text: &str) -> Document {
        Document::new(text, "plaintext", 0)
    }

    /// Applies one edit given in `enc` and checks the result.
    fn check_edit(
        before: &str,
        (a, b): ((u32, u32), (u32, u32)),
        new: &str,
        enc: PositionEncoding,
        after: &str,
    ) {
        let mut d = doc(before);
        d.edit(Some((Pos::new(a.0, a.1), Pos::new(b.0, b.1))), new, enc);
        assert_eq!(d.text(), after, "edit {a:?}-{b:?} {new:?} in {enc:?}");
    }

    #[test]
    fn negotiation_prefers_utf8_then_utf32() {
        assert_eq!(PositionEncoding::negotiate(["utf-16", "utf-8"]), Utf8);
        assert_eq!(PositionEncoding::negotiate(["utf-32", "utf-16"]), Utf32);
        assert_eq!(PositionEncoding::negotiate(["utf-16"]), Utf16);
        assert_eq!(PositionEncoding::negotiate(["latin-1"]), Utf16);
        assert_eq!(PositionEncoding::negotiate([]), Utf16);
    }

    #[test]
    fn emoji_cjk_and_combining_marks_in_every_encoding() {
        // 'é' written as e + U+0301 (2 code points), an emoji outside the BMP, and CJK.
        let line = "e\u{301}😀中x";
        // (UTF-8 bytes, UTF-16 units, code points) before 'x'.
        let before_x = [
            (Utf8, 1 + 2 + 4 + 3),
            (Utf16, 1 + 1 + 2 + 1),
            (Utf32, 1 + 1 + 1 + 1),
        ];
        for (enc, col) in before_x {
            check_edit(line, ((0, col), (0, col)), "!", enc, "e\u{301}😀中!x");
            let d = doc(line);
            assert_eq!(d.position(4, enc), Pos::new(0, col));
            assert_eq!(d.offset(Pos::new(0, col), enc), 4);
        }
        // Replace the emoji alone.
        check_edit(line, ((0, 3), (0, 7)), "🙂", Utf8, "e\u{301}🙂中x");
        check_edit(line, ((0, 2), (0, 4)), "🙂", Utf16, "e\u{301}🙂中x");
        check_edit(line, ((0, 2), (0, 3)), "🙂", Utf32, "e\u{301}🙂中x");
    }

    #[test]
    fn byte_offsets_and_back() {
        let d = doc("# 日本\nx😀y\n");
        for enc in [Utf8, Utf16, Utf32] {
            // 'y' is byte 14: "# 日本\n" is 9 bytes, "x😀" 5 more.
            let y = d.position(7, enc);
            assert_eq!(d.byte_offset(y, enc), 14, "{enc:?}");
            assert_eq!(d.byte_position(14, enc), y, "{enc:?}");
            // Inside the emoji: its start. Past the end: the end.
            assert_eq!(d.byte_position(12, enc), d.position(6, enc), "{enc:?}");
            assert_eq!(d.byte_position(99, enc), Pos::new(2, 0), "{enc:?}");
        }
    }

    #[test]
    fn positions_inside_a_character_snap_to_its_start() {
        let d = doc("a😀b");
        // UTF-16 unit 2 is between the surrogates of the emoji; UTF-8 byte 3 is inside its 4 bytes.
        assert_eq!(d.offset(Pos::new(0, 2), Utf16), 1);
        assert_eq!(d.offset(Pos::new(0, 3), Utf8), 1);
        assert_eq!(d.offset(Pos::new(0, 5), Utf8), 2);
    }

    #[test]
    fn crlf_and_lone_cr_are_line_breaks_but_unicode_separators_are_not() {
        let d = doc("ab\r\ncd\ref\u{2028}gh\nij");
        assert_eq!(d.len_lines(), 4);
        assert_eq!(d.offset(Pos::new(1, 0), Utf16), 4);
        assert_eq!(d.offset(Pos::new(2, 0), Utf16), 7);
        // Past the end of "ab": before "\r\n", never between '\r' and '\n'.
        assert_eq!(d.offset(Pos::new(0, 99), Utf16), 2);
        assert_eq!(d.offset(Pos::new(2, 3), Utf32), 10);
        assert!(d.uses_crlf());
        check_edit("ab\r\ncd", ((0, 2), (1, 0)), "\n", Utf16, "ab\ncd");
        check_edit("ab\r\ncd", ((0, 9), (0, 9)), "X", Utf8, "abX\r\ncd");
    }

    #[test]
    fn positions_past_the_end_clamp() {
        let d = doc("one\ntwo\n");
        assert_eq!(d.offset(Pos::new(9, 9), Utf16), 8);
        assert_eq!(d.offset(Pos::new(2, 5), Utf16), 8);
        assert_eq!(d.offset(Pos::new(0, u32::MAX), Utf8), 3);
        assert_eq!(d.position(1000, Utf16), Pos::new(2, 0));
        check_edit("one\ntwo", ((5, 0), (7, 3)), "!", Utf16, "one\ntwo!");
        // Reversed ranges are taken in order.
        check_edit("abcdef", ((0, 4), (0, 1)), "-", Utf16, "a-ef");
        let empty = doc("");
        assert_eq!(empty.offset(Pos::new(3, 3), Utf16), 0);
        assert_eq!(empty.split(Pos::new(3, 3), Utf16, 100).prefix, "");
    }

    #[test]
    fn whole_document_replacement_and_nul_bytes() {
        let mut d = doc("old");
        d.edit(None, "new\0text", Utf16);
        assert_eq!(d.text(), "new\0text");
        d.edit(Some((Pos::new(0, 3), Pos::new(0, 4))), "", Utf8);
        assert_eq!(d.text(), "newtext");
    }

    #[test]
    fn split_at_the_cursor_and_cut_at_whole_lines() {
        let d = doc("def f():\n    return 1\n");
        let s = d.split(Pos::new(1, 4), Utf16, 1000);
        assert_eq!(
            (s.prefix.as_str(), s.suffix.as_str()),
            ("def f():\n    ", "return 1\n")
        );
        assert!(!s.crlf);

        let text: String = (0..1000).map(|i| format!("line {i:04}\n")).collect(); // 10 chars a line
        let d = doc(&text);
        let s = d.split(Pos::new(500, 2), Utf16, 1500);
        // Line 351 starts 1492 chars before the cursor, line 350 1502.
        assert!(s.prefix.starts_with("line 0351\n"), "{}", &s.prefix[..20]);
        assert_eq!(s.first_line, 351);
        // Line 650 starts 1498 chars after the cursor: the suffix ends before it.
        assert!(
            s.suffix.ends_with("line 0649\n"),
            "{}",
            &s.suffix[s.suffix.len() - 20..]
        );
        // Near the ends of the document, everything.
        let s = d.split(Pos::new(10, 2), Utf16, 1500);
        assert_eq!((s.first_line, s.prefix.len()), (0, 102));
        let s = d.split(Pos::new(990, 2), Utf16, 1500);
        assert_eq!(s.suffix.len(), 98);

        // A single giant line: cut by chars.
        let d = doc(&"x".repeat(10_000));
        let s = d.split(Pos::new(0, 5000), Utf16, 100);
        assert_eq!(
            (s.prefix.len(), s.suffix.len(), s.first_line),
            (100, 100, 0)
        );
        // A long line after short ones: its part before the cursor, counted from its own line.
        let d = doc(&format!("a\nb\n{}", "x".repeat(10_000)));
        let s = d.split(Pos::new(2, 5000), Utf16, 100);
        assert_eq!((s.prefix.len(), s.first_line), (100, 2));
    }

    #[test]
    fn documents_store() {
        let docs = Documents::new();
        docs.open("file:///a", doc("x"));
        assert_eq!(docs.len(), 1);
        let snap = docs.snapshot("file:///a").unwrap();
        docs.with_mut("file:///a", |d| d.edit(None, "y", Utf16));
        assert_eq!(snap.text(), "x");
        assert_eq!(docs.snapshot("file:///a").unwrap().text(), "y");
        assert!(docs.with_mut("file:///b", |_| ()).is_none());
        assert!(docs.close("file:///a"));
        assert!(docs.is_empty());
    }
}
