//! What a listener lets in before a peer has authenticated (see `docs/protocol.md`, "Peers that
//! have not authenticated"): at most [`MAX_UNAUTHENTICATED`] connections per listener are in
//! their handshake at once, a connection beyond that is closed at once, and the warnings about
//! refused and dropped connections are rate-limited by a [`RefusalLog`] so that a flood of them
//! cannot flood the log.

use std::time::{Duration, Instant};

/// The most connections one listener (admin or data) holds in their handshake at once. A
/// connection accepted while this many are still in TLS or the handshake is closed at once,
/// before anything is read from it; authenticated connections do not count.
pub const MAX_UNAUTHENTICATED: usize = 64;

/// How many refusal warnings may be written in a burst before the rate limit applies.
pub const REFUSAL_BURST: u32 = 10;
/// After a burst, one refusal warning per this period; the others are counted and the count is
/// given on the next warning written.
pub const REFUSAL_PERIOD: Duration = Duration::from_secs(1);

/// Whether to write one refusal warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Write it, saying that `suppressed` earlier ones were not written.
    Log { suppressed: u64 },
    /// Count it and write nothing.
    Suppress,
}

/// A token bucket over refusal warnings: [`REFUSAL_BURST`] tokens, one more each
/// [`REFUSAL_PERIOD`]. Pure: the caller passes the time.
#[derive(Debug)]
pub struct RefusalLog {
    tokens: u32,
    refilled_at: Instant,
    suppressed: u64,
}

impl RefusalLog {
    pub fn new(now: Instant) -> Self {
        RefusalLog { tokens: REFUSAL_BURST, refilled_at: now, suppressed: 0 }
    }

    /// Decides about one refusal at `now`.
    pub fn admit(&mut self, now: Instant) -> Verdict {
        let periods = now.saturating_duration_since(self.refilled_at).as_nanos() / REFUSAL_PERIOD.as_nanos();
        if periods > 0 {
            let periods = u32::try_from(periods).unwrap_or(u32::MAX);
            self.tokens = self.tokens.saturating_add(periods).min(REFUSAL_BURST);
            self.refilled_at =
                if self.tokens == REFUSAL_BURST { now } else { self.refilled_at + REFUSAL_PERIOD * periods };
        }
        if self.tokens == 0 {
            self.suppressed += 1;
            return Verdict::Suppress;
        }
        self.tokens -= 1;
        Verdict::Log { suppressed: std::mem::take(&mut self.suppressed) }
    }
}

/// The tail a refusal warning gets when earlier ones were not written.
pub fn suppressed_note(suppressed: u64) -> String {
    if suppressed == 0 { String::new() } else { format!(" ({suppressed} similar warnings suppressed before this one)") }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Replays refusals at the given offsets (ms) and returns what each got.
    fn replay(offsets_ms: &[u64]) -> Vec<Verdict> {
        let start = Instant::now();
        let mut log = RefusalLog::new(start);
        offsets_ms.iter().map(|&ms| log.admit(start + Duration::from_millis(ms))).collect()
    }

    #[test]
    fn a_burst_is_written_then_one_a_second_with_the_count_of_the_rest() {
        use Verdict::*;
        let at_once = vec![0; REFUSAL_BURST as usize + 5];
        let mut want = vec![Log { suppressed: 0 }; REFUSAL_BURST as usize];
        want.extend([Suppress; 5]);
        assert_eq!(replay(&at_once), want);

        // After the burst: one per second, each saying how many were dropped before it.
        let mut offsets = vec![0; REFUSAL_BURST as usize];
        offsets.extend([100, 200, 999, 1000, 1001, 1500, 2000, 2000]);
        let verdicts = replay(&offsets);
        assert_eq!(
            verdicts[REFUSAL_BURST as usize..],
            [Suppress, Suppress, Suppress, Log { suppressed: 3 }, Suppress, Suppress, Log { suppressed: 2 }, Suppress]
        );
    }

    #[test]
    fn a_quiet_spell_refills_the_burst_but_no_more() {
        let mut offsets = vec![0; REFUSAL_BURST as usize];
        offsets.extend(vec![60_000; REFUSAL_BURST as usize + 1]);
        let verdicts = replay(&offsets);
        let logged = verdicts.iter().filter(|v| matches!(v, Verdict::Log { .. })).count();
        assert_eq!(logged, 2 * REFUSAL_BURST as usize, "{verdicts:?}");
        assert_eq!(verdicts.last(), Some(&Verdict::Suppress));
    }

    /// 1,000 refusals within a second write at most the burst and one more.
    #[test]
    fn a_flood_writes_a_bounded_number_of_lines() {
        let offsets: Vec<u64> = (0..1000).collect();
        let logged = replay(&offsets).iter().filter(|v| matches!(v, Verdict::Log { .. })).count();
        assert!(logged <= REFUSAL_BURST as usize + 1, "{logged} lines");
    }

    #[test]
    fn the_note_names_the_count() {
        assert_eq!(suppressed_note(0), "");
        assert_eq!(suppressed_note(7), " (7 similar warnings suppressed before this one)");
    }
}
