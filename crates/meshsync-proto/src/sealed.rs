//! Sealed index streams: how index entries travel on a link where one side
//! holds only a folder's encrypted (storage-only) key.
//!
//! Such a link never carries plaintext index batches on the control stream.
//! Instead the side that wants the other's index opens a request stream of
//! kind [`STREAM_KIND_SEALED_INDEX`] and the other side streams its
//! [`SealedEntry`]s back, first its whole index, then every change as it
//! happens, for as long as the connection lives:
//!
//! ```text
//! requester → responder: SealedIndexRequest (33 bytes) = 0x02 ‖ share (32), then FIN
//! responder → requester: status (u8): 0 streaming, 2 refused (then FIN)
//!                        then, if streaming, frames: u32 BE length ‖ postcard(SealedBatch)
//! SealedBatch = first_sequence: u64 ‖ last_sequence: u64 ‖ entries: Vec<SealedEntry>
//! ```
//!
//! Batches are contiguous: the first starts at 1, each next one at the
//! previous `last_sequence + 1`; entries are sorted by strictly increasing
//! `sequence` within the batch's range, at most
//! [`MAX_BATCH_ENTRIES`](crate::limits::MAX_BATCH_ENTRIES) of them (counted
//! before they are decoded), each well-formed ([`check_sealed_entry`]). One
//! path may have several entries (a storage peer keeps every concurrent
//! version). A stream that breaks a rule is reset by the receiver.
//!
//! What this module does not do: verify signatures. Every entry is signed
//! on its own (`meshsync_core::encrypted_index`); the receiver verifies each
//! one (`verify_sealed_entry`, `open_entry`) before it keeps, relays or
//! believes it, off the async runtime, since each check costs about 55 µs.
//!
//! This module must never panic on any input.

use meshsync_core::encrypted_index::{CHUNK_TAG_LEN, SealedEntry};
use meshsync_core::entry::{ChunkRef, FileKind};
use meshsync_core::ids::ShareId;
use meshsync_core::keys::METADATA_OVERHEAD;
use meshsync_core::path::RelPath;
use meshsync_core::version::VersionVector;
use serde::{Deserialize, Serialize};

use crate::frame::{FrameDecoder, FrameError, encode_frame};
use crate::limits::{MAX_BATCH_ENTRIES, MAX_FRAME_LEN, MAX_REQUEST_LEN, MAX_VERSION_COUNTERS};

/// The first byte of a sealed index stream.
pub const STREAM_KIND_SEALED_INDEX: u8 = 0x02;

/// Why a sealed index stream was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SealedStreamError {
    /// The request header does not have its fixed length.
    #[error("a sealed index request has {expected} bytes, got {got}")]
    HeaderLength {
        /// Its fixed length.
        expected: usize,
        /// Bytes given.
        got: usize,
    },
    /// The stream's first byte is not [`STREAM_KIND_SEALED_INDEX`].
    #[error("stream kind {0:#04x} is not a sealed index stream")]
    WrongStreamKind(u8),
    /// A status byte this version does not know.
    #[error("unknown sealed index status {0}")]
    UnknownStatus(u8),
    /// The framing broke (a frame over the limit, or the stream ended
    /// inside one).
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// A batch did not decode.
    #[error("a sealed index batch does not decode")]
    Malformed,
    /// More entries in one batch than the limit.
    #[error("{count} entries in one sealed batch; the limit is {MAX_BATCH_ENTRIES}")]
    TooManyEntries {
        /// Entries announced.
        count: u64,
    },
    /// A batch that does not start where the previous one ended (+1).
    #[error("a sealed batch starts at {first}, expected {expected}")]
    OutOfSequence {
        /// Where it should start.
        expected: u64,
        /// Where it starts.
        first: u64,
    },
    /// `last_sequence` before `first_sequence`, or `u64::MAX`.
    #[error("bad sealed batch range {first}..={last}")]
    BadRange {
        /// First sequence.
        first: u64,
        /// Last sequence.
        last: u64,
    },
    /// An entry's sequence is outside the batch's range or not above the
    /// previous entry's.
    #[error("entry {path} has sequence {sequence}, out of order or outside the batch's range")]
    EntrySequence {
        /// The (encrypted) path.
        path: RelPath,
        /// Its sequence.
        sequence: u64,
    },
    /// An entry is malformed.
    #[error("entry {path}: {problem}")]
    InvalidEntry {
        /// The (encrypted) path.
        path: RelPath,
        /// What is wrong.
        problem: SealedEntryProblem,
    },
}

/// What is wrong with one sealed entry's clear fields.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SealedEntryProblem {
    /// The path is meshsync's own metadata.
    #[error("the path is meshsync's own metadata")]
    InternalPath,
    /// The version vector is empty, unsorted, repeats a device, has a zero
    /// counter, a counter above [`meshsync_core::version::MAX_COUNTER`] or
    /// too many counters.
    #[error("the version vector is not canonical")]
    NonCanonicalVersion,
    /// Chunks on a directory, a symlink or a tombstone.
    #[error("chunks on something that is not a live file")]
    ChunksOnNonFile,
    /// An encrypted chunk of a length no plaintext chunk encrypts to.
    #[error("an encrypted chunk of {len} bytes (they have 17 to {MAX_REQUEST_LEN})")]
    BadChunkLen {
        /// The length.
        len: u32,
    },
    /// Sealed metadata shorter than its nonce and tag.
    #[error("sealed metadata of {len} bytes is too short")]
    ShortMetadata {
        /// Its length.
        len: usize,
    },
}

/// Checks the clear fields of a sealed entry (not its signature).
pub fn check_sealed_entry(entry: &SealedEntry) -> Result<(), SealedEntryProblem> {
    if entry.path.is_internal() {
        return Err(SealedEntryProblem::InternalPath);
    }
    if !canonical_version(&entry.version) {
        return Err(SealedEntryProblem::NonCanonicalVersion);
    }
    if !entry.chunks.is_empty() && (entry.kind != FileKind::File || entry.deleted) {
        return Err(SealedEntryProblem::ChunksOnNonFile);
    }
    check_chunk_lens(&entry.chunks)?;
    if entry.metadata.len() < METADATA_OVERHEAD {
        return Err(SealedEntryProblem::ShortMetadata {
            len: entry.metadata.len(),
        });
    }
    Ok(())
}

/// A version vector as every sealed entry must carry it: not empty, sorted,
/// no device twice, no zero counter, none above
/// [`meshsync_core::version::MAX_COUNTER`], at most
/// [`MAX_VERSION_COUNTERS`].
fn canonical_version(version: &VersionVector) -> bool {
    let counters = version.counters();
    let sorted = counters.windows(2).all(|pair| pair[0].0 < pair[1].0);
    !counters.is_empty()
        && counters.len() <= MAX_VERSION_COUNTERS
        && sorted
        && counters
            .iter()
            .all(|&(_, c)| c != 0 && c <= meshsync_core::version::MAX_COUNTER)
}

fn check_chunk_lens(chunks: &[ChunkRef]) -> Result<(), SealedEntryProblem> {
    match chunks
        .iter()
        .find(|c| c.len <= CHUNK_TAG_LEN || c.len > MAX_REQUEST_LEN)
    {
        Some(c) => Err(SealedEntryProblem::BadChunkLen { len: c.len }),
        None => Ok(()),
    }
}

/// Bytes in a stream header that is a stream-kind byte and a folder's
/// share id (the sealed-index request and the chunk-hint header).
const SHARE_HEADER_LEN: usize = 1 + 32;

/// A stream header: `kind`, then the share id.
fn encode_share_header(kind: u8, share: &ShareId) -> [u8; SHARE_HEADER_LEN] {
    let mut out = [0u8; SHARE_HEADER_LEN];
    out[0] = kind;
    out[1..].copy_from_slice(share.as_bytes());
    out
}

/// Reads a header of stream kind `kind` from exactly
/// [`SHARE_HEADER_LEN`] bytes.
fn decode_share_header(kind: u8, bytes: &[u8]) -> Result<ShareId, SealedStreamError> {
    let bytes: &[u8; SHARE_HEADER_LEN] =
        bytes
            .try_into()
            .map_err(|_| SealedStreamError::HeaderLength {
                expected: SHARE_HEADER_LEN,
                got: bytes.len(),
            })?;
    if bytes[0] != kind {
        return Err(SealedStreamError::WrongStreamKind(bytes[0]));
    }
    let mut share = [0u8; 32];
    share.copy_from_slice(&bytes[1..]);
    Ok(ShareId::from_bytes(share))
}

/// A request for the responder's sealed index of one folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SealedIndexRequest {
    /// The folder (must be open on this connection).
    pub share: ShareId,
}

impl SealedIndexRequest {
    /// Bytes in an encoded request (the stream-kind byte included).
    pub const ENCODED_LEN: usize = SHARE_HEADER_LEN;

    /// The request's bytes.
    pub fn encode(&self) -> [u8; Self::ENCODED_LEN] {
        encode_share_header(STREAM_KIND_SEALED_INDEX, &self.share)
    }

    /// Reads a request from exactly [`SealedIndexRequest::ENCODED_LEN`] bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, SealedStreamError> {
        decode_share_header(STREAM_KIND_SEALED_INDEX, bytes)
            .map(|share| SealedIndexRequest { share })
    }
}

/// The responder's first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SealedIndexStatus {
    /// Batches follow.
    Streaming,
    /// The folder is not open on this connection (the same answer whether
    /// or not this side holds it); the stream ends.
    Refused,
}

impl SealedIndexStatus {
    /// The status byte.
    pub fn to_byte(self) -> u8 {
        match self {
            SealedIndexStatus::Streaming => 0,
            SealedIndexStatus::Refused => 2,
        }
    }

    /// Reads a status byte.
    pub fn from_byte(b: u8) -> Result<Self, SealedStreamError> {
        match b {
            0 => Ok(SealedIndexStatus::Streaming),
            2 => Ok(SealedIndexStatus::Refused),
            other => Err(SealedStreamError::UnknownStatus(other)),
        }
    }
}

/// One batch of a sealed index stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedBatch {
    /// The first sequence it covers.
    pub first_sequence: u64,
    /// The last sequence it covers.
    pub last_sequence: u64,
    /// The entries, sorted by sequence.
    pub entries: Vec<SealedEntry>,
}

/// Checks a batch against the stream's rules, given where it must start.
fn check_batch(next: u64, batch: &SealedBatch) -> Result<(), SealedStreamError> {
    let (first, last) = (batch.first_sequence, batch.last_sequence);
    if first != next {
        return Err(SealedStreamError::OutOfSequence {
            expected: next,
            first,
        });
    }
    if last < first || last == u64::MAX {
        return Err(SealedStreamError::BadRange { first, last });
    }
    if batch.entries.len() > MAX_BATCH_ENTRIES {
        return Err(SealedStreamError::TooManyEntries {
            count: batch.entries.len() as u64,
        });
    }
    let mut previous = None;
    for e in &batch.entries {
        if !(first..=last).contains(&e.sequence) || previous.is_some_and(|p| e.sequence <= p) {
            return Err(SealedStreamError::EntrySequence {
                path: e.path.clone(),
                sequence: e.sequence,
            });
        }
        previous = Some(e.sequence);
        check_sealed_entry(e).map_err(|problem| SealedStreamError::InvalidEntry {
            path: e.path.clone(),
            problem,
        })?;
    }
    Ok(())
}

/// The sending side of a sealed index stream: checks each batch as the
/// receiver will, and frames it.
#[derive(Debug, Clone)]
pub struct SealedBatchWriter {
    next: u64,
}

impl Default for SealedBatchWriter {
    fn default() -> Self {
        SealedBatchWriter { next: 1 }
    }
}

impl SealedBatchWriter {
    /// A stream that starts at sequence 1.
    pub fn new() -> Self {
        Self::default()
    }

    /// The first sequence of the next batch.
    pub fn next(&self) -> u64 {
        self.next
    }

    /// Frames a batch covering `next()..=last` (entries sorted by sequence,
    /// inside the range). A batch that breaks a rule is refused here, so the
    /// receiver never has to reset the stream for it.
    pub fn frame(
        &mut self,
        last: u64,
        entries: Vec<SealedEntry>,
    ) -> Result<Vec<u8>, SealedStreamError> {
        let batch = SealedBatch {
            first_sequence: self.next,
            last_sequence: last,
            entries,
        };
        check_batch(self.next, &batch)?;
        let payload = postcard::to_stdvec(&batch).map_err(|_| SealedStreamError::Malformed)?;
        let frame = encode_frame(&payload)?;
        self.next = last + 1;
        Ok(frame)
    }
}

/// The receiving side of a sealed index stream (after the status byte):
/// bytes in, checked batches out.
#[derive(Debug, Clone)]
pub struct SealedBatchReader {
    next: u64,
    frames: FrameDecoder,
}

impl Default for SealedBatchReader {
    fn default() -> Self {
        SealedBatchReader {
            next: 1,
            frames: FrameDecoder::new(MAX_FRAME_LEN),
        }
    }
}

impl SealedBatchReader {
    /// A reader expecting the stream's first batch (sequence 1).
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes received bytes (any split). A frame over the limit fails at
    /// once.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), SealedStreamError> {
        Ok(self.frames.push(bytes)?)
    }

    /// The next complete batch, checked (signatures excepted), or `None`
    /// when more bytes are needed.
    pub fn next_batch(&mut self) -> Result<Option<SealedBatch>, SealedStreamError> {
        let Some(payload) = self.frames.next_frame()? else {
            return Ok(None);
        };
        // Count the entries before decoding them.
        let (_, _, count): (u64, u64, u64) = postcard::take_from_bytes(&payload)
            .map(|(v, _)| v)
            .map_err(|_| SealedStreamError::Malformed)?;
        if count > MAX_BATCH_ENTRIES as u64 {
            return Err(SealedStreamError::TooManyEntries { count });
        }
        let batch: SealedBatch =
            postcard::from_bytes(&payload).map_err(|_| SealedStreamError::Malformed)?;
        if postcard::to_stdvec(&batch).map_err(|_| SealedStreamError::Malformed)? != payload {
            // Trailing bytes or a non-canonical encoding.
            return Err(SealedStreamError::Malformed);
        }
        check_batch(self.next, &batch)?;
        self.next = batch.last_sequence + 1;
        Ok(Some(batch))
    }

    /// Call when the stream ended: a frame cut in the middle is an error.
    pub fn finish(&self) -> Result<(), SealedStreamError> {
        Ok(self.frames.finish()?)
    }
}

// Chunk hints (kind 0x03): the chunks of an entry still being sealed, sent
// ahead of it so that a storage peer fetches them while the sender encrypts
// the rest. A hint is not signed and proves nothing: the storage peer keeps
// what it fetched for a hint only in a partial pack, counts it only where the
// signed entry, when it comes, lists the same chunk at the same place, and
// drops it otherwise (docs/protocol.md, "Chunk hint stream").

/// The first byte of a chunk hint stream.
pub const STREAM_KIND_CHUNK_HINTS: u8 = 0x03;

/// Chunks in one hint at most.
pub const MAX_HINT_CHUNKS: usize = 8192;

/// The header of a chunk hint stream: the folder the hints are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChunkHintsHeader {
    /// The folder (must be open and sealed on this connection).
    pub share: ShareId,
}

impl ChunkHintsHeader {
    /// Bytes in an encoded header (the stream-kind byte included).
    pub const ENCODED_LEN: usize = SHARE_HEADER_LEN;

    /// The header's bytes.
    pub fn encode(&self) -> [u8; Self::ENCODED_LEN] {
        encode_share_header(STREAM_KIND_CHUNK_HINTS, &self.share)
    }

    /// Reads a header from exactly [`ChunkHintsHeader::ENCODED_LEN`] bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, SealedStreamError> {
        decode_share_header(STREAM_KIND_CHUNK_HINTS, bytes).map(|share| ChunkHintsHeader { share })
    }
}

/// Chunks `first..first + chunks.len()` of the entry the sender is sealing
/// for encrypted path `path` at `version` (ciphertext hashes and lengths, as
/// the entry will list them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkHint {
    /// The entry's encrypted path.
    pub path: RelPath,
    /// The entry's version vector.
    pub version: VersionVector,
    /// The index of the first chunk in the entry's chunk list.
    pub first: u32,
    /// The chunks, in file order.
    pub chunks: Vec<ChunkRef>,
}

/// Checks a hint's clear fields as for a sealed entry's.
pub fn check_hint(hint: &ChunkHint) -> Result<(), SealedEntryProblem> {
    if hint.path.is_internal() {
        return Err(SealedEntryProblem::InternalPath);
    }
    if !canonical_version(&hint.version) {
        return Err(SealedEntryProblem::NonCanonicalVersion);
    }
    check_chunk_lens(&hint.chunks)
}

/// Frames a hint for a chunk hint stream (refusing one the receiver would
/// refuse).
pub fn frame_hint(hint: &ChunkHint) -> Result<Vec<u8>, SealedStreamError> {
    if hint.chunks.is_empty() || hint.chunks.len() > MAX_HINT_CHUNKS {
        return Err(SealedStreamError::TooManyEntries {
            count: hint.chunks.len() as u64,
        });
    }
    check_hint(hint).map_err(|problem| SealedStreamError::InvalidEntry {
        path: hint.path.clone(),
        problem,
    })?;
    let payload = postcard::to_stdvec(hint).map_err(|_| SealedStreamError::Malformed)?;
    Ok(encode_frame(&payload)?)
}

/// The receiving side of a chunk hint stream (after its header): bytes in,
/// checked hints out.
#[derive(Debug, Clone)]
pub struct ChunkHintReader {
    frames: FrameDecoder,
}

impl Default for ChunkHintReader {
    fn default() -> Self {
        ChunkHintReader {
            frames: FrameDecoder::new(MAX_FRAME_LEN),
        }
    }
}

impl ChunkHintReader {
    /// A reader at the start of the stream's frames.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes received bytes (any split).
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), SealedStreamError> {
        Ok(self.frames.push(bytes)?)
    }

    /// The next complete hint, checked, or `None` when more bytes are
    /// needed.
    pub fn next_hint(&mut self) -> Result<Option<ChunkHint>, SealedStreamError> {
        let Some(payload) = self.frames.next_frame()? else {
            return Ok(None);
        };
        let hint: ChunkHint =
            postcard::from_bytes(&payload).map_err(|_| SealedStreamError::Malformed)?;
        if postcard::to_stdvec(&hint).map_err(|_| SealedStreamError::Malformed)? != payload {
            return Err(SealedStreamError::Malformed);
        }
        if hint.chunks.is_empty() || hint.chunks.len() > MAX_HINT_CHUNKS {
            return Err(SealedStreamError::TooManyEntries {
                count: hint.chunks.len() as u64,
            });
        }
        check_hint(&hint).map_err(|problem| SealedStreamError::InvalidEntry {
            path: hint.path.clone(),
            problem,
        })?;
        Ok(Some(hint))
    }

    /// Call when the stream ended: a frame cut in the middle is an error.
    pub fn finish(&self) -> Result<(), SealedStreamError> {
        Ok(self.frames.finish()?)
    }
}

#[cfg(test)]
mod tests {
    use meshsync_core::encrypted_index::seal_entry;
    use meshsync_core::entry::{ChunkRef, Content, FileEntry, Timestamp};
    use meshsync_core::ids::{Hash, ShortId};
    use meshsync_core::keys::ReadWriteKey;
    use meshsync_core::version::VersionVector;
    use proptest::prelude::*;

    use super::*;

    fn entry(name: &str, sequence: u64) -> SealedEntry {
        let key = ReadWriteKey::from_secret(&[1; 32]);
        let mut version = VersionVector::new();
        version.bump(ShortId(5));
        let chunk = ChunkRef {
            hash: Hash::of(name.as_bytes()),
            len: name.len() as u32,
        };
        let e = FileEntry {
            path: RelPath::new(name).unwrap(),
            kind: FileKind::File,
            size: name.len() as u64,
            mtime: Timestamp::default(),
            permissions: 0o644,
            symlink_target: None,
            content: Some(Content {
                hash: chunk.hash,
                chunk_avg: 65536,
                chunks: vec![chunk],
            }),
            version,
            deleted: false,
            sequence,
        };
        seal_entry(&key, &e, |c| Some(Hash::of(&c.hash.0))).unwrap()
    }

    #[test]
    fn request_layout_is_fixed() {
        let req = SealedIndexRequest {
            share: ShareId::from_bytes([9; 32]),
        };
        let bytes = req.encode();
        assert_eq!(bytes[0], 0x02);
        assert_eq!(&bytes[1..], &[9; 32]);
        assert_eq!(SealedIndexRequest::decode(&bytes), Ok(req));
        assert!(SealedIndexRequest::decode(&bytes[..32]).is_err());
        let mut other = bytes;
        other[0] = 1;
        assert_eq!(
            SealedIndexRequest::decode(&other),
            Err(SealedStreamError::WrongStreamKind(1))
        );
        assert_eq!(
            SealedIndexStatus::from_byte(0),
            Ok(SealedIndexStatus::Streaming)
        );
        assert_eq!(
            SealedIndexStatus::from_byte(2),
            Ok(SealedIndexStatus::Refused)
        );
        assert!(SealedIndexStatus::from_byte(1).is_err());
    }

    #[test]
    fn batches_round_trip_in_any_split() {
        let mut w = SealedBatchWriter::new();
        let mut bytes = w.frame(3, vec![entry("a", 1), entry("b", 3)]).unwrap();
        bytes.extend(w.frame(4, vec![]).unwrap());
        bytes.extend(w.frame(6, vec![entry("a", 6)]).unwrap());
        for split in [1, 7, 100, bytes.len()] {
            let mut r = SealedBatchReader::new();
            let mut got = Vec::new();
            for piece in bytes.chunks(split) {
                r.push(piece).unwrap();
                while let Some(b) = r.next_batch().unwrap() {
                    got.push(b);
                }
            }
            r.finish().unwrap();
            assert_eq!(got.len(), 3);
            assert_eq!(got[0].entries[1], entry("b", 3));
            assert_eq!((got[2].first_sequence, got[2].last_sequence), (5, 6));
        }
    }

    #[test]
    fn writer_refuses_what_the_reader_would() {
        let mut w = SealedBatchWriter::new();
        assert!(matches!(
            w.frame(2, vec![entry("a", 2), entry("b", 1)]),
            Err(SealedStreamError::EntrySequence { .. })
        ));
        assert!(matches!(
            w.frame(1, vec![entry("a", 2)]),
            Err(SealedStreamError::EntrySequence { .. })
        ));
        assert!(matches!(
            w.frame(0, vec![]),
            Err(SealedStreamError::BadRange { .. })
        ));
        let mut chunks_on_dir = entry("d", 1);
        chunks_on_dir.kind = FileKind::Directory;
        assert!(matches!(
            w.frame(1, vec![chunks_on_dir]),
            Err(SealedStreamError::InvalidEntry {
                problem: SealedEntryProblem::ChunksOnNonFile,
                ..
            })
        ));
        assert_eq!(w.next(), 1);
    }

    #[test]
    fn reader_refuses_gaps_replays_and_bad_entries() {
        let frame = |first: u64, last: u64, entries: Vec<SealedEntry>| {
            encode_frame(
                &postcard::to_stdvec(&SealedBatch {
                    first_sequence: first,
                    last_sequence: last,
                    entries,
                })
                .unwrap(),
            )
            .unwrap()
        };
        let read = |bytes: Vec<u8>| {
            let mut r = SealedBatchReader::new();
            r.push(&bytes).unwrap();
            r.next_batch()
        };
        assert!(matches!(
            read(frame(2, 2, vec![])),
            Err(SealedStreamError::OutOfSequence { .. })
        ));
        let mut short_tag = entry("a", 1);
        short_tag.chunks[0].len = 16;
        assert!(matches!(
            read(frame(1, 1, vec![short_tag])),
            Err(SealedStreamError::InvalidEntry { .. })
        ));
        let mut no_version = entry("a", 1);
        no_version.version = VersionVector::new();
        assert!(matches!(
            read(frame(1, 1, vec![no_version])),
            Err(SealedStreamError::InvalidEntry { .. })
        ));
        let mut trailing = frame(1, 1, vec![]);
        trailing.push(0);
        let len = (trailing.len() - 4) as u32;
        trailing[..4].copy_from_slice(&len.to_be_bytes());
        assert_eq!(read(trailing), Err(SealedStreamError::Malformed));
        // The entry count is checked before any entry is decoded.
        let mut many = postcard::to_stdvec(&(1u64, 1u64)).unwrap();
        many.extend(postcard::to_stdvec(&(MAX_BATCH_ENTRIES as u64 + 1)).unwrap());
        assert!(matches!(
            read(encode_frame(&many).unwrap()),
            Err(SealedStreamError::TooManyEntries { .. })
        ));
        // A replay after a good batch.
        let mut r = SealedBatchReader::new();
        r.push(&frame(1, 2, vec![entry("a", 2)])).unwrap();
        assert!(r.next_batch().unwrap().is_some());
        r.push(&frame(2, 3, vec![])).unwrap();
        assert!(matches!(
            r.next_batch(),
            Err(SealedStreamError::OutOfSequence { expected: 3, .. })
        ));
    }

    #[test]
    fn a_cut_frame_is_an_error_at_the_end() {
        let mut w = SealedBatchWriter::new();
        let bytes = w.frame(1, vec![entry("a", 1)]).unwrap();
        let mut r = SealedBatchReader::new();
        r.push(&bytes[..bytes.len() - 1]).unwrap();
        assert_eq!(r.next_batch().unwrap(), None);
        assert!(r.finish().is_err());
    }

    fn hint(path: &str, lens: &[u32]) -> ChunkHint {
        let e = entry(path, 1);
        ChunkHint {
            path: e.path,
            version: e.version,
            first: 3,
            chunks: lens
                .iter()
                .map(|&len| ChunkRef {
                    hash: Hash::of(&len.to_be_bytes()),
                    len,
                })
                .collect(),
        }
    }

    #[test]
    fn hints_round_trip_and_are_checked_like_entries() {
        let header = ChunkHintsHeader {
            share: ShareId::from_bytes([7; 32]),
        };
        let bytes = header.encode();
        assert_eq!(bytes[0], 0x03);
        assert_eq!(ChunkHintsHeader::decode(&bytes), Ok(header));
        assert_eq!(
            SealedIndexRequest::decode(&bytes),
            Err(SealedStreamError::WrongStreamKind(3))
        );
        let (a, b) = (hint("a", &[17, 100]), hint("b", &[MAX_REQUEST_LEN]));
        let mut bytes = frame_hint(&a).unwrap();
        bytes.extend(frame_hint(&b).unwrap());
        for split in [1, 9, bytes.len()] {
            let mut r = ChunkHintReader::new();
            let mut got = Vec::new();
            for piece in bytes.chunks(split) {
                r.push(piece).unwrap();
                while let Some(h) = r.next_hint().unwrap() {
                    got.push(h);
                }
            }
            r.finish().unwrap();
            assert_eq!(got, vec![a.clone(), b.clone()]);
        }
        // What the writer refuses, the reader refuses too.
        let mut internal = hint("c", &[20]);
        internal.path = RelPath::new(".meshsync/x").unwrap();
        let mut bad = vec![hint("c", &[16]), hint("c", &[]), internal];
        let mut unversioned = hint("d", &[20]);
        unversioned.version = VersionVector::new();
        bad.push(unversioned);
        for h in bad {
            assert!(frame_hint(&h).is_err(), "{h:?}");
            let payload = postcard::to_stdvec(&h).unwrap();
            let mut r = ChunkHintReader::new();
            r.push(&encode_frame(&payload).unwrap()).unwrap();
            assert!(r.next_hint().is_err(), "{h:?}");
        }
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
            let _ = SealedIndexRequest::decode(&bytes);
            let _ = ChunkHintsHeader::decode(&bytes);
            let mut r = ChunkHintReader::new();
            if r.push(&bytes).is_ok() {
                let _ = r.next_hint();
            }
            let mut r = SealedBatchReader::new();
            if r.push(&bytes).is_ok() {
                let _ = r.next_batch();
            }
            let mut framed = (bytes.len() as u32).to_be_bytes().to_vec();
            framed.extend(&bytes);
            let mut r = SealedBatchReader::new();
            if r.push(&framed).is_ok() {
                let _ = r.next_batch();
            }
        }
    }
}
