//! Controller transactions with fake transporters (channels standing in for control
//! connections); tokio's paused clock runs the timeouts.

use super::analysis::{MODE0, ROLE_RECEIVER, ROLE_SENDER};
use super::*;
use crate::msg::Message;
use crate::server::control::Outbox;

const SK: &str = "secret";
const TS: i64 = 1_700_000_000;

fn peer(run_id: &str, user: &str) -> (Peer, Arc<Outbox>) {
    let rx = Outbox::new();
    let tx: Transporter = rx.clone();
    let p = Peer {
        run_id: run_id.into(),
        user: user.into(),
        tx,
    };
    (p, rx)
}

fn strings(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

fn visitor_msg(tid: &str, proxy: &str) -> NatHoleVisitor {
    NatHoleVisitor {
        transaction_id: tid.into(),
        proxy_name: proxy.into(),
        protocol: "quic".into(),
        sign_key: auth::sign_key(SK, TS),
        timestamp: TS,
        mapped_addrs: strings(&["5.5.5.5:4000", "5.5.5.5:4000"]),
        assisted_addrs: strings(&["192.168.1.2:4000"]),
        ..Default::default()
    }
}

fn client_msg(tid: &str, sid: &str) -> NatHoleClient {
    NatHoleClient {
        transaction_id: tid.into(),
        proxy_name: "u.p".into(),
        sid: sid.into(),
        mapped_addrs: strings(&["6.6.6.6:7000", "6.6.6.6:7000"]),
        assisted_addrs: strings(&["10.0.0.2:7000"]),
    }
}

fn resp(m: Option<Box<Message>>) -> NatHoleResp {
    match m.map(|m| *m) {
        Some(Message::NatHoleResp(r)) => r,
        other => panic!("expected a NatHoleResp, got {other:?}"),
    }
}

/// A controller with proxy "u.p" of client "owner" (allowUsers as given) registered.
fn setup(allow: &[&str]) -> (Arc<Controller>, Listening, mpsc::Receiver<String>) {
    let c = Controller::new(168, Limits::default());
    let (l, sids) = c.listen_client("u.p", SK, strings(allow), "owner").unwrap();
    (c, l, sids)
}

#[tokio::test(start_paused = true)]
async fn pre_check_answers() {
    let (c, _l, _sids) = setup(&["alice"]);
    let (alice, alice_rx) = peer("v1", "alice");
    let (bob, bob_rx) = peer("v2", "bob");
    let pre = |tid: &str, proxy: &str| NatHoleVisitor {
        transaction_id: tid.into(),
        proxy_name: proxy.into(),
        pre_check: true,
        ..Default::default()
    };
    c.handle_visitor(pre("t1", "u.p"), alice.clone());
    let r = resp(alice_rx.recv().await);
    assert_eq!((r.transaction_id.as_str(), r.error.as_str()), ("t1", ""));
    c.handle_visitor(pre("t2", "u.nope"), alice);
    assert_eq!(
        resp(alice_rx.recv().await).error,
        "xtcp server for [u.nope] doesn't exist"
    );
    c.handle_visitor(pre("t3", "u.p"), bob);
    let r = resp(bob_rx.recv().await);
    assert_eq!(r.transaction_id, "t3");
    assert_eq!(r.error, "xtcp visitor user [bob] not allowed for [u.p]");
    // A pre-check opens no session.
    assert_eq!(c.counts(), (1, 0, 0));

    let (c, _l, _sids) = setup(&["*"]);
    let (bob, bob_rx) = peer("v2", "bob");
    c.handle_visitor(pre("t4", "u.p"), bob);
    assert_eq!(resp(bob_rx.recv().await).error, "");
}

#[tokio::test(start_paused = true)]
async fn refused_visitors_get_frps_errors_and_open_nothing() {
    let (c, _l, mut sids) = setup(&["alice"]);
    let (alice, rx) = peer("v1", "alice");

    let mut m = visitor_msg("t1", "u.p");
    m.sign_key = auth::sign_key("wrong", TS);
    c.handle_visitor(m, alice.clone());
    let r = resp(rx.recv().await);
    assert_eq!(r.transaction_id, "t1");
    assert_eq!(r.error, "xtcp connection of [u.p] auth failed");
    assert!(r.sid.is_empty());

    // The sign key is bound to the timestamp.
    let mut m = visitor_msg("t2", "u.p");
    m.timestamp += 1;
    c.handle_visitor(m, alice.clone());
    assert_eq!(
        resp(rx.recv().await).error,
        "xtcp connection of [u.p] auth failed"
    );

    c.handle_visitor(visitor_msg("t3", "u.other"), alice);
    assert_eq!(
        resp(rx.recv().await).error,
        "xtcp server for [u.other] doesn't exist"
    );

    // allowUsers holds for the real request too, not only the pre-check.
    let (bob, bob_rx) = peer("v2", "bob");
    c.handle_visitor(visitor_msg("t4", "u.p"), bob);
    assert_eq!(
        resp(bob_rx.recv().await).error,
        "xtcp visitor user [bob] not allowed for [u.p]"
    );
    assert_eq!(c.counts(), (1, 0, 0));
    assert!(sids.try_recv().is_err(), "no sid handed out");
}

/// The whole transaction: sid to the owner, NatHoleClient, both plans (receiver first), the
/// report, and the session's end.
#[tokio::test(start_paused = true)]
async fn introduces_visitor_and_owner() {
    let (c, _l, mut sids) = setup(&["alice"]);
    let (alice, v_rx) = peer("v1", "alice");
    let (owner, o_rx) = peer("owner", "u");

    c.handle_visitor(visitor_msg("vt", "u.p"), alice);
    let sid = sids.recv().await.unwrap();
    assert_eq!(sid.len(), 10 + 16, "unix seconds + 16 hex digits: {sid}");
    assert!(sid.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(c.counts(), (1, 1, 1));

    let t0 = Instant::now();
    c.handle_client(client_msg("ct", &sid), &owner);
    // Two easy NATs, first plan of mode 0: the owner sends, the visitor receives with TTL 7.
    let v = resp(v_rx.recv().await);
    let v_at = Instant::now();
    let o = resp(o_rx.recv().await);
    let o_at = Instant::now();
    assert!(v_at - t0 < SENDER_DELAY, "the receiver's plan goes first");
    assert!(
        o_at - t0 >= SENDER_DELAY,
        "the sender's plan a second later"
    );

    assert_eq!(v.transaction_id, "vt");
    assert_eq!(o.transaction_id, "ct");
    assert_eq!(
        (v.sid.as_str(), o.sid.as_str()),
        (sid.as_str(), sid.as_str())
    );
    assert_eq!((v.protocol.as_str(), o.protocol.as_str()), ("quic", "quic"));
    assert_eq!(v.error, "");
    // Each side gets the other's addresses, runs of duplicates merged.
    assert_eq!(v.candidate_addrs, strings(&["6.6.6.6:7000"]));
    assert_eq!(v.assisted_addrs, strings(&["10.0.0.2:7000"]));
    assert_eq!(o.candidate_addrs, strings(&["5.5.5.5:4000"]));
    assert_eq!(o.assisted_addrs, strings(&["192.168.1.2:4000"]));
    let (vb, ob) = (&v.detect_behavior, &o.detect_behavior);
    assert_eq!((vb.mode, ob.mode), (MODE0, MODE0));
    assert_eq!((vb.role.as_str(), vb.ttl), (ROLE_RECEIVER, 7));
    assert_eq!((ob.role.as_str(), ob.ttl), (ROLE_SENDER, 0));
    assert_eq!((vb.read_timeout, ob.read_timeout), (5000, 5000));
    assert!(vb.candidate_ports.is_empty() && ob.candidate_ports.is_empty());

    // The session waits for the report: read timeout + 30 s.
    assert_eq!(c.counts().1, 1);
    c.handle_report(
        NatHoleReport {
            sid: sid.clone(),
            success: true,
        },
        &owner,
    );
    tokio::time::sleep(Duration::from_millis(5010) + REPORT_GRACE).await;
    assert_eq!(c.counts(), (1, 0, 0));
    assert_eq!(c.analyzer.lock().unwrap().len(), 1);
}

/// Runs one session of visitor `v` against owner `o` to the point both have their plans;
/// returns (visitor's, owner's) plans and the sid.
async fn one_session(
    c: &Arc<Controller>,
    sids: &mut mpsc::Receiver<String>,
    v: &Peer,
    v_rx: &Outbox,
    o: &Peer,
    o_rx: &Outbox,
) -> (NatHoleResp, NatHoleResp, String) {
    c.handle_visitor(visitor_msg("vt", "u.p"), v.clone());
    let sid = sids.recv().await.unwrap();
    c.handle_client(client_msg("ct", &sid), o);
    (resp(v_rx.recv().await), resp(o_rx.recv().await), sid)
}

#[tokio::test(start_paused = true)]
async fn reports_teach_the_analyzer() {
    // Without a report the next session tries the next plan ...
    let (c, _l, mut sids) = setup(&["alice"]);
    let (v, v_rx) = peer("v1", "alice");
    let (o, o_rx) = peer("owner", "u");
    let (a, _, _) = one_session(&c, &mut sids, &v, &v_rx, &o, &o_rx).await;
    let (b, _, _) = one_session(&c, &mut sids, &v, &v_rx, &o, &o_rx).await;
    assert_eq!(
        (a.detect_behavior.role.as_str(), a.detect_behavior.ttl),
        (ROLE_RECEIVER, 7)
    );
    assert_eq!(
        (b.detect_behavior.role.as_str(), b.detect_behavior.ttl),
        (ROLE_SENDER, 0)
    );

    // ... with a successful one it keeps the plan that worked.
    let (c, _l, mut sids) = setup(&["alice"]);
    let (a, _, sid) = one_session(&c, &mut sids, &v, &v_rx, &o, &o_rx).await;
    c.handle_report(
        NatHoleReport {
            sid: sid.clone(),
            success: true,
        },
        &o,
    );
    // Only once per session, and only from the owner.
    c.handle_report(
        NatHoleReport {
            sid: sid.clone(),
            success: true,
        },
        &o,
    );
    c.handle_report(NatHoleReport { sid, success: true }, &v);
    let (b, _, _) = one_session(&c, &mut sids, &v, &v_rx, &o, &o_rx).await;
    assert_eq!(a.detect_behavior, b.detect_behavior);
    let (d, _, _) = one_session(&c, &mut sids, &v, &v_rx, &o, &o_rx).await;
    // Score 0 + 2 - 1 - 1 = 0 and every other plan at 0: the first of equals, plan 0 again.
    assert_eq!(a.detect_behavior, d.detect_behavior);
    let (e, _, _) = one_session(&c, &mut sids, &v, &v_rx, &o, &o_rx).await;
    assert_ne!(a.detect_behavior, e.detect_behavior);
}

#[tokio::test(start_paused = true)]
async fn an_owner_that_never_answers_times_out() {
    let (c, _l, mut sids) = setup(&["alice"]);
    let (v, v_rx) = peer("v1", "alice");
    c.handle_visitor(visitor_msg("vt", "u.p"), v);
    let sid = sids.recv().await.unwrap();
    assert_eq!(c.counts().1, 1);
    tokio::time::sleep(NAT_HOLE_TIMEOUT + Duration::from_millis(10)).await;
    assert_eq!(
        c.counts(),
        (1, 0, 0),
        "session dropped after NatHoleTimeout"
    );
    // As frp: no answer to the visitor (its own 5 s exchange timeout reports it).
    assert!(v_rx.try_recv().is_none());
    // A late NatHoleClient finds nothing.
    let (o, o_rx) = peer("owner", "u");
    c.handle_client(client_msg("ct", &sid), &o);
    tokio::task::yield_now().await;
    assert!(o_rx.try_recv().is_none());
}

#[tokio::test(start_paused = true)]
async fn forged_client_messages_are_ignored() {
    let (c, _l, mut sids) = setup(&["*"]);
    let (v, v_rx) = peer("v1", "alice");
    let (mallory, m_rx) = peer("mallory", "m");
    // Unknown sids: nothing happens.
    c.handle_client(client_msg("x", "nope"), &mallory);
    c.handle_report(
        NatHoleReport {
            sid: "nope".into(),
            success: true,
        },
        &mallory,
    );

    c.handle_visitor(visitor_msg("vt", "u.p"), v);
    let sid = sids.recv().await.unwrap();
    // The sid is known but mallory does not own the proxy: ignored, the session times out.
    c.handle_client(client_msg("x", &sid), &mallory);
    tokio::time::sleep(NAT_HOLE_TIMEOUT + Duration::from_millis(10)).await;
    assert!(v_rx.try_recv().is_none());
    assert!(m_rx.try_recv().is_none());
    assert_eq!(c.counts(), (1, 0, 0));
}

#[tokio::test(start_paused = true)]
async fn unusable_addresses_get_frps_analysis_errors() {
    let (c, _l, mut sids) = setup(&["alice"]);
    let (v, v_rx) = peer("v1", "alice");
    let (o, o_rx) = peer("owner", "u");
    c.handle_visitor(visitor_msg("vt", "u.p"), v.clone());
    let sid = sids.recv().await.unwrap();
    let mut cm = client_msg("ct", &sid);
    cm.mapped_addrs = strings(&["6.6.6.6:7000"]);
    c.handle_client(cm, &o);
    let (vr, or) = (resp(v_rx.recv().await), resp(o_rx.recv().await));
    let e = "classify client nat feature error: not enough addresses";
    assert_eq!((vr.transaction_id.as_str(), vr.error.as_str()), ("vt", e));
    assert_eq!((or.transaction_id.as_str(), or.error.as_str()), ("ct", e));
    assert!(vr.candidate_addrs.is_empty());

    let mut vm = visitor_msg("vt2", "u.p");
    vm.mapped_addrs = strings(&["garbage", "5.5.5.5:1"]);
    c.handle_visitor(vm, v);
    let sid = sids.recv().await.unwrap();
    c.handle_client(client_msg("ct2", &sid), &o);
    assert_eq!(
        resp(v_rx.recv().await).error,
        "classify visitor nat feature error: address garbage: missing port in address"
    );
    assert_eq!(c.analyzer.lock().unwrap().len(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_flooding_visitor_is_capped() {
    let c = Controller::new(
        168,
        Limits {
            sessions: 6,
            per_visitor: 4,
            records: 10,
        },
    );
    let (_l, _sids) = c
        .listen_client("u.p", SK, strings(&["*"]), "owner")
        .unwrap();
    let (v, v_rx) = peer("v1", "alice");
    for i in 0..10 {
        c.handle_visitor(visitor_msg(&format!("t{i}"), "u.p"), v.clone());
    }
    let mut refused = 0;
    while let Some(m) = v_rx.try_recv() {
        let r = resp(Some(m));
        assert_eq!(
            r.error,
            "too many xtcp sessions in progress for this client (4)"
        );
        refused += 1;
    }
    assert_eq!(refused, 6);
    assert_eq!(c.counts(), (1, 4, 4));
    // Another visitor client has room until the server-wide cap.
    let (w, w_rx) = peer("v2", "bob");
    for i in 0..3 {
        c.handle_visitor(visitor_msg(&format!("w{i}"), "u.p"), w.clone());
    }
    assert_eq!(
        resp(w_rx.recv().await).error,
        "too many xtcp sessions in progress on this server"
    );
    assert_eq!(c.counts(), (1, 6, 6));
    // All of them expire; the visitor may try again.
    tokio::time::sleep(NAT_HOLE_TIMEOUT * 2 + Duration::from_millis(10)).await;
    assert_eq!(c.counts(), (1, 0, 0));
    c.handle_visitor(visitor_msg("again", "u.p"), v);
    tokio::task::yield_now().await;
    assert!(v_rx.try_recv().is_none(), "accepted again");
    assert_eq!(c.counts().1, 1);
}

#[tokio::test(start_paused = true)]
async fn a_closed_proxy_ends_its_sessions() {
    let (c, l, sids) = setup(&["alice"]);
    let (v, _v_rx) = peer("v1", "alice");
    // Its sid queue is never read, then the proxy closes.
    drop(sids);
    c.handle_visitor(visitor_msg("vt", "u.p"), v.clone());
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(c.counts(), (1, 0, 0), "sid could not be delivered");
    drop(l);
    assert_eq!(c.counts(), (0, 0, 0));
    // The name is free for a new registration; a stale handle does not remove it.
    let (l2, _s2) = c
        .listen_client("u.p", SK, strings(&["*"]), "owner")
        .unwrap();
    assert_eq!(
        c.listen_client("u.p", SK, vec![], "x").err().unwrap(),
        "proxy [u.p] is repeated"
    );
    drop(l2);
    assert_eq!(c.counts().0, 0);
}

#[tokio::test(start_paused = true)]
async fn gone_control_connections_do_not_matter() {
    let (c, _l, mut sids) = setup(&["alice"]);
    let (v, v_rx) = peer("v1", "alice");
    let (o, o_rx) = peer("owner", "u");
    drop((v_rx, o_rx));
    c.handle_visitor(
        NatHoleVisitor {
            pre_check: true,
            proxy_name: "u.p".into(),
            ..Default::default()
        },
        v.clone(),
    );
    c.handle_visitor(visitor_msg("vt", "u.p"), v);
    let sid = sids.recv().await.unwrap();
    c.handle_client(client_msg("ct", &sid), &o);
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(c.counts(), (1, 0, 0));
}

/// `natholeAnalysisDataReserveHours` drives the hourly clean-up.
#[tokio::test(start_paused = true)]
async fn reserve_hours_are_honoured_by_the_clean_worker() {
    for (hours, kept_after_3h) in [(1, 0), (168, 1)] {
        let c = Controller::new(hours, Limits::default());
        let (_l, mut sids) = c
            .listen_client("u.p", SK, strings(&["*"]), "owner")
            .unwrap();
        let worker = tokio::spawn(c.clone().clean_worker());
        let (v, v_rx) = peer("v1", "alice");
        let (o, o_rx) = peer("owner", "u");
        one_session(&c, &mut sids, &v, &v_rx, &o, &o_rx).await;
        assert_eq!(c.analyzer.lock().unwrap().len(), 1);
        tokio::time::sleep(Duration::from_secs(3 * 3600 + 1)).await;
        assert_eq!(
            c.analyzer.lock().unwrap().len(),
            kept_after_3h,
            "hours = {hours}"
        );
        worker.abort();
    }
}

#[test]
fn candidate_port_ranges() {
    let a = strings(&["1.1.1.1:100", "1.1.1.1:1000"]);
    let r = |from, to| vec![PortsRange { from, to }];
    // ±(difference + 5), at most ±max, from the last address.
    assert_eq!(range_ports(&a, 0, 10), r(995, 1005));
    assert_eq!(range_ports(&a, 3, 10), r(992, 1008));
    assert_eq!(range_ports(&a, 30, 10), r(990, 1010));
    assert_eq!(range_ports(&a, 0, 2), r(998, 1002));
    assert_eq!(range_ports(&strings(&["1.1.1.1:3"]), 0, 10), r(1, 8));
    assert_eq!(
        range_ports(&strings(&["1.1.1.1:65533"]), 0, 10),
        r(65528, 65535)
    );
    assert!(range_ports(&a, 0, 0).is_empty());
    assert!(range_ports(&[], 0, 10).is_empty());
    assert!(range_ports(&strings(&["nonsense"]), 0, 10).is_empty());
}

#[test]
fn analysis_key_is_frps() {
    let easy = classify_nat_feature(&strings(&["1.1.1.1:1", "1.1.1.1:1"]), &[]).unwrap();
    // md5("2.2.2.2" "EasyNAT" "BehaviorNoChange" "false" "1.1.1.1" "EasyNAT" ...).
    let mut h = Md5::new();
    h.update(b"2.2.2.2EasyNATBehaviorNoChangefalse1.1.1.1EasyNATBehaviorNoChangefalse");
    let want = hex::encode(h.finalize());
    let key = analysis_key(
        &strings(&["2.2.2.2:5", "2.2.2.2:5"]),
        &easy,
        &strings(&["1.1.1.1:1"]),
        &easy,
    );
    assert_eq!(key, want);
    assert_ne!(
        key,
        analysis_key(
            &strings(&["1.1.1.1:1"]),
            &easy,
            &strings(&["2.2.2.2:5"]),
            &easy
        )
    );
}
