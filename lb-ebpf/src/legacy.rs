//! The data path for kernels without fetching atomics (before Linux 5.12):
//! the same programs as `main.rs`, built without the `atomic_fetch_add`
//! instruction, which those verifiers reject wherever it appears.
//! Round-robin is then exact for one connection at a time and approximate
//! under concurrent connects. The agent picks this object when its probe
//! finds no fetching atomics.
#![no_std]
#![no_main]
#![feature(asm_experimental_arch)]

pub(crate) const ATOMIC_FETCH_BUILD: bool = false;

mod atomic;
mod datapath;
mod tc;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
