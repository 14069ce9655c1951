//! The share correction: from the callers' pick distribution `q` and the warm-up target `t`, the
//! probability `p_i` of keeping a pick of instance `i` and the distribution `r` the other picks
//! are sent by, such that every instance finally receives exactly its target share.
//!
//! # The algebra
//!
//! One service, instances `i = 1..n` (its live members, and the departed addresses callers still
//! pick). `w_i` is instance `i`'s Dubbo warm-up weight now (Apache Dubbo 3.3
//! `AbstractLoadBalance.getWeight`, [`crate::warmup`]), 0 for an instance that is draining, down,
//! ejected or departed; `W = Σ w_i`; `t_i = w_i / W` is the share Dubbo's `RandomLoadBalance`
//! gives `i`. `q_i` is the share of the callers' own picks that name `i` (`Σ q_i = 1`).
//!
//! A pick of `i` is kept with probability `p_i`; otherwise it is redirected, to `j` with
//! probability `r_j` (`Σ r_j = 1`). Instance `j` then receives the share
//!
//! ```text
//! s_j = q_j p_j + R r_j,        R = Σ_i q_i (1 - p_i)   (the share redirected)
//! ```
//!
//! Choose
//!
//! ```text
//! p_i = min(1, t_i / q_i)       (1 when q_i = 0: such a pick never comes)
//! r_j = max(0, t_j - q_j) / D,  D = Σ_j max(0, t_j - q_j)
//! ```
//!
//! Then `q_i p_i = min(q_i, t_i)` and `R = Σ_i (q_i - min(q_i, t_i)) = Σ_i max(0, q_i - t_i)`.
//! Because `Σ q_i = Σ t_i = 1`, `Σ_i (q_i - t_i) = 0`, so the positive and the negative parts
//! of `q - t` have the same mass: `R = D`. Hence
//!
//! ```text
//! s_j = min(q_j, t_j) + R · max(0, t_j - q_j) / D = min(q_j, t_j) + max(0, t_j - q_j) = t_j.
//! ```
//!
//! Every instance receives exactly its warm-up share, whatever `q` is. `R` is also the least any
//! correction must move: instance `i` may receive at most `t_i`, so at most `min(q_i, t_i)` of its
//! own picks can stay, and at least `Σ max(0, q_i - t_i)` must move (the total variation distance
//! between `q` and `t`). A caller that already applies the warm-up weights (`q = t`, e.g. Dubbo's
//! own balancer) is never redirected; a caller that picks uniformly (Spring Cloud LoadBalancer's
//! round robin, Ribbon) loses only its excess over the warming instances' and the departed
//! addresses' targets. In particular a pick of a draining, down, ejected or departed instance
//! (`t_i = 0`) is always redirected, and a pick of a warm instance (whose target is at least its
//! pick share unless the callers over-pick it, e.g. because their lists lack a newer instance) is
//! always kept.
//!
//! When `W = 0` while some instance serves (all weights 0) the target is uniform over the serving
//! instances, as Dubbo's and Nacos' balancers pick uniformly then. When `D` is 0 (the estimate
//! says nobody picks the instance being redirected from, e.g. on its very first pick) the
//! redirect goes by `t` itself.
//!
//! `q` is not known; [`super::estimate`] estimates it from the picks seen. With an estimate `q̂`
//! the same formulas give shares `t_j + (q_j - q̂_j)`-sized errors only where the estimate is off.

use crate::clock::Rng;

/// Sums below this are taken as zero.
const EPS: f64 = 1e-12;

/// The keep probabilities of a pick distribution `q` against a target `t` (same length; each
/// a non-negative vector, `t` summing to 1, `q` to at most 1: the rest of `q` is picks of
/// addresses outside `t`, whose target is 0). `p_i = min(1, t_i / q_i)`, 1 where `q_i = 0`.
pub fn keep_probabilities(t: &[f64], q: &[f64]) -> Vec<f64> {
    t.iter().zip(q).map(|(t, q)| keep(*t, *q)).collect()
}

fn keep(t: f64, q: f64) -> f64 {
    if q <= EPS {
        1.0
    } else {
        (t / q).clamp(0.0, 1.0)
    }
}

/// The redirect distribution `r_j = max(0, t_j - q_j) / D`; `None` when `D` is 0 (no deficit:
/// redirect by `t` then).
pub fn redirect_distribution(t: &[f64], q: &[f64]) -> Option<Vec<f64>> {
    let d: Vec<f64> = t.iter().zip(q).map(|(t, q)| (t - q).max(0.0)).collect();
    let total: f64 = d.iter().sum();
    (total > EPS).then(|| d.iter().map(|x| x / total).collect())
}

/// The share the correction redirects, `R = Σ max(0, q_i - t_i)` over `t`'s instances plus the
/// picks outside them (`1 - Σ q`).
pub fn redirected_share(t: &[f64], q: &[f64]) -> f64 {
    let outside = (1.0 - q.iter().sum::<f64>()).max(0.0);
    outside + t.iter().zip(q).map(|(t, q)| (q - t).max(0.0)).sum::<f64>()
}

/// The target shares `t_i = w_i / W` of weights `w` (0 for an instance that is not serving);
/// uniform over the `serving` ones when every weight is 0; all 0 when none serves.
pub fn targets(weights: &[u32], serving: &[bool]) -> Vec<f64> {
    let total: f64 = weights.iter().zip(serving).filter(|(_, s)| **s).map(|(w, _)| f64::from(*w)).sum();
    if total > 0.0 {
        return weights.iter().zip(serving).map(|(w, s)| if *s { f64::from(*w) / total } else { 0.0 }).collect();
    }
    let n = serving.iter().filter(|s| **s).count();
    if n == 0 {
        return vec![0.0; weights.len()];
    }
    serving.iter().map(|s| if *s { 1.0 / n as f64 } else { 0.0 }).collect()
}

/// A uniform draw in `[0, 1)`.
pub fn unit(rng: &mut Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// The correction of one service, as a table: built in O(n) when the weights, the membership or
/// the estimate change (at most every few hundred ms), used in O(1) (keep) or O(log n)
/// (redirect) per request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// `p_i` per member (index into the service's member list).
    keep: Vec<f64>,
    /// Members a redirect may go to, ascending, with the inclusive prefix sums of their
    /// deficits `max(0, t_j - q_j)`.
    deficit_to: Vec<u32>,
    deficit_prefix: Vec<f64>,
    /// The same for the targets `t_j` (used when no deficit is left).
    target_to: Vec<u32>,
    target_prefix: Vec<f64>,
    /// The expected redirected share `R` under the estimate.
    redirected: f64,
}

impl Plan {
    /// The plan for targets `t` and estimated pick shares `q` (aligned with the service's
    /// members; see [`keep_probabilities`] for their shape). Entries that are not finite or
    /// negative are read as 0.
    pub fn new(t: &[f64], q: &[f64]) -> Plan {
        let clean =
            |v: &[f64]| -> Vec<f64> { v.iter().map(|x| if x.is_finite() { x.max(0.0) } else { 0.0 }).collect() };
        let (t, mut q) = (clean(t), clean(q));
        q.resize(t.len(), 0.0);
        let mut plan =
            Plan { keep: keep_probabilities(&t, &q), redirected: redirected_share(&t, &q), ..Plan::default() };
        let (mut d_sum, mut t_sum) = (0.0, 0.0);
        for (j, (tj, qj)) in t.iter().zip(&q).enumerate() {
            let Ok(j) = u32::try_from(j) else { break };
            let d = (tj - qj).max(0.0);
            if d > EPS {
                d_sum += d;
                plan.deficit_to.push(j);
                plan.deficit_prefix.push(d_sum);
            }
            if *tj > EPS {
                t_sum += tj;
                plan.target_to.push(j);
                plan.target_prefix.push(t_sum);
            }
        }
        plan
    }

    /// `p_i` of member `i` (1 for an index the plan does not know: keep what is not understood).
    pub fn keep_probability(&self, i: usize) -> f64 {
        self.keep.get(i).copied().unwrap_or(1.0)
    }

    /// The expected share of the picks this plan redirects (`R`).
    pub fn redirected_share(&self) -> f64 {
        self.redirected
    }

    /// Whether any member has a positive target (some instance serves).
    pub fn has_target(&self) -> bool {
        !self.target_to.is_empty()
    }

    /// Whether a pick of member `i` stays (drawn with probability `p_i`).
    pub fn keeps(&self, i: usize, rng: &mut Rng) -> bool {
        let p = self.keep_probability(i);
        p >= 1.0 || unit(rng) < p
    }

    /// The member a redirected pick goes to: drawn by `r` (the deficits), or by `t` when no
    /// deficit is left; `None` when no member has a target.
    pub fn redirect(&self, rng: &mut Rng) -> Option<usize> {
        self.redirect_at(unit(rng))
    }

    /// The member at point `u` in `[0, 1)` of the redirect distribution (the inverse of its
    /// cumulative distribution; [`Plan::redirect`] with `u` given); `None` when no member has a
    /// target.
    pub fn redirect_at(&self, u: f64) -> Option<usize> {
        let (to, prefix) = if self.deficit_to.is_empty() {
            (&self.target_to, &self.target_prefix)
        } else {
            (&self.deficit_to, &self.deficit_prefix)
        };
        let total = prefix.last().copied()?;
        let x = u.clamp(0.0, 1.0) * total;
        let k = prefix.partition_point(|p| *p <= x).min(to.len().saturating_sub(1));
        to.get(k).map(|j| *j as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Rng;
    use proptest::prelude::{prop, prop_assert, prop_assert_eq, prop_oneof, proptest, Just, Strategy};

    fn normalize(v: &[f64]) -> Vec<f64> {
        let s: f64 = v.iter().sum();
        v.iter().map(|x| x / s).collect()
    }

    /// The final shares of the policy, computed exactly: `s_j = q_j p_j + R r_j`.
    fn final_shares(t: &[f64], q: &[f64]) -> Vec<f64> {
        let p = keep_probabilities(t, q);
        let big_r = redirected_share(t, q);
        let r = redirect_distribution(t, q).unwrap_or_else(|| t.to_vec());
        (0..t.len()).map(|j| q[j] * p[j] + big_r * r[j]).collect()
    }

    fn weights_and_picks() -> impl Strategy<Value = (Vec<f64>, Vec<f64>, f64)> {
        (1usize..12).prop_flat_map(|n| {
            (
                // targets: weights 0..=100 with at least one positive
                prop::collection::vec(0u32..=100, n).prop_filter("some weight", |w| w.iter().any(|x| *x > 0)),
                // picks: any distribution, zeros included
                prop::collection::vec(prop_oneof![Just(0.0), 0.0f64..1.0], n),
                // share of picks that go to departed addresses (target 0, outside t)
                prop_oneof![Just(0.0), 0.0f64..0.9],
            )
                .prop_map(|(w, q, departed)| {
                    let t = normalize(&w.iter().map(|x| f64::from(*x)).collect::<Vec<_>>());
                    let s: f64 = q.iter().sum();
                    let q = if s > 0.0 {
                        q.iter().map(|x| x / s * (1.0 - departed)).collect()
                    } else {
                        // no pick lands on a member: all go to departed addresses
                        vec![0.0; q.len()]
                    };
                    let departed = if s > 0.0 { departed } else { 1.0 };
                    (t, q, departed)
                })
        })
    }

    proptest! {
        /// For any pick distribution, the final shares equal the targets.
        #[test]
        fn final_shares_equal_targets_for_any_q((t, q, _departed) in weights_and_picks()) {
            let s = final_shares(&t, &q);
            for j in 0..t.len() {
                prop_assert!((s[j] - t[j]).abs() < 1e-9, "j={j} s={s:?} t={t:?} q={q:?}");
            }
            // and the redirected share is the least possible: the total variation distance
            let tv: f64 = t.iter().zip(&q).map(|(t, q)| (t - q).abs()).sum::<f64>() / 2.0
                + (1.0 - q.iter().sum::<f64>()) / 2.0;
            prop_assert!((redirected_share(&t, &q) - tv).abs() < 1e-9);
        }

        /// A caller that already applies the warm-up weights is not redirected; one that is
        /// close to them is redirected by no more than its distance.
        #[test]
        fn weighted_caller_is_not_redirected((t, _q, _d) in weights_and_picks(), noise in 0.0f64..0.02) {
            prop_assert!(redirected_share(&t, &t) < 1e-12);
            let plan = Plan::new(&t, &t);
            prop_assert!(plan.redirected_share() < 1e-12);
            for i in 0..t.len() {
                prop_assert_eq!(plan.keep_probability(i), 1.0);
            }
            // q = t perturbed by at most `noise` per instance, renormalized
            let q = normalize(&t.iter().enumerate().map(|(i, x)| x + if i % 2 == 0 { noise } else { 0.0 }).collect::<Vec<_>>());
            prop_assert!(redirected_share(&t, &q) <= noise * t.len() as f64 + 1e-12);
        }

        /// The table draws what the formulas say: kept picks with `p_i`, redirects by `r`.
        #[test]
        fn plan_matches_formulas((t, q, _d) in weights_and_picks()) {
            let plan = Plan::new(&t, &q);
            let p = keep_probabilities(&t, &q);
            for (i, pi) in p.iter().enumerate() {
                prop_assert!((plan.keep_probability(i) - pi).abs() < 1e-12);
            }
            prop_assert!((plan.redirected_share() - redirected_share(&t, &q)).abs() < 1e-12);
            // a redirect never goes to an instance without a target
            let mut rng = Rng::new(7);
            for _ in 0..50 {
                let j = plan.redirect(&mut rng).unwrap();
                prop_assert!(t[j] > 0.0);
                if let Some(r) = redirect_distribution(&t, &q) {
                    prop_assert!(r[j] > 0.0, "redirect to {j} without a deficit");
                }
            }
        }
    }

    /// Monte Carlo with the table itself: a uniform caller (Spring Cloud LoadBalancer's round
    /// robin) over 2 warm instances, one warming at 25 % and one draining, ends at Dubbo's shares.
    #[test]
    fn sampled_shares_match_targets() {
        // weights 100, 100, 25 (warming), draining
        let t = targets(&[100, 100, 25, 100], &[true, true, true, false]);
        assert_eq!(t, vec![100.0 / 225.0, 100.0 / 225.0, 25.0 / 225.0, 0.0]);
        let q = vec![0.25; 4];
        let plan = Plan::new(&t, &q);
        assert_eq!(plan.keep_probability(3), 0.0, "a draining pick is always redirected");
        assert_eq!(plan.keep_probability(0), 1.0, "a warm pick stays");
        assert!((plan.keep_probability(2) - (25.0 / 225.0) / 0.25).abs() < 1e-12);
        let mut rng = Rng::new(42);
        let mut got = [0u64; 4];
        let mut redirected = 0u64;
        let n = 400_000u64;
        for k in 0..n {
            let pick = (k % 4) as usize; // round robin
            let to = if plan.keeps(pick, &mut rng) {
                pick
            } else {
                redirected += 1;
                plan.redirect(&mut rng).unwrap()
            };
            got[to] += 1;
        }
        for j in 0..4 {
            let share = got[j] as f64 / n as f64;
            assert!((share - t[j]).abs() < 0.003, "instance {j}: {share} vs {}", t[j]);
        }
        let r = redirected as f64 / n as f64;
        assert!((r - plan.redirected_share()).abs() < 0.003, "{r} vs {}", plan.redirected_share());
    }

    #[test]
    fn targets_edge_cases() {
        assert_eq!(targets(&[0, 0, 5], &[true, true, false]), vec![0.5, 0.5, 0.0], "all serving weights 0: uniform");
        assert_eq!(targets(&[3, 1], &[false, false]), vec![0.0, 0.0], "none serving");
        assert_eq!(targets(&[], &[]), Vec::<f64>::new());
        let plan = Plan::new(&[0.0, 0.0], &[0.5, 0.5]);
        assert!(!plan.has_target());
        assert_eq!(plan.redirect(&mut Rng::new(1)), None);
    }

    /// No deficit under the estimate (the redirected pick was never counted): redirects follow
    /// the targets; bad numbers are read as 0.
    #[test]
    fn no_deficit_redirects_by_target() {
        let t = [0.75, 0.25, 0.0];
        let plan = Plan::new(&t, &[0.75, 0.25, f64::NAN]);
        let mut rng = Rng::new(3);
        let mut c = [0u32; 3];
        for _ in 0..40_000 {
            c[plan.redirect(&mut rng).unwrap()] += 1;
        }
        assert_eq!(c[2], 0);
        assert!((f64::from(c[0]) / 40_000.0 - 0.75).abs() < 0.01, "{c:?}");
        assert_eq!(plan.keep_probability(9), 1.0, "unknown index: keep");
    }
}
