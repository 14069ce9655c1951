//! `membership::Snapshot::decode` and `marks::Marks::decode` on arbitrary bytes; whatever
//! decodes must survive `decode(encode(x)) == x`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lossless::marks::Marks;
use lossless::membership::Snapshot;
use lossless_fuzz::check_snapshot_roundtrip;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = Snapshot::decode(data) {
        check_snapshot_roundtrip(&s);
        // members are documented sorted; `find` must at least not panic on whatever was decoded.
        for m in &s.members {
            let _ = s.find(&m.addr);
        }
    }
    let m = Marks::decode(data);
    let bytes = m.encode();
    assert_eq!(
        Marks::decode(&bytes),
        m,
        "Marks round trip changed the marks (encoded as {:?})",
        String::from_utf8_lossy(&bytes)
    );
});
