//! Decodes one tickwire datagram given as hex and prints it as one line of JSON.
//!
//! # Usage
//! ```text
//! cargo run --example inspect -- HEX
//! ```
//! `HEX` is the datagram as hexadecimal digits, upper or lower case, with an optional leading
//! `0x` and optional whitespace between digits (several arguments are joined, so unquoted
//! `00 00 00 01` works too).
//!
//! # Output
//! One JSON object on one line on stdout. A readable datagram gives exit status 0 and
//! `version`, `type`, `flags` (names, most significant first) and `seq`, then, where the
//! datagram has them, `frag_id`, `frag_count`, `iv`, `checksum`, `ack_id`, `ack_bits`,
//! `key_len`, `cert_len`, `heartbeat` (`"ping"` / `"pong"`), `error` (`"MAJOR.MINOR"`) and
//! `data_len` (every type but AUTH). Sealed (ENCRYPTED) Data is reported as it is on the wire,
//! never opened: `data_len` then counts the ciphertext and its 16-octet tag.
//!
//! A header the format lays out but tickwire refuses is decoded all the same: CHECKSUM with
//! ENCRYPTED (docs/PROTOCOL.md §2: the fields in their order, Init Vector then Checksum; the
//! tickwire parser drops such a datagram, 3.3, because a sealed packet carries no checksum).
//! The JSON then ends with `refused` (the code tickwire's parser gives, `"3.3"`) and
//! `refused_reason`, and the exit status is still 0.
//!
//! A datagram that cannot be read gives `{"error":"MAJOR.MINOR","reason":"..."}` with the
//! protocol's error code (3.x) and exit status 1; input that is not hex is reported the same
//! way as 3.0. Without an argument clap's error and the usage go to stderr and the exit status
//! is 2; `--help` prints the usage.
//!
//! # Example
//! ```text
//! $ cargo run -q --example inspect -- 0x01800007 0005A000
//! {"version":0,"type":"ACK","flags":["RELIABLE"],"seq":7,"ack_id":5,"ack_bits":40960,"data_len":0}
//! $ cargo run -q --example inspect -- 10000001
//! {"error":"3.1","reason":"unknown version"}
//! ```

use std::ffi::OsString;
use std::fmt::Write as _;
use std::process::ExitCode;

use clap::Parser;
use tickwire::wire::{Body, ErrorCode, Flags, Packet, TypeFields, WireError};

/// Decodes one tickwire datagram given as hex and prints it as one line of JSON.
#[derive(Parser, Debug)]
#[command(
    name = "inspect",
    long_about = None,
    after_help = "Exit status: 0 readable (the JSON says `refused` if tickwire itself would drop it), \
        1 not readable (the JSON names the error code and the reason), 2 usage."
)]
struct Args {
    /// The datagram as hex digits: upper or lower case, optional leading 0x, optional spaces;
    /// several arguments are joined.
    #[arg(value_name = "HEX", required = true, num_args = 1.., allow_hyphen_values = true)]
    hex: Vec<OsString>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let input: Vec<String> = args
        .hex
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let (json, status) = match parse_hex(&input.join(" ")) {
        Ok(bytes) => describe(&bytes),
        Err(reason) => (error_json(&ErrorCode::Packet.to_string(), &reason), 1),
    };
    println!("{json}");
    ExitCode::from(u8::try_from(status).unwrap_or(1))
}

/// Decodes hex digits (either case), ignoring whitespace and one leading `0x`/`0X`.
///
/// # Errors
/// A reason naming the problem: no digit, a non-hex character, or an odd number of digits.
fn parse_hex(input: &str) -> Result<Vec<u8>, String> {
    let trimmed = input.trim_start();
    let body = trimmed
        .strip_prefix("0x")
        .or_else(|| trimmed.strip_prefix("0X"))
        .unwrap_or(trimmed);
    let skipped = input.chars().count() - body.chars().count();
    let mut digits = Vec::with_capacity(body.len());
    for (at, c) in body.chars().enumerate() {
        if c.is_whitespace() {
            continue;
        }
        match c.to_digit(16) {
            Some(d) => digits.push(d as u8),
            None => {
                return Err(format!(
                    "bad hex: {c:?} is not a hex digit (character {})",
                    at + skipped
                ))
            }
        }
    }
    if digits.is_empty() {
        return Err("bad hex: no hex digits".to_owned());
    }
    if digits.len() % 2 != 0 {
        return Err(format!(
            "bad hex: odd number of hex digits ({})",
            digits.len()
        ));
    }
    Ok(digits.chunks(2).map(|p| p[0] << 4 | p[1]).collect())
}

/// Describes one datagram as a one-line JSON object, with the exit status: 0 if it was
/// readable, 1 if not (the object then holds `error` and `reason`).
///
/// A header the format can lay out but tickwire refuses (CHECKSUM with ENCRYPTED: both
/// fields present, Init Vector first) is decoded all the same, and `refused` and
/// `refused_reason` say what tickwire's parser answers.
fn describe(bytes: &[u8]) -> (String, i32) {
    match Packet::parse(bytes) {
        Ok(packet) => (describe_packet(bytes, &packet, None, None), 0),
        Err(refused) => {
            let Some((stripped, sum)) = without_checksum(bytes) else {
                return (error_json(&refused.code.to_string(), refused.reason), 1);
            };
            let Some(sum) = sum else {
                // The datagram ends before the Checksum field (or before a field ahead of it).
                return (
                    error_json(&ErrorCode::Packet.to_string(), "truncated checksum"),
                    1,
                );
            };
            match Packet::parse(&stripped) {
                Ok(packet) => (describe_packet(bytes, &packet, Some(sum), Some(refused)), 0),
                Err(e) => (error_json(&e.code.to_string(), e.reason), 1),
            }
        }
    }
}

/// For a datagram whose header has both CHECKSUM and ENCRYPTED set (which tickwire refuses,
/// 3.3): the same datagram with CHECKSUM cleared and its Checksum field cut out, and that
/// field's value, or `None` for it if the datagram ends before the field (then nothing is cut).
/// `None` for any other datagram.
fn without_checksum(bytes: &[u8]) -> Option<(Vec<u8>, Option<u16>)> {
    let flags = Flags::from_bits(*bytes.get(1)?)?;
    if !flags.contains(Flags::CHECKSUM | Flags::ENCRYPTED) {
        return None;
    }
    // Version/Type, Flags, Sequence ID, [Fragment ID, Fragment Number], Init Vector, Checksum.
    let at = 4 + if flags.contains(Flags::FRAG) { 2 } else { 0 } + 2;
    let mut stripped = bytes.to_vec();
    stripped[1] = flags.without(Flags::CHECKSUM).bits();
    let sum = bytes
        .get(at..at + 2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]));
    if sum.is_some() {
        stripped.drain(at..at + 2);
    }
    Some((stripped, sum))
}

/// The JSON of a parsed packet. `checksum` overrides the header's (for a header decoded
/// without it); `refused` is tickwire's own verdict on the original datagram.
fn describe_packet(
    bytes: &[u8],
    packet: &Packet<'_>,
    checksum: Option<u16>,
    refused: Option<WireError>,
) -> String {
    let header = &packet.header;
    let mut obj = JsonObject::new();
    // Packet::parse accepts only version 0, but report what the datagram says.
    obj.number("version", u64::from(bytes[0] >> 4));
    obj.string("type", header.packet_type.name());
    let flags = Flags::from_bits(bytes[1]).unwrap_or(header.flags);
    obj.strings("flags", flags.names());
    obj.number("seq", u64::from(header.sequence));
    if let Some(frag) = header.fragment {
        obj.number("frag_id", u64::from(frag.id));
        obj.number("frag_count", u64::from(frag.count));
    }
    if let Some(iv) = header.init_vector {
        obj.number("iv", u64::from(iv));
    }
    if let Some(sum) = checksum.or(header.checksum) {
        obj.number("checksum", u64::from(sum));
    }
    match &packet.body {
        Body::Data { fields, data } => {
            match fields {
                TypeFields::Default => {}
                TypeFields::Ack(ack) => {
                    obj.number("ack_id", u64::from(ack.ack_id));
                    obj.number("ack_bits", u64::from(ack.ack_bits));
                }
                TypeFields::Heartbeat(hb) => obj.string("heartbeat", hb.name()),
                TypeFields::Error(code) => obj.string("error", &code.to_string()),
            }
            obj.number("data_len", data.len() as u64);
        }
        Body::Auth(auth) => {
            obj.number("key_len", auth.public_key.len() as u64);
            if let Some(cert) = auth.certificate {
                obj.number("cert_len", cert.len() as u64);
            }
        }
    }
    if let Some(e) = refused {
        obj.string("refused", &e.code.to_string());
        obj.string("refused_reason", e.reason);
    }
    obj.finish()
}

/// `{"error":CODE,"reason":REASON}`.
fn error_json(code: &str, reason: &str) -> String {
    let mut obj = JsonObject::new();
    obj.string("error", code);
    obj.string("reason", reason);
    obj.finish()
}

/// A one-line JSON object written by hand, keys in insertion order.
struct JsonObject {
    out: String,
}

impl JsonObject {
    fn new() -> Self {
        Self {
            out: String::from("{"),
        }
    }

    fn key(&mut self, key: &str) {
        if self.out.len() > 1 {
            self.out.push(',');
        }
        push_json_string(&mut self.out, key);
        self.out.push(':');
    }

    fn number(&mut self, key: &str, value: u64) {
        self.key(key);
        write!(self.out, "{value}").expect("writing to a String cannot fail");
    }

    fn string(&mut self, key: &str, value: &str) {
        self.key(key);
        push_json_string(&mut self.out, value);
    }

    fn strings<'s>(&mut self, key: &str, values: impl IntoIterator<Item = &'s str>) {
        self.key(key);
        self.out.push('[');
        for (i, v) in values.into_iter().enumerate() {
            if i > 0 {
                self.out.push(',');
            }
            push_json_string(&mut self.out, v);
        }
        self.out.push(']');
    }

    fn finish(mut self) -> String {
        self.out.push('}');
        self.out
    }
}

/// Appends `s` as a JSON string literal (RFC 8259 escaping; non-ASCII is kept as UTF-8).
fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if u32::from(c) < 0x20 || c == '\u{7f}' => {
                write!(out, "\\u{:04x}", u32::from(c)).expect("writing to a String cannot fail");
            }
            // U+2028 and U+2029 are valid JSON but break JavaScript string literals.
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out.push('"');
}
