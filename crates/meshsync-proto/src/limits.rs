//! Every size and count limit of the protocol, in one place.
//!
//! Each limit protects the receiver's memory or CPU from a peer (or a stranger:
//! until a folder is open, the peer has proven nothing). Limits are checked
//! *before* the memory they guard is committed where the encoding allows it
//! (frame lengths, entry counts), and right after decoding otherwise. A peer
//! that exceeds one is closed with [`CloseCode::LimitExceeded`] or
//! [`CloseCode::FrameTooLarge`](crate::CloseCode::FrameTooLarge).
//!
//! Changing a limit that a conforming peer may reach is a protocol change:
//! update `docs/protocol.md` ("Limits") with it. A limit must never be
//! relaxed for a peer that has not proven it holds a folder's key.
//!
//! [`CloseCode::LimitExceeded`]: crate::CloseCode::LimitExceeded

/// The largest frame payload on the control stream once a folder is open, in
/// bytes (16 MiB). An index batch must fit in one frame: with chunk references
/// of about 37 bytes each, one entry can list about 450,000 chunks, i.e. a file
/// of about 1.7 TiB at the largest average chunk size.
pub const MAX_FRAME_LEN: u32 = 16 * 1024 * 1024;

/// The largest frame payload while no folder is open on the connection (64
/// KiB): a peer that has proven nothing cannot make this side buffer more.
/// Hello, OpenFolder, FolderRefused, Ping, Pong and Close are far smaller.
pub const MAX_UNPROVEN_FRAME_LEN: u32 = 64 * 1024;

/// The most entries in one index batch. Checked from the encoded count before
/// any entry is decoded.
pub const MAX_BATCH_ENTRIES: usize = 4096;

/// The most folders one connection may track: open, offered or refused, by
/// either side. An offer past this closes the connection.
pub const MAX_FOLDERS_PER_CONNECTION: usize = 1024;

/// The longest device name in a Hello, in bytes of UTF-8.
pub const MAX_DEVICE_NAME_LEN: usize = 128;

/// The longest client string (`name/version`) in a Hello, in bytes of UTF-8.
pub const MAX_CLIENT_LEN: usize = 64;

/// The longest reason text in a Close, in bytes of UTF-8. Longer reasons from
/// a peer are cut (the connection is closing anyway); this side never sends
/// longer ones.
pub const MAX_REASON_LEN: usize = 256;

/// The most pings this side may have sent and not yet seen answered.
pub const MAX_OUTSTANDING_PINGS: usize = 16;

/// The longest chunk that may be requested or served, in bytes (16 MiB: the
/// largest chunk the content-defined chunker cuts, 4 × its largest average).
pub const MAX_CHUNK_LEN: u32 = 4 * meshsync_core::chunking::MAX_AVG;

/// The longest chunk a chunk request may ask for, in bytes: the longest
/// encrypted chunk a storage-only peer serves ([`MAX_CHUNK_LEN`] plus the
/// 16-byte tag).
pub const MAX_REQUEST_LEN: u32 = meshsync_core::encrypted_index::MAX_CIPHER_CHUNK_LEN;

/// The most counters in one entry's version vector.
pub const MAX_VERSION_COUNTERS: usize = 1024;

/// The longest symlink target in an entry, in bytes.
pub const MAX_SYMLINK_TARGET_LEN: usize = 4096;

/// The most peers one peer-exchange message lists.
pub const MAX_PEX_PEERS: usize = 32;

/// The most addresses of one peer in a peer-exchange message.
pub const MAX_PEX_ADDRESSES: usize = 8;

/// The most runs of chunk numbers in one chunks-held message (a sender with
/// more splits them over several messages).
pub const MAX_HELD_SPANS: usize = 1024;
