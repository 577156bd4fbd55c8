//! Rendezvous (highest random weight) hashing of keys and channels onto store nodes.
//!
//! The score of node `n` for a name `k` (a key or a channel) is
//! `mix(fnv1a64(id(n) ++ [0xFF] ++ k))`, where `id(n)` is the node's address exactly as
//! configured, `fnv1a64` is 64-bit FNV-1a (offset basis `0xcbf29ce484222325`, prime
//! `0x100000001b3`) and `mix` is the SplitMix64 finaliser. The node with the highest score owns
//! the name; ties go to the node listed first. Adding or removing a node moves only the names
//! whose highest score changes: about `1/M` of them.

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The FNV state after a node's id and the separator, computed once per node.
pub(crate) fn node_seed(id: &str) -> u64 {
    fnv1a(fnv1a(FNV_OFFSET, id.as_bytes()), &[0xFF])
}

/// The index of the node (given by its seeds) that owns `name`; 0 when there is one node.
pub(crate) fn owner(seeds: &[u64], name: &[u8]) -> usize {
    let mut best = 0;
    let mut best_score = 0;
    for (i, &seed) in seeds.iter().enumerate() {
        let score = mix(fnv1a(seed, name));
        if i == 0 || score > best_score {
            best = i;
            best_score = score;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_and_moves_few_keys() {
        let three: Vec<u64> = ["a:1", "b:2", "c:3"].iter().map(|s| node_seed(s)).collect();
        let four: Vec<u64> = ["a:1", "b:2", "c:3", "d:4"]
            .iter()
            .map(|s| node_seed(s))
            .collect();
        let mut counts = [0usize; 3];
        let mut moved = 0;
        for i in 0..3000 {
            let k = format!("key{i}");
            let o = owner(&three, k.as_bytes());
            counts[o] += 1;
            let o4 = owner(&four, k.as_bytes());
            if o4 != o {
                assert_eq!(o4, 3, "a key may only move to the new node");
                moved += 1;
            }
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
        assert!((500..1000).contains(&moved), "{moved}");
    }

    #[test]
    fn stable_values() {
        // Pinned so that every client version places names on the same nodes.
        assert_eq!(fnv1a(FNV_OFFSET, b"a"), 0xaf63_dc4c_8601_ec8c);
        let seeds: Vec<u64> = ["127.0.0.1:1", "127.0.0.1:2"]
            .iter()
            .map(|s| node_seed(s))
            .collect();
        assert_eq!(owner(&seeds, b"x"), owner(&seeds, b"x"));
    }
}
