//! Helpers for the tests that drive the real `codellama-lsp` binary over stdio.
#![allow(dead_code)]

use std::process::Command;
use std::time::Duration;

use codellama_test_support::LspProcess;
use codellama_text::documents::{Document, Pos, PositionEncoding};
use serde_json::{json, Value};

pub const T: Duration = Duration::from_secs(30);
/// Long enough for a model to load on a busy 2-core machine.
pub const LOAD: Duration = Duration::from_secs(300);

/// The server binary with `serve` and extra flags. Logs at debug level go to stderr (kept by the client).
pub fn spawn(flags: &[&str]) -> LspProcess {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_codellama-lsp"));
    cmd.arg("serve").args(flags);
    cmd.env("CODELLAMA_LSP_LOG_LEVEL", "debug");
    let s = LspProcess::spawn(cmd).expect("the server binary starts");
    s.answer("workspace/applyEdit", json!({"applied": true}));
    s
}

/// Client capabilities offering these position encodings (none: the field is left out). Like Neovim's and
/// VS Code's: code action literals whose `edit` is resolved lazily, versioned workspace edits, and
/// `workspace/applyEdit` (answered `{applied: true}` by [`spawn`]'s client).
pub fn capabilities(encodings: &[&str]) -> Value {
    let mut caps = json!({
        "window": {"workDoneProgress": true},
        "workspace": {"applyEdit": true, "workspaceEdit": {"documentChanges": true}},
        "textDocument": {
            "synchronization": {"didSave": true},
            "completion": {"completionItem": {"snippetSupport": false}},
            "inlineCompletion": {},
            "codeAction": {
                "codeActionLiteralSupport": {"codeActionKind": {"valueSet": ["", "quickfix", "refactor", "source"]}},
                "resolveSupport": {"properties": ["edit"]},
                "dataSupport": true,
            },
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

pub fn pos(line: u32, character: u32) -> Value {
    json!({"line": line, "character": character})
}

pub fn range((l1, c1): (u32, u32), (l2, c2): (u32, u32)) -> Value {
    json!({"start": pos(l1, c1), "end": pos(l2, c2)})
}

/// `textDocument/codeAction` for a range (no `only` filter).
pub fn code_actions(s: &mut LspProcess, uri: &str, range: Value) -> Vec<Value> {
    let result = s
        .call(
            "textDocument/codeAction",
            json!({"textDocument": {"uri": uri}, "range": range, "context": {"diagnostics": []}}),
            T,
        )
        .unwrap_or_else(|e| panic!("{e}\nserver log:\n{}", s.stderr()));
    result.as_array().cloned().unwrap_or_default()
}

/// The listed action with this title.
pub fn action_titled<'a>(actions: &'a [Value], title: &str) -> &'a Value {
    actions
        .iter()
        .find(|a| a["title"] == title)
        .unwrap_or_else(|| panic!("no {title:?} in {actions:#?}"))
}

/// Sends a request and waits (long: it may run the model) for its whole response: `Ok(result)` or `Err(error)`.
pub fn request(s: &mut LspProcess, method: &str, params: Value) -> Result<Value, Value> {
    let id = s.request(method, params);
    let msg = s
        .response(&json!(id), LOAD)
        .unwrap_or_else(|e| panic!("{e}\nserver log:\n{}", s.stderr()));
    match msg.get("error") {
        Some(e) => Err(e.clone()),
        None => Ok(msg.get("result").cloned().unwrap_or(Value::Null)),
    }
}

pub fn resolve(s: &mut LspProcess, action: &Value) -> Result<Value, Value> {
    request(s, "codeAction/resolve", action.clone())
}

pub fn execute(s: &mut LspProcess, command: &str, args: Value) -> Result<Value, Value> {
    request(
        s,
        "workspace/executeCommand",
        json!({"command": command, "arguments": args}),
    )
}

/// The text edits a `WorkspaceEdit` makes to `uri` (from `documentChanges` or `changes`), and the document
/// version they are for (`documentChanges` only).
pub fn edits_for(edit: &Value, uri: &str) -> (Vec<Value>, Option<i64>) {
    if let Some(changes) = edit["documentChanges"].as_array() {
        let change = changes
            .iter()
            .find(|c| c["textDocument"]["uri"] == uri)
            .unwrap_or_else(|| panic!("no change to {uri} in {edit}"));
        let edits = change["edits"].as_array().cloned().unwrap_or_default();
        return (edits, change["textDocument"]["version"].as_i64());
    }
    let edits = edit["changes"][uri].as_array().cloned().unwrap_or_default();
    (edits, None)
}

/// `text` with LSP text edits applied (positions in `encoding`), in the order given (later ones first when they
/// do not overlap, as LSP requires them not to).
pub fn apply_edits(text: &str, edits: &[Value], encoding: &str) -> String {
    let enc = PositionEncoding::from_lsp_name(encoding).expect("a known encoding");
    let mut doc = Document::new(text, "plaintext", 0);
    let p = |v: &Value| {
        Pos::new(
            v["line"].as_u64().unwrap() as u32,
            v["character"].as_u64().unwrap() as u32,
        )
    };
    let mut edits: Vec<&Value> = edits.iter().collect();
    edits.sort_by_key(|e| std::cmp::Reverse(p(&e["range"]["start"])));
    for e in edits {
        let r = &e["range"];
        doc.edit(
            Some((p(&r["start"]), p(&r["end"]))),
            e["newText"].as_str().unwrap(),
            enc,
        );
    }
    doc.text()
}

/// The error code of a JSON-RPC error object.
pub fn code_of(error: &Value) -> i64 {
    error["code"].as_i64().unwrap_or(0)
}
