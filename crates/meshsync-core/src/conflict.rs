//! Conflicts: who wins, and what the loser's copy is called.
//!
//! When two devices change a file concurrently, neither change is lost: the
//! winner keeps the name, the loser is kept beside it as
//! `name.sync-conflict-YYYYMMDD-HHMMSS-DEVICE.ext` (time in UTC, DEVICE the
//! loser's short id). The winner is the copy with the newer mtime; on a tie
//! the larger device id wins, then content and size ([`WinnerKey`]), so every
//! device picks the same winner whichever side it plays.
//! A change always wins over a concurrent delete (the data comes back).

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
    let mut h = blake3::Hasher::new();
    h.update(&[e.kind as u8, u8::from(e.deleted)]);
    h.update(&e.permissions.to_le_bytes());
    h.update(e.symlink_target.as_deref().unwrap_or("").as_bytes());
    WinnerKey {
        mtime: if e.kind == crate::entry::FileKind::Directory {
            crate::entry::Timestamp::default()
        } else {
            e.mtime
        },
        device,
        content: e.content.as_ref().map(|c| c.hash),
        size: e.size,
        state: h.finalize().into(),
    }
}

/// The name the losing copy of `path` is kept under.
pub fn conflict_copy_path(
    path: &RelPath,
    now_unix_secs: i64,
    loser: ShortId,
) -> Result<RelPath, PathError> {
    numbered_conflict_copy_path(path, now_unix_secs, loser, 1)
}

/// The `n`th candidate name for a conflict copy (`n > 1` adds `-n` after the
/// device, for when an earlier candidate is taken).
pub fn numbered_conflict_copy_path(
    path: &RelPath,
    now_unix_secs: i64,
    loser: ShortId,
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
    let tail = format!(".sync-conflict-{stamp}-{loser}{suffix}{ext}");
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
    // YYYYMMDD-HHMMSS-DEVICE7, then `-N` for a numbered name.
    let b = middle.as_bytes();
    let stamp_ok = b.len() >= 23
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'-'
        && b[9..15].iter().all(u8::is_ascii_digit)
        && b[15] == b'-'
        && b[16..23].iter().all(u8::is_ascii_alphanumeric);
    stamp_ok
        && match &middle[23..] {
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

    #[test]
    fn a_long_name_keeps_as_much_of_its_stem_as_fits() {
        for stem in ["a".repeat(251), "é".repeat(125) + "x"] {
            let path = RelPath::new(&format!("d/{stem}.txt")).unwrap();
            assert_eq!(path.file_name().len(), stem.len() + 4);
            let copy = conflict_copy_path(&path, 1_700_000_000, ShortId(3)).unwrap();
            assert!(copy.file_name().len() <= crate::path::MAX_NAME_BYTES);
            assert!(copy.file_name().ends_with(".txt"));
            assert!(is_conflict_copy_of(&copy, &path), "{copy}");
            let numbered =
                numbered_conflict_copy_path(&path, 1_700_000_000, ShortId(3), 12).unwrap();
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
        let c = conflict_copy_path(&p, 0, ShortId(0)).unwrap();
        assert_eq!(
            c.as_str(),
            "docs/report.final.sync-conflict-19700101-000000-AAAAAAA.pdf"
        );
        assert!(is_conflict_copy(&c));
        let dot = RelPath::new(".bashrc").unwrap();
        assert_eq!(
            conflict_copy_path(&dot, 0, ShortId(0)).unwrap().as_str(),
            ".bashrc.sync-conflict-19700101-000000-AAAAAAA"
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
            let c = numbered_conflict_copy_path(&p, 1_700_000_000, ShortId(9 << 59), n).unwrap();
            assert!(is_conflict_copy_of(&c, &p), "{c}");
            // A copy of the copy is not a copy of the original.
            let cc = conflict_copy_path(&c, 1_700_000_000, ShortId(1)).unwrap();
            assert!(!is_conflict_copy_of(&cc, &p), "{cc}");
            assert!(is_conflict_copy_of(&cc, &c), "{cc}");
        }
        let other = RelPath::new("d/c.sync-conflict-20231114-221329-CAAAAAA.md").unwrap();
        assert!(!is_conflict_copy_of(&other, &p));
        let elsewhere = RelPath::new("c.sync-conflict-20231114-221329-CAAAAAA.txt").unwrap();
        assert!(!is_conflict_copy_of(&elsewhere, &p));
        assert!(!is_conflict_copy_of(&p, &p));
        let dot = RelPath::new(".bashrc").unwrap();
        let c = conflict_copy_path(&dot, 0, ShortId(0)).unwrap();
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
    fn numbered_names_differ() {
        let p = RelPath::new("a.txt").unwrap();
        let one = numbered_conflict_copy_path(&p, 0, ShortId(0), 1).unwrap();
        let two = numbered_conflict_copy_path(&p, 0, ShortId(0), 2).unwrap();
        assert_ne!(one, two);
        assert!(two.as_str().ends_with("-AAAAAAA-2.txt"));
    }
}
