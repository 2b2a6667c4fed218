//! Remote inference engines behind the same [`Backend`] interface as the in-process engine: llama.cpp's
//! server, OpenAI-compatible completion APIs (vLLM, SGLang, LM Studio...) and Ollama. Prompts are still built
//! here from token ids, and post-processing still runs here on the streamed text; only the model work
//! moves to the engine.
//!
//! - [`RemoteBackend::connect`] reads the settings ([`RemoteConfig`]), asks the engine about itself (context
//!   size, model), finds the tokenizer (see [`tokenizer`]) and checks it against the engine where the engine
//!   can tell.
//! - [`Backend::submit`] runs each request on its own thread: one HTTP request with a streamed answer
//!   ([`stream`]). Stop ids, stop strings and the stop policy apply to what arrives exactly as in the
//!   in-process decode loop. Cancelling (or superseding) a request, or a stop rule firing, closes the
//!   connection within [`http::TICK`], and the engine stops generating.
//! - Failures become [`EngineError::Compute`] with a message that names the engine, its URL and the fix;
//!   [`RemoteErrorKind::of`] tells unreachable / unauthorized / timeout / bad response apart, and
//!   [`RemoteBackend::take_notice`] reports a failure once, not once per keystroke.
//!
//! One file per protocol (`llamacpp`, `openai`, `ollama`), plus the shared pieces: `http` (a small
//! blocking HTTP/1.1 client), `framing` (SSE and NDJSON), `client` (retries, API key, error mapping),
//! `stream` (the decode-loop rules), `tokenizer` (where the tokenizer comes from).

pub mod client;
pub mod config;
pub mod error;
pub mod framing;
pub mod http;
pub mod llamacpp;
pub mod ollama;
pub mod openai;
pub mod stream;
pub mod tokenizer;

use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};

use crate::engine::{
    Backend, CancelToken, EngineError, Event, GenerateRequest, Generation, ModelConfig, ModelInfo,
    Outcome, Tokenizer,
};

pub use config::{ApiKey, PromptFormat, RemoteConfig, RemoteKind};
pub use error::{RemoteError, RemoteErrorKind};
pub use stream::UNKNOWN_TOKEN_ID;

use client::Client;
use tokenizer::Spec;

/// Context size assumed when neither the settings nor the engine give one.
const DEFAULT_CONTEXT_WINDOW: usize = 4096;

/// What an engine says about itself when we connect.
#[derive(Debug, Default)]
pub(crate) struct Facts {
    pub model_name: Option<String>,
    /// The context the engine gives a request (llama.cpp's slot size, vLLM's `max_model_len`...).
    pub context_window: Option<usize>,
    pub n_vocab: Option<usize>,
    pub n_ctx_train: Option<usize>,
    pub model_size: Option<u64>,
    /// llama.cpp: the model file; OpenAI-compatible: the model id.
    pub model_path: Option<String>,
    /// Ollama: the model's GGUF metadata (with the tokenizer arrays when asked for).
    pub gguf_metadata: Option<HashMap<String, candle_core::quantized::gguf_file::Value>>,
}

/// How a request is turned into an HTTP request for this engine.
enum Protocol {
    LlamaCpp,
    OpenAi {
        model: String,
        prompt_as_ids: bool,
        send_stop_token_ids: bool,
    },
    Ollama {
        model: String,
        num_ctx: Option<usize>,
    },
}

/// A failure worth telling the user about once (see [`RemoteBackend::take_notice`]).
#[derive(Debug, Clone)]
pub enum Notice {
    /// Requests started failing this way (the message says how to fix it).
    Failing(RemoteError),
    /// Requests work again after a reported failure.
    Recovered,
}

#[derive(Default)]
struct Health {
    failing: Option<RemoteErrorKind>,
    pending: Option<Notice>,
}

struct Shared {
    client: Client,
    protocol: Protocol,
    tokenizer: Arc<Tokenizer>,
    info: Arc<ModelInfo>,
    eog: HashSet<u32>,
    latest: Mutex<HashMap<String, CancelToken>>,
    health: Mutex<Health>,
}

/// A remote engine used as a [`Backend`].
pub struct RemoteBackend {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for RemoteBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteBackend")
            .field("client", &self.shared.client)
            .field("model", &self.shared.info.name)
            .field("context_window", &self.shared.info.context_window)
            .finish_non_exhaustive()
    }
}

impl RemoteBackend {
    /// Connects to the engine the settings name: checks that it answers (and accepts the key), learns the
    /// model and context size, and loads the tokenizer. Blocks for at most a few round trips (each bounded by
    /// the timeouts), plus a tokenizer download when `tokenizer` names a Hugging Face repository that is not
    /// cached.
    pub fn connect(cfg: RemoteConfig) -> Result<Self, RemoteError> {
        let started = Instant::now();
        let client = Client::new(&cfg)?;
        let spec = Spec::parse(cfg.tokenizer.as_deref());
        let mut facts = match cfg.kind {
            RemoteKind::LlamaCpp => llamacpp::probe(&client)?,
            RemoteKind::OpenAi => openai::probe(&client, cfg.model.as_deref())?,
            RemoteKind::Ollama => {
                ollama::probe(&client, cfg.model.as_deref(), spec == Spec::Engine)?
            }
        };
        let loaded = tokenizer::load(&spec, cfg.kind, &mut facts)?;
        let tok = loaded.tokenizer;
        if let Some(n) = facts.n_vocab {
            if n != tok.vocab_size() {
                return Err(RemoteError::tokenizer(format!(
                    "{} has {} tokens but the model of the {} at {} has {n}; point `tokenizer` at the engine's model",
                    loaded.source,
                    tok.vocab_size(),
                    client.engine(),
                    client.at()
                )));
            }
        }
        if cfg.kind == RemoteKind::LlamaCpp {
            llamacpp::check_tokenizer(&client, &tok)?;
        }
        let mut warnings = Vec::new();
        let protocol = match cfg.kind {
            RemoteKind::LlamaCpp => Protocol::LlamaCpp,
            RemoteKind::OpenAi => {
                let model = facts.model_name.clone().unwrap_or_default();
                let prompt_as_ids = openai::choose_prompt_format(
                    &client,
                    cfg.prompt_format,
                    &model,
                    &tok,
                    &mut warnings,
                )?;
                Protocol::OpenAi {
                    model,
                    prompt_as_ids,
                    send_stop_token_ids: cfg.send_stop_token_ids,
                }
            }
            RemoteKind::Ollama => Protocol::Ollama {
                model: facts.model_name.clone().unwrap_or_default(),
                num_ctx: cfg.context_window,
            },
        };
        let context_window = cfg
            .context_window
            .or(facts.context_window)
            .or(facts.n_ctx_train)
            .unwrap_or(DEFAULT_CONTEXT_WINDOW);
        if let (Some(ours), Some(theirs)) = (cfg.context_window, facts.context_window) {
            if ours > theirs {
                warnings.push(format!(
                    "`context_window` is {ours} but the {} at {} gives a request {theirs} tokens; long prompts will fail",
                    client.engine(),
                    client.at()
                ));
            }
        }
        let config = loaded.config.unwrap_or_else(|| ModelConfig {
            n_layer: 0,
            n_embd: 0,
            n_head: 0,
            n_head_kv: 0,
            head_dim: 0,
            n_ff: 0,
            vocab_size: tok.vocab_size(),
            rope_theta: 0.0,
            rms_eps: 0.0,
            context_length: facts.n_ctx_train.unwrap_or(context_window),
            rope_interleaved: false,
        });
        for w in &warnings {
            tracing::warn!("{w}");
        }
        let info = ModelInfo {
            name: facts
                .model_name
                .clone()
                .unwrap_or_else(|| client.engine().to_string()),
            path: PathBuf::from(client.at()),
            config,
            context_window,
            file_size: facts.model_size.unwrap_or(0),
            load_ms: started.elapsed().as_millis() as u64,
            threads: 0,
            device: format!(
                "{} at {} (tokenizer: {})",
                client.engine(),
                client.at(),
                loaded.source
            ),
            warnings,
        };
        tracing::info!(
            "remote backend: {} at {}, model {:?}, context {} tokens, tokenizer from {}",
            client.engine(),
            client.at(),
            info.name,
            info.context_window,
            loaded.source
        );
        Ok(Self {
            shared: Arc::new(Shared {
                eog: tok.end_of_generation_ids().into_iter().collect(),
                client,
                protocol,
                tokenizer: Arc::new(tok),
                info: Arc::new(info),
                latest: Mutex::new(HashMap::new()),
                health: Mutex::new(Health::default()),
            }),
        })
    }

    pub fn kind(&self) -> RemoteKind {
        self.shared.client.kind
    }

    /// The engine's URL as configured (no credentials).
    pub fn url(&self) -> String {
        self.shared.client.at()
    }

    /// Whether prompts go to the engine as token ids (always for llama.cpp; see `prompt_format`).
    pub fn sends_token_ids(&self) -> bool {
        match &self.shared.protocol {
            Protocol::LlamaCpp => true,
            Protocol::OpenAi { prompt_as_ids, .. } => *prompt_as_ids,
            Protocol::Ollama { .. } => false,
        }
    }

    /// A change worth showing the user (`window/showMessage`), at most once per change: the first failure
    /// of a kind that needs the user (unreachable, unauthorized, timeout) after requests worked, and the
    /// recovery after such a failure. `None` most of the time.
    pub fn take_notice(&self) -> Option<Notice> {
        self.shared
            .health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pending
            .take()
    }
}

impl Shared {
    fn validate(&self, req: &GenerateRequest) -> Result<(), EngineError> {
        if req.prompt.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        let vocab = self.tokenizer.vocab_size();
        if let Some(&id) = req.prompt.iter().find(|&&t| t as usize >= vocab) {
            return Err(EngineError::BadToken { id, vocab });
        }
        if req.prompt.len() >= self.info.context_window {
            return Err(EngineError::PromptTooLong {
                prompt_tokens: req.prompt.len(),
                context: self.info.context_window,
            });
        }
        Ok(())
    }

    fn generate(
        &self,
        req: &mut GenerateRequest,
        events: &UnboundedSender<Event>,
    ) -> Result<Outcome, RemoteError> {
        let tok = &self.tokenizer;
        let (path, body, proto): (&str, serde_json::Value, &dyn stream::StreamProtocol) =
            match &self.protocol {
                Protocol::LlamaCpp => (
                    llamacpp::COMPLETION_PATH,
                    llamacpp::completion_body(req),
                    &llamacpp::LlamaCpp,
                ),
                Protocol::OpenAi {
                    model,
                    prompt_as_ids,
                    send_stop_token_ids,
                } => (
                    openai::COMPLETIONS_PATH,
                    openai::completions_body(
                        req,
                        tok,
                        &openai::Options {
                            model,
                            prompt_as_ids: *prompt_as_ids,
                            send_stop_token_ids: *send_stop_token_ids,
                        },
                    ),
                    &openai::OpenAi,
                ),
                Protocol::Ollama { model, num_ctx } => (
                    ollama::GENERATE_PATH,
                    ollama::generate_body(req, tok, model, *num_ctx),
                    &ollama::Ollama,
                ),
            };
        let call = stream::Call {
            client: &self.client,
            protocol: proto,
            path,
            body,
        };
        stream::run(call, req, tok, &self.eog, events)
    }

    fn note(&self, result: &Result<Outcome, RemoteError>) {
        let mut h = self.health.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(_) => {
                if h.failing.take().is_some() {
                    h.pending = Some(Notice::Recovered);
                }
            }
            Err(e) => {
                let serious = matches!(
                    e.kind(),
                    RemoteErrorKind::Unreachable
                        | RemoteErrorKind::Unauthorized
                        | RemoteErrorKind::Timeout
                );
                if serious && h.failing != Some(e.kind()) {
                    h.failing = Some(e.kind());
                    h.pending = Some(Notice::Failing(e.clone()));
                }
            }
        }
    }
}

impl Backend for RemoteBackend {
    fn submit(&self, mut req: GenerateRequest) -> Generation {
        let (tx, rx) = unbounded_channel();
        let cancel = req.cancel.clone();
        if let Some(key) = &req.supersede_key {
            let mut latest = self.shared.latest.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(old) = latest.insert(key.clone(), cancel.clone()) {
                old.cancel();
            }
        }
        if let Err(e) = self.shared.validate(&req) {
            let _ = tx.send(Event::Finished(Err(e)));
            return Generation { events: rx, cancel };
        }
        let shared = self.shared.clone();
        let events = tx.clone();
        let spawned = std::thread::Builder::new()
            .name("codellama-remote".into())
            .spawn(move || {
                let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    shared.generate(&mut req, &events)
                }));
                let result = match result {
                    Ok(r) => {
                        shared.note(&r);
                        r.map_err(EngineError::from)
                    }
                    Err(panic) => {
                        let msg = panic
                            .downcast_ref::<String>()
                            .map(String::as_str)
                            .or_else(|| panic.downcast_ref::<&str>().copied())
                            .unwrap_or("unknown panic");
                        tracing::error!("remote request thread panicked: {msg}");
                        Err(EngineError::Compute(format!("internal error: {msg}")))
                    }
                };
                if let Err(e) = &result {
                    tracing::debug!("remote request failed: {e}");
                }
                let _ = events.send(Event::Finished(result));
            });
        if let Err(e) = spawned {
            let _ = tx.send(Event::Finished(Err(EngineError::Compute(format!(
                "cannot start a request thread: {e}"
            )))));
        }
        Generation { events: rx, cancel }
    }

    fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.shared.tokenizer
    }

    fn info(&self) -> &Arc<ModelInfo> {
        &self.shared.info
    }
}

/// The prompt as text, for engines that take text: a leading BOS is left out (the engine adds its own),
/// special tokens are written as their text (SentencePiece's `▁` as a space), everything else as its
/// bytes. With a SentencePiece tokenizer that adds a leading space itself, the space our encoding added
/// at the start is removed so that it is not doubled.
pub fn prompt_as_text(tokenizer: &Tokenizer, ids: &[u32]) -> String {
    let ids = match (ids.first(), tokenizer.bos_id()) {
        (Some(&first), Some(bos)) if first == bos => &ids[1..],
        _ => ids,
    };
    let spm = tokenizer.kind() == crate::engine::tokenizer::TokenizerKind::SentencePiece;
    let mut bytes = Vec::new();
    for &id in ids {
        let b = tokenizer.token_bytes(id);
        if b.is_empty() {
            if let Some(piece) = tokenizer.token_piece(id) {
                let piece = if spm {
                    piece.replace('\u{2581}', " ")
                } else {
                    piece.to_string()
                };
                bytes.extend_from_slice(piece.as_bytes());
            }
        } else {
            bytes.extend_from_slice(b);
        }
    }
    let text = String::from_utf8_lossy(&bytes).into_owned();
    if spm && tokenizer.add_space_prefix() {
        if let Some(rest) = text.strip_prefix(' ') {
            return rest.to_string();
        }
    }
    text
}
