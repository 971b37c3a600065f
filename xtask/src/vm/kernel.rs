//! Debian kernels for the VMs: the newest `linux-image-*-cloud-amd64` of a
//! suite, fetched with `apt-get download` through a private apt configuration
//! (own sources.list, state and cache under the cache directory, so the
//! machine's own apt set-up is never touched), unpacked with `dpkg-deb -x` and
//! indexed with `depmod`, once per version.

use std::{
    fmt::{self, Write as _},
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::util::cmd_output;

/// A kernel line the end-to-end suite runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum Kernel {
    /// Debian bullseye's 5.10 (before fetching atomics, `bpf_set_retval`,
    /// the getpeername hooks).
    #[value(name = "5.10")]
    V5_10,
    /// Debian bookworm's 6.1.
    #[value(name = "6.1")]
    V6_1,
    /// Debian bookworm-backports' 6.12.
    #[value(name = "6.12")]
    V6_12,
}

impl Kernel {
    pub const ALL: [Self; 3] = [Self::V5_10, Self::V6_1, Self::V6_12];

    /// The upstream line, as users name it ("6.1").
    pub fn label(self) -> &'static str {
        match self {
            Self::V5_10 => "5.10",
            Self::V6_1 => "6.1",
            Self::V6_12 => "6.12",
        }
    }

    /// The Debian archive sections that carry this line: (archive, suite).
    fn sources(self) -> &'static [(Archive, &'static str)] {
        match self {
            Self::V5_10 => &[
                (Archive::Main, "bullseye"),
                (Archive::Security, "bullseye-security"),
            ],
            Self::V6_1 => &[
                (Archive::Main, "bookworm"),
                (Archive::Main, "bookworm-updates"),
                (Archive::Security, "bookworm-security"),
            ],
            Self::V6_12 => &[(Archive::Main, "bookworm-backports")],
        }
    }
}

impl fmt::Display for Kernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

#[derive(Clone, Copy)]
enum Archive {
    Main,
    Security,
}

/// Where Debian packages come from (`LB_VM_DEBIAN_MIRROR` and
/// `LB_VM_DEBIAN_SECURITY_MIRROR` override the defaults).
pub struct Mirrors {
    pub main: String,
    pub security: String,
}

impl Default for Mirrors {
    fn default() -> Self {
        Self {
            main: std::env::var("LB_VM_DEBIAN_MIRROR")
                .unwrap_or_else(|_| "http://deb.debian.org/debian".to_owned()),
            security: std::env::var("LB_VM_DEBIAN_SECURITY_MIRROR")
                .unwrap_or_else(|_| "http://deb.debian.org/debian-security".to_owned()),
        }
    }
}

/// An unpacked kernel package.
pub struct KernelImage {
    pub kernel: Kernel,
    /// The Debian package it came from and its version.
    pub package: String,
    pub version: String,
    /// `uname -r`, the directory name under `lib/modules`.
    pub release: String,
    pub vmlinuz: PathBuf,
    /// `lib/modules/<release>` with `modules.dep` from `depmod`.
    pub modules_dir: PathBuf,
    /// Whether this run downloaded it (false: from the cache).
    pub downloaded: Option<FetchTimes>,
}

/// How long fetching a kernel took, when it was not cached.
#[derive(Clone, Copy)]
pub struct FetchTimes {
    pub download: Duration,
    pub unpack: Duration,
}

/// How old the package lists may be before `apt-get update` runs again.
const LISTS_MAX_AGE: Duration = Duration::from_hours(24);

/// The metapackage whose dependency names the suite's current kernel.
const METAPACKAGE: &str = "linux-image-cloud-amd64";

/// Fetches (or finds in the cache) the newest kernel of `kernel`'s suites.
pub fn fetch(
    kernel: Kernel,
    cache: &Path,
    mirrors: &Mirrors,
    refresh: bool,
) -> Result<KernelImage> {
    let apt = PrivateApt::new(kernel, cache, mirrors)?;
    let kernels_dir = cache.join("kernels").join(kernel.label());
    fs::create_dir_all(&kernels_dir)
        .with_context(|| format!("failed to create {}", kernels_dir.display()))?;
    // One fetch per kernel line at a time (other engineers' runs share the cache).
    let lock_path = kernels_dir.join(".lock");
    let lock = fs::File::create(&lock_path)
        .with_context(|| format!("failed to create {}", lock_path.display()))?;
    lock.lock()
        .with_context(|| format!("failed to lock {}", lock_path.display()))?;

    if (refresh || apt.lists_age().is_none_or(|age| age > LISTS_MAX_AGE))
        && let Err(e) = apt.update()
    {
        if let Some(image) = newest_cached(kernel, &kernels_dir)? {
            eprintln!(
                "vm {kernel}: could not refresh the package lists ({e:#}); using cached {} {}",
                image.package, image.version
            );
            return Ok(image);
        }
        return Err(e);
    }
    let (abi_package, version) = apt.newest(kernel)?;
    // The unsigned image is what the task asks for; the signed one holds the
    // same kernel (the signature only matters to UEFI) and is the fallback
    // where a mirror lacks the unsigned file.
    let candidates = [format!("{abi_package}-unsigned"), abi_package];
    for package in &candidates {
        let dir = kernels_dir.join(format!("{package}_{version}"));
        if dir.join(".complete").exists() {
            return image_in(kernel, package, &version, &dir, None);
        }
    }
    let downloads = cache.join("downloads").join(kernel.label());
    let mut errors = Vec::new();
    for package in &candidates {
        let started = Instant::now();
        let deb = match apt.download(package, &version, &downloads) {
            Ok(deb) => deb,
            Err(e) => {
                errors.push(format!("{e:#}"));
                continue;
            }
        };
        let download = started.elapsed();
        let started = Instant::now();
        let dir = kernels_dir.join(format!("{package}_{version}"));
        unpack(&deb, &dir)?;
        let _ = fs::remove_dir_all(&downloads);
        let times = FetchTimes {
            download,
            unpack: started.elapsed(),
        };
        prune_other_versions(&kernels_dir, &dir);
        return image_in(kernel, package, &version, &dir, Some(times));
    }
    bail!(
        "failed to download kernel {version} for {kernel}:\n{}",
        errors.join("\n")
    )
}

fn image_in(
    kernel: Kernel,
    package: &str,
    version: &str,
    dir: &Path,
    downloaded: Option<FetchTimes>,
) -> Result<KernelImage> {
    let modules_root = dir.join("lib/modules");
    let release = single_subdir(&modules_root)?;
    let vmlinuz = dir.join("boot").join(format!("vmlinuz-{release}"));
    ensure!(
        vmlinuz.exists(),
        "{} has no kernel image {}",
        package,
        vmlinuz.display()
    );
    Ok(KernelImage {
        kernel,
        package: package.to_owned(),
        version: version.to_owned(),
        modules_dir: modules_root.join(&release),
        release,
        vmlinuz,
        downloaded,
    })
}

fn single_subdir(dir: &Path) -> Result<String> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("failed to read {}", dir.display()))? {
        let entry = entry.with_context(|| format!("failed to read {}", dir.display()))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    match names.as_slice() {
        [one] => Ok(one.clone()),
        _ => bail!(
            "expected one kernel release in {}, found {names:?}",
            dir.display()
        ),
    }
}

/// The newest complete unpacked kernel of this line, for offline runs.
fn newest_cached(kernel: Kernel, kernels_dir: &Path) -> Result<Option<KernelImage>> {
    let mut newest: Option<(SystemTime, PathBuf)> = None;
    for entry in fs::read_dir(kernels_dir)
        .with_context(|| format!("failed to read {}", kernels_dir.display()))?
    {
        let Ok(entry) = entry else { continue };
        let stamp = entry.path().join(".complete");
        if let Ok(modified) = fs::metadata(&stamp).and_then(|m| m.modified())
            && newest.as_ref().is_none_or(|(t, _)| modified > *t)
        {
            newest = Some((modified, entry.path()));
        }
    }
    let Some((_, dir)) = newest else {
        return Ok(None);
    };
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (package, version) = name
        .split_once('_')
        .with_context(|| format!("unexpected cache entry {}", dir.display()))?;
    image_in(kernel, package, version, &dir, None).map(Some)
}

fn unpack(deb: &Path, dir: &Path) -> Result<()> {
    let partial = dir.with_extension("partial");
    let _ = fs::remove_dir_all(&partial);
    let _ = fs::remove_dir_all(dir);
    cmd_output(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&partial))?;
    let release = single_subdir(&partial.join("lib/modules"))?;
    // The package's modules.dep comes from its postinst: make it here.
    let depmod = which::which("depmod").unwrap_or_else(|_| PathBuf::from("/usr/sbin/depmod"));
    cmd_output(Command::new(&depmod).arg("-b").arg(&partial).arg(&release))
        .context("depmod (Debian package kmod) indexes the kernel's modules")?;
    fs::rename(&partial, dir).with_context(|| {
        format!(
            "failed to rename {} to {}",
            partial.display(),
            dir.display()
        )
    })?;
    let stamp = dir.join(".complete");
    fs::write(&stamp, "").with_context(|| format!("failed to write {}", stamp.display()))
}

/// Keeps the cache to one version per kernel line.
fn prune_other_versions(kernels_dir: &Path, keep: &Path) {
    let Ok(entries) = fs::read_dir(kernels_dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        if path != keep && path.is_dir() {
            let _ = fs::remove_dir_all(&path);
        }
    }
}

/// apt-get and apt-cache with their own sources, state and cache.
struct PrivateApt {
    root: PathBuf,
}

impl PrivateApt {
    fn new(kernel: Kernel, cache: &Path, mirrors: &Mirrors) -> Result<Self> {
        let root = cache.join("apt").join(kernel.label());
        for dir in [
            "etc/sources.list.d",
            "etc/preferences.d",
            "state/lists/partial",
            "cache/archives/partial",
        ] {
            let dir = root.join(dir);
            fs::create_dir_all(&dir)
                .with_context(|| format!("failed to create {}", dir.display()))?;
        }
        let mut sources = String::new();
        for (archive, suite) in kernel.sources() {
            let uri = match archive {
                Archive::Main => &mirrors.main,
                Archive::Security => &mirrors.security,
            };
            // Packages indexes only: no translations, no DEP-11 metadata.
            let _ = writeln!(
                sources,
                "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg target=Packages] {uri} {suite} main"
            );
        }
        let list = root.join("etc/sources.list");
        if fs::read_to_string(&list).ok().as_deref() != Some(sources.as_str()) {
            fs::write(&list, &sources)
                .with_context(|| format!("failed to write {}", list.display()))?;
            // New sources: the old lists no longer say what is newest.
            let _ = fs::remove_file(root.join("state/updated"));
        }
        let status = root.join("state/status");
        if !status.exists() {
            fs::write(&status, "")
                .with_context(|| format!("failed to write {}", status.display()))?;
        }
        Ok(Self { root })
    }

    fn command(&self, program: &str) -> Command {
        let r = &self.root;
        let mut cmd = Command::new(program);
        cmd.env("DEBIAN_FRONTEND", "noninteractive").arg("-q");
        for (key, value) in [
            ("Dir::Etc::SourceList", r.join("etc/sources.list")),
            ("Dir::Etc::SourceParts", r.join("etc/sources.list.d")),
            ("Dir::Etc::Preferences", r.join("etc/preferences")),
            ("Dir::Etc::PreferencesParts", r.join("etc/preferences.d")),
            ("Dir::State", r.join("state")),
            ("Dir::State::status", r.join("state/status")),
            ("Dir::Cache", r.join("cache")),
        ] {
            cmd.arg("-o").arg(format!("{key}={}", value.display()));
        }
        for option in [
            "Debug::NoLocking=1",
            "APT::Sandbox::User=root",
            "APT::Architectures=amd64",
            "APT::Architecture=amd64",
            "Acquire::Languages=none",
        ] {
            cmd.args(["-o", option]);
        }
        cmd
    }

    fn lists_age(&self) -> Option<Duration> {
        let modified = fs::metadata(self.root.join("state/updated"))
            .and_then(|m| m.modified())
            .ok()?;
        modified.elapsed().ok()
    }

    fn update(&self) -> Result<()> {
        cmd_output(self.command("apt-get").arg("update"))
            .context("failed to update the private package lists")?;
        let stamp = self.root.join("state/updated");
        fs::write(&stamp, "").with_context(|| format!("failed to write {}", stamp.display()))
    }

    /// The suite's current kernel ABI package (`linux-image-6.1.0-50-cloud-amd64`) and version.
    fn newest(&self, kernel: Kernel) -> Result<(String, String)> {
        let out =
            cmd_output(
                self.command("apt-cache")
                    .args(["show", "--no-all-versions", METAPACKAGE]),
            )?;
        let field = |name: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(": ")))
                .map(str::trim)
                .with_context(|| {
                    format!("`apt-cache show {METAPACKAGE}` has no {name} field:\n{out}")
                })
        };
        let version = field("Version")?.to_owned();
        let depends = field("Depends")?;
        ensure!(
            version.starts_with(&format!("{}.", kernel.label())),
            "the newest {METAPACKAGE} in {:?} is {version}, not a {kernel} kernel: check the mirror",
            kernel.sources().iter().map(|(_, s)| s).collect::<Vec<_>>()
        );
        let abi = depends
            .split(',')
            .map(|d| d.split_whitespace().next().unwrap_or_default())
            .find(|d| d.starts_with("linux-image-") && d.ends_with("-cloud-amd64"))
            .with_context(|| {
                format!("{METAPACKAGE} {version} depends on no kernel image: {depends}")
            })?;
        Ok((abi.to_owned(), version))
    }

    /// Downloads into `dir`, which it empties first, and returns the file.
    fn download(&self, package: &str, version: &str, dir: &Path) -> Result<PathBuf> {
        let _ = fs::remove_dir_all(dir);
        fs::create_dir_all(dir).with_context(|| format!("failed to create {}", dir.display()))?;
        cmd_output(
            self.command("apt-get")
                .current_dir(dir)
                .arg("download")
                .arg(format!("{package}={version}")),
        )?;
        let debs = debs_in(dir)?;
        match debs.as_slice() {
            [one] => Ok(one.clone()),
            _ => bail!(
                "apt-get download {package}={version} left {} .deb files in {}",
                debs.len(),
                dir.display()
            ),
        }
    }
}

fn debs_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("failed to read {}", dir.display()))? {
        let path = entry
            .with_context(|| format!("failed to read {}", dir.display()))?
            .path();
        if path.extension().is_some_and(|e| e == "deb") {
            out.push(path);
        }
    }
    Ok(out)
}
