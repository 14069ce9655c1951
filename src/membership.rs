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
///   many leave at once; a list that is empty altogether is held (below);
/// - an instance still listed but *down* is a health verdict, and a mass verdict is what a
///   health-check flap or a registry that lost its heartbeats looks like: held, as is an empty
///   list while the membership was not, until `confirm_refreshes` replies agree.
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

/// Per-service refresh state kept by the poller.
#[derive(Debug, Clone, Default)]
pub struct Tracker {
    /// Consecutive refreshes that were held back.
    pub pending: u32,
}

impl Tracker {
    /// Applies the keep-last-good rules to a fresh list. `prev` is the current membership.
    pub fn decide(&mut self, prev: &[Instance], parsed: Parsed, g: &Guard) -> Decision {
        let mut next = parsed.instances;
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
        let protected = parsed.registry_protected || protect(&next, g.protect_threshold);
        if protected {
            for m in next.iter_mut().filter(|m| m.state == State::Down) {
                m.state = State::Serving;
            }
        }
        Decision::Apply { members: next, protected }
    }
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
