//! The `codellama-lsp` binary: argument parsing only; every command is a function of the library.

use std::process::ExitCode;

use clap::{Args as ClapArgs, Parser, Subcommand};

use codellama_lsp::cli;
use codellama_lsp::lsp_bench;
use codellama_server::config::{Config, ConfigArgs};

#[derive(Parser)]
#[command(
    name = "codellama-lsp",
    version,
    about = "Code Llama inside your editor: a language server with in-process inference",
    long_about = "Code Llama inside your editor: a language server with in-process inference.\n\n\
                  With no command (or `serve`) it speaks LSP on stdin/stdout for VS Code, Neovim and any \
                  other LSP client. The other commands run the same pipeline from the shell."
)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Server settings when no command is given (see `serve --help`).
    #[command(flatten)]
    config: ConfigArgs,
    /// Accepted for clients that ask for LSP on stdio explicitly (vscode-languageclient adds it); stdio is the
    /// only transport.
    #[arg(long, global = true)]
    stdio: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Speak LSP on stdin/stdout (the default). Every setting is also a flag here; environment variables
    /// CODELLAMA_LSP_<KEY> set them too, and the editor's settings override both.
    Serve(ConfigArgs),
    /// Print the server's settings: key, type, default, environment variable, description.
    Config {
        /// As the Markdown table of the README (docs/configuration.md).
        #[arg(long)]
        markdown: bool,
    },
    /// Complete the code at PATH:LINE:COLUMN (1-based) and print the suggestion.
    Complete(cli::CompleteArgs),
    /// Explain lines START-END of a file (PATH:START-END, 1-based, inclusive) with the chat model.
    Explain(cli::ExplainArgs),
    /// Generate code from an instruction (or from the comment at LINE) and print it as it would be
    /// inserted below PATH:LINE.
    Generate(cli::GenerateArgs),
    /// Print the token ids of TEXT (no BOS), like llama.cpp's llama-tokenize.
    Tokenize(cli::TokenizeArgs),
    /// Measure prefill and decode speed of the in-process engine, or with --lsp the keystroke latency over LSP.
    Bench(BenchCommand),
    /// Score on HumanEval: infilling beside llama.cpp's /infill, or the generate code action (exact match,
    /// pass@1 when Python is available, time per problem).
    Eval(cli::EvalArgs),
}

#[derive(ClapArgs)]
struct BenchCommand {
    /// Measure keystroke latency over LSP instead: type into a source file one character at a time against
    /// this binary, one inline completion per character (uses --model, --threads, --context-window, --json).
    #[arg(long)]
    lsp: bool,
    #[command(flatten)]
    lsp_args: lsp_bench::keystrokes::LspBenchArgs,
    #[command(flatten)]
    engine: cli::BenchArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match args.command {
        None => serve(&args.config, &ConfigArgs::default()),
        Some(Command::Serve(flags)) => serve(&args.config, &flags),
        Some(Command::Config { markdown }) => {
            print_config(markdown);
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Complete(a)) => cli::complete(a).map(|()| ExitCode::SUCCESS),
        Some(Command::Explain(a)) => cli::explain(a).map(|()| ExitCode::SUCCESS),
        Some(Command::Generate(a)) => cli::generate(a).map(|()| ExitCode::SUCCESS),
        Some(Command::Tokenize(a)) => cli::tokenize(a).map(|()| ExitCode::SUCCESS),
        Some(Command::Eval(a)) => cli::eval(a).map(|()| ExitCode::SUCCESS),
        Some(Command::Bench(b)) if b.lsp => {
            let settings = lsp_bench::keystrokes::LspBenchSettings {
                model: b.engine.model.given(),
                json: b.engine.json,
                llama_server: if b.engine.no_llama {
                    None
                } else {
                    b.engine
                        .llama_server
                        .clone()
                        .or_else(codellama_lsp::bench::find_llama_server)
                },
            };
            lsp_bench::keystrokes::run_lsp_cli(&b.lsp_args, &settings).map(|()| ExitCode::SUCCESS)
        }
        Some(Command::Bench(b)) => cli::bench(b.engine).map(|()| ExitCode::SUCCESS),
    };
    result.unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
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
    codellama_server::serve(config)
}

fn print_config(markdown: bool) {
    if markdown {
        print!("{}", codellama_server::config::docs::markdown());
        return;
    }
    for f in Config::fields() {
        println!("{} ({}, default {}): {}", f.key, f.ty, f.default, f.doc);
    }
}
