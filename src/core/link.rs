//! The life of a relay link this SFT dials to an anchor, as a sans-IO state
//! machine: when to dial and how long an attempt may take, when a
//! connection has gone silent, when to dial again (backoff), when to ask
//! the anchor again for a conference it refused, and when to give the link
//! up. The async shell (`federation/keeper.rs`) dials, runs the link,
//! makes the RPCs and reports back; every decision about time is made here,
//! with `now` passed in, so tests drive it through restarts, flapping and
//! refusals in simulated time.
//!
//! ```text
//!   new ──▶ Dialling(first) ──ok──▶ Up ──closed / silent 2 s──▶ Waiting ──backoff──▶ Dialling
//!               │ failed              ▲                                                │ ok / failed
//!               ▼                     └────────────────────────────────────────────────┘
//!           GaveUp(first dial failed)
//!
//!   any state: no conference uses the link for `linger` ──▶ GaveUp(unneeded)
//!              the domain is no longer allowed           ──▶ GaveUp(disallowed)
//!   per channel: the anchor refuses it ──▶ Rejoin (at once, then 1 s apart)
//!              refused again after 3 rejoins in a minute ──▶ Abandon
//! ```

use std::collections::{BTreeMap, VecDeque};
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
/// A connection that has brought no packet for this long is closed and a
/// new one dialled: a healthy link carries media, or at least the answers
/// to keep-alives every second. Waiting for QUIC to recover instead could
/// take seconds after the path returns, as its probe timer doubles through
/// an outage.
pub const SILENCE_LIMIT: Duration = Duration::from_secs(2);
/// Rejoins of one channel allowed within [`REJOIN_WINDOW`]; one more
/// refusal abandons the channel.
pub const MAX_REJOINS: u32 = 3;
pub const REJOIN_WINDOW: Duration = Duration::from_secs(60);
/// The first rejoin goes at once (a restarted anchor with a new key: the
/// call should recover now); later ones wait this long.
pub const REJOIN_BACKOFF: Duration = Duration::from_secs(1);

/// Whether a new relay connection with `peer_domain` should carry the link
/// rather than the live one, given whether this SFT dialled each
/// (`current_dialled_here` is `None` when no connection is live). One
/// connection per pair of SFTs: a newer one dialled by the same side
/// replaces the older (that side restarted, or gave the old one up); when
/// both sides dialled at once, both keep the one the domain sorting first
/// dialled, so they agree without a word.
pub fn takes_over(
    current_dialled_here: Option<bool>,
    new_dialled_here: bool,
    own_domain: &str,
    peer_domain: &str,
) -> bool {
    match current_dialled_here {
        Some(current) if current != new_dialled_here => new_dialled_here == (own_domain < peer_domain),
        _ => true,
    }
}

/// Why the anchor refused a conference's attach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Its token: the anchor restarted with another key, or another
    /// replica answers. A fresh one from `join` may do.
    Token,
    /// Anything else (the link's conference cap, a draining anchor): asking
    /// again would only be refused again.
    Final,
}

/// What the shell should do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkAction {
    /// Dial the peer's relay (QUIC, then `hello`); report the outcome
    /// within `timeout`.
    Dial { timeout: Duration },
    /// Close the connection: it has gone silent. Report it closed.
    Close,
    /// Ask the anchor (`join`) for a fresh token for the conference on
    /// `channel` and attach it again with it; report a failed RPC as
    /// another refusal.
    Rejoin { channel: u32 },
    /// Let the conference on `channel` go: the anchor keeps refusing it.
    Abandon { channel: u32 },
    /// Stop for good (closing the connection, if any): the link is not
    /// dialled again.
    GiveUp(GiveUpReason),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GiveUpReason {
    /// The first dial failed: the SETUP that asked for the link gets 502.
    FirstDialFailed(String),
    /// A reload took the peer's domain off the allow list.
    Disallowed,
    /// No conference has used the link for `linger`.
    Unneeded,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// A dial is under way (or about to be handed out).
    Dialling {
        first: bool,
    },
    Up {
        /// When the connection last brought a packet.
        heard: Instant,
    },
    /// Waiting out the backoff before the next dial.
    Waiting {
        until: Instant,
    },
    GaveUp,
}

/// The refusals of one channel within the current window.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rejoins {
    window_start: Instant,
    count: u32,
    /// A rejoin waiting for its backoff.
    due: Option<Instant>,
}

#[derive(Debug)]
pub struct LinkMachine {
    state: State,
    backoff: Duration,
    pending: VecDeque<LinkAction>,
    /// Dials that failed since the link was last up.
    failures: u32,
    /// How long the link may go unused before it is given up.
    linger: Duration,
    /// Since when no conference uses the link, if none does.
    unused_since: Option<Instant>,
    rejoins: BTreeMap<u32, Rejoins>,
}

impl LinkMachine {
    /// A link wanted from now on, given up once unused for `linger`: the
    /// first dial is handed out at once.
    pub fn new(linger: Duration) -> Self {
        Self {
            state: State::Dialling { first: true },
            backoff: BACKOFF_START,
            pending: VecDeque::from([LinkAction::Dial { timeout: FIRST_DIAL_TIMEOUT }]),
            failures: 0,
            linger,
            unused_since: None,
            rejoins: BTreeMap::new(),
        }
    }

    /// The outcome of the dial last handed out.
    pub fn handle_dialled(&mut self, now: Instant, outcome: Result<(), String>) {
        let State::Dialling { first } = self.state else { return };
        match outcome {
            Ok(()) => {
                self.state = State::Up { heard: now };
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

    /// The connection brought packets since the last report.
    pub fn handle_heard(&mut self, now: Instant) {
        if let State::Up { heard } = &mut self.state {
            *heard = now;
        }
    }

    /// The link that was up has ended (the peer restarted, the path broke).
    pub fn handle_closed(&mut self, now: Instant) {
        if matches!(self.state, State::Up { .. }) {
            self.wait(now);
        }
    }

    /// Whether any conference uses the link now.
    pub fn handle_in_use(&mut self, now: Instant, in_use: bool) {
        if in_use {
            self.unused_since = None;
        } else {
            self.unused_since.get_or_insert(now);
        }
    }

    /// The anchor refused the conference on `channel` (or the `join` asked
    /// for a fresh token failed, a [`Refused::Token`] too): rejoin it, or
    /// abandon it if it keeps being refused or a fresh token cannot help.
    pub fn handle_refused(&mut self, now: Instant, channel: u32, refused: Refused) {
        if self.state == State::GaveUp {
            return;
        }
        if refused == Refused::Final {
            self.rejoins.remove(&channel);
            self.pending.push_back(LinkAction::Abandon { channel });
            return;
        }
        let rejoins = self.rejoins.entry(channel).or_insert(Rejoins { window_start: now, count: 0, due: None });
        if now.saturating_duration_since(rejoins.window_start) >= REJOIN_WINDOW {
            *rejoins = Rejoins { window_start: now, count: 0, due: None };
        }
        if rejoins.due.is_some() {
            return; // a rejoin is already on its way
        }
        if rejoins.count >= MAX_REJOINS {
            self.rejoins.remove(&channel);
            self.pending.push_back(LinkAction::Abandon { channel });
            return;
        }
        rejoins.count += 1;
        if rejoins.count == 1 {
            self.pending.push_back(LinkAction::Rejoin { channel });
        } else {
            rejoins.due = Some(now + REJOIN_BACKOFF);
        }
    }

    /// Time passed; `allowed` is whether the peer's domain may still be
    /// dialled (a reload may have taken it off the allow list).
    pub fn handle_timeout(&mut self, now: Instant, allowed: bool) {
        if self.state == State::GaveUp {
            return;
        }
        if !allowed {
            return self.give_up(GiveUpReason::Disallowed);
        }
        if self.unused_since.is_some_and(|since| now.saturating_duration_since(since) >= self.linger) {
            return self.give_up(GiveUpReason::Unneeded);
        }
        match self.state {
            State::Up { heard } if now.saturating_duration_since(heard) >= SILENCE_LIMIT => {
                self.pending.push_back(LinkAction::Close);
                self.wait(now);
            }
            State::Waiting { until } if now >= until => {
                self.state = State::Dialling { first: false };
                self.pending.push_back(LinkAction::Dial { timeout: REDIAL_ATTEMPT });
            }
            _ => {}
        }
        for (channel, rejoins) in &mut self.rejoins {
            if rejoins.due.is_some_and(|due| now >= due) {
                rejoins.due = None;
                self.pending.push_back(LinkAction::Rejoin { channel: *channel });
            }
        }
        self.rejoins.retain(|_, r| r.due.is_some() || now.saturating_duration_since(r.window_start) < REJOIN_WINDOW);
    }

    /// When `handle_timeout` should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let state = match self.state {
            State::Waiting { until } => Some(until),
            State::Up { heard } => Some(heard + SILENCE_LIMIT),
            State::Dialling { .. } | State::GaveUp => None,
        };
        let rejoins = self.rejoins.values().filter_map(|r| r.due);
        let unused = self.unused_since.map(|since| since + self.linger);
        state.into_iter().chain(rejoins).chain(unused).min().filter(|_| self.state != State::GaveUp)
    }

    pub fn poll_action(&mut self) -> Option<LinkAction> {
        self.pending.pop_front()
    }

    pub fn is_up(&self) -> bool {
        matches!(self.state, State::Up { .. })
    }

    /// Whether `channel` was refused within the current window (its
    /// refusal may still be rejoined or abandoned).
    pub fn is_rejoining(&self, channel: u32) -> bool {
        self.rejoins.contains_key(&channel)
    }

    /// Whether the link has been given up for good.
    pub fn gave_up(&self) -> bool {
        self.state == State::GaveUp
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
        self.rejoins.clear();
        self.pending.clear();
        self.pending.push_back(LinkAction::GiveUp(reason));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINGER: Duration = Duration::from_secs(30);

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
                match action {
                    LinkAction::Dial { timeout } => return Some(timeout),
                    LinkAction::GiveUp(_) => return None,
                    _ => {}
                }
            }
            *now += Duration::from_millis(10);
        }
        None
    }

    #[test]
    fn a_failed_first_dial_gives_up_so_the_setup_fails_fast() {
        let now = start();
        let mut link = LinkMachine::new(LINGER);
        assert_eq!(link.poll_action(), Some(LinkAction::Dial { timeout: FIRST_DIAL_TIMEOUT }));
        link.handle_dialled(now, Err("no route".into()));
        assert_eq!(link.poll_action(), Some(LinkAction::GiveUp(GiveUpReason::FirstDialFailed("no route".into()))));
        link.handle_timeout(now + Duration::from_secs(60), true);
        assert_eq!(link.poll_action(), None, "never dialled again");
    }

    #[test]
    fn a_peer_that_restarts_is_redialled_within_the_backoff() {
        let mut now = start();
        let mut link = LinkMachine::new(LINGER);
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
        let mut link = LinkMachine::new(LINGER);
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
        let mut link = LinkMachine::new(LINGER);
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
        let mut link = LinkMachine::new(LINGER);
        link.poll_action();
        link.handle_closed(now);
        assert_eq!(link.poll_timeout(), None, "closed while dialling: no wait begins");
        link.handle_dialled(now, Ok(()));
        link.handle_dialled(now, Err("late".into()));
        assert!(link.is_up(), "a second outcome for one dial is ignored");
    }

    /// Steps simulated time in 10 ms ticks for `span`, reporting the
    /// connection heard every `heard_every` (if any); returns the actions.
    fn run_for(
        machine: &mut LinkMachine,
        now: &mut Instant,
        span: Duration,
        heard_every: Option<Duration>,
    ) -> Vec<(Duration, LinkAction)> {
        let start = *now;
        let mut last_heard = *now;
        let mut actions = Vec::new();
        while *now < start + span {
            *now += Duration::from_millis(10);
            if heard_every.is_some_and(|every| *now - last_heard >= every) {
                last_heard = *now;
                machine.handle_heard(*now);
            }
            machine.handle_timeout(*now, true);
            while let Some(action) = machine.poll_action() {
                actions.push((*now - start, action));
            }
        }
        actions
    }

    fn up(now: Instant) -> LinkMachine {
        let mut link = LinkMachine::new(LINGER);
        link.poll_action();
        link.handle_dialled(now, Ok(()));
        link
    }

    #[test]
    fn both_sides_keep_the_same_connection_of_two_dialled_at_once() {
        // a.example and b.example dial each other at once; each sees its own
        // connection and the other's, in either order.
        for (own, peer) in [("a.example", "b.example"), ("b.example", "a.example")] {
            let by_a = own == "a.example";
            // Its own dial first, then the peer's arrives.
            assert_eq!(takes_over(Some(true), false, own, peer), !by_a, "{own}: the peer's");
            // The peer's first, then its own dial completes.
            assert_eq!(takes_over(Some(false), true, own, peer), by_a, "{own}: its own");
        }
        // Either way both keep the one a.example dialled.
    }

    #[test]
    fn a_side_that_dials_again_replaces_its_old_connection() {
        assert!(takes_over(None, false, "a.example", "b.example"), "nothing live");
        assert!(takes_over(Some(false), false, "a.example", "b.example"), "the peer restarted and dialled again");
        assert!(takes_over(Some(true), true, "b.example", "a.example"), "this SFT dialled again");
    }

    #[test]
    fn a_link_that_keeps_bringing_packets_stays_and_a_silent_one_is_closed_and_redialled() {
        let mut now = start();
        let mut link = up(now);
        let steady = run_for(&mut link, &mut now, Duration::from_secs(60), Some(Duration::from_millis(500)));
        assert_eq!(steady, vec![], "a minute of packets every 500 ms");
        // The path breaks: nothing heard from here on.
        let actions = run_for(&mut link, &mut now, Duration::from_secs(3), None);
        let kinds: Vec<_> = actions.iter().map(|(at, a)| (at.as_millis(), a.clone())).collect();
        assert_eq!(
            kinds[..2],
            [(2000, LinkAction::Close), (2100, LinkAction::Dial { timeout: REDIAL_ATTEMPT })],
            "closed {SILENCE_LIMIT:?} after the last packet, redialled after the backoff"
        );
    }

    #[test]
    fn a_link_no_conference_uses_is_given_up_after_the_linger_unless_used_again() {
        let mut now = start();
        let mut link = up(now);
        link.handle_in_use(now, false);
        let early = run_for(&mut link, &mut now, LINGER - Duration::from_secs(1), Some(Duration::from_millis(500)));
        assert_eq!(early, vec![]);
        // A conference takes the link again just in time: the linger restarts.
        link.handle_in_use(now, true);
        link.handle_in_use(now, false);
        let actions = run_for(&mut link, &mut now, LINGER + Duration::from_secs(1), Some(Duration::from_millis(500)));
        assert_eq!(actions, vec![(LINGER, LinkAction::GiveUp(GiveUpReason::Unneeded))]);
        assert_eq!(link.poll_timeout(), None);
        // A link to a dead peer is given up as well, rather than redialled for ever.
        let mut dead = up(now);
        dead.handle_closed(now);
        dead.handle_in_use(now, false);
        let actions = run_for(&mut dead, &mut now, LINGER + Duration::from_secs(1), None);
        assert!(actions
            .iter()
            .all(|(_, a)| matches!(a, LinkAction::Dial { .. }) || *a == LinkAction::GiveUp(GiveUpReason::Unneeded)));
        assert_eq!(
            actions.last().map(|(at, a)| (*at, a.clone())),
            Some((LINGER, LinkAction::GiveUp(GiveUpReason::Unneeded)))
        );
    }

    #[test]
    fn a_refused_channel_is_rejoined_at_once_then_a_second_apart_and_abandoned_after_three() {
        let mut now = start();
        let mut link = up(now);
        // The anchor restarted with another key: both channels' attaches are refused.
        link.handle_refused(now, 1, Refused::Token);
        link.handle_refused(now, 2, Refused::Token);
        assert_eq!(link.poll_action(), Some(LinkAction::Rejoin { channel: 1 }));
        assert_eq!(link.poll_action(), Some(LinkAction::Rejoin { channel: 2 }));
        // Channel 2's fresh token works; channel 1 keeps being refused.
        let mut rejoined_at = Vec::new();
        for _ in 0..2 {
            link.handle_refused(now, 1, Refused::Token);
            for (at, action) in run_for(&mut link, &mut now, Duration::from_secs(2), Some(Duration::from_millis(500))) {
                rejoined_at.push((at.as_millis(), action));
            }
        }
        let rejoin = LinkAction::Rejoin { channel: 1 };
        assert_eq!(rejoined_at, vec![(1000, rejoin.clone()), (1000, rejoin.clone())]);
        link.handle_refused(now, 1, Refused::Token);
        assert_eq!(link.poll_action(), Some(LinkAction::Abandon { channel: 1 }), "a fourth refusal within the minute");
        // Refusals far apart (a minute or more) are each rejoined at once.
        link.handle_refused(now, 2, Refused::Token);
        assert_eq!(link.poll_action(), None, "channel 2's second refusal waits its backoff");
        run_for(&mut link, &mut now, REJOIN_WINDOW, Some(Duration::from_millis(500)));
        link.handle_refused(now, 2, Refused::Token);
        assert_eq!(link.poll_action(), Some(LinkAction::Rejoin { channel: 2 }));
    }

    #[test]
    fn a_refusal_a_fresh_token_cannot_help_abandons_the_channel_at_once() {
        let now = start();
        let mut link = up(now);
        link.handle_refused(now, 4, Refused::Final);
        assert_eq!(link.poll_action(), Some(LinkAction::Abandon { channel: 4 }));
        assert_eq!(link.poll_action(), None);
        assert!(!link.is_rejoining(4));
    }
}
