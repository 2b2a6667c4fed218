//! The llama forward pass fused for the CPU: the same arithmetic as the tensor path (the same kernels, in
//! the same order), on plain buffers allocated once per call, with every parallel step on the engine's
//! spinning thread pool. A decode step is a few hundred short parallel jobs, so per-operation overhead
//! (tensor allocation, thread wake-ups) would otherwise cost as much as the arithmetic.

use std::sync::Arc;

use candle_core::Tensor;

use super::{
    rms_norm_rows, rope, Block, Embedding, KvCache, LayerKv, Linear, Logits, ModelConfig, Stopped,
};
use crate::error::{EngineError, Result};
use crate::kernels::activation;
use crate::kernels::attention::{self, Layout};
use crate::kernels::{Exec, QMatrix};
use crate::pool::Pool;

pub struct CpuModel {
    embed: Arc<QMatrix>,
    blocks: Vec<CpuBlock>,
    norm: Vec<f32>,
    output: Arc<QMatrix>,
}

struct CpuBlock {
    attn_norm: Vec<f32>,
    wq: Arc<QMatrix>,
    wk: Arc<QMatrix>,
    wv: Arc<QMatrix>,
    /// q/k/v biases (qwen2).
    qkv_bias: Option<[Vec<f32>; 3]>,
    wo: Arc<QMatrix>,
    ffn_norm: Vec<f32>,
    gate: Arc<QMatrix>,
    up: Arc<QMatrix>,
    down: Arc<QMatrix>,
}

fn matrix(l: &Linear) -> Result<Arc<QMatrix>> {
    match l {
        Linear::Cpu(m) => Ok(m.clone()),
        Linear::Device(_) => Err(EngineError::Compute(
            "CPU forward pass over GPU weights".into(),
        )),
    }
}

fn values(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_vec1::<f32>()?)
}

impl CpuModel {
    pub fn new(
        embed: &Embedding,
        blocks: &[Block],
        norm: &Tensor,
        output: &Linear,
    ) -> Result<Self> {
        let Embedding::Cpu(embed) = embed else {
            return Err(EngineError::Compute(
                "CPU forward pass over GPU embeddings".into(),
            ));
        };
        let blocks = blocks
            .iter()
            .map(|b| {
                Ok(CpuBlock {
                    attn_norm: values(&b.attn_norm)?,
                    wq: matrix(&b.wq)?,
                    wk: matrix(&b.wk)?,
                    wv: matrix(&b.wv)?,
                    qkv_bias: match &b.qkv_bias {
                        Some([q, k, v]) => Some([values(q)?, values(k)?, values(v)?]),
                        None => None,
                    },
                    wo: matrix(&b.wo)?,
                    ffn_norm: values(&b.ffn_norm)?,
                    gate: matrix(&b.w_gate)?,
                    up: matrix(&b.w_up)?,
                    down: matrix(&b.w_down)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            embed: embed.clone(),
            blocks,
            norm: values(norm)?,
            output: matrix(output)?,
        })
    }

    /// The token embeddings of `tokens` (`tokens.len()` rows of `d`).
    fn embed(&self, tokens: &[u32], d: usize) -> Vec<f32> {
        let mut x = vec![0f32; tokens.len() * d];
        for (row, &t) in x.chunks_exact_mut(d).zip(tokens) {
            self.embed.dequantize_row(t as usize, row);
        }
        x
    }

    /// Logits for the last position (`[vocab]`) or every position (`[seq × vocab]`), from the layer
    /// where a stopped pass over these tokens stopped, if the cache kept one ([`KvCache::stopped`]).
    pub fn forward(
        &self,
        cfg: &ModelConfig,
        pool: &Pool,
        tokens: &[u32],
        cache: &mut KvCache,
        logits: Logits,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Vec<f32>> {
        let exec = Exec::Pool(pool);
        let (seq, pos) = (tokens.len(), cache.len);
        let (d, hd, nh, nkv) = (cfg.n_embd, cfg.head_dim, cfg.n_head, cfg.n_head_kv);
        let shape = cache.attn_shape();
        let (first, mut x) = match cache.take_stopped(tokens, d) {
            Some(stopped) => stopped,
            None => (0, self.embed(tokens, d)),
        };
        let mut h = vec![0f32; seq * d];
        let mut q = vec![0f32; seq * nh * hd];
        let mut k = vec![0f32; seq * nkv * hd];
        let mut v = vec![0f32; seq * nkv * hd];
        let mut att = vec![0f32; seq * nh * hd];
        let mut tmp = vec![0f32; seq * d];
        let mut gate = vec![0f32; seq * cfg.n_ff];
        let mut up = vec![0f32; seq * cfg.n_ff];
        let half = hd / 2;
        let cos = &cache.cos_table[pos * half..(pos + seq) * half];
        let sin = &cache.sin_table[pos * half..(pos + seq) * half];
        for (layer, b) in self.blocks.iter().enumerate().skip(first) {
            if cancelled() {
                if layer > 0 {
                    cache.stopped = Some(Stopped {
                        tokens: tokens.to_vec(),
                        layer,
                        hidden: x,
                    });
                }
                return Err(EngineError::Cancelled);
            }
            norm_rows(exec, &x, &b.attn_norm, cfg.rms_eps, &mut h);
            b.wq.matmul_on(exec, &h, seq, &mut q);
            b.wk.matmul_on(exec, &h, seq, &mut k);
            b.wv.matmul_on(exec, &h, seq, &mut v);
            if let Some([bq, bk, bv]) = &b.qkv_bias {
                add_rows(&mut q, bq);
                add_rows(&mut k, bk);
                add_rows(&mut v, bv);
            }
            for (x, heads) in [(&mut q, nh), (&mut k, nkv)] {
                exec.for_rows_mut(x, heads * hd, &|first, x| {
                    let angles = first * half..;
                    let (cos, sin) = (&cos[angles.clone()], &sin[angles]);
                    let rows = x.len() / (heads * hd);
                    let interleaved = cfg.rope_interleaved;
                    rope(
                        x,
                        Layout::TokenMajor,
                        heads,
                        rows,
                        hd,
                        cos,
                        sin,
                        interleaved,
                    );
                });
            }
            let LayerKv::Cpu(kv) = &mut cache.layers[layer] else {
                return Err(EngineError::Compute(
                    "CPU forward pass over a GPU cache".into(),
                ));
            };
            attention::store(kv, &k, &v, Layout::TokenMajor, shape, pos, seq);
            attention::attend(exec, &q, Layout::TokenMajor, kv, shape, pos, seq, &mut att);
            b.wo.matmul_on(exec, &att, seq, &mut tmp);
            add(&mut x, &tmp);
            norm_rows(exec, &x, &b.ffn_norm, cfg.rms_eps, &mut h);
            b.gate.matmul_on(exec, &h, seq, &mut gate);
            b.up.matmul_on(exec, &h, seq, &mut up);
            let ff = cfg.n_ff;
            exec.for_rows_mut(&mut gate, ff, &|first, g| {
                activation::swiglu_rows(g, &up[first * ff..first * ff + g.len()], ff);
            });
            b.down.matmul_on(exec, &gate, seq, &mut tmp);
            add(&mut x, &tmp);
        }
        cache.len = pos + seq;
        let (rows, head) = match logits {
            Logits::Last => (&x[(seq - 1) * d..], cfg.vocab_size),
            Logits::All => (&x[..], cfg.vocab_size),
            Logits::Head(n) => (&x[(seq - 1) * d..], n.min(cfg.vocab_size)),
        };
        let m = rows.len() / d;
        let mut normed = vec![0f32; rows.len()];
        rms_norm_rows(rows, &self.norm, cfg.rms_eps, &mut normed);
        let mut out = vec![0f32; m * cfg.vocab_size];
        self.output.matmul_head_on(exec, &normed, m, head, &mut out);
        out.truncate(m * head);
        Ok(out)
    }
}

/// `rms_norm_rows` of `x` into `out`, its rows spread over `exec`'s threads.
fn norm_rows(exec: Exec, x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let n = w.len();
    exec.for_rows_mut(out, n, &|first, out| {
        rms_norm_rows(&x[first * n..first * n + out.len()], w, eps, out);
    });
}

/// Adds `bias` to every row of `x` (rows of `bias.len()` values).
fn add_rows(x: &mut [f32], bias: &[f32]) {
    for row in x.chunks_exact_mut(bias.len()) {
        add(row, bias);
    }
}

fn add(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}
