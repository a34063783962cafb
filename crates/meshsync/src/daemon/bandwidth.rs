//! Bandwidth limits: chunk bytes sent to peers and fetched from them, one
//! budget per direction for all peers together (`max_send_kibps`,
//! `max_recv_kibps` in the config; 0, the default, is no limit).
//!
//! A token bucket (meshsync-net's [`TokenBucket`]) holding a quarter of a
//! second's worth (at least 64 KiB): a sender waits before it writes a
//! chunk's bytes, a fetcher before it asks for a chunk, for as long as the
//! bytes already granted take at the rate. Waits queue in the order bytes
//! were asked for, so no peer or file is starved.
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

    /// How long the caller must wait before `bytes` may go, counting them
    /// as granted.
    fn grant(&self, bytes: u64) -> Duration {
        match self.bucket.lock().expect("poisoned").as_mut() {
            Some(b) => b.spend(Instant::now(), bytes as f64),
            None => Duration::ZERO,
        }
    }

    /// Waits until `bytes` may be sent (or asked for).
    pub async fn take(&self, bytes: u64) {
        let wait = self.grant(bytes);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlimited_grants_at_once_and_a_rate_spreads_grants_over_time() {
        let limit = Bandwidth::default();
        assert_eq!(limit.grant(1 << 30), Duration::ZERO);
        limit.set_kibps(1024); // 1 MiB/s, a 256 KiB burst
        assert_eq!(limit.grant(256 << 10), Duration::ZERO);
        // Each further MiB asked for at once waits a second longer.
        let first = limit.grant(1 << 20);
        let second = limit.grant(1 << 20);
        assert!(
            first > Duration::from_millis(900) && first <= Duration::from_secs(1),
            "{first:?}"
        );
        assert!(
            second > Duration::from_millis(1900) && second <= Duration::from_secs(2),
            "{second:?}"
        );
        limit.set_kibps(0);
        assert_eq!(limit.grant(1 << 30), Duration::ZERO);
    }
}
