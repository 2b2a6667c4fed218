//! Special ids: BOS/EOS/EOT, the fill-in-the-middle markers and their family, Code Llama 70B's turn
//! separator, the end-of-generation set, and the protected set derived from them (see the parent module's
//! "User text stays text").

use super::vocab::{TokenType, Vocab, SPACE_MARK};
use super::TokenizerKind;

/// The fill-in-the-middle convention a vocabulary follows; the prompt builder picks the layout from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FimFamily {
    /// Code Llama: `▁<PRE>`, `▁<SUF>`, `▁<MID>`; the infill ends with `▁<EOT>`.
    CodeLlama,
    /// StarCoder style: `<fim_prefix>`, `<fim_suffix>`, `<fim_middle>`.
    StarCoder,
    /// DeepSeek-Coder: `<｜fim▁begin｜>` (prefix), `<｜fim▁hole｜>` (suffix), `<｜fim▁end｜>` (middle).
    DeepSeek,
    /// Qwen2.5-Coder and CodeGemma: `<|fim_prefix|>`, `<|fim_suffix|>`, `<|fim_middle|>`.
    Qwen,
    /// Ids named by GGUF keys whose pieces match none of the families above.
    Other,
}

/// The ids of the three FIM markers (each exactly one token) and the end-of-infill token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FimIds {
    pub family: FimFamily,
    pub prefix: u32,
    pub suffix: u32,
    pub middle: u32,
    /// The token that ends an infill when it is not EOS (Code Llama's `▁<EOT>`).
    pub eot: Option<u32>,
}

struct FamilyMarkers {
    family: FimFamily,
    /// prefix, suffix, middle
    markers: [&'static str; 3],
    eot: Option<&'static str>,
}

const FAMILIES: [FamilyMarkers; 4] = [
    FamilyMarkers {
        family: FimFamily::CodeLlama,
        markers: ["\u{2581}<PRE>", "\u{2581}<SUF>", "\u{2581}<MID>"],
        eot: Some("\u{2581}<EOT>"),
    },
    FamilyMarkers {
        family: FimFamily::StarCoder,
        markers: ["<fim_prefix>", "<fim_suffix>", "<fim_middle>"],
        eot: None,
    },
    FamilyMarkers {
        family: FimFamily::DeepSeek,
        markers: [
            "<\u{FF5C}fim\u{2581}begin\u{FF5C}>",
            "<\u{FF5C}fim\u{2581}hole\u{FF5C}>",
            "<\u{FF5C}fim\u{2581}end\u{FF5C}>",
        ],
        eot: None,
    },
    FamilyMarkers {
        family: FimFamily::Qwen,
        markers: ["<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"],
        eot: None,
    },
];

/// The marker texts Code Llama's partial pieces are made of (`▁<SU`, `▁<PRE`, `▁<EOT><EOT>`...).
const CODELLAMA_MARKER_TEXTS: [&str; 4] = ["<PRE>", "<SUF>", "<MID>", "<EOT>"];

/// Code Llama 70B – Instruct's turn separator: one piece (id 32015) in its SentencePiece vocabulary, which
/// Meta's reference finds with `piece_to_id("<step>")`. The reference rejects dialogs whose text contains
/// `<step>`; we make the piece a protected control token instead, so such text stays text.
const CODELLAMA_STEP: &str = "<step>";

/// Byte-level vocabularies end chat turns and documents with these when they are control tokens.
const BYTE_LEVEL_END_PIECES: [&str; 4] = ["<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end|>"];

/// Special ids as the tokenizer's metadata names them (GGUF keys, tokenizer_config.json).
#[derive(Debug, Default)]
pub(super) struct SpecialKeys {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub eot: Option<u32>,
    pub fim_prefix: Option<u32>,
    pub fim_suffix: Option<u32>,
    pub fim_middle: Option<u32>,
    /// Other ids the metadata names (padding, FIM pad/repo/separator): protected too.
    pub extra: Vec<u32>,
}

/// Special ids after validation and detection.
#[derive(Debug)]
pub(super) struct Specials {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub eot: Option<u32>,
    pub fim: Option<FimIds>,
    /// Code Llama 70B's `<step>`, when the vocabulary has it.
    pub step: Option<u32>,
    pub end_of_generation: Vec<u32>,
}

/// Validates `keys` against `vocab`, detects the FIM family, marks FIM markers, EOT and `<step>` as control
/// tokens (as llama.cpp does for the first two) and fills the vocabulary's protected set.
pub(super) fn resolve(vocab: &mut Vocab, keys: SpecialKeys) -> Specials {
    let keys = keys.in_range(vocab.len());
    let fim = detect_fim(vocab, &keys);
    let eot = keys.eot.or(fim.and_then(|f| f.eot));
    let step = match vocab.kind() {
        TokenizerKind::SentencePiece => vocab.id(CODELLAMA_STEP),
        TokenizerKind::ByteLevel => None,
    };
    let markers: Vec<u32> = fim
        .iter()
        .flat_map(|f| [f.prefix, f.suffix, f.middle])
        .chain(eot)
        .chain(step)
        .collect();
    let to_control: Vec<u32> = markers
        .iter()
        .copied()
        .filter(|&id| !is_byte(vocab, id))
        .collect();
    vocab.mark_control(to_control);

    let end_of_generation = end_of_generation(vocab, keys.eos, eot);
    let mut protected: Vec<u32> = [keys.bos, keys.eos].into_iter().flatten().collect();
    protected.extend(markers);
    protected.extend(&keys.extra);
    protected.extend(&end_of_generation);
    protected.extend(
        FAMILIES
            .iter()
            .flat_map(|f| f.markers)
            .filter_map(|m| vocab.id(m)),
    );
    if fim.is_some_and(|f| f.family == FimFamily::CodeLlama) {
        protected.extend(codellama_partial_markers(vocab));
    }
    protected.retain(|&id| !is_byte(vocab, id));
    vocab.protect(protected);

    Specials {
        bos: keys.bos,
        eos: keys.eos,
        eot,
        fim,
        step,
        end_of_generation,
    }
}

fn is_byte(vocab: &Vocab, id: u32) -> bool {
    vocab.token_type(id) == Some(TokenType::Byte)
}

impl SpecialKeys {
    /// Drops ids outside the vocabulary (llama.cpp warns and ignores them too).
    fn in_range(self, len: usize) -> Self {
        let check = |name: &str, id: Option<u32>| {
            id.filter(|&id| {
                let ok = (id as usize) < len;
                if !ok {
                    tracing::warn!(
                        "ignoring {name} token id {id}: the vocabulary has {len} tokens"
                    );
                }
                ok
            })
        };
        Self {
            bos: check("BOS", self.bos),
            eos: check("EOS", self.eos),
            eot: check("EOT", self.eot),
            fim_prefix: check("FIM prefix", self.fim_prefix),
            fim_suffix: check("FIM suffix", self.fim_suffix),
            fim_middle: check("FIM middle", self.fim_middle),
            extra: self
                .extra
                .into_iter()
                .filter(|&id| (id as usize) < len)
                .collect(),
        }
    }
}

/// FIM ids from the metadata keys when all three are present, else by exact piece lookup.
fn detect_fim(vocab: &Vocab, keys: &SpecialKeys) -> Option<FimIds> {
    if let (Some(prefix), Some(suffix), Some(middle)) =
        (keys.fim_prefix, keys.fim_suffix, keys.fim_middle)
    {
        let known = FAMILIES
            .iter()
            .find(|f| vocab.piece(prefix) == Some(f.markers[0]));
        return Some(FimIds {
            family: known.map_or(FimFamily::Other, |f| f.family),
            prefix,
            suffix,
            middle,
            eot: known.and_then(|f| f.eot).and_then(|piece| vocab.id(piece)),
        });
    }
    FAMILIES.iter().find_map(|f| {
        let [prefix, suffix, middle] = f.markers.map(|piece| vocab.id(piece));
        Some(FimIds {
            family: f.family,
            prefix: prefix?,
            suffix: suffix?,
            middle: middle?,
            eot: f.eot.and_then(|piece| vocab.id(piece)),
        })
    })
}

/// EOS, EOT and (byte-level) the usual end-of-turn control tokens, deduplicated in that order.
fn end_of_generation(vocab: &Vocab, eos: Option<u32>, eot: Option<u32>) -> Vec<u32> {
    let mut ids: Vec<u32> = [eos, eot].into_iter().flatten().collect();
    if vocab.kind() == TokenizerKind::ByteLevel {
        let ends = BYTE_LEVEL_END_PIECES
            .iter()
            .filter_map(|piece| vocab.id(piece));
        ids.extend(ends.filter(|&id| vocab.is_control(id)));
    }
    let mut seen = std::collections::HashSet::new();
    ids.retain(|id| seen.insert(*id));
    ids
}

/// Code Llama's pieces that exist only to build markers: "▁" followed by at least two characters of a
/// concatenation of marker texts (`▁<SU`, `▁<PRE`, `▁<PRE>`, `▁<EOT><EOT>`: ids 32000..=32015). `▁<`
/// alone is ordinary text and stays spellable.
fn codellama_partial_markers(vocab: &Vocab) -> Vec<u32> {
    (0..vocab.len() as u32)
        .filter(|&id| {
            let rest = vocab.piece(id).and_then(|p| p.strip_prefix(SPACE_MARK));
            rest.is_some_and(|rest| rest.chars().count() >= 2 && is_marker_fragment(rest))
        })
        .collect()
}

/// Whether `text` is a prefix of some concatenation of Code Llama marker texts.
fn is_marker_fragment(mut text: &str) -> bool {
    'outer: while !text.is_empty() {
        for marker in CODELLAMA_MARKER_TEXTS {
            if let Some(rest) = text.strip_prefix(marker) {
                text = rest;
                continue 'outer;
            }
            if marker.starts_with(text) {
                return true;
            }
        }
        return false;
    }
    true
}
