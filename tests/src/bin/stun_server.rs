//! The tests' STUN server as a process, for scripts/bench-xtcp.sh: serves Binding requests on
//! two OS-assigned UDP ports of the address given (default 127.0.0.1), prints the primary
//! address (give it to frpc as `natHoleStunServer`) on its first line, and runs until killed.
//!
//! ```text
//! target/release/stun_server [IP]
//! ```

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};

use e2e::stun::{StunMode, StunServer};

fn main() {
    let ip: IpAddr = match std::env::args().nth(1) {
        Some(a) => a.parse().unwrap_or_else(|e| {
            eprintln!("stun_server: bad IP {a:?}: {e}");
            std::process::exit(2)
        }),
        None => IpAddr::V4(Ipv4Addr::LOCALHOST),
    };
    let server = StunServer::start_with(ip, StunMode::Normal);
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{}", server.addr());
    let _ = out.flush();
    loop {
        std::thread::park();
    }
}
