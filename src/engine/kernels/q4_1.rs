//! Q4_1 weights (blocks of 32: f16 scale `d`, f16 minimum `m`, 16 bytes of nibbles) times Q8 activations.
//! Value `j < 16` of a block is the low nibble of byte `j`, value `j + 16` its high nibble, and a weight is
//! `d · q + m`, so a block's dot product is `d·dₐ·Σ q·qₐ + m·sₐ`. The SIMD kernel takes up to four
//! activation rows per pass over a weight row, so prefill unpacks each weight block once for four tokens.

use half::f16;

use super::q8::{Q8Block, QK};

const BLOCK_BYTES: usize = 20;

/// Activation rows processed together by `RowsDot`.
pub const ROWS: usize = 4;

/// `dot(weight_row, [act rows; n]) -> [f32; n]` for `n <= ROWS` rows.
pub type RowsDot = fn(&[u8], &[&[Q8Block]], &mut [f32]);

/// The fastest implementation this CPU supports.
pub fn rows_dot() -> RowsDot {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
        {
            return |w, a, out| {
                // SAFETY: the required CPU features were detected above.
                unsafe { x86::rows_dot_avx2(w, a, out) }
            };
        }
    }
    rows_dot_scalar
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

pub fn rows_dot_scalar(w: &[u8], acts: &[&[Q8Block]], out: &mut [f32]) {
    for (a, o) in acts.iter().zip(out.iter_mut()) {
        let mut total = 0f32;
        for (blk, act) in w.chunks_exact(BLOCK_BYTES).zip(a.iter()) {
            let (d, m) = (f16_at(blk, 0), f16_at(blk, 2));
            let mut isum = 0i32;
            for j in 0..QK / 2 {
                let byte = blk[4 + j];
                isum += (byte & 0x0F) as i32 * act.qs[j] as i32;
                isum += (byte >> 4) as i32 * act.qs[j + QK / 2] as i32;
            }
            total += d * act.d * isum as f32 + m * act.s;
        }
        *o = total;
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) use x86::hsum as x86_hsum;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{Q8Block, BLOCK_BYTES, ROWS};

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn rows_dot_avx2(w: &[u8], acts: &[&[Q8Block]], out: &mut [f32]) {
        let n = acts.len().min(ROWS).min(out.len());
        let nb = acts[..n]
            .iter()
            .map(|a| a.len())
            .min()
            .unwrap_or(0)
            .min(w.len() / BLOCK_BYTES);
        match n {
            4 => fixed::<4>(w.as_ptr(), nb, acts, out),
            3 => fixed::<3>(w.as_ptr(), nb, acts, out),
            2 => fixed::<2>(w.as_ptr(), nb, acts, out),
            1 => fixed::<1>(w.as_ptr(), nb, acts, out),
            _ => {}
        }
    }

    /// `R` activation rows against one weight row; `R` is a constant so the accumulators stay in registers.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn fixed<const R: usize>(
        wp: *const u8,
        nb: usize,
        acts: &[&[Q8Block]],
        out: &mut [f32],
    ) {
        let low = _mm_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); R];
        let mut mins = [_mm_setzero_ps(); R];
        let a: [*const Q8Block; R] = std::array::from_fn(|r| acts[r].as_ptr());
        for b in 0..nb {
            let blk = wp.add(b * BLOCK_BYTES);
            // d and m are adjacent f16 values: convert both at once.
            let dm = _mm_cvtph_ps(_mm_cvtsi32_si128((blk as *const i32).read_unaligned()));
            let d = _mm256_set1_ps(_mm_cvtss_f32(dm));
            let m = _mm_shuffle_ps(dm, dm, 0b01_01_01_01);
            let packed = _mm_loadu_si128(blk.add(4) as *const __m128i);
            let lo = _mm_and_si128(packed, low);
            let hi = _mm_and_si128(_mm_srli_epi16(packed, 4), low);
            let q4 = _mm256_set_m128i(hi, lo);
            for r in 0..R {
                let act = &*a[r].add(b);
                let q8 = _mm256_loadu_si256(act.qs.as_ptr() as *const __m256i);
                let prod = _mm256_madd_epi16(_mm256_maddubs_epi16(q4, q8), ones);
                let scale = _mm256_mul_ps(d, _mm256_set1_ps(act.d));
                acc[r] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(prod), acc[r]);
                mins[r] = _mm_fmadd_ss(m, _mm_set_ss(act.s), mins[r]);
            }
        }
        for r in 0..R {
            out[r] = hsum(acc[r]) + _mm_cvtss_f32(mins[r]);
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(in crate::engine::kernels) unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }
}

#[cfg(test)]
mod tests {
    use super::super::q8::Q8Row;
    use super::*;

    #[test]
    fn simd_equals_scalar() {
        let cols = 256;
        let w: Vec<u8> = (0..cols / QK * BLOCK_BYTES)
            .map(|i| (i * 37 % 251) as u8)
            .collect::<Vec<_>>()
            .chunks(BLOCK_BYTES)
            .flat_map(|c| {
                let mut c = c.to_vec();
                c[..2].copy_from_slice(&f16::from_f32(0.01).to_le_bytes());
                c[2..4].copy_from_slice(&f16::from_f32(-0.05).to_le_bytes());
                c
            })
            .collect();
        let x: Vec<f32> = (0..3 * cols)
            .map(|i| ((i * 13 % 29) as f32 - 14.0) / 7.0)
            .collect();
        let q = Q8Row::quantize_rows(&x, 3, cols);
        let acts = [q.row(0), q.row(1), q.row(2)];
        let (mut a, mut b) = ([0f32; 3], [0f32; 3]);
        rows_dot()(&w, &acts, &mut a);
        rows_dot_scalar(&w, &acts, &mut b);
        for r in 0..3 {
            assert!(
                (a[r] - b[r]).abs() <= 1e-4 * (1.0 + b[r].abs()),
                "{a:?} vs {b:?}"
            );
        }
    }
}
