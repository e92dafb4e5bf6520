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
    pub fn adopt_configuration(&self, token: u64, now_ms: u64) -> bool {
        let value = encode_config(token, now_ms);
        self.shared.set(CONFIG_KEY, &value, None).is_ok()
    }

    /// Whether the configuration with fingerprint `token` sweeps: it is the newest, or the
    /// newest has not ticked for [`CONFIG_STALE_MS`] (then this one takes over), or none was
    /// recorded (then this one takes it). The newest says it is alive on each tick, once a
    /// period.
    ///
    /// After a configuration update with the same store, the old configuration's contexts
    /// keep ticking until its filter chains drain; they must not sweep with the old timeouts,
    /// which would end sessions the new ones keep. But a configuration that Envoy made and
    /// then dropped (an update it rejected after building the filter, a listener removed)
    /// ticks no more: without the takeover, nothing would sweep the store again, and
    /// abandoned sessions would hold their slots until `max_sessions` refused every
    /// initialize.
    pub fn sweeps_for(&self, token: u64, now_ms: u64) -> bool {
        let (bytes, cas) = self.shared.get(CONFIG_KEY);
        let (newest, beat) = read_config(bytes.as_deref());
        let age = now_ms.saturating_sub(beat);
        let claim = || {
            let value = encode_config(token, now_ms);
            self.shared
                .set(CONFIG_KEY, &value, cas.or(CREATE_ONLY))
                .is_ok()
        };
        match newest {
            Some(newest) if newest == token => {
                if age >= SWEEP_PERIOD_MS {
                    let _ = claim(); // lost to another worker of this configuration: it beat
                }
                true
            }
            Some(_) if age < CONFIG_STALE_MS => false,
            _ => claim(),
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

/// The newest configuration's fingerprint and when it last ticked; `(None, 0)` for nothing
/// recorded or a value this version cannot read, and the time 0 for one without it (written by
/// a version before the tick was recorded): both are taken over at once.
pub(super) fn read_config(bytes: Option<&[u8]>) -> (Option<u64>, u64) {
    let word = |at: usize| {
        let b: [u8; 8] = bytes?.get(at..at + 8)?.try_into().ok()?;
        Some(u64::from_le_bytes(b))
    };
    (word(0), word(8).unwrap_or(0))
}

pub(super) fn encode_config(token: u64, now_ms: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    let (token_bytes, beat) = out.split_at_mut(8);
    token_bytes.copy_from_slice(&token.to_le_bytes());
    beat.copy_from_slice(&now_ms.to_le_bytes());
    out
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
