//! Giving freed memory back to the system.
//!
//! Loading a whole state (a services file, a relist) parses objects on
//! several threads and frees them soon after. glibc's malloc keeps what was
//! freed in its arenas (one per thread that allocated) and returns to the
//! system only the free space at the top of each, so without help the
//! agent's RSS would stay near the peak of its largest load for good.
//! `malloc_trim` returns every whole free page of every arena. The numbers
//! (against jemalloc and mimalloc, which kept more) are in BENCHMARKS.md.

/// Returns the allocator's free pages to the system: after a whole state
/// was loaded and the one before it freed. Milliseconds at a GiB of heap,
/// so not on an async worker. Nothing to do with another C library.
pub(crate) fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim takes no pointer; it only walks glibc's own arenas,
    // under their locks, and is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}
