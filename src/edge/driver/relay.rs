//! The worker's side of the relay links: links up and down, conferences
//! attached to and detached from them, frames and control messages in.

use super::*;

impl Driver {
    pub(super) fn link_up(
        &mut self,
        link: LinkId,
        peer_domain: String,
        connection: quinn::Connection,
        control: tokio::sync::mpsc::Sender<Control>,
        routes: crate::edge::relay_routes::RouteSender,
    ) {
        let now = Instant::now();
        let bytes_out = self.metrics.relay_bytes(&peer_domain, "out");
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
            let attachment = self.attachments.get(&(link, channel));
            if attachment.is_some() {
                // A channel this worker named: the new connection's reader
                // learns its route before the peer hears of it again.
                self.route(link, RouteUpdate::Route { channel, worker: self.index });
            }
            if let (Some(attachment), Some(l)) = (attachment, self.links.get(&link)) {
                l.send_control(attachment.attach(channel));
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

    pub(super) fn link_down(&mut self, link: LinkId, connection: usize) {
        let now = Instant::now();
        let Some(l) = self.links.get_mut(&link) else { return };
        if l.connection.as_ref().is_none_or(|current| current.stable_id() != connection) {
            return;
        }
        l.connection = None;
        l.control = None;
        l.routes = None;
        for (number, _) in self.channels.on_link(link) {
            if let Some(conference) = self.conferences.get_mut(&number) {
                conference.link_lost(now, link);
            }
        }
    }

    pub(super) fn relay_datagram(&mut self, link: LinkId, datagram: &[u8]) {
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

    pub(super) fn relay_control(&mut self, link: LinkId, message: Control) {
        let now = Instant::now();
        match message {
            // Attaches arrive as `Command::RelayAttach`, placed on this worker.
            Control::Attach { .. } | Control::Hello { .. } => {}
            Control::Refused { channel, reason } => match self.attachments.get(&(link, channel)) {
                // The link's keeper asks the anchor again (a restarted anchor
                // with another key refuses the token it issued before).
                Some(attachment) => {
                    tracing::info!(%link, channel, conf = attachment.conf_id, "anchor refused the conference: {reason}");
                    let conf_id = attachment.conf_id.clone();
                    attachment.lease.refused(Refusal { worker: self.index, channel, conf_id, reason });
                }
                None => self.detach(now, link, channel),
            },
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

    /// Attaches the federated conference on `channel` again with `token`.
    pub(super) fn reattach(&mut self, link: LinkId, channel: u32, token: String) {
        let Some(attachment) = self.attachments.get_mut(&(link, channel)) else { return };
        attachment.token = token;
        if let Some(l) = self.links.get(&link) {
            l.send_control(attachment.attach(channel));
        }
    }

    /// A peer attaches conference `key` (anchored here) as `channel`.
    pub(super) fn relay_attach(&mut self, link: LinkId, channel: u32, key: &ConferenceKey) {
        let now = Instant::now();
        if let Some(rejection) = self.attach_refusal(key) {
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
        // The peer named this channel: its route is the link router's already.
        if let Some(displaced) = self.map_channel(link, channel, number, false) {
            self.leave_link(now, link, displaced);
        }
        if let Some(conference) = self.conferences.get_mut(&number) {
            conference.attach_link(now, link);
        }
        self.drain_conference(number);
        self.update_gauges();
    }

    /// Maps `(link, channel)` to conference `number`, telling the link's
    /// reader the route when this worker named the channel (`announce`);
    /// returns the conference the channel carried before, if another.
    pub(super) fn map_channel(&mut self, link: LinkId, channel: u32, number: u64, announce: bool) -> Option<u64> {
        let vacated = self.channels.channel(number, link).filter(|old| *old != channel);
        let displaced = self.channels.insert(link, channel, number);
        if let Some(old) = vacated {
            self.route(link, RouteUpdate::Unroute { channel: old, worker: self.index });
        }
        if announce {
            self.route(link, RouteUpdate::Route { channel, worker: self.index });
        }
        displaced
    }

    pub(super) fn unmap_channel(&mut self, link: LinkId, channel: u32) {
        self.channels.remove(link, channel);
        self.attachments.remove(&(link, channel));
        self.route(link, RouteUpdate::Unroute { channel, worker: self.index });
    }

    /// Tells `link`'s reader where one of its channels goes now.
    pub(super) fn route(&self, link: LinkId, update: RouteUpdate) {
        if let Some(routes) = self.links.get(&link).and_then(|l| l.routes.as_ref()) {
            let _ = routes.send(update);
        }
    }

    /// Why an attach of conference `key` is refused, if it is: one that
    /// would start a conference while draining. (The link's conference cap
    /// is the link router's: it sees every worker's channels.)
    pub(super) fn attach_refusal(&self, key: &ConferenceKey) -> Option<Rejection> {
        (self.draining && !self.conference_numbers.contains_key(key)).then_some(Rejection::Draining)
    }

    pub(super) fn detach(&mut self, now: Instant, link: LinkId, channel: u32) {
        let Some(number) = self.channels.conference(link, channel) else { return };
        self.unmap_channel(link, channel);
        self.leave_link(now, link, number);
    }

    /// Conference `number` no longer travels on `link`: the participants
    /// behind it leave.
    pub(super) fn leave_link(&mut self, now: Instant, link: LinkId, number: u64) {
        if let Some(conference) = self.conferences.get_mut(&number) {
            conference.detach_link(now, link);
        }
        self.drain_conference(number);
        self.remove_if_empty(number);
        self.update_gauges();
    }
}
