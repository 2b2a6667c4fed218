//! Edge cases through the public API: line endings, tabs, Unicode, empty and whitespace-only context, the
//! end of the file, modes, the streaming stopper and configuration parsing. Rule-by-rule behaviour is covered
//! by the golden files in `tests/postprocess/`.

use std::time::Duration;

use super::*;

fn run(prefix: &str, suffix: &str, lang: Language, raw: &str) -> Option<String> {
    finalize(&Context::new(prefix, suffix, lang), &Config::default(), raw)
}

/// Feeds `raw` one character at a time; returns where the stopper stopped (and why).
fn stream(
    prefix: &str,
    suffix: &str,
    lang: Language,
    config: &Config,
    raw: &str,
) -> Option<(usize, StopReason)> {
    let mut s = StreamStopper::new(&Context::new(prefix, suffix, lang), config);
    for (i, c) in raw.char_indices() {
        if let StreamDecision::Stop { at, reason } =
            s.check(&raw[..i + c.len_utf8()], Duration::ZERO)
        {
            return Some((at, reason));
        }
    }
    None
}

#[test]
fn crlf_document_and_crlf_model_output() {
    let prefix = "fn main() {\r\n    ";
    let suffix = "\r\n}\r\n";
    // The model answers with `\r\n` too: same lines, document line breaks.
    let raw = "let x = 1;  \r\n    let y = 2;\r\n}\r\n";
    assert_eq!(
        run(prefix, suffix, Language::Rust, raw).as_deref(),
        Some("let x = 1;\r\n    let y = 2;")
    );
    // An LF document gets LF even when the model wrote CRLF.
    assert_eq!(
        run("fn main() {\n    ", "\n}\n", Language::Rust, raw).as_deref(),
        Some("let x = 1;\n    let y = 2;")
    );
    // The cursor between `\r` and `\n` is at the end of the line.
    assert_eq!(
        run("x = [1,\r", "\n]\r\n", Language::Python, " 2,\r\n 3").as_deref(),
        Some(" 2,\r\n 3")
    );
}

#[test]
fn crlf_stream_cut_is_before_the_line_break() {
    let raw = "a = 1\r\n    return a\r\ndef g():\r\n";
    let (at, reason) = stream(
        "def f():\r\n    ",
        "",
        Language::Python,
        &Config::default(),
        raw,
    )
    .unwrap();
    assert_eq!(reason, StopReason::Rule(Rule::Scope));
    assert_eq!(&raw[..at], "a = 1\r\n    return a");
}

#[test]
fn tabs_and_spaces_count_the_same_width() {
    // A tab-indented document and a model that answers with four spaces.
    let prefix = "func f() {\n\tif ok {\n\t\t";
    let raw = "g()\n        h()\n    }\n    return\n}";
    assert_eq!(
        run(prefix, "", Language::Go, raw).as_deref(),
        Some("g()\n        h()\n    }")
    );
}

#[test]
fn unicode_text_is_cut_on_char_boundaries() {
    let prefix = "names = [\"東京\", ";
    let suffix = "]\n";
    let raw = "\"大阪\", \"🍣\"]\nprint(names)";
    assert_eq!(
        run(prefix, suffix, Language::Python, raw).as_deref(),
        Some("\"大阪\", \"🍣\"")
    );
    // Runaway repetition of a CJK chunk.
    let raw = "ok()\n x = \"日本日本日本日本日本日本日本日本日本日本日本日本日本日本日本日本日本日本日本日本日本日本日本日本日本\"";
    assert_eq!(run("", "", Language::Python, raw).as_deref(), Some("ok()"));
}

#[test]
fn empty_and_whitespace_context() {
    // Empty document.
    assert_eq!(
        run("", "", Language::Rust, "fn main() {}\n").as_deref(),
        Some("fn main() {}")
    );
    // Cursor at the end of the file, after a newline.
    assert_eq!(
        run("import os\n", "", Language::Python, "import sys\n").as_deref(),
        Some("import sys")
    );
    // A suffix of whitespace only is not "text after the cursor": block mode.
    assert_eq!(
        run(
            "def f():",
            "   \n\n  ",
            Language::Python,
            "\n    return 1\n\nx = 2"
        )
        .as_deref(),
        Some("\n    return 1")
    );
    // Unknown languages still get the text rules.
    assert_eq!(
        run("Dear ", ",\n", Language::Other, "Sir,").as_deref(),
        Some("Sir")
    );
}

#[test]
fn nothing_worth_showing() {
    for raw in ["", "   ", "\n\n", " \r\n\t"] {
        assert_eq!(run("x = ", "", Language::Python, raw), None, "{raw:?}");
    }
    // The model only re-typed the rest of the line.
    assert_eq!(run("let x = ", "foo();\n", Language::Rust, "foo();"), None);
}

#[test]
fn modes() {
    let prefix = "def f(x):";
    let raw = "\n    y = x * 2\n    return y";
    let single = Config {
        mode: Mode::SingleLine,
        ..Config::default()
    };
    let ctx = Context::new(prefix, "\n", Language::Python);
    assert_eq!(
        finalize(&ctx, &single, raw).as_deref(),
        Some("\n    y = x * 2")
    );
    assert_eq!(
        finalize(&ctx, &Config::default(), raw).as_deref(),
        Some("\n    y = x * 2\n    return y")
    );
    let block = Config {
        mode: Mode::Block,
        ..Config::default()
    };
    let ctx = Context::new("print(", ")\n", Language::Python);
    assert_eq!(
        finalize(&ctx, &block, "a,\n      b").as_deref(),
        Some("a,\n      b")
    );
    assert_eq!(
        finalize(&ctx, &Config::default(), "a,\n      b").as_deref(),
        Some("a,")
    );
}

#[test]
fn stopper_stops_early_and_stays_stopped() {
    let config = Config::default();
    let prefix = "def sign(x):\n    if x < 0:";
    let raw = "\n        return -1\n    elif x == 0:\n        return 0\n    return 1\n";
    let (at, reason) = stream(prefix, "", Language::Python, &config, raw).unwrap();
    assert_eq!(reason, StopReason::Rule(Rule::Scope));
    assert_eq!(
        &raw[..at],
        "\n        return -1\n    elif x == 0:\n        return 0"
    );

    let mut s = StreamStopper::new(&Context::new("f(", ")", Language::Rust), &config);
    assert_eq!(s.check("a", Duration::ZERO), StreamDecision::Continue);
    let stop = s.check("a)", Duration::ZERO);
    assert_eq!(
        stop,
        StreamDecision::Stop {
            at: 1,
            reason: StopReason::Rule(Rule::Brackets)
        }
    );
    assert_eq!(s.check("a);", Duration::ZERO), stop);
    assert_eq!(s.finalize("a);").as_deref(), Some("a"));
}

#[test]
fn time_budget_only_after_a_line_with_content() {
    let config = Config {
        time_budget: Duration::from_millis(100),
        ..Config::default()
    };
    let ctx = Context::new("fn f() {", "\n}", Language::Rust);
    let late = Duration::from_millis(150);
    let mut s = StreamStopper::new(&ctx, &config);
    // Before any line break, or with only the continued (empty) first line: keep going.
    assert_eq!(s.check("let", late), StreamDecision::Continue);
    assert_eq!(s.check("\n    let x", late), StreamDecision::Continue);
    assert_eq!(
        s.check("\n    let x = 1;\n    let", Duration::from_millis(50)),
        StreamDecision::Continue
    );
    assert_eq!(
        s.check("\n    let x = 1;\n    let", late),
        StreamDecision::Stop {
            at: 15,
            reason: StopReason::TimeBudget
        }
    );
    let never = Config {
        time_budget: Duration::MAX,
        ..Config::default()
    };
    let mut s = StreamStopper::new(&ctx, &never);
    assert_eq!(
        s.check("\n    let x = 1;\n    let", late),
        StreamDecision::Continue
    );
}

#[test]
fn names_parse_back() {
    for rule in Rule::ALL {
        assert_eq!(rule.name().parse::<Rule>(), Ok(rule));
        assert_eq!(rule.to_string(), rule.name());
    }
    assert_eq!(
        "bracket".parse::<Rule>(),
        Err(ParseError::UnknownRule("bracket".into()))
    );
    assert_eq!("block".parse::<Mode>(), Ok(Mode::Block));
    assert!(matches!(
        "multi".parse::<Mode>(),
        Err(ParseError::UnknownMode(_))
    ));
    let c = Config::default().without(Rule::Trim).without(Rule::Trim);
    assert_eq!(c.disabled_rules, vec![Rule::Trim]);
    assert!(!c.enabled(Rule::Trim) && c.enabled(Rule::Scope));
}

#[test]
fn extreme_configuration_does_not_panic() {
    let ctx = Context::new("fn f() {\n    ", "\n}", Language::Rust);
    let raw = "a();\n    a();\n    a();\n    b(b(b(b(b(b(b(b(b(b(\n}";
    for config in [
        Config {
            max_lines: 0,
            repeated_lines: 0,
            repeated_chunk_chars: 0,
            time_budget: Duration::ZERO,
            ..Config::default()
        },
        Config {
            max_lines: usize::MAX,
            repeated_lines: usize::MAX,
            repeated_chunk_chars: usize::MAX,
            time_budget: Duration::MAX,
            ..Config::default()
        },
    ] {
        let _ = finalize(&ctx, &config, raw);
        let mut s = StreamStopper::new(&ctx, &config);
        for end in 0..=raw.len() {
            let _ = s.check(&raw[..end], Duration::from_secs(1));
        }
    }
}

#[test]
fn stopper_starts_over_when_the_text_is_not_an_extension() {
    let ctx = Context::new("def f():\n    ", "", Language::Python);
    let mut s = StreamStopper::new(&ctx, &Config::default());
    // Two complete lines are read for good...
    assert_eq!(
        s.check("x = 1\n    y = 2\n    ", Duration::ZERO),
        StreamDecision::Continue
    );
    // ...then the engine rewinds and generates something else: the old lines must not count.
    assert_eq!(
        s.check("z = 3\n    ", Duration::ZERO),
        StreamDecision::Continue
    );
    assert_eq!(
        s.check("z = 3\n    return z\nprint(f())", Duration::ZERO),
        StreamDecision::Stop {
            at: 18,
            reason: StopReason::Rule(Rule::Scope)
        }
    );
}

#[test]
fn auto_closed_brace_is_the_end_of_the_line() {
    // `{║});` from an auto-closing editor: a block, its closer dropped, the brace below it.
    let prefix = "describe(\"sum\", () => {";
    let raw = "\n  it(\"adds\", () => expect(sum(1, 2)).toBe(3));\n});\n";
    assert_eq!(
        run(prefix, "});\n", Language::JavaScript, raw).as_deref(),
        Some("\n  it(\"adds\", () => expect(sum(1, 2)).toBe(3));\n")
    );
    // A one-line body stays on the brace's line.
    assert_eq!(
        run("fn f() -> i32 {", "}\n", Language::Rust, " 1 ").as_deref(),
        Some(" 1")
    );
    // Other closers are still text after the cursor: one line.
    assert_eq!(
        run("foo(", ")\n", Language::Rust, "a,\n    b").as_deref(),
        Some("a,")
    );
}
