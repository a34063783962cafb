//! Shared test harness: [`Pair`], two connections wired back to back (after
//! quinn-proto's `tests/util.rs`), and proptest strategies for protocol
//! values. Each test binary uses a different part of it.
#![allow(dead_code)]

use meshsync_core::entry::{ChunkRef, Content, FileEntry, FileKind, Timestamp};
use meshsync_core::ids::{DeviceId, Hash, ShareId, ShortId};
use meshsync_core::keys::{FolderKey, ProofRole, ReadWriteKey};
use meshsync_core::path::RelPath;
use meshsync_core::version::VersionVector;
use meshsync_proto::{Connection, Event, LocalInfo, ProtocolError};
use proptest::prelude::*;

/// The channel binding both ends of a [`Pair`] share (one TLS session).
pub const BINDING: [u8; 32] = [0x42; 32];

pub fn device(n: u8) -> DeviceId {
    DeviceId::from_bytes([n; 32])
}

pub fn folder_key(seed: u8) -> ReadWriteKey {
    ReadWriteKey::from_secret(&[seed; 32])
}

/// Two connections back to back: `client` (the QUIC client, the initiator)
/// and `server`, each with the keys it holds; events each side reported are
/// collected in order.
pub struct Pair {
    pub client: Connection,
    pub server: Connection,
    pub client_keys: Vec<FolderKey>,
    pub server_keys: Vec<FolderKey>,
    pub client_events: Vec<Event>,
    pub server_events: Vec<Event>,
    /// Bytes per delivery: frames are cut into pieces this long, as a
    /// stream may deliver them.
    pub piece: usize,
}

impl Pair {
    pub fn new(client_keys: Vec<FolderKey>, server_keys: Vec<FolderKey>) -> Self {
        Pair {
            client: Connection::new(
                ProofRole::Initiator,
                LocalInfo::new(device(1), "laptop", "meshsync-test/1"),
                BINDING,
                device(2),
            ),
            server: Connection::new(
                ProofRole::Responder,
                LocalInfo::new(device(2), "server", "meshsync-test/1"),
                BINDING,
                device(1),
            ),
            client_keys,
            server_keys,
            client_events: Vec::new(),
            server_events: Vec::new(),
            piece: usize::MAX,
        }
    }

    /// Delivers frames both ways until neither side has anything to send.
    /// The first protocol error either side reports is returned.
    pub fn drive(&mut self) -> Result<(), ProtocolError> {
        loop {
            let to_server = drain_transmits(&mut self.client);
            let to_client = drain_transmits(&mut self.server);
            if to_server.is_empty() && to_client.is_empty() {
                return Ok(());
            }
            for piece in to_server.chunks(self.piece.max(1)) {
                self.server.handle_bytes(piece, &self.server_keys[..])?;
            }
            for piece in to_client.chunks(self.piece.max(1)) {
                self.client.handle_bytes(piece, &self.client_keys[..])?;
            }
            self.collect();
        }
    }

    /// Moves reported events into the per-side lists.
    pub fn collect(&mut self) {
        self.client_events
            .extend(std::iter::from_fn(|| self.client.poll_event()));
        self.server_events
            .extend(std::iter::from_fn(|| self.server.poll_event()));
    }

    /// Takes the events collected so far.
    pub fn take_events(&mut self) -> (Vec<Event>, Vec<Event>) {
        self.collect();
        (
            std::mem::take(&mut self.client_events),
            std::mem::take(&mut self.server_events),
        )
    }
}

fn drain_transmits(connection: &mut Connection) -> Vec<u8> {
    std::iter::from_fn(|| connection.poll_transmit())
        .flatten()
        .collect()
}

/// A file entry with `size` bytes in chunks of at most 4 bytes.
pub fn file_entry(path: &str, sequence: u64, size: u64, device: u64) -> FileEntry {
    let mut version = VersionVector::new();
    version.bump(ShortId(device));
    let chunks = (0..size.div_ceil(4))
        .map(|i| ChunkRef {
            hash: Hash::of(&i.to_be_bytes()),
            len: (size - i * 4).min(4) as u32,
        })
        .collect();
    FileEntry {
        path: RelPath::new(path).unwrap(),
        kind: FileKind::File,
        size,
        mtime: Timestamp {
            secs: 1_700_000_000,
            nanos: 5,
        },
        permissions: 0o644,
        symlink_target: None,
        content: Some(Content {
            hash: Hash::of(path.as_bytes()),
            chunk_avg: 65536,
            chunks,
        }),
        version,
        deleted: false,
        sequence,
    }
}

// --- proptest strategies ------------------------------------------------------

pub fn arb_path() -> impl Strategy<Value = RelPath> {
    prop::collection::vec("[a-zA-Z0-9_é日 -]{1,10}", 1..4).prop_filter_map(
        "not a valid path",
        |parts| {
            let path = RelPath::new(&parts.join("/")).ok()?;
            (!path.is_internal()).then_some(path)
        },
    )
}

pub fn arb_hash() -> impl Strategy<Value = Hash> {
    any::<[u8; 32]>().prop_map(Hash)
}

pub fn arb_share() -> impl Strategy<Value = ShareId> {
    any::<[u8; 32]>().prop_map(ShareId::from_bytes)
}

pub fn arb_version() -> impl Strategy<Value = VersionVector> {
    prop::collection::vec((0u64..8, 0u64..1_000_000), 0..5).prop_map(|bumps| {
        let mut version = VersionVector::new();
        for (device, clock) in bumps {
            version.bump_at(ShortId(device), clock);
        }
        version
    })
}

/// A well-formed entry (passes every entry rule) with any sequence.
pub fn arb_entry() -> impl Strategy<Value = FileEntry> {
    (
        arb_path(),
        0u8..3,
        prop::collection::vec((arb_hash(), 1u32..100_000), 0..6),
        any::<i64>(),
        0u32..1_000_000_000,
        any::<u32>(),
        arb_version(),
        any::<bool>(),
        any::<u64>(),
        "[a-z/.]{1,20}",
    )
        .prop_map(
            |(path, kind, chunks, secs, nanos, permissions, version, deleted, sequence, target)| {
                let kind = [FileKind::File, FileKind::Directory, FileKind::Symlink][kind as usize];
                let chunks: Vec<ChunkRef> = chunks
                    .into_iter()
                    .map(|(hash, len)| ChunkRef { hash, len })
                    .collect();
                let size = chunks.iter().map(|c| u64::from(c.len)).sum();
                let is_file = kind == FileKind::File;
                FileEntry {
                    path,
                    kind,
                    size: if is_file { size } else { 0 },
                    mtime: Timestamp { secs, nanos },
                    permissions,
                    symlink_target: (kind == FileKind::Symlink).then_some(target),
                    content: is_file.then(|| Content {
                        hash: Hash::of(&size.to_be_bytes()),
                        chunk_avg: 65536,
                        chunks,
                    }),
                    version,
                    deleted,
                    sequence,
                }
            },
        )
}
