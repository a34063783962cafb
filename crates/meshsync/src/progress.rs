//! The terminal progress bar for long operations (indicatif): files, bytes,
//! rate and ETA, on stderr, only when stderr is a terminal.

use std::sync::atomic::{AtomicU64, Ordering};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use meshsync_store::local_sync::Progress;

/// A progress bar that is drawn only on a terminal.
pub struct TerminalProgress {
    bar: ProgressBar,
    files_done: AtomicU64,
    files_total: AtomicU64,
}

impl TerminalProgress {
    /// A bar on stderr if `visible`, else a hidden one.
    pub fn new(visible: bool) -> Self {
        let bar = if visible {
            ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr_with_hz(10))
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} {prefix:9} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.enable_steady_tick(std::time::Duration::from_millis(200));
        TerminalProgress {
            bar,
            files_done: AtomicU64::new(0),
            files_total: AtomicU64::new(0),
        }
    }

    /// Removes the bar from the terminal.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Progress for TerminalProgress {
    fn begin(&self, files: u64, bytes: u64) {
        self.files_total.store(files, Ordering::Relaxed);
        self.bar.set_length(bytes);
        self.bar.set_message(format!("0/{files} files"));
    }

    fn advance(&self, files: u64, bytes: u64) {
        let done = self.files_done.fetch_add(files, Ordering::Relaxed) + files;
        self.bar.inc(bytes);
        self.bar.set_message(format!(
            "{done}/{} files",
            self.files_total.load(Ordering::Relaxed)
        ));
    }

    fn phase(&self, name: &str) {
        self.bar.set_prefix(name.to_string());
    }
}
