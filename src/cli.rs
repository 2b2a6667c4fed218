//! The command-line commands. Each parses nothing itself (clap did that in `main.rs`): it loads what it
//! needs through the library and prints. Errors go to the caller, which prints them and exits non-zero.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context as _, Result};
use clap::Args;
use serde_json::json;

use codellama_engine::{Engine, KvType};
use codellama_server::config::{ActionFlags, Config, ModelFlags, SuggestionFlags};
use codellama_text::actions;
use codellama_text::completion;
use codellama_text::prompt::PromptBuilder;

/// The configuration a command runs with: the server's defaults, then `CODELLAMA_LSP_*`, then the command's flags
/// (the same keys and parsing as the server's settings). The environment's problems are warnings, as in `serve`.
pub fn config(flags: Vec<(&'static str, String)>) -> Result<Config> {
    let (config, warnings) = Config::for_command(flags).map_err(anyhow::Error::msg)?;
    for w in warnings {
        eprintln!("codellama-lsp: {w}");
    }
    Ok(config)
}

/// Loads `model` (the completion model unless told otherwise) in-process with the configuration's settings,
/// downloading it (and the draft model) first when it must come from the Hub. A draft model that cannot be used
/// is a warning: the command goes on without it.
fn start(config: &Config, model: Option<String>) -> Result<(Engine, u64)> {
    let mut opts = config.load_options(model);
    opts.model = Some(fetch_with_display(opts.model.as_deref())?);
    if let Some(draft) = opts.draft_model.take() {
        opts.draft_model = Some(fetch_with_display(Some(&draft))?);
    }
    let t = Instant::now();
    let engine = Engine::start(opts, Box::new(|_| {}))?;
    if let Some(Err(e)) = engine.draft() {
        eprintln!("codellama-lsp: {e}");
    }
    Ok((engine, t.elapsed().as_millis() as u64))
}

/// Resolves `--model`, showing a Hub download on stderr: an indicatif bar on a terminal, otherwise a plain
/// line every 10 % (a log file gets no escape codes). Returns the local path.
fn fetch_with_display(spec: Option<&str>) -> Result<String> {
    use codellama_engine::hub::{Event, Hooks};
    use std::io::IsTerminal as _;
    let terminal = std::io::stderr().is_terminal();
    let mut bar: Option<indicatif::ProgressBar> = None;
    let mut name = String::new();
    let mut last_tenth = None;
    let mut on_event = |event: Event| match event {
        Event::Waiting { file } => eprintln!(
            "waiting for another process downloading {} from {} (it holds {})",
            file.file,
            file.repo,
            file.lock_path().display()
        ),
        Event::Start { file, resumed_from } => {
            name = file.file.clone();
            let resumed = if resumed_from > 0 {
                format!(", resuming at {} MB", resumed_from / 1_000_000)
            } else {
                String::new()
            };
            eprintln!(
                "downloading {} from {} ({} MB{resumed}) into {}",
                file.file,
                file.repo,
                file.size.div_ceil(1_000_000),
                file.cache_path().display()
            );
            if terminal {
                let b = indicatif::ProgressBar::new(file.size);
                if let Ok(style) = indicatif::ProgressStyle::with_template(
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ({eta})",
                ) {
                    b.set_style(style.progress_chars("=> "));
                }
                b.set_message(format!("downloading {}", file.file));
                b.set_position(resumed_from);
                bar = Some(b);
            }
        }
        Event::Progress { done, total } => match &bar {
            Some(b) => b.set_position(done),
            None => {
                let tenth = codellama_server::status::percent(done, total) / 10;
                if last_tenth != Some(tenth) {
                    last_tenth = Some(tenth);
                    eprintln!(
                        "downloading {name}: {}% ({})",
                        tenth * 10,
                        codellama_server::status::of_mb(done, total)
                    );
                }
            }
        },
    };
    let source = codellama_engine::resolve::resolve_with(
        spec,
        &mut Hooks {
            on_event: &mut on_event,
            cancel: &codellama_engine::CancelToken::new(),
        },
    );
    if let Some(b) = bar {
        b.finish();
    }
    Ok(source?.path().display().to_string())
}

#[derive(Args, Debug)]
pub struct CompleteArgs {
    /// PATH:LINE:COLUMN, 1-based; the column counts characters.
    pub location: String,
    #[command(flatten)]
    pub model: ModelFlags,
    #[command(flatten)]
    pub suggestion: SuggestionFlags,
    /// Seed for sampling when the temperature is above 0.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// No post-processing, no structure-aware stopping (only EOS/EOT and --max-tokens stop) and no token healing.
    #[arg(long)]
    pub raw: bool,
    /// Print one JSON object: completion, prompt_ids, generated_ids, template, timings...
    #[arg(long)]
    pub json: bool,
}

pub fn complete(args: CompleteArgs) -> Result<()> {
    let (path, line, column) = parse_location(&args.location)?;
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let cursor = cursor_offset(&text, line, column)?;
    let config = config([args.model.given(), args.suggestion.given()].concat())?;
    let (engine, load_ms) = start(&config, config.model.clone())?;
    let builder = PromptBuilder::new(engine.tokenizer().clone(), &config.prompt_config())?;
    let mut req = config.completion_request(&text[..cursor], &text[cursor..]);
    req.path = Some(path.display().to_string());
    req.raw = args.raw;
    req.sampling.seed = args.seed;
    // One request, nothing cached and no later keystroke to grow a window for: the whole window.
    req.cold_prompt_tokens = Some(0);
    let c = completion::complete(&engine, &builder, &req)?;
    if args.json {
        let mut v = serde_json::to_value(&c)?;
        v["timings"]["load_ms"] = json!(load_ms);
        v["model"] = json!(engine.info().name);
        println!("{}", serde_json::to_string(&v)?);
    } else {
        println!("{}", c.completion);
    }
    Ok(())
}

/// `PATH:LINE:COLUMN`; the path itself may contain colons.
pub fn parse_location(loc: &str) -> Result<(PathBuf, usize, usize)> {
    let mut parts = loc.rsplitn(3, ':');
    let (col, line, path) = match (parts.next(), parts.next(), parts.next()) {
        (Some(c), Some(l), Some(p)) if !p.is_empty() => (c, l, p),
        _ => bail!("expected PATH:LINE:COLUMN (1-based), got {loc:?}"),
    };
    let num = |s: &str, what: &str| -> Result<usize> {
        match s.parse::<usize>() {
            Ok(n) if n >= 1 => Ok(n),
            _ => bail!("{what} must be a number from 1, got {s:?} in {loc:?}"),
        }
    };
    Ok((PathBuf::from(path), num(line, "LINE")?, num(col, "COLUMN")?))
}

/// Byte offset of 1-based `line` and character `column` (one past the last character is allowed).
pub fn cursor_offset(text: &str, line: usize, column: usize) -> Result<usize> {
    let mut start = 0;
    for _ in 1..line {
        match text[start..].find('\n') {
            Some(i) => start += i + 1,
            None => bail!(
                "line {line} is past the end of the file ({} lines)",
                text.lines().count().max(1)
            ),
        }
    }
    let line_text = text[start..].split('\n').next().unwrap_or("");
    let line_text = line_text.strip_suffix('\r').unwrap_or(line_text);
    let chars = line_text.chars().count();
    if column > chars + 1 {
        bail!("column {column} is past the end of line {line} ({chars} characters)");
    }
    Ok(start
        + line_text
            .char_indices()
            .nth(column - 1)
            .map_or(line_text.len(), |(i, _)| i))
}

/// Options of the code-action commands (`explain`, `generate`).
#[derive(Args, Debug, Clone)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelFlags,
    #[command(flatten)]
    pub action: ActionFlags,
    /// Print one JSON object: the Markdown, the text and edit, the model's raw answer, timings...
    #[arg(long)]
    pub json: bool,
}

impl ChatArgs {
    /// Loads the chat model (`--chat-model`, else `--model`); the configuration comes with it.
    fn start(&self) -> Result<(Engine, u64, Config)> {
        let config = config([self.model.given(), self.action.given()].concat())?;
        let model = config.chat_model.clone().or_else(|| config.model.clone());
        let (engine, load_ms) = start(&config, model)?;
        Ok((engine, load_ms, config))
    }
}

#[derive(Args, Debug)]
pub struct ExplainArgs {
    /// PATH:START-END (1-based lines, inclusive), or PATH:LINE.
    pub location: String,
    #[command(flatten)]
    pub chat: ChatArgs,
}

/// `explain PATH:START-END`: prints the explanation as Markdown (`--json`: with the comment block and
/// the edit that inserts it above the lines).
pub fn explain(args: ExplainArgs) -> Result<()> {
    let (path, first, last) = parse_line_range(&args.location)?;
    let text = read_source(&path)?;
    let lines = actions::source::Lines::new(&text);
    let count = lines.visible_count();
    if last > count {
        bail!(
            "lines {first}-{last} are outside {} ({count} lines)",
            path.display()
        );
    }
    let selection = lines.start(first - 1)..lines.range(last - 1).end;
    let task = actions::Task::Explain { selection };
    run_action(&args.chat, &path, &text, task, |out| out.markdown.clone())
}

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// PATH:LINE (1-based): the code goes below this line.
    #[arg(long, value_name = "PATH:LINE")]
    pub file: String,
    /// What to generate. Without it, the comment at LINE is the instruction.
    pub instruction: Option<String>,
    #[command(flatten)]
    pub chat: ChatArgs,
}

/// `generate --file PATH:LINE "instruction"`: prints the code as it would be inserted below LINE
/// (`--json`: with the edit).
pub fn generate(args: GenerateArgs) -> Result<()> {
    let (path, line, last) = parse_line_range(&args.file)?;
    if line != last {
        bail!("--file takes PATH:LINE, got {:?}", args.file);
    }
    let text = read_source(&path)?;
    let task = match args.instruction {
        Some(instruction) => actions::Task::Generate {
            instruction,
            target: actions::Target::BelowLine(line - 1),
        },
        None => actions::Task::GenerateFromComment { line: line - 1 },
    };
    run_action(&args.chat, &path, &text, task, |out| out.text.clone())
}

fn read_source(path: &std::path::Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

fn run_action(
    args: &ChatArgs,
    path: &std::path::Path,
    text: &str,
    task: actions::Task,
    plain: impl Fn(&actions::ActionOutput) -> String,
) -> Result<()> {
    let path_text = path.display().to_string();
    let source = actions::Source::new(text, Some(&path_text), None);
    let (engine, load_ms, config) = args.start()?;
    let out = actions::run(
        &engine,
        &source,
        actions::ActionRequest::new(task, config.action_max_tokens),
    )?;
    if !args.json {
        println!("{}", plain(&out));
        return Ok(());
    }
    let mut v = serde_json::to_value(&out)?;
    if let Some(edit) = &out.edit {
        v["edit"] = edit_json(text, edit);
    }
    v["timings"]["load_ms"] = json!(load_ms);
    v["model"] = json!(engine.info().name);
    println!("{}", serde_json::to_string(&v)?);
    Ok(())
}

/// An edit with 1-based line and column (characters) positions beside the byte offsets.
fn edit_json(text: &str, edit: &actions::Edit) -> serde_json::Value {
    let pos = |offset: usize| {
        let lines = actions::source::Lines::new(text);
        let line = lines.line_of(offset);
        let column = text[lines.start(line)..offset].chars().count();
        json!({"line": line + 1, "column": column + 1})
    };
    json!({
        "start": edit.start,
        "end": edit.end,
        "new_text": edit.new_text,
        "range": {"start": pos(edit.start), "end": pos(edit.end)},
    })
}

/// `PATH:START-END` or `PATH:LINE` (1-based, inclusive); the path itself may contain colons.
pub fn parse_line_range(loc: &str) -> Result<(PathBuf, usize, usize)> {
    let Some((path, lines)) = loc.rsplit_once(':').filter(|(p, _)| !p.is_empty()) else {
        bail!("expected PATH:START-END or PATH:LINE (1-based), got {loc:?}");
    };
    let num = |s: &str| -> Result<usize> {
        match s.trim().parse::<usize>() {
            Ok(n) if n >= 1 => Ok(n),
            _ => bail!("line numbers start at 1, got {s:?} in {loc:?}"),
        }
    };
    let (first, last) = match lines.split_once('-') {
        Some((a, b)) => (num(a)?, num(b)?),
        None => (num(lines)?, num(lines)?),
    };
    if first > last {
        bail!("the range {first}-{last} ends before it starts in {loc:?}");
    }
    Ok((PathBuf::from(path), first, last))
}

#[derive(Args, Debug)]
pub struct TokenizeArgs {
    pub text: String,
    #[command(flatten)]
    pub model: ModelFlags,
    /// Print a JSON array.
    #[arg(long)]
    pub json: bool,
}

pub fn tokenize(args: TokenizeArgs) -> Result<()> {
    let config = config(args.model.given())?;
    let tokenizer = load_tokenizer(config.model.as_deref())?;
    let ids = tokenizer.encode_plain(&args.text);
    if args.json {
        println!("{}", serde_json::to_string(&ids)?);
    } else {
        for id in ids {
            let piece = tokenizer.token_piece(id).unwrap_or("");
            println!("{id:>6} -> {piece:?}");
        }
    }
    Ok(())
}

/// The tokenizer alone, without loading weights.
fn load_tokenizer(model: Option<&str>) -> Result<Arc<codellama_engine::Tokenizer>> {
    use codellama_engine::resolve::{resolve, ModelSource};
    use codellama_engine::{EngineError, Tokenizer};
    let (path, tokenizer) = match resolve(model)? {
        ModelSource::Gguf(p) => {
            let f = codellama_engine::gguf::GgufFile::open(&p)?;
            let t = Tokenizer::from_gguf(&f.content);
            (p, t)
        }
        ModelSource::HfDir(d) => {
            let p = d.join("tokenizer.json");
            let t = Tokenizer::from_file(&p);
            (p, t)
        }
    };
    let tokenizer = tokenizer.map_err(|error| EngineError::Tokenizer { path, error })?;
    Ok(Arc::new(tokenizer))
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelFlags,
    /// Prompt lengths for the prefill measurements.
    #[arg(long, value_delimiter = ',', default_value = "128,512,1024,2048")]
    pub prefill: Vec<usize>,
    /// Context depths for the decode measurements.
    #[arg(long, value_delimiter = ',', default_value = "0,512")]
    pub decode_depth: Vec<usize>,
    /// Tokens generated per decode measurement.
    #[arg(long, default_value_t = 64)]
    pub decode_tokens: usize,
    /// Repetitions of each measurement (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    #[arg(long)]
    pub json: bool,
    /// llama.cpp's server for the side-by-side figures (default: $LLAMA_SERVER, the cache that
    /// scripts/fetch-llama-server fills, or PATH).
    #[arg(long)]
    pub llama_server: Option<PathBuf>,
    /// Measure only our engine.
    #[arg(long)]
    pub no_llama: bool,
    /// Instead of the synthetic workload: speculative decoding off and with prompt lookup (with
    /// `--draft-model`, also the draft model alone and both), on holes cut from these code files
    /// (comma-separated), `--decode-tokens` tokens each.
    #[arg(long, value_delimiter = ',')]
    pub code: Vec<PathBuf>,
    /// As `--code`, on the holes of HumanEval infilling problems instead: single-line, multi-line,
    /// random-span, random-span-light or a path to a .jsonl(.gz) file of them.
    #[arg(long, conflicts_with = "code")]
    pub humaneval: Option<String>,
    /// Holes per file for `--code`; for `--humaneval`, problems spread over the set (0: all).
    #[arg(long, default_value_t = 8)]
    pub points: usize,
}

pub fn bench(args: BenchArgs) -> Result<()> {
    use crate::bench::{self, DecodeBound, LlamaServer, Workload};
    if !args.code.is_empty() || args.humaneval.is_some() {
        return bench_speculation(args);
    }
    let workload = Workload {
        prefill: args.prefill.clone(),
        decode_depth: args.decode_depth.clone(),
        decode_tokens: args.decode_tokens,
        repeat: args.repeat,
    };
    let mut config = config(args.model.given())?;
    config.context_window = config.context_window.max(workload.context_needed());
    let context = config.context_window;
    // Before anything is loaded: the probe's buffer is gone before the engine's memory is counted.
    // With the thread count the engine will take.
    let threads = config
        .threads
        .unwrap_or_else(codellama_engine::default_threads);
    let read_at_start = bench::read_bandwidth(threads);
    let (engine, load_ms) = start(&config, config.model.clone())?;
    let info = engine.info().clone();
    let kv_type = config.kv_cache_type.kv_type();
    let cfg = &info.config;
    let kv_values = cfg.n_layer * cfg.n_head_kv * cfg.head_dim * info.context_window;
    let kv_per_position = 2 * kv_type.bytes(cfg.n_layer * cfg.n_head_kv * cfg.head_dim) as u64;
    let binary = if args.no_llama {
        None
    } else {
        args.llama_server.clone().or_else(bench::find_llama_server)
    };
    // llama.cpp's server runs beside our engine, so that the two take turns sample by sample.
    let rss_before_client = bench::rss_mb(None);
    let server = match &binary {
        Some(bin) => {
            // The same cache type on both sides (llama.cpp quantizes its cache only with flash attention).
            let kv = kv_type.name();
            let extra: &[&str] = match kv_type {
                KvType::F16 => &[],
                KvType::Q8_0 => &["-ctk", kv, "-ctv", kv, "-fa", "on"],
            };
            let server = LlamaServer::start(bin, &info.path, info.threads, context, extra)?;
            let backend = server.backend(&info.path)?;
            Some((server, backend))
        }
        None => None,
    };
    let llama_cpp_client_mb = match (&server, rss_before_client, bench::rss_mb(None)) {
        (Some(_), Some(before), Some(after)) => (after - before).max(0.0),
        _ => 0.0,
    };
    let mut engines: Vec<(&str, &dyn codellama_engine::Backend)> = vec![("ours", &engine)];
    if let Some((_, backend)) = &server {
        engines.push(("llama.cpp", backend));
    }
    let mut figures = bench::measure(&engines, &workload)?.into_iter();
    let ours = figures.next().context("no figures of ours")?;
    let llama_cpp = figures.next();
    let peak_rss_mb = bench::peak_rss_mb(None).map(|mb| mb - llama_cpp_client_mb);
    let llama_cpp_peak_rss_mb = server.as_ref().and_then(|(s, _)| s.peak_rss_mb());
    drop(server);
    drop(engine);
    let report = bench::Report {
        model: info.name.clone(),
        path: info.path.clone(),
        file_size: info.file_size,
        threads: info.threads,
        load_ms,
        peak_rss_mb,
        llama_cpp_client_mb,
        llama_cpp_peak_rss_mb,
        kv_cache_type: kv_type.name(),
        kv_cache_mb: 2.0 * kv_type.bytes(kv_values) as f64 / 1e6,
        context_window: info.context_window,
        ours,
        llama_cpp,
        llama_cpp_binary: binary,
        decode_bound: DecodeBound::new(
            &info.path,
            kv_per_position,
            [read_at_start, bench::read_bandwidth(info.threads)],
        )
        .map_err(|e| eprintln!("no decode bound: {e:#}"))
        .ok(),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        report.print();
    }
    Ok(())
}

/// `bench --code` and `bench --humaneval`: speculative decoding off and with each source of drafts, on
/// real code.
fn bench_speculation(args: BenchArgs) -> Result<()> {
    let holes = match &args.humaneval {
        Some(name) => {
            crate::bench::humaneval_holes(&crate::eval::dataset_path(name)?, args.points)?
        }
        None => crate::bench::file_holes(&args.code, args.points)?,
    };
    let config = config(args.model.given())?;
    let (engine, load_ms) = start(&config, config.model.clone())?;
    let info = engine.info().clone();
    let draft = match engine.draft() {
        Some(Err(e)) => bail!("{e}"),
        Some(Ok(draft)) => Some(draft.clone()),
        None => None,
    };
    let rss_mb = crate::bench::peak_rss_mb(None);
    let builder = PromptBuilder::new(engine.tokenizer().clone(), &config.prompt_config())?;
    let modes = crate::bench::speculation_modes(draft.is_some());
    let figures =
        crate::bench::measure_speculation(&engine, &builder, &holes, args.decode_tokens, &modes)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&figures)?);
    } else {
        let rss = rss_mb.map_or_else(String::new, |mb| format!(", peak RSS {mb:.0} MB"));
        println!(
            "model {}, {} threads, load {load_ms} ms{rss}",
            info.name, info.threads
        );
        if let Some(d) = draft {
            println!(
                "draft model {} ({} MB), its load {} ms of those",
                d.name,
                d.file_size / 1_000_000,
                d.load_ms
            );
        }
        figures.print();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        assert_eq!(
            parse_location("a/b.py:3:5").unwrap(),
            (PathBuf::from("a/b.py"), 3, 5)
        );
        assert_eq!(
            parse_location("C:/x.py:1:1").unwrap().0,
            PathBuf::from("C:/x.py")
        );
        assert!(parse_location("x.py:0:1").is_err());
        assert!(parse_location("x.py:3").is_err());
    }

    #[test]
    fn line_ranges() {
        assert_eq!(
            parse_line_range("a/b.py:3-5").unwrap(),
            (PathBuf::from("a/b.py"), 3, 5)
        );
        assert_eq!(
            parse_line_range("C:/x.rs:7").unwrap(),
            (PathBuf::from("C:/x.rs"), 7, 7)
        );
        assert!(parse_line_range("x.py:0-2").is_err());
        assert!(parse_line_range("x.py:5-2").is_err());
        assert!(parse_line_range("x.py").is_err());
    }

    #[test]
    fn cursor_offsets_count_characters() {
        let text = "héllo\r\nwörld\n";
        assert_eq!(cursor_offset(text, 1, 1).unwrap(), 0);
        assert_eq!(cursor_offset(text, 1, 3).unwrap(), 3);
        assert_eq!(cursor_offset(text, 1, 6).unwrap(), 6);
        assert_eq!(cursor_offset(text, 2, 2).unwrap(), 9);
        assert!(cursor_offset(text, 1, 8).is_err());
        assert!(cursor_offset(text, 9, 1).is_err());
    }
}

/// What `eval` scores.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvalTask {
    /// HumanEval infilling through our completion pipeline and, in the same run, llama.cpp's `/infill`.
    Infill,
    /// The `generate` code action on HumanEval's signatures and docstrings.
    Generate,
    /// Cross-file holes cut from the Rust files of a folder (`--dataset DIR`, default `src`, this
    /// checkout's own code when run from its root), answered under each `--context-budgets` value.
    Crossfile,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelFlags,
    #[command(flatten)]
    pub suggestion: SuggestionFlags,
    #[arg(long, value_enum, default_value = "infill")]
    pub task: EvalTask,
    /// Comma-separated: single-line, multi-line, random-span, random-span-light, humaneval, or paths to
    /// .jsonl(.gz) files; for crossfile, folders of Rust files. Default: single-line (infill), humaneval
    /// (generate), src (crossfile).
    #[arg(long, value_delimiter = ',')]
    pub dataset: Vec<String>,
    /// Evaluate N problems of each dataset, spread evenly over it (0: all).
    #[arg(long, default_value_t = 0)]
    pub limit: usize,
    /// Score by exact match only (do not run the tests with Python).
    #[arg(long)]
    pub no_exec: bool,
    /// llama.cpp's server for the side-by-side infilling figures (default: $LLAMA_SERVER, the cache that
    /// scripts/fetch-llama-server fills, or PATH).
    #[arg(long)]
    pub llama_server: Option<PathBuf>,
    /// Score only our engine.
    #[arg(long)]
    pub no_llama: bool,
    /// Lift both engines' stop-at-a-line-break time limits (ours: 1 s after the first line; llama.vscode's
    /// t_max_predict_ms: 500 ms), so that the figures do not depend on the machine's speed.
    #[arg(long)]
    pub no_time_limit: bool,
    /// Crossfile: the values of the `context_tokens` setting compared, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "0,1024")]
    pub context_budgets: Vec<usize>,
    /// Print the summary as JSON on stdout (and every answer with --verbose); progress goes to stderr.
    #[arg(long)]
    pub json: bool,
    #[arg(long)]
    pub verbose: bool,
}

pub fn eval(args: EvalArgs) -> Result<()> {
    use crate::bench::{find_llama_server, LlamaServer};
    use crate::eval::{self, llama_vscode::LlamaVscode, EngineRun, Infiller, Ours, Scoring};
    let datasets = match (args.dataset.is_empty(), args.task) {
        (false, _) => args.dataset.clone(),
        (true, EvalTask::Infill) => vec!["single-line".to_string()],
        (true, EvalTask::Generate) => vec!["humaneval".to_string()],
        (true, EvalTask::Crossfile) => vec!["src".to_string()],
    };
    let config = config([args.model.given(), args.suggestion.given()].concat())?;
    // Unless --max-tokens says otherwise: llama.vscode's n_predict for holes, room for a whole function
    // for generate.
    let max_tokens = match (&args.suggestion.max_tokens, args.task) {
        (Some(_), _) => config.max_tokens,
        (None, EvalTask::Infill | EvalTask::Crossfile) => 128,
        (None, EvalTask::Generate) => 512,
    };
    let (engine, _) = start(&config, config.model.clone())?;
    let info = engine.info().clone();
    let builder = PromptBuilder::new(engine.tokenizer().clone(), &config.prompt_config())?;
    let scoring = Scoring {
        execute: !args.no_exec,
        timeout: std::time::Duration::from_secs(10),
    };
    let binary = (args.task == EvalTask::Infill && !args.no_llama)
        .then(|| args.llama_server.clone().or_else(find_llama_server))
        .flatten();
    let server = match &binary {
        Some(bin) => Some(LlamaServer::start(
            bin,
            &info.path,
            info.threads,
            info.context_window,
            crate::eval::llama_vscode::SERVER_ARGS,
        )?),
        None => None,
    };
    let mut postprocess = codellama_text::postprocess::Config::default();
    if args.no_time_limit {
        postprocess.time_budget = std::time::Duration::MAX;
    }
    let mut results = Vec::new();
    for name in &datasets {
        let path = eval::dataset_path(name)?;
        let progress = |engine: &str, i: usize, total: usize, r: &eval::CaseResult| {
            let yes_no = |b: Option<bool>| match b {
                Some(true) => "yes",
                Some(false) => "no",
                None => "-",
            };
            eprintln!(
                "[{}/{total}] {name} {engine} {} exact={} passed={} {:.0} ms{}",
                i + 1,
                r.task_id,
                yes_no(r.exact),
                yes_no(r.passed),
                r.ms,
                r.error
                    .as_deref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            );
        };
        let runs: Vec<EngineRun> = match args.task {
            EvalTask::Infill => {
                let problems = eval::spread(eval::load(&path)?, args.limit);
                let total = problems.len();
                let mut ours = Ours {
                    engine: &engine,
                    builder: &builder,
                    max_tokens,
                    postprocess: postprocess.clone(),
                    token_healing: config.token_healing,
                    speculative: config.speculative,
                    temperature: config.temperature,
                };
                let mut theirs = server
                    .as_ref()
                    .map(|s| LlamaVscode::new(&s.url, max_tokens, !args.no_time_limit))
                    .transpose()?;
                let mut engines: Vec<&mut dyn Infiller> = vec![&mut ours];
                if let Some(t) = theirs.as_mut() {
                    engines.push(t);
                }
                eval::run(&mut engines, &problems, &scoring, &mut |e, i, r| {
                    progress(e, i, total, r)
                })?
            }
            EvalTask::Generate => {
                let problems: Vec<eval::generate::Problem> =
                    eval::spread(eval::load(&path)?, args.limit);
                let total = problems.len();
                vec![eval::generate::run(
                    &engine,
                    &problems,
                    max_tokens,
                    &scoring,
                    &mut |i, r| progress("generate", i, total, r),
                )?]
            }
            EvalTask::Crossfile => {
                let problems = eval::spread(eval::crossfile::problems(&path)?, args.limit);
                let total = problems.len();
                let builders = args
                    .context_budgets
                    .iter()
                    .map(|&tokens| {
                        let cfg = codellama_text::prompt::PromptConfig {
                            extra_context_tokens: tokens,
                            ..config.prompt_config()
                        };
                        let builder = PromptBuilder::new(engine.tokenizer().clone(), &cfg)?;
                        Ok((format!("context_tokens={tokens}"), builder))
                    })
                    .collect::<Result<Vec<_>>>()?;
                eval::crossfile::run(
                    &engine,
                    &builders,
                    &problems,
                    max_tokens,
                    &postprocess,
                    &mut |e, i, r| progress(e, i, total, r),
                )?
            }
        };
        results.push((name.clone(), path, runs));
    }
    if args.json {
        let datasets: Vec<_> = results
            .iter()
            .map(|(name, path, runs)| {
                let engines: Vec<_> = runs
                    .iter()
                    .map(|r| {
                        let mut v = serde_json::to_value(&r.summary).unwrap_or_default();
                        if args.verbose {
                            v["results"] = serde_json::to_value(&r.results).unwrap_or_default();
                        }
                        v
                    })
                    .collect();
                json!({"dataset": name, "path": path, "engines": engines})
            })
            .collect();
        let v = json!({
            "model": info.name,
            "path": info.path,
            "threads": info.threads,
            "context_window": info.context_window,
            "template": builder.template().name(),
            "max_tokens": max_tokens,
            "time_limit": !args.no_time_limit,
            "token_healing": config.token_healing,
            "llama_server": binary,
            "datasets": datasets,
        });
        println!("{}", serde_json::to_string(&v)?);
        return Ok(());
    }
    println!(
        "{} ({}), {} threads, context {}, template {}, at most {max_tokens} tokens{}{}",
        info.name,
        info.path.display(),
        info.threads,
        info.context_window,
        builder.template().name(),
        if args.no_time_limit {
            ", no time limits"
        } else {
            ""
        },
        if !config.token_healing {
            ", no token healing"
        } else {
            ""
        }
    );
    match (&binary, args.task) {
        (Some(bin), _) => println!("llama.cpp: {} (/infill as llama.vscode calls it)", bin.display()),
        (None, EvalTask::Infill) => println!(
            "llama.cpp: not run (--no-llama, or no llama-server found: see scripts/fetch-llama-server)"
        ),
        (None, EvalTask::Generate | EvalTask::Crossfile) => {}
    }
    println!(
        "{:<20} {:>8}  {:<24} {:>8} {:>8} {:>10} {:>11}",
        "dataset", "problems", "engine", "exact", "pass@1", "similarity", "ms/problem"
    );
    let pct = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{:.1}%", x * 100.0));
    for (name, _, runs) in &results {
        for r in runs {
            let s = &r.summary;
            println!(
                "{:<20} {:>8}  {:<24} {:>8} {:>8} {:>10} {:>11.0}",
                name,
                s.cases,
                s.engine,
                pct(s.exact_match),
                pct(s.pass_at_1),
                pct(s.similarity),
                s.mean_ms
            );
        }
    }
    Ok(())
}
