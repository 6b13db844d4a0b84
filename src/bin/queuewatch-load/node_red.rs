//! The peer of the `peer` scenario: a Node-RED 4 flow as an integrator would
//! write it (MQTT in with a persistent QoS 1 session, JSON, a function
//! pairing `issued` with the event that closes the ticket into one `ticket`
//! point, a join node making batches, node-red-contrib-influxdb's batch node
//! writing them to InfluxDB 1.x), installed with npm into a folder kept
//! between runs, and run as a process of its own.
//!
//! What must stay true:
//! - The install is cached: npm runs only when the folder lacks one of the
//!   two packages, so a rerun starts at once and measures the same versions.
//! - Node-RED listens on loopback only, with its editor and HTTP nodes off,
//!   and is killed when [`NodeRed`] drops.
//! - The flow writes the fields and tags queuewatch writes for a ticket where
//!   that is simple: tags `office`, `service`, `outcome`, `counter`; fields
//!   `ticket`, `wait_s`, `total_s` (seconds, millisecond resolution). It
//!   stamps points with the closing event's millisecond: no sub-millisecond
//!   offset, so two tickets of one series closing in the same millisecond
//!   overwrite each other, as they would for an integrator.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context as _};
use queuewatch_servers::ServerProcess;
use serde_json::{json, Value};

use crate::servers::DAEMON_CLIENT_ID;

/// What npm installs: the versions the issue names.
const PACKAGES: [&str; 2] = ["node-red@4", "node-red-contrib-influxdb@0.7"];
/// npm may take this long (about 30 s here).
const INSTALL_TIMEOUT: Duration = Duration::from_secs(600);

/// The pairing function: `issued` opens a ticket, the first `called` (or a
/// `started` with no call) ends its wait, `recalled` and later calls count,
/// `finished` / `no_show` / `cancelled` / `transferred` close it into one
/// point (a transfer opens the ticket again for `to_service`).
const PAIRING: &str = r#"
let open = context.get('open');
if (!open) { open = {}; context.set('open', open); }
const e = msg.payload;
if (!e || typeof e !== 'object' || typeof e.ticket !== 'string') return null;
const office = msg.topic.split('/')[1];
const key = office + '|' + e.ticket;
const t = typeof e.ts === 'number' ? e.ts : Date.parse(e.ts);
const o = open[key];
const outcomes = { finished: 'served', no_show: 'no_show', cancelled: 'cancelled', transferred: 'transferred' };
switch (e.type) {
case 'issued':
    open[key] = { issued: t, service: e.service, recalls: 0 };
    return null;
case 'called':
    if (o) { if (o.called === undefined) { o.called = t; } else { o.recalls++; } o.counter = e.counter; }
    return null;
case 'recalled':
    if (o) { o.recalls++; o.counter = e.counter || o.counter; }
    return null;
case 'started':
    if (o && o.called === undefined) { o.called = t; o.counter = e.counter || o.counter; }
    return null;
}
const outcome = outcomes[e.type];
if (!outcome || !o) return null;
delete open[key];
const tags = { office: office, service: o.service, outcome: outcome };
const counter = e.counter || o.counter;
if (counter) tags.counter = counter;
const fields = { ticket: e.ticket, total_s: (t - o.issued) / 1000 };
if (o.called !== undefined) fields.wait_s = (o.called - o.issued) / 1000;
if (e.type === 'transferred') open[key] = { issued: t, service: e.to_service, recalls: 0 };
msg.payload = { measurement: 'ticket', tags: tags, fields: fields, timestamp: t };
return msg;
"#;

/// Node-RED installed in a folder: `node_modules/node-red/red.js` and the
/// InfluxDB nodes beside it.
pub struct Install {
    dir: PathBuf,
    /// "node-red 4.1.15, node-red-contrib-influxdb 0.7.0, node v20.20.2".
    pub versions: String,
}

impl Install {
    /// The install in `dir`, made with npm first if it is not complete.
    pub fn ensure(dir: &Path) -> anyhow::Result<Install> {
        fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let dir = dir.canonicalize().with_context(|| format!("resolve {}", dir.display()))?;
        let installed = |package: &str| dir.join("node_modules").join(package).join("package.json").is_file();
        if !(installed("node-red") && installed("node-red-contrib-influxdb")) {
            eprintln!("peer: installing {} with npm into {}", PACKAGES.join(" "), dir.display());
            let mut child = Command::new("npm")
                .args(["install", "--no-audit", "--no-fund", "--no-update-notifier", "--prefix"])
                .arg(&dir)
                .args(PACKAGES)
                .stdout(std::process::Stdio::null())
                .spawn()
                .context("run npm (install node and npm: apt-get install nodejs npm)")?;
            let deadline = std::time::Instant::now() + INSTALL_TIMEOUT;
            let status = loop {
                if let Some(status) = child.try_wait()? {
                    break status;
                }
                if std::time::Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    bail!("npm install did not finish within {INSTALL_TIMEOUT:?}");
                }
                std::thread::sleep(Duration::from_millis(200));
            };
            ensure!(status.success(), "npm install {} failed ({status})", PACKAGES.join(" "));
        }
        let version = |package: &str| -> anyhow::Result<String> {
            let path = dir.join("node_modules").join(package).join("package.json");
            let manifest: Value = serde_json::from_str(&fs::read_to_string(&path)?)?;
            Ok(manifest.get("version").and_then(Value::as_str).unwrap_or("?").to_string())
        };
        let node = Command::new("node").arg("--version").output().context("run node --version")?;
        let versions = format!(
            "node-red {}, node-red-contrib-influxdb {}, node {}",
            version("node-red")?,
            version("node-red-contrib-influxdb")?,
            String::from_utf8_lossy(&node.stdout).trim()
        );
        Ok(Install { dir, versions })
    }
}

/// The flow's settings that the report names.
#[derive(Clone, Copy)]
pub struct FlowSettings {
    /// Points the join node gathers into one write.
    pub batch_points: usize,
    /// Seconds after which the join node sends a batch that is not full.
    pub batch_timeout_s: u64,
}

/// A running Node-RED with the flow, in `dir`.
pub struct NodeRed {
    process: ServerProcess,
}

impl NodeRed {
    /// Writes the settings and the flow into `dir` and starts Node-RED; does
    /// not wait for it (the clock of the scenario runs from here).
    pub fn spawn(
        install: &Install,
        dir: &Path,
        mqtt_port: u16,
        influx_url: &str,
        database: &str,
        flow: FlowSettings,
    ) -> anyhow::Result<NodeRed> {
        fs::create_dir_all(dir)?;
        let (influx_host, influx_port) = influx_url
            .trim_start_matches("http://")
            .split_once(':')
            .with_context(|| format!("InfluxDB URL {influx_url}: expected http://host:port"))?;
        let flows = flow_json(mqtt_port, influx_host, influx_port.trim_end_matches('/'), database, flow);
        fs::write(dir.join("flows.json"), serde_json::to_string_pretty(&flows)?)?;
        let ui_port = queuewatch_servers::try_free_port()?;
        // The nodes beside node-red in the install are found through nodesDir.
        let settings = format!(
            "module.exports = {{\n  uiHost: '127.0.0.1',\n  uiPort: {ui_port},\n  httpAdminRoot: false,\n  \
             httpNodeRoot: false,\n  flowFile: 'flows.json',\n  credentialSecret: false,\n  \
             nodesDir: [{:?}],\n  diagnostics: {{ enabled: false }},\n  \
             telemetry: {{ enabled: false }},\n  logging: {{ console: {{ level: 'info', metrics: false, audit: false }} }},\n}};\n",
            install.dir.join("node_modules").join("node-red-contrib-influxdb").display().to_string()
        );
        fs::write(dir.join("settings.js"), settings)?;
        let red = install.dir.join("node_modules").join("node-red").join("red.js");
        let mut process = ServerProcess::new("node-red", PathBuf::from("node"), dir.join("node-red.log")).args([
            red.display().to_string(),
            "--userDir".into(),
            dir.display().to_string(),
            "--settings".into(),
            dir.join("settings.js").display().to_string(),
        ]);
        process.spawn()?;
        Ok(NodeRed { process })
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// The exit status, if it has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.process.exited()
    }

    pub fn log(&self) -> String {
        self.process.log()
    }

    pub fn log_path(&self) -> &Path {
        self.process.log_path()
    }

    /// Whether its MQTT client has connected (its log says so).
    pub fn connected(&self) -> bool {
        self.log().contains("Connected to broker")
    }

    /// Lines of its log that report an error or a warning (the influxdb
    /// node's failed writes among them), counted by their text after the
    /// node's name, the first of each kind.
    pub fn complaints(&self) -> Vec<(usize, String)> {
        let log = self.log();
        let mut kinds: Vec<(usize, String)> = Vec::new();
        for line in log.lines().filter(|line| line.contains("[error]") || line.contains("[warn]")) {
            let text: String = line.split_once(']').map_or(line, |(_, rest)| rest).chars().take(160).collect();
            let kind: String = text.chars().take(60).collect();
            match kinds.iter_mut().find(|(_, first)| first.starts_with(&kind)) {
                Some((count, _)) => *count += 1,
                None => kinds.push((1, text)),
            }
        }
        kinds
    }
}

/// The flow: MQTT in → JSON → pairing function → join → influxdb batch.
fn flow_json(mqtt_port: u16, influx_host: &str, influx_port: &str, database: &str, flow: FlowSettings) -> Value {
    json!([
        { "id": "peer-tab", "type": "tab", "label": "tickets", "disabled": false, "info": "" },
        {
            "id": "peer-broker", "type": "mqtt-broker", "name": "kiosks",
            "broker": "127.0.0.1", "port": mqtt_port.to_string(), "clientid": DAEMON_CLIENT_ID,
            "autoConnect": true, "usetls": false, "protocolVersion": "4", "keepalive": "60",
            "cleansession": false, "autoUnsubscribe": false,
            "birthTopic": "", "closeTopic": "", "willTopic": "", "sessionExpiry": ""
        },
        {
            "id": "peer-influxdb", "type": "influxdb", "hostname": influx_host, "port": influx_port,
            "protocol": "http", "database": database, "name": "queuewatch", "usetls": false, "tls": "",
            "influxdbVersion": "1.x", "url": "", "timeout": "10", "rejectUnauthorized": false
        },
        {
            "id": "peer-in", "type": "mqtt in", "z": "peer-tab", "name": "kiosk events",
            "topic": "queue/+/events", "qos": "1", "datatype": "utf8", "broker": "peer-broker",
            "nl": false, "rap": true, "rh": 0, "inputs": 0, "x": 100, "y": 100, "wires": [["peer-json"]]
        },
        {
            "id": "peer-json", "type": "json", "z": "peer-tab", "name": "", "property": "payload",
            "action": "obj", "pretty": false, "x": 250, "y": 100, "wires": [["peer-pair"]]
        },
        {
            "id": "peer-pair", "type": "function", "z": "peer-tab", "name": "pair issued with its close",
            "func": PAIRING, "outputs": 1, "timeout": 0, "noerr": 0, "initialize": "", "finalize": "",
            "libs": [], "x": 400, "y": 100, "wires": [["peer-join"]]
        },
        {
            "id": "peer-join", "type": "join", "z": "peer-tab", "name": "batch", "mode": "custom",
            "build": "array", "property": "payload", "propertyType": "msg", "key": "topic",
            "joiner": "\\n", "joinerType": "str", "useparts": false, "accumulate": false,
            "timeout": flow.batch_timeout_s.to_string(), "count": flow.batch_points.to_string(),
            "reduceRight": false, "reduceExp": "", "reduceInit": "", "reduceInitType": "",
            "reduceFixup": "", "x": 550, "y": 100, "wires": [["peer-write"]]
        },
        {
            "id": "peer-write", "type": "influxdb batch", "z": "peer-tab", "influxdb": "peer-influxdb",
            "precision": "ms", "retentionPolicy": "", "name": "ticket points", "database": "",
            "precisionV18FluxV20": "ms", "retentionPolicyV18Flux": "", "org": "", "bucket": "",
            "x": 700, "y": 100, "wires": []
        }
    ])
}
