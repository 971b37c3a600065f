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
    let include_ignored = if built.include_ignored {
        " --include-ignored"
    } else {
        ""
    };
    let _ = write!(
        s,
        r#"ip link set lo up
say READY
t() {{
  : > {REPORT_PATH}
  say TEST-BEGIN "$1" "$2"
  (cd /tmp && exec timeout -s KILL {secs} "{TESTS_DIR}/$1" --exact "$2" --test-threads=1{include_ignored})
  rc=$?
  echo
  say TEST-END "$1" "$2" "$rc"
  while IFS= read -r l || [ -n "$l" ]; do say REPORT "$l"; done < {REPORT_PATH}
}}
"#,
        secs = test_timeout.as_secs().max(1),
    );
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

    #[test]
    fn quoting() {
        assert_eq!(quote("a::b"), "'a::b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
    }
}
