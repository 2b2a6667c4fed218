//! Post-processing: turns what the model generated into a suggestion worth showing, and decides inside the
//! decode loop when a suggestion is complete.
//!
//! Pure text in, text out: a [`Context`] (document text before and after the cursor, and its [`Language`]) and
//! the model's raw generated text give a suggestion or nothing. No LSP types, no engine types.
//!
//! Two entry points share one implementation:
//! - [`finalize`] applies every rule to the final generated text;
//! - [`StreamStopper::check`] runs inside the decode loop after each token and says `Stop { at }` as soon as a
//!   rule is certain the suggestion ends at byte `at`, so the engine stops generating. For every rule-based
//!   stop, `finalize(&raw[..at]) == finalize(raw)` for any continuation `raw`.
//!
//! How: the *cut* rules (single line, indentation scope, max lines, next-line repeat, brackets, repetition)
//! all run in one forward scan of the generated text (`scan.rs`), each deciding only from text it has already
//! seen; the scan stops at the first cut. Streaming calls that scan on the text so far, `finalize` calls it on
//! the whole text (then again on what was kept, until nothing changes) and afterwards applies the *shaping*
//! rules (rest-of-line overlap, trim, line endings) that look at the end of the text.
//!
//! One file per rule; each rule can be switched off through [`Config::disabled_rules`], which is how the
//! golden tests prove every rule matters.

mod analysis;
mod brackets;
mod closing_line;
mod lexer;
mod line_endings;
mod max_lines;
mod next_line;
mod repetition;
mod rest_of_line;
mod scan;
mod scope;
mod single_line;
mod text;
mod trim;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

pub use crate::language::Language;

use analysis::Analysis;

/// The document around the cursor.
#[derive(Clone, Copy, Debug)]
pub struct Context<'a> {
    /// Document text before the cursor. Pass the whole document up to the cursor when possible: bracket
    /// balancing only knows the brackets opened in it (a tail that starts at a line boundary also works).
    pub prefix: &'a str,
    /// Document text after the cursor.
    pub suffix: &'a str,
    /// The document's language.
    pub language: Language,
}

impl<'a> Context<'a> {
    pub fn new(prefix: &'a str, suffix: &'a str, language: Language) -> Self {
        Context {
            prefix,
            suffix,
            language,
        }
    }
}

/// Whether a suggestion is one line or a block.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Single line when there is text right of the cursor on its line, a block otherwise. A `}` the editor
    /// auto-closed (`{║}`, `{║});`) does not count as text.
    #[default]
    Auto,
    /// Always one line. At the end of a line the suggestion may start on the next line (`\n` + one line).
    SingleLine,
    /// Always a block, even in the middle of a line.
    Block,
}

/// One post-processing rule, named for configuration and golden tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rule {
    /// In single-line mode, the suggestion ends at the end of its first line.
    SingleLine,
    /// A block ends where a generated line dedents below the cursor's block; a dedented closing line
    /// (`}`, `end`) is kept and ends it, a continuation (`} else {`, `else:`) carries on.
    Scope,
    /// A suggestion has at most [`Config::max_lines`] lines.
    MaxLines,
    /// A generated line that repeats the next non-blank line of the suffix, and everything after it, is dropped.
    NextLine,
    /// Text at the end of the suggestion that re-types the rest of the cursor's line is dropped.
    RestOfLine,
    /// When the rest of the line is a brace the editor closed (`{║}`), a block suggestion ends with a line
    /// break and the indentation of the brace's line, so the brace lands below the block.
    ClosingLine,
    /// A closing bracket or quote that nothing left open can take (because the suggestion did not open it
    /// and the suffix already closes what is open before the cursor) ends the suggestion before it.
    Brackets,
    /// Runaway repetition ends the suggestion: a line or block of lines repeated
    /// [`Config::repeated_lines`] times keeps only its first copy; a line where a short chunk repeats back to
    /// back over [`Config::repeated_chunk_chars`] characters is dropped.
    Repetition,
    /// A line that opens a Markdown code fence (```` ``` ````) outside a string ends the suggestion before
    /// it: chat-trained models close their answer with one, and no source file of a known programming
    /// language wants it (Markdown and other files keep it).
    Fence,
    /// Trailing whitespace is removed from every line, and trailing blank lines are dropped.
    Trim,
    /// The suggestion's line breaks are the document's (`\r\n` or `\n`).
    LineEndings,
}

impl Rule {
    /// Every rule, in the order they apply.
    pub const ALL: [Rule; 11] = [
        Rule::SingleLine,
        Rule::Scope,
        Rule::MaxLines,
        Rule::NextLine,
        Rule::Brackets,
        Rule::Repetition,
        Rule::Fence,
        Rule::RestOfLine,
        Rule::Trim,
        Rule::ClosingLine,
        Rule::LineEndings,
    ];

    /// The configuration name (`snake_case`).
    pub fn name(self) -> &'static str {
        match self {
            Rule::SingleLine => "single_line",
            Rule::Scope => "scope",
            Rule::MaxLines => "max_lines",
            Rule::NextLine => "next_line",
            Rule::RestOfLine => "rest_of_line",
            Rule::ClosingLine => "closing_line",
            Rule::Brackets => "brackets",
            Rule::Repetition => "repetition",
            Rule::Fence => "fence",
            Rule::Trim => "trim",
            Rule::LineEndings => "line_endings",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A configuration value that names no rule or mode.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("unknown post-processing rule `{0}`; known rules: single_line, scope, max_lines, next_line, brackets, repetition, rest_of_line, trim, closing_line, line_endings")]
    UnknownRule(String),
    #[error("unknown completion mode `{0}`; expected auto, single_line or block")]
    UnknownMode(String),
}

impl FromStr for Rule {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Rule, ParseError> {
        Rule::ALL
            .into_iter()
            .find(|r| r.name() == s.trim())
            .ok_or_else(|| ParseError::UnknownRule(s.to_string()))
    }
}

impl FromStr for Mode {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Mode, ParseError> {
        match s.trim() {
            "auto" => Ok(Mode::Auto),
            "single_line" => Ok(Mode::SingleLine),
            "block" => Ok(Mode::Block),
            _ => Err(ParseError::UnknownMode(s.to_string())),
        }
    }
}

/// [`Config::time_budget`] by default: a suggestion that comes after the user typed on is lost, and pauses
/// in typing are mostly 0.3–2 s; with it, a model too slow for a whole block in that time still shows
/// its first complete lines (measured with `bench --lsp --replay`, see the README).
pub const DEFAULT_TIME_BUDGET: Duration = Duration::from_millis(500);

/// Post-processing settings. `Config::default()` is what the server uses.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Single line, block, or decided from the cursor position (default: auto).
    pub mode: Mode,
    /// The most lines a block suggestion may have (default 16; 0 counts as 1).
    pub max_lines: usize,
    /// A line, or a block of up to 8 lines, repeated back to back this many times is runaway repetition and
    /// only its first copy is kept (default 3; below 2 counts as 2).
    pub repeated_lines: usize,
    /// Within one line, a chunk of up to 16 characters (with a letter or digit, without a comma) repeated back
    /// to back over at least this many characters is runaway repetition and the line is dropped (default 48).
    pub repeated_chunk_chars: usize,
    /// Streaming only: once the generated text holds a complete line with content and this much time has
    /// passed since the suggestion was asked for, stop at the last line break (default 500 ms;
    /// `Duration::MAX` disables it).
    pub time_budget: Duration,
    /// Rules to skip (default none).
    pub disabled_rules: Vec<Rule>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            mode: Mode::Auto,
            max_lines: 16,
            repeated_lines: 3,
            repeated_chunk_chars: 48,
            time_budget: DEFAULT_TIME_BUDGET,
            disabled_rules: Vec::new(),
        }
    }
}

impl Config {
    /// Whether `rule` runs.
    pub fn enabled(&self, rule: Rule) -> bool {
        !self.disabled_rules.contains(&rule)
    }

    /// This configuration with `rule` switched off.
    pub fn without(mut self, rule: Rule) -> Self {
        if self.enabled(rule) {
            self.disabled_rules.push(rule);
        }
        self
    }
}

/// Applies every rule to the model's final output; `None` when nothing worth showing is left.
pub fn finalize(ctx: &Context<'_>, config: &Config, raw: &str) -> Option<String> {
    finalize_analyzed(&Analysis::new(ctx, config), config, raw)
}

fn finalize_analyzed(an: &Analysis, config: &Config, raw: &str) -> Option<String> {
    let mut kept = raw;
    while let Some(cut) = scan::scan(an, config, kept, true) {
        if cut.at >= kept.len() {
            break;
        }
        kept = &kept[..cut.at];
    }
    let mut out = kept.to_string();
    if config.enabled(Rule::RestOfLine) {
        out = rest_of_line::apply(an, &out);
    }
    if config.enabled(Rule::Trim) {
        out = trim::apply(an, &out);
    }
    if config.enabled(Rule::ClosingLine) {
        out = closing_line::apply(an, &out);
    }
    if out.trim().is_empty() {
        return None;
    }
    if config.enabled(Rule::LineEndings) {
        out = line_endings::apply(an, &out);
    }
    Some(out)
}

/// What the decode loop should do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamDecision {
    /// Generate another token.
    Continue,
    /// Stop: the suggestion is complete at byte offset `at` of the generated text; nothing after it survives
    /// post-processing.
    Stop { at: usize, reason: StopReason },
}

/// Why the decode loop was told to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// A rule cut the suggestion; `finalize` gives the same result on the cut text as on any continuation.
    Rule(Rule),
    /// [`Config::time_budget`] ran out; the cut is at the last line break.
    TimeBudget,
}

/// Runs the post-processing rules inside the decode loop.
///
/// Create one per request (the context analysis happens once, here), then call [`check`](Self::check) with
/// all text generated so far after each token. Once it says `Stop`, it keeps saying the same. A check costs
/// time proportional to the new text plus the unfinished last line, not to everything generated.
#[derive(Clone, Debug)]
pub struct StreamStopper {
    analysis: Analysis,
    config: Config,
    /// The scan, resting at the start of the last unfinished line seen, and the text before that line.
    scanner: scan::Scanner,
    read: String,
    stopped: Option<StreamDecision>,
}

impl StreamStopper {
    pub fn new(ctx: &Context<'_>, config: &Config) -> Self {
        let analysis = Analysis::new(ctx, config);
        StreamStopper {
            scanner: scan::Scanner::new(&analysis, config),
            analysis,
            config: config.clone(),
            read: String::new(),
            stopped: None,
        }
    }

    /// `generated_so_far`: everything generated for this request; `elapsed`: time since decoding started.
    pub fn check(&mut self, generated_so_far: &str, elapsed: Duration) -> StreamDecision {
        if let Some(done) = self.stopped {
            return done;
        }
        // Each call normally extends the previous text; anything else starts the scan over.
        if !generated_so_far.starts_with(self.read.as_str()) {
            self.scanner = scan::Scanner::new(&self.analysis, &self.config);
            self.read.clear();
        }
        let cut = self
            .scanner
            .scan(&self.analysis, &self.config, generated_so_far, false);
        if let Some(new) = generated_so_far.get(self.read.len()..self.scanner.pos()) {
            self.read.push_str(new);
        }
        let decision = if let Some(cut) = cut {
            StreamDecision::Stop {
                at: cut.at,
                reason: StopReason::Rule(cut.rule),
            }
        } else if elapsed >= self.config.time_budget {
            match text::last_break_after_content(generated_so_far) {
                Some(at) => StreamDecision::Stop {
                    at,
                    reason: StopReason::TimeBudget,
                },
                None => StreamDecision::Continue,
            }
        } else {
            StreamDecision::Continue
        };
        if decision != StreamDecision::Continue {
            self.stopped = Some(decision);
        }
        decision
    }

    /// Same as [`finalize`] with this stopper's context and configuration.
    pub fn finalize(&self, raw: &str) -> Option<String> {
        finalize_analyzed(&self.analysis, &self.config, raw)
    }
}

#[cfg(test)]
mod tests;
