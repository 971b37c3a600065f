//! The guest side: the `/init` script and the line protocol it speaks on the
//! second serial port (`ttyS1`; the first is the kernel's console).
//!
//! Every protocol line starts with a marker holding a per-run random nonce,
//! at the start of a line, so neither test output nor kernel messages can be
//! taken for a result. Each test runs as its own process between
//! `TEST-BEGIN` and `TEST-END <exit status>`, so a crash, a hang (killed by
//! the per-test time limit) or a verifier rejection fails that test alone.
//!
//! ```text
//! @@LBVM-<nonce> BOOTED <uptime seconds>
//! @@LBVM-<nonce> FACT <btf|cgroup2|bpffs|release> <value>
//! @@LBVM-<nonce> MODULE <name> <builtin|loaded|failed|absent>
//! @@LBVM-<nonce> READY
//! @@LBVM-<nonce> BINARY-BEGIN <binary>
//! @@LBVM-<nonce> TEST-BEGIN <binary> <test>
//! ...libtest output of `<binary> --exact <test> --test-threads=1`...
//! @@LBVM-<nonce> TEST-END <binary> <test> <exit status>
//! @@LBVM-<nonce> REPORT <a line of $LB_TEST_REPORT, e.g. SKIP\t<test>\t<reason>>
//! @@LBVM-<nonce> BINARY-END <binary>
//! @@LBVM-<nonce> DONE
//! ```

use std::{fmt::Write as _, fs, io::Read as _, time::Duration};

use super::{initramfs::ModuleSource, suite::Built};

/// Where things live in the guest.
pub const AGENT_PATH: &str = "/bin/lb-agent";
pub const TESTS_DIR: &str = "/tests";
pub const REPORT_PATH: &str = "/tmp/report";

/// How often the guest says it is alive (`ALIVE`).
pub const ALIVE_EVERY: Duration = Duration::from_secs(10);

/// How long a test killed at its time limit gets to go away before `/init`
/// gives up on it (a task stuck in the kernel ignores SIGKILL).
pub const KILL_GRACE: Duration = Duration::from_secs(30);

/// The per-run marker that starts every protocol line.
#[derive(Clone)]
pub struct Marker(String);

impl Marker {
    pub fn random() -> Self {
        let mut bytes = [0u8; 8];
        let nonce = fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut bytes))
            .map_or_else(
                |_| {
                    format!(
                        "{:x}{:x}",
                        std::process::id(),
                        std::time::UNIX_EPOCH
                            .elapsed()
                            .unwrap_or_default()
                            .as_nanos()
                    )
                },
                |()| {
                    bytes.iter().fold(String::new(), |mut s, b| {
                        let _ = write!(s, "{b:02x}");
                        s
                    })
                },
            );
        Self(format!("@@LBVM-{nonce}"))
    }

    /// The protocol message of a line, if it is one.
    pub fn parse<'a>(&self, line: &'a str) -> Option<&'a str> {
        line.strip_prefix(self.0.as_str())?.strip_prefix(' ')
    }
}

/// Single-quotes a word for `sh`.
fn quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// The `/init` script: mounts, modules, facts, then each test, then power-off.
pub fn init_script(
    marker: &Marker,
    built: &Built,
    modules: &[(String, ModuleSource)],
    test_timeout: Duration,
) -> String {
    let mut s = String::new();
    let m = &marker.0;
    let _ = write!(
        s,
        r#"#!/bin/sh
# /init of an end-to-end test VM, written by `cargo xtask vm`.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TMPDIR=/tmp
export LB_AGENT_BIN={AGENT_PATH} LB_TEST_REPORT={REPORT_PATH} RUST_BACKTRACE=1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# Results go to the second serial port; the first is the kernel's console.
if [ -c /dev/ttyS1 ]; then
  stty -F /dev/ttyS1 raw -echo 2>/dev/null
  exec </dev/null >/dev/ttyS1 2>&1
fi
say() {{ echo "{m} $*"; }}
say BOOTED "$(cut -d' ' -f1 /proc/uptime)"
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
if mount -t cgroup2 cgroup2 /sys/fs/cgroup; then say FACT cgroup2 yes; else say FACT cgroup2 no; fi
if mount -t bpf bpf /sys/fs/bpf; then say FACT bpffs yes; else say FACT bpffs no; fi
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
if [ -e /sys/kernel/btf/vmlinux ]; then say FACT btf yes; else say FACT btf no; fi
say FACT release "$(uname -r)"
load() {{
  m=$1; shift
  for f in "$@"; do
    n=$(basename "$f" .ko | tr - _)
    [ -d "/sys/module/$n" ] || insmod "$f" || {{ say MODULE "$m" failed; return; }}
  done
  say MODULE "$m" loaded
}}
"#
    );
    for (name, source) in modules {
        match source {
            ModuleSource::BuiltIn => {
                let _ = writeln!(s, "say MODULE {name} builtin");
            }
            ModuleSource::Absent => {
                let _ = writeln!(s, "say MODULE {name} absent");
            }
            ModuleSource::Module(files) => {
                let files: Vec<String> = files.iter().map(|f| quote(f)).collect();
                let _ = writeln!(s, "load {name} {}", files.join(" "));
            }
        }
    }
    s.push_str(&runner(marker, built.include_ignored, test_timeout));
    for binary in &built.binaries {
        let _ = writeln!(s, "say BINARY-BEGIN {}", quote(&binary.name));
        for test in binary.tests.iter().filter(|t| !t.ignored) {
            let _ = writeln!(s, "t {} {}", quote(&binary.name), quote(&test.name));
        }
        let _ = writeln!(s, "say BINARY-END {}", quote(&binary.name));
    }
    s.push_str(
        "say DONE\n\
         # Closing the port waits until its last bytes are out.\n\
         exec >/dev/null 2>&1\n\
         poweroff -f\n",
    );
    s
}

/// The part of `/init` that runs tests: the heartbeat, the per-test
/// watchdog (a task list at the time limit, then SIGKILL to the test's
/// session, then giving up on a test stuck in the kernel), and `t <binary>
/// <test>`.
fn runner(marker: &Marker, include_ignored: bool, test_timeout: Duration) -> String {
    let include_ignored = if include_ignored {
        " --include-ignored"
    } else {
        ""
    };
    let mut s = String::new();
    let m = &marker.0;
    let _ = write!(
        s,
        r#"ip link set lo up
# A sign of life every {alive} s: the host takes a longer silence for a
# guest that stopped. (The newline first: a test may have left half a line.)
(while sleep {alive}; do printf '\n%s ALIVE %s\n' "{m}" "$(cut -d' ' -f1 /proc/uptime)"; done) &
# What each user-space task is doing, and any task stuck in the kernel
# (state D) with its kernel stack.
tasks() {{
  for d in /proc/[0-9]*/task/[0-9]*; do
    read -r s < "$d/stat" 2>/dev/null || continue
    st=${{s##*) }}; st=${{st%% *}}; c=${{s#*(}}; c=${{c%)*}}
    p=${{d#/proc/}}; p=${{p%%/*}}
    [ -n "$(head -c1 "/proc/$p/cmdline" 2>/dev/null)" ] || [ "$st" = D ] || continue
    echo "  $p/${{d##*/}} $st $c wchan=$(cat "$d/wchan" 2>/dev/null)"
    [ "$st" = D ] && sed 's/^/      /' "$d/stack" 2>/dev/null
  done
}}
stuck=
trap 'stuck=1' USR1
# Kills a test (its whole session) at the time limit; if it is still there
# {grace} later (stuck in the kernel), tells /init to go on without it.
watchdog() {{
  sleep {secs}
  kill -0 "$1" 2>/dev/null || exit 0
  echo
  echo "=== the per-test time limit of {secs} s passed; the tasks:"
  tasks
  echo w > /proc/sysrq-trigger
  kill -KILL -"$1" 2>/dev/null
  sleep {grace}
  kill -0 "$1" 2>/dev/null || exit 0
  echo "=== still there {grace} s after SIGKILL:"
  tasks
  kill -USR1 1
}}
say READY
t() {{
  : > {REPORT_PATH}
  say TEST-BEGIN "$1" "$2"
  (cd /tmp && exec setsid "{TESTS_DIR}/$1" --exact "$2" --test-threads=1{include_ignored}) &
  pid=$!
  watchdog "$pid" &
  dog=$!
  stuck=
  wait "$pid"
  rc=$?
  [ -n "$stuck" ] && rc=unkillable
  kill "$dog" 2>/dev/null
  # What the test left running (its session) goes with it.
  kill -KILL -"$pid" 2>/dev/null
  echo
  say TEST-END "$1" "$2" "$rc"
  while IFS= read -r l || [ -n "$l" ]; do say REPORT "$l"; done < {REPORT_PATH}
}}
"#,
        secs = test_timeout.as_secs().max(1),
        alive = ALIVE_EVERY.as_secs(),
        grace = KILL_GRACE.as_secs(),
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_only_matches_whole_prefix() {
        let m = Marker("@@LBVM-abc".to_owned());
        assert_eq!(m.parse("@@LBVM-abc DONE"), Some("DONE"));
        assert_eq!(m.parse("@@LBVM-abcd DONE"), None);
        assert_eq!(m.parse("x @@LBVM-abc DONE"), None);
        assert_eq!(m.parse("@@LBVM-abd DONE"), None);
    }

    /// The script parses (`sh -n`, the host's POSIX shell; the guest's is
    /// busybox ash). What it does is tried in the VM runs.
    #[test]
    fn init_script_is_valid_sh() {
        use std::{io::Write as _, process::Stdio};

        use super::super::suite::{TestBinary, TestCase};

        let built = Built {
            binaries: vec![TestBinary {
                name: "e2e_x".to_owned(),
                path: "/nonexistent".into(),
                tests: vec![TestCase {
                    name: "it's_a_test".to_owned(),
                    ignored: false,
                }],
            }],
            agent: None,
            include_ignored: false,
        };
        let script = init_script(
            &Marker("@@LBVM-abc".to_owned()),
            &built,
            &[("veth".to_owned(), ModuleSource::BuiltIn)],
            Duration::from_mins(1),
        );
        let mut sh = std::process::Command::new("sh")
            .arg("-n")
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sh");
        sh.stdin
            .take()
            .expect("stdin")
            .write_all(script.as_bytes())
            .expect("write");
        let out = sh.wait_with_output().expect("sh -n");
        assert!(
            out.status.success(),
            "{}\n{script}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(script.contains("t 'e2e_x' 'it'\\''s_a_test'"), "{script}");
    }

    #[test]
    fn quoting() {
        assert_eq!(quote("a::b"), "'a::b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
    }
}
