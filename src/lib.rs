//! codellama-lsp: a language server that runs Code Llama in-process.
//!
//! Data flows one way: editor -> [`documents`] -> [`prompt`] -> [`engine`] -> [`postprocess`] -> editor.
//! `prompt`, `engine` and `postprocess` know nothing about LSP; only `server` speaks LSP.
//! See ARCHITECTURE.md for the code map.

pub mod actions;
pub mod backends;
pub mod bench;
pub mod cli;
pub mod completion;
pub mod config;
pub mod documents;
pub mod engine;
pub mod eval;
pub mod language;
pub mod postprocess;
pub mod prompt;
pub mod server;
