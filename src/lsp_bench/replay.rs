//! The typing replay (`bench --lsp --replay`, and under the soak of `bench --lsp --soak`): a seeded,
//! deterministic editing script over real files, played against the real server in real time the way VS Code
//! drives one. Each file is opened with a few function bodies removed and the user types them back: bursts at
//! 6–10 characters per second, pauses of 0.3–2 s, backspaces, jumps to another function and switches to
//! another file (Enter brings the next line's indentation, as editors do); when everything is typed a new
//! round removes other bodies. After every keystroke the replay sends the `didChange` and an inline completion
//! request, cancelling the previous request with `$/cancelRequest` when it is still running. It accounts for
//! every request (answered exactly once, by a result or an error), times the suggestion from a burst's last
//! keystroke, counts the pauses that got one before the next keystroke, and sums the prompt tokens the server
//! reports in `codellama/status` (computed and reused, over the generations that finished; the server does not
//! report the work a cancelled request threw away).

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::{json, Value};

use super::keystrokes::{function_bodies, language_of, percentile};
use codellama_server::status::{PromptTotals, StatusParams};
use codellama_test_support::LspProcess;
use codellama_text::documents::{Document, Pos, PositionEncoding};

const ENC: PositionEncoding = PositionEncoding::Utf16;
/// Function bodies removed per file and round, and the sizes (bytes) worth typing back.
const BODIES_PER_FILE: usize = 4;
const BODY_BYTES: std::ops::RangeInclusive<usize> = 16..=2000;
/// JSON-RPC's RequestCancelled.
const CANCELLED: i64 = -32800;

/// One step of the script.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// The user turns to a file for the first time: `didOpen` with its text as the round has it.
    Open {
        uri: String,
        language: &'static str,
        text: String,
    },
    /// A new round in an open file: its whole text replaced (`didChange` without a range).
    Reset {
        uri: String,
        version: i32,
        text: String,
    },
    /// One keystroke.
    Key(Keystroke),
    /// The burst ended; the user waits this long.
    Pause(Duration),
}

/// One keystroke, `delay` after the previous step: `text` replaces `start..end`; the cursor ends at `cursor`.
#[derive(Debug, Clone, PartialEq)]
pub struct Keystroke {
    pub delay: Duration,
    pub uri: String,
    pub version: i32,
    pub start: Pos,
    pub end: Pos,
    pub text: String,
    pub cursor: Pos,
}

/// A file being edited: its real text, the editor's copy, and this round's removed bodies.
struct File {
    uri: String,
    language: &'static str,
    text: String,
    candidates: Vec<(usize, usize)>,
    doc: Document,
    opened: bool,
    /// Byte ranges of `text`, in order, and how much of each is typed back.
    removed: Vec<(usize, usize)>,
    typed: Vec<usize>,
}

impl File {
    fn new(path: &std::path::Path, text: String) -> Result<Self, String> {
        let mut candidates: Vec<(usize, usize)> = Vec::new();
        for b in function_bodies(&text) {
            // A nested definition lies inside its parent's body, which comes first.
            let outside = candidates.last().is_none_or(|&(_, end)| b.start >= end);
            if outside && BODY_BYTES.contains(&(b.end - b.start)) {
                candidates.push((b.start, b.end));
            }
        }
        if candidates.is_empty() {
            return Err(format!("{}: no function body to type", path.display()));
        }
        let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        Ok(Self {
            uri: format!("file://{}", canonical.display()),
            language: language_of(path),
            doc: Document::new(&text, language_of(path), 1),
            text,
            candidates,
            opened: false,
            removed: Vec::new(),
            typed: Vec::new(),
        })
    }

    /// Removes other bodies (up to [`BODIES_PER_FILE`], chosen by `rng`) and starts the editor's copy again.
    fn start_round(&mut self, rng: &mut StdRng) {
        let mut chosen = rand::seq::index::sample(
            rng,
            self.candidates.len(),
            BODIES_PER_FILE.min(self.candidates.len()),
        )
        .into_vec();
        chosen.sort_unstable();
        self.removed = chosen.into_iter().map(|i| self.candidates[i]).collect();
        self.typed = vec![0; self.removed.len()];
        let version = self.doc.version + 1;
        self.doc = Document::new(&self.current_text(), self.language, version);
    }

    /// The text as the user has it: the removed bodies cut to what is typed back.
    fn current_text(&self) -> String {
        let mut out = String::with_capacity(self.text.len());
        let mut at = 0;
        for (&(start, end), &typed) in self.removed.iter().zip(&self.typed) {
            out.push_str(&self.text[at..start + typed]);
            at = end;
        }
        out.push_str(&self.text[at..]);
        out
    }

    /// The cursor in body `i` (a byte offset into the current text): the end of what is typed of it.
    fn cursor(&self, i: usize) -> usize {
        let missing: usize = (0..i)
            .map(|j| self.removed[j].1 - self.removed[j].0 - self.typed[j])
            .sum();
        self.removed[i].0 + self.typed[i] - missing
    }

    fn unfinished(&self) -> Vec<usize> {
        (0..self.removed.len())
            .filter(|&i| self.typed[i] < self.removed[i].1 - self.removed[i].0)
            .collect()
    }

    /// Replaces `start..end` (bytes of the current text) with `text` in the editor's copy.
    fn edit(&mut self, start: usize, end: usize, text: &str, delay: Duration) -> Step {
        let (a, b) = (
            self.doc.byte_position(start, ENC),
            self.doc.byte_position(end, ENC),
        );
        self.doc.edit(Some((a, b)), text, ENC);
        self.doc.version += 1;
        Step::Key(Keystroke {
            delay,
            uri: self.uri.clone(),
            version: self.doc.version,
            start: a,
            end: b,
            text: text.to_string(),
            cursor: self.doc.byte_position(start + text.len(), ENC),
        })
    }
}

/// The editing script: an endless, deterministic sequence of steps for a seed and a set of files.
pub struct Script {
    rng: StdRng,
    files: Vec<File>,
    active: usize,
    target: usize,
    queue: VecDeque<Step>,
}

impl Script {
    /// A script over the files at these paths, read from disk.
    pub fn read(paths: &[PathBuf], seed: u64) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let files = paths
            .iter()
            .map(|p| {
                std::fs::read_to_string(p)
                    .map(|t| (p.clone(), t))
                    .with_context(|| format!("cannot read {}", p.display()))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Self::new(files, seed).map_err(anyhow::Error::msg)
    }

    /// A script over these files (path and text; at least one function body each).
    pub fn new(files: Vec<(PathBuf, String)>, seed: u64) -> Result<Self, String> {
        if files.is_empty() {
            return Err("the replay needs at least one file".into());
        }
        let mut rng = StdRng::seed_from_u64(seed);
        let mut files = files
            .into_iter()
            .map(|(path, text)| File::new(&path, text))
            .collect::<Result<Vec<_>, _>>()?;
        for f in &mut files {
            f.start_round(&mut rng);
        }
        Ok(Self {
            rng,
            files,
            active: 0,
            target: 0,
            queue: VecDeque::new(),
        })
    }

    /// The next step.
    pub fn next_step(&mut self) -> Step {
        loop {
            if let Some(step) = self.queue.pop_front() {
                return step;
            }
            self.plan_burst();
        }
    }

    /// The editor's copy of each file now (for tests).
    pub fn texts(&self) -> Vec<String> {
        self.files.iter().map(|f| f.doc.text()).collect()
    }

    /// The real texts.
    pub fn originals(&self) -> Vec<&str> {
        self.files.iter().map(|f| f.text.as_str()).collect()
    }

    fn activate(&mut self, file: usize) {
        self.active = file;
        let f = &mut self.files[file];
        if !f.opened {
            f.opened = true;
            self.queue.push_back(Step::Open {
                uri: f.uri.clone(),
                language: f.language,
                text: f.doc.text(),
            });
        }
    }

    /// Moves to a random unfinished body: in this file, else in another file, else in a new round.
    fn choose_target(&mut self) {
        let here = self.files[self.active].unfinished();
        if !here.is_empty() {
            self.target = here[self.rng.random_range(0..here.len())];
            return;
        }
        let others: Vec<usize> = (0..self.files.len())
            .filter(|&i| !self.files[i].unfinished().is_empty())
            .collect();
        if others.is_empty() {
            for f in &mut self.files {
                f.start_round(&mut self.rng);
                if f.opened {
                    self.queue.push_back(Step::Reset {
                        uri: f.uri.clone(),
                        version: f.doc.version,
                        text: f.doc.text(),
                    });
                }
            }
        } else {
            let next = others[self.rng.random_range(0..others.len())];
            self.activate(next);
        }
        self.choose_target();
    }

    /// One burst of keystrokes (typing, or backspaces), maybe after a jump or a file switch, then a pause.
    fn plan_burst(&mut self) {
        self.activate(self.active);
        let finished = !self.files[self.active].unfinished().contains(&self.target);
        if finished || self.rng.random_bool(0.06) {
            // A jump to another function (or the next one, when this one is done).
            self.choose_target();
        } else if self.files.len() > 1 && self.rng.random_bool(0.03) {
            let other =
                (self.active + self.rng.random_range(1..self.files.len())) % self.files.len();
            self.activate(other);
            self.choose_target();
        }
        let per_char = Duration::from_secs_f64(1.0 / self.rng.random_range(6.0..=10.0));
        let backspaces =
            self.files[self.active].typed[self.target] > 0 && self.rng.random_bool(0.15);
        let keys = if backspaces {
            self.rng.random_range(1..=6)
        } else {
            self.rng.random_range(3..=30)
        };
        for _ in 0..keys {
            let delay = per_char.mul_f64(self.rng.random_range(0.8..=1.2));
            let step = if backspaces {
                self.backspace(delay)
            } else {
                self.type_one(delay)
            };
            match step {
                Some(s) => self.queue.push_back(s),
                None => break,
            }
        }
        let pause = Duration::from_secs_f64(self.rng.random_range(0.3..=2.0));
        self.queue.push_back(Step::Pause(pause));
    }

    /// Types the next character of the target body (Enter with the next line's indentation).
    fn type_one(&mut self, delay: Duration) -> Option<Step> {
        let (t, f) = (self.target, &mut self.files[self.active]);
        let (start, end) = f.removed[t];
        let rest = &f.text[start + f.typed[t]..end];
        let c = rest.chars().next()?;
        let mut len = c.len_utf8();
        if c == '\n' {
            let next = &rest[1..];
            len += next.len() - next.trim_start_matches([' ', '\t']).len();
        }
        let chunk = rest[..len].to_string();
        let at = f.cursor(t);
        f.typed[t] += len;
        Some(f.edit(at, at, &chunk, delay))
    }

    /// Deletes the character before the cursor in the target body.
    fn backspace(&mut self, delay: Duration) -> Option<Step> {
        let (t, f) = (self.target, &mut self.files[self.active]);
        let start = f.removed[t].0;
        let len = f.text[start..start + f.typed[t]]
            .chars()
            .next_back()?
            .len_utf8();
        let at = f.cursor(t);
        f.typed[t] -= len;
        Some(f.edit(at - len, at, "", delay))
    }
}

/// What a replay saw.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Tally {
    pub keystrokes: usize,
    pub requests: usize,
    /// Answers with a result (and of them non-empty), the cancelled error, and other errors.
    pub results: usize,
    pub suggestions: usize,
    pub cancelled: usize,
    pub errors: usize,
    /// A second answer to a request, an answer to an id never sent, and requests never answered.
    pub answered_twice: usize,
    pub unknown_answers: usize,
    pub unanswered: usize,
    pub pauses: usize,
    /// Pauses whose burst's last request got a non-empty suggestion before the next keystroke, and the times
    /// from that keystroke to the suggestion (ms).
    pub pauses_with_suggestion: usize,
    pub suggestion_ms: Vec<f64>,
    /// Of those times, each less the time the server reports it spent decoding that suggestion (ms): the
    /// wait a pause adds to the decoding itself (issue 12's goal at 7B: ≤ 300 ms). Only suggestions that
    /// came from a generation have one: one answered at once without (the user typed on through the
    /// previous suggestion, 0–1 ms) is left out.
    pub overhead_ms: Vec<f64>,
    /// Tokens generated and time spent decoding over the answers whose decode time the server reported:
    /// the effective decode speed while typing (speculative decoding included).
    pub decoded_tokens: usize,
    pub decoded_ms: f64,
    /// Pauses of at least [`LONG_PAUSE`], and of them those with a suggestion.
    pub long_pauses: usize,
    pub long_pauses_with_suggestion: usize,
    /// Prompt tokens over every generation, cancelled ones included, as the server last reported them.
    pub totals: PromptTotals,
    /// `window/showMessage` errors and warnings, and the first distinct texts.
    pub shown: usize,
    pub shown_texts: Vec<String>,
    /// The server's peak resident memory (VmHWM) when the replay ended, in MB, where it could be read.
    pub peak_rss_mb: Option<f64>,
}

/// Pauses this long are the ones the goal counts ("≥ 90% of pauses of 1 s get a suggestion").
pub const LONG_PAUSE: Duration = Duration::from_secs(1);

/// p50 and p95 of `ms`.
fn percentiles(ms: &[f64]) -> (f64, f64) {
    let mut ms = ms.to_vec();
    ms.sort_by(f64::total_cmp);
    (percentile(&ms, 0.5), percentile(&ms, 0.95))
}

fn pct(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        100.0 * a as f64 / b as f64
    }
}

impl Tally {
    /// The server's peak resident memory, or why it is missing.
    pub fn peak_rss_text(&self) -> String {
        self.peak_rss_mb
            .map_or("not read".to_string(), |mb| format!("{mb:.0} MB"))
    }

    /// Every request answered exactly once, and nothing answered that was not asked.
    pub fn answered_once(&self) -> bool {
        self.unanswered == 0 && self.answered_twice == 0 && self.unknown_answers == 0
    }

    /// p50 and p95 of the times from a burst's last keystroke to its suggestion (ms).
    pub fn suggestion_percentiles(&self) -> (f64, f64) {
        percentiles(&self.suggestion_ms)
    }

    /// Tokens per second of decoding over the answers, where any was reported.
    pub fn decode_rate(&self) -> Option<f64> {
        (self.decoded_ms > 0.0).then(|| self.decoded_tokens as f64 * 1e3 / self.decoded_ms)
    }

    /// p50 and p95 of the same times less the decoding of each suggestion (ms).
    pub fn overhead_percentiles(&self) -> (f64, f64) {
        percentiles(&self.overhead_ms)
    }

    /// The human-readable account.
    pub fn render(&self) -> String {
        let (p50, p95) = self.suggestion_percentiles();
        let (o50, o95) = self.overhead_percentiles();
        let t = &self.totals;
        format!(
            "requests: {req} for {keys} keystrokes; results {res} ({sug} non-empty), cancelled {can}, other errors {err}\n\
             answered once: {once}; answered twice: {twice}; unanswered: {un}; answers to unknown ids: {unk}\n\
             pauses: {p}, with a suggestion before the next keystroke: {pp:.1}% ({pw}); of {lp} pauses ≥ 1 s: {lpp:.1}%; last keystroke to suggestion: p50 {p50:.0} ms, p95 {p95:.0} ms; less its decoding ({o}): p50 {o50:.0} ms, p95 {o95:.0} ms\n\
             decoding over the answers: {dt} tokens in {dms:.0} ms ({rate})\n\
             prompt tokens over {g} generations ({gc} cancelled): reused {ru}, computed {cp} ({rp:.1}% reused); computed for cancelled requests {cc}, computed while idle {it}, of all computed stopped part-way through a prefill step {ds} ({rs} of them gone on with later); generations on a shorter window {sh}\n\
             server peak RSS: {rss}\n\
             errors/warnings shown: {shown}{texts}",
            req = self.requests,
            keys = self.keystrokes,
            res = self.results,
            sug = self.suggestions,
            can = self.cancelled,
            err = self.errors,
            once = if self.answered_once() { "yes" } else { "NO" },
            twice = self.answered_twice,
            un = self.unanswered,
            unk = self.unknown_answers,
            p = self.pauses,
            pp = pct(self.pauses_with_suggestion, self.pauses),
            pw = self.pauses_with_suggestion,
            lp = self.long_pauses,
            lpp = pct(self.long_pauses_with_suggestion, self.long_pauses),
            o = self.overhead_ms.len(),
            dt = self.decoded_tokens,
            dms = self.decoded_ms,
            rate = self
                .decode_rate()
                .map_or("-".to_string(), |r| format!("{r:.1} tok/s")),
            g = t.generations,
            gc = t.cancelled,
            ru = t.reused_tokens,
            cp = t.computed_tokens,
            rp = pct(t.reused_tokens, t.reused_tokens + t.computed_tokens),
            cc = t.cancelled_computed_tokens,
            ds = t.discarded_tokens,
            rs = t.resumed_tokens,
            it = t.idle_tokens,
            sh = t.shortened,
            rss = self.peak_rss_text(),
            shown = self.shown,
            texts = self
                .shown_texts
                .iter()
                .map(|t| format!("\n  {t}"))
                .collect::<String>(),
        )
    }
}

/// Distinct shown texts kept in the tally.
const SHOWN_TEXTS: usize = 8;

/// What a server answered to a completion request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// A result; `true` when it holds a suggestion.
    Result(bool),
    Cancelled,
    Error,
}

/// What a server under replay reports.
#[derive(Debug, Clone)]
pub enum Report {
    Answer {
        id: i64,
        answer: Answer,
    },
    /// Its prompt token totals so far.
    Totals(PromptTotals),
    /// The time the generation that answered last spent decoding (ms), and the tokens it generated.
    Decoded {
        ms: f64,
        tokens: usize,
    },
    /// An error or warning shown to the user.
    Shown(String),
}

/// A server the replay plays against: ours over LSP, or llama.cpp's as llama.vscode drives it.
pub trait Target {
    /// A step that asks for nothing: `Open` and `Reset`.
    fn document(&mut self, step: &Step) -> Result<(), String>;
    /// Cancels `running` (the previous request, still unanswered) as the editor does, applies the keystroke's
    /// edit and asks for a completion at the cursor. Returns the new request's id.
    fn keystroke(&mut self, key: &Keystroke, running: Option<i64>) -> Result<i64, String>;
    /// What the next message reports (several things, or nothing the replay counts), or `None` once
    /// `until` has passed.
    fn next_reports(&mut self, until: Instant) -> Result<Option<Vec<Report>>, String>;
}

impl Target for LspProcess {
    fn document(&mut self, step: &Step) -> Result<(), String> {
        match step {
            Step::Open {
                uri,
                language,
                text,
            } => self.notify(
                "textDocument/didOpen",
                json!({"textDocument": {"uri": uri, "languageId": language, "version": 1, "text": text}}),
            ),
            Step::Reset { uri, version, text } => self.notify(
                "textDocument/didChange",
                json!({"textDocument": {"uri": uri, "version": version}, "contentChanges": [{"text": text}]}),
            ),
            Step::Key(_) | Step::Pause(_) => {}
        }
        Ok(())
    }

    fn keystroke(&mut self, key: &Keystroke, running: Option<i64>) -> Result<i64, String> {
        let Keystroke {
            uri,
            version,
            start,
            end,
            text,
            cursor,
            ..
        } = key;
        // VS Code cancels the running request when the user types on.
        if let Some(id) = running {
            self.cancel(id);
        }
        let pos = |p: &Pos| json!({"line": p.line, "character": p.character});
        self.notify(
            "textDocument/didChange",
            json!({
                "textDocument": {"uri": uri, "version": version},
                "contentChanges": [{"range": {"start": pos(start), "end": pos(end)}, "text": text}],
            }),
        );
        Ok(self.request(
            "textDocument/inlineCompletion",
            json!({"textDocument": {"uri": uri}, "position": pos(cursor), "context": {"triggerKind": 2}}),
        ))
    }

    fn next_reports(&mut self, until: Instant) -> Result<Option<Vec<Report>>, String> {
        Ok(self.next_message(until)?.map(|msg| lsp_reports(&msg)))
    }
}

/// What an LSP message from our server means to the replay.
fn lsp_reports(msg: &Value) -> Vec<Report> {
    match msg.get("method").and_then(Value::as_str) {
        Some("codellama/status") => return status_reports(&msg["params"]),
        Some("window/showMessage") if msg["params"]["type"].as_u64().is_some_and(|k| k <= 2) => {
            let text = msg["params"]["message"].as_str().unwrap_or("").to_string();
            return vec![Report::Shown(text)];
        }
        Some(_) => return Vec::new(),
        None => {}
    }
    let Some(id) = msg.get("id").and_then(Value::as_i64) else {
        return Vec::new();
    };
    let answer = match msg.get("error") {
        Some(e) if e["code"].as_i64() == Some(CANCELLED) => Answer::Cancelled,
        Some(_) => Answer::Error,
        None => Answer::Result(
            msg["result"]["items"]
                .as_array()
                .is_some_and(|a| !a.is_empty()),
        ),
    };
    vec![Report::Answer { id, answer }]
}

/// A `codellama/status`: the totals a "ready" carries, and the decode time of the generation it follows
/// when that one answered (its `timings`).
fn status_reports(params: &Value) -> Vec<Report> {
    let Ok(status) = serde_json::from_value::<StatusParams>(params.clone()) else {
        return Vec::new();
    };
    let totals = status.totals.map(Report::Totals);
    let decoded = status.timings.map(|t| Report::Decoded {
        ms: t.decode_ms,
        tokens: t.generated_tokens,
    });
    totals.into_iter().chain(decoded).collect()
}

/// The script played against a server, and the account of its requests.
pub struct Replay {
    script: Script,
    /// Requests sent and not answered yet, and those answered.
    pending: HashMap<i64, Instant>,
    answered: HashSet<i64>,
    /// The latest request, its keystroke, and its answer when it came (when, non-empty).
    last: Option<i64>,
    last_key: Instant,
    last_answer: Option<(Instant, bool)>,
    /// The decode time reported since the latest keystroke: the latest request's, as the requests before it
    /// were cancelled (ms).
    last_decoded: Option<f64>,
    pub tally: Tally,
}

impl Replay {
    pub fn new(script: Script) -> Self {
        Self {
            script,
            pending: HashMap::new(),
            answered: HashSet::new(),
            last: None,
            last_key: Instant::now(),
            last_answer: None,
            last_decoded: None,
            tally: Tally::default(),
        }
    }

    /// Plays the script until `deadline` (the step under way is finished). Returns the steps played.
    pub fn run_until(
        &mut self,
        server: &mut dyn Target,
        deadline: Instant,
    ) -> Result<usize, String> {
        let mut steps = 0;
        while Instant::now() < deadline {
            let step = self.script.next_step();
            self.play(server, step)?;
            steps += 1;
        }
        Ok(steps)
    }

    /// Plays the script until `deadline` and on to the end of that burst's pause, so that another server can
    /// take the next steps. Returns the steps played.
    pub fn run_slice(
        &mut self,
        server: &mut dyn Target,
        deadline: Instant,
    ) -> Result<usize, String> {
        let mut steps = 0;
        loop {
            let step = self.script.next_step();
            let pause = matches!(step, Step::Pause(_));
            self.play(server, step)?;
            steps += 1;
            if pause && Instant::now() >= deadline {
                return Ok(steps);
            }
        }
    }

    /// Plays the next `n` steps.
    pub fn run_steps(&mut self, server: &mut dyn Target, n: usize) -> Result<(), String> {
        for _ in 0..n {
            let step = self.script.next_step();
            self.play(server, step)?;
        }
        Ok(())
    }

    fn play(&mut self, server: &mut dyn Target, step: Step) -> Result<(), String> {
        match step {
            Step::Open { .. } | Step::Reset { .. } => server.document(&step)?,
            Step::Key(key) => {
                self.pump(server, Instant::now() + key.delay)?;
                let running = self.last.filter(|id| self.pending.contains_key(id));
                let id = server.keystroke(&key, running)?;
                let now = Instant::now();
                self.pending.insert(id, now);
                (self.last, self.last_key, self.last_answer) = (Some(id), now, None);
                self.last_decoded = None;
                self.tally.keystrokes += 1;
                self.tally.requests += 1;
            }
            Step::Pause(d) => {
                self.pump(server, Instant::now() + d)?;
                let t = &mut self.tally;
                t.pauses += 1;
                let long = d >= LONG_PAUSE;
                t.long_pauses += usize::from(long);
                if let Some((at, true)) = self.last_answer {
                    t.pauses_with_suggestion += 1;
                    t.long_pauses_with_suggestion += usize::from(long);
                    let ms = at.duration_since(self.last_key).as_secs_f64() * 1e3;
                    t.suggestion_ms.push(ms);
                    if let Some(decoded) = self.last_decoded {
                        t.overhead_ms.push(ms - decoded);
                    }
                }
            }
        }
        Ok(())
    }

    /// Takes what the server reports until `until`.
    pub fn pump(&mut self, server: &mut dyn Target, until: Instant) -> Result<(), String> {
        while let Some(reports) = server.next_reports(until)? {
            for report in reports {
                self.account(report);
            }
        }
        Ok(())
    }

    fn account(&mut self, report: Report) {
        let t = &mut self.tally;
        let (id, answer) = match report {
            Report::Answer { id, answer } => (id, answer),
            Report::Totals(totals) => {
                t.totals = totals;
                return;
            }
            Report::Decoded { ms, tokens } => {
                self.last_decoded = Some(ms);
                t.decoded_ms += ms;
                t.decoded_tokens += tokens;
                return;
            }
            Report::Shown(text) => {
                t.shown += 1;
                if t.shown_texts.len() < SHOWN_TEXTS && !t.shown_texts.contains(&text) {
                    t.shown_texts.push(text);
                }
                return;
            }
        };
        if self.pending.remove(&id).is_none() {
            if self.answered.contains(&id) {
                t.answered_twice += 1;
            } else {
                t.unknown_answers += 1;
            }
            return;
        }
        self.answered.insert(id);
        let non_empty = match answer {
            Answer::Cancelled => {
                t.cancelled += 1;
                false
            }
            Answer::Error => {
                t.errors += 1;
                false
            }
            Answer::Result(some) => {
                t.results += 1;
                t.suggestions += usize::from(some);
                some
            }
        };
        if self.last == Some(id) {
            self.last_answer = Some((Instant::now(), non_empty));
        }
    }

    /// Waits up to `timeout` for the requests still running (for a server to finish before another one
    /// plays).
    pub fn settle(&mut self, server: &mut dyn Target, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        while !self.pending.is_empty() && Instant::now() < deadline {
            self.pump(
                server,
                deadline.min(Instant::now() + Duration::from_millis(100)),
            )?;
        }
        Ok(())
    }

    /// Waits up to `timeout` for the requests still running, then a second more for second answers, and
    /// counts the requests left unanswered.
    pub fn finish(&mut self, server: &mut dyn Target, timeout: Duration) -> Result<&Tally, String> {
        self.settle(server, timeout)?;
        self.pump(server, Instant::now() + Duration::from_secs(1))?;
        self.tally.unanswered = self.pending.len();
        Ok(&self.tally)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files() -> Vec<(PathBuf, String)> {
        let py = "import os\n\n\ndef add(a, b):\n    total = a + b\n    return total\n\n\nclass K:\n    def m(self, x):\n        if x:\n            return 1\n        return 2  # é😀\n";
        let rs = "fn main() {\n    let x = 1;\n    println!(\"{x}\");\n}\n\npub fn two() -> u32 {\n    1 + 1\n}\n";
        vec![
            (PathBuf::from("/tmp/replay/a.py"), py.to_string()),
            (PathBuf::from("/tmp/replay/b.rs"), rs.to_string()),
        ]
    }

    /// The "ready" after an answered generation, as the server sends it, gives the replay its totals and its
    /// decode time; a "generating" gives neither.
    #[test]
    fn a_ready_status_reports_totals_and_decode_time() {
        use codellama_server::status::{State, StatusTimings};
        let timings = StatusTimings {
            prefill_ms: 12.0,
            decode_ms: 345.6,
            prompt_tokens: 900,
            reused_tokens: 890,
            moved_tokens: 0,
            computed_tokens: 10,
            discarded_tokens: 0,
            generated_tokens: 16,
            total_ms: 400.0,
            shortened: false,
            idle_tokens: 0,
            idle_discarded_tokens: 0,
            resumed_tokens: 0,
        };
        let totals = PromptTotals {
            generations: 3,
            computed_tokens: 10,
            ..PromptTotals::default()
        };
        let ready = StatusParams {
            timings: Some(timings),
            totals: Some(totals),
            ..StatusParams::new(State::Ready)
        };
        let msg = json!({"jsonrpc": "2.0", "method": "codellama/status", "params": ready});
        match lsp_reports(&msg).as_slice() {
            [Report::Totals(t), Report::Decoded { ms, tokens }] => {
                assert_eq!(*t, totals);
                assert_eq!((*ms, *tokens), (345.6, 16));
            }
            other => panic!("{other:?}"),
        }
        let generating = StatusParams::new(State::Generating);
        let msg = json!({"jsonrpc": "2.0", "method": "codellama/status", "params": generating});
        assert!(lsp_reports(&msg).is_empty());
    }

    /// Plays steps into documents of our own, from the positions alone, as the server would.
    fn apply(docs: &mut HashMap<String, Document>, step: &Step) {
        match step {
            Step::Open { uri, text, .. } | Step::Reset { uri, text, .. } => {
                docs.insert(uri.clone(), Document::new(text, "", 1));
            }
            Step::Key(k) => docs.get_mut(&k.uri).expect("opened before typing").edit(
                Some((k.start, k.end)),
                &k.text,
                ENC,
            ),
            Step::Pause(_) => {}
        }
    }

    /// The script's edits, applied by position the way the server applies them, type every removed body back:
    /// each round ends with the real texts, and the same seed gives the same script.
    #[test]
    fn a_round_types_the_files_back_and_the_seed_fixes_the_script() {
        let mut script = Script::new(files(), 3).unwrap();
        let mut again = Script::new(files(), 3).unwrap();
        let mut docs: HashMap<String, Document> = HashMap::new();
        let (mut resets, mut keys, mut backspaces, mut opens) = (0, 0, 0, 0);
        let mut previous = Step::Pause(Duration::ZERO);
        for _ in 0..20_000 {
            let step = script.next_step();
            assert_eq!(step, again.next_step());
            let round_ends =
                matches!(step, Step::Reset { .. }) && !matches!(previous, Step::Reset { .. });
            if round_ends {
                // Before the new round's text replaces it, every file was typed back in full.
                let want: Vec<&str> = script.originals();
                for (uri, doc) in &docs {
                    let i = usize::from(uri.ends_with(".rs"));
                    assert_eq!(doc.text(), want[i], "{uri}");
                }
            }
            match &step {
                Step::Reset { .. } => resets += 1,
                Step::Open { .. } => opens += 1,
                Step::Key(k) if k.text.is_empty() => backspaces += 1,
                Step::Key(_) => keys += 1,
                Step::Pause(d) => assert!((0.3..=2.0).contains(&d.as_secs_f64())),
            }
            apply(&mut docs, &step);
            previous = step;
        }
        let texts = script.texts();
        for (uri, doc) in &docs {
            assert_eq!(doc.text(), texts[usize::from(uri.ends_with(".rs"))]);
        }
        assert_eq!(opens, 2, "both files opened once");
        assert!(
            resets >= 4 && keys > 1000 && backspaces > 50,
            "{resets} {keys} {backspaces}"
        );
    }
}
