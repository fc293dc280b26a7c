//! The life of a relay link this SFT dials to an anchor, as a sans-IO state
//! machine: when to dial and how long an attempt may take, when to dial
//! again after a failure or a drop (backoff), and when to give up. The
//! async shell (`federation::keep_link`) dials, runs the link and reports
//! back; every decision about time is made here, with `now` passed in, so
//! tests drive it through restarts and flapping in simulated time.
//!
//! ```text
//!   new ──▶ Dialling(first) ──ok──▶ Up ──closed──▶ Waiting ──timeout──▶ Dialling
//!               │ failed                              ▲                   │ failed
//!               ▼                                     └───────────────────┘
//!           GaveUp(first dial failed)     any state, domain no longer allowed ──▶ GaveUp
//! ```

use std::time::{Duration, Instant};

/// How long the first dial may take: a SETUP waits for it.
pub const FIRST_DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// A redial gives up after this and starts afresh: a handshake begun while
/// the path was down would otherwise wait out QUIC's growing Initial
/// retransmission timer (1 s, 2 s, ...) long after the path is back. Each
/// attempt is one Initial, so short attempts cost an unreachable peer little.
pub const REDIAL_ATTEMPT: Duration = Duration::from_millis(750);
pub const BACKOFF_START: Duration = Duration::from_millis(100);
/// With `REDIAL_ATTEMPT`, bounds the time from the path's return to a new
/// connection at about a second.
pub const BACKOFF_MAX: Duration = Duration::from_millis(250);

/// What the shell should do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkAction {
    /// Dial the peer's relay; report the outcome within `timeout`.
    Dial { timeout: Duration },
    /// Stop for good: the link is not dialled again.
    GiveUp(GiveUpReason),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GiveUpReason {
    /// The first dial failed: the SETUP that asked for the link gets 502.
    FirstDialFailed(String),
    /// A reload took the peer's domain off the allow list.
    Disallowed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// A dial is under way (or about to be handed out).
    Dialling {
        first: bool,
    },
    Up,
    /// Waiting out the backoff before the next dial.
    Waiting {
        until: Instant,
    },
    GaveUp,
}

#[derive(Debug)]
pub struct LinkMachine {
    state: State,
    backoff: Duration,
    pending: Option<LinkAction>,
    /// Dials that failed since the link was last up.
    failures: u32,
}

impl LinkMachine {
    /// A link wanted from `now` on: the first dial is handed out at once.
    pub fn new() -> Self {
        Self {
            state: State::Dialling { first: true },
            backoff: BACKOFF_START,
            pending: Some(LinkAction::Dial { timeout: FIRST_DIAL_TIMEOUT }),
            failures: 0,
        }
    }

    /// The outcome of the dial last handed out.
    pub fn handle_dialled(&mut self, now: Instant, outcome: Result<(), String>) {
        let State::Dialling { first } = self.state else { return };
        match outcome {
            Ok(()) => {
                self.state = State::Up;
                self.backoff = BACKOFF_START;
                self.failures = 0;
            }
            Err(why) if first => self.give_up(GiveUpReason::FirstDialFailed(why)),
            Err(_) => {
                self.failures += 1;
                self.wait(now);
            }
        }
    }

    /// The link that was up has ended (the peer restarted, the path broke).
    pub fn handle_closed(&mut self, now: Instant) {
        if self.state == State::Up {
            self.wait(now);
        }
    }

    /// Time passed; `allowed` is whether the peer's domain may still be
    /// dialled (a reload may have taken it off the allow list).
    pub fn handle_timeout(&mut self, now: Instant, allowed: bool) {
        if !allowed {
            if self.state != State::GaveUp {
                self.give_up(GiveUpReason::Disallowed);
            }
            return;
        }
        if let State::Waiting { until } = self.state {
            if now >= until {
                self.state = State::Dialling { first: false };
                self.pending = Some(LinkAction::Dial { timeout: REDIAL_ATTEMPT });
            }
        }
    }

    /// When `handle_timeout` should next be called, if a wait is running.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Waiting { until } => Some(until),
            _ => None,
        }
    }

    pub fn poll_action(&mut self) -> Option<LinkAction> {
        self.pending.take()
    }

    pub fn is_up(&self) -> bool {
        self.state == State::Up
    }

    /// Dials that failed in a row since the link was last up.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    fn wait(&mut self, now: Instant) {
        self.state = State::Waiting { until: now + self.backoff };
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }

    fn give_up(&mut self, reason: GiveUpReason) {
        self.state = State::GaveUp;
        self.pending = Some(LinkAction::GiveUp(reason));
    }
}

impl Default for LinkMachine {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::disallowed_methods)] // simulated time needs some starting instant
    fn start() -> Instant {
        Instant::now()
    }

    /// Runs the machine until it asks to dial; returns when, in simulated
    /// time, stepping in 10 ms ticks for at most `limit`.
    fn next_dial(machine: &mut LinkMachine, now: &mut Instant, limit: Duration) -> Option<Duration> {
        let deadline = *now + limit;
        while *now <= deadline {
            machine.handle_timeout(*now, true);
            if let Some(action) = machine.poll_action() {
                return match action {
                    LinkAction::Dial { timeout } => Some(timeout),
                    LinkAction::GiveUp(_) => None,
                };
            }
            *now += Duration::from_millis(10);
        }
        None
    }

    #[test]
    fn a_failed_first_dial_gives_up_so_the_setup_fails_fast() {
        let now = start();
        let mut link = LinkMachine::new();
        assert_eq!(link.poll_action(), Some(LinkAction::Dial { timeout: FIRST_DIAL_TIMEOUT }));
        link.handle_dialled(now, Err("no route".into()));
        assert_eq!(link.poll_action(), Some(LinkAction::GiveUp(GiveUpReason::FirstDialFailed("no route".into()))));
        link.handle_timeout(now + Duration::from_secs(60), true);
        assert_eq!(link.poll_action(), None, "never dialled again");
    }

    #[test]
    fn a_peer_that_restarts_is_redialled_within_the_backoff() {
        let mut now = start();
        let mut link = LinkMachine::new();
        link.poll_action();
        link.handle_dialled(now, Ok(()));
        assert!(link.is_up());
        // The anchor restarts: the link drops, the next dial comes 100 ms later.
        link.handle_closed(now);
        let dropped = now;
        assert_eq!(next_dial(&mut link, &mut now, Duration::from_secs(1)), Some(REDIAL_ATTEMPT));
        assert_eq!(now - dropped, BACKOFF_START);
        // While it is down, attempts fail and the wait grows to its cap.
        let mut waits = Vec::new();
        for _ in 0..5 {
            link.handle_dialled(now, Err("refused".into()));
            let failed = now;
            assert!(next_dial(&mut link, &mut now, Duration::from_secs(1)).is_some());
            waits.push((now - failed).as_millis());
        }
        assert_eq!(waits, vec![200, 250, 250, 250, 250]);
        assert_eq!(link.failures(), 5);
        // It answers again: up, and the backoff starts afresh.
        link.handle_dialled(now, Ok(()));
        assert!(link.is_up() && link.failures() == 0);
        link.handle_closed(now);
        let dropped = now;
        next_dial(&mut link, &mut now, Duration::from_secs(1));
        assert_eq!(now - dropped, BACKOFF_START);
    }

    #[test]
    fn a_peer_that_never_answers_costs_one_short_attempt_per_backoff() {
        let mut now = start();
        let mut link = LinkMachine::new();
        link.poll_action();
        link.handle_dialled(now, Ok(()));
        link.handle_closed(now);
        // An hour of a dead peer: each attempt times out after REDIAL_ATTEMPT.
        let hour = now + Duration::from_secs(3600);
        let mut dials = 0u32;
        while let Some(timeout) = next_dial(&mut link, &mut now, Duration::from_secs(1)) {
            dials += 1;
            now += timeout;
            link.handle_dialled(now, Err("timed out".into()));
            if now >= hour {
                break;
            }
        }
        // One attempt every 0.75 + 0.25 s at most.
        assert!((3500..=3700).contains(&dials), "{dials} dials in an hour");
        assert!(!link.is_up());
    }

    #[test]
    fn a_flapping_link_is_redialled_every_time_and_a_disallowed_domain_is_given_up() {
        let mut now = start();
        let mut link = LinkMachine::new();
        link.poll_action();
        for _ in 0..100 {
            link.handle_dialled(now, Ok(()));
            now += Duration::from_millis(50);
            link.handle_closed(now);
            assert!(next_dial(&mut link, &mut now, Duration::from_secs(1)).is_some(), "redialled");
        }
        link.handle_dialled(now, Ok(()));
        link.handle_timeout(now, false);
        assert_eq!(link.poll_action(), Some(LinkAction::GiveUp(GiveUpReason::Disallowed)));
        link.handle_closed(now);
        assert_eq!(next_dial(&mut link, &mut now, Duration::from_secs(5)), None);
    }

    #[test]
    fn reports_out_of_turn_change_nothing() {
        let now = start();
        let mut link = LinkMachine::new();
        link.poll_action();
        link.handle_closed(now);
        assert_eq!(link.poll_timeout(), None, "closed while dialling: no wait begins");
        link.handle_dialled(now, Ok(()));
        link.handle_dialled(now, Err("late".into()));
        assert!(link.is_up(), "a second outcome for one dial is ignored");
    }
}
