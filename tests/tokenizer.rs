//! Tokenizer tests against real files: Code Llama's tokenizer.json and the tiny Code Llama GGUF (same
//! vocabulary), and the SmolLM2 GGUF checked against llama.cpp's ids.

mod common;

use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use candle_core::quantized::gguf_file;
use codellama_engine::tokenizer::{
    FimFamily, IncrementalDecoder, Tokenizer, TokenizerError, TokenizerKind,
};
use codellama_test_support::fixtures::token_ids;
use serde_json::Value;

const BOS: u32 = 1;
const EOS: u32 = 2;
const PRE: u32 = 32007;
const SUF: u32 = 32008;
const MID: u32 = 32009;
const EOT: u32 = 32010;

fn read_gguf(path: &Path) -> gguf_file::Content {
    let mut file =
        std::fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    gguf_file::Content::read(&mut file).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn timed<T>(what: &str, load: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let value = load();
    let elapsed = start.elapsed();
    eprintln!("load time {what}: {elapsed:?}");
    // Generous: the budget is 200 ms in release on a quiet machine; CI boxes are shared.
    assert!(elapsed < Duration::from_secs(3), "{what} took {elapsed:?}");
    value
}

fn codellama_json() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| {
        let path = common::codellama_fixture("tokenizer.json");
        timed("codellama tokenizer.json", || Tokenizer::from_file(&path))
            .expect("tokenizer.json loads")
    })
}

fn codellama_gguf() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| {
        let content = read_gguf(&common::codellama_fixture("tiny-codellama-mha.gguf"));
        timed("codellama gguf", || Tokenizer::from_gguf(&content))
            .expect("tiny gguf tokenizer loads")
    })
}

fn smollm() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| {
        let content = read_gguf(&common::small_model());
        timed("smollm2 gguf", || Tokenizer::from_gguf(&content)).expect("SmolLM2 tokenizer loads")
    })
}

/// Both Code Llama tokenizers, named for messages.
fn codellamas() -> [(&'static str, &'static Tokenizer); 2] {
    [
        ("tokenizer.json", codellama_json()),
        ("gguf", codellama_gguf()),
    ]
}

fn text<'a>(value: &'a Value, key: &str) -> &'a str {
    value[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} is not a string in {value}"))
}

fn golden(name: &str) -> Vec<Value> {
    let json = common::read_json(&common::codellama_fixture(name));
    json.as_array().expect("golden file is a list").clone()
}

/// Code Llama ids that must never come from user text.
fn is_codellama_protected(id: u32) -> bool {
    id <= 2 || (32000..=32015).contains(&id)
}

#[test]
fn tokenize_golden_from_both_codellama_tokenizers() {
    for (source, tok) in codellamas() {
        let mut exact = 0;
        for case in golden("tokenize-golden.json") {
            let input = text(&case, "text");
            let got = tok.encode(input, true);
            let expected = token_ids(&case["ids"]);
            if expected.iter().any(|&id| is_codellama_protected(id)) {
                // The reference assembles marker text into markers; we keep it text (module docs).
                assert!(
                    !got.iter().any(|&id| tok.is_protected(id)),
                    "{source}: {input:?} -> {got:?}"
                );
                assert_eq!(tok.decode(&got), format!(" {input}"), "{source}: {input:?}");
            } else {
                assert_eq!(got, expected, "{source}: {input:?}");
                exact += 1;
            }
        }
        assert!(exact >= 15, "{source}: only {exact} exact cases");
    }
}

#[test]
fn gguf_without_token_types_still_matches() {
    // Old files lack tokenizer.ggml.token_type: byte pieces are found by name, as llama.cpp does.
    let mut content = read_gguf(&common::codellama_fixture("tiny-codellama-mha.gguf"));
    content.metadata.remove("tokenizer.ggml.token_type");
    let tok = Tokenizer::from_gguf(&content).expect("loads without token types");
    for case in golden("tokenize-golden.json") {
        let expected = token_ids(&case["ids"]);
        if !expected.iter().any(|&id| is_codellama_protected(id)) {
            assert_eq!(tok.encode(text(&case, "text"), true), expected);
        }
    }
    assert_eq!(tok.decode(&tok.encode("🦙\r\n", false)), "🦙\r\n");
}

#[test]
fn tokenizer_is_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Tokenizer>();
}

#[test]
fn marker_text_stays_text() {
    for (source, tok) in codellamas() {
        for input in [
            " <PRE>",
            "<PRE>",
            "a <PRE> b",
            " <PRE>=",
            " <SUF>",
            " <MID>",
            " <EOT>",
            " <EOT><EOT>",
            " <SU",
            " <E",
        ] {
            let got = tok.encode(input, true);
            assert!(
                !got.iter().any(|&id| is_codellama_protected(id)),
                "{source}: {input:?} -> {got:?}"
            );
            assert_eq!(tok.decode(&got), format!(" {input}"), "{source}: {input:?}");
            let infill = tok.encode(input, false);
            assert!(
                !infill.iter().any(|&id| is_codellama_protected(id)),
                "{source}: {input:?} -> {infill:?}"
            );
            assert_eq!(tok.decode(&infill), input, "{source}: {input:?}");
        }
        // Text next to a marker is unchanged: "x<PRE>" never formed a marker anyway.
        assert_eq!(
            tok.encode("x<PRE>", true),
            [921, 29966, 15094, 29958],
            "{source}"
        );
    }
}

#[test]
fn both_codellama_tokenizers_agree() {
    let corpus = [
        "fn main() {\n    println!(\"hi\");\n}\n",
        " <PRE> <SUF> <MID> <EOT> <EOT><EOT> <PRE= <SUF <MI",
        "</s><s><unk> [INST] <<SYS>>",
        "  \t\r\n  mixed   whitespace\u{3000}end ",
        "emoji 🦙🚀✨ cjk 生活的真谛是 한국어 العربية",
        "\u{0}\u{1}\u{7f} control chars",
        "▁ literal space mark ▁▁",
    ];
    for input in corpus {
        for dummy in [true, false] {
            assert_eq!(
                codellama_json().encode(input, dummy),
                codellama_gguf().encode(input, dummy),
                "{input:?} dummy={dummy}"
            );
        }
    }
}

#[test]
fn fim_golden_slices() {
    for (source, tok) in codellamas() {
        for case in golden("fim-golden.json") {
            let name = text(&case, "name");
            let (prefix, suffix) = (text(&case, "prefix"), text(&case, "suffix"));
            let enc_prefix = tok.encode(prefix, true);
            let enc_suffix = tok.encode(suffix, false);
            if name.starts_with("literal_") {
                for id in enc_prefix.iter().chain(&enc_suffix) {
                    assert!(
                        !is_codellama_protected(*id),
                        "{source} {name}: protected id {id}"
                    );
                    assert!(!tok.is_protected(*id), "{source} {name}: protected id {id}");
                }
                let expected_prefix = if prefix.is_empty() {
                    String::new()
                } else {
                    format!(" {prefix}")
                };
                assert_eq!(tok.decode(&enc_prefix), expected_prefix, "{source} {name}");
                assert_eq!(tok.decode(&enc_suffix), suffix, "{source} {name}");
                continue;
            }
            let psm = token_ids(&case["psm_ids"]);
            let mut built = vec![BOS, PRE];
            built.extend(&enc_prefix);
            built.push(SUF);
            built.extend(&enc_suffix);
            built.push(MID);
            assert_eq!(built, psm, "{source} {name} (psm)");
            let mut spm = vec![BOS, PRE, SUF];
            spm.extend(&enc_suffix);
            spm.push(MID);
            spm.extend(&enc_prefix);
            assert_eq!(spm, token_ids(&case["spm_ids"]), "{source} {name} (spm)");
        }
    }
}

/// Meta's Llama 2 chat format, built from id lists.
fn instruct_ids(tok: &Tokenizer, messages: &[Value]) -> Vec<u32> {
    let mut messages: Vec<(String, String)> = messages
        .iter()
        .map(|m| (text(m, "role").to_owned(), text(m, "content").to_owned()))
        .collect();
    if messages.first().is_some_and(|(role, _)| role == "system") {
        let (_, system) = messages.remove(0);
        let first_user = &mut messages[0].1;
        *first_user = format!("<<SYS>>\n{system}\n<</SYS>>\n\n{first_user}");
    }
    let mut out = Vec::new();
    for turn in messages.chunks(2) {
        let user = turn[0].1.trim();
        out.push(BOS);
        match turn.get(1) {
            Some((_, answer)) => {
                out.extend(tok.encode(&format!("[INST] {user} [/INST] {} ", answer.trim()), true));
                out.push(EOS);
            }
            None => out.extend(tok.encode(&format!("[INST] {user} [/INST]"), true)),
        }
    }
    out
}

#[test]
fn instruct_golden() {
    for (source, tok) in codellamas() {
        for case in golden("instruct-golden.json") {
            let messages = case["messages"].as_array().expect("messages");
            assert_eq!(
                instruct_ids(tok, messages),
                token_ids(&case["ids"]),
                "{source} {}",
                text(&case, "name")
            );
        }
    }
}

fn smollm_reference() -> Value {
    common::read_json(&common::reference("smollm2-llamacpp.json"))
}

fn qwen() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| {
        let content = read_gguf(&common::qwen_model());
        timed("qwen2.5-coder gguf", || Tokenizer::from_gguf(&content))
            .expect("Qwen tokenizer loads")
    })
}

/// The byte-level tokenizers with llama.cpp references: each reference's `tokenize` cases and the
/// prompts of its `greedy` cases must give llama.cpp's ids.
fn llama_cpp_references() -> [(&'static Tokenizer, Value); 2] {
    [
        (smollm(), smollm_reference()),
        (
            qwen(),
            common::read_json(&common::reference("qwen25coder-0.5b-llamacpp.json")),
        ),
    ]
}

#[test]
fn byte_level_tokenizers_match_llama_cpp_tokenize() {
    for (tok, reference) in llama_cpp_references() {
        let cases = reference["tokenize"].as_array().expect("tokenize cases");
        let mut checked = 0;
        for case in cases
            .iter()
            .filter(|c| c["parse_special"] == Value::Bool(false))
        {
            let input = text(case, "text");
            assert_eq!(
                tok.encode_plain(input),
                token_ids(&case["ids"]),
                "{}: {input:?}",
                reference["model"]
            );
            checked += 1;
        }
        assert!(
            checked >= 20,
            "only {checked} cases in {}",
            reference["model"]
        );
    }
}

#[test]
fn byte_level_tokenizers_match_llama_cpp_prompt_ids() {
    for (tok, reference) in llama_cpp_references() {
        for case in reference["greedy"].as_array().expect("greedy cases") {
            let prompt = text(case, "prompt");
            assert_eq!(
                tok.encode_plain(prompt),
                token_ids(&case["prompt_ids"]),
                "{}: {prompt:?}",
                reference["model"]
            );
        }
    }
}

/// llama.cpp's own test vectors for the qwen2 vocabulary (`ggml-vocab-qwen2.gguf.inp/.out`, fetched by
/// `scripts/fetch-model`): inputs separated by `\n__ggml_vocab_test__\n`, one line of ids per input.
/// Checked with the vocabulary-only GGUF they come with and with the Qwen2.5-Coder model's tokenizer.
#[test]
fn qwen2_matches_llama_cpp_vocab_tests() {
    let dir = common::checkout().join("models/llama.cpp-vocab");
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name))
            .unwrap_or_else(|e| panic!("{}/{name}: {e} (run scripts/fetch-model)", dir.display()))
    };
    let inputs = read("ggml-vocab-qwen2.gguf.inp");
    let outputs = read("ggml-vocab-qwen2.gguf.out");
    let inputs: Vec<&str> = inputs.split("\n__ggml_vocab_test__\n").collect();
    let outputs: Vec<&str> = outputs.split('\n').collect();
    assert_eq!(inputs.len(), outputs.len());
    let vocab_only = Tokenizer::from_gguf(&read_gguf(&dir.join("ggml-vocab-qwen2.gguf")))
        .expect("ggml-vocab-qwen2.gguf loads");
    for tok in [&vocab_only, qwen()] {
        for (input, line) in inputs.iter().zip(&outputs) {
            let want: Vec<u32> = line
                .split_whitespace()
                .map(|t| t.parse().expect("id"))
                .collect();
            assert_eq!(tok.encode_plain(input), want, "{input:?}");
        }
    }
    assert!(inputs.len() >= 40, "only {} vectors", inputs.len());
}

#[test]
fn qwen_settings_and_specials() {
    let tok = qwen();
    assert_eq!(tok.kind(), TokenizerKind::ByteLevel);
    assert_eq!(tok.vocab_size(), 151936);
    assert!(!tok.add_bos());
    let fim = tok.fim_ids().expect("Qwen2.5-Coder has FIM tokens");
    assert_eq!(fim.family, FimFamily::Qwen);
    for (piece, id) in [
        ("<|endoftext|>", 151643),
        ("<|im_start|>", 151644),
        ("<|im_end|>", 151645),
        ("<|fim_prefix|>", 151659),
        ("<|fim_middle|>", 151660),
        ("<|fim_suffix|>", 151661),
        ("<|fim_pad|>", 151662),
        ("<|repo_name|>", 151663),
        ("<|file_sep|>", 151664),
    ] {
        assert_eq!(tok.special_id(piece), Some(id), "{piece}");
        // User text that spells a control token stays text.
        assert!(!tok.encode_plain(piece).contains(&id), "{piece}");
    }
}

#[test]
fn smollm_chat_prompt_from_ids() {
    // llama.cpp parsed the special tokens of this prompt; we insert them as ids instead.
    let tok = smollm();
    let reference = smollm_reference();
    let chat = &reference["chat"][0];
    let start = tok.special_id("<|im_start|>").expect("<|im_start|>");
    let end = tok.special_id("<|im_end|>").expect("<|im_end|>");
    let mut built = vec![start];
    built.extend(tok.encode_plain("user\nWrite a Python function that reverses a string."));
    built.push(end);
    built.extend(tok.encode_plain("\n"));
    built.push(start);
    built.extend(tok.encode_plain("assistant\n"));
    assert_eq!(built, token_ids(&chat["prompt_ids"]));
}

#[test]
fn smollm_settings_and_specials() {
    let tok = smollm();
    assert_eq!(tok.kind(), TokenizerKind::ByteLevel);
    assert_eq!(tok.vocab_size(), 49152);
    assert!(!tok.add_bos());
    assert!(!tok.add_space_prefix());
    assert_eq!(tok.bos_id(), Some(1));
    assert_eq!(tok.eos_id(), Some(2));
    assert_eq!(tok.end_of_generation_ids(), [2, 0]);
    assert_eq!(tok.fim_ids(), None);
    assert_eq!(tok.special_id("<|im_start|>"), Some(1));
    assert_eq!(tok.special_id("hello"), None);
    assert!(tok
        .chat_template()
        .is_some_and(|t| t.contains("<|im_start|>")));
    assert!((0..=16)
        .all(|id| tok.is_control(id) && tok.is_protected(id) && tok.token_bytes(id).is_empty()));
    // Control-token text in user code stays text.
    let ids = tok.encode_plain("<|im_start|><|im_end|><|endoftext|>");
    assert!(!ids.iter().any(|&id| id <= 16), "{ids:?}");
}

#[test]
fn codellama_settings_and_specials() {
    for (source, tok) in codellamas() {
        assert_eq!(tok.kind(), TokenizerKind::SentencePiece, "{source}");
        assert_eq!(tok.vocab_size(), 32016, "{source}");
        assert!(tok.add_bos(), "{source}");
        assert!(tok.add_space_prefix(), "{source}");
        assert_eq!(
            (tok.bos_id(), tok.eos_id(), tok.eot_id()),
            (Some(BOS), Some(EOS), Some(EOT)),
            "{source}"
        );
        assert_eq!(tok.end_of_generation_ids(), [EOS, EOT], "{source}");
        let fim = tok.fim_ids().expect("Code Llama infills");
        assert_eq!(fim.family, FimFamily::CodeLlama, "{source}");
        assert_eq!(
            (fim.prefix, fim.suffix, fim.middle, fim.eot),
            (PRE, SUF, MID, Some(EOT)),
            "{source}"
        );
        assert_eq!(tok.special_id("<s>"), Some(BOS), "{source}");
        assert_eq!(tok.special_id("\u{2581}<PRE>"), Some(PRE), "{source}");
        assert_eq!(tok.special_id("\u{2581}the"), None, "{source}");
        for id in 0..tok.vocab_size() as u32 {
            let expected = matches!(id, 1 | 2) || (32000..=32015).contains(&id);
            assert_eq!(
                tok.is_protected(id),
                expected,
                "{source}: id {id} {:?}",
                tok.token_piece(id)
            );
        }
        assert_eq!(tok.token_id("\u{2581}<PRE>"), Some(PRE), "{source}");
        assert_eq!(tok.token_piece(29871), Some("\u{2581}"), "{source}");
        assert_eq!(tok.token_bytes(13), b"\n", "{source}");
        assert_eq!(tok.token_bytes(29871), b" ", "{source}");
        assert_eq!(tok.token_bytes(BOS), b"", "{source}");
        assert_eq!(tok.token_bytes(EOT), b"", "{source}");
        assert_eq!(tok.token_bytes(u32::MAX), b"", "{source}");
        assert_eq!(tok.encode("", true), Vec::<u32>::new(), "{source}");
        assert_eq!(tok.encode("", false), Vec::<u32>::new(), "{source}");
        assert_eq!(tok.encode_plain("Hello world"), [15043, 3186], "{source}");
    }
}

const ROUND_TRIP: [&str; 6] = [
    "生活的真谛是 计算平均值",
    "emoji 🦙🚀✨ done 👩‍👩‍👧",
    "line one\r\nline two\r\n\r\n",
    "\ttabs\t\tand  spaces   ",
    "mixed: café naïve Ωμέγα русский 日本語",
    "<s></s><unk><|im_end|><|endoftext|> <PRE> <EOT>",
];

#[test]
fn decode_round_trips() {
    for text in ROUND_TRIP {
        for (source, tok) in codellamas() {
            assert_eq!(tok.decode(&tok.encode(text, false)), text, "{source}");
            assert_eq!(
                tok.decode(&tok.encode(text, true)),
                format!(" {text}"),
                "{source}"
            );
        }
        let tok = smollm();
        assert_eq!(tok.decode(&tok.encode_plain(text)), text, "smollm");
    }
}

/// The one exception to the round trip (found by the fuzz tests): SentencePiece spells a space as "▁", so
/// a "▁" in the text is encoded as that piece and comes back as a space; byte-level BPE keeps it.
#[test]
fn a_literal_sentencepiece_space_mark_decodes_as_a_space() {
    let text = "a\u{2581}b \u{2581}";
    for (source, tok) in codellamas() {
        let ids = tok.encode(text, false);
        assert_eq!(tok.encode("a b  ", false), ids, "{source}");
        assert_eq!(tok.decode(&ids), "a b  ", "{source}");
    }
    let tok = smollm();
    assert_eq!(tok.decode(&tok.encode_plain(text)), text, "smollm");
}

#[test]
fn decode_keeps_leading_space() {
    for (source, tok) in codellamas() {
        assert_eq!(tok.decode(&[15043, 3186]), " Hello world", "{source}");
        assert_eq!(tok.decode(&[BOS, 15043, EOS]), " Hello", "{source}");
    }
}

fn incremental(tok: &Tokenizer, ids: &[u32]) -> (String, usize) {
    let mut decoder = IncrementalDecoder::new();
    let mut out = String::new();
    let mut pieces_with_partial_char = 0;
    for &id in ids {
        let delta = decoder.push(tok, id);
        if delta.is_empty() && !tok.token_bytes(id).is_empty() {
            pieces_with_partial_char += 1;
        }
        out.push_str(&delta);
    }
    out.push_str(&decoder.finish());
    (out, pieces_with_partial_char)
}

#[test]
fn incremental_decoder_matches_decode() {
    for text in ROUND_TRIP {
        for tok in [codellama_json(), codellama_gguf(), smollm()] {
            let ids = tok.encode(text, true);
            assert_eq!(incremental(tok, &ids).0, tok.decode(&ids), "{text:?}");
        }
    }
    // 🦙 is four byte tokens for Code Llama: three of them complete nothing.
    let tok = codellama_gguf();
    let ids = tok.encode("🦙", false);
    assert_eq!(ids, [243, 162, 169, 156]);
    assert_eq!(incremental(tok, &ids), ("🦙".to_owned(), 3));
}

#[test]
fn incremental_decoder_handles_invalid_bytes() {
    let tok = codellama_gguf();
    let byte = |b: u8| tok.token_id(&format!("<0x{b:02X}>")).expect("byte token");
    // A lone continuation byte, a truncated sequence followed by ASCII, and a truncated end.
    let ids = [
        byte(0x80),
        263,
        byte(0xE4),
        byte(0xBD),
        263,
        byte(0xF0),
        byte(0x9F),
    ];
    assert_eq!(incremental(tok, &ids).0, tok.decode(&ids));
    assert_eq!(tok.decode(&ids), "\u{FFFD} a\u{FFFD} a\u{FFFD}");
}

#[test]
fn gguf_without_tokenizer_keys_is_a_clear_error() {
    let mut content = read_gguf(&common::codellama_fixture("tiny-codellama-mha.gguf"));
    content
        .metadata
        .retain(|key, _| !key.starts_with("tokenizer."));
    let error = Tokenizer::from_gguf(&content).expect_err("no tokenizer keys");
    assert!(
        matches!(&error, TokenizerError::MissingKey { key } if key == "tokenizer.ggml.model"),
        "{error}"
    );
    assert!(
        error.to_string().contains("tokenizer.ggml.model"),
        "{error}"
    );
}

#[test]
fn gguf_with_short_scores_is_a_clear_error() {
    let mut content = read_gguf(&common::codellama_fixture("tiny-codellama-mha.gguf"));
    if let Some(gguf_file::Value::Array(scores)) = content.metadata.get_mut("tokenizer.ggml.scores")
    {
        scores.truncate(100);
    }
    let error = Tokenizer::from_gguf(&content).expect_err("short scores");
    let message = error.to_string();
    assert!(
        message.contains("tokenizer.ggml.scores") && message.contains("100"),
        "{message}"
    );
}

#[test]
fn gguf_with_missing_tokens_is_a_clear_error() {
    let mut content = read_gguf(&common::codellama_fixture("tiny-codellama-mha.gguf"));
    content.metadata.remove("tokenizer.ggml.tokens");
    let error = Tokenizer::from_gguf(&content).expect_err("no tokens");
    assert!(
        error.to_string().contains("tokenizer.ggml.tokens"),
        "{error}"
    );
}

#[test]
fn unknown_pre_tokenizer_is_named() {
    let mut content = read_gguf(&common::small_model());
    content.metadata.insert(
        "tokenizer.ggml.pre".into(),
        gguf_file::Value::String("klingon-bpe".into()),
    );
    let error = Tokenizer::from_gguf(&content).expect_err("unknown pre");
    let message = error.to_string();
    assert!(
        message.contains("\"klingon-bpe\"") && message.contains("smollm"),
        "{message}"
    );
}

#[test]
fn malformed_merge_entries_are_skipped() {
    let mut content = read_gguf(&common::small_model());
    if let Some(gguf_file::Value::Array(merges)) = content.metadata.get_mut("tokenizer.ggml.merges")
    {
        merges.push(gguf_file::Value::String("nospace".into()));
        merges.insert(0, gguf_file::Value::String(String::new()));
    }
    let tok = Tokenizer::from_gguf(&content).expect("loads despite malformed merges");
    let text = "def fib(n):\n    return 1";
    assert_eq!(tok.encode_plain(text), smollm().encode_plain(text));
}

#[test]
fn unsupported_model_is_named() {
    let mut content = read_gguf(&common::small_model());
    content.metadata.insert(
        "tokenizer.ggml.model".into(),
        gguf_file::Value::String("bert".into()),
    );
    let error = Tokenizer::from_gguf(&content).expect_err("bert");
    assert!(error.to_string().contains("\"bert\""), "{error}");
}

#[test]
fn other_pre_tokenizers_load_and_round_trip() {
    // The SmolLM2 vocabulary under other llama.cpp pre-tokenizers: each loads and round-trips. (The
    // vocabulary has single-digit number pieces only, so where the regexes agree on this text the ids do.)
    let with_pre = |name: &str| {
        let mut content = read_gguf(&common::small_model());
        content.metadata.insert(
            "tokenizer.ggml.pre".into(),
            gguf_file::Value::String(name.into()),
        );
        Tokenizer::from_gguf(&content).unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    let digits = "x = 12345";
    let smollm_ids = smollm().encode_plain(digits);
    for name in [
        "starcoder",
        "qwen2",
        "deepseek-coder",
        "default",
        "llama-bpe",
        "gpt-2",
    ] {
        let tok = with_pre(name);
        let ids = tok.encode_plain(digits);
        assert_eq!(tok.decode(&ids), digits, "{name}");
        for text in ROUND_TRIP {
            assert_eq!(tok.decode(&tok.encode_plain(text)), text, "{name}");
        }
        match name {
            "starcoder" | "qwen2" => assert_eq!(ids, smollm_ids, "{name}"),
            _ => {}
        }
    }
}

#[test]
fn missing_tokenizer_json_is_a_clear_error() {
    let path = Path::new("/definitely/not/here/tokenizer.json");
    let error = Tokenizer::from_file(path).expect_err("missing file");
    assert!(matches!(error, TokenizerError::Read { .. }), "{error}");
    let message = error.to_string();
    assert!(
        message.contains("/definitely/not/here/tokenizer.json"),
        "{message}"
    );
}

#[test]
fn malformed_tokenizer_json_is_a_clear_error() {
    let dir = std::env::temp_dir().join(format!(
        "codellama-lsp-tokenizer-test-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("tokenizer.json");
    std::fs::write(
        &path,
        "{\"model\": {\"type\": \"WordPiece\", \"vocab\": {}}}",
    )
    .expect("write");
    let error = Tokenizer::from_file(&path).expect_err("WordPiece");
    assert!(error.to_string().contains("WordPiece"), "{error}");
    std::fs::write(&path, "not json").expect("write");
    let error = Tokenizer::from_file(&path).expect_err("not json");
    assert!(matches!(error, TokenizerError::Parse { .. }), "{error}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn tokenizer_config_beside_tokenizer_json_is_read() {
    let dir = std::env::temp_dir().join(format!(
        "codellama-lsp-tokenizer-config-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::copy(
        common::codellama_fixture("tokenizer.json"),
        dir.join("tokenizer.json"),
    )
    .expect("copy");
    let config = r#"{"add_bos_token": false, "bos_token": {"content": "<s>"}, "eos_token": "</s>",
                     "chat_template": [{"name": "default", "template": "{{ messages }}"}]}"#;
    std::fs::write(dir.join("tokenizer_config.json"), config).expect("write");
    let tok = Tokenizer::from_file(&dir.join("tokenizer.json")).expect("loads");
    assert!(!tok.add_bos());
    assert_eq!((tok.bos_id(), tok.eos_id()), (Some(BOS), Some(EOS)));
    assert_eq!(tok.chat_template(), Some("{{ messages }}"));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn long_input_encodes_quickly() {
    let source = "fn main() {\n    let x = vec![1, 2, 3]; // 计算 🦙\n}\n".repeat(400);
    for tok in [codellama_json(), codellama_gguf(), smollm()] {
        let start = Instant::now();
        let ids = tok.encode(&source, true);
        let elapsed = start.elapsed();
        eprintln!("{} bytes -> {} ids in {elapsed:?}", source.len(), ids.len());
        assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
        assert!(tok.decode(&ids).ends_with(&source));
    }
}

/// `cuts_at`: where a tokenizer says a text may be cut at a line start, the two sides' ids make up the
/// whole's (with SentencePiece's dummy space on the first side too). Checked at every line start of a real
/// file and of texts made to break it (blank and whitespace-only lines, trailing spaces, CRLF, indentation),
/// for SentencePiece (both Code Llama tokenizers), Qwen2's split and SmolLM's GPT-2 split. Each must also
/// allow the cuts a typing user needs: before every line (SentencePiece) or every line with content (Qwen2).
#[test]
fn cuts_at_line_starts_keep_the_ids_of_the_whole() {
    let file =
        std::fs::read_to_string(common::checkout().join("examples/typing/inventory.py")).unwrap();
    let made = [
        "x = 1\n\n\ny = 2\n",
        "def f():\n    a = 1   \n    \n\tb = 2\n  \n",
        "if x:\r\n    y()\r\n\r\nz\r\n",
        "a \n b\n\n c\n   ",
        "s = \"\"\"\n\n   text\n\"\"\"\n)\n]\n",
        "émoji 😀\n日本語\n  ü\n",
    ];
    let tokenizers = [
        ("tokenizer.json", codellama_json(), Some(true)),
        ("gguf", codellama_gguf(), Some(true)),
        ("qwen", qwen(), Some(false)),
        ("smollm", smollm(), None),
    ];
    for (name, tok, every_line) in tokenizers {
        let spm = tok.kind() == TokenizerKind::SentencePiece;
        for text in made.iter().copied().chain([file.as_str(), &file[..5000]]) {
            for (i, _) in text.match_indices('\n') {
                let at = i + 1;
                let after = &text[at..];
                let content = after.lines().next().is_some_and(|l| !l.trim().is_empty());
                if !tok.cuts_at(text, at) {
                    match every_line {
                        Some(true) => panic!("{name}: no cut before {after:.20?}"),
                        Some(false) => assert!(!content, "{name}: no cut before {after:.20?}"),
                        None => {}
                    }
                    continue;
                }
                // SentencePiece also with its dummy prefix (a leading space), which only the first part gets.
                for dummy_prefix in [false].into_iter().chain(spm.then_some(true)) {
                    let mut joined = tok.encode(&text[..at], dummy_prefix);
                    joined.extend(tok.encode(after, false));
                    assert_eq!(
                        joined,
                        tok.encode(text, dummy_prefix),
                        "{name}: cut before {after:.20?} (dummy prefix {dummy_prefix})"
                    );
                }
            }
            assert!(
                !tok.cuts_at(text, 1) || text.starts_with('\n'),
                "{name}: no line start"
            );
        }
    }
}
