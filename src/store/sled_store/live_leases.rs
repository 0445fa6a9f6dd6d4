//! Live leases, kept in memory and written to `leases_assignment` only now and then.
//!
//! A lease lives for seconds to minutes, and nearly all of them are handed out and ended
//! between two writes of this table: the loop's lease record used to be two sled writes (in,
//! then out) that a crash is allowed to lose anyway (the task only goes back to the queue, and
//! the signed lease token still lets its holder submit while the task has room). So a lease is
//! written to the tree only when it is still live at a [`LiveLeases::write_to`]: before every
//! flush of sled (any durable write takes the live leases to disk with it, a clean stop's
//! too) and at each pass of the lease sweeper (`queue.sweep_interval_ms`). A lease written
//! there and ended later has its record removed at the next write. At open the table is read
//! back (dropping records whose lease has an ended record), so leases survive a restart as
//! they did when every hand-out was written.
//!
//! Ending a lease writes its ended record (`assignments_id`) first and drops it from here
//! second, so a reader that looks here first and in `assignments_id` second never misses both.

use std::collections::HashMap;

use sled::Tree;

use super::tx::{backend, enc};
use crate::domain::{Assignment, Id};
use crate::store::{keys, StoreResult};

#[derive(Default)]
pub(super) struct LiveLeases {
    inner: parking_lot::Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    live: HashMap<Id, Live>,
    /// Leases whose record is in the tree but which have ended since: removed at the next
    /// write. Never longer than the live leases at the last write.
    ended_on_disk: Vec<Id>,
}

struct Live {
    assignment: Assignment,
    /// The tree holds a record of this lease (maybe an older one).
    on_disk: bool,
    /// Changed since the tree was last written.
    dirty: bool,
}

impl LiveLeases {
    /// Starts from the leases the tree holds.
    pub fn load(leases: Vec<Assignment>) -> Self {
        let live = leases
            .into_iter()
            .map(|assignment| {
                let live = Live {
                    assignment,
                    on_disk: true,
                    dirty: false,
                };
                (live.assignment.id, live)
            })
            .collect();
        Self {
            inner: parking_lot::Mutex::new(Inner {
                live,
                ended_on_disk: Vec::new(),
            }),
        }
    }

    pub fn get(&self, id: Id) -> Option<Assignment> {
        self.inner
            .lock()
            .live
            .get(&id)
            .map(|l| l.assignment.clone())
    }

    /// Hands out or extends a lease.
    pub fn put(&self, assignment: &Assignment) {
        let mut inner = self.inner.lock();
        match inner.live.get_mut(&assignment.id) {
            Some(live) => {
                live.assignment.clone_from(assignment);
                live.dirty = true;
            }
            None => {
                let live = Live {
                    assignment: assignment.clone(),
                    on_disk: false,
                    dirty: true,
                };
                inner.live.insert(assignment.id, live);
            }
        }
    }

    /// Forgets a lease whose ended record has been written.
    pub fn end(&self, id: Id) {
        let mut inner = self.inner.lock();
        if let Some(live) = inner.live.remove(&id) {
            if live.on_disk {
                inner.ended_on_disk.push(id);
            }
        }
    }

    /// Every live lease, in id order (as the table held them), so that a rebuild from them
    /// does not depend on the map's hashing.
    pub fn all(&self) -> Vec<Assignment> {
        let mut all: Vec<Assignment> = {
            let inner = self.inner.lock();
            inner.live.values().map(|l| l.assignment.clone()).collect()
        };
        all.sort_unstable_by_key(|a| a.id);
        all
    }

    /// Brings `tree` in line with the live leases: changed ones written, ended ones removed.
    /// Holds the lock throughout, so a lease ended meanwhile cannot be written back after its
    /// removal. A failed write leaves what it did not reach for the next call.
    pub fn write_to(&self, tree: &Tree) -> StoreResult<()> {
        let mut inner = self.inner.lock();
        while let Some(id) = inner.ended_on_disk.last().copied() {
            tree.remove(keys::id(id)).map_err(backend)?;
            inner.ended_on_disk.pop();
        }
        for live in inner.live.values_mut().filter(|l| l.dirty) {
            tree.insert(keys::id(live.assignment.id), enc(&live.assignment)?)
                .map_err(backend)?;
            live.on_disk = true;
            live.dirty = false;
        }
        Ok(())
    }
}
