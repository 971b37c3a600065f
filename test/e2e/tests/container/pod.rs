//! The DaemonSet's pod as podman runs it: `deploy/daemonset.yaml` read with
//! k8s-openapi's types and turned into `podman run` arguments, field by
//! field, the way a kubelet would hand them to its runtime. A field this
//! file does not know makes the test fail and name it, so the manifest
//! cannot gain a setting the test silently leaves out.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

use k8s_openapi::{
    api::{
        apps::v1::DaemonSet,
        core::v1::{Container, HostPathVolumeSource, PodSpec, Probe},
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use serde::Serialize;

/// What the test puts where the manifest takes something from the node.
pub struct Node {
    /// The manifest's `hostPath` paths, and the directories mounted instead.
    pub host_paths: BTreeMap<String, PathBuf>,
    /// `spec.nodeName`, for `fieldRef` environment variables.
    pub name: String,
    /// Read-only files mounted besides the manifest's volumes (host path,
    /// container path), with the environment that points at them.
    pub files: Vec<(PathBuf, String)>,
    pub env: Vec<(String, String)>,
    /// `--ulimit` arguments: the machine's own limits (see `ulimits`).
    pub ulimits: Vec<String>,
}

/// The pod template of the one DaemonSet in `deploy/daemonset.yaml`.
pub struct Manifest {
    pub pod: PodSpec,
}

impl Manifest {
    pub fn load() -> Self {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/daemonset.yaml");
        let text = fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("failed to read {}: {e}", path.display()));
        let daemon_set: DaemonSet = serde_saphyr::from_str(&text)
            .unwrap_or_else(|e| panic!("{} is not a DaemonSet: {e}", path.display()));
        let pod = daemon_set
            .spec
            .template
            .spec
            .expect("the DaemonSet has a pod template");
        only(
            &pod,
            &[
                // Scheduling and credentials: no scheduler here, and the
                // agent reads its API server from `Node::files`.
                "serviceAccountName",
                "priorityClassName",
                "tolerations",
                "nodeSelector",
                // Used below.
                "hostNetwork",
                "dnsPolicy",
                "terminationGracePeriodSeconds",
                "securityContext",
                "initContainers",
                "containers",
                "volumes",
            ],
            "the pod spec",
        );
        assert_eq!(
            pod.host_network,
            Some(true),
            "the test runs the pod on the host network only"
        );
        // podman's host network uses the host's resolv.conf, as `Default` does.
        assert_eq!(pod.dns_policy.as_deref(), Some("Default"));
        Self { pod }
    }

    /// The agent: the pod's one container.
    pub fn agent(&self) -> &Container {
        assert_eq!(self.pod.containers.len(), 1, "the pod runs one container");
        &self.pod.containers[0]
    }

    pub fn init_containers(&self) -> &[Container] {
        self.pod.init_containers.as_deref().unwrap_or_default()
    }

    pub fn grace_seconds(&self) -> u64 {
        self.pod
            .termination_grace_period_seconds
            .map_or(30, |s| u64::try_from(s).expect("a positive grace period"))
    }

    /// The port number a probe's or a port's name refers to.
    pub fn port(container: &Container, name: &str) -> u16 {
        let port = container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("container {} has no port {name:?}", container.name));
        u16::try_from(port.container_port).expect("a port number")
    }

    /// Where `path` in `container` is on the host: through the deepest
    /// volume mount holding it, to the directory `node` mounts there.
    pub fn host_path_of(&self, container: &Container, path: &Path, node: &Node) -> PathBuf {
        let mount = container
            .volume_mounts
            .iter()
            .flatten()
            .filter(|m| path.starts_with(&m.mount_path))
            .max_by_key(|m| m.mount_path.len())
            .unwrap_or_else(|| panic!("{} is on no volume of {}", path.display(), container.name));
        let host_path = &self.host_path(&mount.name).path;
        let source = node
            .host_paths
            .get(host_path)
            .unwrap_or_else(|| panic!("no stand-in for the host's {host_path}"));
        source.join(
            path.strip_prefix(&mount.mount_path)
                .expect("under the mount"),
        )
    }

    fn host_path(&self, volume: &str) -> &HostPathVolumeSource {
        let volume = self
            .pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == volume)
            .unwrap_or_else(|| panic!("volume {volume} is mounted, not declared"));
        only(
            volume,
            &["name", "hostPath"],
            &format!("volume {}", volume.name),
        );
        volume.host_path.as_ref().expect("a hostPath volume")
    }

    /// `podman run` arguments for `container`, up to and including the
    /// image and the container's arguments.
    pub fn run_args(&self, container: &Container, node: &Node, name: &str) -> Vec<String> {
        only(
            container,
            &[
                "name",
                "image",
                "imagePullPolicy",
                "command",
                "args",
                "env",
                "envFrom",
                "ports",
                "startupProbe",
                "livenessProbe",
                "readinessProbe",
                "resources",
                "securityContext",
                "volumeMounts",
            ],
            &format!("container {}", container.name),
        );
        let mut out = vec![
            format!("--name={name}"),
            "--pull=never".to_owned(),
            "--network=host".to_owned(),
        ];
        out.extend(node.ulimits.iter().cloned());
        out.extend(self.security(container));
        out.extend(env(container, node));
        out.extend(memory_limit(container));
        out.extend(self.volumes(container, node));
        for (host, path) in &node.files {
            out.push(format!("--volume={}:{path}:ro", host.display()));
        }
        if let Some(command) = &container.command {
            out.push(format!(
                "--entrypoint={}",
                serde_json::to_string(command).expect("json")
            ));
        }
        out.push(
            container
                .image
                .clone()
                .expect("the container names an image"),
        );
        out.extend(container.args.iter().flatten().cloned());
        out
    }

    /// The pod's and the container's security settings.
    fn security(&self, container: &Container) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(pod) = &self.pod.security_context {
            only(
                pod,
                &["appArmorProfile", "seLinuxOptions", "seccompProfile"],
                "the pod's securityContext",
            );
            match pod.app_armor_profile.as_ref().map(|p| p.type_.as_str()) {
                None | Some("RuntimeDefault") => {}
                Some("Unconfined") => out.push("--security-opt=apparmor=unconfined".to_owned()),
                Some(other) => panic!("appArmorProfile {other} is not run by this test"),
            }
            if let Some(se) = &pod.se_linux_options {
                for (key, value) in [
                    ("user", &se.user),
                    ("role", &se.role),
                    ("type", &se.type_),
                    ("level", &se.level),
                ] {
                    if let Some(value) = value {
                        out.push(format!("--security-opt=label={key}:{value}"));
                    }
                }
            }
            match pod.seccomp_profile.as_ref().map(|p| p.type_.as_str()) {
                // podman's default profile, as the runtime's default.
                None | Some("RuntimeDefault") => {}
                Some("Unconfined") => out.push("--security-opt=seccomp=unconfined".to_owned()),
                Some(other) => panic!("seccompProfile {other} is not run by this test"),
            }
        }
        let Some(sc) = &container.security_context else {
            return out;
        };
        only(
            sc,
            &[
                "privileged",
                "runAsUser",
                "readOnlyRootFilesystem",
                "allowPrivilegeEscalation",
                "capabilities",
            ],
            &format!("the securityContext of {}", container.name),
        );
        if sc.privileged == Some(true) {
            out.push("--privileged".to_owned());
        }
        if let Some(user) = sc.run_as_user {
            out.push(format!("--user={user}"));
        }
        if sc.read_only_root_filesystem == Some(true) {
            // Without podman's own tmpfs on /run and /tmp: Kubernetes adds none.
            out.extend([
                "--read-only".to_owned(),
                "--read-only-tmpfs=false".to_owned(),
            ]);
        }
        if sc.allow_privilege_escalation == Some(false) {
            out.push("--security-opt=no-new-privileges".to_owned());
        }
        if let Some(caps) = &sc.capabilities {
            for cap in caps.drop.iter().flatten() {
                out.push(format!("--cap-drop={}", capability(cap)));
            }
            for cap in caps.add.iter().flatten() {
                out.push(format!("--cap-add={}", capability(cap)));
            }
        }
        out
    }

    /// `--volume=HOST:PATH:OPTIONS` for each mount, from its hostPath volume.
    fn volumes(&self, container: &Container, node: &Node) -> Vec<String> {
        let mut out = Vec::new();
        for mount in container.volume_mounts.iter().flatten() {
            only(
                mount,
                &["name", "mountPath", "readOnly", "mountPropagation"],
                &format!("volumeMount {}", mount.name),
            );
            let host_path = self.host_path(&mount.name);
            let source = node.host_paths.get(&host_path.path).unwrap_or_else(|| {
                panic!(
                    "the pod mounts the host's {}: say in container.rs what the test mounts instead",
                    host_path.path
                )
            });
            match host_path.type_.as_deref() {
                Some("Directory") => assert!(
                    source.is_dir(),
                    "{} (for the host's {}) is not a directory",
                    source.display(),
                    host_path.path
                ),
                Some("DirectoryOrCreate") => fs::create_dir_all(source)
                    .unwrap_or_else(|e| panic!("mkdir {}: {e}", source.display())),
                other => panic!("hostPath type {other:?} is not run by this test"),
            }
            let propagation = match mount.mount_propagation.as_deref() {
                None | Some("None") => "rprivate",
                Some("HostToContainer") => "rslave",
                Some("Bidirectional") => "rshared",
                Some(other) => panic!("mountPropagation {other} is unknown"),
            };
            let access = if mount.read_only == Some(true) {
                "ro"
            } else {
                "rw"
            };
            out.push(format!(
                "--volume={}:{}:{access},{propagation}",
                source.display(),
                mount.mount_path
            ));
        }
        out
    }
}

/// A Kubernetes capability name (`BPF`, `ALL`) as podman takes it.
fn capability(name: &str) -> String {
    if name == "ALL" {
        "all".to_owned()
    } else {
        format!("CAP_{name}")
    }
}

/// An HTTP probe's path and port name.
pub fn http_probe(probe: Option<&Probe>, what: &str) -> (String, String) {
    let get = probe
        .and_then(|p| p.http_get.as_ref())
        .unwrap_or_else(|| panic!("the agent has no {what} httpGet probe"));
    let port = match &get.port {
        IntOrString::String(name) => name.clone(),
        IntOrString::Int(number) => {
            panic!("the {what} probe names its port by number ({number}), not by name")
        }
    };
    (get.path.clone().unwrap_or_else(|| "/".to_owned()), port)
}

fn env(container: &Container, node: &Node) -> Vec<String> {
    let mut out = Vec::new();
    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (Some(value), None) => value.clone(),
            (None, Some(from)) => {
                let field = from.field_ref.as_ref().unwrap_or_else(|| {
                    panic!("env {}: only fieldRef is run by this test", var.name)
                });
                assert_eq!(
                    field.field_path, "spec.nodeName",
                    "env {}: unknown fieldRef",
                    var.name
                );
                node.name.clone()
            }
            _ => panic!("env {} has no value", var.name),
        };
        out.push(format!("--env={}={value}", var.name));
    }
    // The optional ConfigMap (the API server's address without kube-proxy)
    // does not exist here, as beside kube-proxy.
    for from in container.env_from.iter().flatten() {
        let optional = from.config_map_ref.as_ref().and_then(|c| c.optional);
        assert_eq!(
            optional,
            Some(true),
            "envFrom other than an optional ConfigMap"
        );
    }
    out.extend(node.env.iter().map(|(k, v)| format!("--env={k}={v}")));
    out
}

/// `--memory` from `resources.limits.memory`; requests only schedule.
fn memory_limit(container: &Container) -> Vec<String> {
    let limits = container
        .resources
        .as_ref()
        .and_then(|r| r.limits.as_ref())
        .cloned()
        .unwrap_or_default();
    let mut out = Vec::new();
    for (resource, quantity) in limits {
        assert_eq!(
            resource, "memory",
            "limit {resource} is not run by this test"
        );
        out.push(format!("--memory={}", bytes(&quantity.0)));
    }
    out
}

/// A memory quantity (`512Mi`, `1Gi`, `1000000`) in bytes.
fn bytes(quantity: &str) -> u64 {
    let (digits, unit) = quantity
        .find(|c: char| !c.is_ascii_digit())
        .map_or((quantity, ""), |at| quantity.split_at(at));
    let scale: u64 = match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        _ => panic!("memory quantity {quantity:?}: unit {unit:?} is not run by this test"),
    };
    digits.parse::<u64>().expect("a quantity's digits") * scale
}

/// Panics if `object` sets a field outside `known`.
fn only(object: &impl Serialize, known: &[&str], what: &str) {
    let value = serde_json::to_value(object).expect("json");
    let unknown: Vec<&String> = value
        .as_object()
        .into_iter()
        .flat_map(|o| o.keys())
        .filter(|k| !known.contains(&k.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "deploy/daemonset.yaml sets {unknown:?} in {what}, which test/e2e/tests/container/pod.rs \
         does not pass to podman: teach it, so that the test runs what the manifest says"
    );
}

#[test]
fn memory_quantities() {
    assert_eq!(bytes("512Mi"), 512 << 20);
    assert_eq!(bytes("2Gi"), 2 << 30);
    assert_eq!(bytes("1000"), 1000);
}

/// What this file does not know is refused, not dropped.
#[test]
#[should_panic(expected = "workingDir")]
fn an_unknown_container_field_is_refused() {
    let manifest = Manifest::load();
    let mut agent = manifest.agent().clone();
    agent.working_dir = Some("/".to_owned());
    manifest.run_args(
        &agent,
        &Node {
            host_paths: BTreeMap::new(),
            name: String::new(),
            files: Vec::new(),
            env: Vec::new(),
            ulimits: Vec::new(),
        },
        "x",
    );
}
