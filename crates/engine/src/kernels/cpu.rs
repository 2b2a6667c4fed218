//! Which SIMD instruction sets the kernels may use, detected once at run time (so one binary serves every
//! x86-64 machine). `CODELLAMA_LSP_CPU=avx512` (VNNI without AMX), `=avxvnni` (AVX2 with AVX-VNNI, as
//! Intel's laptop cores), `=avx2` or `=scalar` caps the choice, for tests and comparisons; any other
//! value leaves it to detection.

use std::sync::OnceLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Scalar,
    Avx2,
    /// AVX2 with AVX-VNNI (`vpdpbusd` on 256 bits), without AVX-512.
    AvxVnni,
    Avx512Vnni,
    /// AVX-512 VNNI plus AMX tiles (AMX-TILE and AMX-INT8).
    Amx,
}

pub fn level() -> Level {
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        let cap = match std::env::var("CODELLAMA_LSP_CPU").as_deref() {
            Ok("scalar") => Level::Scalar,
            Ok("avx2") => Level::Avx2,
            Ok("avxvnni") => Level::AvxVnni,
            Ok("avx512") => Level::Avx512Vnni,
            _ => Level::Amx,
        };
        detect().min(cap)
    })
}

fn detect() -> Level {
    #[cfg(target_arch = "x86_64")]
    {
        let avx2 = std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c");
        let avx512 = avx2
            && std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vl")
            && std::is_x86_feature_detected!("avx512vnni");
        if avx512 {
            // CPUID leaf 7: EDX bit 24 is AMX-TILE, bit 25 AMX-INT8 (whether the OS lets us use them is
            // asked separately, see `amx::available`).
            let leaf7 = std::arch::x86_64::__cpuid_count(7, 0);
            if (leaf7.edx >> 24) & 3 == 3 {
                return Level::Amx;
            }
            return Level::Avx512Vnni;
        }
        if avx2 && std::is_x86_feature_detected!("avxvnni") {
            return Level::AvxVnni;
        }
        if avx2 {
            return Level::Avx2;
        }
    }
    Level::Scalar
}

pub fn has_avx512_vnni() -> bool {
    level() >= Level::Avx512Vnni
}

pub fn has_avx2() -> bool {
    level() >= Level::Avx2
}

/// Whether the CPU has AVX-VNNI and the level allows it. (A CPU with AVX-512 VNNI may lack it, as AMD's
/// Zen 4 does, so a level above `AvxVnni` does not imply it.)
pub fn has_avx_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        level() >= Level::AvxVnni && std::is_x86_feature_detected!("avxvnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Whether the kernels' software prefetches should fill L2 rather than L1: on Intel CPUs. A prefetch into
/// L1 holds one of the core's few line-fill buffers until its line arrives, and a server core waits
/// long for memory: on the 2-vCPU Xeon (AMX) a 7B Q4_0 model decoded at 6.2 tok/s prefetching into L1
/// and 7.5 into L2 (7.3 for llama.cpp), at 4.6 and 9.2 KB ahead alike. On the Zen 5, where the distance
/// was tuned, the prefetches go into L1 as before.
pub fn prefetch_into_l2() -> bool {
    static INTEL: OnceLock<bool> = OnceLock::new();
    *INTEL.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            let leaf0 = std::arch::x86_64::__cpuid(0);
            // "GenuineIntel" in EBX, EDX, ECX.
            let vendor = [leaf0.ebx, leaf0.edx, leaf0.ecx]
                .map(u32::to_le_bytes)
                .concat();
            vendor == *b"GenuineIntel"
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    })
}

#[cfg(test)]
mod tests {
    /// The vendor read from CPUID is the one the kernel reports.
    #[test]
    fn prefetches_go_into_l2_on_intel_only() {
        let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else {
            eprintln!("skipped: no /proc/cpuinfo to compare with");
            return;
        };
        let intel = info
            .lines()
            .find(|l| l.starts_with("vendor_id"))
            .is_some_and(|l| l.ends_with("GenuineIntel"));
        assert_eq!(super::prefetch_into_l2(), intel);
    }
}
