//! A whole datagram: the header, the type-specific fields and Data.

use super::{
    check_buffer, AckFields, AuthFields, EmitError, ErrorCode, ErrorFields, Flags, Header,
    Heartbeat, PacketType, WireError, MAX_DATA,
};

/// The type-specific fields of the packet types that carry Data (all but AUTH).
///
/// These travel in the clear after the header; when a packet is sealed they are
/// authenticated as associated data (see `docs/PROTOCOL.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypeFields {
    /// DEFAULT: no field.
    Default,
    /// ACK: ACK ID and ACK Bits.
    Ack(AckFields),
    /// HEARTBEAT: PING or PONG.
    Heartbeat(Heartbeat),
    /// ERROR: the code.
    Error(ErrorCode),
}

impl TypeFields {
    /// The packet type these fields belong to.
    pub const fn packet_type(&self) -> PacketType {
        match self {
            Self::Default => PacketType::Default,
            Self::Ack(_) => PacketType::Ack,
            Self::Heartbeat(_) => PacketType::Heartbeat,
            Self::Error(_) => PacketType::Error,
        }
    }

    /// Length on the wire (0 to 4 octets).
    pub const fn len(&self) -> usize {
        match self {
            Self::Default => 0,
            Self::Ack(_) => AckFields::LEN,
            Self::Heartbeat(_) => Heartbeat::LEN,
            Self::Error(_) => ErrorFields::LEN,
        }
    }

    /// Whether the fields take no octet (DEFAULT).
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Parses the fields of a `packet_type` packet, returning them and the Data after them.
    ///
    /// # Errors
    /// 3.0 for truncated or invalid fields; 3.2 for AUTH, which carries no Data.
    pub fn parse(packet_type: PacketType, input: &[u8]) -> Result<(Self, &[u8]), WireError> {
        Ok(match packet_type {
            PacketType::Default => (Self::Default, input),
            PacketType::Ack => {
                let (f, rest) = AckFields::parse(input)?;
                (Self::Ack(f), rest)
            }
            PacketType::Heartbeat => {
                let (f, rest) = Heartbeat::parse(input)?;
                (Self::Heartbeat(f), rest)
            }
            PacketType::Error => {
                let (f, rest) = ErrorFields::parse(input)?;
                (Self::Error(f.code), rest)
            }
            PacketType::Auth => {
                return Err(WireError::new(
                    ErrorCode::PacketType,
                    "AUTH carries no Data fields",
                ))
            }
        })
    }

    /// Writes the fields at the start of `buf`, returning their length.
    ///
    /// # Errors
    /// [`EmitError::BufferTooSmall`] if `buf` is too short.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, EmitError> {
        match self {
            Self::Default => Ok(0),
            Self::Ack(f) => f.emit(buf),
            Self::Heartbeat(f) => f.emit(buf),
            Self::Error(code) => ErrorFields { code: *code }.emit(buf),
        }
    }
}

/// What follows the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body<'a> {
    /// A packet type that carries Data, with its fields and Data (at most 988 octets; sealed,
    /// compressed or a fragment when the header's flags say so).
    Data {
        /// The type-specific fields.
        fields: TypeFields,
        /// Data as it is on the wire.
        data: &'a [u8],
    },
    /// AUTH: the key exchange.
    Auth(AuthFields<'a>),
}

/// One datagram, parsed. It borrows from the datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<'a> {
    /// The common header.
    pub header: Header,
    /// The type-specific fields and Data.
    pub body: Body<'a>,
}

impl<'a> Packet<'a> {
    /// A packet carrying Data, with a header of the right type and no flags.
    pub fn with_data(sequence: u16, fields: TypeFields, data: &'a [u8]) -> Self {
        Self {
            header: Header::new(fields.packet_type(), sequence),
            body: Body::Data { fields, data },
        }
    }

    /// Parses one datagram.
    ///
    /// # Errors
    /// The header's errors (3.0 to 3.6, see [`Header::parse`]); 3.3 for flags on an AUTH
    /// packet (it carries no Data for them to apply to); 3.0 for truncated or invalid
    /// type-specific fields or Data over 988 octets.
    pub fn parse(datagram: &'a [u8]) -> Result<Self, WireError> {
        let (header, rest) = Header::parse(datagram)?;
        let body = if header.packet_type == PacketType::Auth {
            if header.flags != Flags::empty() {
                return Err(WireError::new(ErrorCode::Flags, "flags on an AUTH packet"));
            }
            Body::Auth(AuthFields::parse(rest)?.0)
        } else {
            let (fields, data) = TypeFields::parse(header.packet_type, rest)?;
            if data.len() > MAX_DATA {
                return Err(WireError::unreadable("Data longer than 988 octets"));
            }
            Body::Data { fields, data }
        };
        Ok(Self { header, body })
    }

    /// Data, or an empty slice for AUTH.
    pub fn data(&self) -> &'a [u8] {
        match self.body {
            Body::Data { data, .. } => data,
            Body::Auth(_) => &[],
        }
    }

    /// Length on the wire.
    pub fn len(&self) -> usize {
        self.header.len()
            + match &self.body {
                Body::Data { fields, data } => fields.len() + data.len(),
                Body::Auth(auth) => auth.len(),
            }
    }

    /// Always false: a packet is at least its 4-octet header.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Writes the datagram into `buf`, returning its length.
    ///
    /// # Errors
    /// [`EmitError::DataTooLong`] for Data over 988 octets, the AUTH fields' limits, an
    /// [`EmitError::InvalidHeader`] for a header whose type or flags do not fit the body, and
    /// [`EmitError::BufferTooSmall`]. Nothing is written on error.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, EmitError> {
        match &self.body {
            Body::Data { fields, data } => {
                if data.len() > MAX_DATA {
                    return Err(EmitError::DataTooLong(data.len()));
                }
                if fields.packet_type() != self.header.packet_type {
                    return Err(EmitError::InvalidHeader(
                        "header type does not match fields",
                    ));
                }
            }
            Body::Auth(_) => {
                if self.header.packet_type != PacketType::Auth {
                    return Err(EmitError::InvalidHeader(
                        "header type does not match fields",
                    ));
                }
                if self.header.flags != Flags::empty() {
                    return Err(EmitError::InvalidHeader("AUTH carries no flags"));
                }
            }
        }
        self.header.validate()?;
        let len = self.len();
        check_buffer(buf, len)?;
        let mut at = self.header.emit(buf)?;
        match &self.body {
            Body::Data { fields, data } => {
                at += fields.emit(&mut buf[at..])?;
                buf[at..at + data.len()].copy_from_slice(data);
                at += data.len();
            }
            Body::Auth(auth) => at += auth.emit(&mut buf[at..])?,
        }
        debug_assert_eq!(at, len);
        Ok(len)
    }
}
