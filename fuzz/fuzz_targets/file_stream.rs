//! Fuzzes the encrypted-file reader (header, layout arithmetic, chunk reads).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    coffer_device::fuzzing::file_stream(data);
});
