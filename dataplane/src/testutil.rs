//! Helpers shared by the relay and engine tests.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, DuplexStream};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

use crate::relay::{Endpoint, Pair, Side};
use crate::transform::{Transform, TransformError};

/// Fails a test that would otherwise hang; never part of what a test asserts.
pub const HANG_GUARD: Duration = Duration::from_secs(30);

/// A connected pair of TCP sockets: (the test's end, the relay's end).
pub async fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (client.unwrap(), accepted.unwrap().0)
}

pub fn tcp_side(stream: TcpStream) -> Side {
    Side::plain(Endpoint::Tcp(stream))
}

/// Two plain TCP sides: no prefix, no transforms, no counters, no limit.
pub fn tcp_pair_of(a: TcpStream, b: TcpStream) -> Pair {
    Pair {
        a: tcp_side(a),
        b: tcp_side(b),
        counters: None,
        limiter: None,
    }
}

pub fn stream_side(stream: DuplexStream) -> Side {
    Side::plain(Endpoint::Stream(Box::new(stream)))
}

pub fn pattern(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

/// Reads until EOF; a reset after the relay dropped the socket counts as the end too.
pub async fn read_all<R: AsyncRead + Unpin>(r: &mut R) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match timeout(HANG_GUARD, r.read(&mut buf)).await.expect("hang") {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

pub struct Xor(pub u8);
impl Transform for Xor {
    fn transform(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), TransformError> {
        out.extend(input.iter().map(|b| b ^ self.0));
        Ok(())
    }
}

pub struct Add(pub u8);
impl Transform for Add {
    fn transform(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), TransformError> {
        out.extend(input.iter().map(|b| b.wrapping_add(self.0)));
        Ok(())
    }
}

/// Keeps the bytes at even stream offsets: shrinks the stream, so wire ≠ plaintext length.
#[derive(Default)]
pub struct KeepEven(pub u64);
impl Transform for KeepEven {
    fn transform(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), TransformError> {
        for &b in input {
            if self.0.is_multiple_of(2) {
                out.push(b);
            }
            self.0 += 1;
        }
        Ok(())
    }
}

/// Rejects the stream at the first 0xEE byte (after passing what came before it).
pub struct Poison;
impl Transform for Poison {
    fn transform(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), TransformError> {
        match input.iter().position(|&b| b == 0xee) {
            Some(at) => {
                out.extend_from_slice(&input[..at]);
                Err(TransformError("poisoned byte".into()))
            }
            None => {
                out.extend_from_slice(input);
                Ok(())
            }
        }
    }
}
