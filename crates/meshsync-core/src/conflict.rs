//! Conflicts: who wins, and what the loser's copy is called.
//!
//! When two devices change a file concurrently, neither change is lost: the
//! winner keeps the name, the loser is kept beside it as
//! `name.sync-conflict-YYYYMMDD-HHMMSS-DEVICE.ext` (time in UTC, DEVICE the
//! loser's short id). The winner is the copy with the newer mtime; on a tie
//! the larger device id wins, so every device picks the same winner.
//! A change always wins over a concurrent delete (the data comes back).

use crate::entry::Timestamp;
use crate::ids::ShortId;
use crate::path::{PathError, RelPath};

/// Whether copy `a` (changed by `a_device`) beats copy `b` (by `b_device`).
pub fn first_wins(
    a_mtime: Timestamp,
    a_device: ShortId,
    b_mtime: Timestamp,
    b_device: ShortId,
) -> bool {
    (a_mtime, a_device) > (b_mtime, b_device)
}

/// The name the losing copy of `path` is kept under.
pub fn conflict_copy_path(
    path: &RelPath,
    now_unix_secs: i64,
    loser: ShortId,
) -> Result<RelPath, PathError> {
    let name = path.file_name();
    let (stem, ext) = split_extension(name);
    let stamp = format_utc_compact(now_unix_secs);
    let new_name = format!("{stem}.sync-conflict-{stamp}-{loser}{ext}");
    path.with_file_name(&new_name)
}

/// Whether `path` is itself a conflict copy.
pub fn is_conflict_copy(path: &RelPath) -> bool {
    path.file_name().contains(".sync-conflict-")
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
    fn winner_is_newer_then_larger_device() {
        let t1 = Timestamp { secs: 1, nanos: 0 };
        let t2 = Timestamp { secs: 2, nanos: 0 };
        assert!(first_wins(t2, ShortId(1), t1, ShortId(9)));
        assert!(first_wins(t1, ShortId(9), t1, ShortId(1)));
        assert!(!first_wins(t1, ShortId(1), t1, ShortId(9)));
    }
}
