//! What a listener lets in before a peer has authenticated (see `docs/protocol.md`, "Peers that
//! have not authenticated"): at most [`MAX_UNAUTHENTICATED`] connections per listener are in
//! their handshake at once, a connection beyond that is closed at once, and the warnings about
//! refused and dropped connections are rate-limited by a [`RefusalLog`] so that a flood of them
//! cannot flood the log. Refusals are also limited per peer and reason (the peer's address
//! before TLS, its identity after) by a [`PerPeerLog`]: a misconfigured or hostile client
//! writes its first refusal of a kind at once, then at most one line a minute with the count
//! held back; a new reason from the same peer is new information and is written.

use std::collections::HashMap;
use std::hash::Hash;
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

    /// Counts a refusal another limit held back (a peer's own, [`PerPeerLog`]): the next
    /// warning written gives it in its count, and no token is taken.
    pub fn held_back(&mut self) {
        self.suppressed += 1;
    }
}

/// After a peer's refusal is written, its next ones wait this long (counted meanwhile).
pub const PER_PEER_PERIOD: Duration = Duration::from_secs(60);
/// How many peers a [`PerPeerLog`] remembers; beyond, the one written longest ago is forgotten
/// (the listener's [`RefusalLog`] still bounds the total).
pub const PER_PEER_MAX: usize = 4096;

/// The refusal warnings of each peer (a key: an address or an identity): the first is written,
/// then at most one per [`PER_PEER_PERIOD`], which gives the count of those not written. Pure:
/// the caller passes the time.
#[derive(Debug)]
pub struct PerPeerLog<K> {
    peers: HashMap<K, (Instant, u64)>,
    max: usize,
}

impl<K: Hash + Eq + Clone> Default for PerPeerLog<K> {
    fn default() -> Self {
        PerPeerLog::with_capacity(PER_PEER_MAX)
    }
}

impl<K: Hash + Eq + Clone> PerPeerLog<K> {
    /// Remembers at most `max` peers.
    pub fn with_capacity(max: usize) -> Self {
        PerPeerLog { peers: HashMap::new(), max: max.max(1) }
    }

    /// Decides about one refusal of `peer` at `now`.
    pub fn admit(&mut self, peer: &K, now: Instant) -> Verdict {
        if let Some((written, suppressed)) = self.peers.get_mut(peer) {
            if now.saturating_duration_since(*written) < PER_PEER_PERIOD {
                *suppressed += 1;
                return Verdict::Suppress;
            }
            *written = now;
            return Verdict::Log { suppressed: std::mem::take(suppressed) };
        }
        if self.peers.len() >= self.max {
            let oldest = self.peers.iter().min_by_key(|(_, (at, _))| *at).map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.peers.remove(&k);
            }
        }
        self.peers.insert(peer.clone(), (now, 0));
        Verdict::Log { suppressed: 0 }
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

    /// Each row: a peer and the offset (s) of its refusal, and the verdict it gets.
    #[test]
    fn each_peer_writes_its_first_refusal_then_one_a_minute_with_the_count() {
        use Verdict::*;
        let rows: &[(&str, u64, Verdict)] = &[
            ("client:bob", 0, Log { suppressed: 0 }),
            ("client:bob", 1, Suppress),
            ("client:bob", 30, Suppress),
            // Another peer is not held back by bob.
            ("10.0.0.9", 30, Log { suppressed: 0 }),
            ("client:bob", 59, Suppress),
            ("client:bob", 60, Log { suppressed: 3 }),
            ("client:bob", 61, Suppress),
            ("10.0.0.9", 89, Suppress),
            ("10.0.0.9", 90, Log { suppressed: 1 }),
            // A quiet peer starts again with nothing to report.
            ("client:bob", 600, Log { suppressed: 1 }),
            ("client:bob", 700, Log { suppressed: 0 }),
        ];
        let start = Instant::now();
        let mut log = PerPeerLog::default();
        for (i, (peer, at, want)) in rows.iter().enumerate() {
            let got = log.admit(&peer.to_string(), start + Duration::from_secs(*at));
            assert_eq!(got, *want, "row {i}: {peer} at {at} s");
        }
    }

    /// A flood of refusals from one peer writes one line a minute; many peers at once do not
    /// grow the table past its bound.
    #[test]
    fn a_flood_from_one_peer_is_one_line_a_minute_and_the_table_is_bounded() {
        let start = Instant::now();
        let mut log = PerPeerLog::default();
        let logged = (0..120_000u64)
            .filter(|&ms| matches!(log.admit(&"eve", start + Duration::from_millis(ms)), Verdict::Log { .. }))
            .count();
        assert_eq!(logged, 2, "at 0 s and at 60 s");

        let mut small = PerPeerLog::with_capacity(3);
        for (i, peer) in ["a", "b", "c", "d"].iter().enumerate() {
            small.admit(peer, start + Duration::from_secs(i as u64));
        }
        assert_eq!(small.peers.len(), 3);
        // "a", written longest ago, was forgotten: its next refusal is written at once.
        assert_eq!(small.admit(&"a", start + Duration::from_secs(5)), Verdict::Log { suppressed: 0 });
        assert_eq!(small.admit(&"d", start + Duration::from_secs(5)), Verdict::Suppress);
    }

    #[test]
    fn refusals_held_back_elsewhere_are_counted_in_the_next_warning() {
        let start = Instant::now();
        let mut log = RefusalLog::new(start);
        log.held_back();
        log.held_back();
        assert_eq!(log.admit(start), Verdict::Log { suppressed: 2 });
        assert_eq!(log.admit(start), Verdict::Log { suppressed: 0 });
    }

    #[test]
    fn the_note_names_the_count() {
        assert_eq!(suppressed_note(0), "");
        assert_eq!(suppressed_note(7), " (7 similar warnings suppressed before this one)");
    }
}
