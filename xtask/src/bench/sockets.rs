//! "Backend gone -> sockets closed": connected UDP sockets spread over many
//! client namespaces, all on one backend that then leaves the service;
//! timed from the services-file write until every socket reports the close,
//! and the agent's own pass. The measuring code is the ignored test
//! `test/e2e/tests/socket_close_latency.rs` (it needs the test world).

use std::{fmt::Write as _, path::Path};

use anyhow::{Context as _, Result};

use super::ignored;

/// Runs the cases (`namespaces x sockets per namespace`) and returns a
/// Markdown section (also written to `out/sockets.json`).
pub fn run(cases: &str, agent_bin: &Path, out: &Path) -> Result<String> {
    let rows = ignored::run(
        "socket_close_latency",
        "stale_socket_close_latency",
        &[
            ("LB_BENCH_SOCKETS", cases.to_owned()),
            ("LB_AGENT_BIN", agent_bin.display().to_string()),
        ],
        out,
        "sockets.json",
    )
    .with_context(|| format!("socket close latency for cases {cases}"))?;

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
        let ms = |k: &str| ignored::ms(r, k, 1);
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
