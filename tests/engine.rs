//! The engine through its public handle: the model thread, cache reuse, cancellation, bad input, and the
//! Hugging Face directory format. Real files only (tiny Code Llama fixtures, SmolLM2).

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use candle_core::quantized::gguf_file::Value;
use codellama_engine::{
    load_model, CancelToken, Drafting, Engine, EngineError, Event, GenerateRequest, LoadOptions,
    StopReason,
};
use common::gguf_craft::Crafted;

fn start(path: &Path) -> Engine {
    let opts = LoadOptions {
        model: Some(path.display().to_string()),
        context_window: Some(256),
        ..LoadOptions::default()
    };
    Engine::start(opts, Box::new(|_| {})).expect("engine starts")
}

fn greedy(engine: &Engine, prompt: &[u32], n: usize) -> codellama_engine::Outcome {
    let mut req = GenerateRequest::new(prompt.to_vec(), n);
    req.stop_at_eog = false;
    engine.generate(req).expect("generation")
}

const PSM: [u32; 28] = [
    1, 32007, 822, 3349, 29918, 5464, 29918, 294, 18869, 29898, 29879, 29901, 851, 29897, 1599,
    851, 29901, 13, 1678, 9995, 29871, 32008, 13, 1678, 736, 1121, 13, 32009,
];

#[test]
fn cache_reuse_computes_only_new_tokens_and_matches_a_cold_run() {
    for name in ["tiny-codellama-mha.gguf", "tiny-codellama-gqa.gguf"] {
        let path = common::codellama_fixture(name);
        let warm = start(&path);
        let first = greedy(&warm, &PSM, 8);
        assert_eq!(first.timings.reused_tokens, 0);
        // Same first 20 tokens, different tail.
        let mut second_prompt = PSM[..20].to_vec();
        second_prompt.extend([13, 1678, 736, 29871]);
        let second = greedy(&warm, &second_prompt, 8);
        assert_eq!(second.timings.reused_tokens, 20, "{name}");
        assert_eq!(
            second.timings.prompt_tokens - second.timings.reused_tokens,
            4
        );
        let cold = greedy(&start(&path), &second_prompt, 8);
        assert_eq!(second.generated_ids, cold.generated_ids, "{name}");
        // Asking again for the very same prompt recomputes only its last token.
        let again = greedy(&warm, &second_prompt, 8);
        assert_eq!(again.timings.reused_tokens, second_prompt.len() - 1);
        assert_eq!(again.generated_ids, cold.generated_ids);
    }
}

/// Two documents' prompts take turns (a file switch and back): each finds its own cache, as long as there
/// are caches enough; with one, each turn computes its prompt again.
#[test]
fn prompts_taking_turns_keep_their_own_caches() {
    let path = common::codellama_fixture("tiny-codellama-gqa.gguf");
    let other: Vec<u32> = PSM.iter().rev().copied().collect();
    for (caches, reused_on_return) in [(2, PSM.len() - 1), (1, 0)] {
        let engine = Engine::start(
            LoadOptions {
                model: Some(path.display().to_string()),
                context_window: Some(256),
                prompt_caches: Some(caches),
                ..LoadOptions::default()
            },
            Box::new(|_| {}),
        )
        .expect("engine starts");
        let first = greedy(&engine, &PSM, 4);
        let away = greedy(&engine, &other, 4);
        assert_eq!(away.timings.reused_tokens, 0);
        let back = greedy(&engine, &PSM, 4);
        assert_eq!(
            back.timings.reused_tokens, reused_on_return,
            "{caches} caches"
        );
        assert_eq!(back.generated_ids, first.generated_ids, "{caches} caches");
    }
}

#[test]
fn generation_streams_tokens_and_stops_at_max_tokens() {
    let engine = start(&common::codellama_fixture("tiny-codellama-mha.gguf"));
    let mut req = GenerateRequest::new(PSM.to_vec(), 5);
    req.stop_at_eog = false;
    let mut gen = engine.submit(req);
    let mut streamed = Vec::new();
    let outcome = loop {
        match gen.events.blocking_recv().expect("events") {
            Event::Token { id, .. } => streamed.push(id),
            Event::Finished(r) => break r.unwrap(),
        }
    };
    assert_eq!(outcome.stop_reason, StopReason::MaxTokens);
    assert_eq!(streamed, outcome.generated_ids);
    assert_eq!(outcome.generated_ids.len(), 5);
}

#[test]
fn cancellation_stops_within_a_token_and_the_engine_serves_on() {
    let engine = start(&common::small_model());
    let mut req = GenerateRequest::new(vec![1604, 3987, 46477, 24, 94, 727], 200);
    req.stop_at_eog = false;
    let cancel = req.cancel.clone();
    let mut gen = engine.submit(req);
    // Wait for the first streamed token, then cancel from this thread.
    let mut seen = 0;
    loop {
        match gen.events.blocking_recv().expect("events") {
            Event::Token { .. } => {
                seen += 1;
                if seen == 3 {
                    cancel.cancel();
                    break;
                }
            }
            Event::Finished(r) => panic!("finished before cancel: {:?}", r.map(|o| o.stop_reason)),
        }
    }
    let cancelled_at = Instant::now();
    let mut after_cancel = 0;
    let outcome = loop {
        match gen.events.blocking_recv().expect("events") {
            Event::Token { .. } => after_cancel += 1,
            Event::Finished(r) => break r.unwrap(),
        }
    };
    assert_eq!(outcome.stop_reason, StopReason::Cancelled);
    assert!(
        after_cancel <= 1,
        "{after_cancel} tokens streamed after the cancel"
    );
    assert!(
        outcome.generated_ids.len() <= 4,
        "{} tokens after cancel",
        outcome.generated_ids.len()
    );
    assert!(cancelled_at.elapsed() < Duration::from_secs(5));
    // The next request is served normally.
    let next = greedy(&engine, &[1604, 3987], 3);
    assert_eq!(next.stop_reason, StopReason::MaxTokens);
}

/// While the user types, each keystroke cancels the running request and sends one whose prompt shares
/// almost all of it. A prefill chunk in progress is then finished for the newer request instead of
/// thrown away; a chunk the newer request does not share is given up at once.
#[test]
fn a_superseded_prefill_finishes_the_chunk_the_next_request_shares() {
    // Two threads: a 256-token chunk of Qwen 0.5B then takes well over the test's 100 ms pauses.
    let opts = LoadOptions {
        model: Some(common::qwen_model().display().to_string()),
        context_window: Some(1024),
        threads: Some(2),
        prefill_chunk: Some(256),
        ..LoadOptions::default()
    };
    let engine = Engine::start(opts, Box::new(|_| {})).expect("engine starts");
    let prompt: Vec<u32> = (0..600).map(|i| 1000 + 7 * i).collect();
    // As the server does: a keystroke's request cancels the one before it, then is queued.
    let previous = std::cell::RefCell::new(CancelToken::new());
    let submit = |prompt: Vec<u32>| {
        let req = GenerateRequest::new(prompt, 2);
        previous.replace(req.cancel.clone()).cancel();
        engine.submit(req)
    };
    // Inside the first 256-token chunk, the next keystroke.
    let first = submit(prompt[..500].to_vec());
    std::thread::sleep(Duration::from_millis(100));
    let second = submit(prompt.clone());
    let (a, b) = (first.wait().unwrap(), second.wait().unwrap());
    assert_eq!(a.stop_reason, StopReason::Cancelled);
    assert_eq!(
        (a.timings.computed_tokens, a.timings.discarded_tokens),
        (256, 0),
        "the cancelled request finished its chunk"
    );
    assert_eq!(b.timings.reused_tokens, 256, "and the next one reused it");
    // A keystroke changes the prompt's end: the tokens before its last 16 are computed apart, so they
    // too are finished for the next request.
    let base: Vec<u32> = prompt[..200].iter().map(|t| t + 3).collect();
    let typed = |c: u32| [&base[..], &[c]].concat();
    let first = submit(typed(5));
    std::thread::sleep(Duration::from_millis(100));
    let second = submit(typed(6));
    let (a, b) = (first.wait().unwrap(), second.wait().unwrap());
    assert_eq!(a.stop_reason, StopReason::Cancelled);
    assert_eq!(a.timings.discarded_tokens, 0);
    assert_eq!(b.timings.reused_tokens, 201 - 16);
    // A newer request with another prompt: the chunk in progress is dropped, without waiting.
    let mut other = prompt.clone();
    other.reverse();
    let third = submit(prompt[..500].iter().map(|t| t + 1).collect());
    std::thread::sleep(Duration::from_millis(100));
    let t = Instant::now();
    let fourth = submit(other);
    let c = third.wait().unwrap();
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert_eq!(c.stop_reason, StopReason::Cancelled);
    assert_eq!(c.timings.discarded_tokens, 256);
    assert_eq!(fourth.wait().unwrap().timings.reused_tokens, 0);
}

#[test]
fn a_request_cancelled_before_it_runs_costs_nothing() {
    let engine = start(&common::codellama_fixture("tiny-codellama-mha.gguf"));
    let mut req = GenerateRequest::new(PSM.to_vec(), 4);
    req.cancel = CancelToken::new();
    req.cancel.cancel();
    let o = engine.generate(req).unwrap();
    assert_eq!(o.stop_reason, StopReason::Cancelled);
    assert_eq!(o.timings.prefill_ms, 0.0);
}

#[test]
fn bad_requests_get_clear_errors_and_the_thread_survives() {
    let engine = start(&common::codellama_fixture("tiny-codellama-gqa.gguf"));
    let err = engine
        .generate(GenerateRequest::new(vec![], 4))
        .unwrap_err();
    assert!(matches!(err, EngineError::EmptyPrompt), "{err}");
    let long = vec![1u32; 300];
    let err = engine.generate(GenerateRequest::new(long, 4)).unwrap_err();
    assert!(err.to_string().contains("300 tokens"), "{err}");
    let err = engine
        .generate(GenerateRequest::new(vec![1, 99_999], 4))
        .unwrap_err();
    assert!(err.to_string().contains("99999"), "{err}");
    // Still serving.
    assert_eq!(greedy(&engine, &PSM, 2).generated_ids.len(), 2);
}

#[test]
fn generation_stops_when_the_context_is_full() {
    let engine = start(&common::codellama_fixture("tiny-codellama-mha.gguf"));
    let o = greedy(&engine, &vec![1u32; 250], 100);
    assert_eq!(o.stop_reason, StopReason::ContextFull);
    assert_eq!(o.generated_ids.len(), 256 - 250 + 1);
}

fn load_error(path: &Path) -> String {
    match Engine::start(
        LoadOptions {
            model: Some(path.display().to_string()),
            ..LoadOptions::default()
        },
        Box::new(|_| {}),
    ) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_model_files_give_clear_errors() {
    let dir = tempdir("bad-models");
    let missing = dir.join("missing.gguf");
    assert!(load_error(&missing).contains("missing.gguf"));

    let not_gguf = dir.join("notes.gguf");
    std::fs::write(&not_gguf, b"hello, this is text").unwrap();
    let e = load_error(&not_gguf);
    assert!(e.contains("not a GGUF file"), "{e}");

    let full = std::fs::read(common::codellama_fixture("tiny-codellama-mha.gguf")).unwrap();
    let truncated = dir.join("truncated.gguf");
    std::fs::write(&truncated, &full[..full.len() * 2 / 3]).unwrap();
    let e = load_error(&truncated);
    assert!(e.contains("truncated") || e.contains("incomplete"), "{e}");

    let header_only = dir.join("header.gguf");
    std::fs::write(&header_only, &full[..64]).unwrap();
    let e = load_error(&header_only);
    assert!(e.contains("corrupt"), "{e}");

    // Same file with the architecture renamed (same length, so offsets stay valid).
    let arch = dir.join("arch.gguf");
    let pos = find(&full, b"llama").expect("architecture string");
    let mut renamed = full.clone();
    renamed[pos..pos + 5].copy_from_slice(b"gpt2x");
    std::fs::write(&arch, &renamed).unwrap();
    let e = load_error(&arch);
    assert!(e.contains("architecture") && e.contains("gpt2x"), "{e}");
}

const TINY: &str = "tiny-codellama-mha.gguf";

/// The tiny fixture changed by `change`, written to `dir/name.gguf`.
fn crafted(dir: &Path, name: &str, change: impl FnOnce(&mut Crafted)) -> PathBuf {
    let mut g = Crafted::read(&common::codellama_fixture(TINY));
    change(&mut g);
    let path = dir.join(format!("{name}.gguf"));
    g.write(&path);
    path
}

/// Nonsense in a header is refused at load, naming the file and the key or tensor at fault, before
/// anything is sized from it: a layer count of 2^31 used to abort the process (a 256 GiB allocation), a
/// zero alignment to panic in the reader, and the rest loaded as "ready" and produced garbage.
#[test]
fn nonsense_in_the_header_is_refused_naming_the_file_and_the_key() {
    let dir = tempdir("hostile");
    // The writer writes a file that loads and answers as the fixture does.
    let same = crafted(&dir, "unchanged", |_| {});
    let want = greedy(&start(&common::codellama_fixture(TINY)), &PSM, 4);
    assert_eq!(
        greedy(&start(&same), &PSM, 4).generated_ids,
        want.generated_ids
    );

    let case = std::cell::Cell::new(0);
    let refused = |culprit: &str, change: &dyn Fn(&mut Crafted)| {
        case.set(case.get() + 1);
        let path = crafted(&dir, &format!("case{}", case.get()), change);
        let e = load_error(&path);
        assert!(
            e.contains(&path.display().to_string()) && e.contains(culprit),
            "{culprit}: {e}"
        );
    };
    let set = |key: &'static str, value: Value| {
        move |g: &mut Crafted| {
            g.set(key, value.clone());
        }
    };
    let u32_key = |key: &'static str, v: u32| set(key, Value::U32(v));
    for (key, v) in [
        ("llama.block_count", 1 << 31),
        ("llama.block_count", 1),
        ("llama.embedding_length", 1 << 31),
        ("llama.attention.head_count", 1 << 31),
        ("llama.attention.head_count_kv", 3),
        ("llama.feed_forward_length", 1 << 31),
        ("llama.vocab_size", 1 << 31),
        ("llama.context_length", 0),
        ("llama.context_length", u32::MAX),
        ("general.alignment", 0),
        ("general.alignment", 48),
        ("tokenizer.ggml.bos_token_id", 40_000),
        ("tokenizer.ggml.eos_token_id", 32_016),
    ] {
        refused(key, &u32_key(key, v));
    }
    for (key, v) in [
        ("llama.attention.layer_norm_rms_epsilon", f32::NAN),
        ("llama.attention.layer_norm_rms_epsilon", -1e-5),
        ("llama.rope.freq_base", 0.0),
        ("llama.rope.freq_base", f32::INFINITY),
    ] {
        refused(key, &set(key, Value::F32(v)));
    }
    // An offset that wraps past 2^64 back into the header.
    refused("output.weight", &|g| {
        g.tensor_mut("output.weight").offset = Some(u64::MAX - 1023);
    });
}

/// A copy of the tiny fixture that the test may write over.
fn writable_copy(dir: &Path) -> PathBuf {
    let path = dir.join("model.gguf");
    std::fs::copy(common::codellama_fixture(TINY), &path).unwrap();
    make_writable(&path);
    path
}

fn make_writable(path: &Path) {
    let mut perms = std::fs::metadata(path).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(path, perms).unwrap();
}

/// Loads `path`, truncating `victim` to nothing once the first layer is in: a clear error, where a
/// memory-mapped model died of SIGBUS.
fn load_while_truncating(path: &Path, victim: &Path) -> String {
    let opts = LoadOptions {
        model: Some(path.display().to_string()),
        context_window: Some(64),
        ..LoadOptions::default()
    };
    let mut cut = false;
    let mut progress = |_| {
        if !cut {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(victim)
                .unwrap();
            f.set_len(0).unwrap();
            cut = true;
        }
    };
    match load_model(&opts, &mut progress) {
        Ok(_) => panic!("{} loaded after being truncated", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_model_file_truncated_while_it_loads_is_refused() {
    let dir = tempdir("truncated-while-loading");
    let path = writable_copy(&dir);
    let e = load_while_truncating(&path, &path);
    assert!(
        e.contains(&path.display().to_string())
            && e.contains("changed while the model was loading"),
        "{e}"
    );

    let hf = tempdir("hf-truncated-while-loading");
    write_hf_dir(&hf);
    let weights = hf.join("model.safetensors");
    let e = load_while_truncating(&hf, &weights);
    assert!(
        e.contains(&weights.display().to_string())
            && e.contains("changed while the model was loading"),
        "{e}"
    );
}

/// The weights live in memory once loaded: writing over the file (in place, as a download tool would)
/// changes no answer, where memory-mapped weights silently became zeros.
#[test]
fn overwriting_the_model_file_after_loading_changes_no_answer() {
    let dir = tempdir("overwritten");
    let path = writable_copy(&dir);
    let want = greedy(&start(&common::codellama_fixture(TINY)), &PSM, 8);
    let engine = start(&path);
    let len = std::fs::metadata(&path).unwrap().len() as usize;
    let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all(&vec![0u8; len]).unwrap();
    f.sync_all().unwrap();
    assert_eq!(greedy(&engine, &PSM, 8).generated_ids, want.generated_ids);
}

/// The shell command on hostile files: exit status 1 and one error naming the file and the key, no crash.
#[test]
fn the_cli_refuses_a_hostile_model_naming_the_file_and_the_key() {
    let dir = tempdir("cli-hostile");
    let source = dir.join("main.py");
    std::fs::write(&source, "def area(r):\n    ").unwrap();
    for (i, (key, v)) in [
        ("llama.block_count", 1u32 << 31),
        ("general.alignment", 0),
        ("llama.context_length", 0),
    ]
    .into_iter()
    .enumerate()
    {
        let path = crafted(&dir, &format!("cli{i}"), |g| {
            g.set(key, Value::U32(v));
        });
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_codellama-lsp"))
            .args(["complete", &format!("{}:2:5", source.display())])
            .args(["--model", &path.display().to_string(), "--max-tokens", "4"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{key}: {:?}\n{err}", out.status);
        assert!(
            err.contains(&path.display().to_string()) && err.contains(key),
            "{key}: {err}"
        );
        assert!(!err.contains("panicked"), "{key}: {err}");
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("codellama-lsp-test-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Writes into `dir` a Hugging Face checkpoint of the tiny GGUF's weights (Q/K rows un-permuted back to
/// the Hugging Face layout, as `convert_hf_to_gguf.py` would have received them).
fn write_hf_dir(dir: &Path) {
    use codellama_engine::gguf::GgufFile;
    let gguf_path = common::codellama_fixture(TINY);
    let f = GgufFile::open(&gguf_path).unwrap();
    let mut file = std::fs::File::open(&gguf_path).unwrap();
    let n_head = 4;
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (gguf_name, info) in &f.content.tensor_infos {
        let dims = info.shape.dims().to_vec();
        let cols = *dims.last().unwrap();
        // candle's own dequantization, so that this check does not lean on our kernels.
        let mut values = f
            .content
            .tensor(&mut file, gguf_name, &candle_core::Device::Cpu)
            .unwrap()
            .dequantize(&candle_core::Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let hf = hf_name(gguf_name);
        if gguf_name.ends_with("attn_q.weight") || gguf_name.ends_with("attn_k.weight") {
            values = unpermute(&values, n_head, dims[0], cols);
        }
        let bytes: Vec<u8> = values
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect();
        tensors.push((hf, dims, bytes));
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, d, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F16, d.clone(), b)
                    .unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
    std::fs::copy(
        common::codellama_fixture("tokenizer.json"),
        dir.join("tokenizer.json"),
    )
    .unwrap();
    let config = serde_json::json!({
        "model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 4,
        "num_hidden_layers": 2, "intermediate_size": 128, "vocab_size": 32016, "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-5, "max_position_embeddings": 16384
    });
    std::fs::File::create(dir.join("config.json"))
        .unwrap()
        .write_all(config.to_string().as_bytes())
        .unwrap();
}

/// The Hugging Face checkpoint of the tiny GGUF's weights gives the same greedy tokens.
#[test]
fn hugging_face_directory_matches_the_gguf() {
    let dir = tempdir("hf");
    write_hf_dir(&dir);
    let golden = common::read_json(&common::codellama_fixture(
        "tiny-codellama-greedy-golden.json",
    ));
    let case = golden
        .as_array()
        .unwrap()
        .iter()
        .find(|c| {
            c["model"] == "tiny-codellama-mha.gguf" && c["prompt_name"] == "fim_psm_issue3503"
        })
        .unwrap();
    let want: Vec<u32> = case["greedy_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    let engine = start(&dir);
    let got = greedy(&engine, &PSM, want.len());
    assert_eq!(got.generated_ids, want);
}

/// Code Llama – Python has no infilling pieces (a 32000-token vocabulary). The tiny GGUF rewritten that
/// way (vocabulary, embedding and output rows cut to 32000) completes by plain continuation through the
/// whole pipeline, and greedy decoding of BOS "Hello world" gives the float64 reference's ids (none of
/// them is 32000 or more, so the removed rows cannot change an argmax).
#[test]
fn code_llama_python_gguf_completes_by_continuation() {
    use candle_core::quantized::{gguf_file, QTensor};
    use candle_core::Device;
    use codellama_text::completion::{self, CompletionRequest};
    use codellama_text::prompt::{PromptBuilder, PromptConfig};

    let mut reader =
        std::fs::File::open(common::codellama_fixture("tiny-codellama-mha.gguf")).unwrap();
    let content = gguf_file::Content::read(&mut reader).unwrap();
    let mut metadata = content.metadata.clone();
    common::to_codellama_python_vocab(&mut metadata, false);
    metadata.insert("llama.vocab_size".into(), gguf_file::Value::U32(32000));
    let mut tensors = Vec::new();
    for name in content.tensor_infos.keys() {
        let mut t = content.tensor(&mut reader, name, &Device::Cpu).unwrap();
        if name == "token_embd.weight" || name == "output.weight" {
            let all = t.dequantize(&Device::Cpu).unwrap();
            let cols = all.dim(1).unwrap();
            // Through a Vec: quantize reads the whole storage behind a narrowed view.
            let rows: Vec<f32> = all.flatten_all().unwrap().to_vec1().unwrap();
            let rows = candle_core::Tensor::from_vec(
                rows[..32000 * cols].to_vec(),
                (32000, cols),
                &Device::Cpu,
            )
            .unwrap();
            t = QTensor::quantize(&rows, t.dtype()).unwrap();
        }
        tensors.push((name.as_str(), t));
    }
    let path = tempdir("python").join("tiny-codellama-python.gguf");
    let metadata: Vec<(&str, &gguf_file::Value)> =
        metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (*n, t)).collect();
    gguf_file::write(
        &mut std::fs::File::create(&path).unwrap(),
        &metadata,
        &tensors,
    )
    .unwrap();

    let engine = start(&path);
    let builder = PromptBuilder::new(engine.tokenizer().clone(), &PromptConfig::default()).unwrap();
    let mut req = CompletionRequest::new("Hello world", "\n", 16);
    req.raw = true;
    let got = completion::complete(&engine, &builder, &req).unwrap();
    assert_eq!(got.template, "none");
    assert_eq!(got.prompt_ids, [1, 15043, 3186]);
    let golden = common::read_json(&common::codellama_fixture(
        "tiny-codellama-greedy-golden.json",
    ));
    let case = golden
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["model"] == "tiny-codellama-mha.gguf" && c["prompt_name"] == "hello_world")
        .unwrap();
    assert_eq!(case["prompt_ids"], serde_json::json!([1, 15043, 3186]));
    let want: Vec<u32> = case["greedy_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(got.generated_ids, want);
    std::fs::remove_dir_all(path.parent().unwrap()).ok();
}

fn hf_name(gguf: &str) -> String {
    let map = [
        ("token_embd.weight", "model.embed_tokens.weight"),
        ("output_norm.weight", "model.norm.weight"),
        ("output.weight", "lm_head.weight"),
    ];
    if let Some((_, hf)) = map.iter().find(|(g, _)| *g == gguf) {
        return hf.to_string();
    }
    let rest = gguf.strip_prefix("blk.").unwrap();
    let (layer, part) = rest.split_once('.').unwrap();
    let part = match part {
        "attn_norm.weight" => "input_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        other => panic!("unexpected tensor {other}"),
    };
    format!("model.layers.{layer}.{part}")
}

/// Inverse of the converter's `permute`: GGUF interleaves the two rotary halves of every head.
fn unpermute(w: &[f32], n_head: usize, rows: usize, cols: usize) -> Vec<f32> {
    let heads = rows / (rows / n_head); // rows per head below
    let per_head = rows / heads;
    let half = per_head / 2;
    let mut out = vec![0f32; w.len()];
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                // GGUF row h*per_head + 2*i + j came from HF row h*per_head + j*half + i.
                let src = (h * per_head + 2 * i + j) * cols;
                let dst = (h * per_head + j * half + i) * cols;
                out[dst..dst + cols].copy_from_slice(&w[src..src + cols]);
            }
        }
    }
    out
}

/// Token healing with the real Qwen2.5-Coder 0.5B: the prompt leaves out the prefix's last token, the
/// first generated tokens spell it again (never anything that contradicts it) and the suggestion starts
/// after it. With the cursor after indentation the suggestion does not indent a second time.
#[test]
fn token_healing_rewrites_the_last_token_before_the_cursor() {
    use codellama_text::completion::{self, CompletionRequest};
    use codellama_text::prompt::{PromptBuilder, PromptConfig};

    let engine = {
        let opts = LoadOptions {
            model: Some(common::qwen_model().display().to_string()),
            context_window: Some(512),
            ..LoadOptions::default()
        };
        Engine::start(opts, Box::new(|_| {})).expect("engine starts")
    };
    let builder = PromptBuilder::new(engine.tokenizer().clone(), &PromptConfig::default()).unwrap();
    let tok = engine.tokenizer();
    let cases = [
        // In the middle of an identifier.
        (
            "def fibonacci(n):\n    if n < 2:\n        return n\n    return fib",
            "\n",
            " fib",
        ),
        // After the indentation of an empty line.
        (
            "def area(radius):\n    \"\"\"The area of a circle.\"\"\"\n    ",
            "\n",
            "    ",
        ),
    ];
    for (prefix, suffix, healed) in cases {
        let mut req = CompletionRequest::new(prefix, suffix, 24);
        let healed_run = completion::complete(&engine, &builder, &req).unwrap();
        req.token_healing = false;
        let plain = completion::complete(&engine, &builder, &req).unwrap();
        // The healed prompt is the plain one without the last token of the prefix section.
        let (h, p) = (&healed_run.prompt_ids, &plain.prompt_ids);
        assert!(h.len() < p.len(), "{prefix:?}: {h:?} vs {p:?}");
        let spelled = tok.decode(&healed_run.generated_ids);
        assert!(
            spelled.starts_with(healed),
            "{prefix:?}: generation {spelled:?} does not start with {healed:?}"
        );
        // The reported text follows the healed text (the stopping rules may have cut its end).
        assert!(
            spelled.starts_with(&format!("{healed}{}", healed_run.raw_text)),
            "{prefix:?}: {spelled:?} vs {:?}",
            healed_run.raw_text
        );
        assert!(
            !healed_run.completion.starts_with(char::is_whitespace),
            "{prefix:?}: {:?}",
            healed_run.completion
        );
        assert!(!healed_run.completion.is_empty(), "{prefix:?}");
    }
}

/// The CPU forward pass runs on the engine's own threads: a prompt long enough for candle's parallel
/// element-wise ops (64K values) and a few tokens start none of candle's CPU worker threads
/// (`candle-bp-N`, which would spin on the cores the engine uses), which is why the engine leaves
/// candle's thread count alone.
#[test]
#[cfg(target_os = "linux")]
fn the_cpu_pass_starts_no_candle_threads() {
    let engine = start(&common::small_model());
    let prompt: Vec<u32> = (100..300).collect();
    let outcome = greedy(&engine, &prompt, 4);
    assert_eq!(outcome.generated_ids.len(), 4);
    let threads: Vec<String> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .collect();
    assert!(
        !threads.iter().any(|name| name.starts_with("candle-bp")),
        "{threads:?}"
    );
}

/// Greedy generation with speculation on or off, past the end-of-generation tokens (longer outputs).
fn decode_with(
    engine: &Engine,
    prompt: &[u32],
    max_tokens: usize,
    speculative: impl Into<Drafting>,
    stops: &[String],
) -> codellama_engine::Outcome {
    let mut req = GenerateRequest::new(prompt.to_vec(), max_tokens);
    req.speculative = speculative.into();
    req.stop_at_eog = false;
    req.stop_strings = stops.to_vec();
    engine.generate(req).expect("generation")
}

/// The prompt ids of a raw infill (no post-processing) of `max_tokens` between `prefix` and `suffix`.
fn raw_prompt(
    engine: &Engine,
    builder: &codellama_text::prompt::PromptBuilder,
    hole: (&str, &str),
    max_tokens: usize,
) -> Vec<u32> {
    use codellama_text::completion::{self, CompletionRequest};
    let mut req = CompletionRequest::new(hole.0, hole.1, max_tokens);
    req.raw = true;
    completion::prepare(engine, builder, &req)
        .unwrap()
        .prompt()
        .ids
        .clone()
}

/// FIM prompts (or continuation prompts, for a model without FIM tokens) for holes of three lines cut
/// from a real Python file, the cursor on the empty line where they were.
fn code_holes(lines_at: &[usize]) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(common::checkout().join("examples/typing/inventory.py"))
        .expect("example file");
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    lines_at
        .iter()
        .map(|&at| (lines[..at].concat(), lines[at + 3..].concat()))
        .collect()
}

/// Speculative decoding changes the speed, never the output: on real code, with real models, greedy
/// generation with drafts verified in one forward pass gives the plain loop's tokens, text and stop
/// reason, including when `max_tokens` or a stop string ends the generation inside an accepted draft,
/// and with token healing (no drafts until the healed text is spelled). Some drafts are rejected and
/// some accepted, so both paths of the verification run.
#[test]
fn speculative_decoding_gives_the_plain_greedy_output() {
    use codellama_text::completion::{self, CompletionRequest};
    use codellama_text::prompt::{PromptBuilder, PromptConfig};

    for (model, sweep) in [
        (common::small_model(), (1..=24).collect::<Vec<_>>()),
        (common::qwen_model(), vec![1, 2, 3, 5, 8, 13, 21]),
    ] {
        let engine = Engine::start(
            LoadOptions {
                model: Some(model.display().to_string()),
                context_window: Some(1024),
                ..LoadOptions::default()
            },
            Box::new(|_| {}),
        )
        .expect("engine starts");
        let builder =
            PromptBuilder::new(engine.tokenizer().clone(), &PromptConfig::default()).unwrap();
        let (mut drafted, mut accepted) = (0, 0);
        for (i, (prefix, suffix)) in code_holes(&[60, 150, 240]).into_iter().enumerate() {
            let prompt = raw_prompt(&engine, &builder, (&prefix, &suffix), 48);
            // Every compared run finds the prompt cached but its last token, recomputed alone (computed
            // in a prompt chunk instead, its logits may differ in the last bits).
            decode_with(&engine, &prompt, 1, false, &[]);
            let off = decode_with(&engine, &prompt, 48, false, &[]);
            let on = decode_with(&engine, &prompt, 48, true, &[]);
            let what = format!("{} hole {i}", model.display());
            assert_eq!(on.generated_ids, off.generated_ids, "{what}");
            assert_eq!(on.text, off.text, "{what}");
            assert_eq!(on.stop_reason, off.stop_reason, "{what}");
            assert_eq!(off.timings.drafted_tokens, 0, "{what}");
            drafted += on.timings.drafted_tokens;
            accepted += on.timings.accepted_tokens;
            if i == 0 {
                // max_tokens reached at every position of the first tokens: inside drafts too.
                for &m in sweep.iter().filter(|&&m| m <= off.generated_ids.len()) {
                    let short = decode_with(&engine, &prompt, m, true, &[]);
                    assert_eq!(
                        short.generated_ids,
                        off.generated_ids[..m],
                        "{what} max {m}"
                    );
                    assert_eq!(short.stop_reason, StopReason::MaxTokens, "{what} max {m}");
                }
            }
            // Stop strings taken from the output itself, at several places.
            for at in [3, 9, 20] {
                let Some(&id) = off.generated_ids.get(at) else {
                    continue;
                };
                let stop = engine.tokenizer().decode(&[id]).trim().to_string();
                if stop.is_empty() || stop.contains('\u{FFFD}') {
                    continue;
                }
                let stops = [stop];
                let off = decode_with(&engine, &prompt, 48, false, &stops);
                let on = decode_with(&engine, &prompt, 48, true, &stops);
                assert_eq!(off.stop_reason, StopReason::StopString, "{what} {stops:?}");
                assert_eq!(
                    (on.generated_ids, on.text, on.stop_reason),
                    (off.generated_ids, off.text, off.stop_reason),
                    "{what} {stops:?}"
                );
            }
            // The whole pipeline, with token healing and the streaming stop rules.
            let mut req = CompletionRequest::new(format!("{prefix}    "), &suffix, 48);
            req.speculative = Drafting::OFF;
            let healed_prompt = completion::prepare(&engine, &builder, &req).unwrap();
            decode_with(&engine, &healed_prompt.prompt().ids, 1, false, &[]);
            let off = completion::complete(&engine, &builder, &req).unwrap();
            req.speculative = Drafting::ON;
            let on = completion::complete(&engine, &builder, &req).unwrap();
            assert_eq!(
                (on.generated_ids, on.completion),
                (off.generated_ids, off.completion),
                "{what} healed"
            );
        }
        assert!(accepted > 0, "{}: no draft was accepted", model.display());
        assert!(
            drafted > accepted,
            "{}: no draft was rejected ({drafted} drafted)",
            model.display()
        );
    }
}

/// A context that fills up in the middle of speculative decoding stops where plain decoding stops: drafts
/// never run past the cache's last position.
#[test]
fn speculative_decoding_stops_at_a_full_context_like_plain_decoding() {
    let engine = start(&common::small_model());
    let text = std::fs::read_to_string(common::checkout().join("examples/typing/inventory.py"))
        .expect("example file");
    let ids = engine.tokenizer().encode(&text, true);
    let prompt = &ids[..230];
    decode_with(&engine, prompt, 1, false, &[]);
    let off = decode_with(&engine, prompt, 100, false, &[]);
    let on = decode_with(&engine, prompt, 100, true, &[]);
    assert_eq!(off.stop_reason, StopReason::ContextFull);
    assert_eq!(off.generated_ids.len(), 256 - 230 + 1);
    assert_eq!(
        (on.generated_ids, on.stop_reason),
        (off.generated_ids, off.stop_reason)
    );
    assert!(on.timings.accepted_tokens > 0, "{:?}", on.timings);
}

/// Qwen2.5-Coder 1.5B with the 0.5B as its draft model (checked to have loaded), and a prompt builder for
/// it; `None` (the test skips, saying so) without the 1.5B file.
fn qwen_1_5b_with_draft() -> Option<(Engine, codellama_text::prompt::PromptBuilder)> {
    use codellama_text::prompt::{PromptBuilder, PromptConfig};

    let main = common::qwen_1_5b_model()?;
    let engine = Engine::start(
        LoadOptions {
            model: Some(main.display().to_string()),
            draft_model: Some(common::qwen_model().display().to_string()),
            context_window: Some(1024),
            ..LoadOptions::default()
        },
        Box::new(|_| {}),
    )
    .expect("engine starts");
    let draft = engine.draft().expect("a draft model was named");
    assert!(draft.is_ok(), "{draft:?}");
    let builder = PromptBuilder::new(engine.tokenizer().clone(), &PromptConfig::default()).unwrap();
    Some((engine, builder))
}

/// A draft model changes the speed, never the output: Qwen2.5-Coder 0.5B drafting for 1.5B on holes cut
/// from real code gives, token for token, what plain greedy decoding gives, alone and with prompt lookup,
/// for the whole length and when `max_tokens` ends inside a draft; some guesses are accepted and some
/// rejected, so the draft model's cache is rolled back too.
#[test]
fn a_draft_model_gives_the_plain_greedy_output() {
    let Some((engine, builder)) = qwen_1_5b_with_draft() else {
        return;
    };
    let model_only = Drafting {
        prompt_lookup: false,
        draft_model: true,
    };
    let (mut drafted, mut accepted) = (0, 0);
    for (i, (prefix, suffix)) in code_holes(&[40, 110, 190, 260]).into_iter().enumerate() {
        let prompt = raw_prompt(&engine, &builder, (&prefix, &suffix), 40);
        decode_with(&engine, &prompt, 1, true, &[]);
        let off = decode_with(&engine, &prompt, 40, false, &[]);
        for (how, drafting) in [("draft model", model_only), ("both", Drafting::ON)] {
            let on = decode_with(&engine, &prompt, 40, drafting, &[]);
            assert_eq!(on.generated_ids, off.generated_ids, "hole {i}, {how}");
            assert_eq!(
                (on.text.as_str(), on.stop_reason),
                (off.text.as_str(), off.stop_reason),
                "hole {i}, {how}"
            );
            if drafting == model_only {
                drafted += on.timings.drafted_tokens;
                accepted += on.timings.accepted_tokens;
            }
        }
        if i == 0 {
            for m in (1..=9).filter(|&m| m <= off.generated_ids.len()) {
                let short = decode_with(&engine, &prompt, m, model_only, &[]);
                assert_eq!(short.generated_ids, off.generated_ids[..m], "max {m}");
            }
        }
    }
    assert!(accepted > 0, "no guess of the draft model was accepted");
    assert!(
        drafted > accepted,
        "no guess was rejected ({drafted} drafted)"
    );
}

/// A keystroke's request (one with shorter prompts) does not wait for a draft model whose cache lacks most
/// of its prompt: it is answered at once without the draft model's guesses, with the same tokens, and the
/// draft model reads the prompt while the engine is idle, so that a later keystroke's request drafts again.
#[test]
fn a_lagging_draft_model_is_not_waited_for_and_catches_up_while_idle() {
    let Some((engine, builder)) = qwen_1_5b_with_draft() else {
        return;
    };
    let (prefix, suffix) = code_holes(&[110]).remove(0);
    let prompt = raw_prompt(&engine, &builder, (&prefix, &suffix), 24);
    assert!(prompt.len() > 400, "{} prompt tokens", prompt.len());
    // The model reads the prompt; the draft model does not (no drafting asked for).
    let plain = decode_with(&engine, &prompt, 24, false, &[]);
    let keystroke = || {
        let mut req = GenerateRequest::new(prompt.clone(), 24);
        req.speculative = Drafting {
            prompt_lookup: false,
            draft_model: true,
        };
        req.stop_at_eog = false;
        // A smaller window's prompt, as the server sends with a keystroke's (not used: the model's
        // cache holds the whole prompt).
        req.shorter = vec![prompt[prompt.len() / 2..].to_vec()];
        engine.generate(req).expect("generation")
    };
    let first = keystroke();
    assert_eq!(first.generated_ids, plain.generated_ids);
    assert_eq!(first.timings.drafted_tokens, 0, "{:?}", first.timings);
    assert!(first.timings.computed_tokens < 16, "{:?}", first.timings);
    let deadline = Instant::now() + Duration::from_secs(120);
    let caught_up = loop {
        std::thread::sleep(Duration::from_millis(500));
        let again = keystroke();
        assert_eq!(again.generated_ids, plain.generated_ids);
        if again.timings.drafted_tokens > 0 {
            break again;
        }
        assert!(Instant::now() < deadline, "the draft model never caught up");
    };
    assert!(
        caught_up.timings.accepted_tokens > 0,
        "{:?}",
        caught_up.timings
    );
}

/// A draft model whose vocabulary is not the model's is refused with both files named, and the model
/// serves without it.
#[test]
fn a_draft_model_with_another_vocabulary_is_refused_and_the_model_serves() {
    let (main, other) = (common::qwen_model(), common::small_model());
    let engine = Engine::start(
        LoadOptions {
            model: Some(main.display().to_string()),
            draft_model: Some(other.display().to_string()),
            context_window: Some(256),
            ..LoadOptions::default()
        },
        Box::new(|_| {}),
    )
    .expect("the model loads without its draft model");
    let err = match engine.draft() {
        Some(Err(e)) => e.clone(),
        other => panic!("the draft model was not refused: {other:?}"),
    };
    for file in [&main, &other] {
        assert!(err.contains(&file.display().to_string()), "{err}");
    }
    assert!(err.contains("vocabulary"), "{err}");
    let prompt = engine.tokenizer().encode("def add(a, b):\n", false);
    let model_only = Drafting {
        prompt_lookup: false,
        draft_model: true,
    };
    let out = decode_with(&engine, &prompt, 8, model_only, &[]);
    assert_eq!(out.generated_ids.len(), 8);
    assert_eq!(out.timings.drafted_tokens, 0, "{:?}", out.timings);
}

/// Qwen2.5-Coder 0.5B with one prompt cache of 2,048 positions (each new prompt takes it over).
fn qwen_with_one_cache() -> Engine {
    Engine::start(
        LoadOptions {
            model: Some(common::qwen_model().display().to_string()),
            context_window: Some(2048),
            prompt_caches: Some(1),
            ..LoadOptions::default()
        },
        Box::new(|_| {}),
    )
    .expect("engine starts")
}

/// The ids of each line of `source`, encoded on its own.
fn encoded_lines(tokenizer: &codellama_engine::Tokenizer, source: &str) -> Vec<Vec<u32>> {
    source
        .split_inclusive('\n')
        .map(|l| tokenizer.encode(l, false))
        .collect()
}

/// Up to `max_tokens` greedy tokens after `prompt`, moving cached runs of `cache_reuse` tokens.
fn answer(
    engine: &Engine,
    prompt: &[u32],
    max_tokens: usize,
    cache_reuse: usize,
) -> codellama_engine::Outcome {
    let mut req = GenerateRequest::new(prompt.to_vec(), max_tokens);
    req.cache_reuse = cache_reuse;
    engine.generate(req).expect("generation")
}

/// Real code and Qwen2.5-Coder 0.5B: when the prompt's window slides down a file, or a fill-in-the-middle
/// prompt's middle marker moves down as the user types, the lines both prompts hold are taken from the
/// cache at their new positions instead of computed again, and the suggestion starts as the one computed
/// afresh; with `cache_reuse` 0 all after the first change is computed.
#[test]
fn a_window_sliding_down_a_file_reuses_the_lines_it_kept() {
    let engine = qwen_with_one_cache();
    let tokenizer = engine.tokenizer().clone();
    let lines = encoded_lines(&tokenizer, include_str!("../crates/text/src/documents.rs"));
    let window = |from: usize, to: usize| lines[from..to].concat();
    let (first, slid, other) = (window(0, 60), window(20, 90), window(200, 210));
    let kept = window(20, 60).len();
    // A fill-in-the-middle prompt whose middle marker moved from line 40 to 48 as the user typed on.
    let marker = |name: &str| vec![tokenizer.token_id(name).unwrap()];
    let fim = |middle_from: usize, cursor: usize| {
        [
            marker("<|fim_prefix|>"),
            window(0, middle_from),
            marker("<|fim_suffix|>"),
            window(56, 100),
            marker("<|fim_middle|>"),
            window(middle_from, cursor),
        ]
        .concat()
    };
    let (typing, crossed) = (fim(40, 50), fim(48, 52));
    let ask = |prompt: &[u32], cache_reuse: usize| answer(&engine, prompt, 12, cache_reuse);
    let mut answers = Vec::new();
    let mut fim_answers = Vec::new();
    for cache_reuse in [64, 0] {
        ask(&other, 0); // the cache holds something else
        ask(&first, cache_reuse);
        answers.push(ask(&slid, cache_reuse));
        ask(&typing, cache_reuse);
        fim_answers.push(ask(&crossed, cache_reuse));
    }
    // Only lines of the middle are computed (those before line 50 as well, being fewer than 64 tokens);
    // the suffix is taken from where it was.
    let (moved, computed) = (&fim_answers[0], &fim_answers[1]);
    let middle = window(40, 52).len() + 1;
    assert!(
        moved.timings.computed_tokens <= middle,
        "{:?}",
        moved.timings
    );
    assert!(
        moved.timings.moved_tokens >= window(56, 100).len(),
        "{:?}",
        moved.timings
    );
    assert_eq!(
        computed.timings.computed_tokens,
        crossed.len() - 1 - window(0, 40).len(),
        "without moves, all after the old middle marker"
    );
    // The moved suffix keeps what it made of the old context, so the suggestion may part from the one
    // computed afresh after a while (seen: three lines agree, then two different doc comments).
    let first_line = |o: &codellama_engine::Outcome| {
        let text = tokenizer.decode(&o.generated_ids);
        text.lines().next().unwrap_or_default().to_string()
    };
    assert_eq!(first_line(moved), first_line(computed));
    assert!(!first_line(computed).trim().is_empty());
    let (moved, computed) = (&answers[0], &answers[1]);
    // The kept lines, and what the model wrote after them where it is what the file has.
    let reused = moved.timings.reused_tokens;
    assert!((kept..kept + 12).contains(&reused), "{reused} of {kept}");
    assert_eq!(moved.timings.moved_tokens, reused);
    assert_eq!(moved.timings.computed_tokens, slid.len() - reused);
    assert_eq!(computed.timings.reused_tokens, 0);
    assert_eq!(computed.timings.computed_tokens, slid.len());
    assert_eq!(
        tokenizer.decode(&moved.generated_ids),
        tokenizer.decode(&computed.generated_ids)
    );
}

/// What moving runs does to suggestions, on real code (Qwen2.5-Coder 0.5B): at 18 places in three files
/// (frozen copies, `tests/data/moved_runs/`)
/// the user types past a 16-line mark, so the fill-in-the-middle prompt's middle marker moves down 16
/// lines and the suffix is taken from the cache 16 lines further on. The hole is one line; the first line
/// of each greedy suggestion with moved runs is compared with the one computed afresh and with the file.
#[test]
fn moved_runs_keep_the_suggestions_good() {
    let engine = qwen_with_one_cache();
    let tokenizer = engine.tokenizer().clone();
    let ask = |prompt: &[u32], cache_reuse: usize| answer(&engine, prompt, 24, cache_reuse);
    let first_line = |ids: &[u32]| {
        tokenizer
            .decode(ids)
            .lines()
            .next()
            .unwrap_or("")
            .to_string()
    };
    // Copies of two of our sources as they were when this test was set (the example file does not
    // change): which of 18 one-line suggestions come out right shifts with any edit of the text, and a
    // test of moving runs should not fail because a comment was added to the file it reads.
    let sources = [
        include_str!("data/moved_runs/documents.rs.txt"),
        include_str!("../examples/typing/inventory.py"),
        include_str!("data/moved_runs/prompt_cache.rs.txt"),
    ];
    let (mut cases, mut moved) = (0, 0);
    let (mut same, mut right_moved, mut right_fresh) = (0, 0, 0);
    for source in sources {
        let text: Vec<&str> = source.split_inclusive('\n').collect();
        let lines = encoded_lines(&tokenizer, source);
        let window = |from: usize, to: usize| lines[from..to.min(lines.len())].concat();
        let marker = |name: &str| vec![tokenizer.token_id(name).unwrap()];
        // The hole is line `cursor`; the middle starts at line `middle`; 40 lines of suffix.
        let fim = |middle: usize, cursor: usize| {
            [
                marker("<|fim_prefix|>"),
                window(0, middle),
                marker("<|fim_suffix|>"),
                window(cursor + 1, cursor + 41),
                marker("<|fim_middle|>"),
                window(middle, cursor),
            ]
            .concat()
        };
        for mark in [32, 48, 64, 80, 96, 112] {
            let (before, after) = (fim(mark - 16, mark - 1), fim(mark, mark + 1));
            ask(&before, 0);
            let reused = ask(&after, 64);
            ask(&[1, 2, 3], 0); // another prompt replaces the cache
            let fresh = ask(&after, 0);
            let (a, b) = (
                first_line(&reused.generated_ids),
                first_line(&fresh.generated_ids),
            );
            let truth = text[mark + 1].trim_end();
            cases += 1;
            moved += reused.timings.moved_tokens;
            same += usize::from(a == b);
            right_moved += usize::from(a.trim_end() == truth);
            right_fresh += usize::from(b.trim_end() == truth);
            eprintln!("line {}: {truth:?}\n  moved {a:?}\n  fresh {b:?}", mark + 1);
        }
    }
    eprintln!(
        "{cases} holes: {same} first lines the same; the file's line: {right_moved} moved, {right_fresh} fresh; {moved} tokens moved"
    );
    assert!(moved >= cases * 64, "{moved} tokens moved in {cases} cases");
    assert!(same * 2 >= cases, "{same}/{cases} first lines the same");
    assert!(
        right_moved + 2 >= right_fresh,
        "{right_moved} right with moves, {right_fresh} without"
    );
}

/// Qwen2.5-Coder 0.5B and a real file, through the completion pipeline: a request whose prompt the caches
/// do not hold is answered from a smaller window computing at most the cold limit; the next requests for
/// the same cursor grow the window back, each computing at most the limit, until the whole window's
/// prompt is used. Left idle after a shortened answer, the model thread computes the whole window's
/// prompt (in the draft model's cache too), so that the next request computes only its last tokens. Without a limit (`Some(0)`) the first
/// request computes the whole window.
#[test]
fn a_cold_prompt_is_answered_from_a_smaller_window_that_grows_back() {
    use codellama_text::completion::{complete, CompletionRequest};
    use codellama_text::prompt::{PromptBuilder, PromptConfig};
    const LIMIT: usize = 500;
    let file = include_str!("../examples/typing/inventory.py");
    let cursor = file.match_indices('\n').nth(180).unwrap().0 + 1 + "    ".len();
    let engine = qwen_with_one_cache();
    let builder = PromptBuilder::new(engine.tokenizer().clone(), &PromptConfig::default()).unwrap();
    let mut req = CompletionRequest::new(&file[..cursor], &file[cursor..], 4);
    req.cold_prompt_tokens = Some(LIMIT);
    let mut steps = Vec::new();
    loop {
        let c = complete(&engine, &builder, &req).expect("completion");
        let t = &c.timings;
        assert_eq!(c.prompt_ids.len(), t.prompt_tokens);
        steps.push((t.shortened, t.prompt_tokens, t.computed_tokens));
        assert!(t.computed_tokens <= LIMIT + 1, "{steps:?}");
        if t.shortened == 0 || steps.len() == 8 {
            break;
        }
    }
    let (first, last) = (steps[0], steps[steps.len() - 1]);
    assert!(
        first.0 > 0 && last.0 == 0,
        "the window should grow back: {steps:?}"
    );
    assert!(
        steps.windows(2).all(|w| w[1].0 < w[0].0 && w[1].1 > w[0].1),
        "each step a larger window: {steps:?}"
    );
    let whole = last.1;
    assert!(whole > 2 * LIMIT, "{steps:?}");

    // Idle growth, with a draft model (the same model here) whose cache grows after the model's: one
    // shortened answer, then time enough to compute the rest in both (about 6 s here on two cores; the
    // wait allows for a loaded machine).
    let idle = Engine::start(
        LoadOptions {
            model: Some(common::qwen_model().display().to_string()),
            draft_model: Some(common::qwen_model().display().to_string()),
            context_window: Some(2048),
            prompt_caches: Some(1),
            ..LoadOptions::default()
        },
        Box::new(|_| {}),
    )
    .expect("engine starts");
    let short = complete(&idle, &builder, &req).expect("completion");
    assert!(short.timings.shortened > 0, "{:?}", short.timings);
    std::thread::sleep(Duration::from_secs(30));
    let c = complete(&idle, &builder, &req).expect("completion");
    let t = &c.timings;
    assert_eq!((t.shortened, t.prompt_tokens), (0, whole));
    assert!(t.computed_tokens <= 17, "{t:?}");
    // The model and then the draft model computed what the shorter prompt lacked of the whole one.
    let lacked = whole - short.timings.prompt_tokens;
    assert!(t.idle_tokens >= 2 * (lacked - 32), "{t:?}, {lacked} lacked");
    assert_eq!(t.idle_discarded_tokens, 0, "{t:?}");

    let cold = qwen_with_one_cache();
    req.cold_prompt_tokens = Some(0);
    let c = complete(&cold, &builder, &req).expect("completion");
    assert_eq!((c.timings.shortened, c.timings.prompt_tokens), (0, whole));
    assert_eq!(c.timings.computed_tokens, whole);
}
