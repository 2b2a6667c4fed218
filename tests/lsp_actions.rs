//! Code actions over LSP with the real binary on stdio and the real small Instruct model (SmolLM2-135M-Instruct,
//! ChatML): listing for a selection and a comment line, resolving "Generate code from this comment" and "Explain
//! this code" into workspace edits (five languages), the `codellama.*` commands with `$/progress` and
//! `workspace/applyEdit`, cancellation in the middle of a generation, and chat models that cannot serve.
//!
//! The model is tiny and often writes poor code, so these tests check structure (non-empty code or comments, in
//! the right syntax, at the right place, with the right indentation), never particular words.

mod common;
mod lsp_support;

use std::time::{Duration, Instant};

use codellama_test_support::LspProcess;
use lsp_support::*;
use serde_json::{json, Value};

fn small() -> String {
    common::small_model().display().to_string()
}

fn tiny_base_model() -> String {
    common::codellama_fixture("tiny-codellama-mha.gguf")
        .display()
        .to_string()
}

/// A server with the small model, short action answers, and the client's position encoding. `extra` flags
/// replace the defaults of the same name.
fn start(encoding: &str, extra: &[&str]) -> LspProcess {
    let model = small();
    let defaults = [
        ("--model", model.as_str()),
        ("--context-window", "1024"),
        ("--action-max-tokens", "64"),
        ("--threads", "2"),
    ];
    let mut flags: Vec<&str> = Vec::new();
    for (name, value) in defaults {
        if !extra.contains(&name) {
            flags.extend([name, value]);
        }
    }
    flags.extend_from_slice(extra);
    let mut s = spawn(&flags);
    let init = s
        .initialize(capabilities(&[encoding]), Value::Null)
        .unwrap();
    let caps = &init["capabilities"];
    assert_eq!(caps["codeActionProvider"]["resolveProvider"], true);
    for c in [
        "codellama.explain",
        "codellama.generate",
        "codellama.cancel",
        "codellama.applyAction",
    ] {
        assert!(
            caps["executeCommandProvider"]["commands"]
                .as_array()
                .unwrap()
                .contains(&json!(c)),
            "{c} in {caps}"
        );
    }
    s
}

fn ready(s: &mut LspProcess) {
    s.wait_ready(LOAD)
        .unwrap_or_else(|e| panic!("{e}\n{}", s.stderr()));
}

/// A file in each language: code to explain (its lines `first..=last`, indented by `indent`) and, in a second
/// file, a comment asking for code (line `comment`).
struct Lang {
    id: &'static str,
    ext: &'static str,
    marker: &'static str,
    code: &'static str,
    first: u32,
    last: u32,
    asks: &'static str,
    comment: u32,
}

const LANGS: &[Lang] = &[
    Lang {
        id: "python",
        ext: "py",
        marker: "#",
        code: "import math\n\n\ndef mean(xs):\n    total = 0\n    for x in xs:\n        total += x\n    return total / len(xs)\n",
        first: 4,
        last: 6,
        asks: "class Circle:\n    def __init__(self, r):\n        self.r = r\n\n    def area(self):\n        # return the area of the circle\n",
        comment: 5,
    },
    Lang {
        id: "rust",
        ext: "rs",
        marker: "//",
        code: "pub fn mean(xs: &[f64]) -> f64 {\n    let total: f64 = xs.iter().sum();\n    total / xs.len() as f64\n}\n",
        first: 1,
        last: 2,
        asks: "pub fn area(r: f64) -> f64 {\n    // return the area of a circle of radius r\n}\n",
        comment: 1,
    },
    Lang {
        id: "javascript",
        ext: "js",
        marker: "//",
        code: "function mean(xs) {\n  let total = 0;\n  for (const x of xs) {\n    total += x;\n  }\n  return total / xs.length;\n}\n",
        first: 1,
        last: 4,
        asks: "function area(r) {\n  // return the area of a circle of radius r\n}\n",
        comment: 1,
    },
    Lang {
        id: "go",
        ext: "go",
        marker: "//",
        code: "package stats\n\nfunc Mean(xs []float64) float64 {\n\ttotal := 0.0\n\tfor _, x := range xs {\n\t\ttotal += x\n\t}\n\treturn total / float64(len(xs))\n}\n",
        first: 3,
        last: 6,
        asks: "package shapes\n\nfunc Area(r float64) float64 {\n\t// return the area of a circle of radius r\n}\n",
        comment: 3,
    },
    Lang {
        id: "c",
        ext: "c",
        marker: "//",
        code: "double mean(const double *xs, int n) {\n    double total = 0;\n    for (int i = 0; i < n; i++)\n        total += xs[i];\n    return total / n;\n}\n",
        first: 1,
        last: 4,
        asks: "double area(double r) {\n    // return the area of a circle of radius r\n}\n",
        comment: 1,
    },
];

impl Lang {
    fn uri(&self) -> String {
        format!("file:///tmp/codellama-actions/stats.{}", self.ext)
    }

    fn asks_uri(&self) -> String {
        format!("file:///tmp/codellama-actions/asks.{}", self.ext)
    }

    fn line(text: &str, n: u32) -> &str {
        text.split('\n').nth(n as usize).unwrap()
    }

    /// The selection: lines `first..=last`, from the first line's start to the last line's end (ASCII text:
    /// the same in every encoding).
    fn selection(&self) -> Value {
        let end = Self::line(self.code, self.last).len() as u32;
        range((self.first, 0), (self.last, end))
    }

    fn indent(&self) -> &'static str {
        let line = Self::line(self.code, self.first);
        &line[..line.len() - line.trim_start().len()]
    }

    fn open(&self, s: &mut LspProcess) {
        open(s, &self.uri(), self.id, self.code);
        open(s, &self.asks_uri(), self.id, self.asks);
    }
}

fn titles(actions: &[Value]) -> Vec<&str> {
    actions
        .iter()
        .map(|a| a["title"].as_str().unwrap())
        .collect()
}

#[test]
fn actions_are_listed_for_a_selection_and_a_comment_line_without_the_model() {
    let mut s = start("utf-16", &[]);
    for lang in LANGS {
        lang.open(&mut s);
        let t = Instant::now();
        let actions = code_actions(&mut s, &lang.uri(), lang.selection());
        assert!(t.elapsed() < Duration::from_secs(5), "listing is instant");
        let names = titles(&actions);
        assert!(
            names.contains(&"Explain this code")
                && names.contains(&"Generate code from instruction"),
            "{}: {names:?}",
            lang.id
        );
        assert!(
            !names.contains(&"Generate code from this comment"),
            "{}: {names:?}",
            lang.id
        );

        let explain = action_titled(&actions, "Explain this code");
        assert_eq!(explain["kind"], "refactor.rewrite.codellama.explain");
        assert!(explain.get("edit").is_none(), "computed on resolve");
        assert_eq!(explain["data"]["version"], 1);
        assert_eq!(explain["data"]["uri"], lang.uri());

        // Generate from an instruction is a command: editor plugins ask for the instruction.
        let generate = action_titled(&actions, "Generate code from instruction");
        assert_eq!(generate["kind"], "refactor.rewrite.codellama.generate");
        assert_eq!(generate["command"]["command"], "codellama.generate");
        assert_eq!(generate["command"]["arguments"][0]["uri"], lang.uri());
        assert_eq!(
            generate["command"]["arguments"][0]["range"],
            lang.selection()
        );
        assert!(generate.get("data").is_none());

        // On the comment line (cursor at its end).
        let line = Lang::line(lang.asks, lang.comment);
        let at = (lang.comment, line.len() as u32);
        let actions = code_actions(&mut s, &lang.asks_uri(), range(at, at));
        let from_comment = action_titled(&actions, "Generate code from this comment");
        assert_eq!(
            from_comment["kind"],
            "refactor.rewrite.codellama.generateFromComment"
        );
        assert_eq!(from_comment["data"]["task"]["line"], lang.comment);
    }

    // `only` selects by kind, hierarchically.
    let lang = &LANGS[0];
    let only = |s: &mut LspProcess, kinds: Value| {
        s.call(
            "textDocument/codeAction",
            json!({"textDocument": {"uri": lang.uri()}, "range": lang.selection(),
                   "context": {"diagnostics": [], "only": kinds}}),
            T,
        )
        .unwrap()
    };
    let r = only(&mut s, json!(["refactor.rewrite.codellama.explain"]));
    assert_eq!(titles(r.as_array().unwrap()), vec!["Explain this code"]);
    assert!(only(&mut s, json!(["refactor"])).as_array().unwrap().len() >= 2);
    assert_eq!(only(&mut s, json!(["quickfix"])), json!([]));
    // Not open: nothing to offer, no error.
    assert!(code_actions(&mut s, "file:///nowhere.py", range((0, 0), (0, 0))).is_empty());
    finish(s);
}

#[test]
fn generate_from_a_comment_resolves_to_indented_code_below_it() {
    let mut s = start("utf-8", &[]);
    ready(&mut s);
    // Four spaces of two levels (Python), a tab (Go), two spaces (JavaScript).
    for lang in [&LANGS[0], &LANGS[3], &LANGS[2]] {
        lang.open(&mut s);
        let uri = lang.asks_uri();
        let at = (lang.comment, 0);
        let actions = code_actions(&mut s, &uri, range(at, at));
        let action = action_titled(&actions, "Generate code from this comment");
        let resolved =
            resolve(&mut s, action).unwrap_or_else(|e| panic!("{}: {e}\n{}", lang.id, s.stderr()));
        assert_eq!(resolved["title"], "Generate code from this comment");
        let (edits, version) = edits_for(&resolved["edit"], &uri);
        assert_eq!(version, Some(1), "versioned for the listed document");
        assert_eq!(edits.len(), 1);
        let edit = &edits[0];
        // Inserted at the start of the line below the comment.
        let below = pos(lang.comment + 1, 0);
        assert_eq!(
            edit["range"],
            json!({"start": below, "end": below}),
            "{}",
            lang.id
        );
        let code = edit["newText"].as_str().unwrap();
        assert!(!code.trim().is_empty(), "{}: no code", lang.id);
        assert!(code.ends_with('\n'), "{}: {code:?}", lang.id);
        let comment = Lang::line(lang.asks, lang.comment);
        let indent = &comment[..comment.len() - comment.trim_start().len()];
        for l in code.lines().filter(|l| !l.trim().is_empty()) {
            assert!(
                l.starts_with(indent),
                "{}: {l:?} is not indented {indent:?}\n{code}",
                lang.id
            );
        }
        let after = apply_edits(lang.asks, &edits, "utf-8");
        assert!(
            after.contains(&format!("{comment}\n{code}")),
            "{}: the code follows the comment\n{after}",
            lang.id
        );
    }
    finish(s);
}

#[test]
fn explain_resolves_to_a_comment_block_above_the_selection_in_five_languages() {
    let mut s = start("utf-16", &[]);
    ready(&mut s);
    for lang in LANGS {
        lang.open(&mut s);
        let uri = lang.uri();
        let actions = code_actions(&mut s, &uri, lang.selection());
        let resolved = resolve(&mut s, action_titled(&actions, "Explain this code"))
            .unwrap_or_else(|e| panic!("{}: {e}\n{}", lang.id, s.stderr()));
        let (edits, _) = edits_for(&resolved["edit"], &uri);
        assert_eq!(edits.len(), 1, "{}", lang.id);
        let at = pos(lang.first, 0);
        assert_eq!(
            edits[0]["range"],
            json!({"start": at, "end": at}),
            "{}",
            lang.id
        );
        let block = edits[0]["newText"].as_str().unwrap();
        assert!(!block.trim().is_empty(), "{}: empty", lang.id);
        assert!(block.ends_with('\n'), "{}", lang.id);
        let prefix = format!("{}{}", lang.indent(), lang.marker);
        for l in block.lines() {
            assert!(
                l.starts_with(&prefix),
                "{}: {l:?} is not a comment starting {prefix:?}\n{block}",
                lang.id
            );
        }
        // The selected code follows the block unchanged.
        let after = apply_edits(lang.code, &edits, "utf-16");
        assert!(
            after.contains(&format!("{block}{}", Lang::line(lang.code, lang.first))),
            "{}:\n{after}",
            lang.id
        );
    }
    finish(s);
}

/// The `$/progress` notifications of action runs (token `codellama/action/...`).
fn action_progress(s: &mut LspProcess) -> Vec<Value> {
    s.drain();
    s.received
        .iter()
        .filter(|m| {
            m["method"] == "$/progress"
                && m["params"]["token"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("codellama/action/"))
        })
        .map(|m| m["params"].clone())
        .collect()
}

#[test]
fn commands_explain_and_generate_report_progress_and_apply_edits() {
    let mut s = start("utf-16", &[]);
    ready(&mut s);
    let lang = &LANGS[0];
    lang.open(&mut s);
    let uri = lang.uri();

    let result = execute(
        &mut s,
        "codellama.explain",
        json!([{"uri": uri, "range": lang.selection()}]),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", s.stderr()));
    let markdown = result["markdown"].as_str().expect("{markdown}");
    assert!(!markdown.trim().is_empty());
    // Progress: begin, reports with the tokens generated and the text so far, end.
    s.wait_for("$/progress", T, |p| {
        p["token"]
            .as_str()
            .is_some_and(|t| t.starts_with("codellama/action/"))
            && p["value"]["kind"] == "end"
    })
    .unwrap();
    let progress = action_progress(&mut s);
    assert_eq!(progress[0]["value"]["kind"], "begin", "{progress:#?}");
    assert_eq!(progress[0]["value"]["cancellable"], true);
    let report = progress
        .iter()
        .find(|p| {
            p["value"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(" tokens\n"))
        })
        .unwrap_or_else(|| panic!("a report with tokens: {progress:#?}"));
    assert_eq!(report["value"]["kind"], "report");
    assert_eq!(progress.last().unwrap()["value"]["message"], "done");

    // Generate at the cursor (the end of the file): the server applies the code with workspace/applyEdit.
    let end = pos(8, 0);
    let result = execute(
        &mut s,
        "codellama.generate",
        json!([{"uri": uri, "position": end, "instruction": "a function that returns the largest of xs"}]),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", s.stderr()));
    assert_eq!(result["applied"], true, "{result}");
    let code = result["code"].as_str().unwrap();
    assert!(!code.trim().is_empty());
    let apply = s.wait_for("workspace/applyEdit", T, |_| true).unwrap();
    let (edits, version) = edits_for(&apply["params"]["edit"], &uri);
    assert_eq!(version, Some(1));
    assert_eq!(edits[0]["range"]["start"], end);
    assert!(edits[0]["newText"].as_str().unwrap().contains(code.trim()));

    // Without an instruction: a clear error, at once.
    let e = execute(
        &mut s,
        "codellama.generate",
        json!([{"uri": uri, "position": end}]),
    )
    .unwrap_err();
    assert_eq!(code_of(&e), -32602, "{e}");
    assert!(
        e["message"].as_str().unwrap().contains("instruction"),
        "{e}"
    );
    // Unknown commands and bad arguments: invalid params.
    let e = execute(&mut s, "codellama.nope", json!([])).unwrap_err();
    assert_eq!(code_of(&e), -32602);
    let e = execute(&mut s, "codellama.explain", json!([{"range": 3}])).unwrap_err();
    assert_eq!(code_of(&e), -32602);

    // An action listed for version 1 is refused once the document changed.
    let actions = code_actions(&mut s, &uri, lang.selection());
    change(&mut s, &uri, 2, (0, 0), (0, 0), "# stats\n");
    let e = resolve(&mut s, action_titled(&actions, "Explain this code")).unwrap_err();
    assert_eq!(code_of(&e), -32801, "ContentModified: {e}");
    assert!(e["message"].as_str().unwrap().contains("changed"), "{e}");
    finish(s);
}

#[test]
fn action_data_that_does_not_fit_the_document_is_refused_without_harm() {
    let mut s = start("utf-16", &[]);
    ready(&mut s);
    let uri = "file:///tmp/codellama-actions/utf8.py";
    // Multi-byte text: byte offsets inside a character must not be taken as positions.
    open(&mut s, uri, "python", "s = \"é😀\"\n# sum\n");
    let action = |task: Value| json!({"title": "Explain this code", "data": {"uri": uri, "version": 1, "task": task}});
    let bad = [
        json!({"kind": "explain", "selection": {"start": 6, "end": 8}}),
        json!({"kind": "explain", "selection": {"start": 0, "end": 4_000_000_000u64}}),
        json!({"kind": "generate_from_comment", "line": 99}),
        json!({"kind": "generate_from_comment", "line": 0}),
        json!({"kind": "document", "position": 7}),
        json!({"kind": "generate", "instruction": "x", "target": {"replace": {"start": 9, "end": 2}}}),
        json!({"kind": "generate", "instruction": "", "target": {"cursor": 0}}),
        json!({"kind": "no_such_action"}),
    ];
    for task in bad {
        let e = resolve(&mut s, &action(task.clone())).unwrap_err();
        assert_eq!(code_of(&e), -32602, "{task}: {e}");
    }
    // Not data of ours, another document's, a closed one: errors too; an action without data is left alone.
    let e = resolve(&mut s, &json!({"title": "x", "data": [1, 2]})).unwrap_err();
    assert_eq!(code_of(&e), -32602, "{e}");
    let e = resolve(
        &mut s,
        &json!({"title": "x", "data": {"uri": "file:///closed.py", "version": 1, "task": {"kind": "explain", "selection": {"start": 0, "end": 1}}}}),
    )
    .unwrap_err();
    assert_eq!(code_of(&e), -32602, "{e}");
    let plain = json!({"title": "Generate code from instruction", "command": {"title": "g", "command": "codellama.generate"}});
    assert_eq!(resolve(&mut s, &plain).unwrap(), plain);
    finish(s);
}

#[test]
fn cancelling_mid_generation_returns_promptly_and_the_server_goes_on() {
    let mut s = start(
        "utf-16",
        &["--context-window", "2048", "--action-max-tokens", "1500"],
    );
    ready(&mut s);
    let lang = &LANGS[0];
    lang.open(&mut s);
    let uri = lang.uri();
    let explain = json!({"command": "codellama.explain", "arguments": [{"uri": uri, "range": lang.selection()}]});

    // Wait until tokens stream, then cancel: $/cancelRequest, then codellama.cancel.
    for how in ["$/cancelRequest", "codellama.cancel"] {
        s.drain();
        s.received.retain(|m| m["method"] != "$/progress");
        let id = s.request("workspace/executeCommand", explain.clone());
        s.wait_for("$/progress", LOAD, |p| {
            p["value"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(" tokens\n"))
        })
        .unwrap_or_else(|e| panic!("{how}: {e}\n{}", s.stderr()));
        let t = Instant::now();
        if how == "$/cancelRequest" {
            s.cancel(id);
        } else {
            let r = s
                .call(
                    "workspace/executeCommand",
                    json!({"command": "codellama.cancel"}),
                    T,
                )
                .unwrap();
            assert_eq!(r["cancelled"], 1, "{how}");
        }
        let response = s.response(&json!(id), T).unwrap();
        let took = t.elapsed();
        assert_eq!(code_of(&response["error"]), -32800, "{how}: {response}");
        assert!(took < Duration::from_secs(3), "{how}: took {took:?}");
        // The progress ends, saying so.
        s.wait_for("$/progress", T, |p| {
            p["value"]["kind"] == "end" && p["value"]["message"] == "cancelled"
        })
        .unwrap_or_else(|e| panic!("{how}: {e}"));
    }
    // The model is free again: a completion and an action both answer.
    let r = inline(&mut s, &uri, 8, 0);
    assert!(r["items"].is_array(), "{r}");
    let actions = code_actions(&mut s, &uri, lang.selection());
    assert!(!actions.is_empty());
    finish(s);
}

#[test]
fn a_base_chat_model_or_a_missing_one_is_a_clear_non_fatal_error() {
    let base = tiny_base_model();
    let mut s = start("utf-16", &["--chat-model", &base]);
    ready(&mut s);
    // The chat model loads beside the completion model, with its own status.
    s.wait_for("codellama/status", LOAD, |p| {
        p["role"] == "chat" && p["state"] == "ready"
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", s.stderr()));
    let lang = &LANGS[0];
    lang.open(&mut s);
    let uri = lang.uri();
    let args = json!([{"uri": uri, "range": lang.selection()}]);
    for _ in 0..2 {
        let e = execute(&mut s, "codellama.explain", args.clone()).unwrap_err();
        assert_eq!(code_of(&e), -32803, "RequestFailed: {e}");
        let message = e["message"].as_str().unwrap();
        assert!(
            message.contains("need an Instruct model") && message.contains("chat_model"),
            "{message}"
        );
    }
    let actions = code_actions(&mut s, &uri, lang.selection());
    let e = resolve(&mut s, action_titled(&actions, "Explain this code")).unwrap_err();
    assert_eq!(code_of(&e), -32803);
    // Shown once, however often it is asked.
    s.drain();
    let shown: Vec<&Value> = s
        .received
        .iter()
        .filter(|m| {
            m["method"] == "window/showMessage"
                && m["params"]["message"]
                    .as_str()
                    .is_some_and(|t| t.contains("Instruct"))
        })
        .collect();
    assert_eq!(shown.len(), 1, "{shown:#?}");
    assert_eq!(shown[0]["params"]["type"], 1, "an error");

    // A chat model that does not exist: the load failure is shown, and actions say why they cannot run.
    s.notify(
        "workspace/didChangeConfiguration",
        json!({"settings": {"codellama": {"chat_model": "/nonexistent/chat-instruct.gguf"}}}),
    );
    s.wait_for("window/showMessage", LOAD, |p| {
        p["message"]
            .as_str()
            .is_some_and(|m| m.contains("could not load its chat model"))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", s.stderr()));
    // The base model would serve until another chat model loads (which this one never does); clearing the
    // setting goes back to the completion model, an Instruct model.
    s.notify(
        "workspace/didChangeConfiguration",
        json!({"settings": {"codellama": {"chat_model": null}}}),
    );
    let result = execute(&mut s, "codellama.explain", args)
        .unwrap_or_else(|e| panic!("{e}\n{}", s.stderr()));
    assert!(!result["markdown"].as_str().unwrap().trim().is_empty());
    // Completions were never affected.
    let r = inline(&mut s, &uri, 8, 0);
    assert!(r["items"].is_array(), "{r}");
    finish(s);
}

#[test]
fn a_missing_chat_model_fails_the_request_with_the_reason() {
    let mut s = start(
        "utf-16",
        &["--chat-model", "/nonexistent/chat-instruct.gguf"],
    );
    ready(&mut s);
    let lang = &LANGS[1];
    lang.open(&mut s);
    let e = execute(
        &mut s,
        "codellama.explain",
        json!([{"uri": lang.uri(), "range": lang.selection()}]),
    )
    .unwrap_err();
    assert_eq!(code_of(&e), -32803, "{e}");
    let message = e["message"].as_str().unwrap();
    assert!(
        message.contains("no chat model") && message.contains("/nonexistent/chat-instruct.gguf"),
        "{message}"
    );
    finish(s);
}
