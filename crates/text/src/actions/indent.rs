//! Indentation: how a text indents (tabs, or spaces and how many per level), and moving a block of code to
//! an insertion point so that it starts at that point's indentation, keeps its own structure, and is
//! written with the document's tabs or spaces.

use crate::language::Language;

/// Columns a tab counts for when code mixes tabs and spaces.
const TAB_COLUMNS: usize = 4;

/// How one level of indentation is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndentStyle {
    Tabs,
    Spaces(usize),
}

impl IndentStyle {
    /// The style of `text`: tabs when more indented lines start with a tab than with a space; otherwise the
    /// most common step between successive indentation depths (2, 4 or 8 spaces). A text without indented
    /// lines gets the language's habit (tabs for Go, 4 spaces otherwise).
    pub fn detect(text: &str, lang: Language) -> IndentStyle {
        let (mut tabs, mut spaces) = (0usize, 0usize);
        let mut steps = [0usize; 9];
        let mut previous = 0usize;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            match line.as_bytes()[0] {
                b'\t' => tabs += 1,
                b' ' => spaces += 1,
                _ => {}
            }
            let cols = columns(super::source::indentation(line));
            if cols > previous && cols - previous < steps.len() {
                steps[cols - previous] += 1;
            }
            previous = cols;
        }
        if tabs > spaces {
            return IndentStyle::Tabs;
        }
        if spaces == 0 {
            return match lang {
                Language::Go => IndentStyle::Tabs,
                _ => IndentStyle::Spaces(4),
            };
        }
        let best = [2, 4, 8, 3]
            .into_iter()
            .max_by_key(|&n| (steps[n], n == 4))
            .unwrap_or(4);
        IndentStyle::Spaces(best)
    }

    /// One level, as text.
    pub fn unit(self) -> String {
        match self {
            IndentStyle::Tabs => "\t".into(),
            IndentStyle::Spaces(n) => " ".repeat(n),
        }
    }

    fn width(self) -> usize {
        match self {
            IndentStyle::Tabs => TAB_COLUMNS,
            IndentStyle::Spaces(n) => n.max(1),
        }
    }
}

/// Width of leading whitespace in columns, a tab reaching the next multiple of four.
pub fn columns(ws: &str) -> usize {
    ws.chars().fold(0, |c, ch| match ch {
        '\t' => (c / TAB_COLUMNS + 1) * TAB_COLUMNS,
        _ => c + 1,
    })
}

/// Moves `code` to an insertion point indented with `base`: its least indented lines start with `base`,
/// deeper lines keep their depth in levels relative to those, written in the document's `style`
/// (a level of the code, whatever its width, becomes a level of the document; leftover alignment
/// spaces stay spaces). Blank lines become empty and no line keeps trailing whitespace. Lines are
/// joined with `\n`, without a final line break.
pub fn reindent(code: &str, base: &str, style: IndentStyle) -> String {
    let lines: Vec<&str> = code.lines().map(str::trim_end).collect();
    let depths: Vec<Option<usize>> = lines
        .iter()
        .map(|l| (!l.is_empty()).then(|| columns(super::source::indentation(l))))
        .collect();
    let min = depths.iter().flatten().copied().min().unwrap_or(0);
    let code_unit = IndentStyle::detect(&dedent_text(&lines, min), Language::Other).width();
    let unit = style.unit();
    lines
        .iter()
        .zip(&depths)
        .map(|(line, depth)| match depth {
            None => String::new(),
            Some(d) => {
                let rel = d - min;
                format!(
                    "{base}{}{}{}",
                    unit.repeat(rel / code_unit),
                    " ".repeat(rel % code_unit),
                    line.trim_start_matches([' ', '\t'])
                )
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The lines with `min` columns of indentation removed, tabs expanded (for measuring the code's own unit).
fn dedent_text(lines: &[&str], min: usize) -> String {
    lines
        .iter()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let body = l.trim_start_matches([' ', '\t']);
            let cols = columns(super::source::indentation(l)) - min;
            format!("{}{body}", " ".repeat(cols))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The indentation for a new line below `line`: the same, one level deeper after a line that opens a
/// block (`{`, `(`, `[` at the end; Python `:`; Lua `then`, `do`, `function(...)`, `repeat`).
pub fn indent_below(line: &str, lang: Language, style: IndentStyle) -> String {
    let base = super::source::indentation(line).to_string();
    let code = strip_trailing_comment(line, lang).trim_end();
    let opens = code.ends_with(['{', '(', '['])
        || (lang == Language::Python && code.ends_with(':'))
        || (lang == Language::Lua && opens_lua_block(code));
    if opens {
        base + &style.unit()
    } else {
        base
    }
}

fn opens_lua_block(code: &str) -> bool {
    let last = code
        .rsplit(|c: char| !c.is_alphanumeric() && c != '_')
        .next()
        .unwrap_or("");
    matches!(last, "then" | "do" | "repeat" | "else")
        || (code.ends_with(')') && code.contains("function"))
}

/// A rough cut of a trailing line comment (ignores markers inside strings, which at worst keeps the
/// indentation as it is).
fn strip_trailing_comment(line: &str, lang: Language) -> &str {
    match lang.line_comment() {
        Some(marker) => match line.find(marker) {
            Some(i) if !line[..i].contains(['"', '\'', '`']) => &line[..i],
            _ => line,
        },
        None => line,
    }
}
