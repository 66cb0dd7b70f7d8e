//! Merkle tree over receipt leaves: Keccak-256 of the sorted pair at each node (the
//! commutative scheme of OpenZeppelin's `MerkleProof`), an odd node carried up unchanged.

use crate::digest::{keccak256, Hash32};

/// The longest inclusion proof a decoder accepts: a tree of up to 2^32 leaves (a batch holds at
/// most [`crate::messages::MAX_BATCH`], a proof of 12 hashes).
pub const MAX_PROOF: usize = 32;

fn node(a: &Hash32, b: &Hash32) -> Hash32 {
    if a <= b {
        keccak256(&[a, b])
    } else {
        keccak256(&[b, a])
    }
}

fn next_level(level: &[Hash32]) -> Vec<Hash32> {
    level
        .chunks(2)
        .map(|pair| match pair {
            [a, b] => node(a, b),
            [a, ..] => *a,
            [] => [0; 32],
        })
        .collect()
}

/// The root over `leaves`; the zero hash for no leaves.
pub fn root(leaves: &[Hash32]) -> Hash32 {
    let mut level = leaves.to_vec();
    while level.len() > 1 {
        level = next_level(&level);
    }
    level.first().copied().unwrap_or([0; 32])
}

/// The inclusion proof of `leaves[index]`: the sibling at each level, bottom up. `None` when
/// `index` is out of range.
pub fn proof(leaves: &[Hash32], index: usize) -> Option<Vec<Hash32>> {
    if index >= leaves.len() {
        return None;
    }
    let mut out = vec![];
    let mut level = leaves.to_vec();
    let mut i = index;
    while level.len() > 1 {
        if let Some(sibling) = level.get(i ^ 1) {
            out.push(*sibling);
        }
        level = next_level(&level);
        i /= 2;
    }
    Some(out)
}

/// The inclusion proof of every leaf, in order; the levels are built once (`n log n` hashes).
pub fn proofs(leaves: &[Hash32]) -> Vec<Vec<Hash32>> {
    let mut out = vec![vec![]; leaves.len()];
    let mut level = leaves.to_vec();
    let mut width = 1usize;
    while level.len() > 1 {
        for (i, proof) in out.iter_mut().enumerate() {
            if let Some(sibling) = level.get((i / width) ^ 1) {
                proof.push(*sibling);
            }
        }
        level = next_level(&level);
        width *= 2;
    }
    out
}

/// Whether `proof` links `leaf` to `root`.
pub fn verify(leaf: &Hash32, proof: &[Hash32], root: &Hash32) -> bool {
    proof.iter().fold(*leaf, |acc, sib| node(&acc, sib)) == *root
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn every_leaf_proves_into_the_root(n in 1usize..70, seed in any::<u8>()) {
            let leaves: Vec<Hash32> = (0..n).map(|i| keccak256(&[&[seed], &i.to_le_bytes()])).collect();
            let r = root(&leaves);
            let all = proofs(&leaves);
            prop_assert_eq!(all.len(), n);
            for (i, leaf) in leaves.iter().enumerate() {
                let p = proof(&leaves, i).unwrap_or_default();
                prop_assert_eq!(&all[i], &p);
                prop_assert!(verify(leaf, &p, &r));
                let mut bad = *leaf;
                bad[0] ^= 1;
                prop_assert!(!verify(&bad, &p, &r));
            }
        }
    }

    #[test]
    fn a_single_leaf_is_its_own_root() {
        let leaf = [7u8; 32];
        assert_eq!(root(&[leaf]), leaf);
        assert_eq!(proof(&[leaf], 0), Some(vec![]));
        assert_eq!(proof(&[leaf], 1), None);
    }
}
