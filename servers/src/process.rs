//! A spawned server process whose output goes to a log file, killed and
//! reaped on `stop` and on drop; finding server binaries; readiness probes.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::{Error, POLL_INTERVAL, STARTUP_TIMEOUT};

/// How a startup wait ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    Exited(ExitStatus),
    TimedOut,
}

/// A program run in the background with its standard output and error
/// appended to a log file and its standard input closed. Killed and reaped
/// on [`stop`](ServerProcess::stop) and on drop; it can be spawned again
/// with the same command line after a stop.
pub struct ServerProcess {
    name: &'static str,
    debian_package: Option<&'static str>,
    program: PathBuf,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    log_path: PathBuf,
    child: Option<Child>,
}

impl ServerProcess {
    /// `program` named `name` in messages, logging to `log_path`; not spawned yet.
    pub fn new(name: &'static str, program: PathBuf, log_path: PathBuf) -> ServerProcess {
        ServerProcess { name, debian_package: None, program, args: Vec::new(), envs: Vec::new(), log_path, child: None }
    }

    /// The Debian package that installs the program, named when it cannot start.
    pub fn debian_package(mut self, package: &'static str) -> ServerProcess {
        self.debian_package = Some(package);
        self
    }

    pub fn args<I, S>(mut self, args: I) -> ServerProcess
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> ServerProcess {
        self.envs.push((key.to_string(), value.to_string()));
        self
    }

    pub fn spawn(&mut self) -> Result<(), Error> {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let io = |what: String| move |source| Error::Io { what, source };
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(io(format!("open {}", self.log_path.display())))?;
        let log_for_stderr = log.try_clone().map_err(io("duplicate the log file handle".into()))?;
        let child = Command::new(&self.program)
            .args(&self.args)
            .envs(self.envs.iter().map(|(key, value)| (key, value)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_for_stderr)
            .spawn()
            .map_err(|source| Error::Spawn {
                program: self.program.clone(),
                args: self.args.clone(),
                package: self.debian_package,
                source,
            })?;
        self.child = Some(child);
        Ok(())
    }

    /// Polls `is_ready` until it holds, the process exits, or the startup
    /// timeout passes. Blocks the calling thread.
    pub fn wait_until_ready(&mut self, mut is_ready: impl FnMut() -> bool) -> Readiness {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(status) = self.exited() {
                return Readiness::Exited(status);
            }
            if is_ready() {
                return Readiness::Ready;
            }
            if Instant::now() >= deadline {
                return Readiness::TimedOut;
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Stops the process and describes why it did not start, with its log.
    pub fn startup_error(&mut self, outcome: Readiness) -> Error {
        self.stop();
        Error::Startup {
            name: self.name,
            outcome,
            program: self.program.clone(),
            args: self.args.clone(),
            log: self.log(),
        }
    }

    /// Stops the process if it runs, then starts it again with the same
    /// command and waits until `is_ready`. Panics if it does not start.
    pub fn restart(&mut self, is_ready: impl FnMut() -> bool) {
        self.stop();
        self.start_again(is_ready);
    }

    /// Spawns the stopped process again and waits until `is_ready`. Panics
    /// if it does not start.
    pub fn start_again(&mut self, is_ready: impl FnMut() -> bool) {
        crate::or_panic(self.spawn());
        let outcome = self.wait_until_ready(is_ready);
        if outcome != Readiness::Ready {
            panic!("{}", self.startup_error(outcome));
        }
    }

    /// Asks the process to stop (SIGTERM, through `kill`) and waits up to
    /// `grace` for it to exit, then kills it; reaps it either way. True if it
    /// exited by itself.
    pub fn terminate(&mut self, grace: Duration) -> bool {
        let Some(child) = self.child.as_mut() else { return true };
        let signalled = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let deadline = Instant::now() + grace;
        let mut exited = false;
        while signalled.as_ref().is_ok_and(ExitStatus::success) && Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                exited = true;
                break;
            }
            std::thread::sleep(POLL_INTERVAL);
        }
        self.stop();
        exited
    }

    /// Kills the process (no clean shutdown) and reaps it, if it runs.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // An error here means it has already exited; wait reaps it either way.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The process id while it runs (until reaped).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The exit status, once it has exited (reaping it).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut().and_then(|child| child.try_wait().ok().flatten());
        if status.is_some() {
            self.child = None;
        }
        status
    }

    /// What the process has written so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path)
            .unwrap_or_else(|error| format!("(no log at {}: {error})", self.log_path.display()))
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The server binary at its Debian path, or else the first one on `PATH`;
/// an error naming the package to install when there is neither.
pub fn find_binary(name: &str, debian_path: &str, debian_package: &str) -> Result<PathBuf, Error> {
    let debian_path = PathBuf::from(debian_path);
    if debian_path.is_file() {
        return Ok(debian_path);
    }
    let on_path = std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|dir| dir.join(name)).find(|path| path.is_file()));
    on_path.ok_or_else(|| Error::NotInstalled {
        name: name.to_string(),
        debian_path,
        package: debian_package.to_string(),
    })
}

pub(crate) fn tcp_accepts(port: u16) -> bool {
    TcpStream::connect_timeout(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)), Duration::from_millis(250)).is_ok()
}

/// The status code of `GET path` on 127.0.0.1:port, or `None` if nothing
/// answers. Plain HTTP/1.0 over std, so starting needs no async runtime.
pub(crate) fn http_status(port: u16, path: &str) -> Option<u16> {
    http_request_status(port, "GET", path)
}

/// The status of an empty-bodied `method` request to `path` (with its query),
/// without a client library (it runs on the starting thread).
pub(crate) fn http_request_status(port: u16, method: &str, path: &str) -> Option<u16> {
    let mut stream =
        TcpStream::connect_timeout(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)), Duration::from_millis(250)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\n\r\n").ok()?;
    let mut head = [0u8; 64];
    let mut filled = 0;
    while filled < head.len() {
        match stream.read(&mut head[filled..]) {
            Ok(0) => break,
            Ok(read) => filled += read,
            Err(_) => return None,
        }
        if head[..filled].contains(&b'\n') {
            break;
        }
    }
    let status_line = std::str::from_utf8(&head[..filled]).ok()?;
    status_line.split_whitespace().nth(1)?.parse().ok()
}

/// Picks ports and builds the server's command with `prepare`, spawns it and
/// waits until `is_ready(&ports)`; when it exits during startup (another
/// process took a port), starts again on fresh ports, up to START_ATTEMPTS
/// times in all.
pub(crate) fn start_on_free_ports<P>(
    mut prepare: impl FnMut() -> Result<(ServerProcess, P), Error>,
    is_ready: impl Fn(&P) -> bool,
) -> Result<(ServerProcess, P), Error> {
    let mut attempt = 1;
    loop {
        let (mut process, ports) = prepare()?;
        process.spawn()?;
        match process.wait_until_ready(|| is_ready(&ports)) {
            Readiness::Ready => return Ok((process, ports)),
            Readiness::Exited(status) if attempt < crate::START_ATTEMPTS => {
                eprintln!("{} exited during startup ({status}); retrying on other ports", process.name);
                attempt += 1;
            }
            outcome => return Err(process.startup_error(outcome)),
        }
    }
}
