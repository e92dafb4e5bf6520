//! SHA-256 (RustCrypto's `sha2`), used to store a digest of a caller's identity instead of its
//! value, and to fingerprint a configuration. Only this wrapper names the crate.

use sha2::{Digest, Sha256};

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
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize().into()
}

#[cfg(test)]
mod tests {
    //! The FIPS 180-4 vectors, as tests of how we call the crate.
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
