//! The document an action works on, and the line arithmetic every other unit needs: line starts, line
//! text without its line break, indentation, the document's line ending.

use std::ops::Range;
use std::path::Path;

use crate::language::Language;

/// A document as actions see it: its text (positions are byte offsets into it), its path as the prompt
/// should name it, and its language.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    pub text: &'a str,
    pub path: Option<&'a str>,
    pub language: Language,
}

impl<'a> Source<'a> {
    /// The language comes from the LSP language id when given, else from the path.
    pub fn new(text: &'a str, path: Option<&'a str>, language_id: Option<&str>) -> Self {
        let language = match (language_id, path) {
            (Some(id), _) => Language::from_language_id(id),
            (None, Some(p)) => Language::from_path(Path::new(p)),
            (None, None) => Language::Other,
        };
        Self {
            text,
            path,
            language,
        }
    }

    pub fn lines(&self) -> Lines<'a> {
        Lines::new(self.text)
    }
}

/// Line starts of a text. Line `n` is 0-based; a text ending in a line break has an empty last line.
#[derive(Debug, Clone)]
pub struct Lines<'a> {
    text: &'a str,
    starts: Vec<usize>,
}

impl<'a> Lines<'a> {
    pub fn new(text: &'a str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Self { text, starts }
    }

    /// Number of lines (a final line break opens one more, empty line).
    pub fn count(&self) -> usize {
        self.starts.len()
    }

    /// Lines an editor shows: the empty line after a final line break does not count.
    pub fn visible_count(&self) -> usize {
        if self.text.ends_with('\n') {
            self.count() - 1
        } else {
            self.count()
        }
    }

    pub fn start(&self, line: usize) -> usize {
        self.starts[line]
    }

    /// Byte range of `line` without its line break (`\n` or `\r\n`).
    pub fn range(&self, line: usize) -> Range<usize> {
        let start = self.starts[line];
        let mut end = self
            .starts
            .get(line + 1)
            .map_or(self.text.len(), |next| next - 1);
        if self.text[start..end].ends_with('\r') {
            end -= 1;
        }
        start..end
    }

    /// Where the line after `line` starts (the text's end for the last line).
    pub fn next_start(&self, line: usize) -> usize {
        self.starts
            .get(line + 1)
            .copied()
            .unwrap_or(self.text.len())
    }

    pub fn text(&self, line: usize) -> &'a str {
        &self.text[self.range(line)]
    }

    /// The line that holds byte `offset` (the last line for the text's end).
    pub fn line_of(&self, offset: usize) -> usize {
        self.starts.partition_point(|&s| s <= offset) - 1
    }
}

/// The whitespace a line starts with.
pub fn indentation(line: &str) -> &str {
    &line[..line.len() - line.trim_start_matches([' ', '\t']).len()]
}

pub fn is_blank(line: &str) -> bool {
    line.trim().is_empty()
}

/// `"\r\n"` when the document's first line break is one, else `"\n"`.
pub fn line_ending(text: &str) -> &'static str {
    match text.find('\n') {
        Some(i) if text[..i].ends_with('\r') => "\r\n",
        _ => "\n",
    }
}

/// `text` (with `\n` breaks) written with the document's line ending.
pub fn with_line_ending(text: &str, ending: &str) -> String {
    if ending == "\n" {
        text.to_string()
    } else {
        text.replace('\n', ending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_ranges() {
        let l = Lines::new("a\r\nbc\n\nd");
        assert_eq!(l.count(), 4);
        assert_eq!(l.visible_count(), 4);
        assert_eq!(l.text(0), "a");
        assert_eq!(l.text(1), "bc");
        assert_eq!(l.text(2), "");
        assert_eq!(l.text(3), "d");
        assert_eq!(l.line_of(0), 0);
        assert_eq!(l.line_of(3), 1);
        assert_eq!(l.line_of(8), 3);
        assert_eq!(l.next_start(3), 8);
        let l = Lines::new("x\n");
        assert_eq!((l.count(), l.visible_count()), (2, 1));
        assert_eq!(l.text(1), "");
    }
}
