//! One completion end to end, with no LSP in sight: document text and cursor → FIM prompt → engine →
//! suggestion. The CLI's `complete`, the language server, `eval` and the benchmarks all go through here,
//! so they behave the same.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;

use crate::language::Language;
use crate::postprocess::{self, StreamDecision, StreamStopper};
use crate::prompt::{BuiltPrompt, ContextChunk, FimInput, PromptBuilder, Truncation};
use codellama_engine::{
    Backend, CancelToken, Drafting, GenerateRequest, Generation, Outcome, SamplingParams,
    StopPolicy, StopReason, Timings,
};

/// Everything a completion needs besides the engine and prompt builder.
#[derive(Debug, Clone)]
pub struct CompletionRequest {
    pub prefix: String,
    /// The document line `prefix` starts on (0: `prefix` is all the text before the cursor).
    pub first_line: usize,
    pub suffix: String,
    pub path: Option<String>,
    pub language_id: Option<String>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// No post-processing and no structure-aware stopping: only EOS/EOT and `max_tokens` stop.
    pub raw: bool,
    pub cancel: CancelToken,
    /// Post-processing rules and limits.
    pub postprocess: postprocess::Config,
    /// Other open documents, most recently used first (used when the prompt builder allows context).
    pub extra: Vec<ContextChunk>,
    /// Token healing at the cursor (the `token_healing` setting); never in raw mode, and only with a
    /// backend that can constrain the first tokens.
    pub token_healing: bool,
    /// Speculative decoding's draft sources (greedy sampling only; the same output, sooner).
    pub speculative: Drafting,
    /// Runs of cached prompt tokens at least this long are reused at new positions
    /// (`GenerateRequest::cache_reuse`).
    pub cache_reuse: usize,
    /// A cold request (its prompt mostly not in the engine's caches) is answered from the same prompt
    /// in a smaller window when computing the whole would take more than this many tokens; the window
    /// grows back as later requests find its text cached (`GenerateRequest::shorter`). `None`: the
    /// engine's limit for its model; `Some(0)`: always the whole window.
    pub cold_prompt_tokens: Option<usize>,
}

impl CompletionRequest {
    pub fn new(prefix: impl Into<String>, suffix: impl Into<String>, max_tokens: usize) -> Self {
        Self {
            prefix: prefix.into(),
            first_line: 0,
            suffix: suffix.into(),
            path: None,
            language_id: None,
            max_tokens,
            sampling: SamplingParams::default(),
            raw: false,
            cancel: CancelToken::new(),
            postprocess: postprocess::Config::default(),
            extra: Vec::new(),
            token_healing: true,
            speculative: Drafting::ON,
            cache_reuse: codellama_engine::DEFAULT_CACHE_REUSE,
            cold_prompt_tokens: Some(0),
        }
    }

    /// The language, from the LSP language id or else the file name.
    pub fn language(&self) -> Language {
        match (&self.language_id, &self.path) {
            (Some(id), _) => Language::from_language_id(id),
            (None, Some(p)) => Language::from_path(Path::new(p)),
            (None, None) => Language::Other,
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
    /// Paths of the other documents shown to the model before the text around the cursor.
    pub context_paths: Vec<String>,
    pub stop_reason: StopReason,
    pub timings: Timings,
}

#[derive(Debug, thiserror::Error)]
pub enum CompletionError {
    #[error(transparent)]
    Prompt(#[from] crate::prompt::PromptError),
    #[error(transparent)]
    Engine(#[from] codellama_engine::EngineError),
}

/// A completion submitted to the engine, waiting for its outcome.
pub struct Pending {
    generation: Generation,
    /// The prompt, then the shorter ones the engine may have answered from instead.
    prompts: Vec<BuiltPrompt>,
    /// `None` in raw mode.
    stopper: Option<Arc<Mutex<StreamStopper>>>,
}

/// The post-processing rules, run inside the decode loop so the engine stops as soon as the suggestion
/// is complete. The time budget counts from when the suggestion was asked for (the prompt is built right
/// after the keystroke): the user's wait includes the queue and the prefill, not only the decode.
struct StreamPolicy {
    stopper: Arc<Mutex<StreamStopper>>,
    asked: Instant,
}

impl StopPolicy for StreamPolicy {
    fn check(&mut self, text: &str) -> Option<usize> {
        match self
            .stopper
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .check(text, self.asked.elapsed())
        {
            StreamDecision::Continue => None,
            StreamDecision::Stop { at, .. } => Some(at),
        }
    }
}

/// A completion whose prompt is built, not yet queued: the language server builds it off its async runtime
/// and queues it only if no newer request for the document came meanwhile.
pub struct Prepared {
    request: GenerateRequest,
    /// The prompt, then the shorter ones sent with it.
    prompts: Vec<BuiltPrompt>,
    stopper: Option<Arc<Mutex<StreamStopper>>>,
}

/// Builds the prompt and the generation request (tokenizes, so it takes a few milliseconds; nothing is
/// queued yet).
pub fn prepare(
    engine: &dyn Backend,
    builder: &PromptBuilder,
    req: &CompletionRequest,
) -> Result<Prepared, CompletionError> {
    let input = FimInput {
        prefix: &req.prefix,
        first_line: req.first_line,
        suffix: &req.suffix,
        path: req.path.as_deref(),
        language_id: req.language_id.as_deref(),
        extra: &req.extra,
        heal: req.token_healing && !req.raw && engine.heals_tokens(),
    };
    let info = engine.info();
    let cold_limit = req.cold_prompt_tokens.unwrap_or(info.cold_limit);
    let prompts = if cold_limit > 0 && !req.raw && engine.shortens_cold_prompts() {
        // Windows a quarter of the limit closer than the limit, so that the next one up is always within
        // reach of a request that finds the one below it cached.
        let step = cold_limit * 3 / 4;
        builder.fim_and_shorter(&input, req.max_tokens, info.context_window, step)?
    } else {
        vec![builder.fim(&input, req.max_tokens, info.context_window)?]
    };
    let prompt = &prompts[0];
    let mut gen = GenerateRequest::new(prompt.ids.clone(), req.max_tokens);
    gen.shorter = prompts[1..].iter().map(|p| p.ids.clone()).collect();
    gen.cold_limit = Some(cold_limit);
    gen.sampling = req.sampling.clone();
    gen.stop_ids = prompt.stop_ids.clone();
    gen.cancel = req.cancel.clone();
    gen.heal = prompt.heal.clone();
    gen.speculative = req.speculative;
    gen.cache_reuse = req.cache_reuse;
    let stopper = (!req.raw).then(|| {
        let ctx = postprocess::Context::new(&req.prefix, &req.suffix, req.language());
        Arc::new(Mutex::new(StreamStopper::new(&ctx, &req.postprocess)))
    });
    gen.policy = stopper.as_ref().map(|s| {
        Box::new(StreamPolicy {
            stopper: s.clone(),
            asked: Instant::now(),
        }) as Box<dyn StopPolicy>
    });
    Ok(Prepared {
        request: gen,
        prompts,
        stopper,
    })
}

impl Prepared {
    /// The prompt in the whole window.
    pub fn prompt(&self) -> &BuiltPrompt {
        &self.prompts[0]
    }

    /// Queues the generation (never blocks on the model).
    pub fn submit(self, engine: &dyn Backend) -> Pending {
        Pending {
            generation: engine.submit(self.request),
            prompts: self.prompts,
            stopper: self.stopper,
        }
    }
}

/// Builds the prompt and queues the generation (never blocks on the model).
pub fn submit(
    engine: &dyn Backend,
    builder: &PromptBuilder,
    req: &CompletionRequest,
) -> Result<Pending, CompletionError> {
    Ok(prepare(engine, builder, req)?.submit(engine))
}

impl Pending {
    pub fn cancel_token(&self) -> &CancelToken {
        &self.generation.cancel
    }

    /// [`Self::finish`], blocking the calling thread (CLI, benchmarks).
    pub fn wait(self) -> Result<Completion, CompletionError> {
        futures_executor::block_on(self.finish())
    }

    /// Waits asynchronously (the language server).
    pub async fn finish(self) -> Result<Completion, CompletionError> {
        let Pending {
            generation,
            mut prompts,
            stopper,
        } = self;
        let outcome = generation.finish().await?;
        let used = outcome.timings.shortened.min(prompts.len() - 1);
        Ok(finish(prompts.swap_remove(used), outcome, stopper))
    }
}

fn finish(
    prompt: BuiltPrompt,
    outcome: Outcome,
    stopper: Option<Arc<Mutex<StreamStopper>>>,
) -> Completion {
    let completion = match (&stopper, outcome.stop_reason) {
        (_, StopReason::Cancelled) => String::new(),
        (None, _) => outcome.text.clone(),
        (Some(s), _) => s
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .finalize(&outcome.text)
            .unwrap_or_default(),
    };
    Completion {
        completion,
        raw_text: outcome.text,
        prompt_ids: prompt.ids,
        generated_ids: outcome.generated_ids,
        template: prompt.template,
        truncated: prompt.truncated,
        context_paths: prompt.context_paths,
        stop_reason: outcome.stop_reason,
        timings: outcome.timings,
    }
}

/// Convenience: submit and wait.
pub fn complete(
    engine: &dyn Backend,
    builder: &PromptBuilder,
    req: &CompletionRequest,
) -> Result<Completion, CompletionError> {
    submit(engine, builder, req)?.wait()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The time budget counts from when the suggestion was asked for, so the time a request waited in the
    /// queue or in the prefill counts too.
    #[test]
    fn the_time_budget_counts_from_the_request() {
        let ctx = postprocess::Context::new("fn f() {", "\n}", Language::Rust);
        let config = postprocess::Config {
            time_budget: Duration::from_millis(100),
            ..postprocess::Config::default()
        };
        let policy = |asked: Instant| StreamPolicy {
            stopper: Arc::new(Mutex::new(StreamStopper::new(&ctx, &config))),
            asked,
        };
        let text = "\n    let x = 1;\n    let";
        let queued = Instant::now() - Duration::from_millis(150);
        assert_eq!(policy(queued).check(text), Some(15));
        assert_eq!(policy(Instant::now()).check(text), None);
    }
}
