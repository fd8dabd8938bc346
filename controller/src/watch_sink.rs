//! The bounded buffer between a watch's producer and its HTTP body.
//!
//! A watcher that stops reading must not make the daemon hold an unbounded
//! backlog for it (300 unread watches once grew the daemon to ~790 MB): each
//! watch buffers at most [`WATCH_BUFFER_LINES`] lines, and a producer that
//! cannot hand over a line for [`WATCH_STALL`] drops the watch. The client
//! then reads what was buffered followed by an `ERROR` line telling it to list
//! again and restart the watch (what Kubernetes clients do on "410 Gone"), so
//! a slow client can resume; nothing is lost silently. When the last watch
//! ends, freed memory is handed back to the system.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use tokio::sync::mpsc;

/// Lines buffered per watch.
pub const WATCH_BUFFER_LINES: usize = 64;
/// How long a watch may be unable to hand over a line before it is dropped.
pub const WATCH_STALL: Duration = Duration::from_secs(30);

/// Watches open now (for releasing memory when the last one ends).
static OPEN: AtomicUsize = AtomicUsize::new(0);

/// The producer's end.
#[derive(Debug)]
pub struct WatchSink {
    tx: mpsc::Sender<Bytes>,
    last: Arc<Mutex<Option<Bytes>>>,
}

/// The watch is over: the client went away, or it was dropped as too slow.
#[derive(Debug, PartialEq, Eq)]
pub struct Gone;

/// A sink and the body that streams what it is given.
pub fn channel() -> (WatchSink, Body) {
    let (tx, rx) = mpsc::channel::<Bytes>(WATCH_BUFFER_LINES);
    let last: Arc<Mutex<Option<Bytes>>> = Arc::default();
    let tail = last.clone();
    OPEN.fetch_add(1, Ordering::Relaxed);
    let guard = OpenGuard;
    // Buffered lines first, then the closing line if the producer left one.
    let stream = futures::stream::unfold(
        (rx, tail, Some(guard)),
        |(mut rx, tail, guard)| async move {
            if let Some(line) = rx.recv().await {
                return Some((Ok::<_, Infallible>(line), (rx, tail, guard)));
            }
            let closing = tail.lock().unwrap_or_else(|p| p.into_inner()).take();
            closing.map(|line| (Ok(line), (rx, tail, guard)))
        },
    );
    (WatchSink { tx, last }, Body::from_stream(stream))
}

impl WatchSink {
    /// Hands a line to the client's buffer, waiting at most [`WATCH_STALL`] for
    /// room. On a stall, `on_stall` becomes the stream's last line and the
    /// watch ends.
    pub async fn send(&self, line: Bytes, on_stall: impl FnOnce() -> Bytes) -> Result<(), Gone> {
        match tokio::time::timeout(WATCH_STALL, self.tx.send(line)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Gone),
            Err(_) => {
                self.finish(on_stall());
                Err(Gone)
            }
        }
    }

    /// Ends the stream with `line` after what is buffered (even when the
    /// buffer is full).
    pub fn finish(&self, line: Bytes) {
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(line);
    }

    /// Resolves when the client has gone away.
    pub async fn closed(&self) {
        self.tx.closed().await;
    }
}

#[derive(Debug)]
struct OpenGuard;

impl Drop for OpenGuard {
    fn drop(&mut self) {
        if OPEN.fetch_sub(1, Ordering::Relaxed) == 1 {
            release_memory();
        }
    }
}

/// Returns freed heap pages to the system (glibc keeps them otherwise, so a
/// burst of watches would leave the daemon large for good).
fn release_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only releases free memory; safe at any time.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test(start_paused = true)]
    async fn a_watcher_that_stops_reading_is_dropped_with_a_resumable_error() {
        let (sink, body) = channel();
        let producer = tokio::spawn(async move {
            let mut sent = 0usize;
            for i in 0..10_000 {
                let line = Bytes::from(format!("{{\"n\":{i}}}\n"));
                let stalled = || {
                    Bytes::from_static(
                        b"{\"type\":\"ERROR\",\"object\":{\"message\":\"too slow; list again\"}}\n",
                    )
                };
                if sink.send(line, stalled).await.is_err() {
                    break;
                }
                sent += 1;
            }
            sent
        });
        // Nobody reads: the producer stops at the buffer's size, after the stall.
        let sent = producer.await.unwrap();
        assert_eq!(sent, WATCH_BUFFER_LINES);
        let text = String::from_utf8(body.collect().await.unwrap().to_bytes().to_vec()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), WATCH_BUFFER_LINES + 1);
        assert!(lines[WATCH_BUFFER_LINES].contains("ERROR"), "{text}");
    }

    #[tokio::test]
    async fn a_reading_watcher_gets_everything_and_a_gone_client_ends_the_producer() {
        let (sink, body) = channel();
        let producer = tokio::spawn(async move {
            for i in 0..500 {
                sink.send(Bytes::from(format!("{i}\n")), Bytes::new)
                    .await
                    .unwrap();
            }
            sink
        });
        let mut body = body;
        let mut got = 0;
        while got < 500 {
            let frame = body.frame().await.unwrap().unwrap();
            got += frame
                .into_data()
                .unwrap()
                .iter()
                .filter(|b| **b == b'\n')
                .count();
        }
        let sink = producer.await.unwrap();
        drop(body);
        assert_eq!(
            sink.send(Bytes::from_static(b"x\n"), Bytes::new).await,
            Err(Gone)
        );
    }
}
