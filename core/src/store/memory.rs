//! Shared data in process memory, for a host whose workers are threads of one process (the
//! native Envoy module): a [`SharedData`] with exactly the semantics the local store expects
//! of Envoy's proxy-wasm shared data, plus the epoch counter the caches read.
//!
//! Tables are named (`"table"` in the configuration): every configuration that names the same
//! table, in one process, shares its sessions, and a table outlives the configurations that
//! use it, so a configuration update keeps every session. A table's memory is bounded by the
//! local store's slots (`max_sessions`), as shared data's is.

use super::local::slot_of_key;
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

/// The keys of a table. A slot's key (`mcps/` and eight lowercase hex digits, as the local
/// store writes it: one per session of the peak) is not stored at all: its slot is the index
/// of its entry in `pages`, which are allocated [`PAGE`] entries at a time as the slots are
/// first written. Slots are granted from 0 upwards, so the pages are dense, and the table
/// grows a page at a time with the peak: a hash map would double its buckets now and then (a
/// step of megabytes at some hundred thousand sessions, kept after they end) and hold every
/// key beside its value. Every other key (the store's few meta keys, the identity buckets, the
/// etcd fallback's per-session keys) is in `map`.
#[derive(Debug, Default)]
struct Entries {
    pages: Vec<Option<Box<[Entry]>>>,
    map: FastMap<Box<[u8]>, Entry>,
    next_cas: u32,
}

/// A key's value and its cas; a cas of 0 (never handed out) marks a key that was never
/// created. An empty value is a key that exists and holds nothing.
#[derive(Debug, Default)]
struct Entry {
    value: Box<[u8]>,
    cas: u32,
}

/// Entries per page (24 KiB).
const PAGE: usize = 1024;

/// Slots at or past this are kept in the map: the pages' index never exceeds 64K entries.
const PAGED_SLOTS: u32 = 1 << 26;

/// The slot of a slot's key as the local store writes it (lowercase hex only, so that one
/// key has one entry), below [`PAGED_SLOTS`].
fn paged_slot(key: &[u8]) -> Option<usize> {
    let slot = slot_of_key(key)?;
    (slot < PAGED_SLOTS).then_some(slot as usize)
}

impl Entries {
    fn find(&self, key: &[u8]) -> Option<&Entry> {
        let entry = match paged_slot(key) {
            Some(slot) => self.pages.get(slot / PAGE)?.as_ref()?.get(slot % PAGE)?,
            None => self.map.get(key)?,
        };
        (entry.cas != 0).then_some(entry)
    }

    /// The entry of `key`, made (as never created) if it was not there.
    fn entry(&mut self, key: &[u8]) -> &mut Entry {
        let Some(slot) = paged_slot(key) else {
            return self.map.entry(key.into()).or_default();
        };
        if self.pages.len() <= slot / PAGE {
            self.pages.resize_with(slot / PAGE + 1, || None);
        }
        let page = self
            .pages
            .get_mut(slot / PAGE)
            .map(|page| page.get_or_insert_with(|| (0..PAGE).map(|_| Entry::default()).collect()));
        match page.and_then(|page| page.get_mut(slot % PAGE)) {
            Some(entry) => entry,
            // Not reached: the pages were extended to the slot's, and a page is PAGE long.
            None => self.map.entry(key.into()).or_default(),
        }
    }

    /// Every key's entry.
    fn all(&self) -> impl Iterator<Item = &Entry> {
        let paged = self.pages.iter().flatten().flat_map(|page| page.iter());
        paged
            .chain(self.map.values())
            .filter(|entry| entry.cas != 0)
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
        self.entries().all().count()
    }

    /// Total bytes held in values.
    pub fn value_bytes(&self) -> usize {
        self.entries().all().map(|entry| entry.value.len()).sum()
    }

    /// Whether the table holds no key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl SharedData for Table {
    fn get(&self, key: &[u8]) -> (Option<Vec<u8>>, Option<u32>) {
        match self.entries().find(key) {
            None => (None, None),
            Some(entry) if entry.value.is_empty() => (None, Some(entry.cas)),
            Some(entry) => (Some(entry.value.to_vec()), Some(entry.cas)),
        }
    }

    fn set(&self, key: &[u8], value: &[u8], cas: Option<u32>) -> Result<(), WriteError> {
        let mut guard = self.entries();
        let entries = &mut *guard;
        let next = entries.next_cas.wrapping_add(1).max(1);
        // One lookup: an initialize writes twice, and finding the key again cost more than
        // the check itself.
        let entry = entries.entry(key);
        // A missing key takes any cas.
        if matches!(cas, Some(want) if want != 0 && entry.cas != 0 && want != entry.cas) {
            return Err(WriteError::CasMismatch);
        }
        if entry.value.len() == value.len() {
            // A record's update keeps its length: written in place, no allocation.
            entry.value.copy_from_slice(value);
        } else {
            entry.value = value.into();
        }
        entry.cas = next;
        entries.next_cas = next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys of every length, slots' keys among them, are found again as written, and only
    /// so: a slot's key in another spelling (upper case, another length) is another key.
    #[test]
    fn keys_of_every_length_are_found_again() {
        let table = Table::default();
        let mut keys: Vec<String> = (0..=25).map(|n| "k".repeat(n)).collect();
        keys.extend(
            [
                "mcps/00000000",
                "mcps/000003ff",
                "mcps/00000400",
                "mcps/03ffffff",
                "mcps/04000000",
            ]
            .map(String::from),
        );
        keys.extend(
            [
                "mcps/0000000A",
                "mcps/0000000",
                "mcps/000000000",
                "mcps/ffffffff",
            ]
            .map(String::from),
        );
        for (n, key) in keys.iter().enumerate() {
            assert_eq!(table.set(key.as_bytes(), &[n as u8 + 1], None), Ok(()));
        }
        for (n, key) in keys.iter().enumerate() {
            assert_eq!(
                table.get(key.as_bytes()).0,
                Some(vec![n as u8 + 1]),
                "{key}"
            );
        }
        assert_eq!(table.len(), keys.len());
        assert_eq!(table.value_bytes(), keys.len());
        for absent in [
            "mcps/00000001",
            "mcps/0000000a",
            "mcps/000003fe",
            "mcps/00000401",
            "mcps/fffffffe",
        ] {
            assert_eq!(table.get(absent.as_bytes()), (None, None), "{absent}");
        }
        assert_eq!(paged_slot(b"mcps/0000000A"), None);
        assert_eq!(paged_slot(b"mcps/03ffffff"), Some((1 << 26) - 1));
        assert_eq!(paged_slot(b"mcps/04000000"), None);
    }

    /// Slots' keys cost their page, allocated whole as the first of its slots is written,
    /// and nothing per key beside it: a table of 10,000 slots holds 10 pages.
    #[test]
    fn slots_keys_fill_pages() {
        let table = Table::default();
        for slot in 0..10_000u32 {
            let key = crate::store::local::slot_key(slot);
            assert_eq!(table.set(&key, b"", Some(u32::MAX)), Ok(()));
        }
        let entries = table.entries();
        assert_eq!(entries.pages.iter().flatten().count(), 10);
        assert!(entries.map.is_empty());
        drop(entries);
        assert_eq!(table.len(), 10_000);
    }

    #[test]
    fn a_table_has_shared_datas_semantics() {
        // A key of the map and a slot's key of the pages.
        for key in [&b"k"[..], b"mcps/00000007"] {
            semantics_of(key);
        }
    }

    fn semantics_of(k: &[u8]) {
        let table = Table::default();
        assert_eq!(table.get(k), (None, None));
        assert_eq!(
            table.set(k, b"v1", Some(7)),
            Ok(()),
            "missing key: cas ignored"
        );
        let (value, cas) = table.get(k);
        assert_eq!(value.as_deref(), Some(&b"v1"[..]));
        let cas = cas.unwrap_or_default();
        assert_eq!(
            table.set(k, b"v2", Some(cas + 1)),
            Err(WriteError::CasMismatch)
        );
        assert_eq!(table.set(k, b"v2", Some(cas)), Ok(()));
        assert_eq!(table.set(k, b"v3", Some(cas)), Err(WriteError::CasMismatch));
        assert_eq!(table.set(k, b"", None), Ok(()));
        let (value, cas) = table.get(k);
        assert_eq!(value, None, "an empty value reads as none");
        assert!(cas.is_some(), "but the key is there");
        assert_eq!(
            table.set(k, b"x", Some(u32::MAX)),
            Err(WriteError::CasMismatch),
            "a create-only write finds it"
        );
        assert_eq!(table.len(), 1);
        // Values of the same length are written in place, others replace the value; either
        // way the next read sees exactly what was written, under a new cas.
        for value in [&b"abcd"[..], b"wxyz", b"longer value", b"ab"] {
            let before = table.get(k).1;
            assert_eq!(table.set(k, value, before), Ok(()));
            let (read, after) = table.get(k);
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
