//! The translation's tests: typed objects (built with `translate::testing`)
//! in, frontends, backends and problems out.

mod conditions;
mod external;
mod generated;
mod health_check;
mod join;
mod problems;
mod services;
mod topology;

use k8s_openapi::api::core::v1::Service;

use super::{
    NodeContext, Options, Slice, Translation,
    testing::{
        EndpointBuilder, PortFields as _, ServiceBuilder, SliceBuilder, SlicePortBuilder, port,
        service, slice, slice_port,
    },
    translate,
};
use crate::model::ServiceEntry;

fn node(name: Option<&str>, zone: Option<&str>) -> NodeContext {
    NodeContext {
        node_name: name.map(str::to_owned),
        zone: zone.map(str::to_owned),
    }
}

fn run_with(
    services: &[ServiceBuilder],
    slices: &[SliceBuilder],
    node: &NodeContext,
    opts: &Options,
) -> Translation {
    let services: Vec<Service> = services
        .iter()
        .cloned()
        .map(ServiceBuilder::build)
        .collect();
    let slices: Vec<Slice> = slices.iter().cloned().map(SliceBuilder::build).collect();
    translate(&services, &slices, node, opts)
}

fn run(services: &[ServiceBuilder], slices: &[SliceBuilder]) -> Translation {
    run_with(
        services,
        slices,
        &node(Some("node-1"), Some("zone-a")),
        &Options::default(),
    )
}

/// `web`: 10.0.0.1, port `http` 80 to the target port named `http`.
fn web() -> ServiceBuilder {
    service("web")
        .cluster_ip("10.0.0.1")
        .port(port(80).name("http").target_name("http"))
}

/// The slice port `http`, 8080.
fn http() -> SlicePortBuilder {
    slice_port(8080).name("http")
}

/// A slice of `web` with the port `http` and these endpoints.
fn web_slice(name: &str, endpoints: impl IntoIterator<Item = EndpointBuilder>) -> SliceBuilder {
    slice(name, "web").port(http()).endpoints(endpoints)
}

/// A Service `name` at `ip`, with one unnamed port 80.
fn plain(name: &str, ip: &str) -> ServiceBuilder {
    service(name).cluster_ip(ip).port(port(80))
}

/// The backends of 10.0.0.1:80/TCP (the frontend of `web` and its
/// variants) that these objects give on `node`, with the default options.
fn backends_on(
    node: &NodeContext,
    services: &[ServiceBuilder],
    slices: &[SliceBuilder],
) -> Vec<String> {
    backends(
        &run_with(services, slices, node, &Options::default()),
        "10.0.0.1:80/TCP",
    )
}

/// The frontends, as `ip:port/PROTO`.
fn frontends(t: &Translation) -> Vec<String> {
    t.state.keys().map(ToString::to_string).collect()
}

/// The backends of a frontend given as `ip:port/PROTO`.
fn backends(t: &Translation, frontend: &str) -> Vec<String> {
    entry(t, frontend)
        .backends
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[track_caller]
fn entry<'a>(t: &'a Translation, frontend: &str) -> &'a ServiceEntry {
    let Some((_, entry)) = t.state.iter().find(|(f, _)| f.to_string() == frontend) else {
        panic!("no frontend {frontend} in {:?}", frontends(t));
    };
    entry
}

fn problems(t: &Translation) -> Vec<String> {
    t.problems.iter().map(ToString::to_string).collect()
}

#[track_caller]
fn assert_clean(t: &Translation) {
    assert_eq!(problems(t), Vec::<String>::new());
}
