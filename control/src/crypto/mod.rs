//! frp's v1 crypto streams and compression as sans-IO [`Transform`]s (spec §6.1, §6.3, §6.4).
//!
//! - [`CryptoKey`] / [`derive_key`]: PBKDF2-HMAC-SHA1(secret, salt `"frp"`, 64 iterations, 16
//!   bytes) → AES-128. Derive once per token / `secretKey` and share it.
//! - [`cfb`]: [`CfbEncryptor`] / [`CfbDecryptor`], AES-128-CFB with a lazily sent clear IV per
//!   direction: the v1 control channel and `useEncryption` on work/visitor connections.
//! - [`snappy`]: [`SnappyEncoder`] / [`SnappyDecoder`], golang/snappy's framing format
//!   (`useCompression`).
//! - [`work_conn_layers`]: the transform chains for a work/visitor connection, in frp's order
//!   (wire = encrypt(snappy(payload))).
//! - [`encode_oneshot`] / [`decode_oneshot`]: `IV ‖ CFB(data)` for XTCP hole-punch datagrams.
//! - [`aead`]: [`AeadWriter`] / [`AeadReader`], the wire-protocol-v2 control channel's AEAD
//!   record streams (AES-256-GCM or XChaCha20-Poly1305, spec §6.2).

pub mod aead;
pub mod cfb;
pub mod snappy;

use std::sync::Arc;

use aes::Aes128Enc;
use aes::cipher::KeyInit;
use dataplane::Transform;

pub use aead::{AeadAlgorithm, AeadReader, AeadWriter};
pub use cfb::{CfbDecryptor, CfbEncryptor, IV_LEN};
pub use snappy::{SnappyDecoder, SnappyEncoder};

/// golib `crypto.DefaultSalt` as both frp binaries set it (the library's own default,
/// `"crypto"`, is wrong for frp).
pub const SALT: &[u8] = b"frp";

/// PBKDF2 iteration count golib uses.
pub const PBKDF2_ROUNDS: u32 = 64;

/// A chain of transforms, applied in order (as [`dataplane::Side`]'s `inbound`/`outbound`).
pub type TransformChain = Vec<Box<dyn Transform>>;

/// Errors of the one-shot codec.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("encrypted data of {len} bytes is shorter than the {IV_LEN}-byte IV")]
    ShortData { len: usize },
    #[error(transparent)]
    Transform(#[from] dataplane::TransformError),
}

/// The AES-128 key of frp's v1 crypto: PBKDF2-HMAC-SHA1(`secret`, `"frp"`, 64, 16).
///
/// `secret` is `auth.token` for the control channel and work connections, and the proxy's
/// `secretKey` for visitor connections and XTCP.
pub fn derive_key(secret: &[u8]) -> [u8; 16] {
    pbkdf2::pbkdf2_hmac_array::<sha1::Sha1, 16>(secret, SALT, PBKDF2_ROUNDS)
}

/// A derived key with its AES key schedule, ready to build any number of streams.
///
/// Deriving costs 64 PBKDF2 rounds plus a key expansion; build one `CryptoKey` per token (or
/// `secretKey`) and clone it, or share it behind an `Arc`, for each connection.
///
/// The key schedule is shared by every stream built from the key (a few hundred bytes each
/// otherwise, per connected client and per encrypted connection).
#[derive(Clone)]
pub struct CryptoKey {
    bytes: [u8; 16],
    cipher: Arc<Aes128Enc>,
}

impl CryptoKey {
    /// Derives the key for `secret` (see [`derive_key`]).
    pub fn derive(secret: &[u8]) -> Self {
        Self::from_bytes(derive_key(secret))
    }

    /// Wraps an already derived AES-128 key.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        CryptoKey {
            bytes,
            cipher: Arc::new(Aes128Enc::new(&bytes.into())),
        }
    }

    /// The raw AES-128 key.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.bytes
    }

    pub(crate) fn cipher(&self) -> &Arc<Aes128Enc> {
        &self.cipher
    }
}

impl std::fmt::Debug for CryptoKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CryptoKey(..)")
    }
}

/// The transform chains for the frp side of a relayed pair (a work connection on frps or frpc,
/// or a visitor connection), returned as `(inbound, outbound)`:
///
/// - inbound, applied to bytes read from the connection: `[decrypt, decompress]`;
/// - outbound, applied to bytes written to it: `[compress, encrypt]`;
///
/// each layer present only when its flag is on, so the wire carries
/// `encrypt(snappy_frames(payload))` (§6.3).
///
/// `key` is only consulted with `use_encryption`. `None` then means the empty secret — frp
/// encrypts with `PBKDF2("")` when no token is configured, it does not skip encryption.
///
/// Without either flag both chains are empty and unallocated: the pair holds them for its
/// whole life, and two small allocations per pair, made among the pair set-up's short-lived
/// ones, kept that memory from being reused (glibc) — about 0.3 KiB of RSS per idle
/// connection in each of frps and frpc (`dataplane/README.md`, "Idle memory per pair").
pub fn work_conn_layers(
    key: Option<&CryptoKey>,
    use_encryption: bool,
    use_compression: bool,
) -> (TransformChain, TransformChain) {
    let layers = usize::from(use_encryption) + usize::from(use_compression);
    let mut inbound: TransformChain = Vec::with_capacity(layers);
    let mut outbound: TransformChain = Vec::with_capacity(layers);
    if use_encryption {
        let empty;
        let key = match key {
            Some(key) => key,
            None => {
                tracing::debug!("useEncryption without a key: using the empty token's key");
                empty = CryptoKey::derive(b"");
                &empty
            }
        };
        inbound.push(Box::new(CfbDecryptor::new(key)));
        if use_compression {
            inbound.push(Box::new(SnappyDecoder::new()));
            outbound.push(Box::new(SnappyEncoder::new()));
        }
        outbound.push(Box::new(CfbEncryptor::new(key)));
    } else if use_compression {
        inbound.push(Box::new(SnappyDecoder::new()));
        outbound.push(Box::new(SnappyEncoder::new()));
    }
    (inbound, outbound)
}

/// One-shot encryption (§6.4): `IV(16 random) ‖ AES-128-CFB(key, IV, data)`.
pub fn encode_oneshot(data: &[u8], key: &CryptoKey) -> Vec<u8> {
    encode_oneshot_with_iv(data, key, rand::random())
}

fn encode_oneshot_with_iv(data: &[u8], key: &CryptoKey, iv: [u8; IV_LEN]) -> Vec<u8> {
    let mut enc = CfbEncryptor::with_iv(key, iv);
    let mut out = Vec::with_capacity(IV_LEN + data.len());
    out.extend_from_slice(&enc.take_iv().unwrap_or(iv));
    let start = out.len();
    out.extend_from_slice(data);
    enc.encrypt_in_place(&mut out[start..]);
    out
}

/// Inverse of [`encode_oneshot`]. CFB has no integrity check: a wrong key yields garbage, not
/// an error; only input shorter than the IV is rejected.
pub fn decode_oneshot(data: &[u8], key: &CryptoKey) -> Result<Vec<u8>, CryptoError> {
    if data.len() < IV_LEN {
        return Err(CryptoError::ShortData { len: data.len() });
    }
    let mut dec = CfbDecryptor::new(key);
    let mut out = Vec::with_capacity(data.len() - IV_LEN);
    dec.transform(data, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod test_util;
#[cfg(test)]
mod tests;
