//! "API event -> data path": the agent watching the project's list/watch
//! API server (kube-rs's real client), one Service's endpoint moved back
//! and forth, timed from the write to the API server until a `connect()`
//! reaches the new pod. The measuring code is the ignored test
//! `test/e2e/tests/kube_latency.rs` (it needs the test API server, which
//! lives with the tests); this runs it in release and tabulates its output.

use std::{fmt::Write as _, path::Path};

use anyhow::Result;

use super::ignored;

/// Runs the measurement for `sizes` and returns a Markdown section (also
/// written to `out/api.json`).
pub fn run(sizes: &[usize], changes: usize, agent_bin: &Path, out: &Path) -> Result<String> {
    let rows = ignored::Ignored {
        target: "kube_latency",
        test: "api_event_to_data_path_latency",
        json: "api.json",
    }
    .run_sizes(
        sizes,
        &[("LB_BENCH_CHANGES", changes.to_string())],
        agent_bin,
        out,
    )?;

    let mut md = String::from(
        "\n## Endpoint change through the Kubernetes API\n\n\
         One Service's EndpointSlice moved between two pods, with N Services programmed: from the write \
         to the API server (the project's list/watch server, kube-rs's real watcher) until a `connect()` \
         reaches the new pod. The agent's own view, watch event to maps, is the mean of its \
         `lb_update_latency_seconds`.\n\n\
         | N | changes | write -> data path p50 | p99 | max | agent: event -> maps (mean) |\n\
         |---:|---:|---:|---:|---:|---:|\n",
    );
    for r in &rows {
        let ms = |k: &str| ignored::ms(r, k, 2);
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} |",
            r["services"],
            r["changes"],
            ms("p50_ms"),
            ms("p99_ms"),
            ms("max_ms"),
            ms("agent_event_to_maps_mean_ms"),
        );
    }
    Ok(md)
}
