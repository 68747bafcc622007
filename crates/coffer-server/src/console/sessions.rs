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
/// and then the oldest (a flood of logins cannot grow memory).
pub const MAX_SESSIONS: usize = 10_000;

/// At most this many sessions per user: signing in once more ends that
/// user's oldest, so one account cannot sign everyone else out.
pub const MAX_SESSIONS_PER_USER: usize = 8;

/// The `Set-Cookie` value that ends the `__Host-` cookie.
pub const CLEAR_SECURE_COOKIE: &str =
    "__Host-coffer_console=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0";

/// The `Set-Cookie` value that ends the loopback cookie.
pub const CLEAR_LOOPBACK_COOKIE: &str =
    "coffer_console=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0";

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

/// A new session: the cookie's value, and the API sessions of the
/// sessions it pushed out, which the caller ends too.
pub struct Opened {
    /// The new cookie's value.
    pub cookie: String,
    /// The API tokens of the sessions signed out to make room.
    pub evicted: Vec<WireSecret>,
}

impl Sessions {
    /// A new session of `user_id` for an API session that ends at
    /// `expires_at` (Unix seconds). Room is made by dropping expired
    /// sessions, then this user's oldest past [`MAX_SESSIONS_PER_USER`],
    /// then the server's oldest past [`MAX_SESSIONS`]: a flood of sign-ins
    /// cannot grow memory, nor lock anyone out. Without randomness the
    /// API token is handed back, to be ended.
    pub fn open(
        &self,
        api_token: WireSecret,
        user_id: i64,
        expires_at: i64,
    ) -> Result<Opened, WireSecret> {
        let (Ok(cookie), Ok(csrf)) = (crate::api::new_token(), crate::api::new_token()) else {
            return Err(api_token);
        };
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
        let mut evicted = Vec::new();
        let mut oldest_first =
            |map: &mut HashMap<String, Arc<Session>>, keep: usize, of_user: Option<i64>| {
                if map.len() < keep {
                    // Neither the table nor one user's share can be full.
                    return;
                }
                let mut held: Vec<(u64, String)> = map
                    .iter()
                    .filter(|(_, s)| of_user.is_none_or(|u| s.user_id == u))
                    .map(|(k, s)| (s.opened, k.clone()))
                    .collect();
                if held.len() >= keep {
                    held.sort_unstable();
                    let excess = held.len() + 1 - keep;
                    for (_, key) in held.into_iter().take(excess) {
                        if let Some(gone) = map.remove(&key) {
                            evicted.push(WireSecret::new(
                                secrecy::ExposeSecret::expose_secret(&gone.api_token).to_owned(),
                            ));
                        }
                    }
                }
            };
        oldest_first(map, MAX_SESSIONS_PER_USER, Some(user_id));
        oldest_first(map, MAX_SESSIONS, None);
        map.insert(crate::api::token_hash(&cookie), Arc::clone(&session));
        Ok(Opened {
            cookie: cookie.to_string(),
            evicted,
        })
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

/// The console cookie's value in a request: the `__Host-` cookie where
/// the console sets it (`secure`: over TLS or behind a proxy), the plain
/// one only for a browser on loopback over plain HTTP; the other name is
/// never read, so a cookie planted under it (by a sibling subdomain, or a
/// server on another port of the same host) names nothing. `None` when
/// there is none, or more than one (no way to tell which is ours).
pub fn cookie_value(headers: &HeaderMap, secure: bool) -> Option<&str> {
    let ours = if secure {
        SECURE_COOKIE
    } else {
        LOOPBACK_COOKIE
    };
    let mut found = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(name, _)| *name == ours)
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
        let first = sessions.open(token(0), 7, far).unwrap().cookie;
        let mut last = String::new();
        for n in 1..MAX_SESSIONS_PER_USER as u32 {
            let opened = sessions.open(token(n), 7, far).unwrap();
            assert!(opened.evicted.is_empty());
            last = opened.cookie;
        }
        // The ninth pushes out the oldest, whose API session is handed back
        // to be ended; the newest and another user's stay.
        let ninth = sessions.open(token(50), 7, far).unwrap();
        assert_eq!(ninth.evicted.len(), 1);
        assert_eq!(
            secrecy::ExposeSecret::expose_secret(&ninth.evicted[0]),
            "api-token-0"
        );
        assert!(sessions.get(&first).is_none());
        assert!(sessions.get(&last).is_some());
        assert_eq!(sessions.len(), MAX_SESSIONS_PER_USER);
        let other = sessions.open(token(99), 8, far).unwrap().cookie;
        assert!(sessions.get(&other).is_some());
        assert_eq!(sessions.len(), MAX_SESSIONS_PER_USER + 1);
        // An expired session is never given out.
        let stale = sessions.open(token(100), 9, 0).unwrap().cookie;
        assert!(sessions.get(&stale).is_none());
    }

    #[test]
    fn a_full_table_signs_out_its_oldest_rather_than_refusing() {
        let sessions = Sessions::default();
        let far = crate::store::now_unix() + 3600;
        let first = sessions.open(token(0), 0, far).unwrap().cookie;
        for user in 1..MAX_SESSIONS as i64 {
            sessions.open(token(1), user, far).unwrap();
        }
        assert_eq!(sessions.len(), MAX_SESSIONS);
        let late = sessions.open(token(2), -1, far).unwrap();
        assert_eq!(late.evicted.len(), 1);
        assert!(sessions.get(&first).is_none());
        assert!(sessions.get(&late.cookie).is_some());
        assert_eq!(sessions.len(), MAX_SESSIONS);
    }

    #[test]
    fn only_the_cookie_of_the_context_is_read_and_only_once() {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, "a=1; coffer_console=x".parse().unwrap());
        assert_eq!(cookie_value(&h, false), Some("x"));
        // Over TLS the plain cookie (which anyone on the host could plant)
        // names nothing.
        assert_eq!(cookie_value(&h, true), None);
        h.insert(
            header::COOKIE,
            "__Host-coffer_console=y; coffer_console=x".parse().unwrap(),
        );
        assert_eq!(cookie_value(&h, true), Some("y"));
        assert_eq!(cookie_value(&h, false), Some("x"));
        h.insert(
            header::COOKIE,
            "coffer_console=y; coffer_console=x".parse().unwrap(),
        );
        assert_eq!(cookie_value(&h, false), None);
        h.remove(header::COOKIE);
        assert_eq!(cookie_value(&h, false), None);
        assert!(set_cookie("v", true).starts_with("__Host-coffer_console=v; Path=/; Secure"));
        assert!(!set_cookie("v", false).contains("Secure"));
    }
}
