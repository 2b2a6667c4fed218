//! The quality harness: HumanEval infilling (single-line, multi-line or random-span) through the same
//! completion pipeline the editor uses, scored by exact match and, when Python is available, by running
//! each problem's tests (pass@1 with greedy decoding).
//!
//! Each problem gives the text before the hole (`prompt`), after it (`suffix`) and the hidden middle.
//! The cursor sits at the start of the hole, as in an editor; exact match compares the suggestion and
//! the hidden middle with surrounding whitespace removed. Execution runs
//! `prompt + completion + suffix + test` and then `check(entry_point)` in a fresh Python with a timeout.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::completion::{self, CompletionRequest};
use crate::engine::Backend;
use crate::postprocess::{self, Mode};
use crate::prompt::PromptBuilder;

#[derive(Debug, Clone, Deserialize)]
pub struct Problem {
    pub task_id: String,
    pub entry_point: String,
    pub prompt: String,
    pub suffix: String,
    pub canonical_solution: String,
    pub test: String,
}

/// Reads a `.jsonl` or `.jsonl.gz` file of problems.
pub fn load(path: &Path) -> Result<Vec<Problem>> {
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

/// The dataset file for a short name, looked up in `../shared/evaldata` beside the checkout.
pub fn dataset_path(name: &str) -> Result<PathBuf> {
    let file = match name {
        "single-line" => "HumanEval-SingleLineInfilling.jsonl.gz",
        "multi-line" => "HumanEval-MultiLineInfilling.jsonl.gz",
        "random-span" => "HumanEval-RandomSpanInfilling.jsonl.gz",
        "random-span-light" => "HumanEval-RandomSpanInfillingLight.jsonl.gz",
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
        let p = root.join("evaldata/humaneval-infilling").join(file);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("{file} not found under {roots:?}/evaldata/humaneval-infilling (pass --dataset PATH)")
}

#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    pub task_id: String,
    pub completion: String,
    pub exact: bool,
    /// `None` when not executed.
    pub passed: Option<bool>,
    pub ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub cases: usize,
    pub exact_match: f64,
    pub pass_at_1: Option<f64>,
    pub mean_ms: f64,
    pub template: String,
}

pub struct Options {
    pub max_tokens: usize,
    /// The `temperature` and `token_healing` settings, as the editor would use them.
    pub temperature: f32,
    pub token_healing: bool,
    pub single_line: bool,
    pub execute: bool,
    pub timeout: Duration,
}

/// Runs every problem, calling `progress` after each.
pub fn run(
    engine: &dyn Backend,
    builder: &PromptBuilder,
    problems: &[Problem],
    opts: &Options,
    progress: &mut dyn FnMut(usize, &CaseResult),
) -> Result<(Summary, Vec<CaseResult>)> {
    let python = opts.execute.then(find_python).flatten();
    let mut results = Vec::with_capacity(problems.len());
    for (i, p) in problems.iter().enumerate() {
        let t = Instant::now();
        let mut req = CompletionRequest::new(p.prompt.clone(), p.suffix.clone(), opts.max_tokens);
        req.language_id = Some("python".into());
        req.token_healing = opts.token_healing;
        req.sampling.temperature = opts.temperature;
        req.postprocess = postprocess::Config {
            mode: if opts.single_line {
                Mode::SingleLine
            } else {
                Mode::Auto
            },
            ..postprocess::Config::default()
        };
        let c = completion::complete(engine, builder, &req)?;
        let exact = c.completion.trim() == p.canonical_solution.trim();
        let passed = python
            .as_deref()
            .map(|py| execute(py, p, &c.completion, opts.timeout));
        let r = CaseResult {
            task_id: p.task_id.clone(),
            completion: c.completion,
            exact,
            passed,
            ms: t.elapsed().as_secs_f64() * 1e3,
        };
        progress(i, &r);
        results.push(r);
    }
    let n = results.len().max(1) as f64;
    let summary = Summary {
        cases: results.len(),
        exact_match: results.iter().filter(|r| r.exact).count() as f64 / n,
        pass_at_1: python
            .as_ref()
            .map(|_| results.iter().filter(|r| r.passed == Some(true)).count() as f64 / n),
        mean_ms: results.iter().map(|r| r.ms).sum::<f64>() / n,
        template: builder.template().name().to_string(),
    };
    Ok((summary, results))
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

/// Runs the problem's tests against `completion` in a fresh interpreter.
fn execute(python: &str, p: &Problem, completion: &str, timeout: Duration) -> bool {
    let mut middle = completion.to_string();
    if !middle.is_empty() && !middle.ends_with('\n') && p.suffix.starts_with(|c: char| c != '\n') {
        middle.push('\n');
    }
    let program = format!(
        "{}{}{}\n{}\ncheck({})\n",
        p.prompt, middle, p.suffix, p.test, p.entry_point
    );
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

    fn problem() -> Problem {
        Problem {
            task_id: "t/0".into(),
            entry_point: "add".into(),
            prompt: "def add(a, b):\n".into(),
            suffix: "\n".into(),
            canonical_solution: "    return a + b\n".into(),
            test: "def check(f):\n    assert f(1, 2) == 3\n".into(),
        }
    }

    #[test]
    fn execution_scores_right_and_wrong_answers() {
        let py = find_python().expect("python3 is needed to score by execution");
        let p = problem();
        assert!(execute(
            &py,
            &p,
            "    return a + b",
            Duration::from_secs(10)
        ));
        assert!(!execute(
            &py,
            &p,
            "    return a - b",
            Duration::from_secs(10)
        ));
        assert!(!execute(
            &py,
            &p,
            "    while True: pass",
            Duration::from_millis(500)
        ));
    }

    #[test]
    fn loads_the_shared_dataset() {
        let path = dataset_path("single-line").expect("../shared/evaldata beside the checkout");
        let problems = load(&path).unwrap();
        assert_eq!(problems.len(), 1033);
        assert!(problems.iter().all(|p| !p.canonical_solution.is_empty()));
    }
}
