//! Rule `closing_line`: put an auto-closed brace on its own line.
//!
//! Editors close braces as they are typed, so the cursor often sits in `{║}`. A block suggestion there would
//! leave the brace glued to the end of its last line (`return x;}`); instead the suggestion ends with a line
//! break and the indentation of the line the brace belongs to. The same applies to any suggestion typed on
//! a blank line in front of the brace (`    ║}`).

use super::analysis::Analysis;

pub(crate) fn apply(an: &Analysis, suggestion: &str) -> String {
    let body = suggestion.trim_end();
    if !an.auto_closed || body.trim().is_empty() || !(body.contains('\n') || an.before_blank()) {
        return suggestion.to_string();
    }
    format!("{body}\n{}", an.reference_ws)
}
