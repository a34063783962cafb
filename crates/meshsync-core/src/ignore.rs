//! Ignore rules: the `.meshsyncignore` file at a folder's root.
//!
//! The syntax is gitignore's: `#` comments, `!` negation, `*`, `?`, `[...]`,
//! `**` across directories, a leading `/` (or any inner `/`) anchors a pattern
//! to the folder root, a trailing `/` matches directories only. As in git, a
//! path below an ignored directory stays ignored even if a `!` pattern names
//! it: [`IgnoreRules::is_ignored`] checks the ancestors first.
//!
//! Matching is done by the `ignore` crate's gitignore matcher, which is pure
//! (patterns in, verdicts out): we only feed it lines, never files.

use std::path::Path;

use ignore::Match;
use ignore::gitignore::{Gitignore, GitignoreBuilder};

use crate::path::RelPath;

/// The name of the ignore file at a folder's root.
pub const IGNORE_FILE: &str = ".meshsyncignore";

/// A bad line in an ignore file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{IGNORE_FILE} line {line}: {reason}")]
pub struct IgnoreError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with it.
    pub reason: String,
}

/// A compiled set of ignore patterns.
#[derive(Debug, Clone)]
pub struct IgnoreRules {
    matcher: Gitignore,
}

impl Default for IgnoreRules {
    fn default() -> Self {
        IgnoreRules {
            matcher: Gitignore::empty(),
        }
    }
}

impl IgnoreRules {
    /// No patterns: nothing is ignored.
    pub fn none() -> Self {
        Self::default()
    }

    /// Compiles the text of an ignore file. A line that is not a valid
    /// pattern is an error that names the line.
    pub fn parse(text: &str) -> Result<Self, IgnoreError> {
        let mut builder = GitignoreBuilder::new("");
        for (i, line) in text.lines().enumerate() {
            builder.add_line(None, line).map_err(|e| IgnoreError {
                line: i + 1,
                reason: e.to_string(),
            })?;
        }
        let matcher = builder.build().map_err(|e| IgnoreError {
            line: 0,
            reason: e.to_string(),
        })?;
        Ok(IgnoreRules { matcher })
    }

    /// Whether `path` matches on its own, ignoring its ancestors. The scanner,
    /// which walks top-down and never enters an ignored directory, uses this.
    pub fn matches_itself(&self, path: &RelPath, is_dir: bool) -> bool {
        matches!(
            self.matcher.matched(Path::new(path.as_str()), is_dir),
            Match::Ignore(_)
        )
    }

    /// Whether `path` is ignored: it or one of its ancestor directories is.
    pub fn is_ignored(&self, path: &RelPath, is_dir: bool) -> bool {
        if self.matcher.is_empty() {
            return false;
        }
        let s = path.as_str();
        for (i, _) in s.match_indices('/') {
            let ancestor = RelPath::new(&s[..i]).expect("prefix of a valid path");
            if self.matches_itself(&ancestor, true) {
                return true;
            }
        }
        self.matches_itself(path, is_dir)
    }

    /// Whether there are no patterns at all.
    pub fn is_empty(&self) -> bool {
        self.matcher.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ignored(rules: &str, path: &str, is_dir: bool) -> bool {
        IgnoreRules::parse(rules)
            .unwrap()
            .is_ignored(&RelPath::new(path).unwrap(), is_dir)
    }

    #[test]
    fn gitignore_semantics() {
        let rules = "# build output\n*.o\n!keep.o\n/root-only\nbuild/\ndocs/**/draft\n";
        assert!(ignored(rules, "a.o", false));
        assert!(ignored(rules, "deep/x/a.o", false));
        assert!(!ignored(rules, "keep.o", false));
        assert!(ignored(rules, "root-only", false));
        assert!(!ignored(rules, "sub/root-only", false));
        assert!(ignored(rules, "build", true));
        assert!(
            !ignored(rules, "build", false),
            "dir-only pattern on a file"
        );
        assert!(
            ignored(rules, "x/build/out.bin", false),
            "below an ignored dir"
        );
        assert!(ignored(rules, "docs/a/b/draft", false));
        assert!(ignored(rules, "docs/draft", false));
        assert!(!ignored(rules, "# build output", false));
    }

    #[test]
    fn negation_cannot_reinclude_below_an_ignored_directory() {
        let rules = "logs/\n!logs/important.txt\n";
        assert!(ignored(rules, "logs/important.txt", false));
    }

    #[test]
    fn bad_pattern_names_its_line() {
        let e = IgnoreRules::parse("ok\n{a,b\n").unwrap_err();
        assert_eq!(e.line, 2);
    }

    #[test]
    fn empty_rules_ignore_nothing() {
        assert!(!ignored("", "anything", false));
        assert!(!ignored("\n# only comments\n", "x", true));
    }
}
