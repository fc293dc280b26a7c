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
//! second copy starting on another one.

use std::collections::HashMap;
use std::sync::Mutex;

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
}

impl Placement {
    pub fn new(workers: usize) -> Self {
        Self { inner: Mutex::new(Table { conferences: HashMap::new(), load: vec![0; workers.max(1)] }) }
    }

    /// The worker a request for `key` goes to, placing the conference if it
    /// is new. Every call must be answered by one [`Placement::handled`].
    pub fn reserve(&self, key: &ConferenceKey) -> usize {
        let mut table = self.lock();
        let Table { conferences, load } = &mut *table;
        if let Some(entry) = conferences.get_mut(key) {
            entry.in_flight += 1;
            return entry.worker;
        }
        let worker = (0..load.len()).min_by_key(|w| load[*w]).unwrap_or(0);
        load[worker] += 1;
        conferences.insert(key.clone(), Entry { worker, in_flight: 1 });
        worker
    }

    /// The worker handled a request for `key`; `alive` says whether the
    /// conference exists there now (a refused first SETUP leaves none).
    pub fn handled(&self, key: &ConferenceKey, alive: bool) {
        let mut table = self.lock();
        if let Some(entry) = table.conferences.get_mut(key) {
            entry.in_flight = entry.in_flight.saturating_sub(1);
        }
        if !alive {
            table.forget_if_idle(key);
        }
    }

    /// The conference ended on its worker.
    pub fn ended(&self, key: &ConferenceKey) {
        self.lock().forget_if_idle(key);
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
    fn forget_if_idle(&mut self, key: &ConferenceKey) {
        if self.conferences.get(key).is_some_and(|e| e.in_flight == 0) {
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

    #[test]
    fn new_conferences_go_to_the_least_loaded_worker_and_stay() {
        let placement = Placement::new(2);
        assert_eq!(placement.reserve(&key("one")), 0);
        placement.handled(&key("one"), true);
        assert_eq!(placement.reserve(&key("two")), 1);
        placement.handled(&key("two"), true);
        assert_eq!(placement.reserve(&key("three")), 0, "a tie goes to the lowest index");
        placement.handled(&key("three"), true);
        assert_eq!(placement.reserve(&key("two")), 1, "a conference stays where it lives");
        placement.handled(&key("two"), true);
        placement.ended(&key("one"));
        placement.ended(&key("three"));
        assert_eq!(placement.reserve(&key("four")), 0, "ended conferences free their worker");
    }

    #[test]
    fn a_conference_ending_with_a_request_on_its_way_keeps_its_worker() {
        let placement = Placement::new(2);
        assert_eq!(placement.reserve(&key("busy")), 0);
        placement.handled(&key("busy"), true);
        assert_eq!(placement.reserve(&key("late")), 1);
        placement.handled(&key("late"), true);
        // A SETUP for "busy" is on its way to worker 0 when its last client leaves.
        assert_eq!(placement.reserve(&key("busy")), 0);
        placement.ended(&key("busy"));
        assert_eq!(placement.reserve(&key("busy")), 0, "still placed: the request recreates it there");
        placement.handled(&key("busy"), true);
        placement.handled(&key("busy"), true);
        placement.ended(&key("busy"));
        assert_eq!(placement.workers_of(&ConfId::parse("busy").unwrap()), Vec::<usize>::new());
    }

    #[test]
    fn a_refused_first_request_leaves_no_conference_behind() {
        let placement = Placement::new(3);
        assert_eq!(placement.reserve(&key("refused")), 0);
        placement.handled(&key("refused"), false);
        assert!(placement.workers_of(&ConfId::parse("refused").unwrap()).is_empty());
        assert_eq!(placement.reserve(&key("next")), 0, "its load was given back");
    }
}
