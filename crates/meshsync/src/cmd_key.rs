//! `meshsync key …` and `meshsync id`: make, derive and inspect folder keys,
//! and show this device's id.
//!
//! - `key new`: a new folder's read-write key (32 bytes from the operating
//!   system's random number generator).
//! - `key derive read-only KEY` / `key derive encrypted KEY`: the weaker keys
//!   of the same folder.
//! - `key inspect KEY [--json]`: type, share id and what the key permits.
//! - `id`: this device's id, creating the identity on first use.
//!
//! A KEY argument of `-` is read from standard input, so a key need not appear
//! in the shell history or the process list.
//!
//! Never: print a key anywhere but to standard output when asked for it, or
//! log one. `KeyCommand`'s `Debug` redacts the key argument.

use std::fmt;
use std::io::{self, BufRead, IsTerminal, Write};
use std::path::Path;

use anyhow::{Context, Result};
use meshsync_core::keys::{FolderKey, KeyKind, ReadWriteKey};
use meshsync_store::identity::DeviceIdentity;
use rand::TryRng;
use rand::rngs::SysRng;
use zeroize::Zeroizing;

/// The `meshsync key` subcommands.
#[derive(clap::Subcommand)]
pub enum KeyCommand {
    /// Make a new folder key: prints a read-write key.
    New,
    /// Print the read-only or encrypted (storage-only) key of a folder.
    Derive {
        /// The key to derive.
        #[arg(value_enum)]
        kind: DerivedKind,
        /// A read-write key (or a read-only key, to derive an encrypted key);
        /// `-` reads it from standard input.
        key: String,
    },
    /// Show a key's type, share id and what it permits.
    Inspect {
        /// Any folder key; `-` reads it from standard input.
        key: String,
        /// Print JSON (`type`, `share_id`, `can_read`, `can_write`, `permits`).
        #[arg(long)]
        json: bool,
    },
}

impl fmt::Debug for KeyCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyCommand::New => f.write_str("New"),
            KeyCommand::Derive { kind, .. } => f
                .debug_struct("Derive")
                .field("kind", kind)
                .field("key", &"<redacted>")
                .finish(),
            KeyCommand::Inspect { json, .. } => f
                .debug_struct("Inspect")
                .field("key", &"<redacted>")
                .field("json", json)
                .finish(),
        }
    }
}

/// The weaker key types `key derive` can make.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DerivedKind {
    /// Reads and verifies, cannot change the folder.
    ReadOnly,
    /// Stores and serves ciphertext only, never sees names or content.
    Encrypted,
}

/// Runs a `meshsync key` subcommand, printing to standard output.
pub fn run_key(cmd: KeyCommand) -> Result<()> {
    let stdout = io::stdout();
    let stdin = io::stdin();
    run_key_with(cmd, &mut stdout.lock(), &mut stdin.lock())?;
    if io::stderr().is_terminal() {
        eprintln!("(keys are secrets: share them only with devices that should have that access)");
    }
    Ok(())
}

/// Prints this device's id, creating its identity in `state_dir` on first use.
pub fn run_id(state_dir: &Path) -> Result<()> {
    write_id(state_dir, &mut io::stdout().lock())
}

fn write_id(state_dir: &Path, out: &mut dyn Write) -> Result<()> {
    let identity = DeviceIdentity::load_or_create(state_dir).with_context(|| {
        format!(
            "cannot load or create this device's identity in {}",
            state_dir.display()
        )
    })?;
    writeln!(out, "{}", identity.device_id())?;
    Ok(())
}

fn run_key_with(cmd: KeyCommand, out: &mut dyn Write, input: &mut dyn BufRead) -> Result<()> {
    match &cmd {
        KeyCommand::New => {
            let mut secret = Zeroizing::new([0u8; 32]);
            SysRng
                .try_fill_bytes(&mut secret[..])
                .context("the operating system's random number generator failed")?;
            let key = ReadWriteKey::from_secret(&secret);
            writeln!(out, "{}", *key.to_key_string())?;
        }
        KeyCommand::Derive { kind, key } => {
            let key = parse_key(key, input)?;
            let derived = match kind {
                DerivedKind::ReadOnly => {
                    if key.kind() == KeyKind::Encrypted {
                        anyhow::bail!(
                            "an encrypted key holds no data key, so it cannot give a read-only key: derive it from the read-write key"
                        );
                    }
                    key.to_read_only()?.to_key_string()
                }
                DerivedKind::Encrypted => key.to_encrypted().to_key_string(),
            };
            writeln!(out, "{}", *derived)?;
        }
        KeyCommand::Inspect { key, json } => {
            let key = parse_key(key, input)?;
            write_inspection(&key, *json, out)?;
        }
    }
    Ok(())
}

/// Parses a key argument, reading it from `input` if it is `-`.
fn parse_key(arg: &str, input: &mut dyn BufRead) -> Result<FolderKey> {
    let mut line = Zeroizing::new(String::new());
    let text = if arg == "-" {
        input
            .read_line(&mut line)
            .context("cannot read the key from standard input")?;
        line.as_str()
    } else {
        arg
    };
    text.parse::<FolderKey>()
        .context("not a valid meshsync folder key")
}

/// What a key of this kind allows, in words.
fn permits(kind: KeyKind) -> &'static str {
    match kind {
        KeyKind::ReadWrite => {
            "read names and content, change the folder (sign index updates), verify updates, store and serve encrypted copies"
        }
        KeyKind::ReadOnly => {
            "read names and content, verify updates, store and serve encrypted copies; local changes are not sent to others"
        }
        KeyKind::Encrypted => {
            "store and serve encrypted copies, verify updates; cannot read names or content, cannot change the folder"
        }
    }
}

fn write_inspection(key: &FolderKey, json: bool, out: &mut dyn Write) -> Result<()> {
    let kind = key.kind();
    if json {
        let value = serde_json::json!({
            "type": kind.as_str(),
            "share_id": key.share_id().to_string(),
            "can_read": kind.can_read(),
            "can_write": kind.can_write(),
            "permits": permits(kind),
        });
        writeln!(out, "{value}")?;
    } else {
        writeln!(out, "type:     {kind}")?;
        writeln!(out, "share id: {}", key.share_id())?;
        writeln!(out, "permits:  {}", permits(kind))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(cmd: KeyCommand, stdin: &str) -> Result<String> {
        let mut out = Vec::new();
        run_key_with(cmd, &mut out, &mut stdin.as_bytes())?;
        Ok(String::from_utf8(out).unwrap())
    }

    fn inspect_json(key: &str) -> serde_json::Value {
        let text = run(
            KeyCommand::Inspect {
                key: key.to_owned(),
                json: true,
            },
            "",
        )
        .unwrap();
        serde_json::from_str(&text).unwrap()
    }

    fn derive(kind: DerivedKind, key: &str) -> Result<String> {
        run(
            KeyCommand::Derive {
                kind,
                key: key.to_owned(),
            },
            "",
        )
        .map(|s| s.trim().to_owned())
    }

    #[test]
    fn new_derive_and_inspect_agree_on_the_share() {
        let rw = run(KeyCommand::New, "").unwrap().trim().to_owned();
        assert!(rw.starts_with('W') && rw.len() == 54, "{rw}");
        assert_ne!(
            rw,
            run(KeyCommand::New, "").unwrap().trim(),
            "keys are random"
        );
        let ro = derive(DerivedKind::ReadOnly, &rw).unwrap();
        let enc = derive(DerivedKind::Encrypted, &rw).unwrap();
        assert!(ro.starts_with('R') && enc.starts_with('E'));
        assert_eq!(derive(DerivedKind::Encrypted, &ro).unwrap(), enc);

        let share = inspect_json(&rw)["share_id"].clone();
        for (key, kind) in [(&rw, "read-write"), (&ro, "read-only"), (&enc, "encrypted")] {
            let json = inspect_json(key);
            assert_eq!(json["type"], kind);
            assert_eq!(json["share_id"], share);
        }
        assert_eq!(inspect_json(&enc)["can_read"], false);
        assert_eq!(inspect_json(&ro)["can_write"], false);
    }

    #[test]
    fn inspect_text_and_stdin() {
        let rw = run(KeyCommand::New, "").unwrap();
        let text = run(
            KeyCommand::Inspect {
                key: "-".into(),
                json: false,
            },
            &rw,
        )
        .unwrap();
        assert!(
            text.starts_with("type:     read-write\nshare id: "),
            "{text}"
        );
        assert!(text.contains("permits:"));
    }

    #[test]
    fn read_only_key_cannot_come_from_an_encrypted_key() {
        let rw = run(KeyCommand::New, "").unwrap();
        let enc = derive(DerivedKind::Encrypted, rw.trim()).unwrap();
        let err = derive(DerivedKind::ReadOnly, &enc).unwrap_err();
        assert!(
            format!("{err:#}").contains("derive it from the read-write key"),
            "{err:#}"
        );
    }

    #[test]
    fn bad_key_says_what_is_wrong() {
        let err = derive(DerivedKind::ReadOnly, "WABC").unwrap_err();
        let message = format!("{err:#}");
        assert!(
            message.contains("not a valid meshsync folder key"),
            "{message}"
        );
        assert!(message.contains("truncated"), "{message}");
    }

    #[derive(clap::Parser)]
    struct TestCli {
        #[command(subcommand)]
        cmd: KeyCommand,
    }

    fn parse_cli(args: &[&str]) -> Result<KeyCommand, clap::Error> {
        use clap::Parser;
        TestCli::try_parse_from(std::iter::once("key").chain(args.iter().copied())).map(|c| c.cmd)
    }

    #[test]
    fn command_line_shape() {
        assert!(matches!(parse_cli(&["new"]), Ok(KeyCommand::New)));
        assert!(matches!(
            parse_cli(&["derive", "read-only", "K"]),
            Ok(KeyCommand::Derive {
                kind: DerivedKind::ReadOnly,
                ..
            })
        ));
        assert!(matches!(
            parse_cli(&["derive", "encrypted", "K"]),
            Ok(KeyCommand::Derive {
                kind: DerivedKind::Encrypted,
                ..
            })
        ));
        assert!(parse_cli(&["derive", "read-write", "K"]).is_err());
        assert!(matches!(
            parse_cli(&["inspect", "K", "--json"]),
            Ok(KeyCommand::Inspect { json: true, .. })
        ));
    }

    #[test]
    fn debug_redacts_the_key() {
        let cmd = KeyCommand::Inspect {
            key: "WSECRET".into(),
            json: false,
        };
        assert!(!format!("{cmd:?}").contains("SECRET"));
    }

    #[test]
    fn id_is_created_once_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let mut first = Vec::new();
        write_id(dir.path(), &mut first).unwrap();
        let mut second = Vec::new();
        write_id(dir.path(), &mut second).unwrap();
        assert_eq!(first, second);
        let text = String::from_utf8(first).unwrap();
        assert!(
            text.trim().parse::<meshsync_core::ids::DeviceId>().is_ok(),
            "{text}"
        );
    }
}
