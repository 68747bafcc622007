//! The default transport: reqwest (blocking) over rustls. It trusts the
//! server as [`Trust`] says (a pinned certificate, a CA file, or the
//! system's roots), follows no redirect (one would carry the device's
//! token elsewhere), reads at most the answer limit, and times out.
//!
//! Each request's deadline covers the whole request, answer included, and
//! grows with the bytes it may move: the connector's timeout (30 s by
//! default), plus the request's body and an answer larger than the
//! default limit (a ranged fetch of a file, a pull page) at
//! [`FLOOR_RATE`], 16 KiB/s (128 kbit/s). A 4 MiB piece gets 30 + 256 s,
//! an 8 MiB range 30 + 512 s; a small request keeps 30 s.

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::error::{Error, TransportError};
use crate::transport::{Connector, Server, Transport, Trust};

/// The slowest link a request is given time for, bytes per second: 16 KiB/s
/// (128 kbit/s). A request's deadline is its connector's timeout plus the
/// bytes it may move at this rate ([`request_deadline`]).
pub const FLOOR_RATE: u64 = 16 * 1024;

/// The deadline of one request whose body is `body_len` bytes and whose
/// answer may be `max_answer` bytes: `base`, plus those bytes at
/// [`FLOOR_RATE`] (whole seconds). The answer counts only when its limit is
/// above the default one ([`crate::transport::MAX_ANSWER`]: a ranged fetch
/// of a file, a pull page); the body always (a piece, a push batch; a few
/// hundred bytes of JSON add nothing).
pub fn request_deadline(base: Duration, body_len: usize, max_answer: usize) -> Duration {
    let answer = if max_answer > crate::transport::MAX_ANSWER {
        max_answer
    } else {
        0
    };
    let bytes = u64::try_from(body_len)
        .unwrap_or(u64::MAX)
        .saturating_add(u64::try_from(answer).unwrap_or(u64::MAX));
    base.saturating_add(Duration::from_secs(bytes / FLOOR_RATE))
}

/// Makes reqwest transports. Each request gets its own deadline, scaled by
/// the bytes it moves ([`request_deadline`]: the timeout, plus its body and
/// a large answer at 16 KiB/s), so a 4 MiB piece or an 8 MiB range gets
/// through a weak link (128 kbit/s) while a small request keeps the
/// timeout.
#[derive(Debug, Clone)]
pub struct ReqwestConnector {
    timeout: Duration,
}

impl Default for ReqwestConnector {
    fn default() -> Self {
        ReqwestConnector {
            timeout: Duration::from_secs(30),
        }
    }
}

impl ReqwestConnector {
    /// A connector whose small requests give up after `timeout` in all (a
    /// server that drips its answer byte by byte is cut off too); larger
    /// ones get more, at [`FLOOR_RATE`] ([`request_deadline`]).
    pub fn with_timeout(timeout: Duration) -> Self {
        ReqwestConnector { timeout }
    }
}

/// Trusts exactly the certificate whose SHA-256 is pinned (still checking
/// the handshake's signature with its key): for self-signed servers.
#[derive(Debug)]
struct PinnedCertificate {
    pin: [u8; 32],
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for PinnedCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let seen: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        if subtle::ConstantTimeEq::ct_eq(&seen[..], &self.pin[..]).into() {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// TLS settings that trust exactly the certificate whose SHA-256 is
/// `pin` (the MQTT broker's, as the server's is trusted).
pub(crate) fn pinned_config(pin: [u8; 32]) -> Result<rustls::ClientConfig, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(
        rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::TlsSetup(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedCertificate { pin, provider }))
            .with_no_client_auth(),
    )
}

impl Connector for ReqwestConnector {
    fn connect(&self, server: &Server) -> Result<Box<dyn Transport>, Error> {
        let failed = |e: &dyn std::fmt::Display| Error::TlsSetup(e.to_string());
        let builder = reqwest::blocking::Client::builder()
            .timeout(self.timeout)
            .connect_timeout(self.timeout.min(Duration::from_secs(10)))
            .redirect(reqwest::redirect::Policy::none());
        let builder = match server.trust() {
            Trust::Pin(pin) => builder.use_preconfigured_tls(pinned_config(*pin)?),
            Trust::Ca(pem) => {
                let cert = reqwest::Certificate::from_pem(pem).map_err(|_| Error::InvalidCaCert)?;
                builder
                    .tls_built_in_root_certs(false)
                    .add_root_certificate(cert)
            }
            Trust::System => builder,
        };
        Ok(Box::new(ReqwestTransport {
            client: builder.build().map_err(|e| failed(&e))?,
            timeout: self.timeout,
        }))
    }
}

struct ReqwestTransport {
    client: reqwest::blocking::Client,
    /// The base of each request's deadline for the whole answer, body
    /// included ([`request_deadline`]; the client's own timeout limits each
    /// read, which a drip of one byte at a time never trips).
    timeout: Duration,
}

fn transport_error(e: &reqwest::Error) -> TransportError {
    let text = format!("{e:?}");
    if text.contains("InvalidCertificate") || text.contains("UnknownIssuer") {
        TransportError::Untrusted
    } else if e.is_timeout() {
        TransportError::TimedOut
    } else {
        // Without the URL: it is the user's own, but keeps messages short.
        TransportError::Unreachable(crate::transport::bounded(
            &e.without_url_ref().to_string(),
            300,
        ))
    }
}

/// `reqwest::Error::without_url` consumes; this gives the text without it.
trait WithoutUrlRef {
    fn without_url_ref(&self) -> String;
}

impl WithoutUrlRef for reqwest::Error {
    fn without_url_ref(&self) -> String {
        let mut text = self.to_string();
        if let Some(url) = self.url() {
            text = text
                .replace(&format!(" ({url})"), "")
                .replace(url.as_str(), "");
        }
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        text
    }
}

impl Transport for ReqwestTransport {
    fn send(
        &self,
        request: http::Request<Vec<u8>>,
        max_answer: usize,
    ) -> Result<http::Response<Vec<u8>>, TransportError> {
        let deadline = request_deadline(self.timeout, request.body().len(), max_answer);
        let mut request = reqwest::blocking::Request::try_from(request)
            .map_err(|e| TransportError::Unreachable(e.to_string()))?;
        *request.timeout_mut() = Some(deadline);
        let mut response = self
            .client
            .execute(request)
            .map_err(|e| transport_error(&e))?;
        if response
            .content_length()
            .is_some_and(|n| n > max_answer as u64)
        {
            return Err(TransportError::TooLarge { limit: max_answer });
        }
        let mut answer = http::Response::builder().status(response.status());
        for (name, value) in response.headers() {
            answer = answer.header(name, value);
        }
        // Read one byte past the limit, never more: a 10 MB answer costs
        // 1 MiB of memory and is refused.
        let limit = u64::try_from(max_answer)
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        // Sized at once when the length is known (at most the limit): no
        // copy of a file's bytes is left behind in a buffer outgrown.
        let mut body = Vec::with_capacity(
            usize::try_from(response.content_length().unwrap_or(0).min(limit)).unwrap_or(0),
        );
        (&mut response)
            .take(limit)
            .read_to_end(&mut body)
            .map_err(|e| {
                let timed_out = e.kind() == std::io::ErrorKind::TimedOut
                    || e.get_ref()
                        .and_then(|inner| inner.downcast_ref::<reqwest::Error>())
                        .is_some_and(reqwest::Error::is_timeout);
                if timed_out {
                    TransportError::TimedOut
                } else {
                    TransportError::Unreachable(format!("the answer was cut off: {e}"))
                }
            })?;
        if body.len() > max_answer {
            return Err(TransportError::TooLarge { limit: max_answer });
        }
        answer
            .body(body)
            .map_err(|e| TransportError::Unreachable(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The deadline itself: a real link at 16 KiB/s would take minutes
    // per piece (the transport hands this value to reqwest's per-request
    // timeout, which covers the whole request, body included).
    #[test]
    fn a_deadline_grows_with_the_bytes_a_request_moves() {
        let base = Duration::from_secs(30);
        let mib = 1024 * 1024;
        // Small requests, and answers within the default limit: the base.
        assert_eq!(
            request_deadline(base, 0, crate::transport::MAX_ANSWER),
            base
        );
        assert_eq!(
            request_deadline(base, 300, crate::transport::MAX_ANSWER),
            base
        );
        // A 4 MiB piece at 16 KiB/s: 256 s more.
        assert_eq!(
            request_deadline(base, 4 * mib, crate::transport::MAX_ANSWER),
            Duration::from_secs(30 + 256)
        );
        // An 8 MiB range: 512 s more.
        let range = coffer_protocol::files::MAX_FETCH_RANGE as usize;
        assert_eq!(
            request_deadline(base, 0, range),
            Duration::from_secs(30 + 512)
        );
        // Every size: the bytes at 16 KiB/s fit, with all but at most a
        // second of the base left for the rest of the request.
        for bytes in [
            1,
            16 * 1024 - 1,
            16 * 1024,
            64 * 1024 + 1,
            4 * mib + 7,
            8 * mib,
        ] {
            let at_floor = Duration::from_secs_f64(bytes as f64 / FLOOR_RATE as f64);
            let deadline = request_deadline(base, bytes, 0);
            assert!(deadline <= base + at_floor, "{bytes}: {deadline:?}");
            assert!(
                deadline + Duration::from_secs(1) > base + at_floor,
                "{bytes}: {deadline:?}"
            );
        }
        // A connector's own timeout is the base.
        assert_eq!(
            request_deadline(Duration::from_secs(2), 0, 1024),
            Duration::from_secs(2)
        );
        assert_eq!(
            request_deadline(Duration::MAX, usize::MAX, usize::MAX),
            Duration::MAX
        );
    }
}
