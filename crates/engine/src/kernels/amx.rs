//! Prompt processing on Intel AMX tiles (Sapphire Rapids and later), for weights in the repacked layout
//! of every packed kind (`packed`), so AMX CPUs keep the file's bytes and decode from them as the other
//! VNNI CPUs do.
//!
//! For sixteen tokens and one group of sixteen weight rows, each 32-value block is one tile multiply:
//! the tokens' 8-bit quants (`A`, 16 rows × 32 bytes, copied once per product into tile order:
//! `TileQuants`) times the group's weights (`B`, 8 rows of 16 × 4 bytes: the repacked quads, unpacked
//! into a scratch tile as signed bytes less the kind's offset) gives 16 × 16 exact integer dot products
//! (`tdpbssd`); Q6_K's sub-blocks of 16 take one multiply of half the depth each. Two groups by two
//! tiles of tokens are multiplied together, four products in flight. The integer sums are the VNNI
//! kernels' (they take the offsets off with the activations' sums instead; integers are exact), and the
//! scales and minimums are then applied row by row with the same float operations in the same order, so
//! results are bit-identical to decoding, only faster.
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

/// The activations' quants of every whole tile of 16 tokens, reordered so that each tile's block of 32
/// is one run of 16 × 32 bytes (`[tile][block][token][32]`). Read in place, a tile's rows lie `cols`
/// bytes apart: at 4,096 values a row, every one of them falls in the same set of the L1 cache, and
/// loading them took an eighth of a 7B prompt's product time (Xeon, 2 vCPUs) while the tiles waited.
pub struct TileQuants {
    qs: AlignedBytes,
    /// The blocks' scales in the same order, `[tile][block][token]`: one broadcast from memory each
    /// where a scale is applied to a tile row.
    d: Vec<f32>,
    tiles: usize,
    nb: usize,
}

impl TileQuants {
    /// The tiles of `x`, or `None` when AMX is not usable or `x` has fewer than 16 rows.
    pub fn new(x: &Q8Act) -> Option<Self> {
        let (tiles, nb) = (x.m() / TOKENS, x.nb());
        if tiles == 0 || !available() {
            return None;
        }
        let mut qs = AlignedBytes::zeroed(tiles * TOKENS * x.cols());
        let mut d = Vec::with_capacity(tiles * nb * TOKENS);
        for t in 0..tiles {
            for b in 0..nb {
                d.extend((0..TOKENS).map(|r| x.d(TOKENS * t + r)[b]));
            }
        }
        for (t, tile) in qs
            .as_mut_slice()
            .chunks_exact_mut(TOKENS * x.cols())
            .enumerate()
        {
            for (b, block) in tile.chunks_exact_mut(TOKENS * QK).enumerate() {
                for (r, dst) in block.chunks_exact_mut(QK).enumerate() {
                    let src = x.block(TOKENS * t + r, b);
                    dst.copy_from_slice(bytemuck::cast_slice(src));
                }
            }
        }
        Some(Self { qs, d, tiles, nb })
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

    /// The 16 × 32 quants of block `b` of tile `t`.
    ///
    /// # Safety
    /// `t < tiles` and `b < nb`.
    #[inline]
    unsafe fn block(&self, t: usize, b: usize) -> *const u8 {
        debug_assert!(t < self.tiles && b < self.nb);
        // SAFETY: inside the buffer (the caller's promise).
        unsafe { self.qs.as_ptr().add((t * self.nb + b) * TOKENS * QK) }
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

    use super::super::packed::x86::{min_pairs, q4_k_scales, q6_k_high, with_fifth_bits};
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

    /// What a kind's tile code works on: groups `g` of `p` by the token tiles from `t0` of `x` (and of
    /// `a`, its tile-ordered copy).
    #[derive(Clone, Copy)]
    struct Step<'a> {
        p: &'a Packed,
        x: &'a Q8Act,
        a: &'a TileQuants,
        g: [usize; PAIR],
        t0: usize,
    }

    /// Accumulators of a pair of groups by up to a pair of token tiles: `[group][tile][token]`.
    type Acc = [[[__m512; TOKENS]; PAIR]; PAIR];

    /// Palette 1, for products of `depth` values (32, or 16 for Q6_K's sub-blocks): tmm0–3 = C (16 ×
    /// 64 bytes of i32; C of group `g` and token tile `t` is tmm`2g + t`), tmm4–5 = A (16 tokens ×
    /// `depth` bytes), tmm6–7 = B (`depth / 4` rows × 64 bytes, one group each).
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
            let (rows, _) = self.c[PAIR * g + t].as_chunks::<16>();
            // SAFETY: one row of 16 i32 (64-byte aligned, and each row is 64 bytes).
            unsafe { _mm512_load_si512(rows[r].as_ptr().cast()) }
        }
    }

    /// # Safety
    /// As for `super::run`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c,fma")]
    pub unsafe fn run(p: &Packed, x: &Q8Act, a: &TileQuants, groups: Range<usize>, out: SharedOut) {
        let tokens = a.rows();
        let cfg = config(if p.kind() == PackedKind::Q6K { 16 } else { 32 });
        // SAFETY: AMX is enabled for this process (`available`), and `cfg` is a valid 64-byte palette-1
        // configuration.
        unsafe { asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly)) };
        let mut s = Scratch {
            b: [[0; 8 * 64]; PAIR],
            c: [[0; 16 * 16]; PAIR * PAIR],
        };
        let mut acc: Acc = [[[_mm512_setzero_ps(); TOKENS]; PAIR]; PAIR];
        for first in groups.clone().step_by(PAIR) {
            // An odd last group is taken twice and stored once.
            let g = [first, (first + 1).min(groups.end - 1)];
            let mut t0 = 0;
            while t0 < tokens {
                let tiles = if tokens - t0 >= PAIR * TOKENS { 2 } else { 1 };
                if tiles == 2 {
                    // SAFETY: g are our groups, t0 + 32 <= tokens <= m, and `x` (with `a`) is
                    // quantized for the kind (our caller's promise).
                    unsafe { group::<2>(Step { p, x, a, g, t0 }, &mut s, &mut acc) }
                } else {
                    // SAFETY: as above, with t0 + 16 <= tokens.
                    unsafe { group::<1>(Step { p, x, a, g, t0 }, &mut s, &mut acc) }
                }
                for (gi, acc) in acc
                    .iter()
                    .enumerate()
                    .take(if g[1] == g[0] { 1 } else { 2 })
                {
                    for (t, acc) in acc.iter().enumerate().take(tiles) {
                        for (r, a) in acc.iter().enumerate() {
                            // SAFETY: t0 + 16t + r < m and g[gi] is one of this call's groups.
                            unsafe { store(p, out, t0 + TOKENS * t + r, g[gi], *a) };
                        }
                    }
                }
                t0 += TOKENS * tiles;
            }
        }
        // SAFETY: releases the tile state configured above.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }

    /// Groups `g` by the `T` token tiles from `t0`, of any kind, into `acc` (overwritten).
    ///
    /// # Safety
    /// The tiles are configured for the kind (`run`), `g` are groups of `p`, `t0 + 16·T <= x.m()`,
    /// and `x` is quantized for the kind.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c,fma")]
    unsafe fn group<const T: usize>(step: Step<'_>, s: &mut Scratch, acc: &mut Acc) {
        match step.p.kind() {
            // SAFETY: our caller's promise.
            PackedKind::Q4_0 => unsafe { group_q4::<T, false, false>(step, s, acc) },
            // SAFETY: as above.
            PackedKind::Q4_1 => unsafe { group_q4::<T, true, false>(step, s, acc) },
            // SAFETY: as above.
            PackedKind::Q5_0 => unsafe { group_q4::<T, false, true>(step, s, acc) },
            // SAFETY: as above.
            PackedKind::Q8_0 => unsafe { group_q8_0::<T>(step, s, acc) },
            // SAFETY: as above.
            PackedKind::Q4K => unsafe { group_q4_k::<T>(step, s, acc) },
            // SAFETY: as above.
            PackedKind::Q6K => unsafe { group_q6_k::<T>(step, s, acc) },
        }
    }

    /// `C[g][t] = A[t]·B[g]` for the `T` token tiles from `t0` (`a`'s tiles `t0 / 16..`), at `offset`
    /// (0, or 16 for the second half of Q6_K's) in their block `b`, against the B tiles at `bt` (64
    /// bytes a row), all products issued before any result is stored. With one token tile the second
    /// A is the first again (its products go unread): one form of the tile code, and only prompts'
    /// last tile pays for it.
    ///
    /// # Safety
    /// The tiles are configured as in `run`; `t0 + 16·T <= a.rows()`, `b < nb`, `offset` plus the
    /// configured depth is at most 32; each `bt` points at the configured rows of 64 readable bytes.
    #[inline]
    unsafe fn multiply<const T: usize>(
        a: &TileQuants,
        t0: usize,
        b: usize,
        offset: usize,
        bt: [*const u8; PAIR],
        s: &mut Scratch,
    ) {
        let t = t0 / TOKENS;
        // SAFETY: tiles t (and t + 1 when T = 2) and block b exist (our caller's promise).
        let a0 = unsafe { a.block(t, b) }.wrapping_add(offset);
        let a1 = if T == 2 {
            // SAFETY: as above.
            unsafe { a.block(t + 1, b) }.wrapping_add(offset)
        } else {
            a0
        };
        let c = s.c.as_mut_ptr().cast::<u8>();
        // SAFETY: A reads 16 rows of the configured depth at stride 32 from `offset` of a tile's block
        // (16 × 32 bytes); B reads the configured rows at `bt` (our caller's promise); C writes 16 × 64
        // bytes into each of the scratch's four C tiles (1 KB apart).
        unsafe {
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                "tileloadd tmm4, [{a0} + {sa}*1]",
                "tileloadd tmm5, [{a1} + {sa}*1]",
                "tileloadd tmm6, [{b0} + {sb}*1]",
                "tileloadd tmm7, [{b1} + {sb}*1]",
                "tdpbssd tmm0, tmm4, tmm6",
                "tdpbssd tmm1, tmm5, tmm6",
                "tdpbssd tmm2, tmm4, tmm7",
                "tdpbssd tmm3, tmm5, tmm7",
                "tilestored [{c} + {sb}*1], tmm0",
                "tilestored [{c1} + {sb}*1], tmm1",
                "tilestored [{c2} + {sb}*1], tmm2",
                "tilestored [{c3} + {sb}*1], tmm3",
                a0 = in(reg) a0,
                a1 = in(reg) a1,
                sa = in(reg) QK,
                b0 = in(reg) bt[0],
                b1 = in(reg) bt[1],
                sb = in(reg) 64usize,
                c = in(reg) c,
                c1 = in(reg) c.wrapping_add(1024),
                c2 = in(reg) c.wrapping_add(2048),
                c3 = in(reg) c.wrapping_add(3072),
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
    /// from its nibble vectors (`nibble_rows`), then `group_blocks`.
    ///
    /// # Safety
    /// As for `group`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c,fma")]
    unsafe fn group_q4<const T: usize, const MIN: bool, const HIGH: bool>(
        step: Step<'_>,
        s: &mut Scratch,
        acc: &mut Acc,
    ) {
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
        unsafe { group_blocks::<T, MIN>(step, s, acc, b_tile) }
    }

    /// Q8_0 (weights stored as `w + 128`): each group's B tile is the packed block with its top bits
    /// flipped back (signed), then `group_blocks`.
    ///
    /// # Safety
    /// As for `group`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c,fma")]
    unsafe fn group_q8_0<const T: usize>(step: Step<'_>, s: &mut Scratch, acc: &mut Acc) {
        let top = _mm512_set1_epi8(i8::MIN);
        let b_tile = |blk: *const u8, s: &mut Scratch, gi: usize| {
            for k in 0..8 {
                // SAFETY: vector k of the eight after `d[16]` in the group block.
                let v = unsafe { _mm512_loadu_si512(blk.wrapping_add(32 + 64 * k).cast()) };
                s.set_b(gi, k, _mm512_xor_si512(v, top));
            }
        };
        // SAFETY: our caller's promise; `b_tile` fills B tile `gi` from a group block of the kind.
        unsafe { group_blocks::<T, false>(step, s, acc, b_tile) }
    }

    /// The kinds with one scale per block of 32 (`d[16]` f16 at the start of each group block, and
    /// with `MIN` the minimums `m[16]` after it): per block, each group's B tile from `b_tile(block,
    /// scratch, group)`, one multiply, then the float steps of `packed`'s `q4_tile` and `q8_0_tile` in
    /// the same order (`acc += Σ·(d·dₐ)`, then `+ m·sₐ`).
    ///
    /// # Safety
    /// As for `group`, and `b_tile` writes B tile `group` from a group block of the kind.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c,fma")]
    unsafe fn group_blocks<const T: usize, const MIN: bool>(
        step: Step<'_>,
        s: &mut Scratch,
        acc: &mut Acc,
        b_tile: impl Fn(*const u8, &mut Scratch, usize),
    ) {
        let Step { p, x, a, g, t0 } = step;
        // `d·Σq` of each token's blocks, for the minimums.
        let rows: Option<[Rows<'_, TOKENS>; T]> =
            MIN.then(|| std::array::from_fn(|t| x.rows(t0 + TOKENS * t)));
        *acc = [[[_mm512_setzero_ps(); TOKENS]; PAIR]; PAIR];
        for b in 0..x.nb() {
            // SAFETY: g are groups of `p` and b < nb, the blocks per row (`Packed::check`).
            let blk = g.map(|g| unsafe { p.block(g, b) });
            for (gi, blk) in blk.iter().enumerate() {
                b_tile(*blk, s, gi);
            }
            // SAFETY: t0 + 16·T <= m, block b < nb, the scratch holds the B tiles.
            unsafe { multiply::<T>(a, t0, b, 0, scratch_b(s), s) };
            for (gi, (blk, acc)) in blk.iter().zip(acc.iter_mut()).enumerate() {
                // SAFETY: d, 32 bytes at the start of the group block.
                let dw = _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(blk.cast()) });
                let mw = MIN.then(|| {
                    // SAFETY: with minimums, m at offset 32.
                    let m = unsafe { _mm256_loadu_si256(blk.wrapping_add(32).cast()) };
                    _mm512_cvtph_ps(m)
                });
                for (t, acc) in acc.iter_mut().enumerate().take(T) {
                    let da = a.d(t0 / TOKENS + t, b);
                    for (r, acc) in acc.iter_mut().enumerate() {
                        let isum = _mm512_cvtepi32_ps(s.c_row(gi, t, r));
                        let scale = _mm512_mul_ps(dw, _mm512_set1_ps(da[r]));
                        *acc = _mm512_fmadd_ps(isum, scale, *acc);
                        if let (Some(mw), Some(rows)) = (mw, &rows) {
                            // SAFETY: b < nb.
                            let sa = _mm512_set1_ps(unsafe { rows[t].s(r, b) });
                            *acc = _mm512_fmadd_ps(mw, sa, *acc);
                        }
                    }
                }
            }
        }
    }

    /// Integer sums of a pair of groups by up to a pair of token tiles, as `Acc`.
    type ISum = [[[__m512i; TOKENS]; PAIR]; PAIR];

    /// Q4_K: per sub-block one tile multiply, its sums times the sub-block's scales in integers; the
    /// minimums with the activations' sums; then the float steps of `packed`'s `q4_k_tile` in the same
    /// order.
    ///
    /// # Safety
    /// As for `group`, and `x` has one scale per super-block.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c,fma")]
    unsafe fn group_q4_k<const T: usize>(step: Step<'_>, s: &mut Scratch, acc: &mut Acc) {
        let Step { p, x, a, g, t0 } = step;
        let rows: [Rows<'_, TOKENS>; T] = std::array::from_fn(|t| x.rows(t0 + TOKENS * t));
        *acc = [[[_mm512_setzero_ps(); TOKENS]; PAIR]; PAIR];
        for sb in 0..x.nb() / SUB {
            // SAFETY: g are groups of `p` and sb < the super-blocks per row (`Packed::check`).
            let blk = g.map(|g| unsafe { p.block(g, sb) });
            let mut isum: ISum = [[[_mm512_setzero_si512(); TOKENS]; PAIR]; PAIR];
            // The minimums of sub-block j, a byte per row, for each group.
            let mut mins = [[_mm_setzero_si128(); PAIR]; SUB];
            for (j, mins) in mins.iter_mut().enumerate() {
                let mut sc = [_mm512_setzero_si512(); PAIR];
                for (gi, blk) in blk.iter().enumerate() {
                    // SAFETY: a Q4_K group block and j < 8.
                    let (scales, m) = unsafe { q4_k_scales(*blk, j) };
                    (sc[gi], mins[gi]) = (_mm512_cvtepu8_epi32(scales), m);
                    let q = blk.wrapping_add(Q4K_QUANTS + 256 * j);
                    // SAFETY: sub-block j's four nibble vectors.
                    unsafe { nibble_rows(q, None, 0, s, gi) };
                }
                // SAFETY: t0 + 16·T <= m, block sb·8 + j < nb.
                unsafe { multiply::<T>(a, t0, sb * SUB + j, 0, scratch_b(s), s) };
                for (gi, isum) in isum.iter_mut().enumerate() {
                    for (t, isum) in isum.iter_mut().enumerate().take(T) {
                        for (r, isum) in isum.iter_mut().enumerate() {
                            let scaled = _mm512_mullo_epi32(s.c_row(gi, t, r), sc[gi]);
                            *isum = _mm512_add_epi32(*isum, scaled);
                        }
                    }
                }
            }
            for gi in 0..PAIR {
                // SAFETY: d and dmin, 32 bytes each at the start of the group block.
                let dw = _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(blk[gi].cast()) });
                // SAFETY: as above.
                let dmw =
                    _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(blk[gi].wrapping_add(32).cast()) });
                let pairs: [__m512i; SUB / 2] =
                    std::array::from_fn(|k| min_pairs(mins[2 * k][gi], mins[2 * k + 1][gi]));
                for (t, rows) in rows.iter().enumerate() {
                    let da = a.d(t0 / TOKENS + t, sb * SUB);
                    for (r, da) in da.iter().enumerate() {
                        let mut msum = _mm512_setzero_si512();
                        for (k, pairs) in pairs.iter().enumerate() {
                            // SAFETY: blocks sb·8 + 2k and + 1 < nb, and `x` has i16 sums.
                            let sums = unsafe { rows.block_pair(r, sb * SUB + 2 * k) };
                            msum = _mm512_dpwssd_epi32(msum, *pairs, _mm512_set1_epi32(sums));
                        }
                        let da = _mm512_set1_ps(*da);
                        let (scale, mscale) = (_mm512_mul_ps(dw, da), _mm512_mul_ps(dmw, da));
                        let acc = &mut acc[gi][t][r];
                        let sum = _mm512_cvtepi32_ps(isum[gi][t][r]);
                        *acc = _mm512_fmadd_ps(sum, scale, *acc);
                        *acc = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(msum), mscale, *acc);
                    }
                }
            }
        }
    }

    /// Q6_K: per sub-block of 16 values one tile multiply of half the depth with the weights less their
    /// offset of 32 (signed bytes: the VNNI kernels take it off with the activations' sums of 16), its
    /// sums times the sub-block's signed scales in integers; then the float step of `packed`'s
    /// `q6_k_tile`.
    ///
    /// # Safety
    /// As for `group_q4_k`, with the tiles configured for a depth of 16.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c,fma")]
    unsafe fn group_q6_k<const T: usize>(step: Step<'_>, s: &mut Scratch, acc: &mut Acc) {
        let Step { p, x, a, g, t0 } = step;
        let (low, offset) = (_mm512_set1_epi8(0x0F), _mm512_set1_epi8(32));
        *acc = [[[_mm512_setzero_ps(); TOKENS]; PAIR]; PAIR];
        for sb in 0..x.nb() / SUB {
            // SAFETY: g are groups of `p` and sb < the super-blocks per row (`Packed::check`).
            let blk = g.map(|g| unsafe { p.block(g, sb) });
            let mut isum: ISum = [[[_mm512_setzero_si512(); TOKENS]; PAIR]; PAIR];
            for c in 0..SUB {
                let b = sb * SUB + c;
                for h in 0..2 {
                    let mut scale = [_mm512_setzero_si512(); PAIR];
                    for (gi, blk) in blk.iter().enumerate() {
                        // SAFETY: sub-block 2c + h's scales, a byte per row.
                        let bytes = unsafe {
                            _mm_loadu_si128(blk.wrapping_add(Q6K_SCALES + 16 * (2 * c + h)).cast())
                        };
                        scale[gi] = _mm512_cvtepi8_epi32(bytes);
                        // SAFETY: half h's high-bit vector of block c.
                        let high = unsafe {
                            _mm512_loadu_si512(blk.wrapping_add(Q6K_HIGH + 128 * c + 64 * h).cast())
                        };
                        for t in 0..4 {
                            // SAFETY: low-bit vector t of block c, at 256·c + 64·t.
                            let v = unsafe {
                                _mm512_loadu_si512(blk.wrapping_add(256 * c + 64 * t).cast())
                            };
                            let v = if h == 0 { v } else { _mm512_srli_epi16(v, 4) };
                            let q = _mm512_or_si512(_mm512_and_si512(v, low), q6_k_high(high, t));
                            s.set_b(gi, t, _mm512_sub_epi8(q, offset));
                        }
                    }
                    // SAFETY: t0 + 16·T <= m, values 16h..16h + 16 of block b < nb.
                    unsafe { multiply::<T>(a, t0, b, 16 * h, scratch_b(s), s) };
                    for (gi, isum) in isum.iter_mut().enumerate() {
                        for (t, isum) in isum.iter_mut().enumerate().take(T) {
                            for (r, isum) in isum.iter_mut().enumerate() {
                                let scaled = _mm512_mullo_epi32(s.c_row(gi, t, r), scale[gi]);
                                *isum = _mm512_add_epi32(*isum, scaled);
                            }
                        }
                    }
                }
            }
            for gi in 0..PAIR {
                // SAFETY: d, 32 bytes.
                let dw = _mm512_cvtph_ps(unsafe {
                    _mm256_loadu_si256(blk[gi].wrapping_add(Q6K_D).cast())
                });
                for t in 0..T {
                    let da = a.d(t0 / TOKENS + t, sb * SUB);
                    for (r, da) in da.iter().enumerate() {
                        let scale = _mm512_mul_ps(dw, _mm512_set1_ps(*da));
                        let sum = _mm512_cvtepi32_ps(isum[gi][t][r]);
                        acc[gi][t][r] = _mm512_fmadd_ps(sum, scale, acc[gi][t][r]);
                    }
                }
            }
        }
    }
}
