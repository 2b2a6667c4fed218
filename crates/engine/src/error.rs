//! Errors at the engine's edge. Each message names the file or value involved and, where there is one,
//! the fix, because these reach users through the CLI and `window/showMessage`.

use std::path::PathBuf;

use super::tokenizer::TokenizerError;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("model not found: {spec}\n  tried: {tried}\n  fix: {hint}")]
    ModelNotFound {
        spec: String,
        tried: String,
        hint: String,
    },

    #[error("could not read model file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path} is not a GGUF file (magic bytes {magic:?}, expected \"GGUF\")")]
    NotGguf { path: PathBuf, magic: String },

    #[error("{path} is corrupt or truncated: {detail}")]
    Corrupt { path: PathBuf, detail: String },

    #[error("{path}: architecture {arch:?} is not supported (this engine runs llama-architecture models such as Code Llama)")]
    UnsupportedArchitecture { path: PathBuf, arch: String },

    #[error("{path}: missing metadata key {key}")]
    MissingMetadata { path: PathBuf, key: String },

    #[error("{path}: metadata key {key} {detail}")]
    BadMetadata {
        path: PathBuf,
        key: String,
        detail: String,
    },

    #[error("{path}: tensor {name}: {detail}")]
    BadTensor {
        path: PathBuf,
        name: String,
        detail: String,
    },

    /// The tokenizer's own error is part of the message rather than a `source`, so it is shown once.
    #[error("{path}: tokenizer: {error}")]
    Tokenizer {
        path: PathBuf,
        error: TokenizerError,
    },

    #[error("the prompt is empty: at least one token is needed")]
    EmptyPrompt,

    #[error("the prompt has {prompt_tokens} tokens but the context window holds {context} (lower max_tokens or the context window, or shorten the input)")]
    PromptTooLong {
        prompt_tokens: usize,
        context: usize,
    },

    #[error("token id {id} is outside the vocabulary of {vocab} tokens")]
    BadToken { id: u32, vocab: usize },

    #[error("download failed for {spec}: {detail}\n  fix: check the network or pass a local .gguf path with --model")]
    Download { spec: String, detail: String },

    #[error(
        "kv_cache_type {name:?} cannot be used: {detail}\n  fix: set kv_cache_type to \"f16\""
    )]
    KvCacheType { name: &'static str, detail: String },

    #[error("inference failed: {0}")]
    Compute(String),

    /// A draft model whose tokens are not the model's (`LoadOptions::draft_model`).
    #[error("draft_model {draft} cannot draft for the model {model}: {detail}\n  fix: name a draft model with the model's vocabulary (a smaller model of the same family), or clear draft_model; suggestions go on without it")]
    DraftVocabulary {
        draft: PathBuf,
        model: PathBuf,
        detail: String,
    },

    /// A remote engine failed (`backends`): typed, so the server can tell its kinds apart.
    #[error("inference failed: {0}")]
    Remote(crate::RemoteError),

    /// `detail` is the backend's own reason (no such feature in this build, no driver, no such GPU).
    #[error("device {name:?} cannot be used: {detail}\n  fix: {hint}")]
    Device {
        name: String,
        detail: String,
        hint: String,
    },

    #[error("the request was cancelled")]
    Cancelled,

    #[error("the model thread has stopped")]
    Stopped,
}

impl From<candle_core::Error> for EngineError {
    fn from(e: candle_core::Error) -> Self {
        EngineError::Compute(without_backtrace(e).to_string())
    }
}

/// candle attaches a backtrace to its errors when `RUST_BACKTRACE` is set and prints it as part of the
/// message, build paths included; these messages reach users, so the backtraces are taken out.
pub(super) fn without_backtrace(e: candle_core::Error) -> candle_core::Error {
    use candle_core::Error;
    match e {
        Error::WithBacktrace { inner, .. } => without_backtrace(*inner),
        Error::Context { inner, context } => Error::Context {
            inner: Box::new(without_backtrace(*inner)),
            context,
        },
        Error::WithPath { inner, path } => Error::WithPath {
            inner: Box::new(without_backtrace(*inner)),
            path,
        },
        e => e,
    }
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candle_backtraces_stay_out_of_messages() {
        let with_backtrace = |inner: candle_core::Error| candle_core::Error::WithBacktrace {
            inner: Box::new(inner),
            backtrace: Box::new(std::backtrace::Backtrace::force_capture()),
        };
        let e = with_backtrace(candle_core::Error::Msg("shape mismatch".into()))
            .context("loading blk.0")
            .with_path("/m.gguf");
        let e = with_backtrace(e);
        assert!(
            format!("{e}").contains("error.rs"),
            "the test builds a backtrace"
        );
        let message = EngineError::from(e).to_string();
        assert_eq!(
            message,
            "inference failed: path: \"/m.gguf\" loading blk.0\nshape mismatch"
        );
    }
}
