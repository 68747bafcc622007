//! Fuzzes the server's batch decoders (docs/formats/data-batch.md): the
//! same bytes as a JSON body and as a CBOR body, then the rules. A refusal
//! says why in a short message of the crate's own words; a batch that
//! passes the rules has a digest and survives a JSON round trip.
#![no_main]

use coffer_protocol::data::Batch;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    for decoded in [Batch::from_json(data), Batch::from_cbor(data)] {
        let batch = match decoded {
            Ok(batch) => batch,
            Err(e) => {
                // The server sends this message as it is.
                assert!(e.to_string().len() < 300, "{e}");
                continue;
            }
        };
        let checked = batch.check();
        if let Err(e) = &checked {
            assert!(e.to_string().len() < 300, "{e}");
            continue;
        }
        assert_eq!(batch.digest().len(), 64);
        // What the server stores of it is JSON: that must decode again.
        let json = serde_json::to_vec(&batch).expect("a batch is JSON");
        let again = Batch::from_json(&json).expect("a stored batch decodes");
        assert!(again.check().is_ok());
        assert_eq!(again.readings.len(), batch.readings.len());
    }
});
