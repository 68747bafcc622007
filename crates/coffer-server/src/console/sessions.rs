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

/// The cookie's name over HTTPS: the `__Host-` prefix makes a browser
/// refuse it unless it is Secure, for this host only, and for every path,
/// so a sibling subdomain or a plain-HTTP page cannot plant one.
pub const SECURE_COOKIE: &str = "__Host-coffer_console";

/// The cookie's name over plain HTTP on loopback (where a `__Host-` cookie
/// cannot be set).
pub const LOOPBACK_COOKIE: &str = "coffer_console";

/// At most this many sessions at once; past it, expired ones are dropped
/// and then sign-ins refused (a flood of logins cannot grow memory).
pub const MAX_SESSIONS: usize = 10_000;

/// At most this many sessions per user: signing in once more ends that
/// user's oldest, so one account cannot fill the table.
pub const MAX_SESSIONS_PER_USER: usize = 8;

/// The `Set-Cookie` values that end both cookies.
pub const CLEAR_COOKIES: [&str; 2] = [
    "__Host-coffer_console=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0",
    "coffer_console=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0",
];

/// One signed-in browser.
pub struct Session {
    api_token: WireSecret,
    csrf: String,
    user_id: i64,
    opened: u64,
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
    inner: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    by_cookie_hash: HashMap<String, Arc<Session>>,
    /// Counts sign-ins, to tell a user's oldest session.
    opened: u64,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sessions(..)")
    }
}

impl Sessions {
    /// A new session of `user_id` for an API session that ends at
    /// `expires_at` (Unix seconds): the cookie's value, and the session.
    /// `None` when [`MAX_SESSIONS`] live sessions are open.
    pub fn open(
        &self,
        api_token: WireSecret,
        user_id: i64,
        expires_at: i64,
    ) -> Option<(String, Arc<Session>)> {
        let cookie = crate::api::new_token().ok()?;
        let csrf = crate::api::new_token().ok()?;
        let mut table = self.lock();
        table.opened += 1;
        let session = Arc::new(Session {
            api_token,
            csrf: csrf.to_string(),
            user_id,
            opened: table.opened,
            expires_at,
        });
        let map = &mut table.by_cookie_hash;
        let now = crate::store::now_unix();
        map.retain(|_, s| s.expires_at > now);
        let mut theirs: Vec<(u64, String)> = map
            .iter()
            .filter(|(_, s)| s.user_id == user_id)
            .map(|(k, s)| (s.opened, k.clone()))
            .collect();
        if theirs.len() >= MAX_SESSIONS_PER_USER {
            theirs.sort_unstable();
            let excess = theirs.len() + 1 - MAX_SESSIONS_PER_USER;
            for (_, key) in theirs.into_iter().take(excess) {
                map.remove(&key);
            }
        }
        if map.len() >= MAX_SESSIONS {
            return None;
        }
        map.insert(crate::api::token_hash(&cookie), Arc::clone(&session));
        Some((cookie.to_string(), session))
    }

    /// The live session a cookie names.
    pub fn get(&self, cookie: &str) -> Option<Arc<Session>> {
        let key = crate::api::token_hash(cookie);
        let mut table = self.lock();
        let session = table.by_cookie_hash.get(&key)?;
        if session.expires_at <= crate::store::now_unix() {
            table.by_cookie_hash.remove(&key);
            return None;
        }
        Some(Arc::clone(session))
    }

    /// Ends the session a cookie names.
    pub fn close(&self, cookie: &str) {
        self.lock()
            .by_cookie_hash
            .remove(&crate::api::token_hash(cookie));
    }

    /// How many sessions are held (expired ones included until swept).
    pub fn len(&self) -> usize {
        self.lock().by_cookie_hash.len()
    }

    /// Whether no session is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        // A panic while holding the lock leaves a table that is still
        // whole (each step is one insert or remove).
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The console cookie's value in a request: `None` when there is none, or
/// more than one (another page of this host may have planted a second one,
/// and a browser gives no way to tell which is ours).
pub fn cookie_value(headers: &HeaderMap) -> Option<&str> {
    let mut found = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(name, _)| *name == SECURE_COOKIE || *name == LOOPBACK_COOKIE)
        .map(|(_, value)| value);
    let first = found.next()?;
    found.next().is_none().then_some(first)
}

/// The `Set-Cookie` value for a new session: HttpOnly (no script reads
/// it), SameSite=Strict (no other site's page sends it), and either the
/// `__Host-` cookie (Secure) or, for a browser on loopback over plain
/// HTTP, a cookie scoped to the console's paths.
pub fn set_cookie(value: &str, secure: bool) -> String {
    if secure {
        format!("{SECURE_COOKIE}={value}; Path=/; Secure; HttpOnly; SameSite=Strict")
    } else {
        format!("{LOOPBACK_COOKIE}={value}; Path=/console; HttpOnly; SameSite=Strict")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn token(n: u32) -> WireSecret {
        WireSecret::new(format!("api-token-{n}"))
    }

    #[test]
    fn one_user_cannot_hold_more_than_their_share() {
        let sessions = Sessions::default();
        let far = crate::store::now_unix() + 3600;
        let (first, _) = sessions.open(token(0), 7, far).unwrap();
        let mut last = String::new();
        for n in 1..=MAX_SESSIONS_PER_USER as u32 {
            last = sessions.open(token(n), 7, far).unwrap().0;
        }
        // The oldest went; the newest and another user's stay.
        assert!(sessions.get(&first).is_none());
        assert!(sessions.get(&last).is_some());
        assert_eq!(sessions.len(), MAX_SESSIONS_PER_USER);
        let (other, _) = sessions.open(token(99), 8, far).unwrap();
        assert!(sessions.get(&other).is_some());
        assert_eq!(sessions.len(), MAX_SESSIONS_PER_USER + 1);
        // An expired session is never given out.
        let (stale, _) = sessions.open(token(100), 9, 0).unwrap();
        assert!(sessions.get(&stale).is_none());
    }

    #[test]
    fn two_console_cookies_name_no_session() {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, "a=1; coffer_console=x".parse().unwrap());
        assert_eq!(cookie_value(&h), Some("x"));
        h.insert(
            header::COOKIE,
            "__Host-coffer_console=y; coffer_console=x".parse().unwrap(),
        );
        assert_eq!(cookie_value(&h), None);
        h.insert(
            header::COOKIE,
            "coffer_console=y; coffer_console=x".parse().unwrap(),
        );
        assert_eq!(cookie_value(&h), None);
        h.remove(header::COOKIE);
        assert_eq!(cookie_value(&h), None);
        assert!(set_cookie("v", true).starts_with("__Host-coffer_console=v; Path=/; Secure"));
        assert!(!set_cookie("v", false).contains("Secure"));
    }
}
