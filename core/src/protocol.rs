//! MCP protocol revisions and the two eras they belong to.
//!
//! Handshake-era revisions (2025-03-26 to 2025-11-25) open a session with `initialize`;
//! sessionless-era revisions (2026-07-28 on) carry `MCP-Protocol-Version` on every request and
//! have no sessions at all, so the filter lets them through untouched.

/// The handshake-era revisions the filter knows, oldest first.
pub const HANDSHAKE_REVISIONS: [&str; 3] = ["2025-03-26", "2025-06-18", "2025-11-25"];

/// The first sessionless-era revision (SEP-2567, SEP-2575).
pub const FIRST_SESSIONLESS_REVISION: &str = "2026-07-28";

/// What a request's `MCP-Protocol-Version` header says about how to treat it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Era {
    /// No header: a handshake-era request (servers assume 2025-03-26 when it is missing).
    Unstated,
    /// A handshake-era revision the filter knows: sessions apply.
    Handshake,
    /// 2026-07-28 or later: no sessions; pass the request through untouched.
    Sessionless,
    /// Anything else: an unsupported revision, rejected with 400 on session traffic.
    Unsupported,
}

/// Classifies the value of an `MCP-Protocol-Version` header as it came (`None` when absent);
/// spaces and tabs around it do not count.
///
/// Revisions are `YYYY-MM-DD` dates, so later revisions compare greater as strings; any
/// well-formed date from [`FIRST_SESSIONLESS_REVISION`] on counts as sessionless, which keeps
/// future revisions working without a filter update.
pub fn classify(header: Option<&[u8]>) -> Era {
    let Some(value) = header else {
        return Era::Unstated;
    };
    let value = value.trim_ascii();
    if HANDSHAKE_REVISIONS.iter().any(|r| r.as_bytes() == value) {
        Era::Handshake
    } else if is_revision_date(value) && value >= FIRST_SESSIONLESS_REVISION.as_bytes() {
        Era::Sessionless
    } else {
        Era::Unsupported
    }
}

/// True when `value` is a revision: a `YYYY-MM-DD` date, its month 01 to 12 and its day 01
/// to 31 (an impossible date is an invalid version, refused, not a future revision).
fn is_revision_date(bytes: &[u8]) -> bool {
    let shaped = bytes.len() == 10
        && bytes.iter().enumerate().all(|(i, b)| match i {
            4 | 7 => *b == b'-',
            _ => b.is_ascii_digit(),
        });
    let two = |at: usize| match bytes.get(at..at + 2) {
        Some(&[tens, ones]) => {
            u16::from(tens.wrapping_sub(b'0')) * 10 + u16::from(ones.wrapping_sub(b'0'))
        }
        _ => 0,
    };
    shaped && (1..=12).contains(&two(5)) && (1..=31).contains(&two(8))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_revisions() {
        let cases: &[(Option<&str>, Era)] = &[
            (None, Era::Unstated),
            (Some("2025-03-26"), Era::Handshake),
            (Some("2025-06-18"), Era::Handshake),
            (Some("2025-11-25"), Era::Handshake),
            (Some(" 2025-11-25 "), Era::Handshake),
            (Some("2026-07-28"), Era::Sessionless),
            (Some("2027-01-01"), Era::Sessionless),
            (Some("2024-11-05"), Era::Unsupported),
            (Some("2026-01-01"), Era::Unsupported),
            (Some("2026-7-28"), Era::Unsupported),
            (Some("2026-07-28x"), Era::Unsupported),
            (Some("9999-12-31"), Era::Sessionless),
            // Review: impossible dates passed untouched as future revisions.
            (Some("9999-99-99"), Era::Unsupported),
            (Some("2099-13-45"), Era::Unsupported),
            (Some("2026-13-01"), Era::Unsupported),
            (Some("2026-00-10"), Era::Unsupported),
            (Some("2026-10-00"), Era::Unsupported),
            (Some("2026-10-32"), Era::Unsupported),
            (Some(""), Era::Unsupported),
            (Some("latest"), Era::Unsupported),
            (Some("2026/07/28"), Era::Unsupported),
        ];
        for (header, want) in cases {
            assert_eq!(
                classify(header.map(str::as_bytes)),
                *want,
                "header {header:?}"
            );
        }
    }
}
