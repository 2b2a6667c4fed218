//! The `codellama/status` notification: what the server is doing, for the editor plugins' status display.
//!
//! `{ state: "loading"|"ready"|"generating"|"error", message?, progress? (0-100), model?, timings?, totals?, role? }`;
//! `timings` come with the "ready" after a generation whose suggestion was answered (not one cancelled), and
//! `totals` (prompt tokens over every generation, cancelled ones included) with every "ready" after one.
//! Notifications go through one task so they reach the client in the order they were made, and "ready" is
//! only sent once no generation is running any more. Those about the chat model's loading carry
//! `role: "chat"`; all others are about the completion model and the server.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};
use tower_lsp_server::gen_lsp_types::{LspNotificationMethod, MessageDirection, Notification};
use tower_lsp_server::Client;

use codellama_engine::Timings;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Loading,
    Ready,
    Generating,
    Error,
}

/// Timings of the last generation, in the status notification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusTimings {
    pub prefill_ms: f64,
    pub decode_ms: f64,
    pub prompt_tokens: usize,
    pub reused_tokens: usize,
    /// Of the reused, those moved from other positions (the `cache_reuse` setting).
    #[serde(default)]
    pub moved_tokens: usize,
    /// Prompt tokens run through the model, and of those the ones whose work a cancel lost.
    pub computed_tokens: usize,
    pub discarded_tokens: usize,
    pub generated_tokens: usize,
    /// From the request's arrival to its answer.
    pub total_ms: f64,
    /// Whether the prompt was a shorter one than the whole window's (`cold_prompt_tokens`).
    #[serde(default)]
    pub shortened: bool,
    /// Computed while idle before this request, and of it lost (`Timings::idle_tokens`).
    #[serde(default)]
    pub idle_tokens: usize,
    #[serde(default)]
    pub idle_discarded_tokens: usize,
    /// Computed by going on with a stopped pass (`Timings::resumed_tokens`).
    #[serde(default)]
    pub resumed_tokens: usize,
}

/// Prompt tokens over many generations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct PromptTotals {
    pub generations: usize,
    pub cancelled: usize,
    pub reused_tokens: usize,
    #[serde(default)]
    pub moved_tokens: usize,
    pub computed_tokens: usize,
    /// Computed for generations that were then cancelled (superseded or `$/cancelRequest`).
    pub cancelled_computed_tokens: usize,
    /// Computed and lost: prefill chunks cancelled part of the way through.
    pub discarded_tokens: usize,
    /// Of those, the ones a later pass went on with from the layer reached (not lost after all).
    #[serde(default)]
    pub resumed_tokens: usize,
    /// Generations that worked on a shorter prompt than the whole window's (`cold_prompt_tokens`).
    #[serde(default)]
    pub shortened: usize,
    /// Of the computed, those computed while idle (the whole window's prompt after a shortened answer);
    /// what of it was lost is in `discarded_tokens`.
    #[serde(default)]
    pub idle_tokens: usize,
}

impl PromptTotals {
    fn add(&mut self, t: &StatusTimings, cancelled: bool) {
        self.generations += 1;
        self.cancelled += usize::from(cancelled);
        self.reused_tokens += t.reused_tokens;
        self.moved_tokens += t.moved_tokens;
        self.computed_tokens += t.computed_tokens + t.idle_tokens;
        if cancelled {
            self.cancelled_computed_tokens += t.computed_tokens;
        }
        self.discarded_tokens += t.discarded_tokens + t.idle_discarded_tokens;
        self.resumed_tokens += t.resumed_tokens;
        self.shortened += usize::from(t.shortened);
        self.idle_tokens += t.idle_tokens;
    }
}

impl StatusTimings {
    pub fn new(t: &Timings, total_ms: f64) -> Self {
        Self {
            prefill_ms: round1(t.prefill_ms),
            decode_ms: round1(t.decode_ms),
            prompt_tokens: t.prompt_tokens,
            reused_tokens: t.reused_tokens,
            moved_tokens: t.moved_tokens,
            computed_tokens: t.computed_tokens,
            discarded_tokens: t.discarded_tokens,
            generated_tokens: t.generated_tokens,
            total_ms: round1(total_ms),
            shortened: t.shortened > 0,
            idle_tokens: t.idle_tokens,
            idle_discarded_tokens: t.idle_discarded_tokens,
            resumed_tokens: t.resumed_tokens,
        }
    }
}

/// "12 of 491 MB".
pub fn of_mb(done: u64, total: u64) -> String {
    format!("{} of {} MB", done / 1_000_000, total.div_ceil(1_000_000))
}

/// `done` of `total` in whole percent (100 only once all has arrived).
pub fn percent(done: u64, total: u64) -> u32 {
    (done.min(total) * 100)
        .checked_div(total)
        .map_or(100, |p| p as u32)
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusParams {
    pub state: State,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timings: Option<StatusTimings>,
    /// With the "ready" after a generation: prompt tokens over every generation since the server started,
    /// the cancelled ones too.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub totals: Option<PromptTotals>,
    /// `"chat"` for the chat model's loading; absent for the completion model and generations.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

impl StatusParams {
    pub fn new(state: State) -> Self {
        Self {
            state,
            message: None,
            progress: None,
            model: None,
            timings: None,
            totals: None,
            role: None,
        }
    }
}

/// The notification type, for `Client::send_notification`.
pub enum StatusNotification {}

impl Notification for StatusNotification {
    type Params = StatusParams;
    const METHOD: LspNotificationMethod<'static> = LspNotificationMethod::Custom(METHOD);
    const MESSAGE_DIRECTION: MessageDirection = MessageDirection::ServerToClient;
}

pub const METHOD: &str = "codellama/status";

/// Sends status notifications in order and keeps count of running generations.
#[derive(Clone)]
pub struct Status {
    tx: UnboundedSender<StatusParams>,
    generating: Arc<AtomicUsize>,
    totals: Arc<std::sync::Mutex<PromptTotals>>,
    model: Arc<std::sync::Mutex<Option<String>>>,
    role: Option<&'static str>,
}

impl Status {
    /// Starts the sending task (on the current runtime).
    pub fn start(client: Client) -> Self {
        let (tx, mut rx) = unbounded_channel::<StatusParams>();
        tokio::spawn(async move {
            while let Some(params) = rx.recv().await {
                client.send_notification::<StatusNotification>(params).await;
            }
        });
        Self {
            tx,
            generating: Arc::new(AtomicUsize::new(0)),
            totals: Arc::default(),
            model: Arc::default(),
            role: None,
        }
    }

    /// The same channel for another model's loading: its notifications carry `role` and their own model
    /// name. (Generations are reported on the server's own status, without a role.)
    pub fn with_role(&self, role: &'static str) -> Self {
        Self {
            tx: self.tx.clone(),
            generating: self.generating.clone(),
            totals: self.totals.clone(),
            model: Arc::default(),
            role: Some(role),
        }
    }

    fn send(&self, mut params: StatusParams) {
        if params.model.is_none() {
            params.model = self.model.lock().unwrap_or_else(|e| e.into_inner()).clone();
        }
        params.role = self.role.map(str::to_string);
        let _ = self.tx.send(params);
    }

    /// Names the model in the following notifications.
    pub fn set_model(&self, name: Option<String>) {
        *self.model.lock().unwrap_or_else(|e| e.into_inner()) = name;
    }

    pub fn loading(&self, model: &str, progress: u32) {
        self.send(StatusParams {
            message: Some(format!("loading {model}")),
            progress: Some(progress.min(100)),
            model: Some(model.to_string()),
            ..StatusParams::new(State::Loading)
        });
    }

    /// Downloading the model's file from the Hub (reported as loading: "downloading FILE (X of Y MB)").
    pub fn downloading(&self, file: &str, done: u64, total: u64) {
        self.send(StatusParams {
            message: Some(format!("downloading {file} ({})", of_mb(done, total))),
            progress: Some(percent(done, total)),
            model: Some(file.to_string()),
            ..StatusParams::new(State::Loading)
        });
    }

    /// Waiting while another process downloads the model's file (reported as loading).
    pub fn waiting_for_download(&self, file: &str) {
        self.send(StatusParams {
            message: Some(format!("waiting for another download of {file}")),
            model: Some(file.to_string()),
            ..StatusParams::new(State::Loading)
        });
    }

    /// Connecting to a remote engine (reported as loading).
    pub fn connecting(&self, engine: &str) {
        self.send(StatusParams {
            message: Some(format!("connecting to {engine}")),
            model: Some(engine.to_string()),
            ..StatusParams::new(State::Loading)
        });
    }

    pub fn ready(&self, message: Option<String>) {
        self.send(StatusParams {
            message,
            ..StatusParams::new(State::Ready)
        });
    }

    pub fn error(&self, message: String) {
        self.send(StatusParams {
            message: Some(message),
            ..StatusParams::new(State::Error)
        });
    }

    /// A generation starts; "generating" is sent. Dropping the guard ends it.
    pub fn generation(&self) -> GenerationStatus {
        self.generating.fetch_add(1, Ordering::SeqCst);
        self.send(StatusParams::new(State::Generating));
        GenerationStatus {
            status: self.clone(),
            timings: None,
        }
    }
}

/// A running generation. When dropped, "ready" is sent (with the timings, when set) unless another generation
/// is still running.
pub struct GenerationStatus {
    status: Status,
    timings: Option<StatusTimings>,
}

impl GenerationStatus {
    /// Adds the generation's timings to the totals (`cancelled`: it was cancelled).
    pub fn count(&self, timings: &StatusTimings, cancelled: bool) {
        lock(&self.status.totals).add(timings, cancelled);
    }

    /// The timings the "ready" carries.
    pub fn set_timings(&mut self, timings: StatusTimings) {
        self.timings = Some(timings);
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Drop for GenerationStatus {
    fn drop(&mut self) {
        if self.status.generating.fetch_sub(1, Ordering::SeqCst) == 1 {
            // The totals as they are now, with the generations that ended while this one ran.
            let totals = *lock(&self.status.totals);
            self.status.send(StatusParams {
                timings: self.timings.take(),
                totals: Some(totals),
                ..StatusParams::new(State::Ready)
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_count_cancelled_generations_apart() {
        let t = |reused, computed, discarded| StatusTimings {
            reused_tokens: reused,
            moved_tokens: reused / 2,
            computed_tokens: computed,
            discarded_tokens: discarded,
            ..StatusTimings::new(&Timings::default(), 0.0)
        };
        let mut totals = PromptTotals::default();
        totals.add(&t(100, 20, 0), false);
        totals.add(&t(90, 256, 200), true);
        totals.add(&t(0, 0, 0), true);
        totals.add(
            &StatusTimings {
                shortened: true,
                idle_tokens: 64,
                idle_discarded_tokens: 10,
                resumed_tokens: 64,
                ..t(0, 1, 0)
            },
            false,
        );
        assert_eq!(
            totals,
            PromptTotals {
                generations: 4,
                cancelled: 2,
                reused_tokens: 190,
                moved_tokens: 95,
                computed_tokens: 276 + 1 + 64,
                cancelled_computed_tokens: 256,
                discarded_tokens: 200 + 10,
                resumed_tokens: 64,
                shortened: 1,
                idle_tokens: 64,
            }
        );
    }

    #[test]
    fn wire_format() {
        let p = StatusParams {
            progress: Some(42),
            ..StatusParams::new(State::Loading)
        };
        assert_eq!(
            serde_json::to_value(&p).unwrap(),
            serde_json::json!({"state": "loading", "progress": 42})
        );
        let t = StatusTimings::new(
            &Timings {
                prefill_ms: 1.26,
                prompt_tokens: 3,
                ..Timings::default()
            },
            2.0,
        );
        let v = serde_json::to_value(&t).unwrap();
        assert_eq!(v["prefill_ms"], 1.3);
        for k in [
            "decode_ms",
            "prompt_tokens",
            "reused_tokens",
            "generated_tokens",
            "total_ms",
        ] {
            assert!(v.get(k).is_some(), "{k}");
        }
    }
}
