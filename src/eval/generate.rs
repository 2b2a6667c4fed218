//! Code generation scored the way HumanEval scores Instruct models, through the `generate` code action
//! (the pipeline behind the editor's "Generate code from instruction"): the function's signature and
//! docstring are the instruction, the code before the function (imports, helpers) is the document, and
//! the cursor is at its end. The document with the action's edit then runs the problem's tests.
//!
//! The problems are HumanEval's own prompts: the HumanEval-X Python file, whose `prompt` is HumanEval's,
//! whose tests end by calling `check`, and whose entry point is the prompt's last top-level function.

use std::time::Instant;

use anyhow::{bail, Result};
use serde::Deserialize;

use super::{execute, CaseResult, EngineRun, Scoring};
use codellama_engine::Backend;
use codellama_text::actions::{self, ActionError, ActionRequest, Source, Target, Task};

#[derive(Debug, Clone, Deserialize)]
pub struct Problem {
    pub task_id: String,
    pub prompt: String,
    /// Defines `check` and calls it on the entry point.
    pub test: String,
}

/// What the code action is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The code before the function; the cursor is at its end.
    pub document: String,
    /// The function's signature and docstring.
    pub instruction: String,
}

/// Splits a HumanEval prompt at its last top-level `def`: the code before it is the document, the rest
/// (the signature and docstring) the instruction. `None` when the prompt has no top-level function.
pub fn request(prompt: &str) -> Option<Request> {
    let start = prompt
        .match_indices("def ")
        .map(|(i, _)| i)
        .filter(|&i| i == 0 || prompt.as_bytes()[i - 1] == b'\n')
        .last()?;
    Some(Request {
        document: prompt[..start].to_string(),
        instruction: prompt[start..].trim_end().to_string(),
    })
}

/// Runs the `generate` action on every problem with `engine` (an Instruct model); `progress` is called
/// after each answer with the problem's index.
pub fn run(
    engine: &dyn Backend,
    problems: &[Problem],
    max_tokens: usize,
    scoring: &Scoring,
    progress: &mut dyn FnMut(usize, &CaseResult),
) -> Result<EngineRun> {
    let python = scoring.python();
    let mut results = Vec::with_capacity(problems.len());
    for (i, p) in problems.iter().enumerate() {
        let Some(req) = request(&p.prompt) else {
            bail!("{}: the prompt defines no top-level function", p.task_id);
        };
        let source = Source::new(&req.document, Some("humaneval.py"), Some("python"));
        let task = Task::Generate {
            instruction: req.instruction.clone(),
            target: Target::Cursor(req.document.len()),
        };
        let t = Instant::now();
        let answer = actions::run(engine, &source, ActionRequest::new(task, max_tokens));
        let ms = t.elapsed().as_secs_f64() * 1e3;
        let (completion, program, error) = match answer {
            Ok(out) => {
                let code = out
                    .edit
                    .map_or(req.document.clone(), |e| e.apply(&req.document));
                (out.text, Some(format!("{code}\n\n{}\n", p.test)), None)
            }
            // The model's answer, not the harness, failed: the problem is scored as failed.
            Err(
                e @ (ActionError::NoCode { .. }
                | ActionError::EmptyAnswer
                | ActionError::NoRoom { .. }),
            ) => (String::new(), None, Some(e.to_string())),
            Err(e) => return Err(anyhow::Error::new(e).context(p.task_id.clone())),
        };
        let passed = python.as_deref().map(|py| {
            program
                .as_deref()
                .is_some_and(|program| execute(py, program, scoring.timeout))
        });
        let r = CaseResult {
            task_id: p.task_id.clone(),
            completion,
            exact: None,
            passed,
            similarity: None,
            ms,
            error,
        };
        progress(i, &r);
        results.push(r);
    }
    Ok(EngineRun::new("codellama-lsp generate", results))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_top_level_function_is_the_instruction() {
        let r = request(
            "from typing import List\n\n\ndef f(xs: List[int]) -> int:\n    \"\"\" Sum.\n    >>> f([1])\n    1\n    \"\"\"\n",
        )
        .unwrap();
        assert_eq!(r.document, "from typing import List\n\n\n");
        assert_eq!(
            r.instruction,
            "def f(xs: List[int]) -> int:\n    \"\"\" Sum.\n    >>> f([1])\n    1\n    \"\"\""
        );
        // A helper before the function stays in the document; nested and indented defs do not split.
        let r = request("def helper(s):\n    def inner():\n        pass\n    return s\n\n\ndef g(s):\n    \"\"\"Uses helper.\"\"\"\n").unwrap();
        assert_eq!(
            r.document,
            "def helper(s):\n    def inner():\n        pass\n    return s\n\n\n"
        );
        assert_eq!(r.instruction, "def g(s):\n    \"\"\"Uses helper.\"\"\"");
        assert_eq!(request("def f():\n").unwrap().document, "");
        assert_eq!(request("x = 1\n    def f(): pass\n"), None);
    }

    #[test]
    fn every_humaneval_prompt_splits_and_its_tests_call_check() {
        let path = super::super::dataset_path("humaneval").expect("../shared/evaldata");
        let problems: Vec<Problem> = super::super::load(&path).unwrap();
        for p in &problems {
            let r = request(&p.prompt).unwrap_or_else(|| panic!("{}", p.task_id));
            let name = &r.instruction[4..r.instruction.find('(').unwrap()];
            assert!(
                p.test.trim_end().ends_with(&format!("check({name})")),
                "{}",
                p.task_id
            );
            assert!(r.instruction.contains("\"\"\"") || r.instruction.contains("'''"));
        }
    }
}
