//! Benchmarks that drive the real binary over stdio with [`codellama_test_support::LspProcess`], timed as
//! the user feels them.
//!
//! - [`keystrokes`]: `bench --lsp`, one inline completion per typed character, and the entry point of the
//!   two below.
//! - [`replay`]: the typing replay (a seeded editing script played over LSP as VS Code would), and
//!   [`replay_llama`]: the same script against llama.cpp's server as llama.vscode drives it.
//! - [`soak`]: that replay for minutes with model reloads and a flapping remote engine, memory sampled.

pub mod keystrokes;
pub mod replay;
pub mod replay_llama;
pub mod soak;
