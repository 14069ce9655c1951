//! A header map as the host hands it over in one call (proxy-wasm ABI
//! `proxy_get_header_map_pairs`), read in place.
//!
//! Wire shape (little-endian `u32`s): the number of pairs `N`, then `N` × (name length, value
//! length), then for each pair the name bytes, a NUL, the value bytes, a NUL. Envoy hands names in
//! lowercase and values as received: a value need not be UTF-8 (RFC 9110 §5.5 allows obs-text),
//! so values are bytes here and [`Headers::get`] is `None` for a value that is not UTF-8.
//!
//! One call per request and one per response replaces a call per header read: every crossing of
//! the VM boundary, and every buffer the host allocates in the VM, costs more than scanning a
//! dozen pairs.

/// One header map, as serialized by the host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    bytes: Vec<u8>,
}

impl Headers {
    /// Wraps the host's serialized map. A malformed or truncated block yields the pairs that are
    /// whole before the damage (never a panic).
    pub fn from_wire(bytes: Vec<u8>) -> Self {
        Headers { bytes }
    }

    /// Serializes `pairs` in the wire shape (what the host would hand over).
    pub fn from_pairs<N: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(N, V)]) -> Self {
        let len32 = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes();
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&len32(pairs.len()));
        for (k, v) in pairs {
            bytes.extend_from_slice(&len32(k.as_ref().len()));
            bytes.extend_from_slice(&len32(v.as_ref().len()));
        }
        for (k, v) in pairs {
            bytes.extend_from_slice(k.as_ref());
            bytes.push(0);
            bytes.extend_from_slice(v.as_ref());
            bytes.push(0);
        }
        Headers { bytes }
    }

    /// The pairs in order, as (name, value) bytes.
    pub fn iter(&self) -> Pairs<'_> {
        let count = read_u32(&self.bytes, 0).unwrap_or(0);
        // the length table must fit in the block; otherwise nothing is read
        let data = 4usize.saturating_add(count.saturating_mul(8));
        let count = if data <= self.bytes.len() { count } else { 0 };
        Pairs { bytes: &self.bytes, index: 0, count, data }
    }

    /// The first value of `name` (lowercase), as bytes.
    pub fn get_bytes(&self, name: &str) -> Option<&[u8]> {
        self.iter().find(|(k, _)| *k == name.as_bytes()).map(|(_, v)| v)
    }

    /// The first value of `name` (lowercase) as text; `None` when absent or not UTF-8.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.get_bytes(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Whether `name` (lowercase) is present, whatever its value.
    pub fn contains(&self, name: &str) -> bool {
        self.get_bytes(name).is_some()
    }
}

/// Iterator over a [`Headers`] block's pairs.
pub struct Pairs<'a> {
    bytes: &'a [u8],
    index: usize,
    count: usize,
    /// Offset of the next pair's name.
    data: usize,
}

impl<'a> Iterator for Pairs<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.index >= self.count {
            return None;
        }
        let entry = 4 + self.index * 8;
        let (klen, vlen) = (read_u32(self.bytes, entry)?, read_u32(self.bytes, entry + 4)?);
        let k_end = self.data.checked_add(klen)?;
        let v_start = k_end.checked_add(1)?;
        let v_end = v_start.checked_add(vlen)?;
        let key = self.bytes.get(self.data..k_end)?;
        let value = self.bytes.get(v_start..v_end)?;
        // each name and value is followed by its NUL: a block without them is damaged here
        if self.bytes.get(k_end) != Some(&0) || self.bytes.get(v_end) != Some(&0) {
            return None;
        }
        self.data = v_end.checked_add(1)?;
        self.index += 1;
        Some((key, value))
    }
}

fn read_u32(bytes: &[u8], at: usize) -> Option<usize> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    let arr: [u8; 4] = b.try_into().ok()?;
    usize::try_from(u32::from_le_bytes(arr)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_it_wrote() {
        let h = Headers::from_pairs(&[(":path", "/a?b"), ("x-lossless-upstream", "1.2.3.4:80"), ("empty", "")]);
        assert_eq!(h.get(":path"), Some("/a?b"));
        assert_eq!(h.get("x-lossless-upstream"), Some("1.2.3.4:80"));
        assert_eq!(h.get("empty"), Some(""));
        assert_eq!(h.get("absent"), None);
        assert!(h.contains("empty") && !h.contains("absent"));
        assert_eq!(h.iter().count(), 3);
    }

    #[test]
    fn the_first_of_repeated_names_wins() {
        let h = Headers::from_pairs(&[("a", "1"), ("a", "2")]);
        assert_eq!(h.get("a"), Some("1"));
    }

    #[test]
    fn a_value_that_is_not_utf8_is_present_but_not_text() {
        let h = Headers::from_pairs(&[(b"x-lossless-drain".as_slice(), b"\xffself_draining".as_slice())]);
        assert!(h.contains("x-lossless-drain"));
        assert_eq!(h.get("x-lossless-drain"), None);
        assert_eq!(h.get_bytes("x-lossless-drain"), Some(b"\xffself_draining".as_slice()));
    }

    #[test]
    fn the_wire_shape_is_the_abi_one() {
        // proxy-wasm ABI: count, then (name length, value length) per pair, then NUL-terminated
        // names and values
        let h = Headers::from_pairs(&[("ab", "c")]);
        assert_eq!(h.bytes, [1, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, b'a', b'b', 0, b'c', 0]);
    }

    #[test]
    fn damaged_blocks_read_what_is_whole_and_never_panic() {
        let whole = Headers::from_pairs(&[("a", "1"), ("bb", "22")]).bytes;
        for cut in 0..whole.len() {
            let h = Headers::from_wire(whole.get(..cut).unwrap().to_vec());
            let pairs: Vec<_> = h.iter().collect();
            assert!(pairs.len() <= 2);
            if let Some((k, v)) = pairs.first() {
                assert_eq!((*k, *v), (b"a".as_slice(), b"1".as_slice()));
            }
        }
        // a count far beyond the block reads nothing
        let mut huge = whole.clone();
        huge.splice(0..4, u32::MAX.to_le_bytes());
        assert_eq!(Headers::from_wire(huge).iter().count(), 0);
        // lengths that overflow read nothing past the damage
        let mut bad = whole;
        bad.splice(4..8, u32::MAX.to_le_bytes());
        assert_eq!(Headers::from_wire(bad).iter().count(), 0);
        assert_eq!(Headers::from_wire(Vec::new()).iter().count(), 0);
        // a pair whose NULs are missing is damage, not an empty pair
        assert_eq!(Headers::from_wire(vec![1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x1d]).iter().count(), 0);
    }
}
