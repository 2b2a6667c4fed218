//! Activations quantized to 8 bits in blocks of 32, the partner format of the quantized weight kernels,
//! with llama.cpp's numerics (Q8_0/Q8_1): `q = round_half_even(x · 127 / max|x|)`, the scale
//! `d = max|x| / 127` rounded through f16, and `s = d · Σq` (used by formats with a minimum).

use half::f16;

pub const QK: usize = 32;

#[derive(Clone, Copy)]
#[repr(C)]
pub struct Q8Block {
    pub d: f32,
    pub s: f32,
    pub qs: [i8; QK],
}

/// `m` rows of quantized activations, `cols / 32` blocks each.
pub struct Q8Row {
    blocks: Vec<Q8Block>,
    per_row: usize,
}

impl Q8Row {
    pub fn quantize_rows(x: &[f32], m: usize, cols: usize) -> Self {
        assert_eq!(cols % QK, 0);
        let per_row = cols / QK;
        let quantize = quantizer();
        let mut blocks = Vec::with_capacity(m * per_row);
        for chunk in x[..m * cols].chunks_exact(QK) {
            blocks.push(quantize(chunk));
        }
        Self { blocks, per_row }
    }

    pub fn row(&self, i: usize) -> &[Q8Block] {
        &self.blocks[i * self.per_row..(i + 1) * self.per_row]
    }

    /// Rows `first..first + n` (`n <= N`); unused slots are empty.
    pub fn rows<const N: usize>(&self, first: usize, n: usize) -> [&[Q8Block]; N] {
        std::array::from_fn(|r| if r < n { self.row(first + r) } else { &[] })
    }
}

fn quantizer() -> fn(&[f32]) -> Q8Block {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU features were detected above; blocks are exactly 32 values.
            return |x| unsafe { x86::quantize_block(x) };
        }
    }
    quantize_block
}

fn quantize_block(x: &[f32]) -> Q8Block {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let mut qs = [0i8; QK];
    let mut sum = 0i32;
    for (q, v) in qs.iter_mut().zip(x) {
        let r = (v * id).round_ties_even() as i32;
        *q = r as i8;
        sum += r;
    }
    let d16 = f16::from_f32(d).to_f32();
    Q8Block {
        d: d16,
        s: f16::from_f32(sum as f32 * d).to_f32(),
        qs,
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use half::f16;

    use super::{Q8Block, QK};

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn quantize_block(x: &[f32]) -> Q8Block {
        assert!(x.len() >= QK);
        let p = x.as_ptr();
        let v = [
            _mm256_loadu_ps(p),
            _mm256_loadu_ps(p.add(8)),
            _mm256_loadu_ps(p.add(16)),
            _mm256_loadu_ps(p.add(24)),
        ];
        let sign = _mm256_set1_ps(-0.0);
        let mut mx = _mm256_andnot_ps(sign, v[0]);
        for vi in &v[1..] {
            mx = _mm256_max_ps(mx, _mm256_andnot_ps(sign, *vi));
        }
        let m4 = _mm_max_ps(_mm256_extractf128_ps(mx, 1), _mm256_castps256_ps128(mx));
        let m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        let m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        let amax = _mm_cvtss_f32(m4);
        let d = amax / 127.0;
        let id = _mm256_set1_ps(if amax != 0.0 { 127.0 / amax } else { 0.0 });
        let mut qi = [_mm256_setzero_si256(); 4];
        for (q, vi) in qi.iter_mut().zip(&v) {
            let r = _mm256_round_ps(
                _mm256_mul_ps(*vi, id),
                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
            );
            *q = _mm256_cvtps_epi32(r);
        }
        let total = _mm256_add_epi32(
            _mm256_add_epi32(qi[0], qi[1]),
            _mm256_add_epi32(qi[2], qi[3]),
        );
        let t4 = _mm_add_epi32(
            _mm256_castsi256_si128(total),
            _mm256_extracti128_si256(total, 1),
        );
        let t4 = _mm_add_epi32(t4, _mm_unpackhi_epi64(t4, t4));
        let t4 = _mm_add_epi32(t4, _mm_shuffle_epi32(t4, 0b01));
        let sum = _mm_cvtsi128_si32(t4);
        // Pack 32 i32 to 32 i8; the packs work per 128-bit lane, so restore the order afterwards.
        let a = _mm256_packs_epi32(qi[0], qi[1]);
        let b = _mm256_packs_epi32(qi[2], qi[3]);
        let bytes = _mm256_packs_epi16(a, b);
        let bytes = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        let mut out = Q8Block {
            d: f16::from_f32(d).to_f32(),
            s: f16::from_f32(sum as f32 * d).to_f32(),
            qs: [0; QK],
        };
        _mm256_storeu_si256(out.qs.as_mut_ptr() as *mut __m256i, bytes);
        out
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn simd_quantization_equals_scalar() {
        let x: Vec<f32> = (0..320)
            .map(|i| ((i * 7919 % 1001) as f32 - 500.0) / 123.0)
            .collect();
        let q = super::quantizer();
        for chunk in x.chunks_exact(super::QK) {
            let (a, b) = (q(chunk), super::quantize_block(chunk));
            assert_eq!((a.d, a.s, a.qs), (b.d, b.s, b.qs));
        }
    }

    use super::*;

    #[test]
    fn block_roundtrip_is_close() {
        let x: Vec<f32> = (0..64).map(|i| (i as f32 - 31.5) / 10.0).collect();
        let q = Q8Row::quantize_rows(&x, 2, 32);
        for i in 0..2 {
            let b = &q.row(i)[0];
            for (k, v) in x[i * 32..(i + 1) * 32].iter().enumerate() {
                assert!((b.qs[k] as f32 * b.d - v).abs() < 0.02, "{v}");
            }
            let sum: f32 = x[i * 32..(i + 1) * 32].iter().sum();
            assert!((b.s - sum).abs() < 0.2, "{} vs {sum}", b.s);
        }
    }
}
