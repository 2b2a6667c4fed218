//! Ollama (`POST /api/generate`), following its API documentation (`docs/api.md` in ollama/ollama):
//! `raw: true` so that Ollama applies no prompt template of its own, `stream: true` for newline-delimited
//! JSON objects (`{"response": "...", "done": false}` ..., then a last object with `"done": true`,
//! `done_reason` and counts), sampling in `options`. Durations are in nanoseconds. Ollama takes the prompt
//! as text only: it is decoded from our ids, special tokens written as their text (Ollama's tokenizer turns
//! them back into special tokens).
//!
//! The tokenizer can come from Ollama itself: `POST /api/show` with `verbose: true` returns the model's
//! GGUF metadata, `tokenizer.ggml.*` arrays included, from which the same tokenizer as for a local GGUF
//! file is built.
//!
//! Not run against a real Ollama here (none could be installed); the parsing and request building are
//! tested against the documented examples.

use std::collections::HashMap;

use candle_core::quantized::gguf_file::Value as GgufValue;
use serde_json::{json, Value};

use codellama_engine::{GenerateRequest, Tokenizer};

use super::client::Client;
use super::stream::{Finish, Framing, Parsed, Piece, Stats, StreamProtocol};
use super::Facts;
use codellama_engine::remote_error::RemoteError;

pub(crate) const GENERATE_PATH: &str = "/api/generate";

/// Ollama's default context size when the model's parameters do not set `num_ctx` (recent Ollama uses
/// 4096, older versions 2048: the smaller one is safe, since Ollama silently cuts longer prompts).
const DEFAULT_NUM_CTX: usize = 2048;

pub(crate) struct Ollama;

pub(crate) fn generate_body(
    req: &GenerateRequest,
    tokenizer: &Tokenizer,
    model: &str,
    num_ctx: Option<usize>,
) -> Value {
    let s = &req.sampling;
    let mut options = json!({
        "num_predict": req.max_tokens,
        // Ollama's default repeat penalty is 1.1; the in-process engine has none.
        "repeat_penalty": 1.0,
    });
    let o = options.as_object_mut().expect("an object");
    if s.is_greedy() {
        o.insert("temperature".into(), json!(0.0));
        o.insert("top_k".into(), json!(1));
    } else {
        o.insert("temperature".into(), json!(s.temperature));
        if s.top_k > 0 {
            o.insert("top_k".into(), json!(s.top_k));
        }
        o.insert("top_p".into(), json!(s.top_p));
        o.insert("seed".into(), json!(s.seed));
    }
    if let Some(n) = num_ctx {
        o.insert("num_ctx".into(), json!(n));
    }
    json!({
        "model": model,
        "prompt": super::prompt_as_text(tokenizer, &req.prompt),
        "raw": true,
        "stream": true,
        "options": options,
    })
}

impl StreamProtocol for Ollama {
    fn framing(&self) -> Framing {
        Framing::Ndjson
    }

    fn parse(&self, data: &str) -> Result<Parsed, String> {
        parse_line(data)
    }
}

pub(crate) fn parse_line(line: &str) -> Result<Parsed, String> {
    let v = super::client::event_json(line)?;
    let mut pieces = Vec::new();
    if let Some(text) = v.get("response").and_then(Value::as_str) {
        if !text.is_empty() {
            pieces.push(Piece::Text(text.to_string()));
        }
    }
    if v.get("done").and_then(Value::as_bool) == Some(true) {
        if let Some(n) = v.get("eval_count").and_then(Value::as_u64) {
            let ms = |key: &str| v.get(key).and_then(Value::as_f64).map(|ns| ns / 1e6);
            pieces.push(Piece::Stats(Stats {
                cached_tokens: None,
                generated_tokens: Some(n as usize),
                prompt_ms: ms("prompt_eval_duration"),
                generation_ms: ms("eval_duration"),
            }));
        }
        pieces.push(Piece::Done(
            match v.get("done_reason").and_then(Value::as_str) {
                Some("stop") | None => Finish::Eos,
                Some("length") => Finish::Length,
                Some(other) => Finish::Other(other.to_string()),
            },
        ));
    }
    Ok(Parsed::Pieces(pieces))
}

/// `POST /api/show` for the configured model (required: Ollama serves many). With `want_tokenizer`, the
/// verbose form, which carries the tokenizer arrays.
pub(crate) fn probe(
    client: &Client,
    model: Option<&str>,
    want_tokenizer: bool,
) -> Result<Facts, RemoteError> {
    let Some(model) = model else {
        let names = client
            .json("GET", "/api/tags", None)
            .ok()
            .and_then(|t| {
                t.get("models").and_then(Value::as_array).map(|a| {
                    a.iter()
                        .filter_map(|m| m.get("name").and_then(Value::as_str))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
            })
            .unwrap_or_default();
        return Err(RemoteError::config(format!(
            "Ollama needs `model` (models at {}: {})",
            client.at(),
            if names.is_empty() {
                "none listed"
            } else {
                &names
            }
        )));
    };
    let show = match client.json(
        "POST",
        "/api/show",
        Some(&json!({"model": model, "verbose": want_tokenizer})),
    ) {
        Ok(v) => v,
        Err(e) if e.status() == Some(404) => {
            return Err(RemoteError::config(format!(
                "Ollama at {} has no model {model:?} (run `ollama pull {model}`)",
                client.at()
            )))
        }
        Err(e) => return Err(e),
    };
    facts_from_show(model, &show)
}

pub(crate) fn facts_from_show(model: &str, show: &Value) -> Result<Facts, RemoteError> {
    let info = show.get("model_info").and_then(Value::as_object);
    let arch = info
        .and_then(|i| i.get("general.architecture"))
        .and_then(Value::as_str)
        .unwrap_or("llama")
        .to_string();
    let num = |key: &str| {
        info.and_then(|i| i.get(key))
            .and_then(Value::as_u64)
            .map(|n| n as usize)
    };
    let num_ctx = show
        .get("parameters")
        .and_then(Value::as_str)
        .and_then(|p| {
            p.lines().find_map(|l| {
                let mut it = l.split_whitespace();
                (it.next() == Some("num_ctx"))
                    .then(|| it.next().and_then(|n| n.parse::<usize>().ok()))
                    .flatten()
            })
        });
    let has_tokens = info
        .and_then(|i| i.get("tokenizer.ggml.tokens"))
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty());
    Ok(Facts {
        model_name: Some(model.to_string()),
        context_window: Some(num_ctx.unwrap_or(DEFAULT_NUM_CTX)),
        n_ctx_train: num(&format!("{arch}.context_length")),
        n_vocab: num(&format!("{arch}.vocab_size")),
        gguf_metadata: if has_tokens {
            info.map(|i| i.iter().map(|(k, v)| (k.clone(), gguf_value(v))).collect())
        } else {
            None
        },
        ..Facts::default()
    })
}

/// A JSON value from `model_info` as GGUF metadata: integers as i64 (u64 when larger), other numbers
/// as f64. The tokenizer reader accepts any integer and float width.
fn gguf_value(v: &Value) -> GgufValue {
    match v {
        Value::Bool(b) => GgufValue::Bool(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => GgufValue::I64(i),
            (None, Some(u), _) => GgufValue::U64(u),
            (_, _, Some(f)) => GgufValue::F64(f),
            _ => GgufValue::String(n.to_string()),
        },
        Value::String(s) => GgufValue::String(s.clone()),
        Value::Array(a) => GgufValue::Array(a.iter().map(gguf_value).collect()),
        Value::Null => GgufValue::String(String::new()),
        Value::Object(_) => GgufValue::String(v.to_string()),
    }
}

/// The tokenizer from GGUF metadata given as a map.
pub(crate) fn tokenizer_from_metadata(
    metadata: HashMap<String, GgufValue>,
) -> Result<Tokenizer, RemoteError> {
    let content = candle_core::quantized::gguf_file::Content {
        magic: candle_core::quantized::gguf_file::VersionedMagic::GgufV3,
        metadata,
        tensor_infos: HashMap::new(),
        tensor_data_offset: 0,
    };
    Tokenizer::from_gguf(&content)
        .map_err(|e| RemoteError::tokenizer(format!("Ollama's model metadata: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(line: &str) -> Vec<Piece> {
        match parse_line(line).unwrap() {
            Parsed::Pieces(p) => p,
            Parsed::EndOfStream => panic!("end of stream"),
        }
    }

    #[test]
    fn documented_stream_objects() {
        // docs/api.md, "Generate request (Streaming)".
        let first = r#"{"model": "llama3.2", "created_at": "2023-08-04T08:52:19.385406455-07:00", "response": "The", "done": false}"#;
        assert_eq!(pieces(first), vec![Piece::Text("The".into())]);
        let last = r#"{"model": "llama3.2", "created_at": "2023-08-04T19:22:45.499127Z", "response": "", "done": true, "context": [1, 2, 3], "total_duration": 10706818083, "load_duration": 6338219291, "prompt_eval_count": 26, "prompt_eval_duration": 130079000, "eval_count": 259, "eval_duration": 4232710000}"#;
        assert_eq!(
            pieces(last),
            vec![
                Piece::Stats(Stats {
                    cached_tokens: None,
                    generated_tokens: Some(259),
                    prompt_ms: Some(130.079),
                    generation_ms: Some(4232.71),
                }),
                Piece::Done(Finish::Eos)
            ]
        );
        let length = r#"{"model":"codellama:7b-code","response":"","done":true,"done_reason":"length","eval_count":64}"#;
        assert_eq!(pieces(length).last(), Some(&Piece::Done(Finish::Length)));
        let err =
            parse_line(r#"{"error":"model 'codellama:7b-code' not found, try pulling it first"}"#);
        assert!(err.unwrap_err().contains("not found"));
    }

    #[test]
    fn show_answers_give_the_context_and_the_tokenizer_arrays() {
        // docs/api.md, "Show Model Information" (non-verbose: the arrays are empty).
        let show: Value = serde_json::from_str(r#"{
          "parameters": "num_keep                       24\nstop                           \"<|start_header_id|>\"\nnum_ctx 8192",
          "details": {"format": "gguf", "family": "llama"},
          "model_info": {
            "general.architecture": "llama", "llama.context_length": 8192, "llama.vocab_size": 128256,
            "tokenizer.ggml.bos_token_id": 128000, "tokenizer.ggml.merges": [], "tokenizer.ggml.model": "gpt2",
            "tokenizer.ggml.pre": "llama-bpe", "tokenizer.ggml.token_type": [], "tokenizer.ggml.tokens": []
          }
        }"#).unwrap();
        let facts = facts_from_show("llama3.2", &show).unwrap();
        assert_eq!(facts.context_window, Some(8192));
        assert_eq!(facts.n_ctx_train, Some(8192));
        assert_eq!(facts.n_vocab, Some(128256));
        assert!(facts.gguf_metadata.is_none());
        let bare: Value = serde_json::from_str(r#"{"model_info": {}}"#).unwrap();
        assert_eq!(
            facts_from_show("x", &bare).unwrap().context_window,
            Some(DEFAULT_NUM_CTX)
        );
    }
}
