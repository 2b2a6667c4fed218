//! Code actions and commands over LSP: the library in `codellama_text::actions` (explain, generate from an instruction or
//! a comment, document a function) turned into `textDocument/codeAction`, `codeAction/resolve` and
//! `workspace/executeCommand`.
//!
//! - Listing is instant: [`actions::offers`] needs no model. Each action carries `{uri, version, task}` in its
//!   `data`; `codeAction/resolve` runs the chat model and answers the `WorkspaceEdit`, refusing (ContentModified)
//!   when the document changed since the listing or while the model ran.
//! - "Generate code from instruction" needs the user's words, which LSP cannot ask for: it is listed with the
//!   command `codellama.generate` (no instruction), which editor plugins run after prompting.
//! - Clients that cannot resolve an action's edit get the command `codellama.applyAction` instead, which computes
//!   the edit and applies it with `workspace/applyEdit`.
//! - A run reports `$/progress` (tokens generated and the streamed text) when the client takes progress, and
//!   stops on `$/cancelRequest`, `codellama.cancel` or `window/workDoneProgress/cancel`.
//! - Which model answers: the chat host when `chat_model` names a model of its own, otherwise the completion
//!   model (or remote engine). A model that cannot follow instructions is an error on the request and one
//!   `window/showMessage`.

use std::collections::{HashMap, HashSet};
use std::ops::Range as Bytes;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};
use tower_lsp_server::gen_lsp_types::*;
use tower_lsp_server::jsonrpc::{Error, ErrorCode, Result};
use tower_lsp_server::Client;

use super::completion::file_path;
use super::model::ModelHost;
use super::status::Status;
use crate::config::{BackendKind, Config, ModelKey};
use codellama_engine::{Backend, CancelToken};
use codellama_text::actions::{
    self, ActionError, ActionKind, ActionOutput, ActionRequest, Source, Target, Task,
};
use codellama_text::documents::{Document, Documents, Pos, PositionEncoding};

pub const EXPLAIN: &str = "codellama.explain";
pub const GENERATE: &str = "codellama.generate";
pub const CANCEL: &str = "codellama.cancel";
pub const APPLY_ACTION: &str = "codellama.applyAction";
/// Every command the server executes (`executeCommandProvider`).
pub const COMMANDS: [&str; 4] = [EXPLAIN, GENERATE, CANCEL, APPLY_ACTION];

/// LSP error code for a request that could not be carried out (LSP 3.17 `RequestFailed`).
const REQUEST_FAILED: i64 = -32803;

/// `$/progress` reports while generating are sent at most this often.
const REPORT_EVERY: Duration = Duration::from_millis(100);
/// How much of the streamed text a progress report carries (its end), in characters.
const REPORT_CHARS: usize = 400;

/// The code action kind of each action. All of them change the source text, so they are rewrites; the common
/// prefix `refactor.rewrite.codellama` selects them all.
pub fn action_kind(kind: ActionKind) -> &'static str {
    match kind {
        ActionKind::Explain => "refactor.rewrite.codellama.explain",
        ActionKind::Generate => "refactor.rewrite.codellama.generate",
        ActionKind::GenerateFromComment => "refactor.rewrite.codellama.generateFromComment",
        ActionKind::Document => "refactor.rewrite.codellama.document",
    }
}

const KINDS: [ActionKind; 4] = [
    ActionKind::Explain,
    ActionKind::Generate,
    ActionKind::GenerateFromComment,
    ActionKind::Document,
];

/// `codeActionProvider` and `executeCommandProvider`.
pub fn capabilities() -> (CodeActionProvider, ExecuteCommandOptions) {
    let code_actions = CodeActionOptions {
        code_action_kinds: Some(
            KINDS
                .iter()
                .map(|k| CodeActionKind::Custom(action_kind(*k).into()))
                .collect(),
        ),
        documentation: None,
        resolve_provider: Some(true),
        work_done_progress_options: WorkDoneProgressOptions::default(),
    };
    let commands = ExecuteCommandOptions {
        commands: COMMANDS.iter().map(|c| c.to_string()).collect(),
        work_done_progress_options: WorkDoneProgressOptions {
            work_done_progress: Some(true),
        },
    };
    (
        CodeActionProvider::CodeActionOptions(code_actions),
        commands,
    )
}

/// What the client can do, from its capabilities.
#[derive(Debug, Clone, Copy, Default)]
struct Features {
    /// Code action literals (not only commands) in `textDocument/codeAction` answers.
    literals: bool,
    /// `codeAction/resolve` may fill in `edit`, and `data` comes back with it.
    resolve_edit: bool,
    /// Versioned `documentChanges` in workspace edits.
    document_changes: bool,
    /// `workspace/applyEdit`.
    apply_edit: bool,
    /// `window/workDoneProgress/create`.
    progress: bool,
}

impl Features {
    fn of(caps: &ClientCapabilities) -> Self {
        let code_action = caps
            .text_document
            .as_ref()
            .and_then(|t| t.code_action.as_ref());
        let workspace = caps.workspace.as_ref();
        let resolve_edit = code_action.is_some_and(|c| {
            c.data_support == Some(true)
                && c.resolve_support
                    .as_ref()
                    .is_some_and(|r| r.properties.iter().any(|p| p == "edit"))
        });
        Self {
            literals: code_action.is_some_and(|c| c.code_action_literal_support.is_some()),
            resolve_edit,
            document_changes: workspace
                .and_then(|w| w.workspace_edit.as_ref())
                .and_then(|e| e.document_changes)
                == Some(true),
            apply_edit: workspace.and_then(|w| w.apply_edit) == Some(true),
            progress: caps.window.as_ref().and_then(|w| w.work_done_progress) == Some(true),
        }
    }
}

/// Kept in a code action's `data` between listing and resolving.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ActionData {
    uri: String,
    /// The document version the action was listed for.
    version: i32,
    task: Task,
}

/// Arguments of `codellama.explain` and `codellama.generate`.
#[derive(Debug, Deserialize)]
struct CommandArgs {
    uri: String,
    #[serde(default)]
    range: Option<Range>,
    #[serde(default)]
    position: Option<Position>,
    #[serde(default)]
    instruction: Option<String>,
}

/// A run of the model for an action, registered so that it can be cancelled.
struct Running {
    cancel: CancelToken,
    progress: Option<ProgressToken>,
}

struct Inner {
    client: Client,
    docs: Arc<Documents>,
    model: Arc<ModelHost>,
    chat: Arc<ModelHost>,
    /// The chat host holds the chat model (`chat_model` names another model than the completion model).
    separate_chat: AtomicBool,
    status: Status,
    features: Mutex<Features>,
    running: Mutex<HashMap<u64, Running>>,
    next_id: AtomicU64,
    /// Messages already shown with `window/showMessage` (each is shown once).
    shown: Mutex<HashSet<String>>,
}

/// The code action side of one server. Cheap to clone.
#[derive(Clone)]
pub struct Actions {
    inner: Arc<Inner>,
}

/// One action to run against a document.
struct ActionRun {
    uri: String,
    /// The version the caller saw (a code action's listing); `None`: whatever is current.
    version: Option<i32>,
    task: Task,
    /// For the progress report: "Explaining", "Generating"...
    doing: &'static str,
    /// The client's own progress token (`workDoneToken`), if it sent one.
    token: Option<ProgressToken>,
}

/// A finished run: the output, and the document it was computed on.
struct Ran {
    output: ActionOutput,
    doc: Document,
}

impl Actions {
    pub fn new(
        client: Client,
        docs: Arc<Documents>,
        model: Arc<ModelHost>,
        chat: Arc<ModelHost>,
        status: Status,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                client,
                docs,
                model,
                chat,
                separate_chat: AtomicBool::new(false),
                status,
                features: Mutex::new(Features::default()),
                running: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                shown: Mutex::new(HashSet::new()),
            }),
        }
    }

    pub fn set_client_capabilities(&self, caps: &ClientCapabilities) {
        let features = Features::of(caps);
        tracing::debug!("code action features of the client: {features:?}");
        *lock(&self.inner.features) = features;
        self.inner.chat.set_progress_supported(features.progress);
    }

    fn features(&self) -> Features {
        *lock(&self.inner.features)
    }

    /// Loads the chat model `chat_model` names beside the completion model (again, if its load failed), or
    /// drops it when the setting is cleared or names the completion model's file.
    pub async fn configure(&self, config: &Config, retry_failed: bool) {
        let key = config.chat_model_key();
        let separate = match (&key, config.backend, config.model.clone()) {
            (
                Some(ModelKey::Local {
                    model: Some(chat), ..
                }),
                BackendKind::Local,
                Some(model),
            ) => {
                let chat = chat.clone();
                // The files are compared on a blocking thread: a path may be on a slow file system.
                !tokio::task::spawn_blocking(move || same_file(&chat, &model))
                    .await
                    .unwrap_or(false)
            }
            (Some(_), _, _) => true,
            (None, _, _) => false,
        };
        self.inner.separate_chat.store(separate, Ordering::SeqCst);
        match key {
            Some(key) if separate => self.inner.chat.ensure(key, retry_failed),
            Some(_) => self
                .inner
                .chat
                .unload("chat_model names the completion model, which answers the actions"),
            None => self.inner.chat.unload("the chat_model setting is empty"),
        }
    }

    /// Stops every running action; returns how many there were.
    pub fn cancel_all(&self) -> usize {
        let running = lock(&self.inner.running);
        for r in running.values() {
            r.cancel.cancel();
        }
        running.len()
    }

    /// `window/workDoneProgress/cancel`: the user cancelled an action's progress.
    pub fn cancel_progress(&self, token: &ProgressToken) {
        for r in lock(&self.inner.running).values() {
            if r.progress.as_ref() == Some(token) {
                tracing::debug!("progress {token:?} cancelled by the client");
                r.cancel.cancel();
            }
        }
    }

    /// `textDocument/codeAction`: what can be done here, without running the model.
    pub async fn code_actions(
        &self,
        params: CodeActionParams,
        enc: PositionEncoding,
    ) -> Result<Option<Vec<CodeActionResponse>>> {
        let uri = params.text_document.uri.0.as_str().to_string();
        let Some(doc) = self.inner.docs.snapshot(&uri) else {
            return Ok(Some(Vec::new()));
        };
        let only = params
            .context
            .only
            .clone()
            .map(|kinds| kinds.into_iter().map(String::from).collect::<Vec<_>>());
        let version = doc.version;
        let selection = byte_range(&doc, params.range, enc);
        let path = file_path(&uri);
        let offers = tokio::task::spawn_blocking(move || {
            let text = doc.text();
            let source = Source::new(&text, path.as_deref(), Some(&doc.language_id));
            actions::offers(&source, selection)
        })
        .await
        .map_err(|e| internal(format!("listing code actions failed: {e}")))?;

        let features = self.features();
        let mut out = Vec::new();
        for offer in offers {
            let kind = action_kind(offer.kind);
            let wanted = only.as_ref().is_none_or(|only| {
                only.iter()
                    .any(|o| kind == o || kind.starts_with(&format!("{o}.")))
            });
            if !wanted {
                continue;
            }
            let command = if offer.needs_instruction {
                // Plugins that can prompt run it with the instruction; see the module documentation.
                Some(Command {
                    title: offer.title.clone(),
                    tooltip: Some("Generate code from an instruction you type".into()),
                    command: GENERATE.into(),
                    arguments: Some(vec![json!({"uri": uri, "range": params.range})]),
                })
            } else if features.literals && features.resolve_edit {
                None
            } else if features.apply_edit {
                let data = ActionData {
                    uri: uri.clone(),
                    version,
                    task: offer.task.clone(),
                };
                Some(Command {
                    title: offer.title.clone(),
                    tooltip: None,
                    command: APPLY_ACTION.into(),
                    arguments: Some(vec![to_json(&data)?]),
                })
            } else {
                continue; // the client could do nothing with it
            };
            if !features.literals {
                if let Some(c) = command {
                    out.push(CodeActionResponse::Command(c));
                }
                continue;
            }
            let data = (command.is_none()).then(|| ActionData {
                uri: uri.clone(),
                version,
                task: offer.task.clone(),
            });
            out.push(CodeActionResponse::CodeAction(CodeAction {
                title: offer.title,
                kind: Some(CodeActionKind::Custom(kind.into())),
                command,
                data: data.as_ref().map(to_json).transpose()?,
                ..CodeAction::default()
            }));
        }
        Ok(Some(out))
    }

    /// `codeAction/resolve`: runs the model and fills in the action's edit. Actions that carry a command (or
    /// are not ours) come back unchanged.
    pub async fn resolve(
        &self,
        mut action: CodeAction,
        config: Arc<Config>,
        enc: PositionEncoding,
    ) -> Result<CodeAction> {
        let Some(data) = action.data.clone() else {
            return Ok(action);
        };
        let data: ActionData = serde_json::from_value(data).map_err(|e| {
            invalid_params(format!("this code action's data is not the server's: {e}"))
        })?;
        let ran = self
            .run(
                ActionRun {
                    uri: data.uri.clone(),
                    version: Some(data.version),
                    doing: doing(data.task.kind()),
                    task: data.task,
                    token: None,
                },
                &config,
            )
            .await?;
        action.edit = Some(self.workspace_edit(&data.uri, &ran, enc)?);
        Ok(action)
    }

    /// `workspace/executeCommand`.
    pub async fn execute(
        &self,
        params: ExecuteCommandParams,
        config: Arc<Config>,
        enc: PositionEncoding,
    ) -> Result<Option<Value>> {
        let token = params.work_done_progress_params.work_done_token.clone();
        let first = params
            .arguments
            .as_ref()
            .and_then(|a| a.first())
            .cloned()
            .unwrap_or(Value::Null);
        match params.command.as_str() {
            EXPLAIN => self.explain(first, token, &config, enc).await.map(Some),
            GENERATE => self.generate(first, token, &config, enc).await.map(Some),
            APPLY_ACTION => {
                let data: ActionData = serde_json::from_value(first).map_err(|e| {
                    invalid_params(format!("{APPLY_ACTION} takes a code action's data: {e}"))
                })?;
                let job = ActionRun {
                    uri: data.uri.clone(),
                    version: Some(data.version),
                    doing: doing(data.task.kind()),
                    task: data.task,
                    token,
                };
                let ran = self.run(job, &config).await?;
                let applied = self.apply(&data.uri, &ran, enc).await?;
                Ok(Some(
                    json!({"applied": applied.applied, "failureReason": applied.failure_reason}),
                ))
            }
            CANCEL => {
                let n = self.cancel_all();
                tracing::info!("{CANCEL}: {n} running action(s) cancelled");
                Ok(Some(json!({"cancelled": n})))
            }
            other => Err(invalid_params(format!(
                "unknown command {other:?} (known: {})",
                COMMANDS.join(", ")
            ))),
        }
    }

    /// `codellama.explain [{uri, range | position}]` → `{markdown}`.
    async fn explain(
        &self,
        arg: Value,
        token: Option<ProgressToken>,
        config: &Config,
        enc: PositionEncoding,
    ) -> Result<Value> {
        let args = command_args(EXPLAIN, arg, "{uri, range}")?;
        let doc = self.document(&args.uri)?;
        let selection = match (args.range, args.position) {
            (Some(range), _) => byte_range(&doc, range, enc),
            (None, Some(p)) => {
                let at = doc.byte_offset(Pos::new(p.line, p.character), enc);
                at..at
            }
            (None, None) => {
                return Err(invalid_params(format!(
                    "{EXPLAIN} needs a range (or a position)"
                )))
            }
        };
        let job = ActionRun {
            uri: args.uri,
            version: None,
            task: Task::Explain { selection },
            doing: doing(ActionKind::Explain),
            token,
        };
        let ran = self.run(job, config).await?;
        Ok(json!({"markdown": ran.output.markdown}))
    }

    /// `codellama.generate [{uri, range | position, instruction}]`: applies the code with `workspace/applyEdit`
    /// and answers `{applied, code}`.
    async fn generate(
        &self,
        arg: Value,
        token: Option<ProgressToken>,
        config: &Config,
        enc: PositionEncoding,
    ) -> Result<Value> {
        let args = command_args(GENERATE, arg, "{uri, range | position, instruction}")?;
        let instruction = args.instruction.as_deref().map(str::trim).unwrap_or("");
        if instruction.is_empty() {
            return Err(invalid_params(format!(
                "{}: {GENERATE} takes the instruction as `instruction` (editor plugins ask the user for it)",
                ActionError::EmptyInstruction
            )));
        }
        let doc = self.document(&args.uri)?;
        let target = match (args.range, args.position) {
            (Some(range), _) => Target::for_selection(byte_range(&doc, range, enc)),
            (None, Some(p)) => Target::Cursor(doc.byte_offset(Pos::new(p.line, p.character), enc)),
            (None, None) => {
                return Err(invalid_params(format!(
                    "{GENERATE} needs a range or a position"
                )))
            }
        };
        let job = ActionRun {
            uri: args.uri.clone(),
            version: None,
            task: Task::Generate {
                instruction: instruction.to_string(),
                target,
            },
            doing: doing(ActionKind::Generate),
            token,
        };
        let ran = self.run(job, config).await?;
        let applied = self.apply(&args.uri, &ran, enc).await?;
        Ok(json!({
            "applied": applied.applied,
            "code": ran.output.text,
            "failureReason": applied.failure_reason,
        }))
    }

    fn document(&self, uri: &str) -> Result<Document> {
        self.inner.docs.snapshot(uri).ok_or_else(|| {
            invalid_params(format!(
                "{uri} is not open (send textDocument/didOpen first)"
            ))
        })
    }

    /// Applies a run's edit with `workspace/applyEdit`.
    async fn apply(
        &self,
        uri: &str,
        ran: &Ran,
        enc: PositionEncoding,
    ) -> Result<ApplyWorkspaceEditResult> {
        if !self.features().apply_edit {
            return Err(request_failed(
                "this client does not take workspace/applyEdit, so the server cannot apply the code".into(),
            ));
        }
        let edit = self.workspace_edit(uri, ran, enc)?;
        let result =
            self.inner.client.apply_edit(edit).await.map_err(|e| {
                request_failed(format!("workspace/applyEdit failed: {}", e.message))
            })?;
        if !result.applied {
            tracing::warn!(
                uri,
                "the client did not apply the edit: {}",
                result
                    .failure_reason
                    .as_deref()
                    .unwrap_or("no reason given")
            );
        }
        Ok(result)
    }

    /// The run's edit as a `WorkspaceEdit` (versioned where the client takes that), refused when the document
    /// changed while the model ran.
    fn workspace_edit(&self, uri: &str, ran: &Ran, enc: PositionEncoding) -> Result<WorkspaceEdit> {
        let Some(edit) = &ran.output.edit else {
            return Err(request_failed(format!(
                "{} has no comment syntax to put the explanation in; {EXPLAIN} shows it instead",
                ran.doc.language_id
            )));
        };
        let now = self.inner.docs.snapshot(uri).map(|d| d.version);
        if now != Some(ran.doc.version) {
            return Err(content_modified(format!(
                "the document changed while the model ran (version {} then, {} now); run the action again",
                ran.doc.version,
                now.map_or("closed".to_string(), |v| v.to_string())
            )));
        }
        let lsp = |byte| {
            let p = ran.doc.byte_position(byte, enc);
            Position {
                line: p.line,
                character: p.character,
            }
        };
        let text_edit = TextEdit {
            range: Range {
                start: lsp(edit.start),
                end: lsp(edit.end),
            },
            new_text: edit.new_text.clone(),
        };
        let uri = Uri::from(uri);
        Ok(if self.features().document_changes {
            let document = OptionalVersionedTextDocumentIdentifier {
                version: Some(ran.doc.version),
                text_document_identifier: TextDocumentIdentifier { uri },
            };
            WorkspaceEdit {
                document_changes: Some(vec![DocumentChange::TextDocumentEdit(TextDocumentEdit {
                    text_document: document,
                    edits: vec![Edit::TextEdit(text_edit)],
                })]),
                ..WorkspaceEdit::default()
            }
        } else {
            WorkspaceEdit {
                changes: Some(HashMap::from([(uri, vec![text_edit])])),
                ..WorkspaceEdit::default()
            }
        })
    }

    /// Runs one action to the end: checks the document, waits for the chat model, generates (reporting
    /// progress) and reduces the answer. In a task of its own, so that nothing in it can take the server down;
    /// dropping this future (`$/cancelRequest`) aborts the task and stops the generation.
    async fn run(&self, job: ActionRun, config: &Config) -> Result<Ran> {
        let doc = self.document(&job.uri)?;
        if let Some(v) = job.version.filter(|v| *v != doc.version) {
            return Err(content_modified(format!(
                "the document changed since the code action was listed (version {v}, now {}); ask for code actions again",
                doc.version
            )));
        }
        let actions = self.clone();
        let max_tokens = config.action_max_tokens;
        let temperature = config.temperature;
        let task =
            tokio::spawn(
                async move { actions.run_in_task(job, doc, max_tokens, temperature).await },
            );
        let _abort = AbortOnDrop(task.abort_handle());
        match task.await {
            Ok(result) => result,
            Err(e) if e.is_panic() => {
                tracing::error!("a code action failed with an internal error");
                Err(internal(
                    "the action failed with an internal error (see the server log)".into(),
                ))
            }
            Err(_) => Err(cancelled()),
        }
    }

    async fn run_in_task(
        &self,
        job: ActionRun,
        doc: Document,
        max_tokens: usize,
        temperature: f32,
    ) -> Result<Ran> {
        let started = Instant::now();
        let registration = self.register(job.token.clone());
        let cancel = registration.cancel.clone();
        let progress = self
            .begin_progress(job.token.clone(), job.doing, &registration)
            .await;

        let backend = tokio::select! {
            b = self.chat_backend() => b?,
            _ = until_cancelled(&cancel) => return Err(cancelled()),
        };
        progress.report(0, "");

        let mut req = ActionRequest::new(job.task, max_tokens);
        req.sampling.temperature = temperature;
        req.cancel = cancel.clone();
        req.progress = Some(progress.callback());
        let path = file_path(&job.uri);
        let snapshot = doc.clone();
        let submitted = tokio::task::spawn_blocking(move || {
            let text = snapshot.text();
            let source = Source::new(&text, path.as_deref(), Some(&snapshot.language_id));
            actions::submit(&*backend, &source, req)
        })
        .await
        .map_err(|e| internal(format!("preparing the action failed: {e}")))?;
        let pending = match submitted {
            Ok(p) => p,
            Err(e) => return Err(self.action_error(e).await),
        };
        let prompt_tokens = pending.prompt().ids.len();
        let generating = self.inner.status.generation();
        let result = pending.finish().await;
        drop(generating);
        self.model_host().report_notice().await;
        match result {
            Ok(output) => {
                tracing::info!(
                    uri = job.uri,
                    kind = ?output.kind,
                    prompt_tokens,
                    generated_tokens = output.timings.generated_tokens,
                    stop = ?output.stop_reason,
                    ms = started.elapsed().as_millis() as u64,
                    "code action"
                );
                progress.done("done");
                Ok(Ran { output, doc })
            }
            Err(e) => {
                progress.done(if matches!(e, ActionError::Cancelled) {
                    "cancelled"
                } else {
                    "failed"
                });
                Err(self.action_error(e).await)
            }
        }
    }

    fn model_host(&self) -> &Arc<ModelHost> {
        if self.inner.separate_chat.load(Ordering::SeqCst) {
            &self.inner.chat
        } else {
            &self.inner.model
        }
    }

    /// The model that answers actions, once loaded.
    async fn chat_backend(&self) -> Result<Arc<dyn Backend>> {
        let host = self.model_host();
        host.wait().await.map_err(|e| {
            let which = if Arc::ptr_eq(host, &self.inner.chat) {
                "chat model"
            } else {
                "model"
            };
            request_failed(format!("Code Llama has no {which} to run the action: {e}"))
        })
    }

    /// The LSP error for an action's failure; a model that cannot follow instructions is also shown once.
    async fn action_error(&self, e: ActionError) -> Error {
        let message = e.to_string();
        match e {
            ActionError::Cancelled => cancelled(),
            ActionError::NotInstruct { .. } | ActionError::ChatFormat(_) => {
                let first = lock(&self.inner.shown).insert(message.clone());
                if first {
                    self.inner
                        .client
                        .show_message(MessageType::Error, format!("Code Llama: {message}"))
                        .await;
                }
                request_failed(message)
            }
            ActionError::OutOfRange(_)
            | ActionError::EmptySelection
            | ActionError::EmptyInstruction
            | ActionError::NotAComment { .. }
            | ActionError::NoFunction { .. }
            | ActionError::Unsupported(_) => invalid_params(message),
            ActionError::NoRoom { .. }
            | ActionError::NoCode { .. }
            | ActionError::EmptyAnswer
            | ActionError::Engine(_) => request_failed(message),
        }
    }

    fn register(&self, progress: Option<ProgressToken>) -> Registration {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let cancel = CancelToken::new();
        lock(&self.inner.running).insert(
            id,
            Running {
                cancel: cancel.clone(),
                progress,
            },
        );
        Registration {
            actions: self.clone(),
            id,
            cancel,
        }
    }

    /// Begins `$/progress` for a run: on the client's token, or on one created here when the client takes
    /// progress. Without either, reports go nowhere.
    async fn begin_progress(
        &self,
        token: Option<ProgressToken>,
        doing: &str,
        registration: &Registration,
    ) -> ProgressSink {
        let token = match token {
            Some(t) => Some(t),
            None if self.features().progress => {
                let t = ProgressToken::String(format!("codellama/action/{}", registration.id));
                let created = tokio::time::timeout(
                    Duration::from_secs(5),
                    self.inner.client.create_work_done_progress(t.clone()),
                )
                .await;
                match created {
                    Ok(Ok(())) => Some(t),
                    _ => {
                        tracing::debug!("no progress token for the action");
                        None
                    }
                }
            }
            None => None,
        };
        let Some(token) = token else {
            return ProgressSink::none();
        };
        if let Some(r) = lock(&self.inner.running).get_mut(&registration.id) {
            r.progress = Some(token.clone());
        }
        let progress = self
            .inner
            .client
            .progress(token, "Code Llama")
            .with_message(format!("{doing}: waiting for the model"))
            .with_cancel_button()
            .begin()
            .await;
        let (tx, mut rx) = unbounded_channel::<Report>();
        let doing = doing.to_string();
        tokio::spawn(async move {
            // Ends when every sender is gone: the run finished, or was dropped (cancelled).
            let mut end = "cancelled".to_string();
            while let Some(report) = rx.recv().await {
                match report {
                    Report::Tokens(n, text) => {
                        progress
                            .report_with_message(progress_message(&doing, n, &text), None)
                            .await
                    }
                    Report::Done(message) => end = message,
                }
            }
            progress.finish_with_message(end).await;
        });
        ProgressSink { tx: Some(tx) }
    }
}

/// What the progress task is told.
enum Report {
    Tokens(usize, String),
    Done(String),
}

/// Where a run sends its progress (nowhere when the client takes none).
struct ProgressSink {
    tx: Option<UnboundedSender<Report>>,
}

impl ProgressSink {
    fn none() -> Self {
        Self { tx: None }
    }

    fn report(&self, tokens: usize, text: &str) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Report::Tokens(tokens, text.to_string()));
        }
    }

    fn done(&self, message: &str) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Report::Done(message.to_string()));
        }
    }

    /// The callback the action calls for each token: at most one report per [`REPORT_EVERY`].
    fn callback(&self) -> actions::ProgressFn {
        let tx = self.tx.clone();
        let mut last: Option<Instant> = None;
        Box::new(move |p: actions::Progress<'_>| {
            let Some(tx) = &tx else {
                return;
            };
            if last.is_some_and(|t| t.elapsed() < REPORT_EVERY) {
                return;
            }
            last = Some(Instant::now());
            let _ = tx.send(Report::Tokens(
                p.generated_tokens,
                tail(p.text, REPORT_CHARS).to_string(),
            ));
        })
    }
}

/// `"Explaining: 12 tokens"`, then the end of the text generated so far on the following lines.
fn progress_message(doing: &str, tokens: usize, text: &str) -> String {
    if tokens == 0 {
        return format!("{doing}…");
    }
    format!("{doing}: {tokens} tokens\n{text}")
}

/// The last `chars` characters of `text`.
fn tail(text: &str, chars: usize) -> &str {
    let start = text
        .char_indices()
        .rev()
        .nth(chars.saturating_sub(1))
        .map_or(0, |(i, _)| i);
    &text[start..]
}

fn doing(kind: ActionKind) -> &'static str {
    match kind {
        ActionKind::Explain => "Explaining",
        ActionKind::Generate | ActionKind::GenerateFromComment => "Generating",
        ActionKind::Document => "Documenting",
    }
}

/// A registered run; dropped (finished, or its task aborted), it is cancelled and forgotten.
struct Registration {
    actions: Actions,
    id: u64,
    cancel: CancelToken,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.cancel.cancel();
        lock(&self.actions.inner.running).remove(&self.id);
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Resolves once the token is cancelled (only used while waiting for a model to load).
async fn until_cancelled(token: &CancelToken) {
    token.cancelled().await
}

/// The byte range of an LSP range in the document (in order).
fn byte_range(doc: &Document, range: Range, enc: PositionEncoding) -> Bytes<usize> {
    let a = doc.byte_offset(Pos::new(range.start.line, range.start.character), enc);
    let b = doc.byte_offset(Pos::new(range.end.line, range.end.character), enc);
    a.min(b)..a.max(b)
}

fn command_args(command: &str, arg: Value, shape: &str) -> Result<CommandArgs> {
    serde_json::from_value(arg)
        .map_err(|e| invalid_params(format!("{command} takes [{shape}]: {e}")))
}

/// Whether two model settings name the same file.
fn same_file(a: &str, b: &str) -> bool {
    let (a, b) = (
        std::path::Path::new(a.trim()),
        std::path::Path::new(b.trim()),
    );
    a == b || matches!((a.canonicalize(), b.canonicalize()), (Ok(a), Ok(b)) if a == b)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn to_json<T: Serialize>(value: &T) -> Result<Value> {
    serde_json::to_value(value).map_err(|e| internal(e.to_string()))
}

fn error(code: ErrorCode, message: String) -> Error {
    Error {
        code,
        message: message.into(),
        data: None,
    }
}

fn invalid_params(message: String) -> Error {
    error(ErrorCode::InvalidParams, message)
}

fn request_failed(message: String) -> Error {
    error(ErrorCode::ServerError(REQUEST_FAILED), message)
}

fn content_modified(message: String) -> Error {
    error(ErrorCode::ContentModified, message)
}

fn internal(message: String) -> Error {
    error(ErrorCode::InternalError, message)
}

fn cancelled() -> Error {
    error(ErrorCode::RequestCancelled, "cancelled".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_share_one_prefix() {
        for k in KINDS {
            assert!(action_kind(k).starts_with("refactor.rewrite.codellama."));
        }
    }

    #[test]
    fn progress_messages_end_with_the_text() {
        assert_eq!(progress_message("Explaining", 0, ""), "Explaining…");
        assert_eq!(
            progress_message("Generating", 3, "def f"),
            "Generating: 3 tokens\ndef f"
        );
        assert_eq!(tail("héllo", 3), "llo");
        assert_eq!(tail("日本", 5), "日本");
        assert_eq!(tail("", 5), "");
    }

    #[test]
    fn client_features() {
        let caps: ClientCapabilities = serde_json::from_value(json!({
            "workspace": {"applyEdit": true, "workspaceEdit": {"documentChanges": true}},
            "textDocument": {"codeAction": {
                "codeActionLiteralSupport": {"codeActionKind": {"valueSet": ["refactor"]}},
                "resolveSupport": {"properties": ["edit"]},
                "dataSupport": true,
            }},
            "window": {"workDoneProgress": true},
        }))
        .unwrap();
        let f = Features::of(&caps);
        assert!(f.literals && f.resolve_edit && f.document_changes && f.apply_edit && f.progress);
        let f = Features::of(&ClientCapabilities::default());
        assert!(
            !(f.literals || f.resolve_edit || f.document_changes || f.apply_edit || f.progress)
        );
    }
}
