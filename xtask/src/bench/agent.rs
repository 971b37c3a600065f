//! This project's peer: the release-built `lb-agent run --services-file`,
//! in the node namespace, attached to the bench cgroup, with its own pins.
//! Timings come from the agent's own log (`loaded services file`, then
//! `synced ... duration_us=`), read as it is written.

use std::{
    fs::{self, File},
    io::{Read as _, Seek as _, SeekFrom},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;

use lb_testbed::net::in_netns;

use super::world::{NODE, PREFIX, World};

/// The empty `v1 List`: no services.
pub const EMPTY: &str = "{\"apiVersion\":\"v1\",\"kind\":\"List\",\"metadata\":{\"resourceVersion\":\"\"},\"items\":[]}\n";

pub struct Agent {
    bin: PathBuf,
    child: Option<Child>,
    pub bpffs: PathBuf,
    pub file: PathBuf,
    log: PathBuf,
    log_offset: u64,
    /// When the agent last logged `loaded services file` (epoch seconds).
    last_loaded: Option<f64>,
    /// Parse and translate times of the last load, when logged.
    last_parse: Option<(Option<f64>, Option<f64>)>,
}

/// One file write, as the agent handled it.
#[derive(Clone, Debug, Serialize)]
pub struct Programmed {
    /// Rename of the file -> `synced` line seen in the log (what a user waits).
    pub end_to_end_ms: f64,
    /// Rename -> `loaded services file` logged: inotify,
    /// read, parse, translate.
    pub load_ms: f64,
    /// `loaded` -> sync started (hand-over to the sync loop).
    pub handoff_ms: f64,
    /// Of `load_ms`: parsing and translating, when the agent logs them
    /// (`parsed and translated services file parse_ms= translate_ms=`).
    pub parse_ms: Option<f64>,
    pub translate_ms: Option<f64>,
    /// The sync itself, as the agent reports it (`duration_us`): diff and map writes.
    pub sync_ms: f64,
    pub changes: u64,
}

/// The agent's memory once programmed.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Memory {
    pub rss_kib: u64,
    /// Sum of `memlock` over the agent's BPF maps (fdinfo).
    pub maps_memlock_kib: u64,
    pub maps: usize,
}

impl Agent {
    /// Starts the agent on an empty services file and waits until it is ready.
    pub fn start(bin: &Path, world: &World, seq: usize, capacity: (u32, u32)) -> Result<Self> {
        let bpffs = PathBuf::from("/sys/fs/bpf").join(format!("{PREFIX}-{seq}"));
        let file = world.dir.join(format!("services-{seq}.json"));
        let log = world.dir.join(format!("agent-{seq}.log"));
        fs::write(&file, EMPTY).with_context(|| format!("failed to write {}", file.display()))?;
        let child = in_netns(NODE, bin)
            .arg("run")
            .arg("--services-file")
            .arg(&file)
            .arg("--cgroup")
            .arg(&world.cgroup)
            .arg("--bpffs")
            .arg(&bpffs)
            .args(["--metrics-addr", "127.0.0.1:9464"])
            .args(["--max-services", &capacity.0.to_string()])
            .args(["--max-backends", &capacity.1.to_string()])
            // The file source's debug line splits parsing from translating.
            .env("RUST_LOG", "info,lb_agent::source::file=debug")
            .stdout(Stdio::null())
            .stderr(
                File::create(&log)
                    .with_context(|| format!("failed to create {}", log.display()))?,
            )
            .spawn()
            .with_context(|| format!("failed to start {}", bin.display()))?;
        let mut agent = Self {
            bin: bin.to_path_buf(),
            child: Some(child),
            bpffs,
            file,
            log,
            log_offset: 0,
            last_loaded: None,
            last_parse: None,
        };
        agent.wait_line("first full state programmed: ready", Duration::from_mins(1))?;
        Ok(agent)
    }

    /// Replaces the services file (write, then rename, as editors do) and
    /// waits for the agent to have synced it.
    pub fn program(&mut self, text: &str, timeout: Duration) -> Result<Programmed> {
        let (at_wall, at) = self.write(text)?;
        let line = self.wait_line("lb_agent::sync: synced", timeout)?;
        let end_to_end = at.elapsed();
        let loaded = self.last_loaded.take();
        let (parse_ms, translate_ms) = self.last_parse.take().unwrap_or((None, None));
        let synced_ts = line_time(&line).context("agent log line without a timestamp")?;
        #[expect(clippy::cast_precision_loss, reason = "microseconds fit an f64")]
        let sync_ms = field(&line, "duration_us").unwrap_or(0) as f64 / 1000.0;
        let load_ms = loaded.map_or(f64::NAN, |l| (l - at_wall) * 1000.0);
        let handoff_ms = loaded.map_or(f64::NAN, |l| (synced_ts - l) * 1000.0 - sync_ms);
        Ok(Programmed {
            end_to_end_ms: end_to_end.as_secs_f64() * 1000.0,
            load_ms,
            handoff_ms,
            parse_ms,
            translate_ms,
            sync_ms,
            changes: field(&line, "changes").unwrap_or(0),
        })
    }

    /// Writes the services file; returns when the rename happened (wall
    /// clock seconds, and an `Instant`).
    pub fn write(&mut self, text: &str) -> Result<(f64, Instant)> {
        self.stage(text)?;
        self.commit()
    }

    /// Writes the next version of the file beside it, not yet seen.
    pub fn stage(&self, text: &str) -> Result<()> {
        let tmp = self.file.with_extension("tmp");
        fs::write(&tmp, text).with_context(|| format!("failed to write {}", tmp.display()))
    }

    /// Renames the staged file over the services file (the edit the agent sees).
    pub fn commit(&self) -> Result<(f64, Instant)> {
        let tmp = self.file.with_extension("tmp");
        let wall = unix_now();
        let at = Instant::now();
        fs::rename(&tmp, &self.file).with_context(|| {
            format!(
                "failed to rename {} to {}",
                tmp.display(),
                self.file.display()
            )
        })?;
        Ok((wall, at))
    }

    /// Waits for the next `synced` line after a [`Self::write`]; returns the
    /// sync's own duration in milliseconds.
    pub fn wait_synced(&mut self, timeout: Duration) -> Result<f64> {
        let line = self.wait_line("lb_agent::sync: synced", timeout)?;
        #[expect(clippy::cast_precision_loss, reason = "microseconds fit an f64")]
        Ok(field(&line, "duration_us").unwrap_or(0) as f64 / 1000.0)
    }

    /// Resident memory and the kernel memory of the maps it holds.
    pub fn memory(&self) -> Result<Memory> {
        let pid = self
            .child
            .as_ref()
            .context("the agent is not running")?
            .id();
        let status_path = format!("/proc/{pid}/status");
        let status = fs::read_to_string(&status_path)
            .with_context(|| format!("failed to read {status_path}"))?;
        let rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        let mut seen = std::collections::BTreeSet::new();
        let mut memlock = 0u64;
        let fd_dir = format!("/proc/{pid}/fd");
        for entry in fs::read_dir(&fd_dir)
            .with_context(|| format!("failed to read {fd_dir}"))?
            .flatten()
        {
            let is_map = fs::read_link(entry.path())
                .is_ok_and(|t| t.to_string_lossy() == "anon_inode:bpf-map");
            if !is_map {
                continue;
            }
            let info_path = format!("/proc/{pid}/fdinfo/{}", entry.file_name().to_string_lossy());
            let Ok(info) = fs::read_to_string(&info_path) else {
                continue;
            };
            let value = |key: &str| -> Option<u64> {
                info.lines()
                    .find_map(|l| l.strip_prefix(key))
                    .and_then(|v| v.trim().parse().ok())
            };
            if let (Some(id), Some(bytes)) = (value("map_id:"), value("memlock:"))
                && seen.insert(id)
            {
                memlock += bytes;
            }
        }
        Ok(Memory {
            rss_kib,
            maps_memlock_kib: memlock / 1024,
            maps: seen.len(),
        })
    }

    /// CPU time the agent has used (user + system), in seconds.
    pub fn cpu_seconds(&self) -> Result<f64> {
        let pid = self
            .child
            .as_ref()
            .context("the agent is not running")?
            .id();
        let path = format!("/proc/{pid}/stat");
        let stat = fs::read_to_string(&path).with_context(|| format!("failed to read {path}"))?;
        // Fields after the command name (which may contain spaces): utime is the 12th, stime the 13th.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let fields: Vec<u64> = rest
            .split_whitespace()
            .skip(11)
            .take(2)
            .filter_map(|v| v.parse().ok())
            .collect();
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
        #[expect(clippy::cast_precision_loss, reason = "tick counts fit an f64")]
        Ok(fields.iter().sum::<u64>() as f64 / ticks as f64)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Reads new log lines until one contains `needle`; fails on a rejected
    /// file or an exited agent. Remembers the last `loaded services file` time.
    fn wait_line(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        let mut pending = String::new();
        loop {
            let mut f = File::open(&self.log)
                .with_context(|| format!("failed to open {}", self.log.display()))?;
            f.seek(SeekFrom::Start(self.log_offset))
                .with_context(|| format!("failed to read {}", self.log.display()))?;
            let mut chunk = String::new();
            let read = f
                .read_to_string(&mut chunk)
                .with_context(|| format!("failed to read {}", self.log.display()))?;
            self.log_offset += read as u64;
            pending.push_str(&chunk);
            while let Some(end) = pending.find('\n') {
                let line: String = pending.drain(..=end).collect();
                if line.contains("parsed and translated services file") {
                    self.last_parse = Some((
                        float_field(&line, "parse_ms"),
                        float_field(&line, "translate_ms"),
                    ));
                }
                if line.contains("lb_agent::source::file: loaded services file") {
                    self.last_loaded = line_time(&line);
                }
                if line.contains("keeping the state programmed before") || line.contains(" ERROR ")
                {
                    bail!("lb-agent rejected the services file: {}", line.trim());
                }
                if line.contains(needle) {
                    self.log_offset -= pending.len() as u64;
                    return Ok(line);
                }
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!("lb-agent exited ({status}):\n{}", self.log_tail());
            }
            if Instant::now() > deadline {
                bail!(
                    "lb-agent did not log {needle:?} within {timeout:?}:\n{}",
                    self.log_tail()
                );
            }
            // Keep the unread tail of a partly written line.
            self.log_offset -= pending.len() as u64;
            pending.clear();
            std::thread::sleep(Duration::from_micros(500));
        }
    }
}

impl Agent {
    /// The last lines of the agent's log, for error messages.
    fn log_tail(&self) -> String {
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(i32::try_from(child.id()).unwrap_or(0), libc::SIGTERM) };
            let _ = child.wait();
        }
        let _ = Command::new(&self.bin)
            .arg("cleanup")
            .arg("--bpffs")
            .arg(&self.bpffs)
            .stderr(Stdio::null())
            .status();
        let _ = fs::remove_dir_all(&self.bpffs);
        let _ = fs::remove_file(&self.file);
    }
}

/// Seconds since the epoch, now.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// The timestamp that starts a tracing line (`2026-11-24T02:57:27.548911Z`),
/// as seconds since the epoch.
fn line_time(line: &str) -> Option<f64> {
    let ts = line.split_whitespace().next()?.strip_suffix('Z')?;
    let (date, time) = ts.split_once('T')?;
    let mut ymd = date.split('-').map(str::parse::<i64>);
    let (year, month, day) = (ymd.next()?.ok()?, ymd.next()?.ok()?, ymd.next()?.ok()?);
    let mut hms = time.split(':').map(str::parse::<f64>);
    let (hour, minute, second) = (hms.next()?.ok()?, hms.next()?.ok()?, hms.next()?.ok()?);
    #[expect(clippy::cast_precision_loss, reason = "day counts are small")]
    let days = days_from_civil(year, month, day) as f64;
    Some(days * 86_400.0 + hour * 3600.0 + minute * 60.0 + second)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `key=NUMBER` from a tracing line.
fn field(line: &str, key: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

/// `key=NUMBER` (with a fraction) from a tracing line.
fn float_field(line: &str, key: &str) -> Option<f64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::{days_from_civil, field, float_field, line_time};

    #[test]
    fn parses_the_agents_log_lines() {
        let line = "2026-11-24T02:57:27.548911Z  INFO lb_agent::sync: synced changes=1 upserted=1 removed=0 \
                    backends_written=3 rejected=0 duration_us=111";
        assert_eq!(field(line, "duration_us"), Some(111));
        assert_eq!(field(line, "changes"), Some(1));
        let t = line_time(line).expect("time");
        assert!((t - 1_795_489_047.548_911).abs() < 1e-3, "{t}");
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        let debug = "2026-11-24T03:29:35.215702Z DEBUG lb_agent::source::file: parsed and translated services file \
                     parse_ms=0.053741 translate_ms=0.008392 services=1 endpoint_slices=0";
        assert_eq!(float_field(debug, "parse_ms"), Some(0.053_741));
    }
}
