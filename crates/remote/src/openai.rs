//! OpenAI-compatible completions (`POST /v1/completions`): vLLM, SGLang, LM Studio, llama.cpp's OpenAI
//! route, TGI's OpenAI route and hosted APIs. The prompt goes as token ids where the engine accepts them
//! (the OpenAI API allows an array of token ids; vLLM, SGLang and llama.cpp honour it), otherwise as text
//! decoded from the ids, in which case special tokens such as FIM markers are written as their text and it
//! is up to the engine's tokenizer to turn them back into the right ids.
//!
//! These engines stream text, not ids: the stop rules work on the text, stop ids are left to the engine's
//! own end-of-generation set (or sent as vLLM's `stop_token_ids` when `send_stop_token_ids` is on), and
//! `Outcome::generated_ids` stays empty.

use serde_json::{json, Value};

use codellama_engine::{GenerateRequest, Tokenizer};

use super::client::Client;
use super::config::PromptFormat;
use super::stream::{Finish, Framing, Parsed, Piece, Stats, StreamProtocol};
use super::Facts;
use codellama_engine::remote_error::RemoteError;

pub(crate) const COMPLETIONS_PATH: &str = "/v1/completions";

pub(crate) struct OpenAi;

/// How one request is sent.
pub(crate) struct Options<'a> {
    pub model: &'a str,
    pub prompt_as_ids: bool,
    pub send_stop_token_ids: bool,
}

pub(crate) fn completions_body(
    req: &GenerateRequest,
    tokenizer: &Tokenizer,
    opts: &Options,
) -> Value {
    let prompt = if opts.prompt_as_ids {
        json!(req.prompt)
    } else {
        json!(super::prompt_as_text(tokenizer, &req.prompt))
    };
    let s = &req.sampling;
    let mut body = json!({
        "model": opts.model,
        "prompt": prompt,
        "max_tokens": req.max_tokens,
        "stream": true,
        "temperature": if s.is_greedy() { 0.0 } else { s.temperature },
    });
    let obj = body.as_object_mut().expect("an object");
    if !s.is_greedy() {
        if s.top_p < 1.0 {
            obj.insert("top_p".into(), json!(s.top_p));
        }
        obj.insert("seed".into(), json!(s.seed));
    }
    if !req.stop_at_eog {
        // vLLM and llama.cpp know this; it is only used for raw benchmarking.
        obj.insert("ignore_eos".into(), json!(true));
    }
    if opts.send_stop_token_ids && !req.stop_ids.is_empty() {
        obj.insert("stop_token_ids".into(), json!(req.stop_ids));
    }
    body
}

impl StreamProtocol for OpenAi {
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
    let choice = v.pointer("/choices/0");
    if let Some(text) = choice.and_then(|c| c.get("text")).and_then(Value::as_str) {
        if !text.is_empty() {
            pieces.push(Piece::Text(text.to_string()));
        }
    }
    if let Some(usage) = v.get("usage").filter(|u| !u.is_null()) {
        pieces.push(Piece::Stats(Stats {
            cached_tokens: usage
                .pointer("/prompt_tokens_details/cached_tokens")
                .and_then(Value::as_u64)
                .map(|n| n as usize),
            generated_tokens: usage
                .get("completion_tokens")
                .and_then(Value::as_u64)
                .map(|n| n as usize),
            ..Stats::default()
        }));
    }
    if let Some(reason) = choice
        .and_then(|c| c.get("finish_reason"))
        .and_then(Value::as_str)
    {
        pieces.push(Piece::Done(match reason {
            "stop" => Finish::Eos,
            "length" => Finish::Length,
            other => Finish::Other(other.to_string()),
        }));
    }
    Ok(Parsed::Pieces(pieces))
}

/// `GET /v1/models`: which model to ask for, and the context size where the engine says (vLLM's
/// `max_model_len`, llama.cpp's `meta.n_ctx`).
pub(crate) fn probe(client: &Client, wanted: Option<&str>) -> Result<Facts, RemoteError> {
    let models = client.json("GET", "/v1/models", None)?;
    let data: Vec<&Value> = models
        .get("data")
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let ids: Vec<&str> = data
        .iter()
        .filter_map(|m| m.get("id").and_then(Value::as_str))
        .collect();
    let model = match (wanted, ids.as_slice()) {
        (Some(w), _) => w.to_string(),
        (None, [only]) => only.to_string(),
        (None, []) => {
            return Err(RemoteError::config(format!(
                "the OpenAI-compatible server at {} lists no models; set `model`",
                client.at()
            )))
        }
        (None, many) => {
            return Err(RemoteError::config(format!(
                "the OpenAI-compatible server at {} serves several models ({}); set `model` to one of them",
                client.at(),
                many.join(", ")
            )))
        }
    };
    let entry = data
        .iter()
        .find(|m| m.get("id").and_then(Value::as_str) == Some(model.as_str()));
    if entry.is_none() && !ids.is_empty() {
        tracing::warn!(
            "{} at {} does not list model {model:?} (it lists {}); trying it anyway",
            client.engine(),
            client.at(),
            ids.join(", ")
        );
    }
    let num = |v: Option<&Value>| v.and_then(Value::as_u64).map(|n| n as usize);
    Ok(Facts {
        context_window: entry
            .and_then(|m| num(m.get("max_model_len")).or_else(|| num(m.pointer("/meta/n_ctx")))),
        n_vocab: entry.and_then(|m| num(m.pointer("/meta/n_vocab"))),
        n_ctx_train: entry.and_then(|m| num(m.pointer("/meta/n_ctx_train"))),
        model_size: entry
            .and_then(|m| m.pointer("/meta/size"))
            .and_then(Value::as_u64),
        model_path: Some(model.clone()),
        model_name: Some(model),
        ..Facts::default()
    })
}

/// Whether the engine takes a token-id prompt: one short request (`max_tokens` 1). `Ok(false)` when it
/// refuses such a prompt (HTTP 400/422).
pub(crate) fn accepts_token_ids(
    client: &Client,
    model: &str,
    probe_id: u32,
) -> Result<bool, RemoteError> {
    let body = json!({"model": model, "prompt": [probe_id], "max_tokens": 1, "temperature": 0.0});
    match client.json("POST", COMPLETIONS_PATH, Some(&body)) {
        Ok(_) => Ok(true),
        Err(e) if matches!(e.status(), Some(400 | 422)) => {
            tracing::warn!("{e}");
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// The prompt format to use, asking the engine when the settings say `auto`.
pub(crate) fn choose_prompt_format(
    client: &Client,
    format: PromptFormat,
    model: &str,
    tokenizer: &Tokenizer,
    warnings: &mut Vec<String>,
) -> Result<bool, RemoteError> {
    let as_ids = match format {
        PromptFormat::Ids => true,
        PromptFormat::Text => false,
        PromptFormat::Auto => {
            let probe_id = tokenizer.encode("\n", false).first().copied().unwrap_or(0);
            accepts_token_ids(client, model, probe_id)?
        }
    };
    if !as_ids {
        warnings.push(format!(
            "{} at {} gets prompts as text: special tokens (FIM markers) are written as text and depend on the engine's tokenizer to become tokens again",
            client.engine(),
            client.at()
        ));
    }
    Ok(as_ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(data: &str) -> Vec<Piece> {
        match parse_event(data).unwrap() {
            Parsed::Pieces(p) => p,
            Parsed::EndOfStream => panic!("end of stream"),
        }
    }

    #[test]
    fn streamed_chunks_of_llama_cpp_and_vllm() {
        // llama.cpp's OpenAI route.
        let chunk = r#"{"choices":[{"text":" if","index":0,"logprobs":null,"finish_reason":null}],"created":1795721403,"model":"m","object":"text_completion","id":"x"}"#;
        assert_eq!(pieces(chunk), vec![Piece::Text(" if".into())]);
        let last = r#"{"choices":[{"text":"","index":0,"logprobs":null,"finish_reason":"length"}],"usage":{"completion_tokens":3,"prompt_tokens":6,"total_tokens":9,"prompt_tokens_details":{"cached_tokens":2}},"id":"x"}"#;
        assert_eq!(
            pieces(last),
            vec![
                Piece::Stats(Stats {
                    cached_tokens: Some(2),
                    generated_tokens: Some(3),
                    ..Stats::default()
                }),
                Piece::Done(Finish::Length)
            ]
        );
        // vLLM: the finish reason comes with the last text, usage may be null.
        let vllm = r#"{"id":"cmpl-1","object":"text_completion","created":1,"model":"codellama/CodeLlama-7b-hf","choices":[{"index":0,"text":"\n","logprobs":null,"finish_reason":"stop","stop_reason":null}],"usage":null}"#;
        assert_eq!(
            pieces(vllm),
            vec![Piece::Text("\n".into()), Piece::Done(Finish::Eos)]
        );
        assert!(matches!(parse_event("[DONE]"), Ok(Parsed::EndOfStream)));
        let err = parse_event(
            r#"{"error":{"message":"context length exceeded","type":"invalid_request_error"}}"#,
        );
        assert_eq!(err.err().as_deref(), Some("context length exceeded"));
    }
}
