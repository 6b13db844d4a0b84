//! The model's parameters: which offices exist, what they offer, how long
//! things take and how busy a day is. Plain data and pure functions; the
//! office simulation in `office/` draws from these.

use chrono_tz::Tz;

/// A kind of office and what it offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OfficeKind {
    /// Mal Pelayanan Publik: many agencies in one hall.
    Mpp,
    /// Vehicle tax and registration.
    Samsat,
    /// Civil registry.
    Dukcapil,
    /// A hospital's registration, clinics and pharmacy.
    Hospital,
}

impl OfficeKind {
    pub(super) fn services(self) -> &'static [ServiceSpec] {
        match self {
            OfficeKind::Mpp => &MPP_SERVICES,
            OfficeKind::Samsat => &SAMSAT_SERVICES,
            OfficeKind::Dukcapil => &DUKCAPIL_SERVICES,
            OfficeKind::Hospital => &HOSPITAL_SERVICES,
        }
    }
}

/// A service of an office: its ticket letter, its share of the arrivals and
/// its median service time (service times are lognormal around it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct ServiceSpec {
    pub name: &'static str,
    pub letter: char,
    /// Relative share of the office's arrivals.
    pub weight: f64,
    pub median_service_s: f64,
}

const fn service(name: &'static str, letter: char, weight: f64, median_service_min: f64) -> ServiceSpec {
    ServiceSpec { name, letter, weight, median_service_s: median_service_min * 60.0 }
}

const MPP_SERVICES: [ServiceSpec; 5] = [
    service("ktp", 'A', 0.30, 6.0),
    service("kk", 'B', 0.25, 5.0),
    service("akta", 'C', 0.15, 8.0),
    service("paspor", 'D', 0.15, 12.0),
    service("sim", 'E', 0.15, 10.0),
];
const SAMSAT_SERVICES: [ServiceSpec; 3] =
    [service("pkb", 'A', 0.60, 4.0), service("bbn", 'B', 0.25, 9.0), service("mutasi", 'C', 0.15, 12.0)];
const DUKCAPIL_SERVICES: [ServiceSpec; 4] = [
    service("ktp", 'A', 0.40, 6.0),
    service("kk", 'B', 0.30, 5.0),
    service("akta", 'C', 0.20, 8.0),
    service("pindah", 'D', 0.10, 7.0),
];
const HOSPITAL_SERVICES: [ServiceSpec; 3] =
    [service("poli-umum", 'A', 0.40, 9.0), service("poli-anak", 'B', 0.25, 11.0), service("farmasi", 'C', 0.35, 4.0)];

/// The office list, in order. More offices than this reuse it with a number
/// suffix (`mpp-jakarta-pusat-2`).
pub(super) const OFFICES: [(&str, OfficeKind, Tz); 12] = [
    ("mpp-jakarta-pusat", OfficeKind::Mpp, chrono_tz::Asia::Jakarta),
    ("samsat-bandung", OfficeKind::Samsat, chrono_tz::Asia::Jakarta),
    ("dukcapil-surabaya", OfficeKind::Dukcapil, chrono_tz::Asia::Jakarta),
    ("rs-makassar", OfficeKind::Hospital, chrono_tz::Asia::Makassar),
    ("mpp-denpasar", OfficeKind::Mpp, chrono_tz::Asia::Makassar),
    ("samsat-medan", OfficeKind::Samsat, chrono_tz::Asia::Jakarta),
    ("dukcapil-semarang", OfficeKind::Dukcapil, chrono_tz::Asia::Jakarta),
    ("rs-yogyakarta", OfficeKind::Hospital, chrono_tz::Asia::Jakarta),
    ("mpp-balikpapan", OfficeKind::Mpp, chrono_tz::Asia::Makassar),
    ("samsat-palembang", OfficeKind::Samsat, chrono_tz::Asia::Jakarta),
    ("dukcapil-manado", OfficeKind::Dukcapil, chrono_tz::Asia::Makassar),
    ("rs-jayapura", OfficeKind::Hospital, chrono_tz::Asia::Jayapura),
];

/// Staff first names; counter `i` of office `o` gets name `(5·o + i) mod len`.
pub(super) const STAFF_NAMES: [&str; 24] = [
    "budi", "siti", "agus", "dewi", "rina", "andi", "wahyu", "sri", "yusuf", "fitri", "eko", "putri", "hendra",
    "lestari", "rudi", "nurul", "bambang", "ayu", "dedi", "indah", "joko", "ratna", "irfan", "maya",
];

/// The name, kind and time zone of office `index` (0-based).
pub(super) fn office_identity(index: usize) -> (String, OfficeKind, Tz) {
    let (base, kind, zone) = OFFICES[index % OFFICES.len()];
    let round = index / OFFICES.len();
    let name = if round == 0 { base.to_string() } else { format!("{base}-{}", round + 1) };
    (name, kind, zone)
}

/// `mpp-jakarta-pusat-2` → `MPP Jakarta Pusat 2`.
pub fn display_name(office_id: &str) -> String {
    office_id
        .split('-')
        .enumerate()
        .map(|(index, word)| match word {
            "mpp" | "rs" if index == 0 => word.to_uppercase(),
            _ => {
                let mut characters = word.chars();
                characters.next().map_or_else(String::new, |first| first.to_uppercase().chain(characters).collect())
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Indonesia's time-zone region of a simulated office's zone: `wib`, `wita`, `wit`.
pub(super) fn zone_region(zone: Tz) -> &'static str {
    match zone {
        chrono_tz::Asia::Makassar => "wita",
        chrono_tz::Asia::Jayapura => "wit",
        _ => "wib",
    }
}

/// `HH:MM` of a minute of the day.
pub(super) fn clock(minute: u32) -> String {
    format!("{:02}:{:02}", minute / 60, minute % 60)
}

/// The staff member at counter `counter` of office `office`.
pub(super) fn staff_name(office: usize, counter: usize) -> String {
    let slot = office.wrapping_mul(5).wrapping_add(counter);
    let name = STAFF_NAMES[slot % STAFF_NAMES.len()];
    match counter / STAFF_NAMES.len() {
        0 => name.to_string(),
        round => format!("{name}-{}", round + 1),
    }
}

// Opening hours, local time, in minutes after midnight.

/// Counters open.
pub(super) const OPENING_MINUTE: u32 = 7 * 60 + 30;
/// The kiosk stops issuing tickets half an hour before closing.
pub(super) const ISSUING_END_MINUTE: u32 = 15 * 60;
/// Counters close, or later if tickets they handle are still waiting.
pub(super) const CLOSING_MINUTE: u32 = 15 * 60 + 30;
/// The next day is planned this long before it opens.
pub(super) const PLAN_AHEAD_MINUTES: u32 = 60;

/// Arrival intensity by local time of day (hours, e.g. 9.25 for 09:15),
/// relative, over the issuing window: a base level, a morning peak centred on
/// 09:15 (about 08:30–10:00), a dip to half during 12:00–13:00, a smaller
/// bump around 13:45 and a taper in the last half hour. Zero outside.
pub(super) fn arrival_shape(local_hour: f64) -> f64 {
    let opening = f64::from(OPENING_MINUTE) / 60.0;
    let issuing_end = f64::from(ISSUING_END_MINUTE) / 60.0;
    if !(opening..issuing_end).contains(&local_hour) {
        return 0.0;
    }
    let bump = |centre: f64, width: f64| (-0.5 * ((local_hour - centre) / width).powi(2)).exp();
    let mut shape = 0.55 + 1.0 * bump(9.25, 0.6) + 0.35 * bump(13.75, 0.5);
    if (12.0..13.0).contains(&local_hour) {
        shape *= 0.5;
    }
    let taper_from = issuing_end - 0.5;
    if local_hour > taper_from {
        shape *= 1.0 - (local_hour - taper_from);
    }
    shape
}

/// `∫ arrival_shape` over the day (hours) and its maximum, on a fine grid.
/// The maximum is raised by 5% so thinning never meets an intensity above it.
pub(super) fn arrival_shape_integral_and_bound() -> (f64, f64) {
    const STEPS_PER_HOUR: u32 = 600;
    let step_h = 1.0 / f64::from(STEPS_PER_HOUR);
    let mut integral = 0.0;
    let mut maximum: f64 = 0.0;
    for step in 0..24 * STEPS_PER_HOUR {
        let value = arrival_shape((f64::from(step) + 0.5) * step_h);
        integral += value * step_h;
        maximum = maximum.max(value);
    }
    (integral, maximum * 1.05)
}

// Ticket life.

/// Lognormal spread (σ of the log) of service times.
pub(super) const SERVICE_SIGMA: f64 = 0.45;
/// Service times are clamped to [this many seconds, `SERVICE_MAX_FACTOR` × median].
pub(super) const SERVICE_FLOOR_S: f64 = 30.0;
pub(super) const SERVICE_MAX_FACTOR: f64 = 8.0;
/// Probability that a called customer never comes (after one or two recalls).
pub(super) const P_NO_SHOW: f64 = 0.03;
/// Probability that a customer who does come needed a recall first (of
/// those, 30% needed two).
pub(super) const P_RECALL: f64 = 0.06;
pub(super) const P_SECOND_RECALL: f64 = 0.3;
/// Seconds between a call and a recall, and between recalls: uniform.
pub(super) const RECALL_GAP_S: (f64, f64) = (45.0, 90.0);
/// Walk from the waiting area to the counter: uniform seconds.
pub(super) const WALK_S: (f64, f64) = (10.0, 60.0);
/// Probability that a service ends in a transfer to another service of the
/// office (at most once per ticket, and not after closing time).
pub(super) const P_TRANSFER: f64 = 0.02;
/// Patience: lognormal, median and σ of the log. A waiting customer whose
/// wait exceeds it cancels. A transferred customer has half as much again.
pub(super) const PATIENCE_MEDIAN_S: f64 = 60.0 * 60.0;
pub(super) const PATIENCE_SIGMA: f64 = 0.5;
pub(super) const TRANSFER_PATIENCE_FACTOR: f64 = 1.5;
/// Probability of a feedback press after `finished`, and its delay (uniform seconds).
pub(super) const P_FEEDBACK: f64 = 0.4;
pub(super) const FEEDBACK_DELAY_S: (f64, f64) = (5.0, 30.0);
/// Rating: round(mean + N(0, RATING_NOISE)) clamped to 1–5, with the mean
/// `RATING_BEST − RATING_DROP_PER_MIN × minutes waited` (all segments).
pub(super) const RATING_BEST: f64 = 4.7;
pub(super) const RATING_DROP_PER_MIN: f64 = 0.06;
pub(super) const RATING_NOISE: f64 = 0.8;

// Counters.

/// Between the end of one ticket and the next call: uniform seconds.
pub(super) const NEXT_CALL_GAP_S: (f64, f64) = (5.0, 20.0);
/// An idle counter notices a new ticket after: uniform seconds.
pub(super) const IDLE_NOTICE_S: (f64, f64) = (2.0, 10.0);
/// After opening, the first call comes after: uniform seconds.
pub(super) const FIRST_CALL_S: (f64, f64) = (10.0, 90.0);
/// How many counters take a lunch break (1 or 2, equally likely; never all).
pub(super) const LUNCH_BREAKS: (usize, usize) = (1, 2);
/// Lunch breaks begin at 12:00 + U(0, 20 min) (the first) or 12:30 + U(0, 15
/// min) (the second) and last U(40, 60) min; a busy counter finishes its ticket first.
/// Each start is (minute of the day, spread in minutes).
pub(super) const LUNCH_STARTS_MINUTE: [(u32, u32); 2] = [(12 * 60, 20), (12 * 60 + 30, 15)];
pub(super) const LUNCH_LENGTH_MINUTES: (f64, f64) = (40.0, 60.0);

/// Load: expected arrivals per day are this fraction (uniform per office) of
/// what the counters could serve over the opening hours.
pub(super) const LOAD: (f64, f64) = (0.80, 0.92);
/// Per-ticket time at a counter besides the service: next-call gap and walk, in seconds.
pub(super) const CALL_OVERHEAD_S: f64 = 50.0;

// Realism (see `realism.rs`; each applies only when switched on).

/// A walk-out leaves this long after joining the queue (uniform minutes),
/// unless called before; the ticket stays in the queue.
pub(super) const WALKOUT_AFTER_MINUTES: (f64, f64) = (5.0, 45.0);
/// Load of a busy day: expected arrivals are this fraction (uniform per
/// office-day) of what the counters could serve, so queues grow all day.
pub(super) const BUSY_LOAD: (f64, f64) = (1.10, 1.25);
/// On a busy day people came expecting to wait: patience is this many times the usual.
pub(super) const BUSY_PATIENCE_FACTOR: f64 = 2.0;
/// On a service's lunch day every counter of the service begins its break at
/// 12:00 + U(0, this many minutes), so the breaks overlap by half an hour at least.
pub(super) const SERVICE_LUNCH_SPREAD_MINUTES: u32 = 10;
/// A silent kiosk stays silent this long, wholly within the issuing hours.
pub(super) const KIOSK_OUTAGE_MINUTES: u32 = 60;
pub(super) const DAYS_PER_WEEK: u32 = 7;

/// Mean of a lognormal with this median and σ.
pub(super) fn lognormal_mean(median: f64, sigma: f64) -> f64 {
    median * (0.5 * sigma * sigma).exp()
}

/// Expected tickets per day for an office with these services and counters at `load`.
pub(super) fn expected_tickets_per_day(services: &[ServiceSpec], counters: usize, load: f64) -> f64 {
    let total_weight: f64 = services.iter().map(|service| service.weight).sum();
    let mean_cycle_s = services
        .iter()
        .map(|service| service.weight / total_weight * lognormal_mean(service.median_service_s, SERVICE_SIGMA))
        .sum::<f64>()
        + CALL_OVERHEAD_S;
    let open_s = f64::from(CLOSING_MINUTE - OPENING_MINUTE) * 60.0;
    // About one and a half counters are away for fifty minutes at lunch.
    let counter_s = (counters as f64 * open_s - 1.5 * 50.0 * 60.0).max(open_s * 0.5);
    load * counter_s / mean_cycle_s
}

/// Which services each counter handles. Every service gets a counter first
/// (round robin when there are fewer counters than services); further
/// counters go, one by one, to the service with the most work per counter;
/// then every counter also takes the service after its first one, so each
/// service can be served by more than one counter. Sorted, no repeats.
pub(super) fn assign_services(services: &[ServiceSpec], counters: usize) -> Vec<Vec<usize>> {
    let mut handled: Vec<Vec<usize>> = vec![Vec::new(); counters];
    if counters == 0 || services.is_empty() {
        return handled;
    }
    let work: Vec<f64> = services.iter().map(|service| service.weight * service.median_service_s).collect();
    let mut counters_per_service = vec![0usize; services.len()];
    for service in 0..services.len() {
        handled[service % counters].push(service);
        counters_per_service[service] += 1;
    }
    for counter_services in handled.iter_mut().skip(services.len()) {
        let busiest = (0..services.len())
            .max_by(|a, b| {
                let load_a = work[*a] / (counters_per_service[*a] + 1) as f64;
                let load_b = work[*b] / (counters_per_service[*b] + 1) as f64;
                // Ties go to the earlier service.
                load_a.total_cmp(&load_b).then(b.cmp(a))
            })
            .unwrap_or(0);
        counter_services.push(busiest);
        counters_per_service[busiest] += 1;
    }
    if services.len() > 1 {
        for counter_services in &mut handled {
            let next = (counter_services[0] + 1) % services.len();
            counter_services.push(next);
        }
    }
    for counter_services in &mut handled {
        counter_services.sort_unstable();
        counter_services.dedup();
    }
    handled
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn office_names_repeat_the_list_with_a_number() {
        assert_eq!(office_identity(0).0, "mpp-jakarta-pusat");
        assert_eq!(office_identity(3).0, "rs-makassar");
        assert_eq!(office_identity(3).2, chrono_tz::Asia::Makassar);
        assert_eq!(office_identity(12).0, "mpp-jakarta-pusat-2");
        assert_eq!(office_identity(25).0, "samsat-bandung-3");
    }

    #[test]
    fn every_name_is_a_valid_identifier_and_letters_are_distinct_per_office() {
        for (name, kind, _) in OFFICES {
            assert!(crate::ids::validate_ident(name).is_ok(), "{name}");
            let services = kind.services();
            for (index, service) in services.iter().enumerate() {
                assert!(crate::ids::validate_ident(service.name).is_ok(), "{}", service.name);
                assert!(services[..index].iter().all(|other| other.letter != service.letter));
            }
        }
        for name in STAFF_NAMES {
            assert!(crate::ids::validate_ident(name).is_ok(), "{name}");
        }
        assert_eq!(staff_name(0, 24), "budi-2");
    }

    #[test]
    fn the_morning_peak_is_above_the_lunch_dip_and_nothing_arrives_when_closed() {
        let mean =
            |from: f64, to: f64| (0..60).map(|i| arrival_shape(from + (to - from) * i as f64 / 60.0)).sum::<f64>();
        assert!(mean(8.5, 10.0) > 2.0 * mean(12.0, 13.0));
        assert!(mean(13.25, 14.25) > mean(12.0, 13.0));
        assert_eq!(arrival_shape(7.0), 0.0);
        assert_eq!(arrival_shape(15.0), 0.0);
        let (integral, bound) = arrival_shape_integral_and_bound();
        assert!(integral > 3.0 && integral < 10.0, "{integral}");
        assert!((0..24 * 60).all(|minute| arrival_shape(minute as f64 / 60.0) <= bound));
    }

    #[test]
    fn every_service_has_a_counter_and_every_counter_a_service() {
        for (_, kind, _) in OFFICES {
            let services = kind.services();
            for counters in 1..=12 {
                let handled = assign_services(services, counters);
                assert_eq!(handled.len(), counters);
                assert!(handled.iter().all(|list| !list.is_empty()));
                for service in 0..services.len() {
                    assert!(handled.iter().any(|list| list.contains(&service)), "{kind:?} {counters} {service}");
                }
            }
        }
        let mpp = assign_services(OfficeKind::Mpp.services(), 6);
        assert_eq!(mpp[5].len(), 2, "the sixth counter helps a busy service: {mpp:?}");
    }
}
