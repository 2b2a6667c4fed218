//! The SwiGLU activation `silu(gate) · up`, with `silu(x) = x / (1 + e^-x)`.
//!
//! `e^-x` is computed with the same polynomial, in the same operation order, as llama.cpp's vectorised
//! `expf` (a range reduction to `2^n · e^b` with a degree-5 polynomial for `e^b`), and like llama.cpp the
//! tail of a row that does not fill a 16-wide vector uses the C library's `expf` (as glibc computes it,
//! `glibc_exp`, on every platform). The result is
//! bit-identical to llama.cpp's CPU backend, which matters because the next matrix product quantizes its
//! input to 8 bits: a last-bit difference occasionally becomes a different integer and, thirty layers
//! later, a different greedy token.

use super::glibc_exp;

/// Lanes of llama.cpp's widest vector path; values past the last full group of 16 use `glibc_exp`.
const VECTOR: usize = 16;

/// `swiglu` over rows of `row` values (the vector/tail split restarts at every row, as llama.cpp runs
/// the activation row by row).
pub fn swiglu_rows(gate: &mut [f32], up: &[f32], row: usize) {
    assert_eq!(gate.len(), up.len());
    for (g, u) in gate.chunks_mut(row.max(1)).zip(up.chunks(row.max(1))) {
        let vec_end = g.len() / VECTOR * VECTOR;
        let (gv, gt) = g.split_at_mut(vec_end);
        let (uv, ut) = u.split_at(vec_end);
        silu_mul_vector(gv, uv);
        for (a, b) in gt.iter_mut().zip(ut) {
            *a = *a / (1.0 + glibc_exp::exp(-*a)) * b;
        }
    }
}

fn silu_mul_vector(g: &mut [f32], u: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if super::cpu::has_avx2() {
            // SAFETY: the CPU has AVX2, FMA and F16C (`has_avx2`).
            return unsafe { x86::silu_mul(g, u) };
        }
    }
    for (a, b) in g.iter_mut().zip(u) {
        let x = *a;
        *a = x / (1.0 + expf_poly(0.0 - x)) * b;
    }
}

const SHIFT: f32 = 12582912.0; // 0x1.8p23: adding it rounds to an integer
const LOG2E: f32 = f32::from_bits(0x3fb8_aa3b); // 0x1.715476p+0
const LN2_HI: f32 = f32::from_bits(0x3f31_7200); // 0x1.62e4p-1
const LN2_LO: f32 = f32::from_bits(0x35bf_be8e); // 0x1.7f7d1cp-20
const C5: f32 = f32::from_bits(0x3c07_2010); // 0x1.0e4020p-7
const C4: f32 = f32::from_bits(0x3d2b_9f17); // 0x1.573e2ep-5
const C3: f32 = f32::from_bits(0x3e2a_af33); // 0x1.555e66p-3
const C2: f32 = f32::from_bits(0x3eff_fedb); // 0x1.fffdb6p-2
const C1: f32 = f32::from_bits(0x3f7f_fff6); // 0x1.ffffecp-1

/// `e^x` by range reduction and a polynomial, one value at a time (fused multiply-adds where the vector
/// code has them).
fn expf_poly(x: f32) -> f32 {
    let n = x.mul_add(LOG2E, SHIFT) - SHIFT;
    let b = (-n).mul_add(LN2_LO, (-n).mul_add(LN2_HI, x));
    let u = b * b;
    let j = C5
        .mul_add(b, C4)
        .mul_add(u, C3.mul_add(b, C2))
        .mul_add(u, C1.mul_add(b, 1.0));
    if n.abs() > 192.0 {
        return if n <= 0.0 { 0.0 } else { f32::INFINITY };
    }
    scale_by_power_of_two(j, n)
}

/// `j · 2^n` for an integer-valued `n`, rounded once (what `vscalefps` computes).
fn scale_by_power_of_two(j: f32, n: f32) -> f32 {
    ((j as f64) * (n as f64).exp2()) as f32
}

#[cfg(target_arch = "x86_64")]
pub(super) use x86::expf8;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::*;

    /// `g[i] = silu(g[i]) · u[i]`, eight lanes at a time. Panics unless `u` is as long as `g`.
    ///
    /// # Safety
    /// The CPU supports AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn silu_mul(g: &mut [f32], u: &[f32]) {
        assert_eq!(g.len(), u.len(), "swiglu: gate and up differ in length");
        let one = _mm256_set1_ps(1.0);
        let (g8, g_tail) = g.as_chunks_mut::<8>();
        let (u8, u_tail) = u.as_chunks::<8>();
        for (gv, uv) in g8.iter_mut().zip(u8) {
            // SAFETY: `gv` is 8 values, one 256-bit load.
            let x = unsafe { _mm256_loadu_ps(gv.as_ptr()) };
            let e = expf8(_mm256_sub_ps(_mm256_setzero_ps(), x));
            let y = _mm256_div_ps(x, _mm256_add_ps(one, e));
            // SAFETY: `uv` is 8 values.
            let up = unsafe { _mm256_loadu_ps(uv.as_ptr()) };
            let v = _mm256_mul_ps(y, up);
            // SAFETY: `gv` is 8 values, one 256-bit store.
            unsafe { _mm256_storeu_ps(gv.as_mut_ptr(), v) };
        }
        for (a, b) in g_tail.iter_mut().zip(u_tail) {
            let x = *a;
            *a = x / (1.0 + expf_poly(0.0 - x)) * b;
        }
    }

    /// Eight lanes of `expf_poly`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub fn expf8(x: __m256) -> __m256 {
        let shift = _mm256_set1_ps(SHIFT);
        let n = _mm256_sub_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(LOG2E), shift), shift);
        let b = _mm256_fnmadd_ps(
            n,
            _mm256_set1_ps(LN2_LO),
            _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x),
        );
        let u = _mm256_mul_ps(b, b);
        let j = _mm256_fmadd_ps(
            _mm256_fmadd_ps(
                _mm256_fmadd_ps(_mm256_set1_ps(C5), b, _mm256_set1_ps(C4)),
                u,
                _mm256_fmadd_ps(_mm256_set1_ps(C3), b, _mm256_set1_ps(C2)),
            ),
            u,
            _mm256_fmadd_ps(_mm256_set1_ps(C1), b, _mm256_set1_ps(1.0)),
        );
        // j · 2^n: build 2^n in the exponent field where it is a normal number; other lanes are rare
        // (|x| > 87) and take the exact scalar route.
        let ni = _mm256_cvtps_epi32(n);
        let normal = _mm256_and_si256(
            _mm256_cmpgt_epi32(ni, _mm256_set1_epi32(-127)),
            _mm256_cmpgt_epi32(_mm256_set1_epi32(128), ni),
        );
        let pow2 = _mm256_castsi256_ps(_mm256_slli_epi32(
            _mm256_add_epi32(ni, _mm256_set1_epi32(127)),
            23,
        ));
        let res = _mm256_mul_ps(j, pow2);
        if _mm256_movemask_ps(_mm256_castsi256_ps(normal)) == 0xFF {
            return res;
        }
        let mut out = [0f32; 8];
        let (mut jv, mut nv) = ([0f32; 8], [0f32; 8]);
        // SAFETY: `jv` holds 8 values, one 256-bit store.
        unsafe { _mm256_storeu_ps(jv.as_mut_ptr(), j) };
        // SAFETY: `nv` holds 8 values.
        unsafe { _mm256_storeu_ps(nv.as_mut_ptr(), n) };
        for l in 0..8 {
            out[l] = if nv[l].abs() > 192.0 {
                if nv[l] <= 0.0 {
                    0.0
                } else {
                    f32::INFINITY
                }
            } else {
                scale_by_power_of_two(jv[l], nv[l])
            };
        }
        // SAFETY: `out` holds 8 values, one 256-bit load.
        unsafe { _mm256_loadu_ps(out.as_ptr()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polynomial_exp_is_accurate() {
        // Results in the normal range (below e^-87 they are subnormal, where relative error grows).
        for i in -1740..2000 {
            let x = i as f32 / 20.0;
            let (a, b) = (expf_poly(x), x.exp());
            if b.is_infinite() || b == 0.0 {
                assert_eq!(a, b, "{x}");
                continue;
            }
            assert!((a - b).abs() <= 4e-7 * b, "{x}: {a} vs {b}");
        }
        assert_eq!(expf_poly(-200.0), 0.0);
        assert_eq!(expf_poly(200.0), f32::INFINITY);
    }

    #[test]
    fn vector_and_scalar_agree_bit_for_bit() {
        let g0: Vec<f32> = (0..1000)
            .map(|i| ((i * 7919 % 2001) as f32 - 1000.0) / 37.0)
            .collect();
        let u: Vec<f32> = (0..1000)
            .map(|i| ((i * 104729 % 997) as f32 - 498.0) / 100.0)
            .collect();
        let mut a = g0.clone();
        swiglu_rows(&mut a, &u, 500);
        let mut b = g0.clone();
        for (row_g, row_u) in b.chunks_mut(500).zip(u.chunks(500)) {
            let split = 496;
            for (x, y) in row_g[..split].iter_mut().zip(&row_u[..split]) {
                *x = *x / (1.0 + expf_poly(0.0 - *x)) * y;
            }
            for (x, y) in row_g[split..].iter_mut().zip(&row_u[split..]) {
                *x = *x / (1.0 + glibc_exp::exp(-*x)) * y;
            }
        }
        assert_eq!(a, b);
    }
}
