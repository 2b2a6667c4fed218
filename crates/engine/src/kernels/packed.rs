//! Weights repacked at load time for AVX-512 VNNI: sixteen output rows per SIMD register.
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
//! - Q8_0: `d[16]` f16, then eight 64-byte vectors, one per quad, weights stored offset by 128 as
//!   unsigned bytes (544 bytes, as in the file).
//!
//! Rows past the end of the matrix are zero padding and never stored.

use std::ops::Range;

use candle_core::quantized::GgmlDType;

use super::q8::{Q8Act, QK};
use super::{amx, cpu, size, AlignedBytes, SharedOut};

/// Rows per group (lanes of a 512-bit register of i32).
pub const GROUP: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackedKind {
    Q4_0,
    Q4_1,
    Q8_0,
}

impl PackedKind {
    /// The packed kind that serves weights of `dtype` on this CPU, or `None` when they are not repacked
    /// as they are (no AVX-512 VNNI, or a type converted first: see `QMatrix::transcode`). Q4_0 is
    /// repacked where the VNNI kernels run prompts too; on AMX CPUs it is converted to Q4_1, which has
    /// tiles there.
    pub fn of(dtype: GgmlDType) -> Option<Self> {
        if !cpu::has_avx512_vnni() {
            return None;
        }
        match dtype {
            GgmlDType::Q4_1 => Some(PackedKind::Q4_1),
            GgmlDType::Q8_0 => Some(PackedKind::Q8_0),
            GgmlDType::Q4_0 if !amx::available() => Some(PackedKind::Q4_0),
            _ => None,
        }
    }

    /// Bytes of one block of one row in the file's layout.
    fn file_block_bytes(self) -> usize {
        match self {
            PackedKind::Q4_0 => 18,
            PackedKind::Q4_1 => 20,
            PackedKind::Q8_0 => 34,
        }
    }

    /// Bytes of one block of a group of 16 rows in the repacked layout: the file's, sixteen times.
    fn group_block_bytes(self) -> usize {
        GROUP * self.file_block_bytes()
    }
}

/// A repacked matrix. The buffer is 64-byte aligned and holds `groups × (cols / 32)` group blocks; a
/// `Packed` exists only on a CPU with AVX-512 VNNI, which its kernels need.
pub struct Packed {
    kind: PackedKind,
    rows: usize,
    cols: usize,
    data: AlignedBytes,
}

impl Packed {
    /// Repacks `rows × cols` weights given in the file's block layout, or `None` when this CPU has no
    /// AVX-512 VNNI to run them. Panics unless `src` holds exactly those weights.
    pub fn new(kind: PackedKind, rows: usize, cols: usize, src: &[u8]) -> Option<Self> {
        if !cpu::has_avx512_vnni() {
            return None;
        }
        assert!(cols.is_multiple_of(QK), "row length {cols}");
        let nb = cols / QK;
        let groups = rows.div_ceil(GROUP);
        let gbb = kind.group_block_bytes();
        let src_block = kind.file_block_bytes();
        let row_bytes = nb * src_block;
        assert_eq!(src.len(), size(rows, row_bytes, "weights"), "weight bytes");
        let mut data = AlignedBytes::zeroed(size(groups * nb, gbb, "repacked weights"));
        let out = data.as_mut_slice();
        for g in 0..groups {
            for b in 0..nb {
                let dst = &mut out[(g * nb + b) * gbb..(g * nb + b + 1) * gbb];
                for lane in 0..GROUP {
                    let row = g * GROUP + lane;
                    if row >= rows {
                        break;
                    }
                    let blk = &src[row * row_bytes + b * src_block..][..src_block];
                    match kind {
                        PackedKind::Q4_0 => pack_q4_0(dst, lane, blk),
                        PackedKind::Q4_1 => pack_q4_1(dst, lane, blk),
                        PackedKind::Q8_0 => pack_q8_0(dst, lane, blk),
                    }
                }
            }
        }
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
        assert!(
            groups.start <= groups.end && groups.end <= self.groups(),
            "groups {groups:?} of {}",
            self.groups()
        );
        assert_eq!(out.len(), size(x.m(), self.rows, "output"), "output size");
    }

    /// Activation rows `first..` with the VNNI kernels.
    ///
    /// # Safety
    /// As `run`.
    pub unsafe fn run_rows(&self, x: &Q8Act, first: usize, groups: Range<usize>, out: SharedOut) {
        self.check(x, &groups, out);
        #[cfg(target_arch = "x86_64")]
        match self.kind {
            // SAFETY: a `Packed` exists only on a CPU with AVX-512 VNNI (`new`), the sizes were
            // checked above, and these groups' columns are this call's alone (our caller's promise).
            PackedKind::Q4_0 => unsafe { x86::q4_0(self, x, first, groups, out) },
            // SAFETY: as above.
            PackedKind::Q4_1 => unsafe { x86::q4_1(self, x, first, groups, out) },
            // SAFETY: as above.
            PackedKind::Q8_0 => unsafe { x86::q8_0(self, x, first, groups, out) },
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (x, first, groups, out);
            unreachable!("packed kernels exist only for x86-64");
        }
    }

    /// Start of the data of block `b` of group `g`.
    ///
    /// # Safety
    /// `g < self.groups()` and `b` is less than the blocks per row (`cols / 32`).
    #[inline]
    pub unsafe fn block(&self, g: usize, b: usize) -> *const u8 {
        let nb = self.cols / QK;
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
    pack_nibbles(&mut dst[32..], lane, &blk[2..18]);
}

fn pack_q4_1(dst: &mut [u8], lane: usize, blk: &[u8]) {
    dst[2 * lane..2 * lane + 2].copy_from_slice(&blk[0..2]); // d
    dst[32 + 2 * lane..32 + 2 * lane + 2].copy_from_slice(&blk[2..4]); // m
    pack_nibbles(&mut dst[64..], lane, &blk[4..20]);
}

/// The 16 nibble bytes of a Q4_0/Q4_1 block (value `k` low, `k + 16` high) as four 64-byte vectors
/// whose lane `lane` holds quad `t` in its low nibbles and quad `t + 4` in its high nibbles.
fn pack_nibbles(dst: &mut [u8], lane: usize, qs: &[u8]) {
    let value = |j: usize| {
        if j < 16 {
            qs[j] & 0x0F
        } else {
            qs[j - 16] >> 4
        }
    };
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

/// Reads back one weight (row, col) from the packed layout (for tests).
#[cfg(test)]
pub fn unpack_value(p: &Packed, row: usize, col: usize) -> f32 {
    use half::f16;
    let nb = p.cols / QK;
    let gbb = p.kind.group_block_bytes();
    let (g, lane, b, j) = (row / GROUP, row % GROUP, col / QK, col % QK);
    let base = &p.data.as_slice()[(g * nb + b) * gbb..];
    let d = f16::from_le_bytes([base[2 * lane], base[2 * lane + 1]]).to_f32();
    let (q, e) = (j / 4, j % 4);
    match p.kind {
        PackedKind::Q4_0 => {
            let byte = base[32 + (q % 4) * 64 + lane * 4 + e];
            let v = if q < 4 { byte & 0x0F } else { byte >> 4 };
            d * (v as f32 - 8.0)
        }
        PackedKind::Q4_1 => {
            let m = f16::from_le_bytes([base[32 + 2 * lane], base[33 + 2 * lane]]).to_f32();
            let byte = base[64 + (q % 4) * 64 + lane * 4 + e];
            let v = if q < 4 { byte & 0x0F } else { byte >> 4 };
            d * v as f32 + m
        }
        PackedKind::Q8_0 => d * ((base[32 + q * 64 + lane * 4 + e] ^ 0x80) as i8) as f32,
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;
    use std::ops::Range;

    use super::{Packed, GROUP};
    use crate::kernels::q8::Q8Act;
    use crate::kernels::SharedOut;

    /// Activation rows processed together.
    const MR: usize = 4;

    /// Defines a kernel: activation rows `first..` in tiles of up to `MR` rows, each tile calling
    /// `$tile::<R, G, ...>` (`G` groups at a time: two when one or two rows leave registers free).
    macro_rules! kernel {
        ($(#[$doc:meta])* $name:ident, $tile:ident $(, $arg:expr)*) => {
            $(#[$doc])*
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c,fma")]
            pub unsafe fn $name(
                p: &Packed,
                x: &Q8Act,
                first: usize,
                groups: Range<usize>,
                out: SharedOut,
            ) {
                let mut i0 = first;
                while i0 < x.m() {
                    let g = groups.clone();
                    match (x.m() - i0).min(MR) {
                        // SAFETY: i0 + 4 <= m; the rest is our caller's promise.
                        4 => unsafe { $tile::<4, 1 $(, $arg)*>(p, x, g, i0, out) },
                        // SAFETY: i0 + 3 <= m; as above.
                        3 => unsafe { $tile::<3, 1 $(, $arg)*>(p, x, g, i0, out) },
                        // SAFETY: i0 + 2 <= m; as above.
                        2 => unsafe { $tile::<2, 2 $(, $arg)*>(p, x, g, i0, out) },
                        // SAFETY: i0 + 1 <= m; as above.
                        _ => unsafe { $tile::<1, 2 $(, $arg)*>(p, x, g, i0, out) },
                    }
                    i0 += MR;
                }
            }
        };
    }

    kernel!(
        /// Safety contract of the kernels and their tiles: the CPU supports AVX-512 F/BW/VL/VNNI, F16C
        /// and FMA; `p` is of the kernel's kind; `x` has the row length of `p`; `groups` are groups of
        /// `p`; `out` holds `x.m() × p.rows()` values, and no other task writes the columns of `groups`
        /// at the same time.
        ///
        /// # Safety
        /// As stated above.
        q4_1,
        q4_tile,
        true
    );

    kernel!(
        /// # Safety
        /// As for `q4_1`.
        q4_0,
        q4_tile,
        false
    );

    kernel!(
        /// # Safety
        /// As for `q4_1`.
        q8_0,
        q8_0_tile
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

    /// `R` activation rows against `G` groups of 16 weight rows at a time, for Q4_1 (`MIN`: weights
    /// `d·q + m`) or Q4_0 (`d·(q - 8)`). Each (group, row) pair sums its block in four independent
    /// integer chains (exact, so the split changes nothing), which keeps the `vpdpbusd` pipeline busy
    /// when `R` is 1 (decoding).
    ///
    /// # Safety
    /// As for `q4_1`, with `i0 + R <= x.m()`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c,fma")]
    unsafe fn q4_tile<const R: usize, const G: usize, const MIN: bool>(
        p: &Packed,
        x: &Q8Act,
        groups: Range<usize>,
        i0: usize,
        out: SharedOut,
    ) {
        let nb = x.nb();
        let rows = x.rows::<R>(i0);
        let low = _mm512_set1_epi8(0x0F);
        // The group block: d[16] f16 (32 bytes), for Q4_1 m[16] f16 (32), then four 64-byte vectors.
        let quants = if MIN { 64 } else { 32 };
        let mut g0 = groups.start;
        while g0 < groups.end {
            let ng = (groups.end - g0).min(G);
            let mut acc = [[_mm512_setzero_ps(); R]; G];
            for b in 0..nb {
                // SAFETY: (each of the R) b < nb, so block b's 32 quants lie inside the row.
                let a: [[__m512i; 8]; R] =
                    std::array::from_fn(|r| unsafe { quads(rows.quants(r, b)) });
                // SAFETY: (each) b < nb.
                let da: [f32; R] = std::array::from_fn(|r| unsafe { rows.d(r, b) });
                // SAFETY: (each) b < nb.
                let sa: [f32; R] = std::array::from_fn(|r| unsafe { rows.s(r, b) });
                // SAFETY: (each) b < nb.
                let qsum: [i32; R] = std::array::from_fn(|r| unsafe { rows.qsum(r, b) });
                for (gi, acc) in acc.iter_mut().enumerate().take(ng) {
                    // SAFETY: g0 + gi < groups.end <= p.groups() and b < nb, the blocks per row of
                    // `p` (`Packed::check`).
                    let blk = unsafe { p.block(g0 + gi, b) };
                    // SAFETY: d, 32 bytes at the start of the block.
                    let dw = _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(blk.cast()) });
                    let mut sum = [[_mm512_setzero_si512(); 4]; R];
                    for t in 0..4 {
                        // SAFETY: vector t of the four, at offset `quants + 64·t` of the block.
                        let v =
                            unsafe { _mm512_loadu_si512(blk.wrapping_add(quants + t * 64).cast()) };
                        let lo = _mm512_and_si512(v, low);
                        let hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
                        for (s, a) in sum.iter_mut().zip(&a) {
                            s[t & 1] = _mm512_dpbusd_epi32(s[t & 1], lo, a[t]);
                            s[2 + (t & 1)] = _mm512_dpbusd_epi32(s[2 + (t & 1)], hi, a[t + 4]);
                        }
                    }
                    for (r, (s, acc)) in sum.iter().zip(acc.iter_mut()).enumerate() {
                        let mut isum = _mm512_add_epi32(
                            _mm512_add_epi32(s[0], s[1]),
                            _mm512_add_epi32(s[2], s[3]),
                        );
                        if !MIN {
                            // Q4_0's offset: Σ(q - 8)·a = Σq·a - 8·Σa, exact in integers.
                            isum = _mm512_sub_epi32(isum, _mm512_set1_epi32(8 * qsum[r]));
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
            }
            for (gi, acc) in acc.iter().enumerate().take(ng) {
                for (r, a) in acc.iter().enumerate() {
                    // SAFETY: i0 + r < m and g0 + gi < groups.end, one of this call's groups.
                    unsafe { store(p, out, i0 + r, g0 + gi, *a) };
                }
            }
            g0 += ng;
        }
    }

    /// As `q4_tile`, for Q8_0 weights stored as `w + 128`.
    ///
    /// # Safety
    /// As for `q4_1`, with `i0 + R <= x.m()`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c,fma")]
    unsafe fn q8_0_tile<const R: usize, const G: usize>(
        p: &Packed,
        x: &Q8Act,
        groups: Range<usize>,
        i0: usize,
        out: SharedOut,
    ) {
        let nb = x.nb();
        let rows = x.rows::<R>(i0);
        let mut g0 = groups.start;
        while g0 < groups.end {
            let ng = (groups.end - g0).min(G);
            let mut acc = [[_mm512_setzero_ps(); R]; G];
            for b in 0..nb {
                // SAFETY: (each of the R) b < nb, so block b's 32 quants lie inside the row.
                let a: [[__m512i; 8]; R] =
                    std::array::from_fn(|r| unsafe { quads(rows.quants(r, b)) });
                // SAFETY: (each) b < nb.
                let da: [f32; R] = std::array::from_fn(|r| unsafe { rows.d(r, b) });
                // SAFETY: (each) b < nb.
                let qsum: [i32; R] = std::array::from_fn(|r| unsafe { rows.qsum(r, b) });
                for (gi, acc) in acc.iter_mut().enumerate().take(ng) {
                    // SAFETY: g0 + gi < groups.end <= p.groups() and b < nb, the blocks per row of
                    // `p` (`Packed::check`).
                    let blk = unsafe { p.block(g0 + gi, b) };
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
            }
            for (gi, acc) in acc.iter().enumerate().take(ng) {
                for (r, a) in acc.iter().enumerate() {
                    // SAFETY: i0 + r < m and g0 + gi < groups.end, one of this call's groups.
                    unsafe { store(p, out, i0 + r, g0 + gi, *a) };
                }
            }
            g0 += ng;
        }
    }
}
