//! `[sla]` and `[offices.<id>.sla]`: the wait, service and idle targets, per service.

use std::collections::BTreeMap;
use std::time::Duration;

use super::reader::{at_least, Section, MILLISECOND};
use crate::ids::ServiceId;
use crate::time::duration_ms;

#[derive(Debug, Clone, PartialEq)]
pub struct SlaConfig {
    pub wait_target: Duration,
    pub service_target: Duration,
    /// `idle` breaches are off unless set.
    pub idle_target: Option<Duration>,
    pub services: BTreeMap<ServiceId, ServiceSla>,
}

/// `[offices.<id>.sla]`: the same keys as `[sla]`, each overriding it for one office.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct OfficeSla {
    pub wait_target: Option<Duration>,
    pub service_target: Option<Duration>,
    pub idle_target: Option<Duration>,
    pub services: BTreeMap<ServiceId, ServiceSla>,
}

/// Per-service overrides; `None` falls back to the `[sla]` default.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ServiceSla {
    pub wait_target: Option<Duration>,
    pub service_target: Option<Duration>,
}

/// The targets in force for one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Targets {
    pub wait_ms: i64,
    pub service_ms: i64,
}

impl SlaConfig {
    /// The targets for `service`, at an office with `office` overrides if any.
    /// Most specific first: the office's service table, the office's own
    /// defaults, the global service table, the global defaults. An office
    /// that sets `wait_target` thus sets it for all its services unless it
    /// names a service itself.
    pub fn targets_for(&self, office: Option<&OfficeSla>, service: &ServiceId) -> Targets {
        let office_service = office.and_then(|office| office.services.get(service)).copied().unwrap_or_default();
        let global_service = self.services.get(service).copied().unwrap_or_default();
        let wait = office_service
            .wait_target
            .or(office.and_then(|office| office.wait_target))
            .or(global_service.wait_target)
            .unwrap_or(self.wait_target);
        let service_target = office_service
            .service_target
            .or(office.and_then(|office| office.service_target))
            .or(global_service.service_target)
            .unwrap_or(self.service_target);
        Targets { wait_ms: duration_ms(wait), service_ms: duration_ms(service_target) }
    }

    /// The idle target at an office, if idle breaches are on there.
    pub fn idle_target_ms(&self, office: Option<&OfficeSla>) -> Option<i64> {
        office.and_then(|office| office.idle_target).or(self.idle_target).map(duration_ms)
    }
}

impl Default for SlaConfig {
    fn default() -> Self {
        SlaConfig {
            wait_target: Duration::from_secs(15 * 60),
            service_target: Duration::from_secs(20 * 60),
            idle_target: None,
            services: BTreeMap::new(),
        }
    }
}

/// `[sla]`: the defaults, with those not set left as they are.
pub(super) fn parse_global_sla(table: &toml::Table, problems: &mut Vec<String>) -> SlaConfig {
    let rules = parse_sla(table, "sla", problems);
    let defaults = SlaConfig::default();
    SlaConfig {
        wait_target: rules.wait_target.unwrap_or(defaults.wait_target),
        service_target: rules.service_target.unwrap_or(defaults.service_target),
        idle_target: rules.idle_target,
        services: rules.services,
    }
}

/// The SLA keys of the table at `path` (`sla` or `offices.<id>.sla`).
pub(super) fn parse_sla(table: &toml::Table, path: &str, problems: &mut Vec<String>) -> OfficeSla {
    let mut sla = OfficeSla::default();
    let mut section = Section::new(table, path);
    for (key, slot) in [
        ("wait_target", &mut sla.wait_target),
        ("service_target", &mut sla.service_target),
        ("idle_target", &mut sla.idle_target),
    ] {
        if let Some(value) = section.duration(key, problems) {
            at_least(&format!("{path}.{key}"), value, MILLISECOND, problems);
            *slot = Some(value);
        }
    }
    if let Some(services) = section.table("services", problems) {
        for (name, value) in services {
            let service_path = format!("{path}.services.{name}");
            let service = match ServiceId::parse(name) {
                Ok(service) => service,
                Err(why) => {
                    problems.push(format!("{service_path}: service name {why}"));
                    continue;
                }
            };
            let Some(service_table) = value.as_table() else {
                problems.push(format!("{service_path}: must be a table"));
                continue;
            };
            let mut service_section = Section::new(service_table, &service_path);
            let mut overrides = ServiceSla::default();
            for (key, slot) in
                [("wait_target", &mut overrides.wait_target), ("service_target", &mut overrides.service_target)]
            {
                if let Some(value) = service_section.duration(key, problems) {
                    at_least(&format!("{service_path}.{key}"), value, MILLISECOND, problems);
                    *slot = Some(value);
                }
            }
            service_section.finish(problems);
            sla.services.insert(service, overrides);
        }
    }
    section.finish(problems);
    sla
}
