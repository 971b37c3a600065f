//! The agent at scale, from each source: the time from its start to ready,
//! its RSS settled, the peak RSS while the whole state is loaded again (a
//! rewritten services file, a relist after the API expired the watches) and
//! the catch-up after a 10 s API outage. The measuring code is the ignored
//! test `test/e2e/tests/agent_scale.rs` (it needs the test API server and
//! pods); this runs it in release and tabulates its output.

use std::{fmt::Write as _, path::Path};

use anyhow::Result;
use serde_json::Value;

use super::ignored;

/// Runs the measurement for `sizes` and returns a Markdown section (also
/// written to `out/scale.json`).
pub fn run(sizes: &[usize], agent_bin: &Path, out: &Path) -> Result<String> {
    let rows = ignored::Ignored {
        target: "agent_scale",
        test: "agent_memory_readiness_and_catch_up",
        json: "scale.json",
    }
    .run_sizes(sizes, &[], agent_bin, out)?;

    let mut md = String::from(
        "\n## The agent at scale: readiness, memory, reloads, catch-up\n\n\
         N Services x 10 endpoints. Ready: from the agent's start until `/readyz` answers. Steady: RSS \
         3 s after ready; of it heap: `RssAnon` (the rest is mostly the BPF maps the agent maps into its \
         memory, which are the kernel's memory and counted as `memlock`). Reload: every Service's endpoints moved (the file rewritten and renamed; the \
         API's watches expired, so the watchers relist), timed until a `connect()` sees the change; \
         the peak is the kernel's `VmHWM` over the reload, reset before it. Catch-up: the API server \
         stopped for 10 s while N/100 slices changed, from its restart until a `connect()` sees the \
         change.\n\n\
         | source | N | ready | steady RSS | of it heap | reload | peak RSS (reload) | peak / steady | RSS after | of it heap | catch-up after 10 s outage |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in &rows {
        let mib = |k: &str| {
            r[k].as_f64()
                .map_or_else(|| "-".to_owned(), |v| format!("{v:.0} MiB"))
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            source_name(r),
            r["services"],
            seconds(r, "ready_s"),
            mib("steady_rss_mib"),
            mib("steady_anon_mib"),
            seconds(r, "reload_s"),
            mib("reload_peak_rss_mib"),
            ratio(r),
            mib("after_rss_mib"),
            mib("after_anon_mib"),
            seconds(r, "catch_up_s"),
        );
    }
    Ok(md)
}

fn source_name(row: &Value) -> &'static str {
    match row["source"].as_str() {
        Some("file") => "services file",
        Some("api") => "Kubernetes API",
        _ => "?",
    }
}

/// A duration in seconds from a row: milliseconds below a second.
fn seconds(row: &Value, key: &str) -> String {
    match row[key].as_f64() {
        Some(s) if s < 1.0 => format!("{:.0} ms", s * 1e3),
        Some(s) => format!("{s:.2} s"),
        None => "-".to_owned(),
    }
}

fn ratio(row: &Value) -> String {
    match (
        row["reload_peak_rss_mib"].as_f64(),
        row["steady_rss_mib"].as_f64(),
    ) {
        (Some(peak), Some(steady)) if steady > 0.0 => format!("{:.2}", peak / steady),
        _ => "-".to_owned(),
    }
}
