//! The deployment in `deploy/` checked against the agent, without a cluster
//! and without root: every YAML document is a kind we ship and parses into
//! its k8s-openapi type with no field left over (a misspelt field would be
//! dropped without a word by `kubectl apply`), the `ClusterRole` grants exactly
//! what the agent's watchers use, and the `DaemonSet` gives the agent what it
//! checks for at start and passes only flags `lb-agent run` accepts.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
};

use k8s_openapi::{
    Resource,
    api::{
        apps::v1::DaemonSet,
        core::v1::{Container, PodSpec, ServiceAccount, Volume},
        rbac::v1::{ClusterRole, ClusterRoleBinding},
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::{Value, json};

/// What the watchers need on each resource they watch
/// (`lb_agent::source::kube::WATCHED`).
const READ_VERBS: [&str; 3] = ["get", "list", "watch"];

/// Where the agent only mounts bpffs itself, and where the host has it.
const BPFFS: &str = "/sys/fs/bpf";
/// The cgroup2 root of the host, on unified and on hybrid hosts.
const HOST_CGROUP2: [&str; 2] = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"];

const IMAGE: &str = "ghcr.io/lb-agent/lb-agent";

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

// ---------------------------------------------------------------------------
// Loading

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Kustomization {
    api_version: String,
    kind: String,
    resources: Vec<String>,
    #[serde(default)]
    images: Vec<KustomizeImage>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct KustomizeImage {
    name: String,
    new_name: Option<String>,
    new_tag: Option<String>,
}

/// Every object in `deploy/`, by type.
#[derive(Default)]
struct Deployment {
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    bindings: Vec<ClusterRoleBinding>,
    daemon_sets: Vec<DaemonSet>,
    kustomizations: Vec<Kustomization>,
    /// The YAML files, relative to `deploy/`.
    files: BTreeSet<String>,
}

impl Deployment {
    /// Reads every `.yaml`/`.yml` file under `deploy/`; panics with every
    /// problem found.
    fn load() -> Self {
        let mut deployment = Self::default();
        let mut problems = Vec::new();
        for path in yaml_files(&deploy_dir()) {
            let name = path
                .strip_prefix(deploy_dir())
                .expect("found under deploy/")
                .to_string_lossy()
                .into_owned();
            let text = fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("failed to read {}: {e}", path.display()));
            let documents = match serde_saphyr::from_multiple::<Value>(&text) {
                Ok(d) => d,
                Err(e) => {
                    problems.push(format!("deploy/{name}: not YAML: {e}"));
                    continue;
                }
            };
            for (i, document) in documents.into_iter().enumerate() {
                if document.is_null() {
                    continue;
                }
                let origin = format!("deploy/{name}, document {}", i + 1);
                if let Err(e) = deployment.add(&origin, document) {
                    problems.push(e);
                }
            }
            deployment.files.insert(name);
        }
        assert!(
            problems.is_empty(),
            "deploy/ has problems:\n  {}",
            problems.join("\n  ")
        );
        deployment
    }

    /// Adds one document, parsed into the type its apiVersion and kind name.
    fn add(&mut self, origin: &str, document: Value) -> Result<(), String> {
        let api_version = document["apiVersion"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let kind = document["kind"].as_str().unwrap_or_default().to_owned();
        let (api_version, kind) = (api_version.as_str(), kind.as_str());
        if is::<ServiceAccount>(api_version, kind) {
            self.service_accounts.push(typed(origin, &document)?);
        } else if is::<ClusterRole>(api_version, kind) {
            self.cluster_roles.push(typed(origin, &document)?);
        } else if is::<ClusterRoleBinding>(api_version, kind) {
            self.bindings.push(typed(origin, &document)?);
        } else if is::<DaemonSet>(api_version, kind) {
            self.daemon_sets.push(typed(origin, &document)?);
        } else if (api_version, kind) == ("kustomize.config.k8s.io/v1beta1", "Kustomization") {
            let k = serde_path_to_error::deserialize(document)
                .map_err(|e| format!("{origin}: {} (at {})", e.inner(), e.path()))?;
            self.kustomizations.push(k);
        } else {
            return Err(format!(
                "{origin}: unknown kind {kind:?} of {api_version:?}; this test knows ServiceAccount, ClusterRole, \
                 ClusterRoleBinding, DaemonSet and Kustomization (teach it a new kind together with its checks)"
            ));
        }
        Ok(())
    }

    fn service_account(&self) -> &ServiceAccount {
        one(&self.service_accounts, "ServiceAccount")
    }

    fn cluster_role(&self) -> &ClusterRole {
        one(&self.cluster_roles, "ClusterRole")
    }

    fn binding(&self) -> &ClusterRoleBinding {
        one(&self.bindings, "ClusterRoleBinding")
    }

    fn daemon_set(&self) -> &DaemonSet {
        one(&self.daemon_sets, "DaemonSet")
    }

    fn pod(&self) -> &PodSpec {
        self.daemon_set()
            .spec
            .template
            .spec
            .as_ref()
            .expect("the DaemonSet has a pod template")
    }

    fn agent(&self) -> &Container {
        let pod = self.pod();
        assert_eq!(
            pod.containers.len(),
            1,
            "the DaemonSet runs one container, the agent"
        );
        &pod.containers[0]
    }

    fn init_containers(&self) -> &[Container] {
        self.pod().init_containers.as_deref().unwrap_or_default()
    }

    fn volume(&self, name: &str) -> &Volume {
        self.pod()
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == name)
            .unwrap_or_else(|| panic!("the pod mounts volume {name:?} but does not declare it"))
    }

    fn agent_args(&self) -> Args {
        Args::parse(self.agent().args.as_deref().unwrap_or_default())
    }
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let entries =
        fs::read_dir(dir).unwrap_or_else(|e| panic!("failed to read {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("readable directory entry").path();
        if path.is_dir() {
            out.extend(yaml_files(&path));
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
    out.sort();
    out
}

fn is<K: Resource>(api_version: &str, kind: &str) -> bool {
    api_version == K::API_VERSION && kind == K::KIND
}

/// Parses `document` into `K`, then checks that serializing `K` gives the
/// document back: anything `K` does not know (a misspelt or misplaced
/// field) is reported with its path.
fn typed<K: Resource + DeserializeOwned + Serialize>(
    origin: &str,
    document: &Value,
) -> Result<K, String> {
    let object: K = serde_path_to_error::deserialize(document.clone()).map_err(|e| {
        format!(
            "{origin}: not a valid {}: {} (at {})",
            K::KIND,
            e.inner(),
            e.path()
        )
    })?;
    let back = serde_json::to_value(&object).map_err(|e| format!("{origin}: {e}"))?;
    let mut differences = Vec::new();
    compare(document, &back, "", &mut differences);
    if differences.is_empty() {
        Ok(object)
    } else {
        Err(format!(
            "{origin} ({}):\n    {}",
            K::KIND,
            differences.join("\n    ")
        ))
    }
}

fn compare(original: &Value, round_trip: &Value, path: &str, out: &mut Vec<String>) {
    match (original, round_trip) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in a {
                let here = format!("{path}.{key}");
                match b.get(key) {
                    Some(other) => compare(value, other, &here, out),
                    None => out.push(format!("{here}: unknown field (misspelt or misplaced?)")),
                }
            }
            for key in b.keys().filter(|k| !a.contains_key(*k)) {
                out.push(format!("{path}.{key}: added by the type"));
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                compare(x, y, &format!("{path}[{i}]"), out);
            }
        }
        _ if original == round_trip => {}
        _ => out.push(format!("{path}: {original} reads back as {round_trip}")),
    }
}

fn one<'a, T>(items: &'a [T], what: &str) -> &'a T {
    assert_eq!(
        items.len(),
        1,
        "deploy/ must hold exactly one {what}, found {}",
        items.len()
    );
    &items[0]
}

/// `lb-agent` arguments: the subcommand, then `--flag=value`, `--flag value`
/// or `--flag`.
#[derive(Debug)]
struct Args {
    subcommand: String,
    flags: BTreeMap<String, Option<String>>,
}

impl Args {
    fn parse(args: &[String]) -> Self {
        let (subcommand, rest) = args.split_first().expect("the agent container has args");
        let mut flags = BTreeMap::new();
        let mut rest = rest.iter().peekable();
        while let Some(arg) = rest.next() {
            let flag = arg
                .strip_prefix("--")
                .unwrap_or_else(|| panic!("agent argument {arg:?} is not a --flag"));
            let (name, value) = match flag.split_once('=') {
                Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
                None => (
                    flag.to_owned(),
                    rest.next_if(|next| !next.starts_with("--")).cloned(),
                ),
            };
            assert!(
                flags.insert(name.clone(), value).is_none(),
                "--{name} is passed twice"
            );
        }
        Self {
            subcommand: subcommand.clone(),
            flags,
        }
    }

    fn value(&self, name: &str) -> Option<&str> {
        self.flags.get(name).and_then(|v| v.as_deref())
    }
}

fn lb_agent(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_lb-agent"))
        .args(args)
        .env_remove("NODE_NAME")
        .output()
        .expect("failed to run the lb-agent binary")
}

/// Whether clap's help text lists `--name` (and not only a longer flag
/// that starts with it).
fn help_lists(help: &str, name: &str) -> bool {
    let needle = format!("--{name}");
    help.match_indices(&needle).any(|(at, _)| {
        help[at + needle.len()..]
            .chars()
            .next()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '-'))
    })
}

fn host_path<'a>(deployment: &'a Deployment, volume: &str) -> &'a str {
    &deployment
        .volume(volume)
        .host_path
        .as_ref()
        .unwrap_or_else(|| panic!("volume {volume:?} is not a hostPath"))
        .path
}

/// The help text of one flag: from `--name` to the next flag.
fn help_entry<'a>(help: &'a str, name: &str) -> &'a str {
    let start = help
        .find(&format!("--{name} "))
        .unwrap_or_else(|| panic!("`lb-agent run --help` has no --{name}"));
    let entry = &help[start..];
    let end = entry
        .find("\n      --")
        .or_else(|| entry.find("\n  -"))
        .unwrap_or(entry.len());
    &entry[..end]
}

/// The deepest mount of `container` that holds `path`.
fn mount_holding<'a>(
    container: &'a Container,
    path: &str,
) -> &'a k8s_openapi::api::core::v1::VolumeMount {
    container
        .volume_mounts
        .iter()
        .flatten()
        .filter(|m| Path::new(path).starts_with(&m.mount_path))
        .max_by_key(|m| m.mount_path.len())
        .unwrap_or_else(|| panic!("{path} is on no volume of container {}", container.name))
}

fn is_privileged(container: &Container) -> bool {
    container
        .security_context
        .as_ref()
        .and_then(|s| s.privileged)
        == Some(true)
}

// ---------------------------------------------------------------------------
// The loader itself

#[test]
fn loader_reports_unknown_fields_and_kinds() {
    let mut deployment = Deployment::default();
    let misspelt = json!({
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": "x"},
        "spec": {
            "selector": {},
            "template": {"spec": {"hostNetwrok": true, "containers": [{"name": "a", "imagePullPolicy": "Always"}]}}
        }
    });
    let err = deployment
        .add("test", misspelt)
        .expect_err("a misspelt field must fail");
    assert!(
        err.contains(".spec.template.spec.hostNetwrok: unknown field"),
        "{err}"
    );

    let misplaced = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "x"}, "rules": []});
    let err = deployment
        .add("test", misplaced)
        .expect_err("a field of another kind must fail");
    assert!(err.contains(".rules: unknown field"), "{err}");

    let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x"}});
    let err = deployment
        .add("test", secret)
        .expect_err("an unknown kind must fail");
    assert!(err.contains("unknown kind \"Secret\""), "{err}");

    let wrong_type = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": 3}});
    assert!(
        deployment.add("test", wrong_type).is_err(),
        "a number where a string goes must fail"
    );

    let kustomization = json!({"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "resources": [], "resource": []});
    assert!(
        deployment.add("test", kustomization).is_err(),
        "a misspelt kustomization field must fail"
    );
}

// ---------------------------------------------------------------------------
// deploy/ as a whole

#[test]
fn every_document_parses_into_its_type_with_no_unknown_field() {
    let deployment = Deployment::load();
    // One of each: what `kubectl apply -k deploy/` creates.
    deployment.service_account();
    deployment.cluster_role();
    deployment.binding();
    deployment.daemon_set();
    one(&deployment.kustomizations, "Kustomization");
}

#[test]
fn kustomization_lists_every_manifest_and_the_image_in_use() {
    let deployment = Deployment::load();
    let kustomization = one(&deployment.kustomizations, "Kustomization");
    assert_eq!(kustomization.api_version, "kustomize.config.k8s.io/v1beta1");
    assert_eq!(kustomization.kind, "Kustomization");
    let listed: BTreeSet<String> = kustomization.resources.iter().cloned().collect();
    assert_eq!(
        listed.len(),
        kustomization.resources.len(),
        "a resource is listed twice"
    );
    let manifests: BTreeSet<String> = deployment
        .files
        .iter()
        .filter(|f| f.as_str() != "kustomization.yaml")
        .cloned()
        .collect();
    assert_eq!(
        listed, manifests,
        "kustomization.yaml must list every manifest in deploy/, and only those"
    );

    let version = env!("CARGO_PKG_VERSION");
    let pod = deployment.pod();
    for container in pod.containers.iter().chain(deployment.init_containers()) {
        assert_eq!(
            container.image.as_deref(),
            Some(format!("{IMAGE}:{version}").as_str()),
            "container {} must run the image of this version of lb-agent",
            container.name
        );
    }
    for image in &kustomization.images {
        assert_eq!(
            image.name, IMAGE,
            "kustomization.yaml rewrites an image the DaemonSet does not use"
        );
        if let Some(tag) = &image.new_tag {
            assert_eq!(
                tag, version,
                "kustomization.yaml deploys another version than this one"
            );
        }
        assert!(
            image.new_name.is_none(),
            "the published image name stays in deploy/; use an overlay for yours"
        );
    }
}

#[test]
fn cluster_role_grants_exactly_what_the_watchers_use() {
    let deployment = Deployment::load();
    let role = deployment.cluster_role();
    assert!(
        role.aggregation_rule.is_none(),
        "the ClusterRole must not aggregate other roles"
    );
    let mut granted = BTreeSet::new();
    for rule in role.rules.iter().flatten() {
        assert!(
            rule.non_resource_urls.is_none(),
            "no non-resource URLs: {rule:?}"
        );
        assert!(
            rule.resource_names.is_none(),
            "the watchers list, so resourceNames cannot apply: {rule:?}"
        );
        let groups = rule.api_groups.as_deref().unwrap_or_default();
        let resources = rule.resources.as_deref().unwrap_or_default();
        for field in groups.iter().chain(resources).chain(&rule.verbs) {
            assert!(!field.contains('*'), "no wildcards: {rule:?}");
        }
        for group in groups {
            for resource in resources {
                for verb in &rule.verbs {
                    granted.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    let wanted: BTreeSet<(String, String, String)> = lb_agent::source::kube::WATCHED
        .iter()
        .flat_map(|w| {
            READ_VERBS.iter().map(|verb| {
                (
                    w.group.to_owned(),
                    w.resource.to_owned(),
                    (*verb).to_owned(),
                )
            })
        })
        .collect();
    let extra: Vec<_> = granted.difference(&wanted).collect();
    let missing: Vec<_> = wanted.difference(&granted).collect();
    assert!(
        extra.is_empty() && missing.is_empty(),
        "the ClusterRole must grant get/list/watch on services, endpointslices and nodes and nothing else;\n  \
         granted beyond that (group, resource, verb): {extra:?}\n  missing: {missing:?}"
    );
}

#[test]
fn binding_gives_the_role_to_the_daemon_sets_service_account() {
    let deployment = Deployment::load();
    let account = deployment.service_account();
    let account_name = account
        .metadata
        .name
        .as_deref()
        .expect("the ServiceAccount has a name");
    let account_namespace = account.metadata.namespace.as_deref();
    assert_eq!(account_namespace, Some("kube-system"));
    assert_ne!(
        account.automount_service_account_token,
        Some(false),
        "the agent needs its token"
    );

    let binding = deployment.binding();
    let role = deployment.cluster_role();
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(
        binding.role_ref.api_group.as_deref(),
        Some("rbac.authorization.k8s.io")
    );
    assert_eq!(
        Some(binding.role_ref.name.as_str()),
        role.metadata.name.as_deref()
    );
    let subjects = binding.subjects.as_deref().unwrap_or_default();
    assert_eq!(
        subjects.len(),
        1,
        "the role is bound to the agent only: {subjects:?}"
    );
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(subjects[0].name, account_name);
    assert_eq!(subjects[0].namespace.as_deref(), account_namespace);

    let daemon_set = deployment.daemon_set();
    assert_eq!(daemon_set.metadata.namespace.as_deref(), account_namespace);
    let pod = deployment.pod();
    assert_eq!(pod.service_account_name.as_deref(), Some(account_name));
    assert_ne!(
        pod.automount_service_account_token,
        Some(false),
        "the agent needs its token"
    );
}

// ---------------------------------------------------------------------------
// The DaemonSet

#[test]
fn daemon_set_runs_on_every_node_on_the_host_network() {
    let deployment = Deployment::load();
    let pod = deployment.pod();
    assert_eq!(
        pod.host_network,
        Some(true),
        "hostNetwork: the metrics port on the node, the API server without a ClusterIP"
    );
    // Cluster DNS is behind a ClusterIP the agent translates itself.
    assert_eq!(
        pod.dns_policy.as_deref(),
        Some("Default"),
        "with hostNetwork, use the node's resolver"
    );
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    let tolerates_all = pod.tolerations.iter().flatten().any(|t| {
        t.operator.as_deref() == Some("Exists")
            && t.key.is_none()
            && t.effect.is_none()
            && t.value.is_none()
    });
    assert!(
        tolerates_all,
        "a toleration with only `operator: Exists` runs the agent on every node: {:?}",
        pod.tolerations
    );

    let spec = &deployment.daemon_set().spec;
    let strategy = spec
        .update_strategy
        .as_ref()
        .expect("an explicit updateStrategy");
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    let rolling = strategy
        .rolling_update
        .as_ref()
        .expect("rollingUpdate parameters");
    assert_eq!(rolling.max_unavailable, Some(IntOrString::Int(1)));
    assert_eq!(
        rolling.max_surge,
        Some(IntOrString::Int(0)),
        "two agents on a node would share pins and port"
    );

    // The agent leaves the data path attached on exit, on purpose; a
    // preStop hook (say, `lb-agent cleanup`) would detach it on every rollout.
    let agent = deployment.agent();
    assert!(
        agent
            .lifecycle
            .as_ref()
            .and_then(|l| l.pre_stop.as_ref())
            .is_none(),
        "no preStop hook"
    );
}

#[test]
fn agent_gets_its_node_name_and_may_get_the_api_servers_address() {
    let deployment = Deployment::load();
    let agent = deployment.agent();
    let env: Vec<_> = agent
        .env
        .iter()
        .flatten()
        .filter(|e| e.name == "NODE_NAME")
        .collect();
    assert_eq!(env.len(), 1, "NODE_NAME is set once");
    let field = env[0]
        .value_from
        .as_ref()
        .and_then(|v| v.field_ref.as_ref())
        .expect("NODE_NAME comes from the downward API");
    assert_eq!(field.field_path, "spec.nodeName");
    let args = deployment.agent_args();
    assert!(
        !args.flags.contains_key("node-name"),
        "--node-name comes from NODE_NAME, not from the args"
    );

    // The flag really reads that variable.
    let help = String::from_utf8_lossy(&lb_agent(&["run", "--help"]).stdout).into_owned();
    let entry = help_entry(&help, "node-name");
    assert!(
        entry.contains("[env: NODE_NAME"),
        "--node-name must read NODE_NAME:\n{entry}"
    );

    // The API server's address: optional, so that beside kube-proxy nothing is needed.
    let overrides: Vec<_> = agent
        .env_from
        .iter()
        .flatten()
        .filter_map(|e| e.config_map_ref.as_ref())
        .collect();
    assert_eq!(
        overrides.len(),
        1,
        "one ConfigMap may override KUBERNETES_SERVICE_HOST/PORT"
    );
    assert_eq!(
        overrides[0].optional,
        Some(true),
        "the API server ConfigMap is optional"
    );
}

#[test]
fn agent_args_are_flags_lb_agent_run_accepts() {
    let deployment = Deployment::load();
    let agent = deployment.agent();
    let command = agent.command.as_deref().unwrap_or_default();
    assert_eq!(
        command.len(),
        1,
        "the agent runs the binary itself: {command:?}"
    );
    assert_eq!(
        Path::new(&command[0]).file_name().and_then(|n| n.to_str()),
        Some("lb-agent")
    );
    let dockerfile =
        fs::read_to_string(deploy_dir().join("Dockerfile")).expect("deploy/Dockerfile");
    assert!(
        dockerfile
            .lines()
            .any(|l| l.starts_with("COPY") && l.trim_end().ends_with(&format!(" {}", command[0]))),
        "deploy/Dockerfile must install the binary at {}",
        command[0]
    );

    let args = deployment.agent_args();
    assert_eq!(args.subcommand, "run");
    assert!(
        !args.flags.contains_key("services-file"),
        "in a cluster the agent watches the API, not a file"
    );
    let out = lb_agent(&["run", "--help"]);
    assert!(
        out.status.success(),
        "`lb-agent run --help` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let help = String::from_utf8_lossy(&out.stdout);
    for name in args.flags.keys() {
        assert!(
            help_lists(&help, name),
            "`lb-agent run` has no --{name}:\n{help}"
        );
    }
    // And clap accepts them with their values: it parses every argument
    // before the trailing --help, and fails on a bad one.
    let all: Vec<&str> = agent
        .args
        .iter()
        .flatten()
        .map(String::as_str)
        .chain(["--help"])
        .collect();
    let out = lb_agent(&all);
    assert!(
        out.status.success(),
        "`lb-agent {}` is refused: {}",
        all.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    // The same way fails when it should.
    assert!(
        !lb_agent(&["run", "--metrics-addr=nowhere", "--help"])
            .status
            .success()
    );
    assert!(
        !lb_agent(&["run", "--no-such-flag", "--help"])
            .status
            .success()
    );
}

#[test]
fn agent_attaches_to_the_hosts_cgroup2_root_and_pins_on_the_hosts_bpffs() {
    let deployment = Deployment::load();
    let agent = deployment.agent();
    let args = deployment.agent_args();

    // cgroup: inside the container, /proc/self/mountinfo shows the
    // container's own cgroup namespace, so the default would attach to the
    // agent's own cgroup. --cgroup must name the host's root, mounted.
    let cgroup = args.value("cgroup").expect(
        "--cgroup must name the host's cgroup2 root (the default finds the container's own cgroup)",
    );
    let on = mount_holding(agent, cgroup);
    assert_eq!(
        on.mount_path, cgroup,
        "--cgroup is the mount itself, the root of the host's tree"
    );
    let host = host_path(&deployment, &on.name);
    assert!(
        HOST_CGROUP2.contains(&host),
        "--cgroup {cgroup} is hostPath {host}, not one of {HOST_CGROUP2:?}"
    );
    assert_eq!(
        on.read_only,
        Some(true),
        "attaching needs only an open directory"
    );

    // bpffs: the agent only mounts bpffs at /sys/fs/bpf, inside its own
    // mount namespace, where pins die with the container. The host's
    // bpffs must be there instead.
    let bpffs = args.value("bpffs").unwrap_or("/sys/fs/bpf/lb");
    assert!(
        Path::new(bpffs).starts_with(BPFFS),
        "--bpffs {bpffs} must be under {BPFFS}"
    );
    let on = mount_holding(agent, bpffs);
    assert_eq!(on.mount_path, BPFFS);
    assert_eq!(
        host_path(&deployment, &on.name),
        BPFFS,
        "the host's {BPFFS}"
    );
    assert_eq!(
        on.mount_propagation.as_deref(),
        Some("HostToContainer"),
        "the agent must see the bpffs mounted on the host after the container was created"
    );

    // Something makes sure the host's /sys/fs/bpf is bpffs, and can only do
    // so with a mount propagated to the host.
    let mounter = deployment
        .init_containers()
        .iter()
        .find(|c| {
            c.volume_mounts.iter().flatten().any(|m| {
                m.name == on.name
                    && m.mount_path == BPFFS
                    && m.mount_propagation.as_deref() == Some("Bidirectional")
            })
        })
        .expect("an init container mounts the host's /sys/fs/bpf with Bidirectional propagation");
    let script = mounter
        .args
        .iter()
        .flatten()
        .chain(mounter.command.iter().flatten())
        .cloned()
        .collect::<String>();
    assert!(
        script.contains("mount -t bpf bpf /sys/fs/bpf"),
        "{} must mount bpffs: {script}",
        mounter.name
    );
}

#[test]
fn agent_sees_the_hosts_pinned_network_namespaces() {
    // Pods' sockets live in their own namespaces, which the runtime pins
    // under a directory of the host; the agent searches the directories of
    // --netns-dir (by default those it knows runtimes use).
    let deployment = Deployment::load();
    let agent = deployment.agent();
    let args = deployment.agent_args();
    let searched: Vec<&str> = args
        .value("netns-dir")
        .map_or_else(|| lb_agent::sockets::NETNS_DIRS.to_vec(), |d| vec![d]);
    let on = agent
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| searched.contains(&m.mount_path.as_str()))
        .unwrap_or_else(|| panic!("no volume is mounted at a searched directory {searched:?}"));
    assert!(
        lb_agent::sockets::NETNS_DIRS.contains(&host_path(&deployment, &on.name)),
        "the mount must be the host's directory of pinned namespaces"
    );
    assert_eq!(
        on.mount_propagation.as_deref(),
        Some("HostToContainer"),
        "namespaces pinned after the container started must appear in it"
    );
}

#[test]
fn bidirectional_mounts_are_only_in_privileged_containers() {
    // The API server refuses anything else ("Bidirectional mount propagation
    // is available only to privileged containers").
    let deployment = Deployment::load();
    let pod = deployment.pod();
    for container in pod.containers.iter().chain(deployment.init_containers()) {
        for m in container.volume_mounts.iter().flatten() {
            if m.mount_propagation.as_deref() == Some("Bidirectional") {
                assert!(
                    is_privileged(container),
                    "{} mounts {} Bidirectional but is not privileged",
                    container.name,
                    m.name
                );
            }
        }
    }
}

#[test]
fn agent_holds_exactly_the_capabilities_it_checks_for() {
    let deployment = Deployment::load();
    let agent = deployment.agent();
    let security = agent
        .security_context
        .as_ref()
        .expect("the agent has a securityContext");
    assert_eq!(
        security.privileged,
        Some(false),
        "the agent runs with listed capabilities, not privileged"
    );
    // Added capabilities are effective for root only (no ambient set).
    assert!(
        security.run_as_user.is_none_or(|u| u == 0),
        "the agent runs as root"
    );
    assert_ne!(
        security.run_as_non_root,
        Some(true),
        "the agent runs as root"
    );

    let capabilities = security
        .capabilities
        .as_ref()
        .expect("the agent lists its capabilities");
    let normalize = |c: &String| c.strip_prefix("CAP_").unwrap_or(c).to_owned();
    let dropped: BTreeSet<String> = capabilities.drop.iter().flatten().map(normalize).collect();
    assert_eq!(
        dropped,
        BTreeSet::from(["ALL".to_owned()]),
        "drop everything, then add what is needed"
    );
    let added: BTreeSet<String> = capabilities.add.iter().flatten().map(normalize).collect();
    assert_eq!(
        added,
        lb_agent::system::CAPABILITIES
            .iter()
            .map(|c| c.name.to_owned())
            .collect::<BTreeSet<_>>()
    );
    // What `system::check_privileges` demands.
    let has = |c: &str| added.contains(c);
    assert!(
        has("SYS_ADMIN") && has("NET_ADMIN") && (has("BPF") || has("SYS_ADMIN")),
        "the agent refuses to start without SYS_ADMIN, NET_ADMIN and BPF (or SYS_ADMIN)"
    );

    // The default AppArmor profiles deny creating files under /sys/fs/, that
    // is the pins.
    let pod_profile = deployment
        .pod()
        .security_context
        .as_ref()
        .and_then(|s| s.app_armor_profile.as_ref());
    let profile = security.app_armor_profile.as_ref().or(pod_profile);
    assert_eq!(
        profile.map(|p| p.type_.as_str()),
        Some("Unconfined"),
        "AppArmor would stop the agent pinning"
    );
}

#[test]
fn probes_and_port_match_the_metrics_address() {
    let deployment = Deployment::load();
    let agent = deployment.agent();
    let args = deployment.agent_args();
    let addr: SocketAddr = args
        .value("metrics-addr")
        .expect("--metrics-addr: the default 127.0.0.1 is out of reach of kubelet's probes")
        .parse()
        .expect("--metrics-addr is an address and port");
    assert!(
        addr.ip().is_unspecified(),
        "kubelet probes the pod IP, the node's on the host network: {addr}"
    );

    let ports = agent.ports.as_deref().unwrap_or_default();
    let port = ports
        .iter()
        .find(|p| p.container_port == i32::from(addr.port()))
        .expect("the metrics port is declared");
    assert_eq!(
        port.host_port,
        Some(port.container_port),
        "on the host network the port is the node's"
    );
    let name = port.name.as_deref().expect("the metrics port is named");

    let check = |probe: Option<&k8s_openapi::api::core::v1::Probe>, what: &str, path: &str| {
        let get = probe
            .and_then(|p| p.http_get.as_ref())
            .unwrap_or_else(|| panic!("the agent has an HTTP {what} probe"));
        assert_eq!(get.path.as_deref(), Some(path), "{what} probe path");
        assert!(
            get.port == IntOrString::String(name.to_owned())
                || get.port == IntOrString::Int(i32::from(addr.port())),
            "{what} probe port {:?} is not the metrics port",
            get.port
        );
        assert!(get.host.is_none(), "{what} probe goes to the pod IP");
    };
    check(agent.liveness_probe.as_ref(), "liveness", "/healthz");
    check(agent.readiness_probe.as_ref(), "readiness", "/readyz");
    check(agent.startup_probe.as_ref(), "startup", "/healthz");

    let annotations = deployment
        .daemon_set()
        .spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.as_ref());
    if let Some(scrape_port) = annotations.and_then(|a| a.get("prometheus.io/port")) {
        assert_eq!(scrape_port, &addr.port().to_string());
    }
}

#[test]
fn every_container_has_requests_and_a_memory_limit() {
    let deployment = Deployment::load();
    let pod = deployment.pod();
    for container in pod.containers.iter().chain(deployment.init_containers()) {
        let resources = container
            .resources
            .as_ref()
            .unwrap_or_else(|| panic!("{} has no resources", container.name));
        let requests = resources.requests.as_ref();
        for what in ["cpu", "memory"] {
            assert!(
                requests.is_some_and(|r| r.contains_key(what)),
                "{} requests no {what}",
                container.name
            );
        }
        assert!(
            resources
                .limits
                .as_ref()
                .is_some_and(|l| l.contains_key("memory")),
            "{} has no memory limit",
            container.name
        );
    }
}
