//! Arbitrary bytes, split at an arbitrary point, into the v1 message decoder: it must return
//! messages or a clean error, never panic, and never buffer more than it was given.
#![no_main]
use control::msg::{V1Decoder, encode_v1};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = data.first().copied().unwrap_or(0) as usize % (data.len() + 1);
    let mut d = V1Decoder::new();
    for part in [&data[..split], &data[split..]] {
        d.feed(part);
        loop {
            match d.next_message() {
                Ok(Some(m)) => {
                    // Whatever decodes must re-encode and decode to the same message.
                    let mut again = V1Decoder::new();
                    again.feed(&encode_v1(&m));
                    assert_eq!(again.next_message().unwrap(), Some(m));
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert!(d.buffered() <= data.len());
    }
});
