//! A blocking client for a running daemon's control API
//! ([`crate::daemon::api`]), for the CLI: find out whether a daemon runs,
//! read its status, and send it commands.
//!
//! Failures come back as [`ClientError`] inside `anyhow::Error` (downcast
//! to tell "no daemon" from "key rejected"), each worded for a person.
//!
//! It must never send the API key anywhere but a loopback address: the API
//! speaks plain HTTP. Requests to any other address fail before connecting.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::de::DeserializeOwned;
use ureq::http::Response;

use crate::daemon::api::{API_KEY_HEADER, ErrorBody, FolderRequest};
use crate::daemon::control::Status;

/// How long [`ApiClient::is_running`] waits for an answer.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);

/// How long any other request may take. Generous: a command may wait for
/// the daemon to save its config.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A connection to one daemon's control API.
#[derive(Clone)]
pub struct ApiClient {
    addr: SocketAddr,
    base: String,
    key: String,
    agent: ureq::Agent,
}

impl fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key: debug output ends up in logs.
        f.debug_struct("ApiClient")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// Why a request to the daemon failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum ClientError {
    /// Nothing listens at the address.
    NotRunning {
        /// The address tried.
        addr: SocketAddr,
    },
    /// The daemon answered 401: the key is missing or wrong.
    KeyRejected {
        /// The daemon's address.
        addr: SocketAddr,
    },
    /// The daemon refused the request (4xx: shown as its message alone) or
    /// failed at it (5xx: shown as "the daemon failed: " and its message).
    Refused {
        /// The HTTP status it answered.
        status: u16,
        /// Its error message.
        message: String,
    },
    /// The daemon did not answer in time.
    TimedOut {
        /// The daemon's address.
        addr: SocketAddr,
    },
    /// The connection failed in another way.
    Transport {
        /// The daemon's address.
        addr: SocketAddr,
        /// What went wrong.
        source: ureq::Error,
    },
    /// The answer was not what the API promises (another program on the
    /// port, or a daemon of another version).
    BadAnswer {
        /// The daemon's address.
        addr: SocketAddr,
        /// What was wrong with it.
        detail: String,
    },
    /// The address is not a loopback address, so the key is not sent.
    NotLoopback {
        /// The address refused.
        addr: SocketAddr,
    },
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::NotRunning { addr } => write!(f, "no daemon running at {addr}"),
            ClientError::KeyRejected { addr } => {
                write!(f, "API key rejected by the daemon at {addr}")
            }
            ClientError::Refused { status, message } if *status >= 500 => {
                write!(f, "the daemon failed: {message}")
            }
            ClientError::Refused { message, .. } => f.write_str(message),
            ClientError::TimedOut { addr } => {
                write!(f, "the daemon at {addr} did not answer in time")
            }
            ClientError::Transport { addr, source } => {
                write!(f, "cannot talk to the daemon at {addr}: {source}")
            }
            ClientError::BadAnswer { addr, detail } => {
                write!(f, "unexpected answer from {addr}: {detail}")
            }
            ClientError::NotLoopback { addr } => write!(
                f,
                "refusing to send the API key to {addr}: the control API is only served on \
                 loopback addresses"
            ),
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientError::Transport { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl ApiClient {
    /// A client for the daemon listening at `addr`, authenticating with
    /// `key`. Connects on each request, not here.
    pub fn new(addr: SocketAddr, key: impl Into<String>) -> Self {
        let config = ureq::Agent::config_builder()
            // Answers are read whatever their status, to show the daemon's message.
            .http_status_as_error(false)
            // The daemon is on this host: never go through a proxy from the environment.
            .proxy(None)
            .timeout_global(Some(REQUEST_TIMEOUT))
            .build();
        ApiClient {
            addr,
            base: format!("http://{addr}"),
            key: key.into(),
            agent: config.into(),
        }
    }

    /// Whether a daemon answers at the address (`GET /rest/health`, no key,
    /// waiting at most a second).
    pub fn is_running(&self) -> bool {
        if !self.addr.ip().to_canonical().is_loopback() {
            return false;
        }
        let answer = self
            .agent
            .get(format!("{}/rest/health", self.base))
            .config()
            .timeout_global(Some(HEALTH_TIMEOUT))
            .build()
            .call();
        match answer {
            Ok(mut response) => {
                response.status() == 200
                    && response
                        .body_mut()
                        .read_to_string()
                        .is_ok_and(|body| body == "ok")
            }
            Err(_) => false,
        }
    }

    /// The daemon's status (`GET /rest/status`).
    pub fn status(&self) -> Result<Status> {
        self.get_json("/rest/status")
    }

    /// Asks the daemon to scan `folder` now, or every folder if `None`.
    pub fn rescan(&self, folder: Option<&Path>) -> Result<()> {
        self.command("/rest/rescan", folder)
    }

    /// Pauses `folder` (the daemon saves it in its config).
    pub fn pause(&self, folder: &Path) -> Result<()> {
        self.command("/rest/pause", Some(folder))
    }

    /// Resumes a paused `folder`.
    pub fn resume(&self, folder: &Path) -> Result<()> {
        self.command("/rest/resume", Some(folder))
    }

    /// Asks the daemon to stop. Returns once it accepted; it may still be
    /// finishing (poll [`ApiClient::is_running`] to wait for it).
    pub fn shutdown(&self) -> Result<()> {
        self.command("/rest/shutdown", None)
    }

    fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.check_loopback()?;
        let answer = self
            .agent
            .get(format!("{}{path}", self.base))
            .header(API_KEY_HEADER, &self.key)
            .call();
        let body = self.read_answer(answer)?;
        serde_json::from_str(&body).map_err(|e| {
            ClientError::BadAnswer {
                addr: self.addr,
                detail: format!("{path}: {e}"),
            }
            .into()
        })
    }

    fn command(&self, path: &str, folder: Option<&Path>) -> Result<()> {
        self.check_loopback()?;
        let request = FolderRequest {
            folder: folder.map(Path::to_path_buf),
        };
        let body = serde_json::to_string(&request)
            .with_context(|| format!("cannot send the folder path {folder:?}: not UTF-8"))?;
        let answer = self
            .agent
            .post(format!("{}{path}", self.base))
            .header(API_KEY_HEADER, &self.key)
            .header("Content-Type", "application/json")
            .send(body);
        self.read_answer(answer)?;
        Ok(())
    }

    fn check_loopback(&self) -> Result<(), ClientError> {
        if self.addr.ip().to_canonical().is_loopback() {
            Ok(())
        } else {
            Err(ClientError::NotLoopback { addr: self.addr })
        }
    }

    /// The body of a successful answer, or the error it stands for.
    fn read_answer(
        &self,
        answer: Result<Response<ureq::Body>, ureq::Error>,
    ) -> Result<String, ClientError> {
        let mut response = answer.map_err(|e| self.transport_error(e))?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .read_to_string()
            .map_err(|e| self.transport_error(e))?;
        match status {
            200..=299 => Ok(body),
            401 => Err(ClientError::KeyRejected { addr: self.addr }),
            _ => {
                let message = match serde_json::from_str::<ErrorBody>(&body) {
                    Ok(ErrorBody { error }) => error,
                    Err(_) => format!("the daemon at {} answered HTTP {status}", self.addr),
                };
                Err(ClientError::Refused { status, message })
            }
        }
    }

    fn transport_error(&self, e: ureq::Error) -> ClientError {
        let addr = self.addr;
        match e {
            ureq::Error::Io(ref io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
                ClientError::NotRunning { addr }
            }
            ureq::Error::ConnectionFailed => ClientError::NotRunning { addr },
            ureq::Error::Timeout(_) => ClientError::TimedOut { addr },
            source => ClientError::Transport { addr, source },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, TcpListener};

    use super::*;

    /// A loopback port that nothing listens on (bound, then released).
    fn closed_port() -> SocketAddr {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        listener.local_addr().unwrap()
    }

    #[test]
    fn client_without_daemon_says_so() {
        let addr = closed_port();
        let client = ApiClient::new(addr, "key");
        assert!(!client.is_running());
        let e = client.status().unwrap_err();
        assert!(matches!(
            e.downcast_ref::<ClientError>(),
            Some(ClientError::NotRunning { .. })
        ));
        assert_eq!(e.to_string(), format!("no daemon running at {addr}"));
        let e = client.pause(Path::new("/x")).unwrap_err();
        assert_eq!(e.to_string(), format!("no daemon running at {addr}"));
    }

    #[test]
    fn client_error_messages_are_the_daemons() {
        let refused = |status| ClientError::Refused {
            status,
            message: "no folder at /x".to_owned(),
        };
        assert_eq!(refused(404).to_string(), "no folder at /x");
        assert_eq!(
            refused(500).to_string(),
            "the daemon failed: no folder at /x"
        );
    }

    #[test]
    fn client_never_sends_the_key_off_loopback() {
        // TEST-NET-1: nothing is contacted, the request fails before connecting.
        let addr: SocketAddr = "192.0.2.1:8384".parse().unwrap();
        let client = ApiClient::new(addr, "key");
        assert!(!client.is_running());
        let e = client.status().unwrap_err();
        assert!(matches!(
            e.downcast_ref::<ClientError>(),
            Some(ClientError::NotLoopback { .. })
        ));
        assert!(client.shutdown().is_err());
    }
}
