//! Runs `examples/inspect.rs` through `cargo run -q --example inspect -- HEX` and checks its
//! JSON and exit status for each packet type, an encrypted fragment and unreadable input.
//!
//! Cargo does not give integration tests the path of an example binary, so each case runs
//! cargo (`$CARGO`, the cargo that runs the tests). `cargo test` has built the example already,
//! so every run only checks that it is fresh.

use std::collections::BTreeMap;
use std::process::Command;

use tickwire::pipeline::{Encoder, PacketKey, Seal, SendOptions};
use tickwire::wire::{AuthFields, Body, Header, Packet, PacketType, TypeFields};

/// The output of one run: stdout parsed as one JSON object, stderr, and the exit status.
struct Run {
    json: Option<BTreeMap<String, Json>>,
    stdout: String,
    stderr: String,
    status: Option<i32>,
}

fn inspect(args: &[&str]) -> Run {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["run", "-q", "--example", "inspect"]);
    if !cfg!(debug_assertions) {
        // Reuse the build of `cargo test --release` rather than building a debug one.
        cmd.arg("--release");
    }
    let out = cmd.arg("--").args(args).output().expect("run cargo");
    let stdout = String::from_utf8(out.stdout).expect("stdout is UTF-8");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = if stdout.is_empty() {
        None
    } else {
        assert!(
            stdout.ends_with('\n') && stdout.trim_end().lines().count() == 1,
            "not exactly one line: {stdout:?}"
        );
        match Json::parse(stdout.trim_end()) {
            Ok(Json::Object(map)) => Some(map),
            other => panic!("stdout is not a JSON object: {stdout:?} ({other:?})"),
        }
    };
    Run {
        json,
        stdout,
        stderr,
        status: out.status.code(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn emit(packet: &Packet<'_>) -> Vec<u8> {
    let mut buf = vec![0u8; packet.len()];
    packet.emit(&mut buf).expect("emit");
    buf
}

impl Run {
    fn ok(&self) -> &BTreeMap<String, Json> {
        assert_eq!(
            self.status,
            Some(0),
            "stdout {:?}, stderr {:?}",
            self.stdout,
            self.stderr
        );
        self.json.as_ref().expect("a JSON object on stdout")
    }

    /// Checks an unreadable-datagram report: exit 1, exactly `error` and `reason`.
    fn unreadable(&self, code: &str) -> String {
        assert_eq!(
            self.status,
            Some(1),
            "stdout {:?}, stderr {:?}",
            self.stdout,
            self.stderr
        );
        let obj = self.json.as_ref().expect("a JSON object on stdout");
        assert_eq!(obj.keys().collect::<Vec<_>>(), ["error", "reason"]);
        assert_eq!(obj["error"], Json::str(code));
        let Json::String(reason) = &obj["reason"] else {
            panic!("reason is not a string: {obj:?}");
        };
        assert!(!reason.is_empty());
        reason.clone()
    }
}

/// Checks that `obj` has exactly `keys` (in any order) and the common header fields.
fn check_common(
    obj: &BTreeMap<String, Json>,
    ty: &str,
    flags: &[&str],
    seq: u64,
    extra_keys: &[&str],
) {
    let mut expected: Vec<&str> = ["version", "type", "flags", "seq"].to_vec();
    expected.extend_from_slice(extra_keys);
    expected.sort_unstable();
    let mut got: Vec<&str> = obj.keys().map(String::as_str).collect();
    got.sort_unstable();
    assert_eq!(got, expected, "keys of {obj:?}");
    assert_eq!(obj["version"], Json::Number(0.0));
    assert_eq!(obj["type"], Json::str(ty));
    assert_eq!(
        obj["flags"],
        Json::Array(flags.iter().map(|f| Json::str(f)).collect())
    );
    assert_eq!(obj["seq"], Json::Number(seq as f64));
}

fn num(obj: &BTreeMap<String, Json>, key: &str) -> f64 {
    match obj.get(key) {
        Some(Json::Number(n)) => *n,
        other => panic!("{key} is not a number: {other:?}"),
    }
}

#[test]
fn default_packet() {
    let run = inspect(&["000000016869"]);
    let obj = run.ok();
    check_common(obj, "DEFAULT", &[], 1, &["data_len"]);
    assert_eq!(num(obj, "data_len"), 2.0);
}

#[test]
fn ack_with_prefix_spaces_and_mixed_case() {
    // RELIABLE|CHECKSUM, seq 0x0107, checksum 0xBEEF, ACK ID 5, ACK Bits 0xA000, Data "hi".
    let run = inspect(&["0x01C0 0107 beEF", "0005 A000 6869"]);
    let obj = run.ok();
    check_common(
        obj,
        "ACK",
        &["RELIABLE", "CHECKSUM"],
        0x0107,
        &["checksum", "ack_id", "ack_bits", "data_len"],
    );
    assert_eq!(num(obj, "checksum"), f64::from(0xBEEFu16));
    assert_eq!(num(obj, "ack_id"), 5.0);
    assert_eq!(num(obj, "ack_bits"), f64::from(0xA000u16));
    assert_eq!(num(obj, "data_len"), 2.0);
}

#[test]
fn auth_with_certificate() {
    let key = [0x02u8; 33];
    let cert = [0xC5u8; 70];
    let bytes = emit(&Packet {
        header: Header::new(PacketType::Auth, 0x2A),
        body: Body::Auth(AuthFields {
            public_key: &key,
            certificate: Some(&cert),
        }),
    });
    let run = inspect(&[&hex(&bytes).to_uppercase()]);
    let obj = run.ok();
    check_common(obj, "AUTH", &[], 0x2A, &["key_len", "cert_len"]);
    assert_eq!(num(obj, "key_len"), 33.0);
    assert_eq!(num(obj, "cert_len"), 70.0);
}

#[test]
fn heartbeat_pong() {
    let run = inspect(&["03000009 01"]);
    let obj = run.ok();
    check_common(obj, "HEARTBEAT", &[], 9, &["heartbeat", "data_len"]);
    assert_eq!(obj["heartbeat"], Json::str("pong"));
    assert_eq!(num(obj, "data_len"), 0.0);
}

#[test]
fn error_server_disconnect() {
    // ERROR, seq 10, code 2.1, message "bye".
    let run = inspect(&["0400000a21627965"]);
    let obj = run.ok();
    check_common(obj, "ERROR", &[], 10, &["error", "data_len"]);
    assert_eq!(obj["error"], Json::str("2.1"));
    assert_eq!(num(obj, "data_len"), 3.0);
}

#[test]
fn encrypted_fragment() {
    let key = PacketKey::new(&[7; 16], &[9; 12]);
    let packet_number = 0x0003_0102;
    let payload: Vec<u8> = (0..2000u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut encoder = Encoder::new();
    let encoded = encoder
        .encode(
            TypeFields::Default,
            &payload,
            SendOptions {
                reliable: true,
                ..SendOptions::default()
            },
            Seal::Sealed {
                key: &key,
                packet_number,
            },
        )
        .expect("encode");
    // 2000 octets + 16 tag = 2016 = 988 + 988 + 40: three fragments.
    assert_eq!(encoded.datagram_count(), 3);
    let mut buf = [0u8; 1100];
    let n = encoded.write_datagram(1, &mut buf).expect("write");
    let run = inspect(&[&hex(&buf[..n])]);
    let obj = run.ok();
    check_common(
        obj,
        "DEFAULT",
        &["RELIABLE", "ENCRYPTED", "FRAG"],
        0x0102,
        &["frag_id", "frag_count", "iv", "data_len"],
    );
    assert_eq!(num(obj, "frag_id"), 1.0);
    assert_eq!(num(obj, "frag_count"), 3.0);
    assert_eq!(num(obj, "iv"), 3.0);
    assert_eq!(num(obj, "data_len"), 988.0);
}

/// CHECKSUM with ENCRYPTED: the format lays both fields out (Init Vector, then Checksum), so
/// the tool decodes the header, and says apart that tickwire's parser refuses it (3.3).
#[test]
fn checksum_with_encrypted_is_decoded_and_marked_refused() {
    // DEFAULT, RELIABLE|CHECKSUM|ENCRYPTED|FRAG, seq 0x0102, fragment 1 of 3, IV 3,
    // checksum 0xBEEF, 2 octets of Data.
    let run = inspect(&["00D8 0102 0103 0003 BEEF 6869"]);
    let obj = run.ok();
    check_common(
        obj,
        "DEFAULT",
        &["RELIABLE", "CHECKSUM", "ENCRYPTED", "FRAG"],
        0x0102,
        &[
            "frag_id",
            "frag_count",
            "iv",
            "checksum",
            "data_len",
            "refused",
            "refused_reason",
        ],
    );
    assert_eq!(num(obj, "frag_id"), 1.0);
    assert_eq!(num(obj, "frag_count"), 3.0);
    assert_eq!(num(obj, "iv"), 3.0);
    assert_eq!(num(obj, "checksum"), f64::from(0xBEEFu16));
    assert_eq!(num(obj, "data_len"), 2.0);
    assert_eq!(obj["refused"], Json::str("3.3"));
    let Json::String(reason) = &obj["refused_reason"] else {
        panic!("refused_reason is not a string: {obj:?}");
    };
    assert!(reason.contains("checksum"), "{reason}");

    // ACK, CHECKSUM|ENCRYPTED, no FRAG: the type fields follow the Checksum.
    let run = inspect(&["0150 0007 0001 1234 0005 A000"]);
    let obj = run.ok();
    check_common(
        obj,
        "ACK",
        &["CHECKSUM", "ENCRYPTED"],
        7,
        &[
            "iv",
            "checksum",
            "ack_id",
            "ack_bits",
            "data_len",
            "refused",
            "refused_reason",
        ],
    );
    assert_eq!(num(obj, "iv"), 1.0);
    assert_eq!(num(obj, "checksum"), f64::from(0x1234u16));
    assert_eq!(num(obj, "ack_id"), 5.0);
    assert_eq!(num(obj, "ack_bits"), f64::from(0xA000u16));
    assert_eq!(obj["refused"], Json::str("3.3"));

    // Cut short inside the Checksum: unreadable. Other errors still come through.
    inspect(&["0050 0007 0001 12"]).unreadable("3.0");
    inspect(&["0054 0007 0001 1234"]).unreadable("3.3"); // a reserved bit as well
    inspect(&["0250 0000 0001 1234"]).unreadable("3.3"); // flags on AUTH
}

#[test]
fn unreadable_version() {
    inspect(&["10000001"]).unreadable("3.1");
}

#[test]
fn bad_hex() {
    let reason = inspect(&["00 0g"]).unreadable("3.0");
    assert!(reason.contains("hex"), "{reason}");
    let reason = inspect(&["000"]).unreadable("3.0");
    assert!(reason.contains("hex"), "{reason}");
    // The offending character is quoted in the reason, so it must be escaped in the JSON.
    let reason = inspect(&["00\"\\"]).unreadable("3.0");
    assert!(reason.contains('"'), "{reason}");
}

#[test]
fn no_argument_prints_usage() {
    let run = inspect(&[]);
    assert_eq!(run.status, Some(2));
    assert!(run.stdout.is_empty(), "{:?}", run.stdout);
    // clap's error: the missing argument, then `Usage: inspect <HEX>...`.
    assert!(run.stderr.contains("Usage"), "{:?}", run.stderr);
}

/// A JSON value: just enough of RFC 8259 to check the tool's output strictly.
#[derive(Debug, Clone, PartialEq)]
enum Json {
    Null,
    Bool(bool),
    Number(f64),
    String(String),
    Array(Vec<Json>),
    Object(BTreeMap<String, Json>),
}

impl Json {
    fn str(s: &str) -> Self {
        Self::String(s.to_owned())
    }

    /// Parses one JSON value that fills `text` (surrounding whitespace allowed).
    fn parse(text: &str) -> Result<Self, String> {
        let mut p = Parser {
            s: text.as_bytes(),
            at: 0,
        };
        let v = p.value()?;
        p.ws();
        if p.at != p.s.len() {
            return Err(format!("trailing input at {}", p.at));
        }
        Ok(v)
    }
}

struct Parser<'a> {
    s: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while matches!(self.s.get(self.at), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    fn eat(&mut self, c: u8) -> Result<(), String> {
        self.ws();
        if self.s.get(self.at) == Some(&c) {
            self.at += 1;
            Ok(())
        } else {
            Err(format!("expected {:?} at {}", c as char, self.at))
        }
    }

    fn literal(&mut self, word: &str, v: Json) -> Result<Json, String> {
        if self.s[self.at..].starts_with(word.as_bytes()) {
            self.at += word.len();
            Ok(v)
        } else {
            Err(format!("bad literal at {}", self.at))
        }
    }

    fn value(&mut self) -> Result<Json, String> {
        self.ws();
        match self.s.get(self.at) {
            Some(b'{') => {
                self.at += 1;
                let mut map = BTreeMap::new();
                self.ws();
                if self.s.get(self.at) == Some(&b'}') {
                    self.at += 1;
                    return Ok(Json::Object(map));
                }
                loop {
                    self.ws();
                    let key = self.string()?;
                    self.eat(b':')?;
                    let v = self.value()?;
                    if map.insert(key.clone(), v).is_some() {
                        return Err(format!("duplicate key {key:?}"));
                    }
                    self.ws();
                    match self.s.get(self.at) {
                        Some(b',') => self.at += 1,
                        Some(b'}') => {
                            self.at += 1;
                            return Ok(Json::Object(map));
                        }
                        _ => return Err(format!("expected , or }} at {}", self.at)),
                    }
                }
            }
            Some(b'[') => {
                self.at += 1;
                let mut items = Vec::new();
                self.ws();
                if self.s.get(self.at) == Some(&b']') {
                    self.at += 1;
                    return Ok(Json::Array(items));
                }
                loop {
                    items.push(self.value()?);
                    self.ws();
                    match self.s.get(self.at) {
                        Some(b',') => self.at += 1,
                        Some(b']') => {
                            self.at += 1;
                            return Ok(Json::Array(items));
                        }
                        _ => return Err(format!("expected , or ] at {}", self.at)),
                    }
                }
            }
            Some(b'"') => Ok(Json::String(self.string()?)),
            Some(b't') => self.literal("true", Json::Bool(true)),
            Some(b'f') => self.literal("false", Json::Bool(false)),
            Some(b'n') => self.literal("null", Json::Null),
            Some(b'-' | b'0'..=b'9') => {
                let start = self.at;
                while matches!(
                    self.s.get(self.at),
                    Some(b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                ) {
                    self.at += 1;
                }
                let text = std::str::from_utf8(&self.s[start..self.at]).expect("ASCII");
                if text.len() > 1 && text.starts_with('0') && !text.starts_with("0.") {
                    return Err(format!("leading zero in {text}"));
                }
                text.parse()
                    .map(Json::Number)
                    .map_err(|e| format!("bad number {text}: {e}"))
            }
            _ => Err(format!("unexpected input at {}", self.at)),
        }
    }

    fn string(&mut self) -> Result<String, String> {
        self.eat(b'"')?;
        let mut out = Vec::new();
        loop {
            let Some(&c) = self.s.get(self.at) else {
                return Err("unterminated string".to_owned());
            };
            self.at += 1;
            match c {
                b'"' => return String::from_utf8(out).map_err(|e| e.to_string()),
                b'\\' => {
                    let Some(&e) = self.s.get(self.at) else {
                        return Err("unterminated escape".to_owned());
                    };
                    self.at += 1;
                    let ch = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let hex = self
                                .s
                                .get(self.at..self.at + 4)
                                .and_then(|h| std::str::from_utf8(h).ok())
                                .and_then(|h| u32::from_str_radix(h, 16).ok())
                                .ok_or("bad \\u escape")?;
                            self.at += 4;
                            char::from_u32(hex).ok_or("\\u escape of a surrogate")?
                        }
                        _ => return Err(format!("bad escape at {}", self.at)),
                    };
                    out.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes());
                }
                0..=0x1f => return Err(format!("control character in string at {}", self.at)),
                _ => out.push(c),
            }
        }
    }
}

#[test]
fn json_parser_accepts_escapes_and_rejects_garbage() {
    assert_eq!(
        Json::parse(r#"{"a":[1,"x\"\\\n\u0001"],"b":true}"#).unwrap(),
        Json::Object(BTreeMap::from([
            (
                "a".to_owned(),
                Json::Array(vec![Json::Number(1.0), Json::str("x\"\\\n\u{1}")])
            ),
            ("b".to_owned(), Json::Bool(true)),
        ]))
    );
    for bad in [
        r#"{"a":1"#,
        r#"{"a":"x"#,
        "{\"a\":\"\u{1}\"}",
        r#"{"a":01}"#,
        "{} x",
    ] {
        assert!(Json::parse(bad).is_err(), "{bad}");
    }
}
