//! Socket-level load balancing for Kubernetes ClusterIP services.
//!
//! Eight cgroup `sock_addr` programs:
//! - `connect4`/`connect6` and `sendmsg4`/`sendmsg6` look the destination up
//!   in `lb_services` and rewrite it to one backend, once per connection (or
//!   per datagram for unconnected UDP), before any packet exists;
//! - `recvmsg4`/`recvmsg6` and `getpeername4`/`getpeername6` rewrite the
//!   backend address back to the ClusterIP, so applications only ever see the
//!   address they asked for.
//!
//! All eight share `datapath::forward` and `datapath::reverse`; the `*6` hooks also serve
//! IPv4 services reached through IPv4-mapped IPv6 sockets, because every
//! address in the maps is 16 bytes (see `lb_common::addr`).
#![no_std]
#![no_main]
#![feature(asm_experimental_arch)]

/// This object uses fetching atomics (BPF_ATOMIC | BPF_FETCH, Linux 5.12+)
/// for exact round-robin; `legacy.rs` builds the same programs without.
pub(crate) const ATOMIC_FETCH_BUILD: bool = true;

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
