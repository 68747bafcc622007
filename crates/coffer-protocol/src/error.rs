//! Error answers: `{"error": {"code": "...", "message": "..."}}`, with a
//! stable code for programs and a message for people.

use serde::{Deserialize, Serialize};

macro_rules! error_codes {
    ($($(#[$doc:meta])* $variant:ident = $text:literal,)*) => {
        /// The stable `code` of an error answer (docs/protocol.md,
        /// docs/server.md). A code this version does not know is kept as
        /// [`ErrorCode::Unknown`]: a device refuses to act on it.
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum ErrorCode {
            $($(#[$doc])* $variant,)*
            /// A code from a newer server.
            Unknown(String),
        }

        impl ErrorCode {
            /// Every code this version defines.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The code's text.
            pub fn as_str(&self) -> &str {
                match self {
                    $(ErrorCode::$variant => $text,)*
                    ErrorCode::Unknown(text) => text,
                }
            }

            /// The code's text when this version defines it (`None` for
            /// [`ErrorCode::Unknown`]).
            pub fn known(&self) -> Option<&'static str> {
                match self {
                    $(ErrorCode::$variant => Some($text),)*
                    ErrorCode::Unknown(_) => None,
                }
            }
        }

        impl From<&str> for ErrorCode {
            fn from(text: &str) -> Self {
                match text {
                    $($text => ErrorCode::$variant,)*
                    other => ErrorCode::Unknown(other.to_owned()),
                }
            }
        }
    };
}

error_codes! {
    /// The request is not understood.
    BadRequest = "bad_request",
    /// The body is not JSON.
    NotJson = "not_json",
    /// The body is JSON but not well-formed.
    MalformedJson = "malformed_json",
    /// The body is JSON of the wrong shape.
    InvalidBody = "invalid_body",
    /// Over the body limit.
    BodyTooLarge = "body_too_large",
    /// Not a content type the endpoint takes.
    UnsupportedMediaType = "unsupported_media_type",
    /// A credential in the query string.
    CredentialInQuery = "credential_in_query",
    /// A query parameter is invalid.
    InvalidQuery = "invalid_query",
    /// No credential given.
    Unauthenticated = "unauthenticated",
    /// The token is not (or no longer) valid.
    InvalidToken = "invalid_token",
    /// The session has expired.
    TokenExpired = "token_expired",
    /// Wrong user name or password.
    InvalidCredentials = "invalid_credentials",
    /// The setup token is wrong or spent.
    InvalidSetupToken = "invalid_setup_token",
    /// The server is already set up.
    AlreadySetUp = "already_set_up",
    /// The role may not do this.
    Forbidden = "forbidden",
    /// Nothing there (or not this caller's to see).
    NotFound = "not_found",
    /// Too many attempts: wait `Retry-After`.
    RateLimited = "rate_limited",
    /// A name breaks the naming rule.
    InvalidName = "invalid_name",
    /// An unknown role.
    InvalidRole = "invalid_role",
    /// A password too short.
    WeakPassword = "weak_password",
    /// The user exists in another organization.
    MemberElsewhere = "member_elsewhere",
    /// The name is taken.
    Exists = "exists",
    /// A wrong, used or expired enrollment code.
    InvalidCode = "invalid_code",
    /// Rules that make no sense together.
    InvalidPolicy = "invalid_policy",
    /// A version not above every published one.
    VersionNotNewer = "version_not_newer",
    /// No policy published yet.
    NoPolicy = "no_policy",
    /// Not 16 to 64 bytes of hex.
    InvalidEscrowKey = "invalid_escrow_key",
    /// The server holds no escrow key for the device.
    NoEscrow = "no_escrow",
    /// The user is not a member of the device's organization.
    NotInOrganization = "not_in_organization",
    /// A wipe of the device (or of this user's slot) is pending.
    WipePending = "wipe_pending",
    /// The device has already carried out this wipe.
    WipeAcknowledged = "wipe_acknowledged",
    /// The wipe order was cancelled.
    WipeCancelled = "wipe_cancelled",
    /// A batch that cannot be decoded.
    MalformedBatch = "malformed_batch",
    /// A batch that breaks a rule.
    InvalidBatch = "invalid_batch",
    /// A batch id reused with other readings.
    BatchConflict = "batch_conflict",
    /// The organization is suspended by the instance's operators.
    OrganizationSuspended = "organization_suspended",
    /// Only a suspended organization may be deleted.
    NotSuspended = "not_suspended",
    /// The last operator cannot stop being one.
    LastOperator = "last_operator",
    /// The path is served, but not with this method.
    MethodNotAllowed = "method_not_allowed",
    /// A sync cursor older than what the server keeps: pull from the start.
    CursorExpired = "cursor_expired",
    /// A sync cursor ahead of the server's feed (a database restored from a
    /// backup): pull from the start, and deliver again what it may lack.
    FeedBehind = "feed_behind",
    /// The app does not sync: the organization's signed policy does not
    /// list it.
    AppNotSynced = "app_not_synced",
    /// The record has no conflict leaves to resolve (or not those).
    NotInConflict = "not_in_conflict",
    /// The record's conflict leaves changed since the caller looked.
    ConflictsChanged = "conflicts_changed",
    /// The upload expired (or was dropped after a `blob_mismatch`): declare
    /// the file again and start from zero.
    UploadGone = "upload_gone",
    /// A piece sent at another offset than the server's (which is in the
    /// `Upload-Offset` header).
    UploadOffsetMismatch = "upload_offset_mismatch",
    /// A piece whose bytes do not match its `Upload-Checksum`: nothing of
    /// it was kept.
    ChecksumMismatch = "checksum_mismatch",
    /// The whole uploaded file does not match the SHA-256 it was declared
    /// with: the upload is dropped.
    BlobMismatch = "blob_mismatch",
    /// A piece of the wrong length, or not on a piece boundary.
    InvalidPiece = "invalid_piece",
    /// A file larger than the server takes (`--max-file-size`).
    FileTooLarge = "file_too_large",
    /// The organization's files would exceed its storage quota.
    QuotaExceeded = "quota_exceeded",
    /// A `Range` outside the file, or of several ranges.
    RangeNotSatisfiable = "range_not_satisfiable",
    /// The server has no MQTT broker configured: deliver over HTTP.
    MqttNotConfigured = "mqtt_not_configured",
    /// The MQTT broker did not answer or refused the control plane's
    /// command; try again later (or deliver over HTTP).
    MqttBrokerUnavailable = "mqtt_broker_unavailable",
    /// The server failed; the cause is in its log.
    Internal = "internal",
}

impl Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Ok(ErrorCode::from(text.as_str()))
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// For programs.
    pub code: ErrorCode,
    /// For people.
    pub message: String,
}

impl ErrorBody {
    /// An error body.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorBody {
            error: ErrorDetail {
                code,
                message: message.into(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn codes_round_trip_and_unknown_ones_are_kept() {
        for code in ErrorCode::ALL {
            assert_eq!(&ErrorCode::from(code.as_str()), code);
        }
        let body: ErrorBody =
            serde_json::from_str(r#"{"error": {"code": "paper_jam", "message": "m"}, "extra": 1}"#)
                .unwrap();
        assert_eq!(body.error.code, ErrorCode::Unknown("paper_jam".into()));
        assert_eq!(
            serde_json::to_string(&ErrorBody::new(ErrorCode::NoEscrow, "none")).unwrap(),
            r#"{"error":{"code":"no_escrow","message":"none"}}"#
        );
    }
}
