//! The audit log's hash chain. Events are appended as they happen (many of them inside the
//! transaction of the change they record), so their order of arrival is not known when they are
//! written. A sealer, one pass a second, takes the events that have settled (older than a
//! moment ago) and not yet sealed, in key order, and appends a seal for each: the next sequence
//! number and `sha256(previous hash ‖ event key ‖ event bytes)`. Verification walks the seals:
//! an edited event no longer matches its seal, a deleted one leaves its seal pointing nowhere,
//! a deleted seal leaves a gap in the sequence, and an event older than the sealed window but
//! outside the chain was slipped in later. Rewriting the whole chain after an edit is only
//! caught against a head recorded elsewhere: `assay audit verify` and the API print it.
//!
//! Retention removes the oldest sealed events with their seals and keeps the last removed hash
//! as the base the chain continues from.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sled::Transactional;

use super::super::{AuditCheck, StoreResult};
use super::tx::*;
use super::SledStore;
use crate::store::keys;

/// Events this much older than the newest sealed time are looked at again for late arrivals.
const WINDOW_MS: i64 = 10_000;

/// Seals written per transaction (see `commit_seals`).
const SEALS_PER_TRANSACTION: usize = 128;

const HEAD: &[u8] = b"audit_head";
const BASE: &[u8] = b"audit_base";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ChainPoint {
    seq: u64,
    hash: String,
    /// Events up to this time (ms) have been looked at (head only).
    #[serde(default)]
    cursor: i64,
}

impl ChainPoint {
    fn start() -> Self {
        Self {
            seq: 0,
            hash: "0".repeat(64),
            cursor: 0,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Seal {
    /// The event's key, hex.
    key: String,
    hash: String,
}

fn link(prev: &str, key: &[u8], event: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(hex::decode(prev).unwrap_or_default());
    h.update(key);
    h.update(event);
    hex::encode(h.finalize())
}

/// The time (ms) an event key starts with.
fn key_time(key: &[u8]) -> i64 {
    keys::u64_at(key, 0).map_or(0, keys::time_back)
}

impl SledStore {
    fn chain_point(&self, name: &[u8]) -> StoreResult<ChainPoint> {
        Ok(match self.t.meta.get(name).map_err(backend)? {
            Some(bytes) => dec("meta", &bytes)?,
            None => ChainPoint::start(),
        })
    }

    pub(super) fn audit_chain_head(&self) -> StoreResult<(u64, String)> {
        let head = self.chain_point(HEAD)?;
        Ok((head.seq, head.hash))
    }

    pub(super) fn seal_audit_events(&self, settled_before: i64) -> StoreResult<u64> {
        let _one_sealer = self.audit_sealer.lock().unwrap_or_else(|p| p.into_inner());
        let mut head = self.chain_point(HEAD)?;
        let from = keys::time(head.cursor.saturating_sub(WINDOW_MS).max(0)).to_be_bytes();
        let to = keys::time(settled_before).to_be_bytes();
        let mut seals = Vec::new();
        let mut sealed = 0u64;
        // Keys this process sealed inside the look-back window: checked in memory, so a busy
        // log costs one pass over new events, not a lookup per event of the whole window.
        let mut recent = self
            .audit_recently_sealed
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let window_start = head.cursor.saturating_sub(WINDOW_MS);
        recent.retain(|k| key_time(k) >= window_start);
        for item in self.t.audit.range(from.as_slice()..to.as_slice()) {
            let (key, bytes) = item.map_err(backend)?;
            // Past the last pass's end nothing is sealed yet; before it, only late arrivals
            // are not (and what an earlier process sealed, looked up).
            let looked_at_before = key_time(&key) < head.cursor;
            if looked_at_before
                && (recent.contains(key.as_ref())
                    || self.t.audit_sealed.contains_key(&key).map_err(backend)?)
            {
                continue;
            }

            head.seq += 1;
            head.hash = link(&head.hash, &key, &bytes);
            let seal = Seal {
                key: hex::encode(&key),
                hash: head.hash.clone(),
            };
            seals.push((head.seq, key, enc(&seal)?));
            if seals.len() == SEALS_PER_TRANSACTION {
                let chunk = std::mem::take(&mut seals);
                sealed += self.commit_seals(&chunk, &head)?;
                recent.extend(chunk.into_iter().map(|(_, key, _)| key.to_vec()));
            }
        }
        head.cursor = head.cursor.max(settled_before);
        sealed += self.commit_seals(&seals, &head)?;
        recent.extend(seals.into_iter().map(|(_, key, _)| key.to_vec()));
        Ok(sealed)
    }

    /// Writes seals and the head after them in one transaction. A sled transaction holds a
    /// process-wide lock that stops every other read and write, so a busy second's events are
    /// sealed in several short transactions, never one long one; a crash between two leaves a
    /// consistent prefix of the chain (the next pass continues from its head).
    fn commit_seals(
        &self,
        seals: &[(u64, sled::IVec, Vec<u8>)],
        head: &ChainPoint,
    ) -> StoreResult<u64> {
        let head_bytes = enc(head)?;
        let t = &self.t;
        (&t.audit_chain, &t.audit_sealed, &t.meta)
            .transaction(|(chain, sealed, meta)| {
                for (seq, key, seal) in seals {
                    chain.insert(&seq.to_be_bytes(), seal.as_slice())?;
                    sealed.insert(key.as_ref(), &seq.to_be_bytes())?;
                }
                meta.insert(HEAD, head_bytes.as_slice())?;
                Ok(())
            })
            .map_err(from_tx)?;
        Ok(seals.len() as u64)
    }

    pub(super) fn verify_audit_chain(&self) -> StoreResult<AuditCheck> {
        let base = self.chain_point(BASE)?;
        let head = self.chain_point(HEAD)?;
        let mut problems = Vec::new();
        let mut note = |p: String| {
            if problems.len() < 1000 {
                problems.push(p);
            }
        };
        let (mut prev, mut expect, mut sealed) = (base.hash.clone(), base.seq + 1, 0u64);
        for item in self.t.audit_chain.iter() {
            let (seq_key, bytes) = item.map_err(backend)?;
            let seq = keys::u64_at(&seq_key, 0).unwrap_or(0);
            let seal: Seal = dec("audit_chain_seq", &bytes)?;
            if seq != expect {
                note(format!(
                    "seals {expect} to {} are missing",
                    seq.saturating_sub(1)
                ));
            }
            expect = seq + 1;
            let key = hex::decode(&seal.key).unwrap_or_default();
            match self.t.audit.get(&key).map_err(backend)? {
                None => note(format!(
                    "the event of seal {seq} (at {} ms) was deleted",
                    key_time(&key)
                )),
                Some(event) => {
                    if link(&prev, &key, &event) != seal.hash {
                        note(format!(
                            "the event of seal {seq} (at {} ms), or the seal before it, was changed",
                            key_time(&key)
                        ));
                    }
                }
            }
            prev = seal.hash;
            sealed += 1;
        }
        if head.seq != expect - 1 || (head.seq > base.seq && head.hash != prev) {
            note(format!(
                "the chain head (seal {}) does not match its last seal ({})",
                head.seq,
                expect - 1
            ));
        }
        // Every event the sealer has passed over must be in the chain.
        let settled = keys::time(head.cursor.saturating_sub(WINDOW_MS).max(0)).to_be_bytes();
        for item in self.t.audit.range(..settled.as_slice()) {
            let (key, _) = item.map_err(backend)?;
            if !self.t.audit_sealed.contains_key(&key).map_err(backend)? {
                note(format!(
                    "the event at {} ms is not in the chain (added after sealing)",
                    key_time(&key)
                ));
            }
        }
        Ok(AuditCheck {
            events: self.t.audit.len() as u64,
            sealed,
            head_seq: head.seq,
            head_hash: head.hash,
            problems,
        })
    }

    pub(super) fn prune_audit_events(&self, before: i64) -> StoreResult<u64> {
        let _one_sealer = self.audit_sealer.lock().unwrap_or_else(|p| p.into_inner());
        let mut base = self.chain_point(BASE)?;
        let mut removed = 0;
        loop {
            let mut batch = Vec::new();
            for item in self.t.audit_chain.iter().take(1000) {
                let (seq_key, bytes) = item.map_err(backend)?;
                let seal: Seal = dec("audit_chain_seq", &bytes)?;
                let key = hex::decode(&seal.key).unwrap_or_default();
                if key_time(&key) >= before {
                    break;
                }
                batch.push((seq_key, key, seal.hash));
            }
            let Some((last_seq, _, last_hash)) = batch.last() else {
                return Ok(removed);
            };
            base.seq = keys::u64_at(last_seq, 0).unwrap_or(base.seq);
            base.hash = last_hash.clone();
            let base_bytes = enc(&base)?;
            let t = &self.t;
            (&t.audit, &t.audit_chain, &t.audit_sealed, &t.meta)
                .transaction(|(audit, chain, sealed, meta)| {
                    for (seq_key, key, _) in &batch {
                        audit.remove(key.as_slice())?;
                        sealed.remove(key.as_slice())?;
                        chain.remove(seq_key)?;
                    }
                    meta.insert(BASE, base_bytes.as_slice())?;
                    Ok(())
                })
                .map_err(from_tx)?;
            removed += batch.len() as u64;
        }
    }
}
