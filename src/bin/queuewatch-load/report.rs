//! How the scenarios print their figures: `scenario: name: value` lines,
//! rates with thousands separators, and verdicts against the targets.

use std::fmt::Write as _;

use crate::alloc::AllocCounts;
use crate::measure::{best, median};

pub fn rate_text(per_second: f64) -> String {
    let whole = per_second.round() as u64;
    let digits = whole.to_string();
    let mut grouped = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    format!("{grouped} events/s")
}

/// "met", or "MISSED" with how far off (`ratio` = measured / target, in the
/// direction where above 1 is worse for ceilings and below 1 for floors).
pub fn verdict(met: bool, ratio: f64) -> String {
    if met {
        "met".into()
    } else {
        format!("MISSED, {ratio:.2}x the target")
    }
}

/// Figures of one scenario, printed as `scenario: name: value` lines.
pub struct Report {
    scenario: &'static str,
    lines: Vec<(String, String)>,
}

impl Report {
    pub fn new(scenario: &'static str) -> Report {
        Report { scenario, lines: Vec::new() }
    }

    pub fn line(&mut self, name: &str, value: impl Into<String>) {
        self.lines.push((name.to_string(), value.into()));
    }

    pub fn rate(&mut self, name: &str, events: usize, seconds: &[f64], target: Option<f64>) {
        let best_rate = events as f64 / best(seconds);
        let mut text = format!(
            "{} best, {} median of {} passes ({:.3} s best)",
            rate_text(best_rate),
            rate_text(events as f64 / median(seconds)),
            seconds.len(),
            best(seconds)
        );
        if let Some(target) = target {
            let _ = write!(
                text,
                " [target >= {}: {}]",
                rate_text(target),
                verdict(best_rate >= target, best_rate / target)
            );
        }
        self.line(name, text);
    }

    pub fn allocations(&mut self, name: &str, counts: &AllocCounts, events: usize) {
        self.line(
            name,
            format!(
                "{:.2} allocations and {:.0} bytes allocated per event",
                counts.allocations as f64 / events as f64,
                counts.allocated_bytes as f64 / events as f64
            ),
        );
    }

    pub fn print(&self) {
        for (name, value) in &self.lines {
            println!("{}: {name}: {value}", self.scenario);
        }
    }
}
