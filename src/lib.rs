//! codellama-lsp, the binary's crate: the command line (`cli`, clap), the engine benchmark (`bench`), the
//! HumanEval quality harness (`eval`) and the benchmarks that drive the real binary over stdio
//! (`lsp_bench`). Everything they run lives in the workspace's crates: `codellama_engine` (the model),
//! `codellama_text` (documents, prompts, post-processing, code actions, the completion pipeline),
//! `codellama_remote` (remote inference engines) and `codellama_server` (LSP and settings); see
//! ARCHITECTURE.md for the map and which crate may use which.

#![forbid(unsafe_code)]

pub mod bench;
pub mod cli;
pub mod eval;
pub mod lsp_bench;
