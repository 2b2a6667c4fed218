//! Q4_1 weights (blocks of 32: f16 scale `d`, f16 minimum `m`, 16 bytes of nibbles) times Q8
//! activations. Value `j < 16` of a block is the low nibble of byte `j`, value `j + 16` its high
//! nibble, and a weight is `d·q + m`, so a block's dot product is `d·dₐ·Σ q·qₐ + m·sₐ`.
//!
//! Three implementations of the same tile: AVX-512 VNNI (two blocks per 512-bit register, `vpdpbusd`),
//! AVX2 (one block per register, `vpmaddubsw`), and portable scalar code. The minimum term is folded
//! into the vector accumulator as `m·(sₐ/8)` in each of a block's 8 lanes, which sums back exactly.

use std::ops::Range;

use half::f16;

use super::q8::QK;
use super::tiled::{for_tiles, scalar_tile, Product};

pub const BLOCK_BYTES: usize = 20;

super::tiled::variants!();

pub fn range_scalar(p: &Product, rows: Range<usize>) {
    for_tiles!(p, rows, 4, 4, tile_scalar)
}

fn tile_scalar<const NR: usize, const MR: usize>(p: &Product, j0: usize, i0: usize) {
    let x = p.x;
    scalar_tile::<NR, MR>(p, j0, i0, BLOCK_BYTES, |blk, i, b| {
        let d = f16::from_le_bytes([blk[0], blk[1]]).to_f32();
        let m = f16::from_le_bytes([blk[2], blk[3]]).to_f32();
        let a = x.block(i, b);
        let mut isum = 0i32;
        for j in 0..QK / 2 {
            isum += (blk[4 + j] & 0x0F) as i32 * a[j] as i32;
            isum += (blk[4 + j] >> 4) as i32 * a[j + QK / 2] as i32;
        }
        d * x.d[i * x.nb + b] * isum as f32 + m * x.s[i * x.nb + b]
    })
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;
    use std::ops::Range;

    use super::super::float::x86::hsum;
    use super::super::tiled::{for_tiles, Product};
    use super::BLOCK_BYTES;

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    pub unsafe fn range_avx512(p: &Product, rows: Range<usize>) {
        for_tiles!(p, rows, 4, 4, tile_avx512)
    }

    /// `[a; 8] ++ [b; 8]`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn pair(a: f32, b: f32) -> __m512 {
        _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(a), _mm512_set1_ps(b))
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn tile_avx512<const NR: usize, const MR: usize>(p: &Product, j0: usize, i0: usize) {
        let x = p.x;
        let nb = x.nb;
        let w: [*const u8; NR] = std::array::from_fn(|c| p.row(j0 + c));
        let qa_row: [*const i8; MR] = std::array::from_fn(|r| x.qs.as_ptr().add((i0 + r) * x.cols));
        let d_row: [*const f32; MR] = std::array::from_fn(|r| x.d.as_ptr().add((i0 + r) * nb));
        let s_row: [*const f32; MR] = std::array::from_fn(|r| x.s.as_ptr().add((i0 + r) * nb));
        let low = _mm256_set1_epi8(0x0F);
        let mut acc = [[_mm512_setzero_ps(); MR]; NR];
        let mut b = 0;
        while b + 2 <= nb {
            let mut qa = [_mm512_setzero_si512(); MR];
            let mut da = [_mm512_setzero_ps(); MR];
            let mut sa = [_mm512_setzero_ps(); MR];
            for r in 0..MR {
                qa[r] = _mm512_loadu_si512(qa_row[r].add(b * 32) as *const _);
                da[r] = pair(*d_row[r].add(b), *d_row[r].add(b + 1));
                sa[r] = pair(*s_row[r].add(b) * 0.125, *s_row[r].add(b + 1) * 0.125);
            }
            for c in 0..NR {
                let blk = w[c].add(b * BLOCK_BYTES);
                let packed = _mm256_set_m128i(
                    _mm_loadu_si128(blk.add(BLOCK_BYTES + 4) as *const __m128i),
                    _mm_loadu_si128(blk.add(4) as *const __m128i),
                );
                let lo = _mm256_and_si256(packed, low);
                let hi = _mm256_and_si256(_mm256_srli_epi16(packed, 4), low);
                // [lo0 lo1 hi0 hi1] -> [lo0 hi0 lo1 hi1]: block 0's 32 values, then block 1's.
                let z = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
                let wq = _mm512_shuffle_i64x2(z, z, 0b11_01_10_00);
                let dm0 = (blk as *const i32).read_unaligned();
                let dm1 = (blk.add(BLOCK_BYTES) as *const i32).read_unaligned();
                let dm = _mm_cvtph_ps(_mm_set_epi32(0, 0, dm1, dm0)); // d0 m0 d1 m1
                let mut f = [0f32; 4];
                _mm_storeu_ps(f.as_mut_ptr(), dm);
                let dw = pair(f[0], f[2]);
                let mw = pair(f[1], f[3]);
                for r in 0..MR {
                    let dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wq, qa[r]);
                    acc[c][r] = _mm512_fmadd_ps(
                        _mm512_cvtepi32_ps(dot),
                        _mm512_mul_ps(dw, da[r]),
                        acc[c][r],
                    );
                    acc[c][r] = _mm512_fmadd_ps(mw, sa[r], acc[c][r]);
                }
            }
            b += 2;
        }
        let mut vals = [[0f32; MR]; NR];
        for c in 0..NR {
            for r in 0..MR {
                vals[c][r] = _mm512_reduce_add_ps(acc[c][r]);
                if b < nb {
                    vals[c][r] += last_block(w[c].add(b * BLOCK_BYTES), p, i0 + r, b);
                }
            }
        }
        p.store(j0, i0, &vals);
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn range_avx2(p: &Product, rows: Range<usize>) {
        for_tiles!(p, rows, 4, 2, tile_avx2)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tile_avx2<const NR: usize, const MR: usize>(p: &Product, j0: usize, i0: usize) {
        let x = p.x;
        let nb = x.nb;
        let w: [*const u8; NR] = std::array::from_fn(|c| p.row(j0 + c));
        let low = _mm_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[_mm256_setzero_ps(); MR]; NR];
        for b in 0..nb {
            let mut qa = [_mm256_setzero_si256(); MR];
            let mut da = [_mm256_setzero_ps(); MR];
            let mut sa = [_mm256_setzero_ps(); MR];
            for r in 0..MR {
                let i = i0 + r;
                qa[r] =
                    _mm256_loadu_si256(x.qs.as_ptr().add(i * x.cols + b * 32) as *const __m256i);
                da[r] = _mm256_set1_ps(*x.d.get_unchecked(i * nb + b));
                sa[r] = _mm256_set1_ps(*x.s.get_unchecked(i * nb + b) * 0.125);
            }
            for c in 0..NR {
                let blk = w[c].add(b * BLOCK_BYTES);
                let dm = _mm_cvtph_ps(_mm_cvtsi32_si128((blk as *const i32).read_unaligned()));
                let dw = _mm256_set1_ps(_mm_cvtss_f32(dm));
                let mw = _mm256_set1_ps(_mm_cvtss_f32(_mm_shuffle_ps(dm, dm, 1)));
                let packed = _mm_loadu_si128(blk.add(4) as *const __m128i);
                let q4 = _mm256_set_m128i(
                    _mm_and_si128(_mm_srli_epi16(packed, 4), low),
                    _mm_and_si128(packed, low),
                );
                for r in 0..MR {
                    let prod = _mm256_madd_epi16(_mm256_maddubs_epi16(q4, qa[r]), ones);
                    acc[c][r] = _mm256_fmadd_ps(
                        _mm256_cvtepi32_ps(prod),
                        _mm256_mul_ps(dw, da[r]),
                        acc[c][r],
                    );
                    acc[c][r] = _mm256_fmadd_ps(mw, sa[r], acc[c][r]);
                }
            }
        }
        let mut vals = [[0f32; MR]; NR];
        for c in 0..NR {
            for r in 0..MR {
                vals[c][r] = hsum(acc[c][r]);
            }
        }
        p.store(j0, i0, &vals);
    }

    /// One block's dot product (the odd block at the end of a row).
    unsafe fn last_block(blk: *const u8, p: &Product, i: usize, b: usize) -> f32 {
        let x = p.x;
        let w = std::slice::from_raw_parts(blk, BLOCK_BYTES);
        let d = half::f16::from_le_bytes([w[0], w[1]]).to_f32();
        let m = half::f16::from_le_bytes([w[2], w[3]]).to_f32();
        let a = x.block(i, b);
        let mut isum = 0i32;
        for j in 0..16 {
            isum +=
                (w[4 + j] & 0x0F) as i32 * a[j] as i32 + (w[4 + j] >> 4) as i32 * a[j + 16] as i32;
        }
        d * x.d[i * x.nb + b] * isum as f32 + m * x.s[i * x.nb + b]
    }
}
