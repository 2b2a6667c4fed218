//! Plumbing shared by the block-quantized kernels: a matrix product is cut into tiles of up to `NR`
//! weight rows × `MR` activation rows, so each unpacked weight block serves several tokens and each
//! activation block several weight rows. Kernels implement one tile size as a const-generic function;
//! `Tiles::run` walks a range of weight rows over all activation rows and picks the instantiation.
//!
//! `Product::new` checks once per product that the weights, activations and output agree in size, and
//! `Tiles::run` that its range of rows lies inside the product; a tile then reads and writes without
//! checks. The one thing no check can see is two threads writing the same output rows, so `run` is
//! `unsafe` and its caller hands out disjoint ranges.

use std::ops::Range;

use super::q8::Q8Act;
use super::{size, SharedOut};

/// One matrix product: weights (`n` rows of blocks of `block_bytes`), quantized activations, and the
/// output `[m][n]` (element `(i, j)` at `i * n + j`).
pub struct Product<'a> {
    w: &'a [u8],
    block_bytes: usize,
    row_bytes: usize,
    n: usize,
    x: &'a Q8Act,
    out: SharedOut<'a>,
}

impl<'a> Product<'a> {
    /// Panics unless `w` is exactly `n` rows of `x.nb()` blocks of `block_bytes` and `out` holds
    /// `x.m() × n` values.
    pub fn new(
        w: &'a [u8],
        n: usize,
        block_bytes: usize,
        x: &'a Q8Act,
        out: &'a mut [f32],
    ) -> Self {
        let row_bytes = size(x.nb(), block_bytes, "weight row");
        assert_eq!(w.len(), size(n, row_bytes, "weights"), "weight bytes");
        assert_eq!(out.len(), size(x.m(), n, "output"), "output size");
        Self {
            w,
            block_bytes,
            row_bytes,
            n,
            x,
            out: SharedOut::new(out),
        }
    }

    #[inline]
    pub fn x(&self) -> &'a Q8Act {
        self.x
    }

    /// Weight row `j`.
    #[inline]
    pub fn row(&self, j: usize) -> &'a [u8] {
        &self.w[j * self.row_bytes..][..self.row_bytes]
    }

    /// Stores a tile's results: `vals[c][r]` is output `(i0 + r, j0 + c)`.
    ///
    /// # Safety
    /// `j0 + NR <= n`, `i0 + MR <= m`, and no other task writes these outputs at the same time.
    pub unsafe fn store<const NR: usize, const MR: usize>(
        &self,
        j0: usize,
        i0: usize,
        vals: &[[f32; MR]; NR],
    ) {
        for (c, col) in vals.iter().enumerate() {
            for (r, v) in col.iter().enumerate() {
                // SAFETY: (i0 + r, j0 + c) is inside the `m × n` output and this task's own (the
                // caller's promise).
                unsafe { self.out.write((i0 + r) * self.n + j0 + c, *v) };
            }
        }
    }
}

/// One tile: `NR` weight rows from `j0` against `MR` activation rows from `i0`.
///
/// # Safety
/// Every tile needs `j0 + NR <= p.n`, `i0 + MR <= p.x().m()`, a CPU with the features of its
/// implementation, and no other task writing the tile's outputs at the same time.
pub type TileFn = unsafe fn(&Product, usize, usize);

/// The tile sizes of one implementation: at most `nr_max × mr_max`, and `pick(nr, mr)` returns the
/// tile of exactly `nr × mr` for every `nr <= nr_max`, `mr <= mr_max` (see `tiles!`).
pub type TileSet = (usize, usize, fn(usize, usize) -> TileFn);

/// One implementation of a weight type's tiles (the portable ones of `q4_1` and `q8_0`; on CPUs with
/// AVX2 the repacked kernels of `packed` take these types). A `Tiles` value exists only for
/// implementations this CPU can run.
#[derive(Clone, Copy)]
pub struct Tiles {
    block_bytes: usize,
    nr_max: usize,
    mr_max: usize,
    pick: fn(usize, usize) -> TileFn,
}

impl Tiles {
    /// # Safety
    /// The CPU supports the instructions the tiles of `set` use, and `set` keeps `TileSet`'s promise.
    pub unsafe fn new(block_bytes: usize, set: TileSet) -> Self {
        let (nr_max, mr_max, pick) = set;
        Self {
            block_bytes,
            nr_max,
            mr_max,
            pick,
        }
    }

    /// Computes the outputs of weight rows `rows` for every activation row. Panics unless `rows` lies
    /// inside the product and the product's blocks are this type's.
    ///
    /// # Safety
    /// Calls running at the same time on the same product are given disjoint `rows`.
    pub unsafe fn run(&self, p: &Product, rows: Range<usize>) {
        assert!(
            rows.start <= rows.end && rows.end <= p.n,
            "weight rows {rows:?} outside a product of {} rows",
            p.n
        );
        assert_eq!(p.block_bytes, self.block_bytes, "block size of the weights");
        let m = p.x.m();
        let mut j0 = rows.start;
        while j0 < rows.end {
            let nr = (rows.end - j0).min(self.nr_max);
            let mut i0 = 0;
            while i0 < m {
                let mr = (m - i0).min(self.mr_max);
                let tile = (self.pick)(nr, mr);
                // SAFETY: the `nr × mr` tile at (j0, i0) lies inside the product (rows checked above,
                // i0 + mr <= m), the CPU runs this implementation (`new`), and its rows are this
                // call's alone (our caller's promise).
                unsafe { tile(p, j0, i0) };
                i0 += mr;
            }
            j0 += nr;
        }
    }
}

/// The `TileSet` of the const-generic tile function `$tile` for sizes up to `4 × 4`.
#[macro_export]
#[doc(hidden)]
macro_rules! tiles {
    ($tile:ident, 4, 4) => {
        (
            4,
            4,
            |nr: usize, mr: usize| -> $crate::kernels::tiled::TileFn {
                match (nr, mr) {
                    (4, 4) => $tile::<4, 4>,
                    (4, 3) => $tile::<4, 3>,
                    (4, 2) => $tile::<4, 2>,
                    (4, 1) => $tile::<4, 1>,
                    (3, 4) => $tile::<3, 4>,
                    (3, 3) => $tile::<3, 3>,
                    (3, 2) => $tile::<3, 2>,
                    (3, 1) => $tile::<3, 1>,
                    (2, 4) => $tile::<2, 4>,
                    (2, 3) => $tile::<2, 3>,
                    (2, 2) => $tile::<2, 2>,
                    (2, 1) => $tile::<2, 1>,
                    (1, 4) => $tile::<1, 4>,
                    (1, 3) => $tile::<1, 3>,
                    (1, 2) => $tile::<1, 2>,
                    _ => $tile::<1, 1>,
                }
            },
        )
    };
}

pub use crate::tiles;

/// The portable tile shared by the weight types: output (row `j`, token `i`) is the sum, in block order,
/// of `block_dot(weight block b of row j, i, b)`.
///
/// # Safety
/// As for every tile (`TileFn`).
#[inline]
pub unsafe fn scalar_tile<const NR: usize, const MR: usize>(
    p: &Product,
    j0: usize,
    i0: usize,
    block_dot: impl Fn(&[u8], usize, usize) -> f32,
) {
    let mut vals = [[0f32; MR]; NR];
    for (c, col) in vals.iter_mut().enumerate() {
        let w = p.row(j0 + c);
        for (r, v) in col.iter_mut().enumerate() {
            let mut total = 0f32;
            for (b, blk) in w.chunks_exact(p.block_bytes).enumerate() {
                total += block_dot(blk, i0 + r, b);
            }
            *v = total;
        }
    }
    // SAFETY: the tile lies inside the product and is this task's alone (our caller's promise).
    unsafe { p.store(j0, i0, &vals) }
}
