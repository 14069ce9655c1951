//! The callers' pick distribution `q` of one service, estimated from the picks seen: per address,
//! a count that decays exponentially with a half-life (an exponentially weighted moving
//! average), so that `q̂_i = c_i / Σ c` follows the callers when their instance lists change.
//!
//! The estimate must be process-wide. Envoy hands each downstream connection to one worker, and a
//! caller that picks `ip:port` itself opens its connections per address, so one worker may see
//! only the picks of one address: a per-worker estimate would find every worker's callers
//! "over-picking" and redirect far more than needed (the final shares would still be right, since
//! each worker's correction is exact for what it sees, but the redirected share would not be the
//! least). So every VM counts its picks in a [`Pending`] and adds them now and then to one
//! [`Picks`] aggregate kept in Envoy shared data ([`flush`]), and plans from that aggregate.

use std::collections::BTreeMap;

use crate::clock::FastMap;
use crate::store::{update_cas, Shared};

/// At most this many addresses are kept per service (shared data is never freed: keep it
/// bounded); the smallest counts go first.
pub const MAX_ADDRESSES: usize = 4096;

/// A count that decayed below this is dropped.
const FLOOR: f64 = 1e-3;

/// The process-wide decayed pick counts of one service, as of `at_ms`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Picks {
    /// When the counts were last decayed (ms since the epoch).
    pub at_ms: i64,
    /// Address (`ip:port`, as [`crate::instance::Instance::addr`]) -> decayed count.
    pub counts: BTreeMap<String, f64>,
}

impl Picks {
    /// Decays every count to `now_ms` (`c · 2^(-Δt / half_life_ms)`) and adds `pending`; counts
    /// below a floor are dropped and at most [`MAX_ADDRESSES`] are kept. A `now_ms` before `at_ms`
    /// (another VM's clock read later) decays nothing.
    pub fn absorb(&mut self, pending: &Pending, now_ms: i64, half_life_ms: i64) {
        let dt = now_ms.saturating_sub(self.at_ms);
        if dt > 0 && !self.counts.is_empty() {
            let factor = decay(dt, half_life_ms);
            for c in self.counts.values_mut() {
                *c *= factor;
            }
            self.counts.retain(|_, c| *c >= FLOOR);
        }
        self.at_ms = self.at_ms.max(now_ms);
        for (addr, n) in &pending.counts {
            *self.counts.entry(addr.clone()).or_insert(0.0) += f64::from(*n);
        }
        if self.counts.len() > MAX_ADDRESSES {
            let mut all: Vec<f64> = self.counts.values().copied().collect();
            all.sort_by(|a, b| b.total_cmp(a));
            let cut = all.get(MAX_ADDRESSES).copied().unwrap_or(0.0);
            self.counts.retain(|_, c| *c > cut);
        }
    }

    /// The sum of all counts (the estimate's weight of evidence, in decayed picks).
    pub fn total(&self) -> f64 {
        self.counts.values().sum()
    }

    /// The decayed count of `addr` (0 when never picked).
    pub fn count(&self, addr: &str) -> f64 {
        self.counts.get(addr).copied().unwrap_or(0.0)
    }

    /// The shared-data form: `lossless-picks at_ms`, then one `addr count` line per address, the
    /// count in thousandths of a pick (an integer: no float formatting in the module).
    pub fn encode(&self) -> Vec<u8> {
        use std::fmt::Write;
        let mut out = format!("lossless-picks {}\n", self.at_ms);
        for (a, c) in &self.counts {
            let milli = (c * 1000.0).round();
            let milli = if milli.is_finite() && milli > 0.0 { milli.min(u64::MAX as f64) as u64 } else { 0 };
            let _ = writeln!(out, "{a} {milli}");
        }
        out.into_bytes()
    }

    /// Reads [`Picks::encode`]'s form. Anything unreadable is an empty estimate (it rebuilds from
    /// the next picks); a malformed line is skipped.
    pub fn decode(b: &[u8]) -> Picks {
        let text = String::from_utf8_lossy(b);
        let mut lines = text.lines();
        let Some(at_ms) = lines.next().and_then(|h| h.strip_prefix("lossless-picks ")).and_then(|v| v.parse().ok())
        else {
            return Picks::default();
        };
        let mut counts = BTreeMap::new();
        for line in lines {
            let mut f = line.split(' ');
            if let (Some(a), Some(Ok(milli)), None) = (f.next(), f.next().map(str::parse::<u64>), f.next()) {
                if milli > 0 && counts.len() < MAX_ADDRESSES {
                    counts.insert(a.to_string(), milli as f64 / 1000.0);
                }
            }
        }
        Picks { at_ms, counts }
    }
}

/// `2^(-dt / half_life)`; 0 when the half-life is not positive (no memory).
pub fn decay(dt_ms: i64, half_life_ms: i64) -> f64 {
    if half_life_ms <= 0 {
        return 0.0;
    }
    (-(dt_ms as f64) / half_life_ms as f64).exp2()
}

/// The picks one VM saw since its last [`flush`].
#[derive(Debug, Clone, Default)]
pub struct Pending {
    counts: FastMap<String, u32>,
}

impl Pending {
    /// Counts one pick of `addr`. Allocates only the first time an address is seen. Bounded by
    /// [`MAX_ADDRESSES`]: the caller only records addresses the index resolved to a service.
    pub fn record(&mut self, addr: &str) {
        if let Some(n) = self.counts.get_mut(addr) {
            *n = n.saturating_add(1);
        } else if self.counts.len() < MAX_ADDRESSES {
            self.counts.insert(addr.to_string(), 1);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    pub fn clear(&mut self) {
        self.counts.clear();
    }

    /// Picks counted so far.
    pub fn len(&self) -> u64 {
        self.counts.values().map(|n| u64::from(*n)).sum()
    }
}

/// Adds this VM's `pending` picks to the process-wide aggregate under `key` (one CAS write,
/// retried under contention; see [`crate::store::update_cas`]) and returns the aggregate as
/// written, which the VM then plans from; `pending` is cleared once written. With nothing pending
/// it only reads. `None` when the write kept failing (the picks stay pending for the next flush).
pub fn flush(shared: &dyn Shared, key: &str, pending: &mut Pending, now_ms: i64, half_life_ms: i64) -> Option<Picks> {
    if pending.is_empty() {
        let (bytes, _) = shared.get(key);
        return Some(Picks::decode(bytes.as_deref().unwrap_or_default()));
    }
    let mut written = None;
    let ok = update_cas(shared, key, Picks::decode, Picks::encode, |p| {
        p.absorb(pending, now_ms, half_life_ms);
        written = Some(p.clone());
        true
    });
    if ok {
        pending.clear();
        written
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::FakeShared;

    const NOW: i64 = 1_800_000_000_000;

    fn pending(picks: &[(&str, u32)]) -> Pending {
        let mut p = Pending::default();
        for (a, n) in picks {
            for _ in 0..*n {
                p.record(a);
            }
        }
        p
    }

    #[test]
    fn counts_decay_by_half_life() {
        let mut p = Picks::default();
        p.absorb(&pending(&[("10.0.0.1:80", 100), ("10.0.0.2:80", 300)]), NOW, 1000);
        assert_eq!(p.count("10.0.0.1:80"), 100.0);
        p.absorb(&Pending::default(), NOW + 1000, 1000);
        assert!((p.count("10.0.0.1:80") - 50.0).abs() < 1e-9);
        assert!((p.total() - 200.0).abs() < 1e-9);
        // a clock read earlier by another VM decays nothing
        p.absorb(&Pending::default(), NOW, 1000);
        assert!((p.total() - 200.0).abs() < 1e-9);
        // long silence: everything drops out
        p.absorb(&Pending::default(), NOW + 60_000, 1000);
        assert!(p.counts.is_empty());
    }

    /// After the callers' lists change, the estimate follows within a few half-lives.
    #[test]
    fn estimate_follows_a_change() {
        let mut p = Picks::default();
        for k in 0..100 {
            p.absorb(&pending(&[("a:1", 10), ("b:1", 10)]), NOW + k * 100, 1000);
        }
        let share = |p: &Picks, a: &str| p.count(a) / p.total();
        assert!((share(&p, "a:1") - 0.5).abs() < 1e-9);
        // from now on, the callers pick a, b and c uniformly
        for k in 100..140 {
            p.absorb(&pending(&[("a:1", 10), ("b:1", 10), ("c:1", 10)]), NOW + k * 100, 1000);
        }
        // 4 s = 4 half-lives later: c's share is within 1/16 of its new value
        assert!((share(&p, "c:1") - 1.0 / 3.0).abs() < 1.0 / 3.0 / 16.0 + 0.01, "{}", share(&p, "c:1"));
    }

    #[test]
    fn encode_decode_round_trip_and_junk() {
        let mut p = Picks::default();
        p.absorb(&pending(&[("10.0.0.1:80", 3), ("[::1]:8080", 1)]), NOW, 1000);
        let back = Picks::decode(&p.encode());
        assert_eq!(back, p);
        assert_eq!(Picks::decode(b""), Picks::default());
        assert_eq!(Picks::decode(b"nonsense"), Picks::default());
        let d = Picks::decode(b"lossless-picks 5\na:1 2500\nbad\nb:1 x\nc:1 -1\nd:1 NaN\ne:1 1 2\nf:1 0\ng:1 2.5\n");
        assert_eq!(d.at_ms, 5);
        assert_eq!(d.counts.len(), 1);
        assert_eq!(d.count("a:1"), 2.5);
        // decayed counts keep a thousandth of a pick
        let mut p = Picks::default();
        p.counts.insert("a:1".into(), 1.23449);
        p.counts.insert("b:1".into(), 0.0004);
        let back = Picks::decode(&p.encode());
        assert_eq!((back.count("a:1"), back.count("b:1")), (1.234, 0.0));
    }

    /// Two VMs flush into one aggregate: nothing is lost, both plan from the sum.
    #[test]
    fn flush_aggregates_across_vms() {
        let s = FakeShared::default();
        let key = "lossless/x/picks/orders";
        let mut vm1 = pending(&[("10.0.0.1:80", 40)]);
        let mut vm2 = pending(&[("10.0.0.2:80", 60)]);
        let a = flush(&s, key, &mut vm1, NOW, 2000).unwrap();
        assert_eq!(a.total(), 40.0);
        assert!(vm1.is_empty());
        let b = flush(&s, key, &mut vm2, NOW, 2000).unwrap();
        assert_eq!(b.count("10.0.0.1:80"), 40.0);
        assert_eq!(b.count("10.0.0.2:80"), 60.0);
        // a read-only flush sees the same
        let c = flush(&s, key, &mut Pending::default(), NOW + 10, 2000).unwrap();
        assert_eq!(c.total(), 100.0);
    }

    /// A write that keeps losing its CAS race keeps the picks pending.
    #[test]
    fn failed_flush_keeps_pending() {
        struct Busy;
        impl Shared for Busy {
            fn get(&self, _: &str) -> (Option<Vec<u8>>, Option<u32>) {
                (Some(Vec::new()), Some(1))
            }
            fn set(&self, _: &str, _: &[u8], _: Option<u32>) -> bool {
                false
            }
        }
        let mut p = pending(&[("a:1", 2)]);
        assert_eq!(flush(&Busy, "k", &mut p, NOW, 1000), None);
        assert_eq!(p.len(), 2);
    }

    #[test]
    fn bounded() {
        let mut big = Pending::default();
        for i in 0..(MAX_ADDRESSES + 10) {
            big.record(&format!("10.{}.{}.{}:80", i / 65536, (i / 256) % 256, i % 256));
        }
        assert_eq!(big.counts.len(), MAX_ADDRESSES);
        let mut p = Picks::default();
        p.absorb(&big, NOW, 1000);
        assert!(p.counts.len() <= MAX_ADDRESSES);
        assert_eq!(decay(5, 0), 0.0);
    }
}
