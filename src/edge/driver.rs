//! The edge's event loop: socket, timers and commands in; str0m and the
//! conference core in between; datagrams out.
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
use crate::wire::{Control, MediaFrame};

use super::answer::{self, Estimation};
use super::client::{Client, Media, Session};
use super::estimate::DownlinkEstimate;
use super::links::{relay_codec, str0m_codec, Channels, Link};
use super::offer::OfferSummary;
use super::placement::Placement;
use super::quotas::Quotas;
use super::relay_routes::RouteUpdate;
use super::sources::Sources;
use super::thread_cpu::ThreadCpu;
use super::udp::{Datagram, MediaSocket};
use super::{Command, JoinError, JoinRequest, LeaveOutcome};

/// Datagram batches handled per wake-up before timers and commands get a
/// turn, so a flood on the socket cannot starve them (quinn's WorkLimiter idea).
const MAX_BATCHES_PER_WAKE: usize = 16;
/// How often sessions are checked for idleness.
const IDLE_SWEEP: Duration = Duration::from_millis(500);
/// The biggest data channel message a client may send.
const MAX_CLIENT_MESSAGE: usize = 16 * 1024;

/// What the edge holds, for `/metrics` and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EdgeStats {
    /// Clients connected here.
    pub participants: usize,
    /// Participants on other SFTs, in conferences on this one.
    pub remote_participants: usize,
    pub conferences: usize,
}

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

/// What the worker last added to the process-wide gauges.
#[derive(Default)]
struct Published {
    local: i64,
    remote: i64,
    conferences: i64,
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
    /// Conferences a relay link may carry (`federation.max_conferences_per_link`).
    max_conferences_per_link: usize,
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
    attachments: HashMap<(LinkId, u32), (String, String)>,
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
            max_conferences_per_link: config.federation.as_ref().map_or(usize::MAX, |f| f.max_conferences_per_link),
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
            Command::Join { request, reply } => {
                let key = request.conference.clone();
                let result = self.join(Instant::now(), *request);
                self.placement.handled(&key, self.conference_numbers.contains_key(&key));
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
                let _ = reply.send(EdgeStats {
                    participants: self.clients.len(),
                    remote_participants: self.conferences.values().map(|c| c.counts().1).sum(),
                    conferences: self.conferences.len(),
                });
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
            Command::RelayAttach { link, key, message } => {
                if let Control::Attach { channel, .. } = message {
                    self.relay_attach(link, channel, &key);
                }
                self.placement.handled(&key, self.conference_numbers.contains_key(&key));
            }
        }
    }

    fn join(&mut self, now: Instant, request: JoinRequest) -> Result<String, JoinError> {
        let session_key = (request.conference.conf_id.clone(), request.sessid.clone());
        if self.sessions.contains_key(&session_key) {
            return Err(JoinError::SessionExists(request.sessid));
        }
        let existing = self.conference_numbers.get(&request.conference).and_then(|n| self.conferences.get(n));
        if existing.is_some_and(|c| c.counts().0 + c.counts().1 >= self.limits.max_conference_size) {
            return Err(JoinError::AtCapacity("the conference is full"));
        }
        let summary = request.summary;
        let downlink = DownlinkEstimate::new(self.max_receive_bps);
        let estimation = Estimation { enabled: self.estimate_bandwidth, downlink };
        let (rtc, answer) = answer::answer(now, self.host_candidate.clone(), request.offer, estimation)
            .map_err(|e| JoinError::BadOffer(e.to_string()))?;

        let id = next_id(&mut self.next_participant);
        let (number, created) = self.conference_number(&request.conference);
        if let (true, Some((link, token))) = (created, request.anchor_link) {
            // Federated: our number is the channel; the anchor learns it from Attach.
            // Truncation on purpose: a channel must only be unique among the
            // conferences live on one link, and numbers wrap after 2^32 conferences.
            let channel = number as u32;
            self.map_channel(link, channel, number);
            let conf_id = request.conference.conf_id.as_str().to_owned();
            self.attachments.insert((link, channel), (conf_id.clone(), token.clone()));
            if let Some(l) = self.links.get(&link) {
                l.send_control(Control::Attach { channel, conf_id, relay_token: token });
            }
            if let Some(conference) = self.conferences.get_mut(&number) {
                conference.attach_link(now, link);
            }
        }
        let session = Session { sessid: request.sessid, userid: request.identity.userid.clone(), owner: request.owner };
        let client = Client::new(id, request.conference.clone(), number, session, rtc, &summary, now);
        self.sources.add_session(client.ufrag.clone(), id);
        let client = client.with_downlink(downlink).with_message_limit(self.limits.client_messages_per_second);
        self.clients.insert(id, client);
        self.sessions.insert(session_key, id);
        if let Some(conference) = self.conferences.get_mut(&number) {
            conference.add_participant(now, id, participant_spec(request.identity, &summary));
            if let Some((source, bits)) = downlink.initial() {
                self.metrics.receiver_estimate(source, u64::from(bits));
                conference.set_receiver_estimate(now, id, bits);
            }
        }
        self.drain_conference(number);
        self.mark_dirty(id);
        self.update_gauges();
        tracing::info!(participant = %id, conf = %request.conference.conf_id, "joined");
        Ok(answer)
    }

    /// The driver's number for a conference, creating it when new.
    fn conference_number(&mut self, key: &ConferenceKey) -> (u64, bool) {
        if let Some(number) = self.conference_numbers.get(key) {
            return (*number, false);
        }
        let number = self.next_conference;
        self.next_conference += self.conference_step;
        self.conference_numbers.insert(key.clone(), number);
        self.conferences.insert(number, Conference::new(self.conference_config.clone()));
        (number, true)
    }

    fn receive(&mut self) {
        for _ in 0..MAX_BATCHES_PER_WAKE {
            let now = Instant::now();
            let Self { socket, clients, sources, public_addr, metrics, outgoing, events, ended, .. } = self;
            let mut sink = Sink { metrics, outgoing, events, ended };
            let received = socket.recv_batch(|source, datagram| {
                handle_datagram(now, source, *public_addr, datagram, clients, sources, &mut sink);
            });
            match received {
                Ok(0) => break,
                Ok(_) => self.settle(),
                Err(e) => {
                    tracing::warn!("media socket receive failed: {e}");
                    break;
                }
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

    fn handle_event(&mut self, now: Instant, id: ParticipantId, event: Event) {
        match event {
            Event::RtpPacket(packet) => self.route_rtp(now, id, &packet),
            Event::MediaIngressStats(stats) => {
                if let Some(loss) = stats.loss {
                    self.metrics.stream_loss("in", loss);
                }
            }
            Event::MediaEgressStats(stats) => {
                if let Some(loss) = stats.loss {
                    self.metrics.stream_loss("out", loss);
                }
            }
            Event::EgressBitrateEstimate(kind) => self.downlink_estimate(now, id, &kind),
            Event::KeyframeRequest(request) => {
                let Some(client) = self.clients.get(&id) else { return };
                let (Some(slot), number) = (client.slot_of(request.mid), client.conference_number) else { return };
                if let Some(conference) = self.conferences.get_mut(&number) {
                    conference.handle_keyframe_request(now, id, slot);
                }
                self.drain_conference(number);
            }
            Event::ChannelOpen(channel, label) => {
                let Some(client) = self.clients.get_mut(&id) else { return };
                client.channel_opened(channel, &label);
                let is_sft = client.is_sft_channel(channel);
                self.mark_dirty(id);
                if is_sft {
                    self.start_media(now, id);
                }
            }
            Event::ChannelData(data) => {
                let is_ours = self.clients.get(&id).is_some_and(|c| c.is_sft_channel(data.id));
                if is_ours {
                    self.handle_client_message(now, id, &data.data);
                }
            }
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                self.ended.push((id, "ice-disconnected"))
            }
            Event::Closed => self.ended.push((id, "closed")),
            Event::Connected => {
                tracing::debug!(participant = %id, "connected");
                if let Some(client) = self.clients.get_mut(&id) {
                    if client.connected_at.replace(now).is_none() {
                        self.quotas.connected(&client.session.owner);
                    }
                }
            }
            _ => {}
        }
    }

    /// A new downlink estimate for client `id`: its layers follow it.
    fn downlink_estimate(&mut self, now: Instant, id: ParticipantId, kind: &BweKind) {
        let Some(client) = self.clients.get_mut(&id) else { return };
        let Some((source, bits)) = client.downlink.update(kind) else { return };
        self.metrics.receiver_estimate(source, u64::from(bits));
        tracing::trace!(participant = %id, bits, ?source, "downlink estimate");
        let number = client.conference_number;
        if let Some(conference) = self.conferences.get_mut(&number) {
            conference.set_receiver_estimate(now, id, bits);
        }
        self.drain_conference(number);
    }

    fn handle_client_message(&mut self, now: Instant, id: ParticipantId, data: &[u8]) {
        if !self.clients.get_mut(&id).is_some_and(|client| client.messages.try_take(now)) {
            self.metrics.dropped(DropReason::MessageRate);
            return;
        }
        let message =
            (data.len() <= MAX_CLIENT_MESSAGE).then(|| serde_json::from_slice::<ClientMessage>(data).ok()).flatten();
        let Some(message) = message else {
            self.metrics.dropped(DropReason::BadMessage);
            return;
        };
        match message {
            ClientMessage::Hangup => self.ended.push((id, "hangup")),
            ClientMessage::RequestStreams { streams } => {
                let Some(number) = self.clients.get(&id).map(|c| c.conference_number) else { return };
                if let Some(conference) = self.conferences.get_mut(&number) {
                    conference.handle_request_streams(now, id, streams);
                }
                self.drain_conference(number);
            }
        }
    }

    /// A packet from a local publisher.
    fn route_rtp(&mut self, now: Instant, source: ParticipantId, packet: &RtpPacket) {
        let Some(client) = self.clients.get_mut(&source) else { return };
        let Some((stream, codec)) = client.classify(packet) else { return };
        let number = client.conference_number;
        let media = Media {
            stream,
            codec,
            seq: *packet.seq_no,
            timestamp: packet.header.timestamp,
            marker: packet.header.marker,
            keyframe: stream.kind == MediaKind::Video && codec == Codec::Vp8 && is_vp8_keyframe(&packet.payload),
            audio_level: packet.header.ext_vals.audio_level.map(|level| level.unsigned_abs().min(127)),
            voice_activity: packet.header.ext_vals.voice_activity.unwrap_or(false),
            payload: packet.payload.clone(),
            received: now,
        };
        self.route_media(now, number, &media);
    }

    /// The packet path: one packet in, a write into every slot that carries
    /// it and one frame onto every relay link it must cross.
    fn route_media(&mut self, now: Instant, number: u64, media: &Media) {
        let Some(conference) = self.conferences.get_mut(&number) else { return };
        let incoming = IncomingRtp {
            stream: media.stream,
            seq: media.seq,
            timestamp: media.timestamp,
            keyframe: media.keyframe,
            size: media.payload.len(),
            audio_level: media.audio_level,
        };
        self.routes.clear();
        conference.handle_rtp(now, &incoming, &mut self.routes);
        for forward in self.routes.slots.drain(..) {
            let Some(receiver) = self.clients.get_mut(&forward.receiver) else { continue };
            if !receiver.media_ready(now) {
                continue;
            }
            if receiver.write_rtp(forward.slot, forward.seq, forward.timestamp, media) {
                self.metrics.rtp_packets_forwarded.inc();
                self.worker_metrics.packets_forwarded.inc();
                self.metrics.rtp_bytes_forwarded.inc_by(media.payload.len() as u64);
                if !receiver.dirty {
                    receiver.dirty = true;
                    self.dirty.push(forward.receiver);
                }
            } else {
                self.metrics.dropped(DropReason::NoCodec);
            }
        }
        if let Some(codec) = relay_codec(media.codec) {
            for link in self.routes.links.drain(..) {
                let (Some(channel), Some(l)) = (self.channels.channel(number, link), self.links.get(&link)) else {
                    continue;
                };
                let frame = MediaFrame {
                    channel,
                    publisher: media.stream.participant.0,
                    kind: media.stream.kind,
                    layer: media.stream.layer,
                    codec,
                    marker: media.marker,
                    keyframe: media.keyframe,
                    audio_level: media.audio_level,
                    voice_activity: media.voice_activity,
                    seq: media.seq,
                    timestamp: media.timestamp,
                    payload: &media.payload,
                };
                l.send_media(&frame, &mut self.relay_arena);
            }
        }
        self.drain_conference(number);
    }

    fn link_up(
        &mut self,
        link: LinkId,
        peer_domain: String,
        connection: quinn::Connection,
        control: tokio::sync::mpsc::Sender<Control>,
        routes: super::relay_routes::RouteSender,
    ) {
        let now = Instant::now();
        let bytes_out = self.metrics.relay_bytes(&peer_domain, "out");
        self.metrics.link_state(&peer_domain, "up");
        let entry = self.links.entry(link).or_insert_with(|| Link {
            peer_domain,
            connection: None,
            control: None,
            routes: None,
            bytes_out,
        });
        // A peer that dials again has given up on its old connection, even if
        // this side has not noticed yet.
        if let Some(old) = entry.connection.replace(connection) {
            old.close(0u32.into(), b"replaced by a newer connection");
        }
        entry.control = Some(control);
        entry.routes = Some(routes);
        // A federated node re-attaches its conferences. The anchor waits for
        // those attaches: a peer that restarted has forgotten its channels,
        // and the participants of those it does not re-attach leave after
        // `federation.link_timeout`.
        for (number, channel) in self.channels.on_link(link) {
            // The new connection's reader knows no routes yet.
            self.route(link, RouteUpdate::Route { channel, worker: self.index });
            let attachment = self.attachments.get(&(link, channel));
            if let (Some((conf_id, token)), Some(l)) = (attachment, self.links.get(&link)) {
                l.send_control(Control::Attach { channel, conf_id: conf_id.clone(), relay_token: token.clone() });
            }
            if let Some(conference) = self.conferences.get_mut(&number) {
                if attachment.is_some() {
                    conference.attach_link(now, link);
                } else {
                    conference.link_lost(now, link);
                }
            }
            self.drain_conference(number);
        }
    }

    fn link_down(&mut self, link: LinkId, connection: usize) {
        let now = Instant::now();
        let Some(l) = self.links.get_mut(&link) else { return };
        if l.connection.as_ref().is_none_or(|current| current.stable_id() != connection) {
            return;
        }
        l.connection = None;
        l.control = None;
        l.routes = None;
        self.metrics.link_state(&l.peer_domain, "down");
        for (number, _) in self.channels.on_link(link) {
            if let Some(conference) = self.conferences.get_mut(&number) {
                conference.link_lost(now, link);
            }
        }
    }

    fn relay_datagram(&mut self, link: LinkId, datagram: &[u8]) {
        let now = Instant::now();
        let Ok(frame) = MediaFrame::decode(datagram) else {
            self.metrics.dropped(DropReason::Malformed);
            return;
        };
        let Some(number) = self.channels.conference(link, frame.channel) else { return };
        let Some(participant) = self.conferences.get(&number).and_then(|c| c.remote_participant(link, frame.publisher))
        else {
            return;
        };
        let media = Media {
            stream: StreamKey { participant, kind: frame.kind, layer: frame.layer },
            codec: str0m_codec(frame.codec),
            seq: frame.seq,
            timestamp: frame.timestamp,
            marker: frame.marker,
            keyframe: frame.keyframe,
            audio_level: frame.audio_level,
            voice_activity: frame.voice_activity,
            payload: frame.payload.into(),
            received: now,
        };
        self.route_media(now, number, &media);
    }

    fn relay_control(&mut self, link: LinkId, message: Control) {
        let now = Instant::now();
        match message {
            // Attaches arrive as `Command::RelayAttach`, placed on this worker.
            Control::Attach { .. } | Control::Hello { .. } => {}
            Control::Refused { channel, reason } => {
                tracing::warn!(%link, "anchor refused the conference: {reason}");
                self.detach(now, link, channel);
            }
            Control::Detach { channel } => self.detach(now, link, channel),
            Control::Roster { channel, participants } => {
                let Some(number) = self.channels.conference(link, channel) else { return };
                let Self { conferences, next_participant, links, attachments, domain, metrics, limits, .. } = self;
                let (Some(conference), Some(l)) = (conferences.get_mut(&number), links.get(&link)) else { return };
                let source = if attachments.contains_key(&(link, channel)) {
                    RosterSource::Anchor { own_domain: domain }
                } else {
                    RosterSource::FederatedPeer { domain: &l.peer_domain }
                };
                let room = limits.max_conference_size.saturating_sub(conference.participants_not_behind(link));
                let admitted = roster_policy::admit(participants, source, room);
                if admitted.foreign + admitted.over_capacity > 0 {
                    metrics.federation_rejected_many(Rejection::RosterDomain.label(), admitted.foreign);
                    metrics.federation_rejected_many(Rejection::RosterCapacity.label(), admitted.over_capacity);
                    let (foreign, over_capacity) = (admitted.foreign, admitted.over_capacity);
                    tracing::warn!(peer = %l.peer_domain, foreign, over_capacity, "roster entries dropped");
                }
                conference.handle_roster(now, link, admitted.entries, || next_id(next_participant));
                self.drain_conference(number);
                self.update_gauges();
            }
            Control::Keyframe { channel, publisher, layer } => {
                let Some(number) = self.channels.conference(link, channel) else { return };
                let publisher = ParticipantId(publisher);
                let stream =
                    StreamKey { participant: publisher, kind: MediaKind::Video, layer: layer.or(Some(Layer::High)) };
                if let Some(conference) = self.conferences.get_mut(&number) {
                    conference.handle_relayed_keyframe_request(now, link, stream);
                }
                self.drain_conference(number);
            }
            Control::Subscribe { channel, streams } => {
                let Some(number) = self.channels.conference(link, channel) else { return };
                if let Some(conference) = self.conferences.get_mut(&number) {
                    conference.handle_subscription(link, streams);
                }
                self.drain_conference(number);
            }
            Control::Layers { channel, publishers } => {
                let Some(number) = self.channels.conference(link, channel) else { return };
                if let Some(conference) = self.conferences.get_mut(&number) {
                    conference.handle_layer_report(now, link, publishers);
                }
            }
        }
    }

    /// A peer attaches conference `key` (anchored here) as `channel`.
    fn relay_attach(&mut self, link: LinkId, channel: u32, key: &ConferenceKey) {
        let now = Instant::now();
        if let Some(rejection) = self.attach_refusal(link, channel, key) {
            self.metrics.federation_rejected(rejection.label());
            tracing::info!(%link, reason = rejection.label(), "relay attach refused");
            if let Some(l) = self.links.get(&link) {
                l.send_control(Control::Refused { channel, reason: rejection.label().into() });
            }
            if self.channels.conference(link, channel).is_none() {
                self.route(link, RouteUpdate::Unroute { channel, worker: self.index });
            }
            return;
        }
        let (number, _) = self.conference_number(key);
        if let Some(displaced) = self.map_channel(link, channel, number) {
            self.leave_link(now, link, displaced);
        }
        if let Some(conference) = self.conferences.get_mut(&number) {
            conference.attach_link(now, link);
        }
        self.drain_conference(number);
    }

    /// Maps `(link, channel)` to conference `number` and tells the link's
    /// reader; returns the conference the channel carried before, if another.
    fn map_channel(&mut self, link: LinkId, channel: u32, number: u64) -> Option<u64> {
        let vacated = self.channels.channel(number, link).filter(|old| *old != channel);
        let displaced = self.channels.insert(link, channel, number);
        if let Some(old) = vacated {
            self.route(link, RouteUpdate::Unroute { channel: old, worker: self.index });
        }
        self.route(link, RouteUpdate::Route { channel, worker: self.index });
        displaced
    }

    fn unmap_channel(&mut self, link: LinkId, channel: u32) {
        self.channels.remove(link, channel);
        self.attachments.remove(&(link, channel));
        self.route(link, RouteUpdate::Unroute { channel, worker: self.index });
    }

    /// Tells `link`'s reader where one of its channels goes now.
    fn route(&self, link: LinkId, update: RouteUpdate) {
        if let Some(routes) = self.links.get(&link).and_then(|l| l.routes.as_ref()) {
            let _ = routes.send(update);
        }
    }

    /// Why an attach of conference `key` as `channel` on `link` is refused,
    /// if it is: a new channel beyond the link's conference cap, or one
    /// that would start a conference while draining.
    fn attach_refusal(&self, link: LinkId, channel: u32, key: &ConferenceKey) -> Option<Rejection> {
        let number = self.conference_numbers.get(key);
        if self.draining && number.is_none() {
            return Some(Rejection::Draining);
        }
        // A re-attach (the same conference, or a channel the link already
        // uses) adds nothing to the link's count.
        let on_link = number.is_some_and(|n| self.channels.channel(*n, link).is_some());
        if on_link || self.channels.conference(link, channel).is_some() {
            return None;
        }
        (self.channels.on_link(link).len() >= self.max_conferences_per_link).then_some(Rejection::ConferenceCapacity)
    }

    fn detach(&mut self, now: Instant, link: LinkId, channel: u32) {
        let Some(number) = self.channels.conference(link, channel) else { return };
        self.unmap_channel(link, channel);
        self.leave_link(now, link, number);
    }

    /// Conference `number` no longer travels on `link`: the participants
    /// behind it leave.
    fn leave_link(&mut self, now: Instant, link: LinkId, number: u64) {
        if let Some(conference) = self.conferences.get_mut(&number) {
            conference.detach_link(now, link);
        }
        self.drain_conference(number);
        self.remove_if_empty(number);
        self.update_gauges();
    }

    /// Asks a stream's publisher for a keyframe: the client itself, or the
    /// SFT it is connected to.
    fn request_keyframe(&mut self, number: u64, stream: StreamKey) {
        let origin = self.conferences.get(&number).and_then(|c| c.origin(stream.participant));
        match origin {
            Some(Origin::Local) => {
                if let Some(client) = self.clients.get_mut(&stream.participant) {
                    client.request_keyframe(stream);
                    if !client.dirty {
                        client.dirty = true;
                        self.dirty.push(stream.participant);
                    }
                }
            }
            Some(Origin::Remote { link, remote_id }) => {
                if let (Some(channel), Some(l)) = (self.channels.channel(number, link), self.links.get(&link)) {
                    l.send_control(Control::Keyframe { channel, publisher: remote_id, layer: stream.layer });
                }
            }
            None => {}
        }
    }

    /// Drops a conference with no participant and no link left.
    fn remove_if_empty(&mut self, number: u64) {
        if !self.conferences.get(&number).is_some_and(Conference::is_empty) {
            return;
        }
        self.conferences.remove(&number);
        let key = self.conference_numbers.iter().find(|(_, n)| **n == number).map(|(key, _)| key.clone());
        if let Some(key) = key {
            self.conference_numbers.remove(&key);
            self.placement.ended(&key);
        }
        for link in self.channels.links_of(number) {
            if let Some(channel) = self.channels.channel(number, link) {
                self.unmap_channel(link, channel);
            }
        }
    }

    /// The client is ready for media: its slots may have switched before it
    /// could receive, so their sources are asked for a keyframe.
    fn start_media(&mut self, now: Instant, id: ParticipantId) {
        let Some(client) = self.clients.get_mut(&id) else { return };
        client.media_started = true;
        let (number, video_slots) = (client.conference_number, client.video_slot_count());
        if let Some(conference) = self.conferences.get_mut(&number) {
            for index in 0..video_slots {
                conference.handle_keyframe_request(now, id, SlotRef { kind: MediaKind::Video, index });
            }
        }
        self.drain_conference(number);
    }

    /// Carries out what the conference core asked for.
    fn drain_conference(&mut self, number: u64) {
        loop {
            let Some(conference) = self.conferences.get_mut(&number) else { return };
            let Some(output) = conference.poll_output() else { return };
            match output {
                CoreOutput::Send { to, message } => {
                    if let Some(client) = self.clients.get_mut(&to) {
                        client.send_message(message);
                        if !client.dirty {
                            client.dirty = true;
                            self.dirty.push(to);
                        }
                    }
                }
                CoreOutput::RequestKeyframe(stream) => self.request_keyframe(number, stream),
                CoreOutput::ProbeToward { receiver, bits_per_second } => {
                    if let Some(client) = self.clients.get_mut(&receiver) {
                        client.probe_toward(bits_per_second);
                        self.mark_dirty(receiver);
                    }
                }
                CoreOutput::Roster { link, participants } => {
                    self.send_control(number, link, |channel| Control::Roster { channel, participants });
                }
                CoreOutput::Subscribe { link, streams } => {
                    self.send_control(number, link, |channel| Control::Subscribe { channel, streams });
                }
                CoreOutput::ReportLayers { link, publishers } => {
                    self.send_control(number, link, |channel| Control::Layers { channel, publishers });
                }
            }
        }
    }

    /// Sends a control message about conference `number` over `link`, on
    /// the channel it travels on there.
    fn send_control(&self, number: u64, link: LinkId, message: impl FnOnce(u32) -> Control) {
        if let (Some(channel), Some(l)) = (self.channels.channel(number, link), self.links.get(&link)) {
            l.send_control(message(channel));
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

    fn remove(&mut self, now: Instant, id: ParticipantId, cause: &'static str) {
        let Some(mut client) = self.clients.remove(&id) else { return };
        client.rtc.disconnect();
        self.sources.remove_session(&client.ufrag, &client.remote_addrs);
        self.sessions.remove(&(client.conference.conf_id.clone(), client.session.sessid.clone()));
        let number = client.conference_number;
        if let Some(conference) = self.conferences.get_mut(&number) {
            conference.remove_participant(now, id);
        }
        self.drain_conference(number);
        // A federated node whose last client left detaches from the anchor.
        let no_local = self.conferences.get(&number).is_some_and(|c| c.counts().0 == 0);
        if no_local && client.conference.anchor_domain != self.domain {
            for link in self.channels.links_of(number) {
                if let (Some(channel), Some(l)) = (self.channels.channel(number, link), self.links.get(&link)) {
                    l.send_control(Control::Detach { channel });
                }
                if let Some(channel) = self.channels.channel(number, link) {
                    self.detach(now, link, channel);
                }
            }
        }
        self.remove_if_empty(number);
        self.quotas.ended(&client.session.owner, client.connected_at.is_some());
        self.metrics.ended(cause);
        self.update_gauges();
        tracing::info!(participant = %id, conf = %client.conference.conf_id, cause, "left");
    }

    /// Publishes this worker's counts: its own series, and its share of
    /// the process-wide ones (as the change since it last published).
    fn update_gauges(&mut self) {
        let remote: usize = self.conferences.values().map(|c| c.counts().1).sum();
        let now = Published {
            local: self.clients.len() as i64,
            remote: remote as i64,
            conferences: self.conferences.len() as i64,
        };
        self.metrics.local_participants().add(now.local - self.published.local);
        self.metrics.remote_participants().add(now.remote - self.published.remote);
        self.metrics.conferences.add(now.conferences - self.published.conferences);
        self.worker_metrics.sessions.set(now.local);
        self.worker_metrics.conferences.set(now.conferences);
        self.published = now;
    }
}

/// Where polling a client's `Rtc` puts its output.
struct Sink<'a> {
    metrics: &'a Metrics,
    outgoing: &'a mut Vec<Datagram>,
    events: &'a mut Vec<(ParticipantId, Event)>,
    ended: &'a mut Vec<(ParticipantId, &'static str)>,
}

/// Drains a client's `Rtc` until it asks for a timeout. str0m holds at most
/// one received RTP packet until polled, so this must run after every input.
fn poll_rtc(client: &mut Client, sink: &mut Sink) {
    client.dirty = false;
    loop {
        match client.rtc.poll_output() {
            Ok(Output::Timeout(t)) => {
                client.next_timeout = Some(t);
                return;
            }
            Ok(Output::Transmit(t)) => {
                sink.outgoing.push(Datagram { destination: t.destination, contents: t.contents.into() })
            }
            Ok(Output::Event(event)) => sink.events.push((client.id, event)),
            Err(e) => {
                tracing::debug!(participant = %client.id, "webrtc error: {e}");
                sink.ended.push((client.id, "webrtc-error"));
                return;
            }
        }
    }
}

/// Hands one datagram to the session it belongs to and polls that session.
fn handle_datagram(
    now: Instant,
    source: SocketAddr,
    local: SocketAddr,
    datagram: &[u8],
    clients: &mut HashMap<ParticipantId, Client>,
    sources: &mut Sources,
    sink: &mut Sink,
) {
    let Ok(receive) = Receive::new(Protocol::Udp, source, local, datagram) else {
        sink.metrics.dropped(DropReason::Malformed);
        return;
    };
    let input = Input::Receive(now, receive);
    let known = sources.known(&source);
    // A new address: only a STUN request naming a session's ufrag, which
    // that session accepts, is let in.
    let claimed = || sources.claimed(datagram).filter(|id| clients.get(id).is_some_and(|c| c.rtc.accepts(&input)));
    let Some(id) = known.or_else(claimed) else {
        sink.metrics.dropped(DropReason::UnknownSource);
        return;
    };
    let Some(client) = clients.get_mut(&id) else { return };
    if known.is_none() {
        sources.learn(source, id, &mut client.remote_addrs, client.last_source);
    }
    client.last_source = Some(source);
    if let Err(e) = client.rtc.handle_input(input) {
        tracing::debug!(participant = %id, "datagram rejected: {e}");
        sink.metrics.dropped(DropReason::Rejected);
    }
    client.last_rx = now;
    poll_rtc(client, sink);
}

/// Hands out participant ids, local and remote alike, from one counter.
fn next_id(counter: &mut u64) -> ParticipantId {
    let id = ParticipantId(*counter);
    *counter += 1;
    id
}

fn participant_spec(identity: crate::core::ids::Identity, summary: &OfferSummary) -> ParticipantSpec {
    ParticipantSpec {
        identity,
        publishes_audio: summary.audio_publish.is_some(),
        video_layers: summary.video_publish.as_ref().map(|v| v.layers.clone()).unwrap_or_default(),
        audio_slot_mids: summary.audio_slots.clone(),
        video_slot_mids: summary.video_slots.clone(),
    }
}
