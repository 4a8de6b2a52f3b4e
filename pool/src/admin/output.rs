//! Where a command's output goes: the [`Output`] every command writes to (a connection's
//! stream, or a buffer in tests and for rebalance's own lines).
//!
//! Commands are async and write with `out.write(..).await`: on a connection the write waits
//! until the client has taken what came before (so `rep ls` over a million replicas streams in
//! bounded memory), and fails with [`Gone`] once the client went away, so the command stops
//! early. A walk that must run on a blocking thread (the replica listing) writes to a
//! [`SyncOutput`] that [`Output::from_blocking`] forwards here, with the same back-pressure.

use tokio::sync::mpsc;

/// The largest piece of command output sent in one frame.
pub const OUTPUT_CHUNK: usize = 64 * 1024;

/// Where a command's output goes.
pub struct Output {
    sink: Sink,
}

enum Sink {
    /// Kept in memory (tests; rebalance running a line on its own pool).
    Buffer(String),
    /// Streamed to a connection; the receiver is dropped when the client is gone.
    Channel(mpsc::Sender<String>),
}

/// The reader of the output went away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gone;

impl Output {
    /// Output kept in memory; [`Output::into_text`] returns it.
    pub fn buffer() -> Output {
        Output { sink: Sink::Buffer(String::new()) }
    }

    /// Output streamed through `tx` in pieces of at most [`OUTPUT_CHUNK`] bytes.
    pub fn channel(tx: mpsc::Sender<String>) -> Output {
        Output { sink: Sink::Channel(tx) }
    }

    /// Appends text; waits while the reader has not taken what came before; `Err` when the
    /// reader is gone and the command should stop.
    pub async fn write(&mut self, text: &str) -> Result<(), Gone> {
        match &mut self.sink {
            Sink::Buffer(b) => {
                b.push_str(text);
                Ok(())
            }
            Sink::Channel(tx) => {
                for piece in pieces(text) {
                    tx.send(piece.to_string()).await.map_err(|_| Gone)?;
                }
                Ok(())
            }
        }
    }

    /// What a buffer holds (empty for a stream).
    pub fn into_text(self) -> String {
        match self.sink {
            Sink::Buffer(b) => b,
            Sink::Channel(_) => String::new(),
        }
    }

    /// Runs `walk` on a blocking thread (it reads the whole repository, for example) and
    /// forwards what it writes to this output as it comes, with the same back-pressure: the
    /// walk waits while the reader has not taken its last pieces. When the reader is gone the
    /// walk's next write fails and it stops; this returns [`Gone`] once it has.
    pub async fn from_blocking<T: Send + 'static>(
        &mut self,
        walk: impl FnOnce(&mut dyn SyncOutput) -> T + Send + 'static,
    ) -> Result<T, Gone> {
        let (tx, mut rx) = mpsc::channel::<String>(4);
        let span = tracing::Span::current();
        let task = tokio::task::spawn_blocking(move || span.in_scope(|| walk(&mut BlockingSender(tx))));
        let mut gone = false;
        while let Some(text) = rx.recv().await {
            if self.write(&text).await.is_err() {
                gone = true;
                break;
            }
        }
        // The walk sees a closed channel at its next write.
        drop(rx);
        let result = match task.await {
            Ok(result) => result,
            Err(e) => match e.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                // Cancelled (the runtime is shutting down): nobody is left to read the rest.
                Err(_) => return Err(Gone),
            },
        };
        if gone { Err(Gone) } else { Ok(result) }
    }
}

/// Splits `text` into pieces of at most [`OUTPUT_CHUNK`] bytes, each whole characters.
fn pieces(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut cut = rest.len().min(OUTPUT_CHUNK);
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        let (piece, tail) = rest.split_at(cut);
        rest = tail;
        Some(piece)
    })
}

/// The output of a walk on a blocking thread (see [`Output::from_blocking`]).
pub trait SyncOutput {
    /// Appends text, waiting while the reader is behind; `Err` when the reader is gone.
    fn write(&mut self, text: &str) -> Result<(), Gone>;
}

impl SyncOutput for String {
    fn write(&mut self, text: &str) -> Result<(), Gone> {
        self.push_str(text);
        Ok(())
    }
}

/// The blocking end of [`Output::from_blocking`].
struct BlockingSender(mpsc::Sender<String>);

impl SyncOutput for BlockingSender {
    fn write(&mut self, text: &str) -> Result<(), Gone> {
        for piece in pieces(text) {
            self.0.blocking_send(piece.to_string()).map_err(|_| Gone)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_are_whole_characters_within_a_chunk() {
        let text = format!("{}é{}", "a".repeat(OUTPUT_CHUNK - 1), "b".repeat(OUTPUT_CHUNK));
        let parts: Vec<&str> = pieces(&text).collect();
        assert!(
            parts.iter().all(|p| p.len() <= OUTPUT_CHUNK),
            "{:?}",
            parts.iter().map(|p| p.len()).collect::<Vec<_>>()
        );
        assert_eq!(parts.concat(), text);
        assert_eq!(pieces("").count(), 0);
    }

    /// A walk on a blocking thread streams through a small channel; when the reader goes, the
    /// walk stops at its next write rather than running to the end.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_blocking_walk_stops_when_the_reader_is_gone() {
        let (tx, mut rx) = mpsc::channel(1);
        let mut out = Output::channel(tx);
        let reader = tokio::spawn(async move {
            let first = rx.recv().await;
            drop(rx);
            first
        });
        let walked = out
            .from_blocking(|w| {
                let mut lines = 0u64;
                while lines < 1_000_000 && w.write("line\n").is_ok() {
                    lines += 1;
                }
                lines
            })
            .await;
        assert_eq!(walked, Err(Gone));
        assert_eq!(reader.await.unwrap().as_deref(), Some("line\n"));

        let mut buffered = Output::buffer();
        let n = buffered.from_blocking(|w| (0..3).filter(|_| w.write("x").is_ok()).count()).await;
        assert_eq!((n, buffered.into_text()), (Ok(3), "xxx".to_string()));
    }
}
