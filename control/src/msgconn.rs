//! A logical connection that carries frp messages: the v1 codec driven over any async byte
//! stream, with the control channel's AES-128-CFB switched on after LoginResp (spec §4.1, §6.1).

use dataplane::transform::run_chain;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};

use crate::crypto::{CfbDecryptor, CfbEncryptor, CryptoKey, TransformChain};
use crate::msg::{CodecError, Message, V1Decoder, encode_v1_into};

/// Reading or writing a message failed.
#[derive(Debug, thiserror::Error)]
pub enum MsgError {
    #[error("connection closed by peer")]
    Closed,
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Codec(#[from] CodecError),
    #[error("decrypt: {0}")]
    Transform(#[from] dataplane::TransformError),
    #[error("read timeout")]
    Timeout,
}

const READ_CHUNK: usize = 16 * 1024;

/// The reading half: raw bytes → (inbound layers: decrypt, decompress) → v1 decoder →
/// messages.
pub struct MsgReader<R> {
    io: R,
    dec: V1Decoder,
    inbound: TransformChain,
    raw: Vec<u8>,
    plain: Vec<u8>,
    /// Wire bytes read from `io` so far.
    wire_bytes: u64,
}

impl<R: AsyncRead + Unpin> MsgReader<R> {
    pub fn new(io: R) -> Self {
        MsgReader {
            io,
            dec: V1Decoder::new(),
            inbound: Vec::new(),
            raw: Vec::new(),
            plain: Vec::new(),
            wire_bytes: 0,
        }
    }

    /// Wire bytes read from the stream so far (what a rate limiter on the connection counts).
    pub fn wire_bytes(&self) -> u64 {
        self.wire_bytes
    }

    /// Messages carried inside a work connection's layers (a UDP proxy's work connection:
    /// v1 frames inside the optional CFB/snappy of §6.3). `leftover` holds wire bytes already
    /// read from `io` (what followed StartWorkConn).
    pub fn with_layers(io: R, inbound: TransformChain, leftover: &[u8]) -> Result<Self, MsgError> {
        let mut r = MsgReader {
            inbound,
            ..MsgReader::new(io)
        };
        r.feed_wire(leftover)?;
        Ok(r)
    }

    fn feed_wire(&mut self, wire: &[u8]) -> Result<(), MsgError> {
        if self.inbound.is_empty() {
            self.dec.feed(wire);
        } else if !wire.is_empty() {
            self.plain.clear();
            run_chain(&mut self.inbound, wire, &mut self.plain)?;
            self.dec.feed(&self.plain);
        }
        Ok(())
    }

    /// From now on, bytes read are decrypted (the peer's IV comes first). Bytes already read
    /// past the last message (a peer that did not wait for LoginResp) are ciphertext too and
    /// are decrypted now.
    pub fn enable_decryption(&mut self, key: &CryptoKey) -> Result<(), MsgError> {
        let pending = self.dec.take_remaining();
        self.inbound = vec![Box::new(CfbDecryptor::new(key))];
        self.feed_wire(&pending)
    }

    /// Reads the next message. `MsgError::Closed` on a clean EOF between messages.
    pub async fn read_msg(&mut self) -> Result<Message, MsgError> {
        loop {
            if let Some(m) = self.dec.next_message()? {
                return Ok(m);
            }
            if self.raw.len() < READ_CHUNK {
                self.raw.resize(READ_CHUNK, 0);
            }
            let n = self.io.read(&mut self.raw).await?;
            self.wire_bytes += n as u64;
            if n == 0 {
                return Err(if self.dec.buffered() == 0 {
                    MsgError::Closed
                } else {
                    MsgError::Io(std::io::ErrorKind::UnexpectedEof.into())
                });
            }
            if self.inbound.is_empty() {
                self.dec.feed(&self.raw[..n]);
            } else {
                self.plain.clear();
                run_chain(&mut self.inbound, &self.raw[..n], &mut self.plain)?;
                self.dec.feed(&self.plain);
            }
        }
    }

    /// The stream and any bytes read past the last message (wire form when no decryption was
    /// enabled).
    pub fn into_parts(mut self) -> (R, Vec<u8>) {
        let rest = self.dec.take_remaining();
        (self.io, rest)
    }
}

/// The writing half: message → v1 frame → (outbound layers: compress, encrypt) → one write.
pub struct MsgWriter<W> {
    io: W,
    outbound: TransformChain,
    frame: Vec<u8>,
    wire: Vec<u8>,
}

impl<W: AsyncWrite + Unpin> MsgWriter<W> {
    pub fn new(io: W) -> Self {
        Self::with_layers(io, Vec::new())
    }

    /// Messages written inside a work connection's layers (see [`MsgReader::with_layers`]).
    pub fn with_layers(io: W, outbound: TransformChain) -> Self {
        MsgWriter {
            io,
            outbound,
            frame: Vec::new(),
            wire: Vec::new(),
        }
    }

    /// From now on, bytes written are encrypted (our IV goes out with the first message).
    pub fn enable_encryption(&mut self, key: &CryptoKey) {
        self.outbound = vec![Box::new(CfbEncryptor::new(key))];
    }

    /// Writes one message (one write call, as Go does) and flushes. Returns the number of
    /// bytes that went on the wire.
    pub async fn write_msg(&mut self, msg: &Message) -> Result<usize, MsgError> {
        self.frame.clear();
        encode_v1_into(msg, &mut self.frame);
        let n = if self.outbound.is_empty() {
            self.io.write_all(&self.frame).await?;
            self.frame.len()
        } else {
            self.wire.clear();
            run_chain(&mut self.outbound, &self.frame, &mut self.wire)?;
            self.io.write_all(&self.wire).await?;
            self.wire.len()
        };
        self.io.flush().await?;
        Ok(n)
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
    writer: MsgWriter<()>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> MsgConn<S> {
    pub fn new(io: S) -> Self {
        MsgConn {
            reader: MsgReader::new(io),
            writer: MsgWriter {
                io: (),
                outbound: Vec::new(),
                frame: Vec::new(),
                wire: Vec::new(),
            },
        }
    }

    pub async fn read_msg(&mut self) -> Result<Message, MsgError> {
        self.reader.read_msg().await
    }

    /// Reads one message with a deadline.
    pub async fn read_msg_timeout(&mut self, t: std::time::Duration) -> Result<Message, MsgError> {
        match tokio::time::timeout(t, self.reader.read_msg()).await {
            Ok(r) => r,
            Err(_) => Err(MsgError::Timeout),
        }
    }

    pub async fn write_msg(&mut self, msg: &Message) -> Result<(), MsgError> {
        self.writer.frame.clear();
        encode_v1_into(msg, &mut self.writer.frame);
        let io = &mut self.reader.io;
        let w = &mut self.writer;
        if w.outbound.is_empty() {
            io.write_all(&w.frame).await?;
        } else {
            w.wire.clear();
            run_chain(&mut w.outbound, &w.frame, &mut w.wire)?;
            io.write_all(&w.wire).await?;
        }
        io.flush().await?;
        Ok(())
    }

    /// Switches both directions to AES-128-CFB (after LoginResp).
    pub fn enable_encryption(&mut self, key: &CryptoKey) -> Result<(), MsgError> {
        self.reader.enable_decryption(key)?;
        self.writer.outbound = vec![Box::new(CfbEncryptor::new(key))];
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
            inbound,
            raw,
            plain,
            wire_bytes,
        } = self.reader;
        let (r, w) = tokio::io::split(io);
        (
            MsgReader {
                io: r,
                dec,
                inbound,
                raw,
                plain,
                wire_bytes,
            },
            MsgWriter {
                io: w,
                outbound: self.writer.outbound,
                frame: Vec::new(),
                wire: Vec::new(),
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::{LoginResp, Ping, ReqWorkConn};

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
