//! `[limits]`: what one office's publishers may make the daemon remember.

use super::reader::Section;

/// `[limits]`: what one office's publishers may make the daemon remember,
/// so that a buggy or hostile publisher hurts only its own office. Each is
/// a count of things in memory at once (names and tickets no longer in use
/// are forgotten, see `tracker`); 0 means no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitsConfig {
    /// Offices not named in the config, at once (configured ones never count).
    pub max_offices: usize,
    pub max_services_per_office: usize,
    pub max_counters_per_office: usize,
    pub max_staff_per_office: usize,
    pub max_open_tickets_per_office: usize,
    /// Closed tickets and dedup keys of closed segments (and of events that
    /// belong to no open segment, or come after an open segment's first
    /// `tracker::SEGMENT_KEYS_KEPT` keys) remembered for `tracking.dedup_horizon`;
    /// beyond it the least recently closed are forgotten early.
    pub max_remembered_per_office: usize,
    /// Sustained messages per second of the office's clock.
    pub max_messages_per_second_per_office: usize,
    /// Messages an office may send at once beyond the sustained rate.
    pub max_burst_per_office: usize,
}

impl Default for LimitsConfig {
    /// Room for 1,000 offices of 1,000 tickets a day many times over (see
    /// docs/configuration.md, "Limits").
    fn default() -> Self {
        LimitsConfig {
            max_offices: 5_000,
            max_services_per_office: 200,
            max_counters_per_office: 500,
            max_staff_per_office: 2_000,
            max_open_tickets_per_office: 10_000,
            // A busy hall's whole day, ten times: 1,000 tickets and ~6
            // events of 2 keys each, 13,000 a day (docs/configuration.md, "Limits").
            max_remembered_per_office: 130_000,
            max_messages_per_second_per_office: 200,
            max_burst_per_office: 20_000,
        }
    }
}

/// `[limits]`: whole numbers, 0 for no limit.
pub(super) fn parse_limits(table: &toml::Table, problems: &mut Vec<String>) -> LimitsConfig {
    let mut section = Section::new(table, "limits");
    let mut limits = LimitsConfig::default();
    for (key, slot) in [
        ("max_offices", &mut limits.max_offices),
        ("max_services_per_office", &mut limits.max_services_per_office),
        ("max_counters_per_office", &mut limits.max_counters_per_office),
        ("max_staff_per_office", &mut limits.max_staff_per_office),
        ("max_open_tickets_per_office", &mut limits.max_open_tickets_per_office),
        ("max_remembered_per_office", &mut limits.max_remembered_per_office),
        ("max_messages_per_second_per_office", &mut limits.max_messages_per_second_per_office),
        ("max_burst_per_office", &mut limits.max_burst_per_office),
    ] {
        if let Some(value) = section.get(key) {
            match value.as_integer().and_then(|number| usize::try_from(number).ok()) {
                Some(number) => *slot = number,
                None => problems.push(format!("limits.{key}: expected a whole number (0 for no limit), found {value}")),
            }
        }
    }
    section.finish(problems);
    limits
}
