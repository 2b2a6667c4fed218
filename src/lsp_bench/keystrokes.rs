//! The keystroke latency benchmark (`codellama-lsp bench --lsp`): starts the real server, opens a source file
//! with the body of one function removed, and types that body back one character at a time over LSP
//! (`textDocument/didChange`), asking for an inline completion after each character and waiting for the
//! answer. It reports the time to answer (the first, cold request apart; p50 and p95 of the rest), the share
//! of requests answered without the model (typing-ahead cache), and the share of prompt tokens the model
//! reused from its cache (from the timings in `codellama/status`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use serde_json::{json, Map, Value};

use codellama_test_support::LspProcess;

/// What to run.
#[derive(Debug, Clone)]
pub struct LspBenchOptions {
    /// The server binary (the running executable by default).
    pub server: PathBuf,
    /// The source file to type into (default `examples/typing/inventory.py`).
    pub file: PathBuf,
    /// Most characters to type.
    pub chars: usize,
    /// Server settings sent as `initializationOptions` (`model`, `threads`, `fim_order`, ...).
    pub settings: Map<String, Value>,
    /// Longest wait for one answer, and for the model to load.
    pub timeout: Duration,
}

impl LspBenchOptions {
    pub fn new(server: PathBuf, file: PathBuf) -> Self {
        Self {
            server,
            file,
            chars: 200,
            settings: Map::new(),
            timeout: Duration::from_secs(300),
        }
    }
}

/// The `bench --lsp` flags of its own (the model flags are the engine benchmark's).
#[derive(Debug, Clone, clap::Args)]
pub struct LspBenchArgs {
    /// With --lsp: the file to type into (default examples/typing/inventory.py); repeatable with --replay and
    /// --soak (default: that file and crates/text/src/documents.rs).
    #[arg(long)]
    pub file: Vec<PathBuf>,
    /// With --lsp: replay realistic typing (bursts, pauses, deletions, jumps, a file switch) for --seconds.
    #[arg(long)]
    pub replay: bool,
    /// With --replay: how long to type.
    #[arg(long, default_value_t = 60.0)]
    pub seconds: f64,
    /// With --lsp: the soak benchmark, the replay for this many minutes with model switches (to --alt-model and
    /// back) and a flapping llama.cpp server; VmRSS sampled. Fails unless every request is answered once.
    #[arg(long, value_name = "MINUTES")]
    pub soak: Option<f64>,
    /// With --soak: the model file switched to and back (default models/SmolLM2-135M-Instruct.Q4_1.gguf).
    #[arg(long)]
    pub alt_model: Option<PathBuf>,
    /// With --replay or --soak: the seed of the editing script.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// With --lsp: most characters to type.
    #[arg(long, default_value_t = 200)]
    pub chars: usize,
    /// With --lsp: more server settings as KEY=VALUE (e.g. fim_order=psm), repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// With --replay: write our server's log (its stderr) to this file at the end; `--set log_level=debug`
    /// adds each completion's timings (prefill, decode, stop reason).
    #[arg(long, value_name = "FILE")]
    pub server_log: Option<PathBuf>,
}

/// The model flags `bench --lsp` shares with the engine benchmark.
#[derive(Debug, Clone, Default)]
pub struct LspBenchSettings {
    /// The model settings given as flags, as (key, value) pairs.
    pub model: Vec<(&'static str, String)>,
    pub json: bool,
    /// llama.cpp's server for the soak's remote engine.
    pub llama_server: Option<PathBuf>,
}

/// `codellama-lsp bench --lsp`: runs the benchmark against the running executable and prints the figures.
pub fn run_lsp_cli(args: &LspBenchArgs, settings: &LspBenchSettings) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let file = args.file.first().cloned().unwrap_or_else(default_file);
    let mut opts = LspBenchOptions::new(exe, file);
    opts.chars = args.chars;
    // The server reads each value as it reads an environment variable's.
    for (key, value) in &settings.model {
        opts.settings.insert((*key).into(), value.clone().into());
    }
    for kv in &args.set {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--set wants KEY=VALUE, got {kv:?}"))?;
        opts.settings.insert(k.trim().into(), v.trim().into());
    }
    if args.replay || args.soak.is_some() {
        return run_replay_cli(args, settings, opts);
    }
    let report = run_lsp_bench(&opts)?;
    if settings.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{}", report.render());
    }
    Ok(())
}

/// `bench --lsp --replay` and `--soak`: the replay for `--seconds`, or the soak for `--soak` minutes.
fn run_replay_cli(
    args: &LspBenchArgs,
    settings: &LspBenchSettings,
    opts: LspBenchOptions,
) -> anyhow::Result<()> {
    let files = if args.file.is_empty() {
        vec![default_file(), in_checkout("crates/text/src/documents.rs")]
    } else {
        args.file.clone()
    };
    let Some(minutes) = args.soak else {
        let tally = match &settings.llama_server {
            Some(binary) => {
                let model = gguf_model(&opts.settings, "llama.cpp's server")?;
                let [ours, llama] =
                    run_replay_pair(&opts.server, &files, &opts.settings, args, binary, &model)?;
                println!("ours:\n{}\n", ours.render());
                println!("llama.cpp:\n{}\n", llama.render());
                println!("{}", replay_table(&ours, &llama));
                ours
            }
            None => {
                let tally = run_replay(&opts.server, &files, &opts.settings, args)?;
                println!("{}", tally.render());
                tally
            }
        };
        return if tally.answered_once() {
            Ok(())
        } else {
            bail!("not every request was answered exactly once")
        };
    };
    let model = gguf_model(&opts.settings, "the soak")?;
    let soak = super::soak::SoakOptions {
        server: opts.server,
        files,
        duration: Duration::from_secs_f64(minutes * 60.0),
        seed: args.seed,
        settings: opts.settings,
        model,
        alt_model: args
            .alt_model
            .clone()
            .unwrap_or_else(|| in_checkout("models/SmolLM2-135M-Instruct.Q4_1.gguf")),
        llama_server: settings.llama_server.clone(),
        sample_every: Duration::from_secs(10),
        timeout: opts.timeout,
    };
    let report = super::soak::run_soak(&soak)?;
    if settings.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{}", report.render());
    }
    if !report.tally.answered_once() {
        bail!("not every request was answered exactly once");
    }
    Ok(())
}

/// The GGUF file the `model` setting names (`who` needs one).
fn gguf_model(settings: &Map<String, Value>, who: &str) -> anyhow::Result<PathBuf> {
    let named = settings.get("model").and_then(Value::as_str);
    match codellama_engine::resolve::resolve(named)? {
        codellama_engine::resolve::ModelSource::Gguf(p) => Ok(p),
        codellama_engine::resolve::ModelSource::HfDir(d) => {
            bail!("{who} needs a GGUF file; {} is not one", d.display())
        }
    }
}

/// How long one server types before the other takes the same steps.
const SLICE: Duration = Duration::from_secs(20);

/// The typing replay against our server and llama.cpp's (driven as llama.vscode drives it) in turns of
/// [`SLICE`]: ours types until a pause ends, llama.cpp's then gets the same steps, and so on for
/// `args.seconds` each, so that both see the same script and the machine's noise hits both.
fn run_replay_pair(
    server: &Path,
    files: &[PathBuf],
    settings: &Map<String, Value>,
    args: &LspBenchArgs,
    llama_server: &Path,
    model: &Path,
) -> anyhow::Result<[super::replay::Tally; 2]> {
    use super::replay::{Replay, Script};
    use super::replay_llama::LlamaVscodeTarget;
    use crate::eval::llama_vscode::{LlamaVscode, SERVER_ARGS};
    let setting = |k: &str, default: usize| {
        settings
            .get(k)
            .and_then(|v| v.as_str().and_then(|s| s.parse().ok()).or(v.as_u64()))
            .map_or(default, |v| v as usize)
    };
    let timeout = Duration::from_secs(300);
    let (mut lsp, name, _, load_ms) = start_server(server, settings, timeout)?;
    let args_with_metrics: Vec<&str> = SERVER_ARGS.iter().copied().chain(["--metrics"]).collect();
    let llama = crate::bench::LlamaServer::start(
        llama_server,
        model,
        // Ours defaults to one thread per core too.
        setting(
            "threads",
            std::thread::available_parallelism().map_or(1, |n| n.get()),
        ),
        setting("context_window", 2048),
        &args_with_metrics,
    )?;
    // llama.vscode's defaults: n_predict 128, t_max_predict_ms 500; a `max_tokens` setting given to ours
    // applies to both, so that models that never stop (random weights) decode as much on each side.
    let n_predict = setting("max_tokens", 128);
    let mut target = LlamaVscodeTarget::new(LlamaVscode::new(&llama.url, n_predict, true)?)?;
    println!(
        "typing replay, ours and llama.cpp's server ({}, n_predict {n_predict}) in turns of {} s: {:.0} s each over {}, seed {}; model {} loaded in {load_ms:.0} ms",
        llama_server.display(),
        SLICE.as_secs(),
        args.seconds,
        shown(files),
        args.seed,
        name.as_deref().unwrap_or("default"),
    );
    let mut ours = Replay::new(Script::read(files, args.seed)?);
    let mut theirs = Replay::new(Script::read(files, args.seed)?);
    let fail = |e: String, lsp: &LspProcess| anyhow::anyhow!("{e}\nserver log:\n{}", lsp.stderr());
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < 2.0 * args.seconds {
        let steps = ours
            .run_slice(&mut lsp, Instant::now() + SLICE)
            .map_err(|e| fail(e, &lsp))?;
        ours.settle(&mut lsp, timeout).map_err(|e| fail(e, &lsp))?;
        theirs
            .run_steps(&mut target, steps)
            .map_err(anyhow::Error::msg)?;
        theirs
            .settle(&mut target, timeout)
            .map_err(anyhow::Error::msg)?;
    }
    let mut ours = ours
        .finish(&mut lsp, timeout)
        .map_err(|e| fail(e, &lsp))?
        .clone();
    let mut theirs = theirs
        .finish(&mut target, timeout)
        .map_err(anyhow::Error::msg)?
        .clone();
    theirs.totals = target.totals()?;
    theirs.peak_rss_mb = llama.peak_rss_mb();
    ours.peak_rss_mb = crate::bench::peak_rss_mb(Some(lsp.pid()));
    let _ = lsp.shutdown(Duration::from_secs(10));
    save_server_log(&lsp, args)?;
    Ok([ours, theirs])
}

/// Ours next to llama.cpp's, as a Markdown table.
fn replay_table(ours: &super::replay::Tally, llama: &super::replay::Tally) -> String {
    type Row = (&'static str, fn(&super::replay::Tally) -> String);
    let rows: [Row; 14] = [
        ("keystrokes (requests)", |t| t.keystrokes.to_string()),
        ("burst end → suggestion p50 / p95 (ms)", |t| {
            p50_p95(
                &t.suggestion_ms,
                t.suggestion_percentiles(),
                "- (no suggestion in a pause)",
            )
        }),
        ("the same less its decoding p50 / p95 (ms)", |t| {
            p50_p95(&t.overhead_ms, t.overhead_percentiles(), "-")
        }),
        ("decoding over the answers (tok/s)", |t| {
            t.decode_rate().map_or("-".to_string(), |r| {
                format!("{r:.1} ({} tokens)", t.decoded_tokens)
            })
        }),
        ("pauses with a suggestion", |t| {
            pct_of(t.pauses_with_suggestion, t.pauses)
        }),
        ("pauses ≥ 1 s with a suggestion", |t| {
            pct_of(t.long_pauses_with_suggestion, t.long_pauses)
        }),
        ("prompt tokens reused", |t| {
            t.totals.reused_tokens.to_string()
        }),
        ("of them moved (cache_reuse)", |t| {
            t.totals.moved_tokens.to_string()
        }),
        ("prompt tokens computed", |t| {
            t.totals.computed_tokens.to_string()
        }),
        ("of them for cancelled requests", |t| {
            t.totals.cancelled_computed_tokens.to_string()
        }),
        ("of them while idle (cold_prompt_tokens)", |t| {
            t.totals.idle_tokens.to_string()
        }),
        ("of them lost part-way through a step", |t| {
            let totals = &t.totals;
            // Stopped part-way, less what a later pass went on with from the layer reached.
            (totals
                .discarded_tokens
                .saturating_sub(totals.resumed_tokens))
            .to_string()
        }),
        ("generations on a shorter window", |t| {
            t.totals.shortened.to_string()
        }),
        ("server peak RSS", |t| t.peak_rss_text()),
    ];
    let mut out =
        String::from("| typing replay | ours | llama.cpp (llama.vscode's way) |\n|---|---|---|\n");
    for (name, f) in rows {
        let theirs = if name.starts_with("of them lost") {
            "not reported".to_string()
        } else {
            f(llama)
        };
        out.push_str(&format!("| {name} | {} | {theirs} |\n", f(ours)));
    }
    out
}

/// "p50 / p95" of the times `ms`, or `empty` where there are none.
fn p50_p95(ms: &[f64], (p50, p95): (f64, f64), empty: &str) -> String {
    if ms.is_empty() {
        empty.to_string()
    } else {
        format!("{p50:.0} / {p95:.0}")
    }
}

fn pct_of(a: usize, b: usize) -> String {
    if b == 0 {
        "-".to_string()
    } else {
        format!("{:.0}% ({a}/{b})", 100.0 * a as f64 / b as f64)
    }
}

/// The typing replay for `args.seconds` against a fresh server.
fn run_replay(
    server: &Path,
    files: &[PathBuf],
    settings: &Map<String, Value>,
    args: &LspBenchArgs,
) -> anyhow::Result<super::replay::Tally> {
    use super::replay::{Replay, Script};
    let script = Script::read(files, args.seed)?;
    let timeout = Duration::from_secs(300);
    let (mut lsp, model, _, load_ms) = start_server(server, settings, timeout)?;
    println!(
        "typing replay: {:.0} s over {}, seed {}; model {} loaded in {load_ms:.0} ms",
        args.seconds,
        shown(files),
        args.seed,
        model.as_deref().unwrap_or("default"),
    );
    let mut replay = Replay::new(script);
    let end = Instant::now() + Duration::from_secs_f64(args.seconds);
    let fail = |e: String, lsp: &LspProcess| anyhow::anyhow!("{e}\nserver log:\n{}", lsp.stderr());
    replay.run_until(&mut lsp, end).map_err(|e| fail(e, &lsp))?;
    let mut tally = replay
        .finish(&mut lsp, timeout)
        .map_err(|e| fail(e, &lsp))?
        .clone();
    tally.peak_rss_mb = crate::bench::peak_rss_mb(Some(lsp.pid()));
    let _ = lsp.shutdown(Duration::from_secs(10));
    save_server_log(&lsp, args)?;
    Ok(tally)
}

/// Writes the server's stderr to `--server-log`, when given.
fn save_server_log(lsp: &LspProcess, args: &LspBenchArgs) -> anyhow::Result<()> {
    let Some(path) = &args.server_log else {
        return Ok(());
    };
    std::fs::write(path, lsp.stderr())
        .with_context(|| format!("cannot write the server log to {}", path.display()))
}

/// The replayed files, for the header line.
fn shown(files: &[PathBuf]) -> String {
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    names.join(", ")
}

/// The default file to type into, found from the working directory or beside the executable's checkout.
pub fn default_file() -> PathBuf {
    in_checkout("examples/typing/inventory.py")
}

/// A path of this repository, found from the working directory or beside the executable's checkout.
fn in_checkout(rel: &str) -> PathBuf {
    let rel = Path::new(rel);
    let mut candidates = vec![rel.to_path_buf()];
    if let Ok(exe) = std::env::current_exe() {
        candidates.extend(exe.ancestors().skip(1).take(4).map(|d| d.join(rel)));
    }
    candidates.push(Path::new(env!("CARGO_MANIFEST_DIR")).join(rel));
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| rel.to_path_buf())
}

/// The figures of one run.
#[derive(Debug, Clone, Serialize)]
pub struct LspBenchReport {
    pub file: String,
    /// 1-based line where typing started.
    pub line: usize,
    pub model: Option<String>,
    pub settings: Map<String, Value>,
    pub initialize_ms: f64,
    pub load_ms: f64,
    pub requests: usize,
    /// The first request (cold: nothing cached).
    pub first_ms: f64,
    /// Over the requests after the first.
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub mean_ms: f64,
    pub max_ms: f64,
    /// Requests answered without the model (typing-ahead cache).
    pub cache_answers: usize,
    pub generations: usize,
    /// p50 over the requests after the first that went to the model.
    pub p50_generation_ms: f64,
    pub prompt_tokens: usize,
    pub reused_tokens: usize,
    /// Prompt tokens and reused ones over the generations after the first.
    pub prompt_tokens_warm: usize,
    pub reused_tokens_warm: usize,
    pub non_empty: usize,
    /// Means over the generations after the first: prefill and decode time, tokens generated.
    pub warm_prefill_ms: f64,
    pub warm_decode_ms: f64,
    pub warm_generated_tokens: f64,
}

impl LspBenchReport {
    pub fn cache_share(&self) -> f64 {
        share(self.cache_answers, self.requests)
    }

    pub fn reuse_share(&self) -> f64 {
        share(self.reused_tokens, self.prompt_tokens)
    }

    pub fn reuse_share_warm(&self) -> f64 {
        share(self.reused_tokens_warm, self.prompt_tokens_warm)
    }

    /// The human-readable summary.
    pub fn render(&self) -> String {
        let settings = if self.settings.is_empty() {
            "defaults".to_string()
        } else {
            Value::Object(self.settings.clone()).to_string()
        };
        format!(
            "LSP keystroke benchmark: {file} from line {line}, {n} characters typed, one inline completion each\n\
             model: {model} (loaded in {load:.0} ms), settings: {settings}\n\
             initialize answered in {init:.1} ms\n\
             first request (cold): {first:.1} ms\n\
             time to answer, requests 2..{n}: p50 {p50:.1} ms, p95 {p95:.1} ms, mean {mean:.1} ms, max {max:.1} ms\n\
             answered from the typing-ahead cache: {cache:.1}% ({ca}/{n}); {gens} generations, p50 {p50g:.1} ms\n\
             prompt tokens reused from the model's cache: {reuse:.1}% ({ru}/{pt}); after the first generation {reusew:.1}% ({ruw}/{ptw})\n\
             generations after the first, mean: prefill {wp:.1} ms, decode {wd:.1} ms for {wg:.1} tokens\n\
             non-empty suggestions: {ne}/{n}",
            file = self.file,
            line = self.line,
            n = self.requests,
            model = self.model.as_deref().unwrap_or("default"),
            load = self.load_ms,
            init = self.initialize_ms,
            first = self.first_ms,
            p50 = self.p50_ms,
            p95 = self.p95_ms,
            mean = self.mean_ms,
            max = self.max_ms,
            cache = 100.0 * self.cache_share(),
            ca = self.cache_answers,
            gens = self.generations,
            p50g = self.p50_generation_ms,
            reuse = 100.0 * self.reuse_share(),
            ru = self.reused_tokens,
            pt = self.prompt_tokens,
            reusew = 100.0 * self.reuse_share_warm(),
            ruw = self.reused_tokens_warm,
            ptw = self.prompt_tokens_warm,
            ne = self.non_empty,
            wp = self.warm_prefill_ms,
            wd = self.warm_decode_ms,
            wg = self.warm_generated_tokens,
        )
    }
}

fn share(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// The value below which `q` of the sorted samples fall (nearest rank).
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Where to type: the body of the function definition nearest the middle of the file (see
/// [`function_bodies`]), or from the middle line on.
pub fn pick_region(text: &str) -> (usize, usize) {
    let middle = text.split_inclusive('\n').count() / 2;
    match function_bodies(text)
        .into_iter()
        .min_by_key(|b| b.header.abs_diff(middle))
    {
        Some(b) => (b.start, b.end),
        None => {
            let start: usize = text.split_inclusive('\n').take(middle).map(str::len).sum();
            (start, text.len())
        }
    }
}

/// The body of one function definition: byte offsets of its lines after the header, and the header's line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Body {
    pub header: usize,
    pub start: usize,
    pub end: usize,
}

/// The bodies of the function definitions in `text`, in order: the lines after a header (`def`, `fn`,
/// `function`, ...; a header may span lines, up to the one ending with ':' or '{') up to the next line indented
/// no deeper than the header, trailing blank lines left out. Nested definitions are inside their parent's body.
pub fn function_bodies(text: &str) -> Vec<Body> {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let is_def = |l: &str| {
        let t = l.trim_start();
        ["def ", "async def ", "fn ", "pub fn ", "function ", "func "]
            .iter()
            .any(|k| t.starts_with(k))
    };
    let mut starts = Vec::with_capacity(lines.len() + 1);
    starts.push(0);
    for l in &lines {
        starts.push(starts.last().copied().unwrap_or(0) + l.len());
    }
    let mut bodies = Vec::new();
    for h in (0..lines.len()).filter(|&i| is_def(lines[i])) {
        let mut body = h + 1;
        while body < lines.len() && !lines[body - 1].trim_end().ends_with([':', '{']) {
            body += 1;
        }
        let mut end = body;
        while end < lines.len()
            && (lines[end].trim().is_empty() || indent(lines[end]) > indent(lines[h]))
        {
            end += 1;
        }
        // Leave trailing blank lines in place.
        while end > body && lines[end - 1].trim().is_empty() {
            end -= 1;
        }
        bodies.push(Body {
            header: h,
            start: starts[body.min(lines.len())],
            end: starts[end.min(lines.len())],
        });
    }
    bodies
}

/// The server started as VS Code starts it (UTF-16 positions, progress), initialized with `settings` as
/// `initializationOptions` and its model ready: the process, the model's name, and how long `initialize` and
/// the load took (ms).
pub fn start_server(
    server: &Path,
    settings: &Map<String, Value>,
    timeout: Duration,
) -> anyhow::Result<(LspProcess, Option<String>, f64, f64)> {
    let mut cmd = Command::new(server);
    cmd.arg("serve");
    let mut lsp =
        LspProcess::spawn(cmd).with_context(|| format!("cannot start {}", server.display()))?;
    let capabilities = json!({
        "general": {"positionEncodings": ["utf-16"]},
        "window": {"workDoneProgress": true},
        "textDocument": {"inlineCompletion": {}, "completion": {"completionItem": {}}},
    });
    let t = Instant::now();
    lsp.initialize(capabilities, Value::Object(settings.clone()))
        .map_err(anyhow::Error::msg)?;
    let initialize_ms = ms(t);
    let t = Instant::now();
    let ready = lsp
        .wait_ready(timeout)
        .map_err(|e| anyhow::anyhow!("{e}\nserver log:\n{}", lsp.stderr()))?;
    let model = ready["params"]["model"].as_str().map(str::to_string);
    Ok((lsp, model, initialize_ms, ms(t)))
}

/// Runs the benchmark.
pub fn run_lsp_bench(opts: &LspBenchOptions) -> anyhow::Result<LspBenchReport> {
    let text = std::fs::read_to_string(&opts.file)
        .with_context(|| format!("cannot read {}", opts.file.display()))?;
    let (start, end) = pick_region(&text);
    let typed: String = text[start..end].chars().take(opts.chars).collect();
    if typed.is_empty() {
        bail!("{}: nothing to type", opts.file.display());
    }
    let before = &text[..start];
    let initial = format!("{before}{}", &text[end..]);
    let line = before.matches('\n').count() + 1;

    let (mut server, model, initialize_ms, load_ms) =
        start_server(&opts.server, &opts.settings, opts.timeout)?;

    let uri = format!(
        "file://{}",
        std::fs::canonicalize(&opts.file)
            .unwrap_or_else(|_| opts.file.clone())
            .display()
    );
    server.notify(
        "textDocument/didOpen",
        json!({"textDocument": {"uri": uri, "languageId": language_of(&opts.file), "version": 1, "text": initial}}),
    );
    let (mut row, mut col) = position_after(before);
    let mut latencies = Vec::new();
    let mut generation_latencies = Vec::new();
    let mut cache_answers = 0;
    let mut non_empty = 0;
    for (version, c) in typed.chars().enumerate() {
        server.notify(
            "textDocument/didChange",
            json!({
                "textDocument": {"uri": uri, "version": version + 2},
                "contentChanges": [{"range": {"start": {"line": row, "character": col}, "end": {"line": row, "character": col}}, "text": c.to_string()}],
            }),
        );
        if c == '\n' {
            row += 1;
            col = 0;
        } else {
            col += c.len_utf16();
        }
        server.drain();
        let seen = count_generating(&server.received);
        let t = Instant::now();
        let id = server.request(
            "textDocument/inlineCompletion",
            json!({"textDocument": {"uri": uri}, "position": {"line": row, "character": col}, "context": {"triggerKind": 2}}),
        );
        let response = server
            .response(&json!(id), opts.timeout)
            .map_err(|e| anyhow::anyhow!("{e}\nserver log:\n{}", server.stderr()))?;
        let elapsed = ms(t);
        server.drain();
        if let Some(e) = response.get("error") {
            bail!("inline completion failed: {e}");
        }
        if response["result"]["items"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
        {
            non_empty += 1;
        }
        let generated = count_generating(&server.received) > seen;
        if !generated {
            cache_answers += 1;
        } else if version > 0 {
            generation_latencies.push(elapsed);
        }
        latencies.push(elapsed);
    }
    // The last "ready" may trail the last answer.
    let generations = count_generating(&server.received);
    let _ = server.wait_for("codellama/status", Duration::from_secs(2), |_| false);
    let timings: Vec<Value> = server
        .received
        .iter()
        .filter(|m| m["method"] == "codellama/status" && m["params"]["timings"].is_object())
        .map(|m| m["params"]["timings"].clone())
        .collect();
    let sum = |vals: &[Value], key: &str| {
        vals.iter().filter_map(|t| t[key].as_u64()).sum::<u64>() as usize
    };
    let warm = timings.get(1..).unwrap_or(&[]);
    let mean = |key: &str| {
        let vals: Vec<f64> = warm.iter().filter_map(|t| t[key].as_f64()).collect();
        if vals.is_empty() {
            0.0
        } else {
            vals.iter().sum::<f64>() / vals.len() as f64
        }
    };
    let _ = server.shutdown(Duration::from_secs(10));

    let first_ms = latencies.first().copied().unwrap_or(0.0);
    let mut rest: Vec<f64> = latencies.iter().skip(1).copied().collect();
    rest.sort_by(f64::total_cmp);
    generation_latencies.sort_by(f64::total_cmp);
    Ok(LspBenchReport {
        file: opts.file.display().to_string(),
        line,
        model,
        settings: opts.settings.clone(),
        initialize_ms,
        load_ms,
        requests: latencies.len(),
        first_ms,
        p50_ms: percentile(&rest, 0.5),
        p95_ms: percentile(&rest, 0.95),
        mean_ms: if rest.is_empty() {
            0.0
        } else {
            rest.iter().sum::<f64>() / rest.len() as f64
        },
        max_ms: rest.last().copied().unwrap_or(0.0),
        cache_answers,
        generations,
        p50_generation_ms: percentile(&generation_latencies, 0.5),
        prompt_tokens: sum(&timings, "prompt_tokens"),
        reused_tokens: sum(&timings, "reused_tokens"),
        prompt_tokens_warm: sum(warm, "prompt_tokens"),
        reused_tokens_warm: sum(warm, "reused_tokens"),
        non_empty,
        warm_prefill_ms: mean("prefill_ms"),
        warm_decode_ms: mean("decode_ms"),
        warm_generated_tokens: mean("generated_tokens"),
    })
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

fn count_generating(received: &[Value]) -> usize {
    received
        .iter()
        .filter(|m| m["method"] == "codellama/status" && m["params"]["state"] == "generating")
        .count()
}

/// Line and UTF-16 column at the end of `text`.
fn position_after(text: &str) -> (usize, usize) {
    let line = text.matches('\n').count();
    let last = text.rsplit('\n').next().unwrap_or("");
    (line, last.encode_utf16().count())
}

pub(crate) fn language_of(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "py" => "python",
        "rs" => "rust",
        "js" => "javascript",
        "ts" => "typescript",
        "go" => "go",
        "c" | "h" => "c",
        "cpp" | "cc" | "hpp" => "cpp",
        "java" => "java",
        "lua" => "lua",
        _ => "plaintext",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_is_a_function_body() {
        let text = "import x\n\ndef a():\n    return 1\n\n\ndef b(\n    y,\n):\n    z = y\n\n    return z\n\nprint(b(1))\n";
        let (s, e) = pick_region(text);
        assert_eq!(&text[s..e], "    z = y\n\n    return z\n");
    }

    #[test]
    fn percentiles() {
        let v = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0];
        assert_eq!(percentile(&v, 0.5), 5.0);
        assert_eq!(percentile(&v, 0.95), 10.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }

    #[test]
    fn the_example_file_has_a_body_to_type() {
        let text = std::fs::read_to_string(default_file()).unwrap();
        let (s, e) = pick_region(&text);
        assert!(e - s > 200, "{}", &text[s..e]);
        assert!(text[..s].ends_with(":\n"));
    }
}
