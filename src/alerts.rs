//! Publishing alerts and rejection echoes over MQTT (`run` only).
//!
//! Owns the alert topics and the per-office rate limit of rejection echoes.
//! Publishing never waits: it queues on the MQTT client with `try_publish`,
//! so a slow broker can never stall the tracker; what cannot be queued is
//! counted and logged. Alerts are a notification channel; the points in
//! InfluxDB remain the record.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, QoS};
use tracing::warn;

use crate::config::AlertsConfig;
use crate::event::Rejection;
use crate::ids::OfficeId;
use crate::time::Millis;
use crate::tracker::Alert;

/// Alerts about deadlines older than this (by the wall clock) are not
/// published: they come from a backlog being caught up (a restart, a
/// replayed outage), where paging someone for yesterday's queue helps nobody
/// and a flood of them would crowd the acknowledgements out of the MQTT
/// client's queue. The `breach` points are written all the same.
const STALE_ALERT_AFTER_MS: i64 = 3_600_000;

/// Echoes per office: a burst of this many, then one per `ECHO_REFILL`.
const ECHO_BURST: f64 = 10.0;
const ECHO_REFILL: Duration = Duration::from_secs(1);

pub struct AlertPublisher {
    client: AsyncClient,
    config: AlertsConfig,
    buckets: HashMap<OfficeId, (f64, Instant)>,
    pub published: u64,
    pub dropped: u64,
    pub echoes_suppressed: u64,
    pub stale_skipped: u64,
}

impl AlertPublisher {
    pub fn new(client: AsyncClient, config: &AlertsConfig) -> AlertPublisher {
        AlertPublisher {
            client,
            config: config.clone(),
            buckets: HashMap::new(),
            published: 0,
            dropped: 0,
            echoes_suppressed: 0,
            stale_skipped: 0,
        }
    }

    /// Publishes a breach alert on `alerts.topic`, unless it is stale (see
    /// `STALE_ALERT_AFTER_MS`; firing and resolved share `since`, so both are
    /// skipped or both sent).
    pub fn alert(&mut self, alert: &Alert, wall_now: Millis) {
        if !self.config.enabled {
            return;
        }
        if wall_now.since(alert.since) > STALE_ALERT_AFTER_MS {
            self.stale_skipped += 1;
            return;
        }
        let topic = topic_for(&self.config.topic, &alert.office);
        self.publish(topic, alert.to_json());
    }

    /// Echoes a rejection to its office's `alerts.rejects_topic`, at most
    /// ten at once and one a second per office after that.
    pub fn rejection(&mut self, rejection: &Rejection, now: Instant) {
        if !self.config.enabled {
            return;
        }
        let Some(office) = &rejection.office else { return };
        if !self.take_token(office, now) {
            self.echoes_suppressed += 1;
            return;
        }
        let mut message = serde_json::Map::new();
        message.insert("reason".into(), rejection.reason.as_str().into());
        if let Some(id) = &rejection.id {
            message.insert("id".into(), id.clone().into());
        }
        message.insert("detail".into(), rejection.detail.clone().into());
        message.insert("office".into(), office.as_str().into());
        message.insert("ts".into(), Millis::now().to_rfc3339().into());
        let topic = topic_for(&self.config.rejects_topic, office);
        self.publish(topic, serde_json::Value::Object(message).to_string());
    }

    /// Whether `topic` is one this publisher writes to: such messages are
    /// never taken as events, even if a broad subscription matches them.
    pub fn is_own_topic(&self, topic: &str) -> bool {
        [&self.config.topic, &self.config.rejects_topic].into_iter().any(|template| template_matches(template, topic))
    }

    /// Whether a subscription to `filters` can bring messages on this
    /// publisher's topics at all. Decided once at start: when none can (the
    /// default `queue/+/events` against `queue/{office}/alerts`), no message
    /// needs [`AlertPublisher::is_own_topic`]. Errs towards `true`.
    pub fn may_receive_own(&self, filters: &[String]) -> bool {
        filters.iter().any(|filter| {
            [&self.config.topic, &self.config.rejects_topic]
                .into_iter()
                .any(|template| filter_may_match_template(filter, template))
        })
    }

    fn take_token(&mut self, office: &OfficeId, now: Instant) -> bool {
        if self.buckets.len() > 10_000 {
            self.buckets.clear(); // offices come from input; keep the map bounded
        }
        let (tokens, last) = self.buckets.entry(office.clone()).or_insert((ECHO_BURST, now));
        let refilled = now.duration_since(*last).as_secs_f64() / ECHO_REFILL.as_secs_f64();
        *tokens = (*tokens + refilled).min(ECHO_BURST);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn publish(&mut self, topic: String, payload: String) {
        match self.client.try_publish(topic, QoS::AtLeastOnce, false, payload) {
            Ok(()) => self.published += 1,
            Err(error) => {
                self.dropped += 1;
                if self.dropped == 1 || self.dropped.is_multiple_of(100) {
                    warn!(%error, dropped = self.dropped, "Alert not published: the MQTT queue is full.");
                }
            }
        }
    }
}

/// `queue/{office}/alerts` for office `o1` is `queue/o1/alerts`.
pub fn topic_for(template: &str, office: &OfficeId) -> String {
    template.replace("{office}", office.as_str())
}

fn template_matches(template: &str, topic: &str) -> bool {
    let mut template_levels = template.split('/');
    let mut topic_levels = topic.split('/');
    loop {
        match (template_levels.next(), topic_levels.next()) {
            (None, None) => return true,
            (Some(pattern), Some(level)) if pattern.contains("{office}") => {
                let (prefix, suffix) = pattern.split_once("{office}").unwrap_or((pattern, ""));
                if !(level.starts_with(prefix) && level.ends_with(suffix) && level.len() >= prefix.len() + suffix.len())
                {
                    return false;
                }
            }
            (Some(pattern), Some(level)) if pattern == level => {}
            _ => return false,
        }
    }
}

/// Whether the MQTT filter `filter` (`+`, `#`) may match a topic made from
/// `template`; a level naming `{office}` may be anything.
fn filter_may_match_template(filter: &str, template: &str) -> bool {
    let mut filter_levels = filter.split('/');
    let mut template_levels = template.split('/');
    loop {
        match (filter_levels.next(), template_levels.next()) {
            (None, None) | (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(_), Some(level)) if level.contains("{office}") => {}
            (Some(pattern), Some(level)) if pattern == level => {}
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_subscriptions_that_can_reach_the_alert_topics_need_the_per_message_check() {
        let templates = ["queue/{office}/alerts", "queue/{office}/rejected"];
        let reaches = |filter: &str| templates.iter().any(|template| filter_may_match_template(filter, template));
        assert!(!reaches("queue/+/events"));
        assert!(!reaches("queue/mpp-1/events"));
        assert!(!reaches("queue/+"));
        assert!(!reaches("other/+/alerts"));
        assert!(reaches("queue/#"));
        assert!(reaches("#"));
        assert!(reaches("queue/+/+"));
        assert!(reaches("+/+/alerts"));
        assert!(reaches("queue/mpp-1/rejected"));
    }

    #[test]
    fn templates_name_the_office_and_match_their_own_topics() {
        let office = OfficeId::parse("mpp-1").unwrap();
        assert_eq!(topic_for("queue/{office}/alerts", &office), "queue/mpp-1/alerts");
        assert!(template_matches("queue/{office}/alerts", "queue/mpp-1/alerts"));
        assert!(!template_matches("queue/{office}/alerts", "queue/mpp-1/events"));
        assert!(!template_matches("queue/{office}/alerts", "queue/mpp-1/alerts/x"));
    }
}
