//! A user's session: `POST /v1/login`, `POST /v1/logout`.

use serde::{Deserialize, Serialize};

use crate::{json_answer, json_body, Auth, Endpoint, Method, NoContent, WireSecret};

/// `POST /v1/login`: a user's name and password for a session token.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Login {
    /// The user's name.
    pub user: String,
    /// The user's password.
    pub password: WireSecret,
}

/// The answer to [`Login`].
#[derive(Debug, Serialize, Deserialize)]
pub struct LoginAnswer {
    /// The session token, for [`crate::AUTH_HEADER`].
    pub token: WireSecret,
    /// When it expires, Unix seconds.
    pub expires_at: i64,
}

json_answer!(LoginAnswer);

impl Endpoint for Login {
    type Answer = LoginAnswer;
    const METHOD: Method = Method::Post;
    const PATH: &'static str = "/v1/login";
    const AUTH: Auth = Auth::None;
    fn body(&self) -> Option<(Vec<u8>, &'static str)> {
        json_body(self)
    }
}

/// `POST /v1/logout`: ends the session in the header.
#[derive(Debug)]
pub struct Logout;

impl Endpoint for Logout {
    type Answer = NoContent;
    const METHOD: Method = Method::Post;
    const PATH: &'static str = "/v1/logout";
    const AUTH: Auth = Auth::Session;
}
