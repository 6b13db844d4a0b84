//! What makes a simulated office day untidy, as real halls are: customers
//! who walk out unseen, busy days that leave people waiting at closing,
//! counters of one service lunching together, a kiosk that goes silent.
//!
//! Plain options. Each part is off at its zero (or [`Closing::WhenQueuesEmpty`]),
//! and a part that is off draws nothing from the office's random stream, so
//! [`Realism::tidy`] gives exactly the events of the model before any of
//! this existed.

/// How untidy the simulated days are. [`Realism::default`] is a busy
/// Indonesian service hall; [`Realism::tidy`] turns everything off.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Realism {
    /// Share of tickets (0–1) whose customer walks out unseen unless called
    /// within 5–45 min (their number is called later in vain: a no-show).
    pub walkout_share: f64,
    /// What the counters do at closing time (15:30).
    pub closing: Closing,
    /// Share of office-days (0–1) whose arrivals are above what the counters can serve.
    pub busy_day_share: f64,
    /// Share of office-days (0–1) on which every counter of one service lunches at once.
    pub service_lunch_share: f64,
    /// Hours per office and simulated week in which the kiosk publishes no `issued`.
    pub kiosk_outages_per_week: u32,
}

/// What the counters do at closing time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closing {
    /// They close at closing time: whoever still waits leaves without an
    /// event; a ticket already called finishes normally.
    AtClosingTime,
    /// They stay until the queues they handle are empty (the tidy model).
    WhenQueuesEmpty,
}

impl Default for Realism {
    /// Near what a busy hall sees: 4 % walk-outs, one busy day in five, one
    /// day in ten with a service's counters all at lunch, one silent kiosk
    /// hour a week, counters that close on time.
    fn default() -> Realism {
        Realism {
            walkout_share: 0.04,
            closing: Closing::AtClosingTime,
            busy_day_share: 0.20,
            service_lunch_share: 0.10,
            kiosk_outages_per_week: 1,
        }
    }
}

impl Realism {
    /// Everything off: every ticket issued is published and closed by an event.
    pub fn tidy() -> Realism {
        Realism {
            walkout_share: 0.0,
            closing: Closing::WhenQueuesEmpty,
            busy_day_share: 0.0,
            service_lunch_share: 0.0,
            kiosk_outages_per_week: 0,
        }
    }

    /// Every problem, each naming its option.
    pub(super) fn problems(&self) -> Vec<String> {
        let shares = [
            ("walkouts", self.walkout_share),
            ("busy-days", self.busy_day_share),
            ("service-lunch-days", self.service_lunch_share),
        ];
        shares
            .into_iter()
            .filter(|(_, share)| !(0.0..=1.0).contains(share))
            .map(|(option, share)| format!("{option}: {}: expected 0 to 100 %", share * 100.0))
            .collect()
    }
}

/// `--walkouts`, `--busy-days`, `--service-lunch-days`: a percentage 0–100
/// (`4`, `4.5`, `4%`) as a share 0–1.
pub fn parse_percent(text: &str) -> Result<f64, String> {
    match text.trim().trim_end_matches('%').parse::<f64>() {
        Ok(percent) if (0.0..=100.0).contains(&percent) => Ok(percent / 100.0),
        _ => Err(format!("{text:?}: expected a percentage from 0 to 100")),
    }
}

/// `--closing`: `on-time` or `when-empty`.
pub fn parse_closing(text: &str) -> Result<Closing, String> {
    match text {
        "on-time" => Ok(Closing::AtClosingTime),
        "when-empty" => Ok(Closing::WhenQueuesEmpty),
        other => Err(format!("{other:?}: expected \"on-time\" or \"when-empty\"")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_become_shares_and_out_of_range_ones_are_refused() {
        assert_eq!(parse_percent("4"), Ok(0.04));
        assert_eq!(parse_percent("20%"), Ok(0.2));
        assert_eq!(parse_percent("0"), Ok(0.0));
        assert!(parse_percent("101").is_err());
        assert!(parse_percent("-1").is_err());
        assert!(parse_percent("NaN").is_err());
        assert_eq!(parse_closing("on-time"), Ok(Closing::AtClosingTime));
        assert!(parse_closing("late").is_err());
    }

    #[test]
    fn tidy_and_default_are_valid_and_a_share_above_one_is_not() {
        assert!(Realism::tidy().problems().is_empty());
        assert!(Realism::default().problems().is_empty());
        let wrong = Realism { walkout_share: 1.5, busy_day_share: -0.1, ..Realism::default() };
        assert_eq!(wrong.problems().len(), 2);
    }
}
