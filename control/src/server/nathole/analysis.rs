//! The punching plans and the data that learns which plan works (frp's `Analyzer`).
//!
//! For each pair of NATs (keyed by both sides' first mapped IP and NAT features) frps keeps a
//! list of scored plans — (mode, index) into the tables below — seeded by the kind of NATs;
//! each time it recommends the best-scored plan (the first of equals) and lowers its score by
//! one, and each successful punch reported raises it by two (up to 10). So a plan that keeps
//! failing gives way to the next, and one that works is kept. Records not used for
//! `natholeAnalysisDataReserveHours` are dropped by [`Analyzer::clean`]. Time is passed in
//! (no clock of its own), so tests drive it.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use super::classify::{EASY_NAT, HARD_NAT, NatFeature, classify_feature_count};

pub(crate) const ROLE_SENDER: &str = "sender";
pub(crate) const ROLE_RECEIVER: &str = "receiver";

pub(crate) const MODE0: i64 = 0;
pub(crate) const MODE1: i64 = 1;
pub(crate) const MODE2: i64 = 2;
pub(crate) const MODE3: i64 = 3;
pub(crate) const MODE4: i64 = 4;

/// How one side should punch (frp's `RecommandBehavior`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Behavior {
    pub role: &'static str,
    pub ttl: i64,
    pub send_delay_ms: i64,
    /// Candidate ports around the peer's last mapped port (± this, at most).
    pub ports_range_number: i64,
    /// Random ports of the peer's IP to send to.
    pub ports_random_number: i64,
    /// Extra local sockets to listen on.
    pub listen_random_ports: i64,
}

const fn b(role: &'static str) -> Behavior {
    Behavior {
        role,
        ttl: 0,
        send_delay_ms: 0,
        ports_range_number: 0,
        ports_random_number: 0,
        listen_random_ports: 0,
    }
}
const S: Behavior = b(ROLE_SENDER);
const R: Behavior = b(ROLE_RECEIVER);

impl Behavior {
    const fn ttl(mut self, v: i64) -> Self {
        self.ttl = v;
        self
    }
    const fn delay(mut self, v: i64) -> Self {
        self.send_delay_ms = v;
        self
    }
    const fn range(mut self, v: i64) -> Self {
        self.ports_range_number = v;
        self
    }
    const fn random(mut self, v: i64) -> Self {
        self.ports_random_number = v;
        self
    }
    const fn listen(mut self, v: i64) -> Self {
        self.listen_random_ports = v;
        self
    }
}

/// Mode 0, both easy (a side on a public network is always the receiver): (A, B) pairs.
static MODE0_BEHAVIORS: [(Behavior, Behavior); 10] = [
    (S, R.ttl(7)),
    (R.ttl(7), S),
    (S, R.ttl(4)),
    (R.ttl(4), S),
    (S, R),
    (R, S),
    (S.delay(5000), R),
    (S.delay(10000), R),
    (R, S.delay(5000)),
    (R, S.delay(10000)),
];

/// Mode 1, one hard NAT with a regular port change: the hard side sends, the easy side
/// receives on a range of ports.
static MODE1_BEHAVIORS: [(Behavior, Behavior); 6] = [
    (S, R.ttl(7).range(10)),
    (S.delay(2000), R.ttl(7).range(10)),
    (S, R.ttl(4).range(10)),
    (S.delay(2000), R.ttl(4).range(10)),
    (S, R.range(10)),
    (S.delay(2000), R.range(10)),
];

/// Mode 2, one hard NAT: the easy side sends to 1000 random ports, the hard side listens on
/// 256.
static MODE2_BEHAVIORS: [(Behavior, Behavior); 3] = [
    (S.random(1000).delay(3000), R.listen(256).ttl(7)),
    (S.random(1000).delay(3000), R.listen(256).ttl(4)),
    (S.random(1000).delay(3000), R.listen(256)),
];

/// Mode 3, two hard NATs, both with regular port changes.
static MODE3_BEHAVIORS: [(Behavior, Behavior); 6] = [
    (S.range(10), R.ttl(7).range(10)),
    (S.range(10), R.ttl(4).range(10)),
    (S.range(10), R.range(10)),
    (R.ttl(7).range(10), S.range(10)),
    (R.ttl(4).range(10), S.range(10)),
    (R.range(10), S.range(10)),
];

/// Mode 4, two hard NATs, one with a regular port change (that one sends).
static MODE4_BEHAVIORS: [(Behavior, Behavior); 3] = [
    (S.random(1000).delay(3000), R.listen(256).ttl(7).range(2)),
    (S.random(1000).delay(3000), R.listen(256).ttl(4).range(2)),
    (S.random(1000).delay(3000), R.listen(256).range(2)),
];

fn behaviors_of(mode: i64) -> &'static [(Behavior, Behavior)] {
    match mode {
        MODE1 => &MODE1_BEHAVIORS,
        MODE2 => &MODE2_BEHAVIORS,
        MODE3 => &MODE3_BEHAVIORS,
        MODE4 => &MODE4_BEHAVIORS,
        _ => &MODE0_BEHAVIORS,
    }
}

/// The (A, B) behaviours of a plan; empty ones for an index out of range (frp's
/// `getBehaviorByModeAndIndex`).
pub(crate) fn behavior_pair(mode: i64, index: usize) -> (Behavior, Behavior) {
    behaviors_of(mode).get(index).copied().unwrap_or_default()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Score {
    mode: i64,
    index: usize,
    /// Between -10 and 10 (frp's comment; it is not clamped below).
    score: i64,
}

/// Scores of every plan of `mode`: `sender` for plans where side A sends, `receiver` else.
fn scores_of(mode: i64, sender: i64, receiver: i64) -> impl Iterator<Item = Score> {
    behaviors_of(mode)
        .iter()
        .enumerate()
        .map(move |(index, (a, _))| Score {
            mode,
            index,
            score: if a.role == ROLE_SENDER {
                sender
            } else {
                receiver
            },
        })
}

/// The scored plans of one pair of NATs (frp's `makeHoleRecords`).
#[derive(Debug)]
struct Records {
    scores: Vec<Score>,
    last_update: Instant,
}

impl Records {
    fn new(c: &NatFeature, v: &NatFeature, now: Instant) -> Records {
        let mut scores = Vec::new();
        let (easy, hard, regular) = classify_feature_count(&[c, v]);
        let mode0 = |scores: &mut Vec<Score>| {
            if c.public_network {
                scores.extend(scores_of(MODE0, 0, 1));
            } else if v.public_network {
                scores.extend(scores_of(MODE0, 1, 0));
            } else {
                scores.extend(scores_of(MODE0, 0, 0));
            }
        };
        match (easy, hard, regular) {
            (2, _, _) => mode0(&mut scores),
            (_, 1, 1) => {
                scores.extend(scores_of(MODE1, 0, 0));
                scores.extend(scores_of(MODE2, 0, 0));
                mode0(&mut scores);
            }
            (_, 1, 0) => {
                scores.extend(scores_of(MODE2, 0, 0));
                scores.extend(scores_of(MODE1, 0, 0));
                mode0(&mut scores);
            }
            (_, 2, 2) => {
                scores.extend(scores_of(MODE3, 0, 0));
                scores.extend(scores_of(MODE4, 0, 0));
            }
            (_, 2, 1) => scores.extend(scores_of(MODE4, 0, 0)),
            _ => {
                // Hard to punch: try anyway.
                scores.extend(scores_of(MODE0, 1, 1));
                scores.extend(scores_of(MODE1, 1, 1));
                scores.extend(scores_of(MODE3, 1, 1));
            }
        }
        Records {
            scores,
            last_update: now,
        }
    }

    fn report_success(&mut self, mode: i64, index: usize, now: Instant) {
        self.last_update = now;
        if let Some(s) = self
            .scores
            .iter_mut()
            .find(|s| s.mode == mode && s.index == index)
        {
            s.score = (s.score + 2).min(10);
        }
    }

    /// The best-scored plan, the first of equals (Go's `slices.MaxFunc`), its score lowered.
    fn recommend(&mut self, now: Instant) -> (i64, usize) {
        let mut best: Option<&mut Score> = None;
        for s in self.scores.iter_mut() {
            if best.as_ref().is_none_or(|b| s.score > b.score) {
                best = Some(s);
            }
        }
        let Some(best) = best else {
            return (0, 0);
        };
        best.score -= 1;
        let picked = (best.mode, best.index);
        self.last_update = now;
        picked
    }
}

/// The learning data, by analysis key.
#[derive(Debug)]
pub(crate) struct Analyzer {
    records: HashMap<String, Records>,
    /// How long unused records are kept; `None` (negative hours) keeps none.
    reserve: Option<Duration>,
    /// At most this many records; the least recently used one makes room.
    cap: usize,
}

/// At most this many NAT pairs are remembered (frp: unbounded; its comment sizes a clean of
/// 100,000 records at 5 ms).
pub(crate) const MAX_RECORDS: usize = 100_000;

impl Analyzer {
    /// `reserve_hours` is `natholeAnalysisDataReserveHours`.
    pub(crate) fn new(reserve_hours: i64, cap: usize) -> Analyzer {
        Analyzer {
            records: HashMap::new(),
            reserve: u64::try_from(reserve_hours)
                .ok()
                .map(|h| Duration::from_secs(h.saturating_mul(3600))),
            cap: cap.max(1),
        }
    }

    /// The plan for the pair `key` and both sides' behaviours (client's, visitor's), swapped
    /// so that in mode 1 the hard side sends, in mode 2 the hard side receives and in mode 4
    /// the side with the regular port change sends (frp's `GetRecommandBehaviors`).
    pub(crate) fn recommend(
        &mut self,
        key: &str,
        c: &NatFeature,
        v: &NatFeature,
        now: Instant,
    ) -> (i64, usize, Behavior, Behavior) {
        if !self.records.contains_key(key) && self.records.len() >= self.cap {
            self.evict_oldest();
        }
        let records = self
            .records
            .entry(key.to_string())
            .or_insert_with(|| Records::new(c, v, now));
        let (mode, index) = records.recommend(now);
        let (mut cb, mut vb) = behavior_pair(mode, index);
        let swap = match mode {
            MODE1 => c.nat_type == EASY_NAT,
            MODE2 => c.nat_type == HARD_NAT,
            MODE4 => !c.regular_ports_change,
            _ => false,
        };
        if swap {
            std::mem::swap(&mut cb, &mut vb);
        }
        (mode, index, cb, vb)
    }

    pub(crate) fn report_success(&mut self, key: &str, mode: i64, index: usize, now: Instant) {
        if let Some(r) = self.records.get_mut(key) {
            r.report_success(mode, index, now);
        }
    }

    /// Drops the records unused for longer than the reserve time: (dropped, total before).
    pub(crate) fn clean(&mut self, now: Instant) -> (usize, usize) {
        let total = self.records.len();
        let reserve = self.reserve;
        self.records.retain(|_, r| {
            reserve.is_some_and(|keep| now.saturating_duration_since(r.last_update) <= keep)
        });
        (total - self.records.len(), total)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.records.len()
    }

    fn evict_oldest(&mut self) {
        let oldest = self
            .records
            .iter()
            .min_by_key(|(_, r)| r.last_update)
            .map(|(k, _)| k.clone());
        if let Some(k) = oldest {
            self.records.remove(&k);
        }
    }

    #[cfg(test)]
    fn scores(&self, key: &str) -> Vec<(i64, usize, i64)> {
        self.records[key]
            .scores
            .iter()
            .map(|s| (s.mode, s.index, s.score))
            .collect()
    }

    #[cfg(test)]
    fn last_update(&self, key: &str) -> Instant {
        self.records[key].last_update
    }
}

#[cfg(test)]
mod tests {
    use super::super::classify::{BEHAVIOR_NO_CHANGE, BEHAVIOR_PORT_CHANGED, EASY_NAT, HARD_NAT};
    use super::*;

    fn easy() -> NatFeature {
        NatFeature {
            nat_type: EASY_NAT,
            behavior: BEHAVIOR_NO_CHANGE,
            ..Default::default()
        }
    }

    fn hard(regular: bool) -> NatFeature {
        NatFeature {
            nat_type: HARD_NAT,
            behavior: BEHAVIOR_PORT_CHANGED,
            ports_difference: if regular { 2 } else { 100 },
            regular_ports_change: regular,
            ..Default::default()
        }
    }

    /// frp's `TestAnalyzerUsesClockForRecordTimestamps`: a recommendation and a report stamp
    /// the record; two hours later a one-hour reserve drops it.
    #[test]
    fn records_are_stamped_and_cleaned_after_the_reserve_time() {
        let start = Instant::now();
        let mut a = Analyzer::new(1, MAX_RECORDS);
        let (mode, index, _, _) = a.recommend("key", &easy(), &easy(), start);
        assert_eq!(a.last_update("key"), start);

        let updated = start + Duration::from_secs(60);
        a.report_success("key", mode, index, updated);
        assert_eq!(a.last_update("key"), updated);

        // Not yet: 59 minutes after the last use.
        assert_eq!(a.clean(updated + Duration::from_secs(59 * 60)), (0, 1));
        assert_eq!(a.clean(start + Duration::from_secs(2 * 3600)), (1, 1));
        assert_eq!(a.len(), 0);
    }

    #[test]
    fn negative_reserve_keeps_nothing() {
        let now = Instant::now();
        let mut a = Analyzer::new(-1, MAX_RECORDS);
        a.recommend("k", &easy(), &easy(), now);
        assert_eq!(a.clean(now), (1, 1));
    }

    #[test]
    fn two_easy_nats_start_with_mode0_and_walk_the_plans() {
        let now = Instant::now();
        let mut a = Analyzer::new(168, MAX_RECORDS);
        // All scores equal: the first plan, then (its score lowered) the next, and so on.
        let mut seen = Vec::new();
        for _ in 0..11 {
            let (mode, index, c, v) = a.recommend("k", &easy(), &easy(), now);
            seen.push((mode, index));
            assert_eq!((c, v), behavior_pair(mode, index));
        }
        let expected: Vec<_> = (0..10).map(|i| (MODE0, i)).chain([(MODE0, 0)]).collect();
        assert_eq!(seen, expected);
        let (_, _, c, v) = a.recommend("k", &easy(), &easy(), now);
        assert_eq!((c.role, c.ttl, v.role), (ROLE_RECEIVER, 7, ROLE_SENDER));
    }

    #[test]
    fn a_reported_success_is_recommended_again() {
        let now = Instant::now();
        let mut a = Analyzer::new(168, MAX_RECORDS);
        let first = a.recommend("k", &easy(), &easy(), now);
        let second = a.recommend("k", &easy(), &easy(), now);
        assert_eq!((second.0, second.1), (MODE0, 1));
        // Plan 1 worked: -1 + 2 = 1 beats every 0.
        a.report_success("k", second.0, second.1, now);
        let third = a.recommend("k", &easy(), &easy(), now);
        assert_eq!((third.0, third.1), (MODE0, 1));
        assert_ne!((first.0, first.1), (third.0, third.1));
        // Scores stop at 10.
        for _ in 0..20 {
            a.report_success("k", MODE0, 1, now);
        }
        assert!(a.scores("k").iter().all(|s| s.2 <= 10));
        assert!(a.scores("k").contains(&(MODE0, 1, 10)));
    }

    #[test]
    fn public_network_side_receives_first() {
        let now = Instant::now();
        let mut a = Analyzer::new(168, MAX_RECORDS);
        let public = NatFeature {
            public_network: true,
            ..easy()
        };
        // Client public: plans where A (the client) receives score 1.
        let (mode, index, c, v) = a.recommend("c", &public, &easy(), now);
        assert_eq!((mode, index), (MODE0, 1));
        assert_eq!((c.role, c.ttl, v.role), (ROLE_RECEIVER, 7, ROLE_SENDER));
        // Visitor public: plans where A (the client) sends score 1.
        let (mode, index, c, v) = a.recommend("v", &easy(), &public, now);
        assert_eq!((mode, index), (MODE0, 0));
        assert_eq!((c.role, v.role, v.ttl), (ROLE_SENDER, ROLE_RECEIVER, 7));
    }

    #[test]
    fn seeds_by_nat_kinds() {
        let now = Instant::now();
        let modes = |c: &NatFeature, v: &NatFeature| -> Vec<i64> {
            let mut a = Analyzer::new(168, MAX_RECORDS);
            a.recommend("k", c, v, now);
            let mut m: Vec<i64> = a.scores("k").iter().map(|s| s.0).collect();
            m.dedup();
            m
        };
        assert_eq!(modes(&easy(), &hard(true)), vec![MODE1, MODE2, MODE0]);
        assert_eq!(modes(&hard(false), &easy()), vec![MODE2, MODE1, MODE0]);
        assert_eq!(modes(&hard(true), &hard(true)), vec![MODE3, MODE4]);
        assert_eq!(modes(&hard(true), &hard(false)), vec![MODE4]);
        assert_eq!(modes(&hard(false), &hard(false)), vec![MODE0, MODE1, MODE3]);
        let mut a = Analyzer::new(168, MAX_RECORDS);
        a.recommend("k", &hard(false), &hard(false), now);
        // "Just trying it out": everything starts at 1 (the first one already used).
        assert_eq!(a.scores("k")[0], (MODE0, 0, 0));
        assert!(a.scores("k")[1..].iter().all(|s| s.2 == 1));
        assert_eq!(a.scores("k").len(), 10 + 6 + 6);
    }

    #[test]
    fn roles_follow_the_nats() {
        let now = Instant::now();
        // Mode 1: the hard side sends.
        let mut a = Analyzer::new(168, MAX_RECORDS);
        let (mode, _, c, v) = a.recommend("k", &easy(), &hard(true), now);
        assert_eq!(mode, MODE1);
        assert_eq!(
            (c.role, c.ttl, c.ports_range_number),
            (ROLE_RECEIVER, 7, 10)
        );
        assert_eq!(v.role, ROLE_SENDER);
        let (_, _, c, v) = a.recommend("k2", &hard(true), &easy(), now);
        assert_eq!((c.role, v.role), (ROLE_SENDER, ROLE_RECEIVER));

        // Mode 2: the hard side receives on 256 ports; the easy one sends to 1000.
        let (mode, _, c, v) = a.recommend("k3", &hard(false), &easy(), now);
        assert_eq!(mode, MODE2);
        assert_eq!((c.role, c.listen_random_ports), (ROLE_RECEIVER, 256));
        assert_eq!(
            (v.role, v.ports_random_number, v.send_delay_ms),
            (ROLE_SENDER, 1000, 3000)
        );
        let (_, _, c, v) = a.recommend("k4", &easy(), &hard(false), now);
        assert_eq!((c.role, v.role), (ROLE_SENDER, ROLE_RECEIVER));

        // Mode 4: the regular side sends.
        let (mode, _, c, v) = a.recommend("k5", &hard(false), &hard(true), now);
        assert_eq!(mode, MODE4);
        assert_eq!((c.role, c.ports_range_number), (ROLE_RECEIVER, 2));
        assert_eq!(v.role, ROLE_SENDER);
        let (_, _, c, _) = a.recommend("k6", &hard(true), &hard(false), now);
        assert_eq!(c.role, ROLE_SENDER);
    }

    #[test]
    fn out_of_range_plans_are_empty_and_records_are_capped() {
        assert_eq!(behavior_pair(MODE2, 3), Default::default());
        assert_eq!(behavior_pair(42, 0), behavior_pair(MODE0, 0));
        let t0 = Instant::now();
        let mut a = Analyzer::new(168, 2);
        a.recommend("a", &easy(), &easy(), t0);
        a.recommend("b", &easy(), &easy(), t0 + Duration::from_secs(1));
        a.recommend("a", &easy(), &easy(), t0 + Duration::from_secs(2));
        // "b" is now the least recently used: "c" takes its place.
        a.recommend("c", &easy(), &easy(), t0 + Duration::from_secs(3));
        assert_eq!(a.len(), 2);
        assert!(a.records.contains_key("a") && a.records.contains_key("c"));
    }
}
