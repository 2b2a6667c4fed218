//! Fill-in-the-middle templates, assembled by concatenating token-id lists (never by formatting a string
//! and re-tokenizing), so every marker is exactly the id the model was trained on and user text can never
//! turn into a marker (the tokenizer's `encode` guarantees that; see `engine::tokenizer`).
//!
//! Code Llama (Meta's `infilling_prompt_tokens`):
//!   PSM `[BOS, ▁<PRE>] + encode(prefix) + [▁<SUF>] + encode_infilling(suffix) + [▁<MID>]`
//!   SPM `[BOS, ▁<PRE>, ▁<SUF>] + encode_infilling(suffix) + [▁<MID>] + encode(prefix)`
//! where `encode` adds SentencePiece's implicit leading space and `encode_infilling` does not.
//! StarCoder/SmolLM use the same two layouts with `<fim_prefix>`, `<fim_suffix>`, `<fim_middle>`;
//! DeepSeek-Coder, Qwen2.5-Coder and CodeGemma are trained on PSM only. A model without FIM markers
//! continues the prefix.

use serde::Serialize;

use codellama_engine::tokenizer::{FimFamily, Tokenizer};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FimTemplate {
    CodeLlama,
    StarCoder,
    DeepSeek,
    Qwen,
    CodeGemma,
    /// No FIM markers: the model continues the text before the cursor.
    Continuation,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FimOrder {
    /// Prefix, suffix, middle.
    Psm,
    /// Suffix first: the cursor sits at the end of the prompt, so typing only appends tokens.
    #[default]
    Spm,
}

impl FimTemplate {
    pub fn name(self) -> &'static str {
        match self {
            FimTemplate::CodeLlama => "codellama",
            FimTemplate::StarCoder => "starcoder",
            FimTemplate::DeepSeek => "deepseek",
            FimTemplate::Qwen => "qwen",
            FimTemplate::CodeGemma => "codegemma",
            FimTemplate::Continuation => "none",
        }
    }

    /// The marker pieces (prefix, suffix, middle) of the template.
    fn marker_pieces(self) -> Option<[&'static str; 3]> {
        Some(match self {
            FimTemplate::CodeLlama => ["▁<PRE>", "▁<SUF>", "▁<MID>"],
            FimTemplate::StarCoder => ["<fim_prefix>", "<fim_suffix>", "<fim_middle>"],
            FimTemplate::DeepSeek => ["<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"],
            FimTemplate::Qwen | FimTemplate::CodeGemma => {
                ["<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"]
            }
            FimTemplate::Continuation => return None,
        })
    }

    /// Tokens that end an infill besides the tokenizer's end-of-generation set.
    fn stop_pieces(self) -> &'static [&'static str] {
        match self {
            FimTemplate::CodeLlama => &["▁<EOT>"],
            FimTemplate::StarCoder => &["<|endoftext|>", "<file_sep>", "<filename>", "<repo_name>"],
            FimTemplate::DeepSeek => &["<｜end▁of▁sentence｜>", "<|EOT|>"],
            FimTemplate::Qwen => &[
                "<|endoftext|>",
                "<|fim_pad|>",
                "<|file_sep|>",
                "<|repo_name|>",
                "<|im_end|>",
            ],
            FimTemplate::CodeGemma => &["<|file_separator|>", "<eos>", "<end_of_turn>"],
            FimTemplate::Continuation => &[],
        }
    }

    /// The repository-level markers (repository name, file separator) the template was trained with.
    fn repo_pieces(self) -> Option<[&'static str; 2]> {
        match self {
            FimTemplate::Qwen => Some(["<|repo_name|>", "<|file_sep|>"]),
            FimTemplate::StarCoder => Some(["<repo_name>", "<file_sep>"]),
            _ => None,
        }
    }

    /// Whether the model was trained on the suffix-first layout.
    pub fn supports_spm(self) -> bool {
        matches!(self, FimTemplate::CodeLlama | FimTemplate::StarCoder)
    }

    /// Whether the prefix is encoded with SentencePiece's implicit leading space (Code Llama's reference).
    fn prefix_dummy_space(self) -> bool {
        matches!(self, FimTemplate::CodeLlama)
    }
}

/// The template that the vocabulary supports (each marker exactly one token).
pub fn detect(tok: &Tokenizer) -> FimTemplate {
    match tok.fim_ids().map(|f| f.family) {
        Some(FimFamily::CodeLlama) => FimTemplate::CodeLlama,
        Some(FimFamily::StarCoder) => FimTemplate::StarCoder,
        Some(FimFamily::DeepSeek) => FimTemplate::DeepSeek,
        Some(FimFamily::Qwen) => {
            if piece_id(tok, "<|file_separator|>").is_some() {
                FimTemplate::CodeGemma
            } else {
                FimTemplate::Qwen
            }
        }
        Some(FimFamily::Other) | None => FimTemplate::Continuation,
    }
}

fn piece_id(tok: &Tokenizer, piece: &str) -> Option<u32> {
    tok.token_id(piece).or_else(|| tok.special_id(piece))
}

/// Marker ids of a template in a given vocabulary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Markers {
    pub prefix: u32,
    pub suffix: u32,
    pub middle: u32,
    pub stop_ids: Vec<u32>,
    /// Repository name and file separator, when the vocabulary has the template's repository markers.
    pub repo: Option<[u32; 2]>,
}

/// Looks up the template's markers; an error names the missing piece.
pub fn markers(tok: &Tokenizer, template: FimTemplate) -> Result<Option<Markers>, String> {
    let Some(pieces) = template.marker_pieces() else {
        return Ok(None);
    };
    let ids: Vec<u32> = pieces
        .iter()
        .map(|p| {
            piece_id(tok, p).ok_or_else(|| {
                format!(
                    "fim_template {} needs the token {p:?}, which this model's vocabulary does not have as one token",
                    template.name()
                )
            })
        })
        .collect::<Result<_, _>>()?;
    let mut stop_ids: Vec<u32> = template
        .stop_pieces()
        .iter()
        .filter_map(|p| piece_id(tok, p))
        .collect();
    // A marker in the output means the model left the middle.
    stop_ids.extend(&ids);
    stop_ids.sort_unstable();
    stop_ids.dedup();
    let repo = template
        .repo_pieces()
        .and_then(|[name, sep]| Some([piece_id(tok, name)?, piece_id(tok, sep)?]));
    Ok(Some(Markers {
        prefix: ids[0],
        suffix: ids[1],
        middle: ids[2],
        stop_ids,
        repo,
    }))
}

/// Other files of the project, shown before the infilling prompt in the repository-level format the
/// model was trained on (Qwen2.5-Coder, StarCoder2):
/// `<repo_name>name\n` then `<file_sep>path\ncontent\n` per file, then `<file_sep>current path\n`.
pub fn repo_context(
    tok: &Tokenizer,
    [name_id, sep_id]: [u32; 2],
    name: &str,
    files: &[(String, String)],
    current: &str,
) -> Vec<u32> {
    let mut ids = vec![name_id];
    ids.extend(tok.encode(&format!("{name}\n"), false));
    for (path, text) in files {
        let newline = if text.ends_with('\n') { "" } else { "\n" };
        ids.push(sep_id);
        ids.extend(tok.encode(&format!("{path}\n{text}{newline}"), false));
    }
    ids.push(sep_id);
    ids.extend(tok.encode(&format!("{current}\n"), false));
    ids
}

/// The prompt's text: `prefix` and `suffix` already cut to the budget, and `middle`, the end of the text
/// before the cursor placed after the middle marker in PSM, as if the model had written it (empty otherwise).
pub struct Parts<'a> {
    pub prefix: &'a str,
    pub middle: &'a str,
    pub suffix: &'a str,
}

/// Assembles the prompt ids; `head` (repository-level context, or nothing) goes right after BOS. The text
/// goes through `encode`, which gives `tok.encode`'s ids (the prompt builder's kept encodings).
pub fn assemble(
    tok: &Tokenizer,
    encode: &dyn Fn(&str, bool) -> Vec<u32>,
    template: FimTemplate,
    markers: Option<&Markers>,
    order: FimOrder,
    head: &[u32],
    Parts {
        prefix,
        middle,
        suffix,
    }: Parts,
) -> Vec<u32> {
    let mut ids = Vec::new();
    if tok.add_bos() {
        ids.extend(tok.bos_id());
    }
    ids.extend(head);
    let Some(m) = markers else {
        ids.extend(encode(prefix, tok.add_space_prefix()));
        return ids;
    };
    let enc_prefix = encode(prefix, template.prefix_dummy_space());
    let enc_suffix = encode(suffix, false);
    match order {
        FimOrder::Spm if template.supports_spm() => {
            ids.extend([m.prefix, m.suffix]);
            ids.extend(enc_suffix);
            ids.push(m.middle);
            ids.extend(enc_prefix);
        }
        _ => {
            ids.push(m.prefix);
            ids.extend(enc_prefix);
            ids.push(m.suffix);
            ids.extend(enc_suffix);
            ids.push(m.middle);
            ids.extend(encode(middle, false));
        }
    }
    ids
}
