//! Go-back-N reliability, as pure state: per-peer sequence numbers, cumulative
//! acknowledgements, retransmission of everything unacknowledged (after a reconnect or a
//! retransmit timer), duplicate suppression and in-order delivery. No I/O here: the TCP
//! transport and the fault-injecting simulation (tests) drive the same code.

use std::collections::VecDeque;

/// Sender side of one directed channel: assigns sequence numbers and keeps every item
/// until the receiver's cumulative acknowledgement covers it.
#[derive(Debug)]
pub(crate) struct SendWindow<T> {
    next_seq: u64,
    unacked: VecDeque<(u64, T)>,
}

impl<T> SendWindow<T> {
    pub(crate) fn new() -> Self {
        SendWindow {
            next_seq: 0,
            unacked: VecDeque::new(),
        }
    }

    /// Queues `item` for (re)transmission; returns its sequence number.
    pub(crate) fn push(&mut self, item: T) -> u64 {
        let s = self.next_seq;
        self.next_seq += 1;
        self.unacked.push_back((s, item));
        s
    }

    /// Applies a cumulative acknowledgement ("next sequence I expect"). Values beyond
    /// what was sent are clamped: they cannot acknowledge unsent data.
    pub(crate) fn ack(&mut self, next_expected: u64) {
        let upto = next_expected.min(self.next_seq);
        while self.unacked.front().is_some_and(|(s, _)| *s < upto) {
            self.unacked.pop_front();
        }
    }

    /// Everything still unacknowledged, oldest first: what a retransmission resends.
    pub(crate) fn unacked(&self) -> impl Iterator<Item = &(u64, T)> {
        self.unacked.iter()
    }

    /// True when the receiver has acknowledged everything pushed.
    pub(crate) fn all_acked(&self) -> bool {
        self.unacked.is_empty()
    }
}

/// What the receiver does with an arriving sequence number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Accept {
    /// The next one in order: deliver it.
    Deliver,
    /// Already delivered: drop it silently.
    Duplicate,
    /// Ahead of a missing one: drop it; the sender will retransmit from the gap.
    Gap,
}

/// Receiver side of one directed channel.
#[derive(Debug, Default)]
pub(crate) struct RecvWindow {
    next: u64,
}

impl RecvWindow {
    pub(crate) fn accept(&mut self, seq: u64) -> Accept {
        if seq == self.next {
            self.next += 1;
            Accept::Deliver
        } else if seq < self.next {
            Accept::Duplicate
        } else {
            Accept::Gap
        }
    }

    /// The cumulative acknowledgement to send: the next sequence number expected.
    pub(crate) fn next_expected(&self) -> u64 {
        self.next
    }
}
