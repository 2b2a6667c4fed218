//! Plumbing shared by the block-quantized kernels: a matrix product is cut into tiles of up to `NR`
//! weight rows × `MR` activation rows, so each unpacked weight block serves several tokens and each
//! activation block several weight rows. Kernels implement one tile size as a const-generic function;
//! `for_tiles` walks a range of weight rows over all activation rows and picks the instantiation.

use std::ops::Range;

use super::q8::Q8Act;

/// Output pointer shared by tasks that write disjoint elements.
#[derive(Clone, Copy)]
pub struct OutPtr(pub *mut f32);
// SAFETY: tasks write disjoint (row, column) elements and finish before the buffer's borrow ends.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// One matrix product: weights (`n` rows of `row_bytes`), quantized activations, and the output
/// `[m][n]` (element `(i, j)` at `i * n + j`).
pub struct Product<'a> {
    pub w: &'a [u8],
    pub row_bytes: usize,
    pub n: usize,
    pub x: &'a Q8Act,
    pub out: OutPtr,
}

impl Product<'_> {
    /// Start of weight row `j`.
    pub fn row(&self, j: usize) -> *const u8 {
        debug_assert!(j < self.n);
        // SAFETY: j < n and the weight buffer holds n rows.
        unsafe { self.w.as_ptr().add(j * self.row_bytes) }
    }

    /// Stores a tile's results.
    ///
    /// # Safety
    /// `(i0 + r, j0 + c)` must be inside the output and written by no other task.
    pub unsafe fn store<const NR: usize, const MR: usize>(
        &self,
        j0: usize,
        i0: usize,
        vals: &[[f32; MR]; NR],
    ) {
        for (c, col) in vals.iter().enumerate() {
            for (r, v) in col.iter().enumerate() {
                *self.out.0.add((i0 + r) * self.n + j0 + c) = *v;
            }
        }
    }
}

/// A kernel for a whole range of weight rows.
pub type RangeKernel = fn(&Product, Range<usize>);

/// The portable tile shared by the weight types: output (row `j`, token `i`) is the sum, in block order,
/// of `block_dot(weight block b of row j, i, b)`.
#[inline]
pub fn scalar_tile<const NR: usize, const MR: usize>(
    p: &Product,
    j0: usize,
    i0: usize,
    block_bytes: usize,
    block_dot: impl Fn(&[u8], usize, usize) -> f32,
) {
    let mut vals = [[0f32; MR]; NR];
    for (c, col) in vals.iter_mut().enumerate() {
        // SAFETY: row j0 + c exists; a row is nb blocks of `block_bytes`.
        let w = unsafe { std::slice::from_raw_parts(p.row(j0 + c), p.row_bytes) };
        for (r, v) in col.iter_mut().enumerate() {
            let mut total = 0f32;
            for (b, blk) in w.chunks_exact(block_bytes).enumerate() {
                total += block_dot(blk, i0 + r, b);
            }
            *v = total;
        }
    }
    // SAFETY: this tile's elements belong to this call only.
    unsafe { p.store(j0, i0, &vals) }
}

/// Calls `tile!(NR, MR, j0, i0)` for every tile of `rows × 0..m`, with `NR <= nr_max`, `MR <= mr_max`.
#[macro_export]
#[doc(hidden)]
macro_rules! for_tiles {
    ($p:expr, $rows:expr, $nr_max:tt, $mr_max:tt, $tile:ident) => {{
        let p = $p;
        let rows: std::ops::Range<usize> = $rows;
        let m = p.x.m;
        let mut j0 = rows.start;
        while j0 < rows.end {
            let nr = (rows.end - j0).min($nr_max);
            let mut i0 = 0;
            while i0 < m {
                let mr = (m - i0).min($mr_max);
                $crate::engine::kernels::tiled::dispatch!(
                    nr, mr, $nr_max, $mr_max, $tile, p, j0, i0
                );
                i0 += mr;
            }
            j0 += nr;
        }
    }};
}

/// Expands to a match over `(nr, mr)` calling `$tile::<NR, MR>(p, j0, i0)`.
#[macro_export]
#[doc(hidden)]
macro_rules! tile_dispatch {
    ($nr:expr, $mr:expr, 4, 4, $tile:ident, $p:expr, $j0:expr, $i0:expr) => {
        match ($nr, $mr) {
            (4, 4) => $tile::<4, 4>($p, $j0, $i0),
            (4, 3) => $tile::<4, 3>($p, $j0, $i0),
            (4, 2) => $tile::<4, 2>($p, $j0, $i0),
            (4, 1) => $tile::<4, 1>($p, $j0, $i0),
            (3, 4) => $tile::<3, 4>($p, $j0, $i0),
            (3, 3) => $tile::<3, 3>($p, $j0, $i0),
            (3, 2) => $tile::<3, 2>($p, $j0, $i0),
            (3, 1) => $tile::<3, 1>($p, $j0, $i0),
            (2, 4) => $tile::<2, 4>($p, $j0, $i0),
            (2, 3) => $tile::<2, 3>($p, $j0, $i0),
            (2, 2) => $tile::<2, 2>($p, $j0, $i0),
            (2, 1) => $tile::<2, 1>($p, $j0, $i0),
            (1, 4) => $tile::<1, 4>($p, $j0, $i0),
            (1, 3) => $tile::<1, 3>($p, $j0, $i0),
            (1, 2) => $tile::<1, 2>($p, $j0, $i0),
            _ => $tile::<1, 1>($p, $j0, $i0),
        }
    };
    ($nr:expr, $mr:expr, 4, 2, $tile:ident, $p:expr, $j0:expr, $i0:expr) => {
        match ($nr, $mr) {
            (4, 2) => $tile::<4, 2>($p, $j0, $i0),
            (4, 1) => $tile::<4, 1>($p, $j0, $i0),
            (3, 2) => $tile::<3, 2>($p, $j0, $i0),
            (3, 1) => $tile::<3, 1>($p, $j0, $i0),
            (2, 2) => $tile::<2, 2>($p, $j0, $i0),
            (2, 1) => $tile::<2, 1>($p, $j0, $i0),
            (1, 2) => $tile::<1, 2>($p, $j0, $i0),
            _ => $tile::<1, 1>($p, $j0, $i0),
        }
    };
}

/// Defines a weight type's `kernel()` (the fastest implementation this CPU supports) and, for tests,
/// `all()` (every implementation it can run, fastest first) from its module's `x86::range_avx512`,
/// `x86::range_avx2` and `range_scalar`.
#[macro_export]
#[doc(hidden)]
macro_rules! kernel_variants {
    () => {
        fn variants() -> Vec<(&'static str, $crate::engine::kernels::tiled::RangeKernel)> {
            let mut v: Vec<(&'static str, $crate::engine::kernels::tiled::RangeKernel)> =
                Vec::new();
            #[cfg(target_arch = "x86_64")]
            {
                if $crate::engine::kernels::cpu::has_avx512_vnni() {
                    v.push(("avx512", |p, rows| unsafe { x86::range_avx512(p, rows) }));
                }
                if $crate::engine::kernels::cpu::has_avx2() {
                    v.push(("avx2", |p, rows| unsafe { x86::range_avx2(p, rows) }));
                }
            }
            v.push(("scalar", range_scalar));
            v
        }

        /// The fastest implementation this CPU supports.
        pub fn kernel() -> $crate::engine::kernels::tiled::RangeKernel {
            static FASTEST: std::sync::OnceLock<$crate::engine::kernels::tiled::RangeKernel> =
                std::sync::OnceLock::new();
            *FASTEST.get_or_init(|| variants()[0].1)
        }

        /// Every implementation this CPU can run, fastest first (for tests that compare them).
        #[cfg(test)]
        pub fn all() -> Vec<(&'static str, $crate::engine::kernels::tiled::RangeKernel)> {
            variants()
        }
    };
}

pub use crate::for_tiles;
pub use crate::kernel_variants as variants;
pub use crate::tile_dispatch as dispatch;
