//! Prompt building: the exact prompts each model was trained on, assembled from token ids within a token
//! budget. `fim` holds the fill-in-the-middle templates, `budget` the truncation rules, `parts` the
//! encodings kept between requests (a keystroke tokenizes only the lines it changed), `chat` the
//! instruction formats used by code actions. No LSP types here: the server and the CLI both call this.

pub mod budget;
pub mod chat;
pub mod fim;
mod parts;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::Serialize;

pub use budget::Truncation;
use codellama_engine::tokenizer::Tokenizer;
pub use fim::{FimOrder, FimTemplate};

/// Tokens kept free for rounding differences between per-line counts and the final encoding.
const SLACK_TOKENS: usize = 4;

/// Tokens of a FIM prompt besides the text: BOS and three markers, and the slack.
const FIXED_TOKENS: usize = 4 + SLACK_TOKENS;

/// The smallest budget of text (prefix, suffix and other files) of a shorter prompt
/// ([`PromptBuilder::fim_and_shorter`]): about 25 lines of code.
pub const MIN_SHORT_BUDGET: usize = 256;

/// How FIM prompts are built.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptConfig {
    /// `None`: detect from the vocabulary.
    pub template: Option<FimTemplate>,
    pub order: FimOrder,
    /// Share of the budget for the prefix relative to the suffix (3 means 3:1).
    pub prefix_suffix_ratio: f32,
    /// Tokens of other open documents placed before the prefix (0: none, the default; at most a third
    /// of the budget).
    pub extra_context_tokens: usize,
}

impl Default for PromptConfig {
    fn default() -> Self {
        Self {
            template: None,
            order: FimOrder::Spm,
            prefix_suffix_ratio: 3.0,
            extra_context_tokens: 0,
        }
    }
}

/// Another document offered as context (most recently used first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextChunk {
    pub path: String,
    pub text: String,
}

/// The text around the cursor.
#[derive(Debug, Clone, Default)]
pub struct FimInput<'a> {
    pub prefix: &'a str,
    /// The document line `prefix` starts on (0: `prefix` is all the text before the cursor): the prompt's
    /// head moves in steps counted from the document's top (see `budget`).
    pub first_line: usize,
    pub suffix: &'a str,
    pub path: Option<&'a str>,
    pub language_id: Option<&'a str>,
    /// Other documents, most recently used first; used when `extra_context_tokens` allows.
    pub extra: &'a [ContextChunk],
    /// Token healing: leave the prefix's last token out of the prompt, so the model writes it again
    /// (constrained to the same text, see [`BuiltPrompt::heal`]) instead of continuing from a token
    /// boundary it rarely saw in training (after indentation, in the middle of an identifier).
    pub heal: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct BuiltPrompt {
    pub ids: Vec<u32>,
    /// The template name (`codellama`, `starcoder`, ..., `none`) and order actually used.
    pub template: String,
    pub order: FimOrder,
    /// Ids that end this kind of generation, beyond the model's end-of-generation tokens.
    pub stop_ids: Vec<u32>,
    pub truncated: Truncation,
    /// Byte offset in the input prefix where the kept prefix starts, and kept suffix length.
    pub prefix_start: usize,
    pub suffix_len: usize,
    /// Paths of the other documents included before the prefix.
    pub context_paths: Vec<String>,
    /// The end of the prefix left out of the prompt (token healing): the generation must start with it,
    /// and it is not part of the suggestion. Empty: no healing.
    pub heal: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    #[error("{0}")]
    Template(String),
    #[error("the context window ({window} tokens) leaves no room for a prompt after {max_tokens} generated tokens")]
    NoRoom { window: usize, max_tokens: usize },
    #[error("{0}")]
    Chat(String),
}

pub struct PromptBuilder {
    tokenizer: Arc<Tokenizer>,
    template: FimTemplate,
    markers: Option<fim::Markers>,
    order: FimOrder,
    ratio: f32,
    extra_tokens: usize,
    warned_order: AtomicBool,
    /// Every count and encoding of the text around the cursor goes through here.
    parts: parts::Parts,
}

impl PromptBuilder {
    pub fn new(tokenizer: Arc<Tokenizer>, cfg: &PromptConfig) -> Result<Self, PromptError> {
        let template = cfg.template.unwrap_or_else(|| fim::detect(&tokenizer));
        let markers = fim::markers(&tokenizer, template).map_err(PromptError::Template)?;
        if template == FimTemplate::Continuation {
            tracing::info!("the model has no fill-in-the-middle tokens: completions continue the text before the cursor");
        }
        Ok(Self {
            template,
            markers,
            order: cfg.order,
            ratio: cfg.prefix_suffix_ratio,
            extra_tokens: cfg.extra_context_tokens,
            warned_order: AtomicBool::new(false),
            parts: parts::Parts::new(tokenizer.clone()),
            tokenizer,
        })
    }

    pub fn template(&self) -> FimTemplate {
        self.template
    }

    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tokenizer
    }

    /// The order actually used (SPM falls back to PSM for models trained on PSM only).
    pub fn order(&self) -> FimOrder {
        if self.order == FimOrder::Spm && !self.template.supports_spm() {
            if !self.warned_order.swap(true, Ordering::Relaxed) && self.markers.is_some() {
                tracing::info!(
                    "fim_order spm: {} models are trained on PSM only, using psm",
                    self.template.name()
                );
            }
            return FimOrder::Psm;
        }
        self.order
    }

    fn count(&self, text: &str) -> usize {
        self.parts.count(text)
    }

    /// Builds the FIM prompt for `input`, leaving `max_tokens` of the `context_window` for the answer.
    pub fn fim(
        &self,
        input: &FimInput,
        max_tokens: usize,
        context_window: usize,
    ) -> Result<BuiltPrompt, PromptError> {
        self.parts.next_request();
        self.build(input, max_tokens, context_window)
    }

    /// [`Self::fim`], then the same prompt in smaller windows, each `step` tokens less than the one before
    /// (at least an eighth of the way down to the smallest), while the text left for the prompt is at
    /// least [`MIN_SHORT_BUDGET`] tokens: the prompts an engine may answer a cold request from
    /// (`GenerateRequest::shorter`). Each is shorter than the one before and heals the same token; the
    /// list stops where one would not be shorter (a document that fits a smaller window whole).
    pub fn fim_and_shorter(
        &self,
        input: &FimInput,
        max_tokens: usize,
        context_window: usize,
        step: usize,
    ) -> Result<Vec<BuiltPrompt>, PromptError> {
        let mut prompts = vec![self.fim(input, max_tokens, context_window)?];
        let smallest = max_tokens + FIXED_TOKENS + MIN_SHORT_BUDGET;
        let step = step.max(context_window.saturating_sub(smallest) / 8).max(1);
        let mut window = context_window.saturating_sub(step);
        while window >= smallest {
            let Ok(p) = self.build(input, max_tokens, window) else {
                break;
            };
            let last = prompts.last().expect("the whole window's");
            if p.ids.len() >= last.ids.len() || p.heal != last.heal {
                break;
            }
            prompts.push(p);
            window -= step;
        }
        Ok(prompts)
    }

    /// [`Self::fim`] within the current request (the parts it encodes are kept for the next one).
    fn build(
        &self,
        input: &FimInput,
        max_tokens: usize,
        context_window: usize,
    ) -> Result<BuiltPrompt, PromptError> {
        let budget = context_window
            .checked_sub(max_tokens + FIXED_TOKENS)
            .filter(|b| *b > 0)
            .ok_or(PromptError::NoRoom {
                window: context_window,
                max_tokens,
            })?;
        let order = self.order();
        let heal_len = if input.heal {
            self.healed_tail(input.prefix)
        } else {
            0
        };
        let (prefix_text, heal) = input.prefix.split_at(input.prefix.len() - heal_len);
        let suffix = if self.markers.is_some() {
            input.suffix
        } else {
            ""
        };
        let count = |t: &str| self.count(t);
        let (files, context_paths) = self.extra_files(input, (budget / 3).min(self.extra_tokens));
        // Templates trained on whole repositories get the files in that format, with their own markers;
        // the others get them as text before the prefix, each headed by its path in a comment.
        let repo_ids = match (self.markers.as_ref().and_then(|m| m.repo), files.is_empty()) {
            (Some(repo), false) => fim::repo_context(
                &self.tokenizer,
                repo,
                &project_name(&context_paths, input.path),
                &files,
                input.path.unwrap_or("current"),
            ),
            _ => Vec::new(),
        };
        let extra = if repo_ids.is_empty() {
            files
                .iter()
                .map(|(path, body)| format!("{}{body}\n\n", path_comment(path)))
                .collect::<String>()
        } else {
            String::new()
        };
        let budget = budget - (count(&extra) + repo_ids.len()).min(budget - 1);
        // Needs are measured only up to what could possibly fit, so huge files stay cheap.
        let prefix_need = count(tail(prefix_text, budget * 24)).min(budget + 1);
        let suffix_need = count(head(suffix, budget * 24)).min(budget + 1);
        let (mut pb, mut sb) = budget::split(budget, self.ratio, prefix_need, suffix_need);
        for _ in 0..4 {
            let (pstart, pdrop) = budget::fit_prefix(prefix_text, input.first_line, pb, &count);
            let (slen, sdrop) = budget::fit_suffix(suffix, sb, &count);
            // Only where PSM is all the model knows: elsewhere SPM keeps the cache valid while typing,
            // and a PSM prompt asked for stays the reference layout.
            let mid = if self.markers.is_some() && !self.template.supports_spm() {
                budget::middle_start(prefix_text, input.first_line, pstart)
            } else {
                prefix_text.len()
            };
            let prefix = if extra.is_empty() {
                std::borrow::Cow::Borrowed(&prefix_text[pstart..mid])
            } else {
                std::borrow::Cow::Owned(format!("{extra}{}", &prefix_text[pstart..mid]))
            };
            let parts = fim::Parts {
                prefix: &prefix,
                middle: &prefix_text[mid..],
                suffix: &suffix[..slen],
            };
            let ids = fim::assemble(
                &self.tokenizer,
                &|text, dummy_prefix| self.parts.encode(text, dummy_prefix),
                self.template,
                self.markers.as_ref(),
                order,
                &repo_ids,
                parts,
            );
            let limit = context_window - max_tokens;
            if ids.len() <= limit {
                return Ok(BuiltPrompt {
                    ids,
                    template: self.template.name().to_string(),
                    order: if self.markers.is_some() {
                        order
                    } else {
                        FimOrder::Psm
                    },
                    stop_ids: self
                        .markers
                        .as_ref()
                        .map(|m| m.stop_ids.clone())
                        .unwrap_or_default(),
                    truncated: Truncation {
                        prefix_lines: pdrop,
                        suffix_lines: if self.markers.is_some() { sdrop } else { 0 },
                    },
                    prefix_start: pstart,
                    suffix_len: slen,
                    context_paths,
                    heal: heal.to_string(),
                });
            }
            // Per-line counts underestimated the whole: shrink both sides by the overflow and retry.
            let over = ids.len() - limit;
            pb = pb.saturating_sub(over * 3 / 4 + 1);
            sb = sb.saturating_sub(over / 4 + 1);
        }
        Err(PromptError::NoRoom {
            window: context_window,
            max_tokens,
        })
    }
}

impl PromptBuilder {
    /// How many bytes at the end of `prefix` its last token stands for (0: nothing to heal). Only the
    /// last line or two are encoded: pre-tokenizers split at line breaks, so earlier text does not
    /// change the last token.
    fn healed_tail(&self, prefix: &str) -> usize {
        let trimmed = prefix.trim_end_matches('\n');
        let before_last = trimmed.char_indices().last().map_or(0, |(i, _)| i);
        let line_start = prefix[..before_last].rfind('\n').map_or(0, |i| i + 1);
        let text = tail(&prefix[line_start..], 512);
        let Some(&last) = self.tokenizer.encode(text, false).last() else {
            return 0;
        };
        let bytes = self.tokenizer.token_bytes(last);
        let n = bytes.len();
        let fits = n > 0 && prefix.as_bytes().ends_with(bytes);
        if fits && prefix.is_char_boundary(prefix.len() - n) {
            n
        } else {
            0
        }
    }

    /// Other documents to show before the prefix, as (path, text) within `limit` tokens: most recently
    /// used first, duplicates and the current document skipped, each cut at whole lines from its end.
    fn extra_files(&self, input: &FimInput, limit: usize) -> (Vec<(String, String)>, Vec<String>) {
        let mut files: Vec<(String, String)> = Vec::new();
        let mut used = 0;
        for chunk in input.extra {
            if used + 16 > limit {
                break;
            }
            if Some(chunk.path.as_str()) == input.path
                || files
                    .iter()
                    .any(|(p, t)| *p == chunk.path || *t == chunk.text)
                || chunk.text.trim().is_empty()
            {
                continue;
            }
            let header = path_comment(&chunk.path);
            let room = limit - used - self.count(&header).min(limit - used);
            let body = head_lines(&chunk.text, room, &|t| self.count(t));
            if body.trim().is_empty() {
                continue;
            }
            let body = body.strip_suffix('\n').unwrap_or(body);
            used += self.count(&header) + self.count(body) + 1;
            files.push((chunk.path.clone(), body.to_string()));
        }
        let paths = files.iter().map(|(p, _)| p.clone()).collect();
        (files, paths)
    }
}

/// The name given to the repository in repository-level prompts: the folder the files share (the
/// models saw real repository names there; any short name works).
fn project_name(paths: &[String], current: Option<&str>) -> String {
    let dirs = paths.iter().map(String::as_str).chain(current).map(|p| {
        std::path::Path::new(p)
            .parent()
            .unwrap_or(std::path::Path::new(""))
    });
    let common = dirs.reduce(|a, b| {
        let mut c = a;
        while !b.starts_with(c) {
            c = c.parent().unwrap_or(std::path::Path::new(""));
        }
        c
    });
    common
        .and_then(|c| c.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "project".to_string())
}

/// `# path` / `// path` / `/* path */` in the comment syntax of the file's language.
fn path_comment(path: &str) -> String {
    let lang = crate::language::Language::from_path(std::path::Path::new(path));
    match (lang.line_comment(), lang.block_comment()) {
        (Some(c), _) => format!("{c} {path}\n"),
        (None, Some((open, close))) => format!("{open} {path} {close}\n"),
        (None, None) => format!("// {path}\n"),
    }
}

/// The longest run of whole leading lines of `text` within `limit` tokens.
fn head_lines<'t>(text: &'t str, limit: usize, count: &dyn Fn(&str) -> usize) -> &'t str {
    let (len, _) = budget::fit_suffix(text, limit, count);
    let kept = &text[..len];
    match kept.rfind('\n') {
        Some(i) if i + 1 < kept.len() => &kept[..i + 1],
        _ => kept,
    }
}

fn tail(s: &str, max_bytes: usize) -> &str {
    let mut i = s.len().saturating_sub(max_bytes);
    while !s.is_char_boundary(i) {
        i += 1;
    }
    &s[i..]
}

fn head(s: &str, max_bytes: usize) -> &str {
    let mut i = max_bytes.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    &s[..i]
}
