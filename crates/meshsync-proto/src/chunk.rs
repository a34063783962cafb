//! Chunk streams: one QUIC bidirectional stream per chunk, opened by the
//! side that wants it.
//!
//! ```text
//! requester → responder: ChunkRequest  (69 bytes) = 0x01 ‖ share (32) ‖ hash (32) ‖ len (u32 BE)
//!                        then FIN
//! responder → requester: ChunkResponse  (5 bytes) = status (u8) ‖ len (u32 BE)
//!                        then, if status is Found, exactly `len` raw bytes; then FIN
//! ```
//!
//! From version 4 a requester may ask for up to [`MAX_RUN_CHUNKS`] chunks of
//! one folder on one stream (a *run*, [`ChunkRunRequest`]):
//!
//! ```text
//! requester → responder: 0x04 ‖ share (32) ‖ count (u16 BE, 1..=64)
//!                        ‖ count × (hash (32) ‖ len (u32 BE))   then FIN
//! responder → requester: for each chunk, in the order asked:
//!                        ChunkResponse (5 bytes), then its bytes if Found; then FIN
//! ```
//!
//! A run costs one stream instead of `count`: on loopback, 1 GiB fetched as
//! 64 KiB responses took 2.6 s of transport against 1.9–2.1 s as 1 MiB ones
//! (`examples/throughput.rs --requests` in meshsync-net).
//!
//! The headers have fixed sizes and are not postcard, so the driver reads
//! exactly [`ChunkRequest::ENCODED_LEN`] or [`ChunkResponse::ENCODED_LEN`]
//! bytes, and the chunk's bytes go straight from the stream into a
//! [`ChunkVerifier`] with no framing around them. The first byte of a stream
//! names its kind ([`STREAM_KIND_CHUNK`]) so later versions can add other
//! kinds of stream.
//!
//! The responder answers [`ChunkStatus::Found`] only for a folder open both
//! ways on the connection ([`Connection::is_open`](crate::Connection::is_open));
//! for any other folder it answers [`ChunkStatus::Refused`]. The requester
//! never trusts the bytes: it hashes them as they arrive and writes nothing
//! that did not verify.
//!
//! This module must never panic on any input.

use meshsync_core::entry::ChunkRef;
use meshsync_core::ids::{Hash, ShareId};

use crate::limits::MAX_REQUEST_LEN;

/// The first byte of a chunk stream.
pub const STREAM_KIND_CHUNK: u8 = 0x01;

/// The first byte of a chunk-run stream (version 4).
pub const STREAM_KIND_CHUNK_RUN: u8 = 0x04;

/// The most chunks one run asks for.
pub const MAX_RUN_CHUNKS: usize = 64;

/// Why a chunk header or chunk was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChunkError {
    /// A header does not have its fixed length.
    #[error("a chunk {what} header has {expected} bytes, got {got}")]
    HeaderLength {
        /// Which header.
        what: &'static str,
        /// Its fixed length.
        expected: usize,
        /// Bytes given.
        got: usize,
    },
    /// The stream's first byte names a kind of stream this version does not
    /// know.
    #[error("unknown stream kind {0:#04x}")]
    UnknownStreamKind(u8),
    /// A chunk length of 0 or over [`MAX_REQUEST_LEN`].
    #[error("chunk length {len} is outside 1..={MAX_REQUEST_LEN}")]
    BadLength {
        /// The length given.
        len: u32,
    },
    /// A run asking for no chunks or more than [`MAX_RUN_CHUNKS`].
    #[error("a chunk run of {count} chunks is outside 1..={MAX_RUN_CHUNKS}")]
    BadRunCount {
        /// The count given.
        count: usize,
    },
    /// A response status byte this version does not know.
    #[error("unknown chunk response status {0}")]
    UnknownStatus(u8),
    /// A Found response whose length is not the length requested, or another
    /// status with a non-zero length.
    #[error("response says {status:?} with {len} bytes for a request of {requested}")]
    LengthMismatch {
        /// The status.
        status: ChunkStatus,
        /// The length in the response.
        len: u32,
        /// The length requested.
        requested: u32,
    },
    /// More bytes arrived than the chunk has.
    #[error("more than the {len} bytes of the chunk arrived")]
    TooLong {
        /// The chunk's length.
        len: u32,
    },
    /// The stream ended before the chunk's last byte.
    #[error("the chunk ended after {got} of {len} bytes")]
    TooShort {
        /// Bytes received.
        got: u32,
        /// The chunk's length.
        len: u32,
    },
    /// The bytes do not hash to the chunk's hash: corrupt or forged.
    #[error("the chunk's bytes do not match its hash {expected:?}")]
    HashMismatch {
        /// The hash requested.
        expected: Hash,
    },
}

/// A request for one chunk of a folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChunkRequest {
    /// The folder (must be open on this connection).
    pub share: ShareId,
    /// The chunk's BLAKE3 hash.
    pub hash: Hash,
    /// The chunk's length, from the index (1..=[`MAX_REQUEST_LEN`]: a
    /// plaintext chunk, or an encrypted one from a storage-only peer's
    /// index, 16 bytes longer).
    pub len: u32,
}

impl ChunkRequest {
    /// Bytes in an encoded request (the stream-kind byte included).
    pub const ENCODED_LEN: usize = 1 + 32 + 32 + 4;

    /// The request's bytes: the stream kind, the share, the hash, the length
    /// (big-endian).
    pub fn encode(&self) -> [u8; Self::ENCODED_LEN] {
        let mut out = [0u8; Self::ENCODED_LEN];
        out[0] = STREAM_KIND_CHUNK;
        self.encode_fields(&mut out[1..69]);
        out
    }

    /// Writes share ‖ hash ‖ len (BE) into the 68 bytes of `out`: the fields
    /// after the kind byte, which chunk-delta requests share.
    pub(crate) fn encode_fields(&self, out: &mut [u8]) {
        out[..32].copy_from_slice(self.share.as_bytes());
        out[32..64].copy_from_slice(&self.hash.0);
        out[64..68].copy_from_slice(&self.len.to_be_bytes());
    }

    /// Reads share ‖ hash ‖ len (BE) from 68 bytes; the length is not
    /// checked here.
    pub(crate) fn decode_fields(bytes: &[u8; 68]) -> Self {
        let mut share = [0u8; 32];
        share.copy_from_slice(&bytes[..32]);
        let mut hash = [0u8; 32];
        hash.copy_from_slice(&bytes[32..64]);
        ChunkRequest {
            share: ShareId::from_bytes(share),
            hash: Hash(hash),
            len: u32::from_be_bytes([bytes[64], bytes[65], bytes[66], bytes[67]]),
        }
    }

    /// Reads a request from exactly [`ChunkRequest::ENCODED_LEN`] bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, ChunkError> {
        let bytes: &[u8; Self::ENCODED_LEN] =
            bytes.try_into().map_err(|_| ChunkError::HeaderLength {
                what: "request",
                expected: Self::ENCODED_LEN,
                got: bytes.len(),
            })?;
        if bytes[0] != STREAM_KIND_CHUNK {
            return Err(ChunkError::UnknownStreamKind(bytes[0]));
        }
        let request = Self::decode_fields(bytes[1..].try_into().expect("68 bytes"));
        if request.len == 0 || request.len > MAX_REQUEST_LEN {
            return Err(ChunkError::BadLength { len: request.len });
        }
        Ok(request)
    }
}

/// A request for several chunks of one folder on one stream (version 4);
/// each is answered like a [`ChunkRequest`], in order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ChunkRunRequest {
    /// The folder (must be open on this connection).
    pub share: ShareId,
    /// The chunks, 1..=[`MAX_RUN_CHUNKS`], each of length
    /// 1..=[`MAX_REQUEST_LEN`].
    pub chunks: Vec<ChunkRef>,
}

impl ChunkRunRequest {
    /// Bytes before the chunk list: stream kind, share, count.
    pub const HEADER_LEN: usize = 1 + 32 + 2;
    /// Bytes per chunk in the list: hash, length.
    pub const ITEM_LEN: usize = 32 + 4;

    /// The request's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::HEADER_LEN + Self::ITEM_LEN * self.chunks.len());
        out.push(STREAM_KIND_CHUNK_RUN);
        out.extend_from_slice(self.share.as_bytes());
        out.extend_from_slice(&(self.chunks.len() as u16).to_be_bytes());
        for chunk in &self.chunks {
            out.extend_from_slice(&chunk.hash.0);
            out.extend_from_slice(&chunk.len.to_be_bytes());
        }
        out
    }

    /// Reads the folder and the chunk count from exactly
    /// [`ChunkRunRequest::HEADER_LEN`] bytes; the list that follows is
    /// `count * ITEM_LEN` bytes ([`ChunkRunRequest::decode_items`]).
    pub fn decode_header(bytes: &[u8]) -> Result<(ShareId, usize), ChunkError> {
        let bytes: &[u8; Self::HEADER_LEN] =
            bytes.try_into().map_err(|_| ChunkError::HeaderLength {
                what: "run request",
                expected: Self::HEADER_LEN,
                got: bytes.len(),
            })?;
        if bytes[0] != STREAM_KIND_CHUNK_RUN {
            return Err(ChunkError::UnknownStreamKind(bytes[0]));
        }
        let count = usize::from(u16::from_be_bytes([bytes[33], bytes[34]]));
        if count == 0 || count > MAX_RUN_CHUNKS {
            return Err(ChunkError::BadRunCount { count });
        }
        let mut share = [0u8; 32];
        share.copy_from_slice(&bytes[1..33]);
        Ok((ShareId::from_bytes(share), count))
    }

    /// The run for `share` from its chunk list (every length checked).
    pub fn decode_items(share: ShareId, bytes: &[u8]) -> Result<Self, ChunkError> {
        let count = bytes.len() / Self::ITEM_LEN;
        if !bytes.len().is_multiple_of(Self::ITEM_LEN) {
            return Err(ChunkError::HeaderLength {
                what: "run list",
                expected: (count + 1) * Self::ITEM_LEN,
                got: bytes.len(),
            });
        }
        if count == 0 || count > MAX_RUN_CHUNKS {
            return Err(ChunkError::BadRunCount { count });
        }
        let chunks = bytes
            .chunks_exact(Self::ITEM_LEN)
            .map(|item| {
                let len = u32::from_be_bytes([item[32], item[33], item[34], item[35]]);
                if len == 0 || len > MAX_REQUEST_LEN {
                    return Err(ChunkError::BadLength { len });
                }
                let mut hash = [0u8; 32];
                hash.copy_from_slice(&item[..32]);
                Ok(ChunkRef {
                    hash: Hash(hash),
                    len,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(ChunkRunRequest { share, chunks })
    }

    /// The single request the `n`th chunk's answer is checked against.
    pub fn request(&self, n: usize) -> ChunkRequest {
        ChunkRequest {
            share: self.share,
            hash: self.chunks[n].hash,
            len: self.chunks[n].len,
        }
    }
}

/// The answer to a [`ChunkRequest`]. On the wire: one byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ChunkStatus {
    /// 0: the chunk follows, `len` bytes.
    Found,
    /// 1: the responder does not have this chunk (any more).
    NotFound,
    /// 2: the folder is not open on this connection, or the responder will
    /// not serve it.
    Refused,
}

impl ChunkStatus {
    fn to_byte(self) -> u8 {
        match self {
            ChunkStatus::Found => 0,
            ChunkStatus::NotFound => 1,
            ChunkStatus::Refused => 2,
        }
    }

    pub(crate) fn from_byte(byte: u8) -> Result<Self, ChunkError> {
        match byte {
            0 => Ok(ChunkStatus::Found),
            1 => Ok(ChunkStatus::NotFound),
            2 => Ok(ChunkStatus::Refused),
            other => Err(ChunkError::UnknownStatus(other)),
        }
    }
}

/// The response header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChunkResponse {
    /// Whether the chunk follows.
    pub status: ChunkStatus,
    /// Bytes that follow: the requested length if found, else 0.
    pub len: u32,
}

impl ChunkResponse {
    /// Bytes in an encoded response header.
    pub const ENCODED_LEN: usize = 1 + 4;

    /// The header for a chunk that follows.
    pub fn found(request: &ChunkRequest) -> Self {
        ChunkResponse {
            status: ChunkStatus::Found,
            len: request.len,
        }
    }

    /// The header for a chunk this side does not have.
    pub fn not_found() -> Self {
        ChunkResponse {
            status: ChunkStatus::NotFound,
            len: 0,
        }
    }

    /// The header for a request this side will not serve.
    pub fn refused() -> Self {
        ChunkResponse {
            status: ChunkStatus::Refused,
            len: 0,
        }
    }

    /// The header's bytes: status, length (big-endian).
    pub fn encode(&self) -> [u8; Self::ENCODED_LEN] {
        let len = self.len.to_be_bytes();
        [self.status.to_byte(), len[0], len[1], len[2], len[3]]
    }

    /// Reads a response header from exactly [`ChunkResponse::ENCODED_LEN`]
    /// bytes, for `request`: a Found must carry the requested length, any
    /// other status zero.
    pub fn decode(bytes: &[u8], request: &ChunkRequest) -> Result<Self, ChunkError> {
        let bytes: &[u8; Self::ENCODED_LEN] =
            bytes.try_into().map_err(|_| ChunkError::HeaderLength {
                what: "response",
                expected: Self::ENCODED_LEN,
                got: bytes.len(),
            })?;
        let status = ChunkStatus::from_byte(bytes[0])?;
        let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
        let expected = match status {
            ChunkStatus::Found => request.len,
            ChunkStatus::NotFound | ChunkStatus::Refused => 0,
        };
        if len != expected {
            return Err(ChunkError::LengthMismatch {
                status,
                len,
                requested: request.len,
            });
        }
        Ok(ChunkResponse { status, len })
    }
}

/// Hashes a chunk's bytes as they arrive and checks them against the
/// request: never more than `len` bytes, and the right hash at the end.
#[derive(Debug, Clone)]
pub struct ChunkVerifier {
    hasher: blake3::Hasher,
    expected: Hash,
    len: u32,
    received: u32,
}

impl ChunkVerifier {
    /// A verifier for the chunk `request` asked for.
    pub fn new(request: &ChunkRequest) -> Self {
        ChunkVerifier {
            hasher: blake3::Hasher::new(),
            expected: request.hash,
            len: request.len,
            received: 0,
        }
    }

    /// Bytes still expected.
    pub fn remaining(&self) -> u32 {
        self.len - self.received
    }

    /// Takes the next bytes of the chunk. More than the chunk's length is
    /// [`ChunkError::TooLong`] (and the bytes are not hashed).
    pub fn update(&mut self, bytes: &[u8]) -> Result<(), ChunkError> {
        match u32::try_from(bytes.len()) {
            Ok(n) if n <= self.remaining() => {
                self.hasher.update(bytes);
                self.received += n;
                Ok(())
            }
            _ => Err(ChunkError::TooLong { len: self.len }),
        }
    }

    /// Call at the end of the stream: the chunk must be complete and match
    /// its hash. Only then may its bytes be used.
    pub fn finish(self) -> Result<(), ChunkError> {
        if self.received < self.len {
            return Err(ChunkError::TooShort {
                got: self.received,
                len: self.len,
            });
        }
        if Hash::from(self.hasher.finalize()) != self.expected {
            return Err(ChunkError::HashMismatch {
                expected: self.expected,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn request(data: &[u8]) -> ChunkRequest {
        ChunkRequest {
            share: ShareId::from_bytes([5; 32]),
            hash: Hash::of(data),
            len: data.len() as u32,
        }
    }

    #[test]
    fn request_layout_is_fixed() {
        let req = request(b"chunk");
        let bytes = req.encode();
        assert_eq!(bytes[0], STREAM_KIND_CHUNK);
        assert_eq!(&bytes[1..33], &[5; 32]);
        assert_eq!(&bytes[33..65], &Hash::of(b"chunk").0);
        assert_eq!(&bytes[65..], &[0, 0, 0, 5]);
        assert_eq!(ChunkRequest::decode(&bytes), Ok(req));
    }

    #[test]
    fn bad_requests_are_refused() {
        let mut bytes = request(b"chunk").encode();
        assert!(matches!(
            ChunkRequest::decode(&bytes[..68]),
            Err(ChunkError::HeaderLength { got: 68, .. })
        ));
        bytes[0] = 9;
        assert_eq!(
            ChunkRequest::decode(&bytes),
            Err(ChunkError::UnknownStreamKind(9))
        );
        let mut zero = request(b"").encode();
        zero[0] = STREAM_KIND_CHUNK;
        assert_eq!(
            ChunkRequest::decode(&zero),
            Err(ChunkError::BadLength { len: 0 })
        );
        let mut huge = request(b"x").encode();
        huge[65..].copy_from_slice(&(MAX_REQUEST_LEN + 1).to_be_bytes());
        assert_eq!(
            ChunkRequest::decode(&huge),
            Err(ChunkError::BadLength {
                len: MAX_REQUEST_LEN + 1
            })
        );
        // The longest encrypted chunk can be asked for.
        let mut longest = request(b"x").encode();
        longest[65..].copy_from_slice(&(crate::limits::MAX_CHUNK_LEN + 16).to_be_bytes());
        assert!(ChunkRequest::decode(&longest).is_ok());
    }

    #[test]
    fn response_length_must_match_the_request() {
        let req = request(b"chunk");
        let found = ChunkResponse::found(&req);
        assert_eq!(found.encode(), [0, 0, 0, 0, 5]);
        assert_eq!(ChunkResponse::decode(&found.encode(), &req), Ok(found));
        let not_found = ChunkResponse::not_found();
        assert_eq!(
            ChunkResponse::decode(&not_found.encode(), &req),
            Ok(not_found)
        );
        assert_eq!(ChunkResponse::refused().encode(), [2, 0, 0, 0, 0]);
        assert!(matches!(
            ChunkResponse::decode(&[0, 0, 0, 0, 6], &req),
            Err(ChunkError::LengthMismatch { len: 6, .. })
        ));
        assert!(matches!(
            ChunkResponse::decode(&[1, 0, 0, 0, 5], &req),
            Err(ChunkError::LengthMismatch { .. })
        ));
        assert_eq!(
            ChunkResponse::decode(&[7, 0, 0, 0, 0], &req),
            Err(ChunkError::UnknownStatus(7))
        );
    }

    #[test]
    fn verifier_accepts_only_the_exact_bytes() {
        let req = request(b"hello world");
        let mut ok = ChunkVerifier::new(&req);
        ok.update(b"hello ").unwrap();
        ok.update(b"world").unwrap();
        assert_eq!(ok.remaining(), 0);
        assert_eq!(ok.finish(), Ok(()));

        let mut long = ChunkVerifier::new(&req);
        long.update(b"hello world").unwrap();
        assert_eq!(long.update(b"!"), Err(ChunkError::TooLong { len: 11 }));

        let mut short = ChunkVerifier::new(&req);
        short.update(b"hello").unwrap();
        assert_eq!(
            short.finish(),
            Err(ChunkError::TooShort { got: 5, len: 11 })
        );

        let mut forged = ChunkVerifier::new(&req);
        forged.update(b"HELLO WORLD").unwrap();
        assert!(matches!(
            forged.finish(),
            Err(ChunkError::HashMismatch { .. })
        ));
    }

    fn run(count: usize) -> ChunkRunRequest {
        ChunkRunRequest {
            share: ShareId::from_bytes([5; 32]),
            chunks: (0..count)
                .map(|n| ChunkRef {
                    hash: Hash::of(&[n as u8]),
                    len: n as u32 + 1,
                })
                .collect(),
        }
    }

    #[test]
    fn run_request_layout_is_fixed() {
        let req = run(2);
        let bytes = req.encode();
        assert_eq!(
            bytes.len(),
            ChunkRunRequest::HEADER_LEN + 2 * ChunkRunRequest::ITEM_LEN
        );
        assert_eq!(bytes[0], STREAM_KIND_CHUNK_RUN);
        assert_eq!(&bytes[1..33], &[5; 32]);
        assert_eq!(&bytes[33..35], &[0, 2]);
        assert_eq!(&bytes[35..67], &Hash::of(&[0]).0);
        assert_eq!(&bytes[67..71], &[0, 0, 0, 1]);
        assert_eq!(&bytes[103..107], &[0, 0, 0, 2]);
        let (share, count) = ChunkRunRequest::decode_header(&bytes[..35]).unwrap();
        assert_eq!((share, count), (req.share, 2));
        let decoded = ChunkRunRequest::decode_items(share, &bytes[35..]).unwrap();
        assert_eq!(decoded, req);
        assert_eq!(decoded.request(1).len, 2);
    }

    #[test]
    fn bad_run_requests_are_refused() {
        let longest = run(MAX_RUN_CHUNKS).encode();
        assert!(ChunkRunRequest::decode_header(&longest[..35]).is_ok());
        let mut too_many = run(MAX_RUN_CHUNKS + 1).encode();
        assert_eq!(
            ChunkRunRequest::decode_header(&too_many[..35]),
            Err(ChunkError::BadRunCount { count: 65 })
        );
        too_many[33..35].copy_from_slice(&[0, 0]);
        assert_eq!(
            ChunkRunRequest::decode_header(&too_many[..35]),
            Err(ChunkError::BadRunCount { count: 0 })
        );
        assert!(matches!(
            ChunkRunRequest::decode_header(&too_many[..34]),
            Err(ChunkError::HeaderLength { got: 34, .. })
        ));
        assert_eq!(
            ChunkRunRequest::decode_header(&request(b"x").encode()[..35]),
            Err(ChunkError::UnknownStreamKind(STREAM_KIND_CHUNK))
        );
        let share = ShareId::from_bytes([5; 32]);
        let items = &run(3).encode()[35..];
        assert!(matches!(
            ChunkRunRequest::decode_items(share, &items[..items.len() - 1]),
            Err(ChunkError::HeaderLength { .. })
        ));
        assert_eq!(
            ChunkRunRequest::decode_items(share, &[]),
            Err(ChunkError::BadRunCount { count: 0 })
        );
        let mut zero = items.to_vec();
        zero[32..36].copy_from_slice(&[0; 4]);
        assert_eq!(
            ChunkRunRequest::decode_items(share, &zero),
            Err(ChunkError::BadLength { len: 0 })
        );
    }

    proptest! {
        #[test]
        fn run_decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let head = bytes.len().min(ChunkRunRequest::HEADER_LEN);
            let _ = ChunkRunRequest::decode_header(&bytes[..head]);
            let _ = ChunkRunRequest::decode_items(ShareId::from_bytes([1; 32]), &bytes);
        }

        #[test]
        fn request_round_trips(share in any::<[u8; 32]>(), hash in any::<[u8; 32]>(), len in 1..=MAX_REQUEST_LEN) {
            let req = ChunkRequest { share: ShareId::from_bytes(share), hash: Hash(hash), len };
            prop_assert_eq!(ChunkRequest::decode(&req.encode()), Ok(req));
        }

        #[test]
        fn random_headers_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..80)) {
            let _ = ChunkRequest::decode(&bytes);
            let _ = ChunkResponse::decode(&bytes, &request(b"x"));
        }
    }
}
