//! The data path, shared by the two objects built from this crate (see
//! `main.rs` and `legacy.rs`).

use aya_ebpf::{
    EbpfContext as _, Global,
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_PREALLOC, bpf_sock_addr},
    btf_maps::{Array, ArrayOfMaps, HashMap, LruHashMap, PerCpuArray},
    helpers::generated::{
        bpf_get_netns_cookie, bpf_get_prandom_u32, bpf_get_socket_cookie, bpf_ktime_get_ns,
        bpf_set_retval,
    },
    macros::{btf_map, cgroup_sock_addr},
    programs::SockAddrContext,
};
use lb_common::{
    addr,
    affinity::{AffinityKey, AffinityValue, MemberKey},
    backend::Backend,
    capacity,
    meta::Meta,
    revnat::{RevNatKey, RevNatValue},
    service::{
        ALGORITHM_ROUND_ROBIN, FLAG_AFFINITY, SCOPE_ANY, ServiceKey, ServiceName, ServiceState,
        ServiceValue,
    },
    stats::{
        STAT_AFFINITY_HIT, STAT_BACKEND_MISSING, STAT_CONNECT, STAT_COUNT,
        STAT_GETPEERNAME_REVERSED, STAT_LOOKUP_RACED, STAT_RECVMSG_REVERSED, STAT_REFUSED,
        STAT_REVNAT_UPDATE_FAILED, STAT_SENDMSG, ServiceStats,
    },
};

use crate::{ATOMIC_FETCH_BUILD, atomic};

/// Return value that lets the syscall proceed.
const ALLOW: i32 = 1;
/// Return value that fails the syscall (`EPERM`, or the `bpf_set_retval` value).
const REJECT: i32 = 0;
const ECONNREFUSED: i32 = 111;
const NO_PREALLOC: usize = BPF_F_NO_PREALLOC as usize;
const MMAPABLE: usize = BPF_F_MMAPABLE as usize;

// ---------------------------------------------------------------------------
// Maps. Sizes here are defaults; the agent sets the real ones at load time.
// ---------------------------------------------------------------------------

#[btf_map(name = "lb_services")]
pub(crate) static SERVICES: HashMap<ServiceKey, ServiceValue, { capacity::SERVICES as usize }> =
    HashMap::new();

/// Indexed by service id (mmapable: the agent changes a service's backend
/// range with one store).
#[btf_map(name = "lb_svc")]
pub(crate) static SERVICE_STATE: Array<ServiceState, { capacity::SERVICES as usize }, MMAPABLE> =
    Array::new();

#[btf_map(name = "lb_backends")]
pub(crate) static BACKENDS: Array<Backend, { capacity::BACKENDS as usize }, MMAPABLE> =
    Array::new();

#[btf_map(name = "lb_revnat")]
static REVNAT: LruHashMap<RevNatKey, RevNatValue, { capacity::REVNAT as usize }> =
    LruHashMap::new();

#[btf_map(name = "lb_affinity")]
static AFFINITY: LruHashMap<AffinityKey, AffinityValue, { capacity::AFFINITY as usize }> =
    LruHashMap::new();

#[btf_map(name = "lb_affinity_members")]
pub(crate) static AFFINITY_MEMBERS: HashMap<
    MemberKey,
    u32,
    { capacity::BACKENDS as usize },
    NO_PREALLOC,
> = HashMap::new();

/// Round-robin position per service id (mmapable: the agent zeroes a
/// recycled id with a plain store).
#[btf_map(name = "lb_rr")]
static RR: Array<u64, { capacity::SERVICES as usize }, MMAPABLE> = Array::new();

/// Per-service counters (mmapable: the agent reads and zeroes them in place).
#[btf_map(name = "lb_svc_stats")]
static SERVICE_STATS: Array<ServiceStats, { capacity::SERVICES as usize }, MMAPABLE> = Array::new();

#[btf_map(name = "lb_stats")]
static STATS: PerCpuArray<u64, { STAT_COUNT as usize }> = PerCpuArray::new();

/// Read by the agent and `lb-agent list` only.
#[btf_map(name = "lb_svc_names")]
static SERVICE_NAMES: HashMap<u32, ServiceName, { capacity::SERVICES as usize }, NO_PREALLOC> =
    HashMap::new();

/// Read by the agent and `lb-agent list` only.
#[btf_map(name = "lb_meta")]
static META: Array<Meta, 1> = Array::new();

/// Never read by a program: the agent replaces its entry to wait for every
/// running program to finish (the kernel runs `synchronize_rcu()` on each
/// map-in-map update). Step 3 of the update protocol in `lb_common::service`.
#[btf_map(name = "lb_barrier")]
static BARRIER: ArrayOfMaps<Array<u32, 1>, 1> = ArrayOfMaps::new();

// ---------------------------------------------------------------------------
// Kernel features, set by the agent from what it probed. Constants to the
// verifier: the branch a kernel cannot run is pruned before it is checked.
// ---------------------------------------------------------------------------

#[unsafe(no_mangle)]
static LB_HAS_SET_RETVAL: Global<u8> = Global::new(0);
#[unsafe(no_mangle)]
static LB_HAS_ATOMIC_FETCH: Global<u8> = Global::new(0);
#[unsafe(no_mangle)]
static LB_HAS_NETNS_COOKIE: Global<u8> = Global::new(0);

// ---------------------------------------------------------------------------
// Entry points: thin; the verdict for every outcome is decided in `verdict`.
// ---------------------------------------------------------------------------

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    let outcome = forward(&ctx, v4_dest(&ctx), STAT_CONNECT);
    verdict(&ctx, outcome, Family::V4)
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    let outcome = forward(&ctx, v6_dest(&ctx), STAT_CONNECT);
    verdict(&ctx, outcome, Family::V6)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    let outcome = forward(&ctx, v4_dest(&ctx), STAT_SENDMSG);
    verdict(&ctx, outcome, Family::V4)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    let outcome = forward(&ctx, v6_dest(&ctx), STAT_SENDMSG);
    verdict(&ctx, outcome, Family::V6)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn recvmsg4(ctx: SockAddrContext) -> i32 {
    let outcome = reverse(&ctx, v4_dest(&ctx), STAT_RECVMSG_REVERSED);
    verdict(&ctx, outcome, Family::V4)
}

#[cgroup_sock_addr(recvmsg6)]
pub fn recvmsg6(ctx: SockAddrContext) -> i32 {
    let outcome = reverse(&ctx, v6_dest(&ctx), STAT_RECVMSG_REVERSED);
    verdict(&ctx, outcome, Family::V6)
}

#[cgroup_sock_addr(getpeername4)]
pub fn getpeername4(ctx: SockAddrContext) -> i32 {
    let outcome = reverse(&ctx, v4_dest(&ctx), STAT_GETPEERNAME_REVERSED);
    verdict(&ctx, outcome, Family::V4)
}

#[cgroup_sock_addr(getpeername6)]
pub fn getpeername6(ctx: SockAddrContext) -> i32 {
    let outcome = reverse(&ctx, v6_dest(&ctx), STAT_GETPEERNAME_REVERSED);
    verdict(&ctx, outcome, Family::V6)
}

// ---------------------------------------------------------------------------
// Shared logic.
// ---------------------------------------------------------------------------

#[derive(Clone, Copy)]
enum Family {
    V4,
    V6,
}

/// An address and port as the maps store them.
#[derive(Clone, Copy)]
struct Dest {
    addr: [u8; 16],
    port_be: u16,
    proto: u8,
}

enum Outcome {
    /// Not ours (or nothing to do): leave the address alone.
    Untouched,
    /// Rewrite the address to this one.
    Rewrite { addr: [u8; 16], port_be: u16 },
    /// The service has no usable endpoint: fail the syscall.
    Refuse,
}

fn sock_addr(ctx: &SockAddrContext) -> &bpf_sock_addr {
    // SAFETY: the kernel hands every sock_addr program a valid context.
    unsafe { &*ctx.sock_addr }
}

#[inline(always)]
fn v4_dest(ctx: &SockAddrContext) -> Dest {
    let sa = sock_addr(ctx);
    Dest {
        addr: addr::from_v4_be(sa.user_ip4),
        // `user_port` holds the port in network order in its low 16 bits.
        #[expect(clippy::cast_possible_truncation, reason = "the port is 16 bits")]
        port_be: sa.user_port as u16,
        #[expect(
            clippy::cast_possible_truncation,
            reason = "IP protocol numbers are 8 bits"
        )]
        proto: sa.protocol as u8,
    }
}

#[inline(always)]
fn v6_dest(ctx: &SockAddrContext) -> Dest {
    let sa = sock_addr(ctx);
    Dest {
        addr: addr::from_words(sa.user_ip6),
        #[expect(clippy::cast_possible_truncation, reason = "the port is 16 bits")]
        port_be: sa.user_port as u16,
        #[expect(
            clippy::cast_possible_truncation,
            reason = "IP protocol numbers are 8 bits"
        )]
        proto: sa.protocol as u8,
    }
}

/// The one place that turns an outcome into the program's return value.
#[inline(always)]
fn verdict(ctx: &SockAddrContext, outcome: Outcome, family: Family) -> i32 {
    match outcome {
        Outcome::Untouched => ALLOW,
        Outcome::Rewrite { addr, port_be } => {
            let sa = ctx.sock_addr;
            match family {
                Family::V4 => {
                    // The service table only pairs IPv4 services with IPv4
                    // backends, so a v4 hook never gets an IPv6 backend; if
                    // it did, leaving the address alone is the safe answer.
                    if !addr::is_v4_mapped(&addr) {
                        return ALLOW;
                    }
                    // SAFETY: valid context; 4-byte stores to writable fields.
                    unsafe {
                        (*sa).user_ip4 = addr::v4_be(&addr);
                        (*sa).user_port = u32::from(port_be);
                    }
                }
                Family::V6 => {
                    let words = addr::words(&addr);
                    // SAFETY: valid context; 4-byte stores to writable fields.
                    unsafe {
                        (*sa).user_ip6[0] = words[0];
                        (*sa).user_ip6[1] = words[1];
                        (*sa).user_ip6[2] = words[2];
                        (*sa).user_ip6[3] = words[3];
                        (*sa).user_port = u32::from(port_be);
                    }
                }
            }
            ALLOW
        }
        Outcome::Refuse => {
            if LB_HAS_SET_RETVAL.load() != 0 {
                // SAFETY: helper call; only reached where the kernel has it
                // (the branch is pruned otherwise). Fails the syscall with
                // ECONNREFUSED, as kube-proxy's REJECT rule does.
                unsafe { bpf_set_retval(-ECONNREFUSED) };
            }
            REJECT
        }
    }
}

/// `connect()`/`sendmsg()`: a ClusterIP becomes one of its backends.
#[inline(always)]
fn forward(ctx: &SockAddrContext, dest: Dest, stat: u32) -> Outcome {
    let key = ServiceKey {
        addr: dest.addr,
        port_be: dest.port_be,
        proto: dest.proto,
        scope: SCOPE_ANY,
    };
    let Some(svc) = SERVICES.get_ptr(&key) else {
        return Outcome::Untouched;
    };
    // The only value read from the hash: one 4-byte load (see the module
    // docs of `lb_common::service` for why nothing else lives there).
    // SAFETY: valid pointer from the lookup.
    let id = unsafe { core::ptr::read_volatile(&raw const (*svc).id) };
    let Some(state) = SERVICE_STATE.get_ptr(id) else {
        return Outcome::Untouched;
    };
    // One 8-byte load: the range is never seen half-updated (update protocol
    // in `lb_common::service`).
    // SAFETY: `backends` is the first field of the value and 8-byte aligned.
    let packed = unsafe { core::ptr::read_volatile(state.cast::<u64>()) };
    #[expect(clippy::cast_possible_truncation, reason = "unpacking two u32")]
    let (first, count) = (packed as u32, (packed >> 32) as u32);
    // SAFETY: valid pointer into an array value; plain integer fields.
    let (owner, algorithm, flags, timeout_s) = unsafe {
        (
            (*state).key,
            (*state).algorithm,
            (*state).flags,
            (*state).affinity_timeout_s,
        )
    };
    // The lookup raced the removal of this frontend and read an id the
    // reused element now holds for another one: not ours to translate.
    if addr::words(&owner.addr) != addr::words(&key.addr)
        || owner.port_be != key.port_be
        || owner.proto != key.proto
    {
        count_stat(STAT_LOOKUP_RACED);
        return Outcome::Untouched;
    }

    if count == 0 {
        count_stat(STAT_REFUSED);
        if let Some(s) = SERVICE_STATS.get_ptr_mut(id) {
            // SAFETY: pointer into an array value, 8-byte aligned.
            unsafe { atomic::add(&raw mut (*s).refused, 1) };
        }
        return Outcome::Refuse;
    }

    let affinity = if flags & FLAG_AFFINITY != 0 && LB_HAS_NETNS_COOKIE.load() != 0 {
        Some(AffinityKey {
            // SAFETY: helper call on the program's own context (pruned where absent).
            netns_cookie: unsafe { bpf_get_netns_cookie(ctx.as_ptr()) },
            service_id: id,
            pad: [0; 4],
        })
    } else {
        None
    };

    let backend = match affinity.as_ref().and_then(|k| sticky_backend(k, timeout_s)) {
        Some(b) => {
            count_stat(STAT_AFFINITY_HIT);
            b
        }
        None => {
            let slot = if algorithm == ALGORITHM_ROUND_ROBIN {
                round_robin_slot(id, count)
            } else {
                // SAFETY: helper without arguments.
                let r = unsafe { bpf_get_prandom_u32() };
                r % count
            };
            let Some(b) = BACKENDS.get(first.wrapping_add(slot)) else {
                // Cannot happen while the update protocol holds; leave the
                // connection alone rather than fail it, count it, and say
                // so in the agent's log.
                count_stat(STAT_BACKEND_MISSING);
                aya_log_ebpf::error!(
                    ctx,
                    "service id {} has no backend at slot {} of {} (first {}): update protocol broken",
                    id,
                    slot,
                    count,
                    first
                );
                return Outcome::Untouched;
            };
            let b = *b;
            if let Some(k) = affinity.as_ref() {
                let v = AffinityValue {
                    addr: b.addr,
                    port_be: b.port_be,
                    pad: [0; 6],
                    // SAFETY: helper without arguments.
                    last_used_ns: unsafe { bpf_ktime_get_ns() },
                };
                // Best effort: without the entry the next connection picks anew.
                let _ = AFFINITY.insert(k, &v, 0);
            }
            b
        }
    };

    remember_reverse(ctx, &dest, &backend);
    count_stat(stat);
    if let Some(s) = SERVICE_STATS.get_ptr_mut(id) {
        // SAFETY: pointer into an array value, 8-byte aligned.
        unsafe { atomic::add(&raw mut (*s).translated, 1) };
    }
    Outcome::Rewrite {
        addr: backend.addr,
        port_be: backend.port_be,
    }
}

/// The backend this client used last, if it is still a usable endpoint of
/// the service and was used within the timeout; refreshes its timestamp.
#[inline(always)]
fn sticky_backend(key: &AffinityKey, timeout_s: u32) -> Option<Backend> {
    let entry = AFFINITY.get_ptr_mut(key)?;
    // SAFETY: valid pointer from the lookup; plain fields.
    let (b_addr, b_port, last) =
        unsafe { ((*entry).addr, (*entry).port_be, (*entry).last_used_ns) };
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if now.wrapping_sub(last) > u64::from(timeout_s) * 1_000_000_000 {
        return None;
    }
    let member = MemberKey {
        service_id: key.service_id,
        port_be: b_port,
        pad: [0; 2],
        addr: b_addr,
    };
    AFFINITY_MEMBERS.get_ptr(&member)?;
    // SAFETY: valid pointer from the lookup.
    unsafe { (*entry).last_used_ns = now };
    Some(Backend {
        addr: b_addr,
        port_be: b_port,
        pad: [0; 6],
    })
}

/// The next slot of an exact rotation shared by all CPUs.
#[inline(always)]
pub(crate) fn round_robin_slot(id: u32, count: u32) -> u32 {
    let Some(counter) = RR.get_ptr_mut(id) else {
        return 0;
    };
    // `ATOMIC_FETCH_BUILD` is a compile-time constant: the legacy object has
    // no fetching instruction at all, because verifiers before 5.12 reject
    // one even in a branch that can never run.
    let n = if ATOMIC_FETCH_BUILD && LB_HAS_ATOMIC_FETCH.load() != 0 {
        // SAFETY: pointer into an array value, 8-byte aligned.
        unsafe { atomic::fetch_add(counter, 1) }
    } else {
        // Kernels before 5.12 have no fetching atomics: exact for one CPU
        // at a time, approximate under concurrent connects.
        // SAFETY: pointer into an array value.
        unsafe {
            let n = core::ptr::read_volatile(counter);
            core::ptr::write_volatile(counter, n.wrapping_add(1));
            n
        }
    };
    #[expect(clippy::cast_possible_truncation, reason = "result is below count")]
    let slot = (n % u64::from(count)) as u32;
    slot
}

/// Records "this socket talking to this backend means this service", for
/// `recvmsg()` and `getpeername()`. Skips the write when it is already there
/// (unconnected UDP sockets translate every datagram).
#[inline(always)]
fn remember_reverse(ctx: &SockAddrContext, service: &Dest, backend: &Backend) {
    let key = RevNatKey {
        // SAFETY: helper call on the program's own context.
        cookie: unsafe { bpf_get_socket_cookie(ctx.as_ptr()) },
        addr: backend.addr,
        port_be: backend.port_be,
        pad: [0; 6],
    };
    let value = RevNatValue {
        addr: service.addr,
        port_be: service.port_be,
        pad: [0; 2],
    };
    if let Some(existing) = REVNAT.get_ptr(&key) {
        // SAFETY: valid pointer from the lookup.
        let existing = unsafe { *existing };
        if existing.addr == value.addr && existing.port_be == value.port_be {
            return;
        }
    }
    if REVNAT.insert(&key, &value, 0).is_err() {
        count_stat(STAT_REVNAT_UPDATE_FAILED);
    }
}

/// `recvmsg()`/`getpeername()`: a backend this socket was sent to by
/// [`forward`] becomes the ClusterIP again.
#[inline(always)]
fn reverse(ctx: &SockAddrContext, peer: Dest, stat: u32) -> Outcome {
    let key = RevNatKey {
        // SAFETY: helper call on the program's own context.
        cookie: unsafe { bpf_get_socket_cookie(ctx.as_ptr()) },
        addr: peer.addr,
        port_be: peer.port_be,
        pad: [0; 6],
    };
    let Some(v) = REVNAT.get_ptr(&key) else {
        return Outcome::Untouched;
    };
    // SAFETY: valid pointer from the lookup.
    let v = unsafe { *v };
    count_stat(stat);
    Outcome::Rewrite {
        addr: v.addr,
        port_be: v.port_be,
    }
}

#[inline(always)]
fn count_stat(index: u32) {
    if let Some(c) = STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, only this CPU writes it while we run.
        unsafe { *c += 1 };
    }
}
