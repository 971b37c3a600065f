//! Sources of the desired state: a file of Kubernetes objects, or the
//! Kubernetes API. Both translate with `crate::translate` and publish
//! [`Update`]s: a whole state, or (the API source, for changes to a few
//! Services) only the frontends that changed. The sync loop keeps the
//! desired state, merges what queued up, and applies the difference.
//!
//! A `nodePort` arrives as one frontend on the unspecified address of its
//! family ([`Frontend::node_port`]); [`Desired`] expands it into one frontend
//! per node-port address, and again whenever those addresses change.

pub mod file;
pub mod kube;

use std::{collections::BTreeSet, net::IpAddr, sync::Arc, time::Instant};

use tokio::sync::mpsc;

use crate::{
    model::{DesiredState, Frontend, FrontendKind, HealthChecks, ServiceEntry, StateDelta},
    node_addresses::NodeAddresses,
};

/// What a source publishes.
#[derive(Debug)]
pub enum Published {
    /// Everything: frontends not in it are to be removed.
    Full(DesiredState),
    /// These frontends only: `None` removes one.
    Delta(StateDelta),
    /// The node's primary addresses from its Node object (empty: none known).
    NodeIps(Vec<IpAddr>),
    /// Every address of the node's interfaces, after a change.
    LocalAddresses(BTreeSet<IpAddr>),
    /// Every `healthCheckNodePort` this node answers (after a change).
    HealthChecks(HealthChecks),
    /// Whether the Node object lets the node take traffic (false while it
    /// is deleted or about to be: `crate::health`).
    NodeEligible(bool),
}

/// A change and when its cause was noticed (for latency metrics).
#[derive(Debug)]
pub struct Update {
    pub change: Published,
    pub noticed: Instant,
}

/// Where sources publish.
pub type Publisher = mpsc::UnboundedSender<Update>;

/// The desired state as the sources have described it so far, and what
/// changed since the last sync.
#[derive(Debug, Default)]
pub struct Desired {
    /// What the maps should hold: node ports expanded to the node-port
    /// addresses. The only entries of kind [`FrontendKind::NodePort`] are
    /// expansions; another kind on the same address and port wins.
    pub state: DesiredState,
    /// The node ports as published, on the unspecified address.
    node_ports: DesiredState,
    /// What decides the node-port addresses, and the addresses it gave.
    addresses: NodeAddresses,
    chosen: BTreeSet<IpAddr>,
    /// The health checks this node answers, as last published.
    pub health_checks: HealthChecks,
    /// What the Node object says of taking traffic; `None` before a source
    /// has said.
    pub node_eligible: Option<bool>,
    /// Whether a whole state has arrived yet (nothing is synced before).
    pub complete: bool,
    /// Frontends changed since the last sync; `None`: compare everything.
    pub touched: Option<BTreeSet<Frontend>>,
    /// The earliest cause among the merged updates.
    pub noticed: Option<Instant>,
}

impl Desired {
    /// An empty state whose node ports answer on the addresses `addresses`
    /// chooses.
    #[must_use]
    pub fn new(addresses: NodeAddresses) -> Self {
        let chosen = addresses.chosen();
        Self {
            addresses,
            chosen,
            ..Self::default()
        }
    }

    /// The addresses node ports answer on now.
    #[must_use]
    pub fn node_port_addresses(&self) -> &BTreeSet<IpAddr> {
        &self.chosen
    }

    /// Merges one update.
    pub fn merge(&mut self, update: Update) {
        self.noticed = Some(
            self.noticed
                .map_or(update.noticed, |n| n.min(update.noticed)),
        );
        match update.change {
            Published::Full(state) => {
                let (node_ports, explicit): (DesiredState, DesiredState) =
                    state.into_iter().partition(|(f, _)| f.is_node_port());
                self.state = explicit;
                self.node_ports = node_ports;
                self.expand_node_ports();
                self.complete = true;
                self.touched = None;
            }
            Published::Delta(delta) => {
                for (frontend, entry) in delta {
                    if frontend.is_node_port() {
                        self.merge_node_port(frontend, entry.as_ref());
                    } else {
                        self.merge_explicit(frontend, entry);
                    }
                }
            }
            Published::NodeIps(ips) => {
                self.addresses.node_ips = Some(ips);
                self.choose();
            }
            Published::LocalAddresses(local) => {
                self.addresses.local = local;
                self.choose();
            }
            Published::HealthChecks(checks) => self.health_checks = checks,
            Published::NodeEligible(eligible) => self.node_eligible = Some(eligible),
        }
    }

    fn touch(&mut self, frontend: Frontend) {
        if let Some(touched) = &mut self.touched {
            touched.insert(frontend);
        }
    }

    fn merge_explicit(&mut self, frontend: Frontend, entry: Option<Arc<ServiceEntry>>) {
        if let Some(entry) = entry {
            self.state.insert(frontend, entry);
        } else {
            self.state.remove(&frontend);
            // A node port on the same address and port takes it back.
            let placeholder = Frontend::node_port(frontend.ip, frontend.port, frontend.protocol);
            if self.chosen.contains(&frontend.ip)
                && let Some(entry) = self.node_ports.get(&placeholder)
            {
                self.state.insert(frontend, entry.clone());
            }
        }
        self.touch(frontend);
    }

    fn merge_node_port(&mut self, placeholder: Frontend, entry: Option<&Arc<ServiceEntry>>) {
        match entry {
            Some(entry) => self.node_ports.insert(placeholder, entry.clone()),
            None => self.node_ports.remove(&placeholder),
        };
        let frontends: Vec<Frontend> = expansions(&self.chosen, &placeholder).collect();
        for frontend in frontends {
            let expanded = self
                .state
                .get(&frontend)
                .is_none_or(|e| e.kind == FrontendKind::NodePort);
            if !expanded {
                continue; // Another kind of frontend has this address and port.
            }
            match entry {
                Some(entry) => self.state.insert(frontend, entry.clone()),
                None => self.state.remove(&frontend),
            };
            self.touch(frontend);
        }
    }

    /// Puts every node port on every chosen address of its family where no
    /// frontend is yet.
    fn expand_node_ports(&mut self) {
        for (placeholder, entry) in &self.node_ports {
            for frontend in expansions(&self.chosen, placeholder) {
                self.state.entry(frontend).or_insert_with(|| entry.clone());
            }
        }
    }

    /// Chooses the node-port addresses again and, when they changed,
    /// expands the node ports onto the new set.
    fn choose(&mut self) {
        let chosen = self.addresses.chosen();
        if chosen == self.chosen {
            return;
        }
        tracing::info!(
            addresses = ?chosen,
            mode = %self.addresses.mode,
            "node ports answer on these addresses"
        );
        self.state.retain(|frontend, entry| {
            entry.kind != FrontendKind::NodePort || chosen.contains(&frontend.ip)
        });
        self.chosen = chosen;
        self.expand_node_ports();
        // Rare: compare everything rather than track each address.
        self.touched = None;
    }

    /// Takes what changed since the last sync (and resets it).
    pub fn take_touched(&mut self) -> (Option<BTreeSet<Frontend>>, Option<Instant>) {
        (self.touched.replace(BTreeSet::new()), self.noticed.take())
    }
}

/// The frontends a node port placeholder stands for: one per chosen address
/// of its family.
fn expansions<'a>(
    chosen: &'a BTreeSet<IpAddr>,
    placeholder: &'a Frontend,
) -> impl Iterator<Item = Frontend> + 'a {
    chosen
        .iter()
        .filter(|ip| ip.is_ipv4() == placeholder.ip.is_ipv4())
        .map(|&ip| Frontend { ip, ..*placeholder })
}

#[cfg(test)]
mod tests {
    use std::{
        collections::{BTreeMap, BTreeSet},
        sync::Arc,
        time::Instant,
    };

    use super::{Desired, Published, Update};
    use crate::model::{Algorithm, DesiredState, Frontend, Protocol, ServiceEntry};

    fn fe(port: u16) -> Frontend {
        Frontend::new("10.96.0.1".parse().expect("ip"), port, Protocol::Tcp)
    }

    fn entry() -> Arc<ServiceEntry> {
        Arc::new(ServiceEntry {
            name: crate::model::ServicePortName::default(),
            kind: crate::model::FrontendKind::ClusterIP,
            algorithm: Algorithm::Random,
            affinity_timeout_s: None,
            backends: vec![],
            source_ranges: vec![],
        })
    }

    #[test]
    fn deltas_merge_into_the_last_full_state_and_are_tracked() {
        let mut d = Desired::default();
        let full: DesiredState = [(fe(1), entry()), (fe(2), entry())].into();
        d.merge(Update {
            change: Published::Full(full),
            noticed: Instant::now(),
        });
        assert!(d.complete);
        let (touched, noticed) = d.take_touched();
        assert_eq!(touched, None, "after a full state everything is compared");
        assert!(noticed.is_some());

        d.merge(Update {
            change: Published::Delta(BTreeMap::from([(fe(1), None), (fe(3), Some(entry()))])),
            noticed: Instant::now(),
        });
        let (touched, _) = d.take_touched();
        assert_eq!(touched, Some([fe(1), fe(3)].into()));
        assert_eq!(
            d.state.keys().copied().collect::<Vec<_>>(),
            vec![fe(2), fe(3)]
        );
        assert_eq!(
            d.take_touched().0,
            Some(BTreeSet::default()),
            "reset after taking"
        );
    }

    #[test]
    fn a_full_state_after_deltas_compares_everything() {
        let mut d = Desired::default();
        d.merge(Update {
            change: Published::Delta(BTreeMap::from([(fe(1), Some(entry()))])),
            noticed: Instant::now(),
        });
        assert!(!d.complete, "deltas alone are not a complete state");
        d.merge(Update {
            change: Published::Full(DesiredState::new()),
            noticed: Instant::now(),
        });
        assert_eq!(d.take_touched().0, None);
    }

    fn at(ip: &str, port: u16) -> Frontend {
        Frontend::new(ip.parse().expect("ip"), port, Protocol::Tcp)
    }

    fn kind_entry(kind: crate::model::FrontendKind, name: &str) -> Arc<ServiceEntry> {
        Arc::new(ServiceEntry {
            kind,
            name: crate::model::ServicePortName {
                name: name.to_owned(),
                ..Default::default()
            },
            ..(*entry()).clone()
        })
    }

    fn update(change: Published) -> Update {
        Update {
            change,
            noticed: Instant::now(),
        }
    }

    fn local(ips: &[&str]) -> BTreeSet<std::net::IpAddr> {
        ips.iter().map(|s| s.parse().expect("ip")).collect()
    }

    fn keys(d: &Desired) -> Vec<String> {
        d.state.keys().map(ToString::to_string).collect()
    }

    /// A state with the node port 30080 (IPv4) and the ClusterIP of its
    /// Service, on a node with two IPv4 addresses and one IPv6.
    fn with_node_port() -> Desired {
        use crate::{model::FrontendKind, node_addresses::NodeAddresses};
        let mut d = Desired::new(NodeAddresses {
            local: local(&["10.0.0.5", "10.0.0.6", "fd00::5", "127.0.0.1"]),
            ..NodeAddresses::default()
        });
        let full: DesiredState = [
            (
                at("0.0.0.0", 30_080),
                kind_entry(FrontendKind::NodePort, "np"),
            ),
            (
                at("10.96.0.1", 80),
                kind_entry(FrontendKind::ClusterIP, "np"),
            ),
        ]
        .into();
        d.merge(update(Published::Full(full)));
        d
    }

    #[test]
    fn node_ports_expand_to_each_node_port_address_of_their_family() {
        let d = with_node_port();
        assert_eq!(
            keys(&d),
            [
                "10.0.0.5:30080/TCP",
                "10.0.0.6:30080/TCP",
                "10.96.0.1:80/TCP"
            ]
        );
    }

    #[test]
    fn node_ports_follow_the_addresses() {
        let mut d = with_node_port();
        d.take_touched();
        // An address comes and another goes (DHCP, an interface).
        d.merge(update(Published::LocalAddresses(local(&[
            "10.0.0.6", "10.0.0.7",
        ]))));
        assert_eq!(
            keys(&d),
            [
                "10.0.0.6:30080/TCP",
                "10.0.0.7:30080/TCP",
                "10.96.0.1:80/TCP"
            ]
        );
        assert_eq!(d.take_touched().0, None, "everything is compared");
        // The Node object names the primary address: only it answers.
        d.merge(update(Published::NodeIps(vec![
            "10.0.0.7".parse().expect("ip"),
        ])));
        assert_eq!(keys(&d), ["10.0.0.7:30080/TCP", "10.96.0.1:80/TCP"]);
        // Unchanged addresses change nothing.
        d.take_touched();
        d.merge(update(Published::NodeIps(vec![
            "10.0.0.7".parse().expect("ip"),
        ])));
        assert_eq!(d.take_touched().0, Some(BTreeSet::new()));
    }

    #[test]
    fn node_port_deltas_touch_each_expansion() {
        let mut d = with_node_port();
        d.take_touched();
        d.merge(update(Published::Delta(BTreeMap::from([(
            at("0.0.0.0", 30_080),
            None,
        )]))));
        assert_eq!(keys(&d), ["10.96.0.1:80/TCP"]);
        assert_eq!(
            d.take_touched().0,
            Some([at("10.0.0.5", 30_080), at("10.0.0.6", 30_080)].into())
        );
    }

    #[test]
    fn another_kind_on_a_node_address_wins_and_gives_it_back() {
        use crate::model::FrontendKind;
        let mut d = with_node_port();
        let external = kind_entry(FrontendKind::ExternalIP, "ext");
        d.merge(update(Published::Delta(BTreeMap::from([(
            at("10.0.0.5", 30_080),
            Some(external),
        )]))));
        assert_eq!(
            d.state[&at("10.0.0.5", 30_080)].kind,
            FrontendKind::ExternalIP
        );
        // A change of the node port leaves it alone.
        let np = kind_entry(FrontendKind::NodePort, "np2");
        d.merge(update(Published::Delta(BTreeMap::from([(
            at("0.0.0.0", 30_080),
            Some(np),
        )]))));
        assert_eq!(d.state[&at("10.0.0.5", 30_080)].name.name, "ext");
        assert_eq!(d.state[&at("10.0.0.6", 30_080)].name.name, "np2");
        // Gone: the node port has the address again.
        d.merge(update(Published::Delta(BTreeMap::from([(
            at("10.0.0.5", 30_080),
            None,
        )]))));
        assert_eq!(d.state[&at("10.0.0.5", 30_080)].name.name, "np2");
    }
}
