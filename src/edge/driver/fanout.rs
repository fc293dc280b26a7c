//! Media fan-out: a packet from a publisher or a relay link into every
//! receiver's slot and onto every link that carries it, and the conference
//! core's other outputs carried out.

use super::*;

impl Driver {
    /// A packet from a local publisher.
    pub(super) fn route_rtp(&mut self, now: Instant, source: ParticipantId, packet: &RtpPacket) {
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
    pub(super) fn route_media(&mut self, now: Instant, number: u64, media: &Media) {
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

    /// Carries out what the conference core asked for.
    pub(super) fn drain_conference(&mut self, number: u64) {
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

    /// Asks a stream's publisher for a keyframe: the client itself, or the
    /// SFT it is connected to.
    pub(super) fn request_keyframe(&mut self, number: u64, stream: StreamKey) {
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

    /// Sends a control message about conference `number` over `link`, on
    /// the channel it travels on there.
    pub(super) fn send_control(&self, number: u64, link: LinkId, message: impl FnOnce(u32) -> Control) {
        if let (Some(channel), Some(l)) = (self.channels.channel(number, link), self.links.get(&link)) {
            l.send_control(message(channel));
        }
    }
}
