//! What this node's Node object says besides what translation reads: its
//! primary addresses (node ports answer there) and whether it may take
//! traffic (`crate::health`), published when they change.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Node;

use super::super::Published;
use crate::{health, node_addresses};

/// The last published, to publish only changes.
#[derive(Default)]
pub(super) struct NodeReport {
    ips: Option<Vec<IpAddr>>,
    eligible: Option<bool>,
    /// Whether the Node was ever seen: one that is gone was deleted.
    seen: bool,
}

impl NodeReport {
    /// What changed since the last call, the addresses first (the node
    /// ports of the state that follows answer on them). Without a Node
    /// (no `--node-name`, or none of that name yet) the node is eligible,
    /// as kube-proxy's is until a Node says otherwise.
    pub(super) fn changes(&mut self, node: Option<&Node>) -> Vec<Published> {
        self.seen |= node.is_some();
        let ips = node.map(node_addresses::primary_ips).unwrap_or_default();
        let eligible = node.map_or(!self.seen, health::node_eligible);
        let mut changes = Vec::new();
        if self.ips.as_ref() != Some(&ips) {
            self.ips = Some(ips.clone());
            changes.push(Published::NodeIps(ips));
        }
        if self.eligible != Some(eligible) {
            self.eligible = Some(eligible);
            if !eligible {
                tracing::warn!(
                    "the Node is being deleted: /healthz answers 503 (nodeEligible: false)"
                );
            }
            changes.push(Published::NodeEligible(eligible));
        }
        changes
    }
}
