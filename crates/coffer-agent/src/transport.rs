//! How the agent reaches the control plane: a small [`Transport`] trait
//! (an `http::Request<Vec<u8>>` in, an `http::Response<Vec<u8>>` out), a
//! [`Connector`] that makes one for a server and the way it is trusted,
//! and above them the typed [`Client::send`] of `coffer_protocol`'s
//! endpoints. The default connector is reqwest over rustls
//! ([`crate::http::ReqwestConnector`]); tests plug in their own.

use coffer_protocol::{Answer, Auth, Endpoint, ErrorBody, ErrorCode};
use secrecy::ExposeSecret;

use crate::error::{Error, TransportError};

/// How the device trusts the control plane's certificate.
#[derive(Clone, PartialEq, Eq)]
pub enum Trust {
    /// The SHA-256 of the server's certificate (DER), as `coffer serve
    /// --dev-tls` prints it: exactly that certificate, nothing else.
    Pin([u8; 32]),
    /// A CA (or the server's own) certificate, PEM.
    Ca(Vec<u8>),
    /// The system's roots.
    System,
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Trust::Pin(pin) => write!(f, "Pin({})", hex::encode(pin)),
            Trust::Ca(_) => f.write_str("Ca(..)"),
            Trust::System => f.write_str("System"),
        }
    }
}

impl Trust {
    /// Parses a fingerprint: 64 hex digits, with or without colons.
    pub fn parse_pin(text: &str) -> Result<Trust, Error> {
        let digits: String = text.chars().filter(|c| *c != ':').collect();
        let mut pin = [0u8; 32];
        hex::decode_to_slice(digits.trim(), &mut pin).map_err(|_| Error::InvalidPin)?;
        Ok(Trust::Pin(pin))
    }
}

/// A control plane: its URL and how it is trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    url: String,
    trust: Trust,
}

impl Server {
    /// A control plane at `url`: `https://`, or plain `http://` to this
    /// machine only (127.0.0.1, ::1, localhost), where `coffer serve`
    /// serves without TLS. Anywhere else a pin would protect nothing and
    /// every token would travel in clear.
    pub fn new(url: &str, trust: Trust) -> Result<Server, Error> {
        let refused = || Error::InvalidServerUrl {
            url: bounded(url, 200),
        };
        let url = url.trim_end_matches('/');
        let (scheme, rest) = url.split_once("://").ok_or_else(refused)?;
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        if authority.is_empty() || authority.contains('@') || rest.contains(['?', '#']) {
            return Err(refused());
        }
        let host = if let Some(v6) = authority.strip_prefix('[') {
            v6.split(']').next().map(|h| format!("[{h}]"))
        } else {
            authority.split(':').next().map(str::to_owned)
        }
        .unwrap_or_default();
        match scheme.to_ascii_lowercase().as_str() {
            "https" => {}
            "http" if matches!(host.as_str(), "localhost" | "127.0.0.1" | "[::1]") => {}
            _ => return Err(refused()),
        }
        Ok(Server {
            url: url.to_owned(),
            trust,
        })
    }

    /// The URL, without a trailing slash.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// How it is trusted.
    pub fn trust(&self) -> &Trust {
        &self.trust
    }
}

/// Sends one request and returns the answer, whatever its status. A
/// transport follows no redirect, reads at most `max_answer` bytes of a
/// body (more is [`TransportError::TooLarge`]) and gives up after its
/// timeout.
pub trait Transport {
    /// Sends `request` (its URI is absolute).
    fn send(
        &self,
        request: http::Request<Vec<u8>>,
        max_answer: usize,
    ) -> Result<http::Response<Vec<u8>>, TransportError>;
}

/// Makes a [`Transport`] for a control plane.
pub trait Connector: Send + Sync {
    /// A transport that trusts `server` as it says.
    fn connect(&self, server: &Server) -> Result<Box<dyn Transport>, Error>;
}

/// Largest answer the agent reads, bytes: far above any answer of the
/// device protocol (a policy is a few KiB), far below what would hurt.
pub const MAX_ANSWER: usize = coffer_protocol::DEFAULT_MAX_ANSWER;

/// A typed client of one control plane.
pub struct Client {
    transport: Box<dyn Transport>,
    base: String,
}

/// The credentials a request carries, in headers (never in the URL).
#[derive(Clone, Copy, Default)]
pub struct Credentials<'a> {
    /// For [`coffer_protocol::AUTH_HEADER`].
    pub token: Option<&'a coffer_protocol::WireSecret>,
    /// For [`coffer_protocol::USER_HEADER`].
    pub user: Option<&'a coffer_protocol::WireSecret>,
}

impl Client {
    /// A client of `server` through `connector`.
    pub fn new(connector: &dyn Connector, server: &Server) -> Result<Client, Error> {
        Ok(Client {
            transport: connector.connect(server)?,
            base: server.url().to_owned(),
        })
    }

    /// Sends `endpoint` with `credentials`; its answer, decoded and typed.
    /// A refusal is [`Error::Refused`] with the server's code; an answer
    /// that does not decode as the endpoint's is [`Error::BadAnswer`].
    pub fn send<E: Endpoint>(
        &self,
        endpoint: &E,
        credentials: Credentials<'_>,
    ) -> Result<E::Answer, Error> {
        let mut request = http::Request::builder()
            .method(E::METHOD.as_str())
            .uri(format!("{}{}", self.base, endpoint.path()))
            .header(http::header::ACCEPT, "application/json");
        if E::AUTH != Auth::None {
            if let Some(token) = credentials.token {
                request = request.header(coffer_protocol::AUTH_HEADER, token.expose_secret());
            }
        }
        if let Some(user) = credentials.user {
            request = request.header(coffer_protocol::USER_HEADER, user.expose_secret());
        }
        for (name, value) in endpoint.headers() {
            request = request.header(name, value);
        }
        let body = match endpoint.body() {
            Some((body, content_type)) => {
                request = request.header(http::header::CONTENT_TYPE, content_type);
                body
            }
            None => Vec::new(),
        };
        let request = request
            .body(body)
            .map_err(|_| Error::BadRequest { endpoint: E::PATH })?;
        let mut answer = self
            .transport
            .send(request, E::MAX_ANSWER)
            .map_err(Error::Transport)?;
        let result = Self::read_answer::<E>(&answer);
        // The answer's bytes (a file's range, a token) are copied out by
        // now: the transport's buffer is this client's to clear.
        zeroize::Zeroize::zeroize(answer.body_mut());
        result
    }

    /// The typed answer, or the refusal, of `answer` to `E`.
    fn read_answer<E: Endpoint>(answer: &http::Response<Vec<u8>>) -> Result<E::Answer, Error> {
        let status = answer.status();
        let body = answer.body();
        if body.len() > E::MAX_ANSWER {
            return Err(Error::Transport(TransportError::TooLarge {
                limit: E::MAX_ANSWER,
            }));
        }
        if status.is_redirection() {
            return Err(Error::Transport(TransportError::Redirected {
                status: status.as_u16(),
            }));
        }
        if status.is_success() {
            return E::Answer::decode(body).map_err(|e| Error::BadAnswer {
                endpoint: E::PATH,
                problem: bounded(&e.to_string(), 200),
            });
        }
        let (code, message) = match ErrorBody::decode(body) {
            Ok(ErrorBody { error }) => (
                match error.code {
                    ErrorCode::Unknown(code) => ErrorCode::Unknown(bounded(&code, 64)),
                    known => known,
                },
                bounded(&error.message, 500),
            ),
            Err(_) => (
                ErrorCode::Unknown(String::new()),
                "(the error answer is not coffer's JSON)".to_owned(),
            ),
        };
        let retry_after = answer
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok());
        Err(Error::Refused {
            status: status.as_u16(),
            code,
            message,
            retry_after,
        })
    }
}

/// At most `max` characters of a server's text, escaped
/// ([`coffer_protocol::untrusted`]): a hostile server's string is data,
/// never a line of its own in the user's terminal or log.
pub(crate) fn bounded(text: &str, max: usize) -> String {
    coffer_protocol::untrusted::Untrusted::new(text)
        .at_most(max)
        .to_string()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn server_urls_are_https_or_loopback_http() {
        for good in [
            "https://cp.example:8443",
            "https://cp.example/",
            "http://127.0.0.1:8443",
            "http://localhost:1",
            "http://[::1]:8443",
        ] {
            assert!(Server::new(good, Trust::System).is_ok(), "{good}");
        }
        for bad in [
            "http://cp.example",
            "http://127.0.0.1.evil.example",
            "http://localhost@evil.example",
            "ftp://127.0.0.1",
            "cp.example",
            "https://",
            "https://cp.example/?token=1",
        ] {
            assert!(
                matches!(
                    Server::new(bad, Trust::System),
                    Err(Error::InvalidServerUrl { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_hostile_string_is_bounded_and_has_no_control_characters() {
        let text = format!("ok\nINFO forged\x1b[31m{}", "x".repeat(1000));
        let shown = bounded(&text, 50);
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
        assert!(
            shown.starts_with("ok\\u{a}INFO forged\\u{1b}[31mxxx"),
            "{shown}"
        );
        assert!(shown.ends_with(&format!("…(+{} bytes)", text.len() - 50)));
    }

    #[test]
    fn pins_parse_with_or_without_colons() {
        let hex = "ab".repeat(32);
        let colons = vec!["AB"; 32].join(":");
        assert_eq!(
            Trust::parse_pin(&hex).unwrap(),
            Trust::parse_pin(&colons).unwrap()
        );
        assert!(matches!(Trust::parse_pin("abc"), Err(Error::InvalidPin)));
    }
}
