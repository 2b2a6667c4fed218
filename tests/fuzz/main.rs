//! Fuzz targets for everything that reads input from outside the process: model files (the GGUF reader
//! and the whole load path), the tokenizers (any text, any id sequence), the LSP input framing, document
//! sync (edits against a reference model of the text) and the remote engines' streams (SSE, NDJSON; HTTP
//! itself is hyper's, fuzzed there). Each target is one function of `&[u8]` that panics when an invariant
//! fails; `harness` runs each for a time budget on mutations of its seeds (see there for the settings).
//! `cargo test --release --test fuzz` runs them all for a few seconds each; `scripts/fuzz TARGET SECONDS`
//! runs one (or `all`) for longer.

#[path = "../common/mod.rs"]
mod common;
mod harness;
mod streams;
mod text_model;

use std::path::PathBuf;
use std::sync::OnceLock;

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::GgmlDType;
use codellama_engine::gguf::GgufFile;
use codellama_engine::tokenizer::{IncrementalDecoder, Tokenizer, TokenizerKind};
use codellama_engine::{Engine, GenerateRequest, LoadOptions};
use codellama_text::documents::{Document, Documents, PositionEncoding};

use common::gguf_craft::{Crafted, CraftedTensor};
use harness::{fuzz, Target};

// ---------------------------------------------------------------------------------------------------------
// GGUF: any file loads or is refused with an error that names it; a model that loads runs.

#[test]
fn gguf() {
    fuzz(Target {
        name: "gguf",
        run: gguf_target,
        seeds: vec![mini_gguf(true), mini_gguf(false), {
            // The header alone: every tensor points past the end.
            let mut header_only = mini_gguf(true);
            header_only.truncate(8 << 10);
            header_only
        }],
        dictionary: &[b"GGUF", b"llama", b"qwen2", b"gpt2", b"general.alignment"],
        max_len: 1 << 20,
        hot_prefix: 8 << 10,
    });
}

/// A file in `target/fuzz-work` for this process and `name`: left behind if the process dies, so the
/// input that killed it is at hand.
fn work_file(name: &str) -> PathBuf {
    let dir = common::checkout().join("target/fuzz-work");
    std::fs::create_dir_all(&dir).expect("target/fuzz-work");
    dir.join(format!("{name}-{}", std::process::id()))
}

fn gguf_target(data: &[u8]) -> String {
    let path = work_file("input.gguf");
    std::fs::write(&path, data).expect("write the input file");
    let opts = LoadOptions {
        model: Some(path.display().to_string()),
        context_window: Some(16),
        threads: Some(1),
        ..LoadOptions::default()
    };
    let engine = match Engine::start(opts, Box::new(|_| {})) {
        Ok(engine) => engine,
        Err(e) => {
            let message = e.to_string();
            let name = path.display().to_string();
            assert!(
                message.contains(&name),
                "the error names no file: {message}"
            );
            return message.replace(&name, "FILE");
        }
    };
    // What loads must run: a prompt of two tokens (the last of the vocabulary among them) and two more.
    let last = (engine.info().config.vocab_size - 1) as u32;
    let mut req = GenerateRequest::new(vec![0, last], 2);
    req.stop_at_eog = false;
    let outcome = engine.submit(req).wait();
    format!(
        "loaded: {:?}",
        outcome.map(|o| (o.generated_ids.len(), o.stop_reason))
    )
}

/// A small but complete llama model (32 wide, one layer, a 300-token SentencePiece vocabulary with the
/// byte tokens) made from the tiny Code Llama fixture's tokens and weights, so that mutations spend their
/// time in a header of a few KiB rather than in 9 MB of weights. `tied`: no `output.weight`.
fn mini_gguf(tied: bool) -> Vec<u8> {
    const VOCAB: usize = 300;
    const EMBD: usize = 32;
    const FF: usize = 64;
    let mut g = Crafted::read(&common::codellama_fixture("tiny-codellama-mha.gguf"));
    g.metadata.retain(|(k, _)| {
        !k.ends_with("_token_id") || ["bos", "eos", "unknown"].iter().any(|s| k.contains(s))
    });
    for (key, value) in &mut g.metadata {
        if let (true, Value::Array(items)) = (key.starts_with("tokenizer.ggml."), value) {
            items.truncate(VOCAB);
        }
    }
    for (key, n) in [
        ("llama.vocab_size", VOCAB),
        ("llama.embedding_length", EMBD),
        ("llama.feed_forward_length", FF),
        ("llama.block_count", 1),
        ("llama.attention.head_count", 2),
        ("llama.attention.head_count_kv", 2),
        ("llama.context_length", 64),
    ] {
        g.set(key, Value::U32(n as u32));
    }
    let take = |g: &mut Crafted, from: &str, name: &str, dtype: GgmlDType, dims: &[usize]| {
        let size = dims.iter().product::<usize>() * if dtype == GgmlDType::F16 { 2 } else { 4 };
        CraftedTensor {
            name: name.to_string(),
            dtype,
            dims: dims.to_vec(),
            bytes: g.tensor_mut(from).bytes[..size].to_vec(),
            offset: None,
        }
    };
    let f32 = GgmlDType::F32;
    let mut tensors = vec![take(
        &mut g,
        "token_embd.weight",
        "token_embd.weight",
        GgmlDType::F16,
        &[VOCAB, EMBD],
    )];
    for norm in [
        "blk.0.attn_norm.weight",
        "blk.0.ffn_norm.weight",
        "output_norm.weight",
    ] {
        tensors.push(take(&mut g, norm, norm, f32, &[EMBD]));
    }
    for m in ["attn_q", "attn_k", "attn_v", "attn_output"] {
        let name = format!("blk.0.{m}.weight");
        tensors.push(take(&mut g, &name, &name, f32, &[EMBD, EMBD]));
    }
    for (m, dims) in [
        ("ffn_gate", [FF, EMBD]),
        ("ffn_up", [FF, EMBD]),
        ("ffn_down", [EMBD, FF]),
    ] {
        let name = format!("blk.0.{m}.weight");
        tensors.push(take(&mut g, &name, &name, f32, &dims));
    }
    if !tied {
        tensors.push(take(
            &mut g,
            "output.weight",
            "output.weight",
            GgmlDType::F16,
            &[VOCAB, EMBD],
        ));
    }
    g.tensors = tensors;
    let path = work_file(if tied { "seed-tied.gguf" } else { "seed.gguf" });
    g.write(&path);
    let bytes = std::fs::read(&path).expect("the seed just written");
    let _ = std::fs::remove_file(&path);
    bytes
}

// ---------------------------------------------------------------------------------------------------------
// Tokenizers: any text encodes to in-range, unprotected ids that decode back to the text; any ids decode,
// and decoding them one at a time gives the same text.

#[test]
fn tokenizer() {
    let texts: &[&str] = &[
        "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
        "emoji 🦙🚀 日本語 café e\u{301} \r\n\t\0",
        "<s></s><unk><|im_end|><|endoftext|> <PRE> <SUF> <MID> <EOT> <step> <|fim_prefix|>",
        "    \n\n\n      x",
    ];
    let mut seeds = Vec::new();
    for mode in 0..MODES * tokenizers().len() as u8 {
        for text in texts {
            seeds.push([&[mode][..], text.as_bytes()].concat());
        }
    }
    fuzz(Target {
        name: "tokenizer",
        run: tokenizer_target,
        seeds,
        dictionary: &[
            b"<s>",
            b"</s>",
            b"<PRE>",
            b"<|im_start|>",
            b"<|fim_middle|>",
            b" ",
            b"\n",
            b"\xe2\x96\x81",
            b"\xf0\x9f",
            b"'s",
            b"123",
        ],
        max_len: 4 << 10,
        hot_prefix: 1,
    });
}

/// Encode without and with the dummy prefix, decode ids: the second byte of the mode.
const MODES: u8 = 3;

/// Code Llama from `tokenizer.json` and from GGUF metadata (SentencePiece), Qwen2.5-Coder's vocabulary
/// from its GGUF (byte-level BPE).
fn tokenizers() -> &'static [(&'static str, Tokenizer)] {
    static T: OnceLock<Vec<(&str, Tokenizer)>> = OnceLock::new();
    T.get_or_init(|| {
        let from_gguf = |path: PathBuf| {
            let f = GgufFile::open(&path).expect("a valid model file");
            Tokenizer::from_gguf(&f.content).expect("its tokenizer")
        };
        vec![
            (
                "codellama tokenizer.json",
                Tokenizer::from_file(&common::codellama_fixture("tokenizer.json"))
                    .expect("tokenizer.json"),
            ),
            (
                "codellama gguf",
                from_gguf(common::codellama_fixture("tiny-codellama-mha.gguf")),
            ),
            ("qwen2.5-coder gguf", from_gguf(common::qwen_model())),
        ]
    })
}

fn tokenizer_target(data: &[u8]) -> String {
    let Some((&mode, rest)) = data.split_first() else {
        return "empty".into();
    };
    let all = tokenizers();
    let (name, tok) = &all[mode as usize % all.len()];
    let vocab = tok.vocab_size();
    match mode / all.len() as u8 % MODES {
        op @ (0 | 1) => {
            let text = String::from_utf8_lossy(rest);
            let dummy = op == 1;
            let ids = tok.encode(&text, dummy);
            for &id in &ids {
                assert!(
                    (id as usize) < vocab,
                    "{name}: id {id} out of range for {text:?}"
                );
                assert!(
                    !tok.is_protected(id),
                    "{name}: protected id {id} for {text:?}"
                );
            }
            // The promise (tokenizer.rs, "Round trips"): decode(encode(text)) is the text; for
            // SentencePiece with "▁" read as a space, and the dummy space in front when asked for (never
            // for the empty string).
            let spm = tok.kind() == TokenizerKind::SentencePiece;
            let want = match (spm, dummy && !text.is_empty()) {
                (true, true) => format!(" {}", text.replace('\u{2581}', " ")),
                (true, false) => text.replace('\u{2581}', " "),
                (false, _) => text.to_string(),
            };
            assert_eq!(
                tok.decode(&ids),
                want,
                "{name}: round trip of {text:?} (ids {ids:?})"
            );
            format!("{name} encode {}", ids.len().min(8))
        }
        _ => {
            // Ids from the bytes, including some past the vocabulary.
            let ids: Vec<u32> = rest
                .chunks(3)
                .map(|c| c.iter().fold(0u32, |a, &b| a << 8 | b as u32) % (vocab as u32 + 16))
                .collect();
            let text = tok.decode(&ids);
            let mut dec = IncrementalDecoder::new();
            let mut pieces: String = ids.iter().map(|&id| dec.push(tok, id)).collect();
            pieces.push_str(&dec.finish());
            assert_eq!(pieces, text, "{name}: incremental decoding of {ids:?}");
            format!("{name} decode {}", text.chars().count().min(8))
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Document sync: random edits in every position encoding, applied to the documents store and to a
// reference model of the text, agree.

#[test]
fn document_sync() {
    fuzz(Target {
        name: "document_sync",
        run: document_sync_target,
        seeds: vec![
            b"\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f".to_vec(),
            b"\x13\x03\x04\x05\x00\x82\x03\x03\x01\x00\x00\x00\x81\xff\x02\x04\x04\x11\x22\x01\x04"
                .to_vec(),
            (0..=255u8).collect(),
        ],
        dictionary: &[],
        max_len: 1 << 10,
        hot_prefix: 64,
    });
}

fn document_sync_target(data: &[u8]) -> String {
    let mut bytes = text_model::Bytes(data);
    let initial = bytes.text();
    let docs = Documents::new();
    let uri = "file:///fuzz.txt";
    docs.open(uri, Document::new(&initial, "plaintext", 0));
    let mut model = text_model::TextModel::new(&initial);
    let mut edits = 0;
    while let Some(op) = bytes.next() {
        let enc = [
            PositionEncoding::Utf8,
            PositionEncoding::Utf16,
            PositionEncoding::Utf32,
        ][op as usize % 3];
        let (a, b) = (bytes.pos(), bytes.pos());
        let text = bytes.text();
        let range = (op & 0x80 == 0).then_some((a, b));
        docs.with_mut(uri, |d| d.edit(range, &text, enc))
            .expect("the document is open");
        model.edit(range, &text, enc);
        edits += 1;
        let doc = docs.snapshot(uri).expect("the document is open");
        assert_eq!(
            doc.text(),
            model.text(),
            "after edit {edits}: {range:?} {text:?} in {enc:?}"
        );
        // Conversions both ways agree with the model at a probe position.
        let probe = bytes.pos();
        let offset = doc.offset(probe, enc);
        assert_eq!(
            offset,
            model.offset(probe, enc),
            "offset of {probe:?} in {enc:?}"
        );
        assert_eq!(
            doc.position(offset, enc),
            model.position(offset, enc),
            "position of {offset} in {enc:?}"
        );
        assert_eq!(doc.len_lines(), model.len_lines(), "line count");
    }
    format!("{edits} edits")
}

// ---------------------------------------------------------------------------------------------------------
// The remote engines' streams and the LSP input: see `streams`.

#[test]
fn lsp_framing() {
    fuzz(streams::lsp_framing());
}

#[test]
fn sse_ndjson() {
    fuzz(streams::sse_ndjson());
}

/// Inputs that once failed a target, kept as cases (`harness` prints them in hex).
#[test]
fn regressions() {
    let many_data_lines = {
        let piece = b"data:\n".repeat(42);
        let step = [&[piece.len() as u8, 212][..], &piece].concat();
        [&[0u8][..], &step, &step].concat()
    };
    streams::sse_ndjson_target(&many_data_lines);
}
