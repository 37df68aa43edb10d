//! The box's budget of bytes in flight, shared by every connection of both
//! listeners and by the delivery workers' replies (`limits.in_flight_bytes`).
//!
//! What it counts, and when it gives it back:
//! - a frame's body bytes, charged as they arrive (never the length its
//!   prefix announces), until the frame has been decoded;
//! - the tree decoding builds, charged before it is built
//!   ([`ifrelay_proto::Scan::tree_bytes`], twice: the tree and the typed
//!   frame made from it exist together for a while);
//! - the decoded frame (about its tree), until it has been handled: [`Held`]
//!   travels with it and gives everything back when dropped — a connection
//!   that closes drops it.
//!
//! When the budget is spent, reading waits: backpressure, not refusal; TCP
//! then holds the peers back. Three rules keep that from deadlocking or
//! starving anyone:
//! - the budget is split in two pools: half for frames arriving and
//!   arrived ([`Budget::frames_limit`]), half for decoding and decoded
//!   frames ([`Budget::decode_limit`]). A frame waiting to be decoded holds
//!   only the first and waits only on the second, which is given back by
//!   decoding (CPU) and by the engine answering — never by a peer;
//! - a frame larger than [`SMALL_FRAME`], once its first body bytes are
//!   there, reserves its announced length in a share of three quarters of
//!   the first pool ([`Budget::large_limit`]) until it has arrived. So
//!   large frames that have started can always finish (they never wait on
//!   one another's half-received bytes), and slow or stalled ones can never
//!   take the room small frames need. A peer that only announces a length
//!   reserves nothing;
//! - every wait is bounded by the connection's read timeout: a frame that
//!   cannot get room within it is given up (while arriving: the connection
//!   is dropped; when decoding: it is refused `E_BUSY`), so no peer holds
//!   budget for longer than that without making progress.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Frames up to this size are small: they reserve nothing in the share of
/// large frames, so control traffic keeps moving while large frames wait.
pub const SMALL_FRAME: usize = 8 * 1024;

/// Bytes in flight across every connection, in its pools. Cheap to clone
/// (one allocation, shared).
#[derive(Debug, Clone)]
pub struct Budget {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Body bytes of frames arriving or arrived, until decoded.
    frames: Pool,
    /// Announced lengths of large frames that have started to arrive.
    large: Pool,
    /// Trees being built, and decoded frames until handled.
    decode: Pool,
}

#[derive(Debug)]
struct Pool {
    sem: Arc<Semaphore>,
    limit: usize,
}

impl Pool {
    fn new(limit: usize) -> Pool {
        let limit = limit.clamp(1, Semaphore::MAX_PERMITS);
        Pool {
            sem: Arc::new(Semaphore::new(limit)),
            limit,
        }
    }

    fn used(&self) -> usize {
        self.limit - self.sem.available_permits()
    }

    /// `n` permits, waiting at most `wait`.
    async fn take(&self, n: usize, wait: Duration) -> Result<OwnedSemaphorePermit, Starved> {
        let starved = Starved {
            wanted: n,
            waited: wait,
        };
        // More than the pool can ever grant at once.
        let k = u32::try_from(n)
            .ok()
            .filter(|_| n <= self.limit)
            .ok_or(starved)?;
        if let Ok(permit) = self.sem.clone().try_acquire_many_owned(k) {
            return Ok(permit);
        }
        tokio::time::timeout(wait, self.sem.clone().acquire_many_owned(k))
            .await
            .ok()
            .and_then(Result::ok)
            .ok_or(starved)
    }
}

/// No room within the wait: the frame is given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no room for {wanted} bytes in the in-flight budget within {waited:?}")]
pub struct Starved {
    pub wanted: usize,
    pub waited: Duration,
}

impl Budget {
    /// A budget of `limit` bytes (at most what a semaphore counts).
    pub fn new(limit: usize) -> Budget {
        let limit = limit.clamp(2, Semaphore::MAX_PERMITS);
        let frames = limit / 2;
        Budget {
            inner: Arc::new(Inner {
                frames: Pool::new(frames),
                large: Pool::new(frames / 4 * 3),
                decode: Pool::new(limit - frames),
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
        self.inner.frames.limit + self.inner.decode.limit
    }

    /// The pool of frames arriving and arrived.
    pub fn frames_limit(&self) -> usize {
        self.inner.frames.limit
    }

    /// The share of that pool large frames arriving may reserve.
    pub fn large_limit(&self) -> usize {
        self.inner.large.limit
    }

    /// The pool of decoding and decoded frames: no frame whose decoding
    /// needs more is ever decoded.
    pub fn decode_limit(&self) -> usize {
        self.inner.decode.limit
    }

    /// Bytes charged now, in both pools.
    pub fn in_flight(&self) -> usize {
        self.inner.frames.used() + self.inner.decode.used()
    }

    /// Announced bytes of large frames arriving, reserved now.
    pub fn large_reserved(&self) -> usize {
        self.inner.large.used()
    }

    /// Nothing charged yet: the account of one frame.
    pub fn account(&self) -> Held {
        Held {
            budget: self.clone(),
            frames: None,
            large: None,
            decode: None,
        }
    }
}

/// What one frame holds of a [`Budget`]; given back when dropped.
#[derive(Debug)]
pub struct Held {
    budget: Budget,
    frames: Option<OwnedSemaphorePermit>,
    large: Option<OwnedSemaphorePermit>,
    decode: Option<OwnedSemaphorePermit>,
}

impl Held {
    /// Bytes this frame holds, in both pools.
    pub fn bytes(&self) -> usize {
        [&self.frames, &self.decode]
            .into_iter()
            .flatten()
            .map(OwnedSemaphorePermit::num_permits)
            .sum()
    }

    /// Reserves a large frame's announced `len` in the share of large
    /// frames arriving, once its first bytes are there, waiting at most
    /// `wait`.
    ///
    /// # Errors
    /// [`Starved`] when there was no room in time, or `len` is more than
    /// the whole share.
    pub async fn reserve_large(&mut self, len: usize, wait: Duration) -> Result<(), Starved> {
        let permit = self.budget.inner.large.take(len, wait).await?;
        merge(&mut self.large, permit);
        Ok(())
    }

    /// Charges `n` body bytes just received, waiting at most `wait`.
    ///
    /// # Errors
    /// [`Starved`] when there was no room in time.
    pub async fn charge_received(&mut self, n: usize, wait: Duration) -> Result<(), Starved> {
        let permit = self.budget.inner.frames.take(n, wait).await?;
        merge(&mut self.frames, permit);
        Ok(())
    }

    /// The frame has arrived whole: its reservation as a large frame goes
    /// back (its bytes stay charged until decoded).
    pub fn arrived(&mut self) {
        self.large = None;
    }

    /// Charges `n` bytes of decoding (a tree about to be built, and the
    /// typed frame made from it), waiting at most `wait`.
    ///
    /// # Errors
    /// [`Starved`] when there was no room in time, or `n` is more than the
    /// whole decoding pool.
    pub async fn charge_decoding(&mut self, n: usize, wait: Duration) -> Result<(), Starved> {
        if n == 0 {
            return Ok(());
        }
        let permit = self.budget.inner.decode.take(n, wait).await?;
        merge(&mut self.decode, permit);
        Ok(())
    }

    /// Decoded: the body is gone, and the frame keeps `n` bytes of
    /// decoding (what its typed form takes) until it has been handled.
    pub fn decoded(&mut self, n: usize) {
        self.frames = None;
        self.large = None;
        if let Some(decode) = &mut self.decode {
            let extra = decode.num_permits().saturating_sub(n);
            if extra > 0 {
                drop(decode.split(extra));
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

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_millis(50);

    #[test]
    fn the_budget_splits_into_its_pools() {
        let budget = Budget::new(32 << 20);
        assert_eq!(budget.limit(), 32 << 20);
        assert_eq!(budget.frames_limit(), 16 << 20);
        assert_eq!(budget.large_limit(), 12 << 20);
        assert_eq!(budget.decode_limit(), 16 << 20);
    }

    #[tokio::test]
    async fn charges_wait_for_room_and_come_back_when_dropped() {
        let budget = Budget::new(2000);
        let mut a = budget.account();
        a.charge_received(600, WAIT).await.expect("room");
        assert_eq!((a.bytes(), budget.in_flight()), (600, 600));
        let mut b = budget.account();
        assert_eq!(
            b.charge_received(500, WAIT).await,
            Err(Starved {
                wanted: 500,
                waited: WAIT
            })
        );
        assert_eq!(budget.in_flight(), 600, "a failed charge holds nothing");
        // Decoding has a pool of its own.
        a.charge_decoding(900, WAIT).await.expect("decoding room");
        a.decoded(100);
        assert_eq!((a.bytes(), budget.in_flight()), (100, 100));
        b.charge_received(1000, WAIT).await.expect("room again");
        drop((a, b));
        assert_eq!(budget.in_flight(), 0);
        // More than a pool can never be granted.
        assert!(budget.account().charge_decoding(1001, WAIT).await.is_err());
    }

    #[tokio::test]
    async fn large_frames_arriving_reserve_at_most_three_quarters_of_their_pool() {
        let budget = Budget::new(2000);
        assert_eq!(budget.large_limit(), 750);
        let mut large = budget.account();
        large.reserve_large(500, WAIT).await.expect("room");
        large
            .charge_received(100, WAIT)
            .await
            .expect("its first bytes");
        // Another large frame finds no room to finish: it waits, then
        // gives up, holding nothing.
        let mut other = budget.account();
        assert!(other.reserve_large(300, WAIT).await.is_err());
        assert_eq!(other.bytes(), 0);
        assert!(budget.account().reserve_large(751, WAIT).await.is_err());
        // Small frames still find room.
        let mut small = budget.account();
        small.charge_received(900, WAIT).await.expect("the rest");
        assert_eq!(budget.in_flight(), 1000);
        // Once arrived, a frame's reservation goes back; its bytes stay.
        large.arrived();
        assert_eq!((budget.large_reserved(), budget.in_flight()), (0, 1000));
        other.reserve_large(750, WAIT).await.expect("room again");
    }

    #[tokio::test]
    async fn a_waiting_charge_gets_room_as_soon_as_it_is_given_back() {
        let budget = Budget::new(200);
        let mut first = budget.account();
        first.charge_received(100, WAIT).await.expect("room");
        let waiter = {
            let budget = budget.clone();
            tokio::spawn(async move {
                let mut mine = budget.account();
                mine.charge_received(40, Duration::from_secs(10))
                    .await
                    .map(|()| mine.bytes())
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(first);
        assert_eq!(waiter.await.expect("task"), Ok(40));
    }
}
