//! The repacked kernels on CPUs with AVX2 but without AVX-512 VNNI (Intel's laptop and desktop cores,
//! AMD before Zen 4): the same layout and bytes as the AVX-512 kernels, each group of 16 rows taken as two
//! halves of eight, one 256-bit register per half. Two forms of each kernel, differing only in how four
//! bytes are multiplied and summed: with AVX-VNNI (Intel since Alder Lake; `Vnni`), `vpdpbusd` on 256
//! bits, as the AVX-512 kernels; on plain AVX2 (`Plain`), `vpmaddubsw` (unsigned weight bytes times
//! signed activation bytes, pairs summed in i16), summed in i16 while they cannot overflow, then widened
//! by `vpmaddwd`, which also applies a K-quant sub-block's scale (against the scale in both halves of
//! each lane). The integer sums are exact and the float operations per row and block are those of the
//! AVX-512 kernels, in the same order, so all give the same results bit for bit.
//!
//! Before these kernels, AVX2 CPUs converted the K-quants to Q4_1 and Q8_0 at load (a sixth more bytes
//! for a Q4_K_M file, Q6_K's values quantized again) and decoded them with a float step per block of 32
//! per row: compute-bound, Qwen2.5-Coder 1.5B at half of the bandwidth bound.

use std::arch::x86_64::*;
use std::ops::Range;

use super::x86::{prefetch_ahead, q4_k_unpack, TILE_WEIGHT_BYTES};
use super::{
    Packed, GROUP, Q4K_QUANTS, Q4K_SCALES, Q5_0_HIGH, Q5_0_QUANTS, Q6K_D, Q6K_HIGH, Q6K_SCALES,
};
use crate::kernels::q8::{Q8Act, QK, SUPER};
use crate::kernels::SharedOut;

/// Activation rows processed together: AVX2 has sixteen registers, and a tile keeps two halves'
/// accumulators per row.
const MR: usize = 4;

/// The wide tiles of `kernel!`, which AVX2's kernels do not take (too few registers).
const WIDE: usize = 2 * MR;

/// Rows per half group (lanes of a 256-bit register of i32).
const HALF: usize = GROUP / 2;

/// Blocks of 32 per super-block.
const SUB: usize = SUPER / QK;

/// Stores a tile's results for group `g`: `acc[h][r]`, the eight of half `h` for activation row
/// `i0 + r` (fewer in the last, partial group; none for a half past the last row).
///
/// # Safety
/// `i0 + R <= x.m()` and `g < p.groups()` for the `out` of the kernels' contract, whose promise about
/// other tasks covers this group's columns.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn store<const R: usize>(
    p: &Packed,
    out: SharedOut,
    i0: usize,
    g: usize,
    acc: &[[__m256; R]; 2],
) {
    for (h, acc) in acc.iter().enumerate() {
        let first = g * GROUP + h * HALF;
        if first >= p.rows {
            return;
        }
        let n = (p.rows - first).min(HALF);
        for (r, v) in acc.iter().enumerate() {
            // SAFETY: columns first..first + n of row i0 + r are inside the output and this task's
            // alone.
            let dst = unsafe { out.slice((i0 + r) * p.rows + first, n) };
            if n == HALF {
                // SAFETY: `dst` holds 8 values, one 256-bit store.
                unsafe { _mm256_storeu_ps(dst.as_mut_ptr(), *v) };
            } else {
                let mut all = [0f32; HALF];
                // SAFETY: `all` holds 8 values.
                unsafe { _mm256_storeu_ps(all.as_mut_ptr(), *v) };
                dst.copy_from_slice(&all[..n]);
            }
        }
    }
}

/// Half `h` of the 64-byte vector at `at`.
///
/// # Safety
/// `at` points at 64 readable bytes; `h < 2`.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn half(at: *const u8, h: usize) -> __m256i {
    // SAFETY: bytes 32h..32h + 32 of the 64 at `at` (the caller's promise).
    unsafe { _mm256_loadu_si256(at.wrapping_add(32 * h).cast()) }
}

/// The f16 values of half `h` of the sixteen at `at` (row `8h + k`'s in lane `k`), as f32.
///
/// # Safety
/// `at` points at 32 readable bytes; `h < 2`.
#[inline]
#[target_feature(enable = "avx2,f16c")]
unsafe fn half_f16(at: *const u8, h: usize) -> __m256 {
    // SAFETY: bytes 16h..16h + 16 of the 32 at `at` (the caller's promise).
    _mm256_cvtph_ps(unsafe { _mm_loadu_si128(at.wrapping_add(16 * h).cast()) })
}

/// The eight bytes of half `h` of the sixteen at `at` (a byte per row).
///
/// # Safety
/// `at` points at 16 readable bytes; `h < 2`.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn half_bytes(at: *const u8, h: usize) -> __m128i {
    // SAFETY: bytes 8h..8h + 8 of the 16 at `at` (the caller's promise).
    unsafe { _mm_loadl_epi64(at.wrapping_add(8 * h).cast()) }
}

/// Eight i32 (one per row) as the i16 pair `(v, v)` in each lane, for `vpmaddwd`: `v` fits an i16.
#[inline]
#[target_feature(enable = "avx2")]
fn both_halves(v: __m256i) -> __m256i {
    _mm256_or_si256(
        _mm256_and_si256(v, _mm256_set1_epi32(0xFFFF)),
        _mm256_slli_epi32(v, 16),
    )
}

/// Quad `q` (four activation bytes) of the 32 quants at `a`, in every lane.
///
/// # Safety
/// `a` points at 32 readable bytes; `q < 8`.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn quad(a: *const i8, q: usize) -> __m256i {
    // SAFETY: quad q of the 32 bytes at `a` (the caller's promise).
    _mm256_set1_epi32(unsafe { a.cast::<i32>().wrapping_add(q).read_unaligned() })
}

/// Quads `t` and `t + 4` (`t < 4`) of the 32 quants at `a`, each in every lane.
///
/// # Safety
/// `a` points at 32 readable bytes.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn quads_pair(a: *const i8, t: usize) -> [__m256i; 2] {
    debug_assert!(t < 4);
    // SAFETY: quads t and t + 4 (< 8) of the 32 bytes at `a` (the caller's promise).
    [t, t + 4].map(|q| unsafe { quad(a, q) })
}

/// As the AVX-512 `with_fifth_bits`, on a half vector.
#[inline]
#[target_feature(enable = "avx2")]
fn with_fifth_bits([lo, hi]: [__m256i; 2], fifth: __m256i, t: usize) -> [__m256i; 2] {
    let bit = _mm256_set1_epi8(0x10);
    let up = _mm256_sll_epi16(fifth, _mm_cvtsi32_si128(4 - t as i32));
    let down = _mm256_srl_epi16(fifth, _mm_cvtsi32_si128(t as i32));
    [
        _mm256_or_si256(lo, _mm256_and_si256(up, bit)),
        _mm256_or_si256(hi, _mm256_and_si256(down, bit)),
    ]
}

/// Two sub-blocks' bytes (eight rows each) as eight pairs of i16, row `r`'s in lane `r`, for
/// `vpmaddwd` against a pair of activation sums; `SIGNED` for the Q6_K scales.
#[inline]
#[target_feature(enable = "avx2")]
fn byte_pairs<const SIGNED: bool>(a: __m128i, b: __m128i) -> __m256i {
    let pairs = _mm_unpacklo_epi8(a, b);
    if SIGNED {
        _mm256_cvtepi8_epi16(pairs)
    } else {
        _mm256_cvtepu8_epi16(pairs)
    }
}

/// Bits `2t..2t + 2` of each byte of `h` moved to bits 4 and 5 (as the AVX-512 `q6_k_high`).
#[inline]
#[target_feature(enable = "avx2")]
fn q6_k_high(h: __m256i, t: usize) -> __m256i {
    let shifted = match t {
        0 => _mm256_slli_epi16(h, 4),
        1 => _mm256_slli_epi16(h, 2),
        2 => h,
        _ => _mm256_srli_epi16(h, 2),
    };
    _mm256_and_si256(shifted, _mm256_set1_epi8(0x30))
}

/// The kernels of one form: module `$module`, compiled for `$features`, multiplying and summing with
/// `$ops` (`Plain` or `Vnni`, whose functions take the same integers to the same sums).
macro_rules! isa_kernels {
    ($(#[$doc:meta])* $module:ident, $features:literal, $ops:ident) => {
        $(#[$doc])*
        pub mod $module {
            use super::*;

            kernel!(
                $features,
                /// Safety contract of the kernels and their tiles: the CPU supports AVX2, FMA and F16C (and
                /// AVX-VNNI for `vnni`'s); `p` is of the kernel's kind; `x` has the row length of `p` (and,
                /// for the K-quants, one scale per super-block); `groups` are groups of `p`; `out` holds
                /// `x.m() × p.rows()` values, and no other task writes the columns of `groups` at the same
                /// time.
                ///
                /// # Safety
                /// As stated above.
                q4_1,
                q4_tile,
                false,
                true,
                false
            );

            kernel!(
                $features,
                /// # Safety
                /// As for `q4_1`.
                q4_0,
                q4_tile,
                false,
                false,
                false
            );

            kernel!(
                $features,
                /// # Safety
                /// As for `q4_1`.
                q5_0,
                q4_tile,
                false,
                false,
                true
            );

            kernel!(
                $features,
                /// # Safety
                /// As for `q4_1`.
                q8_0,
                q8_0_tile,
                false
            );

            kernel!(
                $features,
                /// # Safety
                /// As for `q4_1`.
                q4_k,
                q4_k_tile,
                false
            );

            kernel!(
                $features,
                /// # Safety
                /// As for `q4_1`.
                q6_k,
                q6_k_tile,
                false
            );

            /// `R` activation rows against one group of 16 weight rows at a time, for Q4_1 (`MIN`), Q4_0 and
            /// Q5_0 (`HIGH`), as the AVX-512 `q4_tile`. The products of the low and of the high nibbles are
            /// summed apart (in i16 on plain AVX2: at most 8·31·127 per half lane).
            ///
            /// # Safety
            /// As for `q4_1`, with `i0 + R <= x.m()`.
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn q4_tile<const R: usize, const FETCH: bool, const MIN: bool, const HIGH: bool>(
                p: &Packed,
                x: &Q8Act,
                groups: Range<usize>,
                i0: usize,
                out: SharedOut,
            ) {
                let nb = x.nb();
                let rows = x.rows::<R>(i0);
                let block_bytes = p.kind.group_block_bytes();
                let low = _mm256_set1_epi8(0x0F);
                let quants = match (MIN, HIGH) {
                    (true, _) => 64,
                    (false, true) => Q5_0_QUANTS,
                    (false, false) => 32,
                };
                let offset = if HIGH { 16 } else { 8 };
                for g in groups {
                    let mut acc = [[_mm256_setzero_ps(); R]; 2];
                    for b in 0..nb {
                        // SAFETY: g < groups.end <= p.groups() and b < nb, the blocks per row of `p`
                        // (`Packed::check`).
                        let blk = unsafe { p.block(g, b) };
                        if FETCH {
                            prefetch_ahead(blk, block_bytes, 0, 1);
                        }
                        for (h, acc) in acc.iter_mut().enumerate() {
                            let mut sum = [[_mm256_setzero_si256(); 2]; R];
                            for t in 0..4 {
                                // SAFETY: half h of vector t of the four, at `quants + 64·t` of the block.
                                let v = unsafe { half(blk.wrapping_add(quants + 64 * t), h) };
                                let mut lo = _mm256_and_si256(v, low);
                                let mut hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
                                if HIGH {
                                    // SAFETY: half h of the fifth bits' vector of a Q5_0 block.
                                    let fifth = unsafe { half(blk.wrapping_add(Q5_0_HIGH), h) };
                                    [lo, hi] = with_fifth_bits([lo, hi], fifth, t);
                                }
                                for (r, s) in sum.iter_mut().enumerate() {
                                    let a = rows.quants(r, b);
                                    // SAFETY: b < nb, so block b's 32 quants lie inside row r; t + 4 < 8.
                                    let [qa, qb] = unsafe { quads_pair(a, t) };
                                    s[0] = $ops::dot(s[0], lo, qa);
                                    s[1] = $ops::dot(s[1], hi, qb);
                                }
                            }
                            // SAFETY: d, 32 bytes at the start of the block.
                            let dw = unsafe { half_f16(blk, h) };
                            for (r, (s, acc)) in sum.iter().zip(acc.iter_mut()).enumerate() {
                                let mut isum = _mm256_add_epi32($ops::total(s[0]), $ops::total(s[1]));
                                if !MIN {
                                    // SAFETY: b < nb.
                                    let qsum = unsafe { rows.qsum(r, b) };
                                    isum = _mm256_sub_epi32(isum, _mm256_set1_epi32(offset * qsum));
                                }
                                // SAFETY: b < nb.
                                let scale = _mm256_mul_ps(dw, _mm256_set1_ps(unsafe { rows.d(r, b) }));
                                *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), scale, *acc);
                                if MIN {
                                    // SAFETY: m, 32 bytes at offset 32 of a Q4_1 block.
                                    let mw = unsafe { half_f16(blk.wrapping_add(32), h) };
                                    // SAFETY: b < nb.
                                    let sa = unsafe { rows.s(r, b) };
                                    *acc = _mm256_fmadd_ps(mw, _mm256_set1_ps(sa), *acc);
                                }
                            }
                        }
                    }
                    // SAFETY: i0 + R <= m and g is one of this call's groups.
                    unsafe { store(p, out, i0, g, &acc) };
                }
            }

            /// As `q4_tile`, for Q8_0 weights stored as `w + 128`: taken back to signed bytes, whose
            /// magnitudes multiply the activations with the weights' signs (`vpmaddubsw` is unsigned ×
            /// signed; a pair of products is at most 2·128·127), so no offset is left to take off.
            ///
            /// # Safety
            /// As for `q4_1`, with `i0 + R <= x.m()`.
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn q8_0_tile<const R: usize, const FETCH: bool>(
                p: &Packed,
                x: &Q8Act,
                groups: Range<usize>,
                i0: usize,
                out: SharedOut,
            ) {
                let nb = x.nb();
                let rows = x.rows::<R>(i0);
                let block_bytes = p.kind.group_block_bytes();
                let flip = _mm256_set1_epi8(i8::MIN);
                for g in groups {
                    let mut acc = [[_mm256_setzero_ps(); R]; 2];
                    for b in 0..nb {
                        // SAFETY: g < groups.end <= p.groups() and b < nb (`Packed::check`).
                        let blk = unsafe { p.block(g, b) };
                        if FETCH {
                            prefetch_ahead(blk, block_bytes, 0, 1);
                        }
                        for (h, acc) in acc.iter_mut().enumerate() {
                            // Two chains per row (even and odd vectors), for the latency of `vpdpbusd`.
                            let mut sum = [[_mm256_setzero_si256(); 2]; R];
                            for q in 0..8 {
                                // SAFETY: half h of vector q of the eight, at offset 32 + 64·q.
                                let stored = unsafe { half(blk.wrapping_add(32 + 64 * q), h) };
                                let w = _mm256_xor_si256(stored, flip);
                                let magnitude = _mm256_abs_epi8(w);
                                for (r, s) in sum.iter_mut().enumerate() {
                                    // SAFETY: b < nb, so block b's 32 quants lie inside row r; q < 8.
                                    let a = unsafe { quad(rows.quants(r, b), q) };
                                    let signed = _mm256_sign_epi8(a, w);
                                    s[q & 1] = $ops::dot_wide(s[q & 1], magnitude, signed);
                                }
                            }
                            // SAFETY: d, 32 bytes at the start of the block.
                            let dw = unsafe { half_f16(blk, h) };
                            for (r, (s, acc)) in sum.iter().zip(acc.iter_mut()).enumerate() {
                                // SAFETY: b < nb.
                                let scale = _mm256_mul_ps(dw, _mm256_set1_ps(unsafe { rows.d(r, b) }));
                                let isum = _mm256_add_epi32(s[0], s[1]);
                                *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), scale, *acc);
                            }
                        }
                    }
                    // SAFETY: i0 + R <= m and g is one of this call's groups.
                    unsafe { store(p, out, i0, g, &acc) };
                }
            }

            /// `R` activation rows against one group of 16 Q4_K weight rows at a time, as the AVX-512
            /// `q4_k_tile`: per half, super-block, sub-block and row, the products of the low and of the
            /// high nibbles summed apart (in i16 on plain AVX2: at most 8·15·127 per half lane), times
            /// the sub-block's scale; the minimums times the activations' sums two sub-blocks at a time.
            ///
            /// # Safety
            /// As for `q4_k`, with `i0 + R <= x.m()`.
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn q4_k_tile<const R: usize, const FETCH: bool>(
                p: &Packed,
                x: &Q8Act,
                groups: Range<usize>,
                i0: usize,
                out: SharedOut,
            ) {
                let nsb = x.nb() / SUB;
                let rows = x.rows::<R>(i0);
                let block_bytes = p.kind.group_block_bytes();
                let low = _mm256_set1_epi8(0x0F);
                for g in groups {
                    let mut acc = [[_mm256_setzero_ps(); R]; 2];
                    for sb in 0..nsb {
                        // SAFETY: (each of the R) sb·8 < nb: the super-block's scale, on each of its blocks.
                        let da: [f32; R] = std::array::from_fn(|r| unsafe { rows.d(r, sb * SUB) });
                        // SAFETY: g < groups.end <= p.groups() and sb < the super-blocks per row of `p`.
                        let blk = unsafe { p.block(g, sb) };
                        for (h, acc) in acc.iter_mut().enumerate() {
                            let mut isum = [_mm256_setzero_si256(); R];
                            let mut mins = [_mm_setzero_si128(); SUB];
                            for (j, min) in mins.iter_mut().enumerate() {
                                if FETCH && h == 0 {
                                    // Spread over the sub-blocks, as the AVX-512 kernels.
                                    prefetch_ahead(blk, block_bytes, j, SUB);
                                }
                                let (sc, m) = q4_k_unpack(
                                    // SAFETY: half h of scale byte k (< 12) of the group block's
                                    // rows, inside the Q4_K group block.
                                    |k| unsafe { half_bytes(blk.wrapping_add(Q4K_SCALES + 16 * k), h) },
                                    j,
                                );
                                let sc = _mm256_cvtepu8_epi32(sc);
                                *min = m;
                                // Two chains per row (low and high nibbles), for the latency of
                                // `vpdpbusd`.
                                let mut sum = [[_mm256_setzero_si256(); 2]; R];
                                for t in 0..4 {
                                    let at = Q4K_QUANTS + 256 * j + 64 * t;
                                    // SAFETY: half h of vector t of sub-block j.
                                    let v = unsafe { half(blk.wrapping_add(at), h) };
                                    let lo = _mm256_and_si256(v, low);
                                    let hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
                                    for (r, s) in sum.iter_mut().enumerate() {
                                        let a = rows.quants(r, sb * SUB + j);
                                        // SAFETY: block sb·8 + j < nb, inside row r; t + 4 < 8.
                                        let [qa, qb] = unsafe { quads_pair(a, t) };
                                        s[0] = $ops::dot(s[0], lo, qa);
                                        s[1] = $ops::dot(s[1], hi, qb);
                                    }
                                }
                                for (isum, s) in isum.iter_mut().zip(&sum) {
                                    let scaled = $ops::scaled_pair(s[0], s[1], sc);
                                    *isum = _mm256_add_epi32(*isum, scaled);
                                }
                            }
                            let mut msum = [_mm256_setzero_si256(); R];
                            for k in 0..SUB / 2 {
                                let pairs = byte_pairs::<false>(mins[2 * k], mins[2 * k + 1]);
                                for (r, msum) in msum.iter_mut().enumerate() {
                                    // SAFETY: blocks b and b + 1 < nb, and `x` has i16 sums (our caller's
                                    // promise).
                                    let sums = unsafe { rows.block_pair(r, sb * SUB + 2 * k) };
                                    let terms = _mm256_madd_epi16(pairs, _mm256_set1_epi32(sums));
                                    *msum = _mm256_add_epi32(*msum, terms);
                                }
                            }
                            // SAFETY: d, 32 bytes at the start of the group block.
                            let dw = unsafe { half_f16(blk, h) };
                            // SAFETY: dmin, 32 bytes at offset 32.
                            let dmw = unsafe { half_f16(blk.wrapping_add(32), h) };
                            for r in 0..R {
                                let a = _mm256_set1_ps(da[r]);
                                let (scale, mscale) = (_mm256_mul_ps(dw, a), _mm256_mul_ps(dmw, a));
                                acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[r]), scale, acc[r]);
                                acc[r] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(msum[r]), mscale, acc[r]);
                            }
                        }
                    }
                    // SAFETY: i0 + R <= m and g is one of this call's groups.
                    unsafe { store(p, out, i0, g, &acc) };
                }
            }

            /// `R` activation rows against one group of 16 Q6_K weight rows at a time, as the AVX-512
            /// `q6_k_tile`: per half and sub-block of 16, `Σ(q + 32)·a` in i16 two quads at a time (at most
            /// 4·63·127), times the signed scale by `vpmaddwd`; `-32·scale·Σa` added the same way.
            ///
            /// # Safety
            /// As for `q6_k`, with `i0 + R <= x.m()`.
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn q6_k_tile<const R: usize, const FETCH: bool>(
                p: &Packed,
                x: &Q8Act,
                groups: Range<usize>,
                i0: usize,
                out: SharedOut,
            ) {
                let nsb = x.nb() / SUB;
                let rows = x.rows::<R>(i0);
                let block_bytes = p.kind.group_block_bytes();
                let low = _mm256_set1_epi8(0x0F);
                for g in groups {
                    let mut acc = [[_mm256_setzero_ps(); R]; 2];
                    for sb in 0..nsb {
                        // SAFETY: (each of the R) sb·8 < nb: the super-block's scale, on each of its blocks.
                        let da: [f32; R] = std::array::from_fn(|r| unsafe { rows.d(r, sb * SUB) });
                        // SAFETY: g < groups.end <= p.groups() and sb < the super-blocks per row of `p`.
                        let blk = unsafe { p.block(g, sb) };
                        for (h, acc) in acc.iter_mut().enumerate() {
                            let mut isum = [_mm256_setzero_si256(); R];
                            for c in 0..SUB {
                                if FETCH && h == 0 {
                                    // Spread over the blocks, as the AVX-512 kernels.
                                    prefetch_ahead(blk, block_bytes, c, SUB);
                                }
                                let high = blk.wrapping_add(Q6K_HIGH + 128 * c);
                                // SAFETY: half h of the two high-bit vectors of block c.
                                let [h0, h1] = [0, 64].map(|at| unsafe { half(high.wrapping_add(at), h) });
                                // SAFETY: half h of the scales of sub-blocks 2c and 2c + 1.
                                let bytes: [__m128i; 2] = std::array::from_fn(|k| unsafe {
                                    half_bytes(blk.wrapping_add(Q6K_SCALES + 16 * (2 * c + k)), h)
                                });
                                let scales = bytes.map(|b| _mm256_cvtepi8_epi32(b));
                                // The offset: -32·scale·Σa of both sub-blocks in one `vpmaddwd` per row.
                                let offsets = _mm256_sub_epi16(
                                    _mm256_setzero_si256(),
                                    _mm256_slli_epi16(byte_pairs::<true>(bytes[0], bytes[1]), 5),
                                );
                                let mut sum = [[_mm256_setzero_si256(); 4]; R];
                                for t in 0..4 {
                                    // SAFETY: half h of low-bit vector t of block c, at 256·c + 64·t.
                                    let v = unsafe { half(blk.wrapping_add(256 * c + 64 * t), h) };
                                    let lo = _mm256_or_si256(_mm256_and_si256(v, low), q6_k_high(h0, t));
                                    let hi = _mm256_or_si256(
                                        _mm256_and_si256(_mm256_srli_epi16(v, 4), low),
                                        q6_k_high(h1, t),
                                    );
                                    for (r, s) in sum.iter_mut().enumerate() {
                                        let a = rows.quants(r, sb * SUB + c);
                                        // SAFETY: block sb·8 + c < nb, inside row r; t + 4 < 8.
                                        let [qa, qb] = unsafe { quads_pair(a, t) };
                                        s[t / 2] = $ops::dot(s[t / 2], lo, qa);
                                        s[2 + t / 2] = $ops::dot(s[2 + t / 2], hi, qb);
                                    }
                                }
                                for (r, (isum, s)) in isum.iter_mut().zip(&sum).enumerate() {
                                    // SAFETY: block sb·8 + c < nb, and `x` has i16 sums (our caller's
                                    // promise).
                                    let sums = unsafe { rows.half_pair(r, sb * SUB + c) };
                                    let offset = _mm256_madd_epi16(offsets, _mm256_set1_epi32(sums));
                                    let first = $ops::scaled_pair(s[0], s[1], scales[0]);
                                    let second = $ops::scaled_pair(s[2], s[3], scales[1]);
                                    let total = _mm256_add_epi32(offset, _mm256_add_epi32(first, second));
                                    *isum = _mm256_add_epi32(*isum, total);
                                }
                            }
                            // SAFETY: d, 32 bytes.
                            let dw = unsafe { half_f16(blk.wrapping_add(Q6K_D), h) };
                            for r in 0..R {
                                let scale = _mm256_mul_ps(dw, _mm256_set1_ps(da[r]));
                                acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[r]), scale, acc[r]);
                            }
                        }
                    }
                    // SAFETY: i0 + R <= m and g is one of this call's groups.
                    unsafe { store(p, out, i0, g, &acc) };
                }
            }
        }
    };
}

isa_kernels!(
    /// The kernels for plain AVX2.
    plain,
    "avx2,fma,f16c",
    Plain
);

isa_kernels!(
    /// The kernels for AVX2 with AVX-VNNI.
    vnni,
    "avx2,fma,f16c,avxvnni",
    Vnni
);

/// `vpmaddubsw` products summed in i16, widened by `vpmaddwd` (plain AVX2). A lane of `dot`'s
/// accumulator holds two i16 sums; callers add at most as many products as fit them.
struct Plain;

impl Plain {
    /// `acc` plus the products of the four unsigned bytes of each lane of `w` and the signed bytes of
    /// `a`, in two i16 per lane.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn dot(acc: __m256i, w: __m256i, a: __m256i) -> __m256i {
        _mm256_add_epi16(acc, _mm256_maddubs_epi16(w, a))
    }

    /// `dot` into an i32 per lane (`acc` is one), for products too large to add up in i16.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn dot_wide(acc: __m256i, w: __m256i, a: __m256i) -> __m256i {
        _mm256_add_epi32(acc, Self::total(_mm256_maddubs_epi16(w, a)))
    }

    /// The sum of `dot`'s accumulator in each lane, as an i32.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn total(acc: __m256i) -> __m256i {
        _mm256_madd_epi16(acc, _mm256_set1_epi16(1))
    }

    /// `total(a) + total(b)` times `scale` (an i32 per lane that fits an i16).
    #[inline]
    #[target_feature(enable = "avx2")]
    fn scaled_pair(a: __m256i, b: __m256i, scale: __m256i) -> __m256i {
        let scale = both_halves(scale);
        _mm256_add_epi32(_mm256_madd_epi16(a, scale), _mm256_madd_epi16(b, scale))
    }
}

/// `vpdpbusd` on 256 bits (AVX-VNNI): every accumulator holds an i32 per lane, so the operations are
/// `Plain`'s with nothing left to widen.
struct Vnni;

impl Vnni {
    /// As `Plain::dot`.
    #[inline]
    #[target_feature(enable = "avx2,avxvnni")]
    fn dot(acc: __m256i, w: __m256i, a: __m256i) -> __m256i {
        _mm256_dpbusd_avx_epi32(acc, w, a)
    }

    /// As `Plain::dot_wide`.
    #[inline]
    #[target_feature(enable = "avx2,avxvnni")]
    fn dot_wide(acc: __m256i, w: __m256i, a: __m256i) -> __m256i {
        Self::dot(acc, w, a)
    }

    /// As `Plain::total`.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn total(acc: __m256i) -> __m256i {
        acc
    }

    /// As `Plain::scaled_pair`.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn scaled_pair(a: __m256i, b: __m256i, scale: __m256i) -> __m256i {
        _mm256_mullo_epi32(_mm256_add_epi32(a, b), scale)
    }
}
