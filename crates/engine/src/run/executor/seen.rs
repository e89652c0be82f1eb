//! The ids a step has decided since it found its scope empty: a Bloom
//! filter, so that a first load asks the store only about records it may
//! have mapped itself.

use std::hash::{BuildHasher, Hasher};

/// A set of ids that can answer "maybe" for an id it never held, never
/// "no" for one it did. 2^23 bits (1 MiB) and four probes an id: about 2%
/// false "maybe"s after a million ids, which only cost the lookups they
/// make. A saturated filter answers "maybe" always, which is the plain
/// path.
pub(super) struct SeenIds {
    bits: Vec<u64>,
}

const BITS: usize = 1 << 23;
const PROBES: usize = 4;

impl SeenIds {
    pub(super) fn new() -> SeenIds {
        SeenIds {
            bits: vec![0; BITS / 64],
        }
    }

    /// The bits of `id`: double hashing of one 64-bit hash.
    fn probes(id: &str) -> [usize; PROBES] {
        // Fixed keys: the same id gives the same bits for the filter's life.
        let mut h = std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
            .build_hasher();
        h.write(id.as_bytes());
        let h = h.finish();
        let (a, b) = (h as usize, ((h >> 32) as usize) | 1);
        std::array::from_fn(|i| a.wrapping_add(i.wrapping_mul(b)) % BITS)
    }

    /// Puts `id` in; false only for an id never put in before.
    pub(super) fn insert(&mut self, id: &str) -> bool {
        let mut held = true;
        for bit in Self::probes(id) {
            let (word, mask) = (&mut self.bits[bit / 64], 1 << (bit % 64));
            held &= *word & mask != 0;
            *word |= mask;
        }
        held
    }
}

#[cfg(test)]
mod tests {
    use super::SeenIds;

    #[test]
    fn every_id_put_in_is_held_and_few_others_seem_to_be() {
        let mut seen = SeenIds::new();
        for i in 0..200_000 {
            seen.insert(&format!("A{i:08}"));
        }
        assert!((0..200_000).all(|i| seen.insert(&format!("A{i:08}"))));
        // Each id asked about goes in too, so the filter only fills more.
        let false_maybes = (0..100_000).filter(|i| seen.insert(&format!("B{i:08}"))).count();
        // The expected rate at 200,000 to 300,000 ids is under 0.02%.
        assert!(
            false_maybes < 100,
            "{false_maybes} of 100,000 ids never put in seem held"
        );
    }
}
