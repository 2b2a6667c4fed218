//! The language server on a remote engine, selected by configuration (`backend`, `remote`): the real binary over
//! stdio in front of llama.cpp's real server (see `common::llama_server`; `LLAMA_SERVER` or
//! `scripts/fetch-llama-server`), with the small SmolLM2 model on both sides.
//!
//! - An inline completion through the llama.cpp backend and through the OpenAI-compatible one is the suggestion
//!   the in-process engine makes for the same document (greedy sampling, the same prompt ids).
//! - An engine that is down when the server starts is connected to later, when completions ask for it; an engine
//!   that goes away and comes back is reported once each way, and the server keeps answering meanwhile.
//! - An engine that fails mid-session in ways a real one cannot be made to (the scripted engine of
//!   `common::scripted_engine`, a mock) is reported once, and a cancelled request is no sign of recovery.
//! - A short soak (typing replayed with model switches and a flapping engine) answers every request once.

mod common;
mod lsp_support;

use std::time::{Duration, Instant};

use codellama_lsp::lsp_bench::soak::{run_soak, SoakOptions};
use codellama_test_support::LspProcess;
use common::llama_server::{free_port, serial, Server};
use common::scripted_engine::{answer, bytes, sse_head, ScriptedEngine};
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
    // Remote engines never heal the last token (they cannot constrain the first tokens), so the local
    // engine runs without healing to build the very same prompt.
    let mut local = start(&[
        "--model",
        &model,
        "--threads",
        "2",
        "--token-healing",
        "false",
    ]);
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
    // The message follows the status notification; wait for it before counting.
    s.wait_for("window/showMessage", T, |p| {
        p["message"]
            .as_str()
            .is_some_and(|m| m.contains("could not connect"))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", s.stderr()));
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

/// The messages shown so far with this `window/showMessage` type (1 Error, 3 Info).
fn shown_of_type(s: &mut LspProcess, kind: u64) -> Vec<String> {
    s.drain();
    s.received
        .iter()
        .filter(|m| m["method"] == "window/showMessage" && m["params"]["type"] == kind)
        .filter_map(|m| m["params"]["message"].as_str())
        .map(str::to_string)
        .collect()
}

/// An engine that fails in the middle of a session, in every way the scripted engine can fail (a mock, for the
/// failures a real engine cannot be made to produce on demand): the user sees one error, not one per
/// keystroke; a cancelled request is no sign of recovery; a working request again is; and the API key, which
/// the engine quotes in a malformed event, shows nowhere, not even in part.
/// The proxy the environment names carries the requests: the engine's host name resolves nowhere, and the
/// scripted engine (a mock: no real proxy is installed here) answers as the proxy, which receives each
/// request with its whole URL.
#[test]
fn the_engine_is_reached_through_the_proxy_the_environment_names() {
    // Through the proxy (the scripted engine answers as one) to an engine elsewhere.
    let proxy = ScriptedEngine::start(vec![answer(&["return a + b"])], answer(&["x"]));
    let mut s = serve_with_proxy("http://engine.invalid:8000", &proxy.url());
    assert_eq!(suggestion(&mut s).as_deref(), Some("return a + b"));
    assert!(proxy.accepted() >= 2, "connect and the completion");
    // An engine on this machine is reached directly: the proxy named here listens nowhere.
    let engine = ScriptedEngine::start(vec![answer(&["return a + b"])], answer(&["x"]));
    let dead = format!("http://127.0.0.1:{}", free_port());
    let mut s = serve_with_proxy(&engine.url(), &dead);
    assert_eq!(suggestion(&mut s).as_deref(), Some("return a + b"));
}

/// The server for the OpenAI-style engine at `url`, with `HTTP_PROXY` set to `proxy` and no other proxy
/// variable; initialized and ready.
fn serve_with_proxy(url: &str, proxy: &str) -> LspProcess {
    let settings = json!({
        "url": url,
        "tokenizer": common::small_model().display().to_string(),
        "prompt_format": "ids",
        "retries": 0,
    })
    .to_string();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_codellama-lsp"));
    cmd.args(["serve", "--max-tokens", "32", "--context-window", "2048"])
        .args(["--backend", "openai", "--remote", &settings]);
    for var in [
        "NO_PROXY",
        "no_proxy",
        "ALL_PROXY",
        "all_proxy",
        "http_proxy",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("HTTP_PROXY", proxy);
    let mut s = LspProcess::spawn(cmd).expect("the server binary starts");
    s.initialize(capabilities(&["utf-16"]), Value::Null)
        .unwrap();
    open(&mut s, URI, "python", TEXT);
    s.wait_ready(LOAD)
        .unwrap_or_else(|e| panic!("{e}\n{}", s.stderr()));
    s
}

#[test]
fn engine_failures_during_a_session_are_shown_once_and_a_cancel_is_no_recovery() {
    let key = "QZXJsecretKey0123456789";
    let dir = std::env::temp_dir().join(format!("codellama-lsp-remote-key-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("key"), key).unwrap();
    let html = "<html><body><h1>500 Internal Server Error</h1></body></html>";
    let error_page = bytes(format!(
        "HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\r\n{html}",
        html.len()
    ));
    let mut failures = vec![
        error_page.clone(),
        bytes("HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:9/x\r\nContent-Length: 0\r\n\r\n"),
        bytes("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
        bytes("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n100\r\ndata: {\"ch"),
    ];
    // Malformed events that quote the key over and over: wherever a message cuts the quoted text, it cuts
    // through a copy of the key, and in one of these five at least 4 characters into it.
    for shift in 0..5 {
        let mut leaky = sse_head();
        let text = format!("{{{}{}", "a".repeat(shift), key.repeat(50));
        leaky.extend(format!("data: {text}\n\n").into_bytes());
        failures.push(bytes(leaky));
    }
    let engine = ScriptedEngine::start(vec![answer(&["return a + b"])], error_page);
    let settings = json!({
        "url": engine.url(),
        "tokenizer": common::small_model().display().to_string(),
        "prompt_format": "ids",
        "retries": 0,
        "api_key_file": dir.join("key"),
    })
    .to_string();
    let mut s = start(&["--backend", "openai", "--remote", &settings]);
    s.wait_ready(LOAD)
        .unwrap_or_else(|e| panic!("{e}\n{}", s.stderr()));
    assert_eq!(suggestion(&mut s).as_deref(), Some("return a + b"));
    let mut version = 1;
    let mut edit = |s: &mut LspProcess| {
        // Text after the cursor changes, so that the typing-ahead cache cannot answer.
        version += 1;
        change(s, URI, version, (3, 0), (3, 0), "#");
    };

    let n = failures.len();
    engine.then(failures);
    for _ in 0..n {
        edit(&mut s);
        assert_eq!(suggestion(&mut s), None);
    }
    s.wait_for("window/showMessage", T, |p| p["type"] == 1)
        .unwrap_or_else(|e| panic!("{e}\n{}", s.stderr()));
    let errors = shown_of_type(&mut s, 1);
    assert_eq!(errors.len(), 1, "{errors:#?}\n{}", s.stderr());
    assert!(errors[0].contains("HTTP 500"), "{}", errors[0]);

    // A request cancelled while the engine is silent, then another failure: nothing new is shown.
    engine.then(vec![engine.hang()]);
    edit(&mut s);
    let before = engine.answered();
    let id = s.request("textDocument/inlineCompletion", inline_params(URI, 1, 4));
    let until = Instant::now() + T;
    while engine.answered() == before {
        assert!(
            Instant::now() < until,
            "the request never reached the engine"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    s.cancel(id);
    let answer_to_cancelled = s.response(&json!(id), T).unwrap();
    assert_eq!(answer_to_cancelled["error"]["code"], -32800);
    engine.wait_closed(1, T);
    edit(&mut s);
    assert_eq!(suggestion(&mut s), None);
    let errors = shown_of_type(&mut s, 1);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(shown(&mut s, "answers again"), Vec::<String>::new());

    // Working again: said once.
    engine.then(vec![answer(&["return a - b"])]);
    edit(&mut s);
    assert_eq!(suggestion(&mut s).as_deref(), Some("return a - b"));
    s.wait_for("window/showMessage", T, |p| {
        p["message"]
            .as_str()
            .is_some_and(|m| m.contains("answers again"))
    })
    .unwrap();
    assert_eq!(shown(&mut s, "answers again").len(), 1);
    assert_eq!(shown_of_type(&mut s, 1).len(), 1);

    // The key, or any part of it, in nothing the user or the log sees.
    let everything = format!("{}\n{:?}", s.stderr(), s.received);
    let parts: Vec<&str> = (4..=key.len())
        .map(|n| &key[..n])
        .filter(|p| everything.contains(p))
        .collect();
    assert_eq!(parts, Vec::<&str>::new());
    finish(s);
    std::fs::remove_dir_all(&dir).ok();
}

/// The soak benchmark in short (`bench --lsp --soak`, `server::soak`): 45 s of replayed typing into two real
/// files with SmolLM2, switches to the tiny Code Llama and back, and llama.cpp's server as the engine for a
/// part of it, killed and started again twice. Every request is answered exactly once (a result or the
/// cancelled error), and the resident memory stays bounded.
#[test]
fn a_short_soak_answers_every_request_once_in_bounded_memory() {
    let _g = serial();
    let repo = common::checkout();
    let settings = json!({"context_window": 512, "max_tokens": 16, "threads": 2});
    let opts = SoakOptions {
        server: env!("CARGO_BIN_EXE_codellama-lsp").into(),
        files: vec![
            repo.join("examples/typing/inventory.py"),
            repo.join("crates/text/src/documents.rs"),
        ],
        duration: Duration::from_secs(45),
        seed: 15,
        settings: settings.as_object().unwrap().clone(),
        model: common::small_model(),
        alt_model: common::codellama_fixture("tiny-codellama-mha.gguf"),
        llama_server: Some(common::llama_server::llama_server_binary()),
        sample_every: Duration::from_secs(1),
        timeout: LOAD,
    };
    let report = run_soak(&opts).unwrap();
    eprintln!("{}", report.render());
    let t = &report.tally;
    assert!(t.answered_once(), "{}", t.render());
    assert!(t.requests > 60 && t.pauses > 10, "{}", t.render());
    assert!(t.cancelled > 0 && t.results > 0, "{}", t.render());
    assert!(
        report
            .events
            .iter()
            .filter(|e| e.1.contains("killed"))
            .count()
            == 3
            && !report.events.iter().any(|e| e.1.contains("failed")),
        "{:?}",
        report.events
    );
    // SmolLM2 at the start and the end; one model at a time, with room for the next loading beside it.
    let (_, max) = report.rss_max();
    assert!(
        max < 1024 && report.rss_end() < report.rss_start() + 200,
        "{:?}",
        report.rss_mib
    );
}
