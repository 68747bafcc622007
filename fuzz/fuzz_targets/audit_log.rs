//! Fuzzes the audit log checker: entry parsing, the chain walk and the
//! anchor (docs/formats/audit-log.md).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    coffer_device::fuzzing::audit_log(data);
});
