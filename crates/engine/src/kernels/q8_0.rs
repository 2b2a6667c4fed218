//! Q8_0 weights (blocks of 32: f16 scale `d`, 32 signed bytes) times Q8 activations:
//! a block's dot product is `d·dₐ·Σ w·a`.
//!
//! The portable tile, for CPUs without AVX2 and matrices that are not repacked: on CPUs with AVX2 every
//! model matrix of this type is repacked at load and runs `packed`'s kernels (which replaced the AVX2
//! and AVX-512 tiles that were here).

use half::f16;

use super::q8::{Q8Act, QK};
use super::tiled::{scalar_tile, tiles, Product, Tiles};

pub const BLOCK_BYTES: usize = 34;

/// The tiles of this type (portable code).
pub fn tiles() -> Tiles {
    // SAFETY: portable code, and `tiles!` builds a correct tile set.
    unsafe { Tiles::new(BLOCK_BYTES, tiles!(tile_scalar, 4, 4)) }
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
