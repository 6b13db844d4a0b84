//! queuewatch: a service-queue timing monitor.
//!
//! Ticket machines and counter callers publish events over MQTT; queuewatch
//! follows every ticket at every office and writes one exact timing point per
//! closed ticket segment to InfluxDB.
//!
//! Layout (see `ARCHITECTURE.md` for the invariants):
//! - [`time`], [`ids`]: value types that can only be built valid.
//! - [`event`]: decoding and validating one MQTT payload into an [`event::Event`].
//! - [`tracker`]: the pure core. Events and a time in, points and counts out. No IO.
//! - [`pipeline`]: decode + track + encode, shared by `run`, `replay` and benchmarks.
//! - [`point`]: InfluxDB points and their line-protocol encoding.
//! - [`config`]: the TOML configuration's values, validated all at once (imports no adapter).
//! - [`preflight`]: loading a config file for a command: its values, then the files they name.
//! - [`sink`]: batching writer to InfluxDB (v1 `/write`, v2 `/api/v2/write`).
//! - [`mqtt`]: the MQTT adapter (subscribe, manual acknowledgement, reconnect).
//! - [`alerts`]: breach alerts and rejection echoes over MQTT (`run` only).
//! - [`ops`]: the operations endpoint (`/healthz`, `/readyz`, `/metrics`) for `run`.
//! - [`daemon`]: `run`, wiring MQTT, tracker and sink together.
//! - [`replay`]: the tracker fed from NDJSON files.
//! - `simulate`: simulated offices' events, published over MQTT or written as NDJSON
//!   (feature `simulate`).
//! - `demo`: broker, daemon, simulator and a live table in one process (`queuewatch demo`;
//!   feature `demo`).
//! - [`privacy`]: staff ids kept, hashed or dropped where a payload is received.
//! - [`secret`]: reading secret files (passwords, keys), refusing those others may write.
//! - [`tls`]: certificate files, the platform's trust store and TLS errors, for MQTT and InfluxDB.
//! - [`stats`]: counts of accepted, rejected and otherwise noted events.
//! - [`throttle`]: rate-limited logging of what can repeat per message.

// No module needs it: a need for it would be a decision to write down, not a default.
#![forbid(unsafe_code)]

pub mod alerts;
pub mod config;
pub mod daemon;
#[cfg(feature = "demo")]
pub mod demo;
pub mod durable;
pub mod event;
pub mod ids;
pub mod mqtt;
pub mod ops;
pub mod pipeline;
pub mod point;
pub mod preflight;
pub mod privacy;
pub mod replay;
pub mod secret;
#[cfg(feature = "simulate")]
pub mod simulate;
pub mod sink;
pub mod stats;
pub mod storage;
pub mod throttle;
pub mod time;
pub mod tls;
pub mod tracker;
