//! The audit log's hash chain. Events are appended as they happen (many of them inside the
//! transaction of the change they record), so their order of arrival is not known when they are
//! written. A sealer, one pass a second, takes the events that have settled (older than a
//! moment ago) and not yet sealed, in key order, and gives each a seal: the next sequence
//! number and `sha256(previous hash ‖ event key ‖ event bytes)`. Seals are stored in blocks of
//! up to [`SEALS_PER_BLOCK`] (one write per block, keyed by its first sequence number), because
//! a write per event doubled the audit log's share of the store's work. A pass reads from the
//! last pass's end, or from the earliest event written since (writers note its time), within a
//! look-back window; re-reading the whole window every second was a thirtieth of the server's
//! work under load.
//!
//! Verification walks the seals: an edited event no longer matches its seal, a deleted one
//! leaves its seal pointing nowhere, a deleted block leaves a gap in the sequence, and an event
//! older than the sealed window but outside the chain was slipped in later. Rewriting the whole
//! chain after an edit is only caught against a head recorded elsewhere: `assay audit verify`
//! and the API print it.
//!
//! Retention removes the oldest sealed events with their seals and keeps the last removed hash
//! as the base the chain continues from.

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sled::Transactional;

use super::super::{AuditCheck, StoreResult};
use super::tx::*;
use super::SledStore;
use crate::store::keys;

/// Events this much older than the newest sealed time are looked at again for late arrivals.
const WINDOW_MS: i64 = 10_000;

/// Seals stored in one block (one write).
pub(super) const SEALS_PER_BLOCK: usize = 128;

/// Blocks written per transaction: a sled transaction holds a process-wide lock that stops
/// every other read and write, so a busy second is sealed in several short ones.
const BLOCKS_PER_TRANSACTION: usize = 16;

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

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Seal {
    /// The event's key, hex.
    pub key: String,
    pub hash: String,
}

impl Seal {
    /// The sealed event's key (empty if the stored hex is damaged: no event has that key).
    fn event_key(&self) -> Vec<u8> {
        hex::decode(&self.key).unwrap_or_default()
    }

    /// The time (ms) of the sealed event.
    pub fn time(&self) -> i64 {
        key_time(&self.event_key())
    }
}

/// Consecutive seals, the first with the sequence number the block is stored under.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Block {
    pub seals: Vec<Seal>,
    /// The sealing pass's end (ms): every event in the block is older.
    pub cursor: i64,
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

/// A block as stored: its first sequence number and its seals.
fn read_block(key: &[u8], bytes: &[u8]) -> StoreResult<(u64, Block)> {
    Ok((
        keys::u64_at(key, 0).unwrap_or(0),
        dec("audit_blocks_seq", bytes)?,
    ))
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

    /// Keys sealed inside the look-back window, from the newest blocks: what a new process
    /// needs to know so as to seal nothing twice.
    fn sealed_since(&self, window_start: i64) -> StoreResult<HashSet<Vec<u8>>> {
        let mut keys = HashSet::new();
        for item in self.t.audit_blocks.iter().rev() {
            let (key, bytes) = item.map_err(backend)?;
            let (_, block) = read_block(&key, &bytes)?;
            // Blocks come in the order of their passes; an older pass sealed only older events.
            if block.cursor < window_start {
                break;
            }
            keys.extend(block.seals.iter().map(Seal::event_key));
        }
        Ok(keys)
    }

    /// Notes that audit events from time `at` (ms) on were written; called after the write.
    pub(super) fn audit_written(&self, at: i64) {
        self.audit_written_from.fetch_min(at, Ordering::SeqCst);
    }

    pub(super) fn seal_audit_events(&self, settled_before: i64) -> StoreResult<u64> {
        let _one_sealer = self.audit_sealer.lock().unwrap_or_else(|p| p.into_inner());
        // Taken before the pass reads: an event noted before this was written before it, so the
        // pass finds it; one noted after is looked for by the next pass.
        let written_from = self.audit_written_from.swap(i64::MAX, Ordering::SeqCst);
        let sealed = self.seal_pass(settled_before, written_from);
        if sealed.is_err() {
            self.audit_written(written_from);
        }
        sealed
    }

    fn seal_pass(&self, settled_before: i64, written_from: i64) -> StoreResult<u64> {
        let mut head = self.chain_point(HEAD)?;
        let window_start = head.cursor.saturating_sub(WINDOW_MS).max(0);
        // Keys sealed inside the look-back window, checked in memory.
        let mut recent_slot = self
            .audit_recently_sealed
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // A process's first pass looks over the whole window (what it missed while down is
        // there); later ones start at the cursor, or earlier where a late event was written.
        let start = match &*recent_slot {
            None => window_start,
            Some(_) => head.cursor.min(written_from).max(window_start),
        };
        let recent = match &mut *recent_slot {
            Some(recent) => recent,
            empty => empty.insert(self.sealed_since(window_start)?),
        };
        recent.retain(|k| key_time(k) >= window_start);
        let from = keys::time(start).to_be_bytes();
        let to = keys::time(settled_before).to_be_bytes();
        let pass_end = head.cursor.max(settled_before);
        let mut blocks: Vec<(u64, Block)> = Vec::new();
        // Keys of `blocks`, remembered as sealed once they are committed.
        let mut pending: Vec<Vec<u8>> = Vec::new();
        let mut sealed = 0u64;
        for item in self.t.audit.range(from.as_slice()..to.as_slice()) {
            let (key, bytes) = item.map_err(backend)?;
            // Sealed already: by an earlier pass, or by this one's chunks before a crash
            // (those may be past the stored head's cursor).
            if recent.contains(key.as_ref()) {
                continue;
            }
            head.seq += 1;
            head.hash = link(&head.hash, &key, &bytes);
            let seal = Seal {
                key: hex::encode(&key),
                hash: head.hash.clone(),
            };
            match blocks.last_mut() {
                Some((_, block)) if block.seals.len() < SEALS_PER_BLOCK => block.seals.push(seal),
                _ => blocks.push((
                    head.seq,
                    Block {
                        seals: vec![seal],
                        cursor: pass_end,
                    },
                )),
            }
            pending.push(key.to_vec());
            if blocks.len() == BLOCKS_PER_TRANSACTION
                && blocks
                    .last()
                    .is_some_and(|(_, b)| b.seals.len() == SEALS_PER_BLOCK)
            {
                sealed += self.commit_blocks(&std::mem::take(&mut blocks), &head)?;
                recent.extend(pending.drain(..));
            }
        }
        head.cursor = pass_end;
        sealed += self.commit_blocks(&blocks, &head)?;
        recent.extend(pending);
        Ok(sealed)
    }

    /// Writes blocks and the head after them in one transaction; a crash between two leaves
    /// a consistent prefix of the chain (the next pass continues from its head).
    fn commit_blocks(&self, blocks: &[(u64, Block)], head: &ChainPoint) -> StoreResult<u64> {
        let head_bytes = enc(head)?;
        let encoded = blocks
            .iter()
            .map(|(first, block)| Ok((first.to_be_bytes(), enc(block)?)))
            .collect::<StoreResult<Vec<_>>>()?;
        let t = &self.t;
        (&t.audit_blocks, &t.meta)
            .transaction(|(chain, meta)| {
                for (first, block) in &encoded {
                    chain.insert(first, block.as_slice())?;
                }
                meta.insert(HEAD, head_bytes.as_slice())?;
                Ok(())
            })
            .map_err(from_tx)?;
        Ok(blocks.iter().map(|(_, b)| b.seals.len() as u64).sum())
    }

    pub(super) fn verify_audit_chain(&self) -> StoreResult<AuditCheck> {
        // The head and the seals are read under the sealer's lock: a pass committed between
        // reading one and the other would look like a broken chain.
        let _no_sealer = self.audit_sealer.lock().unwrap_or_else(|p| p.into_inner());
        let base = self.chain_point(BASE)?;
        let head = self.chain_point(HEAD)?;
        let mut problems = Vec::new();
        let mut note = |p: String| {
            if problems.len() < 1000 {
                problems.push(p);
            }
        };
        // Every event the sealer has passed over must be in the chain.
        let settled = keys::time(head.cursor.saturating_sub(WINDOW_MS).max(0)).to_be_bytes();
        let (mut prev, mut expect, mut sealed) = (base.hash.clone(), base.seq + 1, 0u64);
        let mut present_before_settled = 0u64;
        for item in self.t.audit_blocks.iter() {
            let (block_key, bytes) = item.map_err(backend)?;
            let (first, block) = read_block(&block_key, &bytes)?;
            if first != expect {
                note(format!(
                    "seals {expect} to {} are missing",
                    first.saturating_sub(1)
                ));
            }
            for (seq, seal) in (first..).zip(block.seals) {
                let key = seal.event_key();
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
                        if key.as_slice() < settled.as_slice() {
                            present_before_settled += 1;
                        }
                    }
                }
                prev = seal.hash;
                sealed += 1;
                expect = seq + 1;
            }
        }
        if head.seq != expect - 1 || (head.seq > base.seq && head.hash != prev) {
            note(format!(
                "the chain head (seal {}) does not match its last seal ({})",
                head.seq,
                expect - 1
            ));
        }
        // Counting is enough while nothing was slipped in; only then are the events named.
        let before_settled = self.t.audit.range(..settled.as_slice()).count() as u64;
        if before_settled != present_before_settled {
            let mut in_chain = HashSet::new();
            for item in self.t.audit_blocks.iter() {
                let (block_key, bytes) = item.map_err(backend)?;
                let (_, block) = read_block(&block_key, &bytes)?;
                in_chain.extend(block.seals.iter().map(Seal::event_key));
            }
            for item in self.t.audit.range(..settled.as_slice()) {
                let (key, _) = item.map_err(backend)?;
                if !in_chain.contains(key.as_ref()) {
                    note(format!(
                        "the event at {} ms is not in the chain (added after sealing)",
                        key_time(&key)
                    ));
                }
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
            let Some(item) = self.t.audit_blocks.first().map_err(backend)? else {
                return Ok(removed);
            };
            let (first, mut block) = read_block(&item.0, &item.1)?;
            // Seals are removed from the front, up to the first event that is kept.
            let cut = block.seals.iter().take_while(|s| s.time() < before).count();
            let gone: Vec<Seal> = block.seals.drain(..cut).collect();
            let Some(last) = gone.last() else {
                return Ok(removed);
            };
            base.seq = first + cut as u64 - 1;
            base.hash = last.hash.clone();
            let rest = match block.seals.is_empty() {
                true => None,
                false => Some(((first + cut as u64).to_be_bytes(), enc(&block)?)),
            };
            let base_bytes = enc(&base)?;
            let t = &self.t;
            (&t.audit, &t.audit_blocks, &t.meta)
                .transaction(|(audit, chain, meta)| {
                    for seal in &gone {
                        audit.remove(seal.event_key())?;
                    }
                    chain.remove(&item.0)?;
                    if let Some((key, bytes)) = &rest {
                        chain.insert(key, bytes.as_slice())?;
                    }
                    meta.insert(BASE, base_bytes.as_slice())?;
                    Ok(())
                })
                .map_err(from_tx)?;
            removed += cut as u64;
            if rest.is_some() {
                return Ok(removed);
            }
        }
    }
}
