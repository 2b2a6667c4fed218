//! The context budget: how much of the text before and after the cursor fits in the model's window.
//!
//! The budget is in tokens. The prefix is cut from the top and the suffix from the bottom, at whole lines
//! where possible. The prefix's first kept line is always a multiple of `HEAD_STEP_LINES` counted from
//! the top of the document (the text given may start lower: `first_line` says where), so while the user
//! types the head of the prompt stays put and only moves in steps of that many lines; that is what lets
//! the engine reuse its cached state keystroke after keystroke. This is the only sticky cut: the
//! documents only bound the text copied per request.

use serde::Serialize;

/// The prefix's head moves in steps of this many lines.
pub const HEAD_STEP_LINES: usize = 32;

/// In PSM prompts the text before the cursor from the start of a line whose index is a multiple of this
/// goes after the middle marker, as if the model had written it (llama.cpp's `/infill` does the same with
/// the cursor's line): typing then changes only the prompt's end, and the suffix stays in the model's cache
/// until the cursor crosses such a line.
pub const MIDDLE_STEP_LINES: usize = 16;

/// Lines dropped to fit the budget.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Truncation {
    pub prefix_lines: usize,
    pub suffix_lines: usize,
}

/// Characters per token above which we stop measuring (no tokenizer packs more than this into a token
/// of source code), so a huge file costs no more than its last few thousand tokens.
const MAX_CHARS_PER_TOKEN: usize = 24;

/// The kept tail of `prefix`, whose first line is line `first_line` of the document: `(byte offset where
/// it starts, lines dropped)`. `count` gives a text's tokens.
pub fn fit_prefix(
    prefix: &str,
    first_line: usize,
    budget: usize,
    count: &dyn Fn(&str) -> usize,
) -> (usize, usize) {
    let window_start = floor_char_boundary(
        prefix,
        prefix.len().saturating_sub(budget * MAX_CHARS_PER_TOKEN),
    );
    if window_start == 0 && first_line.is_multiple_of(HEAD_STEP_LINES) && count(prefix) <= budget {
        return (0, 0);
    }
    let starts = line_starts(prefix);
    let n_lines = starts.len();
    // Smallest line index whose tail fits, counting line by line from the cursor upwards.
    let mut used = 0;
    let mut first_fit = n_lines; // nothing fits yet
    for i in (0..n_lines).rev() {
        if starts[i] < window_start {
            break;
        }
        let end = starts.get(i + 1).copied().unwrap_or(prefix.len());
        used += count(&prefix[starts[i]..end]);
        if used > budget {
            break;
        }
        first_fit = i;
    }
    // Snap the head to a multiple of the step so it does not move on every keystroke.
    let mut line =
        (first_line + first_fit).div_ceil(HEAD_STEP_LINES) * HEAD_STEP_LINES - first_line;
    if line >= n_lines && first_fit < n_lines {
        // The window holds fewer lines than a step: keep all that fit rather than only the cursor line.
        line = first_fit;
    }
    loop {
        if line >= n_lines {
            // Not even the cursor line fits: keep the end of it that does.
            let start = starts[n_lines - 1];
            return (tail_within(prefix, start, budget, count), n_lines - 1);
        }
        if count(&prefix[starts[line]..]) <= budget {
            return (starts[line], line);
        }
        line += HEAD_STEP_LINES.min(n_lines - line).max(1);
    }
}

/// Where the middle starts in `prefix`, whose first line is line `first_line` of the document (see
/// [`MIDDLE_STEP_LINES`]): the start of the last line whose document index is a positive multiple of the
/// step, when that is after `kept` (where the kept prefix starts); otherwise `prefix.len()`, no middle.
pub fn middle_start(prefix: &str, first_line: usize, kept: usize) -> usize {
    let last = first_line + prefix.matches('\n').count();
    let line = last / MIDDLE_STEP_LINES * MIDDLE_STEP_LINES;
    let start = line
        .checked_sub(first_line + 1)
        .and_then(|n| prefix.match_indices('\n').nth(n))
        .map(|(i, _)| i + 1);
    match start {
        Some(at) if at > kept => at,
        _ => prefix.len(),
    }
}

/// The kept head of `suffix`: `(byte length kept, lines dropped)`.
pub fn fit_suffix(suffix: &str, budget: usize, count: &dyn Fn(&str) -> usize) -> (usize, usize) {
    let window_end = floor_char_boundary(suffix, budget * MAX_CHARS_PER_TOKEN);
    if window_end >= suffix.len() && count(suffix) <= budget {
        return (suffix.len(), 0);
    }
    let starts = line_starts(suffix);
    let mut used = 0;
    let mut keep_lines = 0;
    for (i, &s) in starts.iter().enumerate() {
        let end = starts.get(i + 1).copied().unwrap_or(suffix.len());
        if end > window_end {
            break;
        }
        used += count(&suffix[s..end]);
        if used > budget {
            break;
        }
        keep_lines = i + 1;
    }
    while keep_lines > 0 {
        let end = starts.get(keep_lines).copied().unwrap_or(suffix.len());
        if count(&suffix[..end]) <= budget {
            return (end, starts.len() - keep_lines);
        }
        keep_lines -= 1;
    }
    // Not even the first line fits: keep the start of it that does.
    let first_end = starts.get(1).copied().unwrap_or(suffix.len());
    (
        head_within(&suffix[..first_end], budget, count),
        starts.len().saturating_sub(1),
    )
}

/// Splits `budget` tokens between prefix and suffix at `ratio`:1, handing what one side does not need
/// to the other. Returns `(prefix_budget, suffix_budget)`.
pub fn split(budget: usize, ratio: f32, prefix_need: usize, suffix_need: usize) -> (usize, usize) {
    let ratio = if ratio.is_finite() && ratio > 0.0 {
        ratio
    } else {
        3.0
    };
    let prefix_share = ((budget as f32) * ratio / (ratio + 1.0)).round() as usize;
    let suffix_share = budget - prefix_share.min(budget);
    if prefix_need + suffix_need <= budget {
        return (prefix_need, suffix_need);
    }
    if suffix_need < suffix_share {
        (budget - suffix_need, suffix_need)
    } else if prefix_need < prefix_share {
        (prefix_need, budget - prefix_need)
    } else {
        (prefix_share, suffix_share)
    }
}

fn line_starts(text: &str) -> Vec<usize> {
    std::iter::once(0)
        .chain(
            text.match_indices('\n')
                .map(|(i, _)| i + 1)
                .filter(|&i| i < text.len()),
        )
        .collect()
}

/// The start of the longest tail of `text[from..]` that fits `budget` tokens.
fn tail_within(text: &str, from: usize, budget: usize, count: &dyn Fn(&str) -> usize) -> usize {
    let (mut lo, mut hi) = (from, text.len());
    while lo < hi {
        let mid = ceil_char_boundary(text, lo + (hi - lo) / 2);
        if mid >= hi {
            break;
        }
        if count(&text[mid..]) <= budget {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    ceil_char_boundary(text, hi)
}

/// The length of the longest head of `text` that fits `budget` tokens.
fn head_within(text: &str, budget: usize, count: &dyn Fn(&str) -> usize) -> usize {
    let (mut lo, mut hi) = (0, text.len());
    while lo < hi {
        let mid = ceil_char_boundary(text, lo + (hi - lo).div_ceil(2));
        if count(&text[..mid]) <= budget {
            lo = mid;
        } else {
            hi = floor_char_boundary(text, mid - 1);
        }
    }
    lo
}

fn floor_char_boundary(s: &str, i: usize) -> usize {
    let mut i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn ceil_char_boundary(s: &str, i: usize) -> usize {
    let mut i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One token per character: easy to reason about.
    fn chars(s: &str) -> usize {
        s.chars().count()
    }

    fn numbered(n: usize) -> String {
        (0..n).map(|i| format!("line {i:03}\n")).collect()
    }

    #[test]
    fn the_middle_starts_at_a_line_that_moves_in_steps() {
        let text = numbered(40);
        let line = |i: usize| text.find(&format!("line {i:03}")).unwrap();
        // Typing on lines 16..32 keeps the middle at line 16; from line 32 on it starts there.
        for cursor in [line(16), line(20) + 3, line(31) + 8] {
            assert_eq!(middle_start(&text[..cursor], 0, 0), line(16), "{cursor}");
        }
        assert_eq!(middle_start(&text[..line(33) + 2], 0, 0), line(32));
        // Above the first step, or where the kept prefix starts after the step's line: no middle.
        let top = &text[..line(15) + 4];
        assert_eq!(middle_start(top, 0, 0), top.len());
        let cut = &text[..line(20)];
        assert_eq!(middle_start(cut, 0, line(16)), cut.len());
        assert_eq!(middle_start("", 0, 0), 0);
        // Lines count from the document's top: text given from line 10 on has its step at line 16.
        let given = &text[line(10)..line(20) + 3];
        assert_eq!(middle_start(given, 10, 0), line(16) - line(10));
        assert_eq!(
            middle_start(&text[line(17)..line(20)], 17, 0),
            line(20) - line(17)
        );
    }

    #[test]
    fn everything_fits() {
        assert_eq!(fit_prefix("abc\ndef", 0, 100, &chars), (0, 0));
        assert_eq!(fit_suffix("abc\ndef", 100, &chars), (7, 0));
    }

    #[test]
    fn prefix_is_cut_at_a_step_multiple_line() {
        let text = numbered(100); // 9 chars per line
        let (start, dropped) = fit_prefix(&text, 0, 9 * 50, &chars);
        assert_eq!(dropped % HEAD_STEP_LINES, 0);
        assert_eq!(dropped, 64);
        assert_eq!(&text[start..start + 8], "line 064");
    }

    #[test]
    fn head_stays_put_while_typing() {
        let mut text = numbered(100);
        let first = fit_prefix(&text, 0, 9 * 50, &chars);
        for c in "def foo(x): return x".chars() {
            text.push(c);
            assert_eq!(fit_prefix(&text, 0, 9 * 50, &chars), first);
        }
    }

    /// The documents hand over the text from a line that moves as the user types; the head stays on the
    /// same line of the document, a multiple of the step counted from its top.
    #[test]
    fn head_steps_count_from_the_top_of_the_document() {
        let doc = numbered(200);
        let line = |i: usize| doc.find(&format!("line {i:03}")).unwrap();
        for first_line in [70, 75, 90, 96] {
            let given = &doc[line(first_line)..line(180)];
            let (start, dropped) = fit_prefix(given, first_line, 9 * 50, &chars);
            assert_eq!(
                &given[start..start + 8],
                "line 160",
                "from line {first_line}"
            );
            assert_eq!(dropped, 160 - first_line);
        }
        // Everything fits, but the text does not start on a step: the head is the first step in it.
        let given = &doc[line(150)..line(180)];
        assert_eq!(fit_prefix(given, 150, 9 * 50, &chars).1, 10);
        assert_eq!(fit_prefix(given, 160, 9 * 50, &chars), (0, 0));
    }

    #[test]
    fn small_budgets_keep_every_line_that_fits() {
        let text = numbered(10);
        let (start, dropped) = fit_prefix(&text, 0, 9 * 4, &chars);
        assert_eq!((dropped, &text[start..start + 8]), (6, "line 006"));
    }

    #[test]
    fn long_cursor_line_keeps_its_end() {
        let text = format!("a\n{}", "x".repeat(50));
        let (start, dropped) = fit_prefix(&text, 0, 10, &chars);
        assert_eq!(&text[start..], "x".repeat(10));
        assert_eq!(dropped, 1);
    }

    #[test]
    fn suffix_keeps_whole_leading_lines() {
        let text = numbered(10);
        let (len, dropped) = fit_suffix(&text, 30, &chars);
        assert_eq!(&text[..len], "line 000\nline 001\nline 002\n");
        assert_eq!(dropped, 7);
    }

    #[test]
    fn suffix_with_a_long_first_line_keeps_its_start() {
        let text = format!("{}\nnext", "é".repeat(40));
        let (len, _) = fit_suffix(&text, 5, &chars);
        assert_eq!(&text[..len], "ééééé");
    }

    #[test]
    fn budget_split_hands_over_unused_share() {
        assert_eq!(split(100, 3.0, 30, 20), (30, 20));
        assert_eq!(split(100, 3.0, 200, 10), (90, 10));
        assert_eq!(split(100, 3.0, 10, 200), (10, 90));
        assert_eq!(split(100, 3.0, 200, 200), (75, 25));
    }

    #[test]
    fn cuts_respect_utf8() {
        let text = "🙂".repeat(30);
        let (start, _) = fit_prefix(&text, 0, 7, &chars);
        assert!(text.is_char_boundary(start));
        assert_eq!(chars(&text[start..]), 7);
    }
}
