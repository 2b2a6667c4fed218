//! The model thread: owns the weights, the KV caches and the tokens each holds; serves one request at a
//! time from its queue. A request keeps what a cache holds of its prompt (`prompt_cache`) and computes
//! only the rest. With greedy sampling, drafted tokens are verified in one forward
//! pass: the model's own choices decide, row by row, how many are kept, and the cache forgets the rest.
//! Drafts come from prompt lookup (`draft`) or from a draft model with the same vocabulary, which the
//! thread also owns, with a cache beside each of the model's kept in step the same way (its rejected
//! guesses are forgotten the way a changed prompt is). A panic inside a request is caught, the caches are
//! reset, and the thread goes on serving.

use std::cell::{Cell, RefCell};
use std::collections::{HashSet, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;

use super::draft::PromptLookup;
use super::error::{EngineError, Result};
use super::load::{load_draft_model, load_model, LoadOptions, LoadedModel};
use super::memory::release_freed_memory;
use super::model::{Llama, Logits, ModelConfig};
use super::pool::default_threads;
use super::prompt_cache::{CachedPrompt, PromptCaches};
use super::sampler::{argmax, Sampler};
use super::tokenizer::{IncrementalDecoder, Tokenizer};
use super::{
    ms_since, CancelToken, DraftInfo, Drafting, Event, GenerateRequest, ModelInfo, Outcome,
    StopReason, Timings,
};

/// Prompt tokens computed per forward call at most; cancellation is also checked between layers.
const PREFILL_CHUNK: usize = 256;

/// Weights times tokens a prefill chunk computes at most: 256 tokens of a model of 1.6 billion weights.
/// A keystroke whose request does not share the chunk in progress loses it; sized by the model, a chunk
/// is about the same work for every model (about 1.5 s on two Zen 4 cores) and the same on every machine,
/// so that a prompt is computed in the same steps, with the same rounding, every time.
const CHUNK_WORK: f64 = 256.0 * 1.6e9;

/// The smallest prefill chunk: batches this long take the attention's f32 path (`TILE_ROWS`), as longer
/// ones do.
const MIN_CHUNK: usize = 64;

/// Prompt tokens per prefill chunk for a model of `cfg`'s shape: [`CHUNK_WORK`] over its weights, in steps
/// of 16, from [`MIN_CHUNK`] to [`PREFILL_CHUNK`]. Qwen2.5-Coder 0.5B and 1.5B get 256 tokens, a Code Llama
/// 7B 64 (1.8 s on two cores, where 256 took 7 s). Small chunks cost little: `bench --prefill 32,64,256`
/// with the 7B shape (Q4_K_M, 2 threads, AMD EPYC Zen 4) ran at 33.3, 35.3 and 33.8 tok/s, and
/// Qwen2.5-Coder 1.5B at 170, 180 (128), 186 (160) and 173 tok/s for 64 to 256 tokens.
fn prefill_chunk(cfg: &ModelConfig) -> usize {
    let n = (CHUNK_WORK / cfg.weights() as f64) as usize / 16 * 16;
    n.clamp(MIN_CHUNK, PREFILL_CHUNK)
}

/// Weights times tokens a request computes at most before it answers from a shorter prompt
/// ([`GenerateRequest::shorter`]): 192 tokens of a model of 1.6 billion weights, about 1 s on two Zen 4
/// cores, so that after a jump to a file or function the caches do not hold, a suggestion comes
/// within a pause instead of after the whole window (12 s for Qwen2.5-Coder 1.5B). The whole window's
/// prompt is then computed while the model is idle ([`Growth`]).
const COLD_WORK: f64 = 192.0 * 1.6e9;

/// The bounds of the automatic cold limit: a 7B model gets the lower one (about 2 s on two cores).
const COLD_LIMITS: std::ops::RangeInclusive<usize> = 64..=4096;

/// Prompt tokens per forward call of the growth computed while idle ([`Growth`]): a request that comes
/// meanwhile stops it within a layer; the layers done are kept for the growth to go on with.
const GROWTH_CHUNK: usize = 64;

/// [`ModelInfo::cold_limit`]: [`COLD_WORK`] over the model's weights, within [`COLD_LIMITS`].
/// Qwen2.5-Coder 1.5B gets 199 tokens, 0.5B 621, a Code Llama 7B 64.
fn cold_limit(cfg: &ModelConfig) -> usize {
    let n = (COLD_WORK / cfg.weights() as f64) as usize;
    n.clamp(*COLD_LIMITS.start(), *COLD_LIMITS.end())
}

/// The most tokens the draft model guesses in a row. Measured with Qwen2.5-Coder 0.5B drafting for 1.5B at 2
/// threads (`bench --code`, holes of real code): up to 3 guesses, 87% accepted, 3.05 tokens per pass; up to
/// 7, 78% and 4.4 tokens per pass but 8% slower still, as each guess costs a step of the draft model (about
/// half of a 1.5B step then) and a verification wider than one tile of 4 rows costs more (see
/// [`draft::SHORT_DRAFT`](super::draft::SHORT_DRAFT)). With the draft model's step down to about a fifth
/// of the 1.5B's (`Weights::Compact`, Q5_0 packed), 3 stayed the best on HumanEval's multi-line holes
/// (1.63x and 1.51x, against up to 4 guesses 1.49x and 1.31x, up to 5 with probability 0.6 1.44x and
/// 1.54x, taking turns).
const MAX_MODEL_DRAFT: usize = 3;

/// The token ids the draft model guesses among: the first 32,768. Byte-pair vocabularies number their
/// tokens in the order their merges were learnt, the most frequent first: these cover 96% of the tokens
/// of HumanEval's multi-line solutions under Qwen2.5-Coder's vocabulary (60 problems; 99% with the
/// tokens of the text around each hole, which prompt lookup drafts). The output matrix (151,936 rows)
/// is over a third of what a step of Qwen2.5-Coder 0.5B reads; computing a fifth of its rows makes the
/// step about a quarter cheaper, for guesses a token further down would have made right. Measured with
/// the 0.5B drafting for the 1.5B (`bench --humaneval multi-line --points 20 --draft-model`, 2 threads):
/// 86% of guesses accepted with the whole vocabulary, 80% with these; the draft model alone 1.18x
/// against 1.37x, with prompt lookup 1.23x against 1.45x (16,384 ids: 78%, 1.33x; 8,192: 74%, 1.30x).
const DRAFT_VOCAB: usize = 32_768;

/// The most prompt tokens the draft model computes before a keystroke's suggestion ([`DraftModel::lags`]):
/// a growth chunk, about what a keystroke's own prompt costs the model at most. Drafting gains a
/// suggestion of ten tokens from Qwen2.5-Coder 1.5B about 60 ms in the typing replay (1.17x), while the
/// 0.5B drafting for it took 1.15 s on two cores to read a prompt of 884 tokens it had not seen.
const DRAFT_CATCH_UP: usize = GROWTH_CHUNK;

/// The draft model stops guessing when its top token's probability falls below this: a guess it is unsure
/// of is mostly rejected, and each guess costs a step of the draft model.
const MIN_DRAFT_PROBABILITY: f32 = 0.5;

/// Prompt tokens at the end computed as a chunk of their own (see `Worker::generate`).
const TAIL_CHUNK: usize = 16;

/// How long a cancelled prefill goes on waiting for the request that replaces it (an editor cancels the
/// running request, then asks again after the keystroke): when that one shares the chunk in progress, the
/// chunk is finished for it instead of thrown away.
const TAKEOVER_WAIT: Duration = Duration::from_millis(150);

pub struct Job {
    pub req: GenerateRequest,
    pub events: UnboundedSender<Event>,
    pub queued: Instant,
}

/// What was made of `LoadOptions::draft_model`: `None` when none was named.
type DraftStatus = Option<std::result::Result<DraftInfo, String>>;

type Spawned = (
    Sender<Job>,
    Arc<Tokenizer>,
    Arc<ModelInfo>,
    DraftStatus,
    std::thread::JoinHandle<()>,
);

pub fn spawn(opts: LoadOptions, mut progress: Box<dyn FnMut(f32) + Send>) -> Result<Spawned> {
    let (job_tx, job_rx) = std::sync::mpsc::channel::<Job>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("codellama-model".into())
        .spawn(move || {
            run(opts, &mut *progress, ready_tx, job_rx);
            // Everything the thread owned (weights, cache, compute threads) is dropped by now.
            release_freed_memory();
        })
        .map_err(|e| EngineError::Compute(format!("cannot start the model thread: {e}")))?;
    match ready_rx.recv() {
        Ok(Ok((tokenizer, info, draft))) => Ok((job_tx, tokenizer, info, draft, thread)),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => Err(EngineError::Stopped),
    }
}

type Ready = std::sync::mpsc::Sender<Result<(Arc<Tokenizer>, Arc<ModelInfo>, DraftStatus)>>;

/// The model thread's life: load, report, serve until the engine is dropped.
fn run(opts: LoadOptions, progress: &mut dyn FnMut(f32), ready: Ready, jobs: Receiver<Job>) {
    let threads = opts.threads.unwrap_or_else(default_threads).max(1);
    let pool = match rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("codellama-compute-{i}"))
        .build()
    {
        Ok(p) => p,
        Err(e) => {
            let _ = ready.send(Err(EngineError::Compute(e.to_string())));
            return;
        }
    };
    let loaded = guarded(opts.model.as_deref(), || load_model(&opts, progress));
    let mut loaded = match loaded {
        Ok(l) => l,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    if let Err(e) = loaded.model.set_threads(threads) {
        let _ = ready.send(Err(e));
        return;
    }
    let window = loaded.info.context_window;
    let bytes_each = loaded.model.kv_cache_bytes(window);
    let count = opts
        .prompt_caches
        .unwrap_or_else(|| PromptCaches::auto_count(bytes_each));
    let caches = match PromptCaches::new(count, || loaded.model.new_cache(window)) {
        Ok(c) => c,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    tracing::info!(
        "prompt caches: {}, of {window} positions and at most {:.0} MB each",
        caches.len(),
        bytes_each as f64 / 1e6
    );
    let (draft, draft_status) = match opts.draft_model.as_deref() {
        Some(spec) => match load_draft(&opts, &loaded, spec, caches.len()) {
            Ok((draft, info)) => (Some(draft), Some(Ok(info))),
            Err(e) => {
                tracing::error!("{e}");
                (None, Some(Err(e.to_string())))
            }
        },
        None => (None, None),
    };
    let chunk = opts
        .prefill_chunk
        .unwrap_or_else(|| prefill_chunk(&loaded.info.config))
        .max(1);
    let cold_limit = cold_limit(&loaded.info.config);
    loaded.info.cold_limit = cold_limit;
    tracing::info!("prefill chunks of {chunk} tokens; cold requests compute at most {cold_limit}");
    let _ = ready.send(Ok((
        loaded.tokenizer.clone(),
        Arc::new(loaded.info),
        draft_status,
    )));
    let mut worker = Worker {
        eog: loaded
            .tokenizer
            .end_of_generation_ids()
            .into_iter()
            .collect(),
        model: loaded.model,
        tokenizer: loaded.tokenizer,
        caches,
        active: 0,
        draft,
        early: VecDeque::new(),
        chunk,
        cold_limit,
        growth: None,
        idle: (0, 0, 0),
    };
    pool.install(|| worker.serve(jobs));
}

/// Runs a loader, turning a panic into an error that names the model.
fn guarded<T>(model: Option<&str>, load: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(AssertUnwindSafe(load)).unwrap_or_else(|_| {
        Err(EngineError::Compute(format!(
            "the model loader panicked on {}",
            model.unwrap_or("the default model")
        )))
    })
}

/// Loads the draft model `spec` for `main`, with `caches` caches as long as the model's (one beside each of
/// the model's).
fn load_draft(
    opts: &LoadOptions,
    main: &LoadedModel,
    spec: &str,
    caches: usize,
) -> Result<(DraftModel, DraftInfo)> {
    let start = Instant::now();
    let mut loaded = guarded(Some(spec), || load_draft_model(opts, main, spec))?;
    loaded.model.share_threads(&main.model);
    let window = main.info.context_window;
    let caches = PromptCaches::new(caches, || loaded.model.new_cache(window))?;
    let info = DraftInfo {
        name: loaded.info.name,
        path: loaded.info.path,
        file_size: loaded.info.file_size,
        load_ms: start.elapsed().as_millis() as u64,
    };
    let draft = DraftModel {
        model: loaded.model,
        caches,
        active: 0,
        vocab: main.tokenizer.vocab_size(),
    };
    Ok((draft, info))
}

struct Worker {
    model: Llama,
    tokenizer: Arc<Tokenizer>,
    caches: PromptCaches,
    /// The cache the current request works in.
    active: usize,
    /// The draft model, when one is loaded.
    draft: Option<DraftModel>,
    eog: HashSet<u32>,
    /// Jobs taken from the queue while a cancelled prefill looked for the request replacing it; served
    /// first, in order.
    early: VecDeque<Job>,
    /// Prompt tokens per prefill chunk.
    chunk: usize,
    /// [`ModelInfo::cold_limit`].
    cold_limit: usize,
    /// The prompt computed while no request waits, if any.
    growth: Option<Growth>,
    /// Tokens it computed since the last request, of them those lost, and those that went on with a
    /// stopped pass: the next request's `Timings::idle_tokens`, `idle_discarded_tokens` and (part of)
    /// `resumed_tokens`.
    idle: (usize, usize, usize),
}

/// The whole-window prompt of the last request, which was answered from a shorter one: the model thread
/// computes it in the request's cache while no other request waits (and then in the draft model's cache
/// beside it, if one is loaded), so that a later keystroke finds it cached and gets the whole window
/// again. A request that comes stops it within a layer; the next
/// request replaces it (or ends it, if that one was not shortened).
struct Growth {
    prompt: Vec<u32>,
    cache: usize,
    /// `GenerateRequest::cache_reuse` of the request.
    min_run: usize,
    /// Whether the model's cache, and the draft model's, were set up for the prompt (their held runs
    /// moved into place).
    started: [bool; 2],
}

impl Worker {
    fn serve(&mut self, jobs: Receiver<Job>) {
        while let Some(job) = self.next_job(&jobs) {
            let Job {
                mut req,
                events,
                queued,
            } = job;
            let queue_ms = queued.elapsed().as_secs_f64() * 1e3;
            let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
                self.generate(&mut req, &events, &jobs)
            }));
            let result = match result {
                Ok(r) => r,
                Err(panic) => {
                    self.reset();
                    let msg = panic
                        .downcast_ref::<String>()
                        .map(String::as_str)
                        .or_else(|| panic.downcast_ref::<&str>().copied())
                        .unwrap_or("unknown panic");
                    tracing::error!("model thread recovered from a panic: {msg}");
                    Err(EngineError::Compute(format!("internal error: {msg}")))
                }
            };
            let result = result.map(|mut o| {
                o.timings.queue_ms = queue_ms;
                o
            });
            let _ = events.send(Event::Finished(result));
        }
    }

    /// The next request to serve, computing the growth ([`Growth`]) while none waits; `None` once the
    /// engine is dropped.
    fn next_job(&mut self, jobs: &Receiver<Job>) -> Option<Job> {
        loop {
            if let Some(job) = self.early.pop_front() {
                return Some(job);
            }
            if self.growth.is_none() {
                return jobs.recv().ok();
            }
            match jobs.try_recv() {
                Ok(job) => return Some(job),
                Err(std::sync::mpsc::TryRecvError::Disconnected) => return None,
                Err(std::sync::mpsc::TryRecvError::Empty) => {
                    let grown = std::panic::catch_unwind(AssertUnwindSafe(|| self.grow(jobs)));
                    if grown.is_err() {
                        tracing::error!("model thread recovered from a panic while idle");
                        self.growth = None;
                        self.reset();
                    }
                }
            }
        }
    }

    /// One chunk of the growth: the model's cache first, then the draft model's beside it, if any; ends
    /// the growth once both hold its prompt but for the last tokens (those the next keystroke changes),
    /// or on an error. A request coming meanwhile stops the chunk (it goes to `early`); the cache keeps
    /// the layer it reached, and the growth goes on from there unless the request changed that cache.
    fn grow(&mut self, jobs: &Receiver<Job>) {
        let Some(g) = self.growth.as_mut() else {
            return;
        };
        let tail = g.prompt.len().saturating_sub(TAIL_CHUNK);
        let model_cache = self.caches.get(g.cache);
        let model_done = g.started[0] && model_cache.tokens().len() >= tail;
        let (model, cache, started) = match (model_done, self.draft.as_mut()) {
            (false, _) => (&mut self.model, model_cache, &mut g.started[0]),
            (true, Some(d)) => (&mut d.model, d.caches.get(g.cache), &mut g.started[1]),
            (true, None) => {
                self.growth = None;
                return;
            }
        };
        if !*started {
            cache.keep(&g.prompt, tail, g.min_run);
            *started = true;
        }
        if cache.tokens().len() >= tail {
            self.growth = None;
            return;
        }
        let chunk = &g.prompt[cache.next_chunk(&g.prompt, GROWTH_CHUNK, tail)];
        let early = RefCell::new(&mut self.early);
        let stop = || {
            let mut early = early.borrow_mut();
            early.extend(jobs.try_iter());
            !early.is_empty()
        };
        self.idle.0 += chunk.len();
        if cache.kv().goes_on_with(chunk) {
            self.idle.2 += chunk.len();
        }
        match model.forward_cancellable(chunk, cache.kv(), Logits::Last, &stop) {
            Ok(_) => cache.extend(chunk),
            Err(EngineError::Cancelled) => self.idle.1 += chunk.len(),
            Err(e) => {
                tracing::warn!("computing the whole window's prompt while idle: {e}");
                self.growth = None;
            }
        }
    }

    fn reset(&mut self) {
        self.caches.clear();
        if let Some(draft) = self.draft.as_mut() {
            draft.caches.clear();
        }
    }

    /// The cache the current request works in.
    fn cache(&mut self) -> &mut CachedPrompt {
        self.caches.get(self.active)
    }

    fn validate(&self, prompt: &[u32]) -> Result<()> {
        if prompt.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        let vocab = self.model.cfg.vocab_size;
        if let Some(&id) = prompt.iter().find(|&&t| t as usize >= vocab) {
            return Err(EngineError::BadToken { id, vocab });
        }
        if prompt.len() >= self.caches.capacity() {
            return Err(EngineError::PromptTooLong {
                prompt_tokens: prompt.len(),
                context: self.caches.capacity(),
            });
        }
        Ok(())
    }

    /// Swaps in the shorter prompt a cold request is answered from, if any, and says which (0: none;
    /// `k`: the whole prompt is now `req.shorter[k - 1]`): the prompt itself when computing what the
    /// caches lack of it takes at most the cold limit, else the longest shorter one within it, else the
    /// one needing the fewest tokens.
    fn shorten(&self, req: &mut GenerateRequest) -> usize {
        if req.shorter.is_empty() {
            return 0;
        }
        let limit = req.cold_limit.unwrap_or(self.cold_limit);
        let held = self.caches.most_held(req.prompts(), req.cache_reuse);
        let needs: Vec<usize> = req.prompts().zip(held).map(|(p, h)| p.len() - h).collect();
        let pick = needs.iter().position(|&n| n <= limit).unwrap_or_else(|| {
            (0..needs.len())
                .min_by_key(|&i| needs[i])
                .expect("the prompt itself")
        });
        tracing::debug!(?needs, limit, pick, "prompt window for a cold request");
        if pick > 0 {
            std::mem::swap(&mut req.prompt, &mut req.shorter[pick - 1]);
        }
        pick
    }

    fn generate(
        &mut self,
        req: &mut GenerateRequest,
        events: &UnboundedSender<Event>,
        jobs: &Receiver<Job>,
    ) -> Result<Outcome> {
        let (idle_tokens, idle_discarded_tokens, resumed_tokens) = std::mem::take(&mut self.idle);
        let mut timings = Timings {
            prompt_tokens: req.prompt.len(),
            idle_tokens,
            idle_discarded_tokens,
            resumed_tokens,
            ..Timings::default()
        };
        if req.cancel.is_cancelled() {
            return Ok(Outcome::cancelled(timings));
        }
        self.growth = None;
        timings.shortened = self.shorten(req);
        timings.prompt_tokens = req.prompt.len();
        self.validate(&req.prompt)?;

        let t_prefill = Instant::now();
        self.active = self.caches.choose(&req.prompt, req.cache_reuse);
        if timings.shortened > 0 {
            self.growth = Some(Growth {
                prompt: std::mem::take(&mut req.shorter[timings.shortened - 1]),
                cache: self.active,
                min_run: req.cache_reuse,
                started: [false; 2],
            });
        }
        let cache = self.caches.get(self.active);
        let held = cache.held_count();
        let kept = cache.keep(&req.prompt, req.prompt.len() - 1, req.cache_reuse);
        let reuse = kept.tokens;
        tracing::debug!(
            cache = self.active,
            held,
            reuse,
            moved = kept.moved,
            prompt = req.prompt.len(),
            "prompt cache chosen"
        );
        timings.reused_tokens = reuse;
        timings.moved_tokens = kept.moved;
        let mut logits = None;
        let cancelled_at = Cell::new(None);
        // The prompt's last tokens are what the next keystroke changes: computed on their own, they leave
        // the chunks before them shareable with the request that replaces this one.
        let tail = req.prompt.len().saturating_sub(TAIL_CHUNK);
        while cache.tokens().len() < req.prompt.len() {
            let chunk = &req.prompt[cache.next_chunk(&req.prompt, self.chunk, tail)];
            if req.cancel.is_cancelled() {
                timings.prefill_ms = ms_since(t_prefill);
                return Ok(Outcome::cancelled(timings));
            }
            timings.computed_tokens += chunk.len();
            if cache.kv().goes_on_with(chunk) {
                timings.resumed_tokens += chunk.len();
            }
            let through = &req.prompt[..cache.tokens().len() + chunk.len()];
            let early = RefCell::new(&mut self.early);
            let stop = || {
                req.cancel.is_cancelled()
                    && !taken_over(&mut early.borrow_mut(), jobs, through, &cancelled_at)
            };
            match self
                .model
                .forward_cancellable(chunk, cache.kv(), Logits::Last, &stop)
            {
                Ok(l) => logits = Some(l),
                Err(EngineError::Cancelled) => {
                    timings.discarded_tokens = chunk.len();
                    timings.prefill_ms = ms_since(t_prefill);
                    return Ok(Outcome::cancelled(timings));
                }
                Err(e) => return Err(e),
            }
            cache.extend(chunk);
        }
        let mut drafts = Speculation::new(req, self.draft.is_some());
        if let (true, Some(draft)) = (drafts.model, self.draft.as_mut()) {
            // The draft model reads the prompt now, so that its first guess costs one step; in the cache
            // beside the model's, which holds what it read of the same document.
            draft.active = self.active;
            if draft.lags(req) {
                drafts.model = false;
                self.growth.get_or_insert_with(|| Growth {
                    prompt: req.prompt.clone(),
                    cache: self.active,
                    min_run: req.cache_reuse,
                    // The model's cache holds the prompt: only the draft model's grows.
                    started: [true, false],
                });
            } else if draft
                .feed(&req.prompt, req.cache_reuse, &req.cancel)?
                .is_none()
            {
                timings.prefill_ms = ms_since(t_prefill);
                return Ok(Outcome::cancelled(timings));
            }
        }
        timings.prefill_ms = ms_since(t_prefill);
        let mut scores = logits.ok_or(EngineError::EmptyPrompt)?;

        let t_decode = Instant::now();
        let mut sampler = Sampler::new(req.sampling.clone());
        let mut decoder = IncrementalDecoder::new();
        let mut heal = Healing::new(&req.heal);
        let mut out = Outcome {
            generated_ids: Vec::new(),
            text: String::new(),
            stop_reason: StopReason::MaxTokens,
            stop_token: None,
            timings: Timings::default(),
        };
        while out.generated_ids.len() < req.max_tokens {
            if req.cancel.is_cancelled() {
                out.stop_reason = StopReason::Cancelled;
                break;
            }
            heal.constrain(&self.tokenizer, &mut scores);
            let tok = sampler.sample(&scores);
            if req.stop_ids.contains(&tok) || (req.stop_at_eog && self.eog.contains(&tok)) {
                out.stop_reason = StopReason::EndOfGeneration;
                out.stop_token = Some(tok);
                break;
            }
            out.generated_ids.push(tok);
            let delta = heal.consume(
                self.tokenizer.token_bytes(tok),
                decoder.push(&self.tokenizer, tok),
            );
            out.text.push_str(&delta);
            if let Some(cut) = stop_string_cut(&out.text, &req.stop_strings, delta.len()) {
                out.text.truncate(cut);
                out.stop_reason = StopReason::StopString;
                break;
            }
            if let Some(policy) = req.policy.as_mut() {
                if let Some(cut) = policy.check(&out.text) {
                    out.text.truncate(cut.min(out.text.len()));
                    out.stop_reason = StopReason::Policy;
                    break;
                }
            }
            let _ = events.send(Event::Token {
                id: tok,
                text: delta,
            });
            if out.generated_ids.len() >= req.max_tokens {
                break;
            }
            if self.cache().tokens().len() >= self.caches.capacity() {
                out.stop_reason = StopReason::ContextFull;
                break;
            }
            let wanted = req.max_tokens - out.generated_ids.len();
            scores = self.advance(tok, &mut drafts, heal.is_done(), wanted, &req.cancel)?;
        }
        // Verified positions past the last token taken are forgotten.
        self.cache().forget_unverified();
        timings.decode_ms = ms_since(t_decode);
        timings.generated_tokens = out.generated_ids.len();
        timings.drafted_tokens = drafts.drafted;
        timings.accepted_tokens = drafts.accepted;
        out.timings = timings;
        Ok(out)
    }

    /// Feeds `tok` (the token just taken) and returns the logits that follow it. If a verified draft
    /// guessed `tok`, they were computed already; otherwise the cache forgets the rest of that draft and
    /// `tok` runs through the model, with a new draft behind it when there is one (at most `wanted - 1`
    /// tokens: the `wanted`-th token is sampled from the last row and never fed).
    fn advance(
        &mut self,
        tok: u32,
        drafts: &mut Speculation,
        healed: bool,
        wanted: usize,
        cancel: &CancelToken,
    ) -> Result<Vec<f32>> {
        if let Some(row) = drafts.take(tok) {
            self.cache().push(tok);
            return Ok(row);
        }
        let cache = self.caches.get(self.active);
        cache.forget_unverified();
        let room = cache.capacity() - cache.tokens().len() - 1;
        let draft = if healed {
            drafts.draft(room.min(wanted - 1), self.draft.as_mut(), cancel)?
        } else {
            Vec::new()
        };
        let cache = self.caches.get(self.active);
        let scores = if draft.is_empty() {
            self.model.forward(&[tok], cache.kv(), Logits::Last)?
        } else {
            let input: Vec<u32> = std::iter::once(tok).chain(draft.iter().copied()).collect();
            let rows = self.model.forward(&input, cache.kv(), Logits::All)?;
            drafts.verified(&draft, rows)
        };
        cache.push(tok);
        Ok(scores)
    }
}

/// Speculative decoding's state in one request: the prompt-lookup index (which also holds the history,
/// prompt and answer, that the draft model continues), which sources draft, and the logits computed for
/// the tokens of the current draft, which are used only if the model's own choices agree with the draft.
struct Speculation {
    lookup: Option<PromptLookup>,
    /// Whether prompt lookup drafts (`lookup` is kept for the draft model's history either way).
    prompt_lookup: bool,
    /// Whether the draft model drafts.
    model: bool,
    /// `(draft token, the logits after it)`, in order; the cache holds these tokens past `cached`.
    pending: VecDeque<(u32, Vec<f32>)>,
    drafted: usize,
    accepted: usize,
}

impl Speculation {
    /// On only for greedy sampling: a sampled token cannot be checked against a draft by its argmax.
    /// `draft_model`: whether one is loaded.
    fn new(req: &GenerateRequest, draft_model: bool) -> Self {
        let Drafting {
            prompt_lookup,
            draft_model: wanted,
        } = req.speculative;
        let greedy = req.sampling.is_greedy();
        let model = greedy && wanted && draft_model;
        let prompt_lookup = greedy && prompt_lookup;
        Self {
            lookup: (prompt_lookup || model).then(|| PromptLookup::new(&req.prompt)),
            prompt_lookup,
            model,
            pending: VecDeque::new(),
            drafted: 0,
            accepted: 0,
        }
    }

    /// The logits after `tok` if the current draft's next token is `tok`; otherwise the draft is over.
    fn take(&mut self, tok: u32) -> Option<Vec<f32>> {
        if let Some(lookup) = self.lookup.as_mut() {
            lookup.push(tok);
        }
        match self.pending.pop_front() {
            Some((t, row)) if t == tok => {
                self.accepted += 1;
                Some(row)
            }
            _ => {
                self.pending.clear();
                None
            }
        }
    }

    /// A new draft of at most `max` tokens to follow the history: prompt lookup's when it has one (it
    /// costs nothing), otherwise the draft model's.
    fn draft(
        &self,
        max: usize,
        model: Option<&mut DraftModel>,
        cancel: &CancelToken,
    ) -> Result<Vec<u32>> {
        let Some(lookup) = self.lookup.as_ref().filter(|_| max > 0) else {
            return Ok(Vec::new());
        };
        if self.prompt_lookup {
            let found = lookup.draft(max);
            if !found.is_empty() {
                return Ok(found.to_vec());
            }
        }
        match model {
            Some(model) if self.model => {
                model.propose(lookup.history(), max.min(MAX_MODEL_DRAFT), cancel)
            }
            _ => Ok(Vec::new()),
        }
    }

    /// Keeps the logits computed for `[tok, draft...]` (`rows`, one per token) and returns the first
    /// row, the one that follows `tok`.
    fn verified(&mut self, draft: &[u32], mut rows: Vec<f32>) -> Vec<f32> {
        let vocab = rows.len() / (draft.len() + 1);
        self.drafted += draft.len();
        self.pending = draft
            .iter()
            .zip(rows[vocab..].chunks_exact(vocab))
            .map(|(&t, row)| (t, row.to_vec()))
            .collect();
        rows.truncate(vocab);
        rows
    }
}

/// Whether a cancelled prefill should finish its chunk (the prompt `through` its end) for the request that
/// replaces it: yes when the newest request not cancelled starts with all of it (its prompt or one of the
/// shorter ones it may be answered from); while none has come, for
/// [`TAKEOVER_WAIT`] after the cancel was first seen (`cancelled_at`). Jobs read from the queue to find out
/// go to `early`.
fn taken_over(
    early: &mut VecDeque<Job>,
    jobs: &Receiver<Job>,
    through: &[u32],
    cancelled_at: &Cell<Option<Instant>>,
) -> bool {
    early.extend(jobs.try_iter());
    match early.iter().rev().find(|j| !j.req.cancel.is_cancelled()) {
        Some(next) => next.req.prompts().any(|p| p.starts_with(through)),
        None => {
            let since = cancelled_at.get().unwrap_or_else(Instant::now);
            cancelled_at.set(Some(since));
            since.elapsed() < TAKEOVER_WAIT
        }
    }
}

/// Token healing in the decode loop: while part of the healed text is unspelled, only tokens that
/// continue it (or that it continues) may be sampled; the healed text is then dropped from the output.
struct Healing<'a> {
    /// Healed bytes not yet produced.
    rest: &'a [u8],
    /// Output text still to drop (the healed text's length, less what was dropped).
    skip: usize,
}

impl<'a> Healing<'a> {
    fn new(text: &'a str) -> Self {
        Self {
            rest: text.as_bytes(),
            skip: text.len(),
        }
    }

    /// Masks every token that does not fit the healed text's unspelled rest. If none fits (a vocabulary
    /// that cannot spell it), healing ends and nothing is masked or dropped.
    fn constrain(&mut self, tokenizer: &Tokenizer, scores: &mut [f32]) {
        if self.rest.is_empty() {
            return;
        }
        let fits = |id: usize| {
            let b = tokenizer.token_bytes(id as u32);
            !b.is_empty()
                && !tokenizer.is_protected(id as u32)
                && (b.starts_with(self.rest) || self.rest.starts_with(b))
        };
        if !(0..scores.len()).any(fits) {
            tracing::debug!(
                "token healing: no token spells {:?}",
                String::from_utf8_lossy(self.rest)
            );
            (self.rest, self.skip) = (&[], 0);
            return;
        }
        for (id, score) in scores.iter_mut().enumerate() {
            if !fits(id) {
                *score = f32::NEG_INFINITY;
            }
        }
    }

    /// Whether the healed text is spelled (from then on nothing is constrained).
    fn is_done(&self) -> bool {
        self.rest.is_empty()
    }

    /// Records a sampled token (its bytes) and returns the part of its decoded text that follows the
    /// healed text.
    fn consume(&mut self, bytes: &[u8], delta: String) -> String {
        self.rest = &self.rest[bytes.len().min(self.rest.len())..];
        if self.skip == 0 {
            return delta;
        }
        let mut cut = self.skip.min(delta.len());
        while !delta.is_char_boundary(cut) {
            cut += 1;
        }
        self.skip -= cut.min(self.skip);
        delta[cut..].to_string()
    }
}

/// The draft model: its weights, its own cache and the tokens that cache holds.
struct DraftModel {
    model: Llama,
    /// One cache beside each of the model's, used with the model's `active` one.
    caches: PromptCaches,
    active: usize,
    /// The main model's vocabulary: a guess outside it (a padding row of a larger embedding) ends a draft.
    vocab: usize,
}

impl DraftModel {
    /// Whether `req` should be answered without this model's guesses: a request with shorter prompts is
    /// one a user waits for (a keystroke's), and this model's cache lacks more than [`DRAFT_CATCH_UP`]
    /// tokens of its prompt (after a jump, or a growth that a keystroke stopped before it reached this
    /// model). Its guesses would save less than computing those tokens first costs; it catches up
    /// while idle instead ([`Growth`]).
    fn lags(&mut self, req: &GenerateRequest) -> bool {
        !req.shorter.is_empty()
            && self
                .caches
                .get(self.active)
                .lacks(&req.prompt, req.cache_reuse)
                > DRAFT_CATCH_UP
    }

    /// Runs what the cache lacks of `tokens` through the model, in prefill chunks (at least the last
    /// token, whose logits are returned), keeping what the cache holds of them (runs of `min_run` moved,
    /// as the model's cache does). `None`: cancelled (the chunks computed stay cached).
    fn feed(
        &mut self,
        tokens: &[u32],
        min_run: usize,
        cancel: &CancelToken,
    ) -> Result<Option<Vec<f32>>> {
        let cache = self.caches.get(self.active);
        cache.keep(tokens, tokens.len() - 1, min_run);
        let mut logits = None;
        while cache.tokens().len() < tokens.len() {
            let chunk = &tokens[cache.next_chunk(tokens, PREFILL_CHUNK, tokens.len())];
            let stop = || cancel.is_cancelled();
            match self.model.forward_cancellable(
                chunk,
                cache.kv(),
                Logits::Head(DRAFT_VOCAB),
                &stop,
            ) {
                Ok(l) => logits = Some(l),
                Err(EngineError::Cancelled) => return Ok(None),
                Err(e) => return Err(e),
            }
            cache.extend(chunk);
        }
        Ok(logits)
    }

    /// Up to `max` tokens the draft model greedily guesses after `history`, while it is confident
    /// ([`MIN_DRAFT_PROBABILITY`]) and not cancelled. Its cache then holds `history` and the guesses but the
    /// last; the next call keeps what of them the model accepted.
    fn propose(&mut self, history: &[u32], max: usize, cancel: &CancelToken) -> Result<Vec<u32>> {
        let max = max.min(self.caches.capacity().saturating_sub(history.len()));
        let mut guesses = Vec::with_capacity(max);
        if max == 0 {
            return Ok(guesses);
        }
        let Some(mut scores) = self.feed(history, 0, cancel)? else {
            return Ok(guesses);
        };
        while guesses.len() < max {
            let (tok, p) = top_probability(&scores);
            if p < MIN_DRAFT_PROBABILITY || tok as usize >= self.vocab {
                break;
            }
            guesses.push(tok);
            if guesses.len() == max || cancel.is_cancelled() {
                break;
            }
            let cache = self.caches.get(self.active);
            scores = self
                .model
                .forward(&[tok], cache.kv(), Logits::Head(DRAFT_VOCAB))?;
            cache.push(tok);
        }
        Ok(guesses)
    }
}

/// The most likely token and its probability under softmax.
fn top_probability(scores: &[f32]) -> (u32, f32) {
    let top = argmax(scores);
    let max = scores[top as usize];
    let sum: f32 = scores.iter().map(|&s| (s - max).exp()).sum();
    (top, 1.0 / sum)
}

/// Where `text` must be cut if a stop string ends inside its last `new_bytes` bytes (or earlier). Remote
/// engines stream through the same rule.
pub fn stop_string_cut(text: &str, stops: &[String], new_bytes: usize) -> Option<usize> {
    stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| {
            let from = text.len().saturating_sub(new_bytes + s.len());
            let from = (0..=from)
                .rev()
                .find(|&i| text.is_char_boundary(i))
                .unwrap_or(0);
            text[from..].find(s.as_str()).map(|i| from + i)
        })
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_strings_cut_at_the_earliest() {
        let stops = vec!["\n\n".to_string(), "```".to_string()];
        assert_eq!(stop_string_cut("abc\n\ndef", &stops, 5), Some(3));
        assert_eq!(stop_string_cut("abc", &stops, 3), None);
        assert_eq!(stop_string_cut("é```", &stops, 3), Some(2));
    }

    #[test]
    fn prefill_chunks_and_cold_limits_are_sized_by_the_model() {
        let shape = |n_layer, n_embd, n_head, n_head_kv, n_ff, vocab_size| ModelConfig {
            arch: super::super::Arch::Llama,
            n_layer,
            n_embd,
            n_head,
            n_head_kv,
            head_dim: 128.min(n_embd / n_head),
            n_ff,
            vocab_size,
            rope_theta: 1e6,
            rms_eps: 1e-6,
            context_length: 16384,
            rope_interleaved: true,
        };
        let qwen_1_5b = shape(28, 1536, 12, 2, 8960, 151936);
        let qwen_0_5b = shape(24, 896, 14, 2, 4864, 151936);
        let code_llama_7b = shape(32, 4096, 32, 32, 11008, 32016);
        let code_llama_34b = shape(48, 8192, 64, 8, 22016, 32000);
        assert_eq!(prefill_chunk(&qwen_0_5b), PREFILL_CHUNK);
        assert_eq!(prefill_chunk(&qwen_1_5b), PREFILL_CHUNK);
        assert_eq!(prefill_chunk(&code_llama_7b), 64);
        assert_eq!(prefill_chunk(&code_llama_34b), MIN_CHUNK);
        assert_eq!(cold_limit(&qwen_0_5b), 621);
        assert_eq!(cold_limit(&qwen_1_5b), 199);
        assert_eq!(cold_limit(&code_llama_7b), *COLD_LIMITS.start());
    }
}
