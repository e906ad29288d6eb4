//! The bounded queue between fan-out and one session.
//!
//! Every held session has one, so its idle cost counts: one allocation of about a
//! hundred bytes (a lock, an empty ring and the session task's waker). tokio's `mpsc`
//! channel costs ~0.8 KiB per idle queue (cache-padded counters and a first block of
//! slots allocated up front) and the cancellation token that signalled an overflow
//! another ~0.1 KiB; both were measured with heaptrack on 2000 idle sessions.
//!
//! Many producers (fan-out on any thread) push without waiting; one consumer (the
//! session task) waits for frames. A push onto a full queue marks the queue
//! overflowed instead: the session closes and the client resumes with `sync`.

use crate::sessions::Outbound;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

/// Ring capacity kept when the queue runs empty; a larger one (left by a burst) is
/// freed, so that a session that was busy once does not keep its burst's memory.
const KEEP_CAPACITY: usize = 32;

/// Creates a queue holding at most `capacity` frames.
pub fn queue(capacity: usize) -> (QueueSender, QueueReceiver) {
    let shared = Arc::new(Shared {
        capacity: capacity.max(1),
        state: Mutex::new(State::default()),
    });
    (QueueSender(shared.clone()), QueueReceiver(shared))
}

struct Shared {
    capacity: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    items: VecDeque<Outbound>,
    /// The session task, when it waits.
    waker: Option<Waker>,
    overflowed: bool,
    /// The receiver is gone: pushes are refused.
    closed: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What [`QueueSender::push`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Push {
    /// The frame is queued.
    Queued,
    /// The queue was full: it is now marked overflowed (reported once per queue).
    Overflowed,
    /// Dropped: the queue overflowed before, or its session has ended.
    Dropped,
}

/// The producers' end; cheap to clone.
#[derive(Clone)]
pub struct QueueSender(Arc<Shared>);

impl QueueSender {
    /// Queues `out` without waiting.
    pub fn push(&self, out: Outbound) -> Push {
        let mut state = self.0.lock();
        if state.closed || state.overflowed {
            return Push::Dropped;
        }
        let result = if state.items.len() >= self.0.capacity {
            state.overflowed = true;
            Push::Overflowed
        } else {
            state.items.push_back(out);
            Push::Queued
        };
        let waker = state.waker.take();
        drop(state);
        if let Some(w) = waker {
            w.wake();
        }
        result
    }
}

/// The session's end.
pub struct QueueReceiver(Arc<Shared>);

impl QueueReceiver {
    /// Waits for the next frame.
    pub async fn recv(&self) -> Outbound {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// The next frame, if one is queued.
    pub fn try_recv(&self) -> Option<Outbound> {
        Self::pop(&mut self.0.lock())
    }

    /// Waits until a push finds the queue full.
    pub async fn overflowed(&self) {
        poll_fn(|cx| {
            let mut state = self.0.lock();
            if state.overflowed {
                Poll::Ready(())
            } else {
                register(&mut state, cx);
                Poll::Pending
            }
        })
        .await
    }

    fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Outbound> {
        let mut state = self.0.lock();
        match Self::pop(&mut state) {
            Some(out) => Poll::Ready(out),
            None => {
                register(&mut state, cx);
                Poll::Pending
            }
        }
    }

    fn pop(state: &mut State) -> Option<Outbound> {
        let out = state.items.pop_front();
        if state.items.is_empty() && state.items.capacity() > KEEP_CAPACITY {
            state.items = VecDeque::new();
        }
        out
    }
}

/// One task waits on a queue, through `recv` or `overflowed`: one waker slot.
fn register(state: &mut State, cx: &Context<'_>) {
    match &mut state.waker {
        Some(w) if w.will_wake(cx.waker()) => {}
        slot => *slot = Some(cx.waker().clone()),
    }
}

impl Drop for QueueReceiver {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.closed = true;
        state.items = VecDeque::new();
        state.waker = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sessions::Out;
    use axum::extract::ws::Utf8Bytes;
    use std::time::Duration;

    fn frame(text: &'static str) -> Outbound {
        Outbound::frame(Utf8Bytes::from_static(text))
    }

    fn text(out: &Outbound) -> &str {
        match out.get() {
            Out::Frame(t) => t.as_str(),
            other => panic!("not a frame: {other:?}"),
        }
    }

    #[test]
    fn keeps_order_and_refuses_past_capacity_once() {
        let (tx, rx) = queue(2);
        assert_eq!(tx.push(frame("a")), Push::Queued);
        assert_eq!(tx.push(frame("b")), Push::Queued);
        assert_eq!(tx.push(frame("c")), Push::Overflowed);
        assert_eq!(tx.push(frame("d")), Push::Dropped);
        assert_eq!(text(&rx.try_recv().unwrap()), "a");
        assert_eq!(text(&rx.try_recv().unwrap()), "b");
        assert!(rx.try_recv().is_none());
        // Overflowed for good: the session closes and its client resumes.
        assert_eq!(tx.push(frame("e")), Push::Dropped);
    }

    #[test]
    fn pushes_after_the_session_ended_are_dropped() {
        let (tx, rx) = queue(4);
        assert_eq!(tx.push(frame("a")), Push::Queued);
        drop(rx);
        assert_eq!(tx.push(frame("b")), Push::Dropped);
    }

    #[test]
    fn an_emptied_queue_gives_back_a_burst_ring() {
        let (tx, rx) = queue(1024);
        for _ in 0..500 {
            tx.push(frame("x"));
        }
        assert!(tx.0.lock().items.capacity() >= 500);
        while rx.try_recv().is_some() {}
        assert!(tx.0.lock().items.capacity() <= KEEP_CAPACITY);
    }

    #[tokio::test]
    async fn a_waiting_session_wakes_on_push_from_another_task() {
        let (tx, rx) = queue(4);
        let pusher = tokio::spawn(async move {
            tokio::task::yield_now().await;
            tx.push(frame("late"));
            tx
        });
        let got = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("woken by the push");
        assert_eq!(text(&got), "late");
        pusher.await.unwrap();
    }

    #[tokio::test]
    async fn overflow_wakes_the_session() {
        let (tx, rx) = queue(1);
        let pusher = tokio::spawn(async move {
            tokio::task::yield_now().await;
            assert_eq!(tx.push(frame("a")), Push::Queued);
            assert_eq!(tx.push(frame("b")), Push::Overflowed);
        });
        tokio::time::timeout(Duration::from_secs(10), rx.overflowed())
            .await
            .expect("woken by the overflow");
        pusher.await.unwrap();
    }
}
