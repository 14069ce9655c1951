//! The address index: `ip:port` -> the service it belongs to, across every configured service's
//! membership, with the departed addresses ([`super::departed`]) of each.
//!
//! Rules, in order:
//! 1. a live mapping always wins: an address any service lists now (whatever its state) is that
//!    service's, even if another service remembers it as departed (the address was reused);
//! 2. an address several services list (one `ip:port` registered under several names, e.g. Dubbo's
//!    interface-level registration of one process) is resolved by the services the request itself
//!    names (its cluster, its authority, a Triple `:path` interface, as the glue reads them), or
//!    refused: it is never guessed;
//! 3. the same for an address only departed ones remember.
//!
//! Services that are not corrected are indexed too, so that rule 1 holds against them; a lookup
//! that resolves to one of them leaves the request untouched.

use crate::clock::FastMap;
use crate::instance::Instance;

use super::departed::Departed;

/// One service's side of the index.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    /// The service's members as routed by (marks applied), sorted by address.
    pub members: &'a [Instance],
    /// Its departed addresses.
    pub departed: &'a Departed,
    /// Whether requests to its addresses are corrected (transparent mode on for the service).
    pub corrected: bool,
}

/// Where a looked-up address belongs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    /// Index of the service (as in the sources the index was built from).
    pub service: usize,
    /// True when the address is a current member (in any state); false when departed.
    pub live: bool,
    /// Whether the service is corrected.
    pub corrected: bool,
}

/// The result of a lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// No configured service has this address: the request passes untouched.
    Unknown,
    /// Several services have it and the request names none or several of them: refused (the
    /// request passes untouched), never guessed.
    Ambiguous,
    Found(Found),
}

#[derive(Debug, Clone, Default)]
struct Entry {
    live: Vec<u32>,
    departed: Vec<u32>,
}

/// `ip:port` -> services. Rebuilt (O(total members + departed)) whenever a membership, a mark
/// or a departed record changes; a lookup is one hash of the address.
#[derive(Debug, Clone, Default)]
pub struct AddressIndex {
    map: FastMap<String, Entry>,
    corrected: Vec<bool>,
}

impl AddressIndex {
    /// Indexes `sources` (service `k` is `sources[k]`) at `now_ms` (departed records whose time is
    /// over are left out).
    pub fn build(sources: &[Source<'_>], now_ms: i64) -> AddressIndex {
        let mut map: FastMap<String, Entry> = FastMap::default();
        for (k, s) in sources.iter().enumerate() {
            let Ok(k) = u32::try_from(k) else { break };
            for m in s.members {
                let e = map.entry(m.addr.clone()).or_default();
                if !e.live.contains(&k) {
                    e.live.push(k);
                }
            }
            for a in s.departed.live_records(now_ms) {
                if let Some(e) = map.get_mut(a) {
                    if !e.departed.contains(&k) {
                        e.departed.push(k);
                    }
                } else {
                    map.insert(a.to_string(), Entry { live: Vec::new(), departed: vec![k] });
                }
            }
        }
        AddressIndex { map, corrected: sources.iter().map(|s| s.corrected).collect() }
    }

    /// Number of indexed addresses.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Where `addr` (canonical `ip:port`, IPv6 in brackets, as [`crate::instance::canonical_addr`]
    /// writes it and Envoy's `destination.address` reads) belongs. `named` tells whether the
    /// request's own facts name service `k`; it is asked only when several services have the
    /// address.
    pub fn lookup(&self, addr: &str, named: impl Fn(usize) -> bool) -> Lookup {
        let Some(e) = self.map.get(addr) else {
            return Lookup::Unknown;
        };
        let (candidates, live) = if e.live.is_empty() { (&e.departed, false) } else { (&e.live, true) };
        let service = match candidates.as_slice() {
            [] => return Lookup::Unknown,
            [one] => *one as usize,
            many => {
                let mut hit = many.iter().filter(|k| named(**k as usize));
                match (hit.next(), hit.next()) {
                    (Some(one), None) => *one as usize,
                    _ => return Lookup::Ambiguous,
                }
            }
        };
        let corrected = self.corrected.get(service).copied().unwrap_or(false);
        Lookup::Found(Found { service, live, corrected })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::State;

    const NOW: i64 = 1_800_000_000_000;

    fn members(addrs: &[&str]) -> Vec<Instance> {
        let mut v: Vec<Instance> = addrs
            .iter()
            .map(|a| Instance { addr: a.to_string(), weight: 100, start_ms: None, warmup_ms: 0, state: State::Serving })
            .collect();
        v.sort_by(|a, b| a.addr.cmp(&b.addr));
        v
    }

    fn departed(addrs: &[&str]) -> Departed {
        let mut d = Departed::default();
        d.update(&members(addrs), &[], NOW, 60_000);
        d
    }

    fn none(_: usize) -> bool {
        false
    }

    #[test]
    fn live_departed_unknown() {
        let orders = members(&["10.0.0.1:8080", "10.0.0.2:8080"]);
        let gone = departed(&["10.0.0.9:8080"]);
        let empty = Departed::default();
        let idx = AddressIndex::build(
            &[
                Source { members: &orders, departed: &gone, corrected: true },
                Source { members: &members(&["10.0.1.1:9090"]), departed: &empty, corrected: false },
            ],
            NOW,
        );
        assert_eq!(idx.len(), 4);
        assert_eq!(idx.lookup("10.0.0.2:8080", none), Lookup::Found(Found { service: 0, live: true, corrected: true }));
        assert_eq!(
            idx.lookup("10.0.0.9:8080", none),
            Lookup::Found(Found { service: 0, live: false, corrected: true })
        );
        assert_eq!(
            idx.lookup("10.0.1.1:9090", none),
            Lookup::Found(Found { service: 1, live: true, corrected: false })
        );
        assert_eq!(idx.lookup("10.0.0.3:8080", none), Lookup::Unknown);
        assert_eq!(idx.lookup("10.0.0.1:8081", none), Lookup::Unknown, "the port is part of the address");
        // expired departed records are not indexed
        let later = AddressIndex::build(&[Source { members: &orders, departed: &gone, corrected: true }], NOW + 60_000);
        assert_eq!(later.lookup("10.0.0.9:8080", none), Lookup::Unknown);
    }

    /// An address reused by another service: its live mapping wins over the old one's departure,
    /// whatever the request names.
    #[test]
    fn live_mapping_wins() {
        let gone = departed(&["10.0.0.9:8080"]);
        let empty = Departed::default();
        let payments = members(&["10.0.0.9:8080"]);
        let idx = AddressIndex::build(
            &[
                Source { members: &[], departed: &gone, corrected: true },
                Source { members: &payments, departed: &empty, corrected: false },
            ],
            NOW,
        );
        let named_orders = |k: usize| k == 0;
        assert_eq!(
            idx.lookup("10.0.0.9:8080", named_orders),
            Lookup::Found(Found { service: 1, live: true, corrected: false })
        );
    }

    /// One address under two services: resolved by what the request names, else refused.
    #[test]
    fn shared_address_is_resolved_or_refused() {
        let both = members(&["10.0.0.5:20880"]);
        let empty = Departed::default();
        let idx = AddressIndex::build(
            &[
                Source { members: &both, departed: &empty, corrected: true },
                Source { members: &both, departed: &empty, corrected: true },
                Source { members: &members(&["10.0.0.6:20880"]), departed: &empty, corrected: true },
            ],
            NOW,
        );
        assert_eq!(idx.lookup("10.0.0.5:20880", none), Lookup::Ambiguous);
        assert_eq!(idx.lookup("10.0.0.5:20880", |_| true), Lookup::Ambiguous, "naming both resolves nothing");
        assert_eq!(
            idx.lookup("10.0.0.5:20880", |k| k == 1),
            Lookup::Found(Found { service: 1, live: true, corrected: true })
        );
        // naming a service that does not have the address does not help
        assert_eq!(idx.lookup("10.0.0.5:20880", |k| k == 2), Lookup::Ambiguous);
        // departed under two services: the same rule
        let gone = departed(&["10.0.0.7:80"]);
        let idx = AddressIndex::build(
            &[
                Source { members: &[], departed: &gone, corrected: true },
                Source { members: &[], departed: &gone, corrected: true },
            ],
            NOW,
        );
        assert_eq!(idx.lookup("10.0.0.7:80", none), Lookup::Ambiguous);
        assert_eq!(
            idx.lookup("10.0.0.7:80", |k| k == 0),
            Lookup::Found(Found { service: 0, live: false, corrected: true })
        );
    }
}
