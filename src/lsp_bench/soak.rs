//! The soak benchmark (`bench --lsp --soak MINUTES`): the typing replay of [`super::replay`] for that long
//! against the real server, while the run's schedule (fractions of its length, [`SCHEDULE`]) switches `model`
//! between two files and back by `didChangeConfiguration`, and in its middle part moves the server onto a
//! remote engine (llama.cpp's server on the same model file) that is killed and started again on the same port
//! twice, a flapping engine, before going back to the in-process engine. The server's resident memory (VmRSS)
//! is sampled on a thread. The report gives the memory curve, the events and the replay's account; the run
//! fails when a request was not answered exactly once.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{json, Map, Value};

use super::keystrokes::start_server;
use super::replay::{Replay, Script, Tally};
use crate::bench::LlamaServer;

/// What the schedule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    /// `model` set to the main file (`false`) or the other one (`true`).
    Model(bool),
    /// llama.cpp's server started (again), or killed.
    EngineUp,
    EngineDown,
    /// `backend` set to the remote engine, or back to the in-process one.
    Remote,
    Local,
}

/// When (a fraction of the run) each event happens: a model switch every tenth of the run, and from 30% to
/// 60% the remote engine, down twice for 5% of the run.
const SCHEDULE: [(f64, Event); 14] = [
    (0.10, Event::Model(true)),
    (0.20, Event::Model(false)),
    (0.30, Event::EngineUp),
    (0.30, Event::Remote),
    (0.37, Event::EngineDown),
    (0.42, Event::EngineUp),
    (0.49, Event::EngineDown),
    (0.54, Event::EngineUp),
    (0.60, Event::Local),
    (0.60, Event::EngineDown),
    (0.70, Event::Model(true)),
    (0.80, Event::Model(false)),
    (0.90, Event::Model(true)),
    (0.95, Event::Model(false)),
];

/// What to run.
#[derive(Debug, Clone)]
pub struct SoakOptions {
    pub server: PathBuf,
    pub files: Vec<PathBuf>,
    pub duration: Duration,
    pub seed: u64,
    /// `initializationOptions`; its `model` is overridden by `model`.
    pub settings: Map<String, Value>,
    /// The two model files switched between (the first also serves the remote engine).
    pub model: PathBuf,
    pub alt_model: PathBuf,
    /// llama.cpp's server; without it the remote part of the schedule is left out (and the report says so).
    pub llama_server: Option<PathBuf>,
    pub sample_every: Duration,
    /// Longest wait for the first model, and for the answers still due at the end.
    pub timeout: Duration,
}

/// The figures of one soak.
#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    pub seconds: f64,
    pub model: String,
    pub alt_model: String,
    pub llama_server: Option<String>,
    /// (seconds since the model was ready, what happened).
    pub events: Vec<(f64, String)>,
    /// (seconds since the model was ready, VmRSS in MiB).
    pub rss_mib: Vec<(f64, u64)>,
    pub tally: Tally,
}

impl SoakReport {
    pub fn rss_start(&self) -> u64 {
        self.rss_mib.first().map_or(0, |s| s.1)
    }

    pub fn rss_end(&self) -> u64 {
        self.rss_mib.last().map_or(0, |s| s.1)
    }

    pub fn rss_max(&self) -> (f64, u64) {
        self.rss_mib
            .iter()
            .copied()
            .max_by_key(|s| s.1)
            .unwrap_or((0.0, 0))
    }

    /// The curve in about 30 points: the highest sample of each stretch.
    pub fn curve(&self) -> Vec<(f64, u64)> {
        let stretch = (self.rss_mib.len() / 30).max(1);
        self.rss_mib
            .chunks(stretch)
            .filter_map(|c| Some((c.first()?.0, c.iter().map(|s| s.1).max()?)))
            .collect()
    }

    pub fn render(&self) -> String {
        let clock = |s: f64| format!("{}:{:02}", s as u64 / 60, s as u64 % 60);
        let (max_at, max) = self.rss_max();
        let engine = match &self.llama_server {
            Some(p) => p.clone(),
            None => "none found, the remote part was left out".into(),
        };
        format!(
            "soak: {min:.1} minutes of replayed typing; models {model} <-> {alt}; remote engine: {engine}\n\
             events: {events}\n\
             VmRSS MiB: start {start}, max {max} (at {max_at}), end {end} ({n} samples)\n\
             curve (time VmRSS, each the highest of its stretch): {curve}\n\
             {tally}\n\
             result: {result}",
            min = self.seconds / 60.0,
            model = self.model,
            alt = self.alt_model,
            events = self
                .events
                .iter()
                .map(|(t, e)| format!("{} {e}", clock(*t)))
                .collect::<Vec<_>>()
                .join("; "),
            start = self.rss_start(),
            max_at = clock(max_at),
            end = self.rss_end(),
            n = self.rss_mib.len(),
            curve = self
                .curve()
                .iter()
                .map(|(t, m)| format!("{} {m}", clock(*t)))
                .collect::<Vec<_>>()
                .join(", "),
            tally = self.tally.render(),
            result = if self.tally.answered_once() {
                "every request answered exactly once"
            } else {
                "FAILED: not every request was answered exactly once"
            },
        )
    }
}

/// VmRSS of a process in MiB (Linux).
pub fn rss_mib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024)
}

/// Samples VmRSS of `pid` every `every` until dropped.
struct Sampler {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<(f64, u64)>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(pid: u32, every: Duration, t0: Instant) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let samples: Arc<Mutex<Vec<(f64, u64)>>> = Arc::default();
        let (flag, sink) = (stop.clone(), samples.clone());
        let thread = std::thread::spawn(move || {
            let mut next = Instant::now();
            while !flag.load(Ordering::Relaxed) {
                if Instant::now() >= next {
                    if let Some(m) = rss_mib(pid) {
                        let s = (t0.elapsed().as_secs_f64(), m);
                        sink.lock().unwrap_or_else(|e| e.into_inner()).push(s);
                    }
                    next += every;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Self {
            stop,
            samples,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Vec<(f64, u64)> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        std::mem::take(&mut *self.samples.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// The remote engine of the schedule: started and killed on one port. A start does not wait for the engine to
/// load (the server sees it answer 503 meanwhile), so that typing goes on.
struct FlappingEngine {
    binary: PathBuf,
    model: PathBuf,
    threads: usize,
    port: u16,
    running: Option<LlamaServer>,
}

impl FlappingEngine {
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn up(&mut self) -> String {
        self.running = None;
        match LlamaServer::spawn_on(
            &self.binary,
            &self.model,
            self.threads,
            4096,
            &[],
            self.port,
        ) {
            Ok(s) => {
                self.running = Some(s);
                "llama-server started".into()
            }
            Err(e) => format!("llama-server failed to start: {e:#}"),
        }
    }
}

/// Runs the soak.
pub fn run_soak(opts: &SoakOptions) -> anyhow::Result<SoakReport> {
    let script = Script::read(&opts.files, opts.seed)?;
    let model_of = |alt: bool| {
        let p = if alt { &opts.alt_model } else { &opts.model };
        p.display().to_string()
    };
    let mut settings = opts.settings.clone();
    settings.insert("model".into(), model_of(false).into());
    let (mut server, _, _, _) = start_server(&opts.server, &settings, opts.timeout)?;

    let mut engine = match &opts.llama_server {
        Some(binary) => Some(FlappingEngine {
            binary: binary.clone(),
            model: opts.model.clone(),
            threads: settings.get("threads").and_then(Value::as_u64).unwrap_or(2) as usize,
            port: std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port(),
            running: None,
        }),
        None => None,
    };
    let t0 = Instant::now();
    let sampler = Sampler::start(server.pid(), opts.sample_every, t0);
    let mut replay = Replay::new(script);
    let mut events = Vec::new();
    for (at, event) in SCHEDULE {
        let when = t0 + opts.duration.mul_f64(at);
        replay
            .run_until(&mut server, when)
            .map_err(|e| anyhow::anyhow!("{e}\nserver log:\n{}", server.stderr()))?;
        let what = match (event, engine.as_mut()) {
            (Event::Model(alt), _) => {
                configure(&mut server, json!({ "model": model_of(alt) }));
                format!("model {}", short(&model_of(alt)))
            }
            (Event::EngineUp, Some(e)) => e.up(),
            (Event::EngineDown, Some(e)) => {
                e.running = None;
                "llama-server killed".into()
            }
            (Event::Remote, Some(e)) => {
                let remote = json!({"url": e.url(), "retries": 1, "connect_timeout_ms": 1000});
                configure(
                    &mut server,
                    json!({"backend": "llama.cpp", "remote": remote}),
                );
                "backend llama.cpp".into()
            }
            (Event::Local, Some(_)) => {
                configure(&mut server, json!({"backend": "local"}));
                "backend local".into()
            }
            (_, None) => continue,
        };
        events.push((t0.elapsed().as_secs_f64(), what));
    }
    replay
        .run_until(&mut server, t0 + opts.duration)
        .map_err(|e| anyhow::anyhow!("{e}\nserver log:\n{}", server.stderr()))?;
    let seconds = t0.elapsed().as_secs_f64();
    let tally = replay
        .finish(&mut server, opts.timeout)
        .map_err(anyhow::Error::msg)?
        .clone();
    drop(engine);
    let rss_mib = sampler.finish();
    let _ = server.shutdown(Duration::from_secs(30));
    Ok(SoakReport {
        seconds,
        model: model_of(false),
        alt_model: model_of(true),
        llama_server: opts.llama_server.as_ref().map(|p| p.display().to_string()),
        events,
        rss_mib,
        tally,
    })
}

fn configure(server: &mut codellama_test_support::LspProcess, settings: Value) {
    server.notify(
        "workspace/didChangeConfiguration",
        json!({ "settings": settings }),
    );
}

fn short(path: &str) -> &str {
    Path::new(path)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or(path)
}
