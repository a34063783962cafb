//! What a device and a tracker say to each other, sans-IO: the messages of
//! the tracker's control stream and the datagram framing of its relay
//! streams. `docs/protocol.md` ("Tracker and relay") is the byte-exact
//! specification.
//!
//! A tracker introduces devices that hold the same folder, tells each device
//! the address it sees it at (its *reflexive* address, as STUN does), times
//! simultaneous dials so two devices behind NATs open a path to each other
//! (hole punching), and as a last resort relays opaque bytes between two
//! devices. It is untrusted: it learns only
//! [tracker lookup keys](meshsync_core::keys::discovery::tracker_lookup_key)
//! (never a `ShareId`), device ids and addresses, and whoever it introduces
//! must still authenticate as a pinned device and prove it holds the folder's
//! key. The relay forwards the devices' own QUIC packets, so TLS runs end to
//! end through it.
//!
//! # Encoding
//!
//! Every message is one frame ([`crate::frame`]: `u32` big-endian length ‖
//! payload) of at most [`MAX_MESSAGE_LEN`] bytes. The payload is the version
//! byte [`TRACKER_VERSION`] followed by the postcard encoding of a
//! [`ClientMessage`] (device to tracker) or a [`ServerMessage`] (tracker to
//! device). Decoding is strict: another version, an unknown message type,
//! bytes left over, a list over its limit (checked from the encoded count,
//! before anything is allocated) or an address nobody can dial are errors.
//!
//! A relay stream starts with one framed [`ClientMessage::RelayJoin`]; after
//! it, both directions carry datagrams, each `u16` big-endian length ‖ bytes,
//! 1 to [`MAX_RELAY_DATAGRAM`] bytes long ([`encode_datagram`],
//! [`DatagramDecoder`]; the relay checks framing without copying with
//! [`DatagramChecker`]).
//!
//! This module must never panic on any input, read a clock, draw random
//! numbers or touch a socket.

use std::fmt;
use std::net::SocketAddr;

use meshsync_core::ids::DeviceId;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::frame::{FrameError, encode_frame};

/// The version byte that opens every tracker message.
pub const TRACKER_VERSION: u8 = 1;

/// The largest tracker message payload (version byte included), in bytes.
/// A full [`ServerMessage::Peers`] ([`MAX_PEERS`] peers with
/// [`MAX_ADDRS`] IPv6 addresses each) takes about 7 KiB.
pub const MAX_MESSAGE_LEN: u32 = 16 * 1024;

/// The most lookup keys in one [`ClientMessage::Announce`] or
/// [`ClientMessage::Leave`]. A device with more folders sends several.
pub const MAX_KEYS_PER_MESSAGE: usize = 64;

/// The most addresses a device announces, and the most a tracker reports
/// for one peer.
pub const MAX_ADDRS: usize = 8;

/// The most peers in one [`ServerMessage::Peers`].
pub const MAX_PEERS: usize = 32;

/// The longest wait a [`ServerMessage::PunchNow`] may ask for, in ms.
pub const MAX_PUNCH_DELAY_MS: u32 = 10_000;

/// The longest datagram on a relay stream, in bytes. QUIC packets are at most
/// 1,472 bytes by default (quinn's `max_udp_payload_size`); the rest is slack.
pub const MAX_RELAY_DATAGRAM: usize = 2048;

/// A folder's name on a tracker:
/// [`tracker_lookup_key`](meshsync_core::keys::discovery::tracker_lookup_key).
pub type LookupKey = [u8; 32];

/// A relay session's name, drawn at random by the tracker and given only to
/// the two devices it pairs.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RelayToken(pub [u8; 16]);

impl fmt::Debug for RelayToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Enough to tell sessions apart in logs, not enough to join one.
        write!(f, "RelayToken({:02x}{:02x}…)", self.0[0], self.0[1])
    }
}

/// Device to tracker.
///
/// The variant index is the message type: Announce 0, Leave 1,
/// PunchRequest 2, RelayRequest 3, RelayJoin 4.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientMessage {
    /// "I hold the folders named by `keys`, reachable at `addrs` (my own
    /// interfaces' addresses with my listening port)." Answered by
    /// [`ServerMessage::Announced`] and one [`ServerMessage::Peers`] per
    /// key. Holds until the announcement's TTL runs out or the connection
    /// closes; announcing again renews it.
    Announce {
        /// 1 to [`MAX_KEYS_PER_MESSAGE`] lookup keys.
        #[serde(deserialize_with = "bounded::<_, 1, MAX_KEYS_PER_MESSAGE, _>")]
        keys: Vec<LookupKey>,
        /// 0 to [`MAX_ADDRS`] dialable addresses.
        #[serde(deserialize_with = "bounded::<_, 0, MAX_ADDRS, _>")]
        addrs: Vec<SocketAddr>,
    },
    /// Withdraws announcements (a folder removed).
    Leave {
        /// 1 to [`MAX_KEYS_PER_MESSAGE`] lookup keys.
        #[serde(deserialize_with = "bounded::<_, 1, MAX_KEYS_PER_MESSAGE, _>")]
        keys: Vec<LookupKey>,
    },
    /// "Time a hole punch between me and `peer`": both must be connected
    /// and have announced `key`. Both get a [`ServerMessage::PunchNow`].
    PunchRequest {
        /// A key both devices announced.
        key: LookupKey,
        /// The device to punch through to.
        peer: DeviceId,
    },
    /// "Pair me with `peer` on the relay": both must be connected and have
    /// announced `key`. Both get a [`ServerMessage::RelayOffer`].
    RelayRequest {
        /// A key both devices announced.
        key: LookupKey,
        /// The device to relay to.
        peer: DeviceId,
    },
    /// The first message of a relay stream (a new bidirectional stream on
    /// the same connection); datagrams follow.
    RelayJoin {
        /// The token of a [`ServerMessage::RelayOffer`].
        token: RelayToken,
    },
}

impl ClientMessage {
    /// The message type (the variant index on the wire).
    pub fn kind(&self) -> u8 {
        match self {
            ClientMessage::Announce { .. } => 0,
            ClientMessage::Leave { .. } => 1,
            ClientMessage::PunchRequest { .. } => 2,
            ClientMessage::RelayRequest { .. } => 3,
            ClientMessage::RelayJoin { .. } => 4,
        }
    }

    fn check(&self) -> Result<(), TrackerCodecError> {
        if let ClientMessage::Announce { addrs, .. } = self {
            check_addrs(addrs)?;
        }
        Ok(())
    }
}

/// One device of a folder, as a tracker reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// Its device id, proven to the tracker by its TLS handshake (dial it
    /// pinned to this id).
    pub device: DeviceId,
    /// The address the tracker sees its connection come from.
    pub observed: SocketAddr,
    /// The addresses it announced (its own interfaces). When `observed` is
    /// not among them, it is behind a NAT.
    #[serde(deserialize_with = "bounded::<_, 0, MAX_ADDRS, _>")]
    pub addrs: Vec<SocketAddr>,
}

/// Tracker to device.
///
/// The variant index is the message type: Announced 0, Peers 1, PunchNow 2,
/// RelayOffer 3, Refused 4.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerMessage {
    /// An announcement was recorded.
    Announced {
        /// The address the tracker sees this connection come from (what a
        /// NAT maps this device's socket to).
        observed: SocketAddr,
        /// Seconds the announcement holds without being renewed.
        ttl_secs: u32,
    },
    /// The other devices that announced `key` (at most [`MAX_PEERS`]; the
    /// most recently announced first).
    Peers {
        /// The lookup key asked about.
        key: LookupKey,
        /// The other devices (never the asking one).
        #[serde(deserialize_with = "bounded::<_, 0, MAX_PEERS, _>")]
        peers: Vec<PeerInfo>,
    },
    /// "Dial `peer` at `addrs` in `delay_ms`": sent to both sides of a hole
    /// punch, timed so both dials leave at about the same moment.
    PunchNow {
        /// The device to dial (pinned).
        peer: DeviceId,
        /// Its observed address first, then its announced ones (1 to
        /// [`MAX_ADDRS`]).
        #[serde(deserialize_with = "bounded::<_, 1, MAX_ADDRS, _>")]
        addrs: Vec<SocketAddr>,
        /// How long to wait before dialling (at most
        /// [`MAX_PUNCH_DELAY_MS`]).
        delay_ms: u32,
    },
    /// "Open a relay stream with `token` to reach `peer`": sent to both
    /// devices of a relay session.
    RelayOffer {
        /// The other device of the session.
        peer: DeviceId,
        /// What to send in [`ClientMessage::RelayJoin`].
        token: RelayToken,
    },
    /// A request was refused.
    Refused {
        /// The type of the client message refused.
        request: u8,
        /// Why.
        reason: RefuseReason,
    },
}

impl ServerMessage {
    /// The message type (the variant index on the wire).
    pub fn kind(&self) -> u8 {
        match self {
            ServerMessage::Announced { .. } => 0,
            ServerMessage::Peers { .. } => 1,
            ServerMessage::PunchNow { .. } => 2,
            ServerMessage::RelayOffer { .. } => 3,
            ServerMessage::Refused { .. } => 4,
        }
    }

    fn check(&self) -> Result<(), TrackerCodecError> {
        match self {
            ServerMessage::Announced { observed, .. } => {
                check_addrs(std::slice::from_ref(observed))
            }
            ServerMessage::Peers { peers, .. } => peers.iter().try_for_each(|p| {
                check_addrs(std::slice::from_ref(&p.observed))?;
                check_addrs(&p.addrs)
            }),
            ServerMessage::PunchNow {
                addrs, delay_ms, ..
            } => {
                if *delay_ms > MAX_PUNCH_DELAY_MS {
                    return Err(TrackerCodecError::Limit("punch delay"));
                }
                check_addrs(addrs)
            }
            ServerMessage::RelayOffer { .. } | ServerMessage::Refused { .. } => Ok(()),
        }
    }
}

/// Why a tracker refused a request. The variant index is the wire code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefuseReason {
    /// 0: the message could not be decoded or broke a rule; the tracker
    /// closes the connection after saying so.
    BadMessage,
    /// 1: this source address sends too much; try again later.
    RateLimited {
        /// When a retry may succeed, in ms.
        retry_after_ms: u32,
    },
    /// 2: the tracker's tables are full (for this key, this source address,
    /// or in total).
    Full,
    /// 3: the peer is not connected to this tracker or has not announced
    /// the key with this device.
    UnknownPeer,
    /// 4: this tracker does not relay.
    RelayDisabled,
    /// 5: the relay has no room for another session.
    RelayBusy,
    /// 6: no relay session with that token for this device (expired,
    /// joined already, or never offered to it).
    UnknownSession,
}

/// Why bytes did not decode as a tracker message or relay datagram.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TrackerCodecError {
    /// The version byte is not [`TRACKER_VERSION`] (or the payload is
    /// empty).
    #[error("tracker protocol version {found:?}, this side speaks {TRACKER_VERSION}")]
    Version {
        /// The version byte found, if any.
        found: Option<u8>,
    },
    /// The payload is not a well-formed message (unknown type, truncated,
    /// bytes left over, a list longer or shorter than its bounds).
    #[error("malformed tracker message")]
    Malformed,
    /// A value out of range.
    #[error("tracker message over a limit: {0}")]
    Limit(&'static str),
    /// An address is unspecified, multicast, broadcast or has port 0.
    #[error("undialable address {0} in a tracker message")]
    BadAddress(SocketAddr),
    /// The message is longer than [`MAX_MESSAGE_LEN`].
    #[error("tracker message of {0} bytes, over the limit")]
    TooLarge(usize),
    /// A relay datagram is empty or longer than [`MAX_RELAY_DATAGRAM`].
    #[error("relay datagram of {0} bytes (allowed: 1 to {MAX_RELAY_DATAGRAM})")]
    DatagramSize(usize),
}

/// Encodes a device-to-tracker message as a frame (header included).
pub fn encode_client(message: &ClientMessage) -> Result<Vec<u8>, TrackerCodecError> {
    encode(message)
}

/// Encodes a tracker-to-device message as a frame (header included).
pub fn encode_server(message: &ServerMessage) -> Result<Vec<u8>, TrackerCodecError> {
    encode(message)
}

fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>, TrackerCodecError> {
    let payload = postcard::to_extend(message, vec![TRACKER_VERSION])
        .map_err(|_| TrackerCodecError::Malformed)?;
    if payload.len() > MAX_MESSAGE_LEN as usize {
        return Err(TrackerCodecError::TooLarge(payload.len()));
    }
    encode_frame(&payload).map_err(|e| match e {
        FrameError::TooLarge { len, .. } => TrackerCodecError::TooLarge(len as usize),
        _ => TrackerCodecError::Malformed,
    })
}

/// Decodes a frame payload from a device. Strict (see the module docs).
pub fn decode_client(payload: &[u8]) -> Result<ClientMessage, TrackerCodecError> {
    let message: ClientMessage = decode(payload)?;
    message.check()?;
    Ok(message)
}

/// Decodes a frame payload from a tracker. Strict (see the module docs).
pub fn decode_server(payload: &[u8]) -> Result<ServerMessage, TrackerCodecError> {
    let message: ServerMessage = decode(payload)?;
    message.check()?;
    Ok(message)
}

fn decode<'a, T: Deserialize<'a>>(payload: &'a [u8]) -> Result<T, TrackerCodecError> {
    if payload.len() > MAX_MESSAGE_LEN as usize {
        return Err(TrackerCodecError::TooLarge(payload.len()));
    }
    let Some((&version, body)) = payload.split_first() else {
        return Err(TrackerCodecError::Version { found: None });
    };
    if version != TRACKER_VERSION {
        return Err(TrackerCodecError::Version {
            found: Some(version),
        });
    }
    match postcard::take_from_bytes::<T>(body) {
        Ok((message, [])) => Ok(message),
        // Lists over their bound fail inside postcard, which keeps no
        // message: they are `Malformed` like any other bad encoding.
        Ok(_) | Err(_) => Err(TrackerCodecError::Malformed),
    }
}

/// Whether a peer could be dialled at `addr`: a unicast IP that is not
/// unspecified, and a port that is not 0.
pub fn is_dialable(addr: &SocketAddr) -> bool {
    let ip = addr.ip();
    let broadcast = matches!(ip, std::net::IpAddr::V4(v4) if v4.is_broadcast());
    addr.port() != 0 && !ip.is_unspecified() && !ip.is_multicast() && !broadcast
}

fn check_addrs(addrs: &[SocketAddr]) -> Result<(), TrackerCodecError> {
    match addrs.iter().find(|a| !is_dialable(a)) {
        Some(bad) => Err(TrackerCodecError::BadAddress(*bad)),
        None => Ok(()),
    }
}

/// Deserializes a list of `MIN..=MAX` elements, refusing a longer count
/// before allocating anything.
fn bounded<'de, T, const MIN: usize, const MAX: usize, D>(d: D) -> Result<Vec<T>, D::Error>
where
    T: Deserialize<'de>,
    D: Deserializer<'de>,
{
    struct Bounded<T, const MIN: usize, const MAX: usize>(std::marker::PhantomData<T>);

    impl<'de, T: Deserialize<'de>, const MIN: usize, const MAX: usize> Visitor<'de>
        for Bounded<T, MIN, MAX>
    {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "a list of {MIN} to {MAX} elements")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let count = seq.size_hint().unwrap_or(0);
            if !(MIN..=MAX).contains(&count) {
                return Err(de::Error::custom("list length out of bounds"));
            }
            let mut out = Vec::with_capacity(count);
            while let Some(item) = seq.next_element()? {
                if out.len() == MAX {
                    return Err(de::Error::custom("list length out of bounds"));
                }
                out.push(item);
            }
            if out.len() < MIN {
                return Err(de::Error::custom("list length out of bounds"));
            }
            Ok(out)
        }
    }

    d.deserialize_seq(Bounded::<T, MIN, MAX>(std::marker::PhantomData))
}

/// Bytes of a relay datagram's header (its `u16` big-endian length).
pub const DATAGRAM_HEADER_LEN: usize = 2;

/// Appends `datagram` to `out` as a relay-stream frame.
pub fn encode_datagram(out: &mut Vec<u8>, datagram: &[u8]) -> Result<(), TrackerCodecError> {
    if datagram.is_empty() || datagram.len() > MAX_RELAY_DATAGRAM {
        return Err(TrackerCodecError::DatagramSize(datagram.len()));
    }
    out.extend_from_slice(&(datagram.len() as u16).to_be_bytes());
    out.extend_from_slice(datagram);
    Ok(())
}

/// Splits a relay stream (pushed in pieces of any size) into datagrams.
/// Poisoned by the first bad length: the stream cannot be resynchronised.
#[derive(Debug, Default)]
pub struct DatagramDecoder {
    buf: Vec<u8>,
    start: usize,
    failed: Option<TrackerCodecError>,
}

impl DatagramDecoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start >= self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole datagram, `Ok(None)` if more bytes are needed.
    pub fn next_datagram(&mut self) -> Result<Option<&[u8]>, TrackerCodecError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let rest = &self.buf[self.start..];
        let Some(header) = rest.first_chunk::<DATAGRAM_HEADER_LEN>() else {
            return Ok(None);
        };
        let len = usize::from(u16::from_be_bytes(*header));
        if len == 0 || len > MAX_RELAY_DATAGRAM {
            let e = TrackerCodecError::DatagramSize(len);
            self.failed = Some(e.clone());
            return Err(e);
        }
        if rest.len() < DATAGRAM_HEADER_LEN + len {
            return Ok(None);
        }
        let begin = self.start + DATAGRAM_HEADER_LEN;
        self.start = begin + len;
        Ok(Some(&self.buf[begin..begin + len]))
    }

    /// Bytes held that do not yet make a whole datagram.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }
}

/// Checks the framing of a relay stream as it passes through, without
/// buffering or copying it: what a relay needs to refuse oversized
/// datagrams while forwarding bytes as they come.
#[derive(Debug, Default, Clone)]
pub struct DatagramChecker {
    /// Header bytes seen of the current datagram (0, 1; 2 means in the body).
    header: [u8; DATAGRAM_HEADER_LEN],
    header_len: usize,
    /// Body bytes still to come of the current datagram.
    body_left: usize,
    failed: bool,
}

impl DatagramChecker {
    /// A checker at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks the next `bytes` of the stream; fails (for good) at the first
    /// empty or oversized datagram.
    pub fn check(&mut self, mut bytes: &[u8]) -> Result<(), TrackerCodecError> {
        if self.failed {
            return Err(TrackerCodecError::Malformed);
        }
        while !bytes.is_empty() {
            if self.body_left > 0 {
                let n = self.body_left.min(bytes.len());
                self.body_left -= n;
                bytes = &bytes[n..];
                continue;
            }
            self.header[self.header_len] = bytes[0];
            self.header_len += 1;
            bytes = &bytes[1..];
            if self.header_len == DATAGRAM_HEADER_LEN {
                self.header_len = 0;
                let len = usize::from(u16::from_be_bytes(self.header));
                if len == 0 || len > MAX_RELAY_DATAGRAM {
                    self.failed = true;
                    return Err(TrackerCodecError::DatagramSize(len));
                }
                self.body_left = len;
            }
        }
        Ok(())
    }

    /// Whether the stream so far ends on a datagram boundary.
    pub fn at_boundary(&self) -> bool {
        !self.failed && self.header_len == 0 && self.body_left == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::FrameDecoder;
    use proptest::prelude::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn device(n: u8) -> DeviceId {
        DeviceId::from_bytes([n; 32])
    }

    fn payload(frame: &[u8]) -> &[u8] {
        &frame[crate::frame::HEADER_LEN..]
    }

    #[test]
    fn client_messages_round_trip() {
        let messages = [
            ClientMessage::Announce {
                keys: vec![[1; 32], [2; 32]],
                addrs: vec![addr("192.0.2.1:22000"), addr("[2001:db8::1]:22000")],
            },
            ClientMessage::Leave {
                keys: vec![[1; 32]],
            },
            ClientMessage::PunchRequest {
                key: [3; 32],
                peer: device(4),
            },
            ClientMessage::RelayRequest {
                key: [3; 32],
                peer: device(4),
            },
            ClientMessage::RelayJoin {
                token: RelayToken([9; 16]),
            },
        ];
        for (i, m) in messages.iter().enumerate() {
            let frame = encode_client(m).unwrap();
            assert_eq!(payload(&frame)[0], TRACKER_VERSION);
            assert_eq!(payload(&frame)[1], i as u8, "message type");
            assert_eq!(m.kind(), i as u8);
            assert_eq!(&decode_client(payload(&frame)).unwrap(), m);
        }
    }

    #[test]
    fn server_messages_round_trip() {
        let messages = [
            ServerMessage::Announced {
                observed: addr("198.51.100.7:40000"),
                ttl_secs: 300,
            },
            ServerMessage::Peers {
                key: [1; 32],
                peers: vec![PeerInfo {
                    device: device(2),
                    observed: addr("198.51.100.8:40001"),
                    addrs: vec![addr("10.0.0.2:22000")],
                }],
            },
            ServerMessage::PunchNow {
                peer: device(2),
                addrs: vec![addr("198.51.100.8:40001")],
                delay_ms: 25,
            },
            ServerMessage::RelayOffer {
                peer: device(2),
                token: RelayToken([7; 16]),
            },
            ServerMessage::Refused {
                request: 0,
                reason: RefuseReason::RateLimited {
                    retry_after_ms: 1000,
                },
            },
        ];
        for (i, m) in messages.iter().enumerate() {
            let frame = encode_server(m).unwrap();
            assert_eq!(payload(&frame)[1], i as u8, "message type");
            assert_eq!(m.kind(), i as u8);
            assert_eq!(&decode_server(payload(&frame)).unwrap(), m);
        }
    }

    /// The byte layout of docs/protocol.md's example.
    #[test]
    fn relay_join_bytes() {
        let frame = encode_client(&ClientMessage::RelayJoin {
            token: RelayToken([0xab; 16]),
        })
        .unwrap();
        let mut expected = vec![0, 0, 0, 18, 1, 4];
        expected.extend([0xab; 16]);
        assert_eq!(frame, expected);
    }

    /// The examples of docs/protocol.md ("Tracker and relay"), byte for
    /// byte.
    #[test]
    fn documented_examples() {
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        let announce = encode_client(&ClientMessage::Announce {
            keys: vec![[0x11; 32]],
            addrs: vec![addr("192.0.2.1:22000"), addr("[2001:db8::1]:22000")],
        })
        .unwrap();
        assert_eq!(
            hex(&announce),
            format!(
                "00000040 01 00 01 {} 02 00 c0000201 f0ab01 01 20010db8000000000000000000000001 f0ab01",
                "11".repeat(32)
            )
            .replace(' ', "")
        );
        let peers = encode_server(&ServerMessage::Peers {
            key: [0x11; 32],
            peers: vec![PeerInfo {
                device: device(0x22),
                observed: addr("198.51.100.7:40000"),
                addrs: vec![addr("10.0.0.2:22000")],
            }],
        })
        .unwrap();
        assert_eq!(
            hex(&peers),
            format!(
                "00000054 01 01 {} 01 {} 00 c6336407 c0b802 01 00 0a000002 f0ab01",
                "11".repeat(32),
                "22".repeat(32)
            )
            .replace(' ', "")
        );
        let refused = encode_server(&ServerMessage::Refused {
            request: 0,
            reason: RefuseReason::RateLimited {
                retry_after_ms: 1000,
            },
        })
        .unwrap();
        assert_eq!(hex(&refused), "00000006010400".to_owned() + "01e807");
    }

    #[test]
    fn strict_decoding() {
        let frame = encode_client(&ClientMessage::Leave {
            keys: vec![[1; 32]],
        })
        .unwrap();
        let p = payload(&frame);
        assert_eq!(
            decode_client(&[]),
            Err(TrackerCodecError::Version { found: None })
        );
        let mut other = p.to_vec();
        other[0] = 2;
        assert_eq!(
            decode_client(&other),
            Err(TrackerCodecError::Version { found: Some(2) })
        );
        let mut longer = p.to_vec();
        longer.push(0);
        assert_eq!(decode_client(&longer), Err(TrackerCodecError::Malformed));
        assert_eq!(
            decode_client(&p[..p.len() - 1]),
            Err(TrackerCodecError::Malformed)
        );
        assert_eq!(
            decode_client(&[TRACKER_VERSION, 5]),
            Err(TrackerCodecError::Malformed),
            "unknown type"
        );
        // A client message is not a server message.
        assert!(decode_server(p).is_err());
    }

    #[test]
    fn lists_over_their_limit_are_refused_before_allocation() {
        let too_many = ClientMessage::Announce {
            keys: vec![[1; 32]; MAX_KEYS_PER_MESSAGE + 1],
            addrs: vec![],
        };
        let frame = encode_client(&too_many).unwrap();
        assert_eq!(
            decode_client(payload(&frame)),
            Err(TrackerCodecError::Malformed)
        );
        let none = ClientMessage::Announce {
            keys: vec![],
            addrs: vec![],
        };
        let frame = encode_client(&none).unwrap();
        assert!(decode_client(payload(&frame)).is_err(), "no keys");
        // A count of 2^32 with nothing behind it.
        let huge = [TRACKER_VERSION, 0, 0xff, 0xff, 0xff, 0xff, 0x0f];
        assert_eq!(decode_client(&huge), Err(TrackerCodecError::Malformed));
        let addrs = ClientMessage::Announce {
            keys: vec![[1; 32]],
            addrs: vec![addr("192.0.2.1:1"); MAX_ADDRS + 1],
        };
        assert!(decode_client(payload(&encode_client(&addrs).unwrap())).is_err());
    }

    #[test]
    fn undialable_addresses_and_long_delays_are_refused() {
        for bad in [
            "0.0.0.0:1",
            "192.0.2.1:0",
            "224.0.0.1:5",
            "255.255.255.255:5",
            "[::]:1",
        ] {
            let m = ClientMessage::Announce {
                keys: vec![[1; 32]],
                addrs: vec![addr(bad)],
            };
            assert_eq!(
                decode_client(payload(&encode_client(&m).unwrap())),
                Err(TrackerCodecError::BadAddress(addr(bad)))
            );
        }
        let m = ServerMessage::PunchNow {
            peer: device(1),
            addrs: vec![addr("192.0.2.1:5")],
            delay_ms: MAX_PUNCH_DELAY_MS + 1,
        };
        assert_eq!(
            decode_server(payload(&encode_server(&m).unwrap())),
            Err(TrackerCodecError::Limit("punch delay"))
        );
    }

    #[test]
    fn a_full_peers_answer_fits() {
        let peer = PeerInfo {
            device: device(1),
            observed: addr("[2001:db8::1]:65535"),
            addrs: vec![addr("[2001:db8::2]:65535"); MAX_ADDRS],
        };
        let m = ServerMessage::Peers {
            key: [0; 32],
            peers: vec![peer; MAX_PEERS],
        };
        let frame = encode_server(&m).unwrap();
        let mut decoder = FrameDecoder::new(MAX_MESSAGE_LEN);
        decoder.push(&frame).unwrap();
        let p = decoder.next_frame().unwrap().unwrap();
        assert_eq!(decode_server(&p).unwrap(), m);
    }

    #[test]
    fn datagrams_split_and_check_across_pieces() {
        let mut stream = Vec::new();
        encode_datagram(&mut stream, b"hello").unwrap();
        encode_datagram(&mut stream, &[7; MAX_RELAY_DATAGRAM]).unwrap();
        assert!(encode_datagram(&mut stream, &[]).is_err());
        assert!(encode_datagram(&mut stream, &[0; MAX_RELAY_DATAGRAM + 1]).is_err());
        for cut in 0..stream.len() {
            let mut decoder = DatagramDecoder::new();
            let mut checker = DatagramChecker::new();
            let mut got: Vec<Vec<u8>> = Vec::new();
            for piece in [&stream[..cut], &stream[cut..]] {
                checker.check(piece).unwrap();
                decoder.push(piece);
                while let Some(d) = decoder.next_datagram().unwrap() {
                    got.push(d.to_vec());
                }
            }
            assert!(checker.at_boundary());
            assert_eq!(decoder.pending(), 0);
            assert_eq!(got.len(), 2);
            assert_eq!(got[0], b"hello");
        }
    }

    #[test]
    fn oversized_and_empty_datagrams_are_refused() {
        for header in [[0u8, 0], ((MAX_RELAY_DATAGRAM + 1) as u16).to_be_bytes()] {
            let mut checker = DatagramChecker::new();
            assert!(checker.check(&header[..1]).is_ok());
            assert!(checker.check(&header[1..]).is_err());
            assert!(checker.check(&[1]).is_err(), "stays failed");
            let mut decoder = DatagramDecoder::new();
            decoder.push(&header);
            assert!(decoder.next_datagram().is_err());
            assert!(decoder.next_datagram().is_err(), "stays failed");
        }
    }

    fn arb_addr() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (1u8..224, any::<[u8; 3]>(), 1u16..)
                .prop_map(|(a, r, p)| SocketAddr::from(([a, r[0], r[1], r[2]], p))),
            (1u16..0xff00, any::<[u16; 7]>(), 1u16..).prop_map(|(a, r, p)| SocketAddr::from((
                [a, r[0], r[1], r[2], r[3], r[4], r[5], r[6]],
                p
            ))),
        ]
    }

    fn arb_client() -> impl Strategy<Value = ClientMessage> {
        prop_oneof![
            (
                prop::collection::vec(any::<[u8; 32]>(), 1..=MAX_KEYS_PER_MESSAGE),
                prop::collection::vec(arb_addr(), 0..=MAX_ADDRS)
            )
                .prop_map(|(keys, addrs)| ClientMessage::Announce { keys, addrs }),
            prop::collection::vec(any::<[u8; 32]>(), 1..=MAX_KEYS_PER_MESSAGE)
                .prop_map(|keys| ClientMessage::Leave { keys }),
            (any::<[u8; 32]>(), any::<[u8; 32]>()).prop_map(|(key, d)| {
                ClientMessage::PunchRequest {
                    key,
                    peer: DeviceId::from_bytes(d),
                }
            }),
            any::<[u8; 16]>().prop_map(|t| ClientMessage::RelayJoin {
                token: RelayToken(t)
            }),
        ]
    }

    fn arb_server() -> impl Strategy<Value = ServerMessage> {
        let peer = (
            any::<[u8; 32]>(),
            arb_addr(),
            prop::collection::vec(arb_addr(), 0..=MAX_ADDRS),
        )
            .prop_map(|(d, observed, addrs)| PeerInfo {
                device: DeviceId::from_bytes(d),
                observed,
                addrs,
            });
        prop_oneof![
            (arb_addr(), any::<u32>())
                .prop_map(|(observed, ttl_secs)| ServerMessage::Announced { observed, ttl_secs }),
            (
                any::<[u8; 32]>(),
                prop::collection::vec(peer, 0..=MAX_PEERS)
            )
                .prop_map(|(key, peers)| ServerMessage::Peers { key, peers }),
            (
                any::<[u8; 32]>(),
                prop::collection::vec(arb_addr(), 1..=MAX_ADDRS),
                0..=MAX_PUNCH_DELAY_MS
            )
                .prop_map(|(d, addrs, delay_ms)| ServerMessage::PunchNow {
                    peer: DeviceId::from_bytes(d),
                    addrs,
                    delay_ms
                }),
            (any::<u8>(), any::<u32>()).prop_map(|(request, retry_after_ms)| {
                ServerMessage::Refused {
                    request,
                    reason: RefuseReason::RateLimited { retry_after_ms },
                }
            }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn decoding_anything_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_client(&bytes);
            let _ = decode_server(&bytes);
            let mut versioned = vec![TRACKER_VERSION];
            versioned.extend_from_slice(&bytes);
            let _ = decode_client(&versioned);
            let _ = decode_server(&versioned);
            let mut decoder = DatagramDecoder::new();
            decoder.push(&bytes);
            while let Ok(Some(_)) = decoder.next_datagram() {}
            let _ = DatagramChecker::new().check(&bytes);
        }

        #[test]
        fn valid_messages_round_trip(c in arb_client(), s in arb_server()) {
            let frame = encode_client(&c).unwrap();
            prop_assert_eq!(decode_client(payload(&frame)).unwrap(), c);
            let frame = encode_server(&s).unwrap();
            prop_assert_eq!(decode_server(payload(&frame)).unwrap(), s);
        }

        #[test]
        fn mutated_messages_never_panic(c in arb_client(), at in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let frame = encode_client(&c).unwrap();
            let mut p = payload(&frame).to_vec();
            let i = at.index(p.len());
            p[i] = byte;
            let _ = decode_client(&p);
            let _ = decode_server(&p);
        }
    }
}
