//! Byte-level BPE pre-tokenizers, selected by `tokenizer.ggml.pre`. Each is a list of regexes applied in
//! turn: every regex splits each current piece into its matches and the text between them ("isolated"
//! splitting), and merges never cross piece boundaries. The regexes are the ones llama.cpp uses
//! (`src/llama-vocab.cpp`, `llm_tokenizer_bpe`).

use tokenizers::utils::SysRegex;

use super::{LineCuts, TokenizerError};

/// GPT-2's split, also the second stage of StarCoder/SmolLM.
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";

/// Llama 3 (case-insensitive contractions spelled out, numbers in runs of up to three digits).
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen2: like Llama 3 but one digit per piece.
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

struct Spec {
    names: &'static [&'static str],
    regexes: &'static [&'static str],
    /// Llama 3 style: a pre-token that is itself a vocabulary piece is emitted whole, without merging.
    ignore_merges: bool,
    /// llama.cpp's default for `add_bos_token` with this pre-tokenizer.
    add_bos: bool,
    /// Where the split never joins text across a line start (see [`LineCuts`]).
    line_cuts: LineCuts,
}

const SPECS: &[Spec] = &[
    Spec {
        names: &["default"],
        regexes: &[r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", "[0-9][0-9][0-9]"],
        ignore_merges: false,
        add_bos: false,
        line_cuts: LineCuts::BetweenContent,
    },
    Spec {
        names: &["llama-bpe", "llama3", "llama-v3"],
        regexes: &[LLAMA3],
        ignore_merges: true,
        add_bos: true,
        line_cuts: LineCuts::BeforeContent,
    },
    Spec {
        names: &["smollm", "starcoder", "refact", "codeshell"],
        regexes: &[r"\p{N}", GPT2],
        ignore_merges: false,
        add_bos: false,
        line_cuts: LineCuts::BetweenContent,
    },
    Spec {
        names: &["gpt-2", "phi-2"],
        regexes: &[GPT2],
        ignore_merges: false,
        add_bos: false,
        line_cuts: LineCuts::BetweenContent,
    },
    Spec {
        names: &["deepseek-coder"],
        regexes: &[
            r"[\r\n]",
            r"\s?\p{L}+",
            r"\s?\p{P}+",
            "[\u{4E00}-\u{9FA5}\u{0800}-\u{4E00}\u{AC00}-\u{D7FF}]+",
            r"\p{N}",
        ],
        ignore_merges: false,
        add_bos: false,
        line_cuts: LineCuts::Every,
    },
    Spec {
        names: &["qwen2", "deepseek-r1-qwen"],
        regexes: &[QWEN2],
        ignore_merges: false,
        add_bos: false,
        line_cuts: LineCuts::BeforeContent,
    },
];

pub(super) struct PreTokenizer {
    regexes: Vec<SysRegex>,
    ignore_merges: bool,
    add_bos: bool,
    line_cuts: LineCuts,
}

impl PreTokenizer {
    /// The pre-tokenizer llama.cpp uses for `name`; an unknown name is an error listing the known ones.
    pub(super) fn by_name(name: &str) -> Result<Self, TokenizerError> {
        let spec = SPECS
            .iter()
            .find(|s| s.names.contains(&name))
            .ok_or_else(|| TokenizerError::UnknownPreTokenizer {
                name: name.to_owned(),
                known: known_names(),
            })?;
        let regexes = spec
            .regexes
            .iter()
            .map(|re| {
                SysRegex::new(re)
                    .map_err(|e| TokenizerError::Invalid(format!("pre-tokenizer {name}: {e}")))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            regexes,
            ignore_merges: spec.ignore_merges,
            add_bos: spec.add_bos,
            line_cuts: spec.line_cuts,
        })
    }

    pub(super) fn ignore_merges(&self) -> bool {
        self.ignore_merges
    }

    pub(super) fn add_bos(&self) -> bool {
        self.add_bos
    }

    pub(super) fn line_cuts(&self) -> LineCuts {
        self.line_cuts
    }

    /// Splits `text` into pre-tokens; concatenated they give back `text`.
    pub(super) fn split<'t>(&self, text: &'t str) -> Vec<&'t str> {
        let mut pieces = vec![(0, text.len())];
        for regex in &self.regexes {
            pieces = pieces
                .into_iter()
                .flat_map(|(start, end)| isolate(regex, text, start, end))
                .collect();
        }
        pieces
            .into_iter()
            .map(|(start, end)| &text[start..end])
            .collect()
    }
}

/// Splits `text[start..end]` into regex matches and the gaps between them (both kept, none empty).
fn isolate(regex: &SysRegex, text: &str, start: usize, end: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut last = start;
    for (match_start, match_end) in regex.find_iter(&text[start..end]) {
        let (match_start, match_end) = (start + match_start, start + match_end);
        if match_start == match_end {
            continue;
        }
        if match_start > last {
            out.push((last, match_start));
        }
        out.push((match_start, match_end));
        last = match_end;
    }
    if last < end {
        out.push((last, end));
    }
    out
}

/// The accepted `tokenizer.ggml.pre` values, for error messages.
pub(super) fn known_names() -> String {
    SPECS
        .iter()
        .flat_map(|s| s.names.iter().copied())
        .collect::<Vec<_>>()
        .join(", ")
}
