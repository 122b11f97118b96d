//! Socket setup with socket2: buffer sizes, IPv6 dual-stack, non-blocking, then a mio socket.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

use crate::config::ConfigError;

/// How the driver's UDP socket is set up, and how many datagrams it holds back when the socket
/// would block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketConfig {
    /// `SO_RCVBUF` to ask for; `None` keeps the system's default. The system may cap it
    /// (Linux: `net.core.rmem_max`) without an error.
    pub recv_buffer_bytes: Option<usize>,
    /// `SO_SNDBUF` to ask for; `None` keeps the system's default (capped the same way, by
    /// `net.core.wmem_max` on Linux).
    pub send_buffer_bytes: Option<usize>,
    /// For an IPv6 address: also accept IPv4 peers (as IPv4-mapped addresses), that is
    /// `IPV6_V6ONLY` off. Ignored for an IPv4 address.
    pub dual_stack: bool,
    /// Datagrams kept, in order, while the socket would block; past it the driver leaves the
    /// rest in the endpoint (which keeps its own queues and resends) until the socket is
    /// writable again. At least 1. (A GSO run that meets a full socket is held whole.)
    pub send_queue_datagrams: usize,
    /// Batch the system calls where the system can (Linux, through quinn-udp): UDP GSO sends
    /// consecutive datagrams for one peer in one call, `recvmmsg` and UDP GRO read many in one.
    /// With it the socket is also set to report each datagram's destination address and
    /// traffic class, and on Linux to send with DF set whatever the path MTU cache says
    /// (`IP_PMTUDISC_PROBE`; tickwire's datagrams fit any MTU). Off, or where the system has
    /// none of it, every datagram takes one `send_to` or `recv_from`. A busy driver then holds
    /// up to 1 MiB of receive buffers (16 of 64 KiB, added as reads fill them) instead of one.
    pub offload: bool,
}

impl Default for SocketConfig {
    /// 2 MiB socket buffers, IPv6 only on an IPv6 address, 256 held-back datagrams, offload
    /// on.
    fn default() -> Self {
        Self {
            recv_buffer_bytes: Some(2 << 20),
            send_buffer_bytes: Some(2 << 20),
            dual_stack: false,
            send_queue_datagrams: 256,
            offload: true,
        }
    }
}

impl SocketConfig {
    /// This configuration with IPv6 dual-stack on (see [`SocketConfig::dual_stack`]).
    #[must_use]
    pub fn dual_stack(mut self) -> Self {
        self.dual_stack = true;
        self
    }

    /// This configuration with one system call per datagram (see [`SocketConfig::offload`]).
    #[must_use]
    pub fn without_offload(mut self) -> Self {
        self.offload = false;
        self
    }

    /// Checks the settings.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first setting out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.send_queue_datagrams == 0 {
            return Err(ConfigError("send_queue_datagrams must be above zero"));
        }
        if self.recv_buffer_bytes == Some(0) || self.send_buffer_bytes == Some(0) {
            return Err(ConfigError("socket buffer sizes must be above zero"));
        }
        Ok(())
    }
}

/// A non-blocking UDP socket bound to `addr`, set up as `config` says, ready for a mio
/// [`Poll`](mio::Poll).
///
/// Don't-fragment: tickwire's datagrams are at most 1,002 octets after the handshake (its
/// AUTH at most about 1,100), under IPv6's minimum MTU of 1,280, so they never need
/// fragmenting. socket2 offers no `IP_MTU_DISCOVER` setter and this crate forbids `unsafe`, so
/// the option is left at the system's default here; on Linux that is `IP_PMTUDISC_WANT`
/// (unless `net.ipv4.ip_no_pmtu_disc` is set), which already sends datagrams this small with DF
/// set. A driver with [`SocketConfig::offload`] then sets `IP_PMTUDISC_PROBE` (through
/// quinn-udp).
///
/// # Errors
/// Any error of `socket`, `setsockopt` or `bind`.
pub fn bind_socket(addr: SocketAddr, config: &SocketConfig) -> io::Result<mio::net::UdpSocket> {
    bind_with(addr, config, false)
}

/// [`bind_socket`], with `SO_REUSEPORT` set before binding if `reuse_port` (so that several
/// sockets of this process share `addr`; Linux spreads the datagrams of different peers
/// over them by a hash of the peer's address and port).
pub(crate) fn bind_with(
    addr: SocketAddr,
    config: &SocketConfig,
    reuse_port: bool,
) -> io::Result<mio::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(!config.dual_stack)?;
    }
    if let Some(n) = config.recv_buffer_bytes {
        socket.set_recv_buffer_size(n)?;
    }
    if let Some(n) = config.send_buffer_bytes {
        socket.set_send_buffer_size(n)?;
    }
    if reuse_port {
        set_reuse_port(&socket)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(mio::net::UdpSocket::from_std(socket.into()))
}

#[cfg(all(
    unix,
    not(any(target_os = "solaris", target_os = "illumos", target_os = "cygwin"))
))]
fn set_reuse_port(socket: &Socket) -> io::Result<()> {
    socket.set_reuse_port(true)
}

#[cfg(not(all(
    unix,
    not(any(target_os = "solaris", target_os = "illumos", target_os = "cygwin"))
)))]
fn set_reuse_port(_: &Socket) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "SO_REUSEPORT is not available on this system",
    ))
}

/// The socket buffer sizes the system granted: `(receive, send)` in octets, as
/// `getsockopt` reports them (Linux reports double what was asked, for its bookkeeping).
///
/// # Errors
/// Any error of `getsockopt`.
pub fn buffer_sizes(socket: &mio::net::UdpSocket) -> io::Result<(usize, usize)> {
    let s = socket2::SockRef::from(socket);
    Ok((s.recv_buffer_size()?, s.send_buffer_size()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_refuses_zeroes() {
        assert!(SocketConfig::default().validate().is_ok());
        let no_queue = SocketConfig {
            send_queue_datagrams: 0,
            ..SocketConfig::default()
        };
        assert!(no_queue.validate().is_err());
        let no_buffer = SocketConfig {
            recv_buffer_bytes: Some(0),
            ..SocketConfig::default()
        };
        assert!(no_buffer.validate().is_err());
    }

    #[test]
    fn ipv6_only_unless_dual_stack() {
        for dual in [false, true] {
            let config = SocketConfig {
                dual_stack: dual,
                ..SocketConfig::default()
            };
            let Ok(socket) = bind_socket("[::]:0".parse().unwrap(), &config) else {
                eprintln!("note: no IPv6 here; skipping");
                return;
            };
            assert_eq!(socket2::SockRef::from(&socket).only_v6().unwrap(), !dual);
        }
    }

    #[test]
    fn buffer_sizes_are_asked_for() {
        let config = SocketConfig {
            recv_buffer_bytes: Some(64 * 1024),
            send_buffer_bytes: Some(64 * 1024),
            ..SocketConfig::default()
        };
        let socket = bind_socket("127.0.0.1:0".parse().unwrap(), &config).unwrap();
        let (recv, send) = buffer_sizes(&socket).unwrap();
        // The system may round or double them, never ignore them entirely.
        assert!(recv >= 32 * 1024 && send >= 32 * 1024, "{recv} {send}");
    }
}
