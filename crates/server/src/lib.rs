//! The language server: LSP over stdio (tower-lsp-server), in front of the documents, the prompt builder,
//! the engine and post-processing. Only this crate speaks LSP.
//!
//! - [`lsp`]: capabilities, document sync, configuration, the completion requests.
//! - [`completion`]: typing-ahead cache, one generation per document, cancellation.
//! - [`actions`]: code actions (explain, generate, document) and the `codellama.*` commands.
//! - [`model`]: background loading (or connecting to a remote engine) and reloading, progress and failures;
//!   the completion model and the chat model.
//! - [`status`]: the `codellama/status` notification.
//! - [`config`]: the one typed configuration, read the same way by the server and the shell commands.
//! - [`transport`]: the input framing, checked message by message before the LSP library reads it (public
//!   for the fuzz tests).

#![forbid(unsafe_code)]

pub mod actions;
pub mod cache;
pub mod completion;
pub mod config;
mod logging;
pub mod lsp;
pub mod model;
mod pipeline;
pub mod status;
pub mod transport;

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tower_lsp_server::{LspService, Server};

use crate::config::Config;
use completion::Completer;
use lsp::LspServer;
use transport::CheckedInput;

/// How many requests and notifications are handled at once. Completions wait on the model without holding a
/// slot's worth of work, and an edit must never wait behind them, so this is generous.
const CONCURRENCY: usize = 64;

/// Serves LSP on stdin/stdout until `exit` or the end of stdin. Logs go to stderr.
///
/// The exit code is 0, or 1 after an `exit` notification that no `shutdown` request preceded (as LSP says).
pub fn serve(config: Config) -> anyhow::Result<ExitCode> {
    logging::init(config.log_level);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("codellama-lsp")
        .enable_all()
        .build()?;
    let code = runtime.block_on(run(config, tokio::io::stdin(), tokio::io::stdout()));
    // A model still loading must not hold the exit up.
    runtime.shutdown_timeout(Duration::from_millis(200));
    Ok(code)
}

/// Serves LSP on the given streams (see [`serve`]).
pub async fn run(
    config: Config,
    input: impl AsyncRead + Unpin,
    output: impl AsyncWrite,
) -> ExitCode {
    let completer = Completer::new(config.cache_size);
    let shutdown = Arc::new(AtomicBool::new(false));
    let (service, socket) = {
        let (completer, shutdown) = (completer.clone(), shutdown.clone());
        LspService::build(move |client| LspServer::new(client, config, completer, shutdown))
            .custom_method("codellama/debugDocument", LspServer::debug_document)
            .custom_method(
                "window/workDoneProgress/cancel",
                LspServer::work_done_progress_cancel,
            )
            .custom_method(
                transport::INVALID_MESSAGE_METHOD,
                LspServer::invalid_message,
            )
            .finish()
    };
    let eof = Arc::new(AtomicBool::new(false));
    let input = CheckedInput::new(input, {
        let (completer, eof) = (completer.clone(), eof.clone());
        Box::new(move || {
            tracing::info!("the client closed its end: stopping");
            eof.store(true, Ordering::SeqCst);
            // Requests still waiting for the model are answered (empty) at once, so serving can end.
            completer.close();
        })
    });
    Server::new(input, output, socket)
        .concurrency_level(CONCURRENCY)
        .serve(service)
        .await;
    completer.close();
    if eof.load(Ordering::SeqCst) || shutdown.load(Ordering::SeqCst) {
        ExitCode::SUCCESS
    } else {
        tracing::warn!("exit without shutdown");
        ExitCode::FAILURE
    }
}
