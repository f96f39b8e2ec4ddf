//! Giving freed heap back to the kernel.

/// Returns the allocator's free pages to the kernel. glibc's malloc keeps
/// what a burst freed (a full sync's plan, a relist's pages of objects)
/// inside its arenas, so the resident set stays at the burst's peak; a
/// trim after each full sync brings it back to what is live. musl's
/// allocator (the static release build) returns pages on its own: nothing
/// to do there.
pub fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own arenas under their locks;
    // it takes no pointers and may be called from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}
