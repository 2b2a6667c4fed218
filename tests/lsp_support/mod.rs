//! Helpers for the tests that drive the real `codellama-lsp` binary over stdio.
#![allow(dead_code)]

use std::process::Command;
use std::time::Duration;

use codellama_lsp::server::stdio_client::LspProcess;
use serde_json::{json, Value};

pub const T: Duration = Duration::from_secs(30);
/// Long enough for a model to load on a busy 2-core machine.
pub const LOAD: Duration = Duration::from_secs(300);

/// The server binary with `serve` and extra flags. Logs at debug level go to stderr (kept by the client).
pub fn spawn(flags: &[&str]) -> LspProcess {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_codellama-lsp"));
    cmd.arg("serve").args(flags);
    cmd.env("CODELLAMA_LSP_LOG_LEVEL", "debug");
    LspProcess::spawn(cmd).expect("the server binary starts")
}

/// Client capabilities offering these position encodings (none: the field is left out).
pub fn capabilities(encodings: &[&str]) -> Value {
    let mut caps = json!({
        "window": {"workDoneProgress": true},
        "textDocument": {
            "synchronization": {"didSave": true},
            "completion": {"completionItem": {"snippetSupport": false}},
            "inlineCompletion": {},
        },
    });
    if !encodings.is_empty() {
        caps["general"] = json!({"positionEncodings": encodings});
    }
    caps
}

pub fn open(s: &mut LspProcess, uri: &str, language: &str, text: &str) {
    s.notify(
        "textDocument/didOpen",
        json!({"textDocument": {"uri": uri, "languageId": language, "version": 1, "text": text}}),
    );
}

/// One incremental change replacing `(l1,c1)-(l2,c2)` with `text`.
pub fn change(
    s: &mut LspProcess,
    uri: &str,
    version: i32,
    (l1, c1): (u32, u32),
    (l2, c2): (u32, u32),
    text: &str,
) {
    s.notify(
        "textDocument/didChange",
        json!({
            "textDocument": {"uri": uri, "version": version},
            "contentChanges": [{"range": {"start": {"line": l1, "character": c1}, "end": {"line": l2, "character": c2}}, "text": text}],
        }),
    );
}

/// The server's copy of a document (`codellama/debugDocument`).
pub fn text_of(s: &mut LspProcess, uri: &str) -> Value {
    s.call(
        "codellama/debugDocument",
        json!({"textDocument": {"uri": uri}}),
        T,
    )
    .expect("debugDocument answers")
}

pub fn inline_params(uri: &str, line: u32, character: u32) -> Value {
    json!({"textDocument": {"uri": uri}, "position": {"line": line, "character": character}, "context": {"triggerKind": 1}})
}

pub fn inline(s: &mut LspProcess, uri: &str, line: u32, character: u32) -> Value {
    s.call(
        "textDocument/inlineCompletion",
        inline_params(uri, line, character),
        LOAD,
    )
    .unwrap_or_else(|e| panic!("{e}\nserver log:\n{}", s.stderr()))
}

pub fn completion(s: &mut LspProcess, uri: &str, line: u32, character: u32) -> Value {
    s.call(
        "textDocument/completion",
        json!({"textDocument": {"uri": uri}, "position": {"line": line, "character": character}}),
        LOAD,
    )
    .unwrap_or_else(|e| panic!("{e}\nserver log:\n{}", s.stderr()))
}

/// The items of an inline completion result.
pub fn items(result: &Value) -> Vec<Value> {
    result["items"].as_array().cloned().unwrap_or_default()
}

/// Shuts down, exits, and checks the process ended with status 0 and never panicked.
pub fn finish(mut s: LspProcess) {
    let status = s
        .shutdown(T)
        .unwrap_or_else(|e| panic!("{e}\nserver log:\n{}", s.stderr()));
    assert!(status.success(), "exit status {status:?}\n{}", s.stderr());
    assert_no_panic(&s);
}

pub fn assert_no_panic(s: &LspProcess) {
    let log = s.stderr();
    assert!(!log.contains("panicked"), "the server panicked:\n{log}");
}
