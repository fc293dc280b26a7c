//! Just enough STUN (RFC 8489) to tell which session a Binding request from
//! an address never seen before is for: the USERNAME attribute of a request
//! to us reads `<our ufrag>:<their ufrag>` (RFC 8445 section 7.2.2), and
//! our ufrag is unique per session. So a datagram from an unknown address
//! costs one parse and one map lookup, however many sessions there are,
//! instead of being offered to every session in turn.

const HEADER_LEN: usize = 20;
const BINDING_REQUEST: u16 = 0x0001;
const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
const USERNAME: u16 = 0x0006;

/// The ufrag a Binding request names as ours, or `None` for anything that
/// is not a well-formed Binding request with a `USERNAME`.
pub fn requested_ufrag(datagram: &[u8]) -> Option<&str> {
    let header = datagram.get(..HEADER_LEN)?;
    if u16::from_be_bytes([header[0], header[1]]) != BINDING_REQUEST || header[4..8] != MAGIC_COOKIE {
        return None;
    }
    let length = usize::from(u16::from_be_bytes([header[2], header[3]]));
    let mut attributes = datagram.get(HEADER_LEN..HEADER_LEN + length)?;
    while let Some(head) = attributes.get(..4) {
        let kind = u16::from_be_bytes([head[0], head[1]]);
        let length = usize::from(u16::from_be_bytes([head[2], head[3]]));
        let value = attributes.get(4..4 + length)?;
        if kind == USERNAME {
            let (ours, _theirs) = std::str::from_utf8(value).ok()?.split_once(':')?;
            return Some(ours);
        }
        // Values are padded to a multiple of 4 bytes.
        attributes = attributes.get((4 + length.div_ceil(4) * 4).min(attributes.len())..)?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attribute(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut bytes = kind.to_be_bytes().to_vec();
        bytes.extend_from_slice(&(value.len() as u16).to_be_bytes());
        bytes.extend_from_slice(value);
        bytes.resize(bytes.len().div_ceil(4) * 4, 0);
        bytes
    }

    fn message(kind: u16, attributes: &[Vec<u8>]) -> Vec<u8> {
        let body: Vec<u8> = attributes.concat();
        let mut bytes = kind.to_be_bytes().to_vec();
        bytes.extend_from_slice(&(body.len() as u16).to_be_bytes());
        bytes.extend_from_slice(&MAGIC_COOKIE);
        bytes.extend_from_slice(&[7; 12]);
        bytes.extend_from_slice(&body);
        bytes
    }

    #[test]
    fn reads_our_half_of_the_username_after_other_attributes() {
        let priority = attribute(0x0024, &[0, 0, 0, 1]);
        let software = attribute(0x8022, b"odd"); // padded from 3 to 4 bytes
        let username = attribute(USERNAME, b"ourUfrag:theirs");
        let request = message(BINDING_REQUEST, &[priority, software, username]);
        assert_eq!(requested_ufrag(&request), Some("ourUfrag"));
    }

    #[test]
    fn anything_else_names_nobody() {
        let username = attribute(USERNAME, b"ours:theirs");
        assert_eq!(requested_ufrag(&message(0x0101, std::slice::from_ref(&username))), None, "a response");
        assert_eq!(requested_ufrag(&message(BINDING_REQUEST, &[])), None, "no USERNAME");
        let no_colon = attribute(USERNAME, b"ours");
        assert_eq!(requested_ufrag(&message(BINDING_REQUEST, &[no_colon])), None);
        let mut wrong_cookie = message(BINDING_REQUEST, std::slice::from_ref(&username));
        wrong_cookie[4] = 0;
        assert_eq!(requested_ufrag(&wrong_cookie), None);
        let request = message(BINDING_REQUEST, &[username]);
        for cut in 0..request.len() {
            assert_eq!(requested_ufrag(&request[..cut]), None, "cut at {cut}");
        }
    }

    /// Mutated requests and random bytes: never a panic, and a ufrag is
    /// only ever read from inside the datagram.
    #[test]
    fn survives_ten_thousand_mangled_datagrams() {
        let request = message(BINDING_REQUEST, &[attribute(0x0024, &[0; 4]), attribute(USERNAME, b"abcd:efgh")]);
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..10_000 {
            let mut datagram =
                if round % 2 == 0 { request.clone() } else { (0..next() % 64).map(|_| next() as u8).collect() };
            for _ in 0..next() % 4 {
                if !datagram.is_empty() {
                    let at = next() as usize % datagram.len();
                    datagram[at] = next() as u8;
                }
            }
            if let Some(ufrag) = requested_ufrag(&datagram) {
                assert!(ufrag.len() < datagram.len());
            }
        }
    }
}
