//! Fuzzes the app-archive reader: the outer header, and the entry parser
//! behind the encryption (fed arbitrary plaintext through a valid stream).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    coffer_device::fuzzing::archive(data);
});
