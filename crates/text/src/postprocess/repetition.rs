//! Rule `repetition`: stop runaway repetition.
//!
//! Small models loop. Two shapes are caught, both decided as soon as the evidence is complete:
//! - a line, or a block of up to [`MAX_BLOCK`] lines, repeated `Config::repeated_lines` times back to back:
//!   the first copy is kept, the suggestion ends before the second;
//! - inside one line, a chunk of up to [`MAX_CHUNK`] characters repeated back to back over
//!   `Config::repeated_chunk_chars` characters (`self.self.self.`, `foo(foo(foo(`): the whole line is
//!   dropped. The chunk must hold a letter or digit (banners like `# =====` are fine) and no comma (so are
//!   tables like `0, 0, 0, 0`).

/// The longest repeated block of lines looked for.
pub(crate) const MAX_BLOCK: usize = 8;
/// The longest repeated chunk inside a line looked for.
pub(crate) const MAX_CHUNK: usize = 16;

/// Repeated lines and blocks of lines.
#[derive(Clone, Debug)]
pub(crate) struct RepeatedLines {
    min_copies: usize,
    /// Indentation width and trimmed text of every complete line so far.
    lines: Vec<(usize, String)>,
}

impl RepeatedLines {
    pub fn new(min_copies: usize) -> Self {
        RepeatedLines {
            min_copies: min_copies.max(2),
            lines: Vec::new(),
        }
    }

    /// A line completed (`indent`: its indentation width, counting the cursor column for the first line).
    /// When it completes a run, returns the index of the line the suggestion ends before.
    pub fn line_end(&mut self, indent: usize, line: &str) -> Option<usize> {
        let text = line.trim();
        let indent = if text.is_empty() { 0 } else { indent };
        self.lines.push((indent, text.to_string()));
        let n = self.lines.len();
        for period in 1..=MAX_BLOCK {
            if period.saturating_mul(self.min_copies) > n {
                break;
            }
            let last = &self.lines[n - period..];
            if last.iter().all(|(_, l)| l.is_empty()) {
                continue;
            }
            let copies = (1..self.min_copies)
                .take_while(|k| &self.lines[n - (k + 1) * period..n - k * period] == last)
                .count()
                + 1;
            if copies >= self.min_copies {
                return Some(n - (copies - 1) * period);
            }
        }
        None
    }
}

/// Runaway chunks inside one line (a new line starts with a new one).
pub(crate) struct RepeatedChunk {
    min_chars: usize,
    chars: Vec<char>,
    /// `runs[p - 1]`: how many characters in a row equal the one `p` before them.
    runs: [usize; MAX_CHUNK],
}

impl RepeatedChunk {
    pub fn new(min_chars: usize) -> Self {
        RepeatedChunk {
            min_chars: min_chars.max(2),
            chars: Vec::new(),
            runs: [0; MAX_CHUNK],
        }
    }

    /// The next character of the line: whether the line is now runaway.
    pub fn push(&mut self, c: char) -> bool {
        self.chars.push(c);
        let n = self.chars.len();
        let mut runaway = false;
        for p in 1..=MAX_CHUNK.min(n - 1) {
            let run = &mut self.runs[p - 1];
            *run = if self.chars[n - 1 - p] == c {
                *run + 1
            } else {
                0
            };
            // The repeated stretch is `run + p` characters long; at least 4 copies of the chunk.
            if *run + p >= self.min_chars && *run >= 3 * p {
                let chunk = &self.chars[n - p..];
                if chunk.iter().any(|c| c.is_alphanumeric()) && !chunk.contains(&',') {
                    runaway = true;
                }
            }
        }
        runaway
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_lines() {
        let mut r = RepeatedLines::new(3);
        let cut: Vec<_> = ["a", "x", "x", "x"]
            .iter()
            .map(|l| r.line_end(0, l))
            .collect();
        assert_eq!(cut, vec![None, None, None, Some(2)]);
        let mut r = RepeatedLines::new(3);
        let lines = ["a", "b", "a", "b", "a", "b"];
        let cut: Vec<_> = lines.iter().map(|l| r.line_end(4, l)).collect();
        assert_eq!(cut.last(), Some(&Some(2)));
        let mut r = RepeatedLines::new(3);
        assert!(["", "", "", ""].iter().all(|l| r.line_end(0, l).is_none()));
        let mut r = RepeatedLines::new(3);
        assert!([(0, "}"), (4, "}"), (0, "}")]
            .iter()
            .all(|(i, l)| r.line_end(*i, l).is_none()));
    }

    #[test]
    fn chunks() {
        let line = "return self.self.self.self.self.self.self.self.self.self.self";
        let mut r = RepeatedChunk::new(48);
        assert!(line.chars().any(|c| r.push(c)));
        for ok in [
            "x = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]",
            "# ==================================================",
        ] {
            let mut r = RepeatedChunk::new(48);
            assert!(!ok.chars().any(|c| r.push(c)), "{ok}");
        }
    }
}
