//! Rule `rest_of_line`: drop text at the end of the suggestion that re-types the rest of the cursor's line.
//!
//! With `let x: ║ = 5;` the model often writes `u32 = 5;`, which would leave `= 5; = 5;`. The overlap is the
//! whole rest of the line, or a leading part of it that ends before a space or a closing bracket (`mut x`
//! before `x = 1`, `for v in xs` before `for v in xs]`); a leading part must start at a word boundary of the
//! suggestion, the whole rest may start inside a word (`== se║t(s1)` re-typed as `== set(s1)`). Overlaps made
//! only of closing brackets and quotes are left to the `brackets` rule, which knows whether they close
//! something the suggestion opened.

use super::analysis::Analysis;
use super::text::is_word_char;

pub(crate) fn apply(an: &Analysis, suggestion: &str) -> String {
    let rest = an.rest_of_line.trim_start();
    if rest.trim().is_empty() {
        return suggestion.to_string();
    }
    let body = suggestion.trim_end();
    // The cursor splits a word (`string.lo║wer()`).
    let mid_word = an.before.chars().next_back().is_some_and(is_word_char)
        && an.rest_of_line.chars().next().is_some_and(is_word_char);
    // Candidate overlaps: the whole (trimmed) rest, then its leading parts that end before whitespace or a
    // closer, longest first.
    let whole = rest.trim_end();
    let parts = whole
        .char_indices()
        .filter(|&(_, c)| c.is_whitespace() || matches!(c, ')' | ']' | '}'))
        .map(|(i, _)| &whole[..i])
        .rev();
    for overlap in std::iter::once(whole).chain(parts) {
        let overlap = overlap.trim_end();
        if overlap.is_empty() || only_closers(overlap) {
            continue;
        }
        let Some(kept) = body.strip_suffix(overlap) else {
            continue;
        };
        // Only a leading part of the rest can be the end of a word the model meant (`max` before `x = 1`);
        // leaving the whole rest would put all of it twice, wherever it starts.
        let whole_rest = overlap == whole;
        // Re-typed from inside a word, the rest's closers close what the suggestion opened, as they do
        // in the document.
        let word_split = mid_word && whole_rest;
        let boundary = match (kept.chars().next_back(), overlap.chars().next()) {
            (Some(a), Some(b)) => !(is_word_char(a) && is_word_char(b)) || whole_rest,
            _ => true,
        };
        let own_closers = overlap.contains([')', ']', '}']) && opens_more_than_closes(kept);
        if !boundary || (own_closers && !word_split) {
            continue;
        }
        // The rest of the line brings its own leading space.
        if an.rest_of_line.starts_with(char::is_whitespace) {
            return kept.trim_end().to_string();
        }
        return kept.to_string();
    }
    suggestion.to_string()
}

fn only_closers(s: &str) -> bool {
    s.chars()
        .all(|c| matches!(c, ')' | ']' | '}' | '"' | '\'' | '`') || c.is_whitespace())
}

/// Whether `s` leaves brackets open (then the overlap's closers are the suggestion's own).
fn opens_more_than_closes(s: &str) -> bool {
    let mut depth: isize = 0;
    for c in s.chars() {
        match c {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth -= 1,
            _ => {}
        }
    }
    depth > 0
}
