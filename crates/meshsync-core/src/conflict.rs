//! Conflicts: who wins, and what the loser's copy is called.
//!
//! When two devices change a file concurrently, neither change is lost: the
//! winner keeps the name, the loser is kept beside it as
//! `name.sync-conflict-YYYYMMDD-HHMMSS-DEVICE-tag.ext` (time in UTC, DEVICE
//! the short id of the loser's last changer, `tag` six letters that
//! [`loser_tag`] derives from the losing version). The winner is the copy
//! with the newer mtime; on a tie the larger device id wins, then content
//! and size ([`WinnerKey`]), so every device picks the same winner whichever
//! side it plays. A change always wins over a concurrent delete (the data
//! comes back).
//!
//! A conflict copy keeps the loser's version vector, and a version vector
//! orders changes of *one* path. Two copies under one name must therefore be
//! the same losing version, or the later sync takes one for an edit of the
//! other and overwrites it (bug 19 of the simulation: two losers of `b`, in
//! one second, with the same last changer, got one name on devices that had
//! not seen each other's copy, and the second loser's version dominated the
//! first's). A device cannot see a name taken on a device it has not met,
//! so the name itself must tell losers apart: the tag is a digest of the
//! losing version (its vector and metadata), the same on every device that
//! keeps that version and different for any other. Content hashes would
//! not do: a stat-only scan does not always know them, and two losers with
//! the same bytes but ordered versions would again share a name.
//!
//! Never: give two different losing versions of a path one copy name (but
//! for a 1 in 3·10^8 tag collision within one second and one device), or
//! read a clock or a random source (the time is passed in).

use crate::entry::Timestamp;
use crate::ids::ShortId;
use crate::path::{PathError, RelPath};

/// What decides between two concurrently changed copies, in order: the
/// newer mtime, then the larger id of the device that made the change, then
/// content hash and size, so that every device, whichever side it plays,
/// picks the same winner. The larger key wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct WinnerKey {
    /// Modification time.
    pub mtime: Timestamp,
    /// The device that made the change.
    pub device: ShortId,
    /// The content hash, if known.
    pub content: Option<crate::ids::Hash>,
    /// Size in bytes.
    pub size: u64,
    /// A digest of everything else that can differ (kind, permissions,
    /// symlink target), so that the order is total: two copies that tie on
    /// all of it are the same, whichever wins.
    pub state: crate::ids::Hash,
}

/// The winner key of an entry changed last by `device`. A directory's mtime
/// does not count: it is not synced, and a scan updates it in the index
/// without a new version, so two devices holding the same version of a
/// directory could disagree on its key, and each pick itself.
pub fn winner_key(e: &crate::entry::FileEntry, device: ShortId) -> WinnerKey {
    let (mtime, device, content, size) = leading_key(e, device);
    WinnerKey {
        mtime,
        device,
        content,
        size,
        state: state_digest(e),
    }
}

/// `winner_key(a, a_device).cmp(&winner_key(b, b_device))`, with each
/// side's state digest (a BLAKE3 hash) taken only when everything before it
/// ties and the states differ. Folding a global view compares two equal
/// versions at every path that two devices hold: the digests were a third
/// of its time.
pub fn compare_winners(
    a: &crate::entry::FileEntry,
    a_device: ShortId,
    b: &crate::entry::FileEntry,
    b_device: ShortId,
) -> std::cmp::Ordering {
    leading_key(a, a_device)
        .cmp(&leading_key(b, b_device))
        .then_with(|| {
            if state_facts(a) == state_facts(b) {
                std::cmp::Ordering::Equal
            } else {
                state_digest(a).cmp(&state_digest(b))
            }
        })
}

/// The fields of [`WinnerKey`] before its state digest, in its order.
fn leading_key(
    e: &crate::entry::FileEntry,
    device: ShortId,
) -> (Timestamp, ShortId, Option<crate::ids::Hash>, u64) {
    let mtime = if e.kind == crate::entry::FileKind::Directory {
        Timestamp::default()
    } else {
        e.mtime
    };
    (mtime, device, e.content.as_ref().map(|c| c.hash), e.size)
}

/// What [`WinnerKey::state`] digests: kind, deleted flag, permissions and
/// symlink target (the digest reads none as empty; kept an `Option` here,
/// as comparing two empty strings calls `memcmp`: 2 ms more per view of
/// 20,000 paths in `cargo bench -p meshsync-core --bench plan`).
fn state_facts(e: &crate::entry::FileEntry) -> (crate::entry::FileKind, bool, u32, Option<&str>) {
    (
        e.kind,
        e.deleted,
        e.permissions,
        e.symlink_target.as_deref(),
    )
}

/// [`WinnerKey::state`].
fn state_digest(e: &crate::entry::FileEntry) -> crate::ids::Hash {
    let (kind, deleted, permissions, target) = state_facts(e);
    let mut h = blake3::Hasher::new();
    h.update(&[kind as u8, u8::from(deleted)]);
    h.update(&permissions.to_le_bytes());
    h.update(target.unwrap_or("").as_bytes());
    h.finalize().into()
}

/// Letters in a [`LoserTag`].
pub const TAG_LEN: usize = 6;

/// Six lowercase letters that name one losing version in its copy's name
/// (see the module docs): a digest of its version vector, kind, size,
/// mtime, permissions and symlink target, which every device holding that
/// version sees alike. The content hash is left out: one device may know
/// it and another not yet, and the version already names the change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LoserTag([u8; TAG_LEN]);

impl LoserTag {
    /// The letters.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("ASCII letters")
    }
}

impl std::fmt::Display for LoserTag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The tag of the losing version `loser` (see [`LoserTag`]).
pub fn loser_tag(loser: &crate::entry::FileEntry) -> LoserTag {
    let mut h = blake3::Hasher::new();
    h.update(b"meshsync conflict copy v1");
    let counters = loser.version.counters();
    h.update(&(counters.len() as u64).to_le_bytes());
    for (device, counter) in counters {
        h.update(&device.0.to_le_bytes());
        h.update(&counter.to_le_bytes());
    }
    // A directory's mtime is not synced (see `winner_key`).
    let mtime = if loser.kind == crate::entry::FileKind::Directory {
        Timestamp::default()
    } else {
        loser.mtime
    };
    h.update(&[loser.kind as u8, u8::from(loser.deleted)]);
    h.update(&loser.size.to_le_bytes());
    h.update(&mtime.secs.to_le_bytes());
    h.update(&mtime.nanos.to_le_bytes());
    h.update(&loser.permissions.to_le_bytes());
    let target = loser.symlink_target.as_deref().unwrap_or("");
    h.update(&(target.len() as u64).to_le_bytes());
    h.update(target.as_bytes());
    let digest = h.finalize();
    let mut n = u64::from_le_bytes(digest.as_bytes()[..8].try_into().expect("8 bytes"));
    let mut letters = [0u8; TAG_LEN];
    for l in &mut letters {
        *l = b'a' + (n % 26) as u8;
        n /= 26;
    }
    LoserTag(letters)
}

/// The name the losing copy of `path` is kept under: `device` is the
/// loser's last changer, `tag` the losing version's [`loser_tag`].
pub fn conflict_copy_path(
    path: &RelPath,
    now_unix_secs: i64,
    device: ShortId,
    tag: LoserTag,
) -> Result<RelPath, PathError> {
    numbered_conflict_copy_path(path, now_unix_secs, device, tag, 1)
}

/// The `n`th candidate name for a conflict copy (`n > 1` adds `-n` after the
/// tag, for when an earlier candidate is taken: the same losing version
/// kept before in the same second).
pub fn numbered_conflict_copy_path(
    path: &RelPath,
    now_unix_secs: i64,
    device: ShortId,
    tag: LoserTag,
    n: u32,
) -> Result<RelPath, PathError> {
    let name = path.file_name();
    let (stem, ext) = split_extension(name);
    let stamp = format_utc_compact(now_unix_secs);
    let suffix = if n > 1 {
        format!("-{n}")
    } else {
        String::new()
    };
    let tail = format!(".sync-conflict-{stamp}-{device}-{tag}{suffix}{ext}");
    // A name near the 255-byte limit keeps as much of its stem as fits (cut
    // at a character boundary), so a conflict on a long name still keeps
    // both versions.
    let room = crate::path::MAX_NAME_BYTES.saturating_sub(tail.len());
    let mut cut = stem.len().min(room);
    while !stem.is_char_boundary(cut) {
        cut -= 1;
    }
    let new_name = format!("{}{tail}", &stem[..cut]);
    path.with_file_name(&new_name)
}

/// Whether `path` is itself a conflict copy.
pub fn is_conflict_copy(path: &RelPath) -> bool {
    path.file_name().contains(".sync-conflict-")
}

/// Whether `copy` is a conflict copy of `path` itself (a sibling named as
/// [`numbered_conflict_copy_path`] names one, for any time, device and
/// number), not of another file or of a conflict copy of it.
pub fn is_conflict_copy_of(copy: &RelPath, path: &RelPath) -> bool {
    if copy.parent() != path.parent() {
        return false;
    }
    let (stem, ext) = split_extension(path.file_name());
    let name = copy.file_name();
    let Some((kept_stem, middle)) = name.strip_suffix(ext).and_then(|rest| {
        rest.rfind(".sync-conflict-")
            .map(|i| (&rest[..i], &rest[i + 15..]))
    }) else {
        return false;
    };
    // The whole stem, or (for a name cut to fit the limit) a prefix of it
    // that filled the name to within a character of the limit.
    let stem_ok = kept_stem == stem
        || (stem.starts_with(kept_stem) && name.len() + 4 > crate::path::MAX_NAME_BYTES);
    if !stem_ok {
        return false;
    }
    // YYYYMMDD-HHMMSS-DEVICE7, then `-tag` (names made before tags had
    // none), then `-N` for a numbered name.
    let b = middle.as_bytes();
    let stamp_ok = b.len() >= 23
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'-'
        && b[9..15].iter().all(u8::is_ascii_digit)
        && b[15] == b'-'
        && b[16..23].iter().all(u8::is_ascii_alphanumeric);
    if !stamp_ok {
        return false;
    }
    let rest = &middle[23..];
    let rest = match rest.strip_prefix('-') {
        Some(t)
            if t.len() >= TAG_LEN && t.as_bytes()[..TAG_LEN].iter().all(u8::is_ascii_lowercase) =>
        {
            &t[TAG_LEN..]
        }
        _ => rest,
    };
    match rest {
        "" => true,
        n => n
            .strip_prefix('-')
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit())),
    }
}

/// Splits `name` into stem and extension (with its dot). A leading dot
/// (`.bashrc`) is part of the stem.
fn split_extension(name: &str) -> (&str, &str) {
    match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], &name[i..]),
        _ => (name, ""),
    }
}

/// `YYYYMMDD-HHMMSS` for a Unix time, in UTC.
pub fn format_utc_compact(unix_secs: i64) -> String {
    let days = unix_secs.div_euclid(86_400);
    let secs_of_day = unix_secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        secs_of_day / 3600,
        (secs_of_day / 60) % 60,
        secs_of_day % 60
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01
/// (the well-known era/day-of-era arithmetic).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAG: LoserTag = LoserTag(*b"abcdef");

    #[test]
    fn a_long_name_keeps_as_much_of_its_stem_as_fits() {
        for stem in ["a".repeat(251), "é".repeat(125) + "x"] {
            let path = RelPath::new(&format!("d/{stem}.txt")).unwrap();
            assert_eq!(path.file_name().len(), stem.len() + 4);
            let copy = conflict_copy_path(&path, 1_700_000_000, ShortId(3), TAG).unwrap();
            assert!(copy.file_name().len() <= crate::path::MAX_NAME_BYTES);
            assert!(copy.file_name().ends_with(".txt"));
            assert!(is_conflict_copy_of(&copy, &path), "{copy}");
            let numbered =
                numbered_conflict_copy_path(&path, 1_700_000_000, ShortId(3), TAG, 12).unwrap();
            assert!(is_conflict_copy_of(&numbered, &path), "{numbered}");
            assert_ne!(copy, numbered);
            let short = RelPath::new("d/other.txt").unwrap();
            assert!(!is_conflict_copy_of(&copy, &short));
        }
    }

    #[test]
    fn formats_dates() {
        assert_eq!(format_utc_compact(0), "19700101-000000");
        assert_eq!(format_utc_compact(951_782_400), "20000229-000000");
        assert_eq!(format_utc_compact(1_795_000_000), "20261118-110640");
        assert_eq!(format_utc_compact(-1), "19691231-235959");
    }

    #[test]
    fn names_conflict_copies() {
        let p = RelPath::new("docs/report.final.pdf").unwrap();
        let c = conflict_copy_path(&p, 0, ShortId(0), TAG).unwrap();
        assert_eq!(
            c.as_str(),
            "docs/report.final.sync-conflict-19700101-000000-AAAAAAA-abcdef.pdf"
        );
        assert!(is_conflict_copy(&c));
        let dot = RelPath::new(".bashrc").unwrap();
        assert_eq!(
            conflict_copy_path(&dot, 0, ShortId(0), TAG)
                .unwrap()
                .as_str(),
            ".bashrc.sync-conflict-19700101-000000-AAAAAAA-abcdef"
        );
    }

    #[test]
    fn winner_is_newer_then_larger_device_then_content() {
        let key = |secs, dev, hash: Option<u8>| WinnerKey {
            mtime: Timestamp { secs, nanos: 0 },
            device: ShortId(dev),
            content: hash.map(|b| crate::ids::Hash([b; 32])),
            size: 1,
            state: crate::ids::Hash([0; 32]),
        };
        assert!(key(2, 1, None) > key(1, 9, None));
        assert!(key(1, 9, None) > key(1, 1, None));
        assert!(key(1, 1, Some(2)) > key(1, 1, Some(1)));
    }

    #[test]
    fn recognises_copies_of_one_path() {
        let p = RelPath::new("d/c.txt").unwrap();
        for n in [1, 2, 12] {
            let c =
                numbered_conflict_copy_path(&p, 1_700_000_000, ShortId(9 << 59), TAG, n).unwrap();
            assert!(is_conflict_copy_of(&c, &p), "{c}");
            // A copy of the copy is not a copy of the original.
            let cc = conflict_copy_path(&c, 1_700_000_000, ShortId(1), TAG).unwrap();
            assert!(!is_conflict_copy_of(&cc, &p), "{cc}");
            assert!(is_conflict_copy_of(&cc, &c), "{cc}");
        }
        // Names made before tags, plain and numbered, are still copies.
        for old in [
            "d/c.sync-conflict-20231114-221329-CAAAAAA.txt",
            "d/c.sync-conflict-20231114-221329-CAAAAAA-3.txt",
        ] {
            assert!(
                is_conflict_copy_of(&RelPath::new(old).unwrap(), &p),
                "{old}"
            );
        }
        for not in [
            "d/c.sync-conflict-20231114-221329-CAAAAAA-abcde.txt",
            "d/c.sync-conflict-20231114-221329-CAAAAAA-ABCDEF.txt",
            "d/c.sync-conflict-20231114-221329-CAAAAAA-abcdef-.txt",
            "d/c.sync-conflict-20231114-221329-CAAAAAA-abcdefg.txt",
        ] {
            assert!(
                !is_conflict_copy_of(&RelPath::new(not).unwrap(), &p),
                "{not}"
            );
        }
        let other = RelPath::new("d/c.sync-conflict-20231114-221329-CAAAAAA.md").unwrap();
        assert!(!is_conflict_copy_of(&other, &p));
        let elsewhere = RelPath::new("c.sync-conflict-20231114-221329-CAAAAAA.txt").unwrap();
        assert!(!is_conflict_copy_of(&elsewhere, &p));
        assert!(!is_conflict_copy_of(&p, &p));
        let dot = RelPath::new(".bashrc").unwrap();
        let c = conflict_copy_path(&dot, 0, ShortId(0), TAG).unwrap();
        assert!(is_conflict_copy_of(&c, &dot));
    }

    #[test]
    fn a_directorys_mtime_does_not_decide() {
        let mut d = crate::entry::FileEntry {
            path: RelPath::new("d").unwrap(),
            kind: crate::entry::FileKind::Directory,
            size: 0,
            mtime: Timestamp { secs: 5, nanos: 0 },
            permissions: 0o755,
            symlink_target: None,
            content: None,
            version: crate::version::VersionVector::new(),
            deleted: false,
            sequence: 0,
        };
        let before = winner_key(&d, ShortId(1));
        d.mtime.secs = 99;
        assert_eq!(winner_key(&d, ShortId(1)), before);
    }

    #[test]
    fn comparing_winners_orders_as_their_keys_do() {
        use crate::entry::{Content, FileEntry, FileKind};
        let base = FileEntry {
            path: RelPath::new("f").unwrap(),
            kind: FileKind::File,
            size: 10,
            mtime: Timestamp { secs: 5, nanos: 0 },
            permissions: 0o644,
            symlink_target: None,
            content: None,
            version: crate::version::VersionVector::new(),
            deleted: false,
            sequence: 0,
        };
        // Each differs from the base in one thing the key looks at.
        let variants: Vec<FileEntry> = vec![
            base.clone(),
            FileEntry {
                mtime: Timestamp { secs: 6, nanos: 0 },
                ..base.clone()
            },
            FileEntry {
                size: 11,
                ..base.clone()
            },
            FileEntry {
                content: Some(Content {
                    hash: crate::ids::Hash::of(b"x"),
                    chunk_avg: 1,
                    chunks: Vec::new(),
                }),
                ..base.clone()
            },
            FileEntry {
                permissions: 0o600,
                ..base.clone()
            },
            FileEntry {
                deleted: true,
                ..base.clone()
            },
            FileEntry {
                kind: FileKind::Symlink,
                symlink_target: Some("t".into()),
                ..base.clone()
            },
            FileEntry {
                kind: FileKind::Directory,
                ..base.clone()
            },
        ];
        for a in &variants {
            for b in &variants {
                for (da, db) in [(ShortId(1), ShortId(1)), (ShortId(1), ShortId(2))] {
                    assert_eq!(
                        compare_winners(a, da, b, db),
                        winner_key(a, da).cmp(&winner_key(b, db)),
                        "{a:?} against {b:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn numbered_names_differ() {
        let p = RelPath::new("a.txt").unwrap();
        let one = numbered_conflict_copy_path(&p, 0, ShortId(0), TAG, 1).unwrap();
        let two = numbered_conflict_copy_path(&p, 0, ShortId(0), TAG, 2).unwrap();
        assert_ne!(one, two);
        assert!(two.as_str().ends_with("-AAAAAAA-abcdef-2.txt"));
    }

    fn entry(version: &[(u64, u64)], size: u64) -> crate::entry::FileEntry {
        let mut v = crate::version::VersionVector::new();
        for &(d, c) in version {
            v.bump_at(ShortId(d), c);
        }
        crate::entry::FileEntry {
            path: RelPath::new("b").unwrap(),
            kind: crate::entry::FileKind::File,
            size,
            mtime: Timestamp { secs: 3, nanos: 0 },
            permissions: 0o644,
            symlink_target: None,
            content: None,
            version: v,
            deleted: false,
            sequence: 0,
        }
    }

    /// Bug 19: two losing versions of `b` in one second, with one last
    /// changer, must get two names; one losing version kept on two devices
    /// gets one name (whatever else the devices know of it).
    #[test]
    fn the_tag_names_the_losing_version() {
        let p = RelPath::new("b").unwrap();
        let name = |e: &crate::entry::FileEntry| {
            conflict_copy_path(&p, 1_700_000_005, ShortId(2), loser_tag(e)).unwrap()
        };
        let first = entry(&[(2, 5)], 2);
        let second = entry(&[(0, 3), (2, 5)], 1);
        assert_ne!(name(&first), name(&second));
        assert!(is_conflict_copy_of(&name(&first), &p));
        let mut same = first.clone();
        same.sequence = 77;
        same.content = Some(crate::entry::Content {
            hash: crate::ids::Hash([1; 32]),
            chunk_avg: 1,
            chunks: vec![],
        });
        assert_eq!(name(&first), name(&same));
        let mut chmod = first.clone();
        chmod.permissions = 0o600;
        assert_ne!(loser_tag(&first), loser_tag(&chmod));
        assert!(
            loser_tag(&first)
                .as_str()
                .bytes()
                .all(|c| c.is_ascii_lowercase())
        );
    }
}
