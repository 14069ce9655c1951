//! `Snapshot::decode(Snapshot::encode(s)) == s` for structured snapshots (any member address a
//! membership can hold: IPv4 or IPv6 with any port; any numbers): the encoder side of the round
//! trip, which byte-level fuzzing of `decode` rarely reaches.
#![no_main]

use libfuzzer_sys::{arbitrary, fuzz_target};
use lossless::instance::Instance;
use lossless::membership::Snapshot;
use lossless_fuzz::{check_snapshot_roundtrip, state_of};

#[derive(Debug, arbitrary::Arbitrary)]
struct Input {
    version: u64,
    updated_ms: i64,
    members: Vec<(std::net::IpAddr, u16, i32, Option<i64>, i64, u8)>,
}

fuzz_target!(|input: Input| {
    let members = input
        .members
        .into_iter()
        .map(|(ip, port, weight, start_ms, warmup_ms, st)| Instance {
            addr: std::net::SocketAddr::new(ip, port).to_string(),
            weight,
            start_ms,
            warmup_ms,
            state: state_of(st),
        })
        .collect();
    check_snapshot_roundtrip(&Snapshot { version: input.version, updated_ms: input.updated_ms, members });
});
