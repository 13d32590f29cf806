//! [`Layered`]: an `AsyncRead + AsyncWrite` stream that runs [`dataplane::Transform`] chains
//! over another stream — for code that must speak a protocol *through* a work connection's
//! `useEncryption` / `useCompression` layers (spec §6.3) instead of handing the connection to
//! the data plane, e.g. frps' HTTP vhost talking HTTP/1.1 to frpc.
//!
//! Reads: raw bytes (first any already-read `prefix`) go through `inbound` and are served from
//! a plaintext buffer. Writes: each `poll_write` runs its bytes through `outbound` and queues the
//! result; the queue is written out before the next write is accepted and on flush/shutdown,
//! so at most one transformed chunk is buffered.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use dataplane::transform::run_chain;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::crypto::TransformChain;

/// Size of the raw read buffer.
const READ_CHUNK: usize = 16 * 1024;

/// Writes `buf[*pos..]` to `io`, advancing `*pos` as bytes go out; `Ready(Ok)` once all of
/// `buf` is written.
pub(crate) fn poll_write_from<W: AsyncWrite + Unpin>(
    io: &mut W,
    cx: &mut Context<'_>,
    buf: &[u8],
    pos: &mut usize,
) -> Poll<io::Result<()>> {
    while *pos < buf.len() {
        let n = ready!(Pin::new(&mut *io).poll_write(cx, &buf[*pos..]))?;
        if n == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        *pos += n;
    }
    Poll::Ready(Ok(()))
}

/// What [`Layered::into_parts`] returns.
pub struct LayeredParts<S> {
    pub io: S,
    /// Wire bytes read from `io` but not decoded yet: they go through `inbound` first.
    pub raw_prefix: Vec<u8>,
    pub inbound: TransformChain,
    pub outbound: TransformChain,
    /// Bytes decoded but not yet read: they come before anything `io` still has.
    pub plaintext: Vec<u8>,
}

/// A stream seen through transform chains. See the module docs.
pub struct Layered<S> {
    io: S,
    inbound: TransformChain,
    outbound: TransformChain,
    /// Raw bytes already read from `io` by someone else, not yet transformed.
    prefix: Option<Vec<u8>>,
    raw: Vec<u8>,
    plain: Vec<u8>,
    plain_pos: usize,
    read_eof: bool,
    out: Vec<u8>,
    out_pos: usize,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Layered<S> {
    /// Wraps `io`. `prefix` holds wire bytes already read from it (they are decoded first).
    pub fn new(io: S, prefix: Vec<u8>, inbound: TransformChain, outbound: TransformChain) -> Self {
        Layered {
            io,
            inbound,
            outbound,
            prefix: (!prefix.is_empty()).then_some(prefix),
            raw: Vec::new(),
            plain: Vec::new(),
            plain_pos: 0,
            read_eof: false,
            out: Vec::new(),
            out_pos: 0,
        }
    }

    /// Takes the stream apart again, e.g. to hand it to the data plane once a protocol spoken
    /// through it is done: the inner stream, the raw bytes not yet decoded (wire form), the
    /// chains with their states, and the plaintext decoded but not yet read. Flush first:
    /// transformed bytes still queued for writing are dropped.
    pub fn into_parts(self) -> LayeredParts<S> {
        LayeredParts {
            io: self.io,
            raw_prefix: self.prefix.unwrap_or_default(),
            inbound: self.inbound,
            outbound: self.outbound,
            plaintext: self.plain[self.plain_pos..].to_vec(),
        }
    }

    /// Writes out the queued transformed bytes.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(poll_write_from(
            &mut self.io,
            cx,
            &self.out,
            &mut self.out_pos
        ))?;
        self.out.clear();
        self.out_pos = 0;
        Poll::Ready(Ok(()))
    }
}

fn transform_error(e: dataplane::TransformError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Layered<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.plain_pos < this.plain.len() {
                let n = buf.remaining().min(this.plain.len() - this.plain_pos);
                buf.put_slice(&this.plain[this.plain_pos..this.plain_pos + n]);
                this.plain_pos += n;
                return Poll::Ready(Ok(()));
            }
            if this.read_eof {
                return Poll::Ready(Ok(()));
            }
            if let Some(p) = this.prefix.take() {
                this.plain.clear();
                this.plain_pos = 0;
                run_chain(&mut this.inbound, &p, &mut this.plain).map_err(transform_error)?;
                continue;
            }
            if this.inbound.is_empty() {
                // Nothing to transform: read straight into the caller's buffer.
                return Pin::new(&mut this.io).poll_read(cx, buf);
            }
            if this.raw.len() < READ_CHUNK {
                this.raw.resize(READ_CHUNK, 0);
            }
            let mut rb = ReadBuf::new(&mut this.raw);
            ready!(Pin::new(&mut this.io).poll_read(cx, &mut rb))?;
            let n = rb.filled().len();
            if n == 0 {
                this.read_eof = true;
                continue;
            }
            this.plain.clear();
            this.plain_pos = 0;
            run_chain(&mut this.inbound, &this.raw[..n], &mut this.plain)
                .map_err(transform_error)?;
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Layered<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.outbound.is_empty() {
            return Pin::new(&mut this.io).poll_write(cx, data);
        }
        ready!(this.poll_drain(cx))?;
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        run_chain(&mut this.outbound, data, &mut this.out).map_err(transform_error)?;
        // The bytes are ours now; start writing them, finish on the next write or flush.
        if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

/// A stream whose bytes are added to a proxy's traffic counters: bytes written go to
/// `a_to_b` (traffic in: user → client), bytes read to `b_to_a` (traffic out). It counts as one
/// of the proxy's current connections while it lives. For connections the data plane does not
/// relay, such as frps' HTTP vhost upstreams.
pub struct Counted<S> {
    io: S,
    counters: std::sync::Arc<dataplane::Counters>,
}

impl<S> Counted<S> {
    pub fn new(io: S, counters: std::sync::Arc<dataplane::Counters>) -> Self {
        counters
            .conns
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Counted { io, counters }
    }
}

impl<S> Drop for Counted<S> {
    fn drop(&mut self) {
        self.counters
            .conns
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut me.io).poll_read(cx, buf))?;
        let n = (buf.filled().len() - before) as u64;
        me.counters
            .b_to_a
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        let n = ready!(Pin::new(&mut me.io).poll_write(cx, b))?;
        me.counters
            .a_to_b
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        Poll::Ready(Ok(n))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{CryptoKey, work_conn_layers};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Two Layered ends with matching layers talk through a duplex pipe, in small and large
    /// writes, with the first bytes of one direction delivered as a prefix.
    #[tokio::test]
    async fn roundtrip_through_layers() {
        let key = CryptoKey::derive(b"tok");
        for (enc, comp) in [(false, false), (true, false), (false, true), (true, true)] {
            let (a, b) = tokio::io::duplex(4096);
            let (ain, aout) = work_conn_layers(Some(&key), enc, comp);
            let (bin, bout) = work_conn_layers(Some(&key), enc, comp);
            let mut a = Layered::new(a, Vec::new(), ain, aout);
            let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
            let want = data.clone();
            let writer = tokio::spawn(async move {
                a.write_all(b"hi").await.unwrap();
                a.write_all(&data).await.unwrap();
                a.shutdown().await.unwrap();
                a
            });
            // Read the first raw bytes by hand and give them back as a prefix.
            let mut b = b;
            let mut first = vec![0u8; 7];
            b.read_exact(&mut first).await.unwrap();
            let mut b = Layered::new(b, first, bin, bout);
            let mut got = Vec::new();
            b.read_to_end(&mut got).await.unwrap();
            assert_eq!(&got[..2], b"hi", "enc={enc} comp={comp}");
            assert!(got[2..] == want[..], "enc={enc} comp={comp}");
            writer.await.unwrap();
        }
    }

    #[tokio::test]
    async fn counted_adds_both_directions_and_tracks_the_connection() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let counters = std::sync::Arc::new(dataplane::Counters::default());
        let (a, mut b) = tokio::io::duplex(1024);
        let mut c = Counted::new(a, counters.clone());
        assert_eq!(counters.conns.load(std::sync::atomic::Ordering::Relaxed), 1);
        c.write_all(b"hello").await.unwrap();
        b.write_all(b"worlds!").await.unwrap();
        let mut got = [0u8; 7];
        c.read_exact(&mut got).await.unwrap();
        let mut sent = [0u8; 5];
        b.read_exact(&mut sent).await.unwrap();
        assert_eq!(
            counters.a_to_b.load(std::sync::atomic::Ordering::Relaxed),
            5
        );
        assert_eq!(
            counters.b_to_a.load(std::sync::atomic::Ordering::Relaxed),
            7
        );
        drop(c);
        assert_eq!(counters.conns.load(std::sync::atomic::Ordering::Relaxed), 0);
    }
}
