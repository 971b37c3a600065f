//! Running one VM: qemu with TCG, the kernel's console on `ttyS0` (qemu's
//! stdout), the results channel on `ttyS1` (a unix socket qemu connects to),
//! every line of both written to one log with its time and source, and a
//! time limit after which qemu is killed.

use std::{
    fs,
    io::{BufRead as _, BufReader, BufWriter, Read, Write as _},
    os::unix::net::UnixListener,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

/// Where a console line came from.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Stream {
    /// `ttyS0`: the kernel's console (boot messages, oopses, panics).
    Kernel,
    /// `ttyS1`: `/init` and the tests.
    Results,
    /// qemu's own stderr.
    Qemu,
}

impl Stream {
    fn tag(self) -> &'static str {
        match self {
            Self::Kernel => "kernel ",
            Self::Results => "tests  ",
            Self::Qemu => "qemu   ",
        }
    }
}

pub struct VmConfig<'a> {
    pub vmlinuz: &'a Path,
    pub initramfs: &'a Path,
    pub memory_mib: u64,
    pub cmdline: &'a str,
    pub timeout: Duration,
    pub log: &'a Path,
    /// Also print every line to stderr as it comes.
    pub echo: bool,
    /// Prefix for echoed lines.
    pub label: &'a str,
}

/// What the line handler wants next.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Continue,
    /// Everything needed has arrived: allow a short grace for power-off.
    Finished,
}

pub enum VmEnd {
    Exited(ExitStatus),
    /// Killed after the time limit.
    TimedOut,
    /// Killed after the suite finished but the VM did not power off.
    KilledAfterFinish,
}

/// Kills qemu if the run ends early (an error, a panic).
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const POWEROFF_GRACE: Duration = Duration::from_secs(30);

/// Boots the VM and feeds each line to `on_line` (time since start, source,
/// text without the line end) until qemu exits or the time limit passes.
pub fn run(
    config: &VmConfig<'_>,
    mut on_line: impl FnMut(Duration, Stream, &str) -> Next,
) -> Result<VmEnd> {
    let socket = socket_path();
    let _ = fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket)
        .with_context(|| format!("failed to listen on {}", socket.display()))?;
    let mut cmd = Command::new("qemu-system-x86_64");
    // cx16=off: qemu 7.2's TCG corrupts EFLAGS in `cmpxchg16b` (which SLUB
    // runs with a %gs prefix), and 6.12 then dies in about a third of the
    // boots (debug exceptions, double faults, user-space GPFs). Without the
    // feature the kernels use their fallback and boot faster, too.
    cmd.args(["-accel", "tcg", "-cpu", "max,cx16=off", "-smp", "2", "-m"])
        .arg(config.memory_mib.to_string())
        .args([
            "-nodefaults",
            "-display",
            "none",
            "-no-reboot",
            "-serial",
            "stdio",
            "-chardev",
        ])
        .arg(format!("socket,id=results,path={}", socket.display()))
        .args(["-serial", "chardev:results", "-kernel"])
        .arg(config.vmlinuz)
        .arg("-initrd")
        .arg(config.initramfs)
        .arg("-append")
        .arg(config.cmdline)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let log_file = fs::File::create(config.log)
        .with_context(|| format!("failed to create {}", config.log.display()))?;
    let mut log = BufWriter::new(log_file);
    writeln!(log, "# {cmd:?}")
        .with_context(|| format!("failed to write {}", config.log.display()))?;
    let started = Instant::now();
    let mut child = KillOnDrop(
        cmd.spawn()
            .with_context(|| format!("failed to start {cmd:?}"))?,
    );

    let (tx, rx) = mpsc::channel::<(Instant, Stream, String)>();
    let stdout = child.0.stdout.take().context("qemu has no stdout pipe")?;
    let stderr = child.0.stderr.take().context("qemu has no stderr pipe")?;
    spawn_reader(stdout, Stream::Kernel, tx.clone());
    spawn_reader(stderr, Stream::Qemu, tx.clone());
    // qemu connects while it starts, before the guest runs.
    listener
        .set_nonblocking(true)
        .context("failed to make the results socket non-blocking")?;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream
                    .set_nonblocking(false)
                    .context("failed to make the results stream blocking")?;
                spawn_reader(stream, Stream::Results, tx.clone());
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if child.0.try_wait().ok().flatten().is_some()
                    || started.elapsed() > Duration::from_secs(60)
                {
                    break;
                }
                thread::sleep(Duration::from_millis(5));
            }
            Err(e) => {
                return Err(e).with_context(|| format!("failed to accept on {}", socket.display()));
            }
        }
    }
    drop(tx);
    let _ = fs::remove_file(&socket);

    let mut deadline = started + config.timeout;
    let mut end = None;
    let mut finished = false;
    loop {
        let wait = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok((at, stream, line)) => {
                let t = at.duration_since(started);
                let _ = writeln!(log, "{:9.3} {}{line}", t.as_secs_f64(), stream.tag());
                if config.echo {
                    eprintln!("[{} {}] {line}", config.label, stream.tag().trim_end());
                }
                if on_line(t, stream, &line) == Next::Finished && !finished {
                    finished = true;
                    deadline = deadline.min(Instant::now() + POWEROFF_GRACE);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                end = Some(if finished {
                    VmEnd::KilledAfterFinish
                } else {
                    VmEnd::TimedOut
                });
                let _ = child.0.kill();
                // The readers see EOF once qemu is gone; keep what is in flight.
                deadline = Instant::now() + Duration::from_secs(5);
                while let Ok((at, stream, line)) =
                    rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
                {
                    let _ = writeln!(
                        log,
                        "{:9.3} {}{line}",
                        at.duration_since(started).as_secs_f64(),
                        stream.tag()
                    );
                    on_line(at.duration_since(started), stream, &line);
                }
                break;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let status = child.0.wait().context("failed to wait for qemu")?;
    let end = end.unwrap_or(VmEnd::Exited(status));
    let note = match &end {
        VmEnd::Exited(status) => format!("qemu exited: {status}"),
        VmEnd::TimedOut => format!(
            "killed qemu after the time limit of {} s",
            config.timeout.as_secs()
        ),
        VmEnd::KilledAfterFinish => {
            "killed qemu: the suite finished but the VM did not power off".to_owned()
        }
    };
    let _ = writeln!(log, "{:9.3} # {note}", started.elapsed().as_secs_f64());
    log.flush()
        .with_context(|| format!("failed to write {}", config.log.display()))?;
    Ok(end)
}

fn spawn_reader(
    source: impl Read + Send + 'static,
    stream: Stream,
    tx: mpsc::Sender<(Instant, Stream, String)>,
) {
    thread::spawn(move || {
        let mut reader = BufReader::new(source);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf);
                    let line = line.trim_end_matches(['\n', '\r']).replace('\r', "");
                    if tx.send((Instant::now(), stream, line)).is_err() {
                        break;
                    }
                }
            }
        }
    });
}

/// A short path (unix socket paths are limited to 107 bytes).
fn socket_path() -> PathBuf {
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::env::temp_dir().join(format!("lb-vm-{}-{n}.sock", std::process::id()))
}
