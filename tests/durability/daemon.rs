//! The daemon's binary as a process that can be killed and started again
//! with the same config file (so the same state folder and MQTT session),
//! each start logging to a file of its own.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A `queuewatch run` process, killed and reaped when this drops.
pub struct Daemon {
    config: PathBuf,
    log_dir: PathBuf,
    name: String,
    /// Starts so far; start `n` logs to `<name>-<n>.log`.
    starts: usize,
    child: Option<Child>,
}

/// What a start's "State recovered." log line reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovery {
    pub snapshot: u64,
    pub replayed: u64,
}

/// How long a start may take to connect, a stop to exit, a condition to hold.
pub const DEADLINE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(20);

impl Daemon {
    /// Starts `queuewatch run --config config`, logging to `log_dir/<name>-1.log`.
    pub fn start(config: &Path, log_dir: &Path, name: &str) -> Daemon {
        let mut daemon = Daemon {
            config: config.to_path_buf(),
            log_dir: log_dir.to_path_buf(),
            name: name.to_string(),
            starts: 0,
            child: None,
        };
        daemon.restart();
        daemon
    }

    /// Starts the binary again with the same config file.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "{}: start while running", self.name);
        self.starts += 1;
        let log = File::create(self.log_path(self.starts)).unwrap();
        let child = Command::new(crate::common::queuewatch_bin())
            .args(["run", "--config"])
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("queuewatch run starts");
        self.child = Some(child);
    }

    /// Waits until the running start has logged `needle`; fails with the logs
    /// if it exits or `DEADLINE` passes first.
    pub async fn wait_for_log(&mut self, needle: &str) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if self.current_log().contains(needle) {
                return;
            }
            if let Some(exit) = self.child.as_mut().and_then(|child| child.try_wait().unwrap()) {
                panic!("{} exited ({exit}) before logging {needle:?}\n{}", self.name, self.log_tails(60));
            }
            assert!(
                Instant::now() < deadline,
                "{} did not log {needle:?} in {DEADLINE:?}\n{}",
                self.name,
                self.log_tails(60)
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until the running start is connected to the broker (its
    /// persistent session, created beforehand, keeps what arrives until then).
    pub async fn wait_until_connected(&mut self) {
        self.wait_for_log("Connected to the MQTT broker.").await;
    }

    /// SIGKILL: no chance to flush, acknowledge or write anything more.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("a running daemon to kill");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM, then waits for the exit; fails with the logs unless it exits
    /// 0. Returns how long it took from the signal to the exit.
    pub async fn terminate(&mut self) -> Duration {
        let pid = self.child.as_ref().expect("a running daemon to stop").id();
        let signalled = Instant::now();
        let status = Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
        assert!(status.success(), "kill -TERM {pid}");
        let exit = self.wait_for_exit().await;
        let took = signalled.elapsed();
        assert!(exit.success(), "{} exited {exit} after SIGTERM\n{}", self.name, self.log_tails(60));
        let log = self.current_log();
        assert!(log.contains("queuewatch stopped."), "{} stopped without saying so\n{}", self.name, self.log_tails(60));
        took
    }

    /// The operations endpoint's base URL (`http://127.0.0.1:<port>`), as the
    /// running start logged it; waits for the line.
    pub async fn ops_url(&mut self) -> String {
        self.wait_for_log(crate::common::OPS_LISTENING).await;
        crate::common::ops_url_in(&self.current_log())
    }

    async fn wait_for_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(exit) = self.child.as_mut().and_then(|child| child.try_wait().unwrap()) {
                self.child = None;
                return exit;
            }
            assert!(Instant::now() < deadline, "{} did not exit in {DEADLINE:?}\n{}", self.name, self.log_tails(60));
            tokio::time::sleep(POLL).await;
        }
    }

    /// What each start after the first reported recovering, in start order
    /// (`None` for a start that logged no recovery).
    /// What every start's "State recovered." line reported, the first start's included.
    pub fn recoveries(&self) -> Vec<Option<Recovery>> {
        (1..=self.starts).map(|start| recovery_in(&read(&self.log_path(start)))).collect()
    }

    pub fn recoveries_after_restarts(&self) -> Vec<Option<Recovery>> {
        (2..=self.starts).map(|start| recovery_in(&read(&self.log_path(start)))).collect()
    }

    /// The last `lines` lines of every start's log, each under a heading.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut text = String::new();
        for start in 1..=self.starts {
            let log = read(&self.log_path(start));
            let all: Vec<&str> = log.lines().collect();
            let tail = &all[all.len().saturating_sub(lines)..];
            text.push_str(&format!(
                "--- {} start {start}: last {} lines ---\n{}\n",
                self.name,
                tail.len(),
                tail.join("\n")
            ));
        }
        text
    }

    /// The running start's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the running start has logged `needle` so far.
    pub fn current_log_contains(&self, needle: &str) -> bool {
        self.current_log().contains(needle)
    }

    /// What the running start has logged so far.
    pub fn current_log(&self) -> String {
        read(&self.log_path(self.starts))
    }

    fn log_path(&self, start: usize) -> PathBuf {
        self.log_dir.join(format!("{}-{start}.log", self.name))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The `storage.data_dir` of a config text.
pub fn data_dir_of(config_text: &str) -> PathBuf {
    let line = config_text
        .lines()
        .find_map(|line| line.trim().strip_prefix("data_dir = "))
        .unwrap_or_else(|| panic!("no data_dir in the config:\n{config_text}"));
    PathBuf::from(line.trim_matches('"'))
}

/// Waits until a journal segment in `data_dir` holds `needle` (the record
/// of a message is written before the message is acknowledged); fails with
/// the daemon's logs after `DEADLINE`.
pub async fn wait_until_journaled(data_dir: &Path, needle: &[u8], daemon: &Daemon) {
    let state = data_dir.join("state");
    let deadline = Instant::now() + DEADLINE;
    loop {
        let journaled = std::fs::read_dir(&state).into_iter().flatten().flatten().any(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            name.starts_with("journal-")
                && name.ends_with(".qwj")
                && std::fs::read(entry.path())
                    .is_ok_and(|bytes| bytes.windows(needle.len()).any(|window| window == needle))
        });
        if journaled {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no journal segment in {} holds {:?} after {DEADLINE:?}\n{}",
            state.display(),
            String::from_utf8_lossy(needle),
            daemon.log_tails(60)
        );
        tokio::time::sleep(POLL).await;
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The numbers of a "State recovered." line: `snapshot=N … replayed=N`.
fn recovery_in(log: &str) -> Option<Recovery> {
    let line = log.lines().find(|line| line.contains("State recovered."))?;
    let number = |key: &str| -> Option<u64> {
        let start = line.find(&format!(" {key}="))? + key.len() + 2;
        line[start..].chars().take_while(char::is_ascii_digit).collect::<String>().parse().ok()
    };
    Some(Recovery { snapshot: number("snapshot")?, replayed: number("replayed")? })
}
