//! The LSP surface: capabilities, document sync, configuration, the two completion requests, and the code
//! action requests (handed to [`super::actions`]).
//!
//! Handlers never block: document edits are applied at once under a short lock, completions and actions wait
//! asynchronously on the model thread, and everything that can take time runs in its own task.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use serde_json::Value;
use tower_lsp_server::gen_lsp_types::*;
use tower_lsp_server::jsonrpc::Result;
use tower_lsp_server::{Client, LanguageServer};

use super::actions::{self, Actions};
use super::completion::{file_path, Completer, Env, Suggestion};
use super::logging;
use super::model::{ModelHost, Role};
use super::status::Status;
use crate::config::{Applied, Config};
use codellama_text::documents::{Document, Documents, Pos, PositionEncoding};
use codellama_text::prompt::ContextChunk;

/// Most other open documents offered to the prompt as context (the token budget decides how much of
/// them is used).
const MAX_CONTEXT_DOCUMENTS: usize = 8;

pub struct LspServer {
    client: Client,
    docs: Arc<Documents>,
    config: RwLock<Arc<Config>>,
    encoding: AtomicU8,
    model: Arc<ModelHost>,
    actions: Actions,
    status: Status,
    completer: Completer,
    shutdown: Arc<AtomicBool>,
    /// The client renders Markdown in completion item documentation.
    completion_markdown: AtomicBool,
    /// Problems with `initializationOptions`, shown once the client is initialized.
    init_problems: Mutex<Vec<String>>,
}

impl LspServer {
    pub fn new(
        client: Client,
        config: Config,
        completer: Completer,
        shutdown: Arc<AtomicBool>,
    ) -> Self {
        let status = Status::start(client.clone());
        let model = ModelHost::new(client.clone(), status.clone(), Role::Completion);
        let chat = model.beside(status.with_role("chat"), Role::Chat);
        let docs = Arc::new(Documents::new());
        let actions = Actions::new(
            client.clone(),
            docs.clone(),
            model.clone(),
            chat,
            status.clone(),
        );
        Self {
            client,
            docs,
            config: RwLock::new(Arc::new(config)),
            encoding: AtomicU8::new(encode(PositionEncoding::Utf16)),
            model,
            actions,
            status,
            completer,
            shutdown,
            completion_markdown: AtomicBool::new(false),
            init_problems: Mutex::new(Vec::new()),
        }
    }

    fn config(&self) -> Arc<Config> {
        self.config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn encoding(&self) -> PositionEncoding {
        decode(self.encoding.load(Ordering::Relaxed))
    }

    /// Applies client settings; returns what changed.
    fn update_config(&self, value: &Value, origin: &str) -> Applied {
        let mut config = (*self.config()).clone();
        let applied = config.apply_json(value, origin);
        for p in &applied.problems {
            tracing::warn!("{p}");
        }
        if !applied.changed.is_empty() {
            tracing::info!(
                "settings changed ({origin}): {}",
                applied.changed.join(", ")
            );
            logging::set_level(config.log_level);
            self.completer.set_cache_size(config.cache_size);
            *self.config.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
        }
        applied
    }

    async fn show_problems(&self, problems: Vec<String>) {
        if !problems.is_empty() {
            let text = format!("Code Llama settings: {}", problems.join("; "));
            self.client.show_message(MessageType::Warning, text).await;
        }
    }

    /// Other open documents for the prompt, most recently edited first, when `context_tokens` asks for
    /// them (copying their text costs a little per keystroke, so not otherwise).
    fn context_documents(&self, uri: &str, config: &Config) -> Arc<[ContextChunk]> {
        if config.context_tokens == 0 {
            return Arc::from([]);
        }
        self.docs
            .recent_others(uri, MAX_CONTEXT_DOCUMENTS)
            .into_iter()
            .map(|(uri, doc)| ContextChunk {
                path: file_path(&uri).unwrap_or(uri),
                text: doc.text(),
            })
            .collect()
    }

    /// The suggestion at a position, if any.
    async fn suggest(&self, uri: &Uri, pos: Position) -> Option<Suggestion> {
        let Some(doc) = self.docs.snapshot(uri.0.as_str()) else {
            tracing::debug!(
                uri = uri.0.as_str(),
                "completion asked for a document that is not open"
            );
            return None;
        };
        let config = self.config();
        let env = Env {
            model: self.model.clone(),
            context: self.context_documents(uri.0.as_str(), &config),
            config,
            status: self.status.clone(),
        };
        let pos = Pos::new(pos.line, pos.character);
        // A client that never sent `initialized` still gets a model.
        self.model.ensure(env.config.model_key(), false);
        // In a task of its own, so that nothing in it can take the server down; dropping this future
        // (`$/cancelRequest`) aborts the task, which cancels its generation.
        let (completer, uri, enc) = (self.completer.clone(), uri.0.clone(), self.encoding());
        let task =
            tokio::spawn(async move { completer.complete(&env, &uri, &doc, pos, enc).await });
        let _abort = AbortOnDrop(task.abort_handle());
        match task.await {
            Ok(suggestion) => suggestion,
            Err(e) => {
                if e.is_panic() {
                    tracing::error!("a completion failed with an internal error; answered empty");
                }
                None
            }
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Params of `codellama/debugDocument`.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DebugDocumentParams {
    pub text_document: TextDocumentIdentifier,
}

impl LspServer {
    /// `codellama/debugDocument` (not advertised; for tests and for debugging a client): the server's copy
    /// of a document, `{uri, version, languageId, positionEncoding, text}`, or `null` when it is not open.
    pub async fn debug_document(&self, params: DebugDocumentParams) -> Result<Value> {
        let uri = params.text_document.uri;
        Ok(match self.docs.snapshot(uri.0.as_str()) {
            Some(d) => serde_json::json!({
                "uri": uri.0,
                "version": d.version,
                "languageId": d.language_id,
                "positionEncoding": self.encoding().lsp_name(),
                "text": d.text(),
            }),
            None => Value::Null,
        })
    }
}

impl LspServer {
    /// `window/workDoneProgress/cancel`: the user cancelled a code action's progress or a model download.
    pub async fn work_done_progress_cancel(&self, params: WorkDoneProgressCancelParams) {
        self.model.cancel_download(&params.token);
        self.actions.cancel_progress(&params.token);
    }

    /// What an invalid message from the client was turned into (see `transport`): answered with its error.
    /// A document notification that could not be read leaves the server's copy behind the editor's: the
    /// copy is dropped (no suggestion is made on text the editor does not have) and the user is told.
    pub async fn invalid_message(&self, params: super::transport::InvalidMessage) -> Result<Value> {
        if let Some(uri) = &params.document {
            self.docs.close(uri);
            self.completer.forget(uri);
            tracing::error!(
                uri,
                "a document notification could not be read: the document is dropped"
            );
            let text = format!(
                "Code Llama could not read an edit of {uri} ({}). It stops suggesting in this file until it is \
                 closed and opened again.",
                params.message
            );
            self.client.show_message(MessageType::Warning, text).await;
        }
        Err(tower_lsp_server::jsonrpc::Error {
            code: params.code.into(),
            message: params.message.into(),
            data: None,
        })
    }
}

fn encode(e: PositionEncoding) -> u8 {
    match e {
        PositionEncoding::Utf8 => 8,
        PositionEncoding::Utf16 => 16,
        PositionEncoding::Utf32 => 32,
    }
}

fn decode(v: u8) -> PositionEncoding {
    match v {
        8 => PositionEncoding::Utf8,
        32 => PositionEncoding::Utf32,
        _ => PositionEncoding::Utf16,
    }
}

fn kind(e: PositionEncoding) -> PositionEncodingKind {
    match e {
        PositionEncoding::Utf8 => PositionEncodingKind::UTF8,
        PositionEncoding::Utf16 => PositionEncodingKind::UTF16,
        PositionEncoding::Utf32 => PositionEncodingKind::UTF32,
    }
}

fn lsp_pos(p: Pos) -> Position {
    Position::new(p.line, p.character)
}

/// The label of the fallback completion item: "Code Llama: <first non-empty line>…".
pub fn completion_label(text: &str) -> String {
    const MAX: usize = 60;
    let first = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    let mut label: String = first.chars().take(MAX).collect();
    if label.len() < text.trim().len() {
        label.push('…');
    }
    format!("Code Llama: {label}")
}

fn completion_item(s: &Suggestion, language_id: &str, markdown: bool) -> CompletionItem {
    let range = Range::new(lsp_pos(s.at), lsp_pos(s.at));
    // Markdown where the client says it renders it; otherwise a plain string, which every client takes.
    let documentation = if markdown {
        let fence = "`".repeat(3.max(longest_backtick_run(&s.text) + 1));
        let doc = format!("{fence}{language_id}\n{}\n{fence}", s.text);
        Documentation::MarkupContent(MarkupContent::new(MarkupKind::Markdown, doc))
    } else {
        Documentation::String(s.text.clone())
    };
    let mut item = CompletionItem {
        label: completion_label(&s.text),
        ..CompletionItem::default()
    };
    item.kind = Some(CompletionItemKind::Snippet);
    item.detail = Some("Code Llama suggestion".to_string());
    item.documentation = Some(documentation);
    item.insert_text_format = Some(InsertTextFormat::PlainText);
    item.text_edit = Some(CompletionItemTextEdit::TextEdit(TextEdit::new(
        range,
        s.text.clone(),
    )));
    // Clients that filter by the word before the cursor see that word completed; clients that filter by the
    // text in the edit's range (empty: it starts at the cursor) keep the item anyway.
    let first_line = s.text.lines().next().unwrap_or("");
    item.filter_text = Some(format!("{}{first_line}", s.word));
    item.sort_text = Some("0".to_string());
    item.preselect = Some(true);
    item
}

fn longest_backtick_run(text: &str) -> usize {
    text.split(|c| c != '`').map(str::len).max().unwrap_or(0)
}

impl LanguageServer for LspServer {
    async fn initialize(&self, params: InitializeParams) -> Result<InitializeResult> {
        let caps = &params.capabilities;
        let offered: Vec<String> = caps
            .general
            .as_ref()
            .and_then(|g| g.position_encodings.as_ref())
            .map(|v| v.iter().map(|k| String::from(k.clone())).collect())
            .unwrap_or_default();
        let encoding = PositionEncoding::negotiate(offered.iter().map(String::as_str));
        self.encoding.store(encode(encoding), Ordering::Relaxed);
        let progress = caps
            .window
            .as_ref()
            .and_then(|w| w.work_done_progress)
            .unwrap_or(false);
        self.model.set_progress_supported(progress);
        self.actions.set_client_capabilities(caps);
        let markdown = caps
            .text_document
            .as_ref()
            .and_then(|t| t.completion.as_ref())
            .and_then(|c| c.completion_item.as_ref())
            .and_then(|i| i.documentation_format.as_ref())
            .is_some_and(|f| f.contains(&MarkupKind::Markdown));
        self.completion_markdown.store(markdown, Ordering::Relaxed);
        if let Some(options) = &params.initialization_options {
            let applied = self.update_config(options, "initializationOptions");
            *self.init_problems.lock().unwrap_or_else(|e| e.into_inner()) = applied.problems;
        }
        let client = params
            .client_info
            .as_ref()
            .map(|c| format!("{} {}", c.name, c.version.as_deref().unwrap_or("")))
            .unwrap_or_else(|| "an unnamed client".into());
        tracing::info!(
            "initialize from {} (position encoding {}, progress {})",
            client.trim(),
            encoding.lsp_name(),
            progress
        );

        let sync = TextDocumentSyncOptions {
            open_close: Some(true),
            change: Some(TextDocumentSyncKind::Incremental),
            will_save: None,
            will_save_wait_until: None,
            save: Some(Save::Bool(true)),
        };
        let completion = CompletionOptions {
            trigger_characters: None,
            all_commit_characters: None,
            resolve_provider: Some(false),
            completion_item: None,
            work_done_progress_options: WorkDoneProgressOptions::default(),
        };
        let (code_actions, commands) = actions::capabilities();
        let capabilities = ServerCapabilities {
            position_encoding: Some(kind(encoding)),
            text_document_sync: Some(TextDocumentSync::Options(sync)),
            completion_provider: Some(completion),
            inline_completion_provider: Some(true.into()),
            code_action_provider: Some(code_actions),
            execute_command_provider: Some(commands),
            ..ServerCapabilities::default()
        };
        Ok(InitializeResult {
            capabilities,
            server_info: Some(ServerInfo {
                name: "codellama-lsp".to_string(),
                version: Some(env!("CARGO_PKG_VERSION").to_string()),
            }),
        })
    }

    async fn initialized(&self, _: InitializedParams) {
        // The client may receive notifications and requests now: report problems and start loading.
        let (sink, mut lines) = tokio::sync::mpsc::unbounded_channel::<logging::LogLine>();
        logging::set_client_sink(Some(sink));
        let client = self.client.clone();
        tokio::spawn(async move {
            while let Some(line) = lines.recv().await {
                let kind = match line.level {
                    tracing::Level::ERROR => MessageType::Error,
                    tracing::Level::WARN => MessageType::Warning,
                    tracing::Level::INFO => MessageType::Info,
                    _ => MessageType::Log,
                };
                client.log_message(kind, line.text).await;
            }
        });
        let problems =
            std::mem::take(&mut *self.init_problems.lock().unwrap_or_else(|e| e.into_inner()));
        self.show_problems(problems).await;
        self.model.ensure(self.config().model_key(), false);
        self.actions.configure(&self.config(), false).await;
    }

    async fn shutdown(&self) -> Result<()> {
        tracing::info!("shutdown");
        self.shutdown.store(true, Ordering::SeqCst);
        self.completer.close();
        self.actions.cancel_all();
        logging::set_client_sink(None);
        Ok(())
    }

    async fn did_open(&self, params: DidOpenTextDocumentParams) {
        let d = params.text_document;
        let language = String::from(d.language_id);
        tracing::debug!(
            uri = d.uri.0.as_str(),
            language,
            chars = d.text.len(),
            "open"
        );
        self.docs.open(
            d.uri.0.as_str(),
            Document::new(&d.text, &language, d.version),
        );
    }

    async fn did_change(&self, params: DidChangeTextDocumentParams) {
        let uri = params.text_document.text_document_identifier.uri.clone();
        let enc = self.encoding();
        let applied = std::panic::catch_unwind(AssertUnwindSafe(|| {
            self.docs.with_mut(uri.0.as_str(), |doc| {
                for change in &params.content_changes {
                    match change {
                        TextDocumentContentChangeEvent::TextDocumentContentChangePartial(c) => {
                            let (s, e) = (c.range.start, c.range.end);
                            let range =
                                (Pos::new(s.line, s.character), Pos::new(e.line, e.character));
                            doc.edit(Some(range), &c.text, enc);
                        }
                        TextDocumentContentChangeEvent::TextDocumentContentChangeWholeDocument(
                            c,
                        ) => {
                            doc.edit(None, &c.text, enc);
                        }
                    }
                }
                doc.version = params.text_document.version;
            })
        }));
        match applied {
            Ok(Some(())) => {}
            Ok(None) => tracing::warn!(
                uri = uri.0.as_str(),
                "change to a document that is not open: ignored"
            ),
            Err(_) => {
                tracing::error!(
                    uri = uri.0.as_str(),
                    "an edit could not be applied; the document is dropped until reopened"
                );
                self.docs.close(uri.0.as_str());
            }
        }
    }

    async fn did_save(&self, params: DidSaveTextDocumentParams) {
        tracing::debug!(uri = params.text_document.uri.0.as_str(), "saved");
    }

    async fn did_close(&self, params: DidCloseTextDocumentParams) {
        let uri = params.text_document.uri;
        tracing::debug!(uri = uri.0.as_str(), "close");
        self.docs.close(uri.0.as_str());
        self.completer.forget(uri.0.as_str());
    }

    async fn did_change_configuration(&self, params: DidChangeConfigurationParams) {
        let before = self.config().model_key();
        let applied = self.update_config(&params.settings, "workspace/didChangeConfiguration");
        self.show_problems(applied.problems).await;
        let key = self.config().model_key();
        if key != before {
            tracing::info!("the model settings changed: loading again");
        }
        // Kept alive until the chat host has seen the new settings: `chat_model` may name this model.
        let _current = self.model.backend();
        // Naming a model setting again, even unchanged, retries a load that failed: the file may be fixed now.
        let retry = applied.given.iter().any(|k| Config::MODEL_KEYS.contains(k));
        self.model.ensure(key, retry);
        self.actions.configure(&self.config(), retry).await;
    }

    async fn inline_completion(
        &self,
        params: InlineCompletionParams,
    ) -> Result<Option<InlineCompletionResponse>> {
        let p = params.text_document_position_params;
        let items = match self.suggest(&p.text_document.uri, p.position).await {
            Some(s) => {
                let range = Range::new(lsp_pos(s.at), lsp_pos(s.at));
                vec![InlineCompletionItem::new(
                    InsertText::String(s.text),
                    None,
                    Some(range),
                    None,
                )]
            }
            None => Vec::new(),
        };
        Ok(Some(InlineCompletionResponse::InlineCompletionList(
            InlineCompletionList::new(items),
        )))
    }

    async fn code_action(
        &self,
        params: CodeActionParams,
    ) -> Result<Option<Vec<CodeActionResponse>>> {
        self.actions.code_actions(params, self.encoding()).await
    }

    async fn code_action_resolve(&self, action: CodeAction) -> Result<CodeAction> {
        let config = self.config();
        // A client that never sent `initialized` still gets a model.
        self.model.ensure(config.model_key(), false);
        self.actions.resolve(action, config, self.encoding()).await
    }

    async fn execute_command(&self, params: ExecuteCommandParams) -> Result<Option<LspAny>> {
        let config = self.config();
        self.model.ensure(config.model_key(), false);
        self.actions.execute(params, config, self.encoding()).await
    }

    async fn completion(&self, params: CompletionParams) -> Result<Option<CompletionResponse>> {
        let p = params.text_document_position_params;
        let language = self
            .docs
            .snapshot(p.text_document.uri.0.as_str())
            .map(|d| d.language_id)
            .unwrap_or_default();
        let items = match self.suggest(&p.text_document.uri, p.position).await {
            Some(s) => vec![completion_item(
                &s,
                &language,
                self.completion_markdown.load(Ordering::Relaxed),
            )],
            None => Vec::new(),
        };
        // Incomplete: typing on asks again, so the suggestion follows the text.
        Ok(Some(CompletionResponse::CompletionList(CompletionList {
            is_incomplete: true,
            item_defaults: None,
            apply_kind: None,
            items,
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert_eq!(completion_label("return a + b"), "Code Llama: return a + b");
        assert_eq!(
            completion_label("\n    x = 1\n    y = 2"),
            "Code Llama: x = 1…"
        );
        assert!(completion_label(&"x".repeat(100)).ends_with('…'));
        assert_eq!(completion_label(""), "Code Llama: ");
    }

    #[test]
    fn item_inserts_at_the_cursor() {
        let s = Suggestion {
            text: "a ``` b".into(),
            at: Pos::new(2, 3),
            from_cache: false,
            word: "x".into(),
        };
        let item = completion_item(&s, "python", true);
        let Some(CompletionItemTextEdit::TextEdit(edit)) = &item.text_edit else {
            panic!()
        };
        assert_eq!(
            edit.range,
            Range::new(Position::new(2, 3), Position::new(2, 3))
        );
        assert_eq!(edit.new_text, "a ``` b");
        assert_eq!(item.filter_text.as_deref(), Some("xa ``` b"));
        let Some(Documentation::MarkupContent(m)) = &item.documentation else {
            panic!()
        };
        assert!(m.value.starts_with("````python\n"));
        let plain = completion_item(&s, "python", false);
        assert_eq!(
            plain.documentation,
            Some(Documentation::String("a ``` b".into()))
        );
    }
}
