//! Logging: `tracing` to stderr (stdout carries the protocol) and to the client with `window/logMessage`, both
//! at the configured level. Only this crate's events go to the client; the LSP library's own events (which
//! include every message it writes) would otherwise feed back into the log.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Mutex, OnceLock};

use tokio::sync::mpsc::UnboundedSender;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, Layer};

use crate::config::LogLevel;

/// One event for the client's log.
#[derive(Debug, Clone)]
pub struct LogLine {
    pub level: Level,
    pub text: String,
}

static CLIENT_LEVEL: AtomicU8 = AtomicU8::new(0);
static CLIENT_SINK: Mutex<Option<UnboundedSender<LogLine>>> = Mutex::new(None);
static RELOAD: OnceLock<reload::Handle<LevelFilter, tracing_subscriber::Registry>> =
    OnceLock::new();

fn rank(level: Option<Level>) -> u8 {
    match level {
        None => 0,
        Some(Level::ERROR) => 1,
        Some(Level::WARN) => 2,
        Some(Level::INFO) => 3,
        Some(Level::DEBUG) => 4,
        Some(Level::TRACE) => 5,
    }
}

fn filter(level: LogLevel) -> LevelFilter {
    level
        .max_level()
        .map_or(LevelFilter::OFF, LevelFilter::from_level)
}

/// Installs the global subscriber (stderr plus the client), unless the process already has one.
pub fn init(level: LogLevel) {
    let (stderr_filter, handle) = reload::Layer::new(filter(level));
    let installed = tracing_subscriber::registry()
        .with(stderr_filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(false)
                .with_target(false),
        )
        .with(ClientLayer)
        .try_init()
        .is_ok();
    if installed {
        let _ = RELOAD.set(handle);
    }
    set_level(level);
}

/// Changes the level of both outputs.
pub fn set_level(level: LogLevel) {
    CLIENT_LEVEL.store(rank(level.max_level()), Ordering::Relaxed);
    if let Some(handle) = RELOAD.get() {
        let _ = handle.modify(|f| *f = filter(level));
    }
}

/// Where client log lines go from now on (`None`: nowhere).
pub fn set_client_sink(sink: Option<UnboundedSender<LogLine>>) {
    *CLIENT_SINK.lock().unwrap_or_else(|e| e.into_inner()) = sink;
}

struct ClientLayer;

impl<S: Subscriber> Layer<S> for ClientLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        // Our crates' events only (codellama_server, codellama_engine, ...), not the libraries'.
        if rank(Some(*meta.level())) > CLIENT_LEVEL.load(Ordering::Relaxed)
            || !meta.target().starts_with("codellama_")
        {
            return;
        }
        let sink = CLIENT_SINK.lock().unwrap_or_else(|e| e.into_inner());
        let Some(sink) = sink.as_ref() else { return };
        let mut visitor = Fields::default();
        event.record(&mut visitor);
        let _ = sink.send(LogLine {
            level: *meta.level(),
            text: visitor.text,
        });
    }
}

/// The message first, then `key=value` for the other fields.
#[derive(Default)]
struct Fields {
    text: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.text.insert_str(0, value);
        } else {
            let _ = write!(self.text, " {}={value:?}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.text.insert_str(0, &format!("{value:?}"));
        } else {
            let _ = write!(self.text, " {}={value:?}", field.name());
        }
    }
}
