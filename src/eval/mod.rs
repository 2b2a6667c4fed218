//! The quality harness: HumanEval problems through the pipelines the editor uses, scored by exact match
//! and by running each problem's tests in a fresh Python with a timeout (pass@1 with greedy decoding).
//!
//! Infilling (single-line, multi-line, random-span): each problem gives the text before the hole
//! (`prompt`), after it (`suffix`) and the hidden middle. The cursor sits at the start of the hole, as in
//! an editor; a hole of whole lines is the empty line the user is about to fill, so its line break stays
//! after the cursor ([`Problem::suffix_in_editor`]). Every [`Infiller`] answers the same documents: our
//! completion pipeline ([`Ours`]) and, in the same run, llama.cpp's `/infill` as llama.vscode calls it
//! ([`llama_vscode`]). The engines take turns going first, problem by problem, so that load on the machine
//! hits both alike. Exact match compares the suggestion with the hidden middle, surrounding whitespace
//! removed; execution runs the document with the suggestion at the cursor, then the tests and
//! `check(entry_point)`. The time per problem is the engine's answer alone, not the scoring.
//!
//! Code generation ([`generate`]) scores the `generate` code action on HumanEval's own prompts;
//! [`crossfile`] measures what other files of a repository in the prompt (`context_tokens`) are worth.

pub mod crossfile;
pub mod generate;
pub mod llama_vscode;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use codellama_engine::Backend;
use codellama_text::completion::{self, CompletionRequest};
use codellama_text::postprocess;
use codellama_text::prompt::PromptBuilder;

#[derive(Debug, Clone, Deserialize)]
pub struct Problem {
    pub task_id: String,
    pub entry_point: String,
    pub prompt: String,
    pub suffix: String,
    pub canonical_solution: String,
    pub test: String,
}

impl Problem {
    /// Whether the hole is whole lines: it starts at a line start and ends with a line break.
    fn whole_lines(&self) -> bool {
        (self.prompt.is_empty() || self.prompt.ends_with('\n'))
            && self.canonical_solution.ends_with('\n')
    }

    /// The text after the cursor in the editor. A hole of whole lines is an empty line that the user is
    /// about to fill: the hole's last line break stays in the document, so the suggestion is the lines'
    /// text and the next line is not under the cursor.
    pub fn suffix_in_editor(&self) -> String {
        if self.whole_lines() {
            format!("\n{}", self.suffix)
        } else {
            self.suffix.clone()
        }
    }

    /// Whether `completion` is the hidden middle, surrounding whitespace removed.
    pub fn exact(&self, completion: &str) -> bool {
        completion.trim() == self.canonical_solution.trim()
    }

    /// The program that scores `completion`: the document with it at the cursor, then the tests.
    pub fn program(&self, completion: &str) -> String {
        format!(
            "{}{}{}\n{}\ncheck({})\n",
            self.prompt,
            completion,
            self.suffix_in_editor(),
            self.test,
            self.entry_point
        )
    }
}

/// Reads a `.jsonl` or `.jsonl.gz` file of records.
pub fn load<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let reader: Box<dyn std::io::Read> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(flate2::read::GzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let mut out = Vec::new();
    for (i, line) in BufReader::new(reader).lines().enumerate() {
        let line = line.with_context(|| format!("{}: read error", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(
            serde_json::from_str(&line)
                .with_context(|| format!("{}:{}: bad problem", path.display(), i + 1))?,
        );
    }
    Ok(out)
}

/// The dataset file for a short name, looked up in `../shared/evaldata` beside the checkout; any other
/// name is a path.
pub fn dataset_path(name: &str) -> Result<PathBuf> {
    let file = match name {
        "single-line" => "humaneval-infilling/HumanEval-SingleLineInfilling.jsonl.gz",
        "multi-line" => "humaneval-infilling/HumanEval-MultiLineInfilling.jsonl.gz",
        "random-span" => "humaneval-infilling/HumanEval-RandomSpanInfilling.jsonl.gz",
        "random-span-light" => "humaneval-infilling/HumanEval-RandomSpanInfillingLight.jsonl.gz",
        "humaneval" => "humaneval-x/humaneval_python.jsonl.gz",
        other => return Ok(PathBuf::from(other)),
    };
    let mut roots = Vec::new();
    if let Some(p) = std::env::var_os("CODELLAMA_LSP_SHARED") {
        roots.push(PathBuf::from(p));
    }
    roots.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared"));
    if let Ok(cwd) = std::env::current_dir() {
        roots.push(cwd.join("../shared"));
    }
    for root in &roots {
        let p = root.join("evaldata").join(file);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("{file} not found under {roots:?}/evaldata (pass --dataset PATH)")
}

/// `limit` problems spread evenly over `problems`, the first included, in their order (0: all). The files
/// list a task's holes together, so the first few hundred would cover only the first few tasks.
pub fn spread<T>(problems: Vec<T>, limit: usize) -> Vec<T> {
    let n = problems.len();
    if limit == 0 || limit >= n {
        return problems;
    }
    let mut next = 0;
    let mut picked = 0;
    problems
        .into_iter()
        .enumerate()
        .filter_map(|(i, p)| {
            (picked < limit && i == next).then(|| {
                picked += 1;
                next = picked * n / limit;
                p
            })
        })
        .collect()
}

/// One engine's answer to one problem.
#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    pub task_id: String,
    pub completion: String,
    /// `None` where there is no hidden middle to compare with (code generation).
    pub exact: Option<bool>,
    /// `None` when not executed.
    pub passed: Option<bool>,
    /// Edit similarity with the hidden middle, where it is scored (cross-file holes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub similarity: Option<f64>,
    /// Time to the answer, scoring excluded.
    pub ms: f64,
    /// Why there is no answer (code generation: the model's answer held no code).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub engine: String,
    pub cases: usize,
    pub exact_match: Option<f64>,
    pub pass_at_1: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub similarity: Option<f64>,
    pub mean_ms: f64,
}

/// One engine's results on one dataset.
#[derive(Debug, Clone, Serialize)]
pub struct EngineRun {
    pub summary: Summary,
    pub results: Vec<CaseResult>,
}

impl EngineRun {
    pub fn new(engine: &str, results: Vec<CaseResult>) -> Self {
        let n = results.len().max(1) as f64;
        let share = |f: &dyn Fn(&CaseResult) -> Option<bool>| -> Option<f64> {
            let scored: Vec<bool> = results.iter().filter_map(f).collect();
            (!scored.is_empty()).then(|| scored.iter().filter(|&&b| b).count() as f64 / n)
        };
        let summary = Summary {
            engine: engine.to_string(),
            cases: results.len(),
            exact_match: share(&|r| r.exact),
            pass_at_1: share(&|r| r.passed),
            similarity: results
                .iter()
                .map(|r| r.similarity)
                .sum::<Option<f64>>()
                .map(|s| s / n),
            mean_ms: results.iter().map(|r| r.ms).sum::<f64>() / n,
        };
        Self { summary, results }
    }
}

/// How answers are scored.
#[derive(Debug, Clone)]
pub struct Scoring {
    /// Run the tests (needs `python3` or `python`; without one, pass@1 is not reported).
    pub execute: bool,
    /// Longest a problem's tests may run.
    pub timeout: Duration,
}

impl Scoring {
    /// The interpreter that runs the tests, `None` when not executing or none is installed.
    fn python(&self) -> Option<String> {
        self.execute.then(find_python).flatten()
    }
}

/// One way of filling a hole.
pub trait Infiller {
    /// The engine's name in reports.
    fn name(&self) -> &str;
    /// The text inserted at the cursor between `prefix` and `suffix` (empty: no suggestion).
    fn infill(&mut self, prefix: &str, suffix: &str) -> Result<String>;
}

/// Our completion pipeline, as the language server runs it: prompt, engine, post-processing.
pub struct Ours<'a> {
    pub engine: &'a dyn Backend,
    pub builder: &'a PromptBuilder,
    pub max_tokens: usize,
    pub postprocess: postprocess::Config,
    /// The `token_healing`, `speculative` and `temperature` settings.
    pub token_healing: bool,
    pub speculative: bool,
    pub temperature: f32,
}

impl Infiller for Ours<'_> {
    fn name(&self) -> &str {
        "codellama-lsp"
    }

    fn infill(&mut self, prefix: &str, suffix: &str) -> Result<String> {
        let mut req = CompletionRequest::new(prefix, suffix, self.max_tokens);
        req.language_id = Some("python".into());
        req.postprocess = self.postprocess.clone();
        req.token_healing = self.token_healing;
        req.speculative = self.speculative.into();
        req.sampling.temperature = self.temperature;
        // Each hole from its own prompt: the holes cut from one problem share most of their text, and
        // runs moved from the previous hole's cache would make the figures depend on their order.
        req.cache_reuse = 0;
        Ok(completion::complete(self.engine, self.builder, &req)?.completion)
    }
}

/// Answers every problem with every engine, the engines taking turns going first; `progress` is called
/// after each answer with the engine's name and the problem's index.
pub fn run(
    engines: &mut [&mut dyn Infiller],
    problems: &[Problem],
    scoring: &Scoring,
    progress: &mut dyn FnMut(&str, usize, &CaseResult),
) -> Result<Vec<EngineRun>> {
    let python = scoring.python();
    let mut results: Vec<Vec<CaseResult>> = vec![Vec::with_capacity(problems.len()); engines.len()];
    for (i, p) in problems.iter().enumerate() {
        let suffix = p.suffix_in_editor();
        for k in 0..engines.len() {
            let e = (i + k) % engines.len();
            let engine = &mut engines[e];
            let t = Instant::now();
            let completion = engine
                .infill(&p.prompt, &suffix)
                .with_context(|| format!("{} on {}", engine.name(), p.task_id))?;
            let ms = t.elapsed().as_secs_f64() * 1e3;
            let r = CaseResult {
                task_id: p.task_id.clone(),
                exact: Some(p.exact(&completion)),
                passed: python
                    .as_deref()
                    .map(|py| execute(py, &p.program(&completion), scoring.timeout)),
                similarity: None,
                completion,
                ms,
                error: None,
            };
            progress(engine.name(), i, &r);
            results[e].push(r);
        }
    }
    Ok(engines
        .iter()
        .zip(results)
        .map(|(e, r)| EngineRun::new(e.name(), r))
        .collect())
}

fn find_python() -> Option<String> {
    ["python3", "python"]
        .into_iter()
        .map(String::from)
        .find(|py| {
            Command::new(py)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
}

/// Runs `program` in a fresh interpreter; true when it exits successfully within `timeout`.
fn execute(python: &str, program: &str, timeout: Duration) -> bool {
    let Ok(mut child) = Command::new(python)
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    else {
        return false;
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(program.as_bytes());
    }
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status.success(),
            Ok(None) if start.elapsed() < timeout => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(prompt: &str, middle: &str, suffix: &str) -> Problem {
        Problem {
            task_id: "t/0".into(),
            entry_point: "f".into(),
            prompt: prompt.into(),
            suffix: suffix.into(),
            canonical_solution: middle.into(),
            test: "def check(f):\n    assert f(1, 2) == 3\n".into(),
        }
    }

    #[test]
    fn execution_scores_right_and_wrong_answers() {
        let py = find_python().expect("python3 is needed to score by execution");
        let p = problem("def f(a, b):\n", "    return a + b\n", "\n");
        let run = |c: &str, t| execute(&py, &p.program(c), Duration::from_millis(t));
        assert!(run("    return a + b", 10_000));
        assert!(!run("    return a - b", 10_000));
        assert!(!run("    while True: pass", 500));
    }

    #[test]
    fn a_hole_of_whole_lines_is_an_empty_line_in_the_editor() {
        let lines = problem("def f(a, b):\n", "    c = a + b\n", "    return c\n");
        assert_eq!(lines.suffix_in_editor(), "\n    return c\n");
        assert_eq!(
            lines
                .program("    c = a + b")
                .lines()
                .take(3)
                .collect::<Vec<_>>(),
            ["def f(a, b):", "    c = a + b", "    return c"]
        );
        // A span that ends inside a line continues on the cursor's line.
        let span = problem("def f(a, b):\n    return ", "a +", " b\n");
        assert_eq!(span.suffix_in_editor(), " b\n");
        let py = find_python().expect("python3 is needed to score by execution");
        assert!(execute(&py, &span.program("a +"), Duration::from_secs(10)));
        assert!(span.exact(" a + \n") && !span.exact("a"));
    }

    #[test]
    fn engines_take_turns_going_first() {
        struct Echo(
            &'static str,
            std::rc::Rc<std::cell::RefCell<Vec<&'static str>>>,
        );
        impl Infiller for Echo {
            fn name(&self) -> &str {
                self.0
            }
            fn infill(&mut self, _: &str, _: &str) -> Result<String> {
                self.1.borrow_mut().push(self.0);
                Ok("    return a + b".into())
            }
        }
        let order = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let (mut a, mut b) = (Echo("a", order.clone()), Echo("b", order.clone()));
        let p = problem("def f(a, b):\n", "    return a + b\n", "\n");
        let scoring = Scoring {
            execute: false,
            timeout: Duration::from_secs(1),
        };
        let runs = run(
            &mut [&mut a, &mut b],
            &[p.clone(), p.clone(), p],
            &scoring,
            &mut |_, _, _| {},
        )
        .unwrap();
        assert_eq!(*order.borrow(), ["a", "b", "b", "a", "a", "b"]);
        assert_eq!(runs[1].summary.engine, "b");
        assert_eq!(runs[1].summary.exact_match, Some(1.0));
        assert_eq!(runs[1].summary.pass_at_1, None);
    }

    #[test]
    fn a_limit_spreads_over_the_file() {
        let ten: Vec<usize> = (0..10).collect();
        assert_eq!(spread(ten.clone(), 3), [0, 3, 6]);
        assert_eq!(spread(ten.clone(), 5), [0, 2, 4, 6, 8]);
        assert_eq!(spread(ten.clone(), 1), [0]);
        assert_eq!(spread(ten.clone(), 0), ten);
        assert_eq!(spread(ten.clone(), 12), ten);
        assert_eq!(spread((0..1033).collect::<Vec<_>>(), 100).len(), 100);
    }

    #[test]
    fn loads_the_shared_datasets() {
        let path = dataset_path("single-line").expect("../shared/evaldata beside the checkout");
        let problems: Vec<Problem> = load(&path).unwrap();
        assert_eq!(problems.len(), 1033);
        assert!(problems.iter().all(|p| !p.canonical_solution.is_empty()));
        let path = dataset_path("humaneval").unwrap();
        assert_eq!(load::<generate::Problem>(&path).unwrap().len(), 164);
    }
}
