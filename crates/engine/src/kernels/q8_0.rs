//! Q8_0 weights (blocks of 32: f16 scale `d`, 32 signed bytes) times Q8 activations:
//! a block's dot product is `d·dₐ·Σ w·a`.
//!
//! AVX-512 VNNI multiplies unsigned by signed bytes, so weights are offset by 128 (`w ^ 0x80`) and the
//! excess `128·Σa` is subtracted in integers (a sixteenth of it from each of the block's 8 lanes... of
//! 4 products each, i.e. `16·Σa` per lane). AVX2 moves the weight's sign onto the activation instead.

use std::sync::OnceLock;

use half::f16;

use super::q8::{Q8Act, QK};
use super::tiled::{scalar_tile, tiles, Product, Tiles};

pub const BLOCK_BYTES: usize = 34;

/// The fastest implementation this CPU runs.
pub fn fastest() -> Tiles {
    static FASTEST: OnceLock<Tiles> = OnceLock::new();
    *FASTEST.get_or_init(|| {
        let tiles = implementations()[0];
        tracing::debug!("Q8_0 tiles: {}", tiles.name);
        tiles
    })
}

/// Every implementation this CPU runs, fastest first (the scalar one last).
pub fn implementations() -> Vec<Tiles> {
    let mut all = Vec::new();
    #[cfg(target_arch = "x86_64")]
    all.extend(x86::implementations());
    // SAFETY: portable code, and `tiles!` builds a correct tile set.
    all.push(unsafe { Tiles::new("scalar", BLOCK_BYTES, tiles!(tile_scalar, 4, 4)) });
    all
}

/// One block's dot product `d·dₐ·Σ w·a` (weight block `blk`, block `b` of activation row `i`).
fn block_dot(blk: &[u8], x: &Q8Act, i: usize, b: usize) -> f32 {
    let d = f16::from_le_bytes([blk[0], blk[1]]).to_f32();
    let a = x.block(i, b);
    let isum: i32 = (0..QK)
        .map(|j| (blk[2 + j] as i8) as i32 * a[j] as i32)
        .sum();
    d * x.d(i)[b] * isum as f32
}

/// # Safety
/// As for every tile (`tiled::TileFn`).
unsafe fn tile_scalar<const NR: usize, const MR: usize>(p: &Product, j0: usize, i0: usize) {
    let x = p.x();
    // SAFETY: our caller's promise is the tile's.
    unsafe { scalar_tile::<NR, MR>(p, j0, i0, |blk, i, b| block_dot(blk, x, i, b)) }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::super::cpu;
    use super::super::float::x86::hsum;
    use super::super::tiled::{tiles, Product, Tiles};
    use super::{block_dot, BLOCK_BYTES};

    pub fn implementations() -> Vec<Tiles> {
        let mut all = Vec::new();
        if cpu::has_avx512_vnni() {
            // SAFETY: the CPU has AVX-512 F/BW/VL/VNNI, AVX2, FMA and F16C (`has_avx512_vnni`).
            all.push(unsafe { Tiles::new("avx512", BLOCK_BYTES, tiles!(tile_avx512, 4, 4)) });
        }
        if cpu::has_avx2() {
            // SAFETY: the CPU has AVX2, FMA and F16C (`has_avx2`).
            all.push(unsafe { Tiles::new("avx2", BLOCK_BYTES, tiles!(tile_avx2, 4, 2)) });
        }
        all
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn pair(a: f32, b: f32) -> __m512 {
        _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(a), _mm512_set1_ps(b))
    }

    /// Two blocks per 512-bit register.
    ///
    /// # Safety
    /// As for every tile (`tiled::TileFn`), with AVX-512 VNNI.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn tile_avx512<const NR: usize, const MR: usize>(p: &Product, j0: usize, i0: usize) {
        let x = p.x();
        let nb = x.nb();
        // Rows of the tile: weights (nb blocks of BLOCK_BYTES each) and activations (nb blocks).
        let w = p.rows::<NR>(j0);
        let a = x.rows::<MR>(i0);
        let flip = _mm512_set1_epi8(-128);
        let mut acc = [[_mm512_setzero_ps(); MR]; NR];
        let mut b = 0;
        while b + 2 <= nb {
            let mut qa = [_mm512_setzero_si512(); MR];
            let mut da = [_mm512_setzero_ps(); MR];
            let mut corr = [_mm512_setzero_si512(); MR];
            for r in 0..MR {
                // SAFETY: b + 2 <= nb, so the 64 quants of blocks b and b + 1 are inside the row.
                qa[r] = unsafe { _mm512_loadu_si512(a.quants(r, b).cast()) };
                // SAFETY: b < nb.
                let d0 = unsafe { a.d(r, b) };
                // SAFETY: b + 1 < nb.
                let d1 = unsafe { a.d(r, b + 1) };
                // SAFETY: b < nb.
                let sum0 = unsafe { a.qsum(r, b) };
                // SAFETY: b + 1 < nb.
                let sum1 = unsafe { a.qsum(r, b + 1) };
                da[r] = pair(d0, d1);
                corr[r] = _mm512_mask_blend_epi32(
                    0xFF00,
                    _mm512_set1_epi32(16 * sum0),
                    _mm512_set1_epi32(16 * sum1),
                );
            }
            for c in 0..NR {
                // Blocks b and b + 1 of the row (b + 2 <= nb): 2 · BLOCK_BYTES bytes from `blk`.
                let blk = w[c].as_ptr().wrapping_add(b * BLOCK_BYTES);
                // SAFETY: the 32 quants of block b (bytes 2..34).
                let q0 = unsafe { _mm256_loadu_si256(blk.wrapping_add(2).cast()) };
                // SAFETY: the 32 quants of block b + 1.
                let q1 = unsafe { _mm256_loadu_si256(blk.wrapping_add(BLOCK_BYTES + 2).cast()) };
                let wq =
                    _mm512_xor_si512(_mm512_inserti64x4(_mm512_castsi256_si512(q0), q1, 1), flip);
                // SAFETY: the scale (2 bytes) of block b.
                let d0 = unsafe { blk.cast::<u16>().read_unaligned() } as i32;
                // SAFETY: the scale of block b + 1.
                let d1 = unsafe { blk.wrapping_add(BLOCK_BYTES).cast::<u16>().read_unaligned() };
                let dd = _mm_cvtph_ps(_mm_cvtsi32_si128(d0 | ((d1 as i32) << 16)));
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
                    vals[c][r] += block_dot(&w[c][b * BLOCK_BYTES..], x, i0 + r, b);
                }
            }
        }
        // SAFETY: the tile is inside the product and this task's alone (our caller's promise).
        unsafe { p.store(j0, i0, &vals) }
    }

    /// One block per 256-bit register.
    ///
    /// # Safety
    /// As for every tile (`tiled::TileFn`), with AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tile_avx2<const NR: usize, const MR: usize>(p: &Product, j0: usize, i0: usize) {
        let x = p.x();
        let nb = x.nb();
        let w = p.rows::<NR>(j0);
        let a = x.rows::<MR>(i0);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[_mm256_setzero_ps(); MR]; NR];
        for b in 0..nb {
            let mut qa = [_mm256_setzero_si256(); MR];
            let mut da = [_mm256_setzero_ps(); MR];
            for r in 0..MR {
                // SAFETY: b < nb, so the 32 quants of block b are inside the row.
                qa[r] = unsafe { _mm256_loadu_si256(a.quants(r, b).cast()) };
                // SAFETY: b < nb.
                da[r] = _mm256_set1_ps(unsafe { a.d(r, b) });
            }
            for c in 0..NR {
                let blk = w[c].as_ptr().wrapping_add(b * BLOCK_BYTES);
                // SAFETY: b < nb: the scale (2 bytes) of block b, inside the row.
                let d = unsafe { blk.cast::<u16>().read_unaligned() } as i32;
                let d = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(d)));
                let dw = _mm256_set1_ps(d);
                // SAFETY: the 32 quants of block b (bytes 2..34).
                let qw = unsafe { _mm256_loadu_si256(blk.wrapping_add(2).cast()) };
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
        // SAFETY: the tile is inside the product and this task's alone (our caller's promise).
        unsafe { p.store(j0, i0, &vals) }
    }
}
