//! Loads a Hugging Face `tokenizer.json` (BPE models) through the `tokenizers` crate.
//!
//! Before the JSON reaches the crate we edit it: (1) SentencePiece's automatic dummy prefix (a
//! `Prepend("▁")` normalizer, or a `Metaspace` prepend scheme) is removed, because `encode(text, false)`
//! must be possible; we prepend the space ourselves when asked. (2) Every merge whose result is a
//! protected token is dropped and protected added tokens are marked special, so user text cannot become
//! a marker (encoding runs with `encode_special_tokens`, which leaves special tokens to the model).
//! `tokenizer_config.json` beside the file supplies `add_bos_token`, the BOS/EOS names and the chat
//! template.

use std::borrow::Cow;
use std::path::Path;

use serde_json::{Map, Value};

use super::special::{self, SpecialKeys};
use super::vocab::{parse_byte_piece, TokenType, Vocab, SPACE_MARK};
use super::{LineCuts, Merger, Settings, Tokenizer, TokenizerError, TokenizerKind};

/// Well-known end-of-sequence pieces, tried when no configuration names EOS.
const EOS_PIECES: [&str; 5] = [
    "</s>",
    "<|endoftext|>",
    "<|im_end|>",
    "<|end_of_text|>",
    "<eos>",
];

/// Refuse absurd ids instead of allocating for them.
const MAX_VOCAB: u64 = 4_000_000;

pub(super) struct HfModel {
    inner: tokenizers::Tokenizer,
}

impl HfModel {
    pub(super) fn encode(&self, vocab: &Vocab, text: &str, dummy_prefix: bool) -> Vec<u32> {
        let input = if dummy_prefix {
            Cow::Owned(format!(" {text}"))
        } else {
            Cow::Borrowed(text)
        };
        let mut out = Vec::new();
        match self.inner.encode(input.as_ref(), false) {
            Ok(encoding) => {
                for (&id, &(start, end)) in encoding.get_ids().iter().zip(encoding.get_offsets()) {
                    // Merges into protected tokens were removed at load; this only catches models that
                    // reach a protected piece some other way. Such a span is spelled character by character.
                    match input.get(start..end).filter(|_| vocab.is_protected(id)) {
                        Some(span) => vocab.encode_chars(span, &mut out),
                        None => out.push(id),
                    }
                }
            }
            Err(error) => {
                tracing::warn!(
                    "tokenizers failed to encode {} bytes ({error}); spelling them out",
                    input.len()
                );
                vocab.encode_chars(&input, &mut out);
            }
        }
        out
    }
}

pub(super) fn load(path: &Path) -> Result<Tokenizer, TokenizerError> {
    let text = std::fs::read_to_string(path).map_err(|source| TokenizerError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut json: Value = serde_json::from_str(&text).map_err(|e| parse_error(path, e))?;
    let kind = detect_kind(&json).map_err(|e| parse_error(path, e))?;
    let had_prefix = kind == TokenizerKind::SentencePiece && strip_dummy_prefix(&mut json);
    let (pieces, types) = read_vocab(&json).map_err(|e| parse_error(path, e))?;
    let config = Config::read_beside(path)?;

    let mut vocab = Vocab::new(kind, pieces, types)?;
    let template_bos = template_bos(&json, &vocab);
    let keys = SpecialKeys {
        bos: config
            .bos
            .as_deref()
            .and_then(|piece| vocab.id(piece))
            .or(template_bos),
        eos: config
            .eos
            .as_deref()
            .and_then(|piece| vocab.id(piece))
            .or_else(|| default_eos(&vocab)),
        ..SpecialKeys::default()
    };
    let specials = special::resolve(&mut vocab, keys);
    protect(&mut json, &vocab);

    let mut inner: tokenizers::Tokenizer =
        serde_json::from_value(json).map_err(|e| parse_error(path, e))?;
    inner.set_encode_special_tokens(true);
    let settings = Settings {
        add_bos: config.add_bos.unwrap_or(template_bos.is_some()),
        add_space_prefix: had_prefix,
        chat_template: config.chat_template,
    };
    let merger = Merger::Hf(Box::new(HfModel { inner }));
    Ok(Tokenizer {
        line_cuts: LineCuts::of(&vocab, &merger),
        vocab,
        specials,
        merger,
        settings,
    })
}

fn parse_error(path: &Path, message: impl std::fmt::Display) -> TokenizerError {
    TokenizerError::Parse {
        path: path.to_owned(),
        message: message.to_string(),
    }
}

/// Byte-level when a `ByteLevel` component is present; SentencePiece-style when spaces become "▁".
fn detect_kind(json: &Value) -> Result<TokenizerKind, String> {
    let model_type = json.pointer("/model/type").and_then(Value::as_str);
    if model_type != Some("BPE") {
        return Err(format!(
            "unsupported model type {model_type:?} (supported: BPE)"
        ));
    }
    let component = |name: &str| json.get(name).unwrap_or(&Value::Null);
    if has_type(component("pre_tokenizer"), "ByteLevel")
        || has_type(component("decoder"), "ByteLevel")
    {
        return Ok(TokenizerKind::ByteLevel);
    }
    let space_mark = SPACE_MARK.to_string();
    let sentencepiece = has_type(component("normalizer"), "Prepend")
        || has_type(component("pre_tokenizer"), "Metaspace")
        || json
            .pointer("/normalizer")
            .is_some_and(|n| n.to_string().contains(&space_mark))
        || json
            .pointer("/model/byte_fallback")
            .and_then(Value::as_bool)
            == Some(true);
    if sentencepiece {
        return Ok(TokenizerKind::SentencePiece);
    }
    Err("neither a byte-level nor a SentencePiece-style (\u{2581}) BPE tokenizer".to_owned())
}

/// Whether `value` or anything nested in it is a component of type `ty`.
fn has_type(value: &Value, ty: &str) -> bool {
    match value {
        Value::Object(map) => {
            map.get("type").and_then(Value::as_str) == Some(ty)
                || map.values().any(|v| has_type(v, ty))
        }
        Value::Array(items) => items.iter().any(|v| has_type(v, ty)),
        _ => false,
    }
}

/// Removes the automatic "▁" prefix; returns whether the file had one.
fn strip_dummy_prefix(json: &mut Value) -> bool {
    let mut found = false;
    if let Some(normalizer) = json.get_mut("normalizer") {
        if is_space_prepend(normalizer) {
            *normalizer = Value::Null;
            found = true;
        } else if let Some(steps) = normalizer
            .get_mut("normalizers")
            .and_then(Value::as_array_mut)
        {
            let before = steps.len();
            steps.retain(|step| !is_space_prepend(step));
            found |= steps.len() != before;
        }
    }
    if let Some(pre) = json.get_mut("pre_tokenizer") {
        found |= visit_objects(pre, &mut disable_metaspace_prefix);
    }
    found
}

fn is_space_prepend(step: &Value) -> bool {
    step.get("type").and_then(Value::as_str) == Some("Prepend")
        && step.get("prepend").and_then(Value::as_str) == Some("\u{2581}")
}

/// `Metaspace` with `prepend_scheme` first/always (the default when absent, unless the legacy
/// `add_prefix_space` is false) -> never.
fn disable_metaspace_prefix(component: &mut Map<String, Value>) -> bool {
    if component.get("type").and_then(Value::as_str) != Some("Metaspace") {
        return false;
    }
    let legacy = component.get("add_prefix_space").and_then(Value::as_bool);
    let had = match component.get("prepend_scheme").and_then(Value::as_str) {
        Some(scheme) => scheme != "never",
        None => legacy != Some(false),
    };
    component.insert("prepend_scheme".into(), Value::from("never"));
    if legacy.is_some() {
        component.insert("add_prefix_space".into(), Value::from(false));
    }
    had
}

/// Applies `f` to `value` and to every object nested in it; true if any call returned true.
fn visit_objects(value: &mut Value, f: &mut dyn FnMut(&mut Map<String, Value>) -> bool) -> bool {
    match value {
        Value::Object(map) => {
            let mut hit = f(map);
            for child in map.values_mut() {
                hit |= visit_objects(child, f);
            }
            hit
        }
        Value::Array(items) => items
            .iter_mut()
            .fold(false, |hit, item| visit_objects(item, f) | hit),
        _ => false,
    }
}

/// Pieces and types by id, from the model vocabulary plus `added_tokens`.
fn read_vocab(json: &Value) -> Result<(Vec<String>, Vec<TokenType>), String> {
    let model_vocab = json
        .pointer("/model/vocab")
        .and_then(Value::as_object)
        .ok_or("model.vocab is missing")?;
    let byte_fallback = json
        .pointer("/model/byte_fallback")
        .and_then(Value::as_bool)
        == Some(true);
    let unk = json.pointer("/model/unk_token").and_then(Value::as_str);
    let added = json
        .get("added_tokens")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();

    let mut entries: Vec<(u64, &str, TokenType)> =
        Vec::with_capacity(model_vocab.len() + added.len());
    for (piece, id) in model_vocab {
        let id = id
            .as_u64()
            .ok_or_else(|| format!("model.vocab[{piece:?}] is not an id"))?;
        let byte = byte_fallback && parse_byte_piece(piece).is_some();
        entries.push((
            id,
            piece,
            if byte {
                TokenType::Byte
            } else {
                TokenType::Normal
            },
        ));
    }
    for token in added {
        let id = token
            .get("id")
            .and_then(Value::as_u64)
            .ok_or("added token without id")?;
        let content = token
            .get("content")
            .and_then(Value::as_str)
            .ok_or("added token without content")?;
        let special = token.get("special").and_then(Value::as_bool) == Some(true);
        entries.push((
            id,
            content,
            if special {
                TokenType::Control
            } else {
                TokenType::UserDefined
            },
        ));
    }

    let size = entries.iter().map(|e| e.0 + 1).max().unwrap_or(0);
    if size > MAX_VOCAB {
        return Err(format!("token id {} is out of range", size - 1));
    }
    let mut pieces = vec![String::new(); size as usize];
    let mut types = vec![TokenType::Unused; size as usize];
    for (id, piece, ty) in entries {
        pieces[id as usize] = piece.to_owned();
        types[id as usize] = if Some(piece) == unk {
            TokenType::Unknown
        } else {
            ty
        };
    }
    Ok((pieces, types))
}

/// BOS named by a `TemplateProcessing` post-processor whose single-sequence template starts with it.
fn template_bos(json: &Value, vocab: &Vocab) -> Option<u32> {
    let processor = json.get("post_processor")?;
    let template = find_template(processor)?;
    let first = template.get("single")?.as_array()?.first()?;
    let piece = first.pointer("/SpecialToken/id")?.as_str()?;
    let ids = template
        .get("special_tokens")?
        .get(piece)?
        .get("ids")?
        .as_array()?;
    match ids.as_slice() {
        [id] => id
            .as_u64()
            .and_then(|id| u32::try_from(id).ok())
            .or_else(|| vocab.id(piece)),
        _ => None,
    }
}

fn find_template(processor: &Value) -> Option<&Value> {
    if processor.get("type").and_then(Value::as_str) == Some("TemplateProcessing") {
        return Some(processor);
    }
    processor
        .get("processors")?
        .as_array()?
        .iter()
        .find_map(find_template)
}

fn default_eos(vocab: &Vocab) -> Option<u32> {
    EOS_PIECES
        .iter()
        .filter_map(|piece| vocab.id(piece))
        .find(|&id| vocab.is_control(id))
}

/// Drops merges that would produce protected tokens and marks protected added tokens special.
fn protect(json: &mut Value, vocab: &Vocab) {
    let produces_protected = |merge: &Value| {
        let merged = match merge {
            Value::String(s) => s.split_once(' ').map(|(l, r)| format!("{l}{r}")),
            Value::Array(parts) => parts.iter().map(Value::as_str).collect::<Option<String>>(),
            _ => None,
        };
        merged
            .and_then(|m| vocab.id(&m))
            .is_some_and(|id| vocab.is_protected(id))
    };
    if let Some(merges) = json
        .pointer_mut("/model/merges")
        .and_then(Value::as_array_mut)
    {
        merges.retain(|merge| !produces_protected(merge));
    }
    if let Some(added) = json.get_mut("added_tokens").and_then(Value::as_array_mut) {
        for token in added {
            let id = token
                .get("id")
                .and_then(Value::as_u64)
                .and_then(|id| u32::try_from(id).ok());
            if id.is_some_and(|id| vocab.is_protected(id)) {
                token["special"] = Value::Bool(true);
            }
        }
    }
}

/// What `tokenizer_config.json` says, when it exists.
#[derive(Default)]
struct Config {
    add_bos: Option<bool>,
    bos: Option<String>,
    eos: Option<String>,
    chat_template: Option<String>,
}

impl Config {
    fn read_beside(tokenizer_json: &Path) -> Result<Self, TokenizerError> {
        let path = tokenizer_json.with_file_name("tokenizer_config.json");
        if !path.is_file() {
            return Ok(Self::default());
        }
        let text = std::fs::read_to_string(&path).map_err(|source| TokenizerError::Read {
            path: path.clone(),
            source,
        })?;
        let json: Value = serde_json::from_str(&text).map_err(|e| parse_error(&path, e))?;
        Ok(Self {
            add_bos: json.get("add_bos_token").and_then(Value::as_bool),
            bos: token_text(json.get("bos_token")),
            eos: token_text(json.get("eos_token")),
            chat_template: chat_template(json.get("chat_template")),
        })
    }
}

/// A token given as a string or as `{"content": ...}`.
fn token_text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) => Some(s.clone()),
        Value::Object(map) => map.get("content")?.as_str().map(str::to_owned),
        _ => None,
    }
}

/// A template given as a string or as a list of `{"name", "template"}` (the "default" one, else the first).
fn chat_template(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) => Some(s.clone()),
        Value::Array(items) => {
            let named = |name: &str| {
                items
                    .iter()
                    .find(|t| t.get("name").and_then(Value::as_str) == Some(name))
            };
            let chosen = named("default").or(items.first())?;
            chosen.get("template")?.as_str().map(str::to_owned)
        }
        _ => None,
    }
}
