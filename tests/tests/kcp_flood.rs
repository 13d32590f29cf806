//! A flood of KCP "open" datagrams (the first datagram a client sends, from a new source port
//! each time, as from spoofed sources) against frps' `kcpBindPort` (issue 13, item 2): frps'
//! memory stays bounded during the flood and comes back afterwards, its log gets a bounded
//! number of warnings, and a real frpc over KCP keeps working and can log in meanwhile.

use std::time::{Duration, Instant};

use e2e::*;

const TOKEN: &str = "e2e-token";
/// The flood: this many opens (one per source port) at about `RATE` a second.
const OPENS: usize = 3200;
const RATE: usize = 400;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// What a kcp-go client's first write puts on the wire: FEC data header (seqid 0, type 0xf1,
/// size), then one KCP push (cmd 81) with sn 0 carrying 38 bytes. 70 bytes.
fn open_datagram(conv: u32) -> Vec<u8> {
    let body = [0u8; 38];
    let mut kcp = Vec::new();
    kcp.extend_from_slice(&conv.to_le_bytes());
    kcp.extend_from_slice(&[81, 0]); // cmd push, frg 0
    kcp.extend_from_slice(&1024u16.to_le_bytes()); // wnd
    kcp.extend_from_slice(&0u32.to_le_bytes()); // ts
    kcp.extend_from_slice(&0u32.to_le_bytes()); // sn
    kcp.extend_from_slice(&0u32.to_le_bytes()); // una
    kcp.extend_from_slice(&(body.len() as u32).to_le_bytes());
    kcp.extend_from_slice(&body);
    let mut p = Vec::new();
    p.extend_from_slice(&0u32.to_le_bytes());
    p.extend_from_slice(&0xf1u16.to_le_bytes());
    p.extend_from_slice(&((kcp.len() + 2) as u16).to_le_bytes());
    p.extend_from_slice(&kcp);
    assert_eq!(p.len(), 70);
    p
}

fn frpc_kcp_config(name: &str, kcp: u16, local: u16, remote: u16) -> String {
    let head = frpc_proxy_config(
        kcp,
        TOKEN,
        "transport.protocol = \"kcp\"",
        name,
        "tcp",
        local,
    );
    format!("{head}remotePort = {remote}\n")
}

fn warnings(log: &str) -> usize {
    log.lines().filter(|l| l.contains(" [W] ")).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kcp_open_flood_memory_is_bounded_and_returns() {
    let env = Env::new();
    let echo = echo_server().await;
    let kcp = free_port();
    let frps = env.frps(
        "frps",
        free_port(),
        &format!("auth.token = \"{TOKEN}\"\nkcpBindPort = {kcp}"),
    );
    frps.wait_log(
        &format!("frps kcp listen on udp 127.0.0.1:{kcp}"),
        Duration::from_secs(5),
    );
    let remote1 = free_port();
    let frpc1 = env.frpc("frpc1", &frpc_kcp_config("one", kcp, echo, remote1));
    frpc1.wait_log("[one] start proxy success", Duration::from_secs(15));
    roundtrip_eventually(remote1, b"before the flood", Duration::from_secs(10)).await;
    let pid = frps.pid();
    let baseline = rss_kib(pid);
    let warned_before = warnings(&frps.log_text());

    // The flood, from a thread of its own; the peak RSS is sampled meanwhile.
    let flood = std::thread::spawn(move || {
        let start = Instant::now();
        for i in 0..OPENS {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let _ = s.send_to(&open_datagram(0x1000_0000 + i as u32), ("127.0.0.1", kcp));
            let due = start + Duration::from_secs_f64((i + 1) as f64 / RATE as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
    });
    let mut peak = baseline;
    // A real client logs in over KCP during the flood, and the tunnel logged in before it
    // keeps working.
    let remote2 = free_port();
    let frpc2 = env.frpc("frpc2", &frpc_kcp_config("two", kcp, echo, remote2));
    let mut during_ok = false;
    while !flood.is_finished() {
        peak = peak.max(rss_kib(pid));
        if !during_ok {
            let r = tokio::time::timeout(
                Duration::from_secs(5),
                roundtrip(remote1, b"during the flood"),
            )
            .await;
            during_ok = matches!(r, Ok(Ok(got)) if got == b"during the flood");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    flood.join().unwrap();
    peak = peak.max(rss_kib(pid));
    frpc2.wait_log("[two] start proxy success", Duration::from_secs(30));
    assert!(during_ok, "the tunnel did not work during the flood");
    roundtrip_eventually(remote1, b"after the flood", Duration::from_secs(10)).await;
    roundtrip_eventually(remote2, b"logged in during it", Duration::from_secs(10)).await;

    // frp itself ends at ~36 MB for this flood; before the fix frps grew by ~800 MB.
    let grew = peak.saturating_sub(baseline);
    assert!(
        grew < 100 * 1024,
        "RSS grew by {} MiB during the flood ({baseline} KiB before)",
        grew / 1024
    );
    // Once the half-open sessions have timed out, the memory is given back.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut now = rss_kib(pid);
    while now > baseline + 12 * 1024 {
        assert!(
            Instant::now() < deadline,
            "RSS still {now} KiB 60 s after the flood (baseline {baseline} KiB, peak {peak} KiB)"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        now = rss_kib(pid);
    }
    // A bounded number of warnings, not one (or two) per datagram: the budget is a burst
    // of 20 then 1 a second, per kind of line.
    let warned = warnings(&frps.log_text()) - warned_before;
    assert!(
        warned < 150,
        "{warned} warning lines for {OPENS} datagrams:\n{}",
        frps.log_text()
    );
    eprintln!(
        "kcp open flood: RSS {baseline} KiB before, peak {peak} KiB, {now} KiB after; {warned} warning lines for {OPENS} datagrams"
    );
    assert!(frps.log_text().contains("suppressed"));
}
