//! The text side of codellama-lsp, between the editor's documents and the engine: documents on ropes and
//! their position encodings ([`documents`]), per-language facts ([`language`]), prompts as exact token ids
//! ([`prompt`]), post-processing of suggestions ([`postprocess`]), the code actions' prompts and answers
//! ([`actions`]) and one completion end to end ([`completion`]). Nothing here speaks LSP; the model is only
//! reached through `codellama_engine::Backend`.

#![forbid(unsafe_code)]

pub mod actions;
pub mod completion;
pub mod documents;
pub mod language;
pub mod postprocess;
pub mod prompt;
