//! What the integration tests share: the fixture paths of `codellama_test_support::fixtures`, tokenizers
//! and chat templates built from them, crafted GGUF files, a llama.cpp server and a scripted engine.
#![allow(dead_code)]

pub mod gguf_craft;
pub mod llama_server;
pub mod scripted_engine;

pub use codellama_test_support::fixtures::*;

/// Code Llama 70B – Instruct's chat template, as published in the `tokenizer_config.json` of
/// codellama/CodeLlama-70b-Instruct-hf (text-generation-inference's template tests carry a copy with
/// `.strip()` spelled `| trim`).
pub const CODELLAMA_70B_TEMPLATE: &str = "{% if messages[0]['role'] == 'system' %}{% set user_index = 1 %}{% else %}{% set user_index = 0 %}{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != ((loop.index0 + user_index) % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 %}{{ '<s>' }}{% endif %}{% set content = 'Source: ' + message['role'] + '\\n\\n ' + message['content'].strip() %}{{ content + ' <step> ' }}{% endfor %}{{'Source: assistant\\nDestination: user\\n\\n '}}";

/// Code Llama 70B's turn separator and its id.
pub const STEP: (&str, u32) = ("<step>", 32015);

/// Code Llama 70B – Instruct's tokenizer, derived from the real Code Llama fixtures. The 70B vocabulary
/// has Llama 2's 32000 pieces at the same ids as the 7B one (the ids Meta's reference printed for the
/// 70B model card's dialog use them) and `<step>` at 32015, where the 7B vocabulary has `▁<EOT>` x 6 (a
/// piece no merge and no golden reaches). So the fixtures get that piece and the chat template: the tiny
/// GGUF's metadata with `<step>` typed normal (1), control (3) or user-defined (4), whichever the
/// converter chose, and `tokenizer.json` with `<step>` as a non-special added token beside a
/// `tokenizer_config.json`. User-defined and added tokens are the ones a tokenizer would cut out of raw
/// text.
pub fn codellama70b_tokenizers() -> Vec<(String, codellama_engine::tokenizer::Tokenizer)> {
    use codellama_engine::tokenizer::Tokenizer;

    let (step, id) = STEP;
    let mut out: Vec<(String, Tokenizer)> = [1, 3, 4]
        .into_iter()
        .map(|token_type| {
            let tok = codellama70b_gguf_tokenizer(token_type, Some(CODELLAMA_70B_TEMPLATE));
            (format!("gguf, <step> of type {token_type}"), tok)
        })
        .collect();

    let mut json = read_json(&codellama_fixture("tokenizer.json"));
    let vocab = json["model"]["vocab"].as_object_mut().unwrap();
    let old = vocab
        .iter()
        .find(|(_, v)| v.as_u64() == Some(id.into()))
        .map(|(k, _)| k.clone())
        .unwrap();
    vocab.remove(&old);
    vocab.insert(step.into(), id.into());
    json["added_tokens"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "id": id, "content": step, "single_word": false, "lstrip": false, "rstrip": false,
            "normalized": false, "special": false
        }));
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("codellama-lsp-70b-{}-{call}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("tokenizer.json"), json.to_string()).unwrap();
    let config = serde_json::json!({
        "bos_token": "<s>", "eos_token": "</s>", "chat_template": CODELLAMA_70B_TEMPLATE
    });
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).unwrap();
    let tok = Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    out.push(("tokenizer.json, <step> added".into(), tok));
    out
}

/// The tiny Code Llama GGUF's tokenizer with `<step>` at 32015 as a token of GGUF type `token_type`, and
/// `template` as its chat template (see [`codellama70b_tokenizers`]).
pub fn codellama70b_gguf_tokenizer(
    token_type: i32,
    template: Option<&str>,
) -> codellama_engine::tokenizer::Tokenizer {
    use candle_core::quantized::gguf_file::Value;
    use codellama_engine::gguf::GgufFile;

    let (step, id) = STEP;
    let mut f = GgufFile::open(&codellama_fixture("tiny-codellama-mha.gguf")).unwrap();
    let meta = &mut f.content.metadata;
    for (key, value) in [
        ("tokenizer.ggml.tokens", Value::String(step.into())),
        ("tokenizer.ggml.token_type", Value::I32(token_type)),
    ] {
        match meta.get_mut(key) {
            Some(Value::Array(a)) => a[id as usize] = value,
            other => panic!("{key}: {other:?}"),
        }
    }
    if let Some(template) = template {
        meta.insert(
            "tokenizer.chat_template".into(),
            Value::String(template.into()),
        );
    }
    codellama_engine::tokenizer::Tokenizer::from_gguf(&f.content).unwrap()
}

/// Turns the tiny Code Llama GGUF's tokenizer metadata into Code Llama – Python's: Llama 2's 32000
/// pieces without the 16 infilling pieces (32000..=32015). `keep_fim_keys` keeps the EOT/FIM id keys,
/// which then name ids the vocabulary lacks; otherwise they are removed.
pub fn to_codellama_python_vocab(
    meta: &mut std::collections::HashMap<String, candle_core::quantized::gguf_file::Value>,
    keep_fim_keys: bool,
) {
    use candle_core::quantized::gguf_file::Value;
    for key in [
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.scores",
        "tokenizer.ggml.token_type",
    ] {
        match meta.get_mut(key) {
            Some(Value::Array(a)) => a.truncate(32000),
            other => panic!("{key}: {other:?}"),
        }
    }
    if !keep_fim_keys {
        for name in [
            "eot", "prefix", "suffix", "middle", "fim_pre", "fim_suf", "fim_mid",
        ] {
            let key = format!("tokenizer.ggml.{name}_token_id");
            assert!(meta.remove(&key).is_some(), "{key}");
        }
    }
}
