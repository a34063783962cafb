//! Framing of the control stream: every message is one frame,
//! `u32 big-endian payload length ‖ payload`.
//!
//! [`FrameDecoder`] turns a byte stream (as it arrives, in pieces of any size)
//! into frame payloads. It checks each frame's declared length against its
//! limit as soon as the four length bytes are in, before it buffers the
//! payload, so a peer cannot make it hold more than the limit plus what was
//! pushed. After an error it is poisoned: a stream whose framing broke cannot
//! be resynchronised, so every later call returns the same error.
//!
//! This module must never panic on any input, and never allocate according to
//! a length it has not checked.

use crate::limits::MAX_FRAME_LEN;

/// Bytes in a frame header (the big-endian payload length).
pub const HEADER_LEN: usize = 4;

/// Why a byte stream could not be split into frames.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// A frame declares a payload longer than the limit in force.
    #[error("a frame declares {len} bytes of payload; the limit here is {max}")]
    TooLarge {
        /// The declared payload length.
        len: u32,
        /// The limit in force when the header was read.
        max: u32,
    },
    /// The stream ended in the middle of a frame.
    #[error("the stream ended inside a frame: {buffered} bytes of an incomplete frame")]
    Truncated {
        /// Bytes of the incomplete frame (header included) that were received.
        buffered: usize,
    },
}

/// Frames `payload`: its length as `u32` big-endian, then the payload. A
/// payload longer than [`MAX_FRAME_LEN`] is [`FrameError::TooLarge`].
pub fn encode_frame(payload: &[u8]) -> Result<Vec<u8>, FrameError> {
    let len = checked_len(payload.len(), MAX_FRAME_LEN)?;
    let mut frame = Vec::with_capacity(HEADER_LEN + payload.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(payload);
    Ok(frame)
}

/// Fills in the header of a frame built in place: `frame` holds
/// [`HEADER_LEN`] placeholder bytes followed by the payload.
pub(crate) fn seal_frame(mut frame: Vec<u8>) -> Result<Vec<u8>, FrameError> {
    let len = checked_len(frame.len().saturating_sub(HEADER_LEN), MAX_FRAME_LEN)?;
    frame[..HEADER_LEN].copy_from_slice(&len.to_be_bytes());
    Ok(frame)
}

fn checked_len(len: usize, max: u32) -> Result<u32, FrameError> {
    match u32::try_from(len) {
        Ok(len) if len <= max => Ok(len),
        Ok(len) => Err(FrameError::TooLarge { len, max }),
        Err(_) => Err(FrameError::TooLarge { len: u32::MAX, max }),
    }
}

/// Splits a byte stream into frame payloads.
///
/// ```
/// use meshsync_proto::frame::{FrameDecoder, encode_frame};
///
/// let mut decoder = FrameDecoder::new(1024);
/// let frame = encode_frame(b"hello").unwrap();
/// decoder.push(&frame[..3]).unwrap();
/// assert_eq!(decoder.next_frame().unwrap(), None);
/// decoder.push(&frame[3..]).unwrap();
/// assert_eq!(decoder.next_frame().unwrap().as_deref(), Some(&b"hello"[..]));
/// ```
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    /// Received bytes; those before `start` are consumed.
    buf: Vec<u8>,
    /// Where the next frame's header starts in `buf`.
    start: usize,
    /// The largest payload accepted.
    max_len: u32,
    /// The error that poisoned the decoder, if any.
    failed: Option<FrameError>,
}

impl FrameDecoder {
    /// A decoder that accepts payloads of at most `max_len` bytes (capped at
    /// [`MAX_FRAME_LEN`]).
    pub fn new(max_len: u32) -> Self {
        FrameDecoder {
            buf: Vec::new(),
            start: 0,
            max_len: max_len.min(MAX_FRAME_LEN),
            failed: None,
        }
    }

    /// The largest payload accepted now.
    pub fn max_len(&self) -> u32 {
        self.max_len
    }

    /// Changes the limit for frames whose header has not been checked yet
    /// (capped at [`MAX_FRAME_LEN`]). The connection raises it once a folder
    /// is open.
    pub fn set_max_len(&mut self, max_len: u32) {
        self.max_len = max_len.min(MAX_FRAME_LEN);
    }

    /// Appends received bytes. Fails at once if the frame at the front of the
    /// buffer declares a payload over the limit.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), FrameError> {
        self.check_poison()?;
        if self.start > 0 && self.start >= self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
        self.front_len().map(|_| ())
    }

    /// The next complete frame's payload, `None` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        self.check_poison()?;
        let Some(len) = self.front_len()? else {
            return Ok(None);
        };
        let body = self.start + HEADER_LEN;
        let Some(end) = body.checked_add(len as usize) else {
            return Ok(None);
        };
        if self.buf.len() < end {
            return Ok(None);
        }
        let payload = self.buf[body..end].to_vec();
        self.start = end;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        Ok(Some(payload))
    }

    /// Bytes received and not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Call when the stream has ended: an incomplete frame left over is
    /// [`FrameError::Truncated`].
    pub fn finish(&self) -> Result<(), FrameError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        match self.buffered() {
            0 => Ok(()),
            buffered => Err(FrameError::Truncated { buffered }),
        }
    }

    /// The payload length of the frame at the front, once its header is in;
    /// poisons the decoder if it is over the limit.
    fn front_len(&mut self) -> Result<Option<u32>, FrameError> {
        let Some(header) = self.buf.get(self.start..self.start + HEADER_LEN) else {
            return Ok(None);
        };
        let mut bytes = [0u8; HEADER_LEN];
        bytes.copy_from_slice(header);
        let len = u32::from_be_bytes(bytes);
        if len > self.max_len {
            let err = FrameError::TooLarge {
                len,
                max: self.max_len,
            };
            self.failed = Some(err.clone());
            // What is buffered will never be read: free it.
            self.buf = Vec::new();
            self.start = 0;
            return Err(err);
        }
        Ok(Some(len))
    }

    fn check_poison(&self) -> Result<(), FrameError> {
        match &self.failed {
            Some(err) => Err(err.clone()),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn frame_is_big_endian_length_then_payload() {
        assert_eq!(encode_frame(b"ab").unwrap(), vec![0, 0, 0, 2, b'a', b'b']);
        assert_eq!(encode_frame(b"").unwrap(), vec![0, 0, 0, 0]);
    }

    #[test]
    fn oversized_length_fails_as_soon_as_the_header_is_in() {
        let mut decoder = FrameDecoder::new(100);
        decoder.push(&[0, 0]).unwrap();
        let err = decoder.push(&[0, 101]).unwrap_err();
        assert_eq!(err, FrameError::TooLarge { len: 101, max: 100 });
        assert_eq!(decoder.buffered(), 0, "nothing kept after the error");
        // Poisoned: the stream cannot be resynchronised.
        assert_eq!(decoder.next_frame().unwrap_err(), err);
        assert_eq!(decoder.push(&[0; 8]).unwrap_err(), err);
        assert_eq!(decoder.finish().unwrap_err(), err);
    }

    #[test]
    fn a_huge_declared_length_allocates_nothing() {
        let mut decoder = FrameDecoder::new(MAX_FRAME_LEN);
        let err = decoder.push(&u32::MAX.to_be_bytes()).unwrap_err();
        assert_eq!(
            err,
            FrameError::TooLarge {
                len: u32::MAX,
                max: MAX_FRAME_LEN
            }
        );
        assert!(decoder.buf.capacity() < 64);
    }

    #[test]
    fn limit_is_capped_at_the_protocol_maximum() {
        assert_eq!(FrameDecoder::new(u32::MAX).max_len(), MAX_FRAME_LEN);
        let mut decoder = FrameDecoder::new(10);
        decoder.set_max_len(u32::MAX);
        assert_eq!(decoder.max_len(), MAX_FRAME_LEN);
    }

    #[test]
    fn raising_the_limit_applies_to_frames_not_yet_checked() {
        let mut decoder = FrameDecoder::new(4);
        let big = encode_frame(&[7; 10]).unwrap();
        decoder.set_max_len(16);
        decoder.push(&big).unwrap();
        assert_eq!(decoder.next_frame().unwrap(), Some(vec![7; 10]));
    }

    #[test]
    fn truncated_stream_is_reported_at_finish() {
        let mut decoder = FrameDecoder::new(100);
        let frame = encode_frame(b"hello").unwrap();
        decoder.push(&frame[..6]).unwrap();
        assert_eq!(decoder.next_frame().unwrap(), None);
        assert_eq!(
            decoder.finish().unwrap_err(),
            FrameError::Truncated { buffered: 6 }
        );
        let mut empty = FrameDecoder::new(100);
        empty.push(&[0, 0]).unwrap();
        assert_eq!(
            empty.finish().unwrap_err(),
            FrameError::Truncated { buffered: 2 }
        );
    }

    #[test]
    fn payload_over_the_maximum_is_not_encoded() {
        let payload = vec![0u8; MAX_FRAME_LEN as usize + 1];
        assert_eq!(
            encode_frame(&payload).unwrap_err(),
            FrameError::TooLarge {
                len: MAX_FRAME_LEN + 1,
                max: MAX_FRAME_LEN
            }
        );
    }

    proptest! {
        /// Frames survive any split of the stream into pieces.
        #[test]
        fn round_trip_through_any_split(
            payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..20),
            cuts in prop::collection::vec(1usize..64, 0..200),
        ) {
            let stream: Vec<u8> = payloads.iter().flat_map(|p| encode_frame(p).unwrap()).collect();
            let mut decoder = FrameDecoder::new(1000);
            let mut out = Vec::new();
            let mut rest = &stream[..];
            let mut cuts = cuts.into_iter().cycle();
            while !rest.is_empty() {
                let n = cuts.next().unwrap_or(rest.len()).min(rest.len());
                decoder.push(&rest[..n]).unwrap();
                rest = &rest[n..];
                while let Some(frame) = decoder.next_frame().unwrap() {
                    out.push(frame);
                }
            }
            prop_assert_eq!(out, payloads);
            prop_assert_eq!(decoder.finish(), Ok(()));
        }

        /// Any bytes, pushed in any pieces, never panic, and never leave more
        /// buffered than was pushed.
        #[test]
        fn random_bytes_never_panic(
            pieces in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..100), 0..20),
            max in 0u32..200,
        ) {
            let mut decoder = FrameDecoder::new(max);
            let mut pushed = 0;
            for piece in &pieces {
                pushed += piece.len();
                if decoder.push(piece).is_err() {
                    break;
                }
                while let Ok(Some(frame)) = decoder.next_frame() {
                    prop_assert!(frame.len() <= max as usize);
                }
                prop_assert!(decoder.buffered() <= pushed);
            }
            let _ = decoder.finish();
        }
    }
}
