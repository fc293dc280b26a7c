//! The worker's registry: sessions joining and leaving, the conferences they
//! create and end, and which session each received datagram is for.

use super::*;

impl Driver {
    pub(super) fn join(&mut self, now: Instant, request: JoinRequest) -> Result<String, JoinError> {
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
        if let (true, Some(AnchorLink { link, token, lease })) = (created, request.anchor_link) {
            // Federated: the anchor learns the channel from the attach.
            let channel = channel_of(number, &self.domain, &request.conference.anchor_domain);
            self.map_channel(link, channel, number, true);
            let conf_id = request.conference.conf_id.as_str().to_owned();
            if let Some(l) = self.links.get(&link) {
                l.send_control(Control::Attach { channel, conf_id: conf_id.clone(), relay_token: token.clone() });
            }
            self.attachments.insert((link, channel), Attachment { conf_id, token, lease });
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
    pub(super) fn conference_number(&mut self, key: &ConferenceKey) -> (u64, bool) {
        if let Some(number) = self.conference_numbers.get(key) {
            return (*number, false);
        }
        let number = self.next_conference;
        self.next_conference += self.conference_step;
        self.conference_numbers.insert(key.clone(), number);
        self.conferences.insert(number, Conference::new(self.conference_config.clone()));
        (number, true)
    }

    pub(super) fn remove(&mut self, now: Instant, id: ParticipantId, cause: &'static str) {
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

    /// Drops a conference with no participant and no link left.
    pub(super) fn remove_if_empty(&mut self, number: u64) {
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

    pub(super) fn receive(&mut self) {
        for _ in 0..MAX_BATCHES_PER_WAKE {
            let now = Instant::now();
            let Self { socket, clients, sources, public_addr, metrics, outgoing, events, ended, .. } = self;
            let mut sink = Sink { metrics, outgoing, events, ended };
            let received = socket.recv_batch(|source, datagram| {
                handle_datagram(now, source, *public_addr, datagram, clients, sources, &mut sink);
            });
            match received {
                Ok(0) => break,
                // Settled once per wake-up (by `run`), not per batch: each
                // receiver is ticked and polled once for all it was sent.
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!("media socket receive failed: {e}");
                    break;
                }
            }
        }
    }
}

/// Where polling a client's `Rtc` puts its output.
pub(super) struct Sink<'a> {
    pub(super) metrics: &'a Metrics,
    pub(super) outgoing: &'a mut Vec<Datagram>,
    pub(super) events: &'a mut Vec<(ParticipantId, Event)>,
    pub(super) ended: &'a mut Vec<(ParticipantId, &'static str)>,
}

/// Drains a client's `Rtc` until it asks for a timeout. str0m holds at most
/// one received RTP packet until polled, so this must run after every input.
pub(super) fn poll_rtc(client: &mut Client, sink: &mut Sink) {
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
pub(super) fn handle_datagram(
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
pub(super) fn next_id(counter: &mut u64) -> ParticipantId {
    let id = ParticipantId(*counter);
    *counter += 1;
    id
}

pub(super) fn participant_spec(identity: crate::core::ids::Identity, summary: &OfferSummary) -> ParticipantSpec {
    ParticipantSpec {
        identity,
        publishes_audio: summary.audio_publish.is_some(),
        video_layers: summary.video_publish.as_ref().map(|v| v.layers.clone()).unwrap_or_default(),
        audio_slot_mids: summary.audio_slots.clone(),
        video_slot_mids: summary.video_slots.clone(),
    }
}
