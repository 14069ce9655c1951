//! Warm-up admission: caps the requests an instance admits per second on Sentinel's `WARM_UP`
//! flow-control curve, shared by every worker VM of the instance's sidecar.
//!
//! The model is Sentinel's `WarmUpController` (a token bucket whose stored tokens measure how cold
//! the system is), with Sentinel's own constants for a rule of threshold `count` (`max_rps`),
//! `coldFactor` (default 3) and `warmUpPeriodSec`:
//! - `warningToken = (int)(warmUpPeriodSec * count) / (coldFactor - 1)`;
//! - `maxToken = warningToken + (int)(2 * warmUpPeriodSec * count / (1.0 + coldFactor))`;
//! - `slope = (coldFactor - 1.0) / count / (maxToken - warningToken)`.
//!
//! Once per second the bucket is synced with the previous second's admitted count (`syncToken`):
//! tokens are added at `count` per second while below `warningToken`, or above it while the
//! previous second admitted fewer than `(int)count / coldFactor` (a lightly loaded system stays
//! cold), capped at `maxToken`; then the previous second's admitted count is taken away. A
//! request is admitted while this second's admitted count stays within
//! `Math.nextUp(1 / (aboveToken * slope + 1 / count))` (`aboveToken = storedTokens -
//! warningToken`) when the bucket is above `warningToken`, else within `count`. The bucket starts empty, so the first
//! sync fills it to `maxToken`: a new instance starts cold at `count / coldFactor`.
//!
//! Under a load above `count` the admitted rate then follows, `t` seconds after the load began,
//! `count / sqrt(1 + (coldFactor² - 1) * (1 - t / warmUpPeriodSec))` (see [`WarmUp::saturated_rps`])
//! up to `count` at `t = warmUpPeriodSec`. Sentinel counts admitted requests in a sliding window
//! of two 500 ms buckets; here the window is the wall-clock second, kept in Envoy's shared data
//! with one compare-and-swap per admitted request, so the cap holds for the instance whatever
//! Envoy's `--concurrency`.

use crate::store::Shared;

/// The constants of one warm-up rule (Sentinel's `WarmUpController.construct`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WarmUp {
    /// The threshold (requests per second once warm): Sentinel's `count`.
    pub count: f64,
    pub cold_factor: u32,
    warning_token: f64,
    max_token: f64,
    slope: f64,
}

impl WarmUp {
    /// A rule of `max_rps` (≥ 1), `cold_factor` (≥ 2) and a warm-up period of `warmup_s` (≥ 1)
    /// seconds.
    pub fn new(max_rps: u32, cold_factor: u32, warmup_s: u32) -> Self {
        let count = f64::from(max_rps.max(1));
        let c = cold_factor.max(2);
        let period = f64::from(warmup_s.max(1));
        // Sentinel casts both products to int before the division and the addition
        let warning_token = f64::from(((period * count) as i32) / (c as i32 - 1));
        let max_token = warning_token + f64::from((2.0 * period * count / (1.0 + f64::from(c))) as i32);
        let span = (max_token - warning_token).max(1.0);
        WarmUp { count, cold_factor: c, warning_token, max_token, slope: (f64::from(c) - 1.0) / count / span }
    }

    /// Requests per second admitted with `tokens` stored (Sentinel's `warningQps` above the warning
    /// line, `count` below it).
    pub fn allowed_rps(&self, tokens: f64) -> f64 {
        if tokens >= self.warning_token {
            let above = tokens - self.warning_token;
            // Sentinel takes the next float up: a whole rate (`count / coldFactor` on a full
            // bucket, `count` on the warning line) can come out of the divisions one ulp below
            // itself, which would admit one request less in every such second
            (1.0 / (above * self.slope + 1.0 / self.count)).next_up()
        } else {
            self.count
        }
    }

    /// The admitted rate `t_s` seconds into a load above `count` that started on a cold bucket:
    /// the closed form of the token bucket's decline (the reference the ramp is tested against).
    pub fn saturated_rps(&self, t_s: f64, warmup_s: f64) -> f64 {
        let c = f64::from(self.cold_factor);
        let left = (1.0 - t_s / warmup_s.max(1.0)).clamp(0.0, 1.0);
        self.count / (1.0 + (c * c - 1.0) * left).sqrt()
    }

    /// Sentinel's `coolDownTokens`: the tokens after refilling from `last_filled_ms` to `now_ms`.
    fn cool_down(&self, b: &Bucket, now_ms: i64, prev_passed: u64) -> f64 {
        let refill = || b.tokens + (now_ms - b.last_filled_ms) as f64 * self.count / 1000.0;
        let light = (prev_passed as f64) < f64::from((self.count as i32) / self.cold_factor as i32);
        let next =
            if b.tokens < self.warning_token || (b.tokens > self.warning_token && light) { refill() } else { b.tokens };
        next.min(self.max_token)
    }

    /// Moves `b` to the second of `now_ms` (syncing its tokens once per second) and decides one
    /// request: true (and counted in `b`) when it is admitted.
    pub fn admit(&self, b: &mut Bucket, now_ms: i64) -> bool {
        // workers' clocks differ by a few ms: a request a worker still dates in the previous
        // second counts in the bucket's current one (the window never moves back)
        let second = now_ms.div_euclid(1000).max(b.second);
        if second != b.second {
            b.prev_passed = if second == b.second + 1 { b.passed } else { 0 };
            b.passed = 0;
            b.second = second;
        }
        let start = second * 1000;
        if start > b.last_filled_ms {
            let cooled = self.cool_down(b, start, b.prev_passed);
            b.tokens = (cooled - b.prev_passed as f64).max(0.0);
            b.last_filled_ms = start;
        }
        if (b.passed + 1) as f64 <= self.allowed_rps(b.tokens) {
            b.passed += 1;
            true
        } else {
            false
        }
    }
}

/// The bucket every worker shares: the current second, what it admitted so far, what the second
/// before admitted, the stored tokens and when they were last synced (ms since the epoch).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Bucket {
    pub second: i64,
    pub passed: u64,
    pub prev_passed: u64,
    pub tokens: f64,
    pub last_filled_ms: i64,
}

impl Bucket {
    /// `second|passed|prev_passed|tokens|last_filled_ms`, the tokens as the bits of the `f64`
    /// (exact, and no float text in the module); `None` for anything else.
    pub fn decode(bytes: &[u8]) -> Option<Bucket> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut it = text.split('|');
        let b = Bucket {
            second: it.next()?.parse().ok()?,
            passed: it.next()?.parse().ok()?,
            prev_passed: it.next()?.parse().ok()?,
            tokens: f64::from_bits(it.next()?.parse().ok()?),
            last_filled_ms: it.next()?.parse().ok()?,
        };
        (it.next().is_none() && b.tokens.is_finite() && b.tokens >= 0.0).then_some(b)
    }

    pub fn encode(&self) -> String {
        let t = self.tokens.to_bits();
        format!("{}|{}|{}|{t}|{}", self.second, self.passed, self.prev_passed, self.last_filled_ms)
    }
}

/// What one admission check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Yes,
    /// Over this second's cap: refuse before any work.
    No,
    /// Shared data could not be updated (contention beyond the retries, or the host refused):
    /// admitted, since a proxy fault must not turn into refusals.
    Unsure,
}

/// Compare-and-swap attempts per request before admitting without a count.
const CAS_TRIES: usize = 8;

/// Decides one request against the bucket under `key` in shared data (read, decide, swap; again
/// when another worker swapped first).
pub fn check(shared: &dyn Shared, key: &str, rule: &WarmUp, now_ms: i64) -> Admit {
    for _ in 0..CAS_TRIES {
        let (bytes, cas) = shared.get(key);
        let mut b = bytes.as_deref().and_then(Bucket::decode).unwrap_or_default();
        if !rule.admit(&mut b, now_ms) {
            // a refusal changes only the sync, which the next admitted request writes as well
            return Admit::No;
        }
        if shared.set(key, b.encode().as_bytes(), cas) {
            return Admit::Yes;
        }
    }
    Admit::Unsure
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::FakeShared;

    /// Sentinel's constants for its documented example (`count` 100, `coldFactor` 3, 10 s):
    /// warningToken 500, maxToken 1000, the cold rate `count / coldFactor`.
    #[test]
    fn sentinel_constants() {
        let w = WarmUp::new(100, 3, 10);
        assert_eq!((w.warning_token, w.max_token), (500.0, 1000.0));
        assert!((w.allowed_rps(1000.0) - 100.0 / 3.0).abs() < 1e-9);
        assert!((w.allowed_rps(500.0) - 100.0).abs() < 1e-9);
        assert_eq!(w.allowed_rps(10.0), 100.0);
    }

    /// A cold rate that is a whole number is admitted whole, as Sentinel's `Math.nextUp` does:
    /// `1 / ((maxToken - warningToken) * slope + 1 / count)` is 38.99999999999999 for `count` 117
    /// and `coldFactor` 3, and 2.9999999999999996 for 18 and 6 (sentinel-core 1.8.8 admits 39 and
    /// 3 in the first second, see tests/sentinel_warmup.rs).
    #[test]
    fn a_whole_cold_rate_is_admitted_whole() {
        for (rps, cold, whole) in [(117u32, 3u32, 39u64), (18, 6, 3), (186, 2, 93), (105, 5, 21)] {
            let w = WarmUp::new(rps, cold, 10);
            let exact = 1.0 / ((w.max_token - w.warning_token) * w.slope + 1.0 / w.count);
            assert!(exact < whole as f64, "{rps}/{cold}: the division alone gives {exact}");
            assert_eq!(w.allowed_rps(w.max_token).floor(), whole as f64, "{rps}/{cold}");
            assert_eq!(saturate(&w, &mut Bucket::default(), 3_000, 1, u64::from(rps)), [whole], "{rps}/{cold}");
        }
        // on the warning line the rate is `count`, 99 for 99 (1 / (1 / 99) is 98.99999999999999)
        let w = WarmUp::new(99, 3, 10);
        assert!(1.0 / (1.0 / w.count) < 99.0);
        assert_eq!(w.allowed_rps(w.warning_token).floor(), 99.0);
    }

    /// Admits as many requests per second as a load above the cap lets through, second by second.
    fn saturate(w: &WarmUp, b: &mut Bucket, from_s: i64, seconds: i64, offered: u64) -> Vec<u64> {
        (from_s..from_s + seconds)
            .map(|s| (0..offered).filter(|i| w.admit(b, s * 1000 + (*i as i64 * 1000) / offered as i64)).count() as u64)
            .collect()
    }

    /// Sentinel's per-second process written out from its formulas: each second admits
    /// `floor(Math.nextUp(1 / (aboveToken * slope + 1 / count)))` (or `count` below the warning
    /// line) and the next sync takes that many tokens away (no refill under a heavy load above the
    /// line).
    fn sentinel_seconds(w: &WarmUp, seconds: usize) -> Vec<u64> {
        let mut tokens = w.max_token;
        let mut out = Vec::new();
        for _ in 0..seconds {
            let q = if tokens >= w.warning_token {
                (1.0 / ((tokens - w.warning_token) * w.slope + 1.0 / w.count)).next_up()
            } else {
                w.count
            };
            let n = q.floor();
            out.push(n as u64);
            let refill = if tokens < w.warning_token { w.count } else { 0.0 };
            tokens = (tokens + refill).min(w.max_token) - n;
        }
        out
    }

    /// Under a load above `count` the admitted rate starts at `count / coldFactor`, follows
    /// Sentinel's per-second process (±1 request every second), stays within 10 % of the closed
    /// form of the curve up to three quarters of the period (after that the per-second steps lag
    /// the steep end by up to a second), and is `count` after the period.
    #[test]
    fn ramp_follows_the_warm_up_curve() {
        for (rps, cold, period) in [(100u32, 3u32, 20u32), (300, 3, 30), (50, 4, 15), (1000, 2, 10)] {
            let w = WarmUp::new(rps, cold, period);
            let mut b = Bucket::default();
            let seconds = period as usize + 5;
            let got = saturate(&w, &mut b, 1_000, seconds as i64, u64::from(rps) * 2);
            let want = sentinel_seconds(&w, seconds);
            let first = *got.first().unwrap() as f64;
            assert!((first - f64::from(rps) / f64::from(cold)).abs() <= 1.0, "{rps}/{cold}: first second {first}");
            for (s, (n, m)) in got.iter().zip(&want).enumerate() {
                assert!(n.abs_diff(*m) <= 1, "{rps}/{cold}/{period}s: second {s} admitted {n}, Sentinel {m}");
                let curve = w.saturated_rps(s as f64, f64::from(period));
                if (s as f64) <= f64::from(period) * 0.75 {
                    let err = (*n as f64 - curve).abs() / curve;
                    assert!(err <= 0.10, "{rps}/{cold}/{period}s: second {s} admitted {n}, curve {curve:.1}");
                }
                assert!(*n <= u64::from(rps), "never above count");
            }
            assert_eq!(*got.last().unwrap(), u64::from(rps), "warm after the period");
        }
    }

    /// A lightly loaded instance stays cold (Sentinel refills above the warning line while the
    /// previous second passed fewer than `count / coldFactor`), and an idle one cools down again.
    #[test]
    fn light_load_stays_cold_and_idle_cools_down() {
        let w = WarmUp::new(90, 3, 10);
        let mut b = Bucket::default();
        // 20 rps for a minute: below 90 / 3, the bucket never warms
        for s in 0..60 {
            for i in 0..20 {
                assert!(w.admit(&mut b, 5_000_000 + s * 1000 + i * 50));
            }
        }
        assert_eq!(saturate(&w, &mut b, 5_060, 1, 200), [30], "still cold: count / coldFactor");
        // warm it fully, then leave it idle for a minute: cold again
        let warm = saturate(&w, &mut b, 5_061, 12, 200);
        assert_eq!(warm.last(), Some(&90));
        assert_eq!(saturate(&w, &mut b, 5_200, 1, 200), [30]);
    }

    /// The cap is per instance: requests of several workers share one bucket in shared data.
    #[test]
    fn shared_bucket_caps_all_workers_together() {
        let shared = FakeShared::default();
        let w = WarmUp::new(60, 3, 10);
        let mut admitted = 0;
        for i in 0..200 {
            // two workers interleaved within one second
            if check(&shared, "adm", &w, 7_000_000 + i * 4) == Admit::Yes {
                admitted += 1;
            }
        }
        assert_eq!(admitted, 20, "60 / 3 in the first (cold) second, whichever worker asked");
        let (bytes, _) = shared.get("adm");
        assert_eq!(Bucket::decode(&bytes.unwrap()).map(|b| b.passed), Some(20));
    }

    /// Two workers whose clocks straddle a second boundary do not reset each other's count: a
    /// request dated in the previous second counts in the current one.
    #[test]
    fn the_window_never_moves_back() {
        let w = WarmUp::new(30, 3, 10);
        let mut b = Bucket::default();
        let mut admitted = 0;
        for i in 0..100 {
            // alternately 40 ms behind and 40 ms ahead of a boundary
            let t = 9_000_000 + if i % 2 == 0 { -40 } else { 40 };
            admitted += u32::from(w.admit(&mut b, t));
        }
        // at most the cold 10 of the earlier second and 10 of the later one
        assert!(admitted <= 20, "{admitted}");
    }

    #[test]
    fn bucket_text_round_trips_and_rejects_garbage() {
        let b = Bucket { second: 12, passed: 3, prev_passed: 40, tokens: 512.25, last_filled_ms: 12_000 };
        assert_eq!(Bucket::decode(b.encode().as_bytes()), Some(b));
        let nan = f64::NAN.to_bits();
        for bad in ["", "1|2|3|4", "1|2|3|x|5", "1|2|3|4|5|6", &format!("1|2|3|{nan}|5"), "1|-2|3|4|5"] {
            assert_eq!(Bucket::decode(bad.as_bytes()), None, "{bad}");
        }
    }
}
