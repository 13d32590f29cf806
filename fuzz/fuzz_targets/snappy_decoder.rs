//! Arbitrary bytes into the snappy framing decoder: errors are fine, panics and unbounded
//! output are not.
#![no_main]
use control::crypto::{SnappyDecoder, SnappyEncoder};
use dataplane::Transform;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut d = SnappyDecoder::new();
    let mut out = Vec::new();
    for chunk in data.chunks(97) {
        if d.transform(chunk, &mut out).is_err() {
            break;
        }
        // One chunk decodes to at most 64 KiB.
        assert!(out.len() <= 65536 * (data.len() / 8 + 1));
    }
    // And anything encoded decodes back to itself.
    let mut e = SnappyEncoder::new();
    let mut wire = Vec::new();
    e.transform(data, &mut wire).unwrap();
    let mut back = Vec::new();
    SnappyDecoder::new().transform(&wire, &mut back).unwrap();
    assert_eq!(back, data);
});
