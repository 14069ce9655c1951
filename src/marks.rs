//! Marks that callers put on instances ahead of the registry, shared by every VM of one Envoy
//! through one shared-data key ([`crate::store::Keys::marks`]), and the cross-VM writes that set
//! and prune them (each one [`update_cas`]).

use crate::clock::FastMap as HashMap;

use crate::health::{Ejection, OutlierDetection, TRIAL_TIMEOUT_MS};
use crate::instance::{Instance, State};
use crate::store::{bump_gen, update_cas, Keys, Shared};

/// Marks set by callers, shared by every VM:
/// - drain marks: instances that said themselves they are draining (the drain header), with the
///   start time they had when marked. Such a mark holds until the registry shows the instance with
///   a newer start time (it restarted) or no longer lists it;
/// - ejections ([`crate::health`]): instances that failed (connection failures, gateway failures,
///   timeouts). Out until a trial request after the ejection time succeeds, the registry shows a
///   restart, or the instance leaves the registry.
///
/// - failing active health checks ([`crate::health::HealthCheck`]): instances the poller's probes
///   found unhealthy (or not yet healthy), with their start time, until a probe passes;
/// - stalls ([`crate::stall`]): instances that stopped answering while the others answer, or
///   whose connections could not be made. Out until the first answer from them (a late response
///   to a request already on them, or a stall probe), a restart the registry shows, or until they
///   leave the registry.
///
/// A drain wins over an ejection, a failing check or a stall; the registry's own draining or down
/// wins over all of them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Marks {
    /// addr -> start_ms at the time of the drain mark (0 when unknown).
    pub m: HashMap<String, i64>,
    /// addr -> its ejection.
    pub ejected: HashMap<String, Ejection>,
    /// addr -> start_ms when its health check started failing (0 when unknown).
    pub unhealthy: HashMap<String, i64>,
    /// addr -> its stall ([`crate::stall`]).
    pub stalled: HashMap<String, Stall>,
}

/// Why an instance was stalled (see [`crate::stall`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StallCause {
    /// Requests were outstanding on it for longer than its bound, with no answer, while another
    /// instance of the service answered requests sent after them.
    Quiet,
    /// A connection to it could not be made (refused or timed out: nothing reached it).
    ConnectFailure,
}

impl StallCause {
    /// The name in logs, stats and the membership document.
    pub fn as_str(self) -> &'static str {
        match self {
            StallCause::Quiet => "quiet",
            StallCause::ConnectFailure => "connect_failure",
        }
    }
    fn code(self) -> i64 {
        match self {
            StallCause::Quiet => 0,
            StallCause::ConnectFailure => 1,
        }
    }
    fn from_code(c: i64) -> Option<StallCause> {
        match c {
            0 => Some(StallCause::Quiet),
            1 => Some(StallCause::ConnectFailure),
            _ => None,
        }
    }
}

/// A stall, shared by every VM (one line of [`Marks::encode`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stall {
    /// When it was taken out (ms since the epoch).
    pub since_ms: i64,
    /// The instance's start time then (0 unknown): a newer start (a restart) ends the stall.
    pub start_ms: i64,
    pub cause: StallCause,
}

/// At most this many marks are kept (shared data is never freed: keep it bounded).
pub const MAX_MARKS: usize = 4096;

impl Marks {
    /// The shared-data form: one mark per line, `d addr start_ms` (drain),
    /// `e addr times until_ms start_ms trial_until_ms` (ejection), `u addr start_ms` (failing
    /// health check), `s addr since_ms start_ms cause` (stall; cause 0 quiet, 1 connect failure).
    /// Read on every view rebuild: plain text parses fast and in little code. A reader skips the
    /// kinds it does not know, so a module without stalls reads a table that has them.
    pub fn encode(&self) -> Vec<u8> {
        use std::fmt::Write;
        let mut out = String::new();
        for (a, s) in &self.m {
            let _ = writeln!(out, "d {a} {s}");
        }
        for (a, e) in &self.ejected {
            let _ = writeln!(out, "e {a} {} {} {} {}", e.times, e.until_ms, e.start_ms, e.trial_until_ms);
        }
        for (a, s) in &self.unhealthy {
            let _ = writeln!(out, "u {a} {s}");
        }
        for (a, s) in &self.stalled {
            let _ = writeln!(out, "s {a} {} {} {}", s.since_ms, s.start_ms, s.cause.code());
        }
        out.into_bytes()
    }

    /// Reads [`Marks::encode`]'s form; a malformed line is skipped (it never blocks the rest).
    pub fn decode(b: &[u8]) -> Marks {
        let mut marks = Marks::default();
        for line in String::from_utf8_lossy(b).lines() {
            let mut f = line.split(' ');
            let (Some(kind), Some(addr)) = (f.next(), f.next()) else { continue };
            let nums: Vec<i64> = f.map_while(|x| x.parse().ok()).collect();
            match (kind, nums.as_slice()) {
                ("d", [start]) => {
                    marks.m.insert(addr.to_string(), *start);
                }
                ("u", [start]) => {
                    marks.unhealthy.insert(addr.to_string(), *start);
                }
                ("e", [times, until_ms, start_ms, trial_until_ms]) => {
                    let times = u32::try_from(*times).unwrap_or(u32::MAX);
                    let e =
                        Ejection { times, until_ms: *until_ms, start_ms: *start_ms, trial_until_ms: *trial_until_ms };
                    marks.ejected.insert(addr.to_string(), e);
                }
                ("s", [since_ms, start_ms, cause]) => {
                    if let Some(cause) = StallCause::from_code(*cause) {
                        let st = Stall { since_ms: *since_ms, start_ms: *start_ms, cause };
                        marks.stalled.insert(addr.to_string(), st);
                    }
                }
                _ => {}
            }
        }
        marks
    }

    fn len(&self) -> usize {
        self.m.len() + self.ejected.len() + self.unhealthy.len() + self.stalled.len()
    }

    /// No mark of any kind.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn full(&self) -> bool {
        self.len() >= MAX_MARKS
    }

    /// Stalls `addr` (start time `start_ms`) at `now_ms`; false when it is stalled already or the
    /// table is full.
    pub fn stall(&mut self, addr: &str, start_ms: Option<i64>, now_ms: i64, cause: StallCause) -> bool {
        if self.stalled.contains_key(addr) || self.full() {
            return false;
        }
        self.stalled.insert(addr.to_string(), Stall { since_ms: now_ms, start_ms: start_ms.unwrap_or(0), cause });
        true
    }

    /// Is this member stalled (a newer start time than the stall's means it restarted: not)?
    pub fn is_stalled(&self, m: &Instance) -> bool {
        self.stalled.get(&m.addr).is_some_and(|s| m.start_ms.unwrap_or(0) <= s.start_ms)
    }

    /// Records the verdict of `addr`'s health check: failing marks it (with its start time),
    /// passing clears the mark and readmits an ejected instance (it answered). True if changed.
    pub fn set_health(&mut self, addr: &str, start_ms: Option<i64>, healthy: bool) -> bool {
        if healthy {
            let a = self.unhealthy.remove(addr).is_some();
            let b = self.ejected.remove(addr).is_some();
            a || b
        } else if self.unhealthy.contains_key(addr) || self.full() {
            false
        } else {
            self.unhealthy.insert(addr.to_string(), start_ms.unwrap_or(0));
            true
        }
    }

    /// Is this member's health check failing (a newer start time means it restarted: not)?
    pub fn is_unhealthy(&self, m: &Instance) -> bool {
        self.unhealthy.get(&m.addr).is_some_and(|s| m.start_ms.unwrap_or(0) <= *s)
    }

    /// Marks `addr` draining; false when it was marked already or the table is full.
    pub fn mark(&mut self, addr: &str, start_ms: Option<i64>) -> bool {
        if self.m.contains_key(addr) || self.full() {
            return false;
        }
        self.m.insert(addr.to_string(), start_ms.unwrap_or(0));
        true
    }

    /// Ejects `addr` (start time `start_ms`) at `now_ms`, or extends the ejection of an instance
    /// whose trial failed (`trial`): the ejection time grows with each one in a row. False when it
    /// is ejected already (and this is no trial), or the table is full.
    pub fn eject(
        &mut self,
        addr: &str,
        start_ms: Option<i64>,
        now_ms: i64,
        od: &OutlierDetection,
        trial: bool,
    ) -> bool {
        let times = match self.ejected.get(addr) {
            Some(e) if trial => e.times.saturating_add(1),
            Some(_) => return false,
            None if self.full() => return false,
            None => 1,
        };
        let until_ms = now_ms.saturating_add(od.ejection_ms(times));
        self.ejected
            .insert(addr.to_string(), Ejection { times, until_ms, start_ms: start_ms.unwrap_or(0), trial_until_ms: 0 });
        true
    }

    /// Takes the trial of `addr` at `now_ms` if it is due; false when not (another VM has it).
    pub fn claim_trial(&mut self, addr: &str, now_ms: i64) -> bool {
        match self.ejected.get_mut(addr) {
            Some(e) if e.trial_due(now_ms) => {
                e.trial_until_ms = now_ms.saturating_add(TRIAL_TIMEOUT_MS);
                true
            }
            _ => false,
        }
    }

    /// Does a drain mark apply to this member?
    pub fn applies(&self, m: &Instance) -> bool {
        match self.m.get(&m.addr) {
            Some(marked) => m.start_ms.unwrap_or(0) <= *marked,
            None => false,
        }
    }

    /// Is this member ejected (also while its trial is due or out)? A newer start time than the
    /// one it was ejected with means it restarted: not ejected.
    pub fn is_ejected(&self, m: &Instance) -> bool {
        self.ejected.get(&m.addr).is_some_and(|e| m.start_ms.unwrap_or(0) <= e.start_ms)
    }

    /// When some ejection next changes meaning (a trial falls due or times out; `i64::MAX` if none).
    pub fn next_expiry(&self, now_ms: i64) -> i64 {
        self.ejected.values().map(|e| e.next_change(now_ms)).min().unwrap_or(i64::MAX)
    }

    /// Drops marks and ejections whose instance restarted (newer start time) or is listed by no
    /// service. `lookup` gives the member for an address across all services. True if changed.
    pub fn prune<'a>(&mut self, lookup: impl Fn(&str) -> Option<&'a Instance>) -> bool {
        let before = self.len();
        let current = |addr: &str, marked: i64| lookup(addr).is_some_and(|inst| inst.start_ms.unwrap_or(0) <= marked);
        self.m.retain(|addr, marked| current(addr, *marked));
        self.ejected.retain(|addr, e| current(addr, e.start_ms));
        self.unhealthy.retain(|addr, marked| current(addr, *marked));
        self.stalled.retain(|addr, s| current(addr, s.start_ms));
        self.len() != before
    }
}

/// The membership a VM routes by: the snapshot with drain marks and ejections applied to the
/// members the registry lists as serving.
pub fn apply_marks(members: &mut [Instance], marks: &Marks) {
    if marks.is_empty() {
        return;
    }
    for m in members.iter_mut().filter(|m| m.state.is_serving()) {
        if marks.applies(m) {
            m.state = State::Draining;
        } else if marks.is_ejected(m) || marks.is_unhealthy(m) || marks.is_stalled(m) {
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

/// Ejects `member` for every VM (see [`Marks::eject`]), unless `may_eject` says its service has
/// as many ejected as it may. `may_eject` gets the marks as they are now.
pub fn eject(
    shared: &dyn Shared,
    keys: &Keys,
    member: &Instance,
    now_ms: i64,
    od: &OutlierDetection,
    trial: bool,
    may_eject: impl Fn(&Marks) -> bool,
) -> bool {
    edit_marks(shared, keys, |marks| {
        (trial || may_eject(marks)) && marks.eject(&member.addr, member.start_ms, now_ms, od, trial)
    })
}

/// Takes the trial of `addr` for this VM (see [`Marks::claim_trial`]).
pub fn claim_trial(shared: &dyn Shared, keys: &Keys, addr: &str, now_ms: i64) -> bool {
    edit_marks(shared, keys, |marks| marks.claim_trial(addr, now_ms))
}

/// The trial of `addr` succeeded: it gets traffic again, for every VM.
pub fn readmit(shared: &dyn Shared, keys: &Keys, addr: &str) -> bool {
    edit_marks(shared, keys, |marks| marks.ejected.remove(addr).is_some())
}

/// Records a health-check verdict for every VM (see [`Marks::set_health`]).
pub fn set_health(shared: &dyn Shared, keys: &Keys, member: &Instance, healthy: bool) -> bool {
    edit_marks(shared, keys, |marks| marks.set_health(&member.addr, member.start_ms, healthy))
}

/// Drops marks and ejections the registry has overtaken (see [`Marks::prune`]). `lookup` finds a
/// member by address across every service.
pub fn prune<'a>(shared: &dyn Shared, keys: &Keys, lookup: impl Fn(&str) -> Option<&'a Instance>) {
    edit_marks(shared, keys, |marks| !marks.is_empty() && marks.prune(&lookup));
}

/// Stalls `member` for every VM (see [`Marks::stall`]), unless `may_stall` (given the marks as
/// they are now, see [`crate::stall::may_stall`]) says its service has as many out as it may.
/// True when written.
pub fn stall(
    shared: &dyn Shared,
    keys: &Keys,
    member: &Instance,
    now_ms: i64,
    cause: StallCause,
    may_stall: impl Fn(&Marks) -> bool,
) -> bool {
    edit_marks(shared, keys, |marks| may_stall(marks) && marks.stall(&member.addr, member.start_ms, now_ms, cause))
}

/// `addr` answered: its stall ends, for every VM. True when a stall was removed.
pub fn recover(shared: &dyn Shared, keys: &Keys, addr: &str) -> bool {
    edit_marks(shared, keys, |marks| marks.stalled.remove(addr).is_some())
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

    fn i(addr: &str, state: State, start: Option<i64>) -> Instance {
        Instance { addr: addr.into(), weight: 100, start_ms: start, warmup_ms: 1000, state }
    }

    #[test]
    fn marks_apply_and_prune() {
        let mut marks = Marks::default();
        assert!(marks.mark("10.0.0.1:80", Some(100)));
        assert!(!marks.mark("10.0.0.1:80", Some(100)));
        let mut ms = vec![i("10.0.0.1:80", State::Serving, Some(100)), i("10.0.0.2:80", State::Serving, None)];
        apply_marks(&mut ms, &marks);
        assert_eq!((ms[0].state, ms[1].state), (State::Draining, State::Serving));
        let back = Marks::decode(&marks.encode());
        assert_eq!(back, marks);
        assert_eq!(Marks::decode(b"garbage"), Marks::default());
        // every kind round-trips; a malformed line is skipped, the rest kept
        let mut all = marks.clone();
        all.eject("10.0.0.3:80", Some(7), 1000, &OutlierDetection::default(), false);
        all.set_health("[::1]:9", None, false);
        assert_eq!(Marks::decode(&all.encode()), all);
        let mut text = all.encode();
        text.extend_from_slice(b"e 1.2.3.4:5 x\nd\n\xff\xfe\nz a 1\n");
        assert_eq!(Marks::decode(&text), all);
        // restarted with a newer start time: the mark goes
        let restarted = i("10.0.0.1:80", State::Serving, Some(200));
        assert!(marks.prune(|_| Some(&restarted)));
        assert!(marks.m.is_empty());
        // gone from the registry: the mark goes
        marks.mark("10.0.0.9:80", None);
        assert!(marks.prune(|_| None));
        // bounded
        for k in 0..MAX_MARKS + 10 {
            marks.mark(&format!("10.1.{}.{}:80", k / 256, k % 256), None);
        }
        assert_eq!(marks.m.len(), MAX_MARKS);
        assert!(
            !marks.eject("10.9.9.9:80", None, 0, &OutlierDetection::default(), false),
            "bounded, ejections included"
        );
    }

    /// The ejection state machine, one step per row: what happens, and the state after it.
    #[test]
    fn ejection_state_machine() {
        let od = OutlierDetection::default();
        let a = "10.0.0.2:80";
        let member = i(a, State::Serving, Some(100));
        let mut marks = Marks::default();
        // ejected: out, not due for a trial before the base time
        assert!(marks.eject(a, Some(100), 1000, &od, false));
        assert!(marks.is_ejected(&member));
        assert!(!marks.eject(a, Some(100), 1500, &od, false), "ejected once, not again");
        assert!(!marks.claim_trial(a, 30_999));
        assert_eq!(marks.next_expiry(1000), 31_000);
        // the time is over: still out (no blind re-admission), one trial at a time
        assert!(marks.is_ejected(&member));
        assert!(marks.claim_trial(a, 31_000));
        assert!(!marks.claim_trial(a, 31_001), "another VM does not get a second trial");
        // the trial failed: out again for twice as long
        assert!(marks.eject(a, Some(100), 32_000, &od, true));
        let e = marks.ejected[a];
        assert_eq!((e.times, e.until_ms, e.trial_until_ms), (2, 92_000, 0));
        // a trial that never comes back frees the next one after its timeout
        assert!(marks.claim_trial(a, 92_000));
        assert!(!marks.claim_trial(a, 92_000 + TRIAL_TIMEOUT_MS - 1));
        assert!(marks.claim_trial(a, 92_000 + TRIAL_TIMEOUT_MS));
        // repeated failures are capped
        for k in 0..20 {
            marks.eject(a, Some(100), 200_000 + k, &od, true);
        }
        assert_eq!(marks.ejected[a].until_ms - 200_019, od.max_ejection_time_ms);
        // a trial succeeded: readmitted
        assert!(marks.ejected.remove(a).is_some());
        assert!(!marks.is_ejected(&member));
    }

    #[test]
    fn registry_and_drain_win_over_an_ejection() {
        let od = OutlierDetection::default();
        let mut marks = Marks::default();
        marks.eject("10.0.0.1:80", Some(100), 0, &od, false);
        marks.eject("10.0.0.2:80", Some(100), 0, &od, false);
        marks.mark("10.0.0.2:80", Some(100));
        let mut ms = vec![
            i("10.0.0.1:80", State::Serving, Some(100)),
            i("10.0.0.2:80", State::Serving, Some(100)),
            i("10.0.0.3:80", State::Draining, None),
        ];
        marks.eject("10.0.0.3:80", None, 0, &od, false);
        apply_marks(&mut ms, &marks);
        assert_eq!(ms[0].state, State::Down, "ejected");
        assert_eq!(ms[1].state, State::Draining, "a drain wins over an ejection");
        assert_eq!(ms[2].state, State::Draining, "the registry's word wins");
        // restarted (newer start time): the ejection no longer applies, and prune drops it
        let restarted = i("10.0.0.1:80", State::Serving, Some(200));
        assert!(!marks.is_ejected(&restarted));
        let lookup = |a: &str| if a == "10.0.0.1:80" { Some(&restarted) } else { None };
        assert!(marks.prune(lookup));
        assert!(marks.ejected.is_empty(), "restarted or gone: every ejection dropped");
    }

    #[test]
    fn health_checks_mark_and_readmit() {
        let od = OutlierDetection::default();
        let a = i("10.0.0.1:80", State::Serving, Some(100));
        let mut marks = Marks::default();
        assert!(marks.set_health(&a.addr, a.start_ms, false));
        assert!(!marks.set_health(&a.addr, a.start_ms, false), "no change");
        let mut ms = vec![a.clone()];
        apply_marks(&mut ms, &marks);
        assert_eq!(ms[0].state, State::Down);
        // a passing probe clears the mark and ends an ejection: the instance answered
        marks.eject(&a.addr, a.start_ms, 0, &od, false);
        assert!(marks.set_health(&a.addr, a.start_ms, true));
        assert!(marks.unhealthy.is_empty() && marks.ejected.is_empty());
        // a restart clears a failing check
        marks.set_health(&a.addr, a.start_ms, false);
        let restarted = i("10.0.0.1:80", State::Serving, Some(200));
        assert!(!marks.is_unhealthy(&restarted));
        assert!(marks.prune(|_| Some(&restarted)));
        assert!(marks.unhealthy.is_empty());
    }

    /// Stalls: shared as `s` lines, applied like an ejection, below a drain, ended by a restart,
    /// by leaving the registry, or by [`recover`]; the shared write takes the guard.
    #[test]
    fn stalls_share_apply_and_end() {
        use crate::store::{FakeShared, Shared};
        let a = i("10.0.0.1:80", State::Serving, Some(100));
        let b = i("10.0.0.2:80", State::Serving, Some(100));
        let mut marks = Marks::default();
        assert!(marks.stall(&a.addr, a.start_ms, 5000, StallCause::Quiet));
        assert!(!marks.stall(&a.addr, a.start_ms, 6000, StallCause::ConnectFailure), "stalled already");
        assert!(marks.stall(&b.addr, b.start_ms, 7000, StallCause::ConnectFailure));
        let text = String::from_utf8(marks.encode()).unwrap();
        assert!(text.contains("s 10.0.0.1:80 5000 100 0\n") && text.contains("s 10.0.0.2:80 7000 100 1\n"), "{text}");
        assert_eq!(Marks::decode(&marks.encode()), marks);
        // an unknown cause is skipped, the rest kept
        let mut bytes = marks.encode();
        bytes.extend_from_slice(b"s 10.0.0.3:80 1 2 9\ns 10.0.0.4:80 1\n");
        assert_eq!(Marks::decode(&bytes), marks);
        // applied like an ejection, a drain wins
        marks.mark(&b.addr, b.start_ms);
        let mut ms = vec![a.clone(), b.clone(), i("10.0.0.3:80", State::Serving, None)];
        apply_marks(&mut ms, &marks);
        assert_eq!((ms[0].state, ms[1].state, ms[2].state), (State::Down, State::Draining, State::Serving));
        // a restart ends it, and prune drops it; so does leaving the registry
        let restarted = i("10.0.0.1:80", State::Serving, Some(200));
        assert!(marks.is_stalled(&a) && !marks.is_stalled(&restarted));
        assert!(marks.prune(|x| (x == "10.0.0.1:80").then_some(&restarted)));
        assert!(marks.is_empty());
        // through shared data: guarded, generation bumped, recovered for every VM
        let keys = Keys::new(b"{}");
        let shared = FakeShared::default();
        keys.create_all(&shared);
        let gen = shared.get(keys.gen()).1;
        assert!(!stall(&shared, &keys, &a, 5000, StallCause::Quiet, |_| false), "the guard says no");
        assert_eq!(shared.get(keys.gen()).1, gen, "nothing written");
        assert!(stall(&shared, &keys, &a, 5000, StallCause::Quiet, |m| m.stalled.is_empty()));
        assert!(!stall(&shared, &keys, &b, 5000, StallCause::Quiet, |m| m.stalled.is_empty()), "one at a time here");
        assert_ne!(shared.get(keys.gen()).1, gen);
        let seen = Marks::decode(&shared.get(&keys.marks()).0.unwrap());
        assert_eq!(seen.stalled[&a.addr], Stall { since_ms: 5000, start_ms: 100, cause: StallCause::Quiet });
        assert!(recover(&shared, &keys, &a.addr));
        assert!(!recover(&shared, &keys, &a.addr), "once");
        assert!(Marks::decode(&shared.get(&keys.marks()).0.unwrap()).is_empty());
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
