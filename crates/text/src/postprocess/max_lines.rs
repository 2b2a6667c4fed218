//! Rule `max_lines`: a suggestion has at most `Config::max_lines` lines (counting a first line that only
//! continues the cursor's line), so a model with nothing to stop it cannot fill the screen.

/// Whether the suggestion ends before line `index` (0-based) when at most `max_lines` are allowed.
pub(crate) fn ends_before(index: usize, max_lines: usize) -> bool {
    index >= max_lines.max(1)
}
