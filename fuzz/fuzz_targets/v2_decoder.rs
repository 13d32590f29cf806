//! Arbitrary bytes, split at an arbitrary point, into the wire v2 frame decoder (with or
//! without the magic), and every frame it returns into the decoder of its kind: message
//! frames, ClientHello (answered as frps would) and ServerHello (checked as frpc would). Each
//! must return a value or a clean error, never panic, and never buffer more than it was given.
#![no_main]
use control::crypto::AeadAlgorithm;
use control::wire_v2::{
    BootstrapInfo, ClientHello, CryptoContext, FRAME_CLIENT_HELLO, FRAME_MESSAGE,
    FRAME_SERVER_HELLO, ServerHello, V2Decoder, decode_message_frame, encode_v2_message,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let first = data.first().copied().unwrap_or(0);
    let split = first as usize % (data.len() + 1);
    let mut d = if first & 1 == 0 {
        V2Decoder::with_magic()
    } else {
        V2Decoder::new()
    };
    for part in [&data[..split], &data[split..]] {
        d.feed(part);
        loop {
            let frame = match d.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(_) => return,
            };
            match frame.frame_type {
                FRAME_MESSAGE => {
                    if let Ok(m) = decode_message_frame(&frame) {
                        // Whatever decodes must re-encode (when it still fits a frame) and
                        // decode to the same message.
                        if let Ok(wire) = encode_v2_message(&m) {
                            let mut again = V2Decoder::new();
                            again.feed(&wire);
                            assert_eq!(again.next_message().unwrap(), Some(m));
                        }
                    }
                }
                FRAME_CLIENT_HELLO => {
                    let (answer, ctx) = CryptoContext::server_answer(&frame.payload, [7; 32]);
                    // The answer is always a ServerHello frpc can parse; an accepted one
                    // completes the exchange on the client side with the same context.
                    let sh = ServerHello::from_payload(&answer).expect("our ServerHello parses");
                    match ctx {
                        Ok(ctx) => {
                            let client = CryptoContext::client_finish(&frame.payload, &answer)
                                .expect("an accepted hello finishes");
                            assert_eq!(client, ctx);
                        }
                        Err(_) => assert!(!sh.error.is_empty()),
                    }
                }
                FRAME_SERVER_HELLO => {
                    if let Ok(sh) = ServerHello::from_payload(&frame.payload) {
                        let ch = ClientHello::new(
                            BootstrapInfo::default(),
                            &AeadAlgorithm::ALL,
                            [1; 32],
                        );
                        let _ = sh.validate_for(&ch);
                    }
                }
                _ => {}
            }
        }
        assert!(d.buffered() <= data.len());
    }
});
