//! Chunk deltas (stream kind `0x05`, version 5): a chunk fetched as the
//! difference from similar bytes the requester already has.
//!
//! A small file edited in place is one chunk, and so is the edge of an edit
//! in a big file: without this, changing 100 bytes of an 8 KiB file sends
//! 8 KiB. The requester names the chunk it wants and sends an rsync
//! signature of a *base* (bytes it holds that probably resemble the chunk:
//! the old version of the same region of the same file); the responder
//! answers with an rsync delta against that base, and the requester rebuilds
//! the chunk and checks it against the chunk's BLAKE3 hash like any other.
//!
//! ```text
//! requester → responder: 0x05 ‖ share (32) ‖ hash (32) ‖ len (u32 BE)
//!                        ‖ signature length (u32 BE) ‖ signature   then FIN
//! responder → requester: status (u8) ‖ delta length (u32 BE)
//!                        then, if Found, the delta; then FIN
//! ```
//!
//! Signatures and deltas are librsync's formats (MD4 signature magic
//! `rs\x016`, delta magic `rs\x026`), made and applied by the `fast_rsync`
//! crate. Its strong hash is MD4, truncated here to 8 bytes: a match can be
//! wrong, so the rebuilt chunk is never trusted before its BLAKE3 hash
//! matches. A mismatch can be the requester's fault (its base changed under
//! it), so it is not held against the responder: the requester asks again
//! for the whole chunk.
//!
//! This module is pure. It must never panic on what a peer sends, and
//! checks a signature's block size before `fast_rsync` sees it (a block
//! size of 0 would never end).

use meshsync_core::ids::{Hash, ShareId};

use crate::chunk::{ChunkRequest, ChunkResponse, ChunkStatus};
use crate::limits::MAX_CHUNK_LEN;

/// The first byte of a chunk-delta stream (version 5).
pub const STREAM_KIND_CHUNK_DELTA: u8 = 0x05;

/// The longest signature a request may carry, in bytes. The signature of a
/// 24 MiB base (1.5 × the longest chunk) is about 37 KB.
pub const MAX_SIGNATURE_LEN: u32 = 256 * 1024;

/// The shortest block a signature may use, in bytes.
pub const MIN_BLOCK_LEN: u32 = 64;

/// Bytes of each block's MD4 kept in a signature.
pub const STRONG_LEN: u32 = 8;

/// librsync's magic for an MD4 signature.
const SIGNATURE_MAGIC: [u8; 4] = *b"rs\x016";

/// Bytes before the first block of a signature: magic, block size, strong
/// hash length.
const SIGNATURE_HEADER_LEN: usize = 12;

/// Why a delta request, signature or delta is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeltaError {
    /// The request header is not a chunk-delta request.
    #[error("not a chunk-delta request (stream kind {0:#04x})")]
    UnknownStreamKind(u8),
    /// A chunk length of 0 or over the longest plaintext chunk.
    #[error("chunk length {len} is outside 1..={MAX_CHUNK_LEN}")]
    BadLength {
        /// The length given.
        len: u32,
    },
    /// A signature length of 0 or over [`MAX_SIGNATURE_LEN`].
    #[error("signature length {len} is outside 1..={MAX_SIGNATURE_LEN}")]
    SignatureLength {
        /// The length given.
        len: u32,
    },
    /// The signature is not an MD4 signature with blocks of at least
    /// [`MIN_BLOCK_LEN`] bytes and [`STRONG_LEN`]-byte strong hashes.
    #[error("bad signature: {0}")]
    BadSignature(&'static str),
    /// A response with an unknown status, a Found with a delta length of 0
    /// or over the request's limit, or another status with a length.
    #[error("bad delta response: status {status:?}, {len} bytes")]
    BadResponse {
        /// The status, if known.
        status: Option<ChunkStatus>,
        /// The length in the response.
        len: u32,
    },
    /// The delta does not apply to the base.
    #[error("the delta does not apply: {0}")]
    BadDelta(String),
    /// The delta rebuilt another number of bytes than the chunk has.
    #[error("the delta rebuilt {got} bytes of a {len}-byte chunk")]
    WrongLength {
        /// Bytes rebuilt.
        got: usize,
        /// The chunk's length.
        len: u32,
    },
}

/// The header of a chunk-delta request; the signature follows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeltaRequest {
    /// The folder.
    pub share: ShareId,
    /// The chunk wanted: its BLAKE3 hash.
    pub hash: Hash,
    /// The chunk's length (1..=16 MiB: plaintext chunks only).
    pub len: u32,
    /// Bytes of signature after the header (1..=[`MAX_SIGNATURE_LEN`]).
    pub signature_len: u32,
}

impl DeltaRequest {
    /// Bytes in an encoded header (the stream-kind byte included).
    pub const HEADER_LEN: usize = 1 + 32 + 32 + 4 + 4;

    /// The header's bytes.
    pub fn encode_header(&self) -> [u8; Self::HEADER_LEN] {
        let mut out = [0u8; Self::HEADER_LEN];
        out[0] = STREAM_KIND_CHUNK_DELTA;
        self.chunk().encode_fields(&mut out[1..69]);
        out[69..73].copy_from_slice(&self.signature_len.to_be_bytes());
        out
    }

    /// Reads a header from exactly [`DeltaRequest::HEADER_LEN`] bytes.
    pub fn decode_header(bytes: &[u8; Self::HEADER_LEN]) -> Result<Self, DeltaError> {
        if bytes[0] != STREAM_KIND_CHUNK_DELTA {
            return Err(DeltaError::UnknownStreamKind(bytes[0]));
        }
        let chunk = ChunkRequest::decode_fields(bytes[1..69].try_into().expect("68 bytes"));
        let signature_len = u32::from_be_bytes([bytes[69], bytes[70], bytes[71], bytes[72]]);
        if chunk.len == 0 || chunk.len > MAX_CHUNK_LEN {
            return Err(DeltaError::BadLength { len: chunk.len });
        }
        if signature_len == 0 || signature_len > MAX_SIGNATURE_LEN {
            return Err(DeltaError::SignatureLength { len: signature_len });
        }
        Ok(DeltaRequest {
            share: chunk.share,
            hash: chunk.hash,
            len: chunk.len,
            signature_len,
        })
    }

    /// The same chunk as a plain request (for serving and for falling back).
    pub fn chunk(&self) -> ChunkRequest {
        ChunkRequest {
            share: self.share,
            hash: self.hash,
            len: self.len,
        }
    }

    /// The longest delta a responder may send for this chunk: a delta of
    /// nothing but literal bytes is a little longer than the chunk.
    pub fn max_delta_len(&self) -> u32 {
        self.len.saturating_add(self.len / 8).saturating_add(4096)
    }

    /// The response header for a delta of `delta_len` bytes.
    pub fn found(&self, delta_len: u32) -> ChunkResponse {
        ChunkResponse {
            status: ChunkStatus::Found,
            len: delta_len,
        }
    }

    /// Reads the response header (5 bytes, as [`ChunkResponse`]): a Found
    /// carries a delta length of 1 to [`DeltaRequest::max_delta_len`], any
    /// other status zero.
    pub fn decode_response(
        &self,
        bytes: &[u8; ChunkResponse::ENCODED_LEN],
    ) -> Result<ChunkResponse, DeltaError> {
        let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
        let status = ChunkStatus::from_byte(bytes[0])
            .map_err(|_| DeltaError::BadResponse { status: None, len })?;
        let fits = match status {
            ChunkStatus::Found => (1..=self.max_delta_len()).contains(&len),
            ChunkStatus::NotFound | ChunkStatus::Refused => len == 0,
        };
        if !fits {
            return Err(DeltaError::BadResponse {
                status: Some(status),
                len,
            });
        }
        Ok(ChunkResponse { status, len })
    }
}

/// The block length for a base of `len` bytes: about its square root (as
/// rsync picks), a power of two from 256 to 64 KiB. An 8 KiB base gets
/// 256-byte blocks (a 384-byte signature); a 64 KiB base 256 (3 KB); a
/// 4 MiB base 2 KiB (24 KB).
pub fn block_len(len: usize) -> u32 {
    (len.isqrt() as u32)
        .next_power_of_two()
        .clamp(256, 64 * 1024)
}

/// The signature of `base`, for a request.
pub fn signature(base: &[u8]) -> Vec<u8> {
    fast_rsync::Signature::calculate(
        base,
        fast_rsync::SignatureOptions {
            block_size: block_len(base.len()),
            crypto_hash_size: STRONG_LEN,
        },
    )
    .into_serialized()
}

/// Checks a signature from a request: librsync's MD4 magic, a block size of
/// [`MIN_BLOCK_LEN`] to the longest chunk, [`STRONG_LEN`]-byte strong
/// hashes, whole blocks.
pub fn check_signature(signature: &[u8]) -> Result<(), DeltaError> {
    if signature.len() < SIGNATURE_HEADER_LEN || signature.len() > MAX_SIGNATURE_LEN as usize {
        return Err(DeltaError::SignatureLength {
            len: signature.len() as u32,
        });
    }
    let word = |at: usize| {
        u32::from_be_bytes([
            signature[at],
            signature[at + 1],
            signature[at + 2],
            signature[at + 3],
        ])
    };
    if signature[..4] != SIGNATURE_MAGIC {
        return Err(DeltaError::BadSignature("not an MD4 signature"));
    }
    if !(MIN_BLOCK_LEN..=MAX_CHUNK_LEN).contains(&word(4)) {
        return Err(DeltaError::BadSignature("block size out of range"));
    }
    if word(8) != STRONG_LEN {
        return Err(DeltaError::BadSignature("strong hashes are not 8 bytes"));
    }
    if !(signature.len() - SIGNATURE_HEADER_LEN).is_multiple_of(4 + STRONG_LEN as usize) {
        return Err(DeltaError::BadSignature("a partial block entry"));
    }
    Ok(())
}

/// The delta that turns the base `signature` describes into `data`.
pub fn diff(signature: &[u8], data: &[u8]) -> Result<Vec<u8>, DeltaError> {
    check_signature(signature)?;
    let signature = fast_rsync::Signature::deserialize(signature.to_vec())
        .map_err(|_| DeltaError::BadSignature("does not parse"))?;
    let mut out = Vec::with_capacity(data.len() / 16 + 64);
    fast_rsync::diff(&signature.index(), data, &mut out)
        .map_err(|_| DeltaError::BadSignature("refused by the delta encoder"))?;
    Ok(out)
}

/// Rebuilds a chunk of `len` bytes from `base` and `delta`. The caller still
/// checks the result against the chunk's hash.
pub fn apply(base: &[u8], delta: &[u8], len: u32) -> Result<Vec<u8>, DeltaError> {
    let mut out = Vec::with_capacity(len as usize);
    fast_rsync::apply_limited(base, delta, &mut out, len as usize)
        .map_err(|e| DeltaError::BadDelta(e.to_string()))?;
    if out.len() != len as usize {
        return Err(DeltaError::WrongLength {
            got: out.len(),
            len,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn bytes(seed: u64, n: usize) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn a_small_edit_costs_a_block_or_two() {
        let base = bytes(1, 8192);
        let mut edited = base.clone();
        edited[3000..3200].copy_from_slice(&bytes(2, 200));
        let sig = signature(&base);
        assert_eq!(sig.len(), 12 + 32 * 12, "32 blocks of 256 bytes");
        let delta = diff(&sig, &edited).unwrap();
        assert!(delta.len() < 700, "{} bytes", delta.len());
        assert_eq!(apply(&base, &delta, 8192).unwrap(), edited);

        // An append: every block matches, the tail is literal.
        let mut appended = base.clone();
        appended.extend_from_slice(&bytes(3, 100));
        let delta = diff(&sig, &appended).unwrap();
        assert!(delta.len() < 200, "{} bytes", delta.len());
        assert_eq!(apply(&base, &delta, 8292).unwrap(), appended);
    }

    #[test]
    fn requests_round_trip_and_bad_ones_are_refused() {
        let request = DeltaRequest {
            share: ShareId::from_bytes([7; 32]),
            hash: Hash([8; 32]),
            len: 8192,
            signature_len: 396,
        };
        let bytes = request.encode_header();
        assert_eq!(DeltaRequest::decode_header(&bytes), Ok(request));
        let mut bad = bytes;
        bad[0] = 0x01;
        assert_eq!(
            DeltaRequest::decode_header(&bad),
            Err(DeltaError::UnknownStreamKind(1))
        );
        for (at, value, error) in [
            (65, 0u32, DeltaError::BadLength { len: 0 }),
            (
                65,
                MAX_CHUNK_LEN + 1,
                DeltaError::BadLength {
                    len: MAX_CHUNK_LEN + 1,
                },
            ),
            (69, 0, DeltaError::SignatureLength { len: 0 }),
            (
                69,
                MAX_SIGNATURE_LEN + 1,
                DeltaError::SignatureLength {
                    len: MAX_SIGNATURE_LEN + 1,
                },
            ),
        ] {
            let mut bad = bytes;
            bad[at..at + 4].copy_from_slice(&value.to_be_bytes());
            assert_eq!(DeltaRequest::decode_header(&bad), Err(error));
        }

        let response = |status: u8, len: u32| {
            let mut b = [status, 0, 0, 0, 0];
            b[1..].copy_from_slice(&len.to_be_bytes());
            request.decode_response(&b)
        };
        assert!(response(0, 100).is_ok());
        assert!(response(0, request.max_delta_len()).is_ok());
        assert!(response(0, request.max_delta_len() + 1).is_err());
        assert!(response(0, 0).is_err());
        assert!(response(1, 0).is_ok());
        assert!(response(1, 5).is_err());
        assert!(response(9, 0).is_err());
    }

    #[test]
    fn hostile_signatures_are_refused_before_the_encoder_sees_them() {
        let good = signature(&bytes(1, 4096));
        assert!(check_signature(&good).is_ok());
        let with = |at: usize, value: u32| {
            let mut s = good.clone();
            s[at..at + 4].copy_from_slice(&value.to_be_bytes());
            diff(&s, b"data")
        };
        // A block size of 0 would make the encoder loop forever.
        assert!(with(4, 0).is_err());
        assert!(with(4, MIN_BLOCK_LEN - 1).is_err());
        assert!(with(8, 16).is_err());
        assert!(with(0, 0x7273_0236).is_err());
        assert!(diff(&good[..good.len() - 1], b"data").is_err());
        assert!(diff(&good[..11], b"data").is_err());
    }

    proptest! {
        #[test]
        fn any_delta_rebuilds_its_data(
            base in proptest::collection::vec(any::<u8>(), 0..3000),
            data in proptest::collection::vec(any::<u8>(), 1..3000),
        ) {
            let delta = diff(&signature(&base), &data).unwrap();
            prop_assert_eq!(apply(&base, &delta, data.len() as u32).unwrap(), data);
        }

        #[test]
        fn garbage_deltas_fail_cleanly(
            base in proptest::collection::vec(any::<u8>(), 0..500),
            delta in proptest::collection::vec(any::<u8>(), 0..200),
            len in 1u32..1000,
        ) {
            if let Ok(out) = apply(&base, &delta, len) {
                prop_assert_eq!(out.len(), len as usize);
            }
        }
    }
}
