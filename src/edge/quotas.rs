//! The session limits that span every media worker: sessions in all
//! (`limits.max_participants`), sessions still connecting (in all and per
//! source address) and sessions per token.
//!
//! A SETUP takes its place before it reaches its worker, so two SETUPs on
//! two workers cannot both take the last one; the worker reports when a
//! session connects and when it ends. A place not taken up by a session
//! (the SETUP failed, or never reached its worker) is given back when its
//! [`Admission`] drops. Touched a few times per session, never per packet.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::config::Limits;

use super::{JoinError, Owner};

pub struct Quotas {
    limits: Limits,
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    sessions: usize,
    connecting: usize,
    connecting_by_source: HashMap<IpAddr, usize>,
    by_token: HashMap<String, usize>,
}

impl Quotas {
    pub fn new(limits: Limits) -> Self {
        Self { limits, counts: Mutex::new(Counts::default()) }
    }

    /// Takes a place for a new, not yet connected session of `owner`, or
    /// says which limit is reached.
    pub fn admit(self: &Arc<Self>, owner: &Owner) -> Result<Admission, JoinError> {
        let mut counts = self.lock();
        let limits = &self.limits;
        if counts.sessions >= limits.max_participants {
            return Err(JoinError::AtCapacity("this SFT is at its participant limit"));
        }
        let from_source = owner.source.and_then(|s| counts.connecting_by_source.get(&s).copied()).unwrap_or(0);
        if from_source >= limits.max_pending_sessions_per_source {
            return Err(JoinError::OverQuota("too many sessions from this address are still connecting"));
        }
        if counts.connecting >= limits.max_pending_sessions {
            return Err(JoinError::AtCapacity("too many sessions are still connecting"));
        }
        let with_token = owner.token.as_ref().and_then(|t| counts.by_token.get(t).copied()).unwrap_or(0);
        if with_token >= limits.max_sessions_per_token {
            return Err(JoinError::OverQuota("this token holds as many sessions as it may"));
        }
        counts.sessions += 1;
        counts.connecting += 1;
        if let Some(source) = owner.source {
            *counts.connecting_by_source.entry(source).or_default() += 1;
        }
        if let Some(token) = &owner.token {
            *counts.by_token.entry(token.clone()).or_default() += 1;
        }
        Ok(Admission { quotas: self.clone(), owner: owner.clone(), kept: false })
    }

    /// A session of `owner` connected (ICE and DTLS).
    pub fn connected(&self, owner: &Owner) {
        let mut counts = self.lock();
        counts.stop_connecting(owner);
    }

    /// A session of `owner` ended; `connected` says whether it had connected.
    pub fn ended(&self, owner: &Owner, connected: bool) {
        let mut counts = self.lock();
        if !connected {
            counts.stop_connecting(owner);
        }
        counts.sessions = counts.sessions.saturating_sub(1);
        if let Some(token) = &owner.token {
            decrement(&mut counts.by_token, token);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        // Every update is a few increments; a poisoned lock holds usable counts.
        self.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A place taken for one session: the session keeps it
/// ([`Admission::keep`], then [`Quotas::ended`] when it ends), or it is
/// given back when this drops.
pub struct Admission {
    quotas: Arc<Quotas>,
    owner: Owner,
    kept: bool,
}

impl Admission {
    /// The session was set up and holds the place from now on.
    pub fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if !self.kept {
            self.quotas.ended(&self.owner, false);
        }
    }
}

impl Counts {
    fn stop_connecting(&mut self, owner: &Owner) {
        self.connecting = self.connecting.saturating_sub(1);
        if let Some(source) = owner.source {
            decrement(&mut self.connecting_by_source, &source);
        }
    }
}

/// Counts one fewer under `key`, forgetting keys that reach zero so the
/// maps hold only live sources and tokens.
fn decrement<K, Q>(map: &mut HashMap<K, usize>, key: &Q)
where
    K: std::hash::Hash + Eq + std::borrow::Borrow<Q>,
    Q: std::hash::Hash + Eq + ?Sized,
{
    if let Some(count) = map.get_mut(key) {
        *count -= 1;
        if *count == 0 {
            map.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        let mut limits = crate::config::Config::load(None, []).unwrap().limits;
        limits.max_participants = 3;
        limits.max_pending_sessions = 2;
        limits.max_pending_sessions_per_source = 1;
        limits.max_sessions_per_token = 2;
        limits
    }

    fn owner(source: u8, token: Option<&str>) -> Owner {
        Owner { source: Some(IpAddr::from([127, 0, 0, source])), token: token.map(str::to_owned) }
    }

    #[test]
    fn each_limit_holds_across_every_session_and_frees_as_sessions_move_on() {
        let quotas = Arc::new(Quotas::new(limits()));
        let admit = |source, token| quotas.admit(&owner(source, token)).map(Admission::keep);
        admit(1, Some("t")).unwrap();
        assert!(matches!(admit(1, None), Err(JoinError::OverQuota(_))), "one connecting per source");
        admit(2, Some("t")).unwrap();
        assert!(matches!(admit(3, None), Err(JoinError::AtCapacity(_))), "two connecting in all");
        quotas.connected(&owner(1, Some("t")));
        quotas.connected(&owner(2, Some("t")));
        assert!(matches!(admit(3, Some("t")), Err(JoinError::OverQuota(_))), "two per token");
        admit(3, None).unwrap();
        assert!(matches!(admit(4, None), Err(JoinError::AtCapacity(_))), "three in all");
        quotas.ended(&owner(3, None), false);
        quotas.ended(&owner(1, Some("t")), true);
        admit(1, Some("t")).unwrap();
        let counts = quotas.lock();
        assert_eq!((counts.sessions, counts.connecting), (2, 1));
        assert_eq!(counts.by_token.get("t"), Some(&2));
        assert_eq!(counts.connecting_by_source.len(), 1, "sources no longer connecting are forgotten");
    }

    #[test]
    fn a_place_not_kept_is_given_back() {
        let quotas = Arc::new(Quotas::new(limits()));
        let admission = quotas.admit(&owner(1, Some("t"))).unwrap();
        drop(admission);
        let counts = quotas.lock();
        assert_eq!((counts.sessions, counts.connecting), (0, 0));
        assert!(counts.by_token.is_empty() && counts.connecting_by_source.is_empty());
    }
}
