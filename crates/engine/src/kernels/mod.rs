//! CPU matrix kernels over weights kept in their file format (GGUF quantized blocks, f16/bf16/f32).
//!
//! `QMatrix::matmul` computes `out[m, rows] = x[m, cols] · Wᵀ` for a weight matrix stored row-major as
//! `rows` rows of `cols` elements. Weights keep the file's values: on CPUs with AVX2, Q4_0, Q4_1, Q5_0,
//! Q8_0, Q4_K and Q6_K are repacked at load into the same bytes in another order (`packed`), with run-time
//! dispatch to AMX tiles, AVX-512 VNNI, AVX-VNNI or AVX2 code so one binary serves every x86 machine;
//! f32/f16/bf16 have row dot products of their own, and Q4_1 and Q8_0 portable tiles (`tiled`) for CPUs
//! without AVX2. The model's linear layers convert the other quantized types to Q4_1 or Q8_0 at load
//! (`transcode`); a matrix that is not converted (an embedding table) goes through the block dot products
//! of candle's `GgmlType` implementations. Work is split over weight rows on the current rayon pool or the
//! engine's own pool. Callers never see which path ran.
//!
//! This module is the crate's unsafe core, sealed behind safe entry points: `QMatrix` (its constructor
//! checks sizes and alignment), `attention`, `activation`. Each checks the lengths of what it is given
//! once per call, with real assertions, and only then enters SIMD code that indexes without checks; the
//! per-type kernels, the repacked layout and the quantized activations are private to it.

pub mod activation;
mod amx;
pub mod attention;
mod cpu;
mod float;
pub mod glibc_exp;
mod packed;
mod q4_1;
mod q8;
mod q8_0;
mod tiled;
mod transcode;

use std::marker::PhantomData;

use candle_core::quantized::k_quants::{
    BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K, BlockQ8K,
    BlockQ8_0, BlockQ8_1, GgmlType,
};
use candle_core::quantized::GgmlDType;
use rayon::prelude::*;

use super::gguf::TensorBytes;
use super::pool::Pool;

use q8::Q8Act;

/// Where parallel work runs: the current rayon pool (inside candle ops), or the engine's spinning pool
/// (the CPU forward pass).
#[derive(Clone, Copy)]
pub enum Exec<'a> {
    Rayon,
    Pool(&'a Pool),
}

impl Exec<'_> {
    pub fn threads(&self) -> usize {
        match self {
            Exec::Rayon => rayon::current_num_threads().max(1),
            Exec::Pool(p) => p.threads(),
        }
    }

    /// Runs `f(i)` for every `i < n`, spread over the threads (each thread takes the next index).
    pub fn for_each(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
        if n <= 1 || self.threads() == 1 {
            (0..n).for_each(f);
            return;
        }
        match self {
            Exec::Rayon => (0..n).into_par_iter().for_each(f),
            Exec::Pool(p) => p.for_each(n, f),
        }
    }

    /// Runs `f(first, rows)` over `data` (whole rows of `row` values) in one run of rows per thread,
    /// `first` being the index of the run's first row: for the row-wise steps between the products
    /// (norms, rotations, activations), which otherwise ran on one thread while the others waited
    /// (Qwen2.5-Coder 0.5B's prompt: a twentieth of its time). Below [`ROWS_PARALLEL_MIN`] values it
    /// runs on this thread alone (a decoding step's rows cost less than waking the others). Panics
    /// unless `data` holds whole rows.
    pub fn for_rows_mut(
        &self,
        data: &mut [f32],
        row: usize,
        f: &(dyn Fn(usize, &mut [f32]) + Sync),
    ) {
        assert!(
            row > 0 && data.len().is_multiple_of(row),
            "whole rows of {row}"
        );
        let rows = data.len() / row;
        let parts = self.threads().min(rows);
        if parts <= 1 || data.len() < ROWS_PARALLEL_MIN {
            f(0, data);
            return;
        }
        let out = SharedOut::new(data);
        self.for_each(parts, &|t| {
            let (a, b) = (t * rows / parts, (t + 1) * rows / parts);
            // SAFETY: the parts are disjoint runs of rows.
            f(a, unsafe { out.slice(a * row, (b - a) * row) });
        });
    }
}

/// Values below which `Exec::for_rows_mut` runs on the calling thread alone.
const ROWS_PARALLEL_MIN: usize = 16 * 1024;

/// An output buffer that tasks running at the same time write in disjoint parts. It borrows the buffer
/// for `'a` and keeps its length, so each task's part is checked against it (or, in the kernels' inner
/// loops, follows from a range checked once per call).
#[derive(Clone, Copy)]
struct SharedOut<'a> {
    ptr: *mut f32,
    len: usize,
    _buffer: PhantomData<&'a mut [f32]>,
}

// SAFETY: a `SharedOut` is a `&mut [f32]` whose writes are split between threads; every write goes
// through an `unsafe` method whose caller promises that no other thread touches the same elements.
unsafe impl Send for SharedOut<'_> {}
// SAFETY: as for `Send`: shared use only ever writes disjoint elements.
unsafe impl Sync for SharedOut<'_> {}

impl<'a> SharedOut<'a> {
    fn new(out: &'a mut [f32]) -> Self {
        Self {
            ptr: out.as_mut_ptr(),
            len: out.len(),
            _buffer: PhantomData,
        }
    }

    #[inline]
    fn len(self) -> usize {
        self.len
    }

    /// Elements `start..start + n`, checked against the buffer.
    ///
    /// # Safety
    /// No other task reads or writes these elements while the returned slice lives.
    #[inline]
    unsafe fn slice(self, start: usize, n: usize) -> &'a mut [f32] {
        assert!(
            start <= self.len && n <= self.len - start,
            "output elements {start}..+{n} outside a buffer of {}",
            self.len
        );
        // SAFETY: the range lies inside the buffer borrowed for 'a (checked above) and the caller
        // guarantees that nothing else accesses it meanwhile.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.wrapping_add(start), n) }
    }

    /// Writes element `i`.
    ///
    /// # Safety
    /// `i < self.len()`, and no other task reads or writes element `i` at the same time.
    #[inline]
    unsafe fn write(self, i: usize, v: f32) {
        debug_assert!(i < self.len);
        // SAFETY: in bounds and not shared at this moment (the caller's promise).
        unsafe { self.ptr.wrapping_add(i).write(v) }
    }
}

/// `a · b`, panicking with `what` when the product does not fit in a `usize` (so a size check can never
/// be passed by an overflowing multiplication).
fn size(a: usize, b: usize, what: &str) -> usize {
    a.checked_mul(b)
        .unwrap_or_else(|| panic!("{what}: {a} × {b} overflows"))
}

/// Bytes at an address aligned to 64 (a cache line, a 512-bit vector), so that any block type can be
/// viewed in place: weights owned rather than mapped, and repacked weights.
pub struct AlignedBytes {
    lines: Vec<Line>,
    len: usize,
}

#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C, align(64))]
struct Line([u8; 64]);

impl AlignedBytes {
    fn zeroed(len: usize) -> Self {
        Self {
            lines: vec![Line([0; 64]); len.div_ceil(64)],
            len,
        }
    }

    /// As `zeroed`, for weights: kept as long as the model and streamed by every decoding step, so
    /// they ask for huge pages (`memory::advise_huge_pages`; not the buffers of a single product,
    /// whose first touch could then wait for the kernel to compact memory).
    fn zeroed_weights(len: usize) -> Self {
        let n = len.div_ceil(64);
        let mut lines: Vec<Line> = Vec::with_capacity(n);
        // Before the first touch, which is when the kernel picks the pages.
        crate::memory::advise_huge_pages(lines.as_ptr().cast(), n * 64);
        lines.resize(n, Line([0; 64]));
        Self { lines, len }
    }

    pub fn copy_of(bytes: &[u8]) -> Self {
        let mut a = Self::zeroed(bytes.len());
        a.as_mut_slice().copy_from_slice(bytes);
        a
    }

    #[inline]
    pub fn as_slice(&self) -> &[u8] {
        &bytemuck::cast_slice(&self.lines)[..self.len]
    }

    /// The first byte (for kernels that index from it after checking sizes once).
    #[inline]
    fn as_ptr(&self) -> *const u8 {
        self.lines.as_ptr().cast()
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut bytemuck::cast_slice_mut(&mut self.lines)[..self.len]
    }
}

/// Where a weight matrix's bytes live.
#[derive(Clone)]
pub enum WeightBytes {
    /// As read from the model file.
    File(TensorBytes),
    /// Computed at load (converted from another type), 64-byte aligned.
    Owned(std::sync::Arc<AlignedBytes>),
}

impl WeightBytes {
    /// An aligned copy of `bytes`.
    pub fn copy_of(bytes: &[u8]) -> Self {
        WeightBytes::Owned(std::sync::Arc::new(AlignedBytes::copy_of(bytes)))
    }

    pub fn bytes(&self) -> &[u8] {
        match self {
            WeightBytes::File(b) => b.bytes(),
            WeightBytes::Owned(v) => v.as_slice(),
        }
    }

    /// Lets the bytes go once a repacked copy serves the matrix (a buffer another matrix shares, such as
    /// a tied embedding table, stays for that one).
    fn release(&mut self) {
        match self {
            WeightBytes::File(b) => b.release(),
            WeightBytes::Owned(v) => *v = std::sync::Arc::new(AlignedBytes::zeroed(0)),
        }
    }
}

/// A weight matrix in its storage format. Its fields are private: `new` checks that the bytes hold
/// exactly `rows × cols` values of `dtype`, suitably aligned, and every kernel relies on that.
#[derive(Clone)]
pub struct QMatrix {
    dtype: GgmlDType,
    rows: usize,
    cols: usize,
    data: WeightBytes,
    /// A copy repacked for the CPU's fastest kernel, when it has one for this type.
    packed: Option<std::sync::Arc<packed::Packed>>,
}

impl QMatrix {
    /// Wraps `data` as `rows × cols` elements of `dtype`; checks sizes and alignment.
    pub fn new(
        dtype: GgmlDType,
        rows: usize,
        cols: usize,
        data: WeightBytes,
    ) -> Result<Self, String> {
        if matches!(dtype, GgmlDType::Q8_1 | GgmlDType::Q8K) {
            return Err(format!(
                "{dtype:?} is an activation format, not a weight format"
            ));
        }
        if !cols.is_multiple_of(dtype.block_size()) {
            return Err(format!(
                "row length {cols} is not a multiple of the {dtype:?} block size {}",
                dtype.block_size()
            ));
        }
        let want = (cols / dtype.block_size())
            .checked_mul(dtype.type_size())
            .and_then(|row| row.checked_mul(rows))
            .ok_or_else(|| format!("{rows}x{cols} {dtype:?} is too large to address"))?;
        let have = data.bytes().len();
        if want != have {
            return Err(format!(
                "expected {want} bytes for {rows}x{cols} {dtype:?}, found {have}"
            ));
        }
        if !(data.bytes().as_ptr() as usize).is_multiple_of(block_align(dtype)) {
            return Err(format!(
                "{dtype:?} data is not aligned to {} bytes",
                block_align(dtype)
            ));
        }
        Ok(Self {
            dtype,
            rows,
            cols,
            data,
            packed: None,
        })
    }

    pub fn dtype(&self) -> GgmlDType {
        self.dtype
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Converts weights of a type without a kernel of ours on this CPU (Q4_0, Q5_0, Q5_1, the K-quants,
    /// less those `pack` takes as they are) to Q4_1 or Q8_0, which have one (see `transcode`); the
    /// file's bytes are let go. Returns whether it converted.
    pub fn transcode(&mut self) -> bool {
        if packed::PackedKind::of(self.dtype).is_some() {
            return false; // repacked as it is (`pack`)
        }
        let Some(to) = transcode::target(self.dtype) else {
            return false;
        };
        self.convert_to(to);
        true
    }

    /// Quantizes weights wider than Q4_0 again as Q4_0 (`transcode::compact_target`), letting the file's
    /// bytes go: fewer bytes to read per product, for weights whose products need only be close (a draft
    /// model's). Returns whether it converted.
    pub fn compact(&mut self) -> bool {
        let Some(to) = transcode::compact_target(self.dtype, self.cols) else {
            return false;
        };
        self.convert_to(to);
        true
    }

    /// Replaces the weights with their conversion to `to` (see `transcode::convert`).
    fn convert_to(&mut self, to: GgmlDType) {
        let bytes = transcode::convert(self, to);
        self.data.release();
        self.data = WeightBytes::Owned(std::sync::Arc::new(bytes));
        self.dtype = to;
    }

    /// Repacks the weights for the fastest kernel this CPU has, if any, and lets the file's bytes go
    /// (a tied embedding table keeps its own handle on them). Returns whether it repacked.
    pub fn pack(&mut self) -> bool {
        let Some(kind) = packed::PackedKind::of(self.dtype) else {
            return false;
        };
        let Some(p) = packed::Packed::new(kind, self.rows, self.cols, self.bytes()) else {
            return false;
        };
        self.packed = Some(std::sync::Arc::new(p));
        self.data.release();
        true
    }

    fn bytes(&self) -> &[u8] {
        self.data.bytes()
    }

    fn row_bytes(&self) -> usize {
        self.cols / self.dtype.block_size() * self.dtype.type_size()
    }

    fn row(&self, r: usize) -> &[u8] {
        assert!(r < self.rows, "row {r} of a matrix of {} rows", self.rows);
        debug_assert!(
            self.packed.is_none(),
            "the bytes of a repacked matrix are gone"
        );
        let n = self.row_bytes();
        &self.bytes()[r * n..(r + 1) * n]
    }

    /// `out[i * rows + j] = dot(x[i], W[j])` for `i < m`.
    pub fn matmul(&self, x: &[f32], m: usize, out: &mut [f32]) {
        self.matmul_on(Exec::Rayon, x, m, out)
    }

    /// `matmul` with the work spread by `exec`. Panics unless `x` holds `m × cols` values and `out`
    /// `m × rows`: the one size check of the product, after which the kernels index without checks.
    pub fn matmul_on(&self, exec: Exec, x: &[f32], m: usize, out: &mut [f32]) {
        self.matmul_head_on(exec, x, m, self.rows, out)
    }

    /// `matmul_on` for the first `head` weight rows only (a draft model's logits over the token ids
    /// that come first, see `Logits::Head`): output columns from `head` on are left as they were, but
    /// that the repacked kernels compute the rest of a group of 16 rows. Panics as `matmul_on`, or if
    /// `head > rows`.
    pub fn matmul_head_on(&self, exec: Exec, x: &[f32], m: usize, head: usize, out: &mut [f32]) {
        assert_eq!(x.len(), size(m, self.cols, "matmul input"), "matmul input");
        assert_eq!(
            out.len(),
            size(m, self.rows, "matmul output"),
            "matmul output"
        );
        assert!(head <= self.rows, "the first {head} of {} rows", self.rows);
        match self.dtype {
            GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => {
                let dot = float::row_dot(self.dtype);
                self.for_each_dot(exec, m, head, out, |row, i| {
                    dot(row, &x[i * self.cols..(i + 1) * self.cols])
                })
            }
            _ if self.packed.is_some() => self.run_packed(exec, x, m, head, out),
            GgmlDType::Q4_1 => self.tiled(exec, x, m, head, out, q4_1::tiles()),
            GgmlDType::Q8_0 => self.tiled(exec, x, m, head, out, q8_0::tiles()),
            GgmlDType::Q4_0 => self.generic::<BlockQ4_0>(exec, x, m, head, out),
            GgmlDType::Q5_0 => self.generic::<BlockQ5_0>(exec, x, m, head, out),
            GgmlDType::Q5_1 => self.generic::<BlockQ5_1>(exec, x, m, head, out),
            GgmlDType::Q2K => self.generic::<BlockQ2K>(exec, x, m, head, out),
            GgmlDType::Q3K => self.generic::<BlockQ3K>(exec, x, m, head, out),
            GgmlDType::Q4K => self.generic::<BlockQ4K>(exec, x, m, head, out),
            GgmlDType::Q5K => self.generic::<BlockQ5K>(exec, x, m, head, out),
            GgmlDType::Q6K => self.generic::<BlockQ6K>(exec, x, m, head, out),
            GgmlDType::Q8_1 => self.generic::<BlockQ8_1>(exec, x, m, head, out),
            GgmlDType::Q8K => self.generic::<BlockQ8K>(exec, x, m, head, out),
        }
    }

    /// Dequantizes row `r` into `out` (`cols` values); used for embedding lookups.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        assert_eq!(out.len(), self.cols);
        let row = self.row(r);
        match self.dtype {
            GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => {
                float::to_f32(self.dtype, row, out)
            }
            GgmlDType::Q4_0 => to_float::<BlockQ4_0>(row, out),
            GgmlDType::Q4_1 => to_float::<candle_core::quantized::k_quants::BlockQ4_1>(row, out),
            GgmlDType::Q5_0 => to_float::<BlockQ5_0>(row, out),
            GgmlDType::Q5_1 => to_float::<BlockQ5_1>(row, out),
            GgmlDType::Q8_0 => to_float::<BlockQ8_0>(row, out),
            GgmlDType::Q8_1 => to_float::<BlockQ8_1>(row, out),
            GgmlDType::Q2K => to_float::<BlockQ2K>(row, out),
            GgmlDType::Q3K => to_float::<BlockQ3K>(row, out),
            GgmlDType::Q4K => to_float::<BlockQ4K>(row, out),
            GgmlDType::Q5K => to_float::<BlockQ5K>(row, out),
            GgmlDType::Q6K => to_float::<BlockQ6K>(row, out),
            GgmlDType::Q8K => to_float::<BlockQ8K>(row, out),
        }
    }

    /// The repacked kernels: groups of 16 weight rows split over the threads.
    fn run_packed(&self, exec: Exec, x: &[f32], m: usize, head: usize, out: &mut [f32]) {
        let p = self.packed.as_ref().expect("packed weights");
        let xq = p.kind().quantize(x, m, self.cols);
        let tiles = amx::TileQuants::new(&xq);
        let out = SharedOut::new(out);
        let groups = head.div_ceil(packed::GROUP);
        // An even number per task: the AMX tiles take groups two at a time.
        let per_task = groups
            .div_ceil(exec.threads() * 4)
            .next_multiple_of(2)
            .max(2);
        exec.for_each(groups.div_ceil(per_task), &|t| {
            let range = t * per_task..((t + 1) * per_task).min(groups);
            // SAFETY: tasks cover disjoint ranges of groups, so they write disjoint output columns.
            unsafe { run_packed_groups(p, &xq, tiles.as_ref(), range, out) }
        });
    }

    /// Our tiled kernels: activations quantized once, weight rows split over the threads.
    fn tiled(
        &self,
        exec: Exec,
        x: &[f32],
        m: usize,
        head: usize,
        out: &mut [f32],
        tiles: tiled::Tiles,
    ) {
        let xq = Q8Act::quantize(x, m, self.cols);
        let block_bytes = self.dtype.type_size();
        let product = tiled::Product::new(self.bytes(), self.rows, block_bytes, &xq, out);
        let chunks = row_chunks(head, exec.threads());
        exec.for_each(chunks.len(), &|c| {
            // SAFETY: the chunks are disjoint ranges of weight rows.
            unsafe { tiles.run(&product, chunks[c].clone()) }
        });
    }

    /// Block dot products from candle's `GgmlType` implementation of the weight type.
    fn generic<T: GgmlType>(&self, exec: Exec, x: &[f32], m: usize, head: usize, out: &mut [f32]) {
        let vbs = T::VecDotType::BLCK_SIZE;
        let per_row = self.cols / vbs;
        let mut xq = vec![T::VecDotType::zeros(); m * per_row];
        for i in 0..m {
            T::VecDotType::from_float(
                &x[i * self.cols..(i + 1) * self.cols],
                &mut xq[i * per_row..(i + 1) * per_row],
            );
        }
        let cols = self.cols;
        self.for_each_dot(exec, m, head, out, |row, i| {
            T::vec_dot(cols, blocks::<T>(row), &xq[i * per_row..(i + 1) * per_row])
        })
    }

    /// Runs `dot(weight_row_bytes, activation_row_index)` for every output element of the first `head`
    /// weight rows, split over them. `out` holds `m × rows` values (checked by `matmul_head_on`).
    fn for_each_dot<F>(&self, exec: Exec, m: usize, head: usize, out: &mut [f32], dot: F)
    where
        F: Fn(&[u8], usize) -> f32 + Sync,
    {
        let rows = self.rows;
        let chunks = row_chunks(head, exec.threads());
        let out = SharedOut::new(out);
        exec.for_each(chunks.len(), &|c| {
            for j in chunks[c].clone() {
                let w = self.row(j);
                for i in 0..m {
                    let v = dot(w, i);
                    // SAFETY: i < m and j < rows index the `m × rows` output; the chunks are disjoint
                    // ranges of j, so no other task writes element (i, j).
                    unsafe { out.write(i * rows + j, v) };
                }
            }
        });
    }
}

/// Weight-row ranges for the worker threads: about four per thread, multiples of 4 rows, at least 16.
fn row_chunks(rows: usize, threads: usize) -> Vec<std::ops::Range<usize>> {
    let chunk = if threads == 1 {
        rows.max(1)
    } else {
        rows.div_ceil(threads * 4).next_multiple_of(4).max(16)
    };
    (0..rows)
        .step_by(chunk)
        .map(|s| s..(s + chunk).min(rows))
        .collect()
}

fn block_align(dtype: GgmlDType) -> usize {
    match dtype {
        GgmlDType::F32 | GgmlDType::Q8K => 4,
        GgmlDType::Q2K | GgmlDType::Q3K | GgmlDType::Q4K | GgmlDType::Q5K | GgmlDType::Q6K => 2,
        GgmlDType::F16 | GgmlDType::BF16 => 2,
        GgmlDType::Q4_0 | GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1 => 2,
        GgmlDType::Q8_0 | GgmlDType::Q8_1 => 2,
    }
}

/// Views raw bytes as blocks of `T`: a whole number of blocks at the block type's alignment (what
/// `QMatrix::new` checked for the matrix these rows come from), asserted again here once per row.
fn blocks<T: GgmlType>(bytes: &[u8]) -> &[T] {
    let size = std::mem::size_of::<T>();
    assert!(
        bytes.len().is_multiple_of(size)
            && (bytes.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>()),
        "{} bytes at {:p} are not whole aligned blocks of {size}",
        bytes.len(),
        bytes.as_ptr()
    );
    // SAFETY: the GGML block types are plain `repr(C)` data valid for any bit pattern, and the bytes
    // are a whole number of aligned blocks (asserted above).
    unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<T>(), bytes.len() / size) }
}

fn to_float<T: GgmlType>(row: &[u8], out: &mut [f32]) {
    T::to_float(blocks::<T>(row), out)
}

/// Computes output columns `groups.start * 16 ..` (up to `groups.end * 16`) of the repacked matrix `p`
/// for every activation row into `out` (`[m][rows]`): the whole tiles of 16 tokens on AMX where the CPU
/// has it (`tiles`, made from `x`; `amx` reads `packed`'s layout, so the choice is made here, above
/// both), the rest with the VNNI kernels.
///
/// # Safety
/// Calls running at the same time with the same `out` are given disjoint `groups`.
unsafe fn run_packed_groups(
    p: &packed::Packed,
    x: &Q8Act,
    tiles: Option<&amx::TileQuants>,
    groups: std::ops::Range<usize>,
    out: SharedOut,
) {
    p.check(x, &groups, out);
    let first = match tiles {
        // SAFETY: the tiles were made from `x` (our caller's promise), the sizes were checked
        // above, and these groups' columns are this call's alone (our caller's promise).
        Some(a) => unsafe { amx::run(p, x, a, groups.clone(), out) },
        None => 0,
    };
    // SAFETY: as above.
    unsafe { p.run_rows(x, first, groups, out) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Quantizes `w` (rows × cols, f32) into `dtype` blocks with candle's reference quantizers.
    pub(super) fn quantize(dtype: GgmlDType, w: &[f32]) -> Vec<u8> {
        fn q<T: GgmlType>(w: &[f32]) -> Vec<u8> {
            let mut blocks = vec![T::zeros(); w.len() / T::BLCK_SIZE];
            T::from_float(w, &mut blocks);
            let size = std::mem::size_of::<T>() * blocks.len();
            // SAFETY: plain-data blocks viewed as bytes.
            unsafe { std::slice::from_raw_parts(blocks.as_ptr() as *const u8, size) }.to_vec()
        }
        match dtype {
            GgmlDType::F32 => w.iter().flat_map(|v| v.to_le_bytes()).collect(),
            GgmlDType::F16 => w
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect(),
            GgmlDType::BF16 => w
                .iter()
                .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                .collect(),
            GgmlDType::Q4_1 => q::<candle_core::quantized::k_quants::BlockQ4_1>(w),
            GgmlDType::Q4_0 => q::<BlockQ4_0>(w),
            GgmlDType::Q8_0 => q::<BlockQ8_0>(w),
            GgmlDType::Q5_1 => q::<BlockQ5_1>(w),
            GgmlDType::Q4K => q::<BlockQ4K>(w),
            GgmlDType::Q6K => q::<BlockQ6K>(w),
            GgmlDType::Q5_0 => q::<BlockQ5_0>(w),
            GgmlDType::Q5K => q::<BlockQ5K>(w),
            GgmlDType::Q3K => q::<BlockQ3K>(w),
            GgmlDType::Q2K => q::<BlockQ2K>(w),
            other => panic!("no test quantizer for {other:?}"),
        }
    }

    fn data(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    /// `for_rows_mut` hands every row to `f` exactly once, with its index, on several threads and below
    /// the size it spreads from.
    #[test]
    fn row_runs_cover_every_row_once() {
        let pool = crate::pool::Pool::new(3).expect("a pool of 3 threads");
        for exec in [Exec::Rayon, Exec::Pool(&pool)] {
            for rows in [1, 7, 500, 1001] {
                let row = 40;
                let mut data = vec![-1f32; rows * row];
                exec.for_rows_mut(&mut data, row, &|first, part| {
                    for (r, values) in part.chunks_exact_mut(row).enumerate() {
                        for v in values.iter_mut() {
                            assert_eq!(*v, -1.0, "a row handed out twice");
                            *v = (first + r) as f32;
                        }
                    }
                });
                for (r, values) in data.chunks_exact(row).enumerate() {
                    assert!(values.iter().all(|&v| v == r as f32), "row {r} of {rows}");
                }
            }
        }
    }

    /// Every kernel agrees with dequantize-then-f64-dot within the activation quantization error.
    #[test]
    fn matmul_matches_dequantized_reference() {
        // Fewer rows under Miri, which interprets candle's quantizers too.
        let (rows, cols, m) = if cfg!(miri) {
            (5, 256, 2)
        } else {
            (37, 512, 3)
        };
        for dtype in [
            GgmlDType::F32,
            GgmlDType::F16,
            GgmlDType::BF16,
            GgmlDType::Q4_1,
            GgmlDType::Q4_0,
            GgmlDType::Q8_0,
            GgmlDType::Q5_1,
            GgmlDType::Q4K,
            GgmlDType::Q6K,
        ] {
            let w = data(rows * cols, 7);
            let x = data(m * cols, 11);
            let bytes = quantize(dtype, &w);
            let mat = QMatrix::new(dtype, rows, cols, WeightBytes::copy_of(&bytes)).unwrap();
            let mut out = vec![0f32; m * rows];
            mat.matmul(&x, m, &mut out);
            let mut row = vec![0f32; cols];
            for j in 0..rows {
                mat.dequantize_row(j, &mut row);
                for i in 0..m {
                    let want: f64 = row
                        .iter()
                        .zip(&x[i * cols..(i + 1) * cols])
                        .map(|(a, b)| *a as f64 * *b as f64)
                        .sum();
                    let got = out[i * rows + j] as f64;
                    let tol = match dtype {
                        GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => 1e-3,
                        _ => 0.08,
                    };
                    assert!(
                        (got - want).abs() <= tol * (1.0 + want.abs()),
                        "{dtype:?} row {j} input {i}: got {got}, want {want}"
                    );
                }
            }
        }
    }

    /// A product over the first rows gives those rows' outputs as the whole product does, on every path
    /// (float rows, our tiles, candle's blocks, and repacked where this CPU repacks), and leaves the
    /// outputs past the last group of 16 rows it computes as they were.
    #[test]
    fn a_product_of_the_first_rows_is_the_whole_products_beginning() {
        let (rows, cols, m, head) = (70, 256, 2, 21);
        for dtype in [
            GgmlDType::F16,
            GgmlDType::Q4_1,
            GgmlDType::Q8_0,
            GgmlDType::Q5_0,
            GgmlDType::Q4K,
            GgmlDType::Q6K,
        ] {
            let bytes = quantize(dtype, &data(rows * cols, 13));
            let x = data(m * cols, 17);
            let mut mat = QMatrix::new(dtype, rows, cols, WeightBytes::copy_of(&bytes)).unwrap();
            for packed in [false, true] {
                if packed && !mat.pack() {
                    continue;
                }
                let mut whole = vec![0f32; m * rows];
                mat.matmul_on(Exec::Rayon, &x, m, &mut whole);
                let mut first = vec![f32::NAN; m * rows];
                mat.matmul_head_on(Exec::Rayon, &x, m, head, &mut first);
                let computed = if packed {
                    head.next_multiple_of(16)
                } else {
                    head
                };
                for i in 0..m {
                    let (w, f) = (&whole[i * rows..][..rows], &first[i * rows..][..rows]);
                    assert_eq!(
                        &f[..head],
                        &w[..head],
                        "{dtype:?} packed {packed} input {i}"
                    );
                    assert!(
                        f[computed..].iter().all(|v| v.is_nan()),
                        "{dtype:?} packed {packed} input {i}: wrote past row {computed}"
                    );
                }
            }
        }
    }

    /// Repacked weights hold the same values and give the same products as the file's layout.
    #[test]
    fn packed_layout_matches_the_file_layout() {
        if !cpu::has_avx2() {
            eprintln!("skipped: no AVX2 on this CPU, so no repacking to compare");
            return;
        }
        for (dtype, kind) in [
            (GgmlDType::Q4_0, packed::PackedKind::Q4_0),
            (GgmlDType::Q4_1, packed::PackedKind::Q4_1),
            (GgmlDType::Q5_0, packed::PackedKind::Q5_0),
            (GgmlDType::Q8_0, packed::PackedKind::Q8_0),
            (GgmlDType::Q4K, packed::PackedKind::Q4K),
            (GgmlDType::Q6K, packed::PackedKind::Q6K),
        ] {
            let shapes = if dtype.block_size() == 32 {
                [(37, 96, 5), (16, 64, 1), (5, 576, 9)]
            } else {
                [(37, 256, 5), (16, 512, 1), (5, 768, 9)]
            };
            for (rows, cols, m) in shapes {
                let bytes = quantize(dtype, &data(rows * cols, 9));
                let plain = QMatrix::new(dtype, rows, cols, WeightBytes::copy_of(&bytes)).unwrap();
                let layout = packed::Packed::new(kind, rows, cols, &bytes).unwrap();
                let mut row = vec![0f32; cols];
                for r in 0..rows {
                    plain.dequantize_row(r, &mut row);
                    for (c, v) in row.iter().enumerate() {
                        let p = packed::unpack_value(&layout, r, c);
                        assert!(
                            (p - v).abs() <= 1e-6 * (1.0 + v.abs()),
                            "{dtype:?} ({r},{c}): {p} vs {v}"
                        );
                    }
                }
                if !matches!(dtype, GgmlDType::Q4_1 | GgmlDType::Q8_0) {
                    // Plain Q4_0 and the K-quants run candle's kernels, which quantize activations their
                    // own way; the next test compares their products with the dequantized reference.
                    continue;
                }
                let mut packed =
                    QMatrix::new(dtype, rows, cols, WeightBytes::copy_of(&bytes)).unwrap();
                assert!(packed.pack());
                let x = data(m * cols, 21);
                let (mut a, mut b) = (vec![0f32; m * rows], vec![f32::NAN; m * rows]);
                plain.matmul(&x, m, &mut a);
                packed.matmul(&x, m, &mut b);
                for (u, v) in a.iter().zip(&b) {
                    assert!(
                        (u - v).abs() <= 1e-4 * (1.0 + u.abs()),
                        "{dtype:?} {rows}x{cols} m={m}: {u} vs {v}"
                    );
                }
            }
        }
    }

    /// The instruction sets with packed kernels that this CPU runs (the test of each is the same); says
    /// which it skips.
    fn packed_isas() -> Vec<packed::Isa> {
        let all = [
            (packed::Isa::Avx2, cpu::has_avx2()),
            (packed::Isa::AvxVnni, cpu::has_avx_vnni()),
            (packed::Isa::Avx512Vnni, cpu::has_avx512_vnni()),
        ];
        static SAID: std::sync::Once = std::sync::Once::new();
        SAID.call_once(|| {
            for (isa, _) in all.iter().filter(|(_, runs)| !runs) {
                eprintln!(
                    "skipped: the {isa:?} packed kernels (not on this CPU or CODELLAMA_LSP_CPU)"
                );
            }
        });
        all.iter()
            .filter(|(_, runs)| *runs)
            .map(|(isa, _)| *isa)
            .collect()
    }

    /// The types packed as the file stores them: each keeps the file's bytes (sixteen rows per group, so
    /// a partial last group is padded), and its products for one and for five activation rows equal the
    /// dequantized weights times the dequantized 8-bit activations (one scale per 256 values for the
    /// K-quants, as their kernels take them). The integer dot products are exact,
    /// so the two differ only by f32 rounding (about 1e-6 of the sum of magnitudes) and, for types with a
    /// minimum, the f16 rounding of each activation block's sum (2⁻¹¹ of that block's min term): 1e-3 of
    /// the sum of magnitudes covers both, while a misplaced value or scale moves results by about the
    /// size of a weight. The kernels of every instruction set this CPU runs (AVX2's with and without
    /// AVX-VNNI, AVX-512's) give
    /// the same results bit for bit: the same integer sums and float steps per row.
    #[test]
    fn packed_file_types_keep_their_size_and_values() {
        if !cpu::has_avx2() {
            eprintln!("skipped: no AVX2 on this CPU, so nothing is packed as the file stores it");
            return;
        }
        for (dtype, kind) in [
            (GgmlDType::Q4_0, packed::PackedKind::Q4_0),
            (GgmlDType::Q4_1, packed::PackedKind::Q4_1),
            (GgmlDType::Q5_0, packed::PackedKind::Q5_0),
            (GgmlDType::Q8_0, packed::PackedKind::Q8_0),
            (GgmlDType::Q4K, packed::PackedKind::Q4K),
            (GgmlDType::Q6K, packed::PackedKind::Q6K),
        ] {
            // 13 rows: a tile of eight, one of four and one of one; 3,700 rows: two blocks of groups;
            // 37 and 3,700 rows: a last group of five and of four rows, whose second half is empty.
            for (rows, cols, m) in [
                (37, 512, 1),
                (37, 512, 5),
                (32, 256, 5),
                (37, 512, 13),
                (3700, 256, 9),
            ] {
                let bytes = quantize(dtype, &data(rows * cols, 13));
                let mut mat =
                    QMatrix::new(dtype, rows, cols, WeightBytes::copy_of(&bytes)).unwrap();
                let mut w = vec![0f32; rows * cols];
                for (r, row) in w.chunks_exact_mut(cols).enumerate() {
                    mat.dequantize_row(r, row);
                }
                let x = data(m * cols, 17);
                let xq = kind.quantize(&x, m, cols);
                let mut out = vec![f32::NAN; m * rows];
                // Packed as loaded on this CPU: through the matrix product.
                assert_eq!(packed::PackedKind::of(dtype), Some(kind));
                assert!(!mat.transcode() && mat.pack(), "{dtype:?}");
                mat.matmul(&x, m, &mut out);
                let p = mat.packed.as_ref().unwrap();
                let file_row = bytes.len() / rows;
                assert_eq!(
                    p.bytes(),
                    p.groups() * packed::GROUP * file_row,
                    "{dtype:?}"
                );
                if rows.is_multiple_of(packed::GROUP) {
                    assert_eq!(p.bytes(), bytes.len(), "{dtype:?}");
                }
                // All groups in one call, as one thread would take a 7B matrix's share: the tiles
                // then go over blocks of groups one after another, with the same sums.
                for isa in packed_isas() {
                    let mut whole = vec![f32::NAN; m * rows];
                    // SAFETY: one call covers all groups, on a CPU with `isa`.
                    unsafe {
                        p.run_rows_on(isa, &xq, 0, 0..p.groups(), SharedOut::new(&mut whole))
                    };
                    assert_eq!(whole, out, "{isa:?} {dtype:?} {rows}x{cols} m={m}");
                }
                for i in 0..m {
                    let xa: Vec<f64> = (0..cols)
                        .map(|k| xq.row(i)[k] as f64 * xq.d(i)[k / q8::QK] as f64)
                        .collect();
                    let sa: Vec<f64> = (0..cols / q8::QK).map(|b| xq.s(i)[b] as f64).collect();
                    for (j, wr) in w.chunks_exact(cols).enumerate() {
                        let want: f64 = wr.iter().zip(&xa).map(|(a, b)| *a as f64 * b).sum();
                        let mag: f64 = wr.iter().zip(&xa).map(|(a, b)| (*a as f64 * b).abs()).sum();
                        // Q4_1's minimum times the activations' sum, which its kernel takes as `s`
                        // (rounded to f16), not as the sum of the quants times `d`.
                        let mag = mag
                            + if dtype == GgmlDType::Q4_1 {
                                sa.iter().map(|s| s.abs()).sum::<f64>()
                            } else {
                                0.0
                            };
                        let got = out[i * rows + j] as f64;
                        assert!(
                            (got - want).abs() <= 1e-3 * mag + 1e-6,
                            "{dtype:?} {rows}x{cols} m={m} row {j} input {i}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    /// Q5_0 weights packed as the file stores them give the products of their exact conversion to Q8_0
    /// (as earlier versions ran them) bit for bit: the same integer sums, the offset taken
    /// off in integers, the same float steps per block. Decoding (one row), the tiles of four and of
    /// eight, and partial groups.
    #[test]
    fn packed_q5_0_equals_its_q8_0_conversion() {
        if !cpu::has_avx2() {
            eprintln!("skipped: no AVX2 on this CPU, so nothing is packed");
            return;
        }
        for (rows, cols, m) in [(37, 576, 1), (16, 64, 4), (37, 896, 13), (3, 96, 9)] {
            let bytes = quantize(GgmlDType::Q5_0, &data(rows * cols, 31));
            let q5 =
                QMatrix::new(GgmlDType::Q5_0, rows, cols, WeightBytes::copy_of(&bytes)).unwrap();
            let q8 = transcode::convert(&q5, GgmlDType::Q8_0);
            let kinds = [packed::PackedKind::Q5_0, packed::PackedKind::Q8_0];
            let [p5, p8] = [(&bytes[..], kinds[0]), (q8.as_slice(), kinds[1])]
                .map(|(b, kind)| packed::Packed::new(kind, rows, cols, b).unwrap());
            assert_eq!(p5.bytes(), p5.groups() * packed::GROUP * cols / 32 * 22);
            let x = Q8Act::quantize(&data(m * cols, 37), m, cols);
            for isa in packed_isas() {
                let (mut a, mut b) = (vec![f32::NAN; m * rows], vec![f32::NAN; m * rows]);
                // SAFETY: one call covers all groups, on a CPU with `isa`.
                unsafe { p5.run_rows_on(isa, &x, 0, 0..p5.groups(), SharedOut::new(&mut a)) };
                // SAFETY: as above.
                unsafe { p8.run_rows_on(isa, &x, 0, 0..p8.groups(), SharedOut::new(&mut b)) };
                assert_eq!(a, b, "{isa:?} {rows}x{cols} m={m}");
            }
        }
    }

    /// Prompt-sized products on AMX tiles equal the VNNI kernels bit for bit (same integer sums, same
    /// float operations per block), for every packed kind, whole tiles of 16 tokens and the rest, full
    /// and partial groups of rows.
    #[test]
    fn amx_tiles_equal_the_vnni_kernels() {
        if !amx::available() {
            eprintln!(
                "skipped: no AMX on this CPU (the VNNI kernels run everywhere, tested above)"
            );
            return;
        }
        let kinds = [
            GgmlDType::Q4_0,
            GgmlDType::Q4_1,
            GgmlDType::Q5_0,
            GgmlDType::Q8_0,
            GgmlDType::Q4K,
            GgmlDType::Q6K,
        ];
        for dtype in kinds {
            // Rows, blocks of 32 (or super-blocks of 256) per row, tokens.
            // Three tiles of 16 tokens: a pair and one alone; an odd group taken twice; two pairs
            // of tiles on the same weights (the K-quants build a super-block's tiles once for all).
            for (rows, blocks, m) in [(37, 3, 37), (16, 4, 16), (50, 2, 49), (20, 2, 70)] {
                let cols = blocks * dtype.block_size();
                let bytes = quantize(dtype, &data(rows * cols, 4));
                let mut w = QMatrix::new(dtype, rows, cols, WeightBytes::copy_of(&bytes)).unwrap();
                assert!(w.pack(), "{dtype:?} is packed as it is");
                let p = w.packed.as_ref().unwrap();
                let x = p.kind().quantize(&data(m * cols, 8), m, cols);
                let (mut a, mut b) = (vec![f32::NAN; m * rows], vec![f32::NAN; m * rows]);
                let out = SharedOut::new(&mut a);
                let tiles = amx::TileQuants::new(&x).unwrap();
                // SAFETY: the tiles are made from `x`, the sizes agree, one call covers all groups.
                let first = unsafe { amx::run(p, &x, &tiles, 0..p.groups(), out) };
                assert_eq!(first, m / 16 * 16, "the tiles take every whole 16 tokens");
                // SAFETY: as above; the rows after the tiles.
                unsafe { p.run_rows(&x, first, 0..p.groups(), out) };
                // SAFETY: as above.
                unsafe { p.run_rows(&x, 0, 0..p.groups(), SharedOut::new(&mut b)) };
                assert_eq!(a, b, "{dtype:?} {rows}x{cols} m={m}");
            }
        }
    }

    #[test]
    fn rejects_wrong_sizes() {
        let err = QMatrix::new(GgmlDType::Q4_1, 2, 32, WeightBytes::copy_of(&[0u8; 39]))
            .err()
            .unwrap();
        assert!(err.contains("expected 40 bytes"), "{err}");
        assert!(QMatrix::new(GgmlDType::Q4_1, 2, 30, WeightBytes::copy_of(&[])).is_err());
    }

    /// A shape whose byte size overflows is an error, even when the wrapped size would match the data
    /// (here 2⁶² + 2 rows of one Q4_1 block: 2⁶⁷ + 64 values, 5·2⁶⁴ + 40 bytes, which wrap to 40).
    #[test]
    fn rejects_sizes_that_overflow() {
        let rows = (1usize << 62) + 2;
        let err = QMatrix::new(GgmlDType::Q4_1, rows, 32, WeightBytes::copy_of(&[0u8; 40]))
            .err()
            .expect("an overflowing shape is refused");
        assert!(err.contains("too large"), "{err}");
    }

    /// The panic message of `f`, which must panic.
    fn panic_message(f: impl FnOnce()) -> String {
        let payload = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
            .expect_err("a size check should have panicked");
        payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default()
    }

    /// Products whose parts disagree in size are refused before any kernel runs.
    #[test]
    fn products_check_their_sizes() {
        let (rows, cols, m) = (5, 64, 3);
        let w = quantize(GgmlDType::Q8_0, &data(rows * cols, 1));
        let xq = Q8Act::quantize(&data(m * cols, 2), m, cols);
        let mut out = vec![0f32; m * rows];
        let short = &w[..w.len() - 1];
        let msg = panic_message(|| {
            tiled::Product::new(short, rows, q8_0::BLOCK_BYTES, &xq, &mut out);
        });
        assert!(msg.contains("weight bytes"), "{msg}");
        let msg = panic_message(|| {
            tiled::Product::new(&w, rows, q8_0::BLOCK_BYTES, &xq, &mut out[1..]);
        });
        assert!(msg.contains("output size"), "{msg}");
        let p = tiled::Product::new(&w, rows, q8_0::BLOCK_BYTES, &xq, &mut out);
        let tiles = q8_0::tiles();
        // SAFETY: one call at a time (each panics before computing anything).
        let msg = panic_message(|| unsafe { tiles.run(&p, 0..rows + 4) });
        assert!(msg.contains("outside a product"), "{msg}");
        let tiles = q4_1::tiles();
        // SAFETY: as above.
        let msg = panic_message(|| unsafe { tiles.run(&p, 0..rows) });
        assert!(msg.contains("block size"), "{msg}");
        let mat = QMatrix::new(GgmlDType::Q8_0, rows, cols, WeightBytes::copy_of(&w)).unwrap();
        let msg = panic_message(|| mat.matmul(&[], usize::MAX / 2, &mut []));
        assert!(msg.contains("overflows"), "{msg}");
        let msg = panic_message(|| mat.matmul(&data(m * cols, 2), m, &mut out[1..]));
        assert!(msg.contains("matmul output"), "{msg}");
    }

    /// `CODELLAMA_LSP_CPU=scalar` is read once per process, so a child process (this test binary,
    /// running only the `capped_to_scalar` tests) checks that every dispatch with a result that tells
    /// the paths apart honours it. (The activation quantizer and SwiGLU give bit-identical results on
    /// every path, so no test can tell which ran.)
    #[test]
    #[cfg_attr(miri, ignore = "Miri starts no processes")]
    fn the_cpu_cap_reaches_every_dispatch() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "--test-threads=1",
                "kernels::attention::tests::capped_to_scalar",
                "kernels::float::tests::capped_to_scalar",
            ])
            .env("CODELLAMA_LSP_CPU", "scalar")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("2 passed"),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
