//! The wall time the office clocks run on while the loop is behind.

use std::time::Duration;

use super::TICK;
use crate::time::Millis;

/// The wall time the office clocks run on: the real clock less the time the
/// loop spent waiting on a full writer, while the backlog that wait caused is
/// being worked off.
///
/// Office clocks follow the wall clock between events so that deadlines pass
/// while nothing happens. While the daemon itself is stalled, messages queue
/// up behind the stall (in the channel, then at the broker); if office clocks
/// ran on meanwhile, those messages would all arrive late. So a stall is
/// excluded from the clocks for as long as it has consequences: until the
/// daemon has caught up, which is when a tick finds the message channel empty
/// (the same condition under which ticks let wall time move the clocks).
///
/// Then the shift returns to zero at once, and office clocks jump to real
/// time: the deadlines, snapshots and silences that came due during the stall
/// fire now, which is right, since every message that could have disproved
/// them has been taken in. Keeping the shift would leave every office that
/// stays quiet that far behind the wall clock for good: opening hours and
/// silence judged at the wrong time, `silent` alerts stamped so late that
/// they are dropped as stale. An office heard during the backlog does not run
/// ahead of the wall clock when the shift drops, because an office clock never
/// runs ahead of the wall time it is given (`tracking.clock = "wall"`).
///
/// Pure: the real wall time is a parameter, so the rule is tested without sleeping.
#[derive(Debug, Default)]
pub(super) struct LoopClock {
    stalled_ms: i64,
}

impl LoopClock {
    /// The office clocks' wall time when the real clock reads `wall`.
    pub(super) fn now(&self, wall: Millis) -> Millis {
        wall.minus_ms(self.stalled_ms)
    }

    /// Excludes a wait longer than a tick from the office clocks.
    pub(super) fn exclude(&mut self, waited: Duration) {
        if waited > TICK {
            self.stalled_ms = self.stalled_ms.saturating_add(i64::try_from(waited.as_millis()).unwrap_or(i64::MAX));
        }
    }

    /// Nothing waits in the message channel: the backlog of every stall so
    /// far has been worked off.
    pub(super) fn caught_up(&mut self) {
        self.stalled_ms = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WALL: Millis = Millis(1_795_737_600_000);

    #[test]
    fn a_writer_stall_holds_office_clocks_back_while_its_backlog_is_worked_off() {
        let mut clock = LoopClock::default();
        clock.exclude(Duration::from_secs(90));
        assert_eq!(clock.now(WALL), WALL.minus_ms(90_000));
        clock.exclude(Duration::from_secs(30));
        assert_eq!(clock.now(WALL.plus_ms(1_000)), WALL.minus_ms(119_000), "stalls add up while behind");
    }

    #[test]
    fn once_caught_up_office_clocks_follow_the_wall_clock_again() {
        let mut clock = LoopClock::default();
        // An hour of writer stalls (one InfluxDB outage)...
        for _ in 0..60 {
            clock.exclude(Duration::from_secs(60));
        }
        assert_eq!(clock.now(WALL), WALL.minus_ms(3_600_000));
        // ...and the channel is empty again: no shift remains.
        clock.caught_up();
        assert_eq!(clock.now(WALL), WALL);
        clock.exclude(Duration::from_secs(5));
        assert_eq!(clock.now(WALL), WALL.minus_ms(5_000), "a later stall counts from zero");
    }

    #[test]
    fn waits_no_longer_than_a_tick_are_not_stalls() {
        let mut clock = LoopClock::default();
        clock.exclude(TICK);
        clock.exclude(Duration::from_millis(1));
        assert_eq!(clock.now(WALL), WALL);
    }
}
