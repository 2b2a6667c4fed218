//! Remote inference engines behind the same [`Backend`] interface as the in-process engine: llama.cpp's
//! server, OpenAI-compatible completion APIs (vLLM, SGLang, LM Studio...) and Ollama. Prompts are still built
//! here from token ids, and post-processing still runs here on the streamed text; only the model work
//! moves to the engine.
//!
//! - [`RemoteBackend::connect`] reads the settings ([`RemoteConfig`]), asks the engine about itself (context
//!   size, model), finds the tokenizer (see [`tokenizer`]) and checks it against the engine where the engine
//!   can tell.
//! - [`Backend::submit`] runs each request as a task on the HTTP runtime ([`http::runtime`]): one HTTP
//!   request with a streamed answer ([`stream`]) on the backend's one `reqwest::Client`, whose keep-alive
//!   connections are reused. Stop ids, stop strings and the stop policy apply to what arrives exactly as
//!   in the in-process decode loop. Cancelling (or superseding) a request, or a stop rule firing, drops the
//!   response at once, which closes the connection, and the engine stops generating.
//! - Failures become [`EngineError::Remote`] carrying a [`RemoteError`]: a message that names the engine,
//!   its URL and the fix, and its kind (unreachable / unauthorized / timeout / bad response...);
//!   [`RemoteBackend::take_notice`] reports a failure once, not once per keystroke.
//!
//! One file per protocol (`llamacpp`, `openai`, `ollama`), plus the shared pieces: `http` (the runtime and
//! reqwest's settings), `framing` (SSE and NDJSON), `client` (retries, API key, error mapping), `stream`
//! (the decode-loop rules), `tokenizer` (where the tokenizer comes from).

#![forbid(unsafe_code)]

pub mod client;
pub mod config;
pub mod framing;
pub mod llamacpp;
pub mod ollama;
pub mod openai;
pub mod stream;
pub mod tokenizer;

use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;

use futures_util::FutureExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};

use codellama_engine::{
    Backend, EngineError, Event, GenerateRequest, Generation, ModelConfig, ModelInfo, Outcome,
    StopReason, Tokenizer,
};

use codellama_engine::http;
use codellama_engine::{RemoteError, RemoteErrorKind};
pub use config::{ApiKey, PromptFormat, RemoteConfig, RemoteKind};
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

/// A change in the engine's health worth telling the user about once (see [`RemoteBackend::take_notice`]).
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
            arch: codellama_engine::Arch::Llama,
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
            cold_limit: 0,
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
    /// after requests worked (of any kind: unreachable, unauthorized, timeout, a broken answer), and the first
    /// answer after a failure. `None` most of the time.
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

    async fn generate(
        &self,
        req: &mut GenerateRequest,
        events: &UnboundedSender<Event>,
    ) -> Result<stream::Finished, RemoteError> {
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
        stream::run(call, req, tok, &self.eog, events).await
    }

    /// Keeps the engine's health from a request's result: the first failure after working requests is a
    /// notice, and so is the first answer after a failure. A cancelled request says nothing either way (it
    /// may never have reached the engine).
    fn note(&self, result: Result<&Outcome, &RemoteError>) {
        let mut h = self.health.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(out) if out.stop_reason == StopReason::Cancelled => {}
            Ok(_) => {
                if h.failing.take().is_some() {
                    h.pending = Some(Notice::Recovered);
                }
            }
            Err(e) => match h.failing {
                None => {
                    h.failing = Some(e.kind());
                    h.pending = Some(Notice::Failing(e.clone()));
                }
                // Shown once per outage, however it goes on failing: logged when the way it fails changes.
                Some(kind) if kind != e.kind() => {
                    tracing::warn!("still failing: {e}");
                    h.failing = Some(e.kind());
                }
                Some(_) => {}
            },
        }
    }
}

impl Backend for RemoteBackend {
    fn submit(&self, mut req: GenerateRequest) -> Generation {
        let (tx, rx) = unbounded_channel();
        let cancel = req.cancel.clone();
        if let Err(e) = self.shared.validate(&req) {
            let _ = tx.send(Event::Finished(Err(e)));
            return Generation { events: rx, cancel };
        }
        let shared = self.shared.clone();
        http::runtime().spawn(async move {
            let run = AssertUnwindSafe(shared.generate(&mut req, &tx)).catch_unwind();
            let (result, rest) = match run.await {
                Ok(Ok(f)) => {
                    shared.note(Ok(&f.outcome));
                    (Ok(f.outcome), f.rest)
                }
                Ok(Err(e)) => {
                    shared.note(Err(&e));
                    (Err(EngineError::from(e)), None)
                }
                Err(panic) => {
                    let msg = panic
                        .downcast_ref::<String>()
                        .map(String::as_str)
                        .or_else(|| panic.downcast_ref::<&str>().copied())
                        .unwrap_or("unknown panic");
                    tracing::error!("remote request task panicked: {msg}");
                    (
                        Err(EngineError::Compute(format!("internal error: {msg}"))),
                        None,
                    )
                }
            };
            if let Err(e) = &result {
                tracing::debug!("remote request failed: {e}");
            }
            let _ = tx.send(Event::Finished(result));
            if let Some(rest) = rest {
                stream::drain(rest).await;
            }
        });
        Generation { events: rx, cancel }
    }

    fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.shared.tokenizer
    }

    fn info(&self) -> &Arc<ModelInfo> {
        &self.shared.info
    }
}

/// The prompt as text, for engines that take text: a leading BOS is left out when the model adds one
/// (the engine adds its own to text prompts then),
/// special tokens are written as their text (SentencePiece's `▁` as a space), everything else as its
/// bytes. With a SentencePiece tokenizer that adds a leading space itself, the space our encoding added
/// at the start is removed so that it is not doubled.
pub fn prompt_as_text(tokenizer: &Tokenizer, ids: &[u32]) -> String {
    let ids = match (ids.first(), tokenizer.bos_id()) {
        (Some(&first), Some(bos)) if first == bos && tokenizer.add_bos() => &ids[1..],
        _ => ids,
    };
    let spm = tokenizer.kind() == codellama_engine::tokenizer::TokenizerKind::SentencePiece;
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

#[cfg(test)]
mod tests {
    use super::*;
    use codellama_engine::gguf::GgufFile;
    use codellama_engine::{StopPolicy, StopReason};

    fn smollm2() -> GgufFile {
        GgufFile::open(&codellama_test_support::fixtures::small_model()).unwrap()
    }

    fn tokenizer() -> Tokenizer {
        Tokenizer::from_gguf(&smollm2().content).unwrap()
    }

    #[test]
    fn text_prompts_write_special_tokens_as_text() {
        let tok = tokenizer();
        let start = tok.special_id("<|im_start|>").unwrap();
        let end = tok.special_id("<|im_end|>").unwrap();
        let mut ids = vec![start];
        ids.extend(tok.encode("user\nHé, 2+2?", false));
        ids.push(end);
        assert_eq!(
            prompt_as_text(&tok, &ids),
            "<|im_start|>user\nHé, 2+2?<|im_end|>"
        );
    }

    #[test]
    fn openai_and_ollama_requests() {
        let tok = tokenizer();
        let mut req = GenerateRequest::new(tok.encode("def f(x):", false), 16);
        req.stop_ids = vec![2];
        let opts = openai::Options {
            model: "m",
            prompt_as_ids: true,
            send_stop_token_ids: true,
        };
        let body = openai::completions_body(&req, &tok, &opts);
        assert_eq!(body["prompt"], serde_json::json!(req.prompt));
        assert_eq!(body["max_tokens"], 16);
        assert_eq!(body["temperature"], 0.0);
        assert_eq!(body["stream"], true);
        assert_eq!(body["stop_token_ids"], serde_json::json!([2]));
        assert!(
            body.get("stop").is_none(),
            "stop strings are applied here, not sent"
        );
        let opts = openai::Options {
            model: "m",
            prompt_as_ids: false,
            send_stop_token_ids: false,
        };
        let body = openai::completions_body(&req, &tok, &opts);
        assert_eq!(body["prompt"], "def f(x):");
        assert!(body.get("stop_token_ids").is_none());

        let body = ollama::generate_body(&req, &tok, "codellama:7b-code", Some(4096));
        assert_eq!(body["model"], "codellama:7b-code");
        assert_eq!(body["prompt"], "def f(x):");
        assert_eq!(body["raw"], true);
        assert_eq!(body["stream"], true);
        assert_eq!(body["options"]["num_predict"], 16);
        assert_eq!(body["options"]["num_ctx"], 4096);
        assert_eq!(body["options"]["temperature"], 0.0);
        assert_eq!(body["options"]["repeat_penalty"], 1.0);
    }

    /// Ollama's verbose `/api/show` gives the GGUF metadata as JSON; the tokenizer built from it is the
    /// one built from the file.
    #[test]
    fn the_tokenizer_from_ollama_model_info_is_the_files() {
        use candle_core::quantized::gguf_file::Value as V;
        fn json(v: &V) -> serde_json::Value {
            match v {
                V::U8(x) => (*x).into(),
                V::I8(x) => (*x).into(),
                V::U16(x) => (*x).into(),
                V::I16(x) => (*x).into(),
                V::U32(x) => (*x).into(),
                V::I32(x) => (*x).into(),
                V::U64(x) => (*x).into(),
                V::I64(x) => (*x).into(),
                V::F32(x) => (*x as f64).into(),
                V::F64(x) => (*x).into(),
                V::Bool(x) => (*x).into(),
                V::String(x) => x.clone().into(),
                V::Array(a) => a.iter().map(json).collect(),
            }
        }
        let file = smollm2();
        let info: serde_json::Map<String, serde_json::Value> = file
            .content
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), json(v)))
            .collect();
        let show = serde_json::json!({"parameters": "num_ctx 8192", "model_info": info});
        // Through JSON text, as it would come over the wire.
        let show: serde_json::Value = serde_json::from_str(&show.to_string()).unwrap();
        let mut facts = ollama::facts_from_show("smollm2:135m", &show).unwrap();
        assert_eq!(facts.context_window, Some(8192));
        assert_eq!(facts.n_vocab, Some(49152));
        let loaded = tokenizer::load(&Spec::Engine, RemoteKind::Ollama, &mut facts).unwrap();
        let ours = loaded.tokenizer;
        let theirs = Tokenizer::from_gguf(&file.content).unwrap();
        assert_eq!(ours.vocab_size(), theirs.vocab_size());
        assert_eq!(ours.end_of_generation_ids(), theirs.end_of_generation_ids());
        for text in [
            "def f(x):\n\treturn x  # ∑ é 😀",
            "<|im_start|> literal",
            "  spaces  ",
        ] {
            assert_eq!(
                ours.encode(text, false),
                theirs.encode(text, false),
                "{text:?}"
            );
        }
    }

    struct CutAfterNewline;
    impl StopPolicy for CutAfterNewline {
        fn check(&mut self, text: &str) -> Option<usize> {
            text.find('\n')
        }
    }

    #[test]
    fn text_streams_follow_the_decode_loop_rules() {
        let tok = tokenizer();
        let eog = HashSet::new();
        let (tx, mut rx) = unbounded_channel();
        // A stop string split across two pieces: the text is cut before it, the piece that completed it
        // is not streamed.
        let mut req = GenerateRequest::new(vec![1], 10);
        req.stop_strings = vec!["END".into()];
        let mut d = stream::Decoding::new(&mut req, &tok, &eog, &tx);
        assert_eq!(d.text("abc E"), stream::Flow::Go);
        assert_eq!(d.text("ND more"), stream::Flow::Stop);
        let out = d.finish();
        assert_eq!(out.text, "abc ");
        assert_eq!(out.stop_reason, StopReason::StopString);
        assert!(matches!(
            rx.try_recv(),
            Ok(Event::Token {
                id: UNKNOWN_TOKEN_ID,
                ..
            })
        ));
        assert!(rx.try_recv().is_err());
        // The policy cuts; max_tokens counts pieces.
        let mut req = GenerateRequest::new(vec![1], 10);
        req.policy = Some(Box::new(CutAfterNewline));
        let mut d = stream::Decoding::new(&mut req, &tok, &eog, &tx);
        assert_eq!(d.text("x = 1"), stream::Flow::Go);
        assert_eq!(d.text("\ny = 2"), stream::Flow::Stop);
        let out = d.finish();
        assert_eq!(
            (out.text.as_str(), out.stop_reason),
            ("x = 1", StopReason::Policy)
        );
        let mut req = GenerateRequest::new(vec![1], 2);
        let mut d = stream::Decoding::new(&mut req, &tok, &eog, &tx);
        assert_eq!(d.text("a"), stream::Flow::Go);
        assert_eq!(d.text("b"), stream::Flow::Stop);
        assert_eq!(d.finish().stop_reason, StopReason::MaxTokens);
        // Stop ids end the answer and are left out.
        let mut req = GenerateRequest::new(vec![1], 10);
        req.stop_ids = vec![42];
        let mut d = stream::Decoding::new(&mut req, &tok, &eog, &tx);
        assert_eq!(d.id(100), stream::Flow::Go);
        assert_eq!(d.id(42), stream::Flow::Stop);
        let out = d.finish();
        assert_eq!(out.generated_ids, vec![100]);
        assert_eq!(out.stop_token, Some(42));
        assert_eq!(out.stop_reason, StopReason::EndOfGeneration);
    }
}
