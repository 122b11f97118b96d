//! The chat protocol's fixed lines and rules, shared by `examples/chat_server.rs` and
//! `examples/chat_client.rs` (included by both with `#[path]`). The full list of lines is in
//! the doc comment of `examples/chat_server.rs`.

// Each binary uses its own part of this module.
#![allow(dead_code)]

use tickwire::ChannelId;

/// Every line travels as one message on this channel: reliable-ordered in the default
/// [`tickwire::ConnectionConfig`].
pub const CHANNEL: ChannelId = ChannelId(3);

/// The first line a connection receives.
pub const INIT: &str = "INIT Welcome to the server!";
/// The answer to QUIT (the server then lets the client close, see the server's docs).
pub const GOODBYE: &str = "OK GOODBYE";
/// Unknown command, or a known one with missing or malformed arguments.
pub const FAIL00: &str = "FAIL00 Unknown command";
/// IDENT with a name another user is logged in with (compared case-insensitively).
pub const FAIL01: &str = "FAIL01 User already logged in";
/// IDENT with a name breaking [`valid_username`].
pub const FAIL02: &str = "FAIL02 Username has an invalid format or length";
/// Any command but IDENT and QUIT (and unknown ones) before IDENT succeeded.
pub const FAIL03: &str = "FAIL03 USER MUST LOGIN FIRST";
/// IDENT on a connection that is logged in already.
pub const FAIL04: &str = "FAIL04 User cannot login twice";
/// What the protocol sends after `DSCN Pong timeout`; here logged by the server (and printed by
/// the client as a local note) when a connection times out, since the peer that stopped
/// answering cannot receive it.
pub const FAIL05: &str = "FAIL05 Ping without pong";
/// USERS while no one else is logged in.
pub const FAIL06: &str = "FAIL06 YOU ARE THE ONLY CONNECTED USER";
/// PM or PM_SESSIONKEY to a name no one is logged in with.
pub const FAIL07: &str = "FAIL07 USER DOES NOT EXIST";
/// PM or PM_SESSIONKEY to oneself.
pub const FAIL08: &str = "FAIL08 CANNOT SEND PRIVATE MESSAGE TO YOURSELF";

/// Usernames are at least this long (in characters, all ASCII).
pub const USERNAME_MIN: usize = 3;
/// Usernames are at most this long.
pub const USERNAME_MAX: usize = 14;
/// Octets of a compressed SEC1 P-256 public key, as PM_PUBKEY carries it (in hex: twice that).
pub const PUBLIC_KEY_LEN: usize = 33;

/// Whether `name` may be a username: 3 to 14 ASCII letters, digits or underscores (so no
/// dashes, colons, spaces or anything else that would break `OK USERS a:b:c` or a line).
pub fn valid_username(name: &str) -> bool {
    (USERNAME_MIN..=USERNAME_MAX).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The form names are compared in: usernames are unique and looked up case-insensitively.
pub fn fold(name: &str) -> String {
    name.to_ascii_lowercase()
}

/// Lower-case hex of `bytes`.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

/// The bytes of hex text (either case), or `None` if it is not an even number of hex digits.
pub fn from_hex(text: &str) -> Option<Vec<u8>> {
    fn digit(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let text = text.as_bytes();
    if text.len() % 2 != 0 {
        return None;
    }
    text.chunks_exact(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

/// Splits `text` at its first space: `("PM", "bob hello")`; the rest is `""` without one.
pub fn split_word(text: &str) -> (&str, &str) {
    text.split_once(' ').unwrap_or((text, ""))
}

/// The line a message carries: UTF-8 (lossy), without one trailing `\n` or `\r\n`.
pub fn line_of(data: &[u8]) -> String {
    let text = String::from_utf8_lossy(data);
    let text = text.strip_suffix('\n').unwrap_or(&text);
    let text = text.strip_suffix('\r').unwrap_or(text);
    text.to_string()
}
