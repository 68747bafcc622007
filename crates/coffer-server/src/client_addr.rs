//! Who the client is, for rate limits, the audit trail and the device list:
//! the TCP peer, or — only when that peer is a proxy the operator named
//! (`--trusted-proxy`) — the address that proxy says it forwarded for.
//!
//! Behind a TLS proxy on the same host every peer is 127.0.0.1, and one
//! client's failed logins would block everyone's. A forwarding header is
//! written by whoever sends the request, though, so it is believed only from
//! a trusted peer, and only as far as the chain of trusted proxies goes: the
//! right-most address that is not itself a trusted proxy is the client (what
//! the first trusted proxy saw). Anything to its left was written by the
//! client and is ignored.
//!
//! A malformed, oversized or absent header never refuses the request: the
//! peer's address is used, as without a proxy. The header's text is never
//! logged.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName};

use crate::api::AppState;

/// One element of a forwarding header longer than this is malformed. The
/// header as a whole is not bounded here (hyper bounds the headers): it is
/// read from the right, and the client's own writing, on the left, is
/// never reached — so padding it cannot make the client count as its
/// proxy.
pub const MAX_FORWARDED_ELEMENT: usize = 256;

/// At most this many addresses are read, from the right, before giving up
/// and using the peer's address.
pub const MAX_FORWARDED_HOPS: usize = 16;

/// An address or a network (`ADDR/PREFIX`) whose requests may say whom they
/// were forwarded for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyNetwork {
    addr: IpAddr,
    prefix: u8,
}

/// Why a `--trusted-proxy` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyNetworkError {
    /// Not an IP address.
    #[error("{0:?} is not an IP address (ADDR or ADDR/PREFIX, e.g. 127.0.0.1 or 10.0.0.0/8)")]
    NotAnAddress(String),
    /// The prefix length is not a number, or too long for the address.
    #[error("{0:?}: the prefix length must be 0 to 32 for IPv4, 0 to 128 for IPv6")]
    BadPrefix(String),
    /// Bits are set past the prefix (`10.0.0.1/8`): a typo for an address
    /// or for the network, which the server will not guess.
    #[error("{given:?} has bits set past its prefix: did you mean {network}?")]
    HostBits {
        /// What was given.
        given: String,
        /// The network it lies in.
        network: String,
    },
}

fn bits(addr: IpAddr) -> (u128, u8) {
    match addr {
        IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
        IpAddr::V6(v6) => (u128::from(v6), 128),
    }
}

/// The mask of the first `prefix` bits of a `width`-bit address.
fn mask(prefix: u8, width: u8) -> u128 {
    let all = if width == 128 {
        u128::MAX
    } else {
        (1u128 << width) - 1
    };
    if prefix == 0 {
        0
    } else {
        all & !((1u128 << (width - prefix)) - 1)
    }
}

impl ProxyNetwork {
    /// Whether `ip` lies in this network (an IPv4-mapped IPv6 address counts
    /// as its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        let (net, width) = bits(self.addr);
        let (ip, ip_width) = bits(ip);
        width == ip_width && (ip & mask(self.prefix, width)) == net
    }
}

impl FromStr for ProxyNetwork {
    type Err = ProxyNetworkError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let addr = IpAddr::from_str(addr)
            .map_err(|_| ProxyNetworkError::NotAnAddress(s.to_owned()))?
            .to_canonical();
        let (value, width) = bits(addr);
        let prefix = match prefix {
            None => width,
            // Digits only: `u8::from_str` would take "+8" too.
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= width)
                .ok_or_else(|| ProxyNetworkError::BadPrefix(s.to_owned()))?,
            Some(_) => return Err(ProxyNetworkError::BadPrefix(s.to_owned())),
        };
        if value & !mask(prefix, width) != 0 {
            let network = match addr {
                IpAddr::V4(_) => {
                    // The value is a masked 32-bit address: it fits.
                    let v4 = u32::try_from(value & mask(prefix, width)).unwrap_or(0);
                    IpAddr::from(std::net::Ipv4Addr::from(v4))
                }
                IpAddr::V6(_) => {
                    IpAddr::from(std::net::Ipv6Addr::from(value & mask(prefix, width)))
                }
            };
            return Err(ProxyNetworkError::HostBits {
                given: s.to_owned(),
                network: format!("{network}/{prefix}"),
            });
        }
        Ok(ProxyNetwork { addr, prefix })
    }
}

impl std::fmt::Display for ProxyNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Which forwarding header the trusted proxies write. Only one is read: a
/// proxy that sets one passes the other through from the client untouched,
/// so reading both would let the client choose its own address.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, …` (nginx, HAProxy, Caddy,
    /// Traefik, most load balancers).
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client, for=proxy1;proto=https, …`.
    Forwarded,
}

impl FromStr for ForwardedHeader {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("x-forwarded-for") {
            Ok(ForwardedHeader::XForwardedFor)
        } else if s.eq_ignore_ascii_case("forwarded") {
            Ok(ForwardedHeader::Forwarded)
        } else {
            Err(format!(
                "{s:?}: the forwarding header is x-forwarded-for or forwarded"
            ))
        }
    }
}

/// The proxies whose forwarding header is believed: none by default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    networks: Arc<[ProxyNetwork]>,
    header: ForwardedHeader,
}

impl TrustedProxies {
    /// Believes `header` from peers in `networks`.
    pub fn new(networks: impl IntoIterator<Item = ProxyNetwork>, header: ForwardedHeader) -> Self {
        TrustedProxies {
            networks: networks.into_iter().collect(),
            header,
        }
    }

    /// No proxy is trusted: every client is its TCP peer.
    pub fn is_empty(&self) -> bool {
        self.networks.is_empty()
    }

    /// The trusted networks.
    pub fn networks(&self) -> &[ProxyNetwork] {
        &self.networks
    }

    /// The header that is read.
    pub fn header(&self) -> ForwardedHeader {
        self.header
    }

    /// Whether `ip` is a trusted proxy.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.networks.iter().any(|n| n.contains(ip))
    }

    /// The client of a request that came from `peer` with `headers`.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.contains(peer) {
            return peer;
        }
        self.forwarded_for(headers).unwrap_or(peer)
    }

    /// The right-most forwarded address that is not a trusted proxy (or,
    /// if every one is, the left-most); `None` when the header is absent,
    /// or an element read before that one is malformed (over
    /// [`MAX_FORWARDED_ELEMENT`] bytes, not ASCII, not an address), or
    /// there are more than [`MAX_FORWARDED_HOPS`] trusted ones. Only the
    /// elements up to the client's are read: what the client wrote itself,
    /// left of it, is never looked at.
    fn forwarded_for(&self, headers: &HeaderMap) -> Option<IpAddr> {
        let name = match self.header {
            ForwardedHeader::XForwardedFor => HeaderName::from_static("x-forwarded-for"),
            ForwardedHeader::Forwarded => axum::http::header::FORWARDED,
        };
        // Several lines of one header are one comma-separated list, in order.
        let mut last = None;
        let mut hops = 0usize;
        for line in headers.get_all(&name).iter().rev() {
            for element in line.as_bytes().rsplit(|b| *b == b',') {
                hops += 1;
                if hops > MAX_FORWARDED_HOPS || element.len() > MAX_FORWARDED_ELEMENT {
                    return None;
                }
                let element = std::str::from_utf8(element).ok().filter(|e| e.is_ascii())?;
                let ip = match self.header {
                    ForwardedHeader::XForwardedFor => parse_node(element)?,
                    ForwardedHeader::Forwarded => forwarded_element_for(element)?,
                };
                if !self.contains(ip) {
                    return Some(ip);
                }
                last = Some(ip);
            }
        }
        last
    }
}

/// An address as forwarding headers write it: `192.0.2.1`, `192.0.2.1:443`,
/// `2001:db8::1`, `[2001:db8::1]`, `[2001:db8::1]:443`. Not `unknown` or an
/// obfuscated name (RFC 7239 `_hidden`): the proxy did not know either.
fn parse_node(text: &str) -> Option<IpAddr> {
    let text = text.trim_matches([' ', '\t']);
    if let Ok(ip) = IpAddr::from_str(text) {
        return Some(ip.to_canonical());
    }
    if let Ok(socket) = SocketAddr::from_str(text) {
        return Some(socket.ip().to_canonical());
    }
    let inner = text.strip_prefix('[')?.strip_suffix(']')?;
    std::net::Ipv6Addr::from_str(inner)
        .ok()
        .map(|v6| IpAddr::V6(v6).to_canonical())
}

/// The `for=` of one RFC 7239 element (`for=192.0.2.1;proto=https`,
/// `for="[2001:db8::1]:443"`).
fn forwarded_element_for(element: &str) -> Option<IpAddr> {
    let mut found = None;
    for pair in element.split(';') {
        let (name, value) = pair.trim_matches([' ', '\t']).split_once('=')?;
        if name.eq_ignore_ascii_case("for") {
            if found.is_some() {
                return None;
            }
            let value = match value.strip_prefix('"') {
                Some(quoted) => quoted.strip_suffix('"')?,
                None => value,
            };
            found = Some(parse_node(value)?);
        }
    }
    found
}

/// The client's address, for handlers: see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

impl FromRequestParts<AppState> for ClientAddr {
    type Rejection = <ConnectInfo<SocketAddr> as FromRequestParts<AppState>>::Rejection;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let ConnectInfo(peer) = ConnectInfo::<SocketAddr>::from_request_parts(parts, state).await?;
        Ok(ClientAddr(
            state.trusted_proxies.client(peer.ip(), &parts.headers),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> ProxyNetwork {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn proxies(list: &[&str]) -> TrustedProxies {
        TrustedProxies::new(list.iter().map(|s| net(s)), ForwardedHeader::XForwardedFor)
    }

    fn headers(name: &str, values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                axum::http::HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    #[test]
    fn addresses_and_networks_parse_and_match() {
        assert!(net("127.0.0.1").contains(ip("127.0.0.1")));
        assert!(!net("127.0.0.1").contains(ip("127.0.0.2")));
        assert!(net("10.0.0.0/8").contains(ip("10.255.1.2")));
        assert!(!net("10.0.0.0/8").contains(ip("11.0.0.0")));
        assert!(net("0.0.0.0/0").contains(ip("198.51.100.7")));
        assert!(!net("0.0.0.0/0").contains(ip("::1")));
        assert!(net("2001:db8::/32").contains(ip("2001:db8:ffff::1")));
        assert!(!net("2001:db8::/32").contains(ip("2001:db9::1")));
        assert!(net("::/0").contains(ip("::1")));
        assert!(net("::1/128").contains(ip("::1")));
        // A dual-stack listener sees IPv4 clients as mapped IPv6.
        assert!(net("192.0.2.0/24").contains(ip("::ffff:192.0.2.9")));
        assert!(net("::ffff:192.0.2.9").contains(ip("192.0.2.9")));
        assert_eq!(net("10.0.0.0/8").to_string(), "10.0.0.0/8");
        assert_eq!(net("::1").to_string(), "::1/128");

        assert_eq!(
            "proxy.local".parse::<ProxyNetwork>(),
            Err(ProxyNetworkError::NotAnAddress("proxy.local".into()))
        );
        for bad in [
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "10.0.0.0/-1",
            "10.0.0.0/8/8",
        ] {
            assert_eq!(
                bad.parse::<ProxyNetwork>(),
                Err(ProxyNetworkError::BadPrefix(bad.into())),
                "{bad}"
            );
        }
        assert_eq!(
            "10.0.0.1/8".parse::<ProxyNetwork>(),
            Err(ProxyNetworkError::HostBits {
                given: "10.0.0.1/8".into(),
                network: "10.0.0.0/8".into()
            })
        );
        assert_eq!(
            "2001:db8::1/32".parse::<ProxyNetwork>(),
            Err(ProxyNetworkError::HostBits {
                given: "2001:db8::1/32".into(),
                network: "2001:db8::/32".into()
            })
        );
        for bad in ["", "/8", "10.0.0.0 /8", "[::1]", "127.0.0.1:80"] {
            assert!(bad.parse::<ProxyNetwork>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_header_from_an_untrusted_peer_is_ignored() {
        let none = TrustedProxies::default();
        let spoofed = headers("x-forwarded-for", &["203.0.113.9"]);
        assert_eq!(none.client(ip("127.0.0.1"), &spoofed), ip("127.0.0.1"));
        let trusted = proxies(&["127.0.0.1"]);
        assert_eq!(
            trusted.client(ip("198.51.100.4"), &spoofed),
            ip("198.51.100.4")
        );
        assert_eq!(trusted.client(ip("127.0.0.1"), &spoofed), ip("203.0.113.9"));
    }

    #[test]
    fn the_client_is_the_rightmost_address_that_is_not_a_trusted_proxy() {
        let trusted = proxies(&["127.0.0.1", "10.0.0.0/8"]);
        let peer = ip("127.0.0.1");
        // The client wrote the left-most entries itself: ignored.
        let chain = headers(
            "x-forwarded-for",
            &["1.1.1.1, 10.9.9.9, 203.0.113.9, 10.1.2.3"],
        );
        assert_eq!(trusted.client(peer, &chain), ip("203.0.113.9"));
        // The same chain over several header lines.
        let lines = headers(
            "x-forwarded-for",
            &["1.1.1.1, 10.9.9.9", "203.0.113.9", "10.1.2.3"],
        );
        assert_eq!(trusted.client(peer, &lines), ip("203.0.113.9"));
        // Ports, brackets, mapped IPv6, spaces.
        for (value, client) in [
            ("203.0.113.9:5555", "203.0.113.9"),
            ("[2001:db8::7]:443", "2001:db8::7"),
            ("[2001:db8::7]", "2001:db8::7"),
            ("2001:db8::7 ,\t10.0.0.1", "2001:db8::7"),
            ("::ffff:203.0.113.9", "203.0.113.9"),
        ] {
            assert_eq!(
                trusted.client(peer, &headers("x-forwarded-for", &[value])),
                ip(client),
                "{value}"
            );
        }
        // Every hop trusted: the left-most one.
        let inside = headers("x-forwarded-for", &["10.0.0.5, 10.0.0.6"]);
        assert_eq!(trusted.client(peer, &inside), ip("10.0.0.5"));
        // A mapped-IPv6 peer is the trusted IPv4 proxy.
        assert_eq!(
            trusted.client(ip("::ffff:127.0.0.1"), &chain),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn garbage_falls_back_to_the_peer() {
        let trusted = proxies(&["127.0.0.1", "10.0.0.0/8"]);
        let peer = ip("127.0.0.1");
        let long = format!("203.0.113.9, {}", "1".repeat(MAX_FORWARDED_ELEMENT + 1));
        let many = "10.0.0.1,".repeat(MAX_FORWARDED_HOPS) + "10.0.0.2";
        for value in [
            "",
            " ",
            ",",
            "unknown",
            "_hidden",
            "203.0.113.9, garbage",
            "203.0.113.9,",
            "203.0.113.9 10.0.0.1",
            "[203.0.113.9]",
            "1.2.3.4.5",
            long.as_str(),
            many.as_str(),
        ] {
            assert_eq!(
                trusted.client(peer, &headers("x-forwarded-for", &[value])),
                peer,
                "{value:?}"
            );
        }
        // Not visible ASCII.
        let mut odd = HeaderMap::new();
        odd.insert(
            "x-forwarded-for",
            axum::http::HeaderValue::from_bytes(b"203.0.113.9\xff").unwrap(),
        );
        assert_eq!(trusted.client(peer, &odd), peer);
        // Garbage left of the client is the client's own writing: ignored,
        // however long and whatever its bytes — padding it must not make
        // the client count as its proxy.
        let left = headers("x-forwarded-for", &["garbage, 203.0.113.9"]);
        assert_eq!(trusted.client(peer, &left), ip("203.0.113.9"));
        let padded = format!("{}, 203.0.113.9", "x".repeat(8000));
        let padded = headers("x-forwarded-for", &[padded.as_str()]);
        assert_eq!(trusted.client(peer, &padded), ip("203.0.113.9"));
        let mut foreign = HeaderMap::new();
        foreign.insert(
            "x-forwarded-for",
            axum::http::HeaderValue::from_bytes(b"\xff\xfe caf\xc3\xa9, 203.0.113.9").unwrap(),
        );
        assert_eq!(trusted.client(peer, &foreign), ip("203.0.113.9"));
        // No header.
        assert_eq!(trusted.client(peer, &HeaderMap::new()), peer);
    }

    #[test]
    fn only_the_configured_header_is_read() {
        let xff = proxies(&["127.0.0.1"]);
        let rfc = TrustedProxies::new([net("127.0.0.1")], ForwardedHeader::Forwarded);
        let peer = ip("127.0.0.1");
        let mut both = headers("x-forwarded-for", &["203.0.113.1"]);
        both.append("forwarded", "for=203.0.113.2".parse().unwrap());
        assert_eq!(xff.client(peer, &both), ip("203.0.113.1"));
        assert_eq!(rfc.client(peer, &both), ip("203.0.113.2"));
        for (value, client) in [
            ("for=192.0.2.60;proto=http;by=203.0.113.43", "192.0.2.60"),
            ("For=\"[2001:db8:cafe::17]:4711\"", "2001:db8:cafe::17"),
            ("for=198.51.100.1, for=192.0.2.43", "192.0.2.43"),
            ("for=192.0.2.43, for=127.0.0.1", "192.0.2.43"),
            ("proto=https;for=192.0.2.43", "192.0.2.43"),
        ] {
            assert_eq!(
                rfc.client(peer, &headers("forwarded", &[value])),
                ip(client),
                "{value}"
            );
        }
        for garbage in [
            "for=unknown",
            "for=_hidden",
            "proto=https",
            "for=\"192.0.2.43",
            "for=192.0.2.43;for=192.0.2.44",
            "for",
        ] {
            assert_eq!(
                rfc.client(peer, &headers("forwarded", &[garbage])),
                peer,
                "{garbage}"
            );
        }
        assert_eq!(
            "X-Forwarded-For".parse::<ForwardedHeader>(),
            Ok(ForwardedHeader::XForwardedFor)
        );
        assert_eq!(
            "forwarded".parse::<ForwardedHeader>(),
            Ok(ForwardedHeader::Forwarded)
        );
        assert!("x-real-ip".parse::<ForwardedHeader>().is_err());
    }
}
