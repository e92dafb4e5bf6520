//! Session-ID entropy: 1,000,000 secrets drawn exactly as the filter draws them
//! (`getrandom::fill` of 16 bytes; on wasm32-wasip1 that is WASI `random_get`, Envoy's
//! BoringSSL `RAND_bytes`; here the host's `getrandom`, which is also exactly what the native
//! module draws from, `native/src/lib.rs` `fill_random`), encoded as session IDs.
//!
//! Checks, each with a threshold whose false-failure probability is about 1e-9 or less:
//! - no two IDs are equal;
//! - the 16,000,000 secret bytes are uniform over 0..=255 (chi-square, 255 degrees of
//!   freedom, both tails: too good a fit is as suspicious as too bad a one), and so is each
//!   of the 16 byte positions on its own;
//! - each of the 128 bit positions is set in 50% ± 0.325% of the IDs (6.5 standard deviations);
//! - consecutive secrets differ in 64 bits on average (± 0.05, about 9 standard deviations).
//!
//! This tests the call the filter makes and the encoding, not the CSPRNG itself: it catches a
//! constant, a counter, a truncated or reused buffer, a biased encoding.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use mcp_session_core::session_id::{SessionId, ENCODED_LEN, SECRET_LEN};

const IDS: usize = 1_000_000;
/// Standard normal quantile for an upper tail of 1e-9.
const Z: f64 = 5.998;

/// Wilson–Hilferty: the chi-square quantile with `df` degrees of freedom at normal quantile z.
fn chi_square_quantile(df: f64, z: f64) -> f64 {
    let a = 2.0 / (9.0 * df);
    df * (1.0 - a + z * a.sqrt()).powi(3)
}

fn chi_square(counts: &[u64]) -> f64 {
    let total: u64 = counts.iter().sum();
    let expected = total as f64 / counts.len() as f64;
    counts
        .iter()
        .map(|&c| (c as f64 - expected).powi(2) / expected)
        .sum()
}

/// The secrets of `IDS` session IDs, each drawn and encoded as the filter does; one ID in a
/// hundred is parsed back too.
fn draw() -> Vec<[u8; SECRET_LEN]> {
    let mut secrets = Vec::with_capacity(IDS);
    for slot in 0..IDS as u32 {
        let mut secret = [0u8; SECRET_LEN];
        getrandom::fill(&mut secret).unwrap();
        let id = SessionId { slot, secret }.encode();
        assert_eq!(id.len(), ENCODED_LEN);
        if slot % 100 == 0 {
            assert_eq!(
                SessionId::parse(&id),
                Some(SessionId { slot, secret }),
                "{id}"
            );
        }
        secrets.push(secret);
    }
    secrets
}

#[test]
fn a_million_session_ids_are_unique_and_uniform() {
    let secrets = draw();
    let (low, high) = (
        chi_square_quantile(255.0, -Z),
        chi_square_quantile(255.0, Z),
    );

    // Uniqueness (of the secret, hence of the ID whatever its slot).
    let mut sorted: Vec<u128> = secrets.iter().map(|s| u128::from_le_bytes(*s)).collect();
    sorted.sort_unstable();
    let duplicates = sorted.windows(2).filter(|w| w[0] == w[1]).count();
    assert_eq!(duplicates, 0, "{duplicates} duplicate session secrets");

    // Byte values, over all bytes and per position.
    let mut all = [0u64; 256];
    let mut by_position = [[0u64; 256]; SECRET_LEN];
    for secret in &secrets {
        for (position, &byte) in secret.iter().enumerate() {
            by_position[position][usize::from(byte)] += 1;
        }
    }
    let mut bits = [0u64; 8 * SECRET_LEN];
    for (position, counts) in by_position.iter().enumerate() {
        for (value, &count) in counts.iter().enumerate() {
            all[value] += count;
            for bit in 0..8 {
                if value >> bit & 1 == 1 {
                    bits[position * 8 + bit] += count;
                }
            }
        }
    }
    let chi = chi_square(&all);
    println!("bytes: chi-square {chi:.1} (255 df; accepted {low:.1} to {high:.1})");
    assert!(
        (low..high).contains(&chi),
        "byte distribution: chi-square {chi:.1}"
    );
    for (position, counts) in by_position.iter().enumerate() {
        let chi = chi_square(counts);
        assert!(
            (low..high).contains(&chi),
            "byte {position}: chi-square {chi:.1}"
        );
    }

    // Bit positions.
    let bound = 6.5 * (0.25 / IDS as f64).sqrt();
    let worst = bits
        .iter()
        .map(|&set| (set as f64 / IDS as f64 - 0.5).abs())
        .fold(0.0, f64::max);
    println!(
        "bits: worst deviation from 50% {:.4}% (bound {:.4}%)",
        worst * 100.0,
        bound * 100.0
    );
    for (position, &set) in bits.iter().enumerate() {
        let share = set as f64 / IDS as f64;
        assert!(
            (share - 0.5).abs() < bound,
            "bit {position} set in {share:.5}"
        );
    }

    // Consecutive draws are unrelated.
    let distance: u64 = secrets
        .windows(2)
        .map(|w| {
            let a = u128::from_le_bytes(w[0]);
            let b = u128::from_le_bytes(w[1]);
            u64::from((a ^ b).count_ones())
        })
        .sum();
    let mean = distance as f64 / (IDS - 1) as f64;
    println!("consecutive secrets differ in {mean:.3} bits on average");
    assert!(
        (mean - 64.0).abs() < 0.05,
        "mean Hamming distance {mean:.3}"
    );
}

#[test]
fn the_thresholds_are_the_textbook_ones() {
    // Wilson–Hilferty against tabulated chi-square quantiles (df 255): 0.99 -> 310.457,
    // 0.01 -> 205.135.
    assert!((chi_square_quantile(255.0, 2.3263) - 310.457).abs() < 0.5);
    assert!((chi_square_quantile(255.0, -2.3263) - 205.135).abs() < 0.5);
    assert!(chi_square(&[5, 5, 5, 5]) == 0.0);
}
