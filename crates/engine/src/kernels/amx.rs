//! Prompt processing on Intel AMX tiles (Sapphire Rapids and later), for weights in the repacked layout.
//!
//! For sixteen tokens at a time and one group of sixteen weight rows, each 32-value block is one tile
//! multiply: the tokens' 8-bit quants (`A`, 16 rows × 32 bytes, straight from the activation buffer) times
//! the group's weights (`B`, 8 rows of 16 × 4 bytes: exactly the repacked quads) gives 16 × 16 exact
//! integer dot products. The per-block scales are then applied row by row with the same float operations
//! as the VNNI kernels (`acc = fma(Σ, d·dₐ, acc)`, then `+ m·sₐ` for Q4_1), so results are bit-identical
//! to decoding and to llama.cpp's AMX kernels, only much faster.
//!
//! Linux disables the tile registers until a process asks for them (`arch_prctl`); `available` does that
//! once and says whether it worked. Stable Rust has no AMX intrinsics, so the four tile instructions are
//! written as inline assembly.

use std::ops::Range;
use std::sync::OnceLock;

use super::packed::{Packed, PackedKind, GROUP};
use super::q8::{Q8Act, QK};
use super::SharedOut;

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

/// Activation rows `0..16·k` (all full tiles of 16 tokens) for `groups`. Returns the first activation
/// row it did not compute (the caller finishes the remainder with the VNNI kernel): 0 for the kinds
/// without tiles (Q4_1 and Q8_0 have them; `PackedKind::of` converts the others to those on AMX CPUs).
///
/// # Safety
/// `available()` is true; `x` has the row length of `p`, `groups` are groups of `p`, `out` holds
/// `x.m() × p.rows()` values, and no other task writes the columns of `groups` at the same time.
pub unsafe fn run(p: &Packed, x: &Q8Act, groups: Range<usize>, out: SharedOut) -> usize {
    if !matches!(p.kind(), PackedKind::Q4_1 | PackedKind::Q8_0) {
        return 0;
    }
    let full = x.m() / TOKENS * TOKENS;
    #[cfg(target_arch = "x86_64")]
    if full > 0 {
        // SAFETY: our caller's promise, and `full` tokens are whole tiles of activation rows.
        unsafe { x86::run(p, x, groups, full, out) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, groups, out);
    full
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::asm;
    use std::arch::x86_64::*;
    use std::ops::Range;

    use super::{Packed, PackedKind, Q8Act, SharedOut, GROUP, QK, TOKENS};

    /// Palette 1; tmm0 = C (16 × 64 bytes of i32), tmm1 = A (16 tokens × 32 bytes), tmm2 = B (8 × 64).
    #[repr(C, align(64))]
    struct TileConfig([u8; 64]);

    fn config() -> TileConfig {
        let mut c = [0u8; 64];
        c[0] = 1;
        let mut set = |tile: usize, rows: u8, bytes: u16| {
            c[16 + 2 * tile..18 + 2 * tile].copy_from_slice(&bytes.to_le_bytes());
            c[48 + tile] = rows;
        };
        set(0, 16, 64);
        set(1, 16, 32);
        set(2, 8, 64);
        TileConfig(c)
    }

    #[repr(C, align(64))]
    struct Scratch {
        b: [u8; 8 * 64],
        c: [i32; 16 * 16],
    }

    /// # Safety
    /// As for `super::run`, with `tokens` a multiple of 16 and at most `x.m()`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c,fma")]
    pub unsafe fn run(p: &Packed, x: &Q8Act, groups: Range<usize>, tokens: usize, out: SharedOut) {
        let cfg = config();
        // SAFETY: AMX is enabled for this process (`available`), and `cfg` is a valid 64-byte palette-1
        // configuration.
        unsafe { asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly)) };
        let mut scratch = Scratch {
            b: [0; 8 * 64],
            c: [0; 16 * 16],
        };
        for g in groups {
            for t0 in (0..tokens).step_by(TOKENS) {
                match p.kind() {
                    // SAFETY: g is one of our groups, t0 + 16 <= tokens <= m, the tiles are configured.
                    PackedKind::Q4_1 => unsafe { group_q4_1(p, x, g, t0, &mut scratch, out) },
                    // SAFETY: as above.
                    PackedKind::Q8_0 => unsafe { group_q8_0(p, x, g, t0, &mut scratch, out) },
                    other => unreachable!("no AMX tiles for {other:?} (`super::run` checks)"),
                }
            }
        }
        // SAFETY: releases the tile state configured above.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }

    /// `C = A·B` for block `b` of tokens `t0..t0+16` (A) against 8 rows of B at `b_ptr`.
    ///
    /// # Safety
    /// The tiles are configured as in `run`; `t0 + 16 <= x.m()`, `b < x.nb()`; `b_ptr` points at
    /// 8 × 64 readable bytes.
    #[inline]
    unsafe fn multiply(x: &Q8Act, t0: usize, b: usize, b_ptr: *const u8, c: &mut [i32; 16 * 16]) {
        // Rows t0..t0 + 16 of the quants, 32 bytes each at stride `cols` from block b of row t0.
        let a = x.quants()[t0 * x.cols() + b * QK..].as_ptr();
        // SAFETY: A reads 16 rows of 32 bytes at stride `cols`, inside the quants since t0 + 16 <= m
        // and b < nb; B reads 8 × 64 bytes at `b_ptr` (the caller's promise); C writes 16 × 64 bytes
        // into `c`.
        unsafe {
            asm!(
                "tilezero tmm0",
                "tileloadd tmm1, [{a} + {sa}*1]",
                "tileloadd tmm2, [{b} + {sb}*1]",
                "tdpbsud tmm0, tmm1, tmm2",
                "tilestored [{c} + {sc}*1], tmm0",
                a = in(reg) a,
                sa = in(reg) x.cols(),
                b = in(reg) b_ptr,
                sb = in(reg) 64usize,
                c = in(reg) c.as_mut_ptr(),
                sc = in(reg) 64usize,
                options(nostack),
            )
        };
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

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn load_i32(c: &[i32; 16 * 16], r: usize) -> __m512i {
        let (rows, _) = c.as_chunks::<16>();
        // SAFETY: one row of 16 i32 of `c` (64-byte aligned, and each row is 64 bytes).
        unsafe { _mm512_load_si512(rows[r].as_ptr().cast()) }
    }

    /// # Safety
    /// As for `run`, with `g` one of its groups and `t0 + 16 <= x.m()`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c,fma")]
    unsafe fn group_q4_1(
        p: &Packed,
        x: &Q8Act,
        g: usize,
        t0: usize,
        s: &mut Scratch,
        out: SharedOut,
    ) {
        let nb = x.nb();
        let low = _mm512_set1_epi8(0x0F);
        let mut acc = [_mm512_setzero_ps(); TOKENS];
        for b in 0..nb {
            // SAFETY: g < p.groups() and b < nb, the blocks per row of `p` (`Packed::check`).
            let blk = unsafe { p.block(g, b) };
            for t in 0..4 {
                // SAFETY: vector t of the group block's four, at offset 64 + 64·t (aligned).
                let v = unsafe { _mm512_load_si512(blk.wrapping_add(64 + t * 64).cast()) };
                let lo = _mm512_and_si512(v, low);
                // SAFETY: row t of the 8 × 64-byte, 64-byte aligned B scratch.
                unsafe { _mm512_store_si512(s.b.as_mut_ptr().wrapping_add(t * 64).cast(), lo) };
                let hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
                // SAFETY: row t + 4 of the B scratch.
                unsafe {
                    _mm512_store_si512(s.b.as_mut_ptr().wrapping_add((t + 4) * 64).cast(), hi)
                };
            }
            // SAFETY: t0 + 16 <= m, b < nb, and the scratch holds 8 × 64 bytes.
            unsafe { multiply(x, t0, b, s.b.as_ptr(), &mut s.c) };
            // SAFETY: d, 32 bytes at the start of the aligned group block.
            let dw = _mm512_cvtph_ps(unsafe { _mm256_load_si256(blk.cast()) });
            // SAFETY: m, 32 bytes at offset 32.
            let mw = _mm512_cvtph_ps(unsafe { _mm256_load_si256(blk.wrapping_add(32).cast()) });
            for (r, acc) in acc.iter_mut().enumerate() {
                let i = t0 + r;
                let isum = _mm512_cvtepi32_ps(load_i32(&s.c, r));
                let scale = _mm512_mul_ps(dw, _mm512_set1_ps(x.d(i)[b]));
                *acc = _mm512_fmadd_ps(isum, scale, *acc);
                *acc = _mm512_fmadd_ps(mw, _mm512_set1_ps(x.s(i)[b]), *acc);
            }
        }
        for (r, a) in acc.iter().enumerate() {
            // SAFETY: t0 + r < m and g is one of this call's groups.
            unsafe { store(p, out, t0 + r, g, *a) };
        }
    }

    /// # Safety
    /// As for `run`, with `g` one of its groups and `t0 + 16 <= x.m()`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c,fma")]
    unsafe fn group_q8_0(
        p: &Packed,
        x: &Q8Act,
        g: usize,
        t0: usize,
        s: &mut Scratch,
        out: SharedOut,
    ) {
        let nb = x.nb();
        let mut acc = [_mm512_setzero_ps(); TOKENS];
        for b in 0..nb {
            // SAFETY: g < p.groups() and b < nb, the blocks per row of `p` (`Packed::check`).
            let blk = unsafe { p.block(g, b) };
            // The repacked quads (weights + 128) are already the B tile: 8 × 64 bytes from offset 32.
            // SAFETY: t0 + 16 <= m, b < nb, and the group block holds 32 + 8 × 64 bytes.
            unsafe { multiply(x, t0, b, blk.wrapping_add(32), &mut s.c) };
            // SAFETY: d, 32 bytes at the start of the aligned group block.
            let dw = _mm512_cvtph_ps(unsafe { _mm256_load_si256(blk.cast()) });
            for (r, acc) in acc.iter_mut().enumerate() {
                let i = t0 + r;
                let corr = _mm512_set1_epi32(128 * x.qsum(i)[b]);
                let isum = _mm512_cvtepi32_ps(_mm512_sub_epi32(load_i32(&s.c, r), corr));
                let scale = _mm512_mul_ps(dw, _mm512_set1_ps(x.d(i)[b]));
                *acc = _mm512_fmadd_ps(isum, scale, *acc);
            }
        }
        for (r, a) in acc.iter().enumerate() {
            // SAFETY: t0 + r < m and g is one of this call's groups.
            unsafe { store(p, out, t0 + r, g, *a) };
        }
    }
}
