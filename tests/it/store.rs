//! Conformance suite for the `Store` trait. Every implementation must pass it; today that is the
//! sled store, opened on a temporary folder.

use assay::domain::*;
use assay::store::{SledStore, Store, StoreError, SubmissionWrite};
use serde_json::json;

fn open(dir: &std::path::Path) -> Box<dyn Store> {
    // Reopening in the same process: sled's background flusher of the dropped handle may hold
    // the file lock for a moment longer, so give it a few tries.
    let mut last = None;
    for _ in 0..50 {
        match SledStore::open(dir, true) {
            Ok(store) => return Box::new(store),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("cannot open the store: {last:?}");
}

fn user(name: &str) -> User {
    User {
        id: 0,
        username: name.into(),
        password_hash: "x".into(),
        role: GlobalRole::Member,
        skills: vec![],
        hourly_rate: None,
        active: true,
        token_generation: 0,
        created_at: 1,
    }
}

fn project(name: &str) -> Project {
    Project {
        id: 0,
        name: name.into(),
        instructions: String::new(),
        rubric: "r".into(),
        router: "q".into(),
        reviews_per_task: 2,
        lease_seconds: 60,
        estimate_minutes: None,
        qa_rate: 0.0,
        qa_blind: true,
        created_at: 1,
        updated_at: 1,
    }
}

/// A store in `dir` with project "p" and one imported task.
fn store_with_task(
    dir: &std::path::Path,
    ext: Option<&str>,
    reviews: u32,
) -> (Box<dyn Store>, Project, TaskStatus) {
    let s = open(dir);
    let p = s.create_project(project("p")).unwrap();
    let t = s
        .import_batch(p.id, vec![new_task(ext, reviews)])
        .unwrap()
        .created
        .remove(0);
    (s, p, t)
}

/// One more task of one review in project `p`.
fn another_task(s: &dyn Store, p: Id) -> TaskStatus {
    s.import_batch(p, vec![new_task(None, 1)])
        .unwrap()
        .created
        .remove(0)
}

fn new_task(ext: Option<&str>, reviews: u32) -> NewTask {
    NewTask {
        external_id: ext.map(str::to_owned),
        data: serde_json::value::to_raw_value(&json!({"prompt": ext})).unwrap(),
        meta: json!({}),
        gold: None,
        routing: Routing {
            reviews,
            ..Default::default()
        },
    }
}

fn assignment(store: &dyn Store, task: &TaskStatus, expert: Id, expires_at: i64) -> Assignment {
    Assignment {
        id: store.new_id().unwrap(),
        task_id: task.task_id,
        project_id: task.project_id,
        expert_id: expert,
        status: AssignmentStatus::Active,
        served_at: 0,
        expires_at,
        last_seen_at: 0,
        active_seconds: 0.0,
        fence: 7,
        rubric: "r".into(),
        rubric_version: "v1".into(),
        router: "q".into(),
        router_version: "v1".into(),
        submission_id: None,
        reason: None,
    }
}

fn submission(a: &Assignment) -> Submission {
    Submission {
        id: 0,
        task_id: a.task_id,
        project_id: a.project_id,
        assignment_id: a.id,
        expert_id: a.expert_id,
        answer: json!({"ok": true}),
        scores: json!({}),
        rubric: "r".into(),
        rubric_version: "v1".into(),
        router: "q".into(),
        router_version: "v1".into(),
        served_at: 0,
        submitted_at: 1,
        active_seconds: 1.0,
        qa: None,
    }
}

#[test]
fn users_projects_and_members() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    assert_eq!(s.user_count().unwrap(), 0);
    let a = s.create_user(user("ann")).unwrap();
    let b = s.create_user(user("bob")).unwrap();
    assert!(b.id > a.id, "ids increase");
    assert!(matches!(
        s.create_user(user("ann")),
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(s.user_by_name("bob").unwrap().unwrap().id, b.id);
    assert!(s.user_by_name("nobody").unwrap().is_none());
    let mut a2 = a.clone();
    a2.token_generation = 3;
    s.update_user(&a2).unwrap();
    assert_eq!(s.user(a.id).unwrap().unwrap().token_generation, 3);
    assert!(matches!(
        s.update_user(&User {
            id: 999_999_999,
            ..a2
        }),
        Err(StoreError::Missing(_))
    ));
    assert_eq!(s.users().unwrap().len(), 2);
    assert_eq!(
        s.user_count().unwrap(),
        1,
        "user_count says 'some', it never scans"
    );

    let p = s.create_project(project("p")).unwrap();
    let q = s.create_project(project("q")).unwrap();
    s.set_member(p.id, a.id, Some(ProjectRole::Lead)).unwrap();
    s.set_member(q.id, a.id, Some(ProjectRole::Expert)).unwrap();
    s.set_member(p.id, b.id, Some(ProjectRole::Expert)).unwrap();
    assert_eq!(s.member_role(p.id, a.id).unwrap(), Some(ProjectRole::Lead));
    assert_eq!(s.members(p.id).unwrap().len(), 2);
    assert_eq!(
        s.memberships(a.id).unwrap(),
        vec![(p.id, ProjectRole::Lead), (q.id, ProjectRole::Expert)]
    );
    s.set_member(p.id, b.id, None).unwrap();
    assert_eq!(s.member_role(p.id, b.id).unwrap(), None);
    assert!(s.memberships(b.id).unwrap().is_empty());
}

#[test]
fn import_counts_and_skips_known_external_ids() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let p = s.create_project(project("p")).unwrap();
    let other = s.create_project(project("o")).unwrap();
    let first = s
        .import_batch(
            p.id,
            vec![
                new_task(Some("a"), 2),
                new_task(Some("b"), 2),
                new_task(None, 1),
            ],
        )
        .unwrap();
    assert_eq!((first.created.len(), first.duplicates), (3, 0));
    let again = s
        .import_batch(p.id, vec![new_task(Some("a"), 2), new_task(Some("c"), 2)])
        .unwrap();
    assert_eq!((again.created.len(), again.duplicates), (1, 1));
    // External ids are per project.
    assert_eq!(
        s.import_batch(other.id, vec![new_task(Some("a"), 1)])
            .unwrap()
            .created
            .len(),
        1
    );
    let counts = s.project_counts(p.id).unwrap();
    assert_eq!((counts.tasks, counts.open, counts.complete), (4, 4, 0));
    let page = s.tasks_page(p.id, None, 2).unwrap();
    assert_eq!(page.len(), 2);
    let rest = s.tasks_page(p.id, Some(page[1].id), 10).unwrap();
    assert_eq!(rest.len(), 2);
    assert_eq!(rest[1].external_id.as_deref(), Some("c"));
    assert_eq!(s.open_tasks().unwrap().len(), 5);
    let status = s.task_status(page[0].id).unwrap().unwrap();
    assert_eq!((status.state, status.reviews), (TaskState::Open, 2));
}

fn many(prefix: &str, range: std::ops::Range<usize>) -> Vec<NewTask> {
    range
        .map(|i| new_task(Some(&format!("{prefix}{i}")), 1))
        .collect()
}

fn segment_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir.join("segments"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// A large import goes to a segment file; every read, change, count and duplicate check treats
/// its tasks as any other, also after a reopen.
#[test]
fn a_large_import_reads_and_changes_like_a_small_one() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let p = s.create_project(project("p")).unwrap();
    let small = s.import_batch(p.id, many("s", 0..3)).unwrap();
    assert_eq!(
        segment_files(dir.path()),
        0,
        "a small import stays in the trees"
    );
    // A large batch whose ids repeat a small import's, and one another's: both are skipped.
    let mut batch = many("k", 0..300);
    batch.push(new_task(Some("s1"), 1));
    batch.push(new_task(Some("k7"), 1));
    let large = s.import_batch(p.id, batch).unwrap();
    assert_eq!((large.created.len(), large.duplicates), (300, 2));
    assert_eq!(segment_files(dir.path()), 1);
    // Repeats of its ids, in a small batch and in a large one, are skipped too.
    let again = s.import_batch(p.id, many("k", 295..305)).unwrap();
    assert_eq!((again.created.len(), again.duplicates), (5, 5));
    let again = s.import_batch(p.id, many("k", 0..400)).unwrap();
    assert_eq!((again.created.len(), again.duplicates), (95, 305));
    assert_eq!(segment_files(dir.path()), 2);

    let counts = s.project_counts(p.id).unwrap();
    assert_eq!((counts.tasks, counts.open), (403, 403));
    let first = &large.created[0];
    let task = s.task(first.task_id).unwrap().unwrap();
    assert_eq!(task.external_id.as_deref(), Some("k0"));
    assert_eq!(task.data, json!({"prompt": "k0"}));
    assert!(s.task_json(first.task_id).unwrap().is_some());
    assert_eq!(s.task_status(first.task_id).unwrap().as_ref(), Some(first));
    // Pages run through the trees' tasks and the segments' in id order.
    let mut listed = Vec::new();
    let mut after = None;
    loop {
        let page = s.tasks_page(p.id, after, 70).unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        listed.extend(page.into_iter().map(|t| t.id));
    }
    let mut expected: Vec<Id> = small.created.iter().map(|t| t.task_id).collect();
    expected.extend(large.created.iter().map(|t| t.task_id));
    expected.extend(again.created.iter().map(|t| t.task_id));
    assert_eq!(listed.len(), 403);
    assert!(listed.windows(2).all(|w| w[0] < w[1]));
    assert!(expected.iter().all(|id| listed.contains(id)));

    // A segment task's first change: counted from its first status, the index follows.
    let a = assignment(s.as_ref(), first, 1, 10);
    s.put_assignment(&a).unwrap();
    let mut done = first.clone();
    done.done_by.push(1);
    done.state = TaskState::Complete;
    s.commit_submission(write(&a, &done)).unwrap();
    let counts = s.project_counts(p.id).unwrap();
    assert_eq!((counts.open, counts.complete), (402, 1));
    assert_eq!(
        s.task_status(first.task_id).unwrap().unwrap().state,
        TaskState::Complete
    );
    let mut moved = large.created[1].clone();
    moved.priority = 9;
    s.put_task_statuses(&[moved.clone()]).unwrap();
    assert_eq!(s.project_counts(p.id).unwrap().open, 402);

    let open_before: Vec<TaskStatus> = s.open_tasks().unwrap();
    assert_eq!(open_before.len(), 402);
    drop(s);
    let s = open(dir.path());
    let open_after = s.open_tasks().unwrap();
    assert_eq!(
        open_after.len(),
        402,
        "the completed task stays out of the index"
    );
    assert!(!open_after.iter().any(|t| t.task_id == first.task_id));
    let reread = open_after
        .iter()
        .find(|t| t.task_id == moved.task_id)
        .unwrap();
    assert_eq!(
        reread.priority, 9,
        "a changed status wins over the segment's first"
    );
    assert_eq!(
        s.task(first.task_id)
            .unwrap()
            .unwrap()
            .external_id
            .as_deref(),
        Some("k0")
    );
    let again = s.import_batch(p.id, many("k", 0..300)).unwrap();
    assert_eq!((again.created.len(), again.duplicates), (0, 300));
}

/// An abandoned large import leaves no file; a file no published import names is removed when
/// the store opens; a damaged segment stops the open with an error naming it.
#[test]
fn segments_of_unfinished_imports_go_and_damaged_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let p = s.create_project(project("p")).unwrap();
    let import = s.begin_import(p.id).unwrap();
    let written = s.import_tasks(p.id, import, many("a", 0..300)).unwrap();
    assert_eq!(written.created.len(), 300);
    assert_eq!(
        segment_files(dir.path()),
        2,
        "the tasks and the statuses being written"
    );
    assert_eq!(s.abandon_import(import).unwrap(), 300);
    assert_eq!(segment_files(dir.path()), 0);
    assert!(s.task(written.created[0].task_id).unwrap().is_none());
    assert_eq!(s.project_counts(p.id).unwrap().tasks, 0);

    // Killed before publishing: the file is there at the next open, and goes.
    let import = s.begin_import(p.id).unwrap();
    s.import_tasks(p.id, import, many("b", 0..300)).unwrap();
    drop(s);
    let s = open(dir.path());
    assert_eq!(segment_files(dir.path()), 0);
    s.clean_imports().unwrap();
    assert_eq!(s.project_counts(p.id).unwrap().tasks, 0);
    assert_eq!(
        s.import_batch(p.id, many("b", 0..300))
            .unwrap()
            .created
            .len(),
        300
    );
    drop(s);

    let file = std::fs::read_dir(dir.path().join("segments"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&file).unwrap();
    let footer = bytes.len() - 20;
    bytes[footer] ^= 0xff;
    std::fs::write(&file, &bytes).unwrap();
    // The dropped handle's flusher may hold the lock a moment longer: wait for it.
    let mut opened = SledStore::open(dir.path(), true);
    for _ in 0..50 {
        match &opened {
            Err(StoreError::Backend(m)) if m.contains("in use") => {
                std::thread::sleep(std::time::Duration::from_millis(20));
                opened = SledStore::open(dir.path(), true);
            }
            _ => break,
        }
    }
    let err = opened.err().expect("a damaged segment is refused");
    assert!(
        matches!(&err, StoreError::Corrupt { message, .. } if message.contains("segments")),
        "{err:?}"
    );
}

#[test]
fn leases_expire_by_index_and_end_once() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _, t) = store_with_task(dir.path(), None, 2);
    let early = assignment(s.as_ref(), &t, 1, 100);
    let late = assignment(s.as_ref(), &t, 2, 300);
    s.put_assignment(&late).unwrap();
    s.put_assignment(&early).unwrap();
    assert_eq!(s.active_assignments().unwrap().len(), 2);
    let due: Vec<Id> = s
        .expired_assignments(200, 10)
        .unwrap()
        .iter()
        .map(|a| a.id)
        .collect();
    assert_eq!(due, vec![early.id]);
    // Extending it is seen at once.
    let mut extended = early.clone();
    extended.expires_at = 500;
    s.put_assignment(&extended).unwrap();
    assert!(s.expired_assignments(200, 10).unwrap().is_empty());
    let due: Vec<Id> = s
        .expired_assignments(400, 10)
        .unwrap()
        .iter()
        .map(|a| a.id)
        .collect();
    assert_eq!(due, vec![late.id]);

    // Ending a lease (a skip that also updates the task) happens once.
    let mut skipped = late.clone();
    skipped.status = AssignmentStatus::Skipped;
    let mut status = t.clone();
    status.skipped_by.push(2);
    s.end_assignment(&skipped, Some(&status)).unwrap();
    assert!(matches!(
        s.end_assignment(&skipped, None),
        Err(StoreError::AssignmentEnded(_))
    ));
    assert_eq!(
        s.task_status(t.task_id).unwrap().unwrap().skipped_by,
        vec![2]
    );
    assert_eq!(s.active_assignments().unwrap().len(), 1);
    assert!(s
        .expired_assignments(i64::MAX, 10)
        .unwrap()
        .iter()
        .all(|a| a.id == early.id));
}

#[test]
fn submissions_commit_atomically_once() {
    let dir = tempfile::tempdir().unwrap();
    let (s, p, t) = store_with_task(dir.path(), None, 1);
    let a = assignment(s.as_ref(), &t, 9, 1000);
    s.put_assignment(&a).unwrap();
    let mut done = t.clone();
    done.done_by.push(9);
    done.state = TaskState::Complete;
    let stored = s.commit_submission(write(&a, &done)).unwrap();
    assert!(stored.id > 0);
    // A second commit for the same assignment is refused and points at the first.
    match s.commit_submission(write(&a, &done)) {
        Err(StoreError::AssignmentEnded(cur)) => assert_eq!(cur.submission_id, Some(stored.id)),
        other => panic!("expected AssignmentEnded, got {other:?}"),
    }
    assert_eq!(
        s.submission(stored.project_id, stored.id).unwrap().unwrap(),
        stored
    );
    assert_eq!(
        s.submissions_for_task(t.task_id).unwrap(),
        vec![stored.clone()]
    );
    assert_eq!(s.submissions_page(p.id, None, 10).unwrap().len(), 1);
    assert!(s
        .submissions_page(p.id, Some(stored.id), 10)
        .unwrap()
        .is_empty());
    let counts = s.project_counts(p.id).unwrap();
    assert_eq!(
        (counts.open, counts.complete, counts.submissions),
        (0, 1, 1)
    );
    assert!(
        s.open_tasks().unwrap().is_empty(),
        "a complete task leaves the queue index"
    );
    assert!(s.active_assignments().unwrap().is_empty());
    assert_eq!(
        s.assignment(a.id).unwrap().unwrap().status,
        AssignmentStatus::Submitted
    );

    // A submission whose lease record was lost (crash) commits too.
    let t2 = another_task(s.as_ref(), p.id);
    let lost = assignment(s.as_ref(), &t2, 9, 1000);
    let mut done2 = t2.clone();
    done2.done_by.push(9);
    s.commit_submission(write(&lost, &done2)).unwrap();
    assert_eq!(s.project_counts(p.id).unwrap().submissions, 2);
}

fn write(a: &Assignment, status: &TaskStatus) -> SubmissionWrite {
    SubmissionWrite {
        submission: submission(a),
        assignment: a.clone(),
        status: status.clone(),
        audit: AuditEvent {
            at: 1,
            actor: Some(a.expert_id),
            action: AuditAction::TaskSubmit,
            object: format!("task:{}", a.task_id),
            detail: json!({"assignment": a.id}),
        },
        // The store reads it (the committer passes what its index holds).
        prior_state: None,
    }
}

#[test]
fn a_batch_commits_whole_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let (s, p, t) = store_with_task(dir.path(), None, 2);
    let t2 = another_task(s.as_ref(), p.id);
    let a1 = assignment(s.as_ref(), &t, 7, 1000);
    let a2 = assignment(s.as_ref(), &t, 8, 1000);
    let a3 = assignment(s.as_ref(), &t2, 7, 1000);
    for a in [&a1, &a2, &a3] {
        s.put_assignment(a).unwrap();
    }
    // Two reviews of one task build on each other; the third member's lease was released
    // behind the batch's back.
    let mut after1 = t.clone();
    after1.done_by.push(7);
    let mut after2 = after1.clone();
    after2.done_by.push(8);
    after2.state = TaskState::Complete;
    let mut done3 = t2.clone();
    done3.done_by.push(7);
    done3.state = TaskState::Complete;
    let mut released = a3.clone();
    released.status = AssignmentStatus::Released;
    s.end_assignment(&released, None).unwrap();
    let batch = vec![write(&a1, &after1), write(&a2, &after2), write(&a3, &done3)];
    match s.commit_submissions(batch) {
        Err(StoreError::AssignmentEnded(cur)) => assert_eq!(cur.id, a3.id),
        other => panic!("expected AssignmentEnded, got {other:?}"),
    }
    assert!(
        s.submissions_for_task(t.task_id).unwrap().is_empty(),
        "nothing of the batch is written"
    );
    assert_eq!(s.project_counts(p.id).unwrap().submissions, 0);
    assert_eq!(
        s.assignment(a1.id).unwrap().unwrap().status,
        AssignmentStatus::Active
    );
    assert_eq!(
        s.task_status(t.task_id).unwrap().unwrap().done_by,
        Vec::<u64>::new()
    );

    // Without the bad member the batch commits whole, one audit event per member.
    let stored = s
        .commit_submissions(vec![write(&a1, &after1), write(&a2, &after2)])
        .unwrap();
    assert_eq!(stored.len(), 2);
    assert!(stored[0].id > 0 && stored[1].id > stored[0].id);
    let status = s.task_status(t.task_id).unwrap().unwrap();
    assert_eq!(
        (status.done_by, status.state),
        (vec![7, 8], TaskState::Complete)
    );
    let counts = s.project_counts(p.id).unwrap();
    assert_eq!(
        (counts.open, counts.complete, counts.submissions),
        (1, 1, 2)
    );
    let submits: Vec<_> = s
        .recent_audit(10)
        .unwrap()
        .into_iter()
        .filter(|e| e.action == AuditAction::TaskSubmit)
        .map(|e| e.detail["submission"].as_u64())
        .collect();
    assert_eq!(submits.len(), 2);
    assert!(submits.contains(&Some(stored[0].id)) && submits.contains(&Some(stored[1].id)));
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A two-member batch on two tasks of project "p" (the second member completes its task),
/// committed in `db` and durable through the submit log, with the database as it was before
/// the batch copied to `before`.
struct TwoMemberBatch {
    db: std::path::PathBuf,
    before: std::path::PathBuf,
    p: Project,
    t: TaskStatus,
    t2: TaskStatus,
    a1: Assignment,
    a2: Assignment,
    done2: TaskStatus,
    stored: Vec<Submission>,
}

/// `lease_lost`: the second lease's record is never stored (lost in a crash; its token vouched
/// for it). `sled_too`: sled is flushed after the batch, so its files hold all of it.
fn two_member_batch(dir: &std::path::Path, lease_lost: bool, sled_too: bool) -> TwoMemberBatch {
    let db = dir.join("db");
    let before = dir.join("before");
    let (p, t, t2, a1, a2) = {
        let (s, p, t) = store_with_task(&db, None, 2);
        let t2 = another_task(s.as_ref(), p.id);
        let a1 = assignment(s.as_ref(), &t, 7, 1000);
        let a2 = assignment(s.as_ref(), &t2, 8, 1000);
        s.put_assignment(&a1).unwrap();
        if !lease_lost {
            s.put_assignment(&a2).unwrap();
        }
        s.flush().unwrap();
        (p, t, t2, a1, a2)
    };
    // The database as it was before the batch, durable.
    copy_dir(&db, &before);
    let mut after1 = t.clone();
    after1.done_by.push(7);
    let mut done2 = t2.clone();
    done2.done_by.push(8);
    done2.state = TaskState::Complete;
    let s = open(&db);
    let stored = s
        .commit_submissions(vec![write(&a1, &after1), write(&a2, &done2)])
        .unwrap();
    // Durable through the log only: the shared flush is never called.
    s.sync_submissions(&|| panic!("the log alone makes a batch durable"))
        .unwrap();
    if sled_too {
        s.flush().unwrap();
    }
    TwoMemberBatch {
        db,
        before,
        p,
        t,
        t2,
        a1,
        a2,
        done2,
        stored,
    }
}

impl TwoMemberBatch {
    /// `s` holds the batch whole and once, and its project counts (open, complete,
    /// submissions), hourly submissions and submit audit events are as given.
    fn check(&self, s: &dyn Store, (open, complete, submissions): (u64, u64, u64), what: &str) {
        let stored = &self.stored;
        for (task, sub) in [(&self.t, &stored[0]), (&self.t2, &stored[1])] {
            let of_task = s.submissions_for_task(task.task_id).unwrap();
            assert_eq!(of_task, vec![sub.clone()], "{what}");
        }
        for (a, sub) in [(&self.a1, &stored[0]), (&self.a2, &stored[1])] {
            let a = s.assignment(a.id).unwrap().unwrap();
            assert_eq!(a.status, AssignmentStatus::Submitted, "{what}");
            assert_eq!(a.submission_id, Some(sub.id), "{what}");
        }
        assert!(s.active_assignments().unwrap().is_empty(), "{what}");
        let status = s.task_status(self.t2.task_id).unwrap().unwrap();
        assert_eq!(status, self.done2, "{what}");
        let counts = s.project_counts(self.p.id).unwrap();
        assert_eq!(
            (counts.open, counts.complete, counts.submissions),
            (open, complete, submissions),
            "{what}"
        );
        let hourly = s.submissions_per_hour(self.p.id, 0, 1).unwrap();
        assert_eq!(hourly, vec![submissions], "{what}");
        let submits = s
            .recent_audit(10)
            .unwrap()
            .into_iter()
            .filter(|e| e.action == AuditAction::TaskSubmit)
            .count();
        assert_eq!(submits as u64, submissions, "{what}");
    }
}

/// A batch acknowledged through the submit log, whose writes never reached sled's disk, is
/// applied again when the store opens: whole, once, with the ids it was answered with.
#[test]
fn a_batch_only_the_submit_log_holds_is_applied_again_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let b = two_member_batch(dir.path(), true, false);
    let before = &b.before;
    // Sled as before the batch, with the log written since: the batch is applied again.
    std::fs::copy(b.db.join("submit.log"), before.join("submit.log")).unwrap();
    let t3 = {
        let s = open(before);
        b.check(s.as_ref(), (1, 1, 2), "replayed");
        let t3 = another_task(s.as_ref(), b.p.id);
        s.flush().unwrap();
        t3
    };
    let again = dir.path().join("again");
    copy_dir(before, &again);
    // Opened again: nothing is applied twice. A batch after the replay is numbered after it,
    // so it too is applied when sled loses it.
    let s = open(before);
    b.check(s.as_ref(), (2, 1, 2), "opened again");
    let a3 = assignment(s.as_ref(), &t3, 7, 1000);
    let mut done3 = t3.clone();
    done3.done_by.push(7);
    done3.state = TaskState::Complete;
    let third = s.commit_submission(write(&a3, &done3)).unwrap();
    s.sync_submissions(&|| panic!("the log alone makes a batch durable"))
        .unwrap();
    drop(s);
    std::fs::copy(before.join("submit.log"), again.join("submit.log")).unwrap();
    let s = open(&again);
    assert_eq!(
        s.submission(third.project_id, third.id).unwrap().as_ref(),
        Some(&third)
    );
    b.check(s.as_ref(), (1, 2, 3), "a later batch replayed");
}

/// Sets `tree`'s entry at `key` in `to` to what it is in `from` (absent there: removed).
fn revert(from: &sled::Db, to: &sled::Db, tree: &str, key: &[u8]) {
    let (from, to) = (from.open_tree(tree).unwrap(), to.open_tree(tree).unwrap());
    match from.get(key).unwrap() {
        Some(v) => to.insert(key, v).unwrap(),
        None => to.remove(key).unwrap(),
    };
}

/// A batch is written without a transaction, its number last, so a crash may leave sled with
/// any part of it: opening completes it from the submit log (or, when the log lost it, from
/// the redo record sled wrote first), adding each counter change once.
#[test]
fn a_batch_sled_kept_in_part_is_completed_once_at_open() {
    use assay::store::keys;
    let dir = tempfile::tempdir().unwrap();
    let b = two_member_batch(dir.path(), false, true);
    let (p, t2, second) = (b.p.clone(), b.t2.clone(), b.stored[1].id);
    let project_counter = move |name: &str| keys::with_suffix(p.id, name.as_bytes());
    // (what sled kept, the edit that leaves only that, whether the submit log lost the batch)
    type Edit = Box<dyn Fn(&sled::Db, &sled::Db)>;
    let first_member_only = move |from: &sled::Db, to: &sled::Db| {
        revert(
            from,
            to,
            "submissions_project_id",
            &keys::pair(p.id, second),
        );
        let by_task = keys::pair(t2.task_id, second);
        revert(from, to, "submissions_task_id", &by_task);
        revert(from, to, "taskstatus_id", &keys::id(t2.task_id));
        let queued = keys::pair(p.id, t2.task_id);
        revert(from, to, "queue_project_task", &queued);
        for name in [
            "open",
            "complete",
            "submissions",
            "submitted_hour_000000000000",
        ] {
            revert(from, to, "counters_project_name", &project_counter(name));
        }
        revert(from, to, "meta", b"submit_log_seq");
    };
    let cuts: Vec<(&str, Edit, bool)> = vec![
        (
            "every record and some counters, not the rest nor the batch's number",
            Box::new(move |from, to| {
                let submissions = project_counter("submissions");
                revert(from, to, "counters_project_name", &submissions);
                revert(from, to, "meta", b"submit_log_seq");
            }),
            false,
        ),
        (
            "the first member and a part of the second, no counter",
            Box::new(first_member_only),
            false,
        ),
        (
            // A power cut before the log's record was synced: the redo record sled wrote
            // before the batch completes it.
            "the first member and a part of the second, and the log lost the batch",
            Box::new(first_member_only),
            true,
        ),
    ];
    for (i, (kept, edit, log_lost)) in cuts.iter().enumerate() {
        let cut = dir.path().join(format!("cut{i}"));
        copy_dir(&b.db, &cut);
        if *log_lost {
            std::fs::copy(b.before.join("submit.log"), cut.join("submit.log")).unwrap();
        }
        {
            let (from, to) = (raw_db(&b.before), raw_db(&cut));
            edit(&from, &to);
            to.flush().unwrap();
        }
        for opening in ["first", "second"] {
            let s = open(&cut);
            b.check(
                s.as_ref(),
                (1, 1, 2),
                &format!("sled kept {kept}; {opening} open"),
            );
        }
    }
}

#[test]
fn plugin_versions_audit_durability_and_schema_guard() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(dir.path());
        let v = PluginVersion {
            hash: "h1".into(),
            kind: PluginKind::Rubric,
            name: "r".into(),
            source: "one".into(),
            first_seen_at: 1,
        };
        s.put_plugin_version(&v).unwrap();
        s.put_plugin_version(&PluginVersion {
            source: "other".into(),
            ..v.clone()
        })
        .unwrap();
        assert_eq!(
            s.plugin_version("h1").unwrap().unwrap().source,
            "one",
            "a hash names one source forever"
        );
        for (at, action) in [
            (5, AuditAction::UserUpdate),
            (1, AuditAction::UserCreate),
            (9, AuditAction::Export),
        ] {
            s.append_audit(&AuditEvent {
                at,
                actor: None,
                action,
                object: "x".into(),
                detail: json!(null),
            })
            .unwrap();
        }
        let recent: Vec<AuditAction> = s
            .recent_audit(2)
            .unwrap()
            .into_iter()
            .map(|e| e.action)
            .collect();
        assert_eq!(recent, vec![AuditAction::Export, AuditAction::UserUpdate]);
        s.create_user(user("kept")).unwrap();
        s.flush().unwrap();
    }
    // Reopened: data is there.
    {
        let s = open(dir.path());
        assert!(s.user_by_name("kept").unwrap().is_some());
    }
    // A database from a newer version is refused.
    {
        let db = (0..50)
            .find_map(|_| {
                sled::open(dir.path()).ok().or_else(|| {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    None
                })
            })
            .unwrap();
        db.open_tree("meta")
            .unwrap()
            .insert(b"schema_version", &99u32.to_be_bytes())
            .unwrap();
        db.flush().unwrap();
    }
    let mut reopened = SledStore::open(dir.path(), true);
    for _ in 0..50 {
        if !matches!(&reopened, Err(StoreError::Backend(_))) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        reopened = SledStore::open(dir.path(), true);
    }
    match reopened {
        Err(StoreError::TooNew { found: 99, .. }) => {}
        Err(other) => panic!("expected TooNew, got {other}"),
        Ok(_) => panic!("expected TooNew, got a store"),
    }
}

/// Writes raw bytes the way an older binary would have, reopening with retries (see `open`).
fn raw_db(dir: &std::path::Path) -> sled::Db {
    for _ in 0..50 {
        if let Ok(db) = sled::open(dir) {
            return db;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("cannot open the database raw");
}

#[test]
fn a_version_1_database_is_upgraded_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let task = {
        let (s, _, t) = store_with_task(dir.path(), Some("old"), 2);
        s.flush().unwrap();
        t
    };
    {
        // Version 1 kept the open-task index empty.
        let db = raw_db(dir.path());
        let queue = db.open_tree("queue_project_task").unwrap();
        for key in queue.iter().keys() {
            queue.insert(key.unwrap(), &[]).unwrap();
        }
        db.open_tree("meta")
            .unwrap()
            .insert(b"schema_version", &1u32.to_be_bytes())
            .unwrap();
        db.flush().unwrap();
    }
    let s = open(dir.path());
    assert_eq!(s.open_tasks().unwrap(), vec![task]);
}

#[test]
fn a_version_2_database_is_upgraded_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut task = {
        let (s, _, t) = store_with_task(dir.path(), Some("old"), 3);
        s.flush().unwrap();
        t
    };
    task.pool = Some("cardiology".into());
    task.done_by = vec![41, 42];
    task.router_version = Some("ab".repeat(32));
    {
        // Version 2 kept each open task's status in the index as JSON.
        let db = raw_db(dir.path());
        let queue = db.open_tree("queue_project_task").unwrap();
        for key in queue.iter().keys() {
            queue
                .insert(key.unwrap(), serde_json::to_vec(&task).unwrap())
                .unwrap();
        }
        db.open_tree("meta")
            .unwrap()
            .insert(b"schema_version", &2u32.to_be_bytes())
            .unwrap();
        db.flush().unwrap();
    }
    let s = open(dir.path());
    assert_eq!(s.open_tasks().unwrap(), vec![task.clone()]);
    drop(s);
    // Stored as version 3 now: a second open reads it without upgrading again.
    let s = open(dir.path());
    assert_eq!(s.open_tasks().unwrap(), vec![task]);
}

#[test]
fn a_version_3_database_is_upgraded_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let lease = {
        let (s, _, t) = store_with_task(dir.path(), None, 1);
        let a = assignment(s.as_ref(), &t, 7, 5_000);
        s.put_assignment(&a).unwrap();
        s.flush().unwrap();
        a
    };
    {
        // Version 3 kept the record in `assignments_id` and indexed active leases by expiry
        // time ++ assignment id.
        let db = raw_db(dir.path());
        db.drop_tree("leases_assignment").unwrap();
        db.open_tree("assignments_id")
            .unwrap()
            .insert(lease.id.to_be_bytes(), serde_json::to_vec(&lease).unwrap())
            .unwrap();
        let mut key = ((lease.expires_at as u64) ^ (1 << 63))
            .to_be_bytes()
            .to_vec();
        key.extend_from_slice(&lease.id.to_be_bytes());
        db.open_tree("leases_expiry_assignment")
            .unwrap()
            .insert(key, &[])
            .unwrap();
        db.open_tree("meta")
            .unwrap()
            .insert(b"schema_version", &3u32.to_be_bytes())
            .unwrap();
        db.flush().unwrap();
    }
    let s = open(dir.path());
    assert_eq!(s.active_assignments().unwrap(), vec![lease.clone()]);
    assert_eq!(
        s.expired_assignments(lease.expires_at, 10).unwrap(),
        vec![lease]
    );
    drop(s);
    let db = raw_db(dir.path());
    assert!(
        !db.tree_names()
            .iter()
            .any(|n| n.as_ref() == b"leases_expiry_assignment"),
        "the old index is dropped"
    );
}

#[test]
fn a_lease_index_entry_without_a_live_record_is_ignored_and_dropped_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _, t) = store_with_task(dir.path(), None, 1);
    let live = assignment(s.as_ref(), &t, 1, 100);
    s.put_assignment(&live).unwrap();
    s.flush().unwrap();
    drop(s);
    {
        // A crash between the index write and the record write of a hand-out leaves this.
        let db = raw_db(dir.path());
        db.open_tree("leases_assignment")
            .unwrap()
            .insert(987_654u64.to_be_bytes(), &[])
            .unwrap();
        db.flush().unwrap();
    }
    let s = open(dir.path());
    assert_eq!(
        s.expired_assignments(i64::MAX, 10).unwrap(),
        vec![live.clone()]
    );
    assert_eq!(s.active_assignments().unwrap(), vec![live]);
    drop(s);
    let db = raw_db(dir.path());
    assert_eq!(db.open_tree("leases_assignment").unwrap().len(), 1);
}

/// Version 9 kept a live lease's record in `assignments_id` and its index entry empty; version
/// 10 keeps the record in the index. The upgrade moves live records, drops entries of ended or
/// missing ones, and finishes a move a crash interrupted.
#[test]
fn upgrading_to_10_moves_live_lease_records_into_the_lease_index() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _, t) = store_with_task(dir.path(), None, 1);
    let live = assignment(s.as_ref(), &t, 1, 100);
    let moved_halfway = assignment(s.as_ref(), &t, 2, 200);
    let mut ended = assignment(s.as_ref(), &t, 3, 300);
    ended.status = AssignmentStatus::Released;
    s.flush().unwrap();
    drop(s);
    {
        let db = raw_db(dir.path());
        let records = db.open_tree("assignments_id").unwrap();
        let index = db.open_tree("leases_assignment").unwrap();
        for a in [&live, &ended] {
            records
                .insert(a.id.to_be_bytes(), serde_json::to_vec(a).unwrap())
                .unwrap();
            index.insert(a.id.to_be_bytes(), &[]).unwrap();
        }
        // A first run of the upgrade stopped after this record's move, before the number.
        index
            .insert(
                moved_halfway.id.to_be_bytes(),
                serde_json::to_vec(&moved_halfway).unwrap(),
            )
            .unwrap();
        // An index entry whose record was never written (a crash in a version-9 hand-out).
        index.insert(987_654u64.to_be_bytes(), &[]).unwrap();
        db.open_tree("meta")
            .unwrap()
            .insert(b"schema_version", &9u32.to_be_bytes())
            .unwrap();
        db.flush().unwrap();
    }
    let s = open(dir.path());
    assert_eq!(
        s.active_assignments().unwrap(),
        vec![live.clone(), moved_halfway.clone()]
    );
    assert_eq!(s.assignment(live.id).unwrap(), Some(live.clone()));
    assert_eq!(s.assignment(ended.id).unwrap(), Some(ended.clone()));
    // The moved lease ends as any other.
    let mut submitted = live.clone();
    submitted.status = AssignmentStatus::Expired;
    s.end_assignment(&submitted, None).unwrap();
    assert_eq!(s.assignment(live.id).unwrap(), Some(submitted));
    assert_eq!(s.active_assignments().unwrap(), vec![moved_halfway.clone()]);
    // Lease records follow the live leases at the next flush (or lease write).
    s.flush().unwrap();
    drop(s);
    let db = raw_db(dir.path());
    let index = db.open_tree("leases_assignment").unwrap();
    assert_eq!(index.len(), 1, "only the live lease is left in the index");
    assert!(
        db.open_tree("assignments_id")
            .unwrap()
            .get(moved_halfway.id.to_be_bytes())
            .unwrap()
            .is_none(),
        "a live record is kept in one place"
    );
}

/// Version 10 stored a submission by id alone (`submissions_id`) and indexed it by project,
/// task and expert with empty entries; version 11 stores it under its project and the task and
/// expert entries name the project. Every read finds the same submissions after the upgrade.
#[test]
fn upgrading_to_11_stores_submissions_under_their_project() {
    let dir = tempfile::tempdir().unwrap();
    let (s, p, t) = store_with_task(dir.path(), None, 2);
    let mut stored = Vec::new();
    let mut status = t.clone();
    for expert in [4, 5] {
        let a = assignment(s.as_ref(), &t, expert, 1000);
        s.put_assignment(&a).unwrap();
        status.done_by.push(expert);
        stored.push(s.commit_submission(write(&a, &status)).unwrap());
    }
    s.flush().unwrap();
    drop(s);
    {
        let db = raw_db(dir.path());
        let by_project = db.open_tree("submissions_project_id").unwrap();
        let by_id = db.open_tree("submissions_id").unwrap();
        for item in by_project.iter() {
            let (key, bytes) = item.unwrap();
            by_id.insert(&key[8..], bytes).unwrap();
            by_project.insert(key, &[]).unwrap();
        }
        for index in ["submissions_task_id", "submissions_expert_id"] {
            let index = db.open_tree(index).unwrap();
            for key in index.iter().keys() {
                index.insert(key.unwrap(), &[]).unwrap();
            }
        }
        db.open_tree("meta")
            .unwrap()
            .insert(b"schema_version", &10u32.to_be_bytes())
            .unwrap();
        db.flush().unwrap();
    }
    let s = open(dir.path());
    assert_eq!(s.submissions_for_task(t.task_id).unwrap(), stored);
    assert_eq!(s.submissions_page(p.id, None, 10).unwrap(), stored);
    assert_eq!(
        s.submissions_page(p.id, Some(stored[0].id), 10).unwrap(),
        vec![stored[1].clone()]
    );
    assert_eq!(
        s.expert_submissions_since(5, 0).unwrap(),
        vec![stored[1].clone()]
    );
    assert_eq!(
        s.submission(p.id, stored[0].id).unwrap().as_ref(),
        Some(&stored[0])
    );
    drop(s);
    let db = raw_db(dir.path());
    assert!(
        !db.tree_names()
            .iter()
            .any(|n| n.as_ref() == b"submissions_id"),
        "the records by id alone are dropped"
    );
}

/// A lease ended outside a transaction writes its ended record, then removes the live one; a
/// crash between the two leaves both. Readers take the ended record, and the next open drops
/// the live one.
#[test]
fn a_live_record_beside_its_ended_one_is_dropped_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _, t) = store_with_task(dir.path(), None, 1);
    let a = assignment(s.as_ref(), &t, 1, 100);
    s.put_assignment(&a).unwrap();
    let mut ended = a.clone();
    ended.status = AssignmentStatus::Released;
    s.flush().unwrap();
    drop(s);
    {
        let db = raw_db(dir.path());
        db.open_tree("assignments_id")
            .unwrap()
            .insert(ended.id.to_be_bytes(), serde_json::to_vec(&ended).unwrap())
            .unwrap();
        db.flush().unwrap();
    }
    let s = open(dir.path());
    assert_eq!(s.assignment(a.id).unwrap(), Some(ended.clone()));
    assert_eq!(s.active_assignments().unwrap(), vec![]);
    assert_eq!(s.expired_assignments(i64::MAX, 10).unwrap(), vec![]);
    drop(s);
    assert_eq!(
        raw_db(dir.path())
            .open_tree("leases_assignment")
            .unwrap()
            .len(),
        0
    );
}

/// A live lease is kept in memory and reaches `leases_assignment` only when it is still live at
/// a lease write (a flush, the sweeper's pass, a clean stop): one handed out and ended in
/// between writes nothing there, one written and ended later loses its record at the next
/// write (or, after a crash, at open), and what a crash loses is only leases and extensions
/// not yet written.
#[test]
fn live_leases_reach_the_disk_only_when_still_live_at_a_lease_write() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _, t) = store_with_task(dir.path(), None, 5);
    let ended = |a: &Assignment, status| Assignment {
        status,
        ..a.clone()
    };
    // Handed out and ended between two writes.
    let brief = assignment(s.as_ref(), &t, 1, 100);
    s.put_assignment(&brief).unwrap();
    s.put_assignment(&ended(&brief, AssignmentStatus::Released))
        .unwrap();
    // Written, then ended, then written again.
    let gone = assignment(s.as_ref(), &t, 2, 100);
    s.put_assignment(&gone).unwrap();
    s.write_live_leases().unwrap();
    s.end_assignment(&ended(&gone, AssignmentStatus::Expired), None)
        .unwrap();
    // Written, then ended, with no write after it (the crash comes first).
    let stale = assignment(s.as_ref(), &t, 3, 100);
    s.put_assignment(&stale).unwrap();
    // Written, then extended without a write.
    let kept = assignment(s.as_ref(), &t, 4, 100);
    s.put_assignment(&kept).unwrap();
    s.write_live_leases().unwrap();
    s.end_assignment(&ended(&stale, AssignmentStatus::Released), None)
        .unwrap();
    s.put_assignment(&Assignment {
        expires_at: 900,
        ..kept.clone()
    })
    .unwrap();
    // Never written.
    let lost = assignment(s.as_ref(), &t, 5, 100);
    s.put_assignment(&lost).unwrap();
    assert_eq!(s.assignment(lost.id).unwrap(), Some(lost.clone()));
    assert_eq!(s.active_assignments().unwrap().len(), 2);
    drop(s); // no flush: as a crash leaves it

    let on_disk = |dir: &std::path::Path| -> Vec<Id> {
        let db = raw_db(dir);
        let tree = db.open_tree("leases_assignment").unwrap();
        tree.iter()
            .keys()
            .map(|k| u64::from_be_bytes(k.unwrap().as_ref().try_into().unwrap()))
            .collect()
    };
    assert_eq!(on_disk(dir.path()), vec![stale.id, kept.id]);
    let s = open(dir.path());
    assert_eq!(s.active_assignments().unwrap(), vec![kept.clone()]);
    assert_eq!(
        s.expired_assignments(i64::MAX, 10).unwrap(),
        vec![kept.clone()]
    );
    for (a, status) in [
        (&brief, AssignmentStatus::Released),
        (&gone, AssignmentStatus::Expired),
        (&stale, AssignmentStatus::Released),
    ] {
        assert_eq!(s.assignment(a.id).unwrap(), Some(ended(a, status)));
    }
    assert_eq!(s.assignment(lost.id).unwrap(), None);
    // A clean stop writes what is live.
    let extended = Assignment {
        expires_at: 5_000,
        ..kept.clone()
    };
    s.put_assignment(&extended).unwrap();
    s.flush().unwrap();
    drop(s);
    assert_eq!(on_disk(dir.path()), vec![kept.id]);
    let s = open(dir.path());
    assert_eq!(s.active_assignments().unwrap(), vec![extended]);
}

#[test]
fn upgrading_to_5_puts_tasks_waiting_in_qa_into_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _, mut t) = store_with_task(dir.path(), None, 1);
    t.state = TaskState::InQa;
    s.put_task_statuses(std::slice::from_ref(&t)).unwrap();
    s.flush().unwrap();
    drop(s);
    {
        // Version 4 kept only open tasks in the index.
        let db = raw_db(dir.path());
        db.open_tree("queue_project_task").unwrap().clear().unwrap();
        db.open_tree("meta")
            .unwrap()
            .insert(b"schema_version", &4u32.to_be_bytes())
            .unwrap();
        db.flush().unwrap();
    }
    let s = open(dir.path());
    let indexed = s.open_tasks().unwrap();
    assert_eq!(indexed.len(), 1);
    assert_eq!(indexed[0].state, TaskState::InQa);
    assert_eq!(indexed[0].qa, Some(QaKind::Qa));
}

/// Events `task:{i}` for each i of `ids`, at `start + i * step` ms.
fn append_events(s: &dyn Store, ids: std::ops::Range<i64>, start: i64, step: i64) {
    for i in ids {
        s.append_audit(&event(start + i * step, &format!("task:{i}")))
            .unwrap();
    }
}

fn event(at: i64, object: &str) -> AuditEvent {
    AuditEvent {
        at,
        actor: Some(1),
        action: AuditAction::TaskView,
        object: object.into(),
        detail: json!({}),
    }
}

/// The audit chain: intact when untouched; an edit, a deletion and an event slipped in later
/// are each named; pruning keeps the rest verifiable.
#[test]
fn the_audit_chain_catches_edits_deletions_and_late_insertions() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    append_events(s.as_ref(), 0..20, 1_000, 1_000);
    assert_eq!(s.seal_audit(100_000).unwrap(), 20);
    let check = s.verify_audit().unwrap();
    assert!(check.problems.is_empty(), "{:?}", check.problems);
    assert_eq!((check.events, check.sealed, check.head_seq), (20, 20, 20));
    // Sealing again adds nothing.
    assert_eq!(s.seal_audit(100_000).unwrap(), 0);
    s.flush().unwrap();
    drop(s);

    {
        let db = raw_db(dir.path());
        let audit = db.open_tree("audit_time_id").unwrap();
        let keys: Vec<_> = audit.iter().keys().map(|k| k.unwrap()).collect();
        // Edit the 5th event, delete the 10th, and slip one in between old ones.
        let edited = String::from_utf8(audit.get(&keys[4]).unwrap().unwrap().to_vec())
            .unwrap()
            .replace("task:4", "task:99");
        audit.insert(&keys[4], edited.as_bytes()).unwrap();
        audit.remove(&keys[9]).unwrap();
        let mut late = keys[14].to_vec();
        late[15] ^= 1;
        audit
            .insert(late, audit.get(&keys[14]).unwrap().unwrap())
            .unwrap();
        db.flush().unwrap();
    }
    let s = open(dir.path());
    let problems = s.verify_audit().unwrap().problems;
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert!(problems[0].contains("seal 5") && problems[0].contains("changed"));
    assert!(problems[1].contains("seal 10") && problems[1].contains("deleted"));
    assert!(problems[2].contains("not in the chain"));
}

/// A check made while the sealer runs reads one state of the chain: a pass that commits between
/// reading the head and reading the seals must not show up as a broken chain.
#[test]
fn verifying_while_the_sealer_runs_sees_a_whole_chain() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let s = s.as_ref();
    let sealing = AtomicBool::new(true);
    let mut checks = 0;
    std::thread::scope(|scope| {
        scope.spawn(|| {
            // Lowered however this thread ends, so the checking loop below always stops.
            struct Done<'a>(&'a AtomicBool);
            impl Drop for Done<'_> {
                fn drop(&mut self) {
                    self.0.store(false, Ordering::SeqCst);
                }
            }
            let _done = Done(&sealing);
            for i in 0..500 {
                s.append_audit(&event(1_000 + i, "task:1")).unwrap();
                s.seal_audit(1_001 + i).unwrap();
            }
        });
        while sealing.load(Ordering::SeqCst) {
            let check = s.verify_audit().unwrap();
            checks += 1;
            if !check.problems.is_empty() {
                sealing.store(false, Ordering::SeqCst);
                panic!("check {checks}: {:?}", check.problems);
            }
            // A moment off the lock: a mutex is not fair, and a checker that takes it again at
            // once can keep the sealer waiting for good.
            std::thread::sleep(std::time::Duration::from_micros(50));
        }
    });
    assert!(checks > 0);
}

#[test]
fn pruning_the_audit_log_keeps_the_rest_verifiable() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    append_events(s.as_ref(), 0..10, 1_000, 1_000);
    s.seal_audit(100_000).unwrap();
    assert_eq!(s.prune_audit(5_500).unwrap(), 5);
    append_events(s.as_ref(), 10..15, 200_000, 1_000);
    s.seal_audit(300_000).unwrap();
    let check = s.verify_audit().unwrap();
    assert!(check.problems.is_empty(), "{:?}", check.problems);
    assert_eq!((check.events, check.sealed, check.head_seq), (10, 10, 15));
}

/// A busy log is sealed in several short transactions; the chain is one all the same, and a
/// late arrival inside the look-back window is sealed by the next pass.
#[test]
fn a_busy_audit_log_is_sealed_in_chunks_into_one_chain() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    append_events(s.as_ref(), 0..1_000, 1_000, 10);
    assert_eq!(s.seal_audit(50_000).unwrap(), 1_000);
    // Arrives late, with a time the last pass already went over.
    s.append_audit(&event(45_000, "task:late")).unwrap();
    assert_eq!(s.seal_audit(51_000).unwrap(), 1);
    assert_eq!(s.seal_audit(52_000).unwrap(), 0);
    // A new process (nothing remembered) seals nothing twice.
    s.flush().unwrap();
    drop(s);
    let s = open(dir.path());
    assert_eq!(s.seal_audit(53_000).unwrap(), 0);
    let check = s.verify_audit().unwrap();
    assert!(check.problems.is_empty(), "{:?}", check.problems);
    assert_eq!((check.sealed, check.head_seq), (1_001, 1_001));
}

/// A pass reads on from where the last one ended, and goes back only to events written since
/// with an older time: late events are sealed whether an audit append or a submit batch wrote
/// them, and nothing is sealed twice.
#[test]
fn late_audit_events_are_sealed_by_the_next_pass_whatever_wrote_them() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _, t) = store_with_task(dir.path(), None, 2);
    let a = assignment(s.as_ref(), &t, 7, 1000);
    s.put_assignment(&a).unwrap();
    append_events(s.as_ref(), 0..100, 10_000, 10);
    let first = s.seal_audit(20_000).unwrap();
    assert!(first >= 100, "{first}");
    assert_eq!(s.seal_audit(21_000).unwrap(), 0);
    // A submit batch whose event is older than the last pass's end.
    let mut late = write(&a, &t);
    late.audit.at = 15_000;
    late.status.done_by.push(7);
    s.commit_submissions(vec![late]).unwrap();
    assert_eq!(s.seal_audit(22_000).unwrap(), 1);
    // An append older still, then one inside the next pass's own span.
    s.append_audit(&event(12_500, "task:late")).unwrap();
    s.append_audit(&event(22_500, "task:new")).unwrap();
    assert_eq!(s.seal_audit(23_000).unwrap(), 2);
    assert_eq!(s.seal_audit(24_000).unwrap(), 0);
    let check = s.verify_audit().unwrap();
    assert!(check.problems.is_empty(), "{:?}", check.problems);
    assert_eq!(check.sealed, first + 3);
}

/// Version 5 stored a record per seal and one per sealed event; version 6 stores blocks. The
/// upgrade keeps every hash, so the old chain verifies, goes on, and still names an edit.
#[test]
fn upgrading_to_6_keeps_the_audit_chain_verifiable() {
    use sha2::{Digest, Sha256};
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    append_events(s.as_ref(), 0..300, 1_000, 10);
    s.flush().unwrap();
    drop(s);
    {
        // The version 5 layout, written as version 5 wrote it.
        let db = raw_db(dir.path());
        let audit = db.open_tree("audit_time_id").unwrap();
        let seals = db.open_tree("audit_chain_seq").unwrap();
        let sealed = db.open_tree("audit_sealed_key").unwrap();
        let mut hash = "0".repeat(64);
        for (seq, item) in (1u64..).zip(audit.iter()) {
            let (key, bytes) = item.unwrap();
            let mut h = Sha256::new();
            h.update(hex::decode(&hash).unwrap());
            h.update(&key);
            h.update(&bytes);
            hash = hex::encode(h.finalize());
            let seal = json!({"key": hex::encode(&key), "hash": hash});
            seals
                .insert(seq.to_be_bytes(), serde_json::to_vec(&seal).unwrap())
                .unwrap();
            sealed.insert(&key, &seq.to_be_bytes()).unwrap();
        }
        let meta = db.open_tree("meta").unwrap();
        let head = json!({"seq": 300, "hash": hash, "cursor": 10_000});
        meta.insert(b"audit_head", serde_json::to_vec(&head).unwrap())
            .unwrap();
        meta.insert(b"schema_version", &5u32.to_be_bytes()).unwrap();
        db.drop_tree("audit_blocks_seq").unwrap();
        db.flush().unwrap();
    }
    let s = open(dir.path());
    let check = s.verify_audit().unwrap();
    assert!(check.problems.is_empty(), "{:?}", check.problems);
    assert_eq!(
        (check.events, check.sealed, check.head_seq),
        (300, 300, 300)
    );
    // Nothing is sealed twice, and the chain goes on from the old head.
    assert_eq!(s.seal_audit(12_000).unwrap(), 0);
    s.append_audit(&event(20_000, "task:new")).unwrap();
    assert_eq!(s.seal_audit(30_000).unwrap(), 1);
    let check = s.verify_audit().unwrap();
    assert!(check.problems.is_empty(), "{:?}", check.problems);
    assert_eq!((check.sealed, check.head_seq), (301, 301));
    s.flush().unwrap();
    drop(s);
    let db = raw_db(dir.path());
    let names = db.tree_names();
    for old in ["audit_chain_seq", "audit_sealed_key"] {
        assert!(
            !names.iter().any(|n| n.as_ref() == old.as_bytes()),
            "{old} is dropped"
        );
    }
    assert_eq!(db.open_tree("audit_blocks_seq").unwrap().len(), 4);
    // An edit of an upgraded event is still named by its seal.
    let audit = db.open_tree("audit_time_id").unwrap();
    let key = audit.iter().keys().nth(199).unwrap().unwrap();
    let edited = String::from_utf8(audit.get(&key).unwrap().unwrap().to_vec())
        .unwrap()
        .replace("task:199", "task:x");
    audit.insert(&key, edited.as_bytes()).unwrap();
    db.flush().unwrap();
    drop((audit, db));
    let problems = open(dir.path()).verify_audit().unwrap().problems;
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("seal 200") && problems[0].contains("changed"));
}

/// A pass long enough to commit in chunks, cut by a crash after its first chunk: the stored
/// head is still the old one (its cursor before the chunk's events), and the next process must
/// seal the rest once and the chunk's events not again.
#[test]
fn a_pass_cut_after_its_first_chunk_seals_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    append_events(s.as_ref(), 0..2_100, 1_000, 10);
    assert_eq!(s.seal_audit(50_000).unwrap(), 2_100);
    s.flush().unwrap();
    drop(s);
    {
        // What a kill between the pass's two transactions leaves: 16 full blocks (2,048 seals)
        // and the head the first transaction wrote, with the cursor of before the pass.
        let db = raw_db(dir.path());
        let blocks = db.open_tree("audit_blocks_seq").unwrap();
        assert_eq!(blocks.len(), 17);
        blocks.remove(2_049u64.to_be_bytes()).unwrap();
        let (_, last) = blocks.last().unwrap().unwrap();
        let last: serde_json::Value = serde_json::from_slice(&last).unwrap();
        let hash = last["seals"][127]["hash"].clone();
        let head = json!({"seq": 2_048, "hash": hash, "cursor": 0});
        db.open_tree("meta")
            .unwrap()
            .insert(b"audit_head", serde_json::to_vec(&head).unwrap())
            .unwrap();
        db.flush().unwrap();
    }
    let s = open(dir.path());
    assert_eq!(s.seal_audit(50_000).unwrap(), 52);
    let check = s.verify_audit().unwrap();
    assert!(check.problems.is_empty(), "{:?}", check.problems);
    assert_eq!((check.sealed, check.head_seq), (2_100, 2_100));
}
