//! The server address: `wss://HOST:PORT`, parsed by a pure function.

use std::fmt;

use super::TransportError;

/// The WebSocket path of the medrelay protocol on the server's TLS port.
pub const WS_PATH: &str = "/v1/ws";

/// A medrelay server address: `wss://HOST:PORT` (port 443 when omitted). HOST is a DNS name,
/// an IPv4 address or a bracketed IPv6 address. Only `wss` is accepted: TLS is not optional.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ServerUrl {
    host: String,
    port: u16,
}

impl ServerUrl {
    /// Parses `wss://HOST[:PORT][/]`.
    pub fn parse(input: &str) -> Result<Self, TransportError> {
        let bad = |why: &str| {
            TransportError::InvalidUrl(format!(
                "{why}; expected wss://HOST:PORT, e.g. wss://clinic.example:8443"
            ))
        };
        let input = input.trim();
        let rest = input
            .strip_prefix("wss://")
            .ok_or_else(|| bad("the URL must start with wss://"))?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@']) {
            return Err(bad("no path, query or user part is allowed"));
        }
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| bad("an IPv6 host needs its closing ]"))?;
            if host.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(bad("not an IPv6 address inside [ ]"));
            }
            match after {
                "" => (host, None),
                p => (
                    host,
                    Some(p.strip_prefix(':').ok_or_else(|| bad("junk after ]"))?),
                ),
            }
        } else {
            let (host, port) = match rest.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            };
            if host.contains(':') {
                return Err(bad(
                    "an IPv6 host must be in brackets, e.g. wss://[::1]:8443",
                ));
            }
            (host, port)
        };
        if host.is_empty() {
            return Err(bad("the host is missing"));
        }
        if !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'))
        {
            return Err(bad("the host has characters a host name cannot have"));
        }
        let port = match port {
            None => 443,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| bad("the port must be a number from 1 to 65535"))?,
        };
        Ok(Self {
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    /// The host (without brackets for IPv6): the TLS server name.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `host:port` as `connect` takes it (IPv6 bracketed).
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The WebSocket URL: `wss://host:port/v1/ws`.
    pub fn websocket_url(&self) -> String {
        format!("wss://{}{WS_PATH}", self.authority())
    }
}

impl fmt::Display for ServerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "wss://{}", self.authority())
    }
}

impl std::str::FromStr for ServerUrl {
    type Err = TransportError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for ServerUrl {
    type Error = TransportError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<ServerUrl> for String {
    fn from(u: ServerUrl) -> Self {
        u.to_string()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn parses_hosts_ports_and_ipv6() {
        let u = ServerUrl::parse("wss://Clinic.Example:8443").unwrap();
        assert_eq!((u.host(), u.port()), ("clinic.example", 8443));
        assert_eq!(u.websocket_url(), "wss://clinic.example:8443/v1/ws");
        assert_eq!(u.to_string(), "wss://clinic.example:8443");
        assert_eq!(ServerUrl::parse("wss://127.0.0.1:1/").unwrap().port(), 1);
        assert_eq!(ServerUrl::parse("wss://host").unwrap().port(), 443);
        let v6 = ServerUrl::parse("wss://[::1]:9000").unwrap();
        assert_eq!((v6.host(), v6.port()), ("::1", 9000));
        assert_eq!(v6.authority(), "[::1]:9000");
        assert_eq!(v6.to_string().parse::<ServerUrl>().unwrap(), v6);
    }

    #[test]
    fn refuses_what_is_not_wss_host_port() {
        for bad in [
            "ws://host:1",
            "https://host:1",
            "wss://",
            "wss://:443",
            "wss://host:0",
            "wss://host:65536",
            "wss://host:port",
            "wss://host:1/v1/ws",
            "wss://user@host:1",
            "wss://[::1",
            "wss://[nothex]:1",
            "wss://ho st:1",
            "wss://::1:443",
            "host:1",
        ] {
            assert!(ServerUrl::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn serde_as_a_string() {
        let u = ServerUrl::parse("wss://a.b:2").unwrap();
        let json = serde_json::to_string(&u).unwrap();
        assert_eq!(json, "\"wss://a.b:2\"");
        assert_eq!(serde_json::from_str::<ServerUrl>(&json).unwrap(), u);
        assert!(serde_json::from_str::<ServerUrl>("\"http://x\"").is_err());
    }
}
