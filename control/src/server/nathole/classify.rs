//! NAT classification from the addresses a client learnt from STUN (frp's
//! `ClassifyNATFeature`): the mapped addresses of one socket seen from two server addresses.
//! Same IP and port everywhere is an `EasyNAT` (endpoint-independent mapping); a changed IP or
//! port is a `HardNAT`, and a port that moves by 1..=5 is a "regular" change frp's plans can
//! predict.

pub(crate) const EASY_NAT: &str = "EasyNAT";
pub(crate) const HARD_NAT: &str = "HardNAT";

pub(crate) const BEHAVIOR_NO_CHANGE: &str = "BehaviorNoChange";
pub(crate) const BEHAVIOR_IP_CHANGED: &str = "BehaviorIPChanged";
pub(crate) const BEHAVIOR_PORT_CHANGED: &str = "BehaviorPortChanged";
pub(crate) const BEHAVIOR_BOTH_CHANGED: &str = "BehaviorBothChanged";

/// One side's NAT as frps sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct NatFeature {
    pub nat_type: &'static str,
    pub behavior: &'static str,
    /// Highest minus lowest mapped port (for `BehaviorPortChanged` only).
    pub ports_difference: i64,
    /// The port moved by 1..=5 between the mapped addresses.
    pub regular_ports_change: bool,
    /// A mapped IP is one of the side's own interface IPs (no NAT in front of it).
    pub public_network: bool,
}

/// frp's `ClassifyNATFeature(addresses, localIPs)`; the error texts are Go's.
pub(crate) fn classify_nat_feature(
    addresses: &[String],
    local_ips: &[String],
) -> Result<NatFeature, String> {
    if addresses.len() <= 1 {
        return Err("not enough addresses".into());
    }
    let mut f = NatFeature::default();
    let (mut ip_changed, mut port_changed) = (false, false);
    let mut base: Option<(&str, &str)> = None;
    let (mut port_max, mut port_min) = (0i64, 0i64);
    for addr in addresses {
        let (ip, port) = split_host_port(addr)?;
        let port_num = atoi(port)?;
        if local_ips.iter().any(|l| l == ip) {
            f.public_network = true;
        }
        let Some((base_ip, base_port)) = base else {
            base = Some((ip, port));
            port_max = port_num;
            port_min = port_num;
            continue;
        };
        port_max = port_max.max(port_num);
        port_min = port_min.min(port_num);
        if base_ip != ip {
            ip_changed = true;
        }
        if base_port != port {
            port_changed = true;
        }
    }
    (f.nat_type, f.behavior) = match (ip_changed, port_changed) {
        (true, true) => (HARD_NAT, BEHAVIOR_BOTH_CHANGED),
        (true, false) => (HARD_NAT, BEHAVIOR_IP_CHANGED),
        (false, true) => (HARD_NAT, BEHAVIOR_PORT_CHANGED),
        (false, false) => (EASY_NAT, BEHAVIOR_NO_CHANGE),
    };
    if f.behavior == BEHAVIOR_PORT_CHANGED {
        f.ports_difference = port_max - port_min;
        f.regular_ports_change = (1..=5).contains(&f.ports_difference);
    }
    Ok(f)
}

/// frp's `ClassifyFeatureCount`: (easy, hard, hard with a regular port change).
pub(crate) fn classify_feature_count(features: &[&NatFeature]) -> (usize, usize, usize) {
    let (mut easy, mut hard, mut regular) = (0, 0, 0);
    for f in features {
        if f.nat_type == EASY_NAT {
            easy += 1;
            continue;
        }
        hard += 1;
        if f.regular_ports_change {
            regular += 1;
        }
    }
    (easy, hard, regular)
}

/// The IPs of `addrs` ("host:port"), skipping those that do not split (frp's `parseIPs`).
pub(crate) fn parse_ips(addrs: &[String]) -> Vec<String> {
    addrs
        .iter()
        .filter_map(|a| split_host_port(a).ok().map(|(h, _)| h.to_string()))
        .collect()
}

/// Go's `net.SplitHostPort`, with its error texts ("address X: missing port in address").
pub(crate) fn split_host_port(hostport: &str) -> Result<(&str, &str), String> {
    let err = |why: &str| format!("address {hostport}: {why}");
    const MISSING_PORT: &str = "missing port in address";
    const TOO_MANY_COLONS: &str = "too many colons in address";
    let Some(i) = hostport.rfind(':') else {
        return Err(err(MISSING_PORT));
    };
    let (host, j, k);
    if hostport.starts_with('[') {
        let Some(end) = hostport.find(']') else {
            return Err(err("missing ']' in address"));
        };
        if end + 1 == hostport.len() {
            return Err(err(MISSING_PORT));
        } else if end + 1 != i {
            return Err(err(if hostport.as_bytes()[end + 1] == b':' {
                TOO_MANY_COLONS
            } else {
                MISSING_PORT
            }));
        }
        host = &hostport[1..end];
        (j, k) = (1, end + 1);
    } else {
        host = &hostport[..i];
        if host.contains(':') {
            return Err(err(TOO_MANY_COLONS));
        }
        (j, k) = (0, 0);
    }
    if hostport[j..].contains('[') {
        return Err(err("unexpected '[' in address"));
    }
    if hostport[k..].contains(']') {
        return Err(err("unexpected ']' in address"));
    }
    Ok((host, &hostport[i + 1..]))
}

/// Go's `strconv.Atoi` on a 64-bit platform, with its error texts.
pub(crate) fn atoi(s: &str) -> Result<i64, String> {
    s.parse::<i64>().map_err(|_| {
        let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
        let why = if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
            "value out of range"
        } else {
            "invalid syntax"
        };
        format!("strconv.Atoi: parsing {s:?}: {why}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    fn classify(a: &[&str]) -> NatFeature {
        classify_nat_feature(&addrs(a), &[]).unwrap()
    }

    #[test]
    fn needs_two_addresses() {
        assert_eq!(
            classify_nat_feature(&addrs(&["1.2.3.4:5"]), &[]).unwrap_err(),
            "not enough addresses"
        );
        assert_eq!(
            classify_nat_feature(&[], &[]).unwrap_err(),
            "not enough addresses"
        );
    }

    #[test]
    fn easy_and_hard_nats() {
        let f = classify(&["1.2.3.4:5000", "1.2.3.4:5000"]);
        assert_eq!((f.nat_type, f.behavior), (EASY_NAT, BEHAVIOR_NO_CHANGE));
        assert_eq!((f.ports_difference, f.regular_ports_change), (0, false));

        let f = classify(&["1.2.3.4:5000", "1.2.3.5:5000"]);
        assert_eq!((f.nat_type, f.behavior), (HARD_NAT, BEHAVIOR_IP_CHANGED));
        assert_eq!(f.ports_difference, 0, "only counted for port changes");

        let f = classify(&["1.2.3.4:5000", "1.2.3.5:5009"]);
        assert_eq!((f.nat_type, f.behavior), (HARD_NAT, BEHAVIOR_BOTH_CHANGED));

        let f = classify(&["1.2.3.4:5000", "1.2.3.4:5003", "1.2.3.4:4999"]);
        assert_eq!((f.nat_type, f.behavior), (HARD_NAT, BEHAVIOR_PORT_CHANGED));
        assert_eq!((f.ports_difference, f.regular_ports_change), (4, true));

        let f = classify(&["1.2.3.4:5000", "1.2.3.4:5006"]);
        assert_eq!((f.ports_difference, f.regular_ports_change), (6, false));

        // The port is compared as text, as frp does: "05000" is another port.
        let f = classify(&["1.2.3.4:5000", "1.2.3.4:05000"]);
        assert_eq!((f.behavior, f.ports_difference), (BEHAVIOR_PORT_CHANGED, 0));
        assert!(!f.regular_ports_change);
    }

    #[test]
    fn public_network_when_a_mapped_ip_is_local() {
        let f = classify_nat_feature(
            &addrs(&["1.2.3.4:5000", "1.2.3.4:5000"]),
            &addrs(&["10.0.0.1", "1.2.3.4"]),
        )
        .unwrap();
        assert!(f.public_network);
        assert!(!classify(&["1.2.3.4:5000", "1.2.3.4:5000"]).public_network);
    }

    #[test]
    fn bad_addresses_are_go_errors() {
        let e = |a: &[&str]| classify_nat_feature(&addrs(a), &[]).unwrap_err();
        assert_eq!(
            e(&["1.2.3.4", "1.2.3.4:1"]),
            "address 1.2.3.4: missing port in address"
        );
        assert_eq!(
            e(&["1.2.3.4:1", "::1:5"]),
            "address ::1:5: too many colons in address"
        );
        assert_eq!(
            e(&["1.2.3.4:x", "1.2.3.4:1"]),
            "strconv.Atoi: parsing \"x\": invalid syntax"
        );
        assert_eq!(
            e(&["1.2.3.4:", "1.2.3.4:1"]),
            "strconv.Atoi: parsing \"\": invalid syntax"
        );
        assert_eq!(
            e(&["1.2.3.4:99999999999999999999", "1.2.3.4:1"]),
            "strconv.Atoi: parsing \"99999999999999999999\": value out of range"
        );
        assert_eq!(
            e(&["[::1:5", "1.2.3.4:1"]),
            "address [::1:5: missing ']' in address"
        );
    }

    #[test]
    fn split_host_port_is_gos() {
        assert_eq!(split_host_port("[::1]:80"), Ok(("::1", "80")));
        assert_eq!(split_host_port("a:"), Ok(("a", "")));
        assert!(split_host_port("[::1]").is_err());
        assert!(split_host_port("[::1]x:80").is_err());
        assert!(split_host_port("a]:80").is_err());
        assert_eq!(atoi("+7"), Ok(7));
    }

    #[test]
    fn feature_counts() {
        let easy = classify(&["1.2.3.4:5000", "1.2.3.4:5000"]);
        let regular = classify(&["1.2.3.4:5000", "1.2.3.4:5002"]);
        let sym = classify(&["1.2.3.4:5000", "1.2.3.4:6000"]);
        assert_eq!(classify_feature_count(&[&easy, &easy]), (2, 0, 0));
        assert_eq!(classify_feature_count(&[&easy, &regular]), (1, 1, 1));
        assert_eq!(classify_feature_count(&[&sym, &regular]), (0, 2, 1));
        assert_eq!(
            parse_ips(&addrs(&["1.2.3.4:1", "bad", "[::1]:2"])),
            vec!["1.2.3.4", "::1"]
        );
    }
}
