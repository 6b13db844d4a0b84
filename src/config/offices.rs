//! `[offices]`: `only_configured`, and each office's name, region, time zone,
//! opening hours and SLA overrides.

use super::reader::Section;
use super::sla::{parse_sla, OfficeSla};
use super::Config;
use crate::ids::{validate_ident, OfficeId};

/// `[offices.<id>]`: what is known about an office beyond its events.
#[derive(Debug, Clone, PartialEq)]
pub struct OfficeConfig {
    pub name: Option<String>,
    /// Tag added to every point of the office, for roll-ups by region.
    pub region: Option<String>,
    pub timezone: chrono_tz::Tz,
    /// Opening hours as minute-of-day ranges `[start, end)`, local time.
    pub hours: Vec<(u32, u32)>,
    /// Open weekdays, Monday first.
    pub days: [bool; 7],
    pub sla: OfficeSla,
}

impl Default for OfficeConfig {
    fn default() -> Self {
        OfficeConfig {
            name: None,
            region: None,
            timezone: chrono_tz::Asia::Jakarta,
            hours: Vec::new(),
            days: [true; 7],
            sla: OfficeSla::default(),
        }
    }
}

impl OfficeConfig {
    /// Whether opening hours are configured (only then can an office be `silent`).
    pub fn has_hours(&self) -> bool {
        !self.hours.is_empty()
    }

    /// Whether the office is open at `at`, in its own time zone.
    pub fn is_open_at(&self, at: crate::time::Millis) -> bool {
        use chrono::{Datelike, TimeZone, Timelike};
        let Some(local) = self.timezone.timestamp_millis_opt(at.0).single() else { return false };
        let weekday = local.weekday().num_days_from_monday() as usize;
        let minute = local.hour() * 60 + local.minute();
        self.days[weekday] && self.hours.iter().any(|(start, end)| (*start..*end).contains(&minute))
    }
}

/// `"07:30-12:00,13:00-15:30"` into minute-of-day ranges.
pub fn parse_hours(text: &str) -> Result<Vec<(u32, u32)>, String> {
    let mut ranges = Vec::new();
    for part in text.split(',').map(str::trim) {
        let (start, end) = part.split_once('-').ok_or_else(|| format!("{part:?} is not HH:MM-HH:MM"))?;
        let (start, end) = (parse_clock(start.trim())?, parse_clock(end.trim())?);
        if start >= end {
            return Err(format!("{part:?} ends before it starts"));
        }
        ranges.push((start, end));
    }
    Ok(ranges)
}

fn parse_clock(text: &str) -> Result<u32, String> {
    let (hours, minutes) = text.split_once(':').ok_or_else(|| format!("{text:?} is not HH:MM"))?;
    let (Ok(hours), Ok(minutes)) = (hours.parse::<u32>(), minutes.parse::<u32>()) else {
        return Err(format!("{text:?} is not HH:MM"));
    };
    if hours > 24 || minutes > 59 || (hours == 24 && minutes != 0) {
        return Err(format!("{text:?} is not a time of day"));
    }
    Ok(hours * 60 + minutes)
}

/// `"Mon-Fri"`, `"Mon-Sat"`, `"Mon,Wed,Fri"`, `"Sat-Mon"` into a weekday set.
pub fn parse_days(text: &str) -> Result<[bool; 7], String> {
    const NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
    let index = |name: &str| {
        let lower = name.trim().to_ascii_lowercase();
        NAMES
            .iter()
            .position(|day| lower.starts_with(day) && lower.len() >= 3)
            .ok_or_else(|| format!("{name:?} is not a weekday"))
    };
    let mut days = [false; 7];
    for part in text.split(',') {
        match part.split_once('-') {
            Some((first, last)) => {
                let (mut day, last) = (index(first)?, index(last)?);
                loop {
                    days[day] = true;
                    if day == last {
                        break;
                    }
                    day = (day + 1) % 7;
                }
            }
            None => days[index(part)?] = true,
        }
    }
    Ok(days)
}

/// `[offices]`: `offices.only_configured`, and a table per office.
pub(super) fn parse_offices(table: &toml::Table, config: &mut Config, problems: &mut Vec<String>) {
    for (name, value) in table {
        let path = format!("offices.{name}");
        // The one setting among the office tables: a boolean, where an office is a table.
        if name == "only_configured" && !value.is_table() {
            #[cfg(test)]
            super::reference_tests::asked(&path);
            match value.as_bool() {
                Some(only) => config.only_configured = only,
                None => problems.push(format!("{path}: expected true or false")),
            }
            continue;
        }
        let office = match OfficeId::parse(name) {
            Ok(office) => office,
            Err(why) => {
                problems.push(format!("{path}: office id {why}"));
                continue;
            }
        };
        let Some(office_table) = value.as_table() else {
            problems.push(format!("{path}: must be a table"));
            continue;
        };
        config.offices.insert(office, parse_office(office_table, &path, problems));
    }
}

fn parse_office(table: &toml::Table, path: &str, problems: &mut Vec<String>) -> OfficeConfig {
    let mut office = OfficeConfig::default();
    let mut section = Section::new(table, path);
    office.name = section.string("name", problems);
    if let Some(region) = section.string("region", problems) {
        match validate_ident(&region) {
            Ok(()) => office.region = Some(region),
            Err(why) => problems.push(format!("{path}.region: {region:?} {why}")),
        }
    }
    if let Some(timezone) = section.string("timezone", problems) {
        match timezone.parse::<chrono_tz::Tz>() {
            Ok(zone) => office.timezone = zone,
            Err(_) => problems.push(format!("{path}.timezone: {timezone:?} is not an IANA time zone")),
        }
    }
    if let Some(hours) = section.string("hours", problems) {
        match parse_hours(&hours) {
            Ok(ranges) => office.hours = ranges,
            Err(why) => problems.push(format!("{path}.hours: {hours:?}: {why}")),
        }
    }
    if let Some(days) = section.string("days", problems) {
        match parse_days(&days) {
            Ok(set) => office.days = set,
            Err(why) => problems.push(format!("{path}.days: {days:?}: {why}")),
        }
    }
    if let Some(sla) = section.table("sla", problems) {
        office.sla = parse_sla(sla, &format!("{path}.sla"), problems);
    }
    section.finish(problems);
    office
}
