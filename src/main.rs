//! The `codellama-lsp` binary: argument parsing only; every command is a function of the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use codellama_lsp::cli;

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
}

#[derive(Subcommand)]
enum Command {
    /// Complete the code at PATH:LINE:COLUMN (1-based) and print the suggestion.
    Complete(cli::CompleteArgs),
    /// Explain lines START-END of a file (PATH:START-END, 1-based, inclusive) with the chat model.
    Explain(cli::ExplainArgs),
    /// Generate code from an instruction (or from the comment at LINE) and print it as it would be
    /// inserted below PATH:LINE.
    Generate(cli::GenerateArgs),
    /// Print the token ids of TEXT (no BOS), like llama.cpp's llama-tokenize.
    Tokenize(cli::TokenizeArgs),
    /// Measure prefill and decode speed of the in-process engine.
    Bench(cli::BenchArgs),
    /// Score completions on HumanEval infilling (exact match, and pass@1 when Python is available).
    Eval(cli::EvalArgs),
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match args.command {
        Some(Command::Complete(a)) => cli::complete(a),
        Some(Command::Explain(a)) => cli::explain(a),
        Some(Command::Generate(a)) => cli::generate(a),
        Some(Command::Tokenize(a)) => cli::tokenize(a),
        Some(Command::Bench(a)) => cli::bench(a),
        Some(Command::Eval(a)) => cli::eval(a),
        None => {
            eprintln!("the language server is not wired yet; see --help");
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
