//! The sweep: one step per period across all workers, by the newest configuration only,
//! reclaiming expired sessions and stale reservations and refilling the free hint.

use super::*;

/// What a sweep step did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sweep {
    /// Slots read.
    pub scanned: u32,
    /// Live sessions found expired and reclaimed.
    pub expired: u32,
    /// Pending reservations found stale and freed.
    pub stale_pending: u32,
}

impl<S: SharedData> Store<S> {
    /// Records that the configuration with fingerprint `token` is the newest one on this
    /// store: from now on only its root contexts sweep (see [`Store::sweeps_for`]).
    pub fn adopt_configuration(&self, token: u64) -> bool {
        self.shared
            .set(CONFIG_KEY, &token.to_le_bytes(), None)
            .is_ok()
    }

    /// Whether the configuration with fingerprint `token` is the newest (or none was recorded).
    /// After a configuration update with the same `vm_id`, the old configuration's root
    /// contexts keep ticking until its filter chains drain; they must not sweep with the old
    /// timeouts, which would end sessions the new ones keep.
    pub fn sweeps_for(&self, token: u64) -> bool {
        match self.shared.get(CONFIG_KEY).0 {
            Some(bytes) => bytes.as_slice() == token.to_le_bytes().as_slice(),
            None => true,
        }
    }

    /// One sweep step, if it is this worker's turn: the worker that advances the shared
    /// cursor by compare-and-swap reclaims expired sessions in the next chunk of slots.
    pub fn sweep(&self, now_ms: u64) -> Sweep {
        let mut report = Sweep::default();
        let (bytes, cas) = self.shared.get(SWEEP_KEY);
        let (cursor, last_ms) = read_sweep(bytes.as_deref());
        if cas.is_some() && now_ms.saturating_sub(last_ms) < SWEEP_PERIOD_MS {
            return report;
        }
        let high = self.high_water();
        let chunk = (high / SWEEP_STEPS_PER_PASS).max(SWEEP_MIN_CHUNK).min(high);
        let start = if high == 0 { 0 } else { cursor % high };
        let next = if high == 0 {
            0
        } else {
            start.wrapping_add(chunk) % high
        };
        let value = encode_sweep(next, now_ms);
        if self
            .shared
            .set(SWEEP_KEY, &value, cas.or(CREATE_ONLY))
            .is_err()
        {
            return report; // another worker took this step
        }
        // Slots found free or freed here, for the free hint (which holds at most HINT_MAX).
        let mut free = Vec::new();
        let mut note_free = |slot: u32| {
            if free.len() < HINT_MAX && slot < self.limits.max_sessions {
                free.push(slot);
            }
        };
        for offset in 0..chunk {
            let slot = start.wrapping_add(offset) % high;
            report.scanned += 1;
            let key = slot_key(slot);
            let (bytes, Some(cas)) = self.shared.get(&key) else {
                continue; // never created
            };
            let Some(bytes) = bytes else {
                note_free(slot);
                continue;
            };
            let Some(record) = Record::decode(&bytes) else {
                continue;
            };
            if self.is_expired(&record, now_ms) && self.shared.set(&key, &[], Some(cas)).is_ok() {
                self.forget_identity(&record);
                match record.state {
                    State::Live => report.expired += 1,
                    State::Pending => report.stale_pending += 1,
                }
                note_free(slot);
            }
        }
        self.hint_free(&free);
        report
    }
}

pub(super) fn read_sweep(bytes: Option<&[u8]>) -> (u32, u64) {
    let Some(bytes) = bytes else {
        return (0, 0);
    };
    let cursor = bytes
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_le_bytes);
    let last = bytes
        .get(4..12)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_le_bytes);
    (cursor, last)
}

pub(super) fn encode_sweep(cursor: u32, now_ms: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(12);
    out.extend_from_slice(&cursor.to_le_bytes());
    out.extend_from_slice(&now_ms.to_le_bytes());
    out
}
