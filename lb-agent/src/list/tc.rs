//! What `lb-agent list` shows of the tc programs: the devices they are
//! attached to, their counters, and (with `--flows`) the tracked flows.
//! Pins an agent without tc programs never made read as empty.

use std::{
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
};

use aya::maps::{HashMap, MapData, PerCpuArray};
use lb_common::{
    conntrack::{
        ATTACH_NETLINK, ATTACH_TCX, CT_CLOSING, CT_FORWARD, CT_SNAT, CtKey, CtValue, DIR_EGRESS,
        Device,
    },
    map_names,
    stats::TC_STAT_NAMES,
};
use serde::Serialize;

use crate::{
    bpf::{Error, conntrack::monotonic_ns, convert::ip_of, loader::PinLayout, maps::open_pinned},
    model::Protocol,
};

/// A device the tc programs run on.
#[derive(Debug, Serialize)]
pub struct DeviceRow {
    pub name: String,
    pub ifindex: u32,
    /// `tcx` (a pinned link) or `clsact` (a `cls_bpf` filter).
    pub attach: &'static str,
    /// The addresses masqueraded flows leave with.
    pub addresses: Vec<IpAddr>,
}

/// One entry of the connection-tracking map: a packet with `from` and
/// `to` seen on `hook` leaves with `new_from` and `new_to`.
#[derive(Debug, Serialize)]
pub struct FlowRow {
    pub hook: &'static str,
    pub protocol: String,
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub new_from: SocketAddr,
    pub new_to: SocketAddr,
    /// `forward` (client to backend) or `reply`, then `masquerade`,
    /// `closing`.
    pub flags: Vec<&'static str>,
    /// Seconds since the last packet.
    pub idle_s: u64,
}

/// Everything `list` shows of the tc programs.
#[derive(Debug, Default, Serialize)]
pub struct TcListing {
    pub devices: Vec<DeviceRow>,
    pub counters: Vec<(String, u64)>,
    /// Present with `--flows`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flows: Option<Vec<FlowRow>>,
}

/// Reads the tc maps under `layout`; `flows` also reads every flow.
///
/// # Errors
/// When a pinned map exists but cannot be read.
pub(super) fn read(layout: &PinLayout, flows: bool) -> Result<TcListing, Error> {
    let mut out = TcListing::default();
    if layout.map(map_names::DEVICES).exists() {
        let devices: HashMap<MapData, u32, Device> = open_pinned(&layout.map(map_names::DEVICES))?;
        for item in &devices {
            let (ifindex, d) =
                item.map_err(|source| Error::map("read", map_names::DEVICES, source))?;
            out.devices.push(device_row(ifindex, &d));
        }
        out.devices.sort_by(|a, b| a.name.cmp(&b.name));
    }
    if layout.map(map_names::TC_STATS).exists() {
        let stats: PerCpuArray<MapData, u64> = open_pinned(&layout.map(map_names::TC_STATS))?;
        for (i, name) in (0u32..).zip(TC_STAT_NAMES) {
            let values = stats
                .get(&i, 0)
                .map_err(|source| Error::map("read", map_names::TC_STATS, source))?;
            let total = values.iter().copied().fold(0u64, u64::wrapping_add);
            out.counters.push((name.to_owned(), total));
        }
    }
    if flows {
        let mut rows = Vec::new();
        if layout.map(map_names::CONNTRACK).exists() {
            let ct: HashMap<MapData, CtKey, CtValue> =
                open_pinned(&layout.map(map_names::CONNTRACK))?;
            let now = monotonic_ns();
            for item in &ct {
                // An entry evicted while we walk the map is simply gone.
                let Ok((k, v)) = item else { continue };
                rows.push(flow_row(&k, &v, now));
            }
        }
        rows.sort_by_key(|r| (r.from, r.to, r.hook));
        out.flows = Some(rows);
    }
    Ok(out)
}

fn device_row(ifindex: u32, d: &Device) -> DeviceRow {
    let name = nix::net::if_::if_indextoname(ifindex).map_or_else(
        |_| format!("(gone, index {ifindex})"),
        |n| n.to_string_lossy().into_owned(),
    );
    let addresses = [d.addr4, d.addr6]
        .into_iter()
        .filter(|a| *a != [0; 16])
        .map(ip_of)
        .collect();
    DeviceRow {
        name,
        ifindex,
        attach: match d.attach {
            ATTACH_TCX => "tcx",
            ATTACH_NETLINK => "clsact",
            _ => "unknown",
        },
        addresses,
    }
}

fn flow_row(k: &CtKey, v: &CtValue, now_ns: u64) -> FlowRow {
    let at = |addr: [u8; 16], port_be: u16| SocketAddr::new(ip_of(addr), u16::from_be(port_be));
    let mut flags = vec![if v.flags & CT_FORWARD != 0 {
        "forward"
    } else {
        "reply"
    }];
    if v.flags & CT_SNAT != 0 {
        flags.push("masquerade");
    }
    if v.flags & CT_CLOSING != 0 {
        flags.push("closing");
    }
    FlowRow {
        hook: if k.dir == DIR_EGRESS {
            "egress"
        } else {
            "ingress"
        },
        protocol: Protocol::from_number(k.proto)
            .map_or_else(|| k.proto.to_string(), |p| p.to_string()),
        from: at(k.saddr, k.sport_be),
        to: at(k.daddr, k.dport_be),
        new_from: at(v.saddr, v.sport_be),
        new_to: at(v.daddr, v.dport_be),
        flags,
        idle_s: now_ns.saturating_sub(v.last_seen_ns) / 1_000_000_000,
    }
}

/// The table form: devices, counters, flows.
pub(super) fn render(out: &mut String, l: &TcListing) {
    if l.devices.is_empty() {
        let _ = writeln!(out, "tc: not attached (no --devices)");
    } else {
        let devices: Vec<String> = l
            .devices
            .iter()
            .map(|d| {
                let addrs: Vec<String> = d.addresses.iter().map(ToString::to_string).collect();
                format!("{} ({}, {})", d.name, d.attach, addrs.join(" "))
            })
            .collect();
        let _ = writeln!(out, "tc devices: {}", devices.join(", "));
    }
    if !l.counters.is_empty() {
        let counters: Vec<String> = l.counters.iter().map(|(n, v)| format!("{n}={v}")).collect();
        let _ = writeln!(out, "tc counters: {}", counters.join(" "));
    }
    if let Some(flows) = &l.flows {
        let _ = writeln!(out, "\nflows ({}):", flows.len());
        for f in flows {
            let _ = writeln!(
                out,
                "{:<7} {:<4} {} -> {}  becomes  {} -> {}  [{}] idle {}s",
                f.hook,
                f.protocol,
                f.from,
                f.to,
                f.new_from,
                f.new_to,
                f.flags.join(","),
                f.idle_s
            );
        }
    }
}
