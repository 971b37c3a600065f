//! `cargo xtask image`: the agent's container image, from `deploy/Dockerfile`,
//! on a machine that reaches no image registry.
//!
//! The Dockerfile's `prebuilt` target on a Debian base made here: mmdebstrap
//! builds a minimal root filesystem of this machine's Debian release from
//! packages (the release the binary's glibc comes from), `podman import`
//! makes it the base image, and the binary is the one `cargo xtask build
//! --release` makes. The image is written to `target/image/` as an OCI
//! archive and loaded from it into the local store, under the name
//! `deploy/daemonset.yaml` runs (the container test reads it from there).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{
    build, setup,
    util::{cmd_output, is_root, run_cmd, workspace_root},
};

/// The name `deploy/daemonset.yaml` (and `kustomization.yaml`) give the image.
const NAME: &str = "ghcr.io/lb-agent/lb-agent";

/// mmdebstrap's hook that makes `/bin`, `/lib`, ... links into `/usr` the
/// way Debian's images have them, instead of installing `usrmerge` (which
/// pulls in perl: 45 MB).
const MERGED_USR_HOOK: &str = "/usr/share/mmdebstrap/hooks/merged-usr";

/// The host's Debian sources, if it has them in this form: the base comes
/// from the same mirrors (and security updates) as the machine's packages.
const DEBIAN_SOURCES: &str = "/etc/apt/sources.list.d/debian.sources";

#[derive(clap::Args, Default)]
pub struct Args {
    /// Make the Debian base image anew (mmdebstrap, a minute or two) even
    /// if the local store has one, e.g. to pick up security updates.
    #[arg(long)]
    pub fresh_base: bool,
}

/// What [`build`] made.
pub struct Built {
    /// `NAME:VERSION`, in the local store.
    pub reference: String,
    pub archive: PathBuf,
    /// The image's size in the store (uncompressed layers), bytes.
    pub size: u64,
}

impl Built {
    /// One line for summaries.
    pub fn summary(&self) -> String {
        format!(
            "{} ({} MB; archive {}, {} MB)",
            self.reference,
            self.size / 1_000_000,
            self.archive.display(),
            fs::metadata(&self.archive).map_or(0, |m| m.len()) / 1_000_000,
        )
    }
}

pub fn run(args: &Args) -> Result<()> {
    let built = build(args)?;
    eprintln!("image: {}", built.summary());
    Ok(())
}

/// Builds the image, writes the archive, loads it, and checks that the
/// binary runs in it.
pub fn build(args: &Args) -> Result<Built> {
    ensure!(
        is_root(),
        "building the image needs root (podman's store, mmdebstrap): run `sudo -E cargo xtask image`"
    );
    // runc: crun, podman's first choice, refuses hybrid cgroup layouts;
    // mmdebstrap: the base image, as none can be pulled.
    setup::ensure(&[setup::Need::Image])?;
    let started = Instant::now();
    let agent = build::run(&build::Args { release: true })?.agent;
    eprintln!("image: release build done after {:.0?}", started.elapsed());
    let dir = workspace_root().join("target/image");
    fs::create_dir_all(&dir).with_context(|| format!("failed to create {}", dir.display()))?;
    let base = ensure_base(&dir, args.fresh_base)?;

    // The context holds the binary and nothing else: the stage `prebuilt`
    // copies `lb-agent` from its root. Without its debug sections (75 of
    // 95 MB, mostly the standard library's); the symbols stay, so panics
    // and perf still name functions. target/release keeps the whole binary.
    let context = dir.join("context");
    let _ = fs::remove_dir_all(&context);
    fs::create_dir_all(&context)
        .with_context(|| format!("failed to create {}", context.display()))?;
    run_cmd(
        Command::new("objcopy")
            .arg("--strip-debug")
            .arg(&agent)
            .arg(context.join("lb-agent")),
    )?;

    let version = env!("CARGO_PKG_VERSION");
    let reference = format!("{NAME}:{version}");
    let previous = image_id(&reference).ok();
    let dockerfile = workspace_root().join("deploy/Dockerfile");
    eprintln!("image: building {reference} from {}", dockerfile.display());
    // The host's network for the RUN steps (apt-get): no podman network is
    // set up, so nothing is added to the machine's firewall.
    run_cmd(
        podman()
            .args([
                "build",
                "--pull=never",
                "--network=host",
                "--target=prebuilt",
            ])
            .arg(format!("--build-arg=BASE={}", base.reference))
            .arg(format!("--tag={reference}"))
            .arg("--file")
            .arg(&dockerfile)
            .arg(&context),
    )?;
    let built_id = image_id(&reference)?;
    remove_replaced(previous, &built_id);
    if let Some(old_base) = base.replaced {
        remove_replaced(Some(old_base), &image_id(&base.reference)?);
    }

    let archive = dir.join(format!("lb-agent-{version}.oci.tar"));
    let _ = fs::remove_file(&archive);
    run_cmd(
        podman()
            .args(["save", "--format=oci-archive", "--output"])
            .arg(&archive)
            .arg(&reference),
    )?;
    run_cmd(podman().args(["load", "--input"]).arg(&archive))?;
    let loaded_id = image_id(&reference)?;
    ensure!(
        loaded_id == built_id,
        "{} loads as image {loaded_id}, but {reference} was built as {built_id}",
        archive.display()
    );

    // The binary runs in the image (its glibc is new enough for it).
    let out = cmd_output(
        podman()
            .args(["run", "--rm", "--pull=never", "--network=none"])
            .args(lb_testbed::podman::ulimit_args())
            .arg(&reference)
            .arg("--version"),
    )
    .context("the agent does not run in the image it was built into")?;
    ensure!(
        out.contains(version),
        "`lb-agent --version` in the image printed {out:?}, not version {version}"
    );

    let size = cmd_output(podman().args(["image", "inspect", "--format={{.Size}}", &reference]))?
        .trim()
        .parse()
        .context("`podman image inspect` printed no size")?;
    eprintln!(
        "image: built in {:.0?} (with the release build)",
        started.elapsed()
    );
    Ok(Built {
        reference,
        archive,
        size,
    })
}

/// podman with runc: crun refuses hybrid cgroup layouts (cgroup v1
/// controllers plus a cgroup2 tree), runc runs on both layouts.
fn podman() -> Command {
    let mut cmd = Command::new("podman");
    cmd.args(["--runtime", "runc"]);
    cmd
}

fn image_id(reference: &str) -> Result<String> {
    Ok(
        cmd_output(podman().args(["image", "inspect", "--format={{.Id}}", reference]))?
            .trim()
            .to_owned(),
    )
}

/// Removes the image a new build took the name from, so that rebuilds do
/// not pile up unnamed images (left alone if a container still uses it).
fn remove_replaced(previous: Option<String>, current: &str) {
    if let Some(previous) = previous.filter(|p| p != current) {
        let _ = podman()
            .args(["image", "rm", &previous])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

fn image_exists(reference: &str) -> Result<bool> {
    let status = podman()
        .args(["image", "exists", reference])
        .status()
        .context("failed to run podman")?;
    Ok(status.success())
}

/// The base image, and the one it replaced in the store (removed once the
/// agent's image no longer builds on it).
struct Base {
    reference: String,
    replaced: Option<String>,
}

/// The base image `localhost/lb-agent-base:CODENAME`: from the store, else
/// imported from `target/image/base-CODENAME.tar`, else made with mmdebstrap.
fn ensure_base(dir: &Path, fresh: bool) -> Result<Base> {
    let codename = debian_codename()?;
    let reference = format!("localhost/lb-agent-base:{codename}");
    if !fresh && image_exists(&reference)? {
        eprintln!("image: base {reference} is in the local store");
        return Ok(Base {
            reference,
            replaced: None,
        });
    }
    let previous = image_id(&reference).ok();
    let tar = dir.join(format!("base-{codename}.tar"));
    if fresh || !tar.exists() {
        mmdebstrap(&codename, &tar)?;
    }
    run_cmd(podman().arg("import").arg(&tar).arg(&reference))?;
    Ok(Base {
        reference,
        replaced: previous,
    })
}

/// A minimal Debian root filesystem as a tarball, trimmed the way
/// `debian:*-slim` is (no manuals, documentation or translations; the
/// dpkg settings stay in the image, so packages added later are trimmed too).
fn mmdebstrap(codename: &str, tar: &Path) -> Result<()> {
    ensure!(
        Path::new(MERGED_USR_HOOK).is_dir(),
        "{MERGED_USR_HOOK} is missing: mmdebstrap 1.3 or newer is needed"
    );
    let partial = tar.with_extension("tar.partial");
    let started = Instant::now();
    eprintln!("image: making the Debian {codename} base with mmdebstrap (a minute or two)");
    let mut cmd = Command::new("mmdebstrap");
    cmd.args(["--variant=minbase", "--format=tar"])
        .arg(format!("--hook-dir={MERGED_USR_HOOK}"))
        .args([
            "--dpkgopt=path-exclude=/usr/share/man/*",
            "--dpkgopt=path-exclude=/usr/share/doc/*",
            "--dpkgopt=path-include=/usr/share/doc/*/copyright",
            "--dpkgopt=path-exclude=/usr/share/locale/*",
            "--dpkgopt=path-exclude=/usr/share/info/*",
            "--aptopt=APT::Install-Recommends \"false\"",
        ])
        .arg(codename)
        .arg(&partial);
    if Path::new(DEBIAN_SOURCES).exists() {
        cmd.arg(DEBIAN_SOURCES);
    }
    run_cmd(&mut cmd)?;
    fs::rename(&partial, tar).with_context(|| {
        format!(
            "failed to rename {} to {}",
            partial.display(),
            tar.display()
        )
    })?;
    eprintln!("image: base made in {:.0?}", started.elapsed());
    Ok(())
}

/// This machine's Debian release (`VERSION_CODENAME` in /etc/os-release).
fn debian_codename() -> Result<String> {
    let path = "/etc/os-release";
    let text = fs::read_to_string(path).with_context(|| format!("failed to read {path}"))?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
            .map(|v| v.trim().trim_matches('"').to_owned())
    };
    if field("ID").as_deref() != Some("debian") {
        bail!(
            "`cargo xtask image` makes its base from Debian packages and runs on Debian only \
             ({path} says ID={}); elsewhere, build with a registry: see deploy/README.md",
            field("ID").unwrap_or_default()
        );
    }
    field("VERSION_CODENAME")
        .filter(|c| !c.is_empty())
        .with_context(|| format!("{path} names no VERSION_CODENAME"))
}
