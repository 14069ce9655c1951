//! `Snapshot::decode(Snapshot::encode(s)) == s` for structured snapshots (any addr string, any
//! numbers): the encoder side of the round trip, which byte-level fuzzing of `decode` rarely reaches.
#![no_main]

use libfuzzer_sys::{arbitrary, fuzz_target};
use lossless::instance::Instance;
use lossless::membership::Snapshot;
use lossless_fuzz::{check_snapshot_roundtrip, state_of};

#[derive(Debug, arbitrary::Arbitrary)]
struct Input {
    version: u64,
    updated_ms: i64,
    members: Vec<(String, i32, Option<i64>, i64, u8)>,
}

fuzz_target!(|input: Input| {
    let members = input
        .members
        .into_iter()
        .map(|(addr, weight, start_ms, warmup_ms, st)| Instance {
            addr,
            weight,
            start_ms,
            warmup_ms,
            state: state_of(st),
            metadata: Default::default(),
        })
        .collect();
    check_snapshot_roundtrip(&Snapshot { version: input.version, updated_ms: input.updated_ms, members });
});
