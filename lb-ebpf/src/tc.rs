//! Traffic from other hosts: two tc programs on the node's devices
//! translate packets to a node port, an external IP or a load-balancer IP
//! (never a `ClusterIP`: those are for clients in the cluster, which the
//! socket hooks serve), with the flow state in `lb_ct` (see
//! `lb_common::conntrack` for the entries a flow writes and why a backend
//! on another node sees the node's address).
//!
//! - `lb_tc_ingress`: a packet of a known flow is rewritten by its entry; the
//!   first packet of a new flow picks a backend with the Service's
//!   algorithm (only this node's endpoints under `externalTrafficPolicy:
//!   Local`) and records the flow. A packet whose source was rewritten is
//!   sent on with a FIB lookup and a redirect, because the stack would drop
//!   a packet from one of its own addresses as a martian.
//! - `lb_tc_egress`: replies of a backend on this node get the frontend back
//!   as their source.
//!
//! IPv4 (not fragments) and IPv6 (no extension headers), TCP and UDP, on
//! Ethernet devices. Anything else passes untouched.

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_NOT_FWDED, BPF_FIB_LKUP_RET_SUCCESS, BPF_NOEXIST, TC_ACT_OK, TC_ACT_SHOT,
        bpf_fib_lookup,
    },
    btf_maps::{HashMap, LpmTrie, LruHashMap, PerCpuArray, lpm_trie::Key},
    helpers::generated::{
        bpf_csum_diff, bpf_fib_lookup as fib_lookup, bpf_get_prandom_u32, bpf_ktime_get_ns,
        bpf_redirect, bpf_redirect_neigh,
    },
    macros::{btf_map, classifier},
    programs::TcContext,
};
use lb_common::{
    affinity::{AffinityValue, ClientAffinityKey, MemberKey},
    capacity,
    conntrack::{CT_CLOSING, CT_FORWARD, CT_SNAT, CtKey, CtValue, DIR_EGRESS, DIR_INGRESS, Device},
    proto,
    service::{
        ALGORITHM_ROUND_ROBIN, FLAG_AFFINITY, FLAG_SOURCE_RANGES, KIND_CLUSTER_IP, KIND_NODE_PORT,
        SCOPE_ANY, SCOPE_EXTERNAL, SOURCE_RANGE_BITS, ServiceKey, SourceRange,
    },
    stats::{
        TC_AFFINITY_HIT, TC_DROP_ERROR, TC_DROP_NO_ENDPOINT, TC_DROP_NO_LOCAL_ENDPOINT,
        TC_DROP_NO_PORT, TC_DROP_NO_ROUTE, TC_DROP_SOURCE_RANGE, TC_NEW_FLOW, TC_REFUSED_BY_STACK,
        TC_RESELECTED, TC_STAT_COUNT, TC_TRANSLATED,
    },
};

use crate::datapath::{
    AFFINITY_MEMBERS as MEMBERS, BACKENDS, SERVICE_STATE, SERVICES, round_robin_slot,
};

#[btf_map(name = "lb_ct")]
static CT: LruHashMap<CtKey, CtValue, { capacity::CONNTRACK as usize }> = LruHashMap::new();

/// Written by the agent when it attaches: the devices the programs run on.
#[btf_map(name = "lb_devices")]
static DEVICES: HashMap<u32, Device, { capacity::DEVICES as usize }> = HashMap::new();

/// `loadBalancerSourceRanges`, per service (see `SourceRange`).
#[btf_map(name = "lb_source_ranges")]
static SOURCE_RANGES: LpmTrie<SourceRange, u8, { capacity::SERVICES as usize }> = LpmTrie::new();

/// `sessionAffinity: ClientIP` for clients from other hosts.
#[btf_map(name = "lb_tc_affinity")]
static AFFINITY: LruHashMap<ClientAffinityKey, AffinityValue, { capacity::AFFINITY as usize }> =
    LruHashMap::new();

#[btf_map(name = "lb_tc_stats")]
static TC_STATS: PerCpuArray<u64, { TC_STAT_COUNT as usize }> = PerCpuArray::new();

/// A program's working state, off the 512-byte stack (the verifier sums
/// the frames of a call chain). Private to one load (not pinned).
#[btf_map(name = "lb_tc_scratch")]
static SCRATCH: PerCpuArray<Scratch, 1> = PerCpuArray::new();

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;
/// Source ports tried for a masqueraded flow: the client's own, then
/// random ones from the unprivileged range.
const SNAT_TRIES: u32 = 16;
const SNAT_PORT_MIN: u32 = 1024;

// IPv4 header offsets (from the start of the IP header).
const IP4_CSUM: usize = 10;
const IP4_SADDR: usize = 12;
const IP4_DADDR: usize = 16;
// IPv6 header offsets.
const IP6_SADDR: usize = 8;
const IP6_DADDR: usize = 24;

const OK: i32 = TC_ACT_OK as i32;
const SHOT: i32 = TC_ACT_SHOT as i32;

/// One packet's working state.
struct Scratch {
    p: Packet,
    /// The entry the packet leaves with.
    to: CtValue,
    /// The other entry of a new flow.
    reply: CtValue,
    /// Key of the other entry of a new flow.
    back: CtKey,
    fib: bpf_fib_lookup,
}

#[classifier]
pub fn lb_tc_ingress(ctx: TcContext) -> i32 {
    let Some(s) = scratch(&ctx) else {
        return OK;
    };
    // `new_flow` returns rather than calling `send` itself, so that no
    // chain of calls is more than three deep: kernels before 6.x round
    // each frame up and sum the chain against the 512-byte stack.
    if !lookup(s, DIR_INGRESS) {
        if let Err(verdict) = new_flow(&ctx, s) {
            return verdict;
        }
    }
    send(&ctx, s)
}

#[classifier]
pub fn lb_tc_egress(ctx: TcContext) -> i32 {
    let Some(s) = scratch(&ctx) else {
        return OK;
    };
    if !lookup(s, DIR_EGRESS) {
        return OK;
    }
    if s.p.rewrite(&ctx, &s.to).is_err() {
        count(TC_DROP_ERROR);
        return SHOT;
    }
    count(TC_TRANSLATED);
    OK
}

/// The scratch area with the packet parsed into it; `None` for a packet
/// the programs leave alone.
#[inline(always)]
fn scratch(ctx: &TcContext) -> Option<&'static mut Scratch> {
    let s = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: a per-CPU slot, ours until the program returns.
    let s = unsafe { &mut *s };
    s.p.parse(ctx).then_some(s)
}

/// Looks the packet up in `lb_ct`; a hit is refreshed, copied to `s.to`
/// and answered `true`. On ingress, two hits on a client's entry are
/// reported as no entry, so that the packet starts a new flow:
/// - a SYN with another sequence number than the one that opened the
///   flow: a new connection on reused addresses and ports (the old one's
///   entries, closing, may not have expired yet). It picks a backend and
///   gets entries of its own, not the old connection's closing state. A
///   retransmitted SYN (the same number) stays with the backend whose
///   SYN-ACK may be on its way, or the client would complete its
///   handshake with one backend and talk to another;
/// - a UDP datagram on a flow whose backend is no longer an endpoint: no
///   new traffic reaches a removed backend.
///
/// An established TCP connection stays with its backend, as under
/// kube-proxy's conntrack.
#[inline(never)]
fn lookup(s: &mut Scratch, dir: u8) -> bool {
    let key = s.p.key(dir);
    let Some(entry) = CT.get_ptr_mut(&key) else {
        return false;
    };
    // SAFETY: valid pointer from the lookup; plain fields. Racing writers
    // only ever store a newer time or set a flag.
    unsafe {
        if dir == DIR_INGRESS && (*entry).flags & CT_FORWARD != 0 {
            if s.p.is_syn() && s.p.seq != (*entry).syn_seq {
                return false;
            }
            if s.p.proto == proto::UDP
                && !is_member((*entry).service_id, &(*entry).daddr, (*entry).dport_be)
            {
                count(TC_RESELECTED);
                return false;
            }
        }
        (*entry).last_seen_ns = bpf_ktime_get_ns();
        if s.p.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
            (*entry).flags |= CT_CLOSING;
        }
        s.to = *entry;
    }
    true
}

/// A packet's addresses, ports and where its headers are.
struct Packet {
    v6: bool,
    /// Offset of the TCP/UDP header.
    l4: usize,
    proto: u8,
    saddr: [u8; 16],
    daddr: [u8; 16],
    sport_be: u16,
    dport_be: u16,
    /// TCP flags (0 for UDP).
    tcp_flags: u8,
    /// TCP sequence number as on the wire (0 for UDP).
    seq: u32,
}

impl Packet {
    /// Reads the headers; `false` for a packet the programs leave alone.
    #[inline(always)]
    fn parse(&mut self, ctx: &TcContext) -> bool {
        self.parse_ip(ctx).is_some() && self.parse_ports(ctx).is_some()
    }

    #[inline(always)]
    fn parse_ip(&mut self, ctx: &TcContext) -> Option<()> {
        match u16::from_be(ctx.load::<u16>(12).ok()?) {
            ETH_P_IP => {
                let version_ihl: u8 = ctx.load(ETH_HLEN).ok()?;
                let ihl = usize::from(version_ihl & 0x0f) * 4;
                let frag = u16::from_be(ctx.load::<u16>(ETH_HLEN + 6).ok()?);
                // A fragment (other than a whole datagram) has no ports to go by.
                if ihl < 20 || frag & 0x3fff != 0 {
                    return None;
                }
                self.v6 = false;
                self.l4 = ETH_HLEN + ihl;
                self.proto = ctx.load(ETH_HLEN + 9).ok()?;
                self.saddr = lb_common::addr::from_v4_be(ctx.load(ETH_HLEN + IP4_SADDR).ok()?);
                self.daddr = lb_common::addr::from_v4_be(ctx.load(ETH_HLEN + IP4_DADDR).ok()?);
            }
            ETH_P_IPV6 => {
                self.v6 = true;
                self.l4 = ETH_HLEN + 40;
                self.proto = ctx.load(ETH_HLEN + 6).ok()?;
                self.saddr = ctx.load(ETH_HLEN + IP6_SADDR).ok()?;
                self.daddr = ctx.load(ETH_HLEN + IP6_DADDR).ok()?;
            }
            _ => return None,
        }
        Some(())
    }

    #[inline(always)]
    fn parse_ports(&mut self, ctx: &TcContext) -> Option<()> {
        if self.proto != proto::TCP && self.proto != proto::UDP {
            return None;
        }
        self.sport_be = ctx.load(self.l4).ok()?;
        self.dport_be = ctx.load(self.l4 + 2).ok()?;
        (self.tcp_flags, self.seq) = if self.proto == proto::TCP {
            (
                ctx.load::<u8>(self.l4 + 13).ok()?,
                ctx.load::<u32>(self.l4 + 4).ok()?,
            )
        } else {
            (0, 0)
        };
        Some(())
    }

    #[inline(always)]
    fn key(&self, dir: u8) -> CtKey {
        CtKey {
            saddr: self.saddr,
            daddr: self.daddr,
            sport_be: self.sport_be,
            dport_be: self.dport_be,
            proto: self.proto,
            dir,
            pad: [0; 2],
        }
    }

    /// A TCP segment that opens a connection (SYN without ACK).
    #[inline(always)]
    fn is_syn(&self) -> bool {
        self.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
    }

    /// Rewrites addresses and ports to `to`'s, fixing the checksums.
    #[inline(never)]
    fn rewrite(&self, ctx: &TcContext, to: &CtValue) -> Result<(), i64> {
        let csum = self.l4 + if self.proto == proto::TCP { 16 } else { 6 };
        // A UDP checksum of zero means "none" over IPv4: leave it so.
        let mangled = if self.proto == proto::UDP {
            u64::from(BPF_F_MARK_MANGLED_0)
        } else {
            0
        };
        let (src_at, dst_at) = if self.v6 {
            (IP6_SADDR, IP6_DADDR)
        } else {
            (IP4_SADDR, IP4_DADDR)
        };
        let how = (self.v6, csum, mangled);
        rewrite_addr(ctx, how, &self.saddr, &to.saddr, src_at)?;
        rewrite_addr(ctx, how, &self.daddr, &to.daddr, dst_at)?;
        if self.sport_be != to.sport_be {
            ctx.l4_csum_replace(
                csum,
                u64::from(self.sport_be),
                u64::from(to.sport_be),
                mangled | 2,
            )?;
            ctx.store(self.l4, &to.sport_be, 0)?;
        }
        if self.dport_be != to.dport_be {
            ctx.l4_csum_replace(
                csum,
                u64::from(self.dport_be),
                u64::from(to.dport_be),
                mangled | 2,
            )?;
            ctx.store(self.l4 + 2, &to.dport_be, 0)?;
        }
        Ok(())
    }
}

/// One address: the TCP/UDP checksum, whose pseudo-header holds it, and
/// for IPv4 the IP header checksum (IPv6 has none).
#[inline(always)]
fn rewrite_addr(
    ctx: &TcContext,
    (v6, csum, mangled): (bool, usize, u64),
    old: &[u8; 16],
    new: &[u8; 16],
    at: usize,
) -> Result<(), i64> {
    if same(old, new) {
        return Ok(());
    }
    let pseudo = u64::from(BPF_F_PSEUDO_HDR) | mangled;
    if v6 {
        let mut from = lb_common::addr::words(old);
        let mut into = lb_common::addr::words(new);
        // SAFETY: two 16-byte stack buffers, sizes as given.
        let diff = unsafe { bpf_csum_diff(from.as_mut_ptr(), 16, into.as_mut_ptr(), 16, 0) };
        if diff < 0 {
            return Err(diff);
        }
        // Size 0 in the flags: `to` is a checksum difference.
        #[expect(clippy::cast_sign_loss, reason = "checked non-negative")]
        ctx.l4_csum_replace(csum, 0, diff as u64, pseudo)?;
        ctx.store(ETH_HLEN + at, new, 0)
    } else {
        let (old, new) = (lb_common::addr::v4_be(old), lb_common::addr::v4_be(new));
        ctx.l3_csum_replace(ETH_HLEN + IP4_CSUM, u64::from(old), u64::from(new), 4)?;
        ctx.l4_csum_replace(csum, u64::from(old), u64::from(new), pseudo | 4)?;
        ctx.store(ETH_HLEN + at, &new, 0)
    }
}

/// Rewrites a packet by `s.to` and sends it on: to the stack when its
/// source is unchanged, else straight out of the device the FIB names
/// (the stack would drop a packet from one of its own addresses as a
/// martian).
#[inline(never)]
fn send(ctx: &TcContext, s: &mut Scratch) -> i32 {
    if s.p.rewrite(ctx, &s.to).is_err() {
        count(TC_DROP_ERROR);
        return SHOT;
    }
    count(TC_TRANSLATED);
    if same(&s.to.saddr, &s.p.saddr) {
        return OK;
    }
    let ret = route(ctx, s, true);
    match ret {
        BPF_FIB_LKUP_RET_SUCCESS => {
            if ctx.store(0, &s.fib.dmac, 0).is_err() || ctx.store(6, &s.fib.smac, 0).is_err() {
                count(TC_DROP_ERROR);
                return SHOT;
            }
            // SAFETY: helper call with an interface index from the FIB.
            #[expect(clippy::cast_possible_truncation, reason = "TC_ACT_* values are small")]
            let r = unsafe { bpf_redirect(s.fib.ifindex, 0) } as i32;
            r
        }
        // The next hop's MAC is not known yet: the kernel resolves it.
        BPF_FIB_LKUP_RET_NO_NEIGH => {
            // SAFETY: helper call; no parameters means "look the next hop up".
            #[expect(clippy::cast_possible_truncation, reason = "TC_ACT_* values are small")]
            let r =
                unsafe { bpf_redirect_neigh(s.fib.ifindex, core::ptr::null_mut(), 0, 0) } as i32;
            r
        }
        _ => {
            count(TC_DROP_NO_ROUTE);
            SHOT
        }
    }
}

/// A FIB lookup, into `s.fib`, for the packet as `s.to` rewrites it (or,
/// without `translated`, for its own source to `s.to`'s destination), as if it
/// arrived on the packet's device.
#[inline(never)]
fn route(ctx: &TcContext, s: &mut Scratch, translated: bool) -> u32 {
    let params = &mut s.fib;
    // SAFETY: a plain C struct; all zero is a valid value.
    *params = unsafe { core::mem::zeroed() };
    params.family = if s.p.v6 { AF_INET6 } else { AF_INET };
    params.l4_protocol = s.p.proto;
    params.sport = if translated {
        s.to.sport_be
    } else {
        s.p.sport_be
    };
    params.dport = s.to.dport_be;
    // SAFETY: the kernel hands every tc program a valid context.
    params.ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let saddr = if translated { &s.to.saddr } else { &s.p.saddr };
    if s.p.v6 {
        params.__bindgen_anon_3.ipv6_src = lb_common::addr::words(saddr);
        params.__bindgen_anon_4.ipv6_dst = lb_common::addr::words(&s.to.daddr);
    } else {
        params.__bindgen_anon_3.ipv4_src = lb_common::addr::v4_be(saddr);
        params.__bindgen_anon_4.ipv4_dst = lb_common::addr::v4_be(&s.to.daddr);
    }
    // SAFETY: helper call with a buffer of the size given.
    #[expect(clippy::cast_possible_truncation, reason = "the struct is 64 bytes")]
    let ret = unsafe {
        fib_lookup(
            ctx.as_ptr(),
            core::ptr::from_mut(params),
            size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "small codes"
    )]
    let ret = ret as u32;
    ret
}

/// What a frontend lookup found for a new flow: the service id.
struct Chosen {
    id: u32,
}

/// The first packet of a flow to a frontend: pick a backend and record the
/// flow in both directions; `Ok` when the packet is to be sent by `s.to`,
/// else the verdict.
#[inline(never)]
fn new_flow(ctx: &TcContext, s: &mut Scratch) -> Result<(), i32> {
    // Only a SYN starts a TCP flow: a segment of a connection this node
    // did not see begin (one kube-proxy's conntrack carries while the
    // agent takes over, say) is left to the stack rather than sent to a
    // backend that never heard of it.
    if s.p.proto == proto::TCP && !s.p.is_syn() {
        return Err(OK);
    }
    let chosen = choose(s)?;
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let p = &s.p;
    s.to.saddr = p.saddr;
    s.to.sport_be = p.sport_be;
    s.to.flags = CT_FORWARD;
    s.to.pad = [0; 3];
    s.to.service_id = chosen.id;
    s.to.syn_seq = p.seq;
    s.to.last_seen_ns = now;
    s.reply = CtValue {
        saddr: p.daddr,
        daddr: p.saddr,
        sport_be: p.dport_be,
        dport_be: p.sport_be,
        flags: 0,
        pad: [0; 3],
        service_id: chosen.id,
        syn_seq: 0,
        last_seen_ns: now,
    };
    let ret = route(ctx, s, false);
    if ret != BPF_FIB_LKUP_RET_SUCCESS
        && ret != BPF_FIB_LKUP_RET_NO_NEIGH
        && ret != BPF_FIB_LKUP_RET_NOT_FWDED
    {
        count(TC_DROP_NO_ROUTE);
        return Err(SHOT);
    }
    // A backend reached through a device the programs run on is on another
    // node: its replies come back here only if they are addressed to this
    // node. One reached any other way (a pod's veth or bridge, or this
    // host's own stack) is on this node, and its replies leave through
    // `lb_tc_egress`.
    let device = if ret == BPF_FIB_LKUP_RET_NOT_FWDED {
        None
    } else {
        DEVICES.get_ptr(&s.fib.ifindex)
    };
    let recorded = match device {
        Some(device) => masquerade(s, device),
        None => reply_on_egress(s),
    };
    if let Err(reason) = recorded {
        count(reason);
        return Err(SHOT);
    }
    if CT.insert(&s.p.key(DIR_INGRESS), &s.to, 0).is_err() {
        count(TC_DROP_ERROR);
        return Err(SHOT);
    }
    count(TC_NEW_FLOW);
    Ok(())
}

/// The frontend `s.p` is addressed to and a backend of it, into `s.to`'s
/// destination; `Err` with the verdict when there is none to translate to.
#[inline(always)]
fn choose(s: &mut Scratch) -> Result<Chosen, i32> {
    let mut key = ServiceKey {
        addr: s.p.daddr,
        port_be: s.p.dport_be,
        proto: s.p.proto,
        scope: SCOPE_EXTERNAL,
    };
    // An entry for clients from other hosts only (this node's endpoints,
    // or source ranges) comes before the one for every client.
    let external = SERVICES.get_ptr(&key).is_some();
    if !external {
        key.scope = SCOPE_ANY;
    }
    let svc = SERVICES.get_ptr(&key).ok_or(OK)?;
    // SAFETY: valid pointer from the lookup (one 4-byte load, as `forward`
    // in `datapath` explains).
    let id = unsafe { core::ptr::read_volatile(&raw const (*svc).id) };
    let state = SERVICE_STATE.get_ptr(id).ok_or(OK)?;
    // SAFETY: `backends` is the first field of the value and 8-byte aligned.
    let packed = unsafe { core::ptr::read_volatile(state.cast::<u64>()) };
    #[expect(clippy::cast_possible_truncation, reason = "unpacking two u32")]
    let (first, n) = (packed as u32, (packed >> 32) as u32);
    // SAFETY: valid pointer into an array value; plain integer fields.
    let (owner, algorithm, kind, flags, timeout_s) = unsafe {
        (
            (*state).key,
            (*state).algorithm,
            (*state).kind,
            (*state).flags,
            (*state).affinity_timeout_s,
        )
    };
    // A mismatch: the lookup raced the removal of this frontend.
    let raced = !same(&owner.addr, &key.addr)
        || owner.port_be != key.port_be
        || owner.proto != key.proto
        || owner.scope != key.scope;
    if raced || kind == KIND_CLUSTER_IP {
        return Err(OK);
    }
    if flags & FLAG_SOURCE_RANGES != 0 && !in_source_ranges(id, &s.p.saddr) {
        count(TC_DROP_SOURCE_RANGE);
        return Err(SHOT);
    }
    if n == 0 {
        return Err(if external {
            count(TC_DROP_NO_LOCAL_ENDPOINT);
            SHOT
        } else if kind == KIND_NODE_PORT {
            // The node's own address: its stack refuses the port.
            count(TC_REFUSED_BY_STACK);
            OK
        } else {
            count(TC_DROP_NO_ENDPOINT);
            SHOT
        });
    }
    let sticky = ClientAffinityKey {
        addr: s.p.saddr,
        service_id: id,
        pad: [0; 4],
    };
    let affinity = flags & FLAG_AFFINITY != 0;
    if affinity && sticky_backend(s, &sticky, timeout_s) {
        count(TC_AFFINITY_HIT);
        return Ok(Chosen { id });
    }
    let slot = if algorithm == ALGORITHM_ROUND_ROBIN {
        round_robin_slot(id, n)
    } else {
        // SAFETY: helper without arguments.
        let r = unsafe { bpf_get_prandom_u32() };
        r % n
    };
    let Some(backend) = BACKENDS.get(first.wrapping_add(slot)) else {
        count(TC_DROP_ERROR);
        return Err(SHOT);
    };
    if affinity {
        let v = AffinityValue {
            addr: backend.addr,
            port_be: backend.port_be,
            pad: [0; 6],
            // SAFETY: helper without arguments.
            last_used_ns: unsafe { bpf_ktime_get_ns() },
        };
        // Best effort: without the entry the next connection picks anew.
        let _ = AFFINITY.insert(&sticky, &v, 0);
    }
    s.to.daddr = backend.addr;
    s.to.dport_be = backend.port_be;
    Ok(Chosen { id })
}

/// The backend this client used last for the service, into `s.to`, if it
/// is still an endpoint and was used within the timeout; refreshes it.
#[inline(never)]
fn sticky_backend(s: &mut Scratch, key: &ClientAffinityKey, timeout_s: u32) -> bool {
    let Some(entry) = AFFINITY.get_ptr_mut(key) else {
        return false;
    };
    // SAFETY: valid pointer from the lookup; plain fields.
    let (addr, port_be, last) = unsafe { ((*entry).addr, (*entry).port_be, (*entry).last_used_ns) };
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if now.wrapping_sub(last) > u64::from(timeout_s) * 1_000_000_000
        || !is_member(key.service_id, &addr, port_be)
    {
        return false;
    }
    // SAFETY: valid pointer from the lookup.
    unsafe { (*entry).last_used_ns = now };
    s.to.daddr = addr;
    s.to.dport_be = port_be;
    true
}

/// A backend on this node: its replies leave through `lb_tc_egress`,
/// which gives them the frontend back as their source.
#[inline(always)]
fn reply_on_egress(s: &mut Scratch) -> Result<(), u32> {
    s.back = CtKey {
        saddr: s.to.daddr,
        daddr: s.p.saddr,
        sport_be: s.to.dport_be,
        dport_be: s.p.sport_be,
        proto: s.p.proto,
        dir: DIR_EGRESS,
        pad: [0; 2],
    };
    CT.insert(&s.back, &s.reply, 0).map_err(|_| TC_DROP_ERROR)
}

/// A backend on another node, through `device`: the flow leaves with the
/// device's address and a source port whose reply entry is unique.
#[inline(always)]
fn masquerade(s: &mut Scratch, device: *const Device) -> Result<(), u32> {
    // SAFETY: valid pointer from a lookup; plain bytes.
    let node = unsafe {
        if s.p.v6 {
            (*device).addr6
        } else {
            (*device).addr4
        }
    };
    if same(&node, &[0; 16]) {
        return Err(TC_DROP_NO_ROUTE);
    }
    s.back = CtKey {
        saddr: s.to.daddr,
        daddr: node,
        sport_be: s.to.dport_be,
        dport_be: s.p.sport_be,
        proto: s.p.proto,
        dir: DIR_INGRESS,
        pad: [0; 2],
    };
    if !reserve_port(s) {
        return Err(TC_DROP_NO_PORT);
    }
    s.to.saddr = node;
    s.to.sport_be = s.back.dport_be;
    s.to.flags |= CT_SNAT;
    Ok(())
}

/// Records the reply entry `s.back` (the backend's reply to this node)
/// under a free port: the client's own (already in `s.back`) if no other
/// flow to this backend holds it, else a random one. Returns whether a
/// port was found; it is then in `s.back.dport_be`.
#[inline(never)]
fn reserve_port(s: &mut Scratch) -> bool {
    for attempt in 0..SNAT_TRIES {
        if attempt > 0 {
            // SAFETY: helper without arguments.
            let r = unsafe { bpf_get_prandom_u32() };
            #[expect(clippy::cast_possible_truncation, reason = "below 65536")]
            let port = (SNAT_PORT_MIN + r % (65_536 - SNAT_PORT_MIN)) as u16;
            s.back.dport_be = port.to_be();
        }
        if CT.insert(&s.back, &s.reply, u64::from(BPF_NOEXIST)).is_ok() {
            return true;
        }
    }
    false
}

/// Whether `addr:port` is still a usable endpoint of service `id` (the
/// agent keeps `lb_affinity_members` for every frontend the tc programs
/// serve).
#[inline(always)]
fn is_member(id: u32, addr: &[u8; 16], port_be: u16) -> bool {
    let key = MemberKey {
        service_id: id,
        port_be,
        pad: [0; 2],
        addr: *addr,
    };
    MEMBERS.get_ptr(&key).is_some()
}

/// Whether `addr` is in the service's `loadBalancerSourceRanges`.
#[inline(always)]
fn in_source_ranges(id: u32, addr: &[u8; 16]) -> bool {
    let key = Key::new(
        SOURCE_RANGE_BITS,
        SourceRange {
            service_id_be: id.to_be_bytes(),
            addr: *addr,
        },
    );
    SOURCE_RANGES.get(&key).is_some()
}

/// Address equality as four word compares (no `memcmp` in BPF).
#[inline(always)]
fn same(a: &[u8; 16], b: &[u8; 16]) -> bool {
    lb_common::addr::words(a) == lb_common::addr::words(b)
}

#[inline(always)]
fn count(index: u32) {
    if let Some(c) = TC_STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, only this CPU writes it while we run.
        unsafe { *c += 1 };
    }
}
