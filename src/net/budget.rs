//! The box's budget of bytes in flight, shared by every connection of both
//! listeners and by the delivery workers' replies (`limits.in_flight_bytes`).
//!
//! A frame's bytes are charged as they arrive (never the length its prefix
//! announces), then the tree its decoding builds before it is built
//! ([`ifrelay_proto::Scan::tree_bytes`]), and what the decoded frame keeps
//! stays charged until the frame has been handled ([`Held`] travels with
//! it and gives everything back when dropped — a connection that closes
//! drops it). When the budget is spent, reading waits: backpressure, not
//! refusal; TCP then holds the peers back.
//!
//! Two shares keep that from starving anyone:
//! - the bytes of frames still arriving that are larger than
//!   [`SMALL_FRAME`] may hold at most three quarters of the budget
//!   ([`Budget::receiving_limit`]), so slow or stalled large frames can
//!   never take the room small frames and decoding need;
//! - every wait is bounded by the connection's read timeout: a frame that
//!   cannot get room within it is given up (while arriving: the connection
//!   is dropped; when decoding: it is refused `E_BUSY`), so no peer holds
//!   budget for longer than that without making progress.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Frames up to this size are small: their bytes are charged to the
/// budget but never to the share of frames still arriving, so control
/// traffic keeps moving while large frames wait.
pub const SMALL_FRAME: usize = 8 * 1024;

/// Bytes in flight across every connection, with the share of large
/// frames still arriving. Cheap to clone (one allocation, shared).
#[derive(Debug, Clone)]
pub struct Budget {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    total: Arc<Semaphore>,
    receiving: Arc<Semaphore>,
    limit: usize,
    receiving_limit: usize,
}

/// No room within the wait: the frame is given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no room for {wanted} bytes in the in-flight budget within {waited:?}")]
pub struct Starved {
    pub wanted: usize,
    pub waited: Duration,
}

impl Budget {
    /// A budget of `limit` bytes (at least one, at most what a semaphore
    /// counts).
    pub fn new(limit: usize) -> Budget {
        let limit = limit.clamp(1, Semaphore::MAX_PERMITS);
        let receiving_limit = (limit / 4).saturating_mul(3).max(1);
        Budget {
            inner: Arc::new(Inner {
                total: Arc::new(Semaphore::new(limit)),
                receiving: Arc::new(Semaphore::new(receiving_limit)),
                limit,
                receiving_limit,
            }),
        }
    }

    /// A budget that never waits: for simulators and tools that read from
    /// parties they trust.
    pub fn unlimited() -> Budget {
        Budget::new(Semaphore::MAX_PERMITS)
    }

    /// The whole budget, in bytes.
    pub fn limit(&self) -> usize {
        self.inner.limit
    }

    /// The share large frames still arriving may hold.
    pub fn receiving_limit(&self) -> usize {
        self.inner.receiving_limit
    }

    /// Bytes charged now.
    pub fn in_flight(&self) -> usize {
        self.inner.limit - self.inner.total.available_permits()
    }

    /// Bytes of large frames still arriving, charged now.
    pub fn receiving(&self) -> usize {
        self.inner.receiving_limit - self.inner.receiving.available_permits()
    }

    /// Nothing charged yet: the account of one frame.
    pub fn account(&self) -> Held {
        Held {
            budget: self.clone(),
            total: None,
            receiving: None,
        }
    }
}

/// Bytes charged to a [`Budget`] for one frame; given back when dropped.
#[derive(Debug)]
pub struct Held {
    budget: Budget,
    total: Option<OwnedSemaphorePermit>,
    receiving: Option<OwnedSemaphorePermit>,
}

impl Held {
    /// Bytes this account holds.
    pub fn bytes(&self) -> usize {
        self.total
            .as_ref()
            .map_or(0, OwnedSemaphorePermit::num_permits)
    }

    /// Charges `n` bytes just received of a frame; those of a large frame
    /// count in the arriving share too. Waits at most `wait` for room.
    ///
    /// # Errors
    /// [`Starved`] when there was no room in time (nothing more is held).
    pub async fn charge_received(
        &mut self,
        n: usize,
        large: bool,
        wait: Duration,
    ) -> Result<(), Starved> {
        let inner = self.budget.inner.clone();
        if !large {
            return self.charge(n, wait).await;
        }
        let starved = Starved {
            wanted: n,
            waited: wait,
        };
        let both = async {
            let receiving = acquire(&inner.receiving, n).await?;
            let total = acquire(&inner.total, n).await?;
            Some((receiving, total))
        };
        let (receiving, total) = match try_both(&inner, n) {
            Some(pair) => pair,
            None => tokio::time::timeout(wait, both)
                .await
                .ok()
                .flatten()
                .ok_or(starved)?,
        };
        merge(&mut self.receiving, receiving);
        merge(&mut self.total, total);
        Ok(())
    }

    /// Charges `n` bytes of the total only (a small frame's bytes, a tree
    /// about to be built), waiting at most `wait` for room.
    ///
    /// # Errors
    /// [`Starved`] when there was no room in time, or `n` exceeds the whole
    /// budget.
    pub async fn charge(&mut self, n: usize, wait: Duration) -> Result<(), Starved> {
        let starved = Starved {
            wanted: n,
            waited: wait,
        };
        if n == 0 {
            return Ok(());
        }
        let total = self.budget.inner.total.clone();
        let permit = match u32::try_from(n)
            .ok()
            .and_then(|k| total.clone().try_acquire_many_owned(k).ok())
        {
            Some(p) => p,
            None => tokio::time::timeout(wait, acquire(&total, n))
                .await
                .ok()
                .flatten()
                .ok_or(starved)?,
        };
        merge(&mut self.total, permit);
        Ok(())
    }

    /// The frame has arrived whole: its bytes leave the arriving share
    /// (they stay in the total).
    pub fn arrived(&mut self) {
        self.receiving = None;
    }

    /// Gives back all but `n` bytes (what the decoded frame keeps).
    pub fn keep(&mut self, n: usize) {
        if let Some(total) = &mut self.total {
            let extra = total.num_permits().saturating_sub(n);
            if extra > 0 {
                drop(total.split(extra));
            }
        }
    }
}

fn merge(into: &mut Option<OwnedSemaphorePermit>, permit: OwnedSemaphorePermit) {
    match into {
        Some(held) => held.merge(permit),
        None => *into = Some(permit),
    }
}

/// Waits for `n` permits; `None` if `n` can never be granted at once.
async fn acquire(sem: &Arc<Semaphore>, n: usize) -> Option<OwnedSemaphorePermit> {
    let n = u32::try_from(n).ok()?;
    sem.clone().acquire_many_owned(n).await.ok()
}

/// Both shares at once, without waiting.
fn try_both(inner: &Inner, n: usize) -> Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)> {
    let k = u32::try_from(n).ok()?;
    let receiving = inner.receiving.clone().try_acquire_many_owned(k).ok()?;
    let total = inner.total.clone().try_acquire_many_owned(k).ok()?;
    Some((receiving, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_millis(50);

    #[tokio::test]
    async fn charges_wait_for_room_and_come_back_when_dropped() {
        let budget = Budget::new(1000);
        let mut a = budget.account();
        a.charge(600, WAIT).await.expect("room");
        assert_eq!((a.bytes(), budget.in_flight()), (600, 600));
        let mut b = budget.account();
        assert_eq!(
            b.charge(500, WAIT).await,
            Err(Starved {
                wanted: 500,
                waited: WAIT
            })
        );
        assert_eq!(budget.in_flight(), 600, "a failed charge holds nothing");
        a.keep(100);
        assert_eq!(budget.in_flight(), 100);
        b.charge(500, WAIT).await.expect("room again");
        drop((a, b));
        assert_eq!(budget.in_flight(), 0);
        // More than the whole budget can never be granted.
        assert!(budget.account().charge(1001, WAIT).await.is_err());
    }

    #[tokio::test]
    async fn large_frames_arriving_leave_a_quarter_for_the_rest() {
        let budget = Budget::new(1000);
        assert_eq!(budget.receiving_limit(), 750);
        let mut large = budget.account();
        large
            .charge_received(750, true, WAIT)
            .await
            .expect("the arriving share");
        assert!(large.charge_received(1, true, WAIT).await.is_err());
        // Small frames and decoding still find room.
        let mut small = budget.account();
        small
            .charge_received(250, false, WAIT)
            .await
            .expect("the rest");
        assert_eq!(budget.in_flight(), 1000);
        // Once arrived, a frame's bytes leave the arriving share only.
        large.arrived();
        assert_eq!((budget.receiving(), budget.in_flight()), (0, 1000));
        drop(small);
        let mut next = budget.account();
        next.charge_received(250, true, WAIT).await.expect("room");
    }

    #[tokio::test]
    async fn a_waiting_charge_gets_room_as_soon_as_it_is_given_back() {
        let budget = Budget::new(100);
        let mut first = budget.account();
        first.charge(100, WAIT).await.expect("room");
        let waiter = {
            let budget = budget.clone();
            tokio::spawn(async move {
                let mut mine = budget.account();
                mine.charge(40, Duration::from_secs(10))
                    .await
                    .map(|()| mine.bytes())
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(first);
        assert_eq!(waiter.await.expect("task"), Ok(40));
    }
}
