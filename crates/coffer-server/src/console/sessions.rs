//! The console's sign-in sessions: a random cookie naming a session this
//! process holds, which holds the user's API token and a CSRF token.
//!
//! The cookie is not an API credential (the API does not know it), and the
//! process keeps only its SHA-256, so a memory dump of the session table
//! cannot be replayed as cookies. Sessions live in this process: a restart
//! signs everyone out, and behind a load balancer a browser must stay on
//! one server (docs/server.md states both).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::http::{header, HeaderMap};
use coffer_protocol::WireSecret;
use subtle::ConstantTimeEq;

/// The cookie's name.
pub const COOKIE: &str = "coffer_console";

/// At most this many sessions at once; past it, expired ones are dropped
/// and then sign-ins refused (a flood of logins cannot grow memory).
pub const MAX_SESSIONS: usize = 10_000;

/// The `Set-Cookie` value that ends the cookie.
pub const CLEAR_COOKIE: &str =
    "coffer_console=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0";

/// One signed-in browser.
pub struct Session {
    api_token: WireSecret,
    csrf: String,
    expires_at: i64,
}

impl Session {
    /// The API session the console's requests carry.
    pub fn api_token(&self) -> &WireSecret {
        &self.api_token
    }

    /// The CSRF token every form of this session carries.
    pub fn csrf(&self) -> &str {
        &self.csrf
    }

    /// Whether a form's token is this session's (in constant time).
    pub fn csrf_matches(&self, given: &str) -> bool {
        bool::from(given.as_bytes().ct_eq(self.csrf.as_bytes()))
    }
}

/// The sessions of this process.
#[derive(Default)]
pub struct Sessions {
    by_cookie_hash: Mutex<HashMap<String, Arc<Session>>>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sessions(..)")
    }
}

impl Sessions {
    /// A new session for an API session that ends at `expires_at` (Unix
    /// seconds): the cookie's value, and the session. `None` when
    /// [`MAX_SESSIONS`] live sessions are open.
    pub fn open(&self, api_token: WireSecret, expires_at: i64) -> Option<(String, Arc<Session>)> {
        let cookie = crate::api::new_token().ok()?;
        let csrf = crate::api::new_token().ok()?;
        let session = Arc::new(Session {
            api_token,
            csrf: csrf.to_string(),
            expires_at,
        });
        let mut map = self.lock();
        if map.len() >= MAX_SESSIONS {
            let now = crate::store::now_unix();
            map.retain(|_, s| s.expires_at > now);
            if map.len() >= MAX_SESSIONS {
                return None;
            }
        }
        map.insert(crate::api::token_hash(&cookie), Arc::clone(&session));
        Some((cookie.to_string(), session))
    }

    /// The live session a cookie names.
    pub fn get(&self, cookie: &str) -> Option<Arc<Session>> {
        let key = crate::api::token_hash(cookie);
        let mut map = self.lock();
        let session = map.get(&key)?;
        if session.expires_at <= crate::store::now_unix() {
            map.remove(&key);
            return None;
        }
        Some(Arc::clone(session))
    }

    /// Ends the session a cookie names.
    pub fn close(&self, cookie: &str) {
        self.lock().remove(&crate::api::token_hash(cookie));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Session>>> {
        // A panic while holding the lock leaves a map that is still whole
        // (each operation is one insert or remove).
        self.by_cookie_hash
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The console cookie's value in a request, if any.
pub fn cookie_value(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
}

/// The `Set-Cookie` value for a new session: HttpOnly (no script reads
/// it), SameSite=Strict (no other site's page sends it), scoped to the
/// console, and Secure unless the browser is on loopback over plain HTTP.
pub fn set_cookie(value: &str, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}={value}; Path=/console; HttpOnly; SameSite=Strict{secure}")
}
