//! Bandwidth limits: chunk bytes sent to peers and fetched from them, one
//! budget per direction for all peers together (`max_send_kibps`,
//! `max_recv_kibps` in the config; 0, the default, is no limit).
//!
//! A token bucket (meshsync-net's [`TokenBucket`]) holding a quarter of a
//! second's worth (at least 64 KiB): a sender waits before each 64 KiB
//! slice of a chunk it writes ([`Bandwidth::write_limited`]), a fetcher
//! before it asks for a chunk, for as long as the bytes already granted
//! take at the rate. Waits queue in the order bytes were asked for, so no
//! peer or file is starved. Slices keep every answer moving even at a low
//! rate shared by many streams: the requester gives up on a stream that
//! brings nothing for `chunk_stall_secs`, and a whole chunk granted at once
//! could wait longer than that.
//!
//! What is limited: chunk data (whole chunks, chunk runs, deltas, sealed
//! chunks). Not limited: indexes and control messages (small, and holding
//! them back would only delay the decisions that save transfer), nor
//! chunks copied from local files.
//!
//! This module must never drop or reorder bytes: it only delays.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use meshsync_net::ratelimit::TokenBucket;

/// Bytes a sender writes per grant under a limit.
const SLICE: usize = 64 * 1024;

/// Seconds of the rate a full bucket holds.
const BURST_SECS: f64 = 0.25;
/// The smallest burst, in bytes.
const MIN_BURST: f64 = 64.0 * 1024.0;

/// One direction's budget.
#[derive(Debug, Default)]
pub struct Bandwidth {
    /// `None`: unlimited.
    bucket: Mutex<Option<TokenBucket>>,
}

impl Bandwidth {
    /// Sets the rate in KiB/s (0: unlimited). A changed rate starts with a
    /// full bucket.
    pub fn set_kibps(&self, kibps: u64) {
        let mut bucket = self.bucket.lock().expect("poisoned");
        let rate = kibps as f64 * 1024.0;
        if bucket.as_ref().is_some_and(|b| b.rate() == rate) {
            return;
        }
        *bucket = (kibps > 0)
            .then(|| TokenBucket::new(Instant::now(), rate, (rate * BURST_SECS).max(MIN_BURST)));
    }

    /// How long the caller must wait (from `now`) before `bytes` may go,
    /// counting them as granted.
    fn grant(&self, bytes: u64, now: Instant) -> Duration {
        match self.bucket.lock().expect("poisoned").as_mut() {
            Some(b) => b.spend(now, bytes as f64),
            None => Duration::ZERO,
        }
    }

    /// Waits until `bytes` may be asked for (or sent).
    pub async fn take(&self, bytes: u64) {
        let wait = self.grant(bytes, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// Writes a chunk's bytes to `send`: at once (handed over, not copied)
    /// when there is no limit, else slice by slice as the budget allows.
    pub async fn write_limited(
        &self,
        send: &mut quinn::SendStream,
        bytes: Vec<u8>,
    ) -> Result<(), quinn::WriteError> {
        if self.bucket.lock().expect("poisoned").is_none() {
            return send.write_chunk(bytes.into()).await;
        }
        for slice in bytes.chunks(SLICE) {
            self.take(slice.len() as u64).await;
            send.write_all(slice).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlimited_grants_at_once_and_a_rate_spreads_grants_over_time() {
        let limit = Bandwidth::default();
        let now = Instant::now();
        assert_eq!(limit.grant(1 << 30, now), Duration::ZERO);
        limit.set_kibps(1024); // 1 MiB/s, a 256 KiB burst
        // (`set_kibps` read the clock: its bucket is full by `later`.)
        let later = Instant::now();
        assert_eq!(limit.grant(256 << 10, later), Duration::ZERO);
        // Each further MiB asked for at once waits a second longer.
        assert_eq!(limit.grant(1 << 20, later), Duration::from_secs(1));
        assert_eq!(limit.grant(1 << 20, later), Duration::from_secs(2));
        // Half a second on, the debt is half a second smaller.
        let on = later + Duration::from_millis(500);
        assert_eq!(limit.grant(0, on), Duration::from_millis(1500));
        limit.set_kibps(0);
        assert_eq!(limit.grant(1 << 30, on), Duration::ZERO);
    }
}
