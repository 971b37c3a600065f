//! Expiry of the tc programs' flows (`lb_ct`, see `lb_common::conntrack`).
//!
//! The map is an LRU hash, so a full map never refuses a new flow; the
//! collector keeps it from filling with dead ones. A flow is its two
//! entries (the client's direction and the replies), expired together
//! once both have been idle for the timeout of its state, as the kernel's
//! conntrack does: an established TCP connection after 6 hours (Cilium's
//! default), a closing one (FIN or RST seen) after 10 seconds, UDP after
//! 60 seconds (kube-proxy leaves UDP to the kernel's 30 to 120 seconds).

use std::{collections::HashMap, time::Duration};

use aya::maps::{HashMap as BpfHashMap, MapData};
use lb_common::{
    conntrack::{CT_CLOSING, CT_FORWARD, CT_SNAT, CtKey, CtValue, DIR_EGRESS, DIR_INGRESS},
    map_names, proto,
};

use super::{Error, loader::PinLayout, maps::open_pinned};

/// Idle times after which a flow is removed.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub tcp: Duration,
    pub tcp_closing: Duration,
    pub udp: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            tcp: Duration::from_hours(6),
            tcp_closing: Duration::from_secs(10),
            udp: Duration::from_mins(1),
        }
    }
}

/// How often the collector walks the map.
pub const INTERVAL: Duration = Duration::from_secs(10);

/// The key of the entry that translates the replies of the flow whose
/// client-direction entry is `key` -> `fwd`.
#[must_use]
pub fn reply_key(key: &CtKey, fwd: &CtValue) -> CtKey {
    CtKey {
        saddr: fwd.daddr,
        daddr: fwd.saddr,
        sport_be: fwd.dport_be,
        dport_be: fwd.sport_be,
        proto: key.proto,
        // A masqueraded flow's replies come back to this node (ingress);
        // a local backend's leave through egress.
        dir: if fwd.flags & CT_SNAT != 0 {
            DIR_INGRESS
        } else {
            DIR_EGRESS
        },
        pad: [0; 2],
    }
}

/// The entries to remove at `now_ns` (`CLOCK_MONOTONIC`).
#[must_use]
pub fn expired<S: std::hash::BuildHasher>(
    entries: &HashMap<CtKey, CtValue, S>,
    now_ns: u64,
    t: &Timeouts,
) -> Vec<CtKey> {
    let idle_past =
        |last: u64, limit: Duration| u128::from(now_ns.saturating_sub(last)) > limit.as_nanos();
    let limit = |p: u8, flags: u8| {
        if p != proto::TCP {
            t.udp
        } else if flags & CT_CLOSING != 0 {
            t.tcp_closing
        } else {
            t.tcp
        }
    };
    let mut out = Vec::new();
    let mut paired = std::collections::HashSet::new();
    for (key, value) in entries.iter().filter(|(_, v)| v.flags & CT_FORWARD != 0) {
        let back = reply_key(key, value);
        let reply = entries.get(&back);
        paired.insert(back);
        let last = reply.map_or(value.last_seen_ns, |r| {
            r.last_seen_ns.max(value.last_seen_ns)
        });
        let flags = reply.map_or(value.flags, |r| r.flags | value.flags);
        if idle_past(last, limit(key.proto, flags)) {
            out.push(*key);
            if reply.is_some() {
                out.push(back);
            }
        }
    }
    // Replies whose client-direction entry is gone (evicted, or replaced
    // when a new connection picked another backend).
    for (key, value) in entries
        .iter()
        .filter(|(k, v)| v.flags & CT_FORWARD == 0 && !paired.contains(k))
    {
        if idle_past(value.last_seen_ns, limit(key.proto, value.flags)) {
            out.push(*key);
        }
    }
    out
}

/// Walks the pinned map every [`INTERVAL`] and removes expired flows, on
/// its own thread, for as long as the agent runs.
///
/// # Errors
/// When the pinned map cannot be opened.
pub fn start_collector(layout: &PinLayout, timeouts: Timeouts) -> Result<(), Error> {
    let mut map: BpfHashMap<MapData, CtKey, CtValue> =
        open_pinned(&layout.map(map_names::CONNTRACK))?;
    std::thread::Builder::new()
        .name("lb-ct-gc".to_owned())
        .spawn(move || {
            loop {
                std::thread::sleep(INTERVAL);
                // Entries that vanish (LRU eviction) while we walk are skipped.
                let entries: HashMap<CtKey, CtValue> = map.iter().filter_map(Result::ok).collect();
                let gone = expired(&entries, monotonic_ns(), &timeouts);
                // An entry a packet refreshed or a new flow replaced since
                // the walk read it is not the one found expired: it stays.
                let removed = gone
                    .iter()
                    .filter(|k| {
                        let unchanged = map
                            .get(k, 0)
                            .is_ok_and(|now| now.last_seen_ns == entries[k].last_seen_ns);
                        unchanged && map.remove(k).is_ok()
                    })
                    .count();
                if removed > 0 {
                    tracing::debug!(removed, tracked = entries.len(), "expired flows");
                }
            }
        })
        .map_err(|source| Error::Io {
            path: layout.map(map_names::CONNTRACK),
            source,
        })?;
    Ok(())
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of `bpf_ktime_get_ns()`.
#[must_use]
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn addr(last: u8) -> [u8; 16] {
        let mut a = [0u8; 16];
        a[10] = 0xff;
        a[11] = 0xff;
        a[15] = last;
        a
    }

    /// A flow from client .100 to frontend .1:30080, to backend .11 on
    /// another node (masqueraded) or on this one.
    fn flow(
        proto: u8,
        masquerade: bool,
        fwd_seen: u64,
        reply_seen: u64,
    ) -> HashMap<CtKey, CtValue> {
        let key = CtKey {
            saddr: addr(100),
            daddr: addr(1),
            sport_be: 40_000u16.to_be(),
            dport_be: 30_080u16.to_be(),
            proto,
            dir: DIR_INGRESS,
            pad: [0; 2],
        };
        let fwd = CtValue {
            saddr: if masquerade { addr(1) } else { addr(100) },
            daddr: addr(11),
            sport_be: 40_000u16.to_be(),
            dport_be: 8080u16.to_be(),
            flags: CT_FORWARD | if masquerade { CT_SNAT } else { 0 },
            pad: [0; 3],
            service_id: 7,
            syn_seq: 0,
            last_seen_ns: fwd_seen,
        };
        let reply = CtValue {
            saddr: addr(1),
            daddr: addr(100),
            sport_be: 30_080u16.to_be(),
            dport_be: 40_000u16.to_be(),
            flags: 0,
            last_seen_ns: reply_seen,
            ..fwd
        };
        HashMap::from([(key, fwd), (reply_key(&key, &fwd), reply)])
    }

    #[test]
    fn a_flow_goes_only_when_both_directions_are_idle() {
        let t = Timeouts::default();
        for masquerade in [true, false] {
            // The client went quiet 70 s ago but replies still flow.
            let entries = flow(proto::UDP, masquerade, 0, 65 * S);
            assert!(expired(&entries, 70 * S, &t).is_empty());
            // Both quiet for more than the UDP timeout: both entries go.
            let entries = flow(proto::UDP, masquerade, 0, 5 * S);
            assert_eq!(expired(&entries, 70 * S, &t).len(), 2, "{masquerade}");
        }
    }

    #[test]
    fn tcp_waits_hours_unless_closing() {
        let t = Timeouts::default();
        let mut entries = flow(proto::TCP, true, 0, 0);
        assert!(expired(&entries, 3600 * S, &t).is_empty());
        assert_eq!(expired(&entries, 7 * 3600 * S, &t).len(), 2);
        for v in entries.values_mut() {
            v.flags |= CT_CLOSING;
        }
        assert!(expired(&entries, 5 * S, &t).is_empty());
        assert_eq!(expired(&entries, 11 * S, &t).len(), 2);
    }

    #[test]
    fn an_orphaned_reply_expires_on_its_own() {
        let t = Timeouts::default();
        let mut entries = flow(proto::UDP, true, 0, 0);
        entries.retain(|_, v| v.flags & CT_FORWARD == 0);
        assert_eq!(expired(&entries, 61 * S, &t).len(), 1);
        assert!(expired(&entries, 59 * S, &t).is_empty());
    }
}
