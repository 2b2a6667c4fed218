//! Q4_1 weights (blocks of 32: f16 scale `d`, f16 minimum `m`, 16 bytes of nibbles) times Q8
//! activations. Value `j < 16` of a block is the low nibble of byte `j`, value `j + 16` its high
//! nibble, and a weight is `d·q + m`, so a block's dot product is `d·dₐ·Σ q·qₐ + m·sₐ`.
//!
//! The portable tile, for CPUs without AVX2 and matrices that are not repacked: on CPUs with AVX2 every
//! model matrix of this type is repacked at load and runs `packed`'s kernels (which replaced the AVX2
//! and AVX-512 tiles that were here).

use half::f16;

use super::q8::{Q8Act, QK};
use super::tiled::{scalar_tile, tiles, Product, Tiles};

pub const BLOCK_BYTES: usize = 20;

/// The tiles of this type (portable code).
pub fn tiles() -> Tiles {
    // SAFETY: portable code, and `tiles!` builds a correct tile set.
    unsafe { Tiles::new(BLOCK_BYTES, tiles!(tile_scalar, 4, 4)) }
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
