//! Arbitrary bytes, fed in pieces of arbitrary size, into the websocket frame reader: events
//! or a clean error, never a panic; it never releases more payload than it was given, and it
//! buffers at most one control frame and one header beyond what it released.
#![no_main]
use control::transport::websocket::{FrameReader, WsEvent};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let step = data.first().map_or(1, |b| *b as usize % 64 + 1);
    let mut r = FrameReader::default();
    let mut released = 0usize;
    for piece in data.chunks(step) {
        r.buffer().extend_from_slice(piece);
        loop {
            match r.next_event() {
                Ok(Some(WsEvent::Data(b))) => released += b.len(),
                Ok(Some(WsEvent::Ping(p))) => assert!(p.len() <= 125),
                Ok(Some(WsEvent::Close)) => {}
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert!(released <= data.len());
        assert!(r.buffer().len() < 14 + 125 + step, "buffered {}", r.buffer().len());
    }
});
