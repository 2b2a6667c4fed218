//! Golden tests for post-processing: one-screen cases in `tests/postprocess/*.txt`, run through the public
//! API exactly as the server and the decode loop call it.
//!
//! File format (one file per language; `#` lines before the first case are comments):
//!
//! ```text
//! ### name-of-the-case
//! rule: scope                      the rule the case exercises (see `Rule::name`)
//! language: typescript             optional; default from the file name
//! config: max_lines=2, mode=block  optional overrides of `Config::default()`
//! line_ending: crlf                optional: source and expected use `\r\n` (raw stays as written)
//! --- source
//! document text with one cursor marker ║
//! --- raw
//! what the model generated
//! --- expected                     or `--- expected: none` when there is no suggestion
//! the suggestion
//! ```
//!
//! A section's text is every line up to the next `--- ` or `### ` line, joined with `\n` (so an empty last
//! line means the text ends with a line break); trailing blank lines of `expected` are ignored. A `¶` at the
//! very end of a section marks where its text ends, to show a trailing line break or trailing spaces.
//!
//! Checks: every case gives its expected suggestion; every case gives something else with its rule
//! disabled; the streaming stopper never changes the final suggestion; nothing panics on sliced and mutated
//! inputs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use codellama_text::language::Language;
use codellama_text::postprocess::{
    finalize, Config, Context, Rule, StopReason, StreamDecision, StreamStopper,
};

const CURSOR: char = '║';

#[derive(Clone, Debug)]
struct Case {
    file: String,
    name: String,
    rule: Rule,
    language: Language,
    config: Config,
    crlf: bool,
    source: String,
    raw: String,
    expected: Option<String>,
}

impl Case {
    fn id(&self) -> String {
        format!("{}::{}", self.file, self.name)
    }

    fn prefix_suffix(&self) -> (String, String) {
        let source = if self.crlf {
            self.source.replace('\n', "\r\n")
        } else {
            self.source.clone()
        };
        let (p, s) = source
            .split_once(CURSOR)
            .unwrap_or_else(|| panic!("{}: no cursor marker", self.id()));
        (p.to_string(), s.to_string())
    }

    fn expected(&self) -> Option<String> {
        let e = self.expected.clone()?;
        Some(if self.crlf {
            e.replace('\n', "\r\n")
        } else {
            e
        })
    }

    fn run(&self, config: &Config) -> Option<String> {
        let (prefix, suffix) = self.prefix_suffix();
        finalize(
            &Context::new(&prefix, &suffix, self.language),
            config,
            &self.raw,
        )
    }
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/postprocess")
}

fn load_cases() -> Vec<Case> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(golden_dir())
        .expect("tests/postprocess exists")
        .map(|e| e.expect("readable dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    let mut cases = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).expect("readable golden file");
        cases.extend(parse_file(&path, &text));
    }
    cases
}

fn parse_file(path: &Path, text: &str) -> Vec<Case> {
    let file = path.file_name().unwrap().to_string_lossy().to_string();
    let stem = path.file_stem().unwrap().to_string_lossy().to_string();
    let mut cases = Vec::new();
    let lines: Vec<&str> = text.split('\n').collect();
    let mut i = lines
        .iter()
        .position(|l| l.starts_with("### "))
        .unwrap_or(lines.len());
    while i < lines.len() {
        let name = lines[i]["### ".len()..].trim().to_string();
        let ctx = format!("{file}::{name}");
        i += 1;
        let mut rule = None;
        let mut language = Language::from_language_id(&stem);
        let mut config = Config::default();
        let mut crlf = false;
        while i < lines.len() && !lines[i].starts_with("--- ") && !lines[i].starts_with("### ") {
            let line = lines[i].trim();
            i += 1;
            if line.is_empty() {
                continue;
            }
            let (key, value) = line
                .split_once(':')
                .unwrap_or_else(|| panic!("{ctx}: expected `key: value`, got {line:?}"));
            let value = value.trim();
            match key.trim() {
                "rule" => {
                    rule = Some(
                        value
                            .parse::<Rule>()
                            .unwrap_or_else(|e| panic!("{ctx}: {e}")),
                    )
                }
                "language" => language = Language::from_language_id(value),
                "line_ending" => crlf = value == "crlf",
                "config" => {
                    for kv in value.split(',') {
                        let (k, v) = kv
                            .split_once('=')
                            .unwrap_or_else(|| panic!("{ctx}: bad config {kv:?}"));
                        let v = v.trim();
                        match k.trim() {
                            "max_lines" => config.max_lines = v.parse().expect("number"),
                            "repeated_lines" => config.repeated_lines = v.parse().expect("number"),
                            "repeated_chunk_chars" => {
                                config.repeated_chunk_chars = v.parse().expect("number")
                            }
                            "mode" => {
                                config.mode = v.parse().unwrap_or_else(|e| panic!("{ctx}: {e}"))
                            }
                            other => panic!("{ctx}: unknown config key {other:?}"),
                        }
                    }
                }
                other => panic!("{ctx}: unknown field {other:?}"),
            }
        }
        let mut sections: Vec<(String, String)> = Vec::new();
        while i < lines.len() && lines[i].starts_with("--- ") {
            let header = lines[i]["--- ".len()..].trim().to_string();
            i += 1;
            let start = i;
            while i < lines.len() && !lines[i].starts_with("--- ") && !lines[i].starts_with("### ")
            {
                i += 1;
            }
            let mut body = lines[start..i].join("\n");
            if header.starts_with("expected") {
                body.truncate(body.trim_end_matches('\n').len());
            }
            if let Some(b) = body.strip_suffix('¶') {
                body = b.to_string();
            }
            sections.push((header, body));
        }
        let section = |want: &str| {
            sections
                .iter()
                .find(|(h, _)| h == want)
                .map(|(_, body)| body.clone())
                .unwrap_or_else(|| panic!("{ctx}: missing section `--- {want}`"))
        };
        let source = section("source");
        assert_eq!(
            source.matches(CURSOR).count(),
            1,
            "{ctx}: need exactly one cursor marker"
        );
        let expected = if sections.iter().any(|(h, _)| h == "expected: none") {
            None
        } else {
            Some(section("expected"))
        };
        cases.push(Case {
            file: file.clone(),
            name,
            rule: rule.unwrap_or_else(|| panic!("{ctx}: missing `rule:`")),
            language,
            config,
            crlf,
            source,
            raw: section("raw"),
            expected,
        });
    }
    cases
}

/// Runs one case; the message shows what differs.
fn check(case: &Case) -> Result<(), String> {
    let got = case.run(&case.config);
    let want = case.expected();
    if got == want {
        Ok(())
    } else {
        Err(format!(
            "{} (rule {})\n  want: {want:?}\n  got:  {got:?}",
            case.id(),
            case.rule
        ))
    }
}

#[test]
fn goldens() {
    let cases = load_cases();
    let failures: Vec<String> = cases.iter().filter_map(|c| check(c).err()).collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn enough_goldens_per_language() {
    let cases = load_cases();
    assert!(cases.len() >= 40, "{} cases", cases.len());
    let count = |langs: &[Language]| cases.iter().filter(|c| langs.contains(&c.language)).count();
    for langs in [
        &[Language::Python][..],
        &[Language::Rust],
        &[Language::JavaScript, Language::TypeScript],
        &[Language::Go],
        &[Language::C],
    ] {
        assert!(count(langs) >= 6, "{langs:?}: only {} cases", count(langs));
    }
    for rule in Rule::ALL {
        assert!(
            cases.iter().any(|c| c.rule == rule),
            "no golden case for rule {rule}"
        );
    }
    let mut names: Vec<String> = cases.iter().map(Case::id).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), cases.len(), "duplicate case names");
}

#[test]
fn every_case_needs_its_rule() {
    let cases = load_cases();
    let mut failures = Vec::new();
    for case in &cases {
        let without = case.config.clone().without(case.rule);
        let got = case.run(&without);
        if got == case.expected() {
            failures.push(format!(
                "{}: same output with rule {} disabled: {got:?}",
                case.id(),
                case.rule
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Feeds `raw` to a stopper in pieces (`step` bytes at a time, on char boundaries) and checks that a
/// rule-based stop never changes the final suggestion. Returns the stop offset, if any.
fn stream_check(
    prefix: &str,
    suffix: &str,
    lang: Language,
    config: &Config,
    raw: &str,
    step: usize,
) -> Result<Option<usize>, String> {
    let ctx = Context::new(prefix, suffix, lang);
    let mut stopper = StreamStopper::new(&ctx, config);
    let full = finalize(&ctx, config, raw);
    if stopper.finalize(raw) != full {
        return Err("StreamStopper::finalize differs from finalize".into());
    }
    let mut end = 0;
    while end < raw.len() {
        end = (end + step).min(raw.len());
        while !raw.is_char_boundary(end) {
            end += 1;
        }
        match stopper.check(&raw[..end], Duration::ZERO) {
            StreamDecision::Continue => {}
            StreamDecision::Stop { at, reason } => {
                if at > end {
                    return Err(format!("stop at {at} beyond the {end} bytes seen"));
                }
                if reason == StopReason::TimeBudget {
                    return Err("time budget fired with zero elapsed time".into());
                }
                let cut = finalize(&ctx, config, &raw[..at]);
                if cut != full {
                    return Err(format!(
                        "stopped at {at} ({reason:?}) after {end} bytes:\n  finalize(cut)  = {cut:?}\n  finalize(full) = {full:?}"
                    ));
                }
                return Ok(Some(at));
            }
        }
    }
    Ok(None)
}

#[test]
fn streaming_stop_keeps_the_final_suggestion() {
    let cases = load_cases();
    let mut failures = Vec::new();
    let mut stopped_early = 0;
    for case in &cases {
        let (prefix, suffix) = case.prefix_suffix();
        let mut configs = vec![case.config.clone()];
        configs.extend(Rule::ALL.iter().map(|r| case.config.clone().without(*r)));
        for (k, config) in configs.iter().enumerate() {
            for step in [1, 3, 7] {
                match stream_check(&prefix, &suffix, case.language, config, &case.raw, step) {
                    Ok(Some(at)) if k == 0 && step == 1 && at < case.raw.len() => {
                        stopped_early += 1
                    }
                    Ok(_) => {}
                    Err(e) => {
                        failures.push(format!("{} (config {k}, step {step}): {e}", case.id()))
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The stopper is useful: most goldens have text after the suggestion, and it stops before reading it all.
    assert!(
        stopped_early * 2 >= cases.len(),
        "stopped early on only {stopped_early} of {} cases",
        cases.len()
    );
}

/// A tiny deterministic generator (xorshift), so the property test needs no crate and is reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn char_boundaries(s: &str) -> Vec<usize> {
    s.char_indices().map(|(i, _)| i).chain([s.len()]).collect()
}

/// Inserts `n` random pieces that stress the rules into `s`.
fn mutate(rng: &mut Rng, s: &str, n: usize) -> String {
    const PIECES: &[&str] = &[
        "(", ")", "[", "]", "{", "}", "\"", "'", "`", "\"\"\"", "/*", "*/", "//", "#", "--", "\\",
        "\n", "\r\n", "\r", "\t", "    ", " ", "end", "else:", "} else {", "x", "你好", "🌍", "é",
        "\u{3000}", ",", ";", "self.",
    ];
    let mut out = s.to_string();
    for _ in 0..n {
        let b = char_boundaries(&out);
        let at = b[rng.below(b.len())];
        out.insert_str(at, PIECES[rng.below(PIECES.len())]);
    }
    out
}

#[test]
fn no_panics_and_stable_streaming_on_mutated_inputs() {
    let cases = load_cases();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut failures = Vec::new();
    let modes = ["auto", "single_line", "block"];
    for case in &cases {
        let source = case.source.replace(CURSOR, "");
        // Every cursor position of the source, with the case's raw output and a mutated one.
        let cursors = char_boundaries(&source);
        for (k, &cur) in cursors.iter().enumerate() {
            let (prefix, suffix) = source.split_at(cur);
            let mut config = case.config.clone();
            config.mode = modes[k % 3].parse().expect("mode");
            let raw = if k % 2 == 0 {
                case.raw.clone()
            } else {
                mutate(&mut rng, &case.raw, 3)
            };
            let _ = finalize(&Context::new(prefix, suffix, case.language), &config, &raw);
            if k % 4 == 0 {
                if let Err(e) =
                    stream_check(prefix, suffix, case.language, &config, &raw, 1 + k % 5)
                {
                    failures.push(format!("{} cursor {cur} raw {raw:?}: {e}", case.id()));
                }
            }
        }
        // Mutated documents and outputs, every raw prefix.
        for round in 0..20 {
            let doc = mutate(&mut rng, &case.source, 1 + round % 6);
            let Some((prefix, suffix)) = doc.split_once(CURSOR) else {
                continue;
            };
            let raw = mutate(&mut rng, &case.raw, 1 + round % 8);
            let mut config = case.config.clone();
            config.mode = modes[round % 3].parse().expect("mode");
            if round % 5 == 0 {
                config = config.without(Rule::ALL[round % Rule::ALL.len()]);
            }
            let lang = Language::ALL[(round + case.name.len()) % Language::ALL.len()];
            for end in char_boundaries(&raw) {
                let _ = finalize(&Context::new(prefix, suffix, lang), &config, &raw[..end]);
            }
            if let Err(e) = stream_check(prefix, suffix, lang, &config, &raw, 1 + round % 4) {
                failures.push(format!("{} round {round} {lang:?} prefix {prefix:?} suffix {suffix:?} raw {raw:?}: {e}", case.id()));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures, first:\n{}",
        failures.len(),
        failures
            .iter()
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}
