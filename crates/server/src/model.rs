//! The models' lifecycle in the server: loaded (or, for a remote engine, connected to) in the background after
//! `initialize`, reported with `$/progress` and `codellama/status`, replaced when the configuration names another
//! model (the old one keeps answering until the new one is ready), and a failure shown once with
//! `window/showMessage` while the server goes on answering (empty).
//!
//! One [`ModelHost`] serves completions; a second one holds the chat model when `chat_model` names a model of
//! its own. The two share what they load: a host asked for a model the other one holds takes that engine
//! instead of loading the file again, so changing `model` never reloads the chat model (and switching back to
//! a model still held costs nothing). A configuration change that names a model setting retries a load that
//! failed, even with the same value (the file may have been fixed). A remote engine that cannot be reached is
//! tried again when a request needs it, at most every [`RETRY_EVERY`], quietly: only the connection that works
//! is announced. A model that must come from the Hugging Face Hub first is downloaded with a cancellable
//! `$/progress` and `codellama/status` "downloading …" (see [`ModelHost::fetch`]).

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::unbounded_channel;
use tokio::sync::watch;
use tower_lsp_server::gen_lsp_types::{MessageType, ProgressToken};
use tower_lsp_server::{Bounded, Cancellable, Client, NotCancellable, OngoingProgress};

use super::status::{of_mb, percent, Status};
use crate::config::ModelKey;
use codellama_engine::hub::{self, Hooks, HubFile};
use codellama_engine::resolve::{resolve_with, DEFAULT_MODEL_REPO};
use codellama_engine::{Backend, CancelToken, Engine, EngineError, LoadOptions};
use codellama_remote::{Notice, RemoteBackend};

/// A remote engine that could not be reached is tried again at most this often.
pub const RETRY_EVERY: Duration = Duration::from_secs(5);

/// What a host's model is for; decides how messages name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Completion,
    Chat,
}

impl Role {
    fn what(self) -> &'static str {
        match self {
            Role::Completion => "model",
            Role::Chat => "chat model",
        }
    }
}

/// The loaded model, if any, and what is being loaded.
#[derive(Default)]
struct Slot {
    backend: Option<Arc<dyn Backend>>,
    /// The same backend when it is a remote engine (for its notices).
    remote: Option<Arc<RemoteBackend>>,
    /// The settings the current (or pending) load was started with.
    wanted: Option<ModelKey>,
    /// Incremented by every load; a load whose number is no longer current is dropped when it finishes.
    generation: u64,
    /// A load of `wanted` runs.
    loading: bool,
    /// Why the last load of `wanted` failed.
    error: Option<String>,
    /// When the last load of `wanted` started.
    attempted: Option<Instant>,
}

/// The in-process engines the hosts of one server hold, by the settings they were loaded with.
#[derive(Default)]
struct Engines(Mutex<Vec<(ModelKey, Weak<dyn Backend>)>>);

impl Engines {
    fn list(&self) -> MutexGuard<'_, Vec<(ModelKey, Weak<dyn Backend>)>> {
        let mut list = self.0.lock().unwrap_or_else(|e| e.into_inner());
        list.retain(|(_, engine)| engine.strong_count() > 0);
        list
    }

    /// The engine loaded for `key`, while some host still holds it.
    fn get(&self, key: &ModelKey) -> Option<Arc<dyn Backend>> {
        self.list()
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, engine)| engine.upgrade())
    }

    fn add(&self, key: ModelKey, engine: &Arc<dyn Backend>) {
        self.list().push((key, Arc::downgrade(engine)));
    }
}

pub struct ModelHost {
    slot: Mutex<Slot>,
    /// Shared with the other host of the server (see [`ModelHost::beside`]).
    engines: Arc<Engines>,
    status: Status,
    client: Client,
    role: Role,
    /// Whether the client accepts `window/workDoneProgress/create`.
    progress_supported: AtomicBool,
    /// Bumped whenever a load ends (for [`ModelHost::wait`]).
    loads_done: watch::Sender<u64>,
    /// The running download's progress token and its cancel flag (`window/workDoneProgress/cancel`).
    download: Mutex<Option<(ProgressToken, CancelToken)>>,
}

static NEXT_TOKEN: AtomicI32 = AtomicI32::new(1);

/// What a load produced.
struct Loaded {
    backend: Arc<dyn Backend>,
    remote: Option<Arc<RemoteBackend>>,
}

impl ModelHost {
    pub fn new(client: Client, status: Status, role: Role) -> Arc<Self> {
        Self::with_engines(client, status, role, Arc::default())
    }

    /// A second host of the same server: each takes the engines the other holds instead of loading them again.
    pub fn beside(&self, status: Status, role: Role) -> Arc<Self> {
        Self::with_engines(self.client.clone(), status, role, self.engines.clone())
    }

    fn with_engines(
        client: Client,
        status: Status,
        role: Role,
        engines: Arc<Engines>,
    ) -> Arc<Self> {
        Arc::new(Self {
            slot: Mutex::new(Slot::default()),
            engines,
            status,
            client,
            role,
            progress_supported: Default::default(),
            loads_done: watch::channel(0).0,
            download: Mutex::default(),
        })
    }

    fn slot(&self) -> MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `window/workDoneProgress/cancel` for this host's download, if `token` is its progress.
    pub fn cancel_download(&self, token: &ProgressToken) {
        let download = self.download.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((t, cancel)) = download.as_ref().filter(|(t, _)| t == token) {
            tracing::info!("the download reported as {t:?} was cancelled by the client");
            cancel.cancel();
        }
    }

    pub fn set_progress_supported(&self, yes: bool) {
        self.progress_supported.store(yes, Ordering::Relaxed);
    }

    /// The model, once one is loaded.
    pub fn backend(&self) -> Option<Arc<dyn Backend>> {
        self.slot().backend.clone()
    }

    /// The model, once one is loaded; without one, a remote engine that could not be reached is tried again
    /// in the background (at most every [`RETRY_EVERY`]).
    pub fn backend_or_retry(self: &Arc<Self>) -> Option<Arc<dyn Backend>> {
        let backend = self.backend();
        if backend.is_none() {
            self.retry();
        }
        backend
    }

    /// Loads the model `key` names unless it is the one loaded or being loaded, or its load failed and
    /// `retry_failed` is false. Returns at once.
    pub fn ensure(self: &Arc<Self>, key: ModelKey, retry_failed: bool) {
        let (generation, held) = {
            let mut slot = self.slot();
            if slot.wanted.as_ref() == Some(&key) {
                let failed = !slot.loading && slot.error.is_some();
                if !(retry_failed && failed) {
                    return;
                }
                tracing::info!(
                    "the {} settings were given again: retrying {}, whose load failed",
                    self.role.what(),
                    key.label()
                );
            }
            slot.generation += 1;
            slot.wanted = Some(key.clone());
            slot.loading = true;
            slot.error = None;
            slot.attempted = Some(Instant::now());
            // Taken now, while the host that holds it cannot drop it: a load that is not needed is not started.
            (slot.generation, self.engines.get(&key))
        };
        let host = self.clone();
        tokio::spawn(async move {
            match held {
                Some(engine) => host.take_held(key, generation, engine).await,
                None => host.load(key, generation, false).await,
            }
        });
    }

    /// Drops the model (and forgets a load in progress); `why` is for the log.
    pub fn unload(&self, why: &str) {
        let old = {
            let mut slot = self.slot();
            if slot.wanted.is_none() {
                return;
            }
            let old = std::mem::take(&mut *slot);
            slot.generation = old.generation + 1;
            old
        };
        tracing::info!(
            "{} unloaded as the {}: {why}",
            old.wanted.map(|k| k.label()).unwrap_or_default(),
            self.role.what()
        );
        self.status.set_model(None);
        self.loads_done.send_modify(|n| *n += 1);
    }

    /// Starts a quiet attempt to connect again to a remote engine that could not be reached, unless one ran
    /// within [`RETRY_EVERY`]. Returns whether one started.
    fn retry(self: &Arc<Self>) -> bool {
        let (key, generation) = {
            let mut slot = self.slot();
            let Some(key @ ModelKey::Remote(_)) = slot.wanted.clone() else {
                return false;
            };
            let recent = slot.attempted.is_some_and(|t| t.elapsed() < RETRY_EVERY);
            if slot.backend.is_some() || slot.loading || recent {
                return false;
            }
            slot.generation += 1;
            slot.loading = true;
            slot.attempted = Some(Instant::now());
            (key, slot.generation)
        };
        tracing::debug!("connecting again to {}", key.label());
        let host = self.clone();
        tokio::spawn(async move { host.load(key, generation, true).await });
        true
    }

    /// The model, waiting for a load in progress when none is loaded yet (a remote engine that could not be
    /// reached is tried again first). `Err` says why there is none.
    pub async fn wait(self: &Arc<Self>) -> Result<Arc<dyn Backend>, String> {
        let mut done = self.loads_done.subscribe();
        self.retry();
        loop {
            {
                let slot = self.slot();
                if let Some(b) = &slot.backend {
                    return Ok(b.clone());
                }
                if !slot.loading {
                    return Err(match (&slot.wanted, &slot.error) {
                        (_, Some(e)) => e.clone(),
                        (Some(key), None) => format!("{} is not loaded", key.label()),
                        (None, None) => format!("no {} is configured", self.role.what()),
                    });
                }
            }
            if done.changed().await.is_err() {
                return Err("the server is stopping".into());
            }
        }
    }

    /// Shows what the remote engine has to say since the last call (it stopped answering, or answers again),
    /// once per change.
    pub async fn report_notice(&self) {
        let Some(remote) = self.slot().remote.clone() else {
            return;
        };
        match remote.take_notice() {
            Some(Notice::Failing(e)) => {
                let text = format!("Code Llama: {e}. The server keeps running and tries again on the next request.");
                self.client.show_message(MessageType::Error, text).await;
            }
            Some(Notice::Recovered) => {
                let text = format!(
                    "Code Llama: the {} at {} answers again.",
                    remote.kind().engine_name(),
                    remote.url()
                );
                self.client.show_message(MessageType::Info, text).await;
            }
            None => {}
        }
    }

    async fn load(self: Arc<Self>, key: ModelKey, generation: u64, quiet: bool) {
        let label = key.label();
        let started = Instant::now();
        if !quiet {
            tracing::info!("loading the {} ({label})", self.role.what());
            match &key {
                ModelKey::Local { .. } => self.status.loading(&label, 0),
                ModelKey::Remote(_) => self.status.connecting(&label),
            }
        }
        let result = match &key {
            ModelKey::Local {
                model,
                draft_model,
                context_window,
                kv_cache_type,
                prompt_caches,
                threads,
                device,
            } => {
                let opts = LoadOptions {
                    model: model.clone(),
                    draft_model: draft_model.clone(),
                    context_window: Some(*context_window),
                    threads: *threads,
                    device: Some(device.clone()),
                    kv_cache_type: *kv_cache_type,
                    prompt_caches: *prompt_caches,
                    prefill_chunk: None,
                };
                self.load_local(opts, &label).await
            }
            ModelKey::Remote(cfg) => {
                let cfg = cfg.clone();
                let connecting = tokio::task::spawn_blocking(move || RemoteBackend::connect(cfg));
                // The connection is under way; a client slow to accept the progress token does not hold it up.
                let progress = if quiet {
                    None
                } else {
                    self.begin_progress_soon(&format!("connecting to {label}"))
                        .await
                };
                let connected = connecting
                    .await
                    .map_err(|e| format!("the connection attempt stopped unexpectedly: {e}"))
                    .and_then(|r| r.map_err(|e| e.to_string()))
                    .map(|remote| {
                        let remote = Arc::new(remote);
                        Loaded {
                            backend: remote.clone(),
                            remote: Some(remote),
                        }
                    });
                (connected, progress)
            }
        };
        let (result, progress) = result;
        if let (ModelKey::Local { .. }, Ok(loaded)) = (&key, &result) {
            self.engines.add(key.clone(), &loaded.backend);
        }
        self.install(&key, generation, result, progress, started, quiet)
            .await;
    }

    /// Serves with an engine the other host holds for the same settings.
    async fn take_held(self: Arc<Self>, key: ModelKey, generation: u64, engine: Arc<dyn Backend>) {
        tracing::info!(
            "the {} is {}, which is loaded already: shared, not loaded again",
            self.role.what(),
            key.label()
        );
        let held = Loaded {
            backend: engine,
            remote: None,
        };
        self.install(&key, generation, Ok(held), None, Instant::now(), false)
            .await;
    }

    /// Makes the outcome of a load the host's model (unless a newer load was asked for) and reports it.
    async fn install(
        &self,
        key: &ModelKey,
        generation: u64,
        result: Result<Loaded, String>,
        progress: Option<OngoingProgress<Bounded, NotCancellable>>,
        started: Instant,
        quiet: bool,
    ) {
        let label = key.label();
        let (current, serving) = {
            let mut slot = self.slot();
            let current = slot.generation == generation;
            if current {
                slot.loading = false;
                match &result {
                    Ok(loaded) => {
                        // The previous model, if any, is dropped here: its thread ends after its current
                        // request.
                        slot.backend = Some(loaded.backend.clone());
                        slot.remote = loaded.remote.clone();
                        slot.error = None;
                    }
                    Err(e) => slot.error = Some(e.clone()),
                }
            }
            (current, slot.backend.is_some())
        };
        self.loads_done.send_modify(|n| *n += 1);
        if !current {
            tracing::info!(
                "a newer {} was asked for while {label} loaded; dropping it",
                self.role.what()
            );
            return;
        }
        match result {
            Ok(loaded) => {
                let info = loaded.backend.info().clone();
                let name = info.name.clone();
                let ms = started.elapsed().as_millis();
                tracing::info!(
                    "{} {name} ready in {ms} ms ({}, context window {}, {} threads, {})",
                    self.role.what(),
                    info.path.display(),
                    info.context_window,
                    info.threads,
                    info.device
                );
                for w in &info.warnings {
                    tracing::warn!("{}: {w}", info.path.display());
                }
                self.status.set_model(Some(name.clone()));
                self.status.ready(Some(match key {
                    ModelKey::Local { .. } => format!("{name} loaded in {ms} ms"),
                    ModelKey::Remote(_) => format!("{name} on {label}, connected in {ms} ms"),
                }));
                if let Some(p) = progress {
                    p.finish_with_message(format!("{name} ready")).await;
                }
                if quiet {
                    let text = format!("Code Llama: connected to {label} ({name}).");
                    self.client.show_message(MessageType::Info, text).await;
                }
            }
            Err(e) if quiet => tracing::debug!("still cannot connect to {label}: {e}"),
            Err(e) => {
                tracing::error!("could not load the {} ({label}): {e}", self.role.what());
                let message = self.failure_message(key, &e, serving);
                if !serving {
                    self.status.set_model(None);
                }
                self.status.error(message.clone());
                if let Some(p) = progress {
                    p.finish_with_message("failed").await;
                }
                self.client.show_message(MessageType::Error, message).await;
            }
        }
    }

    /// Loads an in-process model on a blocking thread, reporting progress as it goes.
    async fn load_local(
        &self,
        mut opts: LoadOptions,
        label: &str,
    ) -> (
        Result<Loaded, String>,
        Option<OngoingProgress<Bounded, NotCancellable>>,
    ) {
        // Begun before the file is resolved: a model that cannot be found ends this progress as "failed". A
        // download on the way has a cancellable progress of its own.
        let progress = self.begin_progress_soon(&format!("loading {label}")).await;
        match self.fetch(opts.model.clone()).await {
            Ok(path) => opts.model = Some(path),
            Err(e) => return (Err(e), progress),
        }
        if let Some(draft) = opts.draft_model.take() {
            // A draft model that cannot be had is reported; the model serves without it.
            match self.fetch(Some(draft)).await {
                Ok(path) => opts.draft_model = Some(path),
                Err(e) => self.report_draft_error(&e).await,
            }
        }
        let (tx, mut rx) = unbounded_channel::<f32>();
        let mut load = tokio::task::spawn_blocking(move || {
            Engine::start(
                opts,
                Box::new(move |fraction| {
                    let _ = tx.send(fraction);
                }),
            )
        });
        let mut last_percent = 0;
        let result = loop {
            tokio::select! {
                joined = &mut load => break joined,
                Some(fraction) = rx.recv() => {
                    let percent = (fraction.clamp(0.0, 1.0) * 100.0) as u32;
                    if percent > last_percent {
                        last_percent = percent;
                        self.status.loading(label, percent);
                        if let Some(p) = &progress {
                            p.report(percent).await;
                        }
                    }
                }
            }
        };
        let result = match result {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(e) => Err(format!("the loader stopped unexpectedly: {e}")),
        };
        match result.as_ref().ok().and_then(Engine::draft) {
            Some(Ok(draft)) => tracing::info!(
                "draft model {} loaded in {} ms ({})",
                draft.name,
                draft.load_ms,
                draft.path.display()
            ),
            Some(Err(e)) => self.report_draft_error(e).await,
            None => {}
        }
        let result = result.map(|engine| Loaded {
            backend: Arc::new(engine),
            remote: None,
        });
        (result, progress)
    }

    /// The draft model is not used (suggestions go on without it): says why, in the log and to the user.
    async fn report_draft_error(&self, error: &str) {
        tracing::error!("draft model: {error}");
        let text = format!("Code Llama: {error}");
        self.client.show_message(MessageType::Error, text).await;
    }

    /// Resolves the model to a local path, downloading it from the Hub when it must: reported with a
    /// cancellable `$/progress` and `codellama/status` "downloading FILE (X of Y MB)", and, for the default
    /// model (nothing configured, nothing installed), one message saying what is downloaded and how large.
    async fn fetch(&self, spec: Option<String>) -> Result<String, String> {
        let cancel = CancelToken::new();
        let (tx, mut rx) = unbounded_channel::<hub::Event>();
        let token = cancel.clone();
        let default = spec.is_none();
        let job = tokio::task::spawn_blocking(move || {
            let mut send = |event| {
                let _ = tx.send(event);
            };
            resolve_with(
                spec.as_deref(),
                &mut Hooks {
                    on_event: &mut send,
                    cancel: &token,
                },
            )
        });
        let mut progress: Option<OngoingProgress<Bounded, Cancellable>> = None;
        let mut file = String::new();
        let mut last = None;
        // Every event is handled before the outcome (the channel ends when the job does), so the last report
        // is the 100 % one.
        while let Some(event) = rx.recv().await {
            match event {
                hub::Event::Waiting { file: f } => {
                    file = f.file.clone();
                    tracing::info!(
                        "waiting for another process downloading {} from {} (it holds {})",
                        f.file,
                        f.repo,
                        f.lock_path().display()
                    );
                    self.status.waiting_for_download(&file);
                    progress = self.begin_download_progress(&file, &cancel).await;
                    if let Some(p) = &progress {
                        let text = format!("waiting for another download of {file}");
                        p.report_with_message(text, 0, None).await;
                    }
                }
                hub::Event::Start {
                    file: f,
                    resumed_from,
                } => {
                    file = f.file.clone();
                    tracing::info!(
                        "downloading {} from {} ({} bytes, from byte {resumed_from}) into {}",
                        f.file,
                        f.repo,
                        f.size,
                        f.cache_path().display()
                    );
                    if default {
                        let text = default_download_message(&f, resumed_from);
                        self.client.show_message(MessageType::Info, text).await;
                    }
                    self.status.downloading(&file, resumed_from, f.size);
                    if progress.is_none() {
                        progress = self.begin_download_progress(&file, &cancel).await;
                    }
                }
                hub::Event::Progress { done, total } => {
                    let pct = percent(done, total);
                    if last != Some(pct) {
                        last = Some(pct);
                        self.status.downloading(&file, done, total);
                        if let Some(p) = &progress {
                            let text = format!("downloading {file} ({})", of_mb(done, total));
                            p.report_with_message(text, pct, None).await;
                        }
                    }
                }
            }
        }
        let joined = job.await;
        *self.download.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let result = match joined {
            Ok(Ok(source)) => Ok(source.path().display().to_string()),
            Ok(Err(EngineError::Cancelled)) => Err(format!(
                "the download of {file} was cancelled; what arrived is kept beside the cache and the next \
                 attempt goes on from there"
            )),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(format!("the download stopped unexpectedly: {e}")),
        };
        if let Some(p) = progress {
            let end = match &result {
                Ok(_) => "downloaded",
                Err(_) if cancel.is_cancelled() => "cancelled",
                Err(_) => "failed",
            };
            p.finish_with_message(end).await;
        }
        result
    }

    /// A cancellable `$/progress` for a download, registered so that its cancel sets `cancel`.
    async fn begin_download_progress(
        &self,
        file: &str,
        cancel: &CancelToken,
    ) -> Option<OngoingProgress<Bounded, Cancellable>> {
        let begin = async {
            let token = self.create_token("download").await?;
            *self.download.lock().unwrap_or_else(|e| e.into_inner()) =
                Some((token.clone(), cancel.clone()));
            let progress = self
                .client
                .progress(token, "Code Llama")
                .with_message(format!("downloading {file}"))
                .with_percentage(0)
                .with_cancel_button()
                .begin()
                .await;
            Some(progress)
        };
        tokio::time::timeout(Duration::from_secs(5), begin)
            .await
            .unwrap_or(None)
    }

    fn failure_message(&self, key: &ModelKey, error: &str, serving: bool) -> String {
        let label = key.label();
        let keeps = match (serving, self.role) {
            (true, _) => "The server keeps answering with the model it had.",
            (false, Role::Completion) => "The server keeps running without suggestions.",
            (false, Role::Chat) => {
                "The server keeps running; explain and generate are unavailable."
            }
        };
        match (key, self.role) {
            (ModelKey::Remote(_), _) => format!(
                "Code Llama could not connect to {label}:\n{error}\n{keeps} It tries again when a request needs the \
                 engine (at most every {} s).",
                RETRY_EVERY.as_secs()
            ),
            (ModelKey::Local { .. }, Role::Completion) => format!(
                "Code Llama could not load its model ({label}):\n{error}\n{keeps} Set `model` (editor setting \
                 codellama.model, or --model) to a .gguf file, or run scripts/fetch-model for the default small model."
            ),
            (ModelKey::Local { .. }, Role::Chat) => format!(
                "Code Llama could not load its chat model ({label}):\n{error}\n{keeps} Set `chat_model` (editor \
                 setting codellama.chatModel) to an Instruct model's .gguf file, or clear it to use the completion model."
            ),
        }
    }

    /// Begins a `$/progress` report when the client takes progress tokens, waiting at most 5 s for it.
    async fn begin_progress_soon(
        &self,
        message: &str,
    ) -> Option<OngoingProgress<Bounded, NotCancellable>> {
        tokio::time::timeout(Duration::from_secs(5), self.begin_progress(message))
            .await
            .unwrap_or_else(|_| {
                tracing::debug!("the client did not answer window/workDoneProgress/create");
                None
            })
    }

    async fn begin_progress(
        &self,
        message: &str,
    ) -> Option<OngoingProgress<Bounded, NotCancellable>> {
        let token = self.create_token("load").await?;
        let progress = self
            .client
            .progress(token, "Code Llama")
            .with_message(message.to_string())
            .with_percentage(0)
            .begin()
            .await;
        Some(progress)
    }

    /// A progress token `codellama/KIND/N` the client accepted, when it takes them.
    async fn create_token(&self, kind: &str) -> Option<ProgressToken> {
        if !self.progress_supported.load(Ordering::Relaxed) {
            return None;
        }
        let token = ProgressToken::String(format!(
            "codellama/{kind}/{}",
            NEXT_TOKEN.fetch_add(1, Ordering::Relaxed)
        ));
        if let Err(e) = self.client.create_work_done_progress(token.clone()).await {
            tracing::debug!("the client refused a progress token: {e}");
            return None;
        }
        Some(token)
    }
}

/// The one message shown when the default model is downloaded: what, from where, how large, and what to do
/// offline.
fn default_download_message(f: &HubFile, resumed_from: u64) -> String {
    let resumed = if resumed_from > 0 {
        format!(", going on from {} MB", resumed_from / 1_000_000)
    } else {
        String::new()
    };
    format!(
        "Code Llama: no model is configured and the default one is not installed, so it is downloading the default \
         model, Qwen2.5-Coder 0.5B Instruct ({}, {} MB{resumed}) from the Hugging Face Hub ({}/{DEFAULT_MODEL_REPO}) \
         into {}. Offline or behind a firewall? Cancel it and run scripts/fetch-model in a codellama-lsp checkout, \
         or set codellama.model (--model) to a .gguf file.",
        f.file,
        f.size.div_ceil(1_000_000),
        hub::endpoint(),
        f.cache_path().display()
    )
}
