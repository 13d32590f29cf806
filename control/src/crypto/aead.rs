//! The v2 control channel's AEAD streams (spec §6.2, golib `crypto.AEADStreamWriter/Reader`),
//! as sans-IO [`Transform`]s.
//!
//! Per direction the wire carries
//!
//! ```text
//! streamNonce (12 bytes AES-256-GCM | 24 bytes XChaCha20-Poly1305, clear, before the first record)
//! record*: ctLen:u32 BE || Seal(key, nonce_i, plaintext, AAD = streamNonce || ctLen)
//! ```
//!
//! with `ctLen = len(plaintext) + 16`, 1..=65536 plaintext bytes per record, `nonce_0 =
//! streamNonce` and `nonce_{i+1} = nonce_i + 1` as one big-endian integer (wrapping is an error;
//! AES-GCM streams also stop after 2^32 records). Record boundaries carry no meaning: readers
//! treat the decrypted bytes as a stream.
//!
//! [`AeadWriter`] mirrors Go's writer: every non-empty `transform(input)` call seals `input`
//! as one record per 65536 bytes, so feeding it a v2 frame's header and payload separately
//! reproduces Go's two records per frame. [`AeadReader`] buffers at most one record and
//! rejects a bad length as soon as its 4 bytes arrive.

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{AeadInOut, KeyInit};
use chacha20poly1305::XChaCha20Poly1305;
use dataplane::{Transform, TransformError};

/// Key length of both algorithms.
pub const AEAD_KEY_LEN: usize = 32;
/// Authentication tag length of both algorithms.
pub const AEAD_TAG_LEN: usize = 16;
/// The `ctLen` prefix of a record.
pub const RECORD_HEADER_LEN: usize = 4;
/// Largest plaintext per record (golib `DefaultAEADMaxPayloadSize`).
pub const MAX_RECORD_PLAINTEXT: usize = 64 * 1024;
/// Largest `ctLen` a reader accepts.
pub const MAX_RECORD_CIPHERTEXT: usize = MAX_RECORD_PLAINTEXT + AEAD_TAG_LEN;

const MAX_NONCE_LEN: usize = 24;
/// golib's per-stream record limit for AES-GCM.
const AES_GCM_MAX_RECORDS: u64 = 1 << 32;

/// The two AEADs frp's v2 control channel can negotiate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AeadAlgorithm {
    /// `"aes-256-gcm"`: 12-byte nonces.
    Aes256Gcm,
    /// `"xchacha20-poly1305"`: 24-byte nonces.
    XChaCha20Poly1305,
}

impl AeadAlgorithm {
    /// Both algorithms, in frp's order of support.
    pub const ALL: [AeadAlgorithm; 2] =
        [AeadAlgorithm::Aes256Gcm, AeadAlgorithm::XChaCha20Poly1305];

    /// The name on the wire (ClientHello/ServerHello, HKDF info).
    pub fn as_str(self) -> &'static str {
        match self {
            AeadAlgorithm::Aes256Gcm => "aes-256-gcm",
            AeadAlgorithm::XChaCha20Poly1305 => "xchacha20-poly1305",
        }
    }

    /// The algorithm called `name` on the wire (exact match, as Go compares).
    pub fn from_name(name: &str) -> Option<AeadAlgorithm> {
        AeadAlgorithm::ALL.into_iter().find(|a| a.as_str() == name)
    }

    /// Length of the stream nonce (and of every record nonce).
    pub fn nonce_len(self) -> usize {
        match self {
            AeadAlgorithm::Aes256Gcm => 12,
            AeadAlgorithm::XChaCha20Poly1305 => 24,
        }
    }

    fn max_records(self) -> Option<u64> {
        match self {
            AeadAlgorithm::Aes256Gcm => Some(AES_GCM_MAX_RECORDS),
            AeadAlgorithm::XChaCha20Poly1305 => None,
        }
    }
}

impl std::fmt::Display for AeadAlgorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Errors building an AEAD stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AeadError {
    #[error("aead stream nonce must be {want} bytes for {algorithm}, got {got}")]
    NonceLength {
        algorithm: AeadAlgorithm,
        want: usize,
        got: usize,
    },
}

// The ciphers carry their key schedules; boxed so the streams stay small to move.
#[derive(Clone)]
enum Cipher {
    Aes256Gcm(Box<Aes256Gcm>),
    XChaCha20Poly1305(Box<XChaCha20Poly1305>),
}

impl Cipher {
    fn new(algorithm: AeadAlgorithm, key: &[u8; AEAD_KEY_LEN]) -> Cipher {
        match algorithm {
            AeadAlgorithm::Aes256Gcm => Cipher::Aes256Gcm(Box::new(Aes256Gcm::new(&(*key).into()))),
            AeadAlgorithm::XChaCha20Poly1305 => {
                Cipher::XChaCha20Poly1305(Box::new(XChaCha20Poly1305::new(&(*key).into())))
            }
        }
    }

    /// Encrypts `buf` in place and returns the tag.
    fn seal(&self, nonce: &[u8], aad: &[u8], buf: &mut [u8]) -> Result<[u8; AEAD_TAG_LEN], ()> {
        let tag = match self {
            Cipher::Aes256Gcm(c) => {
                let nonce = nonce.try_into().map_err(|_| ())?;
                c.encrypt_inout_detached(nonce, aad, buf.into())
            }
            Cipher::XChaCha20Poly1305(c) => {
                let nonce = nonce.try_into().map_err(|_| ())?;
                c.encrypt_inout_detached(nonce, aad, buf.into())
            }
        }
        .map_err(|_| ())?;
        Ok(tag.into())
    }

    /// Decrypts `buf` in place if `tag` authenticates it (and `aad`).
    fn open(&self, nonce: &[u8], aad: &[u8], buf: &mut [u8], tag: &[u8]) -> Result<(), ()> {
        match self {
            Cipher::Aes256Gcm(c) => {
                let nonce = nonce.try_into().map_err(|_| ())?;
                let tag = tag.try_into().map_err(|_| ())?;
                c.decrypt_inout_detached(nonce, aad, buf.into(), tag)
            }
            Cipher::XChaCha20Poly1305(c) => {
                let nonce = nonce.try_into().map_err(|_| ())?;
                let tag = tag.try_into().map_err(|_| ())?;
                c.decrypt_inout_detached(nonce, aad, buf.into(), tag)
            }
        }
        .map_err(|_| ())
    }
}

/// The fixed stream nonce, the current record nonce and the record count of one direction.
struct NonceState {
    algorithm: AeadAlgorithm,
    stream: [u8; MAX_NONCE_LEN],
    current: [u8; MAX_NONCE_LEN],
    records: u64,
}

impl NonceState {
    fn new(algorithm: AeadAlgorithm, stream_nonce: &[u8]) -> NonceState {
        let mut stream = [0; MAX_NONCE_LEN];
        stream[..stream_nonce.len()].copy_from_slice(stream_nonce);
        NonceState {
            algorithm,
            stream,
            current: stream,
            records: 0,
        }
    }

    fn len(&self) -> usize {
        self.algorithm.nonce_len()
    }

    fn stream_nonce(&self) -> &[u8] {
        &self.stream[..self.len()]
    }

    fn current(&self) -> &[u8] {
        &self.current[..self.len()]
    }

    /// `streamNonce || ctLen`.
    fn aad(
        &self,
        header: &[u8; RECORD_HEADER_LEN],
    ) -> ([u8; MAX_NONCE_LEN + RECORD_HEADER_LEN], usize) {
        let n = self.len();
        let mut aad = [0; MAX_NONCE_LEN + RECORD_HEADER_LEN];
        aad[..n].copy_from_slice(self.stream_nonce());
        aad[n..n + RECORD_HEADER_LEN].copy_from_slice(header);
        (aad, n + RECORD_HEADER_LEN)
    }

    fn check_limit(&self) -> Result<(), String> {
        match self.algorithm.max_records() {
            Some(max) if self.records >= max => {
                Err(format!("aead stream frame count limit {max} exceeded"))
            }
            _ => Ok(()),
        }
    }

    /// Moves to the next record's nonce (big-endian increment over the whole nonce).
    fn advance(&mut self) -> Result<(), String> {
        self.records += 1;
        let n = self.len();
        for b in self.current[..n].iter_mut().rev() {
            *b = b.wrapping_add(1);
            if *b != 0 {
                return Ok(());
            }
        }
        Err("aead stream frame counter exhausted".to_string())
    }
}

fn check_nonce_len(algorithm: AeadAlgorithm, nonce: &[u8]) -> Result<(), AeadError> {
    if nonce.len() != algorithm.nonce_len() {
        return Err(AeadError::NonceLength {
            algorithm,
            want: algorithm.nonce_len(),
            got: nonce.len(),
        });
    }
    Ok(())
}

/// The writing half of an AEAD stream: the first non-empty output starts with the clear stream
/// nonce, then one record per ≤ 65536 bytes of each input.
pub struct AeadWriter {
    cipher: Cipher,
    nonce: NonceState,
    nonce_sent: bool,
    failed: Option<String>,
}

impl AeadWriter {
    /// A writer with a fresh random stream nonce (thread-local CSPRNG).
    pub fn new(algorithm: AeadAlgorithm, key: &[u8; AEAD_KEY_LEN]) -> AeadWriter {
        let nonce: [u8; MAX_NONCE_LEN] = rand::random();
        Self::with_stream_nonce(algorithm, key, &nonce[..algorithm.nonce_len()])
            .expect("nonce of the algorithm's length")
    }

    /// A writer with a fixed stream nonce. Reusing a nonce with the same key breaks the AEAD:
    /// tests and vectors only.
    pub fn with_stream_nonce(
        algorithm: AeadAlgorithm,
        key: &[u8; AEAD_KEY_LEN],
        stream_nonce: &[u8],
    ) -> Result<AeadWriter, AeadError> {
        check_nonce_len(algorithm, stream_nonce)?;
        Ok(AeadWriter {
            cipher: Cipher::new(algorithm, key),
            nonce: NonceState::new(algorithm, stream_nonce),
            nonce_sent: false,
            failed: None,
        })
    }

    pub fn algorithm(&self) -> AeadAlgorithm {
        self.nonce.algorithm
    }

    /// The stream nonce (sent in the clear before the first record).
    pub fn stream_nonce(&self) -> &[u8] {
        self.nonce.stream_nonce()
    }

    /// Records sealed so far.
    pub fn records(&self) -> u64 {
        self.nonce.records
    }

    fn seal_record(&mut self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        self.nonce.check_limit()?;
        let header = ((plaintext.len() + AEAD_TAG_LEN) as u32).to_be_bytes();
        let (aad, aad_len) = self.nonce.aad(&header);
        let mark = out.len();
        out.reserve(RECORD_HEADER_LEN + plaintext.len() + AEAD_TAG_LEN);
        out.extend_from_slice(&header);
        let start = out.len();
        out.extend_from_slice(plaintext);
        match self
            .cipher
            .seal(self.nonce.current(), &aad[..aad_len], &mut out[start..])
        {
            Ok(tag) => out.extend_from_slice(&tag),
            Err(()) => {
                out.truncate(mark);
                return Err("aead seal failed".to_string());
            }
        }
        if let Err(e) = self.nonce.advance() {
            // Go does not write the record sealed with the last nonce either.
            out.truncate(mark);
            return Err(e);
        }
        Ok(())
    }
}

impl Transform for AeadWriter {
    fn transform(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), TransformError> {
        if let Some(err) = &self.failed {
            return Err(TransformError(err.clone()));
        }
        for chunk in input.chunks(MAX_RECORD_PLAINTEXT) {
            if !self.nonce_sent {
                out.extend_from_slice(self.nonce.stream_nonce());
                self.nonce_sent = true;
            }
            if let Err(e) = self.seal_record(chunk, out) {
                self.failed = Some(e.clone());
                return Err(TransformError(e));
            }
        }
        Ok(())
    }
}

impl std::fmt::Debug for AeadWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AeadWriter")
            .field("algorithm", &self.nonce.algorithm)
            .field("records", &self.nonce.records)
            .finish_non_exhaustive()
    }
}

/// The reading half of an AEAD stream: takes the stream nonce from the first bytes, then
/// authenticates and decrypts record by record. Holds at most one partial record.
pub struct AeadReader {
    cipher: Cipher,
    algorithm: AeadAlgorithm,
    /// `None` until the whole stream nonce has arrived.
    nonce: Option<NonceState>,
    nonce_buf: [u8; MAX_NONCE_LEN],
    nonce_have: usize,
    header: [u8; RECORD_HEADER_LEN],
    header_have: usize,
    /// `ctLen` of the record being received (valid once the header is complete).
    ct_len: usize,
    /// The part of the current record's ciphertext received so far.
    pending: Vec<u8>,
    failed: Option<String>,
}

impl AeadReader {
    pub fn new(algorithm: AeadAlgorithm, key: &[u8; AEAD_KEY_LEN]) -> AeadReader {
        AeadReader {
            cipher: Cipher::new(algorithm, key),
            algorithm,
            nonce: None,
            nonce_buf: [0; MAX_NONCE_LEN],
            nonce_have: 0,
            header: [0; RECORD_HEADER_LEN],
            header_have: 0,
            ct_len: 0,
            pending: Vec::new(),
            failed: None,
        }
    }

    pub fn algorithm(&self) -> AeadAlgorithm {
        self.algorithm
    }

    /// Records authenticated so far.
    pub fn records(&self) -> u64 {
        self.nonce.as_ref().map_or(0, |n| n.records)
    }

    /// Whether an EOF now would be clean: no partial nonce, record header or record is
    /// buffered (the stream has no authenticated end, spec §6.2).
    pub fn at_record_boundary(&self) -> bool {
        (self.nonce_have == 0 || self.nonce.is_some()) && self.header_have == 0
    }

    fn fail(&mut self, msg: String) -> TransformError {
        self.failed = Some(msg.clone());
        TransformError(msg)
    }

    /// Decrypts one whole record (`ct` without its header) and appends the plaintext.
    fn open_record(&mut self, ct: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        let nonce = self.nonce.as_mut().expect("nonce received");
        let (aad, aad_len) = nonce.aad(&self.header);
        let (body, tag) = ct.split_at(ct.len() - AEAD_TAG_LEN);
        let start = out.len();
        out.extend_from_slice(body);
        if self
            .cipher
            .open(nonce.current(), &aad[..aad_len], &mut out[start..], tag)
            .is_err()
        {
            out.truncate(start);
            return Err("aead stream: message authentication failed".to_string());
        }
        nonce.advance()
    }
}

impl Transform for AeadReader {
    fn transform(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), TransformError> {
        if let Some(err) = &self.failed {
            return Err(TransformError(err.clone()));
        }
        while !input.is_empty() {
            if self.nonce.is_none() {
                let want = self.algorithm.nonce_len();
                let n = (want - self.nonce_have).min(input.len());
                self.nonce_buf[self.nonce_have..self.nonce_have + n].copy_from_slice(&input[..n]);
                self.nonce_have += n;
                input = &input[n..];
                if self.nonce_have == want {
                    self.nonce = Some(NonceState::new(self.algorithm, &self.nonce_buf[..want]));
                }
                continue;
            }
            if self.header_have < RECORD_HEADER_LEN {
                let n = (RECORD_HEADER_LEN - self.header_have).min(input.len());
                self.header[self.header_have..self.header_have + n].copy_from_slice(&input[..n]);
                self.header_have += n;
                input = &input[n..];
                if self.header_have < RECORD_HEADER_LEN {
                    break;
                }
                let nonce = self.nonce.as_ref().expect("nonce received");
                if let Err(e) = nonce.check_limit() {
                    return Err(self.fail(e));
                }
                let ct_len = u32::from_be_bytes(self.header) as usize;
                if ct_len < AEAD_TAG_LEN {
                    return Err(self.fail(format!(
                        "aead stream ciphertext length {ct_len} is smaller than overhead {AEAD_TAG_LEN}"
                    )));
                }
                if ct_len > MAX_RECORD_CIPHERTEXT {
                    return Err(self.fail(format!(
                        "aead stream ciphertext length {ct_len} exceeds limit {MAX_RECORD_CIPHERTEXT}"
                    )));
                }
                self.ct_len = ct_len;
                continue;
            }
            let result = if self.pending.is_empty() && input.len() >= self.ct_len {
                // The whole record is in hand: decrypt straight into `out`.
                let (ct, rest) = input.split_at(self.ct_len);
                input = rest;
                self.open_record(ct, out)
            } else {
                let n = (self.ct_len - self.pending.len()).min(input.len());
                self.pending.extend_from_slice(&input[..n]);
                input = &input[n..];
                if self.pending.len() < self.ct_len {
                    break;
                }
                let ct = std::mem::take(&mut self.pending);
                let r = self.open_record(&ct, out);
                self.pending = ct;
                self.pending.clear();
                if self.pending.capacity() > 2 * 1024 {
                    self.pending = Vec::new();
                }
                r
            };
            if let Err(e) = result {
                return Err(self.fail(e));
            }
            self.header_have = 0;
        }
        Ok(())
    }
}

impl std::fmt::Debug for AeadReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AeadReader")
            .field("algorithm", &self.algorithm)
            .field("records", &self.records())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::test_util::{pseudo_random, random_splits};

    const PING_FRAME: &str = "0010000000000004000b7b7d";
    const K_C2S: &str = "5e5d5703ed7054d5624d1105b8af24960c47d074b046186a4f00d124e092559c";
    const RECORD_0: &str = "0000001c86c6c0a5cce2dc9852ab6c75482d340d724dacefa126dbe2696d92c4";
    const RECORD_1: &str = "0000001c1bd128d67d2666cb787235e715a2111bc110654fe511da705fc2d79a";

    fn key(hex_key: &str) -> [u8; 32] {
        hex::decode(hex_key).unwrap().try_into().unwrap()
    }

    fn run(t: &mut dyn Transform, parts: &[&[u8]]) -> Result<Vec<u8>, TransformError> {
        let mut out = Vec::new();
        for p in parts {
            t.transform(p, &mut out)?;
        }
        Ok(out)
    }

    fn vector_stream() -> Vec<u8> {
        hex::decode(format!("{}{RECORD_0}{RECORD_1}", "00".repeat(12))).unwrap()
    }

    #[test]
    fn spec_vector_records() {
        let ping = hex::decode(PING_FRAME).unwrap();
        let mut w =
            AeadWriter::with_stream_nonce(AeadAlgorithm::Aes256Gcm, &key(K_C2S), &[0; 12]).unwrap();
        let out = run(&mut w, &[&ping, &[], &ping]).unwrap();
        assert_eq!(out, vector_stream());
        assert_eq!(w.records(), 2);

        let mut r = AeadReader::new(AeadAlgorithm::Aes256Gcm, &key(K_C2S));
        let plain = run(&mut r, &[&vector_stream()]).unwrap();
        assert_eq!(plain, [ping.clone(), ping].concat());
        assert_eq!(r.records(), 2);
        assert!(r.at_record_boundary());
    }

    #[test]
    fn reader_is_split_invariant() {
        let stream = vector_stream();
        let ping = hex::decode(PING_FRAME).unwrap();
        for split in 0..=stream.len() {
            for split2 in split..=stream.len() {
                let mut r = AeadReader::new(AeadAlgorithm::Aes256Gcm, &key(K_C2S));
                let parts = [&stream[..split], &stream[split..split2], &stream[split2..]];
                let plain = run(&mut r, &parts).unwrap();
                assert_eq!(
                    plain,
                    [ping.clone(), ping.clone()].concat(),
                    "{split}/{split2}"
                );
            }
        }
    }

    #[test]
    fn record_boundary_tracking() {
        let stream = vector_stream();
        let mut r = AeadReader::new(AeadAlgorithm::Aes256Gcm, &key(K_C2S));
        assert!(r.at_record_boundary());
        let mut out = Vec::new();
        r.transform(&stream[..5], &mut out).unwrap();
        assert!(!r.at_record_boundary(), "partial nonce");
        r.transform(&stream[5..12], &mut out).unwrap();
        assert!(r.at_record_boundary(), "nonce only");
        r.transform(&stream[12..14], &mut out).unwrap();
        assert!(!r.at_record_boundary(), "partial header");
        r.transform(&stream[14..30], &mut out).unwrap();
        assert!(!r.at_record_boundary(), "partial record");
        r.transform(&stream[30..44], &mut out).unwrap();
        assert!(r.at_record_boundary());
        assert_eq!(out, hex::decode(PING_FRAME).unwrap());
    }

    #[test]
    fn tampering_is_detected() {
        let stream = vector_stream();
        // No flipped bit anywhere yields plaintext (a flipped nonce bit changes the AAD and
        // nonce). A flip that makes a record header longer leaves the reader waiting for
        // bytes that never come: no output, no clean boundary.
        for i in 0..stream.len() {
            let mut bad = stream.clone();
            bad[i] ^= 0x01;
            let mut r = AeadReader::new(AeadAlgorithm::Aes256Gcm, &key(K_C2S));
            match run(&mut r, &[&bad]) {
                Err(_) => {
                    // The reader stays failed.
                    assert!(r.transform(b"x", &mut Vec::new()).is_err());
                }
                Ok(plain) => {
                    let in_header = (12..16).contains(&i) || (44..48).contains(&i);
                    assert!(in_header, "flip at {i} accepted");
                    assert!(!r.at_record_boundary(), "flip at {i}");
                    let whole_records = if i < 44 { 0 } else { 1 };
                    assert_eq!(plain.len(), whole_records * 12, "flip at {i}");
                }
            }
        }
        // Swapped records: the nonce sequence binds their order.
        let mut swapped = stream[..12].to_vec();
        swapped.extend_from_slice(&stream[44..]);
        swapped.extend_from_slice(&stream[12..44]);
        let mut r = AeadReader::new(AeadAlgorithm::Aes256Gcm, &key(K_C2S));
        assert!(run(&mut r, &[&swapped]).is_err());
        // Wrong key.
        let mut r = AeadReader::new(AeadAlgorithm::Aes256Gcm, &[7; 32]);
        assert!(run(&mut r, &[&stream]).is_err());
        // Wrong algorithm.
        let mut r = AeadReader::new(AeadAlgorithm::XChaCha20Poly1305, &key(K_C2S));
        assert!(run(&mut r, &[&stream]).is_err());
    }

    #[test]
    fn reader_rejects_bad_lengths_before_the_body() {
        for (len, ok) in [
            (15u32, false),
            (16, true),
            (65552, true),
            (65553, false),
            (u32::MAX, false),
        ] {
            let mut r = AeadReader::new(AeadAlgorithm::Aes256Gcm, &[1; 32]);
            let mut input = vec![0; 12];
            input.extend_from_slice(&len.to_be_bytes());
            let res = run(&mut r, &[&input]);
            assert_eq!(res.is_ok(), ok, "ctLen {len}: {res:?}");
        }
    }

    #[test]
    fn empty_record_roundtrip() {
        // ctLen 16 (an empty plaintext) is accepted by Go's reader; our writer never emits one.
        let k = [9; 32];
        let mut w = AeadWriter::with_stream_nonce(AeadAlgorithm::Aes256Gcm, &k, &[0; 12]).unwrap();
        let mut out = Vec::new();
        w.transform(&[], &mut out).unwrap();
        assert!(
            out.is_empty(),
            "empty input writes nothing, not even the nonce"
        );
        let mut manual = w.stream_nonce().to_vec();
        w.seal_record(&[], &mut manual).unwrap();
        assert_eq!(manual.len(), 12 + 4 + 16);
        let mut r = AeadReader::new(AeadAlgorithm::Aes256Gcm, &k);
        assert_eq!(run(&mut r, &[&manual]).unwrap(), b"");
        assert_eq!(r.records(), 1);
    }

    #[test]
    fn writer_splits_large_writes_and_roundtrips() {
        for alg in AeadAlgorithm::ALL {
            let k = [0x42; 32];
            let data = pseudo_random(3 * MAX_RECORD_PLAINTEXT + 123, 7);
            let mut w = AeadWriter::new(alg, &k);
            let wire = run(&mut w, &[&data, b"tail"]).unwrap();
            assert_eq!(w.records(), 5);
            assert_eq!(
                wire.len(),
                alg.nonce_len() + data.len() + 4 + 5 * (RECORD_HEADER_LEN + AEAD_TAG_LEN)
            );
            assert_eq!(&wire[..alg.nonce_len()], w.stream_nonce());
            let first_len = u32::from_be_bytes(
                wire[alg.nonce_len()..alg.nonce_len() + 4]
                    .try_into()
                    .unwrap(),
            );
            assert_eq!(first_len as usize, MAX_RECORD_CIPHERTEXT);
            for seed in 1..4 {
                let mut r = AeadReader::new(alg, &k);
                let plain = run(&mut r, &random_splits(&wire, seed, 70_000)).unwrap();
                assert_eq!(plain, [&data[..], b"tail"].concat(), "{alg} seed {seed}");
            }
        }
    }

    #[test]
    fn xchacha_roundtrip_and_nonce_length() {
        let k = [0x17; 32];
        let nonce: Vec<u8> = (0..24).collect();
        assert!(matches!(
            AeadWriter::with_stream_nonce(AeadAlgorithm::XChaCha20Poly1305, &k, &nonce[..12]),
            Err(AeadError::NonceLength {
                want: 24,
                got: 12,
                ..
            })
        ));
        let mut w =
            AeadWriter::with_stream_nonce(AeadAlgorithm::XChaCha20Poly1305, &k, &nonce).unwrap();
        let wire = run(&mut w, &[b"hello", b"world"]).unwrap();
        assert_eq!(&wire[..24], &nonce[..]);
        assert_eq!(wire.len(), 24 + 2 * (4 + 16 + 5));
        let mut r = AeadReader::new(AeadAlgorithm::XChaCha20Poly1305, &k);
        assert_eq!(run(&mut r, &[&wire]).unwrap(), b"helloworld");
        let mut bad = wire.clone();
        *bad.last_mut().unwrap() ^= 0x80;
        let mut r = AeadReader::new(AeadAlgorithm::XChaCha20Poly1305, &k);
        assert!(run(&mut r, &[&bad]).is_err());
    }

    #[test]
    fn nonce_increments_big_endian_and_wraps_to_an_error() {
        let mut n = NonceState::new(
            AeadAlgorithm::Aes256Gcm,
            &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff],
        );
        n.advance().unwrap();
        assert_eq!(n.current(), &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
        assert_eq!(n.stream_nonce(), &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff]);
        let mut n = NonceState::new(AeadAlgorithm::XChaCha20Poly1305, &[0xff; 24]);
        assert!(n.advance().is_err());

        // A writer whose nonce would wrap refuses the record rather than emit it.
        let mut w =
            AeadWriter::with_stream_nonce(AeadAlgorithm::Aes256Gcm, &[1; 32], &[0xff; 12]).unwrap();
        let mut out = Vec::new();
        assert!(w.transform(b"x", &mut out).is_err());
        assert!(w.transform(b"y", &mut out).is_err(), "stays failed");
    }

    #[test]
    fn algorithm_names() {
        for alg in AeadAlgorithm::ALL {
            assert_eq!(AeadAlgorithm::from_name(alg.as_str()), Some(alg));
        }
        assert_eq!(AeadAlgorithm::from_name("AES-256-GCM"), None);
        assert_eq!(AeadAlgorithm::Aes256Gcm.to_string(), "aes-256-gcm");
    }
}
