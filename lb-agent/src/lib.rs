//! The lb agent: turns Kubernetes Services and EndpointSlices (from a file or
//! the API server) into the BPF maps that the socket-level data path reads.
//!
//! - [`model`]: the desired state, independent of source and storage;
//! - [`translate`]: Kubernetes objects -> desired state (pure, kube-proxy's rules);
//! - `bpf`: loading, probing, pinning and the map-backed dataplane;
//! - [`source`]: the file of objects (and its parser) or the Kubernetes API;
//! - `sync`: diffing desired against applied and applying it in a safe order;
//! - [`sockets`]: closing sockets whose backend left the service;
//! - [`node_addresses`]: the addresses node ports answer on;
//! - `health`: kube-proxy's health endpoints (`/healthz`, `healthCheckNodePort`s);
//! - `memory`: how the agent uses glibc's allocator.

#![warn(unreachable_pub)]

pub mod bpf;
pub mod dataplane;
mod health;
mod http;
pub mod list;
mod memory;
mod metrics;
pub mod model;
pub mod node_addresses;
pub mod run;
pub mod sockets;
pub mod source;
pub mod sync;
pub mod system;
pub mod translate;
