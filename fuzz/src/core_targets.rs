//! Fuzz targets over `meshsync-core`'s parsers: paths, folder keys, device
//! and share ids, ignore rules. Each takes arbitrary bytes, must never
//! panic, and checks the laws its parser promises (what parses prints back
//! the same, what is accepted is safe to use), so a fuzzer finds wrong
//! answers as well as crashes.
//!
//! The same functions run three ways: as libFuzzer targets (`fuzz/`, see
//! `docs/reliability.md`), over the seed corpus and random input in
//! `cargo test` (`crates/meshsync-core/tests/regressions.rs` includes this
//! file), and by hand on a crash file. Hence no dependency but
//! `meshsync-core` and `std`.
//!
//! Inputs that are not UTF-8 are cut at the first invalid byte: every parser
//! here takes `&str`, so the bytes before it are the interesting part.

use meshsync_core::ids::{DeviceId, ShareId};
use meshsync_core::ignore::IgnoreRules;
use meshsync_core::keys::{EncryptedKey, FolderKey, KeyKind, ReadOnlyKey, ReadWriteKey};
use meshsync_core::path::{MAX_NAME_BYTES, MAX_PATH_BYTES, RelPath};

/// The base32 alphabet of key strings (RFC 4648).
const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// The longest UTF-8 prefix of `data`.
pub fn text(data: &[u8]) -> &str {
    match std::str::from_utf8(data) {
        Ok(s) => s,
        Err(e) => std::str::from_utf8(&data[..e.valid_up_to()]).expect("valid up to here"),
    }
}

/// `RelPath::new` on the input: an accepted path is relative, `/`-separated,
/// NFC, free of `.`/`..`/empty components, NUL and backslashes, within the
/// length limits, and parses again to itself; its parents, joins and
/// helpers never panic and stay valid.
pub fn rel_path(data: &[u8]) {
    let s = text(data);
    let Ok(path) = RelPath::new(s) else {
        return;
    };
    let p = path.as_str();
    assert!(!p.is_empty() && !p.starts_with('/'), "{p:?}");
    assert!(!p.contains('\0') && !p.contains('\\'), "{p:?}");
    assert!(p.len() <= MAX_PATH_BYTES, "{p:?}");
    let b = p.as_bytes();
    assert!(
        !(b.len() >= 2
            && b[0].is_ascii_alphabetic()
            && b[1] == b':'
            && matches!(b.get(2), None | Some(b'/'))),
        "drive-absolute path accepted: {p:?}"
    );
    for name in p.split('/') {
        assert!(!matches!(name, "" | "." | ".."), "{p:?}");
        assert!(name.len() <= MAX_NAME_BYTES, "{p:?}");
    }
    assert_eq!(RelPath::new(p).as_ref(), Ok(&path), "not idempotent");
    // Every ancestor is a valid path that the path starts with (the first
    // 16 checked in full: a check per level would make deep paths
    // quadratic and slow the fuzzer down).
    let mut at = path.clone();
    let mut depth = path.depth();
    while let Some(parent) = at.parent() {
        depth -= 1;
        if path.depth() - depth <= 16 {
            assert_eq!(RelPath::new(parent.as_str()).as_ref(), Ok(&parent));
            assert!(path.starts_with(&parent));
            assert_eq!(parent.depth(), depth);
        }
        at = parent;
    }
    assert_eq!(depth, 1);
    let _ = path.is_internal();
    let _ = path.portability_problem();
    let _ = path.case_fold_key();
    if let Ok(joined) = path.join(path.file_name()) {
        assert_eq!(joined.parent().as_ref(), Some(&path));
    }
    if let Ok(sibling) = path.with_file_name("x") {
        assert_eq!(sibling.parent(), path.parent());
    }
}

/// The check character of a key body (type letter and base32), as
/// `docs/keys.md` specifies: a sum over GF(32) = GF(2)\[x\]/(x⁵ + x² + 1).
/// `None` if a character is outside the alphabet.
pub fn key_check_character(body: &[u8]) -> Option<u8> {
    fn times_x(c: u8) -> u8 {
        let c = c << 1;
        if c & 0b10_0000 != 0 { c ^ 0b10_0101 } else { c }
    }
    let mut c = 0u8;
    for byte in body {
        let v = ALPHABET.iter().position(|a| a == byte)? as u8;
        c = times_x(c) ^ v;
    }
    Some(ALPHABET[times_x(c) as usize])
}

/// Folder-key parsing. The input is parsed as given, and again with its
/// last character replaced by the right check character, so the fuzzer
/// reaches the payload checks (trailing bits, curve points) without having
/// to guess a checksum. An accepted key prints as the input's normalised
/// form and parses back to the same folder; each kind parses only as its
/// own type; derivations never panic and keep the share id.
pub fn folder_key(data: &[u8]) {
    let s = text(data);
    check_key(s);
    let normal: Vec<u8> = s
        .bytes()
        .filter(|b| *b != b'-' && !b.is_ascii_whitespace())
        .map(|b| b.to_ascii_uppercase())
        .collect();
    if normal.len() >= 2
        && let Some(check) = key_check_character(&normal[..normal.len() - 1])
    {
        let mut sealed = normal[..normal.len() - 1].to_vec();
        sealed.push(check);
        check_key(std::str::from_utf8(&sealed).expect("ASCII"));
    }
}

fn check_key(s: &str) {
    let Ok(key) = s.parse::<FolderKey>() else {
        assert!(s.parse::<ReadWriteKey>().is_err());
        assert!(s.parse::<ReadOnlyKey>().is_err());
        assert!(s.parse::<EncryptedKey>().is_err());
        return;
    };
    let printed = key.to_key_string();
    let normal: String = s
        .chars()
        .filter(|c| *c != '-' && !c.is_whitespace())
        .map(|c| c.to_ascii_uppercase())
        .collect();
    assert_eq!(*printed, normal, "a key prints as its normalised input");
    assert_eq!(printed.len(), key.kind().text_len());
    let again: FolderKey = printed.parse().expect("a printed key parses");
    assert_eq!(again.kind(), key.kind());
    assert_eq!(again.share_id(), key.share_id());
    assert_eq!(
        again.access_key().as_bytes(),
        key.access_key().as_bytes(),
        "same folder, same access key"
    );
    assert_eq!(
        s.parse::<ReadWriteKey>().is_ok(),
        key.kind() == KeyKind::ReadWrite
    );
    assert_eq!(
        s.parse::<ReadOnlyKey>().is_ok(),
        key.kind() == KeyKind::ReadOnly
    );
    assert_eq!(
        s.parse::<EncryptedKey>().is_ok(),
        key.kind() == KeyKind::Encrypted
    );
    assert_eq!(key.data_key().is_some(), key.kind().can_read());
    let encrypted = key.to_encrypted();
    assert_eq!(encrypted.share_id(), key.share_id());
    assert_eq!(
        encrypted
            .to_key_string()
            .parse::<FolderKey>()
            .map(|k| k.kind())
            .ok(),
        Some(KeyKind::Encrypted)
    );
    match key.to_read_only() {
        Ok(ro) => {
            assert!(key.kind().can_read());
            assert_eq!(ro.share_id(), key.share_id());
            assert_eq!(
                ro.to_key_string()
                    .parse::<ReadOnlyKey>()
                    .map(|k| k.share_id())
                    .ok(),
                Some(key.share_id())
            );
        }
        Err(_) => assert_eq!(key.kind(), KeyKind::Encrypted),
    }
}

/// Device-id and share-id parsing: what parses prints back to an id that
/// parses to the same value. The device id is also tried with every check
/// character (one per 13-character group) recomputed, so the fuzzer gets
/// past them; its text form is the one `Display` prints.
pub fn device_id(data: &[u8]) {
    let s = text(data);
    if let Ok(id) = s.parse::<DeviceId>() {
        let printed = id.to_string();
        assert_eq!(printed.parse::<DeviceId>().ok(), Some(id));
        assert_eq!(printed.len(), 63, "{printed}");
    }
    if let Ok(share) = s.parse::<ShareId>() {
        assert_eq!(share.to_string().parse::<ShareId>().ok(), Some(share));
    }
    // Re-seal: 52 base32 characters become a well-formed device id, whose
    // parse must then succeed exactly when the bits are canonical.
    let body: Vec<u8> = s
        .bytes()
        .map(|b| b.to_ascii_uppercase())
        .filter(|b| ALPHABET.contains(b))
        .take(52)
        .collect();
    if body.len() == 52 {
        let from_bytes = DeviceId::from_bytes(device_bytes(&body));
        let text = from_bytes.to_string();
        assert_eq!(text.parse::<DeviceId>().ok(), Some(from_bytes));
    }
}

/// 32 bytes from 52 base32 characters (the last character's low bits
/// dropped), without any decoder: the id that the fuzzer's characters
/// spell.
fn device_bytes(body: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    let mut acc: u32 = 0;
    let mut bits = 0;
    let mut at = 0;
    for b in body {
        let v = ALPHABET.iter().position(|a| a == b).expect("filtered") as u32;
        acc = (acc << 5) | v;
        bits += 5;
        if bits >= 8 && at < 32 {
            bits -= 8;
            out[at] = (acc >> bits) as u8;
            at += 1;
        }
        acc &= (1 << bits) - 1;
    }
    out
}

/// Ignore-rule parsing and matching. The input is an ignore file; every
/// line that is also a valid path, and a few fixed paths, are matched
/// against it. A bad line is reported with a line number inside the file;
/// a path that matches on its own is ignored; everything below an ignored
/// directory is ignored too.
pub fn ignore_rules(data: &[u8]) {
    let s = text(data);
    let rules = match IgnoreRules::parse(s) {
        Ok(rules) => rules,
        Err(e) => {
            assert!(
                e.line <= s.lines().count(),
                "line {} of {}",
                e.line,
                s.lines().count()
            );
            return;
        }
    };
    let mut paths: Vec<RelPath> = ["a", "a/b", "a/b/c.txt", ".meshsync", "x y/z"]
        .iter()
        .filter_map(|p| RelPath::new(p).ok())
        .collect();
    paths.extend(
        s.lines()
            .take(32)
            .filter_map(|line| RelPath::new(line.trim_start_matches(['!', '/'])).ok()),
    );
    for path in &paths {
        for is_dir in [false, true] {
            let ignored = rules.is_ignored(path, is_dir);
            if rules.matches_itself(path, is_dir) {
                assert!(ignored, "{path} matches but is not ignored");
            }
            if rules.is_empty() {
                assert!(!ignored, "no rules, yet {path} is ignored");
            }
        }
        if rules.is_ignored(path, true) {
            let child = path.join("child").expect("a valid child");
            assert!(
                rules.is_ignored(&child, false) && rules.is_ignored(&child, true),
                "{child} is below ignored {path} but not ignored"
            );
        }
    }
}

/// A fuzz target: its corpus directory's name and its entry point.
pub type Target = (&'static str, fn(&[u8]));

/// Every core target, by the name of its `fuzz/corpus/` directory.
pub const TARGETS: &[Target] = &[
    ("rel_path", rel_path),
    ("folder_key", folder_key),
    ("device_id", device_id),
    ("ignore_rules", ignore_rules),
];
