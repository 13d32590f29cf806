//! Arbitrary datagrams into frps' side of KCP: the listener's classifier, then a server
//! session (FEC decoder, Reed–Solomon recovery, KCP input) driven through its timer. It must
//! drop what it cannot use, never panic, and keep its FEC state bounded.
//!
//! Input: records of `[len u8][dt u8][len bytes]`; `dt` advances the clock (ms), a datagram
//! is `len` bytes (short records are padded by the end of the input).
#![no_main]
use control::kcp::session::{Kind, Role, Session, classify};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    let mut now: u32 = 0;
    let mut sess: Option<Session> = None;
    let mut buf = vec![0u8; 65536];
    while rest.len() >= 2 {
        let (len, dt) = (rest[0] as usize * 6, rest[1] as u32 * 8);
        rest = &rest[2..];
        let n = len.min(rest.len());
        let (dgram, tail) = rest.split_at(n);
        rest = tail;
        now = now.wrapping_add(dt);
        let kind = classify(dgram);
        let s = match (&mut sess, kind) {
            (Some(s), _) => s,
            (None, Kind::Data { conv, opens: true }) => {
                sess.insert(Session::new(conv, Role::Server))
            }
            (None, _) => continue,
        };
        s.input(dgram, now);
        while s.recv(&mut buf) > 0 {}
        let _ = s.send(b"pong");
        s.flush(now);
        while let Some(p) = s.poll_transmit(now) {
            assert!(p.len() <= 1350, "datagram over the MTU");
        }
    }
});
