//! The HEARTBEAT packet's field.
//!
//! ```text
//! | header (4-10) | Heartbeat (8): 0 PING, 1 PONG | Data (0..=988) |
//! ```

use super::{check_buffer, EmitError, WireError};

/// PING or PONG.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heartbeat {
    /// 0: asks the other side for a PONG.
    Ping,
    /// 1: answers a PING.
    Pong,
}

impl Heartbeat {
    /// Length on the wire.
    pub const LEN: usize = 1;

    /// Parses the field, returning it and the Data after it.
    ///
    /// # Errors
    /// 3.0 if the field is missing or is neither 0 nor 1.
    pub fn parse(input: &[u8]) -> Result<(Self, &[u8]), WireError> {
        match input.split_first() {
            Some((0, rest)) => Ok((Self::Ping, rest)),
            Some((1, rest)) => Ok((Self::Pong, rest)),
            Some(_) => Err(WireError::unreadable("heartbeat neither ping nor pong")),
            None => Err(WireError::unreadable("truncated heartbeat")),
        }
    }

    /// Writes the field at the start of `buf`.
    ///
    /// # Errors
    /// [`EmitError::BufferTooSmall`] if `buf` is empty.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, EmitError> {
        check_buffer(buf, Self::LEN)?;
        buf[0] = match self {
            Self::Ping => 0,
            Self::Pong => 1,
        };
        Ok(Self::LEN)
    }

    /// "ping" or "pong".
    pub const fn name(self) -> &'static str {
        match self {
            Self::Ping => "ping",
            Self::Pong => "pong",
        }
    }
}
