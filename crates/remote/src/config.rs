//! Settings of a remote backend, and the API key they point to.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use codellama_engine::remote_error::RemoteError;

/// Which protocol the engine speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RemoteKind {
    /// llama.cpp's own server (`llama-server`): `POST /completion` with token ids.
    #[serde(rename = "llama.cpp", alias = "llamacpp", alias = "llama-cpp")]
    LlamaCpp,
    /// Any OpenAI-compatible completions API (`POST /v1/completions`): vLLM, SGLang, LM Studio, llama.cpp's
    /// OpenAI route, TGI's OpenAI route...
    #[serde(rename = "openai", alias = "openai-compatible", alias = "vllm")]
    OpenAi,
    /// Ollama (`POST /api/generate` with `raw: true`).
    #[serde(rename = "ollama")]
    Ollama,
}

impl RemoteKind {
    /// The name the settings use.
    pub fn as_str(self) -> &'static str {
        match self {
            RemoteKind::LlamaCpp => "llama.cpp",
            RemoteKind::OpenAi => "openai",
            RemoteKind::Ollama => "ollama",
        }
    }

    /// The name messages use.
    pub fn engine_name(self) -> &'static str {
        match self {
            RemoteKind::LlamaCpp => "llama.cpp server",
            RemoteKind::OpenAi => "OpenAI-compatible server",
            RemoteKind::Ollama => "Ollama",
        }
    }

    pub fn default_url(self) -> &'static str {
        match self {
            RemoteKind::LlamaCpp => "http://127.0.0.1:8080",
            RemoteKind::OpenAi => "http://127.0.0.1:8000/v1",
            RemoteKind::Ollama => "http://127.0.0.1:11434",
        }
    }

    /// Parses a `backend` setting value; `Ok(None)` for `"local"`.
    pub fn parse(text: &str) -> Result<Option<Self>, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "" | "local" => Ok(None),
            other => serde_json::from_value(serde_json::Value::String(other.to_string()))
                .map(Some)
                .map_err(|_| {
                    format!("unknown backend {text:?} (use local, llama.cpp, openai or ollama)")
                }),
        }
    }
}

/// How the OpenAI-compatible backend sends the prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PromptFormat {
    /// Token ids when the engine accepts them (tried once when connecting), else text.
    #[default]
    Auto,
    /// Always token ids: the prompt is exactly what the prompt builder made (vLLM, SGLang, llama.cpp).
    Ids,
    /// Always text decoded from the ids; special tokens are written as their text, so how FIM markers come
    /// out depends on the engine's tokenizer.
    Text,
}

/// Everything a remote backend needs. Deserializes from the `remote` settings object (snake_case keys,
/// unknown keys refused); see `docs/teams.md` for examples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RemoteConfig {
    pub kind: RemoteKind,
    /// Base URL of the engine; empty: the kind's usual local address.
    pub url: String,
    /// Model name: required for Ollama, optional for OpenAI-compatible servers that serve one model, ignored
    /// by llama.cpp.
    pub model: Option<String>,
    /// Name of the environment variable that holds the API key.
    pub api_key_env: Option<String>,
    /// File that holds the API key (surrounding whitespace is ignored).
    pub api_key_file: Option<PathBuf>,
    /// Where the tokenizer comes from: a local `tokenizer.json`, `.gguf` or model directory, a Hugging Face
    /// repository `owner/repo` (its `tokenizer.json`), or `"engine"` / `null` (ask the engine: llama.cpp's
    /// model file when it is readable here, Ollama's model metadata, or the OpenAI model id as a local
    /// path or Hugging Face repository).
    pub tokenizer: Option<String>,
    /// Prompt plus generation, in tokens; `null`: what the engine reports.
    pub context_window: Option<usize>,
    #[serde(rename = "connect_timeout_ms", with = "millis")]
    pub connect_timeout: Duration,
    /// Longest wait for the first token, counted from the request, and for each later one, counted from the
    /// token before. Keep-alives and events without a token do not count.
    #[serde(rename = "first_token_timeout_ms", with = "millis")]
    pub first_token_timeout: Duration,
    /// Longest a whole answer may take, from the request to its last token.
    #[serde(rename = "request_timeout_ms", with = "millis")]
    pub request_timeout: Duration,
    /// Extra connection attempts after a failed connect (with backoff: 100 ms, 200 ms, 400 ms...). Only
    /// connection failures are retried, never a request the engine has received.
    pub retries: u32,
    /// OpenAI-compatible only.
    pub prompt_format: PromptFormat,
    /// OpenAI-compatible only: also send the prompt's stop token ids as `stop_token_ids` (vLLM and SGLang
    /// accept it; others may refuse it). Needed where the engine does not stop at Code Llama's `<EOT>`
    /// itself and does not stream token ids.
    pub send_stop_token_ids: bool,
}

impl Default for RemoteConfig {
    fn default() -> Self {
        Self {
            kind: RemoteKind::LlamaCpp,
            url: String::new(),
            model: None,
            api_key_env: None,
            api_key_file: None,
            tokenizer: None,
            context_window: None,
            connect_timeout: Duration::from_millis(2000),
            first_token_timeout: Duration::from_millis(30_000),
            request_timeout: Duration::from_millis(300_000),
            retries: 2,
            prompt_format: PromptFormat::Auto,
            send_stop_token_ids: false,
        }
    }
}

impl RemoteConfig {
    pub fn new(kind: RemoteKind, url: impl Into<String>) -> Self {
        Self {
            kind,
            url: url.into(),
            ..Self::default()
        }
    }

    /// Reads the settings object, e.g. `{"kind": "llama.cpp", "url": "http://gpu:8080"}`.
    pub fn from_json(value: &serde_json::Value) -> Result<Self, RemoteError> {
        serde_json::from_value(value.clone()).map_err(RemoteError::config)
    }

    /// The remote settings for a `backend` value and a `remote` settings object: `Ok(None)` for
    /// `"local"`; otherwise the object's settings with `kind` from `backend` (a `kind` in the object must
    /// agree).
    pub fn from_settings(
        backend: &str,
        remote: Option<&serde_json::Value>,
    ) -> Result<Option<Self>, RemoteError> {
        let Some(kind) = RemoteKind::parse(backend).map_err(RemoteError::config)? else {
            return Ok(None);
        };
        let mut obj = match remote {
            None | Some(serde_json::Value::Null) => serde_json::Map::new(),
            Some(serde_json::Value::Object(o)) => o.clone(),
            Some(other) => {
                return Err(RemoteError::config(format!(
                    "`remote` must be an object, not {other}"
                )))
            }
        };
        let kind_value = serde_json::to_value(kind).expect("kinds serialize");
        match obj.get("kind") {
            Some(k) if RemoteKind::parse(k.as_str().unwrap_or("")) != Ok(Some(kind)) => {
                return Err(RemoteError::config(format!(
                    "`backend` is {backend:?} but `remote.kind` is {k}"
                )))
            }
            _ => {
                obj.insert("kind".into(), kind_value);
            }
        }
        Self::from_json(&serde_json::Value::Object(obj)).map(Some)
    }

    /// The URL to use (the kind's default when empty).
    pub fn url_or_default(&self) -> &str {
        match self.url.trim() {
            "" => self.kind.default_url(),
            url => url,
        }
    }

    /// Reads the API key the settings name. `Ok(None)` when none is configured. Errors name the variable or
    /// file, never the key.
    pub fn load_api_key(&self) -> Result<Option<ApiKey>, RemoteError> {
        let env = self
            .api_key_env
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty());
        let key = match (env, &self.api_key_file) {
            (Some(_), Some(_)) => {
                return Err(RemoteError::config(
                    "set either `api_key_env` or `api_key_file`, not both",
                ))
            }
            (None, None) => return Ok(None),
            (Some(var), None) => match std::env::var(var) {
                Ok(v) => v,
                Err(std::env::VarError::NotPresent) => {
                    return Err(RemoteError::config(format!(
                        "`api_key_env` names the environment variable {var}, which is not set"
                    )))
                }
                Err(std::env::VarError::NotUnicode(_)) => {
                    return Err(RemoteError::config(format!(
                        "the environment variable {var} (`api_key_env`) is not valid UTF-8"
                    )))
                }
            },
            (None, Some(path)) => std::fs::read_to_string(path).map_err(|e| {
                RemoteError::config(format!(
                    "cannot read the API key file {} (`api_key_file`): {}",
                    path.display(),
                    e.kind()
                ))
            })?,
        };
        let key = key.trim();
        let origin = match env {
            Some(var) => format!("the environment variable {var}"),
            None => format!(
                "the file {}",
                self.api_key_file
                    .as_ref()
                    .map_or(String::new(), |p| p.display().to_string())
            ),
        };
        if key.is_empty() {
            return Err(RemoteError::config(format!(
                "{origin} holds an empty API key"
            )));
        }
        if !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(RemoteError::config(format!(
                "the API key in {origin} has spaces, line breaks or non-ASCII characters, which cannot go in an HTTP header"
            )));
        }
        Ok(Some(ApiKey(key.to_string())))
    }
}

/// An API key. It is only ever written into the `Authorization` header of requests to the configured
/// URL; `Debug` shows `<redacted>` and there is no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    pub(crate) fn bearer(&self) -> String {
        format!("Bearer {}", self.0)
    }

    pub(crate) fn secret(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn settings_parse_with_defaults_and_refuse_unknown_keys() {
        let cfg = RemoteConfig::from_json(&json!({"kind": "llama.cpp"})).unwrap();
        assert_eq!(cfg.url_or_default(), "http://127.0.0.1:8080");
        assert_eq!(cfg.first_token_timeout, Duration::from_secs(30));
        let cfg = RemoteConfig::from_json(&json!({
            "kind": "openai", "url": "https://gpu.example.com/v1", "model": "codellama/CodeLlama-13b-hf",
            "api_key_env": "TEAM_LLM_KEY", "tokenizer": "codellama/CodeLlama-13b-hf",
            "connect_timeout_ms": 500, "first_token_timeout_ms": 10000, "retries": 0,
            "prompt_format": "ids", "send_stop_token_ids": true, "context_window": 16384
        }))
        .unwrap();
        assert_eq!(cfg.kind, RemoteKind::OpenAi);
        assert_eq!(cfg.connect_timeout, Duration::from_millis(500));
        assert_eq!(cfg.prompt_format, PromptFormat::Ids);
        let err = RemoteConfig::from_json(&json!({"kind": "ollama", "api_key": "x"})).unwrap_err();
        assert!(err.to_string().contains("unknown field `api_key`"), "{err}");
        let err = RemoteConfig::from_json(&json!({"kind": "tgi"})).unwrap_err();
        assert!(err.to_string().contains("unknown variant"), "{err}");
        assert_eq!(RemoteKind::parse("local"), Ok(None));
        assert_eq!(
            RemoteKind::parse("llama.cpp"),
            Ok(Some(RemoteKind::LlamaCpp))
        );
        assert_eq!(RemoteKind::parse("Ollama"), Ok(Some(RemoteKind::Ollama)));
        assert!(RemoteKind::parse("tgi").is_err());
        assert_eq!(RemoteConfig::from_settings("local", None).unwrap(), None);
        let cfg =
            RemoteConfig::from_settings("ollama", Some(&json!({"model": "codellama:7b-code"})))
                .unwrap()
                .unwrap();
        assert_eq!(
            (cfg.kind, cfg.model.as_deref()),
            (RemoteKind::Ollama, Some("codellama:7b-code"))
        );
        assert_eq!(cfg.url_or_default(), "http://127.0.0.1:11434");
        let cfg = RemoteConfig::from_settings("llama.cpp", None)
            .unwrap()
            .unwrap();
        assert_eq!(cfg.kind, RemoteKind::LlamaCpp);
        assert!(RemoteConfig::from_settings("openai", Some(&json!({"kind": "ollama"}))).is_err());
        assert!(RemoteConfig::from_settings("openai", Some(&json!("http://x"))).is_err());
    }

    #[test]
    fn api_keys_come_from_a_file_or_a_variable_and_never_show() {
        let dir = std::env::temp_dir().join(format!("codellama-lsp-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("key");
        std::fs::write(&file, "sk-test-123\n").unwrap();
        let mut cfg = RemoteConfig::new(RemoteKind::OpenAi, "http://x");
        cfg.api_key_file = Some(file.clone());
        let key = cfg.load_api_key().unwrap().unwrap();
        assert_eq!(key.secret(), "sk-test-123");
        assert_eq!(format!("{key:?}"), "ApiKey(<redacted>)");

        std::fs::write(&file, "sk bad\n").unwrap();
        let err = cfg.load_api_key().unwrap_err().to_string();
        assert!(
            err.contains("cannot go in an HTTP header") && !err.contains("sk bad"),
            "{err}"
        );

        cfg.api_key_file = Some(dir.join("missing"));
        let err = cfg.load_api_key().unwrap_err().to_string();
        assert!(
            err.contains("missing") && err.contains("api_key_file"),
            "{err}"
        );

        cfg.api_key_file = None;
        cfg.api_key_env = Some("CODELLAMA_LSP_TEST_SURELY_UNSET_KEY".into());
        let err = cfg.load_api_key().unwrap_err().to_string();
        assert!(err.contains("CODELLAMA_LSP_TEST_SURELY_UNSET_KEY"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
