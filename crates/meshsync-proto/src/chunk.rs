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

use meshsync_core::ids::{Hash, ShareId};

use crate::limits::MAX_REQUEST_LEN;

/// The first byte of a chunk stream.
pub const STREAM_KIND_CHUNK: u8 = 0x01;

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
        out[1..33].copy_from_slice(self.share.as_bytes());
        out[33..65].copy_from_slice(&self.hash.0);
        out[65..69].copy_from_slice(&self.len.to_be_bytes());
        out
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
        let len = u32::from_be_bytes([bytes[65], bytes[66], bytes[67], bytes[68]]);
        if len == 0 || len > MAX_REQUEST_LEN {
            return Err(ChunkError::BadLength { len });
        }
        let mut share = [0u8; 32];
        share.copy_from_slice(&bytes[1..33]);
        let mut hash = [0u8; 32];
        hash.copy_from_slice(&bytes[33..65]);
        Ok(ChunkRequest {
            share: ShareId::from_bytes(share),
            hash: Hash(hash),
            len,
        })
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

    fn from_byte(byte: u8) -> Result<Self, ChunkError> {
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

    proptest! {
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
