//! Activations quantized to 8 bits in blocks of 32, the partner format of the quantized weight kernels,
//! with llama.cpp's numerics (Q8_0/Q8_1): `q = round_half_even(x · 127 / max|x|)`, the scale
//! `d = max|x| / 127` rounded through f16, and `s = d · Σq` (used by formats with a minimum).
//!
//! The K-quant kernels take the activations of llama.cpp's Q8_K instead (`Q8Act::quantize_super`): one
//! f32 scale per 256 values (a weight super-block), so that the sums of a super-block's sub-blocks add up
//! in integers; every block of 32 then carries its super-block's scale, and the sums of each 16 quants
//! are kept too (Q6_K has a scale per 16 weights).
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
    /// The sums of the K-quant kernels as i16 (|Σ| <= 32·127), so that two side by side are one 32-bit
    /// pair for `vpdpwssd`; made by `quantize_super` only (its presence says the scales are per 256
    /// values).
    sums16: Option<Sums16>,
    m: usize,
    cols: usize,
    /// Blocks per row.
    nb: usize,
}

impl Q8Act {
    /// The first `m` rows of `cols` values of `x`. Panics unless `cols` is a multiple of 32 and `x`
    /// holds `m × cols` values.
    pub fn quantize(x: &[f32], m: usize, cols: usize) -> Self {
        let mut a = Self::zeroed(x, m, cols, QK);
        let quantize = quantizer();
        let len = a.qs.len();
        for (blk, chunk) in x[..len].chunks_exact(QK).enumerate() {
            let amax = quantize.amax(chunk);
            let sum = quantize.scaled(chunk, inverse_scale(amax), &mut a.qs[blk * QK..][..QK]);
            let d = amax / 127.0;
            a.d[blk] = f16::from_f32(d).to_f32();
            a.s[blk] = f16::from_f32(sum as f32 * d).to_f32();
            a.qsum[blk] = sum;
        }
        a
    }

    /// As `quantize`, with one scale per 256 values (llama.cpp's Q8_K, for the K-quant kernels): the
    /// scale is kept in f32 and given to each of the super-block's blocks of 32, and the sums of each 16
    /// quants are kept as well. Panics unless `cols` is a multiple of 256 and `x` holds `m × cols`
    /// values.
    pub fn quantize_super(x: &[f32], m: usize, cols: usize) -> Self {
        let mut a = Self::zeroed(x, m, cols, SUPER);
        let mut sums = Sums16 {
            block: vec![0; a.qsum.len()],
            half: vec![0; a.qsum.len() * 2],
        };
        let quantize = quantizer();
        let len = a.qs.len();
        for (sb, chunk) in x[..len].chunks_exact(SUPER).enumerate() {
            let amax = chunk
                .chunks_exact(QK)
                .fold(0f32, |m, c| m.max(quantize.amax(c)));
            let (id, d) = (inverse_scale(amax), amax / 127.0);
            for (k, part) in chunk.chunks_exact(QK).enumerate() {
                let blk = sb * (SUPER / QK) + k;
                let out = &mut a.qs[blk * QK..(blk + 1) * QK];
                let sum = quantize.scaled(part, id, out);
                let half: i32 = out[..QK / 2].iter().map(|&q| q as i32).sum();
                a.d[blk] = d;
                a.s[blk] = sum as f32 * d;
                a.qsum[blk] = sum;
                // |Σ| <= 32·127 fits an i16.
                sums.block[blk] = sum as i16;
                sums.half[2 * blk] = half as i16;
                sums.half[2 * blk + 1] = (sum - half) as i16;
            }
        }
        a.sums16 = Some(sums);
        a
    }

    /// Zeroed activations for `m` rows of `cols` values of `x`, checked: `cols` a multiple of `unit`.
    fn zeroed(x: &[f32], m: usize, cols: usize, unit: usize) -> Self {
        assert!(
            cols.is_multiple_of(unit),
            "row length {cols} is not a multiple of {unit}"
        );
        let len = super::size(m, cols, "activations");
        assert!(
            x.len() >= len,
            "{} activations for {m} rows of {cols}",
            x.len()
        );
        let nb = cols / QK;
        Q8Act {
            qs: vec![0; len],
            d: vec![0.0; m * nb],
            s: vec![0.0; m * nb],
            qsum: vec![0; m * nb],
            sums16: None,
            m,
            cols,
            nb,
        }
    }

    /// All quants (`m × cols`, row-major).
    #[cfg(test)]
    pub fn quants(&self) -> &[i8] {
        &self.qs
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
            block16: std::array::from_fn(|r| self.sums16(i0 + r).0),
            half16: std::array::from_fn(|r| self.sums16(i0 + r).1),
        }
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

    /// `Σq` of each block of row `i` (`nb` values) and of each 16 quants (`2·nb`), or nothing unless
    /// made by `quantize_super`.
    #[inline]
    pub fn sums16(&self, i: usize) -> (&[i16], &[i16]) {
        match &self.sums16 {
            Some(s) => (
                &s.block[i * self.nb..][..self.nb],
                &s.half[i * 2 * self.nb..][..2 * self.nb],
            ),
            None => (&[], &[]),
        }
    }

    /// Whether the scales are per 256 values (`quantize_super`), also for no rows at all.
    #[inline]
    pub fn per_super_block(&self) -> bool {
        self.sums16.is_some()
    }
}

/// Rows `i0..i0 + N` of the activations, looked up (and checked) once per tile so that a kernel's block
/// loop reads block `b` of each without checks: every row holds `nb` blocks.
pub struct Rows<'a, const N: usize> {
    quants: [&'a [i8]; N],
    d: [&'a [f32]; N],
    s: [&'a [f32]; N],
    qsum: [&'a [i32]; N],
    block16: [&'a [i16]; N],
    half16: [&'a [i16]; N],
}

/// [`Q8Act::sums16`]: `Σq` of each block and of each 16 quants, row-major.
struct Sums16 {
    block: Vec<i16>,
    half: Vec<i16>,
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

    /// `Σq` of blocks `b` and `b + 1` of row `r` as a pair of i16 (block `b`'s in the low half).
    ///
    /// # Safety
    /// The activations were made by `quantize_super` and `b + 1 < nb`.
    #[inline]
    pub unsafe fn block_pair(&self, r: usize, b: usize) -> i32 {
        // SAFETY: such a row holds nb sums, so b and b + 1 are inside it (the caller's promise).
        unsafe { pair(self.block16[r].as_ptr().wrapping_add(b)) }
    }

    /// `Σq` of the two halves (16 quants each) of block `b` of row `r` as a pair of i16.
    ///
    /// # Safety
    /// The activations were made by `quantize_super` and `b < nb`.
    #[inline]
    pub unsafe fn half_pair(&self, r: usize, b: usize) -> i32 {
        // SAFETY: such a row holds 2·nb sums of 16, and 2b + 1 < 2·nb (the caller's promise).
        unsafe { pair(self.half16[r].as_ptr().wrapping_add(2 * b)) }
    }
}

/// The two i16 at `p` as one i32, the first in the low half (one 32-bit load on a little-endian CPU).
///
/// # Safety
/// `p` points at two readable i16.
#[inline]
unsafe fn pair(p: *const i16) -> i32 {
    // SAFETY: two readable i16 (the caller's promise).
    let [lo, hi] = [0, 1].map(|k| unsafe { p.wrapping_add(k).read_unaligned() });
    (lo as u16 as i32) | ((hi as i32) << 16)
}

/// Values per super-block of the K-quants (and per scale of `Q8Act::quantize_super`).
pub const SUPER: usize = 256;

/// `127 / amax`, the factor that maps values to quants, or 0 for a block of zeros.
fn inverse_scale(amax: f32) -> f32 {
    if amax != 0.0 {
        127.0 / amax
    } else {
        0.0
    }
}

/// The two steps of quantizing: the largest magnitude of 32 values, and those values quantized with an
/// inverse scale (returning the sum of the quants). A scalar and an AVX2 version, bit-identical.
#[derive(Clone, Copy)]
struct Quantizer {
    amax: fn(&[f32]) -> f32,
    scaled: fn(&[f32], f32, &mut [i8]) -> i32,
}

impl Quantizer {
    #[inline]
    fn amax(self, x: &[f32]) -> f32 {
        (self.amax)(x)
    }

    #[inline]
    fn scaled(self, x: &[f32], id: f32, out: &mut [i8]) -> i32 {
        (self.scaled)(x, id, out)
    }
}

fn quantizer() -> Quantizer {
    #[cfg(target_arch = "x86_64")]
    {
        if super::cpu::has_avx2() {
            return Quantizer {
                // SAFETY: the CPU has AVX2 and FMA (`has_avx2`), all the AVX2 functions need.
                amax: |x| unsafe { x86::amax(x) },
                // SAFETY: as above.
                scaled: |x, id, out| unsafe { x86::quantize_scaled(x, id, out) },
            };
        }
    }
    Quantizer {
        amax: amax_block,
        scaled: quantize_scaled,
    }
}

fn amax_block(x: &[f32]) -> f32 {
    x[..QK].iter().fold(0f32, |m, v| m.max(v.abs()))
}

fn quantize_scaled(x: &[f32], id: f32, out: &mut [i8]) -> i32 {
    let mut sum = 0i32;
    for (q, v) in out[..QK].iter_mut().zip(&x[..QK]) {
        let r = (v * id).round_ties_even() as i32;
        *q = r as i8;
        sum += r;
    }
    sum
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::QK;

    /// The four runs of 8 of a block of 32 values.
    ///
    /// # Safety
    /// The CPU supports AVX.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn load(x: &[f32]) -> [__m256; 4] {
        let x: &[f32; QK] = x[..QK].try_into().expect("a block of 32 values");
        std::array::from_fn(|k| {
            let run = &x[8 * k..];
            // SAFETY: `x` is 32 values, so each of its four runs of 8 is inside it.
            unsafe { _mm256_loadu_ps(run.as_ptr()) }
        })
    }

    /// `super::amax_block` on AVX2 (a maximum is exact, so the same result).
    ///
    /// # Safety
    /// The CPU supports AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn amax(x: &[f32]) -> f32 {
        // SAFETY: the CPU supports AVX (our caller's promise).
        let v = unsafe { load(x) };
        let sign = _mm256_set1_ps(-0.0);
        let mut mx = _mm256_andnot_ps(sign, v[0]);
        for vi in &v[1..] {
            mx = _mm256_max_ps(mx, _mm256_andnot_ps(sign, *vi));
        }
        let m4 = _mm_max_ps(_mm256_extractf128_ps(mx, 1), _mm256_castps256_ps128(mx));
        let m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        let m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        _mm_cvtss_f32(m4)
    }

    /// `super::quantize_scaled` on AVX2: the same results, bit for bit.
    ///
    /// # Safety
    /// The CPU supports AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn quantize_scaled(x: &[f32], id: f32, out: &mut [i8]) -> i32 {
        let out: &mut [i8; QK] = (&mut out[..QK]).try_into().expect("a block of 32 quants");
        // SAFETY: the CPU supports AVX (our caller's promise).
        let v = unsafe { load(x) };
        let id = _mm256_set1_ps(id);
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
        sum
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
            let amax = q.amax(chunk);
            assert_eq!(amax, amax_block(chunk));
            let id = inverse_scale(amax);
            assert_eq!(
                q.scaled(chunk, id, &mut a),
                quantize_scaled(chunk, id, &mut b)
            );
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

    /// One scale per 256 values: every block of a super-block carries the scale of the super-block's
    /// largest magnitude, the quants reproduce the values to half a step of it, and the sums of 16 and of
    /// 32 quants are those of the quants.
    #[test]
    fn super_blocks_share_one_scale() {
        let (m, cols) = (2, 512);
        let x: Vec<f32> = (0..m * cols)
            .map(|i| ((i * 7919 % 1001) as f32 - 500.0) / (50.0 + (i / 256) as f32))
            .collect();
        let q = Q8Act::quantize_super(&x, m, cols);
        assert!(q.per_super_block() && !Q8Act::quantize(&x, m, cols).per_super_block());
        assert!(Q8Act::quantize_super(&[], 0, cols).per_super_block());
        for i in 0..m {
            for sb in 0..cols / SUPER {
                let part = &x[i * cols + sb * SUPER..][..SUPER];
                let amax = part.iter().fold(0f32, |a, v| a.max(v.abs()));
                let d = amax / 127.0;
                for b in sb * 8..sb * 8 + 8 {
                    assert_eq!(q.d(i)[b], d, "row {i} block {b}");
                    let quants = q.block(i, b);
                    for (k, v) in x[i * cols + b * QK..][..QK].iter().enumerate() {
                        assert!((quants[k] as f32 * d - v).abs() <= d * 0.5001, "{v}");
                    }
                    let sum = |r: &[i8]| r.iter().map(|&v| v as i32).sum::<i32>();
                    assert_eq!(q.qsum(i)[b], sum(quants));
                    let (block16, half16) = q.sums16(i);
                    assert_eq!(block16[b] as i32, sum(quants));
                    assert_eq!(half16[2 * b] as i32, sum(&quants[..16]));
                    assert_eq!(half16[2 * b + 1] as i32, sum(&quants[16..]));
                    let rows = q.rows::<1>(i);
                    // SAFETY: made by quantize_super; b < nb (and b + 1 < nb for the block pair).
                    let half = unsafe { rows.half_pair(0, b) };
                    assert_eq!(
                        half,
                        (half16[2 * b] as u16 as i32) | ((half16[2 * b + 1] as i32) << 16)
                    );
                    if b + 1 < cols / QK {
                        // SAFETY: as above.
                        let pair = unsafe { rows.block_pair(0, b) };
                        assert_eq!(
                            pair,
                            (block16[b] as u16 as i32) | ((block16[b + 1] as i32) << 16)
                        );
                    }
                }
            }
        }
    }
}
