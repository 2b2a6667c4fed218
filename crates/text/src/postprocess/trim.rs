//! Rule `trim`: no trailing whitespace on any line and no trailing blank lines.
//!
//! One exception: in the middle of a line the last line's trailing space may be needed before the rest of
//! the line (`a ` before `+ 1`), so it is kept unless the rest of the line starts with whitespace or a closer.

use super::analysis::Analysis;

pub(crate) fn apply(an: &Analysis, suggestion: &str) -> String {
    let mut lines: Vec<&str> = suggestion.split('\n').map(str::trim_end).collect();
    while lines.len() > 1 && lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    let mut out = lines.join("\n");
    if an.mid_line && !lines.last().is_some_and(|l| l.trim().is_empty()) {
        let keeps_space = an
            .rest_of_line
            .chars()
            .next()
            .is_some_and(|c| !c.is_whitespace() && !matches!(c, ')' | ']' | '}' | ',' | ';'));
        if keeps_space {
            let tail_start = suggestion.trim_end().len();
            let tail = &suggestion[tail_start..];
            if tail.contains('\n') {
                return out;
            }
            let spaces = tail.len() - tail.trim_start_matches([' ', '\t']).len();
            out.push_str(&tail[..spaces]);
        }
    }
    out
}
