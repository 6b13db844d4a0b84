//! `queuewatch demo` on a machine with nothing else installed: its embedded
//! broker, the daemon and the simulator run in one process, write line
//! protocol to a file and show a table; what it cannot do, it refuses with a
//! clear message and a non-zero exit.

use std::io::Read;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Far more than a run needs, even on a busy machine: only a hang fails it.
const EXIT_TIMEOUT: Duration = Duration::from_secs(90);

const OFFICE_NAMES: [&str; 3] = ["MPP Jakarta Pusat", "Samsat Bandung", "Dukcapil Surabaya"];

struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs `queuewatch demo ARGS` in `dir` with stdout and stderr piped.
fn demo(dir: &Path, args: &[&str]) -> Finished {
    let mut child = Command::new(env!("CARGO_BIN_EXE_queuewatch"))
        .arg("demo")
        .args(args)
        .current_dir(dir)
        .env_remove("QUEUEWATCH_LOG")
        .env_remove("QUEUEWATCH_INFLUX_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the queuewatch binary starts");
    let stdout = read_in_background(child.stdout.take().expect("stdout is piped"));
    let stderr = read_in_background(child.stderr.take().expect("stderr is piped"));
    let deadline = Instant::now() + EXIT_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("the child can be waited for") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("queuewatch demo did not exit within {EXIT_TIMEOUT:?}; stderr:\n{}", stderr.join().unwrap());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Finished { status, stdout: stdout.join().unwrap(), stderr: stderr.join().unwrap() }
}

fn read_in_background(mut pipe: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    })
}

#[test]
fn demo_runs_without_external_servers_and_writes_points() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo.lp");
    let run = demo(dir.path(), &["--duration", "8", "--speed", "600", "--out", out.to_str().unwrap()]);
    assert!(run.status.success(), "exit {:?}\nstdout:\n{}\nstderr:\n{}", run.status, run.stdout, run.stderr);

    let lines = std::fs::read_to_string(&out).unwrap();
    for measurement in ["ticket,", "queue,", "office,", "breach,"] {
        assert!(
            lines.lines().any(|line| line.starts_with(measurement)),
            "no {measurement} line among {} lines; stderr:\n{}",
            lines.lines().count(),
            run.stderr
        );
    }
    // The demo's office config reached the daemon: names and regions on the gauges.
    assert!(
        lines.lines().any(|line| line.starts_with("office,office=mpp-jakarta-pusat,region=wib ")
            && line.contains(r#"name="MPP Jakarta Pusat""#)),
        "no named office gauge for mpp-jakarta-pusat"
    );

    assert!(run.stdout.contains("queuewatch demo · simulated"), "{}", run.stdout);
    assert!(run
        .stdout
        .contains("waiting  oldest wait  service level  avg wait  served  no-shows  left  open breaches"));
    for name in OFFICE_NAMES {
        assert!(run.stdout.lines().any(|line| line.starts_with(name)), "no row for {name}:\n{}", run.stdout);
    }
    // The summary: every point the daemon produced reached the file.
    let written = format!("points written to {}: {}", out.display(), lines.lines().count());
    assert!(run.stdout.contains(&written), "expected {written:?} in\n{}", run.stdout);
    assert!(run.stdout.contains("events rejected: 0"), "{}", run.stdout);
}

#[test]
fn demo_refuses_a_port_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let run = demo(dir.path(), &["--mqtt-port", &port, "--duration", "5", "--out", "demo.lp"]);
    assert!(!run.status.success(), "stdout:\n{}", run.stdout);
    assert!(run.stderr.contains(&format!("cannot listen on 127.0.0.1:{port}")), "{}", run.stderr);
}

#[test]
fn demo_refuses_an_out_file_it_cannot_open() {
    let dir = tempfile::tempdir().unwrap();
    let run = demo(dir.path(), &["--duration", "5", "--out", "no-such-folder/demo.lp"]);
    assert!(!run.status.success(), "stdout:\n{}", run.stdout);
    assert!(run.stderr.contains("--out no-such-folder/demo.lp: cannot open"), "{}", run.stderr);
}

#[test]
fn demo_refuses_bad_options_before_starting() {
    let dir = tempfile::tempdir().unwrap();
    for args in
        [&["--speed", "0"][..], &["--offices", "0"], &["--influx-url", "localhost:8086"], &["--influx-api", "v1"]]
    {
        let run = demo(dir.path(), args);
        assert_eq!(run.status.code(), Some(2), "{args:?}: stderr:\n{}", run.stderr);
        assert!(run.stderr.contains("error:"), "{args:?}: {}", run.stderr);
    }
    assert!(!dir.path().join("queuewatch-demo.lp").exists(), "nothing is written on bad options");
}
