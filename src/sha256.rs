//! SHA-256 (FIPS 180-4), used only to store a digest of the identity header instead of its
//! value. Written out here to keep the dependency list to the five crates the project allows.

// Indices here are positions in fixed 64-byte blocks and 64-word schedules, always in range.
#![allow(clippy::indexing_slicing)]

const K: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
];

const H0: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

/// The first `N` bytes (at most 32) of [`digest`]; any bytes past 32 are zero.
pub fn digest_prefix<const N: usize>(parts: &[&[u8]]) -> [u8; N] {
    let full = digest(parts);
    let mut out = [0u8; N];
    for (to, from) in out.iter_mut().zip(full) {
        *to = from;
    }
    out
}

/// The SHA-256 digest of the concatenation of `parts`.
pub fn digest(parts: &[&[u8]]) -> [u8; 32] {
    let mut state = H0;
    let mut block = [0u8; 64];
    let mut filled = 0usize;
    let mut total_bits: u64 = 0;
    for part in parts {
        total_bits = total_bits.wrapping_add((part.len() as u64).wrapping_mul(8));
        for &byte in *part {
            block[filled % 64] = byte;
            filled += 1;
            if filled == 64 {
                compress(&mut state, &block);
                filled = 0;
            }
        }
    }
    // Padding: a 1 bit, zeros, then the message length in bits, big endian.
    block[filled % 64] = 0x80;
    filled += 1;
    if filled > 56 {
        block[filled % 64..].fill(0);
        compress(&mut state, &block);
        filled = 0;
    }
    block[filled % 64..56].fill(0);
    block[56..].copy_from_slice(&total_bits.to_be_bytes());
    compress(&mut state, &block);

    let mut out = [0u8; 32];
    for (chunk, word) in out.chunks_exact_mut(4).zip(state) {
        chunk.copy_from_slice(&word.to_be_bytes());
    }
    out
}

fn compress(state: &mut [u32; 8], block: &[u8; 64]) {
    let mut w = [0u32; 64];
    for (i, chunk) in block.chunks_exact(4).enumerate() {
        w[i] = u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
    }
    for i in 16..64 {
        let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
        let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16]
            .wrapping_add(s0)
            .wrapping_add(w[i - 7])
            .wrapping_add(s1);
    }
    let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut h] = *state;
    for i in 0..64 {
        let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
        let ch = (e & f) ^ (!e & g);
        let t1 = h
            .wrapping_add(s1)
            .wrapping_add(ch)
            .wrapping_add(K[i])
            .wrapping_add(w[i]);
        let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
        let maj = (a & b) ^ (a & c) ^ (b & c);
        let t2 = s0.wrapping_add(maj);
        h = g;
        g = f;
        f = e;
        e = d.wrapping_add(t1);
        d = c;
        c = b;
        b = a;
        a = t1.wrapping_add(t2);
    }
    for (s, v) in state.iter_mut().zip([a, b, c, d, e, f, g, h]) {
        *s = s.wrapping_add(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn matches_fips_180_vectors() {
        let million_a = vec![b'a'; 1_000_000];
        let cases: &[(&[u8], &str)] = &[
            (
                b"",
                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            ),
            (
                b"abc",
                "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            ),
            (
                b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
                "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
            ),
            (
                &million_a,
                "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(
                hex(&digest(&[input])),
                *want,
                "input of {} bytes",
                input.len()
            );
        }
    }

    #[test]
    fn a_prefix_is_the_digest_cut_short() {
        let full = digest(&[b"abc"]);
        assert_eq!(digest_prefix::<8>(&[b"abc"])[..], full[..8]);
        assert_eq!(digest_prefix::<32>(&[b"abc"]), full);
    }

    #[test]
    fn parts_are_concatenated() {
        assert_eq!(digest(&[b"ab", b"", b"c"]), digest(&[b"abc"]));
        // 55, 56 and 64 bytes straddle the padding boundaries.
        for len in [55usize, 56, 63, 64, 65, 119, 120] {
            let data = vec![7u8; len];
            let (x, y) = data.split_at(len / 3);
            assert_eq!(digest(&[x, y]), digest(&[&data]), "len {len}");
        }
    }
}
