//! lb-agent's end-to-end suites live in `tests/`: each `e2e_*.rs` runs the
//! real agent on this machine's kernel (as root, in throwaway network
//! namespaces and a child cgroup, with the test world of `lb-testbed`);
//! `kube_latency.rs` and `socket_close_latency.rs` are benchmarks that
//! `cargo xtask bench` runs. `cargo xtask test` builds the agent first and
//! runs the suites one test at a time, here and in a Linux 6.1 VM.
