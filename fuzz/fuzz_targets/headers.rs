//! `Headers::from_wire`: any block the host could hand over (or a damaged one) never panics;
//! every pair it yields lies inside the block; a block written by `from_pairs` reads back as its
//! pairs, and `get` finds the first value of each name.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lossless::headers::Headers;

fuzz_target!(|data: &[u8]| {
    let h = Headers::from_wire(data.to_vec());
    let mut total = 0usize;
    for (k, v) in h.iter() {
        total += k.len() + v.len() + 10;
        let _ = h.get(std::str::from_utf8(k).unwrap_or(":path"));
    }
    assert!(total <= data.len().saturating_sub(4), "pairs larger than the block");
    // the bytes as pairs of (name, value) split at the first 0x00 of each 16-byte chunk
    let pairs: Vec<(&[u8], &[u8])> = data
        .chunks(16)
        .map(|c| match c.iter().position(|b| *b == 0) {
            Some(i) => (&c[..i], &c[i + 1..]),
            None => (c, &[][..]),
        })
        .collect();
    let round = Headers::from_pairs(&pairs);
    let back: Vec<(&[u8], &[u8])> = round.iter().collect();
    assert_eq!(back, pairs);
    for (k, _) in &pairs {
        let first = pairs.iter().find(|(k2, _)| k2 == k).map(|(_, v2)| *v2);
        if let Ok(name) = std::str::from_utf8(k) {
            assert_eq!(round.get_bytes(name), first);
            assert!(round.contains(name));
        }
    }
});
