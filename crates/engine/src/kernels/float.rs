//! Dot products and conversions for weights stored as f32, f16 or bf16; activations stay f32 and
//! accumulation is f32, so these paths are as exact as the stored weights.

use candle_core::quantized::GgmlDType;
use half::{bf16, f16};

pub type RowDot = fn(&[u8], &[f32]) -> f32;

pub fn row_dot(dtype: GgmlDType) -> RowDot {
    #[cfg(target_arch = "x86_64")]
    {
        if super::cpu::has_avx2() {
            return match dtype {
                // SAFETY: the CPU has AVX2, FMA and F16C (`has_avx2`), all the three dots need.
                GgmlDType::F16 => |w, x| unsafe { x86::dot_f16(w, x) },
                // SAFETY: as above.
                GgmlDType::BF16 => |w, x| unsafe { x86::dot_bf16(w, x) },
                // SAFETY: as above.
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
    pub(in crate::kernels) fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// `Σ w·x` over the first `min(x.len(), w.len() / N · 8)` values, where `load` converts the 8 weights
    /// stored in `N` bytes to f32 and `one` converts a single weight (the tail). Two accumulators over
    /// runs of 16, then one run of 8, then the tail one value at a time.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn dot_with<const N: usize>(
        w: &[u8],
        x: &[f32],
        load: impl Fn(&[u8; N]) -> __m256,
        one: impl Fn(&[u8]) -> f32,
    ) -> f32 {
        let (w8, _) = w.as_chunks::<N>();
        let (x8, _) = x.as_chunks::<8>();
        let runs = w8.len().min(x8.len());
        // SAFETY: each `&[f32; 8]` is 8 values, one 256-bit load.
        let lx = |v: &[f32; 8]| unsafe { _mm256_loadu_ps(v.as_ptr()) };
        let mut acc0 = _mm256_setzero_ps();
        let mut acc1 = _mm256_setzero_ps();
        let mut i = 0;
        while i + 2 <= runs {
            acc0 = _mm256_fmadd_ps(load(&w8[i]), lx(&x8[i]), acc0);
            acc1 = _mm256_fmadd_ps(load(&w8[i + 1]), lx(&x8[i + 1]), acc1);
            i += 2;
        }
        if i < runs {
            acc0 = _mm256_fmadd_ps(load(&w8[i]), lx(&x8[i]), acc0);
            i += 1;
        }
        let mut total = hsum(_mm256_add_ps(acc0, acc1));
        let width = N / 8;
        let n = x.len().min(w.len() / width);
        for (k, v) in x.iter().enumerate().take(n).skip(i * 8) {
            total += one(&w[k * width..(k + 1) * width]) * v;
        }
        total
    }

    /// # Safety
    /// The CPU supports AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_f32(w: &[u8], x: &[f32]) -> f32 {
        dot_with::<32>(
            w,
            x,
            // SAFETY: 32 bytes are 8 f32, one unaligned 256-bit load.
            |b| unsafe { _mm256_loadu_ps(b.as_ptr().cast()) },
            |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        )
    }

    /// # Safety
    /// The CPU supports AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_f16(w: &[u8], x: &[f32]) -> f32 {
        dot_with::<16>(
            w,
            x,
            // SAFETY: 16 bytes are 8 f16, one unaligned 128-bit load.
            |b| _mm256_cvtph_ps(unsafe { _mm_loadu_si128(b.as_ptr().cast()) }),
            |b| half::f16::from_le_bytes([b[0], b[1]]).to_f32(),
        )
    }

    /// # Safety
    /// The CPU supports AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_bf16(w: &[u8], x: &[f32]) -> f32 {
        dot_with::<16>(
            w,
            x,
            |b| {
                // SAFETY: 16 bytes are 8 bf16, one unaligned 128-bit load.
                let h = _mm256_cvtepu16_epi32(unsafe { _mm_loadu_si128(b.as_ptr().cast()) });
                _mm256_castsi256_ps(_mm256_slli_epi32(h, 16))
            },
            |b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i + seed) * 7919 % 2003) as f32 - 1001.0) / 317.0)
            .collect()
    }

    fn stored(dtype: GgmlDType, w: &[f32]) -> Vec<u8> {
        match dtype {
            GgmlDType::F16 => w
                .iter()
                .flat_map(|v| f16::from_f32(*v).to_le_bytes())
                .collect(),
            GgmlDType::BF16 => w
                .iter()
                .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
                .collect(),
            _ => w.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    fn scalar(dtype: GgmlDType) -> RowDot {
        match dtype {
            GgmlDType::F16 => dot_f16_scalar,
            GgmlDType::BF16 => dot_bf16_scalar,
            _ => dot_f32_scalar,
        }
    }

    const TYPES: [GgmlDType; 3] = [GgmlDType::F32, GgmlDType::F16, GgmlDType::BF16];

    /// The dispatched dot (SIMD where the CPU has it) agrees with the scalar one on every length
    /// (runs of 16 and 8 and a tail), up to summation order.
    #[test]
    fn dispatched_dots_match_scalar() {
        for dtype in TYPES {
            for n in [0, 1, 7, 8, 9, 16, 23, 24, 100, 576] {
                let (w, x) = (stored(dtype, &row(n, 1)), row(n, 2));
                let (a, b) = (row_dot(dtype)(&w, &x), scalar(dtype)(&w, &x));
                assert!(
                    (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                    "{dtype:?} n={n}: {a} vs {b}"
                );
            }
        }
    }

    /// Run (in a child process) by `kernels::tests::the_cpu_cap_reaches_every_dispatch`: with the cap,
    /// the dispatched dot is the scalar one, bit for bit (the SIMD sums in another order).
    #[test]
    #[ignore = "run with CODELLAMA_LSP_CPU=scalar by the_cpu_cap_reaches_every_dispatch"]
    fn capped_to_scalar() {
        assert_eq!(super::super::cpu::level(), super::super::cpu::Level::Scalar);
        for dtype in TYPES {
            for seed in 0..8 {
                let (w, x) = (stored(dtype, &row(200, seed)), row(200, seed + 50));
                let (a, b) = (row_dot(dtype)(&w, &x), scalar(dtype)(&w, &x));
                assert_eq!(
                    a.to_bits(),
                    b.to_bits(),
                    "{dtype:?} seed {seed}: {a} vs {b}"
                );
            }
        }
    }
}
