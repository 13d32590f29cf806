//! Arbitrary bytes from a "client" into a server-mode yamux core: it must answer or close with
//! an error, never panic; reads of accepted streams stay within the window; released streams
//! answer later data without panicking.
#![no_main]
use std::time::{Duration, Instant};

use control::yamux::{Config, Connection, Mode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let mut c = Connection::new(&Config::frp(30), Mode::Server, now);
    let mut buf = vec![0u8; 4096];
    for chunk in data.chunks(61) {
        if c.handle_input(chunk).is_err() {
            break;
        }
        while c.poll_transmit().is_some() {}
        while c.poll_event().is_some() {}
        while let Some(id) = c.accept_stream() {
            let _ = c.stream_read(id, &mut buf);
            let _ = c.stream_write(id, b"pong");
            // Half the streams are closed (FIN) and kept, half released as a dropped stream
            // is (FIN or RST, later data answered with RST).
            if id % 4 == 1 {
                c.stream_release(id);
            } else {
                let _ = c.stream_close(id);
            }
        }
    }
    c.handle_timeout(now + Duration::from_secs(60));
    while c.poll_transmit().is_some() {}
});
