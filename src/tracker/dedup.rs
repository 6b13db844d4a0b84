//! Dedup keys: what identifies an event, and how long an office keeps it.

use super::*;

impl OfficeState {
    /// Gives an event's dedup keys a one-off tag that closes at `at`: they
    /// are forgotten `dedup_horizon` after it (events that belong to no open segment).
    pub(super) fn retire_keys(&mut self, settings: &TrackerSettings, keys: EventKeys, at: Millis, out: &mut Output) {
        let tag = self.next_tag();
        let mut count = 0;
        for key in keys.iter() {
            count += usize::from(self.seen.insert(key, tag));
        }
        self.seen.close(tag, at, Some(count));
        self.limit_remembered(settings, out);
    }

    pub(super) fn set_key_count(&mut self, slot: SlotId, count: u16) {
        let index = slot as usize;
        if self.key_counts.len() <= index {
            self.key_counts.resize(index + 1, 0);
        }
        self.key_counts[index] = count;
    }

    /// Tags an event's dedup keys with the generation of the segment they
    /// now belong to, while the segment has fewer than [`SEGMENT_KEYS_KEPT`];
    /// beyond them they are retired as the keys of an event that belongs to
    /// no segment (remembered for the horizon after `at`, counted in the
    /// office's limit), so that a segment that never closes holds a bounded
    /// number. Decided as events are applied, in event-time order.
    pub(super) fn tag_keys(
        &mut self,
        settings: &TrackerSettings,
        slot: SlotId,
        keys: EventKeys,
        at: Millis,
        out: &mut Output,
    ) {
        let Some(generation) = self.segment(slot).map(|segment| segment.generation) else { return };
        let held = self.key_counts.get(slot as usize).copied().map_or(0, usize::from);
        if held + keys.len() > SEGMENT_KEYS_KEPT {
            self.retire_keys(settings, keys, at, out);
            return;
        }
        let mut added = 0;
        for key in keys.iter() {
            added += u16::from(self.seen.insert(key, generation));
        }
        if let Some(count) = self.key_counts.get_mut(slot as usize) {
            *count = count.saturating_add(added);
        }
    }
}

/// The two dedup keys of an event: by `id` (if any) and by content
/// (type, ticket, counter, ts). Hashes, not copies, to keep memory per ticket
/// small; computed once, at arrival.
#[derive(Debug, Clone, Copy)]
pub(super) struct EventKeys {
    pub(super) id: Option<u64>,
    pub(super) content: u64,
}

impl EventKeys {
    pub(super) fn of(event: &Event) -> EventKeys {
        let (id, content) = dedup_keys(event);
        EventKeys { id, content }
    }

    pub(super) fn iter(self) -> impl Iterator<Item = u64> {
        self.id.into_iter().chain([self.content])
    }

    pub(super) fn len(self) -> usize {
        1 + usize::from(self.id.is_some())
    }
}

pub(super) fn dedup_keys(event: &Event) -> (Option<u64>, u64) {
    let id_key = event.id.as_deref().map(|id| {
        let mut hash = Fnv::new();
        hash.write(b"id\0");
        hash.write(id.as_bytes());
        hash.finish()
    });
    let mut hash = Fnv::new();
    hash.write(b"content\0");
    hash.write(event.kind.as_str().as_bytes());
    hash.write(b"\0");
    hash.write(event.ticket.as_ref().map_or("", |ticket| ticket.as_str()).as_bytes());
    hash.write(b"\0");
    hash.write(event.counter.as_ref().map_or("", |counter| counter.as_str()).as_bytes());
    hash.write(b"\0");
    hash.write(&event.ts.0.to_le_bytes());
    (id_key, hash.finish())
}

/// FNV-1a, 64 bit: stable across releases and platforms, unlike std's
/// hasher, because point times derived from it must never change.
pub(crate) struct Fnv(u64);

impl Fnv {
    pub(crate) fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    pub(crate) fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    pub(crate) fn finish(&self) -> u64 {
        // A final avalanche so that short keys spread over all bits.
        let mut x = self.0;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x
    }
}

pub(super) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash = Fnv::new();
    hash.write(bytes);
    hash.finish()
}
