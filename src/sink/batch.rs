//! Lines waiting to be written, and cutting them into batches.
//!
//! Pure data: no IO, no clock (arrival times are passed in). Every cut is at a
//! line boundary, so a batch is always whole lines of line protocol, each
//! ending with `'\n'`, in the order they arrived. [`Watermark`] turns batches
//! settled in any order into the prefix of lines that are all settled.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

/// Whole lines of line protocol, each ending with `'\n'`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Batch {
    pub text: String,
    pub lines: usize,
}

impl Batch {
    pub fn empty() -> Batch {
        Batch { text: String::new(), lines: 0 }
    }

    /// Splits into the lines marked `true` in `mask` (one mark a line) and
    /// the others, each keeping its order.
    pub fn split_by(self, mask: &[bool]) -> (Batch, Batch) {
        debug_assert_eq!(mask.len(), self.lines, "one mark a line");
        let (mut marked, mut others) = (Batch::empty(), Batch::empty());
        for (line, is_marked) in self.text.split_inclusive('\n').zip(mask) {
            let into = if *is_marked { &mut marked } else { &mut others };
            into.text.push_str(line);
            into.lines += 1;
        }
        (marked, others)
    }

    /// Splits into two halves by lines, the first half getting the smaller
    /// share when the count is odd. Needs at least two lines.
    pub fn split_in_half(mut self) -> (Batch, Batch) {
        debug_assert!(self.lines >= 2, "a batch of {} line(s) cannot be split", self.lines);
        let first_lines = self.lines / 2;
        let rest = self.text.split_off(offset_after_lines(&self.text, first_lines));
        let second = Batch { text: rest, lines: self.lines - first_lines };
        self.lines = first_lines;
        (self, second)
    }
}

/// Lines received but not yet handed to a writer, in arrival order.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    chunks: VecDeque<Chunk>,
    lines: usize,
}

#[derive(Debug)]
struct Chunk {
    text: String,
    lines: usize,
    arrived: Instant,
}

impl Pending {
    /// Appends lines. A missing final newline is added, so that two chunks
    /// can never run together into one corrupt line. Returns the number of
    /// lines added, counted from the text.
    pub fn push(&mut self, mut text: String, arrived: Instant) -> usize {
        if text.is_empty() {
            return 0;
        }
        if !text.ends_with('\n') {
            text.push('\n');
        }
        let lines = count_lines(&text);
        self.lines += lines;
        self.chunks.push_back(Chunk { text, lines, arrived });
        lines
    }

    pub fn lines(&self) -> usize {
        self.lines
    }

    /// The bytes of the batch [`Pending::take`] would make of `max_lines`.
    pub fn bytes_of_next(&self, max_lines: usize) -> usize {
        let mut room = max_lines.max(1);
        let mut bytes = 0;
        for chunk in &self.chunks {
            if room == 0 {
                break;
            }
            let lines = chunk.lines.min(room);
            bytes += if lines == chunk.lines { chunk.text.len() } else { offset_after_lines(&chunk.text, lines) };
            room -= lines;
        }
        bytes
    }

    /// When the oldest unsent line has waited `flush_interval`; `None` when
    /// nothing is pending.
    pub fn due_at(&self, flush_interval: Duration) -> Option<Instant> {
        self.chunks.front().map(|chunk| chunk.arrived + flush_interval)
    }

    /// Takes up to `max_lines` of the oldest lines; `None` when nothing is
    /// pending. A chunk cut in two keeps its arrival time for the remainder.
    pub fn take(&mut self, max_lines: usize) -> Option<Batch> {
        let max_lines = max_lines.max(1);
        let mut batch = Batch { text: String::new(), lines: 0 };
        while batch.lines < max_lines {
            let Some(mut chunk) = self.chunks.pop_front() else {
                break;
            };
            let room = max_lines - batch.lines;
            if chunk.lines > room {
                let rest = chunk.text.split_off(offset_after_lines(&chunk.text, room));
                self.chunks.push_front(Chunk { text: rest, lines: chunk.lines - room, arrived: chunk.arrived });
                chunk.lines = room;
            }
            if batch.text.is_empty() {
                batch.text = chunk.text;
            } else {
                batch.text.push_str(&chunk.text);
            }
            batch.lines += chunk.lines;
        }
        self.lines -= batch.lines;
        (batch.lines > 0).then_some(batch)
    }

    /// Empties the queue, returning how many lines it held.
    pub fn discard(&mut self) -> usize {
        self.chunks.clear();
        std::mem::take(&mut self.lines)
    }
}

/// The longest prefix of lines (numbered from 0 in arrival order) that are
/// all settled, from ranges settled in any order. Ranges never overlap and
/// each is settled once.
#[derive(Debug, Default)]
pub(crate) struct Watermark {
    prefix: u64,
    /// Ranges settled beyond a gap: first line → number of lines.
    ahead: BTreeMap<u64, u64>,
}

impl Watermark {
    /// Records lines `first .. first + lines` as settled; returns the prefix.
    pub fn settle(&mut self, first: u64, lines: u64) -> u64 {
        debug_assert!(first >= self.prefix, "lines {first}.. settled twice");
        if lines == 0 {
            return self.prefix;
        }
        if first == self.prefix {
            self.prefix += lines;
            while let Some(next) = self.ahead.remove(&self.prefix) {
                self.prefix += next;
            }
        } else {
            self.ahead.insert(first, lines);
        }
        self.prefix
    }

    /// How many lines from the first are all settled.
    pub fn prefix(&self) -> u64 {
        self.prefix
    }
}

/// Counted with memchr's vector search: every chunk of lines the daemon
/// hands over is counted here, and a byte-at-a-time count cost about as much
/// as encoding the lines did.
pub(crate) fn count_lines(text: &str) -> usize {
    memchr::memchr_iter(b'\n', text.as_bytes()).count()
}

/// The byte offset just after the `lines`-th newline, or the end of the text
/// when it has fewer lines.
fn offset_after_lines(text: &str, lines: usize) -> usize {
    if lines == 0 {
        return 0;
    }
    memchr::memchr_iter(b'\n', text.as_bytes()).nth(lines - 1).map_or(text.len(), |index| index + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(range: std::ops::Range<usize>) -> String {
        range.map(|number| format!("m v={number}i {number}\n")).collect()
    }

    #[test]
    fn take_cuts_at_line_boundaries_and_keeps_order() {
        let now = Instant::now();
        let mut pending = Pending::default();
        assert_eq!(pending.push(lines(0..3), now), 3);
        assert_eq!(pending.push(lines(3..10), now), 7);
        let mut taken = Vec::new();
        while let Some(batch) = pending.take(4) {
            assert_eq!(count_lines(&batch.text), batch.lines);
            taken.push(batch);
        }
        assert_eq!(taken.iter().map(|batch| batch.lines).collect::<Vec<_>>(), [4, 4, 2]);
        let mut again = Pending::default();
        again.push(lines(0..3), now);
        again.push(lines(3..10), now);
        assert_eq!(again.bytes_of_next(4), taken[0].text.len());
        assert_eq!(again.bytes_of_next(100), lines(0..10).len());
        assert_eq!(taken.iter().map(|batch| batch.text.as_str()).collect::<String>(), lines(0..10));
        assert_eq!(pending.lines(), 0);
        assert_eq!(pending.due_at(Duration::from_secs(1)), None);
    }

    #[test]
    fn a_cut_chunk_keeps_its_arrival_time() {
        let first = Instant::now();
        let second = first + Duration::from_millis(500);
        let mut pending = Pending::default();
        pending.push(lines(0..2), first);
        pending.push(lines(2..6), second);
        assert_eq!(pending.take(3).unwrap().lines, 3);
        assert_eq!(pending.due_at(Duration::from_secs(1)), Some(second + Duration::from_secs(1)));
    }

    #[test]
    fn a_missing_final_newline_is_added_so_chunks_never_merge() {
        let mut pending = Pending::default();
        pending.push("a v=1i 1".into(), Instant::now());
        pending.push("b v=2i 2\n".into(), Instant::now());
        assert_eq!(pending.take(10).unwrap(), Batch { text: "a v=1i 1\nb v=2i 2\n".into(), lines: 2 });
    }

    #[test]
    fn empty_text_adds_nothing() {
        let mut pending = Pending::default();
        assert_eq!(pending.push(String::new(), Instant::now()), 0);
        assert!(pending.take(10).is_none());
    }

    #[test]
    fn splitting_in_half_keeps_every_line_once() {
        for count in 2..9 {
            let batch = Batch { text: lines(0..count), lines: count };
            let (first, second) = batch.split_in_half();
            assert_eq!(first.lines, count / 2);
            assert_eq!(first.lines + second.lines, count);
            assert_eq!(count_lines(&first.text), first.lines);
            assert_eq!(count_lines(&second.text), second.lines);
            assert_eq!(first.text + &second.text, lines(0..count));
        }
    }

    #[test]
    fn the_watermark_waits_for_the_earliest_unsettled_line() {
        let mut settled = Watermark::default();
        // Batches [0, 5), [5, 9), [9, 12) complete second, third, first.
        assert_eq!(settled.settle(5, 4), 0);
        assert_eq!(settled.settle(9, 3), 0);
        assert_eq!(settled.settle(0, 5), 12, "the gap closes and both ranges ahead join");
        // 413 halves of [12, 20): the second half settles before the first.
        assert_eq!(settled.settle(16, 4), 12);
        assert_eq!(settled.settle(12, 4), 20);
        assert_eq!(settled.settle(20, 0), 20, "an empty range changes nothing");
        assert_eq!(settled.prefix(), 20);
    }

    #[test]
    fn the_watermark_is_the_settled_prefix_for_every_completion_order() {
        // Ranges of 1, 2, 3, 4 lines, settled in each of the 24 orders.
        let ranges = [(0u64, 1u64), (1, 2), (3, 3), (6, 4)];
        let orders = permutations(&[0, 1, 2, 3]);
        assert_eq!(orders.len(), 24);
        for order in orders {
            let mut settled = Watermark::default();
            let mut done = [false; 4];
            for index in order {
                let (first, lines) = ranges[index];
                done[index] = true;
                let expected: u64 =
                    ranges.iter().zip(done).take_while(|(_, done)| *done).map(|((_, lines), _)| lines).sum();
                assert_eq!(settled.settle(first, lines), expected, "{done:?}");
            }
            assert_eq!(settled.prefix(), 10);
        }
    }

    fn permutations(items: &[usize]) -> Vec<Vec<usize>> {
        if items.len() <= 1 {
            return vec![items.to_vec()];
        }
        let mut all = Vec::new();
        for (index, item) in items.iter().enumerate() {
            let mut rest = items.to_vec();
            rest.remove(index);
            for tail in permutations(&rest) {
                all.push([vec![*item], tail].concat());
            }
        }
        all
    }

    #[test]
    fn discard_reports_what_was_pending() {
        let mut pending = Pending::default();
        pending.push(lines(0..5), Instant::now());
        assert_eq!(pending.discard(), 5);
        assert_eq!(pending.lines(), 0);
    }
}
