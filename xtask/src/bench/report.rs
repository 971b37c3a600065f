//! The results: Markdown tables, JSON, and an SVG plot of `connect()`
//! latency and programming time against the number of services.

use std::{fmt::Write as _, fs, path::Path};

use anyhow::{Context as _, Result};
use plotters::{coord::Shift, prelude::*};
use serde::Serialize;

use super::{AgentResult, Peer, PeerResult, Settings, SizeResult};

/// Where and how the numbers were taken.
#[derive(Clone, Debug, Serialize)]
pub struct Meta {
    pub command: String,
    pub started: String,
    pub took_s: f64,
    pub load_before: String,
    pub load_after: String,
    pub machine: Machine,
    pub settings: Settings,
    pub agent: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub kernel: String,
    pub memory_gib: f64,
    pub iptables: String,
    pub nft: String,
}

pub fn machine() -> Machine {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    #[expect(clippy::cast_precision_loss, reason = "memory sizes fit an f64")]
    let memory_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0.0, |kib| kib as f64 / 1_048_576.0);
    let version = |tool: &str| {
        std::process::Command::new(tool)
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    Machine {
        cpu,
        cores: std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned(),
        memory_gib,
        iptables: version("iptables-restore"),
        nft: version("nft"),
    }
}

/// `/proc/loadavg`'s three load averages.
pub fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The command that reproduces this run.
pub fn command_line() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    format!("sudo cargo xtask {}", args.join(" "))
}

/// Now, as `2026-11-24T02:57:27Z`.
pub fn utc_now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Writes results.json, results.md and bench.svg; returns the Markdown.
pub fn write(out: &Path, meta: &Meta, sizes: &[SizeResult]) -> Result<String> {
    let json = serde_json::to_string_pretty(&serde_json::json!({ "meta": meta, "sizes": sizes }))?;
    let json_path = out.join("results.json");
    fs::write(&json_path, json)
        .with_context(|| format!("failed to write {}", json_path.display()))?;
    let md = markdown(meta, sizes);
    let md_path = out.join("results.md");
    fs::write(&md_path, &md).with_context(|| format!("failed to write {}", md_path.display()))?;
    let svg = out.join("bench.svg");
    plot(&svg, meta, sizes).with_context(|| format!("failed to draw {}", svg.display()))?;
    Ok(md)
}

fn n(size: usize) -> String {
    let s = size.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn ms(v: f64) -> String {
    if !v.is_finite() {
        "–".to_owned()
    } else if v >= 10_000.0 {
        format!("{:.1} s", v / 1000.0)
    } else if v >= 100.0 {
        format!("{v:.0} ms")
    } else if v >= 1.0 {
        format!("{v:.1} ms")
    } else {
        format!("{:.0} µs", v * 1000.0)
    }
}

fn pct(v: f64, base: f64) -> String {
    if v.is_finite() && base.is_finite() && base > 0.0 {
        format!("{:.0}%", v / base * 100.0)
    } else {
        "–".to_owned()
    }
}

fn opt(v: Option<f64>) -> f64 {
    v.unwrap_or(f64::NAN)
}

fn program_cell(p: &PeerResult, budget: u64) -> String {
    if p.program_timed_out {
        return format!("> {budget} s (stopped)");
    }
    super::stats::median(&p.program_ms).map_or_else(|| "–".to_owned(), ms)
}

/// The tables of `results.md`.
#[expect(
    clippy::too_many_lines,
    reason = "one table after another, clearer in one place"
)]
pub fn markdown(meta: &Meta, sizes: &[SizeResult]) -> String {
    let m = &meta.machine;
    let s = &meta.settings;
    let mut o = String::new();
    let _ = writeln!(o, "# lb-agent benchmark\n");
    let _ = writeln!(
        o,
        "- machine: {}, {} cores, {:.0} GiB, Linux {}; {}; {}",
        m.cpu, m.cores, m.memory_gib, m.kernel, m.iptables, m.nft
    );
    let _ = writeln!(
        o,
        "- run: {} (took {:.0} s); load average before {}, after {}",
        meta.started, meta.took_s, meta.load_before, meta.load_after
    );
    let _ = writeln!(o, "- command: `{}`", meta.command);
    let _ = writeln!(
        o,
        "- per size and peer: {} rounds of alternating batches; {} timed connects per batch; {} ms per rate batch; \
         up to {} endpoint changes ({} s per peer at most); {} endpoints per service ({} for the agent's wide run); \
         N services plus the churn service",
        s.rounds,
        s.latency_per_batch,
        s.rate_batch_ms,
        s.changes,
        s.change_seconds,
        s.endpoints,
        s.program_endpoints
    );

    let _ = writeln!(o, "\n## Data path\n");
    let _ = writeln!(
        o,
        "`connect()` to the measured service (last in `KUBE-SERVICES`), in µs; rates are medians over batches; \
         percentages are of direct in the same run.\n"
    );
    let _ = writeln!(
        o,
        "| N | peer | connect p50 | p99 | p50 / direct | p99 / direct | new conn/s, 1 thread | 2 threads | \
         % of direct (1 / 2) | req/s kept-alive | % of direct |"
    );
    let _ = writeln!(o, "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for size in sizes {
        let direct = size.peer(Peer::Direct);
        let d_lat = direct.and_then(|d| d.latency_us);
        for p in &size.peers {
            let Some(lat) = p.latency_us else {
                let _ = writeln!(
                    o,
                    "| {} | {} | {} | | | | | | | | |",
                    n(size.size),
                    p.peer,
                    p.notes.join("; ")
                );
                continue;
            };
            let (c1, c2, rps) = (opt(p.conn_rate_1), opt(p.conn_rate_2), opt(p.rps));
            let d = |f: fn(&PeerResult) -> Option<f64>| direct.and_then(f).unwrap_or(f64::NAN);
            let _ = writeln!(
                o,
                "| {} | {} | {:.1} | {:.1} | {} | {} | {:.0} | {:.0} | {} / {} | {:.0} | {} |",
                n(size.size),
                p.peer,
                lat.p50,
                lat.p99,
                pct(lat.p50, d_lat.map_or(f64::NAN, |l| l.p50)),
                pct(lat.p99, d_lat.map_or(f64::NAN, |l| l.p99)),
                c1,
                c2,
                pct(c1, d(|r| r.conn_rate_1)),
                pct(c2, d(|r| r.conn_rate_2)),
                rps,
                pct(rps, d(|r| r.rps)),
            );
        }
    }

    let _ = writeln!(o, "\n## Programming and endpoint changes\n");
    let _ = writeln!(
        o,
        "Program: all N services from nothing (median). Change: endpoint moved -> first connection reaching it \
         (iptables/nftables: the partial reload kube-proxy would run; lb-agent: file rename, then its \
         read, parse, translate, sync). Reload: the `iptables-restore`/`nft -f` run alone, or the agent's sync.\n"
    );
    let _ = writeln!(
        o,
        "| N | peer | program N | change p50 | change p99 | change max | reload p50 | samples | notes |"
    );
    let _ = writeln!(o, "|---:|---|---:|---:|---:|---:|---:|---:|---|");
    for size in sizes {
        for p in size.peers.iter().filter(|p| p.peer != Peer::Direct.name()) {
            let c = p.change_ms;
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                n(size.size),
                p.peer,
                program_cell(p, s.budget_s),
                c.map_or_else(|| "–".to_owned(), |c| ms(c.p50)),
                c.map_or_else(|| "–".to_owned(), |c| ms(c.p99)),
                c.map_or_else(|| "–".to_owned(), |c| ms(c.max)),
                p.change_reload_ms
                    .map_or_else(|| "–".to_owned(), |c| ms(c.p50)),
                c.map_or(0, |c| c.n),
                p.notes.join("; ")
            );
        }
    }

    let _ = writeln!(o, "\n## lb-agent: where the programming time goes\n");
    let _ = writeln!(
        o,
        "From the agent's log: load = rename -> `loaded services file` (inotify, read, parse, \
         translate), of which parse and translate as the agent logs them at debug level; hand-over = to the sync \
         loop; sync = `duration_us` of `synced` (diff and map writes); end-to-end = rename -> `synced` seen. \
         Medians.\n"
    );
    let _ = writeln!(
        o,
        "| N | endpoints | file | end-to-end | load | parse | translate | hand-over | sync | RSS | maps (memlock) | \
         capacity (services / backends) | CPU while idle |"
    );
    let _ = writeln!(
        o,
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for size in sizes {
        if let Some(a) = &size.agent {
            for (eps, runs, mib, mem, idle) in [
                (
                    s.endpoints,
                    &a.program,
                    a.services_file_mib,
                    &a.memory,
                    format!("{:.1}%", a.idle_cpu_percent),
                ),
                (
                    s.program_endpoints,
                    &a.program_wide,
                    a.services_file_wide_mib,
                    &a.memory_wide,
                    String::new(),
                ),
            ] {
                if runs.is_empty() {
                    continue;
                }
                let med = |f: fn(&super::Programmed) -> f64| {
                    super::stats::median_by(runs, f).unwrap_or(f64::NAN)
                };
                #[expect(clippy::cast_precision_loss, reason = "memory sizes fit an f64")]
                let (rss, maps) = (
                    mem.rss_kib as f64 / 1024.0,
                    mem.maps_memlock_kib as f64 / 1024.0,
                );
                let _ = writeln!(
                    o,
                    "| {} | {eps} | {mib:.1} MiB | {} | {} | {} | {} | {} | {} | {rss:.0} MiB | {maps:.0} MiB ({} maps) | \
                     {} / {} | {idle} |",
                    n(size.size),
                    ms(med(|p| p.end_to_end_ms)),
                    ms(med(|p| p.load_ms)),
                    ms(med(|p| p.parse_ms.unwrap_or(f64::NAN))),
                    ms(med(|p| p.translate_ms.unwrap_or(f64::NAN))),
                    ms(med(|p| p.handoff_ms)),
                    ms(med(|p| p.sync_ms)),
                    mem.maps,
                    n(a.capacity.0 as usize),
                    n(a.capacity.1 as usize),
                );
            }
        }
    }

    targets(&mut o, s, sizes);
    o
}

fn targets(o: &mut String, s: &Settings, sizes: &[SizeResult]) {
    let _ = writeln!(o, "\n## Targets (measured, not asserted)\n");
    let _ = writeln!(o, "| target | N | measured | met |");
    let _ = writeln!(o, "|---|---:|---|---|");
    let yes = |ok: bool| if ok { "yes" } else { "**no**" };
    for size in sizes {
        let (Some(d), Some(a)) = (size.peer(Peer::Direct), size.peer(Peer::LbAgent)) else {
            continue;
        };
        if let (Some(dl), Some(al)) = (d.latency_us, a.latency_us) {
            let (r50, r99) = (al.p50 / dl.p50, al.p99 / dl.p99);
            let _ = writeln!(
                o,
                "| `connect()` within 5% of direct | {} | p50 {:+.1}%, p99 {:+.1}% | {} |",
                n(size.size),
                (r50 - 1.0) * 100.0,
                (r99 - 1.0) * 100.0,
                yes(r50 <= 1.05)
            );
        }
        for (label, dv, av) in [
            (
                "new conn/s >= 95% of direct, 1 thread",
                d.conn_rate_1,
                a.conn_rate_1,
            ),
            (
                "new conn/s >= 95% of direct, 2 threads",
                d.conn_rate_2,
                a.conn_rate_2,
            ),
        ] {
            if let (Some(dv), Some(av)) = (dv, av) {
                let _ = writeln!(
                    o,
                    "| {label} | {} | {:.1}% | {} |",
                    n(size.size),
                    av / dv * 100.0,
                    yes(av / dv >= 0.95)
                );
            }
        }
        if let Some(c) = a.change_ms {
            let _ = writeln!(
                o,
                "| endpoint change in the data path within 5 ms at p99 (file source) | {} | p99 {} | {} |",
                n(size.size),
                ms(c.p99),
                yes(c.p99 <= 5.0)
            );
        }
        if let Some(agent) = &size.agent {
            let limit = match size.size {
                10_000 => Some(100.0),
                100_000 => Some(1000.0),
                _ => None,
            };
            if let Some(limit) = limit {
                let e2e = super::stats::median_by(&agent.program_wide, |p| p.end_to_end_ms);
                let sync = super::stats::median_by(&agent.program_wide, |p| p.sync_ms);
                if let (Some(e2e), Some(sync)) = (e2e, sync) {
                    let _ = writeln!(
                        o,
                        "| program {} services x {} endpoints in under {} | {} | file -> synced {}; sync alone {} | {} |",
                        n(size.size),
                        s.program_endpoints,
                        ms(limit),
                        n(size.size),
                        ms(e2e),
                        ms(sync),
                        yes(e2e <= limit)
                    );
                }
            }
        }
    }
}

fn colour(peer: &str) -> RGBColor {
    match peer {
        "direct" => RGBColor(60, 60, 60),
        "lb-agent" => RGBColor(31, 119, 180),
        "iptables" => RGBColor(214, 39, 40),
        "iptables-legacy" => RGBColor(255, 127, 14),
        "nftables" => RGBColor(44, 160, 44),
        _ => RGBColor(148, 103, 189),
    }
}

type Series = Vec<(String, Vec<(f64, f64)>)>;

#[expect(clippy::cast_precision_loss, reason = "service counts fit an f64")]
#[expect(
    clippy::too_many_lines,
    reason = "two panels drawn one after the other"
)]
fn plot(path: &Path, meta: &Meta, sizes: &[SizeResult]) -> Result<()> {
    let peers: Vec<String> = sizes
        .first()
        .map(|s| s.peers.iter().map(|p| p.peer.clone()).collect())
        .unwrap_or_default();
    let mut p50: Series = Vec::new();
    let mut p99: Series = Vec::new();
    let mut program: Series = Vec::new();
    for peer in &peers {
        let pick = |f: &dyn Fn(&PeerResult) -> Option<f64>| -> Vec<(f64, f64)> {
            sizes
                .iter()
                .filter_map(|s| {
                    let p = s.peers.iter().find(|p| &p.peer == peer)?;
                    Some((s.size as f64, f(p)?))
                })
                .collect()
        };
        p50.push((peer.clone(), pick(&|p| p.latency_us.map(|l| l.p50))));
        p99.push((peer.clone(), pick(&|p| p.latency_us.map(|l| l.p99))));
        if peer != "direct" {
            program.push((peer.clone(), pick(&|p| super::stats::median(&p.program_ms))));
        }
    }
    let wide: Vec<(f64, f64)> = sizes
        .iter()
        .filter_map(|s| {
            let a: &AgentResult = s.agent.as_ref()?;
            let e2e = super::stats::median_by(&a.program_wide, |p| p.end_to_end_ms)?;
            Some((s.size as f64, e2e))
        })
        .collect();
    if !wide.is_empty() {
        program.push((
            format!("lb-agent, {} endpoints", meta.settings.program_endpoints),
            wide,
        ));
    }
    let stopped: Vec<(String, f64)> = sizes
        .iter()
        .flat_map(|s| {
            s.peers
                .iter()
                .filter(|p| p.program_timed_out)
                .map(move |p| (p.peer.clone(), s.size as f64))
        })
        .collect();

    let root = SVGBackend::new(path, (1200, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(600);
    let max_n = sizes.iter().map(|s| s.size).max().unwrap_or(1).max(10) as f64 * 1.5;
    let all = |series: &Series| {
        series
            .iter()
            .flat_map(|(_, v)| v.iter().map(|&(_, y)| y))
            .collect::<Vec<_>>()
    };
    let lat = [all(&p50), all(&p99)].concat();
    let mut chart = panel(
        &left,
        "connect() latency (p50 solid, p99 dashed)",
        "µs",
        max_n,
        &lat,
    )?;
    for ((name, points), (_, tail)) in p50.iter().zip(&p99) {
        let c = colour(name);
        line(&mut chart, name, points, c)?;
        chart.draw_series(DashedLineSeries::new(tail.clone(), 6, 4, c.stroke_width(1)))?;
    }
    legend(&mut chart)?;

    let budget_ms = meta.settings.budget_s as f64 * 1000.0;
    let mut prog_values = all(&program);
    if !stopped.is_empty() {
        prog_values.push(budget_ms);
    }
    let mut chart = panel(
        &right,
        "time to program N services from nothing",
        "ms",
        max_n,
        &prog_values,
    )?;
    for (name, points) in &program {
        let c = if name.starts_with("lb-agent,") {
            RGBColor(23, 190, 207)
        } else {
            colour(name)
        };
        line(&mut chart, name, points, c)?;
    }
    for (name, size) in &stopped {
        let c = colour(name);
        chart.draw_series(std::iter::once(TriangleMarker::new(
            (*size, budget_ms),
            6,
            c.filled(),
        )))?;
        chart.draw_series(std::iter::once(Text::new(
            format!("{name}: stopped at {} s", meta.settings.budget_s),
            (*size * 0.12, budget_ms * 0.8),
            ("sans-serif", 12).into_font().color(&c),
        )))?;
    }
    legend(&mut chart)?;
    root.present()?;
    Ok(())
}

/// A panel of [`plot`]: log axes, services across, a measurement up.
type Panel<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<LogCoord<f64>, LogCoord<f64>>>;

/// A [`Panel`] on `area`, services up to `max_n` across, `values` (in
/// `unit`) up.
fn panel<'a, 'b>(
    area: &'a DrawingArea<SVGBackend<'b>, Shift>,
    caption: &str,
    unit: &str,
    max_n: f64,
    values: &[f64],
) -> Result<Panel<'a, 'b>> {
    let (lo, hi) = bounds(values);
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((0.7f64..max_n).log_scale(), (lo..hi).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("services (N)")
        .y_desc(unit)
        .x_label_formatter(&|v| n(axis_label(*v)))
        .draw()?;
    Ok(chart)
}

/// `points` as a line with dots, named in the legend.
fn line(chart: &mut Panel<'_, '_>, name: &str, points: &[(f64, f64)], c: RGBColor) -> Result<()> {
    chart
        .draw_series(LineSeries::new(points.to_vec(), c.stroke_width(2)))?
        .label(name)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, c.filled())))?;
    Ok(())
}

fn legend<'a, 'b: 'a>(chart: &mut Panel<'a, 'b>) -> Result<()> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

/// A service count on the log axis, as a whole number.
fn axis_label(v: f64) -> usize {
    format!("{:.0}", v.max(0.0)).parse().unwrap_or(0)
}

/// Log-axis bounds around `values` (a decade of margin, rounded to powers of 10).
fn bounds(values: &[f64]) -> (f64, f64) {
    let finite: Vec<f64> = values
        .iter()
        .copied()
        .filter(|v| v.is_finite() && *v > 0.0)
        .collect();
    let lo = finite.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = finite.iter().copied().fold(0.0, f64::max);
    if finite.is_empty() {
        return (1.0, 10.0);
    }
    (
        10f64.powf(lo.log10().floor()),
        10f64.powf(hi.log10().ceil()).max(lo * 10.0),
    )
}
