//! llama.cpp's `/infill` driven the way llama.vscode (ggml-org/llama.vscode, v0.0.63) drives it, so that
//! the comparison is with what its users get: the document split of `getCompletionItems` in
//! `src/completion.ts`, the request of `createRequestPayload` in `src/llama-server.ts` (with the defaults of
//! its `package.json`: `n_prefix` 256 and `n_suffix` 64 lines, `t_max_prompt_ms` and `t_max_predict_ms`
//! 500), and its client-side trimming in `src/completion.ts` (`removeTrailingNewLines`,
//! `shouldDiscardSuggestion`, `updateSuggestion`, `removeLeadingSpaces`). None of our post-processing.
//!
//! Departures, none against llama.cpp: greedy decoding (`top_k` 1 instead of 40, in llama.vscode's own
//! sampler chain `top_k, top_p, infill`); one completion instead of `n_cmpl` 3 (greedy makes them equal,
//! and the first is the one shown); a request even when more than `max_line_suffix` (8) characters follow
//! the cursor, which llama.vscode's automatic trigger skips (its manual trigger does not); no extra
//! context chunks (one file) and no result cache.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::Infiller;
use codellama_remote::client::Client;
use codellama_remote::{RemoteConfig, RemoteKind};

/// Lines before the cursor's line sent as `input_prefix` (`llama-vscode.n_prefix`).
const N_PREFIX: usize = 256;
/// Lines after the cursor's line sent in `input_suffix` (`llama-vscode.n_suffix`).
const N_SUFFIX: usize = 64;
/// `llama-vscode.t_max_prompt_ms` (llama.cpp does not implement it yet) and `t_max_predict_ms`: after
/// this long generating, the server stops at the next line break.
const T_MAX_PROMPT_MS: u64 = 500;
const T_MAX_PREDICT_MS: u64 = 500;

/// The document around the cursor as llama.vscode splits it, and what its trimming needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Up to [`N_PREFIX`] whole lines before the cursor's line, each followed by a line break.
    pub input_prefix: String,
    /// The rest of the cursor's line, a line break, up to [`N_SUFFIX`] lines and a line break.
    pub input_suffix: String,
    /// The cursor's line up to the cursor; empty when that is only indentation.
    pub prompt: String,
    /// The indentation of the cursor's line (the server stops at a less indented line).
    pub n_indent: usize,
    line_prefix: String,
    line_suffix: String,
    /// Indentation typed before the cursor, removed from the suggestion's start.
    spaces_to_remove: usize,
    /// Every line of the document after the cursor's line.
    lines_after: Vec<String>,
}

/// The document's lines as VS Code counts them: a final line break opens one more, empty line.
fn lines(text: &str) -> impl Iterator<Item = &str> {
    text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l))
}

impl Request {
    /// The request for a cursor between `prefix` and `suffix`.
    pub fn new(prefix: &str, suffix: &str) -> Request {
        let (before, line_prefix) = match prefix.rfind('\n') {
            Some(nl) => (Some(&prefix[..nl]), &prefix[nl + 1..]),
            None => (None, prefix),
        };
        let (line_suffix, after) = match suffix.find('\n') {
            Some(nl) => (&suffix[..nl], Some(&suffix[nl + 1..])),
            None => (suffix, None),
        };
        let line_suffix = line_suffix.strip_suffix('\r').unwrap_or(line_suffix);
        let lines_before: Vec<&str> = before.map(|b| lines(b).collect()).unwrap_or_default();
        let lines_after: Vec<String> = after
            .map(|a| lines(a).map(str::to_string).collect())
            .unwrap_or_default();
        let kept = &lines_before[lines_before.len().saturating_sub(N_PREFIX)..];
        let following = &lines_after[..lines_after.len().min(N_SUFFIX)];
        let line = format!("{line_prefix}{line_suffix}");
        let only_indent = line_prefix.chars().all(|c| c == ' ' || c == '\t');
        Request {
            input_prefix: format!("{}\n", kept.join("\n")),
            input_suffix: format!("{line_suffix}\n{}\n", following.join("\n")),
            prompt: if only_indent {
                String::new()
            } else {
                line_prefix.to_string()
            },
            n_indent: line.chars().count() - line.trim_start().chars().count(),
            spaces_to_remove: if only_indent {
                line_prefix.chars().count()
            } else {
                0
            },
            line_prefix: line_prefix.to_string(),
            line_suffix: line_suffix.to_string(),
            lines_after,
        }
    }

    /// The body of `POST /infill`; `time_limit` false sends no generation time limit.
    pub fn body(&self, max_tokens: usize, time_limit: bool) -> Value {
        let mut body = json!({
            "id_slot": 0,
            "input_prefix": self.input_prefix,
            "input_suffix": self.input_suffix,
            "input_extra": [],
            "prompt": self.prompt,
            "n_predict": max_tokens,
            "top_k": 1,
            "top_p": 0.99,
            "stream": false,
            "samplers": ["top_k", "top_p", "infill"],
            "cache_prompt": true,
            "t_max_prompt_ms": T_MAX_PROMPT_MS,
            // The server applies the limit only when it is positive.
            "t_max_predict_ms": if time_limit { T_MAX_PREDICT_MS } else { 0 },
        });
        // llama.vscode sends `n_indent` only when it is not 0.
        if self.n_indent > 0 {
            body["n_indent"] = json!(self.n_indent);
        }
        body
    }

    /// What llama.vscode shows for the server's `content`: empty when it discards it.
    pub fn suggestion(&self, content: &str) -> String {
        if content.trim().is_empty() {
            return String::new();
        }
        let mut lines: Vec<&str> = lines(content).collect();
        while lines.last().is_some_and(|l| l.trim().is_empty()) {
            lines.pop();
        }
        if self.discard(&lines) {
            return String::new();
        }
        remove_leading_spaces(&self.update(&lines), self.spaces_to_remove)
    }

    /// `shouldDiscardSuggestion`: nothing left, or a suggestion that repeats the text below the cursor.
    /// VS Code's `lineAt` throws past the last line, and llama.vscode then shows nothing: a comparison
    /// with a line past the end discards.
    fn discard(&self, s: &[&str]) -> bool {
        if s.is_empty() || (s.len() == 1 && s[0].trim().is_empty()) {
            return true;
        }
        // The cursor on the document's last line.
        if self.lines_after.is_empty() {
            return false;
        }
        let after = &self.lines_after;
        // Every line from `from` on equals the suggestion's lines from the second on.
        let repeats_from =
            |from: usize| (1..s.len()).all(|i| after.get(from + i - 1).is_none_or(|l| l == s[i]));
        let suffix = self.line_suffix.trim();
        if s.len() > 1 && (s[0].trim().is_empty() || s[0].trim() == suffix) && repeats_from(0) {
            return true;
        }
        if s.len() == 1 && s[0] == self.line_suffix {
            return true;
        }
        let Some(first) = after.iter().position(|l| !l.trim().is_empty()) else {
            return false;
        };
        if format!("{}{}", self.line_prefix, s[0]) != after[first] {
            return false;
        }
        match s.len() {
            1 => true,
            2 => after.get(first + 1).is_none_or(|l| l.starts_with(s[1])),
            _ => repeats_from(first + 1),
        }
    }

    /// `updateSuggestion`: with text after the cursor, only the first line, without that text.
    fn update(&self, s: &[&str]) -> String {
        if !self.line_suffix.trim().is_empty() {
            if let Some(kept) = s[0].strip_suffix(self.line_suffix.as_str()) {
                return kept.to_string();
            }
            if s.len() > 1 {
                return s[0].to_string();
            }
        }
        s.join("\n")
    }
}

/// `removeLeadingSpaces` as written: `i < n && c == ' ' || c == '\t'` removes up to `n` spaces and every
/// tab before the first other character.
fn remove_leading_spaces(text: &str, n: usize) -> String {
    let mut i = 0;
    let mut start = text.len();
    for (at, c) in text.char_indices() {
        if (i < n && c == ' ') || c == '\t' {
            i += 1;
        } else {
            start = at;
            break;
        }
    }
    text[start..].to_string()
}

/// Options llama.vscode's default launch command gives llama-server (`llama-vscode.launch_completion` in
/// its package.json), besides the model, context and port.
pub const SERVER_ARGS: &[&str] = &["-b", "1024", "-ub", "1024", "--cache-reuse", "256"];

/// One `/infill` answer: the suggestion llama.vscode shows, and the prompt tokens the server computed for
/// it (`timings.prompt_n`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Infilled {
    pub suggestion: String,
    pub computed_tokens: usize,
    /// The time the server spent decoding it (`timings.predicted_ms`), where it said, and the tokens it
    /// generated (`timings.predicted_n`).
    pub decode_ms: Option<f64>,
    pub generated_tokens: usize,
}

/// The server's prompt token counters since it started (`/metrics`, which needs `--metrics`): computed,
/// aborted requests included, and taken from the cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PromptCounters {
    pub computed_tokens: usize,
    pub cached_tokens: usize,
}

impl PromptCounters {
    /// Reads `llamacpp:prompt_tokens_total` and `llamacpp:prompt_tokens_cached_total` from Prometheus text.
    pub fn parse(text: &str) -> Result<Self> {
        let value = |name: &str| {
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .map(|v| v as usize)
                .with_context(|| format!("/metrics has no number for {name}"))
        };
        Ok(Self {
            computed_tokens: value("llamacpp:prompt_tokens_total")?,
            cached_tokens: value("llamacpp:prompt_tokens_cached_total")?,
        })
    }
}

/// A llama.cpp server asked the way llama.vscode asks it.
pub struct LlamaVscode {
    client: Client,
    max_tokens: usize,
    time_limit: bool,
}

impl LlamaVscode {
    /// `max_tokens` is `n_predict`; `time_limit` false drops `t_max_predict_ms`.
    pub fn new(url: &str, max_tokens: usize, time_limit: bool) -> Result<Self> {
        let mut cfg = RemoteConfig::new(RemoteKind::LlamaCpp, url.to_string());
        // One answer can take minutes on a small, busy machine.
        cfg.first_token_timeout = Duration::from_secs(600);
        Ok(Self {
            client: Client::new(&cfg)?,
            max_tokens,
            time_limit,
        })
    }
}

impl LlamaVscode {
    /// One `/infill` for a cursor between `prefix` and `suffix`; `None` once `cancelled` is set: the
    /// connection is dropped, which is how llama.vscode aborts the request a new keystroke replaces.
    pub fn infill_cancellable(
        &self,
        prefix: &str,
        suffix: &str,
        cancelled: Arc<AtomicBool>,
    ) -> Result<Option<Infilled>> {
        let req = Request::new(prefix, suffix);
        let body = req.body(self.max_tokens, self.time_limit);
        let Some(answer) = self
            .client
            .json_cancellable("POST", "/infill", Some(&body), cancelled)
            .context("POST /infill")?
        else {
            return Ok(None);
        };
        let Some(content) = answer.get("content").and_then(Value::as_str) else {
            bail!("/infill answered without a `content` string: {answer}");
        };
        let timing = |k: &str| answer["timings"][k].as_u64().unwrap_or(0) as usize;
        Ok(Some(Infilled {
            suggestion: req.suggestion(content),
            computed_tokens: timing("prompt_n"),
            decode_ms: answer["timings"]["predicted_ms"].as_f64(),
            generated_tokens: timing("predicted_n"),
        }))
    }

    /// The server's prompt token counters (it must run with `--metrics`).
    pub fn counters(&self) -> Result<PromptCounters> {
        let text = self.client.text("/metrics").context("GET /metrics")?;
        PromptCounters::parse(&text)
    }
}

impl Infiller for LlamaVscode {
    fn name(&self) -> &str {
        "llama.cpp /infill"
    }

    fn infill(&mut self, prefix: &str, suffix: &str) -> Result<String> {
        let answer = self.infill_cancellable(prefix, suffix, Arc::default())?;
        Ok(answer.expect("nothing cancels it").suggestion)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_splits_at_the_cursors_line() {
        let r = Request::new("import os\n\ndef f(x):\n    ret", "urn x\n\nprint(f(1))\n");
        assert_eq!(r.input_prefix, "import os\n\ndef f(x):\n");
        assert_eq!(r.prompt, "    ret");
        assert_eq!(r.input_suffix, "urn x\n\nprint(f(1))\n\n");
        assert_eq!(r.n_indent, 4);
        let body = r.body(128, true);
        assert_eq!(body["n_indent"], 4);
        assert_eq!(body["n_predict"], 128);
        assert_eq!(body["t_max_predict_ms"], 500);
        assert_eq!(body["input_extra"], json!([]));
        assert_eq!(body["samplers"], json!(["top_k", "top_p", "infill"]));
        assert_eq!(r.body(16, false)["t_max_predict_ms"], 0);
        // Only indentation before the cursor: no prompt; the model writes the indentation, which is
        // removed from the suggestion.
        let r = Request::new("def f(x):\n    ", "\n");
        assert_eq!((r.prompt.as_str(), r.n_indent), ("", 4));
        assert_eq!(r.suggestion("    return x\n"), "return x");
        // The first line of a file; at most 256 lines before and 64 after.
        let r = Request::new("x = ", "");
        assert_eq!(
            (r.input_prefix.as_str(), r.input_suffix.as_str()),
            ("\n", "\n\n")
        );
        assert!(r.body(8, true).get("n_indent").is_none());
        let long = "a\n".repeat(300);
        let r = Request::new(&long, &long);
        assert_eq!(r.input_prefix.lines().count(), 256);
        assert_eq!(r.input_suffix, format!("a\n{}\n", ["a"; 64].join("\n")));
    }

    #[test]
    fn trimming_as_llama_vscode_does() {
        // An empty line inside a function, more code below.
        let r = Request::new("def f(x):\n", "\n    return y\n\nprint(f(2))\n");
        // Trailing blank lines go; a blank answer is no suggestion.
        assert_eq!(r.suggestion("    y = x + 1\n\n\n"), "    y = x + 1");
        assert_eq!(r.suggestion("  \n\n"), "");
        // Repeating the next line, or the lines below, is discarded.
        assert_eq!(r.suggestion("    return y"), "");
        assert_eq!(r.suggestion("\n    return y\n"), "");
        assert_eq!(r.suggestion("    return y\n\nprint(f(2))"), "");
        // ...but not when the second line only looks alike.
        assert_eq!(
            r.suggestion("    return y\n    # done"),
            "    return y\n    # done"
        );
        // Text after the cursor: the first line only, without that text.
        let r = Request::new("print(", ")\nx = 1\n");
        assert_eq!(r.suggestion("f(2))"), "f(2)");
        assert_eq!(r.suggestion("f(x, y\nmore\n"), "f(x, y");
        assert_eq!(r.suggestion(")"), "");
        // On the last line nothing is compared with the lines below.
        let r = Request::new("x = 1\n", "");
        assert_eq!(r.suggestion("y = 2\nz = 3"), "y = 2\nz = 3");
    }

    #[test]
    fn prompt_counters_from_prometheus_text() {
        let text = "# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed.\n\
                    # TYPE llamacpp:prompt_tokens_total counter\n\
                    llamacpp:prompt_tokens_total 1234\n\
                    llamacpp:prompt_tokens_cached_total 5678\n\
                    llamacpp:prompt_seconds_total 9.5\n";
        let c = PromptCounters::parse(text).unwrap();
        assert_eq!((c.computed_tokens, c.cached_tokens), (1234, 5678));
        let e = PromptCounters::parse("llamacpp:prompt_tokens_total 3\n").unwrap_err();
        assert!(e.to_string().contains("prompt_tokens_cached_total"), "{e}");
    }

    #[test]
    fn leading_spaces_and_tabs() {
        assert_eq!(remove_leading_spaces("      x", 4), "  x");
        assert_eq!(remove_leading_spaces("\t\tx", 0), "x");
        assert_eq!(remove_leading_spaces(" \t x", 2), " x");
        assert_eq!(remove_leading_spaces("   ", 8), "");
    }
}
