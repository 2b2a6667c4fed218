//! How the process holds memory: freed memory handed back to the system (glibc keeps freed pages in its
//! arenas, which makes the resident size of the server grow across model loads although every buffer was
//! freed), and huge pages asked for where large buffers are streamed. This crate's calls into the C
//! library outside the kernels and the pool live here.

/// Hands the memory of a model that is gone, or of buffers freed while loading one, back to the system.
///
/// glibc keeps freed memory in the arena of the thread that allocated it, and every load runs on new
/// threads, so without this the resident size grew with each reload although every buffer was freed (the
/// thread count stayed the same, and `MALLOC_ARENA_MAX=1` stopped the growth). Measured switching between
/// SmolLM2 and Qwen2.5-Coder-0.5B 20 times: with Qwen loaded 697 -> 1384 MB, with this 633-680 MB (docs/lsp.md
/// has more). `malloc_trim` returns the free pages of every arena.
pub(crate) fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` only walks glibc's own arenas under their locks; it takes no pointers and is
    // safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Asks the kernel to back the whole 2 MB pages inside `len` bytes at `start` with huge pages when they
/// are first touched (where transparent huge pages are enabled "on request", the usual default). A
/// decoding step streams every weight once, and with 4 KB pages each 4 KB costs a TLB miss and a page
/// walk: on the 2-vCPU Xeon (AMX) a 7B Q4_0 model decoded at 7.0–7.1 tok/s without and 7.5 with (5.8 and
/// 6.1–6.2 with prefetches into L1). A hint only: errors are ignored, and without huge pages nothing
/// changes.
pub(crate) fn advise_huge_pages(start: *const u8, len: usize) {
    const HUGE: usize = 2 << 20;
    let (first, end) = (
        (start as usize).next_multiple_of(HUGE),
        start as usize + len,
    );
    if end < first + HUGE {
        return;
    }
    #[cfg(target_os = "linux")]
    // SAFETY: madvise(MADV_HUGEPAGE) reads and writes no memory of ours; it only records how the pages
    // of this range (inside an allocation of the caller's, aligned to a page) are to be backed, and
    // keeps their contents.
    unsafe {
        libc::madvise(
            first as *mut libc::c_void,
            (end - first) / HUGE * HUGE,
            libc::MADV_HUGEPAGE,
        );
    }
}
