//! CFB encryption then decryption, split at arbitrary points, is the identity.
#![no_main]
use control::crypto::{CfbDecryptor, CfbEncryptor, CryptoKey};
use dataplane::Transform;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = CryptoKey::derive(b"fuzz");
    let split = data.first().copied().unwrap_or(0) as usize % (data.len() + 1);
    let mut e = CfbEncryptor::new(&key);
    let mut wire = Vec::new();
    e.transform(&data[..split], &mut wire).unwrap();
    e.transform(&data[split..], &mut wire).unwrap();
    let mut d = CfbDecryptor::new(&key);
    let mut plain = Vec::new();
    let cut = wire.len() / 3;
    d.transform(&wire[..cut], &mut plain).unwrap();
    d.transform(&wire[cut..], &mut plain).unwrap();
    assert_eq!(plain, data);
});
