//! Compact storage for what an office holds per ticket, so that an open
//! ticket costs a couple of hundred bytes and a million of them fit easily.
//!
//! - [`Stamp`]: an instant whose `Option` is 8 bytes (a niche), for the many
//!   optional times of a segment.
//! - [`Names`]: services, counters and staff interned per office as `NameId`
//!   (4 bytes, `Option` too), instead of a reference-counted string each.
//! - [`Tickets`]: segments in a slab (`Vec` + free list) indexed by a table of
//!   slot numbers hashed by ticket number; the ticket number is stored once,
//!   inline when short.
//! - [`Seen`]: dedup keys (64-bit hashes) tagged with the generation of the
//!   segment they belong to. A key is forgotten only once its generation has
//!   been closed for the dedup horizon, found by an occasional sweep rather
//!   than by a list of keys per segment, or earlier, least recently closed
//!   first, when the office's `limits.max_remembered_per_office` bites. (An
//!   open segment's keys beyond its first few are given a one-off tag closed
//!   at once, by the tracker, so no generation holds keys without bound.)

use hashbrown::{HashMap, HashSet};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::hash::{BuildHasher, Hash};
use std::num::{NonZeroI64, NonZeroU32};

use hashbrown::HashTable;

use crate::ids::TicketNo;
use crate::time::Millis;

/// An instant, stored so that `Option<Stamp>` needs no extra space: the
/// value is kept XOR `i64::MIN`, so only `Millis(i64::MIN)` (never a valid
/// timestamp) cannot be stored and zero stays free as the niche.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stamp(NonZeroI64);

impl Stamp {
    pub(super) fn new(at: Millis) -> Stamp {
        Stamp(NonZeroI64::new(at.0 ^ i64::MIN).unwrap_or(NonZeroI64::MIN))
    }

    pub(super) fn get(self) -> Millis {
        Millis(self.0.get() ^ i64::MIN)
    }
}

/// `Option<Millis>` ⇄ `Option<Stamp>`.
pub(super) fn stamp(at: Option<Millis>) -> Option<Stamp> {
    at.map(Stamp::new)
}

pub(super) fn unstamp(at: Option<Stamp>) -> Option<Millis> {
    at.map(Stamp::get)
}

/// An interned name: 1-based index into [`Names`].
pub(super) type NameId = NonZeroU32;

/// Interns one kind of identifier for one office. A name no longer in use
/// is forgotten by [`Names::retain`], which renumbers the rest in their
/// order, so ids stay dense (a stored state is the names in id order).
#[derive(Debug, Clone)]
pub(super) struct Names<T> {
    values: Vec<T>,
    index: HashMap<T, NameId>,
    /// By id: the latest event time the name was used at (not stored in
    /// states: a restored name counts as used at the restore).
    used: Vec<Millis>,
    /// The time of the event being applied: a name interned now is used then.
    now: Millis,
}

impl<T> Default for Names<T> {
    fn default() -> Self {
        Names { values: Vec::new(), index: HashMap::new(), used: Vec::new(), now: Millis(i64::MIN) }
    }
}

impl<T: Clone + Eq + Hash> Names<T> {
    /// The id of `value`, interned if new; either way it counts as used
    /// at the time given by [`Names::set_now`].
    pub(super) fn intern(&mut self, value: &T) -> NameId {
        if let Some(id) = self.index.get(value) {
            let used = &mut self.used[id.get() as usize - 1];
            *used = (*used).max(self.now);
            return *id;
        }
        self.values.push(value.clone());
        self.used.push(self.now);
        // Saturates rather than wraps: past four billion names all share the last.
        let id = NonZeroU32::new(u32::try_from(self.values.len()).unwrap_or(u32::MAX)).unwrap_or(NonZeroU32::MIN);
        self.index.insert(value.clone(), id);
        id
    }

    pub(super) fn intern_opt(&mut self, value: Option<&T>) -> Option<NameId> {
        value.map(|value| self.intern(value))
    }

    pub(super) fn get(&self, id: NameId) -> &T {
        &self.values[id.get() as usize - 1]
    }

    pub(super) fn len(&self) -> usize {
        self.values.len()
    }

    /// Sets the time names interned from now on are used at (the event being applied).
    pub(super) fn set_now(&mut self, at: Millis) {
        self.now = at;
    }

    /// Whether `value` is interned.
    pub(super) fn contains(&self, value: &T) -> bool {
        self.index.contains_key(value)
    }

    /// Marks every name as used at `at` (after a restore).
    pub(super) fn touch_all(&mut self, at: Millis) {
        self.used.iter_mut().for_each(|used| *used = (*used).max(at));
    }

    /// The ids of names last used before `cutoff`.
    pub(super) fn unused_since(&self, cutoff: Millis) -> impl Iterator<Item = NameId> + '_ {
        self.used
            .iter()
            .enumerate()
            .filter(move |(_, used)| **used < cutoff)
            .filter_map(|(index, _)| u32::try_from(index + 1).ok().and_then(NonZeroU32::new))
    }

    /// Keeps the names `keep` says yes to, renumbered densely in their order:
    /// returns the new id of every old one (`None`: forgotten), by old index.
    pub(super) fn retain(&mut self, mut keep: impl FnMut(NameId) -> bool) -> Vec<Option<NameId>> {
        let mut renumbered = Vec::with_capacity(self.values.len());
        let (mut values, mut used) = (Vec::new(), Vec::new());
        self.index.clear();
        for (index, (value, at)) in self.values.drain(..).zip(self.used.drain(..)).enumerate() {
            let old = u32::try_from(index + 1).ok().and_then(NonZeroU32::new).unwrap_or(NonZeroU32::MIN);
            if keep(old) {
                values.push(value.clone());
                used.push(at);
                let new = u32::try_from(values.len()).ok().and_then(NonZeroU32::new).unwrap_or(NonZeroU32::MIN);
                self.index.insert(value, new);
                renumbered.push(Some(new));
            } else {
                renumbered.push(None);
            }
        }
        (self.values, self.used) = (values, used);
        renumbered
    }

    /// In `NameId` order (for snapshots: interning them again in this order gives the same ids).
    pub(super) fn values(&self) -> &[T] {
        &self.values
    }
}

/// The new id of `id` after [`Names::retain`] returned `renumbered`.
pub(super) fn renumber(renumbered: &[Option<NameId>], id: NameId) -> Option<NameId> {
    renumbered.get(id.get() as usize - 1).copied().flatten()
}

/// A slot number in [`Tickets`].
pub(super) type SlotId = u32;

/// Ticket states by ticket number: a slab of slots and a hash table of slot
/// numbers (4 bytes a ticket) that hashes through the slot's ticket.
#[derive(Debug, Clone)]
pub(super) struct Tickets<S> {
    slots: Vec<Slot<S>>,
    free: Vec<SlotId>,
    index: HashTable<SlotId>,
    hasher: hashbrown::DefaultHashBuilder,
    len: usize,
}

#[derive(Debug, Clone)]
struct Slot<S> {
    ticket: TicketNo,
    state: Option<S>,
}

impl<S> Default for Tickets<S> {
    fn default() -> Self {
        Tickets {
            slots: Vec::new(),
            free: Vec::new(),
            index: HashTable::new(),
            hasher: hashbrown::DefaultHashBuilder::default(),
            len: 0,
        }
    }
}

impl<S> Tickets<S> {
    pub(super) fn find(&self, ticket: &TicketNo) -> Option<SlotId> {
        let hash = self.hasher.hash_one(ticket);
        self.index.find(hash, |slot| self.slots[*slot as usize].ticket == *ticket).copied()
    }

    /// The slot of `ticket`, created with `make` if absent.
    pub(super) fn find_or_insert(&mut self, ticket: &TicketNo, make: impl FnOnce() -> S) -> SlotId {
        if let Some(slot) = self.find(ticket) {
            return slot;
        }
        let slot = Slot { ticket: ticket.clone(), state: Some(make()) };
        let id = match self.free.pop() {
            Some(id) => {
                self.slots[id as usize] = slot;
                id
            }
            None => {
                self.slots.push(slot);
                (self.slots.len() - 1) as SlotId
            }
        };
        let hash = self.hasher.hash_one(ticket);
        let (slots, hasher) = (&self.slots, &self.hasher);
        self.index.insert_unique(hash, id, |slot| hasher.hash_one(&slots[*slot as usize].ticket));
        self.len += 1;
        id
    }

    pub(super) fn remove(&mut self, id: SlotId) {
        let Some(slot) = self.slots.get_mut(id as usize) else { return };
        if slot.state.take().is_none() {
            return;
        }
        let hash = self.hasher.hash_one(&slot.ticket);
        if let Ok(entry) = self.index.find_entry(hash, |candidate| *candidate == id) {
            entry.remove();
        }
        self.free.push(id);
        self.len -= 1;
    }

    pub(super) fn get(&self, id: SlotId) -> Option<&S> {
        self.slots.get(id as usize).and_then(|slot| slot.state.as_ref())
    }

    pub(super) fn get_mut(&mut self, id: SlotId) -> Option<&mut S> {
        self.slots.get_mut(id as usize).and_then(|slot| slot.state.as_mut())
    }

    /// Every state held, in slot order.
    pub(super) fn states_mut(&mut self) -> impl Iterator<Item = &mut S> {
        self.slots.iter_mut().filter_map(|slot| slot.state.as_mut())
    }

    pub(super) fn ticket(&self, id: SlotId) -> &TicketNo {
        &self.slots[id as usize].ticket
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Every slot in slot order, free ones too (with the ticket they last
    /// held, which is never read again), for snapshots.
    pub(super) fn slots(&self) -> impl ExactSizeIterator<Item = (&TicketNo, Option<&S>)> {
        self.slots.iter().map(|slot| (&slot.ticket, slot.state.as_ref()))
    }

    /// The free list, in the order slots are reused (last first).
    pub(super) fn free_slots(&self) -> &[SlotId] {
        &self.free
    }

    /// Rebuilds the store from [`Self::slots`] and [`Self::free_slots`],
    /// indexing the occupied slots. The caller has checked that occupied
    /// tickets are distinct and that `free` lists exactly the empty slots.
    pub(super) fn from_slots(slots: Vec<(TicketNo, Option<S>)>, free: Vec<SlotId>) -> Tickets<S> {
        let mut tickets = Tickets {
            slots: slots.into_iter().map(|(ticket, state)| Slot { ticket, state }).collect(),
            free,
            ..Tickets::default()
        };
        let (slots, hasher) = (&tickets.slots, &tickets.hasher);
        let occupied = slots.iter().filter(|slot| slot.state.is_some()).count();
        tickets.index.reserve(occupied, |slot| hasher.hash_one(&slots[*slot as usize].ticket));
        for (id, slot) in slots.iter().enumerate().filter(|(_, slot)| slot.state.is_some()) {
            let hash = hasher.hash_one(&slot.ticket);
            tickets.index.insert_unique(hash, id as SlotId, |slot| hasher.hash_one(&slots[*slot as usize].ticket));
            tickets.len += 1;
        }
        tickets
    }
}

/// A tag meaning "applied to nothing yet" (the event is held for reordering).
pub(super) const PENDING: u32 = u32::MAX;

/// Dedup keys, 12 bytes each: the 64-bit key and the generation tag of the
/// segment (or the one-off tag of a ticketless event) it belongs to.
///
/// A sweep forgets the keys of the generations that closed before its
/// cutoff without visiting the others (an office's open tickets hold most
/// keys): their tags join `forgotten`, and a key whose tag is there is
/// absent to every reader. The table drops such keys in one pass once they
/// are a quarter of it, so each forgotten key is visited a few times at most.
#[derive(Debug, Default, Clone)]
pub(super) struct Seen {
    keys: HashTable<[u32; 3]>,
    /// When closed generations closed, and how many keys each has; their
    /// keys go `dedup_horizon` later. A generation closed with no keys has
    /// nothing to forget and is not kept.
    closed: HashMap<u32, Closed>,
    /// The closed generations, least recently closed first. An entry whose
    /// tag is no longer in `closed` at that time is stale and skipped.
    by_close: BinaryHeap<Reverse<(Millis, u32)>>,
    /// The keys of `closed`, summed.
    closed_keys: usize,
    /// Tags whose keys are forgotten but still in `keys`.
    forgotten: HashSet<u32>,
    /// How many entries of `keys` have a tag in `forgotten`.
    forgotten_keys: usize,
    last_sweep: Option<Millis>,
    len_after_sweep: usize,
}

#[derive(Debug, Clone, Copy)]
struct Closed {
    at: Millis,
    keys: usize,
}

/// Below this many forgotten keys the table keeps them (one pass over a
/// small table is not worth its own step).
const MIN_PURGE: usize = 1024;

/// Above this span of forgotten tags a purge looks each key's tag up in
/// `forgotten` instead of in a bitmap.
const MAX_PURGE_BITMAP_BITS: u32 = 1 << 16;

fn split(key: u64) -> (u32, u32) {
    (key as u32, (key >> 32) as u32)
}

fn join(entry: &[u32; 3]) -> u64 {
    u64::from(entry[0]) | (u64::from(entry[1]) << 32)
}

impl Seen {
    pub(super) fn contains(&self, key: u64) -> bool {
        let (low, high) = split(key);
        self.keys
            .find(key, |entry| entry[0] == low && entry[1] == high)
            .is_some_and(|entry| !self.is_forgotten(entry[2]))
    }

    fn is_forgotten(&self, tag: u32) -> bool {
        !self.forgotten.is_empty() && self.forgotten.contains(&tag)
    }

    /// Records `key` (if new) with `tag`, or re-tags it. Returns whether the
    /// key is new to `tag` (so that the caller can count a segment's keys).
    pub(super) fn insert(&mut self, key: u64, tag: u32) -> bool {
        let (low, high) = split(key);
        let Some(entry) = self.keys.find_mut(key, |entry| entry[0] == low && entry[1] == high) else {
            self.keys.insert_unique(key, [low, high, tag], join);
            return true;
        };
        let previous = std::mem::replace(&mut entry[2], tag);
        if previous == tag {
            return false;
        }
        if previous == PENDING {
            // Never closed, so neither counted nor forgotten.
            return true;
        }
        if !self.forgotten.is_empty() && self.forgotten.contains(&previous) {
            self.forgotten_keys = self.forgotten_keys.saturating_sub(1);
        } else if let Some(closed) = self.closed.get_mut(&previous) {
            if closed.keys > 0 {
                closed.keys -= 1;
                self.closed_keys -= 1;
            }
        }
        true
    }

    /// The generation `tag` closed at `at` with `keys` keys (`None`: not
    /// counted, they are counted here): its keys are forgotten after the horizon.
    pub(super) fn close(&mut self, tag: u32, at: Millis, keys: Option<usize>) {
        let keys = keys.unwrap_or_else(|| self.keys.iter().filter(|entry| entry[2] == tag).count());
        if keys == 0 {
            return;
        }
        if let Some(previous) = self.closed.insert(tag, Closed { at, keys }) {
            self.closed_keys -= previous.keys;
        }
        self.closed_keys += keys;
        self.by_close.push(Reverse((at, tag)));
    }

    /// When the least recently closed generation still remembered closed.
    pub(super) fn oldest_closed(&mut self) -> Option<Millis> {
        while let Some(Reverse((at, tag))) = self.by_close.peek().copied() {
            if self.closed.get(&tag).is_some_and(|closed| closed.at == at) {
                return Some(at);
            }
            self.by_close.pop();
        }
        None
    }

    /// Forgets the keys of the least recently closed generation now, before
    /// the horizon: returns how many.
    pub(super) fn forget_oldest(&mut self) -> usize {
        if self.oldest_closed().is_none() {
            return 0;
        }
        let Some(Reverse((_, tag))) = self.by_close.pop() else { return 0 };
        let keys = self.forget_generation(tag);
        self.maybe_purge();
        keys
    }

    /// Marks a closed generation's keys forgotten: returns how many.
    fn forget_generation(&mut self, tag: u32) -> usize {
        let Some(closed) = self.closed.remove(&tag) else { return 0 };
        self.closed_keys -= closed.keys;
        if closed.keys > 0 {
            self.forgotten.insert(tag);
            self.forgotten_keys += closed.keys;
        }
        closed.keys
    }

    /// Forgets keys of generations closed before `cutoff`. Runs when the
    /// office clock has moved `every_ms` since the last sweep, or the table
    /// has doubled, so its cost is spread thin.
    pub(super) fn maybe_sweep(&mut self, cutoff: Millis, now: Millis, every_ms: i64) {
        let due_by_time = self.last_sweep.is_none_or(|last| now.since(last) >= every_ms);
        let due_by_size = self.len() > 2 * self.len_after_sweep.max(1024);
        if !(due_by_time || due_by_size) {
            return;
        }
        self.last_sweep = Some(now);
        while self.oldest_closed().is_some_and(|at| at < cutoff) {
            if let Some(Reverse((_, tag))) = self.by_close.pop() {
                self.forget_generation(tag);
            }
        }
        self.maybe_purge();
        self.len_after_sweep = self.len();
    }

    /// Drops the forgotten keys from the table once they are a quarter of it.
    fn maybe_purge(&mut self) {
        if self.forgotten_keys >= MIN_PURGE.max(self.keys.len() / 4) {
            self.purge();
        }
    }

    /// Drops the forgotten keys from the table, and gives memory back when most of it is unused.
    fn purge(&mut self) {
        // Usually a run of recent tags: looked up in a bitmap (8 KiB at most).
        let low = self.forgotten.iter().copied().min().unwrap_or(0);
        let high = self.forgotten.iter().copied().max().unwrap_or(0);
        if high - low < MAX_PURGE_BITMAP_BITS {
            let mut bitmap = vec![0u64; (high - low) as usize / 64 + 1];
            for tag in &self.forgotten {
                let bit = (tag - low) as usize;
                bitmap[bit / 64] |= 1 << (bit % 64);
            }
            self.keys.retain(|entry| {
                let bit = entry[2].wrapping_sub(low) as usize;
                bitmap.get(bit / 64).is_none_or(|word| word & (1 << (bit % 64)) == 0)
            });
        } else {
            let forgotten = &self.forgotten;
            self.keys.retain(|entry| !forgotten.contains(&entry[2]));
        }
        self.forgotten.clear();
        self.forgotten_keys = 0;
        // Shrinking to fit after every purge would reallocate and rehash the
        // table each time only for it to grow again; give memory back only
        // when most of it is unused.
        if self.keys.capacity() > 4 * self.keys.len().max(1024) {
            self.keys.shrink_to(2 * self.keys.len(), join);
        }
    }

    pub(super) fn len(&self) -> usize {
        self.keys.len() - self.forgotten_keys
    }

    /// Keys of closed generations not forgotten yet.
    pub(super) fn closed_keys(&self) -> usize {
        self.closed_keys
    }

    /// Every key with its tag, in no particular order (for snapshots).
    pub(super) fn entries(&self) -> impl ExactSizeIterator<Item = (u64, u32)> + '_ {
        Live { entries: self.keys.iter(), seen: self, left: self.len() }
    }

    /// Closed generations and when they closed (for snapshots).
    pub(super) fn closed(&self) -> impl ExactSizeIterator<Item = (u32, Millis)> + '_ {
        self.closed.iter().map(|(tag, closed)| (*tag, closed.at))
    }

    /// What paces the sweep: when it last ran, and the table's size after it.
    pub(super) fn sweep_pacing(&self) -> (Option<Millis>, usize) {
        (self.last_sweep, self.len_after_sweep)
    }

    /// Rebuilds the table from [`Self::entries`], [`Self::closed`] and
    /// [`Self::sweep_pacing`], counting the keys of each closed generation.
    pub(super) fn from_parts(
        entries: impl IntoIterator<Item = (u64, u32)>,
        closed: impl IntoIterator<Item = (u32, Millis)>,
        (last_sweep, len_after_sweep): (Option<Millis>, usize),
    ) -> Seen {
        let mut seen = Seen { last_sweep, len_after_sweep, ..Seen::default() };
        for (key, tag) in entries {
            seen.insert(key, tag);
        }
        seen.closed = closed.into_iter().map(|(tag, at)| (tag, Closed { at, keys: 0 })).collect();
        for entry in &seen.keys {
            if let Some(closed) = seen.closed.get_mut(&entry[2]) {
                closed.keys += 1;
                seen.closed_keys += 1;
            }
        }
        // Kept even with no keys (a state written before those were left
        // out), so that the state encodes back as it was; the horizon drops them.
        seen.by_close = seen.closed.iter().map(|(tag, closed)| Reverse((closed.at, *tag))).collect();
        seen
    }
}

/// The keys of a [`Seen`] that are not forgotten.
struct Live<'a, I> {
    entries: I,
    seen: &'a Seen,
    left: usize,
}

impl<'a, I: Iterator<Item = &'a [u32; 3]>> Iterator for Live<'a, I> {
    type Item = (u64, u32);

    fn next(&mut self) -> Option<(u64, u32)> {
        let entry = self.entries.find(|entry| !self.seen.is_forgotten(entry[2]))?;
        self.left -= 1;
        Some((join(entry), entry[2]))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl<'a, I: Iterator<Item = &'a [u32; 3]>> ExactSizeIterator for Live<'a, I> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_optional_stamp_is_as_small_as_an_instant() {
        assert_eq!(std::mem::size_of::<Option<Stamp>>(), 8);
        for at in [0, 1, -1, 1_795_737_600_000, i64::MAX] {
            assert_eq!(Stamp::new(Millis(at)).get(), Millis(at));
        }
    }

    #[test]
    fn tickets_reuse_freed_slots_and_find_by_number() {
        let mut tickets: Tickets<u8> = Tickets::default();
        let a = TicketNo::parse("A-1").unwrap();
        let b = TicketNo::parse("B-2").unwrap();
        let slot_a = tickets.find_or_insert(&a, || 1);
        let slot_b = tickets.find_or_insert(&b, || 2);
        assert_eq!(tickets.find(&a), Some(slot_a));
        assert_eq!(tickets.find_or_insert(&a, || 9), slot_a);
        tickets.remove(slot_a);
        assert_eq!(tickets.find(&a), None);
        assert_eq!(tickets.len(), 1);
        let c = TicketNo::parse("C-3").unwrap();
        assert_eq!(tickets.find_or_insert(&c, || 3), slot_a, "the freed slot is reused");
        assert_eq!(tickets.get(slot_b), Some(&2));
        assert_eq!(tickets.ticket(slot_a), &c);
    }

    #[test]
    fn seen_keys_are_forgotten_only_after_their_generation_closed_for_the_horizon() {
        let mut seen = Seen::default();
        seen.insert(1, 7);
        seen.insert(2, 8);
        seen.insert(3, PENDING);
        seen.close(7, Millis(100), None);
        seen.maybe_sweep(Millis(50), Millis(1000), 0);
        assert!(seen.contains(1), "closed at 100, cutoff 50: kept");
        seen.maybe_sweep(Millis(101), Millis(2000), 0);
        assert!(!seen.contains(1));
        assert!(seen.contains(2) && seen.contains(3), "open and pending keys are never forgotten");
    }

    #[test]
    fn a_sweep_forgets_exactly_the_keys_of_expired_generations_however_far_apart_their_tags() {
        for tags in [[5u32, 6, 9, 70, 200], [1, 2, 3, 1 << 20, u32::MAX - 2]] {
            let mut seen = Seen::default();
            for (index, tag) in tags.iter().enumerate() {
                seen.insert(index as u64 * 2, *tag);
                seen.insert(index as u64 * 2 + 1, *tag);
                let closed_at = [Some(0), Some(10), None, Some(40), Some(20)][index];
                if let Some(at) = closed_at {
                    seen.close(*tag, Millis(at), None);
                }
            }
            seen.insert(100, 7);
            seen.maybe_sweep(Millis(25), Millis(1000), 0);
            let kept: Vec<bool> = (0..10).map(|key| seen.contains(key)).collect();
            assert_eq!(kept, [false, false, false, false, true, true, true, true, false, false], "{tags:?}");
            assert!(seen.contains(100), "a tag that never closed");
            assert_eq!(seen.closed().count(), 1, "{tags:?}");
        }
    }
}

#[cfg(test)]
mod forgetting {
    use super::*;

    /// Many open keys, and generations closing one after another: each
    /// sweep forgets exactly the keys of the generations past the cutoff,
    /// whether they are still in the table or already dropped from it.
    #[test]
    fn keys_forgotten_without_a_pass_over_the_table_are_absent_and_uncounted() {
        let mut seen = Seen::default();
        for key in 0..10_000u64 {
            seen.insert(key, PENDING);
        }
        for tag in 0..3_000u32 {
            let key = 1_000_000 + u64::from(tag);
            assert!(seen.insert(key, tag) && seen.insert(key + 500_000, tag));
            seen.close(tag, Millis(i64::from(tag)), if tag % 2 == 0 { Some(2) } else { None });
        }
        for (step, cutoff) in [10i64, 11, 400, 2_500, 3_000].into_iter().enumerate() {
            seen.maybe_sweep(Millis(cutoff), Millis(step as i64 * 1_000), 0);
            let expected_len = 10_000 + 2 * (3_000 - cutoff.min(3_000) as usize);
            assert_eq!(seen.len(), expected_len, "cutoff {cutoff}");
            assert_eq!(seen.entries().len(), expected_len);
            assert_eq!(seen.entries().count(), expected_len);
            for tag in [0u32, 9, 10, 399, 400, 2_999] {
                let key = 1_000_000 + u64::from(tag);
                assert_eq!(seen.contains(key), i64::from(tag) >= cutoff, "tag {tag}, cutoff {cutoff}");
            }
            assert!(seen.contains(0) && seen.contains(9_999), "open keys stay");
        }
        assert_eq!(seen.len(), 10_000);
        // A forgotten key comes back as new, and counts again.
        assert!(!seen.contains(1_000_005));
        assert!(seen.insert(1_000_005, PENDING));
        assert!(seen.contains(1_000_005));
        assert_eq!(seen.len(), 10_001);
    }

    #[test]
    fn a_rebuilt_table_counts_the_keys_of_its_closed_generations() {
        let mut seen = Seen::default();
        for key in 0..4u64 {
            seen.insert(key, key as u32 % 2);
        }
        seen.close(0, Millis(5), Some(2));
        let mut rebuilt = Seen::from_parts(seen.entries(), seen.closed(), seen.sweep_pacing());
        rebuilt.maybe_sweep(Millis(6), Millis(0), 0);
        assert_eq!(rebuilt.len(), 2);
        assert!(!rebuilt.contains(0) && rebuilt.contains(1) && !rebuilt.contains(2) && rebuilt.contains(3));
    }
}

#[cfg(test)]
mod sizes {
    /// An open ticket's budget is under 256 bytes in all (slot, index,
    /// dedup keys, timer); these are the big parts of it.
    #[test]
    fn per_ticket_structures_stay_within_their_budget() {
        assert!(std::mem::size_of::<super::super::Segment>() <= 96);
        assert!(std::mem::size_of::<super::Slot<super::super::TicketState>>() <= 120);
        assert!(std::mem::size_of::<(crate::time::Millis, super::super::TimerKey)>() <= 16);
    }
}
