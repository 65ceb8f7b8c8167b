//! Barrier alignment at a task with several inputs.
//!
//! Owns: [`InputGate`], which merges the queues of every upstream subtask and
//! aligns checkpoint barriers as Flink does: once an input has delivered
//! barrier *n*, the gate stops reading it until every other live input has
//! delivered *n* too, then emits the barrier once. Records after a barrier on
//! one input therefore never overtake records before it on another, which is
//! what makes the snapshot a consistent cut. Holding an input back leaves its
//! bounded queue to fill, so the upstream task is backpressured rather than
//! buffered without bound.
//!
//! Does not own what happens at the barrier (snapshots): that is
//! [`super::task`].

use std::future::poll_fn;
use std::task::Poll;

use tokio::sync::mpsc::Receiver;

use super::message::{Barrier, Message};

/// What the gate hands to its task.
#[derive(Debug)]
pub(crate) enum GateEvent<T> {
    /// A batch from input `input`.
    Batch { input: usize, records: Vec<T> },
    /// Every live input has delivered this barrier.
    Barrier(Barrier),
    /// Every input has ended.
    End,
}

/// An input broke the protocol.
#[derive(Debug, thiserror::Error)]
pub(crate) enum GateError {
    /// An upstream task went away without sending its end marker: it failed.
    #[error("input {0} closed without an end-of-stream marker (its upstream task failed)")]
    Disconnected(usize),
    /// Barriers arrived out of order.
    #[error("input {input} delivered barrier {got} while barrier {aligning} was being aligned")]
    BarrierOrder {
        /// The input.
        input: usize,
        /// The barrier it delivered.
        got: u64,
        /// The barrier being aligned.
        aligning: u64,
    },
}

/// Merges several input queues and aligns barriers across them.
pub(crate) struct InputGate<T> {
    inputs: Vec<Receiver<Message<T>>>,
    blocked: Vec<bool>,
    ended: Vec<bool>,
    aligning: Option<Barrier>,
    next: usize,
}

impl<T> InputGate<T> {
    pub(crate) fn new(inputs: Vec<Receiver<Message<T>>>) -> Self {
        let n = inputs.len();
        InputGate {
            inputs,
            blocked: vec![false; n],
            ended: vec![false; n],
            aligning: None,
            next: 0,
        }
    }

    /// The checkpoint whose barrier is being aligned, while some inputs are
    /// held back.
    pub(crate) fn aligning(&self) -> Option<u64> {
        self.aligning.map(|b| b.checkpoint_id)
    }

    /// The next event. Cancel-safe: a cancelled call loses no message.
    pub(crate) async fn next(&mut self) -> Result<GateEvent<T>, GateError> {
        loop {
            if self.ended.iter().all(|&e| e) {
                return Ok(GateEvent::End);
            }
            let (input, message) = self.recv_any().await;
            match message {
                Some(Message::Batch(records)) => return Ok(GateEvent::Batch { input, records }),
                Some(Message::Barrier(barrier)) => {
                    match self.aligning {
                        None => self.aligning = Some(barrier),
                        Some(current) if current.checkpoint_id != barrier.checkpoint_id => {
                            return Err(GateError::BarrierOrder {
                                input,
                                got: barrier.checkpoint_id,
                                aligning: current.checkpoint_id,
                            });
                        }
                        Some(_) => {}
                    }
                    self.blocked[input] = true;
                    if let Some(done) = self.finish_alignment() {
                        return Ok(GateEvent::Barrier(done));
                    }
                }
                Some(Message::End) => {
                    self.ended[input] = true;
                    if let Some(done) = self.finish_alignment() {
                        return Ok(GateEvent::Barrier(done));
                    }
                }
                None => return Err(GateError::Disconnected(input)),
            }
        }
    }

    /// Completes the alignment if every live input has delivered the barrier.
    fn finish_alignment(&mut self) -> Option<Barrier> {
        let barrier = self.aligning?;
        let aligned = self.blocked.iter().zip(&self.ended).all(|(&b, &e)| b || e);
        if !aligned {
            return None;
        }
        self.blocked.iter_mut().for_each(|b| *b = false);
        self.aligning = None;
        Some(barrier)
    }

    /// Receives from the next readable input, round robin for fairness.
    async fn recv_any(&mut self) -> (usize, Option<Message<T>>) {
        poll_fn(|cx| {
            let n = self.inputs.len();
            for k in 0..n {
                let i = (self.next + k) % n;
                if self.blocked[i] || self.ended[i] {
                    continue;
                }
                if let Poll::Ready(message) = self.inputs[i].poll_recv(cx) {
                    self.next = (i + 1) % n;
                    return Poll::Ready((i, message));
                }
            }
            Poll::Pending
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc::{Sender, channel};

    fn new_gate(n: usize) -> (Vec<Sender<Message<u32>>>, InputGate<u32>) {
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..n).map(|_| channel(16)).unzip();
        (senders, InputGate::new(receivers))
    }

    fn barrier(id: u64) -> Message<u32> {
        Message::Barrier(Barrier::new(id))
    }

    async fn events(gate: &mut InputGate<u32>, count: usize) -> Vec<String> {
        let mut out = Vec::new();
        for _ in 0..count {
            out.push(match gate.next().await.unwrap() {
                GateEvent::Batch { records, .. } => format!("{records:?}"),
                GateEvent::Barrier(b) => format!("B{}", b.checkpoint_id),
                GateEvent::End => "End".into(),
            });
        }
        out
    }

    #[tokio::test]
    async fn records_after_a_barrier_wait_for_the_other_inputs() {
        let (tx, mut gate) = new_gate(2);
        tx[0].send(barrier(1)).await.unwrap();
        tx[0].send(Message::Batch(vec![10])).await.unwrap();
        tx[1].send(Message::Batch(vec![1])).await.unwrap();
        tx[1].send(Message::Batch(vec![2])).await.unwrap();
        tx[1].send(barrier(1)).await.unwrap();
        tx[1].send(Message::Batch(vec![3])).await.unwrap();
        let seen = events(&mut gate, 5).await;
        assert_eq!(seen[..3], ["[1]", "[2]", "B1"]);
        let mut after = seen[3..].to_vec();
        after.sort();
        assert_eq!(after, ["[10]", "[3]"]);
    }

    #[tokio::test]
    async fn a_held_input_is_not_read_while_aligning() {
        let (tx, mut gate) = new_gate(2);
        tx[0].send(barrier(4)).await.unwrap();
        tx[0].send(Message::Batch(vec![7])).await.unwrap();
        let waited = tokio::time::timeout(std::time::Duration::from_millis(50), gate.next()).await;
        assert!(
            waited.is_err(),
            "the gate read past a barrier before alignment"
        );
        assert_eq!(gate.aligning(), Some(4));
        tx[1].send(barrier(4)).await.unwrap();
        assert_eq!(events(&mut gate, 2).await, ["B4", "[7]"]);
    }

    #[tokio::test]
    async fn an_ended_input_does_not_block_alignment() {
        let (tx, mut gate) = new_gate(3);
        tx[2].send(Message::End).await.unwrap();
        tx[0].send(barrier(2)).await.unwrap();
        tx[1].send(barrier(2)).await.unwrap();
        tx[0].send(Message::End).await.unwrap();
        tx[1].send(Message::End).await.unwrap();
        assert_eq!(events(&mut gate, 2).await, ["B2", "End"]);
    }

    #[tokio::test]
    async fn end_of_the_last_unaligned_input_completes_alignment() {
        let (tx, mut gate) = new_gate(2);
        tx[0].send(barrier(3)).await.unwrap();
        tx[1].send(Message::Batch(vec![5])).await.unwrap();
        tx[1].send(Message::End).await.unwrap();
        tx[0].send(Message::End).await.unwrap();
        assert_eq!(events(&mut gate, 3).await, ["[5]", "B3", "End"]);
    }

    #[tokio::test]
    async fn a_vanished_upstream_and_a_skipped_barrier_are_errors() {
        let (tx, mut gate) = new_gate(2);
        drop(tx);
        assert!(matches!(gate.next().await, Err(GateError::Disconnected(_))));

        let (tx, mut gate) = new_gate(2);
        tx[0].send(barrier(1)).await.unwrap();
        tx[1].send(barrier(2)).await.unwrap();
        let err = gate.next().await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "input 1 delivered barrier 2 while barrier 1 was being aligned"
        );
    }
}
