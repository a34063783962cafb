//! Relative paths inside a synced folder, validated once on the way in.
//!
//! A [`RelPath`] is the only path type the planner accepts. It is relative,
//! uses `/` as separator, is normalised to Unicode NFC (so a name typed on macOS
//! and one typed on Linux compare equal), and has no empty, `.` or `..`
//! component and no NUL. Such a path can never name anything outside the folder
//! root (symlinks are the store's concern: it never follows them).
//!
//! Names that are legal here but not on other common file systems (Windows
//! reserved names and characters, trailing dots or spaces) are reported by
//! [`RelPath::portability_problem`]; names that collide when case is ignored are
//! found by [`case_collisions`]. Neither is silently changed.
//!
//! The folder's own metadata directory ([`META_DIR`]) and the store's temporary
//! files ([`TEMP_PREFIX`]) are reserved: [`RelPath::is_internal`] says so.

use std::borrow::{Borrow, Cow};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use unicode_normalization::{UnicodeNormalization, is_nfc};

/// The folder marker and metadata directory at a folder's root.
pub const META_DIR: &str = ".meshsync";
/// The name prefix of the store's temporary files (never synced).
pub const TEMP_PREFIX: &str = ".meshsync-tmp-";
/// The longest path accepted, in bytes.
pub const MAX_PATH_BYTES: usize = 4096;
/// The longest single name accepted, in bytes (the limit of ext4, XFS, btrfs…).
pub const MAX_NAME_BYTES: usize = 255;

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// The empty string is not a path.
    #[error("empty path")]
    Empty,
    /// Starts with `/` (or a drive letter): it would name something outside the folder.
    #[error("absolute path {0:?}: only paths relative to the folder are allowed")]
    Absolute(String),
    /// Has a `..` component: it would climb out of the folder.
    #[error("path {0:?} climbs out of the folder with '..'")]
    ParentComponent(String),
    /// Has an empty or `.` component (`a//b`, `a/./b`, a trailing `/`).
    #[error("path {0:?} has an empty or '.' component")]
    EmptyComponent(String),
    /// Contains a NUL byte.
    #[error("path {0:?} contains a NUL byte")]
    Nul(String),
    /// Contains a backslash, which is a separator on Windows.
    #[error("path {0:?} contains a backslash")]
    Backslash(String),
    /// Too long for common file systems.
    #[error(
        "path {path:?} is too long ({len} bytes; a name may have {MAX_NAME_BYTES}, a path {MAX_PATH_BYTES})"
    )]
    TooLong {
        /// The offending path (possibly truncated for display).
        path: String,
        /// Its length in bytes.
        len: usize,
    },
}

/// A validated, NFC-normalised path relative to a folder root.
///
/// Shared, not copied: a clone is a reference count. Every path is held
/// several times over (an index's key and its entry, the plan's actions,
/// a pull's sets of paths), and as a `String` each was its own allocation:
/// with 20,000 files, a receiving daemon's peak heap held about 3 MiB of
/// path copies.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelPath(Arc<str>);

impl RelPath {
    /// Validates and normalises `s` (components separated by `/`).
    pub fn new(s: &str) -> Result<Self, PathError> {
        if s.is_empty() {
            return Err(PathError::Empty);
        }
        if s.contains('\0') {
            return Err(PathError::Nul(s.replace('\0', "\\0")));
        }
        if s.starts_with('/') || has_drive_prefix(s) {
            return Err(PathError::Absolute(s.to_string()));
        }
        if s.contains('\\') {
            return Err(PathError::Backslash(s.to_string()));
        }
        let normalized: Cow<'_, str> = if is_nfc(s) {
            Cow::Borrowed(s)
        } else {
            Cow::Owned(s.nfc().collect())
        };
        if normalized.len() > MAX_PATH_BYTES {
            return Err(PathError::TooLong {
                path: normalized.chars().take(64).collect(),
                len: normalized.len(),
            });
        }
        for component in normalized.split('/') {
            match component {
                "" | "." => return Err(PathError::EmptyComponent(s.to_string())),
                ".." => return Err(PathError::ParentComponent(s.to_string())),
                c if c.len() > MAX_NAME_BYTES => {
                    return Err(PathError::TooLong {
                        path: c.chars().take(64).collect(),
                        len: c.len(),
                    });
                }
                _ => {}
            }
        }
        Ok(RelPath(Arc::from(normalized.as_ref())))
    }

    /// The path as `/`-separated text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The last component.
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().expect("never empty")
    }

    /// The parent directory, or `None` at the top level.
    pub fn parent(&self) -> Option<RelPath> {
        self.0.rfind('/').map(|i| RelPath(Arc::from(&self.0[..i])))
    }

    /// `self/name` (validated).
    pub fn join(&self, name: &str) -> Result<RelPath, PathError> {
        RelPath::new(&format!("{}/{}", self.0, name))
    }

    /// A sibling with another last component (validated).
    pub fn with_file_name(&self, name: &str) -> Result<RelPath, PathError> {
        match self.parent() {
            Some(p) => p.join(name),
            None => RelPath::new(name),
        }
    }

    /// How many components deep (1 for a top-level name).
    pub fn depth(&self) -> usize {
        self.0.split('/').count()
    }

    /// Whether `self` is `other` or lies below it.
    pub fn starts_with(&self, other: &RelPath) -> bool {
        self.0 == other.0
            || (self.0.starts_with(&*other.0)
                && self.0.as_bytes().get(other.0.len()) == Some(&b'/'))
    }

    /// Whether this is meshsync's own metadata (the `.meshsync` directory or a
    /// temporary file): such paths are never scanned, planned or synced.
    pub fn is_internal(&self) -> bool {
        let first = self.0.split('/').next().expect("never empty");
        first == META_DIR || self.file_name().starts_with(TEMP_PREFIX)
    }

    /// Why this name could not be created on Windows, macOS' or FAT file
    /// systems, if it could not; `None` when it is portable.
    pub fn portability_problem(&self) -> Option<String> {
        for c in self.0.split('/') {
            if let Some(bad) = c.chars().find(|ch| {
                matches!(ch, '<' | '>' | ':' | '"' | '|' | '?' | '*') || (*ch as u32) < 32
            }) {
                return Some(format!("name {c:?} contains {bad:?}, invalid on Windows"));
            }
            if c.ends_with('.') || c.ends_with(' ') {
                return Some(format!(
                    "name {c:?} ends with a dot or space, invalid on Windows"
                ));
            }
            let stem = c.split('.').next().unwrap_or(c).to_ascii_uppercase();
            let reserved = matches!(stem.as_str(), "CON" | "PRN" | "AUX" | "NUL")
                || ((stem.starts_with("COM") || stem.starts_with("LPT"))
                    && stem.len() == 4
                    && stem.as_bytes()[3].is_ascii_digit()
                    && stem.as_bytes()[3] != b'0');
            if reserved {
                return Some(format!("name {c:?} is a reserved device name on Windows"));
            }
        }
        None
    }

    /// A key that is equal for names that differ only in case.
    pub fn case_fold_key(&self) -> String {
        self.0.to_lowercase()
    }
}

/// `C:`, `C:/…` or `C:\…`: absolute on Windows. (`a:b` is just a name.)
fn has_drive_prefix(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 2
        && b[0].is_ascii_alphabetic()
        && b[1] == b':'
        && matches!(b.get(2), None | Some(b'/') | Some(b'\\'))
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl TryFrom<String> for RelPath {
    type Error = PathError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        RelPath::new(&s)
    }
}

impl From<RelPath> for String {
    fn from(p: RelPath) -> String {
        p.0.to_string()
    }
}

impl Serialize for RelPath {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for RelPath {
    /// Validated as [`RelPath::new`] does: a hostile path never decodes.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = RelPath;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a relative path")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RelPath, E> {
                RelPath::new(v).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

impl Borrow<str> for RelPath {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// Groups of paths that differ only in case (each group has two or more).
/// On a case-insensitive file system they would overwrite each other.
pub fn case_collisions<'a>(paths: impl IntoIterator<Item = &'a RelPath>) -> Vec<Vec<RelPath>> {
    let mut by_key: BTreeMap<String, Vec<RelPath>> = BTreeMap::new();
    for p in paths {
        by_key.entry(p.case_fold_key()).or_default().push(p.clone());
    }
    by_key.into_values().filter(|g| g.len() > 1).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_paths() {
        for p in [
            "a",
            "a/b",
            "dir/file.txt",
            ".hidden",
            "a/.b/c..d",
            "日本/語",
        ] {
            assert_eq!(RelPath::new(p).unwrap().as_str(), p);
        }
    }

    #[test]
    fn rejects_hostile_paths() {
        use PathError::*;
        type IsExpected = fn(&PathError) -> bool;
        let cases: &[(&str, IsExpected)] = &[
            ("", |e| matches!(e, Empty)),
            ("../x", |e| matches!(e, ParentComponent(_))),
            ("a/../../x", |e| matches!(e, ParentComponent(_))),
            ("..", |e| matches!(e, ParentComponent(_))),
            ("/etc/passwd", |e| matches!(e, Absolute(_))),
            ("C:/x", |e| matches!(e, Absolute(_))),
            ("a\\..\\x", |e| matches!(e, Backslash(_))),
            ("a\0b", |e| matches!(e, Nul(_))),
            ("a//b", |e| matches!(e, EmptyComponent(_))),
            ("a/./b", |e| matches!(e, EmptyComponent(_))),
            ("a/", |e| matches!(e, EmptyComponent(_))),
            (".", |e| matches!(e, EmptyComponent(_))),
        ];
        for (p, check) in cases {
            let e = RelPath::new(p).unwrap_err();
            assert!(check(&e), "{p:?} gave {e:?}");
        }
        let long = "x".repeat(256);
        assert!(matches!(RelPath::new(&long), Err(TooLong { .. })));
    }

    #[test]
    fn normalizes_to_nfc() {
        let decomposed = "cafe\u{301}"; // e + combining acute
        let p = RelPath::new(decomposed).unwrap();
        assert_eq!(p.as_str(), "caf\u{e9}");
        assert_eq!(p, RelPath::new("caf\u{e9}").unwrap());
    }

    #[test]
    fn reports_non_portable_names() {
        for p in ["a:b", "CON", "con.txt", "x/LPT1", "trailing.", "sp ", "q?"] {
            assert!(
                RelPath::new(p).unwrap().portability_problem().is_some(),
                "{p}"
            );
        }
        for p in ["console", "COM0", "a.b", "normal name"] {
            assert!(
                RelPath::new(p).unwrap().portability_problem().is_none(),
                "{p}"
            );
        }
    }

    #[test]
    fn finds_case_collisions() {
        let paths: Vec<RelPath> = ["A.txt", "a.txt", "b", "Dir/x", "dir/x"]
            .iter()
            .map(|p| RelPath::new(p).unwrap())
            .collect();
        let groups = case_collisions(&paths);
        assert_eq!(groups.len(), 2);
    }

    #[test]
    fn internal_paths_and_prefixes() {
        assert!(RelPath::new(".meshsync/versions/a").unwrap().is_internal());
        assert!(RelPath::new("d/.meshsync-tmp-123").unwrap().is_internal());
        assert!(!RelPath::new("d/.meshsyncignore").unwrap().is_internal());
        let a = RelPath::new("a/b").unwrap();
        assert!(a.starts_with(&RelPath::new("a").unwrap()));
        assert!(
            !RelPath::new("ab")
                .unwrap()
                .starts_with(&RelPath::new("a").unwrap())
        );
        assert_eq!(a.parent().unwrap().as_str(), "a");
        assert_eq!(a.depth(), 2);
    }
}
