//! meshsync's pure core: every rule of the sync engine, as functions of plain data.
//!
//! What lives here decides; the shells (`meshsync-store` for disk, `meshsync-net`
//! for the network) only carry bytes. Main pieces:
//!
//! - [`ids`]: [`ids::DeviceId`], [`ids::ShareId`] and their text forms.
//! - [`path`]: [`path::RelPath`], a validated, NFC-normalised relative path.
//! - [`version`]: [`version::VersionVector`] and its partial order.
//! - [`entry`]: [`entry::FileEntry`], one file's record in an index.
//! - [`encrypted_index`]: [`encrypted_index::SealedEntry`], an entry as a
//!   storage-only peer holds it (encrypted, signed on its own).
//! - [`chunking`]: content-defined chunk parameters and a streaming cutter.
//! - [`ignore`]: `.meshsyncignore` rules (gitignore syntax).
//! - [`conflict`]: conflict-copy names and the winner rule.
//! - [`plan`]: the planner that turns two indexes into actions.
//! - [`global`]: the global view a device with several peers plans against.
//! - [`pull`]: what a device does to its own folder to match that view.
//!
//! This crate must never do I/O, read a clock, spawn threads or draw random
//! numbers: time and randomness are passed in, so that every decision can be
//! replayed by a seeded simulation.

pub mod chunking;
pub mod conflict;
pub mod encrypted_index;
pub mod entry;
pub mod global;
pub mod ids;
pub mod ignore;
pub mod keys;
pub mod path;
pub mod plan;
pub mod pull;
pub mod version;

/// Helpers for this crate's unit tests.
#[cfg(test)]
pub(crate) mod testing {
    /// A seeded xorshift64 that draws numbers below its argument: the same
    /// sequence on every run, so a failing case replays.
    pub fn seeded(seed: u64) -> impl FnMut(u64) -> u64 {
        let mut state = seed.max(1);
        move |below| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % below
        }
    }
}
