//! Code actions with an Instruct model, with no LSP in sight: explain the selected code, generate code
//! from an instruction or from a comment, document a function. The language server and the CLI both call
//! this; the server turns [`Edit`]s into `WorkspaceEdit`s and [`Offer`]s into code actions.
//!
//! One action end to end: [`Task`] → [`task::Plan`] (checked against the document: ranges, the comment,
//! the enclosing function, where the result goes) → chat prompt within the token budget ([`prompt`]) →
//! [`Backend::submit`] → the answer reduced ([`answer`] for code, [`comment`] for explanations, [`doc`] for
//! doc comments) and re-indented ([`indent`]) → [`ActionOutput`] with the edit and Markdown.
//! Listing what is possible at a position ([`offers`]) needs no model and is instant.
//!
//! Which model answers is decided in [`model`]: a base model cannot follow instructions and gives
//! [`ActionError::NotInstruct`].

pub mod answer;
pub mod comment;
pub mod doc;
pub mod function;
pub mod indent;
pub mod model;
pub mod prompt;
pub mod source;
pub mod task;

use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::prompt::chat::ChatFormat;
use codellama_engine::{
    Backend, CancelToken, EngineError, Event, GenerateRequest, Generation, Outcome, SamplingParams,
    StopPolicy, StopReason, Timings,
};

pub use answer::{extract_code, NoCode};
pub use comment::{comment_at, line_comment_text, render_comment_block, CommentSyntax};
pub use function::{enclosing_function, Function};
pub use indent::{reindent, IndentStyle};
pub use model::{chat_format, choose_chat_model, instruct_format, ChatModel};
pub use prompt::{ActionPrompt, PromptTruncation};
pub use source::Source;
pub use task::{ActionKind, Target, Task};

use task::Plan;

/// A change to the document: replace bytes `start..end` of the text the action was planned on with
/// `new_text` (written with the document's line endings).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Edit {
    pub start: usize,
    pub end: usize,
    pub new_text: String,
}

impl Edit {
    /// `text` with the edit applied.
    pub fn apply(&self, text: &str) -> String {
        format!(
            "{}{}{}",
            &text[..self.start],
            self.new_text,
            &text[self.end..]
        )
    }
}

/// Why an action produced nothing. Every message is meant for the user as it is.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error(
        "explain/generate need an Instruct model: {model} is a base model (no chat template, and its \
         name does not say Instruct). Set chat_model to an Instruct model, e.g. a CodeLlama-7b-Instruct GGUF"
    )]
    NotInstruct { model: String },
    #[error("{0}")]
    ChatFormat(String),
    #[error("out of range: {0}")]
    OutOfRange(String),
    #[error("nothing to explain: the selection is empty")]
    EmptySelection,
    #[error("no instruction: say what code to generate")]
    EmptyInstruction,
    #[error("line {line} is not a comment (// ..., # ..., -- ..., /* ... */)")]
    NotAComment { line: usize },
    #[error("no function encloses line {line}")]
    NoFunction { line: usize },
    #[error("{0}")]
    Unsupported(String),
    #[error("the context window ({window} tokens) leaves no room for the prompt after {max_tokens} generated tokens")]
    NoRoom { window: usize, max_tokens: usize },
    #[error("the model's answer contains no code ({reason}); it said: {excerpt:?}")]
    NoCode { reason: NoCode, excerpt: String },
    #[error("the model's answer is empty")]
    EmptyAnswer,
    #[error("cancelled")]
    Cancelled,
    #[error(transparent)]
    Engine(EngineError),
}

impl From<EngineError> for ActionError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Cancelled => ActionError::Cancelled,
            other => ActionError::Engine(other),
        }
    }
}

/// Generation so far, for streaming progress (`$/progress`).
#[derive(Debug, Clone, Copy)]
pub struct Progress<'a> {
    pub generated_tokens: usize,
    /// Everything generated so far.
    pub text: &'a str,
    /// What the latest token added.
    pub delta: &'a str,
}

/// Called on the waiting thread or task (never on the model thread) for each generated token.
pub type ProgressFn = Box<dyn FnMut(Progress<'_>) + Send>;

/// One action to run.
pub struct ActionRequest {
    pub task: Task,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub cancel: CancelToken,
    pub progress: Option<ProgressFn>,
}

impl ActionRequest {
    pub fn new(task: Task, max_tokens: usize) -> Self {
        Self {
            task,
            max_tokens,
            sampling: SamplingParams::default(),
            cancel: CancelToken::new(),
            progress: None,
        }
    }
}

/// What an action produced.
#[derive(Debug, Clone, Serialize)]
pub struct ActionOutput {
    pub kind: ActionKind,
    /// For a panel: the explanation; the generated code in a fence; the documentation text.
    pub markdown: String,
    /// What the edit inserts: the explanation's comment block, the indented code, the doc comment.
    pub text: String,
    /// The change, against the text the action was planned on. `None` only for an explanation of a
    /// language without comment syntax.
    pub edit: Option<Edit>,
    /// The model's answer as generated.
    pub raw_text: String,
    pub format: ChatFormat,
    pub prompt_tokens: usize,
    pub truncated: PromptTruncation,
    pub stop_reason: StopReason,
    pub timings: Timings,
}

/// An action offered at a position, before any model work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    pub kind: ActionKind,
    pub title: String,
    /// The task to run; for [`ActionKind::Generate`] its instruction is empty until the user gives one.
    pub task: Task,
    pub needs_instruction: bool,
}

/// The actions that make sense for `selection` (byte offsets; empty for a cursor), instantly: Explain
/// (the selection, or the cursor's line), Generate code from this comment (on a comment), Generate code
/// from instruction (replacing the selection, or at the cursor), Document this function (inside a
/// function without a doc comment). A selection outside the document offers nothing.
pub fn offers(source: &Source, selection: Range<usize>) -> Vec<Offer> {
    let text = source.text;
    let valid = |o: usize| o <= text.len() && text.is_char_boundary(o);
    if selection.start > selection.end || !valid(selection.start) || !valid(selection.end) {
        return Vec::new();
    }
    let lines = source.lines();
    let line = lines.line_of(selection.start);
    let mut out = Vec::new();
    let offer = |task: Task, needs_instruction: bool| Offer {
        kind: task.kind(),
        title: task.kind().title().to_string(),
        task,
        needs_instruction,
    };
    let explain = Task::Explain {
        selection: selection.clone(),
    };
    if Plan::new(source, &explain).is_ok() {
        out.push(offer(explain, false));
    }
    if comment_at(source, line).is_some() {
        out.push(offer(Task::GenerateFromComment { line }, false));
    }
    out.push(offer(
        Task::Generate {
            instruction: String::new(),
            target: Target::for_selection(selection.clone()),
        },
        true,
    ));
    if task::documentable(source, selection.start) {
        out.push(offer(
            Task::Document {
                position: selection.start,
            },
            false,
        ));
    }
    out
}

/// The prompt an action would send (for tests and `--json` output); no model needed.
pub fn build_prompt(
    tokenizer: &codellama_engine::Tokenizer,
    format: ChatFormat,
    source: &Source,
    task: &Task,
    max_tokens: usize,
    context_window: usize,
) -> Result<ActionPrompt, ActionError> {
    let plan = Plan::new(source, task)?;
    prompt::build(tokenizer, format, &plan, max_tokens, context_window)
}

/// An action submitted to the engine, waiting for its answer.
pub struct PendingAction {
    generation: Generation,
    plan: Plan,
    prompt: ActionPrompt,
    progress: Option<ProgressFn>,
}

/// Checks the task against the document, builds the prompt and queues the generation (never blocks on
/// the model). Fails at once for a model that cannot follow instructions, a bad range, a line that is
/// not a comment, a position outside any function, or a prompt that cannot fit.
pub fn submit(
    engine: &dyn Backend,
    source: &Source,
    req: ActionRequest,
) -> Result<PendingAction, ActionError> {
    let format = chat_format(engine)?;
    let plan = Plan::new(source, &req.task)?;
    let prompt = prompt::build(
        engine.tokenizer(),
        format,
        &plan,
        req.max_tokens,
        engine.info().context_window,
    )?;
    let mut gen = GenerateRequest::new(prompt.ids.clone(), req.max_tokens);
    gen.sampling = req.sampling;
    gen.stop_ids = prompt.stop_ids.clone();
    gen.cancel = req.cancel;
    gen.policy = Some(match plan.kind {
        ActionKind::Generate | ActionKind::GenerateFromComment => {
            Box::new(answer::StopAfterCodeBlock) as Box<dyn StopPolicy>
        }
        ActionKind::Explain | ActionKind::Document => Box::new(StopOnRepeatedLine),
    });
    Ok(PendingAction {
        generation: engine.submit(gen),
        plan,
        prompt,
        progress: req.progress,
    })
}

/// Convenience: submit and wait on this thread.
pub fn run(
    engine: &dyn Backend,
    source: &Source,
    req: ActionRequest,
) -> Result<ActionOutput, ActionError> {
    submit(engine, source, req)?.wait()
}

impl PendingAction {
    pub fn cancel_token(&self) -> &CancelToken {
        &self.generation.cancel
    }

    pub fn prompt(&self) -> &ActionPrompt {
        &self.prompt
    }

    /// [`Self::finish`], blocking the calling thread (CLI); not for use on an async runtime.
    pub fn wait(self) -> Result<ActionOutput, ActionError> {
        futures_executor::block_on(self.finish())
    }

    /// Waits asynchronously (the language server).
    pub async fn finish(mut self) -> Result<ActionOutput, ActionError> {
        let mut stream = Stream::default();
        while let Some(ev) = self.generation.events.recv().await {
            if let Some(result) = stream.on_event(ev, &mut self.progress) {
                return finish(&self.plan, self.prompt, result?);
            }
        }
        Err(EngineError::Stopped.into())
    }
}

#[derive(Default)]
struct Stream {
    text: String,
    tokens: usize,
}

impl Stream {
    fn on_event(
        &mut self,
        ev: Event,
        progress: &mut Option<ProgressFn>,
    ) -> Option<Result<Outcome, ActionError>> {
        match ev {
            Event::Token { text, .. } => {
                self.tokens += 1;
                self.text.push_str(&text);
                if let Some(f) = progress.as_mut() {
                    f(Progress {
                        generated_tokens: self.tokens,
                        text: &self.text,
                        delta: &text,
                    });
                }
                None
            }
            Event::Finished(r) => Some(r.map_err(ActionError::from)),
        }
    }
}

/// An answer reduced to what an action produces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reduced {
    /// For a panel: the explanation; the generated code in a fence; the documentation text.
    pub markdown: String,
    /// What the edit inserts: the explanation's comment block, the indented code, the doc comment.
    pub text: String,
    /// The change, against the document's text. `None` only for an explanation of a language without
    /// comment syntax.
    pub edit: Option<Edit>,
}

/// What `task` makes of a model's `answer` in `source`, without a model: the same reduction that
/// [`PendingAction::wait`] applies (golden tests, replaying answers).
pub fn reduce_answer(source: &Source, task: &Task, answer: &str) -> Result<Reduced, ActionError> {
    reduce(&Plan::new(source, task)?, answer)
}

fn finish(
    plan: &Plan,
    prompt: ActionPrompt,
    outcome: Outcome,
) -> Result<ActionOutput, ActionError> {
    if outcome.stop_reason == StopReason::Cancelled {
        return Err(ActionError::Cancelled);
    }
    let reduced = reduce(plan, &outcome.text)?;
    Ok(ActionOutput {
        kind: plan.kind,
        markdown: reduced.markdown,
        text: reduced.text,
        edit: reduced.edit,
        raw_text: outcome.text,
        format: prompt.format,
        prompt_tokens: prompt.ids.len(),
        truncated: prompt.truncated,
        stop_reason: outcome.stop_reason,
        timings: outcome.timings,
    })
}

fn reduce(plan: &Plan, answer: &str) -> Result<Reduced, ActionError> {
    let (markdown, text) = match plan.kind {
        ActionKind::Explain => {
            let markdown = answer.trim().to_string();
            if markdown.is_empty() {
                return Err(ActionError::EmptyAnswer);
            }
            let block = CommentSyntax::of(plan.language)
                .map(|s| render_comment_block(&markdown, s, &plan.insertion.indent))
                .unwrap_or_default();
            (markdown, block)
        }
        ActionKind::Generate | ActionKind::GenerateFromComment => {
            let code = generated_code(plan, answer)?;
            let tag = answer::fence_tag(plan.language);
            (format!("```{tag}\n{code}\n```"), code)
        }
        ActionKind::Document => {
            let function = plan.function.as_ref().ok_or(ActionError::EmptyAnswer)?;
            let doc_text = doc::doc_text(answer, &function.name);
            let comment = doc::render_doc(&doc_text, plan.language, function, &plan.body_indent)
                .ok_or(ActionError::EmptyAnswer)?;
            (doc_text, comment)
        }
    };
    let edit = (!text.is_empty()).then(|| {
        let ins = &plan.insertion;
        let mut new_text = String::new();
        if ins.leading_break {
            new_text.push('\n');
        }
        new_text.push_str(&text);
        let whole_lines = matches!(plan.kind, ActionKind::Explain | ActionKind::Document);
        if !whole_lines && ins.trailing_break {
            new_text.push('\n');
        }
        Edit {
            start: ins.range.start,
            end: ins.range.end,
            new_text: source::with_line_ending(&new_text, plan.line_ending),
        }
    });
    Ok(Reduced {
        markdown,
        text,
        edit,
    })
}

/// The answer's code, without lines that repeat the comment or the line it goes below, re-indented to
/// the insertion point.
fn generated_code(plan: &Plan, answer: &str) -> Result<String, ActionError> {
    let no_code = |reason| ActionError::NoCode {
        reason,
        excerpt: answer.trim().chars().take(200).collect(),
    };
    let code = extract_code(answer, plan.language).map_err(no_code)?;
    let mut lines: Vec<&str> = code.lines().collect();
    while lines
        .first()
        .is_some_and(|l| !l.trim().is_empty() && plan.echo.iter().any(|e| e == l.trim()))
    {
        lines.remove(0);
    }
    let context: Vec<String> = plan.before.iter().chain(&plan.after).cloned().collect();
    let code = answer::drop_repeated_context(&lines.join("\n"), &context);
    if code.trim().is_empty() {
        return Err(no_code(NoCode::Empty));
    }
    let ins = &plan.insertion;
    let mut code = reindent(&code, &ins.indent, plan.style);
    if ins.inline_start {
        code = code[ins.indent.len()..].to_string();
    }
    Ok(code)
}

/// Ends an explanation when the model starts repeating itself: a complete line of some length that
/// equals an earlier one is cut off with everything after it.
#[derive(Debug, Default)]
struct StopOnRepeatedLine;

impl StopPolicy for StopOnRepeatedLine {
    fn check(&mut self, text: &str) -> Option<usize> {
        let mut seen = std::collections::HashSet::new();
        let mut offset = 0;
        for line in text.split_inclusive('\n') {
            let start = offset;
            offset += line.len();
            if !line.ends_with('\n') {
                break;
            }
            let t = line.trim();
            if t.len() >= 24 && !t.starts_with("```") && !seen.insert(t) {
                return Some(start);
            }
        }
        None
    }
}
