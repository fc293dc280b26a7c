//! Identifiers and small value types shared by the whole core.
//!
//! Everything here is parsed once at the edge ("parse, don't validate"), so
//! the rest of the core never re-checks a conference id or a layer name.

use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A participant, unique within one SFT process for its lifetime.
///
/// Ids are handed out in increasing order, so ordering by id is join order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ParticipantId(pub u64);

/// A domain name as this SFT keys and compares it: DNS names are
/// case-insensitive and may end in a dot, but the domain's links, tokens
/// and channel halves must be the same for every spelling of it.
pub fn canonical_domain(domain: &str) -> String {
    domain.trim_end_matches('.').to_ascii_lowercase()
}

impl fmt::Display for ParticipantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "p{}", self.0)
    }
}

/// A relay link to another SFT, numbered by the federation layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LinkId(pub u32);

impl fmt::Display for LinkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "link{}", self.0)
    }
}

/// Where a participant's client is connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    /// On this SFT.
    Local,
    /// On another SFT, reached over `link`, which calls it `remote_id`.
    Remote { link: LinkId, remote_id: u64 },
}

/// A conference id as `docs/contract.md` allows it: 1 to 128 of `[A-Za-z0-9._~-]`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConfId(String);

#[derive(Debug, Error, PartialEq, Eq)]
#[error("conf_id must be 1 to 128 characters of [A-Za-z0-9._~-]")]
pub struct InvalidConfId;

impl ConfId {
    pub const MAX_LEN: usize = 128;

    pub fn parse(raw: &str) -> Result<Self, InvalidConfId> {
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '~' | '-');
        if raw.is_empty() || raw.len() > Self::MAX_LEN || !raw.chars().all(allowed) {
            return Err(InvalidConfId);
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ConfId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A conference is named by the domain of its anchor SFT and its id there.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConferenceKey {
    pub anchor_domain: String,
    pub conf_id: ConfId,
}

/// Who a participant is, as every client sees it in CONFPART.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Identity {
    pub userid: String,
    pub clientid: String,
    pub domain: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MediaKind {
    Audio,
    Video,
}

/// A simulcast layer, named by its rid. Ordered low to high.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Layer {
    #[serde(rename = "l")]
    Low,
    #[serde(rename = "m")]
    Medium,
    #[serde(rename = "h")]
    High,
}

impl Layer {
    pub const ALL: [Layer; 3] = [Layer::Low, Layer::Medium, Layer::High];

    /// Parses a simulcast rid as `docs/contract.md` names them (`l`, `m`, `h`).
    pub fn from_rid(rid: &str) -> Option<Self> {
        match rid {
            "l" => Some(Self::Low),
            "m" => Some(Self::Medium),
            "h" => Some(Self::High),
            _ => None,
        }
    }

    pub fn rid(self) -> &'static str {
        match self {
            Self::Low => "l",
            Self::Medium => "m",
            Self::High => "h",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// One published stream: a participant's audio, or one layer of its video.
///
/// A single-encoding (non-simulcast) video stream counts as layer `High`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StreamKey {
    pub participant: ParticipantId,
    pub kind: MediaKind,
    pub layer: Option<Layer>,
}

impl StreamKey {
    pub fn audio(participant: ParticipantId) -> Self {
        Self { participant, kind: MediaKind::Audio, layer: None }
    }

    pub fn video(participant: ParticipantId, layer: Layer) -> Self {
        Self { participant, kind: MediaKind::Video, layer: Some(layer) }
    }
}

/// A receive slot of one participant: the n-th `recvonly` m-line of a kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SlotRef {
    pub kind: MediaKind,
    pub index: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conf_id_accepts_the_contract_alphabet() {
        assert!(ConfId::parse("Team-standup_2026.11~a").is_ok());
        assert!(ConfId::parse(&"a".repeat(128)).is_ok());
    }

    #[test]
    fn conf_id_rejects_everything_else() {
        for bad in ["", "a b", "a/b", "é", "a%20", &"a".repeat(129)] {
            assert_eq!(ConfId::parse(bad), Err(InvalidConfId), "{bad:?}");
        }
    }

    #[test]
    fn layers_order_low_to_high() {
        assert!(Layer::Low < Layer::Medium && Layer::Medium < Layer::High);
        for layer in Layer::ALL {
            assert_eq!(Layer::from_rid(layer.rid()), Some(layer));
        }
        assert_eq!(Layer::from_rid("x"), None);
    }
}
