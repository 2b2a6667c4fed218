//! The `codellama-lsp` command: a thin shell over the library.

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use codellama_lsp::config::{Config, ConfigArgs};
use codellama_lsp::server;

#[derive(Parser)]
#[command(
    name = "codellama-lsp",
    version,
    about = "A language server that runs Code Llama in-process"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    config: ConfigArgs,
}

#[derive(Subcommand)]
enum Cmd {
    /// Speak LSP on stdin/stdout (what happens without a subcommand too).
    Serve(ConfigArgs),
    /// Print the configuration reference.
    Config {
        /// As a Markdown table (the README's).
        #[arg(long)]
        markdown: bool,
    },
    /// Benchmarks. With --lsp: keystroke latency over LSP against this binary.
    Bench(BenchArgs),
}

#[derive(Args)]
struct BenchArgs {
    /// Type into a source file over LSP, one inline completion per character.
    #[arg(long)]
    lsp: bool,
    /// The model (path or Hub reference); default: the small offline model.
    #[arg(long)]
    model: Option<String>,
    /// CPU threads for the model.
    #[arg(long)]
    threads: Option<usize>,
    /// The file to type into (default examples/typing/inventory.py).
    #[arg(long)]
    file: Option<std::path::PathBuf>,
    /// Most characters to type.
    #[arg(long, default_value_t = 200)]
    chars: usize,
    /// More server settings as KEY=VALUE (e.g. fim_order=psm), repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Print the figures as JSON.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None => serve(&cli.config, &ConfigArgs::default()),
        Some(Cmd::Serve(args)) => serve(&cli.config, &args),
        Some(Cmd::Config { markdown }) => {
            if markdown {
                print!("{}", Config::markdown_table());
            } else {
                for f in Config::fields() {
                    println!("{} ({}, default {}): {}", f.key, f.ty, f.default, f.doc);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(Cmd::Bench(args)) => bench(args),
    };
    result.unwrap_or_else(|e| {
        eprintln!("codellama-lsp: {e:#}");
        ExitCode::FAILURE
    })
}

fn serve(top: &ConfigArgs, sub: &ConfigArgs) -> anyhow::Result<ExitCode> {
    let (mut config, mut applied) = Config::from_env_and_args(top);
    applied
        .problems
        .extend(config.apply_pairs(sub.given(), "command line").problems);
    for p in &applied.problems {
        eprintln!("codellama-lsp: {p}");
    }
    server::serve(config)
}

fn bench(args: BenchArgs) -> anyhow::Result<ExitCode> {
    if !args.lsp {
        anyhow::bail!("only the LSP keystroke benchmark is built in so far: pass --lsp");
    }
    let exe = std::env::current_exe()?;
    let mut opts = server::bench::LspBenchOptions::new(
        exe,
        args.file.unwrap_or_else(server::bench::default_file),
    );
    opts.chars = args.chars;
    if let Some(m) = args.model {
        opts.settings.insert("model".into(), m.into());
    }
    if let Some(t) = args.threads {
        opts.settings.insert("threads".into(), t.into());
    }
    for kv in args.set {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--set wants KEY=VALUE, got {kv:?}"))?;
        opts.settings.insert(k.trim().into(), v.trim().into());
    }
    let report = server::bench::run_lsp_bench(&opts)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{}", report.render());
    }
    Ok(ExitCode::SUCCESS)
}
