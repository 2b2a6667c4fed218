//! Causal grouped-query attention over an f16 KV cache, computed one query row at a time with an online
//! softmax (no score matrix is materialised, so memory does not grow with the context).
//!
//! Numerics follow llama.cpp's CPU flash-attention kernels, whose greedy outputs our tests compare with:
//! keys and values are stored as f16; for short query batches (decode) the query is rounded to f16 and
//! the weighted sum of values is accumulated in f16; for batches of `TILE_ROWS` or more queries (prompt
//! processing) queries and accumulators stay f32. Scores and the softmax are f32 throughout.

use half::f16;

use super::tiled::OutPtr;
use super::Exec;

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
    let hd = s.head_dim;
    let group = s.n_head / s.n_kv_head;
    let scale = 1.0 / (hd as f32).sqrt();
    let low_precision = seq < TILE_ROWS;
    let rows = s.n_head * seq;
    assert!(out.len() >= rows * hd && q.len() >= rows * hd);
    let out_ptr = OutPtr(out.as_mut_ptr());
    #[cfg(target_arch = "x86_64")]
    if !low_precision && hd.is_multiple_of(8) && hd <= 256 && simd::available() {
        // Blocks of query rows of one head: keys and values converted to f32 once per block.
        let blocks = seq.div_ceil(BLOCK_ROWS);
        exec.for_each(s.n_head * blocks, &|item| {
            let (h, blk) = (item / blocks, item % blocks);
            let rows = blk * BLOCK_ROWS..((blk + 1) * BLOCK_ROWS).min(seq);
            // SAFETY: AVX2/FMA/F16C checked; each item writes the outputs of its own (head, rows).
            unsafe {
                simd::attend_block(
                    q, layout, k_cache, v_cache, s, pos, seq, h, rows, scale, out_ptr,
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
        let dst = unsafe {
            std::slice::from_raw_parts_mut({ out_ptr }.0.add(i * s.n_head * hd + h * hd), hd)
        };
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
        if hd.is_multiple_of(8) && hd <= 256 && simd::available() {
            // SAFETY: the CPU features were checked and `hd` is a multiple of the vector width.
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

    use super::super::float::x86::hsum;

    pub fn available() -> bool {
        std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load16(p: *const f16) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }

    /// Rounds 8 lanes to f16 precision and back.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn round16(x: __m256) -> __m256 {
        _mm256_cvtph_ps(_mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT))
    }

    /// `k · q` summed in the order of llama.cpp's 512-bit f16 dot product: four 16-lane accumulators over
    /// chunks of 64, folded pairwise, then a tree reduction; the remainder added in f64. Bit-identical
    /// results keep greedy outputs comparable with llama.cpp (an 8-bit activation quantization
    /// downstream turns any last-bit difference into a different integer now and then).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot_like_ggml(kp: *const f16, q: &[__m256], hd: usize) -> f32 {
        let chunks = hd / 64;
        let mut acc = [_mm256_setzero_ps(); 8]; // accumulator j, half h at 2j + h
        for c in 0..chunks {
            for (a, slot) in acc.iter_mut().enumerate() {
                let l = c * 8 + a; // 8-lane group within the row
                *slot = _mm256_fmadd_ps(load16(kp.add(l * 8)), q[l], *slot);
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
        for (l, ql) in q.iter().enumerate().skip(chunks * 8) {
            _mm256_storeu_ps(qv.as_mut_ptr(), *ql);
            for (e, qe) in qv.iter().enumerate() {
                total += ((*kp.add(l * 8 + e)).to_f32() * qe) as f64;
            }
        }
        total as f32
    }

    /// Prompt attention for query rows `rows` of head `h`, flash-attention style: keys and values are
    /// taken 64 positions at a time, converted once to f32 (keys transposed to `[head_dim][64]`, so eight
    /// scores come from one multiply-add per dimension), and every row keeps a running maximum, sum and
    /// output, rescaled when the maximum grows. The block stays in L1 while all rows use it.
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
        out: super::OutPtr,
    ) {
        const KB: usize = 64;
        let hd = s.head_dim;
        let lanes = hd / 8;
        let kvh = h / (s.n_head / s.n_kv_head);
        let base = kvh * s.capacity * hd;
        let n_rows = rows.len();
        let mut kt = vec![0f32; hd * KB];
        let mut vb = vec![0f32; KB * hd];
        let mut o = vec![0f32; n_rows * hd];
        let mut m = vec![f32::NEG_INFINITY; n_rows];
        let mut l = vec![0f32; n_rows];
        let mut sc = [0f32; KB];
        let keys = pos + rows.end;
        for k0 in (0..keys).step_by(KB) {
            let kn = KB.min(keys - k0);
            for p in 0..kn {
                let kp = k_cache.as_ptr().add(base + (k0 + p) * hd);
                let vp = v_cache.as_ptr().add(base + (k0 + p) * hd);
                for d in (0..hd).step_by(8) {
                    let mut lanes8 = [0f32; 8];
                    _mm256_storeu_ps(lanes8.as_mut_ptr(), load16(kp.add(d)));
                    for (e, v) in lanes8.iter().enumerate() {
                        *kt.get_unchecked_mut((d + e) * KB + p) = *v;
                    }
                    _mm256_storeu_ps(vb.as_mut_ptr().add(p * hd + d), load16(vp.add(d)));
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
                for d in 0..hd {
                    let qd = _mm256_set1_ps(*q.get_unchecked(qo + d));
                    let row = kt.as_ptr().add(d * KB);
                    for (c, a) in acc.iter_mut().enumerate() {
                        *a = _mm256_fmadd_ps(qd, _mm256_loadu_ps(row.add(c * 8)), *a);
                    }
                }
                let sv = _mm256_set1_ps(scale);
                for (c, a) in acc.iter().enumerate() {
                    _mm256_storeu_ps(sc.as_mut_ptr().add(c * 8), _mm256_mul_ps(*a, sv));
                }
                let block_max = sc[..kv].iter().fold(f32::NEG_INFINITY, |x, y| x.max(*y));
                let m_new = m[r].max(block_max);
                let alpha = (m[r] - m_new).exp();
                for v in sc[kv..].iter_mut() {
                    *v = f32::NEG_INFINITY;
                }
                let mv = _mm256_set1_ps(m_new);
                let mut total = _mm256_setzero_ps();
                for c in 0..kv.div_ceil(8) {
                    let e = crate::engine::kernels::activation::expf8(_mm256_sub_ps(
                        _mm256_loadu_ps(sc.as_ptr().add(c * 8)),
                        mv,
                    ));
                    _mm256_storeu_ps(sc.as_mut_ptr().add(c * 8), e);
                    total = _mm256_add_ps(total, e);
                }
                l[r] = l[r] * alpha + hsum(total);
                m[r] = m_new;
                let orow = o.as_mut_ptr().add(r * hd);
                let av = _mm256_set1_ps(alpha);
                let mut oacc = [_mm256_setzero_ps(); 32];
                for (j, a) in oacc.iter_mut().enumerate().take(lanes) {
                    *a = _mm256_mul_ps(_mm256_loadu_ps(orow.add(j * 8)), av);
                }
                for (p, w) in sc[..kv].iter().enumerate() {
                    let wv = _mm256_set1_ps(*w);
                    let vp = vb.as_ptr().add(p * hd);
                    for (j, a) in oacc.iter_mut().enumerate().take(lanes) {
                        *a = _mm256_fmadd_ps(_mm256_loadu_ps(vp.add(j * 8)), wv, *a);
                    }
                }
                for (j, a) in oacc.iter().enumerate().take(lanes) {
                    _mm256_storeu_ps(orow.add(j * 8), *a);
                }
            }
        }
        for (r, i) in rows.enumerate() {
            let inv = _mm256_set1_ps(if l[r] == 0.0 { 0.0 } else { 1.0 / l[r] });
            let dst = { out }.0.add(i * s.n_head * hd + h * hd);
            for j in 0..lanes {
                _mm256_storeu_ps(
                    dst.add(j * 8),
                    _mm256_mul_ps(_mm256_loadu_ps(o.as_ptr().add(r * hd + j * 8)), inv),
                );
            }
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn attend_row(
        query: &[f32],
        keys: &[f16],
        values: &[f16],
        hd: usize,
        scale: f32,
        low_precision: bool,
        out: &mut [f32],
    ) {
        let lanes = hd / 8;
        let mut q = [_mm256_setzero_ps(); 32];
        let mut acc = [_mm256_setzero_ps(); 32];
        debug_assert!(lanes <= 32);
        for (l, qv) in q.iter_mut().enumerate().take(lanes) {
            let v = _mm256_loadu_ps(query.as_ptr().add(l * 8));
            *qv = if low_precision { round16(v) } else { v };
        }
        let n = keys.len() / hd;
        let mut m = f32::NEG_INFINITY;
        let mut sum = 0f32;
        for p in 0..n {
            let kp = keys.as_ptr().add(p * hd);
            let score = if low_precision {
                dot_like_ggml(kp, &q[..lanes], hd)
            } else {
                let mut dot = _mm256_setzero_ps();
                for (l, qv) in q.iter().enumerate().take(lanes) {
                    dot = _mm256_fmadd_ps(load16(kp.add(l * 8)), *qv, dot);
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
            let vp = values.as_ptr().add(p * hd);
            for (l, a) in acc.iter_mut().enumerate().take(lanes) {
                let y = _mm256_fmadd_ps(load16(vp.add(l * 8)), vsv, *a);
                *a = if low_precision { round16(y) } else { y };
            }
            sum = sum.mul_add(ms, vs);
        }
        let inv = _mm256_set1_ps(if sum == 0.0 { 0.0 } else { 1.0 / sum });
        for (l, a) in acc.iter().enumerate().take(lanes) {
            _mm256_storeu_ps(out.as_mut_ptr().add(l * 8), _mm256_mul_ps(*a, inv));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against a plain softmax(qkᵀ/√d)·v in f64 on the same f16-rounded keys and values.
    #[test]
    fn matches_reference_softmax_attention() {
        // Short batches (decode numerics) and long ones (the two-pass prompt path).
        for (pos, seq, hd) in [(3, 5, 8), (10, 70, 16)] {
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
}
