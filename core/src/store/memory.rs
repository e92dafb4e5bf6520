//! Shared data in process memory, for a host whose workers are threads of one process (the
//! native Envoy module): a [`SharedData`] with exactly the semantics the local store expects
//! of Envoy's proxy-wasm shared data, plus the epoch counter the caches read.
//!
//! Tables are named (`"table"` in the configuration): every configuration that names the same
//! table, in one process, shares its sessions, and a table outlives the configurations that
//! use it, so a configuration update keeps every session. A table's memory is bounded by the
//! local store's slots (`max_sessions`), as shared data's is.

use super::{SharedData, WriteError};
use crate::FastMap;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

/// One table: keys to values and their cas, and the epoch.
#[derive(Debug, Default)]
pub struct Table {
    entries: Mutex<Entries>,
    epoch: AtomicU64,
}

#[derive(Debug, Default)]
struct Entries {
    map: FastMap<Key, (Box<[u8]>, u32)>,
    next_cas: u32,
}

/// A key of the table: one of up to [`INLINE_KEY`] bytes (a slot's, `mcps/` and eight hex
/// digits, and every other the local store writes but a fallback's) held in the map's entry
/// itself, a longer one on the heap. A new session then costs the table one allocation (its
/// record), not two, and eight bytes less.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Key {
    /// The first `len` bytes (the rest zero, so that equal keys are equal arrays).
    Inline {
        len: u8,
        bytes: [u8; INLINE_KEY],
    },
    Heap(Box<[u8]>),
}

/// Longest key held inline.
const INLINE_KEY: usize = 22;

impl Key {
    fn of(key: &[u8]) -> Key {
        let mut bytes = [0u8; INLINE_KEY];
        match (bytes.get_mut(..key.len()), u8::try_from(key.len())) {
            (Some(room), Ok(len)) => {
                room.copy_from_slice(key);
                Key::Inline { len, bytes }
            }
            _ => Key::Heap(key.into()),
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            Key::Inline { len, bytes } => bytes.get(..usize::from(*len)).unwrap_or_default(),
            Key::Heap(bytes) => bytes,
        }
    }
}

/// Hashed as its bytes are, so that the map is searched with a `&[u8]`.
impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl std::borrow::Borrow<[u8]> for Key {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl Table {
    /// The table called `name` in this process, made empty the first time it is asked for.
    pub fn named(name: &str) -> Arc<Table> {
        static TABLES: OnceLock<Mutex<HashMap<String, Arc<Table>>>> = OnceLock::new();
        let tables = TABLES.get_or_init(Mutex::default);
        let mut tables = tables
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Arc::clone(tables.entry(name.to_string()).or_default())
    }

    fn entries(&self) -> MutexGuard<'_, Entries> {
        // A panic while the lock was held (caught at the module's boundary) leaves the map
        // as the last completed operation left it: every operation is one insert or read.
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds `delta` to the epoch and returns the new value.
    pub fn advance_epoch(&self, delta: u64) -> u64 {
        self.epoch
            .fetch_add(delta, Ordering::AcqRel)
            .wrapping_add(delta)
    }

    /// The epoch: moves on every end of a session in this table.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// How many keys the table holds (for tests and memory accounting).
    pub fn len(&self) -> usize {
        self.entries().map.len()
    }

    /// Total bytes held in values.
    pub fn value_bytes(&self) -> usize {
        self.entries()
            .map
            .values()
            .map(|(value, _)| value.len())
            .sum()
    }

    /// Whether the table holds no key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl SharedData for Table {
    fn get(&self, key: &[u8]) -> (Option<Vec<u8>>, Option<u32>) {
        match self.entries().map.get(key) {
            None => (None, None),
            Some((value, cas)) if value.is_empty() => (None, Some(*cas)),
            Some((value, cas)) => (Some(value.to_vec()), Some(*cas)),
        }
    }

    fn set(&self, key: &[u8], value: &[u8], cas: Option<u32>) -> Result<(), WriteError> {
        let mut guard = self.entries();
        let entries = &mut *guard;
        let mut next = || {
            entries.next_cas = entries.next_cas.wrapping_add(1).max(1);
            entries.next_cas
        };
        // One lookup: an initialize writes twice, and hashing the key again cost more than
        // the check itself.
        match entries.map.get_mut(key) {
            Some((_, have)) if matches!(cas, Some(want) if want != 0 && want != *have) => {
                Err(WriteError::CasMismatch)
            }
            // A record's update keeps its length: written in place, no allocation.
            Some((stored, have)) if stored.len() == value.len() => {
                stored.copy_from_slice(value);
                *have = next();
                Ok(())
            }
            Some(entry) => {
                *entry = (value.into(), next());
                Ok(())
            }
            None => {
                let cas = next();
                entries.map.insert(Key::of(key), (value.into(), cas));
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys short and long, inline or not, are found again as written, and only so.
    #[test]
    fn keys_of_every_length_are_found_again() {
        let table = Table::default();
        let keys: Vec<String> = (0..=INLINE_KEY + 3).map(|n| "k".repeat(n)).collect();
        for (n, key) in keys.iter().enumerate() {
            assert_eq!(table.set(key.as_bytes(), &[n as u8 + 1], None), Ok(()));
        }
        for (n, key) in keys.iter().enumerate() {
            assert_eq!(table.get(key.as_bytes()).0, Some(vec![n as u8 + 1]), "{n}");
            assert_eq!(Key::of(key.as_bytes()).as_bytes(), key.as_bytes());
        }
        assert_eq!(table.len(), keys.len());
        assert_eq!(table.get(b"mcps/00000001"), (None, None));
    }

    #[test]
    fn a_table_has_shared_datas_semantics() {
        let table = Table::default();
        assert_eq!(table.get(b"k"), (None, None));
        assert_eq!(
            table.set(b"k", b"v1", Some(7)),
            Ok(()),
            "missing key: cas ignored"
        );
        let (value, cas) = table.get(b"k");
        assert_eq!(value.as_deref(), Some(&b"v1"[..]));
        let cas = cas.unwrap_or_default();
        assert_eq!(
            table.set(b"k", b"v2", Some(cas + 1)),
            Err(WriteError::CasMismatch)
        );
        assert_eq!(table.set(b"k", b"v2", Some(cas)), Ok(()));
        assert_eq!(
            table.set(b"k", b"v3", Some(cas)),
            Err(WriteError::CasMismatch)
        );
        assert_eq!(table.set(b"k", b"", None), Ok(()));
        let (value, cas) = table.get(b"k");
        assert_eq!(value, None, "an empty value reads as none");
        assert!(cas.is_some(), "but the key is there");
        assert_eq!(table.len(), 1);
        // Values of the same length are written in place, others replace the value; either
        // way the next read sees exactly what was written, under a new cas.
        for value in [&b"abcd"[..], b"wxyz", b"longer value", b"ab"] {
            let before = table.get(b"k").1;
            assert_eq!(table.set(b"k", value, before), Ok(()));
            let (read, after) = table.get(b"k");
            assert_eq!(read.as_deref(), Some(value));
            assert_ne!(after, before);
        }
    }

    #[test]
    fn tables_are_shared_by_name_and_outlive_their_users() {
        let first = Table::named("memory-test-a");
        first.advance_epoch(2);
        assert_eq!(first.set(b"k", b"v", None), Ok(()));
        drop(first);
        let again = Table::named("memory-test-a");
        assert_eq!(again.epoch(), 2);
        assert_eq!(again.get(b"k").0.as_deref(), Some(&b"v"[..]));
        let other = Table::named("memory-test-b");
        assert_eq!(other.get(b"k"), (None, None));
        assert_eq!(other.epoch(), 0);
    }

    #[test]
    fn threads_writing_with_cas_never_lose_an_update() {
        let table = Arc::new(Table::default());
        assert_eq!(table.set(b"n", &0u32.to_le_bytes(), None), Ok(()));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let table = Arc::clone(&table);
                std::thread::spawn(move || {
                    for _ in 0..500 {
                        loop {
                            let (value, cas) = table.get(b"n");
                            let n = value.map_or(0, |v| {
                                u32::from_le_bytes(v.try_into().unwrap_or_default())
                            });
                            let written = table.set(b"n", &(n + 1).to_le_bytes(), cas);
                            if written.is_ok() {
                                break;
                            }
                        }
                    }
                })
            })
            .collect();
        for thread in threads {
            assert!(thread.join().is_ok());
        }
        let (value, _) = table.get(b"n");
        let n = value.map_or(0, |v| u32::from_le_bytes(v.try_into().unwrap_or_default()));
        assert_eq!(n, 2000);
    }
}
