//! Real models against llama.cpp on the same GGUF files (`../shared/reference`): greedy 32-token
//! continuations of the reference prompts for SmolLM2-135M (llama architecture) and Qwen2.5-Coder 0.5B
//! and 1.5B (qwen2). Each test prints where any sequence differs and requires most to be identical.
//!
//! Agreement needs more than "the same algorithm": every matrix product quantizes its input to 8 bits,
//! so a last-bit difference anywhere becomes a different integer now and then and, thirty layers later,
//! a different greedy token (a llama.cpp build without AMX agrees with the AMX-built reference on only
//! 3 of the SmolLM2 sequences). Our CPU path therefore follows llama.cpp's arithmetic operation for
//! operation: per-row block accumulation in the quantized products, f16 keys/values and f16
//! accumulation in attention with llama.cpp's summation order, its rope rounding and its polynomial exp
//! in SwiGLU. Prompts of 64 tokens or more go through llama.cpp's tiled attention, which we do not
//! replicate bit for bit, and K-quant weights are converted at load (Q4_K to Q4_1, with its scales
//! rounded to f16), so near-ties can still flip.

use std::path::Path;

use crate::gguf::GgufFile;
use crate::model::{Llama, Logits, ModelConfig, Weights};
use crate::sampler::argmax;
use candle_core::Device;
use codellama_test_support::fixtures::{self, token_ids};

fn load(path: &Path) -> Llama {
    let f = GgufFile::open(path).unwrap();
    let cfg = ModelConfig::from_gguf(&f, &mut Vec::new()).unwrap();
    Llama::from_gguf(&f, cfg, &Device::Cpu, Weights::AsStored, &mut |_| {}).unwrap()
}

/// Greedy continuations of every reference prompt; returns how many are identical to llama.cpp's.
fn identical_greedy(model: &Llama, reference: &str) -> usize {
    let reference = fixtures::read_json(&fixtures::reference(reference));
    let cases = reference["greedy"].as_array().unwrap();
    let mut matched = 0;
    let mut report = Vec::new();
    for case in cases {
        let (prompt, want) = (
            token_ids(&case["prompt_ids"]),
            token_ids(&case["greedy_ids"]),
        );
        let mut cache = model.new_cache(1024).unwrap();
        let mut logits = model.forward(&prompt, &mut cache, Logits::Last).unwrap();
        let mut got = Vec::new();
        for _ in 0..want.len() {
            let t = argmax(&logits);
            got.push(t);
            logits = model.forward(&[t], &mut cache, Logits::Last).unwrap();
        }
        match got.iter().zip(&want).position(|(a, b)| a != b) {
            None => matched += 1,
            Some(i) => report.push(format!(
                "{:?}: first difference at step {i}: ours {} llama.cpp {}",
                case["prompt"]
                    .as_str()
                    .unwrap()
                    .chars()
                    .take(30)
                    .collect::<String>(),
                got[i],
                want[i]
            )),
        }
    }
    eprintln!("{matched}/{} sequences identical; {report:#?}", cases.len());
    matched
}

#[test]
fn smollm2_greedy_matches_llama_cpp() {
    let model = load(&fixtures::small_model());
    let cfg = &model.cfg;
    assert_eq!(
        (cfg.n_layer, cfg.n_head, cfg.n_head_kv, cfg.context_length),
        (30, 9, 3, 8192)
    );
    let matched = identical_greedy(&model, "smollm2-llamacpp.json");
    assert!(matched >= 9, "only {matched}/10 identical");
}

#[test]
fn qwen_0_5b_greedy_matches_llama_cpp() {
    let model = load(&fixtures::qwen_model());
    let cfg = &model.cfg;
    assert_eq!(
        (
            cfg.n_layer,
            cfg.n_head,
            cfg.n_head_kv,
            cfg.head_dim,
            cfg.context_length
        ),
        (24, 14, 2, 64, 32768)
    );
    let matched = identical_greedy(&model, "qwen25coder-0.5b-llamacpp.json");
    assert!(matched >= 8, "only {matched}/10 identical");
}

#[test]
fn qwen_1_5b_greedy_matches_llama_cpp() {
    let Some(path) = fixtures::qwen_1_5b_model() else {
        return;
    };
    // Measured 7/10: this file is mostly Q4_K, which we convert to Q4_1 at load (scales rounded to
    // f16, products on 32-value blocks instead of llama.cpp's 256-value Q8_K rows), so near-ties flip
    // sooner than on the 0.5B file (mostly Q5_0/Q8_0, converted exactly).
    let matched = identical_greedy(&load(&path), "qwen25coder-1.5b-llamacpp.json");
    assert!(matched >= 7, "only {matched}/10 identical");
}
