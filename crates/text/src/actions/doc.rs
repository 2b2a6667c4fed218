//! Document this function: the model's answer cleaned to plain documentation text, rendered in the
//! language's doc-comment style (Rust `///`, Go `// Name ...`, JSDoc and C `/** */`, Lua `---`, Python
//! docstring) and placed where that style goes (above the item and its attributes, or as the first
//! statement of a Python body).

use crate::language::{DocComment, Language};

use super::answer::{fenced_blocks, FencedBlock};
use super::comment::{wrap_words, WRAP_COLUMNS};
use super::function::Function;

/// Text columns a doc line always gets, however deep its indentation.
const MIN_TEXT_COLUMNS: usize = 40;

/// The documentation text in a model's answer: when the answer shows the function with a doc comment in
/// a code block, that comment's text; otherwise the prose outside code blocks. Comment markers
/// (`///`, `//`, `#`, `--`, `/**`, `*`, `*/`, `"""`) and lines repeating the function's signature are
/// removed. Paragraphs stay separated by one blank line.
pub fn doc_text(answer: &str, function_name: &str) -> String {
    let blocks = fenced_blocks(answer);
    let from_block = blocks.iter().find_map(doc_lines_in_block);
    let raw = match from_block {
        Some(text) => text,
        None => prose_outside_fences(answer),
    };
    let stripped: Vec<String> = raw
        .lines()
        .map(strip_markers)
        .filter(|l| !repeats_signature(l, function_name))
        .collect();
    // As Python's `inspect.cleandoc`: the first line loses its indentation, the others their common one.
    let common = stripped
        .iter()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    let mut lines: Vec<String> = Vec::new();
    for (i, line) in stripped.iter().enumerate() {
        let line = if i == 0 {
            line.trim()
        } else {
            line.get(common..).unwrap_or("").trim_end()
        };
        if line.is_empty() && lines.last().is_none_or(|l| l.is_empty()) {
            continue;
        }
        lines.push(line.to_string());
    }
    while lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    lines.join("\n")
}

/// The doc comment inside a code block that shows the documented function: a Python docstring, or
/// the first run of doc-comment lines.
fn doc_lines_in_block(block: &FencedBlock) -> Option<String> {
    let lines: Vec<&str> = block.body.lines().collect();
    let docstring = lines.iter().enumerate().find_map(|(i, l)| {
        let t = l.trim_start();
        ["\"\"\"", "'''"]
            .into_iter()
            .find(|q| t.starts_with(q))
            .map(|q| (i, q))
    });
    if let Some((start, quote)) = docstring {
        let mut out = vec![lines[start]];
        if !lines[start].trim()[3..].contains(quote) {
            for l in &lines[start + 1..] {
                out.push(l);
                if l.contains(quote) {
                    break;
                }
            }
        }
        return Some(out.join("\n"));
    }
    let start = lines.iter().position(|l| is_doc_marker_line(l))?;
    let run: Vec<&str> = lines[start..]
        .iter()
        .take_while(|l| is_doc_marker_line(l) || l.trim_start().starts_with('*'))
        .copied()
        .collect();
    Some(run.join("\n"))
}

fn is_doc_marker_line(l: &str) -> bool {
    let t = l.trim_start();
    ["///", "/**", "//", "---", "# "]
        .iter()
        .any(|m| t.starts_with(m))
}

fn prose_outside_fences(answer: &str) -> String {
    let mut out = Vec::new();
    let mut fence: Option<char> = None;
    for line in answer.lines() {
        let t = line.trim_start();
        let starts_fence = t.starts_with("```") || t.starts_with("~~~");
        match fence {
            Some(ch) if starts_fence && t.starts_with(ch) => fence = None,
            Some(_) => {}
            None if starts_fence => fence = t.chars().next(),
            None => out.push(line),
        }
    }
    out.join("\n")
}

/// A line without its comment or docstring markers (and the one space after a marker); the indentation
/// after the marker, or of an unmarked line, is kept.
fn strip_markers(line: &str) -> String {
    let mut t = line.trim_end();
    for closing in ["*/", "\"\"\"", "'''", "]]"] {
        t = t.strip_suffix(closing).unwrap_or(t).trim_end();
    }
    let body = t.trim_start();
    for opening in [
        "/**", "/*", "///", "//!", "//", "---", "--[[", "--", "\"\"\"", "'''", "#", "*",
    ] {
        if let Some(rest) = body.strip_prefix(opening) {
            return rest.strip_prefix(' ').unwrap_or(rest).to_string();
        }
    }
    t.to_string()
}

fn repeats_signature(line: &str, name: &str) -> bool {
    let t = line.trim_start();
    let header = [
        "def ",
        "fn ",
        "func ",
        "function ",
        "pub fn ",
        "async def ",
        "async function ",
    ]
    .iter()
    .any(|k| t.starts_with(k));
    header && t.contains(&format!("{name}("))
}

/// The line a doc comment for `function` is inserted before: the first line of the item (attributes
/// and decorators included), or for a Python docstring the line after the signature.
pub fn doc_line(function: &Function, lang: Language) -> usize {
    match lang.doc_comment() {
        Some(DocComment::Docstring { .. }) => function.signature_end_line + 1,
        _ => function.first_line,
    }
}

/// The doc comment for `function` with documentation `doc` (paragraphs separated by blank lines),
/// in `lang`'s style. `body_indent` is the indentation of the function's body (Python docstrings).
/// The text ends with a line break and goes before [`doc_line`]. `None` when the language has no
/// doc-comment style or `doc` is empty.
pub fn render_doc(
    doc: &str,
    lang: Language,
    function: &Function,
    body_indent: &str,
) -> Option<String> {
    if doc.trim().is_empty() {
        return None;
    }
    let style = lang.doc_comment()?;
    let indent = function.indent.as_str();
    let mut out = String::new();
    match style {
        DocComment::LinePrefix(prefix) => {
            let doc = if lang == Language::Go {
                go_doc_sentence(doc, &function.name)
            } else {
                doc.to_string()
            };
            for l in wrap_lines(&doc, text_width(indent, prefix.len() + 1)) {
                push_line(&mut out, indent, prefix, &l);
            }
        }
        DocComment::Block {
            open,
            line_prefix,
            close,
        } => {
            out.push_str(&format!("{indent}{open}\n"));
            let marker = line_prefix.trim_end();
            for l in wrap_lines(doc, text_width(indent, line_prefix.len())) {
                push_line(&mut out, indent, marker, &l.replace("*/", "* /"));
            }
            out.push_str(&format!("{indent}{close}\n"));
        }
        DocComment::Docstring { quote } => {
            let width = text_width(body_indent, quote.len());
            let lines: Vec<String> = wrap_lines(doc, width)
                .into_iter()
                .map(|l| l.replace(quote, "\\\"\\\"\\\""))
                .collect();
            let one_line = lines.len() == 1
                && super::indent::columns(body_indent) + lines[0].len() + 2 * quote.len()
                    <= WRAP_COLUMNS;
            if one_line {
                out.push_str(&format!("{body_indent}{quote}{}{quote}\n", lines[0]));
            } else {
                // PEP 257: the text starts after the opening quotes; the closing quotes stand alone.
                for (i, l) in lines.iter().enumerate() {
                    let l = if i == 0 {
                        format!("{quote}{l}")
                    } else {
                        l.clone()
                    };
                    push_line(&mut out, body_indent, "", &l);
                }
                out.push_str(&format!("{body_indent}{quote}\n"));
            }
        }
    }
    Some(out)
}

/// Each line of `doc` wrapped to `width` on its own (the model's line structure and indentation are
/// kept; a wrapped line's continuation gets the same indentation).
fn wrap_lines(doc: &str, width: usize) -> Vec<String> {
    doc.lines()
        .flat_map(|l| {
            if l.trim().is_empty() {
                vec![String::new()]
            } else {
                let indent = super::source::indentation(l);
                wrap_words(l.trim_start(), indent, width)
            }
        })
        .collect()
}

fn text_width(indent: &str, marker: usize) -> usize {
    WRAP_COLUMNS
        .saturating_sub(super::indent::columns(indent) + marker)
        .max(MIN_TEXT_COLUMNS)
}

fn push_line(out: &mut String, indent: &str, marker: &str, text: &str) {
    let line = if marker.is_empty() {
        format!("{indent}{text}")
    } else {
        format!("{indent}{marker} {text}")
    };
    out.push_str(line.trim_end());
    out.push('\n');
}

/// Go's convention: the doc comment is a sentence that starts with the function's name
/// ("Sum returns ..."). A doc that does not is made into one ("Returns the sum" -> "Sum returns the sum").
fn go_doc_sentence(doc: &str, name: &str) -> String {
    let first_word = doc.split_whitespace().next().unwrap_or("");
    if first_word.trim_end_matches(|c: char| !c.is_alphanumeric() && c != '_') == name {
        return doc.to_string();
    }
    let mut chars = doc.chars();
    let lowered = match (chars.next(), chars.clone().next()) {
        (Some(c), Some(next)) if c.is_uppercase() && !next.is_uppercase() => {
            c.to_lowercase().collect::<String>() + chars.as_str()
        }
        _ => doc.to_string(),
    };
    format!("{name} {lowered}")
}

/// Whether `function` already has a doc comment (so "Document this function" is not offered).
pub fn has_doc(lines: &super::source::Lines, function: &Function, lang: Language) -> bool {
    match lang.doc_comment() {
        Some(DocComment::Docstring { .. }) => (function.signature_end_line + 1..lines.count())
            .map(|l| lines.text(l).trim())
            .find(|t| !t.is_empty())
            .is_some_and(|t| {
                let t = t.trim_start_matches(['r', 'u', 'b', 'R', 'U', 'B']);
                t.starts_with("\"\"\"")
                    || t.starts_with("'''")
                    || t.starts_with('"')
                    || t.starts_with('\'')
            }),
        Some(DocComment::LinePrefix(prefix)) => {
            function.first_line > 0
                && lines
                    .text(function.first_line - 1)
                    .trim_start()
                    .starts_with(prefix)
        }
        Some(DocComment::Block { close, .. }) => {
            function.first_line > 0
                && lines
                    .text(function.first_line - 1)
                    .trim_end()
                    .ends_with(close.trim())
        }
        None => true,
    }
}
