//! Which media worker each conference lives on.
//!
//! A conference is placed when its first SETUP or relay attach arrives, on
//! the worker with the fewest conferences (the lowest index on a tie), and
//! stays there until it ends. The table is consulted once per SETUP, leave
//! and attach, never per packet, so a mutex is fine here.
//!
//! An entry counts the requests sent to its worker and not yet handled
//! there: a conference that ends while a SETUP for it is on its way keeps
//! its entry, so that SETUP recreates it on the same worker instead of a
//! second copy starting on another one. Each request holds a
//! [`Reservation`]: a request that never reaches its worker (its caller
//! gave up, or the queue was full) gives its place back when dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::core::ids::{ConfId, ConferenceKey};

pub struct Placement {
    inner: Mutex<Table>,
}

struct Table {
    conferences: HashMap<ConferenceKey, Entry>,
    /// Conferences per worker.
    load: Vec<usize>,
}

struct Entry {
    worker: usize,
    /// Requests sent to the worker that it has not handled yet.
    in_flight: usize,
    /// Whether the worker holds the conference (it said so last).
    live: bool,
}

/// One request's claim on its conference's placement, answered by the
/// worker with [`Reservation::handled`], or given back when dropped unanswered.
pub struct Reservation {
    placement: Arc<Placement>,
    key: ConferenceKey,
    worker: usize,
    answered: bool,
}

impl Reservation {
    /// The worker the request goes to.
    pub fn worker(&self) -> usize {
        self.worker
    }

    /// The worker handled the request; `alive` says whether the conference
    /// exists there now (a refused first SETUP leaves none).
    pub fn handled(mut self, alive: bool) {
        self.answered = true;
        self.placement.handled(&self.key, alive);
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.answered {
            self.placement.cancelled(&self.key);
        }
    }
}

impl Placement {
    pub fn new(workers: usize) -> Self {
        Self { inner: Mutex::new(Table { conferences: HashMap::new(), load: vec![0; workers.max(1)] }) }
    }

    /// Places a request for `key`: on the worker its conference lives on,
    /// or, for a new one, on the least loaded.
    pub fn reserve(self: &Arc<Self>, key: &ConferenceKey) -> Reservation {
        let mut table = self.lock();
        let Table { conferences, load } = &mut *table;
        let worker = match conferences.get_mut(key) {
            Some(entry) => {
                entry.in_flight += 1;
                entry.worker
            }
            None => {
                let worker = (0..load.len()).min_by_key(|w| load[*w]).unwrap_or(0);
                load[worker] += 1;
                conferences.insert(key.clone(), Entry { worker, in_flight: 1, live: false });
                worker
            }
        };
        Reservation { placement: self.clone(), key: key.clone(), worker, answered: false }
    }

    fn handled(&self, key: &ConferenceKey, alive: bool) {
        let mut table = self.lock();
        if let Some(entry) = table.conferences.get_mut(key) {
            entry.in_flight = entry.in_flight.saturating_sub(1);
            entry.live = alive;
        }
        table.forget_if_unused(key);
    }

    /// A request never reached its worker.
    fn cancelled(&self, key: &ConferenceKey) {
        let mut table = self.lock();
        if let Some(entry) = table.conferences.get_mut(key) {
            entry.in_flight = entry.in_flight.saturating_sub(1);
        }
        table.forget_if_unused(key);
    }

    /// The conference ended on its worker.
    pub fn ended(&self, key: &ConferenceKey) {
        let mut table = self.lock();
        if let Some(entry) = table.conferences.get_mut(key) {
            entry.live = false;
        }
        table.forget_if_unused(key);
    }

    /// The workers holding a conference named `conf_id` (of any anchor).
    pub fn workers_of(&self, conf_id: &ConfId) -> Vec<usize> {
        let table = self.lock();
        let mut workers: Vec<usize> =
            table.conferences.iter().filter(|(key, _)| key.conf_id == *conf_id).map(|(_, e)| e.worker).collect();
        workers.sort_unstable();
        workers.dedup();
        workers
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        // A panic while holding the lock leaves a consistent table (every
        // update is a single step), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Table {
    /// Forgets a conference its worker does not hold and no request is on
    /// its way to.
    fn forget_if_unused(&mut self, key: &ConferenceKey) {
        if self.conferences.get(key).is_some_and(|e| e.in_flight == 0 && !e.live) {
            if let Some(entry) = self.conferences.remove(key) {
                self.load[entry.worker] -= 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> ConferenceKey {
        ConferenceKey { anchor_domain: "a.example".into(), conf_id: ConfId::parse(name).unwrap() }
    }

    /// Places a request for `name` and has its worker handle it.
    fn request(placement: &Arc<Placement>, name: &str, alive: bool) -> usize {
        let reservation = placement.reserve(&key(name));
        let worker = reservation.worker();
        reservation.handled(alive);
        worker
    }

    #[test]
    fn new_conferences_go_to_the_least_loaded_worker_and_stay() {
        let placement = Arc::new(Placement::new(2));
        assert_eq!(request(&placement, "one", true), 0);
        assert_eq!(request(&placement, "two", true), 1);
        assert_eq!(request(&placement, "three", true), 0, "a tie goes to the lowest index");
        assert_eq!(request(&placement, "two", true), 1, "a conference stays where it lives");
        placement.ended(&key("one"));
        placement.ended(&key("three"));
        assert_eq!(request(&placement, "four", true), 0, "ended conferences free their worker");
    }

    #[test]
    fn a_conference_ending_with_a_request_on_its_way_keeps_its_worker() {
        let placement = Arc::new(Placement::new(2));
        assert_eq!(request(&placement, "busy", true), 0);
        assert_eq!(request(&placement, "late", true), 1);
        // A SETUP for "busy" is on its way to worker 0 when its last client leaves.
        let on_its_way = placement.reserve(&key("busy"));
        placement.ended(&key("busy"));
        assert_eq!(request(&placement, "busy", true), 0, "still placed: the request recreates it there");
        on_its_way.handled(true);
        placement.ended(&key("busy"));
        assert!(placement.workers_of(&ConfId::parse("busy").unwrap()).is_empty());
    }

    #[test]
    fn a_refused_first_request_leaves_no_conference_behind() {
        let placement = Arc::new(Placement::new(3));
        assert_eq!(request(&placement, "refused", false), 0);
        assert!(placement.workers_of(&ConfId::parse("refused").unwrap()).is_empty());
        assert_eq!(request(&placement, "next", true), 0, "its load was given back");
    }

    #[test]
    fn a_request_dropped_on_its_way_gives_its_place_back_but_not_a_live_conference() {
        let placement = Arc::new(Placement::new(2));
        drop(placement.reserve(&key("abandoned")));
        assert!(placement.workers_of(&ConfId::parse("abandoned").unwrap()).is_empty());
        assert_eq!(request(&placement, "live", true), 0);
        drop(placement.reserve(&key("live")));
        assert_eq!(placement.workers_of(&ConfId::parse("live").unwrap()), vec![0], "the conference still lives there");
    }
}
