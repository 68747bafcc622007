//! Credentials on the wire: tokens, passwords, escrow keys.

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A credential carried in a request or an answer (a device token, a
/// session token, a password, an enrollment code, an escrow key's hex).
///
/// Zeroized on drop, never `Clone`, and its `Debug` shows no byte of it:
/// the text is reached only through [`ExposeSecret::expose_secret`], which
/// is easy to grep for.
pub struct WireSecret(SecretString);

impl WireSecret {
    /// Wraps `text` (moved in: no copy is left behind).
    pub fn new(text: String) -> Self {
        WireSecret(SecretString::from(text))
    }

    /// Whether the credential is empty (an answer that carries none).
    pub fn is_empty(&self) -> bool {
        self.0.expose_secret().is_empty()
    }
}

impl ExposeSecret<str> for WireSecret {
    fn expose_secret(&self) -> &str {
        self.0.expose_secret()
    }
}

impl std::fmt::Debug for WireSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WireSecret(..)")
    }
}

impl PartialEq for WireSecret {
    fn eq(&self, other: &Self) -> bool {
        use subtle_free_eq::eq;
        eq(
            self.expose_secret().as_bytes(),
            other.expose_secret().as_bytes(),
        )
    }
}

/// Constant-time comparison without another dependency: every byte is
/// looked at whatever the first difference.
mod subtle_free_eq {
    pub fn eq(a: &[u8], b: &[u8]) -> bool {
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl From<String> for WireSecret {
    fn from(text: String) -> Self {
        WireSecret::new(text)
    }
}

/// Moves the text out of a `Zeroizing` string (no copy is left behind; the
/// emptied original zeroizes nothing but its capacity).
impl From<zeroize::Zeroizing<String>> for WireSecret {
    fn from(mut text: zeroize::Zeroizing<String>) -> Self {
        WireSecret::new(std::mem::take(&mut *text))
    }
}

impl From<&str> for WireSecret {
    fn from(text: &str) -> Self {
        WireSecret::new(text.to_owned())
    }
}

impl Serialize for WireSecret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.expose_secret())
    }
}

impl<'de> Deserialize<'de> for WireSecret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(WireSecret::new)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn debug_shows_nothing_and_serde_is_transparent() {
        let secret = WireSecret::from("hunter2-token");
        assert_eq!(format!("{secret:?}"), "WireSecret(..)");
        assert_eq!(serde_json::to_string(&secret).unwrap(), "\"hunter2-token\"");
        let back: WireSecret = serde_json::from_str("\"hunter2-token\"").unwrap();
        assert!(back == secret);
        assert!(back != WireSecret::from("hunter2-tokeN"));
    }
}
