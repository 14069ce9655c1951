//! The warmup weight: Apache Dubbo 3.3 `AbstractLoadBalance.getWeight`, bit-exact, plus optional
//! curves behind configuration: Envoy-slow-start-like (`aggression`, `min_weight_percent`) or
//! Sermant's (`sermant`).
//!
//! Dubbo computes `(int) (uptime / ((float) warmup / weight))` where `uptime` and `warmup` are
//! Java `long`/`int` promoted to `float`: both divisions happen in f32. Doing the same sums in f64
//! gives different integers for some inputs (e.g. uptime 10000, warmup 20000, weight 14: 7 in Java,
//! 6 in f64), so everything here stays in f32 on purpose.
//!
//! [`OverloadProtection`] stops the ramp while too many of a service's instances warm at once
//! (Polaris' `Warmup.enableOverloadProtection` / `overloadProtectionThreshold`).

/// Dubbo's default warmup: 10 minutes.
pub const DEFAULT_WARMUP_MS: i64 = 600_000;
/// Dubbo's default weight.
pub const DEFAULT_WEIGHT: i32 = 100;

/// Dubbo `calculateWarmupWeight(uptime, warmup, weight)`: the ramp itself, without the guards of
/// `getWeight`. Java: `int ww = (int) (uptime / ((float) warmup / weight)); return ww < 1 ? 1 :
/// Math.min(ww, weight);`
pub fn calculate_warmup_weight(uptime_ms: i64, warmup_ms: i64, weight: i32) -> i32 {
    // Java `(float) warmup` is `int -> float`; `uptime / float` promotes the long to float.
    let step = warmup_ms as f32 / weight as f32;
    let ww = java_f2i(uptime_ms as f32 / step);
    if ww < 1 {
        1
    } else {
        ww.min(weight)
    }
}

/// Java's `(int) f`: truncation toward zero, NaN -> 0, saturating at the i32 range.
/// Rust's `as` cast has exactly these semantics.
fn java_f2i(f: f32) -> i32 {
    f as i32
}

/// Dubbo `getWeight` given the provider's configured weight, its start timestamp (ms since epoch,
/// `None` or `<= 0` when unknown), its warmup (ms) and the current time (ms since epoch).
pub fn dubbo_weight(weight: i32, start_ms: Option<i64>, warmup_ms: i64, now_ms: i64) -> i32 {
    let mut w = weight;
    if w > 0 {
        if let Some(ts) = start_ms.filter(|t| *t > 0) {
            let uptime = now_ms.saturating_sub(ts);
            if uptime < 0 {
                return 1;
            }
            if uptime > 0 && uptime < warmup_ms {
                w = calculate_warmup_weight(uptime, warmup_ms, w);
            }
        }
    }
    w.max(0)
}

/// Which ramp to apply while an instance warms up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Curve {
    /// Exponent applied to the uptime fraction (Envoy slow start's `aggression` is the inverse:
    /// `fraction^(1/aggression)`). 1.0 is Dubbo's straight line.
    pub aggression: f32,
    /// Lowest weight while warming, in percent of the full weight (Envoy's `min_weight_percent`).
    /// 0 keeps Dubbo's floor of 1.
    pub min_weight_percent: f32,
    /// Sermant's ramp with this exponent instead (see [`sermant_weight`]); `aggression` and
    /// `min_weight_percent` are then not used.
    pub sermant: Option<u8>,
}

impl Default for Curve {
    fn default() -> Self {
        Curve { aggression: 1.0, min_weight_percent: 0.0, sermant: None }
    }
}

impl Curve {
    /// True when this is Dubbo's exact linear ramp.
    pub fn is_dubbo(&self) -> bool {
        self.aggression == 1.0 && self.min_weight_percent == 0.0 && self.sermant.is_none()
    }

    /// The weight of an instance: Dubbo-exact by default; with a custom curve, the same guards as
    /// Dubbo (`weight <= 0` -> 0, clock skew -> 1, uptime 0 or past warmup -> full weight) and the
    /// curve in between, clamped to [max(1, min%), weight].
    pub fn weight(&self, weight: i32, start_ms: Option<i64>, warmup_ms: i64, now_ms: i64) -> i32 {
        if self.is_dubbo() {
            return dubbo_weight(weight, start_ms, warmup_ms, now_ms);
        }
        if let Some(n) = self.sermant {
            return sermant_weight(n, weight, start_ms, warmup_ms, now_ms);
        }
        if weight <= 0 {
            return 0;
        }
        let Some(ts) = start_ms.filter(|t| *t > 0) else {
            return weight;
        };
        let uptime = now_ms.saturating_sub(ts);
        if uptime < 0 {
            return 1;
        }
        if uptime == 0 || uptime >= warmup_ms {
            return weight;
        }
        let frac = uptime as f32 / warmup_ms as f32;
        let shaped = frac.powf(1.0 / self.aggression);
        let min = (weight as f32 * self.min_weight_percent / 100.0).max(1.0);
        let w = (weight as f32 * shaped).max(min);
        java_f2i(w).clamp(1, weight)
    }
}

/// Sermant's warmup weight (huaweicloud/Sermant, `sermant-service-registry`,
/// `GraceSwitchInterceptor.calculateWeight`): `round((runtime / warmup)^curve * weight)` in
/// doubles, Java's `Math.round` (ties up), clamped to `[1, weight]`, while `0 < runtime < warmup`;
/// the full weight otherwise, a start time ahead of the clock included (Dubbo gives 1 there). The
/// instance publishes `curve` as `sermant.grace.warmup.cal.curve` (Sermant's default 2); a weight
/// `<= 0` is 0 here (Sermant would give 1 while warming), as everywhere in lossless.
pub fn sermant_weight(curve: u8, weight: i32, start_ms: Option<i64>, warmup_ms: i64, now_ms: i64) -> i32 {
    if weight <= 0 {
        return 0;
    }
    let runtime = match start_ms.filter(|t| *t > 0) {
        Some(ts) => now_ms.saturating_sub(ts),
        None => 0,
    };
    if runtime <= 0 || runtime >= warmup_ms {
        return weight;
    }
    let frac = runtime as f64 / warmup_ms as f64;
    let mut pow = 1.0f64;
    for _ in 0..curve {
        pow *= frac;
    }
    let x = pow * weight as f64;
    // Java's Math.round for x >= 0: the nearest integer, ties up (`x - floor(x)` is exact)
    let floor = x.floor();
    let rounded = if x - floor >= 0.5 { floor + 1.0 } else { floor };
    (rounded as i32).clamp(1, weight)
}

/// True while the instance is inside its warmup window (its weight may be below full).
pub fn is_warming(start_ms: Option<i64>, warmup_ms: i64, now_ms: i64) -> bool {
    match start_ms.filter(|t| *t > 0) {
        Some(ts) => {
            let up = now_ms.saturating_sub(ts);
            up < warmup_ms
        }
        None => false,
    }
}

/// Polaris' default threshold: `Warmup.overloadProtectionThreshold`, "default is 50"
/// (polarismesh/specification, `api/v1/traffic_manage/lossless.proto`).
pub const DEFAULT_OVERLOAD_PROTECTION_THRESHOLD_PERCENT: u32 = 50;

/// Overload protection for warm-up, Polaris' rule (`Warmup.enableOverloadProtection` with
/// `overloadProtectionThreshold`; polaris-java `WarmupWeightAdjuster`): while the warming
/// instances are at least `threshold_percent` % of the candidates ([`WarmingShare`]), warm-up
/// stops and every instance is picked by its full weight.
///
/// Dubbo's ramp takes traffic away from new instances and gives it to the warm ones; that is
/// safe while most instances are warm. In a scale-out from 2 to 8 the 2 warm ones would carry
/// nearly everything; with this rule in force the 8 share by their full weights instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverloadProtection {
    /// In force when `warming * 100 >= threshold_percent * candidates` (Polaris:
    /// `needWarmupCount * 100 / size >= threshold` in Java `int`, the same verdict for every
    /// integer threshold). 0 stops every ramp as soon as one instance warms; 100 only when every
    /// candidate warms; above 100 never. Configuration keeps it in 0..=100.
    pub threshold_percent: u32,
}

impl Default for OverloadProtection {
    fn default() -> Self {
        OverloadProtection { threshold_percent: DEFAULT_OVERLOAD_PROTECTION_THRESHOLD_PERCENT }
    }
}

impl OverloadProtection {
    /// Whether the rule is in force for a service whose candidates are counted in `share`.
    /// Never with no warming instance (there is no ramp to stop: Polaris gives the same
    /// weights then), so a service of one warm instance is never protected.
    pub fn in_force(&self, share: WarmingShare) -> bool {
        share.warming > 0
            && share.warming.saturating_mul(100) >= u64::from(self.threshold_percent).saturating_mul(share.candidates)
    }
}

/// The counts the overload protection decides by.
///
/// Candidates are the instances a pick chooses among: serving (not draining, not down, so not
/// ejected or failing a health check either) and with a positive weight. Polaris counts the
/// instances its routers left for the load balancer: isolated and weight-0 instances are gone
/// (`IsolatedRouter`), unhealthy and circuit-broken ones too (`RecoverRouter`), so the same.
/// Warming: a candidate inside its warmup window ([`is_warming`]: a start time, and uptime below
/// the instance's warmup, in ms; Polaris counts whole seconds of `|uptime|`). A start time ahead
/// of the clock counts as warming (Polaris too while it is less than a window ahead). An instance
/// without a start time is warm, in Polaris as here.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WarmingShare {
    /// Candidates inside their warmup window.
    pub warming: u64,
    /// Serving instances with a positive weight.
    pub candidates: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::Instance;
    use proptest::prelude::*;

    const MIN: i64 = 60_000;

    /// Dubbo `LoadBalanceBaseTest.testLoadBalanceWarmup`, row by row.
    #[test]
    fn dubbo_table() {
        let w = DEFAULT_WARMUP_MS;
        let rows: &[(i64, i32)] = &[
            (0, 1),
            (6_000, 1),
            (12_000, 2),
            (60_000, 10),
            (5 * MIN, 50),
            (5 * MIN + 5_999, 50),
            (5 * MIN + 6_000, 51),
            (9 * MIN, 90),
            (10 * MIN - 6_000, 99),
            (10 * MIN, 100),
            (20 * MIN, 100),
        ];
        for (uptime, want) in rows {
            assert_eq!(calculate_warmup_weight(*uptime, w, 100), *want, "uptime {uptime}");
        }
    }

    #[test]
    fn f32_not_f64() {
        // Java gives 7; the same expression in f64 gives 6.
        assert_eq!(calculate_warmup_weight(10_000, 20_000, 14), 7);
        let f64_result = (10_000f64 / (20_000f64 / 14f64)) as i32;
        assert_eq!(f64_result, 6);
    }

    #[test]
    fn get_weight_guards() {
        let now = 1_700_000_000_000;
        // uptime exactly 0 skips the ramp
        assert_eq!(dubbo_weight(100, Some(now), 600_000, now), 100);
        // clock skew: start in the future
        assert_eq!(dubbo_weight(100, Some(now + 1), 600_000, now), 1);
        // half way
        assert_eq!(dubbo_weight(100, Some(now - 300_000), 600_000, now), 50);
        // no timestamp / non-positive timestamp: full weight
        assert_eq!(dubbo_weight(100, None, 600_000, now), 100);
        assert_eq!(dubbo_weight(100, Some(0), 600_000, now), 100);
        assert_eq!(dubbo_weight(100, Some(-5), 600_000, now), 100);
        // weight <= 0
        assert_eq!(dubbo_weight(0, Some(now - 1), 600_000, now), 0);
        assert_eq!(dubbo_weight(-3, Some(now - 1), 600_000, now), 0);
        // warmup <= 0: never ramps
        assert_eq!(dubbo_weight(100, Some(now - 1), 0, now), 100);
        assert_eq!(dubbo_weight(100, Some(now - 1), -10, now), 100);
    }

    #[test]
    fn custom_curve() {
        let now = 1_000_000;
        let c = Curve { aggression: 2.0, min_weight_percent: 10.0, sermant: None };
        // quarter of the window: sqrt(0.25) = 0.5
        assert_eq!(c.weight(100, Some(now - 25_000), 100_000, now), 50);
        // near zero: the floor of 10 %
        assert_eq!(c.weight(100, Some(now - 1), 100_000, now), 10);
        assert_eq!(c.weight(100, Some(now - 100_000), 100_000, now), 100);
        assert_eq!(c.weight(0, Some(now - 1), 100_000, now), 0);
        assert!(Curve::default().is_dubbo());
    }

    /// Sermant's own expression evaluated by Java (tests/fixtures/weights), every row.
    #[test]
    fn sermant_fixture() {
        let text = include_str!("../tests/fixtures/weights/sermant-calculateweight.jsonl");
        let now = 1_700_000_000_000i64;
        let mut rows = 0;
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let n = |k: &str| v[k].as_i64().unwrap();
            let (runtime, warmup, curve, weight) = (n("runtime"), n("warmup"), n("curve") as u8, n("weight") as i32);
            let got = sermant_weight(curve, weight, Some(now - runtime), warmup, now);
            assert_eq!(i64::from(got), n("sermant"), "{line}");
            let c = Curve { sermant: Some(curve), ..Curve::default() };
            assert_eq!(c.weight(weight, Some(now - runtime), warmup, now), got);
            rows += 1;
        }
        assert_eq!(rows, 700);
    }

    /// Sermant's guards (`GraceSwitchInterceptor.calculateWeight(long, long, String, String)`):
    /// no inject time or no warmup time -> the weight; runtime <= 0 (clock skew) or past the
    /// warmup -> the weight. And lossless's own: a weight <= 0 is 0.
    #[test]
    fn sermant_guards_and_metadata() {
        let now = 1_700_000_000_000i64;
        assert_eq!(sermant_weight(2, 100, None, 60_000, now), 100);
        assert_eq!(sermant_weight(2, 100, Some(0), 60_000, now), 100);
        assert_eq!(sermant_weight(2, 100, Some(now - 1), 0, now), 100);
        assert_eq!(sermant_weight(2, 100, Some(now + 5), 60_000, now), 100, "Dubbo gives 1 here, Sermant the weight");
        assert_eq!(sermant_weight(2, 100, Some(now), 60_000, now), 100);
        assert_eq!(sermant_weight(2, 100, Some(now - 60_000), 60_000, now), 100);
        assert_eq!(sermant_weight(2, 100, Some(now - 30_000), 60_000, now), 25);
        assert_eq!(sermant_weight(2, 100, Some(now - 1), 60_000, now), 1);
        assert_eq!(sermant_weight(0, 100, Some(now - 1), 60_000, now), 100);
        assert_eq!(sermant_weight(2, 0, Some(now - 30_000), 60_000, now), 0);
        assert_eq!(sermant_weight(2, -5, Some(now - 30_000), 60_000, now), 0);
        // an instance as Sermant registers it (GraceHelper.configWarmUpParams): the keys lossless
        // reads by default give Sermant's ramp with the Sermant curve
        let md: std::collections::BTreeMap<String, String> = [
            ("sermant.grace.warmup.cal.curve", "2"),
            ("sermant.grace.warmup.inject.time", &(now - 30_000).to_string()),
            ("sermant.grace.warmup.weight", "100"),
            ("sermant.grace.warmup.time", "60"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let b = crate::instance::BuildOptions::default();
        let (i, bad) = b.build("10.0.0.1:1".into(), None, None, crate::instance::State::Serving, &md);
        assert_eq!((i.weight, i.start_ms, i.warmup_ms, bad), (100, Some(now - 30_000), 60_000, 0));
        let c = Curve { sermant: Some(2), ..Curve::default() };
        assert_eq!(c.weight(i.weight, i.start_ms, i.warmup_ms, now), 25);
        assert!(!c.is_dubbo());
    }

    // ---- overload protection -------------------------------------------------------------

    fn share(warming: u64, candidates: u64) -> WarmingShare {
        WarmingShare { warming, candidates }
    }

    fn at(t: u32) -> OverloadProtection {
        OverloadProtection { threshold_percent: t }
    }

    fn inst(i: usize, weight: i32, start_ms: Option<i64>, state: crate::instance::State) -> Instance {
        Instance { addr: format!("10.0.0.{i}:80"), weight, start_ms, warmup_ms: 60_000, state }
    }

    const T0: i64 = 1_700_000_000_000;

    #[test]
    fn overload_protection_default_is_polaris_50() {
        assert_eq!(OverloadProtection::default().threshold_percent, 50);
    }

    /// The threshold is "at least" (Polaris' `>=` on the service-wide rule), with exact shares:
    /// 1 of 3 is 33.3 %, in force at 33 and not at 34.
    #[test]
    fn overload_protection_thresholds_and_boundaries() {
        let rows: &[(u32, u64, u64, bool)] = &[
            // threshold 0: in force as soon as one candidate warms
            (0, 0, 4, false),
            (0, 1, 4, true),
            (0, 1, 1000, true),
            // 50: exactly half is in force
            (50, 1, 2, true),
            (50, 2, 4, true),
            (50, 1, 4, false),
            (50, 1, 3, false),
            (50, 2, 3, true),
            (50, 3, 7, false),
            (50, 4, 7, true),
            (50, 49, 100, false),
            (50, 50, 100, true),
            (50, 0, 0, false),
            // between: floor(100 w / n) >= t is the same as 100 w >= t n
            (33, 1, 3, true),
            (34, 1, 3, false),
            (66, 2, 3, true),
            (67, 2, 3, false),
            // 100: only when every candidate warms
            (100, 3, 4, false),
            (100, 4, 4, true),
            (100, 1, 1, true),
            (100, 999, 1000, false),
            // above 100 never (configuration refuses it)
            (101, 4, 4, false),
        ];
        for (t, w, n, want) in rows {
            assert_eq!(at(*t).in_force(share(*w, *n)), *want, "threshold {t}: {w} of {n}");
        }
    }

    /// Who counts: serving candidates with a positive weight; warming = inside the window.
    #[test]
    fn warming_share_counts_serving_candidates_only() {
        use crate::instance::State::{Down, Draining, Serving};
        let now = T0 + 600_000;
        let ms = vec![
            inst(1, 100, Some(now - 10_000), Serving),  // warming
            inst(2, 100, Some(now - 60_000), Serving),  // window just over: warm
            inst(3, 100, None, Serving),                // no start time: warm
            inst(4, 100, Some(now + 5_000), Serving),   // start ahead of the clock: warming
            inst(5, 0, Some(now - 10_000), Serving),    // weight 0: no candidate
            inst(6, 100, Some(now - 10_000), Draining), // draining: no candidate
            inst(7, 100, Some(now - 10_000), Down),     // down or ejected: no candidate
            inst(8, 100, Some(now - 59_999), Serving),  // 1 ms left: warming
        ];
        assert_eq!(WarmingShare::of(&ms, now), share(3, 5));
        assert_eq!(WarmingShare::of(&[], now), share(0, 0));
        // what the share decides: 3 of 5 is 60 % (3 of 8 if every listed instance counted)
        assert!(at(60).in_force_for(&ms, now));
        assert!(!at(61).in_force_for(&ms, now));
    }

    /// Draining and down (ejected, failing a check) instances are not "all instances": two warm
    /// instances leaving make two warming ones half of what is left.
    #[test]
    fn draining_and_ejected_leave_the_count() {
        use crate::instance::State::{Down, Draining, Serving};
        let now = T0 + 600_000;
        let warming = Some(now - 10_000);
        let mut ms = vec![
            inst(1, 100, None, Serving),
            inst(2, 100, None, Serving),
            inst(3, 100, None, Serving),
            inst(4, 100, None, Serving),
            inst(5, 100, warming, Serving),
            inst(6, 100, warming, Serving),
        ];
        assert!(!at(50).in_force_for(&ms, now), "2 of 6");
        ms[0].state = Draining;
        assert!(!at(50).in_force_for(&ms, now), "2 of 5");
        ms[1].state = Down;
        assert_eq!(WarmingShare::of(&ms, now), share(2, 4));
        assert!(at(50).in_force_for(&ms, now), "2 of 4");
        // a warming instance that drains or is ejected leaves both counts
        ms[4].state = Draining;
        ms[5].state = Down;
        assert_eq!(WarmingShare::of(&ms, now), share(0, 2));
        assert!(!at(0).in_force_for(&ms, now), "nothing warms: nothing to stop");
    }

    #[test]
    fn one_instance_service() {
        use crate::instance::State::Serving;
        let now = T0 + 600_000;
        let warm = [inst(1, 100, Some(now - 600_000), Serving)];
        let cold = [inst(1, 100, Some(now - 1_000), Serving)];
        for t in [0, 50, 100] {
            assert!(!at(t).in_force_for(&warm, now), "threshold {t}");
            assert!(at(t).in_force_for(&cold, now), "threshold {t}: 1 of 1 warming");
        }
    }

    /// A rolling release of 3 instances with maxSurge 1 and maxUnavailable 0, each new instance
    /// warm before the next step (minReadySeconds at least the warmup): at most 1 of 4 warms,
    /// never in force at 50. Without the wait the new ones pile up: 2 of 4 is in force.
    #[test]
    fn rolling_release_3_instances_max_surge_1() {
        use crate::instance::State::{Draining, Serving};
        let warmup = 60_000;
        let mut ms: Vec<Instance> = (1..=3).map(|i| inst(i, 100, Some(T0 - 3_600_000), Serving)).collect();
        let mut now = T0;
        let mut seen = 0;
        for step in 0..3 {
            // surge: a new instance starts
            ms.push(inst(10 + step, 100, Some(now), Serving));
            for dt in (0..=warmup).step_by(1_000) {
                let t = now + dt;
                let s = WarmingShare::of(&ms, t);
                assert!(s.warming <= 1, "step {step} +{dt} ms: {s:?}");
                assert!(!at(50).in_force_for(&ms, t), "step {step} +{dt} ms: {s:?}");
                seen += 1;
                // it is ready at once; the old one it replaces drains while it still warms
                if dt == 1_000 {
                    assert_eq!(ms[0].start_ms, Some(T0 - 3_600_000), "an old one");
                    ms[0].state = Draining;
                }
            }
            now += warmup;
            // the drained one is gone before the next step
            ms.retain(|m| m.state == Serving);
        }
        assert_eq!(seen, 3 * 61);
        assert_eq!(ms.len(), 3);
        // without waiting out the warmup: the second new instance starts while the first warms
        let mut piled: Vec<Instance> = (1..=3).map(|i| inst(i, 100, None, Serving)).collect();
        piled.push(inst(10, 100, Some(T0), Serving));
        piled[0].state = Draining;
        piled.push(inst(11, 100, Some(T0 + 5_000), Serving));
        assert_eq!(WarmingShare::of(&piled, T0 + 6_000), share(2, 4));
        assert!(at(50).in_force_for(&piled, T0 + 6_000));
    }

    /// A scale-out from 2 to 8: 6 of 8 warm (75 %), in force at 50 and up to 75; as the new ones
    /// finish one by one it stays in force down to 4 of 8 and lifts at 3 of 8.
    #[test]
    fn scale_out_2_to_8() {
        use crate::instance::State::Serving;
        let mut ms: Vec<Instance> = (1..=2).map(|i| inst(i, 100, None, Serving)).collect();
        // six new instances, started 1 s apart
        ms.extend((0..6).map(|k| inst(10 + k, 100, Some(T0 + k as i64 * 1_000), Serving)));
        let now = T0 + 5_000;
        assert_eq!(WarmingShare::of(&ms, now), share(6, 8));
        assert!(at(50).in_force_for(&ms, now));
        assert!(at(75).in_force_for(&ms, now));
        assert!(!at(76).in_force_for(&ms, now));
        // the k-th new one is warm from T0 + k s + 60 s
        let after = |k: i64| T0 + k * 1_000 + 60_000;
        assert_eq!(WarmingShare::of(&ms, after(0)), share(5, 8));
        assert_eq!(WarmingShare::of(&ms, after(1)), share(4, 8));
        assert!(at(50).in_force_for(&ms, after(1)), "4 of 8 is 50 %");
        assert_eq!(WarmingShare::of(&ms, after(2)), share(3, 8));
        assert!(!at(50).in_force_for(&ms, after(2)), "3 of 8 is 37.5 %");
        assert!(!at(50).in_force_for(&ms, after(5)));
    }

    proptest! {
        #[test]
        fn within_bounds(uptime in 0i64..=2_000_000_000, warmup in 1i64..=i32::MAX as i64, weight in 1i32..=10_000) {
            let w = calculate_warmup_weight(uptime, warmup, weight);
            prop_assert!((1..=weight).contains(&w));
            let now = 3_000_000_000_000i64;
            let g = dubbo_weight(weight, Some(now - uptime), warmup, now);
            prop_assert!((1..=weight).contains(&g));
        }

        #[test]
        fn monotone_in_uptime(a in 0i64..=1_300_000, b in 0i64..=1_300_000, warmup in 1i64..=1_200_000, weight in 1i32..=1000) {
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            prop_assert!(calculate_warmup_weight(lo, warmup, weight) <= calculate_warmup_weight(hi, warmup, weight));
            let now = 2_000_000_000_000i64;
            // getWeight is monotone except at uptime == 0 (which skips the ramp, as in Dubbo)
            if lo > 0 {
                prop_assert!(dubbo_weight(weight, Some(now - lo), warmup, now) <= dubbo_weight(weight, Some(now - hi), warmup, now));
            }
        }

        /// The verdict is Polaris' own expression (`needWarmupCount * 100 / size >= threshold`,
        /// Java `int` division) whenever some instance warms.
        #[test]
        fn overload_verdict_is_polaris_expression(n in 1u64..=100_000, w in 1u64..=100_000, t in 0u32..=150) {
            let w = w.min(n);
            let polaris = (w as i32 * 100 / n as i32) >= t as i32;
            prop_assert_eq!(at(t).in_force(share(w, n)), polaris);
        }

        #[test]
        fn curve_bounds(uptime in 0i64..=1_000_000, warmup in 1i64..=1_000_000, weight in 1i32..=1000, aggr in 0.1f32..=10.0, minp in 0f32..=100.0) {
            let c = Curve { aggression: aggr, min_weight_percent: minp, sermant: None };
            let now = 2_000_000_000_000i64;
            let w = c.weight(weight, Some(now - uptime), warmup, now);
            prop_assert!((1..=weight).contains(&w));
        }
    }
}
