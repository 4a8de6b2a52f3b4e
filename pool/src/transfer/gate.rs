//! A first-come, first-served admission gate whose limit can change while it is in use: at
//! most `limit` holders at once, the rest wait in arrival order. Only the head of the queue is
//! woken when a place frees (waking every waiter cost the target most of its CPU with tens of
//! thousands of transfers queued). Used for incoming pool-to-pool
//! transfers (`pp set max active`) and for outgoing streams on a source.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;

#[derive(Debug)]
struct State {
    limit: usize,
    active: usize,
    /// Waiting tickets in arrival order, each with its own wake-up: only the head of the queue
    /// is ever woken, so a long queue costs nothing per admission.
    waiting: VecDeque<(u64, Arc<Notify>)>,
    next_ticket: u64,
}

impl State {
    /// Wakes the head of the queue if it may enter now.
    fn wake_head(&self) {
        if self.active < self.limit
            && let Some((_, notify)) = self.waiting.front()
        {
            notify.notify_one();
        }
    }
}

#[derive(Debug)]
pub struct Gate {
    state: Mutex<State>,
}

/// Held while admitted; leaving frees the place.
#[derive(Debug)]
pub struct Pass<'a> {
    gate: &'a Gate,
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        let mut s = self.gate.state.lock();
        s.active -= 1;
        s.wake_head();
    }
}

/// A place in the queue; leaves it if dropped before admission (so `enter` is cancel-safe).
struct Ticket<'a> {
    gate: &'a Gate,
    number: u64,
    admitted: bool,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if !self.admitted {
            let mut s = self.gate.state.lock();
            s.waiting.retain(|(t, _)| *t != self.number);
            // If it was at the head, the next one may now be able to enter.
            s.wake_head();
        }
    }
}

impl Gate {
    pub fn new(limit: usize) -> Gate {
        Gate { state: Mutex::new(State { limit, active: 0, waiting: VecDeque::new(), next_ticket: 0 }) }
    }

    /// Waits for a place. Cancel-safe: dropping the future gives up the place in the queue.
    pub async fn enter(&self) -> Pass<'_> {
        let notify = Arc::new(Notify::new());
        let mut ticket = {
            let mut s = self.state.lock();
            let number = s.next_ticket;
            s.next_ticket += 1;
            s.waiting.push_back((number, notify.clone()));
            Ticket { gate: self, number, admitted: false }
        };
        loop {
            {
                let mut s = self.state.lock();
                if s.waiting.front().is_some_and(|(t, _)| *t == ticket.number) && s.active < s.limit {
                    s.waiting.pop_front();
                    s.active += 1;
                    ticket.admitted = true;
                    // The next in line may fit too.
                    s.wake_head();
                    return Pass { gate: self };
                }
            }
            // `notify_one` stores a wake-up given before this wait starts, so none is lost.
            notify.notified().await;
        }
    }

    /// Changes the limit; holders above a lowered limit keep their place until they leave.
    pub fn set_limit(&self, limit: usize) {
        let mut s = self.state.lock();
        s.limit = limit;
        s.wake_head();
    }

    /// `(active, waiting, limit)`.
    pub fn counts(&self) -> (usize, usize, usize) {
        let s = self.state.lock();
        (s.active, s.waiting.len(), s.limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn admits_up_to_the_limit_in_order_and_follows_changes() {
        let gate = Arc::new(Gate::new(1));
        let first = gate.enter().await;
        let g = gate.clone();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for n in 0..3 {
            let g = g.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let _pass = g.enter().await;
                tx.send(n).unwrap();
                std::future::pending::<()>().await;
            });
            // Let each waiter take its place in the queue before the next one.
            while gate.counts().1 < n + 1 {
                tokio::task::yield_now().await;
            }
        }
        assert_eq!(gate.counts(), (1, 3, 1));
        drop(first);
        assert_eq!(rx.recv().await, Some(0));
        gate.set_limit(3);
        assert_eq!(rx.recv().await, Some(1));
        assert_eq!(rx.recv().await, Some(2));
        assert_eq!(gate.counts(), (3, 0, 3));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_waiters_all_get_through_never_more_than_the_limit() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let gate = Arc::new(Gate::new(3));
        let inside = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..2000 {
            let (gate, inside, most) = (gate.clone(), inside.clone(), most.clone());
            tasks.push(tokio::spawn(async move {
                let _pass = gate.enter().await;
                let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                tokio::task::yield_now().await;
                inside.fetch_sub(1, Ordering::SeqCst);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(most.load(Ordering::SeqCst), 3);
        assert_eq!(gate.counts(), (0, 0, 3));
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_leaves_the_queue() {
        let gate = Gate::new(1);
        let pass = gate.enter().await;
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(10), gate.enter()).await;
        assert!(waiting.is_err());
        assert_eq!(gate.counts(), (1, 0, 1));
        drop(pass);
        let _again = gate.enter().await;
    }
}
