//! The model's lifecycle in the server: loaded in the background after `initialize`, reported with
//! `$/progress` and `codellama/status`, replaced when the configuration names another model (the old engine
//! keeps answering until the new one is ready), and a failure shown once with `window/showMessage` while the
//! server goes on answering (empty).

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::unbounded_channel;
use tower_lsp_server::gen_lsp_types::{MessageType, ProgressToken};
use tower_lsp_server::{Bounded, Client, NotCancellable, OngoingProgress};

use super::status::Status;
use crate::config::ModelKey;
use crate::engine::{Backend, Engine, LoadOptions};

/// The loaded engine, if any, and what is being loaded.
#[derive(Default)]
struct Slot {
    engine: Option<Arc<Engine>>,
    /// The settings the current (or pending) load was started with.
    wanted: Option<ModelKey>,
    /// Incremented by every load; a load whose number is no longer current is dropped when it finishes.
    generation: u64,
}

pub struct ModelHost {
    slot: Mutex<Slot>,
    status: Status,
    client: Client,
    /// Whether the client accepts `window/workDoneProgress/create`.
    progress_supported: std::sync::atomic::AtomicBool,
}

static NEXT_TOKEN: AtomicI32 = AtomicI32::new(1);

impl ModelHost {
    pub fn new(client: Client, status: Status) -> Arc<Self> {
        Arc::new(Self {
            slot: Mutex::new(Slot::default()),
            status,
            client,
            progress_supported: Default::default(),
        })
    }

    fn slot(&self) -> MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_progress_supported(&self, yes: bool) {
        self.progress_supported.store(yes, Ordering::Relaxed);
    }

    /// The model, once one is loaded.
    pub fn backend(&self) -> Option<Arc<dyn Backend>> {
        self.slot().engine.clone().map(|e| e as Arc<dyn Backend>)
    }

    /// Loads the model `key` names unless it is the one loaded or being loaded. Returns at once.
    pub fn ensure(self: &Arc<Self>, key: ModelKey) {
        let generation = {
            let mut slot = self.slot();
            if slot.wanted.as_ref() == Some(&key) {
                return;
            }
            slot.generation += 1;
            slot.wanted = Some(key.clone());
            slot.generation
        };
        let host = self.clone();
        tokio::spawn(async move { host.load(key, generation).await });
    }

    async fn load(self: Arc<Self>, key: ModelKey, generation: u64) {
        let label = key
            .model
            .clone()
            .unwrap_or_else(|| "the default model".to_string());
        let started = Instant::now();
        tracing::info!("loading {label}");
        self.status.loading(&label, 0);
        let opts = LoadOptions {
            model: key.model.clone(),
            context_window: Some(key.context_window),
            threads: key.threads,
            device: Some(key.device.clone()),
        };
        let (tx, mut rx) = unbounded_channel::<f32>();
        let mut load = tokio::task::spawn_blocking(move || {
            Engine::start(
                opts,
                Box::new(move |fraction| {
                    let _ = tx.send(fraction);
                }),
            )
        });
        // The load runs already; a client slow to accept the progress token does not hold it up.
        let progress = tokio::time::timeout(Duration::from_secs(5), self.begin_progress(&label))
            .await
            .unwrap_or_else(|_| {
                tracing::debug!("the client did not answer window/workDoneProgress/create");
                None
            });
        let mut last_percent = 0;
        let result = loop {
            tokio::select! {
                joined = &mut load => break joined,
                Some(fraction) = rx.recv() => {
                    let percent = (fraction.clamp(0.0, 1.0) * 100.0) as u32;
                    if percent > last_percent {
                        last_percent = percent;
                        self.status.loading(&label, percent);
                        if let Some(p) = &progress {
                            p.report(percent).await;
                        }
                    }
                }
            }
        };
        let result = match result {
            Ok(r) => r.map(Arc::new).map_err(|e| e.to_string()),
            Err(e) => Err(format!("the loader stopped unexpectedly: {e}")),
        };

        let (current, serving) = {
            let mut slot = self.slot();
            let current = slot.generation == generation;
            if let (true, Ok(engine)) = (current, &result) {
                // The previous engine, if any, is dropped here: its thread ends after its current request.
                slot.engine = Some(engine.clone());
            }
            (current, slot.engine.is_some())
        };
        if !current {
            tracing::info!("a newer model was asked for while {label} loaded; dropping it");
            return;
        }
        match result {
            Ok(engine) => {
                let info = engine.info().clone();
                let name = info.name.clone();
                let ms = started.elapsed().as_millis();
                tracing::info!(
                    "model {name} ready in {ms} ms ({}, context window {}, {} threads, {})",
                    info.path.display(),
                    info.context_window,
                    info.threads,
                    info.device
                );
                for w in &info.warnings {
                    tracing::warn!("{}: {w}", info.path.display());
                }
                self.status.set_model(Some(name.clone()));
                self.status.ready(Some(format!("{name} loaded in {ms} ms")));
                if let Some(p) = progress {
                    p.finish_with_message(format!("{name} ready")).await;
                }
            }
            Err(e) => {
                tracing::error!("could not load the model ({label}): {e}");
                let keeps = if serving {
                    "The server keeps answering with the model it had."
                } else {
                    "The server keeps running without suggestions."
                };
                let message = format!(
                    "Code Llama could not load its model ({label}):\n{e}\n{keeps} Set `model` (editor setting codellama.model, or --model) to a .gguf file, or run \
                     scripts/fetch-model for the default small model."
                );
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

    async fn begin_progress(
        &self,
        label: &str,
    ) -> Option<OngoingProgress<Bounded, NotCancellable>> {
        if !self.progress_supported.load(Ordering::Relaxed) {
            return None;
        }
        let token = ProgressToken::String(format!(
            "codellama/load/{}",
            NEXT_TOKEN.fetch_add(1, Ordering::Relaxed)
        ));
        if let Err(e) = self.client.create_work_done_progress(token.clone()).await {
            tracing::debug!("the client refused a progress token: {e}");
            return None;
        }
        let progress = self
            .client
            .progress(token, "Code Llama")
            .with_message(format!("loading {label}"))
            .with_percentage(0)
            .begin()
            .await;
        Some(progress)
    }
}
