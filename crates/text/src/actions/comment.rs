//! Comments both ways: reading them (is this line a comment, and what does it ask for) and writing them
//! (an explanation rendered as a comment block in the language's syntax, wrapped to ~80 columns).

use crate::language::Language;

use super::source::{indentation, Lines, Source};

/// Total width, indentation and marker included, that written comments wrap to.
pub const WRAP_COLUMNS: usize = 80;
/// Text columns a comment line always gets, however deep its indentation.
const MIN_TEXT_COLUMNS: usize = 40;
/// How far a block comment's opener or closer is looked for.
const BLOCK_SCAN_LINES: usize = 50;

/// How a language writes comments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommentSyntax {
    pub line: Option<&'static str>,
    pub block: Option<(&'static str, &'static str)>,
}

impl CommentSyntax {
    /// The language's syntax; `None` for languages without comments we know of.
    pub fn of(lang: Language) -> Option<CommentSyntax> {
        let s = CommentSyntax {
            line: lang.line_comment(),
            block: lang.block_comment(),
        };
        (s.line.is_some() || s.block.is_some()).then_some(s)
    }

    /// Markers recognised when reading: the language's own, or for an unknown language the common ones.
    fn for_reading(lang: Language) -> (Vec<&'static str>, Vec<(&'static str, &'static str)>) {
        match Self::of(lang) {
            Some(s) => (s.line.into_iter().collect(), s.block.into_iter().collect()),
            None => (vec!["//", "#", "--"], vec![("/*", "*/")]),
        }
    }
}

/// A comment that asks for code: its text without markers, the lines it spans, its indentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommentInstruction {
    /// The comment's text, one line per comment line, markers and decoration removed.
    pub text: String,
    /// First and last line (0-based, inclusive).
    pub first_line: usize,
    pub last_line: usize,
    /// The whitespace before the comment marker.
    pub indent: String,
}

/// The text of a whole-line comment (`// x`, `# x`, `-- x`, `/* x */`), markers and the decoration of doc
/// comments (`///`, `//!`, `##`, `---`) removed, or `None` when the line is not a comment. Only the
/// language's own markers count (`#[derive]` is not a Rust comment, `--i;` not a C one); a shebang line
/// is not a comment.
pub fn line_comment_text(line: &str, lang: Language) -> Option<&str> {
    let t = line.trim();
    let (markers, blocks) = CommentSyntax::for_reading(lang);
    for (open, close) in &blocks {
        if let Some(rest) = t.strip_prefix(open) {
            let inner = rest.strip_suffix(close)?;
            return Some(inner.trim_start_matches('*').trim());
        }
    }
    if t.starts_with("#!") {
        return None;
    }
    let marker = markers.iter().find(|m| t.starts_with(**m))?;
    let rest = t[marker.len()..].trim_start_matches(|c: char| marker.contains(c) || c == '!');
    Some(rest.trim())
}

/// The comment at `line` and the consecutive comment lines around it (same marker style and
/// indentation), or the block comment that spans `line`; `None` when `line` is not in a comment or the
/// comment has no text.
pub fn comment_at(source: &Source, line: usize) -> Option<CommentInstruction> {
    let lines = source.lines();
    if line >= lines.count() {
        return None;
    }
    let lang = source.language;
    let here = lines.text(line);
    let (_, blocks) = CommentSyntax::for_reading(lang);
    let opens_block = blocks.iter().any(|(o, _)| here.trim_start().starts_with(o));
    if !opens_block || line_comment_text(here, lang).is_some() {
        if let Some(found) = line_comment_group(&lines, line, lang) {
            return Some(found);
        }
    }
    blocks
        .iter()
        .find_map(|&(open, close)| block_comment_around(&lines, line, open, close))
}

fn line_comment_group(lines: &Lines, line: usize, lang: Language) -> Option<CommentInstruction> {
    let here = lines.text(line);
    line_comment_text(here, lang)?;
    let indent = indentation(here);
    let same = |l: usize| {
        let t = lines.text(l);
        indentation(t) == indent
            && line_comment_text(t, lang).is_some()
            && !(l == 0 && t.starts_with("#!"))
    };
    let mut first = line;
    while first > 0 && same(first - 1) {
        first -= 1;
    }
    let mut last = line;
    while last + 1 < lines.count() && same(last + 1) {
        last += 1;
    }
    let text = (first..=last)
        .filter_map(|l| line_comment_text(lines.text(l), lang))
        .collect::<Vec<_>>()
        .join("\n");
    let text = text.trim().to_string();
    (!text.is_empty()).then(|| CommentInstruction {
        text,
        first_line: first,
        last_line: last,
        indent: indent.to_string(),
    })
}

fn block_comment_around(
    lines: &Lines,
    line: usize,
    open: &str,
    close: &str,
) -> Option<CommentInstruction> {
    // The opener: the nearest line at or above `line` that starts with `open`, with no closer in between.
    let lowest = line.saturating_sub(BLOCK_SCAN_LINES);
    let mut first = None;
    for l in (lowest..=line).rev() {
        let t = lines.text(l).trim_start();
        if l < line && t.contains(close) {
            return None;
        }
        if t.starts_with(open) {
            first = Some(l);
            break;
        }
    }
    let first = first?;
    let highest = (first + BLOCK_SCAN_LINES).min(lines.count() - 1);
    let last = (first..=highest).find(|&l| {
        let t = lines.text(l);
        let from = if l == first {
            t.find(open).map_or(0, |i| i + open.len())
        } else {
            0
        };
        t[from..].contains(close)
    })?;
    if last < line {
        return None;
    }
    let mut parts = Vec::new();
    for l in first..=last {
        let mut t = lines.text(l).trim();
        if l == first {
            t = t[open.len()..].trim_start_matches('*');
        }
        if l == last {
            if let Some(i) = t.rfind(close) {
                t = &t[..i];
            }
        }
        let t = t.trim();
        let t = t.strip_prefix('*').unwrap_or(t).trim();
        if !t.is_empty() {
            parts.push(t);
        }
    }
    let text = parts.join("\n");
    (!text.is_empty()).then(|| CommentInstruction {
        text,
        first_line: first,
        last_line: last,
        indent: indentation(lines.text(first)).to_string(),
    })
}

/// `markdown` as a comment block in `syntax`, each line starting with `indent`, wrapped so lines stay
/// within [`WRAP_COLUMNS`]; ends with a line break. Line comments when the language has them, else a
/// block comment (`/*` ... ` * ` ... ` */` for C-style blocks).
pub fn render_comment_block(markdown: &str, syntax: CommentSyntax, indent: &str) -> String {
    let indent_cols = super::indent::columns(indent);
    let mut out = String::new();
    match (syntax.line, syntax.block) {
        (Some(marker), _) => {
            let width = text_width(indent_cols + marker.len() + 1);
            for line in wrap_markdown(markdown, width) {
                push_prefixed(&mut out, indent, marker, &line);
            }
        }
        (None, Some((open, close))) => {
            let c_style = open == "/*";
            let prefix = if c_style { " *" } else { " " };
            let width = text_width(indent_cols + prefix.len() + 1);
            out.push_str(&format!("{indent}{open}\n"));
            for line in wrap_markdown(markdown, width) {
                // The text must not end the comment early.
                let safe = line.replace(close, &spaced(close));
                push_prefixed(&mut out, indent, prefix, &safe);
            }
            out.push_str(&format!(
                "{indent}{}{close}\n",
                if c_style { " " } else { "" }
            ));
        }
        (None, None) => {}
    }
    out
}

fn text_width(used: usize) -> usize {
    WRAP_COLUMNS.saturating_sub(used).max(MIN_TEXT_COLUMNS)
}

fn push_prefixed(out: &mut String, indent: &str, marker: &str, text: &str) {
    let line = format!("{indent}{marker} {text}");
    out.push_str(line.trim_end());
    out.push('\n');
}

fn spaced(marker: &str) -> String {
    let mut chars = marker.chars();
    let first = chars.next().map(String::from).unwrap_or_default();
    format!("{first} {}", chars.as_str())
}

/// Markdown as plain text lines of at most `width` columns (longer words stay whole): paragraphs are
/// re-wrapped, list items keep their bullet and get a hanging indent, code blocks are kept verbatim
/// (indented four spaces, fences dropped), headings lose their `#`s, tables stay as they are. At most
/// one blank line in a row, none at the ends.
pub fn wrap_markdown(markdown: &str, width: usize) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut para: Option<(String, String)> = None; // (first-line prefix, text)
    let mut fence: Option<String> = None;
    let flush = |para: &mut Option<(String, String)>, out: &mut Vec<String>| {
        if let Some((prefix, text)) = para.take() {
            out.extend(wrap_words(&text, &prefix, width));
        }
    };
    for raw in markdown.lines() {
        let line = raw.trim_end();
        let t = line.trim_start();
        if let Some(f) = &fence {
            if t.starts_with(f.as_str()) && t.chars().all(|c| c == '`' || c == '~') {
                fence = None;
            } else if line.is_empty() {
                out.push(String::new());
            } else {
                out.push(format!("    {line}"));
            }
            continue;
        }
        if t.starts_with("```") || t.starts_with("~~~") {
            flush(&mut para, &mut out);
            let ch = t.chars().next().unwrap_or('`');
            fence = Some(
                ch.to_string()
                    .repeat(t.chars().take_while(|c| *c == ch).count()),
            );
            continue;
        }
        if t.is_empty() {
            flush(&mut para, &mut out);
            out.push(String::new());
            continue;
        }
        if t.starts_with('#') {
            flush(&mut para, &mut out);
            out.push(t.trim_start_matches('#').trim().to_string());
            continue;
        }
        if t.starts_with('|') {
            flush(&mut para, &mut out);
            out.push(line.to_string());
            continue;
        }
        if let Some(bullet) = list_bullet(t) {
            flush(&mut para, &mut out);
            let nest = " ".repeat(indentation(line).len().min(8));
            para = Some((
                format!("{nest}{bullet}"),
                t[bullet.len()..].trim().to_string(),
            ));
            continue;
        }
        match &mut para {
            Some((_, text)) => {
                text.push(' ');
                text.push_str(t);
            }
            None => para = Some((String::new(), t.to_string())),
        }
    }
    flush(&mut para, &mut out);
    // Collapse blank runs and trim blank ends.
    let mut result: Vec<String> = Vec::new();
    for line in out {
        if line.is_empty() && result.last().is_none_or(|l: &String| l.is_empty()) {
            continue;
        }
        result.push(line);
    }
    while result.last().is_some_and(|l| l.is_empty()) {
        result.pop();
    }
    result
}

/// `- `, `* `, `+ `, `1. `, `1) ` at the start of a list item.
fn list_bullet(t: &str) -> Option<&str> {
    if t.starts_with("- ") || t.starts_with("* ") || t.starts_with("+ ") {
        return Some(&t[..2]);
    }
    let digits = t.chars().take_while(|c| c.is_ascii_digit()).count();
    let rest = &t[digits..];
    (digits > 0 && digits < 4 && (rest.starts_with(". ") || rest.starts_with(") ")))
        .then(|| &t[..digits + 2])
}

/// Greedy word wrap; the first line starts with `prefix`, the others with as many spaces.
pub fn wrap_words(text: &str, prefix: &str, width: usize) -> Vec<String> {
    let hang = " ".repeat(prefix.chars().count());
    let mut lines = Vec::new();
    let mut current = prefix.to_string();
    let mut empty = true;
    for word in text.split_whitespace() {
        let len = current.chars().count();
        if !empty && len + 1 + word.chars().count() > width {
            lines.push(std::mem::replace(&mut current, hang.clone()));
            empty = true;
        }
        if !empty {
            current.push(' ');
        }
        current.push_str(word);
        empty = false;
    }
    if !empty {
        lines.push(current);
    }
    lines
}
