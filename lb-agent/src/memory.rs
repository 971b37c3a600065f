//! How the agent uses glibc's allocator: freed memory given back to the
//! system, and (for the Kubernetes source) one arena.
//!
//! Loading a whole state (a services file, a relist) parses objects on
//! several threads and frees them soon after. glibc's malloc keeps what was
//! freed in its arenas (one per thread that allocated) and returns to the
//! system only the free space at the top of each, so without help the
//! agent's RSS would stay near the peak of its largest load for good.
//! `malloc_trim` returns every whole free page of every arena. The numbers
//! (against jemalloc and mimalloc, which kept more) are in BENCHMARKS.md.

/// Makes every thread allocate from one arena; call before any thread
/// starts. For the Kubernetes source: otherwise its async workers decode
/// lists in arenas of their own and the objects kept end up scattered
/// among freed buffers across them; with one arena a relist's peak RSS was
/// a quarter lower and the steady RSS no higher. Not for the services
/// file: its parse threads then share one arena, and the steady RSS came
/// out 1.5-2x and a reload 2.5x slower. The numbers are in BENCHMARKS.md.
pub(crate) fn one_arena() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt takes no pointer and only sets a limit glibc reads
    // when a thread first needs an arena.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

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
