//! Paths shared by the integration tests: the `../shared` folder beside the repository (override with
//! `CODELLAMA_LSP_SHARED`) and the small offline model fetched by `scripts/fetch-model`.
#![allow(dead_code)]

use std::path::PathBuf;

pub mod llama_server;

pub fn repo_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn shared_dir() -> PathBuf {
    match std::env::var_os("CODELLAMA_LSP_SHARED") {
        Some(p) => PathBuf::from(p),
        None => repo_dir().join("../shared"),
    }
}

pub fn codellama_fixture(name: &str) -> PathBuf {
    shared_dir().join("fixtures/codellama").join(name)
}

pub fn reference(name: &str) -> PathBuf {
    shared_dir().join("reference").join(name)
}

/// The SmolLM2 test model. Panics with the fix when it has not been fetched.
pub fn small_model() -> PathBuf {
    let p = repo_dir().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.exists(),
        "{} is missing: run scripts/fetch-model",
        p.display()
    );
    p
}

pub fn read_json(path: &std::path::Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad JSON in {}: {e}", path.display()))
}
