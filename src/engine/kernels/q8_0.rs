//! Q8_0 weights (blocks of 32: f16 scale `d`, 32 signed bytes) times Q8 activations:
//! a block's dot product is `d·dₐ·Σ w·a`. Up to four activation rows share each weight block load.

use half::f16;

use super::q8::{Q8Block, QK};

const BLOCK_BYTES: usize = 34;

pub const ROWS: usize = 4;

pub type RowsDot = fn(&[u8], &[&[Q8Block]], &mut [f32]);

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

pub fn rows_dot_scalar(w: &[u8], acts: &[&[Q8Block]], out: &mut [f32]) {
    for (a, o) in acts.iter().zip(out.iter_mut()) {
        let mut total = 0f32;
        for (blk, act) in w.chunks_exact(BLOCK_BYTES).zip(a.iter()) {
            let d = f16::from_le_bytes([blk[0], blk[1]]).to_f32();
            let isum: i32 = (0..QK).map(|j| (blk[2 + j] as i8) as i32 * act.qs[j] as i32).sum();
            total += d * act.d * isum as f32;
        }
        *o = total;
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::super::q4_1::x86_hsum as hsum;
    use super::{Q8Block, BLOCK_BYTES, ROWS};

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn rows_dot_avx2(w: &[u8], acts: &[&[Q8Block]], out: &mut [f32]) {
        let n = acts.len().min(ROWS).min(out.len());
        let nb = acts[..n].iter().map(|a| a.len()).min().unwrap_or(0).min(w.len() / BLOCK_BYTES);
        match n {
            4 => fixed::<4>(w.as_ptr(), nb, acts, out),
            3 => fixed::<3>(w.as_ptr(), nb, acts, out),
            2 => fixed::<2>(w.as_ptr(), nb, acts, out),
            1 => fixed::<1>(w.as_ptr(), nb, acts, out),
            _ => {}
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn fixed<const R: usize>(wp: *const u8, nb: usize, acts: &[&[Q8Block]], out: &mut [f32]) {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); R];
        let a: [*const Q8Block; R] = std::array::from_fn(|r| acts[r].as_ptr());
        for b in 0..nb {
            let blk = wp.add(b * BLOCK_BYTES);
            let d = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128((blk as *const u16).read_unaligned() as i32)));
            let qw = _mm256_loadu_si256(blk.add(2) as *const __m256i);
            // |w| as unsigned bytes, and the activations carry w's sign, so maddubs computes Σ w·a.
            let aw = _mm256_sign_epi8(qw, qw);
            for r in 0..R {
                let act = &*a[r].add(b);
                let qa = _mm256_loadu_si256(act.qs.as_ptr() as *const __m256i);
                let sa = _mm256_sign_epi8(qa, qw);
                let prod = _mm256_madd_epi16(_mm256_maddubs_epi16(aw, sa), ones);
                acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(d * act.d), _mm256_cvtepi32_ps(prod), acc[r]);
            }
        }
        for r in 0..R {
            out[r] = hsum(acc[r]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::q8::Q8Row;
    use super::*;

    #[test]
    fn simd_equals_scalar() {
        let cols = 128;
        let w: Vec<u8> = (0..cols / QK)
            .flat_map(|b| {
                let mut blk = f16::from_f32(0.02 + b as f32 * 0.001).to_le_bytes().to_vec();
                blk.extend((0..QK).map(|j| ((j * 37 + b * 11) % 255) as u8));
                blk
            })
            .collect();
        let x: Vec<f32> = (0..2 * cols).map(|i| ((i * 13 % 29) as f32 - 14.0) / 7.0).collect();
        let q = Q8Row::quantize_rows(&x, 2, cols);
        let acts = [q.row(0), q.row(1)];
        let (mut a, mut b) = ([0f32; 2], [0f32; 2]);
        rows_dot()(&w, &acts, &mut a);
        rows_dot_scalar(&w, &acts, &mut b);
        for r in 0..2 {
            assert!((a[r] - b[r]).abs() <= 1e-4 * (1.0 + b[r].abs()), "{a:?} vs {b:?}");
        }
    }
}
