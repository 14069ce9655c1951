//! Marks that callers put on instances ahead of the registry, shared by every VM of one Envoy
//! through one shared-data key ([`crate::store::Keys::marks`]), and the cross-VM writes that set
//! and prune them (each one [`update_cas`]).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::instance::{Instance, State};
use crate::store::{bump_gen, update_cas, Keys, Shared};

/// Marks set by callers, shared by every VM:
/// - drain marks: instances that said themselves they are draining (the drain header), with the
///   start time they had when marked. Such a mark holds until the registry shows the instance with
///   a newer start time (it restarted) or no longer lists it;
/// - down marks: instances a request just failed on (connection failure, reset, refusal: Envoy
///   retried elsewhere), until an expiry; after it the instance gets traffic again, and is marked
///   again if it still fails (passive health checking, ahead of the registry).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Marks {
    /// addr -> start_ms at the time of the drain mark (0 when unknown).
    pub m: HashMap<String, i64>,
    /// addr -> until when (ms since epoch) the instance counts as down.
    #[serde(default)]
    pub down: HashMap<String, i64>,
}

/// At most this many marks are kept (shared data is never freed: keep it bounded).
pub const MAX_MARKS: usize = 4096;

impl Marks {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
    pub fn decode(b: &[u8]) -> Marks {
        if b.is_empty() {
            return Marks::default();
        }
        serde_json::from_slice(b).unwrap_or_default()
    }

    /// Marks `addr` draining; false when it was marked already or the table is full.
    pub fn mark(&mut self, addr: &str, start_ms: Option<i64>) -> bool {
        if self.m.contains_key(addr) || self.m.len() + self.down.len() >= MAX_MARKS {
            return false;
        }
        self.m.insert(addr.to_string(), start_ms.unwrap_or(0));
        true
    }

    /// Marks `addr` down until `until_ms`; false when an unexpired mark exists or the table is full.
    pub fn mark_down(&mut self, addr: &str, now_ms: i64, until_ms: i64) -> bool {
        if self.down.get(addr).is_some_and(|u| *u > now_ms) {
            return false;
        }
        if !self.down.contains_key(addr) && self.m.len() + self.down.len() >= MAX_MARKS {
            return false;
        }
        self.down.insert(addr.to_string(), until_ms);
        true
    }

    /// Does a drain mark apply to this member?
    pub fn applies(&self, m: &Instance) -> bool {
        match self.m.get(&m.addr) {
            Some(marked) => m.start_ms.unwrap_or(0) <= *marked,
            None => false,
        }
    }

    /// Is this address marked down at `now_ms`?
    pub fn is_down(&self, addr: &str, now_ms: i64) -> bool {
        self.down.get(addr).is_some_and(|u| *u > now_ms)
    }

    /// The earliest expiry of a down mark still in force (`i64::MAX` if none).
    pub fn next_expiry(&self, now_ms: i64) -> i64 {
        self.down.values().copied().filter(|u| *u > now_ms).min().unwrap_or(i64::MAX)
    }

    /// Drops marks whose instance restarted (newer start time) or is listed by no service.
    /// `lookup` gives the member for an address across all services, if any. True if changed.
    /// Expired down marks go too.
    pub fn prune<'a>(&mut self, now_ms: i64, lookup: impl Fn(&str) -> Option<&'a Instance>) -> bool {
        let before = self.m.len() + self.down.len();
        self.m.retain(|addr, marked| match lookup(addr) {
            Some(inst) => inst.start_ms.unwrap_or(0) <= *marked,
            None => false,
        });
        self.down.retain(|_, until| *until > now_ms);
        self.m.len() + self.down.len() != before
    }
}

/// The membership a VM routes by: the snapshot with drain and down marks applied.
pub fn apply_marks(members: &mut [Instance], marks: &Marks, now_ms: i64) {
    if marks.m.is_empty() && marks.down.is_empty() {
        return;
    }
    for m in members.iter_mut().filter(|m| m.state.is_serving()) {
        if marks.applies(m) {
            m.state = State::Draining;
        } else if marks.is_down(&m.addr, now_ms) {
            m.state = State::Down;
        }
    }
}

/// Edits the shared marks with `edit` (see [`update_cas`]); bumps the generation when written.
fn edit_marks(shared: &dyn Shared, keys: &Keys, edit: impl FnMut(&mut Marks) -> bool) -> bool {
    let written = update_cas(shared, &keys.marks(), Marks::decode, Marks::encode, edit);
    if written {
        bump_gen(shared, keys);
    }
    written
}

/// Marks the member `addr` (canonical) draining for every VM (it said so with the drain header);
/// `start_ms` is its start time as the membership has it. Returns true when a new mark was written.
pub fn mark_draining(shared: &dyn Shared, keys: &Keys, addr: &str, start_ms: Option<i64>) -> bool {
    edit_marks(shared, keys, |marks| marks.mark(addr, start_ms))
}

/// Marks members a request failed on down for every VM until `now_ms + ttl_ms`. Returns how many
/// new marks were written.
pub fn mark_failed(shared: &dyn Shared, keys: &Keys, addrs: &[&str], now_ms: i64, ttl_ms: i64) -> usize {
    if addrs.is_empty() || ttl_ms <= 0 {
        return 0;
    }
    let mut n = 0;
    edit_marks(shared, keys, |marks| {
        n = addrs.iter().filter(|a| marks.mark_down(a, now_ms, now_ms.saturating_add(ttl_ms))).count();
        n > 0
    });
    n
}

/// Drops marks the registry has overtaken (the instance restarted or is listed by no service) and
/// expired down marks. `lookup` finds a member by address across every service.
pub fn prune<'a>(shared: &dyn Shared, keys: &Keys, now_ms: i64, lookup: impl Fn(&str) -> Option<&'a Instance>) {
    edit_marks(shared, keys, |marks| !(marks.m.is_empty() && marks.down.is_empty()) && marks.prune(now_ms, &lookup));
}

/// Which of the addresses written for a request failed, given how many attempts Envoy made and
/// where the last one went. Envoy's override_host policy takes the list in order, one address per
/// attempt; when the last attempt is not where that order says (an address was skipped), nothing
/// is concluded.
pub fn failed_attempts<'a>(written: &'a [&'a str], attempts: usize, last_upstream: &str) -> &'a [&'a str] {
    if attempts < 2 || written.get(attempts - 1).copied() != Some(last_upstream) {
        return &[];
    }
    written.get(..attempts - 1).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn i(addr: &str, state: State, start: Option<i64>) -> Instance {
        Instance { addr: addr.into(), weight: 100, start_ms: start, warmup_ms: 1000, state, metadata: BTreeMap::new() }
    }

    #[test]
    fn marks_apply_and_prune() {
        let mut marks = Marks::default();
        assert!(marks.mark("10.0.0.1:80", Some(100)));
        assert!(!marks.mark("10.0.0.1:80", Some(100)));
        let mut ms = vec![i("10.0.0.1:80", State::Serving, Some(100)), i("10.0.0.2:80", State::Serving, None)];
        apply_marks(&mut ms, &marks, 0);
        assert_eq!((ms[0].state, ms[1].state), (State::Draining, State::Serving));
        let back = Marks::decode(&marks.encode());
        assert_eq!(back, marks);
        assert_eq!(Marks::decode(b"garbage"), Marks::default());
        // restarted with a newer start time: the mark goes
        let restarted = i("10.0.0.1:80", State::Serving, Some(200));
        assert!(marks.prune(0, |_| Some(&restarted)));
        assert!(marks.m.is_empty());
        // gone from the registry: the mark goes
        marks.mark("10.0.0.9:80", None);
        assert!(marks.prune(0, |_| None));
        // bounded
        for k in 0..MAX_MARKS + 10 {
            marks.mark(&format!("10.1.{}.{}:80", k / 256, k % 256), None);
        }
        assert_eq!(marks.m.len(), MAX_MARKS);
        assert!(!marks.mark_down("10.9.9.9:80", 0, 10), "bounded, down marks included");
    }

    #[test]
    fn down_marks_expire() {
        let mut marks = Marks::default();
        assert!(marks.mark_down("10.0.0.2:80", 1000, 5000));
        assert!(!marks.mark_down("10.0.0.2:80", 2000, 9000), "still in force");
        let mut ms = vec![i("10.0.0.1:80", State::Serving, None), i("10.0.0.2:80", State::Serving, None)];
        apply_marks(&mut ms, &marks, 4999);
        assert_eq!((ms[0].state, ms[1].state), (State::Serving, State::Down));
        assert_eq!(marks.next_expiry(4999), 5000);
        let mut ms2 = vec![i("10.0.0.2:80", State::Serving, None)];
        apply_marks(&mut ms2, &marks, 5000);
        assert_eq!(ms2[0].state, State::Serving, "expired: traffic again");
        assert_eq!(marks.next_expiry(5000), i64::MAX);
        assert!(marks.mark_down("10.0.0.2:80", 5000, 9000), "fails again: marked again");
        assert!(marks.prune(9000, |_| None));
        assert!(marks.down.is_empty());
        // a mark from an older encoding without `down` still decodes
        assert_eq!(Marks::decode(br#"{"m":{"a":1}}"#).m.len(), 1);
    }

    #[test]
    fn failed_attempts_follow_the_written_order() {
        let written = ["10.0.0.2:80", "10.0.0.3:80", "10.0.0.1:80"];
        // two attempts, the second went to the second address: the first failed
        assert_eq!(failed_attempts(&written, 2, "10.0.0.3:80"), &written[..1]);
        // the order does not match (an address was skipped): nothing is concluded
        assert!(failed_attempts(&written, 2, "10.0.0.1:80").is_empty());
        assert!(failed_attempts(&written, 1, "10.0.0.2:80").is_empty());
        assert!(failed_attempts(&written, 7, "10.0.0.2:80").is_empty());
    }
}
