//! The callers' pick distribution `q` of one service, estimated from the picks seen: per address,
//! a count that decays exponentially with a half-life (an exponentially weighted moving
//! average), so that `q̂_i = c_i / Σ c` follows the callers when their instance lists change.
//!
//! The estimate must be process-wide. Envoy hands each downstream connection to one worker, and a
//! caller that picks `ip:port` itself opens its connections per address, so one worker may see
//! only the picks of one address: a per-worker estimate would find every worker's callers
//! "over-picking" and redirect far more than needed (the final shares would still be right, since
//! each worker's correction is exact for what it sees, but the redirected share would not be the
//! least). So every VM counts its picks in a [`Pending`], keeps its own decayed counts
//! ([`Picks`]), and now and then writes them to its slot of the service's [`Slots`] in Envoy
//! shared data ([`flush`]); it plans from the sum of every slot.
//!
//! Each VM's counts are taken as they were at its last flush, not decayed to the reader's now
//! (for a grace of about one flush interval): a single aggregate that decays everything on every
//! write would hold each reader's own picks fresh and the others' short of what they picked since
//! their last flush, so that every worker would see its own addresses over-picked and redirect
//! more than needed; with two workers splitting a round-robin caller's addresses, a warming
//! instance at 12 % got 16 %. A steady count is the same at the last flush and now, so the sum of
//! the slots is unbiased; when the callers change, it lags by at most one flush interval.

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

    /// Writes one `addr count` line per address, the count in thousandths of a pick (an
    /// integer: no float formatting in the module).
    fn write_counts(&self, out: &mut String) {
        use std::fmt::Write;
        for (a, c) in &self.counts {
            let milli = (c * 1000.0).round();
            let milli = if milli.is_finite() && milli > 0.0 { milli.min(u64::MAX as f64) as u64 } else { 0 };
            let _ = writeln!(out, "{a} {milli}");
        }
    }

    /// Reads an `addr count` line of [`Picks::write_counts`] into the counts; anything else,
    /// a zero count, and counts past [`MAX_ADDRESSES`] add nothing.
    fn read_count(&mut self, line: &str) {
        let mut f = line.split(' ');
        if let (Some(a), Some(Ok(milli)), None) = (f.next(), f.next().map(str::parse::<u64>), f.next()) {
            if milli > 0 && self.counts.len() < MAX_ADDRESSES {
                self.counts.insert(a.to_string(), milli as f64 / 1000.0);
            }
        }
    }
}

/// At most this many VMs' slots are kept per service (one per Envoy worker, and those of VMs that
/// went away until their counts have decayed); the stalest go first.
pub const MAX_SLOTS: usize = 64;

/// The shared-data form of one service's estimate: every VM's own decayed counts as of its last
/// flush, keyed by the VM's id ([`crate::vm::Vm::vm_id`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Slots {
    pub by_vm: BTreeMap<u64, Picks>,
}

impl Slots {
    /// The factor a slot written at `at_ms` is read with at `now_ms`: 1 within `grace_ms` (its VM
    /// flushes again before then), then the decay of the time past it (the VM stopped flushing:
    /// it was replaced, or its counts are going).
    fn factor(at_ms: i64, now_ms: i64, grace_ms: i64, half_life_ms: i64) -> f64 {
        let late = now_ms.saturating_sub(at_ms).saturating_sub(grace_ms);
        if late > 0 {
            decay(late, half_life_ms)
        } else {
            1.0
        }
    }

    /// The estimate at `now_ms`: the sum over the slots, each in full within `grace_ms` of its
    /// write and decayed by the time past that.
    pub fn merged(&self, now_ms: i64, grace_ms: i64, half_life_ms: i64) -> Picks {
        let mut sum = Picks { at_ms: now_ms, counts: BTreeMap::new() };
        for slot in self.by_vm.values() {
            let f = Self::factor(slot.at_ms, now_ms, grace_ms, half_life_ms);
            for (a, c) in &slot.counts {
                *sum.counts.entry(a.clone()).or_insert(0.0) += c * f;
            }
        }
        sum.counts.retain(|_, c| *c >= FLOOR);
        sum
    }

    /// Puts VM `vm_id`'s counts `own` in its slot (removes the slot when they are all gone) and
    /// drops the slots of VMs whose counts decayed away; at most [`MAX_SLOTS`] are kept, the
    /// stalest dropped first. True when anything changed (the slots must be written).
    pub fn put(&mut self, vm_id: u64, own: &Picks, now_ms: i64, grace_ms: i64, half_life_ms: i64) -> bool {
        let mut changed = if own.counts.is_empty() {
            self.by_vm.remove(&vm_id).is_some()
        } else {
            self.by_vm.insert(vm_id, own.clone()).as_ref() != Some(own)
        };
        let before = self.by_vm.len();
        self.by_vm.retain(|_, p| p.total() * Self::factor(p.at_ms, now_ms, grace_ms, half_life_ms) >= FLOOR);
        while self.by_vm.len() > MAX_SLOTS {
            let stalest =
                self.by_vm.iter().filter(|(id, _)| **id != vm_id).min_by_key(|(_, p)| p.at_ms).map(|(id, _)| *id);
            let Some(id) = stalest else { break };
            self.by_vm.remove(&id);
        }
        changed |= self.by_vm.len() != before;
        changed
    }

    /// The shared-data form: `lossless-picks-by-vm`, then per slot a `vm <id> <at_ms>` line and
    /// its `addr count` lines (the count in thousandths of a pick).
    pub fn encode(&self) -> Vec<u8> {
        use std::fmt::Write;
        let mut out = String::from("lossless-picks-by-vm\n");
        for (id, p) in &self.by_vm {
            let _ = writeln!(out, "vm {id} {}", p.at_ms);
            p.write_counts(&mut out);
        }
        out.into_bytes()
    }

    /// Reads [`Slots::encode`]'s form; anything else reads as no slots, a line that is neither a
    /// slot's head nor a count is skipped, and at most [`MAX_SLOTS`] slots are read.
    pub fn decode(b: &[u8]) -> Slots {
        let text = String::from_utf8_lossy(b);
        let mut lines = text.lines();
        let mut slots = Slots::default();
        if lines.next() != Some("lossless-picks-by-vm") {
            return slots;
        }
        let mut current: Option<(u64, Picks)> = None;
        for line in lines {
            if let Some(head) = line.strip_prefix("vm ") {
                if let Some((id, p)) = current.take() {
                    slots.by_vm.insert(id, p);
                }
                let mut f = head.split(' ');
                if let (Some(Ok(id)), Some(Ok(at_ms)), None) =
                    (f.next().map(str::parse::<u64>), f.next().map(str::parse::<i64>), f.next())
                {
                    if slots.by_vm.len() < MAX_SLOTS {
                        current = Some((id, Picks { at_ms, counts: BTreeMap::new() }));
                    }
                }
            } else if let Some((_, p)) = current.as_mut() {
                p.read_count(line);
            }
        }
        if let Some((id, p)) = current {
            slots.by_vm.insert(id, p);
        }
        slots
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

/// Adds this VM's `pending` picks to its own counts `own` (decayed to `now_ms`), puts those in
/// the VM's slot of the service's [`Slots`] under `key` (one CAS write, retried under contention;
/// see [`crate::store::update_cas`]; nothing is written when the slot is unchanged) and returns
/// the estimate the VM plans from: the sum of the slots as read, with its own counts in its slot
/// ([`Slots::merged`]). `grace_ms`: how long a slot counts in full after its write, at least
/// one flush interval. A lost CAS race loses nothing: the picks are in `own`, written with the
/// next flush. `None` only when the key could not be read at all.
#[allow(clippy::too_many_arguments)]
pub fn flush(
    shared: &dyn Shared,
    key: &str,
    vm_id: u64,
    own: &mut Picks,
    pending: &mut Pending,
    now_ms: i64,
    grace_ms: i64,
    half_life_ms: i64,
) -> Option<Picks> {
    own.absorb(pending, now_ms, half_life_ms);
    pending.clear();
    let mut merged = None;
    update_cas(shared, key, Slots::decode, Slots::encode, |slots| {
        let changed = slots.put(vm_id, own, now_ms, grace_ms, half_life_ms);
        merged = Some(slots.merged(now_ms, grace_ms, half_life_ms));
        changed
    });
    merged
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
        let mut slots = Slots::default();
        assert!(slots.put(7, &p, NOW, 500, 1000));
        assert!(slots.put(u64::MAX, &p, NOW, 500, 1000));
        let back = Slots::decode(&slots.encode());
        assert_eq!(back, slots);
        assert_eq!(Slots::decode(b""), Slots::default());
        assert_eq!(Slots::decode(b"nonsense"), Slots::default());
        assert_eq!(Slots::decode(b"lossless-picks 5\na:1 2500\n"), Slots::default(), "another form");
        let d = Slots::decode(
            b"lossless-picks-by-vm\nz:1 9\nvm 3 5\na:1 2500\nbad\nb:1 x\nc:1 -1\nd:1 NaN\ne:1 1 2\nf:1 0\ng:1 2.5\nvm x 1\nh:1 7\nvm 4 6 7\n",
        );
        assert_eq!(d.by_vm.len(), 1, "{d:?}");
        assert_eq!((d.by_vm[&3].at_ms, d.by_vm[&3].counts.len(), d.by_vm[&3].count("a:1")), (5, 1, 2.5));
        // decayed counts keep a thousandth of a pick
        let mut p = Picks::default();
        p.counts.insert("a:1".into(), 1.23449);
        p.counts.insert("b:1".into(), 0.0004);
        let mut slots = Slots::default();
        slots.put(1, &p, 0, 500, 1000);
        let back = Slots::decode(&slots.encode());
        assert_eq!((back.by_vm[&1].count("a:1"), back.by_vm[&1].count("b:1")), (1.234, 0.0));
    }

    /// Two VMs flush into their slots: nothing is lost, both plan from the sum.
    #[test]
    fn flush_aggregates_across_vms() {
        let s = FakeShared::default();
        let key = "lossless/x/picks-by-vm/orders";
        let (mut own1, mut own2) = (Picks::default(), Picks::default());
        let mut vm1 = pending(&[("10.0.0.1:80", 40)]);
        let mut vm2 = pending(&[("10.0.0.2:80", 60)]);
        let a = flush(&s, key, 1, &mut own1, &mut vm1, NOW, 500, 2000).unwrap();
        assert_eq!(a.total(), 40.0);
        assert!(vm1.is_empty());
        let b = flush(&s, key, 2, &mut own2, &mut vm2, NOW, 500, 2000).unwrap();
        assert_eq!(b.count("10.0.0.1:80"), 40.0);
        assert_eq!(b.count("10.0.0.2:80"), 60.0);
        // a VM with nothing new reads the same
        let c = flush(&s, key, 3, &mut Picks::default(), &mut Pending::default(), NOW + 10, 500, 2000).unwrap();
        assert_eq!(c.total(), 100.0);
    }

    /// A VM's counts are read as of its last flush while it flushes on (its steady picks are not
    /// taken as fewer than they are because it flushed a moment before the reader), and decay
    /// once it stopped: a replaced VM's picks fade as a single count's would, and its slot goes.
    #[test]
    fn a_slot_counts_in_full_until_its_vm_is_late() {
        let s = FakeShared::default();
        let key = "k";
        let mut own1 = Picks::default();
        flush(&s, key, 1, &mut own1, &mut pending(&[("a:1", 100)]), NOW, 500, 1000);
        let mut own2 = Picks::default();
        let read = |at: i64, own2: &mut Picks| flush(&s, key, 2, own2, &mut Pending::default(), at, 500, 1000).unwrap();
        assert_eq!(read(NOW + 400, &mut own2).count("a:1"), 100.0, "within the grace");
        assert!((read(NOW + 1500, &mut own2).count("a:1") - 50.0).abs() < 1e-9, "one half-life past it");
        let _ = read(NOW + 30_000, &mut own2);
        let (bytes, _) = s.get(key);
        assert_eq!(Slots::decode(&bytes.unwrap()), Slots::default(), "decayed away: the slot is dropped");
        // a VM whose own counts are gone removes its slot
        let mut own3 = Picks::default();
        flush(&s, key, 3, &mut own3, &mut pending(&[("a:1", 1)]), NOW, 500, 1000);
        flush(&s, key, 3, &mut own3, &mut Pending::default(), NOW + 20_000, 500, 1000);
        assert!(own3.counts.is_empty());
        assert_eq!(Slots::decode(&s.get(key).0.unwrap()), Slots::default());
    }

    /// The slots of more VMs than any Envoy runs stay bounded: the stalest go first, the writer's
    /// own stays.
    #[test]
    fn slots_are_bounded() {
        let mut slots = Slots::default();
        let p = |at_ms: i64| Picks { at_ms, counts: [("a:1".to_string(), 1000.0)].into_iter().collect() };
        for id in 0..(MAX_SLOTS as u64 + 5) {
            slots.put(id, &p(NOW + id as i64), NOW + 100, 10_000, 1000);
        }
        assert_eq!(slots.by_vm.len(), MAX_SLOTS);
        assert!(!slots.by_vm.contains_key(&0) && slots.by_vm.contains_key(&(MAX_SLOTS as u64 + 4)));
        slots.put(0, &p(NOW - 5000), NOW + 100, 10_000, 1000);
        assert!(slots.by_vm.contains_key(&0), "the writer's own slot is kept");
    }

    /// A write that keeps losing its CAS race loses no picks: they are in the VM's own counts,
    /// written with its next flush, and the estimate it plans from has them.
    #[test]
    fn a_lost_race_loses_no_picks() {
        struct Busy;
        impl Shared for Busy {
            fn get(&self, _: &str) -> (Option<Vec<u8>>, Option<u32>) {
                (Some(Vec::new()), Some(1))
            }
            fn set(&self, _: &str, _: &[u8], _: Option<u32>) -> bool {
                false
            }
        }
        let mut own = Picks::default();
        let mut p = pending(&[("a:1", 2)]);
        let got = flush(&Busy, "k", 1, &mut own, &mut p, NOW, 500, 1000).unwrap();
        assert_eq!((got.count("a:1"), own.count("a:1")), (2.0, 2.0));
        assert!(p.is_empty());
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
