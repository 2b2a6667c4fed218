//! Prompt processing on Intel AMX tiles (Sapphire Rapids and later), for weights in the repacked layout
//! of every packed kind (`packed`), so AMX CPUs keep the file's bytes and decode from them as the other
//! VNNI CPUs do.
//!
//! The tokens' 8-bit quants (`A`: 16 tokens, copied once per product into tile order, `TileQuants`)
//! times a group's sixteen weight rows (`B`: rows of 16 × 4 bytes, built in a scratch tile from the
//! repacked quads) give 16 × 16 exact integer dot products per tile multiply. Two ways, by kind:
//! - A scale per block of 32 (Q4_0, Q4_1, Q5_0, Q8_0): each block is one multiply (`tdpbssd`, the
//!   weights as signed bytes less the kind's offset), two groups by two tiles of tokens together, four
//!   products in flight; each block's sums are then scaled in floats. A pair of groups' block is built
//!   once and multiplied by every tile of tokens.
//! - The K-quants (Q4_K, Q6_K), whose sub-blocks have integer scales: the B rows are the products
//!   `scale·q` themselves, split into two tiles of bytes (`scaled`), so a multiply runs over 64 values
//!   whatever the sub-blocks and a super-block's sums stay in the tiles; a group's super-block is built
//!   once and multiplied by every tile of tokens.
//!
//! The integer sums are the VNNI kernels' (they take the offsets off with the activations' sums instead;
//! integers are exact), and the scales and minimums are then applied row by row with the same float
//! operations in the same order, so results are bit-identical to decoding, only faster.
//!
//! Linux disables the tile registers until a process asks for them (`arch_prctl`); `available` does that
//! once and says whether it worked. Stable Rust has no AMX intrinsics, so the four tile instructions are
//! written as inline assembly.

use std::ops::Range;
use std::sync::OnceLock;

use super::packed::{Packed, PackedKind, GROUP};
use super::q8::{Q8Act, QK};
use super::{AlignedBytes, SharedOut};

/// Tokens per tile.
pub const TOKENS: usize = 16;

/// Whether AMX-INT8 can be used by this process.
pub fn available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| super::cpu::level() >= super::cpu::Level::Amx && request_tile_data())
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn request_tile_data() -> bool {
    const SYS_ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    let ret: i64;
    // SAFETY: arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA) only changes which register state the kernel
    // saves for this process; it reads no memory of ours.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL => ret,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret == 0
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn request_tile_data() -> bool {
    false
}

/// Values per tile multiply of the K-quants: two blocks of 32 (`x86::scaled`).
const ROW: usize = 2 * QK;

/// The activations' quants of every whole tile of 16 tokens, reordered so that the 16 tokens' quants
/// for each tile multiply are one run of `16 × row` bytes (`[tile][run][token][row]`): a block of 32
/// (`row` = 32) or, for the K-quants, a pair of blocks side by side (`row` = 64). Read in place, a
/// tile's rows lie `cols` bytes apart: at 4,096 values a row, every one of them falls in the same set
/// of the L1 cache, and loading them took an eighth of a 7B prompt's product time (Xeon, 2 vCPUs)
/// while the tiles waited.
pub struct TileQuants {
    qs: AlignedBytes,
    /// The blocks' scales, `[tile][block][token]`: one broadcast from memory each where a scale is
    /// applied to a tile row.
    d: Vec<f32>,
    tiles: usize,
    nb: usize,
    row: usize,
}

impl TileQuants {
    /// The tiles of `x`, or `None` when AMX is not usable or `x` has fewer than 16 rows.
    pub fn new(x: &Q8Act) -> Option<Self> {
        let (tiles, nb) = (x.m() / TOKENS, x.nb());
        if tiles == 0 || !available() {
            return None;
        }
        // The K-quants' blocks come in super-blocks of eight, so their runs are always whole.
        let row = if x.per_super_block() { ROW } else { QK };
        let mut qs = AlignedBytes::zeroed(tiles * TOKENS * x.cols());
        let mut d = Vec::with_capacity(tiles * nb * TOKENS);
        for t in 0..tiles {
            for b in 0..nb {
                d.extend((0..TOKENS).map(|r| x.d(TOKENS * t + r)[b]));
            }
        }
        let runs = nb / (row / QK);
        for (i, run) in qs.as_mut_slice().chunks_exact_mut(TOKENS * row).enumerate() {
            let (t, first) = (i / runs, i % runs * (row / QK));
            for (r, dst) in run.chunks_exact_mut(row).enumerate() {
                for (b, dst) in (first..).zip(dst.chunks_exact_mut(QK)) {
                    dst.copy_from_slice(bytemuck::cast_slice(x.block(TOKENS * t + r, b)));
                }
            }
        }
        Some(Self {
            qs,
            d,
            tiles,
            nb,
            row,
        })
    }

    /// Activation rows covered: `16 · tiles`.
    pub fn rows(&self) -> usize {
        self.tiles * TOKENS
    }

    /// The scales of block `b` of tile `t`'s 16 tokens (for the K-quants, their super-block's).
    #[inline]
    fn d(&self, t: usize, b: usize) -> &[f32; TOKENS] {
        self.d[(t * self.nb + b) * TOKENS..][..TOKENS]
            .try_into()
            .unwrap()
    }

    /// The 16 × 32 quants of block `b` of tile `t`, rows `row` bytes apart.
    ///
    /// # Safety
    /// `t < tiles` and `b < nb`.
    #[inline]
    unsafe fn block(&self, t: usize, b: usize) -> *const u8 {
        debug_assert!(t < self.tiles && b < self.nb);
        let at = t * TOKENS * self.nb * QK + b / (self.row / QK) * TOKENS * self.row;
        // SAFETY: inside the buffer (the caller's promise).
        unsafe { self.qs.as_ptr().add(at + b % (self.row / QK) * QK) }
    }

    /// Block `b` of the token tile at row `t0` and, with `two`, of the next one (else the first
    /// again, for a product whose sums go unread).
    ///
    /// # Safety
    /// `t0 / 16 < tiles` (`+ 1` with `two`) and `b < nb`.
    #[inline]
    unsafe fn pair(&self, t0: usize, two: bool, b: usize) -> [*const u8; 2] {
        let t = t0 / TOKENS;
        // SAFETY: the caller's promise.
        let first = unsafe { self.block(t, b) };
        let second = if two {
            // SAFETY: as above.
            unsafe { self.block(t + 1, b) }
        } else {
            first
        };
        [first, second]
    }
}

/// Activation rows `0..a.rows()` (all full tiles of 16 tokens) for `groups`. Returns the first
/// activation row it did not compute (the caller finishes the remainder with the VNNI kernels). Every
/// packed kind has tiles, so AMX CPUs keep the file's layout (and its size) like the other VNNI CPUs.
///
/// # Safety
/// `a` was made from `x`; `x` has the row length of `p` and is quantized for its kind, `groups` are
/// groups of `p`, `out` holds `x.m() × p.rows()` values, and no other task writes the columns of
/// `groups` at the same time.
pub unsafe fn run(
    p: &Packed,
    x: &Q8Act,
    a: &TileQuants,
    groups: Range<usize>,
    out: SharedOut,
) -> usize {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: our caller's promise; a `TileQuants` exists only where AMX is usable.
    unsafe {
        x86::run(p, x, a, groups, out)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, x, groups, out);
    a.rows()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::asm;
    use std::arch::x86_64::*;
    use std::ops::Range;

    use super::super::packed::x86::{
        min_pairs, prefetch_ahead, q4_k_scales, q6_k_high, with_fifth_bits,
    };
    use super::super::packed::{Q4K_QUANTS, Q5_0_HIGH, Q5_0_QUANTS, Q6K_D, Q6K_HIGH, Q6K_SCALES};
    use super::{Packed, PackedKind, Q8Act, SharedOut, TileQuants, GROUP, QK, TOKENS};
    use crate::kernels::q8::{Rows, SUPER};

    /// Blocks of 32 per K-quant super-block.
    const SUB: usize = SUPER / QK;

    /// Groups (B tiles) and token tiles (A tiles) taken together: four products per tile step instead of
    /// one, each B tile serving two token tiles and each A two groups (on the 2-vCPU Xeon, Qwen2.5-Coder
    /// 0.5B's prefill 485–507 → 552–554 tok/s; with one product at a time it ran no faster than the VNNI
    /// kernels).
    const PAIR: usize = 2;

    /// Palette 1, for products of `depth` values (32, or 64 for the K-quants): tmm0–3 = C (16 × 64
    /// bytes of i32), tmm4–5 = A (16 tokens × `depth` bytes), tmm6–7 = B (`depth / 4` rows × 64 bytes).
    #[repr(C, align(64))]
    struct TileConfig([u8; 64]);

    fn config(depth: usize) -> TileConfig {
        let mut c = [0u8; 64];
        c[0] = 1;
        let mut set = |tile: usize, rows: usize, bytes: usize| {
            c[16 + 2 * tile..18 + 2 * tile].copy_from_slice(&(bytes as u16).to_le_bytes());
            c[48 + tile] = rows as u8;
        };
        for tile in 0..4 {
            set(tile, 16, 64);
        }
        set(4, 16, depth);
        set(5, 16, depth);
        set(6, depth / 4, 64);
        set(7, depth / 4, 64);
        TileConfig(c)
    }

    /// The B tiles being built (one per group; rows are 64-byte vectors of packed weights) and the C
    /// tiles read back (`c[2g + t]`).
    #[repr(C, align(64))]
    struct Scratch {
        b: [[u8; 8 * 64]; PAIR],
        c: [[i32; 16 * 16]; PAIR * PAIR],
    }

    impl Scratch {
        /// Row `k` of group `g`'s B.
        #[inline]
        #[target_feature(enable = "avx512f")]
        fn set_b(&mut self, g: usize, k: usize, v: __m512i) {
            let (rows, _) = self.b[g].as_chunks_mut::<64>();
            // SAFETY: one 64-byte row of the 64-byte aligned B scratch.
            unsafe { _mm512_store_si512(rows[k].as_mut_ptr().cast(), v) };
        }

        /// Row `r` (token `r` of tile `t`) of group `g`'s C.
        #[inline]
        #[target_feature(enable = "avx512f")]
        fn c_row(&self, g: usize, t: usize, r: usize) -> __m512i {
            tile_row(&self.c[PAIR * g + t], r)
        }
    }

    /// Row `r` of a C tile read back by `store_c`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn tile_row(c: &[i32; 16 * 16], r: usize) -> __m512i {
        let (rows, _) = c.as_chunks::<16>();
        // SAFETY: one row of 16 i32, 64 readable bytes (an unaligned load: any array will do; the
        // scratches' are aligned, which costs nothing then).
        unsafe { _mm512_loadu_si512(rows[r].as_ptr().cast()) }
    }

    /// # Safety
    /// As for `super::run`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c,fma")]
    pub unsafe fn run(p: &Packed, x: &Q8Act, a: &TileQuants, groups: Range<usize>, out: SharedOut) {
        let scaled = matches!(p.kind(), PackedKind::Q4K | PackedKind::Q6K);
        let cfg = config(if scaled { super::ROW } else { QK });
        // SAFETY: AMX is enabled for this process (`available`), and `cfg` is a valid 64-byte palette-1
        // configuration.
        unsafe { asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly)) };
        let run = Run {
            p,
            x,
            a,
            groups,
            out,
        };
        if scaled {
            // SAFETY: our caller's promise, with the tiles configured for a depth of 64.
            unsafe { run_scaled(run) };
        } else {
            // SAFETY: our caller's promise, with the tiles configured for a depth of 32.
            unsafe { run_blocks(run) };
        }
        // SAFETY: releases the tile state configured above.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }

    /// The kinds with a scale per block of 32, by kind: `blocks` with the kind's B tiles.
    ///
    /// # Safety
    /// As for `super::run`, with the tiles configured for a depth of 32.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c,fma")]
    unsafe fn run_blocks(run: Run<'_>) {
        match run.p.kind() {
            // SAFETY: our caller's promise.
            PackedKind::Q4_0 => unsafe { blocks_q4::<false, false>(run) },
            // SAFETY: as above.
            PackedKind::Q4_1 => unsafe { blocks_q4::<true, false>(run) },
            // SAFETY: as above.
            PackedKind::Q5_0 => unsafe { blocks_q4::<false, true>(run) },
            // SAFETY: as above.
            PackedKind::Q8_0 => unsafe { blocks_q8_0(run) },
            PackedKind::Q4K | PackedKind::Q6K => unreachable!("the K-quants run in `run_scaled`"),
        }
    }

    /// The arguments of `run`: the groups of `p` to compute for the whole tiles of tokens of `x` (`a`)
    /// into `out`.
    struct Run<'a> {
        p: &'a Packed,
        x: &'a Q8Act,
        a: &'a TileQuants,
        groups: Range<usize>,
        out: SharedOut<'a>,
    }

    impl<'a> Run<'a> {
        /// The activations' sums and scales of each token tile (`Rows`), for the minimums.
        fn tile_rows(&self) -> Vec<Rows<'a, TOKENS>> {
            (0..self.a.rows())
                .step_by(TOKENS)
                .map(|i| self.x.rows(i))
                .collect()
        }
    }

    /// `C[g][t] = A[t]·B[g]` for the `T` token tiles from `t0` (`a`'s tiles `t0 / 16..`) in block
    /// `b`, against the B tiles at `bt` (64 bytes a row), all products issued before any result is
    /// stored. With one token tile the second A is the first again (its products go unread): one form
    /// of the tile code, and only prompts' last tile pays for it.
    ///
    /// # Safety
    /// The tiles are configured for a depth of 32; `t0 + 16·T <= a.rows()`, `b < nb`; each `bt`
    /// points at 8 rows of 64 readable bytes.
    #[inline]
    unsafe fn multiply<const T: usize>(
        a: &TileQuants,
        t0: usize,
        b: usize,
        bt: [*const u8; PAIR],
        s: &mut Scratch,
    ) {
        // SAFETY: the tiles from t0 and block b exist (our caller's promise).
        let [a0, a1] = unsafe { a.pair(t0, T == 2, b) };
        // SAFETY: the tiles are configured (our caller's promise).
        unsafe { zero_c() };
        // SAFETY: A reads a tile's block (16 rows of 32 bytes, `a.row` apart); B reads 8 rows at `bt`
        // (our caller's promise); only tile registers are written.
        unsafe {
            asm!(
                "tileloadd tmm4, [{a0} + {sa}*1]",
                "tileloadd tmm5, [{a1} + {sa}*1]",
                "tileloadd tmm6, [{b0} + {sb}*1]",
                "tileloadd tmm7, [{b1} + {sb}*1]",
                "tdpbssd tmm0, tmm4, tmm6",
                "tdpbssd tmm1, tmm5, tmm6",
                "tdpbssd tmm2, tmm4, tmm7",
                "tdpbssd tmm3, tmm5, tmm7",
                a0 = in(reg) a0,
                a1 = in(reg) a1,
                sa = in(reg) a.row,
                b0 = in(reg) bt[0],
                b1 = in(reg) bt[1],
                sb = in(reg) 64usize,
                options(nostack, readonly),
            );
        }
        // SAFETY: the tiles are configured (our caller's promise).
        unsafe { store_c(&mut s.c) };
    }

    /// Zeroes the C tiles tmm0–3.
    ///
    /// # Safety
    /// The tiles are configured as in `run`.
    #[inline]
    unsafe fn zero_c() {
        // SAFETY: only tile registers are written.
        unsafe {
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                options(nostack, nomem)
            )
        };
    }

    /// Stores the C tiles tmm0–3 into `c`, one each.
    ///
    /// # Safety
    /// The tiles are configured as in `run` (tmm0–3: 16 rows of 64 bytes).
    #[inline]
    unsafe fn store_c(c: &mut [[i32; 16 * 16]; PAIR * PAIR]) {
        let c = c.as_mut_ptr().cast::<u8>();
        // SAFETY: writes 16 × 64 bytes into each of the four C tiles of `c` (1 KB apart).
        unsafe {
            asm!(
                "tilestored [{c} + {s}*1], tmm0",
                "tilestored [{c1} + {s}*1], tmm1",
                "tilestored [{c2} + {s}*1], tmm2",
                "tilestored [{c3} + {s}*1], tmm3",
                c = in(reg) c,
                c1 = in(reg) c.wrapping_add(1024),
                c2 = in(reg) c.wrapping_add(2048),
                c3 = in(reg) c.wrapping_add(3072),
                s = in(reg) 64usize,
                options(nostack),
            );
        }
    }

    /// Stores 16 results of activation row `i` for group `g` (fewer in the last, partial group).
    ///
    /// # Safety
    /// `i < x.m()` and `g` one of the groups of `run`, whose promise about other tasks covers it.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn store(p: &Packed, out: SharedOut, i: usize, g: usize, v: __m512) {
        let first = g * GROUP;
        let n = (p.rows() - first).min(GROUP);
        // SAFETY: columns first..first + n of row i are inside the output and this task's alone.
        let dst = unsafe { out.slice(i * p.rows() + first, n) };
        if n == GROUP {
            // SAFETY: `dst` holds 16 values, one 512-bit store.
            unsafe { _mm512_storeu_ps(dst.as_mut_ptr(), v) };
        } else {
            // SAFETY: the mask writes only the first n lanes, inside `dst`.
            unsafe { _mm512_mask_storeu_ps(dst.as_mut_ptr(), ((1u32 << n) - 1) as u16, v) };
        }
    }

    /// Group `g`'s eight B rows of a block of 32 four-bit values from its four nibble vectors at `q`
    /// (quad `t` low, `t + 4` high: rows `t` and `t + 4`), with Q5_0's fifth bits where given, less
    /// `offset` (signed bytes: the offsets of Q4_0 and Q5_0 are taken off here, in the weights, where
    /// the VNNI kernels take them off with the activations' sums; the integer sums are the same).
    ///
    /// # Safety
    /// `q` points at 4 × 64 readable bytes.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn nibble_rows(
        q: *const u8,
        fifth: Option<__m512i>,
        offset: i8,
        s: &mut Scratch,
        g: usize,
    ) {
        let (low, offset) = (_mm512_set1_epi8(0x0F), _mm512_set1_epi8(offset));
        for t in 0..4 {
            // SAFETY: vector t of the four (our caller's promise).
            let v = unsafe { _mm512_loadu_si512(q.wrapping_add(64 * t).cast()) };
            let pair = [
                _mm512_and_si512(v, low),
                _mm512_and_si512(_mm512_srli_epi16(v, 4), low),
            ];
            let [lo, hi] = match fifth {
                Some(h) => with_fifth_bits(pair, h, t),
                None => pair,
            };
            s.set_b(g, t, _mm512_sub_epi8(lo, offset));
            s.set_b(g, t + 4, _mm512_sub_epi8(hi, offset));
        }
    }

    /// The scratch's two B tiles.
    fn scratch_b(s: &Scratch) -> [*const u8; PAIR] {
        [s.b[0].as_ptr(), s.b[1].as_ptr()]
    }

    /// Q4_1 (`MIN`: `d·q + m`), Q4_0 (`d·(q - 8)`) or Q5_0 (`HIGH`: `d·(q - 16)`): each group's B tile
    /// from its nibble vectors (`nibble_rows`), then `blocks`.
    ///
    /// # Safety
    /// As for `run_blocks`, for a kind of this form.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c,fma")]
    unsafe fn blocks_q4<const MIN: bool, const HIGH: bool>(run: Run<'_>) {
        let quants = match (MIN, HIGH) {
            (true, _) => 64,
            (false, true) => Q5_0_QUANTS,
            (false, false) => 32,
        };
        let offset = match (MIN, HIGH) {
            (true, _) => 0,
            (false, true) => 16,
            (false, false) => 8,
        };
        let b_tile = |blk: *const u8, s: &mut Scratch, gi: usize| {
            let fifth = HIGH.then(|| {
                // SAFETY: for Q5_0, the fifth bits' vector at offset 32 of the block.
                unsafe { _mm512_loadu_si512(blk.wrapping_add(Q5_0_HIGH).cast()) }
            });
            // SAFETY: the four nibble vectors at `quants`.
            unsafe { nibble_rows(blk.wrapping_add(quants), fifth, offset, s, gi) };
        };
        // SAFETY: our caller's promise; `b_tile` fills B tile `gi` from a group block of the kind.
        unsafe { blocks::<MIN>(run, b_tile) }
    }

    /// Q8_0 (weights stored as `w + 128`): each group's B tile is the packed block with its top bits
    /// flipped back (signed), then `blocks`.
    ///
    /// # Safety
    /// As for `run_blocks`, for Q8_0.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c,fma")]
    unsafe fn blocks_q8_0(run: Run<'_>) {
        let top = _mm512_set1_epi8(i8::MIN);
        let b_tile = |blk: *const u8, s: &mut Scratch, gi: usize| {
            for k in 0..8 {
                // SAFETY: vector k of the eight after `d[16]` in the group block.
                let v = unsafe { _mm512_loadu_si512(blk.wrapping_add(32 + 64 * k).cast()) };
                s.set_b(gi, k, _mm512_xor_si512(v, top));
            }
        };
        // SAFETY: our caller's promise; `b_tile` fills B tile `gi` from a group block of the kind.
        unsafe { blocks::<false>(run, b_tile) }
    }

    /// The kinds with one scale per block of 32 (`d[16]` f16 at the start of each group block, and
    /// with `MIN` the minimums `m[16]` after it), two groups at a time: per block, each group's B tile
    /// from `b_tile(block, scratch, group)`, multiplied by every pair of token tiles (four products in
    /// flight), each product then taking the float steps of `packed`'s `q4_tile` and `q8_0_tile` in
    /// the same order (`acc += Σ·(d·dₐ)`, then `+ m·sₐ`) into one accumulator per token and group,
    /// stored when the groups' rows are done.
    ///
    /// # Safety
    /// As for `run_blocks`, and `b_tile` writes B tile `group` from a group block of the kind.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c,fma")]
    unsafe fn blocks<const MIN: bool>(
        run: Run<'_>,
        b_tile: impl Fn(*const u8, &mut Scratch, usize),
    ) {
        // `d·Σq` of each token's blocks, for the minimums.
        let rows = if MIN { run.tile_rows() } else { Vec::new() };
        let Run {
            p,
            x,
            a,
            groups,
            out,
        } = run;
        let tokens = a.rows();
        let mut s = Scratch {
            b: [[0; 8 * 64]; PAIR],
            c: [[0; 16 * 16]; PAIR * PAIR],
        };
        let mut acc = vec![[_mm512_setzero_ps(); PAIR]; tokens];
        for first in groups.clone().step_by(PAIR) {
            // An odd last group is taken twice and stored once.
            let g = [first, (first + 1).min(groups.end - 1)];
            acc.fill([_mm512_setzero_ps(); PAIR]);
            for b in 0..x.nb() {
                // SAFETY: g are groups of `p` and b < nb, the blocks per row (`Packed::check`).
                let blk = g.map(|g| unsafe { p.block(g, b) });
                for (gi, blk) in blk.iter().enumerate() {
                    b_tile(*blk, &mut s, gi);
                }
                // SAFETY: d, 32 bytes at the start of the group block.
                let dw = blk.map(|blk| _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(blk.cast()) }));
                let mw = MIN.then(|| {
                    blk.map(|blk| {
                        // SAFETY: with minimums, m at offset 32.
                        let m = unsafe { _mm256_loadu_si256(blk.wrapping_add(32).cast()) };
                        _mm512_cvtph_ps(m)
                    })
                });
                for t0 in (0..tokens).step_by(PAIR * TOKENS) {
                    let tiles = ((tokens - t0) / TOKENS).min(PAIR);
                    let bt = scratch_b(&s);
                    if tiles == PAIR {
                        // SAFETY: t0 + 32 <= tokens, block b < nb, the scratch holds the B tiles.
                        unsafe { multiply::<2>(a, t0, b, bt, &mut s) };
                    } else {
                        // SAFETY: as above, with t0 + 16 <= tokens.
                        unsafe { multiply::<1>(a, t0, b, bt, &mut s) };
                    }
                    for (gi, dw) in dw.iter().enumerate() {
                        for t in 0..tiles {
                            let da = a.d(t0 / TOKENS + t, b);
                            for (r, da) in da.iter().enumerate() {
                                let acc = &mut acc[t0 + TOKENS * t + r][gi];
                                let isum = _mm512_cvtepi32_ps(s.c_row(gi, t, r));
                                let scale = _mm512_mul_ps(*dw, _mm512_set1_ps(*da));
                                *acc = _mm512_fmadd_ps(isum, scale, *acc);
                                if let Some(mw) = mw {
                                    // SAFETY: b < nb.
                                    let sa = unsafe { rows[t0 / TOKENS + t].s(r, b) };
                                    *acc = _mm512_fmadd_ps(mw[gi], _mm512_set1_ps(sa), *acc);
                                }
                            }
                        }
                    }
                }
            }
            let distinct = if g[1] == g[0] { 1 } else { PAIR };
            for (i, acc) in acc.iter().enumerate() {
                for (g, acc) in g.iter().zip(acc).take(distinct) {
                    // SAFETY: i < tokens <= m and g is one of this call's groups.
                    unsafe { store(p, out, i, *g, *acc) };
                }
            }
        }
    }

    /// The B rows of a K-quant as the exact products `w = scale·q` of its sub-blocks, so that a tile
    /// multiply runs over two blocks (64 values) whatever the sub-blocks and a super-block's sums stay
    /// in the C tiles: `w` (i16) is split into bytes, `w = lo + 256·hi` with `lo` unsigned, and
    /// `C_lo = A·B_lo` (`tdpbsud`), `C_hi = A·B_hi` (`tdpbssd`) give `Σ a·w = C_lo + 256·C_hi`, the
    /// integer sums of the VNNI kernels (`Σ scale·Σ a·q`) exactly (|Σ| < 2³¹: at most 256 · 127 ·
    /// 4,096). Scaling each sub-block's sums in vectors instead cost more than the tile products.
    mod scaled {
        use std::arch::x86_64::*;

        /// The odd bytes of a vector.
        const ODD: __mmask64 = 0xAAAA_AAAA_AAAA_AAAA;

        /// One B row of products as its `[lo, hi]` rows of bytes: `q` holds unsigned quants (four per
        /// weight row), `scales` a signed byte per weight row at the even, then the odd, byte of each
        /// i16 (`scale_pair`), and `offset` (with `OFFSET`) what to take off each product.
        #[inline]
        #[target_feature(enable = "avx512f,avx512bw")]
        pub(super) fn row<const OFFSET: bool>(
            q: __m512i,
            [even, odd]: [__m512i; 2],
            offset: __m512i,
        ) -> [__m512i; 2] {
            // Each i16 is one byte's product (its neighbour is multiplied by zero): |q·scale| <=
            // 63·128, no saturation.
            let [mut we, mut wo] = [_mm512_maddubs_epi16(q, even), _mm512_maddubs_epi16(q, odd)];
            if OFFSET {
                (we, wo) = (_mm512_sub_epi16(we, offset), _mm512_sub_epi16(wo, offset));
            }
            let lo = _mm512_mask_blend_epi8(ODD, we, _mm512_slli_epi16(wo, 8));
            let hi = _mm512_mask_blend_epi8(ODD, _mm512_srli_epi16(we, 8), wo);
            [lo, hi]
        }

        /// Sixteen weight rows' scales (a byte each) as `row`'s pair of multipliers.
        #[inline]
        #[target_feature(enable = "avx512f")]
        pub(super) fn scale_pair(bytes: __m128i) -> [__m512i; 2] {
            let s = _mm512_cvtepu8_epi32(bytes);
            let even = _mm512_or_si512(s, _mm512_slli_epi32(s, 16));
            [even, _mm512_slli_epi32(even, 8)]
        }

        /// `32·scale` in each i16 of a weight row's lane, for signed scale bytes (Q6_K's offset).
        #[inline]
        #[target_feature(enable = "avx512f,avx512bw")]
        pub(super) fn offset32(bytes: __m128i) -> __m512i {
            let s = _mm512_cvtepi8_epi32(bytes);
            let words = _mm512_or_si512(
                _mm512_and_si512(s, _mm512_set1_epi32(0xFFFF)),
                _mm512_slli_epi32(s, 16),
            );
            _mm512_slli_epi16(words, 5)
        }
    }

    /// One super-block of one group as `scaled` B tiles (`[K-step]`: blocks `2k, 2k + 1`), and the C
    /// tiles read back (`c[0..2]` C_lo of token tile 0 and 1, `c[2..4]` C_hi).
    #[repr(C, align(64))]
    struct SuperScratch {
        lo: [[u8; 16 * 64]; SUB / 2],
        hi: [[u8; 16 * 64]; SUB / 2],
        c: [[i32; 16 * 16]; PAIR * PAIR],
    }

    impl SuperScratch {
        /// Row `k` (0..16) of K-step `step`'s B tiles, from one `scaled::row`.
        #[inline]
        #[target_feature(enable = "avx512f")]
        fn set(&mut self, step: usize, k: usize, [lo, hi]: [__m512i; 2]) {
            let (lo_rows, _) = self.lo[step].as_chunks_mut::<64>();
            // SAFETY: one 64-byte row of a 64-byte aligned B tile.
            unsafe { _mm512_store_si512(lo_rows[k].as_mut_ptr().cast(), lo) };
            let (hi_rows, _) = self.hi[step].as_chunks_mut::<64>();
            // SAFETY: as above.
            unsafe { _mm512_store_si512(hi_rows[k].as_mut_ptr().cast(), hi) };
        }

        /// Row `r` of token tile `t`'s integer sums, `C_lo + 256·C_hi`, after `multiply_super`.
        #[inline]
        #[target_feature(enable = "avx512f")]
        fn sum(&self, t: usize, r: usize) -> __m512i {
            let (lo, hi) = (tile_row(&self.c[t], r), tile_row(&self.c[PAIR + t], r));
            _mm512_add_epi32(lo, _mm512_slli_epi32(hi, 8))
        }
    }

    /// The K-quants: per group and super-block, its B tiles built once (`scaled`) and multiplied by
    /// every pair of token tiles; the sums then take the float steps of `packed`'s tiles in the same
    /// order into one accumulator per token, stored when the group's row is done.
    ///
    /// # Safety
    /// As for `super::run`, with the tiles configured for a depth of 64, and `x` has one scale per
    /// super-block.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c,fma")]
    unsafe fn run_scaled(run: Run<'_>) {
        let rows = run.tile_rows();
        let Run {
            p,
            x,
            a,
            groups,
            out,
        } = run;
        let tokens = a.rows();
        let mut s = SuperScratch {
            lo: [[0; 16 * 64]; SUB / 2],
            hi: [[0; 16 * 64]; SUB / 2],
            c: [[0; 16 * 16]; PAIR * PAIR],
        };
        let mut acc = vec![_mm512_setzero_ps(); tokens];
        for g in groups {
            acc.fill(_mm512_setzero_ps());
            for sb in 0..x.nb() / SUB {
                // SAFETY: g is a group of `p` and sb < the super-blocks per row (`Packed::check`).
                let blk = unsafe { p.block(g, sb) };
                let super_block = Super { a, rows: &rows, sb };
                match p.kind() {
                    // SAFETY: a Q4_K group block; our caller's promise.
                    PackedKind::Q4K => unsafe { q4_k_super(blk, super_block, &mut s, &mut acc) },
                    // SAFETY: a Q6_K group block; our caller's promise.
                    PackedKind::Q6K => unsafe { q6_k_super(blk, super_block, &mut s, &mut acc) },
                    _ => unreachable!("only the K-quants run by super-blocks"),
                }
            }
            for (i, v) in acc.iter().enumerate() {
                // SAFETY: i < tokens <= m, and g is one of this call's groups.
                unsafe { store(p, out, i, g, *v) };
            }
        }
    }

    /// Super-block `sb` of every token tile of `a` (and `rows`, its activations' sums by tile).
    #[derive(Clone, Copy)]
    struct Super<'a> {
        a: &'a TileQuants,
        rows: &'a [Rows<'a, TOKENS>],
        sb: usize,
    }

    impl Super<'_> {
        /// Runs `sums(t0, t, s)` for each token tile `t0 / 16 + t`, after its super-block's integer
        /// sums with the B tiles in `s` are in `s.c` (`SuperScratch::sum`), two token tiles at a time.
        ///
        /// # Safety
        /// The tiles are configured for a depth of 64 and `s` holds this super-block's B tiles.
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn each_tile(
            self,
            s: &mut SuperScratch,
            mut sums: impl FnMut(usize, usize, &SuperScratch),
        ) {
            let tokens = self.a.rows();
            for t0 in (0..tokens).step_by(PAIR * TOKENS) {
                let tiles = ((tokens - t0) / TOKENS).min(PAIR);
                // SAFETY: t0 + 16·tiles <= tokens, and block 8·sb + 7 < nb (our caller's promise).
                unsafe { multiply_super(self.a, t0, tiles == PAIR, self.sb, s) };
                for t in 0..tiles {
                    sums(t0, t, s);
                }
            }
        }
    }

    /// `C_lo[t] = Σ A[t]·B_lo`, `C_hi[t] = Σ A[t]·B_hi` over the four K-steps of super-block `sb`, for
    /// the token tile at `t0` and, with `two`, the next (else its A is the first again and its sums go
    /// unread): tmm0–1 are C_lo and tmm2–3 C_hi of tile 0 and 1, tmm4–5 the A tiles, tmm6–7 B_lo and
    /// B_hi; the C tiles are stored into `s.c`.
    ///
    /// # Safety
    /// The tiles are configured for a depth of 64, `t0 + 16 <= a.rows()` (`+ 32` with `two`), and
    /// block `8·sb + 7 < nb`.
    #[inline]
    unsafe fn multiply_super(
        a: &TileQuants,
        t0: usize,
        two: bool,
        sb: usize,
        s: &mut SuperScratch,
    ) {
        // SAFETY: the tiles are configured (our caller's promise).
        unsafe { zero_c() };
        for step in 0..SUB / 2 {
            let b = SUB * sb + 2 * step;
            // SAFETY: the tiles from t0 and block b exist (our caller's promise).
            let [a0, a1] = unsafe { a.pair(t0, two, b) };
            // SAFETY: A reads 16 rows of 64 bytes at stride 64 from a tile's pair of blocks (16 × 64
            // bytes); B reads 16 rows of 64 bytes of the scratch.
            unsafe {
                asm!(
                    "tileloadd tmm4, [{a0} + {s}*1]",
                    "tileloadd tmm5, [{a1} + {s}*1]",
                    "tileloadd tmm6, [{lo} + {s}*1]",
                    "tileloadd tmm7, [{hi} + {s}*1]",
                    "tdpbsud tmm0, tmm4, tmm6",
                    "tdpbsud tmm1, tmm5, tmm6",
                    "tdpbssd tmm2, tmm4, tmm7",
                    "tdpbssd tmm3, tmm5, tmm7",
                    a0 = in(reg) a0,
                    a1 = in(reg) a1,
                    lo = in(reg) s.lo[step].as_ptr(),
                    hi = in(reg) s.hi[step].as_ptr(),
                    s = in(reg) super::ROW,
                    options(nostack, readonly),
                );
            }
        }
        // SAFETY: the tiles are configured (our caller's promise).
        unsafe { store_c(&mut s.c) };
    }

    /// Q4_K, one super-block of one group: its sub-blocks' scaled B rows (K-step `j / 2`, rows `8·(j %
    /// 2)..`), the minimums with the activations' sums, then the float steps of `packed`'s
    /// `q4_k_tile` in the same order.
    ///
    /// # Safety
    /// `blk` is a Q4_K group block of super-block `sup.sb`; as for `run_scaled`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c,fma")]
    unsafe fn q4_k_super(blk: *const u8, sup: Super<'_>, s: &mut SuperScratch, acc: &mut [__m512]) {
        let (low, zero) = (_mm512_set1_epi8(0x0F), _mm512_setzero_si512());
        // The minimums of each sub-block, a byte per row.
        let mut mins = [_mm_setzero_si128(); SUB];
        for (j, mins) in mins.iter_mut().enumerate() {
            // SAFETY: a Q4_K group block and j < 8.
            let (scales, m) = unsafe { q4_k_scales(blk, j) };
            let sc = scaled::scale_pair(scales);
            *mins = m;
            prefetch_ahead(blk, PackedKind::Q4K.group_block_bytes(), j, SUB);
            let q = blk.wrapping_add(Q4K_QUANTS + 256 * j);
            for t in 0..4 {
                // SAFETY: sub-block j's nibble vector t.
                let v = unsafe { _mm512_loadu_si512(q.wrapping_add(64 * t).cast()) };
                let lo = _mm512_and_si512(v, low);
                let hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
                s.set(j / 2, 8 * (j % 2) + t, scaled::row::<false>(lo, sc, zero));
                s.set(
                    j / 2,
                    8 * (j % 2) + t + 4,
                    scaled::row::<false>(hi, sc, zero),
                );
            }
        }
        // SAFETY: d and dmin, 32 bytes each at the start of the group block.
        let dw = _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(blk.cast()) });
        // SAFETY: as above.
        let dmw = _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(blk.wrapping_add(32).cast()) });
        let pairs: [__m512i; SUB / 2] =
            std::array::from_fn(|k| min_pairs(mins[2 * k], mins[2 * k + 1]));
        let sb = sup.sb;
        let tile = |t0: usize, t: usize, s: &SuperScratch| {
            let rows = &sup.rows[t0 / TOKENS + t];
            let da = sup.a.d(t0 / TOKENS + t, sb * SUB);
            for (r, da) in da.iter().enumerate() {
                let mut msum = _mm512_setzero_si512();
                for (k, pairs) in pairs.iter().enumerate() {
                    // SAFETY: blocks sb·8 + 2k and + 1 < nb, and `x` has i16 sums.
                    let sums = unsafe { rows.block_pair(r, sb * SUB + 2 * k) };
                    msum = _mm512_dpwssd_epi32(msum, *pairs, _mm512_set1_epi32(sums));
                }
                let da = _mm512_set1_ps(*da);
                let (scale, mscale) = (_mm512_mul_ps(dw, da), _mm512_mul_ps(dmw, da));
                let acc = &mut acc[t0 + TOKENS * t + r];
                *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s.sum(t, r)), scale, *acc);
                *acc = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(msum), mscale, *acc);
            }
        };
        // SAFETY: the scratch holds this super-block's B tiles; our caller's promise.
        unsafe { sup.each_tile(s, tile) };
    }

    /// Q6_K, one super-block of one group: its sub-blocks of 16 as scaled B rows with the offset of 32
    /// taken off (`scale·(q - 32)`, where the VNNI kernels take it off with the activations' sums of
    /// 16), then the float step of `packed`'s `q6_k_tile`.
    ///
    /// # Safety
    /// `blk` is a Q6_K group block of super-block `sup.sb`; as for `run_scaled`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c,fma")]
    unsafe fn q6_k_super(blk: *const u8, sup: Super<'_>, s: &mut SuperScratch, acc: &mut [__m512]) {
        let low = _mm512_set1_epi8(0x0F);
        for c in 0..SUB {
            prefetch_ahead(blk, PackedKind::Q6K.group_block_bytes(), c, SUB);
            for h in 0..2 {
                // SAFETY: sub-block 2c + h's scales, a byte per row.
                let bytes = unsafe {
                    _mm_loadu_si128(blk.wrapping_add(Q6K_SCALES + 16 * (2 * c + h)).cast())
                };
                let (sc, offset) = (scaled::scale_pair(bytes), scaled::offset32(bytes));
                // SAFETY: half h's high-bit vector of block c.
                let high = unsafe {
                    _mm512_loadu_si512(blk.wrapping_add(Q6K_HIGH + 128 * c + 64 * h).cast())
                };
                for t in 0..4 {
                    // SAFETY: low-bit vector t of block c, at 256·c + 64·t.
                    let v =
                        unsafe { _mm512_loadu_si512(blk.wrapping_add(256 * c + 64 * t).cast()) };
                    let v = if h == 0 { v } else { _mm512_srli_epi16(v, 4) };
                    let q = _mm512_or_si512(_mm512_and_si512(v, low), q6_k_high(high, t));
                    s.set(
                        c / 2,
                        8 * (c % 2) + 4 * h + t,
                        scaled::row::<true>(q, sc, offset),
                    );
                }
            }
        }
        // SAFETY: d, 32 bytes.
        let dw = _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(blk.wrapping_add(Q6K_D).cast()) });
        let sb = sup.sb;
        let tile = |t0: usize, t: usize, s: &SuperScratch| {
            let da = sup.a.d(t0 / TOKENS + t, sb * SUB);
            for (r, da) in da.iter().enumerate() {
                let scale = _mm512_mul_ps(dw, _mm512_set1_ps(*da));
                let acc = &mut acc[t0 + TOKENS * t + r];
                *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s.sum(t, r)), scale, *acc);
            }
        };
        // SAFETY: the scratch holds this super-block's B tiles; our caller's promise.
        unsafe { sup.each_tile(s, tile) };
    }
}
