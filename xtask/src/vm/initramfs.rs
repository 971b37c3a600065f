//! The VM's initramfs: an uncompressed cpio archive in the kernel's `newc`
//! format, written directly from the host files (no staging directory).
//!
//! Paths follow the host's layout, including its merged-/usr symlinks
//! (`/lib -> usr/lib`), so that every path `ldd` prints on the host resolves
//! the same way in the VM.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    fs,
    io::{self, BufWriter, Write},
    path::{Component, Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail, ensure};

use super::kernel::KernelImage;
use crate::util::cmd_output;

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;

#[derive(Clone)]
enum Source {
    Host(PathBuf),
    Bytes(Vec<u8>),
}

#[derive(Clone)]
enum Entry {
    Dir,
    File { source: Source, mode: u32 },
    Symlink(String),
}

/// The archive's contents, keyed by path without the leading `/`. A
/// `BTreeMap` puts every directory before what it holds, as the kernel's
/// unpacker needs.
#[derive(Clone)]
pub struct Initramfs {
    entries: BTreeMap<String, Entry>,
    /// Top-level host symlinks (`lib` -> `usr/lib`), applied to guest paths.
    top_links: Vec<(String, String)>,
}

/// How a wanted kernel module is provided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModuleSource {
    BuiltIn,
    /// A loadable module: the files to `insmod`, dependencies first (guest paths).
    Module(Vec<String>),
    /// Neither built in nor shipped as a module.
    Absent,
}

impl Initramfs {
    pub fn new() -> Self {
        let mut this = Self {
            entries: BTreeMap::new(),
            top_links: Vec::new(),
        };
        for name in ["bin", "sbin", "lib", "lib32", "lib64", "libx32"] {
            let host = Path::new("/").join(name);
            if let Ok(target) = fs::read_link(&host) {
                let target = target.to_string_lossy().trim_start_matches('/').to_owned();
                this.top_links.push((name.to_owned(), target.clone()));
                this.entries.insert(name.to_owned(), Entry::Symlink(target));
            }
        }
        for dir in [
            "dev", "proc", "sys", "run", "tmp", "root", "etc", "usr/bin", "usr/sbin",
        ] {
            this.dir(dir);
        }
        // `ip netns` keeps its mounts under /var/run/netns.
        this.symlink("var/run", "/run");
        this
    }

    /// The guest path for a host path: relative, through the top-level links.
    pub fn guest_path(&self, path: &str) -> String {
        let path = path.trim_start_matches('/');
        let (first, rest) = path.split_once('/').unwrap_or((path, ""));
        for (name, target) in &self.top_links {
            if first == name {
                return if rest.is_empty() {
                    target.clone()
                } else {
                    format!("{target}/{rest}")
                };
            }
        }
        path.to_owned()
    }

    fn insert(&mut self, path: &str, entry: Entry) {
        let path = self.guest_path(path);
        let mut parent = Path::new(&path).parent();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            self.entries
                .entry(p.to_string_lossy().into_owned())
                .or_insert(Entry::Dir);
            parent = p.parent();
        }
        // The first entry for a path wins: real tools before busybox applets.
        self.entries.entry(path).or_insert(entry);
    }

    pub fn dir(&mut self, path: &str) {
        self.insert(path, Entry::Dir);
    }

    pub fn symlink(&mut self, path: &str, target: &str) {
        self.insert(path, Entry::Symlink(target.to_owned()));
    }

    pub fn bytes(&mut self, path: &str, data: impl Into<Vec<u8>>, mode: u32) {
        self.insert(
            path,
            Entry::File {
                source: Source::Bytes(data.into()),
                mode,
            },
        );
    }

    /// A host file (symlinks followed) at `path` in the guest.
    pub fn host_file(&mut self, path: &str, host: &Path, mode: u32) -> Result<()> {
        let real = fs::canonicalize(host)
            .with_context(|| format!("failed to resolve {}", host.display()))?;
        ensure!(real.is_file(), "{} is not a file", host.display());
        self.insert(
            path,
            Entry::File {
                source: Source::Host(real),
                mode,
            },
        );
        Ok(())
    }

    /// An executable and, if it is dynamically linked, the shared libraries
    /// and loader `ldd` names, at the paths `ldd` names.
    pub fn executable(&mut self, path: &str, host: &Path) -> Result<()> {
        self.host_file(path, host, 0o755)?;
        for lib in shared_libraries(host)? {
            let guest = lib.to_string_lossy().into_owned();
            self.host_file(&guest, &lib, 0o755)?;
        }
        Ok(())
    }

    /// busybox at its host path plus a link for every applet, where no real
    /// program already sits.
    pub fn busybox(&mut self, host: &Path) -> Result<()> {
        let host_path = host.to_string_lossy().into_owned();
        self.executable(&host_path, host)?;
        let target = format!("/{}", self.guest_path(&host_path));
        let list = cmd_output(Command::new(host).arg("--list-full"))?;
        for applet in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if applet == "linuxrc" || applet.ends_with("/busybox") {
                continue;
            }
            self.symlink(applet, &target);
        }
        Ok(())
    }

    /// Kernel modules named in `wanted`, with their dependencies from
    /// `modules.dep`, uncompressed, and a `modules.dep`/`modules.alias`
    /// reduced to them (so that busybox `modprobe` can autoload them too).
    pub fn modules(
        &mut self,
        image: &KernelImage,
        wanted: &[String],
        scratch: &Path,
    ) -> Result<Vec<(String, ModuleSource)>> {
        let dir = &image.modules_dir;
        let read = |name: &str| {
            let path = dir.join(name);
            fs::read_to_string(&path).with_context(|| format!("failed to read {}", path.display()))
        };
        let dep_text = read("modules.dep")?;
        let builtin_text = read("modules.builtin")?;
        let deps: BTreeMap<&str, Vec<&str>> = dep_text
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(m, d)| (m, d.split_whitespace().collect()))
            .collect();
        let by_name: BTreeMap<String, &str> = deps.keys().map(|p| (module_name(p), *p)).collect();
        let builtin: BTreeSet<String> = builtin_text.lines().map(module_name).collect();

        let guest_dir = format!("lib/modules/{}", image.release);
        let mut out = Vec::new();
        let mut included: BTreeSet<&str> = BTreeSet::new();
        for name in wanted {
            let name = name.replace('-', "_");
            let source = if builtin.contains(&name) {
                ModuleSource::BuiltIn
            } else if let Some(path) = by_name.get(&name) {
                // modules.dep lists what must be loaded before, last first.
                let mut files: Vec<&str> = deps[path].iter().rev().copied().collect();
                files.push(path);
                included.extend(files.iter().copied());
                ModuleSource::Module(
                    files
                        .iter()
                        .map(|f| format!("/{guest_dir}/{}", uncompressed_name(f)))
                        .collect(),
                )
            } else {
                ModuleSource::Absent
            };
            out.push((name, source));
        }
        let mut dep_out = String::new();
        for rel in &included {
            let host = dir.join(rel);
            let guest = format!("{guest_dir}/{}", uncompressed_name(rel));
            if let Some(base) = rel.strip_suffix(".xz") {
                let plain = scratch.join(&image.release).join(base);
                if !plain.exists() {
                    decompress_xz(&host, &plain)?;
                }
                self.host_file(&guest, &plain, 0o644)?;
            } else {
                ensure!(
                    Path::new(rel).extension().is_some_and(|e| e == "ko"),
                    "unsupported module compression: {}",
                    host.display()
                );
                self.host_file(&guest, &host, 0o644)?;
            }
            let line_deps: Vec<String> = deps[rel]
                .iter()
                .map(|d| uncompressed_name(d).to_owned())
                .collect();
            let _ = writeln!(
                dep_out,
                "{}: {}",
                uncompressed_name(rel),
                line_deps.join(" ")
            );
        }
        let names: BTreeSet<String> = included.iter().map(|p| module_name(p)).collect();
        let alias_out: String = read("modules.alias")
            .unwrap_or_default()
            .lines()
            .filter(|l| {
                l.split_whitespace()
                    .nth(2)
                    .is_some_and(|m| names.contains(&m.replace('-', "_")))
            })
            .fold(String::new(), |mut out, l| {
                let _ = writeln!(out, "{l}");
                out
            });
        self.bytes(&format!("{guest_dir}/modules.dep"), dep_out, 0o644);
        self.bytes(&format!("{guest_dir}/modules.alias"), alias_out, 0o644);
        self.bytes(&format!("{guest_dir}/modules.builtin"), builtin_text, 0o644);
        Ok(out)
    }

    /// Writes the archive; returns its size in bytes.
    pub fn write(&self, path: &Path) -> Result<u64> {
        let file = fs::File::create(path)
            .with_context(|| format!("failed to create {}", path.display()))?;
        let mut w = NewcWriter::new(BufWriter::with_capacity(1 << 20, file));
        for (name, entry) in &self.entries {
            match entry {
                Entry::Dir => w.entry(name, S_IFDIR | 0o755, 0, &mut io::empty())?,
                Entry::Symlink(target) => w.entry(
                    name,
                    S_IFLNK | 0o777,
                    target.len() as u64,
                    &mut target.as_bytes(),
                )?,
                Entry::File {
                    source: Source::Bytes(data),
                    mode,
                } => {
                    w.entry(
                        name,
                        S_IFREG | mode,
                        data.len() as u64,
                        &mut data.as_slice(),
                    )?;
                }
                Entry::File {
                    source: Source::Host(host),
                    mode,
                } => {
                    let mut f = fs::File::open(host)
                        .with_context(|| format!("failed to open {}", host.display()))?;
                    let len = f
                        .metadata()
                        .with_context(|| format!("failed to stat {}", host.display()))?
                        .len();
                    w.entry(name, S_IFREG | mode, len, &mut f)
                        .with_context(|| {
                            format!("failed to add {} to {}", host.display(), path.display())
                        })?;
                }
            }
        }
        let (mut out, size) = w.finish()?;
        out.flush()
            .with_context(|| format!("failed to write {}", path.display()))?;
        Ok(size)
    }
}

/// `kernel/net/sched/cls_bpf.ko.xz` -> `cls_bpf` (as `/sys/module` names it).
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split_once(".ko").map_or(file, |(s, _)| s);
    stem.replace('-', "_")
}

fn uncompressed_name(path: &str) -> &str {
    path.strip_suffix(".xz").unwrap_or(path)
}

fn decompress_xz(from: &Path, to: &Path) -> Result<()> {
    if let Some(parent) = to.parent() {
        fs::create_dir_all(parent)
            .with_context(|| format!("failed to create {}", parent.display()))?;
    }
    let out = Command::new("xz")
        .arg("-dc")
        .arg(from)
        .output()
        .with_context(|| format!("failed to start xz to decompress {}", from.display()))?;
    ensure!(
        out.status.success(),
        "xz -dc {} failed: {}",
        from.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    // Another run may be reading the cache: write aside, then rename.
    let partial = to.with_extension(format!("partial-{}", std::process::id()));
    fs::write(&partial, out.stdout)
        .with_context(|| format!("failed to write {}", partial.display()))?;
    fs::rename(&partial, to)
        .with_context(|| format!("failed to rename {} to {}", partial.display(), to.display()))
}

/// The libraries and loader `ldd` lists for a binary (none if it is static).
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .with_context(|| format!("failed to start ldd {}", binary.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stdout.contains("statically linked") || stderr.contains("not a dynamic executable") {
        return Ok(Vec::new());
    }
    ensure!(
        out.status.success(),
        "ldd {} failed: {}",
        binary.display(),
        stderr.trim()
    );
    let mut libs = Vec::new();
    for line in stdout.lines().map(str::trim) {
        if line.contains("=> not found") {
            bail!(
                "{} needs a library the host lacks: {line}",
                binary.display()
            );
        }
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = line.split_once("=> ").map_or(line, |(_, p)| p);
        let path = path.split_once(" (").map_or(path, |(p, _)| p);
        if path.starts_with('/')
            && Path::new(path)
                .components()
                .all(|c| !matches!(c, Component::ParentDir))
        {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

/// Streams a `newc` ("070701") cpio archive.
struct NewcWriter<W> {
    out: W,
    ino: u32,
    written: u64,
}

impl<W: Write> NewcWriter<W> {
    fn new(out: W) -> Self {
        Self {
            out,
            ino: 1,
            written: 0,
        }
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let n = (4 - (self.written % 4) as usize) % 4;
        self.put(&[0; 3][..n])
    }

    fn entry(&mut self, name: &str, mode: u32, size: u64, data: &mut dyn io::Read) -> Result<()> {
        let size32 = u32::try_from(size)
            .with_context(|| format!("{name} is too large for cpio newc ({size} bytes)"))?;
        let name_size = u32::try_from(name.len() + 1).context("file name too long")?;
        let nlink = if mode & S_IFDIR == S_IFDIR { 2 } else { 1 };
        // magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor,
        // devminor, rdevmajor, rdevminor, namesize, check
        let header = format!(
            "070701{:08x}{mode:08x}{:08x}{:08x}{nlink:08x}{:08x}{size32:08x}{:08x}{:08x}{:08x}{:08x}{name_size:08x}{:08x}",
            self.ino, 0, 0, 0, 0, 0, 0, 0, 0
        );
        self.ino += 1;
        self.put(header.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()?;
        let copied = io::copy(&mut io::Read::take(&mut *data, size), &mut self.out)?;
        self.written += copied;
        ensure!(
            copied == size,
            "{name}: expected {size} bytes, read {copied} (file changed while archiving?)"
        );
        self.pad()?;
        Ok(())
    }

    fn finish(mut self) -> Result<(W, u64)> {
        self.entry("TRAILER!!!", 0, 0, &mut io::empty())?;
        Ok((self.out, self.written))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_archive_lists_with_cpio() -> Result<()> {
        if which::which("cpio").is_err() {
            eprintln!("skipped: no cpio tool");
            return Ok(());
        }
        let dir = std::env::temp_dir().join(format!("xtask-newc-{}", std::process::id()));
        fs::create_dir_all(&dir)?;
        let mut ir = Initramfs::new();
        ir.bytes("etc/hello", "hello\n", 0o644);
        ir.symlink("etc/link", "hello");
        ir.bytes("a/b/c", vec![7u8; 5], 0o600);
        let archive = dir.join("t.cpio");
        let size = ir.write(&archive)?;
        assert_eq!(size % 4, 0);
        let listing = cmd_output(Command::new("cpio").args(["-itv", "-F"]).arg(&archive))?;
        assert!(listing.contains("etc/hello"), "{listing}");
        assert!(listing.contains("etc/link -> hello"), "{listing}");
        assert!(listing.contains("a/b/c"), "{listing}");
        let extract = dir.join("x");
        fs::create_dir_all(&extract)?;
        cmd_output(
            Command::new("cpio")
                .args(["-id", "--quiet", "-F"])
                .arg(&archive)
                .current_dir(&extract),
        )?;
        assert_eq!(fs::read(extract.join("a/b/c"))?, vec![7u8; 5]);
        assert_eq!(fs::read_to_string(extract.join("etc/hello"))?, "hello\n");
        fs::remove_dir_all(&dir)?;
        Ok(())
    }

    #[test]
    fn module_names() {
        assert_eq!(module_name("kernel/net/sched/cls_bpf.ko.xz"), "cls_bpf");
        assert_eq!(module_name("kernel/drivers/net/veth.ko"), "veth");
        assert_eq!(module_name("kernel/net/ipv6/ipv6.ko"), "ipv6");
    }
}
