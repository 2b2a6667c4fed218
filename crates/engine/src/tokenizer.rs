//! Tokenizers built from a GGUF file's metadata or from a Hugging Face `tokenizer.json`.
//!
//! Two families are supported: SentencePiece BPE (`tokenizer.ggml.model = "llama"`: Llama 2, Code Llama)
//! and byte-level BPE (`"gpt2"`: SmolLM2, StarCoder, DeepSeek-Coder, Qwen2, Llama 3). For GGUF files the
//! merge loop is our own (`merge.rs`) and reproduces llama.cpp / SentencePiece: merge the adjacent pair with
//! the best score (SentencePiece) or rank (byte-level), leftmost on ties; unspellable characters fall back
//! to `<0xXX>` byte tokens. For `tokenizer.json` the `tokenizers` crate does the merging (`hf.rs`). Both
//! sources share one token table (`vocab.rs`) and one resolution of special ids (`special.rs`).
//!
//! # User text stays text
//! `encode` never returns a *protected* id (see [`Tokenizer::is_protected`]): control tokens (`<s>`,
//! `</s>`, `<|im_end|>`...), the BOS/EOS/EOT and FIM-marker ids, for Code Llama the whole infill block
//! 32000..=32015 (`▁<SU`, `▁<PRE`, ... `▁<PRE>`, ... `▁<EOT><EOT>`), and Code Llama 70B's turn separator
//! `<step>` (so text cannot end a chat turn). Literal `</s>` in a source file encodes as the text `</s>`.
//! Code Llama's vocabulary would assemble plain text `" <PRE>"` into the marker 32007 through ordinary
//! merges, and Meta's reference tokenizer does exactly that; we forbid every merge whose result is
//! protected, so such text is spelled with ordinary pieces (`▁<`, `PRE`, `>`). **This is the one place
//! where we deliberately differ from the reference tokenizer**: a file that contains marker text cannot
//! inject a FIM marker into the prompt (text `<step>`, which Meta's 70B chat code refuses, is kept as text). Prompt builders insert markers as ids ([`Tokenizer::fim_ids`],
//! [`Tokenizer::special_id`]), never by tokenizing marker text.
//!
//! # The dummy prefix
//! SentencePiece prepends one space ("▁") to the text it encodes. `encode(text, true)` does so (Code
//! Llama's `encode(prefix)`), `encode(text, false)` does not (the reference's `encode_infilling(suffix)`),
//! and the empty string always encodes to `[]`. Byte-level BPE has no dummy prefix; the flag is ignored.
//! `decode` never strips a leading space: callers that want SentencePiece's "strip the dummy space" do it
//! themselves where the reference does.
//!
//! # Round trips
//! `decode(encode(text, false))` is `text` for any text, with one exception in SentencePiece: it spells a
//! space as "▁" (U+2581), so a "▁" in the text comes back as a space (as with Meta's tokenizer and
//! llama.cpp). With the dummy prefix, one space more in front. The fuzz tests (`tests/fuzz`) check this.

mod gguf;
mod hf;
mod merge;
mod pretokenize;
mod special;
mod vocab;

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file;

pub use special::{FimFamily, FimIds};

use merge::{ByteBpeModel, SpmModel};
use special::Specials;
use vocab::Vocab;

/// The two tokenizer families of llama-architecture models.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenizerKind {
    /// SentencePiece BPE (`tokenizer.ggml.model = "llama"`): Llama 2, Code Llama.
    SentencePiece,
    /// Byte-level BPE (`tokenizer.ggml.model = "gpt2"`): SmolLM2, StarCoder, DeepSeek-Coder, Qwen2.
    ByteLevel,
}

/// Why a tokenizer could not be built. Every message names the key, value or path to fix.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error(
        "missing key {key} in GGUF metadata: the file carries no usable tokenizer \
         (re-convert it with llama.cpp's convert_hf_to_gguf.py, or load a tokenizer.json)"
    )]
    MissingKey { key: String },
    #[error("GGUF key {key} has the wrong type: expected {expected}")]
    WrongType { key: String, expected: &'static str },
    #[error("GGUF key {key} = {id} is outside the vocabulary of {vocab} tokens")]
    IdOutOfRange { key: String, id: u32, vocab: usize },
    #[error("GGUF key {key} has {found} entries but tokenizer.ggml.tokens has {expected}")]
    LengthMismatch {
        key: String,
        expected: usize,
        found: usize,
    },
    #[error(
        "unsupported tokenizer model \"{0}\" in tokenizer.ggml.model (supported: llama, gpt2)"
    )]
    UnsupportedModel(String),
    #[error("unknown pre-tokenizer \"{name}\" in tokenizer.ggml.pre (known: {known})")]
    UnknownPreTokenizer { name: String, known: String },
    #[error("cannot read tokenizer.json at {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot parse {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid tokenizer: {0}")]
    Invalid(String),
}

/// Where the merging happens.
enum Merger {
    /// GGUF `llama`: our SentencePiece merge loop over scores.
    Spm(SpmModel),
    /// GGUF `gpt2`: our byte-level merge loop over ranked merges, after the named pre-tokenizer.
    ByteBpe(ByteBpeModel),
    /// `tokenizer.json`: the `tokenizers` crate, with protected merges removed.
    Hf(Box<hf::HfModel>),
}

/// Flags read from the tokenizer's configuration.
struct Settings {
    add_bos: bool,
    add_space_prefix: bool,
    chat_template: Option<String>,
}

/// A loaded tokenizer. Cheap to share behind an `Arc`; all methods take `&self`.
pub struct Tokenizer {
    vocab: Vocab,
    specials: Specials,
    merger: Merger,
    settings: Settings,
    line_cuts: LineCuts,
}

/// At which line starts (just after a `\n`) a text's encoding is the encodings of the two sides, one after
/// the other: no merge and no pre-token crosses there, and neither side's split looks across it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LineCuts {
    /// At every line start: SentencePiece without a piece that spans a line break, DeepSeek-Coder's split
    /// (every line break is a pre-token of its own).
    Every,
    /// Before a line with something besides whitespace before its end, or whitespace up to the end of the
    /// text (Llama 3, Qwen2: their `\s*[\r\n]+` runs on over blank lines and whitespace-only lines).
    BeforeContent,
    /// Between a line that ends with no whitespace before its break and one that starts with no whitespace
    /// (GPT-2's split: `\s+(?!\S)` joins a break with the next line's indentation, and its look-ahead sees
    /// past the end of the first side).
    BetweenContent,
    /// Nowhere: a `tokenizer.json` byte-level split we do not inspect, or a user-defined token that
    /// contains a line break.
    Never,
}

impl LineCuts {
    fn of(vocab: &Vocab, merger: &Merger) -> Self {
        if vocab
            .user_defined()
            .iter()
            .any(|(text, _)| text.contains('\n'))
        {
            return LineCuts::Never;
        }
        let spans_a_break = |id: u32| {
            let bytes = vocab.bytes(id);
            vocab.is_spellable(id) && bytes.len() > 1 && bytes.contains(&b'\n')
        };
        match merger {
            Merger::ByteBpe(model) => model.line_cuts(),
            Merger::Spm(_) | Merger::Hf(_) if vocab.kind() == TokenizerKind::SentencePiece => {
                let n = u32::try_from(vocab.len()).unwrap_or(u32::MAX);
                if (0..n).any(spans_a_break) {
                    LineCuts::Never
                } else {
                    LineCuts::Every
                }
            }
            Merger::Hf(_) | Merger::Spm(_) => LineCuts::Never,
        }
    }
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("kind", &self.kind())
            .field("vocab_size", &self.vocab_size())
            .field("bos", &self.bos_id())
            .field("eos", &self.eos_id())
            .field("fim", &self.fim_ids())
            .finish_non_exhaustive()
    }
}

impl Tokenizer {
    /// Builds the tokenizer from GGUF metadata (`tokenizer.ggml.*`).
    pub fn from_gguf(content: &gguf_file::Content) -> Result<Self, TokenizerError> {
        gguf::load(&content.metadata)
    }

    /// Loads a Hugging Face `tokenizer.json` (plus `tokenizer_config.json` beside it when present).
    pub fn from_file(path: &Path) -> Result<Self, TokenizerError> {
        hf::load(path)
    }

    pub fn kind(&self) -> TokenizerKind {
        self.vocab.kind()
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab.len()
    }

    /// Encodes user text as text: never yields control or FIM-marker ids. For SentencePiece,
    /// `dummy_prefix` adds the implicit leading space; ignored for byte-level BPE.
    pub fn encode(&self, text: &str, dummy_prefix: bool) -> Vec<u32> {
        if text.is_empty() {
            return Vec::new();
        }
        let dummy_prefix = dummy_prefix && self.kind() == TokenizerKind::SentencePiece;
        let ids = match &self.merger {
            Merger::Spm(model) => model.encode(&self.vocab, text, dummy_prefix),
            Merger::ByteBpe(model) => model.encode(&self.vocab, text),
            Merger::Hf(model) => model.encode(&self.vocab, text, dummy_prefix),
        };
        debug_assert!(
            !ids.iter().any(|&id| self.is_protected(id)),
            "encode produced a protected id for {text:?}: {ids:?}"
        );
        ids
    }

    /// Whether `encode(text, false)` is `encode(&text[..at], false)` followed by `encode(&text[at..], false)`,
    /// for `at` at a line start (just after `\n`; the ends of the text too). Lets a caller count a long
    /// text's tokens part by part and keep the counts of the parts that did not change. `false` where the
    /// tokenizer cannot promise it, and where `at` is no line start.
    pub fn cuts_at(&self, text: &str, at: usize) -> bool {
        if at == 0 || at == text.len() {
            return true;
        }
        let Some((before, after)) = text.split_at_checked(at) else {
            return false;
        };
        let Some(line_before) = before.strip_suffix('\n') else {
            return false;
        };
        let content = |c: char| !c.is_whitespace();
        match self.line_cuts {
            LineCuts::Every => true,
            LineCuts::BeforeContent => match after.split_once(['\n', '\r']) {
                Some((line, _)) => line.contains(content),
                None => true,
            },
            LineCuts::BetweenContent => {
                line_before.chars().last().is_some_and(content)
                    && after.chars().next().is_some_and(content)
            }
            LineCuts::Never => false,
        }
    }

    /// What `llama-tokenize --no-bos` prints: `encode(text, self.add_space_prefix())`.
    pub fn encode_plain(&self, text: &str) -> Vec<u32> {
        self.encode(text, self.add_space_prefix())
    }

    /// The raw bytes a token stands for (control tokens: empty).
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.vocab.bytes(id)
    }

    /// Concatenated bytes of `ids`, lossily decoded; no leading space is stripped.
    pub fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids
            .iter()
            .flat_map(|&id| self.token_bytes(id))
            .copied()
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The id of a vocabulary piece, spelled exactly as stored (`"▁<PRE>"`, `"Ġthe"`, `"<s>"`).
    pub fn token_id(&self, piece: &str) -> Option<u32> {
        self.vocab.id(piece)
    }

    pub fn token_piece(&self, id: u32) -> Option<&str> {
        self.vocab.piece(id)
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.specials.bos
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.specials.eos
    }

    /// End of turn / end of infill (`▁<EOT>` for Code Llama), when the vocabulary has one.
    pub fn eot_id(&self) -> Option<u32> {
        self.specials.eot
    }

    /// Code Llama 70B – Instruct's chat turn separator `<step>`, when the (SentencePiece) vocabulary has it.
    pub fn step_id(&self) -> Option<u32> {
        self.specials.step
    }

    /// Whether prompts start with BOS (`tokenizer.ggml.add_bos_token`, default true for SentencePiece).
    pub fn add_bos(&self) -> bool {
        self.settings.add_bos
    }

    /// Whether plain encoding adds SentencePiece's dummy space (`tokenizer.ggml.add_space_prefix`).
    pub fn add_space_prefix(&self) -> bool {
        self.settings.add_space_prefix
    }

    /// Control tokens (GGUF type CONTROL, special added tokens) and the FIM markers, which are treated as
    /// control tokens like llama.cpp does. Their bytes are empty.
    pub fn is_control(&self, id: u32) -> bool {
        self.vocab.is_control(id)
    }

    /// Ids that `encode` never returns: control tokens, BOS/EOS/EOT, FIM markers and (Code Llama) the
    /// partial marker pieces 32000..=32015. See the module documentation.
    pub fn is_protected(&self, id: u32) -> bool {
        self.vocab.is_protected(id)
    }

    /// Ids that end a generation: EOS, EOT (`▁<EOT>` for Code Llama), `<|im_end|>`, `<|endoftext|>`...
    pub fn end_of_generation_ids(&self) -> Vec<u32> {
        self.specials.end_of_generation.clone()
    }

    /// The fill-in-the-middle markers and their family, when the vocabulary can infill.
    pub fn fim_ids(&self) -> Option<FimIds> {
        self.specials.fim
    }

    /// The id of control-token text such as `<|im_start|>` or `<s>`, for templates that insert them as ids.
    /// Plain text pieces are not special: `special_id("hello")` is `None`.
    pub fn special_id(&self, text: &str) -> Option<u32> {
        let id = self.vocab.id(text)?;
        let special =
            self.is_control(id) || self.is_protected(id) || self.vocab.is_user_defined(id);
        special.then_some(id)
    }

    /// The chat template from `tokenizer.chat_template` / `tokenizer_config.json`, if any.
    pub fn chat_template(&self) -> Option<&str> {
        self.settings.chat_template.as_deref()
    }
}

/// Turns a stream of token ids into text deltas, holding back incomplete UTF-8 sequences.
///
/// Feeding every id of `ids` and then calling [`IncrementalDecoder::finish`] yields exactly
/// `tokenizer.decode(ids)`, invalid bytes included (each maximal invalid run becomes one U+FFFD).
pub struct IncrementalDecoder {
    pending: Vec<u8>,
}

impl IncrementalDecoder {
    pub fn new() -> Self {
        Self {
            pending: Vec::new(),
        }
    }

    /// Adds one token and returns the text it completed (possibly empty).
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> String {
        self.pending.extend_from_slice(tokenizer.token_bytes(id));
        self.drain(false)
    }

    /// Flushes what is still held back; an unfinished UTF-8 sequence becomes U+FFFD.
    pub fn finish(&mut self) -> String {
        self.drain(true)
    }

    fn drain(&mut self, at_end: bool) -> String {
        let mut out = String::new();
        let mut rest: &[u8] = &self.pending;
        while !rest.is_empty() {
            match std::str::from_utf8(rest) {
                Ok(text) => {
                    out.push_str(text);
                    rest = &[];
                }
                Err(error) => {
                    let (valid, after) = rest.split_at(error.valid_up_to());
                    out.push_str(&String::from_utf8_lossy(valid));
                    match error.error_len() {
                        Some(invalid) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = &after[invalid..];
                        }
                        None if at_end => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = &[];
                        }
                        None => {
                            rest = after;
                            break;
                        }
                    }
                }
            }
        }
        let consumed = self.pending.len() - rest.len();
        self.pending.drain(..consumed);
        out
    }
}

impl Default for IncrementalDecoder {
    fn default() -> Self {
        Self::new()
    }
}
