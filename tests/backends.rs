//! Remote backends against a real engine: llama.cpp's server, started here on a loopback port with the
//! small SmolLM2 model, driven through the llama.cpp backend (`/completion`) and the OpenAI-compatible
//! backend (llama.cpp's `/v1/completions`). No mock of an engine that works.
//!
//! The server binary comes from `LLAMA_SERVER` or from the cache that `scripts/fetch-llama-server` fills;
//! without either, these tests fail and say which command to run. Tests take a lock so that only one of
//! them drives a server at a time (the machines are small), and every server is killed when its test ends,
//! whether it passes or panics.
//!
//! Failures a real engine cannot be made to produce on demand (keep-alives forever, a 100 MB line, a bogus
//! chunk size, an HTML error page) come from the scripted engine of `common::scripted_engine`, a mock that
//! writes exactly the bytes of each misbehaviour.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use codellama_engine::{
    Backend, Engine, EngineError, Event, GenerateRequest, Generation, LoadOptions, Outcome,
    RemoteErrorKind, StopReason,
};
use codellama_remote::{
    Notice, PromptFormat, RemoteBackend, RemoteConfig, RemoteKind, UNKNOWN_TOKEN_ID,
};
use codellama_text::completion::{self, CompletionRequest};
use codellama_text::prompt::{PromptBuilder, PromptConfig};

use common::llama_server::{free_port, serial, Server};
use common::scripted_engine::{
    answer, answer_keeping_alive, bytes, flood, openai_event, sse_head, trickle, Conn, Reply,
    ScriptedEngine,
};

const API_KEY: &str = "sk-correct-horse-battery-staple";

// ---------------------------------------------------------------------------------------------------
// Helpers

fn config(kind: RemoteKind, url: &str) -> RemoteConfig {
    let mut cfg = RemoteConfig::new(kind, url);
    cfg.retries = 1;
    cfg.connect_timeout = Duration::from_millis(1000);
    cfg.first_token_timeout = Duration::from_secs(60);
    cfg
}

fn connect(kind: RemoteKind, server: &Server) -> RemoteBackend {
    RemoteBackend::connect(config(kind, &server.url()))
        .unwrap_or_else(|e| panic!("connect {kind:?}: {e}\n{}", server.log_tail()))
}

fn local_engine() -> Engine {
    let opts = LoadOptions {
        model: Some(common::small_model().display().to_string()),
        context_window: Some(2048),
        threads: Some(2),
        ..LoadOptions::default()
    };
    Engine::start(opts, Box::new(|_| {})).expect("the local engine starts")
}

fn greedy(backend: &dyn Backend, prompt: &[u32], n: usize) -> Outcome {
    let req = GenerateRequest::new(prompt.to_vec(), n);
    wait(backend.submit(req), Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("generation: {e}"))
}

/// Collects a generation's outcome, bounded in time; checks that the streamed tokens (those not taken
/// from the channel before) add up to it.
fn wait(mut gen: Generation, within: Duration) -> Result<Outcome, EngineError> {
    let until = Instant::now() + within;
    let mut streamed = String::new();
    loop {
        let left = until.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no outcome within {within:?}");
        match recv_timeout(&mut gen, left) {
            Some(Event::Token { text, .. }) => streamed.push_str(&text),
            Some(Event::Finished(r)) => {
                if let Ok(o) = &r {
                    assert!(
                        o.text.contains(streamed.as_str()) || streamed.starts_with(&o.text),
                        "streamed {streamed:?} vs outcome {:?}",
                        o.text
                    );
                }
                return r;
            }
            None => panic!("the event channel closed without an outcome"),
        }
    }
}

fn recv_timeout(gen: &mut Generation, d: Duration) -> Option<Event> {
    let until = Instant::now() + d;
    loop {
        match gen.events.try_recv() {
            Ok(ev) => return Some(ev),
            Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => return None,
            Err(tokio::sync::mpsc::error::TryRecvError::Empty) => {
                assert!(Instant::now() < until, "no event within {d:?}");
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }
}

fn first_difference<T: PartialEq>(a: &[T], b: &[T]) -> Option<usize> {
    (0..a.len().max(b.len())).find(|&i| a.get(i) != b.get(i))
}

/// Prompts for the comparisons: plain code, a longer code excerpt, and a chat turn that ends with the
/// model's end-of-turn token.
fn prompts(backend: &dyn Backend) -> Vec<(&'static str, Vec<u32>)> {
    let tok = backend.tokenizer();
    let code = "import json\n\n\ndef load_config(path):\n    \"\"\"Read a JSON configuration file and return it as a dict.\"\"\"\n    with open(path) as f:\n";
    let mut chat = vec![tok.special_id("<|im_start|>").unwrap()];
    chat.extend(tok.encode(
        "user\nWhat is the capital of France? Answer in one word.",
        false,
    ));
    chat.push(tok.special_id("<|im_end|>").unwrap());
    chat.extend(tok.encode("\n", false));
    chat.push(tok.special_id("<|im_start|>").unwrap());
    chat.extend(tok.encode("assistant\n", false));
    vec![
        ("fibonacci", vec![1604, 3987, 46477, 24, 94, 727]),
        ("load_config", tok.encode(code, false)),
        ("chat", chat),
    ]
}

// ---------------------------------------------------------------------------------------------------
// Same text as the in-process engine

#[test]
fn llama_cpp_and_openai_backends_generate_what_the_local_engine_generates() {
    let _g = serial();
    const N: usize = 24;
    let local = local_engine();
    let cases = prompts(&local);
    let local_out: Vec<Outcome> = cases.iter().map(|(_, p)| greedy(&local, p, N)).collect();
    let local_tok = local.tokenizer().clone();
    drop(local);

    let server = Server::start(&[]);
    let llama = connect(RemoteKind::LlamaCpp, &server);
    let openai = connect(RemoteKind::OpenAi, &server);
    assert!(
        openai.sends_token_ids(),
        "llama.cpp's OpenAI route takes token ids"
    );
    let mut text_cfg = config(RemoteKind::OpenAi, &server.url());
    text_cfg.prompt_format = PromptFormat::Text;
    let openai_text = RemoteBackend::connect(text_cfg).unwrap();
    assert!(!openai_text.sends_token_ids());
    assert_eq!(llama.info().context_window, 2048);
    assert_eq!(openai.info().context_window, 2048);

    let mut full_matches = 0;
    for ((name, prompt), want) in cases.iter().zip(&local_out) {
        let got = greedy(&llama, prompt, N);
        let got_oai = greedy(&openai, prompt, N);
        let diff = first_difference(&want.generated_ids, &got.generated_ids);
        eprintln!(
            "{name}: local {:?} {:?} | llama.cpp {:?} {:?} (first differing token: {diff:?}) | openai {:?} {:?}",
            want.stop_reason, want.text, got.stop_reason, got.text, got_oai.stop_reason, got_oai.text
        );
        // The OpenAI route runs the same engine: its text is the llama.cpp backend's text.
        assert_eq!(got_oai.text, got.text, "{name}: openai vs llama.cpp");
        assert!(got_oai.generated_ids.is_empty());
        match diff {
            None => {
                assert_eq!(got.text, want.text, "{name}");
                assert_eq!(got.stop_reason, want.stop_reason, "{name}");
                assert_eq!(got.stop_token, want.stop_token, "{name}");
                assert_eq!(got_oai.stop_reason, want.stop_reason, "{name}");
                full_matches += 1;
            }
            Some(i) => {
                // Quantized arithmetic differs between the engines; a near-tie may flip late. The text
                // before the flip must agree.
                assert!(i >= 8, "{name}: the engines diverge at token {i}");
                let prefix = local_tok.decode(&want.generated_ids[..i]);
                assert!(got.text.starts_with(&prefix), "{name}");
            }
        }
    }
    assert!(
        full_matches >= 1,
        "no prompt matched the local engine in full"
    );

    // A text prompt decoded from plain-text ids tokenizes back to the same ids here.
    let (name, prompt) = &cases[0];
    let t = greedy(&openai_text, prompt, N);
    let ids = greedy(&openai, prompt, N);
    assert_eq!(t.text, ids.text, "{name}: text prompt vs id prompt");
}

#[test]
fn a_completion_goes_end_to_end_through_the_remote_backend() {
    let _g = serial();
    let mut req = CompletionRequest::new("def add(a, b):\n    ", "\n\nprint(add(1, 2))\n", 32);
    req.language_id = Some("python".into());
    // Remote engines cannot constrain the first tokens, so they never heal; the local engine runs without
    // healing here to build the very same prompt.
    req.token_healing = false;
    let local = local_engine();
    let builder = PromptBuilder::new(local.tokenizer().clone(), &PromptConfig::default()).unwrap();
    let want = completion::complete(&local, &builder, &req).unwrap();
    drop(local);

    let server = Server::start(&[]);
    for kind in [RemoteKind::LlamaCpp, RemoteKind::OpenAi] {
        let backend = connect(kind, &server);
        let builder =
            PromptBuilder::new(backend.tokenizer().clone(), &PromptConfig::default()).unwrap();
        let got = completion::complete(&backend as &dyn Backend, &builder, &req).unwrap();
        eprintln!(
            "{kind:?}: {:?} ({:?}, {} prompt tokens, {:.0} ms to the first token); local: {:?}",
            got.completion,
            got.stop_reason,
            got.timings.prompt_tokens,
            got.timings.queue_ms + got.timings.prefill_ms,
            want.completion
        );
        assert_eq!(got.prompt_ids, want.prompt_ids);
        assert_eq!(got.completion, want.completion, "{kind:?}");
        assert_eq!(got.stop_reason, want.stop_reason, "{kind:?}");
        assert!(!got.completion.is_empty());
    }
}

// ---------------------------------------------------------------------------------------------------
// Cancellation

#[test]
fn cancelling_closes_the_stream_and_the_engine_stops() {
    let _g = serial();
    // llama.cpp notices a closed connection while it waits (polling once a second) and stops the task at
    // the next batch boundary; small batches make the prompt case observable.
    let server = Server::start(&["-b", "128", "-ub", "128"]);
    let backend = connect(RemoteKind::LlamaCpp, &server);
    let predicted_before = server.metric("llamacpp:tokens_predicted_total", None);

    // During decoding: cancel after a few tokens of a 1500-token request.
    let mut req = GenerateRequest::new(vec![1604, 3987, 46477, 24, 94, 727], 1500);
    req.stop_at_eog = false;
    let cancel = req.cancel.clone();
    let mut gen = backend.submit(req);
    let mut seen = 0;
    while seen < 5 {
        match recv_timeout(&mut gen, Duration::from_secs(60)) {
            Some(Event::Token { id, .. }) => {
                assert_ne!(id, UNKNOWN_TOKEN_ID);
                seen += 1
            }
            other => panic!("expected tokens, got {:?}", other.is_some()),
        }
    }
    assert!(server.slot_busy(None), "the engine is generating");
    cancel.cancel();
    let t = Instant::now();
    let outcome = wait(gen, Duration::from_secs(5)).unwrap();
    let ours = t.elapsed();
    assert_eq!(outcome.stop_reason, StopReason::Cancelled);
    let theirs = server.wait_idle(None, Duration::from_secs(5), Duration::from_millis(20));
    let predicted = server.metric("llamacpp:tokens_predicted_total", None) - predicted_before;
    eprintln!(
        "cancelled while decoding: our side returned in {ours:?} with {} tokens; the engine's slot was idle {theirs:?} later, having predicted {predicted} tokens of 1500",
        outcome.generated_ids.len()
    );
    assert!(ours < Duration::from_millis(500), "{ours:?}");
    assert!(predicted < 100.0, "the engine went on: {predicted} tokens");

    // During the prompt: a long prompt, cancelled before its first token.
    let tok = backend.tokenizer();
    let text = "def f(x):\n    return x * 2 + 1  # a line of code\n".repeat(120);
    let mut long = tok.encode(&text, false);
    long.truncate(1900);
    let predicted_before = server.metric("llamacpp:tokens_predicted_total", None);
    let mut req = GenerateRequest::new(long, 100);
    req.stop_at_eog = false;
    let cancel = req.cancel.clone();
    let gen = backend.submit(req);
    let busy_until = Instant::now() + Duration::from_secs(10);
    while !server.slot_busy(None) {
        assert!(Instant::now() < busy_until, "the engine never started");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(300));
    cancel.cancel();
    let t = Instant::now();
    let outcome = wait(gen, Duration::from_secs(5)).unwrap();
    let ours = t.elapsed();
    assert_eq!(outcome.stop_reason, StopReason::Cancelled);
    assert!(outcome.generated_ids.is_empty());
    let theirs = server.wait_idle(None, Duration::from_secs(30), Duration::from_millis(1500));
    let predicted = server.metric("llamacpp:tokens_predicted_total", None) - predicted_before;
    eprintln!(
        "cancelled during the prompt ({} tokens): our side returned in {ours:?}; the engine's slot was idle {theirs:?} later, having predicted {predicted} tokens of 100",
        1900
    );
    assert!(ours < Duration::from_millis(500), "{ours:?}");
    assert!(theirs < Duration::from_secs(15), "{theirs:?}");
    assert!(predicted <= 2.0, "the engine generated {predicted} tokens");

    // The engine serves the next request normally.
    let next = greedy(&backend, &[1604, 3987, 46477, 24, 94, 727], 4);
    assert_eq!(next.stop_reason, StopReason::MaxTokens);
}

/// As the server does on a keystroke: the running request is cancelled and the newer one queued at once.
#[test]
fn a_request_cancelled_for_a_newer_one_ends_and_the_newer_one_is_served() {
    let _g = serial();
    let server = Server::start(&[]);
    let backend = connect(RemoteKind::LlamaCpp, &server);
    let mut first = GenerateRequest::new(vec![1604, 3987, 46477, 24, 94, 727], 1000);
    first.stop_at_eog = false;
    let mut first = backend.submit(first);
    assert!(matches!(
        recv_timeout(&mut first, Duration::from_secs(60)),
        Some(Event::Token { .. })
    ));
    first.cancel.cancel();
    let second = backend.submit(GenerateRequest::new(vec![1604, 3987, 46477, 24], 3));
    let a = wait(first, Duration::from_secs(5)).unwrap();
    assert_eq!(a.stop_reason, StopReason::Cancelled);
    let b = wait(second, Duration::from_secs(60)).unwrap();
    assert_eq!(b.stop_reason, StopReason::MaxTokens);
    assert_eq!(b.generated_ids.len(), 3);
}

// ---------------------------------------------------------------------------------------------------
// Failures

#[test]
fn an_unreachable_engine_fails_quickly_with_a_clear_message_reported_once() {
    let _g = serial();
    let port = free_port();
    let t = Instant::now();
    let err = RemoteBackend::connect(config(
        RemoteKind::LlamaCpp,
        &format!("http://127.0.0.1:{port}"),
    ))
    .unwrap_err();
    eprintln!("{err} ({:?})", t.elapsed());
    assert_eq!(err.kind(), RemoteErrorKind::Unreachable);
    assert_eq!(
        err.to_string(),
        format!("cannot reach llama.cpp server at http://127.0.0.1:{port}: connection refused (2 attempts); start it or fix `url`")
    );
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());

    // An engine that goes away after connecting: requests fail fast, the failure is reported once, and
    // the recovery once the engine is back.
    let mut server = Server::start(&[]);
    let port = server.port;
    // https to a plain-HTTP engine: the TLS handshake fails, clearly.
    let err = RemoteBackend::connect(config(
        RemoteKind::LlamaCpp,
        &format!("https://127.0.0.1:{port}"),
    ))
    .unwrap_err();
    eprintln!("{err}");
    assert_eq!(err.kind(), RemoteErrorKind::Unreachable);
    assert!(err.to_string().contains("TLS"), "{err}");
    let backend = connect(RemoteKind::LlamaCpp, &server);
    greedy(&backend, &[1604, 3987], 2);
    assert!(backend.take_notice().is_none());
    server.kill();
    for i in 0..3 {
        let t = Instant::now();
        let err = wait(
            backend.submit(GenerateRequest::new(vec![1604, 3987], 2)),
            Duration::from_secs(5),
        )
        .unwrap_err();
        assert_eq!(
            RemoteErrorKind::of(&err),
            Some(RemoteErrorKind::Unreachable),
            "{err}"
        );
        assert!(t.elapsed() < Duration::from_secs(2));
        let notice = backend.take_notice();
        if i == 0 {
            assert!(
                matches!(&notice, Some(Notice::Failing(e)) if e.kind() == RemoteErrorKind::Unreachable),
                "{notice:?}"
            );
        } else {
            assert!(notice.is_none(), "reported again: {notice:?}");
        }
    }
    drop(server);
    let server = Server::start_on(port, &[]);
    greedy(&backend, &[1604, 3987], 2);
    assert!(matches!(backend.take_notice(), Some(Notice::Recovered)));
    assert!(backend.take_notice().is_none());
    drop(server);
}

#[test]
fn an_engine_killed_mid_stream_gives_a_clear_error_and_nothing_hangs() {
    let _g = serial();
    let mut server = Server::start(&[]);
    let backend = connect(RemoteKind::LlamaCpp, &server);
    let mut req = GenerateRequest::new(vec![1604, 3987, 46477, 24, 94, 727], 1500);
    req.stop_at_eog = false;
    let mut gen = backend.submit(req);
    for _ in 0..3 {
        assert!(matches!(
            recv_timeout(&mut gen, Duration::from_secs(60)),
            Some(Event::Token { .. })
        ));
    }
    server.kill();
    let t = Instant::now();
    let err = wait(gen, Duration::from_secs(5)).unwrap_err();
    eprintln!("{err} ({:?} after the kill)", t.elapsed());
    assert_eq!(
        RemoteErrorKind::of(&err),
        Some(RemoteErrorKind::Disconnected),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("llama.cpp server at http://127.0.0.1:"),
        "{msg}"
    );
    assert!(msg.contains("closed the connection"), "{msg}");
    assert!(t.elapsed() < Duration::from_secs(2));
}

#[test]
fn a_wrong_or_missing_api_key_is_unauthorized_and_the_key_never_shows() {
    let _g = serial();
    let server = Server::start(&["--api-key", API_KEY]);
    let dir = std::env::temp_dir().join(format!("codellama-lsp-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let wrong_key = "sk-wrong-key-0123456789";
    std::fs::write(dir.join("wrong"), format!("{wrong_key}\n")).unwrap();
    std::fs::write(dir.join("right"), format!("{API_KEY}\n")).unwrap();

    // Wrong key.
    let mut cfg = config(RemoteKind::LlamaCpp, &server.url());
    cfg.api_key_file = Some(dir.join("wrong"));
    assert!(!format!("{cfg:?}").contains(wrong_key));
    let err = RemoteBackend::connect(cfg).unwrap_err();
    eprintln!("{err}");
    assert_eq!(err.kind(), RemoteErrorKind::Unauthorized);
    assert!(err.to_string().contains("rejected the API key"), "{err}");
    for shown in [err.to_string(), format!("{err:?}")] {
        assert!(
            !shown.contains(wrong_key) && !shown.contains(API_KEY),
            "{shown}"
        );
    }

    // No key.
    let err = RemoteBackend::connect(config(RemoteKind::OpenAi, &server.url())).unwrap_err();
    assert_eq!(err.kind(), RemoteErrorKind::Unauthorized);
    assert!(err.to_string().contains("requires an API key"), "{err}");

    // The right key, from an environment variable and from a file.
    let var = "CODELLAMA_LSP_TEST_LLAMA_KEY";
    std::env::set_var(var, API_KEY);
    let mut cfg = config(RemoteKind::OpenAi, &server.url());
    cfg.api_key_env = Some(var.into());
    let openai = RemoteBackend::connect(cfg).unwrap();
    let mut cfg = config(RemoteKind::LlamaCpp, &server.url());
    cfg.api_key_file = Some(dir.join("right"));
    let llama = RemoteBackend::connect(cfg).unwrap();
    for backend in [&openai, &llama] {
        assert!(!format!("{backend:?}").contains(API_KEY));
        let out = greedy(backend, &[1604, 3987, 46477, 24, 94, 727], 4);
        assert_eq!(out.stop_reason, StopReason::MaxTokens);
    }
    // The engine saw authenticated work.
    assert!(server.metric("llamacpp:tokens_predicted_total", Some(API_KEY)) >= 8.0);
    std::env::remove_var(var);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn the_key_is_not_sent_where_a_redirect_points() {
    let _g = serial();
    // Not an engine: a "proxy" that redirects every request elsewhere, and the elsewhere, which must never
    // be contacted.
    let proxy = TcpListener::bind("127.0.0.1:0").unwrap();
    let elsewhere = TcpListener::bind("127.0.0.1:0").unwrap();
    elsewhere.set_nonblocking(true).unwrap();
    let target = format!(
        "http://127.0.0.1:{}/health",
        elsewhere.local_addr().unwrap().port()
    );
    let url = format!("http://127.0.0.1:{}", proxy.local_addr().unwrap().port());
    let seen = std::thread::spawn(move || {
        let (mut s, _) = proxy.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).unwrap();
        write!(
            s,
            "HTTP/1.1 307 Temporary Redirect\r\nLocation: {target}\r\nContent-Length: 0\r\n\r\n"
        )
        .unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    });
    let dir = std::env::temp_dir().join(format!("codellama-lsp-redirect-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("key"), API_KEY).unwrap();
    let mut cfg = config(RemoteKind::LlamaCpp, &url);
    cfg.api_key_file = Some(dir.join("key"));
    let err = RemoteBackend::connect(cfg).unwrap_err();
    assert_eq!(err.kind(), RemoteErrorKind::BadResponse);
    assert!(
        err.to_string().contains("redirects are not followed"),
        "{err}"
    );
    let request = seen.join().unwrap();
    assert!(request.starts_with("GET /health HTTP/1.1\r\n"), "{request}");
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        elsewhere.accept().is_err(),
        "the redirect target was contacted"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn waiting_is_bounded_by_the_first_token_timeout() {
    let _g = serial();
    // An engine whose only slot is busy: a request waits in its queue past our deadline.
    let server = Server::start(&[]);
    let busy = connect(RemoteKind::LlamaCpp, &server);
    let mut long = GenerateRequest::new(vec![1604, 3987, 46477, 24, 94, 727], 1500);
    long.stop_at_eog = false;
    let long_cancel = long.cancel.clone();
    let mut long = busy.submit(long);
    assert!(matches!(
        recv_timeout(&mut long, Duration::from_secs(60)),
        Some(Event::Token { .. })
    ));
    let mut cfg = config(RemoteKind::LlamaCpp, &server.url());
    cfg.first_token_timeout = Duration::from_millis(1500);
    let waiting = RemoteBackend::connect(cfg).unwrap();
    let t = Instant::now();
    let err = wait(
        waiting.submit(GenerateRequest::new(vec![1604, 3987], 2)),
        Duration::from_secs(10),
    )
    .unwrap_err();
    let took = t.elapsed();
    eprintln!("{err} ({took:?})");
    assert_eq!(
        RemoteErrorKind::of(&err),
        Some(RemoteErrorKind::Timeout),
        "{err}"
    );
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_millis(3000),
        "{took:?}"
    );
    long_cancel.cancel();
    assert_eq!(
        wait(long, Duration::from_secs(5)).unwrap().stop_reason,
        StopReason::Cancelled
    );

    // A server that accepts connections and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://127.0.0.1:{}", silent.local_addr().unwrap().port());
    let mut cfg = config(RemoteKind::OpenAi, &url);
    cfg.first_token_timeout = Duration::from_millis(800);
    let t = Instant::now();
    let err = RemoteBackend::connect(cfg).unwrap_err();
    eprintln!("{err} ({:?})", t.elapsed());
    assert_eq!(err.kind(), RemoteErrorKind::Timeout);
    assert!(t.elapsed() < Duration::from_secs(3));
    drop(silent);
}

// ---------------------------------------------------------------------------------------------------
// Tokenizer sources

#[test]
fn the_tokenizer_comes_from_the_engine_a_file_and_a_mismatch_is_refused() {
    let _g = serial();
    let server = Server::start(&[]);
    // From the engine: llama.cpp names its model file, which is readable here.
    let from_engine = connect(RemoteKind::LlamaCpp, &server);
    assert!(from_engine
        .info()
        .device
        .contains(&common::small_model().display().to_string()));
    // From a file named in the settings.
    let mut cfg = config(RemoteKind::LlamaCpp, &server.url());
    cfg.tokenizer = Some(common::small_model().display().to_string());
    let from_file = RemoteBackend::connect(cfg).unwrap();
    let text = "fn main() { println!(\"héllo\"); }";
    assert_eq!(
        from_engine.tokenizer().encode(text, false),
        from_file.tokenizer().encode(text, false)
    );
    // Another model's tokenizer is refused.
    let mut cfg = config(RemoteKind::LlamaCpp, &server.url());
    cfg.tokenizer = Some(
        common::codellama_fixture("tiny-codellama-mha.gguf")
            .display()
            .to_string(),
    );
    let err = RemoteBackend::connect(cfg).unwrap_err();
    eprintln!("{err}");
    assert_eq!(err.kind(), RemoteErrorKind::Tokenizer);
    assert!(err.to_string().contains("tiny-codellama-mha.gguf"), "{err}");
}

#[test]
fn bad_requests_are_refused_before_any_network_traffic() {
    let _g = serial();
    let server = Server::start(&[]);
    let backend = connect(RemoteKind::LlamaCpp, &server);
    let vocab = backend.tokenizer().vocab_size() as u32;
    let err = wait(
        backend.submit(GenerateRequest::new(vec![], 4)),
        Duration::from_secs(1),
    )
    .unwrap_err();
    assert!(matches!(err, EngineError::EmptyPrompt));
    let err = wait(
        backend.submit(GenerateRequest::new(vec![1, vocab], 4)),
        Duration::from_secs(1),
    )
    .unwrap_err();
    assert!(matches!(err, EngineError::BadToken { .. }), "{err}");
    let err = wait(
        backend.submit(GenerateRequest::new(vec![1604; 2048], 4)),
        Duration::from_secs(1),
    )
    .unwrap_err();
    assert!(matches!(err, EngineError::PromptTooLong { .. }), "{err}");
    // Stop strings and stop ids work on the stream as in the local engine.
    let mut req = GenerateRequest::new(vec![1604, 3987, 46477, 24, 94, 727], 24);
    req.stop_strings = vec![" ==".into()];
    let out = wait(backend.submit(req), Duration::from_secs(60)).unwrap();
    assert_eq!(out.stop_reason, StopReason::StopString);
    assert!(!out.text.contains(" =="), "{:?}", out.text);
    let first = greedy(&backend, &[1604, 3987, 46477, 24, 94, 727], 3);
    let mut req = GenerateRequest::new(vec![1604, 3987, 46477, 24, 94, 727], 24);
    req.stop_ids = vec![first.generated_ids[1]];
    let out = wait(backend.submit(req), Duration::from_secs(60)).unwrap();
    assert_eq!(out.stop_reason, StopReason::EndOfGeneration);
    assert_eq!(out.stop_token, Some(first.generated_ids[1]));
    assert_eq!(out.generated_ids, first.generated_ids[..1]);
}

// ---------------------------------------------------------------------------------------------------
// Text prompts (engines that take no ids)

#[test]
fn code_llama_fim_ids_become_the_usual_text_form() {
    use codellama_engine::gguf::GgufFile;
    use codellama_remote::prompt_as_text;
    let file = GgufFile::open(&common::codellama_fixture("tiny-codellama-mha.gguf")).unwrap();
    let tok = codellama_engine::Tokenizer::from_gguf(&file.content).unwrap();
    // BOS, <PRE>, "def remove_non_ascii(s: str) -> str:\n    """ ", <SUF>, "\n    return result\n", <MID>
    let psm = [
        1, 32007, 822, 3349, 29918, 5464, 29918, 294, 18869, 29898, 29879, 29901, 851, 29897, 1599,
        851, 29901, 13, 1678, 9995, 29871, 32008, 13, 1678, 736, 1121, 13, 32009,
    ];
    assert_eq!(
        prompt_as_text(&tok, &psm),
        "<PRE> def remove_non_ascii(s: str) -> str:\n    \"\"\"  <SUF>\n    return result\n <MID>"
    );
}

// ---------------------------------------------------------------------------------------------------
// Misbehaving engines: the scripted engine (`common::scripted_engine`), for states a real engine cannot be
// made to produce on demand.

const SCRIPTED_KEY: &str = "QZXJsecretKey0123456789";

/// A backend on the scripted engine: OpenAI-compatible (Ollama with `model`), the tokenizer from the model
/// file, prompts as ids (no probe request), the key from a file.
fn scripted(
    kind: RemoteKind,
    engine: &ScriptedEngine,
    tune: impl FnOnce(&mut RemoteConfig),
) -> RemoteBackend {
    let dir = std::env::temp_dir().join(format!("codellama-lsp-scripted-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("key"), SCRIPTED_KEY).unwrap();
    let mut cfg = config(kind, &engine.url());
    cfg.tokenizer = Some(common::small_model().display().to_string());
    cfg.prompt_format = PromptFormat::Ids;
    cfg.model = Some("scripted".into());
    cfg.retries = 0;
    cfg.api_key_file = Some(dir.join("key"));
    tune(&mut cfg);
    RemoteBackend::connect(cfg).unwrap_or_else(|e| panic!("connect to the scripted engine: {e}"))
}

/// A request that must fail within `within`; its error and how long it took.
fn failure(backend: &RemoteBackend, within: Duration) -> (EngineError, Duration) {
    let t = Instant::now();
    let err = wait(
        backend.submit(GenerateRequest::new(vec![1604, 3987], 8)),
        within,
    )
    .unwrap_err();
    (err, t.elapsed())
}

/// Every prefix of the key of 4 characters or more that appears in `text`.
fn key_prefixes_in(text: &str) -> Vec<&'static str> {
    (4..=SCRIPTED_KEY.len())
        .map(|n| &SCRIPTED_KEY[..n])
        .filter(|p| text.contains(p))
        .collect()
}

/// The scripted engine stands in for an engine that keeps connections alive because it counts the
/// connections it accepts (llama.cpp's server does not say).
#[test]
fn requests_reuse_the_connection_of_an_answer_the_engine_finished() {
    let engine = ScriptedEngine::start(Vec::new(), answer_keeping_alive(&["a", "b"]));
    let backend = scripted(RemoteKind::OpenAi, &engine, |_| {});
    let before = engine.accepted();
    for _ in 0..3 {
        let out = wait(
            backend.submit(GenerateRequest::new(vec![1604, 3987], 8)),
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(out.text, "ab");
    }
    assert_eq!(
        engine.accepted() - before,
        1,
        "three requests, one connection"
    );
}

#[test]
fn keep_alives_and_trickles_do_not_hold_a_request_past_its_timeouts() {
    let ms = Duration::from_millis;
    // Before the first token nothing but keep-alives: comments, events without text, an unfinished line one
    // byte at a time. The first token is due within first_token_timeout of the request, whatever arrives.
    let keep_alives = [
        (
            "comments",
            trickle(Vec::new(), b": ping\n\n".to_vec(), ms(100)),
        ),
        (
            "empty events",
            trickle(Vec::new(), openai_event("", None), ms(100)),
        ),
        (
            "one byte at a time",
            trickle(b"data: {".to_vec(), b" ".to_vec(), ms(100)),
        ),
    ];
    for (name, reply) in keep_alives {
        let engine = ScriptedEngine::start(vec![reply], answer(&["x"]));
        let backend = scripted(RemoteKind::OpenAi, &engine, |c| {
            c.first_token_timeout = ms(1000)
        });
        let (err, took) = failure(&backend, Duration::from_secs(10));
        eprintln!("{name}: {err} ({took:?})");
        assert_eq!(
            RemoteErrorKind::of(&err),
            Some(RemoteErrorKind::Timeout),
            "{name}: {err}"
        );
        assert!(
            err.to_string().contains("waiting for the first token"),
            "{name}: {err}"
        );
        assert!(took >= ms(900) && took < ms(2500), "{name}: {took:?}");
    }
    // After a token, keep-alives do not count either: the next token is due within the same time.
    let engine = ScriptedEngine::start(
        vec![trickle(
            openai_event("a", None),
            b": ping\n\n".to_vec(),
            ms(100),
        )],
        answer(&["x"]),
    );
    let backend = scripted(RemoteKind::OpenAi, &engine, |c| {
        c.first_token_timeout = ms(1000)
    });
    let (err, took) = failure(&backend, Duration::from_secs(10));
    eprintln!("idle after a token: {err} ({took:?})");
    assert_eq!(
        RemoteErrorKind::of(&err),
        Some(RemoteErrorKind::Timeout),
        "{err}"
    );
    assert!(err.to_string().contains("waiting for token 2"), "{err}");
    assert!(took >= ms(900) && took < ms(2500), "{took:?}");
    // Tokens that keep coming, each in time, stop at the whole-request limit.
    let engine = ScriptedEngine::start(
        vec![trickle(Vec::new(), openai_event("a", None), ms(200))],
        answer(&["x"]),
    );
    let backend = scripted(RemoteKind::OpenAi, &engine, |c| {
        c.first_token_timeout = ms(1000);
        c.request_timeout = ms(2000);
    });
    let t = Instant::now();
    let mut req = GenerateRequest::new(vec![1604, 3987], 1_000_000);
    req.stop_at_eog = false;
    let err = wait(backend.submit(req), Duration::from_secs(10)).unwrap_err();
    let took = t.elapsed();
    eprintln!("endless tokens: {err} ({took:?})");
    assert_eq!(
        RemoteErrorKind::of(&err),
        Some(RemoteErrorKind::Timeout),
        "{err}"
    );
    assert!(err.to_string().contains("`request_timeout_ms`"), "{err}");
    assert!(took >= ms(1900) && took < ms(3500), "{took:?}");
}

#[test]
fn a_line_or_event_over_the_limit_is_an_error_that_names_it() {
    const HUNDRED_MB: usize = 100 << 20;
    let a = vec![b'a'; 64 << 10];
    let mut data_line = b"data: ".to_vec();
    data_line.extend(vec![b'b'; 1000]);
    data_line.push(b'\n');
    let cases = [
        // One 100 MB line.
        (
            RemoteKind::OpenAi,
            "a 100 MB SSE line",
            flood(b"data: ".to_vec(), a.clone(), HUNDRED_MB),
        ),
        // `data:` lines that never end their event with a blank line.
        (
            RemoteKind::OpenAi,
            "an endless SSE event",
            flood(Vec::new(), data_line, HUNDRED_MB),
        ),
        // Ollama's NDJSON.
        (
            RemoteKind::Ollama,
            "a 100 MB NDJSON line",
            flood(b"{\"response\":\"".to_vec(), a.clone(), HUNDRED_MB),
        ),
    ];
    for (kind, name, reply) in cases {
        let engine = ScriptedEngine::start(vec![reply], answer(&["x"]));
        let backend = scripted(kind, &engine, |_| {});
        let (err, took) = failure(&backend, Duration::from_secs(30));
        eprintln!(
            "{name}: {err} ({took:?}, {} bytes sent)",
            engine.bytes_written()
        );
        assert_eq!(
            RemoteErrorKind::of(&err),
            Some(RemoteErrorKind::BadResponse),
            "{name}: {err}"
        );
        assert!(err.to_string().contains("1 MiB limit"), "{name}: {err}");
        // Memory stays flat: the client stopped reading at the limit, long before the 100 MB.
        assert!(
            engine.bytes_written() < 16 << 20,
            "{name}: {} bytes",
            engine.bytes_written()
        );
    }
    // A body that claims to be one JSON document is bounded too.
    let mut json_head =
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n{\"x\":\""
            .to_vec();
    json_head.extend(&a);
    let engine = ScriptedEngine::start(
        vec![std::sync::Arc::new(move |c: &mut Conn| {
            c.write(&json_head)?;
            for _ in 0..HUNDRED_MB / (64 << 10) {
                c.write(&vec![b'a'; 64 << 10])?;
            }
            Ok(())
        })],
        answer(&["x"]),
    );
    let backend = scripted(RemoteKind::OpenAi, &engine, |_| {});
    let (err, _) = failure(&backend, Duration::from_secs(30));
    assert!(err.to_string().contains("1 MiB limit"), "{err}");
    assert!(
        engine.bytes_written() < 16 << 20,
        "{} bytes",
        engine.bytes_written()
    );
}

#[test]
fn a_key_quoted_by_the_engine_never_shows_not_even_in_part() {
    // The key at every distance from wherever the message cuts the quoted text: in a malformed event and in
    // an error page.
    let mut script = Vec::new();
    for pad in 0..400 {
        let filler = "a".repeat(pad);
        let mut event = sse_head();
        event.extend(format!("data: {{{filler}{SCRIPTED_KEY}\n\n").into_bytes());
        script.push(bytes(event));
        let page = format!("<html><body>{filler}{SCRIPTED_KEY}</body></html>");
        script.push(bytes(format!(
            "HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\r\n{page}",
            page.len()
        )));
    }
    let n = script.len();
    let engine = ScriptedEngine::start(script, answer(&["x"]));
    let backend = scripted(RemoteKind::OpenAi, &engine, |_| {});
    let mut quoted = 0;
    for i in 0..n {
        let (err, _) = failure(&backend, Duration::from_secs(10));
        let shown = err.to_string();
        assert_eq!(
            RemoteErrorKind::of(&err),
            Some(RemoteErrorKind::BadResponse),
            "{shown}"
        );
        assert_eq!(
            key_prefixes_in(&shown),
            Vec::<&str>::new(),
            "case {i}: {shown}"
        );
        quoted += shown.contains("<redacted>") as usize;
    }
    // The cut fell before, across and after the key.
    assert!(quoted > 0 && quoted < n, "{quoted} of {n} quote the key");
    if let Some(Notice::Failing(e)) = backend.take_notice() {
        assert_eq!(key_prefixes_in(e.message()), Vec::<&str>::new());
    }
}

#[test]
fn failures_during_a_session_are_noticed_once_and_a_cancel_is_no_recovery() {
    let html = "<!DOCTYPE html><html><head><title>500 Internal Server Error</title></head><body><h1>Internal Server Error</h1></body></html>";
    let mut bad_json = sse_head();
    bad_json.extend(b"data: {\"choices\":[{\"text\":\"a\"}]\n\n");
    let failures: Vec<(&str, RemoteErrorKind, &str, Reply)> = vec![
        (
            "HTTP 500 with HTML",
            RemoteErrorKind::BadResponse,
            "HTTP 500",
            bytes(format!("HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\r\n{html}", html.len())),
        ),
        (
            "a redirect",
            RemoteErrorKind::BadResponse,
            "redirects are not followed",
            bytes("HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:9/elsewhere\r\nContent-Length: 0\r\n\r\n"),
        ),
        ("invalid JSON", RemoteErrorKind::BadResponse, "not JSON", bytes(bad_json)),
        (
            "a bogus chunk size",
            RemoteErrorKind::BadResponse,
            "chunk size",
            bytes("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\ndata: x\r\n"),
        ),
        (
            "a server that does not speak HTTP",
            RemoteErrorKind::BadResponse,
            "invalid HTTP version",
            bytes("SSH-2.0-OpenSSH_9.6\r\n"),
        ),
        (
            "a connection closed mid-chunk",
            RemoteErrorKind::Disconnected,
            "closed the connection",
            bytes("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n100\r\ndata: {\"choices\":[{\"te"),
        ),
    ];
    let engine = ScriptedEngine::start(vec![answer(&["a", "b"])], answer(&["x"]));
    let backend = scripted(RemoteKind::OpenAi, &engine, |_| {});
    let ok = wait(
        backend.submit(GenerateRequest::new(vec![1604, 3987], 8)),
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(ok.text, "ab");
    assert!(backend.take_notice().is_none());

    for (round, (name, kind, says, reply)) in failures.into_iter().enumerate() {
        // Failing twice: noticed once.
        engine.then(vec![reply.clone(), reply]);
        for i in 0..2 {
            let (err, _) = failure(&backend, Duration::from_secs(10));
            eprintln!("{name}: {err}");
            assert_eq!(RemoteErrorKind::of(&err), Some(kind), "{name}: {err}");
            assert!(err.to_string().contains(says), "{name}: {err}");
            let notice = backend.take_notice();
            if i == 0 {
                assert!(
                    matches!(&notice, Some(Notice::Failing(e)) if e.kind() == kind),
                    "{name}: {notice:?}"
                );
            } else {
                assert!(notice.is_none(), "{name} noticed again: {notice:?}");
            }
        }
        // A request cancelled while the engine is still silent says nothing about the engine.
        if round == 0 {
            engine.then(vec![engine.hang()]);
            let req = GenerateRequest::new(vec![1604, 3987], 8);
            let cancel = req.cancel.clone();
            let gen = backend.submit(req);
            let until = Instant::now() + Duration::from_secs(10);
            // The first answer, two failures, and now this one.
            while engine.answered() < 4 {
                assert!(
                    Instant::now() < until,
                    "the request never reached the engine"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            cancel.cancel();
            let out = wait(gen, Duration::from_secs(5)).unwrap();
            assert_eq!(out.stop_reason, StopReason::Cancelled);
            engine.wait_closed(1, Duration::from_secs(5));
            let notice = backend.take_notice();
            assert!(
                notice.is_none(),
                "a cancelled request is no recovery: {notice:?}"
            );
        }
        // Working again: said once.
        engine.then(vec![answer(&["c"])]);
        let ok = wait(
            backend.submit(GenerateRequest::new(vec![1604, 3987], 8)),
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(ok.text, "c");
        assert!(
            matches!(backend.take_notice(), Some(Notice::Recovered)),
            "{name}"
        );
        assert!(backend.take_notice().is_none());
    }
}
