//! Q4_1 weights (blocks of 32: f16 scale `d`, f16 minimum `m`, 16 bytes of nibbles) times Q8
//! activations. Value `j < 16` of a block is the low nibble of byte `j`, value `j + 16` its high
//! nibble, and a weight is `d·q + m`, so a block's dot product is `d·dₐ·Σ q·qₐ + m·sₐ`.
//!
//! Three implementations of the same tile: AVX-512 VNNI (two blocks per 512-bit register, `vpdpbusd`),
//! AVX2 (one block per register, `vpmaddubsw`), and portable scalar code. The minimum term is folded
//! into the vector accumulator as `m·(sₐ/8)` in each of a block's 8 lanes, which sums back exactly.

use std::sync::OnceLock;

use half::f16;

use super::q8::{Q8Act, QK};
use super::tiled::{scalar_tile, tiles, Product, Tiles};

pub const BLOCK_BYTES: usize = 20;

/// The fastest implementation this CPU runs.
pub fn fastest() -> Tiles {
    static FASTEST: OnceLock<Tiles> = OnceLock::new();
    *FASTEST.get_or_init(|| {
        let tiles = implementations()[0];
        tracing::debug!("Q4_1 tiles: {}", tiles.name);
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

/// One block's dot product `d·dₐ·Σ q·qₐ + m·sₐ` (weight block `blk`, block `b` of activation row `i`).
fn block_dot(blk: &[u8], x: &Q8Act, i: usize, b: usize) -> f32 {
    let d = f16::from_le_bytes([blk[0], blk[1]]).to_f32();
    let m = f16::from_le_bytes([blk[2], blk[3]]).to_f32();
    let a = x.block(i, b);
    let mut isum = 0i32;
    for j in 0..QK / 2 {
        isum += (blk[4 + j] & 0x0F) as i32 * a[j] as i32;
        isum += (blk[4 + j] >> 4) as i32 * a[j + QK / 2] as i32;
    }
    d * x.d(i)[b] * isum as f32 + m * x.s(i)[b]
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

    /// `[a; 8] ++ [b; 8]`.
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
        let low = _mm256_set1_epi8(0x0F);
        let mut acc = [[_mm512_setzero_ps(); MR]; NR];
        let mut b = 0;
        while b + 2 <= nb {
            let mut qa = [_mm512_setzero_si512(); MR];
            let mut da = [_mm512_setzero_ps(); MR];
            let mut sa = [_mm512_setzero_ps(); MR];
            for r in 0..MR {
                // SAFETY: b + 2 <= nb, so the 64 quants of blocks b and b + 1 are inside the row.
                qa[r] = unsafe { _mm512_loadu_si512(a.quants(r, b).cast()) };
                // SAFETY: b < nb.
                let d0 = unsafe { a.d(r, b) };
                // SAFETY: b + 1 < nb.
                let d1 = unsafe { a.d(r, b + 1) };
                // SAFETY: b < nb.
                let s0 = unsafe { a.s(r, b) };
                // SAFETY: b + 1 < nb.
                let s1 = unsafe { a.s(r, b + 1) };
                da[r] = pair(d0, d1);
                sa[r] = pair(s0 * 0.125, s1 * 0.125);
            }
            for c in 0..NR {
                // Blocks b and b + 1 of the row (b + 2 <= nb): 2 · BLOCK_BYTES bytes from `blk`.
                let blk = w[c].as_ptr().wrapping_add(b * BLOCK_BYTES);
                // SAFETY: bytes 4..20 of block b + 1, inside the two blocks.
                let hi_blk = unsafe { _mm_loadu_si128(blk.wrapping_add(BLOCK_BYTES + 4).cast()) };
                // SAFETY: bytes 4..20 of block b.
                let lo_blk = unsafe { _mm_loadu_si128(blk.wrapping_add(4).cast()) };
                let packed = _mm256_set_m128i(hi_blk, lo_blk);
                let lo = _mm256_and_si256(packed, low);
                let hi = _mm256_and_si256(_mm256_srli_epi16(packed, 4), low);
                // [lo0 lo1 hi0 hi1] -> [lo0 hi0 lo1 hi1]: block 0's 32 values, then block 1's.
                let z = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
                let wq = _mm512_shuffle_i64x2(z, z, 0b11_01_10_00);
                // SAFETY: the first 4 bytes (d, m) of block b.
                let dm0 = unsafe { blk.cast::<i32>().read_unaligned() };
                // SAFETY: the first 4 bytes of block b + 1.
                let dm1 = unsafe { blk.wrapping_add(BLOCK_BYTES).cast::<i32>().read_unaligned() };
                let dm = _mm_cvtph_ps(_mm_set_epi32(0, 0, dm1, dm0)); // d0 m0 d1 m1
                let mut f = [0f32; 4];
                // SAFETY: `f` holds 4 values, one 128-bit store.
                unsafe { _mm_storeu_ps(f.as_mut_ptr(), dm) };
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
        let low = _mm_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[_mm256_setzero_ps(); MR]; NR];
        for b in 0..nb {
            let mut qa = [_mm256_setzero_si256(); MR];
            let mut da = [_mm256_setzero_ps(); MR];
            let mut sa = [_mm256_setzero_ps(); MR];
            for r in 0..MR {
                // SAFETY: b < nb, so the 32 quants of block b are inside the row.
                qa[r] = unsafe { _mm256_loadu_si256(a.quants(r, b).cast()) };
                // SAFETY: b < nb.
                da[r] = _mm256_set1_ps(unsafe { a.d(r, b) });
                // SAFETY: b < nb.
                sa[r] = _mm256_set1_ps(unsafe { a.s(r, b) } * 0.125);
            }
            for c in 0..NR {
                let blk = w[c].as_ptr().wrapping_add(b * BLOCK_BYTES);
                // SAFETY: b < nb: the first 4 bytes (d, m) of block b, inside the row.
                let dm = unsafe { blk.cast::<i32>().read_unaligned() };
                let dm = _mm_cvtph_ps(_mm_cvtsi32_si128(dm));
                let dw = _mm256_set1_ps(_mm_cvtss_f32(dm));
                let mw = _mm256_set1_ps(_mm_cvtss_f32(_mm_shuffle_ps(dm, dm, 1)));
                // SAFETY: bytes 4..20 of block b, inside the row.
                let packed = unsafe { _mm_loadu_si128(blk.wrapping_add(4).cast()) };
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
        // SAFETY: the tile is inside the product and this task's alone (our caller's promise).
        unsafe { p.store(j0, i0, &vals) }
    }
}
