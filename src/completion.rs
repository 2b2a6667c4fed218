//! One completion end to end, with no LSP in sight: document text and cursor → FIM prompt → engine →
//! suggestion. The CLI's `complete`, the language server, `eval` and the benchmarks all go through here,
//! so they behave the same.

use std::sync::Arc;

use serde::Serialize;

use crate::engine::{CancelToken, Engine, GenerateRequest, Generation, Outcome, SamplingParams, StopReason, Timings};
use crate::prompt::{BuiltPrompt, FimInput, PromptBuilder, Truncation};

/// Everything a completion needs besides the engine and prompt builder.
#[derive(Debug, Clone)]
pub struct CompletionRequest {
    pub prefix: String,
    pub suffix: String,
    pub path: Option<String>,
    pub language_id: Option<String>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// No post-processing and no structure-aware stopping: only EOS/EOT and `max_tokens` stop.
    pub raw: bool,
    pub cancel: CancelToken,
    /// A newer request with the same key cancels this one (the server uses the document URI).
    pub supersede_key: Option<String>,
}

impl CompletionRequest {
    pub fn new(prefix: impl Into<String>, suffix: impl Into<String>, max_tokens: usize) -> Self {
        Self {
            prefix: prefix.into(),
            suffix: suffix.into(),
            path: None,
            language_id: None,
            max_tokens,
            sampling: SamplingParams::default(),
            raw: false,
            cancel: CancelToken::new(),
            supersede_key: None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Completion {
    /// The suggestion to show (empty: nothing worth showing).
    pub completion: String,
    /// What the model generated, before post-processing.
    pub raw_text: String,
    pub prompt_ids: Vec<u32>,
    /// Generated ids before post-processing, stop token excluded.
    pub generated_ids: Vec<u32>,
    pub template: String,
    pub truncated: Truncation,
    pub stop_reason: StopReason,
    pub timings: Timings,
}

#[derive(Debug, thiserror::Error)]
pub enum CompletionError {
    #[error(transparent)]
    Prompt(#[from] crate::prompt::PromptError),
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
}

/// A completion submitted to the engine, waiting for its outcome.
pub struct Pending {
    generation: Generation,
    prompt: BuiltPrompt,
    raw: bool,
}

/// Builds the prompt and queues the generation (never blocks on the model).
pub fn submit(engine: &Engine, builder: &PromptBuilder, req: &CompletionRequest) -> Result<Pending, CompletionError> {
    let input = FimInput {
        prefix: &req.prefix,
        suffix: &req.suffix,
        path: req.path.as_deref(),
        language_id: req.language_id.as_deref(),
    };
    let prompt = builder.fim(&input, req.max_tokens, engine.info().context_window)?;
    let mut gen = GenerateRequest::new(prompt.ids.clone(), req.max_tokens);
    gen.sampling = req.sampling.clone();
    gen.stop_ids = prompt.stop_ids.clone();
    gen.cancel = req.cancel.clone();
    gen.supersede_key = req.supersede_key.clone();
    Ok(Pending {
        generation: engine.submit(gen),
        prompt,
        raw: req.raw,
    })
}

impl Pending {
    pub fn cancel_token(&self) -> &CancelToken {
        &self.generation.cancel
    }

    /// Waits on the calling thread (CLI, benchmarks).
    pub fn wait(self) -> Result<Completion, CompletionError> {
        let Pending { generation, prompt, raw } = self;
        let outcome = generation.wait()?;
        Ok(finish(prompt, outcome, raw))
    }

    /// Waits asynchronously (the language server).
    pub async fn finish(self) -> Result<Completion, CompletionError> {
        let Pending { generation, prompt, raw } = self;
        let outcome = generation.finish().await?;
        Ok(finish(prompt, outcome, raw))
    }
}

fn finish(prompt: BuiltPrompt, outcome: Outcome, raw: bool) -> Completion {
    let completion = if raw || outcome.stop_reason == StopReason::Cancelled {
        outcome.text.clone()
    } else {
        outcome.text.trim_end().to_string()
    };
    Completion {
        completion,
        raw_text: outcome.text,
        prompt_ids: prompt.ids,
        generated_ids: outcome.generated_ids,
        template: prompt.template,
        truncated: prompt.truncated,
        stop_reason: outcome.stop_reason,
        timings: outcome.timings,
    }
}

/// Convenience: submit and wait.
pub fn complete(engine: &Engine, builder: &PromptBuilder, req: &CompletionRequest) -> Result<Completion, CompletionError> {
    submit(engine, builder, req)?.wait()
}

/// Shared handle type for callers that keep a builder per engine.
pub type SharedBuilder = Arc<PromptBuilder>;
