//! Where tests find what they read: the checkout (the workspace root), the `../shared` folder beside it
//! (override with `CODELLAMA_LSP_SHARED`) with the Code Llama fixtures and llama.cpp's reference outputs,
//! and the models `scripts/fetch-model` installs in `models/`. Every test, in any crate, finds them
//! through these functions, so a crate's own folder never matters.

use std::path::PathBuf;

/// The workspace root: this crate lives in `crates/test-support`.
pub fn checkout() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

pub fn shared_dir() -> PathBuf {
    match std::env::var_os("CODELLAMA_LSP_SHARED") {
        Some(p) => PathBuf::from(p),
        None => checkout().join("../shared"),
    }
}

pub fn codellama_fixture(name: &str) -> PathBuf {
    shared_dir().join("fixtures/codellama").join(name)
}

pub fn reference(name: &str) -> PathBuf {
    shared_dir().join("reference").join(name)
}

/// A model that `scripts/fetch-model` installs. Panics with the fix when it has not been fetched.
fn fetched_model(file: &str) -> PathBuf {
    let p = checkout().join("models").join(file);
    assert!(
        p.exists(),
        "{} is missing: run scripts/fetch-model",
        p.display()
    );
    p
}

/// The SmolLM2 test model (llama architecture, no FIM tokens, 135M: the fastest real model).
pub fn small_model() -> PathBuf {
    fetched_model("SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// The default model, Qwen2.5-Coder-0.5B-Instruct (qwen2 architecture, FIM-trained).
pub fn qwen_model() -> PathBuf {
    fetched_model("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf")
}

/// Qwen2.5-Coder-1.5B-Instruct when `scripts/fetch-model qwen-1.5b` has fetched it. Without it the
/// caller's test says it skipped (it is 1.1 GB; `scripts/test` fetches it, so CI runs those tests).
pub fn qwen_1_5b_model() -> Option<PathBuf> {
    let p = checkout().join("models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf");
    if p.exists() {
        Some(p)
    } else {
        eprintln!(
            "SKIPPED: {} is missing (run scripts/fetch-model qwen-1.5b)",
            p.display()
        );
        None
    }
}

/// A JSON fixture (goldens, references); panics naming the file when it is missing or malformed.
pub fn read_json(path: &std::path::Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad JSON in {}: {e}", path.display()))
}

/// A JSON array of token ids (the goldens' `ids`, `psm_ids`...); panics unless it is one.
pub fn token_ids(value: &serde_json::Value) -> Vec<u32> {
    value
        .as_array()
        .expect("an array of token ids")
        .iter()
        .map(|v| v.as_u64().expect("a token id") as u32)
        .collect()
}
