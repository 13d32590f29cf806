//! frp wire protocol v2 (`transport.wireProtocol = "v2"`), sans-IO: the magic, frames,
//! message frames, the Hello exchange and the control channel's key schedule (spec §2.5, §3.2,
//! §4.2, §6.2).
//!
//! - Every v2 logical connection starts with the 7-byte [`MAGIC`] (client → server).
//! - Frames: `frameType:u16 BE | flags:u16 BE (= 0) | length:u32 BE | payload`, payload at most
//!   [`MAX_FRAME_PAYLOAD`] bytes, checked on both read and write.
//! - [`FRAME_MESSAGE`] frames carry `typeID:u16 BE ‖ JSON` ([`Message::type_id`]);
//!   [`FRAME_CLIENT_HELLO`] / [`FRAME_SERVER_HELLO`] carry [`ClientHello`] / [`ServerHello`].
//! - On a control connection the client sends magic, ClientHello and Login back to back; the
//!   server answers ServerHello and LoginResp in the clear; then both directions switch to the
//!   AEAD streams of [`crate::crypto::aead`], keyed by [`ControlKeys`] — HKDF-SHA256 over the
//!   token, salted with the [`transcript_hash`] of the two Hello payloads *as sent*.
//!
//! Go writes a frame as two writes (header, then payload). Over the AEAD channel that makes two
//! records per frame; [`encode_v2_message_parts`] returns the two halves so a writer can feed
//! an [`AeadWriter`] the same way. Byte-for-byte record alignment is not required by Go's
//! reader, which treats the decrypted data as a stream.

use hkdf::Hkdf;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::crypto::aead::{AEAD_KEY_LEN, AeadAlgorithm, AeadReader, AeadWriter};
use crate::msg::{CodecError, Message, base64_bytes, is_false, null_default};

/// The preamble of every v2 logical connection: `"FRP\0\x02\r\n"`.
pub const MAGIC: [u8; 7] = *b"FRP\x00\x02\r\n";
/// Length of a frame header.
pub const FRAME_HEADER_LEN: usize = 8;
/// Largest frame payload (including a message's 2-byte type id).
pub const MAX_FRAME_PAYLOAD: usize = 64 * 1024;

/// Frame type of a [`ClientHello`].
pub const FRAME_CLIENT_HELLO: u16 = 1;
/// Frame type of a [`ServerHello`].
pub const FRAME_SERVER_HELLO: u16 = 2;
/// Frame type of a message (`typeID ‖ JSON`).
pub const FRAME_MESSAGE: u16 = 16;

/// The only message codec frp knows.
pub const CODEC_JSON: &str = "json";
/// Length of `clientRandom` / `serverRandom`.
pub const CRYPTO_RANDOM_LEN: usize = 32;

const TRANSCRIPT_LABEL: &[u8] = b"frp wire v2 crypto transcript";
const HKDF_INFO_PREFIX: &str = "frp wire v2 control aead";

/// The frp wire protocol a logical connection speaks: `transport.wireProtocol` on frpc, detected
/// per connection on frps (spec §2.5). It decides the message framing (v1: type byte + i64
/// length; v2: frames) and the control channel's cipher (v1: AES-128-CFB; v2: AEAD).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum WireVersion {
    #[default]
    V1,
    V2,
}

impl WireVersion {
    /// frp's spelling: `"v1"` / `"v2"` (config values, `/api/clients`).
    pub fn as_str(self) -> &'static str {
        match self {
            WireVersion::V1 => "v1",
            WireVersion::V2 => "v2",
        }
    }

    /// Parses a `transport.wireProtocol` value.
    pub fn from_config(s: &str) -> Option<WireVersion> {
        match s {
            "" | "v1" => Some(WireVersion::V1),
            "v2" => Some(WireVersion::V2),
            _ => None,
        }
    }

    /// The largest datagram a `UDPPacket` on a udp work connection can carry in this framing
    /// (spec §9): the base64 content (4/3 of the datagram) plus the JSON around it and the
    /// user's address must fit a v1 body (10240 bytes) or a v2 frame payload (64 KiB, the
    /// type ID included). frp itself writes bigger ones and the peer then drops the whole work
    /// connection (v1 reader, v2 writer); frp-uring drops only the datagram.
    pub fn max_udp_datagram(self) -> usize {
        match self {
            WireVersion::V1 => 7400,
            WireVersion::V2 => 49000,
        }
    }
}

impl std::fmt::Display for WireVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What went wrong framing or decoding v2 bytes.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("bad v2 magic {0:02x?}")]
    BadMagic([u8; 7]),
    #[error("unsupported frame flags: {0}")]
    BadFlags(u16),
    #[error("frame payload length {0} exceeds limit {MAX_FRAME_PAYLOAD}")]
    TooLong(usize),
    #[error("unexpected frame type {got}, want {want}")]
    UnexpectedFrameType { got: u16, want: u16 },
    #[error("message frame payload too short")]
    ShortMessage,
    #[error("unknown v2 message type {0}")]
    UnknownMessageType(u16),
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// One v2 frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub frame_type: u16,
    pub payload: Vec<u8>,
}

/// Whether `prefix` starts a v2 connection: `None` while fewer than 7 bytes are known. frps
/// replays the 7 bytes as v1 when they are not the magic (spec §2.5).
pub fn detect_magic(prefix: &[u8]) -> Option<bool> {
    (prefix.len() >= MAGIC.len()).then(|| prefix[..MAGIC.len()] == MAGIC)
}

/// Parses a frame header into the frame type and payload length, rejecting nonzero flags and
/// oversized payloads.
pub fn parse_frame_header(h: &[u8; FRAME_HEADER_LEN]) -> Result<(u16, usize), WireError> {
    let frame_type = u16::from_be_bytes([h[0], h[1]]);
    let flags = u16::from_be_bytes([h[2], h[3]]);
    let len = u32::from_be_bytes([h[4], h[5], h[6], h[7]]) as usize;
    if flags != 0 {
        return Err(WireError::BadFlags(flags));
    }
    if len > MAX_FRAME_PAYLOAD {
        return Err(WireError::TooLong(len));
    }
    Ok((frame_type, len))
}

/// The header of a frame with `payload_len` bytes of payload.
pub fn frame_header(
    frame_type: u16,
    payload_len: usize,
) -> Result<[u8; FRAME_HEADER_LEN], WireError> {
    if payload_len > MAX_FRAME_PAYLOAD {
        return Err(WireError::TooLong(payload_len));
    }
    let mut h = [0; FRAME_HEADER_LEN];
    h[0..2].copy_from_slice(&frame_type.to_be_bytes());
    h[4..8].copy_from_slice(&(payload_len as u32).to_be_bytes());
    Ok(h)
}

/// Appends one frame to `out`.
pub fn encode_frame_into(
    frame_type: u16,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), WireError> {
    let header = frame_header(frame_type, payload.len())?;
    out.reserve(FRAME_HEADER_LEN + payload.len());
    out.extend_from_slice(&header);
    out.extend_from_slice(payload);
    Ok(())
}

/// Encodes one frame.
pub fn encode_frame(frame_type: u16, payload: &[u8]) -> Result<Vec<u8>, WireError> {
    let mut out = Vec::new();
    encode_frame_into(frame_type, payload, &mut out)?;
    Ok(out)
}

/// A message frame's payload: `typeID:u16 BE ‖ JSON`.
pub fn message_payload(msg: &Message) -> Result<Vec<u8>, WireError> {
    let json = msg.to_json();
    let len = 2 + json.len();
    if len > MAX_FRAME_PAYLOAD {
        return Err(WireError::TooLong(len));
    }
    let mut payload = Vec::with_capacity(len);
    payload.extend_from_slice(&msg.type_id().to_be_bytes());
    payload.extend_from_slice(&json);
    Ok(payload)
}

/// A message frame as Go writes it: the header and the payload, separately (Go's two writes,
/// hence two AEAD records on the v2 control channel).
pub fn encode_v2_message_parts(
    msg: &Message,
) -> Result<([u8; FRAME_HEADER_LEN], Vec<u8>), WireError> {
    let payload = message_payload(msg)?;
    Ok((frame_header(FRAME_MESSAGE, payload.len())?, payload))
}

/// Appends one message frame to `out`.
pub fn encode_v2_message_into(msg: &Message, out: &mut Vec<u8>) -> Result<(), WireError> {
    let (header, payload) = encode_v2_message_parts(msg)?;
    out.reserve(FRAME_HEADER_LEN + payload.len());
    out.extend_from_slice(&header);
    out.extend_from_slice(&payload);
    Ok(())
}

/// Encodes one message frame. Fails only for a message whose JSON exceeds the frame limit
/// (which Go refuses to write as well).
pub fn encode_v2_message(msg: &Message) -> Result<Vec<u8>, WireError> {
    let mut out = Vec::new();
    encode_v2_message_into(msg, &mut out)?;
    Ok(out)
}

/// Decodes a message frame (frp's `DecodeV2MessageFrame`).
pub fn decode_message_frame(frame: &Frame) -> Result<Message, WireError> {
    if frame.frame_type != FRAME_MESSAGE {
        return Err(WireError::UnexpectedFrameType {
            got: frame.frame_type,
            want: FRAME_MESSAGE,
        });
    }
    decode_message_payload(&frame.payload)
}

/// Decodes `typeID ‖ JSON`.
pub fn decode_message_payload(payload: &[u8]) -> Result<Message, WireError> {
    if payload.len() < 2 {
        return Err(WireError::ShortMessage);
    }
    let type_id = u16::from_be_bytes([payload[0], payload[1]]);
    if !(1..=18).contains(&type_id) {
        return Err(WireError::UnknownMessageType(type_id));
    }
    Ok(Message::from_json_v2(type_id, &payload[2..])?)
}

/// Sans-IO v2 decoder: push bytes with [`V2Decoder::feed`], pull frames or messages. A bad
/// header (or magic) fails as soon as it is complete, before any body is awaited; at most one
/// frame beyond what the caller has pulled is buffered.
#[derive(Debug, Default)]
pub struct V2Decoder {
    buf: Vec<u8>,
    pos: usize,
    /// The magic is still to be checked and consumed.
    expect_magic: bool,
}

impl V2Decoder {
    /// A decoder for bytes after the magic.
    pub fn new() -> Self {
        Self::default()
    }

    /// A decoder for a whole connection: the first 7 bytes must be [`MAGIC`].
    pub fn with_magic() -> Self {
        V2Decoder {
            expect_magic: true,
            ..Self::default()
        }
    }

    /// Bytes of buffer memory held.
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.buf.capacity()
    }

    /// Appends received bytes.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    fn consume(&mut self, n: usize) {
        self.pos += n;
        if self.pos == self.buf.len() {
            crate::msg::release_consumed(&mut self.buf);
            self.pos = 0;
        } else if self.pos > 64 * 1024 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
    }

    fn check_magic(&mut self) -> Result<bool, WireError> {
        if !self.expect_magic {
            return Ok(true);
        }
        let avail = &self.buf[self.pos..];
        let n = avail.len().min(MAGIC.len());
        if avail[..n] != MAGIC[..n] {
            let mut got = [0; 7];
            got[..n].copy_from_slice(&avail[..n]);
            return Err(WireError::BadMagic(got));
        }
        if n < MAGIC.len() {
            return Ok(false);
        }
        self.expect_magic = false;
        self.consume(MAGIC.len());
        Ok(true)
    }

    /// The next complete frame of any type, `Ok(None)` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, WireError> {
        if !self.check_magic()? {
            return Ok(None);
        }
        let avail = &self.buf[self.pos..];
        if avail.len() < FRAME_HEADER_LEN {
            return Ok(None);
        }
        let header: &[u8; FRAME_HEADER_LEN] =
            avail[..FRAME_HEADER_LEN].try_into().expect("8 bytes");
        let (frame_type, len) = parse_frame_header(header)?;
        if avail.len() < FRAME_HEADER_LEN + len {
            return Ok(None);
        }
        let payload = avail[FRAME_HEADER_LEN..FRAME_HEADER_LEN + len].to_vec();
        self.consume(FRAME_HEADER_LEN + len);
        Ok(Some(Frame {
            frame_type,
            payload,
        }))
    }

    /// The next complete message frame, `Ok(None)` if more bytes are needed. Any other frame
    /// type is an error.
    pub fn next_message(&mut self) -> Result<Option<Message>, WireError> {
        match self.next_frame()? {
            Some(frame) => decode_message_frame(&frame).map(Some),
            None => Ok(None),
        }
    }

    /// Bytes received but not part of any frame returned so far (e.g. proxied data that
    /// followed StartWorkConn in the same read). Empties the decoder.
    pub fn take_remaining(&mut self) -> Vec<u8> {
        let rest = self.buf.split_off(self.pos);
        self.buf.clear();
        self.pos = 0;
        rest
    }

    /// Number of buffered bytes not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }
}

// ------------------------------------------------------------------------------- hellos

/// `ClientHello.bootstrap`: informational, how the client reached the server.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootstrapInfo {
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub transport: String,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "is_false"
    )]
    pub tls: bool,
    #[serde(
        rename = "tcpMux",
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "is_false"
    )]
    pub tcp_mux: bool,
}

/// `ClientHello.capabilities.message`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageCapabilities {
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub codecs: Vec<String>,
}

/// `ClientHello.capabilities.crypto`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CryptoCapabilities {
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub algorithms: Vec<String>,
    #[serde(
        rename = "clientRandom",
        default,
        with = "base64_bytes",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub client_random: Vec<u8>,
}

/// `ClientHello.capabilities` (always emitted, as Go's omitempty skips no struct).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientCapabilities {
    #[serde(default, deserialize_with = "null_default")]
    pub message: MessageCapabilities,
    #[serde(default, deserialize_with = "null_default")]
    pub crypto: CryptoCapabilities,
}

/// The client's first frame on a v2 control connection (frame type 1).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientHello {
    #[serde(default, deserialize_with = "null_default")]
    pub bootstrap: BootstrapInfo,
    #[serde(default, deserialize_with = "null_default")]
    pub capabilities: ClientCapabilities,
}

/// `ServerHello.selected.message`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageSelection {
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub codec: String,
}

/// `ServerHello.selected.crypto`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CryptoSelection {
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub algorithm: String,
    #[serde(
        rename = "serverRandom",
        default,
        with = "base64_bytes",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub server_random: Vec<u8>,
}

/// `ServerHello.selected`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerSelection {
    #[serde(default, deserialize_with = "null_default")]
    pub message: MessageSelection,
    #[serde(default, deserialize_with = "null_default")]
    pub crypto: CryptoSelection,
}

/// The server's answer to a ClientHello (frame type 2).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerHello {
    #[serde(default, deserialize_with = "null_default")]
    pub selected: ServerSelection,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub error: String,
}

/// Why a Hello exchange failed. The messages are Go's (frps sends them in
/// `ServerHello.error`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HelloError {
    #[error("unsupported message codec")]
    UnsupportedCodec,
    #[error("invalid crypto client random length {0}, want {CRYPTO_RANDOM_LEN}")]
    ClientRandomLength(usize),
    #[error("no supported crypto algorithm")]
    NoSupportedAlgorithm,
    /// The server refused the ClientHello; its reason.
    #[error("{0}")]
    Rejected(String),
    #[error("unsupported selected message codec: {0}")]
    UnsupportedSelectedCodec(String),
    #[error("unknown selected crypto algorithm: {0}")]
    UnknownAlgorithm(String),
    #[error("selected crypto algorithm was not advertised by client: {0}")]
    NotAdvertised(String),
    #[error("invalid crypto server random length {0}, want {CRYPTO_RANDOM_LEN}")]
    ServerRandomLength(usize),
    #[error("decode {which}: {reason}")]
    BadJson { which: &'static str, reason: String },
}

/// The algorithms in the order a Go client on this machine would offer them: AES-256-GCM first
/// when the CPU accelerates it (x86-64 AES+PCLMULQDQ+SSE4.1+SSSE3, aarch64 AES+PMULL).
pub fn preferred_algorithms() -> [AeadAlgorithm; 2] {
    if has_fast_aes_gcm() {
        [AeadAlgorithm::Aes256Gcm, AeadAlgorithm::XChaCha20Poly1305]
    } else {
        [AeadAlgorithm::XChaCha20Poly1305, AeadAlgorithm::Aes256Gcm]
    }
}

fn has_fast_aes_gcm() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
            && std::arch::is_x86_feature_detected!("sse4.1")
            && std::arch::is_x86_feature_detected!("ssse3")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
            && std::arch::is_aarch64_feature_detected!("pmull")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// The first algorithm in the client's list that we support (frps' choice).
pub fn select_algorithm<S: AsRef<str>>(client_algorithms: &[S]) -> Option<AeadAlgorithm> {
    client_algorithms
        .iter()
        .find_map(|a| AeadAlgorithm::from_name(a.as_ref()))
}

impl ClientHello {
    /// A ClientHello offering `algorithms` (in order) and the json codec.
    pub fn new(
        bootstrap: BootstrapInfo,
        algorithms: &[AeadAlgorithm],
        client_random: [u8; CRYPTO_RANDOM_LEN],
    ) -> ClientHello {
        ClientHello {
            bootstrap,
            capabilities: ClientCapabilities {
                message: MessageCapabilities {
                    codecs: vec![CODEC_JSON.to_string()],
                },
                crypto: CryptoCapabilities {
                    algorithms: algorithms.iter().map(|a| a.as_str().to_string()).collect(),
                    client_random: client_random.to_vec(),
                },
            },
        }
    }

    /// What frpc sends: [`preferred_algorithms`] and a fresh random.
    pub fn generate(bootstrap: BootstrapInfo) -> ClientHello {
        ClientHello::new(bootstrap, &preferred_algorithms(), rand::random())
    }

    /// The frame payload (Go's JSON). Keep these exact bytes for the transcript.
    pub fn to_payload(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("serialisable")
    }

    pub fn from_payload(payload: &[u8]) -> Result<ClientHello, HelloError> {
        serde_json::from_slice(payload).map_err(|e| HelloError::BadJson {
            which: "ClientHello",
            reason: e.to_string(),
        })
    }

    /// frps' checks (`ValidateClientHello`): the json codec, a 32-byte random and a supported
    /// algorithm. Returns the algorithm frps selects.
    pub fn validate(&self) -> Result<AeadAlgorithm, HelloError> {
        if !self
            .capabilities
            .message
            .codecs
            .iter()
            .any(|c| c == CODEC_JSON)
        {
            return Err(HelloError::UnsupportedCodec);
        }
        let crypto = &self.capabilities.crypto;
        if crypto.client_random.len() != CRYPTO_RANDOM_LEN {
            return Err(HelloError::ClientRandomLength(crypto.client_random.len()));
        }
        select_algorithm(&crypto.algorithms).ok_or(HelloError::NoSupportedAlgorithm)
    }
}

impl ServerHello {
    /// A successful answer selecting `algorithm`.
    pub fn new(algorithm: AeadAlgorithm, server_random: [u8; CRYPTO_RANDOM_LEN]) -> ServerHello {
        ServerHello {
            selected: ServerSelection {
                message: MessageSelection {
                    codec: CODEC_JSON.to_string(),
                },
                crypto: CryptoSelection {
                    algorithm: algorithm.as_str().to_string(),
                    server_random: server_random.to_vec(),
                },
            },
            error: String::new(),
        }
    }

    /// frps' refusal: `{"selected":{"message":{"codec":"json"},"crypto":{}},"error":"…"}`.
    pub fn rejection(err: &HelloError) -> ServerHello {
        ServerHello {
            selected: ServerSelection {
                message: MessageSelection {
                    codec: CODEC_JSON.to_string(),
                },
                crypto: CryptoSelection::default(),
            },
            error: err.to_string(),
        }
    }

    /// frps' answer to `client` (`NewServerHello`): a selection, or the reason it has none.
    pub fn answer(
        client: &ClientHello,
        server_random: [u8; CRYPTO_RANDOM_LEN],
    ) -> Result<ServerHello, HelloError> {
        let algorithm = client.validate()?;
        Ok(ServerHello::new(algorithm, server_random))
    }

    /// The frame payload (Go's JSON). Keep these exact bytes for the transcript.
    pub fn to_payload(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("serialisable")
    }

    pub fn from_payload(payload: &[u8]) -> Result<ServerHello, HelloError> {
        serde_json::from_slice(payload).map_err(|e| HelloError::BadJson {
            which: "ServerHello",
            reason: e.to_string(),
        })
    }

    /// frpc's checks on this answer to `client`: no `error`, codec json, an algorithm that we
    /// support and the client offered, a 32-byte random. Returns the algorithm.
    pub fn validate_for(&self, client: &ClientHello) -> Result<AeadAlgorithm, HelloError> {
        if !self.error.is_empty() {
            return Err(HelloError::Rejected(self.error.clone()));
        }
        if self.selected.message.codec != CODEC_JSON {
            return Err(HelloError::UnsupportedSelectedCodec(
                self.selected.message.codec.clone(),
            ));
        }
        let crypto = &self.selected.crypto;
        let algorithm = AeadAlgorithm::from_name(&crypto.algorithm)
            .ok_or_else(|| HelloError::UnknownAlgorithm(crypto.algorithm.clone()))?;
        if !client
            .capabilities
            .crypto
            .algorithms
            .iter()
            .any(|a| a == &crypto.algorithm)
        {
            return Err(HelloError::NotAdvertised(crypto.algorithm.clone()));
        }
        if crypto.server_random.len() != CRYPTO_RANDOM_LEN {
            return Err(HelloError::ServerRandomLength(crypto.server_random.len()));
        }
        Ok(algorithm)
    }
}

/// `SHA-256("frp wire v2 crypto transcript" ‖ 0 ‖ "client hello" ‖ 0 ‖ u64be(len) ‖ CH ‖ 0 ‖
/// "server hello" ‖ 0 ‖ u64be(len) ‖ SH)` over the Hello payloads exactly as sent.
pub fn transcript_hash(client_hello_payload: &[u8], server_hello_payload: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(TRANSCRIPT_LABEL);
    for (label, payload) in [
        (&b"client hello"[..], client_hello_payload),
        (b"server hello", server_hello_payload),
    ] {
        h.update([0]);
        h.update(label);
        h.update([0]);
        h.update((payload.len() as u64).to_be_bytes());
        h.update(payload);
    }
    h.finalize().into()
}

/// The negotiated crypto of a v2 control connection (frp's `CryptoContext`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CryptoContext {
    pub algorithm: AeadAlgorithm,
    pub transcript_hash: [u8; 32],
}

impl CryptoContext {
    pub fn new(
        algorithm: AeadAlgorithm,
        client_hello_payload: &[u8],
        server_hello_payload: &[u8],
    ) -> CryptoContext {
        CryptoContext {
            algorithm,
            transcript_hash: transcript_hash(client_hello_payload, server_hello_payload),
        }
    }

    /// frps: answers a ClientHello payload. Returns the ServerHello payload to send (a
    /// rejection on failure, after which frps closes) and, on success, the context.
    pub fn server_answer(
        client_hello_payload: &[u8],
        server_random: [u8; CRYPTO_RANDOM_LEN],
    ) -> (Vec<u8>, Result<CryptoContext, HelloError>) {
        let answer = ClientHello::from_payload(client_hello_payload)
            .and_then(|ch| ServerHello::answer(&ch, server_random));
        match answer {
            Ok(sh) => {
                let payload = sh.to_payload();
                let algorithm = AeadAlgorithm::from_name(&sh.selected.crypto.algorithm)
                    .expect("selected from the supported set");
                let ctx = CryptoContext::new(algorithm, client_hello_payload, &payload);
                (payload, Ok(ctx))
            }
            Err(err) => (ServerHello::rejection(&err).to_payload(), Err(err)),
        }
    }

    /// frpc: checks the ServerHello payload against the ClientHello payload it sent
    /// (`NewClientCryptoContext`, after the `error` check frpc makes first).
    pub fn client_finish(
        client_hello_payload: &[u8],
        server_hello_payload: &[u8],
    ) -> Result<CryptoContext, HelloError> {
        let ch = ClientHello::from_payload(client_hello_payload)?;
        let sh = ServerHello::from_payload(server_hello_payload)?;
        let algorithm = sh.validate_for(&ch)?;
        Ok(CryptoContext::new(
            algorithm,
            client_hello_payload,
            server_hello_payload,
        ))
    }

    /// The control channel keys for `secret` (`auth.token`).
    pub fn control_keys(&self, secret: &[u8]) -> ControlKeys {
        ControlKeys::derive(secret, self.algorithm, &self.transcript_hash)
    }
}

/// A direction on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    ClientToServer,
    ServerToClient,
}

/// The two AEAD keys of a v2 control channel.
#[derive(Clone, PartialEq, Eq)]
pub struct ControlKeys {
    pub algorithm: AeadAlgorithm,
    pub client_to_server: [u8; AEAD_KEY_LEN],
    pub server_to_client: [u8; AEAD_KEY_LEN],
}

impl ControlKeys {
    /// `HKDF-SHA256(secret, salt = transcript hash, info = "frp wire v2 control aead <alg>
    /// <direction>", 32)` for both directions.
    pub fn derive(secret: &[u8], algorithm: AeadAlgorithm, transcript_hash: &[u8]) -> ControlKeys {
        let hk = Hkdf::<Sha256>::new(Some(transcript_hash), secret);
        let key = |direction: &str| {
            let info = format!("{HKDF_INFO_PREFIX} {algorithm} {direction}");
            let mut okm = [0; AEAD_KEY_LEN];
            hk.expand(info.as_bytes(), &mut okm)
                .expect("32 bytes is a valid HKDF-SHA256 length");
            okm
        };
        ControlKeys {
            algorithm,
            client_to_server: key("client-to-server"),
            server_to_client: key("server-to-client"),
        }
    }

    /// The key of one direction.
    pub fn key(&self, direction: Direction) -> &[u8; AEAD_KEY_LEN] {
        match direction {
            Direction::ClientToServer => &self.client_to_server,
            Direction::ServerToClient => &self.server_to_client,
        }
    }

    /// A reader for bytes flowing in `direction`.
    pub fn reader(&self, direction: Direction) -> AeadReader {
        AeadReader::new(self.algorithm, self.key(direction))
    }

    /// A writer (fresh random stream nonce) for bytes flowing in `direction`.
    pub fn writer(&self, direction: Direction) -> AeadWriter {
        AeadWriter::new(self.algorithm, self.key(direction))
    }

    /// frpc's `(inbound, outbound)`: reads server-to-client, writes client-to-server.
    pub fn client_streams(&self) -> (AeadReader, AeadWriter) {
        (
            self.reader(Direction::ServerToClient),
            self.writer(Direction::ClientToServer),
        )
    }

    /// frps' `(inbound, outbound)`: reads client-to-server, writes server-to-client.
    pub fn server_streams(&self) -> (AeadReader, AeadWriter) {
        (
            self.reader(Direction::ClientToServer),
            self.writer(Direction::ServerToClient),
        )
    }
}

impl std::fmt::Debug for ControlKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlKeys")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::{NewWorkConn, Ping};
    use dataplane::Transform;

    const CH: &str = r#"{"bootstrap":{"transport":"tcp","tls":true,"tcpMux":true},"capabilities":{"message":{"codecs":["json"]},"crypto":{"algorithms":["aes-256-gcm","xchacha20-poly1305"],"clientRandom":"ERERERERERERERERERERERERERERERERERERERERERE="}}}"#;
    const SH: &str = r#"{"selected":{"message":{"codec":"json"},"crypto":{"algorithm":"aes-256-gcm","serverRandom":"IiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiI="}}}"#;
    const TRANSCRIPT: &str = "f6a087d3cae76b455383f27a7bf82553094ec19df7276af461d9d55163fe21e4";
    const K_C2S: &str = "5e5d5703ed7054d5624d1105b8af24960c47d074b046186a4f00d124e092559c";
    const K_S2C: &str = "171ad684b3abdb64c6425e372d95a66f0c5122b229c82bc02b4847d6ba7959f5";
    const PING_FRAME: &str = "0010000000000004000b7b7d";
    const AEAD_STREAM: &str = "000000000000000000000000\
        0000001c86c6c0a5cce2dc9852ab6c75482d340d724dacefa126dbe2696d92c4\
        0000001c1bd128d67d2666cb787235e715a2111bc110654fe511da705fc2d79a";

    fn bootstrap() -> BootstrapInfo {
        BootstrapInfo {
            transport: "tcp".into(),
            tls: true,
            tcp_mux: true,
        }
    }

    fn spec_client_hello() -> ClientHello {
        ClientHello::new(bootstrap(), &AeadAlgorithm::ALL, [0x11; 32])
    }

    #[test]
    fn hello_payloads_match_go() {
        assert_eq!(
            String::from_utf8(spec_client_hello().to_payload()).unwrap(),
            CH
        );
        let sh = ServerHello::answer(&spec_client_hello(), [0x22; 32]).unwrap();
        assert_eq!(String::from_utf8(sh.to_payload()).unwrap(), SH);
        assert_eq!(
            ClientHello::from_payload(CH.as_bytes()).unwrap(),
            spec_client_hello()
        );
        assert_eq!(ServerHello::from_payload(SH.as_bytes()).unwrap(), sh);

        let rejection = ServerHello::rejection(&HelloError::NoSupportedAlgorithm);
        assert_eq!(
            String::from_utf8(rejection.to_payload()).unwrap(),
            r#"{"selected":{"message":{"codec":"json"},"crypto":{}},"error":"no supported crypto algorithm"}"#
        );
        // Empty structs are still emitted, empty fields are not.
        assert_eq!(
            String::from_utf8(ClientHello::default().to_payload()).unwrap(),
            r#"{"bootstrap":{},"capabilities":{"message":{},"crypto":{}}}"#
        );
    }

    #[test]
    fn transcript_and_keys_match_the_spec() {
        let hash = transcript_hash(CH.as_bytes(), SH.as_bytes());
        assert_eq!(hex::encode(hash), TRANSCRIPT);
        let keys = ControlKeys::derive(b"12345678", AeadAlgorithm::Aes256Gcm, &hash);
        assert_eq!(hex::encode(keys.client_to_server), K_C2S);
        assert_eq!(hex::encode(keys.server_to_client), K_S2C);
        assert_eq!(
            format!("{keys:?}"),
            "ControlKeys { algorithm: Aes256Gcm, .. }"
        );

        let ctx = CryptoContext::client_finish(CH.as_bytes(), SH.as_bytes()).unwrap();
        assert_eq!(ctx.algorithm, AeadAlgorithm::Aes256Gcm);
        assert_eq!(ctx.control_keys(b"12345678"), keys);

        let (payload, ctx2) = CryptoContext::server_answer(CH.as_bytes(), [0x22; 32]);
        assert_eq!(payload, SH.as_bytes());
        assert_eq!(ctx2.unwrap(), ctx);

        // The info strings name the algorithm: xchacha keys differ.
        let x = ControlKeys::derive(b"12345678", AeadAlgorithm::XChaCha20Poly1305, &hash);
        assert_ne!(x.client_to_server, keys.client_to_server);
        assert_ne!(x.client_to_server, x.server_to_client);
    }

    #[test]
    fn transcript_is_over_the_bytes_as_sent() {
        // Same JSON meaning, different bytes: a different transcript.
        let reordered = CH.replace(r#""tls":true,"tcpMux":true"#, r#""tcpMux":true,"tls":true"#);
        assert_ne!(
            transcript_hash(reordered.as_bytes(), SH.as_bytes()),
            transcript_hash(CH.as_bytes(), SH.as_bytes())
        );
        let ctx = CryptoContext::client_finish(reordered.as_bytes(), SH.as_bytes()).unwrap();
        assert_ne!(hex::encode(ctx.transcript_hash), TRANSCRIPT);
    }

    #[test]
    fn ping_frame_and_aead_vector() {
        let ping: Message = Ping::default().into();
        assert_eq!(hex::encode(encode_v2_message(&ping).unwrap()), PING_FRAME);
        let (header, payload) = encode_v2_message_parts(&ping).unwrap();
        assert_eq!(hex::encode(header), &PING_FRAME[..16]);
        assert_eq!(hex::encode(&payload), &PING_FRAME[16..]);

        let keys = ControlKeys::derive(
            b"12345678",
            AeadAlgorithm::Aes256Gcm,
            &transcript_hash(CH.as_bytes(), SH.as_bytes()),
        );
        let mut w = AeadWriter::with_stream_nonce(
            keys.algorithm,
            keys.key(Direction::ClientToServer),
            &[0; 12],
        )
        .unwrap();
        let frame = encode_v2_message(&ping).unwrap();
        let mut wire = Vec::new();
        w.transform(&frame, &mut wire).unwrap();
        w.transform(&frame, &mut wire).unwrap();
        assert_eq!(hex::encode(&wire), AEAD_STREAM);

        let mut r = keys.reader(Direction::ClientToServer);
        let mut plain = Vec::new();
        r.transform(&wire, &mut plain).unwrap();
        let mut d = V2Decoder::new();
        d.feed(&plain);
        assert_eq!(d.next_message().unwrap(), Some(ping.clone()));
        assert_eq!(d.next_message().unwrap(), Some(ping));
        assert_eq!(d.next_message().unwrap(), None);

        // The other direction's key does not open it.
        let mut r = keys.reader(Direction::ServerToClient);
        assert!(r.transform(&wire, &mut Vec::new()).is_err());
    }

    #[test]
    fn new_work_conn_frame_vector() {
        let m: Message = NewWorkConn {
            run_id: "0123456789abcdef".into(),
            ..Default::default()
        }
        .into();
        let mut want = hex::decode("001000000000001f0006").unwrap();
        want.extend_from_slice(br#"{"run_id":"0123456789abcdef"}"#);
        assert_eq!(encode_v2_message(&m).unwrap(), want);
        let mut d = V2Decoder::with_magic();
        d.feed(&MAGIC);
        d.feed(&want);
        assert_eq!(d.next_message().unwrap(), Some(m));
    }

    fn sample_stream() -> (Vec<u8>, Vec<Frame>) {
        let frames = vec![
            Frame {
                frame_type: FRAME_CLIENT_HELLO,
                payload: CH.as_bytes().to_vec(),
            },
            Frame {
                frame_type: FRAME_MESSAGE,
                payload: message_payload(&Ping::default().into()).unwrap(),
            },
            Frame {
                frame_type: 99,
                payload: vec![],
            },
            Frame {
                frame_type: FRAME_MESSAGE,
                payload: message_payload(
                    &NewWorkConn {
                        run_id: "r".into(),
                        ..Default::default()
                    }
                    .into(),
                )
                .unwrap(),
            },
        ];
        let mut stream = MAGIC.to_vec();
        for f in &frames {
            encode_frame_into(f.frame_type, &f.payload, &mut stream).unwrap();
        }
        stream.extend_from_slice(b"raw tail");
        (stream, frames)
    }

    #[test]
    fn decoder_handles_every_split_point() {
        let (stream, frames) = sample_stream();
        for split in 0..=stream.len() {
            let mut d = V2Decoder::with_magic();
            let mut got = Vec::new();
            for part in [&stream[..split], &stream[split..]] {
                d.feed(part);
                while got.len() < frames.len() {
                    match d.next_frame().unwrap() {
                        Some(f) => got.push(f),
                        None => break,
                    }
                }
            }
            assert_eq!(got, frames, "split at {split}");
            assert_eq!(d.take_remaining(), b"raw tail");
        }
        // Byte by byte.
        let mut d = V2Decoder::with_magic();
        let mut got = Vec::new();
        for b in &stream {
            d.feed(std::slice::from_ref(b));
            while got.len() < frames.len() {
                match d.next_frame().unwrap() {
                    Some(f) => got.push(f),
                    None => break,
                }
            }
        }
        assert_eq!(got, frames);
        assert_eq!(d.buffered(), 8);
    }

    #[test]
    fn decoder_rejects_bad_input_early() {
        // Flags, before the body.
        let mut d = V2Decoder::new();
        d.feed(&[0, 16, 0, 1, 0, 0, 0, 4]);
        assert_eq!(d.next_frame(), Err(WireError::BadFlags(1)));
        // Length, before the body.
        let mut d = V2Decoder::new();
        d.feed(&[0, 16, 0, 0, 0, 1, 0, 1]);
        assert_eq!(d.next_frame(), Err(WireError::TooLong(65537)));
        let mut d = V2Decoder::new();
        d.feed(&[0, 16, 0, 0, 0, 1, 0, 0]);
        assert_eq!(d.next_frame(), Ok(None), "65536 is allowed");
        // Magic, on the first wrong byte.
        let mut d = V2Decoder::with_magic();
        d.feed(b"FRX");
        assert!(matches!(d.next_frame(), Err(WireError::BadMagic(_))));
        let mut d = V2Decoder::with_magic();
        d.feed(b"FRP\0");
        assert_eq!(d.next_frame(), Ok(None));
        // A v1 Login is not v2.
        let mut d = V2Decoder::with_magic();
        d.feed(b"o\0\0\0\0\0\0\0\x02{}");
        assert!(matches!(d.next_frame(), Err(WireError::BadMagic(_))));
        // Message frames: wrong type, short payload, unknown id, bad JSON.
        let mut d = V2Decoder::new();
        d.feed(&encode_frame(FRAME_SERVER_HELLO, b"{}").unwrap());
        assert_eq!(
            d.next_message(),
            Err(WireError::UnexpectedFrameType { got: 2, want: 16 })
        );
        let mut d = V2Decoder::new();
        d.feed(&encode_frame(FRAME_MESSAGE, &[0]).unwrap());
        assert_eq!(d.next_message(), Err(WireError::ShortMessage));
        for id in [0u16, 19, 0x100 + 11] {
            let mut d = V2Decoder::new();
            let mut payload = id.to_be_bytes().to_vec();
            payload.extend_from_slice(b"{}");
            d.feed(&encode_frame(FRAME_MESSAGE, &payload).unwrap());
            assert_eq!(d.next_message(), Err(WireError::UnknownMessageType(id)));
        }
        let mut d = V2Decoder::new();
        d.feed(&encode_frame(FRAME_MESSAGE, b"\x00\x0b{x").unwrap());
        assert!(matches!(
            d.next_message(),
            Err(WireError::Codec(CodecError::BadJson { kind: "Ping", .. }))
        ));
    }

    #[test]
    fn encoder_enforces_the_limit() {
        assert!(encode_frame(FRAME_MESSAGE, &vec![0; MAX_FRAME_PAYLOAD]).is_ok());
        assert_eq!(
            encode_frame(FRAME_MESSAGE, &vec![0; MAX_FRAME_PAYLOAD + 1]),
            Err(WireError::TooLong(MAX_FRAME_PAYLOAD + 1))
        );
        let huge = crate::msg::NewProxy {
            proxy_name: "x".repeat(MAX_FRAME_PAYLOAD),
            ..Default::default()
        };
        assert!(matches!(
            encode_v2_message(&huge.into()),
            Err(WireError::TooLong(_))
        ));
    }

    #[test]
    fn magic_detection() {
        assert_eq!(detect_magic(b"FRP\0\x02\r"), None);
        assert_eq!(detect_magic(b"FRP\0\x02\r\n"), Some(true));
        assert_eq!(detect_magic(b"FRP\0\x02\r\nmore"), Some(true));
        assert_eq!(detect_magic(b"o\0\0\0\0\0\0\0\x02{}"), Some(false));
    }

    #[test]
    fn negotiation() {
        // The server picks the client's first supported algorithm.
        let mut ch = spec_client_hello();
        ch.capabilities.crypto.algorithms = vec![
            "rot13".into(),
            "xchacha20-poly1305".into(),
            "aes-256-gcm".into(),
        ];
        assert_eq!(ch.validate(), Ok(AeadAlgorithm::XChaCha20Poly1305));
        let sh = ServerHello::answer(&ch, [1; 32]).unwrap();
        assert_eq!(sh.selected.crypto.algorithm, "xchacha20-poly1305");
        assert_eq!(sh.validate_for(&ch), Ok(AeadAlgorithm::XChaCha20Poly1305));

        // Server-side validation failures, in Go's order and words.
        let mut bad = ch.clone();
        bad.capabilities.message.codecs = vec!["msgpack".into()];
        assert_eq!(bad.validate(), Err(HelloError::UnsupportedCodec));
        let mut bad = ch.clone();
        bad.capabilities.crypto.client_random = vec![0; 31];
        assert_eq!(
            bad.validate().unwrap_err().to_string(),
            "invalid crypto client random length 31, want 32"
        );
        let mut bad = ch.clone();
        bad.capabilities.crypto.algorithms = vec!["rot13".into()];
        assert_eq!(bad.validate(), Err(HelloError::NoSupportedAlgorithm));
        let (payload, res) = CryptoContext::server_answer(&bad.to_payload(), [1; 32]);
        assert_eq!(res, Err(HelloError::NoSupportedAlgorithm));
        assert_eq!(
            ServerHello::from_payload(&payload).unwrap().error,
            "no supported crypto algorithm"
        );
        let (_, res) = CryptoContext::server_answer(b"not json", [1; 32]);
        assert!(matches!(
            res,
            Err(HelloError::BadJson {
                which: "ClientHello",
                ..
            })
        ));

        // Client-side validation failures.
        let ok = ServerHello::answer(&ch, [1; 32]).unwrap();
        let mut sh = ok.clone();
        sh.error = "nope".into();
        assert_eq!(
            sh.validate_for(&ch),
            Err(HelloError::Rejected("nope".into()))
        );
        let mut sh = ok.clone();
        sh.selected.message.codec = "cbor".into();
        assert_eq!(
            sh.validate_for(&ch),
            Err(HelloError::UnsupportedSelectedCodec("cbor".into()))
        );
        let mut sh = ok.clone();
        sh.selected.crypto.algorithm = "rot13".into();
        assert_eq!(
            sh.validate_for(&ch),
            Err(HelloError::UnknownAlgorithm("rot13".into()))
        );
        let mut only_aes = ch.clone();
        only_aes.capabilities.crypto.algorithms = vec!["aes-256-gcm".into()];
        assert_eq!(
            ok.validate_for(&only_aes),
            Err(HelloError::NotAdvertised("xchacha20-poly1305".into()))
        );
        let mut sh = ok.clone();
        sh.selected.crypto.server_random = vec![];
        assert_eq!(sh.validate_for(&ch), Err(HelloError::ServerRandomLength(0)));

        // Both orders a Go client can send are understood.
        for alg in preferred_algorithms() {
            assert!(AeadAlgorithm::ALL.contains(&alg));
        }
        let generated = ClientHello::generate(bootstrap());
        assert_eq!(generated.capabilities.crypto.client_random.len(), 32);
        assert_eq!(generated.validate(), Ok(preferred_algorithms()[0]));
    }

    /// The per-version udp datagram limits hold for the longest address Go can write.
    #[test]
    fn largest_udp_datagram_fits_each_framing() {
        use crate::msg::{UdpAddr, UdpPacket, V1_MAX_BODY, V1Decoder, encode_v1};
        let pkt = |n: usize| {
            Message::UdpPacket(UdpPacket {
                content: vec![0xa5; n],
                local_addr: None,
                remote_addr: Some(UdpAddr {
                    ip: "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".into(),
                    port: 65535,
                    zone: u32::MAX.to_string(),
                }),
            })
        };
        let v1 = encode_v1(&pkt(WireVersion::V1.max_udp_datagram()));
        assert!(v1.len() - 9 <= V1_MAX_BODY, "v1 body {}", v1.len() - 9);
        let mut d = V1Decoder::new();
        d.feed(&v1);
        assert!(d.next_message().unwrap().is_some());

        let max = WireVersion::V2.max_udp_datagram();
        assert!(max > WireVersion::V1.max_udp_datagram());
        let v2 = encode_v2_message(&pkt(max)).unwrap();
        let mut d = V2Decoder::new();
        d.feed(&v2);
        assert_eq!(d.next_message().unwrap(), Some(pkt(max)));
        // What does not fit is refused by the writer, not sent.
        assert!(encode_v2_message(&pkt(max + 3000)).is_err());
    }

    #[test]
    fn lenient_hello_decoding() {
        let ch = ClientHello::from_payload(
            br#"{"bootstrap":null,"capabilities":{"message":{"codecs":["json"]},"crypto":{"algorithms":null,"clientRandom":null},"x":1}}"#,
        )
        .unwrap();
        assert!(ch.capabilities.crypto.algorithms.is_empty());
        assert!(ch.capabilities.crypto.client_random.is_empty());
        assert!(
            ClientHello::from_payload(br#"{"capabilities":{"crypto":{"clientRandom":"!!"}}}"#)
                .is_err()
        );
    }
}
