//! The in-memory hand-out index. It mirrors what the store holds (open tasks with their routing
//! and progress, active leases) so that choosing the next task never scans or conflicts in the
//! database. It is rebuilt from the store at start-up; every change to it is made while holding
//! its project's lock, right after the matching store write succeeded, so the two never drift.
//!
//! A project's lock has two parts: its commit gate and its index. [`Queue::lock`] takes both,
//! and every change takes it that way, except two:
//!
//! - the submit committer holds the gates of its batch's projects from its re-check to its
//!   mirror, and lets go of the index while the batch is written to the store;
//! - a hand-out takes the index alone ([`Queue::lock_index`]), so it need not wait for a batch's
//!   writes. That is safe because a hand-out only adds a lease to a task with room, and a batch
//!   in flight changes no task's room: each member's lease counts against its task until the
//!   mirror turns it into a review, and the mirror replaces task statuses without touching
//!   other leases.

use std::cmp::Reverse;
use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use tokio::sync::watch;

use crate::domain::{Assignment, Id, TaskState, TaskStatus};

/// An active lease as the hand-out sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    pub assignment_id: Id,
    pub expert_id: Id,
    pub expires_at: i64,
}

impl From<&Assignment> for Lease {
    fn from(a: &Assignment) -> Self {
        Self {
            assignment_id: a.id,
            expert_id: a.expert_id,
            expires_at: a.expires_at,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Slot {
    pub status: TaskStatus,
    pub leases: Vec<Lease>,
}

impl Slot {
    fn live_leases(&self, now: i64) -> impl Iterator<Item = &Lease> {
        self.leases.iter().filter(move |l| l.expires_at > now)
    }

    /// Reviews done plus leases still running.
    pub fn taken(&self, now: i64) -> usize {
        self.status.done_by.len() + self.live_leases(now).count()
    }

    pub fn has_room(&self, now: i64) -> bool {
        self.status.state == TaskState::Open && self.taken(now) < self.status.reviews as usize
    }

    /// Whether this expert has reviewed, skipped or currently holds the task.
    pub fn touched_by(&self, expert: Id, now: i64) -> bool {
        self.status.done_by.contains(&expert)
            || self.status.skipped_by.contains(&expert)
            || self.live_leases(now).any(|l| l.expert_id == expert)
    }
}

type Order = (Reverse<i64>, Id);

/// Hashes task ids for the slot table. Ids are handed out in order, and an import's tasks take
/// consecutive ones: an id's low bits are kept as they are, so consecutive ids land in
/// neighbouring buckets and loading a million tasks walks the table rather than missing the
/// cache twice a task. The top 7 bits, the tag the table compares first, are mixed from the
/// whole id. Ids come from the server's own counter, never from a client.
#[derive(Default)]
struct TaskIdHasher(u64);

impl Hasher for TaskIdHasher {
    fn finish(&self) -> u64 {
        const TAG: u64 = 0xfe00_0000_0000_0000;
        self.0 ^ (self.0.wrapping_mul(0x9e37_79b9_7f4a_7c15) & TAG)
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used for ids; anything else still hashes, byte by byte.
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u64(&mut self, id: u64) {
        self.0 = id;
    }
}

/// Open tasks and leases of one project.
#[derive(Debug, Default)]
pub struct ProjectQueue {
    /// Tasks still waiting for someone, per pool, best first: open, with fewer reviews done
    /// plus leases out than they need. A task whose leases fill it leaves the set until a lease
    /// ends (expired leases end by the sweeper), so picking never wades through taken tasks.
    pools: HashMap<Option<String>, BTreeSet<Order>>,
    /// Boxed: the table then holds 16-byte entries, and its spare capacity (a hash table keeps
    /// up to half its buckets empty) costs little; inline slots made it most of an idle
    /// server's memory.
    slots: HashMap<Id, Box<Slot>, BuildHasherDefault<TaskIdHasher>>,
    /// The lease each expert holds in this project (an expert works on one task at a time).
    held: HashMap<Id, (Id, Lease)>,
    /// Leases handed to each expert in this project since start-up (for routers' `pick`).
    handouts: HashMap<Id, u64>,
    /// Tasks waiting in QA, oldest id first, and the QA leases on them.
    pub qa: QaQueue,
}

/// A reviewer's lease on a task in QA. Kept in memory only: a restart returns every item to
/// the queue, and a verdict with a still-valid signed token is accepted if no one else took it.
#[derive(Debug, Clone, PartialEq)]
pub struct QaLease {
    pub id: Id,
    pub reviewer: Id,
    pub expires_at: i64,
}

/// The QA side of a project's queue.
#[derive(Debug, Default)]
pub struct QaQueue {
    waiting: std::collections::BTreeMap<Id, TaskStatus>,
    leases: HashMap<Id, QaLease>,
}

impl QaQueue {
    pub fn status(&self, task: Id) -> Option<&TaskStatus> {
        self.waiting.get(&task)
    }

    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// The live lease on a task, if any.
    pub fn lease(&self, task: Id, now: i64) -> Option<&QaLease> {
        self.leases.get(&task).filter(|l| l.expires_at > now)
    }

    /// The task a reviewer holds a live lease on.
    pub fn held_by(&self, reviewer: Id, now: i64) -> Option<(Id, &QaLease)> {
        self.leases
            .iter()
            .find(|(_, l)| l.reviewer == reviewer && l.expires_at > now)
            .map(|(task, l)| (*task, l))
    }

    /// The first waiting task with no live lease that `may_take` allows.
    pub fn first_free(&self, now: i64, may_take: impl Fn(&TaskStatus) -> bool) -> Option<Id> {
        self.waiting
            .values()
            .find(|s| self.lease(s.task_id, now).is_none() && may_take(s))
            .map(|s| s.task_id)
    }

    pub fn lease_task(&mut self, task: Id, lease: QaLease) {
        if self.waiting.contains_key(&task) {
            self.leases.insert(task, lease);
        }
    }

    /// Ends a lease if it is the one given.
    pub fn end_lease(&mut self, task: Id, lease: Id) {
        if self.leases.get(&task).is_some_and(|l| l.id == lease) {
            self.leases.remove(&task);
        }
    }

    fn set(&mut self, status: &TaskStatus) {
        if status.state == TaskState::InQa {
            self.waiting.insert(status.task_id, status.clone());
        } else {
            self.waiting.remove(&status.task_id);
            self.leases.remove(&status.task_id);
        }
    }
}

impl ProjectQueue {
    fn order(status: &TaskStatus) -> Order {
        (Reverse(status.priority), status.task_id)
    }

    /// Adds or replaces a task's status; tasks that are no longer open leave the queue, tasks
    /// in QA wait in its QA side.
    pub fn set_status(&mut self, status: TaskStatus) {
        if status.state == TaskState::InQa || !self.qa.is_empty() {
            self.qa.set(&status);
        }
        if let Some(old) = self.slots.get(&status.task_id) {
            let old_order = Self::order(&old.status);
            if let Some(set) = self.pools.get_mut(&old.status.pool) {
                set.remove(&old_order);
            }
        }
        if status.state == TaskState::Open {
            let task = status.task_id;
            match self.slots.entry(task) {
                Entry::Occupied(mut slot) => slot.get_mut().status = status,
                Entry::Vacant(slot) => {
                    slot.insert(Box::new(Slot {
                        status,
                        leases: Vec::new(),
                    }));
                }
            }
            self.refresh(task);
        } else if let Some(slot) = self.slots.remove(&status.task_id) {
            for lease in &slot.leases {
                self.forget_held(lease);
            }
        }
    }

    /// A project's queue from `count` stored statuses, as `set_status` for each would build
    /// it, for a start-up's million tasks: one table insert per task into a table sized once,
    /// and each pool's waiting set built at the end from its orders, which come sorted when
    /// the statuses come by task id at one priority (as stored).
    fn load(count: usize, statuses: impl Iterator<Item = TaskStatus>) -> Self {
        let mut queue = Self::default();
        queue.slots.reserve(count);
        let mut waiting: HashMap<Option<String>, Vec<Order>> = HashMap::new();
        let mut repeated = false;
        for status in statuses {
            if status.state == TaskState::InQa || !queue.qa.is_empty() {
                queue.qa.set(&status);
            }
            let task = status.task_id;
            if status.state != TaskState::Open {
                repeated |= queue.slots.remove(&task).is_some();
                continue;
            }
            if status.done_by.len() < status.reviews as usize {
                let order = Self::order(&status);
                match waiting.get_mut(&status.pool) {
                    Some(orders) => orders.push(order),
                    None => {
                        waiting.insert(status.pool.clone(), vec![order]);
                    }
                }
            }
            let slot = Box::new(Slot {
                status,
                leases: Vec::new(),
            });
            repeated |= queue.slots.insert(task, slot).is_some();
        }
        if repeated {
            // A task listed twice: its last status stands, so the orders are taken from the
            // table rather than from every status seen.
            waiting.clear();
            for slot in queue.slots.values() {
                let s = &slot.status;
                if s.done_by.len() < s.reviews as usize {
                    waiting
                        .entry(s.pool.clone())
                        .or_default()
                        .push(Self::order(s));
                }
            }
        }
        queue.pools = waiting
            .into_iter()
            .map(|(pool, orders)| (pool, BTreeSet::from_iter(orders)))
            .collect();
        queue
    }

    pub fn slot(&self, task: Id) -> Option<&Slot> {
        self.slots.get(&task).map(|s| &**s)
    }

    pub fn add_lease(&mut self, task: Id, lease: Lease) {
        if let Some(slot) = self.slots.get_mut(&task) {
            if !slot
                .leases
                .iter()
                .any(|l| l.assignment_id == lease.assignment_id)
            {
                *self.handouts.entry(lease.expert_id).or_default() += 1;
            }
            slot.leases
                .retain(|l| l.assignment_id != lease.assignment_id);
            slot.leases.push(lease.clone());
            self.held.insert(lease.expert_id, (task, lease));
            self.refresh(task);
        }
    }

    /// Puts a task in its pool's set, or takes it out, according to whether it still waits.
    fn refresh(&mut self, task: Id) {
        let Some(slot) = self.slots.get(&task) else {
            return;
        };
        let order = Self::order(&slot.status);
        let waiting = slot.status.done_by.len() + slot.leases.len() < slot.status.reviews as usize;
        let set = self.pools.entry(slot.status.pool.clone()).or_default();
        if waiting {
            set.insert(order);
        } else {
            set.remove(&order);
        }
    }

    pub fn remove_lease(&mut self, task: Id, assignment: Id) {
        let Some(slot) = self.slots.get_mut(&task) else {
            return;
        };
        if let Some(i) = slot
            .leases
            .iter()
            .position(|l| l.assignment_id == assignment)
        {
            let lease = slot.leases.swap_remove(i);
            self.forget_held(&lease);
            self.refresh(task);
        }
    }

    fn forget_held(&mut self, lease: &Lease) {
        let holds = self.held.get(&lease.expert_id);
        if holds.is_some_and(|(_, l)| l.assignment_id == lease.assignment_id) {
            self.held.remove(&lease.expert_id);
        }
    }

    /// The live lease this expert holds in the project, if any: (task, assignment).
    pub fn held_by(&self, expert: Id, now: i64) -> Option<(Id, Id)> {
        match self.held.get(&expert) {
            Some((task, lease)) if lease.expires_at > now && self.slots.contains_key(task) => {
                Some((*task, lease.assignment_id))
            }
            _ => None,
        }
    }

    /// Whether this expert may take this task now: open with room, in a pool they have (or in
    /// no pool), not reviewed, skipped or held by them.
    pub fn may_take(&self, task: Id, expert: Id, skills: &[String], now: i64) -> bool {
        self.slots.get(&task).is_some_and(|s| {
            s.has_room(now)
                && !s.touched_by(expert, now)
                && s.status.pool.as_ref().is_none_or(|p| skills.contains(p))
        })
    }

    /// Up to `limit` tasks this expert may take, best first (highest priority, then oldest).
    pub fn eligible(&self, expert: Id, skills: &[String], now: i64, limit: usize) -> Vec<Id> {
        let pools = std::iter::once(None).chain(skills.iter().map(|s| Some(s.clone())));
        let mut found: Vec<Order> = Vec::new();
        for pool in pools {
            let Some(set) = self.pools.get(&pool) else {
                continue;
            };
            let room = set
                .iter()
                .filter(|(_, task)| {
                    self.slots
                        .get(task)
                        .is_some_and(|s| s.has_room(now) && !s.touched_by(expert, now))
                })
                .take(limit);
            found.extend(room);
        }
        found.sort_unstable();
        found.dedup();
        found
            .into_iter()
            .take(limit)
            .map(|(_, task)| task)
            .collect()
    }

    /// The best task this expert may take.
    pub fn pick(&self, expert: Id, skills: &[String], now: i64) -> Option<Id> {
        self.eligible(expert, skills, now, 1).into_iter().next()
    }

    pub fn handouts(&self, expert: Id) -> u64 {
        self.handouts.get(&expert).copied().unwrap_or(0)
    }

    /// Ids of every open task, best first.
    pub fn open_tasks(&self) -> Vec<Id> {
        let mut all: Vec<Order> = self
            .pools
            .values()
            .flat_map(|s| s.iter().copied())
            .collect();
        all.sort_unstable();
        all.into_iter().map(|(_, id)| id).collect()
    }

    pub fn open_count(&self) -> usize {
        self.slots.len()
    }
}

/// One project's index and its commit gate (see the module notes).
#[derive(Default)]
pub struct ProjectHandle {
    gate: Mutex<()>,
    index: Mutex<ProjectQueue>,
}

/// A project's index, locked with its commit gate.
pub struct Locked<'a> {
    // Fields drop in order: the index is let go before the gate.
    index: MutexGuard<'a, ProjectQueue>,
    _gate: MutexGuard<'a, ()>,
}

impl Deref for Locked<'_> {
    type Target = ProjectQueue;
    fn deref(&self) -> &ProjectQueue {
        &self.index
    }
}

impl DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut ProjectQueue {
        &mut self.index
    }
}

/// All projects' queues. Each project has its own lock, so projects never wait on each other.
pub struct Queue {
    projects: Mutex<HashMap<Id, Arc<ProjectHandle>>>,
    /// False while the start-up load runs. Every project lookup waits for it, and every change
    /// to open tasks or leases looks its project up before writing to the store, so nothing
    /// changes under the load and the index starts as an exact mirror. Async callers wait on
    /// the channel itself, blocking ones on the condition variable (set after the value).
    loaded: watch::Sender<bool>,
    load_lock: Mutex<()>,
    load_done: Condvar,
}

impl Default for Queue {
    /// An empty, loaded queue.
    fn default() -> Self {
        Self::with_loaded(true)
    }
}

/// How much waits in one project, for `/metrics`.
pub struct Depth {
    pub project: Id,
    pub open: usize,
    pub qa: usize,
    pub leases: usize,
}

impl Queue {
    /// Every known project's queue depths now (nothing while the index is loading).
    pub fn depths(&self, now: i64) -> Vec<Depth> {
        let projects: Vec<_> = {
            let map = self.projects.lock().unwrap_or_else(|p| p.into_inner());
            map.iter().map(|(id, q)| (*id, q.clone())).collect()
        };
        let mut out: Vec<Depth> = projects
            .into_iter()
            .map(|(project, q)| {
                // Read only: need not wait for a submit batch's writes.
                let queue = Self::lock_index(&q);
                Depth {
                    project,
                    open: queue.slots.len(),
                    qa: queue.qa.len(),
                    leases: queue
                        .slots
                        .values()
                        .map(|s| s.live_leases(now).count())
                        .sum(),
                }
            })
            .collect();
        out.sort_unstable_by_key(|d| d.project);
        out
    }

    /// A queue that answers no lookup until [`Queue::load`] has filled it.
    pub fn loading() -> Self {
        Self::with_loaded(false)
    }

    fn with_loaded(loaded: bool) -> Self {
        Self {
            projects: Mutex::default(),
            loaded: watch::Sender::new(loaded),
            load_lock: Mutex::new(()),
            load_done: Condvar::new(),
        }
    }

    pub fn is_loaded(&self) -> bool {
        *self.loaded.borrow()
    }

    /// Waits for the start-up load without holding a thread. Requests that will look up a queue
    /// call this first, so that while the index loads they queue here rather than fill the
    /// blocking pool (which logins and pages need too).
    pub async fn loaded(&self) {
        if !self.is_loaded() {
            // The sender lives as long as `self`, so this only returns once loaded.
            let _ = self.loaded.subscribe().wait_for(|loaded| *loaded).await;
        }
    }

    /// One project's queue; waits while the start-up load runs.
    pub fn project(&self, project: Id) -> Arc<ProjectHandle> {
        if !self.is_loaded() {
            let mut guard = self.load_lock.lock().unwrap_or_else(|p| p.into_inner());
            while !self.is_loaded() {
                guard = self
                    .load_done
                    .wait(guard)
                    .unwrap_or_else(|p| p.into_inner());
            }
        }
        self.entry(project)
    }

    fn entry(&self, project: Id) -> Arc<ProjectHandle> {
        let mut map = self.projects.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(project).or_default().clone()
    }

    /// Locks one project's queue with its commit gate: what every change takes, except a
    /// hand-out's and the committer's (see the module notes). A poisoned lock still holds
    /// consistent data: every change is applied after its store write, and none of them can
    /// panic half-way.
    pub fn lock(queue: &Arc<ProjectHandle>) -> Locked<'_> {
        let gate = Self::gate(queue);
        Locked {
            index: Self::lock_index(queue),
            _gate: gate,
        }
    }

    /// Locks one project's index without its commit gate, so it may be taken while a submit
    /// batch of the project is being written: only for reading the index, and for a hand-out
    /// adding a lease (see the module notes). Never wait for a gate while holding it.
    pub fn lock_index(queue: &Arc<ProjectHandle>) -> MutexGuard<'_, ProjectQueue> {
        queue.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A project's commit gate alone, for the committer: it holds the gate from its re-check
    /// to its mirror and takes the index only around them.
    pub fn gate(queue: &Arc<ProjectHandle>) -> MutexGuard<'_, ()> {
        queue.gate.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Fills the index from the store's open tasks and active leases and lets lookups through.
    pub fn load(&self, open: Vec<TaskStatus>, active: Vec<Assignment>) {
        let leases = active
            .iter()
            .map(|a| (a.project_id, a.task_id, Lease::from(a)))
            .collect();
        self.install(Built::new(open, leases));
    }

    /// Every open task and active lease, for a snapshot: (statuses, (project, task, lease)).
    /// Call it when nothing changes any more (at a clean stop).
    pub fn contents(&self) -> (Vec<TaskStatus>, Vec<(Id, Id, Lease)>) {
        let projects: Vec<_> = {
            let map = self.projects.lock().unwrap_or_else(|p| p.into_inner());
            let mut all: Vec<_> = map.iter().map(|(id, q)| (*id, q.clone())).collect();
            all.sort_unstable_by_key(|(id, _)| *id);
            all
        };
        let (mut open, mut leases) = (Vec::new(), Vec::new());
        for (project, q) in projects {
            let queue = Self::lock(&q);
            let mut slots: Vec<_> = queue.slots.values().collect();
            slots.sort_unstable_by_key(|s| s.status.task_id);
            for slot in slots {
                open.push(slot.status.clone());
                for lease in &slot.leases {
                    leases.push((project, slot.status.task_id, lease.clone()));
                }
            }
            open.extend(queue.qa.waiting.values().cloned());
        }
        (open, leases)
    }

    /// Takes an index built apart (see [`Built`]) and lets lookups through.
    pub fn install(&self, built: Built) {
        for (project, queue) in built.projects {
            let q = self.entry(project);
            *Self::lock(&q) = queue;
        }
        self.loaded.send_replace(true);
        // Taking the lock orders this after any waiter's check, so none misses the wake-up.
        let _guard = self.load_lock.lock().unwrap_or_else(|p| p.into_inner());
        self.load_done.notify_all();
    }
}

/// Every project's open tasks and leases, built apart from the live [`Queue`], so that a start
/// can build it while the store is still opening and install it once the store agrees.
#[derive(Debug, Default)]
pub struct Built {
    projects: HashMap<Id, ProjectQueue>,
}

impl Built {
    /// `open` comes project by project (as the store and the snapshot list it); a project
    /// that comes again is added to with `set_status`.
    pub fn new(open: Vec<TaskStatus>, leases: Vec<(Id, Id, Lease)>) -> Self {
        let mut projects: HashMap<Id, ProjectQueue> = HashMap::new();
        // (project, how many of its statuses come next)
        let runs: Vec<(Id, usize)> = open
            .chunk_by(|a, b| a.project_id == b.project_id)
            .filter_map(|run| Some((run.first()?.project_id, run.len())))
            .collect();
        let mut open = open.into_iter();
        for (project, run) in runs {
            let statuses = open.by_ref().take(run);
            match projects.entry(project) {
                Entry::Vacant(slot) => {
                    slot.insert(ProjectQueue::load(run, statuses));
                }
                Entry::Occupied(mut queue) => statuses.for_each(|s| queue.get_mut().set_status(s)),
            }
        }
        for (project, task, lease) in leases {
            projects.entry(project).or_default().add_lease(task, lease);
        }
        Self { projects }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use proptest::prelude::*;

    #[test]
    fn a_change_takes_the_commit_gate_and_a_hand_out_only_the_index() {
        let queue = Queue::default();
        let q = queue.project(1);
        {
            let _change = Queue::lock(&q);
            assert!(q.gate.try_lock().is_err() && q.index.try_lock().is_err());
        }
        {
            let _hand_out = Queue::lock_index(&q);
            assert!(q.gate.try_lock().is_ok(), "a hand-out leaves the gate free");
        }
        // The committer's write phase: the gate held and the index free.
        let _gate = Queue::gate(&q);
        drop(Queue::lock_index(&q));
        assert!(q.gate.try_lock().is_err());
    }

    fn status(task: Id, pool: Option<&str>, reviews: u32, priority: i64) -> TaskStatus {
        TaskStatus {
            task_id: task,
            project_id: 1,
            state: TaskState::Open,
            pool: pool.map(str::to_owned),
            reviews,
            priority,
            estimate_minutes: None,
            done_by: vec![],
            skipped_by: vec![],
            router_version: None,
            gold: false,
            qa: None,
        }
    }

    #[test]
    fn picks_by_priority_pool_and_room() {
        let mut q = ProjectQueue::default();
        q.set_status(status(1, None, 1, 0));
        q.set_status(status(2, Some("med"), 1, 5));
        q.set_status(status(3, None, 1, 1));
        assert_eq!(q.pick(10, &[], 0), Some(3));
        assert_eq!(q.pick(10, &["med".into()], 0), Some(2));
        q.add_lease(
            3,
            Lease {
                assignment_id: 100,
                expert_id: 10,
                expires_at: 50,
            },
        );
        assert_eq!(q.pick(11, &[], 10), Some(1), "task 3 is full while leased");
        assert_eq!(
            q.pick(11, &[], 60),
            Some(1),
            "until the sweeper ends the lease"
        );
        assert_eq!(q.held_by(10, 10), Some((3, 100)));
        assert_eq!(q.held_by(10, 60), None);
        q.remove_lease(3, 100);
        assert_eq!(
            q.pick(11, &[], 60),
            Some(3),
            "an ended lease frees the task"
        );
    }

    #[test]
    fn never_twice_to_one_expert() {
        let mut q = ProjectQueue::default();
        let mut s = status(1, None, 3, 0);
        q.set_status(s.clone());
        s.done_by.push(10);
        q.set_status(s.clone());
        assert_eq!(q.pick(10, &[], 0), None);
        assert_eq!(q.pick(11, &[], 0), Some(1));
        s.state = TaskState::Complete;
        q.set_status(s);
        assert_eq!(q.pick(11, &[], 0), None);
        assert_eq!(q.open_count(), 0);
    }

    /// Everything a queue holds, with pools that wait for nothing left out (`set_status` keeps
    /// an empty set for a pool it has seen; a bulk load has none).
    #[allow(clippy::type_complexity)]
    fn contents_of(
        q: &ProjectQueue,
    ) -> (
        Vec<(Option<String>, Vec<Order>)>,
        Vec<TaskStatus>,
        Vec<TaskStatus>,
    ) {
        let mut pools: Vec<_> = q
            .pools
            .iter()
            .filter(|(_, set)| !set.is_empty())
            .map(|(pool, set)| (pool.clone(), set.iter().copied().collect()))
            .collect();
        pools.sort();
        let mut open: Vec<_> = q.slots.values().map(|s| s.status.clone()).collect();
        open.sort_by_key(|s| s.task_id);
        let qa = q.qa.waiting.values().cloned().collect();
        (pools, open, qa)
    }

    fn any_project_status() -> impl Strategy<Value = TaskStatus> {
        (
            (0u64..40, 0u8..4, 0u32..4, -2i64..3),
            (
                0usize..3,
                prop::collection::vec(1u64..5, 0..3),
                any::<bool>(),
            ),
        )
            .prop_map(|((task, state, reviews, priority), (pool, done, skip))| {
                let mut s = status(task, [None, Some("a"), Some("b")][pool], reviews, priority);
                s.state = [
                    TaskState::Open,
                    TaskState::Open,
                    TaskState::InQa,
                    TaskState::Complete,
                ][state as usize];
                s.qa = (s.state == TaskState::InQa).then_some(crate::domain::QaKind::Qa);
                s.done_by = done;
                s.skipped_by = if skip { vec![4] } else { vec![] };
                s
            })
    }

    proptest::proptest! {
        /// The start-up's bulk load holds what a status at a time builds, in whatever order
        /// and with whatever repeats the statuses come.
        #[test]
        fn a_bulk_load_builds_what_set_status_builds(
            mut statuses in prop::collection::vec(any_project_status(), 0..80),
            sorted in any::<bool>(),
        ) {
            if sorted {
                statuses.sort_by_key(|s| s.task_id);
            }
            let mut one_by_one = ProjectQueue::default();
            for s in &statuses {
                one_by_one.set_status(s.clone());
            }
            let loaded = ProjectQueue::load(statuses.len(), statuses.into_iter());
            proptest::prop_assert_eq!(contents_of(&loaded), contents_of(&one_by_one));
            for expert in 1..5 {
                for skills in [vec![], vec!["a".to_owned()], vec!["a".to_owned(), "b".to_owned()]] {
                    proptest::prop_assert_eq!(
                        loaded.eligible(expert, &skills, 0, 100),
                        one_by_one.eligible(expert, &skills, 0, 100)
                    );
                }
            }
        }
    }

    /// A project whose statuses come in two runs is loaded whole.
    #[test]
    fn a_project_listed_twice_is_loaded_whole() {
        let mut other = status(9, None, 1, 0);
        other.project_id = 2;
        let built = Built::new(
            vec![status(1, None, 1, 0), other, status(2, Some("a"), 1, 0)],
            vec![],
        );
        assert_eq!(built.projects[&1].open_tasks(), vec![1, 2]);
        assert_eq!(built.projects[&1].pick(5, &[], 0), Some(1));
        assert_eq!(built.projects[&1].pick(5, &["a".into()], 0), Some(1));
        assert_eq!(
            built.projects[&1].eligible(5, &["a".into()], 0, 9),
            vec![1, 2]
        );
        assert_eq!(built.projects[&2].open_count(), 1);
    }

    #[test]
    fn lookups_wait_for_the_start_up_load() {
        let queue = Arc::new(Queue::loading());
        assert!(!queue.is_loaded());
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = queue.clone();
        let handle = std::thread::spawn(move || {
            let q = waiter.project(1);
            let open = Queue::lock(&q).open_count();
            tx.send(open).unwrap();
        });
        assert!(
            rx.recv_timeout(std::time::Duration::from_millis(100))
                .is_err(),
            "no lookup before the load"
        );
        queue.load(vec![status(1, None, 1, 0), status(2, None, 1, 0)], vec![]);
        assert_eq!(rx.recv().unwrap(), 2, "the lookup sees the loaded tasks");
        handle.join().unwrap();
        assert!(queue.is_loaded());
    }

    #[tokio::test]
    async fn async_callers_wait_for_the_load_too() {
        let queue = Arc::new(Queue::loading());
        let waiter = queue.clone();
        let waiting = tokio::spawn(async move { waiter.loaded().await });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "not before the load");
        queue.load(vec![status(1, None, 1, 0)], vec![]);
        waiting.await.unwrap();
        Queue::default().loaded().await; // a loaded queue never waits
    }
}
