//! Causal grouped-query attention over an f16 KV cache, computed one query row at a time with an online
//! softmax (no score matrix is materialised, so memory does not grow with the context).
//!
//! Numerics follow llama.cpp's CPU flash-attention kernels, whose greedy outputs our tests compare with:
//! keys and values are stored as f16; for short query batches (decode) the query is rounded to f16 and
//! the weighted sum of values is accumulated in f16; for batches of `TILE_ROWS` or more queries (prompt
//! processing) queries and accumulators stay f32. Scores and the softmax are f32 throughout.

use half::f16;

use super::{size, Exec, SharedOut};

/// Query batches at least this long use the f32 ("tiled") numerics.
pub const TILE_ROWS: usize = 64;

/// Query rows of one head processed together in prompt processing.
const BLOCK_ROWS: usize = 32;

#[derive(Debug, Clone, Copy)]
pub struct AttnShape {
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    /// Positions per KV head in the cache (`k[h][p][d]` has stride `capacity * head_dim` per head).
    pub capacity: usize,
}

/// How a batch of per-head vectors is laid out in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `[heads][seq][head_dim]` (the tensor path, after its transposes).
    HeadMajor,
    /// `[seq][heads][head_dim]` (straight out of a matrix product).
    TokenMajor,
}

impl Layout {
    fn offset(self, head: usize, heads: usize, i: usize, seq: usize, hd: usize) -> usize {
        match self {
            Layout::HeadMajor => (head * seq + i) * hd,
            Layout::TokenMajor => (i * heads + head) * hd,
        }
    }
}

impl AttnShape {
    /// Panics unless the shape is usable (heads and head size non-zero, query heads a multiple of KV
    /// heads), positions `pos..pos + seq` fit the cache, and the caches hold
    /// `n_kv_head × capacity × head_dim` values: the one check before the kernels index the caches
    /// without checks.
    fn check(&self, k_cache: &[f16], v_cache: &[f16], pos: usize, seq: usize) {
        assert!(
            self.head_dim > 0 && self.n_kv_head > 0 && self.n_head.is_multiple_of(self.n_kv_head),
            "unusable attention shape {self:?}"
        );
        assert!(
            pos.checked_add(seq).is_some_and(|end| end <= self.capacity),
            "positions {pos}..+{seq} outside a cache of {}",
            self.capacity
        );
        let cache = size(
            size(self.n_kv_head, self.capacity, "KV cache"),
            self.head_dim,
            "KV cache",
        );
        assert!(
            k_cache.len() >= cache && v_cache.len() >= cache,
            "KV caches of {} and {} values for {self:?}",
            k_cache.len(),
            v_cache.len()
        );
    }
}

/// Writes `seq` new keys and values (f32, in `layout`) at positions `pos..`.
#[allow(clippy::too_many_arguments)]
pub fn store(
    k_cache: &mut [f16],
    v_cache: &mut [f16],
    k: &[f32],
    v: &[f32],
    layout: Layout,
    s: AttnShape,
    pos: usize,
    seq: usize,
) {
    s.check(k_cache, v_cache, pos, seq);
    let hd = s.head_dim;
    for h in 0..s.n_kv_head {
        for i in 0..seq {
            let src = layout.offset(h, s.n_kv_head, i, seq, hd);
            let dst = (h * s.capacity + pos + i) * hd;
            for d in 0..hd {
                k_cache[dst + d] = f16::from_f32(k[src + d]);
                v_cache[dst + d] = f16::from_f32(v[src + d]);
            }
        }
    }
}

/// `out[i][h*hd..]` = attention of query `(h, i)` (at position `pos + i`) over positions `0..=pos+i`.
/// `q` is in `layout`, `out` is `[seq][n_head * head_dim]`. Rows are spread over `exec`'s threads.
/// Panics unless the shape fits the caches (`AttnShape::check`) and `q` and `out` hold
/// `seq × n_head × head_dim` values.
#[allow(clippy::too_many_arguments)]
pub fn attend(
    exec: Exec,
    q: &[f32],
    layout: Layout,
    k_cache: &[f16],
    v_cache: &[f16],
    s: AttnShape,
    pos: usize,
    seq: usize,
    out: &mut [f32],
) {
    s.check(k_cache, v_cache, pos, seq);
    let hd = s.head_dim;
    let group = s.n_head / s.n_kv_head;
    let scale = 1.0 / (hd as f32).sqrt();
    let low_precision = seq < TILE_ROWS;
    let rows = size(s.n_head, seq, "attention rows");
    let values = size(rows, hd, "attention");
    assert!(
        out.len() >= values && q.len() >= values,
        "attention: {} queries and {} outputs for {values} values",
        q.len(),
        out.len()
    );
    let out = SharedOut::new(out);
    #[cfg(target_arch = "x86_64")]
    if !low_precision && simd::fits(hd) && super::cpu::has_avx2() {
        // Blocks of query rows of one head: keys and values converted to f32 once per block.
        let blocks = seq.div_ceil(BLOCK_ROWS);
        exec.for_each(s.n_head * blocks, &|item| {
            let (h, blk) = (item / blocks, item % blocks);
            let rows = blk * BLOCK_ROWS..((blk + 1) * BLOCK_ROWS).min(seq);
            // SAFETY: the CPU has AVX2, FMA and F16C (`has_avx2`), the shape was checked above, and
            // each item writes the outputs of its own (head, rows).
            unsafe {
                simd::attend_block(
                    q, layout, k_cache, v_cache, s, pos, seq, h, rows, scale, out,
                )
            }
        });
        return;
    }
    let row = |r: usize| {
        let (h, i) = (r / seq, r % seq);
        let kvh = h / group;
        let base = kvh * s.capacity * hd;
        let n = pos + i + 1;
        let qo = layout.offset(h, s.n_head, i, seq, hd);
        // SAFETY: every (h, i) writes its own head_dim values of the output.
        let dst = unsafe { out.slice(i * s.n_head * hd + h * hd, hd) };
        attend_row(
            &q[qo..qo + hd],
            &k_cache[base..base + n * hd],
            &v_cache[base..base + n * hd],
            hd,
            scale,
            low_precision,
            dst,
        );
    };
    if (pos + seq) * rows > 4096 {
        exec.for_each(rows, &row);
    } else {
        (0..rows).for_each(row);
    }
}

/// One query row against `n = keys.len() / hd` cached positions.
fn attend_row(
    query: &[f32],
    keys: &[f16],
    values: &[f16],
    hd: usize,
    scale: f32,
    low_precision: bool,
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    {
        if simd::fits(hd) && super::cpu::has_avx2() {
            // SAFETY: the CPU has AVX2, FMA and F16C (`has_avx2`), all `attend_row` needs.
            return unsafe { simd::attend_row(query, keys, values, hd, scale, low_precision, out) };
        }
    }
    attend_row_scalar(query, keys, values, hd, scale, low_precision, out)
}

fn attend_row_scalar(
    query: &[f32],
    keys: &[f16],
    values: &[f16],
    hd: usize,
    scale: f32,
    low_precision: bool,
    out: &mut [f32],
) {
    let round = |x: f32| {
        if low_precision {
            f16::from_f32(x).to_f32()
        } else {
            x
        }
    };
    let q: Vec<f32> = query.iter().map(|&x| round(x)).collect();
    let mut m = f32::NEG_INFINITY;
    let mut sum = 0f32;
    let mut acc = vec![0f32; hd];
    for (kr, vr) in keys.chunks_exact(hd).zip(values.chunks_exact(hd)) {
        let score: f32 = kr.iter().zip(&q).map(|(a, b)| a.to_f32() * b).sum::<f32>() * scale;
        let (mut ms, mut vs) = (1.0f32, 1.0f32);
        if score > m {
            let old = m;
            m = score;
            ms = (old - m).exp();
            acc.iter_mut().for_each(|a| *a = round(*a * ms));
        } else {
            vs = (score - m).exp();
        }
        for (a, x) in acc.iter_mut().zip(vr) {
            *a = round(*a + x.to_f32() * vs);
        }
        sum = sum * ms + vs;
    }
    let inv = if sum == 0.0 { 0.0 } else { 1.0 / sum };
    for (o, a) in out.iter_mut().zip(&acc) {
        *o = a * inv;
    }
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;

    use half::f16;

    use super::super::activation::expf8;
    use super::super::float::x86::hsum;
    use super::super::SharedOut;

    /// Whether heads of `hd` values suit the vector code (whole vectors of 8, at most 32 of them).
    pub fn fits(hd: usize) -> bool {
        hd > 0 && hd.is_multiple_of(8) && hd <= 256
    }

    /// 8 f16 as f32.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn load16(v: &[f16; 8]) -> __m256 {
        // SAFETY: 8 f16 are 16 bytes, one unaligned 128-bit load.
        _mm256_cvtph_ps(unsafe { _mm_loadu_si128(v.as_ptr().cast()) })
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn load(v: &[f32; 8]) -> __m256 {
        // SAFETY: 8 f32, one unaligned 256-bit load.
        unsafe { _mm256_loadu_ps(v.as_ptr()) }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn store(dst: &mut [f32; 8], v: __m256) {
        // SAFETY: 8 f32, one unaligned 256-bit store.
        unsafe { _mm256_storeu_ps(dst.as_mut_ptr(), v) }
    }

    /// Rounds 8 lanes to f16 precision and back.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn round16(x: __m256) -> __m256 {
        _mm256_cvtph_ps(_mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT))
    }

    /// `k · q` summed in the order of llama.cpp's 512-bit f16 dot product: four 16-lane accumulators over
    /// chunks of 64, folded pairwise, then a tree reduction; the remainder added in f64. Bit-identical
    /// results keep greedy outputs comparable with llama.cpp (an 8-bit activation quantization
    /// downstream turns any last-bit difference into a different integer now and then).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn dot_like_ggml(k: &[[f16; 8]], q: &[__m256]) -> f32 {
        let chunks = q.len() / 8;
        let mut acc = [_mm256_setzero_ps(); 8]; // accumulator j, half h at 2j + h
        for (kc, qc) in k.chunks_exact(8).zip(q.chunks_exact(8)).take(chunks) {
            for ((slot, kl), ql) in acc.iter_mut().zip(kc).zip(qc) {
                *slot = _mm256_fmadd_ps(load16(kl), *ql, *slot);
            }
        }
        // x0 = acc0 + acc2, x1 = acc1 + acc3, x0 += x1 (16 lanes as two halves)
        let x0 = [_mm256_add_ps(acc[0], acc[4]), _mm256_add_ps(acc[1], acc[5])];
        let x1 = [_mm256_add_ps(acc[2], acc[6]), _mm256_add_ps(acc[3], acc[7])];
        let x = [_mm256_add_ps(x0[0], x1[0]), _mm256_add_ps(x0[1], x1[1])];
        let t3 = _mm256_add_ps(x[1], x[0]);
        let t6 = _mm_add_ps(_mm256_extractf128_ps(t3, 1), _mm256_castps256_ps128(t3));
        let t8 = _mm_add_ps(t6, _mm_shuffle_ps(t6, t6, 0b01_00_11_10));
        let mut total = (_mm_cvtss_f32(t8) + _mm_cvtss_f32(_mm_shuffle_ps(t8, t8, 1))) as f64;
        let mut qv = [0f32; 8];
        for (kl, ql) in k.iter().zip(q).skip(chunks * 8) {
            store(&mut qv, *ql);
            for (ke, qe) in kl.iter().zip(&qv) {
                total += (ke.to_f32() * qe) as f64;
            }
        }
        total as f32
    }

    /// Prompt attention for query rows `rows` of head `h`, flash-attention style: keys and values are
    /// taken 64 positions at a time, converted once to f32 (keys transposed to `[head_dim][64]`, so eight
    /// scores come from one multiply-add per dimension), and every row keeps a running maximum, sum and
    /// output, rescaled when the maximum grows. The block stays in L1 while all rows use it. Panics
    /// unless `fits(head_dim)`; the caller checked the shape against the caches (`AttnShape::check`).
    ///
    /// # Safety
    /// No other task writes the outputs of rows `rows` of head `h` at the same time.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn attend_block(
        q: &[f32],
        layout: super::Layout,
        k_cache: &[f16],
        v_cache: &[f16],
        s: super::AttnShape,
        pos: usize,
        seq: usize,
        h: usize,
        rows: std::ops::Range<usize>,
        scale: f32,
        out: SharedOut,
    ) {
        const KB: usize = 64;
        let hd = s.head_dim;
        assert!(fits(hd), "head size {hd}");
        let lanes = hd / 8;
        let kvh = h / (s.n_head / s.n_kv_head);
        let n_rows = rows.len();
        // This head's cached positions up to the last row's: the only cache reads below.
        let keys = pos + rows.end;
        let base = kvh * s.capacity * hd;
        let (k_head, _) = k_cache[base..base + keys * hd].as_chunks::<8>();
        let (v_head, _) = v_cache[base..base + keys * hd].as_chunks::<8>();
        let mut kt = vec![[0f32; KB]; hd];
        let mut vb = vec![[0f32; 8]; KB * lanes];
        let mut o = vec![[0f32; 8]; n_rows * lanes];
        let mut m = vec![f32::NEG_INFINITY; n_rows];
        let mut l = vec![0f32; n_rows];
        let mut sc = [[0f32; 8]; KB / 8];
        for k0 in (0..keys).step_by(KB) {
            let kn = KB.min(keys - k0);
            let k_block = k_head[k0 * lanes..(k0 + kn) * lanes].chunks_exact(lanes);
            let v_block = v_head[k0 * lanes..(k0 + kn) * lanes].chunks_exact(lanes);
            for (p, (k_pos, v_pos)) in k_block.zip(v_block).enumerate() {
                for (c, (k8, v8)) in k_pos.iter().zip(v_pos).enumerate() {
                    let mut lanes8 = [0f32; 8];
                    store(&mut lanes8, load16(k8));
                    for (e, v) in lanes8.iter().enumerate() {
                        kt[c * 8 + e][p] = *v;
                    }
                    store(&mut vb[p * lanes + c], load16(v8));
                }
            }
            for (r, i) in rows.clone().enumerate() {
                let n = pos + i + 1;
                if k0 >= n {
                    continue;
                }
                let kv = kn.min(n - k0);
                let qo = layout.offset(h, s.n_head, i, seq, hd);
                let mut acc = [_mm256_setzero_ps(); KB / 8];
                for (kt_d, qd) in kt.iter().zip(&q[qo..qo + hd]) {
                    let qd = _mm256_set1_ps(*qd);
                    for (a, k8) in acc.iter_mut().zip(kt_d.as_chunks::<8>().0) {
                        *a = _mm256_fmadd_ps(qd, load(k8), *a);
                    }
                }
                let sv = _mm256_set1_ps(scale);
                for (c, a) in sc.iter_mut().zip(&acc) {
                    store(c, _mm256_mul_ps(*a, sv));
                }
                let sc_flat = sc.as_flattened_mut();
                let block_max = sc_flat[..kv]
                    .iter()
                    .fold(f32::NEG_INFINITY, |x, y| x.max(*y));
                let m_new = m[r].max(block_max);
                let alpha = (m[r] - m_new).exp();
                for v in sc_flat[kv..].iter_mut() {
                    *v = f32::NEG_INFINITY;
                }
                let mv = _mm256_set1_ps(m_new);
                let mut total = _mm256_setzero_ps();
                for c in sc.iter_mut().take(kv.div_ceil(8)) {
                    let e = expf8(_mm256_sub_ps(load(c), mv));
                    store(c, e);
                    total = _mm256_add_ps(total, e);
                }
                l[r] = l[r] * alpha + hsum(total);
                m[r] = m_new;
                let orow = &mut o[r * lanes..(r + 1) * lanes];
                let av = _mm256_set1_ps(alpha);
                let mut oacc = [_mm256_setzero_ps(); 32];
                for (a, o8) in oacc.iter_mut().zip(orow.iter()) {
                    *a = _mm256_mul_ps(load(o8), av);
                }
                for (w, v_pos) in sc.as_flattened()[..kv].iter().zip(vb.chunks_exact(lanes)) {
                    let wv = _mm256_set1_ps(*w);
                    for (a, v8) in oacc.iter_mut().zip(v_pos) {
                        *a = _mm256_fmadd_ps(load(v8), wv, *a);
                    }
                }
                for (o8, a) in orow.iter_mut().zip(&oacc) {
                    store(o8, *a);
                }
            }
        }
        for ((r, i), o_row) in rows.enumerate().zip(o.chunks_exact(lanes)) {
            let inv = _mm256_set1_ps(if l[r] == 0.0 { 0.0 } else { 1.0 / l[r] });
            // SAFETY: row i of head h is this call's alone (our caller's promise); `slice` checks the
            // range against the output.
            let dst = unsafe { out.slice(i * s.n_head * hd + h * hd, hd) };
            for (d8, o8) in dst.as_chunks_mut::<8>().0.iter_mut().zip(o_row) {
                store(d8, _mm256_mul_ps(load(o8), inv));
            }
        }
    }

    /// One query row against `keys.len() / hd` cached positions (see `attend_row_scalar`). Panics
    /// unless `fits(hd)`, the query and the output hold `hd` values and there are as many values as
    /// keys.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub fn attend_row(
        query: &[f32],
        keys: &[f16],
        values: &[f16],
        hd: usize,
        scale: f32,
        low_precision: bool,
        out: &mut [f32],
    ) {
        assert!(fits(hd) && query.len() == hd && out.len() == hd);
        assert_eq!(keys.len(), values.len());
        let lanes = hd / 8;
        let mut q = [_mm256_setzero_ps(); 32];
        let mut acc = [_mm256_setzero_ps(); 32];
        for (qv, v) in q.iter_mut().zip(query.as_chunks::<8>().0) {
            let v = load(v);
            *qv = if low_precision { round16(v) } else { v };
        }
        let mut m = f32::NEG_INFINITY;
        let mut sum = 0f32;
        let (k8, _) = keys.as_chunks::<8>();
        let (v8, _) = values.as_chunks::<8>();
        for (kp, vp) in k8.chunks_exact(lanes).zip(v8.chunks_exact(lanes)) {
            let score = if low_precision {
                dot_like_ggml(kp, &q[..lanes])
            } else {
                let mut dot = _mm256_setzero_ps();
                for (qv, k) in q.iter().zip(kp) {
                    dot = _mm256_fmadd_ps(load16(k), *qv, dot);
                }
                hsum(dot)
            } * scale;
            let (mut ms, mut vs) = (1.0f32, 1.0f32);
            if score > m {
                let old = m;
                m = score;
                ms = (old - m).exp();
                let msv = _mm256_set1_ps(ms);
                for a in acc.iter_mut().take(lanes) {
                    let y = _mm256_mul_ps(*a, msv);
                    *a = if low_precision { round16(y) } else { y };
                }
            } else {
                vs = (score - m).exp();
            }
            let vsv = _mm256_set1_ps(vs);
            for (a, v) in acc.iter_mut().zip(vp) {
                let y = _mm256_fmadd_ps(load16(v), vsv, *a);
                *a = if low_precision { round16(y) } else { y };
            }
            sum = sum.mul_add(ms, vs);
        }
        let inv = _mm256_set1_ps(if sum == 0.0 { 0.0 } else { 1.0 / sum });
        for (o, a) in out.as_chunks_mut::<8>().0.iter_mut().zip(&acc) {
            store(o, _mm256_mul_ps(*a, inv));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against a plain softmax(qkᵀ/√d)·v in f64 on the same f16-rounded keys and values.
    #[test]
    fn matches_reference_softmax_attention() {
        // Short batches (decode numerics) and long ones (the two-pass prompt path); smaller ones under
        // Miri, which interprets every f16 conversion.
        let long = if cfg!(miri) {
            (0, TILE_ROWS, 8)
        } else {
            (10, 70, 16)
        };
        for (pos, seq, hd) in [(3, 5, 8), long] {
            check_against_reference(pos, seq, hd);
        }
    }

    fn check_against_reference(pos: usize, seq: usize, hd: usize) {
        let s = AttnShape {
            n_head: 4,
            n_kv_head: 2,
            head_dim: hd,
            capacity: pos + seq + 3,
        };
        let val = |i: usize| ((i * 7919 % 113) as f32 - 56.0) / 40.0;
        let k: Vec<f32> = (0..s.n_kv_head * (pos + seq) * s.head_dim)
            .map(val)
            .collect();
        let v: Vec<f32> = (0..k.len()).map(|i| val(i + 5)).collect();
        let q: Vec<f32> = (0..s.n_head * seq * s.head_dim)
            .map(|i| val(i + 11))
            .collect();
        let mut kc = vec![f16::ZERO; s.n_kv_head * s.capacity * s.head_dim];
        let mut vc = kc.clone();
        // Store everything as one batch at position 0 (keys for pos.. come from the same formula).
        let per = |src: &[f32], h: usize, p: usize| {
            src[(h * (pos + seq) + p) * s.head_dim..][..s.head_dim].to_vec()
        };
        for h in 0..s.n_kv_head {
            for p in 0..pos + seq {
                let (kk, vv) = (per(&k, h, p), per(&v, h, p));
                let one = AttnShape { n_kv_head: 1, ..s };
                let off = h * s.capacity * s.head_dim;
                store(
                    &mut kc[off..],
                    &mut vc[off..],
                    &kk,
                    &vv,
                    Layout::HeadMajor,
                    one,
                    p,
                    1,
                );
            }
        }
        let mut out = vec![0f32; seq * s.n_head * s.head_dim];
        attend(
            Exec::Rayon,
            &q,
            Layout::HeadMajor,
            &kc,
            &vc,
            s,
            pos,
            seq,
            &mut out,
        );
        for h in 0..s.n_head {
            let kvh = h / 2;
            for i in 0..seq {
                let qi = &q[(h * seq + i) * s.head_dim..][..s.head_dim];
                let n = pos + i + 1;
                let scores: Vec<f64> = (0..n)
                    .map(|p| {
                        let kk = &kc[(kvh * s.capacity + p) * s.head_dim..][..s.head_dim];
                        kk.iter()
                            .zip(qi)
                            .map(|(a, b)| a.to_f64() * *b as f64)
                            .sum::<f64>()
                            / (hd as f64).sqrt()
                    })
                    .collect();
                let mx = scores.iter().cloned().fold(f64::MIN, f64::max);
                let w: Vec<f64> = scores.iter().map(|x| (x - mx).exp()).collect();
                let z: f64 = w.iter().sum();
                for d in 0..s.head_dim {
                    let want: f64 = (0..n)
                        .map(|p| w[p] / z * vc[(kvh * s.capacity + p) * s.head_dim + d].to_f64())
                        .sum();
                    let got = out[i * s.n_head * s.head_dim + h * s.head_dim + d] as f64;
                    assert!((got - want).abs() < 5e-3, "h{h} i{i} d{d}: {got} vs {want}");
                }
            }
        }
    }

    /// A shape with `n_head` 4, `n_kv_head` 2 and head size `hd`, for `pos + seq` positions, and caches
    /// (of `cache_len` values each) and queries filled with varied values.
    fn case(pos: usize, seq: usize, hd: usize) -> (AttnShape, Vec<f16>, Vec<f16>, Vec<f32>) {
        let s = AttnShape {
            n_head: 4,
            n_kv_head: 2,
            head_dim: hd,
            capacity: pos + seq,
        };
        let val = |i: usize| f16::from_f32(((i * 7919 % 113) as f32 - 56.0) / 40.0);
        let n = s.n_kv_head * s.capacity * hd;
        let kc: Vec<f16> = (0..n).map(val).collect();
        let vc: Vec<f16> = (0..n).map(|i| val(i + 5)).collect();
        let q = (0..s.n_head * seq * hd)
            .map(|i| val(i + 11).to_f32())
            .collect();
        (s, kc, vc, q)
    }

    /// Caches shorter than the shape says, or positions past the capacity, are refused before the
    /// kernels (which index the caches without checks) run: for decode and prompt batches alike.
    #[test]
    fn caches_that_do_not_fit_the_shape_are_refused() {
        // Small heads and a short history under Miri, which interprets every f16 conversion.
        let (hd, long) = if cfg!(miri) {
            (8, (0, TILE_ROWS))
        } else {
            (64, (10, 70))
        };
        for (pos, seq) in [(3, 5), long] {
            let (s, kc, vc, q) = case(pos, seq, hd);
            let mut out = vec![0f32; q.len()];
            let short = &kc[..kc.len() - hd];
            let attend_with = |k: &[f16], s: AttnShape, out: &mut [f32]| {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    attend(Exec::Rayon, &q, Layout::HeadMajor, k, &vc, s, pos, seq, out)
                }))
            };
            assert!(
                attend_with(short, s, &mut out).is_err(),
                "short keys, seq {seq}"
            );
            let small = AttnShape {
                capacity: pos + seq - 1,
                ..s
            };
            assert!(
                attend_with(&kc, small, &mut out).is_err(),
                "capacity, seq {seq}"
            );
            let odd = AttnShape { n_kv_head: 3, ..s };
            assert!(attend_with(&kc, odd, &mut out).is_err(), "heads, seq {seq}");
            assert!(
                attend_with(&kc, s, &mut out[1..]).is_err(),
                "output, seq {seq}"
            );
            assert!(attend_with(&kc, s, &mut out).is_ok(), "seq {seq}");
        }
    }

    /// Run (in a child process) by `kernels::tests::the_cpu_cap_reaches_every_dispatch`: with the cap,
    /// decode and prompt batches both take the scalar rows, bit for bit (the vector code sums in
    /// another order).
    #[test]
    #[ignore = "run with CODELLAMA_LSP_CPU=scalar by the_cpu_cap_reaches_every_dispatch"]
    fn capped_to_scalar() {
        assert_eq!(super::super::cpu::level(), super::super::cpu::Level::Scalar);
        for (pos, seq) in [(3, 5), (10, 70)] {
            let (s, kc, vc, q) = case(pos, seq, 64);
            let hd = s.head_dim;
            let mut out = vec![0f32; q.len()];
            attend(
                Exec::Rayon,
                &q,
                Layout::HeadMajor,
                &kc,
                &vc,
                s,
                pos,
                seq,
                &mut out,
            );
            let mut want = vec![0f32; q.len()];
            for h in 0..s.n_head {
                let base = h / 2 * s.capacity * hd;
                for i in 0..seq {
                    let n = pos + i + 1;
                    let qo = Layout::HeadMajor.offset(h, s.n_head, i, seq, hd);
                    attend_row_scalar(
                        &q[qo..qo + hd],
                        &kc[base..base + n * hd],
                        &vc[base..base + n * hd],
                        hd,
                        1.0 / (hd as f32).sqrt(),
                        seq < TILE_ROWS,
                        &mut want[(i * s.n_head + h) * hd..][..hd],
                    );
                }
            }
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&out), bits(&want), "seq {seq}");
        }
    }
}
