//! Admission control for the request path's stages (Postgres, the vector store).
//!
//! Each stage has a bounded number of operations in flight and a short queue. A request that
//! finds the queue full is refused at once ([`Refused::QueueFull`]) and its answer degrades to the
//! popularity list — cheap, immediate — instead of waiting behind work it cannot finish in time.
//! A request that waits in the queue past its stage deadline gives up without starting anything
//! ([`Refused::Deadline`]). Work that was admitted holds its [`Permit`] until it ends, even when the
//! request stopped waiting for it (queries and searches run detached): the limit counts the work
//! the stage really does, so a slow database cannot accumulate abandoned queries behind the
//! pool, and the queue never holds work for requests that are already gone.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use prometheus::{IntCounter, IntGauge};

use crate::metrics::Metrics;

/// The limits of one stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Operations running at once (queries, searches).
    pub max_in_flight: usize,
    /// Requests waiting for a slot; one more is refused at once.
    pub max_queued: usize,
}

/// Why a stage did not admit a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Every slot busy and the queue full: shed at once.
    #[error("overloaded: queue full")]
    QueueFull,
    /// Queued until the stage deadline passed.
    #[error("overloaded: queued past the deadline")]
    Deadline,
}

impl Refused {
    /// The `reason` label of `lazyrec_server_shed_total`.
    pub fn label(self) -> &'static str {
        match self {
            Refused::QueueFull => "queue_full",
            Refused::Deadline => "queue_deadline",
        }
    }
}

/// One stage's gate.
#[derive(Debug, Clone)]
pub struct Gate {
    limit: usize,
    slots: Arc<Semaphore>,
    queued: Arc<AtomicUsize>,
    max_queued: usize,
    // The stage's series, resolved once (not a label lookup per query).
    in_flight_gauge: IntGauge,
    queued_gauge: IntGauge,
    shed_queue_full: IntCounter,
    shed_deadline: IntCounter,
}

/// A slot of a stage, held by the work until it ends.
#[derive(Debug)]
pub struct Permit {
    _slot: OwnedSemaphorePermit,
    in_flight_gauge: IntGauge,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.in_flight_gauge.dec();
    }
}

/// Decrements the queue length however the wait ends (admitted, timed out, or the request's
/// future dropped).
struct Queued<'a>(&'a Gate);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.queued.fetch_sub(1, Ordering::Relaxed);
        self.0.queued_gauge.dec();
    }
}

impl Gate {
    /// A gate for `stage` (`postgres`, `vector_store`) with `limits` (validated: in flight ≥ 1).
    pub fn new(stage: &'static str, limits: Limits, metrics: &Metrics) -> Self {
        let limit = limits.max_in_flight.max(1);
        metrics.limit.with_label_values(&[stage]).set(limit as i64);
        Self {
            limit,
            slots: Arc::new(Semaphore::new(limit)),
            queued: Arc::new(AtomicUsize::new(0)),
            max_queued: limits.max_queued,
            in_flight_gauge: metrics.in_flight.with_label_values(&[stage]),
            queued_gauge: metrics.queued.with_label_values(&[stage]),
            shed_queue_full: metrics.shed.with_label_values(&[stage, Refused::QueueFull.label()]),
            shed_deadline: metrics.shed.with_label_values(&[stage, Refused::Deadline.label()]),
        }
    }

    /// A slot now, or after waiting in the queue at most `wait`; refused when the queue is full
    /// or the wait runs out.
    pub async fn admit(&self, wait: Duration) -> Result<Permit, Refused> {
        let slot = match self.slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                if self.queued.fetch_add(1, Ordering::Relaxed) >= self.max_queued {
                    self.queued.fetch_sub(1, Ordering::Relaxed);
                    self.shed_queue_full.inc();
                    return Err(Refused::QueueFull);
                }
                self.queued_gauge.inc();
                let _queued = Queued(self);
                match tokio::time::timeout(wait, self.slots.clone().acquire_owned()).await {
                    Ok(Ok(slot)) => slot,
                    // The semaphore is never closed; a closed one would mean "no capacity".
                    Ok(Err(_)) | Err(_) => {
                        self.shed_deadline.inc();
                        return Err(Refused::Deadline);
                    }
                }
            }
        };
        Ok(self.permit(slot))
    }

    /// A slot, however long it takes (offline work: warming, evaluation, replay — never shed;
    /// the semaphore is never closed, a closed one would refuse).
    pub async fn admit_patiently(&self) -> Result<Permit, Refused> {
        let slot = self.slots.clone().acquire_owned().await.map_err(|_| Refused::Deadline)?;
        Ok(self.permit(slot))
    }

    fn permit(&self, slot: OwnedSemaphorePermit) -> Permit {
        self.in_flight_gauge.inc();
        Permit { _slot: slot, in_flight_gauge: self.in_flight_gauge.clone() }
    }

    /// Operations running now.
    pub fn in_flight(&self) -> usize {
        self.limit - self.slots.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(in_flight: usize, queued: usize) -> Gate {
        Gate::new(
            "postgres",
            Limits { max_in_flight: in_flight, max_queued: queued },
            &Metrics::new("main").expect("metrics"),
        )
    }

    #[tokio::test]
    async fn a_full_queue_is_refused_at_once_and_counted() {
        let g = gate(1, 1);
        let held = g.admit(Duration::from_secs(1)).await.expect("first slot");
        let waiting = {
            let g = g.clone();
            tokio::spawn(async move { g.admit(Duration::from_secs(5)).await.map(drop) })
        };
        while g.queued.load(Ordering::Relaxed) == 0 {
            tokio::task::yield_now().await;
        }
        let started = std::time::Instant::now();
        assert_eq!(g.admit(Duration::from_secs(5)).await.err(), Some(Refused::QueueFull));
        assert!(started.elapsed() < Duration::from_secs(1), "a full queue must refuse without waiting");
        drop(held);
        assert_eq!(waiting.await.expect("join"), Ok(()), "the queued request gets the freed slot");
        assert_eq!(g.shed_queue_full.get(), 1);
        assert_eq!(g.in_flight(), 0);
        assert_eq!(g.queued.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_queued_request_gives_up_at_its_deadline_without_a_slot() {
        let g = gate(1, 4);
        let _held = g.admit(Duration::from_secs(1)).await.expect("first slot");
        assert_eq!(g.admit(Duration::from_millis(20)).await.err(), Some(Refused::Deadline));
        assert_eq!(g.queued.load(Ordering::Relaxed), 0, "the queue slot is given back");
        assert_eq!(g.in_flight(), 1);
    }
}
