//! frps's opening exchange (`handshake::server_accept`) against a client that sends arbitrary
//! bytes and then closes: it must return a first message or a clean error within its deadline,
//! never panic or hang. Runs on a paused tokio clock, so deadlines cost no wall time.
#![no_main]
use std::time::Duration;

use control::handshake::server_accept;
use libfuzzer_sys::fuzz_target;
use tokio::io::AsyncWriteExt;

fuzz_target!(|data: &[u8]| {
    frp_uring_fuzz::paused_runtime().block_on(async {
        let (mut client, server) = tokio::io::duplex(256 * 1024);
        let close = data.first().is_some_and(|b| b & 1 == 0);
        client.write_all(data).await.unwrap();
        if close {
            drop(client);
            let _ = server_accept(server, Duration::from_secs(10)).await;
        } else {
            // A client that goes silent: the deadline must end the accept.
            let r = tokio::time::timeout(
                Duration::from_secs(11),
                server_accept(server, Duration::from_secs(10)),
            )
            .await;
            assert!(r.is_ok(), "server_accept outlived its deadline");
            drop(client);
        }
    });
});
