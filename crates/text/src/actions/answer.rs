//! Reducing a chat model's answer to code: the fenced code block (the one tagged with the document's
//! language when there are several), or the unfenced answer when it is code, with the prose around it
//! dropped. Also the stop rule that ends a generation once its code block is closed.

use crate::language::Language;
use codellama_engine::StopPolicy;

/// A fenced code block of a Markdown answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FencedBlock {
    /// The info string's first word (`python`, `rs`, or empty).
    pub tag: String,
    /// The lines between the fences, joined with `\n`.
    pub body: String,
    /// Whether the closing fence was seen (an answer cut by `max_tokens` leaves the last block open).
    pub closed: bool,
}

/// Why an answer holds no code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoCode {
    #[error("the answer is empty")]
    Empty,
    #[error("the answer's code blocks are empty")]
    EmptyBlocks,
    #[error("the answer is prose, not code")]
    ProseOnly,
}

/// The fenced blocks of `answer` (``` or ~~~, three or more), in order.
pub fn fenced_blocks(answer: &str) -> Vec<FencedBlock> {
    let mut blocks = Vec::new();
    let mut lines = answer.lines();
    while let Some(line) = lines.next() {
        let Some((fence, info)) = opening_fence(line) else {
            continue;
        };
        let mut body = Vec::new();
        let mut closed = false;
        for inner in lines.by_ref() {
            if is_closing_fence(inner, &fence) {
                closed = true;
                break;
            }
            body.push(inner);
        }
        blocks.push(FencedBlock {
            tag: info.split_whitespace().next().unwrap_or("").to_string(),
            body: body.join("\n"),
            closed,
        });
    }
    blocks
}

fn opening_fence(line: &str) -> Option<(String, &str)> {
    let t = line.trim_start();
    let ch = t.chars().next().filter(|c| *c == '`' || *c == '~')?;
    let n = t.chars().take_while(|c| *c == ch).count();
    let info = &t[n..];
    // A backtick fence's info string has no backtick (CommonMark); that also skips inline code.
    (n >= 3 && !(ch == '`' && info.contains('`'))).then(|| (ch.to_string().repeat(n), info.trim()))
}

fn is_closing_fence(line: &str, fence: &str) -> bool {
    let t = line.trim();
    let ch = fence.chars().next().unwrap_or('`');
    t.len() >= fence.len() && t.chars().all(|c| c == ch)
}

/// The fence tag for `lang` (`python`, `rust`, `c`...), empty for unknown languages.
pub fn fence_tag(lang: Language) -> &'static str {
    match lang {
        Language::Shell => "sh",
        Language::Other => "",
        other => other.language_id(),
    }
}

/// Whether a fence tag names `lang` (`py`, `rs`, `js`, `golang`, `c++`... count).
pub fn tag_matches(tag: &str, lang: Language) -> bool {
    let tag = tag.to_ascii_lowercase();
    let names: &[&str] = match lang {
        Language::Python => &["python", "py", "python3", "py3"],
        Language::Rust => &["rust", "rs"],
        Language::JavaScript => &["javascript", "js", "jsx", "node", "mjs"],
        Language::TypeScript => &["typescript", "ts", "tsx"],
        Language::Go => &["go", "golang"],
        Language::C => &["c", "h"],
        Language::Cpp => &["cpp", "c++", "cc", "cxx", "hpp"],
        Language::Java => &["java"],
        Language::Lua => &["lua"],
        Language::Shell => &["sh", "bash", "shell", "zsh", "shellscript", "console"],
        Language::Other => &[],
    };
    names.contains(&tag.as_str())
}

/// The code in a chat answer: the first non-empty fenced block tagged with `lang`, else the first
/// non-empty untagged one, else the first non-empty one; without fences, the answer itself when it is
/// code, with prose lines before and after the code dropped. Blank lines around the code and trailing
/// whitespace are removed; indentation is kept as the model wrote it.
pub fn extract_code(answer: &str, lang: Language) -> Result<String, NoCode> {
    if answer.trim().is_empty() {
        return Err(NoCode::Empty);
    }
    let blocks = fenced_blocks(answer);
    if !blocks.is_empty() {
        let filled: Vec<&FencedBlock> = blocks
            .iter()
            .filter(|b| !b.body.trim().is_empty())
            .collect();
        let chosen = filled
            .iter()
            .find(|b| tag_matches(&b.tag, lang))
            .or_else(|| filled.iter().find(|b| b.tag.is_empty()))
            .or_else(|| filled.first())
            .ok_or(NoCode::EmptyBlocks)?;
        return Ok(tidy(&chosen.body));
    }
    let lines: Vec<&str> = answer.lines().collect();
    let is_code = |l: &&str| !l.trim().is_empty() && !is_prose(l, lang);
    let first = lines.iter().position(is_code).ok_or(NoCode::ProseOnly)?;
    let last = lines.iter().rposition(is_code).unwrap_or(first);
    Ok(tidy(&lines[first..=last].join("\n")))
}

/// Trailing whitespace off every line, blank lines off both ends.
fn tidy(code: &str) -> String {
    let lines: Vec<&str> = code.lines().map(str::trim_end).collect();
    let first = lines
        .iter()
        .position(|l| !l.is_empty())
        .unwrap_or(lines.len());
    let last = lines
        .iter()
        .rposition(|l| !l.is_empty())
        .map_or(first, |i| i + 1);
    lines[first..last.max(first)].join("\n")
}

/// Drops the top-level chunks of `code` that the document already has, line for line, in `context`
/// (small models like to copy the code around the insertion point before writing anything new). A chunk
/// is a line at the code's least indentation with the deeper lines after it; closing lines (`}`, `)`,
/// `end`) belong to the chunk above. Nothing is dropped when every chunk is a copy.
pub fn drop_repeated_context(code: &str, context: &[String]) -> String {
    let lines: Vec<&str> = code.lines().collect();
    let depth = |l: &str| super::indent::columns(super::source::indentation(l));
    let min = lines
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| depth(l))
        .min()
        .unwrap_or(0);
    let mut chunks: Vec<Vec<&str>> = Vec::new();
    for line in &lines {
        let t = line.trim();
        let starts_chunk = !t.is_empty()
            && depth(line) == min
            && !t.starts_with(['}', ')', ']'])
            && t != "end"
            && !t.starts_with("end ");
        match chunks.last_mut() {
            Some(chunk) if !starts_chunk => chunk.push(line),
            _ => chunks.push(vec![line]),
        }
    }
    let known: Vec<&str> = context
        .iter()
        .map(|l| l.trim())
        .filter(|l| !l.is_empty())
        .collect();
    let copied = |chunk: &[&str]| {
        let body: Vec<&str> = chunk
            .iter()
            .map(|l| l.trim())
            .filter(|l| !l.is_empty())
            .collect();
        !body.is_empty() && known.windows(body.len()).any(|w| w == body.as_slice())
    };
    let kept: Vec<&Vec<&str>> = chunks.iter().filter(|c| !copied(c)).collect();
    if kept.iter().all(|c| c.iter().all(|l| l.trim().is_empty())) {
        return code.to_string();
    }
    tidy(
        &kept
            .iter()
            .flat_map(|c| c.iter().copied())
            .collect::<Vec<_>>()
            .join("\n"),
    )
}

/// Words that start code lines in the languages we know; a line starting with one is never prose.
const CODE_WORDS: &[&str] = &[
    "async",
    "await",
    "break",
    "case",
    "catch",
    "char",
    "class",
    "const",
    "continue",
    "def",
    "default",
    "defer",
    "del",
    "do",
    "double",
    "elif",
    "else",
    "end",
    "enum",
    "except",
    "export",
    "extern",
    "finally",
    "float",
    "fn",
    "for",
    "from",
    "func",
    "function",
    "global",
    "go",
    "if",
    "impl",
    "import",
    "int",
    "interface",
    "lambda",
    "let",
    "local",
    "long",
    "loop",
    "match",
    "mod",
    "module",
    "nonlocal",
    "package",
    "pass",
    "pub",
    "raise",
    "repeat",
    "return",
    "static",
    "struct",
    "switch",
    "then",
    "throw",
    "trait",
    "try",
    "type",
    "typedef",
    "union",
    "unsigned",
    "until",
    "use",
    "var",
    "void",
    "while",
    "with",
    "yield",
];

/// Whether a line reads as an English sentence rather than code: no code punctuation, not starting with
/// a keyword or a comment, and either capitalised with several words, or ending like a sentence.
pub fn is_prose(line: &str, lang: Language) -> bool {
    let t = line.trim();
    if t.is_empty() || lang.line_comment().is_some_and(|m| t.starts_with(m)) {
        return false;
    }
    if t.contains(|c: char| "(){}[];=<>+*/\\\"`|&$%^@#".contains(c)) {
        return false;
    }
    let words: Vec<&str> = t.split_whitespace().collect();
    let first = words[0].trim_end_matches([':', ',', '.', '!', '?']);
    if CODE_WORDS.contains(&first) {
        return false;
    }
    let capitalised = t.starts_with(|c: char| c.is_uppercase());
    let sentence_end = t.ends_with(['.', '!', '?']) || (t.ends_with(':') && words.len() >= 3);
    (capitalised && words.len() >= 2) || (sentence_end && words.len() >= 3) || t.ends_with('!')
}

/// Ends a generation once the first fenced code block is complete (the model tends to add prose after
/// it, which would be dropped anyway).
#[derive(Debug, Default)]
pub struct StopAfterCodeBlock;

impl StopPolicy for StopAfterCodeBlock {
    fn check(&mut self, text: &str) -> Option<usize> {
        let mut offset = 0;
        let mut fence: Option<String> = None;
        for line in text.split_inclusive('\n') {
            let end = offset + line.len();
            offset = end;
            if !line.ends_with('\n') {
                break;
            }
            match &fence {
                None => fence = opening_fence(line).map(|(f, _)| f),
                Some(f) if is_closing_fence(line, f) => return Some(end),
                Some(_) => {}
            }
        }
        None
    }
}
