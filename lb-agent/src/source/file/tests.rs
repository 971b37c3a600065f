//! The file source's own tests: which events count as changes, and the
//! example services file.

use std::sync::Arc;

use notify::{
    EventKind,
    event::{
        AccessKind, AccessMode, CreateKind, DataChange, MetadataKind, ModifyKind, RemoveKind,
        RenameMode,
    },
};

use super::{FileSource, changes_content};
use crate::{
    model::{
        Algorithm, DesiredState, Frontend, FrontendKind, Protocol, ServiceEntry, ServicePortName,
    },
    translate::Options,
};

#[test]
fn example_file_is_one_frontend_with_three_backends() {
    let source = FileSource {
        path: "examples/services.yaml".into(),
        node_name: None,
        options: Options::default(),
    };
    let loaded = source
        .load_bytes(include_bytes!("../../../../examples/services.yaml"))
        .unwrap_or_else(|error| panic!("{error}"));
    let expected = ServiceEntry {
        name: ServicePortName {
            namespace: "default".to_owned(),
            name: "demo".to_owned(),
            port: "http".to_owned(),
        },
        kind: FrontendKind::ClusterIP,
        algorithm: Algorithm::RoundRobin,
        affinity_timeout_s: None,
        backends: ["10.200.0.11:8080", "10.200.0.12:8080", "10.200.0.13:8080"]
            .iter()
            .map(|s| s.parse().expect("addr"))
            .collect(),
        source_ranges: Vec::new(),
    };
    let frontend = Frontend::new("10.96.0.100".parse().expect("ip"), 80, Protocol::Tcp);
    assert_eq!(
        loaded.state,
        DesiredState::from([(frontend, Arc::new(expected))])
    );
    assert!(loaded.node_ips.is_empty(), "the example has no Node");
}

#[test]
fn reads_do_not_count_as_changes() {
    assert!(!changes_content(EventKind::Access(AccessKind::Open(
        AccessMode::Read
    ))));
    assert!(!changes_content(EventKind::Access(AccessKind::Close(
        AccessMode::Read
    ))));
    assert!(!changes_content(EventKind::Access(AccessKind::Read)));
    assert!(!changes_content(EventKind::Modify(ModifyKind::Metadata(
        MetadataKind::AccessTime
    ))));
}

#[test]
fn writes_renames_and_removals_do() {
    assert!(changes_content(EventKind::Access(AccessKind::Close(
        AccessMode::Write
    ))));
    assert!(changes_content(EventKind::Modify(ModifyKind::Data(
        DataChange::Any
    ))));
    assert!(changes_content(EventKind::Modify(ModifyKind::Name(
        RenameMode::To
    ))));
    assert!(changes_content(EventKind::Create(CreateKind::File)));
    assert!(changes_content(EventKind::Remove(RemoveKind::File)));
}

const NODES: &str = "apiVersion: v1
kind: NodeList
items:
- metadata: {name: node-1, labels: {topology.kubernetes.io/zone: zone-a}}
  status: {addresses: [{type: InternalIP, address: 10.0.0.5}, {type: InternalIP, address: 'fd00::5'}]}
- metadata: {name: node-2}
  status: {addresses: [{type: ExternalIP, address: 192.0.2.2}]}
";

#[test]
fn the_node_named_by_node_name_gives_the_addresses() {
    let source = |node_name: Option<&str>| FileSource {
        path: "nodes.yaml".into(),
        node_name: node_name.map(str::to_owned),
        options: Options::default(),
    };
    let loaded = source(Some("node-2"))
        .load_bytes(NODES.as_bytes())
        .unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(
        loaded.node_ips,
        ["192.0.2.2".parse::<std::net::IpAddr>().expect("ip")]
    );
    let loaded = source(Some("node-9"))
        .load_bytes(NODES.as_bytes())
        .unwrap_or_else(|error| panic!("{error}"));
    assert!(loaded.node_ips.is_empty(), "no Node of that name");
    let error = source(None)
        .load_bytes(NODES.as_bytes())
        .expect_err("which node?");
    assert_eq!(
        error.to_string(),
        "nodes.yaml: 2 Node objects and no --node-name: name the one this node is (or keep only it)"
    );
    // The only Node is this node without --node-name.
    let one = NODES
        .split("- metadata: {name: node-2}")
        .next()
        .expect("first");
    let loaded = source(None)
        .load_bytes(one.as_bytes())
        .unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(loaded.node_ips.len(), 2);
}
