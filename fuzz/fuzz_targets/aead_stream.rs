//! The v2 AEAD streams (spec §6.2). The first byte picks the algorithm and the cut points.
//! - Arbitrary bytes into a reader (a peer sending garbage): plaintext or a clean error, never
//!   a panic, and once failed it stays failed.
//! - A writer's output read back, cut anywhere, is the identity.
//! - That output with one bit flipped never yields the whole plaintext: the reader fails, or
//!   has released a strict prefix and waits for bytes that will not come.
#![no_main]
use control::crypto::{AeadAlgorithm, AeadReader, AeadWriter};
use dataplane::Transform;
use libfuzzer_sys::fuzz_target;

const KEY: [u8; 32] = [0x5a; 32];

fn read_in_two(r: &mut AeadReader, wire: &[u8], cut: usize) -> (Vec<u8>, bool) {
    let mut plain = Vec::new();
    let ok = r.transform(&wire[..cut], &mut plain).is_ok()
        && r.transform(&wire[cut..], &mut plain).is_ok();
    (plain, ok)
}

fuzz_target!(|data: &[u8]| {
    let first = data.first().copied().unwrap_or(0) as usize;
    let alg = AeadAlgorithm::ALL[first & 1];

    // Garbage in.
    let mut r = AeadReader::new(alg, &KEY);
    let (_, ok) = read_in_two(&mut r, data, first % (data.len() + 1));
    if !ok {
        assert!(r.transform(b"more", &mut Vec::new()).is_err());
    }

    // Round trip.
    let split = (first >> 1) % (data.len() + 1);
    let mut w = AeadWriter::with_stream_nonce(alg, &KEY, &[3u8; 24][..alg.nonce_len()]).unwrap();
    let mut wire = Vec::new();
    w.transform(&data[..split], &mut wire).unwrap();
    w.transform(&data[split..], &mut wire).unwrap();
    let cut = (first >> 2) % (wire.len() + 1);
    let (plain, ok) = read_in_two(&mut AeadReader::new(alg, &KEY), &wire, cut);
    assert!(ok);
    assert_eq!(plain, data);

    // Tampering.
    if wire.is_empty() {
        return;
    }
    let bit = (first * 131 + data.len() * 7) % (wire.len() * 8);
    wire[bit / 8] ^= 1 << (bit % 8);
    let (plain, ok) = read_in_two(&mut AeadReader::new(alg, &KEY), &wire, cut);
    assert!(
        plain.len() < data.len() && data.starts_with(&plain),
        "tampered stream accepted"
    );
    let _ = ok;
});
