//! Fuzzes the decoder of the header's (decrypted) slot metadata.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    coffer_device::fuzzing::metadata(data);
});
