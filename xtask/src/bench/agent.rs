//! This project's peer: the release-built `lb-agent run --services-file`,
//! in the node namespace, attached to the bench cgroup, with its own pins.
//! Timings come from the agent's own log, written as JSON
//! (`--log-format json`) and read as it is written: the `loaded services
//! file` event, then `synced` with its `duration_us` field.

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
            .args(["--log-format", "json"])
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
        agent.wait_event(
            "lb_agent::run",
            "first full state programmed: ready",
            Duration::from_mins(1),
        )?;
        Ok(agent)
    }

    /// Replaces the services file (write, then rename, as editors do) and
    /// waits for the agent to have synced it.
    pub fn program(&mut self, text: &str, timeout: Duration) -> Result<Programmed> {
        let (at_wall, at) = self.write(text)?;
        let synced = self.wait_event("lb_agent::sync", "synced", timeout)?;
        let end_to_end = at.elapsed();
        let loaded = self.last_loaded.take();
        let (parse_ms, translate_ms) = self.last_parse.take().unwrap_or((None, None));
        let synced_ts = synced
            .time()
            .context("agent log event without a timestamp")?;
        let sync_ms = synced.number("duration_us").unwrap_or(0.0) / 1000.0;
        let load_ms = loaded.map_or(f64::NAN, |l| (l - at_wall) * 1000.0);
        let handoff_ms = loaded.map_or(f64::NAN, |l| (synced_ts - l) * 1000.0 - sync_ms);
        Ok(Programmed {
            end_to_end_ms: end_to_end.as_secs_f64() * 1000.0,
            load_ms,
            handoff_ms,
            parse_ms,
            translate_ms,
            sync_ms,
            changes: synced.count("changes").unwrap_or(0),
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
        let synced = self.wait_event("lb_agent::sync", "synced", timeout)?;
        Ok(synced.number("duration_us").unwrap_or(0.0) / 1000.0)
    }

    /// Resident memory and the kernel memory of the maps it holds.
    pub fn memory(&self) -> Result<Memory> {
        let pid = self.pid().context("the agent is not running")?;
        let rss_kib = lb_testbed::proc_status_kib(pid, "VmRSS")
            .with_context(|| format!("no VmRSS in /proc/{pid}/status"))?;
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
        let pid = self.pid().context("the agent is not running")?;
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

    /// Reads new log events until one from `target` says `message`; fails on
    /// a rejected file or an exited agent. Remembers the last `loaded
    /// services file` time and the parse and translate times.
    fn wait_event(&mut self, target: &str, message: &str, timeout: Duration) -> Result<Event> {
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
                let event = Event::parse(&line)
                    .with_context(|| format!("lb-agent logged a line that is not JSON: {line}"))?;
                if event.is(FILE_SOURCE, "parsed and translated services file") {
                    self.last_parse =
                        Some((event.number("parse_ms"), event.number("translate_ms")));
                }
                if event.is(FILE_SOURCE, "loaded services file") {
                    self.last_loaded = event.time();
                }
                if event.level() == Some("ERROR")
                    || event
                        .message()
                        .is_some_and(|m| m.contains("keeping the state programmed before"))
                {
                    bail!("lb-agent rejected the services file: {}", line.trim());
                }
                if event.is(target, message) {
                    self.log_offset -= pending.len() as u64;
                    return Ok(event);
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
                    "lb-agent did not log {message:?} ({target}) within {timeout:?}:\n{}",
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

/// Where the file source logs.
const FILE_SOURCE: &str = "lb_agent::source::file";

/// One line of the agent's JSON log (`--log-format json`).
struct Event(serde_json::Value);

impl Event {
    fn parse(line: &str) -> Option<Self> {
        serde_json::from_str(line).ok().map(Self)
    }

    fn message(&self) -> Option<&str> {
        self.0["fields"]["message"].as_str()
    }

    fn level(&self) -> Option<&str> {
        self.0["level"].as_str()
    }

    fn is(&self, target: &str, message: &str) -> bool {
        self.0["target"] == target && self.message() == Some(message)
    }

    /// When it was logged, as seconds since the epoch.
    fn time(&self) -> Option<f64> {
        let at: jiff::Timestamp = self.0["timestamp"].as_str()?.parse().ok()?;
        Some(at.as_duration().as_secs_f64())
    }

    /// A numeric field.
    fn number(&self, key: &str) -> Option<f64> {
        self.0["fields"][key].as_f64()
    }

    /// A counting field.
    fn count(&self, key: &str) -> Option<u64> {
        self.0["fields"][key].as_u64()
    }
}

#[cfg(test)]
mod tests {
    use super::Event;

    #[test]
    fn reads_the_agents_json_log() {
        let line = r#"{"timestamp":"2026-11-24T02:57:27.548911Z","level":"INFO","fields":{"message":"synced","changes":1,"upserted":1,"duration_us":111},"target":"lb_agent::sync"}"#;
        let event = Event::parse(line).expect("json");
        assert!(event.is("lb_agent::sync", "synced"));
        assert_eq!(event.count("changes"), Some(1));
        assert_eq!(event.number("duration_us"), Some(111.0));
        let t = event.time().expect("time");
        assert!((t - 1_795_489_047.548_911).abs() < 1e-3, "{t}");
        let debug = r#"{"timestamp":"2026-11-24T03:29:35.215702Z","level":"DEBUG","fields":{"message":"parsed and translated services file","parse_ms":0.053741,"translate_ms":0.008392},"target":"lb_agent::source::file"}"#;
        let event = Event::parse(debug).expect("json");
        assert_eq!(event.number("parse_ms"), Some(0.053_741));
        assert_eq!(event.level(), Some("DEBUG"));
    }
}
