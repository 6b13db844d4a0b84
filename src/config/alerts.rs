//! `[alerts]`: the MQTT topics breaches and rejections are published on.

use super::reader::Section;

/// `[alerts]`: MQTT messages for breaches and rejections (`run` only).
#[derive(Debug, Clone, PartialEq)]
pub struct AlertsConfig {
    pub enabled: bool,
    /// `{office}` is replaced by the office id.
    pub topic: String,
    pub rejects_topic: String,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            enabled: true,
            topic: "queue/{office}/alerts".into(),
            rejects_topic: "queue/{office}/rejected".into(),
        }
    }
}

/// `[alerts]`: topic names, without wildcards.
pub(super) fn parse_alerts(table: &toml::Table, alerts: &mut AlertsConfig, problems: &mut Vec<String>) {
    let mut section = Section::new(table, "alerts");
    if let Some(value) = section.get("enabled") {
        match value.as_bool() {
            Some(enabled) => alerts.enabled = enabled,
            None => problems.push("alerts.enabled: expected true or false".into()),
        }
    }
    for (key, slot) in [("topic", &mut alerts.topic), ("rejects_topic", &mut alerts.rejects_topic)] {
        if let Some(topic) = section.string(key, problems) {
            if topic.is_empty() || topic.contains('+') || topic.contains('#') {
                problems.push(format!("alerts.{key}: {topic:?} must be a topic name without wildcards"));
            }
            *slot = topic;
        }
    }
    section.finish(problems);
}
