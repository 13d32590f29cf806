//! Decodes every real frp v0.70.0 session recorded under `shared/interop/frp-0.70.0/` with the
//! project's own codecs — yamux core, v1/v2 framing, CFB and AEAD streams, snappy — and checks
//! the message sequences and fields against the scenario's configs and traffic.
//!
//! Beyond decoding, every message is re-encoded and compared with the bytes Go sent, and every
//! encrypted control stream is re-encrypted (with the IV / stream nonce read from the capture)
//! and compared with the captured ciphertext, so the writers are checked byte for byte too.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use control::auth;
use control::config::{ClientConfig, load_client_config};
use control::crypto::aead::AeadWriter;
use control::crypto::{
    AeadReader, CfbDecryptor, CfbEncryptor, CryptoKey, IV_LEN, SnappyEncoder, work_conn_layers,
};
use control::msg::{Message, V1Decoder, encode_v1};
use control::wire_v2::{
    self, ClientHello, ControlKeys, CryptoContext, Direction, FRAME_CLIENT_HELLO,
    FRAME_SERVER_HELLO, Frame, MAGIC, ServerHello, V2Decoder,
};
use control::yamux::{self, Connection, Event, Mode};
use dataplane::Transform;
use dataplane::transform::run_chain;
use serde::Deserialize;

const ROOT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/interop/frp-0.70.0/"
);

// ------------------------------------------------------------------------ capture files

#[derive(Debug, Deserialize)]
struct CaptureFile {
    token: String,
    connections: Vec<CapturedConn>,
}

#[derive(Debug, Deserialize)]
struct CapturedConn {
    id: u32,
    chunks: Vec<CapturedChunk>,
}

#[derive(Debug, Deserialize)]
struct CapturedChunk {
    dir: String,
    hex: String,
}

#[derive(Debug, Deserialize)]
struct Traffic {
    kind: String,
    port: u16,
    sent: String,
    received: String,
}

/// One logical connection (a TCP connection, or a yamux stream): its bytes per direction, in
/// the chunks they arrived in.
#[derive(Debug, Default)]
struct Logical {
    label: String,
    c2s: Vec<Vec<u8>>,
    s2c: Vec<Vec<u8>>,
}

/// One scenario folder, loaded.
struct Scenario {
    name: &'static str,
    token: String,
    frpc: ClientConfig,
    visitor: Option<ClientConfig>,
    traffic: Vec<Traffic>,
    /// The raw TCP connections, in accept order.
    tcp: Vec<CapturedConn>,
    conns: Vec<Conn>,
}

fn dir_of(name: &str) -> PathBuf {
    Path::new(ROOT).join(name)
}

fn load(name: &'static str) -> Scenario {
    let dir = dir_of(name);
    let read = |f: &str| {
        std::fs::read_to_string(dir.join(f))
            .unwrap_or_else(|e| panic!("{name}/{f}: {e} (is shared/ checked out beside the repo?)"))
    };
    let capture: CaptureFile = serde_json::from_str(&read("capture.json")).unwrap();
    let traffic: Vec<Traffic> = serde_json::from_str(&read("traffic.json")).unwrap();
    let frpc = load_client_config(&dir.join("frpc.toml"), true).unwrap();
    let visitor = dir
        .join("visitor.toml")
        .exists()
        .then(|| load_client_config(&dir.join("visitor.toml"), true).unwrap());
    assert_eq!(capture.token, frpc.auth.token, "{name}: capture token");
    let mux = frpc.transport.tcp_mux;

    let mut logical = Vec::new();
    for (i, conn) in capture.connections.iter().enumerate() {
        assert_eq!(conn.id as usize, i, "{name}: connections in accept order");
        if mux {
            logical.extend(demux(name, conn));
        } else {
            let mut l = Logical {
                label: format!("{name} conn {}", conn.id),
                ..Default::default()
            };
            for chunk in &conn.chunks {
                let bytes = hex::decode(&chunk.hex).unwrap();
                match chunk.dir.as_str() {
                    "c2s" => l.c2s.push(bytes),
                    "s2c" => l.s2c.push(bytes),
                    other => panic!("{name}: chunk direction {other:?}"),
                }
            }
            logical.push(l);
        }
    }
    let key = CryptoKey::derive(capture.token.as_bytes());
    let conns: Vec<Conn> = logical
        .iter()
        .map(|l| decode_conn(l, &capture.token, &key))
        .collect();
    // The codecs do not care where reads end: one byte at a time decodes the same.
    for (l, conn) in logical.iter().zip(&conns) {
        let bytewise = |chunks: &[Vec<u8>]| -> Vec<Vec<u8>> {
            chunks.concat().into_iter().map(|b| vec![b]).collect()
        };
        let split = Logical {
            label: format!("{} (bytewise)", l.label),
            c2s: bytewise(&l.c2s),
            s2c: bytewise(&l.s2c),
        };
        let again = decode_conn(&split, &capture.token, &key);
        for (a, b) in [(&conn.c2s, &again.c2s), (&conn.s2c, &again.s2c)] {
            assert_eq!(a.msgs, b.msgs, "{}: split invariance", a.label);
            assert_eq!(a.payload, b.payload, "{}: split invariance", a.label);
        }
    }
    Scenario {
        name,
        token: capture.token,
        frpc,
        visitor,
        traffic,
        tcp: capture.connections,
        conns,
    }
}

fn chunks(conn: &CapturedConn, dir: &str) -> Vec<Vec<u8>> {
    conn.chunks
        .iter()
        .filter(|c| c.dir == dir)
        .map(|c| hex::decode(&c.hex).unwrap())
        .collect()
}

// ------------------------------------------------------------------------------- yamux

/// Splits one tcpMux connection into its streams with the project's sans-IO yamux core: the
/// client's bytes go through a server-mode core (as frps sees them), the server's bytes through
/// a client-mode core that has opened the same streams (as frpc sees them).
fn demux(name: &str, conn: &CapturedConn) -> Vec<Logical> {
    let cfg = yamux::Config::frp(30);
    let now = Instant::now();
    let mut streams: BTreeMap<u32, Logical> = BTreeMap::new();

    let c2s = chunks(conn, "c2s");
    // frpc opens stream 1 (the control) first: WindowUpdate|SYN, delta 6 MiB - 256 KiB.
    assert_eq!(
        hex::encode(&c2s[0][..12]),
        "0001000100000001005c0000",
        "{name}: yamux SYN of stream 1"
    );
    let mut server = Connection::new(&cfg, Mode::Server, now);
    for chunk in &c2s {
        server
            .handle_input(chunk)
            .unwrap_or_else(|e| panic!("{name}: yamux c2s: {e}"));
        drain(&mut server, &mut streams, true, name);
    }
    assert!(server.close_reason().is_none(), "{name}");

    let mut client = Connection::new(&cfg, Mode::Client, now);
    for &id in streams.keys() {
        assert_eq!(
            client.open_stream().unwrap(),
            Some(id),
            "{name}: stream ids"
        );
    }
    let s2c = chunks(conn, "s2c");
    // frps ACKs stream 1 first: WindowUpdate|ACK with the same delta.
    assert_eq!(
        hex::encode(&s2c[0][..12]),
        "0001000200000001005c0000",
        "{name}: yamux ACK of stream 1"
    );
    for chunk in &s2c {
        client
            .handle_input(chunk)
            .unwrap_or_else(|e| panic!("{name}: yamux s2c: {e}"));
        drain(&mut client, &mut streams, false, name);
    }
    assert!(client.close_reason().is_none(), "{name}");
    for (id, l) in streams.iter_mut() {
        l.label = format!("{name} stream {id}");
    }
    streams.into_values().collect()
}

fn drain(core: &mut Connection, streams: &mut BTreeMap<u32, Logical>, c2s: bool, name: &str) {
    while let Some(ev) = core.poll_event() {
        if let Event::StreamReset(id) = ev {
            panic!("{name}: stream {id} reset");
        }
    }
    while let Some(id) = core.accept_stream() {
        assert!(c2s, "{name}: frps opened stream {id}");
        streams.entry(id).or_default();
    }
    let mut buf = vec![0; 64 * 1024];
    for (&id, l) in streams.iter_mut() {
        loop {
            match core.stream_read(id, &mut buf) {
                Ok(Some(0)) | Ok(None) => break,
                Ok(Some(n)) => {
                    let dst = if c2s { &mut l.c2s } else { &mut l.s2c };
                    dst.push(buf[..n].to_vec());
                }
                Err(e) => panic!("{name}: stream {id}: {e}"),
            }
        }
    }
    // Window updates and ACKs the core would send: not part of the replay.
    while let Some(t) = core.poll_transmit() {
        core.recycle_transmit(t);
    }
}

// ------------------------------------------------------------------- one connection

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Control,
    Work,
    Visitor,
}

/// A decoded logical connection.
struct Conn {
    label: String,
    v2: bool,
    kind: Kind,
    c2s: Dir,
    s2c: Dir,
    crypto: Option<CryptoContext>,
}

impl Conn {
    fn first_c2s(&self) -> &Message {
        &self.c2s.msgs[0]
    }
}

enum Codec {
    V1(V1Decoder),
    V2(V2Decoder),
}

// Short-lived; boxing the message would only add noise.
#[allow(clippy::large_enum_variant)]
enum Item {
    Hello(Frame),
    Msg(Message),
}

enum Layer {
    Cfb(CfbDecryptor),
    Aead(AeadReader),
}

/// One direction of a logical connection, decoded as frp reads it.
struct Dir {
    label: String,
    codec: Codec,
    layer: Option<Layer>,
    /// Everything received, as on the wire.
    wire: Vec<u8>,
    /// Plaintext handed to the codec.
    fed: Vec<u8>,
    /// Wire bytes before the encryption layer started (when one did).
    clear_len: Option<usize>,
    hellos: Vec<Frame>,
    msgs: Vec<Message>,
    /// The plaintext bytes each message was decoded from (magic excluded).
    raw: Vec<Vec<u8>>,
    /// Bytes after the handshake message of a work/visitor connection (`Some` from then on).
    payload: Option<Vec<u8>>,
    control_key: CryptoKey,
    aead_keys: Option<ControlKeys>,
    direction: Direction,
}

impl Dir {
    fn new(
        label: String,
        v2: bool,
        direction: Direction,
        control_key: &CryptoKey,
        aead_keys: Option<ControlKeys>,
    ) -> Dir {
        let codec = match (v2, direction) {
            (false, _) => Codec::V1(V1Decoder::new()),
            (true, Direction::ClientToServer) => Codec::V2(V2Decoder::with_magic()),
            (true, Direction::ServerToClient) => Codec::V2(V2Decoder::new()),
        };
        Dir {
            label,
            codec,
            layer: None,
            wire: Vec::new(),
            fed: Vec::new(),
            clear_len: None,
            hellos: Vec::new(),
            msgs: Vec::new(),
            raw: Vec::new(),
            payload: None,
            control_key: control_key.clone(),
            aead_keys,
            direction,
        }
    }

    fn buffered(&self) -> usize {
        match &self.codec {
            Codec::V1(d) => d.buffered(),
            Codec::V2(d) => d.buffered(),
        }
    }

    fn feed_plain(&mut self, plain: &[u8]) {
        self.fed.extend_from_slice(plain);
        match &mut self.codec {
            Codec::V1(d) => d.feed(plain),
            Codec::V2(d) => d.feed(plain),
        }
    }

    fn take_remaining(&mut self) -> Vec<u8> {
        let rest = match &mut self.codec {
            Codec::V1(d) => d.take_remaining(),
            Codec::V2(d) => d.take_remaining(),
        };
        self.fed.truncate(self.fed.len() - rest.len());
        rest
    }

    fn decrypt(&mut self, wire: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let res = match &mut self.layer {
            None => {
                out.extend_from_slice(wire);
                Ok(())
            }
            Some(Layer::Cfb(d)) => d.transform(wire, &mut out),
            Some(Layer::Aead(d)) => d.transform(wire, &mut out),
        };
        res.unwrap_or_else(|e| panic!("{}: decrypt: {e}", self.label));
        out
    }

    fn push(&mut self, wire: &[u8]) {
        self.wire.extend_from_slice(wire);
        if let Some(p) = &mut self.payload {
            p.extend_from_slice(wire);
            return;
        }
        let plain = self.decrypt(wire);
        self.feed_plain(&plain);
        self.pull();
    }

    fn next_item(&mut self) -> Option<Item> {
        let label = &self.label;
        match &mut self.codec {
            Codec::V1(d) => d
                .next_message()
                .unwrap_or_else(|e| panic!("{label}: v1 decode: {e}"))
                .map(Item::Msg),
            Codec::V2(d) => {
                let frame = d
                    .next_frame()
                    .unwrap_or_else(|e| panic!("{label}: v2 decode: {e}"))?;
                match frame.frame_type {
                    FRAME_CLIENT_HELLO | FRAME_SERVER_HELLO => Some(Item::Hello(frame)),
                    _ => Some(Item::Msg(
                        wire_v2::decode_message_frame(&frame)
                            .unwrap_or_else(|e| panic!("{label}: v2 message: {e}")),
                    )),
                }
            }
        }
    }

    fn pull(&mut self) {
        loop {
            let before = self.buffered();
            let Some(item) = self.next_item() else { break };
            let after = self.buffered();
            let mut raw = self.fed[self.fed.len() - before..self.fed.len() - after].to_vec();
            if raw.starts_with(&MAGIC) && self.msgs.is_empty() && self.hellos.is_empty() {
                raw.drain(..MAGIC.len());
            }
            let msg = match item {
                Item::Hello(frame) => {
                    let mut want = frame.frame_type.to_be_bytes().to_vec();
                    want.extend_from_slice(&[0, 0]);
                    want.extend_from_slice(&(frame.payload.len() as u32).to_be_bytes());
                    want.extend_from_slice(&frame.payload);
                    assert_eq!(raw, want, "{}: hello frame bytes", self.label);
                    self.hellos.push(frame);
                    continue;
                }
                Item::Msg(m) => m,
            };
            let first = self.msgs.is_empty();
            self.msgs.push(msg.clone());
            self.raw.push(raw);
            match (first, &msg) {
                (true, Message::Login(_) | Message::LoginResp(_)) => {
                    // The control channel is encrypted from here on, per direction.
                    let rest = self.take_remaining();
                    self.clear_len = Some(self.fed.len());
                    self.layer = Some(match &self.aead_keys {
                        None => Layer::Cfb(CfbDecryptor::new(&self.control_key)),
                        Some(keys) => Layer::Aead(keys.reader(self.direction)),
                    });
                    let plain = self.decrypt(&rest);
                    self.feed_plain(&plain);
                }
                (
                    true,
                    Message::NewWorkConn(_)
                    | Message::StartWorkConn(_)
                    | Message::NewVisitorConn(_)
                    | Message::NewVisitorConnResp(_),
                ) => {
                    // Raw proxied bytes follow.
                    let rest = self.take_remaining();
                    self.payload = Some(rest);
                    return;
                }
                (true, other) => panic!("{}: unexpected first message {other:?}", self.label),
                (false, _) => {}
            }
        }
    }

    fn aead_records(&self) -> u64 {
        match &self.layer {
            Some(Layer::Aead(r)) => r.records(),
            _ => 0,
        }
    }

    fn names(&self) -> Vec<&'static str> {
        self.msgs.iter().map(Message::name).collect()
    }

    fn payload(&self) -> &[u8] {
        self.payload.as_deref().unwrap_or_default()
    }
}

/// For a v2 control connection: the Hello payloads, read ahead from both directions' clear
/// prefixes, and the negotiated crypto.
fn peek_hellos(l: &Logical) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut c = V2Decoder::with_magic();
    c.feed(&l.c2s.concat());
    let ch = c.next_frame().ok()??;
    if ch.frame_type != FRAME_CLIENT_HELLO {
        return None;
    }
    let mut s = V2Decoder::new();
    s.feed(&l.s2c.concat());
    let sh = s.next_frame().unwrap().expect("ServerHello");
    assert_eq!(sh.frame_type, FRAME_SERVER_HELLO);
    Some((ch.payload, sh.payload))
}

fn decode_conn(l: &Logical, token: &str, key: &CryptoKey) -> Conn {
    let all_c2s = l.c2s.concat();
    let v2 = wire_v2::detect_magic(&all_c2s).unwrap_or_else(|| panic!("{}: too short", l.label));
    let mut crypto = None;
    let mut aead_keys = None;
    if v2 && let Some((ch, sh)) = peek_hellos(l) {
        let ctx = CryptoContext::client_finish(&ch, &sh)
            .unwrap_or_else(|e| panic!("{}: hello: {e}", l.label));
        // frps would have made the same choice and sent the same bytes.
        let client_hello = ClientHello::from_payload(&ch).unwrap();
        assert_eq!(
            client_hello.to_payload(),
            ch,
            "{}: ClientHello JSON",
            l.label
        );
        let server_hello = ServerHello::from_payload(&sh).unwrap();
        assert_eq!(
            server_hello.to_payload(),
            sh,
            "{}: ServerHello JSON",
            l.label
        );
        let random: [u8; 32] = server_hello.selected.crypto.server_random[..]
            .try_into()
            .unwrap();
        let (answer, server_ctx) = CryptoContext::server_answer(&ch, random);
        assert_eq!(answer, sh, "{}: our ServerHello", l.label);
        assert_eq!(server_ctx.as_ref(), Ok(&ctx), "{}", l.label);
        aead_keys = Some(ctx.control_keys(token.as_bytes()));
        crypto = Some(ctx);
    }
    let mut c2s = Dir::new(
        format!("{} c2s", l.label),
        v2,
        Direction::ClientToServer,
        key,
        aead_keys.clone(),
    );
    for chunk in &l.c2s {
        c2s.push(chunk);
    }
    let mut s2c = Dir::new(
        format!("{} s2c", l.label),
        v2,
        Direction::ServerToClient,
        key,
        aead_keys,
    );
    for chunk in &l.s2c {
        s2c.push(chunk);
    }
    let kind = match c2s.msgs.first() {
        Some(Message::Login(_)) => Kind::Control,
        Some(Message::NewWorkConn(_)) => Kind::Work,
        Some(Message::NewVisitorConn(_)) => Kind::Visitor,
        other => panic!("{}: first message {other:?}", l.label),
    };
    let conn = Conn {
        label: l.label.clone(),
        v2,
        kind,
        c2s,
        s2c,
        crypto,
    };
    check_reencoding(&conn);
    conn
}

/// Our encoders reproduce what Go sent: every message's bytes, and each whole direction of
/// the control channel including its ciphertext.
fn check_reencoding(conn: &Conn) {
    for dir in [&conn.c2s, &conn.s2c] {
        // Nothing left undecoded in a message stream.
        if dir.payload.is_none() {
            assert_eq!(dir.buffered(), 0, "{}: trailing bytes", dir.label);
        }
        let encode = |m: &Message| {
            if conn.v2 {
                wire_v2::encode_v2_message(m).unwrap()
            } else {
                encode_v1(m)
            }
        };
        for (m, raw) in dir.msgs.iter().zip(&dir.raw) {
            assert_eq!(
                String::from_utf8_lossy(&encode(m)),
                String::from_utf8_lossy(raw),
                "{}: {} re-encoded",
                dir.label,
                m.name()
            );
        }
        // The whole direction, from our writers.
        let mut wire = Vec::new();
        if conn.v2 && dir.direction == Direction::ClientToServer {
            wire.extend_from_slice(&MAGIC);
        }
        for h in &dir.hellos {
            wire.extend(wire_v2::encode_frame(h.frame_type, &h.payload).unwrap());
        }
        let Some(first) = dir.msgs.first() else {
            assert!(dir.wire.is_empty() || conn.v2, "{}", dir.label);
            continue;
        };
        wire.extend(encode(first));
        if let Some(clear_len) = dir.clear_len {
            assert_eq!(clear_len, wire.len(), "{}: clear prefix", dir.label);
            let rest = &dir.msgs[1..];
            if let Some(keys) = &dir.aead_keys {
                let n = keys.algorithm.nonce_len();
                let nonce = &dir.wire[clear_len..clear_len + n];
                let mut w =
                    AeadWriter::with_stream_nonce(keys.algorithm, keys.key(dir.direction), nonce)
                        .unwrap();
                for m in rest {
                    // Go's two writes per frame: two records.
                    let (header, payload) = wire_v2::encode_v2_message_parts(m).unwrap();
                    w.transform(&header, &mut wire).unwrap();
                    w.transform(&payload, &mut wire).unwrap();
                }
                if rest.is_empty() && dir.wire.len() > clear_len {
                    // The nonce alone.
                    wire.extend_from_slice(nonce);
                }
                assert_eq!(dir.aead_records(), 2 * rest.len() as u64, "{}", dir.label);
            } else if dir.wire.len() > clear_len {
                let iv: [u8; IV_LEN] = dir.wire[clear_len..clear_len + IV_LEN].try_into().unwrap();
                let mut w = CfbEncryptor::with_iv(&dir.control_key, iv);
                for m in rest {
                    w.transform(&encode_v1(m), &mut wire).unwrap();
                }
                if rest.is_empty() {
                    wire.extend_from_slice(&iv);
                }
            }
        }
        if let Some(p) = &dir.payload {
            wire.extend_from_slice(p);
        }
        assert!(
            wire == dir.wire,
            "{}: re-encoded direction differs\n ours {}\n go   {}",
            dir.label,
            hex::encode(&wire),
            hex::encode(&dir.wire)
        );
    }
}

// -------------------------------------------------------------------- expectations

/// What a logical connection is expected to be.
#[derive(Debug, Clone, Copy)]
enum Role {
    /// The control connection of the proxy-owning frpc (`frpc.toml`).
    Control,
    /// The control connection of the visitor frpc (`visitor.toml`).
    VisitorControl,
    /// A work connection that served this proxy, or stayed in the pool (`None`).
    Work(Option<&'static str>),
    /// A visitor connection to this proxy.
    Visitor(&'static str),
}

/// The exact message types per direction of each logical connection, in order.
struct ConnSpec {
    role: Role,
    c2s: &'static [&'static str],
    s2c: &'static [&'static str],
}

const fn spec(role: Role, c2s: &'static [&'static str], s2c: &'static [&'static str]) -> ConnSpec {
    ConnSpec { role, c2s, s2c }
}

const NWC: &[&str] = &["NewWorkConn"];
const SWC: &[&str] = &["StartWorkConn"];
const NONE: &[&str] = &[];

macro_rules! get {
    ($msg:expr, $variant:ident) => {
        match $msg {
            Message::$variant(m) => m,
            other => panic!("expected {}, got {other:?}", stringify!($variant)),
        }
    };
}

impl Scenario {
    fn frps(&self) -> control::config::ServerConfig {
        control::config::load_server_config(&dir_of(self.name).join("frps.toml"), true).unwrap()
    }

    fn key(&self) -> CryptoKey {
        CryptoKey::derive(self.token.as_bytes())
    }

    fn traffic_on(&self, port: u16) -> Vec<&Traffic> {
        self.traffic.iter().filter(|t| t.port == port).collect()
    }

    fn run_id(&self, control: &Conn) -> String {
        get!(&control.s2c.msgs[0], LoginResp).run_id.clone()
    }

    /// The checks every scenario shares, then the expected connection layout.
    fn check(&self, specs: &[ConnSpec]) {
        let name = self.name;
        assert_eq!(
            self.conns.len(),
            specs.len(),
            "{name}: logical connections {:?}",
            self.conns.iter().map(|c| &c.label).collect::<Vec<_>>()
        );
        let mux = self.frpc.transport.tcp_mux;
        assert_eq!(
            self.tcp.len(),
            if mux { 1 } else { specs.len() },
            "{name}: TCP connections"
        );
        if mux {
            let labels: Vec<_> = self.conns.iter().map(|c| c.label.clone()).collect();
            let want: Vec<_> = (0..specs.len())
                .map(|i| format!("{name} stream {}", 2 * i + 1))
                .collect();
            assert_eq!(labels, want, "{name}: yamux stream ids");
        }
        let v2 = self.frpc.transport.wire_protocol == "v2";
        for (conn, spec) in self.conns.iter().zip(specs) {
            let l = &conn.label;
            assert_eq!(conn.v2, v2, "{l}: magic present iff wireProtocol = v2");
            assert_eq!(conn.c2s.names(), spec.c2s, "{l}: c2s message types");
            assert_eq!(conn.s2c.names(), spec.s2c, "{l}: s2c message types");
            match spec.role {
                Role::Control => self.check_control(conn, &self.frpc),
                Role::VisitorControl => {
                    self.check_control(conn, self.visitor.as_ref().expect("visitor.toml"))
                }
                Role::Work(proxy) => self.check_work(conn, proxy),
                Role::Visitor(proxy) => self.check_visitor(conn, proxy),
            }
        }
        // Every work connection belongs to a control; frps asked for each one.
        let controls: Vec<&Conn> = self
            .conns
            .iter()
            .filter(|c| c.kind == Kind::Control)
            .collect();
        for control in &controls {
            let run_id = self.run_id(control);
            let work = self
                .conns
                .iter()
                .filter(|c| c.kind == Kind::Work)
                .filter(|c| get!(c.first_c2s(), NewWorkConn).run_id == run_id)
                .count();
            let asked = control
                .s2c
                .names()
                .iter()
                .filter(|n| **n == "ReqWorkConn")
                .count();
            assert_eq!(
                work, asked,
                "{}: NewWorkConn per ReqWorkConn",
                control.label
            );
        }
        for work in self.conns.iter().filter(|c| c.kind == Kind::Work) {
            let run_id = &get!(work.first_c2s(), NewWorkConn).run_id;
            assert!(
                controls.iter().any(|c| &self.run_id(c) == run_id),
                "{}: run_id {run_id} of no control",
                work.label
            );
        }
    }

    fn check_control(&self, conn: &Conn, cfg: &ClientConfig) {
        let l = &conn.label;
        assert_eq!(conn.kind, Kind::Control, "{l}");
        let login = get!(&conn.c2s.msgs[0], Login);
        assert_eq!(login.version, "0.70.0", "{l}");
        assert_eq!(login.user, cfg.user, "{l}");
        assert_eq!(
            (login.os.as_str(), login.arch.as_str()),
            ("linux", "amd64"),
            "{l}"
        );
        assert!(!login.hostname.is_empty(), "{l}");
        assert!(login.run_id.is_empty(), "{l}: first login");
        assert_eq!(login.pool_count, cfg.transport.pool_count, "{l}");
        assert_eq!(login.client_spec, Default::default(), "{l}");
        assert!(
            auth::verify_privilege_key(&self.token, login.timestamp, &login.privilege_key),
            "{l}: Login privilege_key"
        );
        assert!(!auth::verify_privilege_key(
            "wrong",
            login.timestamp,
            &login.privilege_key
        ));

        let resp = get!(&conn.s2c.msgs[0], LoginResp);
        assert_eq!(resp.version, "0.70.0", "{l}");
        assert!(resp.error.is_empty(), "{l}");
        assert!(
            resp.run_id.len() == 16
                && resp
                    .run_id
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "{l}: run_id {:?}",
            resp.run_id
        );

        // Heartbeats carry a privilege key exactly when the HeartBeats scope is on.
        let heartbeat_scope = cfg.auth.additional_scopes.iter().any(|s| s == "HeartBeats");
        for ping in conn.c2s.msgs.iter().filter_map(|m| match m {
            Message::Ping(p) => Some(p),
            _ => None,
        }) {
            if heartbeat_scope {
                assert!(
                    auth::verify_privilege_key(&self.token, ping.timestamp, &ping.privilege_key),
                    "{l}: Ping privilege_key"
                );
            } else {
                assert_eq!(ping, &Default::default(), "{l}: Ping is {{}}");
            }
        }
        for m in &conn.s2c.msgs {
            if let Message::Pong(p) = m {
                assert!(p.error.is_empty(), "{l}: Pong error {p:?}");
            }
        }

        // NewProxy: one per configured proxy, fields from frpc.toml (Go sends them in map
        // order, so match by name).
        let new_proxies: BTreeMap<&str, &control::msg::NewProxy> = conn
            .c2s
            .msgs
            .iter()
            .filter_map(|m| match m {
                Message::NewProxy(p) => Some((p.proxy_name.as_str(), p)),
                _ => None,
            })
            .collect();
        assert_eq!(new_proxies.len(), cfg.proxies.len(), "{l}: NewProxy count");
        for p in &cfg.proxies {
            let wire_name = if cfg.user.is_empty() {
                p.name.clone()
            } else {
                format!("{}.{}", cfg.user, p.name)
            };
            let np = new_proxies
                .get(wire_name.as_str())
                .unwrap_or_else(|| panic!("{l}: no NewProxy for {wire_name}"));
            assert_eq!(np.proxy_type, p.proxy_type.as_str(), "{l}: {wire_name}");
            assert_eq!(
                np.use_encryption, p.transport.use_encryption,
                "{l}: {wire_name}"
            );
            assert_eq!(
                np.use_compression, p.transport.use_compression,
                "{l}: {wire_name}"
            );
            assert_eq!(np.remote_port, i64::from(p.remote_port), "{l}: {wire_name}");
            assert_eq!(np.custom_domains, p.custom_domains, "{l}: {wire_name}");
            assert_eq!(np.subdomain, p.subdomain, "{l}: {wire_name}");
            assert_eq!(np.locations, p.locations, "{l}: {wire_name}");
            assert_eq!(
                np.host_header_rewrite, p.host_header_rewrite,
                "{l}: {wire_name}"
            );
            assert_eq!(np.headers, p.request_headers.set, "{l}: {wire_name}");
            assert_eq!(np.sk, p.secret_key, "{l}: {wire_name}");
            assert!(np.bandwidth_limit.is_empty() && np.group.is_empty(), "{l}");
        }
        // One NewProxyResp per NewProxy, for the same names.
        let mut resp_names: Vec<&str> = conn
            .s2c
            .msgs
            .iter()
            .filter_map(|m| match m {
                Message::NewProxyResp(r) => Some(r.proxy_name.as_str()),
                _ => None,
            })
            .collect();
        resp_names.sort_unstable();
        assert_eq!(
            resp_names,
            new_proxies.keys().copied().collect::<Vec<_>>(),
            "{l}"
        );

        // v2: the Hello exchange.
        let hellos = (&conn.c2s.hellos, &conn.s2c.hellos);
        if conn.v2 {
            assert_eq!(
                (hellos.0.len(), hellos.1.len()),
                (1, 1),
                "{l}: one Hello each way"
            );
            let ch = ClientHello::from_payload(&hellos.0[0].payload).unwrap();
            assert_eq!(ch.bootstrap.transport, cfg.transport.protocol, "{l}");
            assert_eq!(ch.bootstrap.tls, cfg.transport.tls.enable, "{l}");
            assert_eq!(ch.bootstrap.tcp_mux, cfg.transport.tcp_mux, "{l}");
            assert_eq!(ch.capabilities.message.codecs, ["json"], "{l}");
            assert_eq!(
                ch.capabilities.crypto.algorithms,
                ["aes-256-gcm", "xchacha20-poly1305"],
                "{l}"
            );
            let sh = ServerHello::from_payload(&hellos.1[0].payload).unwrap();
            assert_eq!(sh.selected.crypto.algorithm, "aes-256-gcm", "{l}");
            assert!(sh.error.is_empty(), "{l}");
            let ctx = conn.crypto.as_ref().expect("negotiated");
            assert_eq!(
                ctx.transcript_hash,
                wire_v2::transcript_hash(&hellos.0[0].payload, &hellos.1[0].payload)
            );
            // Both directions really were AEAD: two records per message after the login.
            assert_eq!(
                conn.c2s.aead_records(),
                2 * (conn.c2s.msgs.len() as u64 - 1),
                "{l}"
            );
            assert_eq!(
                conn.s2c.aead_records(),
                2 * (conn.s2c.msgs.len() as u64 - 1),
                "{l}"
            );
        } else {
            assert!(hellos.0.is_empty() && hellos.1.is_empty(), "{l}");
            assert!(conn.crypto.is_none(), "{l}");
        }
    }

    fn check_work(&self, conn: &Conn, proxy: Option<&str>) {
        let l = &conn.label;
        assert_eq!(conn.kind, Kind::Work, "{l}");
        assert!(
            conn.c2s.hellos.is_empty(),
            "{l}: no Hello on work connections"
        );
        let nwc = get!(conn.first_c2s(), NewWorkConn);
        if self
            .frpc
            .auth
            .additional_scopes
            .iter()
            .any(|s| s == "NewWorkConns")
        {
            assert!(
                auth::verify_privilege_key(&self.token, nwc.timestamp, &nwc.privilege_key),
                "{l}: NewWorkConn privilege_key"
            );
        } else {
            assert!(nwc.privilege_key.is_empty() && nwc.timestamp == 0, "{l}");
        }
        let Some(proxy) = proxy else {
            // Still in the pool when the capture ended.
            assert!(
                conn.c2s.payload().is_empty() && conn.s2c.wire.is_empty(),
                "{l}"
            );
            return;
        };
        let swc = get!(&conn.s2c.msgs[0], StartWorkConn);
        assert_eq!(swc.proxy_name, proxy, "{l}");
        assert!(swc.error.is_empty(), "{l}");
        let cfg = self
            .frpc
            .proxies
            .iter()
            .find(|p| p.name == proxy)
            .unwrap_or_else(|| panic!("{l}: {proxy} not in frpc.toml"));
        match cfg.proxy_type.as_str() {
            "tcp" => {
                assert_eq!(
                    (swc.src_addr.as_str(), swc.dst_addr.as_str()),
                    ("127.0.0.1", "127.0.0.1")
                );
                assert_ne!(swc.src_port, 0, "{l}");
                assert_eq!(swc.dst_port, cfg.remote_port, "{l}: dst is the public port");
            }
            "stcp" => {
                // The visitor reached frps itself.
                assert_eq!(swc.dst_addr, "127.0.0.1", "{l}");
                assert_eq!(swc.dst_port, self.frps().bind_port, "{l}");
            }
            "http" | "udp" => {
                assert!(swc.dst_addr.is_empty() && swc.dst_port == 0, "{l}: {swc:?}");
            }
            other => panic!("{l}: proxy type {other}"),
        }
        // Undo useEncryption/useCompression (keyed with the token) in both directions.
        let key = self.key();
        let enc = (cfg.transport.use_encryption, cfg.transport.use_compression);
        let to_local = unwrap_payload(conn.s2c.payload(), &key, enc, l);
        let from_local = unwrap_payload(conn.c2s.payload(), &key, enc, l);
        if enc == (true, true) {
            // Our writers produce the same bytes from the IV Go picked.
            for (plain, wire) in [
                (&to_local, conn.s2c.payload()),
                (&from_local, conn.c2s.payload()),
            ] {
                assert_eq!(
                    rewrap_payload(plain, &key, wire),
                    wire,
                    "{l}: re-encrypted payload"
                );
            }
        }
        match cfg.proxy_type.as_str() {
            "tcp" | "stcp" => {
                let port = if cfg.proxy_type.as_str() == "tcp" {
                    cfg.remote_port
                } else {
                    self.visitor.as_ref().unwrap().visitors[0].bind_port as u16
                };
                let t = self.traffic_on(port);
                assert_eq!(t.len(), 1, "{l}: traffic on {port}");
                assert_eq!(t[0].kind, "tcp");
                assert_eq!(String::from_utf8(to_local).unwrap(), t[0].sent, "{l}");
                assert_eq!(String::from_utf8(from_local).unwrap(), t[0].received, "{l}");
            }
            "udp" => self.check_udp_payload(l, &to_local, &from_local, cfg.remote_port),
            "http" => self.check_http_payload(l, &to_local, &from_local, cfg),
            _ => unreachable!(),
        }
    }

    fn check_udp_payload(&self, l: &str, to_local: &[u8], from_local: &[u8], port: u16) {
        let traffic = self.traffic_on(port);
        assert_eq!(traffic.len(), 2, "{l}");
        let decode = |bytes: &[u8]| {
            let mut d = V1Decoder::new();
            d.feed(bytes);
            let mut out = Vec::new();
            while let Some(m) = d.next_message().unwrap() {
                assert_eq!(encode_v1(&m).len(), 9 + m.to_json().len());
                out.push(get!(m, UdpPacket));
            }
            assert_eq!(d.buffered(), 0, "{l}: partial UDPPacket");
            out
        };
        let (down, up) = (decode(to_local), decode(from_local));
        assert_eq!(
            down.len(),
            traffic.len(),
            "{l}: datagrams to the local service"
        );
        assert_eq!(up.len(), traffic.len(), "{l}: datagrams back");
        for ((d, u), t) in down.iter().zip(&up).zip(&traffic) {
            assert_eq!(t.kind, "udp");
            assert_eq!(d.content, t.sent.as_bytes(), "{l}");
            assert_eq!(u.content, t.received.as_bytes(), "{l}");
            // frps sets only the user's address (`r`), and the answer goes back to it.
            let r = d.remote_addr.as_ref().expect("r");
            assert_eq!((r.ip.as_str(), r.zone.as_str()), ("127.0.0.1", ""), "{l}");
            assert_ne!(r.port, 0);
            assert!(d.local_addr.is_none() && u.local_addr.is_none(), "{l}");
            assert_eq!(u.remote_addr.as_ref(), Some(r), "{l}: reply address");
        }
        assert_ne!(
            down[0].remote_addr, down[1].remote_addr,
            "{l}: two user sockets"
        );
    }

    fn check_http_payload(
        &self,
        l: &str,
        to_local: &[u8],
        from_local: &[u8],
        cfg: &control::config::ProxyConfig,
    ) {
        let request = String::from_utf8(to_local.to_vec()).unwrap();
        let response = String::from_utf8(from_local.to_vec()).unwrap();
        // frps' reverse proxy rewrote the request as configured.
        assert!(request.starts_with("GET / HTTP/1.1\r\n"), "{l}: {request}");
        assert!(
            request.contains(&format!("\r\nHost: {}\r\n", cfg.host_header_rewrite)),
            "{l}: {request}"
        );
        for (k, v) in &cfg.request_headers.set {
            let header = format!("{}: {v}", canonical_header(k));
            assert!(
                request.contains(&header),
                "{l}: {header} missing in {request}"
            );
        }
        let host = request
            .split("\r\n")
            .find_map(|h| h.strip_prefix("X-Forwarded-Host: "))
            .unwrap_or_else(|| panic!("{l}: no X-Forwarded-Host"));
        let t = self
            .traffic
            .iter()
            .find(|t| t.sent == host)
            .unwrap_or_else(|| panic!("{l}: no request for {host}"));
        assert_eq!(t.kind, "http");
        // The body and status reached the user (frps re-serialised the headers).
        let body = |s: &str| s.split_once("\r\n\r\n").map(|(_, b)| b.to_string());
        assert_eq!(body(&response), body(&t.received), "{l}: body");
        assert_eq!(
            response.lines().next(),
            t.received.lines().next(),
            "{l}: status"
        );
    }

    fn check_visitor(&self, conn: &Conn, proxy: &str) {
        let l = &conn.label;
        assert_eq!(conn.kind, Kind::Visitor, "{l}");
        let visitor_cfg = self.visitor.as_ref().expect("visitor.toml");
        let v = &visitor_cfg.visitors[0];
        let nvc = get!(conn.first_c2s(), NewVisitorConn);
        assert_eq!(nvc.proxy_name, proxy, "{l}");
        assert_eq!(v.server_name, proxy, "{l}");
        assert!(
            auth::verify_sign_key(&v.secret_key, nvc.timestamp, &nvc.sign_key),
            "{l}: sign_key with the stcp secretKey"
        );
        assert!(
            !auth::verify_sign_key(&self.token, nvc.timestamp, &nvc.sign_key),
            "{l}"
        );
        assert_eq!(
            (nvc.use_encryption, nvc.use_compression),
            (v.transport.use_encryption, v.transport.use_compression),
            "{l}"
        );
        // The visitor frpc's own control (the one that sent no NewProxy).
        let visitor_control = self
            .conns
            .iter()
            .find(|c| c.kind == Kind::Control && !c.c2s.names().contains(&"NewProxy"))
            .expect("visitor control");
        assert_eq!(nvc.run_id, self.run_id(visitor_control), "{l}");
        let resp = get!(&conn.s2c.msgs[0], NewVisitorConnResp);
        assert_eq!(
            (resp.proxy_name.as_str(), resp.error.as_str()),
            (proxy, ""),
            "{l}"
        );
        // Visitor legs are keyed with the secretKey.
        let key = CryptoKey::derive(v.secret_key.as_bytes());
        let flags = (nvc.use_encryption, nvc.use_compression);
        let t = self.traffic_on(v.bind_port as u16);
        assert_eq!(t.len(), 1, "{l}");
        let up = unwrap_payload(conn.c2s.payload(), &key, flags, l);
        let down = unwrap_payload(conn.s2c.payload(), &key, flags, l);
        assert_eq!(String::from_utf8(up).unwrap(), t[0].sent, "{l}");
        assert_eq!(String::from_utf8(down).unwrap(), t[0].received, "{l}");
    }

    fn control(&self) -> &Conn {
        &self.conns[0]
    }

    /// NewProxyResp by proxy name, from the first control.
    fn proxy_resps(&self) -> BTreeMap<String, control::msg::NewProxyResp> {
        self.control()
            .s2c
            .msgs
            .iter()
            .filter_map(|m| match m {
                Message::NewProxyResp(r) => Some((r.proxy_name.clone(), r.clone())),
                _ => None,
            })
            .collect()
    }
}

/// Go's canonical MIME header key (`x-from-where` → `X-From-Where`).
fn canonical_header(k: &str) -> String {
    k.split('-')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + &c.as_str().to_ascii_lowercase())
                .unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join("-")
}

/// Undoes a work/visitor connection's `useEncryption`/`useCompression` layers.
fn unwrap_payload(wire: &[u8], key: &CryptoKey, (enc, comp): (bool, bool), l: &str) -> Vec<u8> {
    let (mut inbound, _) = work_conn_layers(Some(key), enc, comp);
    let mut out = Vec::new();
    run_chain(&mut inbound, wire, &mut out).unwrap_or_else(|e| panic!("{l}: payload: {e}"));
    if enc {
        assert_ne!(out, wire, "{l}: payload was encrypted");
    }
    out
}

/// snappy + CFB over `plain` (one write, as Go did here), with the IV Go sent first in `wire`.
fn rewrap_payload(plain: &[u8], key: &CryptoKey, wire: &[u8]) -> Vec<u8> {
    let iv: [u8; IV_LEN] = wire[..IV_LEN].try_into().unwrap();
    let mut snappy = SnappyEncoder::new();
    let mut framed = Vec::new();
    snappy.transform(plain, &mut framed).unwrap();
    let mut out = Vec::new();
    CfbEncryptor::with_iv(key, iv)
        .transform(&framed, &mut out)
        .unwrap();
    out
}

// ------------------------------------------------------------------------ scenarios

const TCP_NOMUX_CONTROL: ConnSpec = spec(
    Role::Control,
    &["Login", "NewProxy", "NewProxy", "Ping"],
    &[
        "LoginResp",
        "ReqWorkConn",
        "NewProxyResp",
        "NewProxyResp",
        "Pong",
        "ReqWorkConn",
        "ReqWorkConn",
    ],
);
const TCP_MUX_CONTROL: ConnSpec = spec(
    Role::Control,
    &["Login", "NewProxy", "NewProxy"],
    &[
        "LoginResp",
        "ReqWorkConn",
        "NewProxyResp",
        "NewProxyResp",
        "ReqWorkConn",
        "ReqWorkConn",
    ],
);

/// The four tcp scenarios: two tcp proxies, one encrypted + compressed.
fn check_tcp(name: &'static str, control: ConnSpec) {
    let s = load(name);
    s.check(&[
        control,
        spec(Role::Work(Some("enc")), NWC, SWC),
        spec(Role::Work(Some("plain")), NWC, SWC),
        spec(Role::Work(None), NWC, NONE),
    ]);
    let resps = s.proxy_resps();
    assert_eq!(resps["enc"].remote_addr, ":27110", "{name}");
    assert_eq!(resps["plain"].remote_addr, ":27111", "{name}");
    assert!(resps.values().all(|r| r.error.is_empty()), "{name}");
}

#[test]
fn tcp_v1_nomux() {
    check_tcp("tcp-v1-nomux", TCP_NOMUX_CONTROL);
}

#[test]
fn tcp_v1_mux() {
    check_tcp("tcp-v1-mux", TCP_MUX_CONTROL);
}

#[test]
fn tcp_v2_nomux() {
    check_tcp("tcp-v2-nomux", TCP_NOMUX_CONTROL);
}

#[test]
fn tcp_v2_mux() {
    check_tcp("tcp-v2-mux", TCP_MUX_CONTROL);
}

#[test]
fn heartbeat_v1_nomux() {
    let s = load("heartbeat-v1-nomux");
    let pings = ["Ping"; 7];
    let pongs = ["Pong"; 7];
    let c2s: Vec<&str> = std::iter::once("Login").chain(pings).collect();
    let s2c: Vec<&str> = ["LoginResp", "ReqWorkConn"]
        .into_iter()
        .chain(pongs)
        .collect();
    s.check(&[
        spec(Role::Control, c2s.leak(), s2c.leak()),
        spec(Role::Work(None), NWC, NONE),
    ]);
    assert_eq!(s.frpc.transport.heartbeat_interval, 1);
}

#[test]
fn auth_scopes_v1_nomux() {
    let s = load("auth-scopes-v1-nomux");
    s.check(&[
        spec(
            Role::Control,
            &[
                "Login", "NewProxy", "NewProxy", "Ping", "Ping", "Ping", "Ping", "Ping", "Ping",
            ],
            &[
                "LoginResp",
                "ReqWorkConn",
                "NewProxyResp",
                "NewProxyResp",
                "Pong",
                "Pong",
                "Pong",
                "ReqWorkConn",
                "ReqWorkConn",
                "Pong",
                "Pong",
                "Pong",
            ],
        ),
        spec(Role::Work(Some("enc")), NWC, SWC),
        spec(Role::Work(Some("plain")), NWC, SWC),
        spec(Role::Work(None), NWC, NONE),
    ]);
    // The scoped keys are really there (check_control/check_work verified them).
    let control = s.control();
    let ping = get!(&control.c2s.msgs[3], Ping);
    assert!(!ping.privilege_key.is_empty() && ping.timestamp > 0);
    for work in &s.conns[1..] {
        assert!(!get!(work.first_c2s(), NewWorkConn).privilege_key.is_empty());
    }
}

#[test]
fn udp_v1_nomux() {
    let s = load("udp-v1-nomux");
    s.check(&[
        spec(
            Role::Control,
            &["Login", "NewProxy", "Ping"],
            &[
                "LoginResp",
                "ReqWorkConn",
                "NewProxyResp",
                "Pong",
                "ReqWorkConn",
            ],
        ),
        spec(Role::Work(Some("dns")), NWC, SWC),
        spec(Role::Work(None), NWC, NONE),
    ]);
    assert_eq!(s.proxy_resps()["dns"].remote_addr, ":27110");
}

#[test]
fn http_v1_nomux() {
    let s = load("http-v1-nomux");
    s.check(&[
        spec(
            Role::Control,
            &["Login", "NewProxy", "Ping"],
            &[
                "LoginResp",
                "ReqWorkConn",
                "NewProxyResp",
                "Pong",
                "ReqWorkConn",
                "ReqWorkConn",
            ],
        ),
        spec(Role::Work(Some("web")), NWC, SWC),
        spec(Role::Work(Some("web")), NWC, SWC),
        spec(Role::Work(None), NWC, NONE),
    ]);
    let resp = &s.proxy_resps()["web"];
    // One entry per (domain, location), domain:vhostHTTPPort, as frps joins them.
    assert_eq!(
        resp.remote_addr,
        "www.other.test:27115,www.other.test:27115,app.example.test:27115,app.example.test:27115"
    );
    assert!(resp.error.is_empty());
    // The two known hosts reached frpc; the unknown one got frps' 404.
    let hosts: Vec<String> = s.conns[1..3]
        .iter()
        .map(|c| {
            let req = String::from_utf8_lossy(c.s2c.payload()).to_string();
            req.split("\r\n")
                .find_map(|h| h.strip_prefix("X-Forwarded-Host: ").map(str::to_string))
                .unwrap()
        })
        .collect();
    assert_eq!(hosts, ["www.other.test", "app.example.test"]);
    let unknown = s
        .traffic
        .iter()
        .find(|t| t.sent == "unknown.example.test")
        .unwrap();
    assert!(unknown.received.starts_with("HTTP/1.1 404 Not Found\r\n"));
}

#[test]
fn http_error_v1_nomux() {
    let s = load("http-error-v1-nomux");
    s.check(&[
        spec(
            Role::Control,
            &["Login", "NewProxy", "Ping"],
            &["LoginResp", "ReqWorkConn", "NewProxyResp", "Pong"],
        ),
        spec(Role::Work(None), NWC, NONE),
    ]);
    let resp = &s.proxy_resps()["web"];
    assert_eq!(
        resp.error,
        "custom domain [www.example.test] should not belong to subdomain host [example.test]"
    );
    assert!(resp.remote_addr.is_empty());
    assert_eq!(s.frps().sub_domain_host, "example.test");
    // No user request reached frpc.
    assert!(
        s.traffic
            .iter()
            .all(|t| t.received.starts_with("HTTP/1.1 404 "))
    );
}

#[test]
fn stcp_v1_nomux() {
    let s = load("stcp-v1-nomux");
    s.check(&[
        spec(
            Role::Control,
            &["Login", "NewProxy", "Ping"],
            &[
                "LoginResp",
                "ReqWorkConn",
                "NewProxyResp",
                "Pong",
                "ReqWorkConn",
            ],
        ),
        spec(Role::Work(Some("secret")), NWC, SWC),
        spec(
            Role::VisitorControl,
            &["Login", "Ping"],
            &["LoginResp", "ReqWorkConn", "Pong"],
        ),
        spec(Role::Work(None), NWC, NONE),
        spec(
            Role::Visitor("secret"),
            &["NewVisitorConn"],
            &["NewVisitorConnResp"],
        ),
        spec(Role::Work(None), NWC, NONE),
    ]);
    let resp = &s.proxy_resps()["secret"];
    assert!(resp.remote_addr.is_empty() && resp.error.is_empty());
    let np = s.control().c2s.msgs.iter().find_map(|m| match m {
        Message::NewProxy(p) => Some(p),
        _ => None,
    });
    assert_eq!(np.unwrap().sk, "abcdefg");
    // The visitor's work connection and its visitor connection carried the same bytes.
    assert_eq!(s.conns[1].s2c.payload(), s.conns[4].c2s.payload());
    assert_eq!(s.conns[1].c2s.payload(), s.conns[4].s2c.payload());
}

/// The decoder is not lenient: damaging a capture makes it fail.
#[test]
#[should_panic(expected = "decrypt")]
fn tampered_v2_control_is_rejected() {
    let capture: CaptureFile = serde_json::from_str(
        &std::fs::read_to_string(dir_of("tcp-v2-nomux").join("capture.json")).unwrap(),
    )
    .unwrap();
    let mut l = Logical {
        label: "tampered".into(),
        c2s: chunks(&capture.connections[0], "c2s"),
        s2c: chunks(&capture.connections[0], "s2c"),
    };
    // Flip a bit in the last byte of the client's last AEAD record.
    let last = l.c2s.last_mut().unwrap();
    *last.last_mut().unwrap() ^= 1;
    let key = CryptoKey::derive(capture.token.as_bytes());
    decode_conn(&l, &capture.token, &key);
}
