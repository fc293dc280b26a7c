//! What a client's str0m session reports (events, data channel messages)
//! and what the worker does about it.

use super::*;

impl Driver {
    pub(super) fn handle_event(&mut self, now: Instant, id: ParticipantId, event: Event) {
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
    pub(super) fn downlink_estimate(&mut self, now: Instant, id: ParticipantId, kind: &BweKind) {
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

    pub(super) fn handle_client_message(&mut self, now: Instant, id: ParticipantId, data: &[u8]) {
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

    /// The client is ready for media: its slots may have switched before it
    /// could receive, so their sources are asked for a keyframe.
    pub(super) fn start_media(&mut self, now: Instant, id: ParticipantId) {
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
}
