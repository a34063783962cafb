//! Exit codes, documented in the README.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | done: everything is in sync |
//! | 1 | nothing was done: the command failed (the message says why) |
//! | 2 | the command line is wrong (clap's usage error) |
//! | 3 | done in part: some paths failed or were refused (listed on stderr); nothing was lost, run again after fixing them |

/// Everything done.
pub const SUCCESS: u8 = 0;
/// The command failed as a whole.
pub const FAILURE: u8 = 1;
/// Some paths failed; the rest is done.
pub const PARTIAL: u8 = 3;
