//! Files sync (docs/protocol.md §9): the bytes of the files that records
//! reference, moved as resumable, verified uploads and ranged downloads.
//!
//! An upload goes in the manner of the tus protocol: [`CreateUpload`]
//! declares the file (its size and SHA-256) and gets an upload id and the
//! server's piece size, or the answer that the organization already holds
//! those bytes for the app (then nothing is sent); [`UploadOffset`] asks
//! where to go on; [`SendPiece`] sends one piece at that offset with its
//! own SHA-256 in `Upload-Checksum`, and the server acknowledges it only
//! once it is durable. The last piece completes the upload: the server
//! checks the whole file's SHA-256 and stores the blob content-addressed
//! per (organization, app, SHA-256). An unfinished upload expires
//! ([`crate::ErrorCode::UploadGone`]): the device starts again.
//!
//! A download is [`FetchBlob`] with a byte range: the device checks the
//! whole file's SHA-256 before it switches its stored file.
//!
//! A record reaches the server only after the files it references
//! ([`crate::sync::RejectCode::MissingFile`]).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{json_answer, json_body, Answer, Auth, Endpoint, Method};

/// The piece size a server announces by default, bytes: what a cut
/// connection costs at most to send again.
pub const DEFAULT_PIECE_SIZE: u64 = 4 * 1024 * 1024;
/// The smallest piece size a server may announce, bytes.
pub const MIN_PIECE_SIZE: u64 = 64 * 1024;
/// The largest piece size a server may announce (and the largest piece
/// body it reads), bytes.
pub const MAX_PIECE_SIZE: u64 = 8 * 1024 * 1024;
/// The largest range a device asks for in one [`FetchBlob`], bytes.
pub const MAX_FETCH_RANGE: u64 = 8 * 1024 * 1024;
/// The largest file the protocol describes, bytes (a server's own limit,
/// `coffer serve --max-file-size`, is lower).
pub const MAX_FILE_SIZE: u64 = 1 << 40;
/// Longest content type, bytes.
pub const MAX_CONTENT_TYPE: usize = 127;

/// The content type of a piece's body (tus).
pub const PIECE_CONTENT_TYPE: &str = "application/offset+octet-stream";
/// The header that carries a piece's offset (tus).
pub const UPLOAD_OFFSET_HEADER: &str = "upload-offset";
/// The header that carries a piece's digest: `sha256 <base64>` (tus's
/// checksum extension).
pub const UPLOAD_CHECKSUM_HEADER: &str = "upload-checksum";

/// Whether `text` is a SHA-256 as the protocol writes it: 64 lower-case
/// hex digits.
pub fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Whether `text` is an upload id: 32 lower-case hex digits.
pub fn is_upload_id(text: &str) -> bool {
    text.len() == 32 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Whether `text` is a content type the protocol carries: `type/subtype`
/// of RFC 9110 token characters, with optional parameters of printable
/// ASCII, at most [`MAX_CONTENT_TYPE`] bytes.
pub fn is_content_type(text: &str) -> bool {
    let token = |t: &str| {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    let (essence, params) = match text.split_once(';') {
        Some((essence, params)) => (essence, Some(params)),
        None => (text, None),
    };
    text.len() <= MAX_CONTENT_TYPE
        && essence
            .split_once('/')
            .is_some_and(|(t, s)| token(t) && token(s))
        && params.is_none_or(|p| p.bytes().all(|b| (0x20..0x7f).contains(&b)))
}

/// The `Upload-Checksum` value of a piece: `sha256 ` and the base64 of
/// its SHA-256.
pub fn piece_checksum(piece: &[u8]) -> String {
    format!(
        "sha256 {}",
        data_encoding::BASE64.encode(&Sha256::digest(piece))
    )
}

/// The SHA-256 an `Upload-Checksum` value names, if it is `sha256 ` and
/// 32 bytes of base64.
pub fn parse_piece_checksum(value: &str) -> Option<[u8; 32]> {
    let encoded = value.strip_prefix("sha256 ")?;
    let bytes = data_encoding::BASE64.decode(encoded.as_bytes()).ok()?;
    bytes.try_into().ok()
}

/// A file to upload, as [`CreateUpload`] declares it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewBlob {
    /// SHA-256 of the whole plaintext, 64 lower-case hex digits.
    pub sha256: String,
    /// Its length, bytes (0 to [`MAX_FILE_SIZE`]).
    pub size: u64,
    /// Its content type (e.g. `image/jpeg`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
}

impl NewBlob {
    /// The first rule the declaration breaks, as a fixed sentence.
    pub fn check(&self) -> Result<(), &'static str> {
        if !is_sha256_hex(&self.sha256) {
            return Err("sha256 is 64 lower-case hex digits");
        }
        if self.size > MAX_FILE_SIZE {
            return Err("size is at most 1099511627776 bytes");
        }
        if let Some(content_type) = &self.content_type {
            if !is_content_type(content_type) {
                return Err("content_type is type/subtype, at most 127 bytes");
            }
        }
        Ok(())
    }
}

/// Where an upload stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadStatus {
    /// The upload's id (32 lower-case hex digits).
    pub id: String,
    /// The whole file's length, bytes.
    pub size: u64,
    /// Every piece but the last is exactly this long, and starts at a
    /// multiple of it.
    pub piece_size: u64,
    /// How many bytes the server holds durably: the next piece starts here.
    pub offset: u64,
    /// When an unfinished upload is dropped (Unix seconds).
    pub expires_at: i64,
    /// Whether the whole file arrived and matched its SHA-256: the blob is
    /// stored.
    #[serde(default)]
    pub complete: bool,
}

impl UploadStatus {
    /// Whether the status makes sense for a file of `size` bytes: a piece
    /// size within the protocol's bounds and an offset on a piece boundary
    /// no further than the end. A device refuses to act on any other.
    pub fn is_consistent(&self, size: u64) -> bool {
        is_upload_id(&self.id)
            && self.size == size
            && (MIN_PIECE_SIZE..=MAX_PIECE_SIZE).contains(&self.piece_size)
            && self.offset <= size
            && (self.offset.is_multiple_of(self.piece_size) || self.offset == size)
            && (!self.complete || self.offset == size)
    }
}

/// `POST /v1/device/files/{app}/uploads` (device token): declares a file
/// to upload.
#[derive(Debug, Clone)]
pub struct CreateUpload {
    /// The app whose records reference the file (synced by the policy).
    pub app: String,
    /// The file.
    pub blob: NewBlob,
}

/// The answer to [`CreateUpload`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadCreated {
    /// The organization already holds this file for the app: send nothing.
    pub stored: bool,
    /// The upload to send it by, unless stored. A device that declares the
    /// same file again while its upload is unfinished gets that upload
    /// back, at its offset.
    #[serde(default)]
    pub upload: Option<UploadStatus>,
}

impl Endpoint for CreateUpload {
    type Answer = UploadCreated;
    const METHOD: Method = Method::Post;
    const PATH: &'static str = "/v1/device/files/{app}/uploads";
    const AUTH: Auth = Auth::Device;
    fn path(&self) -> String {
        Self::PATH.replace("{app}", &crate::path_segment(&self.app))
    }
    fn body(&self) -> Option<(Vec<u8>, &'static str)> {
        json_body(&self.blob)
    }
}

/// `GET /v1/device/files/{app}/uploads/{id}` (device token): where an
/// upload stands. Another device's upload is `not_found`; an expired one
/// `upload_gone`.
#[derive(Debug, Clone)]
pub struct UploadOffset {
    /// The app.
    pub app: String,
    /// The upload's id.
    pub id: String,
}

impl Endpoint for UploadOffset {
    type Answer = UploadStatus;
    const METHOD: Method = Method::Get;
    const PATH: &'static str = "/v1/device/files/{app}/uploads/{id}";
    const AUTH: Auth = Auth::Device;
    fn path(&self) -> String {
        upload_path(Self::PATH, &self.app, &self.id)
    }
}

fn upload_path(template: &str, app: &str, id: &str) -> String {
    template
        .replace("{app}", &crate::path_segment(app))
        .replace("{id}", &crate::path_segment(id))
}

/// `PATCH /v1/device/files/{app}/uploads/{id}` (device token): one piece
/// at `offset`, with its SHA-256 in `Upload-Checksum`. The answer comes
/// once the piece is durable. A wrong offset is `upload_offset_mismatch`
/// (409, the right one in `Upload-Offset`); a wrong digest
/// `checksum_mismatch` (nothing kept of the piece); a last piece after
/// which the whole file does not match its SHA-256 `blob_mismatch` (the
/// upload is dropped).
pub struct SendPiece {
    /// The app.
    pub app: String,
    /// The upload's id.
    pub id: String,
    /// Where the piece starts.
    pub offset: u64,
    /// The piece.
    pub data: Vec<u8>,
}

impl std::fmt::Debug for SendPiece {
    // Never the bytes: they are the user's file.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendPiece")
            .field("app", &self.app)
            .field("id", &self.id)
            .field("offset", &self.offset)
            .field("len", &self.data.len())
            .finish()
    }
}

impl Endpoint for SendPiece {
    type Answer = UploadStatus;
    const METHOD: Method = Method::Patch;
    const PATH: &'static str = "/v1/device/files/{app}/uploads/{id}";
    const AUTH: Auth = Auth::Device;
    fn path(&self) -> String {
        upload_path(Self::PATH, &self.app, &self.id)
    }
    fn headers(&self) -> Vec<(&'static str, String)> {
        vec![
            (UPLOAD_OFFSET_HEADER, self.offset.to_string()),
            (UPLOAD_CHECKSUM_HEADER, piece_checksum(&self.data)),
        ]
    }
    fn body(&self) -> Option<(Vec<u8>, &'static str)> {
        Some((self.data.clone(), PIECE_CONTENT_TYPE))
    }
}

/// `GET /v1/device/files/{app}/blobs/{sha256}` (device token): the bytes
/// of a file of the device's organization and app, `range` (first and last
/// byte, inclusive) in a `Range` header. A blob the device may not read
/// is `not_found`, exactly like one that does not exist.
#[derive(Debug, Clone)]
pub struct FetchBlob {
    /// The app.
    pub app: String,
    /// The file's SHA-256.
    pub sha256: String,
    /// First and last byte wanted, at most [`MAX_FETCH_RANGE`] bytes.
    pub range: (u64, u64),
}

/// The bytes a [`FetchBlob`] answered.
#[derive(Clone, PartialEq, Eq)]
pub struct BlobBytes(pub Vec<u8>);

impl std::fmt::Debug for BlobBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BlobBytes({} bytes)", self.0.len())
    }
}

impl Answer for BlobBytes {
    fn decode(body: &[u8]) -> Result<Self, serde_json::Error> {
        Ok(BlobBytes(body.to_vec()))
    }
}

impl Endpoint for FetchBlob {
    type Answer = BlobBytes;
    const METHOD: Method = Method::Get;
    const PATH: &'static str = "/v1/device/files/{app}/blobs/{sha256}";
    const AUTH: Auth = Auth::Device;
    // A range and nothing more: the device asks for at most this much.
    const MAX_ANSWER: usize = MAX_FETCH_RANGE as usize;
    fn path(&self) -> String {
        Self::PATH
            .replace("{app}", &crate::path_segment(&self.app))
            .replace("{sha256}", &crate::path_segment(&self.sha256))
    }
    fn headers(&self) -> Vec<(&'static str, String)> {
        vec![("range", format!("bytes={}-{}", self.range.0, self.range.1))]
    }
}

/// The first and last byte of a `Range` header of one range (`bytes=a-b`,
/// `bytes=a-` or `bytes=-n`) within a file of `size` bytes; `None` for a
/// header this protocol does not serve (several ranges, other units) or a
/// range outside the file.
pub fn parse_range(value: &str, size: u64) -> Option<(u64, u64)> {
    let spec = value.trim().strip_prefix("bytes=")?;
    if spec.contains(',') || size == 0 {
        return None;
    }
    let (first, last) = spec.split_once('-')?;
    let (first, last) = match (first.trim(), last.trim()) {
        ("", suffix) => {
            let n: u64 = suffix.parse().ok()?;
            if n == 0 {
                return None;
            }
            (size.saturating_sub(n), size - 1)
        }
        (first, "") => (first.parse().ok()?, size - 1),
        (first, last) => (first.parse().ok()?, last.parse::<u64>().ok()?.min(size - 1)),
    };
    (first <= last && first < size).then_some((first, last))
}

/// `GET /v1/orgs/{org}/files/{app}/{sha256}` (session: owner or admin):
/// the bytes of one of the organization's files, whole or a `Range`
/// (audited `file_fetched`).
pub const ADMIN_FETCH_PATH: &str = "/v1/orgs/{org}/files/{app}/{sha256}";

json_answer!(UploadCreated, UploadStatus);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn declarations_are_checked() {
        let good = NewBlob {
            sha256: "ab".repeat(32),
            size: 5,
            content_type: Some("image/jpeg".into()),
        };
        assert!(good.check().is_ok());
        for bad in [
            NewBlob {
                sha256: "AB".repeat(32),
                ..good.clone()
            },
            NewBlob {
                sha256: "ab".repeat(31),
                ..good.clone()
            },
            NewBlob {
                size: MAX_FILE_SIZE + 1,
                ..good.clone()
            },
            NewBlob {
                content_type: Some("image/jpeg\n".into()),
                ..good.clone()
            },
            NewBlob {
                content_type: Some("jpeg".into()),
                ..good.clone()
            },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
        assert!(is_content_type("text/plain; charset=utf-8"));
        assert!(!is_content_type(&format!("text/{}", "a".repeat(130))));
    }

    #[test]
    fn piece_checksums_round_trip() {
        let header = piece_checksum(b"abc");
        assert_eq!(
            header,
            "sha256 ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0="
        );
        assert_eq!(
            parse_piece_checksum(&header).unwrap(),
            <[u8; 32]>::from(Sha256::digest(b"abc"))
        );
        assert!(parse_piece_checksum("md5 ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=").is_none());
        assert!(parse_piece_checksum("sha256 ungWv48B").is_none());
        assert!(parse_piece_checksum("sha256 !!!").is_none());
    }

    #[test]
    fn ranges_parse_within_the_file() {
        assert_eq!(parse_range("bytes=0-9", 100), Some((0, 9)));
        assert_eq!(parse_range("bytes=90-200", 100), Some((90, 99)));
        assert_eq!(parse_range("bytes=90-", 100), Some((90, 99)));
        assert_eq!(parse_range("bytes=-10", 100), Some((90, 99)));
        assert_eq!(parse_range("bytes=-200", 100), Some((0, 99)));
        for bad in [
            "bytes=100-",
            "bytes=5-4",
            "bytes=0-1,3-4",
            "items=0-1",
            "bytes=-0",
            "bytes=a-b",
            "bytes=--1",
        ] {
            assert_eq!(parse_range(bad, 100), None, "{bad}");
        }
        assert_eq!(parse_range("bytes=0-0", 0), None);
    }

    #[test]
    fn a_status_the_device_acts_on_is_consistent() {
        let status = UploadStatus {
            id: "0f".repeat(16),
            size: 10 * MIN_PIECE_SIZE,
            piece_size: 4 * MIN_PIECE_SIZE,
            offset: 4 * MIN_PIECE_SIZE,
            expires_at: 1,
            complete: false,
        };
        assert!(status.is_consistent(10 * MIN_PIECE_SIZE));
        assert!(!status.is_consistent(11 * MIN_PIECE_SIZE));
        for bad in [
            UploadStatus {
                offset: 4 * MIN_PIECE_SIZE + 1,
                ..status.clone()
            },
            UploadStatus {
                offset: 11 * MIN_PIECE_SIZE,
                ..status.clone()
            },
            UploadStatus {
                piece_size: MAX_PIECE_SIZE * 2,
                ..status.clone()
            },
            UploadStatus {
                complete: true,
                ..status.clone()
            },
            UploadStatus {
                id: "../x".into(),
                ..status.clone()
            },
        ] {
            assert!(!bad.is_consistent(10 * MIN_PIECE_SIZE), "{bad:?}");
        }
    }

    #[test]
    fn piece_debug_shows_no_bytes() {
        let piece = SendPiece {
            app: "a".into(),
            id: "0".repeat(32),
            offset: 0,
            data: b"secret photo".to_vec(),
        };
        assert!(!format!("{piece:?}").contains("secret"));
        assert!(!format!("{:?}", BlobBytes(b"secret".to_vec())).contains("secret"));
    }
}
