//! The lb agent: turns Kubernetes Services and EndpointSlices (from a file or
//! the API server) into the BPF maps that the socket-level data path reads.
//!
//! - [`model`]: the desired state, independent of source and storage;
//! - [`translate`]: Kubernetes objects -> desired state (pure, kube-proxy's rules);
//! - [`objects`]: parsing files of Kubernetes objects;
//! - `bpf`: loading, probing, pinning and the map-backed dataplane;
//! - `sync`: diffing desired against applied and applying it in a safe order;
//! - [`sockets`]: closing sockets whose backend left the service.

pub mod bpf;
pub mod dataplane;
pub mod list;
pub mod metrics;
pub mod model;
pub mod objects;
pub mod run;
pub mod sockets;
pub mod source;
pub mod sync;
pub mod system;
pub mod translate;
