//! 64-bit atomics written as BPF instructions.
//!
//! `core::sync::atomic` has no read-modify-write types on the BPF target, and
//! the compiler intrinsics pick an instruction from the CPU version and the
//! memory ordering in ways that have silently produced a non-fetching add
//! whose "result" was garbage. Spelling the two instructions out removes the
//! guesswork: `add` is the locked add every kernel has; `fetch_add` is
//! `BPF_ATOMIC | BPF_FETCH` (Linux 5.12+) and is only called behind the
//! `LB_HAS_ATOMIC_FETCH` constant, so older verifiers never see it.

use core::arch::asm;

/// `*ptr += value`, atomically, without reading the old value.
///
/// # Safety
/// `ptr` must point to a live, 8-byte aligned `u64` in a map value.
#[inline(always)]
pub unsafe fn add(ptr: *mut u64, value: u64) {
    // SAFETY: the caller guarantees the pointer.
    unsafe {
        asm!(
            "lock *(u64 *)({ptr} + 0) += {value}",
            ptr = in(reg) ptr,
            value = in(reg) value,
            options(nostack),
        );
    }
}

/// `*ptr += value`, atomically, returning the previous value.
///
/// # Safety
/// `ptr` must point to a live, 8-byte aligned `u64` in a map value, and the
/// kernel must support fetching atomics (Linux 5.12+).
#[inline(always)]
pub unsafe fn fetch_add(ptr: *mut u64, value: u64) -> u64 {
    let mut v = value;
    // SAFETY: the caller guarantees the pointer and the kernel support.
    unsafe {
        asm!(
            "{v} = atomic_fetch_add((u64 *)({ptr} + 0), {v})",
            ptr = in(reg) ptr,
            v = inout(reg) v,
            options(nostack),
        );
    }
    v
}
