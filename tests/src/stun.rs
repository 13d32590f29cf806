//! A small STUN server for the xtcp tests (RFC 5389 Binding with RFC 5780's OTHER-ADDRESS).
//!
//! frpc's NAT discovery (frp's `nathole.Discover`) sends a Binding request to
//! `natHoleStunServer`, reads the mapped address (XOR-MAPPED-ADDRESS, else MAPPED-ADDRESS)
//! and, when the answer names an OTHER-ADDRESS (or RFC 3489's CHANGED-ADDRESS), asks that
//! address too: two mapped addresses, from which frps classifies the NAT. [`StunServer`]
//! listens on two UDP ports of one IP and answers on both, each naming the other as
//! OTHER-ADDRESS, so a client that is not behind a NAT discovers the same address twice
//! (frp: `EasyNAT`, `BehaviorNoChange`).
//!
//! [`StunMode`] makes it misbehave for the bad-input tests: answer garbage, answer nothing,
//! or leave OTHER-ADDRESS out (one mapped address only). The codec is `stun_codec`'s; the
//! server runs on two plain threads, so it works from sync and async tests alike, and stops
//! when dropped.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use bytecodec::{DecodeExt, EncodeExt};
use stun_codec::rfc5389::attributes::{MappedAddress, Software, XorMappedAddress};
use stun_codec::rfc5389::methods::BINDING;
use stun_codec::rfc5780::attributes::{OtherAddress, ResponseOrigin};
use stun_codec::{Message, MessageClass, MessageDecoder, MessageEncoder, TransactionId};

stun_codec::define_attribute_enums!(
    Attr,
    AttrDecoder,
    AttrEncoder,
    [
        MappedAddress,
        XorMappedAddress,
        Software,
        OtherAddress,
        ResponseOrigin
    ]
);

/// How the server answers Binding requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StunMode {
    /// Binding success with XOR-MAPPED-ADDRESS, MAPPED-ADDRESS, OTHER-ADDRESS and
    /// RESPONSE-ORIGIN.
    Normal,
    /// As `Normal` but without OTHER-ADDRESS: a client learns one mapped address only.
    NoOtherAddress,
    /// Random bytes that are no STUN message.
    Garbage,
    /// Reads requests and never answers.
    Silent,
}

/// A running STUN server; stops (and frees its ports) when dropped.
pub struct StunServer {
    primary: SocketAddr,
    other: SocketAddr,
    requests: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl StunServer {
    /// A well-behaved server on two OS-assigned ports of 127.0.0.1.
    pub fn start() -> StunServer {
        Self::start_with(IpAddr::V4(Ipv4Addr::LOCALHOST), StunMode::Normal)
    }

    /// A server on `127.0.0.1` answering as `mode` says.
    pub fn start_mode(mode: StunMode) -> StunServer {
        Self::start_with(IpAddr::V4(Ipv4Addr::LOCALHOST), mode)
    }

    /// A server on two OS-assigned ports of `ip` answering as `mode` says.
    pub fn start_with(ip: IpAddr, mode: StunMode) -> StunServer {
        let a = UdpSocket::bind((ip, 0)).expect("bind STUN primary port");
        let b = UdpSocket::bind((ip, 0)).expect("bind STUN other port");
        let primary = a.local_addr().expect("STUN primary addr");
        let other = b.local_addr().expect("STUN other addr");
        let requests = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let threads = [(a, other), (b, primary)]
            .into_iter()
            .map(|(sock, peer)| {
                let (requests, stop) = (requests.clone(), stop.clone());
                std::thread::spawn(move || serve(sock, peer, mode, &requests, &stop))
            })
            .collect();
        StunServer {
            primary,
            other,
            requests,
            stop,
            threads,
        }
    }

    /// The address to give frpc as `natHoleStunServer`.
    pub fn addr(&self) -> SocketAddr {
        self.primary
    }

    /// The second port, announced as OTHER-ADDRESS.
    pub fn other_addr(&self) -> SocketAddr {
        self.other
    }

    /// How many datagrams the server has received on both ports.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for StunServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn serve(
    sock: UdpSocket,
    other: SocketAddr,
    mode: StunMode,
    requests: &AtomicUsize,
    stop: &AtomicBool,
) {
    let local = sock.local_addr().expect("STUN local addr");
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .expect("STUN read timeout");
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::SeqCst) {
        let Ok((n, from)) = sock.recv_from(&mut buf) else {
            continue;
        };
        requests.fetch_add(1, Ordering::SeqCst);
        let answer = match mode {
            StunMode::Silent => continue,
            StunMode::Garbage => {
                let mut junk = vec![0u8; 64];
                rand::fill(&mut junk[..]);
                // Not even a STUN header: the first two bits of a STUN message are zero.
                junk[0] |= 0xC0;
                Some(junk)
            }
            StunMode::Normal | StunMode::NoOtherAddress => {
                let with_other = (mode == StunMode::Normal).then_some(other);
                binding_response(&buf[..n], from, local, with_other)
            }
        };
        if let Some(a) = answer {
            let _ = sock.send_to(&a, from);
        }
    }
}

/// The success response to a Binding request in `req` from `from`; `None` for anything else.
fn binding_response(
    req: &[u8],
    from: SocketAddr,
    local: SocketAddr,
    other: Option<SocketAddr>,
) -> Option<Vec<u8>> {
    let mut decoder = MessageDecoder::<Attr>::new();
    let req = decoder.decode_from_bytes(req).ok()?.ok()?;
    if req.class() != MessageClass::Request || req.method() != BINDING {
        return None;
    }
    let mut resp =
        Message::<Attr>::new(MessageClass::SuccessResponse, BINDING, req.transaction_id());
    resp.add_attribute(XorMappedAddress::new(from));
    resp.add_attribute(MappedAddress::new(from));
    if let Some(o) = other {
        resp.add_attribute(OtherAddress::new(o));
    }
    resp.add_attribute(ResponseOrigin::new(local));
    resp.add_attribute(Software::new("frp-uring e2e".into()).ok()?);
    MessageEncoder::new().encode_into_bytes(resp).ok()
}

/// What a Binding request to `server` from `sock` returned: (XOR-MAPPED-ADDRESS,
/// OTHER-ADDRESS). For tests of the server itself and of clients' expectations.
pub fn binding(
    sock: &UdpSocket,
    server: SocketAddr,
) -> Result<(SocketAddr, Option<SocketAddr>), String> {
    let mut id = [0u8; 12];
    rand::fill(&mut id[..]);
    let req = Message::<Attr>::new(MessageClass::Request, BINDING, TransactionId::new(id));
    let bytes = MessageEncoder::new()
        .encode_into_bytes(req)
        .map_err(|e| e.to_string())?;
    sock.send_to(&bytes, server).map_err(|e| e.to_string())?;
    let mut buf = [0u8; 2048];
    let (n, _) = sock.recv_from(&mut buf).map_err(|e| e.to_string())?;
    let resp = MessageDecoder::<Attr>::new()
        .decode_from_bytes(&buf[..n])
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("broken STUN message: {:?}", e.error()))?;
    if resp.transaction_id().as_bytes() != &id {
        return Err("transaction id mismatch".into());
    }
    let mapped = resp
        .get_attribute::<XorMappedAddress>()
        .map(|a| a.address())
        .ok_or("no XOR-MAPPED-ADDRESS")?;
    let other = resp.get_attribute::<OtherAddress>().map(|a| a.address());
    Ok((mapped, other))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> UdpSocket {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        s
    }

    #[test]
    fn answers_with_the_mapped_and_the_other_address() {
        let srv = StunServer::start();
        let c = client();
        let me = c.local_addr().unwrap();
        assert_eq!(
            binding(&c, srv.addr()).unwrap(),
            (me, Some(srv.other_addr()))
        );
        // The other port answers too and names the primary one.
        assert_eq!(
            binding(&c, srv.other_addr()).unwrap(),
            (me, Some(srv.addr()))
        );
        assert_eq!(srv.requests(), 2);
    }

    #[test]
    fn misbehaving_modes() {
        let c = client();
        let srv = StunServer::start_mode(StunMode::NoOtherAddress);
        assert_eq!(
            binding(&c, srv.addr()).unwrap(),
            (c.local_addr().unwrap(), None)
        );
        let srv = StunServer::start_mode(StunMode::Garbage);
        assert!(binding(&c, srv.addr()).is_err());
        let srv = StunServer::start_mode(StunMode::Silent);
        assert!(binding(&c, srv.addr()).is_err());
        assert_eq!(srv.requests(), 1);
    }

    #[test]
    fn ignores_what_is_not_a_binding_request() {
        let srv = StunServer::start();
        let c = client();
        c.send_to(b"hello", srv.addr()).unwrap();
        let mut buf = [0u8; 64];
        assert!(c.recv_from(&mut buf).is_err(), "no answer to garbage");
        // Still serving.
        assert!(binding(&c, srv.addr()).is_ok());
    }
}
