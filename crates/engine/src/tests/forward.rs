//! The forward pass against references: greedy continuations of the tiny Code Llama fixtures (a float64
//! numpy reference, also matched by llama.cpp) token for token, cache reuse giving the cold result, and
//! greedy output with a q8_0 KV cache against an f16 one on real models and real code.

use std::cell::Cell;

use crate::error::EngineError;
use crate::gguf::GgufFile;
use crate::model::{KvCache, Llama, Logits, ModelConfig, Move, Weights};
use crate::prompt_cache::CachedPrompt;
use crate::sampler::argmax;
use crate::{KvType, Tokenizer};
use candle_core::Device;
use codellama_test_support::fixtures::{self, token_ids};

fn load(name: &str) -> Llama {
    let f = GgufFile::open(&fixtures::codellama_fixture(name)).expect("open fixture");
    let cfg = ModelConfig::from_gguf(&f, &mut Vec::new()).expect("config");
    Llama::from_gguf(&f, cfg, &Device::Cpu, Weights::AsStored, &mut |_| {}).expect("load")
}

fn greedy(model: &Llama, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut cache = model.new_cache(512).unwrap();
    let mut logits = model.forward(prompt, &mut cache, Logits::Last).unwrap();
    let mut out = Vec::new();
    for _ in 0..n {
        let t = argmax(&logits);
        out.push(t);
        logits = model.forward(&[t], &mut cache, Logits::Last).unwrap();
    }
    out
}

#[test]
fn tiny_codellama_greedy_matches_golden() {
    let golden = fixtures::read_json(&fixtures::codellama_fixture(
        "tiny-codellama-greedy-golden.json",
    ));
    let cases = golden.as_array().unwrap();
    assert!(cases.len() >= 6, "expected 3 models x 2 prompts");
    for case in cases {
        let model = load(case["model"].as_str().unwrap());
        let want = token_ids(&case["greedy_ids"]);
        let got = greedy(&model, &token_ids(&case["prompt_ids"]), want.len());
        assert_eq!(got, want, "{} / {}", case["model"], case["prompt_name"]);
    }
}

#[test]
fn first_step_logits_match_reference_values() {
    let golden = fixtures::read_json(&fixtures::codellama_fixture(
        "tiny-codellama-greedy-golden.json",
    ));
    for case in golden.as_array().unwrap() {
        let model = load(case["model"].as_str().unwrap());
        let mut cache = model.new_cache(64).unwrap();
        let logits = model
            .forward(&token_ids(&case["prompt_ids"]), &mut cache, Logits::Last)
            .unwrap();
        let tol = if case["model"].as_str().unwrap().contains("q8_0") {
            0.15
        } else {
            0.02
        };
        for pair in case["first_step_top5_logits"].as_array().unwrap() {
            let (id, want) = (
                pair[0].as_u64().unwrap() as usize,
                pair[1].as_f64().unwrap() as f32,
            );
            assert!(
                (logits[id] - want).abs() < tol,
                "{}: logit[{id}] = {} want {want}",
                case["model"],
                logits[id]
            );
        }
    }
}

/// A prompt that shares a prefix with what the cache holds computes only the rest, and gives the same
/// logits as a cold run (f32/f16 weights: exact up to float rounding).
#[test]
fn truncating_the_cache_reproduces_a_cold_run() {
    for name in ["tiny-codellama-mha.gguf", "tiny-codellama-gqa.gguf"] {
        let model = load(name);
        let a: Vec<u32> = vec![1, 822, 3349, 29918, 5464, 29918, 294, 18869, 29898, 29879];
        let mut b = a[..6].to_vec();
        b.extend([1678, 736, 1121]);
        let cold = {
            let mut cache = model.new_cache(64).unwrap();
            model.forward(&b, &mut cache, Logits::Last).unwrap()
        };
        let mut cache = model.new_cache(64).unwrap();
        model.forward(&a, &mut cache, Logits::Last).unwrap();
        cache.truncate(6);
        let warm = model.forward(&b[6..], &mut cache, Logits::Last).unwrap();
        assert_eq!(cache.len(), b.len());
        let max_diff = max_diff(&cold, &warm);
        assert!(max_diff < 1e-3, "{name}: max logit difference {max_diff}");
    }
}

/// Chunked prefill, one-token decode and `Logits::All` agree with each other.
#[test]
fn all_logits_agree_with_stepwise_decoding() {
    let model = load("tiny-codellama-gqa.gguf");
    let prompt = [1u32, 15043, 3186, 29892, 920, 526];
    let mut cache = model.new_cache(64).unwrap();
    let all = model.forward(&prompt, &mut cache, Logits::All).unwrap();
    assert_eq!(all.len(), prompt.len() * 32016);
    let mut cache = model.new_cache(64).unwrap();
    for (i, t) in prompt.iter().enumerate() {
        let step = model.forward(&[*t], &mut cache, Logits::Last).unwrap();
        let row = &all[i * 32016..(i + 1) * 32016];
        let d = max_diff(&step, row);
        assert!(d < 1e-3, "position {i}: {d}");
    }
}

/// `Logits::Head(n)` is the beginning of `Logits::Last`, bit for bit, on the fused CPU path (only those
/// rows of the output matrix computed) and the tensor path; past the vocabulary it is all of it.
#[test]
fn head_logits_are_the_first_of_the_last_logits() {
    let path = fixtures::qwen_model();
    let f = GgufFile::open(&path).unwrap();
    let cfg = ModelConfig::from_gguf(&f, &mut Vec::new()).unwrap();
    let vocab = cfg.vocab_size;
    let mut model =
        Llama::from_gguf(&f, cfg, &Device::Cpu, Weights::AsStored, &mut |_| {}).unwrap();
    let prompt: Vec<u32> = (0..20).map(|i| 100 + (i * 37) % 900).collect();
    for tensor in [false, true] {
        model.use_tensor_path(tensor);
        let mut cache = model.new_cache(64).unwrap();
        let (before, tail) = prompt.split_at(prompt.len() - 1);
        model.forward(before, &mut cache, Logits::Last).unwrap();
        let last = model.forward(tail, &mut cache, Logits::Last).unwrap();
        for n in [1000, 32_768, vocab + 5] {
            cache.truncate(before.len());
            let head = model.forward(tail, &mut cache, Logits::Head(n)).unwrap();
            assert_eq!(head, last[..n.min(vocab)], "tensor path {tensor}, head {n}");
        }
    }
}

/// The fused CPU forward pass and the tensor forward pass compute the same logits (the same kernels in
/// the same order), for prefill chunks and single-token steps, even on a quantized model where any
/// rounding difference would be amplified by the 8-bit activations.
#[test]
fn fused_cpu_path_equals_tensor_path() {
    let small = fixtures::small_model();
    for path in [
        fixtures::codellama_fixture("tiny-codellama-mha.gguf"),
        fixtures::codellama_fixture("tiny-codellama-gqa.gguf"),
        fixtures::codellama_fixture("tiny-codellama-mha-q8_0.gguf"),
        small,
        // qwen2: q/k/v biases and half-split rotary pairs.
        fixtures::qwen_model(),
    ] {
        let f = GgufFile::open(&path).unwrap();
        let cfg = ModelConfig::from_gguf(&f, &mut Vec::new()).unwrap();
        let mut fused = Llama::from_gguf(
            &f,
            cfg.clone(),
            &Device::Cpu,
            Weights::AsStored,
            &mut |_| {},
        )
        .unwrap();
        let mut tensor =
            Llama::from_gguf(&f, cfg, &Device::Cpu, Weights::AsStored, &mut |_| {}).unwrap();
        fused.set_threads(2).unwrap();
        tensor.use_tensor_path(true);
        let prompt: Vec<u32> = (0..70).map(|i| 100 + (i * 37) % 900).collect();
        let (mut ca, mut cb) = (
            fused.new_cache(128).unwrap(),
            tensor.new_cache(128).unwrap(),
        );
        for chunk in [&prompt[..65], &prompt[65..], &[7u32][..]] {
            let a = fused.forward(chunk, &mut ca, Logits::All).unwrap();
            let b = tensor.forward(chunk, &mut cb, Logits::All).unwrap();
            let diff = max_diff(&a, &b);
            assert!(
                diff < 1e-5,
                "{}: max logit difference {diff}",
                path.display()
            );
        }
    }
}

/// The logits `Logits::All` gives for a short batch after a prompt are, row for row and bit for bit, the
/// ones one-token steps give: speculative decoding verifies drafts this way and must not change a greedy
/// token. Also after rolling the cache back over part of a batch, as a rejected draft does.
#[test]
fn a_short_batch_gives_the_logits_of_single_steps_bit_for_bit() {
    for path in [fixtures::small_model(), fixtures::qwen_model()] {
        let f = GgufFile::open(&path).unwrap();
        let cfg = ModelConfig::from_gguf(&f, &mut Vec::new()).unwrap();
        let mut model =
            Llama::from_gguf(&f, cfg, &Device::Cpu, Weights::AsStored, &mut |_| {}).unwrap();
        model.set_threads(2).unwrap();
        let prompt: Vec<u32> = (0..90).map(|i| 100 + (i * 37) % 900).collect();
        let steps = [11u32, 500, 7, 900, 42, 3, 77, 1000, 5];
        let mut single = model.new_cache(256).unwrap();
        model.forward(&prompt, &mut single, Logits::Last).unwrap();
        let stepwise: Vec<Vec<f32>> = steps
            .iter()
            .map(|&t| model.forward(&[t], &mut single, Logits::Last).unwrap())
            .collect();
        let vocab = stepwise[0].len();
        let mut batch = model.new_cache(256).unwrap();
        model.forward(&prompt, &mut batch, Logits::Last).unwrap();
        // A rejected draft of three, rolled back, then the steps in batches of 4, 1 and 4.
        model.forward(&[1, 2, 3], &mut batch, Logits::All).unwrap();
        batch.truncate(prompt.len());
        let mut rows = Vec::new();
        for chunk in [&steps[..4], &steps[4..5], &steps[5..]] {
            rows.extend(model.forward(chunk, &mut batch, Logits::All).unwrap());
        }
        for (i, step) in stepwise.iter().enumerate() {
            let row = &rows[i * vocab..(i + 1) * vocab];
            let same = row
                .iter()
                .zip(step)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{}: row {i} differs", path.display());
        }
    }
}

/// A q8_0 cache needs heads of whole blocks of 32 values: a model with other heads is refused with the
/// setting's name and the fix, and keeps its f16 cache.
#[test]
fn q8_0_kv_cache_refuses_heads_that_are_not_blocks() {
    let mut model = load("tiny-codellama-gqa.gguf");
    let hd = model.cfg.head_dim;
    assert!(!hd.is_multiple_of(32), "the fixture's heads of {hd} values");
    let err = model
        .set_kv_cache_type(KvType::Q8_0)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("kv_cache_type \"q8_0\"") && err.contains(&format!("heads of {hd} values")),
        "{err}"
    );
    let prompt = [1, 2, 3];
    assert_eq!(greedy(&model, &prompt, 4).len(), 4);
}

/// Greedy tokens of `model` after `prompt`, with a cache of `ty`.
fn greedy_with(model: &mut Llama, ty: KvType, prompt: &[u32], n: usize) -> Vec<u32> {
    model.set_kv_cache_type(ty).unwrap();
    let mut cache = model.new_cache(prompt.len() + n).unwrap();
    let mut logits = model.forward(prompt, &mut cache, Logits::Last).unwrap();
    let mut out = Vec::new();
    for _ in 0..n {
        let t = argmax(&logits);
        out.push(t);
        logits = model.forward(&[t], &mut cache, Logits::Last).unwrap();
    }
    out
}

/// Real code of about `tokens` tokens: HumanEval-X problems of `language` with their solutions, one
/// after another, then the next problem's prompt (so the model writes a function body).
fn long_code(tokenizer: &Tokenizer, language: &str, tokens: usize) -> Vec<u32> {
    let path = fixtures::shared_dir().join(format!(
        "evaldata/humaneval-x/humaneval_{language}.jsonl.gz"
    ));
    let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut text = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(file), &mut text).unwrap();
    let mut code = String::new();
    for line in text.lines() {
        let problem: serde_json::Value = serde_json::from_str(line).unwrap();
        code.push_str(problem["prompt"].as_str().unwrap());
        if tokenizer.encode(&code, true).len() >= tokens {
            break;
        }
        code.push_str(problem["canonical_solution"].as_str().unwrap());
        code.push('\n');
    }
    tokenizer.encode(&code, true)
}

/// How many leading tokens of greedy decoding agree between a q8_0 and an f16 KV cache, for the
/// reference prompts (short, 32 tokens each) and for HumanEval-X code of about 1,500 tokens in
/// `languages` (48 tokens each).
fn q8_0_agreement(
    path: &std::path::Path,
    reference: &str,
    languages: &[&str],
) -> Vec<(String, usize, usize)> {
    let f = GgufFile::open(path).unwrap();
    let cfg = ModelConfig::from_gguf(&f, &mut Vec::new()).unwrap();
    let tokenizer = Tokenizer::from_gguf(&f.content).unwrap();
    let mut model =
        Llama::from_gguf(&f, cfg, &Device::Cpu, Weights::AsStored, &mut |_| {}).unwrap();
    model.set_threads(2).unwrap();
    let reference = fixtures::read_json(&fixtures::reference(reference));
    let mut prompts: Vec<(String, Vec<u32>, usize)> = reference["greedy"]
        .as_array()
        .unwrap()
        .iter()
        .map(|case| {
            let name: String = case["prompt"].as_str().unwrap().chars().take(24).collect();
            (name, token_ids(&case["prompt_ids"]), 32)
        })
        .collect();
    for language in languages {
        prompts.push((
            format!("humaneval_{language}"),
            long_code(&tokenizer, language, 1500),
            48,
        ));
    }
    prompts
        .into_iter()
        .map(|(name, prompt, n)| {
            let want = greedy_with(&mut model, KvType::F16, &prompt, n);
            let got = greedy_with(&mut model, KvType::Q8_0, &prompt, n);
            let same = got.iter().zip(&want).take_while(|(a, b)| a == b).count();
            eprintln!(
                "{name:?} ({} prompt tokens): {same}/{n} identical",
                prompt.len()
            );
            (name, same, n)
        })
        .collect()
}

/// Sequences whose greedy tokens all agree, and the agreeing leading tokens of the long ones.
fn identical(agreement: &[(String, usize, usize)]) -> (usize, usize) {
    let whole = agreement.iter().filter(|(_, same, n)| same == n).count();
    let long = agreement
        .iter()
        .filter(|(name, ..)| name.starts_with("humaneval_"));
    (whole, long.map(|(_, same, _)| same).sum())
}

// Measured on an AMD EPYC (Zen 4), the same on the AVX2 and scalar attention paths: 5/10 short
// sequences identical, 43 and 48 leading tokens of the long ones. The 135M model meets near-ties
// early on short prompts.
#[test]
fn q8_0_kv_cache_keeps_greedy_output_smollm2() {
    let agreement = q8_0_agreement(
        &fixtures::small_model(),
        "smollm2-llamacpp.json",
        &["python", "rust"],
    );
    let (whole, long) = identical(&agreement);
    assert!(whole >= 4 && long >= 80, "{agreement:?}");
}

// Measured: 6/10 short sequences identical (first differences at tokens 29, 1, 31 and 17: llama.cpp's
// own q8_0 cache against its f16 one differs on the same prompts at 29 and 1), all 48 tokens of both
// long ones. Without the rotation of keys and values only 4 short sequences agreed and two
// differed from the first token.
#[test]
fn q8_0_kv_cache_keeps_greedy_output_qwen() {
    let agreement = q8_0_agreement(
        &fixtures::qwen_model(),
        "qwen25coder-0.5b-llamacpp.json",
        &["python", "rust"],
    );
    let (whole, long) = identical(&agreement);
    assert!(whole >= 5 && long >= 90, "{agreement:?}");
}

/// Moving cached positions towards the start turns their keys as if they had been computed there: the
/// first layer's keys, which depend only on the token and its position, equal those of the same tokens
/// computed at the new positions (up to the cache type's rounding), and differ from them without the turn.
/// Both rotary layouts (interleaved pairs for the Llama fixture, halves for Qwen2), f16 and q8_0 caches.
#[test]
fn moved_keys_equal_keys_computed_at_the_new_positions() {
    let qwen = || {
        let f = GgufFile::open(&fixtures::qwen_model()).unwrap();
        let cfg = ModelConfig::from_gguf(&f, &mut Vec::new()).unwrap();
        Llama::from_gguf(&f, cfg, &Device::Cpu, Weights::AsStored, &mut |_| {}).unwrap()
    };
    let cases = [
        (load("tiny-codellama-mha.gguf"), KvType::F16, 0.005),
        (qwen(), KvType::F16, 0.005),
        (qwen(), KvType::Q8_0, 0.03),
    ];
    for (mut model, ty, tolerance) in cases {
        model.set_kv_cache_type(ty).unwrap();
        let (interleaved, heads) = (model.cfg.rope_interleaved, model.cfg.n_head_kv);
        let tokens: Vec<u32> = (0..20).map(|i| 100 + 7 * i).collect();
        // `tokens` computed after `before` others (at positions before..before + 20).
        let computed_at = |before: u32| {
            let mut cache = model.new_cache(64).unwrap();
            let lead: Vec<u32> = (0..before).map(|i| 300 + i).collect();
            model
                .forward(&[lead, tokens.clone()].concat(), &mut cache, Logits::Last)
                .unwrap();
            cache
        };
        let differs = |a: &[f32], b: &[f32]| {
            let scale = b.iter().fold(0f32, |m, x| m.max(x.abs()));
            a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
        };
        // Towards the start (37 to 2) and away from it (2 to 40).
        for (from, to) in [(37, 2), (2, 40)] {
            let mut moved = computed_at(from as u32);
            let fresh = computed_at(to as u32);
            let unturned: f32 = (0..heads)
                .map(|h| differs(&moved.key(0, h, from + 5), &fresh.key(0, h, to + 5)))
                .fold(0.0, f32::max);
            assert!(moved.move_runs(&[Move { from, to, len: 20 }]));
            let mut worst = 0f32;
            for h in 0..heads {
                for i in 0..20 {
                    let d = differs(&moved.key(0, h, to + i), &fresh.key(0, h, to + i));
                    worst = worst.max(d);
                    assert!(
                        d <= tolerance,
                        "interleaved {interleaved}, {ty:?}, {from} to {to}: head {h} token {i} differs by {d}"
                    );
                }
            }
            eprintln!(
                "interleaved {interleaved}, {ty:?}, {from} to {to}: {worst} turned, {unturned} not"
            );
            assert!(
                unturned > 4.0 * worst,
                "unturned keys differ by {unturned}, turned by {worst}"
            );
        }
        let mut moved = computed_at(37);
        assert!(moved.move_runs(&[Move {
            from: 37,
            to: 2,
            len: 20
        }]));
        moved.truncate(22);
        // Generating on from the moved positions works (the cache holds 22 positions).
        assert_eq!(moved.len(), 22);
        model.forward(&[9], &mut moved, Logits::Last).unwrap();
    }
}

/// A pass stopped between layers and run again over the same tokens goes on from the layer it reached
/// (it asks whether to stop once per layer left) and gives the logits of a pass never stopped, bit for
/// bit; a pass over a prefix of them goes on too, and the tokens after follow as if computed at once.
#[test]
fn a_stopped_pass_goes_on_from_the_layer_it_reached() {
    for name in ["tiny-codellama-mha.gguf", "tiny-codellama-gqa.gguf"] {
        let model = load(name);
        let layers = model.cfg.n_layer;
        assert!(layers >= 2, "{name}: {layers} layers");
        let head: Vec<u32> = vec![1, 822, 3349];
        let a: Vec<u32> = vec![
            29918, 5464, 29918, 294, 18869, 29898, 29879, 1678, 736, 1121,
        ];
        let asks = |model: &Llama, tokens: &[u32], cache: &mut KvCache| {
            let n = Cell::new(0);
            let logits = model
                .forward_cancellable(tokens, cache, Logits::Last, &|| {
                    n.set(n.get() + 1);
                    false
                })
                .unwrap();
            (logits, n.get())
        };
        let stop_at = |model: &Llama, tokens: &[u32], cache: &mut KvCache, layer: usize| {
            let n = Cell::new(0);
            let stop = || {
                n.set(n.get() + 1);
                n.get() > layer
            };
            let len = cache.len();
            let err = model.forward_cancellable(tokens, cache, Logits::Last, &stop);
            assert!(matches!(err, Err(EngineError::Cancelled)), "{name}");
            assert_eq!(
                cache.len(),
                len,
                "{name}: a stopped pass leaves the positions"
            );
        };
        let cold = |tokens: &[&[u32]]| {
            let mut cache = model.new_cache(64).unwrap();
            let mut logits = Vec::new();
            for t in tokens {
                logits = model.forward(t, &mut cache, Logits::Last).unwrap();
            }
            logits
        };
        let layer = layers / 2;

        // The same tokens: from the layer reached, the same logits.
        let mut cache = model.new_cache(64).unwrap();
        model.forward(&head, &mut cache, Logits::Last).unwrap();
        stop_at(&model, &a, &mut cache, layer);
        let (warm, asked) = asks(&model, &a, &mut cache);
        assert_eq!(asked, layers - layer, "{name}: went on from layer {layer}");
        assert_eq!(warm, cold(&[&head, &a]), "{name}");
        assert_eq!(cache.len(), head.len() + a.len());

        // A prefix of them, then other tokens.
        let mut cache = model.new_cache(64).unwrap();
        model.forward(&head, &mut cache, Logits::Last).unwrap();
        stop_at(&model, &a, &mut cache, layer);
        let (warm, asked) = asks(&model, &a[..6], &mut cache);
        assert_eq!(
            asked,
            layers - layer,
            "{name}: the prefix went on from layer {layer}"
        );
        close(&warm, &cold(&[&head, &a[..6]]), name);
        let b = [13, 1678, 736];
        let (warm, asked) = asks(&model, &b, &mut cache);
        assert_eq!(
            asked, layers,
            "{name}: other tokens start at the first layer"
        );
        close(&warm, &cold(&[&head, &a[..6], &b]), name);
    }
}

/// What a stopped pass kept is dropped once the positions before it change: after a truncation, a pass
/// over the same tokens (now at other positions) starts again from the first layer.
#[test]
fn a_stopped_pass_is_dropped_when_the_positions_before_it_change() {
    for name in ["tiny-codellama-mha.gguf", "tiny-codellama-gqa.gguf"] {
        let model = load(name);
        let layers = model.cfg.n_layer;
        let head: Vec<u32> = vec![1, 822, 3349];
        let a: Vec<u32> = vec![29918, 5464, 29918, 294, 18869];
        let mut cache = model.new_cache(64).unwrap();
        model.forward(&head, &mut cache, Logits::Last).unwrap();
        let n = Cell::new(0);
        let stop = || {
            n.set(n.get() + 1);
            n.get() > 1
        };
        assert!(model
            .forward_cancellable(&a, &mut cache, Logits::Last, &stop)
            .is_err());
        cache.truncate(1);
        assert_eq!(cache.stopped_prefix(&a), 0, "{name}");
        let asked = Cell::new(0);
        let warm = model
            .forward_cancellable(&a, &mut cache, Logits::Last, &|| {
                asked.set(asked.get() + 1);
                false
            })
            .unwrap();
        assert_eq!(asked.get(), layers, "{name}");
        let mut fresh = model.new_cache(64).unwrap();
        model.forward(&[1], &mut fresh, Logits::Last).unwrap();
        assert_eq!(
            warm,
            model.forward(&a, &mut fresh, Logits::Last).unwrap(),
            "{name}"
        );
    }
}

/// Logits equal within what another batch size changes (attention over a batch takes other paths
/// than over a few positions).
fn close(a: &[f32], b: &[f32], name: &str) {
    let max_diff = max_diff(a, b);
    assert!(max_diff < 1e-3, "{name}: max logit difference {max_diff}");
}

/// The largest difference between two rows of logits.
fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

/// The next chunk of a prompt that begins with at least 16 tokens of a stopped pass is those tokens
/// (the pass goes on); with fewer in common, the chunk is as long as it would be without one.
#[test]
fn the_next_chunk_goes_on_with_a_stopped_pass() {
    let model = load("tiny-codellama-gqa.gguf");
    let mut cache = CachedPrompt::new(model.new_cache(64).unwrap());
    let prompt: Vec<u32> = (0..40).map(|i| 100 + i).collect();
    let n = Cell::new(0);
    let stop = || {
        n.set(n.get() + 1);
        n.get() > 1
    };
    assert!(model
        .forward_cancellable(&prompt, cache.kv(), Logits::Last, &stop)
        .is_err());
    let mut edited = prompt.clone();
    edited[20] = 7;
    assert_eq!(cache.next_chunk(&edited, 64, edited.len()), 0..20);
    assert_eq!(cache.next_chunk(&prompt, 32, prompt.len()), 0..32);
    edited[5] = 7;
    assert_eq!(cache.next_chunk(&edited, 64, edited.len()), 0..40);
}
