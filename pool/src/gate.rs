//! A first-come, first-served admission gate whose limit can change while it is in use: at
//! most `limit` holders at once, the rest wait in arrival order. Used for incoming pool-to-pool
//! transfers (`pp set max active`) and for outgoing streams on a source.

use std::collections::VecDeque;

use parking_lot::Mutex;
use tokio::sync::Notify;

#[derive(Debug)]
struct State {
    limit: usize,
    active: usize,
    waiting: VecDeque<u64>,
    next_ticket: u64,
}

#[derive(Debug)]
pub struct Gate {
    state: Mutex<State>,
    changed: Notify,
}

/// Held while admitted; leaving frees the place.
#[derive(Debug)]
pub struct Pass<'a> {
    gate: &'a Gate,
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        self.gate.state.lock().active -= 1;
        self.gate.changed.notify_waiters();
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
            s.waiting.retain(|t| *t != self.number);
            drop(s);
            self.gate.changed.notify_waiters();
        }
    }
}

impl Gate {
    pub fn new(limit: usize) -> Gate {
        Gate {
            state: Mutex::new(State { limit, active: 0, waiting: VecDeque::new(), next_ticket: 0 }),
            changed: Notify::new(),
        }
    }

    /// Waits for a place. Cancel-safe: dropping the future gives up the place in the queue.
    pub async fn enter(&self) -> Pass<'_> {
        let mut ticket = {
            let mut s = self.state.lock();
            let number = s.next_ticket;
            s.next_ticket += 1;
            s.waiting.push_back(number);
            Ticket { gate: self, number, admitted: false }
        };
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut s = self.state.lock();
                if s.waiting.front() == Some(&ticket.number) && s.active < s.limit {
                    s.waiting.pop_front();
                    s.active += 1;
                    ticket.admitted = true;
                    drop(s);
                    // The next in line may fit too.
                    self.changed.notify_waiters();
                    return Pass { gate: self };
                }
            }
            notified.await;
        }
    }

    /// Changes the limit; holders above a lowered limit keep their place until they leave.
    pub fn set_limit(&self, limit: usize) {
        self.state.lock().limit = limit;
        self.changed.notify_waiters();
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
