//! Session outcomes and application-facing errors.

use alloc::string::String;
use core::fmt;

use crate::wire::AbortCode;

/// Why a session ended without a clean close.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionError {
    /// The peer aborted the session.
    Aborted {
        /// The peer's abort code.
        code: AbortCode,
        /// The peer's reason text.
        reason: String,
    },
    /// This side aborted the session.
    LocallyAborted,
    /// The peer went silent, or too many exchanges failed in a row.
    TimedOut,
    /// The server refused the session (HTTP status and its reason).
    Rejected {
        /// HTTP status of the refusal.
        status: u16,
    },
    /// The peer broke the protocol.
    Protocol(&'static str),
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionError::Aborted { code, reason } if reason.is_empty() => {
                write!(f, "session aborted by peer ({code})")
            }
            SessionError::Aborted { code, reason } => {
                write!(f, "session aborted by peer ({code}): {reason}")
            }
            SessionError::LocallyAborted => f.write_str("session aborted locally"),
            SessionError::TimedOut => f.write_str("session timed out"),
            SessionError::Rejected { status: 403 } => {
                f.write_str("session rejected by server: 403 forbidden (wrong token?)")
            }
            SessionError::Rejected { status: 404 } => f.write_str(
                "session rejected: HTTP 404 not found (is the server URL's path the server's --path?)",
            ),
            SessionError::Rejected { status: 407 } => {
                f.write_str("session rejected by the proxy: 407 proxy authentication required")
            }
            SessionError::Rejected { status } => {
                write!(f, "session rejected: HTTP {status}")
            }
            SessionError::Protocol(what) => write!(f, "protocol violation: {what}"),
        }
    }
}

impl core::error::Error for SessionError {}

#[cfg(feature = "std")]
impl From<SessionError> for std::io::Error {
    fn from(e: SessionError) -> Self {
        use std::io::ErrorKind;
        let kind = match &e {
            SessionError::Aborted { .. } => ErrorKind::ConnectionReset,
            SessionError::LocallyAborted => ErrorKind::ConnectionAborted,
            SessionError::TimedOut => ErrorKind::TimedOut,
            SessionError::Rejected {
                status: 401 | 403 | 407,
            } => ErrorKind::PermissionDenied,
            SessionError::Rejected { .. } => ErrorKind::ConnectionRefused,
            SessionError::Protocol(_) => ErrorKind::InvalidData,
        };
        std::io::Error::new(kind, e)
    }
}

/// What happened to a session; drained with `poll_event`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The session is established (the client saw the server's confirmation).
    Opened,
    /// Data, or the end of the peer's stream, can be read.
    Readable,
    /// The send buffer has room again after a write was refused.
    Writable,
    /// Both directions finished and were acknowledged: a clean close. Final event.
    Closed,
    /// The session ended abnormally. Final event.
    Failed(SessionError),
}

/// Why `read` produced no data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadError {
    /// Nothing to read yet; wait for [`Event::Readable`].
    Blocked,
    /// The session failed before the peer finished its stream.
    Failed(SessionError),
}

/// Why `write` took no data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteError {
    /// The send buffer is full; wait for [`Event::Writable`].
    Blocked,
    /// The stream was finished (half-closed) by this side.
    Finished,
    /// The session failed.
    Failed(SessionError),
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Blocked => f.write_str("no data available yet"),
            ReadError::Failed(e) => e.fmt(f),
        }
    }
}

impl fmt::Display for WriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WriteError::Blocked => f.write_str("send buffer full"),
            WriteError::Finished => f.write_str("stream already finished"),
            WriteError::Failed(e) => e.fmt(f),
        }
    }
}

impl core::error::Error for ReadError {}
impl core::error::Error for WriteError {}

#[cfg(feature = "std")]
impl From<ReadError> for std::io::Error {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Blocked => std::io::ErrorKind::WouldBlock.into(),
            ReadError::Failed(e) => e.into(),
        }
    }
}

#[cfg(feature = "std")]
impl From<WriteError> for std::io::Error {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Blocked => std::io::ErrorKind::WouldBlock.into(),
            WriteError::Finished => std::io::Error::new(std::io::ErrorKind::BrokenPipe, e),
            WriteError::Failed(e) => e.into(),
        }
    }
}
