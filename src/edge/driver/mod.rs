//! One media worker's event loop: socket, timers and commands in; str0m
//! and the conference core in between; datagrams out.
//!
//! The loop is here; what it calls lives beside it, one job per file:
//! `sessions` (joining, leaving, which session a datagram is for), `events`
//! (what a client's str0m session reports), `fanout` (packets into slots
//! and onto relay links), `relay` (the worker's side of relay links) and
//! `gauges` (what the worker publishes about itself).
#![allow(clippy::disallowed_methods)] // the shell reads the clock and hands `now` to str0m and the core

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::bwe::BweKind;
use str0m::format::Codec;
use str0m::net::{Protocol, Receive};
use str0m::rtp::RtpPacket;
use str0m::{Candidate, Event, IceConnectionState, Input, Output};
use tokio::sync::mpsc;

use crate::config::{Config, Limits};
use crate::core::conference::{
    Conference, ConferenceConfig, IncomingRtp, Output as CoreOutput, ParticipantSpec, Routes,
};
use crate::core::ids::{ConfId, ConferenceKey, Layer, LinkId, MediaKind, Origin, ParticipantId, SlotRef, StreamKey};
use crate::core::keyframe::is_vp8_keyframe;
use crate::core::messages::ClientMessage;
use crate::core::relay_demand::RelayMode;
use crate::core::roster_policy::{self, RosterSource};
use crate::metrics::{DropReason, Metrics, Rejection, WorkerMetrics};
use crate::process::ThreadCpu;
use crate::wire::{Control, MediaFrame};

use super::answer::{self, Estimation};
use super::client::{Client, Media, Session};
use super::estimate::DownlinkEstimate;
use super::links::{channel_of, relay_codec, str0m_codec, Attachment, Channels, Link, Refusal};
use super::offer::OfferSummary;
use super::placement::Placement;
use super::quotas::Quotas;
use super::relay_routes::RouteUpdate;
use super::sources::Sources;
use super::udp::{Datagram, MediaSocket};
use super::{AnchorLink, Command, JoinError, JoinRequest, LeaveOutcome};

mod events;
mod fanout;
mod gauges;
mod relay;
mod sessions;

pub use gauges::EdgeStats;
use gauges::Published;
use sessions::{next_id, poll_rtc, Sink};

/// Datagram batches handled per wake-up before timers and commands get a
/// turn, so a flood on the socket cannot starve them (quinn's WorkLimiter idea).
const MAX_BATCHES_PER_WAKE: usize = 16;
/// How often sessions are checked for idleness.
const IDLE_SWEEP: Duration = Duration::from_millis(500);
/// The biggest data channel message a client may send.
const MAX_CLIENT_MESSAGE: usize = 16 * 1024;

/// What a worker shares with the other workers and the edge's handle.
pub(super) struct Shared {
    /// This worker's number, from 0.
    pub index: usize,
    /// How many workers there are.
    pub workers: usize,
    pub placement: Arc<Placement>,
    pub quotas: Arc<Quotas>,
    pub metrics: Arc<Metrics>,
}

pub(super) struct Driver {
    /// This worker's number.
    index: usize,
    placement: Arc<Placement>,
    quotas: Arc<Quotas>,
    worker_metrics: WorkerMetrics,
    published: Published,
    cpu: ThreadCpu,
    socket: MediaSocket,
    public_addr: SocketAddr,
    /// The host candidate every answer carries (`public_addr`).
    host_candidate: Candidate,
    domain: String,
    conference_config: ConferenceConfig,
    idle_timeout: Duration,
    estimate_bandwidth: bool,
    max_receive_bps: Option<u32>,
    limits: Limits,
    /// Set once the SFT drains: attaches may not start conferences.
    draining: bool,
    metrics: Arc<Metrics>,
    clients: HashMap<ParticipantId, Client>,
    sources: Sources,
    sessions: HashMap<(ConfId, String), ParticipantId>,
    /// Conferences by a process-local number, so the packet path looks them
    /// up without touching (or cloning) the string key.
    conferences: HashMap<u64, Conference>,
    conference_numbers: HashMap<ConferenceKey, u64>,
    next_participant: u64,
    /// Conference numbers step by the number of workers, each worker from
    /// its own offset, so they are unique in the process: a federated
    /// conference's number is its channel on a link every worker shares.
    next_conference: u64,
    conference_step: u64,
    next_idle_sweep: Instant,
    links: HashMap<LinkId, Link>,
    channels: Channels,
    /// For conferences this SFT joined as a federated node: how to attach
    /// them again when their link comes back, by (link, channel).
    attachments: HashMap<(LinkId, u32), Attachment>,
    // Buffers reused on every wake-up so the packet path does not allocate.
    events: Vec<(ParticipantId, Event)>,
    routes: Routes,
    relay_arena: bytes::BytesMut,
    outgoing: Vec<Datagram>,
    dirty: Vec<ParticipantId>,
    ended: Vec<(ParticipantId, &'static str)>,
}

impl Driver {
    pub(super) fn new(
        socket: MediaSocket,
        public_addr: SocketAddr,
        host_candidate: Candidate,
        config: &Config,
        shared: Shared,
    ) -> Self {
        let Shared { index, workers, placement, quotas, metrics } = shared;
        let conference_config = ConferenceConfig {
            link_timeout: config
                .federation
                .as_ref()
                .map_or(ConferenceConfig::default().link_timeout, |f| f.link_timeout),
            relay: config.federation.as_ref().map_or(RelayMode::All, |f| f.relay),
            ..ConferenceConfig::default()
        };
        Self {
            index,
            placement,
            quotas,
            worker_metrics: metrics.worker(index),
            published: Published::default(),
            cpu: ThreadCpu::default(),
            socket,
            public_addr,
            host_candidate,
            domain: config.domain.clone(),
            conference_config,
            idle_timeout: config.media.idle_timeout,
            estimate_bandwidth: config.media.bandwidth_estimation,
            max_receive_bps: config.media.max_receive_bps,
            limits: config.limits,
            draining: false,
            metrics,
            clients: HashMap::new(),
            sources: Sources::default(),
            sessions: HashMap::new(),
            conferences: HashMap::new(),
            conference_numbers: HashMap::new(),
            // Ids start at a random point: relay rosters name participants by
            // id, and a restarted process should not reuse the ids its
            // previous life announced to peers (who also compare identities).
            next_participant: (u64::from(rand::random::<u32>()) << 20) + 1,
            next_conference: index as u64 + 1,
            conference_step: workers as u64,
            next_idle_sweep: Instant::now() + IDLE_SWEEP,
            links: HashMap::new(),
            channels: Channels::default(),
            attachments: HashMap::new(),
            events: Vec::new(),
            routes: Routes::default(),
            relay_arena: bytes::BytesMut::new(),
            outgoing: Vec::new(),
            dirty: Vec::new(),
            ended: Vec::new(),
        }
    }

    pub(super) async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        loop {
            let deadline = self.next_deadline();
            tokio::select! {
                command = commands.recv() => match command {
                    Some(command) => self.handle_command(command),
                    None => break,
                },
                readable = self.socket.readable() => {
                    if let Err(e) = readable {
                        tracing::error!("media socket failed: {e}");
                        break;
                    }
                    self.receive();
                }
                _ = tokio::time::sleep_until(deadline.into()) => {}
            }
            self.handle_timeouts(Instant::now());
            self.settle();
        }
    }

    fn next_deadline(&self) -> Instant {
        let clients = self.clients.values().filter_map(|c| c.next_timeout);
        let conferences = self.conferences.values().filter_map(Conference::poll_timeout);
        clients.chain(conferences).fold(self.next_idle_sweep, Instant::min)
    }

    fn handle_command(&mut self, command: Command) {
        match command {
            Command::Join { request, admission, reservation, reply } => {
                let key = request.conference.clone();
                let result = self.join(Instant::now(), *request);
                if result.is_ok() {
                    // The session holds its quota place until it ends (`remove`).
                    admission.keep();
                }
                reservation.handled(self.conference_numbers.contains_key(&key));
                let _ = reply.send(result);
            }
            Command::Leave { conf_id, sessid, check, reply } => {
                let id = self.sessions.get(&(conf_id, sessid)).copied();
                let outcome = match id.and_then(|id| self.clients.get(&id)) {
                    None => LeaveOutcome::NoSuchSession,
                    Some(client) if !check(&client.session.userid) => LeaveOutcome::NotYours,
                    Some(client) => {
                        self.ended.push((client.id, "delete"));
                        LeaveOutcome::Left
                    }
                };
                let _ = reply.send(outcome);
            }
            Command::Stats { reply } => {
                let _ = reply.send(self.stats());
            }
            Command::Drain => self.draining = true,
            Command::Resume => self.draining = false,
            #[cfg(test)]
            Command::InjectPanic => panic!("fault injected into the media thread"),
            Command::LinkUp { link, peer_domain, connection, control, routes } => {
                self.link_up(link, peer_domain, connection, control, routes)
            }
            Command::LinkDown { link, connection } => self.link_down(link, connection),
            Command::RelayDatagram { link, datagram } => self.relay_datagram(link, &datagram),
            Command::RelayControl { link, message } => self.relay_control(link, message),
            Command::Reattach { link, channel, token } => self.reattach(link, channel, token),
            Command::Abandon { link, channel } => {
                tracing::warn!(%link, channel, "the anchor keeps refusing the conference: its participants leave");
                self.detach(Instant::now(), link, channel);
            }
            Command::RelayAttach { link, channel, key, reservation } => {
                self.relay_attach(link, channel, &key);
                reservation.handled(self.conference_numbers.contains_key(&key));
            }
        }
    }

    fn handle_timeouts(&mut self, now: Instant) {
        for client in self.clients.values_mut() {
            if client.next_timeout.is_some_and(|t| t <= now) {
                client.next_timeout = None;
                if client.rtc.handle_input(Input::Timeout(now)).is_err() {
                    self.ended.push((client.id, "webrtc-error"));
                }
                if !client.dirty {
                    client.dirty = true;
                    self.dirty.push(client.id);
                }
            }
        }
        let due: Vec<u64> = self
            .conferences
            .iter()
            .filter(|(_, c)| c.poll_timeout().is_some_and(|t| t <= now))
            .map(|(number, _)| *number)
            .collect();
        let due_any = !due.is_empty();
        for number in due {
            if let Some(conference) = self.conferences.get_mut(&number) {
                conference.handle_timeout(now);
            }
            self.drain_conference(number);
            self.remove_if_empty(number);
        }
        if due_any {
            // Timeouts may have removed remote participants or whole conferences.
            self.update_gauges();
        }
        if now >= self.next_idle_sweep {
            self.next_idle_sweep = now + IDLE_SWEEP;
            self.worker_metrics.cpu_seconds.inc_by(self.cpu.seconds_since_last());
            for client in self.clients.values() {
                if now.saturating_duration_since(client.last_rx) > self.idle_timeout {
                    self.ended.push((client.id, "idle-timeout"));
                } else if !client.rtc.is_alive() {
                    self.ended.push((client.id, "closed"));
                }
            }
        }
    }

    /// Polls every client with pending work until nothing is left: their
    /// events feed the core, the core's forwards make more clients dirty.
    /// Events may also be waiting from sessions polled as their datagrams
    /// arrived, with no client dirty at all.
    fn settle(&mut self) {
        let now = Instant::now();
        while !self.dirty.is_empty() || !self.events.is_empty() || !self.ended.is_empty() {
            while let Some(id) = self.dirty.pop() {
                self.poll_client(now, id);
            }
            let mut events = std::mem::take(&mut self.events);
            for (id, event) in events.drain(..) {
                self.handle_event(now, id, event);
            }
            self.events = events;
            for (id, cause) in std::mem::take(&mut self.ended) {
                self.remove(now, id, cause);
            }
        }
        let dropped = self.socket.send_all(&mut self.outgoing);
        for _ in 0..dropped {
            self.metrics.dropped(DropReason::Rejected);
        }
    }

    fn poll_client(&mut self, now: Instant, id: ParticipantId) {
        if let Some(client) = self.clients.get_mut(&id) {
            if std::mem::take(&mut client.media_queued) && client.rtc.handle_input(Input::Timeout(now)).is_err() {
                self.ended.push((id, "webrtc-error"));
            }
            let mut sink = Sink {
                metrics: &self.metrics,
                outgoing: &mut self.outgoing,
                events: &mut self.events,
                ended: &mut self.ended,
            };
            poll_rtc(client, &mut sink);
        }
    }

    fn mark_dirty(&mut self, id: ParticipantId) {
        if let Some(client) = self.clients.get_mut(&id) {
            if !client.dirty {
                client.dirty = true;
                self.dirty.push(id);
            }
        }
    }
}
