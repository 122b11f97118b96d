//! Who may connect: address prefixes, bans that expire on their own, and the allow-list.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::time::{Duration, Instant};

/// An IP address prefix such as `192.0.2.0/24`, `2001:db8::/32` or a single address.
///
/// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`, as a dual-stack socket reports IPv4 peers)
/// match IPv4 prefixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpPrefix {
    addr: IpAddr,
    len: u8,
}

impl IpPrefix {
    /// The prefix of `addr`'s first `len` bits (the rest are cleared).
    ///
    /// # Errors
    /// [`PrefixError`] if `len` exceeds the address's bits (32 or 128).
    pub fn new(addr: IpAddr, len: u8) -> Result<Self, PrefixError> {
        let addr = canonical(addr);
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if len > max {
            return Err(PrefixError("prefix length too long"));
        }
        let addr = match addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
            }
        };
        Ok(Self { addr, len })
    }

    /// The prefix holding only `addr`.
    pub fn host(addr: IpAddr) -> Self {
        let addr = canonical(addr);
        let len = if addr.is_ipv4() { 32 } else { 128 };
        Self { addr, len }
    }

    /// Whether `ip` is inside the prefix.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(p), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                u32::from(a) & mask == u32::from(p)
            }
            (IpAddr::V6(p), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                u128::from(a) & mask == u128::from(p)
            }
            _ => false,
        }
    }
}

/// The key per-address limits count under: an IPv4 address (IPv4-mapped IPv6 alike), or an
/// IPv6 address's /64 (one host usually holds a whole /64).
pub(crate) fn ip_key(ip: IpAddr) -> u128 {
    match canonical(ip) {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => (u128::from(v6) >> 64 << 64) | 1,
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        v4 => v4,
    }
}

impl fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for IpPrefix {
    type Err = PrefixError;

    /// Parses `ADDR` or `ADDR/LEN`.
    fn from_str(s: &str) -> Result<Self, PrefixError> {
        let s = s.trim();
        match s.split_once('/') {
            None => s
                .parse::<IpAddr>()
                .map(Self::host)
                .map_err(|_| PrefixError("not an IP address")),
            Some((a, l)) => {
                let addr = a.parse().map_err(|_| PrefixError("not an IP address"))?;
                let len = l.parse().map_err(|_| PrefixError("bad prefix length"))?;
                Self::new(addr, len)
            }
        }
    }
}

/// A prefix that could not be parsed or built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefixError(&'static str);

impl fmt::Display for PrefixError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid IP prefix: {}", self.0)
    }
}

impl std::error::Error for PrefixError {}

/// One ban.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ban {
    /// The banned addresses.
    pub prefix: IpPrefix,
    /// When the ban ends (`None`: never).
    pub until: Option<Instant>,
}

/// Bans by prefix, each with its own expiry.
#[derive(Debug, Clone, Default)]
pub struct BanList {
    bans: Vec<Ban>,
}

impl BanList {
    /// Bans `prefix` for `duration` from `now` (`None`: until unbanned), replacing an
    /// existing ban of the same prefix.
    pub fn ban(&mut self, now: Instant, prefix: IpPrefix, duration: Option<Duration>) {
        self.bans.retain(|b| b.prefix != prefix);
        self.bans.push(Ban {
            prefix,
            until: duration.map(|d| now + d),
        });
    }

    /// Lifts the ban of exactly `prefix`; returns whether there was one.
    pub fn unban(&mut self, prefix: IpPrefix) -> bool {
        let before = self.bans.len();
        self.bans.retain(|b| b.prefix != prefix);
        self.bans.len() != before
    }

    /// Whether `ip` is banned at `now`.
    pub fn is_banned(&self, now: Instant, ip: IpAddr) -> bool {
        self.bans
            .iter()
            .any(|b| b.until.is_none_or(|u| now < u) && b.prefix.contains(ip))
    }

    /// Forgets expired bans.
    pub fn expire(&mut self, now: Instant) {
        self.bans.retain(|b| b.until.is_none_or(|u| now < u));
    }

    /// The bans in force (expired ones may linger until [`BanList::expire`]).
    pub fn iter(&self) -> impl Iterator<Item = &Ban> {
        self.bans.iter()
    }

    /// The earliest expiry.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.bans.iter().filter_map(|b| b.until).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match() {
        let p: IpPrefix = "192.0.2.77/24".parse().unwrap();
        assert_eq!(p.to_string(), "192.0.2.0/24");
        assert!(p.contains("192.0.2.1".parse().unwrap()));
        assert!(p.contains("::ffff:192.0.2.9".parse().unwrap()));
        assert!(!p.contains("192.0.3.1".parse().unwrap()));
        assert!(!p.contains("::1".parse().unwrap()));
        let h: IpPrefix = "::1".parse().unwrap();
        assert!(h.contains("::1".parse().unwrap()));
        let all: IpPrefix = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        assert!("1.2.3.4/33".parse::<IpPrefix>().is_err());
        assert!("nonsense".parse::<IpPrefix>().is_err());
    }

    #[test]
    fn bans_expire() {
        let now = Instant::now();
        let mut b = BanList::default();
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        b.ban(
            now,
            "10.1.0.0/16".parse().unwrap(),
            Some(Duration::from_secs(60)),
        );
        assert!(b.is_banned(now, ip));
        assert!(!b.is_banned(now + Duration::from_secs(60), ip));
        b.expire(now + Duration::from_secs(61));
        assert_eq!(b.iter().count(), 0);
    }
}
