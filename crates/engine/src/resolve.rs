//! Model resolution: what `--model` (or the `model` setting) names, turned into files on disk.
//!
//! Accepted forms: a local `.gguf` file; a Hugging Face model directory (`config.json`,
//! `tokenizer.json`, `*.safetensors`); a Hub reference `owner/repo[:file.gguf]` fetched into the standard
//! Hugging Face cache (found there offline once fetched; downloads go through `hub`, which reports progress
//! and can be cancelled). With nothing given, the default model that `scripts/fetch-model` installs
//! (Qwen2.5-Coder-0.5B-Instruct) is used when present, and fetched from the Hub into its cache otherwise.
//! Every failure lists what was tried.

use std::path::{Path, PathBuf};

use super::error::{EngineError, Result};
use super::hub::{self, Hooks, HubError};

/// The file name of the default model fetched by `scripts/fetch-model`: Qwen2.5-Coder-0.5B-Instruct
/// (Q4_K_M, 491 MB), trained to fill in the middle and to answer ChatML, so one file serves completions
/// and code actions.
pub const DEFAULT_MODEL_FILE: &str = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";
/// The Hub repository that holds [`DEFAULT_MODEL_FILE`].
pub const DEFAULT_MODEL_REPO: &str = "Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    Gguf(PathBuf),
    HfDir(PathBuf),
}

impl ModelSource {
    pub fn path(&self) -> &Path {
        match self {
            ModelSource::Gguf(p) | ModelSource::HfDir(p) => p,
        }
    }
}

/// Resolves a model specification (`None`: the default small model), downloading without reports.
pub fn resolve(spec: Option<&str>) -> Result<ModelSource> {
    let mut ignore = |_: hub::Event| {};
    resolve_with(
        spec,
        &mut Hooks {
            on_event: &mut ignore,
            cancel: &super::CancelToken::new(),
        },
    )
}

/// [`resolve`], with a download's progress going to `hooks` (which may cancel it).
pub fn resolve_with(spec: Option<&str>, hooks: &mut Hooks<'_>) -> Result<ModelSource> {
    match spec.map(str::trim).filter(|s| !s.is_empty()) {
        None => default_model(hooks),
        Some(spec) => resolve_spec(spec, hooks),
    }
}

fn resolve_spec(spec: &str, hooks: &mut Hooks<'_>) -> Result<ModelSource> {
    let path = expand_home(spec);
    if path.is_file() {
        return Ok(ModelSource::Gguf(path));
    }
    if path.is_dir() {
        return local_dir(spec, &path);
    }
    if let Some((repo, file)) = parse_hub_ref(spec) {
        return from_hub(spec, &repo, file.as_deref(), hooks);
    }
    Err(EngineError::ModelNotFound {
        spec: spec.to_string(),
        tried: format!("{} (no such file or directory)", path.display()),
        hint: "pass the path of a .gguf file, a Hugging Face model directory, or a Hub reference owner/repo:file.gguf".into(),
    })
}

fn expand_home(spec: &str) -> PathBuf {
    match (spec.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(spec),
    }
}

/// A directory: a Hugging Face checkpoint, or a folder holding exactly one `.gguf`.
fn local_dir(spec: &str, dir: &Path) -> Result<ModelSource> {
    if dir.join("config.json").is_file() {
        return Ok(ModelSource::HfDir(dir.to_path_buf()));
    }
    let ggufs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|source| EngineError::Io {
            path: dir.to_path_buf(),
            source,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
        .collect();
    match ggufs.as_slice() {
        [one] => Ok(ModelSource::Gguf(one.clone())),
        _ => Err(EngineError::ModelNotFound {
            spec: spec.to_string(),
            tried: format!(
                "{}: no config.json, and {} .gguf files",
                dir.display(),
                ggufs.len()
            ),
            hint: "name the .gguf file itself, or point at a directory with config.json, tokenizer.json and *.safetensors".into(),
        }),
    }
}

/// `owner/repo` or `owner/repo:file` (no path separators beyond the one slash).
fn parse_hub_ref(spec: &str) -> Option<(String, Option<String>)> {
    let (repo, file) = match spec.split_once(':') {
        Some((r, f)) => (r, Some(f.to_string())),
        None => (spec, None),
    };
    let mut parts = repo.split('/');
    let (owner, name) = (parts.next()?, parts.next()?);
    let valid = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    (parts.next().is_none() && valid(owner) && valid(name) && !spec.starts_with('.'))
        .then(|| (repo.to_string(), file.filter(|f| !f.is_empty())))
}

fn from_hub(
    spec: &str,
    repo: &str,
    file: Option<&str>,
    hooks: &mut Hooks<'_>,
) -> Result<ModelSource> {
    let cache = hf_hub::Cache::from_env();
    let cached_repo = cache.model(repo.to_string());
    if let Some(file) = file {
        if let Some(p) = cached_repo.get(file) {
            return Ok(ModelSource::Gguf(p));
        }
    } else if let Some(cfg) = cached_repo.get("config.json") {
        if let Some(dir) = cfg.parent() {
            return Ok(ModelSource::HfDir(dir.to_path_buf()));
        }
    }
    let download_error = |e: HubError| match e {
        HubError::Cancelled => EngineError::Cancelled,
        HubError::Failed(detail) => EngineError::Download {
            spec: spec.to_string(),
            detail,
        },
    };
    let mut get = |name: &str| {
        hub::probe(repo, name)
            .and_then(|f| hub::fetch(&f, hooks))
            .map_err(|e| match e {
                HubError::Failed(detail) => HubError::Failed(format!(
                    "{repo}/{name} is not in the Hugging Face cache ({}) and fetching it failed: {detail}",
                    cache.path().display()
                )),
                cancelled => cancelled,
            })
    };
    if let Some(file) = file {
        return get(file).map(ModelSource::Gguf).map_err(download_error);
    }
    // The listing only: hf-hub's JSON request is enough here (nothing large, nothing to report).
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .with_progress(false)
        .build()
        .map_err(|e| download_error(HubError::Failed(e.to_string())))?;
    let info = api
        .model(repo.to_string())
        .info()
        .map_err(|e| download_error(HubError::Failed(format!("listing {repo} failed: {e}"))))?;
    let names: Vec<String> = info.siblings.into_iter().map(|s| s.rfilename).collect();
    if let Some(gguf) = pick_gguf(&names) {
        return get(&gguf).map(ModelSource::Gguf).map_err(download_error);
    }
    let mut dir = None;
    for name in names.iter().filter(|n| {
        n.as_str() == "config.json"
            || n.as_str() == "tokenizer.json"
            || n.as_str() == "tokenizer_config.json"
            || n.ends_with(".safetensors")
    }) {
        let p = get(name).map_err(download_error)?;
        dir = p.parent().map(Path::to_path_buf);
    }
    dir.map(ModelSource::HfDir).ok_or_else(|| {
        download_error(HubError::Failed(format!(
            "{repo} has neither a .gguf file nor config.json + safetensors"
        )))
    })
}

/// Prefers a 4-bit K-quant, then Q8_0, then any GGUF in the listing.
fn pick_gguf(names: &[String]) -> Option<String> {
    let ggufs: Vec<&String> = names.iter().filter(|n| n.ends_with(".gguf")).collect();
    for pref in ["Q4_K_M", "Q4_K_S", "Q8_0", "Q5_K_M"] {
        if let Some(n) = ggufs.iter().find(|n| n.contains(pref)) {
            return Some((*n).clone());
        }
    }
    ggufs.first().map(|n| (*n).clone())
}

/// Where the default small model may live: beside the binary's checkout, the current directory, or the
/// user's data directory.
pub fn default_model_candidates() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(p) = std::env::var_os("CODELLAMA_LSP_MODELS") {
        dirs.push(PathBuf::from(p));
    }
    if let Ok(exe) = std::env::current_exe() {
        // target/{release,debug}/codellama-lsp -> <repo>/models
        for anc in exe.ancestors().skip(1).take(4) {
            dirs.push(anc.join("models"));
        }
    }
    if let Ok(cwd) = std::env::current_dir() {
        dirs.push(cwd.join("models"));
    }
    if let Some(d) = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
    {
        dirs.push(d.join("codellama-lsp/models"));
    }
    let mut out: Vec<PathBuf> = Vec::new();
    for d in dirs {
        let p = d.join(DEFAULT_MODEL_FILE);
        if !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

/// The default model: installed by `scripts/fetch-model`, or in the Hugging Face cache, or downloaded there.
fn default_model(hooks: &mut Hooks<'_>) -> Result<ModelSource> {
    let candidates = default_model_candidates();
    if let Some(p) = candidates.iter().find(|p| p.is_file()) {
        return Ok(ModelSource::Gguf(p.clone()));
    }
    let spec = format!("{DEFAULT_MODEL_REPO}:{DEFAULT_MODEL_FILE}");
    from_hub(&spec, DEFAULT_MODEL_REPO, Some(DEFAULT_MODEL_FILE), hooks).map_err(|e| match e {
        EngineError::Download { detail, .. } => EngineError::ModelNotFound {
            spec: format!("the default model {DEFAULT_MODEL_FILE}"),
            tried: format!(
                "{}, and the Hugging Face Hub ({}): {detail}",
                candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                hub::endpoint()
            ),
            hint: "offline: run scripts/fetch-model in the codellama-lsp checkout; or pass --model PATH.gguf"
                .into(),
        },
        other => other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_references() {
        assert_eq!(
            parse_hub_ref("TheBloke/CodeLlama-7B-GGUF:codellama-7b.Q4_K_M.gguf"),
            Some((
                "TheBloke/CodeLlama-7B-GGUF".into(),
                Some("codellama-7b.Q4_K_M.gguf".into())
            ))
        );
        assert_eq!(
            parse_hub_ref("codellama/CodeLlama-7b-hf"),
            Some(("codellama/CodeLlama-7b-hf".into(), None))
        );
        assert_eq!(parse_hub_ref("models/x/y.gguf"), None);
        assert_eq!(parse_hub_ref("./a/b"), None);
        assert_eq!(parse_hub_ref("plain"), None);
    }

    #[test]
    fn missing_path_says_what_was_tried() {
        let err = resolve(Some("/no/such/model.gguf"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/no/such/model.gguf"), "{err}");
        assert!(err.contains("fix:"), "{err}");
    }

    #[test]
    fn gguf_choice_prefers_q4_k_m() {
        let names = ["a.Q2_K.gguf", "a.Q4_K_M.gguf", "a.Q8_0.gguf", "README.md"].map(String::from);
        assert_eq!(pick_gguf(&names).as_deref(), Some("a.Q4_K_M.gguf"));
    }
}
