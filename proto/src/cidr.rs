//! IP ranges in CIDR notation (RFC 4632 for IPv4, RFC 4291 section 2.3 for IPv6), for the
//! per-role IP allow-lists of an org's policy.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use crate::ProtoError;

/// An IP range: a network address and a prefix length, e.g. `10.0.0.0/8` or `2001:db8::/32`.
///
/// Parsing is lenient where that is harmless and strict where it is not:
/// - a bare address is a single host (`192.168.1.7` is `192.168.1.7/32`, `::1` is `::1/128`);
/// - host bits below the prefix are masked off, not refused (`10.1.2.3/8` is `10.0.0.0/8`);
/// - an IPv4-mapped IPv6 range (`::ffff:10.0.0.0/104`) is stored as the IPv4 range it is
///   (`10.0.0.0/8`), since [`Cidr::contains`] treats mapped addresses as IPv4;
/// - a prefix beyond the address's length, a signed or empty prefix, whitespace, zone ids
///   (`fe80::1%eth0`) and anything else that is not an address are [`ProtoError::InvalidCidr`].
///
/// `Display` (and serde) write the canonical `network/prefix`, with the IPv6 address in its
/// RFC 5952 form.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr {
    /// The network address, host bits zero; never an IPv4-mapped IPv6 address.
    network: IpAddr,
    /// 0 to 32 for IPv4, 0 to 128 for IPv6.
    prefix: u8,
}

/// The prefix length of a mapped IPv4 address's IPv6 form: `::ffff:0:0/96`.
const MAPPED_PREFIX: u8 = 96;

impl Cidr {
    /// The range of `prefix` leading bits of `address`; host bits are masked off. A prefix
    /// beyond the address's length (32 or 128) is [`ProtoError::InvalidCidr`].
    pub fn new(address: IpAddr, prefix: u8) -> Result<Self, ProtoError> {
        let (address, prefix) = match address {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) if prefix >= MAPPED_PREFIX => (IpAddr::V4(v4), prefix - MAPPED_PREFIX),
                _ => (address, prefix),
            },
            IpAddr::V4(_) => (address, prefix),
        };
        if prefix > max_prefix(address) {
            return Err(ProtoError::InvalidCidr);
        }
        Ok(Self {
            network: mask(address, prefix),
            prefix,
        })
    }

    /// The network address (host bits zero).
    pub fn network(&self) -> IpAddr {
        self.network
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `address` lies in the range. An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, as
    /// a dual-stack socket reports IPv4 peers) is the IPv4 address it maps. Otherwise IPv4
    /// ranges hold only IPv4 addresses and IPv6 ranges only IPv6 ones: `::/0` is every IPv6
    /// address, not every address.
    pub fn contains(&self, address: &IpAddr) -> bool {
        let address = address.to_canonical();
        let same_family = address.is_ipv4() == self.network.is_ipv4();
        same_family && mask(address, self.prefix) == self.network
    }
}

/// 32 for IPv4, 128 for IPv6.
fn max_prefix(address: IpAddr) -> u8 {
    match address {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// `address` with every bit after the first `prefix` cleared. `prefix` is at most the
/// address's length.
fn mask(address: IpAddr, prefix: u8) -> IpAddr {
    match address {
        IpAddr::V4(v4) => {
            let bits = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(v4) & bits))
        }
        IpAddr::V6(v6) => {
            let bits = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & bits))
        }
    }
}

impl FromStr for Cidr {
    type Err = ProtoError;

    /// Parses `address` or `address/prefix`; see [`Cidr`] for what is accepted.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (address, prefix) = match s.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (s, None),
        };
        let address: IpAddr = address.parse().map_err(|_| ProtoError::InvalidCidr)?;
        let prefix = match prefix {
            None => max_prefix(address),
            // `u8::from_str` would also take "+8"; only plain digits are a prefix.
            Some(p) if (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse().map_err(|_| ProtoError::InvalidCidr)?
            }
            Some(_) => return Err(ProtoError::InvalidCidr),
        };
        Self::new(address, prefix)
    }
}

impl TryFrom<String> for Cidr {
    type Error = ProtoError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<Cidr> for String {
    fn from(value: Cidr) -> Self {
        value.to_string()
    }
}

impl fmt::Display for Cidr {
    /// The canonical `network/prefix`, e.g. `10.0.0.0/8` or `2001:db8::/32`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl fmt::Debug for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cidr({self})")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_and_displays_canonically() {
        for (input, canonical) in [
            ("10.0.0.0/8", "10.0.0.0/8"),
            ("192.168.1.7", "192.168.1.7/32"),
            ("::1/128", "::1/128"),
            ("::1", "::1/128"),
            ("2001:db8::/32", "2001:db8::/32"),
            ("2001:0DB8:0000::/32", "2001:db8::/32"),
            ("10.1.2.3/8", "10.0.0.0/8"),
            ("2001:db8:ffff::1/32", "2001:db8::/32"),
            ("0.0.0.0/0", "0.0.0.0/0"),
            ("203.0.113.9/0", "0.0.0.0/0"),
            ("::/0", "::/0"),
            ("10.0.0.0/08", "10.0.0.0/8"),
            ("::ffff:10.1.2.3/104", "10.0.0.0/8"),
            ("::ffff:192.0.2.1", "192.0.2.1/32"),
            ("::ffff:0:0/96", "0.0.0.0/0"),
            ("::ffff:0:0/95", "::fffe:0:0/95"),
        ] {
            assert_eq!(cidr(input).to_string(), canonical, "{input}");
            assert_eq!(cidr(canonical).to_string(), canonical, "{canonical}");
        }
        assert_eq!(cidr("10.9.8.7/8").network(), ip("10.0.0.0"));
        assert_eq!(cidr("10.9.8.7/8").prefix(), 8);
        assert_eq!(format!("{:?}", cidr("10.0.0.0/8")), "Cidr(10.0.0.0/8)");
    }

    #[test]
    fn refuses_what_is_not_a_cidr() {
        for bad in [
            "",
            "/",
            "/8",
            "10.0.0.0/",
            "10.0.0.0/33",
            "10.0.0.0/256",
            "10.0.0.0/1000",
            "10.0.0.0/+8",
            "10.0.0.0/-1",
            "10.0.0.0/8/8",
            "10.0.0.0 /8",
            " 10.0.0.0/8",
            "10.0.0.0/8 ",
            "10.0.0/8",
            "10.0.0.256",
            "010.0.0.1",
            "::1/129",
            "2001:db8::/1x",
            "fe80::1%eth0/64",
            "localhost",
            "10.0.0.0/8,10.0.0.0/9",
        ] {
            assert_eq!(bad.parse::<Cidr>(), Err(ProtoError::InvalidCidr), "{bad:?}");
        }
        assert_eq!(Cidr::new(ip("10.0.0.0"), 33), Err(ProtoError::InvalidCidr));
        assert_eq!(Cidr::new(ip("::"), 129), Err(ProtoError::InvalidCidr));
    }

    #[test]
    fn ipv4_containment_and_edges() {
        let net = cidr("10.0.0.0/8");
        assert!(net.contains(&ip("10.0.0.0")));
        assert!(net.contains(&ip("10.255.255.255")));
        assert!(!net.contains(&ip("11.0.0.0")));
        assert!(!net.contains(&ip("9.255.255.255")));

        let all = cidr("0.0.0.0/0");
        assert!(all.contains(&ip("0.0.0.0")));
        assert!(all.contains(&ip("255.255.255.255")));
        assert!(!all.contains(&ip("::1")), "an IPv4 range holds no IPv6");

        let host = cidr("192.168.1.7/32");
        assert!(host.contains(&ip("192.168.1.7")));
        assert!(!host.contains(&ip("192.168.1.6")));
        assert!(!host.contains(&ip("192.168.1.8")));

        let odd = cidr("192.168.1.128/25");
        assert!(odd.contains(&ip("192.168.1.200")));
        assert!(!odd.contains(&ip("192.168.1.127")));
    }

    #[test]
    fn ipv6_containment_and_edges() {
        let net = cidr("2001:db8::/32");
        assert!(net.contains(&ip("2001:db8::1")));
        assert!(net.contains(&ip("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff")));
        assert!(!net.contains(&ip("2001:db9::")));
        assert!(!net.contains(&ip("10.0.0.1")));

        let host = cidr("::1/128");
        assert!(host.contains(&ip("::1")));
        assert!(!host.contains(&ip("::2")));

        let all = cidr("::/0");
        assert!(all.contains(&ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")));
        assert!(
            !all.contains(&ip("127.0.0.1")),
            "an IPv6 range holds no IPv4"
        );
        assert!(
            !all.contains(&ip("::ffff:127.0.0.1")),
            "a mapped address is IPv4"
        );
    }

    #[test]
    fn mapped_addresses_match_ipv4_ranges() {
        let net = cidr("192.168.0.0/16");
        assert!(net.contains(&ip("::ffff:192.168.10.20")));
        assert!(!net.contains(&ip("::ffff:192.169.0.1")));
        assert!(cidr("::ffff:192.168.0.0/112").contains(&ip("192.168.3.4")));
        // The deprecated IPv4-compatible form (`::a.b.c.d`) is plain IPv6.
        assert!(!net.contains(&ip("::192.168.10.20")));
    }

    #[test]
    fn serde_is_the_canonical_string() -> Result<(), Box<dyn std::error::Error>> {
        let net = cidr("10.1.0.0/16");
        let json = serde_json::to_string(&net)?;
        assert_eq!(json, "\"10.1.0.0/16\"");
        assert_eq!(serde_json::from_str::<Cidr>(&json)?, net);
        assert_eq!(serde_json::from_str::<Cidr>("\"10.1.2.3/16\"")?, net);
        assert!(serde_json::from_str::<Cidr>("\"10.0.0.0/33\"").is_err());
        let bin = postcard::to_allocvec(&net)?;
        assert_eq!(postcard::from_bytes::<Cidr>(&bin)?, net);
        Ok(())
    }
}
