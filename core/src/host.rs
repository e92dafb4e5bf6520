//! What the session logic needs from the proxy that runs it, and nothing of how that proxy
//! provides it. The Envoy (proxy-wasm) adapter lives in the filter crate; a deterministic fake
//! lives in [`crate::testkit`]. Logging goes through the `log` facade, which every host
//! adapter connects to its own logger.

use crate::headers::{self, Header, Names};
use crate::metrics::Metric;
use crate::store::SharedData;

/// The host: a clock, a CSPRNG, the process-wide key-value store every worker shares, and
/// the stats.
pub trait Host: SharedData {
    /// Wall-clock time, milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
    /// Fills `buf` from a cryptographically secure source; false when there is none.
    fn fill_random(&self, buf: &mut [u8]) -> bool;
    /// Adds `delta` to a stat (a counter or a gauge).
    fn increment(&self, metric: Metric, delta: i64);
    /// Sets a gauge.
    fn record(&self, metric: Metric, value: u64);
    /// The current value of the process-wide [`Metric::Epoch`] counter, or `None` when it
    /// cannot be read or reads 0 (a stats matcher dropped it): see `cache.rs`.
    fn epoch(&self) -> Option<u64>;
}

/// A request's or a response's headers, read when the machine asks. Names are lowercase.
pub trait Headers {
    /// For each of `names`, its first value and how many times it appears, into `found` (as
    /// long as `names`). One call for all the headers an event needs: a host whose headers
    /// cost a crossing to read (proxy-wasm) reads them once.
    fn find<'s>(&'s self, names: &Names<'_>, found: &mut [Header<'s>]);

    /// The first value of header `name` and how many times it appears.
    fn get(&self, name: &str) -> Header<'_> {
        let mut found = [Header::default()];
        self.find(&Names::new(&[name]), &mut found);
        let [header] = found;
        header
    }
}

/// Facts the proxy established about a request (Envoy's attributes: `connection.*`,
/// `metadata.filter_metadata.*`), read when the machine asks.
pub trait Attributes {
    /// The value at `path` (e.g. `["connection", "uri_san_peer_certificate"]`), as bytes.
    fn get(&self, path: &[&str]) -> Option<Vec<u8>>;
}

/// A header map in the serialized form of [`crate::headers::scan`], read whole (by `read`, one host crossing) the
/// first time a header is asked for; a malformed map reads as if the headers were absent.
pub struct Serialized<F: Fn() -> Vec<u8>> {
    read: F,
    map: std::cell::OnceCell<Vec<u8>>,
}

impl<F: Fn() -> Vec<u8>> Serialized<F> {
    /// A map read by `read` when first needed.
    pub fn new(read: F) -> Serialized<F> {
        Serialized {
            read,
            map: std::cell::OnceCell::new(),
        }
    }
}

impl<F: Fn() -> Vec<u8>> Headers for Serialized<F> {
    fn find<'s>(&'s self, names: &Names<'_>, found: &mut [Header<'s>]) {
        let map = self.map.get_or_init(&self.read);
        if headers::scan_into(map, names, found).is_none() {
            found.fill(Header::default());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_serialized_map_is_read_once_and_a_malformed_one_is_empty() {
        let reads = std::cell::Cell::new(0);
        let map = Serialized::new(|| {
            reads.set(reads.get() + 1);
            headers::serialize(&[(b"a", b"1"), (b"b", b"2")])
        });
        assert_eq!(map.get("b").text(), Some("2"));
        assert_eq!(map.get("a").text(), Some("1"));
        assert_eq!(reads.get(), 1);
        let broken = Serialized::new(|| vec![9, 0, 0, 0, 1]);
        assert_eq!(broken.get("a"), Header::default());
    }
}
