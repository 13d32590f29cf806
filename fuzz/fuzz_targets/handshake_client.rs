//! frpc's login exchange (`handshake::client_login`, wire v1 or v2 by the first byte) against a
//! server that answers with arbitrary bytes and then closes or goes silent: it must return a
//! LoginResp or a clean error within its timeout, never panic or hang. Paused tokio clock.
#![no_main]
use std::time::Duration;

use control::handshake::{LOGIN_RESPONSE_TIMEOUT, client_login};
use control::msg::Login;
use control::msgconn::MsgConn;
use control::wire_v2::{BootstrapInfo, WireVersion};
use libfuzzer_sys::fuzz_target;
use tokio::io::AsyncWriteExt;

fuzz_target!(|data: &[u8]| {
    let first = data.first().copied().unwrap_or(0);
    let version = if first & 1 == 0 {
        WireVersion::V1
    } else {
        WireVersion::V2
    };
    frp_uring_fuzz::paused_runtime().block_on(async {
        let (client, mut server) = tokio::io::duplex(256 * 1024);
        server
            .write_all(data.get(1..).unwrap_or_default())
            .await
            .unwrap();
        if first & 2 == 0 {
            server.shutdown().await.unwrap();
        }
        let mut conn = MsgConn::client(client, version);
        let r = tokio::time::timeout(
            LOGIN_RESPONSE_TIMEOUT + Duration::from_secs(1),
            client_login(&mut conn, Login::default(), BootstrapInfo::default()),
        )
        .await;
        assert!(r.is_ok(), "client_login outlived its timeout");
        drop(server);
    });
});
