//! Service membership: the snapshot published through shared data, its compact encoding, and the
//! keep-last-good rules applied to every refresh.

use serde::Serialize;

use crate::instance::{push_int, push_uint, Instance, State};
use crate::registry::Parsed;

/// What every VM routes by: the members of one service at one version.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Snapshot {
    /// Bumped on every publish; VMs re-decode only when it changes.
    pub version: u64,
    /// When the registry last gave a list that was applied (ms since epoch).
    pub updated_ms: i64,
    /// Sorted by address; metadata is not carried.
    pub members: Vec<Instance>,
}

impl Snapshot {
    /// The shared-data form: a header line `lossless-snapshot version updated_ms`, then one line
    /// per member `addr weight start_ms|- warmup_ms state`. Decoded by every VM on each change:
    /// plain text parses fast and in little code.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(40 + 48 * self.members.len());
        out.extend_from_slice(b"lossless-snapshot ");
        push_uint(&mut out, self.version);
        out.push(b' ');
        push_int(&mut out, self.updated_ms);
        out.push(b'\n');
        for i in &self.members {
            out.extend_from_slice(i.addr.as_bytes());
            out.push(b' ');
            push_int(&mut out, i64::from(i.weight));
            out.push(b' ');
            match i.start_ms {
                Some(t) => push_int(&mut out, t),
                None => out.push(b'-'),
            }
            out.push(b' ');
            push_int(&mut out, i.warmup_ms);
            out.push(b' ');
            out.extend_from_slice(i.state.as_str().as_bytes());
            out.push(b'\n');
        }
        out
    }

    /// Reads [`Snapshot::encode`]'s form; anything else is an error naming the line.
    pub fn decode(bytes: &[u8]) -> Result<Snapshot, String> {
        let text = std::str::from_utf8(bytes).map_err(|e| e.to_string())?;
        let mut lines = text.lines();
        let head: Vec<&str> = lines.next().unwrap_or_default().split(' ').collect();
        let (version, updated_ms) = match head.as_slice() {
            ["lossless-snapshot", v, t] => {
                (v.parse::<u64>().map_err(|e| e.to_string())?, t.parse::<i64>().map_err(|e| e.to_string())?)
            }
            _ => return Err("not a snapshot".to_string()),
        };
        let mut members = Vec::new();
        for (n, line) in lines.enumerate() {
            let bad = || format!("snapshot line {}: {line:?}", n + 2);
            let f: Vec<&str> = line.split(' ').collect();
            let [addr, weight, start, warmup, state] = f.as_slice() else { return Err(bad()) };
            let start_ms = match *start {
                "-" => None,
                t => Some(t.parse().map_err(|_| bad())?),
            };
            let state = match *state {
                "serving" => State::Serving,
                "draining" => State::Draining,
                "down" => State::Down,
                _ => return Err(bad()),
            };
            members.push(Instance {
                addr: addr.to_string(),
                weight: weight.parse().map_err(|_| bad())?,
                start_ms,
                warmup_ms: warmup.parse().map_err(|_| bad())?,
                state,
            });
        }
        Ok(Snapshot { version, updated_ms, members })
    }

    /// Index of the member with this address (members are sorted).
    pub fn find(&self, addr: &str) -> Option<usize> {
        crate::instance::position(&self.members, addr)
    }
}

/// Keep-last-good options.
///
/// What a registry's list says, and what is held back:
/// - an instance *absent* from a list was taken out on purpose: Nacos omits `enabled=false`
///   instances and deregistered ones (naming ServiceUtil.doSelectInstances with enableOnly; the
///   v3 client list "will not return enabled=false instances", InstanceOpenApiController.list),
///   Eureka and Consul drop cancelled or deregistered ones. It applies within one refresh, however
///   many leave at once; a list that is empty altogether is held (below), and so are absences
///   while a restarted registry is being registered with again ([`Tracker::decide_at`]);
/// - an instance still listed but *down* is a health verdict, and a mass verdict is what a
///   health-check flap or a registry that lost its heartbeats looks like: held, as is an empty
///   list while the membership was not, until `confirm_refreshes` replies agree;
/// - an instance listed again shortly after it left may come from a view that has not seen it
///   leave (a lagging replica, a response cache): it needs a newer sign ([`ViewSign`], [`Grace`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Guard {
    /// Nacos' protect threshold (0..1), applied exactly as the Nacos server does
    /// (naming ServiceUtil.selectInstancesWithHealthyProtection): among the instances that are not
    /// deliberately out, when `healthy / total <= protect_threshold`, the down ones are routed to
    /// as well. At 0 (Nacos' default) that means: when none is healthy, route to all rather than
    /// to none. A registry that reports it protected (`reachProtectionThreshold`) counts too.
    pub protect_threshold: f64,
    /// A refresh in which more than this share (0..1) of the serving instances turn down at once
    /// is held back ...
    pub max_drop: f64,
    /// ... until this many consecutive refreshes agree.
    pub confirm_refreshes: u32,
}

impl Default for Guard {
    fn default() -> Self {
        Guard { protect_threshold: 0.0, max_drop: 0.5, confirm_refreshes: 3 }
    }
}

/// Why a refresh did not replace the membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// The list was empty while the membership was not (held until confirmed).
    Empty,
    /// More than `max_drop` of the serving instances turned down at once (held until confirmed).
    SuddenDrop,
}

impl Hold {
    pub fn kind(self) -> &'static str {
        match self {
            Hold::Empty => "empty",
            Hold::SuddenDrop => "sudden_drop",
        }
    }
}

/// The outcome of applying a parsed list to the current membership.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Publish these members. `protected` is true when the protect threshold let down instances in.
    Apply { members: Vec<Instance>, protected: bool },
    /// Keep the current membership.
    Keep(Hold),
}

/// How long a registry may take to settle, for the rules of
/// [`Tracker::decide_at`] (docs/registry-bad-days.md says where each default comes from).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Grace {
    /// After the registry came back empty, or reset (Consul's index went backwards), or lacked
    /// members in its first list after it failed to answer: for this long the members it does
    /// not list again are kept, while they re-register (ms). Covers Eureka's
    /// 30 s renewals plus its 30 s read-only response cache and Consul's one-minute anti-entropy
    /// sync; Nacos clients register again within 3 s (gRPC redo) or 5 s (1.x beat).
    pub reregister_ms: i64,
    /// An instance that left is remembered this long (ms): listed again with no newer sign (a
    /// newer start time, Consul index or Eureka `lastDirtyTimestamp`), it stays out, since the
    /// list may come from a replica or a cache that has not seen it leave (Eureka's read-only
    /// response cache lags by up to 30 s).
    pub departure_memory_ms: i64,
}

impl Default for Grace {
    fn default() -> Self {
        Grace { reregister_ms: 120_000, departure_memory_ms: 30_000 }
    }
}

/// How new a reply's view is, where the registry says it: what lets an instance that left back in
/// at once. Filled by the registry's adapter from the reply; all empty for registries that say
/// nothing (Nacos: `lastRefTime` is the answering node's clock at the time of the call, not the
/// age of its data; static JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ViewSign {
    /// Consul's `X-Consul-Index` of the reply (0: none). It grows with every change the query
    /// sees; lower than the last one means the servers restarted or restored an older snapshot
    /// (Consul's "Blocking Queries": reset the index if it goes backwards).
    pub index: u64,
    /// Per instance, sorted by address: a version of its record that grows with each change
    /// the instance itself makes (Eureka's `lastDirtyTimestamp`, by which Eureka's own peers
    /// decide which of two copies of a record wins). Empty when the registry gives none.
    pub versions: Vec<(String, i64)>,
}

impl ViewSign {
    fn version(&self, addr: &str) -> Option<i64> {
        let i = self.versions.binary_search_by(|(a, _)| a.as_str().cmp(addr)).ok()?;
        self.versions.get(i).map(|(_, v)| *v)
    }
}

/// An instance that left the membership, remembered for [`Grace::departure_memory_ms`].
#[derive(Debug, Clone, PartialEq, Eq)]
struct Departure {
    addr: String,
    start_ms: Option<i64>,
    at_ms: i64,
    /// The index of the reply that no longer listed it (0: none).
    index: u64,
    /// Its record's version while it was listed.
    version: Option<i64>,
}

/// At most this many departures are remembered per service (the oldest go first).
pub const MAX_DEPARTURES: usize = 1024;

/// The re-registration window (see [`Grace::reregister_ms`]).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reset {
    since_ms: i64,
    /// Members from before it that the registry has not listed again yet.
    waiting: Vec<String>,
}

/// Per-service refresh state kept by the poller.
#[derive(Debug, Clone, Default)]
pub struct Tracker {
    /// Consecutive refreshes that were held back.
    pub pending: u32,
    reset: Option<Reset>,
    /// The registry failed to answer since the last applied list (since then, ms).
    away_since: Option<i64>,
    /// The highest `X-Consul-Index` seen (0: none).
    last_index: u64,
    departed: Vec<Departure>,
    /// The versions of the current members' records, sorted by address.
    versions: Vec<(String, i64)>,
    /// Listings of instances that left, held out by the last decision.
    pub held_departed: u32,
    /// Members the last decision kept although the registry did not list them (re-registration).
    pub kept_reregistering: u32,
}

impl Tracker {
    /// The keep-last-good rules without a clock or view signs: an empty list or a mass turn to
    /// down is held until `confirm_refreshes` replies agree. [`Tracker::decide_at`] adds the
    /// rules for a registry that restarts or answers from an older view.
    pub fn decide(&mut self, prev: &[Instance], parsed: Parsed, g: &Guard) -> Decision {
        let protected = parsed.registry_protected;
        self.confirm(prev, parsed.instances, protected, g)
    }

    /// The registry could not be reached or gave no usable list at `now_ms`: a list that comes
    /// next without some of the members is taken as a registry that restarted and is being
    /// registered with again (see [`Grace::reregister_ms`]).
    pub fn note_failure(&mut self, now_ms: i64) {
        self.away_since.get_or_insert(now_ms);
    }

    /// The registry answered with the list applied last (or a blocking query that returned
    /// without a change): it is back, and a list that lacks members from now on is a departure.
    pub fn note_answer(&mut self) {
        self.away_since = None;
    }

    /// Whether the members the registry does not list are being kept while they re-register.
    pub fn reregistering(&self) -> bool {
        self.reset.is_some()
    }

    /// All the keep-last-good rules, at `now_ms`, for a reply whose view is as new as `sign`
    /// says (docs/registry-bad-days.md):
    /// 1. a registry that comes back empty, resets (Consul's index went backwards) or, right
    ///    after failing to answer, lacks members, is being registered with again: for
    ///    [`Grace::reregister_ms`] the members it does not list are kept and an empty list is
    ///    never applied; it ends early once every member is listed again;
    /// 2. an instance that left and is listed again within [`Grace::departure_memory_ms`] stays
    ///    out unless the reply shows a newer sign: a newer start time (it restarted), a Consul
    ///    index above the one it left at, a newer record version (Eureka);
    /// 3. then the rules of [`Tracker::decide`].
    pub fn decide_at(
        &mut self,
        prev: &[Instance],
        parsed: Parsed,
        sign: &ViewSign,
        g: &Guard,
        grace: &Grace,
        now_ms: i64,
    ) -> Decision {
        self.held_departed = 0;
        self.kept_reregistering = 0;
        let protected = parsed.registry_protected;
        let mut next = parsed.instances;
        let index_back = sign.index > 0 && self.last_index > 0 && sign.index < self.last_index;
        if sign.index > 0 {
            self.last_index = sign.index;
        }
        self.departed.retain(|d| now_ms.saturating_sub(d.at_ms) < grace.departure_memory_ms);
        // a window that is over is not opened again by the list that closes it
        let over = self.reset.as_ref().is_some_and(|r| now_ms.saturating_sub(r.since_ms) >= grace.reregister_ms);
        if over {
            self.reset = None;
        }
        // rule 2: back from an older view?
        if !self.departed.is_empty() {
            let departed = &mut self.departed;
            let mut held = 0;
            next.retain(|m| {
                let Some(i) = departed.iter().position(|d| d.addr == m.addr) else { return true };
                let newer = departed.get(i).is_some_and(|d| newer_sign(d, m, sign));
                if newer {
                    departed.swap_remove(i);
                } else {
                    held += 1;
                }
                newer
            });
            self.held_departed = held;
        }
        // rule 1: restarting?
        if !prev.is_empty() && self.reset.is_none() && !over {
            let lacks = || prev.iter().any(|p| crate::instance::find(&next, &p.addr).is_none());
            if next.is_empty() || index_back || (self.away_since.is_some() && lacks()) {
                let waiting = prev.iter().map(|m| m.addr.clone()).collect();
                self.reset = Some(Reset { since_ms: now_ms, waiting });
            }
        }
        if let Some(r) = &mut self.reset {
            if next.is_empty() {
                self.pending = self.pending.saturating_add(1);
                return Decision::Keep(Hold::Empty);
            }
            r.waiting.retain(|a| crate::instance::find(&next, a).is_none());
            if r.waiting.is_empty() {
                self.reset = None;
            } else {
                let missing: Vec<Instance> =
                    prev.iter().filter(|m| crate::instance::find(&next, &m.addr).is_none()).cloned().collect();
                self.kept_reregistering = u32::try_from(missing.len()).unwrap_or(u32::MAX);
                next.extend(missing);
                next.sort_by(|a, b| a.addr.cmp(&b.addr));
            }
        }
        let decision = self.confirm(prev, next, protected, g);
        if let Decision::Apply { members, .. } = &decision {
            self.applied(prev, members, sign, now_ms);
        }
        decision
    }

    /// Records what an applied list changed: who left (with the sign they left at), the members'
    /// record versions; the registry answers again.
    fn applied(&mut self, prev: &[Instance], members: &[Instance], sign: &ViewSign, now_ms: i64) {
        self.away_since = None;
        for p in prev.iter().filter(|p| crate::instance::find(members, &p.addr).is_none()) {
            if self.departed.iter().any(|d| d.addr == p.addr) {
                continue;
            }
            if self.departed.len() >= MAX_DEPARTURES {
                self.departed.remove(0);
            }
            let version = self.versions.binary_search_by(|(a, _)| a.as_str().cmp(&p.addr)).ok();
            self.departed.push(Departure {
                addr: p.addr.clone(),
                start_ms: p.start_ms,
                at_ms: now_ms,
                index: sign.index,
                version: version.and_then(|i| self.versions.get(i)).map(|(_, v)| *v),
            });
        }
        self.versions = members.iter().filter_map(|m| sign.version(&m.addr).map(|v| (m.addr.clone(), v))).collect();
    }

    /// The confirmation rules: an empty list (while the membership is not) or a mass turn to
    /// down is held until `confirm_refreshes` replies agree; then Nacos' protect threshold.
    fn confirm(&mut self, prev: &[Instance], mut next: Vec<Instance>, registry_protected: bool, g: &Guard) -> Decision {
        let prev_serving = prev.iter().filter(|m| m.state.is_serving()).count();
        let hold = if next.is_empty() && !prev.is_empty() {
            Some(Hold::Empty)
        } else if prev_serving >= 2 {
            // absent instances were taken out on purpose; only a mass turn to down is suspect
            let turned_down = turned_down(prev, &next);
            (turned_down as f64 > g.max_drop * prev_serving as f64).then_some(Hold::SuddenDrop)
        } else {
            None
        };
        if let Some(h) = hold {
            self.pending += 1;
            if self.pending < g.confirm_refreshes.max(1) {
                return Decision::Keep(h);
            }
        }
        self.pending = 0;
        let protected = registry_protected || protect(&next, g.protect_threshold);
        if protected {
            for m in next.iter_mut().filter(|m| m.state == State::Down) {
                m.state = State::Serving;
            }
        }
        Decision::Apply { members: next, protected }
    }
}

/// Does the listing `m` of an instance that left as `d` carry a newer sign than it left with?
fn newer_sign(d: &Departure, m: &Instance, sign: &ViewSign) -> bool {
    let restarted = match (m.start_ms, d.start_ms) {
        (Some(now), Some(then)) => now > then,
        (Some(_), None) => true,
        _ => false,
    };
    let newer_index = sign.index > 0 && d.index > 0 && sign.index > d.index;
    let newer_version = matches!((sign.version(&m.addr), d.version), (Some(now), Some(then)) if now > then);
    restarted || newer_index || newer_version
}

/// How many serving members of `prev` are listed as down in `next`. Both are sorted by address:
/// one walk through each.
fn turned_down(prev: &[Instance], next: &[Instance]) -> usize {
    let mut rest = next.iter().peekable();
    let mut n = 0;
    for p in prev.iter().filter(|m| m.state.is_serving()) {
        while rest.next_if(|m| m.addr < p.addr).is_some() {}
        if rest.peek().is_some_and(|m| m.addr == p.addr && m.state == State::Down) {
            n += 1;
        }
    }
    n
}

/// Nacos' protection rule: among the instances not deliberately out (draining), `healthy / total
/// <= threshold`. An empty list is never protected (Nacos: 0 / 0 is not `<=` anything).
pub fn protect(list: &[Instance], threshold: f64) -> bool {
    let total = list.iter().filter(|m| m.state != State::Draining).count();
    let healthy = list.iter().filter(|m| m.state == State::Serving).count();
    total > 0 && (healthy as f64) / (total as f64) <= threshold.max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::find;

    fn i(addr: &str, state: State, start: Option<i64>) -> Instance {
        Instance { addr: addr.into(), weight: 100, start_ms: start, warmup_ms: 1000, state }
    }

    fn parsed(v: Vec<Instance>) -> Parsed {
        crate::registry::finish(v, 0, 0)
    }

    fn ten() -> Vec<Instance> {
        (0..10).map(|k| i(&format!("10.0.0.{k}:80"), State::Serving, None)).collect()
    }

    #[test]
    fn encode_decode_round_trip() {
        let s = Snapshot {
            version: 7,
            updated_ms: 99,
            members: vec![i("10.0.0.1:80", State::Serving, Some(5)), i("[::1]:81", State::Draining, None)],
        };
        let b = s.encode();
        assert_eq!(
            String::from_utf8_lossy(&b),
            "lossless-snapshot 7 99\n10.0.0.1:80 100 5 1000 serving\n[::1]:81 100 - 1000 draining\n"
        );
        assert_eq!(Snapshot::decode(&b).unwrap(), s);
        assert!(Snapshot::decode(b"{").is_err());
        assert!(Snapshot::decode(b"").is_err());
        assert!(Snapshot::decode(b"lossless-snapshot 1 2\n10.0.0.1:80 100 - 0 gone\n").is_err());
        assert!(Snapshot::decode(b"lossless-snapshot 1 2\n10.0.0.1:80 100 -\n").is_err());
        assert_eq!(
            Snapshot::decode(b"lossless-snapshot 3 4\n").unwrap(),
            Snapshot { version: 3, updated_ms: 4, members: vec![] }
        );
        assert_eq!(s.find("[::1]:81"), Some(1));
        assert_eq!(s.find("1.1.1.1:1"), None);
    }

    #[test]
    fn empty_list_held_until_confirmed() {
        let g = Guard::default();
        let mut t = Tracker::default();
        let prev = ten();
        assert_eq!(t.decide(&prev, parsed(vec![]), &g), Decision::Keep(Hold::Empty));
        assert_eq!(t.decide(&prev, parsed(vec![]), &g), Decision::Keep(Hold::Empty));
        assert!(
            matches!(t.decide(&prev, parsed(vec![]), &g), Decision::Apply { ref members, .. } if members.is_empty())
        );
        // from empty, an empty list is just applied
        assert!(matches!(t.decide(&[], parsed(vec![]), &g), Decision::Apply { .. }));
    }

    #[test]
    fn mass_down_held_but_deliberate_absence_applies() {
        let g = Guard::default();
        let mut t = Tracker::default();
        let prev = ten();
        // 9 of 10 turn down at once (a health flap): held
        let mut flap = prev.clone();
        for m in flap.iter_mut().skip(1) {
            m.state = State::Down;
        }
        assert_eq!(t.decide(&prev, parsed(flap), &g), Decision::Keep(Hold::SuddenDrop));
        // a full list in between resets the count
        assert!(matches!(t.decide(&prev, parsed(prev.clone()), &g), Decision::Apply { .. }));
        assert_eq!(t.pending, 0);
        // 9 of 10 absent (Nacos: disabled or deregistered on purpose): applied within this refresh
        let Decision::Apply { members, .. } = t.decide(&prev, parsed(prev[..1].to_vec()), &g) else { panic!() };
        assert_eq!(members.len(), 1);
        // 2 of 3 disabled in Nacos (the case that held them back for three refreshes before)
        let three = prev[..3].to_vec();
        assert!(matches!(t.decide(&three, parsed(prev[2..3].to_vec()), &g), Decision::Apply { .. }));
        // one instance gone (a rolling release): applied at once
        let Decision::Apply { members, .. } = t.decide(&prev, parsed(prev[1..].to_vec()), &g) else { panic!() };
        assert_eq!(members.len(), 9);
        // all explicitly draining is deliberate, applied at once
        let drained: Vec<Instance> = prev.iter().map(|m| Instance { state: State::Draining, ..m.clone() }).collect();
        assert!(matches!(t.decide(&prev, parsed(drained), &g), Decision::Apply { .. }));
        // all down: held (a health flap)
        let down: Vec<Instance> = prev.iter().map(|m| Instance { state: State::Down, ..m.clone() }).collect();
        assert_eq!(t.decide(&prev, parsed(down), &g), Decision::Keep(Hold::SuddenDrop));
    }

    /// The walk counts what a lookup of each serving member would.
    #[test]
    fn turned_down_counts_as_a_lookup_does() {
        let mut rng = crate::clock::Rng::new(7);
        let states = [State::Serving, State::Draining, State::Down];
        for _ in 0..200 {
            let mut list = |n: u64| -> Vec<Instance> {
                let mut v = Vec::new();
                for k in 0..n {
                    if rng.below(3) > 0 {
                        v.push(i(&format!("10.0.{}.{}:80", k / 7, k % 7), states[rng.below(3) as usize], None));
                    }
                }
                v.sort_by(|a, b| a.addr.cmp(&b.addr));
                v
            };
            let (prev, next) = (list(40), list(40));
            let by_lookup = prev
                .iter()
                .filter(|m| m.state.is_serving())
                .filter(|m| crate::instance::find(&next, &m.addr).is_some_and(|n| n.state == State::Down))
                .count();
            assert_eq!(turned_down(&prev, &next), by_lookup);
        }
    }

    /// Nacos: `healthy / total <= threshold` over the enabled instances (naming
    /// ServiceUtil.selectInstancesWithHealthyProtection), `<=` and not `<`, and at 0 when none is
    /// healthy; 0/0 never.
    #[test]
    fn protect_rule_is_nacos_own() {
        let with = |healthy: usize, down: usize, draining: usize| -> Vec<Instance> {
            let mut v = Vec::new();
            for k in 0..healthy + down + draining {
                let st = if k < healthy {
                    State::Serving
                } else if k < healthy + down {
                    State::Down
                } else {
                    State::Draining
                };
                v.push(i(&format!("10.0.1.{k}:80"), st, None));
            }
            v
        };
        assert!(protect(&with(5, 5, 0), 0.5), "5/10 <= 0.5: the boundary protects");
        assert!(!protect(&with(6, 4, 0), 0.5));
        assert!(protect(&with(0, 3, 0), 0.0), "threshold 0: none healthy protects");
        assert!(!protect(&with(1, 3, 0), 0.0));
        assert!(!protect(&[], 0.5), "an empty list is never protected");
        assert!(!protect(&with(0, 0, 2), 0.0), "draining instances are not counted");
        assert!(protect(&with(1, 1, 8), 0.5), "1 healthy of 2 enabled: drains do not dilute the share");
        // the registry's own word counts
        let mut t = Tracker::default();
        let mut p = parsed(with(9, 1, 0));
        p.registry_protected = true;
        let Decision::Apply { protected, members } = t.decide(&[], p, &Guard::default()) else { panic!() };
        assert!(protected && members.iter().all(|m| m.state == State::Serving));
    }

    const T: i64 = 1_800_000_000_000;

    fn three() -> Vec<Instance> {
        (1..=3).map(|k| i(&format!("10.0.0.{k}:80"), State::Serving, Some(100))).collect()
    }

    fn addrs(d: &Decision) -> Vec<String> {
        match d {
            Decision::Apply { members, .. } => members.iter().map(|m| m.addr.clone()).collect(),
            Decision::Keep(h) => vec![format!("keep {}", h.kind())],
        }
    }

    /// Rule 1: a registry restarted without its data answers empty, then lists the instances as
    /// they register again. The membership is never emptied, nor shrunk to the ones that
    /// registered first.
    #[test]
    fn an_empty_registry_after_a_restart_never_empties_the_membership() {
        let (g, grace, none) = (Guard::default(), Grace::default(), ViewSign::default());
        let all = three();
        let mut t = Tracker::default();
        // down for 20 s, then up and empty for 8 s: never applied, long after confirm_refreshes
        for k in 0..20 {
            t.note_failure(T + k * 1000);
        }
        for k in 20..28 {
            assert_eq!(t.decide_at(&all, parsed(vec![]), &none, &g, &grace, T + k * 1000), Decision::Keep(Hold::Empty));
            assert!(t.reregistering());
        }
        // the instances register again one by one: each list is the whole membership
        let d = t.decide_at(&all, parsed(all[..1].to_vec()), &none, &g, &grace, T + 29_000);
        assert_eq!(addrs(&d), addrs(&Decision::Apply { members: all.clone(), protected: false }));
        assert_eq!(t.kept_reregistering, 2);
        let d = t.decide_at(&all, parsed(vec![all[0].clone(), all[2].clone()]), &none, &g, &grace, T + 30_000);
        assert_eq!(addrs(&d).len(), 3);
        assert!(t.reregistering());
        // a record the registry lists again is taken as it now says
        let mut back = all.clone();
        back[1].weight = 50;
        let d = t.decide_at(&all, parsed(back.clone()), &none, &g, &grace, T + 31_000);
        assert_eq!(d, Decision::Apply { members: back.clone(), protected: false });
        assert!(!t.reregistering(), "everyone is back: the window ends");
        // from then on a deliberate departure applies at once
        let d = t.decide_at(&back, parsed(back[..2].to_vec()), &none, &g, &grace, T + 40_000);
        assert_eq!(addrs(&d).len(), 2);
        // the clock-less rules, for contrast, apply the third empty list
        let mut old = Tracker::default();
        for _ in 1..g.confirm_refreshes {
            assert_eq!(old.decide(&all, parsed(vec![]), &g), Decision::Keep(Hold::Empty));
        }
        assert!(
            matches!(old.decide(&all, parsed(vec![]), &g), Decision::Apply { ref members, .. } if members.is_empty())
        );
    }

    /// Rule 1: the first list after an outage lacks members (they have not registered again
    /// yet): a restart, not departures, however few are missing. Without the outage the same
    /// list applies at once.
    #[test]
    fn a_partial_list_right_after_an_outage_is_a_restart() {
        let (g, grace, none) = (Guard::default(), Grace::default(), ViewSign::default());
        let all = three();
        for listed in [1, 2] {
            let mut t = Tracker::default();
            t.note_failure(T);
            let d = t.decide_at(&all, parsed(all[..listed].to_vec()), &none, &g, &grace, T + 5_000);
            assert_eq!(addrs(&d).len(), 3, "{d:?}");
            assert!(t.reregistering());
            // the late one registers again with its start time: in at once, never held as gone
            let d = t.decide_at(&all, parsed(all.clone()), &none, &g, &grace, T + 9_000);
            assert_eq!((addrs(&d).len(), t.held_departed), (3, 0));
            assert!(!t.reregistering());
            // no outage: taken out on purpose (Nacos enabled=false, a deregistration)
            let mut t = Tracker::default();
            let d = t.decide_at(&all, parsed(all[..listed].to_vec()), &none, &g, &grace, T + 5_000);
            assert_eq!(addrs(&d).len(), listed);
        }
        // an applied list ends the outage: a later absence is deliberate again
        let mut t = Tracker::default();
        t.note_failure(T);
        t.decide_at(&all, parsed(all.clone()), &none, &g, &grace, T + 1_000);
        let d = t.decide_at(&all, parsed(all[..2].to_vec()), &none, &g, &grace, T + 2_000);
        assert_eq!(addrs(&d).len(), 2);
    }

    /// Rule 1 ends: instances that do not come back within the window are gone, and a registry
    /// that stays empty (the service was retired) is applied once the window is over.
    #[test]
    fn the_reregistration_window_ends() {
        let (g, grace, none) = (Guard::default(), Grace::default(), ViewSign::default());
        let all = three();
        let mut t = Tracker::default();
        assert_eq!(t.decide_at(&all, parsed(vec![]), &none, &g, &grace, T), Decision::Keep(Hold::Empty));
        let end = T + grace.reregister_ms;
        let d = t.decide_at(&all, parsed(all[..1].to_vec()), &none, &g, &grace, end - 1);
        assert_eq!(addrs(&d).len(), 3);
        let d = t.decide_at(&all, parsed(all[..1].to_vec()), &none, &g, &grace, end);
        assert_eq!(addrs(&d).len(), 1, "the others did not come back");
        assert!(!t.reregistering());
        // retired: empty for the whole window, then applied
        let mut t = Tracker::default();
        for k in 0..=grace.reregister_ms / 1000 {
            let d = t.decide_at(&all, parsed(vec![]), &none, &g, &grace, T + k * 1000);
            let over = k * 1000 >= grace.reregister_ms;
            assert_eq!(d == Decision::Keep(Hold::Empty), !over, "at {k} s: {d:?}");
        }
    }

    /// Rule 1 for Consul: an `X-Consul-Index` lower than the last one is a restart or a restored
    /// snapshot: the members it lacks are kept while the agents sync them again.
    #[test]
    fn an_index_going_backwards_is_a_restart() {
        let (g, grace) = (Guard::default(), Grace::default());
        let all = three();
        let at = |index| ViewSign { index, ..ViewSign::default() };
        let mut t = Tracker::default();
        assert!(matches!(t.decide_at(&[], parsed(all.clone()), &at(100), &g, &grace, T), Decision::Apply { .. }));
        let d = t.decide_at(&all, parsed(all[..1].to_vec()), &at(7), &g, &grace, T + 1000);
        assert_eq!(addrs(&d).len(), 3);
        assert!(t.reregistering());
        let d = t.decide_at(&all, parsed(all.clone()), &at(9), &g, &grace, T + 2000);
        assert_eq!(addrs(&d).len(), 3);
        assert!(!t.reregistering());
        // a higher index lacking two: deliberate
        let d = t.decide_at(&all, parsed(all[..1].to_vec()), &at(12), &g, &grace, T + 3000);
        assert_eq!(addrs(&d).len(), 1);
    }

    /// Rule 2 without a view sign (Nacos): a replica that has not seen an instance leave keeps
    /// listing it, alternating with one that has. It stays out for the departure memory, then
    /// a listing is taken at face value; a newer start time brings it back at once.
    #[test]
    fn an_instance_that_left_does_not_come_back_from_an_older_view() {
        let (g, grace, none) = (Guard::default(), Grace::default(), ViewSign::default());
        let all = three();
        let mut t = Tracker::default();
        let mut current = all.clone();
        // 10.0.0.3 leaves
        let d = t.decide_at(&current, parsed(all[..2].to_vec()), &none, &g, &grace, T);
        let Decision::Apply { members, .. } = d else { panic!() };
        current = members;
        // a lagging replica and a fresh one answer in turn, every second
        for k in 1..30 {
            let list = if k % 2 == 1 { all.clone() } else { all[..2].to_vec() };
            let d = t.decide_at(&current, parsed(list), &none, &g, &grace, T + k * 1000);
            let Decision::Apply { members, .. } = d else { panic!("{d:?}") };
            assert_eq!(members.len(), 2, "at {k} s");
            assert_eq!(t.held_departed, u32::from(k % 2 == 1));
            current = members;
        }
        // the lagging replica keeps it for good: after the memory it is believed
        let d = t.decide_at(&current, parsed(all.clone()), &none, &g, &grace, T + grace.departure_memory_ms);
        assert_eq!(addrs(&d).len(), 3);
        // it restarted: back at once
        let mut t = Tracker::default();
        t.decide_at(&all, parsed(all[..2].to_vec()), &none, &g, &grace, T);
        let mut restarted = all.clone();
        restarted[2].start_ms = Some(200);
        let d = t.decide_at(&all[..2], parsed(restarted), &none, &g, &grace, T + 1000);
        assert_eq!(addrs(&d).len(), 3);
        // and once back, it is no longer remembered as gone
        let d = t.decide_at(&all, parsed(all.clone()), &none, &g, &grace, T + 2000);
        assert_eq!((addrs(&d).len(), t.held_departed), (3, 0));
    }

    /// Rule 2 with view signs: a Consul index above the one it left at, or a newer Eureka
    /// `lastDirtyTimestamp`, is a newer view: the instance is back at once. Lower or equal: not.
    #[test]
    fn a_newer_view_brings_an_instance_back_at_once() {
        let (g, grace) = (Guard::default(), Grace::default());
        let all = three();
        let mut t = Tracker::default();
        let idx = |index| ViewSign { index, ..ViewSign::default() };
        t.decide_at(&[], parsed(all.clone()), &idx(40), &g, &grace, T);
        t.decide_at(&all, parsed(all[..2].to_vec()), &idx(50), &g, &grace, T + 1000);
        let d = t.decide_at(&all[..2], parsed(all.clone()), &idx(50), &g, &grace, T + 2000);
        assert_eq!((addrs(&d).len(), t.held_departed), (2, 1), "the same index: the same view");
        let d = t.decide_at(&all[..2], parsed(all.clone()), &idx(61), &g, &grace, T + 3000);
        assert_eq!(addrs(&d).len(), 3, "registered again after it left");

        let ver = |v: [i64; 3]| ViewSign {
            index: 0,
            versions: all.iter().zip(v).map(|(m, v)| (m.addr.clone(), v)).collect(),
        };
        let mut t = Tracker::default();
        t.decide_at(&[], parsed(all.clone()), &ver([1, 1, 1000]), &g, &grace, T);
        let two = ViewSign { versions: ver([1, 1, 0]).versions[..2].to_vec(), index: 0 };
        t.decide_at(&all, parsed(all[..2].to_vec()), &two, &g, &grace, T + 1000);
        let d = t.decide_at(&all[..2], parsed(all.clone()), &ver([1, 1, 1000]), &g, &grace, T + 2000);
        assert_eq!(addrs(&d).len(), 2, "Eureka's cache still has the record it left with");
        let d = t.decide_at(&all[..2], parsed(all.clone()), &ver([1, 1, 2000]), &g, &grace, T + 3000);
        assert_eq!(addrs(&d).len(), 3, "a newer record: it registered again");
    }

    #[test]
    fn departures_are_bounded() {
        let (g, grace, none) = (Guard::default(), Grace::default(), ViewSign::default());
        let many: Vec<Instance> = (0..MAX_DEPARTURES + 10)
            .map(|k| i(&format!("10.{}.{}.1:80", k / 256, k % 256), State::Serving, None))
            .collect();
        let mut sorted = many.clone();
        sorted.sort_by(|a, b| a.addr.cmp(&b.addr));
        let mut t = Tracker::default();
        let keep = vec![sorted[0].clone()];
        t.decide_at(&sorted, parsed(keep.clone()), &none, &g, &grace, T);
        assert_eq!(t.departed.len(), MAX_DEPARTURES);
        // expired after the memory
        t.decide_at(&keep, parsed(keep.clone()), &none, &g, &grace, T + grace.departure_memory_ms);
        assert!(t.departed.is_empty());
    }

    proptest::proptest! {
        /// Rule 1, whatever the order and timing of the re-registrations within the window and
        /// however many empty replies come first: no applied membership lacks a member from
        /// before the restart, and the window ends when the last one is back.
        #[test]
        fn a_restart_loses_no_member(
            n in 1usize..8,
            empties in 0i64..30,
            delays in proptest::collection::vec(0i64..60, 8),
        ) {
            let (g, grace, none) = (Guard::default(), Grace::default(), ViewSign::default());
            let before: Vec<Instance> = (0..n).map(|k| i(&format!("10.0.0.{k}:80"), State::Serving, Some(7))).collect();
            let mut t = Tracker::default();
            // the registry was down first
            t.note_failure(T - 1000);
            let mut current = before.clone();
            let last = delays.iter().take(n).max().copied().unwrap_or(0);
            for s in 0..(empties + last + 3) {
                let listed: Vec<Instance> = before
                    .iter()
                    .zip(&delays)
                    .filter(|(_, d)| s >= empties + **d)
                    .map(|(m, _)| m.clone())
                    .collect();
                match t.decide_at(&current, parsed(listed), &none, &g, &grace, T + s * 1000) {
                    Decision::Apply { members, .. } => {
                        for m in &before {
                            proptest::prop_assert!(find(&members, &m.addr).is_some(), "{} lost at {s} s", m.addr);
                        }
                        current = members;
                    }
                    Decision::Keep(h) => proptest::prop_assert_eq!(h, Hold::Empty),
                }
            }
            proptest::prop_assert!(!t.reregistering());
        }
    }

    #[test]
    fn protect_threshold_routes_to_down_instances() {
        let g = Guard { protect_threshold: 0.5, ..Guard::default() };
        let mut t = Tracker::default();
        let mut list = ten();
        for m in list.iter_mut().take(7) {
            m.state = State::Down;
        }
        list[7].state = State::Draining;
        let Decision::Apply { members, protected } = t.decide(&[], parsed(list), &g) else { panic!() };
        assert!(protected);
        assert_eq!(members.iter().filter(|m| m.state == State::Serving).count(), 9);
        assert_eq!(members[7].state, State::Draining, "a deliberate drain is never overridden");
    }
}
