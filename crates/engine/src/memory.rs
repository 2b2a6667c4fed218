//! Handing freed memory back to the system: glibc keeps freed pages in its arenas, which makes the
//! resident size of the server grow across model loads although every buffer was freed. This crate's one
//! unsafe call outside the kernels and the pool lives here.

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
