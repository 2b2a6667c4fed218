//! Rule `line_endings`: the suggestion uses the document's line break (`\r\n` when the line break before
//! the cursor, or else the first one after it, is `\r\n`).

use super::analysis::Analysis;

pub(crate) fn apply(an: &Analysis, suggestion: &str) -> String {
    let lf = suggestion.replace("\r\n", "\n");
    if an.crlf {
        lf.replace('\n', "\r\n")
    } else {
        lf
    }
}
