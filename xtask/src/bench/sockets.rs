//! "Backend gone -> sockets closed": connected UDP sockets spread over many
//! client namespaces, all on one backend that then leaves the service;
//! timed from the services-file write until every socket reports the close,
//! and the agent's own pass. The measuring code is the ignored test
//! `lb-agent/tests/socket_close_latency.rs` (it needs the test world).

use std::{fmt::Write as _, fs, path::Path};

use anyhow::{Context as _, Result, bail};

use super::ignored;

/// Runs the cases (`namespaces x sockets per namespace`) and returns a
/// Markdown section (also written to `out/sockets.json`).
pub fn run(cases: &str, agent_bin: &Path, out: &Path) -> Result<String> {
    let (rows, ok) = ignored::run(
        "socket_close_latency",
        "stale_socket_close_latency",
        &[
            ("LB_BENCH_SOCKETS", cases.to_owned()),
            ("LB_AGENT_BIN", agent_bin.display().to_string()),
        ],
    )?;
    if !ok {
        bail!(
            "the socket_close_latency benchmark failed (after {} cases of {cases})",
            rows.len()
        );
    }
    let json_path = out.join("sockets.json");
    fs::write(&json_path, serde_json::to_string_pretty(&rows)?)
        .with_context(|| format!("failed to write {}", json_path.display()))?;

    let mut md = String::from(
        "\n## Closing the sockets of a removed backend\n\n\
         Connected UDP sockets to one Service, spread over client network namespaces (pinned, as a \
         pod's are), all on its only backend; the services file then moves the Service to another \
         pod. From the write until every socket reports `ECONNABORTED`, and the agent's own pass \
         (every namespace on the machine searched; `lb_socket_scan_duration_seconds`).\n\n\
         | namespaces | sockets | closed by the agent | write -> all closed | agent's pass |\n\
         |---:|---:|---:|---:|---:|\n",
    );
    for r in &rows {
        let ms = |k: &str| {
            r[k].as_f64()
                .map_or_else(|| "-".to_owned(), |v| format!("{v:.1} ms"))
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} |",
            r["namespaces"],
            r["sockets"],
            r["destroyed"],
            ms("write_to_all_closed_ms"),
            ms("agent_pass_ms"),
        );
    }
    Ok(md)
}
