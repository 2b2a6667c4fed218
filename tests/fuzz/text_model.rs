//! The reference the document-sync target checks `documents` against: the text as a `Vec<char>`, and
//! positions found by walking it a character at a time under the rules `documents` states (lines end at
//! `\n`, `\r\n` or `\r` and nowhere else; a line past the end is the end of the document; a character past
//! the end of its line is the end of that line, before its break; a position inside a character is its
//! start). Slow and plainly right, which is what a reference is for. Also how fuzz bytes become
//! positions and inserted text.

use codellama_text::documents::{Pos, PositionEncoding};

pub struct TextModel {
    chars: Vec<char>,
}

impl TextModel {
    pub fn new(text: &str) -> Self {
        Self {
            chars: text.chars().collect(),
        }
    }

    pub fn text(&self) -> String {
        self.chars.iter().collect()
    }

    /// Each line's first char and its end before the line break.
    fn lines(&self) -> Vec<(usize, usize)> {
        let (mut out, mut start, mut i) = (Vec::new(), 0, 0);
        while i < self.chars.len() {
            let width = match (self.chars[i], self.chars.get(i + 1)) {
                ('\r', Some('\n')) => 2,
                ('\r' | '\n', _) => 1,
                _ => {
                    i += 1;
                    continue;
                }
            };
            out.push((start, i));
            i += width;
            start = i;
        }
        out.push((start, self.chars.len()));
        out
    }

    pub fn len_lines(&self) -> usize {
        self.lines().len()
    }

    pub fn offset(&self, pos: Pos, enc: PositionEncoding) -> usize {
        let Some(&(start, end)) = self.lines().get(pos.line as usize) else {
            return self.chars.len();
        };
        let (mut at, mut used) = (start, 0);
        while at < end && used + units(self.chars[at], enc) <= pos.character as usize {
            used += units(self.chars[at], enc);
            at += 1;
        }
        at
    }

    pub fn position(&self, offset: usize, enc: PositionEncoding) -> Pos {
        let offset = offset.min(self.chars.len());
        let lines = self.lines();
        // The last line starting at or before the offset (an offset on a line break is on its line).
        let line = lines.iter().rposition(|&(s, _)| s <= offset).unwrap_or(0);
        let start = lines[line].0;
        let character: usize = self.chars[start..offset]
            .iter()
            .map(|&c| units(c, enc))
            .sum();
        Pos::new(line as u32, character as u32)
    }

    pub fn edit(&mut self, range: Option<(Pos, Pos)>, text: &str, enc: PositionEncoding) {
        let (start, end) = match range {
            None => (0, self.chars.len()),
            Some((a, b)) => {
                let (a, b) = (self.offset(a, enc), self.offset(b, enc));
                (a.min(b), a.max(b))
            }
        };
        self.chars.splice(start..end, text.chars());
    }
}

fn units(c: char, enc: PositionEncoding) -> usize {
    match enc {
        PositionEncoding::Utf8 => c.len_utf8(),
        PositionEncoding::Utf16 => c.len_utf16(),
        PositionEncoding::Utf32 => 1,
    }
}

/// Fuzz bytes read as edits: positions and text.
pub struct Bytes<'a>(pub &'a [u8]);

/// What inserted text is made of: line breaks of every kind, characters of every UTF-8 and UTF-16
/// width, a combining mark, NUL, and the Unicode separators that are not LSP line breaks.
const PIECES: &[&str] = &[
    "a", " ", "\n", "\r", "\r\n", "\t", "\0", "é", "e\u{301}", "中", "😀", "\u{fffd}", "\u{2028}",
    "\u{85}", "\u{b}", "\u{c}", "\u{feff}", "xyz\n",
];

impl Bytes<'_> {
    pub fn next(&mut self) -> Option<u8> {
        let (&first, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(first)
    }

    /// Mostly small lines and columns; with the top bit set, a number past any end.
    pub fn pos(&mut self) -> Pos {
        Pos::new(self.number(), self.number())
    }

    fn number(&mut self) -> u32 {
        match self.next().unwrap_or(0) {
            b if b & 0x80 == 0 => (b % 16) as u32,
            b => [u32::MAX, u32::MAX - 1, 1 << 31, 1 << 16, 100, 17][b as usize % 6],
        }
    }

    /// Up to 7 pieces.
    pub fn text(&mut self) -> String {
        let n = self.next().unwrap_or(0) % 8;
        (0..n)
            .map(|_| PIECES[self.next().unwrap_or(0) as usize % PIECES.len()])
            .collect()
    }
}
