//! The eBPF objects, embedded at build time (see `build.rs`).

use super::Error;

static DATAPATH: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"));
static DATAPATH_LEGACY: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf-legacy"));
static PROBE: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-probe"));

/// The data-path programs and maps. Kernels without fetching atomics
/// (before 5.12) get the object built without them: their verifiers reject
/// the instruction even in code that can never run.
///
/// # Errors
/// [`Error::StubBuild`] when the agent was built without its programs.
pub(super) fn datapath(atomic_fetch: bool) -> Result<&'static [u8], Error> {
    non_stub(if atomic_fetch {
        DATAPATH
    } else {
        DATAPATH_LEGACY
    })
}

/// The feature probes.
///
/// # Errors
/// [`Error::StubBuild`] when the agent was built without its programs.
pub(super) fn probe() -> Result<&'static [u8], Error> {
    non_stub(PROBE)
}

fn non_stub(object: &'static [u8]) -> Result<&'static [u8], Error> {
    if object.is_empty() {
        Err(Error::StubBuild)
    } else {
        Ok(object)
    }
}
