//! The tc programs on the node's devices (traffic from other hosts): which
//! devices, their addresses for `lb_devices`, and attaching so that the
//! programs outlive the agent.
//!
//! Attach mode, probed per device: a TCX link (Linux 6.6+) pinned as
//! `links/<program>@<device>` and swapped like the cgroup links; else a
//! `cls_bpf` filter on the device's `clsact` qdisc at a fixed priority and
//! handle, replaced in place on restart (a filter stays attached when its
//! loader exits). `lb-agent cleanup` removes both.

use std::{collections::BTreeSet, fmt, fs, net::IpAddr, str::FromStr};

use aya::{
    Ebpf,
    maps::HashMap,
    programs::{
        LinkOrder, SchedClassifier, TcAttachType,
        links::FdLink,
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle},
    },
};
use lb_common::{
    conntrack::{ATTACH_NETLINK, ATTACH_TCX, Device},
    map_names,
};

use super::{Error, convert::addr16};

type Result<T, E = Error> = std::result::Result<T, E>;

/// The programs, with the direction each is attached in.
pub const PROGRAMS: [(&str, TcAttachType); 2] = [
    ("lb_tc_ingress", TcAttachType::Ingress),
    ("lb_tc_egress", TcAttachType::Egress),
];
/// Priority and handle of the `cls_bpf` filters (where there is no TCX):
/// fixed, so that a restart replaces its own filter in place.
const NL_PRIORITY: u16 = 0x4c42;
const NL_HANDLE: TcHandle = TcHandle::new(0, 1);

/// `--tc-attach`: how the programs are attached to a device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    /// TCX where the kernel has it, else `clsact`.
    #[default]
    Auto,
    /// A TCX link (Linux 6.6+); an error elsewhere.
    Tcx,
    /// A `cls_bpf` filter on the `clsact` qdisc, even where TCX exists
    /// (beside other tools that manage `clsact` filters).
    Clsact,
}

/// `--devices`: where traffic from other hosts arrives.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Devices {
    /// The devices of the default routes (IPv4 and IPv6) at start.
    #[default]
    Auto,
    /// No tc programs: only clients on the node are served.
    None,
    /// These devices.
    List(Vec<String>),
}

impl FromStr for Devices {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "auto" => Ok(Self::Auto),
            "none" | "" => Ok(Self::None),
            list => {
                let names: Vec<String> = list.split(',').map(|n| n.trim().to_owned()).collect();
                if let Some(bad) = names.iter().find(|n| !valid_ifname(n)) {
                    return Err(format!(
                        "{bad:?} is not an interface name: expected auto, none or names separated by commas"
                    ));
                }
                Ok(Self::List(names))
            }
        }
    }
}

impl fmt::Display for Devices {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::None => f.write_str("none"),
            Self::List(names) => f.write_str(&names.join(",")),
        }
    }
}

/// Linux's rules for an interface name (`dev_valid_name`).
fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && !name.contains(['/', ':'])
        && !name.chars().any(char::is_whitespace)
}

impl Devices {
    /// The device names this stands for now.
    ///
    /// # Errors
    /// When a named device does not exist.
    pub fn resolve(&self) -> Result<Vec<String>> {
        let names = match self {
            Self::None => Vec::new(),
            Self::Auto => default_route_devices(),
            Self::List(names) => names.clone(),
        };
        for name in &names {
            if nix::net::if_::if_nametoindex(name.as_str()).is_err() {
                return Err(Error::Device {
                    device: name.clone(),
                    detail: "no such interface in the agent's network namespace".to_owned(),
                });
            }
        }
        Ok(names)
    }
}

/// The devices of the IPv4 and IPv6 default routes (main table).
fn default_route_devices() -> Vec<String> {
    let mut out = BTreeSet::new();
    // Iface Destination Gateway Flags RefCnt Use Metric Mask ...
    if let Ok(text) = fs::read_to_string("/proc/net/route") {
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() > 7 && cols[1] == "00000000" && cols[7] == "00000000" {
                out.insert(cols[0].to_owned());
            }
        }
    }
    // dest prefix src src_prefix next_hop metric refcnt use flags iface
    if let Ok(text) = fs::read_to_string("/proc/net/ipv6_route") {
        for line in text.lines() {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() == 10 && cols[0].bytes().all(|b| b == b'0') && cols[1] == "00" {
                out.insert(cols[9].to_owned());
            }
        }
    }
    out.remove("lo");
    out.into_iter().collect()
}

/// The first IPv4 and the first global IPv6 address of `name`.
fn addresses(name: &str) -> Device {
    let mut device = Device::default();
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return device;
    };
    for a in addrs.filter(|a| a.interface_name == name) {
        let Some(sa) = a.address else { continue };
        if let Some(v4) = sa.as_sockaddr_in() {
            if device.addr4 == [0; 16] {
                device.addr4 = addr16(IpAddr::V4(v4.ip()));
            }
        } else if let Some(v6) = sa.as_sockaddr_in6() {
            let ip = v6.ip();
            if device.addr6 == [0; 16] && !ip.is_unicast_link_local() && !ip.is_loopback() {
                device.addr6 = addr16(IpAddr::V6(ip));
            }
        }
    }
    device
}

/// A tc program attached to a device, as the loader keeps it.
pub struct TcLink {
    /// `<program>@<device>`: the pin name of a TCX link.
    pub name: String,
    /// The link to pin (TCX); `None` for a `cls_bpf` filter.
    pub link: Option<FdLink>,
}

/// Loads the tc programs, records `devices` in `lb_devices` (before any
/// packet can consult it) and attaches to each; removes this agent's
/// filters from every other device.
///
/// # Errors
/// When a program does not load or a device cannot be attached.
pub fn attach(ebpf: &mut Ebpf, devices: &[String], mode: AttachMode) -> Result<Vec<TcLink>> {
    let mut links = Vec::new();
    if devices.is_empty() {
        detach_filters_except(&[]);
        return Ok(links);
    }
    for (program, _) in PROGRAMS {
        program_mut(ebpf, program)?
            .load()
            .map_err(|source| Error::Program { program, source })?;
    }
    let mut recorded = Vec::new();
    for device in devices {
        let mut attached = ATTACH_TCX;
        for (program, direction) in PROGRAMS {
            let prog = program_mut(ebpf, program)?;
            let link =
                attach_one(prog, device, direction, mode).map_err(|detail| Error::Device {
                    device: device.clone(),
                    detail: format!("cannot attach {program}: {detail}"),
                })?;
            if link.is_none() {
                attached = ATTACH_NETLINK;
            }
            links.push(TcLink {
                name: format!("{program}@{device}"),
                link,
            });
        }
        recorded.push((device.clone(), attached));
    }
    write_devices(ebpf, &recorded)?;
    detach_filters_except(devices);
    Ok(links)
}

fn program_mut<'a>(ebpf: &'a mut Ebpf, program: &'static str) -> Result<&'a mut SchedClassifier> {
    ebpf.program_mut(program)
        .ok_or(Error::MissingMap { name: program })?
        .try_into()
        .map_err(|source| Error::Program { program, source })
}

/// TCX where the kernel has it (the link is returned, to be pinned), else
/// a `cls_bpf` filter replaced or created at the fixed priority and handle.
fn attach_one(
    prog: &mut SchedClassifier,
    device: &str,
    direction: TcAttachType,
    mode: AttachMode,
) -> Result<Option<FdLink>, String> {
    if mode != AttachMode::Clsact {
        let tcx = prog.attach_with_options(
            device,
            direction,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        );
        match tcx {
            Ok(id) => {
                let link = prog.take_link(id).map_err(|e| e.to_string())?;
                let link: FdLink = link
                    .try_into()
                    .map_err(|e: aya::programs::links::LinkError| e.to_string())?;
                return Ok(Some(link));
            }
            Err(e) if mode == AttachMode::Tcx => {
                return Err(format!("no TCX link (Linux 6.6+ has them): {e}"));
            }
            Err(_) => {}
        }
    }
    // No TCX (before Linux 6.6): the clsact qdisc, then the filter.
    match tc::qdisc_add_clsact(device) {
        Ok(()) => {}
        Err(tc::TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
        Err(e) => return Err(format!("cannot add the clsact qdisc: {e}")),
    }
    let existing = SchedClassifierLink::attached(device, direction, NL_PRIORITY, NL_HANDLE, None)
        .map_err(|e| e.to_string())?;
    let id = match prog.attach_to_link(existing) {
        Ok(id) => id,
        Err(_) => prog
            .attach_with_options(
                device,
                direction,
                TcAttachOptions::Netlink(NlOptions {
                    priority: NL_PRIORITY,
                    handle: NL_HANDLE,
                    classid: None,
                }),
            )
            .map_err(|e| e.to_string())?,
    };
    // The filter must stay when the agent exits: take it from the program
    // (whose drop would detach it) and let it go without detaching.
    let link = prog.take_link(id).map_err(|e| e.to_string())?;
    std::mem::forget(link);
    Ok(None)
}

/// Replaces the contents of `lb_devices` with these devices.
fn write_devices(ebpf: &mut Ebpf, devices: &[(String, u8)]) -> Result<()> {
    let name = map_names::DEVICES;
    let map = ebpf.map_mut(name).ok_or(Error::MissingMap { name })?;
    let mut map: HashMap<_, u32, Device> =
        HashMap::try_from(map).map_err(|source| Error::map("open", name, source))?;
    let keep: Vec<u32> = devices
        .iter()
        .filter_map(|(d, _)| nix::net::if_::if_nametoindex(d.as_str()).ok())
        .collect();
    let stale: Vec<u32> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !keep.contains(k))
        .collect();
    for (device, mode) in devices {
        let index = nix::net::if_::if_nametoindex(device.as_str()).map_err(|e| Error::Device {
            device: device.clone(),
            detail: e.to_string(),
        })?;
        let mut value = addresses(device);
        value.attach = *mode;
        if value.addr4 == [0; 16] && value.addr6 == [0; 16] {
            tracing::warn!(
                device = %device,
                "device has no address: flows to backends on other nodes through it are dropped"
            );
        }
        map.insert(index, value, 0)
            .map_err(|source| Error::map("update", name, source))?;
    }
    for index in stale {
        let _ = map.remove(&index);
    }
    Ok(())
}

/// Removes this agent's `cls_bpf` filters from every device but `keep`
/// (best effort: a device without them is the common case).
pub fn detach_filters_except(keep: &[String]) {
    let Ok(entries) = fs::read_dir("/sys/class/net") else {
        return;
    };
    for entry in entries.flatten() {
        let device = entry.file_name().to_string_lossy().into_owned();
        if keep.contains(&device) {
            continue;
        }
        for (program, direction) in PROGRAMS {
            match tc::qdisc_detach_program(&device, direction, program) {
                Ok(()) => tracing::info!(device = %device, program, "detached tc filter"),
                Err(e) => tracing::debug!(device = %device, program, "no tc filter removed: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Devices;

    #[test]
    fn devices_parse_as_the_flag_documents() {
        assert_eq!("auto".parse(), Ok(Devices::Auto));
        assert_eq!("none".parse(), Ok(Devices::None));
        assert_eq!(
            "eth0, bond0.100".parse(),
            Ok(Devices::List(vec![
                "eth0".to_owned(),
                "bond0.100".to_owned()
            ]))
        );
        for bad in ["eth0,", "a/b", "x:1", "averyveryverylongname"] {
            let e = bad.parse::<Devices>().expect_err(bad);
            assert!(e.contains("not an interface name"), "{bad}: {e}");
        }
        assert_eq!(
            Devices::List(vec!["a".into(), "b".into()]).to_string(),
            "a,b"
        );
    }

    #[test]
    fn a_missing_device_is_named_in_the_error() {
        let e = Devices::List(vec!["lb-no-such0".to_owned()])
            .resolve()
            .expect_err("no such device");
        assert!(e.to_string().contains("lb-no-such0"), "{e}");
    }
}
