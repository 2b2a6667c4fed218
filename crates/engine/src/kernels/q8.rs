//! Activations quantized to 8 bits in blocks of 32, the partner format of the quantized weight kernels,
//! with llama.cpp's numerics (Q8_0/Q8_1): `q = round_half_even(x · 127 / max|x|)`, the scale
//! `d = max|x| / 127` rounded through f16, and `s = d · Σq` (used by formats with a minimum).
//!
//! The layout is planar so SIMD kernels can load two blocks of quants with one 64-byte load: all quants
//! of a row are contiguous, and the per-block scale, scaled sum and integer sum live in their own arrays.

use half::f16;

pub const QK: usize = 32;

/// Quantized activations. The fields are private so that the kernels can rely on their sizes:
/// `m × cols` quants and `m × nb` of each per-block value, `cols = 32 · nb`.
pub struct Q8Act {
    /// `m × cols` quants, row-major.
    qs: Vec<i8>,
    /// `m × nb` scales.
    d: Vec<f32>,
    /// `m × nb` values of `d · Σq`.
    s: Vec<f32>,
    /// `m × nb` values of `Σq`.
    qsum: Vec<i32>,
    m: usize,
    cols: usize,
    /// Blocks per row.
    nb: usize,
}

impl Q8Act {
    /// The first `m` rows of `cols` values of `x`. Panics unless `cols` is a multiple of 32 and `x`
    /// holds `m × cols` values.
    pub fn quantize(x: &[f32], m: usize, cols: usize) -> Self {
        assert!(
            cols.is_multiple_of(QK),
            "row length {cols} is not a multiple of {QK}"
        );
        let len = super::size(m, cols, "activations");
        assert!(
            x.len() >= len,
            "{} activations for {m} rows of {cols}",
            x.len()
        );
        let nb = cols / QK;
        let mut a = Q8Act {
            qs: vec![0; len],
            d: vec![0.0; m * nb],
            s: vec![0.0; m * nb],
            qsum: vec![0; m * nb],
            m,
            cols,
            nb,
        };
        let quantize = quantizer();
        for (blk, chunk) in x[..len].chunks_exact(QK).enumerate() {
            let (d, sum) = quantize(chunk, &mut a.qs[blk * QK..(blk + 1) * QK]);
            a.d[blk] = f16::from_f32(d).to_f32();
            a.s[blk] = f16::from_f32(sum as f32 * d).to_f32();
            a.qsum[blk] = sum;
        }
        a
    }

    /// Activation rows.
    #[inline]
    pub fn m(&self) -> usize {
        self.m
    }

    /// Values per row.
    #[inline]
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Blocks per row.
    #[inline]
    pub fn nb(&self) -> usize {
        self.nb
    }

    /// The quants of row `i`.
    #[inline]
    pub fn row(&self, i: usize) -> &[i8] {
        &self.qs[i * self.cols..][..self.cols]
    }

    /// The quants of block `b` of row `i`.
    #[inline]
    pub fn block(&self, i: usize, b: usize) -> &[i8] {
        &self.qs[i * self.cols + b * QK..][..QK]
    }

    /// Rows `i0..i0 + N` (panics unless they exist).
    #[inline]
    pub fn rows<const N: usize>(&self, i0: usize) -> Rows<'_, N> {
        Rows {
            quants: std::array::from_fn(|r| self.row(i0 + r)),
            d: std::array::from_fn(|r| self.d(i0 + r)),
            s: std::array::from_fn(|r| self.s(i0 + r)),
            qsum: std::array::from_fn(|r| self.qsum(i0 + r)),
        }
    }

    /// All quants (`m × cols`, row-major).
    #[inline]
    pub fn quants(&self) -> &[i8] {
        &self.qs
    }

    /// The scales of row `i`'s blocks.
    #[inline]
    pub fn d(&self, i: usize) -> &[f32] {
        &self.d[i * self.nb..][..self.nb]
    }

    /// `d · Σq` of row `i`'s blocks.
    #[inline]
    pub fn s(&self, i: usize) -> &[f32] {
        &self.s[i * self.nb..][..self.nb]
    }

    /// `Σq` of row `i`'s blocks.
    #[inline]
    pub fn qsum(&self, i: usize) -> &[i32] {
        &self.qsum[i * self.nb..][..self.nb]
    }
}

/// Rows `i0..i0 + N` of the activations, looked up (and checked) once per tile so that a kernel's block
/// loop reads block `b` of each without checks: every row holds `nb` blocks.
pub struct Rows<'a, const N: usize> {
    quants: [&'a [i8]; N],
    d: [&'a [f32]; N],
    s: [&'a [f32]; N],
    qsum: [&'a [i32]; N],
}

impl<const N: usize> Rows<'_, N> {
    /// The start of block `b` of row `r` (32 quants when `b < nb`).
    #[inline]
    pub fn quants(&self, r: usize, b: usize) -> *const i8 {
        self.quants[r].as_ptr().wrapping_add(b * QK)
    }

    /// The scale of block `b` of row `r`.
    ///
    /// # Safety
    /// `b < nb`.
    #[inline]
    pub unsafe fn d(&self, r: usize, b: usize) -> f32 {
        // SAFETY: row r holds nb scales and b < nb (the caller's promise).
        unsafe { *self.d[r].get_unchecked(b) }
    }

    /// `d · Σq` of block `b` of row `r`.
    ///
    /// # Safety
    /// `b < nb`.
    #[inline]
    pub unsafe fn s(&self, r: usize, b: usize) -> f32 {
        // SAFETY: as for `d`.
        unsafe { *self.s[r].get_unchecked(b) }
    }

    /// `Σq` of block `b` of row `r`.
    ///
    /// # Safety
    /// `b < nb`.
    #[inline]
    pub unsafe fn qsum(&self, r: usize, b: usize) -> i32 {
        // SAFETY: as for `d`.
        unsafe { *self.qsum[r].get_unchecked(b) }
    }
}

/// Quantizes 32 values into `out`; returns the unrounded scale and the sum of the quants.
type Quantizer = fn(&[f32], &mut [i8]) -> (f32, i32);

fn quantizer() -> Quantizer {
    #[cfg(target_arch = "x86_64")]
    {
        if super::cpu::has_avx2() {
            // SAFETY: the CPU has AVX2 and FMA (`has_avx2`), all `quantize_block` needs.
            return |x, out| unsafe { x86::quantize_block(x, out) };
        }
    }
    quantize_block
}

fn quantize_block(x: &[f32], out: &mut [i8]) -> (f32, i32) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let mut sum = 0i32;
    for (q, v) in out.iter_mut().zip(x) {
        let r = (v * id).round_ties_even() as i32;
        *q = r as i8;
        sum += r;
    }
    (d, sum)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::QK;

    /// `super::quantize_block` on AVX2: the same results, bit for bit.
    ///
    /// # Safety
    /// The CPU supports AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn quantize_block(x: &[f32], out: &mut [i8]) -> (f32, i32) {
        let x: &[f32; QK] = x[..QK].try_into().expect("a block of 32 values");
        let out: &mut [i8; QK] = (&mut out[..QK]).try_into().expect("a block of 32 quants");
        let v: [__m256; 4] = std::array::from_fn(|k| {
            let run = &x[8 * k..];
            // SAFETY: `x` is 32 values, so each of its four runs of 8 is inside it.
            unsafe { _mm256_loadu_ps(run.as_ptr()) }
        });
        let sign = _mm256_set1_ps(-0.0);
        let mut mx = _mm256_andnot_ps(sign, v[0]);
        for vi in &v[1..] {
            mx = _mm256_max_ps(mx, _mm256_andnot_ps(sign, *vi));
        }
        let m4 = _mm_max_ps(_mm256_extractf128_ps(mx, 1), _mm256_castps256_ps128(mx));
        let m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        let m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        let amax = _mm_cvtss_f32(m4);
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
        // SAFETY: `out` is 32 bytes, one 256-bit store.
        unsafe { _mm256_storeu_si256(out.as_mut_ptr().cast::<__m256i>(), bytes) };
        (amax / 127.0, sum)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simd_quantization_equals_scalar() {
        let x: Vec<f32> = (0..320)
            .map(|i| ((i * 7919 % 1001) as f32 - 500.0) / 123.0)
            .collect();
        let q = quantizer();
        for chunk in x.chunks_exact(QK) {
            let (mut a, mut b) = ([0i8; QK], [0i8; QK]);
            assert_eq!(q(chunk, &mut a), quantize_block(chunk, &mut b));
            assert_eq!(a, b);
        }
    }

    #[test]
    fn blocks_round_trip_closely() {
        let x: Vec<f32> = (0..64).map(|i| (i as f32 - 31.5) / 10.0).collect();
        let q = Q8Act::quantize(&x, 2, 32);
        for i in 0..2 {
            for (k, v) in x[i * 32..(i + 1) * 32].iter().enumerate() {
                assert!(
                    (q.block(i, 0)[k] as f32 * q.d(i)[0] - v).abs() < 0.02,
                    "{v}"
                );
            }
            let sum: f32 = x[i * 32..(i + 1) * 32].iter().sum();
            assert!((q.s(i)[0] - sum).abs() < 0.2, "{} vs {sum}", q.s(i)[0]);
            assert_eq!(
                q.qsum(i)[0],
                q.block(i, 0).iter().map(|&v| v as i32).sum::<i32>()
            );
        }
    }
}
