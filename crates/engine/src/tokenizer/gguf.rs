//! Reads the tokenizer from GGUF metadata (`tokenizer.ggml.*`), with llama.cpp's defaults for keys that
//! older files lack.

use std::collections::HashMap;

use candle_core::quantized::gguf_file::Value;

use super::merge::{ByteBpeModel, SpmModel};
use super::pretokenize::PreTokenizer;
use super::special::{self, SpecialKeys};
use super::vocab::{parse_byte_piece, TokenType, Vocab};
use super::{LineCuts, Merger, Settings, Tokenizer, TokenizerError, TokenizerKind};

const MODEL: &str = "tokenizer.ggml.model";
const PRE: &str = "tokenizer.ggml.pre";
const TOKENS: &str = "tokenizer.ggml.tokens";
const SCORES: &str = "tokenizer.ggml.scores";
const TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
const MERGES: &str = "tokenizer.ggml.merges";
const ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
const ADD_SPACE_PREFIX: &str = "tokenizer.ggml.add_space_prefix";
const CHAT_TEMPLATE: &str = "tokenizer.chat_template";

pub(super) fn load(metadata: &HashMap<String, Value>) -> Result<Tokenizer, TokenizerError> {
    let meta = Meta(metadata);
    let kind = match meta.required_str(MODEL)? {
        "llama" => TokenizerKind::SentencePiece,
        "gpt2" => TokenizerKind::ByteLevel,
        other => return Err(TokenizerError::UnsupportedModel(other.to_owned())),
    };
    // Resolve the pre-tokenizer first: an unknown name should fail before the heavy work.
    let pre = match kind {
        TokenizerKind::ByteLevel => Some(pre_tokenizer(&meta)?),
        TokenizerKind::SentencePiece => None,
    };

    let pieces: Vec<String> = meta
        .strings(TOKENS)?
        .into_iter()
        .map(str::to_owned)
        .collect();
    let types = token_types(&meta, kind, &pieces)?;
    let mut vocab = Vocab::new(kind, pieces, types)?;
    let keys = special_keys(&meta, kind, vocab.len())?;
    let specials = special::resolve(&mut vocab, keys);

    let default_add_bos = pre
        .as_ref()
        .map_or(kind == TokenizerKind::SentencePiece, PreTokenizer::add_bos);
    let settings = settings(&meta, kind, default_add_bos)?;
    let merger = match pre {
        None => Merger::Spm(SpmModel::new(&vocab, scores(&meta, vocab.len())?)),
        Some(pre) => Merger::ByteBpe(ByteBpeModel::new(&vocab, meta.strings(MERGES)?, pre)),
    };
    Ok(Tokenizer {
        line_cuts: LineCuts::of(&vocab, &merger),
        vocab,
        specials,
        merger,
        settings,
    })
}

fn pre_tokenizer(meta: &Meta) -> Result<PreTokenizer, TokenizerError> {
    match meta.str(PRE)? {
        Some(name) => PreTokenizer::by_name(name),
        None => {
            tracing::warn!("GGUF has no {PRE}: using llama.cpp's 'default' pre-tokenizer; re-convert the model");
            PreTokenizer::by_name("default")
        }
    }
}

/// Types from `tokenizer.ggml.token_type`; files without it get normal pieces and (SentencePiece)
/// byte pieces `<0xXX>`, which llama.cpp finds by name.
fn token_types(
    meta: &Meta,
    kind: TokenizerKind,
    pieces: &[String],
) -> Result<Vec<TokenType>, TokenizerError> {
    let Some(values) = meta.array(TOKEN_TYPE)? else {
        let by_name = |piece: &String| match (kind, parse_byte_piece(piece)) {
            (TokenizerKind::SentencePiece, Some(_)) => TokenType::Byte,
            _ => TokenType::Normal,
        };
        return Ok(pieces.iter().map(by_name).collect());
    };
    check_len(TOKEN_TYPE, pieces.len(), values.len())?;
    values
        .iter()
        .take(pieces.len())
        .map(|v| {
            int(v)
                .map(TokenType::from_gguf)
                .ok_or_else(|| wrong_type(TOKEN_TYPE, "an array of integers"))
        })
        .collect()
}

fn scores(meta: &Meta, count: usize) -> Result<Vec<f32>, TokenizerError> {
    let values = meta.array(SCORES)?.ok_or_else(|| missing(SCORES))?;
    check_len(SCORES, count, values.len())?;
    values
        .iter()
        .take(count)
        .map(|v| match v {
            Value::F32(f) => Some(*f),
            Value::F64(f) => Some(*f as f32),
            other => int(other).map(|i| i as f32),
        })
        .map(|score| score.ok_or_else(|| wrong_type(SCORES, "an array of numbers")))
        .collect()
}

/// The special ids the metadata names. A BOS or EOS id outside the vocabulary is refused: every prompt
/// starts with the one and every generation waits for the other, so the model would quietly answer
/// garbage. The other ids are dropped when outside it (`special::resolve`), as llama.cpp does: Code
/// Llama – Python files name the infilling ids of a vocabulary that lacks them.
fn special_keys(
    meta: &Meta,
    kind: TokenizerKind,
    vocab: usize,
) -> Result<SpecialKeys, TokenizerError> {
    let id = |key: &str| meta.id(&format!("tokenizer.ggml.{key}"));
    let framing = |key: &str| {
        let key = format!("tokenizer.ggml.{key}");
        match meta.id(&key)? {
            Some(id) if id as usize >= vocab => {
                Err(TokenizerError::IdOutOfRange { key, id, vocab })
            }
            id => Ok(id),
        }
    };
    // llama.cpp's defaults for SentencePiece vocabularies that predate the keys.
    let (default_bos, default_eos) = match kind {
        TokenizerKind::SentencePiece => (Some(1), Some(2)),
        TokenizerKind::ByteLevel => (None, None),
    };
    Ok(SpecialKeys {
        bos: framing("bos_token_id")?.or(default_bos),
        eos: framing("eos_token_id")?.or(default_eos),
        eot: id("eot_token_id")?,
        fim_prefix: id("fim_pre_token_id")?.or(id("prefix_token_id")?),
        fim_suffix: id("fim_suf_token_id")?.or(id("suffix_token_id")?),
        fim_middle: id("fim_mid_token_id")?.or(id("middle_token_id")?),
        extra: [
            id("fim_pad_token_id")?,
            id("fim_rep_token_id")?,
            id("fim_sep_token_id")?,
        ]
        .into_iter()
        .flatten()
        .collect(),
    })
}

fn settings(
    meta: &Meta,
    kind: TokenizerKind,
    default_add_bos: bool,
) -> Result<Settings, TokenizerError> {
    Ok(Settings {
        add_bos: meta.bool(ADD_BOS)?.unwrap_or(default_add_bos),
        add_space_prefix: meta
            .bool(ADD_SPACE_PREFIX)?
            .unwrap_or(kind == TokenizerKind::SentencePiece),
        chat_template: meta.str(CHAT_TEMPLATE)?.map(str::to_owned),
    })
}

/// Typed access to the metadata map; every failure names its key.
struct Meta<'a>(&'a HashMap<String, Value>);

impl<'a> Meta<'a> {
    fn str(&self, key: &str) -> Result<Option<&'a str>, TokenizerError> {
        match self.0.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(wrong_type(key, "a string")),
        }
    }

    fn required_str(&self, key: &str) -> Result<&'a str, TokenizerError> {
        self.str(key)?.ok_or_else(|| missing(key))
    }

    fn bool(&self, key: &str) -> Result<Option<bool>, TokenizerError> {
        match self.0.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(wrong_type(key, "a boolean")),
        }
    }

    /// A token id; negative values (some converters write -1 for "none") count as absent.
    fn id(&self, key: &str) -> Result<Option<u32>, TokenizerError> {
        match self.0.get(key) {
            None => Ok(None),
            Some(value) => {
                let number = int(value).ok_or_else(|| wrong_type(key, "an integer"))?;
                Ok(u32::try_from(number).ok())
            }
        }
    }

    fn array(&self, key: &str) -> Result<Option<&'a [Value]>, TokenizerError> {
        match self.0.get(key) {
            None => Ok(None),
            Some(Value::Array(values)) => Ok(Some(values)),
            Some(_) => Err(wrong_type(key, "an array")),
        }
    }

    fn strings(&self, key: &str) -> Result<Vec<&'a str>, TokenizerError> {
        let values = self.array(key)?.ok_or_else(|| missing(key))?;
        values
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.as_str()),
                _ => Err(wrong_type(key, "an array of strings")),
            })
            .collect()
    }
}

fn int(value: &Value) -> Option<i64> {
    match *value {
        Value::U8(v) => Some(v.into()),
        Value::I8(v) => Some(v.into()),
        Value::U16(v) => Some(v.into()),
        Value::I16(v) => Some(v.into()),
        Value::U32(v) => Some(v.into()),
        Value::I32(v) => Some(v.into()),
        Value::U64(v) => i64::try_from(v).ok(),
        Value::I64(v) => Some(v),
        _ => None,
    }
}

fn check_len(key: &str, expected: usize, found: usize) -> Result<(), TokenizerError> {
    // llama.cpp accepts longer arrays and reads the first `expected` entries.
    if found < expected {
        return Err(TokenizerError::LengthMismatch {
            key: key.to_owned(),
            expected,
            found,
        });
    }
    Ok(())
}

fn missing(key: &str) -> TokenizerError {
    TokenizerError::MissingKey {
        key: key.to_owned(),
    }
}

fn wrong_type(key: &str, expected: &'static str) -> TokenizerError {
    TokenizerError::WrongType {
        key: key.to_owned(),
        expected,
    }
}
