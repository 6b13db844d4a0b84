//! What the journal records: every input the daemon gives its pipeline, with
//! the times it gave it, so that applying the records again in order rebuilds
//! exactly the state (and writes exactly the points) of the run that wrote them.
//!
//! Encoded by hand, little-endian, so a message's payload is copied once and
//! the format is fixed by this file alone (the journal's version covers it):
//!
//! | kind | byte | then |
//! |---|---|---|
//! | message | 1 | tracker_now i64, wall_now i64, topic length u32, topic, payload (the rest) |
//! | advance | 2 | tracker_now i64 |
//! | drain | 3 | tracker_now i64 |
//! | resume | 4 | now i64 |

use std::borrow::Cow;

use crate::time::Millis;

/// One input of the pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record<'a> {
    /// A message taken in from `topic` (rejected ones too: they count against their office).
    Message { topic: Cow<'a, str>, payload: Cow<'a, [u8]>, tracker_now: Millis, wall_now: Millis },
    /// Wall time passed (`Pipeline::advance`).
    Advance { tracker_now: Millis },
    /// Everything held was applied (`Pipeline::drain`). No longer written (a stop keeps what is
    /// held for the next start), still read from journals that have it.
    Drain { tracker_now: Millis },
    /// The daemon restarted at `now` (`Tracker::resume`).
    Resume { now: Millis },
}

/// A record whose bytes are not one this version wrote.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed journal record: {0}")]
pub struct MalformedRecord(&'static str);

const MESSAGE: u8 = 1;
const ADVANCE: u8 = 2;
const DRAIN: u8 = 3;
const RESUME: u8 = 4;

impl Record<'_> {
    /// Appends the record's bytes to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Record::Message { topic, payload, tracker_now, wall_now } => {
                out.reserve(21 + topic.len() + payload.len());
                out.push(MESSAGE);
                out.extend_from_slice(&tracker_now.0.to_le_bytes());
                out.extend_from_slice(&wall_now.0.to_le_bytes());
                // Topics are at most 65,535 bytes (MQTT's string length).
                out.extend_from_slice(&u32::try_from(topic.len()).unwrap_or(u32::MAX).to_le_bytes());
                out.extend_from_slice(topic.as_bytes());
                out.extend_from_slice(payload);
            }
            Record::Advance { tracker_now } => time_record(out, ADVANCE, *tracker_now),
            Record::Drain { tracker_now } => time_record(out, DRAIN, *tracker_now),
            Record::Resume { now } => time_record(out, RESUME, *now),
        }
    }

    /// Reads a record written by [`Record::encode`], borrowing from `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Record<'_>, MalformedRecord> {
        let (&kind, rest) = bytes.split_first().ok_or(MalformedRecord("empty"))?;
        let (first, rest) = read_i64(rest)?;
        match kind {
            MESSAGE => {
                let (wall_now, rest) = read_i64(rest)?;
                let (length, rest) = rest.split_first_chunk::<4>().ok_or(MalformedRecord("topic length cut off"))?;
                let length = u32::from_le_bytes(*length) as usize;
                if rest.len() < length {
                    return Err(MalformedRecord("topic cut off"));
                }
                let (topic, payload) = rest.split_at(length);
                let topic = std::str::from_utf8(topic).map_err(|_| MalformedRecord("topic is not UTF-8"))?;
                Ok(Record::Message {
                    topic: Cow::Borrowed(topic),
                    payload: Cow::Borrowed(payload),
                    tracker_now: Millis(first),
                    wall_now: Millis(wall_now),
                })
            }
            ADVANCE | DRAIN | RESUME if !rest.is_empty() => Err(MalformedRecord("trailing bytes")),
            ADVANCE => Ok(Record::Advance { tracker_now: Millis(first) }),
            DRAIN => Ok(Record::Drain { tracker_now: Millis(first) }),
            RESUME => Ok(Record::Resume { now: Millis(first) }),
            _ => Err(MalformedRecord("unknown kind")),
        }
    }
}

fn time_record(out: &mut Vec<u8>, kind: u8, at: Millis) {
    out.push(kind);
    out.extend_from_slice(&at.0.to_le_bytes());
}

fn read_i64(bytes: &[u8]) -> Result<(i64, &[u8]), MalformedRecord> {
    let (value, rest) = bytes.split_first_chunk::<8>().ok_or(MalformedRecord("time cut off"))?;
    Ok((i64::from_le_bytes(*value), rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(record: Record<'_>) {
        let mut bytes = Vec::new();
        record.encode(&mut bytes);
        assert_eq!(Record::decode(&bytes).unwrap(), record);
    }

    #[test]
    fn every_kind_of_record_reads_back_as_written() {
        round_trip(Record::Message {
            topic: "queue/o1/events".into(),
            payload: br#"{"type":"issued"}"#.as_slice().into(),
            tracker_now: Millis(1_795_737_600_000),
            wall_now: Millis(1_795_737_600_250),
        });
        round_trip(Record::Message {
            topic: "".into(),
            payload: b"".as_slice().into(),
            tracker_now: Millis(-1),
            wall_now: Millis(i64::MAX),
        });
        round_trip(Record::Advance { tracker_now: Millis(7) });
        round_trip(Record::Drain { tracker_now: Millis(8) });
        round_trip(Record::Resume { now: Millis(9) });
    }

    #[test]
    fn unknown_kinds_and_cut_records_are_malformed() {
        assert!(Record::decode(&[]).is_err());
        assert!(Record::decode(&[9, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(Record::decode(&[ADVANCE, 1, 2]).is_err());
        assert!(Record::decode(&[ADVANCE, 0, 0, 0, 0, 0, 0, 0, 0, 5]).is_err());
        let mut bytes = Vec::new();
        Record::Message {
            topic: "t/o/e".into(),
            payload: b"{}".as_slice().into(),
            tracker_now: Millis(1),
            wall_now: Millis(2),
        }
        .encode(&mut bytes);
        assert!(Record::decode(&bytes[..19]).is_err(), "topic cut off");
    }

    proptest! {
        #[test]
        fn any_bytes_decode_to_a_record_or_an_error(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Record::decode(&bytes);
        }

        #[test]
        fn messages_round_trip(topic in ".{0,40}", payload in proptest::collection::vec(any::<u8>(), 0..200), a in any::<i64>(), b in any::<i64>()) {
            round_trip(Record::Message { topic: topic.into(), payload: payload.into(), tracker_now: Millis(a), wall_now: Millis(b) });
        }
    }
}
