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
    /// Killed when nothing at all arrives for this long (the guest says it
    /// is alive more often than that).
    pub silence: Duration,
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
    /// Killed after nothing arrived for [`VmConfig::silence`]: the guest
    /// stopped (a kernel or qemu hang).
    Silent(Duration),
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

/// A console line: when it arrived, from where, the text.
type Line = (Instant, Stream, String);

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
    let mut cmd = command(config, &socket);
    let log_file = fs::File::create(config.log)
        .with_context(|| format!("failed to create {}", config.log.display()))?;
    let mut log = Log {
        out: BufWriter::new(log_file),
        started: Instant::now(),
    };
    log.note(&format!("{cmd:?}"));
    let mut child = KillOnDrop(
        cmd.spawn()
            .with_context(|| format!("failed to start {cmd:?}"))?,
    );
    let (tx, rx) = mpsc::channel::<Line>();
    let stdout = child.0.stdout.take().context("qemu has no stdout pipe")?;
    let stderr = child.0.stderr.take().context("qemu has no stderr pipe")?;
    spawn_reader(stdout, Stream::Kernel, tx.clone());
    spawn_reader(stderr, Stream::Qemu, tx.clone());
    let accepted = accept_results(&listener, &mut child.0, tx);
    let _ = fs::remove_file(&socket);
    accepted.with_context(|| format!("failed to accept on {}", socket.display()))?;

    let mut deliver = |line: Line, log: &mut Log| {
        let (at, stream, text) = line;
        let t = log.write(at, stream, &text);
        if config.echo {
            eprintln!("[{} {}] {text}", config.label, stream.tag().trim_end());
        }
        on_line(t, stream, &text)
    };
    let mut deadline = log.started + config.timeout;
    let mut finished = false;
    let mut last_line = Instant::now();
    let end = loop {
        let wake = if finished {
            deadline
        } else {
            deadline.min(last_line + config.silence)
        };
        match rx.recv_timeout(wake.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                last_line = line.0;
                if deliver(line, &mut log) == Next::Finished && !finished {
                    finished = true;
                    deadline = deadline.min(Instant::now() + POWEROFF_GRACE);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let silent = Instant::now() < deadline;
                let _ = child.0.kill();
                // The readers see EOF once qemu is gone; keep what is in flight.
                let drain_until = Instant::now() + Duration::from_secs(5);
                while let Ok(line) =
                    rx.recv_timeout(drain_until.saturating_duration_since(Instant::now()))
                {
                    deliver(line, &mut log);
                }
                break Some(if finished {
                    VmEnd::KilledAfterFinish
                } else if silent {
                    VmEnd::Silent(config.silence)
                } else {
                    VmEnd::TimedOut
                });
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break None,
        }
    };
    let status = child.0.wait().context("failed to wait for qemu")?;
    let end = end.unwrap_or(VmEnd::Exited(status));
    log.note(&match &end {
        VmEnd::Exited(status) => format!("qemu exited: {status}"),
        VmEnd::TimedOut => format!(
            "killed qemu after the time limit of {} s",
            config.timeout.as_secs()
        ),
        VmEnd::Silent(silence) => {
            format!("killed qemu: nothing arrived for {} s", silence.as_secs())
        }
        VmEnd::KilledAfterFinish => {
            "killed qemu: the suite finished but the VM did not power off".to_owned()
        }
    });
    log.out
        .flush()
        .with_context(|| format!("failed to write {}", config.log.display()))?;
    Ok(end)
}

fn command(config: &VmConfig<'_>, socket: &Path) -> Command {
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
    cmd
}

/// Waits for qemu to connect to the results socket (it does so while it
/// starts, before the guest runs) and starts reading it. Gives up quietly if
/// qemu exits first: its stderr says why.
fn accept_results(listener: &UnixListener, qemu: &mut Child, tx: mpsc::Sender<Line>) -> Result<()> {
    listener
        .set_nonblocking(true)
        .context("failed to make the results socket non-blocking")?;
    let started = Instant::now();
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream
                    .set_nonblocking(false)
                    .context("failed to make the results stream blocking")?;
                spawn_reader(stream, Stream::Results, tx);
                return Ok(());
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if qemu.try_wait().ok().flatten().is_some()
                    || started.elapsed() > Duration::from_mins(1)
                {
                    return Ok(());
                }
                thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The console log: every line with its time and source.
struct Log {
    out: BufWriter<fs::File>,
    started: Instant,
}

impl Log {
    /// Writes a line; returns its time since the start.
    fn write(&mut self, at: Instant, stream: Stream, text: &str) -> Duration {
        let t = at.duration_since(self.started);
        let _ = writeln!(self.out, "{:9.3} {}{text}", t.as_secs_f64(), stream.tag());
        t
    }

    fn note(&mut self, text: &str) {
        let _ = writeln!(
            self.out,
            "{:9.3} # {text}",
            self.started.elapsed().as_secs_f64()
        );
    }
}

fn spawn_reader(source: impl Read + Send + 'static, stream: Stream, tx: mpsc::Sender<Line>) {
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
