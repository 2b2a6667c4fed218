//! Q8_0 weights (blocks of 32: f16 scale `d`, 32 signed bytes) times Q8 activations:
//! a block's dot product is `d·dₐ·Σ w·a`.
//!
//! AVX-512 VNNI multiplies unsigned by signed bytes, so weights are offset by 128 (`w ^ 0x80`) and the
//! excess `128·Σa` is subtracted in integers (a sixteenth of it from each of the block's 8 lanes... of
//! 4 products each, i.e. `16·Σa` per lane). AVX2 moves the weight's sign onto the activation instead.

use std::ops::Range;

use half::f16;

use super::q8::QK;
use super::tiled::{for_tiles, scalar_tile, Product};

pub const BLOCK_BYTES: usize = 34;

super::tiled::variants!();

pub fn range_scalar(p: &Product, rows: Range<usize>) {
    for_tiles!(p, rows, 4, 4, tile_scalar)
}

fn tile_scalar<const NR: usize, const MR: usize>(p: &Product, j0: usize, i0: usize) {
    let x = p.x;
    scalar_tile::<NR, MR>(p, j0, i0, BLOCK_BYTES, |blk, i, b| {
        let d = f16::from_le_bytes([blk[0], blk[1]]).to_f32();
        let a = x.block(i, b);
        let isum: i32 = (0..QK)
            .map(|j| (blk[2 + j] as i8) as i32 * a[j] as i32)
            .sum();
        d * x.d[i * x.nb + b] * isum as f32
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
        let flip = _mm512_set1_epi8(-128);
        let mut acc = [[_mm512_setzero_ps(); MR]; NR];
        let mut b = 0;
        while b + 2 <= nb {
            let mut qa = [_mm512_setzero_si512(); MR];
            let mut da = [_mm512_setzero_ps(); MR];
            let mut corr = [_mm512_setzero_si512(); MR];
            for r in 0..MR {
                let i = i0 + r;
                qa[r] = _mm512_loadu_si512(x.qs.as_ptr().add(i * x.cols + b * 32) as *const _);
                da[r] = pair(
                    *x.d.get_unchecked(i * nb + b),
                    *x.d.get_unchecked(i * nb + b + 1),
                );
                corr[r] = _mm512_mask_blend_epi32(
                    0xFF00,
                    _mm512_set1_epi32(16 * *x.qsum.get_unchecked(i * nb + b)),
                    _mm512_set1_epi32(16 * *x.qsum.get_unchecked(i * nb + b + 1)),
                );
            }
            for c in 0..NR {
                let blk = w[c].add(b * BLOCK_BYTES);
                let q0 = _mm256_loadu_si256(blk.add(2) as *const __m256i);
                let q1 = _mm256_loadu_si256(blk.add(BLOCK_BYTES + 2) as *const __m256i);
                let wq =
                    _mm512_xor_si512(_mm512_inserti64x4(_mm512_castsi256_si512(q0), q1, 1), flip);
                let d0 = (blk as *const u16).read_unaligned() as i32;
                let d1 = (blk.add(BLOCK_BYTES) as *const u16).read_unaligned() as i32;
                let dd = _mm_cvtph_ps(_mm_cvtsi32_si128(d0 | (d1 << 16)));
                let dw = pair(_mm_cvtss_f32(dd), _mm_cvtss_f32(_mm_shuffle_ps(dd, dd, 1)));
                for r in 0..MR {
                    let dot = _mm512_sub_epi32(
                        _mm512_dpbusd_epi32(_mm512_setzero_si512(), wq, qa[r]),
                        corr[r],
                    );
                    acc[c][r] = _mm512_fmadd_ps(
                        _mm512_cvtepi32_ps(dot),
                        _mm512_mul_ps(dw, da[r]),
                        acc[c][r],
                    );
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
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[_mm256_setzero_ps(); MR]; NR];
        for b in 0..nb {
            let mut qa = [_mm256_setzero_si256(); MR];
            let mut da = [_mm256_setzero_ps(); MR];
            for r in 0..MR {
                let i = i0 + r;
                qa[r] =
                    _mm256_loadu_si256(x.qs.as_ptr().add(i * x.cols + b * 32) as *const __m256i);
                da[r] = _mm256_set1_ps(*x.d.get_unchecked(i * nb + b));
            }
            for c in 0..NR {
                let blk = w[c].add(b * BLOCK_BYTES);
                let d = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(
                    (blk as *const u16).read_unaligned() as i32,
                )));
                let dw = _mm256_set1_ps(d);
                let qw = _mm256_loadu_si256(blk.add(2) as *const __m256i);
                // |w| as unsigned bytes, and the activations carry w's sign, so maddubs computes Σ w·a.
                let aw = _mm256_sign_epi8(qw, qw);
                for r in 0..MR {
                    let sa = _mm256_sign_epi8(qa[r], qw);
                    let prod = _mm256_madd_epi16(_mm256_maddubs_epi16(aw, sa), ones);
                    acc[c][r] = _mm256_fmadd_ps(
                        _mm256_cvtepi32_ps(prod),
                        _mm256_mul_ps(dw, da[r]),
                        acc[c][r],
                    );
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

    unsafe fn last_block(blk: *const u8, p: &Product, i: usize, b: usize) -> f32 {
        let x = p.x;
        let w = std::slice::from_raw_parts(blk, BLOCK_BYTES);
        let d = half::f16::from_le_bytes([w[0], w[1]]).to_f32();
        let a = x.block(i, b);
        let isum: i32 = (0..32).map(|j| (w[2 + j] as i8) as i32 * a[j] as i32).sum();
        d * x.d[i * x.nb + b] * isum as f32
    }
}
