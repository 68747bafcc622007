//! Fuzzes the decoding of every request the server takes from outside:
//! each JSON body type of coffer-protocol (all `deny_unknown_fields`), and
//! the two query strings (usage, data) as the server's query extractor
//! reads them (serde_urlencoded). A decoded credential never shows in a
//! `Debug` print; a query name the guard would refuse is checked too.
#![no_main]

use coffer_protocol::admin::{
    AddUser, ChangePassword, CreateOrganization, NewEnrollmentCode, OrderWipe, ReadingsQuery,
    SetRole, Setup, UsageQuery,
};
use coffer_protocol::device::{DepositEscrow, Enroll};
use coffer_protocol::policy::PublishRequest;
use coffer_protocol::session::Login;

/// Decodes `data` as `T`; if it is one, its `Debug` print shows no
/// credential (a `WireSecret` prints as `WireSecret(..)`).
fn body<T: serde::de::DeserializeOwned + std::fmt::Debug>(data: &[u8], secrets: usize) {
    if let Ok(value) = serde_json::from_slice::<T>(data) {
        let shown = format!("{value:?}");
        assert_eq!(shown.matches("WireSecret(..)").count(), secrets, "{shown}");
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    body::<Setup>(data, 2);
    body::<Login>(data, 1);
    body::<Enroll>(data, 1);
    body::<AddUser>(data, 1);
    body::<ChangePassword>(data, 2);
    body::<CreateOrganization>(data, 1);
    body::<OrderWipe>(data, 0);
    body::<NewEnrollmentCode>(data, 0);
    body::<SetRole>(data, 0);
    body::<DepositEscrow>(data, 1);
    if let Ok(request) = serde_json::from_slice::<PublishRequest>(data) {
        let _ = request.check();
    }

    let _ = serde_urlencoded::from_bytes::<UsageQuery>(data);
    let _ = serde_urlencoded::from_bytes::<ReadingsQuery>(data);
    // The names of a query, as the credential guard compares them.
    if let Ok(pairs) = serde_urlencoded::from_bytes::<Vec<(String, String)>>(data) {
        for (name, _) in pairs {
            let _ = coffer_protocol::names_a_credential(&name);
        }
    }
});
