//! Where a remote backend's tokenizer comes from. Prompts are built from token ids here, on our side, so
//! the tokenizer must be the engine's model's own:
//!
//! - a local `tokenizer.json`, `.gguf` file (only its metadata is read) or model directory;
//! - a Hugging Face repository `owner/repo` (its `tokenizer.json`, from the Hugging Face cache or
//!   downloaded into it);
//! - `"engine"` (also the default): whatever the engine can tell. llama.cpp: its model file (`/props`
//!   `model_path`) when that path is readable on this machine. Ollama: the `tokenizer.ggml.*` metadata
//!   of `/api/show`. OpenAI-compatible: the served model id as a local path, or as a Hugging Face repository
//!   (vLLM serves models under their repository names).

use std::path::{Path, PathBuf};

use codellama_engine::gguf::GgufFile;
use codellama_engine::{ModelConfig, Tokenizer};

use super::config::RemoteKind;
use super::Facts;
use codellama_engine::remote_error::RemoteError;

pub(crate) struct Loaded {
    pub tokenizer: Tokenizer,
    /// Hyper-parameters, when the source is a GGUF file of llama architecture.
    pub config: Option<ModelConfig>,
    /// Where it came from, for `ModelInfo`.
    pub source: String,
}

/// What the `tokenizer` setting names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Spec {
    Engine,
    Path(PathBuf),
    Hub(String),
}

impl Spec {
    pub fn parse(text: Option<&str>) -> Spec {
        let text = text.map(str::trim).unwrap_or("");
        match text {
            "" | "engine" | "remote" | "auto" => Spec::Engine,
            t => {
                let path = expand_home(t);
                if path.exists() || !looks_like_hub_repo(t) {
                    Spec::Path(path)
                } else {
                    Spec::Hub(t.to_string())
                }
            }
        }
    }
}

fn expand_home(text: &str) -> PathBuf {
    match (text.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(text),
    }
}

/// `owner/repo` with the characters Hugging Face allows.
fn looks_like_hub_repo(text: &str) -> bool {
    let mut parts = text.split('/');
    let valid = |s: &str| {
        !s.is_empty()
            && !s.starts_with('.')
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    matches!((parts.next(), parts.next(), parts.next()), (Some(a), Some(b), None) if valid(a) && valid(b))
}

pub(crate) fn load(
    spec: &Spec,
    kind: RemoteKind,
    facts: &mut Facts,
) -> Result<Loaded, RemoteError> {
    match spec {
        Spec::Path(p) => from_path(p),
        Spec::Hub(repo) => from_hub(repo),
        Spec::Engine => from_engine(kind, facts),
    }
}

fn from_engine(kind: RemoteKind, facts: &mut Facts) -> Result<Loaded, RemoteError> {
    let fix = "set `tokenizer` to the model's tokenizer.json or .gguf file, or its Hugging Face repository owner/repo";
    match kind {
        RemoteKind::Ollama => match facts.gguf_metadata.take() {
            Some(meta) => Ok(Loaded {
                tokenizer: super::ollama::tokenizer_from_metadata(meta)?,
                config: None,
                source: "Ollama's model metadata".into(),
            }),
            None => Err(RemoteError::tokenizer(format!(
                "Ollama did not send the model's vocabulary; {fix}"
            ))),
        },
        RemoteKind::LlamaCpp | RemoteKind::OpenAi => {
            let Some(id) = facts.model_path.clone() else {
                return Err(RemoteError::tokenizer(format!(
                    "the engine does not name its model; {fix}"
                )));
            };
            let path = PathBuf::from(&id);
            if path.is_file() {
                return from_path(&path);
            }
            if kind == RemoteKind::OpenAi && looks_like_hub_repo(&id) {
                return from_hub(&id);
            }
            Err(RemoteError::tokenizer(format!(
                "the engine's model {id:?} is not a file readable on this machine{}; {fix}",
                if kind == RemoteKind::OpenAi {
                    " nor a Hugging Face repository"
                } else {
                    ""
                }
            )))
        }
    }
}

fn from_path(path: &Path) -> Result<Loaded, RemoteError> {
    if path.is_dir() {
        let json = path.join("tokenizer.json");
        if json.is_file() {
            return from_path(&json);
        }
        let ggufs: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| RemoteError::tokenizer(format!("cannot list {}: {e}", path.display())))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
            .collect();
        return match ggufs.as_slice() {
            [one] => from_path(one),
            _ => Err(RemoteError::tokenizer(format!(
                "{} has no tokenizer.json and {} .gguf files; name the file",
                path.display(),
                ggufs.len()
            ))),
        };
    }
    if !path.is_file() {
        return Err(RemoteError::tokenizer(format!(
            "{} does not exist (`tokenizer` takes a tokenizer.json, a .gguf file, a model directory, a Hugging Face repository owner/repo, or \"engine\")",
            path.display()
        )));
    }
    let source = path.display().to_string();
    let is_gguf = std::fs::File::open(path)
        .and_then(|mut f| {
            let mut magic = [0u8; 4];
            std::io::Read::read_exact(&mut f, &mut magic).map(|_| magic == *b"GGUF")
        })
        .unwrap_or(false);
    if is_gguf {
        let file = GgufFile::open(path).map_err(|e| RemoteError::tokenizer(e.to_string()))?;
        let tokenizer = Tokenizer::from_gguf(&file.content)
            .map_err(|e| RemoteError::tokenizer(format!("{source}: {e}")))?;
        let config = ModelConfig::from_gguf(&file, &mut Vec::new()).ok();
        Ok(Loaded {
            tokenizer,
            config,
            source,
        })
    } else {
        let tokenizer = Tokenizer::from_file(path)
            .map_err(|e| RemoteError::tokenizer(format!("{source}: {e}")))?;
        Ok(Loaded {
            tokenizer,
            config: None,
            source,
        })
    }
}

/// `tokenizer.json` (and `tokenizer_config.json`, for the special-token settings) of a Hugging Face
/// repository: from the cache when there, else downloaded into it.
fn from_hub(repo: &str) -> Result<Loaded, RemoteError> {
    let cache = hf_hub::Cache::from_env();
    let cached = cache.model(repo.to_string());
    let path = match cached.get("tokenizer.json") {
        Some(p) => p,
        None => {
            let api = hf_hub::api::sync::ApiBuilder::from_env()
                .with_progress(false)
                .build()
                .map_err(|e| RemoteError::tokenizer(format!("Hugging Face client: {e}")))?;
            let remote = api.model(repo.to_string());
            let p = remote.get("tokenizer.json").map_err(|e| {
                RemoteError::tokenizer(format!(
                    "cannot fetch {repo}/tokenizer.json from Hugging Face ({e}); set `tokenizer` to a local file"
                ))
            })?;
            // Optional: special-token settings live there.
            let _ = remote.get("tokenizer_config.json");
            p
        }
    };
    let mut loaded = from_path(&path)?;
    loaded.source = format!("{repo} (Hugging Face)");
    Ok(loaded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        assert_eq!(Spec::parse(None), Spec::Engine);
        assert_eq!(Spec::parse(Some("engine")), Spec::Engine);
        assert_eq!(Spec::parse(Some("remote")), Spec::Engine);
        assert_eq!(
            Spec::parse(Some("codellama/CodeLlama-7b-hf")),
            Spec::Hub("codellama/CodeLlama-7b-hf".into())
        );
        assert_eq!(
            Spec::parse(Some("/models/tokenizer.json")),
            Spec::Path("/models/tokenizer.json".into())
        );
        assert_eq!(
            Spec::parse(Some("models/x/tokenizer.json")),
            Spec::Path("models/x/tokenizer.json".into())
        );
    }

    #[test]
    fn a_missing_file_says_what_is_accepted() {
        let err = from_path(Path::new("/no/such/tokenizer.json"))
            .err()
            .unwrap();
        assert!(err.to_string().contains("Hugging Face repository"), "{err}");
    }
}
