//! The data channel messages of `docs/contract.md` section 3.2, as typed values.

use serde::{Deserialize, Serialize};

use super::ids::{Layer, MediaKind};

/// Server → client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum ServerMessage {
    #[serde(rename = "CONFPART")]
    ConfPart { seq: u64, participants: Vec<ParticipantInfo>, slots: Vec<SlotInfo> },
    #[serde(rename = "SPEAKERS")]
    Speakers { speakers: Vec<SpeakerInfo> },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParticipantInfo {
    pub userid: String,
    pub clientid: String,
    pub domain: String,
    pub audio: bool,
    pub video: bool,
    pub layers: Vec<Layer>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotInfo {
    pub mid: String,
    pub kind: MediaKind,
    pub userid: String,
    pub clientid: String,
    pub domain: String,
    pub layer: Option<Layer>,
    /// The receiver's bandwidth does not carry even this source's lowest
    /// layer; the slot is empty until it does. Absent when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpeakerInfo {
    pub userid: String,
    pub clientid: String,
    pub domain: String,
    /// RFC 6464 level: 0 is loudest, 127 silence.
    pub level: u8,
}

/// Client → server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum ClientMessage {
    #[serde(rename = "REQSTREAMS")]
    RequestStreams { streams: Vec<StreamRequest> },
    #[serde(rename = "HANGUP")]
    Hangup,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamRequest {
    pub userid: String,
    pub clientid: String,
    /// Absent means the receiver's own domain's participant set, i.e. any
    /// domain: single-domain clients often leave it out.
    #[serde(default)]
    pub domain: Option<String>,
    pub quality: Quality,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quality {
    High,
    Medium,
    Low,
    Off,
}

impl Quality {
    /// The simulcast layer this quality asks for; `None` for `off`.
    pub fn layer(self) -> Option<Layer> {
        match self {
            Self::High => Some(Layer::High),
            Self::Medium => Some(Layer::Medium),
            Self::Low => Some(Layer::Low),
            Self::Off => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confpart_serializes_as_the_contract_shows() {
        let msg = ServerMessage::ConfPart {
            seq: 3,
            participants: vec![ParticipantInfo {
                userid: "alice".into(),
                clientid: "laptop".into(),
                domain: "a.example".into(),
                audio: true,
                video: true,
                layers: vec![Layer::Low, Layer::Medium, Layer::High],
            }],
            slots: vec![
                SlotInfo {
                    mid: "3".into(),
                    kind: MediaKind::Audio,
                    userid: "alice".into(),
                    clientid: "laptop".into(),
                    domain: "a.example".into(),
                    layer: None,
                    paused: false,
                },
                SlotInfo {
                    mid: "4".into(),
                    kind: MediaKind::Video,
                    userid: "alice".into(),
                    clientid: "laptop".into(),
                    domain: "a.example".into(),
                    layer: None,
                    paused: true,
                },
            ],
        };
        let json: serde_json::Value = serde_json::to_value(&msg).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "type": "CONFPART", "seq": 3,
                "participants": [{"userid": "alice", "clientid": "laptop", "domain": "a.example",
                                  "audio": true, "video": true, "layers": ["l", "m", "h"]}],
                "slots": [{"mid": "3", "kind": "audio", "userid": "alice", "clientid": "laptop",
                           "domain": "a.example", "layer": null},
                          {"mid": "4", "kind": "video", "userid": "alice", "clientid": "laptop",
                           "domain": "a.example", "layer": null, "paused": true}]
            })
        );
    }

    #[test]
    fn client_messages_parse() {
        let req: ClientMessage = serde_json::from_str(
            r#"{"type":"REQSTREAMS","streams":[{"userid":"b","clientid":"c","domain":"d","quality":"low"}]}"#,
        )
        .unwrap();
        let ClientMessage::RequestStreams { streams } = req else { panic!("{req:?}") };
        assert_eq!(streams[0].quality.layer(), Some(Layer::Low));
        assert_eq!(serde_json::from_str::<ClientMessage>(r#"{"type":"HANGUP"}"#).unwrap(), ClientMessage::Hangup);
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"NOPE"}"#).is_err());
    }

    /// Mutated data-channel messages: parsed or refused, never a panic.
    #[test]
    fn fuzzed_client_messages_are_parsed_or_refused() {
        let request = r#"{"type":"REQSTREAMS","streams":[{"userid":"b","clientid":"c","domain":"d","quality":"low"}]}"#;
        let mut parsed = 0;
        crate::fuzz::run(31, &[request.as_bytes(), br#"{"type":"HANGUP"}"#], |input| {
            parsed += usize::from(serde_json::from_slice::<ClientMessage>(input).is_ok());
        });
        assert!(parsed > 0);
    }
}
