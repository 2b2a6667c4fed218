//! The real binary over stdio, without a model (the model setting names a file that does not exist): the
//! handshake, document sync in every position encoding, bad input, a failed model load, and the ways a
//! session ends. The tests with real models are in `lsp_model.rs`.

mod lsp_support;

use std::time::{Duration, Instant};

use codellama_test_support::frame;
use lsp_support::*;
use serde_json::{json, Value};

const NO_MODEL: &[&str] = &["--model", "/nonexistent/model.gguf"];

#[test]
fn initialize_advertises_capabilities_and_negotiates_the_position_encoding() {
    for (offered, expected) in [
        (&["utf-16", "utf-8"][..], "utf-8"),
        (&["utf-32", "utf-16"][..], "utf-32"),
        (&["utf-16"][..], "utf-16"),
        (&[][..], "utf-16"),
    ] {
        let mut s = spawn(NO_MODEL);
        let t = Instant::now();
        let init = s.initialize(capabilities(offered), Value::Null).unwrap();
        let ms = t.elapsed().as_secs_f64() * 1e3;
        eprintln!("initialize answered in {ms:.1} ms");
        assert!(ms < 2000.0, "initialize took {ms} ms");
        let caps = &init["capabilities"];
        assert_eq!(caps["positionEncoding"], expected, "offered {offered:?}");
        assert_eq!(caps["inlineCompletionProvider"], true);
        assert!(caps["completionProvider"].is_object());
        assert_eq!(caps["textDocumentSync"]["change"], 2, "incremental sync");
        assert_eq!(caps["textDocumentSync"]["openClose"], true);
        assert_eq!(init["serverInfo"]["name"], "codellama-lsp");
        finish(s);
    }
}

/// Edits with emoji (4 UTF-8 bytes, 2 UTF-16 units, 1 code point), CJK (3, 1, 1), a combining mark and CRLF,
/// each given in the negotiated encoding.
#[test]
fn incremental_edits_in_every_encoding() {
    let text = "e\u{301}😀中x\r\nsecond 😀 line\nthird";
    // Columns of: before 'x' on line 0; the emoji on line 1 (start, end).
    let cases = [
        ("utf-8", 10, (7, 11)),
        ("utf-16", 5, (7, 9)),
        ("utf-32", 4, (7, 8)),
    ];
    for (enc, before_x, (e0, e1)) in cases {
        let mut s = spawn(NO_MODEL);
        s.initialize(capabilities(&[enc]), Value::Null).unwrap();
        let uri = "file:///tmp/enc.py";
        open(&mut s, uri, "python", text);
        change(&mut s, uri, 2, (0, before_x), (0, before_x), "!");
        change(&mut s, uri, 3, (1, e0), (1, e1), "🙂");
        change(&mut s, uri, 4, (1, 999), (1, 999), " END"); // past the end of the line: at its end
        change(&mut s, uri, 5, (2, 0), (2, 0), "中文 ");
        let doc = text_of(&mut s, uri);
        assert_eq!(doc["positionEncoding"], enc);
        assert_eq!(doc["version"], 5);
        assert_eq!(
            doc["text"], "e\u{301}😀中!x\r\nsecond 🙂 line END\n中文 third",
            "{enc}"
        );
        // Joining two lines across a CRLF: from the end of line 0 to the start of line 1.
        change(&mut s, uri, 6, (0, 999), (1, 0), " + ");
        assert_eq!(
            text_of(&mut s, uri)["text"],
            "e\u{301}😀中!x + second 🙂 line END\n中文 third"
        );
        s.notify(
            "textDocument/didSave",
            json!({"textDocument": {"uri": uri}}),
        );
        s.notify(
            "textDocument/didClose",
            json!({"textDocument": {"uri": uri}}),
        );
        assert_eq!(text_of(&mut s, uri), Value::Null, "closed");
        finish(s);
    }
}

fn error_code(msg: &Value) -> i64 {
    msg["error"]["code"]
        .as_i64()
        .unwrap_or_else(|| panic!("expected an error, got {msg}"))
}

/// Asks something simple and checks the server still answers.
fn still_serving(s: &mut codellama_test_support::LspProcess) {
    let r = s.call(
        "codellama/debugDocument",
        json!({"textDocument": {"uri": "file:///none"}}),
        T,
    );
    assert_eq!(
        r,
        Ok(Value::Null),
        "the server stopped answering\n{}",
        s.stderr()
    );
}

#[test]
fn bad_input_is_answered_and_the_next_request_is_served() {
    let mut s = spawn(NO_MODEL);
    s.initialize(capabilities(&["utf-16"]), Value::Null)
        .unwrap();

    // Malformed JSON: a parse error (id null).
    s.send_raw(&frame(b"{\"jsonrpc\": \"2.0\", \"id\": 1, \"method\": "))
        .unwrap();
    let r = s.response(&Value::Null, T).unwrap();
    assert_eq!(error_code(&r), -32700);
    still_serving(&mut s);

    // Not JSON-RPC at all, and a body that is not UTF-8.
    s.send_raw(&frame(b"[1, 2, 3]")).unwrap();
    let r = s.response(&Value::Null, T).unwrap();
    assert!(r.get("error").is_some());
    s.send_raw(&frame(b"{\"x\": \"\xff\xfe\"}")).unwrap();
    let r = s.response(&Value::Null, T).unwrap();
    assert!(r.get("error").is_some());
    still_serving(&mut s);

    // An unknown request: method not found. An unknown notification: ignored.
    let id = s.request("codellama/noSuchThing", json!({}));
    assert_eq!(error_code(&s.response(&json!(id), T).unwrap()), -32601);
    s.notify("codellama/noSuchNotification", json!({"x": 1}));
    still_serving(&mut s);

    // Params of the wrong shape: invalid params.
    let id = s.request("textDocument/inlineCompletion", json!({"textDocument": 5}));
    assert_eq!(error_code(&s.response(&json!(id), T).unwrap()), -32602);
    s.notify(
        "textDocument/didChange",
        json!({"textDocument": {"uri": 1}, "contentChanges": "x"}),
    );
    still_serving(&mut s);

    // A document never opened: empty answers; edits to it are ignored.
    let never = "file:///never/opened.py";
    assert_eq!(items(&inline(&mut s, never, 0, 0)), Vec::<Value>::new());
    assert_eq!(completion(&mut s, never, 3, 3)["items"], json!([]));
    change(&mut s, never, 2, (0, 0), (0, 0), "x");
    assert_eq!(text_of(&mut s, never), Value::Null);

    // Positions past the end of a line and of the document.
    let uri = "file:///tmp/short.py";
    open(&mut s, uri, "python", "ab\ncd");
    assert_eq!(items(&inline(&mut s, uri, 0, 999)), Vec::<Value>::new());
    assert_eq!(items(&inline(&mut s, uri, 999, 999)), Vec::<Value>::new());
    assert_eq!(completion(&mut s, uri, 42, 0)["items"], json!([]));
    change(&mut s, uri, 2, (7, 7), (9, 9), "!");
    change(&mut s, uri, 3, (0, 5), (0, 1), "-"); // reversed and past the end: from 1 to the line's end
    assert_eq!(text_of(&mut s, uri)["text"], "a-\ncd!");

    // A position inside a surrogate pair (UTF-16 unit 2 of "a😀b") means the start of the emoji.
    let uri = "file:///tmp/emoji.py";
    open(&mut s, uri, "python", "a😀b");
    change(&mut s, uri, 2, (0, 2), (0, 2), "|");
    assert_eq!(text_of(&mut s, uri)["text"], "a|😀b");

    // NUL bytes in a document and in an edit.
    let uri = "file:///tmp/nul.txt";
    open(&mut s, uri, "plaintext", "a\u{0}b\n");
    change(&mut s, uri, 2, (0, 3), (0, 3), "\u{0}\u{0}");
    assert_eq!(text_of(&mut s, uri)["text"], "a\u{0}b\u{0}\u{0}\n");
    assert_eq!(items(&inline(&mut s, uri, 0, 2)), Vec::<Value>::new());

    // A 5 MB file: opened, edited at the end, completed, in reasonable time.
    let line = "x = compute(alpha, beta, gamma)  # a line of about sixty characters\n";
    let big: String = line.repeat(5 * 1024 * 1024 / line.len() + 1);
    let lines = big.matches('\n').count() as u32;
    let uri = "file:///tmp/big.py";
    let t = Instant::now();
    open(&mut s, uri, "python", &big);
    change(&mut s, uri, 2, (lines, 0), (lines, 0), "y = 1");
    assert_eq!(items(&inline(&mut s, uri, lines, 5)), Vec::<Value>::new());
    let doc = text_of(&mut s, uri);
    assert_eq!(doc["text"].as_str().unwrap().len(), big.len() + 5);
    eprintln!(
        "5 MB file: opened, edited, completed and read back in {:?}",
        t.elapsed()
    );

    finish(s);
}

/// `didChange` with one raw `text` (JSON string contents, escapes as written) at `(line, character)`.
fn raw_change(uri: &str, version: i32, (line, character): (u32, u32), text: &str) -> Vec<u8> {
    let at = format!(r#"{{"line":{line},"character":{character}}}"#);
    frame(format!(
        r#"{{"jsonrpc":"2.0","method":"textDocument/didChange","params":{{"textDocument":{{"uri":"{uri}","version":{version}}},"contentChanges":[{{"range":{{"start":{at},"end":{at}}},"text":"{text}"}}]}}}}"#
    ).as_bytes())
}

/// A lone UTF-16 surrogate (VS Code can send one: JavaScript strings are UTF-16) becomes U+FFFD, which takes the
/// same room in every encoding: the document stays in step with the editor's, position for position.
#[test]
fn lone_surrogates_keep_the_document_in_step_with_the_editor() {
    for (enc, after_fffd_and_a) in [("utf-16", 2), ("utf-32", 2), ("utf-8", 4)] {
        let mut s = spawn(NO_MODEL);
        s.initialize(capabilities(&[enc]), Value::Null).unwrap();
        let uri = "file:///tmp/surrogate.py";
        open(&mut s, uri, "python", "a😀b");
        s.send_raw(&raw_change(uri, 2, (0, 0), r"\ud800")).unwrap();
        // The editor's next edit counts the surrogate as one unit (in UTF-8: the 3 bytes of its encoding).
        change(
            &mut s,
            uri,
            3,
            (0, after_fffd_and_a),
            (0, after_fffd_and_a),
            "|",
        );
        s.send_raw(&raw_change(uri, 4, (0, 0), r"x\udc00")).unwrap();
        let doc = text_of(&mut s, uri);
        assert_eq!(doc["text"], "x\u{fffd}\u{fffd}a|😀b", "{enc}");
        assert_eq!(doc["version"], 4);
        let log = s
            .wait_stderr(T, |log| log.contains("lone UTF-16 surrogate"))
            .unwrap();
        let warned = log
            .lines()
            .filter(|l| l.contains("WARN") && l.contains("lone UTF-16 surrogate"))
            .count();
        assert_eq!(warned, 1, "one warning per session:\n{log}");
        finish(s);
    }
}

/// An edit the server cannot read at all leaves its copy behind the editor's: it drops the document and says so.
#[test]
fn an_edit_that_cannot_be_read_drops_the_document_and_says_so() {
    let mut s = spawn(NO_MODEL);
    s.initialize(capabilities(&["utf-8"]), Value::Null).unwrap();
    let uri = "file:///tmp/latin1.py";
    open(&mut s, uri, "python", "x = 1\n");
    let mut bad = raw_change(uri, 2, (0, 0), "\u{1}");
    let at = bad.iter().position(|&b| b == 1).unwrap();
    bad[at] = 0xff; // a byte that is not UTF-8 (same length)
    s.send_raw(&bad).unwrap();
    let r = s.response(&Value::Null, T).unwrap();
    assert_eq!(r["error"]["code"], -32700, "{r}");
    let shown = s.wait_for("window/showMessage", T, |_| true).unwrap();
    let text = shown["params"]["message"].as_str().unwrap();
    assert!(
        text.contains(uri) && text.contains("opened again"),
        "{text}"
    );
    assert_eq!(shown["params"]["type"], 2, "a warning");
    assert_eq!(text_of(&mut s, uri), Value::Null, "dropped, not kept stale");
    open(&mut s, uri, "python", "y = 2\n");
    assert_eq!(text_of(&mut s, uri)["text"], "y = 2\n");
    finish(s);
}

#[test]
fn framing_errors_and_dollar_requests_are_answered_and_serving_goes_on() {
    let mut s = spawn(NO_MODEL);
    s.initialize(capabilities(&[]), Value::Null).unwrap();

    // A request whose method starts with `$/`: MethodNotFound, with its id. Such a notification: ignored.
    let id = s.request("$/unknownRequest", json!({}));
    assert_eq!(error_code(&s.response(&json!(id), T).unwrap()), -32601);
    s.notify("$/unknownNotification", json!({}));
    still_serving(&mut s);

    // A header block ended by "\n\n": the message is read, and so is the next one.
    let ask = |id: i64| {
        json!({"jsonrpc": "2.0", "id": id, "method": "codellama/debugDocument", "params": {"textDocument": {"uri": "file:///none"}}})
        .to_string()
    };
    let mut bytes = format!("Content-Length: {}\n\n{}", ask(901).len(), ask(901)).into_bytes();
    bytes.extend(frame(ask(902).as_bytes()));
    s.send_raw(&bytes).unwrap();
    assert_eq!(s.response(&json!(901), T).unwrap()["result"], Value::Null);
    assert_eq!(s.response(&json!(902), T).unwrap()["result"], Value::Null);

    // A message announced at 600 MB and never sent: answered at once, and the next message is served.
    let t = Instant::now();
    s.send_raw(b"Content-Length: 600000000\r\n\r\n{\"jsonrpc\": \"2.0\", ")
        .unwrap();
    s.send_raw(&frame(ask(903).as_bytes())).unwrap();
    assert_eq!(error_code(&s.response(&Value::Null, T).unwrap()), -32600);
    assert_eq!(s.response(&json!(903), T).unwrap()["result"], Value::Null);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    finish(s);
}

#[test]
fn a_model_that_cannot_load_is_shown_once_and_the_server_keeps_answering() {
    let mut s = spawn(NO_MODEL);
    s.initialize(capabilities(&["utf-16"]), json!({"max_tokens": 8}))
        .unwrap();
    let status = s
        .wait_for("codellama/status", T, |p| p["state"] == "error")
        .unwrap();
    let message = status["params"]["message"].as_str().unwrap().to_string();
    assert!(message.contains("/nonexistent/model.gguf"), "{message}");
    let shown = s.wait_for("window/showMessage", T, |_| true).unwrap();
    assert_eq!(shown["params"]["type"], 1, "an error");
    let text = shown["params"]["message"].as_str().unwrap();
    assert!(
        text.contains("/nonexistent/model.gguf") && text.contains("fetch-model"),
        "{text}"
    );
    // Progress was reported for the load: create, begin, end.
    s.wait_for("window/workDoneProgress/create", T, |_| true)
        .unwrap();
    s.wait_for("$/progress", T, |p| p["value"]["kind"] == "end")
        .unwrap();

    let uri = "file:///tmp/a.py";
    open(&mut s, uri, "python", "def f():\n    ");
    for _ in 0..3 {
        assert_eq!(items(&inline(&mut s, uri, 1, 4)), Vec::<Value>::new());
        assert_eq!(completion(&mut s, uri, 1, 4)["isIncomplete"], true);
    }
    s.drain();
    let shown = s
        .received
        .iter()
        .filter(|m| m["method"] == "window/showMessage")
        .count();
    assert_eq!(shown, 1, "shown once");

    // Settings that do not need another model do not load again; a new model setting does (and fails again).
    s.notify(
        "workspace/didChangeConfiguration",
        json!({"settings": {"codellama": {"max_tokens": 4}}}),
    );
    s.notify(
        "workspace/didChangeConfiguration",
        json!({"settings": {"codellama": {"model": "/nonexistent/other.gguf"}}}),
    );
    s.wait_for("window/showMessage", T, |p| {
        p["message"]
            .as_str()
            .is_some_and(|m| m.contains("other.gguf"))
    })
    .unwrap();
    s.drain();
    let shown = s
        .received
        .iter()
        .filter(|m| m["method"] == "window/showMessage")
        .count();
    assert_eq!(shown, 2);
    finish(s);
}

#[test]
fn bad_settings_are_reported_and_ignored() {
    let mut s = spawn(NO_MODEL);
    s.initialize(
        capabilities(&[]),
        json!({"codellama": {"max_tokens": "lots", "colour": "blue"}}),
    )
    .unwrap();
    let shown = s
        .wait_for("window/showMessage", T, |p| p["type"] == 2)
        .unwrap();
    let text = shown["params"]["message"].as_str().unwrap();
    assert!(
        text.contains("max_tokens") && text.contains("colour"),
        "{text}"
    );
    still_serving(&mut s);
    finish(s);
}

#[test]
fn the_session_ends_cleanly_every_way() {
    // shutdown + exit: status 0.
    let mut s = spawn(NO_MODEL);
    s.initialize(capabilities(&[]), Value::Null).unwrap();
    finish(s);

    // exit without shutdown: status 1, as LSP says.
    let mut s = spawn(NO_MODEL);
    s.initialize(capabilities(&[]), Value::Null).unwrap();
    s.notify("exit", Value::Null);
    let status = s.wait_exit(T).unwrap();
    assert_eq!(status.code(), Some(1));
    assert_no_panic(&s);

    // The client goes away (stdin closed): the server ends by itself.
    let mut s = spawn(NO_MODEL);
    s.initialize(capabilities(&[]), Value::Null).unwrap();
    s.close_stdin();
    let status = s.wait_exit(Duration::from_secs(10)).unwrap();
    assert!(status.success(), "{status:?}");
    assert_no_panic(&s);

    // Requests after shutdown are refused, and the server still exits.
    let mut s = spawn(NO_MODEL);
    s.initialize(capabilities(&[]), Value::Null).unwrap();
    s.call("shutdown", Value::Null, T).unwrap();
    let id = s.request(
        "textDocument/inlineCompletion",
        inline_params("file:///x", 0, 0),
    );
    assert_eq!(error_code(&s.response(&json!(id), T).unwrap()), -32600);
    s.notify("exit", Value::Null);
    assert!(s.wait_exit(T).unwrap().success());
}

#[test]
fn requests_before_initialize_are_refused() {
    let mut s = spawn(NO_MODEL);
    let id = s.request("textDocument/completion", inline_params("file:///x", 0, 0));
    assert_eq!(error_code(&s.response(&json!(id), T).unwrap()), -32002);
    s.initialize(capabilities(&[]), Value::Null).unwrap();
    finish(s);
}
