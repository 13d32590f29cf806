//! Shared fixtures for frp-uring's criterion benchmarks (`cargo bench -p frp-benches`):
//! deterministic payloads, the typical control messages, and [`LoopbackPath`], a byte path over
//! 127.0.0.1 sockets with zero or more relay hops driven by [`dataplane::Engine`].
//!
//! The benchmarks themselves live in `benches/*.rs`; each is a criterion target with
//! `harness = false`.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use control::crypto::{CryptoKey, work_conn_layers};
use control::msg::{Message, NewProxy, Ping, StartWorkConn};
use dataplane::{Endpoint, Engine, EngineConfig, Pair, Side};

/// `len` pseudo-random bytes (xorshift64, so runs are reproducible): incompressible input.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut s = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        out.extend_from_slice(&s.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// `len` bytes of log-like text (timestamps, counters, repeated words): compresses roughly
/// 4–6× with snappy, like the HTTP/JSON traffic frp usually carries.
pub fn compressible_bytes(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 256);
    let mut i: u64 = 0;
    while out.len() < len {
        let line = format!(
            "2026-01-{:02} 12:{:02}:{:02}.{:03} [I] [proxy/tcp.go:{}] [web-{}] GET /api/v1/items/{} \
             200 {} bytes in {}ms user-agent=\"curl/8.5.0\"\n",
            1 + i % 28,
            i % 60,
            (i * 7) % 60,
            (i * 13) % 1000,
            100 + i % 50,
            i % 4,
            i * 31 % 10_007,
            512 + (i * 97) % 4096,
            i % 300,
        );
        out.extend_from_slice(line.as_bytes());
        i += 1;
    }
    out.truncate(len);
    out
}

/// Typical control-channel messages, as frp v0.70 sends them: a TCP proxy registration, the
/// work-connection header frps sends for each user connection, and a heartbeat.
pub fn typical_messages() -> Vec<(&'static str, Message)> {
    let new_proxy = NewProxy {
        proxy_name: "web".into(),
        proxy_type: "tcp".into(),
        use_encryption: true,
        use_compression: true,
        remote_port: 16000,
        ..Default::default()
    };
    let start_work_conn = StartWorkConn {
        proxy_name: "web".into(),
        src_addr: "203.0.113.45".into(),
        dst_addr: "198.51.100.7".into(),
        src_port: 53_124,
        dst_port: 16000,
        ..Default::default()
    };
    let ping = Ping {
        privilege_key: "5f4dcc3b5aa765d61d8327deb882cf99".into(),
        timestamp: 1_767_225_600,
    };
    vec![
        ("NewProxy", Message::NewProxy(new_proxy)),
        ("StartWorkConn", Message::StartWorkConn(start_work_conn)),
        ("Ping", Message::Ping(ping)),
    ]
}

/// What one relay hop does to the bytes it forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hop {
    /// TCP↔TCP, no transforms (the `Endpoint::Tcp` fast path).
    Plain,
    /// The sending end of a `useEncryption` + `useCompression` work connection: the outgoing
    /// side compresses (snappy framing) then encrypts (AES-128-CFB).
    Encode,
    /// The receiving end: the incoming side decrypts then decompresses.
    Decode,
}

/// A one-way byte path over 127.0.0.1: client socket → relay hops → sink socket.
///
/// With no hops the client is connected straight to the sink (the direct-loopback baseline).
/// The sink runs on its own thread and reads exactly what [`LoopbackPath::transfer`] asks for;
/// the relays run as tokio tasks through [`Engine::spawn`], exactly as frps and frpc hand
/// pairs over, on sockets with `TCP_NODELAY` like theirs.
pub struct LoopbackPath {
    client: Option<TcpStream>,
    cmd: Option<mpsc::Sender<usize>>,
    done: mpsc::Receiver<io::Result<()>>,
    sink: Option<JoinHandle<()>>,
    /// Kept alive for the relay tasks; dropped last.
    _rt: Option<tokio::runtime::Runtime>,
}

impl LoopbackPath {
    /// Builds the path. With `verify`, the sink checks every byte against `pattern` repeated
    /// (for tests; benchmarks leave it off so the sink costs only the reads).
    pub fn new(hops: &[Hop], pattern: Option<Vec<u8>>) -> io::Result<LoopbackPath> {
        let sink_listener = TcpListener::bind("127.0.0.1:0")?;
        let sink_addr = sink_listener.local_addr()?;
        let (cmd_tx, cmd_rx) = mpsc::channel::<usize>();
        let (done_tx, done_rx) = mpsc::channel();
        let sink = std::thread::Builder::new()
            .name("bench-sink".into())
            .spawn(move || {
                let conn = sink_listener.accept().map(|(c, _)| c);
                run_sink(conn, cmd_rx, done_tx, pattern);
            })?;

        let rt = if hops.is_empty() {
            None
        } else {
            Some(
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()?,
            )
        };
        let mut next = sink_addr;
        if let Some(rt) = &rt {
            let key = CryptoKey::derive(b"bench-token");
            let engine = Engine::new(EngineConfig::default());
            for &hop in hops.iter().rev() {
                next = rt.block_on(spawn_hop(hop, next, engine.clone(), key.clone()))?;
            }
        }
        let client = TcpStream::connect(next)?;
        Ok(LoopbackPath {
            client: Some(client),
            cmd: Some(cmd_tx),
            done: done_rx,
            sink: Some(sink),
            _rt: rt,
        })
    }

    /// Writes `total` bytes (`chunk` repeated, the last one cut short) into the path and returns
    /// once the sink has read all of them.
    pub fn transfer(&mut self, chunk: &[u8], total: usize) -> io::Result<()> {
        let gone = || io::Error::new(io::ErrorKind::BrokenPipe, "sink thread gone");
        self.cmd
            .as_ref()
            .expect("live path")
            .send(total)
            .map_err(|_| gone())?;
        let client = self.client.as_mut().expect("live path");
        let mut left = total;
        while left > 0 {
            let n = left.min(chunk.len());
            client.write_all(&chunk[..n])?;
            left -= n;
        }
        self.done.recv().map_err(|_| gone())?
    }
}

impl Drop for LoopbackPath {
    fn drop(&mut self) {
        self.client = None;
        self.cmd = None;
        if let Some(sink) = self.sink.take() {
            let _ = sink.join();
        }
    }
}

/// Listens for one connection, connects it to `next` and hands the pair to `engine`.
async fn spawn_hop(
    hop: Hop,
    next: SocketAddr,
    engine: Engine,
    key: CryptoKey,
) -> io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let Ok((incoming, _)) = listener.accept().await else {
            return;
        };
        let Ok(outgoing) = tokio::net::TcpStream::connect(next).await else {
            return;
        };
        // As frps and frpc do on every relayed socket (Go's default).
        let _ = incoming.set_nodelay(true);
        let _ = outgoing.set_nodelay(true);
        let mut a = Side::plain(Endpoint::Tcp(incoming));
        let mut b = Side::plain(Endpoint::Tcp(outgoing));
        let (inbound, outbound) = work_conn_layers(Some(&key), true, true);
        match hop {
            Hop::Plain => {}
            Hop::Encode => (b.inbound, b.outbound) = (inbound, outbound),
            Hop::Decode => (a.inbound, a.outbound) = (inbound, outbound),
        }
        engine.spawn(Pair {
            a,
            b,
            counters: None,
            limiter: None,
        });
    });
    Ok(addr)
}

fn run_sink(
    conn: io::Result<TcpStream>,
    cmds: mpsc::Receiver<usize>,
    done: mpsc::Sender<io::Result<()>>,
    pattern: Option<Vec<u8>>,
) {
    let mut conn = match conn {
        Ok(c) => c,
        Err(e) => {
            let _ = done.send(Err(e));
            return;
        }
    };
    let _ = conn.set_read_timeout(Some(Duration::from_secs(20)));
    let mut buf = vec![0u8; 256 * 1024];
    let mut offset = 0usize;
    for want in cmds {
        let mut left = want;
        let result = loop {
            if left == 0 {
                break Ok(());
            }
            let cap = left.min(buf.len());
            match conn.read(&mut buf[..cap]) {
                Ok(0) => break Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    if let Some(p) = &pattern
                        && !matches_pattern(p, offset, &buf[..n])
                    {
                        break Err(io::Error::new(io::ErrorKind::InvalidData, "corrupt bytes"));
                    }
                    offset += n;
                    left -= n;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        let failed = result.is_err();
        if done.send(result).is_err() || failed {
            return;
        }
    }
}

/// Whether `got` equals `pattern` repeated, starting at stream offset `offset`.
///
/// The client writes `pattern` whole each time, so offsets are taken modulo its length.
fn matches_pattern(pattern: &[u8], offset: usize, got: &[u8]) -> bool {
    let mut pos = offset % pattern.len();
    let mut rest = got;
    while !rest.is_empty() {
        let n = rest.len().min(pattern.len() - pos);
        if rest[..n] != pattern[pos..pos + n] {
            return false;
        }
        rest = &rest[n..];
        pos = (pos + n) % pattern.len();
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_deterministic_and_sized() {
        assert_eq!(random_bytes(1000, 7), random_bytes(1000, 7));
        assert_eq!(random_bytes(1001, 7).len(), 1001);
        let text = compressible_bytes(64 * 1024);
        assert_eq!(text.len(), 64 * 1024);
        assert!(text.is_ascii());
    }

    #[test]
    fn every_path_delivers_the_bytes_intact() {
        let chunk = random_bytes(64 * 1024, 3);
        for hops in [
            &[][..],
            &[Hop::Plain],
            &[Hop::Plain, Hop::Plain],
            &[Hop::Encode, Hop::Decode],
        ] {
            let mut path = LoopbackPath::new(hops, Some(chunk.clone())).unwrap();
            for _ in 0..3 {
                path.transfer(&chunk, 1024 * 1024).unwrap();
            }
        }
        let text = compressible_bytes(64 * 1024);
        let mut path = LoopbackPath::new(&[Hop::Encode, Hop::Decode], Some(text.clone())).unwrap();
        path.transfer(&text, 2 * 1024 * 1024).unwrap();
    }

    #[test]
    fn typical_messages_round_trip() {
        for (_, msg) in typical_messages() {
            let mut dec = control::msg::V1Decoder::new();
            dec.feed(&control::msg::encode_v1(&msg));
            assert_eq!(dec.next_message().unwrap(), Some(msg));
        }
    }
}
