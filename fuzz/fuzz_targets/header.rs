//! Fuzzes the vault header parser and authenticator with arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    coffer_device::fuzzing::header(data);
});
