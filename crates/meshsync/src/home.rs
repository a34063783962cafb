//! Where meshsync keeps its state: `--home DIR`, else `$MESHSYNC_HOME`, else
//! the XDG data directory (`~/.local/share/meshsync`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The environment variable naming the state directory.
pub const HOME_ENV: &str = "MESHSYNC_HOME";

/// The state directory, created if missing (mode 0700: it holds secrets).
pub fn resolve(flag: Option<&Path>) -> Result<PathBuf> {
    let dir = match flag {
        Some(d) => d.to_path_buf(),
        None => match std::env::var_os(HOME_ENV) {
            Some(d) if !d.is_empty() => PathBuf::from(d),
            _ => directories::ProjectDirs::from("", "", "meshsync")
                .context("no home directory found; pass --home DIR or set MESHSYNC_HOME")?
                .data_dir()
                .to_path_buf(),
        },
    };
    if !dir.exists() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("creating state directory {}", dir.display()))?;
    }
    Ok(dir)
}
