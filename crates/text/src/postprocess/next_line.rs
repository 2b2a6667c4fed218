//! Rule `next_line`: a generated line that repeats the next non-blank line of the suffix ends the suggestion
//! before it.
//!
//! The most common complaint about every peer: the model completes the gap and then carries on with the code
//! that is already below the cursor. Lines are compared by indentation width and trimmed text, so a `}` that
//! closes an inner block does not match the `}` of the enclosing one.

use super::analysis::Analysis;

/// Whether complete generated line `index` (`indent`: its width, counting the cursor column for line 0)
/// repeats the next non-blank line of the suffix.
pub(crate) fn repeats(an: &Analysis, index: usize, indent: usize, line: &str) -> bool {
    let Some(next) = &an.next_line else {
        return false;
    };
    // Line 0 is a line of its own only on a blank cursor line; else it continues or joins the cursor's line.
    if index == 0 && (an.mid_line || !an.before_blank()) {
        return false;
    }
    indent == next.indent && line.trim() == next.text
}
