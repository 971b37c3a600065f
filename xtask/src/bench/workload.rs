//! What every peer is programmed with: N `ClusterIP` services, written as the
//! agent's services file (a `v1 List` as `kubectl get
//! services,endpointslices -A -o json` prints it) and as the rule sets
//! kube-proxy would write for them in its iptables and nftables modes.
//!
//! The services, in the order every peer gets them:
//! - `N - 1` fillers (`bench/svc-000000` ...) whose endpoints are addresses
//!   nobody serves (they are only looked at, never reached);
//! - `churn`: one endpoint, moved from pod 1 to pod 2 and back to time
//!   "endpoint change -> data path";
//! - `measured`: the three real pods, last in every list, so last in
//!   iptables' `KUBE-SERVICES` (the slowest place for it to be found).
//!
//! So size N programs N + 1 services. For the bench's traffic from outside
//! the node, [`Workload::with_node_port`] makes `measured` a `NodePort`
//! service on one remote pod. The structure of the rule sets
//! follows kube-proxy's proxiers (`pkg/proxy/iptables`, `pkg/proxy/nftables`):
//! the same chains, maps, matches and jumps for `ClusterIP` services with a
//! cluster CIDR, and for a node port with `externalTrafficPolicy: Cluster`; chain names hash the service port and endpoint as
//! kube-proxy does, with a different (non-cryptographic) hash.

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddrV4},
};

/// Namespace of every benchmark service.
pub const NAMESPACE: &str = "bench";
/// The service port every service exposes, and the pods' target port.
pub const SERVICE_PORT: u16 = 80;
pub const TARGET_PORT: u16 = 8080;
/// What kube-proxy calls the cluster CIDR: sources outside it are masqueraded.
pub const CLUSTER_CIDR: &str = "10.0.0.0/8";
/// The service CIDR (kube-proxy's nftables mode drops unallocated IPs in it).
pub const SERVICE_CIDR: &str = "10.96.0.0/12";
/// Cluster IPs of the two services that matter.
pub const MEASURED_VIP: Ipv4Addr = Ipv4Addr::new(10, 110, 0, 1);
pub const CHURN_VIP: Ipv4Addr = Ipv4Addr::new(10, 110, 0, 2);

#[derive(Clone, Debug)]
pub struct Service {
    pub name: String,
    pub vip: Ipv4Addr,
    pub endpoints: Vec<SocketAddrV4>,
    /// `type: NodePort` with this node port (TCP, `externalTrafficPolicy: Cluster`).
    pub node_port: Option<u16>,
}

impl Service {
    /// `namespace/name:port`, as kube-proxy names a service port.
    fn port_name(&self) -> String {
        format!("{NAMESPACE}/{}:http", self.name)
    }
}

/// The services of one size.
#[derive(Clone, Debug)]
pub struct Workload {
    pub services: Vec<Service>,
}

impl Workload {
    /// `size` services (fillers with `endpoints` endpoints each, then
    /// `measured` on `pods`) plus `churn` on `pods[0]`.
    pub fn new(size: usize, endpoints: usize, pods: &[Ipv4Addr]) -> Self {
        let mut services = Vec::with_capacity(size + 1);
        let mut next_endpoint: u32 = 0;
        for i in 0..size.saturating_sub(1) {
            let vip = Ipv4Addr::from(
                u32::from(Ipv4Addr::new(10, 96, 0, 1)) + u32::try_from(i).unwrap_or(0),
            );
            let eps = (0..endpoints)
                .map(|_| {
                    next_endpoint += 1;
                    // 10.128.0.0/10: never routed to, only programmed.
                    let ip =
                        Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + next_endpoint);
                    SocketAddrV4::new(ip, TARGET_PORT)
                })
                .collect();
            services.push(Service {
                name: format!("svc-{i:06}"),
                vip,
                endpoints: eps,
                node_port: None,
            });
        }
        services.push(Service {
            name: "churn".to_owned(),
            vip: CHURN_VIP,
            endpoints: vec![SocketAddrV4::new(pods[0], TARGET_PORT)],
            node_port: None,
        });
        services.push(Service {
            name: "measured".to_owned(),
            vip: MEASURED_VIP,
            endpoints: pods
                .iter()
                .map(|&ip| SocketAddrV4::new(ip, TARGET_PORT))
                .collect(),
            node_port: None,
        });
        Self { services }
    }

    /// Makes `measured` a node port `node_port` whose only endpoint is
    /// `endpoint`.
    #[must_use]
    pub fn with_node_port(mut self, node_port: u16, endpoint: SocketAddrV4) -> Self {
        let measured = self.services.last_mut().expect("measured is always there");
        measured.node_port = Some(node_port);
        measured.endpoints = vec![endpoint];
        self
    }

    fn churn_index(&self) -> usize {
        self.services.len() - 2
    }

    /// Moves the churn service to `to`; returns the service before and after.
    pub fn move_churn(&mut self, to: SocketAddrV4) -> (Service, Service) {
        let i = self.churn_index();
        let before = self.services[i].clone();
        self.services[i].endpoints = vec![to];
        (before, self.services[i].clone())
    }

    // ---- the agent's services file ------------------------------------------

    /// The services file: one JSON `v1 List`, one object per line.
    pub fn services_file(&self) -> String {
        let mut s =
            String::with_capacity(self.services.len() * (700 + 150 * self.endpoints_hint()));
        s.push_str("{\"apiVersion\":\"v1\",\"kind\":\"List\",\"metadata\":{\"resourceVersion\":\"\"},\"items\":[");
        for (i, svc) in self.services.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            let name = &svc.name;
            let vip = svc.vip;
            // Every endpoint of a service listens on the same port.
            let target = svc
                .endpoints
                .first()
                .map_or(TARGET_PORT, SocketAddrV4::port);
            let (kind, node_port) = svc.node_port.map_or(("ClusterIP", String::new()), |p| {
                ("NodePort", format!(",\"nodePort\":{p}"))
            });
            let _ = write!(
                s,
                "\n{{\"apiVersion\":\"v1\",\"kind\":\"Service\",\"metadata\":{{\"name\":\"{name}\",\"namespace\":\"{NAMESPACE}\",\
                 \"resourceVersion\":\"{i}\"}},\"spec\":{{\"type\":\"{kind}\",\"clusterIP\":\"{vip}\",\"clusterIPs\":[\"{vip}\"],\
                 \"ipFamilies\":[\"IPv4\"],\"ipFamilyPolicy\":\"SingleStack\",\"internalTrafficPolicy\":\"Cluster\",\
                 \"sessionAffinity\":\"None\",\"ports\":[{{\"name\":\"http\",\"port\":{SERVICE_PORT},\"protocol\":\"TCP\",\
                 \"targetPort\":{target}{node_port}}}]}}}},\
                 \n{{\"apiVersion\":\"discovery.k8s.io/v1\",\"kind\":\"EndpointSlice\",\"metadata\":{{\"name\":\"{name}-x7k2q\",\
                 \"namespace\":\"{NAMESPACE}\",\"labels\":{{\"kubernetes.io/service-name\":\"{name}\",\
                 \"endpointslice.kubernetes.io/managed-by\":\"endpointslice-controller.k8s.io\"}}}},\"addressType\":\"IPv4\",\"endpoints\":["
            );
            for (j, ep) in svc.endpoints.iter().enumerate() {
                if j > 0 {
                    s.push(',');
                }
                let _ = write!(
                    s,
                    "{{\"addresses\":[\"{}\"],\"conditions\":{{\"ready\":true,\"serving\":true,\"terminating\":false}},\
                     \"nodeName\":\"node-1\"}}",
                    ep.ip()
                );
            }
            let _ = write!(
                s,
                "],\"ports\":[{{\"name\":\"http\",\"port\":{target},\"protocol\":\"TCP\"}}]}}"
            );
        }
        s.push_str("\n]}\n");
        s
    }

    fn endpoints_hint(&self) -> usize {
        self.services.first().map_or(0, |s| s.endpoints.len())
    }

    // ---- kube-proxy, iptables mode ------------------------------------------

    /// Everything kube-proxy's first sync writes with `iptables-restore
    /// --noflush`, including the jumps from the built-in chains (which it
    /// adds with `iptables -I` beforehand) for a namespace with no rules.
    pub fn iptables_full(&self) -> String {
        let mut s = String::with_capacity(self.services.len() * 700);
        s.push_str(IPTABLES_FILTER);
        s.push_str("*nat\n");
        s.push_str(":KUBE-SERVICES - [0:0]\n:KUBE-NODEPORTS - [0:0]\n:KUBE-POSTROUTING - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n");
        for svc in &self.services {
            iptables_chains(&mut s, svc);
        }
        s.push_str(
            "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
             -A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
             -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n",
        );
        s.push_str(IPTABLES_NAT_COMMON);
        self.iptables_services_chain(&mut s);
        for svc in &self.services {
            iptables_rules(&mut s, svc);
        }
        s.push_str("COMMIT\n");
        s
    }

    /// What kube-proxy's partial sync (`MinimizeIPTablesRestore`) writes when
    /// one service's endpoints changed: the filter table and the top-level
    /// nat chains in full (`KUBE-SERVICES` lists every service), the changed
    /// service's chains, and the deletion of the endpoint chains it no
    /// longer uses.
    pub fn iptables_change(&self, before: &Service, after: &Service) -> String {
        let mut s = String::with_capacity(self.services.len() * 200);
        s.push_str(IPTABLES_FILTER.replace(IPTABLES_BUILTIN_JUMPS, "").as_str());
        s.push_str("*nat\n");
        s.push_str(":KUBE-SERVICES - [0:0]\n:KUBE-NODEPORTS - [0:0]\n:KUBE-POSTROUTING - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n");
        iptables_chains(&mut s, after);
        // Stale chains are declared (so flushed) and then deleted.
        let stale: Vec<String> = before
            .endpoints
            .iter()
            .filter(|ep| !after.endpoints.contains(ep))
            .map(|ep| sep_chain(before, *ep))
            .collect();
        for chain in &stale {
            let _ = writeln!(s, ":{chain} - [0:0]");
        }
        s.push_str(IPTABLES_NAT_COMMON);
        self.iptables_services_chain(&mut s);
        iptables_rules(&mut s, after);
        for chain in &stale {
            let _ = writeln!(s, "-X {chain}");
        }
        s.push_str("COMMIT\n");
        s
    }

    fn iptables_services_chain(&self, s: &mut String) {
        for svc in &self.services {
            let _ = writeln!(
                s,
                "-A KUBE-SERVICES -m comment --comment \"{} cluster IP\" -m tcp -p tcp -d {} --dport {SERVICE_PORT} -j {}",
                svc.port_name(),
                svc.vip,
                svc_chain(svc)
            );
        }
        s.push_str(
            "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in \
             this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n",
        );
        // KUBE-NODEPORTS is rewritten in full with KUBE-SERVICES.
        for svc in &self.services {
            if let Some(port) = svc.node_port {
                let _ = writeln!(
                    s,
                    "-A KUBE-NODEPORTS -m comment --comment {} -m tcp -p tcp --dport {port} -j {}",
                    svc.port_name(),
                    ext_chain(svc)
                );
            }
        }
    }

    // ---- kube-proxy, nftables mode ------------------------------------------

    /// What kube-proxy adds to [`Workload::nft_full`] on a node whose
    /// node-port address (`--nodeport-addresses primary`) is `ip`.
    pub fn nft_nodeport_ip(ip: Ipv4Addr) -> String {
        format!("add element ip kube-proxy nodeport-ips {{ {ip} }}\n")
    }

    /// kube-proxy's first sync in nftables mode, for `nft -f`.
    pub fn nft_full(&self) -> String {
        let mut s = String::with_capacity(self.services.len() * 900);
        s.push_str(NFT_BASE);
        let _ = writeln!(
            s,
            "add rule ip kube-proxy cluster-ips-check ip daddr {{ {SERVICE_CIDR} }} drop comment \"Drop traffic to unallocated ClusterIPs\""
        );
        for svc in &self.services {
            nft_service(&mut s, svc);
        }
        s
    }

    /// kube-proxy's partial sync when one service's endpoints changed: the
    /// service chain rewritten to the new endpoint chains, the stale
    /// endpoint chains flushed and deleted, in one transaction.
    pub fn nft_change(before: &Service, after: &Service) -> String {
        let mut s = String::new();
        s.push_str("add table ip kube-proxy { comment \"rules for kube-proxy\" ; }\n");
        nft_service_chains(&mut s, after, true);
        for ep in &before.endpoints {
            if !after.endpoints.contains(ep) {
                let chain = nft_endpoint_chain(before, *ep);
                let _ = writeln!(
                    s,
                    "flush chain ip kube-proxy {chain}\ndelete chain ip kube-proxy {chain}"
                );
            }
        }
        s
    }
}

/// The jumps from the built-in chains into kube-proxy's: the part of
/// [`IPTABLES_FILTER`] that a partial sync does not rewrite.
macro_rules! iptables_builtin_jumps {
    () => {
        "-A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL\n\
-A INPUT -m comment --comment \"kubernetes health check service ports\" -j KUBE-NODEPORTS\n\
-A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES\n\
-A INPUT -j KUBE-FIREWALL\n\
-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL\n\
-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD\n\
-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES\n\
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL\n\
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
-A OUTPUT -j KUBE-FIREWALL\n"
    };
}

/// kube-proxy's filter table for services that all have endpoints.
const IPTABLES_FILTER: &str = concat!(
    "*filter\n\
:KUBE-NODEPORTS - [0:0]\n\
:KUBE-SERVICES - [0:0]\n\
:KUBE-EXTERNAL-SERVICES - [0:0]\n\
:KUBE-FIREWALL - [0:0]\n\
:KUBE-FORWARD - [0:0]\n\
:KUBE-PROXY-FIREWALL - [0:0]\n",
    iptables_builtin_jumps!(),
    "-A KUBE-FIREWALL -m comment --comment \"block incoming localnet connections\" -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP\n\
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n\
-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT\n\
-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
COMMIT\n"
);

/// The part of [`IPTABLES_FILTER`] that a partial sync does not rewrite.
const IPTABLES_BUILTIN_JUMPS: &str = iptables_builtin_jumps!();

const IPTABLES_NAT_COMMON: &str = "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n\
-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n\
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n";

fn iptables_chains(s: &mut String, svc: &Service) {
    let _ = writeln!(s, ":{} - [0:0]", svc_chain(svc));
    if svc.node_port.is_some() {
        let _ = writeln!(s, ":{} - [0:0]", ext_chain(svc));
    }
    for ep in &svc.endpoints {
        let _ = writeln!(s, ":{} - [0:0]", sep_chain(svc, *ep));
    }
}

fn iptables_rules(s: &mut String, svc: &Service) {
    let (name, chain, vip) = (svc.port_name(), svc_chain(svc), svc.vip);
    let _ = writeln!(
        s,
        "-A {chain} -m comment --comment \"{name} cluster IP\" -m tcp -p tcp -d {vip} --dport {SERVICE_PORT} ! -s {CLUSTER_CIDR} -j KUBE-MARK-MASQ"
    );
    if svc.node_port.is_some() {
        // externalTrafficPolicy: Cluster: everything from outside is masqueraded.
        let ext = ext_chain(svc);
        let _ = writeln!(
            s,
            "-A {ext} -m comment --comment \"masquerade traffic for {name} external destinations\" -j KUBE-MARK-MASQ\n\
             -A {ext} -j {chain}"
        );
    }
    let n = svc.endpoints.len();
    for (i, ep) in svc.endpoints.iter().enumerate() {
        let sep = sep_chain(svc, *ep);
        if i + 1 < n {
            #[expect(clippy::cast_precision_loss, reason = "endpoint counts are small")]
            let p = 1.0 / (n - i) as f64;
            let _ = writeln!(
                s,
                "-A {chain} -m comment --comment \"{name} -> {ep}\" -m statistic --mode random --probability {p:.10} -j {sep}"
            );
        } else {
            let _ = writeln!(
                s,
                "-A {chain} -m comment --comment \"{name} -> {ep}\" -j {sep}"
            );
        }
    }
    for ep in &svc.endpoints {
        let sep = sep_chain(svc, *ep);
        let _ = writeln!(
            s,
            "-A {sep} -m comment --comment {name} -s {} -j KUBE-MARK-MASQ",
            ep.ip()
        );
        let _ = writeln!(
            s,
            "-A {sep} -m comment --comment {name} -m tcp -p tcp -j DNAT --to-destination {ep}"
        );
    }
}

fn svc_chain(svc: &Service) -> String {
    format!(
        "KUBE-SVC-{}",
        hash32(&format!("{}tcp", svc.port_name()), 16)
    )
}

fn ext_chain(svc: &Service) -> String {
    format!(
        "KUBE-EXT-{}",
        hash32(&format!("{}tcp", svc.port_name()), 16)
    )
}

fn sep_chain(svc: &Service, ep: SocketAddrV4) -> String {
    format!(
        "KUBE-SEP-{}",
        hash32(&format!("{}tcp{ep}", svc.port_name()), 16)
    )
}

/// kube-proxy's nftables base: table, sets, maps, base chains and their rules.
const NFT_BASE: &str = "add table ip kube-proxy { comment \"rules for kube-proxy\" ; }\n\
add set ip kube-proxy cluster-ips { type ipv4_addr ; comment \"Active ClusterIPs\" ; }\n\
add set ip kube-proxy nodeport-ips { type ipv4_addr ; comment \"IPs that accept NodePort traffic\" ; }\n\
add map ip kube-proxy firewall-ips { type ipv4_addr . inet_proto . inet_service : verdict ; comment \"destinations that are subject to LoadBalancerSourceRanges\" ; }\n\
add map ip kube-proxy no-endpoint-nodeports { type inet_proto . inet_service : verdict ; comment \"vmap to drop or reject packets to service nodeports with no endpoints\" ; }\n\
add map ip kube-proxy no-endpoint-services { type ipv4_addr . inet_proto . inet_service : verdict ; comment \"vmap to drop or reject packets to services with no endpoints\" ; }\n\
add map ip kube-proxy service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; comment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\" ; }\n\
add map ip kube-proxy service-nodeports { type inet_proto . inet_service : verdict ; comment \"NodePort traffic\" ; }\n\
add chain ip kube-proxy cluster-ips-check\n\
add chain ip kube-proxy filter-prerouting-pre-dnat { type filter hook prerouting priority -110 ; }\n\
add chain ip kube-proxy filter-output-pre-dnat { type filter hook output priority -110 ; }\n\
add chain ip kube-proxy filter-forward { type filter hook forward priority 0 ; }\n\
add chain ip kube-proxy filter-input { type filter hook input priority 0 ; }\n\
add chain ip kube-proxy filter-output { type filter hook output priority 0 ; }\n\
add chain ip kube-proxy firewall-check\n\
add chain ip kube-proxy mark-for-masquerade\n\
add chain ip kube-proxy masquerading\n\
add chain ip kube-proxy nat-output { type nat hook output priority -100 ; }\n\
add chain ip kube-proxy nat-postrouting { type nat hook postrouting priority 100 ; }\n\
add chain ip kube-proxy nat-prerouting { type nat hook prerouting priority -100 ; }\n\
add chain ip kube-proxy nodeport-endpoints-check\n\
add chain ip kube-proxy reject-chain { comment \"helper for @no-endpoint-services / @no-endpoint-nodeports\" ; }\n\
add chain ip kube-proxy services\n\
add chain ip kube-proxy service-endpoints-check\n\
add rule ip kube-proxy cluster-ips-check ip daddr @cluster-ips reject comment \"Reject traffic to invalid ports of ClusterIPs\"\n\
add rule ip kube-proxy filter-prerouting-pre-dnat ct state new jump firewall-check\n\
add rule ip kube-proxy filter-forward ct state new jump service-endpoints-check\n\
add rule ip kube-proxy filter-forward ct state new jump cluster-ips-check\n\
add rule ip kube-proxy filter-input ct state new jump nodeport-endpoints-check\n\
add rule ip kube-proxy filter-input ct state new jump service-endpoints-check\n\
add rule ip kube-proxy filter-output ct state new jump service-endpoints-check\n\
add rule ip kube-proxy filter-output-pre-dnat ct state new jump firewall-check\n\
add rule ip kube-proxy filter-output ct state new jump cluster-ips-check\n\
add rule ip kube-proxy firewall-check ip daddr . meta l4proto . th dport vmap @firewall-ips\n\
add rule ip kube-proxy mark-for-masquerade mark set mark or 0x4000\n\
add rule ip kube-proxy masquerading mark and 0x4000 == 0 return\n\
add rule ip kube-proxy masquerading mark set mark xor 0x4000\n\
add rule ip kube-proxy masquerading masquerade fully-random\n\
add rule ip kube-proxy nat-output jump services\n\
add rule ip kube-proxy nat-postrouting jump masquerading\n\
add rule ip kube-proxy nat-prerouting jump services\n\
add rule ip kube-proxy nodeport-endpoints-check ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports\n\
add rule ip kube-proxy reject-chain reject\n\
add rule ip kube-proxy services ip daddr . meta l4proto . th dport vmap @service-ips\n\
add rule ip kube-proxy services ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports\n\
add rule ip kube-proxy service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services\n";

fn nft_service(s: &mut String, svc: &Service) {
    nft_service_chains(s, svc, false);
    if let Some(port) = svc.node_port {
        let (ext, chain) = (nft_external_chain(svc), nft_service_chain(svc));
        let _ = writeln!(
            s,
            "add chain ip kube-proxy {ext}\n\
             add rule ip kube-proxy {ext} jump mark-for-masquerade\n\
             add rule ip kube-proxy {ext} goto {chain}\n\
             add element ip kube-proxy service-nodeports {{ tcp . {port} : goto {ext} }}"
        );
    }
    let _ = writeln!(s, "add element ip kube-proxy cluster-ips {{ {} }}", svc.vip);
    let _ = writeln!(
        s,
        "add element ip kube-proxy service-ips {{ {} . tcp . {SERVICE_PORT} : goto {} }}",
        svc.vip,
        nft_service_chain(svc)
    );
}

/// The service chain and its endpoint chains; `flush` rewrites existing ones.
fn nft_service_chains(s: &mut String, svc: &Service, flush: bool) {
    let chain = nft_service_chain(svc);
    for ep in &svc.endpoints {
        let ep_chain = nft_endpoint_chain(svc, *ep);
        let _ = writeln!(s, "add chain ip kube-proxy {ep_chain}");
        if flush {
            let _ = writeln!(s, "flush chain ip kube-proxy {ep_chain}");
        }
        let _ = writeln!(
            s,
            "add rule ip kube-proxy {ep_chain} ip saddr {} jump mark-for-masquerade",
            ep.ip()
        );
        let _ = writeln!(
            s,
            "add rule ip kube-proxy {ep_chain} meta l4proto tcp dnat to {ep}"
        );
    }
    let _ = writeln!(s, "add chain ip kube-proxy {chain}");
    if flush {
        let _ = writeln!(s, "flush chain ip kube-proxy {chain}");
    }
    let _ = writeln!(
        s,
        "add rule ip kube-proxy {chain} ip daddr {} ip saddr != {CLUSTER_CIDR} jump mark-for-masquerade",
        svc.vip
    );
    let _ = write!(
        s,
        "add rule ip kube-proxy {chain} numgen random mod {} vmap {{ ",
        svc.endpoints.len()
    );
    for (i, ep) in svc.endpoints.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        let _ = write!(s, "{i} : goto {}", nft_endpoint_chain(svc, *ep));
    }
    s.push_str(" }\n");
}

fn nft_service_chain(svc: &Service) -> String {
    format!(
        "service-{}-{NAMESPACE}/{}/tcp/http",
        hash32(&format!("{}tcp", svc.port_name()), 8),
        svc.name
    )
}

fn nft_external_chain(svc: &Service) -> String {
    format!(
        "external-{}-{NAMESPACE}/{}/tcp/http",
        hash32(&format!("{}tcp", svc.port_name()), 8),
        svc.name
    )
}

fn nft_endpoint_chain(svc: &Service, ep: SocketAddrV4) -> String {
    format!(
        "endpoint-{}-{NAMESPACE}/{}/tcp/http__{}/{}",
        hash32(&format!("{}tcp{ep}", svc.port_name()), 8),
        svc.name,
        ep.ip(),
        ep.port()
    )
}

/// `len` base32 characters of a 128-bit hash of `text` (kube-proxy uses
/// SHA-256; only uniqueness and the shape of the names matter here): FNV-1a
/// over the bytes, then two rounds of a splitmix64 finaliser per half so
/// that every output character depends on every input byte.
fn hash32(text: &str, len: usize) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    fn mix(mut z: u64) -> u64 {
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    let mut h: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    for b in text.bytes() {
        h ^= u128::from(b);
        h = h.wrapping_mul(0x0000_0000_0100_0000_0000_0000_0000_013B);
    }
    #[expect(clippy::cast_possible_truncation, reason = "splitting into halves")]
    let (hi, lo) = ((h >> 64) as u64, h as u64);
    let lo2 = mix(lo ^ mix(hi));
    let hi2 = mix(hi ^ lo2);
    let h = (u128::from(hi2) << 64) | u128::from(lo2);
    (0..len)
        .map(|i| char::from(ALPHABET[usize::try_from((h >> (5 * i)) & 31).unwrap_or(0)]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pods() -> Vec<Ipv4Addr> {
        vec![
            Ipv4Addr::new(10, 200, 0, 11),
            Ipv4Addr::new(10, 200, 0, 12),
            Ipv4Addr::new(10, 200, 0, 13),
        ]
    }

    #[test]
    fn measured_service_is_last_in_kube_services() {
        let w = Workload::new(5, 3, &pods());
        let rules = w.iptables_full();
        let last = rules
            .lines()
            .rfind(|l| l.starts_with("-A KUBE-SERVICES") && l.contains("cluster IP"))
            .expect("service rules");
        assert!(last.contains(&MEASURED_VIP.to_string()), "{last}");
        assert_eq!(rules.matches("--probability 0.3333333333").count(), 5);
        assert_eq!(rules.matches("--probability 0.5000000000").count(), 5);
    }

    #[test]
    fn change_deletes_the_stale_endpoint_chain_only() {
        let mut w = Workload::new(3, 3, &pods());
        let (before, after) = w.move_churn(SocketAddrV4::new(pods()[1], TARGET_PORT));
        let ipt = w.iptables_change(&before, &after);
        assert_eq!(ipt.matches("\n-X ").count(), 1);
        assert!(ipt.contains(&sep_chain(&before, before.endpoints[0])));
        let nft = Workload::nft_change(&before, &after);
        assert_eq!(nft.matches("delete chain").count(), 1);
        assert!(nft.contains("numgen random mod 1 vmap { 0 : goto endpoint-"));
    }

    #[test]
    fn chain_names_are_unique() {
        let w = Workload::new(20_000, 3, &pods());
        let rules = w.iptables_full();
        let declared: Vec<&str> = rules
            .lines()
            .filter(|l| l.starts_with(":KUBE-SVC-") || l.starts_with(":KUBE-SEP-"))
            .collect();
        let unique: std::collections::BTreeSet<&str> = declared.iter().copied().collect();
        assert_eq!(declared.len(), unique.len());
    }

    #[test]
    fn node_port_reaches_the_service_chain_through_its_external_chain() {
        let endpoint = SocketAddrV4::new(Ipv4Addr::new(10, 201, 2, 11), 5001);
        let w = Workload::new(3, 2, &pods()).with_node_port(30080, endpoint);
        let measured = w.services.last().expect("measured");
        let ipt = w.iptables_full();
        let ext = ext_chain(measured);
        assert!(ipt.contains(&format!(":{ext} - [0:0]")));
        assert!(ipt.contains(&format!("--dport 30080 -j {ext}\n")));
        assert!(ipt.contains(&format!("-A {ext} -j {}\n", svc_chain(measured))));
        assert!(ipt.contains(&format!("--to-destination {endpoint}\n")));
        let nft = w.nft_full();
        assert!(nft.contains(&format!(
            "tcp . 30080 : goto {}",
            nft_external_chain(measured)
        )));
        let v: serde_json::Value = serde_json::from_str(&w.services_file()).expect("json");
        let spec = &v["items"][6]["spec"];
        assert_eq!(spec["type"], "NodePort");
        assert_eq!(spec["ports"][0]["nodePort"], 30080);
        assert_eq!(spec["ports"][0]["targetPort"], 5001);
        assert_eq!(v["items"][7]["ports"][0]["port"], 5001);
    }

    #[test]
    fn services_file_is_json() {
        let w = Workload::new(3, 2, &pods());
        let v: serde_json::Value = serde_json::from_str(&w.services_file()).expect("json");
        assert_eq!(v["items"].as_array().map(Vec::len), Some(8));
        assert_eq!(v["items"][7]["endpoints"].as_array().map(Vec::len), Some(3));
    }
}
