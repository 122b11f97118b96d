//! Test vectors of `docs/PROTOCOL.md`, computed from fixed inputs.
//!
//! Every vector is computed twice where it can be: once through the crate (the handshake
//! helpers, `derive_session_keys`, `PacketKey`, a real `Connection`) and once from the
//! primitives (`sha2`, `hkdf`, `hmac`, `aes-gcm`, `p256`) following the document's words. Both
//! must give the hex constants below, and `docs/PROTOCOL.md` must quote every constant
//! verbatim (its "Test vectors" section), so that the document and the code cannot drift.
//!
//! `cargo test --test protocol_vectors -- --nocapture` prints the vectors in the document's
//! format.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes128Gcm, Nonce};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use sha2::{Digest, Sha256};

use tickwire::connection::{Connection, Role, Scratch};
use tickwire::crypto::{
    derive_session_keys, transcript_hash, EphemeralKey, ServerIdentity, ServerKey, SessionKeys,
};
use tickwire::endpoint::handshake;
use tickwire::pipeline::seal::{associated_data, MAX_AAD};
use tickwire::pipeline::{encode_into, fragment, PacketKey, Seal, SendOptions};
use tickwire::token::{ConnectToken, TokenSigner};
use tickwire::wire::frame::{put_message, Frame, Frames};
use tickwire::wire::{AckFields, Body, ErrorCode, Packet, TypeFields};
use tickwire::{
    ChannelConfig, ChannelId, ClientConfig, ClientId, ConnectionConfig, DeliveryMode, Event,
    Server, ServerConfig,
};

// ---------------------------------------------------------------------------------------------
// Fixed inputs
// ---------------------------------------------------------------------------------------------

/// The client's ephemeral secret scalar.
const CLIENT_EPHEMERAL_SECRET: [u8; 32] = [0x11; 32];
/// The server's ephemeral secret scalar.
const SERVER_EPHEMERAL_SECRET: [u8; 32] = [0x22; 32];
/// The server's long-term (identity) secret scalar.
const SERVER_IDENTITY_SECRET: [u8; 32] = [0x33; 32];
/// The token field of the client hello (opaque: the servers here have no token authority).
const TOKEN: &[u8] = b"tickwire test token";
/// The id the server gives the client (the first client of a server gets 1).
const CLIENT_ID: u64 = 1;
/// The backend's token-signing secret scalar.
const TOKEN_SIGNER_SECRET: [u8; 32] = [0x44; 32];
/// The connect token's expiry (Unix seconds) and server.
const TOKEN_EXPIRES: u64 = 1_900_000_000;
const TOKEN_SERVER: &str = "127.0.0.1:4000";
/// The client's ephemeral secret on the handshake that resumes the session.
const RESUME_EPHEMERAL_SECRET: [u8; 32] = [0x55; 32];
/// The packet number of the hand-built data packet (Init Vector 0x0001, Sequence ID 0x0203).
const DATA_PN: u32 = 0x0001_0203;
/// Its ACK fields.
const DATA_ACK_ID: u16 = 0x0042;
const DATA_ACK_BITS: u16 = 0xA000;
/// Its message (a MESSAGE frame on channel 3).
const DATA_MESSAGE: &[u8] = b"hello, tickwire";
/// The message of the packet a real `Connection` writes (MESSAGE_SEQ on channel 3).
const CONN_MESSAGE: &[u8] = b"hello";
/// The last 9 octets of the large message of the MESSAGE_PART vector.
const PART_TAIL: &[u8] = b"tickwire!";

/// The message of the fragmented vector: 980 octets, octet i = i mod 256.
fn frag_message() -> Vec<u8> {
    (0..980u32).map(|i| i as u8).collect()
}

// ---------------------------------------------------------------------------------------------
// Expected vectors (the same hex is quoted in docs/PROTOCOL.md)
// ---------------------------------------------------------------------------------------------

const EXPECTED: &[(&str, &str)] = &[
    ("client_ephemeral_public", "020217e617f0b6443928278f96999e69a23a4f2c152bdf6d6cdf66e5b80282d4ed"),
    ("server_ephemeral_public", "03d65a93977caa3d1b081852ff57a79e465f1660577304baead505dd3a48589cf3"),
    ("server_identity_public", "0351a7580833898ea1b183cbd7350a4099078c6ef1c1e18e970cd7683035f25e7d"),
    ("signature", "9f743cc49b151db8b8acc83b3783a7d0631fced06e7382887e9daca77693f005d610f601cf3477c524d2a3938ebbc9f5fee470af925f303acc2eb1e55becd971"),
    ("client_auth", "020000000021020217e617f0b6443928278f96999e69a23a4f2c152bdf6d6cdf66e5b80282d4ed007700137469636b77697265207465737420746f6b656e0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"),
    ("server_auth", "02000000002103d65a93977caa3d1b081852ff57a79e465f1660577304baead505dd3a48589cf300610351a7580833898ea1b183cbd7350a4099078c6ef1c1e18e970cd7683035f25e7d9f743cc49b151db8b8acc83b3783a7d0631fced06e7382887e9daca77693f005d610f601cf3477c524d2a3938ebbc9f5fee470af925f303acc2eb1e55becd971"),
    ("transcript_hash", "276145816e72aedd4d563d731ecb113d07750a117a41ff30fced3c17a0f26aba"),
    ("shared_secret", "ccfc261f58193c98ca4ad4a53bbac6f0ee29bc4d48438090446908622ca79af6"),
    ("prk", "44ac3825ed1d36efe8e4fd4cf09d16f8dd0e0a99d0846036bfc169d00aeac3dd"),
    ("c2s_key", "4aa2f346633e930f70dfadbea59fa309"),
    ("c2s_salt", "9eb2eec66bfa80b4bfb143a9"),
    ("s2c_key", "136bea4bc3dc12e6bff89b8c13bad8fe"),
    ("s2c_salt", "9252da779b185b11d704b06d"),
    ("client_finished_key", "c693e14e8664177559179df78f0bb0716f58eaa00d84ec94496cc543c476dfe6"),
    ("server_finished_key", "0f94d9a40355c9b12104a08c11b3a857332e8ab8e271c4cbde57f1b25a08617f"),
    ("resumption_secret", "d0f8f8de321425a0884044cd05a69c146321dd3945831d1fd58b9e7787745dc1"),
    ("client_finished_mac", "27ac87ebf9b71dda5bd0d82c4fa6efaad3e6ba9b287a8c9b222fb9d9b6b15bf7"),
    ("server_finished_mac", "d44829168135772ef01dccf488044349c85c2880580deeea23435c2b00188ce7"),
    ("client_finished_datagram", "011000000000000000003f66f22f3f5f8d52256f6c2da7d892a316083aac5c1d877559243c46e48959bcfd1122d2206b97684d22dc3d874fc1c0"),
    ("server_finished_datagram", "011000000000000000007faef9f16248c6bf62a8a2e05ad42cf2ce7905723d42cbc452ff64f99b88daea0e7a9f607553dfbbc29704202a8de4dfc9437bf3975ed3be"),
    ("data_plaintext", "01030f68656c6c6f2c207469636b77697265"),
    ("data_nonce", "9eb2eec66bfa80b4bfb041aa"),
    ("data_aad", "0190020300010042a000"),
    ("data_datagram", "0190020300010042a000346ecf118dce81c4100b7273eff20c3c543bb55c922aa60686d8fc586bdf00ee6ea3"),
    ("conn_data_datagram", "01900001000000000000b233fc8ae069a27554490374f49fd8392ae2ada152c6501849d3"),
    ("frag_aad", "0198000102000000000000"),
    ("frag_last_datagram", "019800010102000000000000933497978bbf14d40e298a11"),
    ("fragment_ack_plaintext", "03000000010280"),
    ("fragment_ack_datagram", "01100001000000000000667fdfa9d083135623dbf69de05021dc4fb7afdbfa60ed"),
    ("error_1_1_datagram", "04000000117365727665722066756c6c"),
    ("connect_token", "01000000000000000100000000713fb30001047f0000010fa06ba698e6042b0a01985276bc8b677fe4fd91c6a479d79957398f8dcfe7b10b39671fa6f91d2f7be7097a0e5b6755b6ca0a348dca108b1b190db680d2c7d37cbf"),
    ("resume_ephemeral_public", "0257e977f6db7e33c3fe7acf2842ed987009caf56d458682fca447b7d3d762ab34"),
    ("resume_ticket", "0000000000000001ed9acd68706bcc69262f105eb33504581c233c72ed34838febe53dc605c5bd58"),
    ("channels_digest", "18925dac"),
    ("channels_digest_default", "0b85f1a8"),
    ("message_part_frame", "040400010003d80d0003d804097469636b7769726521"),
    ("client_auth_with_channels", "020000000021020217e617f0b6443928278f96999e69a23a4f2c152bdf6d6cdf66e5b80282d4ed007700137469636b77697265207465737420746f6b656e00000418925dac00000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"),
    ("retry_cookie", "000000074bedc987f5ea5188e21e2879b770b39a"),
    ("retry", "0200000000000014000000074bedc987f5ea5188e21e2879b770b39a"),
    ("client_auth_with_cookie", "020000000021020217e617f0b6443928278f96999e69a23a4f2c152bdf6d6cdf66e5b80282d4ed007700137469636b77697265207465737420746f6b656e0014000000074bedc987f5ea5188e21e2879b770b39a00000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"),
    ("resume_client_auth", "0200000000210257e977f6db7e33c3fe7acf2842ed987009caf56d458682fca447b7d3d762ab3400770000280000000000000001ed9acd68706bcc69262f105eb33504581c233c72ed34838febe53dc605c5bd5800000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"),
];

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// HKDF-Expand of the document's key schedule, from the primitives.
fn expand<const N: usize>(hk: &Hkdf<Sha256>, label: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    hk.expand(label, &mut out).unwrap();
    out
}

fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap();
    mac.update(msg);
    mac.finalize().into_bytes().into()
}

/// AES-128-GCM as the document describes it: nonce = salt XOR (0^8 || pn as u32 BE),
/// output = ciphertext || 16-octet tag.
fn gcm_seal(key: &[u8; 16], salt: &[u8; 12], pn: u32, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let nonce = doc_nonce(salt, pn);
    let cipher = Aes128Gcm::new(key.into());
    let mut buf = plaintext.to_vec();
    let tag = cipher
        .encrypt_in_place_detached(&Nonce::from(nonce), aad, &mut buf)
        .unwrap();
    buf.extend_from_slice(&tag);
    buf
}

fn doc_nonce(salt: &[u8; 12], pn: u32) -> [u8; 12] {
    let mut nonce = *salt;
    let pn = pn.to_be_bytes();
    for i in 0..4 {
        nonce[8 + i] ^= pn[i];
    }
    nonce
}

/// The associated data as the document lays it out, written by hand: octet 0, Flags,
/// Sequence ID, [Fragment Number], Init Vector, then the type-specific fields.
fn doc_aad(datagram: &[u8], fragmented: bool, type_fields_len: usize) -> Vec<u8> {
    let mut aad = datagram[..4].to_vec();
    let mut at = 4;
    if fragmented {
        aad.push(datagram[5]);
        at += 2;
    }
    aad.extend_from_slice(&datagram[at..at + 2]); // Init Vector
    at += 2;
    aad.extend_from_slice(&datagram[at..at + type_fields_len]);
    aad
}

/// Everything the handshake of the fixed inputs gives, computed through the crate.
struct Handshake {
    client_eph: EphemeralKey,
    server_eph: EphemeralKey,
    identity: ServerIdentity,
    client_auth: Vec<u8>,
    server_auth: Vec<u8>,
    transcript: [u8; 32],
    shared: [u8; 32],
    keys: SessionKeys,
    client_finished: Vec<u8>,
    server_finished: Vec<u8>,
}

fn handshake_of_fixed_inputs() -> Handshake {
    let client_eph = EphemeralKey::from_secret_bytes(&CLIENT_EPHEMERAL_SECRET).unwrap();
    let server_eph = EphemeralKey::from_secret_bytes(&SERVER_EPHEMERAL_SECRET).unwrap();
    let identity = ServerIdentity::from_secret_bytes(&SERVER_IDENTITY_SECRET).unwrap();
    let client_auth = handshake::client_auth(client_eph.public_bytes(), TOKEN, None);
    let cert = identity.certificate(client_eph.public_bytes(), server_eph.public_bytes());
    let server_auth = handshake::auth_datagram(server_eph.public_bytes(), &cert);
    let transcript = transcript_hash(&client_auth, &server_auth);
    let shared = client_eph.shared_secret(server_eph.public_bytes()).unwrap();
    assert_eq!(
        server_eph.shared_secret(client_eph.public_bytes()).unwrap(),
        shared,
        "both sides agree on the ECDH secret"
    );
    let keys = derive_session_keys(&shared, &transcript);
    let client_finished =
        handshake::finished_datagram(&keys.client_to_server, &keys.client_finished);
    let mut data = keys.server_finished.to_vec();
    data.extend_from_slice(&CLIENT_ID.to_be_bytes());
    let server_finished = handshake::finished_datagram(&keys.server_to_client, &data);
    Handshake {
        client_eph,
        server_eph,
        identity,
        client_auth,
        server_auth,
        transcript,
        shared,
        keys,
        client_finished,
        server_finished,
    }
}

/// The hand-built data packet: sealed RELIABLE ACK, packet number `DATA_PN`, one MESSAGE frame
/// on channel 3. Returns (plaintext, datagram).
fn data_packet(key: &PacketKey) -> (Vec<u8>, Vec<u8>) {
    let mut plain = Vec::new();
    put_message(&mut plain, 3, None, DATA_MESSAGE);
    let fields = TypeFields::Ack(AckFields {
        ack_id: DATA_ACK_ID,
        ack_bits: DATA_ACK_BITS,
    });
    let mut payload = Vec::new();
    let header = encode_into(
        &mut Vec::new(),
        fields,
        &plain,
        SendOptions {
            reliable: true,
            ..SendOptions::default()
        },
        Seal::Sealed {
            key,
            packet_number: DATA_PN,
        },
        &mut payload,
    )
    .unwrap();
    let mut out = vec![0u8; 1200];
    let n = fragment::write_datagram(&header, &fields, &payload, 0, &mut out).unwrap();
    out.truncate(n);
    (plain, out)
}

fn client_connection(h: &Handshake, now: Instant, config: ConnectionConfig) -> Connection {
    Connection::new(
        now,
        ClientId(CLIENT_ID),
        addr(5000),
        Role::Client,
        Arc::new(config),
        h.keys.client_to_server.clone(),
        h.keys.server_to_client.clone(),
        Some(h.client_finished.clone()),
        None,
    )
}

fn server_connection(h: &Handshake, now: Instant, config: ConnectionConfig) -> Connection {
    Connection::new(
        now,
        ClientId(CLIENT_ID),
        addr(4000),
        Role::Server,
        Arc::new(config),
        h.keys.server_to_client.clone(),
        h.keys.client_to_server.clone(),
        Some(h.server_finished.clone()),
        None,
    )
}

/// Every vector, computed through the crate, by name.
fn compute() -> BTreeMap<&'static str, Vec<u8>> {
    let h = handshake_of_fixed_inputs();
    let mut v = BTreeMap::new();
    v.insert(
        "client_ephemeral_public",
        h.client_eph.public_bytes().to_vec(),
    );
    v.insert(
        "server_ephemeral_public",
        h.server_eph.public_bytes().to_vec(),
    );
    v.insert(
        "server_identity_public",
        h.identity.public_key().as_bytes().to_vec(),
    );
    // The certificate is the last 97 octets of the server's AUTH; the signature its last 64.
    v.insert(
        "signature",
        h.server_auth[h.server_auth.len() - 64..].to_vec(),
    );
    v.insert("client_auth", h.client_auth.clone());
    v.insert("server_auth", h.server_auth.clone());
    v.insert("transcript_hash", h.transcript.to_vec());
    v.insert("shared_secret", h.shared.to_vec());

    // The key schedule from the primitives, with the document's labels and lengths.
    let (prk, hk) = Hkdf::<Sha256>::extract(Some(&h.transcript), &h.shared);
    v.insert("prk", prk.to_vec());
    let c2s_key: [u8; 16] = expand(&hk, b"tickwire c2s key");
    let c2s_salt: [u8; 12] = expand(&hk, b"tickwire c2s salt");
    let s2c_key: [u8; 16] = expand(&hk, b"tickwire s2c key");
    let s2c_salt: [u8; 12] = expand(&hk, b"tickwire s2c salt");
    let c_fin_key: [u8; 32] = expand(&hk, b"tickwire client finished");
    let s_fin_key: [u8; 32] = expand(&hk, b"tickwire server finished");
    let resumption: [u8; 32] = expand(&hk, b"tickwire resumption");
    v.insert("c2s_key", c2s_key.to_vec());
    v.insert("c2s_salt", c2s_salt.to_vec());
    v.insert("s2c_key", s2c_key.to_vec());
    v.insert("s2c_salt", s2c_salt.to_vec());
    v.insert("client_finished_key", c_fin_key.to_vec());
    v.insert("server_finished_key", s_fin_key.to_vec());
    v.insert("resumption_secret", resumption.to_vec());
    assert_eq!(resumption, h.keys.resumption_secret);

    // Finished MACs: the crate's against HMAC-SHA256(finished key, transcript hash).
    assert_eq!(
        h.keys.client_finished,
        hmac_sha256(&c_fin_key, &h.transcript)
    );
    assert_eq!(
        h.keys.server_finished,
        hmac_sha256(&s_fin_key, &h.transcript)
    );
    v.insert("client_finished_mac", h.keys.client_finished.to_vec());
    v.insert("server_finished_mac", h.keys.server_finished.to_vec());
    v.insert("client_finished_datagram", h.client_finished.clone());
    v.insert("server_finished_datagram", h.server_finished.clone());

    // The keys and salts the crate derived are the ones computed here: sealing with a
    // `PacketKey` built from them gives what the `SessionKeys` give.
    for (ours, theirs) in [
        (
            PacketKey::new(&c2s_key, &c2s_salt),
            &h.keys.client_to_server,
        ),
        (
            PacketKey::new(&s2c_key, &s2c_salt),
            &h.keys.server_to_client,
        ),
    ] {
        for pn in [0u32, 1, 0x0001_0203, 0xFFFF_FFFF] {
            let mut a = b"cross-check".to_vec();
            let mut b = a.clone();
            ours.seal(pn, b"aad", &mut a);
            theirs.seal(pn, b"aad", &mut b);
            assert_eq!(a, b, "pn {pn}");
        }
    }

    let (plain, datagram) = data_packet(&h.keys.client_to_server);
    v.insert("data_plaintext", plain);
    v.insert("data_nonce", doc_nonce(&c2s_salt, DATA_PN).to_vec());
    v.insert("data_aad", doc_aad(&datagram, false, 4));
    v.insert("data_datagram", datagram);

    // The first message a real client connection sends on channel 3 (reliable-ordered in
    // the default configuration): packet number 1.
    let now = Instant::now();
    let mut conn = client_connection(&h, now, ConnectionConfig::default());
    let mut scratch = Scratch::new(tickwire::wire::MAX_PAYLOAD);
    conn.send(now, ChannelId(3), CONN_MESSAGE, &mut scratch)
        .unwrap();
    let mut buf = [0u8; 1500];
    let (n, to) = conn.poll_transmit(now, &mut scratch, &mut buf).unwrap();
    assert_eq!(to, addr(5000));
    v.insert("conn_data_datagram", buf[..n].to_vec());

    // A fragmented packet and the fragment report it draws: a fresh client connection sends
    // FRAG_MESSAGE on channel 2 (reliable-unordered). Its plaintext is 984 octets, so sealed
    // it is 1,000: two fragments, 988 and 12 octets.
    let mut conn = client_connection(&h, now, ConnectionConfig::default());
    conn.send(now, ChannelId(2), &frag_message(), &mut scratch)
        .unwrap();
    let mut fragments = Vec::new();
    while let Some((n, _)) = conn.poll_transmit(now, &mut scratch, &mut buf) {
        fragments.push(buf[..n].to_vec());
    }
    assert_eq!(fragments.len(), 2, "two fragments and nothing else");
    assert_eq!(fragments[0].len(), 8 + 4 + 988);
    let mut plain = vec![0x01, 0x02, 0x43, 0xd4];
    plain.extend_from_slice(&frag_message());
    assert_eq!(plain.len(), 984);
    let aad = doc_aad(&fragments[0], true, 4);
    let mut by_hand = fragments[0][..12].to_vec();
    by_hand.extend_from_slice(&gcm_seal(&c2s_key, &c2s_salt, 1, &aad, &plain));
    assert_eq!(by_hand.len(), 12 + 1000);
    assert_eq!(
        &by_hand[..1000],
        &fragments[0][..],
        "fragment 0 is the first 988 octets"
    );
    assert_eq!(
        &by_hand[1000..],
        &fragments[1][12..],
        "fragment 1 the last 12"
    );
    assert_eq!(
        doc_aad(&fragments[1], true, 4),
        aad,
        "every fragment has the same AAD"
    );
    let packet = Packet::parse(&fragments[0]).unwrap();
    let (fields, mut crate_aad) = match packet.body {
        Body::Data { fields, .. } => (fields, [0u8; MAX_AAD]),
        Body::Auth(_) => unreachable!(),
    };
    let len = associated_data(&packet.header, &fields, &mut crate_aad);
    assert_eq!(&crate_aad[..len], &aad[..]);
    v.insert("frag_aad", aad);
    v.insert("frag_last_datagram", fragments[1].clone());
    // The server holds fragment 0 only; max(SRTT / 4, 2 ms) later (SRTT is the initial 100
    // ms: 25 ms) it sends an ACK-only packet whose Data is one FRAGMENT_ACK frame. Nothing is
    // owed, so its ACK fields name the largest pn accepted: the client's finished, pn 0.
    let mut server = server_connection(&h, now, ConnectionConfig::default());
    let mut events = VecDeque::new();
    let mut d = fragments[0].clone();
    server.handle_datagram(now, addr(4000), &mut d, &mut scratch, &mut events);
    assert!(server.poll_transmit(now, &mut scratch, &mut buf).is_none());
    let later = now + std::time::Duration::from_millis(25);
    let (n, _) = server.poll_transmit(later, &mut scratch, &mut buf).unwrap();
    let report_datagram = buf[..n].to_vec();
    let mut report = Vec::new();
    tickwire::wire::frame::put_fragment_ack(&mut report, 1, 2, &[0x80]);
    assert_eq!(report, [0x03, 0, 0, 0, 1, 2, 0x80]);
    let mut by_hand = vec![0x01, 0x10, 0x00, 0x01, 0x00, 0x00, 0, 0, 0, 0];
    let aad = doc_aad(&by_hand, false, 4);
    by_hand.extend_from_slice(&gcm_seal(&s2c_key, &s2c_salt, 1, &aad, &report));
    assert_eq!(report_datagram, by_hand);
    v.insert("fragment_ack_plaintext", report);
    v.insert("fragment_ack_datagram", report_datagram);

    v.insert(
        "error_1_1_datagram",
        handshake::error_datagram(ErrorCode::NoSpace, "server full"),
    );

    // A connect token, checked by hand: version 1 | id | expiry | 1 server (IPv4) | r || s.
    let signer = TokenSigner::from_secret_bytes(&TOKEN_SIGNER_SECRET).unwrap();
    let server: SocketAddr = TOKEN_SERVER.parse().unwrap();
    let token = signer.issue(CLIENT_ID, TOKEN_EXPIRES, &[server]);
    let mut body = vec![1u8];
    body.extend_from_slice(&CLIENT_ID.to_be_bytes());
    body.extend_from_slice(&TOKEN_EXPIRES.to_be_bytes());
    body.extend_from_slice(&[1, 4, 127, 0, 0, 1, 0x0f, 0xa0]);
    assert_eq!(&token[..body.len()], &body[..]);
    assert_eq!(token.len(), body.len() + 64);
    let mut msg = b"tickwire v0 token".to_vec();
    msg.extend_from_slice(&body);
    VerifyingKey::from_sec1_bytes(signer.public_key().as_bytes())
        .unwrap()
        .verify(&msg, &Signature::from_slice(&token[body.len()..]).unwrap())
        .unwrap();
    let checked = ConnectToken::verify(&token, &signer.public_key()).unwrap();
    assert_eq!(checked.client_id, CLIENT_ID);
    assert!(checked.names(server));
    v.insert("connect_token", token);

    // Resuming the session on a new handshake: ticket = u64(id) || HMAC-SHA256(resumption
    // secret, "tickwire v0 resume" || new client ephemeral key).
    let resume_eph = EphemeralKey::from_secret_bytes(&RESUME_EPHEMERAL_SECRET).unwrap();
    let ticket = handshake::resume_ticket(
        CLIENT_ID,
        &h.keys.resumption_secret,
        resume_eph.public_bytes(),
    );
    let mut mac_input = b"tickwire v0 resume".to_vec();
    mac_input.extend_from_slice(resume_eph.public_bytes());
    let mut want = CLIENT_ID.to_be_bytes().to_vec();
    want.extend_from_slice(&hmac_sha256(&resumption, &mac_input));
    assert_eq!(ticket.to_vec(), want);
    let auth = handshake::client_auth(resume_eph.public_bytes(), &[], Some(&ticket));
    let hello = handshake::parse_hello(&auth[41..]).unwrap();
    assert_eq!(hello.token, b"");
    assert_eq!(hello.ticket, Some(&ticket));
    v.insert(
        "resume_ephemeral_public",
        resume_eph.public_bytes().to_vec(),
    );
    v.insert("resume_ticket", ticket.to_vec());
    v.insert("resume_client_auth", auth);
    // A stateless retry for the client AUTH above, from 127.0.0.1:5000, issued at second 7
    // of the server's clock, under a retry secret of 32 octets of 66.
    let secret = [0x66u8; 32];
    let cookie = handshake::retry_cookie(&secret, 7, addr(5000), &h.client_auth[6..39]);
    let mut mac_input = b"tickwire v0 retry".to_vec();
    mac_input.extend_from_slice(&7u32.to_be_bytes());
    mac_input.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 1]);
    mac_input.extend_from_slice(&5000u16.to_be_bytes());
    mac_input.extend_from_slice(&h.client_auth[6..39]);
    let mut want = 7u32.to_be_bytes().to_vec();
    want.extend_from_slice(&hmac_sha256(&secret, &mac_input)[..16]);
    assert_eq!(cookie.to_vec(), want);
    let mut retry = vec![0u8; handshake::RETRY_LEN];
    assert_eq!(
        handshake::write_retry(&cookie, &mut retry),
        handshake::RETRY_LEN
    );
    let client_eph = EphemeralKey::from_secret_bytes(&[0x11; 32]).unwrap();
    let auth =
        handshake::client_auth_with_cookie(client_eph.public_bytes(), TOKEN, None, Some(&cookie));
    let hello = handshake::parse_hello(&auth[41..]).unwrap();
    assert_eq!(hello.token, TOKEN);
    assert_eq!(hello.cookie, Some(&cookie));
    // The channel digest of the four channels 0 unreliable, 1 sequenced, 2 reliable-unordered,
    // 3 reliable-ordered (the default before the bulk lane), and the client AUTH carrying it.
    let four: Vec<_> = ConnectionConfig::default().channels[..4].to_vec();
    let digest = handshake::channels_digest(&four);
    let mut input = b"tickwire v0 channels".to_vec();
    input.extend_from_slice(&[0, 4, 0, 1, 2, 3]);
    let want: [u8; 32] = Sha256::digest(&input).into();
    assert_eq!(digest, want[..4]);
    let channels_auth =
        handshake::client_auth_full(client_eph.public_bytes(), TOKEN, None, None, Some(&digest));
    assert_eq!(
        handshake::parse_hello(&channels_auth[41..])
            .unwrap()
            .channels,
        Some(&digest)
    );
    v.insert("channels_digest", digest.to_vec());
    // The default configuration's: those four and the bulk lane (reliable-ordered; lane
    // priorities are not part of the digest).
    let default_digest = handshake::channels_digest(&ConnectionConfig::default().channels);
    let mut input = b"tickwire v0 channels".to_vec();
    input.extend_from_slice(&[0, 5, 0, 1, 2, 3, 3]);
    let want: [u8; 32] = Sha256::digest(&input).into();
    assert_eq!(default_digest, want[..4]);
    v.insert("channels_digest_default", default_digest.to_vec());
    // The last part of a message of MAX_MESSAGE_SIZE + 1 octets on channel 4 (the bulk lane),
    // seq 1 (the first part took seq 0): total 251,917, offset 251,908, 9 octets.
    let mut part = Vec::new();
    tickwire::wire::frame::put_part(&mut part, 4, 1, 251_917, 251_908, PART_TAIL);
    let mut want = vec![0x04, 0x04, 0x00, 0x01];
    want.extend_from_slice(&251_917u32.to_be_bytes());
    want.extend_from_slice(&251_908u32.to_be_bytes());
    want.push(PART_TAIL.len() as u8);
    want.extend_from_slice(PART_TAIL);
    assert_eq!(part, want);
    v.insert("message_part_frame", part);
    v.insert("client_auth_with_channels", channels_auth);
    v.insert("retry_cookie", cookie.to_vec());
    v.insert("retry", retry);
    v.insert("client_auth_with_cookie", auth);
    v
}

/// The vectors quoted in the document: a line `name:` followed by lines of hex digits, up to
/// the next line that is not hex.
fn document_vectors() -> BTreeMap<String, String> {
    let doc = include_str!("../docs/PROTOCOL.md");
    let mut out = BTreeMap::new();
    let mut lines = doc.lines().peekable();
    while let Some(line) = lines.next() {
        let t = line.trim();
        let Some(name) = t.strip_suffix(':') else {
            continue;
        };
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            continue;
        }
        let mut hex = String::new();
        while let Some(next) = lines.peek() {
            let n = next.trim();
            if n.is_empty() || !n.chars().all(|c| c.is_ascii_hexdigit() || c == ' ') {
                break;
            }
            hex.extend(n.chars().filter(|c| *c != ' '));
            lines.next();
        }
        if !hex.is_empty() {
            out.insert(name.to_string(), hex);
        }
    }
    out
}

/// Formats a vector as the document quotes it: 32 octets a line, in groups of 4.
fn doc_format(name: &str, bytes: &[u8]) -> String {
    let mut s = format!("{name}:\n");
    for line in bytes.chunks(32) {
        let groups: Vec<String> = line.chunks(4).map(hex::encode).collect();
        s.push_str("  ");
        s.push_str(&groups.join(" "));
        s.push('\n');
    }
    s
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn vectors_match_constants_and_document() {
    let computed = compute();
    let doc = document_vectors();
    let mut printed = String::new();
    for (name, bytes) in &computed {
        printed.push_str(&doc_format(name, bytes));
        printed.push('\n');
    }
    println!("{printed}");
    let mut failures = Vec::new();
    for (name, want) in EXPECTED {
        let got = hex::encode(&computed[name]);
        if got != *want {
            failures.push(format!("{name}: computed {got}, constant {want}"));
        }
        match doc.get(*name) {
            Some(d) if d == want => {}
            Some(d) => failures.push(format!("{name}: document has {d}, constant {want}")),
            None => failures.push(format!("{name}: missing from docs/PROTOCOL.md")),
        }
    }
    assert_eq!(
        computed.len(),
        EXPECTED.len(),
        "every vector has a constant"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn layouts_follow_the_document() {
    let h = handshake_of_fixed_inputs();
    // Client AUTH: header 02 00 0000, Reserved 0, E = 33, key, C, hello padded to 160.
    let c = &h.client_auth;
    assert_eq!(c.len(), 160);
    assert_eq!(&c[..6], &[0x02, 0x00, 0x00, 0x00, 0x00, 33]);
    assert_eq!(&c[6..39], h.client_eph.public_bytes());
    assert_eq!(u16::from_be_bytes([c[39], c[40]]), 160 - 41);
    assert_eq!(u16::from_be_bytes([c[41], c[42]]) as usize, TOKEN.len());
    assert_eq!(&c[43..43 + TOKEN.len()], TOKEN);
    assert!(c[43 + TOKEN.len()..].iter().all(|&b| b == 0));

    // Server AUTH: key, C = 97, certificate = identity key || r || s.
    let s = &h.server_auth;
    assert_eq!(s.len(), 138);
    assert_eq!(&s[..6], &[0x02, 0x00, 0x00, 0x00, 0x00, 33]);
    assert_eq!(&s[6..39], h.server_eph.public_bytes());
    assert_eq!(u16::from_be_bytes([s[39], s[40]]), 97);
    assert_eq!(&s[41..74], h.identity.public_key().as_bytes());
    let mut msg = b"tickwire v0 certificate".to_vec();
    msg.extend_from_slice(h.client_eph.public_bytes());
    msg.extend_from_slice(h.server_eph.public_bytes());
    let vk = VerifyingKey::from_sec1_bytes(&s[41..74]).unwrap();
    let sig = Signature::from_slice(&s[74..138]).unwrap();
    vk.verify(&msg, &sig)
        .expect("ECDSA P-256 SHA-256 over the document's input");
    ServerKey::from_certificate(&s[41..], h.client_eph.public_bytes(), &s[6..39]).unwrap();

    // Transcript hash from the primitives.
    let mut sha = Sha256::new();
    sha.update(b"tickwire v0 transcript");
    sha.update(c);
    sha.update(s);
    assert_eq!(<[u8; 32]>::from(sha.finalize()), h.transcript);

    // ECDH from the primitives: the x-coordinate of secret * peer point.
    let secret = p256::SecretKey::from_slice(&CLIENT_EPHEMERAL_SECRET).unwrap();
    let peer = p256::PublicKey::from_sec1_bytes(h.server_eph.public_bytes()).unwrap();
    let shared = p256::ecdh::diffie_hellman(secret.to_nonzero_scalar(), peer.as_affine());
    assert_eq!(&shared.raw_secret_bytes()[..], &h.shared[..]);

    // Finished datagrams from the primitives: ACK, ENCRYPTED, pn 0, ACK ID 0, bits 0.
    let (_, hk) = Hkdf::<Sha256>::extract(Some(&h.transcript), &h.shared);
    let c2s_key: [u8; 16] = expand(&hk, b"tickwire c2s key");
    let c2s_salt: [u8; 12] = expand(&hk, b"tickwire c2s salt");
    let s2c_key: [u8; 16] = expand(&hk, b"tickwire s2c key");
    let s2c_salt: [u8; 12] = expand(&hk, b"tickwire s2c salt");
    let head = [0x01, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00];
    let mut want = head.to_vec();
    want.extend(gcm_seal(
        &c2s_key,
        &c2s_salt,
        0,
        &[0x01, 0x10, 0, 0, 0, 0, 0, 0, 0, 0],
        &h.keys.client_finished,
    ));
    assert_eq!(want.len(), 58);
    assert_eq!(h.client_finished, want);
    let mut data = h.keys.server_finished.to_vec();
    data.extend_from_slice(&CLIENT_ID.to_be_bytes());
    let mut want = head.to_vec();
    want.extend(gcm_seal(
        &s2c_key,
        &s2c_salt,
        0,
        &[0x01, 0x10, 0, 0, 0, 0, 0, 0, 0, 0],
        &data,
    ));
    assert_eq!(want.len(), 66);
    assert_eq!(h.server_finished, want);

    // The data packet from the primitives.
    let (plain, datagram) = data_packet(&h.keys.client_to_server);
    let mut frame = vec![0x01, 0x03, DATA_MESSAGE.len() as u8];
    frame.extend_from_slice(DATA_MESSAGE);
    assert_eq!(plain, frame);
    let head = [0x01, 0x90, 0x02, 0x03, 0x00, 0x01, 0x00, 0x42, 0xA0, 0x00];
    let aad = [0x01, 0x90, 0x02, 0x03, 0x00, 0x01, 0x00, 0x42, 0xA0, 0x00];
    let mut want = head.to_vec();
    want.extend(gcm_seal(&c2s_key, &c2s_salt, DATA_PN, &aad, &plain));
    assert_eq!(datagram, want);
    // And the crate's own associated data is the same ten octets.
    let packet = Packet::parse(&datagram).unwrap();
    let Body::Data { fields, .. } = packet.body else {
        panic!("data packet")
    };
    let mut crate_aad = [0u8; MAX_AAD];
    let n = associated_data(&packet.header, &fields, &mut crate_aad);
    assert_eq!(&crate_aad[..n], &aad);
}

#[test]
fn data_packets_open_in_a_real_connection() {
    let h = handshake_of_fixed_inputs();
    let now = Instant::now();
    let computed = compute();
    let mut scratch = Scratch::new(tickwire::wire::MAX_PAYLOAD);

    // The real connection's packet: MESSAGE_SEQ, seq 0, on channel 3 (reliable-ordered).
    let mut server = server_connection(&h, now, ConnectionConfig::default());
    let mut d = computed["conn_data_datagram"].clone();
    assert_eq!(&d[..10], &[0x01, 0x90, 0x00, 0x01, 0x00, 0x00, 0, 0, 0, 0]);
    let mut plain = d[10..].to_vec();
    let n = h
        .keys
        .client_to_server
        .open(1, &d[..10], &mut plain)
        .unwrap();
    let frames: Vec<_> = Frames::new(&plain[..n]).collect::<Result<_, _>>().unwrap();
    assert_eq!(
        frames,
        vec![Frame::Message {
            channel: 3,
            seq: Some(0),
            data: CONN_MESSAGE
        }]
    );
    let mut events = VecDeque::new();
    server.handle_datagram(now, addr(4000), &mut d, &mut scratch, &mut events);
    assert_eq!(
        events.pop_front(),
        Some(Event::Message {
            client: ClientId(CLIENT_ID),
            channel: ChannelId(3),
            data: CONN_MESSAGE.to_vec()
        })
    );
    // It was RELIABLE: the server acknowledges it with a sealed ACK naming Sequence ID 1.
    let mut buf = [0u8; 1500];
    let (n, to) = server.poll_transmit(now, &mut scratch, &mut buf).unwrap();
    assert_eq!(to, addr(4000));
    let ack = Packet::parse(&buf[..n]).unwrap();
    assert_eq!(&buf[..2], &[0x01, 0x10]);
    assert_eq!(ack.header.init_vector, Some(0));
    assert_eq!(
        ack.header.sequence, 1,
        "the server's first packet number is 1"
    );
    assert_eq!(
        ack.body,
        Body::Data {
            fields: TypeFields::Ack(AckFields {
                ack_id: 1,
                ack_bits: 0x8000
            }),
            data: &buf[10..n]
        }
    );
    assert_eq!(n, 10 + 16, "an ACK with no frames carries only the tag");

    // The hand-built packet: MESSAGE on channel 3, which a peer accepts when its channel 3 is
    // unsequenced (here reliable-unordered).
    let mut config = ConnectionConfig::default();
    config.channels[3] = ChannelConfig::new(DeliveryMode::ReliableUnordered);
    let mut server = server_connection(&h, now, config);
    let mut events = VecDeque::new();
    let mut d = computed["data_datagram"].clone();
    server.handle_datagram(now, addr(4000), &mut d, &mut scratch, &mut events);
    assert_eq!(
        events.pop_front(),
        Some(Event::Message {
            client: ClientId(CLIENT_ID),
            channel: ChannelId(3),
            data: DATA_MESSAGE.to_vec()
        })
    );
    // A duplicate is not delivered again.
    let mut d = computed["data_datagram"].clone();
    server.handle_datagram(now, addr(4000), &mut d, &mut scratch, &mut events);
    assert!(events.is_empty());
}

/// The real `Server`, given the document's client AUTH and client finished, answers as the
/// document says (its ephemeral key is random, so its bytes are checked by structure).
#[test]
fn real_server_follows_the_document() {
    let identity = ServerIdentity::from_secret_bytes(&SERVER_IDENTITY_SECRET).unwrap();
    let mut server = Server::new(ServerConfig::new(identity.clone())).unwrap();
    let client_eph = EphemeralKey::from_secret_bytes(&CLIENT_EPHEMERAL_SECRET).unwrap();
    let from = addr(7000);
    let now = Instant::now();
    let mut buf = [0u8; 1500];

    let client_auth = handshake::client_auth(client_eph.public_bytes(), TOKEN, None);
    server.handle_datagram(now, from, &mut client_auth.clone());
    let t = server.poll_transmit(now, &mut buf).unwrap();
    let server_auth = buf[..t.len].to_vec();
    assert_eq!(server_auth.len(), 138);
    assert_eq!(&server_auth[..6], &[0x02, 0, 0, 0, 0, 33]);
    assert_eq!(&server_auth[39..41], &[0, 97]);
    let server_eph = &server_auth[6..39];
    ServerKey::from_certificate(&server_auth[41..], client_eph.public_bytes(), server_eph).unwrap();
    assert!(server.poll_transmit(now, &mut buf).is_none());

    // A resent AUTH gets the same answer.
    server.handle_datagram(now, from, &mut client_auth.clone());
    let t = server.poll_transmit(now, &mut buf).unwrap();
    assert_eq!(&buf[..t.len], &server_auth[..]);

    let shared = client_eph.shared_secret(server_eph).unwrap();
    let transcript = transcript_hash(&client_auth, &server_auth);
    let keys = derive_session_keys(&shared, &transcript);
    let mut finished = handshake::finished_datagram(&keys.client_to_server, &keys.client_finished);
    server.handle_datagram(now, from, &mut finished);
    let t = server.poll_transmit(now, &mut buf).unwrap();
    let reply = buf[..t.len].to_vec();
    assert_eq!(reply.len(), 66);
    assert_eq!(&reply[..10], &[0x01, 0x10, 0, 0, 0, 0, 0, 0, 0, 0]);
    let mut sealed = reply[10..].to_vec();
    let n = keys
        .server_to_client
        .open(0, &reply[..10], &mut sealed)
        .unwrap();
    assert_eq!(&sealed[..32], &keys.server_finished);
    assert_eq!(&sealed[32..n], &1u64.to_be_bytes());
    assert_eq!(
        server.poll_event(),
        Some(Event::Connected {
            client: ClientId(1)
        })
    );

    // The client finished again (its copy of our finished was lost): the same reply.
    server.handle_datagram(now, from, &mut finished.clone());
    let t = server.poll_transmit(now, &mut buf).unwrap();
    assert_eq!(&buf[..t.len], &reply[..]);
}

/// The real `Client`, answered by a server built from the document, connects.
#[test]
fn real_client_follows_the_document() {
    let identity = ServerIdentity::from_secret_bytes(&SERVER_IDENTITY_SECRET).unwrap();
    let server_eph = EphemeralKey::from_secret_bytes(&SERVER_EPHEMERAL_SECRET).unwrap();
    let server_addr = addr(8000);
    let now = Instant::now();
    let mut client = tickwire::Client::connect_with_token(
        ClientConfig::new(identity.public_key()),
        server_addr,
        now,
        TOKEN,
    )
    .unwrap();
    let mut buf = [0u8; 1500];
    let t = client.poll_transmit(now, &mut buf).unwrap();
    let client_auth = buf[..t.len].to_vec();
    assert_eq!(client_auth.len(), 160);
    let client_eph = &client_auth[6..39];
    assert_eq!(&client_auth[41..43], &(TOKEN.len() as u16).to_be_bytes());

    let cert = identity.certificate(client_eph, server_eph.public_bytes());
    let mut server_auth = handshake::auth_datagram(server_eph.public_bytes(), &cert);
    let shared = server_eph.shared_secret(client_eph).unwrap();
    let keys = derive_session_keys(&shared, &transcript_hash(&client_auth, &server_auth));
    client.handle_datagram(now, server_addr, &mut server_auth);
    let t = client.poll_transmit(now, &mut buf).unwrap();
    assert_eq!(
        &buf[..t.len],
        &handshake::finished_datagram(&keys.client_to_server, &keys.client_finished)[..]
    );

    let mut data = keys.server_finished.to_vec();
    data.extend_from_slice(&7u64.to_be_bytes());
    let mut finished = handshake::finished_datagram(&keys.server_to_client, &data);
    client.handle_datagram(now, server_addr, &mut finished);
    assert_eq!(
        client.poll_event(),
        Some(Event::Connected {
            client: ClientId(7)
        })
    );
    assert_eq!(client.id(), Some(ClientId(7)));
}

#[test]
fn message_parts_follow_the_document_in_a_real_connection() {
    let h = handshake_of_fixed_inputs();
    let mut now = Instant::now();
    let computed = compute();
    let mut scratch = Scratch::new(tickwire::wire::MAX_PAYLOAD);
    let config = ConnectionConfig {
        max_message_size: tickwire::MAX_LARGE_MESSAGE_SIZE,
        send_queue_bytes: 2 * tickwire::MAX_LARGE_MESSAGE_SIZE,
        ..ConnectionConfig::default()
    };
    let mut client = client_connection(&h, now, config.clone());
    let mut server = server_connection(&h, now, config);
    let mut message = vec![0xAB; tickwire::wire::frame::MAX_PART];
    message.extend_from_slice(PART_TAIL);
    assert_eq!(message.len(), tickwire::MAX_MESSAGE_SIZE + 1);
    client
        .send(now, ChannelId(4), &message, &mut scratch)
        .unwrap();
    let mut buf = [0u8; 1500];
    let mut tail = None;
    let mut events = VecDeque::new();
    for _ in 0..1000 {
        while let Some((n, _)) = client.poll_transmit(now, &mut scratch, &mut buf) {
            let packet = Packet::parse(&buf[..n]).unwrap();
            if packet.header.fragment.is_none() && packet.header.sequence == 2 {
                // The second part, pn 2: one datagram whose plaintext is the vector.
                let Body::Data { data, .. } = packet.body else {
                    panic!("data packet")
                };
                let at = n - data.len();
                let mut plain = buf[at..n].to_vec();
                let len = h
                    .keys
                    .client_to_server
                    .open(2, &buf[..at], &mut plain)
                    .unwrap();
                tail = Some(plain[..len].to_vec());
            }
            server.handle_datagram(now, addr(5000), &mut buf[..n], &mut scratch, &mut events);
        }
        while let Some((n, _)) = server.poll_transmit(now, &mut scratch, &mut buf) {
            client.handle_datagram(now, addr(4000), &mut buf[..n], &mut scratch, &mut events);
        }
        if events.iter().any(|e| matches!(e, Event::Message { .. })) {
            break;
        }
        now += std::time::Duration::from_millis(1);
        let mut ignored = VecDeque::new();
        client.handle_timeout(now, &mut ignored, &mut scratch);
        server.handle_timeout(now, &mut ignored, &mut scratch);
    }
    assert_eq!(tail.as_deref(), Some(&computed["message_part_frame"][..]));
    let got = events.iter().find_map(|e| match e {
        Event::Message { channel, data, .. } => Some((*channel, data.clone())),
        _ => None,
    });
    assert_eq!(got, Some((ChannelId(4), message)));
}
