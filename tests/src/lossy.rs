//! A lossy, slow path for the UDP transports (KCP, QUIC), on 127.0.0.1 only.
//!
//! The preferred impairment is the kernel's: `tc qdisc add dev lo root netem loss 2% delay
//! 20ms` inside a private network namespace ([`Netem`]). Kernels built without `sch_netem`
//! (`# CONFIG_NET_SCH_NETEM is not set`, as on this project's CI machines) cannot do that, and
//! non-root users cannot create namespaces at all; there [`LossyLink`] does the same in user
//! space: a UDP forwarder that drops each datagram with a fixed probability and delivers the
//! rest after a fixed delay, in both directions. Both keep traffic on loopback.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Counters of a [`LossyLink`], both directions together.
#[derive(Debug, Default)]
pub struct LinkStats {
    pub forwarded: AtomicU64,
    pub dropped: AtomicU64,
}

impl LinkStats {
    pub fn forwarded(&self) -> u64 {
        self.forwarded.load(Ordering::Relaxed)
    }
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// A user-space lossy UDP link: datagrams sent to `127.0.0.1:port` go to `upstream`, replies
/// come back, each direction losing `loss` of the datagrams and delaying the others by
/// `delay`. Every client address gets its own upstream socket, so the server sees one peer
/// per client, as it would without the link. Stops when dropped.
pub struct LossyLink {
    pub port: u16,
    pub stats: Arc<LinkStats>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for LossyLink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// xorshift64*: a deterministic, seedable coin for the drops (the same seed loses the same
/// datagrams, so a failure can be replayed).
struct Coin(u64);

impl Coin {
    fn lose(&mut self, p: f64) -> bool {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        ((x >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

/// Datagrams waiting out the delay, in arrival order (a constant delay keeps them ordered).
type Delayed = mpsc::UnboundedSender<(Instant, Vec<u8>)>;

/// Sends each queued datagram at its due time through `send`.
fn delay_line<F>(send: F) -> Delayed
where
    F: Fn(Vec<u8>) -> Option<tokio::task::JoinHandle<()>> + Send + 'static,
{
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    tokio::spawn(async move {
        while let Some((due, d)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if let Some(h) = send(d) {
                let _ = h.await;
            }
        }
    });
    tx
}

/// The upstream socket of one client: returns the delay line towards upstream and starts the
/// way back (its own coin and delay line) towards `from`.
async fn open_peer(
    front: &Arc<UdpSocket>,
    from: SocketAddr,
    upstream: SocketAddr,
    mut back_coin: Coin,
    loss: f64,
    delay: Duration,
    st: &Arc<LinkStats>,
) -> Option<Delayed> {
    let up = UdpSocket::bind("127.0.0.1:0").await.ok()?;
    up.connect(upstream).await.ok()?;
    let up = Arc::new(up);
    let back = {
        let front = front.clone();
        delay_line(move |d| {
            let front = front.clone();
            Some(tokio::spawn(async move {
                let _ = front.send_to(&d, from).await;
            }))
        })
    };
    let (up_r, st2) = (up.clone(), st.clone());
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = up_r.recv(&mut buf).await {
            if back_coin.lose(loss) {
                st2.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            st2.forwarded.fetch_add(1, Ordering::Relaxed);
            if back
                .send((Instant::now() + delay, buf[..n].to_vec()))
                .is_err()
            {
                return;
            }
        }
    });
    Some(delay_line(move |d| {
        let up = up.clone();
        Some(tokio::spawn(async move {
            let _ = up.send(&d).await;
        }))
    }))
}

impl LossyLink {
    /// Starts the link on `127.0.0.1:listen_port` (0: any free port) towards `upstream`.
    pub async fn start(
        listen_port: u16,
        upstream: SocketAddr,
        loss: f64,
        delay: Duration,
        seed: u64,
    ) -> std::io::Result<LossyLink> {
        let front = Arc::new(UdpSocket::bind(("127.0.0.1", listen_port)).await?);
        let port = front.local_addr()?.port();
        let stats = Arc::new(LinkStats::default());
        let st = stats.clone();
        let task = tokio::spawn(async move {
            let mut coin = Coin(seed | 1);
            // client address → the delay line towards upstream through its own socket
            let mut peers: HashMap<SocketAddr, Delayed> = HashMap::new();
            let mut buf = vec![0u8; 65536];
            loop {
                let Ok((n, from)) = front.recv_from(&mut buf).await else {
                    return;
                };
                if let Entry::Vacant(v) = peers.entry(from) {
                    let back_coin = Coin(coin.0.rotate_left(17) | 1);
                    let Some(fwd) =
                        open_peer(&front, from, upstream, back_coin, loss, delay, &st).await
                    else {
                        continue;
                    };
                    v.insert(fwd);
                }
                if coin.lose(loss) {
                    st.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                st.forwarded.fetch_add(1, Ordering::Relaxed);
                let _ = peers[&from].send((Instant::now() + delay, buf[..n].to_vec()));
            }
        });
        Ok(LossyLink { port, stats, task })
    }
}

/// A private network namespace whose loopback has `tc netem loss … delay …`. Processes run in
/// it with [`Netem::command`]; it is deleted on drop.
pub struct Netem {
    pub name: String,
}

impl Netem {
    /// Creates the namespace and its impaired loopback, or says why it cannot (not root, no
    /// `ip`/`tc`, a kernel without `sch_netem`).
    pub fn create(loss_pct: f64, delay: Duration) -> Result<Netem, String> {
        let name = format!("frp-lossy-{}", std::process::id());
        let run = |args: &[&str]| -> Result<(), String> {
            let out = Command::new(args[0])
                .args(&args[1..])
                .output()
                .map_err(|e| format!("{}: {e}", args.join(" ")))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "{}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            }
        };
        run(&["ip", "netns", "add", &name])?;
        let ns = Netem { name };
        run(&[
            "ip", "netns", "exec", &ns.name, "ip", "link", "set", "lo", "up",
        ])?;
        let loss = format!("{loss_pct}%");
        let delay = format!("{}ms", delay.as_millis());
        run(&[
            "ip", "netns", "exec", &ns.name, "tc", "qdisc", "add", "dev", "lo", "root", "netem",
            "loss", &loss, "delay", &delay,
        ])?;
        Ok(ns)
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: &std::path::Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }
}

impl Drop for Netem {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn udp_echo() -> SocketAddr {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let a = s.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, from)) = s.recv_from(&mut buf).await {
                let _ = s.send_to(&buf[..n], from).await;
            }
        });
        a
    }

    #[test]
    fn the_coin_loses_about_the_asked_share() {
        let mut c = Coin(42);
        let lost = (0..100_000).filter(|_| c.lose(0.02)).count();
        assert!((1_700..2_300).contains(&lost), "{lost}");
        let mut c = Coin(42);
        assert_eq!((0..1000).filter(|_| c.lose(0.0)).count(), 0);
    }

    #[tokio::test]
    async fn the_link_delays_both_ways_and_loses_some() {
        let echo = udp_echo().await;
        let link = LossyLink::start(0, echo, 0.1, Duration::from_millis(20), 7)
            .await
            .unwrap();
        let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        c.connect(("127.0.0.1", link.port)).await.unwrap();
        let t0 = std::time::Instant::now();
        let mut got = Vec::new();
        for i in 0..200u32 {
            c.send(&i.to_be_bytes()).await.unwrap();
        }
        let mut buf = [0u8; 16];
        let mut first = None;
        // Collect until the link has been quiet for 2 s (a stalled test process must not end
        // the collection early).
        while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(2), c.recv(&mut buf)).await {
            first.get_or_insert_with(|| t0.elapsed());
            got.push(u32::from_be_bytes(buf[..n].try_into().unwrap()));
        }
        // Two 20 ms hops at least; ~19% lost over the round trip; order kept.
        assert!(first.unwrap() >= Duration::from_millis(40), "{first:?}");
        assert!((120..195).contains(&got.len()), "{}", got.len());
        assert!(got.windows(2).all(|w| w[0] < w[1]), "{got:?}");
        assert!(link.stats.dropped() > 0);
        assert_eq!(
            link.stats.forwarded() + link.stats.dropped(),
            200 + (link.stats.forwarded() - got.len() as u64)
        );
    }
}
