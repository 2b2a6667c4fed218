//! Weights repacked at load time for AVX-512 VNNI: sixteen output rows per SIMD register (on CPUs with
//! AVX2 but not AVX-512, two registers of eight: `avx2`).
//!
//! In the file's layout one block holds 32 consecutive values of one row, so a SIMD dot product ends in a
//! horizontal sum per row. Here the rows of a group of 16 are interleaved in `vpdpbusd` order: lane `r`
//! of a 64-byte vector holds four consecutive values of row `r`, so one instruction with four broadcast
//! activation bytes advances sixteen dot products, each block's scales apply as one vector multiply, and
//! the sixteen results are stored with one write. This is the layout llama.cpp's repacked CPU kernels use;
//! it is what makes single-token decoding bandwidth-bound instead of instruction-bound.
//!
//! Every layout holds exactly the file's bytes, sixteen rows at a time. Per group of 16 rows and per
//! block of 32 values:
//! - Q4_1: `d[16]` f16, `m[16]` f16, then four 64-byte vectors whose low nibbles hold quad `t` and high
//!   nibbles quad `t + 4` (quad = four consecutive values), 320 bytes in all (as in the file: 20 per row).
//! - Q4_0: `d[16]` f16, then the same four vectors (288 bytes, 18 per row). The offset of `-8` is taken
//!   off in integers with the activation block's sum: `Σ(q - 8)·a = Σq·a - 8·Σa`.
//! - Q5_0: `d[16]` f16, one 64-byte vector of the fifth bits (bit `k` of byte `e` of lane `r` is the high
//!   bit of value `e` of quad `k`), then the four nibble vectors of Q4_0 (352 bytes, 22 per row); the
//!   offset is `-16`.
//! - Q8_0: `d[16]` f16, then eight 64-byte vectors, one per quad, weights stored offset by 128 as
//!   unsigned bytes (544 bytes, as in the file).
//!
//! The K-quants go by super-blocks of 256 values (eight or sixteen sub-blocks, each with its own integer
//! scale) and take activations with one scale per super-block (`Q8Act::quantize_super`, llama.cpp's
//! Q8_K), so each sub-block's integer sum is multiplied by its scale and added up in integers, with one
//! float step per super-block. Per group of 16 rows and super-block:
//! - Q4_K: `d[16]` f16, `dmin[16]` f16, the file's twelve bytes of 6-bit scales and minimums with byte
//!   `k` of the sixteen rows side by side (`64 + 16·k + row`, unpacked in the kernel), then per sub-block
//!   of 32 the four nibble vectors of Q4_1 (2,304 bytes, 144 per row as in the file).
//! - Q6_K: per 32 values, four nibble vectors of the low four bits (as Q4_1: quad `t` low, `t + 4` high)
//!   and two vectors of the high two bits (bits `2k..2k + 2` of vector `h` hold quad `4h + k`); then the
//!   sixteen signed scales per row (`3072 + 16·sub-block + row`) and `d[16]` f16 (3,360 bytes, 210 per
//!   row as in the file). Values are stored as `q + 32` in 0..64; the offset is taken off in integers
//!   with the activations' sums of 16.
//!
//! Rows past the end of the matrix are zero padding and never stored.

use std::ops::Range;

use candle_core::quantized::GgmlDType;
use rayon::prelude::*;

use super::q8::{Q8Act, QK, SUPER};
use super::{cpu, size, AlignedBytes, SharedOut};

/// Rows per group (lanes of a 512-bit register of i32).
pub const GROUP: usize = 16;

/// Offsets in a Q4_K group block: the twelve scale bytes (row `r`'s byte `k` at `+ 16·k + r`), then the
/// nibble vectors (sub-block `j`'s four at `+ 256·j`); `d` at 0, `dmin` at 32.
const Q4K_SCALES: usize = 64;
pub(super) const Q4K_QUANTS: usize = 256;

/// Offsets in a Q5_0 group block: the vector of fifth bits after `d[16]`, then the nibble vectors.
pub(super) const Q5_0_HIGH: usize = 32;
pub(super) const Q5_0_QUANTS: usize = 96;

/// Offsets in a Q6_K group block: the low-bit vectors at 0 (block `c` of 32 values at `256·c`), the
/// high-bit vectors (block `c`'s two at `+ 128·c`), the scales (sub-block `s`'s at `+ 16·s`), `d`.
pub(super) const Q6K_HIGH: usize = 2048;
pub(super) const Q6K_SCALES: usize = 3072;
pub(super) const Q6K_D: usize = 3328;

/// The instruction sets with kernels for the packed layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Isa {
    /// AVX2 with FMA and F16C (`avx2::plain`).
    Avx2,
    /// AVX2 with AVX-VNNI (`avx2::vnni`).
    AvxVnni,
    /// AVX-512 F/BW/VL/VNNI (`x86`).
    Avx512Vnni,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackedKind {
    Q4_0,
    Q4_1,
    Q5_0,
    Q8_0,
    Q4K,
    Q6K,
}

impl PackedKind {
    /// The packed kind that serves weights of `dtype` on this CPU, or `None` when they are not repacked
    /// as they are (no AVX2, or a type converted first: see `QMatrix::transcode`). Prompts run on AMX
    /// tiles where the CPU has them (`amx`, for every kind), else on the VNNI kernels, or on AVX2's
    /// (`avx2`) where the CPU has no AVX-512 VNNI.
    pub fn of(dtype: GgmlDType) -> Option<Self> {
        if !cpu::has_avx2() {
            return None;
        }
        match dtype {
            GgmlDType::Q4_0 => Some(PackedKind::Q4_0),
            GgmlDType::Q4_1 => Some(PackedKind::Q4_1),
            GgmlDType::Q5_0 => Some(PackedKind::Q5_0),
            GgmlDType::Q8_0 => Some(PackedKind::Q8_0),
            GgmlDType::Q4K => Some(PackedKind::Q4K),
            GgmlDType::Q6K => Some(PackedKind::Q6K),
            _ => None,
        }
    }

    /// Values per block (per super-block for the K-quants).
    fn block_values(self) -> usize {
        match self {
            PackedKind::Q4_0 | PackedKind::Q4_1 | PackedKind::Q5_0 | PackedKind::Q8_0 => QK,
            PackedKind::Q4K | PackedKind::Q6K => SUPER,
        }
    }

    /// Bytes of one block of one row in the file's layout.
    fn file_block_bytes(self) -> usize {
        match self {
            PackedKind::Q4_0 => 18,
            PackedKind::Q4_1 => 20,
            PackedKind::Q5_0 => 22,
            PackedKind::Q8_0 => 34,
            PackedKind::Q4K => 144,
            PackedKind::Q6K => 210,
        }
    }

    /// The activations this kind's kernels take: one scale per block of 32, or per super-block for the
    /// K-quants.
    pub fn quantize(self, x: &[f32], m: usize, cols: usize) -> Q8Act {
        match self {
            PackedKind::Q4_0 | PackedKind::Q4_1 | PackedKind::Q5_0 | PackedKind::Q8_0 => {
                Q8Act::quantize(x, m, cols)
            }
            PackedKind::Q4K | PackedKind::Q6K => Q8Act::quantize_super(x, m, cols),
        }
    }

    /// Bytes of one block of a group of 16 rows in the repacked layout: the file's, sixteen times.
    pub(in crate::kernels) fn group_block_bytes(self) -> usize {
        GROUP * self.file_block_bytes()
    }
}

/// A repacked matrix. The buffer is 64-byte aligned and holds `groups × blocks per row` group blocks; a
/// `Packed` exists only on a CPU with AVX2 (and FMA, F16C), which the least of its kernels need.
pub struct Packed {
    kind: PackedKind,
    rows: usize,
    cols: usize,
    data: AlignedBytes,
}

impl Packed {
    /// Repacks `rows × cols` weights given in the file's block layout, or `None` when this CPU has no
    /// AVX2 to run them. Panics unless `src` holds exactly those weights.
    pub fn new(kind: PackedKind, rows: usize, cols: usize, src: &[u8]) -> Option<Self> {
        if !cpu::has_avx2() {
            return None;
        }
        assert!(
            cols.is_multiple_of(kind.block_values()),
            "row length {cols}"
        );
        let nb = cols / kind.block_values();
        let groups = rows.div_ceil(GROUP);
        let gbb = kind.group_block_bytes();
        let src_block = kind.file_block_bytes();
        let row_bytes = nb * src_block;
        assert_eq!(src.len(), size(rows, row_bytes, "weights"), "weight bytes");
        let mut data = AlignedBytes::zeroed_weights(size(groups * nb, gbb, "repacked weights"));
        // Groups in parallel: packing a 7B model's K-quants one value at a time took seconds.
        data.as_mut_slice()
            .par_chunks_mut(nb * gbb)
            .enumerate()
            .for_each(|(g, group)| {
                for (b, dst) in group.chunks_exact_mut(gbb).enumerate() {
                    for lane in 0..GROUP.min(rows - g * GROUP) {
                        let row = g * GROUP + lane;
                        let blk = &src[row * row_bytes + b * src_block..][..src_block];
                        match kind {
                            PackedKind::Q4_0 => pack_q4_0(dst, lane, blk),
                            PackedKind::Q4_1 => pack_q4_1(dst, lane, blk),
                            PackedKind::Q5_0 => pack_q5_0(dst, lane, blk),
                            PackedKind::Q8_0 => pack_q8_0(dst, lane, blk),
                            PackedKind::Q4K => pack_q4_k(dst, lane, blk),
                            PackedKind::Q6K => pack_q6_k(dst, lane, blk),
                        }
                    }
                }
            });
        Some(Self {
            kind,
            rows,
            cols,
            data,
        })
    }

    #[inline]
    pub fn kind(&self) -> PackedKind {
        self.kind
    }

    /// Panics unless `x` has this matrix's row length, `groups` are groups of it and `out` holds
    /// `x.m() × rows` values: the checks before the kernels index without them.
    pub(super) fn check(&self, x: &Q8Act, groups: &Range<usize>, out: SharedOut) {
        assert_eq!(x.cols(), self.cols, "activation row length");
        assert_eq!(
            x.per_super_block(),
            self.kind.block_values() == SUPER,
            "activations quantized for another kind of weights"
        );
        assert!(
            groups.start <= groups.end && groups.end <= self.groups(),
            "groups {groups:?} of {}",
            self.groups()
        );
        assert_eq!(out.len(), size(x.m(), self.rows, "output"), "output size");
    }

    /// Activation rows `first..` with the AVX-512 VNNI kernels, or with AVX2's (`avx2`: with AVX-VNNI
    /// where the CPU has it) on a CPU without AVX-512 VNNI.
    ///
    /// # Safety
    /// As `run`.
    pub unsafe fn run_rows(&self, x: &Q8Act, first: usize, groups: Range<usize>, out: SharedOut) {
        let isa = if cpu::has_avx512_vnni() {
            Isa::Avx512Vnni
        } else if cpu::has_avx_vnni() {
            Isa::AvxVnni
        } else {
            Isa::Avx2
        };
        // SAFETY: our caller's promise; a `Packed` exists only on a CPU with AVX2 (`new`), and
        // AVX-512 VNNI or AVX-VNNI were asked for above.
        unsafe { self.run_rows_on(isa, x, first, groups, out) }
    }

    /// `run_rows` with the kernels of `isa` (tests compare the two).
    ///
    /// # Safety
    /// As `run`, on a CPU with `isa`.
    pub(super) unsafe fn run_rows_on(
        &self,
        isa: Isa,
        x: &Q8Act,
        first: usize,
        groups: Range<usize>,
        out: SharedOut,
    ) {
        self.check(x, &groups, out);
        #[cfg(target_arch = "x86_64")]
        {
            type Kernel = unsafe fn(&Packed, &Q8Act, usize, Range<usize>, SharedOut);
            let kernel: Kernel = match (isa, self.kind) {
                (Isa::Avx512Vnni, PackedKind::Q4_0) => x86::q4_0,
                (Isa::Avx512Vnni, PackedKind::Q4_1) => x86::q4_1,
                (Isa::Avx512Vnni, PackedKind::Q5_0) => x86::q5_0,
                (Isa::Avx512Vnni, PackedKind::Q8_0) => x86::q8_0,
                (Isa::Avx512Vnni, PackedKind::Q4K) => x86::q4_k,
                (Isa::Avx512Vnni, PackedKind::Q6K) => x86::q6_k,
                (Isa::Avx2, PackedKind::Q4_0) => avx2::plain::q4_0,
                (Isa::AvxVnni, PackedKind::Q4_0) => avx2::vnni::q4_0,
                (Isa::Avx2, PackedKind::Q4_1) => avx2::plain::q4_1,
                (Isa::AvxVnni, PackedKind::Q4_1) => avx2::vnni::q4_1,
                (Isa::Avx2, PackedKind::Q5_0) => avx2::plain::q5_0,
                (Isa::AvxVnni, PackedKind::Q5_0) => avx2::vnni::q5_0,
                (Isa::Avx2, PackedKind::Q8_0) => avx2::plain::q8_0,
                (Isa::AvxVnni, PackedKind::Q8_0) => avx2::vnni::q8_0,
                (Isa::Avx2, PackedKind::Q4K) => avx2::plain::q4_k,
                (Isa::AvxVnni, PackedKind::Q4K) => avx2::vnni::q4_k,
                (Isa::Avx2, PackedKind::Q6K) => avx2::plain::q6_k,
                (Isa::AvxVnni, PackedKind::Q6K) => avx2::vnni::q6_k,
            };
            // SAFETY: the CPU has `isa` (our caller's promise), the kernel is of this matrix's kind,
            // the sizes were checked above (the K-quants' activations with one scale per
            // super-block), and these groups' columns are this call's alone (our caller's promise).
            unsafe { kernel(self, x, first, groups, out) }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (isa, x, first, groups, out);
            unreachable!("packed kernels exist only for x86-64");
        }
    }

    /// Start of the data of block `b` of group `g`.
    ///
    /// # Safety
    /// `g < self.groups()` and `b` is less than the blocks per row (`cols / 32`, or `cols / 256` for
    /// the K-quants).
    #[inline]
    pub unsafe fn block(&self, g: usize, b: usize) -> *const u8 {
        let nb = self.cols / self.kind.block_values();
        debug_assert!(g < self.groups() && b < nb);
        // SAFETY: with g < groups and b < nb (the caller's promise) the offset is inside the buffer.
        unsafe {
            self.data
                .as_ptr()
                .add((g * nb + b) * self.kind.group_block_bytes())
        }
    }

    /// Bytes held (tests compare them with the file's).
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.data.as_slice().len()
    }

    /// Bytes of one group of 16 rows (all its blocks).
    #[inline]
    pub(super) fn group_bytes(&self) -> usize {
        self.cols / self.kind.block_values() * self.kind.group_block_bytes()
    }

    #[inline]
    pub fn groups(&self) -> usize {
        self.rows.div_ceil(GROUP)
    }

    #[inline]
    pub fn rows(&self) -> usize {
        self.rows
    }
}

fn pack_q4_0(dst: &mut [u8], lane: usize, blk: &[u8]) {
    dst[2 * lane..2 * lane + 2].copy_from_slice(&blk[0..2]); // d
    pack_nibbles(&mut dst[32..], lane, |j| nibble(&blk[2..18], j));
}

fn pack_q4_1(dst: &mut [u8], lane: usize, blk: &[u8]) {
    dst[2 * lane..2 * lane + 2].copy_from_slice(&blk[0..2]); // d
    dst[32 + 2 * lane..32 + 2 * lane + 2].copy_from_slice(&blk[2..4]); // m
    pack_nibbles(&mut dst[64..], lane, |j| nibble(&blk[4..20], j));
}

/// A Q5_0 block in the file's layout: `d`, the fifth bits of the 32 values (`u32`, bit `j` for value
/// `j`), then their low four bits as Q4_0's sixteen nibble bytes.
fn pack_q5_0(dst: &mut [u8], lane: usize, blk: &[u8]) {
    dst[2 * lane..2 * lane + 2].copy_from_slice(&blk[0..2]); // d
    let high = u32::from_le_bytes([blk[2], blk[3], blk[4], blk[5]]);
    for e in 0..4 {
        dst[Q5_0_HIGH + lane * 4 + e] =
            (0..8).fold(0u8, |b, k| b | ((((high >> (4 * k + e)) & 1) as u8) << k));
    }
    pack_nibbles(&mut dst[Q5_0_QUANTS..], lane, |j| nibble(&blk[6..22], j));
}

/// Value `j` of the 32 of a Q4_0/Q4_1 block's 16 nibble bytes (value `k` low, `k + 16` high).
fn nibble(qs: &[u8], j: usize) -> u8 {
    if j < 16 {
        qs[j] & 0x0F
    } else {
        qs[j - 16] >> 4
    }
}

/// 32 four-bit values (`value(0..32)`) as four 64-byte vectors whose lane `lane` holds quad `t` in its
/// low nibbles and quad `t + 4` in its high nibbles.
fn pack_nibbles(dst: &mut [u8], lane: usize, value: impl Fn(usize) -> u8) {
    for t in 0..4 {
        for e in 0..4 {
            let lo = value(4 * t + e);
            let hi = value(4 * (t + 4) + e);
            dst[t * 64 + lane * 4 + e] = lo | (hi << 4);
        }
    }
}

fn pack_q8_0(dst: &mut [u8], lane: usize, blk: &[u8]) {
    dst[2 * lane..2 * lane + 2].copy_from_slice(&blk[0..2]); // d
    for q in 0..8 {
        for e in 0..4 {
            dst[32 + q * 64 + lane * 4 + e] = blk[2 + 4 * q + e] ^ 0x80;
        }
    }
}

/// Value `e` (0..256) of a Q4_K block in the file's layout (`d`, `dmin`, 12 scale bytes, then per 64
/// values 32 bytes: values `l` low, `32 + l` high), without its scale: 0..16.
fn q4_k_value(blk: &[u8], e: usize) -> u8 {
    let (pair, l) = (e / 64, e % 64);
    let byte = blk[16 + 32 * pair + l % 32];
    if l < 32 {
        byte & 0x0F
    } else {
        byte >> 4
    }
}

fn pack_q4_k(dst: &mut [u8], lane: usize, blk: &[u8]) {
    dst[2 * lane..2 * lane + 2].copy_from_slice(&blk[0..2]); // d
    dst[32 + 2 * lane..32 + 2 * lane + 2].copy_from_slice(&blk[2..4]); // dmin
    for k in 0..12 {
        dst[Q4K_SCALES + 16 * k + lane] = blk[4 + k];
    }
    for j in 0..8 {
        pack_nibbles(&mut dst[Q4K_QUANTS + 256 * j..], lane, |l| {
            q4_k_value(blk, 32 * j + l)
        });
    }
}

/// Value `e` (0..256) of a Q6_K block in the file's layout (`ql[128]`, `qh[64]`, `scales[16]`, `d`),
/// without its scale and offset: 0..64. Per 128 values, `ql` holds values `l` and `32 + l` in its low
/// nibbles and `64 + l`, `96 + l` in its high ones, and `qh` byte `l` their high two bits in turn.
fn q6_k_value(blk: &[u8], e: usize) -> u8 {
    let (half, quarter, l) = (e / 128, e % 128 / 32, e % 32);
    let ql = blk[64 * half + 32 * (quarter & 1) + l];
    let low = if quarter < 2 { ql & 0x0F } else { ql >> 4 };
    let high = (blk[128 + 32 * half + l] >> (2 * quarter)) & 3;
    low | (high << 4)
}

fn pack_q6_k(dst: &mut [u8], lane: usize, blk: &[u8]) {
    for c in 0..8 {
        let value = |j: usize| q6_k_value(blk, 32 * c + j);
        pack_nibbles(&mut dst[256 * c..], lane, |j| value(j) & 0x0F);
        for h in 0..2 {
            for e in 0..4 {
                let bits = (0..4).fold(0u8, |b, k| {
                    b | ((value(4 * (4 * h + k) + e) >> 4) << (2 * k))
                });
                dst[Q6K_HIGH + (2 * c + h) * 64 + lane * 4 + e] = bits;
            }
        }
    }
    for s in 0..16 {
        dst[Q6K_SCALES + 16 * s + lane] = blk[192 + s];
    }
    dst[Q6K_D + 2 * lane..Q6K_D + 2 * lane + 2].copy_from_slice(&blk[208..210]);
    // d
}

/// Reads back one weight (row, col) from the packed layout (for tests).
#[cfg(test)]
pub fn unpack_value(p: &Packed, row: usize, col: usize) -> f32 {
    use half::f16;
    let values = p.kind.block_values();
    let nb = p.cols / values;
    let gbb = p.kind.group_block_bytes();
    let (g, lane, b, j) = (row / GROUP, row % GROUP, col / values, col % values);
    let base = &p.data.as_slice()[(g * nb + b) * gbb..][..gbb];
    let half =
        |at: usize| f16::from_le_bytes([base[at + 2 * lane], base[at + 2 * lane + 1]]).to_f32();
    // Four-bit value `l` (0..32) of the nibble vectors at `at`.
    let nibble = |at: usize, l: usize| {
        let (q, e) = (l / 4, l % 4);
        let byte = base[at + (q % 4) * 64 + lane * 4 + e];
        if q < 4 {
            byte & 0x0F
        } else {
            byte >> 4
        }
    };
    match p.kind {
        PackedKind::Q4_0 => half(0) * (nibble(32, j) as f32 - 8.0),
        PackedKind::Q4_1 => half(0) * nibble(64, j) as f32 + half(32),
        PackedKind::Q5_0 => {
            let high = (base[Q5_0_HIGH + lane * 4 + j % 4] >> (j / 4)) & 1;
            half(0) * ((nibble(Q5_0_QUANTS, j) | (high << 4)) as f32 - 16.0)
        }
        PackedKind::Q8_0 => {
            let (q, e) = (j / 4, j % 4);
            half(0) * ((base[32 + q * 64 + lane * 4 + e] ^ 0x80) as i8) as f32
        }
        PackedKind::Q4K => {
            let scales: Vec<u8> = (0..12).map(|k| base[Q4K_SCALES + 16 * k + lane]).collect();
            let (sc, m) = super::transcode::q4k_scale_min(j / 32, &scales);
            let q = nibble(Q4K_QUANTS + 256 * (j / 32), j % 32);
            half(0) * sc as f32 * q as f32 - half(32) * m as f32
        }
        PackedKind::Q6K => {
            let (c, l) = (j / 32, j % 32);
            let (q, e) = (l / 4, l % 4);
            let bits = base[Q6K_HIGH + (2 * c + q / 4) * 64 + lane * 4 + e];
            let v = nibble(256 * c, l) | (((bits >> (2 * (q % 4))) & 3) << 4);
            let sc = base[Q6K_SCALES + 16 * (j / 16) + lane] as i8;
            half(Q6K_D) * sc as f32 * (v as f32 - 32.0)
        }
    }
}

/// Defines a kernel for the CPU features `$features`: activation rows `first..` in tiles of up to `MR`
/// rows (`WIDE` where `$wide` and as many rows are left), each tile calling `$tile::<R, ...>` on one
/// block of groups (`TILE_WEIGHT_BYTES`) before the next block; `MR`, `WIDE` and `TILE_WEIGHT_BYTES`
/// are the calling module's. A tile reads one group's weights at a time, from start to end: one stream
/// of weights per thread. (Two groups side by side, which gave the decoding tiles more independent
/// chains, read weights a sixth slower on the 2-core Zen 5 machine: two streams per thread; in
/// prompt-sized Q4_K products, four rows by two groups ran as fast as eight rows by one.)
macro_rules! kernel {
    ($features:literal, $(#[$doc:meta])* $name:ident, $tile:ident, $wide:expr $(, $arg:expr)*) => {
        $(#[$doc])*
        #[target_feature(enable = $features)]
        pub unsafe fn $name(
            p: &Packed,
            x: &Q8Act,
            first: usize,
            groups: Range<usize>,
            out: SharedOut,
        ) {
            /// One tile of `R` rows, prefetching its weights or not (`FETCH`).
            ///
            /// # Safety
            /// As for the kernel, with `i0 + R <= x.m()`.
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn tile<const R: usize>(
                fetch: bool,
                p: &Packed,
                x: &Q8Act,
                g: Range<usize>,
                i0: usize,
                out: SharedOut,
            ) {
                if fetch {
                    // SAFETY: our caller's promise.
                    unsafe { $tile::<R, true $(, $arg)*>(p, x, g, i0, out) }
                } else {
                    // SAFETY: our caller's promise.
                    unsafe { $tile::<R, false $(, $arg)*>(p, x, g, i0, out) }
                }
            }
            let per_block = (TILE_WEIGHT_BYTES / p.group_bytes()).max(1);
            for start in groups.clone().step_by(per_block) {
                let block = start..(start + per_block).min(groups.end);
                let mut i0 = first;
                while i0 < x.m() {
                    // The first tile reads the block's weights from memory (see `PREFETCH_BYTES`).
                    let (g, fetch) = (block.clone(), i0 == first);
                    let left = x.m() - i0;
                    let r = if $wide && left >= WIDE { WIDE } else { left.min(MR) };
                    match r {
                        // SAFETY: i0 + 8 <= m; the rest is our caller's promise.
                        WIDE => unsafe { tile::<WIDE>(fetch, p, x, g, i0, out) },
                        // SAFETY: i0 + 4 <= m; as above.
                        4 => unsafe { tile::<4>(fetch, p, x, g, i0, out) },
                        // SAFETY: i0 + 3 <= m; as above.
                        3 => unsafe { tile::<3>(fetch, p, x, g, i0, out) },
                        // SAFETY: i0 + 2 <= m; as above.
                        2 => unsafe { tile::<2>(fetch, p, x, g, i0, out) },
                        // SAFETY: i0 + 1 <= m; as above.
                        _ => unsafe { tile::<1>(fetch, p, x, g, i0, out) },
                    }
                    i0 += r;
                }
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
mod avx2;

#[cfg(target_arch = "x86_64")]
pub(super) mod x86 {
    use std::arch::x86_64::*;
    use std::ops::Range;

    use super::{
        Packed, GROUP, Q4K_QUANTS, Q4K_SCALES, Q5_0_HIGH, Q5_0_QUANTS, Q6K_D, Q6K_HIGH, Q6K_SCALES,
    };
    use crate::kernels::q8::{Q8Act, Rows, QK, SUPER};
    use crate::kernels::{cpu, SharedOut};

    /// Activation rows processed together.
    const MR: usize = 4;

    /// Activation rows of the wide tiles of prompt-sized K-quant products: twice `MR`, one `vpdpbusd`
    /// chain per row, so that each unpacked weight vector serves eight rows. (Measured on the 2-core
    /// Zen 5, Q4_K and Q6_K products of 4,096 × 4,096 to 4,096 × 11,008 at 64 and 512 rows, together
    /// with the blocks of `TILE_WEIGHT_BYTES`: 4–13% faster than tiles of four.)
    const WIDE: usize = 2 * MR;

    /// Weights a prompt-sized product goes over with every tile of activation rows before it moves on
    /// to the next groups: half of a Zen 5 core's 1 MB L2, so that the tiles after the first read them
    /// from there (a thread's share of a 7B matrix, 1.2–3.2 MB, came from L3 for every tile). 256 KB
    /// and 768 KB were no faster.
    pub(super) const TILE_WEIGHT_BYTES: usize = 512 << 10;

    kernel!(
        "avx512f,avx512bw,avx512vl,avx512vnni,f16c,fma",
        /// Safety contract of the kernels and their tiles: the CPU supports AVX-512 F/BW/VL/VNNI, F16C
        /// and FMA; `p` is of the kernel's kind; `x` has the row length of `p`; `groups` are groups of
        /// `p`; `out` holds `x.m() × p.rows()` values, and no other task writes the columns of `groups`
        /// at the same time.
        ///
        /// # Safety
        /// As stated above.
        q4_1,
        q4_tile,
        true,
        true,
        false
    );

    kernel!(
        "avx512f,avx512bw,avx512vl,avx512vnni,f16c,fma",
        /// # Safety
        /// As for `q4_1`.
        q4_0,
        q4_tile,
        true,
        false,
        false
    );

    kernel!(
        "avx512f,avx512bw,avx512vl,avx512vnni,f16c,fma",
        /// # Safety
        /// As for `q4_1`.
        q5_0,
        q4_tile,
        true,
        false,
        true
    );

    kernel!(
        "avx512f,avx512bw,avx512vl,avx512vnni,f16c,fma",
        /// # Safety
        /// As for `q4_1`.
        q8_0,
        q8_0_tile,
        false
    );

    kernel!(
        "avx512f,avx512bw,avx512vl,avx512vnni,f16c,fma",
        /// # Safety
        /// As for `q4_1`, and `x` was quantized with one scale per super-block.
        q4_k,
        q4_k_tile,
        true
    );

    kernel!(
        "avx512f,avx512bw,avx512vl,avx512vnni,f16c,fma",
        /// # Safety
        /// As for `q4_k`.
        q6_k,
        q6_k_tile,
        true
    );

    /// Stores 16 results of activation row `i` for group `g` (fewer in the last, partial group).
    ///
    /// # Safety
    /// `i < x.m()` and `g < p.groups()` for the `out` of the kernels' contract, whose promise about
    /// other tasks covers this group's columns.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn store(p: &Packed, out: SharedOut, i: usize, g: usize, v: __m512) {
        let first = g * GROUP;
        let n = (p.rows - first).min(GROUP);
        // SAFETY: columns first..first + n of row i are inside the output and this task's alone.
        let dst = unsafe { out.slice(i * p.rows + first, n) };
        if n == GROUP {
            // SAFETY: `dst` holds 16 values, one 512-bit store.
            unsafe { _mm512_storeu_ps(dst.as_mut_ptr(), v) };
        } else {
            // SAFETY: the mask writes only the first n lanes, inside `dst`.
            unsafe { _mm512_mask_storeu_ps(dst.as_mut_ptr(), ((1u32 << n) - 1) as u16, v) };
        }
    }

    /// Broadcasts of the eight 4-byte quads of the 32 quants at `a`.
    ///
    /// # Safety
    /// `a` points at 32 readable bytes.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn quads(a: *const i8) -> [__m512i; 8] {
        let a = a.cast::<i32>();
        std::array::from_fn(|t| {
            // SAFETY: quad t of the 32 bytes at `a` (the caller's promise).
            _mm512_set1_epi32(unsafe { a.wrapping_add(t).read_unaligned() })
        })
    }

    /// `R` activation rows against one group of 16 weight rows at a time, for Q4_1 (`MIN`: weights
    /// `d·q + m`), Q4_0 (`d·(q - 8)`) or Q5_0 (`HIGH`: a fifth bit per value, `d·(q - 16)`). Each
    /// (group, row) pair sums its block in four independent integer chains (exact, so the split changes
    /// nothing), which keeps the `vpdpbusd` pipeline busy when `R` is 1 (decoding).
    ///
    /// # Safety
    /// As for `q4_1`, with `i0 + R <= x.m()`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c,fma")]
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
        let low = _mm512_set1_epi8(0x0F);
        // The group block: d[16] f16 (32 bytes), for Q4_1 m[16] f16 (32), for Q5_0 the fifth bits (64),
        // then four 64-byte vectors.
        let quants = match (MIN, HIGH) {
            (true, _) => 64,
            (false, true) => Q5_0_QUANTS,
            (false, false) => 32,
        };
        // Q4_0's and Q5_0's offsets, taken off with the activations' sums.
        let offset = if HIGH { 16 } else { 8 };
        debug_assert!(!(MIN && HIGH), "no type has both a minimum and fifth bits");
        for g in groups {
            let mut acc = [_mm512_setzero_ps(); R];
            for b in 0..nb {
                // SAFETY: (each) b < nb.
                let da: [f32; R] = std::array::from_fn(|r| unsafe { rows.d(r, b) });
                // SAFETY: (each) b < nb.
                let sa: [f32; R] = std::array::from_fn(|r| unsafe { rows.s(r, b) });
                // SAFETY: (each) b < nb.
                let qsum: [i32; R] = std::array::from_fn(|r| unsafe { rows.qsum(r, b) });
                // SAFETY: g < groups.end <= p.groups() and b < nb, the blocks per row of
                // `p` (`Packed::check`).
                let blk = unsafe { p.block(g, b) };
                if FETCH {
                    prefetch_ahead(blk, block_bytes, 0, 1);
                }
                // SAFETY: d, 32 bytes at the start of the block.
                let dw = _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(blk.cast()) });
                // SAFETY: for Q5_0, the fifth bits' vector at offset 32 of the block.
                let fifth =
                    HIGH.then(|| unsafe { _mm512_loadu_si512(blk.wrapping_add(Q5_0_HIGH).cast()) });
                let vectors: [[__m512i; 2]; 4] = std::array::from_fn(|t| {
                    // SAFETY: vector t of the four, at offset `quants + 64·t` of the block.
                    let v = unsafe { _mm512_loadu_si512(blk.wrapping_add(quants + t * 64).cast()) };
                    let pair = [
                        _mm512_and_si512(v, low),
                        _mm512_and_si512(_mm512_srli_epi16(v, 4), low),
                    ];
                    match fifth {
                        Some(h) => with_fifth_bits(pair, h, t),
                        None => pair,
                    }
                });
                let sums: [__m512i; R] = if R > MR {
                    // `WIDE` rows: one chain per row, the quants broadcast from memory.
                    let mut sum = [_mm512_setzero_si512(); R];
                    for (t, [lo, hi]) in vectors.iter().enumerate() {
                        for (r, s) in sum.iter_mut().enumerate() {
                            // SAFETY: b < nb, so block b's 32 quants lie inside row r.
                            let [qa, qb] = unsafe { quads_pair(rows.quants(r, b), t) };
                            *s = _mm512_dpbusd_epi32(*s, *lo, _mm512_set1_epi32(qa));
                            *s = _mm512_dpbusd_epi32(*s, *hi, _mm512_set1_epi32(qb));
                        }
                    }
                    sum
                } else {
                    // SAFETY: (each of the R) b < nb, so block b's 32 quants lie inside the row.
                    let a: [[__m512i; 8]; R] =
                        std::array::from_fn(|r| unsafe { quads(rows.quants(r, b)) });
                    let mut sum = [[_mm512_setzero_si512(); 4]; R];
                    for (t, [lo, hi]) in vectors.iter().enumerate() {
                        for (s, a) in sum.iter_mut().zip(&a) {
                            s[t & 1] = _mm512_dpbusd_epi32(s[t & 1], *lo, a[t]);
                            s[2 + (t & 1)] = _mm512_dpbusd_epi32(s[2 + (t & 1)], *hi, a[t + 4]);
                        }
                    }
                    sum.map(|s| {
                        _mm512_add_epi32(_mm512_add_epi32(s[0], s[1]), _mm512_add_epi32(s[2], s[3]))
                    })
                };
                for (r, (s, acc)) in sums.iter().zip(acc.iter_mut()).enumerate() {
                    let mut isum = *s;
                    if !MIN {
                        // The offset: Σ(q - 8)·a = Σq·a - 8·Σa (16 for Q5_0), exact in integers.
                        isum = _mm512_sub_epi32(isum, _mm512_set1_epi32(offset * qsum[r]));
                    }
                    let scale = _mm512_mul_ps(dw, _mm512_set1_ps(da[r]));
                    *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), scale, *acc);
                    if MIN {
                        // SAFETY: m, 32 bytes at offset 32 of a Q4_1 block.
                        let mw = _mm512_cvtph_ps(unsafe {
                            _mm256_loadu_si256(blk.wrapping_add(32).cast())
                        });
                        *acc = _mm512_fmadd_ps(mw, _mm512_set1_ps(sa[r]), *acc);
                    }
                }
            }
            for (r, a) in acc.iter().enumerate() {
                // SAFETY: i0 + r < m and g is one of this call's groups.
                unsafe { store(p, out, i0 + r, g, *a) };
            }
        }
    }

    /// Quads `t` (low nibbles) and `t + 4` (high nibbles, already shifted down) of a Q5_0 block with
    /// their fifth bits from `fifth`, where bit `k` of each byte belongs to quad `k`: each moved to bit 4
    /// by a shift within its byte (`t < 4`, so no bit crosses into the next byte's bit 4).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(in crate::kernels) fn with_fifth_bits(
        [lo, hi]: [__m512i; 2],
        fifth: __m512i,
        t: usize,
    ) -> [__m512i; 2] {
        let bit = _mm512_set1_epi8(0x10);
        let up = _mm512_sll_epi16(fifth, _mm_cvtsi32_si128(4 - t as i32));
        let down = _mm512_srl_epi16(fifth, _mm_cvtsi32_si128(t as i32));
        [
            _mm512_or_si512(lo, _mm512_and_si512(up, bit)),
            _mm512_or_si512(hi, _mm512_and_si512(down, bit)),
        ]
    }

    /// As `q4_tile`, for Q8_0 weights stored as `w + 128`.
    ///
    /// # Safety
    /// As for `q4_1`, with `i0 + R <= x.m()`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c,fma")]
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
        for g in groups {
            let mut acc = [_mm512_setzero_ps(); R];
            for b in 0..nb {
                // SAFETY: (each of the R) b < nb, so block b's 32 quants lie inside the row.
                let a: [[__m512i; 8]; R] =
                    std::array::from_fn(|r| unsafe { quads(rows.quants(r, b)) });
                // SAFETY: (each) b < nb.
                let da: [f32; R] = std::array::from_fn(|r| unsafe { rows.d(r, b) });
                // SAFETY: (each) b < nb.
                let qsum: [i32; R] = std::array::from_fn(|r| unsafe { rows.qsum(r, b) });
                // SAFETY: g < groups.end <= p.groups() and b < nb, the blocks per row of
                // `p` (`Packed::check`).
                let blk = unsafe { p.block(g, b) };
                if FETCH {
                    prefetch_ahead(blk, block_bytes, 0, 1);
                }
                // The group block: d[16] f16 (32 bytes), then eight 64-byte vectors.
                // SAFETY: d, 32 bytes at the start of the 64-byte aligned block.
                let dw = _mm512_cvtph_ps(unsafe { _mm256_load_si256(blk.cast()) });
                let mut sum = [[_mm512_setzero_si512(); 4]; R];
                for q in 0..8 {
                    // SAFETY: vector q of the eight, at offset 32 + 64·q.
                    let v = unsafe { _mm512_loadu_si512(blk.wrapping_add(32 + q * 64).cast()) };
                    for (s, a) in sum.iter_mut().zip(&a) {
                        s[q & 3] = _mm512_dpbusd_epi32(s[q & 3], v, a[q]);
                    }
                }
                for (r, (s, acc)) in sum.iter().zip(acc.iter_mut()).enumerate() {
                    // Weights were stored as w + 128: remove 128 · Σa from every lane.
                    let corr = _mm512_set1_epi32(128 * qsum[r]);
                    let total = _mm512_add_epi32(
                        _mm512_add_epi32(s[0], s[1]),
                        _mm512_add_epi32(s[2], s[3]),
                    );
                    let isum = _mm512_sub_epi32(total, corr);
                    let scale = _mm512_mul_ps(dw, _mm512_set1_ps(da[r]));
                    *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), scale, *acc);
                }
            }
            for (r, a) in acc.iter().enumerate() {
                // SAFETY: i0 + r < m and g is one of this call's groups.
                unsafe { store(p, out, i0 + r, g, *a) };
            }
        }
    }

    /// Quads `t` and `t + 4` (0 <= t < 4) of the 32 quants at `a`. The K-quant tiles read each pair where
    /// it is used instead of taking all eight as vectors up front (`quads`, as the 32-value tiles do):
    /// with their per-sub-block integer sums beside them, four rows' 32 broadcast vectors no longer fit
    /// the registers, and Qwen2.5-Coder 1.5B's prefill fell from 330 to 238 tok/s.
    ///
    /// # Safety
    /// `a` points at 32 readable bytes.
    #[inline]
    unsafe fn quads_pair(a: *const i8, t: usize) -> [i32; 2] {
        let a = a.cast::<i32>();
        debug_assert!(t < 4);
        // SAFETY: quads t and t + 4 (< 8) of the 32 bytes at `a` (the caller's promise).
        [t, t + 4].map(|q| unsafe { a.wrapping_add(q).read_unaligned() })
    }

    /// Blocks of 32 per super-block.
    const SUB: usize = SUPER / QK;

    /// How far ahead of the block being read the kernels ask for weights: two Q4_K super-blocks. The
    /// hardware prefetcher alone left decoding a fifth to a third below the machine's bandwidth (Zen 5,
    /// 2 threads, an 11008 × 4096 matrix per call: Q4_K 0.70 → 0.53 ms, Q6_K 1.05 → 0.77, Q4_1 0.66 →
    /// 0.60, Q8_0 1.18 → 1.00); 2.3 KB ahead and 9–14 KB were slower than 4.6 KB.
    ///
    /// Only the first tile of rows over a block of groups prefetches (`FETCH`, a constant of the tiles:
    /// a run-time test in the block loop cost a prompt a sixth): it reads the weights from memory, and
    /// the tiles after it find them in L2, where prefetches only cost time (every tile of a prompt
    /// prefetching took Qwen2.5-Coder 0.5B's prefill from 883 to 654 tok/s). In a decoding step there is
    /// one tile per block; in a prompt of a 7B model the first tile's prefetch gave prefill 512 a fifth
    /// (2 threads, Zen 5: Q4_0 67.8 → 82.8 tok/s, Q4_K_M 65.7 → 77.8).
    const PREFETCH_BYTES: usize = 4608;

    /// Asks for part `part` of `parts` of the `bytes` bytes that lie `PREFETCH_BYTES` after `blk` to be
    /// fetched into the cache (a hint: it never faults, so it may point past the weights): into L1 on
    /// AMD, into L2 on Intel (`cpu::prefetch_into_l2`).
    #[inline]
    pub(in crate::kernels) fn prefetch_ahead(
        blk: *const u8,
        bytes: usize,
        part: usize,
        parts: usize,
    ) {
        let (start, end) = (bytes * part / parts, bytes * (part + 1) / parts);
        let mut at = start / 64 * 64;
        while at < end {
            let line = blk.wrapping_add(PREFETCH_BYTES + at).cast();
            if cpu::prefetch_into_l2() {
                // SAFETY: a prefetch reads nothing the program sees and never faults.
                unsafe { _mm_prefetch::<_MM_HINT_T1>(line) }
            } else {
                // SAFETY: as above.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(line) }
            }
            at += 64;
        }
    }

    /// The scales and minimums of sub-block `j` (0..8) of the sixteen rows of a Q4_K group block, a
    /// byte per row, unpacked from the file's 6-bit encoding (kept as twelve 16-byte rows).
    ///
    /// # Safety
    /// `blk` is a Q4_K group block; `j < 8`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c,fma")]
    pub(in crate::kernels) unsafe fn q4_k_scales(blk: *const u8, j: usize) -> (__m128i, __m128i) {
        // SAFETY: byte k (< 12) of the sixteen rows, inside the group block (our caller's promise).
        let byte =
            |k: usize| unsafe { _mm_loadu_si128(blk.wrapping_add(Q4K_SCALES + 16 * k).cast()) };
        q4_k_unpack(byte, j)
    }

    /// The scales and minimums of sub-block `j` (0..8) from `byte(k)`, byte `k` of the twelve 6-bit
    /// scale bytes of some rows (a byte per row: sixteen, or eight for the AVX2 kernels' halves).
    #[inline]
    #[target_feature(enable = "sse2")]
    pub(in crate::kernels) fn q4_k_unpack(
        byte: impl Fn(usize) -> __m128i,
        j: usize,
    ) -> (__m128i, __m128i) {
        let (m63, m0f, m30) = (_mm_set1_epi8(63), _mm_set1_epi8(0x0F), _mm_set1_epi8(0x30));
        if j < 4 {
            (_mm_and_si128(byte(j), m63), _mm_and_si128(byte(j + 4), m63))
        } else {
            // The top two bits of bytes 0..8 are bits 4 and 5 of the last four scales and minimums.
            let top = |k| _mm_and_si128(_mm_srli_epi16(byte(k), 2), m30);
            (
                _mm_or_si128(_mm_and_si128(byte(j + 4), m0f), top(j - 4)),
                _mm_or_si128(_mm_and_si128(_mm_srli_epi16(byte(j + 4), 4), m0f), top(j)),
            )
        }
    }

    /// Two sub-blocks' minimums (a byte per row each) as sixteen pairs of i16, row `r`'s in lane `r`,
    /// for `vpdpwssd` against a pair of activation sums.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(in crate::kernels) fn min_pairs(a: __m128i, b: __m128i) -> __m512i {
        let pairs = _mm256_set_m128i(_mm_unpackhi_epi8(a, b), _mm_unpacklo_epi8(a, b));
        _mm512_cvtepu8_epi16(pairs)
    }

    /// As `min_pairs`, for signed bytes (the Q6_K scales).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    fn signed_pairs(a: __m128i, b: __m128i) -> __m512i {
        let pairs = _mm256_set_m128i(_mm_unpackhi_epi8(a, b), _mm_unpacklo_epi8(a, b));
        _mm512_cvtepi8_epi16(pairs)
    }

    /// `R` activation rows against one group of 16 Q4_K weight rows at a time. Per super-block and
    /// row: each sub-block's `Σq·a` (`vpdpbusd` over its four nibble vectors) times its scale, and its
    /// minimum times the activations' sum, added in integers; then `d·da·Σ - dmin·da·Σmin` in floats.
    /// Up to `MR` rows sum each sub-block in two chains per row (low and high nibbles), which keeps
    /// the `vpdpbusd` pipeline busy for one row; `WIDE` rows have chains enough with one per row.
    ///
    /// # Safety
    /// As for `q4_k`, with `i0 + R <= x.m()`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c,fma")]
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
        let low = _mm512_set1_epi8(0x0F);
        let hi_at = usize::from(R <= MR);
        for g in groups {
            let mut acc = [_mm512_setzero_ps(); R];
            for sb in 0..nsb {
                // SAFETY: (each of the R) sb·8 < nb: the super-block's scale, on each of its blocks.
                let da: [f32; R] = std::array::from_fn(|r| unsafe { rows.d(r, sb * SUB) });
                // SAFETY: g < groups.end <= p.groups() and sb < the super-blocks per row of
                // `p` (`Packed::check`).
                let blk = unsafe { p.block(g, sb) };
                let mut isum = [_mm512_setzero_si512(); R];
                let mut mins = [_mm_setzero_si128(); SUB];
                for (j, min) in mins.iter_mut().enumerate() {
                    // SAFETY: a Q4_K group block and j < 8.
                    let (sc, m) = unsafe { q4_k_scales(blk, j) };
                    let sc = _mm512_cvtepu8_epi32(sc);
                    *min = m;
                    let mut sum = [[_mm512_setzero_si512(); 2]; R];
                    if FETCH {
                        prefetch_ahead(blk, block_bytes, j, SUB);
                    }
                    for t in 0..4 {
                        // SAFETY: vector t of sub-block j.
                        let v = unsafe {
                            _mm512_loadu_si512(
                                blk.wrapping_add(Q4K_QUANTS + 256 * j + 64 * t).cast(),
                            )
                        };
                        let lo = _mm512_and_si512(v, low);
                        let hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
                        for (r, s) in sum.iter_mut().enumerate() {
                            // SAFETY: block sb·8 + j < nb, inside row r.
                            let [qa, qb] = unsafe { quads_pair(rows.quants(r, sb * SUB + j), t) };
                            s[0] = _mm512_dpbusd_epi32(s[0], lo, _mm512_set1_epi32(qa));
                            s[hi_at] = _mm512_dpbusd_epi32(s[hi_at], hi, _mm512_set1_epi32(qb));
                        }
                    }
                    for (r, s) in sum.iter().enumerate() {
                        let block = if hi_at == 0 {
                            s[0]
                        } else {
                            _mm512_add_epi32(s[0], s[1])
                        };
                        isum[r] = _mm512_add_epi32(isum[r], _mm512_mullo_epi32(block, sc));
                    }
                }
                // Σ minimum·Σa over the sub-blocks, two at a time: |Σa| <= 32·127 fits an i16.
                let mut msum = [_mm512_setzero_si512(); R];
                for k in 0..SUB / 2 {
                    let pairs = min_pairs(mins[2 * k], mins[2 * k + 1]);
                    for (r, msum) in msum.iter_mut().enumerate() {
                        // SAFETY: blocks b and b + 1 < nb, and `x` has i16 sums (our caller's
                        // promise).
                        let sums = unsafe { rows.block_pair(r, sb * SUB + 2 * k) };
                        *msum = _mm512_dpwssd_epi32(*msum, pairs, _mm512_set1_epi32(sums));
                    }
                }
                // SAFETY: d, 32 bytes at the start of the group block.
                let dw = _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(blk.cast()) });
                // SAFETY: dmin, 32 bytes at offset 32.
                let dmw =
                    _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(blk.wrapping_add(32).cast()) });
                for r in 0..R {
                    let a = _mm512_set1_ps(da[r]);
                    let (scale, mscale) = (_mm512_mul_ps(dw, a), _mm512_mul_ps(dmw, a));
                    acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[r]), scale, acc[r]);
                    acc[r] = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(msum[r]), mscale, acc[r]);
                }
            }
            for (r, a) in acc.iter().enumerate() {
                // SAFETY: i0 + r < m and g is one of this call's groups.
                unsafe { store(p, out, i0 + r, g, *a) };
            }
        }
    }

    /// Half `H` (values `16H..16H + 16`, one scale) of block `c` of a Q6_K group block against `R`
    /// rows' block `b`: `isum[r] += scale · Σq·a`, one `vpdpbusd` chain per row (the offset 32 is
    /// taken off by the caller).
    ///
    /// # Safety
    /// `blk` is a Q6_K group block, `c < 8`, `high` the high-bit vector of half `H` of block `c`;
    /// block `b` is inside each of the rows.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c,fma")]
    unsafe fn q6_k_half<const R: usize, const H: usize>(
        blk: *const u8,
        c: usize,
        high: __m512i,
        rows: &Rows<'_, R>,
        b: usize,
        scale: __m512i,
        isum: &mut [__m512i; R],
    ) {
        let low = _mm512_set1_epi8(0x0F);
        let mut sum = [_mm512_setzero_si512(); R];
        for t in 0..4 {
            // SAFETY: low-bit vector t of block c, at 256·c + 64·t.
            let v = unsafe { _mm512_loadu_si512(blk.wrapping_add(256 * c + 64 * t).cast()) };
            let v = if H == 0 { v } else { _mm512_srli_epi16(v, 4) };
            let q = _mm512_or_si512(_mm512_and_si512(v, low), q6_k_high(high, t));
            for (r, s) in sum.iter_mut().enumerate() {
                // SAFETY: block b of row r (our caller's promise).
                let qa = unsafe { quads_pair(rows.quants(r, b), t) }[H];
                *s = _mm512_dpbusd_epi32(*s, q, _mm512_set1_epi32(qa));
            }
        }
        for (r, s) in sum.iter().enumerate() {
            isum[r] = _mm512_add_epi32(isum[r], _mm512_mullo_epi32(*s, scale));
        }
    }

    /// Bits `2t..2t + 2` of each byte of `h` moved to bits 4 and 5 (the high bits of quad `t`'s values).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(in crate::kernels) fn q6_k_high(h: __m512i, t: usize) -> __m512i {
        let shifted = match t {
            0 => _mm512_slli_epi16(h, 4),
            1 => _mm512_slli_epi16(h, 2),
            2 => h,
            _ => _mm512_srli_epi16(h, 2),
        };
        _mm512_and_si512(shifted, _mm512_set1_epi8(0x30))
    }

    /// `R` activation rows against one group of 16 Q6_K weight rows at a time. Per super-block and
    /// row: each sub-block of 16's `Σ(q + 32)·a - 32·Σa` (exact) times its signed scale, added in
    /// integers (the `32·Σa` of a block's two halves in one `vpdpwssd`); then `d·da·Σ` in floats.
    /// `WIDE` rows take one half at a time (`q6_k_half`), a chain per row.
    ///
    /// # Safety
    /// As for `q6_k`, with `i0 + R <= x.m()`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c,fma")]
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
        let low = _mm512_set1_epi8(0x0F);
        for g in groups {
            let mut acc = [_mm512_setzero_ps(); R];
            for sb in 0..nsb {
                // SAFETY: (each of the R) sb·8 < nb: the super-block's scale, on each of its blocks.
                let da: [f32; R] = std::array::from_fn(|r| unsafe { rows.d(r, sb * SUB) });
                // SAFETY: g < groups.end <= p.groups() and sb < the super-blocks per row of
                // `p` (`Packed::check`).
                let blk = unsafe { p.block(g, sb) };
                let mut isum = [_mm512_setzero_si512(); R];
                for c in 0..SUB {
                    let high = blk.wrapping_add(Q6K_HIGH + 128 * c);
                    // SAFETY: the two high-bit vectors of block c.
                    let h0 = unsafe { _mm512_loadu_si512(high.cast()) };
                    // SAFETY: as above.
                    let h1 = unsafe { _mm512_loadu_si512(high.wrapping_add(64).cast()) };
                    if FETCH {
                        prefetch_ahead(blk, block_bytes, c, SUB);
                    }
                    // SAFETY: the scales of the two halves of block c (sub-blocks 2c and 2c + 1).
                    let bytes: [__m128i; 2] = std::array::from_fn(|h| unsafe {
                        _mm_loadu_si128(blk.wrapping_add(Q6K_SCALES + 16 * (2 * c + h)).cast())
                    });
                    let scales = [
                        _mm512_cvtepi8_epi32(bytes[0]),
                        _mm512_cvtepi8_epi32(bytes[1]),
                    ];
                    // The offset: Σ(q - 32)·a = Σq·a - 32·Σa, for both halves in one `vpdpwssd` per
                    // row (|32·scale| <= 4,096 fits an i16, as does Σa over 16 quants).
                    let offsets = _mm512_sub_epi16(
                        _mm512_setzero_si512(),
                        _mm512_slli_epi16(signed_pairs(bytes[0], bytes[1]), 5),
                    );
                    for (r, isum) in isum.iter_mut().enumerate() {
                        // SAFETY: block sb·8 + c < nb, and `x` has i16 sums (our caller's promise).
                        let sums = unsafe { rows.half_pair(r, sb * SUB + c) };
                        *isum = _mm512_dpwssd_epi32(*isum, offsets, _mm512_set1_epi32(sums));
                    }
                    if R > MR {
                        // `WIDE` rows: one half (16 values, one scale) at a time, a chain per row.
                        let b = sb * SUB + c;
                        // SAFETY: block c of this group block; block b < nb in each row.
                        unsafe { q6_k_half::<R, 0>(blk, c, h0, &rows, b, scales[0], &mut isum) };
                        // SAFETY: as above.
                        unsafe { q6_k_half::<R, 1>(blk, c, h1, &rows, b, scales[1], &mut isum) };
                        continue;
                    }
                    let mut sum = [[_mm512_setzero_si512(); 2]; R];
                    for t in 0..4 {
                        // SAFETY: low-bit vector t of block c, at 256·c + 64·t.
                        let v = unsafe {
                            _mm512_loadu_si512(blk.wrapping_add(256 * c + 64 * t).cast())
                        };
                        let lo = _mm512_or_si512(_mm512_and_si512(v, low), q6_k_high(h0, t));
                        let hi = _mm512_or_si512(
                            _mm512_and_si512(_mm512_srli_epi16(v, 4), low),
                            q6_k_high(h1, t),
                        );
                        for (r, s) in sum.iter_mut().enumerate() {
                            // SAFETY: block sb·8 + c < nb, inside row r.
                            let [qa, qb] = unsafe { quads_pair(rows.quants(r, sb * SUB + c), t) };
                            s[0] = _mm512_dpbusd_epi32(s[0], lo, _mm512_set1_epi32(qa));
                            s[1] = _mm512_dpbusd_epi32(s[1], hi, _mm512_set1_epi32(qb));
                        }
                    }
                    for (r, s) in sum.iter().enumerate() {
                        for h in 0..2 {
                            isum[r] =
                                _mm512_add_epi32(isum[r], _mm512_mullo_epi32(s[h], scales[h]));
                        }
                    }
                }
                // SAFETY: d, 32 bytes.
                let dw =
                    _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(blk.wrapping_add(Q6K_D).cast()) });
                for r in 0..R {
                    let scale = _mm512_mul_ps(dw, _mm512_set1_ps(da[r]));
                    acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[r]), scale, acc[r]);
                }
            }
            for (r, a) in acc.iter().enumerate() {
                // SAFETY: i0 + r < m and g is one of this call's groups.
                unsafe { store(p, out, i0 + r, g, *a) };
            }
        }
    }
}
