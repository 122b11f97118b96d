//! Golden vectors: datagrams worked out by hand from the packet layout of `docs/PROTOCOL.md`
//! §2 (the header, flags and type-specific fields).
//!
//! Every vector is checked in both directions: `Packet::parse` of the bytes gives the expected
//! struct, and `Packet::emit` of the struct into a buffer pre-filled with 0xa5 writes exactly the
//! bytes (and nothing after them). Every truncation of every vector is checked too: one that
//! cuts into the header or the type-specific fields is ERROR 3.0; one that only shortens the
//! open-ended Data parses as the same packet with shorter Data (the wire has no length field
//! for Data, so a shorter datagram *is* a valid packet); for AUTH, whose certificate is optional
//! and decided by the remaining length, the one truncation that ends right after the public key
//! is the same packet without a certificate and every other one is 3.0.
//!
//! Layout reminders (bit 0 = most significant bit of the first octet, big-endian fields):
//! - octet 0: Version (high nibble, 0) | Type (low nibble: DEFAULT 0, ACK 1, AUTH 2,
//!   HEARTBEAT 3, ERROR 4)
//! - octet 1: Flags, MSB first: RELIABLE 0x80, CHECKSUM 0x40, COMPRESSED 0x20,
//!   ENCRYPTED 0x10, FRAG 0x08, three reserved low bits
//! - octets 2-3: Sequence ID
//! - then, only with their flag and in this order: Fragment ID (8) + Fragment Number (8)
//!   [FRAG], Init Vector (16) [ENCRYPTED], Checksum (16) [CHECKSUM]
//! - then the type-specific fields, then Data.
//!
//! The CRC values below were computed independently of the crate (Python's `zlib.crc32`) and
//! cross-checked against a bitwise CRC-32 written in this file; the AES-GCM ciphertexts were
//! computed with Python's `cryptography` package from the key, nonce and AAD written here.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes128Gcm, Nonce};

use tickwire::pipeline::seal::{associated_data, packet_number, MAX_AAD, TAG_LEN};
use tickwire::pipeline::{
    checksum16, Decoder, Encoder, PacketKey, Reassembler, Reassembly, ReassemblyConfig, Seal,
    SendOptions,
};
use tickwire::wire::{
    AckFields, AuthFields, Body, EmitError, ErrorCode, Flags, FragmentFields, Header, Heartbeat,
    Packet, PacketType, TypeFields, MAX_DATA,
};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A bitwise CRC-32 (IEEE 802.3, reflected, poly 0xEDB88320), written here so that the
/// expected checksums do not come from the crate's own `crc32fast`.
fn crc32_reference(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A header with the given fields (the flags are given explicitly, as on the wire).
fn header(
    packet_type: PacketType,
    flags: u8,
    sequence: u16,
    fragment: Option<(u8, u8)>,
    init_vector: Option<u16>,
    checksum: Option<u16>,
) -> Header {
    Header {
        packet_type,
        flags: Flags::from_bits(flags).expect("no reserved bit in a golden vector"),
        sequence,
        fragment: fragment.map(|(id, count)| FragmentFields { id, count }),
        init_vector,
        checksum,
    }
}

fn data_packet<'a>(header: Header, fields: TypeFields, data: &'a [u8]) -> Packet<'a> {
    Packet {
        header,
        body: Body::Data { fields, data },
    }
}

/// Checks one golden vector in both directions and all its truncations.
fn check_golden(bytes: &[u8], expected: &Packet<'_>) {
    // bytes -> struct
    let parsed = Packet::parse(bytes).unwrap_or_else(|e| panic!("golden vector rejected: {e}"));
    assert_eq!(&parsed, expected, "parse");
    assert_eq!(expected.len(), bytes.len(), "Packet::len");

    // struct -> bytes, into a buffer pre-filled with 0xa5 and longer than needed
    let mut buf = vec![0xa5u8; bytes.len() + 16];
    let n = expected.emit(&mut buf).expect("emit");
    assert_eq!(n, bytes.len(), "emit length");
    assert_eq!(&buf[..n], bytes, "emitted bytes");
    assert!(
        buf[n..].iter().all(|&b| b == 0xa5),
        "emit wrote past the packet"
    );

    // exactly-sized buffer works; one octet short is refused and nothing is written
    let mut exact = vec![0xa5u8; bytes.len()];
    assert_eq!(expected.emit(&mut exact), Ok(bytes.len()));
    assert_eq!(exact, bytes);
    let mut short = vec![0xa5u8; bytes.len() - 1];
    assert_eq!(
        expected.emit(&mut short),
        Err(EmitError::BufferTooSmall {
            needed: bytes.len(),
            available: bytes.len() - 1,
        })
    );
    assert!(short.iter().all(|&b| b == 0xa5), "emit wrote on error");

    // every truncation
    for n in 0..bytes.len() {
        let result = Packet::parse(&bytes[..n]);
        match &expected.body {
            Body::Data { fields, data } => {
                let fixed = bytes.len() - data.len();
                if n < fixed {
                    let err = result.expect_err("truncated fixed fields must not parse");
                    assert_eq!(err.code, ErrorCode::Packet, "truncated to {n}: {err}");
                } else {
                    let p = result.unwrap_or_else(|e| panic!("truncated to {n} in Data: {e}"));
                    assert_eq!(p.header, expected.header, "truncated to {n}");
                    assert_eq!(
                        p.body,
                        Body::Data {
                            fields: *fields,
                            data: &data[..n - fixed],
                        },
                        "truncated to {n}"
                    );
                }
            }
            Body::Auth(auth) => {
                let key_end = expected.header.len() + 2 + auth.public_key.len();
                if auth.certificate.is_some() && n == key_end {
                    let p = result.unwrap_or_else(|e| panic!("AUTH cut after the key: {e}"));
                    assert_eq!(
                        p.body,
                        Body::Auth(AuthFields {
                            public_key: auth.public_key,
                            certificate: None,
                        })
                    );
                } else {
                    let err = result.expect_err("truncated AUTH must not parse");
                    assert_eq!(err.code, ErrorCode::Packet, "truncated to {n}: {err}");
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// DEFAULT packets and flag combinations
// ---------------------------------------------------------------------------------------------

/// DEFAULT, no flag, Sequence ID 0x0102, Data "hi".
static DEFAULT_BYTES: [u8; 6] = [
    0x00, // Version 0 | Type 0 (DEFAULT)
    0x00, // Flags: none
    0x01, 0x02, // Sequence ID 0x0102
    0x68, 0x69, // Data "hi"
];

#[test]
fn default_plain() {
    let p = data_packet(
        header(PacketType::Default, 0x00, 0x0102, None, None, None),
        TypeFields::Default,
        b"hi",
    );
    assert_eq!(p, Packet::with_data(0x0102, TypeFields::Default, b"hi"));
    check_golden(&DEFAULT_BYTES, &p);
}

/// The shortest packet: DEFAULT, no flag, Sequence ID 0xFFFF, no Data.
static DEFAULT_EMPTY_BYTES: [u8; 4] = [
    0x00, // Version 0 | Type 0 (DEFAULT)
    0x00, // Flags: none
    0xFF, 0xFF, // Sequence ID 0xFFFF
];

#[test]
fn default_empty() {
    let p = data_packet(
        header(PacketType::Default, 0x00, 0xFFFF, None, None, None),
        TypeFields::Default,
        b"",
    );
    check_golden(&DEFAULT_EMPTY_BYTES, &p);
}

/// DEFAULT with RELIABLE, Sequence ID 7, Data "ok".
static RELIABLE_BYTES: [u8; 6] = [
    0x00, // Version 0 | Type 0 (DEFAULT)
    0x80, // Flags: RELIABLE
    0x00, 0x07, // Sequence ID 7
    0x6F, 0x6B, // Data "ok"
];

#[test]
fn flag_reliable() {
    let p = data_packet(
        header(PacketType::Default, 0x80, 7, None, None, None),
        TypeFields::Default,
        b"ok",
    );
    check_golden(&RELIABLE_BYTES, &p);
}

/// DEFAULT with CHECKSUM, Sequence ID 42, Data "123456789"; the checksum is the low 16 bits of
/// CRC-32("123456789") = 0xCBF43926.
static CHECKSUM_BYTES: [u8; 15] = [
    0x00, // Version 0 | Type 0 (DEFAULT)
    0x40, // Flags: CHECKSUM
    0x00, 0x2A, // Sequence ID 42
    0x39, 0x26, // Checksum Hash: low 16 bits of 0xCBF43926
    0x31, 0x32, 0x33, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, // Data "123456789"
];

#[test]
fn flag_checksum() {
    let p = data_packet(
        header(PacketType::Default, 0x40, 42, None, None, Some(0x3926)),
        TypeFields::Default,
        b"123456789",
    );
    check_golden(&CHECKSUM_BYTES, &p);
}

/// DEFAULT with FRAG, Sequence ID 0x1234, fragment 2 of 5, Data "xyz" (the wire layer does
/// not check fragment lengths; the reassembler does).
static FRAG_BYTES: [u8; 9] = [
    0x00, // Version 0 | Type 0 (DEFAULT)
    0x08, // Flags: FRAG
    0x12, 0x34, // Sequence ID 0x1234
    0x02, // Fragment ID 2
    0x05, // Fragment Number 5
    0x78, 0x79, 0x7A, // Data "xyz"
];

#[test]
fn flag_frag() {
    let p = data_packet(
        header(PacketType::Default, 0x08, 0x1234, Some((2, 5)), None, None),
        TypeFields::Default,
        b"xyz",
    );
    check_golden(&FRAG_BYTES, &p);
}

/// DEFAULT with ENCRYPTED, Sequence ID 0x5678, Init Vector 0x0009, Data four opaque octets
/// (ciphertext as far as the wire layer knows).
static ENCRYPTED_BYTES: [u8; 10] = [
    0x00, // Version 0 | Type 0 (DEFAULT)
    0x10, // Flags: ENCRYPTED
    0x56, 0x78, // Sequence ID 0x5678
    0x00, 0x09, // Init Vector 0x0009
    0xDE, 0xAD, 0xBE, 0xEF, // Data (opaque)
];

#[test]
fn flag_encrypted() {
    let p = data_packet(
        header(PacketType::Default, 0x10, 0x5678, None, Some(0x0009), None),
        TypeFields::Default,
        &[0xDE, 0xAD, 0xBE, 0xEF],
    );
    check_golden(&ENCRYPTED_BYTES, &p);
}

/// DEFAULT with COMPRESSED, Sequence ID 3, Data an LZ4 block for twenty 'a's written by hand.
static COMPRESSED_BYTES: [u8; 14] = [
    0x00, // Version 0 | Type 0 (DEFAULT)
    0x20, // Flags: COMPRESSED
    0x00, 0x03, // Sequence ID 3
    // Data: LZ4 block
    0x1A, // token: 1 literal, match length 0xA + 4 = 14
    0x61, // literal 'a'
    0x01, 0x00, // match offset 1 (little-endian): copy 14 more 'a's
    0x50, // token: 5 literals, no match (end of block)
    0x61, 0x61, 0x61, 0x61, 0x61, // literals "aaaaa"
];

#[test]
fn flag_compressed() {
    let p = data_packet(
        header(PacketType::Default, 0x20, 3, None, None, None),
        TypeFields::Default,
        &COMPRESSED_BYTES[4..],
    );
    check_golden(&COMPRESSED_BYTES, &p);
    // and the block is what the comments say it is
    let mut data = COMPRESSED_BYTES[4..].to_vec();
    let mut decoder = Decoder::new();
    let opened = decoder
        .open(&p.header, &TypeFields::Default, &mut data, None)
        .unwrap();
    assert_eq!(opened.plaintext, [b'a'; 20]);
    assert_eq!(opened.packet_number, 3);
}

/// DEFAULT with RELIABLE|CHECKSUM|FRAG, Sequence ID 0x1234, fragment 0 of 2, checksum 0xBEEF,
/// Data "fr".
static RELIABLE_CHECKSUM_FRAG_BYTES: [u8; 10] = [
    0x00, // Version 0 | Type 0 (DEFAULT)
    0xC8, // Flags: RELIABLE (0x80) | CHECKSUM (0x40) | FRAG (0x08)
    0x12, 0x34, // Sequence ID 0x1234
    0x00, // Fragment ID 0
    0x02, // Fragment Number 2
    0xBE, 0xEF, // Checksum Hash 0xBEEF
    0x66, 0x72, // Data "fr"
];

#[test]
fn flags_reliable_checksum_frag() {
    let p = data_packet(
        header(
            PacketType::Default,
            0xC8,
            0x1234,
            Some((0, 2)),
            None,
            Some(0xBEEF),
        ),
        TypeFields::Default,
        b"fr",
    );
    check_golden(&RELIABLE_CHECKSUM_FRAG_BYTES, &p);
}

/// DEFAULT with ENCRYPTED|FRAG, Sequence ID 0xABCD, fragment 1 of 3, Init Vector 0x0001,
/// Data three opaque octets.
static ENCRYPTED_FRAG_BYTES: [u8; 11] = [
    0x00, // Version 0 | Type 0 (DEFAULT)
    0x18, // Flags: ENCRYPTED (0x10) | FRAG (0x08)
    0xAB, 0xCD, // Sequence ID 0xABCD
    0x01, // Fragment ID 1
    0x03, // Fragment Number 3
    0x00, 0x01, // Init Vector 0x0001
    0x01, 0x02, 0x03, // Data (opaque)
];

#[test]
fn flags_encrypted_frag() {
    let p = data_packet(
        header(
            PacketType::Default,
            0x18,
            0xABCD,
            Some((1, 3)),
            Some(0x0001),
            None,
        ),
        TypeFields::Default,
        &[1, 2, 3],
    );
    check_golden(&ENCRYPTED_FRAG_BYTES, &p);
}

/// The longest legal header (CHECKSUM and ENCRYPTED exclude each other, so 8 octets):
/// DEFAULT with RELIABLE|COMPRESSED|ENCRYPTED|FRAG, Sequence ID 0xFFFE, fragment 254 of 255,
/// Init Vector 0xFFFF, Data one octet.
static LONGEST_SEALED_HEADER_BYTES: [u8; 9] = [
    0x00, // Version 0 | Type 0 (DEFAULT)
    0xB8, // Flags: RELIABLE (0x80) | COMPRESSED (0x20) | ENCRYPTED (0x10) | FRAG (0x08)
    0xFF, 0xFE, // Sequence ID 0xFFFE
    0xFE, // Fragment ID 254
    0xFF, // Fragment Number 255
    0xFF, 0xFF, // Init Vector 0xFFFF
    0x00, // Data (opaque)
];

#[test]
fn flags_reliable_compressed_encrypted_frag() {
    let p = data_packet(
        header(
            PacketType::Default,
            0xB8,
            0xFFFE,
            Some((254, 255)),
            Some(0xFFFF),
            None,
        ),
        TypeFields::Default,
        &[0],
    );
    check_golden(&LONGEST_SEALED_HEADER_BYTES, &p);
}

/// DEFAULT with RELIABLE|CHECKSUM|COMPRESSED|FRAG, Sequence ID 0x0100, fragment 3 of 4,
/// checksum 0x8BCE, Data the twenty-'a' LZ4 block's first two octets.
static RELIABLE_CHECKSUM_COMPRESSED_FRAG_BYTES: [u8; 10] = [
    0x00, // Version 0 | Type 0 (DEFAULT)
    0xE8, // Flags: RELIABLE (0x80) | CHECKSUM (0x40) | COMPRESSED (0x20) | FRAG (0x08)
    0x01, 0x00, // Sequence ID 0x0100
    0x03, // Fragment ID 3
    0x04, // Fragment Number 4
    0x8B, 0xCE, // Checksum Hash 0x8BCE
    0x1A, 0x61, // Data
];

#[test]
fn flags_reliable_checksum_compressed_frag() {
    let p = data_packet(
        header(
            PacketType::Default,
            0xE8,
            0x0100,
            Some((3, 4)),
            None,
            Some(0x8BCE),
        ),
        TypeFields::Default,
        &[0x1A, 0x61],
    );
    check_golden(&RELIABLE_CHECKSUM_COMPRESSED_FRAG_BYTES, &p);
}

/// The largest datagram of a DEFAULT packet with no optional field: 4 + 988 octets.
#[test]
fn default_with_max_data() {
    let mut bytes = vec![
        0x00, // Version 0 | Type 0 (DEFAULT)
        0x00, // Flags: none
        0x03, 0xDC, // Sequence ID 988
    ];
    bytes.extend((0..MAX_DATA).map(|i| i as u8));
    let data: Vec<u8> = (0..MAX_DATA).map(|i| i as u8).collect();
    let p = data_packet(
        header(PacketType::Default, 0x00, 988, None, None, None),
        TypeFields::Default,
        &data,
    );
    check_golden(&bytes, &p);
}

// ---------------------------------------------------------------------------------------------
// ACK
// ---------------------------------------------------------------------------------------------

/// ACK, no flag, Sequence ID 5, ACK ID 4, ACK Bits 0xC000 (3 and 2 received too), no Data.
static ACK_BYTES: [u8; 8] = [
    0x01, // Version 0 | Type 1 (ACK)
    0x00, // Flags: none
    0x00, 0x05, // Sequence ID 5
    0x00, 0x04, // ACK ID 4
    0xC0, 0x00, // ACK Bits: bit 0 (ACK ID - 1 = 3) and bit 1 (ACK ID - 2 = 2)
];

#[test]
fn ack() {
    let fields = AckFields {
        ack_id: 4,
        ack_bits: 0xC000,
    };
    let p = data_packet(
        header(PacketType::Ack, 0x00, 5, None, None, None),
        TypeFields::Ack(fields),
        b"",
    );
    check_golden(&ACK_BYTES, &p);
    assert_eq!(fields.acknowledged().collect::<Vec<_>>(), vec![4, 3, 2]);
}

/// ACK with RELIABLE, Sequence ID 0x0007, ACK ID 0x0005, ACK Bits 0xA000, Data "fin"
/// (the handshake's finished rides in an ACK's Data).
static ACK_RELIABLE_DATA_BYTES: [u8; 11] = [
    0x01, // Version 0 | Type 1 (ACK)
    0x80, // Flags: RELIABLE
    0x00, 0x07, // Sequence ID 7
    0x00, 0x05, // ACK ID 5
    0xA0, 0x00, // ACK Bits: bits 0 and 2 (4 and 2 received)
    0x66, 0x69, 0x6E, // Data "fin"
];

#[test]
fn ack_reliable_with_data() {
    let fields = AckFields {
        ack_id: 5,
        ack_bits: 0xA000,
    };
    let p = data_packet(
        header(PacketType::Ack, 0x80, 7, None, None, None),
        TypeFields::Ack(fields),
        b"fin",
    );
    check_golden(&ACK_RELIABLE_DATA_BYTES, &p);
    assert_eq!(fields.acknowledged().collect::<Vec<_>>(), vec![5, 4, 2]);
}

/// ACK with RELIABLE|CHECKSUM|FRAG: every optional field an unsealed packet can have, before
/// the ACK fields. Sequence ID 0x0A0B, fragment 1 of 2, checksum 0x6135, ACK ID 0xFFFF,
/// ACK Bits 0x0001, Data "ab".
static ACK_ALL_UNSEALED_BYTES: [u8; 14] = [
    0x01, // Version 0 | Type 1 (ACK)
    0xC8, // Flags: RELIABLE | CHECKSUM | FRAG
    0x0A, 0x0B, // Sequence ID 0x0A0B
    0x01, // Fragment ID 1
    0x02, // Fragment Number 2
    0x61, 0x35, // Checksum Hash 0x6135
    0xFF, 0xFF, // ACK ID 0xFFFF
    0x00, 0x01, // ACK Bits: bit 15 (ACK ID - 16 = 0xFFEF)
    0x61, 0x62, // Data "ab"
];

#[test]
fn ack_reliable_checksum_frag() {
    let fields = AckFields {
        ack_id: 0xFFFF,
        ack_bits: 0x0001,
    };
    let p = data_packet(
        header(
            PacketType::Ack,
            0xC8,
            0x0A0B,
            Some((1, 2)),
            None,
            Some(0x6135),
        ),
        TypeFields::Ack(fields),
        b"ab",
    );
    check_golden(&ACK_ALL_UNSEALED_BYTES, &p);
    assert!(fields.acknowledges(0xFFEF));
    assert!(!fields.acknowledges(0xFFEE));
}

// ---------------------------------------------------------------------------------------------
// AUTH
// ---------------------------------------------------------------------------------------------

/// The P-256 generator in SEC1 compressed form (a real 33-octet public key).
static P256_G_COMPRESSED: [u8; 33] = [
    0x03, 0x6B, 0x17, 0xD1, 0xF2, 0xE1, 0x2C, 0x42, 0x47, 0xF8, 0xBC, 0xE6, 0xE5, 0x63, 0xA4, 0x40,
    0xF2, 0x77, 0x03, 0x7D, 0x81, 0x2D, 0xEB, 0x33, 0xA0, 0xF4, 0xA1, 0x39, 0x45, 0xD8, 0x98, 0xC2,
    0x96,
];

/// AUTH without certificate: Sequence ID 0, a 33-octet key.
static AUTH_BYTES: [u8; 39] = [
    0x02, // Version 0 | Type 2 (AUTH)
    0x00, // Flags: none (AUTH carries none)
    0x00, 0x00, // Sequence ID 0
    0x00, // Reserved
    0x21, // EC Public Key Size E = 33
    // EC Public Key: SEC1 compressed P-256 generator (0x03 = odd y, then x)
    0x03, 0x6B, 0x17, 0xD1, 0xF2, 0xE1, 0x2C, 0x42, 0x47, 0xF8, 0xBC, 0xE6, 0xE5, 0x63, 0xA4, 0x40,
    0xF2, 0x77, 0x03, 0x7D, 0x81, 0x2D, 0xEB, 0x33, 0xA0, 0xF4, 0xA1, 0x39, 0x45, 0xD8, 0x98, 0xC2,
    0x96,
    // nothing follows: no Certificate Size, no certificate
];

#[test]
fn auth_without_certificate() {
    let p = Packet {
        header: header(PacketType::Auth, 0x00, 0, None, None, None),
        body: Body::Auth(AuthFields {
            public_key: &P256_G_COMPRESSED,
            certificate: None,
        }),
    };
    check_golden(&AUTH_BYTES, &p);
}

/// AUTH with a certificate: Sequence ID 1, the same key, a 6-octet certificate "tw-crt".
static AUTH_CERT_BYTES: [u8; 47] = [
    0x02, // Version 0 | Type 2 (AUTH)
    0x00, // Flags: none
    0x00, 0x01, // Sequence ID 1
    0x00, // Reserved
    0x21, // EC Public Key Size E = 33
    // EC Public Key (33 octets)
    0x03, 0x6B, 0x17, 0xD1, 0xF2, 0xE1, 0x2C, 0x42, 0x47, 0xF8, 0xBC, 0xE6, 0xE5, 0x63, 0xA4, 0x40,
    0xF2, 0x77, 0x03, 0x7D, 0x81, 0x2D, 0xEB, 0x33, 0xA0, 0xF4, 0xA1, 0x39, 0x45, 0xD8, 0x98, 0xC2,
    0x96, //
    0x00, 0x06, // Certificate Size C = 6
    0x74, 0x77, 0x2D, 0x63, 0x72, 0x74, // Certificate "tw-crt"
];

#[test]
fn auth_with_certificate() {
    let p = Packet {
        header: header(PacketType::Auth, 0x00, 1, None, None, None),
        body: Body::Auth(AuthFields {
            public_key: &P256_G_COMPRESSED,
            certificate: Some(b"tw-crt"),
        }),
    };
    check_golden(&AUTH_CERT_BYTES, &p);
}

/// AUTH with an empty certificate (C = 0 present) and an empty key (E = 0): both legal on
/// the wire, and distinct from "no certificate".
static AUTH_EMPTY_BYTES: [u8; 8] = [
    0x02, // Version 0 | Type 2 (AUTH)
    0x00, // Flags: none
    0x01, 0x00, // Sequence ID 0x0100
    0x00, // Reserved
    0x00, // EC Public Key Size E = 0 (no key octets)
    0x00, 0x00, // Certificate Size C = 0 (no certificate octets)
];

#[test]
fn auth_empty_key_and_certificate() {
    let p = Packet {
        header: header(PacketType::Auth, 0x00, 0x0100, None, None, None),
        body: Body::Auth(AuthFields {
            public_key: &[],
            certificate: Some(&[]),
        }),
    };
    check_golden(&AUTH_EMPTY_BYTES, &p);
}

// ---------------------------------------------------------------------------------------------
// HEARTBEAT
// ---------------------------------------------------------------------------------------------

/// HEARTBEAT PING, no flag, Sequence ID 0x0010, no Data.
static PING_BYTES: [u8; 5] = [
    0x03, // Version 0 | Type 3 (HEARTBEAT)
    0x00, // Flags: none
    0x00, 0x10, // Sequence ID 0x0010
    0x00, // Heartbeat: 0 = PING
];

#[test]
fn heartbeat_ping() {
    let p = data_packet(
        header(PacketType::Heartbeat, 0x00, 0x10, None, None, None),
        TypeFields::Heartbeat(Heartbeat::Ping),
        b"",
    );
    check_golden(&PING_BYTES, &p);
}

/// HEARTBEAT PONG with RELIABLE, Sequence ID 0x0011, Data "t=42".
static PONG_BYTES: [u8; 9] = [
    0x03, // Version 0 | Type 3 (HEARTBEAT)
    0x80, // Flags: RELIABLE
    0x00, 0x11, // Sequence ID 0x0011
    0x01, // Heartbeat: 1 = PONG
    0x74, 0x3D, 0x34, 0x32, // Data "t=42"
];

#[test]
fn heartbeat_pong() {
    let p = data_packet(
        header(PacketType::Heartbeat, 0x80, 0x11, None, None, None),
        TypeFields::Heartbeat(Heartbeat::Pong),
        b"t=42",
    );
    check_golden(&PONG_BYTES, &p);
}

// ---------------------------------------------------------------------------------------------
// ERROR
// ---------------------------------------------------------------------------------------------

/// ERROR 2.1 SERVER DISCONNECT, no flag, Sequence ID 0x0020, Data "bye".
static ERROR_BYTES: [u8; 8] = [
    0x04, // Version 0 | Type 4 (ERROR)
    0x00, // Flags: none
    0x00, 0x20, // Sequence ID 0x0020
    0x21, // Error Major 2 (high nibble) | Error Minor 1 (low nibble)
    0x62, 0x79, 0x65, // Data "bye"
];

#[test]
fn error_server_disconnect() {
    let p = data_packet(
        header(PacketType::Error, 0x00, 0x20, None, None, None),
        TypeFields::Error(ErrorCode::ServerDisconnect),
        b"bye",
    );
    check_golden(&ERROR_BYTES, &p);
}

/// ERROR 3.9 CHECKSUM with RELIABLE|CHECKSUM, Sequence ID 0x0021, checksum of "hi" (0x2AAC),
/// Data "hi".
static ERROR_CHECKSUMMED_BYTES: [u8; 9] = [
    0x04, // Version 0 | Type 4 (ERROR)
    0xC0, // Flags: RELIABLE | CHECKSUM
    0x00, 0x21, // Sequence ID 0x0021
    0x2A, 0xAC, // Checksum Hash: low 16 bits of CRC-32("hi") = 0xD8932AAC
    0x39, // Error Major 3 | Error Minor 9 (CHECKSUM)
    0x68, 0x69, // Data "hi"
];

#[test]
fn error_with_checksum() {
    let p = data_packet(
        header(PacketType::Error, 0xC0, 0x21, None, None, Some(0x2AAC)),
        TypeFields::Error(ErrorCode::Checksum),
        b"hi",
    );
    check_golden(&ERROR_CHECKSUMMED_BYTES, &p);
}

/// Every error code's octet is major << 4 | minor.
#[test]
fn error_every_code_octet() {
    for code in ErrorCode::ALL {
        let (major, minor) = code.parts();
        let bytes = [
            0x04, // Version 0 | Type 4 (ERROR)
            0x00, // Flags: none
            0x00,
            0x01, // Sequence ID 1
            major << 4 | minor,
        ];
        let p = data_packet(
            header(PacketType::Error, 0x00, 1, None, None, None),
            TypeFields::Error(code),
            b"",
        );
        check_golden(&bytes, &p);
    }
}

// ---------------------------------------------------------------------------------------------
// Pipeline golden vectors
// ---------------------------------------------------------------------------------------------

/// Key octets 0x00..=0x0F.
const KEY: [u8; 16] = [
    0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x0E, 0x0F,
];
/// Salt octets 0x10..=0x1B.
const SALT: [u8; 12] = [
    0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1A, 0x1B,
];

#[test]
fn crc_reference_values() {
    // The check value of CRC-32/IEEE.
    assert_eq!(crc32_reference(b"123456789"), 0xCBF4_3926);
    assert_eq!(crc32_reference(b""), 0);
    assert_eq!(crc32_reference(b"hi"), 0xD893_2AAC);
    assert_eq!(crc32_reference(&[b'a'; 20]), 0x266F_8BCE);
    assert_eq!(crc32_reference(b"hello, tickwire"), 0x383E_6135);
    for s in [&b"123456789"[..], b"", b"hi", &[b'a'; 20], &[0xFF; 1000]] {
        assert_eq!(checksum16(s), crc32_reference(s) as u16);
    }
}

fn write_all(encoded: &tickwire::pipeline::Encoded<'_>) -> Vec<Vec<u8>> {
    (0..encoded.datagram_count())
        .map(|i| {
            let mut buf = vec![0xa5u8; 1100];
            let n = encoded.write_datagram(i, &mut buf).unwrap();
            buf.truncate(n);
            buf
        })
        .collect()
}

/// Plain packet with CHECKSUM (and RELIABLE): the checksum is CRC-32 of the plaintext, low
/// 16 bits.
static PIPELINE_PLAIN_CHECKSUM_BYTES: [u8; 15] = [
    0x00, // Version 0 | Type 0 (DEFAULT)
    0xC0, // Flags: RELIABLE | CHECKSUM (not COMPRESSED: "123456789" does not shrink)
    0x01, 0x02, // Sequence ID 0x0102
    0x39, 0x26, // Checksum Hash: low 16 bits of CRC-32("123456789") = 0xCBF43926
    0x31, 0x32, 0x33, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, // Data "123456789"
];

#[test]
fn pipeline_plain_checksum() {
    for compress in [false, true] {
        let mut encoder = Encoder::new();
        let opts = SendOptions {
            reliable: true,
            checksum: true,
            compress,
        };
        let encoded = encoder
            .encode(
                TypeFields::Default,
                b"123456789",
                opts,
                Seal::Plain { sequence: 0x0102 },
            )
            .unwrap();
        assert_eq!(encoded.datagram_count(), 1);
        let datagrams = write_all(&encoded);
        assert_eq!(datagrams, vec![PIPELINE_PLAIN_CHECKSUM_BYTES.to_vec()]);

        let p = Packet::parse(&PIPELINE_PLAIN_CHECKSUM_BYTES).unwrap();
        let mut data = p.data().to_vec();
        let mut decoder = Decoder::new();
        let opened = decoder
            .open(&p.header, &TypeFields::Default, &mut data, None)
            .unwrap();
        assert_eq!(opened.plaintext, b"123456789");
        assert_eq!(opened.packet_number, 0x0102);
    }
}

/// Plain, compressible: CHECKSUM|COMPRESSED; the checksum covers the plaintext, not the LZ4
/// block. The block's exact octets are the compressor's choice, so only the header is golden.
#[test]
fn pipeline_plain_checksum_compressed() {
    let plaintext = [b'a'; 64];
    let mut encoder = Encoder::new();
    let opts = SendOptions {
        reliable: false,
        checksum: true,
        compress: true,
    };
    let encoded = encoder
        .encode(
            TypeFields::Default,
            &plaintext,
            opts,
            Seal::Plain { sequence: 0x0003 },
        )
        .unwrap();
    let datagrams = write_all(&encoded);
    assert_eq!(datagrams.len(), 1);
    let d = &datagrams[0];
    assert_eq!(
        d[..6],
        [
            0x00, // Version 0 | Type 0 (DEFAULT)
            0x60, // Flags: CHECKSUM | COMPRESSED
            0x00, 0x03, // Sequence ID 3
            0x65, 0x55, // Checksum: low 16 bits of CRC-32 of 64 'a's = 0x89B46555
        ]
    );
    assert!(d.len() - 6 < plaintext.len(), "compressed Data is smaller");
    let p = Packet::parse(d).unwrap();
    let mut data = p.data().to_vec();
    let mut decoder = Decoder::new();
    let opened = decoder
        .open(&p.header, &TypeFields::Default, &mut data, None)
        .unwrap();
    assert_eq!(opened.plaintext, plaintext);
}

/// Decoding a hand-written CHECKSUM|COMPRESSED datagram: the twenty-'a' LZ4 block, checksum
/// over the decompressed plaintext.
static PIPELINE_COMPRESSED_CHECKSUM_BYTES: [u8; 16] = [
    0x00, // Version 0 | Type 0 (DEFAULT)
    0x60, // Flags: CHECKSUM | COMPRESSED
    0x00, 0x04, // Sequence ID 4
    0x8B, 0xCE, // Checksum: low 16 bits of CRC-32 of 20 'a's = 0x266F8BCE
    0x1A, 0x61, 0x01, 0x00, // LZ4: 1 literal 'a', then 14 from offset 1
    0x50, 0x61, 0x61, 0x61, 0x61, 0x61, // LZ4: 5 literals "aaaaa"
];

#[test]
fn pipeline_decode_hand_written_compressed() {
    let p = Packet::parse(&PIPELINE_COMPRESSED_CHECKSUM_BYTES).unwrap();
    assert_eq!(p.header.checksum, Some(0x8BCE));
    let mut data = p.data().to_vec();
    let mut decoder = Decoder::new();
    let opened = decoder
        .open(&p.header, &TypeFields::Default, &mut data, None)
        .unwrap();
    assert_eq!(opened.plaintext, [b'a'; 20]);
}

#[test]
fn nonce_is_salt_xor_packet_number() {
    let key = PacketKey::new(&KEY, &SALT);
    // packet number 0: the salt itself
    assert_eq!(key.nonce(0), SALT);
    // 0x00010203 XORed into the last four octets 0x18 0x19 0x1A 0x1B
    assert_eq!(
        key.nonce(0x0001_0203),
        [0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x18, 0x18, 0x18]
    );
    // 0xDEADBEEF: 0x18^0xDE = 0xC6, 0x19^0xAD = 0xB4, 0x1A^0xBE = 0xA4, 0x1B^0xEF = 0xF4
    assert_eq!(
        key.nonce(0xDEAD_BEEF),
        [0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0xC6, 0xB4, 0xA4, 0xF4]
    );
    // 0xFFFFFFFF complements the last four octets only
    assert_eq!(
        key.nonce(u32::MAX),
        [0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0xE7, 0xE6, 0xE5, 0xE4]
    );
}

/// A sealed ACK: RELIABLE|ENCRYPTED, packet number 0x00010203 (Init Vector 0x0001, Sequence ID
/// 0x0203), ACK ID 0x0200, ACK Bits 0x8000, plaintext "hello, tickwire". The CHECKSUM option is
/// asked for and must be ignored (a sealed packet carries no checksum).
static PIPELINE_SEALED_ACK_BYTES: [u8; 41] = [
    0x01, // Version 0 | Type 1 (ACK)
    0x90, // Flags: RELIABLE (0x80) | ENCRYPTED (0x10)
    0x02, 0x03, // Sequence ID: low 16 bits of the packet number
    0x00, 0x01, // Init Vector: high 16 bits of the packet number
    0x02, 0x00, // ACK ID 0x0200
    0x80, 0x00, // ACK Bits: bit 0 (0x01FF)
    // Data: AES-128-GCM of "hello, tickwire" (15 octets) under KEY, nonce
    // 10 11 12 13 14 15 16 17 18 18 18 18, AAD 01 90 02 03 00 01 02 00 80 00
    0x62, 0x0d, 0x1d, 0x4a, 0xa8, 0xd4, 0x83, 0x10, 0xad, 0xb9, 0x4c, 0xeb, 0xad, 0x9a, 0x12,
    // the 16-octet tag
    0x47, 0x1e, 0x3c, 0xdf, 0x0e, 0x3e, 0x67, 0x8a, 0x50, 0xf6, 0xc7, 0x2e, 0x06, 0x93, 0x87, 0xf5,
];

/// The associated data of that packet, by hand: octet 0, Flags, Sequence ID, Init Vector, then
/// the ACK fields (no Fragment Number: not fragmented).
static PIPELINE_SEALED_ACK_AAD: [u8; 10] = [
    0x01, // Version 0 | Type 1 (ACK)
    0x90, // Flags: RELIABLE | ENCRYPTED
    0x02, 0x03, // Sequence ID
    0x00, 0x01, // Init Vector
    0x02, 0x00, // ACK ID
    0x80, 0x00, // ACK Bits
];

#[test]
fn pipeline_sealed_ack() {
    let key = PacketKey::new(&KEY, &SALT);
    let fields = TypeFields::Ack(AckFields {
        ack_id: 0x0200,
        ack_bits: 0x8000,
    });
    let opts = SendOptions {
        reliable: true,
        checksum: true,
        compress: false,
    };
    let mut encoder = Encoder::new();
    let encoded = encoder
        .encode(
            fields,
            b"hello, tickwire",
            opts,
            Seal::Sealed {
                key: &key,
                packet_number: 0x0001_0203,
            },
        )
        .unwrap();
    assert_eq!(
        encoded.header,
        header(PacketType::Ack, 0x90, 0x0203, None, Some(0x0001), None)
    );
    assert_eq!(encoded.payload.len(), 15 + TAG_LEN);
    let datagrams = write_all(&encoded);
    assert_eq!(datagrams, vec![PIPELINE_SEALED_ACK_BYTES.to_vec()]);

    // the AAD layout
    let mut aad = [0u8; MAX_AAD];
    let n = associated_data(&encoded.header, &fields, &mut aad);
    assert_eq!(aad[..n], PIPELINE_SEALED_ACK_AAD);

    // an independent AES-GCM with the hand-built nonce and AAD opens the Data
    let cipher = Aes128Gcm::new_from_slice(&KEY).unwrap();
    let nonce = [
        0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x18, 0x18, 0x18,
    ];
    assert_eq!(key.nonce(0x0001_0203), nonce);
    let plain = cipher
        .decrypt(
            &Nonce::from(nonce),
            Payload {
                msg: &PIPELINE_SEALED_ACK_BYTES[10..],
                aad: &PIPELINE_SEALED_ACK_AAD,
            },
        )
        .unwrap();
    assert_eq!(plain, b"hello, tickwire");

    // and the crate's decoder opens it with the same key
    let p = Packet::parse(&PIPELINE_SEALED_ACK_BYTES).unwrap();
    assert_eq!(packet_number(&p.header), 0x0001_0203);
    let Body::Data {
        fields: parsed_fields,
        data,
    } = p.body
    else {
        panic!("not a data packet")
    };
    assert_eq!(parsed_fields, fields);
    let mut data = data.to_vec();
    let mut decoder = Decoder::new();
    let opened = decoder
        .open(&p.header, &parsed_fields, &mut data, Some(&key))
        .unwrap();
    assert_eq!(opened.plaintext, b"hello, tickwire");
    assert_eq!(opened.packet_number, 0x0001_0203);
}

/// A sealed DEFAULT with empty plaintext: the Data is the tag alone. Packet number 0xDEADBEEF.
static PIPELINE_SEALED_EMPTY_BYTES: [u8; 22] = [
    0x00, // Version 0 | Type 0 (DEFAULT)
    0x10, // Flags: ENCRYPTED
    0xBE, 0xEF, // Sequence ID 0xBEEF
    0xDE, 0xAD, // Init Vector 0xDEAD
    // Data: the GCM tag of an empty plaintext under KEY, nonce
    // 10 11 12 13 14 15 16 17 C6 B4 A4 F4, AAD 00 10 BE EF DE AD
    0x28, 0x23, 0x97, 0x89, 0xd0, 0xc1, 0x7b, 0xf4, 0x57, 0xd1, 0x53, 0xd5, 0xcb, 0xf7, 0x17, 0xed,
];

#[test]
fn pipeline_sealed_empty() {
    let key = PacketKey::new(&KEY, &SALT);
    let mut encoder = Encoder::new();
    let encoded = encoder
        .encode(
            TypeFields::Default,
            b"",
            SendOptions {
                reliable: false,
                checksum: false,
                compress: true,
            },
            Seal::Sealed {
                key: &key,
                packet_number: 0xDEAD_BEEF,
            },
        )
        .unwrap();
    let datagrams = write_all(&encoded);
    assert_eq!(datagrams, vec![PIPELINE_SEALED_EMPTY_BYTES.to_vec()]);
    let mut aad = [0u8; MAX_AAD];
    let n = associated_data(&encoded.header, &TypeFields::Default, &mut aad);
    assert_eq!(aad[..n], [0x00, 0x10, 0xBE, 0xEF, 0xDE, 0xAD]);

    let p = Packet::parse(&PIPELINE_SEALED_EMPTY_BYTES).unwrap();
    let mut data = p.data().to_vec();
    let mut decoder = Decoder::new();
    let opened = decoder
        .open(&p.header, &TypeFields::Default, &mut data, Some(&key))
        .unwrap();
    assert_eq!(opened.plaintext, b"");
    assert_eq!(opened.packet_number, 0xDEAD_BEEF);
}

/// A sealed, fragmented HEARTBEAT: 2000 octets of plaintext + 16 of tag = 2016 octets, so 3
/// fragments of 988, 988 and 40 octets. Every fragment repeats the header (with its own
/// Fragment ID) and the heartbeat octet; the AAD holds the Fragment Number but not the ID.
#[test]
fn pipeline_sealed_fragmented() {
    let key = PacketKey::new(&KEY, &SALT);
    let plaintext: Vec<u8> = (0..2000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let fields = TypeFields::Heartbeat(Heartbeat::Pong);
    let mut encoder = Encoder::new();
    let encoded = encoder
        .encode(
            fields,
            &plaintext,
            SendOptions::default(),
            Seal::Sealed {
                key: &key,
                packet_number: 0x0102_0304,
            },
        )
        .unwrap();
    assert_eq!(encoded.payload.len(), 2016);
    let datagrams = write_all(&encoded);
    assert_eq!(datagrams.len(), 3);
    for (i, d) in datagrams.iter().enumerate() {
        assert_eq!(
            d[..9],
            [
                0x03,    // Version 0 | Type 3 (HEARTBEAT)
                0x18,    // Flags: ENCRYPTED | FRAG
                0x03,    // Sequence ID (high octet): low 16 bits of the packet number
                0x04,    // Sequence ID (low octet)
                i as u8, // Fragment ID
                0x03,    // Fragment Number 3
                0x01,    // Init Vector (high octet): high 16 bits of the packet number
                0x02,    // Init Vector (low octet)
                0x01,    // Heartbeat: PONG
            ],
            "fragment {i}"
        );
        assert_eq!(d.len() - 9, [988, 988, 40][i], "fragment {i} Data length");
    }

    // the AAD by hand: octet 0, Flags, Sequence ID, Fragment Number, Init Vector, Heartbeat
    let aad_by_hand = [0x03, 0x18, 0x03, 0x04, 0x03, 0x01, 0x02, 0x01];
    let mut aad = [0u8; MAX_AAD];
    for id in 0..3 {
        let mut h = encoded.header;
        h.fragment = Some(FragmentFields { id, count: 3 });
        let n = associated_data(&h, &fields, &mut aad);
        assert_eq!(aad[..n], aad_by_hand, "AAD independent of the Fragment ID");
    }

    // the concatenated Data opens with an independent AES-GCM
    let sealed: Vec<u8> = datagrams.iter().flat_map(|d| d[9..].to_vec()).collect();
    let cipher = Aes128Gcm::new_from_slice(&KEY).unwrap();
    let nonce = [
        0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x19, 0x1B, 0x19, 0x1F,
    ];
    assert_eq!(key.nonce(0x0102_0304), nonce);
    let plain = cipher
        .decrypt(
            &Nonce::from(nonce),
            Payload {
                msg: &sealed,
                aad: &aad_by_hand,
            },
        )
        .unwrap();
    assert_eq!(plain, plaintext);

    // and through the crate's reassembler and decoder, in reverse order
    let mut reassembler = Reassembler::new(ReassemblyConfig::default());
    let now = std::time::Instant::now();
    let mut decoder = Decoder::new();
    let mut delivered = None;
    for d in datagrams.iter().rev() {
        let p = Packet::parse(d).unwrap();
        match reassembler.insert(now, &p).unwrap() {
            Reassembly::Incomplete => {}
            Reassembly::Complete {
                header,
                fields,
                payload,
            } => {
                let opened = decoder.open(&header, &fields, payload, Some(&key)).unwrap();
                assert_eq!(opened.packet_number, 0x0102_0304);
                delivered = Some(opened.plaintext.to_vec());
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(delivered.as_deref(), Some(&plaintext[..]));
}
