//! The decoder forward pass of the llama family on candle tensors, with a KV cache whose layout this file
//! owns. Two architectures share it: `llama` (Llama 2, Code Llama, SmolLM2) and `qwen2` (Qwen2.5-Coder),
//! which is llama plus biases on the query/key/value projections and rotary pairs split in halves.
//!
//! The cache is preallocated for the whole context window, one `[kv_heads, capacity, head_dim]` tensor
//! per layer for keys and one for values; new positions are written in place and `truncate` just moves
//! the length back, so a prompt that shares its first N tokens with the previous one computes only the
//! rest, and nothing is reallocated per token. Linear layers run our own CPU kernels on the weights in
//! their file format (see `kernels`) or candle's `QMatMul` on a GPU device. Rotary embeddings use the
//! interleaved layout for llama GGUF files (their Q/K rows were permuted by the converter) and the
//! half-split layout for qwen2 GGUF files and every Hugging Face checkpoint.

use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType, QMatMul};
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};

use super::error::{EngineError, Result};
use super::gguf::{GgufFile, TensorData, WeightFile};
use super::kernels::attention::{self, AttnShape, KvLayer, KvType, Layout as KvLayout};
use super::kernels::{Exec, QMatrix, WeightBytes};
use super::pool::Pool;

mod cpu;

/// The architectures the forward pass runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// Llama 2, Code Llama, SmolLM2.
    Llama,
    /// Qwen2 / Qwen2.5(-Coder): llama with q/k/v biases and NEOX-style (half-split) rotary pairs.
    Qwen2,
}

impl Arch {
    /// The architecture a GGUF `general.architecture` or a `config.json` `model_type` names.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "llama" => Some(Arch::Llama),
            "qwen2" => Some(Arch::Qwen2),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
        }
    }

    fn has_qkv_bias(self) -> bool {
        self == Arch::Qwen2
    }

    /// Whether a GGUF file of this architecture stores Q/K rows permuted for interleaved rotary pairs
    /// (llama.cpp's converter permutes llama's; qwen2 keeps the checkpoint's half-split layout).
    fn gguf_rope_interleaved(self) -> bool {
        self == Arch::Llama
    }
}

/// Hyper-parameters, all read from the model's metadata.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelConfig {
    pub arch: Arch,
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub n_ff: usize,
    pub vocab_size: usize,
    pub rope_theta: f32,
    pub rms_eps: f32,
    /// The context length the model was trained for (no hidden cap).
    pub context_length: usize,
    /// Interleaved (GGUF) or half-split (Hugging Face) rotary layout.
    pub rope_interleaved: bool,
}

impl ModelConfig {
    /// The weights of a model of this shape (its matrices and the embedding table), at least 1: what
    /// sizes work that should take about the same time for every model.
    pub fn weights(&self) -> usize {
        let attention = self.n_embd * self.head_dim * 2 * (self.n_head + self.n_head_kv);
        let layer = attention + 3 * self.n_embd * self.n_ff;
        (self.n_layer * layer + self.vocab_size * self.n_embd).max(1)
    }

    /// Reads the `<arch>.*` keys. Pushes a warning when a Code Llama file lacks `rope.freq_base`.
    pub fn from_gguf(f: &GgufFile, warnings: &mut Vec<String>) -> Result<Self> {
        let name = f.architecture().unwrap_or("");
        let arch = Arch::from_name(name).ok_or_else(|| EngineError::UnsupportedArchitecture {
            path: f.path.clone(),
            arch: name.to_string(),
        })?;
        let key = |k: &str| format!("{}.{k}", arch.name());
        let n_embd = f.require_usize(&key("embedding_length"))?;
        let n_head = f.require_usize(&key("attention.head_count"))?;
        let n_head_kv = f
            .get_usize(&key("attention.head_count_kv"))
            .unwrap_or(n_head);
        let head_dim = n_embd / n_head.max(1);
        let vocab_size = f
            .get_usize(&key("vocab_size"))
            .or_else(|| f.array_len("tokenizer.ggml.tokens"))
            .or_else(|| f.dims(GGUF_NAMES.embed).map(|d| d[0]))
            .unwrap_or(0);
        let rope_theta = match f.get_f32(&key("rope.freq_base")) {
            Some(t) => t,
            None if vocab_size == 32016 => {
                warnings.push(format!(
                    "{}: no {} key; this looks like Code Llama (32016 tokens), using 1e6 rather than the Llama default 1e4",
                    f.path.display(),
                    key("rope.freq_base")
                ));
                1_000_000.0
            }
            None => {
                warnings.push(format!(
                    "{}: no {} key; using the default 10000",
                    f.path.display(),
                    key("rope.freq_base")
                ));
                10_000.0
            }
        };
        let rope_dim = f
            .get_usize(&key("rope.dimension_count"))
            .unwrap_or(head_dim);
        let cfg = Self {
            arch,
            n_layer: f.require_usize(&key("block_count"))?,
            n_embd,
            n_head,
            n_head_kv,
            head_dim,
            n_ff: f.require_usize(&key("feed_forward_length"))?,
            vocab_size,
            rope_theta,
            rms_eps: f
                .get_f32(&key("attention.layer_norm_rms_epsilon"))
                .unwrap_or(1e-5),
            context_length: f.get_usize(&key("context_length")).unwrap_or(4096),
            rope_interleaved: arch.gguf_rope_interleaved(),
        };
        let vocab_key = match f.get(&key("vocab_size")) {
            Some(_) => key("vocab_size"),
            None => "tokenizer.ggml.tokens".to_string(),
        };
        let key_of = |field: &str| match field {
            "vocab_size" => vocab_key.clone(),
            _ => key(field),
        };
        cfg.validate(&f.path, &key_of, f, &GGUF_NAMES, rope_dim)?;
        Ok(cfg)
    }

    /// Reads a Hugging Face `config.json` of a `LlamaForCausalLM` or `Qwen2ForCausalLM` checkpoint
    /// whose weights are `src`.
    pub fn from_hf_json(
        path: &Path,
        json: &serde_json::Value,
        src: &dyn TensorSource,
    ) -> Result<Self> {
        let num = |k: &str| json.get(k).and_then(|v| v.as_u64()).map(|v| v as usize);
        let need = |k: &str| {
            num(k).ok_or_else(|| EngineError::MissingMetadata {
                path: path.to_path_buf(),
                key: k.to_string(),
            })
        };
        let model_type = json
            .get("model_type")
            .and_then(|v| v.as_str())
            .unwrap_or("");
        let arch =
            Arch::from_name(model_type).ok_or_else(|| EngineError::UnsupportedArchitecture {
                path: path.to_path_buf(),
                arch: model_type.to_string(),
            })?;
        let n_embd = need("hidden_size")?;
        let n_head = need("num_attention_heads")?;
        let head_dim = num("head_dim").unwrap_or(n_embd / n_head.max(1));
        let cfg = Self {
            arch,
            n_layer: need("num_hidden_layers")?,
            n_embd,
            n_head,
            n_head_kv: num("num_key_value_heads").unwrap_or(n_head),
            head_dim,
            n_ff: need("intermediate_size")?,
            vocab_size: need("vocab_size")?,
            rope_theta: json
                .get("rope_theta")
                .and_then(|v| v.as_f64())
                .unwrap_or(10_000.0) as f32,
            rms_eps: json
                .get("rms_norm_eps")
                .and_then(|v| v.as_f64())
                .unwrap_or(1e-5) as f32,
            context_length: num("max_position_embeddings").unwrap_or(4096),
            rope_interleaved: false,
        };
        cfg.validate(path, &hf_key, src, &HF_NAMES, head_dim)?;
        Ok(cfg)
    }

    /// Refuses hyper-parameters that make no sense alone or disagree with the tensors of `src` (named as
    /// `names` says), before anything is sized from them. `key` names the metadata key a field was read
    /// from, given its GGUF name without the architecture prefix (`block_count`), for the message.
    fn validate(
        &self,
        path: &Path,
        key: &dyn Fn(&str) -> String,
        src: &dyn TensorSource,
        names: &Names,
        rope_dim: usize,
    ) -> Result<()> {
        let bad = |field: &str, detail: String| EngineError::BadMetadata {
            path: path.to_path_buf(),
            key: key(field),
            detail,
        };
        self.check_values(&bad)?;
        self.check_tensors(src, names, &bad)?;
        self.check_heads(rope_dim, &bad)
    }

    /// The values that make sense whatever the tensors are.
    fn check_values(&self, bad: &dyn Fn(&str, String) -> EngineError) -> Result<()> {
        for (field, value) in [
            ("block_count", self.n_layer),
            ("embedding_length", self.n_embd),
            ("attention.head_count", self.n_head),
            ("attention.head_count_kv", self.n_head_kv),
            ("feed_forward_length", self.n_ff),
            ("vocab_size", self.vocab_size),
            ("context_length", self.context_length),
        ] {
            if value == 0 {
                return Err(bad(field, "is 0".into()));
            }
        }
        if self.context_length > MAX_CONTEXT_LENGTH {
            return Err(bad(
                "context_length",
                format!(
                    "= {} is more than any model is trained for (at most {MAX_CONTEXT_LENGTH} is accepted)",
                    self.context_length
                ),
            ));
        }
        if !(self.rms_eps.is_finite() && self.rms_eps > 0.0 && self.rms_eps < 1.0) {
            return Err(bad(
                "attention.layer_norm_rms_epsilon",
                format!("= {} is not a small positive number", self.rms_eps),
            ));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 1.0) {
            return Err(bad(
                "rope.freq_base",
                format!("= {} is not a finite number above 1", self.rope_theta),
            ));
        }
        Ok(())
    }

    /// The layer count, the widths and the vocabulary against the shapes of the tensors that exist.
    fn check_tensors(
        &self,
        src: &dyn TensorSource,
        names: &Names,
        bad: &dyn Fn(&str, String) -> EngineError,
    ) -> Result<()> {
        let dims = |name: &str| match src.dims(name) {
            Some(dims) => Ok(dims),
            None => Err(EngineError::BadTensor {
                path: src.path().to_path_buf(),
                name: name.to_string(),
                detail: "missing from the file".into(),
            }),
        };
        let embd = dims(names.embed)?;
        if embd.len() != 2 || embd[1] != self.n_embd {
            return Err(bad(
                "embedding_length",
                format!("= {} but {} has shape {embd:?}", self.n_embd, names.embed),
            ));
        }
        if embd[0] != self.vocab_size {
            return Err(bad(
                "vocab_size",
                format!(
                    "gives {} tokens but {} has {} rows",
                    self.vocab_size, names.embed, embd[0]
                ),
            ));
        }
        let weight = |i: usize, part: Part| format!("{}.weight", (names.block)(i, part));
        let layer = |i: usize| weight(i, Part::Q);
        if src.dims(&layer(self.n_layer - 1)).is_none() || src.dims(&layer(self.n_layer)).is_some()
        {
            let found = (0..).take_while(|&i| src.dims(&layer(i)).is_some()).count();
            return Err(bad(
                "block_count",
                format!("= {} but the file has {found} layers", self.n_layer),
            ));
        }
        let hd = self.head_dim;
        for (field, part, heads) in [
            ("attention.head_count", Part::Q, self.n_head),
            ("attention.head_count_kv", Part::K, self.n_head_kv),
        ] {
            let name = weight(0, part);
            let have = dims(&name)?[0];
            if heads.checked_mul(hd) != Some(have) {
                return Err(bad(
                    field,
                    format!("= {heads} heads of {hd} values, but {name} has {have} rows"),
                ));
            }
        }
        let name = weight(0, Part::Gate);
        let have = dims(&name)?[0];
        if have != self.n_ff {
            return Err(bad(
                "feed_forward_length",
                format!("= {} but {name} has {have} rows", self.n_ff),
            ));
        }
        Ok(())
    }

    /// The attention heads' layout.
    fn check_heads(
        &self,
        rope_dim: usize,
        bad: &dyn Fn(&str, String) -> EngineError,
    ) -> Result<()> {
        if !self.n_head.is_multiple_of(self.n_head_kv) {
            return Err(bad(
                "attention.head_count_kv",
                format!(
                    "= {} does not divide the {} attention heads",
                    self.n_head_kv, self.n_head
                ),
            ));
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return Err(bad(
                "attention.head_count",
                format!(
                    "= {} gives heads of {} values, not a positive even number",
                    self.n_head, self.head_dim
                ),
            ));
        }
        if rope_dim != self.head_dim {
            return Err(bad(
                "rope.dimension_count",
                format!(
                    "= {rope_dim} differs from the head dimension {} (partial rotary embeddings are not supported)",
                    self.head_dim
                ),
            ));
        }
        Ok(())
    }
}

/// Trained context lengths above this are refused as corrupt: the longest models take about 10M tokens.
const MAX_CONTEXT_LENGTH: usize = 1 << 24;

/// The `config.json` name of a field, given its GGUF key without the architecture prefix.
fn hf_key(field: &str) -> String {
    match field {
        "block_count" => "num_hidden_layers",
        "embedding_length" => "hidden_size",
        "attention.head_count" => "num_attention_heads",
        "attention.head_count_kv" => "num_key_value_heads",
        "feed_forward_length" => "intermediate_size",
        "rope.freq_base" => "rope_theta",
        "rope.dimension_count" => "head_dim",
        "attention.layer_norm_rms_epsilon" => "rms_norm_eps",
        "context_length" => "max_position_embeddings",
        other => other,
    }
    .to_string()
}

/// How a model keeps its matrices on the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Weights {
    /// As the file stores them, converted only where no kernel of ours takes the type
    /// (`QMatrix::transcode`): the model's outputs are the file's.
    AsStored,
    /// Types wider than Q4_0 quantized again as Q4_0 at load (`QMatrix::compact`), for a draft model:
    /// its guesses need only be likely, as every one is checked, and a draft step reads its weights
    /// from memory. A step of Qwen2.5-Coder 0.5B Q4_K_M (Q5_0, Q6_K and Q8_0 matrices) reads a fifth less
    /// (208 MiB instead of 266).
    Compact,
}

/// A linear layer `y = x · Wᵀ`.
#[derive(Clone)]
pub enum Linear {
    /// Our CPU kernels on the weights in their stored format.
    Cpu(Arc<QMatrix>),
    /// candle's quantized matmul on a GPU device.
    Device(Arc<QMatMul>),
}

impl Linear {
    fn from_tensor(t: &TensorData, device: &Device, weights: Weights, path: &Path) -> Result<Self> {
        let [rows, cols] = t.dims[..] else {
            return Err(EngineError::BadTensor {
                path: path.to_path_buf(),
                name: t.name.clone(),
                detail: format!("expected a matrix, found shape {:?}", t.dims),
            });
        };
        if device.is_cpu() {
            let mut m = cpu_matrix(t, rows, cols, path)?;
            if weights == Weights::Compact && m.compact() {
                tracing::debug!("{}: {:?} quantized again as Q4_0", t.name, t.dtype);
            }
            if m.transcode() {
                tracing::debug!("{}: {:?} converted to {:?}", t.name, t.dtype, m.dtype());
            }
            m.pack();
            Ok(Linear::Cpu(Arc::new(m)))
        } else {
            let q = qtensor_from_ggml(t.dtype, t.data.bytes(), t.dims.clone(), device)?;
            Ok(Linear::Device(Arc::new(QMatMul::from_qtensor(q)?)))
        }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Linear::Cpu(m) => x.contiguous()?.apply_op1_no_bwd(&MatMulOp(m.clone()))?,
            Linear::Device(q) => x.apply(&**q)?,
        })
    }
}

/// A weight matrix used in place from the file.
fn cpu_matrix(t: &TensorData, rows: usize, cols: usize, path: &Path) -> Result<QMatrix> {
    QMatrix::new(t.dtype, rows, cols, WeightBytes::File(t.data.clone())).map_err(|detail| {
        EngineError::BadTensor {
            path: path.to_path_buf(),
            name: t.name.clone(),
            detail,
        }
    })
}

struct MatMulOp(Arc<QMatrix>);

impl CustomOp1 for MatMulOp {
    fn name(&self) -> &'static str {
        "codellama-qmatmul"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("qmatmul expects f32 activations");
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("qmatmul expects contiguous activations");
        };
        let x = &data[start..end];
        let k = self.0.cols();
        let dims = layout.shape().dims();
        if dims.last() != Some(&k) {
            candle_core::bail!("qmatmul: input {dims:?} does not end in {k}");
        }
        let m = x.len() / k;
        let mut out = vec![0f32; m * self.0.rows()];
        self.0.matmul(x, m, &mut out);
        let mut out_dims = dims.to_vec();
        *out_dims.last_mut().expect("non-empty dims") = self.0.rows();
        Ok((CpuStorage::F32(out), Shape::from(out_dims)))
    }
}

/// RMS normalisation times the weight. On the CPU the sum of squares is accumulated in f64 and the
/// row is multiplied by `1/sqrt(mean + eps)`, as llama.cpp does; elsewhere candle's fused op runs.
fn rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
    if x.device().is_cpu() {
        Ok(x.contiguous()?.apply_op2_no_bwd(w, &RmsNormOp(eps))?)
    } else {
        Ok(candle_nn::ops::rms_norm(x, w, eps)?)
    }
}

/// The two inputs of one of our CPU custom ops, as contiguous f32 slices.
fn f32_inputs<'a>(
    op: &str,
    (s1, l1): (&'a CpuStorage, &Layout),
    (s2, l2): (&'a CpuStorage, &Layout),
) -> candle_core::Result<(&'a [f32], &'a [f32])> {
    let (CpuStorage::F32(a), CpuStorage::F32(b)) = (s1, s2) else {
        candle_core::bail!("{op} expects f32");
    };
    let (Some((a0, a1)), Some((b0, b1))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
    else {
        candle_core::bail!("{op} expects contiguous inputs");
    };
    Ok((&a[a0..a1], &b[b0..b1]))
}

struct RmsNormOp(f32);

impl candle_core::CustomOp2 for RmsNormOp {
    fn name(&self) -> &'static str {
        "codellama-rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, w) = f32_inputs("rms_norm", (s1, l1), (s2, l2))?;
        let n = w.len();
        if n == 0 || x.len() % n != 0 {
            candle_core::bail!("rms_norm: {} values do not split into rows of {n}", x.len());
        }
        let mut out = vec![0f32; x.len()];
        rms_norm_rows(x, w, self.0, &mut out);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// `silu(gate) · up`: on the CPU with llama.cpp's arithmetic (see `kernels::activation`), elsewhere
/// with candle's ops.
fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if gate.device().is_cpu() {
        Ok(gate
            .contiguous()?
            .apply_op2_no_bwd(&up.contiguous()?, &SwigluOp)?)
    } else {
        Ok((candle_nn::ops::silu(gate)? * up)?)
    }
}

struct SwigluOp;

impl candle_core::CustomOp2 for SwigluOp {
    fn name(&self) -> &'static str {
        "codellama-swiglu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (g, u) = f32_inputs("swiglu", (s1, l1), (s2, l2))?;
        if g.len() != u.len() {
            candle_core::bail!("swiglu: mismatched sizes");
        }
        let mut out = g.to_vec();
        let row = *l1.shape().dims().last().unwrap_or(&out.len());
        crate::kernels::activation::swiglu_rows(&mut out, u, row);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// Rotates every head of every token of `x` (in `layout`) by its position's angles (`cos`/`sin` rows
/// for positions `pos..pos + seq`). Interleaved pairs `(2i, 2i+1)` for GGUF files, halves `(i, i + d/2)`
/// for Hugging Face checkpoints. Each output is one fused multiply-add over one rounded product, which
/// is how llama.cpp's compiled CPU code evaluates `x0·cos − x1·sin` and `x0·sin + x1·cos`; matching it
/// keeps greedy outputs comparable with llama.cpp.
#[allow(clippy::too_many_arguments)]
pub(crate) fn rope(
    x: &mut [f32],
    layout: KvLayout,
    heads: usize,
    seq: usize,
    hd: usize,
    cos: &[f32],
    sin: &[f32],
    interleaved: bool,
) {
    let half = hd / 2;
    for h in 0..heads {
        for i in 0..seq {
            let at = match layout {
                KvLayout::HeadMajor => (h * seq + i) * hd,
                KvLayout::TokenMajor => (i * heads + h) * hd,
            };
            let head = &mut x[at..at + hd];
            let (c, s) = (
                &cos[i * half..(i + 1) * half],
                &sin[i * half..(i + 1) * half],
            );
            for j in 0..half {
                let (a, b) = if interleaved {
                    (2 * j, 2 * j + 1)
                } else {
                    (j, j + half)
                };
                let (x0, x1) = (head[a], head[b]);
                head[a] = x0.mul_add(c[j], -(x1 * s[j]));
                head[b] = x0.mul_add(s[j], x1 * c[j]);
            }
        }
    }
}

/// `out = x / sqrt(mean(x²) + eps) · w` for every row of `x` (rows of `w.len()` values), with the sum of
/// squares accumulated in f64 as llama.cpp does.
pub(crate) fn rms_norm_rows(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let n = w.len();
    for (row, dst) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
        let sum: f64 = row.iter().map(|v| (v * v) as f64).sum();
        let mean = (sum / n as f64) as f32;
        let scale = 1.0 / (mean + eps).sqrt();
        for ((d, v), g) in dst.iter_mut().zip(row).zip(w) {
            *d = v * scale * g;
        }
    }
}

/// Token embeddings: rows dequantized on demand from the stored matrix.
enum Embedding {
    Cpu(Arc<QMatrix>),
    Device(Tensor),
}

impl Embedding {
    fn forward(&self, tokens: &[u32], n_embd: usize) -> Result<Tensor> {
        match self {
            Embedding::Cpu(m) => {
                let mut out = vec![0f32; tokens.len() * n_embd];
                for (row, &t) in out.chunks_exact_mut(n_embd).zip(tokens) {
                    m.dequantize_row(t as usize, row);
                }
                Ok(Tensor::from_vec(out, (tokens.len(), n_embd), &Device::Cpu)?)
            }
            Embedding::Device(table) => {
                let ids = Tensor::new(tokens, table.device())?;
                Ok(table.index_select(&ids, 0)?)
            }
        }
    }
}

struct Block {
    attn_norm: Tensor,
    wq: Linear,
    wk: Linear,
    wv: Linear,
    /// Biases of the q/k/v projections (qwen2), added before the rotary embedding.
    qkv_bias: Option<[Tensor; 3]>,
    wo: Linear,
    ffn_norm: Tensor,
    w_gate: Linear,
    w_up: Linear,
    w_down: Linear,
}

/// Which logits `forward` returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// Only for the last position: `[vocab]`.
    Last,
    /// For every position of the chunk: `[seq, vocab]`.
    All,
    /// Only for the last position and the first `n` token ids (at most `vocab`): `[n]`. A draft model's
    /// guesses, where the output matrix is a large part of a step (see `worker::DRAFT_VOCAB`); only
    /// these rows of it are read.
    Head(usize),
}

pub struct Llama {
    pub cfg: ModelConfig,
    device: Device,
    embed: Embedding,
    blocks: Vec<Block>,
    norm: Tensor,
    output: Linear,
    /// The same weights as plain buffers for the fused CPU forward pass (`None` on GPU devices).
    cpu: Option<cpu::CpuModel>,
    /// Compute threads of the CPU forward pass; shared with a draft model (`share_threads`), whose passes
    /// run between this one's on the same thread.
    pool: Arc<Pool>,
    /// Run the tensor forward pass even on the CPU (used to check one path against the other).
    tensor_path: bool,
    /// What `new_cache` stores keys and values as.
    kv_type: KvType,
}

/// Tensor names of one checkpoint format.
struct Names {
    embed: &'static str,
    output: &'static str,
    norm: &'static str,
    /// The name of a block's tensor without its `.weight`/`.bias` ending.
    block: fn(usize, Part) -> String,
}

/// The tensors of one block.
#[derive(Clone, Copy)]
enum Part {
    AttnNorm,
    Q,
    K,
    V,
    O,
    FfnNorm,
    Gate,
    Up,
    Down,
}

const GGUF_NAMES: Names = Names {
    embed: "token_embd.weight",
    output: "output.weight",
    norm: "output_norm.weight",
    block: |i, part| {
        let p = match part {
            Part::AttnNorm => "attn_norm",
            Part::Q => "attn_q",
            Part::K => "attn_k",
            Part::V => "attn_v",
            Part::O => "attn_output",
            Part::FfnNorm => "ffn_norm",
            Part::Gate => "ffn_gate",
            Part::Up => "ffn_up",
            Part::Down => "ffn_down",
        };
        format!("blk.{i}.{p}")
    },
};

const HF_NAMES: Names = Names {
    embed: "model.embed_tokens.weight",
    output: "lm_head.weight",
    norm: "model.norm.weight",
    block: |i, part| {
        let p = match part {
            Part::AttnNorm => "input_layernorm",
            Part::Q => "self_attn.q_proj",
            Part::K => "self_attn.k_proj",
            Part::V => "self_attn.v_proj",
            Part::O => "self_attn.o_proj",
            Part::FfnNorm => "post_attention_layernorm",
            Part::Gate => "mlp.gate_proj",
            Part::Up => "mlp.up_proj",
            Part::Down => "mlp.down_proj",
        };
        format!("model.layers.{i}.{p}")
    },
};

/// Anything that can hand out named tensors (a GGUF file, a set of safetensors files).
pub trait TensorSource {
    fn path(&self) -> &Path;
    /// Reads a tensor into memory.
    fn tensor(&self, name: &str) -> Result<TensorData>;
    /// A tensor's shape (outermost first) without reading it; `None` when there is no such tensor.
    fn dims(&self, name: &str) -> Option<&[usize]>;
}

impl TensorSource for GgufFile {
    fn path(&self) -> &Path {
        &self.path
    }
    fn tensor(&self, name: &str) -> Result<TensorData> {
        GgufFile::tensor(self, name)
    }
    fn dims(&self, name: &str) -> Option<&[usize]> {
        GgufFile::dims(self, name)
    }
}

impl Llama {
    pub fn from_gguf(
        f: &GgufFile,
        cfg: ModelConfig,
        device: &Device,
        weights: Weights,
        progress: &mut dyn FnMut(f32),
    ) -> Result<Self> {
        Self::load(f, &GGUF_NAMES, cfg, device, weights, progress)
    }

    pub fn from_safetensors(
        src: &dyn TensorSource,
        cfg: ModelConfig,
        device: &Device,
        weights: Weights,
        progress: &mut dyn FnMut(f32),
    ) -> Result<Self> {
        Self::load(src, &HF_NAMES, cfg, device, weights, progress)
    }

    fn load(
        src: &dyn TensorSource,
        names: &Names,
        cfg: ModelConfig,
        device: &Device,
        weights: Weights,
        progress: &mut dyn FnMut(f32),
    ) -> Result<Self> {
        let path = src.path().to_path_buf();
        let embd = src.tensor(names.embed)?;
        check_dims(&path, &embd, &[cfg.vocab_size, cfg.n_embd])?;
        let embed = if device.is_cpu() {
            // Rows are looked up one at a time: no repacking.
            Embedding::Cpu(Arc::new(cpu_matrix(
                &embd,
                cfg.vocab_size,
                cfg.n_embd,
                &path,
            )?))
        } else {
            let q = qtensor_from_ggml(embd.dtype, embd.data.bytes(), embd.dims.clone(), device)?;
            Embedding::Device(q.dequantize(device)?)
        };
        // No output matrix means the embedding is tied to the output projection. The file's bytes go
        // with `output_t` at the end of this block, once the linear layer holds what it needs.
        let output = {
            let output_t = if src.dims(names.output).is_some() {
                src.tensor(names.output)?
            } else {
                embd
            };
            check_dims(&path, &output_t, &[cfg.vocab_size, cfg.n_embd])?;
            Linear::from_tensor(&output_t, device, weights, &path)?
        };
        let norm = vector(src, names.norm, cfg.n_embd, device)?;
        let (qd, kvd) = (cfg.n_head * cfg.head_dim, cfg.n_head_kv * cfg.head_dim);
        let mut blocks = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let weight = |p: Part| format!("{}.weight", (names.block)(i, p));
            let bias = |p: Part, n: usize| {
                vector(src, &format!("{}.bias", (names.block)(i, p)), n, device)
            };
            let linear = |p: Part, shape: [usize; 2]| -> Result<Linear> {
                let t = src.tensor(&weight(p))?;
                check_dims(&path, &t, &shape)?;
                let linear = Linear::from_tensor(&t, device, weights, &path);
                drop(t);
                // The file's bytes and any converted copy are free now, but glibc keeps the pages of
                // freed blocks below its mmap threshold (which rises to the largest block freed) and
                // the next matrices rarely fit in them: without this a Qwen 1.5B Q4_K_M load ended
                // 610 MB above its weights (1,994 MB peak for 1,285 MB of weights and cache).
                crate::memory::release_freed_memory();
                linear
            };
            let qkv_bias = if cfg.arch.has_qkv_bias() {
                Some([bias(Part::Q, qd)?, bias(Part::K, kvd)?, bias(Part::V, kvd)?])
            } else {
                None
            };
            blocks.push(Block {
                attn_norm: vector(src, &weight(Part::AttnNorm), cfg.n_embd, device)?,
                wq: linear(Part::Q, [qd, cfg.n_embd])?,
                wk: linear(Part::K, [kvd, cfg.n_embd])?,
                wv: linear(Part::V, [kvd, cfg.n_embd])?,
                qkv_bias,
                wo: linear(Part::O, [cfg.n_embd, qd])?,
                ffn_norm: vector(src, &weight(Part::FfnNorm), cfg.n_embd, device)?,
                w_gate: linear(Part::Gate, [cfg.n_ff, cfg.n_embd])?,
                w_up: linear(Part::Up, [cfg.n_ff, cfg.n_embd])?,
                w_down: linear(Part::Down, [cfg.n_embd, cfg.n_ff])?,
            });
            progress((i + 1) as f32 / cfg.n_layer as f32);
        }
        let cpu = if device.is_cpu() {
            Some(cpu::CpuModel::new(&embed, &blocks, &norm, &output)?)
        } else {
            None
        };
        let pool = Pool::new(crate::pool::default_threads())
            .map(Arc::new)
            .map_err(|e| EngineError::Compute(e.to_string()))?;
        Ok(Self {
            cfg,
            device: device.clone(),
            embed,
            blocks,
            norm,
            output,
            cpu,
            pool,
            tensor_path: false,
            kv_type: KvType::F16,
        })
    }

    /// Uses `threads` compute threads for the CPU forward pass.
    pub fn set_threads(&mut self, threads: usize) -> Result<()> {
        if threads.max(1) != self.pool.threads() {
            self.pool = Pool::new(threads)
                .map(Arc::new)
                .map_err(|e| EngineError::Compute(e.to_string()))?;
        }
        Ok(())
    }

    /// Runs on `other`'s compute threads: two models used in turn on one thread (a draft model and its
    /// model) need one set of threads, not two contending for the same cores.
    pub fn share_threads(&mut self, other: &Llama) {
        self.pool = other.pool.clone();
    }

    /// Forces the tensor forward pass on the CPU too (slower; for checking the fused path).
    #[cfg(test)]
    pub fn use_tensor_path(&mut self, yes: bool) {
        self.tensor_path = yes;
    }

    /// Makes `new_cache` store keys and values as `ty`. q8_0 needs the CPU (the GPU path keeps an f16
    /// cache in candle tensors) and heads of whole blocks of 32 values.
    pub fn set_kv_cache_type(&mut self, ty: KvType) -> Result<()> {
        let refuse = |detail: String| {
            Err(EngineError::KvCacheType {
                name: ty.name(),
                detail,
            })
        };
        if ty != KvType::F16 && !self.device.is_cpu() {
            return refuse(format!(
                "it is only implemented for the CPU, not {:?}",
                self.device
            ));
        }
        if !ty.fits(self.cfg.head_dim) {
            return refuse(format!(
                "the model's heads of {} values are not whole blocks of 32",
                self.cfg.head_dim
            ));
        }
        self.kv_type = ty;
        Ok(())
    }

    /// A cache for `capacity` positions (at most the trained context length), of the type
    /// `set_kv_cache_type` chose.
    pub fn new_cache(&self, capacity: usize) -> Result<KvCache> {
        KvCache::new(&self.cfg, capacity, &self.device, self.kv_type)
    }

    /// The bytes a cache from [`new_cache`](Self::new_cache) takes once all its positions are written
    /// (keys and values of every layer).
    pub fn kv_cache_bytes(&self, capacity: usize) -> usize {
        let capacity = capacity.clamp(1, self.cfg.context_length.max(1));
        let values = self.cfg.n_head_kv * capacity * self.cfg.head_dim;
        2 * self.cfg.n_layer * self.kv_type.bytes(values)
    }

    /// Runs `tokens` at positions `cache.len()..`, appends their keys and values to the cache, and
    /// returns the logits as a plain buffer on the CPU, where sampling reads them: `vocab` values for
    /// `Logits::Last`, `seq` rows of `vocab` for `Logits::All`, `n` values for `Logits::Head(n)`.
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache, logits: Logits) -> Result<Vec<f32>> {
        self.forward_cancellable(tokens, cache, logits, &|| false)
    }

    /// `forward`, checking `cancelled` between layers; a cancelled call leaves the cache's positions as
    /// they were. On the CPU it also keeps where it stopped ([`KvCache::stopped`]), and a later call
    /// over the same tokens, or the first of them, goes on from there.
    pub fn forward_cancellable(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        logits: Logits,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Vec<f32>> {
        let cfg = &self.cfg;
        let (seq, pos) = (tokens.len(), cache.len);
        if seq == 0 {
            return Err(EngineError::EmptyPrompt);
        }
        if pos + seq > cache.capacity {
            return Err(EngineError::PromptTooLong {
                prompt_tokens: pos + seq,
                context: cache.capacity,
            });
        }
        if let Some(&id) = tokens.iter().find(|&&t| t as usize >= cfg.vocab_size) {
            return Err(EngineError::BadToken {
                id,
                vocab: cfg.vocab_size,
            });
        }
        if let (Some(cpu), false) = (&self.cpu, self.tensor_path) {
            return cpu.forward(&self.cfg, &self.pool, tokens, cache, logits, cancelled);
        }
        // The tensor path starts every pass from the first layer: whatever a stopped pass kept
        // would be out of date once this one writes its positions.
        cache.stopped = None;
        let (cos, sin) = (
            cache.cos.narrow(0, pos, seq)?,
            cache.sin.narrow(0, pos, seq)?,
        );
        let mask = causal_mask(seq, pos, &self.device)?;
        let mut x = self.embed.forward(tokens, cfg.n_embd)?;
        for (layer, block) in self.blocks.iter().enumerate() {
            if cancelled() {
                return Err(EngineError::Cancelled);
            }
            let h = rms_norm(&x, &block.attn_norm, cfg.rms_eps)?;
            let attn = self.attention(block, &h, layer, cache, &cos, &sin, mask.as_ref())?;
            x = (x + block.wo.forward(&attn)?)?;
            let h = rms_norm(&x, &block.ffn_norm, cfg.rms_eps)?;
            let act = swiglu(&block.w_gate.forward(&h)?, &block.w_up.forward(&h)?)?;
            let ff = block.w_down.forward(&act)?;
            x = (x + ff)?;
        }
        cache.len = pos + seq;
        let x = match logits {
            Logits::Last | Logits::Head(_) => x.narrow(0, seq - 1, 1)?,
            Logits::All => x,
        };
        let x = rms_norm(&x, &self.norm, cfg.rms_eps)?;
        let mut out = self.output.forward(&x)?.flatten_all()?.to_vec1::<f32>()?;
        if let Logits::Head(n) = logits {
            out.truncate(n);
        }
        Ok(out)
    }

    /// Grouped-query attention for one layer; query heads `g·group .. (g+1)·group` share KV head `g`,
    /// which the reshape to `[kv_heads, group·seq, head_dim]` expresses without copying keys.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        block: &Block,
        h: &Tensor,
        layer: usize,
        cache: &mut KvCache,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let cfg = &self.cfg;
        let (seq, pos) = (h.dim(0)?, cache.len);
        let (hd, nh, nkv) = (cfg.head_dim, cfg.n_head, cfg.n_head_kv);
        let group = nh / nkv;
        let project = |l: &Linear, i: usize| -> Result<Tensor> {
            let y = l.forward(h)?;
            Ok(match &block.qkv_bias {
                Some(b) => y.broadcast_add(&b[i])?,
                None => y,
            })
        };
        let q = project(&block.wq, 0)?
            .reshape((1, seq, nh, hd))?
            .transpose(1, 2)?
            .contiguous()?;
        let k = project(&block.wk, 1)?
            .reshape((1, seq, nkv, hd))?
            .transpose(1, 2)?
            .contiguous()?;
        let v = project(&block.wv, 2)?
            .reshape((seq, nkv, hd))?
            .transpose(0, 1)?
            .contiguous()?;
        let shape = cache.attn_shape();
        let total = pos + seq;
        if let LayerKv::Cpu(cache_kv) = &mut cache.layers[layer] {
            let half = hd / 2;
            let (cos_t, sin_t) = (
                &cache.cos_table[pos * half..(pos + seq) * half],
                &cache.sin_table[pos * half..(pos + seq) * half],
            );
            let (mut qv, mut kv, vv) = (flat(&q)?, flat(&k)?, flat(&v)?);
            let inter = cfg.rope_interleaved;
            rope(
                &mut qv,
                KvLayout::HeadMajor,
                nh,
                seq,
                hd,
                cos_t,
                sin_t,
                inter,
            );
            rope(
                &mut kv,
                KvLayout::HeadMajor,
                nkv,
                seq,
                hd,
                cos_t,
                sin_t,
                inter,
            );
            attention::store(cache_kv, &kv, &vv, KvLayout::HeadMajor, shape, pos, seq);
            let mut out = vec![0f32; seq * nh * hd];
            attention::attend(
                Exec::Rayon,
                &qv,
                KvLayout::HeadMajor,
                cache_kv,
                shape,
                pos,
                seq,
                &mut out,
            );
            return Ok(Tensor::from_vec(out, (seq, nh * hd), &self.device)?);
        }
        let (q, k) = if cfg.rope_interleaved {
            (
                candle_nn::rotary_emb::rope_i(&q, cos, sin)?,
                candle_nn::rotary_emb::rope_i(&k, cos, sin)?,
            )
        } else {
            (
                candle_nn::rotary_emb::rope(&q, cos, sin)?,
                candle_nn::rotary_emb::rope(&k, cos, sin)?,
            )
        };
        let LayerKv::Device { k: kc, v: vc } = &mut cache.layers[layer] else {
            return Err(EngineError::Compute(
                "a CPU cache with device tensors".into(),
            ));
        };
        kc.slice_set(&k.squeeze(0)?.to_dtype(kc.dtype())?, 1, pos)?;
        vc.slice_set(&v.to_dtype(vc.dtype())?, 1, pos)?;
        let keys = kc.narrow(1, 0, total)?.to_dtype(DType::F32)?;
        let values = vc.narrow(1, 0, total)?.to_dtype(DType::F32)?;
        let q = q.reshape((nkv, group * seq, hd))?;
        let scores = (q.matmul(&keys.t()?)? * (1.0 / (hd as f64).sqrt()))?;
        let scores = match mask {
            Some(m) => scores
                .reshape((nkv, group, seq, total))?
                .broadcast_add(m)?
                .reshape((nkv, group * seq, total))?,
            None => scores,
        };
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let y = probs.matmul(&values)?;
        Ok(y.reshape((nh, seq, hd))?
            .transpose(0, 1)?
            .reshape((seq, nh * hd))?)
    }
}

/// `[seq, pos + seq]` with `-inf` where key position `j` is after query position `pos + i`.
fn causal_mask(seq: usize, pos: usize, device: &Device) -> Result<Option<Tensor>> {
    if seq == 1 {
        return Ok(None);
    }
    let total = pos + seq;
    let mask: Vec<f32> = (0..seq)
        .flat_map(|i| (0..total).map(move |j| if j > pos + i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Ok(Some(Tensor::from_vec(mask, (seq, total), device)?))
}

fn check_dims(path: &Path, t: &TensorData, want: &[usize]) -> Result<()> {
    if t.dims != want {
        return Err(EngineError::BadTensor {
            path: path.to_path_buf(),
            name: t.name.clone(),
            detail: format!(
                "shape {:?} does not match the metadata, expected {want:?}",
                t.dims
            ),
        });
    }
    Ok(())
}

/// A 1-D f32 tensor (norm weights) of length `n`.
fn vector(src: &dyn TensorSource, name: &str, n: usize, device: &Device) -> Result<Tensor> {
    let t = src.tensor(name)?;
    let elems: usize = t.dims.iter().product();
    if elems != n {
        return Err(EngineError::BadTensor {
            path: src.path().to_path_buf(),
            name: name.to_string(),
            detail: format!("expected {n} values, found shape {:?}", t.dims),
        });
    }
    let m =
        QMatrix::new(t.dtype, 1, n, WeightBytes::copy_of(t.data.bytes())).map_err(|detail| {
            EngineError::BadTensor {
                path: src.path().to_path_buf(),
                name: name.to_string(),
                detail,
            }
        })?;
    let mut v = vec![0f32; n];
    m.dequantize_row(0, &mut v);
    Ok(Tensor::from_vec(v, n, device)?)
}

/// Keys and values of every layer for positions `0..len`, preallocated for `capacity` positions, plus
/// the rotary tables for the same positions.
pub struct KvCache {
    layers: Vec<LayerKv>,
    cos: Tensor,
    sin: Tensor,
    /// The rotary tables again as plain `[capacity][head_dim / 2]` buffers (CPU forward pass).
    cos_table: Vec<f32>,
    sin_table: Vec<f32>,
    len: usize,
    capacity: usize,
    /// The model's attention shape (for moving positions).
    n_head: usize,
    n_head_kv: usize,
    head_dim: usize,
    rope_interleaved: bool,
    /// A forward pass at positions `len..` that was stopped between two layers, kept so that the next
    /// pass over the same tokens (or a prefix of them) goes on from that layer: what a keystroke
    /// would otherwise throw away. Dropped by anything that changes the positions before `len` or
    /// writes past it, and by a pass over other tokens.
    pub(super) stopped: Option<Stopped>,
}

/// [`KvCache::stopped`]: the tokens of the pass, the layer it stopped before, and the hidden state
/// there (`tokens.len()` rows of the model's width); the keys and values of the layers before it
/// are in the cache at positions `len..len + tokens.len()`.
pub(crate) struct Stopped {
    pub(super) tokens: Vec<u32>,
    pub(super) layer: usize,
    pub(super) hidden: Vec<f32>,
}

impl KvCache {
    fn new(cfg: &ModelConfig, capacity: usize, device: &Device, ty: KvType) -> Result<Self> {
        let capacity = capacity.clamp(1, cfg.context_length.max(1));
        let shape = (cfg.n_head_kv, capacity, cfg.head_dim);
        if ty != KvType::F16 && !device.is_cpu() {
            // `Llama::set_kv_cache_type` refuses this with the reason.
            return Err(EngineError::Compute(format!(
                "a {} KV cache on {device:?}",
                ty.name()
            )));
        }
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for _ in 0..cfg.n_layer {
            layers.push(if device.is_cpu() {
                // Zeroed memory is mapped lazily, so only positions actually used become resident.
                LayerKv::Cpu(KvLayer::zeroed(ty, cfg.n_head_kv * capacity * cfg.head_dim))
            } else {
                LayerKv::Device {
                    k: Tensor::zeros(shape, DType::F16, device)?,
                    v: Tensor::zeros(shape, DType::F16, device)?,
                }
            });
        }
        let (cos_table, sin_table) = rope_tables(cfg, capacity);
        let half = cfg.head_dim / 2;
        Ok(Self {
            layers,
            cos: Tensor::from_slice(&cos_table, (capacity, half), device)?,
            sin: Tensor::from_slice(&sin_table, (capacity, half), device)?,
            cos_table,
            sin_table,
            len: 0,
            capacity,
            n_head: cfg.n_head,
            n_head_kv: cfg.n_head_kv,
            head_dim: cfg.head_dim,
            rope_interleaved: cfg.rope_interleaved,
            stopped: None,
        })
    }

    /// How many of `tokens` (to be run at positions `len..`) a stopped pass had begun with: a pass
    /// over that many of them goes on from where it stopped.
    pub fn stopped_prefix(&self, tokens: &[u32]) -> usize {
        self.stopped.as_ref().map_or(0, |s| {
            s.tokens
                .iter()
                .zip(tokens)
                .take_while(|(a, b)| a == b)
                .count()
        })
    }

    /// Whether a pass over `tokens` goes on from the stopped one: they are its tokens or the first of
    /// them.
    pub fn goes_on_with(&self, tokens: &[u32]) -> bool {
        !tokens.is_empty()
            && self
                .stopped
                .as_ref()
                .is_some_and(|s| s.tokens.starts_with(tokens))
    }

    /// The stopped pass over `tokens` ([`goes_on_with`](Self::goes_on_with)), if any, cut to them: the
    /// layer to go on from and the hidden state there. Whatever was kept is gone afterwards.
    pub(super) fn take_stopped(
        &mut self,
        tokens: &[u32],
        width: usize,
    ) -> Option<(usize, Vec<f32>)> {
        let goes_on = self.goes_on_with(tokens);
        let s = self.stopped.take()?;
        if !goes_on {
            return None;
        }
        let mut hidden = s.hidden;
        hidden.truncate(tokens.len() * width);
        Some((s.layer, hidden))
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len
    }

    /// The key of KV head `head` of `layer` at position `at` (f32, in the model's basis).
    #[cfg(test)]
    pub fn key(&self, layer: usize, head: usize, at: usize) -> Vec<f32> {
        match &self.layers[layer] {
            LayerKv::Cpu(kv) => attention::key(kv, self.attn_shape(), head, at),
            LayerKv::Device { k, .. } => flat(&k.get(head).unwrap().get(at).unwrap()).unwrap(),
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Forgets every position from `len` on.
    pub fn truncate(&mut self, len: usize) {
        if len < self.len {
            self.stopped = None;
        }
        self.len = self.len.min(len);
    }

    /// Whether [`move_runs`](Self::move_runs) works on this cache (not on a GPU).
    pub fn can_move(&self) -> bool {
        self.layers.iter().all(|l| matches!(l, LayerKv::Cpu(_)))
    }

    /// Moves what runs of positions hold to other positions, all read before any is written (so runs may
    /// overlap each other's old places), each key turned by the rotary embedding's angles for the distance
    /// moved, as if computed at its new position: exactly so in the first layer; later layers keep what
    /// attention to the old context made of them. The positions held (`len`) stay as they were: the
    /// caller says which are valid ([`set_len`](Self::set_len), [`truncate`](Self::truncate)). False,
    /// changing nothing, on a GPU or with a run outside the cache.
    pub fn move_runs(&mut self, moves: &[Move]) -> bool {
        let inside =
            |at: usize, len: usize| at.checked_add(len).is_some_and(|e| e <= self.capacity);
        if !self.can_move()
            || moves
                .iter()
                .any(|m| !inside(m.from, m.len) || !inside(m.to, m.len))
        {
            return false;
        }
        let moves: Vec<&Move> = moves.iter().filter(|m| m.from != m.to).collect();
        if !moves.is_empty() {
            self.stopped = None;
        }
        let (shape, half) = (self.attn_shape(), self.head_dim / 2);
        let (hd, interleaved) = (self.head_dim, self.rope_interleaved);
        // Turning by `d` positions uses the angles of position |d|, the sine negated to go back.
        let turns: Vec<(&[f32], Vec<f32>)> = moves
            .iter()
            .map(|m| {
                let d = m.to.abs_diff(m.from);
                let sin = self.sin_table[d * half..(d + 1) * half].iter();
                let sin = if m.to < m.from {
                    sin.map(|s| -s).collect()
                } else {
                    sin.copied().collect()
                };
                (&self.cos_table[d * half..(d + 1) * half], sin)
            })
            .collect();
        // Layers are independent: spread them over the cores (the model's threads wait meanwhile).
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let per_thread = self.layers.len().div_ceil(threads.max(1)).max(1);
        let move_layer = |layer: &mut LayerKv| {
            let LayerKv::Cpu(kv) = layer else {
                unreachable!("checked by can_move")
            };
            let mut runs: Vec<attention::Run> = moves
                .iter()
                .map(|m| attention::take(kv, shape, m.from, m.len))
                .collect();
            for (run, (cos, sin)) in runs.iter_mut().zip(&turns) {
                for key in run.keys.chunks_exact_mut(hd) {
                    turn(key, cos, sin, interleaved);
                }
            }
            for (m, run) in moves.iter().zip(&runs) {
                attention::put(kv, shape, m.to, run);
            }
        };
        std::thread::scope(|scope| {
            for layers in self.layers.chunks_mut(per_thread) {
                scope.spawn(|| layers.iter_mut().for_each(move_layer));
            }
        });
        true
    }

    /// Says that positions `0..len` hold valid keys and values (the caller's bookkeeping knows; used
    /// after [`move_runs`](Self::move_runs) filled positions past the ones computed). Panics past the
    /// capacity.
    pub fn set_len(&mut self, len: usize) {
        assert!(
            len <= self.capacity,
            "{len} positions in a cache of {}",
            self.capacity
        );
        if len != self.len {
            self.stopped = None;
        }
        self.len = len;
    }

    pub(super) fn attn_shape(&self) -> AttnShape {
        AttnShape {
            n_head: self.n_head,
            n_kv_head: self.n_head_kv,
            head_dim: self.head_dim,
            capacity: self.capacity,
        }
    }
}

/// Turns one head's key by the angles `cos`/`sin` (pairs as in [`rope`]). Plain products rather than
/// [`rope`]'s fused ones: a moved key is already rounded through the cache's type, and these vectorise.
fn turn(key: &mut [f32], cos: &[f32], sin: &[f32], interleaved: bool) {
    let half = key.len() / 2;
    if interleaved {
        for (pair, (c, s)) in key.chunks_exact_mut(2).zip(cos.iter().zip(sin)) {
            let (x0, x1) = (pair[0], pair[1]);
            pair[0] = x0 * c - x1 * s;
            pair[1] = x0 * s + x1 * c;
        }
    } else {
        let (lo, hi) = key.split_at_mut(half);
        for ((a, b), (c, s)) in lo.iter_mut().zip(hi).zip(cos.iter().zip(sin)) {
            let (x0, x1) = (*a, *b);
            *a = x0 * c - x1 * s;
            *b = x0 * s + x1 * c;
        }
    }
}

/// Positions `from..from + len` of a cache moved to `to..to + len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Move {
    pub from: usize,
    pub to: usize,
    pub len: usize,
}

/// One layer's keys and values, `[kv_heads][capacity][head_dim]`: on the CPU in the cache's type, on a
/// GPU as f16 tensors.
enum LayerKv {
    Cpu(KvLayer),
    Device { k: Tensor, v: Tensor },
}

fn flat(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_vec1::<f32>()?)
}

/// Rotary tables `[capacity, head_dim / 2]`, computed as llama.cpp does (the angle of pair `i` at position
/// `p` is `p · base^(-2i/d)`, obtained by repeated multiplication in f32) so greedy outputs agree with it.
fn rope_tables(cfg: &ModelConfig, capacity: usize) -> (Vec<f32>, Vec<f32>) {
    let half = cfg.head_dim / 2;
    let step = cfg.rope_theta.powf(-2.0 / cfg.head_dim as f32);
    let mut cos = Vec::with_capacity(capacity * half);
    let mut sin = Vec::with_capacity(capacity * half);
    for p in 0..capacity {
        let mut theta = p as f32;
        for _ in 0..half {
            cos.push(theta.cos());
            sin.push(theta.sin());
            theta *= step;
        }
    }
    (cos, sin)
}

/// Safetensors weights of a Hugging Face checkpoint: the headers read at open (and checked by the
/// `safetensors` crate), each tensor read into memory when asked for, as for GGUF files (see `gguf`).
pub struct SafetensorsSource {
    path: std::path::PathBuf,
    files: Vec<WeightFile>,
    tensors: std::collections::HashMap<String, SafetensorsEntry>,
}

struct SafetensorsEntry {
    file: usize,
    dtype: GgmlDType,
    dims: Vec<usize>,
    offset: u64,
    len: usize,
}

/// The `safetensors` crate's own cap on the JSON header.
const MAX_SAFETENSORS_HEADER: u64 = 100_000_000;

impl SafetensorsSource {
    pub fn open(dir: &Path, paths: &[std::path::PathBuf]) -> Result<Self> {
        let mut files = Vec::with_capacity(paths.len());
        let mut tensors = std::collections::HashMap::new();
        for (index, path) in paths.iter().enumerate() {
            let corrupt = |detail: String| EngineError::Corrupt {
                path: path.clone(),
                detail,
            };
            let file = WeightFile::open(path)?;
            if file.len() < 8 {
                return Err(corrupt(
                    "not a safetensors file: shorter than its header".into(),
                ));
            }
            let prefix = file.read("the header length", 0, 8)?;
            let header_len = u64::from_le_bytes(prefix.bytes().try_into().expect("8 bytes"));
            if header_len > MAX_SAFETENSORS_HEADER.min(file.len() - 8) {
                return Err(corrupt(format!(
                    "not a safetensors file: a header of {header_len} bytes in a file of {}",
                    file.len()
                )));
            }
            let header = file.read("the header", 8, header_len as usize)?;
            let meta: safetensors::tensor::Metadata = serde_json::from_slice(header.bytes())
                .map_err(|e| corrupt(format!("not a safetensors file: {e}")))?;
            let base = 8 + header_len;
            if base.checked_add(meta.data_len() as u64) != Some(file.len()) {
                return Err(corrupt(format!(
                    "the header describes {} bytes of tensor data but the file has {} after it (an incomplete download?)",
                    meta.data_len(),
                    file.len() - base
                )));
            }
            for (name, info) in meta.tensors() {
                let dtype = match info.dtype {
                    safetensors::Dtype::F32 => GgmlDType::F32,
                    safetensors::Dtype::F16 => GgmlDType::F16,
                    safetensors::Dtype::BF16 => GgmlDType::BF16,
                    other => {
                        return Err(corrupt(format!(
                            "tensor {name}: unsupported dtype {other:?}"
                        )))
                    }
                };
                // The crate checked that the ranges tile the data section, which fits in the file.
                let (start, end) = info.data_offsets;
                let entry = SafetensorsEntry {
                    file: index,
                    dtype,
                    dims: info.shape.clone(),
                    offset: base + start as u64,
                    len: end - start,
                };
                if tensors.insert(name.clone(), entry).is_some() {
                    return Err(corrupt(format!(
                        "tensor {name} is also in another file of {}",
                        dir.display()
                    )));
                }
            }
            files.push(file);
        }
        Ok(Self {
            path: dir.to_path_buf(),
            files,
            tensors,
        })
    }
}

impl TensorSource for SafetensorsSource {
    fn path(&self) -> &Path {
        &self.path
    }
    fn tensor(&self, name: &str) -> Result<TensorData> {
        let e = self
            .tensors
            .get(name)
            .ok_or_else(|| EngineError::BadTensor {
                path: self.path.clone(),
                name: name.to_string(),
                detail: "missing from the checkpoint".into(),
            })?;
        Ok(TensorData {
            name: name.to_string(),
            dtype: e.dtype,
            dims: e.dims.clone(),
            data: self.files[e.file].read(&format!("tensor {name}"), e.offset, e.len)?,
        })
    }
    fn dims(&self, name: &str) -> Option<&[usize]> {
        Some(&self.tensors.get(name)?.dims)
    }
}
