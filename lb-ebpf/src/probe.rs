//! Kernel feature probes, loaded by the agent before the real programs so
//! that it decides from what the kernel accepts, never from a version string.
//!
//! - `p_<hook>`: the smallest program for each attach type. If it does not
//!   load, the kernel lacks the hook; if it loads and the real program does
//!   not, that is a real error (a verifier rejection), reported as one.
//! - `p_fetch`: one fetching atomic add (Linux 5.12+), which exact shared
//!   round-robin needs.
#![no_std]
#![no_main]
#![feature(asm_experimental_arch)]

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};

#[path = "atomic.rs"]
#[expect(dead_code, reason = "the probe only needs fetch_add")]
mod atomic;

macro_rules! hook_probe {
    ($name:ident, $hook:ident) => {
        #[cgroup_sock_addr($hook)]
        pub fn $name(_ctx: SockAddrContext) -> i32 {
            1
        }
    };
}

hook_probe!(p_connect4, connect4);
hook_probe!(p_connect6, connect6);
hook_probe!(p_sendmsg4, sendmsg4);
hook_probe!(p_sendmsg6, sendmsg6);
hook_probe!(p_recvmsg4, recvmsg4);
hook_probe!(p_recvmsg6, recvmsg6);
hook_probe!(p_getpeername4, getpeername4);
hook_probe!(p_getpeername6, getpeername6);

#[cgroup_sock_addr(connect4)]
pub fn p_fetch(_ctx: SockAddrContext) -> i32 {
    let mut counter: u64 = 0;
    // SAFETY: a live, aligned stack slot.
    let old = unsafe { atomic::fetch_add(&raw mut counter, 1) };
    // Use the result so the instruction cannot be dropped.
    if old == 0 { 1 } else { 0 }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
