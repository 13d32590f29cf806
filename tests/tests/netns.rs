//! The network-namespace topology itself (tests/src/netns.rs): the NATs route and
//! masquerade, the public side cannot reach the private hosts, the symmetric NAT maps per
//! destination while the cone NAT does not, and everything is gone after drop, panics
//! included. Each test prints a skip line where namespaces cannot be built.

use std::net::{IpAddr, SocketAddr};

use e2e::netns::{PUBLIC_IP, PUBLIC_IP2, Topology, mapped_addr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[test]
fn hosts_ping_the_public_side_through_their_nats_and_not_the_reverse() {
    let Some(t) = Topology::build_or_skip("hosts_ping_the_public_side_through_their_nats") else {
        return;
    };
    for site in [&t.cone, &t.symmetric] {
        site.host.ping(PUBLIC_IP).unwrap();
        site.host.ping(PUBLIC_IP2).unwrap();
        // Inbound to a private address has no route: only the NAT connects the site.
        assert!(
            t.public.ping(site.host_ip).is_err(),
            "{} reachable from the public namespace",
            site.host_ip
        );
    }
    // The two private sites cannot reach each other's private addresses either.
    assert!(t.cone.host.ping(t.symmetric.host_ip).is_err());
}

#[tokio::test]
async fn public_side_sees_the_nat_address_as_the_source() {
    let Some(t) = Topology::build_or_skip("public_side_sees_the_nat_address_as_the_source") else {
        return;
    };
    let l = t
        .public
        .tcp_listener(SocketAddr::new(PUBLIC_IP.into(), 0))
        .unwrap();
    let to = l.local_addr().unwrap();
    for site in [&t.cone, &t.symmetric] {
        let mut c = site.host.tcp_connect(to).await.unwrap();
        let (mut s, peer) = l.accept().await.unwrap();
        assert_eq!(peer.ip(), IpAddr::from(site.wan_ip), "not masqueraded");
        c.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
    }
}

#[tokio::test]
async fn symmetric_nat_maps_each_destination_to_its_own_port_and_cone_nat_does_not() {
    let Some(t) = Topology::build_or_skip("symmetric_nat_maps_each_destination_to_its_own_port")
    else {
        return;
    };
    let dests = [
        t.public
            .udp_reflector(SocketAddr::new(PUBLIC_IP.into(), 3478))
            .unwrap(),
        t.public
            .udp_reflector(SocketAddr::new(PUBLIC_IP.into(), 3479))
            .unwrap(),
        t.public
            .udp_reflector(SocketAddr::new(PUBLIC_IP2.into(), 3478))
            .unwrap(),
    ];
    let mut mapped = Vec::new();
    for site in [&t.cone, &t.symmetric] {
        let sock = site
            .host
            .udp_socket(SocketAddr::new(site.host_ip.into(), 0))
            .unwrap();
        let mut ports = Vec::new();
        for d in dests {
            let m = mapped_addr(&sock, d).await.unwrap();
            assert_eq!(m.ip(), IpAddr::from(site.wan_ip), "not masqueraded");
            ports.push(m.port());
        }
        mapped.push(ports);
    }
    let (cone, sym) = (&mapped[0], &mapped[1]);
    assert!(
        cone.iter().all(|p| *p == cone[0]),
        "cone NAT mapped per destination: {cone:?}"
    );
    // Three random ports coinciding is a one-in-a-billion event.
    assert!(
        sym.iter().any(|p| *p != sym[0]),
        "symmetric NAT kept one mapping for all destinations: {sym:?}"
    );
}

fn existing(names: &[String]) -> Vec<String> {
    names
        .iter()
        .filter(|n| std::path::Path::new("/run/netns").join(n).exists())
        .cloned()
        .collect()
}

#[test]
fn drop_removes_the_namespaces_also_after_a_panic() {
    let Some(t) = Topology::build_or_skip("drop_removes_the_namespaces") else {
        return;
    };
    let names = t.namespace_names();
    assert_eq!(names.len(), 5);
    assert_eq!(existing(&names), names);
    // A process left running in a namespace does not keep it alive.
    let dir = tempfile::tempdir().unwrap();
    let sleeper = t.cone.host.spawn(
        "sleeper",
        std::path::Path::new("sleep"),
        &["600"],
        dir.path(),
        &[],
    );
    std::mem::forget(sleeper);
    drop(t);
    assert_eq!(existing(&names), Vec::<String>::new());

    let names = std::panic::catch_unwind(|| {
        let t = Topology::build().unwrap();
        let names = t.namespace_names();
        std::panic::panic_any(names);
    })
    .unwrap_err()
    .downcast::<Vec<String>>()
    .unwrap();
    assert_eq!(names.len(), 5);
    assert_eq!(existing(&names), Vec::<String>::new());
}
