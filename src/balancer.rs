//! Weighted pick with warmup weights: a primary plus N distinct fallbacks, never a draining or
//! down instance.
//!
//! Weights are computed once per rebuild and cached; while any instance is warming up (or has a
//! start time in the future) the cache is refreshed at most `refresh_ms` later (default 100 ms),
//! so a pick's weight is never staler than that. With no instance warming the cache changes only
//! when the membership does. A pick is O(log n): a binary search over prefix sums (random) or a
//! binary heap (round robin); O(1) with equal weights (a uniform draw, or the next member in turn).
//!
//! With [`OverloadProtection`] configured, each rebuild first decides whether it is in force for
//! the members as they are then; while it is, every serving instance gets its full weight.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use crate::clock::Rng;
use crate::instance::Instance;
use crate::warmup::{Curve, OverloadProtection, WarmingShare};

/// How the primary is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// Dubbo `RandomLoadBalance`: weighted random by prefix sums; uniform when all weights are equal
    /// or all are zero.
    Random,
    /// Weighted round robin, earliest-deadline-first (as Envoy's weighted round robin): the same
    /// long-run shares as Dubbo's smooth weighted round robin, O(log n) per pick instead of O(n).
    /// With equal weights (every instance warm), the members in address order from a random
    /// start, as Envoy's round robin without weights.
    /// The default: it spreads concurrent requests evenly, so Envoy holds fewer upstream HTTP/1.1
    /// connections than with random picks (cheaper per request at 100 and 10,000 instances, see
    /// BENCHMARKS.md).
    #[default]
    RoundRobin,
}

/// Why no instance could be picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoPick {
    /// The service has no instances at all.
    Empty,
    /// Instances exist, but none is serving (all draining or down).
    NoneServing,
}

#[derive(Debug, Clone, Copy)]
struct Deadline {
    at: f64,
    slot: u32,
}

impl PartialEq for Deadline {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Deadline {}
impl PartialOrd for Deadline {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Deadline {
    // Reversed: BinaryHeap is a max-heap and we want the earliest deadline on top.
    fn cmp(&self, o: &Self) -> Ordering {
        o.at.total_cmp(&self.at).then_with(|| o.slot.cmp(&self.slot))
    }
}

/// The cached pick table of one service in one VM.
#[derive(Debug, Clone)]
pub struct Balancer {
    policy: Policy,
    curve: Curve,
    overload_protection: Option<OverloadProtection>,
    /// The protection was in force at the last rebuild: the cached weights are full weights.
    protected: bool,
    refresh_ms: i64,
    /// Index into the member list of each serving instance ("slot").
    slots: Vec<u32>,
    /// Current weight of each slot.
    weights: Vec<u32>,
    /// Inclusive prefix sums of `weights`.
    prefix: Vec<u64>,
    total: u64,
    /// Slots whose weight is positive (counted on rebuild, not per pick).
    positive: usize,
    /// All slot weights equal (or all zero): pick uniformly, as Dubbo does.
    uniform: bool,
    members: usize,
    /// When the cached weights must be recomputed (`i64::MAX`: only on membership change).
    next_refresh_ms: i64,
    heap: BinaryHeap<Deadline>,
    /// Round robin over equal weights: the next slot. Each round visits every slot once in
    /// member (address) order, from a random start, as Envoy's round robin walks its host set
    /// from a random seed when no weights differ (`RoundRobinLoadBalancer::unweightedHostPick`,
    /// source/extensions/load_balancing_policies/round_robin/round_robin_lb.h). A pick touches no
    /// table, and Envoy's per-host data is walked in the order of its host set where that follows
    /// the addresses (BENCHMARKS.md: a shuffled order costs Envoy more per request at 10,000
    /// instances).
    turn: usize,
    /// Scratch for fallbacks.
    chosen: Vec<u32>,
}

impl Balancer {
    pub fn new(policy: Policy, curve: Curve, refresh_ms: i64) -> Self {
        Balancer {
            policy,
            curve,
            overload_protection: None,
            protected: false,
            refresh_ms: refresh_ms.max(1),
            slots: Vec::new(),
            weights: Vec::new(),
            prefix: Vec::new(),
            total: 0,
            positive: 0,
            uniform: true,
            members: 0,
            next_refresh_ms: i64::MIN,
            heap: BinaryHeap::new(),
            turn: 0,
            chosen: Vec::new(),
        }
    }

    /// With `rule`, warm-up stops while it is in force ([`OverloadProtection`]); `None` (the
    /// default) keeps every instance on its curve.
    pub fn with_overload_protection(mut self, rule: Option<OverloadProtection>) -> Self {
        self.overload_protection = rule;
        self.next_refresh_ms = i64::MIN;
        self
    }

    /// The overload protection this balancer applies, if any.
    pub fn overload_protection(&self) -> Option<OverloadProtection> {
        self.overload_protection
    }

    /// True when the cached weights are the protected ones: the overload protection was in force
    /// at the last rebuild, and every warming instance is weighted as warm.
    pub fn overload_protected(&self) -> bool {
        self.protected
    }

    /// Recomputes the table for `members` at `now_ms`. O(n) (twice over the members with the
    /// overload protection configured: once to count, once to weigh).
    pub fn rebuild(&mut self, members: &[Instance], now_ms: i64, rng: &mut Rng) {
        self.protected = self.overload_protection.is_some_and(|r| r.in_force(WarmingShare::of(members, now_ms)));
        self.slots.clear();
        self.weights.clear();
        self.prefix.clear();
        self.members = members.len();
        let mut total = 0u64;
        let mut positive = 0usize;
        let mut next = i64::MAX;
        let mut first: Option<u32> = None;
        let mut uniform = true;
        for (i, m) in members.iter().enumerate() {
            if !m.state.is_serving() {
                continue;
            }
            let w = if self.protected {
                // Polaris hands the load balancer the weights as they were before warm-up
                m.weight.max(0) as u32
            } else {
                self.curve.weight(m.weight, m.start_ms, m.warmup_ms, now_ms).max(0) as u32
            };
            if let Some(ts) = m.start_ms.filter(|t| *t > 0) {
                // still warming, or start time ahead of our clock: follow the curve (and, with
                // the overload protection, the share of warming instances, which moves with it)
                if now_ms.saturating_sub(ts) < m.warmup_ms {
                    next = next.min(now_ms.saturating_add(self.refresh_ms));
                }
            }
            match first {
                None => first = Some(w),
                Some(f) if f != w => uniform = false,
                _ => {}
            }
            total += u64::from(w);
            positive += usize::from(w > 0);
            self.slots.push(i as u32);
            self.weights.push(w);
            self.prefix.push(total);
        }
        self.total = total;
        self.positive = positive;
        self.uniform = uniform || total == 0;
        self.next_refresh_ms = next;
        if self.policy == Policy::RoundRobin {
            self.reset_round_robin(rng);
        }
    }

    fn reset_round_robin(&mut self, rng: &mut Rng) {
        self.heap.clear();
        self.turn = 0;
        if self.uniform {
            // a random start so that a fleet of proxies does not start on the same instance
            self.turn = rng.below(self.slots.len() as u64) as usize;
            return;
        }
        for (slot, w) in self.weights.iter().enumerate() {
            if *w == 0 {
                continue;
            }
            let step = 1.0 / f64::from(*w);
            // a random phase so that a fleet of proxies does not start on the same instance
            let phase = (rng.below(1 << 20) as f64) / f64::from(1u32 << 20) * step;
            self.heap.push(Deadline { at: phase, slot: slot as u32 });
        }
    }

    /// Rebuilds when the cached weights are older than the staleness bound.
    pub fn refresh_if_due(&mut self, members: &[Instance], now_ms: i64, rng: &mut Rng) {
        if now_ms >= self.next_refresh_ms || members.len() != self.members {
            self.rebuild(members, now_ms, rng);
        }
    }

    /// True while some instance is still warming up (weights follow the clock).
    pub fn warming(&self) -> bool {
        self.next_refresh_ms != i64::MAX
    }

    /// The cached weight of member `i` (0 when it is not serving).
    pub fn weight_of(&self, member: usize) -> u32 {
        match self.slots.binary_search(&(member as u32)) {
            Ok(s) => self.weights.get(s).copied().unwrap_or(0),
            Err(_) => 0,
        }
    }

    /// Number of serving instances.
    pub fn serving(&self) -> usize {
        self.slots.len()
    }

    /// Picks a primary and up to `fallbacks` distinct further instances, in weighted order, into
    /// `out` as member indices. O(log n) for the primary, O(log n) expected per fallback.
    pub fn pick(&mut self, rng: &mut Rng, fallbacks: usize, out: &mut Vec<usize>) -> Result<(), NoPick> {
        out.clear();
        if self.slots.is_empty() {
            return Err(if self.members == 0 { NoPick::Empty } else { NoPick::NoneServing });
        }
        let primary = match self.policy {
            Policy::Random => self.random_slot(rng),
            Policy::RoundRobin => self.rr_slot(),
        };
        self.chosen.clear();
        self.chosen.push(primary);
        // an instance whose weight is 0 is an operator's "no traffic" (Nacos' client drops
        // weight <= 0): never a fallback while any instance has a positive weight
        let candidates = if self.total > 0 { self.positive } else { self.slots.len() };
        let want = fallbacks.min(candidates.saturating_sub(1));
        while self.chosen.len() <= want {
            let s = self.fallback_slot(rng);
            self.chosen.push(s);
        }
        out.extend(self.chosen.iter().filter_map(|s| self.slots.get(*s as usize)).map(|m| *m as usize));
        Ok(())
    }

    fn random_slot(&self, rng: &mut Rng) -> u32 {
        let n = self.slots.len() as u64;
        if self.uniform {
            return rng.below(n) as u32;
        }
        let offset = rng.below(self.total);
        // first slot whose inclusive prefix sum exceeds offset (Dubbo: offset < prefix[i])
        self.prefix.partition_point(|p| *p <= offset) as u32
    }

    fn rr_slot(&mut self) -> u32 {
        if self.uniform {
            let s = self.turn % self.slots.len().max(1);
            self.turn = s + 1;
            return s as u32;
        }
        let Some(top) = self.heap.pop() else {
            return 0;
        };
        let w = self.weights.get(top.slot as usize).copied().unwrap_or(0);
        let step = if w == 0 { 1.0 } else { 1.0 / f64::from(w) };
        self.heap.push(Deadline { at: top.at + step, slot: top.slot });
        top.slot
    }

    /// A weighted draw without replacement: rejection first (cheap while the chosen ones hold
    /// little of the weight), then a scan from a random start that meets at most `chosen.len()`
    /// taken slots before it finds a free one (positive weight first).
    fn fallback_slot(&self, rng: &mut Rng) -> u32 {
        for _ in 0..16 {
            let s = self.random_slot(rng);
            if !self.chosen.contains(&s) {
                return s;
            }
        }
        let n = self.slots.len();
        let start = rng.below(n as u64) as usize;
        let mut zero_weight = None;
        for k in 0..n {
            let s = ((start + k) % n) as u32;
            if self.chosen.contains(&s) {
                continue;
            }
            if self.total == 0 || self.weights.get(s as usize).copied().unwrap_or(0) > 0 {
                return s;
            }
            zero_weight.get_or_insert(s);
        }
        zero_weight.unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::State;

    const NOW: i64 = 1_800_000_000_000;

    fn m(i: usize, w: i32, state: State, start: Option<i64>, warmup: i64) -> Instance {
        Instance {
            addr: format!("10.0.{}.{}:80", i / 250, i % 250),
            weight: w,
            start_ms: start,
            warmup_ms: warmup,
            state,
        }
    }

    fn shares(b: &mut Balancer, n: usize, picks: usize, rng: &mut Rng) -> Vec<f64> {
        let mut counts = vec![0usize; n];
        let mut out = Vec::new();
        for _ in 0..picks {
            b.pick(rng, 0, &mut out).unwrap();
            counts[out[0]] += 1;
        }
        counts.iter().map(|c| *c as f64 * 100.0 / picks as f64).collect()
    }

    fn members_1_2_7_warming() -> Vec<Instance> {
        vec![
            m(0, 100, State::Serving, None, 0),
            m(1, 200, State::Serving, None, 0),
            m(2, 700, State::Serving, None, 0),
            // 25 % of a 100 s warmup, weight 400 -> Dubbo weight 100
            m(3, 400, State::Serving, Some(NOW - 25_000), 100_000),
            m(4, 500, State::Draining, None, 0),
            m(5, 500, State::Down, None, 0),
        ]
    }

    #[test]
    fn shares_within_one_point_both_policies() {
        let ms = members_1_2_7_warming();
        // expected: weights 100, 200, 700, 100 of total 1100
        let want = [100.0 / 11.0, 200.0 / 11.0, 700.0 / 11.0, 100.0 / 11.0, 0.0, 0.0];
        for policy in [Policy::Random, Policy::RoundRobin] {
            let mut rng = Rng::new(42);
            let mut b = Balancer::new(policy, Curve::default(), 100);
            b.rebuild(&ms, NOW, &mut rng);
            assert_eq!(b.weight_of(3), 100);
            assert!(b.warming());
            let got = shares(&mut b, ms.len(), 100_000, &mut rng);
            for i in 0..ms.len() {
                assert!(
                    (got[i] - want[i]).abs() <= 1.0,
                    "{policy:?} instance {i}: got {:.2}% want {:.2}%",
                    got[i],
                    want[i]
                );
            }
            assert_eq!(got[4], 0.0, "draining never picked");
            assert_eq!(got[5], 0.0, "down never picked");
        }
    }

    /// Registry weight 0 is an operator's "no traffic" (Nacos' client drops `weight <= 0`,
    /// NacosNamingService / Balancer.getHostByRandomWeight): never a primary, never a fallback,
    /// while any instance has a positive weight; when none has, they are all that is left.
    #[test]
    fn weight_zero_is_never_picked_while_others_have_weight() {
        let ms = vec![
            m(0, 0, State::Serving, None, 0),
            m(1, 100, State::Serving, None, 0),
            m(2, 100, State::Serving, None, 0),
        ];
        for policy in [Policy::Random, Policy::RoundRobin] {
            let mut rng = Rng::new(9);
            let mut b = Balancer::new(policy, Curve::default(), 100);
            b.rebuild(&ms, NOW, &mut rng);
            let mut out = Vec::new();
            for _ in 0..5000 {
                b.pick(&mut rng, 2, &mut out).unwrap();
                assert!(!out.contains(&0), "{policy:?}: {out:?}");
                assert_eq!(out.len(), 2, "only the two weighted instances: {out:?}");
            }
            let zeros = vec![m(0, 0, State::Serving, None, 0), m(1, 0, State::Serving, None, 0)];
            b.rebuild(&zeros, NOW, &mut rng);
            b.pick(&mut rng, 2, &mut out).unwrap();
            assert_eq!(out.len(), 2, "{policy:?}: all weight 0: picked among them");
        }
    }

    #[test]
    fn weights_follow_the_clock() {
        let ms = members_1_2_7_warming();
        let mut rng = Rng::new(1);
        let mut b = Balancer::new(Policy::Random, Curve::default(), 100);
        b.rebuild(&ms, NOW, &mut rng);
        assert_eq!(b.weight_of(3), 100);
        // 50 ms later: not yet due (staleness bound 100 ms)
        b.refresh_if_due(&ms, NOW + 50, &mut rng);
        assert_eq!(b.weight_of(3), 100);
        b.refresh_if_due(&ms, NOW + 25_000, &mut rng);
        assert_eq!(b.weight_of(3), 200);
        b.refresh_if_due(&ms, NOW + 80_000, &mut rng);
        assert_eq!(b.weight_of(3), 400);
        assert!(!b.warming());
    }

    #[test]
    fn fallbacks_distinct_weighted_and_serving() {
        let ms = members_1_2_7_warming();
        for policy in [Policy::Random, Policy::RoundRobin] {
            let mut rng = Rng::new(9);
            let mut b = Balancer::new(policy, Curve::default(), 100);
            b.rebuild(&ms, NOW, &mut rng);
            let mut out = Vec::new();
            let mut second = [0usize; 6];
            for _ in 0..20_000 {
                b.pick(&mut rng, 5, &mut out).unwrap();
                // only 4 serving: primary + 3 fallbacks
                assert_eq!(out.len(), 4);
                let mut sorted = out.clone();
                sorted.sort();
                sorted.dedup();
                assert_eq!(sorted.len(), 4, "distinct: {out:?}");
                assert!(out.iter().all(|i| ms[*i].state == State::Serving));
                second[out[1]] += 1;
            }
            if policy == Policy::Random {
                // weighted draw without replacement: P(second = j) = sum over i != j of p_i * p_j / (1 - p_i)
                let p = [1.0 / 11.0, 2.0 / 11.0, 7.0 / 11.0, 1.0 / 11.0];
                for j in 0..4 {
                    let want: f64 = (0..4).filter(|i| *i != j).map(|i| p[i] * p[j] / (1.0 - p[i])).sum::<f64>() * 100.0;
                    let got = second[j] as f64 * 100.0 / 20_000.0;
                    assert!((got - want).abs() < 1.5, "second pick {j}: got {got:.2}% want {want:.2}%");
                }
            }
        }
    }

    #[test]
    fn dominant_weight_fallbacks_terminate() {
        // one instance holds nearly all weight: rejection fails, the scan finds the other weighted
        // one; the weight-0 instance is no fallback
        let ms = vec![
            m(0, 1_000_000, State::Serving, None, 0),
            m(1, 1, State::Serving, None, 0),
            m(2, 0, State::Serving, None, 0),
        ];
        let mut rng = Rng::new(3);
        let mut b = Balancer::new(Policy::Random, Curve::default(), 100);
        b.rebuild(&ms, NOW, &mut rng);
        let mut out = Vec::new();
        b.pick(&mut rng, 2, &mut out).unwrap();
        let mut s = out.clone();
        s.sort();
        assert_eq!(s, vec![0, 1]);
    }

    #[test]
    fn empty_and_all_draining_are_outcomes() {
        let mut rng = Rng::new(3);
        let mut out = Vec::new();
        let mut b = Balancer::new(Policy::Random, Curve::default(), 100);
        b.rebuild(&[], NOW, &mut rng);
        assert_eq!(b.pick(&mut rng, 1, &mut out), Err(NoPick::Empty));
        let ms = vec![m(0, 100, State::Draining, None, 0), m(1, 100, State::Down, None, 0)];
        b.rebuild(&ms, NOW, &mut rng);
        assert_eq!(b.pick(&mut rng, 1, &mut out), Err(NoPick::NoneServing));
        assert!(out.is_empty());
        let mut rr = Balancer::new(Policy::RoundRobin, Curve::default(), 100);
        rr.rebuild(&ms, NOW, &mut rng);
        assert_eq!(rr.pick(&mut rng, 1, &mut out), Err(NoPick::NoneServing));
    }

    #[test]
    fn sizes_1_2_10000() {
        let mut rng = Rng::new(11);
        for n in [1usize, 2, 10_000] {
            let ms: Vec<Instance> = (0..n).map(|i| m(i, 1 + (i % 7) as i32, State::Serving, None, 0)).collect();
            for policy in [Policy::Random, Policy::RoundRobin] {
                let mut b = Balancer::new(policy, Curve::default(), 100);
                b.rebuild(&ms, NOW, &mut rng);
                let mut out = Vec::new();
                for _ in 0..1000 {
                    b.pick(&mut rng, 2, &mut out).unwrap();
                    assert_eq!(out.len(), n.min(3));
                    assert!(out.iter().all(|i| *i < n));
                }
            }
        }
    }

    #[test]
    fn all_zero_weights_pick_uniformly() {
        let ms: Vec<Instance> = (0..4).map(|i| m(i, 0, State::Serving, None, 0)).collect();
        let mut rng = Rng::new(5);
        let mut b = Balancer::new(Policy::Random, Curve::default(), 100);
        b.rebuild(&ms, NOW, &mut rng);
        let got = shares(&mut b, 4, 40_000, &mut rng);
        assert!(got.iter().all(|s| (s - 25.0).abs() < 1.5), "{got:?}");
    }

    /// 2 warm instances and 6 a quarter into a 100 s warmup (Dubbo weight 25 of 100).
    fn scale_out_2_to_8() -> Vec<Instance> {
        let mut ms = vec![m(0, 100, State::Serving, None, 0), m(1, 100, State::Serving, None, 0)];
        ms.extend((2..8).map(|i| m(i, 100, State::Serving, Some(NOW - 25_000), 100_000)));
        ms
    }

    fn protected(policy: Policy, t: u32) -> Balancer {
        Balancer::new(policy, Curve::default(), 100)
            .with_overload_protection(Some(OverloadProtection { threshold_percent: t }))
    }

    /// In a 2 -> 8 scale-out the two warm instances would take 100/350 of the picks each; with the
    /// protection in force (6 of 8 warming) every instance takes an eighth, through both policies.
    #[test]
    fn overload_protection_in_force_picks_by_full_weight() {
        let ms = scale_out_2_to_8();
        for policy in [Policy::Random, Policy::RoundRobin] {
            let mut rng = Rng::new(17);
            let mut off = Balancer::new(policy, Curve::default(), 100);
            off.rebuild(&ms, NOW, &mut rng);
            assert!(!off.overload_protected());
            assert_eq!((off.weight_of(0), off.weight_of(2)), (100, 25));
            let got = shares(&mut off, ms.len(), 80_000, &mut rng);
            assert!((got[0] - 100.0 / 3.5).abs() < 1.0, "{policy:?} off: {got:?}");

            let mut on = protected(policy, 50);
            on.rebuild(&ms, NOW, &mut rng);
            assert!(on.overload_protected());
            assert!(on.warming(), "still refreshed while instances warm");
            for i in 0..ms.len() {
                assert_eq!(on.weight_of(i), 100, "{policy:?} member {i}");
            }
            let got = shares(&mut on, ms.len(), 80_000, &mut rng);
            for (i, g) in got.iter().enumerate() {
                assert!((g - 12.5).abs() < 1.0, "{policy:?} on, member {i}: {got:?}");
            }
            // 75 % warming is below a threshold of 76: the ramp stays
            let mut high = protected(policy, 76);
            high.rebuild(&ms, NOW, &mut rng);
            assert!(!high.overload_protected());
            assert_eq!(high.weight_of(2), 25);
        }
    }

    /// The verdict follows the clock: the new instances finish one by one, the protection lifts
    /// at 3 of 8 and the three still warming go back on their ramp (not to full weight).
    #[test]
    fn overload_protection_lifts_as_instances_finish() {
        let mut ms = vec![m(0, 100, State::Serving, None, 0), m(1, 100, State::Serving, None, 0)];
        // started 10 s apart, 100 s warmup: member 2 started at NOW - 50 s ... member 7 at NOW
        ms.extend((2..8).map(|i| m(i, 100, State::Serving, Some(NOW - (7 - i as i64) * 10_000), 100_000)));
        let mut rng = Rng::new(2);
        let mut b = protected(Policy::RoundRobin, 50);
        b.rebuild(&ms, NOW, &mut rng);
        assert!(b.overload_protected());
        assert_eq!(b.weight_of(7), 100);
        // at NOW + 60 s members 2 and 3 are warm: 4 of 8, still in force
        b.refresh_if_due(&ms, NOW + 60_000, &mut rng);
        assert!(b.overload_protected());
        // at NOW + 70 s member 4 too: 3 of 8, lifted; members 5, 6, 7 are 90, 80, 70 s in
        b.refresh_if_due(&ms, NOW + 70_000, &mut rng);
        assert!(!b.overload_protected());
        assert_eq!((b.weight_of(4), b.weight_of(5), b.weight_of(6), b.weight_of(7)), (100, 90, 80, 70));
        assert!(b.warming());
        b.refresh_if_due(&ms, NOW + 100_000, &mut rng);
        assert!(!b.overload_protected());
        assert!(!b.warming());
    }

    /// Draining and down instances are not counted: with 2 of 4 warm ones draining or ejected,
    /// 2 warming of the 4 left is 50 %; and they stay unpicked while the protection is in force.
    #[test]
    fn overload_protection_without_draining_and_down() {
        let mut ms = vec![
            m(0, 100, State::Serving, None, 0),
            m(1, 100, State::Serving, None, 0),
            m(2, 100, State::Draining, None, 0),
            m(3, 100, State::Down, None, 0),
            m(4, 100, State::Serving, Some(NOW - 25_000), 100_000),
            m(5, 100, State::Serving, Some(NOW - 25_000), 100_000),
        ];
        let mut rng = Rng::new(4);
        let mut b = protected(Policy::Random, 50);
        b.rebuild(&ms, NOW, &mut rng);
        assert!(b.overload_protected());
        assert_eq!((b.weight_of(2), b.weight_of(3), b.weight_of(4)), (0, 0, 100));
        let got = shares(&mut b, ms.len(), 40_000, &mut rng);
        assert_eq!((got[2], got[3]), (0.0, 0.0));
        assert!((got[4] - 25.0).abs() < 1.5, "{got:?}");
        // back in service, they count again: 2 of 6
        ms[2].state = State::Serving;
        ms[3].state = State::Serving;
        b.rebuild(&ms, NOW, &mut rng);
        assert!(!b.overload_protected());
        assert_eq!(b.weight_of(4), 25);
    }

    #[test]
    fn overload_protection_one_instance() {
        let mut rng = Rng::new(6);
        let mut b = protected(Policy::RoundRobin, 50);
        let cold = vec![m(0, 100, State::Serving, Some(NOW - 25_000), 100_000)];
        b.rebuild(&cold, NOW, &mut rng);
        assert!(b.overload_protected(), "1 of 1 warming");
        assert_eq!(b.weight_of(0), 100);
        let mut out = Vec::new();
        b.pick(&mut rng, 2, &mut out).unwrap();
        assert_eq!(out, vec![0]);
        let warm = vec![m(0, 100, State::Serving, None, 0)];
        b.rebuild(&warm, NOW, &mut rng);
        assert!(!b.overload_protected());
    }

    /// Off (the default) or configured but not in force, the weights and the picks are exactly
    /// those without the rule.
    #[test]
    fn overload_protection_off_changes_nothing() {
        let mut ms = members_1_2_7_warming();
        ms.push(m(6, 300, State::Serving, Some(NOW - 10_000), 100_000));
        for policy in [Policy::Random, Policy::RoundRobin] {
            let mut plain = Balancer::new(policy, Curve::default(), 100);
            let mut none = Balancer::new(policy, Curve::default(), 100).with_overload_protection(None);
            let mut idle = protected(policy, 50);
            assert_eq!(none.overload_protection(), None);
            let (mut r1, mut r2, mut r3) = (Rng::new(8), Rng::new(8), Rng::new(8));
            plain.rebuild(&ms, NOW, &mut r1);
            none.rebuild(&ms, NOW, &mut r2);
            idle.rebuild(&ms, NOW, &mut r3);
            assert!(!idle.overload_protected(), "2 of 5 warming");
            for i in 0..ms.len() {
                assert_eq!(plain.weight_of(i), none.weight_of(i));
                assert_eq!(plain.weight_of(i), idle.weight_of(i));
            }
            assert_eq!((plain.weight_of(3), plain.weight_of(6)), (100, 30));
            let (mut o1, mut o2, mut o3) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..2000 {
                plain.pick(&mut r1, 2, &mut o1).unwrap();
                none.pick(&mut r2, 2, &mut o2).unwrap();
                idle.pick(&mut r3, 2, &mut o3).unwrap();
                assert_eq!(o1, o2);
                assert_eq!(o1, o3);
            }
        }
    }

    #[test]
    fn round_robin_is_smooth() {
        // weights 5,1,1: within every window of 7 picks each gets exactly its weight
        let ms =
            vec![m(0, 5, State::Serving, None, 0), m(1, 1, State::Serving, None, 0), m(2, 1, State::Serving, None, 0)];
        let mut rng = Rng::new(5);
        let mut b = Balancer::new(Policy::RoundRobin, Curve::default(), 100);
        b.rebuild(&ms, NOW, &mut rng);
        let mut out = Vec::new();
        let seq: Vec<usize> = (0..70)
            .map(|_| {
                b.pick(&mut rng, 0, &mut out).unwrap();
                out[0]
            })
            .collect();
        for w in seq.chunks(7) {
            assert_eq!(w.iter().filter(|i| **i == 0).count(), 5, "{seq:?}");
        }
    }

    #[test]
    fn round_robin_over_equal_weights_walks_members_in_order() {
        // every round visits each serving instance once, in member (address) order, skipping the
        // draining instance; where a round starts differs between proxies (a random start)
        let mut ms: Vec<Instance> = (0..8).map(|i| m(i, 100, State::Serving, None, 0)).collect();
        ms[3].state = State::Draining;
        let rounds = |seed: u64| {
            let mut rng = Rng::new(seed);
            let mut b = Balancer::new(Policy::RoundRobin, Curve::default(), 100);
            b.rebuild(&ms, NOW, &mut rng);
            let mut out = Vec::new();
            (0..21)
                .map(|_| {
                    b.pick(&mut rng, 0, &mut out).unwrap();
                    out[0]
                })
                .collect::<Vec<usize>>()
        };
        let serving = [0, 1, 2, 4, 5, 6, 7];
        let mut starts = std::collections::BTreeSet::new();
        for seed in 0..64 {
            let seq = rounds(seed);
            let start = serving.iter().position(|i| *i == seq[0]).unwrap();
            let expected: Vec<usize> = (0..21).map(|k| serving[(start + k) % serving.len()]).collect();
            assert_eq!(seq, expected, "seed {seed}");
            starts.insert(seq[0]);
        }
        assert_eq!(starts.len(), serving.len(), "every serving instance starts some proxy's round: {starts:?}");
    }
}
