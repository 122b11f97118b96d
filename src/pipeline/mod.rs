//! The flag pipeline, in the order of docs/PROTOCOL.md §2.
//!
//! Sending: RELIABLE (the caller keeps the packet for resending) → CHECKSUM (low 16 bits of the
//! CRC-32 of the plaintext; only when not sealed) → COMPRESSED (an LZ4 block, only when it
//! shrinks the payload) → ENCRYPTED (AES-128-GCM, see [`seal`]) → FRAG (datagrams of at most
//! 988 octets of Data). Receiving runs the reverse: reassemble → open → decompress → verify the
//! checksum → deliver.
//!
//! [`Encoder`] and [`Decoder`] own the scratch buffers, sized once for the largest packet, so
//! the steady state allocates nothing per packet.
//!
//! ```
//! use tickwire::pipeline::{Decoder, Encoder, PacketKey, Seal, SendOptions};
//! use tickwire::wire::{Packet, TypeFields};
//!
//! let key = PacketKey::new(&[7; 16], &[9; 12]);
//! let mut encoder = Encoder::new();
//! let mut decoder = Decoder::new();
//! let opts = SendOptions { compress: true, ..SendOptions::default() };
//! let encoded = encoder
//!     .encode(TypeFields::Default, b"hello hello hello hello", opts, Seal::Sealed { key: &key, packet_number: 5 })
//!     .unwrap();
//! let mut datagram = [0u8; 1100];
//! let n = encoded.write_datagram(0, &mut datagram).unwrap();
//! let packet = Packet::parse(&datagram[..n]).unwrap();
//! let mut data = packet.data().to_vec();
//! let opened = decoder.open(&packet.header, &TypeFields::Default, &mut data, Some(&key)).unwrap();
//! assert_eq!(opened.plaintext, b"hello hello hello hello");
//! assert_eq!(opened.packet_number, 5);
//! ```

pub mod checksum;
pub mod compress;
pub mod fragment;
pub mod seal;

pub use checksum::checksum16;
pub use fragment::{FragmentBitmap, Reassembler, Reassembly, ReassemblyConfig};
pub use seal::PacketKey;

use std::fmt;

use crate::wire::{
    EmitError, ErrorCode, Flags, FragmentFields, Header, TypeFields, WireError, MAX_PAYLOAD,
};
use seal::{associated_data, MAX_AAD, TAG_LEN};

/// Which optional stages a packet goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SendOptions {
    /// Set RELIABLE: the receiver acknowledges the packet and the sender resends it.
    pub reliable: bool,
    /// Add a checksum (ignored when the packet is sealed: the GCM tag detects every change).
    pub checksum: bool,
    /// Try LZ4; the flag is set only when it makes the payload smaller.
    pub compress: bool,
}

/// Whether and how a packet is sealed.
#[derive(Debug, Clone, Copy)]
pub enum Seal<'k> {
    /// Not sealed (the handshake, or tests): the Sequence ID is given as is.
    Plain {
        /// The packet's Sequence ID.
        sequence: u16,
    },
    /// Sealed under `key`: the packet number gives the Init Vector (high 16 bits) and the
    /// Sequence ID (low 16 bits).
    Sealed {
        /// The sending direction's key.
        key: &'k PacketKey,
        /// The packet number, never reused under one key.
        packet_number: u32,
    },
}

/// Why a payload could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodeError {
    /// After compression and sealing the payload needs more than 255 fragments
    /// ([`MAX_PAYLOAD`] octets).
    TooLarge {
        /// Octets the processed payload would take.
        len: usize,
    },
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge { len } => write!(
                f,
                "payload of {len} octets after processing exceeds {MAX_PAYLOAD} (255 fragments)"
            ),
        }
    }
}

impl std::error::Error for EncodeError {}

/// Runs the sending half of the pipeline, reusing its buffers.
pub struct Encoder {
    payload: Vec<u8>,
    compressed: Vec<u8>,
}

impl fmt::Debug for Encoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Encoder(..)")
    }
}

impl Default for Encoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Encoder {
    /// An encoder with buffers for the largest packet.
    pub fn new() -> Self {
        Self {
            payload: Vec::with_capacity(MAX_PAYLOAD + TAG_LEN),
            compressed: Vec::new(),
        }
    }

    /// Runs `data` through checksum → compression → sealing and decides the fragmentation.
    ///
    /// The result borrows the encoder's buffer; write its datagrams with
    /// [`Encoded::write_datagram`].
    ///
    /// # Errors
    /// [`EncodeError::TooLarge`] if the processed payload needs more than 255 fragments.
    pub fn encode(
        &mut self,
        fields: TypeFields,
        data: &[u8],
        opts: SendOptions,
        seal: Seal<'_>,
    ) -> Result<Encoded<'_>, EncodeError> {
        let mut payload = std::mem::take(&mut self.payload);
        let result = encode_into(&mut self.compressed, fields, data, opts, seal, &mut payload);
        self.payload = payload;
        let header = result?;
        Ok(Encoded {
            header,
            fields,
            payload: &self.payload,
        })
    }
}

/// Runs `data` through checksum → compression → sealing into `out` (cleared first) and returns
/// the packet's header (with the fragment fields of fragment 0 when it needs fragmenting).
/// `compressed` is scratch space for LZ4, reused between calls.
///
/// Give `out` a capacity of the payload plus 16 octets to spare it an allocation.
///
/// # Errors
/// [`EncodeError::TooLarge`] if the processed payload needs more than 255 fragments; `out`
/// is then empty.
pub fn encode_into(
    compressed: &mut Vec<u8>,
    fields: TypeFields,
    data: &[u8],
    opts: SendOptions,
    seal: Seal<'_>,
    out: &mut Vec<u8>,
) -> Result<Header, EncodeError> {
    out.clear();
    if data.len() > MAX_PAYLOAD {
        // The receiver refuses to decompress past MAX_PAYLOAD: never send what cannot open.
        return Err(EncodeError::TooLarge { len: data.len() });
    }
    out.extend_from_slice(data);
    encode_in_place(compressed, fields, opts, seal, out)
}

/// [`encode_into`] with the plaintext already in `buf`, which it turns into the processed
/// payload in place (a copy only when LZ4 makes it shorter): the send path writes its frames
/// straight into the buffer the packet is kept in.
///
/// # Errors
/// As [`encode_into`]; `buf` is then empty.
pub fn encode_in_place(
    compressed: &mut Vec<u8>,
    fields: TypeFields,
    opts: SendOptions,
    seal: Seal<'_>,
    buf: &mut Vec<u8>,
) -> Result<Header, EncodeError> {
    if buf.len() > MAX_PAYLOAD {
        let len = buf.len();
        buf.clear();
        return Err(EncodeError::TooLarge { len });
    }
    let sealed = matches!(seal, Seal::Sealed { .. });
    let (sequence, init_vector) = match seal {
        Seal::Plain { sequence } => (sequence, None),
        Seal::Sealed { packet_number, .. } => {
            (packet_number as u16, Some((packet_number >> 16) as u16))
        }
    };
    let mut flags = Flags::empty();
    if opts.reliable {
        flags = flags | Flags::RELIABLE;
    }
    let checksum = (opts.checksum && !sealed).then(|| checksum16(buf));
    if checksum.is_some() {
        flags = flags | Flags::CHECKSUM;
    }
    if opts.compress && compress::compress_into(buf, compressed) {
        flags = flags | Flags::COMPRESSED;
        buf.clear();
        buf.extend_from_slice(compressed);
    }
    let processed_len = buf.len() + if sealed { TAG_LEN } else { 0 };
    if processed_len > MAX_PAYLOAD {
        buf.clear();
        return Err(EncodeError::TooLarge { len: processed_len });
    }
    let fragment = match fragment::fragment_count(processed_len) {
        0 => None,
        n => {
            flags = flags | Flags::FRAG;
            let count = fragment::count_field(n).expect("bounded by MAX_PAYLOAD above");
            Some(FragmentFields { id: 0, count })
        }
    };
    if sealed {
        flags = flags | Flags::ENCRYPTED;
    }
    let header = Header {
        packet_type: fields.packet_type(),
        flags,
        sequence,
        fragment,
        init_vector,
        checksum,
    };
    if let Seal::Sealed { key, packet_number } = seal {
        let mut aad = [0u8; MAX_AAD];
        let aad_len = associated_data(&header, &fields, &mut aad);
        key.seal(packet_number, &aad[..aad_len], buf);
    }
    Ok(header)
}

/// A packet that went through the sending pipeline, ready to be written as datagrams.
#[derive(Debug, Clone, Copy)]
pub struct Encoded<'e> {
    /// The header (with the fragment fields of fragment 0 when fragmented).
    pub header: Header,
    /// The type-specific fields, repeated in every datagram.
    pub fields: TypeFields,
    /// The processed payload (compressed and sealed as the flags say).
    pub payload: &'e [u8],
}

impl Encoded<'_> {
    /// How many datagrams the packet takes (1 when not fragmented).
    pub fn datagram_count(&self) -> usize {
        self.header.fragment.map_or(1, |f| usize::from(f.count))
    }

    /// Writes datagram `index` into `buf` and returns its length (at most 1002 octets).
    ///
    /// # Errors
    /// [`EmitError::BufferTooSmall`] if `buf` cannot hold it, [`EmitError::InvalidHeader`] if
    /// `index` is out of range.
    pub fn write_datagram(&self, index: usize, buf: &mut [u8]) -> Result<usize, EmitError> {
        fragment::write_datagram(&self.header, &self.fields, self.payload, index, buf)
    }
}

/// A payload that came through the receiving pipeline.
#[derive(Debug, PartialEq, Eq)]
pub struct Opened<'a> {
    /// The packet number (Init Vector high, Sequence ID low; the Sequence ID alone when the
    /// packet was not sealed).
    pub packet_number: u32,
    /// The plaintext the sender gave.
    pub plaintext: &'a [u8],
}

/// Runs the receiving half of the pipeline (open → decompress → checksum), reusing its
/// decompression buffer.
pub struct Decoder {
    plain: Vec<u8>,
    limit: usize,
}

impl fmt::Debug for Decoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decoder")
            .field("limit", &self.limit)
            .finish()
    }
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    /// A decoder whose decompressed payloads may be up to [`MAX_PAYLOAD`] octets.
    pub fn new() -> Self {
        Self::with_limit(MAX_PAYLOAD)
    }

    /// A decoder whose decompressed payloads may be up to `limit` octets; a packet that
    /// decompresses to more is an error (3.8), never an allocation.
    pub fn with_limit(limit: usize) -> Self {
        Self {
            plain: Vec::new(),
            limit,
        }
    }

    /// Opens one complete packet: `payload` is the Data of an unfragmented datagram or a
    /// reassembled payload, opened in place.
    ///
    /// # Errors
    /// 3.7 if the packet is sealed and no key is given or it fails to open, or a key is given
    /// and the packet is not sealed; 3.8 if it does
    /// not decompress within the limit; 3.9 if its checksum does not match.
    pub fn open<'a>(
        &'a mut self,
        header: &Header,
        fields: &TypeFields,
        payload: &'a mut [u8],
        key: Option<&PacketKey>,
    ) -> Result<Opened<'a>, WireError> {
        let packet_number = seal::packet_number(header);
        let mut plaintext: &[u8] = if header.flags.contains(Flags::ENCRYPTED) {
            let key = key.ok_or(WireError::new(
                ErrorCode::InitVector,
                "sealed packet and no key to open it",
            ))?;
            let mut aad = [0u8; MAX_AAD];
            let aad_len = associated_data(header, fields, &mut aad);
            let len = key.open(packet_number, &aad[..aad_len], payload)?;
            &payload[..len]
        } else if key.is_some() {
            // A key means this peer seals everything: an unsealed packet is a forgery.
            return Err(WireError::new(
                ErrorCode::InitVector,
                "unsealed packet where a sealed one is required",
            ));
        } else {
            payload
        };
        if header.flags.contains(Flags::COMPRESSED) {
            if self.plain.len() < self.limit {
                self.plain.resize(self.limit, 0);
            }
            let len = compress::decompress_into(plaintext, &mut self.plain[..self.limit])?;
            plaintext = &self.plain[..len];
        }
        if let Some(expected) = header.checksum {
            if checksum16(plaintext) != expected {
                return Err(WireError::new(ErrorCode::Checksum, "checksum mismatch"));
            }
        }
        Ok(Opened {
            packet_number,
            plaintext,
        })
    }
}
