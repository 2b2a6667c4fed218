//! Loading a model: resolve the specification, open the files, read the hyper-parameters, build the
//! tokenizer and the weights. Used by the model thread and by tools that want a model without a thread.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::Device;

use super::error::{without_backtrace, EngineError, Result};
use super::gguf::GgufFile;
use super::model::{Llama, ModelConfig, SafetensorsSource, Weights};
use super::pool::default_threads;
use super::resolve::{resolve, ModelSource};
use super::tokenizer::Tokenizer;
use super::{KvType, ModelInfo};

/// Default number of positions the KV cache holds when no window is configured.
pub const DEFAULT_CONTEXT_WINDOW: usize = 4096;

#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// `None`: the default small model. Otherwise a path or Hub reference (see `resolve`).
    pub model: Option<String>,
    /// KV cache size in tokens (default 4096, never more than the trained context).
    pub context_window: Option<usize>,
    /// CPU threads for the model (default: physical cores).
    pub threads: Option<usize>,
    /// `"cpu"` (default), `"cuda"`, `"cuda:N"` or `"metal"`, when built with that feature.
    pub device: Option<String>,
    /// What the KV cache stores keys and values as (f16 by default; q8_0 on the CPU).
    pub kv_cache_type: KvType,
    /// How many prompts' KV caches the model thread keeps (see `prompt_cache`); `None`: as many as fit
    /// 512 MiB, at most 4.
    pub prompt_caches: Option<usize>,
    /// A smaller model with the same vocabulary whose greedy guesses speculative decoding verifies (a path
    /// or Hub reference, as `model`); loaded on the model thread after the model, with the same settings.
    pub draft_model: Option<String>,
    /// Prompt tokens per prefill step (`None`: by the model's size, 64 to 256; see `worker`). Tests that
    /// count what a cancelled step computed fix it.
    pub prefill_chunk: Option<usize>,
}

pub struct LoadedModel {
    pub(crate) model: Llama,
    pub tokenizer: Arc<Tokenizer>,
    pub info: ModelInfo,
}

pub fn load_model(opts: &LoadOptions, progress: &mut dyn FnMut(f32)) -> Result<LoadedModel> {
    load_as(opts, Weights::AsStored, progress)
}

/// `load_model`, keeping the matrices as `weights` says.
fn load_as(
    opts: &LoadOptions,
    weights: Weights,
    progress: &mut dyn FnMut(f32),
) -> Result<LoadedModel> {
    let start = Instant::now();
    // The device first: a missing GPU or driver is reported before any file is read or downloaded.
    let device = pick_device(opts.device.as_deref())?;
    let source = resolve(opts.model.as_deref())?;
    let mut warnings = Vec::new();
    let (mut model, tokenizer, name, file_size) = match &source {
        ModelSource::Gguf(path) => {
            let f = GgufFile::open(path)?;
            let cfg = ModelConfig::from_gguf(&f, &mut warnings)?;
            let tokenizer =
                Tokenizer::from_gguf(&f.content).map_err(|error| EngineError::Tokenizer {
                    path: path.clone(),
                    error,
                })?;
            check_vocabulary(path, "tokenizer.ggml.tokens", &tokenizer, &cfg)?;
            let model = Llama::from_gguf(&f, cfg, &device, weights, progress)?;
            let name = f.get_str("general.name").map(str::to_string);
            (model, tokenizer, name, f.file_size())
        }
        ModelSource::HfDir(dir) => load_hf_dir(dir, &device, weights, progress)?,
    };
    model.set_kv_cache_type(opts.kv_cache_type)?;
    let path = source.path().to_path_buf();
    let name = name.unwrap_or_else(|| file_stem(&path));
    let context_window = opts
        .context_window
        .unwrap_or(DEFAULT_CONTEXT_WINDOW)
        .clamp(16, model.cfg.context_length.max(16));
    let info = ModelInfo {
        name,
        path,
        config: model.cfg.clone(),
        context_window,
        file_size,
        load_ms: start.elapsed().as_millis() as u64,
        threads: opts.threads.unwrap_or_else(default_threads),
        device: format!("{device:?}"),
        warnings,
        cold_limit: 0,
    };
    for w in &info.warnings {
        tracing::warn!("{w}");
    }
    Ok(LoadedModel {
        model,
        tokenizer: Arc::new(tokenizer),
        info,
    })
}

/// Loads the draft model `opts.draft_model` names for `main` (loaded from `opts`): the same settings, and the
/// same vocabulary, token for token, or it is refused (its drafts would be other tokens' ids). Its
/// matrices are kept compact ([`Weights::Compact`]): on CPU its steps read their weights from memory, and
/// speculative decoding checks every guess, so the output does not change.
pub fn load_draft_model(opts: &LoadOptions, main: &LoadedModel, spec: &str) -> Result<LoadedModel> {
    let draft_opts = LoadOptions {
        model: Some(spec.to_string()),
        draft_model: None,
        ..opts.clone()
    };
    let draft = load_as(&draft_opts, Weights::Compact, &mut |_| {})?;
    match vocabulary_difference(&main.tokenizer, &draft.tokenizer) {
        None => Ok(draft),
        Some(detail) => Err(EngineError::DraftVocabulary {
            draft: draft.info.path.clone(),
            model: main.info.path.clone(),
            detail,
        }),
    }
}

/// Where two vocabularies first differ (their sizes, or the first id whose text differs), if they do.
fn vocabulary_difference(a: &Tokenizer, b: &Tokenizer) -> Option<String> {
    if a.vocab_size() != b.vocab_size() {
        return Some(format!(
            "its vocabulary has {} tokens, the model's {}",
            b.vocab_size(),
            a.vocab_size()
        ));
    }
    let id = (0..a.vocab_size() as u32).find(|&id| a.token_bytes(id) != b.token_bytes(id))?;
    Some(format!(
        "token {id} is {:?} in it but {:?} in the model",
        String::from_utf8_lossy(b.token_bytes(id)),
        String::from_utf8_lossy(a.token_bytes(id))
    ))
}

fn load_hf_dir(
    dir: &Path,
    device: &Device,
    weights: Weights,
    progress: &mut dyn FnMut(f32),
) -> Result<(Llama, Tokenizer, Option<String>, u64)> {
    let config_path = dir.join("config.json");
    let text = std::fs::read_to_string(&config_path).map_err(|source| EngineError::Io {
        path: config_path.clone(),
        source,
    })?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| EngineError::Corrupt {
            path: config_path.clone(),
            detail: e.to_string(),
        })?;
    let tokenizer_path = dir.join("tokenizer.json");
    let tokenizer =
        Tokenizer::from_file(&tokenizer_path).map_err(|error| EngineError::Tokenizer {
            path: tokenizer_path.clone(),
            error,
        })?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|source| EngineError::Io {
            path: dir.to_path_buf(),
            source,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(EngineError::ModelNotFound {
            spec: dir.display().to_string(),
            tried: format!("{}/*.safetensors (none found)", dir.display()),
            hint: "download the model's .safetensors files (PyTorch .bin checkpoints are not supported)".into(),
        });
    }
    let size = files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    let src = SafetensorsSource::open(dir, &files)?;
    let cfg = ModelConfig::from_hf_json(&config_path, &json, &src)?;
    check_vocabulary(&tokenizer_path, "the vocabulary", &tokenizer, &cfg)?;
    let model = Llama::from_safetensors(&src, cfg, device, weights, progress)?;
    Ok((model, tokenizer, None, size))
}

/// Every id the tokenizer can produce must have a row in the model's embedding table. `tokens` names
/// where the tokenizer's vocabulary came from.
fn check_vocabulary(
    path: &Path,
    tokens: &str,
    tokenizer: &Tokenizer,
    cfg: &ModelConfig,
) -> Result<()> {
    if tokenizer.vocab_size() > cfg.vocab_size {
        return Err(EngineError::Corrupt {
            path: path.to_path_buf(),
            detail: format!(
                "{tokens} has {} tokens but the model's vocabulary has {}",
                tokenizer.vocab_size(),
                cfg.vocab_size
            ),
        });
    }
    Ok(())
}

fn file_stem(path: &Path) -> String {
    path.file_stem()
        .or_else(|| path.file_name())
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

fn pick_device(name: Option<&str>) -> Result<Device> {
    let name = name.unwrap_or("cpu").trim();
    let (device, feature) = match name {
        "" | "cpu" => return Ok(Device::Cpu),
        "metal" => (Device::new_metal(0), "metal"),
        _ => match cuda_ordinal(name) {
            Some(idx) => (Device::new_cuda(idx), "cuda"),
            None => {
                return Err(EngineError::Device {
                    name: name.to_string(),
                    detail: "not a device name".into(),
                    hint: "use cpu, cuda, cuda:N (N a GPU number, from 0) or metal".into(),
                })
            }
        },
    };
    device.map_err(|e| EngineError::Device {
        name: name.to_string(),
        detail: without_backtrace(e).to_string(),
        hint: format!(
            "use a build with --features {feature} (scripts/build-cuda for cuda) on a machine with that \
             GPU and its driver, or device cpu"
        ),
    })
}

/// `cuda` is the first GPU, `cuda:N` the N-th; anything else is not a CUDA device name.
fn cuda_ordinal(name: &str) -> Option<usize> {
    match name.strip_prefix("cuda")? {
        "" => Some(0),
        rest => rest.strip_prefix(':')?.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device_error(name: &str) -> String {
        match pick_device(Some(name)) {
            Ok(d) => panic!("{name:?} gave a device: {d:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn cuda_names_are_parsed_strictly() {
        assert_eq!(cuda_ordinal("cuda"), Some(0));
        assert_eq!(cuda_ordinal("cuda:3"), Some(3));
        for bad in ["cudax", "cuda:", "cuda:x", "cuda3", "cuda:-1", "gpu"] {
            assert_eq!(cuda_ordinal(bad), None, "{bad:?}");
            let msg = device_error(bad);
            assert!(
                msg.contains(&format!("device {bad:?}")) && msg.contains("not a device name"),
                "{msg}"
            );
        }
        assert!(matches!(pick_device(Some(" cpu ")), Ok(Device::Cpu)));
    }

    #[test]
    fn a_bad_device_is_reported_before_the_model_is_looked_for() {
        let opts = LoadOptions {
            model: Some("/nonexistent/model.gguf".into()),
            device: Some("cuda:x".into()),
            ..LoadOptions::default()
        };
        match load_model(&opts, &mut |_| {}) {
            Err(EngineError::Device { name, .. }) => assert_eq!(name, "cuda:x"),
            Err(e) => panic!("expected the device error first, got: {e}"),
            Ok(_) => panic!("loaded a model that does not exist"),
        }
    }

    /// Without the feature, candle's own reason is in the message next to the fix.
    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_says_why_and_how_to_build_it() {
        let msg = device_error("cuda:1");
        assert!(msg.contains("device \"cuda:1\" cannot be used"), "{msg}");
        assert!(msg.contains("cuda support"), "{msg}");
        assert!(msg.contains("--features cuda"), "{msg}");
    }
}
