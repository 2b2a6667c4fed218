//! Which function encloses a position: simple, line-based rules, no parser. Python by indentation, Lua by
//! the `end` at the header's indentation, brace languages by matching the body's braces (strings and
//! comments skipped). Headers are recognised per language (`fn`, `def`, `func`, `function`, C-like
//! `type name(...)`), and a header whose body is not found is skipped.

use crate::language::Language;

use super::source::{indentation, is_blank, Lines, Source};

/// How far above the position a header is looked for.
const MAX_SCAN_LINES: usize = 5000;
/// Lines a Python signature may span.
const MAX_SIGNATURE_LINES: usize = 30;

/// A function around a position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Function {
    pub name: String,
    /// The line of the header (`def`, `fn`...).
    pub header_line: usize,
    /// The first line that belongs to the item: attributes and decorators above the header included.
    pub first_line: usize,
    /// The last line of the signature (where the body opens).
    pub signature_end_line: usize,
    /// The last line of the function.
    pub last_line: usize,
    /// The header's indentation.
    pub indent: String,
}

/// The innermost function whose lines include the line of byte `offset`.
pub fn enclosing_function(source: &Source, offset: usize) -> Option<Function> {
    let lines = source.lines();
    let line = lines.line_of(offset.min(source.text.len()));
    let lang = source.language;
    let lowest = line.saturating_sub(MAX_SCAN_LINES);
    for candidate in (lowest..=line).rev() {
        let Some((header, name)) = header_at(&lines, candidate, lang) else {
            continue;
        };
        let span = match lang {
            Language::Python => python_span(&lines, header),
            Language::Lua => lua_span(&lines, header),
            _ => brace_span(source, &lines, header),
        };
        let Some((signature_end_line, last_line)) = span else {
            continue;
        };
        if last_line < line {
            continue;
        }
        return Some(Function {
            name,
            header_line: header,
            first_line: attributes_above(&lines, header, lang),
            signature_end_line,
            last_line,
            indent: indentation(lines.text(header)).to_string(),
        });
    }
    None
}

/// The header starting at `line`, or for C-like languages also a header whose return type stands alone
/// on the line above (`static int` / `min(int a, int b)`), as (first header line, name).
fn header_at(lines: &Lines, line: usize, lang: Language) -> Option<(usize, String)> {
    let text = lines.text(line);
    if let Some(name) = header_name(text, lang) {
        return Some((line, name));
    }
    if !matches!(lang, Language::C | Language::Cpp | Language::Java) || line == 0 {
        return None;
    }
    let above = lines.text(line - 1).trim();
    let type_only = !above.is_empty()
        && above
            .chars()
            .all(|c| is_ident_char(c) || " *&:<>,".contains(c))
        && !NOT_FUNCTIONS.contains(&above);
    let name = header_name(&format!("{above} {}", text.trim_start()), lang);
    name.filter(|_| type_only).map(|n| (line - 1, n))
}

fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '$'
}

/// The identifier at the start of `s` (after spaces).
fn ident(s: &str) -> Option<&str> {
    let s = s.trim_start();
    let end = s.find(|c: char| !is_ident_char(c)).unwrap_or(s.len());
    (end > 0 && !s.starts_with(|c: char| c.is_ascii_digit())).then(|| &s[..end])
}

/// The word-bounded position of keyword `kw` in `s`.
fn find_word(s: &str, kw: &str) -> Option<usize> {
    s.match_indices(kw).map(|(i, _)| i).find(|&i| {
        let before = s[..i].chars().next_back();
        let after = s[i + kw.len()..].chars().next();
        !before.is_some_and(is_ident_char) && !after.is_some_and(is_ident_char)
    })
}

const NOT_FUNCTIONS: &[&str] = &[
    "if", "for", "while", "switch", "catch", "return", "else", "do", "case", "sizeof", "new",
    "throw", "function", "typeof", "delete", "await", "yield", "match", "defined",
];

/// The function name if `line` is a function header in `lang`.
pub fn header_name(line: &str, lang: Language) -> Option<String> {
    let t = line.trim();
    if lang.line_comment().is_some_and(|m| t.starts_with(m))
        || t.starts_with("/*")
        || t.starts_with('*')
    {
        return None;
    }
    let name = match lang {
        Language::Python => {
            let rest = t.strip_prefix("async ").map_or(t, str::trim_start);
            ident(rest.strip_prefix("def ")?)
        }
        Language::Rust => {
            let at = find_word(t, "fn")?;
            let before = &t[..at];
            let allowed = [
                "pub",
                "pub(crate)",
                "pub(super)",
                "async",
                "const",
                "unsafe",
                "extern",
                "\"C\"",
                "default",
            ];
            if !before
                .split_whitespace()
                .all(|w| allowed.contains(&w) || w.starts_with("pub("))
            {
                return None;
            }
            ident(&t[at + 2..])
        }
        Language::Go => {
            let rest = t.strip_prefix("func")?;
            let rest = rest.trim_start();
            let rest = match rest.strip_prefix('(') {
                Some(r) => &r[r.find(')')? + 1..],
                None if rest.len() < t.len() - 4 => rest,
                None => return None,
            };
            ident(rest)
        }
        Language::JavaScript | Language::TypeScript => js_header(t),
        Language::Lua => {
            let rest = t.strip_prefix("local ").unwrap_or(t).trim_start();
            if let Some(r) = rest.strip_prefix("function ") {
                let r = r.trim_start();
                let end = r.find('(')?;
                let name = r[..end].trim();
                (!name.is_empty()).then_some(name)
            } else {
                let eq = rest.find('=')?;
                rest[eq + 1..]
                    .trim_start()
                    .starts_with("function")
                    .then(|| rest[..eq].trim())
                    .filter(|n| !n.is_empty() && !n.contains(' '))
            }
        }
        Language::Shell => {
            let rest = t.strip_prefix("function ").unwrap_or(t);
            let name = ident(rest)?;
            let after = rest.trim_start()[name.len()..].trim_start();
            (after.starts_with("()") || t.starts_with("function ")).then_some(name)
        }
        Language::C | Language::Cpp | Language::Java => c_header(t),
        Language::Other => None,
    }?;
    Some(name.to_string())
}

fn js_header(t: &str) -> Option<&str> {
    if let Some(at) = find_word(t, "function") {
        let rest = t[at + "function".len()..]
            .trim_start()
            .trim_start_matches('*');
        if let Some(name) = ident(rest) {
            return Some(name);
        }
    }
    // const name = (...) => / const name = function / name: function
    for decl in ["const ", "let ", "var ", "export const ", "export let "] {
        if let Some(rest) = t.strip_prefix(decl) {
            let name = ident(rest)?;
            let after = rest.trim_start()[name.len()..].trim_start();
            let value = after.strip_prefix(':').map_or(after, |a| {
                // A type annotation: skip to the `=`.
                a.find('=').map_or("", |i| &a[i..])
            });
            let value = value.strip_prefix('=')?.trim_start();
            let value = value.strip_prefix("async").map_or(value, str::trim_start);
            if value.starts_with("function") || value.contains("=>") {
                return Some(name);
            }
            return None;
        }
    }
    // A method: `name(args) {`, with modifiers before it.
    let mut rest = t;
    for modifier in [
        "export ",
        "default ",
        "public ",
        "private ",
        "protected ",
        "static ",
        "async ",
        "get ",
        "set ",
        "override ",
        "readonly ",
    ] {
        rest = rest.strip_prefix(modifier).map_or(rest, str::trim_start);
    }
    let name = ident(rest)?;
    let after = rest[name.len()..].trim_start();
    (after.starts_with('(') && !NOT_FUNCTIONS.contains(&name) && t.ends_with('{')).then_some(name)
}

fn c_header(t: &str) -> Option<&str> {
    if t.starts_with('#') || t.ends_with(';') || t.starts_with('@') {
        return None;
    }
    let paren = t.find('(')?;
    let before = t[..paren].trim_end();
    if (before.contains(['=', '.']) || before.contains("->")) && !before.contains("operator") {
        return None;
    }
    let name_start = before
        .rfind(|c: char| !is_ident_char(c) && c != ':' && c != '~')
        .map_or(0, |i| i + 1);
    let name = &before[name_start..];
    let bare = name.rsplit("::").next().unwrap_or(name);
    let first_word = before.split_whitespace().next().unwrap_or("");
    let has_type = !before[..name_start].trim().is_empty();
    (!bare.is_empty()
        && has_type
        && !NOT_FUNCTIONS.contains(&bare)
        && !NOT_FUNCTIONS.contains(&first_word)
        && !first_word.starts_with("return"))
    .then_some(name)
}

/// Python: the signature ends at the line whose `:` closes it outside brackets; the body is every
/// following line indented deeper than the header (blank lines included, trailing ones not). A `def` with
/// its body on the same line is not a function we can document.
fn python_span(lines: &Lines, header: usize) -> Option<(usize, usize)> {
    let header_cols = super::indent::columns(indentation(lines.text(header)));
    let mut depth = 0i32;
    let mut sig_end = None;
    'sig: for l in header..(header + MAX_SIGNATURE_LINES).min(lines.count()) {
        let code = python_code(lines.text(l));
        let mut quote: Option<char> = None;
        let mut escaped = false;
        for (i, c) in code.char_indices() {
            if let Some(q) = quote {
                match c {
                    _ if escaped => escaped = false,
                    '\\' => escaped = true,
                    _ if c == q => quote = None,
                    _ => {}
                }
                continue;
            }
            match c {
                '"' | '\'' => quote = Some(c),
                '(' | '[' | '{' => depth += 1,
                ')' | ']' | '}' => depth -= 1,
                ':' if depth == 0 => {
                    if !code[i + 1..].trim().is_empty() {
                        return None;
                    }
                    sig_end = Some(l);
                    break 'sig;
                }
                _ => {}
            }
        }
    }
    let sig_end = sig_end?;
    let mut last = sig_end;
    for l in sig_end + 1..lines.count() {
        let text = lines.text(l);
        if is_blank(text) {
            continue;
        }
        if super::indent::columns(indentation(text)) <= header_cols {
            break;
        }
        last = l;
    }
    (last > sig_end).then_some((sig_end, last))
}

/// A Python line without its comment (a `#` outside string literals).
fn python_code(line: &str) -> &str {
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (i, c) in line.char_indices() {
        match quote {
            Some(_) if escaped => escaped = false,
            Some(_) if c == '\\' => escaped = true,
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c == '#' => return &line[..i],
            None => {}
        }
    }
    line
}

/// Lua: the function ends at the first `end` line at the header's indentation.
fn lua_span(lines: &Lines, header: usize) -> Option<(usize, usize)> {
    let indent = indentation(lines.text(header));
    let last = (header + 1..lines.count()).find(|&l| {
        let t = lines.text(l);
        indentation(t) == indent && t.trim_start().starts_with("end")
    })?;
    Some((header, last))
}

/// Brace languages: the body is the first `{` after the header outside parentheses (a `;` first means a
/// declaration), up to its matching `}`.
fn brace_span(source: &Source, lines: &Lines, header: usize) -> Option<(usize, usize)> {
    let text = source.text;
    let lang = source.language;
    let mut i = lines.start(header);
    let mut parens = 0i32;
    let mut braces = 0i32;
    let mut body_open = None;
    while i < text.len() {
        // Shell: `#` starts a comment only at the start of a word (`$#` is not one).
        let mid_word = lang.line_comment_needs_word_start()
            && text[..i]
                .chars()
                .next_back()
                .is_some_and(|p| !p.is_whitespace());
        if !mid_word {
            if let Some(skip) = literal_len(&text[i..], lang) {
                i += skip;
                continue;
            }
        }
        let c = text[i..].chars().next()?;
        match c {
            '(' | '[' => parens += 1,
            ')' | ']' => parens -= 1,
            ';' if parens == 0 && body_open.is_none() => return None,
            '{' if parens == 0 => {
                if body_open.is_none() {
                    body_open = Some(i);
                }
                braces += 1;
            }
            '}' if body_open.is_some() => {
                braces -= 1;
                if braces == 0 {
                    let open_line = lines.line_of(body_open?);
                    return Some((open_line, lines.line_of(i)));
                }
            }
            _ => {}
        }
        i += c.len_utf8();
    }
    None
}

/// The length of the comment or string literal starting at `s`, if one starts there.
fn literal_len(s: &str, lang: Language) -> Option<usize> {
    if let Some(m) = lang.line_comment() {
        if s.starts_with(m) {
            return Some(s.find('\n').unwrap_or(s.len()));
        }
    }
    if let Some((open, close)) = lang.block_comment() {
        if let Some(rest) = s.strip_prefix(open) {
            return Some(open.len() + rest.find(close).map_or(rest.len(), |j| j + close.len()));
        }
    }
    if lang.has_rust_char_literals() && s.starts_with('\'') {
        // A char literal ('a', '\n', '\u{..}'), else a lifetime: just the quote.
        let rest = &s[1..];
        let mut chars = rest.char_indices();
        return match chars.next() {
            Some((_, '\\')) => rest
                .get(2..)
                .and_then(|r| r.find('\''))
                .map(|j| j + 4)
                .filter(|&n| n <= 12),
            Some((_, c)) if rest[c.len_utf8()..].starts_with('\'') => Some(2 + c.len_utf8()),
            _ => Some(1),
        };
    }
    for d in lang.string_delimiters() {
        if let Some(rest) = s.strip_prefix(d.quote) {
            let mut j = 0;
            while j < rest.len() {
                if d.escapes && rest[j..].starts_with('\\') {
                    j += 1 + rest[j + 1..].chars().next().map_or(0, char::len_utf8);
                    continue;
                }
                if rest[j..].starts_with(d.quote) {
                    return Some(d.quote.len() + j + d.quote.len());
                }
                if !d.multiline && rest[j..].starts_with('\n') {
                    return Some(d.quote.len() + j);
                }
                j += rest[j..].chars().next().map_or(1, char::len_utf8);
            }
            return Some(s.len());
        }
    }
    None
}

/// The first line of the attributes or decorators directly above `header` (`#[...]`, `@...`).
fn attributes_above(lines: &Lines, header: usize, lang: Language) -> usize {
    let marker = match lang {
        Language::Rust => "#[",
        Language::Python | Language::Java | Language::TypeScript | Language::JavaScript => "@",
        _ => return header,
    };
    let mut first = header;
    while first > 0 && lines.text(first - 1).trim_start().starts_with(marker) {
        first -= 1;
    }
    first
}
