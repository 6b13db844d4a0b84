//! One office's reorder buffer: the events held until the office clock has
//! passed their time plus the reorder window, taken out in [`HeldKey`] order.
//!
//! A binary heap rather than an ordered map: the buffer mostly holds a few
//! events, goes empty and fills again with every event, and an ordered map
//! allocates a node each time it goes from empty to one entry and frees it
//! when it goes back (about 700 instructions an event in a replay), where
//! the heap keeps its vectors. Keys are distinct (`arrival` is), so the order
//! events leave in is the same total order either way.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::EventKeys;
use crate::event::Event;
use crate::time::Millis;

/// Where a held event sorts: time, rank, then content so that equal
/// (ts, rank) pairs still have one order whatever their arrival order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct HeldKey {
    pub(super) ts: Millis,
    pub(super) rank: u8,
    pub(super) content: u64,
    pub(super) arrival: u64,
}

/// Held events with their dedup keys (computed once, at arrival): the
/// heap orders small keys, each naming the slot of its event, so that
/// sifting moves 40 bytes rather than whole events.
#[derive(Debug, Clone, Default)]
pub(super) struct Held {
    order: BinaryHeap<Reverse<(HeldKey, u32)>>,
    slots: Vec<Option<(Event, EventKeys)>>,
    /// Empty slots, reused before the vector grows.
    free: Vec<u32>,
}

impl Held {
    pub(super) fn insert(&mut self, key: HeldKey, event: Event, keys: EventKeys) {
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = Some((event, keys));
                slot
            }
            None => {
                self.slots.push(Some((event, keys)));
                // As many slots as events held at once, far below four billion.
                u32::try_from(self.slots.len() - 1).unwrap_or(u32::MAX)
            }
        };
        self.order.push(Reverse((key, slot)));
    }

    /// The time of the first event in order.
    pub(super) fn first_ts(&self) -> Option<Millis> {
        self.order.peek().map(|Reverse((key, _))| key.ts)
    }

    /// Takes the first event in order.
    pub(super) fn pop_first(&mut self) -> Option<(Event, EventKeys)> {
        let Reverse((_, slot)) = self.order.pop()?;
        self.free.push(slot);
        self.slots.get_mut(slot as usize).and_then(Option::take)
    }

    pub(super) fn len(&self) -> usize {
        self.order.len()
    }

    /// Every held event with its key, in order (for snapshots; not on the hot path).
    pub(super) fn in_order(&self) -> Vec<(&HeldKey, &Event)> {
        let mut keys: Vec<&(HeldKey, u32)> = self.order.iter().map(|Reverse(entry)| entry).collect();
        keys.sort_unstable();
        keys.into_iter()
            .filter_map(|(key, slot)| self.slots.get(*slot as usize)?.as_ref().map(|(event, _)| (key, event)))
            .collect()
    }
}
