//! Randomness for the balancer, jitter and VM ids (seeded from WASI randomness in the filter, fixed
//! in tests), and the hasher of the filter's own maps.

/// A small, fast PRNG (SplitMix64). Seeded from WASI randomness in the filter, fixed in tests.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// Seeds from the platform's randomness (WASI `random_get` on wasm32-wasip1).
    pub fn from_entropy() -> Self {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(0x6c6f_7373_6c65_7373);
        Rng(h.finish())
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (Lemire's multiply-shift; `n == 0` gives 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
}

/// A `HashMap` hashed with FNV-1a: the filter's maps are keyed by addresses and small ids it
/// reads itself, and FNV keeps the module smaller than the standard hasher's seeding.
pub type FastMap<K, V> = std::collections::HashMap<K, V, std::hash::BuildHasherDefault<Fnv>>;

/// FNV-1a, 64 bit.
#[derive(Debug)]
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn below_is_in_range_and_spread() {
        let mut r = Rng::new(7);
        let mut seen = [0u32; 5];
        for _ in 0..50_000 {
            let v = r.below(5) as usize;
            seen[v] += 1;
        }
        for s in seen {
            assert!((9_000..11_000).contains(&s), "{seen:?}");
        }
        assert_eq!(r.below(0), 0);
        assert_ne!(Rng::from_entropy().next_u64(), Rng::from_entropy().next_u64());
    }
}
