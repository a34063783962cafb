//! Sealed index entries: what a storage-only peer holds, relays and is sent
//! instead of plaintext [`FileEntry`]s.
//!
//! A [`SealedEntry`] hides names and content and shows only what a peer
//! without the data key needs to keep the newest versions and their chunks:
//!
//! | field | in the clear | why |
//! |---|---|---|
//! | `path` | encrypted, component by component (`DataKey::encrypt_path`) | a stable name per path, nothing more |
//! | `kind`, `deleted`, `version` | yes | which version is newest, what is a tombstone |
//! | `chunks` | `(BLAKE3(ciphertext), ciphertext length)` per chunk | what to fetch, store and serve |
//! | `metadata` | sealed (`DataKey::seal_metadata`, bound to the encrypted path) | size, mtime, permissions, symlink target, file hash and the plaintext chunk hashes |
//! | `signature` | yes | made by a read-write device: anyone with any key verifies it |
//! | `sequence` | yes, **not signed** | the sending device's own change number (a relay renumbers) |
//!
//! The plaintext chunk hashes `H` stay sealed: with `H` a storage peer could
//! confirm a guessed chunk far more cheaply than with the ciphertext alone
//! (convergent encryption makes `H` a fingerprint of the content).
//!
//! The metadata lives inside the entry, not in an extra "meta chunk": a
//! reader needs size and mtime to plan (conflicts are decided by mtime)
//! before it fetches anything, so a chunk would cost one round trip per file
//! before the first plan; directories and symlinks have no chunks at all.
//!
//! **Authority.** Every entry is signed on its own ([`sign_entry`] over
//! [`SealedEntry::signed_encoding`]), so it can travel through any number of
//! storage peers and still be believed: a read-write device that was never
//! online with the author restores from a storage peer alone. Receivers
//! verify each entry ([`verify_sealed_entry`], and [`open_entry`] verifies
//! before it decrypts). A storage peer cannot sign, so it cannot make a
//! change; what it can do is withhold the newest version (it cannot forge a
//! newer one).
//!
//! **Versions.** A storage peer never resolves a conflict: it keeps every
//! version of a path that no other version it holds dominates ([`admit`]),
//! until a read-write device's resolution (whose version dominates both)
//! supersedes them.
//!
//! Pure: keys, entries and bytes in, entries out. `docs/keys.md` ("Sealed
//! index entries") is the byte-exact description.

use serde::{Deserialize, Serialize};

use crate::chunking::MAX_AVG;
use crate::entry::{ChunkRef, Content, FileEntry, FileKind, Timestamp};
use crate::ids::Hash;
use crate::keys::{
    DataKey, EntrySignature, KeyError, ReadWriteKey, VerifyKey, sign_entry, verify_entry,
};
use crate::path::{PathError, RelPath};
use crate::version::{Causality, VersionVector};

/// Bytes chunk encryption adds to a chunk (the Poly1305 tag).
pub const CHUNK_TAG_LEN: u32 = 16;

/// The longest encrypted chunk: the longest chunk the chunker cuts (4 × its
/// largest average) plus the tag.
pub const MAX_CIPHER_CHUNK_LEN: u32 = 4 * MAX_AVG + CHUNK_TAG_LEN;

/// The version byte that opens sealed metadata's plaintext.
const METADATA_FORMAT: u8 = 1;

/// One index entry as a storage-only peer sees it (see the module docs).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedEntry {
    /// The encrypted path.
    pub path: RelPath,
    /// File, directory or symlink.
    pub kind: FileKind,
    /// A tombstone.
    pub deleted: bool,
    /// The version vector (the author's, unchanged by relays).
    pub version: VersionVector,
    /// The encrypted chunks, in file order: BLAKE3 of each ciphertext and its
    /// length (plaintext length + [`CHUNK_TAG_LEN`]). Only on live files.
    pub chunks: Vec<ChunkRef>,
    /// The sealed metadata (see [`DataKey::seal_metadata`]).
    pub metadata: Vec<u8>,
    /// The folder signing key's signature over [`SealedEntry::signed_encoding`].
    #[serde(with = "signature_wire")]
    pub signature: EntrySignature,
    /// The sender's change number for this entry (not signed: each relay
    /// numbers the entries of its own index).
    pub sequence: u64,
}

impl std::fmt::Debug for SealedEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedEntry")
            .field("path", &self.path)
            .field("kind", &self.kind)
            .field("deleted", &self.deleted)
            .field("version", &self.version)
            .field("chunks", &self.chunks.len())
            .field("metadata_len", &self.metadata.len())
            .field("sequence", &self.sequence)
            .finish_non_exhaustive()
    }
}

/// The signature as 64 raw bytes (postcard has no length prefix for arrays).
mod signature_wire {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::keys::EntrySignature;

    pub fn serialize<S: Serializer>(sig: &EntrySignature, s: S) -> Result<S::Ok, S::Error> {
        let bytes = sig.to_bytes();
        let (a, b) = bytes.split_at(32);
        let halves: ([u8; 32], [u8; 32]) = (
            a.try_into().expect("32 bytes"),
            b.try_into().expect("32 bytes"),
        );
        halves.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<EntrySignature, D::Error> {
        let (a, b) = <([u8; 32], [u8; 32])>::deserialize(d)?;
        let mut bytes = [0u8; 64];
        bytes[..32].copy_from_slice(&a);
        bytes[32..].copy_from_slice(&b);
        Ok(EntrySignature::from_bytes(bytes))
    }
}

fn kind_byte(kind: FileKind) -> u8 {
    match kind {
        FileKind::File => 0,
        FileKind::Directory => 1,
        FileKind::Symlink => 2,
    }
}

fn put_u32(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&(n as u32).to_be_bytes());
}

impl SealedEntry {
    /// The bytes the signature covers (every field but `signature` and
    /// `sequence`):
    ///
    /// ```text
    /// u32be(len(path)) ‖ path ‖ u8 kind (0 file, 1 directory, 2 symlink) ‖ u8 deleted
    /// ‖ u32be(n) ‖ n × (u64be device ‖ u64be counter)
    /// ‖ u32be(m) ‖ m × (cipher hash (32) ‖ u32be cipher length)
    /// ‖ u32be(len(metadata)) ‖ metadata
    /// ```
    pub fn signed_encoding(&self) -> Vec<u8> {
        let path = self.path.as_str().as_bytes();
        let counters = self.version.counters();
        let mut out = Vec::with_capacity(
            4 + path.len()
                + 2
                + 4
                + 16 * counters.len()
                + 4
                + 36 * self.chunks.len()
                + 4
                + self.metadata.len(),
        );
        put_u32(&mut out, path.len());
        out.extend_from_slice(path);
        out.push(kind_byte(self.kind));
        out.push(u8::from(self.deleted));
        put_u32(&mut out, counters.len());
        for (device, counter) in counters {
            out.extend_from_slice(&device.0.to_be_bytes());
            out.extend_from_slice(&counter.to_be_bytes());
        }
        put_u32(&mut out, self.chunks.len());
        for c in &self.chunks {
            out.extend_from_slice(&c.hash.0);
            out.extend_from_slice(&c.len.to_be_bytes());
        }
        put_u32(&mut out, self.metadata.len());
        out.extend_from_slice(&self.metadata);
        out
    }

    /// Bytes of ciphertext its chunks hold.
    pub fn cipher_bytes(&self) -> u64 {
        self.chunks.iter().map(|c| u64::from(c.len)).sum()
    }
}

/// Why an entry could not be sealed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// A name of the path cannot be encrypted (too long for an encrypted
    /// name of at most 255 bytes).
    #[error("{path}: {source}")]
    Name {
        /// The plaintext path.
        path: RelPath,
        /// Why.
        source: KeyError,
    },
    /// The encrypted path is not a valid path (longer than 4096 bytes).
    #[error("{path}: the encrypted path is too long ({source})")]
    EncryptedPath {
        /// The plaintext path.
        path: RelPath,
        /// Why.
        source: PathError,
    },
    /// The ciphertext hash of a chunk is not known to the caller.
    #[error("{path}: the encrypted form of chunk {chunk} is not known")]
    UnknownChunk {
        /// The plaintext path.
        path: RelPath,
        /// The plaintext chunk hash (hex).
        chunk: String,
    },
}

/// Why a sealed entry was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The signature does not verify for this folder: made with another
    /// folder's key, or the entry or signature was altered.
    #[error("the entry's signature does not verify (another folder, or altered)")]
    BadSignature,
    /// The encrypted path does not decrypt with this folder's data key.
    #[error("the encrypted path does not decrypt: {0}")]
    Path(KeyError),
    /// The decrypted path is not a valid path, or is meshsync's own metadata.
    #[error("the decrypted path is not a valid path")]
    InvalidPath,
    /// The metadata does not open with this folder's data key for this path.
    #[error("the metadata does not decrypt: {0}")]
    Metadata(KeyError),
    /// The metadata opened but is malformed, or disagrees with the clear
    /// fields (chunk count or lengths, kind).
    #[error("malformed metadata: {0}")]
    MalformedMetadata(&'static str),
}

/// An entry opened by a holder of the data key: the plaintext entry, and
/// the encrypted chunks aligned with its content's chunks (where a storage
/// peer serves each of them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenedEntry {
    /// The plaintext entry, numbered with the sealed entry's sequence.
    pub entry: FileEntry,
    /// `cipher_chunks[i]` is the encrypted form of `entry.content.chunks[i]`.
    pub cipher_chunks: Vec<ChunkRef>,
}

/// The private fields of an entry, as sealed.
fn encode_metadata(entry: &FileEntry, content: Option<&Content>) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + content.map_or(0, |c| 32 * c.chunks.len()));
    out.push(METADATA_FORMAT);
    out.extend_from_slice(&entry.size.to_be_bytes());
    out.extend_from_slice(&entry.mtime.secs.to_be_bytes());
    out.extend_from_slice(&entry.mtime.nanos.to_be_bytes());
    out.extend_from_slice(&entry.permissions.to_be_bytes());
    match &entry.symlink_target {
        None => out.push(0),
        Some(target) => {
            out.push(1);
            put_u32(&mut out, target.len());
            out.extend_from_slice(target.as_bytes());
        }
    }
    match content {
        None => out.push(0),
        Some(c) => {
            out.push(1);
            out.extend_from_slice(&c.hash.0);
            out.extend_from_slice(&c.chunk_avg.to_be_bytes());
            put_u32(&mut out, c.chunks.len());
            for chunk in &c.chunks {
                out.extend_from_slice(&chunk.hash.0);
            }
        }
    }
    out
}

/// What sealed metadata says.
struct Metadata {
    size: u64,
    mtime: Timestamp,
    permissions: u32,
    symlink_target: Option<String>,
    /// File hash, chunk average and plaintext chunk hashes.
    content: Option<(Hash, u32, Vec<Hash>)>,
}

/// A strict reader of sealed metadata's plaintext: every length checked,
/// nothing left over.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], OpenError> {
        if self.0.len() < n {
            return Err(OpenError::MalformedMetadata("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], OpenError> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }

    fn u32(&mut self) -> Result<u32, OpenError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn flag(&mut self) -> Result<bool, OpenError> {
        match self.array::<1>()?[0] {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(OpenError::MalformedMetadata("a flag is neither 0 nor 1")),
        }
    }
}

fn decode_metadata(bytes: &[u8]) -> Result<Metadata, OpenError> {
    let mut r = Reader(bytes);
    if r.array::<1>()?[0] != METADATA_FORMAT {
        return Err(OpenError::MalformedMetadata("unknown format"));
    }
    let size = u64::from_be_bytes(r.array()?);
    let secs = i64::from_be_bytes(r.array()?);
    let nanos = r.u32()?;
    let permissions = r.u32()?;
    let symlink_target = if r.flag()? {
        let len = r.u32()? as usize;
        let text = std::str::from_utf8(r.take(len)?)
            .map_err(|_| OpenError::MalformedMetadata("the symlink target is not UTF-8"))?;
        Some(text.to_owned())
    } else {
        None
    };
    let content = if r.flag()? {
        let hash = Hash(r.array()?);
        let avg = r.u32()?;
        let n = r.u32()? as usize;
        // Bounded by the bytes present before anything is allocated.
        if r.0.len() != n.saturating_mul(32) {
            return Err(OpenError::MalformedMetadata(
                "the chunk count does not match",
            ));
        }
        let chunks = (0..n)
            .map(|_| r.array().map(Hash))
            .collect::<Result<Vec<_>, _>>()?;
        Some((hash, avg, chunks))
    } else {
        None
    };
    if !r.0.is_empty() {
        return Err(OpenError::MalformedMetadata("bytes after the end"));
    }
    Ok(Metadata {
        size,
        mtime: Timestamp { secs, nanos },
        permissions,
        symlink_target,
        content,
    })
}

/// Seals `entry` for storage-only peers and signs it. `cipher_hash` gives
/// BLAKE3 of the encrypted form of each plaintext chunk
/// (`DataKey::encrypt_chunk`); the caller keeps those, because computing
/// one means reading and encrypting the chunk. A tombstone carries no
/// content. The result's `sequence` is `entry.sequence`.
pub fn seal_entry(
    key: &ReadWriteKey,
    entry: &FileEntry,
    mut cipher_hash: impl FnMut(&ChunkRef) -> Option<Hash>,
) -> Result<SealedEntry, SealError> {
    let data = key.data_key();
    let encrypted = data
        .encrypt_path(entry.path.as_str())
        .map_err(|source| SealError::Name {
            path: entry.path.clone(),
            source,
        })?;
    let path = RelPath::new(&encrypted).map_err(|source| SealError::EncryptedPath {
        path: entry.path.clone(),
        source,
    })?;
    let content = entry.content.as_ref().filter(|_| entry.is_live());
    let chunks = match content {
        None => Vec::new(),
        Some(c) => c
            .chunks
            .iter()
            .map(|chunk| {
                cipher_hash(chunk)
                    .map(|hash| ChunkRef {
                        hash,
                        len: chunk.len + CHUNK_TAG_LEN,
                    })
                    .ok_or_else(|| SealError::UnknownChunk {
                        path: entry.path.clone(),
                        chunk: chunk.hash.to_hex(),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?,
    };
    let metadata = data.seal_metadata(path.as_str().as_bytes(), &encode_metadata(entry, content));
    let mut sealed = SealedEntry {
        path,
        kind: entry.kind,
        deleted: entry.deleted,
        version: entry.version.clone(),
        chunks,
        metadata,
        signature: EntrySignature::from_bytes([0; 64]),
        sequence: entry.sequence,
    };
    sealed.signature = sign_entry(key, &sealed.signed_encoding());
    Ok(sealed)
}

/// Checks a sealed entry's signature against the folder's verify key: what
/// a storage-only peer does before it keeps or relays an entry.
pub fn verify_sealed_entry(key: &VerifyKey, entry: &SealedEntry) -> Result<(), OpenError> {
    verify_entry(key, &entry.signed_encoding(), &entry.signature)
        .map_err(|_| OpenError::BadSignature)
}

/// Verifies and opens a sealed entry: the plaintext entry (with the sealed
/// entry's sequence) and its encrypted chunks. Refuses an entry whose
/// signature, path or metadata does not check out, or whose metadata
/// disagrees with its clear fields.
pub fn open_entry(
    verify: &VerifyKey,
    data: &DataKey,
    sealed: &SealedEntry,
) -> Result<OpenedEntry, OpenError> {
    verify_sealed_entry(verify, sealed)?;
    let plain_path = data
        .decrypt_path(sealed.path.as_str())
        .map_err(OpenError::Path)?;
    let path = RelPath::new(&plain_path).map_err(|_| OpenError::InvalidPath)?;
    if path.as_str() != plain_path || path.is_internal() {
        return Err(OpenError::InvalidPath);
    }
    let plain = data
        .open_metadata(sealed.path.as_str().as_bytes(), &sealed.metadata)
        .map_err(OpenError::Metadata)?;
    let meta = decode_metadata(&plain)?;
    if meta.symlink_target.is_some() && sealed.kind != FileKind::Symlink {
        return Err(OpenError::MalformedMetadata(
            "a symlink target on something that is not a symlink",
        ));
    }
    let content = match meta.content {
        None if sealed.chunks.is_empty() => None,
        None => return Err(OpenError::MalformedMetadata("chunks without content")),
        Some(_) if sealed.kind != FileKind::File || sealed.deleted => {
            return Err(OpenError::MalformedMetadata("content on a non-file"));
        }
        Some((hash, chunk_avg, hashes)) => {
            if hashes.len() != sealed.chunks.len() {
                return Err(OpenError::MalformedMetadata(
                    "plaintext and encrypted chunk counts differ",
                ));
            }
            let mut chunks = Vec::with_capacity(hashes.len());
            let mut sum = 0u64;
            for (h, c) in hashes.into_iter().zip(&sealed.chunks) {
                let len = c
                    .len
                    .checked_sub(CHUNK_TAG_LEN)
                    .filter(|&l| l > 0)
                    .ok_or(OpenError::MalformedMetadata("an encrypted chunk too short"))?;
                sum += u64::from(len);
                chunks.push(ChunkRef { hash: h, len });
            }
            if sum != meta.size {
                return Err(OpenError::MalformedMetadata(
                    "chunks do not add up to the size",
                ));
            }
            Some(Content {
                hash,
                chunk_avg,
                chunks,
            })
        }
    };
    Ok(OpenedEntry {
        entry: FileEntry {
            path,
            kind: sealed.kind,
            size: meta.size,
            mtime: meta.mtime,
            permissions: meta.permissions,
            symlink_target: meta.symlink_target,
            content,
            version: sealed.version.clone(),
            deleted: sealed.deleted,
            sequence: sealed.sequence,
        },
        cipher_chunks: sealed.chunks.clone(),
    })
}

/// What to do with a verified entry, given the versions of its path that
/// are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// A kept version has exactly this version vector: nothing new.
    Known,
    /// A kept version dominates it: it is out of date.
    Dominated,
    /// Keep it; drop the kept versions at these positions (it dominates
    /// them). Kept versions concurrent with it stay.
    Admit {
        /// Positions (in the order given) of the kept versions it supersedes.
        supersedes: Vec<usize>,
    },
}

/// The storage peer's rule: a path keeps every version that no other kept
/// version dominates. A new version is admitted unless a kept one equals or
/// dominates it, and then replaces the kept versions it dominates. Conflicts
/// (concurrent versions) are left for the read-write devices to resolve.
pub fn admit<'a>(
    kept: impl IntoIterator<Item = &'a VersionVector>,
    new: &VersionVector,
) -> Admission {
    let mut supersedes = Vec::new();
    for (i, v) in kept.into_iter().enumerate() {
        match new.compare(v) {
            Causality::Equal => return Admission::Known,
            Causality::Older => return Admission::Dominated,
            Causality::Newer => supersedes.push(i),
            Causality::Concurrent => {}
        }
    }
    Admission::Admit { supersedes }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::ShortId;

    fn key(seed: u8) -> ReadWriteKey {
        ReadWriteKey::from_secret(&[seed; 32])
    }

    fn vv(pairs: &[(u64, u64)]) -> VersionVector {
        let mut v = VersionVector::new();
        for &(d, c) in pairs {
            let _ = v.bump_at(ShortId(d), c);
        }
        v
    }

    fn file(path: &str, chunks: &[&[u8]]) -> FileEntry {
        let refs: Vec<ChunkRef> = chunks
            .iter()
            .map(|c| ChunkRef {
                hash: Hash::of(c),
                len: c.len() as u32,
            })
            .collect();
        let size = refs.iter().map(|c| u64::from(c.len)).sum();
        FileEntry {
            path: RelPath::new(path).unwrap(),
            kind: FileKind::File,
            size,
            mtime: Timestamp {
                secs: 1_700_000_000,
                nanos: 123_456_789,
            },
            permissions: 0o640,
            symlink_target: None,
            content: Some(Content {
                hash: Hash::of(&chunks.concat()),
                chunk_avg: 65536,
                chunks: refs,
            }),
            version: vv(&[(7, 3), (9, 1)]),
            deleted: false,
            sequence: 42,
        }
    }

    /// Cipher hashes computed the way a device does: by encrypting.
    fn sealed_with(k: &ReadWriteKey, entry: &FileEntry, chunks: &[&[u8]]) -> SealedEntry {
        let table: Vec<(Hash, Hash)> = chunks
            .iter()
            .map(|c| {
                let e = k.data_key().encrypt_chunk(c);
                (e.plain_hash, e.cipher_hash)
            })
            .collect();
        seal_entry(k, entry, |c| {
            table.iter().find(|(p, _)| *p == c.hash).map(|(_, x)| *x)
        })
        .unwrap()
    }

    #[test]
    fn a_file_round_trips_and_hides_names_and_plain_hashes() {
        let k = key(1);
        let chunks: [&[u8]; 2] = [b"first chunk bytes", b"second"];
        let entry = file("docs/secret report.txt", &chunks);
        let sealed = sealed_with(&k, &entry, &chunks);
        assert_eq!(sealed.sequence, 42);
        assert_eq!(sealed.version, entry.version);
        assert_eq!(sealed.chunks.len(), 2);
        assert_eq!(sealed.chunks[0].len, 17 + 16);
        assert!(!sealed.path.as_str().contains("secret"));
        assert_eq!(sealed.path.as_str().split('/').count(), 2);
        // Neither the plaintext chunk hashes nor the file hash appear in
        // anything a storage peer sees.
        let wire = format!("{:?}{}", sealed.chunks, hex(&sealed.signed_encoding()));
        for h in entry
            .content
            .as_ref()
            .unwrap()
            .chunks
            .iter()
            .map(|c| c.hash)
        {
            assert!(!wire.contains(&h.to_hex()));
            assert!(!wire.contains(&format!("{h:?}")));
        }
        // The ciphertext chunk hashes are the real ones.
        let enc = k.data_key().encrypt_chunk(chunks[0]);
        assert_eq!(sealed.chunks[0].hash, enc.cipher_hash);

        let reader = k.read_only();
        let opened = open_entry(reader.verify_key(), reader.data_key(), &sealed).unwrap();
        assert_eq!(opened.entry, entry);
        assert_eq!(opened.cipher_chunks, sealed.chunks);
        // Sealing is deterministic (signatures too).
        assert_eq!(sealed_with(&k, &entry, &chunks), sealed);
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn directories_symlinks_and_tombstones_round_trip() {
        let k = key(1);
        let ro = k.read_only();
        let mut dir = file("a/b", &[]);
        dir.kind = FileKind::Directory;
        dir.content = None;
        dir.size = 0;
        dir.permissions = 0o755;
        let mut link = file("a/link", &[]);
        link.kind = FileKind::Symlink;
        link.content = None;
        link.size = 0;
        link.symlink_target = Some("../target with spaces/ü".into());
        let mut tomb = file("gone.txt", &[b"x"]);
        tomb.deleted = true;
        tomb.content = None;
        tomb.size = 0;
        for e in [dir, link, tomb] {
            let sealed = seal_entry(&k, &e, |_| None).unwrap();
            assert!(sealed.chunks.is_empty());
            let opened = open_entry(ro.verify_key(), ro.data_key(), &sealed).unwrap();
            assert_eq!(opened.entry, e);
        }
    }

    #[test]
    fn a_tombstone_with_content_is_sealed_without_it() {
        let k = key(1);
        let mut tomb = file("gone.txt", &[b"x"]);
        tomb.deleted = true;
        let sealed = seal_entry(&k, &tomb, |_| None).unwrap();
        assert!(sealed.chunks.is_empty());
        let opened = open_entry(k.verify_key(), k.data_key(), &sealed).unwrap();
        assert!(opened.entry.content.is_none() && opened.entry.deleted);
    }

    #[test]
    fn unknown_chunks_and_unencryptable_names_are_refused() {
        let k = key(1);
        let e = file("x", &[b"abc"]);
        assert!(matches!(
            seal_entry(&k, &e, |_| None),
            Err(SealError::UnknownChunk { .. })
        ));
        let long = file(&"n".repeat(120), &[]);
        assert!(matches!(
            seal_entry(&k, &long, |_| None),
            Err(SealError::Name { .. })
        ));
        // 4096 bytes of plaintext path: its encrypted form is too long.
        let deep: Vec<String> = (0..40).map(|i| format!("{i:0>100}")).collect();
        let deep = file(&deep.join("/")[..4000], &[]);
        assert!(matches!(
            seal_entry(&k, &deep, |_| None),
            Err(SealError::EncryptedPath { .. })
        ));
    }

    #[test]
    fn tampered_entries_and_signatures_are_refused() {
        let k = key(1);
        let chunks: [&[u8]; 1] = [b"content"];
        let sealed = sealed_with(&k, &file("f.txt", &chunks), &chunks);
        let (v, d) = (k.verify_key(), k.data_key());
        let refused = |s: &SealedEntry| {
            assert_eq!(verify_sealed_entry(v, s), Err(OpenError::BadSignature));
            assert_eq!(open_entry(v, d, s).unwrap_err(), OpenError::BadSignature);
        };
        let mut t = sealed.clone();
        t.version = vv(&[(7, 4), (9, 1)]);
        refused(&t);
        let mut t = sealed.clone();
        t.deleted = true;
        refused(&t);
        let mut t = sealed.clone();
        t.chunks[0].hash.0[0] ^= 1;
        refused(&t);
        let mut t = sealed.clone();
        t.metadata[40] ^= 1;
        refused(&t);
        let mut t = sealed.clone();
        t.path = RelPath::new(&format!("{}x", sealed.path.as_str())).unwrap();
        refused(&t);
        let mut t = sealed.clone();
        let mut sig = t.signature.to_bytes();
        sig[0] ^= 1;
        t.signature = EntrySignature::from_bytes(sig);
        refused(&t);
        // The sequence is not signed: a relay renumbers.
        let mut t = sealed.clone();
        t.sequence = 7;
        assert_eq!(verify_sealed_entry(v, &t), Ok(()));
        assert_eq!(open_entry(v, d, &t).unwrap().entry.sequence, 7);
    }

    #[test]
    fn an_entry_signed_by_another_folder_is_refused() {
        let other = key(2);
        let mine = key(1);
        let chunks: [&[u8]; 1] = [b"content"];
        let foreign = sealed_with(&other, &file("f.txt", &chunks), &chunks);
        assert_eq!(
            verify_sealed_entry(mine.verify_key(), &foreign),
            Err(OpenError::BadSignature)
        );
        // A read-only key of another folder verifies nothing of this one.
        assert_eq!(
            open_entry(mine.verify_key(), mine.data_key(), &foreign).unwrap_err(),
            OpenError::BadSignature
        );
    }

    #[test]
    fn metadata_that_disagrees_with_the_clear_fields_is_refused() {
        // A (buggy or hostile) holder of the read-write key signs an entry
        // whose chunk list does not match its sealed content.
        let k = key(1);
        let chunks: [&[u8]; 2] = [b"aaaa", b"bbbb"];
        let mut sealed = sealed_with(&k, &file("f", &chunks), &chunks);
        sealed.chunks.pop();
        sealed.signature = sign_entry(&k, &sealed.signed_encoding());
        assert!(matches!(
            open_entry(k.verify_key(), k.data_key(), &sealed),
            Err(OpenError::MalformedMetadata(_))
        ));
        let mut sealed = sealed_with(&k, &file("f", &chunks), &chunks);
        sealed.chunks[0].len += 1;
        sealed.signature = sign_entry(&k, &sealed.signed_encoding());
        assert!(matches!(
            open_entry(k.verify_key(), k.data_key(), &sealed),
            Err(OpenError::MalformedMetadata(_))
        ));
        let mut sealed = sealed_with(&k, &file("f", &chunks), &chunks);
        sealed.kind = FileKind::Directory;
        sealed.signature = sign_entry(&k, &sealed.signed_encoding());
        assert!(matches!(
            open_entry(k.verify_key(), k.data_key(), &sealed),
            Err(OpenError::MalformedMetadata(_))
        ));
    }

    #[test]
    fn metadata_moved_to_another_path_does_not_open() {
        let k = key(1);
        let a = seal_entry(&k, &file("a", &[]), |_| None).unwrap();
        let mut b = seal_entry(&k, &file("b", &[]), |_| None).unwrap();
        b.metadata = a.metadata.clone();
        b.signature = sign_entry(&k, &b.signed_encoding());
        assert!(matches!(
            open_entry(k.verify_key(), k.data_key(), &b),
            Err(OpenError::Metadata(_))
        ));
    }

    #[test]
    fn malformed_metadata_never_panics() {
        let entry = file("f", &[b"x"]);
        let good = encode_metadata(&entry, entry.content.as_ref());
        for cut in 0..good.len() {
            assert!(decode_metadata(&good[..cut]).is_err());
        }
        let mut extra = good.clone();
        extra.push(0);
        assert!(decode_metadata(&extra).is_err());
        let mut huge = good[..good.len() - 36].to_vec();
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode_metadata(&huge).is_err());
        assert!(decode_metadata(&good).is_ok());
    }

    #[test]
    fn postcard_like_serde_round_trip_keeps_the_signature() {
        let k = key(1);
        let sealed = seal_entry(&k, &file("f", &[]), |_| None).unwrap();
        let json = serde_json::to_string(&sealed).unwrap();
        let back: SealedEntry = serde_json::from_str(&json).unwrap();
        assert_eq!(back, sealed);
        assert_eq!(verify_sealed_entry(k.verify_key(), &back), Ok(()));
    }

    #[test]
    fn admission_keeps_every_non_dominated_version() {
        let a1 = vv(&[(1, 1)]);
        let a2 = vv(&[(1, 2)]);
        let b1 = vv(&[(1, 1), (2, 1)]);
        let c = vv(&[(1, 2), (3, 1)]);
        assert_eq!(admit([], &a1), Admission::Admit { supersedes: vec![] });
        assert_eq!(admit([&a1], &a1), Admission::Known);
        assert_eq!(admit([&a2], &a1), Admission::Dominated);
        assert_eq!(
            admit([&a1], &a2),
            Admission::Admit {
                supersedes: vec![0]
            }
        );
        // a2 and b1 are concurrent: both kept.
        assert_eq!(admit([&a2], &b1), Admission::Admit { supersedes: vec![] });
        // A resolution dominating both replaces both.
        let resolved = a2.merge(&b1).merge(&c);
        assert_eq!(
            admit([&a2, &b1], &resolved),
            Admission::Admit {
                supersedes: vec![0, 1]
            }
        );
        // One dominated, one concurrent.
        assert_eq!(
            admit([&a1, &vv(&[(4, 1)])], &a2),
            Admission::Admit {
                supersedes: vec![0]
            }
        );
    }
}

/// The sealed-entry vector of `docs/keys.md` ("Sealed index entries"),
/// checked byte for byte; cross-checked with an independent implementation.
#[cfg(test)]
mod vector {
    use super::*;
    use crate::ids::ShortId;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    pub(super) fn entry() -> (ReadWriteKey, FileEntry, SealedEntry) {
        let secret: [u8; 32] = std::array::from_fn(|i| i as u8);
        let key = ReadWriteKey::from_secret(&secret);
        let chunk = b"meshsync test chunk";
        let h = Hash::of(chunk);
        let mut version = VersionVector::new();
        let _ = version.bump_at(ShortId(0x0102_0304_0506_0708), 1);
        let e = FileEntry {
            path: RelPath::new("hello.txt").unwrap(),
            kind: FileKind::File,
            size: 19,
            mtime: Timestamp {
                secs: 1_700_000_000,
                nanos: 0,
            },
            permissions: 0o644,
            symlink_target: None,
            content: Some(Content {
                hash: h,
                chunk_avg: 65536,
                chunks: vec![ChunkRef { hash: h, len: 19 }],
            }),
            version,
            deleted: false,
            sequence: 1,
        };
        let cipher = key.data_key().encrypt_chunk(chunk).cipher_hash;
        let sealed = seal_entry(&key, &e, |_| Some(cipher)).unwrap();
        (key, e, sealed)
    }

    #[test]
    fn sealed_entry_vector() {
        let (key, e, sealed) = entry();
        let data = key.data_key().as_bytes();
        assert_eq!(
            hex(&blake3::derive_key("meshsync v1 metadata nonce key", data)),
            "497d065a87d8f2afb97ae13eecd91ca6a30d1940b8326b839072045ca4ba646b"
        );
        assert_eq!(
            hex(&blake3::derive_key("meshsync v1 metadata cipher key", data)),
            "d3bf35e3e237dc86f795ce4ee049af9e4dd94cbbec5dff130f900c681fea2364"
        );
        assert_eq!(
            hex(&encode_metadata(&e, e.content.as_ref())),
            "010000000000000013000000006553f10000000000000001a40001c55d75197c\
             76295e26f57cc7e770ebfbfc3a5e2d1e4f295848cdb58432da123f0001000000\
             000001c55d75197c76295e26f57cc7e770ebfbfc3a5e2d1e4f295848cdb58432\
             da123f"
        );
        assert_eq!(
            hex(&sealed.metadata),
            "55b01f294d2cd6a588e7d44898c334de6c5750f9d742bd8950edae7ef261e699\
             650dd754ba45fa882b2ca2f7935c6cec55516d3c889fda3858da025affb59a7a\
             1beeff37915f1af009d25d820a3ccb064189d901b96d2065914fec0b64a19d43\
             17eafc333bb82ddb1c84cef77074a30632e29db8e9e084152d028250d5394610\
             c31e1b2a538aeaafa37a33"
        );
        assert_eq!(
            blake3::hash(&sealed.signed_encoding()).to_hex().as_str(),
            "d096f36a8f9b4520ea2f188ede21cdeb87a2910e8fc0e3107f8c52e93b1a1e3c"
        );
        assert_eq!(
            hex(&sealed.signature.to_bytes()),
            "cf429bcaf6b568318786da57b4ad4bd9be9443a76c855f865877fa711ffb08b8\
             cebcbf178149e2b9c08a4bb996ec6f7d9ce20554acf6d93508d1c543603aa703"
        );
        let opened = open_entry(key.verify_key(), key.data_key(), &sealed).unwrap();
        assert_eq!(opened.entry, e);
    }
}
