//! The limits a deployment sets on one instance: sockets per token `sub`
//! (`max_sockets_per_sub`) and handshakes per second
//! (`max_handshakes_per_second`). Both are off at zero.

use std::{
    collections::HashMap,
    num::NonZeroU32,
    sync::{Arc, Mutex, PoisonError},
};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::refusal::Refusal;

/// Open sockets per `sub`. An entry lives while its `sub` has a socket, so the
/// map holds at most one entry per open socket.
pub(crate) struct PerSub {
    limit: usize,
    open: Arc<Mutex<HashMap<Arc<str>, usize>>>,
}

/// A socket's place under its `sub`'s limit, given back on drop.
pub(crate) struct SubPlace {
    sub: Arc<str>,
    open: Arc<Mutex<HashMap<Arc<str>, usize>>>,
}

impl PerSub {
    /// `None` when `limit` is zero (no limit).
    pub(crate) fn new(limit: usize) -> Option<PerSub> {
        (limit > 0).then(|| PerSub {
            limit,
            open: Arc::default(),
        })
    }

    /// A place for one more socket of `sub`, or the refusal.
    pub(crate) fn take(&self, sub: &Arc<str>) -> Result<SubPlace, Refusal> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(sub.clone()).or_default();
        if *count >= self.limit {
            return Err(Refusal::TooManySocketsForSub);
        }
        *count += 1;
        Ok(SubPlace {
            sub: sub.clone(),
            open: self.open.clone(),
        })
    }
}

impl Drop for SubPlace {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.sub) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.sub);
            }
        }
    }
}

/// Handshakes per second for the whole instance: a token bucket as deep as one
/// second's worth, refilled evenly.
pub(crate) struct Handshakes(DefaultDirectRateLimiter);

impl Handshakes {
    /// `None` when `per_second` is zero (no limit).
    pub(crate) fn new(per_second: usize) -> Option<Handshakes> {
        let per_second = NonZeroU32::new(u32::try_from(per_second).unwrap_or(u32::MAX))?;
        Some(Handshakes(RateLimiter::direct(Quota::per_second(
            per_second,
        ))))
    }

    /// One handshake's share, or the refusal.
    pub(crate) fn take(&self) -> Result<(), Refusal> {
        self.0.check().map_err(|_| Refusal::TooManyHandshakes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sub_gets_its_places_back_and_its_entry_goes_with_the_last() {
        let per_sub = PerSub::new(2).unwrap();
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        let first = per_sub.take(&a).unwrap();
        let second = per_sub.take(&a).unwrap();
        assert_eq!(per_sub.take(&a).err(), Some(Refusal::TooManySocketsForSub));
        let other = per_sub.take(&b).unwrap();
        drop(first);
        let third = per_sub.take(&a).unwrap();
        drop((second, third, other));
        assert!(per_sub.open.lock().unwrap().is_empty());
        assert!(PerSub::new(0).is_none());
    }

    #[test]
    fn handshakes_beyond_a_second_s_worth_are_refused() {
        let limit = Handshakes::new(3).unwrap();
        for _ in 0..3 {
            limit.take().unwrap();
        }
        assert_eq!(limit.take(), Err(Refusal::TooManyHandshakes));
        assert!(Handshakes::new(0).is_none());
    }
}
