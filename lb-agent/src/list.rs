//! `lb-agent list`: what the data path holds, read from the pinned maps
//! (not from a running agent), as `iptables -t nat -S | grep KUBE` is for
//! kube-proxy.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    path::Path,
    time::{Duration, UNIX_EPOCH},
};

use lb_common::{
    meta::Meta,
    service::FLAG_AFFINITY,
    stats::{STAT_COUNT, STAT_NAMES},
};
use serde::Serialize;

mod tc;

use crate::{
    bpf::{
        Error,
        convert::{frontend_of, socket_addr},
        features::describe_bits,
        loader::PinLayout,
        maps::{Maps, PinDir},
    },
    model::{Algorithm, FrontendKind, FrontendScope},
};

/// One frontend as `list` shows it.
#[derive(Debug, Serialize)]
pub struct Row {
    /// `ClusterIP`, `NodePort`, `ExternalIP` or `LoadBalancer`.
    pub kind: String,
    /// `any`, or `external-local`: the entry clients from other hosts get
    /// under `externalTrafficPolicy: Local` (this node's endpoints).
    pub scope: &'static str,
    /// The address and port it answers on.
    pub frontend: String,
    pub protocol: String,
    pub service: String,
    pub algorithm: String,
    /// `active`, `no-endpoints` (connections refused), or `corrupt`.
    pub state: &'static str,
    pub affinity_timeout_s: Option<u32>,
    pub backends: Vec<SocketAddr>,
    pub translated: u64,
    pub refused: u64,
}

/// Everything `list` prints.
#[derive(Debug, Serialize)]
pub struct Listing {
    pub bpffs: String,
    pub generation: u64,
    pub last_sync_unix_ms: u64,
    pub features: String,
    pub counters: Vec<(String, u64)>,
    pub services: Vec<Row>,
    /// The tc programs: devices, counters, flows.
    pub tc: tc::TcListing,
}

/// Reads the pinned maps under `bpffs`; with `flows`, every tracked flow
/// of the tc programs too.
///
/// # Errors
/// When nothing is pinned there or the pins cannot be read.
pub fn read(bpffs: &Path, flows: bool) -> Result<Listing, Error> {
    let layout = PinLayout::new(bpffs);
    let maps = Maps::open(&mut PinDir(layout.maps_dir()))?;
    let meta: Meta = maps.read_meta()?;
    let stats = maps.read_stats()?;
    let mut services: Vec<Row> = maps
        .read_services()?
        .into_iter()
        .map(|r| {
            let frontend = frontend_of(&r.key);
            Row {
                kind: r
                    .state
                    .map_or_else(String::new, |s| match FrontendKind::from_raw(s.kind) {
                        Some(kind) => kind.to_string(),
                        None => format!("unknown({})", s.kind),
                    }),
                scope: match frontend.map(|f| f.scope) {
                    Some(FrontendScope::External) => "external",
                    _ => "any",
                },
                frontend: frontend.map_or_else(
                    || format!("{:?}", r.key.addr),
                    |f| SocketAddr::new(f.ip, f.port).to_string(),
                ),
                protocol: frontend
                    .map_or_else(|| r.key.proto.to_string(), |f| f.protocol.to_string()),
                service: r.name.unwrap_or_default(),
                algorithm: r
                    .state
                    .and_then(|s| Algorithm::from_raw(s.algorithm))
                    .map_or_else(
                        || format!("unknown({:?})", r.state.map(|s| s.algorithm)),
                        |a| a.to_string(),
                    ),
                state: match &r.backends {
                    None => "corrupt",
                    Some(b) if b.is_empty() => "no-endpoints",
                    Some(_) => "active",
                },
                affinity_timeout_s: r
                    .state
                    .filter(|s| s.flags & FLAG_AFFINITY != 0)
                    .map(|s| s.affinity_timeout_s),
                backends: r
                    .backends
                    .unwrap_or_default()
                    .iter()
                    .map(socket_addr)
                    .collect(),
                translated: r.stats.translated,
                refused: r.stats.refused,
            }
        })
        .collect();
    services.sort_by(|a, b| {
        (&a.service, &a.kind, &a.frontend, &a.protocol).cmp(&(
            &b.service,
            &b.kind,
            &b.frontend,
            &b.protocol,
        ))
    });
    Ok(Listing {
        bpffs: bpffs.display().to_string(),
        generation: meta.generation,
        last_sync_unix_ms: meta.last_sync_unix_ms,
        features: describe_bits(meta.features, meta.unsupported),
        counters: (0..STAT_COUNT as usize)
            .map(|i| (STAT_NAMES[i].to_owned(), stats[i]))
            .collect(),
        services,
        tc: tc::read(&layout, flows)?,
    })
}

/// The table form.
#[must_use]
pub fn render_table(l: &Listing) -> String {
    let mut out = String::new();
    let synced = if l.last_sync_unix_ms == 0 {
        "never".to_owned()
    } else {
        let t = UNIX_EPOCH + Duration::from_millis(l.last_sync_unix_ms);
        humantime_utc(t)
    };
    let _ = writeln!(
        out,
        "data path pinned at {} (sync #{}, last {synced})",
        l.bpffs, l.generation
    );
    let _ = writeln!(out, "kernel features: {}", l.features);
    let counters: Vec<String> = l.counters.iter().map(|(n, v)| format!("{n}={v}")).collect();
    let _ = writeln!(out, "counters: {}", counters.join(" "));
    tc::render(&mut out, &l.tc);
    let _ = writeln!(out);
    let headers = [
        "KIND",
        "FRONTEND",
        "PROTO",
        "SERVICE",
        "ALGORITHM",
        "STATE",
        "CONNECTS",
        "REFUSED",
        "BACKENDS",
    ];
    let rows: Vec<[String; 9]> = l
        .services
        .iter()
        .map(|r| {
            let algorithm = match r.affinity_timeout_s {
                Some(t) => format!("{} +affinity {t}s", r.algorithm),
                None => r.algorithm.clone(),
            };
            let backends = if r.backends.is_empty() {
                "-".to_owned()
            } else {
                r.backends
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            };
            let kind = if r.scope == "any" {
                r.kind.clone()
            } else {
                format!("{}/{}", r.kind, r.scope)
            };
            [
                kind,
                r.frontend.clone(),
                r.protocol.clone(),
                r.service.clone(),
                algorithm,
                r.state.to_owned(),
                r.translated.to_string(),
                r.refused.to_string(),
                backends,
            ]
        })
        .collect();
    let mut widths = headers.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: &[&str]| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                let _ = write!(s, "{cell:<w$}  ");
            }
        }
        s.trim_end().to_owned()
    };
    let _ = writeln!(out, "{}", line(&headers));
    for row in &rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        let _ = writeln!(out, "{}", line(&cells));
    }
    if rows.is_empty() {
        let _ = writeln!(out, "(no services programmed)");
    }
    out
}

/// `YYYY-MM-DDTHH:MM:SSZ`.
fn humantime_utc(t: std::time::SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let ts = jiff::Timestamp::from_second(i64::try_from(secs).unwrap_or(0)).unwrap_or_default();
    ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}
