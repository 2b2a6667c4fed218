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

/// Output rows `i0..i0 + 16·k` (all full tiles of tokens from `i0`) for `groups`. Returns the first
/// activation row it did not compute (the caller finishes the remainder with the VNNI kernel).
///
/// # Safety
/// `available()` must be true; `out` must hold `x.m × p.rows()` values and the columns of `groups` must
/// be written by no other task.
pub unsafe fn run(p: &Packed, x: &Q8Act, groups: Range<usize>, out: *mut f32) -> usize {
    let full = x.m / TOKENS * TOKENS;
    #[cfg(target_arch = "x86_64")]
    if full > 0 {
        x86::run(p, x, groups, full, out);
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

    use super::{Packed, PackedKind, Q8Act, GROUP, QK, TOKENS};

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

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c,fma")]
    pub unsafe fn run(p: &Packed, x: &Q8Act, groups: Range<usize>, tokens: usize, out: *mut f32) {
        let cfg = config();
        asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly));
        let mut scratch = Scratch {
            b: [0; 8 * 64],
            c: [0; 16 * 16],
        };
        for g in groups {
            for t0 in (0..tokens).step_by(TOKENS) {
                match p.kind() {
                    PackedKind::Q4_1 => group_q4_1(p, x, g, t0, &mut scratch, out),
                    PackedKind::Q8_0 => group_q8_0(p, x, g, t0, &mut scratch, out),
                }
            }
        }
        asm!("tilerelease", options(nostack, nomem));
    }

    /// `C = A·B` for block `b` of tokens `t0..t0+16` (A) against 8 rows of B at `b_ptr`.
    #[inline]
    unsafe fn multiply(x: &Q8Act, t0: usize, b: usize, b_ptr: *const u8, c: *mut i32) {
        let a = x.qs.as_ptr().add(t0 * x.cols + b * QK);
        asm!(
            "tilezero tmm0",
            "tileloadd tmm1, [{a} + {sa}*1]",
            "tileloadd tmm2, [{b} + {sb}*1]",
            "tdpbsud tmm0, tmm1, tmm2",
            "tilestored [{c} + {sc}*1], tmm0",
            a = in(reg) a,
            sa = in(reg) x.cols,
            b = in(reg) b_ptr,
            sb = in(reg) 64usize,
            c = in(reg) c,
            sc = in(reg) 64usize,
            options(nostack),
        );
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn store(p: &Packed, out: *mut f32, i: usize, g: usize, v: __m512) {
        let first = g * GROUP;
        let n = (p.rows() - first).min(GROUP);
        let dst = out.add(i * p.rows() + first);
        if n == GROUP {
            _mm512_storeu_ps(dst, v);
        } else {
            _mm512_mask_storeu_ps(dst, ((1u32 << n) - 1) as u16, v);
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c,fma")]
    unsafe fn group_q4_1(
        p: &Packed,
        x: &Q8Act,
        g: usize,
        t0: usize,
        s: &mut Scratch,
        out: *mut f32,
    ) {
        let nb = x.nb;
        let low = _mm512_set1_epi8(0x0F);
        let mut acc = [_mm512_setzero_ps(); TOKENS];
        for b in 0..nb {
            let blk = p.block(g, b);
            for t in 0..4 {
                let v = _mm512_load_si512(blk.add(64 + t * 64) as *const _);
                _mm512_store_si512(
                    s.b.as_mut_ptr().add(t * 64) as *mut _,
                    _mm512_and_si512(v, low),
                );
                let hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
                _mm512_store_si512(s.b.as_mut_ptr().add((t + 4) * 64) as *mut _, hi);
            }
            multiply(x, t0, b, s.b.as_ptr(), s.c.as_mut_ptr());
            let dw = _mm512_cvtph_ps(_mm256_load_si256(blk as *const __m256i));
            let mw = _mm512_cvtph_ps(_mm256_load_si256(blk.add(32) as *const __m256i));
            for (r, acc) in acc.iter_mut().enumerate() {
                let i = t0 + r;
                let isum =
                    _mm512_cvtepi32_ps(_mm512_load_si512(s.c.as_ptr().add(r * 16) as *const _));
                let scale = _mm512_mul_ps(dw, _mm512_set1_ps(*x.d.get_unchecked(i * nb + b)));
                *acc = _mm512_fmadd_ps(isum, scale, *acc);
                *acc = _mm512_fmadd_ps(mw, _mm512_set1_ps(*x.s.get_unchecked(i * nb + b)), *acc);
            }
        }
        for (r, a) in acc.iter().enumerate() {
            store(p, out, t0 + r, g, *a);
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c,fma")]
    unsafe fn group_q8_0(
        p: &Packed,
        x: &Q8Act,
        g: usize,
        t0: usize,
        s: &mut Scratch,
        out: *mut f32,
    ) {
        let nb = x.nb;
        let mut acc = [_mm512_setzero_ps(); TOKENS];
        for b in 0..nb {
            let blk = p.block(g, b);
            // The repacked quads (weights + 128) are already the B tile.
            multiply(x, t0, b, blk.add(32), s.c.as_mut_ptr());
            let dw = _mm512_cvtph_ps(_mm256_load_si256(blk as *const __m256i));
            for (r, acc) in acc.iter_mut().enumerate() {
                let i = t0 + r;
                let corr = _mm512_set1_epi32(128 * *x.qsum.get_unchecked(i * nb + b));
                let c = _mm512_load_si512(s.c.as_ptr().add(r * 16) as *const _);
                let isum = _mm512_cvtepi32_ps(_mm512_sub_epi32(c, corr));
                let scale = _mm512_mul_ps(dw, _mm512_set1_ps(*x.d.get_unchecked(i * nb + b)));
                *acc = _mm512_fmadd_ps(isum, scale, *acc);
            }
        }
        for (r, a) in acc.iter().enumerate() {
            store(p, out, t0 + r, g, *a);
        }
    }
}
