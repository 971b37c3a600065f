//! From console lines to results: the protocol parser that follows a VM as it
//! runs, the per-kernel report, and the kernel x test table.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    fmt::Write as _,
    path::PathBuf,
    time::Duration,
};

use super::{
    Kernel,
    guest::{KILL_GRACE, Marker},
    kernel::FetchTimes,
    qemu::{Next, Stream, VmEnd},
    suite::Built,
};

/// The result of the suite on one kernel.
pub struct SuiteReport {
    pub kernel: Kernel,
    /// The Debian package and version the kernel came from.
    pub package: String,
    pub version: String,
    /// What the guest reported (over both VMs, when a second one ran).
    pub guest: GuestRun,
    /// From starting qemu to its exit.
    pub vm_time: Duration,
    pub fetch: Option<FetchTimes>,
    pub initramfs_bytes: u64,
    pub initramfs_time: Duration,
    /// The full console log (both serial ports and qemu's stderr).
    pub log: PathBuf,
}

/// What a guest reported over one run of the suite.
pub struct GuestRun {
    pub facts: Facts,
    pub tests: Vec<TestReport>,
    /// What went wrong with the VM itself (panic, time limit, no power-off...).
    pub problems: Vec<String>,
    /// Kernel warnings and the like: shown, but not failures by themselves.
    pub notes: Vec<String>,
    /// From starting qemu to `/init` running.
    pub boot_time: Option<Duration>,
    /// The guest's uptime when `/init` started.
    pub guest_uptime_at_init: Option<f64>,
    /// The last console lines, shown when the VM failed.
    pub console_tail: Vec<String>,
}

#[derive(Default, Clone, Debug)]
pub struct Facts {
    pub release: Option<String>,
    pub btf: Option<bool>,
    pub cgroup2: Option<bool>,
    pub bpffs: Option<bool>,
    /// (module, "builtin" | "loaded" | "failed" | "absent") as the guest saw it.
    pub modules: Vec<(String, String)>,
}

pub struct TestReport {
    pub binary: String,
    pub name: String,
    pub outcome: Outcome,
    pub duration: Option<Duration>,
    /// Everything the test printed (libtest's output, the failures section).
    pub output: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    /// With a one-line reason.
    Failed(String),
    /// The test found the kernel lacking a feature (`SKIP` in `$LB_TEST_REPORT`).
    Skipped(String),
    /// `#[ignore]`d.
    Ignored,
    /// The VM ended before it ran: a failure.
    NotRun(String),
}

impl Outcome {
    pub fn is_failure(&self) -> bool {
        matches!(self, Self::Failed(_) | Self::NotRun(_))
    }

    fn cell(&self) -> &'static str {
        match self {
            Self::Passed => "pass",
            Self::Failed(_) => "FAIL",
            Self::Skipped(_) => "skipped",
            Self::Ignored => "ignored",
            Self::NotRun(_) => "NOT RUN",
        }
    }
}

impl SuiteReport {
    pub fn failed(&self) -> usize {
        self.guest
            .tests
            .iter()
            .filter(|t| t.outcome.is_failure())
            .count()
            + usize::from(!self.guest.problems.is_empty())
    }

    pub fn success(&self) -> bool {
        self.failed() == 0
    }
}

/// Counts over all reports.
#[derive(Default, Clone, Copy, Debug)]
pub struct Totals {
    pub passed: usize,
    /// Failed and not-run tests, plus VMs that failed by themselves.
    pub failed: usize,
    pub skipped: usize,
    pub ignored: usize,
}

const TAIL_LINES: usize = 40;

/// The exit status `/init` reports for a test that outlived SIGKILL.
const UNKILLABLE: i32 = -2;

/// Kernel console lines that mean the kernel is broken.
/// ("[#1]" is in the header of the first oops on every version.)
const FATAL_PATTERNS: &[&str] = &["Kernel panic - not syncing", "BUG: ", "Oops: ", "[#1]"];
/// Kernel console lines worth showing (warnings, stalls, user-space crashes).
const NOTE_PATTERNS: &[&str] = &[
    "WARNING: CPU:",
    "blocked for more than",
    "rcu_sched detected stall",
    "detected stalls on CPUs",
    "traps: ",
    " segfault at ",
];

struct Running {
    index: usize,
    started: Duration,
    output: Vec<String>,
}

struct Ended {
    index: usize,
    status: i32,
    reports: Vec<String>,
}

/// Follows one VM's console lines.
pub struct Collector {
    marker: Marker,
    label: &'static str,
    test_timeout: Duration,
    tests: Vec<TestReport>,
    index: HashMap<(String, String), usize>,
    running: Option<Running>,
    ended: Option<Ended>,
    facts: Facts,
    booted_at: Option<Duration>,
    guest_uptime_at_init: Option<f64>,
    done: bool,
    problems: Vec<String>,
    notes: Vec<String>,
    tail: VecDeque<String>,
    /// Lines of a kernel oops/panic, kept whole.
    fatal: Vec<String>,
    fatal_countdown: usize,
}

impl Collector {
    pub fn new(marker: Marker, kernel: Kernel, built: &Built, test_timeout: Duration) -> Self {
        let mut tests = Vec::new();
        let mut index = HashMap::new();
        for binary in &built.binaries {
            for test in &binary.tests {
                index.insert((binary.name.clone(), test.name.clone()), tests.len());
                tests.push(TestReport {
                    binary: binary.name.clone(),
                    name: test.name.clone(),
                    outcome: if test.ignored {
                        Outcome::Ignored
                    } else {
                        Outcome::NotRun("the VM ended before this test ran".to_owned())
                    },
                    duration: None,
                    output: Vec::new(),
                });
            }
        }
        Self {
            marker,
            label: kernel.label(),
            test_timeout,
            tests,
            index,
            running: None,
            ended: None,
            facts: Facts::default(),
            booted_at: None,
            guest_uptime_at_init: None,
            done: false,
            problems: Vec::new(),
            notes: Vec::new(),
            tail: VecDeque::new(),
            fatal: Vec::new(),
            fatal_countdown: 0,
        }
    }

    pub fn feed(&mut self, at: Duration, stream: Stream, line: &str) -> Next {
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        let tag = match stream {
            Stream::Kernel => "kernel",
            Stream::Results => "tests",
            Stream::Qemu => "qemu",
        };
        self.tail.push_back(format!("{tag}| {line}"));
        match stream {
            Stream::Kernel => self.kernel_line(line),
            Stream::Qemu => self.notes.push(format!("qemu: {line}")),
            Stream::Results => {
                if let Some(message) = self.marker.parse(line) {
                    let message = message.to_owned();
                    self.message(at, &message);
                } else if let Some(running) = &mut self.running {
                    running.output.push(line.to_owned());
                }
            }
        }
        if self.done {
            Next::Finished
        } else {
            Next::Continue
        }
    }

    fn kernel_line(&mut self, line: &str) {
        if self.fatal_countdown > 0 {
            self.fatal_countdown -= 1;
            self.fatal.push(line.to_owned());
            return;
        }
        let fatal = FATAL_PATTERNS.iter().any(|p| line.contains(p));
        if !fatal && !NOTE_PATTERNS.iter().any(|p| line.contains(p)) {
            return;
        }
        let during = self
            .running_name()
            .map(|n| format!(" during {n}"))
            .unwrap_or_default();
        let said = format!("kernel{during}: {}", strip_printk_time(line));
        if fatal {
            self.fatal.push(line.to_owned());
            self.fatal_countdown = 30;
            self.problems.push(said);
        } else {
            self.notes.push(said);
        }
    }

    fn running_name(&self) -> Option<String> {
        let t = &self.tests[self.running.as_ref()?.index];
        Some(format!("{}::{}", t.binary, t.name))
    }

    fn message(&mut self, at: Duration, message: &str) {
        let mut words = message.splitn(2, ' ');
        let command = words.next().unwrap_or_default();
        let rest = words.next().unwrap_or_default();
        if command != "REPORT" && command != "ALIVE" {
            self.finish_ended();
        }
        match command {
            "BOOTED" => {
                self.booted_at = Some(at);
                self.guest_uptime_at_init = rest.trim().parse().ok();
            }
            "FACT" => {
                let (key, value) = rest.split_once(' ').unwrap_or((rest, ""));
                let yes = Some(value == "yes");
                match key {
                    "btf" => self.facts.btf = yes,
                    "cgroup2" => self.facts.cgroup2 = yes,
                    "bpffs" => self.facts.bpffs = yes,
                    "release" => self.facts.release = Some(value.to_owned()),
                    _ => {}
                }
            }
            "MODULE" => {
                let (name, state) = rest.split_once(' ').unwrap_or((rest, "?"));
                if state == "failed" {
                    self.problems.push(format!(
                        "could not load kernel module {name} (see the console log)"
                    ));
                }
                self.facts.modules.push((name.to_owned(), state.to_owned()));
            }
            "TEST-BEGIN" => {
                let mut parts = rest.split(' ');
                let key = (
                    parts.next().unwrap_or_default().to_owned(),
                    parts.next().unwrap_or_default().to_owned(),
                );
                if let Some(&index) = self.index.get(&key) {
                    self.running = Some(Running {
                        index,
                        started: at,
                        output: Vec::new(),
                    });
                }
            }
            "TEST-END" => {
                let mut parts = rest.split(' ');
                let key = (
                    parts.next().unwrap_or_default().to_owned(),
                    parts.next().unwrap_or_default().to_owned(),
                );
                let status = match parts.next() {
                    Some("unkillable") => UNKILLABLE,
                    other => other.and_then(|s| s.parse().ok()).unwrap_or(-1),
                };
                if let Some(running) = self.running.take()
                    && self.index.get(&key) == Some(&running.index)
                {
                    let test = &mut self.tests[running.index];
                    test.duration = Some(at.saturating_sub(running.started));
                    test.output = running.output;
                    self.ended = Some(Ended {
                        index: running.index,
                        status,
                        reports: Vec::new(),
                    });
                }
            }
            "REPORT" => {
                if let Some(ended) = &mut self.ended {
                    ended.reports.push(rest.to_owned());
                }
            }
            "DONE" => self.done = true,
            _ => {}
        }
    }

    /// Decides the outcome of the test that ended, now that its reports are in.
    fn finish_ended(&mut self) {
        let Some(Ended {
            index,
            status,
            reports,
        }) = self.ended.take()
        else {
            return;
        };
        let test = &mut self.tests[index];
        test.outcome = outcome(
            &test.name,
            status,
            &test.output,
            &reports,
            test.duration,
            self.test_timeout,
        );
        let time = test
            .duration
            .map(|d| format!(" ({:.1} s)", d.as_secs_f64()))
            .unwrap_or_default();
        let why = match &test.outcome {
            Outcome::Failed(why) | Outcome::Skipped(why) => format!(": {why}"),
            _ => String::new(),
        };
        eprintln!(
            "vm {}: {}::{} ... {}{time}{why}",
            self.label,
            test.binary,
            test.name,
            test.outcome.cell()
        );
    }

    /// The report, once qemu is gone.
    pub fn finish(mut self, end: &VmEnd, vm_time: Duration, timeout: Duration) -> CollectedRun {
        self.finish_ended();
        let how = match end {
            VmEnd::TimedOut => format!("the VM hit its time limit of {} s", timeout.as_secs()),
            VmEnd::Silent(silence) => format!(
                "the guest stopped (nothing on either serial port for {} s)",
                silence.as_secs()
            ),
            VmEnd::KilledAfterFinish => "the VM did not power off".to_owned(),
            VmEnd::Exited(status) if !status.success() => format!("qemu failed ({status})"),
            VmEnd::Exited(_) if !self.fatal.is_empty() => "the kernel crashed".to_owned(),
            VmEnd::Exited(_) => "the VM stopped".to_owned(),
        };
        let interrupted = self.running.as_ref().map(|r| r.index);
        if let Some(running) = self.running.take() {
            let test = &mut self.tests[running.index];
            test.duration = Some(vm_time.saturating_sub(running.started));
            test.output = running.output;
            test.outcome = Outcome::Failed(format!("{how} while this test ran"));
        }
        for test in &mut self.tests {
            if let Outcome::NotRun(why) = &mut test.outcome {
                *why = format!("{how} before this test ran");
            }
        }
        let stopped_early = if self.booted_at.is_none() {
            Some(format!("{how} before /init ran"))
        } else if !self.done {
            Some(format!("{how} before the suite finished"))
        } else {
            if matches!(end, VmEnd::KilledAfterFinish) {
                self.notes.push(how.clone());
            } else if matches!(end, VmEnd::Exited(status) if !status.success()) {
                self.problems.push(how.clone());
            }
            None
        };
        let mut tail: Vec<String> = self.tail.into_iter().collect();
        if !self.fatal.is_empty() {
            tail = self.fatal.iter().map(|l| format!("kernel| {l}")).collect();
        }
        CollectedRun {
            guest: GuestRun {
                facts: self.facts,
                tests: self.tests,
                problems: self.problems,
                notes: self.notes,
                boot_time: self.booted_at,
                guest_uptime_at_init: self.guest_uptime_at_init,
                console_tail: tail,
            },
            interrupted,
            how,
            stopped_early,
        }
    }
}

/// What a [`Collector`] gathered.
pub struct CollectedRun {
    pub guest: GuestRun,
    /// The test that was running when the VM ended, if one was.
    pub interrupted: Option<usize>,
    /// How the VM ended, in words.
    pub how: String,
    /// The VM ended before the suite finished: a problem, unless the tests
    /// it did not finish run again elsewhere.
    pub stopped_early: Option<String>,
}

fn strip_printk_time(line: &str) -> &str {
    match line.strip_prefix('[').and_then(|l| l.split_once("] ")) {
        Some((time, rest)) if time.trim().parse::<f64>().is_ok() => rest,
        _ => line,
    }
}

/// One test's outcome from its exit status, its libtest output and what it
/// wrote to `$LB_TEST_REPORT`.
fn outcome(
    name: &str,
    status: i32,
    output: &[String],
    reports: &[String],
    duration: Option<Duration>,
    limit: Duration,
) -> Outcome {
    let summary = output
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("test result: "));
    let skip = reports.iter().find_map(|r| {
        let mut fields = r.splitn(3, '\t');
        (fields.next() == Some("SKIP")).then(|| fields.nth(1).unwrap_or(r).trim().to_owned())
    });
    match status {
        0 => match summary {
            Some(s) if s.contains(" 1 passed;") => skip.map_or(Outcome::Passed, Outcome::Skipped),
            Some(s) if s.contains(" 0 passed; 0 failed; 1 ignored") => Outcome::Ignored,
            Some(s) => Outcome::Failed(format!("libtest ran no test named {name}: {s}")),
            None => Outcome::Failed("exited 0 without a libtest summary".to_owned()),
        },
        101 => Outcome::Failed(panic_message(output).unwrap_or_else(|| "failed".to_owned())),
        UNKILLABLE => Outcome::Failed(format!(
            "still there {} s after SIGKILL at the per-test time limit of {} s (stuck in the kernel: see the tasks below); the tests after it ran beside it",
            KILL_GRACE.as_secs(),
            limit.as_secs()
        )),
        137 if duration.is_some_and(|d| d + Duration::from_secs(1) >= limit) => {
            Outcome::Failed(format!(
                "killed after the per-test time limit of {} s",
                limit.as_secs()
            ))
        }
        129..=191 => {
            let signal = status - 128;
            let name = match signal {
                4 => " (SIGILL)",
                6 => " (SIGABRT)",
                7 => " (SIGBUS)",
                9 => " (SIGKILL: out of memory?)",
                11 => " (SIGSEGV)",
                _ => "",
            };
            Outcome::Failed(format!("crashed: signal {signal}{name}"))
        }
        other => Outcome::Failed(format!("exit status {other}")),
    }
}

/// The panic message of a failed libtest test (the line after "panicked at").
fn panic_message(output: &[String]) -> Option<String> {
    let at = output
        .iter()
        .position(|l| l.starts_with("thread '") && l.contains(" panicked at "))?;
    let line = &output[at];
    // Rust >= 1.73: "thread 'x' panicked at src/a.rs:1:2:" then the message.
    if line.ends_with(':') {
        output.get(at + 1).cloned()
    } else {
        Some(line.clone())
    }
}

/// The part of a failed test's output worth showing: libtest's section for it,
/// or the last lines.
fn failure_excerpt(test: &TestReport) -> Vec<&str> {
    const MAX: usize = 60;
    let header = format!("---- {} stdout ----", test.name);
    let lines: Vec<&str> = if let Some(start) = test.output.iter().position(|l| *l == header) {
        test.output[start + 1..]
            .iter()
            .take_while(|l| *l != "failures:")
            .map(String::as_str)
            .collect()
    } else {
        test.output.iter().map(String::as_str).collect()
    };
    let lines: Vec<&str> = lines.into_iter().filter(|l| !l.trim().is_empty()).collect();
    let skip = lines.len().saturating_sub(MAX);
    lines[skip..].to_vec()
}

fn yes_no(value: Option<bool>) -> &'static str {
    match value {
        Some(true) => "yes",
        Some(false) => "no",
        None => "?",
    }
}

/// One line about a kernel and its VM.
pub fn describe(report: &SuiteReport) -> String {
    let f = &report.guest.facts;
    let modules: Vec<String> = f
        .modules
        .iter()
        .map(|(name, state)| {
            let state = match state.as_str() {
                "loaded" => "module",
                "builtin" => "built-in",
                other => other,
            };
            format!("{name} {state}")
        })
        .collect();
    let mut s = format!(
        "{}: {} {} ({}); BTF {}, cgroup2 {}, bpffs {}; {}",
        report.kernel,
        report.package,
        report.version,
        f.release.as_deref().unwrap_or("did not boot"),
        yes_no(f.btf),
        yes_no(f.cgroup2),
        yes_no(f.bpffs),
        modules.join(", ")
    );
    let _ = write!(
        s,
        "\n      initramfs {} MiB in {:.1} s",
        report.initramfs_bytes.div_ceil(1 << 20),
        report.initramfs_time.as_secs_f64()
    );
    if let Some(boot) = report.guest.boot_time {
        let _ = write!(s, "; /init after {:.1} s", boot.as_secs_f64());
        if let Some(up) = report.guest.guest_uptime_at_init {
            let _ = write!(s, " (guest uptime {up:.2} s)");
        }
    }
    let _ = write!(s, "; VM ran {:.1} s", report.vm_time.as_secs_f64());
    if let Some(fetch) = report.fetch {
        let _ = write!(
            s,
            "; kernel downloaded in {:.1} s, unpacked in {:.1} s",
            fetch.download.as_secs_f64(),
            fetch.unpack.as_secs_f64()
        );
    }
    s
}

/// Prints the kernel x test table, the details of what did not pass, and a
/// summary line; returns the counts.
pub fn print_reports(reports: &[SuiteReport]) -> Totals {
    println!();
    for report in reports {
        println!("vm {}", describe(report));
    }
    let totals = print_table(reports);
    print_details(reports);
    println!();
    if totals.ignored > 0 {
        println!("vm: {} ignored test(s) counted as skipped", totals.ignored);
    }
    println!(
        "vm: {} passed, {} failed, {} skipped",
        totals.passed,
        totals.failed,
        totals.skipped + totals.ignored
    );
    totals
}

/// One row per test (in first-seen order), one column per kernel.
fn print_table(reports: &[SuiteReport]) -> Totals {
    let mut totals = Totals::default();
    let mut rows: Vec<(String, String)> = Vec::new();
    let mut cells: BTreeMap<(String, String), Vec<&str>> = BTreeMap::new();
    for (column, report) in reports.iter().enumerate() {
        for test in &report.guest.tests {
            let key = (test.binary.clone(), test.name.clone());
            let row = cells.entry(key.clone()).or_insert_with(|| {
                rows.push(key);
                vec![""; reports.len()]
            });
            row[column] = test.outcome.cell();
            match &test.outcome {
                Outcome::Passed => totals.passed += 1,
                Outcome::Failed(_) | Outcome::NotRun(_) => totals.failed += 1,
                Outcome::Skipped(_) => totals.skipped += 1,
                Outcome::Ignored => totals.ignored += 1,
            }
        }
        totals.failed += usize::from(!report.guest.problems.is_empty());
    }
    let names: Vec<String> = rows.iter().map(|(b, n)| format!("{b}::{n}")).collect();
    let width = names.iter().map(String::len).max().unwrap_or(0).max(4);
    println!();
    let mut header = format!("{:width$}", "test");
    for report in reports {
        let _ = write!(header, "  {:8}", report.kernel.label());
    }
    println!("{}", header.trim_end());
    for (name, key) in names.iter().zip(&rows) {
        let mut line = format!("{name:width$}");
        for cell in &cells[key] {
            let _ = write!(line, "  {cell:8}");
        }
        println!("{}", line.trim_end());
    }
    totals
}

/// Skip reasons grouped across kernels, then each failure with its output,
/// then what went wrong with the VMs themselves.
fn print_details(reports: &[SuiteReport]) {
    let mut skips: BTreeMap<(String, String), Vec<&str>> = BTreeMap::new();
    for report in reports {
        for test in &report.guest.tests {
            if let Outcome::Skipped(reason) = &test.outcome {
                skips
                    .entry((format!("{}::{}", test.binary, test.name), reason.clone()))
                    .or_default()
                    .push(report.kernel.label());
            }
        }
    }
    if !skips.is_empty() {
        println!();
        for ((name, reason), kernels) in &skips {
            println!("skipped on {}: {name}: {reason}", kernels.join(", "));
        }
    }
    for report in reports {
        // Tests that did not run share their reason (the table names them).
        let mut not_run: BTreeMap<&str, usize> = BTreeMap::new();
        for test in &report.guest.tests {
            match &test.outcome {
                Outcome::NotRun(why) => *not_run.entry(why).or_default() += 1,
                Outcome::Failed(why) => {
                    println!();
                    println!(
                        "FAIL on {}: {}::{}: {why}",
                        report.kernel, test.binary, test.name
                    );
                    for line in failure_excerpt(test) {
                        println!("    | {line}");
                    }
                }
                _ => {}
            }
        }
        for (why, n) in not_run {
            println!();
            println!("NOT RUN on {}: {n} test(s): {why}", report.kernel);
        }
        for note in &report.guest.notes {
            println!("note on {}: {note}", report.kernel);
        }
        if !report.guest.problems.is_empty() {
            println!();
            println!(
                "VM FAILED on {}: {}",
                report.kernel,
                report.guest.problems.join("; ")
            );
            println!("  last console lines:");
            for line in &report.guest.console_tail {
                println!("    {line}");
            }
        }
        if !report.success() {
            println!(
                "  full console log of {}: {}",
                report.kernel,
                report.log.display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_owned).collect()
    }

    const LIMIT: Duration = Duration::from_mins(10);

    #[test]
    fn outcomes_from_status_and_output() {
        let ok = lines(
            "\nrunning 1 test\ntest a ... ok\n\ntest result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 4 filtered out; finished in 0.00s",
        );
        assert_eq!(outcome("a", 0, &ok, &[], None, LIMIT), Outcome::Passed);
        let skip = ["SKIP\ta\tno bpf_set_retval before 5.18".to_owned()];
        assert_eq!(
            outcome("a", 0, &ok, &skip, None, LIMIT),
            Outcome::Skipped("no bpf_set_retval before 5.18".to_owned())
        );
        let ignored = lines(
            "test a ... ignored\n\ntest result: ok. 0 passed; 0 failed; 1 ignored; 0 measured; 4 filtered out",
        );
        assert_eq!(
            outcome("a", 0, &ignored, &[], None, LIMIT),
            Outcome::Ignored
        );
        let none =
            lines("test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 5 filtered out");
        assert!(outcome("a", 0, &none, &[], None, LIMIT).is_failure());
        assert!(outcome("a", 0, &[], &[], None, LIMIT).is_failure());
        let failed = lines(
            "test a ... FAILED\n\nfailures:\n\n---- a stdout ----\n\nthread 'a' (7) panicked at tests/x.rs:9:5:\nverifier rejected connect4\nnote: run with `RUST_BACKTRACE=1`\n\n\nfailures:\n    a\n\ntest result: FAILED. 0 passed; 1 failed",
        );
        assert_eq!(
            outcome("a", 101, &failed, &skip, None, LIMIT),
            Outcome::Failed("verifier rejected connect4".to_owned())
        );
        assert_eq!(
            outcome("a", 134, &[], &[], None, LIMIT),
            Outcome::Failed("crashed: signal 6 (SIGABRT)".to_owned())
        );
        assert_eq!(
            outcome("a", 137, &[], &[], Some(LIMIT), LIMIT),
            Outcome::Failed("killed after the per-test time limit of 600 s".to_owned())
        );
    }

    #[test]
    fn excerpt_is_the_failure_section() {
        let test = TestReport {
            binary: "e2e".to_owned(),
            name: "a".to_owned(),
            outcome: Outcome::Failed(String::new()),
            duration: None,
            output: lines(
                "running 1 test\ntest a ... FAILED\n\nfailures:\n\n---- a stdout ----\nboom\n\nfailures:\n    a",
            ),
        };
        assert_eq!(failure_excerpt(&test), vec!["boom"]);
    }

    #[test]
    fn printk_time_is_stripped() {
        assert_eq!(
            strip_printk_time("[    1.234567] Kernel panic - not syncing: x"),
            "Kernel panic - not syncing: x"
        );
        assert_eq!(strip_printk_time("[x] y"), "[x] y");
    }
}
