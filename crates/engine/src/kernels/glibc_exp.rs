//! `e^x` for f32 as glibc's `expf` computes it on a CPU with FMA (its `__expf_fma`, glibc 2.27 and
//! later): `x · 32/ln 2` split into an integer `k` and a remainder `r` in double precision, `2^(k/32)` from
//! a table of 32 doubles, a cubic in `r`, one rounding to f32 at the end; the multiply-adds fused where
//! GCC fuses them there. llama.cpp's attention calls the C library's `expf` once per cached position, so
//! computing it the same way, on every platform, keeps our greedy outputs comparable with a llama.cpp
//! built on glibc; and `exp8` computes eight at once, bit for bit as `exp` does, where a call per
//! position would cost a third of the decode attention.
//!
//! Constants and table from glibc's `sysdeps/ieee754/flt-32/e_exp2f_data.c` (`__exp2f_data`: `tab`,
//! `invln2_scaled`, `poly_scaled`, the shift `0x1.8p52`) and the special-case bounds of `e_expf.c`.

/// `tab[i]`: the bits of `2^(i/32)` less `i << 47`, so that adding `k << 47` to `tab[k % 32]` gives
/// `2^(k/32)`.
const TAB: [u64; 32] = [
    0x3ff0000000000000,
    0x3fefd9b0d3158574,
    0x3fefb5586cf9890f,
    0x3fef9301d0125b51,
    0x3fef72b83c7d517b,
    0x3fef54873168b9aa,
    0x3fef387a6e756238,
    0x3fef1e9df51fdee1,
    0x3fef06fe0a31b715,
    0x3feef1a7373aa9cb,
    0x3feedea64c123422,
    0x3feece086061892d,
    0x3feebfdad5362a27,
    0x3feeb42b569d4f82,
    0x3feeab07dd485429,
    0x3feea47eb03a5585,
    0x3feea09e667f3bcd,
    0x3fee9f75e8ec5f74,
    0x3feea11473eb0187,
    0x3feea589994cce13,
    0x3feeace5422aa0db,
    0x3feeb737b0cdc5e5,
    0x3feec49182a3f090,
    0x3feed503b23e255d,
    0x3feee89f995ad3ad,
    0x3feeff76f2fb5e47,
    0x3fef199bdd85529c,
    0x3fef3720dcef9069,
    0x3fef5818dcfba487,
    0x3fef7c97337b9b5f,
    0x3fefa4afa2a490da,
    0x3fefd0765b6e4540,
];

/// `32 / ln 2`.
const INV_LN2_N: f64 = f64::from_bits(0x40471547652b82fe);
/// Added and taken away to round `x · 32/ln 2` to an integer (kept in the low bits).
const SHIFT: f64 = f64::from_bits(0x4338000000000000);
/// The cubic `C0·r³ + C1·r² + C2·r + 1 ≈ 2^(r/32)`.
const C0: f64 = f64::from_bits(0x3ebc6af84b912394);
const C1: f64 = f64::from_bits(0x3f2ebfce50fac4f3);
const C2: f64 = f64::from_bits(0x3f962e42ff0c52d6);

/// Above this, `e^x` overflows f32.
const OVERFLOW: f32 = f32::from_bits(0x42b17217);
/// Below this, glibc returns 0.
const UNDERFLOW: f32 = f32::from_bits(0xc2cff1b4);
/// Below this (and not below `UNDERFLOW`), glibc returns the smallest subnormal.
const MAY_UNDERFLOW: f32 = f32::from_bits(0xc2ce8ecf);
/// `|x|` from here on (in the top 12 bits of its pattern, sign dropped) takes the special cases.
const SPECIAL_TOP: u32 = 0x42b;

/// `e^x`, bit for bit glibc's `expf` on a CPU with FMA. Always inlined, so that in the SIMD kernels,
/// compiled for FMA, its multiply-adds are instructions rather than calls to the C library's `fma`.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let bits = x.to_bits();
    if (bits >> 20) & 0x7ff >= SPECIAL_TOP {
        if x.is_nan() {
            return x + x;
        }
        if x > OVERFLOW {
            return f32::INFINITY;
        }
        if x < UNDERFLOW {
            return 0.0;
        }
        if x < MAY_UNDERFLOW {
            return f32::from_bits(1);
        }
    }
    let xd = f64::from(x);
    let shifted = INV_LN2_N.mul_add(xd, SHIFT);
    let k = shifted.to_bits();
    let r = INV_LN2_N.mul_add(xd, -(shifted - SHIFT));
    let s = f64::from_bits(TAB[(k % 32) as usize].wrapping_add(k << 47));
    let z = C0.mul_add(r, C1);
    let y = C2.mul_add(r, 1.0);
    (z.mul_add(r * r, y) * s) as f32
}

#[cfg(target_arch = "x86_64")]
pub use x86::exp8;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::*;

    /// `exp` of eight lanes, bit for bit, in eight lanes of f64.
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub fn exp8(x: __m256) -> __m256 {
        let inv = _mm512_set1_pd(INV_LN2_N);
        let shift = _mm512_set1_pd(SHIFT);
        let xd = _mm512_cvtps_pd(x);
        let shifted = _mm512_fmadd_pd(inv, xd, shift);
        let k = _mm512_castpd_si512(shifted);
        let r = _mm512_fmsub_pd(inv, xd, _mm512_sub_pd(shifted, shift));
        // `TAB[k % 32]`: the low four bits of k pick one of 16 from each half, the fifth the half.
        let t: [__m512i; 4] = std::array::from_fn(|i| {
            let at = TAB[8 * i..].as_ptr().cast();
            // SAFETY: 8 of the 32 table entries, one unaligned 512-bit load.
            unsafe { _mm512_loadu_si512(at) }
        });
        let low = _mm512_permutex2var_epi64(t[0], k, t[1]);
        let high = _mm512_permutex2var_epi64(t[2], k, t[3]);
        let upper = _mm512_test_epi64_mask(k, _mm512_set1_epi64(16));
        let tab = _mm512_mask_blend_epi64(upper, low, high);
        let s = _mm512_castsi512_pd(_mm512_add_epi64(tab, _mm512_slli_epi64::<47>(k)));
        let z = _mm512_fmadd_pd(_mm512_set1_pd(C0), r, _mm512_set1_pd(C1));
        let y = _mm512_fmadd_pd(_mm512_set1_pd(C2), r, _mm512_set1_pd(1.0));
        let y = _mm512_fmadd_pd(z, _mm512_mul_pd(r, r), y);
        let e = _mm512_cvtpd_ps(_mm512_mul_pd(y, s));
        // The special cases, as `exp` takes them (the bounds lie beyond `SPECIAL_TOP`, so lanes under
        // it keep the polynomial's result).
        let below = |bound: f32| _mm256_cmp_ps::<_CMP_LT_OQ>(x, _mm256_set1_ps(bound));
        let e = _mm256_blendv_ps(e, _mm256_set1_ps(f32::from_bits(1)), below(MAY_UNDERFLOW));
        let e = _mm256_blendv_ps(e, _mm256_setzero_ps(), below(UNDERFLOW));
        let over = _mm256_cmp_ps::<_CMP_GT_OQ>(x, _mm256_set1_ps(OVERFLOW));
        let e = _mm256_blendv_ps(e, _mm256_set1_ps(f32::INFINITY), over);
        let nan = _mm256_cmp_ps::<_CMP_UNORD_Q>(x, x);
        _mm256_blendv_ps(e, _mm256_add_ps(x, x), nan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bounds of the special cases and the 4 patterns on either side of each, the special values,
    /// then every `stride`-th f32 bit pattern (every exponent, both signs).
    #[cfg(not(miri))]
    fn inputs(stride: u32) -> impl Iterator<Item = f32> {
        let bounds = [OVERFLOW, UNDERFLOW, MAY_UNDERFLOW, 88.0, -88.0, 0.0, -0.0];
        let specials = [
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::MIN,
            f32::MAX,
        ];
        let near = bounds.into_iter().flat_map(|b| {
            (-4i32..=4).map(move |d| f32::from_bits(b.to_bits().wrapping_add_signed(d)))
        });
        let sampled = (0..u32::MAX / stride).map(move |i| f32::from_bits(i * stride));
        near.chain(specials).chain(sampled)
    }

    /// Every 97th f32 bit pattern (about 44 million values) and the special cases' neighbourhoods
    /// (`inputs`): `exp` against the C library's `expf`, which on glibc is the function it ports;
    /// elsewhere it is another good `expf`, within one f32 step.
    #[test]
    #[cfg(not(miri))]
    fn exp_is_the_c_librarys() {
        let glibc = cfg!(all(target_os = "linux", target_env = "gnu"));
        for x in inputs(97) {
            let (ours, libm) = (exp(x), x.exp());
            if x.is_nan() {
                assert!(ours.is_nan(), "exp(NaN) = {ours}");
            } else if glibc {
                assert_eq!(
                    ours.to_bits(),
                    libm.to_bits(),
                    "exp({x:e}) = {ours:e}, libm {libm:e}"
                );
            } else {
                let steps = ours.to_bits().abs_diff(libm.to_bits());
                assert!(steps <= 1, "exp({x:e}) = {ours:e}, libm {libm:e}");
            }
        }
    }

    /// `exp8` against `exp` over the same values, eight at a time.
    #[test]
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    fn eight_lanes_are_exp_bit_for_bit() {
        use std::arch::x86_64::*;
        if !super::super::cpu::has_avx512_vnni() {
            eprintln!("SKIPPED: no AVX-512 on this CPU (or capped by CODELLAMA_LSP_CPU)");
            return;
        }
        let mut xs: Vec<f32> = inputs(389).collect();
        xs.resize(xs.len().next_multiple_of(8), 1.0);
        for chunk in xs.chunks_exact(8) {
            let mut got = [0f32; 8];
            // SAFETY: eight f32, one unaligned 256-bit load.
            let x = unsafe { _mm256_loadu_ps(chunk.as_ptr()) };
            // SAFETY: the CPU has AVX-512 F, AVX2 and FMA (checked above).
            let e = unsafe { exp8(x) };
            // SAFETY: eight f32, one unaligned 256-bit store.
            unsafe { _mm256_storeu_ps(got.as_mut_ptr(), e) };
            for (&x, g) in chunk.iter().zip(got) {
                let want = exp(x);
                assert!(
                    g.to_bits() == want.to_bits() || (x.is_nan() && g.is_nan()),
                    "exp8({x:e}) = {g:e}, exp {want:e}"
                );
            }
        }
    }
}
