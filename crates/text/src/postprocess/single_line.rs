//! Rule `single_line`: in single-line mode the suggestion is one line.
//!
//! In the middle of a line that is the rest of the current line. At the end of a line (only when the mode is
//! forced to single line) the model often starts with a line break: then the suggestion is the line break and
//! the first line with content (`\n    return x`).

#[derive(Clone, Debug)]
pub(crate) struct SingleLine {
    /// Whether the first generated line joins the text right of the cursor.
    mid_line: bool,
    /// Whether a line with content has been completed.
    seen_content: bool,
}

impl SingleLine {
    pub fn new(mid_line: bool) -> Self {
        SingleLine {
            mid_line,
            seen_content: false,
        }
    }

    /// A line ended; `blank` tells whether it had no content.
    pub fn line_end(&mut self, blank: bool) {
        self.seen_content |= !blank;
    }

    /// Line `index` starts: whether the suggestion ends before it.
    pub fn line_start(&self, index: usize) -> bool {
        index > 0 && (self.mid_line || self.seen_content)
    }
}
