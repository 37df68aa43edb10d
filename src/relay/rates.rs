//! Per-sender rates of the frames that cost store space or engine time
//! (`[rates]`, protocol.md §1 "Rates"): token buckets keyed by the
//! sending party (its certificate) and a class of frame, shared by both
//! listeners and every connection of a party, checked at the connection
//! before a frame reaches the engine. A frame beyond its rate is answered
//! `E_BUSY` there: no engine time, no store write.
//!
//! Invariants: a frame takes one token from each bucket of its classes,
//! or from none when one of them is empty; at most [`MAX_BUCKETS`]
//! buckets are kept (a full bucket is the same as an absent one, so full
//! ones are dropped first, and a party beyond the bound starts full).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use ifrelay_proto::{Body, Party, Role};

/// One token bucket: `per_s` frames a second on average, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_s: u32,
    pub burst: u32,
}

/// The rates of each class (`[rates]` of the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    /// `box_status`, from any sender.
    pub status: Rate,
    /// `process_error`, from the core or a peer box.
    pub notice: Rate,
    /// `distribution`, from the core.
    pub distribution: Rate,
    /// Every frame from one peer box.
    pub peer: Rate,
    /// `serial_request`, from the own IMS.
    pub serial: Rate,
}

impl Default for RateLimits {
    /// Far above what a municipality's box sees (a few frames a second,
    /// one `box_status` per start and stop), and above the benchmark's
    /// load, so only a runaway or hostile sender meets them.
    fn default() -> Self {
        let rate = |per_s, burst| Rate { per_s, burst };
        Self {
            status: rate(1, 10),
            notice: rate(50, 500),
            distribution: rate(1, 10),
            peer: rate(1000, 2000),
            serial: rate(1000, 2000),
        }
    }
}

/// What a frame is counted as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    Status,
    Notice,
    Distribution,
    Peer,
    Serial,
}

impl Class {
    /// The class's name in `[rates]` (`status` for `rates.status_per_s`).
    pub fn name(self) -> &'static str {
        match self {
            Class::Status => "status",
            Class::Notice => "notice",
            Class::Distribution => "distribution",
            Class::Peer => "peer",
            Class::Serial => "serial",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Class::Status => "box_status frames",
            Class::Notice => "process_error frames",
            Class::Distribution => "distribution frames",
            Class::Peer => "frames from one peer box",
            Class::Serial => "serial_request frames",
        }
    }

    /// The classes of `body` from a party of `role`: at most two.
    pub fn of(role: Role, body: &Body) -> [Option<Class>; 2] {
        let by_type = match (role, body) {
            (_, Body::BoxStatus(_)) => Some(Class::Status),
            (Role::Core | Role::Is, Body::ProcessError(_)) => Some(Class::Notice),
            (Role::Core, Body::Distribution(_)) => Some(Class::Distribution),
            (Role::Ims, Body::SerialRequest(_)) => Some(Class::Serial),
            _ => None,
        };
        let by_sender = (role == Role::Is).then_some(Class::Peer);
        [by_type, by_sender]
    }
}

/// A frame over its sender's rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exceeded {
    pub class: Class,
    pub rate: Rate,
}

impl std::fmt::Display for Exceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "over the rate of {} from one sender ({}/s, burst {}; rates.{}_*); send it again later",
            self.class.what(),
            self.rate.per_s,
            self.rate.burst,
            self.class.name()
        )
    }
}

/// Most buckets kept; beyond, full buckets are forgotten first.
pub const MAX_BUCKETS: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn refill(&mut self, rate: Rate, now: Instant) {
        let gained = now.saturating_duration_since(self.at).as_secs_f64() * f64::from(rate.per_s);
        self.tokens = (self.tokens + gained).min(f64::from(rate.burst));
        self.at = now;
    }
}

/// The buckets of every sender, shared by both listeners.
#[derive(Debug)]
pub struct RateLimiter {
    limits: RateLimits,
    buckets: Mutex<HashMap<(Party, Class), Bucket>>,
}

impl RateLimiter {
    pub fn new(limits: RateLimits) -> Self {
        Self {
            limits,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn rate(&self, class: Class) -> Rate {
        match class {
            Class::Status => self.limits.status,
            Class::Notice => self.limits.notice,
            Class::Distribution => self.limits.distribution,
            Class::Peer => self.limits.peer,
            Class::Serial => self.limits.serial,
        }
    }

    /// Takes the tokens `body` from `party` costs, or none and says which
    /// rate it is over.
    ///
    /// # Errors
    /// [`Exceeded`] naming the first class whose bucket is empty.
    pub fn admit(&self, party: &Party, body: &Body) -> Result<(), Exceeded> {
        self.admit_at(party, body, Instant::now())
    }

    /// As [`Self::admit`], at `now` (tests).
    ///
    /// # Errors
    /// As [`Self::admit`].
    pub fn admit_at(&self, party: &Party, body: &Body, now: Instant) -> Result<(), Exceeded> {
        self.take(party, Class::of(party.role, body), now)
    }

    /// Takes a token of `class` from `party`'s bucket: for what the box
    /// spends on a sender without a frame to classify (an undecodable
    /// frame of a peer box is logged coalesced beyond it).
    ///
    /// # Errors
    /// [`Exceeded`] when the bucket is empty.
    pub fn charge(&self, party: &Party, class: Class) -> Result<(), Exceeded> {
        self.take(party, [Some(class), None], Instant::now())
    }

    fn take(
        &self,
        party: &Party,
        classes: [Option<Class>; 2],
        now: Instant,
    ) -> Result<(), Exceeded> {
        if classes.iter().all(Option::is_none) {
            return Ok(());
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_BUCKETS {
            self.forget_full(&mut buckets, now);
        }
        let mut taken: [Option<(Class, Bucket)>; 2] = [None, None];
        for (slot, class) in taken.iter_mut().zip(classes) {
            let Some(class) = class else { continue };
            let rate = self.rate(class);
            let mut bucket = buckets
                .get(&(party.clone(), class))
                .copied()
                .unwrap_or(Bucket {
                    tokens: f64::from(rate.burst),
                    at: now,
                });
            bucket.refill(rate, now);
            if bucket.tokens < 1.0 {
                return Err(Exceeded { class, rate });
            }
            bucket.tokens -= 1.0;
            *slot = Some((class, bucket));
        }
        for (class, bucket) in taken.into_iter().flatten() {
            if buckets.len() < MAX_BUCKETS || buckets.contains_key(&(party.clone(), class)) {
                buckets.insert((party.clone(), class), bucket);
            }
        }
        Ok(())
    }

    /// Drops every bucket that has filled up again.
    fn forget_full(&self, buckets: &mut HashMap<(Party, Class), Bucket>, now: Instant) {
        buckets.retain(|(_, class), bucket| {
            let rate = self.rate(*class);
            let mut b = *bucket;
            b.refill(rate, now);
            b.tokens < f64::from(rate.burst)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ifrelay_proto::{BoxStatus, SerialPurpose, SerialRequest, StatusEvent};
    use std::time::Duration;

    fn status() -> Body {
        Body::BoxStatus(BoxStatus {
            event: StatusEvent::Started,
        })
    }

    fn complete() -> Body {
        Body::QueryComplete(ifrelay_proto::SerialNotice {
            serial: "131016-20270101-1-1".parse().expect("serial"),
        })
    }

    fn peer(agency: &str) -> Party {
        Party::is(agency.parse().expect("agency"))
    }

    #[test]
    fn a_burst_then_the_rate() {
        let limiter = RateLimiter::new(RateLimits::default());
        let t0 = Instant::now();
        let p = peer("271004");
        let passed = (0..100)
            .filter(|_| limiter.admit_at(&p, &status(), t0).is_ok())
            .count();
        assert_eq!(passed, 10, "the burst");
        let err = limiter.admit_at(&p, &status(), t0).expect_err("empty");
        assert_eq!(err.class, Class::Status);
        assert!(err.to_string().contains("rates.status_*"), "{err}");
        // One token a second comes back.
        let t1 = t0 + Duration::from_millis(1500);
        assert!(limiter.admit_at(&p, &status(), t1).is_ok());
        assert!(limiter.admit_at(&p, &status(), t1).is_err());
        // Another sender has its own bucket.
        assert!(limiter.admit_at(&peer("011002"), &status(), t1).is_ok());
    }

    #[test]
    fn a_refused_frame_takes_no_token_from_its_other_class() {
        let limits = RateLimits {
            peer: Rate {
                per_s: 1,
                burst: 20,
            },
            ..RateLimits::default()
        };
        let limiter = RateLimiter::new(limits);
        let t0 = Instant::now();
        let p = peer("271004");
        for _ in 0..50 {
            let _ = limiter.admit_at(&p, &status(), t0);
        }
        // 10 status frames took 10 of the peer bucket's 20; the 40
        // refused ones took none.
        let notice_free = complete();
        let passed = (0..50)
            .filter(|_| limiter.admit_at(&p, &notice_free, t0).is_ok())
            .count();
        assert_eq!(passed, 10);
    }

    #[test]
    fn the_ims_is_limited_only_in_serial_requests() {
        let limiter = RateLimiter::new(RateLimits {
            serial: Rate { per_s: 1, burst: 2 },
            ..RateLimits::default()
        });
        let ims = Party::ims("131016".parse().expect("agency"));
        let serial = Body::SerialRequest(SerialRequest {
            purpose: SerialPurpose::Query,
        });
        let t0 = Instant::now();
        assert!(limiter.admit_at(&ims, &serial, t0).is_ok());
        assert!(limiter.admit_at(&ims, &serial, t0).is_ok());
        assert_eq!(
            limiter.admit_at(&ims, &serial, t0).map_err(|e| e.class),
            Err(Class::Serial)
        );
        assert_eq!(Class::of(Role::Ims, &complete()), [None, None]);
    }

    #[test]
    fn the_bucket_map_stays_bounded() {
        let limiter = RateLimiter::new(RateLimits::default());
        let t0 = Instant::now();
        for n in 0..(MAX_BUCKETS * 2) {
            let p = peer(&format!("A{n}"));
            let _ = limiter.admit_at(&p, &status(), t0);
        }
        let len = limiter.buckets.lock().expect("lock").len();
        assert!(len <= MAX_BUCKETS, "{len}");
    }
}
