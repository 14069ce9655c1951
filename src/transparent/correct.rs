//! The decision for one request whose caller picked the instance itself: keep the pick, move it
//! to another member of the same service, or leave the request untouched.

use crate::clock::Rng;
use crate::instance::{position, Instance, State};

use super::estimate::Picks;
use super::index::{Found, Lookup};
use super::shares::{targets, unit, Plan};

/// Why a request is left as the caller sent it (to the address it picked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Untouched {
    /// The address belongs to no configured service.
    Unknown,
    /// Several services have the address and the request names none (or several) of them.
    Ambiguous,
    /// The address belongs to a service that is not corrected.
    NotCorrected,
    /// The pick is not serving and no member of its service serves either: the caller's pick is
    /// the best there is (what would happen without lossless).
    NoneServing,
    /// The request's `:path` starts with one of the service's `transparent.exclude_paths`: a
    /// call meant for the instance the caller picked (a metrics scrape, an actuator call).
    Excluded,
}

impl Untouched {
    pub fn as_str(self) -> &'static str {
        match self {
            Untouched::Unknown => "unknown",
            Untouched::Ambiguous => "ambiguous",
            Untouched::NotCorrected => "not_corrected",
            Untouched::NoneServing => "none_serving",
            Untouched::Excluded => "excluded",
        }
    }
}

/// Why a pick was moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// The picked member is draining (registry, drain header).
    Draining,
    /// The picked member is down (registry health, ejected by outlier detection, failing active
    /// checks).
    Down,
    /// The picked address left the service's membership.
    Departed,
    /// The picked member serves but receives more picks than its warm-up share (typically: it is
    /// still warming and the caller does not apply warm-up weights).
    Share,
}

impl Why {
    /// Every reason, in the order of [`Why::index`].
    pub const ALL: [Why; 4] = [Why::Draining, Why::Down, Why::Departed, Why::Share];

    /// The reason's position in [`Why::ALL`] (for counters).
    pub fn index(self) -> usize {
        match self {
            Why::Draining => 0,
            Why::Down => 1,
            Why::Departed => 2,
            Why::Share => 3,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Why::Draining => "draining",
            Why::Down => "down",
            Why::Departed => "departed",
            Why::Share => "share",
        }
    }
}

/// What to do with the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Forward to the caller's own pick; lossless does not touch the request's destination.
    Untouched(Untouched),
    /// The pick stays: member `member` of `service`.
    Keep { service: usize, member: usize },
    /// The pick moves to member `to` of `service`.
    Redirect { service: usize, to: usize, why: Why },
}

/// The correction of one service in one VM: the [`Plan`] built from its members' live weights
/// and the callers' pick estimate, and the state that spreads its decisions evenly.
///
/// The plan's probabilities are applied as evenly as they can be, not drawn independently per
/// request: a pick of member `i` adds `p_i` to `i`'s keep credit and is kept when the credit
/// reaches 1 (one whole pick, then taken from it), so that of any `k` picks of `i` the number
/// kept differs from `k · p_i` by less than one; a redirect's member is read from the plan's
/// redirect distribution at the next point of a golden-ratio (Weyl) sequence, which spreads the
/// redirects over the distribution with discrepancy O(log k / k) where independent draws have
/// O(1/√k). A warming instance thus receives its share pick by pick, not in random runs, and a
/// share measured over a few hundred requests is its target to within about a request. The
/// credits start at random points, so that neither the workers nor the sidecars act in step.
#[derive(Debug, Clone, Default)]
pub struct Corrector {
    plan: Plan,
    /// Number of members the plan was built for.
    members: usize,
    /// When the plan was built (ms since the epoch).
    pub planned_ms: i64,
    /// Per member, the keep credit in `[0, 1)` (empty until the first decision after a change of
    /// the members).
    keep_credit: Vec<f64>,
    /// The Weyl sequence's current point in `[0, 1)` (`None` until the first redirect).
    redirect_point: Option<f64>,
}

/// The pseudo-picks by target the estimate is read with: `prior_picks` while the evidence is at
/// most that many picks, then `prior_picks² / evidence`, so that its pull toward the targets
/// (which under-corrects: a warming instance short by `prior / (prior + evidence)` of its
/// deficit) falls with the square of the evidence; 0 for a value that is not a non-negative
/// number. With the defaults (5 pseudo-picks, a 0.5 s half-life) a caller at 100 requests per
/// second carries about 72 picks of evidence: the pull is 0.5 % of the deficit, where a fixed
/// prior's would be 6.5 %.
fn fading_prior(prior_picks: f64, evidence: f64) -> f64 {
    let prior = if prior_picks.is_finite() { prior_picks.max(0.0) } else { 0.0 };
    if evidence.is_finite() && evidence > prior {
        prior * prior / evidence
    } else {
        prior
    }
}

/// `1/φ`, the Weyl sequence's step: its points fill `[0, 1)` most evenly.
const GOLDEN_STEP: f64 = 0.618_033_988_749_894_9;

impl Corrector {
    /// Rebuilds the plan (O(n)) for `members` (sorted, marks applied), their live weights
    /// (`weight(i)`: Dubbo's warm-up weight of member `i` now, as the service's balancer holds it;
    /// 0 for one that is not serving) and the pick estimate `picks`. `prior_picks` pseudo-picks
    /// distributed by the targets start the estimate at "the callers already pick by weight", so
    /// that with little evidence the picks are kept. Must be called after every change of
    /// `members` (the plan is indexed like them), and every few hundred ms as weights and the
    /// estimate move.
    pub fn replan(
        &mut self,
        members: &[Instance],
        weight: impl Fn(usize) -> u32,
        picks: &Picks,
        prior_picks: f64,
        now_ms: i64,
    ) {
        let serving: Vec<bool> = members.iter().map(|m| m.state.is_serving()).collect();
        let weights: Vec<u32> = (0..members.len()).map(&weight).collect();
        let t = targets(&weights, &serving);
        let evidence = picks.total();
        let prior = fading_prior(prior_picks, evidence);
        let total = evidence + prior;
        let q: Vec<f64> = if total > 0.0 {
            members.iter().zip(&t).map(|(m, t)| (picks.count(&m.addr) + prior * t) / total).collect()
        } else {
            t.clone()
        };
        self.plan = Plan::new(&t, &q);
        if self.members != members.len() {
            self.keep_credit.clear();
        }
        self.members = members.len();
        self.planned_ms = now_ms;
    }

    /// Whether this pick of member `i` stays: its keep credit grows by `p_i` and a whole pick of
    /// it is kept (see [`Corrector`]).
    fn keeps(&mut self, i: usize, rng: &mut Rng) -> bool {
        let p = self.plan.keep_probability(i);
        if p >= 1.0 {
            return true;
        }
        if self.keep_credit.len() != self.members {
            self.keep_credit = (0..self.members).map(|_| unit(rng)).collect();
        }
        let Some(credit) = self.keep_credit.get_mut(i) else { return true };
        *credit += p;
        if *credit >= 1.0 {
            *credit -= 1.0;
            true
        } else {
            false
        }
    }

    /// The member the next redirect goes to: the plan's redirect distribution read at the Weyl
    /// sequence's next point (see [`Corrector`]).
    fn redirect(&mut self, rng: &mut Rng) -> Option<usize> {
        let point = (self.redirect_point.unwrap_or_else(|| unit(rng)) + GOLDEN_STEP).fract();
        self.redirect_point = Some(point);
        self.plan.redirect_at(point)
    }

    /// The current plan.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Decides for a request whose destination `addr` the index resolved to `found`, given the
    /// service's `members` (those the plan was built for). O(log n).
    pub fn decide(&mut self, found: Found, addr: &str, members: &[Instance], rng: &mut Rng) -> Decision {
        if !found.corrected {
            return Decision::Untouched(Untouched::NotCorrected);
        }
        let service = found.service;
        let picked = if found.live { position(members, addr) } else { None };
        let why = match picked.and_then(|i| members.get(i).map(|m| (i, m.state))) {
            Some((i, State::Serving)) => {
                if self.members != members.len() || self.keeps(i, rng) {
                    return Decision::Keep { service, member: i };
                }
                Why::Share
            }
            Some((_, State::Draining)) => Why::Draining,
            Some((_, State::Down)) => Why::Down,
            None => Why::Departed,
        };
        let planned = self.members == members.len();
        match self.redirect(rng).filter(|_| planned) {
            Some(to) if Some(to) == picked => Decision::Keep { service, member: to },
            Some(to) if members.get(to).is_some_and(|m| m.state.is_serving()) => {
                Decision::Redirect { service, to, why }
            }
            _ => Decision::Untouched(Untouched::NoneServing),
        }
    }
}

/// The whole request path of the mode on pure data: the index lookup, then the decision.
/// `members(k)` gives service `k`'s members and `corrector(k)` its corrector.
pub fn decide<'a>(
    lookup: Lookup,
    addr: &str,
    members: impl Fn(usize) -> Option<&'a [Instance]>,
    corrector: impl FnOnce(usize) -> Option<&'a mut Corrector>,
    rng: &mut Rng,
) -> Decision {
    match lookup {
        Lookup::Unknown => Decision::Untouched(Untouched::Unknown),
        Lookup::Ambiguous => Decision::Untouched(Untouched::Ambiguous),
        Lookup::Found(f) => match (members(f.service), corrector(f.service)) {
            (Some(ms), Some(c)) => c.decide(f, addr, ms, rng),
            _ => Decision::Untouched(Untouched::NotCorrected),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transparent::departed::Departed;
    use crate::transparent::estimate::Pending;
    use crate::transparent::index::{AddressIndex, Source};
    use crate::warmup::dubbo_weight;

    const NOW: i64 = 1_800_000_000_000;

    fn inst(addr: &str, state: State, start_ms: Option<i64>) -> Instance {
        Instance { addr: addr.into(), weight: 100, start_ms, warmup_ms: 100_000, state }
    }

    /// a, b warm; c at 25 % of its warm-up (Dubbo weight 25); d draining; e down.
    fn members() -> Vec<Instance> {
        vec![
            inst("10.0.0.1:80", State::Serving, None),
            inst("10.0.0.2:80", State::Serving, None),
            inst("10.0.0.3:80", State::Serving, Some(NOW - 25_000)),
            inst("10.0.0.4:80", State::Draining, None),
            inst("10.0.0.5:80", State::Down, None),
        ]
    }

    fn weight(ms: &[Instance]) -> impl Fn(usize) -> u32 + '_ {
        move |i| {
            let m = &ms[i];
            if m.state.is_serving() {
                dubbo_weight(m.weight, m.start_ms, m.warmup_ms, NOW) as u32
            } else {
                0
            }
        }
    }

    fn found(service: usize, live: bool) -> Found {
        Found { service, live, corrected: true }
    }

    /// Drives `n` picks drawn by `pick(k)` through the corrector, with the estimate built from
    /// the picks themselves (flushed and replanned every `every` picks). Returns the shares each
    /// member finally received and the share redirected.
    fn run(
        ms: &[Instance],
        departed_addr: &str,
        n: usize,
        every: usize,
        pick: impl Fn(usize, &mut Rng) -> String,
    ) -> (Vec<f64>, f64) {
        let mut rng = Rng::new(17);
        let mut c = Corrector::default();
        let mut picks = Picks::default();
        let mut pending = Pending::default();
        c.replan(ms, weight(ms), &picks, 20.0, NOW);
        let mut got = vec![0usize; ms.len()];
        let mut moved = 0usize;
        for k in 0..n {
            let addr = pick(k, &mut rng);
            pending.record(&addr);
            let live = addr != departed_addr;
            match c.decide(found(0, live), &addr, ms, &mut rng) {
                Decision::Keep { member, .. } => got[member] += 1,
                Decision::Redirect { to, .. } => {
                    got[to] += 1;
                    moved += 1;
                }
                d => panic!("{d:?}"),
            }
            if (k + 1) % every == 0 {
                let now = NOW + (k as i64 / every as i64) * 100;
                picks.absorb(&pending, now, 2000);
                pending.clear();
                c.replan(ms, weight(ms), &picks, 20.0, now);
            }
        }
        (got.iter().map(|g| *g as f64 / n as f64).collect(), moved as f64 / n as f64)
    }

    /// A round-robin caller whose list still holds a departed address, the draining and the down
    /// member: every instance ends at Dubbo's share (100:100:25), with the estimate learned from
    /// the traffic.
    #[test]
    fn round_robin_caller_gets_dubbo_shares() {
        let ms = members();
        let list: Vec<String> =
            ms.iter().map(|m| m.addr.clone()).chain(std::iter::once("10.0.0.9:80".to_string())).collect();
        let (got, moved) = run(&ms, "10.0.0.9:80", 300_000, 20, |k, _| list[k % list.len()].clone());
        let want = [100.0 / 225.0, 100.0 / 225.0, 25.0 / 225.0, 0.0, 0.0];
        for j in 0..5 {
            assert!((got[j] - want[j]).abs() < 0.01, "member {j}: {:.4} vs {:.4} ({got:?})", got[j], want[j]);
        }
        // the least possible: 3/6 picks of d, e and the departed one, plus c's excess 1/6 - 25/225 * ...
        let q = 1.0 / 6.0;
        let least = 3.0 * q + (q - want[2]);
        assert!((moved - least).abs() < 0.01, "moved {moved:.4}, least {least:.4}");
    }

    /// Three warm instances and a fourth at 25 % of its warm-up (Dubbo weights 100, 100, 100, 25).
    fn three_warm_and_one_at_25() -> Vec<Instance> {
        let mut ms: Vec<Instance> = (1..=3).map(|k| inst(&format!("10.0.0.{k}:80"), State::Serving, None)).collect();
        ms.push(inst("10.0.0.4:80", State::Serving, Some(NOW - 25_000)));
        ms
    }

    /// A corrector for `ms` planned with `prior` pseudo-picks from a round-robin caller's
    /// `per_address` picks of each of the first three members (decayed with `half_life_ms`).
    fn planned_on_round_robin(ms: &[Instance], per_address: usize, half_life_ms: i64, prior: f64) -> Corrector {
        let mut pending = Pending::default();
        for k in 0..3 * per_address {
            pending.record(&ms[k % 3].addr);
        }
        let mut picks = Picks::default();
        picks.absorb(&pending, NOW, half_life_ms);
        let mut c = Corrector::default();
        c.replan(ms, weight(ms), &picks, prior, NOW);
        c
    }

    /// The plan is applied evenly: of a round-robin caller's picks of three warm instances, a
    /// fourth at 25 % of its warm-up (target 25/325) receives its share in every run of 300
    /// picks to within two requests (independent draws would stray by about ±5 there), and each
    /// warm one keeps an even share of its own picks.
    #[test]
    fn the_share_is_spread_evenly() {
        let ms = three_warm_and_one_at_25();
        let mut c = planned_on_round_robin(&ms, 1000, 2000, 0.0);
        let mut rng = Rng::new(5);
        let want = 300.0 * 25.0 / 325.0;
        let mut worst: f64 = 0.0;
        for _ in 0..100 {
            let mut got = [0u32; 4];
            for k in 0..300 {
                let to = match c.decide(found(0, true), &ms[k % 3].addr, &ms, &mut rng) {
                    Decision::Keep { member, .. } | Decision::Redirect { to: member, .. } => member,
                    d => panic!("{d:?}"),
                };
                got[to] += 1;
            }
            worst = worst.max((f64::from(got[3]) - want).abs());
            for g in &got[..3] {
                assert!((f64::from(*g) - (300.0 - want) / 3.0).abs() <= 2.0, "{got:?}");
            }
        }
        assert!(worst <= 2.0, "the warming instance strayed by {worst:.1} requests of {want:.1}");
    }

    /// The prior (pseudo-picks by target) holds back a steady caller's correction only while the
    /// evidence is thin: with 72 picks of evidence (100 picks/s, a 0.5 s half-life) and the
    /// default 5 pseudo-picks, a warming instance at target 25/325 gets 7.65 % (a prior that did
    /// not fade: 7.24 %); with three picks of evidence most picks stay.
    #[test]
    fn the_prior_fades_with_evidence() {
        let ms = three_warm_and_one_at_25();
        let share_of_new = |per_address: usize| {
            let mut c = planned_on_round_robin(&ms, per_address, 500, 5.0);
            let mut rng = Rng::new(3);
            let n = 30_000;
            let got = (0..n)
                .filter(|k| {
                    matches!(c.decide(found(0, true), &ms[k % 3].addr, &ms, &mut rng), Decision::Redirect { to: 3, .. })
                })
                .count();
            got as f64 / n as f64
        };
        let target = 25.0 / 325.0;
        let steady = share_of_new(24);
        assert!((steady - target).abs() < 0.0015, "{steady:.4} for {target:.4}");
        // three picks of evidence, five pseudo-picks: each old instance is read as picked
        // (1 + 5 t) / 8 of the time, and only its excess over t moves
        let t_old = 100.0 / 325.0;
        let thin = 1.0 - t_old / ((1.0 + 5.0 * t_old) / 8.0);
        let got = share_of_new(1);
        assert!((got - thin).abs() < 0.0015 && got < target / 2.0, "{got:.4} for {thin:.4}");
        assert_eq!(fading_prior(5.0, 2.0), 5.0);
        assert_eq!(fading_prior(5.0, 50.0), 0.5);
        assert_eq!(fading_prior(f64::NAN, 50.0), 0.0);
        assert_eq!(fading_prior(5.0, f64::INFINITY), 5.0);
    }

    /// A round-robin caller at 100 picks/s whose list gains a new instance (weights 100, 100,
    /// 100 and 75: Dubbo's share of the new one is 20 %). Until the estimate has learnt the
    /// change, the new instance's own picks are all kept and it still gets redirects: for a
    /// moment it receives more than its share. Returns its share over the first `window_ms` after
    /// the change, and the share a caller that picks by the weights gets moved (steady).
    fn list_change(half_life_ms: i64, prior: f64, window_ms: i64) -> (f64, f64) {
        let ms: Vec<Instance> = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80"]
            .iter()
            .map(|a| Instance { addr: a.to_string(), weight: 100, start_ms: None, warmup_ms: 0, state: State::Serving })
            .collect();
        let weight = |i: usize| if i == 3 { 75 } else { 100 };
        let sim = |weighted: bool| {
            let mut rng = Rng::new(23);
            let (mut c, mut picks, mut pending) = (Corrector::default(), Picks::default(), Pending::default());
            let (mut new_got, mut n, mut moved) = (0usize, 0usize, 0usize);
            // 10 ms per pick, a flush and replan every 200 ms; the list changes at 10 s
            for k in 0..2000i64 {
                let now = NOW + k * 10;
                if k % 20 == 0 {
                    picks.absorb(&pending, now, half_life_ms);
                    pending.clear();
                    c.replan(&ms, weight, &picks, prior, now);
                }
                let i = if weighted {
                    let x = rng.below(375);
                    if x < 300 {
                        (x / 100) as usize
                    } else {
                        3
                    }
                } else if k < 1000 {
                    (k % 3) as usize
                } else {
                    (k % 4) as usize
                };
                pending.record(&ms[i].addr);
                let to = match c.decide(found(0, true), &ms[i].addr, &ms, &mut rng) {
                    Decision::Keep { member, .. } => member,
                    Decision::Redirect { to, .. } => {
                        moved += 1;
                        to
                    }
                    d => panic!("{d:?}"),
                };
                if (1000..1000 + window_ms / 10).contains(&k) {
                    n += 1;
                    new_got += usize::from(to == 3);
                }
            }
            (new_got as f64 / n as f64, moved as f64 / 2000.0)
        };
        (sim(false).0, sim(true).1)
    }

    /// The default half-life (500 ms) follows a caller's list change about four times as fast as
    /// 2 s: the new instance's excess over its 20 % in the seconds after the change is a fraction
    /// of what 2 s gives; a caller that already picks by the weights is moved a few percent of
    /// the time (the price: a noisier estimate).
    #[test]
    fn a_list_change_is_followed_within_about_a_second() {
        let d = super::super::Settings::default();
        let (fast_1s, weighted_fast) = list_change(d.estimate_half_life_ms, d.prior_picks, 1000);
        let (fast_4s, _) = list_change(d.estimate_half_life_ms, d.prior_picks, 4000);
        let (slow_1s, weighted_slow) = list_change(2000, 20.0, 1000);
        let (slow_4s, _) = list_change(2000, 20.0, 4000);
        println!(
            "new instance's share after a list change (Dubbo: 20 %), 0.5 s / 2 s half-life: first second {:.1} % / {:.1} %, first 4 s {:.1} % / {:.1} %; a weighted caller moved {:.1} % / {:.1} %",
            100.0 * fast_1s,
            100.0 * slow_1s,
            100.0 * fast_4s,
            100.0 * slow_4s,
            100.0 * weighted_fast,
            100.0 * weighted_slow
        );
        assert!(fast_4s - 0.2 < 0.06, "{fast_4s}");
        assert!(slow_4s - 0.2 > 0.09, "{slow_4s}");
        assert!(fast_4s - 0.2 < 0.5 * (slow_4s - 0.2), "{fast_4s} vs {slow_4s}");
        assert!(fast_1s < slow_1s, "{fast_1s} vs {slow_1s}");
        assert!(weighted_fast < 0.07 && weighted_slow < 0.05, "{weighted_fast} {weighted_slow}");
    }

    /// A caller that already picks by Dubbo's warm-up weights is (almost) never redirected.
    #[test]
    fn weighted_caller_is_almost_never_redirected() {
        let ms: Vec<Instance> = members().into_iter().take(3).collect();
        let addrs: Vec<String> = ms.iter().map(|m| m.addr.clone()).collect();
        // Dubbo's RandomLoadBalance over weights 100, 100, 25
        let (got, moved) = run(&ms, "", 300_000, 20, |_, rng| {
            let x = rng.below(225);
            addrs[if x < 100 {
                0
            } else if x < 200 {
                1
            } else {
                2
            }]
            .clone()
        });
        assert!((got[2] - 25.0 / 225.0).abs() < 0.01, "{got:?}");
        // only the estimate's noise moves anything (about 1.4 % here): 200 picks/s, half-life 2 s
        println!("a weighted caller moved {:.2} %", 100.0 * moved);
        assert!(moved < 0.03, "moved {moved}");
    }

    #[test]
    fn non_serving_picks_always_move_to_serving_members() {
        let ms = members();
        let mut c = Corrector::default();
        c.replan(&ms, weight(&ms), &Picks::default(), 20.0, NOW);
        let mut rng = Rng::new(5);
        for _ in 0..2000 {
            for (addr, live, why) in [
                ("10.0.0.4:80", true, Why::Draining),
                ("10.0.0.5:80", true, Why::Down),
                ("10.0.0.9:80", false, Why::Departed),
            ] {
                match c.decide(found(0, live), addr, &ms, &mut rng) {
                    Decision::Redirect { service: 0, to, why: w } => {
                        assert_eq!(w, why);
                        assert!(ms[to].state.is_serving());
                    }
                    d => panic!("{addr}: {d:?}"),
                }
            }
            // with no evidence yet, a warm pick and a warming one stay
            assert_eq!(
                c.decide(found(0, true), "10.0.0.1:80", &ms, &mut rng),
                Decision::Keep { service: 0, member: 0 }
            );
            assert_eq!(
                c.decide(found(0, true), "10.0.0.3:80", &ms, &mut rng),
                Decision::Keep { service: 0, member: 2 }
            );
        }
    }

    #[test]
    fn untouched_cases() {
        let ms = members();
        let mut rng = Rng::new(5);
        let mut c = Corrector::default();
        c.replan(&ms, weight(&ms), &Picks::default(), 20.0, NOW);
        let off = Found { service: 0, live: true, corrected: false };
        assert_eq!(c.decide(off, "10.0.0.4:80", &ms, &mut rng), Decision::Untouched(Untouched::NotCorrected));
        // nothing serves: the pick stands
        let dead = vec![inst("10.0.0.4:80", State::Draining, None), inst("10.0.0.5:80", State::Down, None)];
        c.replan(&dead, |_| 0, &Picks::default(), 20.0, NOW);
        assert_eq!(
            c.decide(found(0, true), "10.0.0.4:80", &dead, &mut rng),
            Decision::Untouched(Untouched::NoneServing)
        );
        assert_eq!(
            c.decide(found(0, false), "10.0.0.8:80", &dead, &mut rng),
            Decision::Untouched(Untouched::NoneServing)
        );
        // a plan built for another membership is not used to move anything
        assert_eq!(c.decide(found(0, true), "10.0.0.1:80", &ms, &mut rng), Decision::Keep { service: 0, member: 0 });
        assert_eq!(c.decide(found(0, true), "10.0.0.4:80", &ms, &mut rng), Decision::Untouched(Untouched::NoneServing));
        for (l, u) in [(Lookup::Unknown, Untouched::Unknown), (Lookup::Ambiguous, Untouched::Ambiguous)] {
            assert_eq!(decide(l, "1.2.3.4:5", |_| None, |_| None, &mut rng), Decision::Untouched(u));
        }
    }

    /// The full path on pure data: index, lookup, decision; an address outside every membership
    /// is untouched.
    #[test]
    fn index_then_decide() {
        let ms = members();
        let mut gone = Departed::default();
        gone.update(&[inst("10.0.0.9:80", State::Serving, None)], &[], NOW, 60_000);
        let idx = AddressIndex::build(&[Source { members: &ms, departed: &gone, corrected: true }], NOW);
        let mut c = Corrector::default();
        c.replan(&ms, weight(&ms), &Picks::default(), 20.0, NOW);
        let mut rng = Rng::new(9);
        let mut go = |addr: &str, rng: &mut Rng| {
            let c = &mut c;
            decide(idx.lookup(addr, |_| false), addr, |k| (k == 0).then_some(&ms[..]), |k| (k == 0).then_some(c), rng)
        };
        assert_eq!(go("192.168.1.1:80", &mut rng), Decision::Untouched(Untouched::Unknown));
        assert!(matches!(go("10.0.0.9:80", &mut rng), Decision::Redirect { why: Why::Departed, .. }));
        assert!(matches!(go("10.0.0.2:80", &mut rng), Decision::Keep { member: 1, .. }));
    }
}
