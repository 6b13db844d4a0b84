//! The busy day both runs of the kill test publish: simulated offices, with
//! deterministic duplicates and reordering, then a tail that settles every
//! point by event time and a marker that tells when the daemon took it all.

use std::collections::{BTreeMap, HashMap};

use queuewatch::simulate::{Realism, SimOptions, Simulation};
use queuewatch::time::Millis;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::mqtt::Message;

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;
/// The simulator's offices keep Jakarta's time (UTC+7) or near it.
const JAKARTA_OFFSET_MS: i64 = 7 * HOUR_MS;
/// Messages duplicated: half of them at once, half a few hundred messages later.
const DUPLICATE_PROBABILITY: f64 = 0.03;
/// Messages swapped with their office's previous one when at most
/// `SWAP_WITHIN_MS` apart (well inside the 30 s reorder window).
const SWAP_PROBABILITY: f64 = 0.25;
const SWAP_WITHIN_MS: i64 = 5_000;
/// The office whose malformed message marks the end (never heard otherwise,
/// so it writes no `office` row).
pub const END_OFFICE: &str = "zz-end";

/// What the publisher sends, in order.
pub struct Scenario {
    /// The simulated day with its duplicates and swaps, published at a steady rate.
    pub day: Vec<Message>,
    /// One heartbeat per office 13 h after the day's last event (past
    /// `tracking.max_ticket_age`), published after the day: it moves every
    /// office clock far enough that every point of the day (expiries
    /// included) is decided by event time, so how long a daemon ran after
    /// the last message changes nothing; then the end marker, which the
    /// daemon rejects and echoes to `queue/zz-end/rejected`.
    pub tail: Vec<Message>,
    /// `issued` events of the day: each opens a segment that the tail closes at the latest.
    pub issued: usize,
    pub duplicates: usize,
    pub swaps: usize,
}

impl Scenario {
    /// `offices` offices for one day, starting at midnight (UTC+7) two days
    /// ago so that every timestamp, the tail's too, is in the past.
    pub fn build(offices: u32, seed: u64) -> Scenario {
        let now = Millis::now().0;
        let local_midnight = (now + JAKARTA_OFFSET_MS).div_euclid(DAY_MS) * DAY_MS - JAKARTA_OFFSET_MS;
        let options = SimOptions {
            offices,
            seed,
            days: 1,
            realism: Realism::tidy(),
            ..SimOptions::new(Millis(local_midnight - 2 * DAY_MS))
        };
        let simulation = Simulation::new(&options);
        let office_names = simulation.office_names();
        let mut events: Vec<(String, Millis, Message)> = simulation
            .map(|event| (event.office, event.at, Message { topic: event.topic, payload: event.payload }))
            .collect();
        let issued = events.iter().filter(|(_, _, message)| message.payload.contains(r#""type":"issued""#)).count();
        let last = events.iter().map(|(_, at, _)| at.0).max().expect("a simulated day has events");

        let mut random = ChaCha8Rng::seed_from_u64(seed);
        let swaps = swap_neighbours(&mut events, &mut random);
        let (day, duplicates) = with_duplicates(events.into_iter().map(|(_, _, message)| message), &mut random);

        let settle_at = last + 13 * HOUR_MS;
        let mut tail: Vec<Message> = office_names
            .iter()
            .map(|office| {
                Message::event(
                    office,
                    format!(r#"{{"type":"heartbeat","ts":{settle_at},"office":"{office}","id":"{office}-settle"}}"#),
                )
            })
            .collect();
        tail.push(Message::event(END_OFFICE, r#"{"type":"end_of_scenario","ts":1,"id":"end"}"#.to_string()));
        Scenario { day, tail, issued, duplicates, swaps }
    }
}

/// Swaps some events with the previous event of the same office when their
/// timestamps are at most `SWAP_WITHIN_MS` apart; each event moves once at most.
fn swap_neighbours(events: &mut [(String, Millis, Message)], random: &mut ChaCha8Rng) -> usize {
    let mut previous_of_office: HashMap<String, (usize, bool)> = HashMap::new();
    let mut swaps = 0;
    for index in 0..events.len() {
        let office = events[index].0.clone();
        let mut moved = false;
        if let Some(&(previous, previous_moved)) = previous_of_office.get(&office) {
            let close = events[index].1 .0 - events[previous].1 .0 <= SWAP_WITHIN_MS;
            if !previous_moved && close && random.random_bool(SWAP_PROBABILITY) {
                events.swap(previous, index);
                swaps += 1;
                moved = true;
            }
        }
        previous_of_office.insert(office, (index, moved));
    }
    swaps
}

/// The messages with a copy of some: half right after the original, half
/// 200 to 500 messages later (after the day's end, at its end).
fn with_duplicates(messages: impl Iterator<Item = Message>, random: &mut ChaCha8Rng) -> (Vec<Message>, usize) {
    let mut out = Vec::new();
    let mut later: BTreeMap<usize, Vec<Message>> = BTreeMap::new();
    let mut duplicates = 0;
    for (index, message) in messages.enumerate() {
        out.extend(later.remove(&index).unwrap_or_default());
        let copy = random.random_bool(DUPLICATE_PROBABILITY).then(|| message.clone());
        out.push(message);
        if let Some(copy) = copy {
            duplicates += 1;
            if random.random_bool(0.5) {
                out.push(copy);
            } else {
                later.entry(index + random.random_range(200..=500)).or_default().push(copy);
            }
        }
    }
    out.extend(later.into_values().flatten());
    (out, duplicates)
}
