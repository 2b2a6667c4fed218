//! codellama-lsp: a language server that runs Code Llama in-process.
//!
//! Data flows one way: editor -> [`documents`] -> [`prompt`] -> [`engine`] -> [`postprocess`] -> editor.
//! `prompt`, `engine` and `postprocess` know nothing about LSP; only `server` speaks LSP.
//! See ARCHITECTURE.md for the code map.
//!
//! `unsafe` lives in `engine::kernels` and `engine::pool`, behind safe entry points that check their
//! input, and in one `malloc_trim` call in `engine::worker`. Every unsafe operation, inside an `unsafe fn` too, sits
//! in its own `unsafe {}` block with a `// SAFETY:` comment, and every `unsafe fn` states its contract
//! under `# Safety`.

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(
    clippy::undocumented_unsafe_blocks,
    clippy::multiple_unsafe_ops_per_block
)]

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
