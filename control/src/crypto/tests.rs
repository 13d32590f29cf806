use super::*;
use dataplane::transform::run_chain;

#[test]
fn derive_key_vector() {
    assert_eq!(
        hex::encode(derive_key(b"12345678")),
        "b7eac3f66310824c114f56f8274fdfea"
    );
    assert_eq!(
        CryptoKey::derive(b"12345678").as_bytes(),
        &derive_key(b"12345678")
    );
    assert_eq!(format!("{:?}", CryptoKey::derive(b"x")), "CryptoKey(..)");
}

#[test]
fn oneshot_roundtrip_and_vector() {
    let key = CryptoKey::derive(b"12345678");
    let iv: [u8; 16] = core::array::from_fn(|i| i as u8);
    let ping = hex::decode("6800000000000000027b7d").unwrap();
    assert_eq!(
        hex::encode(encode_oneshot_with_iv(&ping, &key, iv)),
        "000102030405060708090a0b0c0d0e0f4498a24026e4cf47613434"
    );
    for data in [&b""[..], b"x", &[0xab; 1000]] {
        let wire = encode_oneshot(data, &key);
        assert_eq!(wire.len(), IV_LEN + data.len());
        assert_eq!(decode_oneshot(&wire, &key).unwrap(), data);
    }
    assert!(matches!(
        decode_oneshot(&[0; 15], &key),
        Err(CryptoError::ShortData { len: 15 })
    ));
}

#[test]
fn work_conn_layer_order() {
    let key = CryptoKey::derive(b"12345678");
    for (enc, comp, n) in [
        (false, false, 0),
        (true, false, 1),
        (false, true, 1),
        (true, true, 2),
    ] {
        let (inbound, outbound) = work_conn_layers(Some(&key), enc, comp);
        assert_eq!((inbound.len(), outbound.len()), (n, n));
    }
    // A plain pair's chains are unallocated: the data plane holds them for the pair's life.
    let (inbound, outbound) = work_conn_layers(Some(&key), false, false);
    assert_eq!((inbound.capacity(), outbound.capacity()), (0, 0));
    // Outbound of one end feeds inbound of the other; the wire is IV ‖ CFB(snappy frames).
    let (_, mut out_chain) = work_conn_layers(Some(&key), true, true);
    let (mut in_chain, _) = work_conn_layers(Some(&key), true, true);
    let mut wire = Vec::new();
    run_chain(&mut out_chain, b"hello", &mut wire).unwrap();
    run_chain(&mut out_chain, b"world", &mut wire).unwrap();
    let mut framed = Vec::new();
    CfbDecryptor::new(&key)
        .transform(&wire, &mut framed)
        .unwrap();
    assert_eq!(
        hex::encode(&framed),
        "ff060000734e61507059\
         01090000bb1f1c1968656c6c6f\
         010900002d4e1fa5776f726c64"
    );
    let mut plain = Vec::new();
    for b in &wire {
        run_chain(&mut in_chain, std::slice::from_ref(b), &mut plain).unwrap();
    }
    assert_eq!(plain, b"helloworld");

    // No key with encryption on means frp's empty-token key.
    let (_, mut out_chain) = work_conn_layers(None, true, false);
    let mut wire = Vec::new();
    run_chain(&mut out_chain, b"abc", &mut wire).unwrap();
    assert_eq!(
        decode_oneshot(&wire, &CryptoKey::derive(b"")).unwrap(),
        b"abc"
    );
}

/// The capture of a real frp 0.70.0 pair (frpc ↔ frps, v1, no tcpMux), whose proxy "enc" has
/// useEncryption + useCompression with token 12345678.
mod capture {
    use super::*;
    use serde_json::Value;

    const CAPTURE_DIR: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/interop/frp-0.70.0/tcp-v1-nomux"
    );

    fn load(name: &str) -> Value {
        let path = format!("{CAPTURE_DIR}/{name}");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        serde_json::from_str(&text).unwrap()
    }

    /// Splits one plain v1 message (type, i64 BE length, JSON) off the front of `stream`.
    fn split_v1(stream: &[u8]) -> (u8, Value, &[u8]) {
        let kind = stream[0];
        let len = i64::from_be_bytes(stream[1..9].try_into().unwrap());
        let len = usize::try_from(len).unwrap();
        let body = serde_json::from_slice(&stream[9..9 + len]).unwrap();
        (kind, body, &stream[9 + len..])
    }

    fn direction(conn: &Value, dir: &str) -> Vec<u8> {
        conn["chunks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["dir"] == dir)
            .flat_map(|c| hex::decode(c["hex"].as_str().unwrap()).unwrap())
            .collect()
    }

    fn decode(wire: &[u8], key: &CryptoKey) -> Vec<u8> {
        let mut chain: Vec<Box<dyn Transform>> = vec![
            Box::new(CfbDecryptor::new(key)),
            Box::new(SnappyDecoder::new()),
        ];
        let mut plain = Vec::new();
        run_chain(&mut chain, wire, &mut plain).unwrap();
        // And byte by byte, as a slow network would deliver it.
        let mut chain: Vec<Box<dyn Transform>> = vec![
            Box::new(CfbDecryptor::new(key)),
            Box::new(SnappyDecoder::new()),
        ];
        let mut trickled = Vec::new();
        for b in wire {
            run_chain(&mut chain, std::slice::from_ref(b), &mut trickled).unwrap();
        }
        assert_eq!(plain, trickled);
        plain
    }

    #[test]
    fn decrypts_and_decompresses_real_frp_work_connection() {
        let capture = load("capture.json");
        let traffic = load("traffic.json");
        let token = capture["token"].as_str().unwrap();
        assert_eq!(token, "12345678");
        let key = CryptoKey::derive(token.as_bytes());

        let mut checked = 0;
        for conn in capture["connections"].as_array().unwrap() {
            let c2s = direction(conn, "c2s");
            let s2c = direction(conn, "s2c");
            if c2s.first() != Some(&b'w') || s2c.is_empty() {
                continue; // control connection, or a pooled work conn never used
            }
            let (_, _, c2s_rest) = split_v1(&c2s);
            let (kind, start, s2c_rest) = split_v1(&s2c);
            assert_eq!(kind, b's', "StartWorkConn");
            if start["proxy_name"] != "enc" {
                continue;
            }
            // StartWorkConn.dst_port is the proxy's remote port, which names the traffic entry.
            let entry = traffic
                .as_array()
                .unwrap()
                .iter()
                .find(|t| t["port"] == start["dst_port"])
                .expect("traffic entry for the enc proxy");

            // frps → frpc carries what the user sent; frpc → frps the local service's reply.
            let to_frpc = decode(s2c_rest, &key);
            let to_frps = decode(c2s_rest, &key);
            assert_eq!(to_frpc, entry["sent"].as_str().unwrap().as_bytes());
            assert_eq!(to_frps, entry["received"].as_str().unwrap().as_bytes());
            assert_eq!(to_frpc, b"hello through an encrypted, compressed proxy\n");
            checked += 1;
        }
        assert!(
            checked >= 1,
            "no work connection of proxy enc in the capture"
        );
    }
}

/// The relay with real chains: side a is a user connection (plain), side b the frp work
/// connection carrying IV ‖ CFB(snappy frames) both ways, as on frps with
/// useEncryption + useCompression.
mod relay {
    use super::*;
    use crate::crypto::test_util::pseudo_random;
    use dataplane::relay::{Endpoint, Pair, Side, relay};
    use std::sync::Arc;
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    async fn tcp_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (client.unwrap(), accepted.unwrap().0)
    }

    #[tokio::test]
    async fn work_conn_side_is_encrypted_and_compressed_on_the_wire() {
        let key = CryptoKey::derive(b"12345678");
        let (user, relay_a) = tcp_pair().await;
        let (work_peer, relay_b) = tcp_pair().await;

        // What the frpc end of the work connection sends: its own IV ‖ CFB(snappy(reply)).
        let reply = [
            &b"hello through an encrypted, compressed proxy\n"[..],
            &[b'z'; 300_000],
        ]
        .concat();
        let (_, mut peer_out) = work_conn_layers(Some(&key), true, true);
        let mut reply_wire = Vec::new();
        run_chain(&mut peer_out, &reply[..100], &mut reply_wire).unwrap();
        run_chain(&mut peer_out, &reply[100..], &mut reply_wire).unwrap();
        assert!(reply_wire.len() < reply.len() / 4, "compressed on the wire");

        // The control plane already read the IV and a few more bytes with StartWorkConn.
        let (inbound, outbound) = work_conn_layers(Some(&key), true, true);
        let counters = Arc::new(dataplane::Counters::default());
        let pair = Pair {
            a: Side::plain(Endpoint::Tcp(relay_a)),
            b: Side {
                endpoint: Endpoint::Tcp(relay_b),
                prefix: bytes::Bytes::copy_from_slice(&reply_wire[..21]),
                inbound,
                outbound,
                initial_write: bytes::Bytes::new(),
            },
            counters: Some(counters.clone()),
            limiter: None,
        };
        let relay = tokio::spawn(relay(pair));

        let request = [&b"GET / HTTP/1.0\r\n\r\n"[..], &pseudo_random(200_000, 1)].concat();
        let (mut user_r, mut user_w) = user.into_split();
        let (mut peer_r, mut peer_w) = work_peer.into_split();
        let (_, _, at_user, peer_wire) = tokio::join!(
            async {
                user_w.write_all(&request).await.unwrap();
                user_w.shutdown().await.unwrap();
            },
            async {
                peer_w.write_all(&reply_wire[21..]).await.unwrap();
                peer_w.shutdown().await.unwrap();
            },
            async {
                let mut v = Vec::new();
                user_r.read_to_end(&mut v).await.unwrap();
                v
            },
            async {
                let mut v = Vec::new();
                peer_r.read_to_end(&mut v).await.unwrap();
                v
            },
        );
        assert!(
            at_user == reply,
            "user got the decrypted, decompressed reply"
        );

        // The work connection's wire: a clear IV, then CFB over snappy frames.
        let mut framed = Vec::new();
        CfbDecryptor::new(&key)
            .transform(&peer_wire, &mut framed)
            .unwrap();
        assert_eq!(&framed[..10], &snappy::STREAM_IDENTIFIER);
        let mut plain = Vec::new();
        SnappyDecoder::new().transform(&framed, &mut plain).unwrap();
        assert!(plain == request, "work conn carries the request");

        let outcome = relay.await.unwrap();
        assert!(outcome.error.is_none(), "{:?}", outcome.error);
        assert_eq!(outcome.a_to_b, request.len() as u64);
        assert_eq!(outcome.b_to_a, reply.len() as u64);
        assert_eq!(
            counters.b_to_a.load(Ordering::Relaxed),
            reply.len() as u64,
            "counters count plaintext, not wire bytes"
        );
    }
}
