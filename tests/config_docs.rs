//! The settings references are generated from crates/server/src/config.rs (`codellama_server::config::docs`): docs/configuration.md,
//! the VS Code extension's settings in editors/vscode/package.json and the Neovim help. A checked-in file that
//! differs fails here; `UPDATE_GENERATED=1 cargo test --release --test config_docs` rewrites them.

mod common;

use std::process::Command;

use codellama_server::config::docs::{self, Generated};
use codellama_server::config::Config;

fn repo_path(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(name)
}

/// The first differing line, for the failure message.
fn first_difference(current: &str, expected: &str) -> String {
    let mut lines = current.lines().zip(expected.lines()).enumerate();
    match lines.find(|(_, (a, b))| a != b) {
        Some((i, (a, b))) => format!("line {}:\n  checked in: {a}\n  generated:  {b}", i + 1),
        None => format!(
            "{} lines checked in, {} generated",
            current.lines().count(),
            expected.lines().count()
        ),
    }
}

#[test]
fn generated_settings_references_are_up_to_date() {
    let update = std::env::var_os("UPDATE_GENERATED").is_some();
    let mut stale = Vec::new();
    for part in docs::generated() {
        let path = repo_path(part.path);
        let current = std::fs::read_to_string(&path).expect(part.path);
        let expected = part.splice(&current).unwrap_or_else(|e| panic!("{e}"));
        if current == expected {
            continue;
        }
        if update {
            std::fs::write(&path, &expected).expect(part.path);
        } else {
            stale.push(format!(
                "{}: {}",
                part.path,
                first_difference(&current, &expected)
            ));
        }
    }
    assert!(
        stale.is_empty(),
        "out of date with crates/server/src/config.rs (run `UPDATE_GENERATED=1 cargo test --release --test config_docs`):\n{}",
        stale.join("\n")
    );
}

#[test]
fn package_json_stays_valid_json_with_every_setting() {
    let text = std::fs::read_to_string(repo_path("editors/vscode/package.json")).unwrap();
    let package: serde_json::Value = serde_json::from_str(&text).expect("package.json is JSON");
    let properties = &package["contributes"]["configuration"]["properties"];
    for f in Config::fields() {
        assert!(
            properties[f.vscode_name()].is_object(),
            "{} missing",
            f.vscode_name()
        );
    }
}

#[test]
fn a_changed_setting_is_caught() {
    // What the first test relies on: a checked-in file with a stale default differs from the generated one.
    let part = docs::generated().remove(0);
    let current = std::fs::read_to_string(repo_path(part.path)).unwrap();
    let stale = current.replacen("| `64` |", "| `128` |", 1);
    assert_ne!(stale, current, "the table shows a default of 64");
    assert!(
        part.splice(&stale).unwrap() == current,
        "the generated part replaces the stale one"
    );
    let broken = Generated {
        begin: "<!-- no such marker -->",
        ..part
    };
    assert!(broken
        .splice(&current)
        .unwrap_err()
        .contains("no such marker"));
}

#[test]
fn the_binary_prints_the_same_table() {
    let out = Command::new(env!("CARGO_BIN_EXE_codellama-lsp"))
        .args(["config", "--markdown"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap(), docs::markdown());
}

#[test]
fn the_readme_points_to_the_reference() {
    let readme = std::fs::read_to_string(repo_path("README.md")).unwrap();
    assert!(readme.contains("(docs/configuration.md)"));
}

#[test]
fn the_shell_commands_show_the_server_defaults() {
    // `complete` used to default to 128 tokens and a 4096-token window, the server to 64 and 2048.
    let defaults = Config::default();
    for command in ["complete", "eval"] {
        let out = Command::new(env!("CARGO_BIN_EXE_codellama-lsp"))
            .args([command, "--help"])
            .output()
            .unwrap();
        let help = String::from_utf8(out.stdout).unwrap();
        for shown in [
            format!("[default: {}]", defaults.max_tokens),
            format!("[default: {}]", defaults.context_window),
        ] {
            assert!(
                help.contains(&shown),
                "{command} --help lacks {shown}:\n{help}"
            );
        }
    }
}

#[test]
fn complete_reads_the_environment_as_the_server_does() {
    // `CODELLAMA_LSP_THREADS=auto` worked for `serve` and was refused by `complete` (clap wanted a number).
    let dir = std::env::temp_dir().join(format!("codellama-config-docs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let source = dir.join("a.py");
    std::fs::write(&source, "def add(a, b):\n    return").unwrap();
    let model = common::codellama_fixture("tiny-codellama-gqa.gguf");
    let run = |threads: &str| {
        Command::new(env!("CARGO_BIN_EXE_codellama-lsp"))
            .args(["complete", &format!("{}:2:11", source.display()), "--json"])
            .args(["--model", &model.display().to_string(), "--max-tokens", "2"])
            .env("CODELLAMA_LSP_THREADS", threads)
            .output()
            .unwrap()
    };
    let out = run("auto");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("CODELLAMA_LSP"), "{err}");
    // A bad value is reported the server's way, and the default stays.
    let out = run("many");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("CODELLAMA_LSP_THREADS: threads: expected a non-negative integer"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
