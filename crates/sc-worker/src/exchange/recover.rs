//! A socket's subscription to a channel with a history: while the socket catches up (the
//! history it missed is read and sent), what arrives live is held; then only what comes after
//! the position it reached goes on, so the seam between history and live messages has no
//! duplicate and no reordering.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
use sc_store::Position;

use crate::published::Published;
use crate::socket::{Out, SLOW_CONSUMER, ScSocket};

/// A socket subscribed to a channel with a history.
pub(crate) struct Recovery {
    socket: ScSocket,
    /// Live messages held while catching up before the socket counts as a slow consumer.
    cap: usize,
    /// Whether messages the socket already has may still arrive once it caught up: through a
    /// store, ones that were in flight when the history was read (the channel's task delivers
    /// in the store's order, so once one newer than the socket's position came, everything
    /// after it is news too). The in-process broker records and delivers under one lock, so
    /// after the catch-up everything is news at once. From then on a delivery skips the
    /// state's lock.
    filter: bool,
    /// Caught up, and `filter` is off: deliver straight away.
    direct: AtomicBool,
    state: Mutex<State>,
}

enum State {
    /// Catching up: what arrived live meanwhile, in order.
    Holding(Vec<Arc<Published>>),
    /// The last position the socket was sent: a message at or before it is one it has.
    Live(Position),
}

impl Recovery {
    pub(crate) fn new(socket: ScSocket, cap: usize, filter: bool) -> Arc<Self> {
        Arc::new(Recovery {
            socket,
            cap: cap.max(1),
            filter,
            direct: AtomicBool::new(false),
            state: Mutex::new(State::Holding(Vec::new())),
        })
    }

    pub(crate) fn key(&self) -> u64 {
        self.socket.key()
    }

    /// Queues `msg` for the socket unless it already has it; holds it while catching up. A
    /// catch-up that falls more than `cap` messages behind closes the socket as a slow consumer
    /// (it resumes from its position when it reconnects).
    pub(crate) fn deliver(&self, msg: &Arc<Published>) -> bool {
        if self.direct.load(Ordering::Acquire) {
            return self.socket.deliver(Out::Publish(msg.clone()));
        }
        let mut state = self.state.lock();
        match &mut *state {
            State::Holding(held) => {
                if held.len() >= self.cap {
                    drop(state);
                    tracing::debug!(sid = %self.socket.id(), channel = %msg.channel, "too many live messages while catching up: closing slow consumer");
                    self.socket
                        .close_with(SLOW_CONSUMER, "Slow consumer", false);
                    return false;
                }
                held.push(msg.clone());
                true
            }
            State::Live(at) => {
                if !follows(at, msg) {
                    return true;
                }
                if !msg.gap {
                    // A live message past the position: nothing older can come after it.
                    self.direct.store(true, Ordering::Release);
                }
                self.socket.deliver(Out::Publish(msg.clone()))
            }
        }
    }

    /// The socket continues from `position`: `first` (what it missed, read from the history),
    /// then what was held, are queued in order but for what it already has, and so is what
    /// arrives from now on.
    pub(crate) fn release(&self, mut position: Position, first: Vec<Arc<Published>>) {
        let mut state = self.state.lock();
        let held = match &mut *state {
            State::Holding(held) => std::mem::take(held),
            State::Live(_) => Vec::new(),
        };
        let mut live_news = false;
        let first = first.into_iter().map(|m| (m, false));
        for (msg, live) in first.chain(held.into_iter().map(|m| (m, true))) {
            if !follows(&mut position, &msg) {
                continue;
            }
            live_news |= live && !msg.gap;
            if !self.socket.deliver(Out::Publish(msg)) {
                break;
            }
        }
        *state = State::Live(position);
        if !self.filter || live_news {
            self.direct.store(true, Ordering::Release);
        }
    }
}

/// Whether `msg` is news to a socket that was sent everything up to `at`; if so `at` moves to
/// it. A `#gap` notice at or before `at` is not (the socket has what it says may be lost).
fn follows(at: &mut Position, msg: &Published) -> bool {
    let Some(p) = &msg.position else {
        return true;
    };
    if p.epoch == at.epoch && p.offset <= at.offset {
        return false;
    }
    at.clone_from(p);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(offset: u64, epoch: &str) -> Position {
        Position {
            offset,
            epoch: epoch.into(),
        }
    }

    #[test]
    fn what_the_socket_has_is_skipped_and_the_position_moves_on() {
        let ch: Arc<str> = Arc::from("c");
        let mut p = at(5, "e");
        assert!(!follows(
            &mut p,
            &Published::recorded(&ch, None, at(5, "e"))
        ));
        assert!(!follows(
            &mut p,
            &Published::gap_notice(&ch, Some(at(3, "e")))
        ));
        assert!(follows(&mut p, &Published::recorded(&ch, None, at(6, "e"))));
        assert_eq!(p, at(6, "e"));
        assert!(!follows(
            &mut p,
            &Published::recorded(&ch, None, at(6, "e"))
        ));
        // Another epoch is news (after its gap notice).
        assert!(follows(
            &mut p,
            &Published::gap_notice(&ch, Some(at(0, "f")))
        ));
        assert!(follows(&mut p, &Published::recorded(&ch, None, at(1, "f"))));
        assert_eq!(p, at(1, "f"));
        // Without a position (no history where it was published): always news.
        assert!(follows(&mut p, &Published::new("c", None)));
    }
}
