//! Departed instances: addresses that left a service's membership, remembered for a while so that
//! a caller still picking them from its own stale list is corrected rather than sent to a dead or
//! reused address.
//!
//! The time starts when lossless sees the address leave the registry's list, and the callers
//! read the same registry: what must be outlived is the callers' own caches on top of that
//! (defaults in [`super::Settings`]). One record per service, kept in Envoy shared data by the
//! VM that publishes the service's snapshots, so every VM (and one started later) knows the same
//! departed addresses.

use std::collections::BTreeMap;

use crate::instance::Instance;

/// At most this many departed addresses per service (shared data is never freed); the oldest go
/// first.
pub const MAX_DEPARTED: usize = 4096;

/// The departed addresses of one service: address -> until when (ms since the epoch) it is
/// remembered.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Departed {
    pub until_ms: BTreeMap<String, i64>,
}

impl Departed {
    /// Records the change from membership `prev` to `next` (both sorted by address, as every
    /// [`crate::membership::Snapshot`] is) at `now_ms`: an address of `prev` absent from `next`
    /// is departed until `now_ms + ttl_ms`; an address in `next` is live again and forgotten here
    /// (a live mapping always wins). Expired records are pruned. Returns true when something
    /// changed.
    pub fn update(&mut self, prev: &[Instance], next: &[Instance], now_ms: i64, ttl_ms: i64) -> bool {
        let mut changed = self.prune(now_ms);
        let until = now_ms.saturating_add(ttl_ms.max(0));
        for m in next {
            changed |= self.until_ms.remove(&m.addr).is_some();
        }
        if ttl_ms > 0 {
            for m in prev {
                if crate::instance::position(next, &m.addr).is_none() {
                    self.until_ms.insert(m.addr.clone(), until);
                    changed = true;
                }
            }
        }
        if self.until_ms.len() > MAX_DEPARTED {
            let mut all: Vec<(i64, String)> = self.until_ms.iter().map(|(a, u)| (*u, a.clone())).collect();
            all.sort_unstable();
            let excess = self.until_ms.len() - MAX_DEPARTED;
            for (_, a) in all.iter().take(excess) {
                self.until_ms.remove(a);
            }
        }
        changed
    }

    /// Forgets the records whose time is over. Returns true when one was dropped.
    pub fn prune(&mut self, now_ms: i64) -> bool {
        let before = self.until_ms.len();
        self.until_ms.retain(|_, u| *u > now_ms);
        self.until_ms.len() != before
    }

    /// The departed addresses remembered at `now_ms`.
    pub fn live_records(&self, now_ms: i64) -> impl Iterator<Item = &str> {
        self.until_ms.iter().filter(move |(_, u)| **u > now_ms).map(|(a, _)| a.as_str())
    }

    pub fn contains(&self, addr: &str, now_ms: i64) -> bool {
        self.until_ms.get(addr).is_some_and(|u| *u > now_ms)
    }

    /// The shared-data form: one `addr until_ms` line per address.
    pub fn encode(&self) -> Vec<u8> {
        use std::fmt::Write;
        let mut out = String::new();
        for (a, u) in &self.until_ms {
            let _ = writeln!(out, "{a} {u}");
        }
        out.into_bytes()
    }

    /// Reads [`Departed::encode`]'s form; a malformed line is skipped.
    pub fn decode(b: &[u8]) -> Departed {
        let mut until_ms = BTreeMap::new();
        for line in String::from_utf8_lossy(b).lines() {
            let mut f = line.split(' ');
            if let (Some(a), Some(Ok(u)), None) = (f.next(), f.next().map(str::parse::<i64>), f.next()) {
                if !a.is_empty() && until_ms.len() < MAX_DEPARTED {
                    until_ms.insert(a.to_string(), u);
                }
            }
        }
        Departed { until_ms }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::State;

    const NOW: i64 = 1_800_000_000_000;

    fn m(addr: &str) -> Instance {
        Instance { addr: addr.into(), weight: 100, start_ms: None, warmup_ms: 0, state: State::Serving }
    }

    #[test]
    fn departure_is_remembered_for_the_ttl_and_a_return_wins() {
        let mut d = Departed::default();
        let ab = [m("10.0.0.1:80"), m("10.0.0.2:80")];
        let b = [m("10.0.0.2:80")];
        assert!(d.update(&ab, &b, NOW, 240_000));
        assert!(d.contains("10.0.0.1:80", NOW + 239_999));
        assert!(!d.contains("10.0.0.1:80", NOW + 240_000));
        assert!(!d.contains("10.0.0.2:80", NOW));
        // it comes back: forgotten at once
        assert!(d.update(&b, &ab, NOW + 1000, 240_000));
        assert!(!d.contains("10.0.0.1:80", NOW + 1000));
        // unchanged membership, nothing expired: no change
        assert!(!d.update(&ab, &ab, NOW + 2000, 240_000));
        // prune drops expired records
        d.update(&ab, &b, NOW + 3000, 10);
        assert!(d.prune(NOW + 4000));
        assert!(d.until_ms.is_empty());
        // a ttl of 0 remembers nothing
        assert!(!d.update(&ab, &b, NOW, 0));
    }

    #[test]
    fn bounded_oldest_first() {
        let mut d = Departed::default();
        let many: Vec<Instance> =
            (0..MAX_DEPARTED + 5).map(|i| m(&format!("10.1.{}.{}:80", i / 250, i % 250))).collect();
        let mut sorted = many.clone();
        sorted.sort_by(|a, b| a.addr.cmp(&b.addr));
        // the first five leave earlier than the rest, and go first
        d.update(&sorted[..5], &[], NOW, 1000);
        d.update(&sorted[5..], &[], NOW + 1, 1000);
        assert_eq!(d.until_ms.len(), MAX_DEPARTED);
        assert!(sorted[..5].iter().all(|m| !d.until_ms.contains_key(&m.addr)));
    }

    #[test]
    fn encode_decode() {
        let mut d = Departed::default();
        d.update(&[m("10.0.0.1:80"), m("[::1]:80")], &[], NOW, 5000);
        assert_eq!(Departed::decode(&d.encode()), d);
        let junk = Departed::decode(b"a:1 5\nbad\n b\nc:1 x\nd:1 1 2\n");
        assert_eq!(junk.until_ms.len(), 1);
        assert_eq!(d.live_records(NOW).count(), 2);
        assert_eq!(d.live_records(NOW + 5000).count(), 0);
    }
}
