//! Cross-file completion: whether other files of the repository in the prompt (the `context_tokens`
//! setting) make suggestions better. No shared benchmark covers it (HumanEval and SAFIM are single
//! files), so the holes are cut from a Rust repository given on the command line (by default this
//! project's own `src/`, written after the models' training data was collected, so nothing is recalled
//! from memory): a line after a file's `use` items that names something the file imports and another
//! file of the repository defines (`fn`, `struct`, `enum`, `trait`, `type`, `const`, `static`), at that
//! name's first use in the file. The cursor sits before the name; the hidden middle is the rest of the
//! line. The other files are offered as an editor offers its open tabs, the defining file first (the
//! one just looked at), then the files defining the file's other imports. Every hole is answered under
//! each budget in turn, the budgets taking turns going first; scored by exact match and edit
//! similarity of the first line of the suggestion.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};

use super::{CaseResult, EngineRun};
use codellama_engine::Backend;
use codellama_text::completion::{self, CompletionRequest};
use codellama_text::postprocess;
use codellama_text::prompt::{ContextChunk, PromptBuilder};

/// Files offered as context per hole (the server offers at most this many open documents).
const MAX_CONTEXT_FILES: usize = 8;

/// One hole.
#[derive(Debug, Clone)]
pub struct Problem {
    /// `path:line`.
    pub id: String,
    /// The file's path relative to the repository's parent folder (`crates/text/src/prompt/mod.rs`).
    pub path: String,
    pub prefix: String,
    pub suffix: String,
    /// The rest of the line after the cursor.
    pub middle: String,
    /// Other files of the repository, the one defining the name first.
    pub context: Vec<ContextChunk>,
}

impl Problem {
    /// The first line of `completion`, the hole being the rest of one line.
    fn first_line(completion: &str) -> &str {
        completion.lines().next().unwrap_or("")
    }

    pub fn exact(&self, completion: &str) -> bool {
        Self::first_line(completion).trim() == self.middle.trim()
    }

    /// 1 − (edit distance / longer length), in characters, surrounding whitespace removed.
    pub fn similarity(&self, completion: &str) -> f64 {
        let a: Vec<char> = Self::first_line(completion).trim().chars().collect();
        let b: Vec<char> = self.middle.trim().chars().collect();
        let longer = a.len().max(b.len());
        if longer == 0 {
            return 1.0;
        }
        1.0 - edit_distance(&a, &b) as f64 / longer as f64
    }
}

/// Levenshtein distance (one row of the table at a time).
fn edit_distance(a: &[char], b: &[char]) -> usize {
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (diagonal + usize::from(ca != cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            diagonal = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

/// A source file of the repository.
struct Source {
    path: String,
    text: String,
}

/// The holes of the Rust files under `root`, in path order.
pub fn problems(root: &Path) -> Result<Vec<Problem>> {
    let base = root.parent().unwrap_or(Path::new(""));
    let mut files = Vec::new();
    collect_rust_files(root, &mut files)?;
    files.sort();
    let sources: Vec<Source> = files
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("cannot read {}", f.display()))?;
            let path = f.strip_prefix(base).unwrap_or(f).display().to_string();
            Ok(Source { path, text })
        })
        .collect::<Result<_>>()?;
    let mut defined_in: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
    for (i, s) in sources.iter().enumerate() {
        for name in definitions(&s.text) {
            defined_in.entry(name).or_default().insert(i);
        }
    }
    let mut out = Vec::new();
    for i in 0..sources.len() {
        out.extend(holes_in(i, &sources, &defined_in));
    }
    Ok(out)
}

fn collect_rust_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            collect_rust_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// Names an item of the file defines at the start of a line.
fn definitions(text: &str) -> BTreeSet<String> {
    const KINDS: [&str; 7] = ["fn", "struct", "enum", "trait", "type", "const", "static"];
    const QUALIFIERS: [&str; 6] = [
        "pub",
        "pub(crate)",
        "pub(super)",
        "async",
        "unsafe",
        "const",
    ];
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let mut words = line
            .split_whitespace()
            .skip_while(|w| QUALIFIERS.contains(w));
        let (Some(kind), Some(name)) = (words.next(), words.next()) else {
            continue;
        };
        if KINDS.contains(&kind) {
            let name: String = name
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                names.insert(name);
            }
        }
    }
    names
}

/// The names a file's `use` items import, in order, and the byte offset where its body starts (after
/// the last `use` item).
fn imports(text: &str) -> (Vec<String>, usize) {
    let mut names = Vec::new();
    let mut body = 0;
    let mut at = 0;
    while let Some(found) = text[at..].find("use ") {
        let start = at + found;
        let line_start = text[..start].rfind('\n').map_or(0, |n| n + 1);
        let head = text[line_start..start].trim();
        let Some(len) = text[start..].find(';') else {
            break;
        };
        let end = start + len + 1;
        if head.is_empty() || head == "pub" || head == "pub(crate)" {
            for word in identifiers(&text[start + 4..end]) {
                if !["self", "super", "crate", "std", "as"].contains(&word)
                    && !names.iter().any(|n| n == word)
                {
                    names.push(word.to_string());
                }
            }
            body = end;
        }
        at = end;
    }
    (names, body)
}

fn identifiers(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|w| {
            w.chars()
                .next()
                .is_some_and(|c| c.is_alphabetic() || c == '_')
        })
}

/// The holes of file `i`: the first use of each imported name another file defines.
fn holes_in(
    i: usize,
    sources: &[Source],
    defined_in: &BTreeMap<String, BTreeSet<usize>>,
) -> Vec<Problem> {
    let s = &sources[i];
    let (imported, body) = imports(&s.text);
    let here = definitions(&s.text);
    let elsewhere = |name: &str| -> Option<usize> {
        let files = defined_in.get(name)?;
        (files.len() == 1 && !here.contains(name))
            .then(|| *files.iter().next().unwrap())
            .filter(|&f| f != i)
    };
    let mut out = Vec::new();
    for name in &imported {
        let Some(definer) = elsewhere(name) else {
            continue;
        };
        let Some(at) = first_use(&s.text, body, name) else {
            continue;
        };
        let line_end = s.text[at..].find('\n').map_or(s.text.len(), |n| at + n);
        let middle = &s.text[at..line_end];
        if middle.trim().len() < name.len() + 3 || middle.len() > 100 {
            continue;
        }
        let others = imported
            .iter()
            .filter_map(|n| elsewhere(n))
            .filter(|&f| f != definer);
        let mut context: Vec<usize> = vec![definer];
        for f in others {
            if !context.contains(&f) && context.len() < MAX_CONTEXT_FILES {
                context.push(f);
            }
        }
        let line = s.text[..at].matches('\n').count() + 1;
        out.push(Problem {
            id: format!("{}:{line}", s.path),
            path: s.path.clone(),
            prefix: s.text[..at].to_string(),
            suffix: s.text[line_end..].to_string(),
            middle: middle.to_string(),
            context: context
                .into_iter()
                .map(|f| ContextChunk {
                    path: sources[f].path.clone(),
                    text: sources[f].text.clone(),
                })
                .collect(),
        });
    }
    out
}

/// Byte offset of the first whole-word use of `name` after `from`, outside comment lines.
fn first_use(text: &str, from: usize, name: &str) -> Option<usize> {
    let mut line_start = from;
    for line in text[from..].split_inclusive('\n') {
        let code = line.trim_start();
        if !code.starts_with("//") && !code.starts_with("use ") && !code.starts_with("#[") {
            let mut at = 0;
            while let Some(found) = line[at..].find(name) {
                let start = at + found;
                let end = start + name.len();
                let word = |c: char| c.is_alphanumeric() || c == '_';
                let before = line[..start].chars().next_back().is_some_and(word);
                let after = line[end..].chars().next().is_some_and(word);
                if !before && !after {
                    return Some(line_start + start);
                }
                at = end;
            }
        }
        line_start += line.len();
    }
    None
}

/// Answers every hole under every prompt builder (one per `context_tokens` budget, named), the builders
/// taking turns going first; `progress` after each answer with the builder's name.
pub fn run(
    engine: &dyn Backend,
    builders: &[(String, PromptBuilder)],
    problems: &[Problem],
    max_tokens: usize,
    postprocess: &postprocess::Config,
    progress: &mut dyn FnMut(&str, usize, &CaseResult),
) -> Result<Vec<EngineRun>> {
    let mut results: Vec<Vec<CaseResult>> = vec![Vec::new(); builders.len()];
    for (i, p) in problems.iter().enumerate() {
        for k in 0..builders.len() {
            let b = (i + k) % builders.len();
            let (name, builder) = &builders[b];
            let mut req = CompletionRequest::new(p.prefix.as_str(), p.suffix.as_str(), max_tokens);
            req.path = Some(p.path.clone());
            req.language_id = Some("rust".into());
            req.extra = p.context.clone();
            req.postprocess = postprocess.clone();
            let t = Instant::now();
            let completion = completion::complete(engine, builder, &req)
                .with_context(|| format!("{name} on {}", p.id))?
                .completion;
            let r = CaseResult {
                task_id: p.id.clone(),
                exact: Some(p.exact(&completion)),
                passed: None,
                similarity: Some(p.similarity(&completion)),
                ms: t.elapsed().as_secs_f64() * 1e3,
                completion,
                error: None,
            };
            progress(name, i, &r);
            results[b].push(r);
        }
    }
    Ok(builders
        .iter()
        .zip(results)
        .map(|((name, _), r)| EngineRun::new(name, r))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holes_are_first_uses_of_names_defined_in_another_file() {
        let dir = std::env::temp_dir().join(format!("codellama-crossfile-{}", std::process::id()));
        let root = dir.join("src");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(
            root.join("shape.rs"),
            "pub struct Circle { pub r: f64 }\n\npub fn area(c: &Circle) -> f64 {\n    3.14 * c.r * c.r\n}\n",
        )
        .unwrap();
        std::fs::write(
            root.join("main.rs"),
            "use crate::shape::{area, Circle};\n\n// area of a circle\nfn main() {\n    let c = Circle { r: 2.0 };\n    println!(\"{}\", area(&c));\n    let d = area(&c);\n}\n",
        )
        .unwrap();
        let problems = problems(&root).unwrap();
        let ids: Vec<&str> = problems.iter().map(|p| p.id.as_str()).collect();
        // `area` at its first use outside the comment, `Circle` at its first use; `shape.rs` has none.
        assert_eq!(ids, ["src/main.rs:6", "src/main.rs:5"]);
        let area = &problems[0];
        assert_eq!(area.middle, "area(&c));");
        assert!(area.prefix.ends_with("println!(\"{}\", "));
        assert!(area.suffix.starts_with("\n    let d"));
        assert_eq!(area.context.len(), 1);
        assert_eq!(area.context[0].path, "src/shape.rs");
        assert!(area.exact("area(&c));\n}") && !area.exact("area(c));"));
        assert!((area.similarity("area(c));") - 0.9).abs() < 1e-9);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn edit_distance_counts_insertions_deletions_and_substitutions() {
        let d = |a: &str, b: &str| {
            edit_distance(
                &a.chars().collect::<Vec<_>>(),
                &b.chars().collect::<Vec<_>>(),
            )
        };
        assert_eq!(d("kitten", "sitting"), 3);
        assert_eq!(d("", "abc"), 3);
        assert_eq!(d("abc", "abc"), 0);
    }
}
