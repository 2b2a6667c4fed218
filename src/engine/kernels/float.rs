//! Dot products and conversions for weights stored as f32, f16 or bf16; activations stay f32 and
//! accumulation is f32, so these paths are as exact as the stored weights.

use candle_core::quantized::GgmlDType;
use half::{bf16, f16};

pub type RowDot = fn(&[u8], &[f32]) -> f32;

pub fn row_dot(dtype: GgmlDType) -> RowDot {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
        {
            // SAFETY (all three): the required CPU features were detected above.
            return match dtype {
                GgmlDType::F16 => |w, x| unsafe { x86::dot_f16(w, x) },
                GgmlDType::BF16 => |w, x| unsafe { x86::dot_bf16(w, x) },
                _ => |w, x| unsafe { x86::dot_f32(w, x) },
            };
        }
    }
    match dtype {
        GgmlDType::F16 => dot_f16_scalar,
        GgmlDType::BF16 => dot_bf16_scalar,
        _ => dot_f32_scalar,
    }
}

pub fn to_f32(dtype: GgmlDType, row: &[u8], out: &mut [f32]) {
    match dtype {
        GgmlDType::F16 => {
            for (o, b) in out.iter_mut().zip(row.chunks_exact(2)) {
                *o = f16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        GgmlDType::BF16 => {
            for (o, b) in out.iter_mut().zip(row.chunks_exact(2)) {
                *o = bf16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        _ => {
            for (o, b) in out.iter_mut().zip(row.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
    }
}

fn dot_f32_scalar(w: &[u8], x: &[f32]) -> f32 {
    w.chunks_exact(4)
        .zip(x)
        .map(|(b, v)| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) * v)
        .sum()
}

fn dot_f16_scalar(w: &[u8], x: &[f32]) -> f32 {
    w.chunks_exact(2)
        .zip(x)
        .map(|(b, v)| f16::from_le_bytes([b[0], b[1]]).to_f32() * v)
        .sum()
}

fn dot_bf16_scalar(w: &[u8], x: &[f32]) -> f32 {
    w.chunks_exact(2)
        .zip(x)
        .map(|(b, v)| bf16::from_le_bytes([b[0], b[1]]).to_f32() * v)
        .sum()
}

#[cfg(target_arch = "x86_64")]
pub(super) mod x86 {
    use std::arch::x86_64::*;

    /// The sum of 8 lanes (the kernels' shared horizontal add).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(in crate::engine::kernels) unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// Shared loop: `load(i)` gives 8 weights as f32 starting at element `i`.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot_with(
        n: usize,
        x: &[f32],
        load: impl Fn(usize) -> __m256,
        tail: impl Fn(usize) -> f32,
    ) -> f32 {
        let mut acc0 = _mm256_setzero_ps();
        let mut acc1 = _mm256_setzero_ps();
        let mut i = 0;
        while i + 16 <= n {
            acc0 = _mm256_fmadd_ps(load(i), _mm256_loadu_ps(x.as_ptr().add(i)), acc0);
            acc1 = _mm256_fmadd_ps(load(i + 8), _mm256_loadu_ps(x.as_ptr().add(i + 8)), acc1);
            i += 16;
        }
        while i + 8 <= n {
            acc0 = _mm256_fmadd_ps(load(i), _mm256_loadu_ps(x.as_ptr().add(i)), acc0);
            i += 8;
        }
        let mut total = hsum(_mm256_add_ps(acc0, acc1));
        while i < n {
            total += tail(i) * x[i];
            i += 1;
        }
        total
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_f32(w: &[u8], x: &[f32]) -> f32 {
        let n = x.len().min(w.len() / 4);
        let p = w.as_ptr() as *const f32;
        dot_with(
            n,
            x,
            |i| _mm256_loadu_ps(p.add(i)),
            |i| p.add(i).read_unaligned(),
        )
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_f16(w: &[u8], x: &[f32]) -> f32 {
        let n = x.len().min(w.len() / 2);
        let p = w.as_ptr() as *const u16;
        dot_with(
            n,
            x,
            |i| _mm256_cvtph_ps(_mm_loadu_si128(p.add(i) as *const __m128i)),
            |i| half::f16::from_bits(p.add(i).read_unaligned()).to_f32(),
        )
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_bf16(w: &[u8], x: &[f32]) -> f32 {
        let n = x.len().min(w.len() / 2);
        let p = w.as_ptr() as *const u16;
        dot_with(
            n,
            x,
            |i| {
                let h = _mm256_cvtepu16_epi32(_mm_loadu_si128(p.add(i) as *const __m128i));
                _mm256_castsi256_ps(_mm256_slli_epi32(h, 16))
            },
            |i| half::bf16::from_bits(p.add(i).read_unaligned()).to_f32(),
        )
    }
}
