//! TLS records opened the way a data-plane core opens them (`control::tls::take_apart`): a
//! real client's records, cut at arbitrary points, open to exactly what it sent; bytes after
//! them (garbage, or records of any shape) fail cleanly or open, never panic, and what the
//! session keeps stays bounded; sealing still reaches the client.
#![no_main]
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use control::tls::{accept, client_config, connect, server_config, server_name, take_apart};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn configs() -> &'static (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
    static C: OnceLock<(Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>)> = OnceLock::new();
    C.get_or_init(|| {
        (
            server_config("", "", "").expect("a self-signed server config"),
            client_config("", "", "").expect("a client config"),
        )
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&knobs, rest)) = data.split_first() else {
        return;
    };
    let sent_len = (knobs as usize * 37) % (rest.len() + 1);
    let (sent, garbage) = rest.split_at(sent_len);
    let cut = 1 + (knobs as usize % 64) * 97;
    frp_uring_fuzz::paused_runtime().block_on(async {
        let (scfg, ccfg) = configs().clone();
        let (a, b) = tokio::io::duplex(1 << 20);
        let name = server_name("127.0.0.1").expect("an IP name");
        let (client, server) = tokio::join!(connect(a, ccfg, name), accept(b, scfg));
        let (mut client, server) = (client.expect("handshake"), server.expect("handshake"));
        client.write_all(sent).await.unwrap();
        client.flush().await.unwrap();
        let Ok(mut apart) = take_apart(Box::new(server)) else {
            panic!("a fresh session can be taken apart");
        };
        // What the client wrote, as it lies on the wire.
        let mut wire = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(5), apart.io.read(&mut buf)).await
        {
            if n == 0 {
                break;
            }
            wire.extend_from_slice(&buf[..n]);
        }
        let mut got = apart.opened.to_vec();
        for piece in wire.chunks(cut) {
            apart.open.transform_mut(&mut piece.to_vec(), &mut got).unwrap();
        }
        assert_eq!(got, sent);
        for piece in garbage.chunks(cut) {
            if apart.open.transform_mut(&mut piece.to_vec(), &mut got).is_err() {
                break;
            }
        }
        // Sealing works whatever the opener saw, unless the session failed.
        let mut out = apart.owed.to_vec();
        if apart.seal.transform(b"reply", &mut out).is_ok() {
            apart.io.write_all(&out).await.unwrap();
            let mut reply = [0u8; 5];
            if garbage.is_empty() {
                client.read_exact(&mut reply).await.unwrap();
                assert_eq!(&reply, b"reply");
            }
        }
    });
});
