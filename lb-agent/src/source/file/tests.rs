//! The file source's own tests: which events count as changes, and the
//! example services file.

use notify::{
    EventKind,
    event::{
        AccessKind, AccessMode, CreateKind, DataChange, MetadataKind, ModifyKind, RemoveKind,
        RenameMode,
    },
};

use super::{FileSource, changes_content};
use crate::{
    model::{Algorithm, DesiredState, Frontend, Protocol, ServiceEntry, ServicePortName},
    translate::{NodeContext, Options},
};

#[test]
fn example_file_is_one_frontend_with_three_backends() {
    let source = FileSource {
        path: "examples/services.yaml".into(),
        node: NodeContext::default(),
        options: Options::default(),
    };
    let state = source
        .load_bytes(include_bytes!("../../../../examples/services.yaml"))
        .unwrap_or_else(|error| panic!("{error}"));
    let expected = ServiceEntry {
        name: ServicePortName {
            namespace: "default".to_owned(),
            name: "demo".to_owned(),
            port: "http".to_owned(),
        },
        algorithm: Algorithm::RoundRobin,
        affinity_timeout_s: None,
        backends: ["10.200.0.11:8080", "10.200.0.12:8080", "10.200.0.13:8080"]
            .iter()
            .map(|s| s.parse().expect("addr"))
            .collect(),
    };
    let frontend = Frontend {
        ip: "10.96.0.100".parse().expect("ip"),
        port: 80,
        protocol: Protocol::Tcp,
    };
    assert_eq!(state, DesiredState::from([(frontend, expected)]));
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
