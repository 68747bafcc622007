//! Whether a form came from this console's own origin.
//!
//! Browsers send `Origin` with every cross-site POST (and, under the
//! console's `Referrer-Policy: same-origin`, with its own). It must be the
//! whole origin the browser reached this server at: the scheme (this
//! server's, or `https` when a proxy says it terminated TLS), the host and
//! the port, default ports aside. A request without `Origin` is not a
//! browser's form; the CSRF token still has to match.

use axum::http::{header, HeaderMap};

/// Whether the request's `Origin`, if any, is this server.
pub(super) fn same_origin(headers: &HeaderMap, tls: bool) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let (Ok(origin), Some(Ok(host))) = (
        origin.to_str(),
        headers.get(header::HOST).map(|h| h.to_str()),
    ) else {
        return false;
    };
    let scheme = if tls || proxy_says_https(headers) {
        "https"
    } else {
        "http"
    };
    match (
        normal_origin(origin),
        normal_origin(&format!("{scheme}://{host}")),
    ) {
        (Some(given), Some(own)) => given == own,
        _ => false,
    }
}

/// `scheme://host[:port]` in lower case, without the scheme's default
/// port; `None` for anything else (`null`, a path, userinfo).
fn normal_origin(text: &str) -> Option<String> {
    let text = text.to_ascii_lowercase();
    let (scheme, authority) = text.split_once("://")?;
    let default_port = match scheme {
        "https" => ":443",
        "http" => ":80",
        _ => return None,
    };
    if authority.is_empty() || authority.contains(['/', '@', '?', '#', ' ']) {
        return None;
    }
    let authority = authority.strip_suffix(default_port).unwrap_or(authority);
    Some(format!("{scheme}://{authority}"))
}

/// Whether a proxy in front said the browser spoke HTTPS to it.
fn proxy_says_https(headers: &HeaderMap) -> bool {
    let x_forwarded = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"));
    let forwarded = headers
        .get(header::FORWARDED)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split([';', ','])
                .filter_map(|pair| pair.trim().split_once('='))
                .any(|(k, v)| k.eq_ignore_ascii_case("proto") && v.trim_matches('"') == "https")
        });
    x_forwarded || forwarded
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::same_origin;
    use axum::http::HeaderMap;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.insert(*name, value.parse().unwrap());
        }
        h
    }

    #[test]
    fn the_whole_origin_must_be_this_server() {
        let own = [("host", "console.example:8443")];
        let with = |origin: &'static str| {
            let mut h = headers(&own);
            h.insert("origin", origin.parse().unwrap());
            h
        };
        assert!(same_origin(&with("https://console.example:8443"), true));
        assert!(same_origin(&with("HTTPS://Console.Example:8443"), true));
        // The wrong scheme, port or host; an opaque origin; junk.
        assert!(!same_origin(&with("http://console.example:8443"), true));
        assert!(!same_origin(&with("https://console.example:8444"), true));
        assert!(!same_origin(&with("https://console.example"), true));
        assert!(!same_origin(&with("https://evil.example:8443"), true));
        assert!(!same_origin(&with("null"), true));
        assert!(!same_origin(&with("https://a@console.example:8443"), true));
        // No Origin: not a browser's form (the CSRF token decides).
        assert!(same_origin(&headers(&own), true));
        // An Origin with no Host to compare it with.
        assert!(!same_origin(
            &headers(&[("origin", "https://console.example:8443")]),
            true
        ));
    }

    #[test]
    fn default_ports_and_a_tls_proxy_are_understood() {
        let h = headers(&[("host", "c.example:443"), ("origin", "https://c.example")]);
        assert!(same_origin(&h, true));
        assert!(!same_origin(&h, false));
        let proxied = headers(&[
            ("host", "c.example"),
            ("origin", "https://c.example"),
            ("x-forwarded-proto", "https"),
        ]);
        assert!(same_origin(&proxied, false));
        let forwarded = headers(&[
            ("host", "c.example"),
            ("origin", "https://c.example"),
            ("forwarded", "for=192.0.2.1;proto=https"),
        ]);
        assert!(same_origin(&forwarded, false));
        let plain = headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:8080"),
        ]);
        assert!(same_origin(&plain, false));
        assert!(!same_origin(&plain, true));
    }
}
