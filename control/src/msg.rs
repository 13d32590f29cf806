//! frp's messages, with Go's exact JSON field names and order, and the v1 wire codec.
//!
//! v1 framing (golib `msg/json`): `type:u8 | length:i64 BE | json[length]`, one message per
//! frame, read limit 10240 bytes (spec §3.1). The codec here is sans-IO: [`encode_v1`] builds a
//! frame and [`V1Decoder`] turns bytes arriving in any split into messages.
//!
//! JSON follows Go's `encoding/json` as frp uses it (spec §3.5): fields in struct order,
//! `omitempty` on nearly everything, struct-typed fields (`client_spec`, `detect_behavior`)
//! always present, `[]byte` as padded standard base64, maps with sorted keys (BTreeMap).
//! Reading is lenient like Go's: unknown keys are ignored and `null` means "empty".

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};

/// The v1 read limit on a message body (golib `msg/json` `defaultMaxMsgLength`).
pub const V1_MAX_BODY: usize = 10240;
/// Length of a v1 frame header: type byte plus an int64 length.
pub const V1_HEADER_LEN: usize = 9;

/// What went wrong decoding a frame.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("message type {0:#04x} ({1:?}) is not a frp message")]
    UnknownType(u8, char),
    #[error("message length exceed the limit: {0} bytes (limit {V1_MAX_BODY})")]
    TooLong(i64),
    #[error("message length is negative: {0}")]
    NegativeLength(i64),
    #[error("invalid {kind} message body: {reason}")]
    BadJson { kind: &'static str, reason: String },
}

pub(crate) fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

pub(crate) fn is_false(b: &bool) -> bool {
    !*b
}
fn is_zero_i64(v: &i64) -> bool {
    *v == 0
}
fn is_zero_u16(v: &u16) -> bool {
    *v == 0
}

// `#[serde(default, deserialize_with = "null_default", skip_serializing_if = ...)]` on every
// field is what Go's `json:",omitempty"` plus its lenient decoder amount to; this macro keeps
// the struct definitions readable.
macro_rules! go_struct {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$fmeta:meta])* $field:ident : $ty:ty = $skip:literal ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
        pub struct $name {
            $(
                $(#[$fmeta])*
                #[serde(default, deserialize_with = "null_default", skip_serializing_if = $skip)]
                pub $field: $ty,
            )*
        }
    };
}

/// Login's `client_spec`: only meaningful for frps' internal ssh-tunnel client.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientSpec {
    #[serde(
        rename = "type",
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub client_type: String,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "is_false"
    )]
    pub always_auth_pass: bool,
}

/// The first message of a control connection (frpc → frps).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Login {
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub version: String,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub hostname: String,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub os: String,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub arch: String,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub user: String,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub privilege_key: String,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "is_zero_i64"
    )]
    pub timestamp: i64,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub run_id: String,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub client_id: String,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub metas: BTreeMap<String, String>,
    /// Always emitted, as Go's omitempty does not apply to structs.
    #[serde(default, deserialize_with = "null_default")]
    pub client_spec: ClientSpec,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "is_zero_i64"
    )]
    pub pool_count: i64,
}

go_struct! {
    /// frps' answer to Login, sent in the clear.
    pub struct LoginResp {
        version: String = "String::is_empty",
        run_id: String = "String::is_empty",
        error: String = "String::is_empty",
    }
}

go_struct! {
    /// Registers a proxy (frpc → frps, control).
    pub struct NewProxy {
        proxy_name: String = "String::is_empty",
        proxy_type: String = "String::is_empty",
        use_encryption: bool = "is_false",
        use_compression: bool = "is_false",
        bandwidth_limit: String = "String::is_empty",
        bandwidth_limit_mode: String = "String::is_empty",
        group: String = "String::is_empty",
        group_key: String = "String::is_empty",
        metas: BTreeMap<String, String> = "BTreeMap::is_empty",
        annotations: BTreeMap<String, String> = "BTreeMap::is_empty",
        remote_port: i64 = "is_zero_i64",
        custom_domains: Vec<String> = "Vec::is_empty",
        subdomain: String = "String::is_empty",
        locations: Vec<String> = "Vec::is_empty",
        http_user: String = "String::is_empty",
        http_pwd: String = "String::is_empty",
        host_header_rewrite: String = "String::is_empty",
        headers: BTreeMap<String, String> = "BTreeMap::is_empty",
        response_headers: BTreeMap<String, String> = "BTreeMap::is_empty",
        route_by_http_user: String = "String::is_empty",
        sk: String = "String::is_empty",
        allow_users: Vec<String> = "Vec::is_empty",
        multiplexer: String = "String::is_empty",
    }
}

go_struct! {
    /// frps' answer to NewProxy: the public address, or an error.
    pub struct NewProxyResp {
        proxy_name: String = "String::is_empty",
        remote_addr: String = "String::is_empty",
        error: String = "String::is_empty",
    }
}

go_struct! {
    /// Withdraws a proxy (frpc → frps). frps does not reply.
    pub struct CloseProxy {
        proxy_name: String = "String::is_empty",
    }
}

go_struct! {
    /// The first message of a work connection (frpc → frps).
    pub struct NewWorkConn {
        run_id: String = "String::is_empty",
        privilege_key: String = "String::is_empty",
        timestamp: i64 = "is_zero_i64",
    }
}

/// Asks frpc for one more work connection (frps → frpc, control). Always `{}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReqWorkConn {}

go_struct! {
    /// Tells frpc which proxy a work connection now serves, and who the user is.
    pub struct StartWorkConn {
        proxy_name: String = "String::is_empty",
        src_addr: String = "String::is_empty",
        dst_addr: String = "String::is_empty",
        src_port: u16 = "is_zero_u16",
        dst_port: u16 = "is_zero_u16",
        error: String = "String::is_empty",
    }
}

go_struct! {
    /// The first message of a visitor connection (stcp/sudp visitor frpc → frps).
    pub struct NewVisitorConn {
        run_id: String = "String::is_empty",
        proxy_name: String = "String::is_empty",
        sign_key: String = "String::is_empty",
        timestamp: i64 = "is_zero_i64",
        use_encryption: bool = "is_false",
        use_compression: bool = "is_false",
    }
}

go_struct! {
    /// frps' answer to NewVisitorConn.
    pub struct NewVisitorConnResp {
        proxy_name: String = "String::is_empty",
        error: String = "String::is_empty",
    }
}

go_struct! {
    /// Application heartbeat (frpc → frps), authenticated with the `HeartBeats` scope.
    pub struct Ping {
        privilege_key: String = "String::is_empty",
        timestamp: i64 = "is_zero_i64",
    }
}

go_struct! {
    /// Heartbeat answer (frps → frpc).
    pub struct Pong {
        error: String = "String::is_empty",
    }
}

/// Go's `net.UDPAddr` as `encoding/json` writes it: capitalised keys, `Zone` always present.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UdpAddr {
    #[serde(rename = "IP", default, deserialize_with = "null_default")]
    pub ip: String,
    #[serde(rename = "Port", default, deserialize_with = "null_default")]
    pub port: u16,
    #[serde(rename = "Zone", default, deserialize_with = "null_default")]
    pub zone: String,
}

impl From<std::net::SocketAddr> for UdpAddr {
    /// Go's spelling: IPv4 (also IPv4-mapped IPv6) as dotted quad, IPv6 with its scope id as
    /// `Zone`.
    fn from(a: std::net::SocketAddr) -> Self {
        let (ip, zone) = match a {
            std::net::SocketAddr::V4(v4) => (v4.ip().to_string(), String::new()),
            std::net::SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
                Some(v4) => (v4.to_string(), String::new()),
                None if v6.scope_id() != 0 => (v6.ip().to_string(), v6.scope_id().to_string()),
                None => (v6.ip().to_string(), String::new()),
            },
        };
        UdpAddr {
            ip,
            port: a.port(),
            zone,
        }
    }
}

impl UdpAddr {
    /// The socket address, or `None` when `IP` does not parse. A non-numeric `Zone` (an
    /// interface name) is dropped.
    pub fn to_socket_addr(&self) -> Option<std::net::SocketAddr> {
        let ip: std::net::IpAddr = self.ip.parse().ok()?;
        Some(match ip {
            std::net::IpAddr::V4(v4) => std::net::SocketAddr::from((v4, self.port)),
            std::net::IpAddr::V6(v6) => std::net::SocketAddr::V6(std::net::SocketAddrV6::new(
                v6,
                self.port,
                0,
                self.zone.parse().unwrap_or(0),
            )),
        })
    }
}

/// One datagram on a UDP proxy's work connection. `c` is the payload as padded std base64.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UdpPacket {
    #[serde(
        rename = "c",
        default,
        with = "base64_bytes",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub content: Vec<u8>,
    #[serde(rename = "l", default, skip_serializing_if = "Option::is_none")]
    pub local_addr: Option<UdpAddr>,
    #[serde(rename = "r", default, skip_serializing_if = "Option::is_none")]
    pub remote_addr: Option<UdpAddr>,
}

impl UdpPacket {
    /// A datagram that `from` sent (or that goes back to it), as frp fills it: payload and
    /// remote address, no local address.
    pub fn for_remote(content: &[u8], from: std::net::SocketAddr) -> UdpPacket {
        UdpPacket {
            content: content.to_vec(),
            local_addr: None,
            remote_addr: Some(from.into()),
        }
    }
}

pub(crate) mod base64_bytes {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(Vec::new()),
            Some(s) => STANDARD
                .decode(s.as_bytes())
                .map_err(serde::de::Error::custom),
        }
    }
}

go_struct! {
    /// XTCP: the visitor asks frps to arrange a hole punch.
    pub struct NatHoleVisitor {
        transaction_id: String = "String::is_empty",
        proxy_name: String = "String::is_empty",
        pre_check: bool = "is_false",
        protocol: String = "String::is_empty",
        sign_key: String = "String::is_empty",
        timestamp: i64 = "is_zero_i64",
        mapped_addrs: Vec<String> = "Vec::is_empty",
        assisted_addrs: Vec<String> = "Vec::is_empty",
    }
}

go_struct! {
    /// XTCP: the proxy owner's side of the hole punch.
    pub struct NatHoleClient {
        transaction_id: String = "String::is_empty",
        proxy_name: String = "String::is_empty",
        sid: String = "String::is_empty",
        mapped_addrs: Vec<String> = "Vec::is_empty",
        assisted_addrs: Vec<String> = "Vec::is_empty",
    }
}

go_struct! {
    /// A port range in a hole-punch plan.
    pub struct PortsRange {
        from: i64 = "is_zero_i64",
        to: i64 = "is_zero_i64",
    }
}

go_struct! {
    /// How one side should punch (`read_timeout` is in milliseconds despite its name).
    pub struct NatHoleDetectBehavior {
        role: String = "String::is_empty",
        mode: i64 = "is_zero_i64",
        ttl: i64 = "is_zero_i64",
        send_delay_ms: i64 = "is_zero_i64",
        read_timeout: i64 = "is_zero_i64",
        candidate_ports: Vec<PortsRange> = "Vec::is_empty",
        send_random_ports: i64 = "is_zero_i64",
        listen_random_ports: i64 = "is_zero_i64",
    }
}

/// XTCP: frps' hole-punch plan for one side. `detect_behavior` is always emitted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatHoleResp {
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub transaction_id: String,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub sid: String,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub protocol: String,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub candidate_addrs: Vec<String>,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub assisted_addrs: Vec<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub detect_behavior: NatHoleDetectBehavior,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub error: String,
}

go_struct! {
    /// XTCP: the session id, on a work connection and inside punch datagrams.
    pub struct NatHoleSid {
        transaction_id: String = "String::is_empty",
        sid: String = "String::is_empty",
        response: bool = "is_false",
        nonce: String = "String::is_empty",
    }
}

go_struct! {
    /// XTCP: the owner reports whether the punch worked.
    pub struct NatHoleReport {
        sid: String = "String::is_empty",
        success: bool = "is_false",
    }
}

macro_rules! messages {
    ($( $variant:ident($ty:ty) = $byte:literal, $id:literal; )*) => {
        /// Every frp message.
        // NewProxy is large, but messages are short-lived control-plane values; boxing it
        // would only complicate every match.
        #[allow(clippy::large_enum_variant)]
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum Message {
            $( $variant($ty), )*
        }

        impl Message {
            /// The v1 type byte (an ASCII character).
            pub fn type_byte(&self) -> u8 {
                match self { $( Message::$variant(_) => $byte, )* }
            }

            /// The v2 message type id.
            pub fn type_id(&self) -> u16 {
                match self { $( Message::$variant(_) => $id, )* }
            }

            /// The message's name as frp's Go type is called (for logs and errors).
            pub fn name(&self) -> &'static str {
                match self { $( Message::$variant(_) => stringify!($variant), )* }
            }

            /// The JSON body, as Go would write it.
            pub fn to_json(&self) -> Vec<u8> {
                // Serialising these plain structs cannot fail.
                match self {
                    $( Message::$variant(m) => serde_json::to_vec(m).expect("serialisable"), )*
                }
            }

            /// Decodes a JSON body given its v1 type byte.
            pub fn from_json(type_byte: u8, body: &[u8]) -> Result<Message, CodecError> {
                match type_byte {
                    $( $byte => parse_body::<$ty>(stringify!($variant), body).map(Message::$variant), )*
                    other => Err(CodecError::UnknownType(other, other as char)),
                }
            }

            /// Decodes a JSON body given its v2 type id.
            pub fn from_json_v2(type_id: u16, body: &[u8]) -> Result<Message, CodecError> {
                match type_id {
                    $( $id => parse_body::<$ty>(stringify!($variant), body).map(Message::$variant), )*
                    other => Err(CodecError::UnknownType((other & 0xff) as u8, '?')),
                }
            }
        }

        $(
            impl From<$ty> for Message {
                fn from(m: $ty) -> Message { Message::$variant(m) }
            }
        )*
    };
}

messages! {
    Login(Login) = b'o', 1;
    LoginResp(LoginResp) = b'1', 2;
    NewProxy(NewProxy) = b'p', 3;
    NewProxyResp(NewProxyResp) = b'2', 4;
    CloseProxy(CloseProxy) = b'c', 5;
    NewWorkConn(NewWorkConn) = b'w', 6;
    ReqWorkConn(ReqWorkConn) = b'r', 7;
    StartWorkConn(StartWorkConn) = b's', 8;
    NewVisitorConn(NewVisitorConn) = b'v', 9;
    NewVisitorConnResp(NewVisitorConnResp) = b'3', 10;
    Ping(Ping) = b'h', 11;
    Pong(Pong) = b'4', 12;
    UdpPacket(UdpPacket) = b'u', 13;
    NatHoleVisitor(NatHoleVisitor) = b'i', 14;
    NatHoleClient(NatHoleClient) = b'n', 15;
    NatHoleResp(NatHoleResp) = b'm', 16;
    NatHoleSid(NatHoleSid) = b'5', 17;
    NatHoleReport(NatHoleReport) = b'6', 18;
}

fn parse_body<T: DeserializeOwned>(kind: &'static str, body: &[u8]) -> Result<T, CodecError> {
    serde_json::from_slice(body).map_err(|e| CodecError::BadJson {
        kind,
        reason: e.to_string(),
    })
}

/// Whether `b` is the type byte of a frp message.
pub fn is_v1_type(b: u8) -> bool {
    matches!(
        b,
        b'o' | b'1'
            | b'p'
            | b'2'
            | b'c'
            | b'w'
            | b'r'
            | b's'
            | b'v'
            | b'3'
            | b'h'
            | b'4'
            | b'u'
            | b'i'
            | b'n'
            | b'm'
            | b'5'
            | b'6'
    )
}

/// Encodes one message as a v1 frame, appending it to `out`.
pub fn encode_v1_into(msg: &Message, out: &mut Vec<u8>) {
    let body = msg.to_json();
    out.reserve(V1_HEADER_LEN + body.len());
    out.push(msg.type_byte());
    out.extend_from_slice(&(body.len() as i64).to_be_bytes());
    out.extend_from_slice(&body);
}

/// Encodes one message as a v1 frame.
pub fn encode_v1(msg: &Message) -> Vec<u8> {
    let mut out = Vec::new();
    encode_v1_into(msg, &mut out);
    out
}

/// Parses a v1 frame header: the type byte and the body length, checked against the limit.
pub fn parse_v1_header(h: &[u8; V1_HEADER_LEN]) -> Result<(u8, usize), CodecError> {
    let ty = h[0];
    if !is_v1_type(ty) {
        return Err(CodecError::UnknownType(ty, ty as char));
    }
    let len = i64::from_be_bytes(h[1..9].try_into().expect("8 bytes"));
    if len < 0 {
        return Err(CodecError::NegativeLength(len));
    }
    if len > V1_MAX_BODY as i64 {
        return Err(CodecError::TooLong(len));
    }
    Ok((ty, len as usize))
}

/// Empties a decoder's buffer once every byte in it was consumed. A small one is freed, not
/// kept: an idle control (thousands per frps) then holds no decode buffer between its
/// messages; a large one (bulk UDP over a work connection) is kept for the next read.
pub(crate) fn release_consumed(buf: &mut Vec<u8>) {
    const KEEP_ABOVE: usize = 4 * 1024;
    if buf.capacity() > KEEP_ABOVE {
        buf.clear();
    } else {
        *buf = Vec::new();
    }
}

/// Sans-IO v1 decoder: push bytes with [`V1Decoder::feed`], pull messages with
/// [`V1Decoder::next_message`]. Holds at most one frame's worth of bytes beyond what the caller
/// has not yet pulled; a bad header fails before its body is awaited.
#[derive(Debug, Default)]
pub struct V1Decoder {
    buf: Vec<u8>,
    pos: usize,
}

impl V1Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends received bytes.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete message, `Ok(None)` if more bytes are needed.
    pub fn next_message(&mut self) -> Result<Option<Message>, CodecError> {
        let avail = &self.buf[self.pos..];
        if avail.len() < V1_HEADER_LEN {
            return Ok(None);
        }
        let header: &[u8; V1_HEADER_LEN] = avail[..V1_HEADER_LEN].try_into().expect("9 bytes");
        let (ty, len) = parse_v1_header(header)?;
        if avail.len() < V1_HEADER_LEN + len {
            return Ok(None);
        }
        let msg = Message::from_json(ty, &avail[V1_HEADER_LEN..V1_HEADER_LEN + len])?;
        self.pos += V1_HEADER_LEN + len;
        if self.pos == self.buf.len() {
            release_consumed(&mut self.buf);
            self.pos = 0;
        } else if self.pos > 64 * 1024 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        Ok(Some(msg))
    }

    /// Bytes received but not part of any message returned so far (e.g. proxied data that
    /// followed StartWorkConn in the same read). Empties the decoder.
    pub fn take_remaining(&mut self) -> Vec<u8> {
        let rest = self.buf.split_off(self.pos);
        self.buf.clear();
        self.pos = 0;
        rest
    }

    /// Bytes of buffer memory held.
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.buf.capacity()
    }

    /// Number of buffered bytes not yet returned as messages.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn go_login() -> Login {
        Login {
            version: "0.70.1".into(),
            hostname: "h".into(),
            os: "linux".into(),
            arch: "amd64".into(),
            privilege_key: "3d8aac6cc09d79da303be74c311e5808".into(),
            timestamp: 1700000000,
            pool_count: 1,
            ..Default::default()
        }
    }

    #[test]
    fn login_matches_go_bytes() {
        // spec §3.5, real Go output
        let want = b"o\x00\x00\x00\x00\x00\x00\x00\xa9{\"version\":\"0.70.1\",\"hostname\":\"h\",\"os\":\"linux\",\"arch\":\"amd64\",\"privilege_key\":\"3d8aac6cc09d79da303be74c311e5808\",\"timestamp\":1700000000,\"client_spec\":{},\"pool_count\":1}";
        assert_eq!(encode_v1(&go_login().into()), want.to_vec());
    }

    #[test]
    fn start_work_conn_and_udp_packet_match_go_bytes() {
        let swc = StartWorkConn {
            proxy_name: "ssh".into(),
            src_addr: "1.2.3.4".into(),
            dst_addr: "0.0.0.0".into(),
            src_port: 5555,
            dst_port: 6000,
            error: String::new(),
        };
        let mut want = vec![b's', 0, 0, 0, 0, 0, 0, 0, b'^'];
        want.extend_from_slice(br#"{"proxy_name":"ssh","src_addr":"1.2.3.4","dst_addr":"0.0.0.0","src_port":5555,"dst_port":6000}"#);
        assert_eq!(encode_v1(&swc.into()), want);

        let pkt = UdpPacket {
            content: b"hi".to_vec(),
            local_addr: None,
            remote_addr: Some(UdpAddr {
                ip: "1.2.3.4".into(),
                port: 5678,
                zone: String::new(),
            }),
        };
        let mut want = vec![b'u', 0, 0, 0, 0, 0, 0, 0, b'7'];
        want.extend_from_slice(br#"{"c":"aGk=","r":{"IP":"1.2.3.4","Port":5678,"Zone":""}}"#);
        assert_eq!(encode_v1(&pkt.clone().into()), want);
        let mut d = V1Decoder::new();
        d.feed(&want);
        assert_eq!(d.next_message().unwrap(), Some(Message::UdpPacket(pkt)));
    }

    #[test]
    fn ping_vector() {
        assert_eq!(
            encode_v1(&Ping::default().into()),
            hex::decode("6800000000000000027b7d").unwrap()
        );
        assert_eq!(
            encode_v1(&ReqWorkConn {}.into()),
            b"r\0\0\0\0\0\0\0\x02{}".to_vec()
        );
    }

    #[test]
    fn nat_hole_resp_always_has_detect_behavior() {
        let json =
            String::from_utf8(Message::NatHoleResp(NatHoleResp::default()).to_json()).unwrap();
        assert_eq!(json, r#"{"detect_behavior":{}}"#);
    }

    #[test]
    fn decoder_handles_every_split_point() {
        let mut stream = Vec::new();
        let msgs: Vec<Message> = vec![
            go_login().into(),
            NewProxy {
                proxy_name: "a".into(),
                proxy_type: "tcp".into(),
                remote_port: 6000,
                ..Default::default()
            }
            .into(),
            Ping::default().into(),
        ];
        for m in &msgs {
            encode_v1_into(m, &mut stream);
        }
        stream.extend_from_slice(b"trailing raw bytes");
        for split in 0..stream.len() {
            let mut d = V1Decoder::new();
            let mut got = Vec::new();
            for part in [&stream[..split], &stream[split..]] {
                d.feed(part);
                while got.len() < msgs.len() {
                    match d.next_message().unwrap() {
                        Some(m) => got.push(m),
                        None => break,
                    }
                }
            }
            assert_eq!(got, msgs, "split at {split}");
            assert_eq!(d.take_remaining(), b"trailing raw bytes");
        }
    }

    #[test]
    fn decoder_rejects_bad_headers_before_the_body() {
        let mut d = V1Decoder::new();
        d.feed(&[b'o', 0, 0, 0, 0, 0, 0, 0x28, 0x01]); // 10241 bytes
        assert_eq!(d.next_message(), Err(CodecError::TooLong(10241)));

        let mut d = V1Decoder::new();
        d.feed(&[b'o', 0, 0, 0x01, 0, 0, 0, 0, 0]); // 2^40
        assert!(matches!(d.next_message(), Err(CodecError::TooLong(_))));

        let mut d = V1Decoder::new();
        d.feed(&[b'o', 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(d.next_message(), Err(CodecError::NegativeLength(-1)));

        let mut d = V1Decoder::new();
        d.feed(b"GET / HTTP/1.1\r\n");
        assert_eq!(d.next_message(), Err(CodecError::UnknownType(b'G', 'G')));

        let mut d = V1Decoder::new();
        d.feed(b"o\0\0\0\0\0\0\0\x03{x}");
        assert!(matches!(
            d.next_message(),
            Err(CodecError::BadJson { kind: "Login", .. })
        ));
    }

    #[test]
    fn decoding_is_lenient_like_go() {
        let body = br#"{"proxy_name":"x","remote_port":7,"custom_domains":null,"metas":null,"unknown":[1,2]}"#;
        let m = Message::from_json(b'p', body).unwrap();
        let Message::NewProxy(p) = m else {
            panic!("wrong type")
        };
        assert_eq!(p.proxy_name, "x");
        assert_eq!(p.remote_port, 7);
        assert!(p.custom_domains.is_empty());
    }

    #[test]
    fn maps_are_sorted_like_go() {
        let mut metas = BTreeMap::new();
        metas.insert("z".to_string(), "1".to_string());
        metas.insert("a".to_string(), "2".to_string());
        let p = NewProxy {
            proxy_name: "p".into(),
            metas,
            ..Default::default()
        };
        let json = String::from_utf8(Message::NewProxy(p).to_json()).unwrap();
        assert_eq!(json, r#"{"proxy_name":"p","metas":{"a":"2","z":"1"}}"#);
    }
}
