//! The warmup weight: Apache Dubbo 3.3 `AbstractLoadBalance.getWeight`, bit-exact, plus optional
//! curves behind configuration: Envoy-slow-start-like (`aggression`, `min_weight_percent`) or
//! Sermant's (`sermant`).
//!
//! Dubbo computes `(int) (uptime / ((float) warmup / weight))` where `uptime` and `warmup` are
//! Java `long`/`int` promoted to `float`: both divisions happen in f32. Doing the same sums in f64
//! gives different integers for some inputs (e.g. uptime 10000, warmup 20000, weight 14: 7 in Java,
//! 6 in f64), so everything here stays in f32 on purpose.

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

#[cfg(test)]
mod tests {
    use super::*;
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

        #[test]
        fn curve_bounds(uptime in 0i64..=1_000_000, warmup in 1i64..=1_000_000, weight in 1i32..=1000, aggr in 0.1f32..=10.0, minp in 0f32..=100.0) {
            let c = Curve { aggression: aggr, min_weight_percent: minp, sermant: None };
            let now = 2_000_000_000_000i64;
            let w = c.weight(weight, Some(now - uptime), warmup, now);
            prop_assert!((1..=weight).contains(&w));
        }
    }
}
