//! NTLM (MS-NLMP) client messages for `ntlm://` proxies, sans-IO: the bytes go-ntlmssp (what
//! Go frpc uses, through golib's `net/dial`) puts into `Proxy-Authorization`.
//!
//! - NEGOTIATE: 40 bytes, the flags below, no domain or workstation, version 6.1.7601 / 15.
//! - CHALLENGE from the proxy: server challenge, flags, target info (AV pairs).
//! - AUTHENTICATE: NTLMv2 only: `NTProofStr ‖ blob` as the NT response, an LMv2 response only
//!   when the challenge has no target info, the challenge's flags minus VERSION, no MIC, no
//!   session key. `DOMAIN\user` is split at the first backslash; any other name (also
//!   `user@realm`) is sent whole with an empty domain.
//!
//! A challenge asking for LM_KEY or KEY_EXCH, or without UNICODE, is refused, as go-ntlmssp
//! does. The primitives are checked against MS-NLMP §4.2.4's NTLMv2 test vectors.

use hmac::{Hmac, KeyInit, Mac};
use md4::{Digest, Md4};
use md5::Md5;

const SIGNATURE: &[u8; 8] = b"NTLMSSP\0";

pub const FLAG_UNICODE: u32 = 1 << 0;
pub const FLAG_NTLM: u32 = 1 << 9;
pub const FLAG_ALWAYS_SIGN: u32 = 1 << 15;
pub const FLAG_LM_KEY: u32 = 1 << 7;
pub const FLAG_EXTENDED_SESSION_SECURITY: u32 = 1 << 19;
pub const FLAG_TARGET_INFO: u32 = 1 << 23;
pub const FLAG_VERSION: u32 = 1 << 25;
pub const FLAG_128: u32 = 1 << 29;
pub const FLAG_KEY_EXCH: u32 = 1 << 30;
pub const FLAG_56: u32 = 1 << 31;

/// The NEGOTIATE flags go-ntlmssp sends (0xa0888201).
pub const NEGOTIATE_FLAGS: u32 = FLAG_TARGET_INFO
    | FLAG_56
    | FLAG_128
    | FLAG_UNICODE
    | FLAG_EXTENDED_SESSION_SECURITY
    | FLAG_NTLM
    | FLAG_ALWAYS_SIGN;

/// AV pair IDs used here.
const AV_EOL: u16 = 0;
const AV_TIMESTAMP: u16 = 7;

/// Fixed part of an AUTHENTICATE message (header, five fields, session key field, flags).
const AUTHENTICATE_HEADER_LEN: usize = 64;

/// Seconds between 1601-01-01 (FILETIME's epoch) and 1970-01-01.
const FILETIME_UNIX_OFFSET_SECS: u64 = 11_644_473_600;

/// What is wrong with a CHALLENGE message, or why no AUTHENTICATE can be built for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NtlmError {
    #[error("not an NTLM CHALLENGE message")]
    NotChallenge,
    #[error("NTLM CHALLENGE message truncated ({0})")]
    Truncated(&'static str),
    #[error("only NTLM v2 is supported, but the proxy requested v1 (NTLMSSP_NEGOTIATE_LM_KEY)")]
    LmKeyRequested,
    #[error("the proxy requested NTLM key exchange, which is not supported")]
    KeyExchangeRequested,
    #[error("the proxy does not accept Unicode NTLM messages")]
    NotUnicode,
    #[error("anonymous NTLM authentication is not supported: set a user name and password")]
    Anonymous,
}

/// The NEGOTIATE message (type 1).
pub fn negotiate_message() -> Vec<u8> {
    let mut m = Vec::with_capacity(40);
    m.extend_from_slice(SIGNATURE);
    m.extend_from_slice(&1u32.to_le_bytes());
    m.extend_from_slice(&NEGOTIATE_FLAGS.to_le_bytes());
    // Empty domain and workstation fields, both pointing at the end of the message.
    for _ in 0..2 {
        m.extend_from_slice(&[0, 0, 0, 0]);
        m.extend_from_slice(&40u32.to_le_bytes());
    }
    // Version: 6.1 build 7601, NTLM revision 15.
    m.extend_from_slice(&[6, 1]);
    m.extend_from_slice(&7601u16.to_le_bytes());
    m.extend_from_slice(&[0, 0, 0, 15]);
    m
}

/// A parsed CHALLENGE message (type 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub flags: u32,
    pub server_challenge: [u8; 8],
    /// The raw AV pairs, EOL included; empty when the proxy sent none.
    pub target_info: Vec<u8>,
    /// MsvAvTimestamp from the target info, if present.
    pub timestamp: Option<[u8; 8]>,
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// A `len, maxlen, offset` field's bytes.
fn var_field<'a>(m: &'a [u8], at: usize, what: &'static str) -> Result<&'a [u8], NtlmError> {
    let len = le16(m, at) as usize;
    let off = le32(m, at + 4) as usize;
    m.get(off..off + len).ok_or(NtlmError::Truncated(what))
}

impl Challenge {
    pub fn parse(m: &[u8]) -> Result<Challenge, NtlmError> {
        if m.len() < 12 || &m[..8] != SIGNATURE || le32(m, 8) != 2 {
            return Err(NtlmError::NotChallenge);
        }
        // signature, type, target name field, flags, challenge, reserved, target info field
        if m.len() < 48 {
            return Err(NtlmError::Truncated("header"));
        }
        let flags = le32(m, 20);
        let mut server_challenge = [0u8; 8];
        server_challenge.copy_from_slice(&m[24..32]);
        var_field(m, 12, "target name")?;
        let target_info = var_field(m, 40, "target info")?.to_vec();
        let mut timestamp = None;
        let mut at = 0;
        while !target_info.is_empty() {
            if at + 4 > target_info.len() {
                return Err(NtlmError::Truncated("AV pair"));
            }
            let id = le16(&target_info, at);
            if id == AV_EOL {
                break;
            }
            let len = le16(&target_info, at + 2) as usize;
            let value = target_info
                .get(at + 4..at + 4 + len)
                .ok_or(NtlmError::Truncated("AV pair"))?;
            if id == AV_TIMESTAMP && len == 8 {
                let mut t = [0u8; 8];
                t.copy_from_slice(value);
                timestamp = Some(t);
            }
            at += 4 + len;
        }
        Ok(Challenge {
            flags,
            server_challenge,
            target_info,
            timestamp,
        })
    }
}

/// `DOMAIN\user` → (`user`, `DOMAIN`); anything else is the user with an empty domain.
pub fn split_user(name: &str) -> (&str, &str) {
    match name.split_once('\\') {
        Some((domain, user)) => (user, domain),
        None => (name, ""),
    }
}

fn utf16le(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

fn hmac_md5(key: &[u8], parts: &[&[u8]]) -> [u8; 16] {
    let mut mac = <Hmac<Md5> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// NTOWFv1: MD4 of the UTF-16LE password (the "NT hash").
pub fn nt_hash(password: &str) -> [u8; 16] {
    Md4::digest(utf16le(password)).into()
}

/// NTOWFv2: HMAC-MD5(NT hash, UTF-16LE(uppercase(user) ‖ domain)).
pub fn ntowf_v2(password: &str, user: &str, domain: &str) -> [u8; 16] {
    let who = utf16le(&format!("{}{domain}", user.to_uppercase()));
    hmac_md5(&nt_hash(password), &[&who])
}

/// The NTLMv2 client blob ("temp"): version 1.1, timestamp, client challenge, target info.
pub fn ntlmv2_blob(timestamp: &[u8; 8], client_challenge: &[u8; 8], target_info: &[u8]) -> Vec<u8> {
    let mut t = Vec::with_capacity(32 + target_info.len());
    t.extend_from_slice(&[1, 1, 0, 0, 0, 0, 0, 0]);
    t.extend_from_slice(timestamp);
    t.extend_from_slice(client_challenge);
    t.extend_from_slice(&[0; 4]);
    t.extend_from_slice(target_info);
    t.extend_from_slice(&[0; 4]);
    t
}

/// NTProofStr = HMAC-MD5(NTOWFv2, server challenge ‖ blob). A proxy checks a response by
/// recomputing this from the blob the client sent.
pub fn nt_proof_str(ntowf_v2: &[u8; 16], server_challenge: &[u8; 8], blob: &[u8]) -> [u8; 16] {
    hmac_md5(ntowf_v2, &[server_challenge, blob])
}

/// The NTLMv2 response: NTProofStr ‖ blob.
pub fn ntlmv2_response(
    ntowf_v2: &[u8; 16],
    server_challenge: &[u8; 8],
    client_challenge: &[u8; 8],
    timestamp: &[u8; 8],
    target_info: &[u8],
) -> Vec<u8> {
    let blob = ntlmv2_blob(timestamp, client_challenge, target_info);
    let mut r = nt_proof_str(ntowf_v2, server_challenge, &blob).to_vec();
    r.extend_from_slice(&blob);
    r
}

/// The LMv2 response: HMAC-MD5(NTOWFv2, server ‖ client challenge) ‖ client challenge.
pub fn lmv2_response(
    ntowf_v2: &[u8; 16],
    server_challenge: &[u8; 8],
    client_challenge: &[u8; 8],
) -> Vec<u8> {
    let mut r = hmac_md5(ntowf_v2, &[server_challenge, client_challenge]).to_vec();
    r.extend_from_slice(client_challenge);
    r
}

/// Now as a FILETIME (100 ns ticks since 1601), little endian.
pub fn filetime_now() -> [u8; 8] {
    let since_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let ticks = (since_unix.as_secs() + FILETIME_UNIX_OFFSET_SECS) * 10_000_000
        + u64::from(since_unix.subsec_nanos()) / 100;
    ticks.to_le_bytes()
}

/// The AUTHENTICATE message (type 3) answering `challenge` for `username` (`DOMAIN\user` or
/// `user`). `client_challenge` is random in use; `now` (a FILETIME) is used when the
/// challenge carries no timestamp.
pub fn authenticate_message(
    challenge: &Challenge,
    username: &str,
    password: &str,
    client_challenge: [u8; 8],
    now: [u8; 8],
) -> Result<Vec<u8>, NtlmError> {
    if username.is_empty() && password.is_empty() {
        return Err(NtlmError::Anonymous);
    }
    if challenge.flags & FLAG_LM_KEY != 0 {
        return Err(NtlmError::LmKeyRequested);
    }
    if challenge.flags & FLAG_KEY_EXCH != 0 {
        return Err(NtlmError::KeyExchangeRequested);
    }
    if challenge.flags & FLAG_UNICODE == 0 {
        return Err(NtlmError::NotUnicode);
    }
    let (user, domain) = split_user(username);
    let key = ntowf_v2(password, user, domain);
    let timestamp = challenge.timestamp.unwrap_or(now);
    let nt = ntlmv2_response(
        &key,
        &challenge.server_challenge,
        &client_challenge,
        &timestamp,
        &challenge.target_info,
    );
    let lm = if challenge.target_info.is_empty() {
        lmv2_response(&key, &challenge.server_challenge, &client_challenge)
    } else {
        Vec::new()
    };
    let fields: [&[u8]; 5] = [&lm, &nt, &utf16le(domain), &utf16le(user), &[]];

    let mut m =
        Vec::with_capacity(AUTHENTICATE_HEADER_LEN + fields.iter().map(|f| f.len()).sum::<usize>());
    m.extend_from_slice(SIGNATURE);
    m.extend_from_slice(&3u32.to_le_bytes());
    let mut offset = AUTHENTICATE_HEADER_LEN;
    for f in fields {
        let len = f.len() as u16;
        m.extend_from_slice(&len.to_le_bytes());
        m.extend_from_slice(&len.to_le_bytes());
        m.extend_from_slice(&(offset as u32).to_le_bytes());
        offset += f.len();
    }
    // EncryptedRandomSessionKey: empty (no KEY_EXCH).
    m.extend_from_slice(&[0; 8]);
    m.extend_from_slice(&(challenge.flags & !FLAG_VERSION).to_le_bytes());
    debug_assert_eq!(m.len(), AUTHENTICATE_HEADER_LEN);
    for f in fields {
        m.extend_from_slice(f);
    }
    Ok(m)
}

/// The parts of an AUTHENTICATE message a proxy needs to check it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticate {
    pub lm_response: Vec<u8>,
    pub nt_response: Vec<u8>,
    pub domain: String,
    pub user: String,
    pub flags: u32,
}

impl Authenticate {
    /// Parses a Unicode AUTHENTICATE message (the server side, for tests and tools).
    pub fn parse(m: &[u8]) -> Option<Authenticate> {
        if m.len() < AUTHENTICATE_HEADER_LEN || &m[..8] != SIGNATURE || le32(m, 8) != 3 {
            return None;
        }
        let text = |at| {
            let b = var_field(m, at, "").ok()?;
            let units: Vec<u16> = b
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16(&units).ok()
        };
        Some(Authenticate {
            lm_response: var_field(m, 12, "").ok()?.to_vec(),
            nt_response: var_field(m, 20, "").ok()?.to_vec(),
            domain: text(28)?,
            user: text(36)?,
            flags: le32(m, 60),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // MS-NLMP §4.2.4: User "User", UserDom "Domain", Passwd "Password", server challenge
    // 0123456789abcdef, client challenge aa×8, time 0, target info {NbDomainName "Domain",
    // NbComputerName "Server", EOL}.
    const SERVER_CHALLENGE: [u8; 8] = [0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef];
    const CLIENT_CHALLENGE: [u8; 8] = [0xaa; 8];
    const TARGET_INFO: &str =
        "02000c0044006f006d00610069006e0001000c0053006500720076006500720000000000";

    #[test]
    fn ms_nlmp_4_2_4_ntlmv2_vectors() {
        assert_eq!(
            hex::encode(nt_hash("Password")),
            "a4f49c406510bdcab6824ee7c30fd852"
        );
        let key = ntowf_v2("Password", "User", "Domain");
        assert_eq!(hex::encode(key), "0c868a403bfd7a93a3001ef22ef02e3f");
        // The user name is case-insensitive, the domain is not.
        assert_eq!(ntowf_v2("Password", "user", "Domain"), key);
        assert_ne!(ntowf_v2("Password", "User", "domain"), key);

        assert_eq!(
            hex::encode(lmv2_response(&key, &SERVER_CHALLENGE, &CLIENT_CHALLENGE)),
            "86c35097ac9cec102554764a57cccc19aaaaaaaaaaaaaaaa"
        );
        let ti = hex::decode(TARGET_INFO).unwrap();
        let nt = ntlmv2_response(&key, &SERVER_CHALLENGE, &CLIENT_CHALLENGE, &[0; 8], &ti);
        assert_eq!(
            hex::encode(&nt),
            format!(
                "68cd0ab851e51c96aabc927bebef6a1c\
                 01010000000000000000000000000000aaaaaaaaaaaaaaaa00000000{TARGET_INFO}00000000"
            )
        );
        // SessionBaseKey = HMAC-MD5(NTOWFv2, NTProofStr): ties NTProofStr to §4.2.4.1.2.
        assert_eq!(
            hex::encode(hmac_md5(&key, &[&nt[..16]])),
            "8de40ccadbc14a82f15cb0ad0de95ca3"
        );
    }

    #[test]
    fn negotiate_message_is_go_ntlmssps() {
        assert_eq!(NEGOTIATE_FLAGS, 0xa088_8201);
        assert_eq!(
            hex::encode(negotiate_message()),
            "4e544c4d5353500001000000018288a0\
             0000000028000000000000002800000006\
             01b11d0000000f"
        );
    }

    /// A CHALLENGE like a proxy sends: target name "Domain", `flags`, the §4.2.4 server
    /// challenge, a version, `target_info`.
    fn challenge_bytes(flags: u32, target_info: &[u8]) -> Vec<u8> {
        let name = utf16le("Domain");
        let mut m = Vec::new();
        m.extend_from_slice(SIGNATURE);
        m.extend_from_slice(&2u32.to_le_bytes());
        m.extend_from_slice(&(name.len() as u16).to_le_bytes());
        m.extend_from_slice(&(name.len() as u16).to_le_bytes());
        m.extend_from_slice(&56u32.to_le_bytes());
        m.extend_from_slice(&flags.to_le_bytes());
        m.extend_from_slice(&SERVER_CHALLENGE);
        m.extend_from_slice(&[0; 8]);
        m.extend_from_slice(&(target_info.len() as u16).to_le_bytes());
        m.extend_from_slice(&(target_info.len() as u16).to_le_bytes());
        m.extend_from_slice(&(56 + name.len() as u32).to_le_bytes());
        m.extend_from_slice(&[6, 0, 0x70, 0x17, 0, 0, 0, 15]);
        m.extend_from_slice(&name);
        m.extend_from_slice(target_info);
        m
    }

    #[test]
    fn authenticate_message_layout_and_proof() {
        let ti = hex::decode(TARGET_INFO).unwrap();
        let flags = 0x628a_8233 & !FLAG_KEY_EXCH;
        let ch = Challenge::parse(&challenge_bytes(flags, &ti)).unwrap();
        assert_eq!(ch.server_challenge, SERVER_CHALLENGE);
        assert_eq!(ch.target_info, ti);
        assert_eq!(ch.timestamp, None);
        let m = authenticate_message(&ch, "Domain\\User", "Password", CLIENT_CHALLENGE, [0; 8])
            .unwrap();
        assert_eq!(&m[..12], b"NTLMSSP\0\x03\0\0\0");
        let a = Authenticate::parse(&m).unwrap();
        assert_eq!(a.user, "User");
        assert_eq!(a.domain, "Domain");
        assert!(
            a.lm_response.is_empty(),
            "no LMv2 when target info is present"
        );
        assert_eq!(a.flags, flags & !FLAG_VERSION);
        assert_eq!(
            hex::encode(&a.nt_response[..16]),
            "68cd0ab851e51c96aabc927bebef6a1c"
        );
        // Fields follow the 64-byte header in order: lm, nt, domain, user, workstation.
        assert_eq!(le32(&m, 24), 64);
        assert_eq!(le32(&m, 32) as usize, 64 + a.nt_response.len());
        assert_eq!(le16(&m, 44), 0, "no workstation");
        assert_eq!(m.len(), 64 + a.nt_response.len() + 12 + 8);

        // Without target info: an LMv2 response, and the caller's clock in the blob.
        let ch = Challenge::parse(&challenge_bytes(flags, &[])).unwrap();
        let now = 0x01d9_0000_0000_0000u64.to_le_bytes();
        let m = authenticate_message(&ch, "User", "Password", CLIENT_CHALLENGE, now).unwrap();
        let a = Authenticate::parse(&m).unwrap();
        assert_eq!((a.user.as_str(), a.domain.as_str()), ("User", ""));
        assert_eq!(a.lm_response.len(), 24);
        assert_eq!(&a.nt_response[24..32], &now);
    }

    #[test]
    fn challenge_timestamp_is_used() {
        let mut ti = hex::decode("07000800").unwrap();
        ti.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        ti.extend_from_slice(&[0, 0, 0, 0]);
        let ch = Challenge::parse(&challenge_bytes(FLAG_UNICODE | FLAG_NTLM, &ti)).unwrap();
        assert_eq!(ch.timestamp, Some([1, 2, 3, 4, 5, 6, 7, 8]));
        let m = authenticate_message(&ch, "u", "p", CLIENT_CHALLENGE, [9; 8]).unwrap();
        let a = Authenticate::parse(&m).unwrap();
        assert_eq!(&a.nt_response[24..32], &[1, 2, 3, 4, 5, 6, 7, 8]);
    }

    #[test]
    fn bad_challenges_are_refused() {
        assert_eq!(Challenge::parse(b"nope"), Err(NtlmError::NotChallenge));
        assert_eq!(
            Challenge::parse(&negotiate_message()),
            Err(NtlmError::NotChallenge)
        );
        let mut short = challenge_bytes(FLAG_UNICODE, &hex::decode(TARGET_INFO).unwrap());
        short.truncate(short.len() - 4);
        assert_eq!(
            Challenge::parse(&short),
            Err(NtlmError::Truncated("target info"))
        );
        let ch = |flags| Challenge::parse(&challenge_bytes(flags, &[])).unwrap();
        let auth = |c: &Challenge| authenticate_message(c, "u", "p", [0; 8], [0; 8]);
        assert_eq!(
            auth(&ch(FLAG_UNICODE | FLAG_LM_KEY)),
            Err(NtlmError::LmKeyRequested)
        );
        assert_eq!(
            auth(&ch(FLAG_UNICODE | FLAG_KEY_EXCH)),
            Err(NtlmError::KeyExchangeRequested)
        );
        assert_eq!(auth(&ch(FLAG_NTLM)), Err(NtlmError::NotUnicode));
        assert_eq!(
            authenticate_message(&ch(FLAG_UNICODE), "", "", [0; 8], [0; 8]),
            Err(NtlmError::Anonymous)
        );
    }

    #[test]
    fn user_names_split_like_go_ntlmssp() {
        assert_eq!(split_user("CORP\\alice"), ("alice", "CORP"));
        assert_eq!(split_user("alice@corp.example"), ("alice@corp.example", ""));
        assert_eq!(split_user("a\\b\\c"), ("b\\c", "a"));
    }
}
