//! The engine benchmark: prefill and decode speed of any `Backend` on synthetic token ids, and, when a
//! llama.cpp server binary is available, the same workload on llama.cpp with the same model file and
//! thread count, started for the run on a loopback port beside our engine, so the ratio ours/llama.cpp
//! comes from one run on one machine: the two engines take turns sample by sample, each going first in
//! turn, so that the machine's moving memory bandwidth hits both alike.
//!
//! Prefill: one request of N tokens and one generated token; the rate is N over the time to the first
//! token. Decode: a prompt of `depth` tokens, then `tokens` generated; the rate is the generated tokens
//! after the first over the time after the first. Every request starts with a different token, so
//! neither engine reuses a cached prefix. Each figure is the median of `repeat` runs. llama.cpp's times
//! are the ones its server measures itself (`timings.prompt_ms`, `timings.predicted_ms`), so HTTP and
//! streaming are not counted against it.
//!
//! Speculative decoding is off here and measured on real code instead ([`measure_speculation`]): drafts
//! from synthetic ids would measure how the model continues a count, not how code repeats itself.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use codellama_engine::{Backend, Drafting, GenerateRequest};
use codellama_remote::{RemoteBackend, RemoteConfig, RemoteKind};
use codellama_text::completion::{self, CompletionRequest};
use codellama_text::prompt::PromptBuilder;

#[derive(Debug, Clone)]
pub struct Workload {
    pub prefill: Vec<usize>,
    pub decode_depth: Vec<usize>,
    pub decode_tokens: usize,
    pub repeat: usize,
}

impl Workload {
    /// Positions the KV cache needs for this workload.
    pub fn context_needed(&self) -> usize {
        self.prefill
            .iter()
            .copied()
            .chain(
                self.decode_depth
                    .iter()
                    .map(|d| d.max(&1) + self.decode_tokens),
            )
            .max()
            .unwrap_or(0)
            + 8
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    /// Prompt tokens (prefill) or context depth (decode).
    pub tokens: usize,
    pub tok_per_s: f64,
    pub samples: Vec<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    pub prefill: Vec<Figure>,
    pub decode: Vec<Figure>,
}

/// Runs the workload on each of `engines` (a name and a backend), the engines taking turns sample by
/// sample (and the decode depths too), the first to go changing with each repetition, so that a change
/// in the machine's memory bandwidth or load (on a shared machine they move from minute to minute) hits
/// every engine and depth alike. Each engine's prompts differ from every other's. Each sample is also
/// printed to stderr as it comes, named by the engine (a long run shows its progress, and a run cut
/// short keeps what it measured). One `Figures` per engine, in their order.
pub fn measure(engines: &[(&str, &dyn Backend)], w: &Workload) -> Result<Vec<Figures>> {
    let mut prompts: Vec<_> = engines
        .iter()
        .enumerate()
        .map(|(i, (_, backend))| Prompts {
            vocab: backend.info().config.vocab_size.max(2000) as u32,
            run: i,
            step: engines.len(),
        })
        .collect();
    let repeat = w.repeat.max(1);
    // samples[engine][size]
    let mut prefill = vec![vec![Vec::new(); w.prefill.len()]; engines.len()];
    for (k, &n) in w.prefill.iter().enumerate() {
        for rep in 0..repeat {
            for e in turns(engines.len(), rep) {
                let (who, backend) = engines[e];
                let o = backend.submit(plain(prompts[e].next(n), 1)).wait()?;
                let rate = n as f64 / (o.timings.prefill_ms / 1e3);
                eprintln!("{who}: prefill {n}: {rate:.1} tok/s");
                prefill[e][k].push(rate);
            }
        }
    }
    let mut decode = vec![vec![Vec::new(); w.decode_depth.len()]; engines.len()];
    for rep in 0..repeat {
        for (k, &depth) in w.decode_depth.iter().enumerate() {
            for e in turns(engines.len(), rep) {
                let (who, backend) = engines[e];
                let req = plain(prompts[e].next(depth), w.decode_tokens);
                let o = backend.submit(req).wait()?;
                let steps = o.timings.generated_tokens.saturating_sub(1).max(1);
                let rate = steps as f64 / (o.timings.decode_ms / 1e3);
                eprintln!("{who}: decode at depth {depth}: {rate:.1} tok/s");
                decode[e][k].push(rate);
            }
        }
    }
    let figures = |sizes: &[usize], samples: Vec<Vec<f64>>| -> Vec<Figure> {
        sizes
            .iter()
            .zip(samples)
            .map(|(&n, samples)| figure(n, samples))
            .collect()
    };
    Ok(prefill
        .into_iter()
        .zip(decode)
        .map(|(p, d)| Figures {
            prefill: figures(&w.prefill, p),
            decode: figures(&w.decode_depth, d),
        })
        .collect())
}

/// A request of the synthetic workload: `max_tokens` generated whatever they are, by plain decoding, as
/// llama.cpp's server does by default (the synthetic prompt counts up, and a model that goes on counting
/// would let prompt lookup draft: see `measure_speculation`), and no runs moved from a cached prompt (the
/// prompts of one run are rotations of one sequence: moved runs would skip their work).
fn plain(prompt: Vec<u32>, max_tokens: usize) -> GenerateRequest {
    let mut req = GenerateRequest::new(prompt, max_tokens);
    req.stop_at_eog = false;
    req.speculative = Drafting::OFF;
    req.cache_reuse = 0;
    req
}

/// The engines' order in repetition `rep`: each goes first in turn.
fn turns(engines: usize, rep: usize) -> impl Iterator<Item = usize> {
    (0..engines).map(move |i| (i + rep) % engines)
}

/// One engine's synthetic prompts: the engines take the runs in turn (`run`, `run + step`, ...), and each
/// run's prompt starts with its own token for 1,000 runs (7,919 and 1,000 have no common factor), so
/// that no engine reuses a cached prefix and no two engines' prompts are alike.
struct Prompts {
    vocab: u32,
    run: usize,
    step: usize,
}

impl Prompts {
    fn next(&mut self, n: usize) -> Vec<u32> {
        self.run += self.step;
        (0..n.max(1))
            .map(|i| ((i + self.run * 7919) % 1000) as u32 + 100)
            .map(|t| t % self.vocab)
            .collect()
    }
}

/// Greedy completions of real code under several ways of drafting (the first one, speculation off, is the
/// reference every other output is compared with).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Speculation {
    pub completions: usize,
    pub modes: Vec<SpeculationMode>,
}

/// One way of drafting over all the completions.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SpeculationMode {
    pub name: &'static str,
    /// Completions whose generated ids were those of the first mode.
    pub identical: usize,
    pub tokens: usize,
    pub decode_ms: f64,
    /// Prefill of the last prompt token (and the draft model's catching up with the prompt).
    pub prefill_ms: f64,
    pub drafted: usize,
    pub accepted: usize,
}

/// The ways `bench --code` compares: off and prompt lookup, and with a draft model the draft model alone and
/// both.
pub fn speculation_modes(draft_model: bool) -> Vec<(&'static str, Drafting)> {
    let lookup = Drafting {
        prompt_lookup: true,
        draft_model: false,
    };
    let mut modes = vec![("off", Drafting::OFF), ("prompt lookup", lookup)];
    if draft_model {
        let model = Drafting {
            prompt_lookup: false,
            draft_model: true,
        };
        modes.extend([("draft model", model), ("both", Drafting::ON)]);
    }
    modes
}

impl Speculation {
    pub fn print(&self) {
        let rate = |m: &SpeculationMode| m.tokens as f64 / (m.decode_ms / 1e3);
        println!("speculative decoding: {} completions", self.completions);
        let Some(off) = self.modes.first() else {
            return;
        };
        println!(
            "{:<14} {:>9} {:>8} {:>9} {:>9} {:>10} {:>14}",
            "drafts", "identical", "tok/s", "speedup", "accepted", "tok/pass", "prefill ms/req"
        );
        for m in &self.modes {
            println!(
                "{:<14} {:>5}/{:<3} {:>8.1} {:>8.2}x {:>8.0}% {:>10.2} {:>14.0}",
                m.name,
                m.identical,
                self.completions,
                rate(m),
                rate(m) / rate(off),
                100.0 * m.accepted as f64 / m.drafted.max(1) as f64,
                m.tokens as f64 / (m.tokens - m.accepted).max(1) as f64,
                m.prefill_ms / self.completions.max(1) as f64,
            );
        }
    }
}

/// A hole to fill in `measure_speculation`: the text before and after it, and the file it is in.
#[derive(Debug, Clone)]
pub struct Hole {
    pub path: Option<String>,
    pub language_id: Option<String>,
    pub prefix: String,
    pub suffix: String,
}

/// `points` holes of `HOLE_LINES` lines spread over each file (the cursor on the empty line where they
/// were, as when writing them), from a quarter of the file to its end, so that no prefix is short.
pub fn file_holes(files: &[PathBuf], points: usize) -> Result<Vec<Hole>> {
    const HOLE_LINES: usize = 3;
    let mut holes = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let lines: Vec<&str> = text.split_inclusive('\n').collect();
        if lines.len() < 2 * HOLE_LINES {
            bail!("{} has too few lines for a hole", path.display());
        }
        for p in 0..points {
            let at = lines.len() / 4 + p * (lines.len() - lines.len() / 4 - HOLE_LINES) / points;
            holes.push(Hole {
                path: Some(path.display().to_string()),
                language_id: None,
                prefix: lines[..at].concat(),
                suffix: lines[at + HOLE_LINES..].concat(),
            });
        }
    }
    Ok(holes)
}

/// The holes of `points` HumanEval infilling problems from the file at `dataset`, spread evenly over it
/// (`eval::spread`; 0: all).
pub fn humaneval_holes(dataset: &Path, points: usize) -> Result<Vec<Hole>> {
    let problems: Vec<crate::eval::Problem> = crate::eval::load(dataset)?;
    Ok(crate::eval::spread(problems, points)
        .into_iter()
        .map(|p| Hole {
            path: None,
            language_id: Some("python".into()),
            prefix: p.prompt,
            suffix: p.suffix,
        })
        .collect())
}

/// Fills each hole once per mode after a warm-up, the modes taking turns at going first so that load on
/// the machine hits them alike. Raw completions (only end of generation and `max_tokens` stop) so that
/// the decode is long enough to time.
pub fn measure_speculation(
    backend: &dyn Backend,
    builder: &PromptBuilder,
    holes: &[Hole],
    max_tokens: usize,
    modes: &[(&'static str, Drafting)],
) -> Result<Speculation> {
    let mut s = Speculation {
        completions: 0,
        modes: modes
            .iter()
            .map(|&(name, _)| SpeculationMode {
                name,
                ..SpeculationMode::default()
            })
            .collect(),
    };
    for hole in holes {
        let mut req = CompletionRequest::new(hole.prefix.clone(), hole.suffix.clone(), max_tokens);
        req.path = hole.path.clone();
        req.language_id = hole.language_id.clone();
        req.raw = true;
        // Every measured run finds the prompt cached but its last token (recomputed alone: computed
        // in a prompt chunk instead, its logits differ in the last bits, and so may the output). The
        // warm-up drafts with every source, so the draft model has read the prompt too.
        let prompt = completion::prepare(backend, builder, &req)?
            .prompt()
            .ids
            .clone();
        backend.submit(GenerateRequest::new(prompt, 1)).wait()?;
        let mut outs = vec![None; modes.len()];
        for i in turns(modes.len(), s.completions) {
            req.speculative = modes[i].1;
            outs[i] = Some(completion::complete(backend, builder, &req)?);
        }
        let outs: Vec<_> = outs.into_iter().flatten().collect();
        s.completions += 1;
        for (m, out) in s.modes.iter_mut().zip(&outs) {
            m.identical += usize::from(out.generated_ids == outs[0].generated_ids);
            m.tokens += out.generated_ids.len();
            m.decode_ms += out.timings.decode_ms;
            m.prefill_ms += out.timings.prefill_ms;
            m.drafted += out.timings.drafted_tokens;
            m.accepted += out.timings.accepted_tokens;
        }
    }
    Ok(s)
}

fn figure(tokens: usize, mut samples: Vec<f64>) -> Figure {
    samples.sort_by(|a, b| a.total_cmp(b));
    let tok_per_s = samples.get(samples.len() / 2).copied().unwrap_or(0.0);
    Figure {
        tokens,
        tok_per_s,
        samples,
    }
}

/// Peak resident memory (VmHWM, Linux) of process `pid`, or of this one for `None`, in MB (10^6 bytes,
/// the unit of the file and KV cache sizes it is compared with).
pub fn peak_rss_mb(pid: Option<u32>) -> Option<f64> {
    status_mb(pid, "VmHWM:")
}

/// Resident memory now (VmRSS, Linux), as `peak_rss_mb`.
pub fn rss_mb(pid: Option<u32>) -> Option<f64> {
    status_mb(pid, "VmRSS:")
}

fn status_mb(pid: Option<u32>, key: &str) -> Option<f64> {
    let proc = pid.map_or("self".to_string(), |p| p.to_string());
    let status = std::fs::read_to_string(format!("/proc/{proc}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024.0 / 1e6)
}

/// What bounds the decode rate: the machine's memory read bandwidth and the bytes one decode step reads.
#[derive(Debug, Clone, Serialize)]
pub struct DecodeBound {
    /// Read bandwidth measured by a probe before the engines were started and after they were stopped,
    /// GB/s (the bandwidth of a shared machine moves: the bound takes the highest rate seen).
    pub read_gb_s: [f64; 2],
    /// Bytes of the model file a decode step reads at least (every tensor but the token embedding table,
    /// of which it reads one row, unless the model has no output matrix and multiplies by the table).
    pub weight_bytes: u64,
    /// Bytes of cached keys and values per position.
    pub kv_bytes_per_position: u64,
}

impl DecodeBound {
    /// The weights' share from the model file at `path`, beside the probes' `read_gb_s`.
    pub fn new(path: &Path, kv_bytes_per_position: u64, read_gb_s: [f64; 2]) -> Result<Self> {
        let file = codellama_engine::gguf::GgufFile::open(path)?;
        let tied = !file.content.tensor_infos.contains_key("output.weight");
        let weight_bytes = file
            .content
            .tensor_infos
            .iter()
            .filter(|(name, _)| tied || name.as_str() != "token_embd.weight")
            .map(|(name, t)| {
                codellama_engine::gguf::tensor_size(t.ggml_dtype, t.shape.dims())
                    .with_context(|| format!("the size of tensor {name}"))
            })
            .sum::<Result<usize>>()? as u64;
        Ok(DecodeBound {
            read_gb_s,
            weight_bytes,
            kv_bytes_per_position,
        })
    }

    /// Bytes a decode step at `depth` reads at least.
    pub fn step_bytes(&self, depth: usize) -> f64 {
        self.weight_bytes as f64 + (self.kv_bytes_per_position * depth as u64) as f64
    }

    /// The highest read rate seen: the probes', or what a decode reached (its steps' bytes at its rate),
    /// in GB/s. The probe is one simple loop on a shared machine, and an engine that read faster shows
    /// that the memory allows it.
    pub fn best_gb_s<'a>(&self, decodes: impl Iterator<Item = &'a Figure>) -> f64 {
        decodes
            .map(|f| f.tok_per_s * self.step_bytes(f.tokens) / 1e9)
            .fold(self.read_gb_s[0].max(self.read_gb_s[1]), f64::max)
    }
}

/// The machine's memory read bandwidth now, in GB/s: `threads` threads each summing their part of a
/// buffer eight times larger than a large last-level cache, best of five passes. Measured once the
/// model is dropped, so that the buffer does not add to the peak RSS reported.
pub fn read_bandwidth(threads: usize) -> f64 {
    const BYTES: usize = 256 << 20;
    let buf = vec![1u64; BYTES / 8];
    let part = buf.len().div_ceil(threads.max(1));
    let mut best = 0f64;
    for _ in 0..5 {
        let start = Instant::now();
        let total: u64 = std::thread::scope(|s| {
            let sums: Vec<_> = buf
                .chunks(part)
                .map(|p| s.spawn(move || sum_words(p)))
                .collect();
            sums.into_iter().map(|h| h.join().unwrap_or(0)).sum()
        });
        std::hint::black_box(total);
        best = best.max(BYTES as f64 / start.elapsed().as_secs_f64() / 1e9);
    }
    best
}

/// The wrapping sum of `words`, eight lanes at a time (independent additions the compiler turns into
/// vector ones, so that reading, not adding, sets the pace).
fn sum_words(words: &[u64]) -> u64 {
    let (chunks, rest) = words.as_chunks::<8>();
    let lanes = chunks.iter().fold([0u64; 8], |mut acc, c| {
        for (a, x) in acc.iter_mut().zip(c) {
            *a = a.wrapping_add(*x);
        }
        acc
    });
    lanes
        .iter()
        .chain(rest)
        .fold(0u64, |a, &x| a.wrapping_add(x))
}

/// Where a llama.cpp server binary may be: `LLAMA_SERVER`, then the cache `scripts/fetch-llama-server`
/// fills beside the binary's checkout, then `PATH`.
pub fn find_llama_server() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("LLAMA_SERVER").map(PathBuf::from) {
        return p.is_file().then_some(p);
    }
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).take(4).map(Path::to_path_buf));
    }
    if let Ok(cwd) = std::env::current_dir() {
        roots.push(cwd);
    }
    for root in roots {
        let versions = root.join(".cache/llama.cpp");
        if let Ok(entries) = std::fs::read_dir(&versions) {
            for e in entries.flatten() {
                let bin = e.path().join("build/bin/llama-server");
                if bin.is_file() {
                    return Some(bin);
                }
            }
        }
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("llama-server"))
            .find(|p| p.is_file())
    })
}

/// A llama.cpp server started for a benchmark or an evaluation; stopped when dropped.
pub struct LlamaServer {
    child: Child,
    pub url: String,
}

impl LlamaServer {
    /// Starts `binary` on a loopback port with one slot; `extra` are further command-line options.
    pub fn start(
        binary: &Path,
        model: &Path,
        threads: usize,
        context: usize,
        extra: &[&str],
    ) -> Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut server = Self::spawn_on(binary, model, threads, context, extra, port)?;
        server.wait_ready(Duration::from_secs(120))?;
        Ok(server)
    }

    /// Started on a given loopback port, without waiting for it to load (it answers 503 meanwhile).
    pub fn spawn_on(
        binary: &Path,
        model: &Path,
        threads: usize,
        context: usize,
        extra: &[&str],
        port: u16,
    ) -> Result<Self> {
        let mut cmd = Command::new(binary);
        cmd.args(["-m", &model.display().to_string()])
            .args(["-t", &threads.to_string(), "-tb", &threads.to_string()])
            .args(["-c", &context.to_string(), "-np", "1"])
            .args(extra)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(dir) = binary.parent() {
            // Builds with shared libraries keep them beside the binary.
            let mut paths = vec![dir.to_path_buf()];
            if let Some(old) = std::env::var_os("LD_LIBRARY_PATH") {
                paths.extend(std::env::split_paths(&old));
            }
            cmd.env("LD_LIBRARY_PATH", std::env::join_paths(paths)?);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        Ok(Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        })
    }

    fn wait_ready(&mut self, limit: Duration) -> Result<()> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = self.child.try_wait()? {
                bail!("llama-server exited during start-up ({status})");
            }
            let health = format!("{}/health", self.url);
            let healthy = codellama_engine::http::wait(async move {
                let client =
                    codellama_engine::http::client_builder(Duration::from_secs(2)).build()?;
                let resp = client
                    .get(health)
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await?;
                Ok::<_, reqwest::Error>(resp.status().is_success())
            });
            if healthy.unwrap_or(false) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        bail!("llama-server did not become ready within {limit:?}")
    }

    /// The server's peak resident memory so far, in MB (its mapped model file counts as far as it was read).
    pub fn peak_rss_mb(&self) -> Option<f64> {
        peak_rss_mb(Some(self.child.id()))
    }

    /// A backend talking to this server, with the tokenizer from the same model file.
    pub fn backend(&self, model: &Path) -> Result<RemoteBackend> {
        let mut cfg = RemoteConfig::new(RemoteKind::LlamaCpp, self.url.clone());
        cfg.tokenizer = Some(model.display().to_string());
        // A 7B model's prefill of a few thousand tokens on two cores takes minutes.
        cfg.first_token_timeout = Duration::from_secs(3600);
        cfg.request_timeout = Duration::from_secs(3600);
        Ok(RemoteBackend::connect(cfg)?)
    }
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Side-by-side report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub model: String,
    pub path: PathBuf,
    pub file_size: u64,
    pub threads: usize,
    pub load_ms: u64,
    /// This process's, less `llama_cpp_client_mb`.
    pub peak_rss_mb: Option<f64>,
    /// What the client of llama.cpp's server (its tokenizer above all) keeps resident in this process,
    /// which runs beside our engine and is left out of our peak.
    pub llama_cpp_client_mb: f64,
    /// llama.cpp's server's, over its load and the same workload.
    pub llama_cpp_peak_rss_mb: Option<f64>,
    pub kv_cache_type: &'static str,
    /// Keys and values of every layer for the whole context window.
    pub kv_cache_mb: f64,
    pub context_window: usize,
    pub ours: Figures,
    /// `None` when no llama.cpp server binary was available (or `--no-llama`).
    pub llama_cpp: Option<Figures>,
    pub llama_cpp_binary: Option<PathBuf>,
    pub decode_bound: Option<DecodeBound>,
}

impl Report {
    pub fn print(&self) {
        println!(
            "model {} ({:.1} MB), {} threads, load {} ms, peak RSS {:.0} MB, KV cache {} {:.1} MB for {} positions",
            self.model,
            self.file_size as f64 / 1e6,
            self.threads,
            self.load_ms,
            self.peak_rss_mb.unwrap_or(0.0),
            self.kv_cache_type,
            self.kv_cache_mb,
            self.context_window
        );
        if self.llama_cpp_client_mb > 0.0 {
            println!(
                "(peak RSS without the {:.0} MB the llama.cpp client keeps in this process, its tokenizer \
                 above all)",
                self.llama_cpp_client_mb
            );
        }
        // The memory goal: the file, the cache and at most 300 MB more.
        println!(
            "memory goal (file + KV cache + 300 MB): {:.0} MB",
            self.file_size as f64 / 1e6 + self.kv_cache_mb + 300.0
        );
        match (&self.llama_cpp, &self.llama_cpp_binary) {
            (Some(_), Some(bin)) => println!(
                "llama.cpp: {}, peak RSS {:.0} MB",
                bin.display(),
                self.llama_cpp_peak_rss_mb.unwrap_or(0.0)
            ),
            _ => println!(
                "llama.cpp: not run (--no-llama, or no llama-server found: see scripts/fetch-llama-server)"
            ),
        }
        println!(
            "{:<22} {:>12} {:>12} {:>8}",
            "tok/s (median)", "ours", "llama.cpp", "ratio"
        );
        let rows = |name: &str, ours: &[Figure], theirs: Option<&Vec<Figure>>| {
            for (i, f) in ours.iter().enumerate() {
                let t = theirs.and_then(|v| v.get(i)).map(|g| g.tok_per_s);
                println!(
                    "{:<22} {:>12.1} {:>12} {:>8}",
                    format!("{name} {}", f.tokens),
                    f.tok_per_s,
                    t.map_or("-".into(), |t| format!("{t:.1}")),
                    t.map_or("-".into(), |t| format!("{:.2}", f.tok_per_s / t)),
                );
            }
        };
        rows(
            "prefill",
            &self.ours.prefill,
            self.llama_cpp.as_ref().map(|f| &f.prefill),
        );
        rows(
            "decode at depth",
            &self.ours.decode,
            self.llama_cpp.as_ref().map(|f| &f.decode),
        );
        if let Some(b) = &self.decode_bound {
            self.print_bound(b);
        }
    }

    /// Each decode figure as a share of what the memory allows (`DecodeBound`).
    fn print_bound(&self, b: &DecodeBound) {
        let theirs = self.llama_cpp.iter().flat_map(|l| &l.decode);
        let gb_s = b.best_gb_s(self.ours.decode.iter().chain(theirs));
        println!(
            "decode bound: a step reads {:.0} MB of weights and {:.1} KB of KV cache per position; read \
             bandwidth {:.1} GB/s (probe {:.1} at the start, {:.1} at the end, the rest reached by a \
             decode)",
            b.weight_bytes as f64 / 1e6,
            b.kv_bytes_per_position as f64 / 1e3,
            gb_s,
            b.read_gb_s[0],
            b.read_gb_s[1],
        );
        for (i, f) in self.ours.decode.iter().enumerate() {
            let bound = gb_s * 1e9 / b.step_bytes(f.tokens);
            let theirs = self.llama_cpp.as_ref().and_then(|l| l.decode.get(i));
            println!(
                "{:<22} {:>9.1} tok/s: ours {:.0}%{}",
                format!("bound at depth {}", f.tokens),
                bound,
                100.0 * f.tok_per_s / bound,
                theirs.map_or(String::new(), |t| format!(
                    ", llama.cpp {:.0}%",
                    100.0 * t.tok_per_s / bound
                )),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A decode step reads every tensor of the file but the token embedding table. The golden figure is
    /// the tiny Code Llama fixture's tensor sizes as the `gguf` Python package reads them: its output
    /// matrix (32016 × 64 q8_0: 2,177,088 bytes), two layers of 4 attention matrices (4,352 bytes each), 3
    /// feed-forward ones (8,704) and 2 norms (256), and the output norm; its token embedding table (the
    /// size of the output matrix) is left out.
    #[test]
    fn a_decode_step_reads_the_file_but_the_embedding_table() {
        let path =
            codellama_test_support::fixtures::codellama_fixture("tiny-codellama-mha-q8_0.gguf");
        let b = DecodeBound::new(&path, 1000, [10.0, 10.0]).unwrap();
        assert_eq!(
            b.weight_bytes,
            2_177_088 + 2 * (4 * 4_352 + 3 * 8_704 + 2 * 256) + 256
        );
        assert_eq!(b.step_bytes(3), b.weight_bytes as f64 + 3000.0);
    }

    #[test]
    fn each_engine_goes_first_in_turn() {
        let order = |n, rep| turns(n, rep).collect::<Vec<_>>();
        assert_eq!(order(2, 0), [0, 1]);
        assert_eq!(order(2, 1), [1, 0]);
        assert_eq!(order(3, 2), [2, 0, 1]);
        assert_eq!(order(1, 5), [0]);
    }

    /// Every engine gets a figure per prompt size and depth, each from `repeat` samples, in the
    /// workload's order; no two requests of the run share a prompt.
    #[test]
    fn measure_gives_each_engine_its_figures() {
        let path =
            codellama_test_support::fixtures::codellama_fixture("tiny-codellama-mha-q8_0.gguf");
        let engine = codellama_engine::Engine::start(
            codellama_engine::LoadOptions {
                model: Some(path.display().to_string()),
                threads: Some(2),
                context_window: Some(64),
                ..Default::default()
            },
            Box::new(|_| {}),
        )
        .unwrap();
        let w = Workload {
            prefill: vec![8, 16],
            decode_depth: vec![0, 20],
            decode_tokens: 4,
            repeat: 2,
        };
        let figures = measure(&[("a", &engine), ("b", &engine)], &w).unwrap();
        assert_eq!(figures.len(), 2);
        for f in &figures {
            let sizes = |v: &[Figure]| v.iter().map(|f| f.tokens).collect::<Vec<_>>();
            assert_eq!(sizes(&f.prefill), [8, 16]);
            assert_eq!(sizes(&f.decode), [0, 20]);
            for fig in f.prefill.iter().chain(&f.decode) {
                assert_eq!(fig.samples.len(), 2);
                assert!(
                    fig.samples.iter().all(|r| r.is_finite() && *r > 0.0),
                    "{fig:?}"
                );
            }
        }
        let mut a = Prompts {
            vocab: 32016,
            run: 0,
            step: 2,
        };
        let mut b = Prompts {
            vocab: 32016,
            run: 1,
            step: 2,
        };
        let seen: Vec<Vec<u32>> = (0..50).flat_map(|_| [a.next(8), b.next(8)]).collect();
        let distinct: std::collections::HashSet<_> = seen.iter().map(|p| p[0]).collect();
        assert_eq!(distinct.len(), seen.len(), "two prompts start alike");
    }

    /// The bound's bandwidth is the probes' unless a decode read faster.
    #[test]
    fn the_bound_takes_the_highest_rate_seen() {
        let b = DecodeBound {
            read_gb_s: [10.0, 12.0],
            weight_bytes: 1_000_000_000,
            kv_bytes_per_position: 1_000_000,
        };
        let at = |tokens: usize, tok_per_s: f64| Figure {
            tokens,
            tok_per_s,
            samples: vec![tok_per_s],
        };
        assert_eq!(b.best_gb_s([at(0, 5.0)].iter()), 12.0);
        // 1,000 positions: 2 GB a step, 8 steps a second.
        assert_eq!(b.best_gb_s([at(0, 5.0), at(1000, 8.0)].iter()), 16.0);
    }

    #[test]
    fn humaneval_holes_are_the_problems_text_around_their_solutions() {
        let path = crate::eval::dataset_path("multi-line").expect("../shared/evaldata");
        let problems: Vec<crate::eval::Problem> = crate::eval::load(&path).unwrap();
        let holes = humaneval_holes(&path, 5).unwrap();
        assert_eq!(holes.len(), 5);
        for (hole, p) in holes.iter().zip(crate::eval::spread(problems, 5)) {
            assert_eq!((&hole.prefix, &hole.suffix), (&p.prompt, &p.suffix));
            assert_eq!(hole.language_id.as_deref(), Some("python"));
        }
    }

    #[test]
    fn file_holes_cut_three_lines_from_a_quarter_of_the_file_on() {
        let dir = std::env::temp_dir().join(format!("codellama-file-holes-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.py");
        let text: String = (0..20).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, &text).unwrap();
        let holes = file_holes(&[path], 2).unwrap();
        let firsts: Vec<&str> = holes
            .iter()
            .map(|h| h.suffix.lines().next().unwrap())
            .collect();
        // Holes at lines 5 and 5 + (20 - 5 - 3) / 2 = 11, three lines each.
        assert_eq!(firsts, ["line 8", "line 14"]);
        for (h, at) in holes.iter().zip([5, 11]) {
            let hole: String = (at..at + 3).map(|i| format!("line {i}\n")).collect();
            assert_eq!(format!("{}{hole}{}", h.prefix, h.suffix), text);
        }
        let short = dir.join("b.py");
        std::fs::write(&short, "one\ntwo\n").unwrap();
        assert!(file_holes(&[short], 1).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_probe_sums_every_word() {
        let words: Vec<u64> = (1..=1001).collect();
        assert_eq!(sum_words(&words), 1001 * 1002 / 2);
        assert_eq!(sum_words(&[u64::MAX, 2]), 1);
    }
}
