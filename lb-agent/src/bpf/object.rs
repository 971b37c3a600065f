//! The eBPF objects, embedded at build time (see `build.rs`).

use super::Error;

static DATAPATH: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"));
static PROBE: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-probe"));

/// The data-path programs and maps.
pub fn datapath() -> Result<&'static [u8], Error> {
    non_stub(DATAPATH)
}

/// The feature probes.
pub fn probe() -> Result<&'static [u8], Error> {
    non_stub(PROBE)
}

fn non_stub(object: &'static [u8]) -> Result<&'static [u8], Error> {
    if object.is_empty() {
        Err(Error::StubBuild)
    } else {
        Ok(object)
    }
}
