//! A job's byte-rate limit (`-rate`, `migration set rate`): the value an operator gives
//! ([`ByteRate`]), the pure token bucket ([`Bucket`], time passed in) and the limit the
//! source's fetch server draws from ([`RateLimit`], shared by every transfer of one job).
//!
//! The source sends; the job lives on the source and holds the lock of every file it works
//! on, so the fetch server finds the limit of a file through the module's lock table
//! (`Module::rate_limits`) and takes the bytes of each piece it sends from the bucket
//! (docs/admin-commands.md, "migration set rate").

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

/// The least limit other than unlimited: below it a batch of small files (4 MiB) would take
/// longer than a target waits for progress.
pub const MIN_RATE: u64 = 64 * 1024;

/// Bytes per second; 0 means unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ByteRate(pub u64);

impl std::str::FromStr for ByteRate {
    type Err = String;

    /// `0`, `50M`, `1Gi`, `500MiB`, optionally followed by `/s`.
    fn from_str(text: &str) -> Result<ByteRate, String> {
        let t = text.trim();
        let t = t.strip_suffix("/s").unwrap_or(t);
        let n = tidepool_p2p::units::parse_bytes(t).map_err(|_| {
            format!(
                "rate: {:?} is not a byte rate; give bytes per second with an optional unit \
                 (50M, 1Gi, 500MiB), or 0 for unlimited",
                tidepool_p2p::error::truncate_echo(text, tidepool_p2p::error::MAX_ECHO)
            )
        })?;
        if n != 0 && n < MIN_RATE {
            return Err(format!(
                "rate: {text:?} is below the least limit, {} ({MIN_RATE} bytes per second); give 0 for unlimited",
                ByteRate(MIN_RATE)
            ));
        }
        Ok(ByteRate(n))
    }
}

impl std::fmt::Display for ByteRate {
    /// `unlimited`, or the rate in the largest unit that divides it exactly (`50 MiB/s`,
    /// `50 MB/s`, `65537 B/s`), so that what the operator typed comes back as it was.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const UNITS: [(u64, &str); 6] = [
            (1 << 30, "GiB"),
            (1_000_000_000, "GB"),
            (1 << 20, "MiB"),
            (1_000_000, "MB"),
            (1 << 10, "KiB"),
            (1_000, "kB"),
        ];
        if self.0 == 0 {
            return f.write_str("unlimited");
        }
        match UNITS.iter().find(|(u, _)| self.0.is_multiple_of(*u)) {
            Some((u, name)) => write!(f, "{} {name}/s", self.0 / u),
            None => write!(f, "{} B/s", self.0),
        }
    }
}

/// The most bytes taken from a bucket at once: 20 ms worth, between 4 KiB and 1 MiB, so that
/// a low rate sends small pieces often rather than large ones seldom.
pub fn grain(rate: u64) -> u64 {
    (rate / 50).clamp(4 * 1024, 1024 * 1024)
}

/// What a bucket holds at most: 250 ms worth (and at least two grains). After a pause the
/// job may send this much at once; over 10 s that is 2.5% above the rate.
fn capacity(rate: u64) -> f64 {
    (rate / 4).max(2 * grain(rate)) as f64
}

/// A token bucket: `rate` bytes per second, holding at most [`capacity`]. Pure: the caller
/// passes the time.
#[derive(Clone, Debug)]
pub struct Bucket {
    rate: u64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// Starts with one grain, so that a new limit never begins with a burst.
    pub fn new(rate: u64, now: Instant) -> Bucket {
        Bucket { rate, tokens: grain(rate) as f64, last: now }
    }

    pub fn rate(&self) -> u64 {
        self.rate
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        if self.rate > 0 {
            self.tokens = (self.tokens + elapsed * self.rate as f64).min(capacity(self.rate));
        }
    }

    /// A new rate from `now`: what was earned at the old rate is kept up to the new capacity
    /// (a debt is kept whole, so bytes already sent still count).
    pub fn set_rate(&mut self, rate: u64, now: Instant) {
        self.refill(now);
        if self.rate == 0 {
            self.tokens = grain(rate) as f64;
        }
        self.rate = rate;
        if rate > 0 {
            self.tokens = self.tokens.min(capacity(rate));
        }
    }

    /// Takes `n` bytes if the bucket has them (or, for more than it can hold, is full: the
    /// rest becomes a debt), or says how long until it does. Unlimited: always taken.
    pub fn take(&mut self, n: u64, now: Instant) -> Result<(), Duration> {
        if self.rate == 0 {
            return Ok(());
        }
        self.refill(now);
        let need = (n as f64).min(capacity(self.rate));
        if self.tokens >= need {
            self.tokens -= n as f64;
            return Ok(());
        }
        Err(Duration::from_secs_f64((need - self.tokens) / self.rate as f64).max(Duration::from_millis(1)))
    }
}

/// One job's limit, shared by every transfer of its files. Unlimited costs one atomic load
/// per piece sent; the bucket's lock is taken only while a limit is set.
#[derive(Debug)]
pub struct RateLimit {
    rate: AtomicU64,
    bucket: Mutex<Bucket>,
    /// Wakes the transfers waiting for bytes when the rate changes.
    changed: tokio::sync::Notify,
}

impl RateLimit {
    pub fn new(rate: u64) -> RateLimit {
        RateLimit {
            rate: AtomicU64::new(rate),
            bucket: Mutex::new(Bucket::new(rate, Instant::now())),
            changed: tokio::sync::Notify::new(),
        }
    }

    /// Bytes per second; 0: unlimited.
    pub fn rate(&self) -> u64 {
        self.rate.load(Ordering::Relaxed)
    }

    pub fn is_limited(&self) -> bool {
        self.rate() > 0
    }

    /// Changes the rate; the transfers waiting for bytes look again at once.
    pub fn set(&self, rate: u64) {
        self.bucket.lock().set_rate(rate, Instant::now());
        self.rate.store(rate, Ordering::Relaxed);
        self.changed.notify_waiters();
    }

    /// The most bytes worth sending as one piece under the current rate.
    pub fn grain(&self) -> u64 {
        grain(self.rate())
    }

    /// Waits until `n` bytes may be sent. Cancel-safe: dropped, it holds nothing (the bytes
    /// it took already are spent), so a caller selects it against its own stop.
    pub async fn acquire(&self, mut n: u64) {
        while n > 0 {
            if !self.is_limited() {
                return;
            }
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let wait = {
                let mut bucket = self.bucket.lock();
                let piece = n.min(grain(bucket.rate()));
                match bucket.take(piece, Instant::now()) {
                    Ok(()) => {
                        n -= piece;
                        None
                    }
                    Err(wait) => Some(wait),
                }
            };
            if let Some(wait) = wait {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = &mut changed => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn rates_parse_and_print() {
        for (text, want, shown) in [
            ("0", 0, "unlimited"),
            ("50M", 50_000_000, "50 MB/s"),
            ("50Mi", 50 * MIB, "50 MiB/s"),
            ("50MiB/s", 50 * MIB, "50 MiB/s"),
            ("1Gi", 1 << 30, "1 GiB/s"),
            ("1.5Gi", 3 << 29, "1536 MiB/s"),
            ("65537", 65537, "65537 B/s"),
            ("64Ki", 64 * 1024, "64 KiB/s"),
            ("100k", 100_000, "100 kB/s"),
        ] {
            let r: ByteRate = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(r, ByteRate(want), "{text}");
            assert_eq!(r.to_string(), shown, "{text}");
            assert_eq!(shown.parse::<ByteRate>().ok().filter(|_| want > 0), (want > 0).then_some(r), "{shown}");
        }
        for (bad, why) in [
            ("x", "is not a byte rate"),
            ("", "is not a byte rate"),
            ("-5M", "is not a byte rate"),
            ("10X", "is not a byte rate"),
            ("1k", "below the least limit, 64 KiB/s"),
            ("65535", "below the least limit"),
        ] {
            let e = bad.parse::<ByteRate>().unwrap_err();
            assert!(e.starts_with("rate: ") && e.contains(why), "{bad}: {e}");
        }
    }

    /// Each row: a bucket of `rate`, then steps (ms since start, bytes asked) and what each
    /// gets: taken, or the wait in ms (rounded).
    #[test]
    fn bucket_table() {
        enum Want {
            Take,
            Wait(u64),
        }
        use Want::*;
        let rate = 1_000_000; // 1 MB/s: a grain of 20,000 bytes, a capacity of 250,000.
        type Row = (&'static str, u64, &'static [(u64, u64, Want)]);
        let rows: &[Row] = &[
            ("a new bucket holds one grain", rate, &[(0, 20_000, Take), (0, 1, Wait(1))]),
            ("it fills at the rate", rate, &[(0, 20_000, Take), (10, 10_000, Take), (10, 10_000, Wait(10))]),
            ("the wait is for what is missing", rate, &[(0, 20_000, Take), (0, 20_000, Wait(20))]),
            ("it holds at most 250 ms", rate, &[(10_000, 250_000, Take), (10_000, 1_000, Wait(1))]),
            (
                "more than it can hold waits for a full bucket and leaves a debt",
                rate,
                &[(10_000, 500_000, Take), (10_000, 1, Wait(250)), (10_250, 1, Wait(1)), (10_501, 1, Take)],
            ),
            ("unlimited always takes", 0, &[(0, u64::MAX, Take), (0, u64::MAX, Take)]),
            ("a clock that goes back earns nothing", rate, &[(100, 120_000, Take), (50, 1_000, Wait(1))]),
        ];
        for (name, rate, steps) in rows {
            let t0 = Instant::now();
            let mut b = Bucket::new(*rate, t0);
            for (at, n, want) in steps.iter() {
                let got = b.take(*n, t0 + Duration::from_millis(*at));
                match (want, got) {
                    (Take, Ok(())) => {}
                    (Wait(ms), Err(w)) => {
                        assert!(w.as_millis().abs_diff(*ms as u128) <= 1, "{name}: at {at} ms, {n}: waits {w:?}")
                    }
                    (Take, Err(w)) => panic!("{name}: at {at} ms, {n}: waits {w:?}, expected taken"),
                    (Wait(_), Ok(())) => panic!("{name}: at {at} ms, {n}: taken, expected a wait"),
                }
            }
        }
    }

    /// Rate changes: each row sets `to` at `at` ms on a bucket of `from` that just spent its
    /// start, then asks for bytes at once: each taken (`None`) or the wait in ms.
    #[test]
    fn rate_change_table() {
        type Row = (&'static str, u64, u64, u64, &'static [(u64, Option<u64>)]);
        let rows: &[Row] = &[
            ("faster: the new rate counts from the change", 1_000_000, 10_000_000, 0, &[(20_000, Some(2))]),
            (
                "slower: what was earned is capped at the new capacity",
                10_000_000,
                1_000_000,
                10_000,
                &[(250_000, None), (1, Some(1))],
            ),
            ("unlimited to limited starts with one grain", 0, 1_000_000, 10_000, &[(20_000, None), (1, Some(1))]),
            ("limited to unlimited takes everything", 1_000_000, 0, 0, &[(u64::MAX, None), (u64::MAX, None)]),
        ];
        for (name, from, to, at, asks) in rows {
            let t0 = Instant::now();
            let mut b = Bucket::new(*from, t0);
            let _ = b.take(grain(*from), t0);
            let at = t0 + Duration::from_millis(*at);
            b.set_rate(*to, at);
            for (n, want) in asks.iter() {
                match (b.take(*n, at), want) {
                    (Ok(()), None) => {}
                    (Err(w), Some(ms)) => assert!(w.as_millis().abs_diff(*ms as u128) <= 1, "{name}: {n}: waits {w:?}"),
                    (got, want) => panic!("{name}: {n}: got {got:?}, expected {want:?} ms"),
                }
            }
        }
    }

    /// Over a simulated 10 s, several senders taking pieces as soon as they may get the rate
    /// within 3% (the start grain and timer rounding), whatever their piece size.
    #[tokio::test(start_paused = true)]
    async fn shared_limit_holds_the_rate() {
        for rate in [MIN_RATE, MIB, 5 * MIB, 100 * MIB] {
            let limit = std::sync::Arc::new(RateLimit::new(rate));
            let sent = std::sync::Arc::new(AtomicU64::new(0));
            let start = Instant::now();
            let senders: Vec<_> = [1_000u64, 64 * 1024, MIB]
                .into_iter()
                .map(|piece| {
                    let (limit, sent) = (limit.clone(), sent.clone());
                    tokio::spawn(async move {
                        loop {
                            limit.acquire(piece).await;
                            if start.elapsed() > Duration::from_secs(10) {
                                break;
                            }
                            sent.fetch_add(piece, Ordering::Relaxed);
                        }
                    })
                })
                .collect();
            for s in senders {
                s.await.unwrap();
            }
            let got = sent.load(Ordering::Relaxed) as f64 / 10.0;
            let err = (got - rate as f64).abs() / rate as f64;
            assert!(err < 0.03, "rate {rate}: got {got:.0} B/s ({:.1}% off)", err * 100.0);
        }
    }

    /// A sender waiting at a low rate takes up the new rate as soon as it is set.
    #[tokio::test(start_paused = true)]
    async fn a_change_wakes_the_waiters() {
        let limit = std::sync::Arc::new(RateLimit::new(MIN_RATE));
        limit.acquire(grain(MIN_RATE)).await;
        let waiting = {
            let limit = limit.clone();
            tokio::spawn(async move {
                let t = Instant::now();
                limit.acquire(10 * MIB).await;
                t.elapsed()
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        limit.set(0);
        let waited = waiting.await.unwrap();
        assert!(waited < Duration::from_millis(150), "{waited:?}");
    }
}
