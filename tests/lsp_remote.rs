//! The language server on a remote engine, selected by configuration (`backend`, `remote`): the real binary over
//! stdio in front of llama.cpp's real server (see `common::llama_server`; `LLAMA_SERVER` or
//! `scripts/fetch-llama-server`), with the small SmolLM2 model on both sides.
//!
//! - An inline completion through the llama.cpp backend and through the OpenAI-compatible one is the suggestion
//!   the in-process engine makes for the same document (greedy sampling, the same prompt ids).
//! - An engine that is down when the server starts is connected to later, when completions ask for it; an engine
//!   that goes away and comes back is reported once each way, and the server keeps answering meanwhile.

mod common;
mod lsp_support;

use std::time::{Duration, Instant};

use codellama_lsp::server::stdio_client::LspProcess;
use common::llama_server::{free_port, serial, Server};
use lsp_support::*;
use serde_json::{json, Value};

const URI: &str = "file:///tmp/codellama-remote/add.py";
const TEXT: &str = "def add(a, b):\n    \n\nprint(add(1, 2))\n";

/// The server with these flags, a document open, and the model (or engine) ready.
fn start(flags: &[&str]) -> LspProcess {
    let mut all = vec!["--max-tokens", "32", "--context-window", "2048"];
    all.extend_from_slice(flags);
    let mut s = spawn(&all);
    s.initialize(capabilities(&["utf-16"]), Value::Null)
        .unwrap();
    open(&mut s, URI, "python", TEXT);
    s
}

fn suggestion(s: &mut LspProcess) -> Option<String> {
    items(&inline(s, URI, 1, 4))
        .first()
        .map(|i| i["insertText"].as_str().unwrap().to_string())
}

/// The `remote` setting for an engine at `url`. The tokenizer comes from the engine: llama.cpp names its model
/// file, readable on this machine.
fn remote(url: &str) -> String {
    json!({"url": url, "retries": 1, "connect_timeout_ms": 1000}).to_string()
}

fn shown(s: &mut LspProcess, needle: &str) -> Vec<String> {
    s.drain();
    s.received
        .iter()
        .filter(|m| m["method"] == "window/showMessage")
        .filter_map(|m| m["params"]["message"].as_str())
        .filter(|m| m.contains(needle))
        .map(str::to_string)
        .collect()
}

#[test]
fn an_inline_completion_through_llama_cpp_and_openai_is_the_local_engines() {
    let _g = serial();
    let model = common::small_model().display().to_string();
    let mut local = start(&["--model", &model, "--threads", "2"]);
    local
        .wait_ready(LOAD)
        .unwrap_or_else(|e| panic!("{e}\n{}", local.stderr()));
    let want = suggestion(&mut local).expect("the local engine suggests something");
    finish(local);

    let engine = Server::start(&[]);
    for backend in ["llamacpp", "openai"] {
        let settings = remote(&engine.url());
        let mut s = start(&["--backend", backend, "--remote", &settings]);
        let ready = s
            .wait_ready(LOAD)
            .unwrap_or_else(|e| panic!("{backend}: {e}\n{}", s.stderr()));
        eprintln!("{backend}: {}", ready["params"]);
        let got = suggestion(&mut s);
        eprintln!("{backend}: {got:?}; local: {want:?}");
        assert_eq!(
            got.as_deref(),
            Some(want.as_str()),
            "{backend}\n{}",
            s.stderr()
        );
        // Code actions go to the same engine (SmolLM2 is an Instruct model).
        let markdown = execute(
            &mut s,
            "codellama.explain",
            json!([{"uri": URI, "range": range((0, 0), (0, 14))}]),
        )
        .unwrap_or_else(|e| panic!("{backend}: {e}\n{}", s.stderr()));
        assert!(!markdown["markdown"].as_str().unwrap().trim().is_empty());
        finish(s);
    }
}

#[test]
fn an_engine_down_at_startup_is_connected_later_and_outages_are_reported_once() {
    let _g = serial();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut s = start(&["--backend", "llama.cpp", "--remote", &remote(&url)]);

    // Down at startup: an error status and one message, and completions answer empty at once.
    let status = s
        .wait_for("codellama/status", LOAD, |p| p["state"] == "error")
        .unwrap_or_else(|e| panic!("{e}\n{}", s.stderr()));
    let message = status["params"]["message"].as_str().unwrap();
    assert!(
        message.contains("could not connect") && message.contains(&url),
        "{message}"
    );
    assert_eq!(shown(&mut s, "could not connect").len(), 1);
    let t = Instant::now();
    assert_eq!(suggestion(&mut s), None);
    assert!(t.elapsed() < Duration::from_secs(5));

    // The engine comes up: a later completion connects (at most every 5 s), quietly until it works.
    let mut engine = Server::start_on(port, &[]);
    let until = Instant::now() + Duration::from_secs(90);
    let first = loop {
        if let Some(text) = suggestion(&mut s) {
            break text;
        }
        assert!(Instant::now() < until, "never connected\n{}", s.stderr());
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(!first.is_empty());
    s.wait_for("window/showMessage", T, |p| {
        p["message"]
            .as_str()
            .is_some_and(|m| m.contains("connected to"))
    })
    .unwrap();
    assert_eq!(shown(&mut s, "could not connect").len(), 1, "no repeat");

    // The engine goes away: completions answer empty, and the failure is shown once.
    // (The text after the cursor changes, so the typing-ahead cache cannot answer.)
    engine.kill();
    change(&mut s, URI, 2, (3, 0), (3, 0), "#");
    for _ in 0..3 {
        assert_eq!(items(&inline(&mut s, URI, 1, 4)), Vec::<Value>::new());
    }
    s.wait_for("window/showMessage", T, |p| {
        p["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("Code Llama: cannot reach"))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", s.stderr()));
    // (The message at startup said "could not connect ...: cannot reach ...".)
    assert_eq!(
        shown(&mut s, "Code Llama: cannot reach").len(),
        1,
        "shown once"
    );

    // And comes back: answers again, which is said once.
    let _engine = Server::start_on(port, &[]);
    change(&mut s, URI, 3, (3, 0), (3, 0), "#");
    let until = Instant::now() + Duration::from_secs(60);
    while items(&inline(&mut s, URI, 1, 4)).is_empty() {
        assert!(
            Instant::now() < until,
            "no answer after the engine came back"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    s.wait_for("window/showMessage", T, |p| {
        p["message"]
            .as_str()
            .is_some_and(|m| m.contains("answers again"))
    })
    .unwrap();
    eprintln!("messages shown: {:#?}", shown(&mut s, ""));
    finish(s);
}
