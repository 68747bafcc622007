//! The first rule every listener obeys: plain HTTP only on loopback
//! (docs/threat-model.md, "the network").

use std::net::SocketAddr;

/// How a listener would carry its traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// TLS (rustls) with a certificate from files or a generated development one.
    Tls,
    /// Plain HTTP.
    Plain,
}

/// A listener configuration that the server refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ListenError {
    /// Plain HTTP on an address other machines can reach.
    #[error(
        "refusing plain HTTP on {0}: only loopback addresses may go without TLS \
         (give a certificate, use --dev-tls, or force it explicitly)"
    )]
    PlainOffLoopback(SocketAddr),
}

/// Checks that `addr` may be served with `transport`.
///
/// TLS is allowed anywhere. Plain HTTP is allowed on loopback (127.0.0.0/8,
/// ::1), and elsewhere only when `force_plain` is set — for a deployment
/// behind a TLS-terminating proxy on the same host, which the operator must
/// choose knowingly.
pub fn check_listen(
    addr: SocketAddr,
    transport: Transport,
    force_plain: bool,
) -> Result<(), ListenError> {
    match transport {
        Transport::Tls => Ok(()),
        Transport::Plain if addr.ip().is_loopback() || force_plain => Ok(()),
        Transport::Plain => Err(ListenError::PlainOffLoopback(addr)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn plain_http_only_on_loopback_unless_forced() {
        for ok in ["127.0.0.1:8080", "127.8.9.10:1", "[::1]:443"] {
            assert_eq!(check_listen(addr(ok), Transport::Plain, false), Ok(()));
        }
        for exposed in [
            "0.0.0.0:8080",
            "192.0.2.7:80",
            "[::]:8080",
            "[2001:db8::1]:80",
        ] {
            assert_eq!(
                check_listen(addr(exposed), Transport::Plain, false),
                Err(ListenError::PlainOffLoopback(addr(exposed)))
            );
            assert_eq!(check_listen(addr(exposed), Transport::Plain, true), Ok(()));
            assert_eq!(check_listen(addr(exposed), Transport::Tls, false), Ok(()));
        }
    }
}
