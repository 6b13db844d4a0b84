//! The one time budget of a shutdown and its phases.

use std::time::Duration;

/// The one time budget of a shutdown, from the moment it was asked for, and
/// its split among the phases (shares of `shutdown_timeout`; 8 s by default):
/// - the source stops: until 1/8 (1 s); it stops reading at once, and
///   spends at most half a second on a clean DISCONNECT;
/// - the journal is synced and closed and the last points are handed to the
///   writers: until 3/8 (3 s); a sync takes milliseconds, unless the disk
///   stalls, and then what is not synced is not acknowledged either;
/// - the writers write what they hold, retrying, for 1/2 (4 s) from when
///   they are asked to finish, so by 7/8 at the latest;
/// - and the daemon waits for them until 15/16 (7.5 s), leaving the rest
///   to log and exit.
#[derive(Debug, Clone, Copy)]
pub struct ShutdownBudget {
    started: tokio::time::Instant,
    timeout: Duration,
}

impl ShutdownBudget {
    pub fn new(started: tokio::time::Instant, timeout: Duration) -> ShutdownBudget {
        ShutdownBudget { started, timeout }
    }

    /// How long a writer may keep writing once asked to finish.
    pub fn writer_deadline(timeout: Duration) -> Duration {
        timeout / 2
    }

    fn at(&self, sixteenths: u32) -> tokio::time::Instant {
        self.started + self.timeout * sixteenths / 16
    }

    /// When the source must have stopped.
    pub fn source_stopped(&self) -> tokio::time::Instant {
        self.at(2)
    }

    /// When the journal must be closed and the last points handed over.
    pub fn handed_over(&self) -> tokio::time::Instant {
        self.at(6)
    }

    /// When the daemon stops waiting for its writers.
    pub fn writers_finished(&self) -> tokio::time::Instant {
        self.at(15)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_phase_of_a_shutdown_ends_within_its_timeout() {
        let timeout = Duration::from_secs(8);
        let signal = tokio::time::Instant::now();
        let budget = ShutdownBudget::new(signal, timeout);
        assert_eq!(budget.source_stopped() - signal, Duration::from_secs(1));
        assert_eq!(budget.handed_over() - signal, Duration::from_secs(3));
        // A writer asked to finish at the latest hand-over time gives up before the daemon stops waiting.
        let writer_gives_up = budget.handed_over() + ShutdownBudget::writer_deadline(timeout);
        assert_eq!(writer_gives_up - signal, Duration::from_secs(7));
        assert!(writer_gives_up < budget.writers_finished());
        assert_eq!(budget.writers_finished() - signal, Duration::from_millis(7_500));
    }
}
