//! Deterministic data and chunk splits for the crypto tests.

/// Pseudo-random bytes (xorshift64): reproducible, no RNG in assertions.
pub fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Splits `data` at pseudo-random points into parts of 0..=max bytes (empty parts included).
pub fn random_splits(data: &[u8], seed: u64, max: usize) -> Vec<&[u8]> {
    let sizes = pseudo_random(4096, seed);
    let mut parts = Vec::new();
    let mut rest = data;
    let mut i = 0;
    while !rest.is_empty() {
        let n = (usize::from(sizes[i % sizes.len()]) * (max + 1) / 256).min(rest.len());
        i += 1;
        let (a, b) = rest.split_at(n);
        parts.push(a);
        rest = b;
    }
    parts
}
