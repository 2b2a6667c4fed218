//! The in-process model engine: loads llama-architecture models (GGUF or a Hugging Face directory),
//! tokenizes exactly as the model was trained, and generates tokens on one dedicated model thread that
//! owns the weights and the KV cache. Callers submit requests over a channel and receive tokens as they
//! are produced; every request carries a cancellation handle checked between tokens, prefill chunks and
//! layers. A prompt that shares a prefix with the previous one reuses the cached keys and values.

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(
    clippy::undocumented_unsafe_blocks,
    clippy::multiple_unsafe_ops_per_block
)]

mod draft;
pub mod error;
pub mod gguf;
pub mod http;
pub mod hub;
mod kernels;
mod load;
mod memory;
mod model;
mod pool;
mod prompt_cache;
pub mod remote_error;
pub mod resolve;
pub mod sampler;
#[cfg(test)]
mod tests;
pub mod tokenizer;
mod worker;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

pub use error::{EngineError, Result};
pub use kernels::attention::KvType;
pub use load::{load_model, LoadOptions, LoadedModel};
pub use model::{Arch, ModelConfig};
pub use pool::default_threads;
pub use remote_error::{RemoteError, RemoteErrorKind};
pub use sampler::SamplingParams;
pub use tokenizer::Tokenizer;
pub use worker::stop_string_cut;

/// What callers may know about the loaded model.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    /// `general.name`, or the file name.
    pub name: String,
    pub path: PathBuf,
    pub config: ModelConfig,
    /// Positions the KV cache holds (the configured window, at most the trained context).
    pub context_window: usize,
    pub file_size: u64,
    pub load_ms: u64,
    pub threads: usize,
    pub device: String,
    /// Problems found while loading that did not stop it (e.g. a missing rope base).
    pub warnings: Vec<String>,
    /// The most prompt tokens a cold request computes before it is answered from one of its shorter
    /// prompts, unless it says otherwise ([`GenerateRequest::shorter`]); sized by the model. 0: the
    /// backend never shortens a prompt.
    pub cold_limit: usize,
}

/// A shared flag; setting it stops the request it was given to within one token. The model thread reads
/// the flag; async waiters (remote requests, downloads) are woken by the `CancellationToken` beside it.
#[derive(Debug, Clone, Default)]
pub struct CancelToken {
    flag: Arc<AtomicBool>,
    wake: tokio_util::sync::CancellationToken,
}

impl CancelToken {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn cancel(&self) {
        self.flag.store(true, Ordering::SeqCst);
        self.wake.cancel();
    }
    pub fn is_cancelled(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }
    /// Completes once [`CancelToken::cancel`] has been called.
    pub async fn cancelled(&self) {
        self.wake.cancelled().await
    }
}

/// Decides, from the text generated so far, whether the answer is complete. `Some(n)` stops generation
/// and keeps the first `n` bytes. Post-processing plugs its streaming rules in here; a policy with a time
/// budget keeps its own clock (a suggestion's starts when the user asked, before the request queued).
pub trait StopPolicy: Send {
    fn check(&mut self, text: &str) -> Option<usize>;
}

pub struct GenerateRequest {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Stop at the model's end-of-generation tokens (EOS, EOT...). Off only for raw benchmarking.
    pub stop_at_eog: bool,
    /// Extra token ids that end the generation (excluded from the output).
    pub stop_ids: Vec<u32>,
    /// Strings that end the generation; the text is cut before the first one.
    pub stop_strings: Vec<String>,
    pub policy: Option<Box<dyn StopPolicy>>,
    pub cancel: CancelToken,
    /// Token healing: text the generation must begin with, which the prompt left out. The first tokens
    /// are constrained to spell it; it is not part of the reported text or token events. Only backends
    /// whose [`Backend::heals_tokens`] is true honour it.
    pub heal: String,
    /// Speculative decoding: when sampling is greedy, drafted tokens are verified in one forward pass. The
    /// output is the same either way; only the speed differs.
    pub speculative: Drafting,
    /// Runs of at least this many prompt tokens that a prompt cache holds at other positions than the
    /// prompt has them are moved into place instead of computed again (see `prompt_cache::plan`); 0: only
    /// the prefix a cache shares with the prompt is reused. Moved keys and values are those computed
    /// with the old context before them, so the output may differ from computing the prompt afresh.
    pub cache_reuse: usize,
    /// Shorter prompts for the same request, longest first (the same text around the cursor in smaller
    /// windows). When the caches hold so little of `prompt` that computing the rest would take more
    /// than `cold_limit` tokens, the engine answers from the longest of these it can compute within
    /// that many (or else the one needing the fewest); [`Outcome::shortened`] says which. Only backends
    /// whose [`Backend::shortens_cold_prompts`] is true look at them.
    pub shorter: Vec<Vec<u32>>,
    /// The most prompt tokens to compute before choosing a shorter prompt; `None`: the engine's own,
    /// [`ModelInfo::cold_limit`].
    pub cold_limit: Option<usize>,
}

/// [`GenerateRequest::cache_reuse`] unless set: about six lines of code. Measured with the typing replay
/// (`bench --lsp --replay`, Qwen2.5-Coder 1.5B, 2 threads): pauses of 1 s or more with a suggestion 26%
/// without moving runs, 39% with runs of 256 (llama.vscode's advice for llama.cpp's `--cache-reuse`),
/// 52% with 64.
pub const DEFAULT_CACHE_REUSE: usize = 64;

/// Where speculative decoding's drafts come from. Only greedy sampling drafts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Drafting {
    /// The tokens that followed the last few tokens where they occurred before in the prompt or the answer.
    pub prompt_lookup: bool,
    /// The draft model's greedy guesses, when one is loaded (`LoadOptions::draft_model`).
    pub draft_model: bool,
}

impl Drafting {
    pub const OFF: Drafting = Drafting {
        prompt_lookup: false,
        draft_model: false,
    };
    /// Every source there is (the `speculative` setting).
    pub const ON: Drafting = Drafting {
        prompt_lookup: true,
        draft_model: true,
    };

    pub fn is_on(self) -> bool {
        self.prompt_lookup || self.draft_model
    }
}

impl From<bool> for Drafting {
    fn from(on: bool) -> Self {
        if on {
            Drafting::ON
        } else {
            Drafting::OFF
        }
    }
}

/// The draft model an engine loaded beside its model.
#[derive(Debug, Clone, Serialize)]
pub struct DraftInfo {
    pub name: String,
    pub path: PathBuf,
    pub file_size: u64,
    pub load_ms: u64,
}

impl GenerateRequest {
    /// The prompt, then the shorter ones the request may be answered from.
    pub fn prompts(&self) -> impl Iterator<Item = &[u32]> {
        std::iter::once(&self.prompt)
            .chain(&self.shorter)
            .map(Vec::as_slice)
    }

    pub fn new(prompt: Vec<u32>, max_tokens: usize) -> Self {
        Self {
            prompt,
            max_tokens,
            sampling: SamplingParams::default(),
            stop_at_eog: true,
            stop_ids: Vec::new(),
            stop_strings: Vec::new(),
            policy: None,
            cancel: CancelToken::new(),
            heal: String::new(),
            speculative: Drafting::ON,
            cache_reuse: DEFAULT_CACHE_REUSE,
            shorter: Vec::new(),
            cold_limit: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    EndOfGeneration,
    StopString,
    Policy,
    MaxTokens,
    ContextFull,
    Cancelled,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings {
    /// Time spent waiting for the model thread.
    pub queue_ms: f64,
    pub prefill_ms: f64,
    pub decode_ms: f64,
    pub prompt_tokens: usize,
    /// Prompt tokens whose keys and values were already in the cache.
    pub reused_tokens: usize,
    /// Of those, the ones moved from other positions (`GenerateRequest::cache_reuse`).
    pub moved_tokens: usize,
    /// Prompt tokens this request ran through the model (a cancelled request: those it started).
    pub computed_tokens: usize,
    /// Of those, the ones whose work was lost: a prefill chunk cancelled part of the way through.
    pub discarded_tokens: usize,
    pub generated_tokens: usize,
    /// Speculative decoding: tokens drafted and verified, and how many of them the model agreed with.
    pub drafted_tokens: usize,
    pub accepted_tokens: usize,
    /// Which prompt the request was answered from: 0 its own, `k` its `k`-th shorter one
    /// ([`GenerateRequest::shorter`]); `prompt_tokens` counts that one.
    pub shortened: usize,
    /// Prompt tokens the model thread computed while idle since the request before (the whole window's
    /// prompt of a request answered from a shorter one), and of them the ones whose work was lost when a
    /// request came part of the way through a chunk.
    pub idle_tokens: usize,
    pub idle_discarded_tokens: usize,
    /// Of the computed (this request's and the idle ones), those whose pass went on from the layer where
    /// a stopped pass over them had left it: counted as lost when that pass stopped, they were not.
    pub resumed_tokens: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// Generated ids, stop token excluded.
    pub generated_ids: Vec<u32>,
    /// Their text, cut at a stop string or where the stop policy said.
    pub text: String,
    pub stop_reason: StopReason,
    pub stop_token: Option<u32>,
    pub timings: Timings,
}

impl Outcome {
    /// A request cancelled before it generated anything.
    pub fn cancelled(timings: Timings) -> Self {
        Self {
            generated_ids: Vec::new(),
            text: String::new(),
            stop_reason: StopReason::Cancelled,
            stop_token: None,
            timings,
        }
    }
}

/// Milliseconds since `t`, as `Timings` counts them.
pub fn ms_since(t: std::time::Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

pub enum Event {
    Token { id: u32, text: String },
    Finished(Result<Outcome>),
}

/// A submitted request: its events as they come, and its cancellation handle.
pub struct Generation {
    pub events: UnboundedReceiver<Event>,
    pub cancel: CancelToken,
}

impl Generation {
    /// [`Self::finish`], blocking the calling thread (CLI, eval); not for use on an async runtime.
    pub fn wait(self) -> Result<Outcome> {
        futures_executor::block_on(self.finish())
    }

    /// Waits asynchronously for the outcome.
    pub async fn finish(mut self) -> Result<Outcome> {
        while let Some(ev) = self.events.recv().await {
            if let Event::Finished(r) = ev {
                return r;
            }
        }
        Err(EngineError::Stopped)
    }
}

/// Something that runs generation requests: the in-process engine, or a remote inference server
/// (`backends`). Prompt building, post-processing and the language server only talk to this.
pub trait Backend: Send + Sync {
    /// Queues a request; tokens arrive on the returned generation's channel. Never blocks.
    fn submit(&self, req: GenerateRequest) -> Generation;
    fn tokenizer(&self) -> &Arc<Tokenizer>;
    fn info(&self) -> &Arc<ModelInfo>;
    /// Whether the backend constrains the first tokens to [`GenerateRequest::heal`] (a remote engine
    /// cannot, so prompts for it are built without healing).
    fn heals_tokens(&self) -> bool {
        false
    }
    /// Whether the backend answers a cold request from one of its [`GenerateRequest::shorter`] prompts
    /// (a remote engine takes the prompt as it is, so none are built for it).
    fn shortens_cold_prompts(&self) -> bool {
        false
    }
}

impl Backend for Engine {
    fn submit(&self, req: GenerateRequest) -> Generation {
        Engine::submit(self, req)
    }
    fn tokenizer(&self) -> &Arc<Tokenizer> {
        Engine::tokenizer(self)
    }
    fn info(&self) -> &Arc<ModelInfo> {
        Engine::info(self)
    }
    fn heals_tokens(&self) -> bool {
        true
    }
    fn shortens_cold_prompts(&self) -> bool {
        true
    }
}

/// Handle to the model thread. Dropping it stops the thread after the current request.
pub struct Engine {
    jobs: Mutex<Option<std::sync::mpsc::Sender<worker::Job>>>,
    tokenizer: Arc<Tokenizer>,
    info: Arc<ModelInfo>,
    draft: Option<std::result::Result<DraftInfo, String>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Engine {
    /// Starts the model thread and loads the model in it (and the draft model, if one is named); returns
    /// once the model is ready. `progress` receives the loaded fraction (0..=1). A draft model that cannot
    /// be used does not stop the start: [`Engine::draft`] says why, and decoding goes on without it.
    pub fn start(opts: LoadOptions, progress: Box<dyn FnMut(f32) + Send>) -> Result<Self> {
        let (jobs, tokenizer, info, draft, thread) = worker::spawn(opts, progress)?;
        Ok(Self {
            jobs: Mutex::new(Some(jobs)),
            tokenizer,
            info,
            draft,
            thread: Mutex::new(Some(thread)),
        })
    }

    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tokenizer
    }

    pub fn info(&self) -> &Arc<ModelInfo> {
        &self.info
    }

    /// The draft model: `None` when none was named, otherwise the one loaded or why it is not used.
    pub fn draft(&self) -> Option<&std::result::Result<DraftInfo, String>> {
        self.draft.as_ref()
    }

    /// Queues a request; tokens arrive on the returned generation's channel.
    pub fn submit(&self, req: GenerateRequest) -> Generation {
        let (tx, rx) = unbounded_channel();
        let cancel = req.cancel.clone();
        let job = worker::Job {
            req,
            events: tx.clone(),
            queued: std::time::Instant::now(),
        };
        let sent = self
            .jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|jobs| jobs.send(job).is_ok())
            .unwrap_or(false);
        if !sent {
            let _ = tx.send(Event::Finished(Err(EngineError::Stopped)));
        }
        Generation { events: rx, cancel }
    }

    /// Submits and waits (blocking).
    pub fn generate(&self, req: GenerateRequest) -> Result<Outcome> {
        self.submit(req).wait()
    }

    /// Stops the model thread and waits for it.
    pub fn shutdown(&self) {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}
