//! Mosquitto 2.x.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::process::{find_binary, start_on_free_ports, tcp_accepts, ServerProcess};
use crate::{or_panic, temp_dir, try_free_port, write_file, Error, TempDir};

/// The broker's queue limits.
#[derive(Debug, Clone)]
pub struct MosquittoOptions {
    /// `max_queued_messages`: QoS 1 messages kept per session beyond those in
    /// flight. Mosquitto's default of 1000 drops further messages for a slow
    /// or offline persistent session silently.
    pub max_queued_messages: u64,
    /// `max_inflight_messages`: QoS 1 messages sent to a client awaiting its PUBACK.
    pub max_inflight_messages: u32,
}

impl Default for MosquittoOptions {
    fn default() -> MosquittoOptions {
        MosquittoOptions { max_queued_messages: 1_000_000, max_inflight_messages: 100 }
    }
}

/// A Mosquitto 2.x broker on `127.0.0.1:port`, anonymous, without persistence,
/// with queues large enough that nothing is dropped silently.
pub struct Mosquitto {
    pub port: u16,
    /// `mqtt://127.0.0.1:PORT`
    pub url: String,
    process: ServerProcess,
    dir: TempDir,
}

impl Mosquitto {
    /// A broker with the default options; panics if it does not start.
    pub fn start() -> Mosquitto {
        or_panic(Mosquitto::try_start(&MosquittoOptions::default()))
    }

    pub fn try_start(options: &MosquittoOptions) -> Result<Mosquitto, Error> {
        Mosquitto::try_start_with_config(|port| config_text(port, options))
    }

    /// A broker with the configuration that `config(port)` returns, for a
    /// port picked here that its `listener` line must use (called again with
    /// a fresh port if the broker exits during startup). Panics if it does not start.
    pub fn start_with_config(config: impl Fn(u16) -> String) -> Mosquitto {
        or_panic(Mosquitto::try_start_with_config(config))
    }

    pub fn try_start_with_config(config: impl Fn(u16) -> String) -> Result<Mosquitto, Error> {
        Mosquitto::start_in_folder(|port, _| config(port))
    }

    /// A broker whose one listener speaks TLS (`mqtts://127.0.0.1:PORT`)
    /// with `listener`'s files. Panics if it does not start.
    pub fn start_tls(listener: &TlsListener) -> Mosquitto {
        let mut broker = or_panic(Mosquitto::try_start_with_config(|port| tls_config_text(port, listener)));
        broker.url = format!("mqtts://127.0.0.1:{}", broker.port);
        broker
    }

    /// A broker that keeps its sessions and queues on disk (in its folder):
    /// what it holds survives a restart that lets it save (a graceful stop),
    /// as a production broker's does.
    pub fn try_start_persistent(options: &MosquittoOptions) -> Result<Mosquitto, Error> {
        Mosquitto::start_in_folder(|port, dir| persistent_config_text(port, options, &dir.join("data")))
    }

    pub fn start_persistent(options: &MosquittoOptions) -> Mosquitto {
        or_panic(Mosquitto::try_start_persistent(options))
    }

    fn start_in_folder(config: impl Fn(u16, &Path) -> String) -> Result<Mosquitto, Error> {
        let program = find_binary("mosquitto", "/usr/sbin/mosquitto", "mosquitto")?;
        let dir = temp_dir("mosquitto")?;
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data)
            .map_err(|source| Error::Io { what: format!("create {}", data.display()), source })?;
        // Mosquitto started by root runs as the `mosquitto` user: it must
        // reach its folder and write its database there (else a persistent
        // broker saves nothing, and comes back from a restart empty).
        for (path, mode) in [(dir.path(), 0o755), (data.as_path(), 0o777)] {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                .map_err(|source| Error::Io { what: format!("chmod {}", path.display()), source })?;
        }
        let config_path = dir.path().join("mosquitto.conf");
        let log_path = dir.path().join("mosquitto.log");
        let (process, port) = start_on_free_ports(
            || {
                let port = try_free_port()?;
                write_file(&config_path, &config(port, dir.path()))?;
                let process = ServerProcess::new("mosquitto", program.clone(), log_path.clone())
                    .debian_package("mosquitto")
                    .args(["-c".to_string(), config_path.display().to_string()]);
                Ok((process, port))
            },
            |port| tcp_accepts(*port),
        )?;
        Ok(Mosquitto { port, url: format!("mqtt://127.0.0.1:{port}"), process, dir })
    }

    /// Kills the broker (no clean shutdown: clients see the connection drop).
    pub fn stop(&mut self) {
        self.process.stop();
    }

    /// Stops the broker if it runs, then starts it again on the same port with
    /// the same configuration. Its sessions and queues are lost (no persistence).
    /// Panics if it does not start.
    pub fn restart(&mut self) {
        let port = self.port;
        self.process.restart(|| tcp_accepts(port));
    }

    /// Stops the broker gracefully (SIGTERM: a persistent broker saves its
    /// sessions and queues, and closes every connection), then starts it
    /// again on the same port with the same configuration. Panics if it does
    /// not exit within 30 s or does not start again.
    pub fn restart_gracefully(&mut self) {
        let port = self.port;
        assert!(self.process.terminate(Duration::from_secs(30)), "mosquitto did not stop on SIGTERM:\n{}", self.log());
        self.process.start_again(|| tcp_accepts(port));
    }

    /// Asks the broker to reread its password and ACL files (SIGHUP).
    pub fn reload(&self) {
        let pid = self.process.pid().expect("a running broker to reload");
        let status = std::process::Command::new("kill").args(["-HUP", &pid.to_string()]).status();
        assert!(status.is_ok_and(|status| status.success()), "kill -HUP {pid}");
    }

    /// The broker's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// What the broker has logged so far (`mosquitto.log` in its folder).
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// Its folder: `mosquitto.conf` and `mosquitto.log`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// A TLS listener's PEM files and whom it lets in. Mosquitto started by root
/// runs as the `mosquitto` user: the files and their folder must be readable by it.
#[derive(Debug, Clone)]
pub struct TlsListener {
    /// `certfile`: the broker's certificate (then any intermediates).
    pub cert_file: PathBuf,
    /// `keyfile`: its private key.
    pub key_file: PathBuf,
    /// `cafile`: the CA that client certificates must chain to.
    pub ca_file: PathBuf,
    /// `require_certificate true`: only clients with a certificate from `ca_file`.
    pub require_certificate: bool,
    /// `password_file` (see [`mosquitto_passwd`]); `None` lets anonymous clients in.
    pub password_file: Option<PathBuf>,
    /// `acl_file`: what each user may read and write; `None` allows everything.
    pub acl_file: Option<PathBuf>,
}

/// The configuration of a broker with one TLS listener on `port`, otherwise as [`Mosquitto::start`]'s.
pub fn tls_config_text(port: u16, listener: &TlsListener) -> String {
    let MosquittoOptions { max_queued_messages, max_inflight_messages } = MosquittoOptions::default();
    let login = match &listener.password_file {
        Some(path) => format!("allow_anonymous false\npassword_file {}\n", path.display()),
        None => "allow_anonymous true\n".to_string(),
    };
    let acl = match &listener.acl_file {
        Some(path) => format!("acl_file {}\n", path.display()),
        None => String::new(),
    };
    format!(
        "listener {port} 127.0.0.1\n\
         certfile {}\n\
         keyfile {}\n\
         cafile {}\n\
         require_certificate {}\n\
         {login}\
         {acl}\
         persistence false\n\
         max_queued_messages {max_queued_messages}\n\
         max_inflight_messages {max_inflight_messages}\n\
         log_dest stderr\n\
         log_timestamp true\n",
        listener.cert_file.display(),
        listener.key_file.display(),
        listener.ca_file.display(),
        listener.require_certificate,
    )
}

/// Adds `user` with `password` to the Mosquitto password file `file`
/// (`mosquitto_passwd -b`). Panics if the tool is missing or fails.
pub fn mosquitto_passwd(file: &Path, user: &str, password: &str) {
    let program = or_panic(find_binary("mosquitto_passwd", "/usr/bin/mosquitto_passwd", "mosquitto"));
    let output = std::process::Command::new(&program)
        .arg("-b")
        .arg(file)
        .arg(user)
        .arg(password)
        .output()
        .unwrap_or_else(|error| panic!("mosquitto_passwd: {error}"));
    assert!(output.status.success(), "mosquitto_passwd: {}", String::from_utf8_lossy(&output.stderr));
}

fn config_text(port: u16, options: &MosquittoOptions) -> String {
    let MosquittoOptions { max_queued_messages, max_inflight_messages } = options;
    format!(
        "listener {port} 127.0.0.1\n\
         allow_anonymous true\n\
         persistence false\n\
         # The default of 1000 drops further QoS 1 messages for a slow or\n\
         # offline persistent session silently.\n\
         max_queued_messages {max_queued_messages}\n\
         max_inflight_messages {max_inflight_messages}\n\
         # stderr: unbuffered, so the log is complete while the broker runs.\n\
         log_dest stderr\n\
         log_timestamp true\n"
    )
}

/// `config_text` with persistence in `data` (a trailing slash: Mosquitto
/// joins the file name to it as it is). Saved on a graceful stop and every
/// 30 min; `sys_interval 1` so that `$SYS` store counts are fresh.
pub fn persistent_config_text(port: u16, options: &MosquittoOptions, data: &Path) -> String {
    let MosquittoOptions { max_queued_messages, max_inflight_messages } = options;
    format!(
        "listener {port} 127.0.0.1\n\
         allow_anonymous true\n\
         persistence true\n\
         persistence_location {}/\n\
         autosave_interval 1800\n\
         max_queued_messages {max_queued_messages}\n\
         max_inflight_messages {max_inflight_messages}\n\
         sys_interval 1\n\
         log_dest stderr\n\
         log_timestamp true\n",
        data.display()
    )
}
