//! The one configuration of the server, with its defaults.
//!
//! Values are layered, lowest to highest: defaults, environment variables (`CODELLAMA_LSP_<KEY>`), command-line
//! flags (`--<key-with-dashes>`), the client's `initializationOptions`, and `workspace/didChangeConfiguration`.
//! Every layer speaks the same snake_case keys. A client may send the keys directly or under a `codellama`
//! section (`{ "codellama": { ... } }`, or `{ "settings": { "codellama": { ... } } }` for a configuration
//! change). Unknown keys and bad values are reported and ignored; the previous value stays.
//!
//! The fields are declared once, in the [`config!`] invocation below, which generates the struct, its defaults,
//! the JSON/env/CLI parsing (the shell commands' flags included: [`config_flags!`]), and what [`docs`] writes: the
//! table in `docs/configuration.md`, the VS Code extension's settings and the Neovim help's.

pub mod docs;

use serde::{Serialize, Serializer};
use serde_json::{json, Map, Value};

use codellama_engine::{KvType, LoadOptions};
use codellama_remote::{RemoteConfig, RemoteKind};
use codellama_text::prompt::{self, PromptConfig};

/// Prefix of the environment variables that set configuration keys.
pub const ENV_PREFIX: &str = "CODELLAMA_LSP_";

/// Variables with that prefix that are not settings: the model folder and the kernel choice (read where they are
/// used), the test data, and the scripts' binary and cache folder. Not reported as unknown settings.
const NOT_SETTINGS: &[&str] = &["MODELS", "CPU", "SHARED", "BIN", "CACHE"];

/// How a configuration value is read from JSON (native values or their string form, as environment variables
/// and command-line flags give them) and shown in the documentation.
pub trait Setting: Sized {
    /// The type as the documentation shows it.
    const TYPE: &'static str;
    fn parse(value: &Value) -> Result<Self, String>;
    fn show(&self) -> String;
    /// This value as the default of a JSON Schema property (VS Code's `contributes.configuration`): its `type`,
    /// `default`, and `enum`, `items` or `minimum` where they apply.
    fn schema(&self) -> Value;
}

fn as_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

impl Setting for usize {
    const TYPE: &'static str = "integer";
    fn parse(value: &Value) -> Result<Self, String> {
        if let Some(n) = value.as_u64() {
            return usize::try_from(n).map_err(|_| format!("{n} is too large"));
        }
        let text = as_text(value)
            .ok_or_else(|| format!("expected a non-negative integer, got {value}"))?;
        text.parse()
            .map_err(|_| format!("expected a non-negative integer, got {text:?}"))
    }
    fn show(&self) -> String {
        self.to_string()
    }
    fn schema(&self) -> Value {
        json!({"type": "integer", "minimum": 0, "default": self})
    }
}

impl Setting for Option<usize> {
    const TYPE: &'static str = "integer or null";
    fn parse(value: &Value) -> Result<Self, String> {
        match value {
            Value::Null => Ok(None),
            Value::String(s) if s.trim().is_empty() || s.trim() == "auto" => Ok(None),
            other => usize::parse(other).map(|n| (n > 0).then_some(n)),
        }
    }
    fn show(&self) -> String {
        self.map_or_else(|| "null (auto)".into(), |n| n.to_string())
    }
    fn schema(&self) -> Value {
        json!({"type": ["integer", "null"], "minimum": 1, "default": self})
    }
}

impl Setting for bool {
    const TYPE: &'static str = "boolean";
    fn parse(value: &Value) -> Result<Self, String> {
        if let Some(b) = value.as_bool() {
            return Ok(b);
        }
        let text = as_text(value).ok_or_else(|| format!("expected true or false, got {value}"))?;
        match text.to_ascii_lowercase().as_str() {
            "true" | "1" | "on" | "yes" => Ok(true),
            "false" | "0" | "off" | "no" => Ok(false),
            _ => Err(format!("expected true or false, got {text:?}")),
        }
    }
    fn show(&self) -> String {
        self.to_string()
    }
    fn schema(&self) -> Value {
        json!({"type": "boolean", "default": self})
    }
}

impl Setting for f32 {
    const TYPE: &'static str = "number";
    fn parse(value: &Value) -> Result<Self, String> {
        let n = match value.as_f64() {
            Some(n) => n,
            None => {
                let text =
                    as_text(value).ok_or_else(|| format!("expected a number, got {value}"))?;
                text.parse::<f64>()
                    .map_err(|_| format!("expected a number, got {text:?}"))?
            }
        };
        if !n.is_finite() {
            return Err(format!("expected a finite number, got {n}"));
        }
        Ok(n as f32)
    }
    fn show(&self) -> String {
        self.to_string()
    }
    fn schema(&self) -> Value {
        json!({"type": "number", "default": self})
    }
}

impl Setting for String {
    const TYPE: &'static str = "string";
    fn parse(value: &Value) -> Result<Self, String> {
        as_text(value).ok_or_else(|| format!("expected a string, got {value}"))
    }
    fn show(&self) -> String {
        format!("{self:?}")
    }
    fn schema(&self) -> Value {
        json!({"type": "string", "default": self})
    }
}

impl Setting for Option<String> {
    const TYPE: &'static str = "string or null";
    fn parse(value: &Value) -> Result<Self, String> {
        match value {
            Value::Null => Ok(None),
            other => String::parse(other).map(|s| (!s.is_empty()).then_some(s)),
        }
    }
    fn show(&self) -> String {
        self.as_ref()
            .map_or_else(|| "null".into(), |s| format!("{s:?}"))
    }
    /// An editor's text box cannot hold null; an empty string means the same.
    fn schema(&self) -> Value {
        json!({"type": "string", "default": self.as_deref().unwrap_or("")})
    }
}

impl Setting for Vec<String> {
    const TYPE: &'static str = "list of strings";
    /// A JSON array, or a comma-separated string (environment variables, flags).
    fn parse(value: &Value) -> Result<Self, String> {
        let items: Vec<String> = match value {
            Value::Null => Vec::new(),
            Value::Array(items) => items
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| format!("expected strings, got {v}"))
                })
                .collect::<Result<_, _>>()?,
            Value::String(s) => s.split(',').map(str::to_string).collect(),
            other => return Err(format!("expected a list of strings, got {other}")),
        };
        Ok(items
            .into_iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect())
    }
    fn show(&self) -> String {
        format!("{self:?}")
    }
    fn schema(&self) -> Value {
        json!({"type": "array", "items": {"type": "string"}, "default": self})
    }
}

/// Declares a string-valued enum setting with its accepted names.
macro_rules! choice {
    ($(#[doc = $doc:literal])* $name:ident { $($(#[doc = $vdoc:literal])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[doc = $doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
        pub enum $name {
            $($(#[doc = $vdoc])* #[serde(rename = $text)] $variant),+
        }

        impl $name {
            pub const NAMES: &'static [&'static str] = &[$($text),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text),+
                }
            }
        }

        impl Setting for $name {
            const TYPE: &'static str = "string";
            fn parse(value: &Value) -> Result<Self, String> {
                let text = as_text(value).ok_or_else(|| format!("expected a string, got {value}"))?;
                match text.to_ascii_lowercase().as_str() {
                    $($text => Ok(Self::$variant),)+
                    _ => Err(format!("expected one of {:?}, got {text:?}", Self::NAMES)),
                }
            }
            fn show(&self) -> String {
                format!("{:?}", self.as_str())
            }
            fn schema(&self) -> Value {
                json!({"type": "string", "enum": Self::NAMES, "default": self.as_str()})
            }
        }
    };
}

choice! {
    /// Which fill-in-the-middle prompt format the completion model was trained with, as the setting
    /// spells it: `auto` or a `prompt::FimTemplate` (the prompt builder's own type; `prompt_config` maps).
    FimTemplateSetting {
        /// Recognised from the model's special tokens.
        Auto = "auto",
        CodeLlama = "codellama",
        StarCoder = "starcoder",
        DeepSeek = "deepseek",
        Qwen = "qwen",
        CodeGemma = "codegemma",
        /// No infilling: the model only continues the text before the cursor.
        None = "none",
    }
}

choice! {
    /// Where the text after the cursor goes in a fill-in-the-middle prompt, as the setting spells it:
    /// `auto` or a `prompt::FimOrder`.
    FimOrderSetting {
        /// The template's own preference (SPM where the model was trained with it).
        Auto = "auto",
        /// Suffix, then prefix: typing only appends to the prompt, so the model's cache is reused.
        Spm = "spm",
        /// Prefix, then suffix.
        Psm = "psm",
    }
}

choice! {
    /// What the in-process model's KV cache stores keys and values as.
    KvCacheType {
        /// 2 bytes per value.
        F16 = "f16",
        /// 34 bytes per 32 values (8-bit quants and a scale per block of 32), on the CPU.
        Q8_0 = "q8_0",
    }
}

impl KvCacheType {
    /// The engine's name for it.
    pub fn kv_type(self) -> KvType {
        match self {
            KvCacheType::F16 => KvType::F16,
            KvCacheType::Q8_0 => KvType::Q8_0,
        }
    }
}

choice! {
    /// How much the server logs, to stderr and to the client (`window/logMessage`).
    LogLevel {
        Off = "off",
        Error = "error",
        Warn = "warn",
        Info = "info",
        Debug = "debug",
        Trace = "trace",
    }
}

impl LogLevel {
    /// The most verbose `tracing` level enabled, if any.
    pub fn max_level(self) -> Option<tracing::Level> {
        match self {
            LogLevel::Off => None,
            LogLevel::Error => Some(tracing::Level::ERROR),
            LogLevel::Warn => Some(tracing::Level::WARN),
            LogLevel::Info => Some(tracing::Level::INFO),
            LogLevel::Debug => Some(tracing::Level::DEBUG),
            LogLevel::Trace => Some(tracing::Level::TRACE),
        }
    }
}

/// Where the model work runs: in this process, or on a remote inference engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendKind {
    /// The model runs in-process.
    #[default]
    Local,
    /// A remote engine (llama.cpp server, OpenAI-compatible API, Ollama) does the model work.
    Remote(RemoteKind),
}

impl BackendKind {
    pub const ALL: [BackendKind; 4] = [
        BackendKind::Local,
        BackendKind::Remote(RemoteKind::LlamaCpp),
        BackendKind::Remote(RemoteKind::OpenAi),
        BackendKind::Remote(RemoteKind::Ollama),
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Local => "local",
            BackendKind::Remote(kind) => kind.as_str(),
        }
    }
}

impl Serialize for BackendKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl Setting for BackendKind {
    const TYPE: &'static str = "string";
    fn parse(value: &Value) -> Result<Self, String> {
        let text = as_text(value).ok_or_else(|| format!("expected a string, got {value}"))?;
        Ok(RemoteKind::parse(&text)?.map_or(BackendKind::Local, BackendKind::Remote))
    }
    fn show(&self) -> String {
        format!("{:?}", self.as_str())
    }
    fn schema(&self) -> Value {
        let names = Self::ALL.map(BackendKind::as_str);
        json!({"type": "string", "enum": names, "default": self.as_str()})
    }
}

/// The `remote` settings object (see docs/teams.md), parsed once when it is set (known keys, values of
/// the right types). Its kind comes from `backend`, so [`Config::remote_config`] puts it in.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RemoteSettings {
    /// As the client wrote it (shown and serialized back as such).
    pub written: Map<String, Value>,
    /// The settings it holds, with the placeholder kind `llama.cpp`: the keys and their types do not
    /// depend on the kind.
    parsed: RemoteConfig,
}

impl Serialize for RemoteSettings {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.written.serialize(s)
    }
}

impl Setting for RemoteSettings {
    const TYPE: &'static str = "object";
    /// An object, or its JSON text (environment variables, flags).
    fn parse(value: &Value) -> Result<Self, String> {
        let parsed;
        let value = match value {
            Value::String(text) if text.trim().is_empty() => &Value::Null,
            Value::String(text) => {
                parsed = serde_json::from_str::<Value>(text)
                    .map_err(|e| format!("expected a JSON object, got {text:?} ({e})"))?;
                &parsed
            }
            other => other,
        };
        let obj = match value {
            Value::Null => Map::new(),
            Value::Object(obj) => obj.clone(),
            other => return Err(format!("expected an object, got {other}")),
        };
        if obj.contains_key("kind") {
            return Err("`kind` is not a key of `remote`: set `backend` instead".into());
        }
        // The keys and their types do not depend on the kind: parse them with any.
        let parsed = RemoteConfig::from_settings(
            RemoteKind::LlamaCpp.as_str(),
            Some(&Value::Object(obj.clone())),
        )
        .map_err(|e| e.to_string())?
        .expect("llama.cpp is a remote kind");
        Ok(RemoteSettings {
            written: obj,
            parsed,
        })
    }
    fn show(&self) -> String {
        Value::Object(self.written.clone()).to_string()
    }
    fn schema(&self) -> Value {
        json!({"type": "object", "default": self.written})
    }
}

/// One configuration key as the documentation and the editors' settings list it.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldDoc {
    /// The key as the server reads it (snake_case).
    pub key: &'static str,
    pub ty: &'static str,
    pub default: String,
    pub doc: String,
    /// Type, default and accepted values as a JSON Schema property.
    pub schema: Value,
}

impl FieldDoc {
    /// The VS Code setting: `codellama.` and the key in camelCase (`max_tokens`: `codellama.maxTokens`).
    pub fn vscode_name(&self) -> String {
        let mut out = String::from("codellama.");
        let mut words = self.key.split('_');
        out.extend(words.next());
        for word in words {
            let mut chars = word.chars();
            out.extend(chars.next().map(|c| c.to_ascii_uppercase()));
            out.push_str(chars.as_str());
        }
        out
    }
}

macro_rules! config {
    ($($(#[doc = $doc:literal])+ $name:ident : $ty:ty = $default:expr,)+) => {
        /// The server's configuration (see the module documentation for where values come from).
        #[derive(Debug, Clone, PartialEq, Serialize)]
        pub struct Config {
            $($(#[doc = $doc])+ pub $name: $ty,)+
        }

        impl Default for Config {
            fn default() -> Self {
                Self { $($name: $default,)+ }
            }
        }

        impl Config {
            /// Every key, in declaration order.
            pub const KEYS: &'static [&'static str] = &[$(stringify!($name)),+];

            /// Sets one key from a JSON value. `Ok(false)`: no such key.
            fn set(&mut self, key: &str, value: &Value) -> Result<bool, String> {
                match key {
                    $(stringify!($name) => {
                        self.$name = <$ty as Setting>::parse(value)?;
                        Ok(true)
                    })+
                    _ => Ok(false),
                }
            }

            /// The documentation of every key, with its default.
            pub fn fields() -> Vec<FieldDoc> {
                let defaults = Config::default();
                vec![$(FieldDoc {
                    key: stringify!($name),
                    ty: <$ty as Setting>::TYPE,
                    default: Setting::show(&defaults.$name),
                    doc: [$($doc.trim()),+].join(" "),
                    schema: Setting::schema(&defaults.$name),
                }),+]
            }
        }

        /// Command-line flags, one per configuration key (`--max-tokens 64`); values as in environment variables.
        #[derive(Debug, Clone, Default, clap::Args)]
        pub struct ConfigArgs {
            $($(#[doc = $doc])+ #[arg(long, value_name = "VALUE")] pub $name: Option<String>,)+
        }

        impl ConfigArgs {
            /// The flags given, as (key, value) pairs.
            pub fn given(&self) -> Vec<(&'static str, String)> {
                let mut out = Vec::new();
                $(if let Some(v) = &self.$name {
                    out.push((stringify!($name), v.clone()));
                })+
                out
            }
        }
    };
}

config! {
    /// Model for inline completions: a `.gguf` file, a Hugging Face model directory, or a Hub reference
    /// `owner/repo:file.gguf`. Empty: the default model that `scripts/fetch-model` installs
    /// (Qwen2.5-Coder-0.5B-Instruct).
    model: Option<String> = None,
    /// A small model with the completion model's vocabulary (e.g. Qwen2.5-Coder-0.5B for 1.5B) whose guesses
    /// speculative decoding checks where prompt lookup finds none; a file, directory or Hub reference as for
    /// `model`. Empty: none. A model with another vocabulary is refused and suggestions go on without it.
    draft_model: Option<String> = None,
    /// Instruct model for code actions (explain, generate, document), loaded beside the completion model. Empty:
    /// the completion model (or the remote engine), when it is an Instruct model.
    chat_model: Option<String> = None,
    /// Where the model work runs: "local" (in-process), or a remote engine: "llama.cpp" (also "llamacpp"),
    /// "openai" (any OpenAI-compatible completions API) or "ollama"; `remote` says where it is.
    backend: BackendKind = BackendKind::Local,
    /// Settings of the remote engine when `backend` is not "local": `url`, `model`, `api_key_env`,
    /// `api_key_file`, `tokenizer`, `context_window`, `connect_timeout_ms`, `first_token_timeout_ms`,
    /// `request_timeout_ms`, `retries`, `prompt_format`, `send_stop_token_ids` (see docs/teams.md).
    remote: RemoteSettings = RemoteSettings::default(),
    /// Most tokens generated for one suggestion.
    max_tokens: usize = 64,
    /// Milliseconds from the keystroke after which a suggestion ends at its last complete line (it goes on
    /// until it has one): a model fast enough gives whole blocks within it, a slower one their first lines
    /// while the user still waits. 0: no limit (a suggestion ends when complete or at `max_tokens`).
    time_budget_ms: usize = codellama_text::postprocess::DEFAULT_TIME_BUDGET.as_millis() as usize,
    /// Most tokens generated for one code action (an explanation, generated code, a doc comment).
    action_max_tokens: usize = 256,
    /// Tokens the model sees at once (prompt plus suggestion); the KV cache is allocated for this many.
    /// At most the model's trained context.
    context_window: usize = 2048,
    /// What the in-process model's KV cache stores keys and values as: "f16", or "q8_0" (about half the
    /// memory and the bytes read per generated token at long contexts; CPU only; suggestions may differ
    /// slightly from f16's).
    kv_cache_type: KvCacheType = KvCacheType::F16,
    /// How many prompts' KV caches the in-process model keeps, one per recently edited document in practice,
    /// so that going back to a file does not compute its prompt again; each takes up to the memory of a
    /// full `context_window` (positions never written take none). 0: as many as fit in 512 MB, at most 4
    /// (one for a 7B model at 2,048 positions, four for Qwen2.5-Coder 1.5B).
    prompt_caches: usize = 0,
    /// The shortest run of prompt tokens that the in-process model takes from its cache at other positions
    /// than where it computed them (their keys turned to the new positions) instead of computing them again,
    /// like llama.cpp's `--cache-reuse` but in either direction: a line typed or deleted higher up, the
    /// middle of a fill-in-the-middle prompt moving down as the user types, or a jump that slides the
    /// window down a long file leave most of the prompt as text the cache holds elsewhere. Such tokens keep
    /// what the text before them made of them when they were computed, so a suggestion may differ a little
    /// from one computed afresh. 0: reuse only the prompt's start as cached.
    cache_reuse: usize = codellama_engine::DEFAULT_CACHE_REUSE,
    /// The most prompt tokens the in-process model computes for a suggestion before it answers from a
    /// smaller window: after opening a file or jumping far from the last edit its caches hold little of
    /// the prompt, and the whole window would take seconds (12 s for Qwen2.5-Coder 1.5B on two cores).
    /// The same text around the cursor is then tried in smaller windows, each three quarters of this many
    /// tokens less than the one before, and the largest that fits is used; the window grows back over
    /// the next keystrokes as its text is found cached. Null: sized by the model (530 tokens for
    /// Qwen2.5-Coder 1.5B, 1,658 for 0.5B, 256 for a 7B). 0: always the whole window. The `complete`
    /// command always uses the whole window.
    cold_prompt_tokens: Option<usize> = None,
    /// How the prompt budget is shared between the text before the cursor and the text after it
    /// (prefix:suffix; 3 means 3:1). Also accepted as a string "3:1".
    prefix_suffix_ratio: f32 = 3.0,
    /// Sampling temperature; 0 picks the most likely token every time (deterministic).
    temperature: f32 = 0.0,
    /// CPU threads for the model. Null: one per core.
    threads: Option<usize> = None,
    /// Where the model runs: "cpu", "cuda", "cuda:N" or "metal" (the last three need a build with that feature).
    device: String = "cpu".to_string(),
    /// Fill-in-the-middle prompt format: "auto" (from the model's tokens), "codellama", "starcoder",
    /// "deepseek", "qwen", "codegemma", or "none" (continue the text before the cursor only).
    fim_template: FimTemplateSetting = FimTemplateSetting::Auto,
    /// Order of the fill-in-the-middle prompt: "spm" (suffix first; best reuse of the model's cache while
    /// typing), "psm", or "auto" (the template's preference).
    fim_order: FimOrderSetting = FimOrderSetting::Auto,
    /// Tokens of other open documents (most recently edited first) shown to the model before the text
    /// around the cursor, at most a third of the prompt; in the repository format for models trained on
    /// it (Qwen2.5-Coder, StarCoder2), otherwise each headed by its path in a comment. 0 turns this off.
    context_tokens: usize = 0,
    /// Token healing at the cursor: the prompt leaves out the last token before the cursor and the model
    /// writes it again, constrained to the same text, so a cursor after indentation or inside a word does
    /// not put the model off (only with the in-process engine).
    token_healing: bool = true,
    /// Speculative decoding when sampling is greedy (temperature 0): the tokens that followed the last few
    /// tokens where they occurred before (in the document, other open files or the suggestion) are
    /// checked by the model in one pass, so repeated code comes sooner. The suggestion is the same either
    /// way (only with the in-process engine).
    speculative: bool = true,
    /// Language ids (as the editor names them, e.g. "python", "rust") that get suggestions. Empty: all.
    languages: Vec<String> = Vec::new(),
    /// Log level for stderr and the client's log: "off", "error", "warn", "info", "debug" (one line per
    /// completion with token counts and timings) or "trace".
    log_level: LogLevel = LogLevel::Info,
    /// Recent suggestions kept to answer typing ahead without the model (entries; 0 turns this off).
    cache_size: usize = 64,
}

/// Declares the flags of a shell command that are configuration keys (`--max-tokens`), each documented as its
/// key. `flag: key` gives a key another flag name (`explain --max-tokens` sets `action_max_tokens`). Values are read
/// as environment variables are, on top of the server's defaults and `CODELLAMA_LSP_*` ([`Config::for_command`]).
macro_rules! config_flags {
    ($(#[doc = $doc:literal])+ $name:ident { $($flag:ident $(: $key:ident)?),+ $(,)? }) => {
        $(#[doc = $doc])+
        #[derive(Debug, Clone, Default, clap::Args)]
        pub struct $name {
            $(#[arg(long, value_name = "VALUE", help = Config::help(config_flags!(@key $flag $($key)?)))]
            pub $flag: Option<String>,)+
        }

        impl $name {
            /// The flags given, as (key, value) pairs.
            pub fn given(&self) -> Vec<(&'static str, String)> {
                let mut out = Vec::new();
                $(if let Some(v) = &self.$flag {
                    out.push((config_flags!(@key $flag $($key)?), v.clone()));
                })+
                out
            }
        }
    };
    (@key $flag:ident) => { stringify!($flag) };
    (@key $flag:ident $key:ident) => { stringify!($key) };
}

config_flags! {
    /// The model a shell command loads.
    ModelFlags { model, draft_model, threads, context_window, kv_cache_type, prompt_caches, device }
}

config_flags! {
    /// How `complete` and `eval` build the prompt and generate, as the server does.
    SuggestionFlags { max_tokens, time_budget_ms, cache_reuse, temperature, fim_template, fim_order, prefix_suffix_ratio, token_healing, speculative }
}

config_flags! {
    /// The code-action commands (`explain`, `generate`): their model and length.
    ActionFlags { chat_model, max_tokens: action_max_tokens }
}

/// What a layer of settings changed, and what was wrong with it.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Applied {
    /// Keys whose value changed.
    pub changed: Vec<&'static str>,
    /// Keys given a valid value, changed or not.
    pub given: Vec<&'static str>,
    /// Unknown keys and bad values, one human-readable line each.
    pub problems: Vec<String>,
}

impl Config {
    /// Applies a settings object from a client: the keys themselves, or a `codellama` section holding them
    /// (optionally under `settings`, as `workspace/didChangeConfiguration` sends it). `null` changes nothing.
    pub fn apply_json(&mut self, value: &Value, origin: &str) -> Applied {
        let mut applied = Applied::default();
        let Some(obj) = section(value) else {
            if !value.is_null() {
                applied.problems.push(format!(
                    "{origin}: expected an object of settings, got {value}"
                ));
            }
            return applied;
        };
        for (key, v) in &obj {
            self.apply_one(key, v, origin, &mut applied);
        }
        applied
            .changed
            .sort_by_key(|k| Self::KEYS.iter().position(|x| x == k));
        applied
    }

    /// Applies `(key, text)` pairs such as command-line flags or environment variables give.
    pub fn apply_pairs<'a>(
        &mut self,
        pairs: impl IntoIterator<Item = (&'a str, String)>,
        origin: &str,
    ) -> Applied {
        let mut applied = Applied::default();
        for (key, text) in pairs {
            self.apply_one(key, &Value::String(text), origin, &mut applied);
        }
        applied
    }

    /// Applies the `CODELLAMA_LSP_<KEY>` variables found in `vars` (pass `std::env::vars()`).
    pub fn apply_env(&mut self, vars: impl IntoIterator<Item = (String, String)>) -> Applied {
        let pairs: Vec<(String, String)> = vars
            .into_iter()
            .filter_map(|(name, value)| {
                let rest = name.strip_prefix(ENV_PREFIX)?;
                let key = (!NOT_SETTINGS.contains(&rest)).then(|| rest.to_ascii_lowercase())?;
                Some((key, value))
            })
            .collect();
        let mut applied = Applied::default();
        for (key, value) in &pairs {
            let origin = format!("{ENV_PREFIX}{}", key.to_ascii_uppercase());
            self.apply_one(key, &Value::String(value.clone()), &origin, &mut applied);
        }
        applied
    }

    fn apply_one(&mut self, key: &str, value: &Value, origin: &str, applied: &mut Applied) {
        let before = self.clone();
        let ratio = (key == "prefix_suffix_ratio")
            .then(|| ratio_from_text(value))
            .flatten();
        match self.set(key, ratio.as_ref().unwrap_or(value)) {
            Ok(true) => {
                if let Some(k) = Self::KEYS.iter().find(|k| **k == key) {
                    applied.given.push(k);
                    if *self != before {
                        applied.changed.push(k);
                    }
                }
            }
            Ok(false) => applied.problems.push(format!(
                "{origin}: unknown setting {key:?} (known: {})",
                Self::KEYS.join(", ")
            )),
            Err(e) => applied.problems.push(format!("{origin}: {key}: {e}")),
        }
        self.normalize();
    }

    /// Keeps values in ranges the rest of the server relies on.
    fn normalize(&mut self) {
        self.max_tokens = self.max_tokens.clamp(1, 4096);
        self.action_max_tokens = self.action_max_tokens.clamp(1, 4096);
        self.context_window = self.context_window.clamp(64, 1 << 20);
        self.prompt_caches = self.prompt_caches.min(64);
        if self.prefix_suffix_ratio.is_nan() || self.prefix_suffix_ratio <= 0.0 {
            self.prefix_suffix_ratio = 3.0;
        }
        self.temperature = self.temperature.clamp(0.0, 5.0);
        self.languages
            .iter_mut()
            .for_each(|l| *l = l.to_ascii_lowercase());
    }

    /// The configuration of a shell command: the server's defaults, then the environment, then its flags. A bad
    /// flag is an error; the environment's problems come back beside the configuration (to print as warnings:
    /// the server, too, reports and ignores them).
    pub fn for_command(
        flags: Vec<(&'static str, String)>,
    ) -> Result<(Config, Vec<String>), String> {
        let mut config = Config::default();
        let env = config.apply_env(std::env::vars()).problems;
        let problems = config.apply_pairs(flags, "command line").problems;
        if problems.is_empty() {
            Ok((config, env))
        } else {
            Err(problems.join("; "))
        }
    }

    /// The help of the flag for `key`: its description and default.
    fn help(key: &str) -> String {
        Self::fields()
            .into_iter()
            .find(|f| f.key == key)
            .map(|f| format!("{} [default: {}]", f.doc, f.default))
            .unwrap_or_default()
    }

    /// The configuration from defaults, then the environment, then command-line flags.
    pub fn from_env_and_args(args: &ConfigArgs) -> (Config, Applied) {
        let mut config = Config::default();
        let mut all = config.apply_env(std::env::vars());
        let flags = config.apply_pairs(args.given(), "command line");
        all.problems.extend(flags.problems);
        all.changed.extend(flags.changed);
        (config, all)
    }

    /// The keys [`Config::model_key`] and [`Config::chat_model_key`] are made of.
    pub const MODEL_KEYS: &'static [&'static str] = &[
        "model",
        "draft_model",
        "chat_model",
        "backend",
        "remote",
        "context_window",
        "kv_cache_type",
        "prompt_caches",
        "threads",
        "device",
    ];

    /// The settings that decide which model is loaded and how; a change to any of them reloads the model.
    pub fn model_key(&self) -> ModelKey {
        match self.remote_config() {
            Some(remote) => ModelKey::Remote(remote),
            None => self.local_key(self.model.clone(), self.draft_model.clone()),
        }
    }

    /// The chat model to load beside the completion model: `None` when `chat_model` is empty or names the
    /// completion model (compared as written; the server also compares the files).
    pub fn chat_model_key(&self) -> Option<ModelKey> {
        let chat = self
            .chat_model
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())?;
        let same = self.backend == BackendKind::Local
            && self.model.as_deref().map(str::trim) == Some(chat);
        (!same).then(|| self.local_key(Some(chat.to_string()), None))
    }

    fn local_key(&self, model: Option<String>, draft_model: Option<String>) -> ModelKey {
        ModelKey::Local {
            model,
            draft_model,
            context_window: self.context_window,
            kv_cache_type: self.kv_cache_type.kv_type(),
            prompt_caches: self.prompt_caches(),
            threads: self.threads,
            device: self.device.clone(),
        }
    }

    /// The remote engine's settings, when `backend` names one.
    pub fn remote_config(&self) -> Option<RemoteConfig> {
        let BackendKind::Remote(kind) = self.backend else {
            return None;
        };
        Some(RemoteConfig {
            kind,
            ..self.remote.parsed.clone()
        })
    }

    /// How prompts are built with these settings.
    pub fn prompt_config(&self) -> PromptConfig {
        let template = match self.fim_template {
            FimTemplateSetting::Auto => None,
            FimTemplateSetting::CodeLlama => Some(prompt::FimTemplate::CodeLlama),
            FimTemplateSetting::StarCoder => Some(prompt::FimTemplate::StarCoder),
            FimTemplateSetting::DeepSeek => Some(prompt::FimTemplate::DeepSeek),
            FimTemplateSetting::Qwen => Some(prompt::FimTemplate::Qwen),
            FimTemplateSetting::CodeGemma => Some(prompt::FimTemplate::CodeGemma),
            FimTemplateSetting::None => Some(prompt::FimTemplate::Continuation),
        };
        let order = match self.fim_order {
            // SPM where the template supports it (the builder falls back to PSM otherwise).
            FimOrderSetting::Auto | FimOrderSetting::Spm => prompt::FimOrder::Spm,
            FimOrderSetting::Psm => prompt::FimOrder::Psm,
        };
        PromptConfig {
            template,
            order,
            prefix_suffix_ratio: self.prefix_suffix_ratio,
            extra_context_tokens: self.context_tokens,
        }
    }

    /// How the in-process engine loads `model` (the completion model unless told otherwise), with the
    /// draft model.
    pub fn load_options(&self, model: Option<String>) -> LoadOptions {
        LoadOptions {
            model,
            draft_model: self.draft_model.clone(),
            context_window: Some(self.context_window),
            threads: self.threads,
            device: Some(self.device.clone()),
            kv_cache_type: self.kv_cache_type.kv_type(),
            prompt_caches: self.prompt_caches(),
            prefill_chunk: None,
        }
    }

    /// `prompt_caches` for the engine (0: its own choice).
    fn prompt_caches(&self) -> Option<usize> {
        (self.prompt_caches > 0).then_some(self.prompt_caches)
    }

    /// A completion request for the text around a cursor with the suggestion settings (length, time
    /// budget, token healing, speculative decoding, cache reuse, temperature), as the server and the
    /// `complete` command send it.
    pub fn completion_request(
        &self,
        prefix: &str,
        suffix: &str,
    ) -> codellama_text::completion::CompletionRequest {
        let mut req =
            codellama_text::completion::CompletionRequest::new(prefix, suffix, self.max_tokens);
        req.postprocess.time_budget = self.time_budget();
        req.token_healing = self.token_healing;
        req.speculative = self.speculative.into();
        req.cache_reuse = self.cache_reuse;
        req.cold_prompt_tokens = self.cold_prompt_tokens;
        req.sampling.temperature = self.temperature;
        req
    }

    /// `time_budget_ms` for post-processing (0: none).
    pub fn time_budget(&self) -> std::time::Duration {
        match self.time_budget_ms {
            0 => std::time::Duration::MAX,
            ms => std::time::Duration::from_millis(ms as u64),
        }
    }

    /// Whether suggestions are on for documents of this language.
    pub fn language_enabled(&self, language_id: &str) -> bool {
        self.languages.is_empty()
            || self
                .languages
                .iter()
                .any(|l| l.eq_ignore_ascii_case(language_id))
    }
}

/// `prefix_suffix_ratio` also accepts "3:1".
fn ratio_from_text(value: &Value) -> Option<Value> {
    let text = value.as_str()?;
    let (a, b) = text.split_once(':')?;
    let (a, b) = (a.trim().parse::<f64>().ok()?, b.trim().parse::<f64>().ok()?);
    (b > 0.0).then(|| Value::from(a / b))
}

/// The settings object inside what a client sent.
fn section(value: &Value) -> Option<Map<String, Value>> {
    let obj = value.as_object()?;
    let inner = obj
        .get("settings")
        .and_then(Value::as_object)
        .map(|s| s.get("codellama").and_then(Value::as_object).unwrap_or(s))
        .or_else(|| obj.get("codellama").and_then(Value::as_object))
        .unwrap_or(obj);
    Some(inner.clone())
}

/// The part of the configuration that decides the loaded model.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelKey {
    /// A model in this process.
    Local {
        model: Option<String>,
        draft_model: Option<String>,
        context_window: usize,
        kv_cache_type: KvType,
        /// `None`: as many as fit the engine's budget.
        prompt_caches: Option<usize>,
        threads: Option<usize>,
        device: String,
    },
    /// A remote engine.
    Remote(RemoteConfig),
}

impl ModelKey {
    /// How messages name the model.
    pub fn label(&self) -> String {
        match self {
            ModelKey::Local { model: Some(m), .. } => m.clone(),
            ModelKey::Local { model: None, .. } => "the default model".to_string(),
            ModelKey::Remote(r) => {
                format!("the {} at {}", r.kind.engine_name(), r.url_or_default())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn draft_model_reloads_the_completion_model_only() {
        let mut c = Config::default();
        c.apply_json(&json!({"chat_model": "chat.gguf"}), "test");
        let (model, chat) = (c.model_key(), c.chat_model_key());
        assert!(chat.is_some());
        let applied = c.apply_json(&json!({"draft_model": "small.gguf"}), "test");
        assert_eq!(applied.changed, vec!["draft_model"]);
        assert_ne!(c.model_key(), model);
        assert_eq!(c.chat_model_key(), chat);
        assert_eq!(
            c.load_options(None).draft_model.as_deref(),
            Some("small.gguf")
        );
        c.apply_json(&json!({"draft_model": ""}), "test");
        assert_eq!((c.draft_model.as_ref(), c.model_key()), (None, model));
    }

    #[test]
    fn kv_cache_type_is_read_and_reloads_the_model() {
        let mut c = Config::default();
        let before = c.model_key();
        let applied = c.apply_json(&json!({"kv_cache_type": "Q8_0"}), "test");
        assert_eq!(
            (applied.changed, c.kv_cache_type),
            (vec!["kv_cache_type"], KvCacheType::Q8_0)
        );
        assert_ne!(c.model_key(), before);
        assert_eq!(c.load_options(None).kv_cache_type, KvType::Q8_0);
        let bad = c.apply_json(&json!({"kv_cache_type": "q4_0"}), "test");
        assert!(bad.problems[0].contains("\"q4_0\""), "{:?}", bad.problems);
        assert_eq!(c.kv_cache_type, KvCacheType::Q8_0);
    }

    #[test]
    fn every_field_is_documented_and_has_a_flag_and_variable() {
        let fields = Config::fields();
        assert_eq!(fields.len(), Config::KEYS.len());
        for f in &fields {
            assert!(f.doc.len() > 20, "{} needs a real description", f.key);
            assert!(f.key.chars().all(|c| c.is_ascii_lowercase() || c == '_'));
        }
        let table = docs::markdown();
        for key in Config::KEYS {
            assert!(table.contains(&format!("`{key}`")));
            assert!(table.contains(&format!("CODELLAMA_LSP_{}", key.to_ascii_uppercase())));
        }
    }

    #[test]
    fn flat_and_sectioned_settings_are_both_accepted() {
        let mut c = Config::default();
        let a = c.apply_json(&json!({"max_tokens": 32, "fim_order": "PSM"}), "init");
        assert_eq!(a.changed, vec!["max_tokens", "fim_order"]);
        assert!(a.problems.is_empty());
        assert_eq!((c.max_tokens, c.fim_order), (32, FimOrderSetting::Psm));

        c.apply_json(
            &json!({"settings": {"codellama": {"temperature": "0.2"}}}),
            "change",
        );
        assert_eq!(c.temperature, 0.2);
        c.apply_json(
            &json!({"codellama": {"languages": ["Python", "rust"]}}),
            "init",
        );
        assert_eq!(c.languages, vec!["python", "rust"]);
        c.apply_json(&json!({"settings": {"threads": 3}}), "change");
        assert_eq!(c.threads, Some(3));
    }

    #[test]
    fn bad_values_and_unknown_keys_are_reported_and_ignored() {
        let mut c = Config::default();
        let a = c.apply_json(
            &json!({"max_tokens": "many", "nope": 1, "fim_template": "gpt", "temperature": 0.5}),
            "init",
        );
        assert_eq!(c.max_tokens, Config::default().max_tokens);
        assert_eq!(c.fim_template, FimTemplateSetting::Auto);
        assert_eq!(c.temperature, 0.5);
        assert_eq!(a.problems.len(), 3, "{:?}", a.problems);
        assert!(a
            .problems
            .iter()
            .any(|p| p.contains("unknown setting \"nope\"")));
        assert!(c.apply_json(&json!(null), "init").problems.is_empty());
        assert_eq!(c.apply_json(&json!([1]), "init").problems.len(), 1);
    }

    #[test]
    fn environment_then_flags() {
        let mut c = Config::default();
        let a = c.apply_env(vec![
            ("CODELLAMA_LSP_MAX_TOKENS".to_string(), "16".to_string()),
            (
                "CODELLAMA_LSP_LANGUAGES".to_string(),
                "python, rust".to_string(),
            ),
            ("CODELLAMA_LSP_THREADS".to_string(), "auto".to_string()),
            ("CODELLAMA_LSP_CPU".to_string(), "avx2".to_string()),
            ("PATH".to_string(), "/bin".to_string()),
        ]);
        assert!(a.problems.is_empty(), "{:?}", a.problems);
        assert_eq!(c.max_tokens, 16);
        assert_eq!(c.languages, vec!["python", "rust"]);
        assert_eq!(c.threads, None);
        let args = ConfigArgs {
            max_tokens: Some("8".into()),
            model: Some("/m.gguf".into()),
            ..ConfigArgs::default()
        };
        c.apply_pairs(args.given(), "command line");
        assert_eq!(c.max_tokens, 8);
        assert_eq!(c.model.as_deref(), Some("/m.gguf"));
    }

    #[test]
    fn command_flags_are_configuration_keys() {
        use clap::{Args, Command, FromArgMatches};
        fn check<F: Args + FromArgMatches>(given: fn(&F) -> Vec<(&'static str, String)>) {
            let command = F::augment_args(Command::new("t"));
            let mut argv = vec!["t".to_string()];
            for arg in command.get_arguments() {
                argv.extend([format!("--{}", arg.get_long().unwrap()), "1".into()]);
            }
            let flags = argv.len() / 2;
            let matches = command.try_get_matches_from(argv).unwrap();
            let pairs = given(&F::from_arg_matches(&matches).unwrap());
            assert_eq!(pairs.len(), flags);
            for (key, _) in pairs {
                assert!(Config::KEYS.contains(&key), "{key} is no key");
            }
        }
        check(ModelFlags::given);
        check(SuggestionFlags::given);
        check(ActionFlags::given);
    }

    #[test]
    fn commands_read_flags_as_the_server_reads_settings() {
        let flags = vec![
            ("threads", "auto".into()),
            ("action_max_tokens", "9".into()),
        ];
        let (c, _) = Config::for_command(flags).unwrap();
        assert_eq!((c.threads, c.action_max_tokens), (None, 9));
        let err = Config::for_command(vec![("context_window", "big".into())]).unwrap_err();
        assert!(
            err.contains("context_window") && err.contains("big"),
            "{err}"
        );
    }

    #[test]
    fn template_settings_name_the_templates_they_choose() {
        for &name in FimTemplateSetting::NAMES {
            let mut c = Config::default();
            c.apply_pairs([("fim_template", name.to_string())], "test");
            let chosen = c.prompt_config().template.map(prompt::FimTemplate::name);
            assert_eq!(chosen.unwrap_or("auto"), name);
        }
    }

    #[test]
    fn ratio_and_model_key() {
        let mut c = Config::default();
        c.apply_json(&json!({"prefix_suffix_ratio": "1:1"}), "init");
        assert_eq!(c.prefix_suffix_ratio, 1.0);
        c.apply_json(&json!({"prefix_suffix_ratio": -2}), "init");
        assert_eq!(c.prefix_suffix_ratio, 3.0);
        // Flags and environment variables take the same "a:b" form.
        let a = c.apply_pairs([("prefix_suffix_ratio", "2:1".to_string())], "flags");
        assert!(a.problems.is_empty(), "{:?}", a.problems);
        assert_eq!(c.prefix_suffix_ratio, 2.0);
        let key = c.model_key();
        c.apply_json(&json!({"max_tokens": 10, "temperature": 1}), "change");
        assert_eq!(key, c.model_key());
        c.apply_json(&json!({"context_window": 1024}), "change");
        assert_ne!(key, c.model_key());
    }

    #[test]
    fn backend_and_remote() {
        let mut c = Config::default();
        assert_eq!(c.remote_config(), None);
        assert!(matches!(c.model_key(), ModelKey::Local { .. }));
        let a = c.apply_json(
            &json!({"backend": "llamacpp", "remote": {"url": "http://gpu:8080", "retries": 0}}),
            "init",
        );
        assert!(a.problems.is_empty(), "{:?}", a.problems);
        assert_eq!(c.backend, BackendKind::Remote(RemoteKind::LlamaCpp));
        let ModelKey::Remote(r) = c.model_key() else {
            panic!("a remote key")
        };
        assert_eq!(
            (r.kind, r.url.as_str(), r.retries),
            (RemoteKind::LlamaCpp, "http://gpu:8080", 0)
        );
        // The chat model is loaded beside a remote engine, even under the same name.
        c.apply_json(&json!({"model": "m.gguf", "chat_model": "m.gguf"}), "init");
        assert!(c.chat_model_key().is_some());

        // Unknown keys, a kind inside `remote`, and unknown backends are refused; the old values stay.
        for bad in [
            json!({"remote": {"api_key": "x"}}),
            json!({"remote": {"kind": "ollama"}}),
            json!({"remote": [1]}),
            json!({"backend": "tgi"}),
        ] {
            let a = c.apply_json(&bad, "change");
            assert_eq!(a.problems.len(), 1, "{bad}: {:?}", a.problems);
        }
        assert_eq!(c.remote.written["url"], "http://gpu:8080");
        // Environment variables and flags give the object as JSON text.
        c.apply_pairs(
            [("remote", r#"{"model": "codellama:7b-code"}"#.to_string())],
            "flags",
        );
        assert_eq!(c.remote.written["model"], "codellama:7b-code");
        c.apply_pairs([("backend", "local".to_string())], "flags");
        assert!(matches!(c.model_key(), ModelKey::Local { .. }));
        assert_eq!(c.chat_model_key(), None, "same model as written");
        c.apply_json(&json!({"chat_model": ""}), "change");
        assert_eq!(c.chat_model_key(), None);
    }

    #[test]
    fn languages_filter() {
        let mut c = Config::default();
        assert!(c.language_enabled("anything"));
        c.apply_json(&json!({"languages": "python"}), "init");
        assert!(c.language_enabled("Python"));
        assert!(!c.language_enabled("rust"));
    }
}
