//! Code actions end to end with the real small Instruct model (SmolLM2-135M-Instruct, ChatML). The model
//! is tiny and often writes poor code, so these tests check structure: a non-empty result, in the right
//! comment syntax, at the right place, with the right indentation; never particular words.

mod common;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use codellama_engine::{CancelToken, Engine, GenerateRequest, LoadOptions};
use codellama_text::actions::{
    self, ActionError, ActionKind, ActionRequest, ChatModel, Source, Target, Task,
};
use codellama_text::prompt::chat::ChatFormat;

fn start(model: &std::path::Path) -> Engine {
    let opts = LoadOptions {
        model: Some(model.display().to_string()),
        context_window: Some(2048),
        ..LoadOptions::default()
    };
    Engine::start(opts, Box::new(|_| {})).expect("the model loads")
}

/// One engine for every test in this file (requests are served one at a time anyway).
fn smollm2() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| start(&common::small_model()))
}

fn line_start(text: &str, line: usize) -> usize {
    actions::source::Lines::new(text).start(line)
}

/// (path, code, first and last line of the selection, the comment marker)
const SNIPPETS: &[(&str, &str, usize, usize, &str)] = &[
    (
        "stats.py",
        "import math\n\n\ndef mean(xs):\n    total = 0\n    for x in xs:\n        total += x\n    return total / len(xs)\n",
        4,
        6,
        "#",
    ),
    (
        "src/lib.rs",
        "pub fn mean(xs: &[f64]) -> f64 {\n    let total: f64 = xs.iter().sum();\n    total / xs.len() as f64\n}\n",
        1,
        2,
        "//",
    ),
    (
        "web/app.js",
        "function mean(xs) {\n  let total = 0;\n  for (const x of xs) {\n    total += x;\n  }\n  return total / xs.length;\n}\n",
        1,
        4,
        "//",
    ),
    (
        "stats.go",
        "package stats\n\nfunc Mean(xs []float64) float64 {\n\ttotal := 0.0\n\tfor _, x := range xs {\n\t\ttotal += x\n\t}\n\treturn total / float64(len(xs))\n}\n",
        3,
        6,
        "//",
    ),
    (
        "stats.c",
        "double mean(const double *xs, int n) {\n    double total = 0;\n    for (int i = 0; i < n; i++)\n        total += xs[i];\n    return total / n;\n}\n",
        1,
        4,
        "//",
    ),
];

#[test]
fn explain_writes_a_comment_block_in_each_language() {
    let engine = smollm2();
    for &(path, code, first, last, marker) in SNIPPETS {
        let lines = actions::source::Lines::new(code);
        let selection = lines.start(first)..lines.range(last).end;
        let indent = actions::source::indentation(lines.text(first));
        let source = Source::new(code, Some(path), None);
        let out = actions::run(
            engine,
            &source,
            ActionRequest::new(Task::Explain { selection }, 48),
        )
        .unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(out.kind, ActionKind::Explain);
        assert_eq!(out.format, ChatFormat::ChatMl);
        assert!(!out.markdown.trim().is_empty(), "{path}: empty explanation");
        let block = &out.text;
        assert!(!block.trim().is_empty(), "{path}: empty comment block");
        for line in block.lines() {
            assert!(
                line.starts_with(&format!("{indent}{marker}")),
                "{path}: {line:?} is not a {marker} comment indented {indent:?}\n{block}"
            );
            assert!(
                line.chars().count() <= 80 || !line.trim().contains(' '),
                "{path}: {line:?}"
            );
            assert_eq!(line, line.trim_end(), "{path}: trailing whitespace");
        }
        // Inserted above the selection, which follows it unchanged.
        let edit = out.edit.as_ref().expect("an edit");
        assert_eq!(
            (edit.start, edit.end),
            (line_start(code, first), line_start(code, first))
        );
        let after = edit.apply(code);
        assert_eq!(
            after,
            format!("{}{}{}", &code[..edit.start], block, &code[edit.start..])
        );
        assert!(after[edit.start + block.len()..].starts_with(lines.text(first)));
    }
}

#[test]
fn generate_from_a_comment_inserts_code_below_it() {
    let engine = smollm2();
    let cases: &[(&str, &str, usize)] = &[
        (
            "shapes.py",
            "class Circle:\n    def __init__(self, r):\n        self.r = r\n\n    def area(self):\n        # return the area of the circle\n",
            5,
        ),
        (
            "util.js",
            "function total(items) {\n  // add up the price of every item\n}\n",
            1,
        ),
    ];
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for &(path, code, line) in cases {
        let source = Source::new(code, Some(path), None);
        // The language server's flavour: submit, then await on the runtime.
        let pending = actions::submit(
            engine,
            &source,
            ActionRequest::new(Task::GenerateFromComment { line }, 64),
        )
        .unwrap();
        let out = runtime
            .block_on(pending.finish())
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        let comment_line = actions::source::Lines::new(code).text(line);
        let indent = actions::source::indentation(comment_line);
        assert!(!out.text.trim().is_empty(), "{path}: no code");
        assert!(out.markdown.starts_with("```"), "{path}: {}", out.markdown);
        for l in out.text.lines().filter(|l| !l.is_empty()) {
            assert!(
                l.starts_with(indent),
                "{path}: {l:?} not indented {indent:?}\n{}",
                out.text
            );
            assert_eq!(l, l.trim_end(), "{path}: trailing whitespace");
        }
        // Below the comment: the comment line is followed by the new code.
        let edit = out.edit.as_ref().expect("an edit");
        assert_eq!(edit.start, line_start(code, line + 1), "{path}");
        assert_eq!(edit.start, edit.end);
        let after = edit.apply(code);
        let expected_prefix = format!("{comment_line}\n{}\n", out.text);
        assert!(after.contains(&expected_prefix), "{path}:\n{after}");
    }
}

#[test]
fn document_a_python_function() {
    let engine = smollm2();
    let code = "def clamp(x, lo, hi):\n    if x < lo:\n        return lo\n    return min(x, hi)\n";
    let source = Source::new(code, Some("num.py"), None);
    let out = actions::run(
        engine,
        &source,
        ActionRequest::new(Task::Document { position: 30 }, 48),
    )
    .unwrap();
    let edit = out.edit.expect("an edit");
    assert_eq!(edit.start, line_start(code, 1), "below the def line");
    assert!(edit.new_text.starts_with("    \"\"\""), "{}", edit.new_text);
    assert!(
        edit.new_text.trim_end().ends_with("\"\"\""),
        "{}",
        edit.new_text
    );
    assert!(edit.new_text.ends_with('\n'));
    assert!(!out.markdown.trim().is_empty());
}

#[test]
fn cancelling_mid_generation_returns_promptly() {
    let engine = smollm2();
    let (path, code, first, last, _) = SNIPPETS[0];
    let lines = actions::source::Lines::new(code);
    let source = Source::new(code, Some(path), None);
    let mut req = ActionRequest::new(
        Task::Explain {
            selection: lines.start(first)..lines.range(last).end,
        },
        400,
    );
    let cancel = CancelToken::new();
    req.cancel = cancel.clone();
    let cancelled_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let seen = cancelled_at.clone();
    let streamed = Arc::new(Mutex::new(String::new()));
    let sink = streamed.clone();
    req.progress = Some(Box::new(move |p| {
        sink.lock().unwrap().push_str(p.delta);
        if p.generated_tokens == 3 {
            *seen.lock().unwrap() = Some(Instant::now());
            cancel.cancel();
        }
    }));
    let result = actions::run(engine, &source, req);
    let returned = Instant::now();
    let e = result.expect_err("a cancelled action has no result");
    assert!(matches!(e, ActionError::Cancelled), "{e}");
    assert_eq!(e.to_string(), "cancelled");
    let at = cancelled_at.lock().unwrap().expect("tokens were streamed");
    assert!(
        returned - at < Duration::from_secs(2),
        "took {:?}",
        returned - at
    );
    assert!(!streamed.lock().unwrap().is_empty());

    // Cancelled before it starts: no generation at all.
    let req = ActionRequest::new(Task::Explain { selection: 0..5 }, 400);
    req.cancel.cancel();
    let t = Instant::now();
    let e = actions::run(engine, &source, req).unwrap_err();
    assert!(matches!(e, ActionError::Cancelled), "{e}");
    assert!(t.elapsed() < Duration::from_secs(2));
}

#[test]
fn bad_ranges_fail_at_once() {
    let engine = smollm2();
    let code = "x = 1\n";
    let source = Source::new(code, Some("a.py"), None);
    let t = Instant::now();
    let e = actions::run(
        engine,
        &source,
        ActionRequest::new(Task::Explain { selection: 2..50 }, 64),
    )
    .unwrap_err();
    assert!(matches!(e, ActionError::OutOfRange(_)), "{e}");
    assert!(e.to_string().contains("outside the document"), "{e}");
    let e = actions::run(
        engine,
        &source,
        ActionRequest::new(
            Task::Generate {
                instruction: "more".into(),
                target: Target::BelowLine(3),
            },
            64,
        ),
    )
    .unwrap_err();
    assert!(matches!(e, ActionError::OutOfRange(_)), "{e}");
    assert!(t.elapsed() < Duration::from_secs(1));
}

#[test]
fn the_chat_model_is_the_completion_model_when_it_follows_instructions() {
    let engine = smollm2();
    assert_eq!(actions::chat_format(engine).unwrap(), ChatFormat::ChatMl);
    assert_eq!(
        actions::choose_chat_model(None, engine).unwrap(),
        ChatModel::Completion(ChatFormat::ChatMl)
    );
    let same = common::small_model().display().to_string();
    assert_eq!(
        actions::choose_chat_model(Some(&same), engine).unwrap(),
        ChatModel::Completion(ChatFormat::ChatMl)
    );
    assert_eq!(
        actions::choose_chat_model(Some("models/other-instruct.gguf"), engine).unwrap(),
        ChatModel::Load("models/other-instruct.gguf".into())
    );
}

#[test]
fn a_base_model_gives_a_clear_error_and_keeps_working() {
    // The tiny Code Llama GGUF has no chat template and is not named Instruct.
    let engine = start(&common::codellama_fixture("tiny-codellama-mha.gguf"));
    let e = actions::chat_format(&engine).unwrap_err();
    assert!(matches!(e, ActionError::NotInstruct { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.starts_with("explain/generate need an Instruct model"),
        "{msg}"
    );
    assert!(msg.contains("chat_model"), "{msg}");
    let e = actions::choose_chat_model(None, &engine).unwrap_err();
    assert!(matches!(e, ActionError::NotInstruct { .. }), "{e}");
    // A chat_model setting names the model to load instead.
    let smol = common::small_model().display().to_string();
    assert_eq!(
        actions::choose_chat_model(Some(&smol), &engine).unwrap(),
        ChatModel::Load(smol)
    );
    let source = Source::new("x = 1\n", Some("a.py"), None);
    let e = actions::run(
        &engine,
        &source,
        ActionRequest::new(Task::Explain { selection: 0..5 }, 8),
    )
    .unwrap_err();
    assert!(matches!(e, ActionError::NotInstruct { .. }), "{e}");
    // Non-fatal: the engine still completes.
    let out = engine
        .generate(GenerateRequest::new(vec![1, 15043, 3186], 4))
        .unwrap();
    assert_eq!(out.generated_ids.len(), 4);
}

#[test]
fn cli_explain_and_generate() {
    let dir = std::env::temp_dir().join(format!("codellama-actions-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("stats.py");
    std::fs::write(&file, SNIPPETS[0].1).unwrap();
    let model = common::small_model().display().to_string();
    let bin = env!("CARGO_BIN_EXE_codellama-lsp");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(bin)
            .args(args)
            .args([
                "--model",
                &model,
                "--max-tokens",
                "32",
                "--context-window",
                "2048",
            ])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let loc = format!("{}:5-7", file.display());
    let (ok, stdout, stderr) = run(&["explain", &loc, "--json"]);
    assert!(ok, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert!(!v["markdown"].as_str().unwrap().trim().is_empty());
    assert!(v["text"].as_str().unwrap().starts_with("    #"), "{v}");
    assert_eq!(v["edit"]["range"]["start"]["line"], 5);
    assert_eq!(v["edit"]["range"]["start"]["column"], 1);

    let loc = format!("{}:4", file.display());
    let (ok, stdout, stderr) = run(&["generate", "--file", &loc, "return the mean of xs"]);
    assert!(ok, "{stderr}");
    assert!(!stdout.trim().is_empty());
    for l in stdout.lines().filter(|l| !l.is_empty()) {
        assert!(
            l.starts_with("    "),
            "{l:?} is not indented below `def mean(xs):`"
        );
    }

    let (ok, _, stderr) = run(&["explain", &format!("{}:5-70", file.display())]);
    assert!(!ok);
    assert!(
        stderr.contains("outside") && stderr.contains("(8 lines)"),
        "{stderr}"
    );
    let (ok, _, stderr) = run(&[
        "explain",
        &format!("{}:5-6", file.display()),
        "--chat-model",
        &common::codellama_fixture("tiny-codellama-mha.gguf")
            .display()
            .to_string(),
    ]);
    assert!(!ok);
    assert!(stderr.contains("need an Instruct model"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}
