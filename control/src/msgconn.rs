//! A logical connection that carries frp messages in either wire protocol (spec §3, §6):
//!
//! - **v1**: the golib codec (type byte, i64 length, JSON); the control channel switches to
//!   AES-128-CFB after LoginResp (§4.1, §6.1).
//! - **v2**: the 7-byte magic, then frames; message frames are written like Go writes them,
//!   header and payload separately, so over the AEAD control channel (§6.2) every frame is two
//!   records. [`MsgConn::accept`] detects the version from the first 7 bytes (frps);
//!   [`MsgConn::client`] sends the magic before the first frame (frpc).
//!
//! Ciphers are plain [`Transform`]s, switched on with [`MsgConn::enable_encryption`] (v1 CFB)
//! or [`MsgConn::enable_transforms`] (any pair, e.g. the v2 AEAD streams).

use std::future::poll_fn;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Poll, ready};
use std::time::Duration;

use dataplane::Transform;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};

use crate::crypto::{CfbDecryptor, CfbEncryptor, CryptoKey};
use crate::msg::{CodecError, Message, V1Decoder, encode_v1_into};
use crate::wire_v2::{
    self, FRAME_MESSAGE, Frame, MAGIC, V2Decoder, WireError, WireVersion, encode_v2_message_parts,
    frame_header,
};

/// Reading or writing a message failed.
#[derive(Debug, thiserror::Error)]
pub enum MsgError {
    #[error("connection closed by peer")]
    Closed,
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Codec(#[from] CodecError),
    #[error("{0}")]
    Wire(#[from] WireError),
    #[error("decrypt: {0}")]
    Transform(#[from] dataplane::TransformError),
    #[error("read timeout")]
    Timeout,
    #[error("v2 frame operation on a v1 connection")]
    NotV2,
}

const READ_CHUNK: usize = 16 * 1024;
/// What a reader asks for until a read fills that much: control messages are small, and
/// thousands of control and pooled work connections each keep their reader's buffer.
const SMALL_READ: usize = 1024;

/// A boxed cipher stage (CFB, AEAD).
pub type Cipher = Box<dyn Transform>;

/// The version-specific decoder.
enum Decoder {
    V1(V1Decoder),
    V2(V2Decoder),
}

impl Decoder {
    #[cfg(test)]
    fn held(&self) -> usize {
        match self {
            Decoder::V1(d) => d.held(),
            Decoder::V2(d) => d.held(),
        }
    }

    fn new(version: WireVersion) -> Decoder {
        match version {
            WireVersion::V1 => Decoder::V1(V1Decoder::new()),
            WireVersion::V2 => Decoder::V2(V2Decoder::new()),
        }
    }
    fn version(&self) -> WireVersion {
        match self {
            Decoder::V1(_) => WireVersion::V1,
            Decoder::V2(_) => WireVersion::V2,
        }
    }
    fn feed(&mut self, b: &[u8]) {
        match self {
            Decoder::V1(d) => d.feed(b),
            Decoder::V2(d) => d.feed(b),
        }
    }
    fn next_message(&mut self) -> Result<Option<Message>, MsgError> {
        Ok(match self {
            Decoder::V1(d) => d.next_message()?,
            Decoder::V2(d) => d.next_message()?,
        })
    }
    fn take_remaining(&mut self) -> Vec<u8> {
        match self {
            Decoder::V1(d) => d.take_remaining(),
            Decoder::V2(d) => d.take_remaining(),
        }
    }
    fn buffered(&self) -> usize {
        match self {
            Decoder::V1(d) => d.buffered(),
            Decoder::V2(d) => d.buffered(),
        }
    }
}

/// A chain of transforms (e.g. decrypt then decompress) as one stage.
struct Chain(crate::crypto::TransformChain);

impl Transform for Chain {
    fn transform(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), dataplane::TransformError> {
        dataplane::transform::run_chain(&mut self.0, input, out)
    }
}

fn chain_stage(chain: crate::crypto::TransformChain) -> Option<Cipher> {
    (!chain.is_empty()).then(|| Box::new(Chain(chain)) as Cipher)
}

/// The reading half: raw bytes → (decrypt) → v1 or v2 decoder → messages.
pub struct MsgReader<R> {
    io: R,
    dec: Decoder,
    decrypt: Option<Cipher>,
    /// Wire bytes read from `io` so far (bandwidth accounting).
    wire_bytes: u64,
    raw: Vec<u8>,
    plain: Vec<u8>,
    /// How much the next read asks for: `SMALL_READ`, `READ_CHUNK` once a read filled that.
    chunk: usize,
}

impl<R: AsyncRead + Unpin> MsgReader<R> {
    /// A v1 reader.
    pub fn new(io: R) -> Self {
        Self::with_version(io, WireVersion::V1)
    }

    /// A reader for bytes after the preamble of a `version` connection.
    pub fn with_version(io: R, version: WireVersion) -> Self {
        MsgReader {
            io,
            dec: Decoder::new(version),
            decrypt: None,
            wire_bytes: 0,
            raw: Vec::new(),
            plain: Vec::new(),
            chunk: SMALL_READ,
        }
    }

    /// frps' detection (spec §2.5): reads until 7 bytes are in; the v2 magic is consumed,
    /// anything else is kept and decoded as v1.
    pub async fn detect(mut io: R) -> Result<(Self, WireVersion), MsgError> {
        let mut head = Vec::with_capacity(MAGIC.len() + SMALL_READ);
        // Read into spare capacity (`read_buf`): no memset per connection.
        let mut buf = Vec::with_capacity(SMALL_READ);
        while head.len() < MAGIC.len() {
            buf.clear();
            let n = io.read_buf(&mut buf).await?;
            if n == 0 {
                return Err(if head.is_empty() {
                    MsgError::Closed
                } else {
                    MsgError::Io(std::io::ErrorKind::UnexpectedEof.into())
                });
            }
            head.extend_from_slice(&buf[..n]);
        }
        let version = if wire_v2::detect_magic(&head) == Some(true) {
            head.drain(..MAGIC.len());
            WireVersion::V2
        } else {
            WireVersion::V1
        };
        let mut r = Self::with_version(io, version);
        r.dec.feed(&head);
        Ok((r, version))
    }

    pub fn version(&self) -> WireVersion {
        self.dec.version()
    }

    /// From now on, bytes read are decrypted with AES-128-CFB (the peer's IV comes first).
    pub fn enable_decryption(&mut self, key: &CryptoKey) -> Result<(), MsgError> {
        self.enable_inbound(Box::new(CfbDecryptor::new(key)))
    }

    /// From now on, bytes read go through `d`. Bytes already read past the last message (a
    /// peer that did not wait for LoginResp) are ciphertext too and are decrypted now.
    pub fn enable_inbound(&mut self, mut d: Cipher) -> Result<(), MsgError> {
        let pending = self.dec.take_remaining();
        if !pending.is_empty() {
            self.plain.clear();
            d.transform(&pending, &mut self.plain)?;
            self.dec.feed(&self.plain);
        }
        self.decrypt = Some(d);
        Ok(())
    }

    /// Reads more bytes into the decoder. `MsgError::Closed` on EOF with nothing buffered.
    async fn fill(&mut self) -> Result<(), MsgError> {
        let n = if self.chunk == SMALL_READ {
            // Small reads (a control's messages) land in a buffer on the stack of one poll
            // and are decoded there: an idle reader holds no read buffer.
            poll_fn(|cx| {
                let mut stack = [MaybeUninit::<u8>::uninit(); SMALL_READ];
                let mut buf = ReadBuf::uninit(&mut stack);
                ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf))?;
                let n = buf.filled().len();
                self.consume(buf.filled())?;
                Poll::Ready(Ok::<_, MsgError>(n))
            })
            .await?
        } else {
            // Into spare capacity: no memset per read.
            self.raw.clear();
            self.raw.reserve(self.chunk);
            let n = self.io.read_buf(&mut self.raw).await?;
            let raw = std::mem::take(&mut self.raw);
            let consumed = self.consume(&raw[..n]);
            self.raw = raw;
            consumed?;
            n
        };
        if n == SMALL_READ {
            // A full read: more is coming (UDP packets over a work connection), read more.
            self.chunk = READ_CHUNK;
        }
        if n == 0 {
            return Err(if self.dec.buffered() == 0 {
                MsgError::Closed
            } else {
                MsgError::Io(std::io::ErrorKind::UnexpectedEof.into())
            });
        }
        Ok(())
    }

    /// Decrypts (when enabled) and decodes bytes read.
    fn consume(&mut self, bytes: &[u8]) -> Result<(), MsgError> {
        self.wire_bytes += bytes.len() as u64;
        match &mut self.decrypt {
            None => self.dec.feed(bytes),
            Some(d) => {
                self.plain.clear();
                d.transform(bytes, &mut self.plain)?;
                self.dec.feed(&self.plain);
                crate::msg::release_consumed(&mut self.plain);
            }
        }
        Ok(())
    }

    /// A reader framing in `version` whose bytes pass through `inbound` (a work connection's
    /// decrypt and decompress layers); `leftover` are wire bytes already read from `io`.
    pub fn with_layers(
        io: R,
        version: WireVersion,
        inbound: crate::crypto::TransformChain,
        leftover: &[u8],
    ) -> Result<Self, MsgError> {
        let mut r = Self::with_version(io, version);
        r.decrypt = chain_stage(inbound);
        match &mut r.decrypt {
            None => r.dec.feed(leftover),
            Some(d) => {
                d.transform(leftover, &mut r.plain)?;
                r.dec.feed(&r.plain);
            }
        }
        Ok(r)
    }

    /// Wire bytes read so far.
    pub fn wire_bytes(&self) -> u64 {
        self.wire_bytes
    }

    /// Reads the next message. `MsgError::Closed` on a clean EOF between messages.
    pub async fn read_msg(&mut self) -> Result<Message, MsgError> {
        loop {
            if let Some(m) = self.dec.next_message()? {
                return Ok(m);
            }
            self.fill().await?;
        }
    }

    /// Reads the next v2 frame of any type (Hello frames).
    pub async fn read_frame(&mut self) -> Result<Frame, MsgError> {
        loop {
            let Decoder::V2(d) = &mut self.dec else {
                return Err(MsgError::NotV2);
            };
            if let Some(f) = d.next_frame()? {
                return Ok(f);
            }
            self.fill().await?;
        }
    }

    /// The stream and any bytes read past the last message (wire form when no decryption was
    /// enabled).
    pub fn into_parts(mut self) -> (R, Vec<u8>) {
        let rest = self.dec.take_remaining();
        (self.io, rest)
    }
}

/// Turns messages and frames into wire bytes: framing, the v2 magic on the first write of a
/// client connection, and the optional cipher.
struct Encoder {
    version: WireVersion,
    magic_pending: bool,
    encrypt: Option<Cipher>,
    frame: Vec<u8>,
    wire: Vec<u8>,
}

impl Encoder {
    fn new(version: WireVersion, send_magic: bool) -> Encoder {
        Encoder {
            version,
            magic_pending: send_magic && version == WireVersion::V2,
            encrypt: None,
            frame: Vec::new(),
            wire: Vec::new(),
        }
    }

    fn start(&mut self) {
        self.wire.clear();
        if self.magic_pending {
            // The magic precedes everything, in the clear.
            self.wire.extend_from_slice(&MAGIC);
            self.magic_pending = false;
        }
    }

    /// Appends one write's worth of bytes (one AEAD record when encrypting).
    fn push(&mut self, part: &[u8]) -> Result<(), MsgError> {
        match &mut self.encrypt {
            None => self.wire.extend_from_slice(part),
            Some(e) => e.transform(part, &mut self.wire)?,
        }
        Ok(())
    }

    /// Frees the buffers of a written message unless they are large (see
    /// [`crate::msg::release_consumed`]): an idle writer holds none.
    fn release(&mut self) {
        crate::msg::release_consumed(&mut self.frame);
        crate::msg::release_consumed(&mut self.wire);
    }

    fn encode_msg(&mut self, msg: &Message) -> Result<&[u8], MsgError> {
        match self.version {
            WireVersion::V1 => {
                self.frame.clear();
                encode_v1_into(msg, &mut self.frame);
                self.start();
                let frame = std::mem::take(&mut self.frame);
                let r = self.push(&frame);
                self.frame = frame;
                r?;
            }
            WireVersion::V2 => {
                let (header, payload) = encode_v2_message_parts(msg)?;
                self.start();
                self.push(&header)?;
                self.push(&payload)?;
            }
        }
        Ok(&self.wire)
    }

    fn encode_frame(&mut self, frame_type: u16, payload: &[u8]) -> Result<&[u8], MsgError> {
        if self.version != WireVersion::V2 {
            return Err(MsgError::NotV2);
        }
        debug_assert_ne!(frame_type, FRAME_MESSAGE, "use write_msg for messages");
        let header = frame_header(frame_type, payload.len())?;
        self.start();
        self.push(&header)?;
        self.push(payload)?;
        Ok(&self.wire)
    }
}

/// The writing half: message → v1 or v2 frame → (encrypt) → one write.
pub struct MsgWriter<W> {
    io: W,
    enc: Encoder,
}

impl<W: AsyncWrite + Unpin> MsgWriter<W> {
    /// A v1 writer.
    pub fn new(io: W) -> Self {
        Self::with_version(io, WireVersion::V1)
    }

    /// A writer framing in `version` (no magic: for connections whose preamble is done).
    pub fn with_version(io: W, version: WireVersion) -> Self {
        MsgWriter {
            io,
            enc: Encoder::new(version, false),
        }
    }

    pub fn version(&self) -> WireVersion {
        self.enc.version
    }

    /// From now on, bytes written are AES-128-CFB encrypted (our IV goes out first).
    pub fn enable_encryption(&mut self, key: &CryptoKey) {
        self.enc.encrypt = Some(Box::new(CfbEncryptor::new(key)));
    }

    /// A writer framing in `version` (no magic) whose bytes pass through `outbound` (a work
    /// connection's compress and encrypt layers).
    pub fn with_layers(
        io: W,
        version: WireVersion,
        outbound: crate::crypto::TransformChain,
    ) -> Self {
        let mut w = Self::with_version(io, version);
        w.enc.encrypt = chain_stage(outbound);
        w
    }

    /// Writes one message (one write call) and flushes; returns the wire bytes written.
    pub async fn write_msg(&mut self, msg: &Message) -> Result<usize, MsgError> {
        let wire = self.enc.encode_msg(msg)?;
        let n = wire.len();
        self.io.write_all(wire).await?;
        self.enc.release();
        self.io.flush().await?;
        Ok(n)
    }

    /// Encodes `msg` for [`MsgWriter::poll_send`], for a caller that drives the writer by
    /// polling (a long-lived task that keeps no `write_msg` future). A message encoded
    /// before must have been sent.
    pub(crate) fn start_msg(&mut self, msg: &Message) -> Result<(), MsgError> {
        self.enc.encode_msg(msg)?;
        Ok(())
    }

    /// Writes the message [`MsgWriter::start_msg`] encoded and flushes; `*pos` counts its
    /// bytes written (0 to start).
    pub(crate) fn poll_send(
        &mut self,
        cx: &mut std::task::Context<'_>,
        pos: &mut usize,
    ) -> Poll<Result<(), MsgError>> {
        if *pos < self.enc.wire.len() {
            ready!(crate::layered::poll_write_from(
                &mut self.io,
                cx,
                &self.enc.wire,
                pos
            ))?;
            self.enc.release();
        }
        ready!(Pin::new(&mut self.io).poll_flush(cx))?;
        Poll::Ready(Ok(()))
    }

    /// Shuts the write side down (FIN).
    pub async fn shutdown(&mut self) -> Result<(), MsgError> {
        self.io.shutdown().await?;
        Ok(())
    }

    pub fn into_inner(self) -> W {
        self.io
    }
}

/// Both halves over one stream, for handshakes; [`MsgConn::split`] for long-lived loops.
pub struct MsgConn<S> {
    reader: MsgReader<S>,
    enc: Encoder,
}

impl<S: AsyncRead + AsyncWrite + Unpin> MsgConn<S> {
    /// A v1 connection.
    pub fn new(io: S) -> Self {
        Self::with_version(io, WireVersion::V1)
    }

    /// A connection framing in `version` whose preamble (if any) is already done: frps' side,
    /// e.g. writing StartWorkConn on a parked work connection.
    pub fn with_version(io: S, version: WireVersion) -> Self {
        MsgConn {
            reader: MsgReader::with_version(io, version),
            enc: Encoder::new(version, false),
        }
    }

    /// frpc's side of a new logical connection: with v2 the magic goes out in front of the
    /// first frame written.
    pub fn client(io: S, version: WireVersion) -> Self {
        MsgConn {
            reader: MsgReader::with_version(io, version),
            enc: Encoder::new(version, true),
        }
    }

    /// frps' side of a new logical connection: detects the wire version from the first 7
    /// bytes (spec §2.5), within `deadline`.
    pub async fn accept(io: S, deadline: Duration) -> Result<(Self, WireVersion), MsgError> {
        let (reader, version) = tokio::time::timeout(deadline, MsgReader::detect(io))
            .await
            .map_err(|_| MsgError::Timeout)??;
        Ok((
            MsgConn {
                reader,
                enc: Encoder::new(version, false),
            },
            version,
        ))
    }

    pub fn version(&self) -> WireVersion {
        self.enc.version
    }

    pub async fn read_msg(&mut self) -> Result<Message, MsgError> {
        self.reader.read_msg().await
    }

    /// Reads one message with a deadline.
    pub async fn read_msg_timeout(&mut self, t: Duration) -> Result<Message, MsgError> {
        match tokio::time::timeout(t, self.reader.read_msg()).await {
            Ok(r) => r,
            Err(_) => Err(MsgError::Timeout),
        }
    }

    /// Reads one v2 frame of any type (the Hello exchange).
    pub async fn read_frame(&mut self) -> Result<Frame, MsgError> {
        self.reader.read_frame().await
    }

    pub async fn write_msg(&mut self, msg: &Message) -> Result<(), MsgError> {
        let wire = self.enc.encode_msg(msg)?;
        let io = &mut self.reader.io;
        io.write_all(wire).await?;
        self.enc.release();
        io.flush().await?;
        Ok(())
    }

    /// Writes one non-message v2 frame (ClientHello, ServerHello).
    pub async fn write_frame(&mut self, frame_type: u16, payload: &[u8]) -> Result<(), MsgError> {
        let wire = self.enc.encode_frame(frame_type, payload)?;
        let io = &mut self.reader.io;
        io.write_all(wire).await?;
        io.flush().await?;
        Ok(())
    }

    /// Switches both directions to AES-128-CFB (v1, after LoginResp).
    pub fn enable_encryption(&mut self, key: &CryptoKey) -> Result<(), MsgError> {
        self.enable_transforms(
            Box::new(CfbDecryptor::new(key)),
            Box::new(CfbEncryptor::new(key)),
        )
    }

    /// Switches both directions to the given ciphers (v2: the AEAD streams of
    /// [`crate::wire_v2::ControlKeys`]).
    pub fn enable_transforms(&mut self, inbound: Cipher, outbound: Cipher) -> Result<(), MsgError> {
        self.reader.enable_inbound(inbound)?;
        self.enc.encrypt = Some(outbound);
        Ok(())
    }

    /// The stream and the bytes read past the last message.
    pub fn into_parts(self) -> (S, Vec<u8>) {
        self.reader.into_parts()
    }

    /// Splits into independently owned halves, keeping the cipher states and buffered bytes.
    pub fn split(self) -> (MsgReader<ReadHalf<S>>, MsgWriter<WriteHalf<S>>) {
        let MsgReader {
            io,
            dec,
            decrypt,
            wire_bytes,
            raw,
            plain,
            chunk,
        } = self.reader;
        let (r, w) = tokio::io::split(io);
        (
            MsgReader {
                io: r,
                dec,
                decrypt,
                wire_bytes,
                raw,
                plain,
                chunk,
            },
            MsgWriter {
                io: w,
                enc: self.enc,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::{LoginResp, Ping, ReqWorkConn};

    /// A reader of small messages holds no buffer between them (thousands of idle controls);
    /// one that is sent more than a small read at once (UDP packets over a work connection)
    /// reads in larger chunks.
    #[tokio::test]
    async fn reader_buffer_grows_only_for_bulk() {
        let (a, b) = tokio::io::duplex(1 << 20);
        let mut ca = MsgConn::new(a);
        let mut cb = MsgConn::new(b);
        // Plain, then encrypted: after each Ping neither side holds a buffer.
        for encrypted in [false, true] {
            if encrypted {
                let key = CryptoKey::derive(b"k");
                ca.enable_encryption(&key).unwrap();
                cb.enable_encryption(&key).unwrap();
            }
            for _ in 0..3 {
                ca.write_msg(&Ping::default().into()).await.unwrap();
                assert_eq!(cb.read_msg().await.unwrap(), Ping::default().into());
            }
            let (r, e) = (&cb.reader, &ca.enc);
            let held = (r.raw.capacity(), r.plain.capacity(), r.dec.held());
            assert_eq!(held, (0, 0, 0), "reader, encrypted: {encrypted}");
            let held = (e.frame.capacity(), e.wire.capacity());
            assert_eq!(held, (0, 0), "writer, encrypted: {encrypted}");
        }
        for _ in 0..1000 {
            ca.write_msg(&ReqWorkConn {}.into()).await.unwrap();
        }
        for _ in 0..1000 {
            assert_eq!(cb.read_msg().await.unwrap(), ReqWorkConn {}.into());
        }
        assert!(cb.reader.raw.capacity() >= READ_CHUNK);
    }

    #[tokio::test]
    async fn encrypted_messages_round_trip_and_leftover_is_kept() {
        let key = CryptoKey::derive(b"12345678");
        let (a, b) = tokio::io::duplex(4096);
        let mut ca = MsgConn::new(a);
        let mut cb = MsgConn::new(b);
        ca.write_msg(
            &LoginResp {
                version: "x".into(),
                ..Default::default()
            }
            .into(),
        )
        .await
        .unwrap();
        assert!(matches!(
            cb.read_msg().await.unwrap(),
            Message::LoginResp(_)
        ));
        ca.enable_encryption(&key).unwrap();
        cb.enable_encryption(&key).unwrap();
        ca.write_msg(&Ping::default().into()).await.unwrap();
        ca.write_msg(&ReqWorkConn {}.into()).await.unwrap();
        let (mut rb, _wb) = cb.split();
        assert_eq!(rb.read_msg().await.unwrap(), Message::Ping(Ping::default()));
        assert_eq!(
            rb.read_msg().await.unwrap(),
            Message::ReqWorkConn(ReqWorkConn {})
        );
    }

    /// Like Go, a v2 frame over AEAD is two records (header, payload); the magic of a client
    /// connection goes out once, in the clear, in front of the first frame.
    #[tokio::test]
    async fn v2_frames_are_two_aead_records_after_the_magic() {
        use crate::crypto::aead::{AeadAlgorithm, AeadReader, AeadWriter};
        let key = [7u8; 32];
        let (a, mut b) = tokio::io::duplex(4096);
        let mut ca = MsgConn::client(a, WireVersion::V2);
        let w = AeadWriter::with_stream_nonce(AeadAlgorithm::Aes256Gcm, &key, &[0; 12]).unwrap();
        let r = AeadReader::new(AeadAlgorithm::Aes256Gcm, &key);
        ca.enable_transforms(Box::new(r), Box::new(w)).unwrap();
        ca.write_msg(&Ping::default().into()).await.unwrap();
        let mut wire = vec![0u8; 7 + 12 + (4 + 8 + 16) + (4 + 4 + 16)];
        b.read_exact(&mut wire).await.unwrap();
        assert_eq!(&wire[..7], &MAGIC);
        assert_eq!(&wire[19..23], &[0, 0, 0, 24], "header record: 8 + tag");
        assert_eq!(&wire[47..51], &[0, 0, 0, 20], "payload record: 4 + tag");
        let mut r = AeadReader::new(AeadAlgorithm::Aes256Gcm, &key);
        let mut plain = Vec::new();
        r.transform(&wire[7..], &mut plain).unwrap();
        assert_eq!(hex::encode(plain), "0010000000000004000b7b7d");
        // A second message: no second magic.
        ca.write_msg(&Ping::default().into()).await.unwrap();
        let mut more = vec![0u8; (4 + 8 + 16) + (4 + 4 + 16)];
        b.read_exact(&mut more).await.unwrap();
        assert_eq!(&more[..4], &[0, 0, 0, 24]);
    }

    /// A udp work connection of a v2 client (frp >= 0.69.1): UDPPacket and Ping as message
    /// frames (spec §3.2: type 16, flags 0, u32 length, u16 type ID 13 / 11, Go's JSON).
    #[tokio::test]
    async fn udp_work_conn_v2_frames_match_the_spec() {
        use crate::msg::{UdpAddr, UdpPacket};
        let json = br#"{"c":"aGVsbG8=","r":{"IP":"127.0.0.1","Port":5353,"Zone":""}}"#;
        let mut frame = vec![0x00, 0x10, 0x00, 0x00];
        frame.extend_from_slice(&(json.len() as u32 + 2).to_be_bytes());
        frame.extend_from_slice(&[0x00, 0x0d]);
        frame.extend_from_slice(json);
        let pkt = Message::UdpPacket(UdpPacket {
            content: b"hello".to_vec(),
            local_addr: None,
            remote_addr: Some(UdpAddr {
                ip: "127.0.0.1".into(),
                port: 5353,
                zone: String::new(),
            }),
        });

        let (a, mut b) = tokio::io::duplex(4096);
        let mut w = MsgWriter::with_layers(a, WireVersion::V2, Vec::new());
        w.write_msg(&pkt).await.unwrap();
        let mut wire = vec![0u8; frame.len()];
        b.read_exact(&mut wire).await.unwrap();
        assert_eq!(
            hex::encode(&wire),
            hex::encode(&frame),
            "no magic, one frame"
        );

        // The reader takes bytes already read past StartWorkConn, then the stream.
        let (mut a, b) = tokio::io::duplex(4096);
        let mut r = MsgReader::with_layers(b, WireVersion::V2, Vec::new(), &frame[..5]).unwrap();
        a.write_all(&frame[5..]).await.unwrap();
        a.write_all(&hex::decode("0010000000000004000b7b7d").unwrap())
            .await
            .unwrap();
        assert_eq!(r.read_msg().await.unwrap(), pkt);
        assert_eq!(r.read_msg().await.unwrap(), Message::Ping(Ping::default()));

        // The same bytes are not a v1 stream.
        let (mut a, b) = tokio::io::duplex(4096);
        let mut r = MsgReader::with_layers(b, WireVersion::V1, Vec::new(), &[]).unwrap();
        a.write_all(&frame).await.unwrap();
        assert!(r.read_msg().await.is_err());
    }

    /// v2 frames inside the CFB + snappy layers of `useEncryption` / `useCompression`.
    #[tokio::test]
    async fn udp_work_conn_v2_round_trips_through_the_layers() {
        use crate::msg::UdpPacket;
        let key = CryptoKey::derive(b"12345678");
        let (_, out) = crate::crypto::work_conn_layers(Some(&key), true, true);
        let (inb, _) = crate::crypto::work_conn_layers(Some(&key), true, true);
        let (a, b) = tokio::io::duplex(1 << 20);
        let mut w = MsgWriter::with_layers(a, WireVersion::V2, out);
        let mut r = MsgReader::with_layers(b, WireVersion::V2, inb, &[]).unwrap();
        let big = UdpPacket {
            content: (0..WireVersion::V2.max_udp_datagram())
                .map(|i| (i * 7) as u8)
                .collect(),
            local_addr: None,
            remote_addr: Some("[::1]:9".parse::<std::net::SocketAddr>().unwrap().into()),
        };
        for m in [
            Message::UdpPacket(big.clone()),
            Ping::default().into(),
            Message::UdpPacket(big),
        ] {
            w.write_msg(&m).await.unwrap();
            assert_eq!(r.read_msg().await.unwrap(), m);
        }
    }

    #[tokio::test]
    async fn bytes_after_a_message_are_returned() {
        let (a, b) = tokio::io::duplex(4096);
        let mut wa = MsgWriter::new(a);
        wa.write_msg(&Ping::default().into()).await.unwrap();
        wa.io.write_all(b"raw payload").await.unwrap();
        drop(wa);
        let mut rb = MsgReader::new(b);
        rb.read_msg().await.unwrap();
        let (mut io, rest) = rb.into_parts();
        let mut tail = Vec::new();
        io.read_to_end(&mut tail).await.unwrap();
        let mut all = rest;
        all.extend_from_slice(&tail);
        assert_eq!(all, b"raw payload");
    }

    #[tokio::test]
    async fn eof_between_messages_is_closed_and_mid_message_is_an_error() {
        let (a, b) = tokio::io::duplex(64);
        drop(a);
        assert!(matches!(
            MsgReader::new(b).read_msg().await,
            Err(MsgError::Closed)
        ));
        let (mut a, b) = tokio::io::duplex(64);
        a.write_all(b"h\0\0\0\0\0\0\0\x02{").await.unwrap();
        drop(a);
        assert!(matches!(
            MsgReader::new(b).read_msg().await,
            Err(MsgError::Io(_))
        ));
    }
}
